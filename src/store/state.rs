//! Daemon state under `state_dir`: account keys and records, per-certificate JSON, issuance locks.
//!
//! Layout (directories 0700, files 0600):
//! ```text
//! <state_dir>/accounts/<id>/key.pem        account private key (saved before registering)
//! <state_dir>/accounts/<id>/account.json   AccountRecord
//! <state_dir>/accounts/<id>/key.next.pem   new account key staged during a key rollover
//! <state_dir>/certs/<name>.json            CertState
//! <state_dir>/certs/<name>.key.pem         private key of the in-flight order (resume with same key)
//! <state_dir>/locks/<name>.lock            flock'ed while a certificate is being issued
//! ```

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::StoreError;
use super::atomic::atomic_write;

const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;

/// A filesystem-safe account id for an issuer and its directory URL.
///
/// The issuer name (characters outside `[A-Za-z0-9_.-]` replaced by `_`) followed by the first 12 hex
/// digits of the SHA-256 of the directory URL, so that pointing an issuer at another CA never reuses
/// the old CA's account.
pub fn account_id(issuer: &str, directory_url: &str) -> String {
    let safe: String = issuer
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let safe = safe.trim_start_matches('.');
    let digest = openssl::sha::sha256(directory_url.as_bytes());
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("{safe}-{hex}")
}

/// What the CA told us about a registered account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRecord {
    /// The account URL (the `kid` of JWS requests).
    pub url: String,
    /// The directory URL the account belongs to.
    pub directory: String,
    /// Contact URLs registered with the account.
    #[serde(default)]
    pub contact: Vec<String>,
    /// When the account was registered.
    pub created: jiff::Timestamp,
}

/// A stored account: its key, and its record once registration succeeded.
///
/// `Debug` leaves the key out.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredAccount {
    /// The account private key, PEM.
    pub key_pem: String,
    /// `None` when the key was saved but registration did not complete: register (again) with this
    /// key; the CA returns the existing account if there is one.
    pub record: Option<AccountRecord>,
}

impl std::fmt::Debug for StoredAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredAccount")
            .field("key_pem", &"<redacted>")
            .field("record", &self.record)
            .finish()
    }
}

/// Per-certificate state, kept across restarts.
///
/// Every field has a serde default and unknown fields are ignored, so files written by older or
/// newer versions load.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CertState {
    /// The URL of the order in flight, to resume after a restart.
    pub order_url: Option<String>,
    /// The issuer (config name) the in-flight order or the last success used.
    pub issuer: Option<String>,
    /// When a certificate was last installed.
    pub last_success: Option<jiff::Timestamp>,
    /// When the last error happened.
    pub last_error_at: Option<jiff::Timestamp>,
    /// Failures since the last success, the backoff and the last error.
    pub retry: crate::scheduler::RetryState,
    /// Fingerprint of the certificate's config when it was last issued.
    pub config_fingerprint: Option<String>,
    /// ARI (RFC 9773) CertID of the installed certificate, sent as `replaces` when renewing it.
    pub ari_cert_id: Option<String>,
    /// The CA's suggested renewal window for the installed certificate.
    pub ari_window: Option<(jiff::Timestamp, jiff::Timestamp)>,
    /// When to ask the CA for renewal information again.
    pub ari_refetch_at: Option<jiff::Timestamp>,
    /// Serial (hex, as [`crate::store::VerifiedCert::serial_hex`]) of a certificate revoked with
    /// `certkeeper revoke`: while the live pair has this serial it counts as missing, so the next pass
    /// issues a replacement at once.
    pub revoked_serial: Option<String>,
    /// What the CA said during the last order attempt (success or failure), for `certkeeper explain`.
    pub last_order: Option<OrderTrace>,
}

