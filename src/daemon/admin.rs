//! The admin listener (`[admin] listen`, off unless configured): `/healthz` and Prometheus `/metrics`.
//!
//! `/healthz` asks the daemon loop itself (through a channel) and answers 200 only when the loop
//! replies within a few seconds, so a wedged loop shows as unhealthy. `/metrics` renders a snapshot
//! the loop keeps up to date after every scheduling decision; a scrape reads no files.
//!
//! With `token_file` every request needs `Authorization: Bearer <token>`; the config refuses a
//! non-loopback address without a token unless `allow_remote = true`. Connections go through the
//! same limited accept loop as the HTTP-01 listener ([`crate::listener`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::secret::Secret;
use crate::listener::Limits;

/// How long `/healthz` waits for the loop to answer.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// The admin listener's connection limits: a scraper and a health checker or two need a handful of
/// connections; the lifetime leaves room for a `/healthz` that waits [`HEALTH_TIMEOUT`].
pub const LIMITS: Limits = Limits {
    max_connections: 64,
    max_per_ip: 16,
    header_read_timeout: Duration::from_secs(5),
    lifetime: Duration::from_secs(30),
};

/// Errors starting the admin listener.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The address could not be bound.
    #[error(
        "cannot listen on {addr} for [admin] listen: {source}; pick a free port or remove the [admin] table"
    )]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// What `/metrics` shows about one certificate.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CertMetrics {
    /// Not After of the installed certificate (Unix seconds), when one is installed.
    pub not_after: Option<i64>,
    /// Failed attempts since the last success.
    pub failures: u32,
    /// The last error since the last success.
    pub last_error: Option<String>,
    /// The CA needs a human to act; the certificate is retried daily and on every reload.
    pub paused: bool,
    /// When the next attempt (renewal or retry) is due (Unix seconds).
    pub next_attempt: Option<i64>,
    /// The installed pair's reload hooks have not completed.
    pub reload_pending: bool,
    /// With `verify_deploy`, once checked: every endpoint served the installed certificate.
    pub deployed: Option<bool>,
    /// With `verify_deploy`: Not After of the certificate the endpoints serve (the earliest).
    pub served_not_after: Option<i64>,
}

