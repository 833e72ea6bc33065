//! `certkeeper migrate certbot [--certbot-dir /etc/letsencrypt] [--dry-run]`: adopt every certbot
//! lineage without re-issuing anything or registering a new account.
//!
//! For each `renewal/<lineage>.conf` (certbot's configobj format):
//! - `conf.d/certbot-<lineage>.toml` gets the certificate: names from the live certificate's SANs,
//!   key type from the live key (else `key_type`/`rsa_key_size`/`elliptic_curve`),
//!   `renew_before_expiry`, `preferred_chain`, output `dir = <certbot-dir>/live/<lineage>` (so nginx
//!   keeps its paths), deploy hooks (`renew_hook`, `post_hook`, `renewal-hooks/{deploy,post}/*`) as
//!   `reload` with certbot's `RENEWED_LINEAGE`/`RENEWED_DOMAINS`;
//! - `conf.d/certbot-issuers.toml` gets one issuer per certbot `server` (`letsencrypt`,
//!   `letsencrypt-staging`, else `certbot-<host>` with `ca_bundle` from `REQUESTS_CA_BUNDLE`) with
//!   one solver per lineage: standalone → http01, webroot → webroot per mapped path, manual DNS hooks
//!   → exec dns01 through a generated wrapper, dns-rfc2136 → rfc2136 with the TSIG secret moved to
//!   its own file, anything else → a commented block saying what to fill in. It is rebuilt from all
//!   confs, the `.conf.migrated` ones included, so migrating in several runs keeps every solver;
//! - certbot's account (`accounts/<server>/<id>/private_key.json`, a JWK) becomes certkeeper's
//!   account of that issuer, with the account URL from `regr.json`;
//! - the live pair is imported as with `certkeeper import`: the top-level links of `live/<lineage>/`
//!   are switched one by one (rename) from `archive/` to certkeeper's `.live/`, each always naming a
//!   file of the same pair, so nginx never sees a missing or mismatched file;
//! - `renewal/<lineage>.conf` is renamed to `.conf.migrated`, so certbot no longer renews it, and the
//!   undo commands are printed.
//!
//! Who writes what, when root runs it on a state directory owned by certkeeper's user: see
//! [`super::adopt`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openssl::pkey::PKey;

use super::adopt::{self, AccountToAdopt, ConfFile, HandOver};
pub use super::common::LiveFacts;
use super::common::{conf_d, pair_facts, q, q_list, sh_quote};

/// The file in `conf.d/` that holds the issuers of all migrated lineages.
const ISSUERS_FILE: &str = "certbot-issuers.toml";
const LE_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";
const LE_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";
const LIVE_FILES: [&str; 4] = ["cert.pem", "chain.pem", "fullchain.pem", "privkey.pem"];

/// What `certkeeper migrate certbot` was asked to do.
#[derive(Clone, Debug)]
pub struct CertbotOptions {
    /// certbot's config directory (`/etc/letsencrypt`).
    pub certbot_dir: PathBuf,
    /// Print what would be written and done; change nothing.
    pub dry_run: bool,
}

/// A certbot renewal conf: the top-level keys, `[renewalparams]` and its `[[webroot_map]]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RenewalConf {
    /// Keys before any section (`cert`, `privkey`, `renew_before_expiry`, ...).
    pub top: BTreeMap<String, String>,
    /// `[renewalparams]`.
    pub params: BTreeMap<String, String>,
    /// `[[webroot_map]]` inside `[renewalparams]`: name → document root.
    pub webroot_map: BTreeMap<String, String>,
}

impl RenewalConf {
    fn param(&self, key: &str) -> Option<&str> {
        self.params
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty() && *v != "None")
    }
}

/// Parse certbot's configobj text: `key = value` lines, `#` comments, `[section]` and
/// `[[subsection]]` headers. Values keep their text (lists stay `a, b,`), one layer of quotes removed.
pub fn parse_renewal_conf(text: &str) -> Result<RenewalConf, String> {
    let mut conf = RenewalConf::default();
    let mut section = String::new();
    let mut sub = String::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix("[[") {
            let Some(name) = rest.strip_suffix("]]") else {
                return Err(format!(
                    "line {}: unterminated subsection header {line:?}",
                    i + 1
                ));
            };
            sub = name.trim().to_string();
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let Some(name) = rest.strip_suffix(']') else {
                return Err(format!(
                    "line {}: unterminated section header {line:?}",
                    i + 1
                ));
            };
            section = name.trim().to_string();
            sub.clear();
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!(
                "line {}: expected `key = value`, found {line:?}",
                i + 1
            ));
        };
        let (key, value) = (unquote(key.trim()), unquote(value.trim()));
        match (section.as_str(), sub.as_str()) {
            ("", _) => conf.top.insert(key, value),
            ("renewalparams", "") => conf.params.insert(key, value),
            ("renewalparams", "webroot_map") => conf.webroot_map.insert(key, value),
            _ => None, // sections certbot does not write for renewal: ignored
        };
    }
    Ok(conf)
}

fn unquote(s: &str) -> String {
    for q in ['"', '\''] {
        if s.len() >= 2 && s.starts_with(q) && s.ends_with(q) {
            return s[1..s.len() - 1].to_string();
        }
    }
    s.to_string()
}

/// A configobj list (`a, b,` or a single `a`).
fn split_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(|s| unquote(s.trim()))
        .filter(|s| !s.is_empty())
        .collect()
}

/// certkeeper's issuer name and `directory` value for a certbot `server` URL.
pub fn issuer_for_server(server: &str) -> (String, String) {
    let server = server.trim_end_matches('/');
    if server == LE_PRODUCTION {
        return ("letsencrypt".into(), "letsencrypt".into());
    }
    if server == LE_STAGING {
        return ("letsencrypt-staging".into(), "letsencrypt-staging".into());
    }
    let host = server
        .split_once("://")
        .map_or(server, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or("");
    let safe: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    (format!("certbot-{safe}"), server.to_string())
}

/// certbot's `renew_before_expiry` (`30 days`, `2 weeks`, `12 hours`) as a certkeeper duration.
fn renew_before(v: &str) -> Option<String> {
    let mut it = v.split_whitespace();
    let n: u64 = it.next()?.parse().ok()?;
    let unit = it.next().unwrap_or("days");
    let d = match unit.trim_end_matches('s') {
        "day" | "d" => format!("{n}d"),
        "week" | "w" => format!("{}d", n * 7),
        "month" => format!("{}d", n * 30),
        "hour" | "h" => format!("{n}h"),
        "minute" | "min" | "m" => format!("{n}m"),
        _ => return None,
    };
    Some(d)
}

/// The key type certbot's conf asks for, in certkeeper's words.
fn conf_key_type(conf: &RenewalConf) -> Option<String> {
    match conf.param("key_type").unwrap_or("rsa") {
        "rsa" => Some(format!(
            "rsa-{}",
            conf.param("rsa_key_size").unwrap_or("2048")
        )),
        "ecdsa" => match conf.param("elliptic_curve").unwrap_or("secp256r1") {
            "secp256r1" => Some("ecdsa-p256".into()),
            "secp384r1" => Some("ecdsa-p384".into()),
            _ => None,
        },
        _ => None,
    }
}

/// One lineage, planned: the files to write and what to say.
#[derive(Clone, Debug)]
pub struct Lineage {
    /// The lineage (and certkeeper certificate) name.
    pub name: String,
    /// certbot's renewal conf.
    pub conf_path: PathBuf,
    /// The issuer name.
    pub issuer: String,
    /// The issuer's `directory` value.
    pub directory: String,
    /// certbot's `server` URL.
    pub server: String,
    /// certbot's account id (`account` in renewalparams).
    pub account: Option<String>,
    /// `conf.d/certbot-<lineage>.toml` text.
    pub cert_toml: String,
    /// The `[[issuer.X.solver]]` blocks for this lineage.
    pub solver_toml: String,
    /// A generated DNS hook wrapper: its path and text.
    pub hook_script: Option<(PathBuf, String)>,
    /// A TSIG secret moved out of certbot's rfc2136 credentials: its file and text.
    pub secret: Option<(PathBuf, String)>,
    /// The webroot solvers' document roots.
    pub webroots: Vec<PathBuf>,
    /// Things the user must do or know.
    pub notes: Vec<String>,
    /// `<certbot-dir>/live/<lineage>`.
    pub live_dir: PathBuf,
}

/// The certificate file of lineage `name` in `conf_d`.
fn cert_file(conf_d: &Path, name: &str) -> PathBuf {
    conf_d.join(format!("certbot-{name}.toml"))
}

/// What one lineage is planned from.
#[derive(Clone, Copy, Debug)]
pub struct LineageInput<'a> {
    /// The lineage name.
    pub name: &'a str,
    /// certbot's renewal conf (its path without `.migrated`).
    pub conf_path: &'a Path,
    /// The parsed conf.
    pub conf: &'a RenewalConf,
    /// certbot's config directory.
    pub certbot_dir: &'a Path,
    /// certkeeper's `conf.d/`.
    pub conf_d: &'a Path,
    /// What the live pair says.
    pub live: &'a LiveFacts,
    /// The executables in `renewal-hooks/deploy/`.
    pub deploy_hooks: &'a [PathBuf],
    /// For dns-rfc2136: the text of its `dns_rfc2136_credentials` file.
    pub rfc2136_ini: Option<&'a str>,
}

