//! The configuration: TOML files parsed, merged and validated into owned types.
//!
//! [`load`] reads the main file (usually `/etc/certkeeper/certkeeper.toml`) and the files its
//! `include` globs name, merges their `issuer.*` and `certificate.*` tables, and validates the whole.
//! Every problem is reported as `FILE:LINE:COLUMN: KEY.PATH: what is wrong and what to do`; all
//! problems found are reported at once. The validated [`Config`] holds no spans and no raw TOML.
//!
//! Secrets come from `*_file` or `*_env` keys (see [`secret`]). The EAB HMAC key is read at load
//! time; DNS provider credentials when the provider is built, so a secret file may appear after the
//! config (every other `dns01` setting is checked at load time, with the key's place). Relative
//! paths in `ca_bundle`, `*_file` (in `dns01` tables too), `webroot.path` and an `exec` command with
//! a `/` are resolved against the directory of the file that names them.

mod duration;
mod glob;
mod raw;
pub mod secret;
mod slice;
mod solver;
mod source;
mod storage;
#[cfg(test)]
pub(crate) mod testing;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use duration::parse_duration;
pub use secret::{Secret, SecretError, SecretSource, read_secret};

use crate::acme::KeyType;
use crate::challenge::dns01::providers::DnsProviderConfig;
use crate::challenge::{ChallengeKind, IdentifierKind};

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
/// How long deploy verification waits for every endpoint to serve the new certificate by default.
pub const DEFAULT_DEPLOY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the daemon checks again what the endpoints serve, by default.
pub const DEFAULT_DEPLOY_INTERVAL: Duration = Duration::from_secs(3600);
/// `expiring` is notified when Not After is this close, by default.
pub const DEFAULT_WARN_BEFORE: Duration = Duration::from_secs(14 * 86400);
/// How long a notify command may run, or a webhook delivery (all its tries) take, by default.
pub const DEFAULT_NOTIFY_TIMEOUT: Duration = Duration::from_secs(30);

/// The whole validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The main config file, as given to [`load`].
    pub source: PathBuf,
    /// Every file read: the main file first, then the included files in include order.
    pub files: Vec<PathBuf>,
    /// The directories the `include` patterns look in, watched for new and removed files.
    pub include_dirs: Vec<PathBuf>,
    /// Where account keys and per-certificate state live (absolute).
    pub state_dir: PathBuf,
    /// `[storage]`: the file tree under `state_dir` (default), or PostgreSQL for a fleet.
    pub storage: StorageConfig,
    /// The HTTP-01 listener.
    pub http01: Http01Config,
    /// The admin listener (`/healthz`, `/metrics`); `None` when `[admin]` is absent.
    pub admin: Option<AdminConfig>,
    /// Daemon-wide limits.
    pub daemon: DaemonConfig,
    /// `[dns01]`: DNS settings shared by every solver and the CAA preflight.
    pub dns01: Dns01Config,
    /// Where alerts go (`[notify]`); `None` when it is absent: nothing is notified.
    pub notify: Option<NotifyConfig>,
    /// The issuers (`[issuer.NAME]`), by name.
    pub issuers: BTreeMap<String, IssuerConfig>,
    /// The certificates (`[certificate.NAME]`), by name.
    pub certificates: BTreeMap<String, CertificateConfig>,
}

/// `[storage]`: where accounts and certificate state live.
#[derive(Clone, Debug, Default)]
pub enum StorageConfig {
    /// `backend = "file"` (the default): files under `state_dir`.
    #[default]
    File,
    /// `backend = "postgres"`: a PostgreSQL database shared by the nodes of a fleet.
    Postgres(PostgresConfig),
}

/// `[storage] backend = "postgres"`, validated: the key decoded, the password read.
#[derive(Clone, Debug)]
pub struct PostgresConfig {
    /// `url`: `postgresql://user@host:port/dbname[?sslmode=require]`, without a password.
    pub url: String,
    /// The password from `password_file`; `None`: `PGPASSWORD` or none.
    pub password: Option<Secret>,
    /// `encryption_key_file`, for messages.
    pub encryption_key_file: PathBuf,
    /// The key that seals private keys in the database.
    pub encryption_key: crate::store::postgres::crypto::DataKey,
    /// `previous_encryption_key_files`: keys rotated out, which only open values still sealed
    /// with them (during a key rotation), with their files.
    pub previous_encryption_keys: Vec<(PathBuf, crate::store::postgres::crypto::DataKey)>,
    /// `node`: this host's name in the fleet (default: the host name).
    pub node: String,
    /// `lease`: how long this node's lease on a certificate lives without renewal (default
    /// [`crate::store::postgres::DEFAULT_LEASE_TTL`]): how long the fleet waits for a dead node.
    pub lease: std::time::Duration,
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
    /// Socket address to bind; a non-loopback address needs `allow_remote = true` or a token.
    pub listen: SocketAddr,
    /// `allow_remote = true`: the operator accepts a non-loopback address without a token (and
    /// firewalls it).
    pub allow_remote: bool,
    /// The bearer token every request must carry (`token_file`, read at load).
    pub token: Option<secret::Secret>,
}

/// `[daemon]`: daemon-wide limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonConfig {
    /// Orders in flight at once (at least 1; default 8).
    pub max_concurrent: usize,
    /// How long one reload hook may run before it is killed (default 60s).
    pub hook_timeout: Duration,
    /// The retry schedule after a failed attempt (`retry_first`, default 1m; `retry_max`, default
    /// 6h).
    pub backoff: crate::scheduler::Backoff,
}

/// `[dns01]`: DNS settings for every issuer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dns01Config {
    /// The recursive resolvers (`resolvers = ["127.0.0.53:53"]`) used to find a zone and its
    /// authoritative nameservers, to follow CNAMEs on `_acme-challenge` and to look up CAA. Empty
    /// means the `nameserver` lines of `/etc/resolv.conf` (as lego's `--dns.resolvers`).
    pub resolvers: Vec<SocketAddr>,
}

/// `[notify]`: where alerts about certificates go (see [`crate::notify`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotifyConfig {
    /// A shell command run with the event as JSON on stdin and `CERTKEEPER_EVENT` etc. set.
    pub command: Option<String>,
    /// Names of the daemon's environment variables the command may see (like `reload_env`).
    pub command_env: Vec<String>,
    /// An HTTP POST of the same JSON.
    pub webhook: Option<WebhookConfig>,
    /// `expiring` is notified when Not After is this close (default 14 days).
    pub warn_before: Duration,
    /// How long the command may run, and how long a webhook delivery may take with its retries.
    pub timeout: Duration,
}

/// `webhook = { url = "https://...", header_file = "..." }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookConfig {
    /// Where to POST (https, or http to a loopback address).
    pub url: String,
    /// Headers sent with every request (`Name: value` lines of `header_file`, read at load).
    pub headers: Vec<(String, Secret)>,
}

/// `verify_deploy = { ... }` of a certificate: the TLS endpoints that must serve it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyDeploy {
    /// `host:port` endpoints to connect to.
    pub connect: Vec<String>,
    /// The SNI name sent (default: the first DNS name that is not a wildcard).
    pub server_name: String,
    /// How long to retry until every endpoint serves the installed certificate (default 10s).
    pub timeout: Duration,
    /// How often the daemon checks again (default 1h).
    pub interval: Duration,
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
    /// The CA's CAA identities (`caa_identities = ["letsencrypt.org"]`), overriding the directory's
    /// `meta.caaIdentities`; `None` means: what the directory publishes.
    pub caa_identities: Option<Vec<String>>,
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
        /// Where the self-check connects (`self_check = { port, resolve }`; port 80 of the name's
        /// own addresses by default).
        self_check_target: crate::challenge::http01::SelfCheckTarget,
    },
    /// HTTP-01 by writing token files under a web server's document root.
    Webroot {
        /// The document root; files go to `<path>/.well-known/acme-challenge/<token>`.
        path: PathBuf,
        /// Fetch the token through the public name before telling the CA (default true), as for
        /// `http01`.
        self_check: bool,
        /// Where the self-check connects (`self_check = { port, resolve }`).
        self_check_target: crate::challenge::http01::SelfCheckTarget,
    },
    /// TLS-ALPN-01 (RFC 8737) on certkeeper's own TLS listener, open only while challenges are pending.
    TlsAlpn01 {
        /// Where to listen (default `0.0.0.0:443`).
        listen: std::net::SocketAddr,
    },
    /// DNS-01 through a DNS provider.
    Dns01 {
        /// The provider and its settings.
        provider: DnsProviderConfig,
        /// How to wait for the TXT record to be visible.
        propagation: PropagationConfig,
    },
    /// dns-persist-01 (experimental, draft-ietf-acme-dns-persist): a standing
    /// `_validation-persist` TXT record the user publishes once; nothing is written per order.
    DnsPersist01 {
        /// The CA's issuer domain name the record starts with (e.g. `letsencrypt.org`).
        issuer_domain: String,
        /// Where the standing record is read before ordering (`nameservers`; `check = false`
        /// skips the check; the timeout and interval are not used).
        propagation: PropagationConfig,
    },
}

