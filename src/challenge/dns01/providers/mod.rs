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

/// One problem with a provider's settings, found without reading secrets or using the network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettingError {
    /// The key inside the `dns01` table (`timeout`, `args[0]`); empty for the table itself.
    pub key: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl SettingError {
    /// A problem with `key` (empty: the whole table).
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }

    /// The problems as one [`ProviderError::Config`] (for [`DnsProviderConfig::build`] callers that
    /// skipped the config loader), or `Ok` when there are none.
    pub(crate) fn into_result(
        provider: &'static str,
        problems: Vec<SettingError>,
    ) -> Result<(), ProviderError> {
        if problems.is_empty() {
            return Ok(());
        }
        let message = problems
            .iter()
            .map(|p| match p.key.as_str() {
                "" => p.message.clone(),
                k => format!("{k}: {}", p.message),
            })
            .collect::<Vec<_>>()
            .join("; ");
        Err(ProviderError::Config { provider, message })
    }
}

/// `<key>_file` / `<key>_env`: exactly one must be set (the secret itself is read at build time, so
/// a file that appears later is not a config error).
pub(crate) fn check_secret_keys(
    key: &str,
    file: Option<&std::path::Path>,
    env: Option<&str>,
) -> Option<SettingError> {
    crate::config::SecretSource::from_keys(key, file, env)
        .err()
        .map(|e| SettingError::new("", e.to_string()))
}

/// A base URL: `http://` or `https://` with a host.
pub(crate) fn check_url(key: &str, url: &str) -> Option<SettingError> {
    let ok = reqwest::Url::parse(url).is_ok_and(|u| {
        matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty())
    });
    (!ok).then(|| {
        SettingError::new(
            key,
            format!("{url:?} is not an http:// or https:// URL with a host"),
        )
    })
}

/// A value that must not be empty.
pub(crate) fn check_non_empty(key: &str, value: &str) -> Option<SettingError> {
    value
        .trim()
        .is_empty()
        .then(|| SettingError::new(key, "is empty: give a value"))
}

/// Deserialize one provider's settings, keeping the key path of a type error.
fn settings<T: serde::de::DeserializeOwned>(table: toml::Table) -> Result<T, SettingError> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let message = e.inner().message().trim().to_string();
        // An unknown key is named by the message, not by the path.
        let unknown = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split('`').next())
            .map(str::to_string);
        let path = e.path().to_string();
        let key = unknown.unwrap_or(if path == "." { String::new() } else { path });
        SettingError::new(key, message)
    })
}

impl DnsProviderConfig {
    /// The provider names, as written in `provider = "..."` (the serde tags of the variants).
    pub const NAMES: [&'static str; 6] = [
        "rfc2136",
        "exec",
        "powerdns",
        "cloudflare",
        "route53",
        "acme-dns",
    ];

    /// Parse the settings of provider `name`: `table` is the `dns01` table without its `provider`
    /// key. Unknown keys, missing keys and wrong types are errors naming the key.
    pub fn from_table(name: &str, table: toml::Table) -> Result<Self, SettingError> {
        Ok(match name {
            "rfc2136" => Self::Rfc2136(settings(table)?),
            "exec" => Self::Exec(settings(table)?),
            "powerdns" => Self::Powerdns(settings(table)?),
            "cloudflare" => Self::Cloudflare(settings(table)?),
            "route53" => Self::Route53(settings(table)?),
            "acme-dns" => Self::AcmeDns(settings(table)?),
            other => {
                return Err(SettingError::new(
                    "provider",
                    format!(
                        "unknown provider {other:?}: use one of {}",
                        Self::NAMES.join(", ")
                    ),
                ));
            }
        })
    }

