//! DNS-01 through the PowerDNS API against a real pdns_server (sqlite3 backend).

mod support;

use std::time::Duration;

use certkeeper::challenge::dns01::providers::DnsProviderConfig;
use certkeeper::challenge::dns01::{Dns01Solver, PropagationConfig};
use certkeeper::challenge::{ChallengeCtx, ChallengeKind, Solver};
use support::dns::pdns::{self, Pdns};
use support::dns::txt_values;

fn ctx(wildcard: bool, key_auth: &str) -> ChallengeCtx {
    ChallengeCtx {
        cert_name: "pdns".into(),
        identifier: "example.test".into(),
        is_ip: false,
        wildcard,
        kind: ChallengeKind::Dns01,
        token: "t".into(),
        key_authorization: key_auth.into(),
        persist: None,
    }
}

#[tokio::test]
async fn powerdns_apex_and_wildcard_present_wait_cleanup() {
    let Some(server) = Pdns::start().await else {
        return;
    };
    let key_file = server.dir.path().join("api.key");
    std::fs::write(&key_file, format!("{}\n", pdns::API_KEY)).unwrap();
    let cfg: DnsProviderConfig = toml::from_str(&format!(
        "provider = \"powerdns\"\napi_url = \"{}/\"\napi_key_file = \"{}\"",
        server.api_url,
        key_file.display()
    ))
    .unwrap();
    let propagation = PropagationConfig {
        check: true,
        timeout: Duration::from_secs(15),
        interval: Duration::from_millis(300),
        nameservers: vec![server.addr],
    };
    let solver = Dns01Solver::new(cfg.build().unwrap(), propagation);
    let apex = ctx(false, "a.thumb");
    let wild = ctx(true, "b.thumb");
    solver.present(&apex).await.expect("present apex");
    solver.present(&wild).await.expect("present wildcard");
    solver.wait(&apex).await.expect("wait apex");
    solver.wait(&wild).await.expect("wait wildcard");
    let mut both = vec![apex.dns_txt_value(), wild.dns_txt_value()];
    both.sort();
    assert_eq!(
        txt_values(server.addr, "_acme-challenge.example.test.").await,
        Some(both)
    );

    solver.cleanup(&apex).await.expect("cleanup apex");
    solver.cleanup(&wild).await.expect("cleanup wildcard");
    // pdns answers from its packet cache for a moment; poll briefly for the removal.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let now = txt_values(server.addr, "_acme-challenge.example.test.").await;
        if now.is_none() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still there: {now:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn powerdns_wrong_key_is_reported() {
    let Some(server) = Pdns::start().await else {
        return;
    };
    // SAFETY: variable unique to this test.
    unsafe { std::env::set_var("CK_PDNS_BAD_KEY", "wrong") };
    let cfg: DnsProviderConfig = toml::from_str(&format!(
        "provider = \"powerdns\"\napi_url = \"{}\"\napi_key_env = \"CK_PDNS_BAD_KEY\"\nzone = \"example.test\"",
        server.api_url
    ))
    .unwrap();
    let provider = cfg.build().unwrap();
    let rec = certkeeper::challenge::dns01::TxtRecord {
        fqdn: "_acme-challenge.example.test.".into(),
        zone: None,
        value: "v".into(),
        ttl: 60,
    };
    let msg = provider.present(&rec).await.unwrap_err().to_string();
    assert!(
        msg.contains("HTTP 401") && msg.contains("check the API credentials"),
        "{msg}"
    );
}
