//! From parsed files to a validated [`Config`]: includes, merging, and every check.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::raw::{
    Mode, RawCertificate, RawInclude, RawIssuer, RawMain, RawPropagation, RawProvider,
    RawSelfCheck, RawSolver, SStr,
};
use super::source::{SourceFile, key_seg};
use super::{
    AdminConfig, CertificateConfig, Config, ConfigError, DaemonConfig, Diagnostic, Dns01Config,
    EabConfig, Http01Config, IssuerConfig, NotifyConfig, OutputConfig, PropagationConfig, Selector,
    SolverConfig, SolverKind, VerifyDeploy, WebhookConfig, parse_duration,
    secret::{SecretError, credential_path, credentials_to_files, source_with_credential},
};
use crate::acme::KeyType;
use crate::challenge::IdentifierKind;
use crate::challenge::dns01::providers::{DnsProviderConfig, SettingError};

/// Directory shorthands.
const SHORTHANDS: [(&str, &str); 3] = [
    (
        "letsencrypt",
        "https://acme-v02.api.letsencrypt.org/directory",
    ),
    (
        "letsencrypt-staging",
        "https://acme-staging-v02.api.letsencrypt.org/directory",
    ),
    ("zerossl", "https://acme.zerossl.com/v2/DV90"),
];

/// The files read so far and the problems found.
pub(super) struct Ctx {
    files: Vec<SourceFile>,
    diags: Vec<Diagnostic>,
}

impl Ctx {
    pub(super) fn err(
        &mut self,
        file: usize,
        span: &Range<usize>,
        key: impl Into<String>,
        msg: impl Into<String>,
    ) {
        let d = self.files[file].diag(span, key, msg);
        self.diags.push(d);
    }

    /// Resolve a path written in `file` against that file's directory.
    pub(super) fn resolve(&self, file: usize, p: impl AsRef<Path>) -> PathBuf {
        let p = p.as_ref();
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            // A main file given as a relative path still yields absolute paths for the daemon.
            let joined = self.files[file].dir().join(p);
            std::path::absolute(&joined).unwrap_or(joined)
        }
    }
}

/// Parse, merge and validate; with `only` (a defined certificate's name), that certificate alone
/// is validated and kept (see [`super::load_one`]).
pub(crate) fn build(text: &str, path: &Path, only: Option<&str>) -> Result<Config, ConfigError> {
    build_with(text, path, only, &mut |t| t)
}

