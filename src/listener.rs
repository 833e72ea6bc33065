//! One accept loop with limits, shared by the HTTP-01 listener and the admin listener.
//!
//! `axum::serve` accepts every connection and sets no header-read timeout, so a few hundred clients
//! sending `GET / HTTP/1.1\r\n` and nothing more (slowloris) hold every slot and the CA's validation
//! request waits behind them. This loop serves the same [`axum::Router`] through hyper's HTTP/1
//! connection builder with:
//! - a **header-read timeout**: a request's headers must arrive within it. hyper starts that timer
//!   whenever the connection waits for the next request, so it is also the **idle (keep-alive)
//!   timeout**;
//! - a **lifetime** per connection, however busy it is;
//! - a **per-IP cap** (IPv6 counted per /64, since one host usually owns a whole /64): a peer over it
//!   is closed at once, so one attacker cannot take the slots the CA, connecting from other
//!   addresses, needs;
//! - a **total cap**: over it, new connections are closed at once (refusing the newest keeps the
//!   loop from ever waiting on a slot; the per-IP cap keeps one peer from reaching the total).

use std::collections::HashMap;
use std::future::Future as _;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;

/// How long a connection may stay open after shutdown began, to finish the request it serves.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The limits one listener enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Open connections at once, from all peers.
    pub max_connections: usize,
    /// Open connections at once from one IP address (one /64 for IPv6).
    pub max_per_ip: usize,
    /// A request's headers must arrive within this; also the idle time allowed between requests.
    pub header_read_timeout: Duration,
    /// The longest a connection may stay open, however busy.
    pub lifetime: Duration,
}

/// Why a connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Its peer already holds `max_per_ip` connections.
    PerIp,
    /// `max_connections` connections are open.
    Total,
}

/// Counts open connections, in total and per peer.
#[derive(Clone, Debug)]
pub struct ConnLimiter {
    state: Arc<Mutex<Counts>>,
    max_total: usize,
    max_per_ip: usize,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// An admitted connection's slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Admitted {
    state: Arc<Mutex<Counts>>,
    key: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut c = self.state.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_ip.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.key);
            }
        }
    }
}

impl ConnLimiter {
    /// A limiter for at most `max_total` connections, `max_per_ip` of them from one peer (both at
    /// least 1).
    pub fn new(max_total: usize, max_per_ip: usize) -> Self {
        Self {
            state: Arc::default(),
            max_total: max_total.max(1),
            max_per_ip: max_per_ip.max(1),
        }
    }

    /// Take a slot for a connection from `ip`, or say why there is none.
    pub fn try_admit(&self, ip: IpAddr) -> Result<Admitted, Refused> {
        let key = peer_key(ip);
        let mut c = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let n = c.per_ip.get(&key).copied().unwrap_or(0);
        if n >= self.max_per_ip {
            return Err(Refused::PerIp);
        }
        if c.total >= self.max_total {
            return Err(Refused::Total);
        }
        c.total += 1;
        c.per_ip.insert(key, n + 1);
        Ok(Admitted {
            state: self.state.clone(),
            key,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

/// The address a peer is counted under: IPv4 (also when mapped into IPv6) as is, IPv6 by its /64.
fn peer_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// Serve `app` on `listener` with `limits` until `shutdown` is cancelled; `name` labels log lines.
///
/// Returns when the listener stops accepting; connections still open get [`SHUTDOWN_GRACE`] to
/// finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: Limits,
    name: &'static str,
    shutdown: CancellationToken,
) {
    let limiter = ConnLimiter::new(limits.max_connections, limits.max_per_ip);
    serve_with(listener, app, limits, limiter, name, shutdown).await;
}

/// [`serve`] with a limiter shared between several listeners.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: Limits,
    limiter: ConnLimiter,
    name: &'static str,
    shutdown: CancellationToken,
) {
    let mut refused_logged = std::time::Instant::now() - Duration::from_secs(60);
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off rather than spin; the connection stays in the backlog.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let slot = match limiter.try_admit(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                // One line a minute at most: an attacker must not flood the journal either.
                if refused_logged.elapsed() >= Duration::from_secs(60) {
                    refused_logged = std::time::Instant::now();
                    tracing::warn!(
                        listener = name, peer = %peer.ip(), reason = ?why, open = limiter.open(),
                        "connection refused: over the connection cap (further refusals are not logged for a minute)"
                    );
                }
                drop(stream);
                continue;
            }
        };
        let app = app.clone();
        let stop = shutdown.clone();
        tokio::spawn(serve_connection(stream, peer, app, limits, slot, stop));
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    app: axum::Router,
    limits: Limits,
    slot: Admitted,
    stop: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(LimitedConn {
        inner: stream,
        deadline: Box::pin(tokio::time::sleep(limits.lifetime)),
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(io, TowerToHyperService::new(app));
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await.unwrap_or(Ok(()))
        }
    };
    if let Err(e) = result {
        tracing::debug!(peer = %peer, error = %e, "connection closed with an error");
    }
    drop(slot);
}

/// A connection that fails its reads and writes once its lifetime is over.
struct LimitedConn {
    inner: tokio::net::TcpStream,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl LimitedConn {
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn lifetime_over() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "connection lifetime exceeded")
}

impl tokio::io::AsyncRead for LimitedConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.expired(cx) {
            return Poll::Ready(Err(lifetime_over()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for LimitedConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.expired(cx) {
            return Poll::Ready(Err(lifetime_over()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[test]
    fn limiter_caps_per_peer_and_in_total_and_frees_slots() {
        let l = ConnLimiter::new(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let a1 = l.try_admit(a).unwrap();
        let _a2 = l.try_admit(a).unwrap();
        assert_eq!(l.try_admit(a).unwrap_err(), Refused::PerIp);
        // the same IPv4 address mapped into IPv6 is the same peer
        assert_eq!(
            l.try_admit("::ffff:192.0.2.1".parse().unwrap())
                .unwrap_err(),
            Refused::PerIp
        );
        let _b1 = l.try_admit(b).unwrap();
        assert_eq!(l.try_admit(b).unwrap_err(), Refused::Total);
        drop(a1);
        assert_eq!(l.open(), 2);
        let _a3 = l.try_admit(a).unwrap();
        // one /64 is one peer
        let l = ConnLimiter::new(10, 1);
        let _x = l.try_admit("2001:db8::1".parse().unwrap()).unwrap();
        assert_eq!(
            l.try_admit("2001:db8::ffff:2".parse().unwrap())
                .unwrap_err(),
            Refused::PerIp
        );
        assert!(l.try_admit("2001:db8:0:1::1".parse().unwrap()).is_ok());
    }

    /// A client that sends half a request line and stops is closed at the header-read timeout
    /// (`axum::serve` kept it open for as long as the client liked).
    #[tokio::test]
    async fn slow_headers_are_closed_at_the_header_read_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "hi" }));
        let limits = Limits {
            max_connections: 8,
            max_per_ip: 8,
            header_read_timeout: Duration::from_millis(500),
            lifetime: Duration::from_secs(60),
        };
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, app, limits, "test", stop.clone()));
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let start = std::time::Instant::now();
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf))
            .await
            .expect("the slow connection is still open after 10 s")
            .ok();
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
        // An idle keep-alive connection is closed the same way.
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let start = std::time::Instant::now();
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), idle.read_to_end(&mut buf))
            .await
            .expect("the idle connection is still open after 10 s")
            .ok();
        assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
        stop.cancel();
    }
}
