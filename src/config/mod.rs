//! The configuration: TOML files parsed, merged and validated into owned types.
//!
//! [`load`] reads the main file (usually `/etc/certkeeper/certkeeper.toml`) and the files its
//! `include` globs name, merges their `issuer.*` and `certificate.*` tables, and validates the whole.
//! Every problem is reported as `FILE:LINE:COLUMN: KEY.PATH: what is wrong and what to do`; all
//! problems found are reported at once. The validated [`Config`] holds no spans and no raw TOML.
//!
//! Secrets (EAB HMAC key, DNS provider credentials) are read at load time from `*_file` or `*_env`
//! keys (see [`secret`]); relative paths in `ca_bundle`, `*_file` and `webroot.path` are resolved
//! against the directory of the file that names them.

mod duration;
mod glob;
mod raw;
pub mod secret;
mod source;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use duration::parse_duration;
pub use secret::{Secret, SecretError, SecretSource, read_secret};

use crate::acme::KeyType;
use crate::challenge::dns01::providers::DnsProviderConfig;

/// Where the state lives when `state_dir` is not set (systemd's `StateDirectory=certkeeper`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/certkeeper";
/// The HTTP-01 listener when `[http01]` is absent: loopback only, for nginx to proxy
/// `/.well-known/acme-challenge/` to (binding port 80 itself would clash with nginx).
pub const DEFAULT_HTTP01_LISTEN: &str = "127.0.0.1:8402";
/// Orders in flight at once by default: enough for a host's certificates, gentle on the CA.
pub const DEFAULT_MAX_CONCURRENT: usize = 8;
/// How long a reload hook may run by default before it is killed.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(60);
/// Default DNS propagation timeout: authoritative servers usually agree within a minute.
pub const DEFAULT_PROPAGATION_TIMEOUT: Duration = Duration::from_secs(120);
/// Default DNS propagation polling interval.
pub const DEFAULT_PROPAGATION_INTERVAL: Duration = Duration::from_secs(2);
/// Default private key mode: owner only.
pub const DEFAULT_KEY_MODE: u32 = 0o600;
/// Default certificate mode: world readable (certificates are public).
pub const DEFAULT_CERT_MODE: u32 = 0o644;

/// The whole validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The main config file, as given to [`load`].
    pub source: PathBuf,
    /// Every file read: the main file first, then the included files in include order.
    pub files: Vec<PathBuf>,
    /// Where account keys and per-certificate state live (absolute).
    pub state_dir: PathBuf,
    /// The HTTP-01 listener.
    pub http01: Http01Config,
    /// The admin listener (`/healthz`, `/metrics`); `None` when `[admin]` is absent.
    pub admin: Option<AdminConfig>,
    /// Daemon-wide limits.
    pub daemon: DaemonConfig,
    /// The issuers (`[issuer.NAME]`), by name.
    pub issuers: BTreeMap<String, IssuerConfig>,
    /// The certificates (`[certificate.NAME]`), by name.
    pub certificates: BTreeMap<String, CertificateConfig>,
}

/// `[http01]`: where the built-in HTTP-01 responder listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Http01Config {
    /// Socket addresses to bind; default `127.0.0.1:8402`.
    pub listen: Vec<SocketAddr>,
}

/// `[admin]`: the admin HTTP listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminConfig {
    /// Socket address to bind.
    pub listen: SocketAddr,
}

/// `[daemon]`: daemon-wide limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonConfig {
    /// Orders in flight at once (at least 1; default 8).
    pub max_concurrent: usize,
    /// How long one reload hook may run before it is killed (default 60s).
    pub hook_timeout: Duration,
}

/// `[issuer.NAME]`: an ACME CA account and how to solve its challenges.
#[derive(Clone, Debug)]
pub struct IssuerConfig {
    /// The issuer's name (the table key).
    pub name: String,
    /// The ACME directory URL (shorthands already expanded).
    pub directory: String,
    /// Account contacts, each `mailto:...`.
    pub contact: Vec<String>,
    /// Extra trust roots (PEM) for the directory's TLS, e.g. Pebble's CA.
    pub ca_bundle: Option<PathBuf>,
    /// External account binding, when the CA requires it (ZeroSSL, Google).
    pub eab: Option<EabConfig>,
    /// The account key type (default ecdsa-p256).
    pub account_key: KeyType,
    /// The solvers, in the order written (earlier wins ties in [`IssuerConfig::solver_for`]).
    pub solvers: Vec<SolverConfig>,
}

