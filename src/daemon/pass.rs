//! One renewal pass: decide which certificates are due, issue them concurrently under a limit, then
//! run the reload hooks of everything that changed, once per command.

use std::sync::Arc;

use futures_util::future::join_all;
use jiff::Timestamp;
use tokio::sync::Semaphore;
use tracing::{error, info};

use crate::config::CertificateConfig;
use crate::hooks::{self, HookOutcome, ReloadRequest};
use crate::scheduler::{self, Due};
use crate::store::{self, CertState};

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
    let state = rt
        .state
        .load_cert_state(&cert.name)
        .ok()
        .flatten()
        .unwrap_or_default();
    let fingerprint = fingerprint(cert);
    let installed = rt
        .output_spec(cert)
        .ok()
        .and_then(|spec| match store::read_installed(&spec) {
            Ok(live) => live,
            Err(e) => {
                info!(cert = %cert.name, error = %e, "installed files unusable; issuing again");
                None
            }
        });
    let fingerprint_changed = installed.as_ref().is_some_and(|live| {
        let mut a = live.cert.names.clone();
        let mut b = cert.domains.clone();
        a.sort();
        b.sort();
        a != b
            || live.cert.key_type != cert.key.as_str()
            || state
                .config_fingerprint
                .as_deref()
                .is_some_and(|f| f != fingerprint)
    });
    let facts = scheduler::CertFacts {
        installed: installed
            .as_ref()
            .map(|live| (live.cert.not_before, live.cert.not_after)),
        fingerprint_changed,
        ari_window: state.ari_window,
        retry: state.retry.clone().for_config(&fingerprint),
        renew_before: cert.renew_before,
    };
    // Jitter seeded from the installed serial and the ARI window: re-evaluating (after a reload, in
    // `certkeeper status`) gives the same time until one of them changes.
    let mut salt = installed
        .as_ref()
        .map(|live| live.cert.serial_hex.clone())
        .unwrap_or_default();
    if let Some((start, end)) = state.ari_window {
        salt.push_str(&format!("/{start}/{end}"));
    }
    scheduler::due(
        &facts,
        now,
        &mut scheduler::stable_rng(&cert.name, salt.as_bytes()),
    )
}

/// The fingerprint of what a certificate's config asks for; a change means issue again.
pub fn fingerprint(cert: &CertificateConfig) -> String {
    scheduler::config_fingerprint(
        &cert.domains,
        cert.key.as_str(),
        &cert.issuers,
        cert.profile.as_deref(),
    )
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
                IssueError::permanent(format!(
                    "no certificate named {name:?} in the config (known: {})",
                    known.join(", ")
                )),
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
pub async fn issue_and_record(
    rt: &Runtime,
    cert: &CertificateConfig,
) -> Result<Issued, IssueError> {
    let replaces = rt
        .state
        .load_cert_state(&cert.name)
        .ok()
        .flatten()
        .and_then(|s| s.ari_cert_id);
    let result = issue::issue(rt, cert, replaces).await;
    let now = Timestamp::now();
    let mut state = match rt.state.load_cert_state(&cert.name) {
        Ok(s) => s.unwrap_or_default(),
        Err(e) => {
            error!(cert = %cert.name, error = %e, "cannot read the certificate's state; starting afresh");
            CertState::default()
        }
    };
    let fp = fingerprint(cert);
    match &result {
        Ok(issued) => {
            state.retry = state.retry.on_success();
            state.last_success = Some(now);
            state.issuer = Some(issued.issuer.clone());
            state.config_fingerprint = Some(fp);
            state.ari_cert_id = issued.ari_cert_id.clone();
            state.ari_window = None;
            state.ari_refetch_at = None;
        }
        Err(e) => {
            let retry = state.retry.clone().for_config(&fp);
            state.retry = retry.on_failure(
                now,
                e.retry_after,
                !e.retryable,
                e.message.clone(),
                &mut rand::rng(),
            );
            state.last_error_at = Some(now);
        }
    }
    if let Err(e) = rt.state.save_cert_state(&cert.name, &state) {
        error!(cert = %cert.name, error = %e, "cannot record the outcome in the state directory");
    }
    result
}
