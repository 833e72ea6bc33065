//! `dns-persist-01` (draft-ietf-acme-dns-persist, experimental): prove control of a name with a
//! standing TXT record instead of one written per order.
//!
//! The record lives at `_validation-persist.<name>` (for `*.<name>`: at `<name>`, with
//! `policy=wildcard`) and holds an RFC 8659 issue-value naming the CA and the account:
//!
//! ```text
//! _validation-persist.example.com. IN TXT "ca.example; accounturi=https://ca.example/acct/123"
//! ```
//!
//! That is the record format of draft-ietf-acme-dns-persist-00/01 as Let's Encrypt staging and
//! acme2certifier check it (the plain account URL; draft-02's hashed `accounturi` is not used by
//! any CA yet). The user publishes it once (`certkeeper account persist-record` prints it); the
//! solver writes nothing. Before the order is created, [`DnsPersist01Solver::preflight`] reads the
//! record at every authoritative nameserver of the zone and reports a missing or wrong one with
//! the exact value to publish, so the CA is not asked to validate what cannot pass.

use std::collections::BTreeMap;

use super::dns01::{PropagationConfig, fqdn, propagation};
use super::{ChallengeCtx, ChallengeKind, IdentifierKind, SolveError, Solver};

/// The label the standing record lives under (draft-ietf-acme-dns-persist §2).
pub const LABEL: &str = "_validation-persist";

/// The absolute name of the standing record for identifier `name` (a wildcard's base name for
/// `*.name`), lower-case with a trailing dot.
pub fn record_name(name: &str) -> String {
    format!("{LABEL}.{}", fqdn::normalize(name))
}

/// The TXT value to publish: `<issuer-domain>; accounturi=<account URL>`, plus
/// `; policy=wildcard` when the record must also cover `*.name` and names below it.
pub fn record_value(issuer_domain: &str, account_url: &str, wildcard: bool) -> String {
    let mut v = format!(
        "{}; accounturi={account_url}",
        normalize_issuer(issuer_domain)
    );
    if wildcard {
        v.push_str("; policy=wildcard");
    }
    v
}

/// The record as a zone-file line, the TXT value quoted (split into 255-octet strings, as a TXT
/// character-string holds at most 255).
pub fn zone_line(name: &str, value: &str) -> String {
    let parts: Vec<String> = value
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c).replace('"', "\\\"")))
        .collect();
    format!("{} IN TXT {}", record_name(name), parts.join(" "))
}

fn normalize_issuer(s: &str) -> String {
    s.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// An issue-value (RFC 8659 §4.2) as found in a TXT record: the issuer domain and the parameters
/// (tags lower-cased).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssueValue {
    /// The issuer domain name, lower-case, no trailing dot.
    pub issuer: String,
    /// `tag -> value`.
    pub params: BTreeMap<String, String>,
}

/// Parse one TXT value; `None` when it has no issuer domain.
pub fn parse(text: &str) -> Option<IssueValue> {
    let mut parts = text.split(';');
    let issuer = normalize_issuer(parts.next()?);
    if issuer.is_empty() {
        return None;
    }
    let params = parts
        .filter_map(|p| {
            let (tag, value) = p.split_once('=')?;
            Some((tag.trim().to_ascii_lowercase(), value.trim().to_string()))
        })
        .collect();
    Some(IssueValue { issuer, params })
}

/// What the standing record must say for one name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    /// The issuer domain name (the solver's `issuer_domain`).
    pub issuer: String,
    /// The account URL.
    pub account_url: String,
    /// The name is a wildcard: the record needs `policy=wildcard`.
    pub wildcard: bool,
}

impl Expected {
    /// The value to publish.
    pub fn value(&self) -> String {
        record_value(&self.issuer, &self.account_url, self.wildcard)
    }

    /// Judge the TXT values one server answered: `Ok` when one of them is for this issuer, names
    /// this account, has `policy=wildcard` when needed and has not passed its `persistUntil`;
    /// otherwise what is wrong, in words.
    pub fn judge(&self, values: &[String], now_unix: i64) -> Result<(), String> {
        let ours: Vec<IssueValue> = values
            .iter()
            .filter_map(|v| parse(v))
            .filter(|v| v.issuer == normalize_issuer(&self.issuer))
            .collect();
        if ours.is_empty() {
            return Err(if values.is_empty() {
                "no TXT record".to_string()
            } else {
                format!("no record for issuer {} (TXT {values:?})", self.issuer)
            });
        }
        let mut why = Vec::new();
        for v in &ours {
            match v.params.get("accounturi") {
                None => why.push("a record without accounturi".to_string()),
                Some(a) if a != &self.account_url => why.push(format!(
                    "accounturi={a}, which is not this account ({})",
                    self.account_url
                )),
                Some(_) if self.wildcard && !wildcard_policy(v) => {
                    why.push("no policy=wildcard, which a wildcard name needs".to_string())
                }
                Some(_) => match v.params.get("persistuntil").map(|t| t.parse::<i64>()) {
                    Some(Ok(t)) if t < now_unix => {
                        why.push(format!("persistUntil={t}, which has passed"))
                    }
                    Some(Err(_)) => why.push("a persistUntil that is not a UNIX time".to_string()),
                    _ => return Ok(()),
                },
            }
        }
        Err(why.join("; "))
    }
}