impl SolverKind {
    /// True for the DNS-01 kind.
    pub fn is_dns01(&self) -> bool {
        matches!(self, Self::Dns01 { .. })
    }

    /// The config key of this kind: `http01`, `webroot`, `tlsalpn01` or `dns01`.
    pub fn key(&self) -> &'static str {
        match self {
            Self::Http01 { .. } => "http01",
            Self::Webroot { .. } => "webroot",
            Self::TlsAlpn01 { .. } => "tlsalpn01",
            Self::Dns01 { .. } => "dns01",
            Self::DnsPersist01 { .. } => "dns_persist01",
        }
    }

    /// The challenge type this solver answers.
    pub fn challenge_kind(&self) -> ChallengeKind {
        match self {
            Self::Http01 { .. } | Self::Webroot { .. } => ChallengeKind::Http01,
            Self::TlsAlpn01 { .. } => ChallengeKind::TlsAlpn01,
            Self::Dns01 { .. } => ChallengeKind::Dns01,
            Self::DnsPersist01 { .. } => ChallengeKind::DnsPersist01,
        }
    }

    /// The solver keys (`http01`, `webroot`, ...) whose challenge can prove an identifier of
    /// `kind`, in the order they are documented; for messages that say what to configure.
    pub fn keys_that_can_prove(kind: IdentifierKind) -> Vec<&'static str> {
        SOLVER_KEYS
            .into_iter()
            .filter(|(_, challenge)| challenge.can_prove(kind))
            .map(|(key, _)| key)
            .collect()
    }
}

/// Every solver key and the challenge type it answers (as [`SolverKind::challenge_kind`]), in the
/// order they are documented. The experimental `dns_persist01` is not listed: messages that say
/// what to configure do not suggest a draft feature.
pub(crate) const SOLVER_KEYS: [(&str, ChallengeKind); 4] = [
    ("http01", ChallengeKind::Http01),
    ("webroot", ChallengeKind::Http01),
    ("tlsalpn01", ChallengeKind::TlsAlpn01),
    ("dns01", ChallengeKind::Dns01),
];

pub use crate::challenge::dns01::PropagationConfig;

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
    /// lifetime, 1/2 below 10 days; an ARI window can only make it earlier).
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
    /// Names of the daemon's environment variables the reload commands may see, beyond `PATH`,
    /// `LANG`, `LC_*`, `TZ` and certkeeper's own `CERTKEEPER_*` (see [`crate::child`]).
    pub reload_env: Vec<String>,
    /// The TLS endpoints checked to serve the installed certificate after its reload, if any.
    pub verify_deploy: Option<VerifyDeploy>,
}

/// Where a certificate's PEM files go, and their ownership and modes (the store's own type).
pub use crate::store::OutputSpec as OutputConfig;

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

/// Like [`load`], but of the certificates only `name` is validated and kept in
/// [`Config::certificates`]: for read-only commands about one certificate (`status NAME`,
/// `explain NAME`), which need not check the other thousands. Everything else (the top level,
/// issuers, includes, a name defined twice) is checked as by [`load`]; problems in other
/// certificates are left to `check`, `run` and `renew`. When `name` is not defined the whole config
/// is validated, so the caller can list the names that are.
///
/// The other certificates' tables are not even parsed when a line scan can cut them out (see
/// [`slice`]); then their syntax and type errors go unseen too. Otherwise, and whenever the config
/// is invalid, everything is parsed, so the messages are those of the full parse.
pub fn load_one(path: &Path, name: &str) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    match slice::load_one(&text, path, name) {
        Some(cfg) => Ok(cfg),
        None => validate::build(&text, path, Some(name)),
    }
}

/// The `state_dir` of the config at `path`, from its top-level keys alone (TOML puts them before
/// the first table header), without parsing and validating every certificate: for the privilege
/// switch before a command loads the whole config. `None` when that part does not parse; then
/// [`load`] decides (and reports what is wrong).
pub fn state_dir_of(path: &Path) -> Option<PathBuf> {
    #[derive(serde::Deserialize)]
    struct Top {
        state_dir: Option<String>,
    }
    use std::io::BufRead;
    // The lines before the first header only: the rest may be thousands of certificates.
    let mut file = std::io::BufReader::new(std::fs::File::open(path).ok()?);
    let (mut text, mut line) = (String::new(), String::new());
    while file.read_line(&mut line).ok()? > 0 && !line.trim_start().starts_with('[') {
        text.push_str(&line);
        line.clear();
    }
    // A cut inside a multi-line value leaves it unterminated: a parse error, so `None`.
    let top: Top = toml::from_str(&text).ok()?;
    let dir = top
        .state_dir
        .map_or_else(|| PathBuf::from(DEFAULT_STATE_DIR), PathBuf::from);
    dir.is_absolute().then_some(dir)
}

impl Config {
    /// Parse and validate `text` as if it were the main config file at `path`.
    ///
    /// `include` patterns are resolved against `path`'s directory and read from disk.
    pub fn from_str(text: &str, path: &Path) -> Result<Self, ConfigError> {
        validate::build(text, path, None)
    }
}

