//! Proves the real-nginx test harness (`tests/support/nginx.rs`): certificate switch + reload, the
//! challenge proxy (Host preserved, nothing else forwarded), webroot mode, placeholder certs, probes, cleanup.
//!
//! Skips (with a message) when no nginx binary is installed.

mod support;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::nginx;
use support::nginx::{
    Nginx, NginxOpts, self_signed, serial_hex, served_certificate, wait_for_serial, write_pair,
};

macro_rules! require_nginx {
    () => {
        if !nginx::nginx_available() {
            eprintln!("skipping: no nginx at {}", nginx::nginx_bin().display());
            return;
        }
    };
}

/// Minimal blocking HTTP/1.1 GET; returns (status, body).
fn http_get(addr: SocketAddr, host: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read");
    let status: u16 = raw
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {raw:?}"));
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Store-like layout: `dir/{fullchain,privkey}.pem -> .live/…`, `.live -> .v-<n>`.
fn install_version(dir: &Path, n: u32, names: &[&str]) -> String {
    let (cert, key) = self_signed(names).expect("self-signed");
    let vdir = dir.join(format!(".v-{n}"));
    write_pair(&vdir, &cert, &key).expect("write pair");
    let tmp = dir.join(".live.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!(".v-{n}"), &tmp).expect("symlink");
    std::fs::rename(&tmp, dir.join(".live")).expect("atomic switch");
    for f in ["fullchain.pem", "privkey.pem"] {
        let link = dir.join(f);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!(".live/{f}"), &link).expect("symlink file");
        }
    }
    serial_hex(&cert)
}

#[test]
fn reload_after_live_symlink_switch_serves_new_certificate() {
    require_nginx!();
    let certs = tempfile::tempdir().expect("tempdir");
    let first = install_version(certs.path(), 1, &["one.test"]);
    let nginx = Nginx::start(NginxOpts {
        cert_dir: certs.path().to_path_buf(),
        server_names: vec!["one.test".into()],
        ..Default::default()
    })
    .expect("nginx starts");

    let served = served_certificate(nginx.https_addr(), "one.test").expect("probe");
    assert_eq!(serial_hex(&served), first);

    let second = install_version(certs.path(), 2, &["one.test"]);
    assert_ne!(first, second, "test needs two different serials");
    // Without a reload nginx keeps the certificate it loaded: the switch alone must not change anything.
    std::thread::sleep(Duration::from_millis(200));
    let still = served_certificate(nginx.https_addr(), "one.test").expect("probe");
    assert_eq!(
        serial_hex(&still),
        first,
        "nginx changed certificate without a reload"
    );

    let status = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(nginx.reload_command())
        .status()
        .expect("run reload command");
    assert!(
        status.success(),
        "reload command {:?} failed",
        nginx.reload_command()
    );
    nginx
        .wait_for_https_serial("one.test", &second, Duration::from_secs(10))
        .expect("new certificate after reload");

    // And a plain rewrite of the files + SIGHUP via the method works as well.
    let (cert3, key3) = self_signed(&["one.test"]).expect("self-signed");
    write_pair(&certs.path().join(".v-2"), &cert3, &key3).expect("rewrite");
    nginx.reload().expect("SIGHUP");
    nginx
        .wait_for_https_serial("one.test", &serial_hex(&cert3), Duration::from_secs(10))
        .expect("rewritten certificate after reload");
}

#[test]
fn wait_for_serial_says_what_was_served_instead() {
    require_nginx!();
    let certs = tempfile::tempdir().expect("tempdir");
    let nginx = Nginx::start(NginxOpts {
        cert_dir: certs.path().to_path_buf(),
        server_names: vec!["placeholder.test".into()],
        placeholder_cert: true,
        ..Default::default()
    })
    .expect("nginx starts with a placeholder");
    let served = served_certificate(nginx.https_addr(), "placeholder.test").expect("probe");
    let got = serial_hex(&served);
    // The placeholder was written into cert_dir and is what nginx serves.
    let on_disk = openssl::x509::X509::from_pem(
        &std::fs::read(certs.path().join("fullchain.pem")).expect("read"),
    )
    .expect("pem");
    assert_eq!(serial_hex(&on_disk), got);
    assert!(format!("{:?}", served.subject_name()).contains("placeholder.test"));

    // Leading zeros / lowercase do not matter.
    wait_for_serial(
        nginx.https_addr(),
        "placeholder.test",
        &format!("00{}", got.to_lowercase()),
        Duration::from_secs(2),
    )
    .expect("same serial, other spelling");

    let err = wait_for_serial(
        nginx.https_addr(),
        "placeholder.test",
        "DEADBEEF",
        Duration::from_millis(300),
    )
    .expect_err("wrong serial must time out");
    assert!(
        err.contains("DEADBEEF") && err.contains(&got),
        "unhelpful error: {err}"
    );

    let err = nginx
        .wait_for_https_serial("placeholder.test", "DEADBEEF", Duration::from_millis(100))
        .expect_err("wrong serial must time out");
    assert!(err.contains("error log tail"), "{err}");
}

