//! Tests against an in-process mock CA (axum on 127.0.0.1:0, plain HTTP) for what pebble 2.4
//! lacks: renewalInfo, profiles, Retry-After while polling, alternate chains, oversized and
//! garbage answers, persistent badNonce.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::{Value, json};

use super::*;

#[derive(Default)]
struct Mock {
    base: Mutex<String>,
    nonce: AtomicUsize,
    order_polls: AtomicUsize,
    authz_polls: AtomicUsize,
    last_order: Mutex<Option<Value>>,
    bad_nonce_posts: AtomicUsize,
    chains: Mutex<(String, String)>,
}

type S = Arc<Mock>;

/// A JSON body (the crate's axum has no `json` feature).
fn jbody(v: Value) -> ([(&'static str, &'static str); 1], String) {
    ([("content-type", "application/json")], v.to_string())
}

fn headers(m: &Mock) -> HeaderMap {
    let mut h = HeaderMap::new();
    let n = m.nonce.fetch_add(1, Ordering::SeqCst);
    h.insert(
        "replay-nonce",
        HeaderValue::from_str(&format!("nonce-{n}")).unwrap(),
    );
    h
}

fn payload(body: &str) -> Value {
    let v: Value = serde_json::from_str(body).unwrap();
    let p = v["payload"].as_str().unwrap();
    if p.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .unwrap(),
    )
    .unwrap()
}

async fn directory(State(m): State<S>) -> Response {
    let b = m.base.lock().unwrap().clone();
    let d = json!({
        "newNonce": format!("{b}/nonce"), "newAccount": format!("{b}/acct"),
        "newOrder": format!("{b}/new-order"), "revokeCert": format!("{b}/revoke"),
        "keyChange": format!("{b}/key-change"), "renewalInfo": format!("{b}/ari/"),
        "meta": { "profiles": { "classic": "90 days", "shortlived": "6 days" } }
    });
    (headers(&m), jbody(d)).into_response()
}

fn order_json(b: &str, status: &str) -> Value {
    json!({
        "status": status, "identifiers": [{"type": "dns", "value": "a.example"}],
        "authorizations": [format!("{b}/authz/1")], "finalize": format!("{b}/order/1/finalize"),
        "certificate": format!("{b}/cert/1")
    })
}

