//! DNS-01 against a real bind9: RFC 2136 + TSIG, propagation checks, CNAME following.

mod support;

use std::sync::Arc;
use std::time::Duration;

use certkeeper::challenge::dns01::propagation::{self, PropagationConfig};
use certkeeper::challenge::dns01::providers::DnsProviderConfig;
use certkeeper::challenge::dns01::{Dns01Solver, DnsProvider, TxtRecord};
use certkeeper::challenge::{ChallengeCtx, ChallengeKind, Solver};
use support::dns::bind::{self, Bind};
use support::dns::txt_values;

fn ctx(identifier: &str, wildcard: bool, key_auth: &str) -> ChallengeCtx {
    ChallengeCtx {
        cert_name: "test".into(),
        identifier: identifier.into(),
        is_ip: false,
        wildcard,
        kind: ChallengeKind::Dns01,
        token: "token".into(),
        key_authorization: key_auth.into(),
        persist: None,
    }
}

fn rfc2136(server: &Bind, secret_env: &str, secret: &str) -> Arc<dyn DnsProvider> {
    // SAFETY: each test uses its own variable name; set before any thread reads it.
    unsafe { std::env::set_var(secret_env, secret) };
    let toml = format!(
        "provider = \"rfc2136\"\nserver = \"{}\"\ntsig_key = \"{}\"\ntsig_algorithm = \"hmac-sha256\"\ntsig_secret_env = \"{secret_env}\"",
        server.addr,
        bind::KEY_NAME
    );
    let cfg: DnsProviderConfig = toml::from_str(&toml).expect("config");
    cfg.build().expect("build")
}

fn propagation_to(server: &Bind, timeout: Duration) -> PropagationConfig {
    PropagationConfig {
        check: true,
        timeout,
        interval: Duration::from_millis(200),
        nameservers: vec![server.addr],
    }
}

#[tokio::test]
async fn apex_and_wildcard_present_wait_cleanup() {
    let Some(server) = Bind::start().await else {
        return;
    };
    let solver = Dns01Solver::new(
        rfc2136(&server, "CK_TSIG_1", bind::SECRET),
        propagation_to(&server, Duration::from_secs(10)),
    );
    let apex = ctx("example.test", false, "tok1.thumb");
    let wild = ctx("example.test", true, "tok2.thumb");
    solver.present(&apex).await.expect("present apex");
    solver.present(&wild).await.expect("present wildcard");
    solver.wait(&apex).await.expect("wait apex");
    solver.wait(&wild).await.expect("wait wildcard");

    let mut both = vec![apex.dns_txt_value(), wild.dns_txt_value()];
    both.sort();
    assert_eq!(
        txt_values(server.addr, "_acme-challenge.example.test.").await,
        Some(both),
        "{}",
        server.log()
    );

    solver.cleanup(&wild).await.expect("cleanup wildcard");
    assert_eq!(
        txt_values(server.addr, "_acme-challenge.example.test.").await,
        Some(vec![apex.dns_txt_value()])
    );
    solver.cleanup(&apex).await.expect("cleanup apex");
    solver
        .cleanup(&apex)
        .await
        .expect("second cleanup is a no-op");
    assert_eq!(
        txt_values(server.addr, "_acme-challenge.example.test.").await,
        None,
        "no _acme-challenge TXT left"
    );
}

#[tokio::test]
async fn cname_to_another_zone_is_followed() {
    let Some(server) = Bind::start().await else {
        return;
    };
    let solver = Dns01Solver::new(
        rfc2136(&server, "CK_TSIG_2", bind::SECRET),
        propagation_to(&server, Duration::from_secs(10)),
    );
    let ch = ctx("cname.example.test", false, "tok3.thumb");
    let rec = solver.record_for(&ch).await.expect("record");
    assert_eq!(rec.fqdn, "delegated.acme.test.");
    assert_eq!(rec.zone.as_deref(), Some("acme.test."));
    solver.present(&ch).await.expect("present");
    solver.wait(&ch).await.expect("wait");
    assert_eq!(
        txt_values(server.addr, "delegated.acme.test.").await,
        Some(vec![ch.dns_txt_value()])
    );
    solver.cleanup(&ch).await.expect("cleanup");
    assert_eq!(txt_values(server.addr, "delegated.acme.test.").await, None);
}

#[tokio::test]
async fn propagation_timeout_names_server_and_answer() {
    let Some(server) = Bind::start().await else {
        return;
    };
    let opts = propagation_to(&server, Duration::from_millis(600));
    let err =
        propagation::wait_for_txt(&opts, "_acme-challenge.www.example.test.", None, "expected")
            .await
            .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("{} answered NXDOMAIN", server.addr)),
        "{msg}"
    );

    // A stale value is reported as such.
    let provider = rfc2136(&server, "CK_TSIG_3", bind::SECRET);
    let rec = TxtRecord {
        fqdn: "_acme-challenge.www.example.test.".into(),
        zone: Some("example.test.".into()),
        value: "old".into(),
        ttl: 60,
    };
    let handle = provider.present(&rec).await.expect("present old");
    let msg = propagation::wait_for_txt(&opts, &rec.fqdn, None, "new")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains(&format!("{} answered TXT [\"old\"]", server.addr)),
        "{msg}"
    );
    provider.cleanup(&rec, handle).await.expect("cleanup");
}

#[tokio::test]
async fn wrong_tsig_secret_is_explained() {
    let Some(server) = Bind::start().await else {
        return;
    };
    let provider = rfc2136(
        &server,
        "CK_TSIG_4",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    );
    let rec = TxtRecord {
        fqdn: "_acme-challenge.example.test.".into(),
        zone: Some("example.test.".into()),
        value: "v".into(),
        ttl: 60,
    };
    let msg = provider.present(&rec).await.unwrap_err().to_string();
    assert!(
        msg.starts_with(&format!("TSIG key rejected by {}", server.addr)),
        "{msg}"
    );
    assert!(msg.contains("check tsig_key/tsig_secret"), "{msg}");
    assert_eq!(
        txt_values(server.addr, "_acme-challenge.example.test.").await,
        None
    );
}

#[tokio::test]
async fn zone_and_nameservers_found_via_resolver() {
    let Some(server) = Bind::start().await else {
        return;
    };
    // bind answers authoritative data to RD queries too, so it can stand in for a resolver here.
    let lookup = certkeeper::challenge::dns01::zone::Lookup::recursive(vec![server.addr]);
    assert_eq!(
        lookup
            .find_zone("_acme-challenge.deep.www.example.test")
            .await
            .unwrap(),
        "example.test."
    );
    assert_eq!(
        lookup
            .follow_cname("_acme-challenge.cname.example.test")
            .await
            .unwrap(),
        "delegated.acme.test."
    );
    assert_eq!(
        lookup.find_zone("delegated.acme.test.").await.unwrap(),
        "acme.test."
    );
    let ns = lookup.nameservers("example.test.").await.unwrap();
    assert_eq!(
        ns,
        vec![(
            "ns1.example.test.".to_string(),
            "127.0.0.1:53".parse().unwrap()
        )]
    );
    let err = lookup
        .find_zone("nothing.invalid.")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("nothing.invalid"), "{err}");
}
