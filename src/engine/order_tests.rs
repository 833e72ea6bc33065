//! The order flow ([`issue`]) against an in-process mock CA (axum on 127.0.0.1:0, plain HTTP)
//! that really issues: newAccount, newOrder, HTTP-01 authorizations that turn valid when the
//! client answers the challenge (nothing is fetched), finalize (a leaf for the CSR's key, signed
//! by an in-test CA) and download. Each test asserts on what the ledger installed or recorded.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::pkey::{HasPublic, PKey, PKeyRef, Private};
use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
use openssl::x509::{X509, X509Builder, X509Extension, X509NameBuilder, X509NameRef, X509Req};
use serde_json::{Value, json};

use super::order::issue;
use crate::acme::{KeyType, ProblemKind};
use crate::challenge::http01::TokenStore;
use crate::engine::Runtime;
use crate::store::{CertState, Event, Snapshot, key_fingerprint, verify_pair};

/// How newOrder is refused: HTTP status, problem type (short form), Retry-After.
type Refusal = (u16, &'static str, Option<&'static str>);

/// One mock CA with one order (`/order/1`).
struct Ca {
    base: OnceLock<String>,
    nonce: AtomicUsize,
    new_orders: AtomicUsize,
    refuse: Option<Refusal>,
    order: Mutex<OrderState>,
    key: PKey<Private>,
    cert: X509,
}

#[derive(Default)]
struct OrderState {
    names: Vec<String>,
    /// Per authorization: the client answered its challenge.
    valid: Vec<bool>,
    status: &'static str,
    chain: String,
}

type S = Arc<Ca>;

impl Ca {
    fn base(&self) -> &str {
        self.base.get().unwrap()
    }

