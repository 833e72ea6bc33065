//! Installing a verified pair into an output directory with an atomic `.live` symlink switch.
//!
//! Layout: `<dir>/{fullchain,privkey,chain,cert}.pem` are symlinks to `.live/<same>`; `.live` is a
//! symlink to a version directory `.v-<serial>-<unix>/` holding the real files. Switching pairs is one
//! `rename` of `.live`, so a crash at any point leaves either the old complete pair or the new one.

use std::fs;
use std::os::unix::fs::{PermissionsExt as _, symlink};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nix::unistd::{Gid, Group, Uid, User};
use serde::{Deserialize, Serialize};

use super::StoreError;
use super::atomic::{fsync_dir, write_new};
use super::verify::{VerifiedCert, VerifiedPair, parse_chain, parse_pair};
use crate::acme::Certificate;

/// The four files every output directory exposes.
const FILES: [&str; 4] = ["fullchain.pem", "privkey.pem", "chain.pem", "cert.pem"];
/// How many version directories are kept (the live one and the ones before it).
const KEEP_VERSIONS: usize = 3;
const LIVE: &str = ".live";

/// Where and how a certificate's files are written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputSpec {
    /// The output directory (created when missing).
    pub dir: PathBuf,
    /// Owner user name of the files; `None` keeps the daemon's user.
    pub owner: Option<String>,
    /// Group name of the files and version directories; `None` keeps the daemon's group.
    pub group: Option<String>,
    /// Mode of `privkey.pem`, e.g. `0o600` or `0o640`.
    pub key_mode: u32,
    /// Mode of the certificate files, e.g. `0o644`.
    pub cert_mode: u32,
    /// Write into an output directory that others can write too (`output.allow_shared_dir`).
    pub allow_shared_dir: bool,
}

/// The stable (symlink) paths of an installed certificate, as servers should reference them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstalledPaths {
    /// `<dir>/fullchain.pem`: leaf followed by the chain.
    pub fullchain: PathBuf,
    /// `<dir>/privkey.pem`.
    pub key: PathBuf,
    /// `<dir>/chain.pem`: the chain without the leaf.
    pub chain: PathBuf,
    /// `<dir>/cert.pem`: the leaf only.
    pub cert: PathBuf,
    /// The version directory `.live` now points to.
    pub version_dir: PathBuf,
}

impl InstalledPaths {
    fn new(dir: &Path, version_dir: PathBuf) -> Self {
        Self {
            fullchain: dir.join("fullchain.pem"),
            key: dir.join("privkey.pem"),
            chain: dir.join("chain.pem"),
            cert: dir.join("cert.pem"),
            version_dir,
        }
    }
}

/// What is live in an output directory.
///
/// The PEM bytes are only needed to issue, revoke, fetch ARI and check a deployment, so a pair
/// taken from the ledger's summary ([`read_known`]) carries the stamp of its files instead and
/// reads a file on first use, refusing it if it is no longer the file that was verified
/// ([`StoreError::Changed`]). `Debug` leaves the private key out.
#[derive(Clone)]
pub struct Installed {
    /// Facts about the live certificate. It may be expired: this is what is on disk.
    pub cert: VerifiedCert,
    /// The directory the files were read from (a `.v-*` directory, or the output directory itself
    /// for a pair written by another tool before certkeeper).
    pub source_dir: PathBuf,
    /// The private key PEM, once read.
    key_pem: OnceLock<Vec<u8>>,
    /// The full chain PEM (leaf first), once read.
    fullchain_pem: OnceLock<Vec<u8>>,
    /// For a pair not read yet: the stamp its files had when `cert` was verified from them.
    known: Option<FilesStamp>,
}

impl Installed {
    /// A pair whose files were read (and verified) already.
    pub fn new(
        cert: VerifiedCert,
        key_pem: Vec<u8>,
        fullchain_pem: Vec<u8>,
        source_dir: PathBuf,
    ) -> Self {
        Self {
            cert,
            source_dir,
            key_pem: OnceLock::from(key_pem),
            fullchain_pem: OnceLock::from(fullchain_pem),
            known: None,
        }
    }

    /// The private key PEM (read on first use; see the type's docs).
    pub fn key_pem(&self) -> Result<&[u8], StoreError> {
        self.pem(&self.key_pem, "privkey.pem", 1)
    }

    /// The full chain PEM, leaf first (read on first use; see the type's docs).
    pub fn fullchain_pem(&self) -> Result<&[u8], StoreError> {
        self.pem(&self.fullchain_pem, "fullchain.pem", 0)
    }

    /// `cell`, or file `name` of `source_dir` when it still has entry `index` of the known stamp.
    fn pem<'a>(
        &'a self,
        cell: &'a OnceLock<Vec<u8>>,
        name: &str,
        index: usize,
    ) -> Result<&'a [u8], StoreError> {
        if let Some(bytes) = cell.get() {
            return Ok(bytes);
        }
        let path = self.source_dir.join(name);
        let want = self.known.as_ref().and_then(|k| k.files.get(index));
        let bytes = read_if_unchanged(&path, want)?;
        Ok(cell.get_or_init(|| bytes))
    }
}