/// External account binding credentials (RFC 8555 §7.3.4).
#[derive(Clone, Debug)]
pub struct EabConfig {
    /// The key identifier the CA gave.
    pub kid: String,
    /// The HMAC key as the CA gave it (base64url text).
    pub hmac_key: Secret,
}

/// One `[[issuer.NAME.solver]]`.
#[derive(Clone, Debug)]
pub struct SolverConfig {
    /// Which identifiers this solver is for; empty means "any" (the fallback).
    pub selector: Selector,
    /// How the challenge is answered.
    pub kind: SolverKind,
}

/// A solver's selector, as in cert-manager.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    /// Zones: the solver covers these names and all names below them (lowercase, no trailing dot).
    pub dns_zones: Vec<String>,
    /// Exact names (`*.example.com` for a wildcard); an exact match beats any zone.
    pub dns_names: Vec<String>,
}

impl Selector {
    /// True when the selector names nothing, i.e. the solver is a fallback for any identifier.
    pub fn is_empty(&self) -> bool {
        self.dns_zones.is_empty() && self.dns_names.is_empty()
    }
}

/// How a solver answers challenges.
#[derive(Clone, Debug)]
pub enum SolverKind {
    /// HTTP-01 through certkeeper's own listener (`[http01]`).
    Http01 {
        /// Fetch the token through the public name before telling the CA (default true).
        self_check: bool,
    },
    /// HTTP-01 by writing token files under a web server's document root.
    Webroot {
        /// The document root; files go to `<path>/.well-known/acme-challenge/<token>`.
        path: PathBuf,
    },
    /// DNS-01 through a DNS provider.
    Dns01 {
        /// The provider and its settings.
        provider: DnsProviderConfig,
        /// How to wait for the TXT record to be visible.
        propagation: PropagationConfig,
    },
}

impl SolverKind {
    /// True for the DNS-01 kind.
    pub fn is_dns01(&self) -> bool {
        matches!(self, Self::Dns01 { .. })
    }

    /// The config key of this kind: `http01`, `webroot` or `dns01`.
    pub fn key(&self) -> &'static str {
        match self {
            Self::Http01 { .. } => "http01",
            Self::Webroot { .. } => "webroot",
            Self::Dns01 { .. } => "dns01",
        }
    }
}

/// DNS propagation checking for a dns01 solver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PropagationConfig {
    /// Poll the authoritative nameservers until they serve the record (default true).
    pub check: bool,
    /// Give up after this long (default 120s).
    pub timeout: Duration,
    /// Poll this often (default 2s).
    pub interval: Duration,
    /// Ask these nameservers (`host:port`) instead of the zone's authoritative ones.
    pub nameservers: Vec<String>,
}

impl Default for PropagationConfig {
    fn default() -> Self {
        Self {
            check: true,
            timeout: DEFAULT_PROPAGATION_TIMEOUT,
            interval: DEFAULT_PROPAGATION_INTERVAL,
            nameservers: Vec::new(),
        }
    }
}

/// `[certificate.NAME]`: one certificate to keep valid.
#[derive(Clone, Debug)]
pub struct CertificateConfig {
    /// The certificate's name (the table key).
    pub name: String,
    /// Issuer names, tried in order (a fallback list).
    pub issuers: Vec<String>,
    /// The names: lowercase DNS names without trailing dot, `*.` wildcards, or IP addresses.
    pub domains: Vec<String>,
    /// The certificate key type (default ecdsa-p256).
    pub key: KeyType,
    /// Renew this long before Not After; `None` means the default (30 days, capped at 1/3 of the
    /// lifetime; ARI wins when offered).
    pub renew_before: Option<Duration>,
    /// The CA profile to ask for, when the CA offers profiles.
    pub profile: Option<String>,
    /// Prefer the alternate chain whose topmost issuer has this common name.
    pub preferred_chain: Option<String>,
    /// Keep the private key across renewals.
    pub key_reuse: bool,
    /// Where and how the PEM files are written.
    pub output: OutputConfig,
    /// Shell commands run (each with `/bin/sh -c`) after a new certificate is written.
    pub reload: Vec<String>,
}

