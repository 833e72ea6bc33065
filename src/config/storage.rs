//! `[storage]`: the file tree (default) or PostgreSQL (a fleet), validated at load: the url parses
//! and carries no password, the password and encryption key files are read, the key decodes to
//! 32 bytes, the node name is usable, the lease is within bounds.

use std::str::FromStr as _;
use std::time::Duration;

use toml::Spanned;

use super::raw::{RawStorage, SStr};
use super::validate::Ctx;
use super::{PostgresConfig, Secret, StorageConfig, parse_duration};
use crate::store::postgres::crypto::DataKey;

/// Validate `[storage]`; errors go to `cx` (the returned value is then not used).
pub(super) fn storage(cx: &mut Ctx, raw: &Spanned<RawStorage>) -> StorageConfig {
    let s = raw.get_ref();
    let backend = s.backend.as_ref().map_or("file", |b| b.get_ref().as_str());
    match backend {
        "file" => {
            for (key, v) in [
                ("url", &s.url),
                ("password_file", &s.password_file),
                ("encryption_key_file", &s.encryption_key_file),
                ("node", &s.node),
                ("lease", &s.lease),
            ] {
                if let Some(v) = v {
                    cx.err(
                        0,
                        &v.span(),
                        format!("storage.{key}"),
                        "is only used with backend = \"postgres\" (the file backend keeps everything in state_dir)",
                    );
                }
            }
            if let Some(v) = &s.previous_encryption_key_files {
                cx.err(
                    0,
                    &v.span(),
                    "storage.previous_encryption_key_files",
                    "is only used with backend = \"postgres\" (the file backend keeps everything in state_dir)",
                );
            }
            StorageConfig::File
        }
        "postgres" => postgres(cx, raw).map_or(StorageConfig::File, StorageConfig::Postgres),
        other => {
            let span = s.backend.as_ref().map(Spanned::span).unwrap_or_default();
            cx.err(
                0,
                &span,
                "storage.backend",
                format!("must be \"file\" or \"postgres\", got \"{other}\""),
            );
            StorageConfig::File
        }
    }
}

fn postgres(cx: &mut Ctx, raw: &Spanned<RawStorage>) -> Option<PostgresConfig> {
    let s = raw.get_ref();
    let url = match &s.url {
        Some(u) => url(cx, u),
        None => {
            cx.err(
                0,
                &raw.span(),
                "storage.url",
                "is required with backend = \"postgres\", e.g. url = \"postgresql://certkeeper@db1.internal:5432/certkeeper\"",
            );
            None
        }
    };
    let password = s
        .password_file
        .as_ref()
        .and_then(|f| read_file(cx, f, "storage.password_file"))
        .map(|text| Secret::new(text.trim_end_matches(['\n', '\r'])));
    let key = match &s.encryption_key_file {
        Some(f) => encryption_key(cx, f),
        None => {
            cx.err(
                0,
                &raw.span(),
                "storage.encryption_key_file",
                "is required with backend = \"postgres\": private keys are stored only encrypted; create it with \
                 `openssl rand -base64 32 > /etc/certkeeper/storage.key` (mode 0600, the same file on every node)",
            );
            None
        }
    };
    let previous = previous_keys(cx, s.previous_encryption_key_files.as_ref());
    let node = node(cx, s.node.as_ref());
    let lease = lease(cx, s.lease.as_ref());
    Some(PostgresConfig {
        url: url?,
        password,
        encryption_key_file: key.as_ref()?.0.clone(),
        encryption_key: key?.1,
        previous_encryption_keys: previous?,
        node: node?,
        lease: lease?,
    })
}

/// `previous_encryption_key_files`: keys rotated out (they open, never seal); each must be a valid
/// key file.
fn previous_keys(
    cx: &mut Ctx,
    files: Option<&Spanned<Vec<SStr>>>,
) -> Option<Vec<(std::path::PathBuf, DataKey)>> {
    let Some(files) = files else {
        return Some(Vec::new());
    };
    let mut keys = Vec::new();
    let mut ok = true;
    for f in files.get_ref() {
        match encryption_key_at(cx, f, "storage.previous_encryption_key_files") {
            Some(k) => keys.push(k),
            None => ok = false,
        }
    }
    ok.then_some(keys)
}

/// The shortest and longest `lease`: renewed every third of it, a lease must outlast a renewal
/// that is slow to answer; a dead node's certificates (and the state locks it held) wait for
/// their leases to expire, so a long one stalls the fleet.
const LEASE_BOUNDS: (Duration, Duration) = (Duration::from_secs(3), Duration::from_secs(600));