/// The metrics snapshot shared by the daemon loop (writer) and the admin listener (reader).
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    certs: BTreeMap<String, CertMetrics>,
    renewals: BTreeMap<(String, &'static str), u64>,
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replace what is known about one certificate.
    pub fn set_cert(&self, name: &str, m: CertMetrics) {
        let mut inner = self.lock();
        match inner.certs.get_mut(name) {
            Some(slot) => *slot = m,
            None => {
                inner.certs.insert(name.to_string(), m);
            }
        }
    }

    /// Set whether the installed pair of `name` still waits for its reload hooks to complete.
    pub fn set_reload_pending(&self, name: &str, pending: bool) {
        if let Some(m) = self.lock().certs.get_mut(name) {
            m.reload_pending = pending;
        }
    }

    /// Set what the last deploy check of `name` found.
    pub fn set_deploy(&self, name: &str, deployed: bool, served_not_after: Option<i64>) {
        if let Some(m) = self.lock().certs.get_mut(name) {
            m.deployed = Some(deployed);
            m.served_not_after = served_not_after;
        }
    }

    /// Forget certificates that are no longer `configured` (after a reload), and pack what stays
    /// (set one by one in name order, the map's nodes are half empty; with 10,000 certificates
    /// that is a megabyte kept for the daemon's life).
    pub fn retain(&self, configured: impl Fn(&str) -> bool) {
        let mut inner = self.lock();
        let certs = std::mem::take(&mut inner.certs);
        inner.certs = certs.into_iter().filter(|(k, _)| configured(k)).collect();
        inner.renewals.retain(|(k, _), _| configured(k));
    }

    /// Count one finished issuance attempt.
    pub fn count_renewal(&self, name: &str, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        *self
            .lock()
            .renewals
            .entry((name.to_string(), result))
            .or_default() += 1;
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let inner = self.lock();
        let mut out = String::new();
        out.push_str("# HELP certkeeper_certificate_not_after_seconds Not After of the installed certificate, Unix time.\n");
        out.push_str("# TYPE certkeeper_certificate_not_after_seconds gauge\n");
        for (name, m) in &inner.certs {
            if let Some(t) = m.not_after {
                let _ = writeln!(
                    out,
                    "certkeeper_certificate_not_after_seconds{{name=\"{}\"}} {t}",
                    escape(name)
                );
            }
        }
        out.push_str("# HELP certkeeper_renewals_total Issuance attempts since the daemon started, by result.\n");
        out.push_str("# TYPE certkeeper_renewals_total counter\n");
        for name in inner.certs.keys() {
            for result in ["success", "failure"] {
                let n = inner
                    .renewals
                    .get(&(name.clone(), result))
                    .copied()
                    .unwrap_or(0);
                let _ = writeln!(
                    out,
                    "certkeeper_renewals_total{{name=\"{}\",result=\"{result}\"}} {n}",
                    escape(name)
                );
            }
        }
        out.push_str(
            "# HELP certkeeper_certificate_failures Failed attempts since the last success.\n",
        );
        out.push_str("# TYPE certkeeper_certificate_failures gauge\n");
        for (name, m) in &inner.certs {
            let _ = writeln!(
                out,
                "certkeeper_certificate_failures{{name=\"{}\"}} {}",
                escape(name),
                m.failures
            );
        }
        out.push_str("# HELP certkeeper_last_error 1 when the last attempt failed; the message is in the error label.\n");
        out.push_str("# TYPE certkeeper_last_error gauge\n");
        for (name, m) in &inner.certs {
            let (v, msg) = match &m.last_error {
                Some(e) => (1, e.as_str()),
                None => (0, ""),
            };
            let _ = writeln!(
                out,
                "certkeeper_last_error{{name=\"{}\",error=\"{}\"}} {v}",
                escape(name),
                escape(&truncate(msg, 300))
            );
        }
        out.push_str("# HELP certkeeper_certificate_paused 1 when the CA needs a human to act; the certificate is still retried daily and on every reload.\n");
        out.push_str("# TYPE certkeeper_certificate_paused gauge\n");
        for (name, m) in &inner.certs {
            let _ = writeln!(
                out,
                "certkeeper_certificate_paused{{name=\"{}\"}} {}",
                escape(name),
                u8::from(m.paused)
            );
        }
        out.push_str("# HELP certkeeper_certificate_next_attempt_seconds When the next renewal or retry is due, Unix time.\n");
        out.push_str("# TYPE certkeeper_certificate_next_attempt_seconds gauge\n");
        for (name, m) in &inner.certs {
            if let Some(t) = m.next_attempt {
                let _ = writeln!(
                    out,
                    "certkeeper_certificate_next_attempt_seconds{{name=\"{}\"}} {t}",
                    escape(name)
                );
            }
        }
        out.push_str("# HELP certkeeper_certificate_reload_pending 1 while the installed certificate's reload hooks have not completed.\n");
        out.push_str("# TYPE certkeeper_certificate_reload_pending gauge\n");
        for (name, m) in &inner.certs {
            let _ = writeln!(
                out,
                "certkeeper_certificate_reload_pending{{name=\"{}\"}} {}",
                escape(name),
                u8::from(m.reload_pending)
            );
        }
        out.push_str("# HELP certkeeper_certificate_deployed 1 when every verify_deploy endpoint served the installed certificate at the last check, 0 when one did not (installed, not deployed).\n");
        out.push_str("# TYPE certkeeper_certificate_deployed gauge\n");
        for (name, m) in &inner.certs {
            if let Some(d) = m.deployed {
                let _ = writeln!(
                    out,
                    "certkeeper_certificate_deployed{{name=\"{}\"}} {}",
                    escape(name),
                    u8::from(d)
                );
            }
        }
        out.push_str("# HELP certkeeper_certificate_served_not_after_seconds Not After of the certificate the verify_deploy endpoints serve (the earliest), Unix time.\n");
        out.push_str("# TYPE certkeeper_certificate_served_not_after_seconds gauge\n");
        for (name, m) in &inner.certs {
            if let Some(t) = m.served_not_after {
                let _ = writeln!(
                    out,
                    "certkeeper_certificate_served_not_after_seconds{{name=\"{}\"}} {t}",
                    escape(name)
                );
            }
        }
        out
    }
}

/// Escape a Prometheus label value: backslash, double quote and newline.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// A liveness question for the daemon loop: it answers by sending `()` back.
pub type HealthPing = oneshot::Sender<()>;

