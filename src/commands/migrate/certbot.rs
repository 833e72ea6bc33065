//! `certkeeper migrate certbot [--certbot-dir /etc/letsencrypt] [--dry-run]`: adopt every certbot
//! lineage without re-issuing anything or registering a new account.
//!
//! For each `renewal/<lineage>.conf` (certbot's configobj format):
//! - `conf.d/certbot-<lineage>.toml` gets the certificate: names from the live certificate's SANs,
//!   key type from the live key (else `key_type`/`rsa_key_size`/`elliptic_curve`),
//!   `renew_before_expiry`, `preferred_chain`, output `dir = <certbot-dir>/live/<lineage>` (so nginx
//!   keeps its paths), deploy hooks (`renew_hook`, `post_hook`, `renewal-hooks/deploy/*`) as `reload`;
//! - `conf.d/certbot-issuers.toml` gets one issuer per certbot `server` (`letsencrypt`,
//!   `letsencrypt-staging`, else `certbot-<host>`) with one solver per lineage: standalone → http01,
//!   webroot → webroot per mapped path, manual DNS hooks → exec dns01 through a generated wrapper,
//!   anything else → a commented block saying what to fill in. It is rebuilt from all confs, the
//!   `.conf.migrated` ones included, so migrating in several runs keeps every solver;
//! - certbot's account (`accounts/<server>/<id>/private_key.json`, a JWK) becomes certkeeper's
//!   account of that issuer, with the account URL from `regr.json`;
//! - the live pair is imported as with `certkeeper import`: the top-level links of `live/<lineage>/`
//!   are switched one by one (rename) from `archive/` to certkeeper's `.live/`, each always naming a
//!   file of the same pair, so nginx never sees a missing or mismatched file;
//! - `renewal/<lineage>.conf` is renamed to `.conf.migrated`, so certbot no longer renews it, and the
//!   undo commands are printed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openssl::pkey::PKey;

pub use super::common::LiveFacts;
use super::common::{
    Adoption, ForeignAccount, adopt_account, pair_facts, q, q_list, sh_quote, write_and_load,
};
use crate::challenge::http01::TokenStore;
use crate::commands::import::{ImportOptions, import};
use crate::engine::Runtime;

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

/// Read the leaf's names and the key's type from `live/<lineage>/`.
pub fn live_facts(live: &Path) -> Result<LiveFacts, String> {
    pair_facts(&live.join("cert.pem"), &live.join("privkey.pem"))
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
    /// Things the user must do or know.
    pub notes: Vec<String>,
    /// `<certbot-dir>/live/<lineage>`.
    pub live_dir: PathBuf,
}

/// The certificate file of lineage `name` in `conf_d`.
fn cert_file(conf_d: &Path, name: &str) -> PathBuf {
    conf_d.join(format!("certbot-{name}.toml"))
}

