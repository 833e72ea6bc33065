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
use support::dns::bind::{self, Bind};

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
        .map(|s| {
            s.iter()
                .filter_map(|n| n.dnsname().map(str::to_string))
                .collect()
        })
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
        .certificate(CertSpec::new(
            "web",
            "a2c",
            &["www.a2c-http.test", "a2c-http.test"],
        ))
        .write();
    cfg.run_cli(&["renew"]).await.assert_ok();
    let cert = assert_issued_by_a2c(&a2c, &cfg, "web", &["www.a2c-http.test", "a2c-http.test"]);
    // acme2certifier issues 30-day certificates.
    let life = asn1_ts(cert.not_after()).duration_since(asn1_ts(cert.not_before()));
    assert!(
        (29 * 24..=31 * 24).contains(&(life.as_hours())),
        "lifetime {life:?}"
    );
    // dns-persist-01 records are only printed for an issuer with a dns_persist01 solver.
    cfg.run_cli(&["account", "persist-record", "--issuer", "a2c"])
        .await
        .assert_failed()
        .assert_mentions("no dns_persist01 solver configured");
    // The ledger recorded the issuer and the ARI CertID of the new certificate (for `replaces`).
    let state = cfg.cert_state("web").expect("state");
    assert_eq!(
        state["ari_cert_id"],
        certkeeper::acme::cert_id(
            &certkeeper::acme::Certificate::from_der(cert.to_der().unwrap()).unwrap()
        )
        .unwrap()
        .as_str(),
        "{state}"
    );
}

/// An rfc2136 `dns01` solver for the test bind9 (TSIG secret in a file in `dir`), its propagation
/// checked at that bind9.
fn rfc2136_solver(dir: &Path, server: &Bind) -> String {
    let secret = dir.join("tsig.key");
    std::fs::write(&secret, format!("{}\n", bind::SECRET)).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    format!(
        "dns01 = {{ provider = \"rfc2136\", server = \"{addr}\", tsig_key = \"{key}\", tsig_algorithm = \"hmac-sha256\", tsig_secret_file = \"{secret}\" }}\n\
         propagation = {{ timeout = \"20s\", interval = \"200ms\", nameservers = [\"{addr}\"] }}",
        addr = server.addr,
        key = bind::KEY_NAME,
        secret = secret.display(),
    )
}

/// DNS-01 for a wildcard and its base name: the records go into a real bind9 through RFC 2136,
/// certkeeper checks they are served there (AA), and acme2certifier validates them at the same
/// bind9 (its DNS server; pebble-challtestsrv sets no AA flag, so certkeeper's propagation check
/// could not pass against it).
#[tokio::test]
async fn dns01_issuance_of_a_wildcard_through_rfc2136_into_bind9() {
    let Some(server) = Bind::start().await else {
        return;
    };
    let a2c = A2c::start(A2cOpts {
        dns_port: Some(server.addr.port()),
        ..Default::default()
    });
    let cfg = TestConfig::new();
    let solver = rfc2136_solver(cfg.dir(), &server);
    let cfg = cfg
        .issuer(issuer(&a2c).solver(&solver))
        .certificate(CertSpec::new(
            "wild",
            "a2c",
            &["*.example.test", "example.test"],
        ))
        .write();
    let out = cfg.run_cli(&["renew"]).await;
    out.assert_ok();
    assert_issued_by_a2c(&a2c, &cfg, "wild", &["*.example.test", "example.test"]);
    // Only DNS-01 proves a wildcard; the records were checked at bind9 and removed afterwards.
    out.assert_mentions("TXT record visible at all authoritative nameservers");
    let left = support::dns::txt_values(server.addr, "_acme-challenge.example.test.").await;
    assert!(
        left.unwrap_or_default().is_empty(),
        "the challenge records were cleaned up"
    );
}

