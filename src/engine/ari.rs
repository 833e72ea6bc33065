//! ACME Renewal Information (RFC 9773): fetch the CA's suggested window for the installed
//! certificate and record it in the ledger.
//!
//! The window feeds [`super::due::due`]; the refetch time is a timer of its own (see
//! [`super::due::next_wake`]). Certificates whose issuer's directory has no `renewalInfo` are
//! checked again once a day (the directory is cached, so that costs nothing).

use jiff::{SignedDuration, Timestamp};
use tracing::{info, warn};

use crate::acme;
use crate::config::CertificateConfig;
use crate::scheduler;
use crate::store::{AriResult, Event, Installed, Snapshot};

use super::runtime::Runtime;

/// How long to wait before asking again after a failed renewalInfo request.
const ARI_ERROR_RETRY: SignedDuration = SignedDuration::from_hours(1);

/// What [`refresh`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AriOutcome {
    /// Nothing is installed, or the refetch time has not come yet.
    Skipped,
    /// The issuer's directory offers no `renewalInfo`.
    Unsupported,
    /// A window was fetched and recorded.
    Window {
        /// Suggested window start.
        start: Timestamp,
        /// Suggested window end.
        end: Timestamp,
    },
    /// The request failed; it is retried later.
    Failed(String),
}

/// Fetch the renewal window of `cert`'s live certificate (as in `snap`) when its refetch time has
/// come, and record it.
///
/// The CertID comes from the installed leaf, the CA from the issuer that issued it (the state's
/// `issuer`, else the first configured one). The window, the CertID (sent as `replaces` with the
/// next order) and the refetch time (the CA's `Retry-After`, clamped to 1–24 h) go into the ledger;
/// a window fetched for an older certificate is dropped there.
pub async fn refresh(
    rt: &Runtime,
    cert: &CertificateConfig,
    snap: &Snapshot,
    now: Timestamp,
) -> AriOutcome {
    let Some(live) = snap.live() else {
        return AriOutcome::Skipped;
    };
    let state = &snap.state;
    let cert_id = match live_cert_id(state.ari_cert_id.as_deref(), live) {
        Ok(id) => id,
        Err(e) => {
            record(
                rt,
                cert,
                None,
                AriResult::Failed,
                now + scheduler::ARI_REFETCH_MAX,
            );
            return AriOutcome::Failed(e);
        }
    };
    if state.ari_cert_id.as_deref() == Some(cert_id.as_str())
        && state.ari_refetch_at.is_some_and(|at| at > now)
    {
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
    let (result, refetch_at, outcome) = match rt.account(issuer).await {
        Err(e) => (
            AriResult::Failed,
            now + ARI_ERROR_RETRY,
            AriOutcome::Failed(format!("issuer {}: {e}", issuer.name)),
        ),
        Ok(account) => match account.client().renewal_info(&cert_id).await {
            Ok(None) => (
                AriResult::Unsupported,
                now + scheduler::ARI_REFETCH_MAX,
                AriOutcome::Unsupported,
            ),
            Ok(Some(info)) => {
                let (start, end) = (info.suggested_window.start, info.suggested_window.end);
                info!(cert = %cert.name, start = %start, end = %end, "ARI renewal window");
                if let Some(url) = &info.explanation_url {
                    info!(cert = %cert.name, explanation = %url, "the CA explains its renewal window");
                }
                (
                    AriResult::Window(start, end),
                    scheduler::ari_refetch_at(now, info.retry_after),
                    AriOutcome::Window { start, end },
                )
            }
            Err(e) => (
                AriResult::Failed,
                now + ARI_ERROR_RETRY,
                AriOutcome::Failed(format!("issuer {}: renewalInfo: {e}", issuer.name)),
            ),
        },
    };
    if let AriOutcome::Failed(msg) = &outcome {
        warn!(cert = %cert.name, error = %msg, "cannot fetch renewal information; using the default renewal time");
    }
    record(rt, cert, Some(cert_id), result, refetch_at);
    outcome
}

/// The ARI CertID of the live certificate: the one recorded for it (its serial says so), which
/// saves reading and parsing the leaf, else made from the leaf.
fn live_cert_id(recorded: Option<&str>, live: &Installed) -> Result<String, String> {
    if let Some(id) = recorded.filter(|id| acme::ari::cert_id_has_serial(id, &live.cert.serial_hex))
    {
        return Ok(id.to_string());
    }
    let pem = live.fullchain_pem().map_err(|e| e.to_string())?;
    let leaf = acme::Certificate::chain_from_pem(&String::from_utf8_lossy(pem))
        .map_err(|e| e.to_string())?
        .into_iter()
        .next()
        .ok_or("fullchain.pem holds no certificate")?;
    acme::cert_id(&leaf).map_err(|e| e.to_string())
}

/// The ARI result to record with a certificate just issued by a CA whose directory has no
/// `renewalInfo`: unsupported, asked again in a day, as [`refresh`] would record right after.
/// `None` when the CA offers ARI ([`refresh`] then asks it).
pub fn unsupported_at_issuance(
    account: &acme::Account,
    cert_id: Option<&str>,
    now: Timestamp,
) -> Option<Event> {
    if account.client().directory().renewal_info.is_some() {
        return None;
    }
    Some(Event::Ari {
        cert_id: cert_id.map(str::to_string),
        result: AriResult::Unsupported,
        refetch_at: now + scheduler::ARI_REFETCH_MAX,
    })
}

fn record(
    rt: &Runtime,
    cert: &CertificateConfig,
    cert_id: Option<String>,
    result: AriResult,
    refetch_at: Timestamp,
) {
    let event = Event::Ari {
        cert_id,
        result,
        refetch_at,
    };
    if let Err(e) = rt.ledger.record(&cert.name, event) {
        warn!(cert = %cert.name, error = %e, "cannot save renewal information");
    }
}
