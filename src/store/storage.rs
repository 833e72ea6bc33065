//! The storage contract under the ledger and the account store: a few named blobs and locks.
//!
//! Keys are `/`-separated paths of safe segments (`certs/www.json`, `accounts/le-0a1b2c/key.pem`):
//! letters, digits, `.`, `_` and `-`, no segment starting with `.`. A backend maps them onto what it
//! has; [`FileStorage`] maps them onto files under `state_dir` (the embedded default), a shared
//! backend (PostgreSQL, for a fleet) onto rows. Nothing above this trait knows which one it talks to.
//!
//! Contract (as CertMagic's `Storage`, adapted):
//! - `store` is atomic: a reader sees the old value or the new one, never a mix, also after a crash;
//!   it is durable when it returns.
//! - `load` of a missing key is `Ok(None)`, not an error; `delete` of a missing key is `Ok(())`.
//! - `lock` never waits: it returns [`StoreError::Locked`] while another holder has the lock. A
//!   [`Lease`] carries a fencing token that grows with every acquisition, so a backend whose locks
//!   can expire can refuse writes from a holder that lost its lease.
//! - `lock_wait` waits (briefly: it guards read-modify-write steps of a few milliseconds).
//! - `store_fenced` (and `delete_fenced`) is `store` made under a lease: a backend whose leases can expire refuses it
//!   ([`StoreError::Fenced`]) once the lease was lost (expired, or taken by another holder with a
//!   larger token); a backend whose locks cannot be lost (flock) stores as `store` does.
//! - Everything is safe for concurrent use from several tasks and several processes.

use std::fs::{self, OpenOptions};
use std::io::Read as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::StoreError;
use super::atomic::{atomic_write, fsync_dir, parent_dir};

/// Directories the file backend creates are private to the daemon's user.
const DIR_MODE: u32 = 0o700;
/// Files the file backend writes are private to the daemon's user.
const FILE_MODE: u32 = 0o600;

/// A held lock, released when dropped (or when the process dies).
pub struct Lease {
    token: u64,
    name: String,
    _guard: Box<dyn Send + Sync>,
}

impl Lease {
    /// A lease of `name` with fencing `token`; dropping `guard` releases the lock.
    pub(crate) fn new(name: &str, token: u64, guard: Box<dyn Send + Sync>) -> Self {
        Self {
            token,
            name: name.to_string(),
            _guard: guard,
        }
    }

    /// The fencing token: larger than the token of every earlier holder of the same lock.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("name", &self.name)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

/// A lock held now, as a shared backend records it (`certkeeper status`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LeaseInfo {
    /// The lock's name (a certificate's issuance lease is named after the certificate).
    pub name: String,
    /// The node that holds it.
    pub holder: String,
    /// When the holder took it.
    pub acquired_at: jiff::Timestamp,
    /// When it expires unless the holder renews it (a live holder renews it while it works).
    pub expires_at: jiff::Timestamp,
    /// Its fencing token.
    pub token: u64,
}

/// Where state lives: load/store/delete/list of named blobs, and locks.
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// The value under `key`, or `None` when there is none.
    fn load(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Store `value` under `key`, atomically and durably.
    fn store(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;
    /// Store `value` under `key` only while `lease` is still held ([`StoreError::Fenced`] when it
    /// was lost): the write of a result made under a lock.
    fn store_fenced(&self, key: &str, value: &[u8], lease: &Lease) -> Result<(), StoreError>;
    /// Remove `key`; a missing key is fine.
    fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Remove `key` only while `lease` is still held ([`StoreError::Fenced`] when it was lost).
    fn delete_fenced(&self, key: &str, lease: &Lease) -> Result<(), StoreError>;
    /// The keys directly below `prefix` (a directory-like key such as `certs`), sorted; the names
    /// are relative to `prefix`. A missing prefix lists nothing.
    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError>;
    /// Move every key below `from` to below `to` (an account retired after deactivation).
    fn rename_prefix(&self, from: &str, to: &str) -> Result<(), StoreError>;
    /// Take the lock `name` without waiting; [`StoreError::Locked`] when it is held elsewhere.
    fn lock(&self, name: &str) -> Result<Lease, StoreError>;
    /// Take the lock `name`, waiting for the holder to release it. For short critical sections only.
    fn lock_wait(&self, name: &str) -> Result<Lease, StoreError>;
    /// Where `key` is, for messages (`/var/lib/certkeeper/certs/www.json`).
    fn describe(&self, key: &str) -> String;
    /// Every lock held now (unexpired), with its holder, read at once (one query, not one per
    /// lock). A backend whose locks are local (flock) has no holders to tell: none.
    fn leases(&self) -> Result<Vec<LeaseInfo>, StoreError>;
}

/// Check that `key` is a safe storage key (see the module docs).
pub fn check_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() || key.len() > 400 {
        return Err(StoreError::InvalidName(key.to_string()));
    }
    key.split('/').try_for_each(check_name)
}