/// [`build`], with each included file's text passed through `reduce` before it is parsed (see
/// [`super::slice`]).
pub(super) fn build_with(
    text: &str,
    path: &Path,
    only: Option<&str>,
    reduce: &mut dyn FnMut(String) -> String,
) -> Result<Config, ConfigError> {
    let mut cx = Ctx {
        files: vec![SourceFile {
            path: path.to_path_buf(),
            text: text.to_string(),
        }],
        diags: Vec::new(),
    };
    let main: RawMain = match toml::from_str(text) {
        Ok(m) => m,
        Err(e) => return Err(ConfigError::Invalid(vec![cx.files[0].toml_error(&e)])),
    };

    // Includes.
    let mut includes: Vec<(usize, RawInclude)> = Vec::new();
    let mut include_dirs: Vec<PathBuf> = Vec::new();
    for (i, pat) in main.include.iter().enumerate() {
        let key = format!("include[{i}]");
        let full = cx.resolve(0, pat.get_ref());
        if let Some(dir) = full.parent().map(Path::to_path_buf)
            && !include_dirs.contains(&dir)
        {
            include_dirs.push(dir);
        }
        let paths = match super::glob::expand(&full) {
            Ok(p) => p,
            Err(msg) => {
                cx.err(0, &pat.span(), key, msg);
                continue;
            }
        };
        for p in paths {
            if cx.files.iter().any(|f| f.path == p) {
                continue;
            }
            let text = match std::fs::read_to_string(&p) {
                Ok(t) => t,
                Err(e) => {
                    cx.err(
                        0,
                        &pat.span(),
                        key.clone(),
                        format!("cannot read {}: {e}", p.display()),
                    );
                    continue;
                }
            };
            cx.files.push(SourceFile {
                path: p,
                text: reduce(text),
            });
            let idx = cx.files.len() - 1;
            match toml::from_str::<RawInclude>(&cx.files[idx].text) {
                Ok(inc) => includes.push((idx, inc)),
                Err(e) => {
                    let mut d = cx.files[idx].toml_error(&e);
                    if d.message.starts_with("unknown field") {
                        d.message.push_str(
                            " (included files may only define issuer.* and certificate.*)",
                        );
                    }
                    cx.diags.push(d);
                }
            }
        }
    }

    // Merge issuer.* and certificate.* across files; a name defined twice is an error naming both.
    let mut raw_issuers: BTreeMap<String, (usize, SStr, RawIssuer)> = BTreeMap::new();
    let mut raw_certs: BTreeMap<String, (usize, SStr, RawCertificate)> = BTreeMap::new();
    let main_parts = (0usize, main.issuer, main.certificate);
    let inc_parts = includes
        .into_iter()
        .map(|(f, inc)| (f, inc.issuer, inc.certificate));
    for (file, issuers, certs) in std::iter::once(main_parts).chain(inc_parts) {
        for (name, raw) in issuers {
            merge(&mut cx, &mut raw_issuers, "issuer", file, name, raw);
        }
        for (name, raw) in certs {
            merge(&mut cx, &mut raw_certs, "certificate", file, name, raw);
        }
    }

    // Top level.
    let state_dir = match &main.state_dir {
        None => PathBuf::from(super::DEFAULT_STATE_DIR),
        Some(s) => {
            if !Path::new(s.get_ref()).is_absolute() {
                cx.err(
                    0,
                    &s.span(),
                    "state_dir",
                    format!("must be an absolute path, got \"{}\"", s.get_ref()),
                );
            }
            PathBuf::from(s.get_ref())
        }
    };
    let storage = main
        .storage
        .as_ref()
        .map(|s| super::storage::storage(&mut cx, s))
        .unwrap_or_default();
    let http01 = match &main.http01 {
        None => Http01Config {
            listen: vec![default_http01_listen()],
        },
        Some(h) => {
            if h.listen.get_ref().is_empty() {
                cx.err(
                    0,
                    &h.listen.span(),
                    "http01.listen",
                    "needs at least one address, e.g. [\"127.0.0.1:8402\"]",
                );
            }
            let mut listen = Vec::new();
            for (i, a) in h.listen.get_ref().iter().enumerate() {
                if let Some(addr) = socket_addr(&mut cx, 0, a, &format!("http01.listen[{i}]")) {
                    listen.push(addr);
                }
            }
            Http01Config { listen }
        }
    };
    let admin = main.admin.as_ref().and_then(|a| admin(&mut cx, a));
    let mut daemon = DaemonConfig {
        max_concurrent: super::DEFAULT_MAX_CONCURRENT,
        hook_timeout: super::DEFAULT_HOOK_TIMEOUT,
        backoff: crate::scheduler::Backoff::default(),
    };
    if let Some(d) = &main.daemon {
        if let Some(m) = &d.max_concurrent {
            match usize::try_from(*m.get_ref()) {
                Ok(n) if n >= 1 => daemon.max_concurrent = n,
                _ => cx.err(
                    0,
                    &m.span(),
                    "daemon.max_concurrent",
                    format!("must be at least 1, got {}", m.get_ref()),
                ),
            }
        }
        if let Some(t) = duration(&mut cx, 0, d.hook_timeout.as_ref(), "daemon.hook_timeout") {
            daemon.hook_timeout = t;
        }
        let signed = |d: std::time::Duration| {
            jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX)
        };
        if let Some(t) = duration(&mut cx, 0, d.retry_first.as_ref(), "daemon.retry_first") {
            daemon.backoff.first = signed(t);
        }
        if let Some(t) = duration(&mut cx, 0, d.retry_max.as_ref(), "daemon.retry_max") {
            daemon.backoff.max = signed(t);
        }
        if daemon.backoff.first > daemon.backoff.max
            && let Some(first) = &d.retry_first
        {
            cx.err(
                0,
                &first.span(),
                "daemon.retry_first",
                "is longer than daemon.retry_max: the first retry cannot wait longer than the longest",
            );
        }
    }

    let dns01 = main
        .dns01
        .as_ref()
        .map(|d| dns01_global(&mut cx, d))
        .unwrap_or_default();
    let notify = main.notify.as_ref().and_then(|n| notify(&mut cx, n));

    // Issuers.
    let mut issuers = BTreeMap::new();
    for (name, (file, key, raw)) in &raw_issuers {
        if let Some(issuer) = issuer(&mut cx, *file, name, key, raw) {
            issuers.insert(name.clone(), issuer);
        }
    }

    // Certificates.
    let defined: Vec<&str> = raw_issuers.keys().map(String::as_str).collect();
    let mut certificates = BTreeMap::new();
    // The place of the first writer of a dir, as (name, file, span): turned into file:line only for
    // a clash (finding a line scans the file, which for every one of 10,000 certificates is slow).
    let mut dirs: HashMap<PathBuf, (String, usize, std::ops::Range<usize>)> = HashMap::new();
    // In file order, so a clash is reported at the later definition.
    let only = only.filter(|n| raw_certs.contains_key(*n));
    let mut ordered: Vec<_> = raw_certs
        .iter()
        .filter(|(name, _)| only.is_none_or(|n| n == name.as_str()))
        .collect();
    ordered.sort_by_key(|(_, (file, key, _))| (*file, key.span().start));
    for (name, (file, key, raw)) in ordered {
        let Some(cert) = certificate(&mut cx, *file, name, key, raw, &defined, &issuers) else {
            continue;
        };
        let here = raw.output.get_ref().dir.span();
        if let Some((other, other_file, span)) = dirs.get(&cert.output.dir) {
            let place = cx.files[*other_file].place(span);
            let msg = format!(
                "certificate.{} ({place}) already writes to {}: give each certificate its own output dir",
                key_seg(other),
                cert.output.dir.display()
            );
            cx.err(
                *file,
                &raw.output.get_ref().dir.span(),
                format!("certificate.{}.output.dir", key_seg(name)),
                msg,
            );
        } else {
            dirs.insert(cert.output.dir.clone(), (name.clone(), *file, here));
        }
        certificates.insert(name.clone(), cert);
    }

    if !cx.diags.is_empty() {
        return Err(ConfigError::Invalid(cx.diags));
    }
    Ok(Config {
        source: path.to_path_buf(),
        files: cx.files.into_iter().map(|f| f.path).collect(),
        include_dirs,
        state_dir,
        storage,
        http01,
        admin,
        daemon,
        dns01,
        notify,
        issuers,
        // Built again from sorted input: full B-tree nodes, half the memory of the inserts above
        // (10,000 certificates of a few hundred bytes each stay in memory for the daemon's life).
        certificates: certificates.into_iter().collect(),
    })
}

/// `[dns01]`: the recursive resolvers, each an IP address with an optional port (53).
fn dns01_global(cx: &mut Ctx, raw: &super::raw::RawDns01) -> Dns01Config {
    let mut out = Dns01Config::default();
    let Some(list) = &raw.resolvers else {
        return out;
    };
    if list.get_ref().is_empty() {
        cx.err(
            0,
            &list.span(),
            "dns01.resolvers",
            "is empty: list at least one recursive resolver, e.g. [\"127.0.0.53:53\"], or remove it to use /etc/resolv.conf",
        );
    }
    for (i, r) in list.get_ref().iter().enumerate() {
        match nameserver_addr(r.get_ref()) {
            Some(addr) => out.resolvers.push(addr),
            None => cx.err(
                0,
                &r.span(),
                format!("dns01.resolvers[{i}]"),
                format!(
                    "\"{}\" is not a resolver address: write an IP address with an optional port, e.g. \"127.0.0.53\" or \"[::1]:53\"",
                    r.get_ref()
                ),
            ),
        }
    }
    out
}

/// "192.0.2.53", "127.0.0.1:5353", "::1" or "[::1]:53" as a socket address (port 53 by default).
fn nameserver_addr(v: &str) -> Option<SocketAddr> {
    v.parse::<SocketAddr>()
        .ok()
        .or_else(|| v.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)))
}

fn default_http01_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8402))
}

fn merge<T>(
    cx: &mut Ctx,
    map: &mut BTreeMap<String, (usize, SStr, T)>,
    table: &str,
    file: usize,
    name: SStr,
    raw: T,
) {
    let key = format!("{table}.{}", key_seg(name.get_ref()));
    if let Some((first_file, first_name, _)) = map.get(name.get_ref()) {
        let first = cx.files[*first_file].place(&first_name.span());
        cx.err(
            file,
            &name.span(),
            key,
            format!("defined twice: here and at {first}; rename or remove one"),
        );
        return;
    }
    map.insert(name.get_ref().clone(), (file, name, raw));
}