/// The bytes of `path`, when the file opened still has the `(inode, size, mtime_ns)` of `want`.
fn read_if_unchanged(path: &Path, want: Option<&(u64, u64, i64)>) -> Result<Vec<u8>, StoreError> {
    use std::io::Read as _;
    use std::os::unix::fs::MetadataExt as _;
    let mut file = fs::File::open(path).map_err(|e| StoreError::io("reading", path, e))?;
    let meta = file
        .metadata()
        .map_err(|e| StoreError::io("reading", path, e))?;
    let have = (
        meta.ino(),
        meta.size(),
        meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
    );
    if want != Some(&have) {
        return Err(StoreError::Changed(path.to_path_buf()));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.size()).unwrap_or(0));
    file.read_to_end(&mut bytes)
        .map_err(|e| StoreError::io("reading", path, e))?;
    Ok(bytes)
}

impl std::fmt::Debug for Installed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Installed")
            .field("cert", &self.cert)
            .field("key_pem", &"<redacted>")
            .field("source_dir", &self.source_dir)
            .finish_non_exhaustive()
    }
}

struct Ids {
    uid: Option<Uid>,
    gid: Option<Gid>,
}

fn resolve_ids(spec: &OutputSpec) -> Result<Ids, StoreError> {
    let uid = match &spec.owner {
        None => None,
        Some(name) => Some(
            User::from_name(name)
                .map_err(|source| StoreError::Lookup {
                    kind: "user",
                    name: name.clone(),
                    source,
                })?
                .ok_or_else(|| StoreError::UnknownUser(name.clone()))?
                .uid,
        ),
    };
    let gid = match &spec.group {
        None => None,
        Some(name) => Some(
            Group::from_name(name)
                .map_err(|source| StoreError::Lookup {
                    kind: "group",
                    name: name.clone(),
                    source,
                })?
                .ok_or_else(|| StoreError::UnknownGroup(name.clone()))?
                .gid,
        ),
    };
    Ok(Ids { uid, gid })
}

/// Install a verified key and chain into `spec.dir`, switching atomically from what was live before.
///
/// Only a [`VerifiedPair`] is accepted, so what is written is what was checked; an unknown
/// owner/group touches nothing. A pair written by another tool (regular files at the top level) is
/// first hard-linked into `.v-imported-<unix>/` so it is never lost. The previous version directory
/// is kept for rollback; versions beyond the last three are pruned.
pub fn install(spec: &OutputSpec, pair: &VerifiedPair) -> Result<InstalledPaths, StoreError> {
    let serial = &pair.cert().serial_hex;
    let ids = resolve_ids(spec)?;
    let dir = &spec.dir;
    prepare_output_dir(spec, &ids)?;
    clean_staging(dir);

    let unix = jiff::Timestamp::now().as_second();
    let version_dir = write_version(spec, &ids, pair, unix)?;
    let version_name = file_name(&version_dir);

    // Switch: .live.tmp -> new version, renamed over .live.
    let live_tmp = dir.join(".live.tmp");
    remove_if_exists(&live_tmp)?;
    symlink(&version_name, &live_tmp)
        .map_err(|e| StoreError::io("creating symlink", &live_tmp, e))?;
    let live = dir.join(LIVE);
    fs::rename(&live_tmp, &live).map_err(|e| StoreError::io("switching", &live, e))?;
    fsync_dir(dir)?;

    import_regular_files(dir, unix)?;
    ensure_top_links(dir)?;
    prune(dir, &version_name);
    tracing::info!(dir = %dir.display(), serial = %serial, version = %version_name, "installed certificate");
    Ok(InstalledPaths::new(dir, version_dir))
}

/// Create the output directory when missing (with `group`: owned by that group, mode 0750, so the
/// group can reach a 0640 key; else 0755 for the certificates), or check an existing one: refused
/// when a user other than certkeeper and root can write to it, unless `allow_shared_dir`.
fn prepare_output_dir(spec: &OutputSpec, ids: &Ids) -> Result<(), StoreError> {
    let dir = &spec.dir;
    if dir.symlink_metadata().is_err() {
        fs::create_dir_all(dir).map_err(|e| StoreError::io("creating output directory", dir, e))?;
        if let Some(gid) = ids.gid {
            std::os::unix::fs::chown(dir, None, Some(gid.as_raw()))
                .map_err(|e| StoreError::io("changing the group of", dir, e))?;
        }
        let mode = if ids.gid.is_some() { 0o750 } else { 0o755 };
        fs::set_permissions(dir, fs::Permissions::from_mode(mode))
            .map_err(|e| StoreError::io("setting permissions of", dir, e))?;
        return Ok(());
    }
    if spec.allow_shared_dir {
        return Ok(());
    }
    let meta = fs::metadata(dir).map_err(|e| StoreError::io("reading", dir, e))?;
    match others_can_write(&meta, ids) {
        Some(who) => Err(StoreError::SharedDir {
            dir: dir.clone(),
            who,
        }),
        None => Ok(()),
    }
}