/// Check that `name` is usable as one key segment (and so as a file name).
pub fn check_name(name: &str) -> Result<(), StoreError> {
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

/// The file tree under `state_dir`: one file per key (mode 0600, directories 0700), atomic writes
/// (temp file, fsync, rename, directory fsync), `flock` on `locks/<name>.lock` for locks.
#[derive(Clone, Debug)]
pub struct FileStorage {
    root: PathBuf,
    /// Directories this handle (or a clone) created or tightened to 0700 already: a write into one
    /// skips the `mkdir` and `stat` (a pass writes each certificate's state several times).
    private_dirs: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<PathBuf>>>,
}

impl FileStorage {
    /// Open (and create, mode 0700) the state directory.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        for d in [&root, &root.join("locks")] {
            make_private_dir(d)?;
        }
        Ok(Self::at(root))
    }

    fn at(root: PathBuf) -> Self {
        Self {
            root,
            private_dirs: Default::default(),
        }
    }

    /// [`make_private_dir`] once per directory and handle.
    fn ensure_private_dir(&self, d: &Path) -> Result<(), StoreError> {
        let mut known = self.private_dirs.lock().unwrap_or_else(|e| e.into_inner());
        if !known.contains(d) {
            make_private_dir(d)?;
            known.insert(d.to_path_buf());
        }
        Ok(())
    }

    /// Forget what [`FileStorage::ensure_private_dir`] knows about `d` (it was moved or removed).
    fn forget_dir(&self, d: &Path) {
        let mut known = self.private_dirs.lock().unwrap_or_else(|e| e.into_inner());
        known.retain(|k| !k.starts_with(d));
    }

    /// Open the state directory for reading only: nothing is created or changed, and a missing
    /// directory reads as empty (`certkeeper status` before the first run).
    pub fn open_read_only(root: impl Into<PathBuf>) -> Self {
        Self::at(root.into())
    }

    /// The state directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file of `key`.
    pub fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    fn lock_file(&self, name: &str) -> Result<(PathBuf, fs::File), StoreError> {
        check_name(name)?;
        let path = self.root.join("locks").join(format!("{name}.lock"));
        let open = || {
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .mode(FILE_MODE)
                .open(&path)
        };
        let file = match open() {
            // The state directory removed under a running daemon: made again, as a write would.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.forget_dir(&self.root);
                self.ensure_private_dir(parent_dir(&path))?;
                open()
            }
            opened => opened,
        }
        .map_err(|e| StoreError::io("opening lock file", &path, e))?;
        Ok((path, file))
    }

    /// Count this acquisition in the lock file and return the new fencing token. The count is
    /// written over the old one at a fixed width, so the file is never truncated: a truncate
    /// makes ext4 flush the file at close, which was a tenth of the client's CPU per issuance.
    fn next_token(path: &Path, lock: &mut Flock<fs::File>) -> Result<u64, StoreError> {
        use std::os::unix::fs::FileExt as _;
        let mut text = String::new();
        // A lock file of an older version is empty or holds a shorter count: it starts from that.
        let _ = lock.read_to_string(&mut text);
        let token = text.trim().parse::<u64>().unwrap_or(0).saturating_add(1);
        lock.write_all_at(format!("{token:020}\n").as_bytes(), 0)
            .map_err(|e| StoreError::io("writing lock file", path, e))?;
        Ok(token)
    }

    fn acquire(&self, name: &str, arg: FlockArg) -> Result<Lease, StoreError> {
        let (path, file) = self.lock_file(name)?;
        let mut lock = match Flock::lock(file, arg) {
            Ok(lock) => lock,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(StoreError::Locked {
                    name: name.to_string(),
                    path,
                });
            }
            Err((_, errno)) => {
                return Err(StoreError::io(
                    "locking",
                    &path,
                    std::io::Error::from(errno),
                ));
            }
        };
        let token = Self::next_token(&path, &mut lock)?;
        Ok(Lease::new(name, token, Box::new(lock)))
    }
}

