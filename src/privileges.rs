//! Running as root on a state directory that belongs to the service user.
//!
//! An administrator who runs `certkeeper renew` (or `check`, `import`, …) as root right after
//! installing would otherwise create `accounts/`, `certs/` and `locks/` as root, mode 0700, and the
//! daemon, running as `certkeeper`, could no longer read or lock them. So when root runs certkeeper
//! on a state directory owned by another user, certkeeper first becomes that user (its group and
//! supplementary groups too), exactly as the daemon runs: same files, same permissions, same hooks.

use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid, User, geteuid, initgroups, setgid, setuid};

/// Why certkeeper could not switch to the state directory's owner.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// The owner has no passwd entry (a deleted user).
    #[error(
        "the state directory {dir} belongs to uid {uid}, which has no user entry; fix its owner (`chown -R certkeeper: {dir}`) or run as that uid"
    )]
    UnknownOwner {
        /// The state directory.
        dir: String,
        /// Its owner.
        uid: u32,
    },
    /// `certkeeper run` started by root on another user's state directory.
    #[error(
        "not starting the daemon as root: the state directory {dir} belongs to {user}; start it with `systemctl start certkeeper`, or `runuser -u {user} -- certkeeper run`"
    )]
    RootDaemon {
        /// The state directory.
        dir: String,
        /// Its owner.
        user: String,
    },
    /// setgid/initgroups/setuid failed.
    #[error(
        "running as root on {dir}, which belongs to {user}: cannot switch to that user ({source}); run `runuser -u {user} -- certkeeper ...` instead"
    )]
    Switch {
        /// The state directory.
        dir: String,
        /// Its owner's name.
        user: String,
        /// The errno.
        source: nix::Error,
    },
}

/// When running as root and the config's state directory exists and belongs to another user, become
/// that user. Does nothing otherwise (not root, no readable config, no state directory yet, or one
/// owned by root).
pub fn become_state_owner(config_path: &Path) -> Result<(), PrivilegeError> {
    if !geteuid().is_root() {
        return Ok(());
    }
    // A config that does not load is reported by the command itself, with file:line:key.
    let Some(state_dir) = state_dir(config_path) else {
        return Ok(());
    };
    become_owner_of(&state_dir)
}

/// The config's state directory, read cheaply from its top-level keys when possible (the command
/// loads the whole config right after; at 10,000 certificates a second full load costs a quarter
/// of a second).
fn state_dir(config_path: &Path) -> Option<PathBuf> {
    crate::config::state_dir_of(config_path)
        .or_else(|| crate::config::load(config_path).ok().map(|c| c.state_dir))
}

/// `certkeeper run` as root on a state directory that belongs to another user: refused, since the
/// daemon would either create root-owned files or lose the privileges its listeners need; systemd
/// starts it as the right user.
pub fn refuse_root_daemon(config_path: &Path) -> Result<(), PrivilegeError> {
    use std::os::unix::fs::MetadataExt as _;
    if !geteuid().is_root() {
        return Ok(());
    }
    let Some(state_dir) = state_dir(config_path) else {
        return Ok(());
    };
    let Ok(meta) = std::fs::metadata(&state_dir) else {
        return Ok(());
    };
    if meta.uid() == 0 {
        return Ok(());
    }
    let user = User::from_uid(Uid::from_raw(meta.uid()))
        .ok()
        .flatten()
        .map_or_else(|| meta.uid().to_string(), |u| u.name);
    Err(PrivilegeError::RootDaemon {
        dir: state_dir.display().to_string(),
        user,
    })
}

/// [`become_state_owner`] for a known state directory.
pub fn become_owner_of(state_dir: &Path) -> Result<(), PrivilegeError> {
    let Some(user) = state_owner(state_dir)? else {
        return Ok(());
    };
    let dir = state_dir.display().to_string();
    let fail = |source| PrivilegeError::Switch {
        dir: dir.clone(),
        user: user.name.clone(),
        source,
    };
    let name = std::ffi::CString::new(user.name.clone()).map_err(|_| fail(nix::Error::EINVAL))?;
    initgroups(&name, user.gid).map_err(fail)?;
    setgid(Gid::from_raw(user.gid.as_raw())).map_err(fail)?;
    setuid(user.uid).map_err(fail)?;
    tracing::info!(user = %user.name, state_dir = %dir, "running as the owner of the state directory");
    // Keep $HOME from pointing at root's home for anything that reads it.
    // SAFETY: called before any thread is started (the async runtime is built after this).
    unsafe { std::env::set_var("HOME", &user.dir) };
    Ok(())
}

/// The user root should act as on `state_dir`: its owner, when certkeeper runs as root and the
/// directory exists and belongs to another user; `None` otherwise (nothing to switch).
pub fn state_owner(state_dir: &Path) -> Result<Option<User>, PrivilegeError> {
    use std::os::unix::fs::MetadataExt as _;
    if !geteuid().is_root() {
        return Ok(None);
    }
    let Ok(meta) = std::fs::metadata(state_dir) else {
        return Ok(None);
    };
    if meta.uid() == 0 {
        return Ok(None);
    }
    User::from_uid(Uid::from_raw(meta.uid()))
        .ok()
        .flatten()
        .map(Some)
        .ok_or(PrivilegeError::UnknownOwner {
            dir: state_dir.display().to_string(),
            uid: meta.uid(),
        })
}

/// Root acting as another user for a while: the effective uid, gid and supplementary groups are
/// that user's until the guard is dropped, then root's again (the real and saved uid stay 0).
///
/// For commands that must read root-only files (certbot's keys) and also write the state directory
/// as its owner: they read first, write the state inside [`act_as`], and finish root's part after.
/// glibc applies set*id calls to every thread of the process, so the async runtime's threads
/// switch too.
#[must_use = "the switch back to root happens when the guard is dropped"]
pub struct ActingAs {
    groups: Vec<Gid>,
    egid: Gid,
}

/// Act as `user`, the owner of `state_dir` (see [`ActingAs`]). Only for a root process.
pub fn act_as(user: &User, state_dir: &Path) -> Result<ActingAs, PrivilegeError> {
    use nix::unistd::{getegid, getgroups, setegid, seteuid};
    let fail = |source| PrivilegeError::Switch {
        dir: state_dir.display().to_string(),
        user: user.name.clone(),
        source,
    };
    let guard = ActingAs {
        groups: getgroups().map_err(fail)?,
        egid: getegid(),
    };
    let name = std::ffi::CString::new(user.name.clone()).map_err(|_| fail(nix::Error::EINVAL))?;
    initgroups(&name, user.gid).map_err(fail)?;
    setegid(user.gid).map_err(fail)?;
    seteuid(user.uid).map_err(fail)?;
    tracing::debug!(user = %user.name, "acting as the owner of the state directory");
    Ok(guard)
}

impl Drop for ActingAs {
    fn drop(&mut self) {
        use nix::unistd::{setegid, seteuid, setgroups};
        let back = seteuid(Uid::from_raw(0))
            .and_then(|()| setegid(self.egid))
            .and_then(|()| setgroups(&self.groups));
        if let Err(e) = back {
            // Whatever root does next fails with EPERM and says so.
            tracing::error!(error = %e, "cannot switch back to root");
        }
    }
}
