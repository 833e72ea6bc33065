//! TLS-ALPN-01 (RFC 8737): answer the CA's TLS connection on a configurable port with the `acme-tls/1`
//! ALPN protocol and a self-signed certificate carrying the critical `acmeIdentifier` extension
//! (the SHA-256 of the key authorization).
//!
//! The listener runs only while challenges are presented: it is bound on the first
//! [`Solver::present`] and closed when the last challenge is cleaned up, so the port is free for the
//! real web server otherwise. Each connection is handled on its own thread, under limits so that
//! stalled or dribbling clients cannot keep the CA out: at most [`MAX_HANDSHAKES`] at once and
//! [`MAX_HANDSHAKES_PER_IP`] from one address (connections over either are closed at once), and each
//! connection, handshake included, is closed at [`HANDSHAKE_DEADLINE`] however slowly its bytes
//! arrive. A thread that cannot be started is an error, never a panic.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use openssl::asn1::{Asn1Object, Asn1OctetString, Asn1Time};
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{
    AlpnError, NameType, Ssl, SslContext, SslContextBuilder, SslMethod, SslVersion,
    select_next_proto,
};
use openssl::x509::extension::SubjectAlternativeName;
use openssl::x509::{X509, X509Extension, X509NameBuilder};

use super::{ChallengeCtx, ChallengeKind, SolveError, Solver};
use crate::listener::ConnLimiter;

/// Handshakes in progress at once; more connections are closed at once.
pub const MAX_HANDSHAKES: usize = 256;
/// Handshakes in progress at once from one address (one IPv6 /64): a CA validates every name of an
/// order at once from each of its perspectives (pebble: 9 connections for 3 names), so this only
/// keeps a single peer from taking every slot.
pub const MAX_HANDSHAKES_PER_IP: usize = 128;
/// The longest a connection may take, handshake and close together; a CA's takes well under a second.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

/// The ALPN protocol list (wire format) the CA offers and we must select.
const ACME_TLS_ALPN: &[u8] = b"\x0aacme-tls/1";

/// The `id-pe-acmeIdentifier` extension OID (RFC 8737 §6.1).
const ACME_IDENTIFIER_OID: &str = "1.3.6.1.5.5.7.1.31";

type Contexts = Arc<Mutex<HashMap<String, SslContext>>>;

struct Server {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// Answers TLS-ALPN-01 challenges on `listen`.
pub struct TlsAlpn01Solver {
    listen: SocketAddr,
    contexts: Contexts,
    server: Mutex<Option<Server>>,
    limits: HandshakeLimits,
}

/// The limits on the connections the listener accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandshakeLimits {
    /// Connections handled at once.
    pub max_handshakes: usize,
    /// Connections handled at once from one address.
    pub max_per_ip: usize,
    /// The longest one connection may take.
    pub deadline: Duration,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        Self {
            max_handshakes: MAX_HANDSHAKES,
            max_per_ip: MAX_HANDSHAKES_PER_IP,
            deadline: HANDSHAKE_DEADLINE,
        }
    }
}