/// The solver blocks of one lineage and the files they need.
#[derive(Default)]
struct Solvers {
    toml: String,
    hook_script: Option<(PathBuf, String)>,
    secret: Option<(PathBuf, String)>,
    webroots: Vec<PathBuf>,
}

/// Plan one lineage: its certificate file, solver blocks and the files they need.
pub fn plan_lineage(input: &LineageInput<'_>) -> Result<Lineage, String> {
    let LineageInput {
        name, conf, live, ..
    } = *input;
    let server = conf.param("server").unwrap_or(LE_PRODUCTION).to_string();
    let (issuer, directory) = issuer_for_server(&server);
    let live_dir = input.certbot_dir.join("live").join(name);
    if live.names.is_empty() {
        return Err(format!(
            "{name}: the live certificate has no DNS names or IP addresses"
        ));
    }
    let mut notes = Vec::new();
    let key = lineage_key(name, conf, live, &mut notes)?;
    let solvers = plan_solvers(input, &issuer, &mut notes);
    let reload = reload_commands(conf, &live_dir, &live.names, input.deploy_hooks, &mut notes);
    let renew_before = conf
        .top
        .get("renew_before_expiry")
        .or(conf.params.get("renew_before_expiry"))
        .and_then(|rb| {
            let d = renew_before(rb);
            if d.is_none() {
                notes.push(format!(
                    "renew_before_expiry {rb:?} not understood: left to the default"
                ));
            }
            d
        });

    let mut t = String::new();
    let _ = writeln!(
        t,
        "# Migrated from certbot by `certkeeper migrate certbot` ({}).",
        input.conf_path.display()
    );
    for n in &notes {
        let _ = writeln!(t, "# NOTE: {n}");
    }
    let _ = writeln!(t, "[certificate.{}]", q(name));
    let _ = writeln!(t, "issuer = {}", q(&issuer));
    let _ = writeln!(t, "domains = {}", q_list(&live.names));
    let _ = writeln!(t, "key = {}", q(&key));
    if let Some(d) = renew_before {
        let _ = writeln!(t, "renew_before = {}", q(&d));
    }
    if let Some(c) = conf.param("preferred_chain") {
        let _ = writeln!(t, "preferred_chain = {}", q(c));
    }
    // certbot 4: `--preferred-profile` / `--required-profile`.
    if let Some(p) = conf
        .param("required_profile")
        .or(conf.param("preferred_profile"))
    {
        let _ = writeln!(t, "profile = {}", q(p));
    }
    let _ = writeln!(
        t,
        "output = {{ dir = {} }}",
        q(&live_dir.display().to_string())
    );
    if !reload.is_empty() {
        let _ = writeln!(t, "reload = {}", q_list(&reload));
    }
    Ok(Lineage {
        name: name.to_string(),
        conf_path: input.conf_path.to_path_buf(),
        issuer,
        directory,
        server,
        account: conf.param("account").map(str::to_string),
        cert_toml: t,
        solver_toml: solvers.toml,
        hook_script: solvers.hook_script,
        secret: solvers.secret,
        webroots: solvers.webroots,
        notes,
        live_dir,
    })
}

/// The key type: the live key's (so the live pair is adopted), else the one certbot's conf asks for.
fn lineage_key(
    name: &str,
    conf: &RenewalConf,
    live: &LiveFacts,
    notes: &mut Vec<String>,
) -> Result<String, String> {
    match (&live.key_type, conf_key_type(conf)) {
        (Some(k), Some(w)) if *k != w => {
            notes.push(format!(
                "the live key is {k} but certbot's conf asks for {w}; kept {k} so the live pair is adopted (change `key` to get {w} at the next renewal)"
            ));
            Ok(k.clone())
        }
        (Some(k), _) => Ok(k.clone()),
        (None, Some(w)) => Ok(w),
        (None, None) => Err(format!(
            "{name}: cannot tell the key type (live key unreadable, key_type {:?})",
            conf.param("key_type")
        )),
    }
}

/// certbot's authenticator as solver blocks of `issuer`, selected by the lineage's names.
fn plan_solvers(input: &LineageInput<'_>, issuer: &str, notes: &mut Vec<String>) -> Solvers {
    let LineageInput {
        name, conf, live, ..
    } = *input;
    let names = &live.names;
    let authenticator = conf.param("authenticator").unwrap_or("standalone");
    let head = |n: &[String]| {
        format!(
            "[[issuer.{}.solver]]\nselector = {{ dns_names = {} }}\n",
            q(issuer),
            q_list(n)
        )
    };
    let mut out = Solvers::default();
    let _ = writeln!(
        out.toml,
        "# lineage {name}: certbot authenticator {authenticator}"
    );
    match authenticator {
        "standalone" => {
            let _ = writeln!(out.toml, "{}http01 = {{}}", head(names));
            notes.push(standalone_note(conf));
        }
        "webroot" => {
            for (path, ns) in webroot_paths(conf, names, notes) {
                let _ = writeln!(out.toml, "{}webroot = {{ path = {} }}", head(&ns), q(&path));
                out.webroots.push(PathBuf::from(path));
            }
        }
        "manual"
            if conf.param("manual_auth_hook").is_some()
                && conf.param("pref_challs").is_some_and(|p| p.contains("dns")) =>
        {
            let script = input.conf_d.join(format!("certbot-{name}-dns-hook.sh"));
            let _ = write!(
                out.toml,
                "{}dns01 = {{ provider = \"exec\", command = {} }}\n\
                 # certbot did not wait for the record either; `check = true` waits for the zone's nameservers\n\
                 propagation = {{ check = false }}\n",
                head(names),
                q(&script.display().to_string())
            );
            out.hook_script = Some((script, dns_wrapper(name, conf, names)));
        }
        "dns-rfc2136" if input.rfc2136_ini.is_some() => {
            let ini = input.rfc2136_ini.unwrap_or_default();
            match rfc2136_solver(name, input.conf_d, ini) {
                Ok((dns01, server, key_file, key)) => {
                    let _ = writeln!(out.toml, "{}dns01 = {dns01}", head(names));
                    // certbot's plugin found the zone by asking this server, and waited blindly.
                    let _ = writeln!(
                        out.toml,
                        "# the zone is found and the record checked at certbot's server; `nameservers = []`: at the zone's nameservers\n\
                         propagation = {{ nameservers = {} }}",
                        q_list(std::slice::from_ref(&server))
                    );
                    out.secret = Some((key_file, key));
                }
                Err(why) => {
                    let why = format!("certbot's dns-rfc2136 settings were not converted ({why})");
                    out.toml.push_str(&unmapped(&why, &head(names)));
                    notes.push(format!(
                        "{why}: fill in the commented solver in {ISSUERS_FILE}"
                    ));
                }
            }
        }
        other => {
            let why = format!("certbot authenticator {other:?} has no automatic mapping");
            out.toml.push_str(&unmapped(&why, &head(names)));
            notes.push(format!(
                "certbot authenticator {other:?} was not mapped: fill in the commented solver in {ISSUERS_FILE} before the certificate is due"
            ));
        }
    }
    out
}

