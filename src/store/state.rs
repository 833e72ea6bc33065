//! The data kept about accounts and certificates: [`CertState`] and the order traces behind
//! `certkeeper explain`, [`AccountRecord`]. Where and how they are kept is the ledger's and the
//! account store's business ([`super::Ledger`], [`super::AccountStore`]).

use serde::{Deserialize, Serialize};

/// A filesystem-safe account id for an issuer and its directory URL.
///
/// The issuer name (characters outside `[A-Za-z0-9_.-]` replaced by `_`) followed by the first 12 hex
/// digits of the SHA-256 of the directory URL, so that pointing an issuer at another CA never reuses
/// the old CA's account.
pub fn account_id(issuer: &str, directory_url: &str) -> String {
    let safe: String = issuer
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let safe = safe.trim_start_matches('.');
    let digest = openssl::sha::sha256(directory_url.as_bytes());
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("{safe}-{hex}")
}

/// What the CA told us about a registered account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRecord {
    /// The account URL (the `kid` of JWS requests).
    pub url: String,
    /// The directory URL the account belongs to.
    pub directory: String,
    /// Contact URLs registered with the account.
    #[serde(default)]
    pub contact: Vec<String>,
    /// When the account was registered.
    pub created: jiff::Timestamp,
}

/// A stored account: its key, and its record once registration succeeded.
///
/// `Debug` leaves the key out.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredAccount {
    /// The account private key, PEM.
    pub key_pem: String,
    /// `None` when the key was saved but registration did not complete: register (again) with this
    /// key; the CA returns the existing account if there is one.
    pub record: Option<AccountRecord>,
}

impl std::fmt::Debug for StoredAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredAccount")
            .field("key_pem", &"<redacted>")
            .field("record", &self.record)
            .finish()
    }
}

/// Per-certificate state, kept across restarts.
///
/// Every field has a serde default and unknown fields are ignored, so files written by older or
/// newer versions load.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CertState {
    /// The URL of the order in flight, to resume after a restart.
    pub order_url: Option<String>,
    /// The issuer (config name) the in-flight order or the last success used.
    pub issuer: Option<String>,
    /// When a certificate was last installed.
    pub last_success: Option<jiff::Timestamp>,
    /// When the last error happened.
    pub last_error_at: Option<jiff::Timestamp>,
    /// Failures since the last success, the backoff and the last error.
    pub retry: crate::scheduler::RetryState,
    /// Fingerprint of the certificate's config when it was last issued.
    pub config_fingerprint: Option<String>,
    /// ARI (RFC 9773) CertID of the installed certificate, sent as `replaces` when renewing it.
    pub ari_cert_id: Option<String>,
    /// The issuer (config name) that issued the installed certificate: `replaces` goes only to it
    /// (`issuer` names the issuer of an order in flight once one is created).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ari_cert_issuer: Option<String>,
    /// The CA's suggested renewal window for the installed certificate.
    pub ari_window: Option<(jiff::Timestamp, jiff::Timestamp)>,
    /// When to ask the CA for renewal information again.
    pub ari_refetch_at: Option<jiff::Timestamp>,
    /// Serial (hex, as [`crate::store::VerifiedCert::serial_hex`]) of a certificate revoked with
    /// `certkeeper revoke`: while the live pair has this serial it counts as missing, so the next pass
    /// issues a replacement at once.
    pub revoked_serial: Option<String>,
    /// What the CA said during the last order attempt (success or failure), for `certkeeper explain`.
    pub last_order: Option<OrderTrace>,
    /// Serial of an installed pair whose reload hooks have not completed yet; recorded before the
    /// pair is switched live, cleared when the hooks ran. A pending reload runs at the next start.
    pub reload_pending: Option<String>,
    /// Serial of the pair the reload hooks last ran for.
    pub reloaded_serial: Option<String>,
    /// [`key_fingerprint`] of the private key certkeeper generated for the installed certificate;
    /// `key_reuse` reuses only that key, never whatever file sits behind `.live` (an imported or
    /// planted one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_fingerprint: Option<String>,
    /// What the `verify_deploy` endpoints served at the last check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<DeployCheck>,
    /// What was last notified about this certificate (see [`crate::notify::rule`]).
    #[serde(default, skip_serializing_if = "is_default")]
    pub notified: crate::notify::Notified,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// One check of what the `verify_deploy` endpoints of a certificate serve.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeployCheck {
    /// When it was checked.
    pub at: Option<jiff::Timestamp>,
    /// The installed serial (hex) the endpoints were compared with.
    pub serial: String,
    /// Every endpoint served exactly the installed certificate.
    pub deployed: bool,
    /// What each endpoint served.
    pub endpoints: Vec<EndpointServed>,
}