impl TlsAlpn01Solver {
    /// A solver that listens on `listen` (usually `0.0.0.0:443`, or a port 443 is forwarded to) while
    /// challenges are pending.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            contexts: Arc::new(Mutex::new(HashMap::new())),
            server: Mutex::new(None),
            limits: HandshakeLimits::default(),
        }
    }

    /// Change the connection limits (default [`HandshakeLimits::default`]).
    pub fn with_limits(mut self, limits: HandshakeLimits) -> Self {
        self.limits = limits;
        self
    }

    fn ensure_server(&self) -> Result<(), SolveError> {
        let mut server = self.server.lock().unwrap_or_else(|p| p.into_inner());
        if server.is_some() {
            return Ok(());
        }
        let listener = TcpListener::bind(self.listen).map_err(|e| {
            SolveError::retryable(format!(
                "tls-alpn-01: cannot listen on {}: {e} (is a web server using the port? stop it or use another solver)",
                self.listen
            ))
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|e| SolveError::retryable(format!("tls-alpn-01: {e}")))?;
        let base = context(None, &self.contexts)
            .map_err(|e| SolveError::retryable(format!("tls-alpn-01: TLS setup: {e}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let limits = self.limits;
        let thread = std::thread::Builder::new()
            .name("tls-alpn-01".into())
            .spawn(move || accept_loop(listener, base, limits, stop2))
            .map_err(|e| {
                SolveError::retryable(format!(
                    "tls-alpn-01: cannot start the listener thread: {e}"
                ))
            })?;
        tracing::info!(listen = %self.listen, "tls-alpn-01 listener started");
        *server = Some(Server { stop, thread });
        Ok(())
    }

    fn stop_server_if_idle(&self) {
        let idle = self
            .contexts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty();
        if !idle {
            return;
        }
        let taken = self.server.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(s) = taken {
            s.stop.store(true, Ordering::SeqCst);
            let _ = s.thread.join();
            tracing::info!(listen = %self.listen, "tls-alpn-01 listener stopped");
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    base: SslContext,
    limits: HandshakeLimits,
    stop: Arc<AtomicBool>,
) {
    let limiter = ConnLimiter::new(limits.max_handshakes, limits.max_per_ip);
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, peer)) => {
                let slot = match limiter.try_admit(peer.ip()) {
                    Ok(slot) => slot,
                    Err(why) => {
                        tracing::debug!(peer = %peer, reason = ?why, "tls-alpn-01: over the connection cap; closed");
                        continue;
                    }
                };
                let base = base.clone();
                let started = std::thread::Builder::new()
                    .name("tls-alpn-01-conn".into())
                    .spawn(move || {
                        handle(stream, peer, &base, Instant::now() + limits.deadline);
                        drop(slot);
                    });
                if let Err(e) = started {
                    // The closure (stream and slot) is dropped: the connection is closed, the slot freed.
                    tracing::warn!(peer = %peer, error = %e, "tls-alpn-01: cannot start a thread for a connection; closed it");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(25));
            }
            Err(e) => {
                tracing::warn!(error = %e, "tls-alpn-01 accept failed");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// One connection: the handshake, then wait for the validator to close; all before `deadline`.
fn handle(stream: std::net::TcpStream, peer: SocketAddr, base: &SslContext, deadline: Instant) {
    let _ = stream.set_nonblocking(false);
    let ssl = match Ssl::new(base) {
        Ok(ssl) => ssl,
        Err(e) => {
            tracing::warn!(error = %e, "tls-alpn-01: TLS setup failed");
            return;
        }
    };
    match ssl.accept(DeadlineStream {
        inner: stream,
        deadline,
    }) {
        Ok(mut tls) => {
            // The validator closes after the handshake; drain until it does.
            let mut buf = [0u8; 256];
            let _ = tls.read(&mut buf);
            let _ = tls.shutdown();
        }
        Err(e) => {
            tracing::debug!(peer = %peer, error = %e, "tls-alpn-01 handshake failed")
        }
    }
}

/// A blocking TCP stream whose reads and writes all end by one deadline: each call waits at most the
/// time left, so a client sending a byte now and then cannot stretch the connection (a plain read
/// timeout restarts with every byte).
#[derive(Debug)]
struct DeadlineStream {
    inner: std::net::TcpStream,
    deadline: Instant,
}

impl DeadlineStream {
    fn time_left(&self) -> std::io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "tls-alpn-01 connection deadline passed",
            ));
        }
        Ok(left)
    }
}

impl Read for DeadlineStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.time_left()?;
        self.inner.set_read_timeout(Some(left))?;
        self.inner.read(buf)
    }
}