/// A commented solver block saying why and what to fill in.
fn unmapped(why: &str, head: &str) -> String {
    let example = format!(
        "{head}dns01 = {{ provider = \"rfc2136\", server = \"...\", tsig_key = \"...\", tsig_algorithm = \"hmac-sha256\", tsig_secret_file = \"...\" }}\n"
    );
    let mut t = format!("# {why}: add a solver for these names, e.g.\n");
    for line in example.lines() {
        let _ = writeln!(t, "# {line}");
    }
    t
}

/// Where certbot's standalone server listened, and what to set in certkeeper.
fn standalone_note(conf: &RenewalConf) -> String {
    let addr = match conf.param("http01_address") {
        Some(a) if a.contains(':') => format!("[{a}]"),
        Some(a) => a.to_string(),
        None => "[::]".to_string(),
    };
    match conf.param("http01_port") {
        Some(port) if port != "80" => format!(
            "certbot's standalone listened on port {port}: set `[http01] listen = [\"{addr}:{port}\"]` in the main config"
        ),
        _ => "certbot's standalone listened on port 80: either set `[http01] listen = [\"[::]:80\"]` in the main config (under systemd the daemon then needs CAP_NET_BIND_SERVICE, see the unit's Capabilities section), or have nginx proxy /.well-known/acme-challenge/ to certkeeper's listener (127.0.0.1:8402 by default)".into(),
    }
}

/// The names per document root, from `webroot_map` (or the single `webroot_path`).
fn webroot_paths(
    conf: &RenewalConf,
    names: &[String],
    notes: &mut Vec<String>,
) -> BTreeMap<String, Vec<String>> {
    let fallback = conf
        .param("webroot_path")
        .map(split_list)
        .unwrap_or_default();
    let mut by_path: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for n in names {
        let path = conf
            .webroot_map
            .get(n)
            .cloned()
            .or_else(|| (fallback.len() == 1).then(|| fallback[0].clone()));
        match path {
            Some(p) => by_path.entry(p).or_default().push(n.clone()),
            None => notes.push(format!(
                "no webroot path for {n} in certbot's webroot_map: add a webroot solver for it to {ISSUERS_FILE}"
            )),
        }
    }
    by_path
}

/// certbot's deploy hooks (`renew_hook`, `post_hook`, `renewal-hooks/deploy/*`) as reload commands
/// that see `RENEWED_LINEAGE` and `RENEWED_DOMAINS` as with certbot.
fn reload_commands(
    conf: &RenewalConf,
    live_dir: &Path,
    names: &[String],
    deploy_hooks: &[PathBuf],
    notes: &mut Vec<String>,
) -> Vec<String> {
    let env = format!(
        "export RENEWED_LINEAGE={} RENEWED_DOMAINS={};",
        sh_quote(&live_dir.display().to_string()),
        sh_quote(&names.join(" "))
    );
    let mut reload = Vec::new();
    for key in ["renew_hook", "post_hook"] {
        if let Some(h) = conf.param(key) {
            reload.push(format!("{env} {h}"));
        }
    }
    for h in deploy_hooks {
        reload.push(format!("{env} {}", sh_quote(&h.display().to_string())));
    }
    if let Some(h) = conf.param("pre_hook") {
        notes.push(format!("certbot's pre_hook ({h}) is not run by certkeeper"));
    }
    reload
}

/// certbot's dns-rfc2136 credentials (`dns_rfc2136_server`, `_port`, `_name`, `_secret`,
/// `_algorithm`) as an rfc2136 `dns01` table, the server's `ip:port`, the file the secret moves to
/// and its text.
fn rfc2136_solver(
    name: &str,
    conf_d: &Path,
    ini: &str,
) -> Result<(String, String, PathBuf, String), String> {
    let ini = parse_renewal_conf(ini)?.top;
    let get = |k: &str| {
        ini.get(&format!("dns_rfc2136_{k}"))
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("no dns_rfc2136_{k}"))
    };
    let (server, key, secret) = (get("server")?, get("name")?, get("secret")?);
    let port = ini.get("dns_rfc2136_port").map_or("53", String::as_str);
    // certbot-dns-rfc2136's default algorithm is HMAC-MD5, which certkeeper does not speak.
    let algorithm = ini
        .get("dns_rfc2136_algorithm")
        .map_or("hmac-md5".to_string(), |a| a.to_ascii_lowercase());
    if !matches!(
        algorithm.as_str(),
        "hmac-sha256" | "hmac-sha384" | "hmac-sha512"
    ) {
        return Err(format!(
            "TSIG algorithm {algorithm} is not supported: create an hmac-sha256 key on the DNS server"
        ));
    }
    let addr = if server.contains(':') {
        format!("[{server}]:{port}")
    } else {
        format!("{server}:{port}")
    };
    let key_file = conf_d.join(format!("certbot-{name}-tsig.key"));
    let table = format!(
        "{{ provider = \"rfc2136\", server = {}, tsig_key = {}, tsig_algorithm = {}, tsig_secret_file = {} }}",
        q(&addr),
        q(key),
        q(&algorithm),
        q(&key_file.display().to_string())
    );
    Ok((table, addr, key_file, format!("{secret}\n")))
}

/// The exec-provider wrapper that runs certbot's manual hooks with certbot's environment.
fn dns_wrapper(name: &str, conf: &RenewalConf, names: &[String]) -> String {
    let auth = conf.param("manual_auth_hook").unwrap_or("true");
    let cleanup = conf.param("manual_cleanup_hook").unwrap_or("true");
    format!(
        "#!/bin/sh\n\
         # Generated by `certkeeper migrate certbot` for lineage {name}: runs certbot's manual hooks\n\
         # as certkeeper's exec dns01 provider (`present|cleanup FQDN VALUE`).\n\
         set -e\n\
         domain=${{2%.}}\n\
         domain=${{domain#_acme-challenge.}}\n\
         CERTBOT_DOMAIN=$domain CERTBOT_VALIDATION=$3 CERTBOT_ALL_DOMAINS={all} CERTBOT_REMAINING_CHALLENGES=0\n\
         export CERTBOT_DOMAIN CERTBOT_VALIDATION CERTBOT_ALL_DOMAINS CERTBOT_REMAINING_CHALLENGES\n\
         case \"$1\" in\n\
         present) exec /bin/sh -c {auth} ;;\n\
         cleanup) exec /bin/sh -c {cleanup} ;;\n\
         *) echo \"usage: $0 present|cleanup FQDN VALUE\" >&2; exit 2 ;;\n\
         esac\n",
        all = sh_quote(&names.join(",")),
        auth = sh_quote(auth),
        cleanup = sh_quote(cleanup),
    )
}

/// certbot's account key (a JWK, RSA) as PKCS#8 PEM, and its size in bits.
pub fn jwk_to_pem(jwk: &serde_json::Value) -> Result<(String, u32), String> {
    use base64::Engine as _;
    if jwk.get("kty").and_then(|v| v.as_str()) != Some("RSA") {
        return Err(format!(
            "only RSA account keys are converted (kty {:?})",
            jwk.get("kty")
        ));
    }
    let part = |k: &str| -> Result<openssl::bn::BigNum, String> {
        let s = jwk
            .get(k)
            .and_then(|v| v.as_str())
            .ok_or_else(|| format!("the JWK has no {k:?}"))?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s.trim_end_matches('='))
            .map_err(|e| format!("JWK {k:?}: {e}"))?;
        openssl::bn::BigNum::from_slice(&bytes).map_err(|e| format!("JWK {k:?}: {e}"))
    };
    let rsa = openssl::rsa::Rsa::from_private_components(
        part("n")?,
        part("e")?,
        part("d")?,
        part("p")?,
        part("q")?,
        part("dp")?,
        part("dq")?,
        part("qi")?,
    )
    .map_err(|e| e.to_string())?;
    if !rsa.check_key().unwrap_or(false) {
        return Err("the JWK's RSA components do not form a valid key".into());
    }
    let bits = rsa.size() * 8;
    let pkey = PKey::from_rsa(rsa).map_err(|e| e.to_string())?;
    let pem = pkey.private_key_to_pem_pkcs8().map_err(|e| e.to_string())?;
    Ok((String::from_utf8(pem).map_err(|e| e.to_string())?, bits))
}

