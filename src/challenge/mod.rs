//! Challenge solvers: how certkeeper proves control of a name to the CA.
//!
//! A [`Solver`] answers one challenge type. The order flow calls, for every authorization it has to
//! solve: [`Solver::present`] (quick: publish the response), then [`Solver::wait`] (block until the
//! response is visible from outside: HTTP self-check, DNS propagation), then tells the CA to validate,
//! and finally [`Solver::cleanup`], on success and on failure alike.

pub mod dns01;
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
}

impl ChallengeKind {
    /// The challenge `type` string the CA uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http01 => "http-01",
            Self::Dns01 => "dns-01",
            Self::TlsAlpn01 => "tls-alpn-01",
        }
    }

    /// Parse a challenge `type` string; `None` for types certkeeper does not answer.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "http-01" => Some(Self::Http01),
            "dns-01" => Some(Self::Dns01),
            "tls-alpn-01" => Some(Self::TlsAlpn01),
            _ => None,
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
}

impl ChallengeCtx {
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
