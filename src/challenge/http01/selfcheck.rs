//! The HTTP-01 self-check: before the CA is asked to validate, fetch
//! `http://NAME/.well-known/acme-challenge/TOKEN` the way the CA will (port 80, every A/AAAA address of
//! the name from the system resolver, following redirects) and explain a wrong answer.
//!
//! A failed self-check stops the order before the CA sees the challenge, so a broken proxy setup costs
//! no failed validation at the CA (Let's Encrypt limits failed validations per hour).

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::CHALLENGE_PREFIX;
use crate::challenge::{ChallengeCtx, SolveError};

/// Longest time one fetch (connect + response) may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of a response body read; the key authorization is far shorter.
const BODY_LIMIT: usize = 4096;
/// Most redirects followed, as Let's Encrypt does.
const MAX_REDIRECTS: usize = 10;
/// How often a wrong answer is retried before the check fails (a proxy reload may be in flight).
const ATTEMPTS: usize = 3;
/// Pause between attempts.
const ATTEMPT_PAUSE: Duration = Duration::from_secs(2);

/// Where the self-check connects: by default port 80 of the name's own addresses.
///
/// `port` and `resolve` exist for split-horizon setups (the public address is not what this host's
/// resolver returns) and for tests, where nothing resolves and nothing may bind port 80.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelfCheckTarget {
    /// The port the request goes to (80 unless overridden).
    pub port: u16,
    /// Connect to these addresses instead of resolving the name (like `curl --resolve`).
    pub resolve: Vec<IpAddr>,
}

impl Default for SelfCheckTarget {
    fn default() -> Self {
        Self {
            port: 80,
            resolve: Vec::new(),
        }
    }
}

/// Marker for a 404 from certkeeper's listener because the request's Host was not the name.
const WRONG_HOST: &str =
    "certkeeper's listener answered, but the request reached it with another Host";
/// Marker for a 404 from certkeeper's listener for a token it does not serve.
const UNKNOWN_TOKEN: &str = "certkeeper's listener answered, but does not serve this token";

/// One fetch's outcome, for the message.
#[derive(Debug)]
enum Outcome {
    /// The right key authorization came back.
    Ok,
    /// Something answered, but not with the key authorization.
    Wrong(String),
    /// Nothing answered (connection refused, timeout, TLS on redirect).
    Unreachable(String),
}

/// Run the self-check for one HTTP-01 challenge.
///
/// Passes when every address of the name answers with the key authorization. An address that cannot
/// be connected to only fails the check when no address answers correctly (this host may lack an IPv6
/// route the CA has); a wrong answer from any address fails it, since the CA may pick that address.
/// `listeners` are certkeeper's own HTTP-01 listen addresses, named in the advice.
pub async fn self_check(
    ch: &ChallengeCtx,
    target: &SelfCheckTarget,
    listeners: &[SocketAddr],
) -> Result<(), SolveError> {
    run(ch, target, Via::Listener(listeners)).await
}

/// Run the self-check for one HTTP-01 challenge answered from a webroot (`root` is the configured
/// `webroot.path`): the same fetch as [`self_check`], with advice about the web server's `root`
/// instead of a proxy to certkeeper's listener.
pub async fn self_check_webroot(
    ch: &ChallengeCtx,
    target: &SelfCheckTarget,
    root: &std::path::Path,
) -> Result<(), SolveError> {
    run(ch, target, Via::Webroot(root)).await
}

/// How the token is meant to reach the web server on port 80, for the advice.
#[derive(Clone, Copy)]
enum Via<'a> {
    /// A proxy to certkeeper's own listener(s).
    Listener(&'a [SocketAddr]),
    /// A file under this document root.
    Webroot(&'a std::path::Path),
}

async fn run(ch: &ChallengeCtx, target: &SelfCheckTarget, via: Via<'_>) -> Result<(), SolveError> {
    let addrs = addresses(ch, target).await?;
    let mut last = Vec::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(ATTEMPT_PAUSE).await;
        }
        let mut results = Vec::new();
        for addr in &addrs {
            results.push((*addr, fetch(ch, *addr, target.port).await));
        }
        let any_ok = results.iter().any(|(_, r)| matches!(r, Outcome::Ok));
        let any_wrong = results.iter().any(|(_, r)| matches!(r, Outcome::Wrong(_)));
        if any_ok && !any_wrong {
            for (addr, r) in &results {
                if let Outcome::Unreachable(why) = r {
                    tracing::warn!(
                        cert = %ch.cert_name, identifier = %ch.identifier, %addr, reason = %why,
                        "HTTP-01 self-check could not reach this address from here; another address answered correctly"
                    );
                }
            }
            tracing::debug!(cert = %ch.cert_name, identifier = %ch.identifier, "HTTP-01 self-check passed");
            return Ok(());
        }
        last = results;
    }
    Err(SolveError::retryable(explain(ch, target, via, &last)))
}

