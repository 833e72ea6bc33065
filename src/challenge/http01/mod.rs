//! HTTP-01: one long-lived axum listener that answers `/.well-known/acme-challenge/{token}`.
//!
//! The [`Http01Solver`] only inserts into and removes from a shared [`TokenStore`]; the listener
//! ([`Http01Server`]) reads it. In a fleet the store also publishes to, and answers from, the
//! tokens every node shares ([`SharedTokens`]). Put it behind nginx with
//! `location /.well-known/acme-challenge/ { proxy_pass http://127.0.0.1:8402; }` or bind port 80 directly.
//!
//! Defences, after lego and acme-redirect: only `GET`/`HEAD` of that one path; tokens must be
//! base64url (`^[A-Za-z0-9_-]{1,255}$`) before any lookup; when the request has a `Host`, it must be the
//! token's identifier (DNS rebinding guard); request bodies are never read and are capped; each request
//! has a time limit.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::DirBuilderExt as _;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use super::{ChallengeCtx, ChallengeKind, SolveError, Solver};
use crate::listener::{ConnLimiter, Limits};

pub mod selfcheck;

pub use selfcheck::SelfCheckTarget;

/// The `Server` header of the listener's answers outside the challenge path, so that
/// `certkeeper check` can tell a running certkeeper from another program on the address.
pub const SERVER_NAME: &str = "certkeeper";
/// A header on the listener's 404 answers for the challenge path saying why (`unknown-token`,
/// `wrong-host`); proxies pass it through, so the self-check can name the cause.
pub const DIAG_HEADER: &str = "x-certkeeper";
/// The path prefix the CA requests (RFC 8555 §8.3).
pub const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";
/// Longest time one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Challenge requests have no body; anything larger than this is refused.
const BODY_LIMIT: usize = 1024;
/// Default cap on open connections, over all listen addresses. High enough that one peer at its
/// per-IP cap leaves room for the CA; keep `LimitNOFILE=` above it.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default cap on open connections from one IP address (one IPv6 /64). A CA validates every name
/// of an order at once, from each of its perspectives, and nginx proxying `/.well-known/` to the
/// listener connects from one address: the cap only keeps a single peer from taking every slot.
pub const DEFAULT_MAX_PER_IP: usize = 256;
/// Default time a request's headers (and the next request on an idle keep-alive connection) may
/// take: a CA's validation request takes well under a second.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Default cap on a connection's lifetime.
pub const DEFAULT_CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// The limits the HTTP-01 listener enforces by default.
pub const DEFAULT_LIMITS: Limits = Limits {
    max_connections: DEFAULT_MAX_CONNECTIONS,
    max_per_ip: DEFAULT_MAX_PER_IP,
    header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
    lifetime: DEFAULT_CONNECTION_LIFETIME,
};

/// What is served for one token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The response body: the key authorization.
    pub key_authorization: String,
    /// The identifier (DNS name or IP) the challenge is for; the request `Host` must match it.
    pub identifier: String,
}

/// Where the nodes of a fleet share their tokens (PostgreSQL:
/// [`crate::store::postgres::PgTokens`]), so that every node's listener answers the challenges of
/// whichever node orders.
#[async_trait::async_trait]
pub trait SharedTokens: Send + Sync + std::fmt::Debug {
    /// Make `token` answered by every node; an error says why not (the order is retried).
    async fn publish(&self, token: &str, entry: &Entry) -> Result<(), String>;
    /// Stop every node answering `token`.
    async fn withdraw(&self, token: &str) -> Result<(), String>;
    /// A token another node published that was pushed to this one (no I/O).
    fn cached(&self, token: &str) -> Option<Entry>;
    /// Look `token` up in the shared store: one query, bounded by a short timeout; `None` when it
    /// is unknown or the store does not answer.
    async fn lookup(&self, token: &str) -> Option<Entry>;
}

/// The tokens currently answered, shared between solver and listener.
///
/// A store may also have a *spool*: a directory (under the state directory) where another certkeeper
/// process publishes its tokens. The daemon, which owns the listening port, answers tokens from its
/// spool too, so `certkeeper renew` run by hand while the daemon is up still passes HTTP-01: renew
/// cannot bind the port, publishes into the spool instead, and the daemon serves them.
///
/// In a fleet the store also has a [`SharedTokens`]: what this process publishes goes there too,
/// and the listener answers the tokens other nodes published (pushed to it, or looked up on a miss).
#[derive(Clone, Debug, Default)]
pub struct TokenStore {
    inner: Arc<RwLock<HashMap<String, Entry>>>,
    spool: Option<Arc<Spool>>,
    fleet: Option<Arc<dyn SharedTokens>>,
}

