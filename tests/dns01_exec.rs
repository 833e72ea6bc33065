//! DNS-01 through the exec provider: a shell script that writes the record with `nsupdate` into
//! a real bind9.

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use certkeeper::challenge::dns01::providers::DnsProviderConfig;
use certkeeper::challenge::dns01::{Dns01Solver, PropagationConfig};
use certkeeper::challenge::{ChallengeCtx, ChallengeKind, Solver};
use support::dns::bind::{self, Bind};
use support::dns::txt_values;

#[tokio::test]
async fn exec_nsupdate_script_present_wait_cleanup() {
    let Some(server) = Bind::start().await else {
        return;
    };
    if !std::path::Path::new("/usr/bin/nsupdate").exists() {
        eprintln!("skipping: nsupdate missing (apt-get install bind9-dnsutils)");
        return;
    }
    let script = server.dir.path().join("hook.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nset -e\ncase \"$1\" in present) op=add;; cleanup) op=delete;; *) echo \"bad action $1\" >&2; exit 2;; esac\n\
             printf 'server {ip} {port}\\nzone %s\\nupdate %s %s %s TXT \"%s\"\\nsend\\n' \"$CERTKEEPER_DNS_ZONE\" \"$op\" \"$2\" \"$CERTKEEPER_DNS_TTL\" \"$3\" \\\n\
             | nsupdate -y hmac-sha256:{key}:{secret}\n",
            ip = server.addr.ip(),
            port = server.addr.port(),
            key = bind::KEY_NAME,
            secret = bind::SECRET,
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg: DnsProviderConfig = toml::from_str(&format!(
        "provider = \"exec\"\ncommand = \"{}\"\ntimeout = \"20s\"",
        script.display()
    ))
    .unwrap();
    let propagation = PropagationConfig {
        check: true,
        timeout: Duration::from_secs(10),
        interval: Duration::from_millis(200),
        nameservers: vec![server.addr],
    };
    let solver = Dns01Solver::new(cfg.build().unwrap(), propagation);
    let ch = ChallengeCtx {
        cert_name: "exec".into(),
        identifier: "www.example.test".into(),
        is_ip: false,
        wildcard: false,
        kind: ChallengeKind::Dns01,
        token: "t".into(),
        key_authorization: "t.thumb".into(),
        persist: None,
    };
    solver.present(&ch).await.expect("present");
    solver.wait(&ch).await.expect("wait");
    assert_eq!(
        txt_values(server.addr, "_acme-challenge.www.example.test.").await,
        Some(vec![ch.dns_txt_value()])
    );
    solver.cleanup(&ch).await.expect("cleanup");
    assert_eq!(
        txt_values(server.addr, "_acme-challenge.www.example.test.").await,
        None
    );
}