/// The last order attempt of a certificate as the CA reported it: the order, its authorizations
/// and challenges with the CA's problem documents, and the error that ended it.
///
/// Statuses are kept as the CA's words (`pending`, `invalid`, ...) so that a status this version
/// does not know still loads.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OrderTrace {
    /// When the attempt started.
    pub at: Option<jiff::Timestamp>,
    /// The issuer (config name) the attempt used.
    pub issuer: Option<String>,
    /// The order URL, when an order was created or resumed.
    pub url: Option<String>,
    /// The order status last seen.
    pub status: Option<String>,
    /// The order's own problem document (`error` of an invalid order).
    pub problem: Option<ProblemTrace>,
    /// The authorizations, as last seen.
    pub authorizations: Vec<AuthzTrace>,
    /// Why the attempt failed; `None` after success.
    pub error: Option<ErrorTrace>,
}

/// One authorization of an [`OrderTrace`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthzTrace {
    /// The authorization URL.
    pub url: String,
    /// The identifier value (without `*.` for a wildcard).
    pub identifier: String,
    /// True for a wildcard authorization.
    pub wildcard: bool,
    /// The authorization status.
    pub status: String,
    /// Its challenges.
    pub challenges: Vec<ChallengeTrace>,
}

/// One challenge of an [`AuthzTrace`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChallengeTrace {
    /// The challenge type (`http-01`, `dns-01`, ...).
    #[serde(rename = "type")]
    pub type_: String,
    /// The challenge status.
    pub status: String,
    /// The challenge URL.
    pub url: String,
    /// When the CA validated it.
    pub validated: Option<String>,
    /// The CA's problem document for a failed validation.
    pub problem: Option<ProblemTrace>,
}

/// An ACME problem document as recorded, with certkeeper's advice for it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProblemTrace {
    /// The problem type URN.
    #[serde(rename = "type")]
    pub type_: String,
    /// The CA's detail text.
    pub detail: Option<String>,
    /// The HTTP status.
    pub status: Option<u16>,
    /// Per-identifier problems.
    pub subproblems: Vec<SubProblemTrace>,
    /// Cause and remedy in plain words ([`crate::acme::Problem::advice`]).
    pub advice: String,
    /// When the CA said to try again (rate limits, Retry-After).
    pub retry_after: Option<jiff::Timestamp>,
}

/// One sub-problem of a [`ProblemTrace`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SubProblemTrace {
    /// The problem type URN.
    #[serde(rename = "type")]
    pub type_: String,
    /// The CA's detail text.
    pub detail: Option<String>,
    /// The identifier, as `type:value`.
    pub identifier: Option<String>,
}

/// The error that ended an order attempt.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ErrorTrace {
    /// The whole message, as logged.
    pub message: String,
    /// Trying again later may succeed without a config change.
    pub retryable: bool,
    /// The CA's problem document behind it, when there was one.
    pub problem: Option<ProblemTrace>,
}

impl From<&crate::acme::Problem> for ProblemTrace {
    fn from(p: &crate::acme::Problem) -> Self {
        let status = p.effective_status();
        Self {
            type_: p.type_.clone(),
            detail: p.detail.clone(),
            status: (status != 0).then_some(status),
            subproblems: p
                .subproblems
                .iter()
                .map(|s| SubProblemTrace {
                    type_: s.type_.clone(),
                    detail: s.detail.clone(),
                    identifier: s
                        .identifier
                        .as_ref()
                        .map(|i| format!("{}:{}", i.type_, i.value)),
                })
                .collect(),
            advice: p.advice(),
            retry_after: p.retry_after,
        }
    }
}

impl AuthzTrace {
    /// Record an authorization as the CA returned it.
    pub fn from_authorization(url: &str, a: &crate::acme::Authorization) -> Self {
        Self {
            url: url.to_string(),
            identifier: a.identifier.value.clone(),
            wildcard: a.wildcard,
            status: status_word(&a.status),
            challenges: a
                .challenges
                .iter()
                .map(|c| {
                    let problem = c.error.as_ref().map(|p| {
                        let mut p = p.clone();
                        p.origin =
                            crate::acme::ProblemOrigin::Challenge(a.identifier.value.clone());
                        ProblemTrace::from(&p)
                    });
                    ChallengeTrace {
                        type_: c.type_.clone(),
                        status: status_word(&c.status),
                        url: c.url.clone(),
                        validated: c.validated.clone(),
                        problem,
                    }
                })
                .collect(),
        }
    }
}