impl Write for DeadlineStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let left = self.time_left()?;
        self.inner.set_write_timeout(Some(left))?;
        self.inner.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A server context: the challenge certificate when given, `acme-tls/1` required, and (for the base
/// context) an SNI callback that switches to the context of the requested name.
fn context(
    cert: Option<(&X509, &PKey<Private>)>,
    contexts: &Contexts,
) -> Result<SslContext, openssl::error::ErrorStack> {
    let mut b = SslContextBuilder::new(SslMethod::tls_server())?;
    b.set_min_proto_version(Some(SslVersion::TLS1_2))?;
    b.set_alpn_select_callback(|_, client| {
        select_next_proto(ACME_TLS_ALPN, client).ok_or(AlpnError::ALERT_FATAL)
    });
    if let Some((cert, key)) = cert {
        b.set_certificate(cert)?;
        b.set_private_key(key)?;
    } else {
        let contexts = contexts.clone();
        b.set_servername_callback(move |ssl, _alert| {
            let name = ssl
                .servername(NameType::HOST_NAME)
                .map(|n| n.trim_end_matches('.').to_ascii_lowercase());
            let ctx = name.and_then(|n| {
                contexts
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&n)
                    .cloned()
            });
            match ctx {
                Some(ctx) => ssl
                    .set_ssl_context(&ctx)
                    .map_err(|_| openssl::ssl::SniError::ALERT_FATAL),
                None => Err(openssl::ssl::SniError::ALERT_FATAL),
            }
        });
    }
    Ok(b.build())
}

/// The SNI name the CA sends for an identifier: the name itself, or for an IP address its reverse
/// DNS name (RFC 8738 §6).
pub fn sni_name(identifier: &str) -> String {
    match identifier.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        Ok(IpAddr::V6(v6)) => {
            let mut parts: Vec<String> = Vec::with_capacity(32);
            for b in v6.octets().iter().rev() {
                parts.push(format!("{:x}", b & 0x0f));
                parts.push(format!("{:x}", b >> 4));
            }
            format!("{}.ip6.arpa", parts.join("."))
        }
        Err(_) => identifier.trim_end_matches('.').to_ascii_lowercase(),
    }
}

/// The self-signed challenge certificate of RFC 8737 §3: one SAN (the identifier) and the critical
/// `acmeIdentifier` extension holding SHA-256(key authorization).
pub fn challenge_certificate(
    identifier: &str,
    key_authorization: &str,
) -> Result<(X509, PKey<Private>), openssl::error::ErrorStack> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    let key = PKey::from_ec_key(EcKey::generate(&group)?)?;
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_text("CN", "certkeeper tls-alpn-01")?;
    let name = name.build();
    let mut b = X509::builder()?;
    b.set_version(2)?;
    let mut serial = BigNum::new()?;
    serial.rand(128, MsbOption::MAYBE_ZERO, false)?;
    let serial = serial.to_asn1_integer()?;
    b.set_serial_number(&serial)?;
    b.set_subject_name(&name)?;
    b.set_issuer_name(&name)?;
    b.set_pubkey(&key)?;
    let not_before = Asn1Time::days_from_now(0)?;
    let not_after = Asn1Time::days_from_now(7)?;
    b.set_not_before(&not_before)?;
    b.set_not_after(&not_after)?;
    let mut san = SubjectAlternativeName::new();
    match identifier.parse::<IpAddr>() {
        Ok(_) => san.ip(identifier),
        Err(_) => san.dns(identifier),
    };
    let san = san.build(&b.x509v3_context(None, None))?;
    b.append_extension(san)?;
    let digest = openssl::sha::sha256(key_authorization.as_bytes());
    let mut der = vec![0x04, 0x20];
    der.extend_from_slice(&digest);
    let oid = Asn1Object::from_str(ACME_IDENTIFIER_OID)?;
    let value = Asn1OctetString::new_from_bytes(&der)?;
    b.append_extension(X509Extension::new_from_der(&oid, true, &value)?)?;
    b.sign(&key, MessageDigest::sha256())?;
    Ok((b.build(), key))
}

#[async_trait::async_trait]
impl Solver for TlsAlpn01Solver {
    fn kind(&self) -> ChallengeKind {
        ChallengeKind::TlsAlpn01
    }