impl IssuerConfig {
    /// Choose the solver for one identifier, as cert-manager does.
    ///
    /// `identifier` is the value the CA uses: a DNS name without `*.`, or an IP address; `kind`
    /// says which it is (see [`IdentifierKind::split`]). Only solvers whose challenge type can
    /// prove `kind` are considered ([`ChallengeKind::can_prove`]: wildcards need dns01, IP
    /// addresses http01, webroot or tlsalpn01). Among them an exact `dns_names` match wins, then
    /// the longest matching `dns_zones` entry, then a selector-less solver; ties go to the one
    /// written first.
    pub fn solver_for(&self, identifier: &str, kind: IdentifierKind) -> Option<&SolverConfig> {
        let id = identifier.trim_end_matches('.').to_ascii_lowercase();
        let full = if kind == IdentifierKind::Wildcard {
            format!("*.{id}")
        } else {
            id.clone()
        };
        let mut best: Option<((u8, usize), &SolverConfig)> = None;
        for solver in &self.solvers {
            if !solver.kind.challenge_kind().can_prove(kind) {
                continue;
            }
            let rank = if solver.selector.dns_names.contains(&full) {
                (3, 0)
            } else if let Some(len) = (kind != IdentifierKind::Ip)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid main file; cases append to it or replace lines of it.
    const BASE: &str = r#"state_dir = "/var/lib/certkeeper"

[issuer.le]
directory = "https://127.0.0.1:14000/dir"
contact = ["mailto:admin@example.com"]

[[issuer.le.solver]]
http01 = {}

[[issuer.le.solver]]
selector = { dns_zones = ["example.com"] }
dns01 = { provider = "exec", command = "/bin/true" }

[certificate.www]
issuer = "le"
domains = ["example.com", "www.example.com"]
output = { dir = "/etc/nginx/tls/www" }
"#;

    /// Write `main` (and `(name, text)` includes under `conf.d/`) to a temp dir, load, and return the
    /// result with the temp dir path replaced by `DIR`.
    fn load_case(main: &str, includes: &[(&str, &str)]) -> Result<Config, String> {
        let (dir, path) = super::testing::write_files(main, includes);
        load(&path).map_err(|e| {
            e.to_string()
                .replace(&dir.path().display().to_string(), "DIR")
        })
    }

    fn err_of(main: &str, includes: &[(&str, &str)]) -> String {
        match load_case(main, includes) {
            Ok(_) => panic!("config unexpectedly valid:\n{main}"),
            Err(e) => e,
        }
    }

    #[test]
    fn base_is_valid_and_defaults_apply() {
        let cfg = load_case(BASE, &[]).unwrap();
        assert_eq!(cfg.state_dir, PathBuf::from("/var/lib/certkeeper"));
        assert_eq!(
            cfg.http01.listen,
            vec!["127.0.0.1:8402".parse::<SocketAddr>().unwrap()]
        );
        assert!(cfg.admin.is_none());
        assert_eq!(
            cfg.daemon,
            DaemonConfig {
                max_concurrent: 8,
                hook_timeout: Duration::from_secs(60),
                backoff: crate::scheduler::Backoff::default()
            }
        );
        let le = &cfg.issuers["le"];
        assert_eq!(le.account_key, KeyType::EcdsaP256);
        assert_eq!(le.solvers.len(), 2);
        match &le.solvers[1].kind {
            SolverKind::Dns01 { propagation, .. } => {
                assert_eq!(*propagation, PropagationConfig::default())
            }
            other => panic!("{other:?}"),
        }
        let www = &cfg.certificates["www"];
        assert_eq!(www.issuers, vec!["le"]);
        assert_eq!(www.key, KeyType::EcdsaP256);
        assert_eq!(www.renew_before, None);
        assert_eq!(
            www.output,
            OutputConfig {
                dir: PathBuf::from("/etc/nginx/tls/www"),
                owner: None,
                group: None,
                key_mode: 0o600,
                cert_mode: 0o644,
                allow_shared_dir: false,
            }
        );
        assert_eq!(cfg.files.len(), 1);
    }

    #[test]
    fn verify_deploy_and_notify_are_validated_with_defaults() {
        let text = format!(
            "{BASE}verify_deploy = {{ connect = [\"127.0.0.1:443\", \"[::1]:8443\"] }}\n\n[notify]\ncommand = \"logger -t certkeeper\"\n"
        );
        let cfg = load_case(&text, &[]).unwrap();
        let v = cfg.certificates["www"].verify_deploy.clone().unwrap();
        assert_eq!(v.server_name, "example.com", "the first DNS name");
        assert_eq!(v.connect, ["127.0.0.1:443", "[::1]:8443"]);
        assert_eq!(
            (v.timeout, v.interval),
            (DEFAULT_DEPLOY_TIMEOUT, DEFAULT_DEPLOY_INTERVAL)
        );
        let n = cfg.notify.unwrap();
        assert_eq!(n.command.as_deref(), Some("logger -t certkeeper"));
        assert_eq!((n.warn_before, n.webhook), (DEFAULT_WARN_BEFORE, None));

        let dir = tempfile::tempdir().unwrap();
        let headers = dir.path().join("h");
        std::fs::write(&headers, "X-Token: abc\nAuthorization: Bearer t\n").unwrap();
        let text = format!(
            "{BASE}\n[notify]\nwebhook = {{ url = \"https://alerts.example.com/hook\", header_file = \"{}\" }}\nwarn_before = \"20d\"\n",
            headers.display()
        );
        let n = load_case(&text, &[]).unwrap().notify.unwrap();
        let hook = n.webhook.unwrap();
        assert_eq!(hook.headers.len(), 2);
        assert_eq!(
            (hook.headers[1].0.as_str(), hook.headers[1].1.expose()),
            ("Authorization", "Bearer t")
        );
        assert_eq!(n.warn_before, Duration::from_secs(20 * 86400));

        let cases = [
            (
                format!("{BASE}verify_deploy = {{ connect = [] }}\n"),
                "certificate.www.verify_deploy.connect: names no endpoint",
            ),
            (
                format!("{BASE}verify_deploy = {{ connect = [\"127.0.0.1\"] }}\n"),
                "certificate.www.verify_deploy.connect[0]: \"127.0.0.1\" is not host:port",
            ),
            (
                format!("{BASE}verify_deploy = {{ connect = [\"h:443\"], timeout = \"soon\" }}\n"),
                "certificate.www.verify_deploy.timeout: invalid duration",
            ),
            (
                BASE.replace(
                    "domains = [\"example.com\", \"www.example.com\"]",
                    "domains = [\"*.example.com\"]",
                ) + "verify_deploy = { connect = [\"h:443\"] }\n",
                "certificate.www.verify_deploy: has no DNS name to send as SNI",
            ),
            (
                format!("{BASE}\n[notify]\nwarn_before = \"3d\"\n"),
                "notify: names no destination",
            ),
            (
                format!("{BASE}\n[notify]\nwebhook = {{ url = \"http://alerts.example.com/\" }}\n"),
                "notify.webhook.url: \"http://alerts.example.com/\" must be an https:// URL",
            ),
            (
                format!(
                    "{BASE}\n[notify]\nwebhook = {{ url = \"https://a.example/\", header_file = \"/nonexistent/h\" }}\n"
                ),
                "notify.webhook.header_file: cannot read /nonexistent/h",
            ),
            (
                format!("{BASE}\n[notify]\ncommand = \"x\"\ncommand_env = [\"NOTIFY_SOCKET\"]\n"),
                "notify.command_env[0]: NOTIFY_SOCKET is systemd's channel",
            ),
        ];
        for (text, want) in cases {
            let err = err_of(&text, &[]);
            assert!(err.contains(want), "want {want:?} in:\n{err}");
        }
        // plain http to loopback is fine (a local relay)
        let text =
            format!("{BASE}\n[notify]\nwebhook = {{ url = \"http://127.0.0.1:9000/hook\" }}\n");
        assert!(load_case(&text, &[]).is_ok());
    }

    #[test]
    fn malformed_configs_report_file_line_column_and_key() {
        type Case<'a> = (&'a str, String, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            ("syntax error", BASE.replace("contact = [", "contact = [,"), &[], "DIR/certkeeper.toml:5:12: issuer.le.contact: extra comma in array, expected value"),
            ("unclosed header", BASE.replace("[certificate.www]", "[certificate.www"), &[], "DIR/certkeeper.toml:14:17: unclosed table, expected `]`"),
            ("bad string", BASE.replace("issuer = \"le\"", "issuer = \"le"), &[], "DIR/certkeeper.toml:15:13: invalid basic string, expected `\"`"),
            ("unknown top-level key", format!("stat_dir = \"/x\"\n{BASE}"), &[], "DIR/certkeeper.toml:1:1: stat_dir: unknown field `stat_dir`, expected one of `state_dir`, `storage`, `include`, `http01`, `admin`, `daemon`, `dns01`, `notify`, `issuer`, `certificate`"),
            ("unknown issuer key", BASE.replace("contact =", "directry = \"x\"\ncontact ="), &[], "DIR/certkeeper.toml:5:1: issuer.le.directry: unknown field `directry`, expected one of `directory`, `contact`, `ca_bundle`, `eab`, `account_key`, `caa_identities`, `solver`"),
            ("unknown solver key", BASE.replace("http01 = {}", "http01 = { self_chek = true }"), &[], "DIR/certkeeper.toml:8:12: issuer.le.solver[0].http01.self_chek: unknown field `self_chek`, expected `self_check`"),
            ("unknown certificate key", BASE.replace("issuer = \"le\"", "issuer = \"le\"\ndomain = \"x\""), &[], "DIR/certkeeper.toml:16:1: certificate.www.domain: unknown field `domain`, expected one of `issuer`, `domains`, `key`, `renew_before`, `profile`, `preferred_chain`, `key_reuse`, `output`, `reload`, `reload_env`, `verify_deploy`"),
            ("unknown output key", BASE.replace("tls/www\" }", "tls/www\", mode = \"0640\" }"), &[], "DIR/certkeeper.toml:17:40: certificate.www.output.mode: unknown field `mode`, expected one of `dir`, `owner`, `group`, `key_mode`, `cert_mode`, `allow_shared_dir`"),
            ("wrong type", BASE.replace("domains = [\"example.com\", \"www.example.com\"]", "domains = \"example.com\""), &[], "DIR/certkeeper.toml:16:11: certificate.www.domains: invalid type: string \"example.com\", expected a sequence"),
            ("unknown issuer", BASE.replace("issuer = \"le\"", "issuer = \"le2\""), &[], "DIR/certkeeper.toml:15:10: certificate.www.issuer: unknown issuer \"le2\" (defined issuers: le)"),
            ("issuer list with unknown", BASE.replace("issuer = \"le\"", "issuer = [\"le\", \"zerossl\"]"), &[], "DIR/certkeeper.toml:15:10: certificate.www.issuer: unknown issuer \"zerossl\" (defined issuers: le)"),
            ("wildcard without dns01", BASE.replace("\"www.example.com\"]", "\"*.other.org\"]"), &[], "DIR/certkeeper.toml:16:27: certificate.www.domains[1]: *.other.org is a wildcard name and needs a dns01 solver (http01, webroot, tlsalpn01 cannot prove wildcards): add [[issuer.le.solver]] with dns01 = {...} whose selector covers other.org"),
            ("IP with dns01 only", BASE.replace("http01 = {}", "selector = { dns_names = [\"x.example.com\"] }\nhttp01 = {}").replace("\"www.example.com\"]", "\"192.0.2.1\"]"), &[], "DIR/certkeeper.toml:17:27: certificate.www.domains[1]: 192.0.2.1 is an IP address and needs an http01, webroot or tlsalpn01 solver (dns01 cannot prove IP addresses): add [[issuer.le.solver]] with http01 = {} and no selector"),
            ("no solver covers a name", BASE.replace("http01 = {}", "selector = { dns_names = [\"x.example.com\"] }\nhttp01 = {}").replace("\"www.example.com\"]", "\"www.other.org\"]"), &[], "DIR/certkeeper.toml:17:27: certificate.www.domains[1]: no solver of issuer \"le\" covers www.other.org: add a solver whose selector covers it, or one without a selector"),
            ("unreadable secret file", BASE.replace("contact =", "eab = { kid = \"k1\", hmac_key_file = \"/nonexistent/eab.key\" }\ncontact ="), &[], "DIR/certkeeper.toml:5:37: issuer.le.eab.hmac_key_file: cannot read secret file /nonexistent/eab.key: No such file or directory (os error 2) (check the path and that certkeeper's user may read it)"),
            ("missing env secret", BASE.replace("contact =", "eab = { kid = \"k1\", hmac_key_env = \"CERTKEEPER_TEST_UNSET_EAB\" }\ncontact ="), &[], "DIR/certkeeper.toml:5:36: issuer.le.eab.hmac_key_env: environment variable CERTKEEPER_TEST_UNSET_EAB is not set (or not valid UTF-8): set it in the service environment, e.g. systemd Environment= or EnvironmentFile="),
            ("secret neither file nor env", BASE.replace("contact =", "eab = { kid = \"k1\" }\ncontact ="), &[], "DIR/certkeeper.toml:5:7: issuer.le.eab: no hmac_key given: set hmac_key_file = \"/path/to/file\" or hmac_key_env = \"VARIABLE\" (or hmac_key_credential = \"NAME\" with systemd's LoadCredential=)"),
            ("duplicate domain", BASE.replace("\"www.example.com\"]", "\"WWW.example.com.\", \"www.example.com\"]"), &[], "DIR/certkeeper.toml:16:47: certificate.www.domains[2]: \"www.example.com\" is listed twice: remove one"),
            ("same output dir", format!("{BASE}\n[certificate.api]\ndomains = [\"api.example.com\"]\noutput = {{ dir = \"/etc/nginx/tls/www\" }}\n"), &[], "DIR/certkeeper.toml:21:18: certificate.api.output.dir: certificate.www (DIR/certkeeper.toml:17:18) already writes to /etc/nginx/tls/www: give each certificate its own output dir"),
            ("duplicate certificate across includes", format!("include = [\"conf.d/*.toml\"]\n{BASE}"), &[("a.toml", "[certificate.api]\ndomains = [\"api.example.com\"]\noutput = { dir = \"/tls/api\" }\n"), ("b.toml", "\n[certificate.api]\ndomains = [\"api2.example.com\"]\noutput = { dir = \"/tls/api2\" }\n")], "DIR/conf.d/b.toml:2:14: certificate.api: defined twice: here and at DIR/conf.d/a.toml:1:14; rename or remove one"),
            ("duplicate certificate main and include", format!("include = [\"conf.d/*.toml\"]\n{BASE}"), &[("www.toml", "[certificate.www]\ndomains = [\"x.example.com\"]\noutput = { dir = \"/tls/x\" }\n")], "DIR/conf.d/www.toml:1:14: certificate.www: defined twice: here and at DIR/certkeeper.toml:15:14; rename or remove one"),
            ("include with top-level key", format!("include = [\"conf.d/*.toml\"]\n{BASE}"), &[("x.toml", "state_dir = \"/x\"\n")], "DIR/conf.d/x.toml:1:1: state_dir: unknown field `state_dir`, expected `issuer` or `certificate` (included files may only define issuer.* and certificate.*)"),
            ("include of missing file", format!("include = [\"conf.d/none.toml\"]\n{BASE}"), &[], "DIR/certkeeper.toml:1:12: include[0]: DIR/conf.d/none.toml: No such file or directory (os error 2)"),
            ("bad mode", BASE.replace("tls/www\" }", "tls/www\", key_mode = \"0988\" }"), &[], "DIR/certkeeper.toml:17:51: certificate.www.output.key_mode: \"0988\" is not an octal file mode: write e.g. \"0640\""),
            ("key readable by all", BASE.replace("tls/www\" }", "tls/www\", key_mode = \"0644\" }"), &[], "DIR/certkeeper.toml:17:51: certificate.www.output.key_mode: 0644 lets more than the owner and the group read or change the private key: use \"0600\", or \"0640\" with output.group for a web server that reads it as a group member"),
            ("decimal mode", BASE.replace("tls/www\" }", "tls/www\", key_mode = 640 }"), &[], "DIR/certkeeper.toml:17:51: certificate.www.output.key_mode: 640 is a decimal number: write the mode as an octal string, e.g. \"0640\""),
            ("bad duration", BASE.replace("issuer = \"le\"", "issuer = \"le\"\nrenew_before = \"30x\""), &[], "DIR/certkeeper.toml:16:16: certificate.www.renew_before: invalid duration \"30x\": failed to parse input in the \"friendly\" duration format: expected to find unit designator suffix (e.g., `years` or `secs`) after parsing integer; use e.g. \"30d\", \"12h\", \"90s\", \"1d 12h\" or \"P30D\""),
            ("bad hook timeout", format!("{BASE}\n[daemon]\nhook_timeout = \"-5s\"\n"), &[], "DIR/certkeeper.toml:20:16: daemon.hook_timeout: invalid duration \"-5s\": must be greater than zero; use e.g. \"30d\", \"12h\", \"90s\", \"1d 12h\" or \"P30D\""),
            ("relative output dir", BASE.replace("/etc/nginx/tls/www", "tls/www"), &[], "DIR/certkeeper.toml:17:18: certificate.www.output.dir: must be an absolute path, got \"tls/www\""),
            ("relative state_dir", BASE.replace("\"/var/lib/certkeeper\"", "\"var/lib/certkeeper\""), &[], "DIR/certkeeper.toml:1:13: state_dir: must be an absolute path, got \"var/lib/certkeeper\""),
            ("two solver kinds", BASE.replace("http01 = {}", "http01 = {}\nwebroot = { path = \"/var/www\" }"), &[], "DIR/certkeeper.toml:7:1: issuer.le.solver[0]: set exactly one of http01, webroot, tlsalpn01, dns01 per solver, found http01 and webroot: split them into separate [[...solver]] tables"),
            ("no solver kind", BASE.replace("http01 = {}", "selector = { dns_zones = [\"a.example\"] }"), &[], "DIR/certkeeper.toml:7:1: issuer.le.solver[0]: no solver kind: set exactly one of http01 = {}, webroot = { path = \"...\" }, tlsalpn01 = {}, dns01 = { provider = \"...\" }"),
            ("issuer without solvers", "[issuer.le]\ndirectory = \"letsencrypt\"\n".to_string(), &[], "DIR/certkeeper.toml:1:9: issuer.le: no solvers: add [[issuer.le.solver]] with http01 = {} (or webroot = { path = \"...\" }, or dns01 = { provider = \"...\", ... })"),
            ("certificate without domains", BASE.replace("domains = [\"example.com\", \"www.example.com\"]\n", ""), &[], "DIR/certkeeper.toml:14:14: certificate.www.domains: no domains: list the names, e.g. domains = [\"example.com\", \"www.example.com\"]"),
            ("bad directory", BASE.replace("https://127.0.0.1:14000/dir", "letsencrypt-prod"), &[], "DIR/certkeeper.toml:4:13: issuer.le.directory: \"letsencrypt-prod\" is neither a known CA (letsencrypt, letsencrypt-staging, zerossl) nor an https:// URL of an ACME directory"),
            ("bad contact", BASE.replace("mailto:admin@example.com", "admin@example.com"), &[], "DIR/certkeeper.toml:5:12: issuer.le.contact[0]: \"admin@example.com\" must be a mailto: URL, e.g. \"mailto:admin@example.com\""),
            ("bad key type", BASE.replace("issuer = \"le\"", "issuer = \"le\"\nkey = \"ed25519\""), &[], "DIR/certkeeper.toml:16:7: certificate.www.key: unknown key type \"ed25519\": use one of ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096"),
            ("bad listen", format!("{BASE}\n[http01]\nlisten = [\"localhost:80\"]\n"), &[], "DIR/certkeeper.toml:20:11: http01.listen[0]: \"localhost:80\" is not an IP address with a port: write e.g. \"127.0.0.1:8402\" or \"[::1]:8402\""),
            ("bad domain", BASE.replace("\"www.example.com\"]", "\"www..example.com\"]"), &[], "DIR/certkeeper.toml:16:27: certificate.www.domains[1]: \"www..example.com\" is not a DNS name: each dot-separated label must have 1 to 63 characters"),
            ("unknown dns provider", BASE.replace("provider = \"exec\"", "provider = \"exek\""), &[], "DIR/certkeeper.toml:12:22: issuer.le.solver[1].dns01.provider: unknown provider \"exek\": use one of rfc2136, exec, powerdns, cloudflare, route53, acme-dns"),
            ("unknown dns provider key", BASE.replace("command = ", "commnd = "), &[], "DIR/certkeeper.toml:12:30: issuer.le.solver[1].dns01.commnd: unknown field `commnd`, expected one of `command`, `args`, `timeout`, `env`"),
            ("dns provider bad env name", BASE.replace("command = \"/bin/true\"", "command = \"/bin/true\", env = [\"OK\", \"NOTIFY_SOCKET\"]"), &[], "DIR/certkeeper.toml:12:59: issuer.le.solver[1].dns01.env[1]: NOTIFY_SOCKET is systemd's channel to certkeeper itself and is never passed to a child"),
            ("bad reload_env name", BASE.replace("issuer = \"le\"", "issuer = \"le\"\nreload_env = [\"CF-TOKEN\"]"), &[], "DIR/certkeeper.toml:16:15: certificate.www.reload_env[0]: \"CF-TOKEN\" is not a variable name (letters, digits and _, not starting with a digit)"),
            ("dns provider not a string", BASE.replace("provider = \"exec\"", "provider = 1"), &[], "DIR/certkeeper.toml:12:22: issuer.le.solver[1].dns01.provider: must be a string naming the provider, one of rfc2136, exec, powerdns, cloudflare, route53, acme-dns"),
            ("dns provider missing", BASE.replace("provider = \"exec\", ", ""), &[], "DIR/certkeeper.toml:12:9: issuer.le.solver[1].dns01: no provider: set provider = \"NAME\", one of rfc2136, exec, powerdns, cloudflare, route53, acme-dns"),
            ("dns provider wrong type", BASE.replace("command = \"/bin/true\"", "command = \"/bin/true\", timeout = 5"), &[], "DIR/certkeeper.toml:12:63: issuer.le.solver[1].dns01.timeout: invalid type: integer `5`, expected a string"),
            ("dns provider wrong type in list", BASE.replace("command = \"/bin/true\"", "command = \"/bin/true\", args = [\"a\", 2]"), &[], "DIR/certkeeper.toml:12:60: issuer.le.solver[1].dns01.args[1]: invalid type: integer `2`, expected a string"),
            ("dns provider bad duration", BASE.replace("command = \"/bin/true\"", "command = \"/bin/true\", timeout = \"5x\""), &[], "DIR/certkeeper.toml:12:63: issuer.le.solver[1].dns01.timeout: invalid duration \"5x\": failed to parse input in the \"friendly\" duration format: expected to find unit designator suffix (e.g., `years` or `secs`) after parsing integer; use e.g. \"30d\", \"12h\", \"90s\", \"1d 12h\" or \"P30D\""),
            ("dns provider missing key", BASE.replace("command = \"/bin/true\"", "args = []"), &[], "DIR/certkeeper.toml:12:9: issuer.le.solver[1].dns01: no command given: the exec provider needs command = ..."),
            ("dns provider secret neither file nor env", BASE.replace("dns01 = { provider = \"exec\", command = \"/bin/true\" }", "dns01 = { provider = \"cloudflare\" }"), &[], "DIR/certkeeper.toml:12:9: issuer.le.solver[1].dns01: no api_token given: set api_token_file = \"/path/to/file\" or api_token_env = \"VARIABLE\" (or api_token_credential = \"NAME\" with systemd's LoadCredential=)"),
            ("dns provider bad algorithm", BASE.replace("dns01 = { provider = \"exec\", command = \"/bin/true\" }", "dns01 = { provider = \"rfc2136\", server = \"127.0.0.1\", tsig_key = \"k.\", tsig_algorithm = \"hmac-md5\", tsig_secret_file = \"k.key\" }"), &[], "DIR/certkeeper.toml:12:89: issuer.le.solver[1].dns01.tsig_algorithm: \"hmac-md5\" is not supported: use hmac-sha256, hmac-sha384 or hmac-sha512"),
            ("dns provider in an include", format!("include = [\"conf.d/*.toml\"]\n{BASE}"), &[("x.toml", "[issuer.x]\ndirectory = \"letsencrypt\"\n[[issuer.x.solver]]\ndns01 = { provider = \"powerdns\", api_url = \"localhost:8081\", api_key_env = \"K\" }\n")], "DIR/conf.d/x.toml:4:44: issuer.x.solver[0].dns01.api_url: \"localhost:8081\" is not an http:// or https:// URL with a host"),
            ("duplicate issuer in list", BASE.replace("issuer = \"le\"", "issuer = [\"le\", \"le\"]"), &[], "DIR/certkeeper.toml:15:10: certificate.www.issuer: issuer \"le\" is listed twice: remove one"),
            ("bad resolver", format!("{BASE}\n[dns01]\nresolvers = [\"127.0.0.53:53\", \"dns.google\"]\n"), &[], "DIR/certkeeper.toml:20:31: dns01.resolvers[1]: \"dns.google\" is not a resolver address: write an IP address with an optional port, e.g. \"127.0.0.53\" or \"[::1]:53\""),
            ("empty resolvers", format!("{BASE}\n[dns01]\nresolvers = []\n"), &[], "DIR/certkeeper.toml:20:13: dns01.resolvers: is empty: list at least one recursive resolver, e.g. [\"127.0.0.53:53\"], or remove it to use /etc/resolv.conf"),
            ("unknown dns01 key", format!("{BASE}\n[dns01]\nresolver = [\"127.0.0.1\"]\n"), &[], "DIR/certkeeper.toml:20:1: dns01.resolver: unknown field `resolver`, expected `resolvers`"),
            ("bad caa identity", BASE.replace("contact =", "caa_identities = [\"letsencrypt.org\", \"https://ca.test\"]\ncontact ="), &[], "DIR/certkeeper.toml:5:38: issuer.le.caa_identities[1]: \"https://ca.test\" is not a CAA issuer domain name: write the name the CA's CAA records use, e.g. \"letsencrypt.org\""),
            ("propagation on http01", BASE.replace("http01 = {}", "http01 = {}\npropagation = { check = false }"), &[], "DIR/certkeeper.toml:9:15: issuer.le.solver[0].propagation: only applies to dns01 solvers: remove it"),
            ("admin on a public address without opt-in", format!("{BASE}[admin]\nlisten = \"0.0.0.0:8403\"\n"), &[], "DIR/certkeeper.toml:19:10: admin.listen: 0.0.0.0:8403 is not a loopback address and the admin listener has no authentication: listen on 127.0.0.1 or [::1], set token_file = \"/path/to/token\" to require `Authorization: Bearer <token>`, or set allow_remote = true and firewall the port"),
            ("admin token file missing", format!("{BASE}[admin]\nlisten = \"[::]:8403\"\ntoken_file = \"conf.d/none.token\"\n"), &[], "DIR/certkeeper.toml:20:14: admin.token_file: cannot read DIR/conf.d/none.token: No such file or directory (os error 2) (check the path and that certkeeper's user may read it)"),
            ("admin token file empty", format!("{BASE}[admin]\nlisten = \"127.0.0.1:8403\"\ntoken_file = \"conf.d/empty.token\"\n"), &[("empty.token", "\n")], "DIR/certkeeper.toml:20:14: admin.token_file: DIR/conf.d/empty.token is empty: put the bearer token in it (e.g. `openssl rand -hex 32 > DIR/conf.d/empty.token`)"),
        ];
        let mut failures = Vec::new();
        for (name, main, includes, want) in cases {
            let got = err_of(main, includes);
            if got != *want {
                failures.push(format!("case {name:?}:\n  want: {want}\n  got:  {got}"));
            }
        }
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    }

    #[test]
    fn credential_errors_name_file_line_and_key() {
        if std::env::var_os(secret::CREDENTIALS_DIRECTORY).is_some() {
            return; // run under systemd with credentials: the "not set" cases cannot happen
        }
        let unset = "CREDENTIALS_DIRECTORY is not set, so certkeeper was not started by systemd with credentials";
        let cases: &[(&str, String, &str)] = &[
            ("eab credential", BASE.replace("contact =", "eab = { kid = \"k1\", hmac_key_credential = \"eab\" }\ncontact ="), "DIR/certkeeper.toml:5:43: issuer.le.eab.hmac_key_credential: credential \"eab\": "),
            ("eab credential and file", BASE.replace("contact =", "eab = { kid = \"k1\", hmac_key_file = \"k\", hmac_key_credential = \"eab\" }\ncontact ="), "DIR/certkeeper.toml:5:7: issuer.le.eab: both hmac_key_credential and hmac_key_file are set: keep only one"),
            ("dns credential", BASE.replace("dns01 = { provider = \"exec\", command = \"/bin/true\" }", "dns01 = { provider = \"cloudflare\", api_token_credential = \"cf\" }"), "DIR/certkeeper.toml:12:59: issuer.le.solver[1].dns01.api_token_credential: credential \"cf\": "),
            ("dns credential and env", BASE.replace("dns01 = { provider = \"exec\", command = \"/bin/true\" }", "dns01 = { provider = \"cloudflare\", api_token_env = \"X\", api_token_credential = \"cf\" }"), "DIR/certkeeper.toml:12:80: issuer.le.solver[1].dns01.api_token_credential: both api_token_credential and api_token_env are set: keep only one"),
            ("admin credential", format!("{BASE}[admin]\nlisten = \"[::]:8403\"\ntoken_credential = \"admin\"\n"), "DIR/certkeeper.toml:20:20: admin.token_credential: credential \"admin\": "),
            ("admin credential and file", format!("{BASE}[admin]\nlisten = \"[::]:8403\"\ntoken_file = \"t\"\ntoken_credential = \"admin\"\n"), "DIR/certkeeper.toml:21:20: admin.token_credential: both token_file and token_credential are set: keep only one"),
        ];
        let mut failures = Vec::new();
        for (name, main, want) in cases {
            let got = err_of(main, &[]);
            let ok = if want.ends_with(": ") {
                got.starts_with(want) && got.contains(unset)
            } else {
                got == *want
            };
            if !ok {
                failures.push(format!("case {name:?}:\n  want: {want}\n  got:  {got}"));
            }
        }
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    }

    #[test]
    fn admin_off_loopback_needs_allow_remote_or_a_token() {
        let remote = load_case(
            &format!("{BASE}[admin]\nlisten = \"0.0.0.0:8403\"\nallow_remote = true\n"),
            &[],
        )
        .unwrap()
        .admin
        .unwrap();
        assert!(remote.allow_remote && remote.token.is_none());
        let token = load_case(
            &format!(
                "{BASE}[admin]\nlisten = \"[::]:8403\"\ntoken_file = \"conf.d/admin.token\"\n"
            ),
            &[("admin.token", "  tok-123\n")],
        )
        .unwrap()
        .admin
        .unwrap();
        assert_eq!(token.token.as_ref().map(|t| t.expose()), Some("tok-123"));
        assert!(!token.allow_remote);
        let local = load_case(&format!("{BASE}[admin]\nlisten = \"[::1]:8403\"\n"), &[])
            .unwrap()
            .admin
            .unwrap();
        assert!(local.token.is_none() && !local.allow_remote);
    }

    fn http01(zones: &[&str], names: &[&str]) -> SolverConfig {
        SolverConfig {
            selector: Selector {
                dns_zones: zones.iter().map(|s| s.to_string()).collect(),
                dns_names: names.iter().map(|s| s.to_string()).collect(),
            },
            kind: SolverKind::Http01 {
                self_check: true,
                self_check_target: Default::default(),
            },
        }
    }

    fn tlsalpn01(zones: &[&str], names: &[&str]) -> SolverConfig {
        SolverConfig {
            kind: SolverKind::TlsAlpn01 {
                listen: "127.0.0.1:8443".parse().unwrap(),
            },
            ..http01(zones, names)
        }
    }

    fn dns01(zones: &[&str], names: &[&str], command: &str) -> SolverConfig {
        SolverConfig {
            kind: SolverKind::Dns01 {
                provider: DnsProviderConfig::Exec(
                    crate::challenge::dns01::providers::exec::ExecConfig {
                        command: command.into(),
                        args: Vec::new(),
                        timeout: None,
                        env: Vec::new(),
                    },
                ),
                propagation: PropagationConfig::default(),
            },
            ..http01(zones, names)
        }
    }

    #[test]
    fn solver_selection_follows_cert_manager_precedence() {
        let issuer = IssuerConfig {
            name: "le".into(),
            directory: "https://ca.test/dir".into(),
            contact: vec![],
            ca_bundle: None,
            eab: None,
            account_key: KeyType::EcdsaP256,
            caa_identities: None,
            solvers: vec![
                http01(&[], &[]),                                 // 0: fallback
                dns01(&["example.com"], &[], "zone"),             // 1
                dns01(&["sub.example.com"], &[], "longer-zone"),  // 2
                http01(&[], &["exact.sub.example.com"]),          // 3
                dns01(&[], &["*.wild.example.com"], "wild-name"), // 4
                dns01(&["example.com"], &[], "zone-dup"),         // 5: loses ties to 1
                http01(&["ip.test"], &["192.0.2.7"]),             // 6
            ],
        };
        let kind_of = |id: &str, wildcard: bool| {
            if wildcard {
                IdentifierKind::Wildcard
            } else {
                IdentifierKind::of(id)
            }
        };
        let idx = |id: &str, wildcard: bool| {
            issuer.solver_for(id, kind_of(id, wildcard)).map(|s| {
                issuer
                    .solvers
                    .iter()
                    .position(|x| std::ptr::eq(x, s))
                    .unwrap()
            })
        };
        let cases: &[(&str, bool, Option<usize>)] = &[
            ("other.org", false, Some(0)),             // only the fallback matches
            ("example.com", false, Some(1)),           // zone apex
            ("www.example.com", false, Some(1)),       // below the zone
            ("WWW.Example.COM.", false, Some(1)),      // case and trailing dot ignored
            ("notexample.com", false, Some(0)),        // suffix but not a label boundary
            ("a.sub.example.com", false, Some(2)),     // longest zone wins
            ("exact.sub.example.com", false, Some(3)), // exact name beats any zone
            ("example.com", true, Some(1)),            // wildcard: dns01 only, zone match
            ("other.org", true, None), // wildcard: the http01 fallback may not answer
            ("wild.example.com", true, Some(4)), // exact wildcard name beats zone
            ("wild.example.com", false, Some(1)), // the non-wildcard name is not `*.`
            ("192.0.2.7", false, Some(6)), // IP exact name
            ("192.0.2.8", false, Some(0)), // IP: fallback http01, never dns01
        ];
        for (id, wildcard, want) in cases {
            assert_eq!(idx(id, *wildcard), *want, "{id} wildcard={wildcard}");
        }

        let dns_only = IssuerConfig {
            solvers: vec![dns01(&[], &[], "any")],
            ..issuer.clone()
        };
        assert!(
            dns_only
                .solver_for("192.0.2.1", IdentifierKind::Ip)
                .is_none(),
            "IP addresses never get dns01"
        );
        assert!(
            dns_only
                .solver_for("x.test", IdentifierKind::Wildcard)
                .is_some(),
            "a selector-less dns01 solver takes wildcards"
        );
        let alpn_only = IssuerConfig {
            solvers: vec![tlsalpn01(&[], &[])],
            ..issuer.clone()
        };
        assert!(
            alpn_only
                .solver_for("192.0.2.1", IdentifierKind::Ip)
                .is_some(),
            "tls-alpn-01 proves IP addresses (RFC 8738 §6)"
        );
        assert!(
            alpn_only
                .solver_for("x.test", IdentifierKind::Wildcard)
                .is_none(),
            "tls-alpn-01 never proves wildcards"
        );
    }

    #[test]
    fn solver_kinds_follow_the_one_rule() {
        let http = http01(&[], &[]).kind;
        let alpn = tlsalpn01(&[], &[]).kind;
        let dns = dns01(&[], &[], "x").kind;
        assert_eq!(http.challenge_kind(), ChallengeKind::Http01);
        assert_eq!(alpn.challenge_kind(), ChallengeKind::TlsAlpn01);
        assert_eq!(dns.challenge_kind(), ChallengeKind::Dns01);
        let webroot = SolverKind::Webroot {
            path: "/var/www".into(),
            self_check: true,
            self_check_target: Default::default(),
        };
        assert_eq!(webroot.challenge_kind(), ChallengeKind::Http01);
        for kind in [&http, &alpn, &dns, &webroot] {
            assert!(
                SOLVER_KEYS.contains(&(kind.key(), kind.challenge_kind())),
                "{}",
                kind.key()
            );
        }
        assert_eq!(
            SolverKind::keys_that_can_prove(IdentifierKind::Ip),
            ["http01", "webroot", "tlsalpn01"]
        );
        assert_eq!(
            SolverKind::keys_that_can_prove(IdentifierKind::Wildcard),
            ["dns01"]
        );
        assert_eq!(
            SolverKind::keys_that_can_prove(IdentifierKind::Dns),
            ["http01", "webroot", "tlsalpn01", "dns01"]
        );
    }

    #[test]
    fn includes_are_sorted_merged_and_listed() {
        let main = format!("include = [\"conf.d/*.toml\", \"extra.toml\"]\n{BASE}");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("conf.d")).unwrap();
        std::fs::write(d.join("conf.d/20-b.toml"), "[certificate.b]\nissuer = \"le\"\ndomains = [\"b.example.com\"]\noutput = { dir = \"/tls/b\" }\n").unwrap();
        std::fs::write(
            d.join("conf.d/10-a.toml"),
            "[issuer.other]\ndirectory = \"letsencrypt-staging\"\n[[issuer.other.solver]]\nwebroot = { path = \"www\" }\n\n[certificate.a]\nissuer = [\"other\", \"le\"]\ndomains = [\"a.example.com\"]\noutput = { dir = \"/tls/a\" }\n",
        )
        .unwrap();
        std::fs::write(d.join("conf.d/notes.txt"), "not toml").unwrap();
        std::fs::write(d.join("extra.toml"), "[certificate.c]\nissuer = \"le\"\ndomains = [\"c.example.com\"]\noutput = { dir = \"/tls/c\" }\n").unwrap();
        let path = d.join("certkeeper.toml");
        std::fs::write(&path, main).unwrap();

        let cfg = load(&path).unwrap();
        assert_eq!(
            cfg.files,
            vec![
                path.clone(),
                d.join("conf.d/10-a.toml"),
                d.join("conf.d/20-b.toml"),
                d.join("extra.toml")
            ]
        );
        assert_eq!(
            cfg.certificates.keys().collect::<Vec<_>>(),
            ["a", "b", "c", "www"]
        );
        assert_eq!(cfg.certificates["a"].issuers, ["other", "le"]);
        let other = &cfg.issuers["other"];
        assert_eq!(
            other.directory,
            "https://acme-staging-v02.api.letsencrypt.org/directory"
        );
        // Relative paths resolve against the directory of the file that names them.
        match &other.solvers[0].kind {
            SolverKind::Webroot { path, .. } => assert_eq!(path, &d.join("conf.d/www")),
            k => panic!("{k:?}"),
        }
        // `www` names no issuer while two are defined.
        let err = Config::from_str(
            &format!("include = [\"conf.d/*.toml\"]\n{BASE}").replace("issuer = \"le\"\n", ""),
            &path,
        )
        .unwrap_err()
        .to_string()
        .replace(&d.display().to_string(), "DIR");
        assert_eq!(
            err,
            "DIR/certkeeper.toml:15:14: certificate.www: no issuer: set issuer = \"NAME\" or a fallback list [\"A\", \"B\"] (defined issuers: le, other)"
        );
    }