/// Plan one lineage from its conf, the live pair's facts and the deploy hooks found.
pub fn plan_lineage(
    name: &str,
    conf_path: &Path,
    conf: &RenewalConf,
    certbot_dir: &Path,
    conf_d: &Path,
    live: &LiveFacts,
    deploy_hooks: &[PathBuf],
) -> Result<Lineage, String> {
    let server = conf.param("server").unwrap_or(LE_PRODUCTION).to_string();
    let (issuer, directory) = issuer_for_server(&server);
    let live_dir = certbot_dir.join("live").join(name);
    if live.names.is_empty() {
        return Err(format!(
            "{name}: the live certificate has no DNS names or IP addresses"
        ));
    }
    let mut notes = Vec::new();
    let wanted = conf_key_type(conf);
    let key = match (&live.key_type, &wanted) {
        (Some(k), Some(w)) if k != w => {
            notes.push(format!(
                "the live key is {k} but certbot's conf asks for {w}; kept {k} so the live pair is adopted (change `key` to get {w} at the next renewal)"
            ));
            k.clone()
        }
        (Some(k), _) => k.clone(),
        (None, Some(w)) => w.clone(),
        (None, None) => {
            return Err(format!(
                "{name}: cannot tell the key type (live key unreadable, key_type {:?})",
                conf.param("key_type")
            ));
        }
    };

    // The solver(s).
    let names = &live.names;
    let authenticator = conf.param("authenticator").unwrap_or("standalone");
    let mut solver = String::new();
    let mut hook_script = None;
    let sel = |n: &[String]| format!("selector = {{ dns_names = {} }}\n", q_list(n));
    let _ = writeln!(
        solver,
        "# lineage {name}: certbot authenticator {authenticator}"
    );
    match authenticator {
        "standalone" => {
            let _ = write!(
                solver,
                "[[issuer.{}.solver]]\n{}http01 = {{}}\n",
                q(&issuer),
                sel(names)
            );
            match conf.param("http01_port") {
                Some(port) if port != "80" => notes.push(format!(
                    "certbot's standalone listened on port {port}: set `[http01] listen = [\"[::]:{port}\"]` in the main config"
                )),
                _ => notes.push(
                    "certbot's standalone listened on port 80: either set `[http01] listen = [\"[::]:80\"]` in the main config, or have nginx proxy /.well-known/acme-challenge/ to certkeeper's listener (127.0.0.1:8402 by default)".into(),
                ),
            }
        }
        "webroot" => {
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
            for (path, ns) in by_path {
                let _ = write!(
                    solver,
                    "[[issuer.{}.solver]]\n{}webroot = {{ path = {} }}\n",
                    q(&issuer),
                    sel(&ns),
                    q(&path)
                );
            }
        }
        "manual"
            if conf.param("manual_auth_hook").is_some()
                && conf.param("pref_challs").is_some_and(|p| p.contains("dns")) =>
        {
            let script = conf_d.join(format!("certbot-{name}-dns-hook.sh"));
            hook_script = Some((script.clone(), dns_wrapper(name, conf, names)));
            let _ = write!(
                solver,
                "[[issuer.{}.solver]]\n{}dns01 = {{ provider = \"exec\", command = {} }}\n",
                q(&issuer),
                sel(names),
                q(&script.display().to_string())
            );
        }
        other => {
            let _ = write!(
                solver,
                "# certbot authenticator {other:?} has no automatic mapping: add a solver for these names, e.g.\n\
                 # [[issuer.{}.solver]]\n# {}# dns01 = {{ provider = \"rfc2136\", server = \"...\", tsig_key = \"...\", tsig_algorithm = \"hmac-sha256\", tsig_secret_file = \"...\" }}\n",
                q(&issuer),
                sel(names)
            );
            notes.push(format!(
                "certbot authenticator {other:?} was not mapped: fill in the commented solver in {ISSUERS_FILE} before the certificate is due"
            ));
        }
    }

    // Reload commands: certbot's deploy hooks see RENEWED_LINEAGE and RENEWED_DOMAINS.
    let env = format!(
        "RENEWED_LINEAGE={} RENEWED_DOMAINS={}",
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

    let mut t = String::new();
    let _ = writeln!(
        t,
        "# Migrated from certbot by `certkeeper migrate certbot` ({}).",
        conf_path.display()
    );
    for n in &notes {
        let _ = writeln!(t, "# NOTE: {n}");
    }
    let _ = writeln!(t, "[certificate.{}]", q(name));
    let _ = writeln!(t, "issuer = {}", q(&issuer));
    let _ = writeln!(t, "domains = {}", q_list(names));
    let _ = writeln!(t, "key = {}", q(&key));
    if let Some(rb) = conf
        .top
        .get("renew_before_expiry")
        .or(conf.params.get("renew_before_expiry"))
    {
        match renew_before(rb) {
            Some(d) => {
                let _ = writeln!(t, "renew_before = {}", q(&d));
            }
            None => notes.push(format!(
                "renew_before_expiry {rb:?} not understood: left to the default"
            )),
        }
    }
    if let Some(c) = conf.param("preferred_chain") {
        let _ = writeln!(t, "preferred_chain = {}", q(c));
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
        conf_path: conf_path.to_path_buf(),
        issuer,
        directory,
        server,
        account: conf.param("account").map(str::to_string),
        cert_toml: t,
        solver_toml: solver,
        hook_script,
        notes,
        live_dir,
    })
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
    let contact = regr
        .pointer("/body/contact")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|c| c.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    Ok(CertbotAccount {
        key_pem,
        bits,
        url,
        contact,
    })
}

