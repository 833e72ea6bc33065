//! Challenge solvers: how certkeeper proves control of a name to the CA.
//!
//! A [`Solver`] answers one challenge type. The order flow calls, for every authorization it has to
//! solve: [`Solver::present`] (quick: publish the response), then [`Solver::wait`] (block until the
//! response is visible from outside: HTTP self-check, DNS propagation), then tells the CA to validate,
//! and finally [`Solver::cleanup`], on success and on failure alike.

pub mod dns01;
pub mod dnspersist01;
pub mod http01;
pub mod tlsalpn01;
pub mod webroot;

use std::fmt;

/// The challenge types certkeeper can answer (RFC 8555 §8.3, §8.4; RFC 8737).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChallengeKind {
    /// `http-01`: a file under `/.well-known/acme-challenge/` on port 80.
    Http01,
    /// `dns-01`: a TXT record at `_acme-challenge.<name>`.
    Dns01,
    /// `tls-alpn-01`: a self-signed certificate served with the `acme-tls/1` ALPN protocol.
    TlsAlpn01,
    /// `dns-persist-01` (draft-ietf-acme-dns-persist, experimental): a standing TXT record at
    /// `_validation-persist.<name>` naming the CA and the account; nothing is written per order.
    DnsPersist01,
}

impl ChallengeKind {
    /// The challenge `type` string the CA uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http01 => "http-01",
            Self::Dns01 => "dns-01",
            Self::TlsAlpn01 => "tls-alpn-01",
            Self::DnsPersist01 => "dns-persist-01",
        }
    }

    /// Parse a challenge `type` string; `None` for types certkeeper does not answer.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "http-01" => Some(Self::Http01),
            "dns-01" => Some(Self::Dns01),
            "tls-alpn-01" => Some(Self::TlsAlpn01),
            "dns-persist-01" => Some(Self::DnsPersist01),
            _ => None,
        }
    }
}

impl ChallengeKind {
    /// Whether a challenge of this type can prove control of an identifier of `kind`.
    ///
    /// This is the one rule config validation, solver selection and issuance all follow:
    ///
    /// | challenge     | DNS name | wildcard | IP address |
    /// |---------------|----------|----------|------------|
    /// | `http-01`     | yes      | no       | yes        |
    /// | `tls-alpn-01` | yes      | no       | yes        |
    /// | `dns-01`      | yes      | yes      | no         |
    /// | `dns-persist-01` | yes   | yes      | no         |
    ///
    /// Wildcards need DNS-01: HTTP-01 and TLS-ALPN-01 reach one host, not every name below the base,
    /// so CAs offer only `dns-01` for a wildcard authorization (RFC 8555 §7.1.3). An IP address has
    /// no zone to hold a TXT record, so DNS-01 cannot prove it (RFC 8738 §7); HTTP-01 connects to the
    /// address itself (RFC 8738 §5), and TLS-ALPN-01 sends the reverse-DNS name as SNI (RFC 8738 §6),
    /// which [`tlsalpn01`] answers with the address in the certificate. `dns-persist-01` is DNS-based
    /// like `dns-01`: the record for a wildcard sits at the base name and says `policy=wildcard`
    /// (draft-ietf-acme-dns-persist §5); IP addresses are out of its scope.
    pub fn can_prove(self, kind: IdentifierKind) -> bool {
        match self {
            Self::Http01 | Self::TlsAlpn01 => {
                matches!(kind, IdentifierKind::Dns | IdentifierKind::Ip)
            }
            Self::Dns01 | Self::DnsPersist01 => {
                matches!(kind, IdentifierKind::Dns | IdentifierKind::Wildcard)
            }
        }
    }
}

/// What kind of identifier a certificate name is, as far as proving it is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IdentifierKind {
    /// A DNS name (`www.example.com`).
    Dns,
    /// A wildcard DNS name (`*.example.com`); the CA's authorization is for the base name.
    Wildcard,
    /// An IP address (RFC 8738).
    Ip,
}

impl IdentifierKind {
    /// The kind of a name as written in the config or a CSR: `*.example.com`, `192.0.2.1`,
    /// `2001:db8::1` or `example.com`.
    pub fn of(name: &str) -> Self {
        Self::split(name).0
    }

    /// The kind of a name as written, and the identifier value the CA uses for it (without the
    /// `*.` of a wildcard, RFC 8555 §7.1.4).
    pub fn split(name: &str) -> (Self, &str) {
        if let Some(base) = name.strip_prefix("*.") {
            (Self::Wildcard, base)
        } else if name.parse::<std::net::IpAddr>().is_ok() {
            (Self::Ip, name)
        } else {
            (Self::Dns, name)
        }
    }

    /// The kind of an ACME authorization's identifier: its `type` (`dns` or `ip`) and its
    /// `wildcard` flag (RFC 8555 §7.1.4, RFC 8738 §3).
    pub fn of_authorization(identifier_type: &str, wildcard: bool) -> Self {
        match (identifier_type, wildcard) {
            ("ip", _) => Self::Ip,
            (_, true) => Self::Wildcard,
            _ => Self::Dns,
        }
    }

    /// How the kind is named in messages: `DNS name`, `wildcard name` or `IP address`.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Dns => "DNS name",
            Self::Wildcard => "wildcard name",
            Self::Ip => "IP address",
        }
    }
}