    #[test]
    fn full_config_parses_every_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("eab.key"), "c2VjcmV0LWhtYWM\n").unwrap();
        std::fs::write(dir.path().join("admin.token"), "s3cret-token\n").unwrap();
        let text = r#"
state_dir = "/srv/ck"
[http01]
listen = ["127.0.0.1:8402", "[::1]:8402"]
[admin]
listen = "127.0.0.1:8403"
token_file = "admin.token"
[daemon]
max_concurrent = 3
hook_timeout = "1m 30s"
retry_first = "5s"
retry_max = "10m"
[dns01]
resolvers = ["127.0.0.53", "[::1]:5353"]

[issuer.le]
directory = "letsencrypt"
caa_identities = ["LetsEncrypt.org."]
contact = ["mailto:a@example.com", "mailto:b@example.com"]
ca_bundle = "pebble-ca.pem"
eab = { kid = "kid-1", hmac_key_file = "eab.key" }
account_key = "rsa-3072"

[[issuer.le.solver]]
http01 = { self_check = false }

[[issuer.le.solver]]
selector = { dns_zones = ["Example.COM."], dns_names = ["x.example.com"] }
dns01 = { provider = "exec", command = "/usr/local/bin/dns-hook" }
propagation = { check = false, timeout = "5m", interval = "P0DT10S", nameservers = ["127.0.0.1:5353"] }

