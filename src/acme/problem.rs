//! ACME problem documents (RFC 7807, RFC 8555 §6.7): structured, classified, explained.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::types::Identifier;

/// The `urn:ietf:params:acme:error:*` types (RFC 8555 §6.7), plus `Other` for anything else.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProblemKind {
    /// The nonce was stale or unknown; the request can be resent with a fresh nonce.
    BadNonce,
    /// The client lacks authorization (bad credentials, failed validation).
    Unauthorized,
    /// A CA rate limit was hit.
    RateLimited,
    /// The CA will not issue for this identifier.
    RejectedIdentifier,
    /// CAA records forbid the CA from issuing.
    Caa,
    /// A DNS problem during validation.
    Dns,
    /// The CA could not connect to the validation target.
    Connection,
    /// The response to a challenge was wrong.
    IncorrectResponse,
    /// The CA requires external account binding.
    ExternalAccountRequired,
    /// The CSR was unacceptable.
    BadCsr,
    /// The CA does not accept the key (account key or certificate key) type or size.
    BadPublicKey,
    /// No account exists for this key.
    AccountDoesNotExist,
    /// The request was malformed.
    Malformed,
    /// The CA had an internal error.
    ServerInternal,
    /// The identifier type is not supported.
    UnsupportedIdentifier,
    /// The order is not ready for finalization.
    OrderNotReady,
    /// The revocation reason is not allowed.
    BadRevocationReason,
    /// The certificate was already revoked.
    AlreadyRevoked,
    /// A TLS problem during validation.
    Tls,
    /// The user must visit the terms-of-service page.
    UserActionRequired,
    /// The requested certificate profile is not one the CA offers (ACME profiles draft).
    InvalidProfile,
    /// Any other type, including `about:blank`.
    Other,
}

impl ProblemKind {
    /// Classify a problem `type` URN.
    pub fn from_type(t: &str) -> Self {
        let Some(short) = t.strip_prefix("urn:ietf:params:acme:error:") else {
            return Self::Other;
        };
        match short {
            "badNonce" => Self::BadNonce,
            "unauthorized" => Self::Unauthorized,
            "rateLimited" => Self::RateLimited,
            "rejectedIdentifier" => Self::RejectedIdentifier,
            "caa" => Self::Caa,
            "dns" => Self::Dns,
            "connection" => Self::Connection,
            "incorrectResponse" => Self::IncorrectResponse,
            "externalAccountRequired" => Self::ExternalAccountRequired,
            "badCSR" => Self::BadCsr,
            "badPublicKey" => Self::BadPublicKey,
            "accountDoesNotExist" => Self::AccountDoesNotExist,
            "malformed" => Self::Malformed,
            "serverInternal" => Self::ServerInternal,
            "unsupportedIdentifier" => Self::UnsupportedIdentifier,
            "orderNotReady" => Self::OrderNotReady,
            "badRevocationReason" => Self::BadRevocationReason,
            "alreadyRevoked" => Self::AlreadyRevoked,
            "tls" => Self::Tls,
            "userActionRequired" => Self::UserActionRequired,
            "invalidProfile" => Self::InvalidProfile,
            _ => Self::Other,
        }
    }
}

/// Which request a problem answered; it decides classification and advice.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ProblemOrigin {
    /// Not known (a problem parsed on its own).
    #[default]
    Unknown,
    /// newAccount (creation or lookup).
    NewAccount,
    /// A challenge validation for this identifier (from an authorization's challenge `error`).
    Challenge(String),
    /// newOrder.
    NewOrder,
    /// finalize.
    Finalize,
    /// Any other request, named by its purpose.
    Request(&'static str),
}

/// A sub-problem for one identifier (RFC 8555 §6.7.1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubProblem {
    /// The problem type URN.
    #[serde(rename = "type", default = "about_blank")]
    pub type_: String,
    /// Human-readable detail from the CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The identifier this sub-problem is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identifier: Option<Identifier>,
}

fn about_blank() -> String {
    "about:blank".to_string()
}