impl fmt::Display for ChallengeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything a solver needs to know about one challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChallengeCtx {
    /// The certificate (config name) this challenge is solved for; for logs and messages.
    pub cert_name: String,
    /// The identifier value as the CA has it: a DNS name without the `*.` of a wildcard
    /// (RFC 8555 §7.1.4), or an IP address in text form.
    pub identifier: String,
    /// True when the identifier is an IP address (RFC 8738).
    pub is_ip: bool,
    /// True when the order asked for `*.identifier`.
    pub wildcard: bool,
    /// Which challenge type this is.
    pub kind: ChallengeKind,
    /// The challenge token (base64url).
    pub token: String,
    /// The key authorization: `token || '.' || base64url(JWK thumbprint)` (RFC 8555 §8.1).
    pub key_authorization: String,
    /// What a `dns-persist-01` challenge names instead of a token; `None` for the other types.
    pub persist: Option<PersistCtx>,
}

/// The account and CA names a `dns-persist-01` record must carry (draft-ietf-acme-dns-persist §3.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersistCtx {
    /// The account URL the record's `accounturi` must name.
    pub account_url: String,
    /// The challenge's `issuer-domain-names`: one of them starts the record.
    pub issuer_domain_names: Vec<String>,
}

impl ChallengeCtx {
    /// The kind of identifier this challenge is for.
    pub fn identifier_kind(&self) -> IdentifierKind {
        match (self.is_ip, self.wildcard) {
            (true, _) => IdentifierKind::Ip,
            (false, true) => IdentifierKind::Wildcard,
            (false, false) => IdentifierKind::Dns,
        }
    }

    /// The TXT value for DNS-01: base64url(SHA-256(key authorization)) (RFC 8555 §8.4).
    pub fn dns_txt_value(&self) -> String {
        use base64::Engine as _;
        let digest = openssl::sha::sha256(self.key_authorization.as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
    }
}

/// Why a solver could not publish, verify or remove a challenge response.
///
/// `Display` is the whole message for a system administrator: what failed, what was seen and, where
/// known, what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SolveError {
    /// What happened, in plain words, including what was observed.
    pub message: String,
    /// True when trying again later may succeed (a timeout, a server that was down); false when a
    /// configuration change is needed.
    pub retryable: bool,
}

impl SolveError {
    /// A failure that may pass if tried again later.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
        }
    }

    /// A failure that needs a configuration change.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }
}

/// A way to answer one challenge type.
///
/// Implementations MUST be safe for concurrent use: the authorizations of an order, and the orders
/// of different certificates, are solved concurrently.
#[async_trait::async_trait]
pub trait Solver: Send + Sync {
    /// The challenge type this solver answers.
    fn kind(&self) -> ChallengeKind;

    /// Check, before the order is created, what the CA will look at for `name` (the base name of
    /// a wildcard; `kind` says which) when `account_url`'s account orders it: a standing record
    /// (`dns-persist-01`). The default has nothing to check.
    async fn preflight(
        &self,
        _name: &str,
        _kind: IdentifierKind,
        _account_url: &str,
    ) -> Result<(), SolveError> {
        Ok(())
    }

    /// Publish the challenge response. MUST return quickly: no waiting for propagation here.
    async fn present(&self, ch: &ChallengeCtx) -> Result<(), SolveError>;

    /// Block until the response is visible as the CA will look for it (HTTP self-check, DNS
    /// propagation at the authoritative nameservers). The default is ready at once.
    async fn wait(&self, _ch: &ChallengeCtx) -> Result<(), SolveError> {
        Ok(())
    }

    /// Remove what `present` published. Called after success and after failure; MUST NOT assume
    /// that `present` succeeded, and MUST be idempotent.
    async fn cleanup(&self, ch: &ChallengeCtx) -> Result<(), SolveError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_challenge_proves_which_identifier() {
        use ChallengeKind::*;
        use IdentifierKind::*;
        let table = [
            (Http01, Dns, true),
            (Http01, Wildcard, false),
            (Http01, Ip, true),
            (TlsAlpn01, Dns, true),
            (TlsAlpn01, Wildcard, false),
            (TlsAlpn01, Ip, true),
            (Dns01, Dns, true),
            (Dns01, Wildcard, true),
            (Dns01, Ip, false),
            (DnsPersist01, Dns, true),
            (DnsPersist01, Wildcard, true),
            (DnsPersist01, Ip, false),
        ];
        for (challenge, id, want) in table {
            assert_eq!(challenge.can_prove(id), want, "{challenge} {id:?}");
        }
    }

    #[test]
    fn identifier_kinds_of_names_and_authorizations() {
        assert_eq!(
            IdentifierKind::split("*.example.com"),
            (IdentifierKind::Wildcard, "example.com")
        );
        assert_eq!(
            IdentifierKind::split("example.com"),
            (IdentifierKind::Dns, "example.com")
        );
        assert_eq!(IdentifierKind::of("192.0.2.1"), IdentifierKind::Ip);
        assert_eq!(IdentifierKind::of("2001:db8::1"), IdentifierKind::Ip);
        assert_eq!(
            IdentifierKind::of_authorization("dns", false),
            IdentifierKind::Dns
        );
        assert_eq!(
            IdentifierKind::of_authorization("dns", true),
            IdentifierKind::Wildcard
        );
        assert_eq!(
            IdentifierKind::of_authorization("ip", false),
            IdentifierKind::Ip
        );
        let ctx = |is_ip, wildcard| ChallengeCtx {
            cert_name: "c".into(),
            identifier: "x".into(),
            is_ip,
            wildcard,
            kind: ChallengeKind::Http01,
            token: "t".into(),
            key_authorization: "t.k".into(),
            persist: None,
        };
        assert_eq!(ctx(true, false).identifier_kind(), IdentifierKind::Ip);
        assert_eq!(ctx(false, true).identifier_kind(), IdentifierKind::Wildcard);
        assert_eq!(ctx(false, false).identifier_kind(), IdentifierKind::Dns);
    }
}