fn lease(cx: &mut Ctx, l: Option<&SStr>) -> Option<Duration> {
    let Some(l) = l else {
        return Some(crate::store::postgres::DEFAULT_LEASE_TTL);
    };
    let (min, max) = LEASE_BOUNDS;
    match parse_duration(l.get_ref()) {
        Ok(d) if (min..=max).contains(&d) => Some(d),
        Ok(_) => {
            cx.err(
                0,
                &l.span(),
                "storage.lease",
                format!(
                    "must be between 3s and 10m (how long the fleet waits for a node that died \
                     while ordering), got \"{}\"",
                    l.get_ref()
                ),
            );
            None
        }
        Err(msg) => {
            cx.err(0, &l.span(), "storage.lease", msg);
            None
        }
    }
}

fn url(cx: &mut Ctx, u: &SStr) -> Option<String> {
    let text = u.get_ref();
    if !(text.starts_with("postgresql://") || text.starts_with("postgres://")) {
        cx.err(
            0,
            &u.span(),
            "storage.url",
            "must be a URL like \"postgresql://certkeeper@db1.internal:5432/certkeeper\"",
        );
        return None;
    }
    match tokio_postgres::Config::from_str(text) {
        Err(e) => {
            cx.err(
                0,
                &u.span(),
                "storage.url",
                format!(
                    "cannot be parsed: {}",
                    crate::store::postgres::error_text(&e)
                ),
            );
            None
        }
        Ok(c) if c.get_password().is_some() => {
            cx.err(
                0,
                &u.span(),
                "storage.url",
                "must not contain the password: put it in password_file = \"/etc/certkeeper/pg.pass\" (mode 0600) \
                 or the PGPASSWORD environment variable",
            );
            None
        }
        Ok(_) => Some(text.clone()),
    }
}

fn read_file(cx: &mut Ctx, f: &SStr, key: &str) -> Option<String> {
    let path = cx.resolve(0, f.get_ref());
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => {
            super::secret::warn_if_others_can_read(&path);
            Some(t)
        }
        Ok(_) => {
            cx.err(0, &f.span(), key, format!("{} is empty", path.display()));
            None
        }
        Err(e) => {
            let msg = format!(
                "cannot read {}: {e} (check the path and that certkeeper's user may read it)",
                path.display()
            );
            cx.err(0, &f.span(), key, msg);
            None
        }
    }
}

fn encryption_key(cx: &mut Ctx, f: &SStr) -> Option<(std::path::PathBuf, DataKey)> {
    encryption_key_at(cx, f, "storage.encryption_key_file")
}

fn encryption_key_at(cx: &mut Ctx, f: &SStr, key: &str) -> Option<(std::path::PathBuf, DataKey)> {
    let text = read_file(cx, f, key)?;
    let path = cx.resolve(0, f.get_ref());
    match DataKey::from_base64(&text) {
        Ok(k) => Some((path, k)),
        Err(e) => {
            let msg = format!("{}: {e}", path.display());
            cx.err(0, &f.span(), key, msg);
            None
        }
    }
}

