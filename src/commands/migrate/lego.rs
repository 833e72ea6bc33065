//! `certkeeper migrate lego --path DIR [--server URL] [--email ADDR] (--http | --http-webroot DIR)
//! [--dry-run]`: adopt every certificate of a lego directory without re-issuing anything or
//! registering a new account.
//!
//! lego keeps `accounts/<host_port>/<email>/{account.json,keys/<email>.key}` and
//! `certificates/<domain>.{crt,key,issuer.crt,json}`. It records neither the directory URL (only
//! its host) nor how challenges were solved, so those come from the same flags lego was run with.
//!
//! - `conf.d/lego-issuer-<host>.toml` gets issuer `lego-<host>`: the server, lego's account key type,
//!   the CA bundle of `LEGO_CA_CERTIFICATES`, and the solver (`--http` → http01, `--http-webroot` →
//!   webroot). When the config already defines that issuer (e.g. with a dns01 solver), it is used as
//!   it is and no issuer file is written;
//! - `conf.d/lego-<domain>.toml` gets one certificate per `<domain>.crt`: names from the leaf, key
//!   type from `<domain>.key`, output `dir = DIR/certkeeper/<domain>`;
//! - lego's account (URL from account.json's `registration.uri`, key from `keys/<email>.key`)
//!   becomes certkeeper's account of the issuer;
//! - the pair is imported into the output dir, then `<domain>.crt`, `.key` and `.issuer.crt` are
//!   replaced (one `rename` each) by symlinks to its `fullchain.pem`, `privkey.pem` and `chain.pem`, so
//!   a web server pointing at lego's files keeps working and sees every renewal;
//! - when every certificate was adopted, `account.json` is renamed to `account.json.migrated`: a
//!   leftover `lego renew` then stops at "not registered" instead of writing through the symlinks.
//!   The undo commands are printed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openssl::pkey::PKey;
use openssl::x509::X509;

use super::adopt::{self, AccountToAdopt, ConfFile, HandOver};
use super::common::{LiveFacts, conf_d, pair_facts, q, q_list, sh_quote};
use crate::acme::KeyType;
use crate::commands::import::Imported;

const LE_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";
const LE_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";
/// lego's file → the certkeeper output file it becomes a symlink to.
const LINKS: [(&str, &str); 3] = [
    (".crt", "fullchain.pem"),
    (".key", "privkey.pem"),
    (".issuer.crt", "chain.pem"),
];

/// How certkeeper solves the challenges lego solved (lego does not record it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LegoSolver {
    /// `--http`: certkeeper's HTTP-01 listener.
    Http,
    /// `--http-webroot DIR`: files in a web server's document root.
    Webroot(PathBuf),
    /// No flag: the issuer must already be in the config.
    Existing,
}

/// What `certkeeper migrate lego` was asked to do.
#[derive(Clone, Debug)]
pub struct LegoOptions {
    /// lego's `--path` (the directory holding `accounts/` and `certificates/`).
    pub path: PathBuf,
    /// lego's `--server` (the ACME directory URL).
    pub server: String,
    /// lego's `--email`: which account, when the server has several.
    pub email: Option<String>,
    /// The solver of the issuer.
    pub solver: LegoSolver,
    /// The CA bundle for the server's TLS (lego's `LEGO_CA_CERTIFICATES`).
    pub ca_bundle: Option<PathBuf>,
    /// Print what would be written and done; change nothing.
    pub dry_run: bool,
}

