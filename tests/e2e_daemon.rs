//! The real `certkeeper run` binary against pebble: issues on start, picks up config edits (saved by
//! rename, as editors do) and SIGHUP without a restart, keeps running on an invalid edit, renews
//! inside an ARI window (served by an in-test proxy in front of pebble), serves /healthz and
//! /metrics, and exits 0 on SIGTERM.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::certkeeper::{
    CLI_TIMEOUT, Daemon, daemon_command_at, run_command_sync, std_command_at,
};
use support::{Pebble, PebbleOpts, free_port};

/// The serial (hex) of the certificate live in `dir`, if any.
fn serial(dir: &Path) -> Option<String> {
    let pem = std::fs::read(dir.join("cert.pem")).ok()?;
    let x = openssl::x509::X509::from_pem(&pem).ok()?;
    let bn = x.serial_number().to_bn().ok()?;
    Some(bn.to_hex_str().ok()?.to_string().to_ascii_lowercase())
}

fn cert_block(name: &str, domain: &str, work: &Path) -> String {
    format!(
        "\n[certificate.{name}]\nissuer = \"pebble\"\ndomains = [\"{domain}\"]\noutput = {{ dir = \"{}\" }}\n",
        work.join("tls").join(name).display()
    )
}

fn base_config(work: &Path, directory: &str, http_port: u16, admin: Option<u16>) -> String {
    let admin = admin
        .map(|p| format!("[admin]\nlisten = \"127.0.0.1:{p}\"\n"))
        .unwrap_or_default();
    format!(
        r#"state_dir = "{w}/state"

[http01]
listen = ["127.0.0.1:{http_port}"]

{admin}
[issuer.pebble]
directory = "{directory}"
ca_bundle = "{w}/pebble-ca.pem"
contact = ["mailto:admin@example.com"]

[[issuer.pebble.solver]]
http01 = {{ self_check = false }}
"#,
        w = work.display()
    )
}