/// `[admin]`: loopback only, unless the operator opts in with `allow_remote = true` or protects it
/// with a bearer token (`token_file`, read now: a missing or empty file is an error here, not a
/// listener that lets everyone in).
fn admin(cx: &mut Ctx, a: &super::raw::RawAdmin) -> Option<AdminConfig> {
    let listen = socket_addr(cx, 0, &a.listen, "admin.listen");
    // `token_credential`: the file of a systemd credential instead of `token_file`.
    let given = match (&a.token_file, &a.token_credential) {
        (Some(_), Some(c)) => {
            let msg = "both token_file and token_credential are set: keep only one";
            cx.err(0, &c.span(), "admin.token_credential", msg);
            return None;
        }
        (Some(f), None) => Some((f, cx.resolve(0, f.get_ref()), "admin.token_file")),
        (None, Some(c)) => match credential_path(c.get_ref()) {
            Ok(path) => Some((c, path, "admin.token_credential")),
            Err(e) => {
                cx.err(0, &c.span(), "admin.token_credential", e.to_string());
                return None;
            }
        },
        (None, None) => None,
    };
    let token = match given {
        None => None,
        Some((f, path, key)) => match std::fs::read_to_string(&path) {
            Ok(t) if !t.trim().is_empty() => Some(super::secret::Secret::new(t.trim())),
            Ok(_) => {
                let msg = format!(
                    "{} is empty: put the bearer token in it (e.g. `openssl rand -hex 32 > {}`)",
                    path.display(),
                    path.display()
                );
                cx.err(0, &f.span(), key, msg);
                return None;
            }
            Err(e) => {
                let msg = format!(
                    "cannot read {}: {e} (check the path and that certkeeper's user may read it)",
                    path.display()
                );
                cx.err(0, &f.span(), key, msg);
                return None;
            }
        },
    };
    let listen = listen?;
    let allow_remote = a.allow_remote.unwrap_or(false);
    if !listen.ip().is_loopback() && !allow_remote && token.is_none() {
        let msg = format!(
            "{listen} is not a loopback address and the admin listener has no authentication: listen on \
             127.0.0.1 or [::1], set token_file = \"/path/to/token\" to require `Authorization: Bearer <token>`, \
             or set allow_remote = true and firewall the port"
        );
        cx.err(0, &a.listen.span(), "admin.listen", msg);
        return None;
    }
    Some(AdminConfig {
        listen,
        allow_remote,
        token,
    })
}

/// `[notify]`: a command and/or a webhook (one of them at least), `warn_before`, `timeout`.
fn notify(cx: &mut Ctx, n: &Spanned<super::raw::RawNotify>) -> Option<NotifyConfig> {
    let raw = n.get_ref();
    let before = cx.diags.len();
    if raw.command.is_none() && raw.webhook.is_none() {
        cx.err(
            0,
            &n.span(),
            "notify",
            "names no destination: set command = \"/usr/local/bin/alert\" and/or webhook = { url = \"https://...\" }",
        );
    }
    if let Some(c) = &raw.command
        && c.get_ref().trim().is_empty()
    {
        cx.err(
            0,
            &c.span(),
            "notify.command",
            "is an empty command: remove it or name a program",
        );
    }
    for (i, name) in raw.command_env.iter().enumerate() {
        if let Err(message) = crate::child::check_env_name(name.get_ref()) {
            cx.err(0, &name.span(), format!("notify.command_env[{i}]"), message);
        }
    }
    let webhook = raw.webhook.as_ref().and_then(|w| webhook(cx, w.get_ref()));
    let warn_before = duration(cx, 0, raw.warn_before.as_ref(), "notify.warn_before")
        .unwrap_or(super::DEFAULT_WARN_BEFORE);
    let timeout = duration(cx, 0, raw.timeout.as_ref(), "notify.timeout")
        .unwrap_or(super::DEFAULT_NOTIFY_TIMEOUT);
    if cx.diags.len() > before {
        return None;
    }
    Some(NotifyConfig {
        command: raw.command.as_ref().map(|c| c.get_ref().clone()),
        command_env: raw
            .command_env
            .iter()
            .map(|n| n.get_ref().clone())
            .collect(),
        webhook,
        warn_before,
        timeout,
    })
}

/// `webhook = { url, header_file }`: https (plain http only to a loopback address, where nothing
/// crosses a network); the header file is read now, one `Name: value` per line.
fn webhook(cx: &mut Ctx, w: &super::raw::RawWebhook) -> Option<WebhookConfig> {
    let url = w.url.get_ref();
    let parsed = match reqwest::Url::parse(url) {
        Ok(u) => u,
        Err(e) => {
            let msg = format!(
                "\"{url}\" is not a URL ({e}): write e.g. \"https://alerts.example.com/hook\""
            );
            cx.err(0, &w.url.span(), "notify.webhook.url", msg);
            return None;
        }
    };
    let host = parsed.host_str().unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|a| a.is_loopback());
    let scheme_ok = parsed.scheme() == "https" || (parsed.scheme() == "http" && loopback);
    if !scheme_ok {
        let msg = format!(
            "\"{url}\" must be an https:// URL (plain http:// only to 127.0.0.1, [::1] or localhost): the alert and its headers would cross the network in clear"
        );
        cx.err(0, &w.url.span(), "notify.webhook.url", msg);
        return None;
    }
    let mut headers = Vec::new();
    if let Some(f) = &w.header_file {
        let path = cx.resolve(0, f.get_ref());
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                let msg = format!(
                    "cannot read {}: {e} (check the path and that certkeeper's user may read it)",
                    path.display()
                );
                cx.err(0, &f.span(), "notify.webhook.header_file", msg);
                return None;
            }
        };
        super::secret::warn_if_others_can_read(&path);
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parsed = line.split_once(':').and_then(|(k, v)| {
                let (k, v) = (k.trim(), v.trim());
                let name_ok = reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_ok();
                let value_ok = reqwest::header::HeaderValue::from_str(v).is_ok();
                (name_ok && value_ok).then(|| (k.to_string(), super::secret::Secret::new(v)))
            });
            match parsed {
                Some(h) => headers.push(h),
                None => {
                    let msg = format!(
                        "{} line {}: not a header: write one `Name: value` per line, e.g. `Authorization: Bearer TOKEN`",
                        path.display(),
                        i + 1
                    );
                    cx.err(0, &f.span(), "notify.webhook.header_file", msg);
                    return None;
                }
            }
        }
    }
    Some(WebhookConfig {
        url: url.clone(),
        headers,
    })
}