    async fn present(&self, ch: &ChallengeCtx) -> Result<(), SolveError> {
        let (cert, key) = challenge_certificate(&ch.identifier, &ch.key_authorization)
            .map_err(|e| SolveError::retryable(format!("tls-alpn-01: certificate: {e}")))?;
        let ctx = context(Some((&cert, &key)), &self.contexts)
            .map_err(|e| SolveError::retryable(format!("tls-alpn-01: TLS setup: {e}")))?;
        self.contexts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(sni_name(&ch.identifier), ctx);
        if let Err(e) = self.ensure_server() {
            self.contexts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&sni_name(&ch.identifier));
            return Err(e);
        }
        Ok(())
    }

    async fn cleanup(&self, ch: &ChallengeCtx) -> Result<(), SolveError> {
        self.contexts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&sni_name(&ch.identifier));
        self.stop_server_if_idle();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_names_for_ips_are_reverse_dns() {
        assert_eq!(sni_name("127.0.0.1"), "1.0.0.127.in-addr.arpa");
        assert_eq!(sni_name("WWW.Example.com."), "www.example.com");
        assert!(sni_name("2001:db8::1").ends_with(".8.b.d.0.1.0.0.2.ip6.arpa"));
        assert!(sni_name("2001:db8::1").starts_with("1.0.0.0."));
    }

    #[test]
    fn challenge_certificate_carries_the_critical_acme_identifier() {
        let (cert, key) = challenge_certificate("a.example.com", "tok.thumb").unwrap();
        assert!(cert.verify(&key).unwrap());
        let sans: Vec<String> = cert
            .subject_alt_names()
            .unwrap()
            .iter()
            .filter_map(|g| g.dnsname().map(str::to_string))
            .collect();
        assert_eq!(sans, vec!["a.example.com"]);
        let text = String::from_utf8(cert.to_text().unwrap()).unwrap();
        assert!(text.contains("1.3.6.1.5.5.7.1.31: critical"), "{text}");
        // extnValue is an OCTET STRING wrapping the DER OCTET STRING of the digest: 04 22 04 20 <32 bytes>.
        let digest = openssl::sha::sha256(b"tok.thumb");
        let mut want = vec![0x04, 0x22, 0x04, 0x20];
        want.extend_from_slice(&digest);
        let der = cert.to_der().unwrap();
        assert!(der.windows(want.len()).any(|w| w == want.as_slice()));
        let other = openssl::sha::sha256(b"other");
        assert!(!der.windows(32).any(|w| w == other));
    }

    /// RFC 8738 §6: for an IP identifier the CA sends the reverse-DNS name as SNI and expects the
    /// address as an iPAddress SAN. A real handshake against the solver shows both.
    #[tokio::test]
    async fn ip_identifiers_are_answered_under_their_reverse_dns_sni() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let solver = TlsAlpn01Solver::new(SocketAddr::from(([127, 0, 0, 1], port)));
        let ctx = ChallengeCtx {
            cert_name: "ip".into(),
            identifier: "127.0.0.1".into(),
            is_ip: true,
            wildcard: false,
            kind: ChallengeKind::TlsAlpn01,
            token: "tok".into(),
            key_authorization: "tok.thumb".into(),
            persist: None,
        };
        solver.present(&ctx).await.unwrap();
        let handshake = tokio::task::spawn_blocking(move || {
            use openssl::ssl::{SslConnector, SslVerifyMode};
            let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
            b.set_verify(SslVerifyMode::NONE);
            b.set_alpn_protos(ACME_TLS_ALPN).unwrap();
            let mut cfg = b.build().configure().unwrap();
            cfg.set_verify_hostname(false);
            cfg.set_use_server_name_indication(true);
            let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            let tls = cfg.connect("1.0.0.127.in-addr.arpa", tcp).unwrap();
            let alpn = tls.ssl().selected_alpn_protocol().map(<[u8]>::to_vec);
            let cert = tls.ssl().peer_certificate().unwrap();
            (alpn, cert)
        })
        .await
        .unwrap();
        solver.cleanup(&ctx).await.unwrap();
        let (alpn, cert) = handshake;
        assert_eq!(alpn.as_deref(), Some(&b"acme-tls/1"[..]));
        let ips: Vec<Vec<u8>> = cert
            .subject_alt_names()
            .unwrap()
            .iter()
            .filter_map(|g| g.ipaddress().map(<[u8]>::to_vec))
            .collect();
        assert_eq!(ips, vec![vec![127, 0, 0, 1]]);
        assert!(
            cert.subject_alt_names()
                .unwrap()
                .iter()
                .all(|g| g.dnsname().is_none()),
            "an IP challenge certificate carries no dNSName"
        );
    }

    fn ip_ctx() -> ChallengeCtx {
        ChallengeCtx {
            cert_name: "ip".into(),
            identifier: "127.0.0.1".into(),
            is_ip: true,
            wildcard: false,
            kind: ChallengeKind::TlsAlpn01,
            token: "tok".into(),
            key_authorization: "tok.thumb".into(),
            persist: None,
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// A validator's handshake from 127.0.0.1; returns the selected ALPN protocol.
    fn handshake(port: u16) -> Option<Vec<u8>> {
        use openssl::ssl::{SslConnector, SslVerifyMode};
        let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
        b.set_verify(SslVerifyMode::NONE);
        b.set_alpn_protos(ACME_TLS_ALPN).unwrap();
        let mut cfg = b.build().configure().unwrap();
        cfg.set_verify_hostname(false);
        let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let tls = cfg.connect("1.0.0.127.in-addr.arpa", tcp).ok()?;
        tls.ssl().selected_alpn_protocol().map(<[u8]>::to_vec)
    }

    /// A client that announces a large TLS record and sends it a byte at a time is closed at the
    /// deadline (a per-read timeout would restart with every byte and keep it open).
    #[tokio::test]
    async fn a_dribbling_client_is_closed_at_the_deadline() {
        let port = free_port();
        let solver = TlsAlpn01Solver::new(SocketAddr::from(([127, 0, 0, 1], port))).with_limits(
            HandshakeLimits {
                deadline: Duration::from_secs(1),
                ..HandshakeLimits::default()
            },
        );
        let ctx = ip_ctx();
        solver.present(&ctx).await.unwrap();
        let elapsed = tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let start = Instant::now();
            // a handshake record of 16128 bytes, of which only the header comes at once
            s.write_all(&[0x16, 0x03, 0x01, 0x3f, 0x00]).unwrap();
            while start.elapsed() < Duration::from_secs(6) {
                if s.write_all(&[0x01]).is_err() {
                    break;
                }
                let mut b = [0u8; 64];
                match s.read(&mut b) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
            }
            start.elapsed()
        })
        .await
        .unwrap();
        solver.cleanup(&ctx).await.unwrap();
        assert!(
            elapsed < Duration::from_secs(3),
            "the dribbling connection stayed open for {elapsed:?}"
        );
    }

    /// 200 connections from 127.0.0.2 that never send a ClientHello do not keep the CA's handshake
    /// (from 127.0.0.1) out: the per-address cap closes most of them at once.
    #[tokio::test]
    async fn stalled_connections_do_not_keep_a_real_handshake_out() {
        let port = free_port();
        let solver = TlsAlpn01Solver::new(SocketAddr::from(([127, 0, 0, 1], port)));
        let ctx = ip_ctx();
        solver.present(&ctx).await.unwrap();
        let mut stalled = Vec::new();
        for _ in 0..200 {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            stalled.push(
                sock.connect(SocketAddr::from(([127, 0, 0, 1], port)))
                    .await
                    .unwrap(),
            );
        }
        // let the listener see them all before the real one
        tokio::time::sleep(Duration::from_millis(300)).await;
        let start = Instant::now();
        let alpn = tokio::task::spawn_blocking(move || handshake(port))
            .await
            .unwrap();
        assert_eq!(alpn.as_deref(), Some(&b"acme-tls/1"[..]));
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        drop(stalled);
        solver.cleanup(&ctx).await.unwrap();
    }
}
