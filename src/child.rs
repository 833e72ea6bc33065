//! Programs certkeeper starts (reload hooks, the exec DNS plugin): what they inherit, and how they
//! are run.
//!
//! A child gets only what it needs, because the daemon's environment often holds API tokens from
//! `EnvironmentFile=` and the unit grants `CAP_NET_BIND_SERVICE` as an ambient capability, which
//! would otherwise pass through `execve`:
//! - an empty environment plus the allowlist (`PATH`, `LANG`, `LC_*`, `TZ`), the original
//!   `SSL_CERT_FILE` / `SSL_CERT_DIR` (see [`crate::tls_env`]), the `CERTKEEPER_*` variables the
//!   caller sets, and the names the administrator listed in an `env` key;
//! - an empty ambient capability set;
//! - its own process group, stdin from `/dev/null`, stdout and stderr captured into one bounded
//!   [`Tail`], and a timeout that kills the whole group.

use std::ffi::OsString;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt as _;
use tokio::process::Command;

/// Variables a child always inherits from the daemon (when set): where programs are, and the locale.
const ALLOWED: [&str; 3] = ["PATH", "LANG", "TZ"];
/// Prefixes of variables a child always inherits (`LC_ALL`, `LC_CTYPE`, ...).
const ALLOWED_PREFIXES: [&str; 1] = ["LC_"];
/// systemd's channels to the daemon itself (sd_notify, watchdog, socket activation, credentials,
/// journal stream): never passed on, even when listed in an `env` key.
const SYSTEMD_OWN: [&str; 8] = [
    "NOTIFY_SOCKET",
    "WATCHDOG_",
    "LISTEN_",
    "INVOCATION_ID",
    "JOURNAL_STREAM",
    "CREDENTIALS_DIRECTORY",
    "MAINPID",
    "MANAGERPID",
];

/// The last this many bytes of a child's output are kept.
pub const OUTPUT_LIMIT: usize = 8 * 1024;
/// After a child exits, how long to wait for its output pipe to close (a background process it
/// started may keep it open).
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// Why `name` cannot be listed in an `env` key, or `Ok`.
///
/// A name is letters, digits and `_`, not starting with a digit; systemd's own variables
/// (`NOTIFY_SOCKET`, `WATCHDOG_*`, `LISTEN_*`, ...) are refused, since a child that talks to them
/// speaks for the daemon.
pub fn check_env_name(name: &str) -> Result<(), String> {
    let valid = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid {
        return Err(format!(
            "{name:?} is not a variable name (letters, digits and _, not starting with a digit)"
        ));
    }
    if is_systemd_own(name) {
        return Err(format!(
            "{name} is systemd's channel to certkeeper itself and is never passed to a child"
        ));
    }
    Ok(())
}

fn is_systemd_own(name: &str) -> bool {
    SYSTEMD_OWN
        .iter()
        .any(|s| name == *s || (s.ends_with('_') && name.starts_with(s)))
}

/// The environment a child starts with: the allowlisted variables of `vars` (the daemon's
/// environment), then the names in `extra` that are set in it. `CERTKEEPER_*` variables of the
/// daemon are not passed on: the caller sets the ones the child is meant to see.
pub fn allowed_env(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
    extra: &[String],
) -> Vec<(OsString, OsString)> {
    vars.into_iter()
        .filter(|(k, _)| {
            let Some(k) = k.to_str() else { return false };
            if is_systemd_own(k) {
                return false;
            }
            ALLOWED.contains(&k)
                || ALLOWED_PREFIXES.iter().any(|p| k.starts_with(p))
                || extra.iter().any(|e| e == k)
        })
        .collect()
}

/// Prepare `cmd` to run as a child of certkeeper: the allowlisted environment (plus `extra` names),
/// the original TLS trust variables, no ambient capabilities, its own process group, stdin from
/// `/dev/null`. Set the child's `CERTKEEPER_*` variables after this.
pub fn prepare(cmd: &mut Command, extra: &[String]) {
    cmd.env_clear();
    cmd.envs(allowed_env(std::env::vars_os(), extra));
    for (k, v) in crate::tls_env::original_trust_env() {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null()).process_group(0);
    // SAFETY: the closure runs between fork and exec; it only calls prctl(2) and reads errno, both
    // async-signal-safe, and allocates nothing.
    unsafe {
        cmd.pre_exec(clear_ambient_caps);
    }
}

