//! CAA records judged the way a CA judges them (RFC 8659, with the RFC 8657 `accounturi` and
//! `validationmethods` parameters): does the relevant RRset let this CA issue for a name?

/// One CAA record as published: flags, tag and the raw value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaaRecord {
    /// The Issuer Critical flag (bit 128 of the flags).
    pub critical: bool,
    /// The property tag as published (`issue`, `issuewild`, `iodef`, ...).
    pub tag: String,
    /// The value as text.
    pub value: String,
}

impl CaaRecord {
    /// A record from its presentation parts.
    pub fn new(critical: bool, tag: &str, value: &str) -> Self {
        Self {
            critical,
            tag: tag.to_string(),
            value: value.to_string(),
        }
    }

    /// The record in zone-file form, for messages: `0 issue "letsencrypt.org"`.
    pub fn display(&self) -> String {
        format!(
            "{} {} \"{}\"",
            if self.critical { 128 } else { 0 },
            self.tag,
            self.value
        )
    }
}

/// Tags a CA understands whether or not they concern it; a critical record with any other tag
/// forbids issuance (RFC 8659 §4.1).
const KNOWN_TAGS: [&str; 7] = [
    "issue",
    "issuewild",
    "iodef",
    "issuemail",
    "issuevmc",
    "contactemail",
    "contactphone",
];

/// An `issue` or `issuewild` value (RFC 8659 §4.2): the CA's domain name (none for `";"`, which
/// authorizes no CA) and its parameters in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssueValue {
    /// The issuer domain name, lower-case, or `None` when the value names no CA.
    pub issuer: Option<String>,
    /// `tag=value` parameters, as written.
    pub parameters: Vec<(String, String)>,
}

impl IssueValue {
    /// The value of parameter `tag`, if present.
    pub fn parameter(&self, tag: &str) -> Option<&str> {
        self.parameters
            .iter()
            .find(|(t, _)| t == tag)
            .map(|(_, v)| v.as_str())
    }
}

fn is_wsp(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// `label = (ALPHA / DIGIT) *( *("-") (ALPHA / DIGIT))`: also the grammar of parameter tags.
fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

/// Parse an `issue`/`issuewild` value:
/// `[*WSP issuer-domain-name *WSP] [";" *WSP [parameters *WSP]]`.
pub fn parse_issue_value(value: &str) -> Result<IssueValue, String> {
    let (name, params) = match value.split_once(';') {
        Some((n, p)) => (n, Some(p)),
        None => (value, None),
    };
    let name = name.trim_matches(is_wsp);
    let issuer = if name.is_empty() {
        None
    } else {
        let name = name.strip_suffix('.').unwrap_or(name);
        if !name.split('.').all(is_label) {
            return Err(format!("{name:?} is not an issuer domain name"));
        }
        Some(name.to_ascii_lowercase())
    };
    let mut parameters = Vec::new();
    if let Some(params) = params {
        let pieces: Vec<&str> = params.split(';').map(|p| p.trim_matches(is_wsp)).collect();
        for (i, piece) in pieces.iter().enumerate() {
            if piece.is_empty() && i + 1 == pieces.len() {
                break; // "ca.example;" and "ca.example; a=b;" end with an empty piece
            }
            let Some((tag, val)) = piece.split_once('=') else {
                return Err(format!("parameter {piece:?} is not tag=value"));
            };
            let (tag, val) = (tag.trim_matches(is_wsp), val.trim_matches(is_wsp));
            if !is_label(tag) {
                return Err(format!("parameter tag {tag:?} is not valid"));
            }
            if !val.bytes().all(|c| (0x21..=0x7e).contains(&c) && c != b';') {
                return Err(format!("parameter {tag} has an invalid value {val:?}"));
            }
            parameters.push((tag.to_string(), val.to_string()));
        }
    }
    Ok(IssueValue { issuer, parameters })
}

/// What the CA would be asked for: who it is and how the name is validated.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The CA's CAA identities (its directory's `meta.caaIdentities`, or `caa_identities`).
    pub identities: &'a [String],
    /// The account URL at this CA, when there is an account yet.
    pub account_uri: Option<&'a str>,
    /// The challenge type the solver for the name uses (`dns-01`), when one is configured.
    pub method: Option<&'a str>,
    /// True for a wildcard name (`*.example.com`): `issuewild` records rule when present.
    pub wildcard: bool,
}

/// The judgement on one relevant RRset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The CA may issue; the reason, for logs.
    Allowed(String),
    /// The CA may not issue: why, in words that say which record and what to change.
    Refused(String),
}