fn wildcard_policy(v: &IssueValue) -> bool {
    v.params
        .get("policy")
        .is_some_and(|p| p.eq_ignore_ascii_case("wildcard"))
}

/// A [`Solver`] for `dns-persist-01`: writes nothing, checks the standing record.
#[derive(Debug)]
pub struct DnsPersist01Solver {
    issuer_domain: String,
    propagation: PropagationConfig,
}

impl DnsPersist01Solver {
    /// A solver whose records name `issuer_domain`, read at the nameservers `propagation` finds
    /// (or lists).
    pub fn new(issuer_domain: &str, propagation: PropagationConfig) -> Self {
        Self {
            issuer_domain: normalize_issuer(issuer_domain),
            propagation,
        }
    }

    /// Read the standing record for `name` at every authoritative nameserver and judge it (unless
    /// `propagation.check` is off).
    ///
    /// The error names each server that disagrees, what it answered, and the record to publish.
    pub async fn check(
        &self,
        name: &str,
        wildcard: bool,
        account_url: &str,
    ) -> Result<(), SolveError> {
        if !self.propagation.check {
            // `propagation = { check = false }`: the CA alone judges the record.
            return Ok(());
        }
        let expected = Expected {
            issuer: self.issuer_domain.clone(),
            account_url: account_url.to_string(),
            wildcard,
        };
        let rname = record_name(name);
        let publish = || {
            format!(
                "publish `{}` (certkeeper account persist-record prints it)",
                zone_line(name, &expected.value())
            )
        };
        let lookup = self.propagation.lookup();
        let servers = match lookup.find_zone(&rname).await {
            Ok(zone) => lookup.nameservers(&zone).await,
            Err(e) => Err(e),
        }
        .map_err(|e| {
            SolveError::retryable(format!(
                "dns-persist-01 for {name}: cannot find the nameservers of {rname}: {e}; {}",
                publish()
            ))
        })?;
        let now = jiff::Timestamp::now().as_second();
        let mut wrong = Vec::new();
        for (label, addr) in &servers {
            let answered = match propagation::txt_at(*addr, &rname).await {
                Ok(answer) => expected.judge(&answer.values, now),
                Err(e) => Err(e),
            };
            if let Err(what) = answered {
                let who = propagation::server_label(label, *addr);
                wrong.push(format!("{who} answered {what}"));
            }
        }
        if wrong.is_empty() {
            tracing::info!(name = %name, record = %rname, servers = servers.len(), "dns-persist-01 record in place at all authoritative nameservers");
            return Ok(());
        }
        Err(SolveError::permanent(format!(
            "dns-persist-01 for {}: the standing record {rname} is missing or wrong: {}; {}",
            if wildcard {
                format!("*.{name}")
            } else {
                name.to_string()
            },
            wrong.join("; "),
            publish()
        )))
    }
}

#[async_trait::async_trait]
impl Solver for DnsPersist01Solver {
    fn kind(&self) -> ChallengeKind {
        ChallengeKind::DnsPersist01
    }

    async fn preflight(
        &self,
        name: &str,
        kind: IdentifierKind,
        account_url: &str,
    ) -> Result<(), SolveError> {
        self.check(name, kind == IdentifierKind::Wildcard, account_url)
            .await
    }

    /// Nothing to publish: check the challenge names our issuer domain.
    async fn present(&self, ch: &ChallengeCtx) -> Result<(), SolveError> {
        let Some(p) = &ch.persist else {
            return Err(SolveError::permanent(format!(
                "dns-persist-01 for {}: the challenge carries no account or issuer names",
                ch.identifier
            )));
        };
        let offered: Vec<String> = p
            .issuer_domain_names
            .iter()
            .map(|n| normalize_issuer(n))
            .collect();
        if offered.is_empty() || offered.len() > 10 {
            return Err(SolveError::permanent(format!(
                "dns-persist-01 for {}: the CA's challenge lists {} issuer domain names (1 to 10 allowed): a CA bug, use another solver",
                ch.identifier,
                offered.len()
            )));
        }
        if !offered.contains(&self.issuer_domain) {
            return Err(SolveError::permanent(format!(
                "dns-persist-01 for {}: the CA accepts records for {}, not {:?}: set the solver's issuer_domain to one of them and publish the record with it",
                ch.identifier,
                offered.join(", "),
                self.issuer_domain
            )));
        }
        Ok(())
    }

