//! certkeeper next to a real nginx: nginx proxies `/.well-known/acme-challenge/` to certkeeper's
//! HTTP-01 listener (pebble validates against nginx's port), `certkeeper run` issues and its reload
//! hook (`kill -HUP <nginx>`) makes nginx serve the new certificate; a forced renewal
//! (`certkeeper renew --force`, daemon stopped) runs the hook again and nginx serves the NEW serial.
//! Also `systemd-analyze verify` on the shipped unit file, when systemd-analyze is installed.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::certkeeper::{Daemon, command_at, daemon_command_at, run_command};
use support::free_port;
use support::nginx::{Nginx, NginxOpts, nginx_available, wait_for_serial_async};

/// The serial (hex) of the certificate live in `dir`, if any.
fn serial(dir: &Path) -> Option<String> {
    let pem = std::fs::read(dir.join("cert.pem")).ok()?;
    let x = openssl::x509::X509::from_pem(&pem).ok()?;
    let bn = x.serial_number().to_bn().ok()?;
    Some(bn.to_hex_str().ok()?.to_string())
}

/// `certkeeper run`, killed by its own PID on drop when still running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_serves_what_certkeeper_issues_and_renews() {
    if !support::pebble::available() || !nginx_available() {
        eprintln!("pebble or nginx is not installed; skipping");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let cert_dir = w.join("tls/www");
    std::fs::create_dir_all(&cert_dir).unwrap();
    let ck_port = free_port();
    // nginx first (with a placeholder pair, as on a fresh host), so pebble can validate on its port
    let nginx = Nginx::start(NginxOpts {
        cert_dir: cert_dir.clone(),
        acme_upstream: Some(([127, 0, 0, 1], ck_port).into()),
        server_names: vec!["www.example.com".into()],
        placeholder_cert: true,
        ..Default::default()
    })
    .expect("start nginx");
    let pebble = nginx.pebble().await;
    std::fs::write(w.join("pebble-ca.pem"), pebble.ca_pem()).unwrap();
    let cfg = w.join("certkeeper.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"state_dir = "{w}/state"

[http01]
listen = ["127.0.0.1:{ck_port}"]

[issuer.pebble]
directory = "{dir}"
ca_bundle = "{w}/pebble-ca.pem"

[[issuer.pebble.solver]]
http01 = {{ self_check = false }}

[certificate.www]
issuer = "pebble"
domains = ["www.example.com"]
output = {{ dir = "{cd}" }}
reload = ["{hook}"]
"#,
            w = w.display(),
            dir = pebble.directory_url(),
            cd = cert_dir.display(),
            hook = nginx.reload_command(),
        ),
    )
    .unwrap();

    // 1. the daemon issues; its hook reloads nginx, which then serves the new certificate
    let mut daemon = Daemon::start(daemon_command_at(&cfg), w.join("certkeeper.log"));
    daemon
        .wait_for("a certificate issued", Duration::from_secs(120), || {
            serial(&cert_dir).is_some()
        })
        .await;
    let first = serial(&cert_dir).unwrap();
    wait_for_serial_async(
        nginx.https_addr(),
        "www.example.com",
        &first,
        Duration::from_secs(60),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\nnginx: {}", nginx.error_log_text()));

    // 2. stop the daemon cleanly, force a renewal: the hook runs and nginx serves the new serial
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status}:\n{}", daemon.log());

    let args = ["renew", "--force"];
    let renew = run_command(command_at(&cfg, &args), &args).await;
    let text = format!("{}{}", renew.stdout, renew.stderr);
    assert!(renew.ok(), "renew --force failed:\n{text}");
    let second = serial(&cert_dir).unwrap();
    assert_ne!(first, second, "{text}");
    assert!(text.contains("hook:"), "no hook ran:\n{text}");
    wait_for_serial_async(
        nginx.https_addr(),
        "www.example.com",
        &second,
        Duration::from_secs(60),
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nrenew output:\n{text}\nnginx: {}",
            nginx.error_log_text()
        )
    });
    drop(pebble);
}

#[test]
fn systemd_unit_verifies() {
    let Ok(which) = Command::new("sh")
        .args(["-c", "command -v systemd-analyze"])
        .output()
    else {
        return;
    };
    if !which.status.success() {
        eprintln!("systemd-analyze is not installed; skipping");
        return;
    }
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/certkeeper.service"
    ))
    .unwrap();
    assert!(unit.contains("Type=notify"));
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    // systemd-analyze checks that ExecStart exists: point it at the binary under test
    let unit = unit.replace("/usr/bin/certkeeper", support::certkeeper::CERTKEEPER_BIN);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("certkeeper.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
