//! The ACME protocol layer against a real pebble: accounts, EAB, issuance with EC and RSA keys,
//! failed validation, key rollover and revocation.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use certkeeper::acme::{
    Account, AccountKey, AcmeError, Client, Eab, Identifier, KeyType, NewOrder, OrderStatus, Poll,
    ProblemKind, build_csr,
};
use openssl::x509::X509;
use support::{Pebble, PebbleOpts, free_port};

type Tokens = Arc<Mutex<HashMap<String, String>>>;

/// A tiny HTTP-01 responder on 127.0.0.1:port serving key authorizations.
async fn http01_responder() -> (u16, Tokens) {
    let tokens: Tokens = Arc::default();
    let app = axum::Router::new()
        .route(
            "/.well-known/acme-challenge/{token}",
            axum::routing::get(
                |State(t): State<Tokens>, Path(token): Path<String>| async move {
                    match t.lock().unwrap().get(&token) {
                        Some(ka) => (StatusCode::OK, ka.clone()),
                        None => (StatusCode::NOT_FOUND, String::new()),
                    }
                },
            ),
        )
        .with_state(tokens.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, tokens)
}

async fn start(opts: PebbleOpts) -> Option<(Pebble, Tokens, Client)> {
    if !support::pebble::available() {
        eprintln!("pebble is not installed; skipping");
        return None;
    }
    let (port, tokens) = http01_responder().await;
    let pebble = Pebble::start(PebbleOpts {
        http_port: port,
        ..opts
    })
    .await;
    let client = Client::new(
        &pebble.directory_url(),
        &[pebble.ca_x509()],
        "certkeeper-test/0",
    )
    .await
    .expect("connect to pebble");
    Some((pebble, tokens, client))
}

/// A new account on `client` with a fresh key of type `key`, no contact, no EAB.
async fn new_account(client: &Client, key: KeyType) -> Account {
    Account::find_or_create(client, AccountKey::generate(key).unwrap(), &[], None, true)
        .await
        .unwrap()
}

/// The account of the existing key `pem` on `client` (no contact, no EAB).
async fn account_for_key(client: &Client, pem: &[u8], agree_tos: bool) -> Account {
    Account::find_or_create(
        client,
        AccountKey::from_pem(pem).unwrap(),
        &[],
        None,
        agree_tos,
    )
    .await
    .unwrap()
}

/// Pebble's management view of the certificate with hex `serial`.
async fn cert_status(pebble: &Pebble, serial: &str) -> serde_json::Value {
    serde_json::from_str(
        &pebble
            .mgmt_get(&format!("/cert-status-by-serial/{serial}"))
            .await,
    )
    .unwrap()
}

/// The first common name in `name`.
fn common_name(name: &openssl::x509::X509NameRef) -> String {
    name.entries_by_nid(openssl::nid::Nid::COMMONNAME)
        .next()
        .unwrap()
        .data()
        .to_string()
        .unwrap()
}

fn poll() -> Poll {
    Poll {
        first: Duration::from_millis(10),
        max_interval: Duration::from_millis(500),
        timeout: Duration::from_secs(30),
    }
}