/// `verify_deploy` of certificate `p`: endpoints as `host:port`, the SNI name (default: the first
/// DNS name that is not a wildcard), the timeout and the daemon's re-check interval.
fn verify_deploy(
    cx: &mut Ctx,
    file: usize,
    p: &str,
    v: &Spanned<super::raw::RawVerifyDeploy>,
    domains: &[String],
) -> Option<VerifyDeploy> {
    let raw = v.get_ref();
    let before = cx.diags.len();
    if raw.connect.get_ref().is_empty() {
        cx.err(
            file,
            &raw.connect.span(),
            format!("{p}.verify_deploy.connect"),
            "names no endpoint: list the TLS endpoints that serve this certificate, e.g. [\"127.0.0.1:443\"]",
        );
    }
    for (i, c) in raw.connect.get_ref().iter().enumerate() {
        let ok = c.get_ref().rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !ok {
            let msg = format!(
                "\"{}\" is not host:port: write e.g. \"127.0.0.1:443\", \"[::1]:443\" or \"www.example.com:443\"",
                c.get_ref()
            );
            cx.err(
                file,
                &c.span(),
                format!("{p}.verify_deploy.connect[{i}]"),
                msg,
            );
        }
    }
    let server_name = match &raw.server_name {
        Some(s) if s.get_ref().trim().is_empty() => {
            cx.err(
                file,
                &s.span(),
                format!("{p}.verify_deploy.server_name"),
                "is empty: remove it or name the host to ask for",
            );
            None
        }
        Some(s) => Some(s.get_ref().clone()),
        None => {
            let first = domains
                .iter()
                .find(|d| !d.starts_with("*.") && d.parse::<IpAddr>().is_err());
            if first.is_none() {
                cx.err(
                    file,
                    &v.span(),
                    format!("{p}.verify_deploy"),
                    "has no DNS name to send as SNI (only wildcards or IP addresses): set server_name = \"www.example.com\"",
                );
            }
            first.cloned()
        }
    };
    let key = |k: &str| format!("{p}.verify_deploy.{k}");
    let timeout = duration(cx, file, raw.timeout.as_ref(), &key("timeout"))
        .unwrap_or(super::DEFAULT_DEPLOY_TIMEOUT);
    let interval = duration(cx, file, raw.interval.as_ref(), &key("interval"))
        .unwrap_or(super::DEFAULT_DEPLOY_INTERVAL);
    if cx.diags.len() > before {
        return None;
    }
    Some(VerifyDeploy {
        connect: raw
            .connect
            .get_ref()
            .iter()
            .map(|c| c.get_ref().clone())
            .collect(),
        server_name: server_name?,
        timeout,
        interval,
    })
}

fn socket_addr(cx: &mut Ctx, file: usize, s: &SStr, key: &str) -> Option<SocketAddr> {
    match s.get_ref().parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            let msg = format!(
                "\"{}\" is not an IP address with a port: write e.g. \"127.0.0.1:8402\" or \"[::1]:8402\"",
                s.get_ref()
            );
            cx.err(file, &s.span(), key, msg);
            None
        }
    }
}

fn duration(cx: &mut Ctx, file: usize, s: Option<&SStr>, key: &str) -> Option<std::time::Duration> {
    let s = s?;
    match parse_duration(s.get_ref()) {
        Ok(d) => Some(d),
        Err(msg) => {
            cx.err(file, &s.span(), key, msg);
            None
        }
    }
}

fn key_type(cx: &mut Ctx, file: usize, s: Option<&SStr>, key: &str) -> Option<KeyType> {
    let Some(s) = s else {
        return Some(KeyType::EcdsaP256);
    };
    match s.get_ref().parse::<KeyType>() {
        Ok(k) => Some(k),
        Err(e) => {
            cx.err(file, &s.span(), key, e.to_string());
            None
        }
    }
}

fn issuer(
    cx: &mut Ctx,
    file: usize,
    name: &str,
    key: &SStr,
    raw: &RawIssuer,
) -> Option<IssuerConfig> {
    let p = format!("issuer.{}", key_seg(name));
    let errors_before = cx.diags.len();

    let dir = raw.directory.get_ref();
    let directory = if let Some((_, url)) = SHORTHANDS.iter().find(|(s, _)| s == dir) {
        url.to_string()
    } else {
        let ok = reqwest::Url::parse(dir).is_ok_and(|u| {
            matches!(u.scheme(), "https" | "http") && u.host_str().is_some_and(|h| !h.is_empty())
        });
        if !ok {
            cx.err(
                file,
                &raw.directory.span(),
                format!("{p}.directory"),
                format!(
                    "\"{dir}\" is neither a known CA (letsencrypt, letsencrypt-staging, zerossl) nor an https:// URL of an ACME directory"
                ),
            );
        }
        dir.clone()
    };

    let mut contact = Vec::new();
    for (i, c) in raw.contact.iter().enumerate() {
        let ok = c
            .get_ref()
            .strip_prefix("mailto:")
            .is_some_and(|rest| rest.contains('@'));
        if !ok {
            cx.err(
                file,
                &c.span(),
                format!("{p}.contact[{i}]"),
                format!(
                    "\"{}\" must be a mailto: URL, e.g. \"mailto:admin@example.com\"",
                    c.get_ref()
                ),
            );
        }
        contact.push(c.get_ref().clone());
    }

    let ca_bundle = raw
        .ca_bundle
        .as_ref()
        .map(|c| cx.resolve(file, c.get_ref()));

    let eab = raw.eab.as_ref().and_then(|eab_s| {
        let e = eab_s.get_ref();
        if e.kid.get_ref().is_empty() {
            cx.err(
                file,
                &e.kid.span(),
                format!("{p}.eab.kid"),
                "is empty: use the key id your CA gave you",
            );
        }
        let file_path = e
            .hmac_key_file
            .as_ref()
            .map(|f| cx.resolve(file, f.get_ref()));
        let source = match source_with_credential(
            "hmac_key",
            file_path.as_deref(),
            e.hmac_key_env.as_ref().map(|v| v.get_ref().as_str()),
            e.hmac_key_credential.as_ref().map(|v| v.get_ref().as_str()),
        ) {
            Ok(s) => s,
            Err(err) => {
                // A credential's own problem is reported at its key, the choice at the table.
                let (span, key) = match (&e.hmac_key_credential, &err) {
                    (
                        Some(c),
                        SecretError::CredentialName { .. }
                        | SecretError::NoCredentialsDirectory { .. }
                        | SecretError::CredentialMissing { .. },
                    ) => (c.span(), format!("{p}.eab.hmac_key_credential")),
                    _ => (eab_s.span(), format!("{p}.eab")),
                };
                cx.err(file, &span, key, err.to_string());
                return None;
            }
        };
        match source.read() {
            Ok(hmac_key) => Some(EabConfig {
                kid: e.kid.get_ref().clone(),
                hmac_key,
            }),
            Err(err) => {
                let (span, k) = match (&e.hmac_key_file, &e.hmac_key_env, &e.hmac_key_credential) {
                    (Some(f), _, _) => (f.span(), "hmac_key_file"),
                    (_, Some(v), _) => (v.span(), "hmac_key_env"),
                    (_, _, Some(c)) => (c.span(), "hmac_key_credential"),
                    _ => (eab_s.span(), ""),
                };
                cx.err(file, &span, format!("{p}.eab.{k}"), err.to_string());
                None
            }
        }
    });

    let account_key = key_type(
        cx,
        file,
        raw.account_key.as_ref(),
        &format!("{p}.account_key"),
    );

    if raw.solver.is_empty() {
        cx.err(
            file,
            &key.span(),
            p.clone(),
            format!(
                "no solvers: add [[{p}.solver]] with http01 = {{}} (or webroot = {{ path = \"...\" }}, or dns01 = {{ provider = \"...\", ... }})"
            ),
        );
    }
    let mut solvers = Vec::new();
    for (i, s) in raw.solver.iter().enumerate() {
        if let Some(sc) = solver(cx, file, &format!("{p}.solver[{i}]"), s) {
            solvers.push(sc);
        }
    }
    let caa_identities = raw
        .caa_identities
        .as_ref()
        .map(|list| caa_identities(cx, file, &p, list));

    if cx.diags.len() > errors_before {
        return None;
    }
    Some(IssuerConfig {
        name: name.to_string(),
        directory,
        contact,
        ca_bundle,
        eab,
        account_key: account_key?,
        caa_identities,
        solvers,
    })
}

