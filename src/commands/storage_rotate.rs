//! `certkeeper storage rotate-key`: make the config's `encryption_key_file` the key that seals the
//! fleet's private keys in PostgreSQL, and re-seal every value still sealed with an older key.
//!
//! The roll (README, "Rotating the encryption key"): every node gets the new key file as
//! `encryption_key_file` and the old one in `previous_encryption_key_files` (so it still opens
//! what is sealed with the old key) and reloads; then one node runs this command; then the old key
//! is removed from every node. After the switch a node still configured with only the old key is
//! refused when it seals and cannot open re-sealed values: both errors say what to do.

use std::fmt;

use crate::config::{Config, StorageConfig};
use crate::store::postgres::keys::Rotation;
use crate::store::postgres::{PgOptions, PgStorage};

/// A rotation and the config it ran with, for the report.
pub struct RotateReport {
    /// What the database did.
    pub rotation: Rotation,
    /// The key file that seals now.
    pub key_file: std::path::PathBuf,
}

impl RotateReport {
    /// True when every sealed value is now under the new key.
    pub fn complete(&self) -> bool {
        self.rotation.failed.is_empty()
    }
}

impl fmt::Display for RotateReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.rotation;
        let when = |t: jiff::Timestamp| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string();
        match &r.before {
            Some(b) if b.key_id == r.after.key_id => writeln!(
                f,
                "PostgreSQL {} seals with key id {} ({}) since {} (switched by node {}); re-sealing what is left:",
                r.target,
                r.after.key_id,
                self.key_file.display(),
                when(b.since),
                b.by
            )?,
            _ => writeln!(
                f,
                "PostgreSQL {} now seals with key id {} ({}):",
                r.target,
                r.after.key_id,
                self.key_file.display()
            )?,
        }
        if !r.after.retired.is_empty() {
            writeln!(
                f,
                "  rotated out: key id {} (a node still configured with it is refused when it writes a private key)",
                r.after.retired.join(", ")
            )?;
        }
        writeln!(
            f,
            "  re-sealed {} value(s); {} sealed with the new key already",
            r.resealed, r.current
        )?;
        for (key, why) in &r.failed {
            writeln!(f, "  FAILED {key}: {why}")?;
        }
        if self.complete() {
            write!(
                f,
                "every private key in the database is sealed with key id {}; once every node runs with this \
                 encryption_key_file, remove the old key from previous_encryption_key_files and delete it",
                r.after.key_id
            )
        } else {
            write!(
                f,
                "{} value(s) are still sealed with another key: add the key file they were sealed with to \
                 previous_encryption_key_files and run `certkeeper storage rotate-key` again",
                r.failed.len()
            )
        }
    }
}

/// Rotate the key of the PostgreSQL backend `cfg` names (blocking: run it off the async runtime).
pub fn rotate_key(cfg: &Config) -> Result<RotateReport, String> {
    let StorageConfig::Postgres(pg) = &cfg.storage else {
        return Err(
            "storage rotate-key rotates the key of a PostgreSQL backend: the config's [storage] uses the file backend, \
             whose state_dir holds no encrypted values"
                .into(),
        );
    };
    let storage = PgStorage::open(PgOptions::from_config(pg)).map_err(|e| e.to_string())?;
    let rotation = storage.rotate_key().map_err(|e| e.to_string())?;
    Ok(RotateReport {
        rotation,
        key_file: pg.encryption_key_file.clone(),
    })
}