/// What one endpoint served.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EndpointServed {
    /// The endpoint (`host:port`).
    pub endpoint: String,
    /// It served the installed certificate (the same DER).
    pub matches: bool,
    /// The serial (hex) of the leaf it served, when it answered.
    pub serial: Option<String>,
    /// Not After of that leaf.
    pub not_after: Option<jiff::Timestamp>,
    /// Why it could not be asked (connection refused, TLS failure), when it did not answer.
    pub error: Option<String>,
}

impl DeployCheck {
    /// The endpoints that do not serve the installed certificate, one line each, for logs and
    /// messages: `127.0.0.1:443 serves serial 0a (not after ...)` or why it could not be asked.
    pub fn mismatches(&self) -> Vec<String> {
        self.endpoints
            .iter()
            .filter(|e| !e.matches)
            .map(|e| match (&e.serial, &e.error) {
                (Some(s), _) => format!(
                    "{} serves serial {s}{}",
                    e.endpoint,
                    e.not_after
                        .map(|t| format!(" (not after {t})"))
                        .unwrap_or_default()
                ),
                (None, Some(err)) => format!("{} could not be checked: {err}", e.endpoint),
                (None, None) => format!("{} served nothing", e.endpoint),
            })
            .collect()
    }

    /// The Not After of the leaf served by the endpoints, the earliest when they differ.
    pub fn served_not_after(&self) -> Option<jiff::Timestamp> {
        self.endpoints.iter().filter_map(|e| e.not_after).min()
    }
}

/// The SHA-256 of a key's public half (SubjectPublicKeyInfo DER), hex: what identifies a private
/// key in the state without storing it.
pub fn key_fingerprint<T: openssl::pkey::HasPublic>(
    key: &openssl::pkey::PKeyRef<T>,
) -> Option<String> {
    let der = key.public_key_to_der().ok()?;
    let digest = openssl::sha::sha256(&der);
    Some(digest.iter().map(|b| format!("{b:02x}")).collect())
}

/// The last order attempt of a certificate as the CA reported it: the order, its authorizations
/// and challenges with the CA's problem documents, and the error that ended it.
///
/// Statuses are kept as the CA's words (`pending`, `invalid`, ...) so that a status this version
/// does not know still loads.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OrderTrace {
    /// When the attempt started.
    pub at: Option<jiff::Timestamp>,
    /// The issuer (config name) the attempt used.
    pub issuer: Option<String>,
    /// The order URL, when an order was created or resumed.
    pub url: Option<String>,
    /// The order status last seen.
    pub status: Option<String>,
    /// The order's own problem document (`error` of an invalid order).
    pub problem: Option<ProblemTrace>,
    /// The authorizations, as last seen.
    pub authorizations: Vec<AuthzTrace>,
    /// Why the attempt failed; `None` after success.
    pub error: Option<ErrorTrace>,
}

/// One authorization of an [`OrderTrace`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthzTrace {
    /// The authorization URL.
    pub url: String,
    /// The identifier value (without `*.` for a wildcard).
    pub identifier: String,
    /// True for a wildcard authorization.
    pub wildcard: bool,
    /// The authorization status.
    pub status: String,
    /// Its challenges.
    pub challenges: Vec<ChallengeTrace>,
}

/// One challenge of an [`AuthzTrace`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChallengeTrace {
    /// The challenge type (`http-01`, `dns-01`, ...).
    #[serde(rename = "type")]
    pub type_: String,
    /// The challenge status.
    pub status: String,
    /// The challenge URL.
    pub url: String,
    /// When the CA validated it.
    pub validated: Option<String>,
    /// The CA's problem document for a failed validation.
    pub problem: Option<ProblemTrace>,
}

/// An ACME problem document as recorded, with certkeeper's advice for it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProblemTrace {
    /// The problem type URN.
    #[serde(rename = "type")]
    pub type_: String,
    /// The CA's detail text.
    pub detail: Option<String>,
    /// The HTTP status.
    pub status: Option<u16>,
    /// Per-identifier problems.
    pub subproblems: Vec<SubProblemTrace>,
    /// Cause and remedy in plain words ([`crate::acme::Problem::advice`]).
    pub advice: String,
    /// When the CA said to try again (rate limits, Retry-After).
    pub retry_after: Option<jiff::Timestamp>,
}

/// One sub-problem of a [`ProblemTrace`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SubProblemTrace {
    /// The problem type URN.
    #[serde(rename = "type")]
    pub type_: String,
    /// The CA's detail text.
    pub detail: Option<String>,
    /// The identifier, as `type:value`.
    pub identifier: Option<String>,
}

/// The error that ended an order attempt.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ErrorTrace {
    /// The whole message, as logged.
    pub message: String,
    /// Trying again later may succeed without a config change.
    pub retryable: bool,
    /// The CA's problem document behind it, when there was one.
    pub problem: Option<ProblemTrace>,
}