#[test]
fn probe_sends_sni_and_https_server_answers() {
    require_nginx!();
    let certs = tempfile::tempdir().expect("tempdir");
    let nginx = Nginx::start(NginxOpts {
        cert_dir: certs.path().to_path_buf(),
        placeholder_cert: true,
        ..Default::default()
    })
    .expect("nginx starts");
    // Same client settings as served_certificate; the server echoes the SNI it received.
    let mut b = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls_client())
        .expect("builder");
    b.set_verify(openssl::ssl::SslVerifyMode::NONE);
    let tcp = TcpStream::connect(nginx.https_addr()).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut tls = b.build().connect("sni-check.test", tcp).expect("handshake");
    write!(
        tls,
        "GET / HTTP/1.1\r\nHost: sni-check.test\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut raw = String::new();
    let _ = tls.read_to_string(&mut raw);
    assert!(
        raw.contains("sni=sni-check.test host=sni-check.test"),
        "{raw}"
    );
    // The placeholder (no server_names) is for localhost.
    let served = served_certificate(nginx.https_addr(), "sni-check.test").expect("probe");
    assert!(format!("{:?}", served.subject_name()).contains("localhost"));
}

#[test]
fn rejected_reload_keeps_old_certificate_and_is_reported() {
    require_nginx!();
    let certs = tempfile::tempdir().expect("tempdir");
    let first = install_version(certs.path(), 1, &["r.test"]);
    let nginx = Nginx::start(NginxOpts {
        cert_dir: certs.path().to_path_buf(),
        ..Default::default()
    })
    .expect("nginx starts");
    // A torn pair (new cert, old key) like a non-atomic writer could leave behind.
    let (cert2, _) = self_signed(&["r.test"]).expect("cert");
    std::fs::write(
        certs.path().join(".v-1/fullchain.pem"),
        cert2.to_pem().expect("pem"),
    )
    .expect("write");
    nginx.reload().expect("SIGHUP");
    let err = nginx
        .wait_for_https_serial("r.test", &serial_hex(&cert2), Duration::from_secs(2))
        .expect_err("nginx must refuse a mismatched pair");
    assert!(err.contains(&first), "old certificate still served: {err}");
    assert!(
        err.contains("key values mismatch"),
        "reload failure quoted from the error log: {err}"
    );
}

#[test]
fn missing_certificate_without_placeholder_is_a_clear_error() {
    require_nginx!();
    let certs = tempfile::tempdir().expect("tempdir");
    let err = Nginx::start(NginxOpts {
        cert_dir: certs.path().to_path_buf(),
        ..Default::default()
    })
    .expect_err("no cert files, no placeholder");
    let msg = err.to_string();
    assert!(
        msg.contains("fullchain.pem") && msg.contains("placeholder_cert"),
        "{msg}"
    );
    assert!(
        !certs.path().join("fullchain.pem").exists(),
        "must not write files unasked"
    );
}

#[test]
fn broken_key_reports_nginx_error_log() {
    require_nginx!();
    let certs = tempfile::tempdir().expect("tempdir");
    let (cert, _) = self_signed(&["a.test"]).expect("cert");
    let (_, other_key) = self_signed(&["a.test"]).expect("key");
    write_pair(certs.path(), &cert, &other_key).expect("write mismatched pair");
    let err = Nginx::start(NginxOpts {
        cert_dir: certs.path().to_path_buf(),
        ..Default::default()
    })
    .expect_err("mismatched pair must not start");
    let msg = err.to_string();
    assert!(
        msg.contains("exited during startup") && msg.contains("key values mismatch"),
        "{msg}"
    );
}

#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(String, String)>>>);