impl Storage for FileStorage {
    fn load(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let p = self.path(key)?;
        match fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io("reading", p, e)),
        }
    }

    fn store(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let p = self.path(key)?;
        let dir = parent_dir(&p);
        self.ensure_private_dir(dir)?;
        match atomic_write(&p, value, FILE_MODE, None, None) {
            // Removed behind this handle's back since: make it again.
            Err(_) if !dir.is_dir() => {
                self.forget_dir(dir);
                self.ensure_private_dir(dir)?;
                atomic_write(&p, value, FILE_MODE, None, None)
            }
            done => done,
        }
    }

    fn store_fenced(&self, key: &str, value: &[u8], _lease: &Lease) -> Result<(), StoreError> {
        // An flock is held until the holder's process ends: it cannot be lost while the Lease lives.
        self.store(key, value)
    }

    fn delete_fenced(&self, key: &str, _lease: &Lease) -> Result<(), StoreError> {
        // As store_fenced: an flock cannot be lost while the Lease lives.
        self.delete(key)
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        let p = self.path(key)?;
        match fs::remove_file(&p) {
            Ok(()) => fsync_dir(parent_dir(&p)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io("removing", &p, e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let dir = self.path(prefix)?;
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::io("listing", &dir, e)),
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| check_name(n).is_ok())
            .collect();
        names.sort();
        Ok(names)
    }

    fn rename_prefix(&self, from: &str, to: &str) -> Result<(), StoreError> {
        let (src, dst) = (self.path(from)?, self.path(to)?);
        self.ensure_private_dir(parent_dir(&dst))?;
        self.forget_dir(&src);
        fs::rename(&src, &dst).map_err(|e| StoreError::io("moving", &src, e))?;
        fsync_dir(parent_dir(&dst))?;
        fsync_dir(parent_dir(&src))
    }

    fn lock(&self, name: &str) -> Result<Lease, StoreError> {
        self.acquire(name, FlockArg::LockExclusiveNonblock)
    }

    fn lock_wait(&self, name: &str) -> Result<Lease, StoreError> {
        self.acquire(name, FlockArg::LockExclusive)
    }

    fn describe(&self, key: &str) -> String {
        self.root.join(key).display().to_string()
    }

    fn leases(&self) -> Result<Vec<LeaseInfo>, StoreError> {
        // flock: held by a process on this host, which the lock file does not name.
        Ok(Vec::new())
    }
}