/// `host_port` as lego names the server's accounts directory (`:` becomes `_`).
pub fn server_dir_name(server: &str) -> String {
    let rest = server.split_once("://").map_or(server, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    host.replace(':', "_")
}

/// certkeeper's issuer name and `directory` value for lego's `--server`.
pub fn issuer_for_server(server: &str) -> (String, String) {
    let server = server.trim_end_matches('/');
    let safe: String = server_dir_name(server)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let directory = match server {
        LE_PRODUCTION => "letsencrypt",
        LE_STAGING => "letsencrypt-staging",
        other => other,
    };
    (format!("lego-{safe}"), directory.to_string())
}

/// lego's account: where it is, and what certkeeper adopts.
#[derive(Clone, Debug)]
pub struct LegoAccount {
    /// lego's account id (the email, or `noemail@example.com` when none was given).
    pub email: String,
    /// `account.json` (or `account.json.migrated` after a previous run).
    pub json_path: PathBuf,
    /// The account key's type.
    pub key_type: KeyType,
    /// PKCS#8 PEM of the account key.
    pub key_pem: String,
    /// The account URL.
    pub url: String,
    /// Contacts, as lego registered them.
    pub contact: Vec<String>,
}

impl LegoAccount {
    /// The account to adopt as issuer `issuer`'s.
    fn to_adopt(&self, issuer: &str) -> AccountToAdopt {
        AccountToAdopt {
            issuer: issuer.to_string(),
            label: format!("lego's {}", self.email),
            key_pem: self.key_pem.clone(),
            url: self.url.clone(),
            contact: self.contact.clone(),
        }
    }
}

/// Find and read lego's account for `server` (the one of `email`, or the only one).
pub fn read_account(
    lego_dir: &Path,
    server: &str,
    email: Option<&str>,
) -> Result<LegoAccount, String> {
    let dir = lego_dir.join("accounts").join(server_dir_name(server));
    let email = match email {
        Some(e) => e.to_string(),
        None => {
            let mut found: Vec<String> = std::fs::read_dir(&dir)
                .map_err(|e| {
                    format!(
                        "no lego account for {server}: cannot read {}: {e} (pass lego's --server)",
                        dir.display()
                    )
                })?
                .flatten()
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect();
            found.sort();
            match found.as_slice() {
                [one] => one.clone(),
                [] => return Err(format!("no lego account in {}", dir.display())),
                many => {
                    return Err(format!(
                        "{} holds several lego accounts ({}): pass --email with the one lego renews with",
                        dir.display(),
                        many.join(", ")
                    ));
                }
            }
        }
    };
    let acct = dir.join(&email);
    let json_path = ["account.json", "account.json.migrated"]
        .iter()
        .map(|f| acct.join(f))
        .find(|p| p.exists())
        .ok_or_else(|| format!("no account.json in {}", acct.display()))?;
    let text = std::fs::read_to_string(&json_path)
        .map_err(|e| format!("cannot read {}: {e}", json_path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", json_path.display()))?;
    let url = json
        .pointer("/registration/uri")
        .and_then(|v| v.as_str())
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            format!(
                "{}: no registration.uri (lego never registered this account)",
                json_path.display()
            )
        })?
        .to_string();
    let contact = super::common::contacts_at(&json, "/registration/body/contact");
    let key_path = acct.join("keys").join(format!("{email}.key"));
    let pem =
        std::fs::read(&key_path).map_err(|e| format!("cannot read {}: {e}", key_path.display()))?;
    let key =
        PKey::private_key_from_pem(&pem).map_err(|e| format!("{}: {e}", key_path.display()))?;
    let key_type = KeyType::of(&key).ok_or_else(|| {
        format!(
            "{}: the account key is not ecdsa-p256/p384 or rsa-2048/3072/4096",
            key_path.display()
        )
    })?;
    let key_pem = key
        .private_key_to_pem_pkcs8()
        .ok()
        .and_then(|p| String::from_utf8(p).ok())
        .ok_or_else(|| format!("{}: cannot convert the key", key_path.display()))?;
    Ok(LegoAccount {
        email,
        json_path,
        key_type,
        key_pem,
        url,
        contact,
    })
}

/// One lego certificate, planned.
#[derive(Clone, Debug)]
pub struct LegoCert {
    /// lego's file stem (`www.example.com`, `_.example.com` for a wildcard): the certificate name.
    pub name: String,
    /// `certificates/<name>` without extension.
    pub stem: PathBuf,
    /// certkeeper's output directory, `DIR/certkeeper/<name>`.
    pub out_dir: PathBuf,
    /// `conf.d/lego-<name>.toml` text.
    pub toml: String,
}

impl LegoCert {
    /// `certificates/<name><ext>`.
    fn file(&self, ext: &str) -> PathBuf {
        PathBuf::from(format!("{}{ext}", self.stem.display()))
    }
}

fn cert_file(conf_d: &Path, name: &str) -> PathBuf {
    conf_d.join(format!("lego-{name}.toml"))
}

/// `conf.d/lego-issuer-<host>.toml` for issuer `lego-<host>`.
fn issuer_file(conf_d: &Path, issuer: &str) -> PathBuf {
    let host = issuer.strip_prefix("lego-").unwrap_or(issuer);
    conf_d.join(format!("lego-issuer-{host}.toml"))
}

/// Plan one certificate from its pair's facts.
pub fn plan_cert(
    lego_dir: &Path,
    name: &str,
    issuer: &str,
    facts: &LiveFacts,
) -> Result<LegoCert, String> {
    if facts.names.is_empty() {
        return Err("the certificate has no DNS names or IP addresses".into());
    }
    let key = facts
        .key_type
        .as_deref()
        .ok_or("cannot tell the key type of its .key file")?;
    let stem = lego_dir.join("certificates").join(name);
    let out_dir = lego_dir.join("certkeeper").join(name);
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# Migrated from lego by `certkeeper migrate lego` ({}.crt).\n\
         # lego's --renew-hook is not recorded in its directory: add it as reload = [\"...\"] here.\n\
         # {name}.crt, .key and .issuer.crt in {} are symlinks to the files of output.dir.",
        stem.display(),
        lego_dir.join("certificates").display()
    );
    let _ = writeln!(t, "[certificate.{}]", q(name));
    let _ = writeln!(t, "issuer = {}", q(issuer));
    let _ = writeln!(t, "domains = {}", q_list(&facts.names));
    let _ = writeln!(t, "key = {}", q(key));
    let _ = writeln!(
        t,
        "output = {{ dir = {} }}",
        q(&out_dir.display().to_string())
    );
    Ok(LegoCert {
        name: name.to_string(),
        stem,
        out_dir,
        toml: t,
    })
}

