//! `certkeeper storage migrate --from file`: copy a host's own state (the state directory:
//! accounts, certificate states, in-flight order keys) and its installed pairs into the fleet's
//! PostgreSQL database, so the host can join a fleet without ordering anything again.
//!
//! Idempotent: a key already in the database with the same value is left alone; one with another
//! value is kept as it is (the fleet's is newer) and reported; nothing is deleted anywhere. Private
//! keys are sealed by the storage backend on the way in. Locks and the HTTP-01 spool are this
//! host's runtime files and are not copied.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::config::{Config, StorageConfig};
use crate::store::postgres::{PgOptions, PgStorage};
use crate::store::shared::{self, SharedPair};
use crate::store::storage::check_key;
use crate::store::{Storage, is_self_signed_placeholder, read_installed};

/// Top-level entries of the state directory that are not state: runtime files of this host.
const NOT_STATE: [&str; 2] = ["locks", "http01"];

/// What a migration did.
#[derive(Debug, Default)]
pub struct MigrateReport {
    /// The source state directory.
    pub from: PathBuf,
    /// The database, `host:port/dbname`.
    pub to: String,
    /// Keys copied.
    pub copied: Vec<String>,
    /// Keys already in the database with the same value.
    pub unchanged: Vec<String>,
    /// Keys in the database with another value, left as they are.
    pub kept: Vec<String>,
    /// Files that are not state keys, not copied.
    pub skipped: Vec<String>,
    /// Installed pairs made the fleet's current pair: (certificate, serial).
    pub pairs: Vec<(String, String)>,
    /// Certificates whose pair was not copied, and why.
    pub pairs_not_copied: Vec<(String, String)>,
}

impl fmt::Display for MigrateReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "migrated {} into PostgreSQL {}:",
            self.from.display(),
            self.to
        )?;
        for k in &self.copied {
            writeln!(f, "  copied     {k}")?;
        }
        for k in &self.unchanged {
            writeln!(f, "  unchanged  {k} (already in the database)")?;
        }
        for k in &self.kept {
            writeln!(
                f,
                "  kept       {k}: the database holds another value, which is kept"
            )?;
        }
        for k in &self.skipped {
            writeln!(f, "  skipped    {k} (not a state file)")?;
        }
        for (name, serial) in &self.pairs {
            writeln!(
                f,
                "  pair       {name}: serial {serial} is the fleet's current certificate"
            )?;
        }
        for (name, why) in &self.pairs_not_copied {
            writeln!(f, "  pair       {name}: not copied: {why}")?;
        }
        write!(
            f,
            "{} copied, {} unchanged, {} kept, {} pairs; private keys are stored sealed",
            self.copied.len(),
            self.unchanged.len(),
            self.kept.len(),
            self.pairs.len()
        )
    }
}

/// Copy the state of `state_dir` (default: the config's `state_dir`) into the PostgreSQL backend
/// the config names.
pub fn from_file(cfg: &Config, state_dir: Option<&Path>) -> Result<MigrateReport, String> {
    let StorageConfig::Postgres(pg) = &cfg.storage else {
        return Err(
            "storage migrate copies into PostgreSQL: set [storage] backend = \"postgres\" (with url and \
             encryption_key_file) in the config first"
                .into(),
        );
    };
    let from = state_dir.unwrap_or(&cfg.state_dir).to_path_buf();
    if !from.is_dir() {
        return Err(format!(
            "{} is not a state directory: pass the single host's state_dir with --state-dir",
            from.display()
        ));
    }
    let target = PgStorage::open(PgOptions::from_config(pg)).map_err(|e| e.to_string())?;
    let mut report = MigrateReport {
        from: from.clone(),
        to: target.target().to_string(),
        ..MigrateReport::default()
    };
    let mut files = Vec::new();
    walk(&from, &from, &mut files).map_err(|e| format!("reading {}: {e}", from.display()))?;
    files.sort();
    for key in files {
        copy_one(&target, &from, key, &mut report)?;
    }
    for cert in cfg.certificates.values() {
        match read_installed(&cert.output) {
            Ok(Some(i))
                if i.fullchain_pem()
                    .is_ok_and(|p| !is_self_signed_placeholder(p)) =>
            {
                let text =
                    |pem: Result<&[u8], _>| pem.map(|p| String::from_utf8_lossy(p).into_owned());
                let pair = SharedPair {
                    serial: i.cert.serial_hex.clone(),
                    key_pem: text(i.key_pem()).map_err(|e| e.to_string())?,
                    chain_pem: text(i.fullchain_pem()).map_err(|e| e.to_string())?,
                    // This host ordered it, at a time the files do not tell.
                    ordered_by: Some(pg.node.clone()),
                    ordered_at: None,
                };
                match shared::seed(&target, &cert.name, &pair) {
                    Ok(true) => report.pairs.push((cert.name.clone(), pair.serial)),
                    Ok(false) => report.pairs_not_copied.push((
                        cert.name.clone(),
                        "the fleet has a current pair already".into(),
                    )),
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok(Some(_)) => report.pairs_not_copied.push((
                cert.name.clone(),
                "a self-signed placeholder is installed".into(),
            )),
            Ok(None) => report
                .pairs_not_copied
                .push((cert.name.clone(), "nothing is installed".into())),
            Err(e) => report
                .pairs_not_copied
                .push((cert.name.clone(), e.to_string())),
        }
    }
    Ok(report)
}

fn copy_one(
    target: &PgStorage,
    from: &Path,
    key: String,
    report: &mut MigrateReport,
) -> Result<(), String> {
    if check_key(&key).is_err() || NOT_STATE.iter().any(|d| key.starts_with(&format!("{d}/"))) {
        report.skipped.push(key);
        return Ok(());
    }
    let path = from.join(&key);
    let value = std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    match target.load(&key).map_err(|e| e.to_string())? {
        None => {
            target.store(&key, &value).map_err(|e| e.to_string())?;
            report.copied.push(key);
        }
        Some(v) if v == value => report.unchanged.push(key),
        Some(_) => report.kept.push(key),
    }
    Ok(())
}

/// Every regular file below `dir`, as a `/`-separated path relative to `root`.
fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            walk(root, &path, out)?;
        } else if kind.is_file()
            && let Ok(rel) = path.strip_prefix(root)
        {
            let parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            out.push(parts.join("/"));
        }
    }
    Ok(())
}
