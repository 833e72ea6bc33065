//! End-to-end tests of the `certkeeper` binary against pebble over HTTP-01 (pebble's default 5%
//! nonce rejection): issuance of multi-name certificates, the installed layout and modes, chain
//! verification against pebble's root, idempotent renew, `--force` with one shared reload hook, key
//! types, EAB, and the messages a user sees when the CA, its TLS or a challenge fails.

mod support;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;

use openssl::pkey::{Id, PKey, Private};
use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{X509, X509StoreContext};

use support::certkeeper::{CertSpec, IssuerSpec, TestConfig};
use support::{Pebble, PebbleOpts, free_port};

const FILES: [&str; 4] = ["fullchain.pem", "privkey.pem", "chain.pem", "cert.pem"];

async fn pebble(opts: PebbleOpts) -> Pebble {
    Pebble::start(opts).await
}

/// A pebble whose HTTP-01 validation reaches the config's listener, and a config with that pebble as
/// issuer "pebble" (HTTP-01 solver); the caller adds certificates.
async fn pebble_setup() -> (Pebble, TestConfig) {
    let http_port = free_port();
    let pebble = pebble(PebbleOpts {
        http_port,
        ..Default::default()
    })
    .await;
    let cfg = TestConfig::new()
        .http01_listen(http_port)
        .issuer(IssuerSpec::pebble("pebble", &pebble).solver_http01());
    (pebble, cfg)
}

