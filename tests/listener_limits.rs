//! The HTTP-01 listener under a slowloris attack: 600 connections that send a request line and
//! nothing more, re-opened as soon as they are closed, from 127.0.0.2 (loopback is all local, so the
//! attacker has an address of its own as on the Internet), while pebble, from 127.0.0.1, validates a
//! new certificate through the daemon. It is issued within 30 s.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt as _;

use support::certkeeper::{CertSpec, IssuerSpec, TestConfig};
use support::{Pebble, PebbleOpts, free_port};

const ATTACK_CONNECTIONS: usize = 600;

fn issued(dir: &Path) -> bool {
    dir.join("cert.pem").exists()
}

/// Open one slow-header connection from 127.0.0.2.
async fn slow_connection(target: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind("127.0.0.2:0".parse().unwrap())?;
    let mut s = sock.connect(target).await?;
    s.write_all(b"GET / HTTP/1.1\r\n").await?;
    Ok(s)
}

/// Whether the server closed `s` (EOF or an error; `WouldBlock` means still open).
fn closed(s: &tokio::net::TcpStream) -> bool {
    let mut b = [0u8; 64];
    !matches!(s.try_read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Keep `ATTACK_CONNECTIONS` slow connections open against `target` until `stop` is set; counts
/// every connection opened in `opened`.
async fn slowloris(target: SocketAddr, stop: Arc<AtomicBool>, opened: Arc<AtomicUsize>) {
    let mut conns: Vec<Option<tokio::net::TcpStream>> = Vec::with_capacity(ATTACK_CONNECTIONS);
    for _ in 0..ATTACK_CONNECTIONS {
        conns.push(slow_connection(target).await.ok());
        opened.fetch_add(1, Ordering::SeqCst);
    }
    while !stop.load(Ordering::SeqCst) {
        for c in conns.iter_mut() {
            if c.as_ref().is_none_or(closed) {
                *c = slow_connection(target).await.ok();
                opened.fetch_add(1, Ordering::SeqCst);
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_is_issued_while_600_slow_header_connections_are_held() {
    if !support::pebble::available() {
        eprintln!("pebble is not installed; skipping");
        return;
    }
    let http_port = free_port();
    let pebble = Pebble::start(PebbleOpts {
        http_port,
        ..Default::default()
    })
    .await;
    let cfg = TestConfig::new()
        .http01_listen(http_port)
        .issuer(IssuerSpec::pebble("pebble", &pebble).solver_http01())
        .certificate(CertSpec::new("a", "pebble", &["a.example.com"]))
        .write();
    let mut d = cfg.spawn_daemon();
    // The daemon works before the attack (and its listener is up).
    d.wait_for("certificate a", Duration::from_secs(120), || {
        issued(&cfg.output_dir("a"))
    })
    .await;

    let target: SocketAddr = ([127, 0, 0, 1], http_port).into();
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    let attack = tokio::spawn(slowloris(target, stop.clone(), opened.clone()));
    let deadline = Instant::now() + Duration::from_secs(60);
    while opened.load(Ordering::SeqCst) < ATTACK_CONNECTIONS {
        assert!(
            Instant::now() < deadline,
            "the attacker could not open its connections"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A new certificate: pebble must get through to the listener.
    let cfg = cfg
        .certificate(CertSpec::new("b", "pebble", &["b.example.com"]))
        .write();
    d.signal(nix::sys::signal::Signal::SIGHUP);
    let started = Instant::now();
    d.wait_for(
        "certificate b under the slowloris attack",
        Duration::from_secs(30),
        || issued(&cfg.output_dir("b")),
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let _ = tokio::time::timeout(Duration::from_secs(10), attack).await;
    eprintln!(
        "issued in {:?} while the attacker opened {} connections",
        started.elapsed(),
        opened.load(Ordering::SeqCst)
    );
}
