//! From parsed files to a validated [`Config`]: includes, merging, and every check (those of
//! `[storage]` in [`super::storage`], those of an issuer's solvers in [`super::solver`]).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::raw::{
    Mode, OneOrMany, RawCertificate, RawEab, RawInclude, RawIssuer, RawMain, RawOutput, RawSolver,
    SStr,
};
use super::source::{SourceFile, key_seg};
use super::{
    AdminConfig, CertificateConfig, Config, ConfigError, DaemonConfig, Diagnostic, Dns01Config,
    EabConfig, Http01Config, IssuerConfig, NotifyConfig, OutputConfig, SecretSource, SolverConfig,
    SolverKind, VerifyDeploy, WebhookConfig, parse_duration,
    secret::{SecretError, credential_path, source_with_credential},
};
use crate::acme::KeyType;
use crate::challenge::IdentifierKind;

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

/// `issuer.*` or `certificate.*` tables by name, each with its file and its name as written.
type Defined<T> = BTreeMap<String, (usize, SStr, T)>;

/// A certificate's name as the CA sees it, with where it is written: (span, key, (kind, value)).
type NamePlace = (Range<usize>, String, (IdentifierKind, String));

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

    let (includes, include_dirs) = includes(&mut cx, &main.include, reduce);
    let (raw_issuers, raw_certs) = merge_files(&mut cx, main.issuer, main.certificate, includes);

    // Top level.
    let state_dir = state_dir(&mut cx, main.state_dir.as_ref());
    let storage = main
        .storage
        .as_ref()
        .map(|s| super::storage::storage(&mut cx, s))
        .unwrap_or_default();
    let http01 = http01(&mut cx, main.http01.as_ref());
    let admin = main.admin.as_ref().and_then(|a| admin(&mut cx, a));
    let daemon = daemon(&mut cx, main.daemon.as_ref());
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

    let defined: Vec<&str> = raw_issuers.keys().map(String::as_str).collect();
    let certificates = certificates(&mut cx, &raw_certs, only, &defined, &issuers);

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
        // Built again from sorted input: full B-tree nodes, half the memory of the inserts in
        // `certificates` (10,000 certificates of a few hundred bytes each stay in memory for the
        // daemon's life).
        certificates: certificates.into_iter().collect(),
    })
}

/// `include = [...]` of the main file: each pattern expanded and each file found read (once) and
/// parsed. Returns the parsed files by index in `cx.files`, and the directories the patterns name.
fn includes(
    cx: &mut Ctx,
    patterns: &[SStr],
    reduce: &mut dyn FnMut(String) -> String,
) -> (Vec<(usize, RawInclude)>, Vec<PathBuf>) {
    let mut includes: Vec<(usize, RawInclude)> = Vec::new();
    let mut include_dirs: Vec<PathBuf> = Vec::new();
    for (i, pat) in patterns.iter().enumerate() {
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
            if let Some(inc) = include_file(cx, pat, &key, p, reduce) {
                includes.push(inc);
            }
        }
    }
    (includes, include_dirs)
}

/// One included file `p` (matched by `include[i]` pattern `pat`): read, added to `cx.files` and
/// parsed; only `issuer.*` and `certificate.*` may be in it.
fn include_file(
    cx: &mut Ctx,
    pat: &SStr,
    key: &str,
    p: PathBuf,
    reduce: &mut dyn FnMut(String) -> String,
) -> Option<(usize, RawInclude)> {
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) => {
            cx.err(
                0,
                &pat.span(),
                key,
                format!("cannot read {}: {e}", p.display()),
            );
            return None;
        }
    };
    cx.files.push(SourceFile {
        path: p,
        text: reduce(text),
    });
    let idx = cx.files.len() - 1;
    match toml::from_str::<RawInclude>(&cx.files[idx].text) {
        Ok(inc) => Some((idx, inc)),
        Err(e) => {
            let mut d = cx.files[idx].toml_error(&e);
            if d.message.starts_with("unknown field") {
                d.message
                    .push_str(" (included files may only define issuer.* and certificate.*)");
            }
            cx.diags.push(d);
            None
        }
    }
}