/// The addresses to check: the override, the IP identifier itself, or the name's A/AAAA records.
async fn addresses(ch: &ChallengeCtx, target: &SelfCheckTarget) -> Result<Vec<IpAddr>, SolveError> {
    if !target.resolve.is_empty() {
        return Ok(target.resolve.clone());
    }
    if let Ok(ip) = ch.identifier.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let looked_up = tokio::time::timeout(
        FETCH_TIMEOUT,
        tokio::net::lookup_host((ch.identifier.as_str(), target.port)),
    )
    .await;
    let found: Vec<IpAddr> = match looked_up {
        Ok(Ok(it)) => {
            let mut seen = HashSet::new();
            it.map(|a| a.ip()).filter(|ip| seen.insert(*ip)).collect()
        }
        Ok(Err(e)) => {
            return Err(SolveError::retryable(format!(
                "certificate '{}': HTTP-01 self-check: {} does not resolve here ({e}); the CA will not find it \
                 either: add an A (and/or AAAA) record pointing to this server, or use DNS-01 for this name \
                 (set `self_check = false` only if this host's resolver differs from the public DNS)",
                ch.cert_name, ch.identifier
            )));
        }
        Err(_) => {
            return Err(SolveError::retryable(format!(
                "certificate '{}': HTTP-01 self-check: resolving {} timed out after {FETCH_TIMEOUT:?}; check \
                 /etc/resolv.conf and the name's DNS",
                ch.cert_name, ch.identifier
            )));
        }
    };
    if found.is_empty() {
        return Err(SolveError::retryable(format!(
            "certificate '{}': HTTP-01 self-check: {} has no A or AAAA record: add one pointing to this server",
            ch.cert_name, ch.identifier
        )));
    }
    Ok(found)
}

fn host_for_url(identifier: &str) -> String {
    match identifier.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => identifier.to_string(),
    }
}

fn client(resolve: Option<(&str, SocketAddr)>) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(FETCH_TIMEOUT)
        .connect_timeout(FETCH_TIMEOUT)
        // The CA does not check certificates on a redirect to https (RFC 8555 §8.3 leaves it open;
        // Let's Encrypt accepts any), so neither does the self-check.
        .danger_accept_invalid_certs(true)
        .user_agent(concat!("certkeeper-selfcheck/", env!("CARGO_PKG_VERSION")))
        .no_proxy();
    if let Some((name, addr)) = resolve {
        b = b.resolve(name, addr);
    }
    b.build()
        .map_err(|e| format!("building the HTTP client: {e}"))
}