#[derive(Debug)]
struct Spool {
    dir: std::path::PathBuf,
    /// This process writes its tokens there (it has no listener of its own).
    publish: bool,
}

impl TokenStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store that also answers tokens another process published in `dir` (the daemon's side).
    pub fn reading_spool(dir: impl Into<std::path::PathBuf>) -> Self {
        Self {
            inner: Arc::default(),
            spool: Some(Arc::new(Spool {
                dir: dir.into(),
                publish: false,
            })),
            fleet: None,
        }
    }

    /// A store that publishes its tokens in `dir` for a running daemon to serve (`renew`'s side when
    /// the port is taken). The directory is created 0700.
    pub fn publishing_spool(dir: impl Into<std::path::PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        Ok(Self {
            inner: Arc::default(),
            spool: Some(Arc::new(Spool { dir, publish: true })),
            fleet: None,
        })
    }

    /// The same store, also publishing to and answering from the fleet's `shared` tokens.
    pub fn with_fleet(mut self, shared: Option<Arc<dyn SharedTokens>>) -> Self {
        self.fleet = shared;
        self
    }

    /// True when this store publishes tokens for another process to serve.
    pub fn publishes(&self) -> bool {
        self.spool.as_ref().is_some_and(|s| s.publish)
    }

    /// Serve `entry` for `token` (replacing an earlier entry for the same token): here, through the
    /// spool when this process has no listener, and on every node of a fleet. When the fleet cannot
    /// be reached the token is served nowhere and the error says why.
    pub async fn publish(&self, token: &str, entry: Entry) -> Result<(), String> {
        self.insert(token, entry.clone());
        let Some(fleet) = &self.fleet else {
            return Ok(());
        };
        if let Err(e) = fleet.publish(token, &entry).await {
            self.remove(token);
            return Err(e);
        }
        Ok(())
    }

    /// Stop serving `token`, here and on every node; returns what was served here.
    pub async fn withdraw(&self, token: &str) -> Option<Entry> {
        let was = self.remove(token);
        if let Some(fleet) = &self.fleet
            && let Err(e) = fleet.withdraw(token).await
        {
            tracing::warn!(error = %e, "cannot withdraw an HTTP-01 token from the fleet; it expires on its own");
        }
        was
    }

    fn insert(&self, token: &str, entry: Entry) {
        let token = token.to_string();
        if let Some(spool) = self.spool.as_ref().filter(|s| s.publish)
            && valid_token(&token)
        {
            let tmp = spool.dir.join(format!(".{token}.tmp"));
            let body = format!("{}\n{}", entry.identifier, entry.key_authorization);
            let written = std::fs::write(&tmp, body)
                .and_then(|()| std::fs::rename(&tmp, spool.dir.join(&token)));
            if let Err(e) = written {
                tracing::warn!(dir = %spool.dir.display(), error = %e, "cannot publish an HTTP-01 token for the running daemon");
            }
        }
        let mut map = self.inner.write().unwrap_or_else(|p| p.into_inner());
        map.insert(token, entry);
    }

    fn remove(&self, token: &str) -> Option<Entry> {
        if let Some(spool) = self.spool.as_ref().filter(|s| s.publish)
            && valid_token(token)
        {
            let _ = std::fs::remove_file(spool.dir.join(token));
        }
        let mut map = self.inner.write().unwrap_or_else(|p| p.into_inner());
        map.remove(token)
    }

    /// What is served for `token` without asking the fleet's store: this process's own tokens
    /// first, then the spool's, then those other nodes pushed.
    pub fn get(&self, token: &str) -> Option<Entry> {
        {
            let map = self.inner.read().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = map.get(token) {
                return Some(e.clone());
            }
        }
        if !valid_token(token) {
            return None;
        }
        self.spooled(token)
            .or_else(|| self.fleet.as_ref()?.cached(token))
    }

    /// What is served for `token`: [`Self::get`], then one lookup in the fleet's store.
    pub async fn find(&self, token: &str) -> Option<Entry> {
        if let Some(e) = self.get(token) {
            return Some(e);
        }
        if !valid_token(token) {
            return None;
        }
        self.fleet.as_ref()?.lookup(token).await
    }

    fn spooled(&self, token: &str) -> Option<Entry> {
        let spool = self.spool.as_ref()?;
        let text = std::fs::read_to_string(spool.dir.join(token)).ok()?;
        let (identifier, key_authorization) = text.split_once('\n')?;
        Some(Entry {
            key_authorization: key_authorization.to_string(),
            identifier: identifier.to_string(),
        })
    }

    /// How many tokens this process serves itself.
    pub fn len(&self) -> usize {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// True when this process serves no token itself.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The router answering HTTP-01 challenges from `tokens`; everything else is 404.
pub fn router(tokens: TokenStore) -> Router {
    Router::new()
        .route("/.well-known/acme-challenge/{token}", get(serve_token))
        .fallback(|| async { (StatusCode::NOT_FOUND, [(header::SERVER, SERVER_NAME)]) })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(limit_request))
        .with_state(tokens)
}

async fn limit_request(req: Request, next: Next) -> Response {
    let too_big = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > BODY_LIMIT as u64);
    if too_big {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => StatusCode::REQUEST_TIMEOUT.into_response(),
    }
}