/// `issuer.*` and `certificate.*` of the main file and the included ones merged; a name defined
/// twice is an error naming both places.
fn merge_files(
    cx: &mut Ctx,
    main_issuers: BTreeMap<SStr, RawIssuer>,
    main_certs: BTreeMap<SStr, RawCertificate>,
    includes: Vec<(usize, RawInclude)>,
) -> (Defined<RawIssuer>, Defined<RawCertificate>) {
    let mut raw_issuers: Defined<RawIssuer> = BTreeMap::new();
    let mut raw_certs: Defined<RawCertificate> = BTreeMap::new();
    let main_parts = (0usize, main_issuers, main_certs);
    let inc_parts = includes
        .into_iter()
        .map(|(f, inc)| (f, inc.issuer, inc.certificate));
    for (file, issuers, certs) in std::iter::once(main_parts).chain(inc_parts) {
        for (name, raw) in issuers {
            merge(cx, &mut raw_issuers, "issuer", file, name, raw);
        }
        for (name, raw) in certs {
            merge(cx, &mut raw_certs, "certificate", file, name, raw);
        }
    }
    (raw_issuers, raw_certs)
}

/// `state_dir`: an absolute path (default [`super::DEFAULT_STATE_DIR`]).
fn state_dir(cx: &mut Ctx, s: Option<&SStr>) -> PathBuf {
    match s {
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
    }
}

/// `[http01]`: at least one listen address, each an IP address with a port (default
/// 127.0.0.1:8402).
fn http01(cx: &mut Ctx, h: Option<&super::raw::RawHttp01>) -> Http01Config {
    let Some(h) = h else {
        return Http01Config {
            listen: vec![default_http01_listen()],
        };
    };
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
        if let Some(addr) = socket_addr(cx, 0, a, &format!("http01.listen[{i}]")) {
            listen.push(addr);
        }
    }
    Http01Config { listen }
}

/// `[daemon]`: `max_concurrent` at least 1, `hook_timeout`, and a retry backoff whose first wait
/// is not longer than its longest.
fn daemon(cx: &mut Ctx, raw: Option<&super::raw::RawDaemon>) -> DaemonConfig {
    let mut daemon = DaemonConfig {
        max_concurrent: super::DEFAULT_MAX_CONCURRENT,
        hook_timeout: super::DEFAULT_HOOK_TIMEOUT,
        backoff: crate::scheduler::Backoff::default(),
    };
    let Some(d) = raw else {
        return daemon;
    };
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
    if let Some(t) = duration(cx, 0, d.hook_timeout.as_ref(), "daemon.hook_timeout") {
        daemon.hook_timeout = t;
    }
    let signed = |d: std::time::Duration| {
        jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX)
    };
    if let Some(t) = duration(cx, 0, d.retry_first.as_ref(), "daemon.retry_first") {
        daemon.backoff.first = signed(t);
    }
    if let Some(t) = duration(cx, 0, d.retry_max.as_ref(), "daemon.retry_max") {
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
    daemon
}

