//! One renewal pass: decide which certificates are due, issue them concurrently under a limit, then
//! run the reload hooks of everything that changed, once per command.

use std::sync::Arc;

use futures_util::future::join_all;
use jiff::Timestamp;
use tokio::sync::Semaphore;
use tracing::{error, info};

use crate::config::CertificateConfig;
use crate::hooks::{self, HookOutcome, ReloadRequest};
use crate::scheduler::{self, Due, DueReason};
use crate::store;

use super::issue::{self, Issued};
use super::{IssueError, Runtime};

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
}

impl PassReport {
    /// True when every selected certificate is valid and installed (issued now or not due).
    pub fn ok(&self) -> bool {
        self.failed.is_empty()
    }
}

/// Decide whether `cert` is due now and why.
///
/// A certificate is due at once when nothing is installed, when what is installed no longer matches
/// the config (names, key type, issuers, profile), or when the installed files cannot be read as a
/// matching pair; otherwise at its renewal point, or earlier inside the CA's ARI window.
pub fn due_for(rt: &Runtime, cert: &CertificateConfig, now: Timestamp) -> Due {
    let state = rt.state.load_cert_state(&cert.name).unwrap_or_default();
    let fingerprint = scheduler::config_fingerprint(&cert.domains, cert.key, &cert.issuers, cert.profile.as_deref());
    let spec = match rt.output_spec(cert) {
        Ok(s) => s,
        Err(_) => return Due::now(now, DueReason::Missing),
    };
    let installed = match store::read_installed(&spec) {
        Ok(Some(live)) => Some(live),
        Ok(None) => None,
        Err(e) => {
            info!(cert = %cert.name, error = %e, "installed files unusable; issuing again");
            None
        }
    };
    let Some(live) = installed else {
        return Due::now(now, DueReason::Missing);
    };
    let names_match = {
        let mut a = live.cert.names.clone();
        let mut b = cert.domains.clone();
        a.sort();
        b.sort();
        a == b
    };
    let fingerprint_changed = !names_match
        || live.cert.key_type != Some(cert.key)
        || state.config_fingerprint.as_deref().is_some_and(|f| f != fingerprint);
    let facts = scheduler::CertFacts {
        installed: Some((live.cert.not_before, live.cert.not_after)),
        fingerprint_changed,
        ari_window: state.ari_window(),
        retry: state.retry.clone(),
        renew_before: cert.renew_before,
    };
    scheduler::due(&facts, now, &mut rand::rng())
}

/// Run one pass over the configured certificates.
pub async fn run_pass(rt: Arc<Runtime>, opts: &PassOptions) -> PassReport {
    let now = Timestamp::now();
    let mut report = PassReport::default();
    let mut todo: Vec<CertificateConfig> = Vec::new();
    for (name, cert) in &rt.config.certificates {
        if !opts.only.is_empty() && !opts.only.contains(name) {
            continue;
        }
        if opts.force {
            todo.push(cert.clone());
            continue;
        }
        let due = due_for(&rt, cert, now);
        if due.at <= now {
            info!(cert = %name, reason = %due.reason, "due");
            todo.push(cert.clone());
        } else {
            report.not_due.push((name.clone(), due));
        }
    }
    for name in &opts.only {
        if !rt.config.certificates.contains_key(name) {
            let known: Vec<&str> = rt.config.certificates.keys().map(String::as_str).collect();
            report.failed.push((
                name.clone(),
                IssueError::permanent(format!("no certificate named {name:?} in the config (known: {})", known.join(", "))),
            ));
        }
    }

    let limit = Arc::new(Semaphore::new(rt.config.daemon.max_concurrent.max(1)));
    let results = join_all(todo.into_iter().map(|cert| {
        let rt = rt.clone();
        let limit = limit.clone();
        async move {
            let _permit = limit.acquire().await;
            let result = issue_and_record(&rt, &cert).await;
            (cert, result)
        }
    }))
    .await;

    let mut reloads = Vec::new();
    for (cert, result) in results {
        match result {
            Ok(issued) => {
                if !cert.reload.is_empty() {
                    reloads.push(ReloadRequest {
                        cert_name: cert.name.clone(),
                        domains: cert.domains.clone(),
                        fullchain: issued.paths.fullchain.clone(),
                        key: issued.paths.key.clone(),
                        commands: cert.reload.clone(),
                    });
                }
                report.issued.push((cert.name.clone(), issued));
            }
            Err(e) => {
                error!(cert = %cert.name, error = %e, "issuance failed");
                report.failed.push((cert.name.clone(), e));
            }
        }
    }
    if !reloads.is_empty() {
        report.hooks = hooks::run_reloads(&reloads, rt.config.daemon.hook_timeout).await;
    }
    report
}

/// Issue one certificate and record the outcome (success, or the failure and its retry time) in its
/// state file, so that backoff survives restarts.
pub async fn issue_and_record(rt: &Runtime, cert: &CertificateConfig) -> Result<Issued, IssueError> {
    let replaces = rt.state.load_cert_state(&cert.name).ok().and_then(|s| s.ari_cert_id.clone());
    let result = issue::issue(rt, cert, replaces).await;
    let now = Timestamp::now();
    if let Ok(mut state) = rt.state.load_cert_state(&cert.name) {
        match &result {
            Ok(issued) => {
                state.retry = scheduler::RetryState::default();
                state.last_success = Some(now);
                state.issuer = Some(issued.issuer.clone());
                state.config_fingerprint =
                    Some(scheduler::config_fingerprint(&cert.domains, cert.key, &cert.issuers, cert.profile.as_deref()));
            }
            Err(e) => {
                state.retry = state.retry.on_failure(now, e.retry_after, !e.retryable, &e.message, &mut rand::rng());
            }
        }
        if let Err(e) = rt.state.save_cert_state(&cert.name, &state) {
            error!(cert = %cert.name, error = %e, "cannot record the outcome in the state directory");
        }
    }
    result
}