    /// The provider's name, as written in `provider = "..."`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Rfc2136(_) => "rfc2136",
            Self::Exec(_) => "exec",
            Self::Powerdns(_) => "powerdns",
            Self::Cloudflare(_) => "cloudflare",
            Self::Route53(_) => "route53",
            Self::AcmeDns(_) => "acme-dns",
        }
    }

    /// Every problem with the settings that can be found without reading secrets or using the
    /// network: bad durations, algorithms, names and URLs, a secret given neither or twice. The
    /// config loader reports these with the file and line; [`DnsProviderConfig::build`] runs the
    /// same checks.
    pub fn check(&self) -> Vec<SettingError> {
        match self {
            Self::Rfc2136(c) => c.check(),
            Self::Exec(c) => c.check(),
            Self::Powerdns(c) => c.check(),
            Self::Cloudflare(c) => c.check(),
            Self::Route53(c) => c.check(),
            Self::AcmeDns(c) => c.check(),
        }
    }

    /// The file paths in the settings, with their keys (`tsig_secret_file`, `api_key_file`, the exec
    /// `command`), for the loader to resolve relative ones against the config file's directory.
    pub fn paths_mut(&mut self) -> Vec<(&'static str, &mut std::path::PathBuf)> {
        match self {
            Self::Rfc2136(c) => c
                .tsig_secret_file
                .as_mut()
                .map(|p| ("tsig_secret_file", p))
                .into_iter()
                .collect(),
            Self::Exec(c) => vec![("command", &mut c.command)],
            Self::Powerdns(c) => c
                .api_key_file
                .as_mut()
                .map(|p| ("api_key_file", p))
                .into_iter()
                .collect(),
            Self::Cloudflare(c) => c
                .api_token_file
                .as_mut()
                .map(|p| ("api_token_file", p))
                .into_iter()
                .collect(),
            Self::Route53(c) => c
                .secret_access_key_file
                .as_mut()
                .map(|p| ("secret_access_key_file", p))
                .into_iter()
                .collect(),
            Self::AcmeDns(c) => c
                .password_file
                .as_mut()
                .map(|p| ("password_file", p))
                .into_iter()
                .collect(),
        }
    }

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

/// Most redirects an API provider's client follows, all on the API's own origin.
const MAX_REDIRECTS: usize = 5;

/// The HTTP client for API providers: system OpenSSL TLS, bounded time per request, and redirects
/// followed only on the same scheme, host and port.
///
/// Every provider sends a credential in a header (`X-API-Key`, `Authorization`, SigV4); reqwest's
/// default policy follows up to 10 redirects anywhere and strips only `Authorization` and cookies on
/// a change of host, so a redirect to another origin would hand the API key to it. Such a redirect is
/// returned as the 3xx response instead, which the provider reports as an error.
pub(crate) fn http_client(provider: &'static str) -> Result<reqwest::Client, ProviderError> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("certkeeper/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::custom(same_origin_only))
        .build()
        .map_err(|e| ProviderError::Config {
            provider,
            message: format!("HTTP client: {e}"),
        })
}

