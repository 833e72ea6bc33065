//! One renewal pass (`certkeeper renew`): decide which certificates are due, issue them
//! concurrently under a limit, then run the reload hooks of everything that changed (and of any
//! earlier reload that did not complete), once per command.
//!
//! After the reloads, the certificates issued or reloaded are checked to be served
//! ([`super::deploy`]), and the notifications of every selected certificate are decided
//! ([`super::alerts::evaluate`]).
//!
//! Also the one attempt both the pass and the daemon make per certificate: [`attempt`] issues and
//! records the outcome in the ledger, the failure with the policy's verdict.

use std::sync::Arc;

use futures_util::future::join_all;
use jiff::Timestamp;
use tokio::sync::Semaphore;
use tracing::{error, info};

use crate::config::CertificateConfig;
use crate::hooks::HookOutcome;
use crate::scheduler::{Due, Failure};
use crate::store::{DeployCheck, Event, Snapshot};

use super::due::{due, retry_fingerprint};
use super::error::{IssueError, decide};
use super::order::{self, Issued};
use super::reload;
use super::runtime::Runtime;
use super::side_by_side;
use super::{alerts, deploy};

/// What the caller asked of a pass.
#[derive(Clone, Debug, Default)]
pub struct PassOptions {
    /// Issue even when the certificate is not due.
    pub force: bool,
    /// Only these certificates (config names); all when empty.
    pub only: Vec<String>,
}

/// What one pass did, per certificate.
#[derive(Debug, Default)]
pub struct PassReport {
    /// Certificates issued and installed in this pass.
    pub issued: Vec<(String, Issued)>,
    /// Certificates not due, with when they will be.
    pub not_due: Vec<(String, Due)>,
    /// Certificates that failed.
    pub failed: Vec<(String, IssueError)>,
    /// The reload hooks that ran.
    pub hooks: Vec<HookOutcome>,
    /// What the `verify_deploy` endpoints served after the reloads.
    pub deploy: Vec<(String, DeployCheck)>,
}

impl PassReport {
    /// True when every selected certificate is valid and installed (issued now or not due), none
    /// is waiting out a backoff or a pause after a failed attempt, every reload hook succeeded
    /// (a failed reload leaves servers on the old certificate), and every `verify_deploy`
    /// endpoint serves the installed certificate.
    pub fn ok(&self) -> bool {
        self.failed.is_empty()
            && self.backing_off().next().is_none()
            && self.hooks.iter().all(|h| h.status.is_ok())
            && self.deploy.iter().all(|(_, d)| d.deployed)
    }

    /// The not-due certificates that are skipped only because their last attempt failed: waiting
    /// for a retry time, or paused. `renew --force` tries them now.
    pub fn backing_off(&self) -> impl Iterator<Item = &(String, Due)> {
        self.not_due.iter().filter(|(_, due)| due.after_failure())
    }
}

/// Run one pass over the configured certificates.
pub async fn run_pass(rt: Arc<Runtime>, opts: &PassOptions) -> PassReport {
    let now = Timestamp::now();
    let mut report = PassReport::default();
    let mut todo: Vec<(CertificateConfig, Snapshot)> = Vec::new();
    let mut reloads = Vec::new();
    let mut selected = Vec::new();
    let certs: Vec<&CertificateConfig> = rt
        .config
        .certificates
        .values()
        .filter(|c| opts.only.is_empty() || opts.only.contains(&c.name))
        .collect();
    // Outside a fleet nothing is adopted first, so the snapshots (most of a pass with nothing due)
    // are read side by side (a fleet's storage client lives on this runtime: one at a time).
    let early: Vec<Option<Snapshot>> = match rt.ledger.node() {
        None => side_by_side::map(&certs, |c| Some(rt.ledger.snapshot(&c.name, &c.output))),
        Some(_) => certs.iter().map(|_| None).collect(),
    };
    for (cert, early) in certs.into_iter().zip(early) {
        let name = &cert.name;
        selected.push(cert.clone());
        // In a fleet, a pair another node issued is installed here first (and reloaded).
        let adopted = adopt(&rt, cert, &mut report);
        let snap = early.unwrap_or_else(|| rt.ledger.snapshot(name, &cert.output));
        // A reload that did not complete (killed between install and reload, a failed hook) runs
        // with this pass's reloads.
        reloads.extend(match adopted {
            Some(serial) => reload::request(cert, &serial),
            None => reload::pending_one(cert, &snap),
        });
        if opts.force {
            todo.push((cert.clone(), snap));
            continue;
        }
        let due = due(&rt.config, cert, &snap, now, false);
        if due.at <= now {
            info!(cert = %name, reason = %due.reason, "due");
            todo.push((cert.clone(), snap));
        } else {
            report.not_due.push((name.clone(), due));
        }
    }
    for name in &opts.only {
        if !rt.config.certificates.contains_key(name) {
            let known: Vec<&str> = rt.config.certificates.keys().map(String::as_str).collect();
            report.failed.push((
                name.clone(),
                IssueError::config(format!(
                    "no certificate named {name:?} in the config (known: {})",
                    known.join(", ")
                )),
            ));
        }
    }

    let limit = Arc::new(Semaphore::new(rt.config.daemon.max_concurrent.max(1)));
    let results = join_all(todo.into_iter().map(|(cert, snap)| {
        let rt = rt.clone();
        let limit = limit.clone();
        async move {
            let _permit = limit.acquire().await;
            // Boxed: allocated once the permit is held, not for every waiting certificate at once.
            let result = Box::pin(attempt(&rt, &cert, &snap)).await;
            (cert, result)
        }
    }))
    .await;

    for (cert, result) in results {
        match result {
            Ok(issued) => {
                reloads.retain(|r| r.cert_name != cert.name);
                reloads.extend(reload::request(&cert, &issued.cert.serial_hex));
                report.issued.push((cert.name.clone(), issued));
            }
            Err(e) => {
                error!(cert = %cert.name, error = %e, "issuance failed");
                report.failed.push((cert.name.clone(), e));
            }
        }
    }
    if !reloads.is_empty() {
        report.hooks = reload::run(&rt.ledger, &reloads, rt.config.daemon.hook_timeout).await;
    }
    verify_and_notify(&rt, &mut report, &reloads, &selected).await;
    report
}