/// Where a certificate's PEM files go, and their ownership and modes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputConfig {
    /// Absolute directory holding `fullchain.pem`, `privkey.pem`, `chain.pem`, `cert.pem`.
    pub dir: PathBuf,
    /// Owner user of the files; `None` keeps certkeeper's user.
    pub owner: Option<String>,
    /// Group of the files; `None` keeps certkeeper's group.
    pub group: Option<String>,
    /// Mode of `privkey.pem` (default 0o600).
    pub key_mode: u32,
    /// Mode of the certificate files (default 0o644).
    pub cert_mode: u32,
}

/// One problem at a known place in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file.
    pub file: PathBuf,
    /// 1-based line and column (in characters), when known.
    pub position: Option<(usize, usize)>,
    /// The dotted key path, e.g. `certificate.www.output.dir`, when known.
    pub key: Option<String>,
    /// What is wrong and, where possible, what to do.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, col)) = self.position {
            write!(f, ":{line}:{col}")?;
        }
        f.write_str(": ")?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The main config file could not be read.
    #[error("{}: cannot read config file: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// One or more problems in the config files; each is `FILE:LINE:COL: KEY: message`.
    #[error("{}", render_all(.0))]
    Invalid(Vec<Diagnostic>),
}

impl ConfigError {
    /// The individual problems (empty for [`ConfigError::Read`]).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            Self::Read { .. } => &[],
            Self::Invalid(d) => d,
        }
    }
}

fn render_all(diags: &[Diagnostic]) -> String {
    diags
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Read, merge and validate the config at `path` and the files it includes.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Config::from_str(&text, path)
}

impl Config {
    /// Parse and validate `text` as if it were the main config file at `path`.
    ///
    /// `include` patterns are resolved against `path`'s directory and read from disk.
    pub fn from_str(text: &str, path: &Path) -> Result<Self, ConfigError> {
        validate::build(text, path)
    }
}

impl IssuerConfig {
    /// Choose the solver for one identifier, as cert-manager does.
    ///
    /// `identifier` is the name without `*.` (or an IP address); `wildcard` says whether the order
    /// asked for `*.identifier`. Among the solvers that may answer it (wildcards: dns01 only; IP
    /// addresses: http01 and webroot only): an exact `dns_names` match wins, then the longest
    /// matching `dns_zones` entry, then a selector-less solver; ties go to the one written first.
    pub fn solver_for(&self, identifier: &str, wildcard: bool) -> Option<&SolverConfig> {
        let id = identifier.trim_end_matches('.').to_ascii_lowercase();
        let is_ip = id.parse::<IpAddr>().is_ok();
        let full = if wildcard {
            format!("*.{id}")
        } else {
            id.clone()
        };
        let mut best: Option<((u8, usize), &SolverConfig)> = None;
        for solver in &self.solvers {
            let dns01 = solver.kind.is_dns01();
            if (wildcard && !dns01) || (is_ip && dns01) {
                continue;
            }
            let rank = if solver.selector.dns_names.iter().any(|n| *n == full) {
                (3, 0)
            } else if let Some(len) = (!is_ip)
                .then(|| {
                    solver
                        .selector
                        .dns_zones
                        .iter()
                        .filter(|z| zone_covers(z, &id))
                        .map(|z| z.len())
                        .max()
                })
                .flatten()
            {
                (2, len)
            } else if solver.selector.is_empty() {
                (1, 0)
            } else {
                continue;
            };
            if best.as_ref().is_none_or(|(r, _)| rank > *r) {
                best = Some((rank, solver));
            }
        }
        best.map(|(_, s)| s)
    }
}

/// Whether `zone` is `name` or a parent of it.
fn zone_covers(zone: &str, name: &str) -> bool {
    name == zone
        || name
            .strip_suffix(zone)
            .is_some_and(|rest| rest.ends_with('.'))
}
