//! Self-tests of the shared test harness (`tests/support`): the fault switches the fault tests rely
//! on do what they claim.

mod support;

use std::time::Duration;

use certkeeper::challenge::dns01::zone;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use support::certkeeper::{CertSpec, IssuerSpec, TestConfig};
use support::dns::bind::Bind;
use support::proxy::{Mode, Proxy};
use support::{Pebble, PebbleOpts, free_port};

/// A client trusting only `ca_pem`, with a short timeout.
fn client(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_merge([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap()
}

/// A pebble validating HTTP-01 on `http_port`; `None` (test skipped) when it is not installed.
async fn pebble_on(http_port: u16) -> Option<Pebble> {
    if !support::pebble::available() {
        eprintln!("pebble is not installed; skipping");
        return None;
    }
    Some(
        Pebble::start(PebbleOpts {
            http_port,
            ..Default::default()
        })
        .await,
    )
}

async fn pebble() -> Option<Pebble> {
    pebble_on(free_port()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pebble_pause_stops_answers_until_resume() {
    let Some(pebble) = pebble().await else {
        return;
    };
    let http = client(pebble.ca_pem());
    let dir = pebble.directory_url();
    assert!(http.get(&dir).send().await.unwrap().status().is_success());

    pebble.pause();
    pebble.wait_paused();
    let err = http
        .get(&dir)
        .send()
        .await
        .expect_err("a paused pebble answered");
    assert!(err.is_timeout(), "expected a timeout, got {err:?}");

    pebble.resume();
    assert!(http.get(&dir).send().await.unwrap().status().is_success());

    // Dropping a paused pebble resumes and kills it without hanging.
    pebble.pause();
    pebble.wait_paused();
    drop(pebble);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_untrusted_tls_fails_the_handshake() {
    let Some(pebble) = pebble().await else {
        return;
    };
    let proxy = Proxy::for_pebble(&pebble).await;
    let http = client(&std::fs::read_to_string(&proxy.ca_file).unwrap());
    let dir = proxy.directory_url();
    assert_eq!(http.get(&dir).send().await.unwrap().status(), 200);

    proxy.set(Mode::UntrustedTls);
    // A fresh client: the switch applies to new connections, not to a pooled one.
    let http = client(&std::fs::read_to_string(&proxy.ca_file).unwrap());
    let err = http
        .get(&dir)
        .send()
        .await
        .expect_err("a certificate from an untrusted CA was accepted");
    assert!(
        err.is_connect(),
        "expected a TLS (connect) error, got {err:?}"
    );
    assert!(proxy.faulted() >= 1);

    // The same request succeeds for a client trusting anything: only trust is broken.
    let lax = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    assert_eq!(lax.get(&dir).send().await.unwrap().status(), 200);

    proxy.set(Mode::Pass);
    let http = client(&std::fs::read_to_string(&proxy.ca_file).unwrap());
    assert_eq!(http.get(&dir).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_rate_limited_answers_new_order_with_429() {
    let Some(pebble) = pebble().await else {
        return;
    };
    let proxy = Proxy::for_pebble(&pebble).await;
    let http = client(&std::fs::read_to_string(&proxy.ca_file).unwrap());
    proxy.set(Mode::RateLimited {
        retry_after_secs: 7,
    });

    let r = http
        .post(proxy.directory_url().replace("/dir", "/order-plz"))
        .header("content-type", "application/jose+json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let h = r.headers();
    assert_eq!(h["retry-after"], "7");
    assert_eq!(h["content-type"], "application/problem+json");
    let problem: serde_json::Value = r.json().await.unwrap();
    assert_eq!(problem["type"], "urn:ietf:params:acme:error:rateLimited");
    assert_eq!(problem["status"], 429);
    assert_eq!(proxy.faulted(), 1);

    // Everything else passes: the directory, and POSTs to other paths reach pebble.
    let d: serde_json::Value = http
        .get(proxy.directory_url())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        d["newOrder"].as_str().unwrap().ends_with("/order-plz"),
        "{d}"
    );
    let r = http
        .post(proxy.directory_url().replace("/dir", "/sign-me-up"))
        .header("content-type", "application/jose+json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), 429);
    assert_eq!(proxy.faulted(), 1);
}

async fn soa_answers(bind: &Bind) -> bool {
    let q = zone::query(bind.addr, "example.test.", RecordType::SOA, false);
    matches!(
        tokio::time::timeout(Duration::from_secs(10), q).await,
        Ok(Ok(resp)) if resp.metadata.response_code == ResponseCode::NoError
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_stop_and_start_again_on_the_same_port() {
    let Some(mut bind) = Bind::start().await else {
        return;
    };
    let addr = bind.addr;
    assert!(soa_answers(&bind).await, "{}", bind.log());

    bind.stop();
    assert!(!bind.is_running());
    assert!(!soa_answers(&bind).await, "a stopped named answered");

    bind.start_again().await;
    assert!(bind.is_running());
    assert_eq!(bind.addr, addr);
    assert!(soa_answers(&bind).await, "{}", bind.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_admin_get_reads_healthz_and_metrics() {
    let http_port = free_port();
    let Some(pebble) = pebble_on(http_port).await else {
        return;
    };
    let cfg = TestConfig::new()
        .http01_listen(http_port)
        .admin_listen(free_port())
        .issuer(IssuerSpec::pebble("pebble", &pebble).solver_http01())
        .certificate(CertSpec::new("www", "pebble", &["www.example.com"]))
        .write();
    let mut d = cfg.spawn_daemon();
    let out = cfg.output_dir("www");
    d.wait_for("certificate www", Duration::from_secs(120), || {
        out.join("cert.pem").exists()
    })
    .await;

    let (status, body) = d.admin_get("/healthz").await;
    assert_eq!(status, 200, "{body}");
    let mut metrics = String::new();
    for _ in 0..150 {
        let (status, body) = d.admin_get("/metrics").await;
        assert_eq!(status, 200, "{body}");
        metrics = body;
        if metrics.contains("certkeeper_renewals_total{name=\"www\",result=\"success\"} 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        metrics.contains("certkeeper_renewals_total{name=\"www\",result=\"success\"} 1"),
        "{metrics}"
    );
    let (status, _) = d.admin_get("/no-such-path").await;
    assert_eq!(status, 404);
    d.assert_running();
}