/// Drop every ambient capability (the unit's `AmbientCapabilities=CAP_NET_BIND_SERVICE`), so that
/// `execve` does not hand it to the program. EINVAL means a kernel without ambient capabilities
/// (before 4.3): nothing to clear.
fn clear_ambient_caps() -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let r = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if r == -1 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(e);
        }
    }
    Ok(())
}

/// How a child run by [`run`] ended.
#[derive(Debug)]
pub enum Ended {
    /// It exited (or a signal ended it).
    Exited(ExitStatus),
    /// It ran past the timeout; its process group was killed.
    TimedOut,
    /// Waiting for it failed.
    WaitError(std::io::Error),
}

/// Run a [`prepare`]d command: stdout and stderr into one pipe whose last [`OUTPUT_LIMIT`] bytes are
/// kept, killing its whole process group at `timeout` (or when this future is dropped before it
/// exits). Returns how it ended and the output text, or the error from starting it.
pub async fn run(mut cmd: Command, timeout: Duration) -> std::io::Result<(Ended, String)> {
    let (reader, writer) = std::io::pipe()?;
    let writer2 = writer.try_clone()?;
    cmd.stdout(Stdio::from(writer)).stderr(Stdio::from(writer2));
    let mut child = cmd.spawn()?;
    // Our copies of the pipe's write end close with `cmd`: EOF comes when the child's group closes it.
    drop(cmd);
    let mut group = GroupGuard(child.id().and_then(|p| i32::try_from(p).ok()));
    let buf = Arc::new(Mutex::new(Tail::default()));
    let reader_task = spawn_reader(reader, buf.clone());

    let ended = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(st)) => {
            group.0 = None;
            Ended::Exited(st)
        }
        Ok(Err(e)) => Ended::WaitError(e),
        Err(_) => {
            group.kill();
            let _ = child.kill().await;
            Ended::TimedOut
        }
    };
    if let Some(task) = reader_task {
        let abort = task.abort_handle();
        if tokio::time::timeout(OUTPUT_GRACE, task).await.is_err() {
            abort.abort();
        }
    }
    let output = buf.lock().map(|t| t.text()).unwrap_or_default();
    Ok((ended, output))
}

/// Kills the process group of a child that has not been reaped yet, when dropped.
struct GroupGuard(Option<i32>);

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            // The child leads its own process group (pgid = pid): kill everything it started.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::SIGKILL,
            );
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn_reader(
    reader: std::io::PipeReader,
    buf: Arc<Mutex<Tail>>,
) -> Option<tokio::task::JoinHandle<()>> {
    let fd: std::os::fd::OwnedFd = reader.into();
    match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
        Ok(mut rx) => Some(tokio::spawn(async move {
            let mut chunk = [0u8; 4096];
            loop {
                match rx.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if let Ok(mut t) = buf.lock() {
                            t.push(&chunk[..n]);
                        }
                    }
                }
            }
        })),
        Err(e) => {
            if let Ok(mut t) = buf.lock() {
                t.push(format!("(output not captured: {e})").as_bytes());
            }
            None
        }
    }
}

/// The last [`OUTPUT_LIMIT`] bytes of a stream.
#[derive(Default)]
pub struct Tail {
    data: Vec<u8>,
    truncated: bool,
}

impl Tail {
    /// Append `bytes`, dropping the oldest beyond [`OUTPUT_LIMIT`].
    pub fn push(&mut self, bytes: &[u8]) {
        self.data.extend_from_slice(bytes);
        if self.data.len() > OUTPUT_LIMIT {
            let cut = self.data.len() - OUTPUT_LIMIT;
            self.data.drain(..cut);
            self.truncated = true;
        }
    }

