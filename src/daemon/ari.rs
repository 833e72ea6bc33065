//! ACME Renewal Information (RFC 9773) in the daemon: fetch the CA's suggested window for each
//! installed certificate, store it in the certificate's state, and tell the loop when to ask again.
//!
//! The window feeds [`crate::scheduler::due`] through [`super::pass::due_for`]; the refetch time is
//! a timer of its own (see [`next_wake`]). Certificates whose issuer's directory has no
//! `renewalInfo` are checked again once a day (the directory is cached, so that costs nothing).

use jiff::{SignedDuration, Timestamp};
use tracing::{info, warn};

use crate::acme;
use crate::config::CertificateConfig;
use crate::scheduler::{self, Due};
use crate::store;

use super::Runtime;
use super::pass::due_for;

/// How long to wait before asking again after a failed renewalInfo request.
const ARI_ERROR_RETRY: SignedDuration = SignedDuration::from_hours(1);

/// What [`refresh`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AriOutcome {
    /// Nothing is installed, or the refetch time has not come yet.
    Skipped,
    /// The issuer's directory offers no `renewalInfo`.
    Unsupported,
    /// A window was fetched and stored.
    Window {
        /// Suggested window start.
        start: Timestamp,
        /// Suggested window end.
        end: Timestamp,
    },
    /// The request failed; it is retried later.
    Failed(String),
}

/// Fetch the renewal window of `cert`'s installed certificate when its refetch time has come.
///
/// The CertID comes from the installed leaf, the CA from the issuer that issued it (the state's
/// `issuer`, else the first configured one). The window, the CertID (sent as `replaces` with the
/// next order) and the refetch time (the CA's `Retry-After`, clamped to 1–24 h) are saved in the
/// certificate's state. A window fetched for an older certificate is dropped first.
pub async fn refresh(rt: &Runtime, cert: &CertificateConfig, now: Timestamp) -> AriOutcome {
    let mut state = match rt.state.load_cert_state(&cert.name) {
        Ok(s) => s.unwrap_or_default(),
        Err(_) => return AriOutcome::Skipped,
    };
    let Some(live) = store::read_installed(&cert.output).ok().flatten() else {
        return AriOutcome::Skipped;
    };
    let cert_id = match openssl::x509::X509::from_pem(&live.fullchain_pem)
        .map_err(|e| e.to_string())
        .and_then(|leaf| acme::cert_id(&leaf).map_err(|e| e.to_string()))
    {
        Ok(id) => id,
        Err(e) => {
            state.ari_refetch_at = Some(now + scheduler::ARI_REFETCH_MAX);
            save(rt, cert, &state);
            return AriOutcome::Failed(e);
        }
    };
    if state.ari_cert_id.as_deref() != Some(cert_id.as_str()) {
        // The installed certificate is not the one the stored window was for.
        state.ari_cert_id = Some(cert_id.clone());
        state.ari_window = None;
        state.ari_refetch_at = None;
    }
    if state.ari_refetch_at.is_some_and(|at| at > now) {
        save(rt, cert, &state);
        return AriOutcome::Skipped;
    }
    let issuer_name = state
        .issuer
        .clone()
        .filter(|i| rt.config.issuers.contains_key(i))
        .or_else(|| cert.issuers.first().cloned());
    let Some(issuer) = issuer_name.and_then(|n| rt.config.issuers.get(&n)) else {
        return AriOutcome::Skipped;
    };
    let outcome = match rt.account(issuer).await {
        Err(e) => {
            state.ari_refetch_at = Some(now + ARI_ERROR_RETRY);
            AriOutcome::Failed(e.to_string())
        }
        Ok(account) => match account.client().renewal_info(&cert_id).await {
            Ok(None) => {
                state.ari_window = None;
                state.ari_refetch_at = Some(now + scheduler::ARI_REFETCH_MAX);
                AriOutcome::Unsupported
            }
            Ok(Some(info)) => {
                let (start, end) = (info.suggested_window.start, info.suggested_window.end);
                state.ari_window = Some((start, end));
                state.ari_refetch_at = Some(scheduler::ari_refetch_at(now, info.retry_after));
                info!(cert = %cert.name, start = %start, end = %end, "ARI renewal window");
                if let Some(url) = &info.explanation_url {
                    info!(cert = %cert.name, explanation = %url, "the CA explains its renewal window");
                }
                AriOutcome::Window { start, end }
            }
            Err(e) => {
                state.ari_refetch_at = Some(now + ARI_ERROR_RETRY);
                AriOutcome::Failed(format!("issuer {}: renewalInfo: {e}", issuer.name))
            }
        },
    };
    if let AriOutcome::Failed(msg) = &outcome {
        warn!(cert = %cert.name, error = %msg, "cannot fetch renewal information; using the default renewal time");
    }
    save(rt, cert, &state);
    outcome
}

fn save(rt: &Runtime, cert: &CertificateConfig, state: &store::CertState) {
    if let Err(e) = rt.state.save_cert_state(&cert.name, state) {
        warn!(cert = %cert.name, error = %e, "cannot save renewal information");
    }
}

/// When the daemon must next look at `cert`: its due time, or earlier when the ARI window is to be
/// fetched (again) first. `None` when nothing is scheduled (stopped after a permanent error).
pub fn next_wake(
    rt: &Runtime,
    cert: &CertificateConfig,
    now: Timestamp,
) -> (Due, Option<Timestamp>) {
    let due = due_for(rt, cert, now);
    let wake = due.wake_at();
    let Some(wake) = wake else {
        return (due, None);
    };
    let installed = matches!(store::read_installed(&cert.output), Ok(Some(_)));
    if !installed {
        return (due, Some(wake));
    }
    let refetch = rt
        .state
        .load_cert_state(&cert.name)
        .ok()
        .flatten()
        .and_then(|s| s.ari_refetch_at)
        .unwrap_or(now);
    (due, Some(wake.min(refetch)))
}