/// Run a whole order over HTTP-01 and return (chain PEM, cert key, certificate URL).
async fn issue(
    account: &Account,
    tokens: &Tokens,
    names: &[&str],
    cert_key: KeyType,
) -> (String, openssl::pkey::PKey<openssl::pkey::Private>, String) {
    let ids: Vec<Identifier> = names.iter().map(|n| Identifier::parse(n)).collect();
    let order = account
        .new_order(&NewOrder {
            identifiers: ids.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(order.body.status, OrderStatus::Pending);
    assert_eq!(order.body.authorizations.len(), names.len());
    for authz_url in &order.body.authorizations {
        let authz = account.authorization(authz_url).await.unwrap();
        let ch = authz.challenge("http-01").expect("pebble offers http-01");
        tokens
            .lock()
            .unwrap()
            .insert(ch.token.clone(), account.key_authorization(&ch.token));
        account.respond(&ch.url).await.unwrap();
    }
    for authz_url in &order.body.authorizations {
        account
            .poll_authorization(authz_url, &poll())
            .await
            .unwrap();
    }
    let order = account.poll_order(&order.url, &poll()).await.unwrap();
    assert_eq!(order.body.status, OrderStatus::Ready);
    let key = cert_key.generate().unwrap();
    let csr = build_csr(&key, &ids).unwrap();
    account.finalize(&order, &csr).await.unwrap();
    let order = account.poll_order(&order.url, &poll()).await.unwrap();
    assert_eq!(order.body.status, OrderStatus::Valid);
    let url = order.body.certificate.clone().unwrap();
    let chain = account.certificate(&url).await.unwrap();
    (chain.pem, key, url)
}

/// Verify the chain against pebble's root and check the leaf's names and key.
async fn verify_chain(
    pebble: &Pebble,
    pem: &str,
    names: &[&str],
    key: &openssl::pkey::PKey<openssl::pkey::Private>,
) {
    let certs = X509::stack_from_pem(pem.as_bytes()).unwrap();
    assert!(certs.len() >= 2, "leaf + intermediate expected");
    let root = X509::from_pem(pebble.root_pem().await.as_bytes()).unwrap();
    let mut store = openssl::x509::store::X509StoreBuilder::new().unwrap();
    store.add_cert(root).unwrap();
    let store = store.build();
    let mut chain = openssl::stack::Stack::new().unwrap();
    for c in &certs[1..] {
        chain.push(c.clone()).unwrap();
    }
    let mut ctx = openssl::x509::X509StoreContext::new().unwrap();
    let ok = ctx
        .init(&store, &certs[0], &chain, |c| c.verify_cert())
        .unwrap();
    assert!(ok, "chain does not verify against pebble's root");
    let leaf = &certs[0];
    assert!(
        leaf.public_key().unwrap().public_eq(key),
        "leaf is not for our key"
    );
    let sans: Vec<String> = leaf
        .subject_alt_names()
        .unwrap()
        .iter()
        .filter_map(|n| {
            n.dnsname().map(str::to_string).or_else(|| {
                n.ipaddress().and_then(|b| match b.len() {
                    4 => Some(std::net::IpAddr::from(<[u8; 4]>::try_from(b).ok()?).to_string()),
                    16 => Some(std::net::IpAddr::from(<[u8; 16]>::try_from(b).ok()?).to_string()),
                    _ => None,
                })
            })
        })
        .collect();
    for n in names {
        assert!(sans.iter().any(|s| s == n), "{n} missing from {sans:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_create_then_find_same_url() {
    let Some((_pebble, _t, client)) = start(PebbleOpts::default()).await else {
        return;
    };
    assert!(
        client
            .directory()
            .new_account
            .starts_with("https://127.0.0.1:")
    );
    let key = AccountKey::generate(KeyType::EcdsaP256).unwrap();
    let pem = key.to_pem().unwrap();
    let a = Account::find_or_create(
        &client,
        key,
        &["mailto:admin@example.com".into()],
        None,
        true,
    )
    .await
    .unwrap();
    assert!(a.url().contains("/my-account/"), "{}", a.url());
    assert_eq!(a.body().contact, vec!["mailto:admin@example.com"]);
    let again = account_for_key(&client, &pem, true).await;
    assert_eq!(again.url(), a.url());
    let other = new_account(&client, KeyType::EcdsaP384).await;
    assert_ne!(other.url(), a.url());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eab_required_right_key_works_wrong_key_names_eab() {
    use base64::Engine as _;
    let hmac = b"a-32-byte-long-secret-hmac-key!!".to_vec();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&hmac);
    let opts = PebbleOpts {
        eab_keys: Some(vec![("kid-1".into(), b64)]),
        ..Default::default()
    };
    let Some((_pebble, _t, client)) = start(opts).await else {
        return;
    };
    assert!(client.directory().meta.external_account_required);

    let err = Account::find_or_create(
        &client,
        AccountKey::generate(KeyType::EcdsaP256).unwrap(),
        &[],
        None,
        true,
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("external account binding (EAB)"),
        "{err}"
    );
    // Found before asking the CA (its directory says EAB is required): a config problem, retried
    // with backoff and at once after a config fix; another issuer may be tried meanwhile.
    let d = verdict(err);
    assert!(!d.pause && d.fall_back, "{d:?}");

    let wrong = Eab {
        kid: "kid-1".into(),
        hmac_key: b"a-32-byte-long-WRONG-hmac-key!!!".to_vec(),
    };
    let err = Account::find_or_create(
        &client,
        AccountKey::generate(KeyType::EcdsaP256).unwrap(),
        &[],
        Some(&wrong),
        true,
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    eprintln!("wrong EAB: {msg}");
    assert!(msg.contains("EAB"), "{msg}");
    assert!(
        err.problem().is_some(),
        "expected the CA's problem document: {msg}"
    );
    assert!(verdict(err).pause, "{msg}");

    let right = Eab {
        kid: "kid-1".into(),
        hmac_key: hmac,
    };
    let key = AccountKey::generate(KeyType::EcdsaP256).unwrap();
    let pem = key.to_pem().unwrap();
    let a = Account::find_or_create(&client, key, &[], Some(&right), true)
        .await
        .unwrap();
    // Found again without EAB: onlyReturnExisting needs no binding.
    let again = account_for_key(&client, &pem, true).await;
    assert_eq!(a.url(), again.url());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_es256_p256_and_rs256_rsa_under_nonce_rejection() {
    // Half of all good nonces rejected: every request must survive badNonce retries.
    let opts = PebbleOpts {
        nonce_reject: Some(50),
        ..Default::default()
    };
    let Some((pebble, tokens, client)) = start(opts).await else {
        return;
    };
    let names = ["a.example.com", "b.example.com"];

    let ec = new_account(&client, KeyType::EcdsaP256).await;
    let (pem, key, _url) = issue(&ec, &tokens, &names, KeyType::EcdsaP256).await;
    verify_chain(&pebble, &pem, &names, &key).await;
    assert_eq!(KeyType::of(&key), Some(KeyType::EcdsaP256));

    let rsa = new_account(&client, KeyType::Rsa2048).await;
    assert_eq!(rsa.key().alg(), "RS256");
    let (pem, key, _url) = issue(&rsa, &tokens, &names, KeyType::Rsa2048).await;
    verify_chain(&pebble, &pem, &names, &key).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_challenge_gives_structured_problem() {
    let Some((_pebble, _tokens, client)) = start(PebbleOpts::default()).await else {
        return;
    };
    let account = new_account(&client, KeyType::EcdsaP256).await;
    let order = account
        .new_order(&NewOrder {
            identifiers: vec![Identifier::dns("missing.example.com")],
            ..Default::default()
        })
        .await
        .unwrap();
    let authz_url = &order.body.authorizations[0];
    let authz = account.authorization(authz_url).await.unwrap();
    // Respond without publishing the token: our responder answers 404.
    account
        .respond(&authz.challenge("http-01").unwrap().url)
        .await
        .unwrap();
    let err = account
        .poll_authorization(authz_url, &poll())
        .await
        .unwrap_err();
    let p = err
        .problem()
        .unwrap_or_else(|| panic!("expected a problem, got {err}"));
    assert!(
        matches!(
            p.kind(),
            ProblemKind::Unauthorized | ProblemKind::Connection
        ),
        "{p:?}"
    );
    assert!(p.detail.as_deref().is_some_and(|d| !d.is_empty()));
    let msg = err.to_string();
    eprintln!("unanswered: {msg}");
    assert!(
        msg.contains("the CA could not verify control of missing.example.com; it saw:"),
        "{msg}"
    );
    // The order turns invalid too, and says why.
    let err = account.poll_order(&order.url, &poll()).await.unwrap_err();
    assert!(err.problem().is_some(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_change_then_new_key_works_and_old_fails() {
    let Some((_pebble, _t, client)) = start(PebbleOpts::default()).await else {
        return;
    };
    let old = AccountKey::generate(KeyType::EcdsaP256).unwrap();
    let old_pem = old.to_pem().unwrap();
    let mut account = Account::find_or_create(&client, old, &[], None, true)
        .await
        .unwrap();
    let new = AccountKey::generate(KeyType::Rsa2048).unwrap();
    let new_pem = new.to_pem().unwrap();
    account.key_change(new).await.unwrap();
    assert_eq!(account.key().key_type(), KeyType::Rsa2048);
    // The account (now with the new key) still works.
    account
        .update_contact(&["mailto:new@example.com".into()])
        .await
        .unwrap();
    assert_eq!(account.body().contact, vec!["mailto:new@example.com"]);
    let found = account_for_key(&client, &new_pem, false).await;
    assert_eq!(found.url(), account.url());
    // The old key no longer signs for this account.
    let mut stale = Account::from_parts(
        &client,
        AccountKey::from_pem(&old_pem).unwrap(),
        account.url().to_string(),
    );
    let err = stale
        .update_contact(&["mailto:x@example.com".into()])
        .await
        .unwrap_err();
    eprintln!("old key: {err}");
    assert!(err.problem().is_some(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_then_pebble_reports_revoked() {
    let Some((pebble, tokens, client)) = start(PebbleOpts::default()).await else {
        return;
    };
    let account = new_account(&client, KeyType::EcdsaP256).await;
    let (pem, key, _url) = issue(
        &account,
        &tokens,
        &["revoke.example.com"],
        KeyType::EcdsaP256,
    )
    .await;
    let leaf = X509::from_pem(pem.as_bytes()).unwrap();
    let serial = leaf
        .serial_number()
        .to_bn()
        .unwrap()
        .to_hex_str()
        .unwrap()
        .to_lowercase();
    let status = cert_status(&pebble, &serial).await;
    assert_eq!(status["Status"], "Valid", "{status}");
    account
        .revoke(&leaf.to_der().unwrap(), Some(4))
        .await
        .unwrap();
    let status = cert_status(&pebble, &serial).await;
    assert_eq!(status["Status"], "Revoked", "{status}");
    assert_eq!(status["Reason"], 4, "{status}");
    // Revoking again with the certificate's own key: alreadyRevoked.
    let err =
        certkeeper::acme::revoke_with_certificate_key(&client, &key, &leaf.to_der().unwrap(), None)
            .await
            .unwrap_err();
    assert_eq!(
        err.problem().map(|p| p.kind()),
        Some(ProblemKind::AlreadyRevoked),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_and_untrusted_ca_errors_say_so() {
    // Nothing listens on this port.
    let port = free_port();
    let err = Client::new(&format!("https://127.0.0.1:{port}/dir"), &[], "t")
        .await
        .unwrap_err();
    assert!(matches!(err, AcmeError::Connect { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with(&format!(
            "cannot reach the CA at https://127.0.0.1:{port}/dir"
        )),
        "{err}"
    );
    // Pebble's TLS CA not in the bundle.
    let Some((pebble, _t, _client)) = start(PebbleOpts::default()).await else {
        return;
    };
    let err = Client::new(&pebble.directory_url(), &[], "t")
        .await
        .unwrap_err();
    eprintln!("tls: {err}");
    assert!(matches!(err, AcmeError::Tls { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("does not verify against ca_bundle/system roots"),
        "{err}"
    );
    // A CA whose TLS does not verify is retried (the trust may be fixed) and another issuer tried.
    let d = verdict(err);
    assert!(!d.pause && d.fall_back, "{d:?}");
}

/// The failure policy's verdict on a protocol error.
fn verdict(err: AcmeError) -> certkeeper::engine::Decision {
    certkeeper::engine::decide(
        &err.into(),
        jiff::Timestamp::now(),
        None,
        &certkeeper::scheduler::Backoff::default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferred_chain_picks_pebble_alternate_root() {
    let opts = PebbleOpts {
        alternate_roots: 1,
        ..Default::default()
    };
    let Some((pebble, tokens, client)) = start(opts).await else {
        return;
    };
    let account = new_account(&client, KeyType::EcdsaP256).await;
    let (pem, _key, url) = issue(
        &account,
        &tokens,
        &["chain.example.com"],
        KeyType::EcdsaP256,
    )
    .await;
    let cn = |pem: &str| {
        let c = X509::from_pem(pem.as_bytes()).unwrap();
        common_name(c.subject_name())
    };
    let root0 = cn(&pebble.root_pem().await);
    let root1 = cn(&pebble.mgmt_get("/roots/1").await);
    assert_ne!(root0, root1);
    let top_issuer = |pem: &str| {
        let certs = X509::stack_from_pem(pem.as_bytes()).unwrap();
        common_name(certs.last().unwrap().issuer_name())
    };
    assert_eq!(top_issuer(&pem), root0);
    let default = account.certificate(&url).await.unwrap();
    assert_eq!(
        default.alternates.len(),
        1,
        "pebble should link one alternate chain"
    );
    let alt = account
        .certificate_with_preference(&url, Some(&root1))
        .await
        .unwrap();
    assert_eq!(top_issuer(&alt.pem), root1);
    let same = account
        .certificate_with_preference(&url, Some(&root0))
        .await
        .unwrap();
    assert_eq!(top_issuer(&same.pem), root0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_identifier_issued_and_account_deactivated() {
    let Some((pebble, tokens, client)) = start(PebbleOpts::default()).await else {
        return;
    };
    let mut account = new_account(&client, KeyType::EcdsaP384).await;
    assert_eq!(account.key().alg(), "ES384");
    let names = ["127.0.0.1", "ip.example.com"];
    let (pem, key, _url) = issue(&account, &tokens, &names, KeyType::EcdsaP384).await;
    verify_chain(&pebble, &pem, &names, &key).await;

    account.deactivate().await.unwrap();
    assert_eq!(account.body().status, "deactivated");
    let err = account
        .new_order(&NewOrder {
            identifiers: vec![Identifier::dns("after.example.com")],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.problem().map(|p| p.kind()),
        Some(ProblemKind::Unauthorized),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns01_via_challtestsrv_for_a_wildcard() {
    let Some((pebble, _tokens, client)) = start(PebbleOpts::default()).await else {
        return;
    };
    let account = new_account(&client, KeyType::EcdsaP256).await;
    let ids = vec![Identifier::dns("*.wild.example.com")];
    let order = account
        .new_order(&NewOrder {
            identifiers: ids.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let authz_url = &order.body.authorizations[0];
    let authz = account.authorization(authz_url).await.unwrap();
    assert!(authz.wildcard);
    assert_eq!(authz.identifier.value, "wild.example.com");
    assert!(
        authz.challenge("http-01").is_none(),
        "wildcards allow only dns-01"
    );
    let ch = authz.challenge("dns-01").unwrap();
    let ctx = certkeeper::challenge::ChallengeCtx {
        cert_name: "wild".into(),
        identifier: authz.identifier.value.clone(),
        is_ip: false,
        wildcard: true,
        kind: certkeeper::challenge::ChallengeKind::Dns01,
        token: ch.token.clone(),
        key_authorization: account.key_authorization(&ch.token),
        persist: None,
    };
    pebble
        .set_txt("_acme-challenge.wild.example.com.", &ctx.dns_txt_value())
        .await;
    account.respond(&ch.url).await.unwrap();
    account
        .poll_authorization(authz_url, &poll())
        .await
        .unwrap();
    pebble.clear_txt("_acme-challenge.wild.example.com.").await;
    let order = account.poll_order(&order.url, &poll()).await.unwrap();
    let key = KeyType::EcdsaP256.generate().unwrap();
    account
        .finalize(&order, &build_csr(&key, &ids).unwrap())
        .await
        .unwrap();
    let order = account.poll_order(&order.url, &poll()).await.unwrap();
    let chain = account
        .certificate(order.body.certificate.as_deref().unwrap())
        .await
        .unwrap();
    verify_chain(&pebble, &chain.pem, &["*.wild.example.com"], &key).await;
}