async fn serve_token(
    State(tokens): State<TokenStore>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !valid_token(&token) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let Some(entry) = tokens.find(&token).await else {
        tracing::debug!(token = %token, "HTTP-01 request for an unknown token");
        return (StatusCode::NOT_FOUND, [(DIAG_HEADER, "unknown-token")]).into_response();
    };
    if let Some(host) = headers.get(header::HOST) {
        let ok = host
            .to_str()
            .is_ok_and(|h| host_matches(h, &entry.identifier));
        if !ok {
            tracing::warn!(
                token = %token, identifier = %entry.identifier, host = ?host,
                "HTTP-01 request with a Host that is not the challenge's identifier; answered 404"
            );
            return (StatusCode::NOT_FOUND, [(DIAG_HEADER, "wrong-host")]).into_response();
        }
    }
    tracing::debug!(identifier = %entry.identifier, "served HTTP-01 challenge");
    (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        entry.key_authorization,
    )
        .into_response()
}

/// True for a base64url token of 1..=255 characters.
pub fn valid_token(t: &str) -> bool {
    (1..=255).contains(&t.len())
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether a `Host` header value (with optional port) names `identifier`.
///
/// DNS names compare case-insensitively, ignoring a trailing dot; IP identifiers compare as
/// addresses (`[::1]:80` matches `::1`).
fn host_matches(host: &str, identifier: &str) -> bool {
    let host = host.trim();
    let bare = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((inside, _)) => inside,
            None => return false,
        }
    } else if host.matches(':').count() == 1 {
        host.split_once(':').map_or(host, |(h, _)| h)
    } else {
        host
    };
    match identifier.parse::<IpAddr>() {
        Ok(ip) => bare.parse::<IpAddr>().is_ok_and(|h| h == ip),
        Err(_) => bare
            .trim_end_matches('.')
            .eq_ignore_ascii_case(identifier.trim_end_matches('.')),
    }
}