impl From<&crate::acme::Problem> for ProblemTrace {
    fn from(p: &crate::acme::Problem) -> Self {
        let status = p.effective_status();
        Self {
            type_: p.type_.clone(),
            detail: p.detail.clone(),
            status: (status != 0).then_some(status),
            subproblems: p
                .subproblems
                .iter()
                .map(|s| SubProblemTrace {
                    type_: s.type_.clone(),
                    detail: s.detail.clone(),
                    identifier: s
                        .identifier
                        .as_ref()
                        .map(|i| format!("{}:{}", i.type_, i.value)),
                })
                .collect(),
            advice: p.advice(),
            retry_after: p.retry_after,
        }
    }
}

impl AuthzTrace {
    /// Record an authorization as the CA returned it.
    pub fn from_authorization(url: &str, a: &crate::acme::Authorization) -> Self {
        Self {
            url: url.to_string(),
            identifier: a.identifier.value.clone(),
            wildcard: a.wildcard,
            status: status_word(&a.status),
            challenges: a
                .challenges
                .iter()
                .map(|c| {
                    let problem = c.error.as_ref().map(|p| {
                        let mut p = p.clone();
                        p.origin =
                            crate::acme::ProblemOrigin::Challenge(a.identifier.value.clone());
                        ProblemTrace::from(&p)
                    });
                    ChallengeTrace {
                        type_: c.type_.clone(),
                        status: status_word(&c.status),
                        url: c.url.clone(),
                        validated: c.validated.clone(),
                        problem,
                    }
                })
                .collect(),
        }
    }
}

/// The CA's word for a status enum (its serde form), e.g. `invalid`.
pub fn status_word<T: Serialize + std::fmt::Debug>(s: &T) -> String {
    match serde_json::to_value(s) {
        Ok(serde_json::Value::String(w)) => w,
        _ => format!("{s:?}").to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_id_is_safe_and_distinguishes_directories() {
        let a = account_id("le", "https://acme-v02.api.letsencrypt.org/directory");
        let b = account_id(
            "le",
            "https://acme-staging-v02.api.letsencrypt.org/directory",
        );
        assert!(a.starts_with("le-") && a.len() == 15, "{a}");
        assert_ne!(a, b);
        assert_eq!(
            a,
            account_id("le", "https://acme-v02.api.letsencrypt.org/directory")
        );
        let weird = account_id("../x y", "u");
        assert!(!weird.contains('/') && !weird.starts_with('.'), "{weird}");
        crate::store::storage::check_name(&weird).unwrap();
    }

    #[test]
    fn order_trace_roundtrips_and_records_problems_with_advice() {
        let authz: crate::acme::Authorization = serde_json::from_str(
            r#"{"identifier": {"type": "dns", "value": "www.example.com"}, "status": "invalid",
                "challenges": [{"type": "http-01", "url": "https://ca/chal/1", "token": "t", "status": "invalid",
                  "error": {"type": "urn:ietf:params:acme:error:unauthorized", "status": 403,
                            "detail": "Invalid response from http://www.example.com/.well-known/acme-challenge/t: 404",
                            "subproblems": [{"type": "urn:ietf:params:acme:error:dns", "detail": "sub",
                                             "identifier": {"type": "dns", "value": "www.example.com"}}]}}]}"#,
        )
        .unwrap();
        let rec = AuthzTrace::from_authorization("https://ca/authz/1", &authz);
        assert_eq!(rec.status, "invalid");
        assert_eq!(rec.challenges[0].status, "invalid");
        let p = rec.challenges[0].problem.clone().unwrap();
        assert_eq!(p.status, Some(403));
        assert_eq!(
            p.subproblems[0].identifier.as_deref(),
            Some("dns:www.example.com")
        );
        // The advice is the challenge advice (origin set to the identifier), not a generic one.
        assert!(
            p.advice
                .starts_with("the CA could not verify control of www.example.com"),
            "{}",
            p.advice
        );
        let st = CertState {
            last_order: Some(OrderTrace {
                url: Some("https://ca/order/1".into()),
                status: Some("invalid".into()),
                authorizations: vec![rec],
                ..Default::default()
            }),
            ..Default::default()
        };
        let json = serde_json::to_string(&st).unwrap();
        assert_eq!(serde_json::from_str::<CertState>(&json).unwrap(), st);
        // A status word this version does not know still loads.
        let t = serde_json::from_str::<CertState>(
            r#"{"last_order": {"status": "someday", "authorizations": [{"status": "brandnew"}]}}"#,
        )
        .unwrap()
        .last_order
        .unwrap();
        assert_eq!(t.authorizations[0].status, "brandnew");
    }

    #[test]
    fn old_and_newer_state_files_load() {
        // An older file with few fields and a newer one with unknown fields both load; the old
        // `permanent` flag reads as paused.
        let old: CertState = serde_json::from_str(
            r#"{"retry": {"failures": 2, "permanent": true}, "future_field": [1]}"#,
        )
        .unwrap();
        assert_eq!((old.retry.failures, old.order_url), (2, None));
        assert!(old.retry.paused);
    }
}