#[tokio::test]
async fn eab_required_account_needs_the_binding() {
    let a2c = A2c::start(A2cOpts {
        eab: Eab::Required,
        ..Default::default()
    });
    assert_eq!(a2c.directory["meta"]["externalAccountRequired"], true);
    // Without a binding: refused, and the message says what to configure.
    let cfg = http01_config(&a2c, issuer(&a2c))
        .certificate(CertSpec::new("web", "a2c", &["eab.a2c.test"]))
        .write();
    let out = cfg.run_cli(&["renew"]).await;
    out.assert_failed()
        .assert_mentions("requires external account binding");
    assert!(!cfg.output_dir("web").join("cert.pem").exists());
    // With the kid and HMAC key from acme2certifier's eab.csv: issued.
    let (kid, key) = a2c.eab_key();
    let cfg = TestConfig::new()
        .http01_listen(a2c.http01_port())
        .issuer(issuer(&a2c).eab(&kid, &key).solver_http01())
        .certificate(CertSpec::new("web", "a2c", &["eab.a2c.test"]))
        .write();
    cfg.run_cli(&["renew"]).await.assert_ok();
    assert_issued_by_a2c(&a2c, &cfg, "web", &["eab.a2c.test"]);
}

#[tokio::test]
async fn missing_contact_tells_the_user_to_add_one() {
    let a2c = A2c::start(A2cOpts::default());
    let mut spec = issuer(&a2c);
    spec.contact.clear();
    let cfg = http01_config(&a2c, spec)
        .certificate(CertSpec::new("web", "a2c", &["contact.a2c.test"]))
        .write();
    let out = cfg.run_cli(&["renew"]).await;
    out.assert_failed()
        .assert_mentions("Contact information is missing")
        .assert_mentions("add `contact = [\"mailto:");
    assert!(!out.all().contains("certkeeper bug"), "{out}");
    // A human must act: the certificate is paused, not retried on a short backoff.
    let out = cfg.run_cli(&["status", "--json"]).await;
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("status JSON");
    assert_eq!(v[0]["paused"], true, "{out}");
}

#[tokio::test]
async fn unknown_profile_names_the_offered_ones() {
    let a2c = A2c::start(A2cOpts::default());
    assert_eq!(a2c.profiles(), ["classic", "shortlived"]);
    // Refused before the CA is asked: the directory does not list it.
    let cfg = http01_config(&a2c, issuer(&a2c))
        .certificate(
            CertSpec::new("web", "a2c", &["profile.a2c.test"]).extra("profile = \"premium\""),
        )
        .write();
    let out = cfg.run_cli(&["renew"]).await;
    out.assert_failed().assert_mentions(
        "profile \"premium\" is not offered by this CA; it offers: classic, shortlived",
    );
    let out = cfg.run_cli(&["check"]).await;
    out.assert_failed().assert_mentions("premium");
    // The CA's own `invalidProfile` (a directory that lists a profile the CA then refuses): the
    // message quotes the CA and names what the directory offers.
    let proxy = support::proxy::Proxy::for_directory(&a2c.directory_url(), &a2c.tls_ca_pem()).await;
    proxy.set(support::proxy::Mode::AddProfiles(vec![
        ("classic".into(), "c".into()),
        ("premium".into(), "p".into()),
        ("shortlived".into(), "s".into()),
    ]));
    let cfg = http01_config(
        &a2c,
        IssuerSpec::new("a2c", &proxy.directory_url()).ca_bundle_path(&proxy.ca_file),
    )
    .certificate(CertSpec::new("web", "a2c", &["profile.a2c.test"]).extra("profile = \"premium\""))
    .write();
    let out = cfg.run_cli(&["renew"]).await;
    out.assert_failed()
        .assert_mentions("urn:ietf:params:acme:error:invalidProfile")
        .assert_mentions("it offers: classic, premium, shortlived");
    // A known profile is accepted.
    proxy.set(support::proxy::Mode::Pass);
    let cfg = http01_config(&a2c, issuer(&a2c))
        .certificate(
            CertSpec::new("short", "a2c", &["short.a2c.test"]).extra("profile = \"shortlived\""),
        )
        .write();
    cfg.run_cli(&["renew"]).await.assert_ok();
    assert_issued_by_a2c(&a2c, &cfg, "short", &["short.a2c.test"]);
    let sent = proxy.jws_payloads("/acme/neworders");
    assert!(sent.iter().any(|p| p["profile"] == "premium"), "{sent:?}");
}