[certificate.www]
issuer = ["le"]
domains = ["Example.com.", "*.example.com", "192.0.2.1"]
key = "ecdsa-p384"
renew_before = "20d 12h"
profile = "shortlived"
preferred_chain = "ISRG Root X1"
key_reuse = true
output = { dir = "/etc/nginx/tls/www", owner = "root", group = "www-data", key_mode = "0640", cert_mode = 0o444 }
reload = ["nginx -t && systemctl reload nginx", "true"]
"#;
        let cfg = Config::from_str(text, &dir.path().join("main.toml")).unwrap();
        assert_eq!(cfg.state_dir, PathBuf::from("/srv/ck"));
        assert_eq!(cfg.http01.listen.len(), 2);
        assert_eq!(
            cfg.admin,
            Some(AdminConfig {
                listen: "127.0.0.1:8403".parse().unwrap(),
                allow_remote: false,
                token: Some(secret::Secret::new("s3cret-token")),
            })
        );
        assert_eq!(
            cfg.daemon,
            DaemonConfig {
                max_concurrent: 3,
                hook_timeout: Duration::from_secs(90),
                backoff: crate::scheduler::Backoff {
                    first: jiff::SignedDuration::from_secs(5),
                    max: jiff::SignedDuration::from_mins(10),
                }
            }
        );
        assert_eq!(
            cfg.dns01.resolvers,
            vec![
                "127.0.0.53:53".parse::<SocketAddr>().unwrap(),
                "[::1]:5353".parse().unwrap()
            ]
        );
        let le = &cfg.issuers["le"];
        assert_eq!(le.caa_identities, Some(vec!["letsencrypt.org".to_string()]));
        assert_eq!(
            le.directory,
            "https://acme-v02.api.letsencrypt.org/directory"
        );
        assert_eq!(le.contact.len(), 2);
        assert_eq!(
            le.ca_bundle.as_deref(),
            Some(dir.path().join("pebble-ca.pem").as_path())
        );
        let eab = le.eab.as_ref().unwrap();
        assert_eq!(
            (eab.kid.as_str(), eab.hmac_key.expose()),
            ("kid-1", "c2VjcmV0LWhtYWM")
        );
        assert!(
            !format!("{cfg:?}").contains("c2VjcmV0LWhtYWM"),
            "secret leaked through Debug"
        );
        assert_eq!(le.account_key, KeyType::Rsa3072);
        assert!(matches!(
            le.solvers[0].kind,
            SolverKind::Http01 {
                self_check: false,
                ..
            }
        ));
        assert_eq!(le.solvers[1].selector.dns_zones, ["example.com"]);
        match &le.solvers[1].kind {
            SolverKind::Dns01 { propagation, .. } => assert_eq!(
                *propagation,
                PropagationConfig {
                    check: false,
                    timeout: Duration::from_secs(300),
                    interval: Duration::from_secs(10),
                    nameservers: vec!["127.0.0.1:5353".parse().unwrap()]
                }
            ),
            k => panic!("{k:?}"),
        }
        let www = &cfg.certificates["www"];
        assert_eq!(www.domains, ["example.com", "*.example.com", "192.0.2.1"]);
        assert_eq!(www.key, KeyType::EcdsaP384);
        assert_eq!(
            www.renew_before,
            Some(Duration::from_secs(20 * 86400 + 12 * 3600))
        );
        assert_eq!(www.profile.as_deref(), Some("shortlived"));
        assert_eq!(www.preferred_chain.as_deref(), Some("ISRG Root X1"));
        assert!(www.key_reuse);
        assert_eq!(
            www.output,
            OutputConfig {
                dir: "/etc/nginx/tls/www".into(),
                owner: Some("root".into()),
                group: Some("www-data".into()),
                key_mode: 0o640,
                cert_mode: 0o444,
                allow_shared_dir: false,
            }
        );
        assert_eq!(www.reload.len(), 2);
    }

    #[test]
    fn all_problems_are_reported_at_once() {
        let text = BASE
            .replace("\"/var/lib/certkeeper\"", "\"rel\"")
            .replace("/etc/nginx/tls/www", "rel");
        let err =
            Config::from_str(&text, Path::new("/etc/certkeeper/certkeeper.toml")).unwrap_err();
        assert_eq!(err.diagnostics().len(), 2);
        assert_eq!(
            err.to_string(),
            "/etc/certkeeper/certkeeper.toml:1:13: state_dir: must be an absolute path, got \"rel\"\n\
             /etc/certkeeper/certkeeper.toml:17:18: certificate.www.output.dir: must be an absolute path, got \"rel\""
        );
    }

    #[test]
    fn load_one_validates_only_the_named_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("certkeeper.toml");
        let broken = "\n[certificate.bad]\nissuer = \"nope\"\ndomains = [\"b.example.com\"]\noutput = { dir = \"rel\" }\n";
        std::fs::write(&path, format!("{BASE}{broken}")).unwrap();
        let cfg = load_one(&path, "www").unwrap();
        assert_eq!(cfg.certificates.keys().collect::<Vec<_>>(), ["www"]);
        assert_eq!(cfg.issuers.keys().collect::<Vec<_>>(), ["le"]);
        // The whole config still fails with every problem, and so does a name it does not define.
        let all = load(&path).unwrap_err();
        assert_eq!(all.diagnostics().len(), 2, "{all}");
        assert_eq!(
            load_one(&path, "other").unwrap_err().to_string(),
            all.to_string()
        );
        // Problems outside the certificates are reported as by `load`.
        let text = BASE.replace("\"/var/lib/certkeeper\"", "\"rel\"");
        std::fs::write(&path, text).unwrap();
        let err = load_one(&path, "www").unwrap_err().to_string();
        assert!(
            err.ends_with(":1:13: state_dir: must be an absolute path, got \"rel\""),
            "{err}"
        );
    }

    #[test]
    fn state_dir_of_reads_the_top_level_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("certkeeper.toml");
        let mut text = BASE.as_bytes().to_vec();
        // Not even UTF-8 after the first header: never read.
        text.extend_from_slice(b"\n[certificate.x]\nreload = [\"\xff\"]\n");
        std::fs::write(&path, &text).unwrap();
        assert_eq!(
            state_dir_of(&path),
            Some(PathBuf::from("/var/lib/certkeeper"))
        );
        std::fs::write(&path, "# no state_dir\n[issuer.le]\nstate_dir = \"/x\"\n").unwrap();
        assert_eq!(state_dir_of(&path), Some(PathBuf::from(DEFAULT_STATE_DIR)));
        std::fs::write(&path, "state_dir = \"rel\"\n").unwrap();
        assert_eq!(state_dir_of(&path), None);
        std::fs::write(&path, "state_dir = \"/s\"\nx = \"\"\"\n[a]\n\"\"\"\n").unwrap();
        assert_eq!(state_dir_of(&path), None);
        assert_eq!(state_dir_of(&dir.path().join("missing.toml")), None);
    }

    #[test]
    fn unreadable_main_file() {
        let err = load(Path::new("/nonexistent/certkeeper.toml")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/nonexistent/certkeeper.toml: cannot read config file: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn default_listen_constant_matches_default() {
        let cfg = Config::from_str(BASE, Path::new("/etc/certkeeper/certkeeper.toml")).unwrap();
        assert_eq!(
            cfg.http01.listen,
            vec![DEFAULT_HTTP01_LISTEN.parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn relative_paths_resolve_to_absolute_ones() {
        let text = BASE.replace("http01 = {}", "webroot = { path = \"acme-www\" }");
        let cfg = Config::from_str(&text, Path::new("certkeeper.toml")).unwrap();
        let want = std::env::current_dir().unwrap().join("acme-www");
        match &cfg.issuers["le"].solvers[0].kind {
            SolverKind::Webroot { path, .. } => assert_eq!(path, &want),
            k => panic!("{k:?}"),
        }
    }

    #[test]
    fn relative_provider_files_resolve_against_the_file_that_names_them() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("conf.d")).unwrap();
        let main = format!("include = [\"conf.d/*.toml\"]\n{BASE}").replace(
            "dns01 = { provider = \"exec\", command = \"/bin/true\" }",
            "dns01 = { provider = \"rfc2136\", server = \"127.0.0.1\", tsig_key = \"k.\", tsig_secret_file = \"keys/tsig.key\" }",
        );
        std::fs::write(d.join("certkeeper.toml"), main).unwrap();
        std::fs::write(
            d.join("conf.d/dns.toml"),
            "[issuer.other]\ndirectory = \"letsencrypt\"\n\
             [[issuer.other.solver]]\ndns01 = { provider = \"cloudflare\", api_token_file = \"cf.token\" }\n\
             [[issuer.other.solver]]\ndns01 = { provider = \"exec\", command = \"hooks/dns.sh\" }\n\
             [[issuer.other.solver]]\ndns01 = { provider = \"exec\", command = \"dns-hook\" }\n",
        )
        .unwrap();
        // None of the files exist: a secret file may appear after the config is loaded.
        let cfg = load(&d.join("certkeeper.toml")).unwrap_or_else(|e| panic!("{e}"));
        let provider = |issuer: &str, i: usize| match &cfg.issuers[issuer].solvers[i].kind {
            SolverKind::Dns01 { provider, .. } => provider.clone(),
            k => panic!("{k:?}"),
        };
        match provider("le", 1) {
            DnsProviderConfig::Rfc2136(c) => {
                assert_eq!(c.tsig_secret_file, Some(d.join("keys/tsig.key")))
            }
            p => panic!("{p:?}"),
        }
        match provider("other", 0) {
            DnsProviderConfig::Cloudflare(c) => {
                assert_eq!(c.api_token_file, Some(d.join("conf.d/cf.token")))
            }
            p => panic!("{p:?}"),
        }
        match provider("other", 1) {
            DnsProviderConfig::Exec(c) => assert_eq!(c.command, d.join("conf.d/hooks/dns.sh")),
            p => panic!("{p:?}"),
        }
        match provider("other", 2) {
            DnsProviderConfig::Exec(c) => {
                assert_eq!(
                    c.command,
                    PathBuf::from("dns-hook"),
                    "a bare name is looked up in PATH"
                )
            }
            p => panic!("{p:?}"),
        }
        // The relative key file is the one read at build time.
        std::fs::create_dir(d.join("keys")).unwrap();
        std::fs::write(d.join("keys/tsig.key"), "not base64 !\n").unwrap();
        let e = provider("le", 1).build().err().unwrap().to_string();
        assert!(e.contains("tsig_secret is not valid base64"), "{e}");
        std::fs::write(d.join("conf.d/cf.token"), "token\n").unwrap();
        assert!(provider("other", 0).build().is_ok());
    }

    #[test]
    fn webroot_self_check_forms() {
        let kind = |solver: &str| {
            let text = BASE.replace("http01 = {}", solver);
            let cfg =
                Config::from_str(&text, Path::new("/etc/certkeeper/certkeeper.toml")).unwrap();
            match &cfg.issuers["le"].solvers[0].kind {
                SolverKind::Webroot {
                    self_check,
                    self_check_target,
                    ..
                } => (*self_check, self_check_target.clone()),
                k => panic!("{k:?}"),
            }
        };
        let (on, target) = kind("webroot = { path = \"/var/www\" }");
        assert!(on, "the self-check is on by default, as for http01");
        assert_eq!(target, crate::challenge::http01::SelfCheckTarget::default());
        assert!(!kind("webroot = { path = \"/var/www\", self_check = false }").0);
        let (on, target) = kind(
            "webroot = { path = \"/var/www\", self_check = { port = 8080, resolve = [\"127.0.0.1\"] } }",
        );
        assert!(on);
        assert_eq!(target.port, 8080);
        assert_eq!(
            target.resolve,
            vec!["127.0.0.1".parse::<std::net::IpAddr>().unwrap()]
        );
        let text = BASE.replace(
            "http01 = {}",
            "webroot = { path = \"/var/www\", self_check = { port = 0 } }",
        );
        let err = Config::from_str(&text, Path::new("/etc/certkeeper/certkeeper.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("issuer.le.solver[0].webroot.self_check.port: 0 is not a TCP port"),
            "{err}"
        );
    }

    #[test]
    fn tlsalpn01_proves_ip_addresses_but_not_wildcards() {
        let text = BASE
            .replace("http01 = {}", "tlsalpn01 = {}")
            .replace("\"www.example.com\"]", "\"192.0.2.1\"]");
        let cfg = Config::from_str(&text, Path::new("/etc/certkeeper/certkeeper.toml")).unwrap();
        let chosen = cfg.issuers["le"].solver_for("192.0.2.1", IdentifierKind::Ip);
        assert!(
            matches!(chosen.map(|s| &s.kind), Some(SolverKind::TlsAlpn01 { .. })),
            "{chosen:?}"
        );
        let text = BASE
            .replace("http01 = {}", "tlsalpn01 = {}")
            .replace("\"www.example.com\"]", "\"*.other.org\"]");
        let err = Config::from_str(&text, Path::new("/etc/certkeeper/certkeeper.toml"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "/etc/certkeeper/certkeeper.toml:16:27: certificate.www.domains[1]: *.other.org is a wildcard name and needs a dns01 solver (http01, webroot, tlsalpn01 cannot prove wildcards): add [[issuer.le.solver]] with dns01 = {...} whose selector covers other.org"
        );
    }

    #[test]
    fn dns_persist01_solver_proves_wildcards_and_checks_its_issuer_domain() {
        let text = BASE
            .replace(
                "dns01 = { provider = \"exec\", command = \"/bin/true\" }",
                "dns_persist01 = { issuer_domain = \"LetsEncrypt.org.\" }\npropagation = { nameservers = [\"127.0.0.1:5353\"] }",
            )
            .replace("\"www.example.com\"]", "\"*.example.com\"]");
        let cfg = Config::from_str(&text, Path::new("certkeeper.toml")).unwrap();
        let chosen = cfg.issuers["le"].solver_for("example.com", IdentifierKind::Wildcard);
        match chosen.map(|s| &s.kind) {
            Some(SolverKind::DnsPersist01 {
                issuer_domain,
                propagation,
            }) => {
                assert_eq!(issuer_domain, "letsencrypt.org");
                assert_eq!(propagation.nameservers.len(), 1);
            }
            k => panic!("{k:?}"),
        }
        assert_eq!(
            chosen.unwrap().kind.challenge_kind(),
            ChallengeKind::DnsPersist01
        );
        let text = BASE.replace(
            "dns01 = { provider = \"exec\", command = \"/bin/true\" }",
            "dns_persist01 = { issuer_domain = \"\" }",
        );
        let err = Config::from_str(&text, Path::new("certkeeper.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("issuer.le.solver[1].dns_persist01.issuer_domain: is not a domain name"),
            "{err}"
        );
    }

    #[test]
    fn tlsalpn01_solver_listen_address() {
        let text = BASE.replace("http01 = {}", "tlsalpn01 = { listen = \"127.0.0.1:8443\" }");
        let cfg = Config::from_str(&text, Path::new("certkeeper.toml")).unwrap();
        match &cfg.issuers["le"].solvers[0].kind {
            SolverKind::TlsAlpn01 { listen } => assert_eq!(listen.to_string(), "127.0.0.1:8443"),
            k => panic!("{k:?}"),
        }
        let text = BASE.replace("http01 = {}", "tlsalpn01 = {}");
        let cfg = Config::from_str(&text, Path::new("certkeeper.toml")).unwrap();
        match &cfg.issuers["le"].solvers[0].kind {
            SolverKind::TlsAlpn01 { listen } => assert_eq!(listen.to_string(), "0.0.0.0:443"),
            k => panic!("{k:?}"),
        }
        let text = BASE.replace("http01 = {}", "tlsalpn01 = { listen = \"443\" }");
        let err = Config::from_str(&text, Path::new("certkeeper.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tlsalpn01.listen") && err.contains("0.0.0.0:443"),
            "{err}"
        );
    }
}
