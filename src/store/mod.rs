//! The store: verified, atomic, crash-safe writes of certificate files and daemon state.
//!
//! Nothing is ever lost or torn. PEM files are verified as a matching pair before anything on disk is
//! touched; every file is written to a temporary file in the same directory, fsynced, renamed into
//! place, and the directory fsynced. A certificate's output directory switches from the old pair to the
//! new pair with one atomic rename of the `.live` symlink (see [`install`]).
//!
//! A certificate's state and its installed pair have one owner, the [`Ledger`]; accounts are kept by
//! the [`AccountStore`]. Both sit on a [`Storage`] (load/store/delete/list + locks), whose embedded
//! implementation is the file tree under `state_dir` ([`FileStorage`]).

mod accounts;
mod atomic;
#[cfg(any(test, feature = "test-hooks"))]
pub mod contract;
mod install;
mod ledger;
pub mod postgres;
pub mod shared;
mod state;
pub mod storage;
pub(crate) mod verify;
#[cfg(test)]
pub(crate) use verify::testpki;

use std::path::PathBuf;

pub use accounts::AccountStore;
pub use atomic::{atomic_write, fsync_dir};
pub use install::{
    FilesStamp, Installed, InstalledPaths, OutputSpec, install, keep_revoked, read_installed,
};
pub use ledger::{AriResult, Event, Issuance, Ledger, Snapshot, is_self_signed_placeholder};
pub use postgres::PgStorage;
pub use shared::SharedPair;
pub use state::{
    AccountRecord, AuthzTrace, CertState, ChallengeTrace, DeployCheck, EndpointServed, ErrorTrace,
    InstalledSummary, OrderTrace, ProblemTrace, StoredAccount, SubProblemTrace, account_id,
    key_fingerprint, status_word,
};
pub use storage::{FileStorage, Lease, LeaseInfo, Storage};
pub(crate) use verify::asn1_to_ts;
pub use verify::{VerifiedCert, VerifiedPair, verify_pair};

/// Errors of the store; every message says what happened and, where it helps, what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("writing", "creating directory", ...).
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A configured user name does not exist on this host.
    #[error("unknown user '{0}' in output.owner: create it or fix the configuration")]
    UnknownUser(String),
    /// A configured group name does not exist on this host.
    #[error("unknown group '{0}' in output.group: create it or fix the configuration")]
    UnknownGroup(String),
    /// Looking up a user or group failed at the OS level.
    #[error("looking up {kind} '{name}': {source}")]
    Lookup {
        /// "user" or "group".
        kind: &'static str,
        /// The name looked up.
        name: String,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// The key and certificate chain do not form a valid, matching, currently valid pair.
    #[error("certificate check failed: {0}")]
    Verify(String),
    /// The output directory can be written by someone other than certkeeper (and root), who could
    /// swap the private key or the certificate under the web server.
    #[error(
        "refusing to write the private key into {dir}: {who} can write to it; run `chmod go-w {dir}` (and `chown` it to the user certkeeper runs as), or set output.allow_shared_dir = true if that is intended"
    )]
    SharedDir {
        /// The output directory.
        dir: PathBuf,
        /// Who else can write there, in words.
        who: String,
    },
    /// What is live in an output directory is incomplete or does not match.
    #[error("installed certificate in {dir} is broken: {reason}; the next renewal will replace it")]
    Torn {
        /// The output directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An installed file was replaced or edited after it was checked (another process installed
    /// a new pair meanwhile); the next snapshot reads and checks it again.
    #[error("{0} changed after it was checked (a new pair was installed meanwhile); try again")]
    Changed(PathBuf),
    /// A certificate or account name cannot be used as a file name.
    #[error(
        "name '{0}' cannot be used as a file name: use letters, digits, '.', '_' or '-', not starting with '.'"
    )]
    InvalidName(String),
    /// A state file exists but cannot be parsed.
    #[error("state file {path} is corrupt: {source}; move it aside to start that entry afresh")]
    CorruptState {
        /// The state file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A state value could not be encoded as JSON.
    #[error("encoding state for {path}: {source}")]
    Encode {
        /// The state file that was to be written.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// An account is registered already; its key is not replaced.
    #[error(
        "account '{0}' is already registered with its key; refusing to replace the key \
         (move the account directory aside to register a new account)"
    )]
    AccountExists(String),
    /// Another process holds the issuance lock of a certificate.
    #[error(
        "certificate '{name}' is being issued by another certkeeper process (lock {path} is held); \
         wait for it to finish"
    )]
    Locked {
        /// The certificate name.
        name: String,
        /// The lock file.
        path: PathBuf,
    },
    /// The certificate was renewed by another process or node after this one decided to renew it
    /// and before it took the lease: there is nothing left to do.
    #[error(
        "certificate '{name}' was renewed by another certkeeper process or node meanwhile (serial {serial}); nothing to do"
    )]
    RenewedElsewhere {
        /// The certificate name.
        name: String,
        /// The serial now current.
        serial: String,
    },
    /// A write made under a lease was refused because the lease was lost: it expired, or another
    /// node took the lock since (its token is larger). The result this node holds is stale.
    #[error(
        "refusing to write {key}: the lock '{name}' (fencing token {token}) is no longer held by this node \
         (it expired or another node took it over); this result is dropped and the work is left to the holder"
    )]
    Fenced {
        /// The key that was to be written.
        key: String,
        /// The lock's name.
        name: String,
        /// The lease's (stale) fencing token.
        token: u64,
    },
    /// The database refused or failed an operation, or could not be reached.
    #[error(
        "{action} ({target}): {}; certkeeper retries, check the database and [storage] url",
        postgres::error_text(.source)
    )]
    Database {
        /// What was being done ("connecting", "storing certs/www.json", ...).
        action: String,
        /// Which database (`host:port/dbname`).
        target: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The database did not answer in time, or the storage worker is gone.
    #[error(
        "{action} ({target}): {reason}; certkeeper retries, check the database and [storage] url"
    )]
    Unavailable {
        /// What was being done.
        action: String,
        /// Which database (`host:port/dbname`).
        target: String,
        /// What happened ("no answer within 10s").
        reason: String,
    },
    /// The database holds a schema this build cannot use.
    #[error("database {target}: {reason}")]
    Schema {
        /// Which database (`host:port/dbname`).
        target: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// A sealed (encrypted) value could not be opened or sealed.
    #[error(
        "{key}: {source}; check that [storage] encryption_key_file holds the key this database was written with"
    )]
    Sealed {
        /// The storage key of the value.
        key: String,
        /// Why.
        #[source]
        source: postgres::crypto::CryptoError,
    },
    /// An OpenSSL operation failed while handling keys or certificates.
    #[error("{context}: {source}")]
    Openssl {
        /// What was being done.
        context: &'static str,
        /// The OpenSSL error stack.
        #[source]
        source: openssl::error::ErrorStack,
    },
}

impl StoreError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn ssl(context: &'static str) -> impl FnOnce(openssl::error::ErrorStack) -> Self {
        move |source| Self::Openssl { context, source }
    }
}
