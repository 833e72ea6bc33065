//! Cloudflare, Route 53 and acme-dns providers against an in-test axum server that records every
//! request (method, path, query, headers, body) and answers like the vendor API.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use certkeeper::challenge::dns01::TxtRecord;
use certkeeper::challenge::dns01::providers::{DnsProviderConfig, sigv4};

#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    query: String,
    headers: HeaderMap,
    body: String,
}

type Responder = fn(&Seen) -> (StatusCode, String);

#[derive(Clone)]
struct Mock {
    seen: Arc<Mutex<Vec<Seen>>>,
    respond: Responder,
}

async fn handle(
    State(m): State<Mock>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let seen = Seen {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or("").to_string(),
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let out = (m.respond)(&seen);
    m.seen.lock().unwrap().push(seen);
    out
}

/// Serve `respond` on 127.0.0.1:0; returns the base URL and the request log.
async fn serve(respond: Responder) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let app = axum::Router::new().fallback(handle).with_state(Mock {
        seen: seen.clone(),
        respond,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

fn rec(value: &str, zone: Option<&str>) -> TxtRecord {
    TxtRecord {
        fqdn: "_acme-challenge.www.example.com.".into(),
        zone: zone.map(Into::into),
        value: value.into(),
        ttl: 60,
    }
}

fn secret_file(dir: &tempfile::TempDir, name: &str, value: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, format!("{value}\n")).unwrap();
    p.display().to_string()
}

fn cloudflare_api(s: &Seen) -> (StatusCode, String) {
    if s.headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer cf-token") {
        return (
            StatusCode::FORBIDDEN,
            r#"{"success":false,"errors":[{"code":9109,"message":"Invalid access token"}]}"#.into(),
        );
    }
    match (s.method.as_str(), s.path.as_str(), s.query.as_str()) {
        ("GET", "/client/v4/zones", "name=example.com") => (
            StatusCode::OK,
            r#"{"success":true,"errors":[],"result":[{"id":"zone-1","name":"example.com"}]}"#
                .into(),
        ),
        ("GET", "/client/v4/zones", _) => (
            StatusCode::OK,
            r#"{"success":true,"errors":[],"result":[]}"#.into(),
        ),
        ("POST", "/client/v4/zones/zone-1/dns_records", _) => {
            let body: serde_json::Value = serde_json::from_str(&s.body).unwrap();
            let id = format!("rec-{}", body["content"].as_str().unwrap_or(""));
            (
                StatusCode::OK,
                format!(r#"{{"success":true,"errors":[],"result":{{"id":"{id}"}}}}"#),
            )
        }
        ("GET", "/client/v4/zones/zone-1/dns_records", q) => {
            // Lookup by name and value: only "lost" exists.
            let hit = q == "type=TXT&name=_acme-challenge.www.example.com&content=lost";
            let result = if hit { r#"[{"id":"rec-lost"}]"# } else { "[]" };
            (
                StatusCode::OK,
                format!(r#"{{"success":true,"errors":[],"result":{result}}}"#),
            )
        }
        ("DELETE", p, _) if p.starts_with("/client/v4/zones/zone-1/dns_records/rec-") => (
            StatusCode::OK,
            r#"{"success":true,"errors":[],"result":{"id":"x"}}"#.into(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            r#"{"success":false,"errors":[{"message":"no route"}]}"#.into(),
        ),
    }
}

#[tokio::test]
async fn cloudflare_finds_zone_creates_and_deletes_by_id() {
    let (base, seen) = serve(cloudflare_api).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg: DnsProviderConfig = toml::from_str(&format!(
        "provider = \"cloudflare\"\napi_token_file = \"{}\"\nbase_url = \"{base}/client/v4\"",
        secret_file(&dir, "cf", "cf-token")
    ))
    .unwrap();
    let p = cfg.build().unwrap();
    // No zone known: the provider walks up the name until Cloudflare knows the zone.
    let r = rec("val1", None);
    let h = p.present(&r).await.expect("present");
    assert_eq!(h.id.as_deref(), Some("zone-1/rec-val1"));
    p.cleanup(&r, h).await.expect("cleanup");
    let log = seen.lock().unwrap().clone();
    let calls: Vec<String> = log
        .iter()
        .map(|s| format!("{} {}?{}", s.method, s.path, s.query))
        .collect();
    assert_eq!(
        calls,
        vec![
            "GET /client/v4/zones?name=_acme-challenge.www.example.com",
            "GET /client/v4/zones?name=www.example.com",
            "GET /client/v4/zones?name=example.com",
            "POST /client/v4/zones/zone-1/dns_records?",
            "DELETE /client/v4/zones/zone-1/dns_records/rec-val1?",
        ]
    );
    let body: serde_json::Value = serde_json::from_str(&log[3].body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"type": "TXT", "name": "_acme-challenge.www.example.com", "content": "val1", "ttl": 60})
    );

    // Without an id (present's answer was lost) cleanup finds the record by name and value.
    seen.lock().unwrap().clear();
    p.cleanup(&rec("lost", Some("example.com.")), Default::default())
        .await
        .expect("cleanup by value");
    let calls: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| format!("{} {}", s.method, s.path))
        .collect();
    assert_eq!(
        calls,
        vec![
            "GET /client/v4/zones",
            "GET /client/v4/zones/zone-1/dns_records",
            "DELETE /client/v4/zones/zone-1/dns_records/rec-lost",
        ]
    );

    // A bad token is reported with the API's words and a hint.
    let cfg: DnsProviderConfig = toml::from_str(&format!(
        "provider = \"cloudflare\"\napi_token_file = \"{}\"\nbase_url = \"{base}/client/v4\"",
        secret_file(&dir, "cf2", "wrong")
    ))
    .unwrap();
    let msg = cfg
        .build()
        .unwrap()
        .present(&rec("v", Some("example.com.")))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("HTTP 403") && msg.contains("Invalid access token"),
        "{msg}"
    );
}