/// Who other than certkeeper's user, the configured owner and root can write a directory with
/// `meta`, in words; `None` when nobody.
fn others_can_write(meta: &fs::Metadata, ids: &Ids) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let me = nix::unistd::geteuid().as_raw();
    let trusted_uid =
        |uid: u32| uid == 0 || uid == me || ids.uid.is_some_and(|u| u.as_raw() == uid);
    let mode = meta.mode();
    if mode & 0o002 != 0 {
        return Some("every user".to_string());
    }
    if !trusted_uid(meta.uid()) && mode & 0o200 != 0 {
        let name = User::from_uid(nix::unistd::Uid::from_raw(meta.uid()))
            .ok()
            .flatten()
            .map_or_else(
                || format!("uid {}", meta.uid()),
                |u| format!("user {}", u.name),
            );
        return Some(format!("its owner, {name}"));
    }
    if mode & 0o020 != 0 {
        let name = Group::from_gid(nix::unistd::Gid::from_raw(meta.gid()))
            .ok()
            .flatten()
            .map_or_else(|| format!("gid {}", meta.gid()), |g| g.name);
        return Some(format!("the group {name}"));
    }
    None
}

fn write_version(
    spec: &OutputSpec,
    ids: &Ids,
    pair: &VerifiedPair,
    unix: i64,
) -> Result<PathBuf, StoreError> {
    let dir = &spec.dir;
    // Build in a staging directory, renamed into place when complete, so a `.v-*` dir is never
    // partial. Nobody reads the staging directory, so its files are written in place and the
    // directory is fsynced once for all four.
    let staging = tempfile::Builder::new()
        .prefix(".staging-")
        .tempdir_in(dir)
        .map_err(|e| StoreError::io("creating a staging directory in", dir, e))?;
    let sp = staging.path();
    let mut key = pair.key_pem().to_vec();
    if !key.ends_with(b"\n") {
        key.push(b'\n');
    }
    let files: [(&str, &[u8], u32); 4] = [
        ("privkey.pem", &key, spec.key_mode),
        ("fullchain.pem", &pair.fullchain_pem(), spec.cert_mode),
        ("chain.pem", &pair.rest_pem(), spec.cert_mode),
        ("cert.pem", pair.leaf_pem(), spec.cert_mode),
    ];
    for (name, bytes, mode) in files {
        write_new(&sp.join(name), bytes, mode, ids.uid, ids.gid)?;
    }
    let dir_mode = if ids.gid.is_some() { 0o750 } else { 0o755 };
    if ids.uid.is_some() || ids.gid.is_some() {
        std::os::unix::fs::chown(sp, ids.uid.map(|u| u.as_raw()), ids.gid.map(|g| g.as_raw()))
            .map_err(|e| StoreError::io("changing owner of", sp, e))?;
    }
    fs::set_permissions(sp, fs::Permissions::from_mode(dir_mode))
        .map_err(|e| StoreError::io("setting permissions of", sp, e))?;
    fsync_dir(sp)?;

    let serial = &pair.cert().serial_hex;
    let mut target = dir.join(format!(".v-{serial}-{unix}"));
    let mut n = 1;
    while target.symlink_metadata().is_ok() {
        target = dir.join(format!(".v-{serial}-{unix}.{n}"));
        n += 1;
    }
    let sp = staging.keep();
    fs::rename(&sp, &target)
        .map_err(|e| StoreError::io("renaming staging directory to", &target, e))?;
    fsync_dir(dir)?;
    Ok(target)
}

/// Hard-link (or copy) regular files at the top level into `.v-imported-<unix>/` so that a pair
/// from before certkeeper survives their replacement by symlinks.
fn import_regular_files(dir: &Path, unix: i64) -> Result<(), StoreError> {
    let regular: Vec<&str> = FILES
        .iter()
        .copied()
        .filter(|f| {
            dir.join(f)
                .symlink_metadata()
                .map(|m| m.file_type().is_file())
                .unwrap_or(false)
        })
        .collect();
    if regular.is_empty() {
        return Ok(());
    }
    let mut target = dir.join(format!(".v-imported-{unix}"));
    let mut n = 1;
    while target.symlink_metadata().is_ok() {
        target = dir.join(format!(".v-imported-{unix}.{n}"));
        n += 1;
    }
    fs::create_dir(&target).map_err(|e| StoreError::io("creating", &target, e))?;
    for f in &regular {
        let (from, to) = (dir.join(f), target.join(f));
        if fs::hard_link(&from, &to).is_err() {
            fs::copy(&from, &to)
                .map_err(|e| StoreError::io("saving the previous file to", &to, e))?;
            if let Ok(file) = fs::File::open(&to) {
                let _ = file.sync_all();
            }
        }
    }
    fsync_dir(&target)?;
    fsync_dir(dir)?;
    tracing::info!(dir = %dir.display(), saved = %target.display(), "kept the files found before certkeeper");
    Ok(())
}