/// Judge the relevant CAA RRset found at `owner` for `req` (RFC 8659 §4, RFC 8657 §3-4).
pub fn judge(records: &[CaaRecord], owner: &str, req: &Request) -> Verdict {
    if let Some(r) = records
        .iter()
        .find(|r| r.critical && !KNOWN_TAGS.contains(&r.tag.to_ascii_lowercase().as_str()))
    {
        return Verdict::Refused(format!(
            "the CAA record {owner} CAA {} is marked critical with a property CAs do not know, so no CA may issue; remove the record or its critical flag",
            r.display()
        ));
    }
    let with_tag = |tag: &str| -> Vec<&CaaRecord> {
        records
            .iter()
            .filter(|r| r.tag.eq_ignore_ascii_case(tag))
            .collect()
    };
    let wild = with_tag("issuewild");
    let (tag, set) = if req.wildcard && !wild.is_empty() {
        ("issuewild", wild)
    } else {
        ("issue", with_tag("issue"))
    };
    if set.is_empty() {
        return Verdict::Allowed(format!("the CAA records at {owner} restrict no CA"));
    }
    // The most telling miss: a record naming this CA whose parameters do not fit beats one naming
    // another CA.
    let mut miss: Option<String> = None;
    for r in &set {
        let Ok(v) = parse_issue_value(&r.value) else {
            continue; // a malformed value authorizes no CA (RFC 8659 §4.2)
        };
        let Some(issuer) = &v.issuer else { continue };
        if !req
            .identities
            .iter()
            .any(|id| id.eq_ignore_ascii_case(issuer))
        {
            continue;
        }
        if let Some(pinned) = v.parameter("accounturi")
            && req.account_uri != Some(pinned)
        {
            let ours = req.account_uri.map_or_else(
                || {
                    "certkeeper has no account at this CA yet (a new one gets a new URL)"
                        .to_string()
                },
                |u| format!("certkeeper's account is {u}"),
            );
            miss = Some(format!(
                "the CAA record {owner} CAA {} allows only the account {pinned}, but {ours}; change accounturi (or add a record) for this account",
                r.display()
            ));
            continue;
        }
        if let (Some(methods), Some(method)) = (v.parameter("validationmethods"), req.method)
            && !methods.split(',').any(|m| m.trim() == method)
        {
            miss = Some(format!(
                "the CAA record {owner} CAA {} allows only validationmethods={methods}, but the solver for this name uses {method}; add {method} to validationmethods or configure a solver it allows",
                r.display()
            ));
            continue;
        }
        return Verdict::Allowed(format!("{owner} CAA {} authorizes this CA", r.display()));
    }
    Verdict::Refused(miss.unwrap_or_else(|| {
        let listed: Vec<String> = set.iter().map(|r| r.display()).collect();
        format!(
            "the CAA records at {owner} ({tag}: {}) do not authorize this CA, which identifies as {}; add `{owner} CAA 0 {tag} \"{}\"` or use a CA they name",
            listed.join(", "),
            req.identities.join(", "),
            req.identities.first().map_or("", String::as_str)
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> Vec<String> {
        vec!["pebble.test".to_string()]
    }

    fn req<'a>(ids: &'a [String], wildcard: bool) -> Request<'a> {
        Request {
            identities: ids,
            account_uri: Some("https://ca.test/acct/1"),
            method: Some("dns-01"),
            wildcard,
        }
    }

    fn issue(v: &str) -> CaaRecord {
        CaaRecord::new(false, "issue", v)
    }

    #[test]
    fn parses_issuer_domain_names_and_parameters() {
        let v = parse_issue_value("  Pebble.Test. ; accounturi=https://ca.test/acct/1;  validationmethods = dns-01,http-01 ")
            .unwrap();
        assert_eq!(v.issuer.as_deref(), Some("pebble.test"));
        assert_eq!(v.parameter("accounturi"), Some("https://ca.test/acct/1"));
        assert_eq!(v.parameter("validationmethods"), Some("dns-01,http-01"));
        assert_eq!(parse_issue_value(";").unwrap().issuer, None);
        assert_eq!(parse_issue_value("").unwrap().issuer, None);
        assert_eq!(
            parse_issue_value("ca.test;").unwrap(),
            IssueValue {
                issuer: Some("ca.test".into()),
                parameters: vec![]
            }
        );
        for bad in [
            "-ca.test",
            "ca..test",
            "ca test",
            "ca.test; noequals",
            "ca.test; a b=c",
            "ca.test; a=b c",
            "ca.test; ;a=b",
        ] {
            assert!(parse_issue_value(bad).is_err(), "{bad:?} must not parse");
        }
    }

    #[test]
    fn issue_records_decide_and_other_tags_do_not() {
        let ids = ids();
        let r = req(&ids, false);
        assert!(matches!(
            judge(&[], "example.test.", &r),
            Verdict::Allowed(_)
        ));
        let iodef_only = [CaaRecord::new(false, "iodef", "mailto:a@example.test")];
        assert!(matches!(
            judge(&iodef_only, "example.test.", &r),
            Verdict::Allowed(_)
        ));
        assert!(matches!(
            judge(
                &[issue("letsencrypt.org"), issue("pebble.test")],
                "example.test.",
                &r
            ),
            Verdict::Allowed(_)
        ));
        let Verdict::Refused(why) = judge(&[issue("letsencrypt.org")], "example.test.", &r) else {
            panic!("another CA only")
        };
        assert!(
            why.contains("0 issue \"letsencrypt.org\"")
                && why.contains("identifies as pebble.test")
                && why.contains("example.test. CAA 0 issue \"pebble.test\""),
            "{why}"
        );
        // ";" authorizes no CA; a malformed value authorizes none either.
        for v in [";", "pebble.test; broken"] {
            assert!(
                matches!(judge(&[issue(v)], "example.test.", &r), Verdict::Refused(_)),
                "{v}"
            );
        }
        // Tags and issuer names are compared without regard to case.
        assert!(matches!(
            judge(&[CaaRecord::new(false, "ISSUE", "PEBBLE.test")], "x.", &r),
            Verdict::Allowed(_)
        ));
    }

    #[test]
    fn issuewild_rules_wildcards_when_present() {
        let ids = ids();
        let wild = req(&ids, true);
        let plain = req(&ids, false);
        // Only issue: it applies to wildcards too.
        assert!(matches!(
            judge(&[issue("pebble.test")], "example.test.", &wild),
            Verdict::Allowed(_)
        ));
        // issuewild present: it alone decides for wildcards, and never for plain names.
        let set = [
            issue("pebble.test"),
            CaaRecord::new(false, "issuewild", ";"),
        ];
        assert!(matches!(
            judge(&set, "example.test.", &plain),
            Verdict::Allowed(_)
        ));
        let Verdict::Refused(why) = judge(&set, "example.test.", &wild) else {
            panic!("issuewild \";\" forbids wildcards")
        };
        assert!(why.contains("issuewild"), "{why}");
        let set = [
            issue("letsencrypt.org"),
            CaaRecord::new(false, "issuewild", "pebble.test"),
        ];
        assert!(matches!(
            judge(&set, "example.test.", &wild),
            Verdict::Allowed(_)
        ));
        assert!(matches!(
            judge(&set, "example.test.", &plain),
            Verdict::Refused(_)
        ));
    }

    #[test]
    fn account_and_method_parameters_rfc8657() {
        let ids = ids();
        let r = req(&ids, false);
        assert!(matches!(
            judge(
                &[issue("pebble.test; accounturi=https://ca.test/acct/1")],
                "x.",
                &r
            ),
            Verdict::Allowed(_)
        ));
        let Verdict::Refused(why) = judge(
            &[issue("pebble.test; accounturi=https://ca.test/acct/9")],
            "x.",
            &r,
        ) else {
            panic!("another account")
        };
        assert!(
            why.contains("allows only the account https://ca.test/acct/9")
                && why.contains("certkeeper's account is https://ca.test/acct/1"),
            "{why}"
        );
        let none = Request {
            account_uri: None,
            ..r
        };
        let Verdict::Refused(why) = judge(
            &[issue("pebble.test; accounturi=https://ca.test/acct/1")],
            "x.",
            &none,
        ) else {
            panic!("no account yet cannot match a pinned one")
        };
        assert!(why.contains("no account at this CA yet"), "{why}");
        assert!(matches!(
            judge(
                &[issue("pebble.test; validationmethods=http-01,dns-01")],
                "x.",
                &r
            ),
            Verdict::Allowed(_)
        ));
        let Verdict::Refused(why) =
            judge(&[issue("pebble.test; validationmethods=http-01")], "x.", &r)
        else {
            panic!("dns-01 excluded")
        };
        assert!(
            why.contains("validationmethods=http-01") && why.contains("uses dns-01"),
            "{why}"
        );
        // Unknown parameters are ignored; a second record can still authorize.
        assert!(matches!(
            judge(
                &[
                    issue("pebble.test; validationmethods=http-01"),
                    issue("pebble.test; policy=ev")
                ],
                "x.",
                &r
            ),
            Verdict::Allowed(_)
        ));
    }

    #[test]
    fn critical_unknown_tag_refuses() {
        let ids = ids();
        let r = req(&ids, false);
        let set = [
            issue("pebble.test"),
            CaaRecord::new(true, "tbs", "something"),
        ];
        let Verdict::Refused(why) = judge(&set, "example.test.", &r) else {
            panic!("critical unknown tag")
        };
        assert!(
            why.contains("128 tbs \"something\"") && why.contains("critical"),
            "{why}"
        );
        // Not critical: ignored. Critical but known: fine.
        let set = [issue("pebble.test"), CaaRecord::new(false, "tbs", "x")];
        assert!(matches!(
            judge(&set, "example.test.", &r),
            Verdict::Allowed(_)
        ));
        let set = [
            issue("pebble.test"),
            CaaRecord::new(true, "iodef", "mailto:a@b.test"),
        ];
        assert!(matches!(
            judge(&set, "example.test.", &r),
            Verdict::Allowed(_)
        ));
    }
}
