//! Process-wide TLS set-up: cheap start-up without changing what child processes see.
//!
//! Every OpenSSL client context (`SslConnector::builder`, used by native-tls under reqwest) loads
//! the default CA bundle *file* eagerly: OpenSSL 3 parses ~150 certificates each time, 0.1 s on an
//! idle host and over 1 s on a busy one, which dwarfs a whole ACME order against a local CA. The
//! hashed directory beside the file (`/etc/ssl/certs/<hash>.0`) holds the same roots and is read
//! lazily, one file per issuer looked up. So certkeeper points `SSL_CERT_FILE` at an empty file
//! for itself, and takes that back out of the environment of every program it starts (reload
//! hooks, DNS exec hooks), which therefore see the administrator's environment unchanged.

use std::sync::atomic::{AtomicBool, Ordering};

static SET_BY_US: AtomicBool = AtomicBool::new(false);

/// Where the system's hashed CA directory lives on Debian, Ubuntu, Fedora, Arch and Alpine.
const HASHED_DIR: &str = "/etc/ssl/certs";

/// Prefer the lazily read hashed CA directory over the bundle file.
///
/// Does nothing when the administrator set `SSL_CERT_FILE` or `SSL_CERT_DIR`, or when the
/// directory has no hash links (then the bundle file is the only source of roots).
///
/// Call it first thing in `main`, before any other thread exists.
pub fn prefer_lazy_system_roots() {
    if std::env::var_os("SSL_CERT_FILE").is_some() || std::env::var_os("SSL_CERT_DIR").is_some() {
        return;
    }
    if !has_hash_links(HASHED_DIR) {
        return;
    }
    // SAFETY: the caller runs this before any other thread exists.
    unsafe { std::env::set_var("SSL_CERT_FILE", "/dev/null") };
    SET_BY_US.store(true, Ordering::SeqCst);
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

/// Give a child process the environment certkeeper was started with.
pub fn child_env(cmd: &mut tokio::process::Command) {
    if SET_BY_US.load(Ordering::SeqCst) {
        cmd.env_remove("SSL_CERT_FILE");
    }
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