/// Real ARI: the daemon fetches acme2certifier's window (85 % of the lifetime to Not After) for
/// the installed certificate and schedules by it; the forced renewal names the old certificate
/// in `replaces` (seen on the wire by a proxy, and in certkeeper's own log).
#[tokio::test]
async fn ari_window_schedules_and_replaces_is_sent() {
    let a2c = A2c::start(A2cOpts::default());
    let proxy = support::proxy::Proxy::for_directory(&a2c.directory_url(), &a2c.tls_ca_pem()).await;
    let cfg = http01_config(
        &a2c,
        IssuerSpec::new("a2c", &proxy.directory_url()).ca_bundle_path(&proxy.ca_file),
    )
    .certificate(CertSpec::new("web", "a2c", &["ari.a2c.test"]))
    .write();
    cfg.run_cli(&["renew"]).await.assert_ok();
    let first = assert_issued_by_a2c(&a2c, &cfg, "web", &["ari.a2c.test"]);
    let first_id = certkeeper::acme::cert_id(
        &certkeeper::acme::Certificate::from_der(first.to_der().unwrap()).unwrap(),
    )
    .unwrap();
    let (nb, na) = (asn1_ts(first.not_before()), asn1_ts(first.not_after()));

    // The daemon fetches the window at start.
    let mut daemon = cfg.spawn_daemon();
    daemon
        .wait_for(
            "the ARI window in the state",
            Duration::from_secs(60),
            || {
                cfg.cert_state("web")
                    .is_some_and(|s| s["ari_window"].is_array())
            },
        )
        .await;
    daemon.stop();
    let out = cfg.run_cli(&["status", "--json"]).await;
    out.assert_ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("status JSON");
    let s = &v[0];
    let (start, end) = (ts(&s["ari_window"][0]), ts(&s["ari_window"][1]));
    let life = na.duration_since(nb);
    let want_start = nb + life * 85 / 100;
    assert!(
        start.duration_since(want_start).abs() < jiff::SignedDuration::from_mins(10),
        "window start {start}, expected about {want_start}"
    );
    assert!(
        end.duration_since(na).abs() < jiff::SignedDuration::from_mins(10),
        "window end {end}, Not After {na}"
    );
    // acme2certifier's window starts after certkeeper's own latest point (a third of the lifetime
    // left): ARI can make a renewal earlier, never later, so the renewal stays at certkeeper's time.
    let next = ts(&s["next_renewal"]);
    let latest = certkeeper::scheduler::latest_renewal_point(nb, na);
    assert!(
        next <= latest,
        "next renewal {next} after the 1/3 point {latest}"
    );
    assert!(
        next < start,
        "next renewal {next} inside/after the window {start}"
    );
    assert!(next > nb, "{next}");
    let reason = s["next_renewal_reason"].as_str().unwrap();
    assert!(reason.contains("ARI window"), "{reason}");

    // The renewal sends `replaces` with the CertID of the certificate it replaces.
    let out = cfg.run_cli(&["renew", "--force"]).await;
    out.assert_ok();
    let second = leaf(&cfg, "web");
    assert_ne!(
        second.serial_number().to_bn().unwrap(),
        first.serial_number().to_bn().unwrap()
    );
    let orders = proxy.jws_payloads("/acme/neworders");
    assert_eq!(orders.len(), 2, "{orders:?}");
    assert!(orders[0].get("replaces").is_none(), "{orders:?}");
    assert_eq!(orders[1]["replaces"], first_id.as_str(), "{orders:?}");
    // certkeeper's own log says so too.
    out.assert_mentions(&format!("replaces=\"{first_id}\""));
}

/// The SOA serial bind9 serves for example.test and the size of its journal (0 when it has none):
/// what a dynamic update would change.
async fn zone_fingerprint(server: &Bind) -> (u32, u64) {
    use hickory_proto::rr::{RData, RecordType};
    let resp = certkeeper::challenge::dns01::zone::query(
        server.addr,
        "example.test.",
        RecordType::SOA,
        false,
    )
    .await
    .expect("SOA query");
    let serial = resp
        .answers
        .iter()
        .find_map(|r| match &r.data {
            RData::SOA(soa) => Some(soa.serial),
            _ => None,
        })
        .expect("SOA answer");
    let jnl = std::fs::metadata(server.dir.path().join("example.test.zone.jnl"))
        .map(|m| m.len())
        .unwrap_or(0);
    (serial, jnl)
}

/// Put `record` (a zone-file line) into example.test's zone file with serial `serial`, and restart
/// bind9 on it: the way an administrator publishes a standing record, no dynamic update.
async fn publish_in_zone_file(server: &mut Bind, record: &str, serial: u32) {
    server.stop();
    let path = server.dir.path().join("example.test.zone");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with("_validation-persist"))
        .map(|l| {
            if l.contains(" IN SOA ") {
                let mut f: Vec<&str> = l.split(' ').collect();
                let i = f
                    .iter()
                    .position(|w| *w == "hostmaster.example.test.")
                    .unwrap()
                    + 1;
                let s = serial.to_string();
                f[i] = &s;
                f.join(" ")
            } else {
                l.to_string()
            }
        })
        .collect();
    lines.push(record.to_string());
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    server.start_again().await;
}