#[derive(Clone)]
struct AppState {
    metrics: std::sync::Arc<Metrics>,
    health: mpsc::Sender<HealthPing>,
}

/// Bind the admin listener and serve it until `shutdown` is cancelled.
///
/// Health pings arrive on the receiver paired with `health`; the loop must answer them. With a
/// `token`, requests without `Authorization: Bearer <token>` get 401.
pub async fn serve(
    addr: SocketAddr,
    token: Option<Secret>,
    metrics: std::sync::Arc<Metrics>,
    health: mpsc::Sender<HealthPing>,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, AdminError> {
    serve_with_limits(addr, token, metrics, health, shutdown, LIMITS).await
}

async fn serve_with_limits(
    addr: SocketAddr,
    token: Option<Secret>,
    metrics: std::sync::Arc<Metrics>,
    health: mpsc::Sender<HealthPing>,
    shutdown: CancellationToken,
    limits: Limits,
) -> Result<tokio::task::JoinHandle<()>, AdminError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind { addr, source })?;
    let authenticated = token.is_some();
    let mut app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_handler))
        .with_state(AppState { metrics, health });
    if let Some(token) = token {
        let want = std::sync::Arc::new(openssl::sha::sha256(token.expose().as_bytes()));
        app = app.layer(middleware::from_fn(move |req: Request, next: Next| {
            let want = want.clone();
            async move { require_bearer(&want, req, next).await }
        }));
    }
    tracing::info!(listen = %addr, authenticated, "admin listener (/healthz, /metrics)");
    Ok(tokio::spawn(crate::listener::serve(
        listener, app, limits, "admin", shutdown,
    )))
}

/// 401 unless the request carries `Authorization: Bearer <token>` whose SHA-256 is `want`.
///
/// Comparing digests with `CRYPTO_memcmp` takes the same time wherever the first difference is and
/// whatever the length of the presented token.
async fn require_bearer(want: &[u8; 32], req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    let ok = presented.is_some_and(|t| {
        let got = openssl::sha::sha256(t.as_bytes());
        openssl::memcmp::eq(&got, want)
    });
    if ok {
        next.run(req).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a bearer token is required (Authorization: Bearer <token from [admin] token_file>)\n",
        )
            .into_response()
    }
}

async fn healthz(State(st): State<AppState>) -> impl IntoResponse {
    let (tx, rx) = oneshot::channel();
    let alive = st.health.try_send(tx).is_ok()
        && tokio::time::timeout(HEALTH_TIMEOUT, rx)
            .await
            .is_ok_and(|r| r.is_ok());
    if alive {
        (StatusCode::OK, "ok\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the daemon loop does not answer\n",
        )
    }
}