/// Errors of the HTTP-01 listener.
#[derive(Debug, thiserror::Error)]
pub enum Http01Error {
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {reason}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What went wrong and what to do.
        reason: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A bound socket could not be handed to the runtime.
    #[error("cannot serve on {addr}: {source}")]
    Serve {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The HTTP-01 listeners, bound but not yet serving.
#[derive(Debug)]
pub struct Http01Server {
    listeners: Vec<std::net::TcpListener>,
    tokens: TokenStore,
    limits: Limits,
}

impl Http01Server {
    /// Bind every address first, so a bad address fails before anything is served.
    pub fn bind(addrs: &[SocketAddr], tokens: TokenStore) -> Result<Self, Http01Error> {
        let mut listeners = Vec::with_capacity(addrs.len());
        for &addr in addrs {
            let l = std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|source| {
                    let reason = match source.kind() {
                        std::io::ErrorKind::PermissionDenied => format!(
                            "permission denied — run as root, give CAP_NET_BIND_SERVICE, or listen on a high \
                             port behind nginx proxy_pass ({source})"
                        ),
                        std::io::ErrorKind::AddrInUse => format!(
                            "address already in use — another server (nginx?) listens there; proxy \
                             /.well-known/acme-challenge/ from it to a free port and listen on that ({source})"
                        ),
                        std::io::ErrorKind::AddrNotAvailable => {
                            format!("no such local address on this host — fix http01.listen ({source})")
                        }
                        _ => source.to_string(),
                    };
                    Http01Error::Bind { addr, reason, source }
                })?;
            listeners.push(l);
        }
        Ok(Self {
            listeners,
            tokens,
            limits: DEFAULT_LIMITS,
        })
    }

    /// Change the connection limits (default [`DEFAULT_LIMITS`]); the caps count connections over
    /// all listen addresses together.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The bound addresses (with the real port when port 0 was asked for).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Start serving on every listener until `shutdown` is cancelled. Must be called inside a
    /// tokio runtime; returns one task per listener.
    pub fn serve(
        self,
        shutdown: CancellationToken,
    ) -> Result<Vec<tokio::task::JoinHandle<()>>, Http01Error> {
        let app = router(self.tokens);
        let limits = self.limits;
        let limiter = ConnLimiter::new(limits.max_connections, limits.max_per_ip);
        let mut tasks = Vec::new();
        for l in self.listeners {
            let addr = l.local_addr().map_err(|source| Http01Error::Serve {
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                source,
            })?;
            let listener = tokio::net::TcpListener::from_std(l)
                .map_err(|source| Http01Error::Serve { addr, source })?;
            let app = app.clone();
            let limiter = limiter.clone();
            let stop = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                tracing::info!(%addr, "HTTP-01 listener started");
                crate::listener::serve_with(listener, app, limits, limiter, "http01", stop).await;
            }));
        }
        Ok(tasks)
    }
}

/// The HTTP-01 solver: publishes key authorizations in the [`TokenStore`] the listener serves.
#[derive(Clone, Debug)]
pub struct Http01Solver {
    /// The store shared with the [`Http01Server`].
    pub tokens: TokenStore,
    /// Whether [`Solver::wait`] fetches `http://<identifier>/.well-known/acme-challenge/<token>`
    /// itself, as the CA will, before the CA is asked to validate ([`selfcheck`]).
    pub self_check: bool,
    /// Where the self-check connects (port 80 of the name's addresses unless overridden).
    pub self_check_target: SelfCheckTarget,
    /// certkeeper's own listen addresses, named in self-check advice.
    pub listeners: Vec<SocketAddr>,
}

impl Http01Solver {
    /// A solver publishing into `tokens`.
    pub fn new(tokens: TokenStore, self_check: bool) -> Self {
        Self {
            tokens,
            self_check,
            self_check_target: SelfCheckTarget::default(),
            listeners: Vec::new(),
        }
    }

    /// Check through `target` and name `listeners` in advice (turns the self-check on).
    pub fn with_self_check(mut self, target: SelfCheckTarget, listeners: Vec<SocketAddr>) -> Self {
        self.self_check = true;
        self.self_check_target = target;
        self.listeners = listeners;
        self
    }
}

#[async_trait::async_trait]
impl Solver for Http01Solver {
    fn kind(&self) -> ChallengeKind {
        ChallengeKind::Http01
    }

    async fn present(&self, ch: &ChallengeCtx) -> Result<(), SolveError> {
        if !valid_token(&ch.token) {
            return Err(SolveError::permanent(format!(
                "certificate '{}': the CA sent an HTTP-01 token with characters outside base64url for {}",
                ch.cert_name, ch.identifier
            )));
        }
        let entry = Entry {
            key_authorization: ch.key_authorization.clone(),
            identifier: ch.identifier.clone(),
        };
        self.tokens.publish(&ch.token, entry).await.map_err(|e| {
            SolveError::retryable(format!(
                "certificate '{}': HTTP-01 for {}: {e}",
                ch.cert_name, ch.identifier
            ))
        })
    }

    async fn wait(&self, ch: &ChallengeCtx) -> Result<(), SolveError> {
        if !self.self_check {
            return Ok(());
        }
        selfcheck::self_check(ch, &self.self_check_target, &self.listeners).await
    }