/// Every `[certificate.*]` (or only `only`, when it is defined); no two may write to the same
/// output dir.
fn certificates(
    cx: &mut Ctx,
    raw_certs: &Defined<RawCertificate>,
    only: Option<&str>,
    defined: &[&str],
    issuers: &BTreeMap<String, IssuerConfig>,
) -> BTreeMap<String, CertificateConfig> {
    let mut certificates = BTreeMap::new();
    // The place of the first writer of a dir, as (name, file, span): turned into file:line only for
    // a clash (finding a line scans the file, which for every one of 10,000 certificates is slow).
    let mut dirs: HashMap<PathBuf, (String, usize, Range<usize>)> = HashMap::new();
    // In file order, so a clash is reported at the later definition.
    let only = only.filter(|n| raw_certs.contains_key(*n));
    let mut ordered: Vec<_> = raw_certs
        .iter()
        .filter(|(name, _)| only.is_none_or(|n| n == name.as_str()))
        .collect();
    ordered.sort_by_key(|(_, (file, key, _))| (*file, key.span().start));
    for (name, (file, key, raw)) in ordered {
        let Some(cert) = certificate(cx, *file, name, key, raw, defined, issuers) else {
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
    certificates
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

/// The duration setting `s` at `key` (e.g. "30d", "P30D"); `None` when it is absent or wrong.
pub(super) fn duration(
    cx: &mut Ctx,
    file: usize,
    s: Option<&SStr>,
    key: &str,
) -> Option<std::time::Duration> {
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

/// `[issuer.NAME]` (defined at `key` in `file`): the CA directory, contacts, CA bundle, EAB,
/// account key, solvers and CAA identities; `None` when any of them is wrong.
fn issuer(
    cx: &mut Ctx,
    file: usize,
    name: &str,
    key: &SStr,
    raw: &RawIssuer,
) -> Option<IssuerConfig> {
    let p = format!("issuer.{}", key_seg(name));
    let errors_before = cx.diags.len();

    let directory = directory(cx, file, &p, &raw.directory);
    let contact = contact(cx, file, &p, &raw.contact);
    let ca_bundle = raw
        .ca_bundle
        .as_ref()
        .map(|c| cx.resolve(file, c.get_ref()));
    let eab = raw.eab.as_ref().and_then(|eab_s| eab(cx, file, &p, eab_s));
    let account_key = key_type(
        cx,
        file,
        raw.account_key.as_ref(),
        &format!("{p}.account_key"),
    );
    let solvers = solvers(cx, file, &p, key, &raw.solver);
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

/// `directory` of issuer `p`: a shorthand ([`SHORTHANDS`], returned as its URL) or an http(s)
/// URL with a host.
fn directory(cx: &mut Ctx, file: usize, p: &str, raw: &SStr) -> String {
    let dir = raw.get_ref();
    if let Some((_, url)) = SHORTHANDS.iter().find(|(s, _)| s == dir) {
        return url.to_string();
    }
    let ok = reqwest::Url::parse(dir).is_ok_and(|u| {
        matches!(u.scheme(), "https" | "http") && u.host_str().is_some_and(|h| !h.is_empty())
    });
    if !ok {
        cx.err(
            file,
            &raw.span(),
            format!("{p}.directory"),
            format!(
                "\"{dir}\" is neither a known CA (letsencrypt, letsencrypt-staging, zerossl) nor an https:// URL of an ACME directory"
            ),
        );
    }
    dir.clone()
}

/// `contact` of issuer `p`: each a `mailto:` URL with an address.
fn contact(cx: &mut Ctx, file: usize, p: &str, raw: &[SStr]) -> Vec<String> {
    let mut contact = Vec::new();
    for (i, c) in raw.iter().enumerate() {
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
    contact
}

/// `eab = { kid, hmac_key_file | hmac_key_env | hmac_key_credential }` of issuer `p`: a key id,
/// and the HMAC key read now.
fn eab(cx: &mut Ctx, file: usize, p: &str, eab_s: &Spanned<RawEab>) -> Option<EabConfig> {
    let e = eab_s.get_ref();
    if e.kid.get_ref().is_empty() {
        cx.err(
            file,
            &e.kid.span(),
            format!("{p}.eab.kid"),
            "is empty: use the key id your CA gave you",
        );
    }
    let source = eab_source(cx, file, p, eab_s)?;
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
}

/// Where the EAB HMAC key of issuer `p` comes from: exactly one of a file (resolved against
/// `file`'s directory), an environment variable or a systemd credential.
fn eab_source(cx: &mut Ctx, file: usize, p: &str, eab_s: &Spanned<RawEab>) -> Option<SecretSource> {
    let e = eab_s.get_ref();
    let file_path = e
        .hmac_key_file
        .as_ref()
        .map(|f| cx.resolve(file, f.get_ref()));
    match source_with_credential(
        "hmac_key",
        file_path.as_deref(),
        e.hmac_key_env.as_ref().map(|v| v.get_ref().as_str()),
        e.hmac_key_credential.as_ref().map(|v| v.get_ref().as_str()),
    ) {
        Ok(s) => Some(s),
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
            None
        }
    }
}

/// `[[issuer.NAME.solver]]` of issuer `p` (defined at `key`): at least one, each validated by
/// [`super::solver::solver`]; the valid ones are returned.
fn solvers(
    cx: &mut Ctx,
    file: usize,
    p: &str,
    key: &SStr,
    raw: &[Spanned<RawSolver>],
) -> Vec<SolverConfig> {
    if raw.is_empty() {
        cx.err(
            file,
            &key.span(),
            p,
            format!(
                "no solvers: add [[{p}.solver]] with http01 = {{}} (or webroot = {{ path = \"...\" }}, or dns01 = {{ provider = \"...\", ... }})"
            ),
        );
    }
    let mut solvers = Vec::new();
    for (i, s) in raw.iter().enumerate() {
        if let Some(sc) = super::solver::solver(cx, file, &format!("{p}.solver[{i}]"), s) {
            solvers.push(sc);
        }
    }
    solvers
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
pub(super) fn written(kind: IdentifierKind, value: &str) -> String {
    match kind {
        IdentifierKind::Wildcard => format!("*.{value}"),
        IdentifierKind::Dns | IdentifierKind::Ip => value.to_string(),
    }
}

/// Lowercase, drop a trailing dot, and check a DNS name, `*.` wildcard or IP address.
///
/// Returns the kind ([`IdentifierKind::split`], the one classifier) and the identifier value the
/// CA uses: the base name of a wildcard, an IP address in canonical form.
pub(super) fn normalize_name(raw: &str) -> Result<(IdentifierKind, String), String> {
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

/// `[certificate.NAME]` (defined at `key` in `file`): its issuers among `defined`, its domains
/// (each with a solver at every issuer), key, renewal, reload, deploy check and output; `None`
/// when any of them is wrong.
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

    let issuer_names = certificate_issuers(cx, file, &p, key, raw.issuer.as_ref(), defined);
    let (domains, idents) = domains(cx, file, &p, key, &raw.domains);
    check_solvers(cx, file, &issuer_names, &idents, issuers);
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
    let (reload, reload_env) = reload(cx, file, &p, raw);
    let verify_deploy = raw
        .verify_deploy
        .as_ref()
        .and_then(|v| verify_deploy(cx, file, &p, v, &domains));
    let output = output(cx, file, &p, raw.output.get_ref());

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
        output: output?,
        reload,
        reload_env,
        verify_deploy,
    })
}

/// The defined issuers, for messages: "a, b" or "none".
fn defined_list(defined: &[&str]) -> String {
    if defined.is_empty() {
        "none".to_string()
    } else {
        defined.join(", ")
    }
}

/// `issuer = "A"` or `["A", "B"]` of certificate `p` (defined at `key`): each defined, none
/// twice; without it, the only issuer defined.
fn certificate_issuers(
    cx: &mut Ctx,
    file: usize,
    p: &str,
    key: &SStr,
    raw: Option<&Spanned<OneOrMany>>,
    defined: &[&str],
) -> Vec<String> {
    let list = match raw {
        None if defined.len() == 1 => return vec![defined[0].to_string()],
        None => {
            cx.err(
                file,
                &key.span(),
                p,
                format!("no issuer: set issuer = \"NAME\" or a fallback list [\"A\", \"B\"] (defined issuers: {})", defined_list(defined)),
            );
            return Vec::new();
        }
        Some(list) => list,
    };
    if list.get_ref().0.is_empty() {
        cx.err(
            file,
            &list.span(),
            format!("{p}.issuer"),
            format!(
                "is empty: name at least one issuer (defined issuers: {})",
                defined_list(defined)
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
                    defined_list(defined)
                ),
            );
        }
    }
    list.get_ref().0.clone()
}

/// `domains` of certificate `p` (defined at `key`): at least one, each a DNS name, wildcard or IP
/// address, none twice. Returns the names as written and the valid ones with their places.
fn domains(
    cx: &mut Ctx,
    file: usize,
    p: &str,
    key: &SStr,
    raw: &Spanned<Vec<SStr>>,
) -> (Vec<String>, Vec<NamePlace>) {
    let mut domains = Vec::new();
    let mut idents = Vec::new();
    if raw.get_ref().is_empty() {
        let span = if raw.span().is_empty() {
            key.span()
        } else {
            raw.span()
        };
        cx.err(
            file,
            &span,
            format!("{p}.domains"),
            "no domains: list the names, e.g. domains = [\"example.com\", \"www.example.com\"]",
        );
    }
    for (i, d) in raw.get_ref().iter().enumerate() {
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
    (domains, idents)
}

/// Every name must have a solver at every issuer it may go to (issuers that failed validation are
/// skipped: their own errors are reported).
fn check_solvers(
    cx: &mut Ctx,
    file: usize,
    issuer_names: &[String],
    idents: &[NamePlace],
    issuers: &BTreeMap<String, IssuerConfig>,
) {
    for issuer_name in issuer_names {
        let Some(issuer) = issuers.get(issuer_name) else {
            continue;
        };
        for (span, k, (kind, value)) in idents {
            if issuer.solver_for(value, *kind).is_some() {
                continue;
            }
            let msg = no_solver_message(issuer_name, *kind, value);
            cx.err(file, span, k.clone(), msg);
        }
    }
}

/// `reload` (commands, none empty) and `reload_env` (environment variable names) of
/// certificate `p`.
fn reload(cx: &mut Ctx, file: usize, p: &str, raw: &RawCertificate) -> (Vec<String>, Vec<String>) {
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
    (reload, reload_env)
}

/// `output` of certificate `p`: an absolute dir, file modes (the key's readable by the owner and
/// the group at most), and owner and group names that are not empty.
fn output(cx: &mut Ctx, file: usize, p: &str, out: &RawOutput) -> Option<OutputConfig> {
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
    Some(OutputConfig {
        dir,
        owner: out.owner.as_ref().map(|v| v.get_ref().clone()),
        group: out.group.as_ref().map(|v| v.get_ref().clone()),
        key_mode: key_mode?,
        cert_mode: cert_mode?,
        allow_shared_dir: out.allow_shared_dir.unwrap_or(false),
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