fn read_certs(path: &Path) -> Vec<X509> {
    let pem = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    X509::stack_from_pem(&pem).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

fn read_key(dir: &Path) -> PKey<Private> {
    let pem = std::fs::read(dir.join("privkey.pem")).expect("read privkey.pem");
    PKey::private_key_from_pem(&pem).expect("parse privkey.pem")
}

fn serial_of(dir: &Path) -> String {
    let leaf = &read_certs(&dir.join("cert.pem"))[0];
    leaf.serial_number()
        .to_bn()
        .unwrap()
        .to_hex_str()
        .unwrap()
        .to_string()
}

fn sans(cert: &X509) -> Vec<String> {
    let mut names: Vec<String> = cert
        .subject_alt_names()
        .map(|s| {
            s.iter()
                .filter_map(|n| n.dnsname().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The four files are symlinks through `.live` into a version directory; the leaf's SANs are
/// `domains`; the chain verifies against `root_pem` with chain.pem as untrusted intermediates;
/// fullchain = cert + chain; the key matches the leaf.
fn check_installed(dir: &Path, domains: &[&str], root_pem: &str) {
    let live = dir.join(".live");
    let meta = std::fs::symlink_metadata(&live).expect(".live exists");
    assert!(meta.file_type().is_symlink(), ".live is a symlink");
    let target = std::fs::read_link(&live).unwrap();
    assert!(
        target.to_string_lossy().starts_with(".v-"),
        ".live points to a version dir: {}",
        target.display()
    );
    for f in FILES {
        let p = dir.join(f);
        let m = std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(m.file_type().is_symlink(), "{f} is a symlink");
        let t = std::fs::read_link(&p).unwrap();
        assert!(
            t.starts_with(".live"),
            "{f} points into .live: {}",
            t.display()
        );
        assert!(p.is_file(), "{f} resolves to a file");
    }

    let leaf = read_certs(&dir.join("cert.pem"));
    assert_eq!(leaf.len(), 1, "cert.pem holds the leaf only");
    let leaf = &leaf[0];
    let mut want: Vec<String> = domains.iter().map(|d| d.to_string()).collect();
    want.sort();
    assert_eq!(sans(leaf), want, "leaf SANs are the requested names");

    let chain = read_certs(&dir.join("chain.pem"));
    assert!(!chain.is_empty(), "chain.pem holds the intermediate(s)");
    let full = read_certs(&dir.join("fullchain.pem"));
    assert_eq!(full.len(), 1 + chain.len(), "fullchain = leaf + chain");
    assert_eq!(full[0].to_der().unwrap(), leaf.to_der().unwrap());
    for (a, b) in full[1..].iter().zip(&chain) {
        assert_eq!(a.to_der().unwrap(), b.to_der().unwrap());
    }

    let root = X509::from_pem(root_pem.as_bytes()).expect("pebble root PEM");
    let mut store = X509StoreBuilder::new().unwrap();
    store.add_cert(root).unwrap();
    let store = store.build();
    let mut untrusted = Stack::new().unwrap();
    for c in &chain {
        untrusted.push(c.clone()).unwrap();
    }
    let mut ctx = X509StoreContext::new().unwrap();
    let verified = ctx
        .init(&store, leaf, &untrusted, |c| {
            let ok = c.verify_cert()?;
            if !ok {
                eprintln!("verify error: {}", c.error());
            }
            Ok(ok)
        })
        .unwrap();
    assert!(verified, "the chain verifies against pebble's /roots/0");

    let key = read_key(dir);
    assert!(
        leaf.public_key().unwrap().public_eq(&key),
        "privkey.pem matches the leaf"
    );
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn hook_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// A reload command that appends one line with the CERTKEEPER_* environment to `log`.
fn hook_command(log: &Path) -> String {
    format!(
        "printf '%s|%s|%s|%s|%s\\n' \"$CERTKEEPER_CERT_NAME\" \"$CERTKEEPER_CERT_NAMES\" \"$CERTKEEPER_DOMAINS\" \"$CERTKEEPER_FULLCHAIN\" \"$CERTKEEPER_KEY\" >> '{}'",
        log.display()
    )
}

/// A group other than root's own to hand privkey.pem to (when running as root).
fn some_group() -> Option<(String, u32)> {
    for name in ["ssl-cert", "www-data", "daemon", "nogroup", "adm"] {
        if let Ok(Some(g)) = nix::unistd::Group::from_name(name)
            && g.gid.as_raw() != 0
        {
            return Some((name.to_string(), g.gid.as_raw()));
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_names_issue_install_renew_and_force_with_one_shared_hook() {
    let http_port = free_port();
    let pebble = pebble(PebbleOpts {
        http_port,
        ..Default::default()
    })
    .await;
    let root_pem = pebble.root_pem().await;

    let hook_log_dir = tempfile::tempdir().unwrap();
    let hook_log = hook_log_dir.path().join("hook.log");
    let hook = hook_command(&hook_log);
    let as_root = nix::unistd::Uid::effective().is_root();
    let group = if as_root { some_group() } else { None };

    let mut api = CertSpec::new("api", "pebble", &["api.example.com"])
        .key("ecdsa-p256")
        .reload(&hook);
    if let Some((g, _)) = &group {
        api = api.key_mode("0640").group(g);
    }
    let cfg = TestConfig::new()
        .http01_listen(http_port)
        .issuer(IssuerSpec::pebble("pebble", &pebble).solver_http01())
        .certificate(
            CertSpec::new("www", "pebble", &["example.com", "www.example.com"])
                .key("ecdsa-p256")
                .reload(&hook),
        )
        .certificate(api)
        .write();

    // First run: both issued, one hook run for both.
    let out = cfg.run_cli(&["renew"]).await;
    out.assert_ok();
    assert!(!out.stderr.contains("ERROR"), "no error logged: {out}");
    let www = cfg.output_dir("www");
    let api_dir = cfg.output_dir("api");
    check_installed(&www, &["example.com", "www.example.com"], &root_pem);
    check_installed(&api_dir, &["api.example.com"], &root_pem);
    assert_eq!(mode_of(&www.join("privkey.pem")), 0o600, "default key mode");
    for f in ["fullchain.pem", "chain.pem", "cert.pem"] {
        assert_eq!(mode_of(&www.join(f)), 0o644, "default mode of {f}");
    }
    if let Some((_, gid)) = &group {
        let key = api_dir.join("privkey.pem");
        assert_eq!(mode_of(&key), 0o640, "configured key_mode");
        assert_eq!(
            std::fs::metadata(&key).unwrap().gid(),
            *gid,
            "configured group"
        );
    } else {
        eprintln!("not root: key_mode 0640 + group part skipped");
    }
    let lines = hook_lines(&hook_log);
    assert_eq!(
        lines.len(),
        1,
        "the shared hook ran once for both certificates: {lines:?}\n{out}"
    );

    let www_serial = serial_of(&www);
    let api_serial = serial_of(&api_dir);
    assert!(out.stdout.contains("www: issued by pebble"), "{out}");

    // Second run: nothing due, nothing issued, no hook.
    let out = cfg.run_cli(&["renew"]).await;
    out.assert_ok();
    assert!(out.stdout.contains("www: not due"), "{out}");
    assert!(out.stdout.contains("api: not due"), "{out}");
    assert!(!out.stdout.contains("issued by"), "{out}");
    assert_eq!(serial_of(&www), www_serial, "no new certificate");
    assert_eq!(serial_of(&api_dir), api_serial, "no new certificate");
    assert_eq!(hook_lines(&hook_log).len(), 1, "no hook without issuance");

    // --force: both reissued, the shared hook ran exactly once more, with the environment set.
    let out = cfg.run_cli(&["renew", "--force"]).await;
    out.assert_ok();
    let new_www = serial_of(&www);
    let new_api = serial_of(&api_dir);
    assert_ne!(
        new_www, www_serial,
        "--force issues a new certificate\n{out}"
    );
    assert_ne!(
        new_api, api_serial,
        "--force issues a new certificate\n{out}"
    );
    check_installed(&www, &["example.com", "www.example.com"], &root_pem);
    check_installed(&api_dir, &["api.example.com"], &root_pem);
    let lines = hook_lines(&hook_log);
    assert_eq!(lines.len(), 2, "one more hook run: {lines:?}\n{out}");
    // Certificates run in config-name order (api, www); the first that asked names the hook's files.
    let want = format!(
        "api|api www|api.example.com example.com www.example.com|{}|{}",
        api_dir.join("fullchain.pem").display(),
        api_dir.join("privkey.pem").display()
    );
    assert_eq!(lines[1], want, "hook environment");

    // `renew --force www` touches only www; the hook names only www.
    let out = cfg.run_cli(&["renew", "--force", "www"]).await;
    out.assert_ok();
    assert_ne!(serial_of(&www), new_www, "www reissued\n{out}");
    assert_eq!(serial_of(&api_dir), new_api, "api untouched\n{out}");
    let lines = hook_lines(&hook_log);
    assert_eq!(lines.len(), 3, "one more hook run: {lines:?}\n{out}");
    assert!(
        lines[2].starts_with("www|www|example.com www.example.com|"),
        "{}",
        lines[2]
    );

    // An unknown name is an error that lists the known ones.
    let out = cfg.run_cli(&["renew", "nope"]).await;
    out.assert_failed().assert_mentions("\"nope\"");
    assert!(out.all().contains("api, www"), "lists known names: {out}");

    // A config change (one more name) reissues at once, without --force.
    let api_serial = serial_of(&api_dir);
    let mut cfg = cfg;
    cfg.certificates[1].domains.push("api2.example.com".into());
    let cfg = cfg.write();
    let out = cfg.run_cli(&["renew"]).await;
    out.assert_ok();
    assert!(out.stdout.contains("www: not due"), "{out}");
    assert_ne!(serial_of(&api_dir), api_serial, "api reissued\n{out}");
    check_installed(
        &api_dir,
        &["api.example.com", "api2.example.com"],
        &root_pem,
    );
    assert_eq!(hook_lines(&hook_log).len(), 4, "hook ran for the reissue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_2048_and_ecdsa_p384_keys_are_issued() {
    let (pebble, cfg) = pebble_setup().await;
    let root_pem = pebble.root_pem().await;
    let cfg = cfg
        .certificate(CertSpec::new("rsa", "pebble", &["rsa.example.com"]).key("rsa-2048"))
        .certificate(CertSpec::new("p384", "pebble", &["p384.example.com"]).key("ecdsa-p384"))
        .write();
    cfg.run_cli(&["renew"]).await.assert_ok();

    let rsa_dir = cfg.output_dir("rsa");
    check_installed(&rsa_dir, &["rsa.example.com"], &root_pem);
    let key = read_key(&rsa_dir);
    assert_eq!(key.id(), Id::RSA, "rsa-2048 gives an RSA key");
    assert_eq!(key.bits(), 2048);

    let ec_dir = cfg.output_dir("p384");
    check_installed(&ec_dir, &["p384.example.com"], &root_pem);
    let key = read_key(&ec_dir);
    assert_eq!(key.id(), Id::EC, "ecdsa-p384 gives an EC key");
    let curve = key.ec_key().unwrap().group().curve_name();
    assert_eq!(curve, Some(openssl::nid::Nid::SECP384R1), "P-384 curve");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_reload_hook_keeps_the_new_certificate_and_fails_the_run() {
    let (pebble, cfg) = pebble_setup().await;
    let root_pem = pebble.root_pem().await;
    let cfg = cfg
        .certificate(
            CertSpec::new("h", "pebble", &["hook.example.com"])
                .reload("echo nginx says no >&2; exit 3"),
        )
        .write();
    let out = cfg.run_cli(&["renew"]).await;
    eprintln!("{out}");
    out.assert_failed()
        .assert_mentions("exit code 3")
        .assert_mentions("nginx says no");
    check_installed(&cfg.output_dir("h"), &["hook.example.com"], &root_pem);
    // The certificate is in place, so the next pass has nothing to do and succeeds.
    let out = cfg.run_cli(&["renew"]).await;
    out.assert_ok();
    assert!(out.stdout.contains("h: not due"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eab_required_right_key_issues_wrong_or_missing_key_is_explained() {
    use base64::Engine as _;
    let good = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(b"certkeeper-e2e-eab-secret-0123456789abcdef");
    let wrong = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(b"not-the-right-secret-for-this-kid-000000");
    let http_port = free_port();
    let pebble = pebble(PebbleOpts {
        http_port,
        eab_keys: Some(vec![("kid-1".to_string(), good.clone())]),
        ..Default::default()
    })
    .await;
    let root_pem = pebble.root_pem().await;
    let config = |eab: Option<(&str, &str)>| {
        let mut issuer = IssuerSpec::pebble("pebble", &pebble).solver_http01();
        if let Some((kid, key)) = eab {
            issuer = issuer.eab(kid, key);
        }
        TestConfig::new()
            .http01_listen(http_port)
            .issuer(issuer)
            .certificate(CertSpec::new("eab", "pebble", &["eab.example.com"]))
            .write()
    };

    let wrong_cfg = config(Some(("kid-1", &wrong)));

    // Unknown kid: refused with the same kind of message.
    let cfg = config(Some(("kid-unknown", &good)));
    let out = cfg.run_cli(&["renew"]).await;
    eprintln!("{out}");
    out.assert_failed()
        .assert_mentions("eab")
        .assert_mentions("kid");

    // No EAB at all, though the CA requires it: says EAB is required and where to configure it.
    let cfg = config(None);
    let out = cfg.run_cli(&["renew"]).await;
    eprintln!("{out}");
    out.assert_failed()
        .assert_mentions("external account")
        .assert_mentions("eab");

    // Wrong key: refused, and the message names EAB and what to check.
    let cfg = wrong_cfg;
    let out = cfg.run_cli(&["renew"]).await;
    eprintln!("{out}");
    out.assert_failed()
        .assert_mentions("eab")
        .assert_mentions("hmac");
    assert!(!cfg.output_dir("eab").join("fullchain.pem").exists());
    // Unchanged config: paused after the refusal (tried daily and on reload), not tried again now.
    let out = cfg.run_cli(&["renew"]).await;
    out.assert_failed().assert_mentions("renew --force eab");

    // The operator fixes the key in the same config and state: a plain renew issues at once.
    let mut cfg = cfg;
    cfg.issuers[0].eab = Some(("kid-1".to_string(), good.clone()));
    let cfg = cfg.write();
    let out = cfg.run_cli(&["renew"]).await;
    out.assert_ok();
    check_installed(&cfg.output_dir("eab"), &["eab.example.com"], &root_pem);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_ca_and_untrusted_ca_bundle_are_explained() {
    // Nothing listens on this port.
    let dead = free_port();
    let cfg = TestConfig::new()
        .http01_listen(free_port())
        .issuer(
            IssuerSpec::new("ca", &format!("https://127.0.0.1:{dead}/dir"))
                .ca_bundle_pem(&support::pebble::make_tls_certs().0)
                .solver_http01(),
        )
        .certificate(CertSpec::new("x", "ca", &["x.example.com"]))
        .write();
    let out = cfg.run_cli(&["renew"]).await;
    eprintln!("{out}");
    out.assert_failed().assert_mentions("cannot reach");
    assert!(
        out.all().contains(&format!("127.0.0.1:{dead}")),
        "names the URL: {out}"
    );
    assert!(!cfg.output_dir("x").join("fullchain.pem").exists());

    // pebble up, but the configured bundle is another CA: the TLS check fails and says ca_bundle.
    let http_port = free_port();
    let pebble = pebble(PebbleOpts {
        http_port,
        ..Default::default()
    })
    .await;
    let (other_ca, _, _) = support::pebble::make_tls_certs();
    let cfg = TestConfig::new()
        .http01_listen(http_port)
        .issuer(
            IssuerSpec::new("pebble", &pebble.directory_url())
                .ca_bundle_pem(&other_ca)
                .solver_http01(),
        )
        .certificate(CertSpec::new("x", "pebble", &["x.example.com"]))
        .write();
    let out = cfg.run_cli(&["renew"]).await;
    eprintln!("{out}");
    out.assert_failed().assert_mentions("ca_bundle");
    let bundle = cfg.dir().join("pebble-ca.pem");
    assert!(
        out.all().contains(&bundle.display().to_string()),
        "names the ca_bundle file: {out}"
    );
    assert!(!cfg.output_dir("x").join("fullchain.pem").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_challenge_shows_the_ca_problem_and_force_recovers_despite_backoff() {
    let http_port = free_port();
    let pebble = pebble(PebbleOpts {
        http_port,
        ..Default::default()
    })
    .await;
    let root_pem = pebble.root_pem().await;
    // Our listener on another port than the one pebble's VA connects to: nothing answers there.
    let wrong_port = free_port();
    let bad = TestConfig::new()
        .http01_listen(wrong_port)
        .issuer(IssuerSpec::pebble("pebble", &pebble).solver_http01())
        .certificate(CertSpec::new("www", "pebble", &["fail.example.com"]))
        .write();
    let out = bad.run_cli(&["renew"]).await;
    eprintln!("{out}");
    out.assert_failed();
    // The CA's problem: what it saw when it connected to port {http_port}.
    out.assert_mentions("fail.example.com")
        .assert_mentions("could not verify control")
        .assert_mentions("connection refused");
    assert!(
        out.all().contains(&http_port.to_string()),
        "the CA's detail (port it tried) is shown: {out}"
    );
    let dir = bad.output_dir("www");
    for f in FILES {
        assert!(
            std::fs::symlink_metadata(dir.join(f)).is_err(),
            "{f} not written after a failed order"
        );
    }

    // The failure left a backoff: a plain renew respects it, fails, and says how to override it.
    let out = bad.run_cli(&["renew"]).await;
    eprintln!("{out}");
    if !out.stdout.contains("FAILED:") {
        // (Unless the machine was so slow that the first retry time has already passed.)
        out.assert_failed()
            .assert_mentions("backing off")
            .assert_mentions("renew --force www")
            .assert_mentions("fail.example.com");
    }
    // --force ignores the backoff: a real attempt is made (and fails the same way).
    let out = bad.run_cli(&["renew", "--force"]).await;
    out.assert_failed().assert_mentions("connection refused");
    assert!(out.stdout.contains("www: FAILED:"), "{out}");

    // Fixing the listener is a config change: it lifts the backoff, a plain renew issues.
    let mut good = bad;
    good.http01_listen = vec![format!("127.0.0.1:{http_port}")];
    let good = good.write();
    let out = good.run_cli(&["renew"]).await;
    out.assert_ok();
    assert!(out.stdout.contains("www: issued by pebble"), "{out}");
    check_installed(&good.output_dir("www"), &["fail.example.com"], &root_pem);
    let first = serial_of(&good.output_dir("www"));
    let out = good.run_cli(&["renew", "--force"]).await;
    out.assert_ok();
    assert_ne!(
        serial_of(&good.output_dir("www")),
        first,
        "--force reissues"
    );
    // After success the backoff is gone: a plain renew is a clean "not due".
    let out = good.run_cli(&["renew"]).await;
    out.assert_ok();
    assert!(out.stdout.contains("www: not due"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_issues_and_stops_on_sigterm() {
    let (pebble, cfg) = pebble_setup().await;
    let root_pem = pebble.root_pem().await;
    let cfg = cfg
        .certificate(CertSpec::new("d", "pebble", &["daemon.example.com"]).key("ecdsa-p256"))
        .write();
    let mut daemon = cfg.spawn_daemon();
    let full = cfg.output_dir("d").join("fullchain.pem");
    daemon
        .wait_for(
            "the certificate to be installed",
            std::time::Duration::from_secs(180),
            || full.exists(),
        )
        .await;
    check_installed(&cfg.output_dir("d"), &["daemon.example.com"], &root_pem);
    let first = serial_of(&cfg.output_dir("d"));

    // `renew` by hand while the daemon holds the HTTP-01 port: its tokens go through the state
    // directory to the daemon's listener, so the CA's validation still succeeds.
    let out = cfg.run_cli(&["renew", "--force", "d"]).await;
    out.assert_ok();
    let second = serial_of(&cfg.output_dir("d"));
    assert_ne!(
        first, second,
        "renew --force next to a running daemon issued nothing\n{out}"
    );
    check_installed(&cfg.output_dir("d"), &["daemon.example.com"], &root_pem);
    let spool = cfg.state_dir().join("http01");
    assert!(
        std::fs::read_dir(&spool)
            .map(|mut d| d.next().is_none())
            .unwrap_or(true),
        "tokens left in {}",
        spool.display()
    );

    let status = daemon.stop().expect("daemon was running");
    assert!(
        status.success(),
        "SIGTERM is a clean stop: {status}\n{}",
        daemon.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_accepts_a_good_config_and_points_at_the_line_of_a_bad_one() {
    let cfg = TestConfig::new()
        .http01_listen(free_port())
        .issuer(
            IssuerSpec::new("le", "https://127.0.0.1:1/dir")
                .ca_bundle_pem(&support::pebble::make_tls_certs().0)
                .solver_http01(),
        )
        .certificate(
            CertSpec::new("www", "le", &["example.com", "www.example.com"]).key("rsa-2048"),
        )
        .write();
    let out = cfg.run_cli(&["check", "--offline"]).await;
    out.assert_ok().assert_mentions("valid");

    // An unknown key type on a known line.
    let text = cfg
        .render()
        .replace("key = \"rsa-2048\"", "key = \"rsa-1024\"");
    cfg.write_raw(&text);
    let line = text
        .lines()
        .position(|l| l.contains("rsa-1024"))
        .expect("line")
        + 1;
    let out = cfg.run_cli(&["check"]).await;
    eprintln!("{out}");
    out.assert_failed();
    let want = format!("{}:{line}:", cfg.path().display());
    assert!(
        out.stderr.contains(&want),
        "error names file:line {want}: {out}"
    );
    out.assert_mentions("key");

    // An error in an included file names that file and line.
    let conf_d = cfg.dir().join("conf.d");
    std::fs::create_dir_all(&conf_d).unwrap();
    let included = conf_d.join("api.toml");
    std::fs::write(
        &included,
        format!(
            "[certificate.api]\nissuer = \"le\"\ndomains = [\"api.example.com\"]\noutput = {{ dir = {} }}\nrenew_before = \"soon\"\n",
            support::certkeeper::toml_str(&cfg.dir().join("tls/api").display().to_string())
        ),
    )
    .unwrap();
    let mut cfg = cfg;
    cfg.top.push(format!(
        "include = [{}]",
        support::certkeeper::toml_str(&format!("{}/*.toml", conf_d.display()))
    ));
    let text = cfg.render();
    cfg.write_raw(&text);
    let out = cfg.run_cli(&["check"]).await;
    eprintln!("{out}");
    out.assert_failed().assert_mentions("renew_before");
    let want = format!("{}:5:", included.display());
    assert!(out.stderr.contains(&want), "names {want}: {out}");
    std::fs::remove_file(&included).unwrap();
    cfg.run_cli(&["check", "--offline"]).await.assert_ok();

    // A certificate naming an issuer that does not exist.
    let text = cfg.render().replace("issuer = \"le\"", "issuer = \"nope\"");
    cfg.write_raw(&text);
    let out = cfg.run_cli(&["check"]).await;
    eprintln!("{out}");
    out.assert_failed().assert_mentions("nope");
    assert!(
        out.stderr.contains(&format!("{}:", cfg.path().display())),
        "{out}"
    );
}

/// certkeeper reads the system CA roots lazily by pointing its own `SSL_CERT_FILE` at an empty file;
/// the programs it starts must still see the administrator's environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_hooks_see_the_original_tls_environment() {
    let http_port = free_port();
    let pebble = pebble(PebbleOpts {
        http_port,
        ..Default::default()
    })
    .await;
    let seen = tempfile::tempdir().unwrap();
    let seen_file = seen.path().join("ssl_cert_file");
    let cfg = TestConfig::new()
        .http01_listen(http_port)
        .issuer(IssuerSpec::pebble("pebble", &pebble).solver_http01())
        .certificate(
            CertSpec::new("env", "pebble", &["env.example.com"]).reload(&format!(
                "printf '%s' \"${{SSL_CERT_FILE-unset}}\" > '{}'",
                seen_file.display()
            )),
        )
        .write();
    for (setting, want) in [
        (
            Some("/etc/ssl/certs/ca-certificates.crt"),
            "/etc/ssl/certs/ca-certificates.crt",
        ),
        (None, "unset"),
    ] {
        let mut cmd = cfg.command(&["renew", "--force"]);
        match setting {
            Some(v) => cmd.env("SSL_CERT_FILE", v),
            None => cmd.env_remove("SSL_CERT_FILE"),
        };
        let out = tokio::time::timeout(std::time::Duration::from_secs(240), cmd.output())
            .await
            .expect("renew finished")
            .expect("renew ran");
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read_to_string(&seen_file).unwrap(),
            want,
            "SSL_CERT_FILE seen by the hook"
        );
    }
}

/// A reload hook starts from an empty environment plus an allowlist: the secrets of the daemon's
/// environment (`EnvironmentFile=`) and systemd's own variables do not reach it; `PATH` and the names
/// listed in `reload_env` do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_hooks_get_only_the_allowlisted_environment() {
    let http_port = free_port();
    let pebble = pebble(PebbleOpts {
        http_port,
        ..Default::default()
    })
    .await;
    let seen = tempfile::tempdir().unwrap();
    let env_file = seen.path().join("env");
    let cfg = TestConfig::new()
        .http01_listen(http_port)
        .issuer(IssuerSpec::pebble("pebble", &pebble).solver_http01())
        .certificate(
            CertSpec::new("env", "pebble", &["env.example.com"])
                .reload(&format!("env > '{}'", env_file.display()))
                .extra("reload_env = [\"HOOK_WANTS_THIS\", \"NOT_SET_ANYWHERE\"]"),
        )
        .write();
    let mut cmd = cfg.command(&["renew", "--force"]);
    cmd.env("CK_SECRET_TOKEN", "s3cret-token")
        .env("HOOK_WANTS_THIS", "listed-value")
        .env("WATCHDOG_USEC", "30000000")
        .env("INVOCATION_ID", "0123456789abcdef")
        .env("LISTEN_FDS", "1")
        .env("LC_TIME", "C")
        .env("CERTKEEPER_CRASH_DIR", "/nonexistent");
    let out = tokio::time::timeout(std::time::Duration::from_secs(240), cmd.output())
        .await
        .expect("renew finished")
        .expect("renew ran");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let env = std::fs::read_to_string(&env_file).unwrap();
    let names: Vec<&str> = env
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    assert!(!env.contains("s3cret-token"), "{env}");
    for absent in [
        "CK_SECRET_TOKEN",
        "WATCHDOG_USEC",
        "INVOCATION_ID",
        "LISTEN_FDS",
        "CERTKEEPER_CRASH_DIR",
        "NO_COLOR",
        "NOT_SET_ANYWHERE",
    ] {
        assert!(
            !names.contains(&absent),
            "{absent} leaked to the hook:\n{env}"
        );
    }
    for present in ["PATH", "LC_TIME", "HOOK_WANTS_THIS", "CERTKEEPER_CERT_NAME"] {
        assert!(names.contains(&present), "{present} missing:\n{env}");
    }
    assert!(env.contains("HOOK_WANTS_THIS=listed-value\n"), "{env}");
}
