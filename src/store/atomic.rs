//! Atomic file writes: temp file in the same directory, fsync, rename, directory fsync.

use std::fs::{File, Permissions};
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use nix::unistd::{Gid, Uid};

use super::StoreError;

/// Write `bytes` to `path` so that readers see either the old file or the new one, never a part.
///
/// The data goes to a temporary file in the same directory; ownership (when given) and `mode` are set
/// on the open file before it is renamed over `path`, so the new file is never visible with wrong
/// permissions. The file and then the directory are fsynced, so the rename survives a power cut.
pub fn atomic_write(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<Uid>,
    group: Option<Gid>,
) -> Result<(), StoreError> {
    let dir = parent_dir(path);
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(|e| StoreError::io("creating a temporary file in", dir, e))?;
    // Restrict first: the data must never sit in a file with the umask's default permissions.
    restrict(tmp.as_file(), tmp.path(), mode, owner, group)?;
    tmp.write_all(bytes)
        .map_err(|e| StoreError::io("writing", tmp.path(), e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| StoreError::io("syncing", tmp.path(), e))?;
    tmp.persist(path)
        .map_err(|e| StoreError::io("renaming a temporary file to", path, e.error))?;
    fsync_dir(dir)
}

/// Write a new file at `path` in a directory nobody reads yet (a staging directory renamed into
/// place when complete): created exclusively with `mode` and owner, written and fsynced; the caller
/// fsyncs the directory once for all its files.
pub fn write_new(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<Uid>,
    group: Option<Gid>,
) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode & 0o7777)
        .open(path)
        .map_err(|e| StoreError::io("creating", path, e))?;
    // The umask may have narrowed the mode at creation; set it exactly, before any data.
    restrict(&file, path, mode, owner, group)?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| StoreError::io("writing", path, e))
}

/// Give the open `file` (at `path`, for messages) exactly `mode` and, when given, its owner.
fn restrict(
    file: &File,
    path: &Path,
    mode: u32,
    owner: Option<Uid>,
    group: Option<Gid>,
) -> Result<(), StoreError> {
    let set_mode = || {
        file.set_permissions(Permissions::from_mode(mode & 0o7777))
            .map_err(|e| StoreError::io("setting permissions of", path, e))
    };
    set_mode()?;
    if owner.is_some() || group.is_some() {
        std::os::unix::fs::fchown(file, owner.map(|u| u.as_raw()), group.map(|g| g.as_raw()))
            .map_err(|e| StoreError::io("changing owner of", path, e))?;
        // chown may clear set-id bits; set the mode again after it.
        set_mode()?;
    }
    Ok(())
}

/// Fsync a directory so that renames and creations inside it are durable.
pub fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io("syncing directory", dir, e))
}

pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    #[test]
    fn writes_content_mode_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.pem");
        atomic_write(&p, b"one", 0o600, None, None).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o7777, 0o600);
        atomic_write(&p, b"two", 0o644, None, None).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o7777, 0o644);
        // No temporary files are left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f.pem")]);
    }

    #[test]
    fn write_new_creates_with_the_mode_and_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("privkey.pem");
        write_new(&p, b"key", 0o640, None, None).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"key");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o7777, 0o640);
        let err = write_new(&p, b"other", 0o600, None, None).unwrap_err();
        assert!(err.to_string().contains("privkey.pem"), "{err}");
        assert_eq!(std::fs::read(&p).unwrap(), b"key");
    }

    #[test]
    fn sets_owner_and_group() {
        if !nix::unistd::geteuid().is_root() {
            return; // chown to another user needs root; covered when tests run as root
        }
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pem");
        atomic_write(&p, b"k", 0o640, Some(nobody.uid), Some(nobody.gid)).unwrap();
        let md = std::fs::metadata(&p).unwrap();
        assert_eq!(md.uid(), nobody.uid.as_raw());
        assert_eq!(md.gid(), nobody.gid.as_raw());
        assert_eq!(md.mode() & 0o7777, 0o640);
    }

    #[test]
    fn missing_directory_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nope").join("f");
        let err = atomic_write(&p, b"x", 0o600, None, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
    }
}