fn route53_api(s: &Seen) -> (StatusCode, String) {
    match (s.method.as_str(), s.path.as_str()) {
        ("GET", "/2013-04-01/hostedzonesbyname") => (
            StatusCode::OK,
            "<?xml version=\"1.0\"?><ListHostedZonesByNameResponse><HostedZones><HostedZone><Id>/hostedzone/Z123</Id><Name>example.com.</Name></HostedZone></HostedZones></ListHostedZonesByNameResponse>".into(),
        ),
        ("POST", "/2013-04-01/hostedzone/Z123/rrset") => (
            StatusCode::OK,
            "<?xml version=\"1.0\"?><ChangeResourceRecordSetsResponse><ChangeInfo><Id>/change/C1</Id><Status>PENDING</Status></ChangeInfo></ChangeResourceRecordSetsResponse>".into(),
        ),
        _ => (StatusCode::NOT_FOUND, "<Error><Message>no route</Message></Error>".into()),
    }
}

#[tokio::test]
async fn route53_signs_requests_and_keeps_both_values() {
    let (base, seen) = serve(route53_api).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg: DnsProviderConfig = toml::from_str(&format!(
        "provider = \"route53\"\naccess_key_id = \"AKIDTEST\"\nsecret_access_key_file = \"{}\"\nbase_url = \"{base}\"",
        secret_file(&dir, "aws", "secretkey")
    ))
    .unwrap();
    let p = cfg.build().unwrap();
    let a = rec("apex", Some("example.com."));
    let w = rec("wild", Some("example.com."));
    let ha = p.present(&a).await.expect("present a");
    let hw = p.present(&w).await.expect("present w");
    p.cleanup(&a, ha).await.expect("cleanup a");
    p.cleanup(&w, hw).await.expect("cleanup w");

    let seen = seen.lock().unwrap().clone();
    let host = base.trim_start_matches("http://").to_string();
    for s in &seen {
        // Recompute the signature from what arrived: the server side of SigV4.
        let date = s.headers["x-amz-date"].to_str().unwrap();
        let headers = [("host", host.as_str()), ("x-amz-date", date)];
        let expected = sigv4::sign(
            &sigv4::Request {
                method: &s.method,
                path: &s.path,
                query: &s.query,
                headers: &headers,
                payload: s.body.as_bytes(),
            },
            "AKIDTEST",
            "secretkey",
            "us-east-1",
            "route53",
            date,
        );
        assert_eq!(
            s.headers["authorization"].to_str().unwrap(),
            expected.authorization,
            "{} {}",
            s.method,
            s.path
        );
        assert!(
            expected
                .authorization
                .starts_with("AWS4-HMAC-SHA256 Credential=AKIDTEST/")
        );
    }
    let calls: Vec<String> = seen
        .iter()
        .map(|s| format!("{} {}", s.method, s.path))
        .collect();
    assert_eq!(calls[0], "GET /2013-04-01/hostedzonesbyname");
    assert_eq!(seen[0].query, "dnsname=example.com&maxitems=1");
    let changes: Vec<&Seen> = seen.iter().filter(|s| s.method == "POST").collect();
    assert_eq!(changes.len(), 4);
    let v = |x: &str| format!("<ResourceRecord><Value>&quot;{x}&quot;</Value></ResourceRecord>");
    assert!(
        changes[0].body.contains("<Action>UPSERT</Action>") && changes[0].body.contains(&v("apex"))
    );
    assert!(
        changes[1].body.contains("<Action>UPSERT</Action>")
            && changes[1].body.contains(&v("apex"))
            && changes[1].body.contains(&v("wild"))
    );
    assert!(
        changes[2].body.contains("<Action>UPSERT</Action>")
            && !changes[2].body.contains(&v("apex"))
            && changes[2].body.contains(&v("wild"))
    );
    assert!(
        changes[3].body.contains("<Action>DELETE</Action>") && changes[3].body.contains(&v("wild"))
    );
    assert!(
        changes[0]
            .body
            .contains("<Name>_acme-challenge.www.example.com.</Name>")
    );
}