async fn metrics_handler(State(st): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("line1\nline2"), "line1\\nline2");
    }

    #[test]
    fn render_shows_every_metric_per_certificate() {
        let m = Metrics::default();
        m.set_cert(
            "www",
            CertMetrics {
                not_after: Some(1_900_000_000),
                next_attempt: Some(1_890_000_000),
                ..Default::default()
            },
        );
        m.set_cert(
            "api",
            CertMetrics {
                not_after: None,
                failures: 3,
                last_error: Some("CA said \"no\"\nreally".into()),
                paused: true,
                next_attempt: None,
                reload_pending: true,
                deployed: Some(false),
                served_not_after: Some(1_800_000_000),
            },
        );
        m.count_renewal("www", true);
        m.count_renewal("www", true);
        m.count_renewal("api", false);
        let text = m.render();
        assert!(
            text.contains("certkeeper_certificate_not_after_seconds{name=\"www\"} 1900000000\n")
        );
        assert!(!text.contains("certkeeper_certificate_not_after_seconds{name=\"api\"}"));
        assert!(text.contains("certkeeper_renewals_total{name=\"www\",result=\"success\"} 2\n"));
        assert!(text.contains("certkeeper_renewals_total{name=\"www\",result=\"failure\"} 0\n"));
        assert!(text.contains("certkeeper_renewals_total{name=\"api\",result=\"failure\"} 1\n"));
        assert!(text.contains("certkeeper_certificate_failures{name=\"api\"} 3\n"));
        assert!(text.contains("certkeeper_certificate_deployed{name=\"api\"} 0\n"));
        assert!(!text.contains("certkeeper_certificate_deployed{name=\"www\"}"));
        assert!(text.contains(
            "certkeeper_certificate_served_not_after_seconds{name=\"api\"} 1800000000\n"
        ));
        assert!(text.contains(
            "certkeeper_last_error{name=\"api\",error=\"CA said \\\"no\\\"\\nreally\"} 1\n"
        ));
        assert!(text.contains("certkeeper_last_error{name=\"www\",error=\"\"} 0\n"));
        assert!(text.contains("certkeeper_certificate_paused{name=\"api\"} 1\n"));
        assert!(text.contains("certkeeper_certificate_paused{name=\"www\"} 0\n"));
        assert!(
            text.contains("certkeeper_certificate_next_attempt_seconds{name=\"www\"} 1890000000\n")
        );
        assert!(text.contains("certkeeper_certificate_reload_pending{name=\"api\"} 1\n"));
        m.retain(|n| n == "www");
        assert!(!m.render().contains("api"));
    }

    #[tokio::test]
    async fn healthz_answers_only_while_the_loop_answers() {
        let metrics = Arc::new(Metrics::default());
        metrics.set_cert("www", CertMetrics::default());
        let (tx, mut rx) = mpsc::channel::<HealthPing>(4);
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let stop = CancellationToken::new();
        serve(addr, None, metrics, tx, stop.clone()).await.unwrap();
        let loop_task = tokio::spawn(async move {
            // answer two pings, then stop answering (a wedged loop)
            for _ in 0..2 {
                if let Some(p) = rx.recv().await {
                    let _ = p.send(());
                }
            }
            std::future::pending::<()>().await;
            drop(rx);
        });
        let client = reqwest::Client::new();
        let url = format!("http://{addr}/healthz");
        for _ in 0..2 {
            let r = client.get(&url).send().await.unwrap();
            assert_eq!(r.status(), 200);
        }
        let r = client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 503);
        let r = client
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.text()
                .await
                .unwrap()
                .contains("certkeeper_certificate_failures{name=\"www\"} 0")
        );
        loop_task.abort();
        stop.cancel();
    }

    fn free_addr() -> SocketAddr {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    }

    #[tokio::test]
    async fn a_token_is_required_when_configured() {
        let addr = free_addr();
        let (tx, _rx) = mpsc::channel::<HealthPing>(4);
        let stop = CancellationToken::new();
        serve(
            addr,
            Some(Secret::new("tok-3x4mple")),
            Arc::new(Metrics::default()),
            tx,
            stop.clone(),
        )
        .await
        .unwrap();
        let c = reqwest::Client::new();
        let url = format!("http://{addr}/metrics");
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        for bad in [
            "Bearer tok-3x4mplf",
            "Bearer tok-3x4mple-and-more",
            "Basic tok-3x4mple",
            "tok-3x4mple",
        ] {
            let r = c
                .get(&url)
                .header("authorization", bad)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 401, "{bad}");
        }
        let r = c
            .get(&url)
            .header("authorization", "Bearer tok-3x4mple")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r = c
            .get(&url)
            .header("authorization", "bearer  tok-3x4mple")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        stop.cancel();
    }

    #[tokio::test]
    async fn slow_header_connections_are_closed_and_capped() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let addr = free_addr();
        let (tx, _rx) = mpsc::channel::<HealthPing>(4);
        let stop = CancellationToken::new();
        let limits = Limits {
            max_connections: 4,
            max_per_ip: 2,
            header_read_timeout: Duration::from_millis(500),
            lifetime: Duration::from_secs(30),
        };
        serve_with_limits(
            addr,
            None,
            Arc::new(Metrics::default()),
            tx,
            stop.clone(),
            limits,
        )
        .await
        .unwrap();
        let mut slow = Vec::new();
        for _ in 0..2 {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
            slow.push(s);
        }
        let start = std::time::Instant::now();
        // a third connection from the same address is closed at once
        let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_millis(300), third.read_to_end(&mut buf))
            .await
            .expect("a connection over the per-IP cap is closed at once")
            .ok();
        // the slow ones are closed at the header-read timeout
        for mut s in slow {
            let mut buf = Vec::new();
            tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
                .await
                .expect("a slow-header connection is still open after 10 s")
                .ok();
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
        // and the listener serves again
        let r = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        stop.cancel();
    }
}
