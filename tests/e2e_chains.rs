//! End-to-end tests of `preferred_chain` and `profile` through the `certkeeper` binary against pebble.
//!
//! - `preferred_chain`: pebble started with one alternate root links an alternate chain
//!   (`Link: rel="alternate"`); `renew` installs the chain whose top issuer (or any member) has the
//!   configured CN, the default chain without the setting, and the default chain with an info log when
//!   nothing matches.
//! - `profile`: pebble 2.4 has no profiles, so a TLS proxy in front of it adds `meta.profiles` to the
//!   directory and records every JWS POST; the newOrder must carry the configured profile, and a
//!   profile the directory does not list fails before any order is sent.

mod support;

use std::path::Path;

use openssl::nid::Nid;
use openssl::x509::{X509, X509NameRef};
use support::certkeeper::{CertSpec, IssuerSpec, TestConfig};
use support::proxy::{Mode, Proxy};
use support::{Pebble, PebbleOpts, free_port};

fn cn(name: &X509NameRef) -> String {
    name.entries_by_nid(Nid::COMMONNAME)
        .next()
        .expect("a CN")
        .data()
        .to_string()
        .expect("a UTF-8 CN")
}

/// The subject CN of the first certificate in a PEM text.
fn subject_cn(pem: &str) -> String {
    cn(X509::from_pem(pem.as_bytes()).unwrap().subject_name())
}

/// The certificates of `<dir>/<file>` (following the `.live` symlinks).
fn certs_in(dir: &Path, file: &str) -> Vec<X509> {
    let pem = std::fs::read(dir.join(file))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()));
    X509::stack_from_pem(&pem).unwrap()
}

/// The issuer CN of the topmost certificate of `chain.pem` and the subject CNs in it.
fn chain_cns(dir: &Path) -> (String, Vec<String>) {
    let chain = certs_in(dir, "chain.pem");
    assert!(!chain.is_empty(), "chain.pem in {} is empty", dir.display());
    let top = cn(chain.last().unwrap().issuer_name());
    let subjects = chain.iter().map(|c| cn(c.subject_name())).collect();
    (top, subjects)
}