/// `caa_identities = ["letsencrypt.org"]` of issuer `p`: the domain names a CAA `issue` record
/// names the CA by, lower-case without a trailing dot.
fn caa_identities(cx: &mut Ctx, file: usize, p: &str, list: &Spanned<Vec<SStr>>) -> Vec<String> {
    if list.get_ref().is_empty() {
        cx.err(
            file,
            &list.span(),
            format!("{p}.caa_identities"),
            "is empty: list the domain names the CA's CAA records use (e.g. [\"letsencrypt.org\"]), or remove it to use the CA directory's meta.caaIdentities",
        );
    }
    let mut out = Vec::new();
    for (i, v) in list.get_ref().iter().enumerate() {
        match normalize_name(v.get_ref()) {
            Ok((IdentifierKind::Dns, n)) => out.push(n),
            _ => cx.err(
                file,
                &v.span(),
                format!("{p}.caa_identities[{i}]"),
                format!(
                    "\"{}\" is not a CAA issuer domain name: write the name the CA's CAA records use, e.g. \"letsencrypt.org\"",
                    v.get_ref()
                ),
            ),
        }
    }
    out
}

/// `self_check = true | false | { port, resolve }` of an http01 or webroot solver at key `p`
/// (`issuer.X.solver[i].http01`): on by default, port 80 of the name's own addresses.
fn self_check_setting(
    cx: &mut Ctx,
    file: usize,
    p: &str,
    raw: Option<&Spanned<RawSelfCheck>>,
) -> (bool, crate::challenge::http01::SelfCheckTarget) {
    let mut self_check = true;
    let mut self_check_target = crate::challenge::http01::SelfCheckTarget::default();
    match raw.map(|s| s.get_ref()) {
        None => {}
        Some(RawSelfCheck::Enabled(b)) => self_check = *b,
        Some(RawSelfCheck::Target(t)) => {
            if let Some(port) = &t.port {
                match u16::try_from(*port.get_ref()) {
                    Ok(n) if n > 0 => self_check_target.port = n,
                    _ => cx.err(
                        file,
                        &port.span(),
                        format!("{p}.self_check.port"),
                        format!(
                            "{} is not a TCP port: write a number from 1 to 65535",
                            port.get_ref()
                        ),
                    ),
                }
            }
            if let Some(resolve) = &t.resolve {
                for v in &resolve.get_ref().0 {
                    match v.parse::<IpAddr>() {
                        Ok(ip) => self_check_target.resolve.push(ip),
                        Err(_) => cx.err(
                            file,
                            &resolve.span(),
                            format!("{p}.self_check.resolve"),
                            format!("{v:?} is not an IP address: write e.g. \"203.0.113.7\" or \"2001:db8::7\""),
                        ),
                    }
                }
            }
        }
    }
    (self_check, self_check_target)
}