fn ensure_top_links(dir: &Path) -> Result<(), StoreError> {
    for f in FILES {
        let path = dir.join(f);
        let want = Path::new(LIVE).join(f);
        if fs::read_link(&path).is_ok_and(|t| t == want) {
            continue;
        }
        let tmp = dir.join(format!(".{f}.tmp-link"));
        remove_if_exists(&tmp)?;
        symlink(&want, &tmp).map_err(|e| StoreError::io("creating symlink", &tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| StoreError::io("replacing", &path, e))?;
    }
    fsync_dir(dir)
}

/// Copy the live pair of `spec.dir` into `<dir>/.revoked-<serial>/` (real files, mode 0600/0644 as
/// installed), where pruning never touches it, and return that directory.
///
/// Used after a revocation: the pair stays live (a running server keeps serving until the replacement
/// is installed) but a copy is kept for the record even after later installs prune its version.
pub fn keep_revoked(spec: &OutputSpec, live: &Installed) -> Result<PathBuf, StoreError> {
    let dir = spec.dir.join(format!(".revoked-{}", live.cert.serial_hex));
    fs::create_dir_all(&dir).map_err(|e| StoreError::io("creating directory", &dir, e))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| StoreError::io("setting permissions of", &dir, e))?;
    let (key_pem, fullchain_pem) = (live.key_pem()?, live.fullchain_pem()?);
    crate::store::atomic_write(&dir.join("privkey.pem"), key_pem, 0o600, None, None)?;
    crate::store::atomic_write(&dir.join("fullchain.pem"), fullchain_pem, 0o644, None, None)?;
    fsync_dir(&spec.dir)?;
    Ok(dir)
}

/// Remove version directories beyond the newest [`KEEP_VERSIONS`]; never the live one, never imports.
fn prune(dir: &Path, live_name: &str) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    let mut versions: Vec<(i64, String)> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(".v-") && !n.starts_with(".v-imported-"))
        .filter_map(|n| version_time(&n).map(|t| (t, n)))
        .collect();
    versions.sort();
    versions.reverse();
    for (_, name) in versions.into_iter().skip(KEEP_VERSIONS) {
        if name == live_name {
            continue;
        }
        let p = dir.join(&name);
        if let Err(e) = fs::remove_dir_all(&p) {
            tracing::warn!(path = %p.display(), error = %e, "could not prune an old certificate version");
        }
    }
}

fn version_time(name: &str) -> Option<i64> {
    let base = name.strip_prefix(".v-")?;
    let (base, _) = base.split_once('.').unwrap_or((base, ""));
    base.rsplit_once('-')?.1.parse().ok()
}

/// Leftover staging directories come from a crash mid-install; they were never live.
fn clean_staging(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.filter_map(|e| e.ok()) {
            if e.file_name().to_string_lossy().starts_with(".staging-") {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

fn remove_if_exists(p: &Path) -> Result<(), StoreError> {
    match fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io("removing", p, e)),
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// What a read of an output directory depends on: the `.live` target (empty for a pair of plain
/// files written by another tool) and, per file, its inode, size and modification time (ns). A
/// version directory is never rewritten, so an equal stamp means the same files; a new install, a
/// torn switch or a file edited in place gives another stamp.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilesStamp {
    /// Where `.live` points (a `.v-*` directory name), or empty.
    pub live: String,
    /// `(inode, size, mtime_ns)` of `fullchain.pem`, `privkey.pem` (and `chain.pem`, `cert.pem`
    /// behind `.live`), in that order.
    pub files: Vec<(u64, u64, i64)>,
}

/// The live files of an output directory, located by [`locate`].
struct Located {
    /// The directory they are in (a `.v-*` directory, or the output directory itself).
    source_dir: PathBuf,
    /// Where `.live` points, or empty for plain files.
    live: String,
    /// `source_dir`, open: the files are looked at relative to it (no walk of the whole path per
    /// file, which at 10,000 certificates is most of the cost).
    fd: fs::File,
}

/// Where the live files of `spec.dir` are: `Ok(None)` when nothing is installed. Checks the names
/// only (what servers read): `.live` leads to a directory and the four top-level names are the
/// symlinks into it.
fn locate(spec: &OutputSpec) -> Result<Option<Located>, StoreError> {
    use nix::fcntl::{OFlag, openat, readlinkat};
    let dir = &spec.dir;
    let torn = |reason: String| StoreError::Torn {
        dir: dir.clone(),
        reason,
    };
    let dir_fd = match fs::File::open(dir) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io("reading", dir, e)),
    };
    match readlinkat(&dir_fd, LIVE) {
        Ok(target) => {
            let d = dir.join(&target);
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
            let Ok(fd) = openat(
                &dir_fd,
                target.as_os_str(),
                flags,
                nix::sys::stat::Mode::empty(),
            ) else {
                return Err(torn(format!(
                    ".live points to {}, which is missing",
                    d.display()
                )));
            };
            for f in FILES {
                let want = Path::new(LIVE).join(f);
                if !readlinkat(&dir_fd, f).is_ok_and(|t| Path::new(&t) == want) {
                    return Err(torn(format!(
                        "{f} is not the symlink to {} (an install was interrupted)",
                        want.display()
                    )));
                }
            }
            Ok(Some(Located {
                source_dir: d,
                live: target.to_string_lossy().into_owned(),
                fd: fs::File::from(fd),
            }))
        }
        Err(nix::errno::Errno::ENOENT) => {
            let exists =
                |f: &str| nix::sys::stat::fstatat(&dir_fd, f, nix::fcntl::AtFlags::empty()).is_ok();
            match (exists("fullchain.pem"), exists("privkey.pem")) {
                (false, false) => Ok(None),
                (true, true) => Ok(Some(Located {
                    source_dir: dir.clone(),
                    live: String::new(),
                    fd: dir_fd,
                })),
                _ => Err(torn(
                    "only one of fullchain.pem and privkey.pem exists".into(),
                )),
            }
        }
        Err(e) => Err(StoreError::io(
            "reading",
            dir.join(LIVE),
            std::io::Error::from(e),
        )),
    }
}

