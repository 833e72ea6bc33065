//! Text and facts every `certkeeper migrate ...` uses: quoting for the TOML and shell text it
//! writes, reading a pair's names and key type, and where `conf.d/` is. How a migration is applied
//! (who writes what) is [`super::adopt`].

use std::path::{Path, PathBuf};

use openssl::pkey::{Id, PKey};
use openssl::x509::X509;

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

/// `conf.d/` next to the main config file.
pub fn conf_d(config_path: &Path) -> PathBuf {
    config_path
        .parent()
        .unwrap_or(Path::new("."))
        .join("conf.d")
}

/// The contact URLs in the JSON array at `pointer` of an account file (certbot's `regr.json`,
/// lego's `account.json`); none when it is missing.
pub fn contacts_at(json: &serde_json::Value, pointer: &str) -> Vec<String> {
    json.pointer(pointer)
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|c| c.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}