/// Executable files in `renewal-hooks/deploy/`, sorted (certbot runs them in that order).
fn deploy_hooks(certbot_dir: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut hooks: Vec<PathBuf> = std::fs::read_dir(certbot_dir.join("renewal-hooks/deploy"))
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

/// The issuers file: one issuer per server, with every lineage's solver blocks.
fn issuers_toml(lineages: &[&Lineage], account_bits: &BTreeMap<String, u32>) -> String {
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
            let _ = writeln!(
                t,
                "# ca_bundle = \"/path/to/ca.pem\"  # when the CA's TLS certificate is not publicly trusted"
            );
        }
        for m in lineages.iter().filter(|m| m.issuer == l.issuer) {
            let _ = write!(t, "\n{}", m.solver_toml);
        }
    }
    t
}

/// The undo commands for one migrated lineage.
fn undo(l: &Lineage, conf_d: &Path, links: &[(String, PathBuf)]) -> String {
    let mut cmds = vec![format!(
        "mv {} {}",
        sh_quote(&format!("{}.migrated", l.conf_path.display())),
        sh_quote(&l.conf_path.display().to_string())
    )];
    let mut rm = vec![sh_quote(&cert_file(conf_d, &l.name).display().to_string())];
    if let Some((p, _)) = &l.hook_script {
        rm.push(sh_quote(&p.display().to_string()));
    }
    cmds.push(format!("rm {}", rm.join(" ")));
    for (f, target) in links {
        cmds.push(format!(
            "ln -sfn {} {}",
            sh_quote(&target.display().to_string()),
            sh_quote(&l.live_dir.join(f).display().to_string())
        ));
    }
    cmds.join(" && ")
}

