//! The daemon's one task for everything that touches the servers: reload hooks, deploy
//! verification and the notifications that follow them, one job after another.
//!
//! Running them in one task keeps a periodic deploy check from probing a server in the middle of
//! its reload (it would see the old certificate and cry wolf), and keeps the daemon loop free to
//! answer `/healthz`, send WATCHDOG=1 and handle SIGTERM while a hook runs.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{error, warn};

use crate::config::{CertificateConfig, Config};
use crate::engine::{Runtime, alerts, deploy, reload};
use crate::hooks::ReloadRequest;

use super::admin::Metrics;

/// The daemon checks deploy state and expiry at least this often.
pub const RECHECK_MAX: Duration = Duration::from_secs(3600);

/// How often the daemon looks again at what is served and what to notify: the shortest
/// `verify_deploy.interval`, at most [`RECHECK_MAX`].
pub fn recheck_every(cfg: &Config) -> Duration {
    cfg.certificates
        .values()
        .filter_map(|c| c.verify_deploy.as_ref().map(|v| v.interval))
        .fold(RECHECK_MAX, Duration::min)
}

/// One job of the reloader task.
pub enum Job {
    /// Run a batch's reload hooks, then check and notify the certificates involved.
    Batch {
        /// The runtime of the config the batch belongs to.
        rt: Arc<Runtime>,
        /// The reloads (each distinct command once).
        requests: Vec<ReloadRequest>,
        /// Certificates installed in this batch (with or without reload hooks).
        changed: Vec<String>,
    },
    /// Check what every `verify_deploy` endpoint serves (when its interval has passed, or always
    /// with `force`) and decide every certificate's notifications.
    Recheck {
        /// The current runtime.
        rt: Arc<Runtime>,
        /// Check every endpoint now (the daemon just started or its config changed).
        force: bool,
    },
}

/// The reloader task and its queue.
pub struct Reloader {
    tx: mpsc::UnboundedSender<Job>,
    task: tokio::task::JoinHandle<()>,
}

impl Reloader {
    /// Start the task; it shows what it finds in `metrics`.
    pub fn start(metrics: Arc<Metrics>) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        let task = tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                match job {
                    Job::Batch {
                        rt,
                        requests,
                        changed,
                    } => batch(&rt, &metrics, &requests, changed).await,
                    Job::Recheck { rt, force } => recheck(&rt, &metrics, force).await,
                }
                // A batch ends a pass, a recheck reads every certificate: give back what they
                // freed before the daemon idles (the loop trimmed before they ran).
                if rx.is_empty() {
                    super::run::release_memory();
                }
            }
        });
        Self { tx, task }
    }

    /// Queue a job.
    pub fn send(&self, job: Job) {
        if self.tx.send(job).is_err() {
            error!("the reload task is gone; the reloads stay pending and run at the next start");
        }
    }

    /// Run what is queued, but not past `deadline`.
    pub async fn finish(self, deadline: Instant) {
        let Self { tx, mut task } = self;
        drop(tx);
        if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
            task.abort();
            warn!(
                "reload hooks still running at shutdown; their reload stays pending and runs at the next start"
            );
        }
    }
}

async fn batch(rt: &Runtime, metrics: &Metrics, requests: &[ReloadRequest], changed: Vec<String>) {
    if !requests.is_empty() {
        reload::run(&rt.ledger, requests, rt.config.daemon.hook_timeout).await;
    }
    for req in requests {
        let state = rt.ledger.state(&req.cert_name).ok().flatten();
        let still = state.and_then(|s| s.reload_pending).as_deref() == Some(req.serial.as_str());
        metrics.set_reload_pending(&req.cert_name, still);
    }
    let mut names = changed;
    names.extend(requests.iter().map(|r| r.cert_name.clone()));
    names.sort();
    names.dedup();
    for (name, check) in deploy::verify_batch(rt, &names, requests).await {
        metrics.set_deploy(
            &name,
            check.deployed,
            check.served_not_after().map(|t| t.as_second()),
        );
    }
    for cert in names.iter().filter_map(|n| rt.config.certificates.get(n)) {
        alerts::evaluate(rt, cert).await;
    }
}

async fn recheck(rt: &Runtime, metrics: &Metrics, force: bool) {
    let now = Timestamp::now();
    for cert in rt.config.certificates.values() {
        if recheck_due(rt, cert, now, force)
            && let Some(check) = deploy::check(rt, cert).await
        {
            deploy::log_result(&cert.name, &check);
            metrics.set_deploy(
                &cert.name,
                check.deployed,
                check.served_not_after().map(|t| t.as_second()),
            );
        }
        alerts::evaluate(rt, cert).await;
    }
}