/// An ACME problem document with the HTTP context it came with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// The problem type URN, e.g. `urn:ietf:params:acme:error:rateLimited`.
    #[serde(rename = "type", default = "about_blank")]
    pub type_: String,
    /// Human-readable detail from the CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The status the document itself states.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Per-identifier problems.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subproblems: Vec<SubProblem>,
    /// The HTTP status of the response that carried the document (0 when embedded in an object).
    #[serde(skip)]
    pub http_status: u16,
    /// When the response's `Retry-After` says to try again.
    #[serde(skip)]
    pub retry_after: Option<jiff::Timestamp>,
    /// Which request this problem answered.
    #[serde(skip)]
    pub origin: ProblemOrigin,
    /// The profiles the CA's directory lists (`meta.profiles`), filled in for a newOrder answer so
    /// an `invalidProfile` message can name them.
    #[serde(skip)]
    pub offered_profiles: Vec<String>,
}

impl Problem {
    /// The classified type.
    pub fn kind(&self) -> ProblemKind {
        ProblemKind::from_type(&self.type_)
    }

    /// The HTTP status, from the response or else from the document.
    pub fn effective_status(&self) -> u16 {
        if self.http_status != 0 {
            self.http_status
        } else {
            self.status.unwrap_or(0)
        }
    }

    /// True when the CA's words say the account needs a contact address (acme2certifier:
    /// "Contact information is missing"; others: "contact ... required", "missing email").
    pub fn says_contact_missing(&self) -> bool {
        let d = self.detail.as_deref().unwrap_or("").to_ascii_lowercase();
        (d.contains("contact") || d.contains("email") || d.contains("e-mail"))
            && (d.contains("missing") || d.contains("required") || d.contains("must"))
    }

    /// The detail text, or a placeholder.
    fn detail_str(&self) -> &str {
        self.detail.as_deref().unwrap_or("(no detail given)")
    }