/// `(inode, size, mtime_ns)` of `name` in the directory `fd`.
fn file_stamp(fd: &fs::File, name: &str, dir: &Path) -> Result<(u64, u64, i64), StoreError> {
    let st = nix::sys::stat::fstatat(fd, name, nix::fcntl::AtFlags::empty())
        .map_err(|e| StoreError::io("reading", dir.join(name), std::io::Error::from(e)))?;
    Ok((
        st.st_ino,
        u64::try_from(st.st_size).unwrap_or(0),
        st.st_mtime * 1_000_000_000 + st.st_mtime_nsec,
    ))
}

/// The stamp of what [`locate`] found (see [`FilesStamp`]).
fn stamp_of(found: &Located) -> Result<FilesStamp, StoreError> {
    let names: &[&str] = if found.live.is_empty() {
        &["fullchain.pem", "privkey.pem"]
    } else {
        &["fullchain.pem", "privkey.pem", "chain.pem", "cert.pem"]
    };
    let files = names
        .iter()
        .map(|f| file_stamp(&found.fd, f, &found.source_dir))
        .collect::<Result<_, _>>()?;
    Ok(FilesStamp {
        live: found.live.clone(),
        files,
    })
}

/// The stamp of what is live in `spec.dir` (see [`FilesStamp`]); `Ok(None)` when nothing is
/// installed, an error when the names are torn or a file is missing.
pub fn stamp(spec: &OutputSpec) -> Result<Option<FilesStamp>, StoreError> {
    locate(spec)?.as_ref().map(stamp_of).transpose()
}

/// What is live in `spec.dir`, when it is still exactly the files of `known` (the stamp taken
/// when `cert` was verified from them): the files are only looked at (names and stats), not read,
/// parsed or verified again; [`Installed::key_pem`] and [`Installed::fullchain_pem`] read them on
/// first use. `None` when anything differs (then [`read_installed`] reads and checks everything).
pub fn read_known(spec: &OutputSpec, known: &FilesStamp, cert: &VerifiedCert) -> Option<Installed> {
    let found = locate(spec).ok().flatten()?;
    if stamp_of(&found).ok()? != *known {
        return None;
    }
    Some(Installed {
        cert: cert.clone(),
        source_dir: found.source_dir,
        key_pem: OnceLock::new(),
        fullchain_pem: OnceLock::new(),
        known: Some(known.clone()),
    })
}

