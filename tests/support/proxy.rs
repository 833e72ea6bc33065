//! A switchable, TLS-terminating HTTP proxy in front of pebble (or, with [`Proxy::for_directory`],
//! any CA such as acme2certifier).
//!
//! certkeeper talks to `https://127.0.0.1:<proxy>/dir` and trusts the proxy's own test CA. The proxy
//! forwards each request to pebble with `Host` set to the proxy's address, so every URL pebble puts
//! in its answers (and checks in JWS headers) names the proxy. [`Mode`] makes it drop connections,
//! answer 500s, present an untrusted certificate, rate-limit new orders, or rewrite answers the way
//! a broken or hostile CA would. `Drop` and `UntrustedTls` act on new connections: a connection kept
//! alive from before the switch still works.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// What else is wrong with a forged chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flaw {
    /// Nothing: a consistent leaf + CA chain.
    None,
    /// The leaf expired yesterday.
    Expired,
    /// The chain's second certificate is not the leaf's issuer.
    WrongIssuer,
}

/// What the proxy does with requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward unchanged.
    Pass,
    /// Accept TCP connections and close them at once (the CA is unreachable).
    Drop,
    /// Answer every request with HTTP 500 and a non-ACME body.
    Status500,
    /// Accept requests and never answer them.
    Hang,
    /// Serve TLS with a certificate from a CA that certkeeper does not trust (requests are not
    /// forwarded: the handshake fails on certkeeper's side).
    UntrustedTls,
    /// Forward, but answer new-order requests (`/order-plz`) with HTTP 429, `Retry-After: N` seconds
    /// and a `rateLimited` problem document.
    RateLimited {
        /// The Retry-After value in seconds.
        retry_after_secs: u64,
    },
    /// Forward, but run this command (program, args) before answering a certificate download.
    OnCertDownload(Vec<String>),
    /// Forward, but replace the body of successful answers to paths starting with the prefix by
    /// broken JSON (error answers, e.g. pebble's random badNonce, pass unchanged).
    BadJson(String),
    /// Forward, but replace the body of successful answers to paths starting with the prefix by
    /// 3 MiB of JSON.
    HugeBody(String),
    /// Forward, but replace successful certificate downloads (`/certZ/...`) with this PEM (error
    /// answers such as pebble's random badNonce pass unchanged, as in all rewriting modes).
    ReplaceCert(String),
    /// Forward, but add these `(name, description)` pairs as `meta.profiles` to the directory (pebble
    /// 2.4 offers no profiles).
    AddProfiles(Vec<(String, String)>),
    /// Forward, but publish these names as `meta.caaIdentities` in the directory (pebble 2.4
    /// publishes none).
    AddCaaIdentities(Vec<String>),
    /// Forward, but replace certificate downloads with a forged chain for `names` whose leaf holds
    /// the public half of the private key in `key_file` (read at download time).
    ForgeForKey {
        /// A PEM private key file (certkeeper's pending key in its state directory).
        key_file: PathBuf,
        /// The names of the forged leaf.
        names: Vec<String>,
        /// How the forgery is broken beyond being from another CA.
        flaw: Flaw,
    },
}

struct Shared {
    mode: Mutex<Mode>,
    upstream: String,
    client: reqwest::Client,
    /// Requests (and dropped connections) seen while not in `Pass` mode.
    faulted: AtomicUsize,
    /// Requests forwarded in `Pass` mode.
    passed: AtomicUsize,
    /// Every POST seen: (path, body).
    posts: Mutex<Vec<(String, Bytes)>>,
    /// The upstream's directory path (`/dir` for pebble, `/directory` for acme2certifier).
    dir_path: String,
}