    /// Cause and remedy in plain words, for a system administrator.
    pub fn advice(&self) -> String {
        use ProblemKind::*;
        let detail = self.detail_str();
        let name = match &self.origin {
            ProblemOrigin::Challenge(n) => Some(n.clone()),
            _ => self
                .subproblems
                .iter()
                .find_map(|s| s.identifier.as_ref().map(|i| i.value.clone())),
        };
        match self.kind() {
            Unauthorized if self.origin == ProblemOrigin::NewAccount => {
                "the CA refused the account credentials: check the EAB kid and HMAC key (and that \
                 the account key belongs to this CA)"
                    .to_string()
            }
            ExternalAccountRequired => "the CA requires external account binding: set `eab = { kid, \
                 hmac_key_file }` for this issuer with the values from the CA's dashboard"
                .to_string(),
            Unauthorized | IncorrectResponse | Connection | Dns | Tls
                if matches!(self.origin, ProblemOrigin::Challenge(_)) || name.is_some() =>
            {
                let n = name.unwrap_or_else(|| "the name".into());
                let what = challenge_hint(self.kind(), detail);
                format!("the CA could not verify control of {n}; it saw: {detail}; {what}")
            }
            Unauthorized => format!("the CA refused the request as unauthorized: {detail}"),
            RateLimited => match self.retry_after {
                Some(t) => format!("the CA's rate limit was hit; certkeeper waits until {t} before trying again"),
                None => "the CA's rate limit was hit; certkeeper backs off and tries again later".to_string(),
            },
            RejectedIdentifier => format!("the CA will not issue for {}: remove that name from the certificate or use another CA", name.unwrap_or_else(|| "a requested name".into())),
            Caa => format!("CAA records forbid this CA from issuing for {}: add a CAA record allowing the CA, or use another issuer", name.unwrap_or_else(|| "a requested name".into())),
            BadCsr => "the CA rejected the certificate request (CSR): check the key type is accepted by this CA".to_string(),
            BadPublicKey => format!("the CA does not accept this key: {detail}; choose another key type (`key`, or the issuer's `account_key`)"),
            UnsupportedIdentifier => "the CA does not support one of the identifiers (IP address or wildcard?): remove it or use another CA".to_string(),
            Malformed if self.says_contact_missing() => "the CA requires a contact address on the account: add `contact = [\"mailto:you@example.com\"]` (your address) to this issuer".to_string(),
            Malformed if matches!(self.origin, ProblemOrigin::Challenge(_)) => format!("the CA refused what was published for {} as malformed: {detail}; check the record or file the solver publishes (for dns-persist-01: the standing record, as `certkeeper account persist-record` prints it)", name.unwrap_or_default()),
            Malformed if name.is_some() => format!("the CA refused {} as malformed: check the spelling of that name in `domains`", name.unwrap_or_default()),
            Malformed => format!("the CA rejected the request as malformed: {detail}; if the CA's words name a setting (contact, names, key), fix it in the config; otherwise this is likely a certkeeper bug or a CA incompatibility: please report it with this message"),
            InvalidProfile => {
                let offered = if self.offered_profiles.is_empty() {
                    "its directory lists no profiles: remove `profile`".to_string()
                } else {
                    format!("it offers: {}; set `profile` to one of them, or remove it for the CA's default", self.offered_profiles.join(", "))
                };
                format!("the CA does not accept the requested profile ({detail}); {offered}")
            }
            ServerInternal => "the CA had an internal error; certkeeper retries later".to_string(),
            BadNonce => "the CA rejected the request nonce repeatedly; certkeeper retries later".to_string(),
            AccountDoesNotExist => "the CA has no account for this key; certkeeper creates one".to_string(),
            OrderNotReady => "the order was not ready to finalize: not all names were validated yet".to_string(),
            BadRevocationReason => "the CA does not accept this revocation reason: use another reason code".to_string(),
            AlreadyRevoked => "the certificate is already revoked; nothing to do".to_string(),
            UserActionRequired => "the CA requires a manual step (often new terms of service): visit the CA's terms URL and agree".to_string(),
            Dns | Connection | Tls | IncorrectResponse => format!("validation failed: {detail}"),
            Other if self.effective_status() >= 500 => "the CA answered with a server error; certkeeper retries later".to_string(),
            Other => format!("the CA rejected the request: {detail}"),
        }
    }
}

