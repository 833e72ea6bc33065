//! Deploy verification and notifications, with real parts: pebble issues, a real nginx serves
//! (or does not serve) the certificate, the notify command writes every event it gets, and an
//! in-test webhook receiver checks the JSON and headers of each event kind, each produced for
//! real (a CA that is down, pebble's domainBlocklist, an nginx serving another certificate,
//! `warn_before` longer than the lifetime).

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;

use support::certkeeper::{CertSpec, IssuerSpec, TestConfig, toml_str};
use support::nginx::{Nginx, NginxOpts, nginx_available};
use support::{Pebble, PebbleOpts, free_port};

/// The serial of the leaf in `dir/cert.pem`, as certkeeper prints it (hex).
fn serial_of(dir: &std::path::Path) -> String {
    let pem = std::fs::read(dir.join("cert.pem")).expect("cert.pem");
    let x = openssl::x509::X509::from_pem(&pem).unwrap();
    x.serial_number()
        .to_bn()
        .unwrap()
        .to_hex_str()
        .unwrap()
        .to_string()
}

/// The events the notify command appended to `path`, one JSON per line.
fn events(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn kinds(evs: &[Value]) -> Vec<String> {
    evs.iter()
        .map(|e| e["event"].as_str().unwrap_or("").to_string())
        .collect()
}

fn same_serial(a: &str, b: &str) -> bool {
    a.trim_start_matches('0')
        .eq_ignore_ascii_case(b.trim_start_matches('0'))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_does_nothing_is_caught_and_notified() {
    if !support::pebble::available() || !nginx_available() {
        eprintln!("pebble or nginx is not installed; skipping");
        return;
    }
    let ck_port = free_port();
    let base = TestConfig::new();
    let cert_dir = base.output_dir("www");
    std::fs::create_dir_all(&cert_dir).unwrap();
    // nginx serves the output directory (a placeholder until the first issuance) and proxies
    // HTTP-01 to certkeeper's listener.
    let nginx = Nginx::start(NginxOpts {
        cert_dir: cert_dir.clone(),
        acme_upstream: Some(([127, 0, 0, 1], ck_port).into()),
        server_names: vec!["www.example.com".into()],
        placeholder_cert: true,
        ..Default::default()
    })
    .expect("start nginx");
    let pebble = nginx.pebble().await;
    let events_file = base.dir().join("events.jsonl");
    let admin_port = free_port();
    let config = |reload: &str| {
        base.clone()
            .http01_listen(ck_port)
            .issuer(IssuerSpec::pebble("pebble", &pebble).solver_http01())
            .certificate(
                CertSpec::new("www", "pebble", &["www.example.com"])
                    .reload(reload)
                    .extra(&format!(
                        "verify_deploy = {{ connect = [{}], timeout = \"5s\" }}",
                        toml_str(&nginx.https_addr().to_string())
                    )),
            )
            .tail(&format!(
                "[notify]\ncommand = {}",
                toml_str(&format!("cat >> {}", events_file.display()))
            ))
            .admin_listen(admin_port)
            .write()
    };

    // 1. A working reload hook: issued, served, exit 0, nothing notified.
    let cfg = config(&nginx.reload_command());
    let out = cfg.run_cli(&["renew"]).await;
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(
        out.ok(),
        "renew failed:\n{text}\nnginx: {}",
        nginx.error_log_text()
    );
    assert!(out.stdout.contains("www: deployed"), "{}", out.stdout);
    assert!(
        events(&events_file).is_empty(),
        "{:?}",
        events(&events_file)
    );
    let first = serial_of(&cert_dir);

    // 2. A reload hook that does nothing: nginx keeps serving the old certificate. renew fails
    // naming the endpoint and the old serial, the command gets deploy_mismatch, status says so.
    let cfg = config("true");
    let out = cfg.run_cli(&["renew", "--force"]).await;
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(
        !out.ok(),
        "renew must fail when nginx serves the old certificate:\n{text}"
    );
    let second = serial_of(&cert_dir);
    assert!(!same_serial(&first, &second), "{text}");
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("NOT DEPLOYED"))
        .unwrap_or_else(|| panic!("no NOT DEPLOYED line:\n{text}"));
    let addr = nginx.https_addr().to_string();
    assert!(
        line.contains(&format!("{addr} serves serial"))
            && line
                .to_lowercase()
                .contains(&first.to_lowercase().trim_start_matches('0').to_string()),
        "names the endpoint and the old serial {first}: {line}"
    );
    assert!(
        out.stderr.contains("running the reload hooks once more"),
        "the reload runs once more before giving up:\n{}",
        out.stderr
    );
    let evs = events(&events_file);
    assert_eq!(kinds(&evs), ["deploy_mismatch"], "{evs:?}");
    let ev = &evs[0];
    assert_eq!(ev["certificate"], "www");
    assert!(same_serial(ev["serial"].as_str().unwrap(), &second), "{ev}");
    assert_eq!(ev["endpoints"][0]["endpoint"], addr.as_str());
    assert!(
        same_serial(ev["endpoints"][0]["serial"].as_str().unwrap(), &first),
        "{ev}"
    );
    assert_eq!(ev["endpoints"][0]["matches"], false);
    let status = cfg.run_cli(&["status"]).await;
    assert!(
        status.stdout.contains("installed, not deployed"),
        "{}",
        status.stdout
    );
    let json = cfg.run_cli(&["status", "--json"]).await;
    let v: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v[0]["deployed"], false, "{v}");
    let explain = cfg.run_cli(&["explain", "www"]).await;
    assert!(
        explain.stdout.contains("Deployed:    NO"),
        "{}",
        explain.stdout
    );

    // 3. The daemon checks at start-up: /metrics shows it, and the restart does not notify again.
    let mut daemon = cfg.spawn_daemon();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let (_, m) = daemon.admin_get("/metrics").await;
        if m.contains("certkeeper_certificate_deployed{name=\"www\"} 0") {
            break m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no deployed 0 in /metrics:\n{m}\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        metrics.contains("certkeeper_certificate_served_not_after_seconds{name=\"www\"}"),
        "{metrics}"
    );
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    let st = daemon.wait_exit(Duration::from_secs(30));
    assert!(st.success(), "{st}:\n{}", daemon.log());
    assert_eq!(
        kinds(&events(&events_file)),
        ["deploy_mismatch"],
        "{}",
        daemon.log()
    );

    // 4. The working hook again: exit 0, no new deploy_mismatch, and `recovered`.
    let cfg = config(&nginx.reload_command());
    let out = cfg.run_cli(&["renew", "--force"]).await;
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(out.ok(), "{text}");
    let evs = events(&events_file);
    assert_eq!(kinds(&evs), ["deploy_mismatch", "recovered"], "{evs:?}");
    assert_eq!(evs[1]["recovered_from"][0], "deploy_mismatch");
    let status = cfg.run_cli(&["status"]).await;
    assert!(
        status.stdout.contains("deployed:    yes"),
        "{}",
        status.stdout
    );
    let third = serial_of(&cert_dir);

    // 5. The daemon's own issuance (a revoked certificate is replaced at once) with the hook that
    // does nothing: its batch checks, reloads once more, and notifies deploy_mismatch again.
    let cfg = config("true");
    let out = cfg
        .run_cli(&["revoke", "www", "--reason", "superseded"])
        .await;
    assert!(out.ok(), "{}{}", out.stdout, out.stderr);
    let mut daemon = cfg.spawn_daemon();
    daemon
        .wait_for(
            "a deploy_mismatch from the daemon",
            Duration::from_secs(90),
            || events(&events_file).len() >= 3,
        )
        .await;
    let evs = events(&events_file);
    assert_eq!(
        kinds(&evs),
        ["deploy_mismatch", "recovered", "deploy_mismatch"],
        "{}",
        daemon.log()
    );
    let fourth = serial_of(&cert_dir);
    assert!(!same_serial(&third, &fourth));
    assert!(
        same_serial(evs[2]["serial"].as_str().unwrap(), &fourth),
        "{}",
        evs[2]
    );
    assert!(
        same_serial(evs[2]["endpoints"][0]["serial"].as_str().unwrap(), &third),
        "nginx still serves the revoked one: {}",
        evs[2]
    );
    let (_, m) = daemon.admin_get("/metrics").await;
    assert!(
        m.contains("certkeeper_certificate_deployed{name=\"www\"} 0"),
        "{m}"
    );
    assert!(
        daemon.log().contains("running the reload hooks once more"),
        "{}",
        daemon.log()
    );
    daemon.stop();
    drop(pebble);
}

