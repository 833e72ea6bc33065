//! DNS-01's default path and the CAA preflight, end to end with real servers on loopback
//! ([`support::dns::loopback`]): certkeeper is given `[dns01] resolvers = ["127.0.0.3:53"]` (a
//! recursive bind9) and no `propagation.nameservers`, so it finds `example.test`'s NS set through
//! the resolver and checks the authoritative bind9 on 127.0.0.2:53 directly.
//!
//! pebble's VA asks the authoritative server: a CA never shares the client's resolver, and sharing
//! it would hand pebble the NXDOMAIN that certkeeper's CNAME check left in the resolver's cache
//! (bind keeps even a 0 s negative answer for the rest of the second).
//!
//! The servers use port 53 of fixed addresses, so the tests in this file take turns.

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::OnceLock;

use openssl::x509::X509;
use support::certkeeper::{CertSpec, IssuerSpec, TestConfig, toml_str};
use support::dns::bind;
use support::dns::loopback::{AUTHORITATIVE, LoopbackDns, RECURSIVE};
use support::dns::txt_values;
use support::proxy::{Mode, Proxy};
use support::{Pebble, PebbleOpts};

/// One test at a time: they all need 127.0.0.2:53 and 127.0.0.3:53.
async fn turn() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::Mutex::new(()))
        .lock()
        .await
}

/// The CAA identity the tests give pebble (it publishes none): `caa_identities` in the issuer.
const PEBBLE_CAA: &str = "pebble.test";

/// Records every test's zone holds: CAA for pebble at the apex, for another CA below `other`, a
/// record pinning another account below `pinned`, one allowing only http-01 below `methods`.
const RECORDS: &str = r#"@ IN CAA 0 issue "pebble.test"
other IN CAA 0 issue "letsencrypt.org"
pinned IN CAA 0 issue "pebble.test; accounturi=https://127.0.0.1:1/my-account/999"
methods IN CAA 0 issue "pebble.test; validationmethods=http-01"
www IN A 127.0.0.1
www.dead IN A 127.0.0.1
"#;

/// bind9 on loopback, and pebble validating against the authoritative server; `None`: skipped.
async fn setup() -> Option<(LoopbackDns, Pebble, u16)> {
    if !support::pebble::available() {
        eprintln!("skipping: pebble is not installed");
        return None;
    }
    let dns = LoopbackDns::start(RECORDS).await?;
    let http_port = support::free_port();
    let pebble = Pebble::start(PebbleOpts {
        dns_server: Some(dns.authoritative),
        http_port,
        ..Default::default()
    })
    .await;
    Some((dns, pebble, http_port))
}

/// The rfc2136 `dns01` value updating the authoritative server, the TSIG secret in `dir`.
fn rfc2136(dir: &Path) -> String {
    let secret = dir.join("tsig.key");
    std::fs::write(&secret, format!("{}\n", bind::SECRET)).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    format!(
        "dns01 = {{ provider = \"rfc2136\", server = \"{AUTHORITATIVE}\", tsig_key = \"{}\", tsig_algorithm = \"hmac-sha256\", tsig_secret_file = {} }}",
        bind::KEY_NAME,
        toml_str(&secret.display().to_string())
    )
}

/// A config with pebble as `pebble` (CAA identity [`PEBBLE_CAA`]) whose one dns01 solver is
/// `dns01` with a propagation timeout of `timeout` and no nameservers, the resolvers set to the
/// recursive server, and `certs`.
fn config(
    pebble: &Pebble,
    http_port: u16,
    dns01: &str,
    timeout: &str,
    certs: &[CertSpec],
) -> TestConfig {
    let issuer =
        IssuerSpec::pebble("pebble", pebble).extra(&format!("caa_identities = [\"{PEBBLE_CAA}\"]"));
    config_for(issuer, http_port, dns01, timeout, certs)
}

/// [`config`] for any issuer table (named `pebble`).
fn config_for(
    issuer: IssuerSpec,
    http_port: u16,
    dns01: &str,
    timeout: &str,
    certs: &[CertSpec],
) -> TestConfig {
    let mut cfg = TestConfig::new()
        .http01_listen(http_port)
        .issuer(issuer.solver(&format!(
            "{dns01}\npropagation = {{ timeout = \"{timeout}\", interval = \"300ms\" }}"
        )))
        .tail(&format!("[dns01]\nresolvers = [\"{RECURSIVE}\"]"));
    for c in certs {
        cfg = cfg.certificate(c.clone());
    }
    cfg.write()
}