    /// The record is there (checked again: a resumed order skipped the preflight).
    async fn wait(&self, ch: &ChallengeCtx) -> Result<(), SolveError> {
        let Some(p) = &ch.persist else {
            return Ok(());
        };
        self.check(&ch.identifier, ch.wildcard, &p.account_url)
            .await
    }

    /// Nothing was written: the record stands.
    async fn cleanup(&self, _ch: &ChallengeCtx) -> Result<(), SolveError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCT: &str = "https://ca.example/acct/123";

    #[test]
    fn record_name_and_value() {
        assert_eq!(
            record_name("Example.COM"),
            "_validation-persist.example.com."
        );
        assert_eq!(
            record_value("CA.example.", ACCT, false),
            "ca.example; accounturi=https://ca.example/acct/123"
        );
        assert_eq!(
            record_value("ca.example", ACCT, true),
            "ca.example; accounturi=https://ca.example/acct/123; policy=wildcard"
        );
        assert_eq!(
            zone_line("example.com", "a; accounturi=x"),
            "_validation-persist.example.com. IN TXT \"a; accounturi=x\""
        );
        let long = "x".repeat(300);
        assert_eq!(zone_line("e.com", &long).matches('"').count(), 4);
    }

    #[test]
    fn parses_issue_values_like_rfc8659() {
        let v = parse(" ca.example ;  accounturi=https://a/1 ; Policy=WILDCARD").unwrap();
        assert_eq!(v.issuer, "ca.example");
        assert_eq!(v.params["accounturi"], "https://a/1");
        assert!(wildcard_policy(&v));
        assert_eq!(parse(";accounturi=x"), None);
        assert_eq!(parse("ca.example").unwrap().params.len(), 0);
    }

    #[test]
    fn judges_what_a_server_answered() {
        let e = Expected {
            issuer: "ca.example".into(),
            account_url: ACCT.into(),
            wildcard: false,
        };
        let ok = format!("ca.example; accounturi={ACCT}");
        assert_eq!(e.judge(std::slice::from_ref(&ok), 0), Ok(()));
        // Another CA's record next to ours is ignored.
        assert_eq!(
            e.judge(&["other.example; accounturi=x".into(), ok.clone()], 0),
            Ok(())
        );
        assert!(e.judge(&[], 0).unwrap_err().contains("no TXT record"));
        assert!(
            e.judge(&["other.example; accounturi=x".into()], 0)
                .unwrap_err()
                .contains("no record for issuer ca.example")
        );
        let err = e
            .judge(
                &["ca.example; accounturi=https://ca.example/acct/999".into()],
                0,
            )
            .unwrap_err();
        assert!(
            err.contains("acct/999") && err.contains("not this account"),
            "{err}"
        );
        let w = Expected {
            wildcard: true,
            ..e.clone()
        };
        assert!(
            w.judge(std::slice::from_ref(&ok), 0)
                .unwrap_err()
                .contains("policy=wildcard")
        );
        assert_eq!(w.judge(&[format!("{ok}; policy=wildcard")], 0), Ok(()));
        let until = format!("{ok}; persistUntil=100");
        assert!(
            e.judge(std::slice::from_ref(&until), 200)
                .unwrap_err()
                .contains("has passed")
        );
        assert_eq!(e.judge(&[until], 50), Ok(()));
    }

    fn ctx(names: &[&str]) -> ChallengeCtx {
        ChallengeCtx {
            cert_name: "c".into(),
            identifier: "example.com".into(),
            is_ip: false,
            wildcard: false,
            kind: ChallengeKind::DnsPersist01,
            token: String::new(),
            key_authorization: String::new(),
            persist: Some(super::super::PersistCtx {
                account_url: ACCT.into(),
                issuer_domain_names: names.iter().map(|s| s.to_string()).collect(),
            }),
        }
    }

    #[tokio::test]
    async fn present_checks_the_offered_issuer_domains() {
        let s = DnsPersist01Solver::new("ca.example", PropagationConfig::default());
        s.present(&ctx(&["CA.example", "other.example"]))
            .await
            .unwrap();
        let err = s.present(&ctx(&["other.example"])).await.unwrap_err();
        assert!(
            err.message.contains("accepts records for other.example"),
            "{err}"
        );
        assert!(s.present(&ctx(&[])).await.is_err());
    }
}