/// Fetch the challenge URL through `ip`, following redirects, and describe what came back.
async fn fetch(ch: &ChallengeCtx, ip: IpAddr, port: u16) -> Outcome {
    let mut url = if port == 80 {
        format!(
            "http://{}{CHALLENGE_PREFIX}{}",
            host_for_url(&ch.identifier),
            ch.token
        )
    } else {
        format!(
            "http://{}:{port}{CHALLENGE_PREFIX}{}",
            host_for_url(&ch.identifier),
            ch.token
        )
    };
    let mut chain: Vec<String> = Vec::new();
    for _ in 0..=MAX_REDIRECTS {
        let parsed = match reqwest::Url::parse(&url) {
            Ok(u) => u,
            Err(e) => return Outcome::Wrong(format!("a redirect to an invalid URL {url:?} ({e})")),
        };
        let same_host = parsed.host_str().is_some_and(|h| {
            h.trim_matches(['[', ']'])
                .eq_ignore_ascii_case(&ch.identifier)
        });
        // The first request and redirects back to the same name go to the address under test, on
        // the port the URL names (the CA follows a redirect's port for 80/443 only).
        let pin = if same_host {
            let p = parsed.port_or_known_default().unwrap_or(port);
            let p = if chain.is_empty() { port } else { p };
            Some((ch.identifier.as_str(), SocketAddr::new(ip, p)))
        } else {
            None
        };
        let c = match client(pin) {
            Ok(c) => c,
            Err(e) => return Outcome::Unreachable(e),
        };
        let resp = match c.get(parsed.clone()).send().await {
            Ok(r) => r,
            Err(e) => {
                let via = if chain.is_empty() {
                    String::new()
                } else {
                    format!(" (after redirects {})", chain.join(" -> "))
                };
                return Outcome::Unreachable(format!("{url}: {}{via}", error_chain(&e)));
            }
        };
        let status = resp.status();
        let server = resp
            .headers()
            .get(reqwest::header::SERVER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let diag = resp
            .headers()
            .get(super::DIAG_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if status.is_redirection() {
            let Some(loc) = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
            else {
                return Outcome::Wrong(format!("HTTP {status} without a Location header"));
            };
            let next = match parsed.join(loc) {
                Ok(u) => u.to_string(),
                Err(e) => {
                    return Outcome::Wrong(format!(
                        "HTTP {status} to an invalid Location {loc:?} ({e})"
                    ));
                }
            };
            chain.push(url.clone());
            if chain.contains(&next) {
                chain.push(next);
                return Outcome::Wrong(format!(
                    "a redirect loop: {} — the server redirects the challenge path back to itself; exempt \
                     /.well-known/acme-challenge/ from the redirect rule",
                    chain.join(" -> ")
                ));
            }
            let next_url = reqwest::Url::parse(&next).ok();
            if let Some(n) = &next_url {
                let scheme_ok = n.scheme() == "http" || n.scheme() == "https";
                let port_ok = matches!(n.port_or_known_default(), Some(80) | Some(443));
                if !scheme_ok || !port_ok {
                    return Outcome::Wrong(format!(
                        "HTTP {status} redirect to {next}: the CA only follows redirects to http or https on \
                         ports 80 and 443"
                    ));
                }
            }
            url = next;
            continue;
        }
        let body = read_limited(resp).await;
        if status == reqwest::StatusCode::OK && body.trim_end() == ch.key_authorization {
            return Outcome::Ok;
        }
        let mut what = format!("HTTP {status}");
        if let Some(s) = server {
            what.push_str(&format!(" from server {s:?}"));
        }
        match diag.as_deref() {
            Some("wrong-host") => what.push_str(&format!(" [{WRONG_HOST}]")),
            Some("unknown-token") => what.push_str(&format!(" [{UNKNOWN_TOKEN}]")),
            _ => {}
        }
        if !chain.is_empty() {
            what.push_str(&format!(" after redirects {} -> {url}", chain.join(" -> ")));
        }
        let first: String = String::from_utf8_lossy(&body.as_bytes()[..body.len().min(80)])
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        if first.trim().is_empty() {
            what.push_str(", empty body");
        } else {
            what.push_str(&format!(", body starts {:?}", first.trim()));
        }
        return Outcome::Wrong(what);
    }
    Outcome::Wrong(format!(
        "more than {MAX_REDIRECTS} redirects: {}",
        chain.join(" -> ")
    ))
}

async fn read_limited(mut resp: reqwest::Response) -> String {
    let mut buf = Vec::new();
    while buf.len() < BODY_LIMIT {
        match resp.chunk().await {
            Ok(Some(c)) => buf.extend_from_slice(&c),
            _ => break,
        }
    }
    buf.truncate(BODY_LIMIT);
    String::from_utf8_lossy(&buf).into_owned()
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// The message for a failed self-check: what each address answered and the likely cause.
fn explain(
    ch: &ChallengeCtx,
    target: &SelfCheckTarget,
    via: Via<'_>,
    results: &[(IpAddr, Outcome)],
) -> String {
    let listeners: &[SocketAddr] = match via {
        Via::Listener(l) => l,
        Via::Webroot(_) => &[],
    };
    let listener = listeners
        .first()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "127.0.0.1:8402".to_string());
    let url = format!(
        "http://{}{}{CHALLENGE_PREFIX}{}",
        host_for_url(&ch.identifier),
        if target.port == 80 {
            String::new()
        } else {
            format!(":{}", target.port)
        },
        ch.token
    );
    let mut seen = Vec::new();
    let mut hints: Vec<String> = Vec::new();
    for (ip, r) in results {
        match r {
            Outcome::Ok => seen.push(format!("{ip}: correct answer")),
            Outcome::Wrong(what) => {
                seen.push(format!("{ip}: {what}"));
                let hint = if what.contains(WRONG_HOST) {
                    "the proxy in front does not pass the Host header: add `proxy_set_header Host $host;` \
                     next to proxy_pass in the /.well-known/acme-challenge/ location"
                        .to_string()
                } else if what.contains(UNKNOWN_TOKEN) {
                    format!(
                        "another certkeeper process holds the listener the proxy points to ({listener}) — \
                         typically the daemon while `certkeeper renew` runs separately: let the daemon renew \
                         (`systemctl reload certkeeper`) or stop it first; or the proxy_pass address is not \
                         this instance's [http01] listen"
                    )
                } else if what.contains("redirect loop") || what.contains("redirects:") {
                    "a redirect loop: exempt /.well-known/acme-challenge/ from the http->https (or www) \
                     redirect, or make sure the redirect target serves the same path"
                        .to_string()
                } else if let (Via::Webroot(root), true) = (
                    via,
                    what.starts_with("HTTP 404") || what.starts_with("HTTP 200"),
                ) {
                    format!(
                        "the web server on port {} does not serve the webroot: the token was written to \
                         {}/.well-known/acme-challenge/{}, but that is not what answers for {}; in nginx the \
                         port-80 server block for {} needs `location /.well-known/acme-challenge/ {{ root {}; }}` \
                         (set webroot `path` to the `root` nginx serves), or an A/AAAA record points to another \
                         server",
                        target.port,
                        root.display(),
                        ch.token,
                        ch.identifier,
                        ch.identifier,
                        root.display()
                    )
                } else if what.starts_with("HTTP 404") || what.starts_with("HTTP 200") {
                    format!(
                        "the token is not reachable through the public address: the web server on port {} \
                         does not pass /.well-known/acme-challenge/ to certkeeper's listener ({listener}); in \
                         nginx add to the port-80 server block for {}: `location /.well-known/acme-challenge/ \
                         {{ proxy_pass http://{listener}; proxy_set_header Host $host; }}` (or an AAAA/A \
                         record points to another server)",
                        target.port, ch.identifier
                    )
                } else if what.starts_with("HTTP 502")
                    || what.starts_with("HTTP 504")
                    || what.starts_with("HTTP 503")
                {
                    format!(
                        "the proxy in front cannot reach certkeeper's listener at {listener}: check that the \
                         proxy_pass address matches [http01] listen and that certkeeper is running"
                    )
                } else if what.starts_with("HTTP 401") || what.starts_with("HTTP 403") {
                    "an access rule blocks the path (nginx `deny`/`allow`, basic auth, a WAF or geo block): \
                     allow /.well-known/acme-challenge/ for everyone"
                        .to_string()
                } else if what.contains("redirect") {
                    "fix the redirect: the CA only follows redirects to http/https on ports 80/443"
                        .to_string()
                } else if matches!(via, Via::Webroot(_)) {
                    format!(
                        "the web server answering for this name on port {} does not serve the webroot",
                        target.port
                    )
                } else {
                    "something other than certkeeper answers for this name on port 80".to_string()
                };
                if !hints.contains(&hint) {
                    hints.push(hint);
                }
            }
            Outcome::Unreachable(why) => {
                seen.push(format!("{ip}: no answer ({why})"));
                let hint = format!(
                    "nothing answered on port {}: a firewall (host or cloud security group) blocks it, \
                     nothing listens there, or the A/AAAA record points to another host",
                    target.port
                );
                if !hints.contains(&hint) {
                    hints.push(hint);
                }
            }
        }
    }
    format!(
        "certificate '{}': HTTP-01 self-check failed for {} before asking the CA: fetching {url} did not \
         return the key authorization. Seen: {}. Likely cause: {}. (Turn this check off with \
         `{}` if this host cannot reach its own public address.)",
        ch.cert_name,
        ch.identifier,
        seen.join("; "),
        hints.join("; or "),
        match via {
            Via::Listener(_) => "http01 = { self_check = false }".to_string(),
            Via::Webroot(root) => format!(
                "webroot = {{ path = \"{}\", self_check = false }}",
                root.display()
            ),
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::challenge::ChallengeKind;
    use crate::challenge::Solver as _;
    use crate::challenge::http01::{Http01Server, Http01Solver, TokenStore};
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use tokio_util::sync::CancellationToken;

    fn ctx(token: &str) -> ChallengeCtx {
        ChallengeCtx {
            cert_name: "www".into(),
            identifier: "www.example.test".into(),
            is_ip: false,
            wildcard: false,
            kind: ChallengeKind::Http01,
            token: token.into(),
            key_authorization: format!("{token}.thumb"),
            persist: None,
        }
    }

    fn loopback(port: u16) -> SelfCheckTarget {
        SelfCheckTarget {
            port,
            resolve: vec!["127.0.0.1".parse().unwrap()],
        }
    }

    async fn serve(app: axum::Router) -> (SocketAddr, CancellationToken) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(l, app)
                .with_graceful_shutdown(s.cancelled_owned())
                .await;
        });
        (addr, stop)
    }

    #[tokio::test]
    async fn passes_through_the_real_listener() {
        let tokens = TokenStore::new();
        let server = Http01Server::bind(&["127.0.0.1:0".parse().unwrap()], tokens.clone()).unwrap();
        let addr = server.local_addrs()[0];
        let stop = CancellationToken::new();
        let _t = server.serve(stop.clone()).unwrap();
        let solver =
            Http01Solver::new(tokens, true).with_self_check(loopback(addr.port()), vec![addr]);
        let ch = ctx("tokOK");
        solver.present(&ch).await.unwrap();
        solver.wait(&ch).await.unwrap();
        // Without the token served the same check fails: wait() really fetches.
        solver.cleanup(&ch).await.unwrap();
        let err = self_check(&ch, &loopback(addr.port()), &[addr])
            .await
            .unwrap_err();
        assert!(err.message.contains("HTTP 404"), "{}", err.message);
        stop.cancel();
    }

    #[tokio::test]
    async fn missing_host_header_and_foreign_listener_are_named() {
        // A proxy that forwards to certkeeper's listener without the Host header (nginx's default
        // `proxy_pass` sends the upstream address as Host).
        let tokens = TokenStore::new();
        let server = Http01Server::bind(&["127.0.0.1:0".parse().unwrap()], tokens.clone()).unwrap();
        let real = server.local_addrs()[0];
        let stop = CancellationToken::new();
        let _t = server.serve(stop.clone()).unwrap();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| async move {
            let r = reqwest::Client::new()
                .get(format!("http://{real}{}", req.uri().path()))
                .send()
                .await
                .unwrap();
            let status = StatusCode::from_u16(r.status().as_u16()).unwrap();
            // The upstream's diagnostic header passes through, as nginx passes unknown headers.
            let diag = r
                .headers()
                .get(crate::challenge::http01::DIAG_HEADER)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            let body = r.text().await.unwrap_or_default();
            (
                status,
                [(crate::challenge::http01::DIAG_HEADER, diag)],
                body,
            )
                .into_response()
        });
        let (proxy, pstop) = serve(app).await;
        let solver = Http01Solver::new(tokens.clone(), true);
        let ch = ctx("tokHost");
        solver.present(&ch).await.unwrap();
        let err = self_check(&ch, &loopback(proxy.port()), &[real])
            .await
            .unwrap_err();
        assert!(
            err.message.contains("proxy_set_header Host $host;"),
            "{}",
            err.message
        );
        pstop.cancel();

        // The listener answers directly but another process presented the token.
        let err = self_check(&ctx("tokElsewhere"), &loopback(real.port()), &[real])
            .await
            .unwrap_err();
        assert!(
            err.message
                .contains("another certkeeper process holds the listener"),
            "{}",
            err.message
        );
        stop.cancel();
    }

    #[tokio::test]
    async fn a_404_is_explained_with_the_nginx_location_block() {
        let app = axum::Router::new().fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                [("server", "nginx/1.22.1")],
                "<html><head><title>404 Not Found</title></head></html>",
            )
                .into_response()
        });
        let (addr, stop) = serve(app).await;
        let listener: SocketAddr = "127.0.0.1:8402".parse().unwrap();
        let err = self_check(&ctx("tok404"), &loopback(addr.port()), &[listener])
            .await
            .unwrap_err();
        let m = &err.message;
        assert!(err.retryable);
        assert!(m.contains("HTTP 404 Not Found"), "{m}");
        assert!(m.contains("\"nginx/1.22.1\""), "{m}");
        assert!(m.contains("404 Not Found</title>"), "{m}");
        assert!(
            m.contains("the token is not reachable through the public address"),
            "{m}"
        );
        assert!(
            m.contains("location /.well-known/acme-challenge/ { proxy_pass http://127.0.0.1:8402;"),
            "{m}"
        );
        stop.cancel();
    }

    #[tokio::test]
    async fn redirect_loops_and_refused_connections_are_named() {
        let app = axum::Router::new().fallback(|req: axum::extract::Request| async move {
            let to = if req.uri().path().ends_with("/a") {
                format!("{}b", &req.uri().path()[..req.uri().path().len() - 1])
            } else {
                req.uri().path().to_string()
            };
            (StatusCode::FOUND, [("location", to)]).into_response()
        });
        let (addr, stop) = serve(app).await;
        let err = self_check(&ctx("loop"), &loopback(addr.port()), &[])
            .await
            .unwrap_err();
        assert!(err.message.contains("redirect loop"), "{}", err.message);
        stop.cancel();

        // A port nobody listens on.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = free.local_addr().unwrap().port();
        drop(free);
        let err = self_check(&ctx("refused"), &loopback(port), &[])
            .await
            .unwrap_err();
        assert!(err.message.contains("no answer"), "{}", err.message);
        assert!(err.message.contains("firewall"), "{}", err.message);
    }

    #[tokio::test]
    async fn wrong_body_and_bad_gateway_are_explained() {
        let app = axum::Router::new().fallback(|| async {
            (StatusCode::OK, "<!doctype html><title>My shop</title>").into_response()
        });
        let (addr, stop) = serve(app).await;
        let err = self_check(&ctx("wrongbody"), &loopback(addr.port()), &[])
            .await
            .unwrap_err();
        assert!(err.message.contains("HTTP 200 OK"), "{}", err.message);
        assert!(err.message.contains("My shop"), "{}", err.message);
        stop.cancel();
        let app =
            axum::Router::new().fallback(|| async { StatusCode::BAD_GATEWAY.into_response() });
        let (addr, stop) = serve(app).await;
        let err = self_check(
            &ctx("gw"),
            &loopback(addr.port()),
            &["127.0.0.1:9999".parse().unwrap()],
        )
        .await
        .unwrap_err();
        assert!(err.message.contains("HTTP 502"), "{}", err.message);
        assert!(
            err.message
                .contains("cannot reach certkeeper's listener at 127.0.0.1:9999"),
            "{}",
            err.message
        );
        stop.cancel();
    }

    #[test]
    fn config_forms_of_self_check() {
        use crate::config::{Config, SolverKind};
        let parse = |solver: &str| {
            let text = format!(
                "[issuer.le]\ndirectory = \"https://127.0.0.1:1/dir\"\n[[issuer.le.solver]]\nhttp01 = {solver}\n"
            );
            Config::from_str(
                &text,
                std::path::Path::new("/etc/certkeeper/certkeeper.toml"),
            )
            .map(|c| match &c.issuers["le"].solvers[0].kind {
                SolverKind::Http01 {
                    self_check,
                    self_check_target,
                } => (*self_check, self_check_target.clone()),
                other => panic!("{other:?}"),
            })
            .map_err(|e| e.to_string())
        };
        assert_eq!(parse("{}").unwrap(), (true, SelfCheckTarget::default()));
        assert_eq!(
            parse("{ self_check = false }").unwrap(),
            (false, SelfCheckTarget::default())
        );
        assert_eq!(
            parse("{ self_check = { port = 5002, resolve = \"127.0.0.1\" } }").unwrap(),
            (true, loopback(5002))
        );
        assert_eq!(
            parse("{ self_check = { resolve = [\"2001:db8::7\", \"192.0.2.7\"] } }")
                .unwrap()
                .1
                .resolve,
            vec![
                "2001:db8::7".parse::<IpAddr>().unwrap(),
                "192.0.2.7".parse().unwrap()
            ]
        );
        let e = parse("{ self_check = { port = 70000 } }").unwrap_err();
        assert!(
            e.contains("http01.self_check.port: 70000 is not a TCP port"),
            "{e}"
        );
        let e = parse("{ self_check = { resolve = \"www.example.com\" } }").unwrap_err();
        assert!(
            e.contains("\"www.example.com\" is not an IP address"),
            "{e}"
        );
        let e = parse("{ self_check = { prot = 80 } }").unwrap_err();
        assert!(e.contains("unknown field `prot`"), "{e}");
        let e = parse("{ self_check = \"yes\" }").unwrap_err();
        assert!(e.contains("true, false, or a table"), "{e}");
    }

    #[tokio::test]
    async fn unresolvable_name_says_so() {
        let mut ch = ctx("nores");
        ch.identifier = "does-not-exist.invalid".into();
        let err = self_check(&ch, &SelfCheckTarget::default(), &[])
            .await
            .unwrap_err();
        assert!(
            err.message.contains("does not resolve") || err.message.contains("no A or AAAA"),
            "{}",
            err.message
        );
    }
}
