//! Deploy verification (`verify_deploy`): does every endpoint serve the certificate just installed?
//!
//! After the reload hooks of a batch, each endpoint is asked over TLS (with SNI) for its leaf
//! certificate, which is compared byte for byte (DER) with the installed leaf, retrying until
//! `timeout`. On a mismatch the reload hooks run once more and the endpoints are checked again;
//! what they serve then is recorded in the ledger ([`Event::DeployChecked`]): "installed, not
//! deployed" in `status`, `explain` and `/metrics`, and a `deploy_mismatch` notification. The
//! daemon checks again every `interval` (and at start-up), without reloading, so a server that
//! later serves an old certificate is caught too.
//!
//! The probe reads the leaf only: the chain is not verified (an endpoint still serving a
//! self-signed placeholder must be reported, not fail the TLS handshake).

use std::io;
use std::net::{TcpStream, ToSocketAddrs as _};
use std::time::Duration;

use jiff::Timestamp;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use openssl::x509::X509;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::config::{CertificateConfig, VerifyDeploy};
use crate::hooks::ReloadRequest;
use crate::store::{DeployCheck, EndpointServed, Event, Snapshot};

use super::reload;
use super::runtime::Runtime;

/// The longest one TLS probe may take (connect and handshake).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The pause between two rounds of probes while waiting for the endpoints to catch up.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// What one endpoint served: the leaf's DER, serial and Not After.
#[derive(Debug)]
struct Leaf {
    der: Vec<u8>,
    serial: String,
    not_after: Option<Timestamp>,
}

