//! A throw-away system user, for tests that run as root on a state directory owned by the
//! service user (as the Debian package sets it up).

use std::path::Path;
use std::process::Command;

/// A system user created for one test and deleted (with `userdel`) when dropped.
pub struct SystemUser {
    /// The user's name.
    pub name: String,
}

impl SystemUser {
    /// Create a system user, or `None` when not root or `useradd` is missing.
    pub fn create() -> Option<Self> {
        if !nix::unistd::geteuid().is_root() || !Path::new("/usr/sbin/useradd").exists() {
            eprintln!("not root or no useradd; skipping");
            return None;
        }
        let name = format!("ckt{}", std::process::id());
        let ok = Command::new("/usr/sbin/useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                &name,
            ])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "useradd {name}");
        Some(Self { name })
    }

    /// The user's uid.
    pub fn uid(&self) -> u32 {
        nix::unistd::User::from_name(&self.name)
            .unwrap()
            .unwrap()
            .uid
            .as_raw()
    }
}

impl Drop for SystemUser {
    fn drop(&mut self) {
        let _ = Command::new("/usr/sbin/userdel").arg(&self.name).status();
    }
}
