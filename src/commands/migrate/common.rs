//! Building blocks every `certkeeper migrate ...` uses: quoting for the TOML and shell text it
//! writes, reading a pair's names and key type, adopting another client's ACME account, and writing
//! the config files so that nothing is left behind when the result does not load.

use std::path::{Path, PathBuf};

use openssl::pkey::{Id, PKey};
use openssl::x509::X509;

use crate::config::Config;
use crate::engine::Runtime;
use crate::store::{self, AccountRecord, atomic_write};

/// A TOML string literal.
pub fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A TOML array of string literals.
pub fn q_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| q(s)).collect();
    format!("[{}]", quoted.join(", "))
}

/// A POSIX shell single-quoted word.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// What a pair says: the leaf's SANs and the key type.
#[derive(Clone, Debug, Default)]
pub struct LiveFacts {
    /// DNS names and IP addresses of the leaf, in certificate order.
    pub names: Vec<String>,
    /// The private key's type (`rsa-2048`, `ecdsa-p256`, ...), when the key could be read.
    pub key_type: Option<String>,
}

/// Read the leaf's names from `cert` (the first certificate of the file) and the key's type from
/// `key`.
pub fn pair_facts(cert: &Path, key: &Path) -> Result<LiveFacts, String> {
    let pem = std::fs::read(cert).map_err(|e| format!("cannot read {}: {e}", cert.display()))?;
    let leaf = X509::from_pem(&pem).map_err(|e| format!("{}: {e}", cert.display()))?;
    let mut names = Vec::new();
    for san in leaf.subject_alt_names().iter().flatten() {
        if let Some(d) = san.dnsname() {
            names.push(d.to_ascii_lowercase());
        } else if let Some(ip) = san.ipaddress() {
            let addr: Option<std::net::IpAddr> = match ip.len() {
                4 => <[u8; 4]>::try_from(ip).ok().map(Into::into),
                16 => <[u8; 16]>::try_from(ip).ok().map(Into::into),
                _ => None,
            };
            names.extend(addr.map(|a| a.to_string()));
        }
    }
    let key_type = std::fs::read(key)
        .ok()
        .and_then(|k| PKey::private_key_from_pem(&k).ok())
        .and_then(|k| match k.id() {
            Id::RSA => Some(format!("rsa-{}", k.bits())),
            Id::EC => match k.bits() {
                256 => Some("ecdsa-p256".into()),
                384 => Some("ecdsa-p384".into()),
                _ => None,
            },
            _ => None,
        });
    Ok(LiveFacts { names, key_type })
}

/// Another client's ACME account, ready to become certkeeper's.
#[derive(Clone, Debug)]
pub struct ForeignAccount {
    /// PKCS#8 PEM of the account key.
    pub key_pem: String,
    /// The account URL.
    pub url: String,
    /// Contacts, when the other client kept them.
    pub contact: Vec<String>,
}

/// What [`adopt_account`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Adoption {
    /// The account is now certkeeper's account of the issuer.
    Adopted,
    /// certkeeper already had exactly this account.
    AlreadyOurs,
    /// certkeeper already has another account for the issuer (its URL); nothing was changed.
    Kept(String),
}

/// Make `account` certkeeper's account of issuer `issuer` (which must be in `rt`'s config), unless
/// certkeeper already has one there.
pub fn adopt_account(
    rt: &Runtime,
    issuer: &str,
    account: &ForeignAccount,
) -> Result<Adoption, String> {
    let Some(ic) = rt.config.issuers.get(issuer) else {
        return Err(format!("no issuer {issuer:?} in the config"));
    };
    let aid = store::account_id(issuer, &ic.directory);
    match rt.accounts.load(&aid).map_err(|e| e.to_string())? {
        Some(s) if s.record.as_ref().is_some_and(|r| r.url == account.url) => {
            Ok(Adoption::AlreadyOurs)
        }
        Some(s) if s.record.is_some() => {
            Ok(Adoption::Kept(s.record.map(|r| r.url).unwrap_or_default()))
        }
        _ => {
            let record = AccountRecord {
                url: account.url.clone(),
                directory: ic.directory.clone(),
                contact: account.contact.clone(),
                created: jiff::Timestamp::now(),
            };
            rt.accounts
                .save_key(&aid, &account.key_pem)
                .and_then(|()| rt.accounts.save_record(&aid, &record))
                .map_err(|e| e.to_string())?;
            Ok(Adoption::Adopted)
        }
    }
}

/// A config file a migration writes: path, text, mode.
pub type ConfFile = (PathBuf, String, u32);

/// Config files written by [`write_and_load`], with what was there before, to take them back.
#[derive(Debug, Default)]
pub struct Written(Vec<(PathBuf, Option<Vec<u8>>)>);

impl Written {
    /// Put every file back as it was (removed when it did not exist), newest first.
    pub fn restore(&self) {
        for (p, before) in self.0.iter().rev() {
            let _ = match before {
                Some(b) => atomic_write(p, b, 0o644, None, None).map_err(|e| e.to_string()),
                None => std::fs::remove_file(p).map_err(|e| e.to_string()),
            };
        }
    }
}

/// Write `files` (atomically), then load the config at `config_path` and check that it includes
/// every file whose name ends in `.toml`. On any failure every file is put back as it was and the
/// error says that nothing was changed.
pub fn write_and_load(config_path: &Path, files: &[ConfFile]) -> Result<(Config, Written), String> {
    let mut written = Written::default();
    let mut result = Ok(());
    for (path, text, mode) in files {
        if let Some(dir) = path.parent() {
            result = std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()));
        }
        if result.is_err() {
            break;
        }
        let before = std::fs::read(path).ok();
        result = atomic_write(path, text.as_bytes(), *mode, None, None).map_err(|e| e.to_string());
        if result.is_err() {
            break;
        }
        written.0.push((path.clone(), before));
    }
    let loaded = result.and_then(|()| crate::config::load(config_path).map_err(|e| e.to_string()));
    let cfg = match loaded {
        Ok(cfg) => cfg,
        Err(e) => {
            written.restore();
            return Err(format!(
                "the migrated config does not load, nothing was changed: {e}"
            ));
        }
    };
    let toml = files
        .iter()
        .map(|(p, _, _)| p)
        .filter(|p| p.extension().is_some_and(|e| e == "toml"));
    for p in toml {
        if !cfg.files.contains(p) {
            written.restore();
            return Err(format!(
                "{} does not include {}: add include = [\"conf.d/*.toml\"] to it and run again; nothing was changed",
                config_path.display(),
                p.display()
            ));
        }
    }
    Ok((cfg, written))
}

/// `conf.d/` next to the main config file.
pub fn conf_d(config_path: &Path) -> PathBuf {
    config_path
        .parent()
        .unwrap_or(Path::new("."))
        .join("conf.d")
}