/// Save like an editor does: write a temporary file next to it, then rename it over the original.
fn save_by_rename(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn status_json(config: &Path) -> serde_json::Value {
    let args = ["status", "--json"];
    let out = run_command_sync(std_command_at(config, &args), &args, CLI_TIMEOUT);
    assert!(out.ok(), "status failed: {}", out.stderr);
    serde_json::from_str(&out.stdout).unwrap()
}

const ISSUE_TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_issues_and_follows_config_edits_sighup_and_sigterm() {
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
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    std::fs::write(w.join("pebble-ca.pem"), pebble.ca_pem()).unwrap();
    let admin_port = free_port();
    let cfg_path = w.join("certkeeper.toml");
    let mut text = base_config(w, &pebble.directory_url(), http_port, Some(admin_port));
    std::fs::create_dir(w.join("conf.d")).unwrap();
    text = format!("include = [\"{}/conf.d/*.toml\"]\n{text}", w.display());
    text.push_str(&cert_block("a", "a.example.com", w));
    std::fs::write(&cfg_path, &text).unwrap();

    let mut d = Daemon::start(daemon_command_at(&cfg_path), w.join("certkeeper.log"));

    // 1. issues on start
    let a = w.join("tls/a");
    d.wait_for_log("certificate a", ISSUE_TIMEOUT, |_| serial(&a).is_some())
        .await;

    // admin listener: healthz answers, metrics show the certificate's expiry and the success
    let http = reqwest::Client::new();
    let health = http
        .get(format!("http://127.0.0.1:{admin_port}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = http
            .get(format!("http://127.0.0.1:{admin_port}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.contains("certkeeper_renewals_total{name=\"a\",result=\"success\"} 1")
            && metrics.contains("certkeeper_certificate_not_after_seconds{name=\"a\"} ")
            && metrics.contains("certkeeper_last_error{name=\"a\",error=\"\"} 0")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed a:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // 2. a certificate added by an editor-style save is issued without a restart
    text.push_str(&cert_block("b", "b.example.com", w));
    save_by_rename(&cfg_path, &text);
    let b = w.join("tls/b");
    d.wait_for_log("certificate b after the edit", ISSUE_TIMEOUT, |_| {
        serial(&b).is_some()
    })
    .await;

    // 3. an invalid edit is logged with file:line and the old config keeps running
    let mut bad = text.clone();
    bad.push_str("\n[certificate.c]\nissuer = \"pebble\"\ndomains = 42\n");
    let bad_line = bad.lines().count();
    save_by_rename(&cfg_path, &bad);
    let needle = format!("certkeeper.toml:{bad_line}");
    d.wait_for_log(
        "the invalid config to be reported",
        Duration::from_secs(60),
        |log| {
            log.contains("the new config is invalid, keeping the running one")
                && log.contains(&needle)
        },
    )
    .await;
    assert!(serial(&a).is_some() && serial(&b).is_some());

    // ... then a valid edit works again
    text.push_str(&cert_block("c", "c.example.com", w));
    save_by_rename(&cfg_path, &text);
    let c = w.join("tls/c");
    d.wait_for_log("certificate c after the fixed edit", ISSUE_TIMEOUT, |_| {
        serial(&c).is_some()
    })
    .await;

    // 4. SIGHUP reloads
    text.push_str(&cert_block("e", "e.example.com", w));
    std::fs::write(&cfg_path, &text).unwrap();
    d.signal(nix::sys::signal::Signal::SIGHUP);
    d.wait_for_log("the SIGHUP reload", Duration::from_secs(60), |log| {
        log.contains("SIGHUP: config reloaded")
    })
    .await;
    let e = w.join("tls/e");
    d.wait_for_log("certificate e after SIGHUP", ISSUE_TIMEOUT, |_| {
        serial(&e).is_some()
    })
    .await;

    // 5. a new file in an include directory is picked up too
    save_by_rename(
        &w.join("conf.d/f.toml"),
        &cert_block("f", "f.example.com", w),
    );
    let f = w.join("tls/f");
    d.wait_for_log("certificate f from conf.d", ISSUE_TIMEOUT, |_| {
        serial(&f).is_some()
    })
    .await;

    // certificates issued before stay as they were (nothing was due)
    let serial_a = serial(&a).unwrap();

    // 6. status works while the daemon runs
    let st = status_json(&cfg_path);
    let list = st.as_array().unwrap();
    assert_eq!(list.len(), 5, "{st:#}");
    for cert in list {
        assert!(cert["serial"].is_string(), "{cert:#}");
        assert!(cert["next_renewal"].is_string(), "{cert:#}");
        assert_eq!(cert["issuer"], "pebble", "{cert:#}");
        assert_eq!(cert["failures"], 0, "{cert:#}");
    }
    assert_eq!(list[0]["name"], "a");
    assert_eq!(
        list[0]["serial"].as_str().unwrap().trim_start_matches('0'),
        serial_a.trim_start_matches('0')
    );

    let args = ["status", "a"];
    let text_out = run_command_sync(std_command_at(&cfg_path, &args), &args, CLI_TIMEOUT);
    let shown = &text_out.stdout;
    assert!(text_out.ok(), "{shown}");
    assert!(shown.starts_with("a: a.example.com\n"), "{shown}");
    assert!(shown.contains("installed:   serial "), "{shown}");
    assert!(shown.contains("before expiry"), "{shown}");
    assert!(!shown.contains("b.example.com"), "{shown}");

    // 7. SIGTERM: clean exit 0
    d.signal(nix::sys::signal::Signal::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "exit status {status}; log:\n{}", d.log());
    assert!(d.log().contains("stopped"));
    assert_eq!(serial(&a).unwrap(), serial_a);
    drop(pebble);
}

/// What the ARI proxy saw.
#[derive(Default)]
struct AriSeen {
    /// CertIDs asked for, in order.
    ids: Vec<String>,
    /// CertIDs already answered with a window in the past.
    past_given: Vec<String>,
}

/// An HTTP front for pebble's directory that adds `renewalInfo` (pebble 2.4.0 has no ARI): the
/// first certificate asked about gets a window in the past (renew now), any later one a window a
/// month out. Everything else in the directory still points at pebble itself.
async fn ari_proxy(pebble_dir: String, http: reqwest::Client) -> (u16, Arc<Mutex<AriSeen>>) {
    use axum::extract::{Path as AxPath, State};
    use axum::routing::get;
    let seen = Arc::new(Mutex::new(AriSeen::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    #[derive(Clone)]
    struct St {
        pebble_dir: String,
        http: reqwest::Client,
        seen: Arc<Mutex<AriSeen>>,
        base: String,
    }
    let st = St {
        pebble_dir,
        http,
        seen: seen.clone(),
        base: format!("http://127.0.0.1:{port}"),
    };
    async fn dir(State(st): State<St>) -> ([(&'static str, &'static str); 1], String) {
        let mut d: serde_json::Value = st
            .http
            .get(&st.pebble_dir)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        d["renewalInfo"] = serde_json::Value::String(format!("{}/ari", st.base));
        ([("content-type", "application/json")], d.to_string())
    }
    async fn ari(
        State(st): State<St>,
        AxPath(id): AxPath<String>,
    ) -> ([(&'static str, &'static str); 1], String) {
        let now = jiff::Timestamp::now();
        let mut seen = st.seen.lock().unwrap();
        seen.ids.push(id.clone());
        let past = seen.past_given.is_empty() || seen.past_given.contains(&id);
        let (start, end) = if past {
            seen.past_given.push(id);
            (
                now - jiff::SignedDuration::from_hours(2),
                now - jiff::SignedDuration::from_hours(1),
            )
        } else {
            (
                now + jiff::SignedDuration::from_hours(24 * 30),
                now + jiff::SignedDuration::from_hours(24 * 31),
            )
        };
        let body = serde_json::json!({
            "suggestedWindow": { "start": start.to_string(), "end": end.to_string() }
        });
        ([("content-type", "application/json")], body.to_string())
    }
    let app = axum::Router::new()
        .route("/dir", get(dir))
        .route("/ari/{id}", get(ari))
        .with_state(st);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (port, seen)
}

fn cert_id_of(dir: &Path) -> String {
    let pem = std::fs::read(dir.join("cert.pem")).unwrap();
    let x = openssl::x509::X509::from_pem(&pem).unwrap();
    certkeeper::acme::cert_id(
        &certkeeper::acme::Certificate::from_der(x.to_der().unwrap()).unwrap(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_renews_inside_the_ari_window() {
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
    let (proxy_port, seen) = ari_proxy(pebble.directory_url(), pebble.http_client()).await;
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    std::fs::write(w.join("pebble-ca.pem"), pebble.ca_pem()).unwrap();
    let cfg_path = w.join("certkeeper.toml");
    let mut text = base_config(
        w,
        &format!("http://127.0.0.1:{proxy_port}/dir"),
        http_port,
        None,
    );
    text.push_str(&cert_block("www", "www.example.com", w));
    std::fs::write(&cfg_path, &text).unwrap();

    let mut d = Daemon::start(daemon_command_at(&cfg_path), w.join("certkeeper.log"));
    let dir = w.join("tls/www");
    d.wait_for_log("the first certificate", ISSUE_TIMEOUT, |_| {
        serial(&dir).is_some()
    })
    .await;
    // the daemon asks about the first certificate, whose window is in the past, and renews it
    let deadline = Instant::now() + ISSUE_TIMEOUT;
    let first_id = loop {
        d.assert_running();
        if let Some(id) = seen.lock().unwrap().ids.first().cloned() {
            break id;
        }
        assert!(
            Instant::now() < deadline,
            "no ARI request; log:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    d.wait_for_log("a renewal inside the ARI window", ISSUE_TIMEOUT, |_| {
        serial(&dir).is_some() && cert_id_of(&dir) != first_id
    })
    .await;
    let second_id = cert_id_of(&dir);
    // the renewal order named the certificate it replaces (RFC 9773 §5)
    assert!(
        d.log().contains(&format!("replaces=\"{first_id}\"")),
        "{}",
        d.log()
    );
    // the daemon then asks about the new certificate, which gets a window a month out
    let deadline = Instant::now() + Duration::from_secs(60);
    while !seen.lock().unwrap().ids.contains(&second_id) {
        d.assert_running();
        assert!(
            Instant::now() < deadline,
            "no ARI request for the renewed certificate; log:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ids = seen.lock().unwrap().ids.clone();
    let st = status_json(&cfg_path);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut st = st;
    while st[0]["ari_window"].is_null() {
        assert!(Instant::now() < deadline, "no ARI window in status: {st:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        st = status_json(&cfg_path);
    }
    let window_start: jiff::Timestamp = st[0]["ari_window"][0].as_str().unwrap().parse().unwrap();
    assert!(window_start > jiff::Timestamp::now(), "{st:#}");
    let next: jiff::Timestamp = st[0]["next_renewal"].as_str().unwrap().parse().unwrap();
    assert!(next >= window_start, "{st:#}");
    assert!(
        st[0]["next_renewal_reason"]
            .as_str()
            .unwrap()
            .contains("ARI window"),
        "{st:#}"
    );
    // and it does not renew again (nor reload: reading the config is not a change)
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(cert_id_of(&dir), second_id);
    let counts: HashMap<&String, usize> = ids.iter().fold(HashMap::new(), |mut m, id| {
        *m.entry(id).or_default() += 1;
        m
    });
    assert!(
        counts.values().all(|&n| n <= 2),
        "ARI asked too often: {ids:?}"
    );
    assert_eq!(
        d.log().matches(" certificate installed cert=www").count(),
        2,
        "expected the first issuance and one ARI renewal; log:\n{}",
        d.log()
    );
    assert!(!d.log().contains("config reloaded"), "{}", d.log());
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(60)).success());
}

/// Receive sd_notify datagrams until one contains `want` (bounded); returns all received.
fn notify_until(
    sock: &std::os::unix::net::UnixDatagram,
    want: &str,
    timeout: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            let done = msg.lines().any(|l| l == want);
            got.push(msg);
            if done {
                return got;
            }
        }
    }
    panic!("no {want} within {timeout:?}; got {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_speaks_sd_notify_with_a_steady_watchdog() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let sock_path = w.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    std::fs::write(w.join("pebble-ca.pem"), "").unwrap();
    // an unreachable CA: the certificate fails and backs off, the daemon keeps running
    let admin_port = free_port();
    let mut text = base_config(w, "http://127.0.0.1:1/dir", free_port(), Some(admin_port));
    text = text.replace(
        &format!("ca_bundle = \"{}/pebble-ca.pem\"\n", w.display()),
        "",
    );
    text.push_str(&cert_block("www", "www.example.com", w));
    let cfg_path = w.join("certkeeper.toml");
    std::fs::write(&cfg_path, &text).unwrap();
    let mut cmd = daemon_command_at(&cfg_path);
    cmd.env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000");
    let mut d = Daemon::start(cmd, w.join("certkeeper.log"));
    notify_until(&sock, "READY=1", Duration::from_secs(30));
    // the watchdog keeps ticking (every 200 ms) while /healthz wakes the loop every 50 ms: a
    // watchdog sleep recreated on every loop iteration would never fire
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hammer = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let mut ok = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", admin_port)) {
                    use std::io::{Read, Write};
                    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                    let _ = s.write_all(b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n");
                    let mut r = String::new();
                    let _ = s.read_to_string(&mut r);
                    if r.starts_with("HTTP/1.0 200") || r.starts_with("HTTP/1.1 200") {
                        ok += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            ok
        }
    });
    let started = Instant::now();
    let mut pings = 0;
    while pings < 5 {
        let got = notify_until(&sock, "WATCHDOG=1", Duration::from_secs(10));
        pings += got
            .iter()
            .filter(|m| m.lines().any(|l| l == "WATCHDOG=1"))
            .count();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let healthy = hammer.join().unwrap();
    assert!(healthy >= 3, "only {healthy} /healthz answers were 200");
    assert!(started.elapsed() < Duration::from_secs(30));
    d.signal(nix::sys::signal::Signal::SIGHUP);
    notify_until(&sock, "RELOADING=1", Duration::from_secs(30));
    notify_until(&sock, "READY=1", Duration::from_secs(30));
    d.signal(nix::sys::signal::Signal::SIGTERM);
    notify_until(&sock, "STOPPING=1", Duration::from_secs(30));
    let st = d.wait_exit(Duration::from_secs(60));
    assert!(st.success(), "{st}; log:\n{}", d.log());
    // the failure was recorded for `certkeeper status`
    let status = status_json(&cfg_path);
    assert!(status[0]["failures"].as_u64().unwrap() >= 1, "{status:#}");
    assert!(status[0]["last_error"].is_string(), "{status:#}");
}