/// Whether `cert`'s endpoints are to be checked now: it has `verify_deploy`, its reload is not
/// pending (the server may still have the old files loaded), and `force` or its last check is
/// older than its interval or was of another certificate.
fn recheck_due(rt: &Runtime, cert: &CertificateConfig, now: Timestamp, force: bool) -> bool {
    let Some(v) = &cert.verify_deploy else {
        return false;
    };
    let snap = rt.ledger.snapshot(&cert.name, &cert.output);
    let Some(live) = snap.live() else {
        return false;
    };
    if !cert.reload.is_empty() && snap.reload_pending().is_some() {
        return false;
    }
    if force {
        return true;
    }
    // A little early rather than a whole tick late.
    let slack = jiff::SignedDuration::from_secs(30);
    let interval = jiff::SignedDuration::try_from(v.interval).unwrap_or(jiff::SignedDuration::MAX);
    match &snap.state.deploy {
        Some(d) if d.serial == live.cert.serial_hex => {
            d.at.is_none_or(|at| now.duration_since(at) + slack >= interval)
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::challenge::http01::TokenStore;
    use crate::store::{DeployCheck, Event};

    fn runtime(dir: &std::path::Path, extra: &str) -> Runtime {
        let cfg = Arc::new(crate::config::testing::one_certificate(dir, extra));
        Runtime::new(cfg, TokenStore::default()).unwrap()
    }

    fn install(rt: &Runtime) -> String {
        let cert = &rt.config.certificates["www"];
        let pki = crate::store::testpki::Pki::new();
        let (key, chain) = pki.leaf(&["www.example.com"], 7, (-1, 30));
        let v = crate::store::VerifiedPair::from_pem(&key, &chain, &cert.domains, None).unwrap();
        let after = Event::Imported {
            issuer: None,
            fingerprint: "f".into(),
            at: Timestamp::now(),
        };
        rt.ledger
            .lock("www")
            .unwrap()
            .install(&cert.output, &v, [after])
            .unwrap();
        v.cert().serial_hex.clone()
    }

    fn checked(rt: &Runtime, serial: &str, ago_secs: i64) {
        let at = Timestamp::now() - jiff::SignedDuration::from_secs(ago_secs);
        let check = DeployCheck {
            at: Some(at),
            serial: serial.into(),
            deployed: true,
            endpoints: Vec::new(),
        };
        rt.ledger
            .record("www", Event::DeployChecked(Box::new(check)))
            .unwrap();
    }

    #[test]
    fn endpoints_are_checked_again_after_their_interval_never_mid_reload() {
        let tmp = tempfile::tempdir().unwrap();
        let now = Timestamp::now();
        let plain = runtime(tmp.path(), "");
        assert!(
            !recheck_due(&plain, &plain.config.certificates["www"], now, true),
            "no verify_deploy"
        );

        let vd = r#"verify_deploy = { connect = ["127.0.0.1:443"], interval = "1h" }"#;
        let rt = runtime(tmp.path(), vd);
        let cert = rt.config.certificates["www"].clone();
        assert!(!recheck_due(&rt, &cert, now, true), "nothing installed");
        let serial = install(&rt);
        assert!(recheck_due(&rt, &cert, now, false), "never checked");
        checked(&rt, &serial, 600);
        assert!(
            !recheck_due(&rt, &cert, now, false),
            "checked 10 minutes ago"
        );
        assert!(
            recheck_due(&rt, &cert, now, true),
            "forced (start-up, config reload)"
        );
        checked(&rt, &serial, 3600);
        assert!(recheck_due(&rt, &cert, now, false), "an hour ago");
        checked(&rt, "ffff", 10);
        assert!(
            recheck_due(&rt, &cert, now, false),
            "the last check was of another certificate"
        );

        // With reload hooks whose reload is still pending, the server may have the old files loaded.
        let rt = runtime(tmp.path(), &format!("{vd}\nreload = [\"true\"]"));
        assert!(!recheck_due(&rt, &rt.config.certificates["www"], now, true));
        rt.ledger
            .record(
                "www",
                Event::Reloaded {
                    serial: serial.clone(),
                },
            )
            .unwrap();
        assert!(recheck_due(&rt, &rt.config.certificates["www"], now, true));
        assert_eq!(recheck_every(&rt.config), RECHECK_MAX);
        let rt = runtime(
            tmp.path(),
            r#"verify_deploy = { connect = ["h:443"], interval = "5m" }"#,
        );
        assert_eq!(recheck_every(&rt.config), Duration::from_secs(300));
    }
}