/// certbot's account for `server` and `id`: the key PEM, its bits, the account URL and contacts.
#[derive(Clone, Debug)]
pub struct CertbotAccount {
    /// PKCS#8 PEM of the account key.
    pub key_pem: String,
    /// RSA modulus size.
    pub bits: u32,
    /// The account URL (`uri` in regr.json).
    pub url: String,
    /// Contacts from regr.json's body, when certbot kept them.
    pub contact: Vec<String>,
}

/// Read `accounts/<server without scheme>/<id>/{private_key.json,regr.json}`.
pub fn read_account(certbot_dir: &Path, server: &str, id: &str) -> Result<CertbotAccount, String> {
    let rel = server
        .split_once("://")
        .map_or(server, |(_, r)| r)
        .trim_end_matches('/');
    let dir = certbot_dir.join("accounts").join(rel).join(id);
    let json = |f: &str| -> Result<serde_json::Value, String> {
        let p = dir.join(f);
        let text =
            std::fs::read_to_string(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))
    };
    let (key_pem, bits) = jwk_to_pem(&json("private_key.json")?)
        .map_err(|e| format!("{}: {e}", dir.join("private_key.json").display()))?;
    let regr = json("regr.json")?;
    let url = regr
        .get("uri")
        .and_then(|v| v.as_str())
        .ok_or_else(|| format!("{}: no \"uri\"", dir.join("regr.json").display()))?
        .to_string();
    let contact = super::common::contacts_at(&regr, "/body/contact");
    Ok(CertbotAccount {
        key_pem,
        bits,
        url,
        contact,
    })
}

/// Executable files in `renewal-hooks/<kind>/`, sorted (certbot runs them in that order).
fn hook_dir(certbot_dir: &Path, kind: &str) -> Vec<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut hooks: Vec<PathBuf> = std::fs::read_dir(certbot_dir.join("renewal-hooks").join(kind))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .collect();
    hooks.sort();
    hooks
}

/// The hooks that become reload commands of every lineage: `renewal-hooks/deploy/*`, then
/// `renewal-hooks/post/*` (certbot runs those after renewals, typically to reload a server).
fn deploy_hooks(certbot_dir: &Path) -> Vec<PathBuf> {
    let mut hooks = hook_dir(certbot_dir, "deploy");
    hooks.extend(hook_dir(certbot_dir, "post"));
    hooks
}

/// The renewal confs: `(lineage, path, already migrated)`, sorted by lineage.
fn renewal_confs(certbot_dir: &Path) -> Result<Vec<(String, PathBuf, bool)>, String> {
    let dir = certbot_dir.join("renewal");
    let entries =
        std::fs::read_dir(&dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut out = Vec::new();
    for e in entries.flatten() {
        let p = e.path();
        let Some(file) = p.file_name().and_then(|f| f.to_str()) else {
            continue;
        };
        if let Some(n) = file.strip_suffix(".conf") {
            out.push((n.to_string(), p.clone(), false));
        } else if let Some(n) = file.strip_suffix(".conf.migrated") {
            out.push((n.to_string(), p.clone(), true));
        }
    }
    out.sort();
    Ok(out)
}

/// The issuers file: one issuer per server, with every lineage's solver blocks. `ca_bundle` is
/// certbot's `REQUESTS_CA_BUNDLE`, used for CAs other than Let's Encrypt.
fn issuers_toml(
    lineages: &[&Lineage],
    account_bits: &BTreeMap<String, u32>,
    ca_bundle: Option<&str>,
) -> String {
    let mut t = String::from(
        "# Generated by `certkeeper migrate certbot`; rebuilt from certbot's renewal confs (migrated ones\n\
         # included) by every run. Edit it freely once the migration is done.\n",
    );
    let mut done = Vec::new();
    for l in lineages {
        if done.contains(&l.issuer) {
            continue;
        }
        done.push(l.issuer.clone());
        let _ = write!(
            t,
            "\n[issuer.{}]\ndirectory = {}\n",
            q(&l.issuer),
            q(&l.directory)
        );
        if let Some(bits) = account_bits.get(&l.issuer) {
            let _ = writeln!(
                t,
                "account_key = {}  # certbot's account key",
                q(&format!("rsa-{bits}"))
            );
        }
        if !l.directory.starts_with("letsencrypt") {
            match ca_bundle {
                Some(b) => {
                    let _ = writeln!(t, "ca_bundle = {}  # certbot's REQUESTS_CA_BUNDLE", q(b));
                }
                None => {
                    let _ = writeln!(
                        t,
                        "# ca_bundle = \"/path/to/ca.pem\"  # when the CA's TLS certificate is not publicly trusted"
                    );
                }
            }
        }
        for m in lineages.iter().filter(|m| m.issuer == l.issuer) {
            let _ = write!(t, "\n{}", m.solver_toml);
        }
    }
    t
}

/// A lineage to adopt, with what was read of it on certbot's side (as root, before any switch).
struct Adopt<'a> {
    lineage: &'a Lineage,
    key_pem: Vec<u8>,
    /// The leaf followed by its chain.
    chain_pem: Vec<u8>,
    /// certbot's links in `live/<lineage>/` (file, target), for the undo.
    links: Vec<(String, PathBuf)>,
    /// The owner of `live/<lineage>/` before it was handed to certkeeper's user.
    live_uid: Option<u32>,
}

impl<'a> Adopt<'a> {
    fn read(lineage: &'a Lineage) -> Result<Self, String> {
        let live = &lineage.live_dir;
        let read = |f: &str| {
            let p = live.join(f);
            std::fs::read(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))
        };
        let key_pem = read("privkey.pem")?;
        let mut chain_pem = read("cert.pem")?;
        if !chain_pem.ends_with(b"\n") {
            chain_pem.push(b'\n');
        }
        chain_pem.extend_from_slice(&read("chain.pem")?);
        let links = LIVE_FILES
            .iter()
            .filter_map(|f| {
                std::fs::read_link(live.join(f))
                    .ok()
                    .map(|t| (f.to_string(), t))
            })
            .collect();
        Ok(Self {
            lineage,
            key_pem,
            chain_pem,
            links,
            live_uid: None,
        })
    }

    /// Every conf.d file written for this lineage alone.
    fn own_files(&self, conf_d: &Path) -> Vec<PathBuf> {
        let l = self.lineage;
        let mut files = vec![cert_file(conf_d, &l.name)];
        files.extend(l.hook_script.iter().map(|(p, _)| p.clone()));
        files.extend(l.secret.iter().map(|(p, _)| p.clone()));
        files
    }

    /// The undo commands.
    fn undo(&self, conf_d: &Path) -> String {
        let l = self.lineage;
        let mut cmds = vec![format!(
            "mv {} {}",
            sh_quote(&format!("{}.migrated", l.conf_path.display())),
            sh_quote(&l.conf_path.display().to_string())
        )];
        let rm: Vec<String> = self
            .own_files(conf_d)
            .iter()
            .map(|p| sh_quote(&p.display().to_string()))
            .collect();
        cmds.push(format!("rm {}", rm.join(" ")));
        for (f, target) in &self.links {
            cmds.push(format!(
                "ln -sfn {} {}",
                sh_quote(&target.display().to_string()),
                sh_quote(&l.live_dir.join(f).display().to_string())
            ));
        }
        if let Some(uid) = self.live_uid {
            cmds.push(format!(
                "chown {uid} {}",
                sh_quote(&l.live_dir.display().to_string())
            ));
        }
        cmds.join(" && ")
    }
}