/// Read what is live in `spec.dir`: `Ok(None)` when nothing is installed.
///
/// Reads through `.live` when present (the files must all exist, the key must match the leaf, the
/// chain must be signed in order, `fullchain.pem` must equal `cert.pem` + `chain.pem`, and the four
/// top-level names must be the symlinks into `.live`, which is what servers read), otherwise a pair
/// of regular files written by another tool. Anything incomplete or mismatched is
/// [`StoreError::Torn`]. The certificate may be expired: this reports what is on disk.
pub fn read_installed(spec: &OutputSpec) -> Result<Option<Installed>, StoreError> {
    let dir = &spec.dir;
    let torn = |reason: String| StoreError::Torn {
        dir: dir.clone(),
        reason,
    };
    let Some(Located { source_dir, .. }) = locate(spec)? else {
        return Ok(None);
    };
    let read = |f: &str| -> Result<Vec<u8>, StoreError> {
        let p = source_dir.join(f);
        fs::read(&p).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => torn(format!("{} is missing", p.display())),
            _ => StoreError::io("reading", &p, e),
        })
    };
    let key_pem = read("privkey.pem")?;
    let fullchain_pem = read("fullchain.pem")?;
    let parsed = parse_pair(&key_pem, &fullchain_pem).map_err(|e| torn(e.to_string()))?;
    if source_dir != *dir {
        let cert = parse_chain(&read("cert.pem")?).map_err(|e| torn(format!("cert.pem: {e}")))?;
        let chain =
            parse_chain(&read("chain.pem")?).map_err(|e| torn(format!("chain.pem: {e}")))?;
        let der = |v: &[Certificate]| v.iter().map(|c| c.der().to_vec()).collect::<Vec<_>>();
        let mut split = der(&cert);
        split.extend(der(&chain));
        if split != der(&parsed.chain) {
            return Err(torn(
                "fullchain.pem is not cert.pem followed by chain.pem".into(),
            ));
        }
    }
    Ok(Some(Installed::new(
        parsed.info,
        key_pem,
        fullchain_pem,
        source_dir,
    )))
}