#[test]
fn proxies_only_challenge_path_with_host_preserved() {
    require_nginx!();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let seen = Seen::default();
    let upstream = rt.block_on(async {
        let seen = seen.clone();
        let app = axum::Router::new().fallback(
            move |headers: axum::http::HeaderMap, uri: axum::http::Uri| {
                let seen = seen.clone();
                async move {
                    let host = headers
                        .get(axum::http::header::HOST)
                        .and_then(|h| h.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    seen.0
                        .lock()
                        .expect("lock")
                        .push((host, uri.path().to_string()));
                    format!("keyauth-for:{}", uri.path())
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        addr
    });

    let certs = tempfile::tempdir().expect("tempdir");
    let nginx = Nginx::start(NginxOpts {
        cert_dir: certs.path().to_path_buf(),
        acme_upstream: Some(upstream),
        server_names: vec!["www.example.test".into()],
        webroot: None,
        placeholder_cert: true,
        acme_balance: Vec::new(),
    })
    .expect("nginx starts");

    let (status, body) = http_get(
        nginx.http_addr(),
        "www.example.test",
        "/.well-known/acme-challenge/abc",
    );
    assert_eq!(status, 200, "body: {body}");
    assert_eq!(body, "keyauth-for:/.well-known/acme-challenge/abc");

    // A Host with a port (what Pebble's VA sends for non-80 ports) arrives verbatim.
    let (status, _) = http_get(
        nginx.http_addr(),
        "other.example.test:5002",
        "/.well-known/acme-challenge/xyz",
    );
    assert_eq!(status, 200);

    let (status, body) = http_get(nginx.http_addr(), "www.example.test", "/index.html");
    assert_eq!(status, 404, "body: {body}");
    let (status, _) = http_get(nginx.http_addr(), "www.example.test", "/.well-known/other");
    assert_eq!(status, 404);

    let seen = seen.0.lock().expect("lock").clone();
    assert_eq!(
        seen,
        vec![
            (
                "www.example.test".to_string(),
                "/.well-known/acme-challenge/abc".to_string()
            ),
            (
                "other.example.test:5002".to_string(),
                "/.well-known/acme-challenge/xyz".to_string()
            ),
        ],
        "upstream must see exactly the two challenge requests, with Host preserved"
    );
}

#[test]
fn webroot_mode_serves_challenge_files() {
    require_nginx!();
    let webroot = tempfile::tempdir().expect("tempdir");
    let dir = webroot.path().join(".well-known/acme-challenge");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("tok123"), "tok123.thumbprint").expect("write token");
    let certs = tempfile::tempdir().expect("tempdir");
    let nginx = Nginx::start(NginxOpts {
        cert_dir: certs.path().to_path_buf(),
        // Webroot wins over the upstream: this address must never be contacted.
        acme_upstream: Some("127.0.0.1:9".parse().expect("addr")),
        server_names: vec![],
        webroot: Some(webroot.path().to_path_buf()),
        placeholder_cert: true,
        acme_balance: Vec::new(),
    })
    .expect("nginx starts");
    let (status, body) = http_get(
        nginx.http_addr(),
        "x.test",
        "/.well-known/acme-challenge/tok123",
    );
    assert_eq!((status, body.as_str()), (200, "tok123.thumbprint"));
    let (status, _) = http_get(
        nginx.http_addr(),
        "x.test",
        "/.well-known/acme-challenge/missing",
    );
    assert_eq!(status, 404);
}

#[test]
fn drop_kills_master_and_workers() {
    require_nginx!();
    let certs = tempfile::tempdir().expect("tempdir");
    let nginx = Nginx::start(NginxOpts {
        cert_dir: certs.path().to_path_buf(),
        placeholder_cert: true,
        ..Default::default()
    })
    .expect("nginx starts");
    let pgid = libc::pid_t::try_from(nginx.pid()).expect("pid");
    let (http, https) = (nginx.http_port(), nginx.https_port());
    let prefix = nginx.prefix().to_path_buf();
    assert!(nginx.conf_path().starts_with(&prefix));
    assert!(nginx.error_log().starts_with(&prefix));
    // SAFETY: signal 0 only checks existence of our own process group.
    assert_eq!(
        unsafe { libc::kill(-pgid, 0) },
        0,
        "process group alive while running"
    );
    drop(nginx);
    // SAFETY: as above.
    assert_eq!(
        unsafe { libc::kill(-pgid, 0) },
        -1,
        "process group must be gone after drop"
    );
    assert!(TcpStream::connect(("127.0.0.1", http)).is_err());
    assert!(TcpStream::connect(("127.0.0.1", https)).is_err());
    assert!(!prefix.exists(), "prefix tempdir removed");
}