/// Every renewal conf planned (`(lineage, already migrated)`), failures added to `failed`.
fn plan_all(
    certbot_dir: &Path,
    conf_d: &Path,
    failed: &mut Vec<String>,
) -> Result<Vec<(Lineage, bool)>, String> {
    let hooks = deploy_hooks(certbot_dir);
    for h in hook_dir(certbot_dir, "pre") {
        failed.push(format!(
            "{} (a certbot pre hook) is not run by certkeeper",
            h.display()
        ));
    }
    let mut all = Vec::new();
    for (name, path, migrated) in renewal_confs(certbot_dir)? {
        let planned = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
            .and_then(|text| {
                parse_renewal_conf(&text).map_err(|e| format!("{}: {e}", path.display()))
            })
            .and_then(|conf| {
                let live_dir = certbot_dir.join("live").join(&name);
                let live = pair_facts(&live_dir.join("cert.pem"), &live_dir.join("privkey.pem"))?;
                let conf_path = if migrated {
                    path.with_extension("")
                } else {
                    path.clone()
                };
                let ini = match conf.param("dns_rfc2136_credentials") {
                    Some(p) if conf.param("authenticator") == Some("dns-rfc2136") => Some(
                        std::fs::read_to_string(p).map_err(|e| format!("cannot read {p}: {e}"))?,
                    ),
                    _ => None,
                };
                plan_lineage(&LineageInput {
                    name: &name,
                    conf_path: &conf_path,
                    conf: &conf,
                    certbot_dir,
                    conf_d,
                    live: &live,
                    deploy_hooks: &hooks,
                    rfc2136_ini: ini.as_deref(),
                })
            });
        match planned {
            Ok(l) => all.push((l, migrated)),
            Err(e) => failed.push(format!("{name}: not migrated: {e}")),
        }
    }
    Ok(all)
}

/// certbot's account per issuer: the one of the first lineage that names a readable one.
fn read_accounts(
    certbot_dir: &Path,
    all: &[(Lineage, bool)],
    failed: &mut Vec<String>,
) -> BTreeMap<String, (String, CertbotAccount)> {
    let mut accounts = BTreeMap::new();
    for (l, _) in all {
        if accounts.contains_key(&l.issuer) {
            continue;
        }
        if let Some(id) = &l.account {
            match read_account(certbot_dir, &l.server, id) {
                Ok(a) => {
                    accounts.insert(l.issuer.clone(), (id.clone(), a));
                }
                Err(e) => failed.push(format!(
                    "{}: certbot's account not adopted ({e}); a new one is registered at the first renewal",
                    l.name
                )),
            }
        }
    }
    accounts
}

fn dry_run_report(
    conf_d: &Path,
    issuers: &str,
    todo: &[&Lineage],
    accounts: &BTreeMap<String, (String, CertbotAccount)>,
    failed: &[String],
) -> String {
    let mut report = String::from("# --dry-run: nothing written, imported or renamed\n\n");
    let _ = writeln!(
        report,
        "# ---- {} ----\n{issuers}",
        conf_d.join(ISSUERS_FILE).display()
    );
    for l in todo {
        let _ = writeln!(
            report,
            "# ---- {} ----\n{}",
            cert_file(conf_d, &l.name).display(),
            l.cert_toml
        );
        if let Some((p, text)) = &l.hook_script {
            let _ = writeln!(report, "# ---- {} (mode 0755) ----\n{text}", p.display());
        }
        if let Some((p, _)) = &l.secret {
            let _ = writeln!(
                report,
                "# would move certbot's TSIG secret to {} (mode 0640, group of the state directory's owner)",
                p.display()
            );
        }
        let _ = writeln!(
            report,
            "# would import the live pair of {} into {} and rename {} to .conf.migrated\n",
            l.name,
            l.live_dir.display(),
            l.conf_path.display()
        );
    }
    for (issuer, (id, a)) in accounts {
        let _ = writeln!(
            report,
            "# would adopt certbot account {id} ({}) as the account of issuer {issuer}",
            a.url
        );
    }
    for f in failed {
        let _ = writeln!(report, "# {f}");
    }
    report
}