/// What to do about a failed validation, from the problem type and the words of the CA's detail
/// (Let's Encrypt, pebble and step-ca phrase the common cases recognisably).
fn challenge_hint(kind: ProblemKind, detail: &str) -> &'static str {
    let d = detail.to_ascii_lowercase();
    let has = |w: &str| d.contains(w);
    if has("txt record") || has("no txt") {
        return "the TXT record at _acme-challenge is missing or has another value at the nameservers the CA asked: check the DNS provider's update went to the zone's primary, that all nameservers serve it (propagation), and that no stale CNAME points _acme-challenge elsewhere";
    }
    if has("nxdomain") || has("no valid a records") || has("no valid ip") || has("servfail") {
        return "the CA could not resolve the name: add an A/AAAA record for it in public DNS (and check DNSSEC is not broken), or prove it with DNS-01";
    }
    if has("caa") {
        return "a CAA record forbids this CA: add `CAA 0 issue \"<the CA's domain>\"` or remove the CAA record";
    }
    if has(" 404") || has("404 ") || has("returned 404") {
        return "the CA reached a web server but not the token (404): proxy /.well-known/acme-challenge/ to certkeeper's listener in the port-80 server block of this name (nginx: `location /.well-known/acme-challenge/ { proxy_pass http://127.0.0.1:8402; proxy_set_header Host $host; }`), or check that an AAAA record does not point to another server";
    }
    if has(" 403") || has("returned 403") {
        return "the web server refused the CA (403): allow /.well-known/acme-challenge/ for everyone (nginx `deny`/`allow`, basic auth, WAF, geo blocks)";
    }
    if has("timeout") || has("timed out") || has("connection refused") || has("firewall") {
        return "the CA could not connect: open port 80 to the internet (host firewall, cloud security group), make sure something listens on it, and that the A/AAAA records point to this host";
    }
    if has("redirect") {
        return "a redirect the CA will not follow (loop, a port other than 80/443, or too many): exempt /.well-known/acme-challenge/ from the redirect";
    }
    match kind {
        ProblemKind::Dns => "check the DNS records (A/AAAA, CNAME, TXT) the CA resolves",
        ProblemKind::Connection => {
            "check that port 80 (HTTP-01) reaches certkeeper's listener or webroot and no firewall blocks the CA"
        }
        ProblemKind::Tls => "check the TLS setup the CA connected to",
        _ => {
            "check that the challenge response is served where the CA looks (HTTP-01 proxy/webroot, DNS-01 TXT record)"
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.effective_status();
        if status != 0 {
            write!(f, "HTTP {status} ")?;
        }
        let advice = self.advice();
        let detail = self.detail_str();
        if self.detail.is_some() && advice.contains(detail) {
            // The advice quotes the detail ("it saw: ..."); say it once.
            write!(f, "{}", self.type_)?;
        } else {
            write!(f, "{}: {detail}", self.type_)?;
        }
        for s in &self.subproblems {
            write!(f, "; ")?;
            if let Some(id) = &s.identifier {
                write!(f, "[{} {}] ", id.type_, id.value)?;
            }
            write!(
                f,
                "{}: {}",
                s.type_,
                s.detail.as_deref().unwrap_or("(no detail)")
            )?;
        }
        write!(f, " — {advice}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // https://www.rfc-editor.org/rfc/rfc8555#section-6.7.1
    const RFC_SUBPROBLEMS: &str = r#"{
        "type": "urn:ietf:params:acme:error:malformed",
        "detail": "Some of the identifiers requested were rejected",
        "subproblems": [
            {
                "type": "urn:ietf:params:acme:error:malformed",
                "detail": "Invalid underscore in DNS name \"_example.org\"",
                "identifier": { "type": "dns", "value": "_example.org" }
            },
            {
                "type": "urn:ietf:params:acme:error:rejectedIdentifier",
                "detail": "This CA will not issue for \"example.net\"",
                "identifier": { "type": "dns", "value": "example.net" }
            }
        ]
    }"#;

    #[test]
    fn parses_rfc_subproblems_and_displays_them() {
        let mut p: Problem = serde_json::from_str(RFC_SUBPROBLEMS).unwrap();
        p.http_status = 403;
        assert_eq!(p.kind(), ProblemKind::Malformed);
        assert_eq!(p.subproblems.len(), 2);
        assert_eq!(
            ProblemKind::from_type(&p.subproblems[1].type_),
            ProblemKind::RejectedIdentifier
        );
        assert_eq!(
            p.subproblems[1].identifier.as_ref().unwrap().value,
            "example.net"
        );
        let s = p.to_string();
        assert!(s.contains("HTTP 403"), "{s}");
        assert!(s.contains("urn:ietf:params:acme:error:malformed"), "{s}");
        assert!(
            s.contains("Some of the identifiers requested were rejected"),
            "{s}"
        );
        assert!(
            s.contains("[dns example.net] urn:ietf:params:acme:error:rejectedIdentifier"),
            "{s}"
        );
        // The sub-problem names the identifier: the advice points at `domains`, not at a bug.
        assert!(
            s.contains("check the spelling of that name in `domains`"),
            "{s}"
        );
    }

    fn prob(t: &str, origin: ProblemOrigin) -> Problem {
        Problem {
            type_: format!("urn:ietf:params:acme:error:{t}"),
            detail: Some("details here".into()),
            status: None,
            subproblems: vec![],
            http_status: 403,
            retry_after: None,
            origin,
            offered_profiles: Vec::new(),
        }
    }

    #[test]
    fn classification() {
        use ProblemOrigin::*;
        assert_eq!(
            prob("userActionRequired", Unknown).kind(),
            ProblemKind::UserActionRequired
        );
    }

    #[test]
    fn challenge_advice_reads_the_cas_detail() {
        let mut p = prob("unauthorized", ProblemOrigin::Challenge("a.example".into()));
        for (detail, want) in [
            (
                "Invalid response from http://a.example/.well-known/acme-challenge/x: 404",
                "proxy /.well-known/acme-challenge/",
            ),
            (
                "Non-200 status code from HTTP: http://a.example/x returned 404",
                "location",
            ),
            (
                "Invalid response from http://a.example/x: 403",
                "allow /.well-known/acme-challenge/ for everyone",
            ),
            (
                "Timeout during connect (likely firewall problem)",
                "open port 80",
            ),
            (
                "No TXT record found at _acme-challenge.a.example",
                "TXT record at _acme-challenge",
            ),
            (
                "DNS problem: NXDOMAIN looking up A for a.example",
                "add an A/AAAA record",
            ),
            ("Too many redirects", "exempt"),
        ] {
            p.detail = Some(detail.into());
            let a = p.advice();
            assert!(a.contains(want), "{detail}: {a}");
            assert!(a.contains(detail), "{a}");
        }
        let mut p = prob("caa", ProblemOrigin::Challenge("a.example".into()));
        p.detail = Some("CAA record for a.example prevents issuance".into());
        assert!(
            p.advice().contains("CAA records forbid this CA"),
            "{}",
            p.advice()
        );
    }

    #[test]
    fn advice_in_plain_words() {
        let mut p = prob("unauthorized", ProblemOrigin::NewAccount);
        p.http_status = 401;
        assert!(p.advice().contains("check the EAB kid and HMAC key"));
        let p = prob(
            "unauthorized",
            ProblemOrigin::Challenge("www.example.com".into()),
        );
        assert!(
            p.advice().starts_with(
                "the CA could not verify control of www.example.com; it saw: details here"
            ),
            "{}",
            p.advice()
        );
        let mut p = prob("rateLimited", ProblemOrigin::NewOrder);
        p.retry_after = Some("2030-01-01T00:00:00Z".parse().unwrap());
        assert!(
            p.advice().contains("until 2030-01-01T00:00:00Z"),
            "{}",
            p.advice()
        );
    }

    #[test]
    fn malformed_advice_points_at_the_setting() {
        let mut p = prob("malformed", ProblemOrigin::NewAccount);
        p.detail = Some("Contact information is missing".into());
        assert!(
            p.advice().contains("add `contact = [\"mailto:"),
            "{}",
            p.advice()
        );
        assert!(!p.advice().contains("certkeeper bug"), "{}", p.advice());
        let p = prob("malformed", ProblemOrigin::Challenge("a.example".into()));
        assert!(
            p.advice().contains("published for a.example as malformed"),
            "{}",
            p.advice()
        );
        let p = prob("malformed", ProblemOrigin::Finalize);
        let a = p.advice();
        assert!(
            a.contains("details here") && a.contains("certkeeper bug"),
            "{a}"
        );
    }

    #[test]
    fn invalid_profile_names_the_offered_profiles() {
        let mut p = prob("invalidProfile", ProblemOrigin::NewOrder);
        assert_eq!(p.kind(), ProblemKind::InvalidProfile);
        p.offered_profiles = vec!["classic".into(), "shortlived".into()];
        let a = p.advice();
        assert!(a.contains("it offers: classic, shortlived"), "{a}");
        assert!(a.contains("details here"), "{a}");
        p.offered_profiles.clear();
        assert!(p.advice().contains("lists no profiles"), "{}", p.advice());
    }

    #[test]
    fn display_says_the_detail_once() {
        let p = prob(
            "connection",
            ProblemOrigin::Challenge("www.example.com".into()),
        );
        let text = p.to_string();
        assert_eq!(text.matches("details here").count(), 1, "{text}");
        assert!(
            text.contains("error:connection — the CA could not verify control"),
            "{text}"
        );
        // Advice that does not quote the detail keeps it after the type.
        let p = prob("serverInternal", ProblemOrigin::NewOrder);
        let text = p.to_string();
        assert!(
            text.contains("error:serverInternal: details here — "),
            "{text}"
        );
    }
}