/// The issuer file's text.
fn issuer_toml(
    issuer: &str,
    directory: &str,
    account_key: Option<KeyType>,
    opts: &LegoOptions,
) -> String {
    let mut t = format!(
        "# Generated by `certkeeper migrate lego` for lego's --server {}.\n[issuer.{}]\ndirectory = {}\n",
        opts.server,
        q(issuer),
        q(directory)
    );
    if let Some(k) = account_key {
        let _ = writeln!(t, "account_key = {}  # lego's account key", q(k.as_str()));
    }
    if let Some(b) = &opts.ca_bundle {
        let _ = writeln!(
            t,
            "ca_bundle = {}  # lego's LEGO_CA_CERTIFICATES",
            q(&b.display().to_string())
        );
    }
    let _ = writeln!(t, "\n[[issuer.{}.solver]]", q(issuer));
    match &opts.solver {
        LegoSolver::Webroot(p) => {
            let _ = writeln!(t, "webroot = {{ path = {} }}", q(&p.display().to_string()));
        }
        LegoSolver::Http | LegoSolver::Existing => {
            let _ = writeln!(
                t,
                "http01 = {{}}  # certkeeper's listener: [http01] listen in the main config (lego's --http.port)"
            );
        }
    }
    t
}

/// The `<name>.crt` files of `certificates/` (not `.issuer.crt`), sorted.
fn lego_certs(lego_dir: &Path) -> Result<Vec<String>, String> {
    let dir = lego_dir.join("certificates");
    let entries =
        std::fs::read_dir(&dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut out: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|f| !f.ends_with(".issuer.crt"))
        .filter_map(|f| f.strip_suffix(".crt").map(str::to_string))
        .collect();
    out.sort();
    Ok(out)
}

/// Replace lego's files of `c` by symlinks into its output dir, each with one `rename`.
fn link_lego_files(c: &LegoCert) -> Result<(), String> {
    for (ext, target) in LINKS {
        let file = c.file(ext);
        let tmp = c
            .stem
            .with_file_name(format!(".{}{ext}.certkeeper-tmp", c.name));
        let _ = std::fs::remove_file(&tmp);
        let target = Path::new("..")
            .join("certkeeper")
            .join(&c.name)
            .join(target);
        std::os::unix::fs::symlink(&target, &tmp)
            .and_then(|()| std::fs::rename(&tmp, &file))
            .map_err(|e| format!("cannot replace {} by a symlink: {e}", file.display()))?;
    }
    crate::store::fsync_dir(c.stem.parent().unwrap_or(Path::new("."))).map_err(|e| e.to_string())
}

