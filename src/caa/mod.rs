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
/// `account_uri` (when there is one yet). The names are looked up concurrently; the findings come
/// in the order of `names`.
pub async fn check(
    lookup: &Lookup,
    identities: &[String],
    account_uri: Option<&str>,
    names: &[NameToCheck],
) -> Vec<Finding> {
    futures_util::future::join_all(
        names
            .iter()
            .map(|n| check_one(lookup, identities, account_uri, n)),
    )
    .await
}

async fn check_one(
    lookup: &Lookup,
    identities: &[String],
    account_uri: Option<&str>,
    n: &NameToCheck,
) -> Finding {
    let (kind, base) = IdentifierKind::split(&n.name);
    let name = n.name.clone();
    match relevant_rrset(lookup, base).await {
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
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Message, OpCode, ResponseCode};
    use hickory_proto::rr::rdata::CAA;
    use hickory_proto::rr::{Name, Record};
    use std::net::SocketAddr;

    /// A loopback recursive resolver stand-in: CAA `issue` records for the names in `zone`,
    /// NOERROR/empty for other names, SERVFAIL for names under `broken.test.`.
    async fn resolver(zone: &'static [(&'static str, &'static str, bool)]) -> SocketAddr {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                let Ok(q) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut r = Message::response(q.metadata.id, OpCode::Query);
                r.queries = q.queries.clone();
                let qname = q.queries[0].name().to_ascii().to_ascii_lowercase();
                if qname.ends_with("broken.test.") {
                    r.metadata.response_code = ResponseCode::ServFail;
                }
                for (owner, issuer, wild) in zone {
                    if *owner == qname {
                        let name = Some(Name::from_ascii(issuer).unwrap());
                        let caa = if *wild {
                            CAA::new_issuewild(false, name, vec![])
                        } else {
                            CAA::new_issue(false, name, vec![])
                        };
                        r.answers.push(Record::from_rdata(
                            q.queries[0].name().clone(),
                            60,
                            RData::CAA(caa),
                        ));
                    }
                }
                let _ = sock.send_to(&r.to_vec().unwrap(), from).await;
            }
        });
        addr
    }

    const ZONE: &[(&str, &str, bool)] = &[
        ("example.test.", "pebble.test", false),
        ("example.test.", "other-ca.test", true),
        ("deep.example.test.", "other-ca.test", false),
    ];

    fn to_check(name: &str) -> NameToCheck {
        NameToCheck {
            name: name.to_string(),
            method: Some("dns-01"),
        }
    }

    #[test]
    fn identities_come_from_the_issuer_or_else_the_directory() {
        let mut issuer = IssuerConfig {
            name: "le".into(),
            directory: "https://ca.test/dir".into(),
            contact: vec![],
            ca_bundle: None,
            eab: None,
            account_key: crate::acme::KeyType::EcdsaP256,
            caa_identities: None,
            solvers: vec![],
        };
        let published = vec!["LetsEncrypt.org.".to_string()];
        assert_eq!(identities(&issuer, &published), ["letsencrypt.org"]);
        assert!(identities(&issuer, &[]).is_empty());
        issuer.caa_identities = Some(vec!["ca.internal.test".into()]);
        assert_eq!(identities(&issuer, &published), ["ca.internal.test"]);
    }

    #[tokio::test]
    async fn climbs_to_the_closest_rrset() {
        let lookup = Lookup::recursive(vec![resolver(ZONE).await]);
        // The name's own records, else the first ancestor's; none at all: no restriction.
        let (owner, recs) = relevant_rrset(&lookup, "a.b.example.test")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(owner, "example.test.");
        assert_eq!(recs.len(), 2);
        let (owner, _) = relevant_rrset(&lookup, "x.deep.example.test.")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(owner, "deep.example.test.");
        assert_eq!(
            relevant_rrset(&lookup, "elsewhere.test").await.unwrap(),
            None
        );

        let ids = vec!["pebble.test".to_string()];
        let names = [
            to_check("www.example.test"),
            to_check("*.example.test"),
            to_check("x.deep.example.test"),
            to_check("free.test"),
            to_check("a.broken.test"),
        ];
        let found = check(&lookup, &ids, Some("https://ca.test/acct/1"), &names).await;
        assert!(matches!(&found[0], Finding::Allowed { name, .. } if name == "www.example.test"));
        // The wildcard is ruled by issuewild, which names another CA.
        assert!(
            matches!(&found[1], Finding::Refused { why, .. } if why.contains("issuewild")),
            "{:?}",
            found[1]
        );
        // The deeper RRset wins even though example.test. would allow this CA.
        assert!(
            matches!(&found[2], Finding::Refused { why, .. } if why.contains("deep.example.test.")),
            "{:?}",
            found[2]
        );
        assert!(matches!(&found[3], Finding::Allowed { .. }));
        // SERVFAIL: unchecked, never a refusal.
        assert!(
            matches!(&found[4], Finding::Unchecked { error, .. } if error.contains("SERVFAIL") || error.contains("Server Failure")),
            "{:?}",
            found[4]
        );
        let msg = refusal_message(&found).unwrap();
        assert!(
            msg.starts_with("CAA records forbid this CA to issue (checked before ordering; the CA was not asked): *.example.test: ")
                && msg.contains("; x.deep.example.test: "),
            "{msg}"
        );
        assert_eq!(refusal_message(&found[..1]), None);
    }
}
