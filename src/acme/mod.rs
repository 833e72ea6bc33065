//! The RFC 8555 (ACME) protocol layer: directory, nonces, JWS, accounts, orders, certificates, ARI.
//!
//! Built on openssl and reqwest (native-tls). Nothing here knows about TOML, files or axum.
//! Errors keep the CA's problem documents structured ([`Problem`]); what to do about them is the
//! engine's failure policy (`crate::engine::decide`).

pub mod account;
pub mod ari;
pub mod certificate;
pub mod client;
pub mod csr;
pub mod jws;
pub mod key;
pub mod problem;
pub mod types;

#[cfg(test)]
mod mock_tests;

pub use account::{Account, CertificateChain, Eab, Poll, revoke_with_certificate_key};
pub use ari::{RenewalInfo, SuggestedWindow, cert_id};
pub use certificate::{Certificate, CertificateError};
pub use client::Client;
pub use csr::build_csr;
pub use key::{AccountKey, KeyError, KeyGenError, KeyType, UnknownKeyType};
pub use problem::{Problem, ProblemKind, ProblemOrigin, SubProblem};
pub use types::{
    AccountBody, Authorization, AuthorizationStatus, Challenge, ChallengeStatus, Directory,
    DirectoryMeta, Identifier, NewOrder, Order, OrderBody, OrderStatus,
};

/// Result with [`AcmeError`].
pub type Result<T, E = AcmeError> = std::result::Result<T, E>;

/// Everything that can go wrong talking to an ACME CA.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The CA could not be reached (DNS, refused connection, timeout).
    #[error("cannot reach the CA at {url}: {message}; check the directory URL, DNS and firewall")]
    Connect {
        /// The URL requested.
        url: String,
        /// What the network stack said.
        message: String,
    },
    /// The CA's TLS certificate did not verify.
    #[error(
        "the CA's TLS certificate does not verify against ca_bundle/system roots: {message} (at {url}); for a private CA set the issuer's ca_bundle to its root certificate"
    )]
    Tls {
        /// The URL requested.
        url: String,
        /// What the TLS stack said.
        message: String,
    },
    /// Another HTTP transport failure.
    #[error("HTTP request to the CA at {url} failed: {message}")]
    Http {
        /// The URL requested.
        url: String,
        /// What happened.
        message: String,
    },
    /// The CA answered with a problem document.
    #[error("the CA answered with an error: {0}")]
    Problem(Box<Problem>),
    /// The CA's answer was not what the protocol says.
    #[error("unexpected answer from the CA at {url}: {message}")]
    BadResponse {
        /// The URL requested.
        url: String,
        /// What was wrong.
        message: String,
    },
    /// A local setup problem (roots, unknown profile, unsupported identifiers).
    #[error("{message}")]
    Config {
        /// What is wrong and what to change.
        message: String,
    },
    /// Polling did not reach a final state in time.
    #[error(
        "{what} at {url} was still {status} after {waited:?}; the CA is slow or stuck, certkeeper retries later"
    )]
    Timeout {
        /// What was polled (order, authorization).
        what: &'static str,
        /// Its URL.
        url: String,
        /// The last status seen.
        status: String,
        /// How long it waited.
        waited: std::time::Duration,
    },
    /// Key handling failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// openssl failed (CSR, certificate parsing).
    #[error("openssl failed: {0}")]
    Openssl(#[from] openssl::error::ErrorStack),
}

impl AcmeError {
    /// True when the CA could not be reached at all (network, TLS), as opposed to answering with
    /// an error: a reason to try another CA.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. } | Self::Tls { .. } | Self::Http { .. }
        ) || self.problem().is_some_and(|p| p.effective_status() >= 500)
    }

    /// When the CA asked the client to come back (`Retry-After` on a problem response).
    pub fn retry_after(&self) -> Option<jiff::Timestamp> {
        self.problem().and_then(|p| p.retry_after)
    }

    /// The problem document, if the CA sent one.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Self::Problem(p) => Some(p),
            _ => None,
        }
    }
}