/// dns-persist-01 (experimental): the standing record lives in bind9, the DNS server acme2certifier
/// asks. `account persist-record` prints it; a record naming another account is reported before
/// any order, with the record to publish; with the printed record in the zone file the wildcard
/// and its base name are issued, and bind9's zone is not updated during the order (same SOA
/// serial, no journal).
#[tokio::test]
async fn dns_persist01_with_a_standing_record_in_bind9() {
    let Some(mut server) = Bind::start().await else {
        return;
    };
    let a2c = A2c::start(A2cOpts {
        dns_persist: true,
        dns_port: Some(server.addr.port()),
        ..Default::default()
    });
    let cfg = TestConfig::new()
        .issuer(issuer(&a2c).solver(&format!(
            "dns_persist01 = {{ issuer_domain = \"a2c.test\" }}\npropagation = {{ nameservers = [\"{}\"] }}",
            server.addr
        )))
        .certificate(CertSpec::new("persist", "a2c", &["*.example.test", "example.test"]))
        .write();

    // The record to publish: one for the base name, with policy=wildcard for *.example.test.
    let out = cfg
        .run_cli(&["account", "persist-record", "--issuer", "a2c"])
        .await;
    out.assert_ok();
    let line = out.stdout.trim().to_string();
    let account_url = cfg
        .run_cli(&["account", "show", "--issuer", "a2c"])
        .await
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("account:").map(|u| u.trim().to_string()))
        .expect("account URL");
    assert_eq!(
        line,
        format!(
            "_validation-persist.example.test. IN TXT \"a2c.test; accounturi={account_url}; policy=wildcard\""
        )
    );
    let one = cfg
        .run_cli(&[
            "account",
            "persist-record",
            "--issuer",
            "a2c",
            "www.example.test",
        ])
        .await;
    one.assert_ok();
    assert_eq!(
        one.stdout.trim(),
        format!(
            "_validation-persist.www.example.test. IN TXT \"a2c.test; accounturi={account_url}\""
        )
    );

    // A record naming another account: refused before ordering, with the record to publish.
    let wrong = line.replace(&account_url, &format!("{account_url}-other"));
    publish_in_zone_file(&mut server, &wrong, 2).await;
    let out = cfg.run_cli(&["renew"]).await;
    out.assert_failed()
        .assert_mentions("which is not this account")
        .assert_mentions(&format!("publish `{line}`"));
    // `check` reads the record as the order would, and says the same.
    cfg.run_cli(&["check"])
        .await
        .assert_failed()
        .assert_mentions("which is not this account");
    assert!(
        !a2c.access_log().contains("POST /acme/neworders"),
        "no order was created:\n{}",
        a2c.access_log()
    );

    // The printed record in the zone: issued, with no update to the zone during the order.
    publish_in_zone_file(&mut server, &line, 3).await;
    let before = zone_fingerprint(&server).await;
    assert_eq!(before, (3, 0));
    cfg.run_cli(&["check"])
        .await
        .assert_mentions("the dns-persist-01 record for *.example.test is in place")
        .assert_mentions("the dns-persist-01 record for example.test is in place");
    // (--force: the failure above put the certificate on its backoff schedule)
    let out = cfg.run_cli(&["renew", "--force", "persist"]).await;
    out.assert_ok()
        .assert_mentions("dns-persist-01 record in place at all authoritative nameservers");
    assert_issued_by_a2c(&a2c, &cfg, "persist", &["*.example.test", "example.test"]);
    assert_eq!(
        zone_fingerprint(&server).await,
        before,
        "bind9's zone was not updated"
    );
    // Both authorizations were validated by acme2certifier's dns-persist-01 challenge.
    let state = cfg.cert_state("persist").expect("state");
    let authzs = state["last_order"]["authorizations"]
        .as_array()
        .expect("authorizations");
    assert_eq!(authzs.len(), 2, "{state}");
    for a in authzs {
        let persist = a["challenges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "dns-persist-01")
            .unwrap_or_else(|| panic!("no dns-persist-01 challenge: {a}"));
        assert_eq!(persist["status"], "valid", "{a}");
    }
}