#[cfg(test)]
mod tests {
    use super::super::verify::testpki::Pki;
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    fn spec(dir: &Path) -> OutputSpec {
        OutputSpec {
            dir: dir.to_path_buf(),
            owner: None,
            group: None,
            key_mode: 0o600,
            cert_mode: 0o644,
            allow_shared_dir: false,
        }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn issue(pki: &Pki, serial: u32) -> (Vec<u8>, Vec<u8>, VerifiedPair) {
        let (k, c) = pki.leaf(&["a.test", "b.test"], serial, (-1, 90));
        let v = VerifiedPair::from_pem(&k, &c, &names(&["a.test", "b.test"]), None).unwrap();
        (k, c, v)
    }

    fn versions(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(".v-"))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn an_output_dir_others_can_write_is_refused_unless_allowed() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = Pki::new();
        let (.., v) = issue(&pki, 0x11);
        for (mode, who) in [(0o777, "every user"), (0o775, "the group")] {
            let out = tmp.path().join(format!("shared-{mode:o}"));
            fs::create_dir(&out).unwrap();
            fs::set_permissions(&out, fs::Permissions::from_mode(mode)).unwrap();
            let err = install(&spec(&out), &v).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, StoreError::SharedDir { .. }), "{msg}");
            assert!(msg.contains(who) && msg.contains("chmod go-w"), "{msg}");
            assert_eq!(fs::read_dir(&out).unwrap().count(), 0, "nothing written");
            let allowed = OutputSpec {
                allow_shared_dir: true,
                ..spec(&out)
            };
            install(&allowed, &v).unwrap();
        }
        // A directory only certkeeper (and root) can write is fine.
        let own = tmp.path().join("own");
        fs::create_dir(&own).unwrap();
        fs::set_permissions(&own, fs::Permissions::from_mode(0o755)).unwrap();
        install(&spec(&own), &v).unwrap();
    }

    #[test]
    fn a_created_output_dir_lets_its_group_reach_the_key() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = Pki::new();
        let (.., v) = issue(&pki, 0x12);
        let group = nix::unistd::Group::from_gid(nix::unistd::getegid())
            .unwrap()
            .unwrap()
            .name;
        let out = tmp.path().join("with-group");
        let s = OutputSpec {
            group: Some(group),
            key_mode: 0o640,
            ..spec(&out)
        };
        install(&s, &v).unwrap();
        let meta = fs::metadata(&out).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o750);
        assert_eq!(meta.gid(), nix::unistd::getegid().as_raw());
        let plain = tmp.path().join("plain");
        install(&spec(&plain), &v).unwrap();
        assert_eq!(fs::metadata(&plain).unwrap().mode() & 0o777, 0o755);
    }

    #[test]
    fn fresh_install_layout_modes_and_content() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("www");
        let pki = Pki::new();
        let (k, _c, v) = issue(&pki, 0x10);
        let paths = install(&spec(&out), &v).unwrap();
        for f in FILES {
            assert_eq!(
                fs::read_link(out.join(f)).unwrap(),
                Path::new(".live").join(f)
            );
        }
        let live = fs::read_link(out.join(".live")).unwrap();
        assert!(live.to_string_lossy().starts_with(".v-10-"), "{live:?}");
        assert_eq!(paths.version_dir, out.join(&live));
        assert_eq!(fs::read(&paths.key).unwrap(), k);
        let full = fs::read(&paths.fullchain).unwrap();
        let cert = fs::read(&paths.cert).unwrap();
        let chain = fs::read(&paths.chain).unwrap();
        assert_eq!([cert.clone(), chain.clone()].concat(), full);
        assert_eq!(openssl::x509::X509::stack_from_pem(&cert).unwrap().len(), 1);
        assert_eq!(
            openssl::x509::X509::stack_from_pem(&chain).unwrap()[0]
                .to_der()
                .unwrap(),
            pki.inter.to_der().unwrap()
        );
        assert_eq!(fs::metadata(&paths.key).unwrap().mode() & 0o7777, 0o600);
        assert_eq!(fs::metadata(&paths.cert).unwrap().mode() & 0o7777, 0o644);
        assert_eq!(
            fs::metadata(&paths.version_dir).unwrap().mode() & 0o7777,
            0o755
        );
        let got = read_installed(&spec(&out)).unwrap().unwrap();
        assert_eq!(&got.cert, v.cert());
        assert!(!format!("{got:?}").contains("PRIVATE"));
    }

    #[test]
    fn owner_and_group_applied_and_unknown_names_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = Pki::new();
        let (.., v) = issue(&pki, 1);
        let mut s = spec(tmp.path());
        s.owner = Some("no-such-user-xyz".into());
        let err = install(&s, &v).unwrap_err().to_string();
        assert!(err.contains("unknown user 'no-such-user-xyz'"), "{err}");
        s.owner = None;
        s.group = Some("no-such-group-xyz".into());
        assert!(
            install(&s, &v)
                .unwrap_err()
                .to_string()
                .contains("unknown group")
        );
        assert!(
            fs::read_dir(tmp.path()).unwrap().next().is_none(),
            "nothing touched"
        );
        if nix::unistd::geteuid().is_root() {
            let nobody = User::from_name("nobody").unwrap().unwrap();
            let grp = Group::from_gid(nobody.gid).unwrap().unwrap();
            s.owner = Some("nobody".into());
            s.group = Some(grp.name.clone());
            s.key_mode = 0o640;
            let p = install(&s, &v).unwrap();
            let md = fs::metadata(&p.key).unwrap();
            assert_eq!(
                (md.uid(), md.gid(), md.mode() & 0o7777),
                (nobody.uid.as_raw(), nobody.gid.as_raw(), 0o640)
            );
            let dm = fs::metadata(&p.version_dir).unwrap();
            assert_eq!((dm.gid(), dm.mode() & 0o7777), (nobody.gid.as_raw(), 0o750));
        }
    }

    #[test]
    fn mismatched_pair_is_refused_and_nothing_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = Pki::new();
        let (k1, _c1, v1) = issue(&pki, 1);
        install(&spec(tmp.path()), &v1).unwrap();
        let before = versions(tmp.path());
        let (_, c2, _) = issue(&pki, 2);
        // A foreign key is refused by the verification, the only way to a pair that install takes.
        assert!(VerifiedPair::from_pem(&k1, &c2, &names(&["a.test", "b.test"]), None).is_err());
        assert_eq!(versions(tmp.path()), before);
        assert_eq!(
            read_installed(&spec(tmp.path()))
                .unwrap()
                .unwrap()
                .cert
                .serial_hex,
            "01"
        );
    }

    #[test]
    fn renewal_switches_keeps_previous_and_prunes_beyond_three() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = Pki::new();
        let s = spec(tmp.path());
        for serial in 1..=5u32 {
            let (k, _c, v) = issue(&pki, serial);
            install(&s, &v).unwrap();
            let got = read_installed(&s).unwrap().unwrap();
            assert_eq!(got.cert.serial_hex, format!("{serial:02x}"));
            assert_eq!(fs::read(tmp.path().join("privkey.pem")).unwrap(), k);
        }
        let v = versions(tmp.path());
        assert_eq!(v.len(), 3, "{v:?}");
        let serials: Vec<&str> = v.iter().map(|n| n.split('-').nth(1).unwrap()).collect();
        assert_eq!(serials, ["03", "04", "05"]);
        assert!(!tmp.path().join(".live.tmp").exists());
    }

    #[test]
    fn imports_pre_existing_regular_files_without_loss() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = Pki::new();
        let (k0, c0, _) = issue(&pki, 7);
        fs::write(tmp.path().join("fullchain.pem"), &c0).unwrap();
        fs::write(tmp.path().join("privkey.pem"), &k0).unwrap();
        // An old pair from another tool is readable before the first install.
        let s = spec(tmp.path());
        let old = read_installed(&s).unwrap().unwrap();
        assert_eq!(
            (old.cert.serial_hex.as_str(), old.source_dir.as_path()),
            ("07", tmp.path())
        );
        let (k, _c, v) = issue(&pki, 8);
        install(&s, &v).unwrap();
        let imported: Vec<_> = versions(tmp.path())
            .into_iter()
            .filter(|n| n.starts_with(".v-imported-"))
            .collect();
        assert_eq!(imported.len(), 1);
        assert_eq!(
            fs::read(tmp.path().join(&imported[0]).join("privkey.pem")).unwrap(),
            k0
        );
        assert_eq!(
            fs::read(tmp.path().join(&imported[0]).join("fullchain.pem")).unwrap(),
            c0
        );
        assert!(
            fs::symlink_metadata(tmp.path().join("privkey.pem"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read(tmp.path().join("privkey.pem")).unwrap(), k);
        // Imports are never pruned.
        for serial in 9..=13 {
            let (.., v) = issue(&pki, serial);
            install(&s, &v).unwrap();
        }
        assert!(tmp.path().join(&imported[0]).join("privkey.pem").exists());
    }

    #[test]
    fn torn_live_dirs_are_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let s = spec(tmp.path());
        assert!(read_installed(&s).unwrap().is_none());
        let pki = Pki::new();
        let (k, _c, v) = issue(&pki, 1);
        let p = install(&s, &v).unwrap();
        // key swapped for another
        let (k2, _, _) = issue(&pki, 2);
        fs::write(p.version_dir.join("privkey.pem"), &k2).unwrap();
        let err = read_installed(&s).unwrap_err();
        assert!(matches!(err, StoreError::Torn { .. }), "{err}");
        // file missing
        fs::write(p.version_dir.join("privkey.pem"), &k).unwrap();
        fs::remove_file(p.version_dir.join("chain.pem")).unwrap();
        assert!(
            read_installed(&s)
                .unwrap_err()
                .to_string()
                .contains("chain.pem is missing")
        );
        // dangling .live
        fs::remove_dir_all(&p.version_dir).unwrap();
        assert!(matches!(
            read_installed(&s).unwrap_err(),
            StoreError::Torn { .. }
        ));
    }

    #[test]
    fn interrupted_first_install_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let s = spec(tmp.path());
        let pki = Pki::new();
        let (.., v) = issue(&pki, 1);
        install(&s, &v).unwrap();
        fs::remove_file(tmp.path().join("cert.pem")).unwrap();
        let err = read_installed(&s).unwrap_err().to_string();
        assert!(err.contains("cert.pem is not the symlink"), "{err}");
        // The next install repairs it.
        let (.., v) = issue(&pki, 2);
        install(&s, &v).unwrap();
        assert_eq!(read_installed(&s).unwrap().unwrap().cert.serial_hex, "02");
    }

    /// Child half of `kill_9_never_leaves_a_torn_pair`: installs new pairs in a loop until killed.
    #[test]
    #[ignore = "helper process for kill_9_never_leaves_a_torn_pair"]
    fn crash_child_install_loop() {
        let Some(dir) = std::env::var_os("CERTKEEPER_CRASH_DIR") else {
            return;
        };
        let pki = Pki::new();
        let s = spec(Path::new(&dir));
        for serial in 100.. {
            let (.., v) = issue(&pki, serial);
            install(&s, &v).unwrap();
        }
    }

    #[test]
    fn kill_9_never_leaves_a_torn_pair() {
        let tmp = tempfile::tempdir().unwrap();
        let s = spec(tmp.path());
        let pki = Pki::new();
        let (.., v) = issue(&pki, 1);
        install(&s, &v).unwrap();
        let exe = std::env::current_exe().unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for round in 0..12u64 {
            let mut child = std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "store::install::tests::crash_child_install_loop",
                    "--ignored",
                    "--nocapture",
                ])
                .env("CERTKEEPER_CRASH_DIR", tmp.path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(40 + round * 17));
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            let got = read_installed(&s).unwrap().expect("a pair stays installed");
            // What a server reads through the top-level symlinks is a matching pair too.
            let key = fs::read(tmp.path().join("privkey.pem")).unwrap();
            let full = fs::read(tmp.path().join("fullchain.pem")).unwrap();
            let top = parse_pair(&key, &full).unwrap();
            assert_eq!(top.info.serial_hex, got.cert.serial_hex);
            seen.insert(got.cert.serial_hex);
        }
        assert!(
            seen.len() > 1,
            "the child never got to install anything: {seen:?}"
        );
    }

    #[test]
    fn crash_leftovers_do_not_break_the_next_install() {
        let tmp = tempfile::tempdir().unwrap();
        let s = spec(tmp.path());
        let pki = Pki::new();
        let (.., v) = issue(&pki, 1);
        install(&s, &v).unwrap();
        // Simulate a kill -9 after staging and after creating .live.tmp.
        fs::create_dir(tmp.path().join(".staging-dead")).unwrap();
        symlink(".v-nowhere", tmp.path().join(".live.tmp")).unwrap();
        assert_eq!(read_installed(&s).unwrap().unwrap().cert.serial_hex, "01");
        let (.., v) = issue(&pki, 2);
        install(&s, &v).unwrap();
        assert_eq!(read_installed(&s).unwrap().unwrap().cert.serial_hex, "02");
        assert!(!tmp.path().join(".staging-dead").exists());
    }
}