fn node(cx: &mut Ctx, n: Option<&SStr>) -> Option<String> {
    let (name, span) = match n {
        Some(n) => (n.get_ref().clone(), n.span()),
        None => match std::fs::read_to_string("/proc/sys/kernel/hostname") {
            Ok(h) => (h.trim().to_string(), 0..0),
            Err(e) => {
                cx.err(
                    0,
                    &(0..0),
                    "storage.node",
                    format!("cannot read the host name ({e}): set node = \"web1\""),
                );
                return None;
            }
        },
    };
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Some(name)
    } else {
        cx.err(
            0,
            &span,
            "storage.node",
            format!("\"{name}\" cannot name a node: use up to 63 letters, digits, '-', '_' or '.'"),
        );
        None
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::super::{Config, StorageConfig, load};

    /// Write `storage` (the lines of a `[storage]` table) and `files` next to a main file; load it.
    fn load_with(
        storage: &str,
        files: &[(&str, &str)],
    ) -> (Result<Config, String>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let path = dir.path().join("certkeeper.toml");
        std::fs::write(
            &path,
            format!("state_dir = \"/var/lib/certkeeper\"\n\n{storage}"),
        )
        .unwrap();
        let r = load(&path).map_err(|e| e.to_string().replace(dir.path().to_str().unwrap(), "DIR"));
        (r, dir)
    }

    fn key_text(n: usize) -> String {
        base64::engine::general_purpose::STANDARD.encode(vec![9u8; n])
    }

    #[test]
    fn file_is_the_default() {
        let (cfg, _d) = load_with("", &[]);
        assert!(matches!(cfg.unwrap().storage, StorageConfig::File));
        let (cfg, _d) = load_with("[storage]\nbackend = \"file\"\n", &[]);
        assert!(matches!(cfg.unwrap().storage, StorageConfig::File));
    }

    #[test]
    fn postgres_reads_the_password_and_the_key() {
        let key = key_text(32);
        let (cfg, d) = load_with(
            "[storage]\nbackend = \"postgres\"\nurl = \"postgresql://certkeeper@db1.internal:5432/certkeeper\"\n\
             password_file = \"pg.pass\"\nencryption_key_file = \"storage.key\"\nnode = \"web1\"\n",
            &[
                ("pg.pass", "s3cret pw\n"),
                ("storage.key", &format!("{key}\n")),
            ],
        );
        let StorageConfig::Postgres(pg) = cfg.unwrap().storage else {
            panic!("not postgres");
        };
        assert_eq!(
            pg.url,
            "postgresql://certkeeper@db1.internal:5432/certkeeper"
        );
        assert_eq!(pg.password.as_ref().map(|p| p.expose()), Some("s3cret pw"));
        assert_eq!(pg.node, "web1");
        assert_eq!(pg.lease, crate::store::postgres::DEFAULT_LEASE_TTL);
        assert_eq!(pg.encryption_key_file, d.path().join("storage.key"));
        let want = crate::store::postgres::crypto::DataKey::from_bytes([9u8; 32]);
        assert_eq!(pg.encryption_key.id(), want.id());
        assert!(!format!("{pg:?}").contains("s3cret"));
        // Without node: the host name.
        let (cfg, _d) = load_with(
            "[storage]\nbackend = \"postgres\"\nurl = \"postgres://ck@127.0.0.1/ck\"\nencryption_key_file = \"k\"\n",
            &[("k", &key)],
        );
        let StorageConfig::Postgres(pg) = cfg.unwrap().storage else {
            panic!("not postgres");
        };
        assert!(!pg.node.is_empty());
        assert!(pg.password.is_none());
        // A lease of its own.
        let (cfg, _d) = load_with(
            "[storage]\nbackend = \"postgres\"\nurl = \"postgres://ck@127.0.0.1/ck\"\nencryption_key_file = \"k\"\nlease = \"45s\"\n",
            &[("k", &key)],
        );
        let StorageConfig::Postgres(pg) = cfg.unwrap().storage else {
            panic!("not postgres");
        };
        assert_eq!(pg.lease, std::time::Duration::from_secs(45));
        assert_eq!(
            crate::store::postgres::PgOptions::from_config(&pg).lease_ttl,
            std::time::Duration::from_secs(45)
        );
    }

    #[test]
    fn previous_keys_open_during_a_rotation() {
        let (old, new) = (
            key_text(32),
            base64::engine::general_purpose::STANDARD.encode([5u8; 32]),
        );
        let (cfg, d) = load_with(
            "[storage]\nbackend = \"postgres\"\nurl = \"postgres://ck@127.0.0.1/ck\"\n\
             encryption_key_file = \"new\"\nprevious_encryption_key_files = [\"old\"]\nnode = \"web1\"\n",
            &[("old", &old), ("new", &new)],
        );
        let StorageConfig::Postgres(pg) = cfg.unwrap().storage else {
            panic!("not postgres");
        };
        let want = crate::store::postgres::crypto::DataKey::from_bytes([9u8; 32]);
        assert_eq!(pg.previous_encryption_keys.len(), 1);
        assert_eq!(pg.previous_encryption_keys[0].0, d.path().join("old"));
        assert_eq!(pg.previous_encryption_keys[0].1.id(), want.id());
        let opts = crate::store::postgres::PgOptions::from_config(&pg);
        assert_eq!(opts.keyring.retired_ids().collect::<Vec<_>>(), [want.id()]);
        assert_ne!(opts.keyring.current_id(), want.id());

        let (r, _d) = load_with(
            "[storage]\nbackend = \"postgres\"\nurl = \"postgres://ck@127.0.0.1/ck\"\n\
             encryption_key_file = \"new\"\nprevious_encryption_key_files = [\"short\"]\n",
            &[("new", &new), ("short", &key_text(16))],
        );
        let err = r.unwrap_err();
        assert!(
            err.contains("storage.previous_encryption_key_files: DIR/short: the encryption key must be 32 random bytes"),
            "{err}"
        );
        let (r, _d) = load_with(
            "[storage]\nprevious_encryption_key_files = [\"old\"]\n",
            &[],
        );
        let err = r.unwrap_err();
        assert!(
            err.contains(
                "storage.previous_encryption_key_files: is only used with backend = \"postgres\""
            ),
            "{err}"
        );
    }

    #[test]
    fn mistakes_report_file_line_and_key() {
        let key = key_text(32);
        let url = "url = \"postgresql://ck@db/ck\"\n";
        let cases: &[(&str, String, &str)] = &[
            (
                "inline password",
                "[storage]\nbackend = \"postgres\"\nurl = \"postgresql://ck:hunter2@db/ck\"\nencryption_key_file = \"k\"\n".to_string(),
                "DIR/certkeeper.toml:5:7: storage.url: must not contain the password: put it in password_file",
            ),
            (
                "password as a parameter",
                "[storage]\nbackend = \"postgres\"\nurl = \"postgresql://ck@db/ck?password=hunter2\"\nencryption_key_file = \"k\"\n".to_string(),
                "DIR/certkeeper.toml:5:7: storage.url: must not contain the password",
            ),
            (
                "no key file",
                format!("[storage]\nbackend = \"postgres\"\n{url}"),
                "DIR/certkeeper.toml:3:1: storage.encryption_key_file: is required with backend = \"postgres\"",
            ),
            (
                "short key",
                format!("[storage]\nbackend = \"postgres\"\n{url}encryption_key_file = \"short\"\n"),
                "DIR/certkeeper.toml:6:23: storage.encryption_key_file: DIR/short: the encryption key must be 32 random bytes in base64 (create it with `openssl rand -base64 32`): it decodes to 16 bytes, not 32",
            ),
            (
                "missing key file",
                format!("[storage]\nbackend = \"postgres\"\n{url}encryption_key_file = \"/nonexistent/k\"\n"),
                "DIR/certkeeper.toml:6:23: storage.encryption_key_file: cannot read /nonexistent/k: No such file or directory",
            ),
            (
                "no url",
                "[storage]\nbackend = \"postgres\"\nencryption_key_file = \"k\"\n".to_string(),
                "DIR/certkeeper.toml:3:1: storage.url: is required with backend = \"postgres\"",
            ),
            (
                "not a url",
                "[storage]\nbackend = \"postgres\"\nurl = \"host=db user=ck\"\nencryption_key_file = \"k\"\n".to_string(),
                "DIR/certkeeper.toml:5:7: storage.url: must be a URL like",
            ),
            (
                "unknown backend",
                "[storage]\nbackend = \"etcd\"\n".to_string(),
                "DIR/certkeeper.toml:4:11: storage.backend: must be \"file\" or \"postgres\", got \"etcd\"",
            ),
            (
                "url with file backend",
                format!("[storage]\n{url}"),
                "DIR/certkeeper.toml:4:7: storage.url: is only used with backend = \"postgres\"",
            ),
            (
                "bad node",
                format!("[storage]\nbackend = \"postgres\"\n{url}encryption_key_file = \"k\"\nnode = \"web 1\"\n"),
                "DIR/certkeeper.toml:7:8: storage.node: \"web 1\" cannot name a node",
            ),
            (
                "lease too short",
                format!("[storage]\nbackend = \"postgres\"\n{url}encryption_key_file = \"k\"\nlease = \"1s\"\n"),
                "DIR/certkeeper.toml:7:9: storage.lease: must be between 3s and 10m",
            ),
            (
                "lease too long",
                format!("[storage]\nbackend = \"postgres\"\n{url}encryption_key_file = \"k\"\nlease = \"1h\"\n"),
                "DIR/certkeeper.toml:7:9: storage.lease: must be between 3s and 10m",
            ),
            (
                "lease not a duration",
                format!("[storage]\nbackend = \"postgres\"\n{url}encryption_key_file = \"k\"\nlease = \"soon\"\n"),
                "DIR/certkeeper.toml:7:9: storage.lease:",
            ),
            (
                "lease with file backend",
                "[storage]\nlease = \"30s\"\n".to_string(),
                "DIR/certkeeper.toml:4:9: storage.lease: is only used with backend = \"postgres\"",
            ),
            (
                "empty password file",
                format!("[storage]\nbackend = \"postgres\"\n{url}encryption_key_file = \"k\"\npassword_file = \"empty\"\n"),
                "DIR/certkeeper.toml:7:17: storage.password_file: DIR/empty is empty",
            ),
        ];
        for (what, storage, want) in cases {
            let (r, _d) = load_with(
                storage,
                &[("k", &key), ("short", &key_text(16)), ("empty", "\n")],
            );
            let err = r.err().unwrap_or_else(|| panic!("{what}: loaded"));
            assert!(err.contains(want), "{what}:\n{err}\nwanted: {want}");
            assert!(
                !err.contains("hunter2"),
                "{what}: the password is echoed: {err}"
            );
        }
    }
}