/// Connect to `endpoint` (host:port), send `server_name` as SNI, and return the leaf it serves.
fn probe(endpoint: &str, server_name: &str, timeout: Duration) -> Result<Leaf, String> {
    let addrs: Vec<_> = endpoint
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {endpoint}: {e}"))?
        .collect();
    let mut last = io::Error::other(format!("{endpoint} resolves to no address"));
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e,
        }
    }
    let stream = stream.ok_or_else(|| format!("cannot connect: {last}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(|e| e.to_string())?;
    builder.set_verify(SslVerifyMode::NONE);
    let connector = builder.build();
    let config = connector
        .configure()
        .map_err(|e| e.to_string())?
        .verify_hostname(false)
        .use_server_name_indication(true);
    let tls = config
        .connect(server_name, stream)
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    let leaf = tls
        .ssl()
        .peer_certificate()
        .ok_or_else(|| "the server sent no certificate".to_string())?;
    leaf_facts(&leaf)
}

fn leaf_facts(leaf: &X509) -> Result<Leaf, String> {
    let der = leaf.to_der().map_err(|e| e.to_string())?;
    // Spelled as the installed serial is ([`crate::store::VerifiedCert::serial_hex`]): lowercase,
    // whole bytes.
    let mut serial = leaf
        .serial_number()
        .to_bn()
        .and_then(|bn| bn.to_hex_str().map(|s| s.to_ascii_lowercase()))
        .map_err(|e| e.to_string())?;
    if serial.len() % 2 == 1 {
        serial.insert(0, '0');
    }
    let not_after = crate::store::asn1_to_ts(leaf.not_after()).ok();
    Ok(Leaf {
        der,
        serial,
        not_after,
    })
}

/// Ask every endpoint of `v` until each serves the leaf `expected` (DER) or `v.timeout` passes.
async fn check_endpoints(v: &VerifyDeploy, expected: &[u8], serial: &str) -> DeployCheck {
    let deadline = Instant::now() + v.timeout;
    let mut served: Vec<EndpointServed> = v
        .connect
        .iter()
        .map(|e| EndpointServed {
            endpoint: e.clone(),
            ..Default::default()
        })
        .collect();
    loop {
        for slot in served.iter_mut().filter(|s| !s.matches) {
            let left = deadline.saturating_duration_since(Instant::now());
            let budget = left.clamp(Duration::from_millis(200), PROBE_TIMEOUT);
            let (endpoint, sni) = (slot.endpoint.clone(), v.server_name.clone());
            let result = tokio::task::spawn_blocking(move || probe(&endpoint, &sni, budget))
                .await
                .unwrap_or_else(|e| Err(format!("the probe failed: {e}")));
            *slot = match result {
                Ok(leaf) => EndpointServed {
                    endpoint: slot.endpoint.clone(),
                    matches: leaf.der == expected,
                    serial: Some(leaf.serial),
                    not_after: leaf.not_after,
                    error: None,
                },
                Err(e) => EndpointServed {
                    endpoint: slot.endpoint.clone(),
                    error: Some(e),
                    ..Default::default()
                },
            };
        }
        let deployed = served.iter().all(|s| s.matches);
        if deployed || Instant::now() + PROBE_INTERVAL >= deadline {
            return DeployCheck {
                at: Some(Timestamp::now()),
                serial: serial.to_string(),
                deployed,
                endpoints: served,
            };
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// The installed leaf of `snap` (DER and serial), when a live certificate is installed.
fn installed_leaf(snap: &Snapshot) -> Option<(Vec<u8>, String)> {
    let live = snap.live()?;
    let leaf = X509::from_pem(live.fullchain_pem().ok()?).ok()?;
    Some((leaf.to_der().ok()?, live.cert.serial_hex.clone()))
}

/// Check `cert` once (retrying for its timeout) and record the result; `None` when it has no
/// `verify_deploy` or no live certificate.
pub async fn check(rt: &Runtime, cert: &CertificateConfig) -> Option<DeployCheck> {
    let v = cert.verify_deploy.as_ref()?;
    let snap = rt.ledger.snapshot(&cert.name, &cert.output);
    let (der, serial) = installed_leaf(&snap)?;
    let result = check_endpoints(v, &der, &serial).await;
    if let Err(e) = rt
        .ledger
        .record(&cert.name, Event::DeployChecked(Box::new(result.clone())))
    {
        warn!(cert = %cert.name, error = %e, "cannot record the deploy check in the state directory");
    }
    Some(result)
}

/// After the reload hooks of a batch: check every certificate of `names` that has
/// `verify_deploy`; for those not deployed, run their reload `requests` once more and check
/// again. Every result is recorded and a mismatch is logged as an error naming the endpoint and
/// the serial it serves.
pub async fn verify_batch(
    rt: &Runtime,
    names: &[String],
    requests: &[ReloadRequest],
) -> Vec<(String, DeployCheck)> {
    let mut out = Vec::new();
    let certs = names
        .iter()
        .filter_map(|n| rt.config.certificates.get(n))
        .filter(|c| c.verify_deploy.is_some());
    for cert in certs {
        let Some(mut result) = check(rt, cert).await else {
            continue;
        };
        if !result.deployed {
            let again: Vec<ReloadRequest> = requests
                .iter()
                .filter(|r| r.cert_name == cert.name)
                .cloned()
                .collect();
            if !again.is_empty() {
                warn!(cert = %cert.name, not_deployed = %result.mismatches().join("; "), "the new certificate is not served yet; running the reload hooks once more");
                reload::run(&rt.ledger, &again, rt.config.daemon.hook_timeout).await;
                if let Some(r) = check(rt, cert).await {
                    result = r;
                }
            }
        }
        log_result(&cert.name, &result);
        out.push((cert.name.clone(), result));
    }
    out
}

/// Log a check: an error per endpoint that does not serve the installed certificate.
pub fn log_result(name: &str, result: &DeployCheck) {
    if result.deployed {
        info!(cert = %name, serial = %result.serial, "deployed: every verify_deploy endpoint serves the installed certificate");
        return;
    }
    for line in result.mismatches() {
        error!(cert = %name, installed = %result.serial, "installed, not deployed: {line}; check the reload hook and which files the server reads");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::ssl::{SslAcceptor, SslFiletype};

    /// A TLS server on loopback serving `pair` to `n` connections, recording the SNI it got.
    fn serve(
        dir: &std::path::Path,
        pair: (&[u8], &[u8]),
        n: usize,
    ) -> (String, std::thread::JoinHandle<Vec<Option<String>>>) {
        std::fs::write(dir.join("c.pem"), pair.1).unwrap();
        std::fs::write(dir.join("k.pem"), pair.0).unwrap();
        let mut a = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
        a.set_private_key_file(dir.join("k.pem"), SslFiletype::PEM)
            .unwrap();
        a.set_certificate_chain_file(dir.join("c.pem")).unwrap();
        let acceptor = a.build();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let h = std::thread::spawn(move || {
            let mut sni = Vec::new();
            for _ in 0..n {
                let (s, _) = listener.accept().unwrap();
                if let Ok(tls) = acceptor.accept(s) {
                    sni.push(
                        tls.ssl()
                            .servername(openssl::ssl::NameType::HOST_NAME)
                            .map(str::to_string),
                    );
                }
            }
            sni
        });
        (addr, h)
    }

    #[tokio::test]
    async fn the_served_leaf_is_compared_with_the_installed_one() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = crate::store::testpki::Pki::new();
        let (key_a, chain_a) = pki.leaf(&["www.example.com"], 0x0a, (0, 30));
        let (_, chain_b) = pki.leaf(&["www.example.com"], 0x0b, (0, 30));
        let (addr, server) = serve(tmp.path(), (&key_a, &chain_a), 2);
        let leaf = |pem: &[u8]| X509::from_pem(pem).unwrap().to_der().unwrap();
        let v = VerifyDeploy {
            connect: vec![addr.clone()],
            server_name: "www.example.com".into(),
            timeout: Duration::from_secs(2),
            interval: Duration::from_secs(3600),
        };
        let ok = check_endpoints(&v, &leaf(&chain_a), "0a").await;
        assert!(ok.deployed, "{ok:?}");
        assert_eq!(ok.endpoints[0].serial.as_deref(), Some("0a"));
        let start = std::time::Instant::now();
        let v = VerifyDeploy {
            timeout: Duration::from_millis(300),
            ..v
        };
        let bad = check_endpoints(&v, &leaf(&chain_b), "0b").await;
        assert!(!bad.deployed && start.elapsed() < Duration::from_secs(3));
        assert_eq!(bad.mismatches().len(), 1);
        assert!(
            bad.mismatches()[0].starts_with(&format!("{addr} serves serial 0a")),
            "{:?}",
            bad.mismatches()
        );
        // the SNI was sent
        let sni = server.join().unwrap();
        assert_eq!(sni[0].as_deref(), Some("www.example.com"));
    }

    #[tokio::test]
    async fn an_endpoint_that_does_not_answer_is_not_deployed() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let v = VerifyDeploy {
            connect: vec![format!("127.0.0.1:{port}")],
            server_name: "www.example.com".into(),
            timeout: Duration::from_millis(600),
            interval: Duration::from_secs(3600),
        };
        let r = check_endpoints(&v, b"x", "01").await;
        assert!(!r.deployed);
        let line = &r.mismatches()[0];
        assert!(
            line.contains("could not be checked") && line.contains("cannot connect"),
            "{line}"
        );
    }
}