fn same_origin_only(attempt: reqwest::redirect::Attempt<'_>) -> reqwest::redirect::Action {
    let Some(first) = attempt.previous().first() else {
        return attempt.stop();
    };
    let next = attempt.url();
    let same = next.scheme() == first.scheme()
        && next.host_str() == first.host_str()
        && next.port_or_known_default() == first.port_or_known_default();
    if same && attempt.previous().len() <= MAX_REDIRECTS {
        attempt.follow()
    } else {
        attempt.stop()
    }
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
        300..=399 => {
            " (a redirect to another host, scheme or port is not followed, so the API key is not sent \
             there: set the base URL to the API's final address)"
        }
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
        // The loader's per-provider parse knows the same names as the serde tag.
        for name in DnsProviderConfig::NAMES {
            let tagged = toml::from_str::<DnsProviderConfig>(&format!("provider = {name:?}"))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(!tagged.contains("unknown variant"), "{name}: {tagged}");
            let e = DnsProviderConfig::from_table(name, toml::Table::new()).err();
            assert!(
                e.as_ref().is_none_or(|e| e.key != "provider"),
                "{name}: {e:?}"
            );
        }
        // A secret given inline is not accepted.
        assert!(
            toml::from_str::<DnsProviderConfig>("provider = \"cloudflare\"\napi_token = \"t\"")
                .is_err()
        );
    }

    fn parse(text: &str) -> Result<DnsProviderConfig, SettingError> {
        let mut table: toml::Table = toml::from_str(text).unwrap();
        let name = table.remove("provider").unwrap();
        DnsProviderConfig::from_table(name.as_str().unwrap(), table)
    }

    #[test]
    fn settings_errors_name_the_key() {
        let e = parse("provider = \"exec\"\ncommand = \"/bin/true\"\ncomand = \"x\"").unwrap_err();
        assert_eq!(e.key, "comand");
        assert!(e.message.starts_with("unknown field `comand`"), "{e:?}");
        let e = parse("provider = \"exec\"\ncommand = \"/bin/true\"\ntimeout = 5").unwrap_err();
        assert_eq!(e.key, "timeout");
        assert!(e.message.contains("invalid type: integer `5`"), "{e:?}");
        let e =
            parse("provider = \"exec\"\ncommand = \"/bin/true\"\nargs = [\"a\", 2]").unwrap_err();
        assert_eq!(e.key, "args[1]");
        let e = parse("provider = \"exec\"\ntimeout = \"5s\"").unwrap_err();
        assert_eq!(e, SettingError::new("", "missing field `command`"));
        let e = parse("provider = \"nope\"").unwrap_err();
        assert_eq!(e.key, "provider");
        assert!(e.message.contains("rfc2136, exec, powerdns"), "{e:?}");
    }

    #[test]
    fn checks_find_what_build_would_reject_without_secrets() {
        let problems = |text: &str| {
            parse(text)
                .unwrap()
                .check()
                .into_iter()
                .map(|p| format!("{}: {}", p.key, p.message))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            problems("provider = \"exec\"\ncommand = \"/bin/true\""),
            Vec::<String>::new()
        );
        let got = problems("provider = \"exec\"\ncommand = \"\"\ntimeout = \"5x\"");
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].starts_with("command: is empty"), "{got:?}");
        assert!(
            got[1].starts_with("timeout: invalid duration \"5x\""),
            "{got:?}"
        );
        let got = problems(
            "provider = \"rfc2136\"\nserver = \"127.0.0.1\"\ntsig_key = \"k.\"\ntsig_algorithm = \"hmac-md5\"",
        );
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            got[0].starts_with("tsig_algorithm: \"hmac-md5\" is not supported"),
            "{got:?}"
        );
        assert_eq!(
            got[1],
            ": no tsig_secret given: set tsig_secret_file = \"/path/to/file\" or tsig_secret_env = \"VARIABLE\" (or tsig_secret_credential = \"NAME\" with systemd's LoadCredential=)"
        );
        // A secret file that does not exist yet is not a settings problem: it is read at build time.
        assert_eq!(
            problems("provider = \"cloudflare\"\napi_token_file = \"/nonexistent/cf.token\""),
            Vec::<String>::new()
        );
        let got = problems(
            "provider = \"cloudflare\"\napi_token_file = \"/x\"\napi_token_env = \"Y\"\nbase_url = \"api.example\"",
        );
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            got[0].starts_with(": both api_token_file and api_token_env"),
            "{got:?}"
        );
        assert!(
            got[1].starts_with("base_url: \"api.example\" is not an http"),
            "{got:?}"
        );
        // build() runs the same checks.
        let cfg = parse("provider = \"exec\"\ncommand = \"/bin/true\"\ntimeout = \"5x\"").unwrap();
        let e = cfg.build().err().unwrap().to_string();
        assert!(
            e.starts_with("dns01 provider exec: timeout: invalid duration"),
            "{e}"
        );
    }
}