    /// The kept bytes as text, marked when earlier output was cut.
    pub fn text(&self) -> String {
        let s = String::from_utf8_lossy(&self.data);
        if self.truncated {
            format!("[…earlier output cut]{s}")
        } else {
            s.into_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs.iter().map(|(k, v)| (k.into(), v.into())).collect()
    }

    #[test]
    fn only_allowlisted_and_listed_names_pass() {
        let daemon = os(&[
            ("PATH", "/usr/bin"),
            ("LANG", "C.UTF-8"),
            ("LC_ALL", "C"),
            ("TZ", "UTC"),
            ("CK_SECRET_TOKEN", "s3cret"),
            ("CF_API_TOKEN", "t"),
            ("CERTKEEPER_CONFIG", "/etc/certkeeper/certkeeper.toml"),
            ("NOTIFY_SOCKET", "/run/systemd/notify"),
            ("WATCHDOG_USEC", "1"),
            ("LISTEN_FDS", "1"),
            ("INVOCATION_ID", "x"),
            ("HOME", "/root"),
        ]);
        let got = allowed_env(daemon, &["CF_API_TOKEN".into(), "NOTIFY_SOCKET".into()]);
        let names: Vec<_> = got.iter().map(|(k, _)| k.to_str().unwrap()).collect();
        assert_eq!(names, ["PATH", "LANG", "LC_ALL", "TZ", "CF_API_TOKEN"]);
    }

    #[test]
    fn env_names_are_checked() {
        assert!(check_env_name("HTTPS_PROXY").is_ok());
        assert!(check_env_name("_x1").is_ok());
        for bad in ["", "1A", "A-B", "A=B", "A B"] {
            assert!(
                check_env_name(bad)
                    .unwrap_err()
                    .contains("not a variable name"),
                "{bad}"
            );
        }
        for own in [
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "LISTEN_FDNAMES",
            "INVOCATION_ID",
        ] {
            assert!(
                check_env_name(own).unwrap_err().contains("systemd"),
                "{own}"
            );
        }
    }

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("/bin/sh");
        prepare(&mut cmd, &[]);
        cmd.arg("-c").arg(script);
        cmd
    }

    /// Raise `CAP_NET_BIND_SERVICE` in this thread's ambient set, as systemd's
    /// `AmbientCapabilities=` does for the daemon. Possible only with the capability in the
    /// permitted set (the suite run as root); returns whether it worked.
    fn raise_ambient_net_bind() -> bool {
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Clone, Copy, Default)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        const V3: u32 = 0x2008_0522;
        const CAP_NET_BIND_SERVICE: u32 = 10;
        let bit = 1u32 << CAP_NET_BIND_SERVICE;
        let mut h = Header {
            version: V3,
            pid: 0,
        };
        let mut d = [Data::default(); 2];
        // SAFETY: capget/capset with a v3 header and two data words, as capabilities(7) documents.
        unsafe {
            if libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()) != 0
                || d[0].permitted & bit == 0
            {
                return false;
            }
            d[0].inheritable |= bit;
            if libc::syscall(libc::SYS_capset, &mut h, d.as_ptr()) != 0 {
                return false;
            }
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                CAP_NET_BIND_SERVICE as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            ) == 0
        }
    }

    // current_thread: the child is forked from this thread, whose ambient set the test raises.
    #[tokio::test(flavor = "current_thread")]
    async fn children_get_no_ambient_capabilities() {
        let cap_amb = "grep CapAmb /proc/self/status";
        let raised = raise_ambient_net_bind();
        if raised {
            // Control: a plainly started child inherits the ambient capability.
            let out = std::process::Command::new("/bin/sh")
                .args(["-c", cap_amb])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("CapAmb:\t0000000000000400"), "{text}");
        }
        let (ended, output) = run(sh(cap_amb), Duration::from_secs(10)).await.unwrap();
        assert!(
            matches!(ended, Ended::Exited(s) if s.success()),
            "{ended:?}"
        );
        assert_eq!(
            output, "CapAmb:\t0000000000000000\n",
            "raised in parent: {raised}"
        );
    }

    #[tokio::test]
    async fn output_is_bounded_and_the_group_killed_on_timeout() {
        let (ended, output) = run(
            sh("head -c 10000000 /dev/zero | tr '\\0' x; echo END; sleep 30"),
            Duration::from_secs(2),
        )
        .await
        .unwrap();
        assert!(matches!(ended, Ended::TimedOut), "{ended:?}");
        assert!(output.starts_with("[…earlier output cut]"));
        assert!(output.ends_with("xEND\n") && output.len() < OUTPUT_LIMIT + 64);
    }
}