/// The undo commands for one migrated certificate.
fn undo(c: &LegoCert, conf_d: &Path) -> String {
    let mut cmds = vec![format!(
        "rm {}",
        sh_quote(&cert_file(conf_d, &c.name).display().to_string())
    )];
    for (ext, target) in LINKS {
        cmds.push(format!(
            "cp --remove-destination {} {}",
            sh_quote(&c.out_dir.join(target).display().to_string()),
            sh_quote(&c.file(ext).display().to_string())
        ));
    }
    cmds.join(" && ")
}

/// Whether the config already defines `issuer` (a dns01 solver, an earlier run): then it is used as
/// it is. A config that does not load yet (e.g. conf.d/ missing) defines none; without a solver
/// flag the issuer must exist.
fn issuer_exists(
    config_path: &Path,
    opts: &LegoOptions,
    issuer: &str,
    directory: &str,
) -> Result<bool, String> {
    let before = crate::config::load(config_path);
    let exists = before
        .as_ref()
        .is_ok_and(|c| c.issuers.contains_key(issuer));
    if opts.solver == LegoSolver::Existing && !exists {
        if let Err(e) = before {
            return Err(e.to_string());
        }
        return Err(format!(
            "lego does not record how it solved challenges: pass --http (certkeeper's HTTP-01 listener) or \
             --http-webroot DIR, or define issuer {issuer:?} (directory = {directory:?}) with its dns01 solver in {} first and run again",
            conf_d(config_path).display()
        ));
    }
    Ok(exists)
}

/// Plan every `certificates/<name>.crt` not migrated yet; the lines to report and the failures
/// go to `report` and `failed`.
fn plan_certs(
    lego_dir: &Path,
    issuer: &str,
    report: &mut String,
    failed: &mut Vec<String>,
) -> Result<Vec<LegoCert>, String> {
    let mut todo = Vec::new();
    for name in lego_certs(lego_dir)? {
        let stem = lego_dir.join("certificates").join(&name);
        let crt = PathBuf::from(format!("{}.crt", stem.display()));
        if std::fs::symlink_metadata(&crt).is_ok_and(|m| m.file_type().is_symlink()) {
            let _ = writeln!(
                report,
                "{name}: already migrated ({} is a symlink)",
                crt.display()
            );
            continue;
        }
        let key = PathBuf::from(format!("{}.key", stem.display()));
        match pair_facts(&crt, &key).and_then(|f| plan_cert(lego_dir, &name, issuer, &f)) {
            Ok(c) => todo.push(c),
            Err(e) => failed.push(format!("{name}: not migrated: {e}")),
        }
    }
    Ok(todo)
}

/// A certificate to adopt, with its pair read on lego's side (as root, before anything changes).
struct Adopt<'a> {
    cert: &'a LegoCert,
    key_pem: Vec<u8>,
    /// The leaf followed by its chain.
    chain_pem: Vec<u8>,
}

impl<'a> Adopt<'a> {
    fn read(cert: &'a LegoCert) -> Result<Self, String> {
        let read = |ext: &str| {
            let p = cert.file(ext);
            std::fs::read(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))
        };
        let key_pem = read(".key")?;
        let mut chain_pem = read(".crt")?;
        // `--no-bundle` leaves the issuer out of the .crt.
        if X509::stack_from_pem(&chain_pem).map_or(0, |s| s.len()) < 2 {
            if !chain_pem.ends_with(b"\n") {
                chain_pem.push(b'\n');
            }
            chain_pem.extend_from_slice(&read(".issuer.crt")?);
        }
        Ok(Self {
            cert,
            key_pem,
            chain_pem,
        })
    }
}