    async fn cleanup(&self, ch: &ChallengeCtx) -> Result<(), SolveError> {
        self.tokens.withdraw(&ch.token).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    async fn start(
        tokens: TokenStore,
    ) -> (
        SocketAddr,
        CancellationToken,
        Vec<tokio::task::JoinHandle<()>>,
    ) {
        let server = Http01Server::bind(&["127.0.0.1:0".parse().unwrap()], tokens).unwrap();
        let addr = server.local_addrs()[0];
        let stop = CancellationToken::new();
        let tasks = server.serve(stop.clone()).unwrap();
        (addr, stop, tasks)
    }

    fn ctx(identifier: &str, token: &str) -> ChallengeCtx {
        ChallengeCtx {
            cert_name: "www".into(),
            identifier: identifier.into(),
            is_ip: identifier.parse::<IpAddr>().is_ok(),
            wildcard: false,
            kind: ChallengeKind::Http01,
            token: token.into(),
            key_authorization: format!("{token}.thumbprint"),
            persist: None,
        }
    }

    fn url(addr: SocketAddr, token: &str) -> String {
        format!("http://{addr}{CHALLENGE_PREFIX}{token}")
    }

    #[tokio::test]
    async fn serves_presented_key_authorization_until_cleanup() {
        let tokens = TokenStore::new();
        let (addr, stop, tasks) = start(tokens.clone()).await;
        let solver = Http01Solver::new(tokens.clone(), false);
        let ch = ctx("example.com", "tok_EN-1");
        solver.present(&ch).await.unwrap();
        let c = reqwest::Client::new();
        let r = c
            .get(url(addr, "tok_EN-1"))
            .header("host", "Example.COM:80")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/octet-stream");
        assert_eq!(r.text().await.unwrap(), "tok_EN-1.thumbprint");
        let r = c
            .head(url(addr, "tok_EN-1"))
            .header("host", "example.com")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        solver.cleanup(&ch).await.unwrap();
        solver.cleanup(&ch).await.unwrap();
        let r = c
            .get(url(addr, "tok_EN-1"))
            .header("host", "example.com")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        stop.cancel();
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .unwrap()
                .unwrap();
        }
    }

    #[tokio::test]
    async fn rejects_unknown_bad_wrong_host_and_other_methods() {
        let tokens = TokenStore::new();
        let (addr, _stop, _t) = start(tokens.clone()).await;
        Http01Solver::new(tokens.clone(), false)
            .present(&ctx("example.com", "good"))
            .await
            .unwrap();
        let c = reqwest::Client::new();
        assert_eq!(
            c.get(url(addr, "unknown")).send().await.unwrap().status(),
            404
        );
        assert_eq!(
            c.get(url(addr, "bad.token")).send().await.unwrap().status(),
            404
        );
        assert_eq!(
            c.get(url(addr, "bad%2Ftoken"))
                .send()
                .await
                .unwrap()
                .status(),
            404
        );
        assert_eq!(
            c.get(url(addr, &"a".repeat(256)))
                .send()
                .await
                .unwrap()
                .status(),
            404
        );
        assert_eq!(
            c.get(url(addr, "good"))
                .header("host", "evil.test")
                .send()
                .await
                .unwrap()
                .status(),
            404
        );
        let post = c
            .post(url(addr, "good"))
            .header("host", "example.com")
            .body("x")
            .send()
            .await
            .unwrap();
        assert!(
            post.status() == 405 || post.status() == 404,
            "{}",
            post.status()
        );
        assert_eq!(
            c.get(format!("http://{addr}/"))
                .send()
                .await
                .unwrap()
                .status(),
            404
        );
        assert_eq!(
            c.get(format!("http://{addr}/.well-known/acme-challenge/"))
                .send()
                .await
                .unwrap()
                .status(),
            404
        );
        // Without a Host override reqwest sends 127.0.0.1:port, which is not example.com.
        assert_eq!(c.get(url(addr, "good")).send().await.unwrap().status(), 404);
        assert_eq!(
            c.get(url(addr, "good"))
                .header("host", "example.com.")
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }

    #[tokio::test]
    async fn ip_identifiers_compare_as_addresses() {
        assert!(host_matches("[::1]:8080", "::1"));
        assert!(host_matches("[0:0::1]", "::1"));
        assert!(host_matches("192.0.2.1:80", "192.0.2.1"));
        assert!(!host_matches("192.0.2.2", "192.0.2.1"));
        assert!(!host_matches("[::1", "::1"));
        assert!(!host_matches("example.com.evil", "example.com"));
        let tokens = TokenStore::new();
        let (addr, _stop, _t) = start(tokens.clone()).await;
        Http01Solver::new(tokens.clone(), false)
            .present(&ctx("127.0.0.1", "iptok"))
            .await
            .unwrap();
        let r = reqwest::get(url(addr, "iptok")).await.unwrap();
        assert_eq!(r.status(), 200);
    }

    async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(bytes).await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        String::from_utf8_lossy(&buf).into_owned()
    }