/// A running proxy; its accept loop ends when dropped.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
    /// The proxy's TLS CA (PEM file), for certkeeper's `ca_bundle`.
    pub ca_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// Start a proxy in front of `upstream` (e.g. `https://127.0.0.1:14000`), trusting `upstream_ca`.
    pub async fn start(upstream: &str, upstream_ca: &str) -> Proxy {
        Self::start_with_dir(upstream, upstream_ca, "/dir").await
    }

    /// Start a proxy in front of the CA whose directory is `directory_url` (any path), trusting
    /// `upstream_ca`.
    pub async fn for_directory(directory_url: &str, upstream_ca: &str) -> Proxy {
        let u = reqwest::Url::parse(directory_url).expect("directory URL");
        let upstream = format!("{}://{}", u.scheme(), u.authority());
        Self::start_with_dir(&upstream, upstream_ca, u.path()).await
    }

    async fn start_with_dir(upstream: &str, upstream_ca: &str, dir_path: &str) -> Proxy {
        let (ca_pem, leaf_pem, key_pem) = crate::support::pebble::make_tls_certs();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("proxy-ca.pem");
        std::fs::write(&ca_file, &ca_pem).unwrap();
        let identity =
            native_tls::Identity::from_pkcs8(leaf_pem.as_bytes(), key_pem.as_bytes()).unwrap();
        let acceptor = tokio_native_tls::TlsAcceptor::from(
            native_tls::TlsAcceptor::builder(identity).build().unwrap(),
        );
        // A second identity from a CA nobody trusts, for `Mode::UntrustedTls`.
        let (_, bad_leaf, bad_key) = crate::support::pebble::make_tls_certs();
        let bad_identity =
            native_tls::Identity::from_pkcs8(bad_leaf.as_bytes(), bad_key.as_bytes()).unwrap();
        let untrusted = tokio_native_tls::TlsAcceptor::from(
            native_tls::TlsAcceptor::builder(bad_identity)
                .build()
                .unwrap(),
        );
        let client = reqwest::Client::builder()
            .tls_certs_merge([reqwest::Certificate::from_pem(upstream_ca.as_bytes()).unwrap()])
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .unwrap();
        let shared = Arc::new(Shared {
            mode: Mutex::new(Mode::Pass),
            upstream: upstream.trim_end_matches('/').to_string(),
            client,
            faulted: AtomicUsize::new(0),
            passed: AtomicUsize::new(0),
            posts: Mutex::new(Vec::new()),
            dir_path: dir_path.to_string(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let s = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let mode = s.mode.lock().unwrap().clone();
                if mode == Mode::Drop {
                    s.faulted.fetch_add(1, Ordering::SeqCst);
                    drop(tcp);
                    continue;
                }
                let acceptor = if mode == Mode::UntrustedTls {
                    s.faulted.fetch_add(1, Ordering::SeqCst);
                    untrusted.clone()
                } else {
                    acceptor.clone()
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(handle(&s, addr, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Proxy {
            addr,
            shared,
            task,
            ca_file,
            _dir: dir,
        }
    }

    /// Start a proxy in front of a running pebble's ACME listener.
    pub async fn for_pebble(pebble: &crate::support::Pebble) -> Proxy {
        let url = pebble.directory_url();
        Proxy::start(url.trim_end_matches("/dir"), pebble.ca_pem()).await
    }

    /// The directory URL through the proxy.
    pub fn directory_url(&self) -> String {
        format!("https://{}{}", self.addr, self.shared.dir_path)
    }

    /// Switch the mode.
    pub fn set(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    /// Requests or connections seen in a faulty mode so far.
    pub fn faulted(&self) -> usize {
        self.shared.faulted.load(Ordering::SeqCst)
    }

    /// Requests forwarded unchanged so far.
    pub fn passed(&self) -> usize {
        self.shared.passed.load(Ordering::SeqCst)
    }

    /// The payloads of the JWS POSTs seen so far to paths starting with `prefix`, decoded (JSON;
    /// POST-as-GET's empty payload as `Null`), in order.
    pub fn jws_payloads(&self, prefix: &str) -> Vec<serde_json::Value> {
        use base64::Engine as _;
        self.shared
            .posts
            .lock()
            .unwrap()
            .iter()
            .filter(|(path, _)| path.starts_with(prefix))
            .map(|(_, body)| {
                let jws: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
                let payload = jws["payload"].as_str().unwrap_or_default();
                let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(payload)
                    .unwrap_or_default();
                serde_json::from_slice(&raw).unwrap_or(serde_json::Value::Null)
            })
            .collect()
    }
}

fn reply(status: u16, body: impl Into<Bytes>, ctype: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(body.into()))
        .unwrap()
}

async fn handle(s: &Shared, addr: SocketAddr, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let mode = s.mode.lock().unwrap().clone();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    match &mode {
        Mode::Pass => {
            s.passed.fetch_add(1, Ordering::SeqCst);
        }
        Mode::Status500 => {
            s.faulted.fetch_add(1, Ordering::SeqCst);
            return reply(500, "Internal Server Error\n", "text/plain");
        }
        Mode::Hang => {
            s.faulted.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<()>().await;
        }
        Mode::RateLimited { retry_after_secs }
            if req.method() == hyper::Method::POST && path.starts_with("/order-plz") =>
        {
            s.faulted.fetch_add(1, Ordering::SeqCst);
            let body = serde_json::json!({
                "type": "urn:ietf:params:acme:error:rateLimited",
                "detail": "too many new orders recently",
                "status": 429,
            });
            return Response::builder()
                .status(429)
                .header("content-type", "application/problem+json")
                .header("retry-after", retry_after_secs.to_string())
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap();
        }
        _ => {}
    }
    let method = req.method().clone();
    let mut headers = req.headers().clone();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return reply(400, "bad request body", "text/plain"),
    };
    if method == hyper::Method::POST {
        s.posts.lock().unwrap().push((path.clone(), body.clone()));
    }
    for h in ["host", "content-length", "connection", "transfer-encoding"] {
        headers.remove(h);
    }
    headers.insert("host", addr.to_string().parse().unwrap());
    let upstream = s
        .client
        .request(method, format!("{}{path}", s.upstream))
        .headers(headers)
        .body(body)
        .send()
        .await;
    let resp = match upstream {
        Ok(r) => r,
        Err(e) => return reply(502, format!("proxy: upstream failed: {e}"), "text/plain"),
    };
    let status = resp.status().as_u16();
    let rheaders = resp.headers().clone();
    let mut rbody = resp.bytes().await.unwrap_or_default();
    let mut ctype = None;
    match &mode {
        Mode::BadJson(prefix) if path.starts_with(prefix.as_str()) && status < 300 => {
            s.faulted.fetch_add(1, Ordering::SeqCst);
            rbody = Bytes::from_static(b"{\"status\": \"valid\", \"identifiers\": 5, ");
        }
        Mode::HugeBody(prefix) if path.starts_with(prefix.as_str()) && status < 300 => {
            s.faulted.fetch_add(1, Ordering::SeqCst);
            let mut v = b"{\"status\": \"pending\", \"pad\": \"".to_vec();
            v.resize(3 * 1024 * 1024, b'x');
            v.extend_from_slice(b"\"}");
            rbody = Bytes::from(v);
        }
        Mode::AddProfiles(profiles) if path == s.dir_path && status < 300 => {
            s.faulted.fetch_add(1, Ordering::SeqCst);
            let mut d: serde_json::Value = serde_json::from_slice(&rbody).unwrap_or_default();
            let map: serde_json::Map<String, serde_json::Value> = profiles
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect();
            d["meta"]["profiles"] = serde_json::Value::Object(map);
            rbody = Bytes::from(d.to_string().into_bytes());
        }
        Mode::AddCaaIdentities(names) if path == "/dir" && status < 300 => {
            s.faulted.fetch_add(1, Ordering::SeqCst);
            let mut d: serde_json::Value = serde_json::from_slice(&rbody).unwrap_or_default();
            d["meta"]["caaIdentities"] = names.clone().into();
            rbody = Bytes::from(d.to_string().into_bytes());
        }
        Mode::OnCertDownload(cmd) if path.starts_with("/certZ/") && status < 300 => {
            s.faulted.fetch_add(1, Ordering::SeqCst);
            let _ = std::process::Command::new(&cmd[0]).args(&cmd[1..]).status();
        }
        Mode::ForgeForKey {
            key_file,
            names,
            flaw,
        } if path.starts_with("/certZ/") && status < 300 => {
            s.faulted.fetch_add(1, Ordering::SeqCst);
            let key = std::fs::read(key_file)
                .ok()
                .and_then(|pem| openssl::pkey::PKey::private_key_from_pem(&pem).ok());
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            rbody = Bytes::from(forged_chain_with(&names, key.as_deref(), *flaw).into_bytes());
            ctype = Some("application/pem-certificate-chain");
        }
        Mode::ReplaceCert(pem) if path.starts_with("/certZ/") && status < 300 => {
            s.faulted.fetch_add(1, Ordering::SeqCst);
            rbody = Bytes::from(pem.clone().into_bytes());
            ctype = Some("application/pem-certificate-chain");
        }
        _ => {}
    }
    let mut b = Response::builder().status(status);
    for (k, v) in &rheaders {
        let n = k.as_str();
        if n == "content-length" || n == "transfer-encoding" || n == "connection" {
            continue;
        }
        if n == "content-type" && ctype.is_some() {
            continue;
        }
        b = b.header(k, v);
    }
    if let Some(c) = ctype {
        b = b.header("content-type", c);
    }
    b.body(Full::new(rbody)).unwrap()
}

/// A leaf for `names` signed by a fresh self-signed CA, as `leaf + CA` PEM. The leaf holds the public
/// half of `key` when given, else of a fresh key.
pub fn forged_chain(
    names: &[&str],
    key: Option<&openssl::pkey::PKeyRef<openssl::pkey::Private>>,
) -> String {
    forged_chain_with(names, key, Flaw::None)
}

/// [`forged_chain`] with a [`Flaw`].
pub fn forged_chain_with(
    names: &[&str],
    key: Option<&openssl::pkey::PKeyRef<openssl::pkey::Private>>,
    flaw: Flaw,
) -> String {
    use openssl::asn1::Asn1Time;
    use openssl::hash::MessageDigest;
    use openssl::pkey::PKey;
    use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
    use openssl::x509::{X509, X509NameBuilder};
    let gen_key = || {
        PKey::from_ec_key(
            openssl::ec::EcKey::generate(
                &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1)
                    .unwrap(),
            )
            .unwrap(),
        )
        .unwrap()
    };
    let name = |cn: &str| {
        let mut n = X509NameBuilder::new().unwrap();
        n.append_entry_by_text("CN", cn).unwrap();
        n.build()
    };
    let ca_key = gen_key();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_subject_name(&name("forged CA")).unwrap();
    b.set_issuer_name(&name("forged CA")).unwrap();
    b.set_pubkey(&ca_key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(90).unwrap())
        .unwrap();
    b.append_extension(BasicConstraints::new().ca().build().unwrap())
        .unwrap();
    b.sign(&ca_key, MessageDigest::sha256()).unwrap();
    let ca = b.build();
    let fresh = gen_key();
    let leaf_key: &openssl::pkey::PKeyRef<openssl::pkey::Private> = key.unwrap_or(&fresh);
    let public = PKey::public_key_from_der(&leaf_key.public_key_to_der().unwrap()).unwrap();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_subject_name(&name(names[0])).unwrap();
    b.set_issuer_name(ca.subject_name()).unwrap();
    b.set_pubkey(&public).unwrap();
    if flaw == Flaw::Expired {
        let day = 86400;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        b.set_not_before(&Asn1Time::from_unix(now - 90 * day).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::from_unix(now - day).unwrap())
            .unwrap();
    } else {
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(90).unwrap())
            .unwrap();
    }
    let mut san = SubjectAlternativeName::new();
    for n in names {
        san.dns(n);
    }
    let san = san.build(&b.x509v3_context(Some(&ca), None)).unwrap();
    b.append_extension(san).unwrap();
    b.sign(&ca_key, MessageDigest::sha256()).unwrap();
    let leaf = b.build();
    let mut pem = String::from_utf8(leaf.to_pem().unwrap()).unwrap();
    if flaw == Flaw::WrongIssuer {
        // Another CA with the same name but its own key: the leaf's signature does not verify.
        let other_key = gen_key();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_subject_name(&name("forged CA")).unwrap();
        b.set_issuer_name(&name("forged CA")).unwrap();
        b.set_pubkey(&other_key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(90).unwrap())
            .unwrap();
        b.append_extension(BasicConstraints::new().ca().build().unwrap())
            .unwrap();
        b.sign(&other_key, MessageDigest::sha256()).unwrap();
        pem.push_str(&String::from_utf8(b.build().to_pem().unwrap()).unwrap());
    } else {
        pem.push_str(&String::from_utf8(ca.to_pem().unwrap()).unwrap());
    }
    pem
}