/// Create `d` (and its parents) with mode 0700, and tighten it to 0700 when it exists and belongs
/// to the user certkeeper runs as (a directory of another user is never chmodded).
pub(crate) fn make_private_dir(d: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::MetadataExt as _;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(d)
        .map_err(|e| StoreError::io("creating directory", d, e))?;
    let meta = fs::metadata(d).map_err(|e| StoreError::io("reading", d, e))?;
    if meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & 0o7777 == DIR_MODE {
        return Ok(());
    }
    fs::set_permissions(d, fs::Permissions::from_mode(DIR_MODE))
        .map_err(|e| StoreError::io("setting permissions of", d, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn load_store_delete_list() {
        let tmp = tempfile::tempdir().unwrap();
        let s = FileStorage::open(tmp.path().join("state")).unwrap();
        assert_eq!(s.load("certs/www.json").unwrap(), None);
        s.store("certs/www.json", b"{}").unwrap();
        s.store("certs/api.json", b"{}").unwrap();
        assert_eq!(
            s.load("certs/www.json").unwrap().as_deref(),
            Some(&b"{}"[..])
        );
        assert_eq!(mode(&tmp.path().join("state/certs/www.json")), 0o600);
        assert_eq!(mode(&tmp.path().join("state/certs")), 0o700);
        assert_eq!(s.list("certs").unwrap(), ["api.json", "www.json"]);
        assert!(s.list("nothing").unwrap().is_empty());
        s.delete("certs/www.json").unwrap();
        s.delete("certs/www.json").unwrap();
        assert_eq!(s.load("certs/www.json").unwrap(), None);
        for bad in ["../x", "certs/../x", "/abs", "certs/.hidden", "", "a//b"] {
            assert!(
                matches!(s.load(bad), Err(StoreError::InvalidName(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn rename_prefix_moves_a_directory_of_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let s = FileStorage::open(tmp.path()).unwrap();
        s.store("accounts/a/key.pem", b"k").unwrap();
        s.rename_prefix("accounts/a", "accounts/a.old").unwrap();
        assert_eq!(s.load("accounts/a/key.pem").unwrap(), None);
        assert_eq!(
            s.load("accounts/a.old/key.pem").unwrap().as_deref(),
            Some(&b"k"[..])
        );
    }

    #[test]
    fn locks_exclude_and_tokens_grow() {
        let tmp = tempfile::tempdir().unwrap();
        let s = FileStorage::open(tmp.path()).unwrap();
        let a = s.lock("www").unwrap();
        assert!(matches!(s.lock("www"), Err(StoreError::Locked { .. })));
        let other = s.lock("api").unwrap();
        let first = a.token();
        drop(a);
        let b = s.lock_wait("www").unwrap();
        assert!(b.token() > first, "{} > {first}", b.token());
        assert_eq!(b.name(), "www");
        assert_eq!(mode(&tmp.path().join("locks/www.lock")), 0o600);
        drop((b, other));
    }

    #[test]
    fn a_directory_removed_behind_its_back_is_made_again() {
        let tmp = tempfile::tempdir().unwrap();
        let s = FileStorage::open(tmp.path()).unwrap();
        s.store("certs/www.json", b"1").unwrap();
        fs::remove_dir_all(tmp.path().join("certs")).unwrap();
        s.store("certs/www.json", b"2").unwrap();
        assert_eq!(
            s.load("certs/www.json").unwrap().as_deref(),
            Some(&b"2"[..])
        );
        assert_eq!(mode(&tmp.path().join("certs")), 0o700);
        // The whole state directory, with its locks.
        fs::remove_dir_all(tmp.path()).unwrap();
        assert_eq!(s.lock("www").unwrap().token(), 1);
        s.store("certs/www.json", b"3").unwrap();
        assert_eq!(mode(tmp.path()), 0o700);
    }

    #[test]
    fn a_lock_file_of_an_older_version_counts_on_from_its_token() {
        let tmp = tempfile::tempdir().unwrap();
        let s = FileStorage::open(tmp.path()).unwrap();
        fs::write(tmp.path().join("locks/www.lock"), "7\n").unwrap();
        assert_eq!(s.lock("www").unwrap().token(), 8);
        assert_eq!(s.lock("www").unwrap().token(), 9);
        let text = fs::read_to_string(tmp.path().join("locks/www.lock")).unwrap();
        assert_eq!(text, format!("{:020}\n", 9));
    }

    #[test]
    fn honours_the_storage_contract() {
        let tmp = tempfile::tempdir().unwrap();
        crate::store::contract::check_all(&FileStorage::open(tmp.path()).unwrap());
    }

    #[test]
    fn read_only_open_creates_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let s = FileStorage::open_read_only(tmp.path().join("absent"));
        assert_eq!(s.load("certs/www.json").unwrap(), None);
        assert!(s.list("certs").unwrap().is_empty());
        assert!(!tmp.path().join("absent").exists());
    }
}
