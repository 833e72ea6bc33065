//! Process-wide TLS set-up: cheap start-up without changing what child processes see.
//!
//! Every OpenSSL client context (`SslConnector::builder`, used by native-tls under reqwest) loads
//! the default CA bundle *file* eagerly: OpenSSL 3 parses ~150 certificates each time, 0.1 s on an
//! idle host and over 1 s on a busy one, which dwarfs a whole ACME order against a local CA. The
//! hashed directory beside the file (`/etc/ssl/certs/<hash>.0`) holds the same roots and is read
//! lazily, one file per issuer looked up. So certkeeper points `SSL_CERT_FILE` at an empty file
//! for itself, and gives every program it starts (reload hooks, DNS exec hooks) the original value
//! instead ([`original_trust_env`], used by [`crate::child::prepare`]).

use std::ffi::OsString;
use std::sync::OnceLock;

/// `Some(original value)` once certkeeper replaced `SSL_CERT_FILE` for itself.
static ORIGINAL: OnceLock<Option<OsString>> = OnceLock::new();

/// Where the system's hashed CA directory lives on Debian, Ubuntu, Fedora, Arch and Alpine.
const HASHED_DIR: &str = "/etc/ssl/certs";
/// The bundle file built from that directory (Debian's ca-certificates).
const BUNDLE_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Prefer the lazily read hashed CA directory over the bundle file.
///
/// Only where that loses nothing: `SSL_CERT_FILE` unset or naming the system bundle (many hosts
/// export it), `SSL_CERT_DIR` unset or naming the system directory, and the directory has hash
/// links (otherwise the bundle file is the only source of roots). A custom bundle is left alone.
///
/// Call it first thing in `main`, before any other thread exists.
pub fn prefer_lazy_system_roots() {
    let file = std::env::var_os("SSL_CERT_FILE");
    let dir = std::env::var_os("SSL_CERT_DIR");
    let file_is_system = file.as_deref().is_none_or(|f| f == BUNDLE_FILE);
    let dir_is_system = dir
        .as_deref()
        .is_none_or(|d| d == HASHED_DIR || d == "/etc/ssl/certs/");
    if !file_is_system || !dir_is_system || !has_hash_links(HASHED_DIR) {
        return;
    }
    if ORIGINAL.set(file).is_ok() {
        // SAFETY: the caller runs this before any other thread exists.
        unsafe { std::env::set_var("SSL_CERT_FILE", "/dev/null") };
    }
}

fn has_hash_links(dir: &str) -> bool {
    std::fs::read_dir(dir).is_ok_and(|rd| {
        rd.flatten().any(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.len() == 10 && n.ends_with(".0") && n[..8].bytes().all(|b| b.is_ascii_hexdigit())
        })
    })
}

/// The TLS trust variables a child process inherits: `SSL_CERT_FILE` as certkeeper was started
/// with it (not the `/dev/null` set for itself) and `SSL_CERT_DIR`, when set.
pub fn original_trust_env() -> Vec<(&'static str, OsString)> {
    let file = match ORIGINAL.get() {
        Some(original) => original.clone(),
        None => std::env::var_os("SSL_CERT_FILE"),
    };
    let dir = std::env::var_os("SSL_CERT_DIR");
    [("SSL_CERT_FILE", file), ("SSL_CERT_DIR", dir)]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_links_are_recognised_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        assert!(!has_hash_links(d));
        std::fs::write(dir.path().join("ca-certificates.crt"), "").unwrap();
        std::fs::write(dir.path().join("README.0"), "").unwrap();
        assert!(!has_hash_links(d));
        std::fs::write(dir.path().join("9d04f354.0"), "").unwrap();
        assert!(has_hash_links(d));
        assert!(!has_hash_links("/nonexistent-dir"));
    }
}