fn solver(cx: &mut Ctx, file: usize, p: &str, s: &Spanned<RawSolver>) -> Option<SolverConfig> {
    let raw = s.get_ref();
    let mut kinds = Vec::new();
    if raw.http01.is_some() {
        kinds.push("http01");
    }
    if raw.webroot.is_some() {
        kinds.push("webroot");
    }
    if raw.tlsalpn01.is_some() {
        kinds.push("tlsalpn01");
    }
    if raw.dns01.is_some() {
        kinds.push("dns01");
    }
    if raw.dns_persist01.is_some() {
        kinds.push("dns_persist01");
    }
    if kinds.len() != 1 {
        let msg = if kinds.is_empty() {
            "no solver kind: set exactly one of http01 = {}, webroot = { path = \"...\" }, tlsalpn01 = {}, dns01 = { provider = \"...\" }"
                .to_string()
        } else {
            format!(
                "set exactly one of http01, webroot, tlsalpn01, dns01 per solver, found {}: split them into separate [[...solver]] tables",
                kinds.join(" and ")
            )
        };
        cx.err(file, &s.span(), p, msg);
        return None;
    }
    if let (Some(prop), None, None) = (&raw.propagation, &raw.dns01, &raw.dns_persist01) {
        cx.err(
            file,
            &prop.span(),
            format!("{p}.propagation"),
            "only applies to dns01 solvers: remove it",
        );
    }

    let mut selector = Selector::default();
    if let Some(sel) = &raw.selector {
        for (i, z) in sel.dns_zones.iter().enumerate() {
            match normalize_name(z.get_ref()) {
                Ok((IdentifierKind::Dns, n)) => selector.dns_zones.push(n),
                Ok(_) => cx.err(
                    file,
                    &z.span(),
                    format!("{p}.selector.dns_zones[{i}]"),
                    format!(
                        "\"{}\" is not a DNS zone name: write e.g. \"example.com\"",
                        z.get_ref()
                    ),
                ),
                Err(msg) => cx.err(file, &z.span(), format!("{p}.selector.dns_zones[{i}]"), msg),
            }
        }
        for (i, n) in sel.dns_names.iter().enumerate() {
            match normalize_name(n.get_ref()) {
                Ok((kind, n)) => selector.dns_names.push(written(kind, &n)),
                Err(msg) => cx.err(file, &n.span(), format!("{p}.selector.dns_names[{i}]"), msg),
            }
        }
    }

    let kind = if let Some(h) = &raw.http01 {
        let (self_check, self_check_target) = self_check_setting(
            cx,
            file,
            &format!("{p}.http01"),
            h.get_ref().self_check.as_ref(),
        );
        SolverKind::Http01 {
            self_check,
            self_check_target,
        }
    } else if let Some(w) = &raw.webroot {
        let (self_check, self_check_target) = self_check_setting(
            cx,
            file,
            &format!("{p}.webroot"),
            w.get_ref().self_check.as_ref(),
        );
        SolverKind::Webroot {
            path: cx.resolve(file, w.get_ref().path.get_ref()),
            self_check,
            self_check_target,
        }
    } else if let Some(t) = &raw.tlsalpn01 {
        let listen = match &t.get_ref().listen {
            None => std::net::SocketAddr::from(([0, 0, 0, 0], 443)),
            Some(l) => match l.get_ref().parse::<std::net::SocketAddr>() {
                Ok(a) => a,
                Err(_) => {
                    cx.err(
                        file,
                        &l.span(),
                        format!("{p}.tlsalpn01.listen"),
                        format!(
                            "\"{}\" is not an address:port: write e.g. \"0.0.0.0:443\"",
                            l.get_ref()
                        ),
                    );
                    return None;
                }
            },
        };
        SolverKind::TlsAlpn01 { listen }
    } else if let Some(d) = &raw.dns01 {
        let propagation = propagation_setting(cx, file, p, raw.propagation.as_ref());
        SolverKind::Dns01 {
            provider: dns_provider(cx, file, &format!("{p}.dns01"), d)?,
            propagation,
        }
    } else if let Some(d) = &raw.dns_persist01 {
        let domain = d
            .get_ref()
            .issuer_domain
            .get_ref()
            .trim()
            .trim_end_matches('.');
        if domain.is_empty() || domain.contains(char::is_whitespace) || !domain.contains('.') {
            cx.err(
                file,
                &d.get_ref().issuer_domain.span(),
                format!("{p}.dns_persist01.issuer_domain"),
                "is not a domain name: give the CA's issuer domain name, e.g. \"letsencrypt.org\" (the CA documents it; it is in its dns-persist-01 challenges as issuer-domain-names)",
            );
            return None;
        }
        SolverKind::DnsPersist01 {
            issuer_domain: domain.to_ascii_lowercase(),
            propagation: propagation_setting(cx, file, p, raw.propagation.as_ref()),
        }
    } else {
        return None;
    };
    Some(SolverConfig { selector, kind })
}

/// The `propagation = { .. }` table next to a dns01 or dns_persist01 solver at key `p`.
fn propagation_setting(
    cx: &mut Ctx,
    file: usize,
    p: &str,
    raw: Option<&Spanned<RawPropagation>>,
) -> PropagationConfig {
    let mut propagation = PropagationConfig::default();
    if let Some(pr) = raw {
        let pr = pr.get_ref();
        if let Some(c) = pr.check {
            propagation.check = c;
        }
        if let Some(t) = duration(
            cx,
            file,
            pr.timeout.as_ref(),
            &format!("{p}.propagation.timeout"),
        ) {
            propagation.timeout = t;
        }
        if let Some(t) = duration(
            cx,
            file,
            pr.interval.as_ref(),
            &format!("{p}.propagation.interval"),
        ) {
            propagation.interval = t;
        }
        for (i, ns) in pr.nameservers.iter().enumerate() {
            let v = ns.get_ref();
            let addr = v
                .parse::<SocketAddr>()
                .ok()
                .or_else(|| v.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)));
            if let Some(addr) = addr {
                propagation.nameservers.push(addr);
            } else {
                cx.err(
                    file,
                    &ns.span(),
                    format!("{p}.propagation.nameservers[{i}]"),
                    format!("\"{v}\" is not a nameserver address: write an IP address with an optional port, e.g. \"192.0.2.53\" or \"127.0.0.1:5353\""),
                );
            }
        }
    }
    propagation
}

/// The `dns01` table at key `p` in `file`: the provider's settings parsed and checked (without
/// reading secrets: a secret file that appears later is fine), and relative paths in it resolved
/// against `file`'s directory. Problems name the key inside the table.
fn dns_provider(
    cx: &mut Ctx,
    file: usize,
    p: &str,
    raw: &Spanned<RawProvider>,
) -> Option<DnsProviderConfig> {
    let table = raw.get_ref();
    let names = DnsProviderConfig::NAMES.join(", ");
    let Some(name_value) = table
        .iter()
        .find_map(|(k, v)| (k.get_ref() == "provider").then_some(v))
    else {
        cx.err(
            file,
            &raw.span(),
            p,
            format!("no provider: set provider = \"NAME\", one of {names}"),
        );
        return None;
    };
    let Some(name) = name_value.get_ref().as_str() else {
        cx.err(
            file,
            &name_value.span(),
            format!("{p}.provider"),
            format!("must be a string naming the provider, one of {names}"),
        );
        return None;
    };
    let mut settings: toml::Table = table
        .iter()
        .filter(|(k, _)| k.get_ref() != "provider")
        .map(|(k, v)| (k.get_ref().clone(), v.get_ref().clone()))
        .collect();
    // Where a problem with `key` (`timeout`, `args[1]`, "" for the table) is reported.
    let report = |cx: &mut Ctx, e: SettingError| {
        let head = e.key.split(['[', '.']).next().unwrap_or("");
        let found = table.iter().find(|(k, _)| k.get_ref() == head);
        let span = match found {
            Some((k, _)) if e.message.starts_with("unknown field") => k.span(),
            Some((_, v)) => v.span(),
            None => raw.span(),
        };
        let key = if e.key.is_empty() {
            p.to_string()
        } else {
            format!("{p}.{}", e.key)
        };
        let message = match e
            .message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.strip_suffix('`'))
        {
            Some(field) => format!("no {field} given: the {name} provider needs {field} = ..."),
            None => e.message,
        };
        cx.err(file, &span, key, message);
    };
    // `<key>_credential` becomes `<key>_file` in $CREDENTIALS_DIRECTORY.
    let credentials = match credentials_to_files(&mut settings) {
        Ok(c) => c,
        Err(problems) => {
            for (key, message) in problems {
                report(cx, SettingError::new(key, message));
            }
            return None;
        }
    };
    let mut config = match DnsProviderConfig::from_table(name, settings) {
        Ok(c) => c,
        Err(mut e) => {
            // A `<key>_credential` whose `<key>_file` the provider does not have.
            if let Some((file_key, cred_key)) = credentials
                .iter()
                .find(|(f, _)| e.message.starts_with(&format!("unknown field `{f}`")))
            {
                e = SettingError::new(
                    cred_key.clone(),
                    format!(
                        "unknown field `{cred_key}`: the {name} provider has no secret `{file_key}` to take from a credential"
                    ),
                );
            }
            report(cx, e);
            return None;
        }
    };
    let problems = config.check();
    if !problems.is_empty() {
        for e in problems {
            report(cx, e);
        }
        return None;
    }
    for (key, path) in config.paths_mut() {
        // A bare exec `command` (no `/`) is looked up in PATH, as a shell would.
        let bare_command = key == "command" && path.components().count() < 2;
        if !path.is_absolute() && !bare_command {
            *path = cx.resolve(file, &*path);
        }
    }
    Some(config)
}