    #[tokio::test]
    async fn garbage_and_oversized_requests_get_4xx_and_server_survives() {
        let tokens = TokenStore::new();
        let (addr, _stop, _t) = start(tokens.clone()).await;
        Http01Solver::new(tokens.clone(), false)
            .present(&ctx("example.com", "good"))
            .await
            .unwrap();
        let garbage = raw(addr, b"\x00\x01GARBAGE \xff\r\n\r\n").await;
        assert!(garbage.starts_with("HTTP/1.1 4"), "{garbage:?}");
        let big_header = format!(
            "GET /x HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
            "a".repeat(1 << 20)
        );
        let resp = raw(addr, big_header.as_bytes()).await;
        assert!(
            resp.is_empty() || resp.starts_with("HTTP/1.1 4"),
            "{resp:?}"
        );
        let body = "b".repeat(64 * 1024);
        let big_body = format!(
            "GET {CHALLENGE_PREFIX}good HTTP/1.1\r\nHost: example.com\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let resp = raw(addr, big_body.as_bytes()).await;
        assert!(resp.starts_with("HTTP/1.1 413"), "{resp:?}");
        let r = reqwest::Client::new()
            .get(url(addr, "good"))
            .header("host", "example.com")
            .send()
            .await
            .unwrap();
        assert_eq!(r.text().await.unwrap(), "good.thumbprint");
    }

    #[tokio::test]
    async fn slow_clients_are_cut_off_and_connections_capped() {
        let tokens = TokenStore::new();
        Http01Solver::new(tokens.clone(), false)
            .present(&ctx("example.com", "good"))
            .await
            .unwrap();
        let server = Http01Server::bind(&["127.0.0.1:0".parse().unwrap()], tokens)
            .unwrap()
            .with_limits(Limits {
                max_connections: 1,
                max_per_ip: 1,
                header_read_timeout: Duration::from_millis(300),
                lifetime: Duration::from_secs(30),
            });
        let addr = server.local_addrs()[0];
        let stop = CancellationToken::new();
        let _t = server.serve(stop.clone()).unwrap();
        // A slowloris client holding the only slot is disconnected at the header-read timeout...
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: exa")
            .await
            .unwrap();
        let start = std::time::Instant::now();
        // ...a connection over the cap meanwhile is closed at once...
        let mut over = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut b = Vec::new();
        tokio::time::timeout(Duration::from_millis(250), over.read_to_end(&mut b))
            .await
            .expect("a connection over the cap is closed at once")
            .ok();
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf))
            .await
            .unwrap()
            .ok();
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
        // ...and the slot is free again for a real request.
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            reqwest::Client::new()
                .get(url(addr, "good"))
                .header("host", "example.com")
                .send(),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(r.status(), 200);
        stop.cancel();
    }

    #[tokio::test]
    async fn bind_errors_are_explained() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = Http01Server::bind(&["127.0.0.1:0".parse().unwrap(), addr], TokenStore::new())
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("cannot listen on {addr}: address already in use")),
            "{msg}"
        );
        let err =
            Http01Server::bind(&["192.0.2.77:0".parse().unwrap()], TokenStore::new()).unwrap_err();
        assert!(err.to_string().contains("fix http01.listen"), "{err}");
    }

    #[tokio::test]
    async fn present_refuses_bad_tokens() {
        let s = Http01Solver::new(TokenStore::new(), false);
        let err = s
            .present(&ctx("example.com", "../../etc"))
            .await
            .unwrap_err();
        assert!(!err.retryable);
        assert!(s.tokens.is_empty());
    }

    /// The fleet's store as the listener sees it: tokens published by "other nodes", and a count
    /// of the lookups made.
    #[derive(Debug, Default)]
    struct Fleet {
        rows: std::sync::Mutex<HashMap<String, Entry>>,
        lookups: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl SharedTokens for Fleet {
        async fn publish(&self, token: &str, entry: &Entry) -> Result<(), String> {
            if token.starts_with("down") {
                return Err("the database is unreachable".into());
            }
            self.rows
                .lock()
                .unwrap()
                .insert(token.into(), entry.clone());
            Ok(())
        }
        async fn withdraw(&self, token: &str) -> Result<(), String> {
            self.rows.lock().unwrap().remove(token);
            Ok(())
        }
        fn cached(&self, _: &str) -> Option<Entry> {
            None
        }
        async fn lookup(&self, token: &str) -> Option<Entry> {
            self.lookups
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.rows.lock().unwrap().get(token).cloned()
        }
    }

    #[tokio::test]
    async fn fleet_tokens_are_looked_up_only_when_well_formed_and_keep_the_host_check() {
        let fleet = Arc::new(Fleet::default());
        let shared: Arc<dyn SharedTokens> = fleet.clone();
        let tokens = TokenStore::new().with_fleet(Some(shared));
        let (addr, _stop, _t) = start(tokens.clone()).await;
        // Published by another node: only in the fleet's store.
        fleet.rows.lock().unwrap().insert(
            "other".into(),
            Entry {
                key_authorization: "other.thumbprint".into(),
                identifier: "example.com".into(),
            },
        );
        let c = reqwest::Client::new();
        let get = |token: &str, host: &str| {
            c.get(url(addr, token))
                .header("host", host.to_string())
                .send()
        };
        let r = get("other", "example.com").await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "other.thumbprint");
        assert_eq!(get("other", "evil.test").await.unwrap().status(), 404);
        assert_eq!(get("missing", "example.com").await.unwrap().status(), 404);
        let before = fleet.lookups.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(before, 3);
        // Malformed tokens never reach the store.
        for bad in ["bad.token", "bad%2Ftoken", &"a".repeat(256)] {
            assert_eq!(get(bad, "example.com").await.unwrap().status(), 404);
        }
        assert_eq!(
            fleet.lookups.load(std::sync::atomic::Ordering::SeqCst),
            before
        );
        // This node's own tokens are answered without a lookup, and go to the fleet too.
        let solver = Http01Solver::new(tokens.clone(), false);
        let ch = ctx("example.com", "mine");
        solver.present(&ch).await.unwrap();
        assert!(fleet.rows.lock().unwrap().contains_key("mine"));
        assert_eq!(get("mine", "example.com").await.unwrap().status(), 200);
        assert_eq!(
            fleet.lookups.load(std::sync::atomic::Ordering::SeqCst),
            before
        );
        solver.cleanup(&ch).await.unwrap();
        assert!(!fleet.rows.lock().unwrap().contains_key("mine"));
        // A publication the fleet refuses fails the challenge (retryable) and serves nothing here.
        let err = solver
            .present(&ctx("example.com", "down1"))
            .await
            .unwrap_err();
        assert!(err.retryable, "{err:?}");
        assert!(tokens.get("down1").is_none());
    }

    #[tokio::test]
    async fn spool_hands_tokens_from_renew_to_the_daemon() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("http01");
        let renew = TokenStore::publishing_spool(&spool).unwrap();
        let daemon = TokenStore::reading_spool(&spool);
        assert!(renew.publishes() && !daemon.publishes());
        let entry = Entry {
            key_authorization: "tok_1.thumb".into(),
            identifier: "www.example.com".into(),
        };
        renew.publish("tok_1", entry.clone()).await.unwrap();
        assert_eq!(daemon.get("tok_1"), Some(entry));
        assert_eq!(
            std::fs::metadata(&spool).unwrap().permissions().mode() & 0o777,
            0o700
        );
        // tokens outside base64url never touch the file system
        assert_eq!(daemon.get("../x"), None);
        renew.withdraw("tok_1").await;
        assert_eq!(daemon.get("tok_1"), None);
        assert!(
            std::fs::read_dir(&spool).unwrap().next().is_none(),
            "spool left files behind"
        );
    }
}
