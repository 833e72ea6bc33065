//! Reloads that are never lost: which serial was last reloaded is in the ledger.
//!
//! A pair is recorded as "reload pending" before it is switched live ([`crate::store::Event::Installing`]);
//! when its reload hooks have run to an exit status, [`run`] records it as reloaded. Whatever
//! happens in between (the process killed, a hook that hangs past its timeout or cannot be
//! started), the next start finds the pending serial still installed and runs the reload again
//! ([`pending`]). A hook that exits non-zero has completed: it is reported (the pass fails, the log
//! says why) and not repeated, since running `nginx -t && systemctl reload nginx` again gives the
//! same answer until someone fixes the web server.

use jiff::Timestamp;
use tracing::warn;

use crate::config::CertificateConfig;
use crate::hooks::{self, HookOutcome, HookStatus, ReloadRequest};
use crate::store::{Event, Ledger, Snapshot};

/// The reload request of `cert` for the pair with `serial`, or `None` when it has no reload hooks.
pub fn request(cert: &CertificateConfig, serial: &str) -> Option<ReloadRequest> {
    (!cert.reload.is_empty()).then(|| ReloadRequest {
        cert_name: cert.name.clone(),
        serial: serial.to_string(),
        domains: cert.domains.clone(),
        fullchain: cert.output.dir.join("fullchain.pem"),
        key: cert.output.dir.join("privkey.pem"),
        commands: cert.reload.clone(),
        env: cert.reload_env.clone(),
    })
}

/// The reload of `cert` that did not complete for its installed pair, according to `snap`.
pub fn pending_one(cert: &CertificateConfig, snap: &Snapshot) -> Option<ReloadRequest> {
    request(cert, snap.reload_pending()?)
}

/// Run the hooks of `requests` (each distinct command once) and record, for every certificate whose
/// commands all ran to an exit status, that its serial is reloaded.
pub async fn run(
    ledger: &Ledger,
    requests: &[ReloadRequest],
    timeout: std::time::Duration,
) -> Vec<HookOutcome> {
    let outcomes = hooks::run_reloads(requests, timeout).await;
    record(ledger, requests, &outcomes);
    outcomes
}

/// Record the certificates of `requests` whose commands all ran to an exit status in `outcomes` as
/// reloaded.
pub fn record(ledger: &Ledger, requests: &[ReloadRequest], outcomes: &[HookOutcome]) {
    for req in requests {
        let ok = outcomes
            .iter()
            .filter(|o| o.cert_names.contains(&req.cert_name))
            .all(|o| matches!(o.status, HookStatus::Ok { .. } | HookStatus::Failed { .. }));
        if !ok {
            continue;
        }
        let event = Event::Reloaded {
            serial: req.serial.clone(),
        };
        if let Err(e) = ledger.record(&req.cert_name, event) {
            warn!(cert = %req.cert_name, error = %e, at = %Timestamp::now(), "the reload ran, but could not be recorded; it runs again at the next start");
        }
    }
}
