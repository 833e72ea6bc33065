//! `certkeeper import NAME --cert FILE --key FILE [--chain FILE]`: adopt a certificate issued
//! elsewhere (certbot, lego, another host) as the live pair of a configured certificate, so the daemon
//! renews it when it is due instead of issuing a new one at once.

use std::path::{Path, PathBuf};

use jiff::Timestamp;
use tracing::info;

use crate::engine::{Runtime, due};
use crate::scheduler::Due;
use crate::store::{self, Event, InstalledPaths, StoreError};

/// What `certkeeper import` was asked to do.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// The certificate's config name.
    pub name: String,
    /// PEM file with the leaf certificate (optionally followed by its chain).
    pub cert: PathBuf,
    /// PEM file with the private key.
    pub key: PathBuf,
    /// PEM file with the intermediate chain, when `cert` holds only the leaf.
    pub chain: Option<PathBuf>,
}

/// The outcome of an import.
#[derive(Debug)]
pub struct Imported {
    /// Serial of the imported certificate (hex).
    pub serial: String,
    /// Its expiry.
    pub not_after: Timestamp,
    /// Where it was installed.
    pub paths: InstalledPaths,
    /// When the daemon will renew it.
    pub due: Due,
}

/// Why an import failed; nothing was installed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The name is not a configured certificate.
    #[error("no certificate named {name:?} in the config (known: {known})")]
    UnknownCertificate {
        /// The name asked for.
        name: String,
        /// The configured names, comma-separated.
        known: String,
    },
    /// An input file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The files are not a valid pair for the configured certificate.
    #[error("certificate {name}: the files were not imported: {message}")]
    Rejected {
        /// The certificate's name.
        name: String,
        /// What did not match.
        message: String,
    },
    /// Installing or recording the state failed.
    #[error("certificate {name}: {source}")]
    Store {
        /// The certificate's name.
        name: String,
        /// The store error.
        #[source]
        source: StoreError,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, ImportError> {
    std::fs::read(path).map_err(|source| ImportError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Verify the pair against the certificate's config (names, key type, key matches, chain signatures,
/// currently valid), install it as the live pair, and record it in the state as if certkeeper had
/// issued it, with the first configured issuer as the one that renews it.
pub fn import(rt: &Runtime, opts: &ImportOptions) -> Result<Imported, ImportError> {
    let key_pem = read(&opts.key)?;
    let mut chain_pem = read(&opts.cert)?;
    if let Some(chain) = &opts.chain {
        if !chain_pem.ends_with(b"\n") {
            chain_pem.push(b'\n');
        }
        chain_pem.extend_from_slice(&read(chain)?);
    }
    import_pem(rt, &opts.name, &key_pem, &chain_pem)
}

/// [`import`] of a pair already read: `chain_pem` is the leaf followed by its chain. For callers
/// that read the files with other privileges than they install them with (`migrate certbot`).
pub fn import_pem(
    rt: &Runtime,
    name: &str,
    key_pem: &[u8],
    chain_pem: &[u8],
) -> Result<Imported, ImportError> {
    let Some(cert) = rt.config.certificates.get(name) else {
        let known: Vec<&str> = rt.config.certificates.keys().map(String::as_str).collect();
        return Err(ImportError::UnknownCertificate {
            name: name.to_string(),
            known: known.join(", "),
        });
    };
    let rejected = |message: String| ImportError::Rejected {
        name: name.to_string(),
        message,
    };
    let store_err = |source| ImportError::Store {
        name: name.to_string(),
        source,
    };
    let pair = store::VerifiedPair::from_pem(key_pem, chain_pem, &cert.domains, None)
        .map_err(|e| rejected(e.to_string()))?;
    let verified = pair.cert().clone();
    if verified.key_type != cert.key.as_str() {
        return Err(rejected(format!(
            "its key is {} but the config says key = \"{}\"; set key = \"{}\" for this certificate, or the daemon would replace it at once",
            verified.key_type, cert.key, verified.key_type
        )));
    }

    let held = rt.ledger.lock(name).map_err(store_err)?;
    let now = Timestamp::now();
    let imported = Event::Imported {
        issuer: cert.issuers.first().cloned(),
        fingerprint: due::fingerprint(cert),
        at: now,
    };
    let paths = held
        .install(&cert.output, &pair, [imported])
        .map_err(store_err)?;
    // An order in flight would finalize with another key: it is not resumed.
    held.drop_pending_key().map_err(store_err)?;
    drop(held);
    let snap = rt.ledger.snapshot(name, &cert.output);
    let due = due::due(&rt.config, cert, &snap, now, false);
    info!(cert = %name, serial = %verified.serial_hex, not_after = %verified.not_after, renew_at = %due.at, "certificate imported");
    Ok(Imported {
        serial: verified.serial_hex,
        not_after: verified.not_after,
        paths,
        due,
    })
}
