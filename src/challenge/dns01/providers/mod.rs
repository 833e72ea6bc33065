//! DNS provider plugins and their configuration: the `dns01 = { provider = "...", ... }` table.
//!
//! Secrets are read from `*_file` or `*_env` keys only, at build time, and kept in [`Secret`]
//! ([`super::Secret`], redacted in `Debug`). Every provider's server or API base URL can be overridden.

pub mod acme_dns;
pub mod cloudflare;
pub mod exec;
pub mod powerdns;
pub mod rfc2136;
pub mod route53;
pub mod sigv4;

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::{DnsProvider, ProviderError};

/// The `dns01` table: which provider, and its settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "provider", rename_all = "kebab-case")]
pub enum DnsProviderConfig {
    /// RFC 2136 dynamic update with TSIG (BIND, Knot, ...).
    Rfc2136(rfc2136::Rfc2136Config),
    /// An external program (lego `exec`, acme.sh hooks through a wrapper).
    Exec(exec::ExecConfig),
    /// The PowerDNS Authoritative HTTP API.
    Powerdns(powerdns::PowerdnsConfig),
    /// The Cloudflare v4 API.
    Cloudflare(cloudflare::CloudflareConfig),
    /// AWS Route 53.
    Route53(route53::Route53Config),
    /// An acme-dns server (`_acme-challenge` CNAMEd to it).
    AcmeDns(acme_dns::AcmeDnsConfig),
}

impl DnsProviderConfig {
    /// Build the provider: validate settings and read secrets.
    pub fn build(&self) -> Result<Arc<dyn DnsProvider>, ProviderError> {
        Ok(match self {
            Self::Rfc2136(c) => Arc::new(rfc2136::Rfc2136::new(c)?),
            Self::Exec(c) => Arc::new(exec::Exec::new(c)?),
            Self::Powerdns(c) => Arc::new(powerdns::Powerdns::new(c)?),
            Self::Cloudflare(c) => Arc::new(cloudflare::Cloudflare::new(c)?),
            Self::Route53(c) => Arc::new(route53::Route53::new(c)?),
            Self::AcmeDns(c) => Arc::new(acme_dns::AcmeDns::new(c)?),
        })
    }
}

/// The HTTP client for API providers: system OpenSSL TLS, bounded time per request.
pub(crate) fn http_client(provider: &'static str) -> Result<reqwest::Client, ProviderError> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("certkeeper/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ProviderError::Config {
            provider,
            message: format!("HTTP client: {e}"),
        })
}

/// An error for a failed HTTP call (transport level).
pub(crate) fn transport_error(
    provider: &'static str,
    what: &str,
    e: &reqwest::Error,
) -> ProviderError {
    ProviderError::Api {
        provider,
        message: format!("{what}: {e}"),
        retryable: true,
    }
}

/// An error for a non-success HTTP status, with the body (shortened) for the administrator.
pub(crate) fn status_error(
    provider: &'static str,
    what: &str,
    status: reqwest::StatusCode,
    body: &str,
) -> ProviderError {
    let body: String = body.chars().take(1000).collect();
    let hint = match status.as_u16() {
        401 | 403 => " (check the API credentials and their permissions)",
        404 => " (check the zone, server id and base URL)",
        _ => "",
    };
    ProviderError::Api {
        provider,
        message: format!("{what}: HTTP {status}{hint}: {}", body.trim()),
        retryable: status.is_server_error() || status.as_u16() == 429,
    }
}

/// Trim a base URL's trailing slash.
pub(crate) fn base(url: &str) -> String {
    url.trim_end_matches('/').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_tagged_and_strict() {
        let c: DnsProviderConfig = toml::from_str(
            "provider = \"rfc2136\"\nserver = \"127.0.0.1:53\"\ntsig_key = \"k.\"\ntsig_secret_env = \"X\"",
        )
        .unwrap();
        assert!(matches!(c, DnsProviderConfig::Rfc2136(_)));
        let c: DnsProviderConfig =
            toml::from_str("provider = \"acme-dns\"\napi_url = \"http://x\"\nusername = \"u\"\npassword_env = \"P\"\nsubdomain = \"s\"")
                .unwrap();
        assert!(matches!(c, DnsProviderConfig::AcmeDns(_)));
        let e = toml::from_str::<DnsProviderConfig>(
            "provider = \"exec\"\ncommand = \"/bin/true\"\ncomand = \"x\"",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("comand"), "{e}");
        let e = toml::from_str::<DnsProviderConfig>("provider = \"nope\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope"), "{e}");
        // A secret given inline is not accepted.
        assert!(
            toml::from_str::<DnsProviderConfig>("provider = \"cloudflare\"\napi_token = \"t\"")
                .is_err()
        );
    }
}
