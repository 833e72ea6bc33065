//! `certkeeper import NAME --cert FILE --key FILE [--chain FILE]`: adopt a certificate issued
//! elsewhere (certbot, lego, another host) as the live pair of a configured certificate, so the daemon
//! renews it when it is due instead of issuing a new one at once.

use std::path::{Path, PathBuf};

use jiff::Timestamp;
use tracing::info;

use crate::daemon::{Runtime, pass};
use crate::scheduler::{Due, RetryState};
use crate::store::{self, InstalledPaths, StoreError};

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
    let name = opts.name.as_str();
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
    let key_pem = read(&opts.key)?;
    let mut chain_pem = read(&opts.cert)?;
    if let Some(chain) = &opts.chain {
        if !chain_pem.ends_with(b"\n") {
            chain_pem.push(b'\n');
        }
        chain_pem.extend_from_slice(&read(chain)?);
    }
    let verified = store::verify_pair(&key_pem, &chain_pem, &cert.domains, None)
        .map_err(|e| rejected(e.to_string()))?;
    if verified.key_type != cert.key.as_str() {
        return Err(rejected(format!(
            "its key is {} but the config says key = \"{}\"; set key = \"{}\" for this certificate, or the daemon would replace it at once",
            verified.key_type, cert.key, verified.key_type
        )));
    }

    let _lock = rt.state.lock_cert(name).map_err(store_err)?;
    let paths = store::install(&cert.output, &key_pem, &chain_pem, &verified).map_err(store_err)?;
    let mut state = rt
        .state
        .load_cert_state(name)
        .map_err(store_err)?
        .unwrap_or_default();
    let now = Timestamp::now();
    state.order_url = None;
    state.issuer = cert.issuers.first().cloned();
    state.last_success = Some(now);
    state.retry = RetryState::default();
    state.config_fingerprint = Some(pass::fingerprint(cert));
    // The CA that issued it is unknown: sending its CertID as ARI `replaces` to another CA would get
    // the renewal order refused, so the first renewal is a plain order.
    state.ari_cert_id = None;
    state.ari_window = None;
    state.ari_refetch_at = None;
    state.revoked_serial = None;
    rt.state.save_cert_state(name, &state).map_err(store_err)?;
    rt.state.remove_pending_key(name).map_err(store_err)?;
    drop(_lock);
    let due = pass::due_for(rt, cert, now);
    info!(cert = %name, serial = %verified.serial_hex, not_after = %verified.not_after, renew_at = %due.at, "certificate imported");
    Ok(Imported {
        serial: verified.serial_hex,
        not_after: verified.not_after,
        paths,
        due,
    })
}