/// Why no solver of `issuer` can prove `value` (of `kind`), and what to add.
///
/// The solver kinds named come from [`SolverKind::keys_that_can_prove`], the same rule solver
/// selection follows.
fn no_solver_message(issuer: &str, kind: IdentifierKind, value: &str) -> String {
    let keys = SolverKind::keys_that_can_prove(kind);
    let can = match keys.as_slice() {
        [one] => one.to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
        [] => "no".to_string(),
    };
    let cannot: Vec<&str> = super::SOLVER_KEYS
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| !keys.contains(k))
        .collect();
    let section = format!("[[issuer.{}.solver]]", key_seg(issuer));
    match kind {
        IdentifierKind::Wildcard => format!(
            "*.{value} is a wildcard name and needs a {can} solver ({} cannot prove wildcards): add {section} with dns01 = {{...}} whose selector covers {value}",
            cannot.join(", ")
        ),
        IdentifierKind::Ip => format!(
            "{value} is an IP address and needs an {can} solver ({} cannot prove IP addresses): add {section} with http01 = {{}} and no selector",
            cannot.join(", ")
        ),
        IdentifierKind::Dns => format!(
            "no solver of issuer \"{issuer}\" covers {value}: add a solver whose selector covers it, or one without a selector"
        ),
    }
}

/// A name as written in the config: `*.` before the base of a wildcard.
fn written(kind: IdentifierKind, value: &str) -> String {
    match kind {
        IdentifierKind::Wildcard => format!("*.{value}"),
        IdentifierKind::Dns | IdentifierKind::Ip => value.to_string(),
    }
}

/// Lowercase, drop a trailing dot, and check a DNS name, `*.` wildcard or IP address.
///
/// Returns the kind ([`IdentifierKind::split`], the one classifier) and the identifier value the
/// CA uses: the base name of a wildcard, an IP address in canonical form.
fn normalize_name(raw: &str) -> Result<(IdentifierKind, String), String> {
    let s = raw.trim_end_matches('.').to_ascii_lowercase();
    let (kind, value) = IdentifierKind::split(&s);
    if kind == IdentifierKind::Ip {
        let ip: IpAddr = value
            .parse()
            .map_err(|_| format!("\"{raw}\" is not an IP address"))?;
        return Ok((kind, ip.to_string()));
    }
    if !s.is_ascii() {
        return Err(format!(
            "\"{raw}\" is not ASCII: write internationalized names in their xn-- (punycode) form"
        ));
    }
    let base = value;
    if base.is_empty() {
        return Err(format!("\"{raw}\" is not a DNS name"));
    }
    if base.len() > 253 {
        return Err(format!("\"{raw}\" is longer than 253 characters"));
    }
    for label in base.split('.') {
        if label.contains('*') {
            return Err(format!(
                "\"{raw}\": '*' is only allowed as the whole first label, e.g. \"*.example.com\""
            ));
        }
        if label.is_empty() || label.len() > 63 {
            return Err(format!(
                "\"{raw}\" is not a DNS name: each dot-separated label must have 1 to 63 characters"
            ));
        }
        if !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return Err(format!(
                "\"{raw}\" is not a DNS name: labels may hold only letters, digits and inner hyphens"
            ));
        }
    }
    Ok((kind, base.to_string()))
}