/// Run the migration (or print it with `dry_run`); returns the report to print.
pub fn migrate(config_path: &Path, opts: &CertbotOptions) -> Result<String, String> {
    let certbot_dir = &opts.certbot_dir;
    let conf_d = config_path
        .parent()
        .unwrap_or(Path::new("."))
        .join("conf.d");
    let hooks = deploy_hooks(certbot_dir);
    let mut all = Vec::new();
    let mut report = String::new();
    let mut failed = Vec::new();
    for (name, path, migrated) in renewal_confs(certbot_dir)? {
        let planned = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
            .and_then(|text| {
                parse_renewal_conf(&text).map_err(|e| format!("{}: {e}", path.display()))
            })
            .and_then(|conf| {
                let live = live_facts(&certbot_dir.join("live").join(&name))?;
                let conf_path = if migrated {
                    path.with_extension("")
                } else {
                    path.clone()
                };
                plan_lineage(
                    &name,
                    &conf_path,
                    &conf,
                    certbot_dir,
                    &conf_d,
                    &live,
                    &hooks,
                )
            });
        match planned {
            Ok(l) => all.push((l, migrated)),
            Err(e) => failed.push(format!("{name}: not migrated: {e}")),
        }
    }
    let todo: Vec<&Lineage> = all.iter().filter(|(_, m)| !*m).map(|(l, _)| l).collect();
    if todo.is_empty() {
        failed.push(format!(
            "nothing to migrate: no renewal/*.conf in {} could be adopted",
            certbot_dir.display()
        ));
        return Err(failed.join("\n"));
    }

    // certbot's account per issuer: the one of the first lineage that names a readable one.
    let mut accounts: BTreeMap<String, (String, CertbotAccount)> = BTreeMap::new();
    for (l, _) in &all {
        if accounts.contains_key(&l.issuer) {
            continue;
        }
        if let Some(id) = &l.account {
            match read_account(certbot_dir, &l.server, id) {
                Ok(a) => {
                    accounts.insert(l.issuer.clone(), (id.clone(), a));
                }
                Err(e) => failed.push(format!("{}: certbot's account not adopted ({e}); a new one is registered at the first renewal", l.name)),
            }
        }
    }
    let bits = accounts
        .iter()
        .map(|(i, (_, a))| (i.clone(), a.bits))
        .collect();
    let every: Vec<&Lineage> = all.iter().map(|(l, _)| l).collect();
    let issuers = issuers_toml(&every, &bits);

    if opts.dry_run {
        let _ = writeln!(
            report,
            "# --dry-run: nothing written, imported or renamed\n"
        );
        let _ = writeln!(
            report,
            "# ---- {} ----\n{issuers}",
            conf_d.join(ISSUERS_FILE).display()
        );
        for l in &todo {
            let _ = writeln!(
                report,
                "# ---- {} ----\n{}",
                cert_file(&conf_d, &l.name).display(),
                l.cert_toml
            );
            if let Some((p, text)) = &l.hook_script {
                let _ = writeln!(report, "# ---- {} (mode 0755) ----\n{text}", p.display());
            }
            let _ = writeln!(
                report,
                "# would import the live pair of {} into {} and rename {} to .conf.migrated\n",
                l.name,
                l.live_dir.display(),
                l.conf_path.display()
            );
        }
        for (issuer, (id, a)) in &accounts {
            let _ = writeln!(
                report,
                "# would adopt certbot account {id} ({}) as the account of issuer {issuer}",
                a.url
            );
        }
        for f in &failed {
            let _ = writeln!(report, "# {f}");
        }
        return Ok(report);
    }

    // Write the files; they are put back as they were if the config does not load.
    let mut files = vec![(conf_d.join(ISSUERS_FILE), issuers.clone(), 0o644)];
    for l in &todo {
        files.push((cert_file(&conf_d, &l.name), l.cert_toml.clone(), 0o644));
        if let Some((p, text)) = &l.hook_script {
            files.push((p.clone(), text.clone(), 0o755));
        }
    }
    let (cfg, _written) = write_and_load(config_path, &files)?;
    let cfg = Arc::new(cfg);
    let rt = Runtime::new(cfg.clone(), TokenStore::default()).map_err(|e| e.to_string())?;

    for (issuer, (id, a)) in &accounts {
        if !cfg.issuers.contains_key(issuer) {
            continue;
        }
        let foreign = ForeignAccount {
            key_pem: a.key_pem.clone(),
            url: a.url.clone(),
            contact: a.contact.clone(),
        };
        match adopt_account(&rt, issuer, &foreign) {
            Ok(Adoption::AlreadyOurs) => {
                let _ = writeln!(report, "issuer {issuer}: certbot's account {} is already certkeeper's", a.url);
            }
            Ok(Adoption::Kept(ours)) => failed.push(format!(
                "issuer {issuer}: certkeeper already has the account {ours}; certbot's account {} ({id}) was not adopted",
                a.url
            )),
            Ok(Adoption::Adopted) => {
                let _ = writeln!(report, "issuer {issuer}: adopted certbot's account {id} ({})", a.url);
            }
            Err(e) => failed.push(format!("issuer {issuer}: certbot's account not adopted: {e}")),
        }
    }

    for l in &todo {
        let links: Vec<(String, PathBuf)> = LIVE_FILES
            .iter()
            .filter_map(|f| {
                std::fs::read_link(l.live_dir.join(f))
                    .ok()
                    .map(|t| (f.to_string(), t))
            })
            .collect();
        let imp = ImportOptions {
            name: l.name.clone(),
            cert: l.live_dir.join("cert.pem"),
            key: l.live_dir.join("privkey.pem"),
            chain: Some(l.live_dir.join("chain.pem")),
        };
        match import(&rt, &imp) {
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
                let _ = writeln!(report, "  undo: {}", undo(l, &conf_d, &links));
            }
            Err(e) => {
                let mut mine = vec![cert_file(&conf_d, &l.name)];
                mine.extend(l.hook_script.as_ref().map(|(p, _)| p.clone()));
                for p in mine {
                    let _ = std::fs::remove_file(p);
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
    let _ = writeln!(
        report,
        "Check with `certkeeper check`, then `systemctl reload certkeeper` (or restart it)."
    );
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
        plan_lineage(
            name,
            Path::new("/etc/letsencrypt/renewal/x.conf"),
            &conf,
            Path::new("/etc/letsencrypt"),
            Path::new("/etc/certkeeper/conf.d"),
            live,
            hooks,
        )
        .unwrap()
    }

    /// The generated TOML parses, and (wrapped with a main file) loads as a certkeeper config.
    fn loads(l: &Lineage) -> crate::config::Config {
        let issuers = issuers_toml(&[l], &BTreeMap::new());
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
            "RENEWED_LINEAGE='/etc/letsencrypt/live/www.example.com' RENEWED_DOMAINS='www.example.com' systemctl reload nginx"
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
        toml::from_str::<toml::Table>(&issuers_toml(&[&l], &BTreeMap::new())).unwrap();
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