/// What the webhook receiver saw.
#[derive(Clone, Default)]
struct Receiver {
    seen: Arc<Mutex<Vec<(HeaderMap, Value)>>>,
}

/// The first request is answered 503 (the delivery must retry), every other 200.
async fn hook(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut seen = r.seen.lock().unwrap();
    seen.push((headers, v));
    if seen.len() == 1 {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

impl Receiver {
    async fn start() -> (Self, String) {
        let r = Receiver::default();
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (r, url)
    }

    /// The events delivered (a retried delivery counted once).
    fn events(&self) -> Vec<Value> {
        let seen = self.seen.lock().unwrap();
        let mut out: Vec<Value> = Vec::new();
        for (headers, v) in seen.iter() {
            assert_eq!(
                headers.get("authorization").and_then(|h| h.to_str().ok()),
                Some("Bearer hook-s3cret"),
                "the header_file's header is sent"
            );
            assert_eq!(
                headers.get("content-type").and_then(|h| h.to_str().ok()),
                Some("application/json")
            );
            if out.last() != Some(v) {
                out.push(v.clone());
            }
        }
        out
    }
}

/// Every event carries these, whatever its kind.
fn check_common(ev: &Value, kind: &str, cert: &str) {
    assert_eq!(ev["event"], kind, "{ev}");
    assert_eq!(ev["certificate"], cert, "{ev}");
    assert!(
        ev["domains"].as_array().is_some_and(|d| !d.is_empty()),
        "{ev}"
    );
    assert!(ev["message"].as_str().is_some_and(|m| m.len() > 20), "{ev}");
    assert!(ev["at"].as_str().is_some(), "{ev}");
    assert!(ev["host"].is_string(), "{ev}");
    assert_eq!(ev["reminder"], false, "{ev}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_kind_reaches_the_webhook_once() {
    if !support::pebble::available() || !nginx_available() {
        eprintln!("pebble or nginx is not installed; skipping");
        return;
    }
    let http_port = free_port();
    let pebble = Pebble::start(PebbleOpts {
        http_port,
        domain_blocklist: vec!["blocked.example.com".into()],
        ..Default::default()
    })
    .await;
    // An nginx that serves a placeholder of its own: never the certificate certkeeper installs.
    let other = tempfile::tempdir().unwrap();
    let nginx = Nginx::start(NginxOpts {
        cert_dir: other.path().to_path_buf(),
        server_names: vec!["www.example.com".into()],
        placeholder_cert: true,
        ..Default::default()
    })
    .expect("start nginx");
    let (receiver, url) = Receiver::start().await;
    let base = TestConfig::new();
    let header_file = base.dir().join("hook-headers");
    std::fs::write(
        &header_file,
        "# sent with every request\nAuthorization: Bearer hook-s3cret\n",
    )
    .unwrap();
    let down_port = free_port();
    let config = |www_issuer: &str, www_extra: &str, notify_extra: &str| {
        let mut www = CertSpec::new("www", www_issuer, &["www.example.com"]);
        if !www_extra.is_empty() {
            www = www.extra(www_extra);
        }
        base.clone()
            .http01_listen(http_port)
            .issuer(IssuerSpec::pebble("ca", &pebble).solver_http01())
            .issuer(
                IssuerSpec::new("down", &format!("https://127.0.0.1:{down_port}/dir"))
                    .solver_http01(),
            )
            .certificate(www)
            .certificate(CertSpec::new("blocked", "ca", &["blocked.example.com"]))
            .tail(&format!(
                "[notify]\nwebhook = {{ url = {}, header_file = {} }}\n{notify_extra}",
                toml_str(&url),
                toml_str(&header_file.display().to_string())
            ))
            .write()
    };

    // 1. The CA of www is down (renewal_failed), pebble refuses blocked.example.com (paused).
    let cfg = config("down", "", "");
    let out = cfg.run_cli(&["renew"]).await;
    assert!(!out.ok(), "{}{}", out.stdout, out.stderr);
    let evs = receiver.events();
    let mut got = kinds(&evs);
    got.sort();
    assert_eq!(got, ["paused", "renewal_failed"], "{evs:?}\n{}", out.stderr);
    assert!(
        receiver.seen.lock().unwrap().len() == 3,
        "the first delivery was answered 503 and retried once"
    );
    let failed = evs.iter().find(|e| e["event"] == "renewal_failed").unwrap();
    check_common(failed, "renewal_failed", "www");
    let cause = failed["cause"].as_str().unwrap();
    assert!(
        cause.contains(&format!("127.0.0.1:{down_port}")),
        "the cause in plain words: {failed}"
    );
    let next: jiff::Timestamp = failed["next_try"].as_str().unwrap().parse().unwrap();
    assert!(
        next > jiff::Timestamp::now() - jiff::SignedDuration::from_mins(5),
        "{failed}"
    );
    let paused = evs.iter().find(|e| e["event"] == "paused").unwrap();
    check_common(paused, "paused", "blocked");
    assert!(
        paused["cause"]
            .as_str()
            .unwrap()
            .contains("rejectedIdentifier")
            || paused["cause"]
                .as_str()
                .unwrap()
                .to_lowercase()
                .contains("refuse"),
        "{paused}"
    );

    // The same failures again: nothing new (one event per state change).
    let out = cfg.run_cli(&["renew", "--force"]).await;
    assert!(!out.ok());
    assert_eq!(receiver.events().len(), 2, "{:?}", receiver.events());

    // 2. www's issuer fixed: issued, `recovered` names what ended.
    let cfg = config("ca", "", "");
    let out = cfg.run_cli(&["renew", "--force", "www"]).await;
    assert!(out.ok(), "{}{}", out.stdout, out.stderr);
    let evs = receiver.events();
    assert_eq!(evs.len(), 3, "{evs:?}");
    check_common(&evs[2], "recovered", "www");
    assert_eq!(
        evs[2]["recovered_from"],
        serde_json::json!(["renewal_failed"])
    );

    // 3. verify_deploy against an nginx serving something else: deploy_mismatch, exit non-zero.
    let addr = nginx.https_addr().to_string();
    let vd = format!(
        "verify_deploy = {{ connect = [{}], timeout = \"2s\" }}",
        toml_str(&addr)
    );
    let cfg = config("ca", &vd, "");
    let out = cfg.run_cli(&["renew", "--force", "www"]).await;
    assert!(!out.ok(), "{}{}", out.stdout, out.stderr);
    let evs = receiver.events();
    assert_eq!(evs.len(), 4, "{evs:?}");
    let mismatch = &evs[3];
    check_common(mismatch, "deploy_mismatch", "www");
    assert_eq!(
        mismatch["endpoints"][0]["endpoint"],
        addr.as_str(),
        "{mismatch}"
    );
    assert!(mismatch["endpoints"][0]["serial"].is_string(), "{mismatch}");
    assert!(
        mismatch["endpoints"][0]["not_after"].is_string(),
        "{mismatch}"
    );
    assert!(
        same_serial(
            mismatch["serial"].as_str().unwrap(),
            &serial_of(&cfg.output_dir("www"))
        ),
        "{mismatch}"
    );

    // 4. warn_before longer than the lifetime: expiring, once.
    let cfg = config("ca", &vd, "warn_before = \"20000d\"");
    let out = cfg.run_cli(&["renew", "www"]).await;
    assert!(out.stdout.contains("not due"), "{}", out.stdout);
    let evs = receiver.events();
    assert_eq!(evs.len(), 5, "{evs:?}");
    let expiring = &evs[4];
    check_common(expiring, "expiring", "www");
    assert!(expiring["not_after"].is_string(), "{expiring}");
    assert!(expiring["next_try"].is_string(), "{expiring}");
    let _ = cfg.run_cli(&["renew", "www"]).await;
    assert_eq!(receiver.events().len(), 5, "no reminder within a day");
    drop(pebble);
}
