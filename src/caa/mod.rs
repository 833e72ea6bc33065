//! CAA preflight: before certkeeper asks a CA for a certificate (and in `certkeeper check`), look up
//! the CAA records of each name through the recursive resolvers (`[dns01] resolvers`) and say
//! clearly when they do not let this CA issue, instead of spending an order on a `caa` refusal.
//!
//! The CA decides; this only warns early. A resolver that cannot answer (SERVFAIL, timeout) never
//! blocks an order: the name is reported as unchecked and the order goes on. A CA that publishes no
//! `meta.caaIdentities` (and no `caa_identities` in its issuer table) cannot be matched against
//! records, so the preflight is skipped for it.

pub mod record;

use hickory_proto::rr::{RData, RecordType};

pub use record::{CaaRecord, Request, Verdict};

use crate::challenge::IdentifierKind;
use crate::challenge::dns01::fqdn;
use crate::challenge::dns01::zone::{Lookup, ZoneError};
use crate::config::{CertificateConfig, IssuerConfig};

/// The relevant CAA RRset for `name` (RFC 8659 §3): the records of the first name, climbing from
/// `name` (a wildcard's base name) towards the root, that has any; `None` when none has.
///
/// CNAMEs are followed by the recursive resolver. An error means a resolver did not answer.
pub async fn relevant_rrset(
    lookup: &Lookup,
    name: &str,
) -> Result<Option<(String, Vec<CaaRecord>)>, ZoneError> {
    for candidate in fqdn::ancestors(name) {
        let resp = lookup.ask(&candidate, RecordType::CAA).await?;
        let records: Vec<CaaRecord> = resp
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::CAA(c) => Some(CaaRecord {
                    critical: c.issuer_critical,
                    tag: c.tag.clone(),
                    value: String::from_utf8_lossy(&c.value).into_owned(),
                }),
                _ => None,
            })
            .collect();
        if !records.is_empty() {
            return Ok(Some((candidate, records)));
        }
    }
    Ok(None)
}

/// One name to check and the challenge type its solver uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameToCheck {
    /// The certificate name as configured (`*.example.com` for a wildcard).
    pub name: String,
    /// `dns-01`, `http-01`, `tls-alpn-01`; `None` when no solver is configured for it.
    pub method: Option<&'static str>,
}

/// The preflight's finding for one name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// The CA may issue (no CAA, or a record authorizing it); why, for logs.
    Allowed {
        /// The name.
        name: String,
        /// Why.
        why: String,
    },
    /// The records do not let this CA issue.
    Refused {
        /// The name.
        name: String,
        /// Which record and what to change.
        why: String,
    },
    /// The resolvers did not answer: not checked (never blocks an order).
    Unchecked {
        /// The name.
        name: String,
        /// The resolver error.
        error: String,
    },
}

/// The DNS names of `cert` (IP addresses have no CAA) with the challenge type `issuer`'s solver
/// for each uses.
pub fn names_to_check(cert: &CertificateConfig, issuer: &IssuerConfig) -> Vec<NameToCheck> {
    cert.domains
        .iter()
        .filter_map(|d| {
            let (kind, base) = IdentifierKind::split(d);
            if kind == IdentifierKind::Ip {
                return None;
            }
            let method = issuer
                .solver_for(base, kind)
                .map(|s| s.kind.challenge_kind().as_str());
            Some(NameToCheck {
                name: d.clone(),
                method,
            })
        })
        .collect()
}

/// The CAA identities to match records against: the issuer's `caa_identities` override, else the
/// directory's `meta.caaIdentities` (lower-case, no trailing dot). Empty: skip the preflight.
pub fn identities(issuer: &IssuerConfig, published: &[String]) -> Vec<String> {
    issuer.caa_identities.clone().unwrap_or_else(|| {
        published
            .iter()
            .map(|i| i.trim_end_matches('.').to_ascii_lowercase())
            .collect()
    })
}

/// Look up and judge the CAA records of each name for a CA known as `identities`, for the account
/// `account_uri` (when there is one yet).
pub async fn check(
    lookup: &Lookup,
    identities: &[String],
    account_uri: Option<&str>,
    names: &[NameToCheck],
) -> Vec<Finding> {
    let mut out = Vec::new();
    for n in names {
        let (kind, base) = IdentifierKind::split(&n.name);
        let name = n.name.clone();
        out.push(match relevant_rrset(lookup, base).await {
            Err(e) => Finding::Unchecked {
                name,
                error: e.to_string(),
            },
            Ok(None) => Finding::Allowed {
                name,
                why: "no CAA records at or above it".to_string(),
            },
            Ok(Some((owner, records))) => {
                let req = Request {
                    identities,
                    account_uri,
                    method: n.method,
                    wildcard: kind == IdentifierKind::Wildcard,
                };
                match record::judge(&records, &owner, &req) {
                    Verdict::Allowed(why) => Finding::Allowed { name, why },
                    Verdict::Refused(why) => Finding::Refused { name, why },
                }
            }
        });
    }
    out
}

/// The refusals among `findings` as one message, or `None` when nothing is refused.
pub fn refusal_message(findings: &[Finding]) -> Option<String> {
    let refused: Vec<String> = findings
        .iter()
        .filter_map(|f| match f {
            Finding::Refused { name, why } => Some(format!("{name}: {why}")),
            _ => None,
        })
        .collect();
    (!refused.is_empty()).then(|| {
        format!(
            "CAA records forbid this CA to issue (checked before ordering; the CA was not asked): {}",
            refused.join("; ")
        )
    })
}