/// Create the output directories and hand what the daemon will write to the state directory's
/// owner (see [`adopt::HandOver`]): `DIR/certkeeper/<domain>/` and a `--http-webroot`.
fn hand_over(
    lego_dir: &Path,
    adopt: &[Adopt<'_>],
    webroot: Option<&Path>,
    hand: &mut HandOver<'_>,
) -> Result<(), String> {
    hand.traversable(lego_dir)?;
    for a in adopt {
        let out = &a.cert.out_dir;
        std::fs::create_dir_all(out)
            .map_err(|e| format!("cannot create {}: {e}", out.display()))?;
        hand.give_dir(out)?;
    }
    hand.traversable(&lego_dir.join("certkeeper"))?;
    webroot.map_or(Ok(()), |root| hand.give_webroot(root))
}

/// The conf.d files to write: the issuer (unless the config has it) and one file per certificate.
fn conf_files(conf_d: &Path, issuer: Option<(&str, String)>, todo: &[LegoCert]) -> Vec<ConfFile> {
    let mut files: Vec<ConfFile> = Vec::new();
    if let Some((issuer, text)) = issuer {
        files.push((issuer_file(conf_d, issuer), text, 0o644));
    }
    for c in todo {
        files.push((cert_file(conf_d, &c.name), c.toml.clone(), 0o644));
    }
    files
}

/// Run the migration (or print it with `dry_run`); returns the report to print.
///
/// Run as root on a state directory that belongs to certkeeper's user, the files end up owned as
/// the daemon needs them (see [`adopt`]): lego's files are read as root, `conf.d/` written as root,
/// the output directories handed to the state directory's owner, the account and pairs written
/// acting as that owner, and lego's files linked and `account.json` renamed as root.
pub fn migrate(config_path: &Path, opts: &LegoOptions) -> Result<String, String> {
    let lego_dir =
        std::path::absolute(&opts.path).map_err(|e| format!("{}: {e}", opts.path.display()))?;
    let conf_d = conf_d(config_path);
    let (issuer, directory) = issuer_for_server(&opts.server);
    let issuer_exists = issuer_exists(config_path, opts, &issuer, &directory)?;
    let account = read_account(&lego_dir, &opts.server, opts.email.as_deref())?;
    let mut report = String::new();
    let mut failed = Vec::new();
    let todo = plan_certs(&lego_dir, &issuer, &mut report, &mut failed)?;
    if todo.is_empty() {
        failed.push(format!(
            "nothing to migrate: no certificates/*.crt in {} could be adopted",
            lego_dir.display()
        ));
        return Err(failed.join("\n"));
    }
    let issuer_text = (!issuer_exists).then(|| {
        let text = issuer_toml(&issuer, &directory, Some(account.key_type), opts);
        (issuer.as_str(), text)
    });
    let webroot = match &opts.solver {
        LegoSolver::Webroot(p) if !issuer_exists => Some(p.as_path()),
        _ => None,
    };
    if opts.dry_run {
        let files = conf_files(&conf_d, issuer_text, &todo);
        dry_run_report(&mut report, &files, &todo, &account, &issuer, &failed);
        return Ok(report);
    }
    let mut adopt = Vec::new();
    for c in &todo {
        match Adopt::read(c) {
            Ok(a) => adopt.push(a),
            Err(e) => failed.push(format!("{}: not migrated: {e}", c.name)),
        }
    }
    if adopt.is_empty() {
        return Err(failed.join("\n"));
    }
    let adopted: Vec<LegoCert> = adopt.iter().map(|a| a.cert.clone()).collect();
    let (cfg, written) =
        adopt::write_and_load(config_path, &conf_files(&conf_d, issuer_text, &adopted))?;
    let owner = match crate::privileges::state_owner(&cfg.state_dir) {
        Ok(o) => o,
        Err(e) => {
            written.restore();
            return Err(e.to_string());
        }
    };
    let mut hand = HandOver::new(owner.as_ref());
    if let Err(e) = hand_over(&lego_dir, &adopt, webroot, &mut hand) {
        written.restore();
        return Err(format!("{e}; nothing was migrated"));
    }
    let to_adopt = account.to_adopt(&issuer);
    let imported = adopt::as_state_owner(&Arc::new(cfg), owner.as_ref(), |rt| {
        match adopt::adopt_account(rt, &to_adopt) {
            Ok(line) => {
                let _ = writeln!(report, "{line}");
            }
            Err(e) => failed.push(e),
        }
        adopt
            .iter()
            .map(|a| adopt::import_served(rt, &a.cert.name, &a.key_pem, &a.chain_pem))
            .collect::<Vec<_>>()
    });
    let imported = imported.inspect_err(|_| written.restore())?;
    for n in &hand.done {
        let _ = writeln!(report, "{n}");
    }
    let mut done = 0;
    for (a, result) in adopt.iter().zip(imported) {
        let c = a.cert;
        match result
            .map_err(|e| e.to_string())
            .and_then(|i| link_cert(c, &i))
        {
            Ok(line) => {
                let _ = writeln!(report, "{line}\n  undo: {}", undo(c, &conf_d));
                done += 1;
            }
            Err(e) => {
                let _ = std::fs::remove_file(cert_file(&conf_d, &c.name));
                failed.push(format!(
                    "{}: not migrated (lego still renews it): {e}",
                    c.name
                ));
            }
        }
    }
    if failed.is_empty() {
        retire_lego_account(&account, &mut report, &mut failed);
    } else if done > 0 {
        failed.push(format!(
            "{} was kept because not every certificate was adopted: remove the adopted ones from lego's renew job (cron, timer)",
            account.json_path.display()
        ));
    }
    for f in &failed {
        let _ = writeln!(report, "warning: {f}");
    }
    report.push_str(&closing_words(&lego_dir, webroot));
    Ok(report)
}

/// What the daemon's unit must allow, and what to do next.
fn closing_words(lego_dir: &Path, webroot: Option<&Path>) -> String {
    let mut rw = vec![lego_dir.join("certkeeper").display().to_string()];
    rw.extend(webroot.map(|p| p.display().to_string()));
    format!(
        "The daemon writes {}: under systemd, allow it with `systemctl edit certkeeper`:\n  [Service]\n  ReadWritePaths={}\n\
         Remove lego's renew job (cron, timer); check with `certkeeper check`, then `systemctl restart certkeeper` (a changed unit needs a restart).\n",
        rw.join(" and "),
        rw.join(" ")
    )
}

/// What `--dry-run` prints: the files, and what would be imported and adopted.
fn dry_run_report(
    report: &mut String,
    files: &[ConfFile],
    todo: &[LegoCert],
    account: &LegoAccount,
    issuer: &str,
    failed: &[String],
) {
    let _ = writeln!(
        report,
        "# --dry-run: nothing written, imported or renamed\n"
    );
    for (p, text, _) in files {
        let _ = writeln!(report, "# ---- {} ----\n{text}", p.display());
    }
    for c in todo {
        let _ = writeln!(
            report,
            "# would import {name}.crt/.key into {} and replace lego's {name}.crt, .key, .issuer.crt by symlinks to it",
            c.out_dir.display(),
            name = c.name
        );
    }
    let _ = writeln!(
        report,
        "# would adopt lego account {} ({}) as the account of issuer {issuer}",
        account.email, account.url
    );
    for f in failed {
        let _ = writeln!(report, "# {f}");
    }
}

/// Rename lego's `account.json` to `account.json.migrated` (once every certificate is
/// certkeeper's), so a leftover `lego renew` stops at "not registered" instead of writing through
/// the symlinks.
fn retire_lego_account(account: &LegoAccount, report: &mut String, failed: &mut Vec<String>) {
    if account.json_path.extension().is_none_or(|e| e != "json") {
        return; // renamed by an earlier run
    }
    let migrated = account.json_path.with_extension("json.migrated");
    match std::fs::rename(&account.json_path, &migrated) {
        Ok(()) => {
            let _ = writeln!(
                report,
                "lego's account.json renamed, so a leftover `lego renew` cannot write through the symlinks\n  undo: mv {} {}",
                sh_quote(&migrated.display().to_string()),
                sh_quote(&account.json_path.display().to_string())
            );
        }
        Err(e) => failed.push(format!(
            "renaming {} failed ({e}): remove lego's renew job (cron, timer) by hand",
            account.json_path.display()
        )),
    }
}

/// Point lego's files of an imported certificate at its output dir (as root, who owns them);
/// returns the report line.
fn link_cert(c: &LegoCert, i: &Imported) -> Result<String, String> {
    link_lego_files(c).map_err(|e| {
        format!(
            "imported into {}, but {e}; point the web server at that directory",
            c.out_dir.display()
        )
    })?;
    Ok(format!(
        "{}: imported serial {} (valid until {}) into {}; lego's files now link there; {}",
        c.name,
        i.serial,
        i.not_after,
        c.out_dir.display(),
        i.due
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_map_to_legos_dir_names_and_issuers() {
        assert_eq!(
            server_dir_name(LE_PRODUCTION),
            "acme-v02.api.letsencrypt.org"
        );
        assert_eq!(
            server_dir_name("https://127.0.0.1:14000/dir"),
            "127.0.0.1_14000"
        );
        assert_eq!(
            issuer_for_server(LE_STAGING),
            (
                "lego-acme-staging-v02.api.letsencrypt.org".into(),
                "letsencrypt-staging".into()
            )
        );
        assert_eq!(
            issuer_for_server("https://ca.internal:8443/acme/dir/"),
            (
                "lego-ca.internal-8443".into(),
                "https://ca.internal:8443/acme/dir".into()
            )
        );
        assert_eq!(
            issuer_file(Path::new("/etc/certkeeper/conf.d"), "lego-ca.internal-8443"),
            Path::new("/etc/certkeeper/conf.d/lego-issuer-ca.internal-8443.toml")
        );
    }

    fn write_account(dir: &Path, email: &str, key: &PKey<openssl::pkey::Private>) -> PathBuf {
        let acct = dir.join("accounts/127.0.0.1_14000").join(email);
        std::fs::create_dir_all(acct.join("keys")).unwrap();
        let json = serde_json::json!({"email": email, "registration": {"body": {"status": "valid", "contact": [format!("mailto:{email}")]}, "uri": format!("https://127.0.0.1:14000/my-account/{email}")}});
        std::fs::write(acct.join("account.json"), json.to_string()).unwrap();
        // lego writes EC keys as SEC1 ("EC PRIVATE KEY").
        let pem = key.ec_key().unwrap().private_key_to_pem().unwrap();
        std::fs::write(acct.join("keys").join(format!("{email}.key")), pem).unwrap();
        acct.join("account.json")
    }

    #[test]
    fn legos_account_is_read_and_chosen_by_email() {
        let dir = tempfile::tempdir().unwrap();
        let server = "https://127.0.0.1:14000/dir";
        let key = KeyType::EcdsaP256.generate().unwrap();
        let json = write_account(dir.path(), "a@example.com", &key);
        let a = read_account(dir.path(), server, None).unwrap();
        assert_eq!(a.email, "a@example.com");
        assert_eq!(a.json_path, json);
        assert_eq!(a.key_type, KeyType::EcdsaP256);
        assert_eq!(a.url, "https://127.0.0.1:14000/my-account/a@example.com");
        assert_eq!(a.contact, ["mailto:a@example.com"]);
        let back = PKey::private_key_from_pem(a.key_pem.as_bytes()).unwrap();
        assert!(back.public_eq(&key));
        crate::acme::AccountKey::from_pem(a.key_pem.as_bytes()).unwrap();

        write_account(dir.path(), "b@example.com", &key);
        let e = read_account(dir.path(), server, None).unwrap_err();
        assert!(
            e.contains("a@example.com, b@example.com") && e.contains("--email"),
            "{e}"
        );
        let b = read_account(dir.path(), server, Some("b@example.com")).unwrap();
        assert_eq!(b.url, "https://127.0.0.1:14000/my-account/b@example.com");

        // After a migration the renamed account.json is still read.
        std::fs::rename(&json, json.with_extension("json.migrated")).unwrap();
        let a = read_account(dir.path(), server, Some("a@example.com")).unwrap();
        assert!(a.json_path.ends_with("account.json.migrated"));

        let e = read_account(dir.path(), "https://other:1/dir", None).unwrap_err();
        assert!(e.contains("--server"), "{e}");
    }

    #[test]
    fn planned_files_load_as_a_config() {
        let facts = LiveFacts {
            names: vec!["www.example.com".into(), "example.com".into()],
            key_type: Some("ecdsa-p384".into()),
        };
        let c = plan_cert(
            Path::new("/srv/lego"),
            "www.example.com",
            "lego-127.0.0.1-14000",
            &facts,
        )
        .unwrap();
        assert_eq!(c.out_dir, Path::new("/srv/lego/certkeeper/www.example.com"));
        assert_eq!(
            c.file(".issuer.crt"),
            Path::new("/srv/lego/certificates/www.example.com.issuer.crt")
        );
        let opts = LegoOptions {
            path: "/srv/lego".into(),
            server: "https://127.0.0.1:14000/dir".into(),
            email: None,
            solver: LegoSolver::Webroot("/var/www/html".into()),
            ca_bundle: Some("/etc/ssl/pebble.pem".into()),
            dry_run: false,
        };
        let issuer = issuer_toml(
            "lego-127.0.0.1-14000",
            &opts.server,
            Some(KeyType::EcdsaP256),
            &opts,
        );
        let main = format!("state_dir = \"/tmp/x\"\n{issuer}\n{}", c.toml);
        let cfg =
            crate::config::Config::from_str(&main, Path::new("/etc/certkeeper/certkeeper.toml"))
                .unwrap_or_else(|e| panic!("{e}\n---\n{main}"));
        let cert = &cfg.certificates["www.example.com"];
        assert_eq!(cert.key.as_str(), "ecdsa-p384");
        assert_eq!(cert.domains, ["www.example.com", "example.com"]);
        assert_eq!(cert.output.dir, c.out_dir);
        let i = &cfg.issuers["lego-127.0.0.1-14000"];
        assert_eq!(i.account_key, KeyType::EcdsaP256);
        assert_eq!(i.solvers.len(), 1);
        assert!(
            issuer.contains("webroot = { path = \"/var/www/html\" }"),
            "{issuer}"
        );
        assert!(plan_cert(Path::new("/l"), "x", "i", &LiveFacts::default()).is_err());
    }

    #[test]
    fn lego_files_become_relative_symlinks_and_undo_restores_them() {
        let dir = tempfile::tempdir().unwrap();
        let lego = dir.path();
        let facts = LiveFacts {
            names: vec!["a.example.com".into()],
            key_type: Some("ecdsa-p256".into()),
        };
        let c = plan_cert(lego, "a.example.com", "i", &facts).unwrap();
        std::fs::create_dir_all(lego.join("certificates")).unwrap();
        std::fs::create_dir_all(&c.out_dir).unwrap();
        for (ext, target) in LINKS {
            std::fs::write(c.file(ext), format!("lego {ext}")).unwrap();
            std::fs::write(c.out_dir.join(target), format!("certkeeper {target}")).unwrap();
        }
        link_lego_files(&c).unwrap();
        for (ext, target) in LINKS {
            assert_eq!(
                std::fs::read_to_string(c.file(ext)).unwrap(),
                format!("certkeeper {target}")
            );
        }
        assert_eq!(lego_certs(lego).unwrap(), ["a.example.com"]);
        let cmd = undo(&c, Path::new("/etc/certkeeper/conf.d")).replace(
            "rm '/etc/certkeeper/conf.d/lego-a.example.com.toml' && ",
            "",
        );
        let st = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(&cmd)
            .status()
            .unwrap();
        assert!(st.success(), "{cmd}");
        for (ext, target) in LINKS {
            let p = c.file(ext);
            assert!(
                !std::fs::symlink_metadata(&p).unwrap().is_symlink(),
                "{}",
                p.display()
            );
            assert_eq!(
                std::fs::read_to_string(p).unwrap(),
                format!("certkeeper {target}")
            );
        }
    }

    #[test]
    fn without_a_solver_flag_the_issuer_must_be_in_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("certkeeper.toml");
        std::fs::write(&main, "state_dir = \"/tmp/x\"\n").unwrap();
        let mut opts = LegoOptions {
            path: dir.path().join("lego"),
            server: "https://127.0.0.1:14000/dir".into(),
            email: None,
            solver: LegoSolver::Existing,
            ca_bundle: None,
            dry_run: true,
        };
        let (issuer, directory) = issuer_for_server(&opts.server);
        let e = issuer_exists(&main, &opts, &issuer, &directory).unwrap_err();
        assert!(
            e.contains("--http") && e.contains("issuer \"lego-127.0.0.1-14000\""),
            "{e}"
        );
        opts.solver = LegoSolver::Http;
        assert!(!issuer_exists(&main, &opts, &issuer, &directory).unwrap());
        // Defined by the user (e.g. with a dns01 solver): used as it is.
        std::fs::write(
            &main,
            format!(
                "state_dir = \"/tmp/x\"\n[issuer.{}]\ndirectory = {}\n[[issuer.{}.solver]]\ndns01 = {{ provider = \"exec\", command = \"/bin/true\" }}\n",
                q(&issuer),
                q(&directory),
                q(&issuer)
            ),
        )
        .unwrap();
        opts.solver = LegoSolver::Existing;
        assert!(issuer_exists(&main, &opts, &issuer, &directory).unwrap());
    }
}