async fn pebble(opts: PebbleOpts) -> Option<Pebble> {
    if !support::pebble::available() {
        eprintln!("pebble not installed; skipping");
        return None;
    }
    Some(Pebble::start(opts).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferred_chain_installs_the_matching_chain() {
    let http_port = free_port();
    let Some(pebble) = pebble(PebbleOpts {
        http_port,
        alternate_roots: 1,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let root0 = subject_cn(&pebble.mgmt_get("/roots/0").await);
    let root1 = subject_cn(&pebble.mgmt_get("/roots/1").await);
    let int1 = subject_cn(&pebble.mgmt_get("/intermediates/1").await);
    assert_ne!(root0, root1);
    // pebble's intermediates share one key and one subject: the CN is in every chain.
    assert_eq!(subject_cn(&pebble.mgmt_get("/intermediates/0").await), int1);
    let cfg = TestConfig::new()
        .http01_listen(http_port)
        .issuer(IssuerSpec::pebble("pebble", &pebble).solver_http01())
        .certificate(CertSpec::new("dflt", "pebble", &["dflt.example.com"]))
        .certificate(
            CertSpec::new("altroot", "pebble", &["altroot.example.com"])
                .extra(&format!("preferred_chain = {:?}", root1)),
        )
        .certificate(
            CertSpec::new("altint", "pebble", &["altint.example.com"])
                .extra(&format!("preferred_chain = {:?}", int1)),
        )
        .certificate(
            CertSpec::new("nomatch", "pebble", &["nomatch.example.com"])
                .extra("preferred_chain = \"No Such Root CA\""),
        )
        .write();
    let out = cfg.run_cli(&["renew"]).await;
    out.assert_ok();

    // Without preferred_chain: the default chain, up to root 0.
    let (top, _) = chain_cns(&cfg.output_dir("dflt"));
    assert_eq!(top, root0, "default chain");
    // Matching the alternate root's CN: the alternate chain, up to root 1.
    let (top, _) = chain_cns(&cfg.output_dir("altroot"));
    assert_eq!(top, root1, "preferred_chain = root 1");
    // A CN every chain contains (pebble's shared intermediate) matches the default chain first.
    let (top, subjects) = chain_cns(&cfg.output_dir("altint"));
    assert_eq!(top, root0, "preferred_chain = the shared intermediate");
    assert!(subjects.contains(&int1), "{subjects:?}");
    // fullchain.pem is the leaf followed by the same chain.
    let full = certs_in(&cfg.output_dir("altroot"), "fullchain.pem");
    let chain = certs_in(&cfg.output_dir("altroot"), "chain.pem");
    assert_eq!(full.len(), chain.len() + 1);
    assert_eq!(
        full[1..]
            .iter()
            .map(|c| c.to_der().unwrap())
            .collect::<Vec<_>>(),
        chain
            .iter()
            .map(|c| c.to_der().unwrap())
            .collect::<Vec<_>>()
    );
    // Nothing matches: the default chain, and an info log that says so.
    let (top, _) = chain_cns(&cfg.output_dir("nomatch"));
    assert_eq!(top, root0, "an unmatched preferred_chain keeps the default");
    let log_line = out
        .stderr
        .lines()
        .find(|l| l.contains("No Such Root CA"))
        .unwrap_or_else(|| panic!("no log line names the unmatched preferred_chain: {out}"));
    assert!(log_line.contains("INFO"), "{log_line}");
    assert!(log_line.contains("cert=nomatch"), "{log_line}");

    // Changing preferred_chain does not make the certificate due by itself; a forced renewal
    // installs the newly preferred chain.
    let text = std::fs::read_to_string(cfg.path())
        .unwrap()
        .replace("\"No Such Root CA\"", &format!("{root1:?}"));
    cfg.write_raw(&text);
    cfg.run_cli(&["renew"]).await.assert_ok();
    let (top, _) = chain_cns(&cfg.output_dir("nomatch"));
    assert_eq!(top, root0, "not due: the installed chain stays");
    cfg.run_cli(&["renew", "--force", "nomatch"])
        .await
        .assert_ok();
    let (top, _) = chain_cns(&cfg.output_dir("nomatch"));
    assert_eq!(top, root1, "forced renewal with the new preferred_chain");
    let (top, _) = chain_cns(&cfg.output_dir("dflt"));
    assert_eq!(top, root0, "other certificates untouched");
    assert!(log_line.contains("default chain"), "{log_line}");
    assert!(
        log_line.contains(&root0) && log_line.contains(&root1),
        "the log names the chains offered: {log_line}"
    );
}

fn profiles() -> Vec<(String, String)> {
    vec![
        ("classic".to_string(), "The 90-day certificate".to_string()),
        ("shortlived".to_string(), "A 6-day certificate".to_string()),
    ]
}

/// A pebble, a recording proxy in front of it offering `classic` and `shortlived`, and a config with
/// one certificate asking for `profile`.
async fn through_profile_proxy(profile: &str) -> Option<(Pebble, Proxy, TestConfig)> {
    let http_port = free_port();
    let pebble = pebble(PebbleOpts {
        http_port,
        ..Default::default()
    })
    .await?;
    let proxy = Proxy::for_pebble(&pebble).await;
    proxy.set(Mode::AddProfiles(profiles()));
    let cfg = TestConfig::new()
        .http01_listen(http_port)
        .issuer(
            IssuerSpec::new("pebble", &proxy.directory_url())
                .ca_bundle_path(proxy.ca_file.clone())
                .solver_http01(),
        )
        .certificate(
            CertSpec::new("www", "pebble", &["www.example.com"])
                .extra(&format!("profile = {profile:?}")),
        )
        .write();
    Some((pebble, proxy, cfg))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_is_sent_in_the_new_order() {
    let Some((_pebble, proxy, cfg)) = through_profile_proxy("shortlived").await else {
        return;
    };
    cfg.run_cli(&["check"])
        .await
        .assert_mentions("issuer pebble offers profile \"shortlived\"");
    cfg.run_cli(&["renew"]).await.assert_ok();
    let orders = proxy.jws_payloads("/order-plz");
    assert!(!orders.is_empty(), "no newOrder went through the proxy");
    for o in &orders {
        assert_eq!(o["profile"], "shortlived", "newOrder payload {o}");
        assert_eq!(o["identifiers"][0]["value"], "www.example.com", "{o}");
    }
    assert!(certs_in(&cfg.output_dir("www"), "fullchain.pem").len() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_profile_fails_before_any_order() {
    let Some((_pebble, proxy, cfg)) = through_profile_proxy("tlsserver").await else {
        return;
    };
    let out = cfg.run_cli(&["renew"]).await;
    out.assert_failed()
        .assert_mentions("profile \"tlsserver\" is not offered by this CA")
        .assert_mentions("it offers: classic, shortlived. Set `profile` to one of them");
    assert!(
        proxy.jws_payloads("/order-plz").is_empty(),
        "an order was sent for a profile the CA does not offer"
    );
    assert!(!cfg.output_dir("www").join("fullchain.pem").exists());
    // `check` finds the same problem without ordering.
    cfg.run_cli(&["check"])
        .await
        .assert_failed()
        .assert_mentions(
            "issuer pebble does not offer profile \"tlsserver\"; it offers: classic, shortlived",
        );
    assert!(proxy.jws_payloads("/order-plz").is_empty());
}