/// The CA's word for a status enum (its serde form), e.g. `invalid`.
pub fn status_word<T: Serialize + std::fmt::Debug>(s: &T) -> String {
    match serde_json::to_value(s) {
        Ok(serde_json::Value::String(w)) => w,
        _ => format!("{s:?}").to_ascii_lowercase(),
    }
}

/// The state directory.
#[derive(Clone, Debug)]
pub struct StateStore {
    root: PathBuf,
}

/// An exclusive issuance lock on one certificate, released when dropped.
#[derive(Debug)]
pub struct CertLock {
    _lock: Flock<fs::File>,
    path: PathBuf,
}

impl CertLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl StateStore {
    /// Open (and create, mode 0700) the state directory and its subdirectories.
    pub fn open(state_dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = state_dir.into();
        for d in [
            root.clone(),
            root.join("accounts"),
            root.join("certs"),
            root.join("locks"),
        ] {
            make_private_dir(&d)?;
        }
        Ok(Self { root })
    }

    /// The state directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn account_dir(&self, id: &str) -> Result<PathBuf, StoreError> {
        check_name(id)?;
        Ok(self.root.join("accounts").join(id))
    }

    /// The stored account `id`, or `None` when no key was ever saved.
    pub fn load_account(&self, id: &str) -> Result<Option<StoredAccount>, StoreError> {
        let dir = self.account_dir(id)?;
        let Some(key) = read_opt(&dir.join("key.pem"))? else {
            return Ok(None);
        };
        let key_pem = String::from_utf8(key).map_err(|_| {
            StoreError::io(
                "reading",
                dir.join("key.pem"),
                std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 PEM"),
            )
        })?;
        let record = read_json(&dir.join("account.json"))?;
        Ok(Some(StoredAccount { key_pem, record }))
    }

    /// Save an account key. Call this BEFORE registering the key with the CA, so a crash between
    /// the two never strands an account the CA knows and we do not.
    ///
    /// Refuses ([`StoreError::AccountExists`]) once the account has a record, so a registered
    /// account's key is never overwritten by mistake.
    pub fn save_account_key(&self, id: &str, key_pem: &str) -> Result<(), StoreError> {
        let dir = self.account_dir(id)?;
        if dir.join("account.json").exists() {
            return Err(StoreError::AccountExists(id.to_string()));
        }
        make_private_dir(&dir)?;
        atomic_write(
            &dir.join("key.pem"),
            key_pem.as_bytes(),
            FILE_MODE,
            None,
            None,
        )
    }

    /// Save the record of a registered account.
    pub fn save_account_record(&self, id: &str, record: &AccountRecord) -> Result<(), StoreError> {
        let dir = self.account_dir(id)?;
        make_private_dir(&dir)?;
        write_json(&dir.join("account.json"), record)
    }

    /// Stage the new key of an account key rollover as `key.next.pem`, BEFORE the CA is asked to
    /// switch (RFC 8555 keyChange).
    ///
    /// Whatever happens next, one of `key.pem` and `key.next.pem` is the key the CA knows; a leftover
    /// `key.next.pem` is resolved by asking the CA which of the two it knows
    /// ([`StateStore::promote_next_account_key`] or [`StateStore::discard_next_account_key`]).
    pub fn stage_next_account_key(&self, id: &str, key_pem: &str) -> Result<(), StoreError> {
        let dir = self.account_dir(id)?;
        make_private_dir(&dir)?;
        atomic_write(
            &dir.join("key.next.pem"),
            key_pem.as_bytes(),
            FILE_MODE,
            None,
            None,
        )
    }

    /// The staged rollover key of account `id`, if a rollover did not finish.
    pub fn load_next_account_key(&self, id: &str) -> Result<Option<String>, StoreError> {
        let p = self.account_dir(id)?.join("key.next.pem");
        match read_opt(&p)? {
            None => Ok(None),
            Some(b) => String::from_utf8(b).map(Some).map_err(|_| {
                StoreError::io(
                    "reading",
                    &p,
                    std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 PEM"),
                )
            }),
        }
    }

    /// Make the staged rollover key the account key: one atomic rename of `key.next.pem` over
    /// `key.pem`, then an fsync of the directory.
    pub fn promote_next_account_key(&self, id: &str) -> Result<(), StoreError> {
        let dir = self.account_dir(id)?;
        let next = dir.join("key.next.pem");
        let cur = dir.join("key.pem");
        fs::rename(&next, &cur).map_err(|e| StoreError::io("replacing", &cur, e))?;
        super::atomic::fsync_dir(&dir)
    }

    /// Drop a staged rollover key the CA never accepted. Absent is fine.
    pub fn discard_next_account_key(&self, id: &str) -> Result<(), StoreError> {
        let dir = self.account_dir(id)?;
        let next = dir.join("key.next.pem");
        match fs::remove_file(&next) {
            Ok(()) => super::atomic::fsync_dir(&dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io("removing", &next, e)),
        }
    }

    /// Move account `id` out of the way (after deactivation) to `accounts/<id>.deactivated-<unix>`,
    /// kept for the record; the next use of the issuer registers a new account. Returns the new path.
    pub fn retire_account(&self, id: &str) -> Result<PathBuf, StoreError> {
        let dir = self.account_dir(id)?;
        let unix = jiff::Timestamp::now().as_second();
        let mut target = self
            .root
            .join("accounts")
            .join(format!("{id}.deactivated-{unix}"));
        let mut n = 1;
        while target.exists() {
            target = self
                .root
                .join("accounts")
                .join(format!("{id}.deactivated-{unix}.{n}"));
            n += 1;
        }
        fs::rename(&dir, &target).map_err(|e| StoreError::io("moving", &dir, e))?;
        super::atomic::fsync_dir(&self.root.join("accounts"))?;
        Ok(target)
    }

    fn cert_path(&self, name: &str, suffix: &str) -> Result<PathBuf, StoreError> {
        check_name(name)?;
        Ok(self.root.join("certs").join(format!("{name}{suffix}")))
    }

    /// The certificate's state, or a fresh one when there is none or it cannot be read (a corrupt
    /// state file is logged and then treated as absent, so scheduling never stops on it).
    pub fn cert_state_or_default(&self, name: &str) -> CertState {
        match self.load_cert_state(name) {
            Ok(state) => state.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(cert = %name, error = %e, "certificate state unreadable; treating it as empty");
                CertState::default()
            }
        }
    }

    /// The state of certificate `name`, or `None` when it has none yet.
    pub fn load_cert_state(&self, name: &str) -> Result<Option<CertState>, StoreError> {
        read_json(&self.cert_path(name, ".json")?)
    }

    /// Save the state of certificate `name`.
    pub fn save_cert_state(&self, name: &str, state: &CertState) -> Result<(), StoreError> {
        write_json(&self.cert_path(name, ".json")?, state)
    }

    /// Save the private key of certificate `name`'s in-flight order, so a resumed order finalizes
    /// with the same key.
    pub fn save_pending_key(&self, name: &str, key_pem: &[u8]) -> Result<(), StoreError> {
        atomic_write(
            &self.cert_path(name, ".key.pem")?,
            key_pem,
            FILE_MODE,
            None,
            None,
        )
    }

    /// The in-flight order's private key of certificate `name`, if any.
    pub fn load_pending_key(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        read_opt(&self.cert_path(name, ".key.pem")?)
    }

    /// Remove the in-flight key (after install, or when the order is abandoned). Absent is fine.
    pub fn remove_pending_key(&self, name: &str) -> Result<(), StoreError> {
        let p = self.cert_path(name, ".key.pem")?;
        match fs::remove_file(&p) {
            Ok(()) => super::atomic::fsync_dir(super::atomic::parent_dir(&p)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io("removing", &p, e)),
        }
    }

    /// Take the lock of account `id` (held across a key rollover) without waiting;
    /// [`StoreError::Locked`] when another process holds it.
    pub fn lock_account(&self, id: &str) -> Result<CertLock, StoreError> {
        self.lock_cert(&format!("account-{id}"))
    }

    /// Take the issuance lock of certificate `name` without waiting.
    ///
    /// Uses `flock` on `locks/<name>.lock`, so two certkeeper processes (or two tasks that both try)
    /// never issue the same certificate at once; [`StoreError::Locked`] when it is held. The lock
    /// is released when the [`CertLock`] is dropped or the process dies.
    pub fn lock_cert(&self, name: &str) -> Result<CertLock, StoreError> {
        check_name(name)?;
        let path = self.root.join("locks").join(format!("{name}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(FILE_MODE)
            .open(&path)
            .map_err(|e| StoreError::io("opening lock file", &path, e))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(CertLock { _lock: lock, path }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(StoreError::Locked {
                name: name.to_string(),
                path,
            }),
            Err((_, errno)) => Err(StoreError::io(
                "locking",
                &path,
                std::io::Error::from(errno),
            )),
        }
    }
}

fn check_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidName(name.to_string()))
    }
}