fn sans(cfg: &TestConfig, name: &str) -> Vec<String> {
    let pem = std::fs::read(cfg.output_dir(name).join("cert.pem")).expect("cert.pem");
    let cert = X509::from_pem(&pem).unwrap();
    let mut v: Vec<String> = cert
        .subject_alt_names()
        .unwrap()
        .iter()
        .filter_map(|g| g.dnsname().map(str::to_string))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apex_and_wildcard_through_the_resolvers_and_the_zones_own_nameserver() {
    let _turn = turn().await;
    let Some((dns, pebble, http_port)) = setup().await else {
        return;
    };
    let secrets = tempfile::tempdir().unwrap();
    let cfg = config(
        &pebble,
        http_port,
        &rfc2136(secrets.path()),
        "30s",
        &[CertSpec::new(
            "wild",
            "pebble",
            &["example.test", "*.example.test"],
        )],
    );

    // check: the CAA record at the apex names pebble's identity.
    let out = cfg.run_cli(&["check"]).await;
    assert!(out.status.success(), "{out}");
    assert!(
        out.stdout.contains("certificate wild: CAA for example.test allows issuer pebble: example.test. CAA 0 issue \"pebble.test\" authorizes this CA")
            && out.stdout.contains("certificate wild: CAA for *.example.test allows issuer pebble"),
        "{out}"
    );

    let mut cmd = cfg.command(&["renew"]);
    cmd.env("CERTKEEPER_LOG", "info,certkeeper=debug");
    let out = support::certkeeper::run_command(cmd, &["renew"]).await;
    assert!(out.status.success(), "{out}\n{}", dns.logs());
    assert_eq!(sans(&cfg, "wild"), ["*.example.test", "example.test"]);
    // The check went to the server the NS record names, found through the resolver.
    assert!(
        out.stderr.contains("ns1.example.test. (127.0.0.2:53)")
            && out.stderr.contains(&format!("via={RECURSIVE}")),
        "{out}"
    );
    // Nothing left behind in the zone.
    assert_eq!(
        txt_values(dns.authoritative, "_acme-challenge.example.test.").await,
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn propagation_timeout_names_the_authoritative_server_and_its_answer() {
    let _turn = turn().await;
    let Some((_dns, pebble, http_port)) = setup().await else {
        return;
    };
    // A provider that reports success and writes nothing.
    let scripts = tempfile::tempdir().unwrap();
    let script = scripts.path().join("writes-nothing.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = config(
        &pebble,
        http_port,
        &format!(
            "dns01 = {{ provider = \"exec\", command = {} }}",
            toml_str(&script.display().to_string())
        ),
        "3s",
        &[CertSpec::new("www", "pebble", &["www.example.test"])],
    );
    let out = cfg.run_cli(&["renew"]).await;
    assert!(!out.status.success(), "{out}");
    assert!(
        out.stderr.contains("not visible at every authoritative nameserver after 3s")
            && out.stderr.contains("ns1.example.test. (127.0.0.2:53) answered NXDOMAIN")
            && out.stderr.contains(&format!(
                "zone example.test., authoritative nameservers ns1.example.test. (127.0.0.2:53) found through the resolvers {RECURSIVE}"
            )),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caa_refusals_stop_before_the_order() {
    let _turn = turn().await;
    let Some((_dns, pebble, http_port)) = setup().await else {
        return;
    };
    let secrets = tempfile::tempdir().unwrap();
    let cfg = config(
        &pebble,
        http_port,
        &rfc2136(secrets.path()),
        "30s",
        &[
            CertSpec::new("other", "pebble", &["a.other.example.test"]),
            CertSpec::new("pinned", "pebble", &["pinned.example.test"]),
            CertSpec::new("methods", "pebble", &["methods.example.test"]),
        ],
    );
    let out = cfg.run_cli(&["check"]).await;
    assert!(!out.status.success(), "{out}");
    for want in [
        "FAIL certificate other: CAA for a.other.example.test forbids issuer pebble: the CAA records at other.example.test. (issue: 0 issue \"letsencrypt.org\") do not authorize this CA, which identifies as pebble.test",
        "FAIL certificate pinned: CAA for pinned.example.test forbids issuer pebble: the CAA record pinned.example.test. CAA 0 issue \"pebble.test; accounturi=https://127.0.0.1:1/my-account/999\" allows only the account https://127.0.0.1:1/my-account/999, but certkeeper has no account at this CA yet",
        "FAIL certificate methods: CAA for methods.example.test forbids issuer pebble: the CAA record methods.example.test. CAA 0 issue \"pebble.test; validationmethods=http-01\" allows only validationmethods=http-01, but the solver for this name uses dns-01",
    ] {
        assert!(out.stdout.contains(want), "missing {want:?} in\n{out}");
    }

    let out = cfg.run_cli(&["renew"]).await;
    assert!(!out.status.success(), "{out}");
    assert!(
        out.stderr.contains("CAA records forbid this CA to issue (checked before ordering; the CA was not asked): a.other.example.test: ")
            && out.stderr.contains("pinned.example.test: the CAA record pinned.example.test. CAA 0 issue \"pebble.test; accounturi=https://127.0.0.1:1/my-account/999\" allows only the account https://127.0.0.1:1/my-account/999, but certkeeper's account is https://")
            && out.stderr.contains("methods.example.test: the CAA record methods.example.test."),
        "{out}"
    );
    // The account was registered (its URL is in the message), but pebble saw no order.
    let log = pebble.log();
    assert!(
        !log.contains("Added order"),
        "pebble created an order:\n{log}"
    );
    for name in ["other", "pinned", "methods"] {
        assert!(!cfg.output_dir(name).join("cert.pem").exists(), "{name}");
    }

    // Without `caa_identities`, pebble (which publishes none) cannot be matched: not checked.
    let text = std::fs::read_to_string(cfg.path()).unwrap();
    cfg.write_raw(&text.replace(&format!("caa_identities = [\"{PEBBLE_CAA}\"]\n"), ""));
    let out = cfg.run_cli(&["check"]).await;
    assert!(out.status.success(), "{out}");
    assert!(
        out.stdout.contains("OK   issuer pebble: the CA publishes no caaIdentities in its directory, so CAA records are not checked")
            && !out.stdout.contains("CAA for"),
        "{out}"
    );
}

/// The identities a CA publishes in its directory (here added to pebble's by the proxy) are what
/// the records are matched against when the issuer names none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caa_identities_from_the_directory() {
    let _turn = turn().await;
    let Some((_dns, pebble, http_port)) = setup().await else {
        return;
    };
    let proxy = Proxy::for_pebble(&pebble).await;
    proxy.set(Mode::AddCaaIdentities(vec![PEBBLE_CAA.to_string()]));
    let secrets = tempfile::tempdir().unwrap();
    let issuer =
        IssuerSpec::new("pebble", &proxy.directory_url()).ca_bundle_path(proxy.ca_file.clone());
    let cfg = config_for(
        issuer,
        http_port,
        &rfc2136(secrets.path()),
        "30s",
        &[CertSpec::new("other", "pebble", &["a.other.example.test"])],
    );
    let out = cfg.run_cli(&["renew"]).await;
    assert!(!out.status.success(), "{out}");
    assert!(
        out.stderr.contains("a.other.example.test: the CAA records at other.example.test. (issue: 0 issue \"letsencrypt.org\") do not authorize this CA, which identifies as pebble.test"),
        "{out}"
    );
    assert!(
        proxy.jws_payloads("/order-plz").is_empty(),
        "an order was sent"
    );

    // A name the apex record covers (climbing from www.example.test) is issued.
    cfg.write_raw(&std::fs::read_to_string(cfg.path()).unwrap().replace(
        "domains = [\"a.other.example.test\"]",
        "domains = [\"www.example.test\"]",
    ));
    let out = cfg.run_cli(&["renew"]).await;
    assert!(out.status.success(), "{out}");
    assert_eq!(sans(&cfg, "other"), ["www.example.test"]);
    assert_eq!(proxy.jws_payloads("/order-plz").len(), 1);
}

/// CAA is only a preflight: when the resolvers cannot answer for a name, a warning is logged and
/// the CA decides. `www.dead.example.test` resolves for pebble (it asks the authoritative server)
/// but not through certkeeper's resolver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolver_failure_does_not_block_the_order() {
    let _turn = turn().await;
    let Some((_dns, pebble, http_port)) = setup().await else {
        return;
    };
    let secrets = tempfile::tempdir().unwrap();
    let issuer = IssuerSpec::pebble("pebble", &pebble)
        .extra(&format!("caa_identities = [\"{PEBBLE_CAA}\"]"))
        .solver("selector = { dns_names = [\"www.dead.example.test\"] }\nhttp01 = { self_check = false }");
    let cfg = config_for(
        issuer,
        http_port,
        &rfc2136(secrets.path()),
        "30s",
        &[CertSpec::new("dead", "pebble", &["www.dead.example.test"])],
    );
    let out = cfg.run_cli(&["check"]).await;
    assert!(out.status.success(), "{out}");
    assert!(
        out.stdout.contains("OK   certificate dead: CAA for www.dead.example.test not checked, the resolvers did not answer"),
        "{out}"
    );
    let out = cfg.run_cli(&["renew"]).await;
    assert!(out.status.success(), "{out}");
    assert!(
        out.stderr.contains("CAA lookup failed; ordering anyway"),
        "{out}"
    );
    assert_eq!(sans(&cfg, "dead"), ["www.dead.example.test"]);
}