/// The `conf.d/` files of the migration: the issuers, then each lineage's certificate, hook wrapper
/// and moved secret.
fn conf_files(conf_d: &Path, issuers: &str, adopt: &[Adopt<'_>]) -> Vec<ConfFile> {
    let mut files = vec![(conf_d.join(ISSUERS_FILE), issuers.to_string(), 0o644)];
    for l in adopt.iter().map(|a| a.lineage) {
        files.push((cert_file(conf_d, &l.name), l.cert_toml.clone(), 0o644));
        if let Some((p, text)) = &l.hook_script {
            files.push((p.clone(), text.clone(), 0o755));
        }
        if let Some((p, text)) = &l.secret {
            files.push((p.clone(), text.clone(), 0o600));
        }
    }
    files
}

/// Hand what the daemon will write to the state directory's owner (see [`adopt::HandOver`]).
fn hand_over(
    certbot_dir: &Path,
    adopt: &mut [Adopt<'_>],
    hand: &mut HandOver<'_>,
) -> Result<(), String> {
    hand.traversable(certbot_dir)?;
    hand.traversable(&certbot_dir.join("live"))?;
    for a in adopt.iter_mut() {
        let l = a.lineage;
        a.live_uid = hand.give_dir(&l.live_dir)?;
        for root in &l.webroots {
            hand.give_webroot(root)?;
        }
        if let Some((p, _)) = &l.secret {
            hand.share_secret(p)?;
        }
    }
    Ok(())
}

/// What the daemon's unit must allow, and who runs the hooks now.
fn closing_words(certbot_dir: &Path, adopt: &[Adopt<'_>], switched: bool) -> String {
    let mut rw = vec![certbot_dir.join("live")];
    for p in adopt.iter().flat_map(|a| &a.lineage.webroots) {
        if !rw.contains(p) {
            rw.push(p.clone());
        }
    }
    let rw: Vec<String> = rw.iter().map(|p| p.display().to_string()).collect();
    let mut t = format!(
        "The daemon writes {}: under systemd, allow it with `systemctl edit certkeeper`:\n  [Service]\n  ReadWritePaths={}\n",
        rw.join(" and "),
        rw.join(" ")
    );
    if switched {
        t.push_str("Reload commands and certbot's manual hooks now run as the daemon's user, not root: see README.systemd.md for letting it reload nginx.\n");
    }
    t.push_str(
        "Check with `certkeeper check`, then `systemctl restart certkeeper` (a changed unit needs a restart).\n",
    );
    t
}

/// Run the migration (or print it with `dry_run`); returns the report to print.
///
/// Run as root on a state directory that belongs to certkeeper's user, the files end up owned as
/// the daemon needs them (see [`adopt`]): certbot's side is read as root, `conf.d/` written as root,
/// the state and the imported pairs written as the state directory's owner, and certbot's renewal
/// confs renamed as root.
pub fn migrate(config_path: &Path, opts: &CertbotOptions) -> Result<String, String> {
    let certbot_dir = &opts.certbot_dir;
    let conf_d = conf_d(config_path);
    let mut failed = Vec::new();
    let all = plan_all(certbot_dir, &conf_d, &mut failed)?;
    let todo: Vec<&Lineage> = all.iter().filter(|(_, m)| !*m).map(|(l, _)| l).collect();
    if todo.is_empty() {
        failed.push(format!(
            "nothing to migrate: no renewal/*.conf in {} could be adopted",
            certbot_dir.display()
        ));
        return Err(failed.join("\n"));
    }
    let accounts = read_accounts(certbot_dir, &all, &mut failed);
    let bits = accounts
        .iter()
        .map(|(i, (_, a))| (i.clone(), a.bits))
        .collect();
    let every: Vec<&Lineage> = all.iter().map(|(l, _)| l).collect();
    let ca_bundle = std::env::var("REQUESTS_CA_BUNDLE")
        .ok()
        .filter(|v| !v.is_empty());
    let issuers = issuers_toml(&every, &bits, ca_bundle.as_deref());
    if opts.dry_run {
        return Ok(dry_run_report(&conf_d, &issuers, &todo, &accounts, &failed));
    }
    let mut adopt = Vec::new();
    for l in todo {
        match Adopt::read(l) {
            Ok(a) => adopt.push(a),
            Err(e) => failed.push(format!("{}: not migrated: {e}", l.name)),
        }
    }
    if adopt.is_empty() {
        return Err(failed.join("\n"));
    }

    let (cfg, written) =
        adopt::write_and_load(config_path, &conf_files(&conf_d, &issuers, &adopt))?;
    let owner = crate::privileges::state_owner(&cfg.state_dir).map_err(|e| e.to_string());
    let owner = match owner {
        Ok(o) => o,
        Err(e) => {
            written.restore();
            return Err(e);
        }
    };
    let mut hand = HandOver::new(owner.as_ref());
    if let Err(e) = hand_over(certbot_dir, &mut adopt, &mut hand) {
        written.restore();
        return Err(format!("{e}; nothing was migrated"));
    }

    let mut report = String::new();
    let to_adopt: Vec<AccountToAdopt> = accounts
        .iter()
        .map(|(issuer, (id, a))| AccountToAdopt {
            issuer: issuer.clone(),
            label: format!("certbot's {id}"),
            key_pem: a.key_pem.clone(),
            url: a.url.clone(),
            contact: a.contact.clone(),
        })
        .collect();
    let imported = adopt::as_state_owner(&Arc::new(cfg), owner.as_ref(), |rt| {
        for a in &to_adopt {
            match adopt::adopt_account(rt, a) {
                Ok(line) => {
                    let _ = writeln!(report, "{line}");
                }
                Err(e) => failed.push(e),
            }
        }
        adopt
            .iter()
            .map(|a| adopt::import_served(rt, &a.lineage.name, &a.key_pem, &a.chain_pem))
            .collect::<Vec<_>>()
    })?;

    for n in &hand.done {
        let _ = writeln!(report, "{n}");
    }
    for (a, result) in adopt.iter().zip(imported) {
        let l = a.lineage;
        match result {
            Ok(i) => {
                let migrated = PathBuf::from(format!("{}.migrated", l.conf_path.display()));
                if let Err(e) = std::fs::rename(&l.conf_path, &migrated) {
                    failed.push(format!(
                        "{}: imported, but renaming {} failed ({e}): rename it by hand, or certbot renews it too",
                        l.name,
                        l.conf_path.display()
                    ));
                }
                let _ = writeln!(
                    report,
                    "{}: imported serial {} (valid until {}) in {}; {}",
                    l.name,
                    i.serial,
                    i.not_after,
                    l.live_dir.display(),
                    i.due
                );
                for n in &l.notes {
                    let _ = writeln!(report, "  note: {n}");
                }
                let _ = writeln!(report, "  undo: {}", a.undo(&conf_d));
            }
            Err(e) => {
                for p in a.own_files(&conf_d) {
                    let _ = std::fs::remove_file(p);
                }
                if let Some(uid) = a.live_uid {
                    hand.take_back(&l.live_dir, uid);
                }
                failed.push(format!(
                    "{}: not migrated (certbot still renews it): {e}",
                    l.name
                ));
            }
        }
    }
    for f in &failed {
        let _ = writeln!(report, "warning: {f}");
    }
    report.push_str(&closing_words(certbot_dir, &adopt, owner.is_some()));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store;

    const STANDALONE: &str = "\
# renew_before_expiry = 30 days
version = 2.9.0
archive_dir = /etc/letsencrypt/archive/www.example.com
cert = /etc/letsencrypt/live/www.example.com/cert.pem
privkey = /etc/letsencrypt/live/www.example.com/privkey.pem
chain = /etc/letsencrypt/live/www.example.com/chain.pem
fullchain = /etc/letsencrypt/live/www.example.com/fullchain.pem

# Options used in the renewal process
[renewalparams]
account = 0123456789abcdef0123456789abcdef
authenticator = standalone
server = https://acme-staging-v02.api.letsencrypt.org/directory
key_type = ecdsa
http01_port = 5002
renew_hook = systemctl reload nginx
";

    const WEBROOT: &str = "\
renew_before_expiry = 2 weeks
cert = /etc/letsencrypt/live/site/cert.pem
[renewalparams]
account = abc
authenticator = webroot
webroot_path = /var/www/a, /var/www/b,
server = https://acme-v02.api.letsencrypt.org/directory
key_type = rsa
rsa_key_size = 4096
preferred_chain = \"ISRG Root X1\"
[[webroot_map]]
example.com = /var/www/a
www.example.com = /var/www/a
static.example.com = /var/www/b
";

    const MANUAL: &str = "\
[renewalparams]
account = abc
authenticator = manual
server = https://ca.internal:14000/dir
pref_challs = dns-01,
manual_auth_hook = /usr/local/bin/dns-add
manual_cleanup_hook = '/usr/local/bin/dns-del --quiet'
key_type = ecdsa
elliptic_curve = secp384r1
";

    fn facts(names: &[&str], key: Option<&str>) -> LiveFacts {
        LiveFacts {
            names: names.iter().map(|s| s.to_string()).collect(),
            key_type: key.map(str::to_string),
        }
    }

    fn plan(text: &str, name: &str, live: &LiveFacts, hooks: &[PathBuf]) -> Lineage {
        let conf = parse_renewal_conf(text).unwrap();
        plan_lineage(&LineageInput {
            name,
            conf_path: Path::new("/etc/letsencrypt/renewal/x.conf"),
            conf: &conf,
            certbot_dir: Path::new("/etc/letsencrypt"),
            conf_d: Path::new("/etc/certkeeper/conf.d"),
            live,
            deploy_hooks: hooks,
            rfc2136_ini: None,
        })
        .unwrap()
    }

    /// The generated TOML parses, and (wrapped with a main file) loads as a certkeeper config.
    fn loads(l: &Lineage) -> crate::config::Config {
        let issuers = issuers_toml(&[l], &BTreeMap::new(), None);
        let main = format!("state_dir = \"/tmp/x\"\n{issuers}\n{}", l.cert_toml);
        crate::config::Config::from_str(&main, Path::new("/etc/certkeeper/certkeeper.toml"))
            .unwrap_or_else(|e| panic!("{e}\n---\n{main}"))
    }

    #[test]
    fn configobj_sections_lists_and_quotes() {
        let c = parse_renewal_conf(WEBROOT).unwrap();
        assert_eq!(c.top["renew_before_expiry"], "2 weeks");
        assert_eq!(c.param("authenticator"), Some("webroot"));
        assert_eq!(c.param("preferred_chain"), Some("ISRG Root X1"));
        assert_eq!(
            split_list(&c.params["webroot_path"]),
            ["/var/www/a", "/var/www/b"]
        );
        assert_eq!(c.webroot_map["static.example.com"], "/var/www/b");
        assert_eq!(c.webroot_map.len(), 3);
        assert!(parse_renewal_conf("[renewalparams\n").is_err());
        assert!(
            parse_renewal_conf("[renewalparams]\njunk\n")
                .unwrap_err()
                .contains("line 2")
        );
    }

    #[test]
    fn servers_map_to_named_issuers() {
        assert_eq!(
            issuer_for_server(LE_PRODUCTION),
            ("letsencrypt".into(), "letsencrypt".into())
        );
        assert_eq!(issuer_for_server(LE_STAGING).0, "letsencrypt-staging");
        assert_eq!(
            issuer_for_server("https://localhost:14000/dir"),
            (
                "certbot-localhost-14000".into(),
                "https://localhost:14000/dir".into()
            )
        );
        assert_eq!(renew_before("30 days").as_deref(), Some("30d"));
        assert_eq!(renew_before("2 weeks").as_deref(), Some("14d"));
        assert_eq!(renew_before("soon"), None);
    }

    #[test]
    fn standalone_becomes_http01_with_port_note_and_reload() {
        let hooks = [PathBuf::from(
            "/etc/letsencrypt/renewal-hooks/deploy/10-haproxy",
        )];
        let l = plan(
            STANDALONE,
            "www.example.com",
            &facts(&["www.example.com"], Some("ecdsa-p256")),
            &hooks,
        );
        assert_eq!(l.issuer, "letsencrypt-staging");
        assert_eq!(
            l.account.as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert!(l.solver_toml.contains("http01 = {}"), "{}", l.solver_toml);
        assert!(
            l.notes.iter().any(|n| n.contains("[::]:5002")),
            "{:?}",
            l.notes
        );
        let cfg = loads(&l);
        let c = &cfg.certificates["www.example.com"];
        assert_eq!(c.key.as_str(), "ecdsa-p256");
        assert_eq!(
            c.output.dir,
            Path::new("/etc/letsencrypt/live/www.example.com")
        );
        assert_eq!(c.issuers, ["letsencrypt-staging"]);
        assert!(l.cert_toml.contains(
            "export RENEWED_LINEAGE='/etc/letsencrypt/live/www.example.com' RENEWED_DOMAINS='www.example.com'; systemctl reload nginx"
        ));
        assert!(
            l.cert_toml
                .contains("'/etc/letsencrypt/renewal-hooks/deploy/10-haproxy'")
        );
        assert!(
            !l.cert_toml.contains("renew_before"),
            "commented out in certbot: the default"
        );
    }

    #[test]
    fn webroot_map_becomes_one_webroot_solver_per_path() {
        let live = facts(
            &["example.com", "www.example.com", "static.example.com"],
            Some("rsa-4096"),
        );
        let l = plan(WEBROOT, "site", &live, &[]);
        assert_eq!(l.issuer, "letsencrypt");
        assert!(l.solver_toml.contains(
            "selector = { dns_names = [\"example.com\", \"www.example.com\"] }\nwebroot = { path = \"/var/www/a\" }"
        ), "{}", l.solver_toml);
        assert!(l.solver_toml.contains(
            "selector = { dns_names = [\"static.example.com\"] }\nwebroot = { path = \"/var/www/b\" }"
        ));
        assert!(l.cert_toml.contains("renew_before = \"14d\""));
        assert!(l.cert_toml.contains("preferred_chain = \"ISRG Root X1\""));
        assert!(!l.cert_toml.contains("profile"));
        let l = plan(
            &WEBROOT.replace(
                "key_type = rsa",
                "key_type = rsa\npreferred_profile = shortlived",
            ),
            "site",
            &live,
            &[],
        );
        assert!(
            l.cert_toml.contains("profile = \"shortlived\""),
            "{}",
            l.cert_toml
        );
        let cfg = loads(&l);
        assert_eq!(cfg.issuers["letsencrypt"].solvers.len(), 2);
        assert_eq!(cfg.certificates["site"].key.as_str(), "rsa-4096");
    }

    #[test]
    fn live_key_wins_over_the_conf_with_a_note() {
        let l = plan(
            WEBROOT,
            "site",
            &facts(&["example.com"], Some("rsa-2048")),
            &[],
        );
        assert!(l.cert_toml.contains("key = \"rsa-2048\""));
        assert!(l.notes.iter().any(|n| n.contains("asks for rsa-4096")));
        let l = plan(MANUAL, "m", &facts(&["example.com"], None), &[]);
        assert!(
            l.cert_toml.contains("key = \"ecdsa-p384\""),
            "from elliptic_curve"
        );
    }

    #[test]
    fn manual_dns_hooks_become_an_exec_wrapper_that_runs_them() {
        let l = plan(
            MANUAL,
            "wild",
            &facts(&["*.example.com", "example.com"], Some("ecdsa-p384")),
            &[],
        );
        assert_eq!(l.issuer, "certbot-ca.internal-14000");
        assert_eq!(l.directory, "https://ca.internal:14000/dir");
        let (path, script) = l.hook_script.clone().unwrap();
        assert_eq!(
            path,
            Path::new("/etc/certkeeper/conf.d/certbot-wild-dns-hook.sh")
        );
        assert!(l.solver_toml.contains(
            "provider = \"exec\", command = \"/etc/certkeeper/conf.d/certbot-wild-dns-hook.sh\""
        ));
        loads(&l);

        // The wrapper gives the hooks certbot's environment.
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let conf = parse_renewal_conf(
            &MANUAL
                .replace(
                    "/usr/local/bin/dns-add",
                    &format!(
                        "echo add $CERTBOT_DOMAIN $CERTBOT_VALIDATION >> {}",
                        out.display()
                    ),
                )
                .replace(
                    "/usr/local/bin/dns-del --quiet",
                    &format!("echo del $CERTBOT_DOMAIN >> {}", out.display()),
                ),
        )
        .unwrap();
        let script = {
            let _ = script;
            dns_wrapper("wild", &conf, &["example.com".into()])
        };
        let sh = dir.path().join("hook.sh");
        std::fs::write(&sh, script).unwrap();
        for args in [
            ["present", "_acme-challenge.example.com.", "tok"],
            ["cleanup", "_acme-challenge.example.com.", "tok"],
        ] {
            let st = std::process::Command::new("/bin/sh")
                .arg(&sh)
                .args(args)
                .status()
                .unwrap();
            assert!(st.success());
        }
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "add example.com tok\ndel example.com\n"
        );
    }

    #[test]
    fn rfc2136_credentials_become_an_rfc2136_solver_with_the_secret_in_its_own_file() {
        let text = MANUAL.replace(
            "authenticator = manual",
            "authenticator = dns-rfc2136\ndns_rfc2136_credentials = /etc/letsencrypt/rfc2136.ini",
        );
        let conf = parse_renewal_conf(&text).unwrap();
        let ini = "# certbot-dns-rfc2136\ndns_rfc2136_server = 192.0.2.53\ndns_rfc2136_port = 5353\n\
                   dns_rfc2136_name = certbot.\ndns_rfc2136_secret = c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0\n\
                   dns_rfc2136_algorithm = HMAC-SHA512\n";
        let live = facts(&["*.example.com"], Some("ecdsa-p384"));
        let plan = |ini: &str| {
            plan_lineage(&LineageInput {
                name: "wild",
                conf_path: Path::new("/etc/letsencrypt/renewal/wild.conf"),
                conf: &conf,
                certbot_dir: Path::new("/etc/letsencrypt"),
                conf_d: Path::new("/etc/certkeeper/conf.d"),
                live: &live,
                deploy_hooks: &[],
                rfc2136_ini: Some(ini),
            })
            .unwrap()
        };
        let l = plan(ini);
        assert!(l.solver_toml.contains(
            "dns01 = { provider = \"rfc2136\", server = \"192.0.2.53:5353\", tsig_key = \"certbot.\", tsig_algorithm = \"hmac-sha512\", tsig_secret_file = \"/etc/certkeeper/conf.d/certbot-wild-tsig.key\" }"
        ), "{}", l.solver_toml);
        assert!(
            l.solver_toml
                .contains("propagation = { nameservers = [\"192.0.2.53:5353\"] }"),
            "{}",
            l.solver_toml
        );
        assert_eq!(
            l.secret,
            Some((
                PathBuf::from("/etc/certkeeper/conf.d/certbot-wild-tsig.key"),
                "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0\n".to_string()
            ))
        );
        assert!(
            !l.solver_toml.contains("c2Vj") && !l.cert_toml.contains("c2Vj"),
            "the secret stays out of the TOML"
        );
        loads(&l);

        // certbot's default HMAC-MD5 has no certkeeper equivalent: a commented block and a note.
        let l = plan(&ini.replace("dns_rfc2136_algorithm = HMAC-SHA512\n", ""));
        assert!(l.secret.is_none());
        assert!(
            l.notes.iter().any(|n| n.contains("hmac-md5")),
            "{:?}",
            l.notes
        );
        assert!(
            l.solver_toml
                .lines()
                .filter(|s| !s.is_empty())
                .all(|s| s.starts_with('#'))
        );
    }

    #[test]
    fn unknown_authenticator_is_a_commented_block() {
        let text = MANUAL.replace("authenticator = manual", "authenticator = dns-cloudflare");
        let l = plan(
            &text,
            "cf",
            &facts(&["example.com"], Some("ecdsa-p384")),
            &[],
        );
        assert!(
            l.solver_toml
                .lines()
                .filter(|s| !s.is_empty())
                .all(|s| s.starts_with('#')),
            "{}",
            l.solver_toml
        );
        assert!(l.notes.iter().any(|n| n.contains("dns-cloudflare")));
        toml::from_str::<toml::Table>(&issuers_toml(&[&l], &BTreeMap::new(), None)).unwrap();
    }

    #[test]
    fn jwk_round_trips_to_the_same_rsa_key() {
        use base64::Engine as _;
        let rsa = openssl::rsa::Rsa::generate(2048).unwrap();
        let b = |n: &openssl::bn::BigNumRef| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(n.to_vec())
        };
        let jwk = serde_json::json!({
            "kty": "RSA", "n": b(rsa.n()), "e": b(rsa.e()), "d": b(rsa.d()),
            "p": b(rsa.p().unwrap()), "q": b(rsa.q().unwrap()), "dp": b(rsa.dmp1().unwrap()),
            "dq": b(rsa.dmq1().unwrap()), "qi": b(rsa.iqmp().unwrap()),
        });
        let (pem, bits) = jwk_to_pem(&jwk).unwrap();
        assert_eq!(bits, 2048);
        let back = PKey::private_key_from_pem(pem.as_bytes())
            .unwrap()
            .rsa()
            .unwrap();
        assert_eq!(back.n(), rsa.n());
        assert_eq!(back.d(), rsa.d());
        // certkeeper's account key loader takes it.
        crate::acme::AccountKey::from_pem(pem.as_bytes()).unwrap();

        let mut bad = jwk.clone();
        bad["d"] = serde_json::json!(b(rsa.e()));
        assert!(jwk_to_pem(&bad).is_err());
        assert!(jwk_to_pem(&serde_json::json!({"kty": "EC"})).is_err());

        // And read from certbot's layout.
        let dir = tempfile::tempdir().unwrap();
        let acct = dir.path().join("accounts/localhost:14000/dir/abc");
        std::fs::create_dir_all(&acct).unwrap();
        std::fs::write(acct.join("private_key.json"), jwk.to_string()).unwrap();
        std::fs::write(acct.join("regr.json"), r#"{"body": {"contact": ["mailto:a@example.com"]}, "uri": "https://localhost:14000/my-account/1"}"#).unwrap();
        let a = read_account(dir.path(), "https://localhost:14000/dir", "abc").unwrap();
        assert_eq!(a.url, "https://localhost:14000/my-account/1");
        assert_eq!(a.contact, ["mailto:a@example.com"]);
        assert_eq!(a.key_pem, pem);
    }

    #[test]
    fn migrates_a_certbot_dir_in_place_and_keeps_the_account() {
        use base64::Engine as _;
        let tmp = tempfile::tempdir().unwrap();
        let cb = tmp.path().join("letsencrypt");
        let pki = crate::store::testpki::Pki::new();
        let (key, chain) = pki.leaf(&["www.example.com"], 0x77, (-1, 80));
        let leaf_end = chain
            .windows(25)
            .position(|w| w == b"-----END CERTIFICATE-----")
            .unwrap()
            + 26;
        let archive = cb.join("archive/site");
        std::fs::create_dir_all(&archive).unwrap();
        std::fs::create_dir_all(cb.join("live/site")).unwrap();
        std::fs::create_dir_all(cb.join("renewal")).unwrap();
        for (f, data) in [
            ("cert", &chain[..leaf_end]),
            ("chain", &chain[leaf_end..]),
            ("fullchain", &chain[..]),
            ("privkey", &key[..]),
        ] {
            std::fs::write(archive.join(format!("{f}1.pem")), data).unwrap();
            std::os::unix::fs::symlink(
                format!("../../archive/site/{f}1.pem"),
                cb.join(format!("live/site/{f}.pem")),
            )
            .unwrap();
        }
        let conf = cb.join("renewal/site.conf");
        std::fs::write(
            &conf,
            STANDALONE
                .replace(
                    "https://acme-staging-v02.api.letsencrypt.org/directory",
                    "https://localhost:14000/dir",
                )
                .replace("0123456789abcdef0123456789abcdef", "abc"),
        )
        .unwrap();
        let rsa = openssl::rsa::Rsa::generate(2048).unwrap();
        let b = |n: &openssl::bn::BigNumRef| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(n.to_vec())
        };
        let jwk = serde_json::json!({"kty": "RSA", "n": b(rsa.n()), "e": b(rsa.e()), "d": b(rsa.d()), "p": b(rsa.p().unwrap()), "q": b(rsa.q().unwrap()), "dp": b(rsa.dmp1().unwrap()), "dq": b(rsa.dmq1().unwrap()), "qi": b(rsa.iqmp().unwrap())});
        let acct = cb.join("accounts/localhost:14000/dir/abc");
        std::fs::create_dir_all(&acct).unwrap();
        std::fs::write(acct.join("private_key.json"), jwk.to_string()).unwrap();
        std::fs::write(
            acct.join("regr.json"),
            r#"{"body": {}, "uri": "https://localhost:14000/my-account/7"}"#,
        )
        .unwrap();
        for (kind, hook) in [("pre", "10-stop"), ("post", "50-reload")] {
            let dir = cb.join("renewal-hooks").join(kind);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(hook), "#!/bin/sh\n").unwrap();
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir.join(hook), std::fs::Permissions::from_mode(0o755))
                .unwrap();
        }
        let etc = tmp.path().join("certkeeper");
        std::fs::create_dir_all(&etc).unwrap();
        let main = etc.join("certkeeper.toml");
        std::fs::write(
            &main,
            format!(
                "state_dir = {}\ninclude = [\"conf.d/*.toml\"]\n",
                q(&tmp.path().join("state").display().to_string())
            ),
        )
        .unwrap();
        let opts = |dry_run| CertbotOptions {
            certbot_dir: cb.clone(),
            dry_run,
        };

        let dry = migrate(&main, &opts(true)).unwrap();
        assert!(
            dry.contains("[certificate.\"site\"]") && dry.contains("my-account/7"),
            "{dry}"
        );
        assert!(
            conf.exists() && !etc.join("conf.d").exists(),
            "--dry-run changes nothing"
        );

        let report = migrate(&main, &opts(false)).unwrap();
        assert!(report.contains("site: imported serial 77"), "{report}");
        assert!(report.contains("undo: mv "), "{report}");
        assert!(
            report.contains("10-stop (a certbot pre hook) is not run by certkeeper"),
            "{report}"
        );
        let toml = std::fs::read_to_string(etc.join("conf.d/certbot-site.toml")).unwrap();
        assert!(
            toml.contains("renewal-hooks/post/50-reload'") && !toml.contains("10-stop"),
            "{toml}"
        );
        assert!(!conf.exists() && cb.join("renewal/site.conf.migrated").exists());
        let live = cb.join("live/site");
        assert_eq!(
            std::fs::read_link(live.join("fullchain.pem")).unwrap(),
            Path::new(".live/fullchain.pem")
        );
        assert_eq!(std::fs::read(live.join("fullchain.pem")).unwrap(), chain);
        assert_eq!(std::fs::read(live.join("privkey.pem")).unwrap(), key);
        let cfg = crate::config::load(&main).unwrap();
        assert_eq!(cfg.certificates["site"].output.dir, live);
        let issuer = &cfg.issuers["certbot-localhost-14000"];
        assert_eq!(issuer.account_key.as_str(), "rsa-2048");
        let accounts = store::AccountStore::new(std::sync::Arc::new(
            store::FileStorage::open(&cfg.state_dir).unwrap(),
        ));
        let stored = accounts
            .load(&store::account_id(&issuer.name, &issuer.directory))
            .unwrap()
            .unwrap();
        assert_eq!(
            stored.record.unwrap().url,
            "https://localhost:14000/my-account/7"
        );
        let back = PKey::private_key_from_pem(stored.key_pem.as_bytes())
            .unwrap()
            .rsa()
            .unwrap();
        assert_eq!(back.n(), rsa.n());

        // Nothing left: a second run says so and leaves the files alone.
        assert!(
            migrate(&main, &opts(false))
                .unwrap_err()
                .contains("nothing to migrate")
        );
    }
}
