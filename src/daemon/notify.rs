//! sd_notify(3) messages that never block the daemon loop.
//!
//! The notify socket is a datagram socket owned by systemd. A send on a blocking socket waits when
//! the receiver's queue is full (a service manager that is busy, or a test that stops reading), and
//! a loop that waits there sends no more WATCHDOG=1, answers no `/healthz` and handles no SIGTERM.
//! Messages are therefore sent with `MSG_DONTWAIT`-like semantics (a non-blocking socket): one that
//! cannot be queued is dropped, and the next tick sends a fresh one.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

use sd_notify::NotifyState;

/// Send `states` to `$NOTIFY_SOCKET` (a path or an `@abstract` name) without waiting; nothing when the
/// variable is unset.
pub fn notify(states: &[NotifyState]) -> io::Result<()> {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let msg: String = states.iter().map(|s| format!("{s}\n")).collect();
    let addr = address(std::os::unix::ffi::OsStrExt::as_bytes(target.as_os_str()))?;
    let sock = UnixDatagram::unbound()?;
    sock.set_nonblocking(true)?;
    let sent = sock.send_to_addr(msg.as_bytes(), &addr)?;
    if sent != msg.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "incomplete notify message",
        ));
    }
    Ok(())
}

fn address(target: &[u8]) -> io::Result<SocketAddr> {
    match target.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt as _;
            SocketAddr::from_abstract_name(name)
        }
        None => {
            use std::os::unix::ffi::OsStrExt as _;
            SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(target))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_receiver_does_not_block_the_sender() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        let addr = address(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str())).unwrap();
        let tx = UnixDatagram::unbound().unwrap();
        tx.set_nonblocking(true).unwrap();
        // Fill the receiver's queue; the sender must get WouldBlock instead of waiting.
        let start = std::time::Instant::now();
        let mut refused = false;
        for _ in 0..10_000 {
            if let Err(e) = tx.send_to_addr(b"WATCHDOG=1\n", &addr) {
                assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{e}");
                refused = true;
                break;
            }
        }
        assert!(refused, "the queue never filled");
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1\n");
    }

    #[test]
    fn abstract_names_are_understood() {
        use std::os::linux::net::SocketAddrExt as _;
        let a = address(b"@certkeeper-test").unwrap();
        assert_eq!(a.as_abstract_name(), Some(&b"certkeeper-test"[..]));
        assert!(
            address(b"/run/systemd/notify")
                .unwrap()
                .as_pathname()
                .is_some()
        );
    }
}