fn make_private_dir(d: &Path) -> Result<(), StoreError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(d)
        .map_err(|e| StoreError::io("creating directory", d, e))?;
    fs::set_permissions(d, fs::Permissions::from_mode(DIR_MODE))
        .map_err(|e| StoreError::io("setting permissions of", d, e))
}

fn read_opt(p: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    match fs::read(p) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io("reading", p, e)),
    }
}

fn read_json<T: serde::de::DeserializeOwned>(p: &Path) -> Result<Option<T>, StoreError> {
    match read_opt(p)? {
        None => Ok(None),
        Some(b) => {
            serde_json::from_slice(&b)
                .map(Some)
                .map_err(|source| StoreError::CorruptState {
                    path: p.to_path_buf(),
                    source,
                })
        }
    }
}

fn write_json<T: Serialize>(p: &Path, v: &T) -> Result<(), StoreError> {
    let mut bytes = serde_json::to_vec_pretty(v).map_err(|source| StoreError::CorruptState {
        path: p.to_path_buf(),
        source,
    })?;
    bytes.push(b'\n');
    atomic_write(p, &bytes, FILE_MODE, None, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn lock_files_are_private() {
        let tmp = tempfile::tempdir().unwrap();
        let s = StateStore::open(tmp.path()).unwrap();
        let lock = s.lock_cert("www").unwrap();
        assert_eq!(mode(lock.path()), 0o600);
    }

    #[test]
    fn open_creates_private_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        let s = StateStore::open(&root).unwrap();
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join("certs")), 0o700);
        // Reopening an existing, too-open dir tightens it.
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        StateStore::open(&root).unwrap();
        assert_eq!(mode(&root), 0o700);
        assert_eq!(s.root(), root);
    }

    #[test]
    fn account_id_is_safe_and_distinguishes_directories() {
        let a = account_id("le", "https://acme-v02.api.letsencrypt.org/directory");
        let b = account_id(
            "le",
            "https://acme-staging-v02.api.letsencrypt.org/directory",
        );
        assert!(a.starts_with("le-") && a.len() == 15, "{a}");
        assert_ne!(a, b);
        assert_eq!(
            a,
            account_id("le", "https://acme-v02.api.letsencrypt.org/directory")
        );
        let weird = account_id("../x y", "u");
        assert!(!weird.contains('/') && !weird.starts_with('.'), "{weird}");
        check_name(&weird).unwrap();
    }

    #[test]
    fn account_key_first_then_record() {
        let tmp = tempfile::tempdir().unwrap();
        let s = StateStore::open(tmp.path()).unwrap();
        let id = account_id("le", "https://ca/dir");
        assert!(s.load_account(&id).unwrap().is_none());
        s.save_account_key(&id, "-----BEGIN PRIVATE KEY-----\nx\n")
            .unwrap();
        let acct = s.load_account(&id).unwrap().unwrap();
        assert!(acct.record.is_none());
        assert!(!format!("{acct:?}").contains("BEGIN"));
        assert_eq!(
            mode(&tmp.path().join("accounts").join(&id).join("key.pem")),
            0o600
        );
        let rec = AccountRecord {
            url: "https://ca/acct/1".into(),
            directory: "https://ca/dir".into(),
            contact: vec!["mailto:a@b".into()],
            created: jiff::Timestamp::from_second(1_700_000_000).unwrap(),
        };
        s.save_account_record(&id, &rec).unwrap();
        let acct = s.load_account(&id).unwrap().unwrap();
        assert_eq!(acct.record, Some(rec));
        assert_eq!(acct.key_pem, "-----BEGIN PRIVATE KEY-----\nx\n");
        let err = s.save_account_key(&id, "other").unwrap_err();
        assert!(matches!(err, StoreError::AccountExists(_)), "{err}");
        assert_eq!(
            s.load_account(&id).unwrap().unwrap().key_pem,
            "-----BEGIN PRIVATE KEY-----\nx\n"
        );
    }

    #[test]
    fn rollover_key_is_staged_then_promoted_or_discarded() {
        let tmp = tempfile::tempdir().unwrap();
        let s = StateStore::open(tmp.path()).unwrap();
        let id = account_id("le", "https://ca/dir");
        s.save_account_key(&id, "old").unwrap();
        assert_eq!(s.load_next_account_key(&id).unwrap(), None);
        s.stage_next_account_key(&id, "new").unwrap();
        assert_eq!(
            s.load_next_account_key(&id).unwrap().as_deref(),
            Some("new")
        );
        assert_eq!(
            mode(&tmp.path().join("accounts").join(&id).join("key.next.pem")),
            0o600
        );
        // Staging leaves the current key alone.
        assert_eq!(s.load_account(&id).unwrap().unwrap().key_pem, "old");
        s.discard_next_account_key(&id).unwrap();
        s.discard_next_account_key(&id).unwrap();
        assert_eq!(s.load_next_account_key(&id).unwrap(), None);
        assert_eq!(s.load_account(&id).unwrap().unwrap().key_pem, "old");
        s.stage_next_account_key(&id, "new").unwrap();
        s.promote_next_account_key(&id).unwrap();
        assert_eq!(s.load_account(&id).unwrap().unwrap().key_pem, "new");
        assert_eq!(s.load_next_account_key(&id).unwrap(), None);
        let retired = s.retire_account(&id).unwrap();
        assert!(s.load_account(&id).unwrap().is_none());
        assert_eq!(fs::read_to_string(retired.join("key.pem")).unwrap(), "new");
    }

    #[test]
    fn order_trace_roundtrips_and_records_problems_with_advice() {
        let tmp = tempfile::tempdir().unwrap();
        let s = StateStore::open(tmp.path()).unwrap();
        let authz: crate::acme::Authorization = serde_json::from_str(
            r#"{"identifier": {"type": "dns", "value": "www.example.com"}, "status": "invalid",
                "challenges": [{"type": "http-01", "url": "https://ca/chal/1", "token": "t", "status": "invalid",
                  "error": {"type": "urn:ietf:params:acme:error:unauthorized", "status": 403,
                            "detail": "Invalid response from http://www.example.com/.well-known/acme-challenge/t: 404",
                            "subproblems": [{"type": "urn:ietf:params:acme:error:dns", "detail": "sub",
                                             "identifier": {"type": "dns", "value": "www.example.com"}}]}}]}"#,
        )
        .unwrap();
        let rec = AuthzTrace::from_authorization("https://ca/authz/1", &authz);
        assert_eq!(rec.status, "invalid");
        assert_eq!(rec.challenges[0].status, "invalid");
        let p = rec.challenges[0].problem.clone().unwrap();
        assert_eq!(p.status, Some(403));
        assert_eq!(
            p.subproblems[0].identifier.as_deref(),
            Some("dns:www.example.com")
        );
        // The advice is the challenge advice (origin set to the identifier), not a generic one.
        assert!(
            p.advice
                .starts_with("the CA could not verify control of www.example.com"),
            "{}",
            p.advice
        );
        let st = CertState {
            last_order: Some(OrderTrace {
                url: Some("https://ca/order/1".into()),
                status: Some("invalid".into()),
                authorizations: vec![rec],
                ..Default::default()
            }),
            ..Default::default()
        };
        s.save_cert_state("www", &st).unwrap();
        assert_eq!(s.load_cert_state("www").unwrap(), Some(st));
        // A status word this version does not know still loads.
        fs::write(
            tmp.path().join("certs/new.json"),
            r#"{"last_order": {"status": "someday", "authorizations": [{"status": "brandnew"}]}}"#,
        )
        .unwrap();
        let t = s
            .load_cert_state("new")
            .unwrap()
            .unwrap()
            .last_order
            .unwrap();
        assert_eq!(t.authorizations[0].status, "brandnew");
    }

    #[test]
    fn cert_state_roundtrip_old_files_and_corruption() {
        let tmp = tempfile::tempdir().unwrap();
        let s = StateStore::open(tmp.path()).unwrap();
        assert!(s.load_cert_state("www").unwrap().is_none());
        let st = CertState {
            order_url: Some("https://ca/order/1".into()),
            retry: crate::scheduler::RetryState {
                failures: 3,
                permanent: true,
                ..Default::default()
            },
            ari_cert_id: Some("aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE".into()),
            last_success: Some(jiff::Timestamp::from_second(1_700_000_000).unwrap()),
            ..Default::default()
        };
        s.save_cert_state("www", &st).unwrap();
        assert_eq!(s.load_cert_state("www").unwrap(), Some(st));
        assert_eq!(mode(&tmp.path().join("certs/www.json")), 0o600);
        // An older file with few fields and a newer one with unknown fields both load.
        fs::write(
            tmp.path().join("certs/old.json"),
            r#"{"retry": {"failures": 2}, "future_field": [1]}"#,
        )
        .unwrap();
        let old = s.load_cert_state("old").unwrap().unwrap();
        assert_eq!((old.retry.failures, old.order_url), (2, None));
        fs::write(tmp.path().join("certs/bad.json"), "{not json").unwrap();
        let err = s.load_cert_state("bad").unwrap_err().to_string();
        assert!(err.contains("bad.json is corrupt"), "{err}");
        assert!(matches!(
            s.load_cert_state("../etc/passwd"),
            Err(StoreError::InvalidName(_))
        ));
    }

    #[test]
    fn pending_key_lifecycle() {
        let tmp = tempfile::tempdir().unwrap();
        let s = StateStore::open(tmp.path()).unwrap();
        assert!(s.load_pending_key("www").unwrap().is_none());
        s.save_pending_key("www", b"KEY").unwrap();
        assert_eq!(mode(&tmp.path().join("certs/www.key.pem")), 0o600);
        assert_eq!(
            s.load_pending_key("www").unwrap().as_deref(),
            Some(&b"KEY"[..])
        );
        s.remove_pending_key("www").unwrap();
        s.remove_pending_key("www").unwrap();
        assert!(s.load_pending_key("www").unwrap().is_none());
    }

    #[test]
    fn lock_is_exclusive_and_released_on_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let s = StateStore::open(tmp.path()).unwrap();
        let l = s.lock_cert("www").unwrap();
        let err = s.lock_cert("www").unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
        assert!(err.to_string().contains("another certkeeper process"));
        // Other certificates are independent.
        let _other = s.lock_cert("api").unwrap();
        drop(l);
        s.lock_cert("www").unwrap();
    }

    #[test]
    fn lock_excludes_another_process() {
        let tmp = tempfile::tempdir().unwrap();
        let s = StateStore::open(tmp.path()).unwrap();
        let path = tmp.path().join("locks/www.lock");
        let _l = s.lock_cert("www").unwrap();
        // flock(1) from util-linux in another process must fail to get it.
        let Ok(out) = std::process::Command::new("flock")
            .arg("-n")
            .arg(&path)
            .arg("true")
            .status()
        else {
            return; // flock(1) not installed
        };
        assert!(!out.success());
    }
}