    /// A response with a fresh nonce and `headers` (name, value).
    fn reply(&self, status: u16, headers: &[(&'static str, String)], body: String) -> Response {
        let n = self.nonce.fetch_add(1, Ordering::SeqCst);
        let mut h = HeaderMap::new();
        h.insert(
            "replay-nonce",
            HeaderValue::from_str(&format!("n{n}")).unwrap(),
        );
        for (k, v) in headers {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        (StatusCode::from_u16(status).unwrap(), h, body).into_response()
    }

    /// A JSON response, with a Location of `location` (a path) when given.
    fn json(&self, status: u16, location: Option<&str>, body: Value) -> Response {
        let mut h = vec![("content-type", "application/json".to_string())];
        h.extend(location.map(|l| ("location", format!("{}{l}", self.base()))));
        self.reply(status, &h, body.to_string())
    }

    fn order_json(&self, o: &OrderState) -> Value {
        let b = self.base();
        json!({
            "status": o.status,
            "identifiers": o.names.iter().map(|n| json!({"type": "dns", "value": n})).collect::<Vec<_>>(),
            "authorizations": (0..o.names.len()).map(|i| format!("{b}/authz/{i}")).collect::<Vec<_>>(),
            "finalize": format!("{b}/finalize"),
            "certificate": (o.status == "valid").then(|| format!("{b}/cert")),
        })
    }

    fn challenge_json(&self, i: usize, valid: bool) -> Value {
        let status = if valid { "valid" } else { "pending" };
        json!({"type": "http-01", "url": format!("{}/chall/{i}", self.base()), "token": format!("tok{i}"), "status": status})
    }

    /// A leaf for the CSR's key and the order's names, 90 days, signed by the CA key.
    fn sign(&self, csr_der: &[u8], names: &[String]) -> String {
        let req = X509Req::from_der(csr_der).unwrap();
        let public = req.public_key().unwrap();
        assert!(req.verify(&public).unwrap(), "CSR signature");
        let san = |b: &X509Builder| {
            let mut san = SubjectAlternativeName::new();
            names.iter().for_each(|n| _ = san.dns(n));
            san.build(&b.x509v3_context(Some(&self.cert), None))
                .unwrap()
        };
        let (issuer, key) = (self.cert.subject_name(), &self.key);
        let leaf = certificate(&names[0], &public, 90, (issuer, key), san)
            .to_pem()
            .unwrap();
        String::from_utf8([leaf, self.cert.to_pem().unwrap()].concat()).unwrap()
    }
}

/// A certificate for `public` named `cn`, valid for `days`, signed by `signer` (its name and key),
/// with one extension.
fn certificate(
    cn: &str,
    public: &PKeyRef<impl HasPublic>,
    days: u32,
    signer: (&X509NameRef, &PKey<Private>),
    extension: impl FnOnce(&X509Builder) -> X509Extension,
) -> X509 {
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    let mut serial = BigNum::new().unwrap();
    serial.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
    b.set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&x509_name(cn)).unwrap();
    b.set_issuer_name(signer.0).unwrap();
    b.set_pubkey(public).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(days).unwrap())
        .unwrap();
    let ext = extension(&b);
    b.append_extension(ext).unwrap();
    b.sign(signer.1, MessageDigest::sha256()).unwrap();
    b.build()
}

fn x509_name(cn: &str) -> openssl::x509::X509Name {
    let mut n = X509NameBuilder::new().unwrap();
    n.append_entry_by_text("CN", cn).unwrap();
    n.build()
}

fn payload(body: &str) -> Value {
    let v: Value = serde_json::from_str(body).unwrap();
    let p = v["payload"].as_str().unwrap_or_default();
    if p.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap()
}

/// Every POST (JWS) request, dispatched on the path.
async fn post(State(ca): State<S>, uri: Uri, body: String) -> Response {
    let path: Vec<&str> = uri.path().trim_start_matches('/').split('/').collect();
    let index = || path[1].parse::<usize>().unwrap();
    let mut o = ca.order.lock().unwrap();
    match path[0] {
        "acct" => ca.json(201, Some("/acct/1"), json!({"status": "valid"})),
        "new-order" => {
            ca.new_orders.fetch_add(1, Ordering::SeqCst);
            if let Some((status, short, retry_after)) = ca.refuse {
                let problem = json!({"type": format!("urn:ietf:params:acme:error:{short}"),
                    "detail": "mock refusal", "status": status});
                let mut h = vec![("content-type", "application/problem+json".to_string())];
                h.extend(retry_after.map(|a| ("retry-after", a.to_string())));
                return ca.reply(status, &h, problem.to_string());
            }
            let ids = payload(&body)["identifiers"].as_array().unwrap().clone();
            o.names = ids
                .iter()
                .map(|i| i["value"].as_str().unwrap().into())
                .collect();
            o.valid = vec![false; o.names.len()];
            o.status = "pending";
            ca.json(201, Some("/order/1"), ca.order_json(&o))
        }
        "order" => ca.json(200, None, ca.order_json(&o)),
        "authz" => {
            let i = index();
            let status = if o.valid[i] { "valid" } else { "pending" };
            let authz = json!({"identifier": {"type": "dns", "value": o.names[i]}, "status": status,
                "challenges": [ca.challenge_json(i, o.valid[i])]});
            ca.json(200, None, authz)
        }
        "chall" => {
            let i = index();
            o.valid[i] = true;
            if o.valid.iter().all(|v| *v) {
                o.status = "ready";
            }
            ca.json(200, None, ca.challenge_json(i, true))
        }
        "finalize" => {
            assert_eq!(o.status, "ready", "finalize before the order is ready");
            let csr = payload(&body)["csr"].as_str().unwrap().to_string();
            o.chain = ca.sign(&URL_SAFE_NO_PAD.decode(csr).unwrap(), &o.names);
            o.status = "valid";
            ca.json(200, None, ca.order_json(&o))
        }
        "cert" => {
            let pem = (
                "content-type",
                "application/pem-certificate-chain".to_string(),
            );
            ca.reply(200, &[pem], o.chain.clone())
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn directory(State(ca): State<S>) -> Response {
    let b = ca.base();
    let d = json!({"newNonce": format!("{b}/nonce"), "newAccount": format!("{b}/acct"),
        "newOrder": format!("{b}/new-order"), "revokeCert": format!("{b}/revoke"),
        "keyChange": format!("{b}/key-change")});
    ca.json(200, None, d)
}

/// Start a mock CA; `refuse` makes every newOrder fail that way.
async fn mock_ca(refuse: Option<Refusal>) -> S {
    let key = KeyType::EcdsaP256.generate().unwrap();
    let ca_ext = |_: &X509Builder| BasicConstraints::new().critical().ca().build().unwrap();
    let cert = certificate("Mock CA", &key, 3650, (&x509_name("Mock CA"), &key), ca_ext);
    let ca: S = Arc::new(Ca {
        base: OnceLock::new(),
        nonce: AtomicUsize::new(0),
        new_orders: AtomicUsize::new(0),
        refuse,
        order: Mutex::default(),
        key,
        cert,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    ca.base
        .set(format!("http://{}", listener.local_addr().unwrap()))
        .unwrap();
    let nonce = |State(ca): State<S>| async move { ca.reply(200, &[], String::new()) };
    let app = Router::new()
        .route("/dir", get(directory))
        .route("/nonce", get(nonce).head(nonce))
        .fallback(post)
        .with_state(ca.clone());
    tokio::spawn(axum::serve(listener, app).into_future());
    ca
}

const NAMES: [&str; 2] = ["a.example", "www.a.example"];

/// A runtime over a temp state dir, with one issuer per CA (named `a`, `b`, …, tried in order)
/// and certificate `www` for [`NAMES`].
fn runtime(dir: &tempfile::TempDir, cas: &[&S]) -> Runtime {
    let d = dir.path();
    let mut text = format!("state_dir = {:?}\n", d.join("state").display().to_string());
    let names: Vec<String> = (0..cas.len())
        .map(|i| ((b'a' + i as u8) as char).to_string())
        .collect();
    for (name, ca) in names.iter().zip(cas) {
        text += &format!(
            "[issuer.{name}]\ndirectory = \"{}/dir\"\n[[issuer.{name}.solver]]\nhttp01 = {{ self_check = false }}\n",
            ca.base()
        );
    }
    text += &format!(
        "[certificate.www]\ndomains = {NAMES:?}\nissuer = {names:?}\noutput = {{ dir = {:?} }}\n",
        d.join("out").display().to_string()
    );
    let path = d.join("certkeeper.toml");
    std::fs::write(&path, text).unwrap();
    let cfg = crate::config::load(&path).unwrap();
    Runtime::new(Arc::new(cfg), TokenStore::default()).unwrap()
}

async fn issue_www(rt: &Runtime) -> Result<super::order::Issued, super::IssueError> {
    let cert = &rt.config.certificates["www"];
    let snap = rt.ledger.snapshot(&cert.name, &cert.output);
    issue(rt, cert, &snap).await
}

fn snapshot(rt: &Runtime) -> Snapshot {
    rt.ledger
        .snapshot("www", &rt.config.certificates["www"].output)
}

/// How many newOrder requests `ca` answered.
fn new_orders(ca: &Ca) -> usize {
    ca.new_orders.load(Ordering::SeqCst)
}

fn state(rt: &Runtime) -> CertState {
    rt.ledger.state("www").unwrap().unwrap()
}

/// The installed key.
fn live_key(rt: &Runtime) -> PKey<Private> {
    let snap = snapshot(rt);
    PKey::private_key_from_pem(snap.live().expect("a live pair").key_pem().unwrap()).unwrap()
}

/// The installed pair, verified against the configured names and `ca`'s certificate: its serial.
fn verify_live(rt: &Runtime, ca: &Ca) -> String {
    let snap = snapshot(rt);
    let live = snap.live().expect("a live pair");
    let names = &rt.config.certificates["www"].domains;
    let roots = Some(std::slice::from_ref(&ca.cert));
    let (key, chain) = (live.key_pem().unwrap(), live.fullchain_pem().unwrap());
    let verified = verify_pair(key, chain, names, roots).unwrap();
    verified.serial_hex
}

#[tokio::test]
async fn fresh_issuance_installs_a_verified_pair_and_records_issued() {
    let ca = mock_ca(None).await;
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(&dir, &[&ca]);
    let issued = issue_www(&rt).await.unwrap();
    assert_eq!(issued.issuer, "a");
    assert_eq!(new_orders(&ca), 1);
    assert_eq!(verify_live(&rt, &ca), issued.cert.serial_hex);
    let snap = snapshot(&rt);
    let st = &snap.state;
    assert_eq!(st.issuer.as_deref(), Some("a"));
    assert!(st.last_success.is_some());
    assert_eq!(st.key_fingerprint, key_fingerprint(&live_key(&rt)));
    assert!(st.key_fingerprint.is_some());
    assert_eq!(st.order_url, None);
    assert_eq!(
        st.reload_pending.as_deref(),
        Some(issued.cert.serial_hex.as_str())
    );
    assert_eq!(rt.ledger.pending_key("www").unwrap(), None);
    let trace = st.last_order.as_ref().unwrap();
    assert_eq!(trace.status.as_deref(), Some("valid"));
    assert!(trace.error.is_none());
    assert_eq!(trace.authorizations.len(), 2);
    // This CA has no renewalInfo: recorded with the install, for the certificate just issued (its
    // test certificates carry no AKI, so no CertID), so no ARI check follows at once.
    assert_eq!(st.ari_cert_id, issued.ari_cert_id);
    let next_ari = st.ari_refetch_at.expect("the ARI refetch time");
    assert!(next_ari > jiff::Timestamp::now() + jiff::SignedDuration::from_hours(23));
    assert_eq!(st.ari_window, None);
    // The HTTP-01 tokens were cleaned up.
    assert!(rt.tokens.get("tok0").is_none() && rt.tokens.get("tok1").is_none());
}

#[tokio::test]
async fn a_failing_ca_falls_back_to_the_next_issuer() {
    let a = mock_ca(Some((503, "serverInternal", None))).await;
    let b = mock_ca(None).await;
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(&dir, &[&a, &b]);
    let issued = issue_www(&rt).await.unwrap();
    assert_eq!(issued.issuer, "b");
    assert_eq!(new_orders(&a), 1);
    assert_eq!(new_orders(&b), 1);
    let st = state(&rt);
    assert_eq!(st.issuer.as_deref(), Some("b"));
    assert_eq!(st.last_order.unwrap().issuer.as_deref(), Some("b"));
    assert_eq!(verify_live(&rt, &b), issued.cert.serial_hex);
}

#[tokio::test]
async fn every_issuer_needing_a_human_pauses() {
    let a = mock_ca(Some((400, "rejectedIdentifier", None))).await;
    let b = mock_ca(Some((400, "rejectedIdentifier", None))).await;
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(&dir, &[&a, &b]);
    let err = issue_www(&rt).await.unwrap_err();
    assert_eq!(new_orders(&b), 1, "fell back to b");
    assert_eq!(
        err.problem().unwrap().kind(),
        ProblemKind::RejectedIdentifier
    );
    let d = err.decision().unwrap();
    assert!(d.pause && d.ca_wait.is_none(), "{d:?}");
    let text = err.to_string();
    assert!(
        text.starts_with("issuer a: ") && text.contains("; then issuer b: "),
        "{text}"
    );
    let st = state(&rt);
    assert!(!st.last_order.unwrap().error.unwrap().retryable);
    assert!(snapshot(&rt).installed.is_none());
}

#[tokio::test]
async fn a_far_rate_limit_on_the_only_issuer_is_clamped_not_paused() {
    let a = mock_ca(Some((
        429,
        "rateLimited",
        Some("Wed, 21 Oct 2037 07:28:00 GMT"),
    )))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(&dir, &[&a]);
    let before = jiff::Timestamp::now();
    let err = issue_www(&rt).await.unwrap_err();
    let d = err.decision().unwrap();
    assert!(!d.pause, "{d:?}");
    // Nothing installed: the wait is clamped to the longest backoff step.
    let max = rt.config.daemon.backoff.max;
    let wait = d.ca_wait.unwrap();
    assert!(
        wait > before && wait <= jiff::Timestamp::now() + max,
        "{wait}"
    );
    assert!(wait < "2037-01-01T00:00:00Z".parse().unwrap());
    let st = state(&rt);
    assert!(st.last_order.unwrap().error.unwrap().retryable);
    assert_eq!(st.order_url, None);
}

/// Record an order in flight at `ca` for certificate `www`, with `key` as its pending key.
fn order_in_flight(rt: &Runtime, ca: &Ca, key: &PKey<Private>) {
    rt.ledger
        .lock("www")
        .unwrap()
        .save_pending_key(&key.private_key_to_pem_pkcs8().unwrap())
        .unwrap();
    let url = format!("{}/order/1", ca.base());
    let issuer = "a".to_string();
    rt.ledger
        .record("www", Event::OrderCreated { issuer, url })
        .unwrap();
}

#[tokio::test]
async fn an_order_in_flight_is_resumed_with_its_key() {
    let ca = mock_ca(None).await;
    {
        let mut o = ca.order.lock().unwrap();
        o.names = NAMES.map(String::from).to_vec();
        o.valid = vec![true, false];
        o.status = "pending";
    }
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(&dir, &[&ca]);
    let key = KeyType::EcdsaP256.generate().unwrap();
    order_in_flight(&rt, &ca, &key);
    issue_www(&rt).await.unwrap();
    assert_eq!(new_orders(&ca), 0);
    assert!(
        live_key(&rt).public_eq(&key),
        "finalized with the pending key"
    );
    let st = state(&rt);
    assert_eq!(st.order_url, None);
    assert_eq!(st.key_fingerprint, key_fingerprint(&key));
    assert_eq!(rt.ledger.pending_key("www").unwrap(), None);
}

#[tokio::test]
async fn a_valid_order_whose_key_is_installed_is_not_resumed() {
    let ca = mock_ca(None).await;
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(&dir, &[&ca]);
    let first = issue_www(&rt).await.unwrap();
    assert_eq!(new_orders(&ca), 1);
    // A crash after the switch, before the bookkeeping: the valid order and its key (now live)
    // are still recorded as in flight.
    let installed = live_key(&rt);
    order_in_flight(&rt, &ca, &installed);
    let second = issue_www(&rt).await.unwrap();
    assert_eq!(new_orders(&ca), 2, "a new order was created");
    assert_ne!(second.cert.serial_hex, first.cert.serial_hex);
    assert!(!live_key(&rt).public_eq(&installed), "a new key");
    let st = state(&rt);
    assert_eq!(st.order_url, None);
    assert_eq!(
        st.reload_pending.as_deref(),
        Some(second.cert.serial_hex.as_str())
    );
}

/// A certificate that is not for the order's key is refused before anything is written.
#[tokio::test]
async fn a_certificate_for_another_key_is_not_installed() {
    let ca = mock_ca(None).await;
    let other = KeyType::EcdsaP256.generate().unwrap();
    {
        let mut o = ca.order.lock().unwrap();
        o.names = NAMES.map(String::from).to_vec();
        o.valid = vec![true, true];
        let ids: Vec<_> = NAMES.map(crate::acme::Identifier::dns).to_vec();
        o.chain = ca.sign(&crate::acme::build_csr(&other, &ids).unwrap(), &o.names);
        o.status = "valid";
    }
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(&dir, &[&ca]);
    order_in_flight(&rt, &ca, &KeyType::EcdsaP256.generate().unwrap());
    let err = issue_www(&rt).await.unwrap_err().to_string();
    let at = format!(
        "at {}/cert: the CA's certificate was rejected, nothing was written",
        ca.base()
    );
    assert!(
        err.contains(&at) && err.contains("public keys differ"),
        "{err}"
    );
    assert!(snapshot(&rt).installed.is_none());
    assert!(state(&rt).last_success.is_none());
}