fn certificate(
    cx: &mut Ctx,
    file: usize,
    name: &str,
    key: &SStr,
    raw: &RawCertificate,
    defined: &[&str],
    issuers: &BTreeMap<String, IssuerConfig>,
) -> Option<CertificateConfig> {
    let p = format!("certificate.{}", key_seg(name));
    let errors_before = cx.diags.len();
    let defined_list = || {
        if defined.is_empty() {
            "none".to_string()
        } else {
            defined.join(", ")
        }
    };

    // Issuers.
    let issuer_names: Vec<String> = match &raw.issuer {
        None if defined.len() == 1 => vec![defined[0].to_string()],
        None => {
            cx.err(
                file,
                &key.span(),
                p.clone(),
                format!("no issuer: set issuer = \"NAME\" or a fallback list [\"A\", \"B\"] (defined issuers: {})", defined_list()),
            );
            Vec::new()
        }
        Some(list) => {
            if list.get_ref().0.is_empty() {
                cx.err(
                    file,
                    &list.span(),
                    format!("{p}.issuer"),
                    format!(
                        "is empty: name at least one issuer (defined issuers: {})",
                        defined_list()
                    ),
                );
            }
            for (i, n) in list.get_ref().0.iter().enumerate() {
                if list.get_ref().0[..i].contains(n) {
                    cx.err(
                        file,
                        &list.span(),
                        format!("{p}.issuer"),
                        format!("issuer \"{n}\" is listed twice: remove one"),
                    );
                } else if !defined.contains(&n.as_str()) {
                    cx.err(
                        file,
                        &list.span(),
                        format!("{p}.issuer"),
                        format!(
                            "unknown issuer \"{n}\" (defined issuers: {})",
                            defined_list()
                        ),
                    );
                }
            }
            list.get_ref().0.clone()
        }
    };

    // Domains.
    let mut domains = Vec::new();
    let mut idents = Vec::new();
    if raw.domains.get_ref().is_empty() {
        let span = if raw.domains.span().is_empty() {
            key.span()
        } else {
            raw.domains.span()
        };
        cx.err(
            file,
            &span,
            format!("{p}.domains"),
            "no domains: list the names, e.g. domains = [\"example.com\", \"www.example.com\"]",
        );
    }
    for (i, d) in raw.domains.get_ref().iter().enumerate() {
        let k = format!("{p}.domains[{i}]");
        match normalize_name(d.get_ref()) {
            Ok(ident) => {
                let text = written(ident.0, &ident.1);
                if domains.contains(&text) {
                    cx.err(
                        file,
                        &d.span(),
                        k,
                        format!("\"{text}\" is listed twice: remove one"),
                    );
                    continue;
                }
                domains.push(text);
                idents.push((d.span(), k, ident));
            }
            Err(msg) => cx.err(file, &d.span(), k, msg),
        }
    }

    // Every name must have a solver at every issuer it may go to.
    for issuer_name in &issuer_names {
        let Some(issuer) = issuers.get(issuer_name) else {
            continue;
        };
        for (span, k, (kind, value)) in &idents {
            if issuer.solver_for(value, *kind).is_some() {
                continue;
            }
            let msg = no_solver_message(issuer_name, *kind, value);
            cx.err(file, span, k.clone(), msg);
        }
    }

    let key_type = key_type(cx, file, raw.key.as_ref(), &format!("{p}.key"));
    let renew_before = duration(
        cx,
        file,
        raw.renew_before.as_ref(),
        &format!("{p}.renew_before"),
    );
    for (field, v) in [
        ("profile", &raw.profile),
        ("preferred_chain", &raw.preferred_chain),
    ] {
        if let Some(v) = v
            && v.get_ref().trim().is_empty()
        {
            cx.err(
                file,
                &v.span(),
                format!("{p}.{field}"),
                "is empty: remove the key or give a value",
            );
        }
    }
    let mut reload = Vec::new();
    for (i, r) in raw.reload.iter().enumerate() {
        if r.get_ref().trim().is_empty() {
            cx.err(
                file,
                &r.span(),
                format!("{p}.reload[{i}]"),
                "is an empty command: remove it",
            );
        }
        reload.push(r.get_ref().clone());
    }
    let mut reload_env = Vec::new();
    for (i, n) in raw.reload_env.iter().enumerate() {
        if let Err(message) = crate::child::check_env_name(n.get_ref()) {
            cx.err(file, &n.span(), format!("{p}.reload_env[{i}]"), message);
        }
        reload_env.push(n.get_ref().clone());
    }
    let verify_deploy = raw
        .verify_deploy
        .as_ref()
        .and_then(|v| verify_deploy(cx, file, &p, v, &domains));

    // Output.
    let out = raw.output.get_ref();
    let dir = PathBuf::from(out.dir.get_ref());
    if !dir.is_absolute() {
        cx.err(
            file,
            &out.dir.span(),
            format!("{p}.output.dir"),
            format!("must be an absolute path, got \"{}\"", out.dir.get_ref()),
        );
    }
    let key_mode = mode(
        cx,
        file,
        out.key_mode.as_ref(),
        &format!("{p}.output.key_mode"),
        super::DEFAULT_KEY_MODE,
    );
    let cert_mode = mode(
        cx,
        file,
        out.cert_mode.as_ref(),
        &format!("{p}.output.cert_mode"),
        super::DEFAULT_CERT_MODE,
    );
    if let (Some(m), Some(spanned)) = (key_mode, out.key_mode.as_ref())
        && m & !0o640 != 0
    {
        cx.err(
            file,
            &spanned.span(),
            format!("{p}.output.key_mode"),
            format!(
                "{m:04o} lets more than the owner and the group read or change the private key: use \"0600\", or \"0640\" with output.group for a web server that reads it as a group member"
            ),
        );
    }
    for (field, v) in [("owner", &out.owner), ("group", &out.group)] {
        if let Some(v) = v
            && v.get_ref().trim().is_empty()
        {
            cx.err(
                file,
                &v.span(),
                format!("{p}.output.{field}"),
                "is empty: remove the key or name a user/group",
            );
        }
    }

    if cx.diags.len() > errors_before {
        return None;
    }
    Some(CertificateConfig {
        name: name.to_string(),
        issuers: issuer_names,
        domains,
        key: key_type?,
        renew_before,
        profile: raw.profile.as_ref().map(|v| v.get_ref().clone()),
        preferred_chain: raw.preferred_chain.as_ref().map(|v| v.get_ref().clone()),
        key_reuse: raw.key_reuse,
        output: OutputConfig {
            dir,
            owner: out.owner.as_ref().map(|v| v.get_ref().clone()),
            group: out.group.as_ref().map(|v| v.get_ref().clone()),
            key_mode: key_mode?,
            cert_mode: cert_mode?,
            allow_shared_dir: out.allow_shared_dir.unwrap_or(false),
        },
        reload,
        reload_env,
        verify_deploy,
    })
}

/// A file mode: an octal string ("0640", "640") or a TOML octal integer (0o640), at most 0777.
fn mode(
    cx: &mut Ctx,
    file: usize,
    m: Option<&Spanned<Mode>>,
    key: &str,
    default: u32,
) -> Option<u32> {
    let Some(m) = m else { return Some(default) };
    let parsed = match m.get_ref() {
        Mode::Text(t) => {
            let digits = t.strip_prefix("0o").unwrap_or(t);
            (!digits.is_empty() && digits.len() <= 4)
                .then(|| u32::from_str_radix(digits, 8).ok())
                .flatten()
                .ok_or_else(|| format!("\"{t}\" is not an octal file mode: write e.g. \"0640\""))
        }
        Mode::Number(n) => {
            // Only a TOML octal literal (0o640) means what the user thinks; 640 or 420 would not.
            let written = &cx.files[file].text[m.span()];
            if written.starts_with("0o") {
                u32::try_from(*n).map_err(|_| format!("{written} is not a file mode"))
            } else {
                Err(format!(
                    "{written} is a decimal number: write the mode as an octal string, e.g. \"0640\""
                ))
            }
        }
    };
    match parsed {
        Ok(v) if v <= 0o777 => Some(v),
        Ok(v) => {
            cx.err(
                file,
                &m.span(),
                key,
                format!("mode {v:o} has bits above 0777 (setuid/setgid/sticky): use e.g. \"0640\""),
            );
            None
        }
        Err(msg) => {
            cx.err(file, &m.span(), key, msg);
            None
        }
    }
}