/// Install the fleet's current pair of `cert` here when it is newer (see [`order::adopt`]),
/// reporting it with the issued ones; its serial when it was installed. A failure is logged: this
/// node keeps what it has.
fn adopt(rt: &Runtime, cert: &CertificateConfig, report: &mut PassReport) -> Option<String> {
    match order::adopt(rt, cert) {
        Ok(Some(issued)) => {
            let serial = issued.cert.serial_hex.clone();
            report.issued.push((cert.name.clone(), issued));
            Some(serial)
        }
        Ok(None) => None,
        Err(e) => {
            error!(cert = %cert.name, error = %e, "cannot install the fleet's current certificate here");
            None
        }
    }
}

/// After the reloads: check that the certificates issued or reloaded are served, then decide the
/// notifications of every selected certificate.
async fn verify_and_notify(
    rt: &Runtime,
    report: &mut PassReport,
    reloads: &[crate::hooks::ReloadRequest],
    selected: &[CertificateConfig],
) {
    let mut changed: Vec<String> = report.issued.iter().map(|(n, _)| n.clone()).collect();
    changed.extend(reloads.iter().map(|r| r.cert_name.clone()));
    changed.sort();
    changed.dedup();
    report.deploy = deploy::verify_batch(rt, &changed, reloads).await;
    for cert in selected {
        alerts::evaluate(rt, cert).await;
    }
}

/// Issue one certificate (decided on `snap`) and record the outcome in the ledger: the success, or
/// the failure with the policy's verdict, so that backoff and pauses survive restarts.
pub async fn attempt(
    rt: &Runtime,
    cert: &CertificateConfig,
    snap: &Snapshot,
) -> Result<Issued, IssueError> {
    let result = order::issue(rt, cert, snap).await;
    if let Err(e) = &result {
        if e.is_interrupted() || rt.interrupt.is_cancelled() || e.is_busy() {
            // Stopped by Ctrl-C or shutdown, or another process is issuing it right now: not a
            // failure of the certificate, no backoff for that.
            return result;
        }
        record_failure(rt, cert, snap, e);
    }
    result
}

/// Record a failed attempt of `cert` (whose state before the attempt is `snap`) in the ledger.
pub fn record_failure(rt: &Runtime, cert: &CertificateConfig, snap: &Snapshot, e: &IssueError) {
    let now = Timestamp::now();
    let lifetime = snap.lifetime();
    let backoff = rt.config.daemon.backoff;
    let d = e
        .decision()
        .unwrap_or_else(|| decide(e.cause(), now, lifetime, &backoff));
    let failure = Failure {
        at: now,
        message: e.to_string(),
        pause: d.pause,
        ca_wait: d.ca_wait,
        lifetime,
        backoff,
    };
    let event = Event::Failed {
        failure,
        retry_fingerprint: retry_fingerprint(&rt.config, cert),
    };
    if let Err(se) = rt.ledger.record(&cert.name, event) {
        error!(cert = %cert.name, error = %se, "cannot record the failure in the state directory");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::HookOutcome;
    use crate::scheduler::DueReason;

    fn not_due(reason: DueReason) -> PassReport {
        PassReport {
            not_due: vec![(
                "www".to_string(),
                Due {
                    at: Timestamp::now(),
                    reason,
                },
            )],
            ..Default::default()
        }
    }

    #[test]
    fn a_pass_is_ok_only_without_failures_backoffs_or_failed_reloads() {
        assert!(PassReport::default().ok());
        assert!(not_due(DueReason::Missing).ok());
        let retry = not_due(DueReason::Retry {
            attempt: 1,
            error: "connection refused".into(),
        });
        assert!(!retry.ok(), "a certificate in backoff is not ok");
        assert_eq!(retry.backing_off().count(), 1);
        let paused = not_due(DueReason::Paused {
            attempt: 1,
            error: "rejectedIdentifier".into(),
        });
        assert!(!paused.ok(), "a paused certificate is not ok");
        let mut failed = PassReport::default();
        failed
            .failed
            .push(("www".into(), IssueError::config("boom")));
        assert!(!failed.ok());
        let hook = |status| PassReport {
            hooks: vec![HookOutcome {
                command: "systemctl reload nginx".into(),
                cert_names: vec!["www".into()],
                status,
            }],
            ..Default::default()
        };
        assert!(
            hook(crate::hooks::HookStatus::Ok {
                output: String::new()
            })
            .ok()
        );
        assert!(
            !hook(crate::hooks::HookStatus::Failed {
                code: Some(1),
                signal: None,
                output: String::new()
            })
            .ok(),
            "a failed reload fails the pass"
        );
    }
}