fn app(m: S) -> Router {
    Router::new()
        .route("/dir", get(directory))
        .route("/garbage-dir", get(|| async { "<html>not a directory</html>" }))
        .route(
            "/huge-dir",
            get(|| async { format!("{{\"x\":\"{}\"}}", "a".repeat(2 * 1024 * 1024)) }),
        )
        .route(
            "/nonce",
            get(|State(m): State<S>| async move { (StatusCode::NO_CONTENT, headers(&m)) })
                .head(|State(m): State<S>| async move { (StatusCode::OK, headers(&m)) }),
        )
        .route(
            "/acct",
            post(|State(m): State<S>| async move {
                let mut h = headers(&m);
                let b = m.base.lock().unwrap().clone();
                h.insert("location", HeaderValue::from_str(&format!("{b}/acct/1")).unwrap());
                (h, jbody(json!({"status": "valid"})))
            }),
        )
        .route(
            "/new-order",
            post(|State(m): State<S>, body: String| async move {
                *m.last_order.lock().unwrap() = Some(payload(&body));
                let mut h = headers(&m);
                let b = m.base.lock().unwrap().clone();
                h.insert("location", HeaderValue::from_str(&format!("{b}/order/1")).unwrap());
                (StatusCode::CREATED, h, jbody(order_json(&b, "pending")))
            }),
        )
        .route(
            "/order/1",
            post(|State(m): State<S>| async move {
                let n = m.order_polls.fetch_add(1, Ordering::SeqCst);
                let mut h = headers(&m);
                let b = m.base.lock().unwrap().clone();
                if n < 2 {
                    h.insert("retry-after", HeaderValue::from_static("1"));
                    (h, jbody(order_json(&b, "processing")))
                } else {
                    (h, jbody(order_json(&b, "valid")))
                }
            }),
        )
        .route(
            "/authz/1",
            post(|State(m): State<S>| async move {
                let n = m.authz_polls.fetch_add(1, Ordering::SeqCst);
                let b = m.base.lock().unwrap().clone();
                let (status, err) = if n < 1 {
                    ("pending", Value::Null)
                } else {
                    ("invalid", json!({
                        "type": "urn:ietf:params:acme:error:dns",
                        "detail": "NXDOMAIN looking up TXT for _acme-challenge.a.example",
                        "status": 400
                    }))
                };
                let mut ch = json!({"type": "dns-01", "url": format!("{b}/chall/1"), "token": "tok", "status": status});
                if !err.is_null() {
                    ch["error"] = err;
                }
                (headers(&m), jbody(json!({
                    "identifier": {"type": "dns", "value": "a.example"}, "status": status,
                    "challenges": [ch], "wildcard": true
                })))
            }),
        )
        .route(
            "/cert/1",
            post(|State(m): State<S>| async move {
                let mut h = headers(&m);
                let b = m.base.lock().unwrap().clone();
                h.append("link", HeaderValue::from_str(&format!("<{b}/cert/1/alt>;rel=\"alternate\"")).unwrap());
                h.append("link", HeaderValue::from_str(&format!("<{b}/dir>;rel=\"index\"")).unwrap());
                h.insert("content-type", HeaderValue::from_static("application/pem-certificate-chain"));
                (h, m.chains.lock().unwrap().0.clone())
            }),
        )
        .route(
            "/cert/1/alt",
            post(|State(m): State<S>| async move { (headers(&m), m.chains.lock().unwrap().1.clone()) }),
        )
        .route(
            "/huge",
            post(|State(m): State<S>| async move { (headers(&m), "x".repeat(2 * 1024 * 1024)) }),
        )
        .route(
            "/garbage",
            post(|State(m): State<S>| async move { (headers(&m), "this is not json") }),
        )
        .route(
            "/always-bad-nonce",
            post(|State(m): State<S>| async move {
                m.bad_nonce_posts.fetch_add(1, Ordering::SeqCst);
                let mut h = headers(&m);
                h.insert("content-type", HeaderValue::from_static("application/problem+json"));
                (StatusCode::BAD_REQUEST, h, r#"{"type":"urn:ietf:params:acme:error:badNonce","detail":"bad nonce"}"#)
            }),
        )
        .route(
            "/rate-limited",
            post(|State(m): State<S>| async move {
                let mut h = headers(&m);
                h.insert("retry-after", HeaderValue::from_static("Wed, 21 Oct 2037 07:28:00 GMT"));
                (StatusCode::TOO_MANY_REQUESTS, h, r#"{"type":"urn:ietf:params:acme:error:rateLimited","detail":"too many certificates"}"#)
            }),
        )
        .route(
            "/ari/{id}",
            get(|State(m): State<S>, axum::extract::Path(id): axum::extract::Path<String>| async move {
                let mut h = headers(&m);
                h.insert("retry-after", HeaderValue::from_static("21600"));
                (h, jbody(json!({
                    "suggestedWindow": {"start": "2026-01-02T04:00:00Z", "end": "2026-01-03T04:00:00Z"},
                    "explanationURL": format!("https://ca.example/why/{id}")
                })))
            }),
        )
        .with_state(m)
}

fn cert(subject: &str, issuer: &str) -> String {
    let key = KeyType::EcdsaP256.generate().unwrap();
    let name = |cn: &str| {
        let mut n = openssl::x509::X509NameBuilder::new().unwrap();
        n.append_entry_by_text("CN", cn).unwrap();
        n.build()
    };
    let mut b = openssl::x509::X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_subject_name(&name(subject)).unwrap();
    b.set_issuer_name(&name(issuer)).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&openssl::asn1::Asn1Time::days_from_now(1).unwrap())
        .unwrap();
    b.sign(&key, openssl::hash::MessageDigest::sha256())
        .unwrap();
    String::from_utf8(b.build().to_pem().unwrap()).unwrap()
}

async fn mock() -> (S, String) {
    let m: S = Arc::default();
    *m.chains.lock().unwrap() = (
        format!(
            "{}{}",
            cert("a.example", "Int Gen-Y"),
            cert("Int Gen-Y", "Root YE")
        ),
        format!(
            "{}{}",
            cert("a.example", "Int R10"),
            cert("Int R10", "ISRG Root X1")
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    *m.base.lock().unwrap() = base.clone();
    tokio::spawn(axum::serve(listener, app(m.clone())).into_future());
    (m, base)
}

async fn account(base: &str) -> Account {
    let client = Client::new(&format!("{base}/dir"), &[], "certkeeper-test")
        .await
        .unwrap();
    Account::find_or_create(
        &client,
        AccountKey::generate(KeyType::EcdsaP256).unwrap(),
        &[],
        None,
        true,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn directory_meta_profiles_and_ari() {
    let (_m, base) = mock().await;
    let a = account(&base).await;
    let d = a.client().directory();
    assert_eq!(
        d.meta.profiles.get("shortlived").map(String::as_str),
        Some("6 days")
    );
    assert_eq!(a.url(), format!("{base}/acct/1"));
    let before = jiff::Timestamp::now();
    let ri = a
        .client()
        .renewal_info("aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ri.suggested_window.start.to_string(),
        "2026-01-02T04:00:00Z"
    );
    assert_eq!(ri.suggested_window.end.to_string(), "2026-01-03T04:00:00Z");
    assert_eq!(
        ri.explanation_url.as_deref(),
        Some("https://ca.example/why/aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE")
    );
    let ra = ri.retry_after.unwrap();
    assert!(
        ra >= before + jiff::SignedDuration::from_secs(21599),
        "{ra}"
    );
}

#[tokio::test]
async fn profile_and_replaces_sent_only_when_set_and_validated() {
    let (m, base) = mock().await;
    let a = account(&base).await;
    let ids = vec![Identifier::dns("a.example")];
    a.new_order(&NewOrder {
        identifiers: ids.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let sent = m.last_order.lock().unwrap().clone().unwrap();
    assert_eq!(
        sent,
        json!({"identifiers": [{"type": "dns", "value": "a.example"}]})
    );
    let order = a
        .new_order(&NewOrder {
            identifiers: ids.clone(),
            profile: Some("shortlived".into()),
            replaces: Some("x.y".into()),
        })
        .await
        .unwrap();
    assert_eq!(order.url, format!("{base}/order/1"));
    let sent = m.last_order.lock().unwrap().clone().unwrap();
    assert_eq!(sent["profile"], "shortlived");
    assert_eq!(sent["replaces"], "x.y");
    let err = a
        .new_order(&NewOrder {
            identifiers: ids,
            profile: Some("tlsserver".into()),
            replaces: None,
        })
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("\"tlsserver\" is not offered") && msg.contains("classic, shortlived"),
        "{msg}"
    );
}

#[tokio::test]
async fn poll_order_honours_retry_after() {
    let (m, base) = mock().await;
    let a = account(&base).await;
    let start = Instant::now();
    let poll = Poll {
        first: Duration::from_millis(5),
        max_interval: Duration::from_millis(20),
        timeout: Duration::from_secs(10),
    };
    let order = a
        .poll_order(&format!("{base}/order/1"), &poll)
        .await
        .unwrap();
    assert_eq!(order.body.status, OrderStatus::Valid);
    assert_eq!(m.order_polls.load(Ordering::SeqCst), 3);
    // Two Retry-After: 1 answers; the 5-20 ms backoff alone would finish in well under a second.
    assert!(
        start.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        start.elapsed()
    );
    // A timeout shorter than Retry-After is respected.
    m.order_polls.store(0, Ordering::SeqCst);
    let short = Poll {
        timeout: Duration::from_millis(300),
        ..poll
    };
    let start = Instant::now();
    let err = a
        .poll_order(&format!("{base}/order/1"), &short)
        .await
        .unwrap_err();
    assert!(matches!(err, AcmeError::Timeout { .. }), "{err}");
    assert!(
        start.elapsed() < Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn invalid_authorization_returns_challenge_problem() {
    let (_m, base) = mock().await;
    let a = account(&base).await;
    let poll = Poll {
        first: Duration::from_millis(5),
        max_interval: Duration::from_millis(20),
        timeout: Duration::from_secs(5),
    };
    let err = a
        .poll_authorization(&format!("{base}/authz/1"), &poll)
        .await
        .unwrap_err();
    let p = err.problem().unwrap();
    assert_eq!(p.kind(), ProblemKind::Dns);
    assert_eq!(p.origin, ProblemOrigin::Challenge("*.a.example".into()));
    let msg = err.to_string();
    assert!(
        msg.contains("could not verify control of *.a.example; it saw: NXDOMAIN"),
        "{msg}"
    );
}

#[tokio::test]
async fn alternate_chain_by_preferred_issuer() {
    let (_m, base) = mock().await;
    let a = account(&base).await;
    let url = format!("{base}/cert/1");
    let default = a.certificate(&url).await.unwrap();
    assert_eq!(default.alternates, vec![format!("{base}/cert/1/alt")]);
    assert_eq!(default.certificates().len(), 2);
    let x1 = a
        .certificate_with_preference(&url, Some("ISRG Root X1"))
        .await
        .unwrap();
    assert!(x1.pem != default.pem && account::chain_matches(&x1, "ISRG Root X1"));
    let by_int = a
        .certificate_with_preference(&url, Some("Int R10"))
        .await
        .unwrap();
    assert_eq!(by_int.pem, x1.pem);
    let ye = a
        .certificate_with_preference(&url, Some("Root YE"))
        .await
        .unwrap();
    assert_eq!(ye.pem, default.pem);
    let none = a
        .certificate_with_preference(&url, Some("Nobody"))
        .await
        .unwrap();
    assert_eq!(none.pem, default.pem);
}

/// A certificate for `subject` issued by `issuer`, each written as `(O, CN)` (O optional).
fn cert_o(subject: (Option<&str>, &str), issuer: (Option<&str>, &str)) -> String {
    let key = KeyType::EcdsaP256.generate().unwrap();
    let name = |(o, cn): (Option<&str>, &str)| {
        let mut n = openssl::x509::X509NameBuilder::new().unwrap();
        n.append_entry_by_text("C", "US").unwrap();
        if let Some(o) = o {
            n.append_entry_by_text("O", o).unwrap();
        }
        n.append_entry_by_text("CN", cn).unwrap();
        n.build()
    };
    let mut b = openssl::x509::X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_subject_name(&name(subject)).unwrap();
    b.set_issuer_name(&name(issuer)).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&openssl::asn1::Asn1Time::days_from_now(1).unwrap())
        .unwrap();
    b.sign(&key, openssl::hash::MessageDigest::sha256())
        .unwrap();
    String::from_utf8(b.build().to_pem().unwrap()).unwrap()
}

/// Let's Encrypt's 2026 "Generation Y" roots: ISRG Root YE (ECDSA P-384) above YE1..YE3 and ISRG
/// Root YR (RSA 4096) above YR1..YR3, published as `O = ISRG, CN = Root YE` / `CN = Root YR`.
/// `preferred_chain` selects them by either spelling, among the alternates the CA offers.
#[tokio::test]
async fn preferred_chain_selects_the_2026_isrg_roots() {
    let isrg = Some("ISRG");
    let leaf = |int: &str| cert_o((None, "a.example"), (isrg, int));
    // Default: RSA hierarchy; alternate: ECDSA hierarchy.
    let yr = format!(
        "{}{}",
        leaf("YR1"),
        cert_o((isrg, "YR1"), (isrg, "Root YR"))
    );
    let ye = format!(
        "{}{}",
        leaf("YE1"),
        cert_o((isrg, "YE1"), (isrg, "Root YE"))
    );
    let (m, base) = mock().await;
    *m.chains.lock().unwrap() = (yr.clone(), ye.clone());
    let a = account(&base).await;
    let url = format!("{base}/cert/1");
    for (preferred, want) in [
        ("ISRG Root YE", &ye),
        ("Root YE", &ye),
        ("YE1", &ye),
        ("ISRG Root YR", &yr),
        ("Root YR", &yr),
        ("ISRG Root X1", &yr), // not offered: the default chain
    ] {
        let got = a
            .certificate_with_preference(&url, Some(preferred))
            .await
            .unwrap();
        assert_eq!(&got.pem, want, "preferred_chain = {preferred:?}");
    }
    // CNs that carry the whole name, and a Gen Y root cross-signed by ISRG Root X2: the chain
    // matches both the top issuer and the root it contains.
    let full = CertificateChain::parse(
        format!(
            "{}{}",
            leaf("YE2"),
            cert_o((isrg, "YE2"), (isrg, "ISRG Root YE"))
        ),
        vec![],
    )
    .unwrap();
    assert!(account::chain_matches(&full, "ISRG Root YE"));
    assert!(!account::chain_matches(&full, "ISRG Root YR"));
    let cross = CertificateChain::parse(
        format!(
            "{}{}{}",
            leaf("YE1"),
            cert_o((isrg, "YE1"), (isrg, "Root YE")),
            cert_o(
                (isrg, "Root YE"),
                (Some("Internet Security Research Group"), "ISRG Root X2")
            )
        ),
        vec![],
    )
    .unwrap();
    for name in ["ISRG Root X2", "ISRG Root YE", "Root YE"] {
        assert!(account::chain_matches(&cross, name), "{name}");
    }
    assert!(!account::chain_matches(&cross, "ISRG Root YR"));
}

#[tokio::test]
async fn oversized_and_garbage_answers_are_rejected() {
    let (_m, base) = mock().await;
    let err = Client::new(&format!("{base}/garbage-dir"), &[], "t")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("did not return an ACME directory"),
        "{err}"
    );
    let err = Client::new(&format!("{base}/huge-dir"), &[], "t")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("larger than 1048576 bytes"),
        "{err}"
    );
    let a = account(&base).await;
    let err = a.certificate(&format!("{base}/huge")).await.unwrap_err();
    assert!(
        err.to_string().contains("larger than 262144 bytes"),
        "{err}"
    );
    let err = a.order(&format!("{base}/garbage")).await.unwrap_err();
    assert!(err.to_string().contains("not the expected JSON"), "{err}");
    let err = a.certificate(&format!("{base}/garbage")).await.unwrap_err();
    assert!(
        err.to_string().contains("not valid PEM") || err.to_string().contains("chain is empty"),
        "{err}"
    );
}

#[tokio::test]
async fn bad_nonce_retried_then_given_up_and_rate_limit_keeps_retry_after() {
    let (m, base) = mock().await;
    let a = account(&base).await;
    let err = a
        .respond(&format!("{base}/always-bad-nonce"))
        .await
        .unwrap_err();
    assert_eq!(err.problem().unwrap().kind(), ProblemKind::BadNonce);
    assert_eq!(
        m.bad_nonce_posts.load(Ordering::SeqCst),
        client::BAD_NONCE_ATTEMPTS
    );
    let err = a
        .respond(&format!("{base}/rate-limited"))
        .await
        .unwrap_err();
    let p = err.problem().unwrap();
    assert_eq!(p.http_status, 429);
    assert_eq!(p.retry_after.unwrap().to_string(), "2037-10-21T07:28:00Z");
    assert!(
        err.to_string().contains("until 2037-10-21T07:28:00Z"),
        "{err}"
    );
}