fn acme_dns_api(s: &Seen) -> (StatusCode, String) {
    let user = s.headers.get("x-api-user").and_then(|v| v.to_str().ok());
    let key = s.headers.get("x-api-key").and_then(|v| v.to_str().ok());
    if s.method != "POST" || s.path != "/update" {
        return (StatusCode::NOT_FOUND, "{}".into());
    }
    if user != Some("user-1") || key != Some("pass-1") {
        return (StatusCode::UNAUTHORIZED, r#"{"error": "forbidden"}"#.into());
    }
    let body: serde_json::Value = serde_json::from_str(&s.body).unwrap_or_default();
    (StatusCode::OK, format!(r#"{{"txt": {}}}"#, body["txt"]))
}

#[tokio::test]
async fn acme_dns_updates_and_cleanup_is_noop() {
    let (base, seen) = serve(acme_dns_api).await;
    // SAFETY: variable unique to this test.
    unsafe { std::env::set_var("CK_ACMEDNS_PASS", "pass-1") };
    let cfg: DnsProviderConfig = toml::from_str(&format!(
        "provider = \"acme-dns\"\napi_url = \"{base}\"\nusername = \"user-1\"\npassword_env = \"CK_ACMEDNS_PASS\"\nsubdomain = \"d420c923-bbd7-4056-ab64-c3ca54c9b3cf\""
    ))
    .unwrap();
    let p = cfg.build().unwrap();
    let r = rec("val-acme", None);
    let h = p.present(&r).await.expect("present");
    p.cleanup(&r, h).await.expect("cleanup");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "cleanup must not call acme-dns");
    let body: serde_json::Value = serde_json::from_str(&seen[0].body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"subdomain": "d420c923-bbd7-4056-ab64-c3ca54c9b3cf", "txt": "val-acme"})
    );

    unsafe { std::env::set_var("CK_ACMEDNS_BAD", "nope") };
    let cfg: DnsProviderConfig = toml::from_str(&format!(
        "provider = \"acme-dns\"\napi_url = \"{base}\"\nusername = \"user-1\"\npassword_env = \"CK_ACMEDNS_BAD\"\nsubdomain = \"s\""
    ))
    .unwrap();
    let msg = cfg
        .build()
        .unwrap()
        .present(&r)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("HTTP 401") && msg.contains("forbidden"),
        "{msg}"
    );
}

/// A server that answers every request with `307` to `target` + the request path, recording the
/// requests it saw.
async fn redirector(target: Option<String>) -> (String, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let own = format!("http://{}", listener.local_addr().unwrap());
    // Without a target, redirect to the same origin: /update -> /moved/update, answered there.
    let target = target.unwrap_or_else(|| format!("{own}/moved"));
    let log = seen.clone();
    let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
        let (log, target) = (log.clone(), target.clone());
        async move {
            log.lock().unwrap().push(uri.path().to_string());
            if uri.path().starts_with("/moved/") {
                let key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
                let status = if key == Some("pass-r") {
                    StatusCode::OK
                } else {
                    StatusCode::UNAUTHORIZED
                };
                return (status, HeaderMap::new(), "{}".to_string());
            }
            let mut h = HeaderMap::new();
            h.insert(
                "location",
                format!("{target}{}", uri.path()).parse().unwrap(),
            );
            (StatusCode::TEMPORARY_REDIRECT, h, String::new())
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (own, seen)
}

fn acme_dns_at(base: &str) -> DnsProviderConfig {
    // SAFETY: variable unique to this test.
    unsafe { std::env::set_var("CK_ACMEDNS_REDIRECT", "pass-r") };
    toml::from_str(&format!(
        "provider = \"acme-dns\"\napi_url = \"{base}\"\nusername = \"user-1\"\npassword_env = \"CK_ACMEDNS_REDIRECT\"\nsubdomain = \"s\""
    ))
    .unwrap()
}

/// The API key is sent in a header: a redirect to another port (another origin) must not be followed,
/// or the key would go with it; a redirect on the same origin still works.
#[tokio::test]
async fn provider_clients_follow_no_redirect_to_another_origin() {
    let (other, other_seen) = serve(acme_dns_api).await;
    let (base, seen) = redirector(Some(other)).await;
    let msg = acme_dns_at(&base)
        .build()
        .unwrap()
        .present(&rec("v", None))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("HTTP 307") && msg.contains("not followed"),
        "{msg}"
    );
    assert_eq!(*seen.lock().unwrap(), ["/update"]);
    assert!(
        other_seen.lock().unwrap().is_empty(),
        "the other origin got the API key: {:?}",
        other_seen.lock().unwrap()
    );

    let (base, seen) = redirector(None).await;
    acme_dns_at(&base)
        .build()
        .unwrap()
        .present(&rec("v", None))
        .await
        .expect("a same-origin redirect is followed");
    assert_eq!(*seen.lock().unwrap(), ["/update", "/moved/update"]);
}
