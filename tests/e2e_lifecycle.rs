//! End-to-end tests of the certificate lifecycle through the `certkeeper` binary against pebble:
//! revoke (account key and certificate key), account key rollover (and crash recovery), account key
//! types, key reuse, IP identifiers, webroot behind a real nginx, issuer fallback and import.
//!
//! Each test starts its own pebble (and challtestsrv, which answers every name with 127.0.0.1), writes a
//! config into its own tempdir and runs the binary.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use openssl::pkey::PKey;
use openssl::x509::X509;
use support::certkeeper::{Daemon, daemon_command_at, std_command_at};
use support::nginx::{Nginx, NginxOpts, nginx_available};
use support::pebble;
use support::process::run_bounded;
use support::{Pebble, PebbleOpts, free_port};

use certkeeper::acme::{self, AccountKey};

/// One test's world: a pebble, a work dir, the HTTP-01 port pebble validates on.
struct World {
    pebble: Pebble,
    dir: tempfile::TempDir,
    http_port: u16,
}

impl World {
    async fn start() -> Option<World> {
        Self::start_on(free_port()).await
    }

    async fn start_on(http_port: u16) -> Option<World> {
        Self::start_with(PebbleOpts {
            http_port,
            ..Default::default()
        })
        .await
    }

    async fn start_with(opts: PebbleOpts) -> Option<World> {
        if !pebble::available() {
            eprintln!("pebble not installed; skipping");
            return None;
        }
        let http_port = opts.http_port;
        let pebble = Pebble::start(opts).await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), pebble.ca_pem()).unwrap();
        Some(World {
            pebble,
            dir,
            http_port,
        })
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The `[issuer.NAME]` table for this pebble with an HTTP-01 solver.
    fn issuer(&self, name: &str, account_key: &str) -> String {
        format!(
            r#"
[issuer.{name}]
directory = "{dir}"
ca_bundle = "{ca}"
contact = ["mailto:admin@example.com"]
account_key = "{account_key}"

[[issuer.{name}.solver]]
http01 = {{ self_check = false }}
"#,
            dir = self.pebble.directory_url(),
            ca = self.path("ca.pem").display(),
        )
    }

    /// A `[certificate.NAME]` table writing into `<work>/<out>/`.
    fn cert(&self, name: &str, issuer: &str, domains: &[&str], extra: &str, out: &str) -> String {
        let domains: Vec<String> = domains.iter().map(|d| format!("{d:?}")).collect();
        format!(
            r#"
[certificate.{name}]
issuer = {issuer}
domains = [{domains}]
output = {{ dir = "{out}" }}
{extra}
"#,
            domains = domains.join(", "),
            out = self.path(out).display(),
        )
    }

    /// Write `certkeeper.toml` (state in `<work>/state`) with the pebble issuer and one certificate
    /// `www` for `domain`, output in `<work>/tls/www`, and return its path.
    fn www_config(&self, domain: &str) -> PathBuf {
        let body = self.issuer("pebble", "ecdsa-p256")
            + &self.cert("www", "\"pebble\"", &[domain], "", "tls/www");
        self.config("certkeeper.toml", "state", &body)
    }

    /// Write `certkeeper.toml` (state in `<work>/<state>`) and return its path.
    fn config(&self, file: &str, state: &str, body: &str) -> PathBuf {
        let text = format!(
            "state_dir = \"{}\"\n\n[http01]\nlisten = [\"127.0.0.1:{}\"]\n{body}",
            self.path(state).display(),
            self.http_port
        );
        let p = self.path(file);
        std::fs::write(&p, text).unwrap();
        p
    }
}

/// Run the binary with `args` on `config` and extra environment `env`, bounded (240 s).
fn run(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = std_command_at(config, args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_bounded(cmd, Duration::from_secs(240))
}

fn text(o: &Output) -> String {
    format!(
        "status: {}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `certkeeper import NAME` of the `cert.pem`, `chain.pem` and `privkey.pem` in `src`.
fn import(config: &Path, src: &Path, name: &str) -> Output {
    let file = |f: &str| src.join(f).to_str().unwrap().to_string();
    let (cert, chain, key) = (file("cert.pem"), file("chain.pem"), file("privkey.pem"));
    run(
        config,
        &[
            "import", name, "--cert", &cert, "--chain", &chain, "--key", &key,
        ],
        &[],
    )
}

/// Run and require success; returns stdout.
fn ok(config: &Path, args: &[&str]) -> String {
    let o = run(config, args, &[]);
    assert!(
        o.status.success(),
        "certkeeper {args:?} failed:\n{}",
        text(&o)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The live leaf certificate in an output dir.
fn live_cert(out: &Path) -> X509 {
    let pem = std::fs::read(out.join("fullchain.pem")).expect("fullchain.pem");
    X509::stack_from_pem(&pem).unwrap().remove(0)
}

fn serial(cert: &X509) -> String {
    cert.serial_number()
        .to_bn()
        .unwrap()
        .to_hex_str()
        .unwrap()
        .to_string()
}

fn public_key_der(out: &Path) -> Vec<u8> {
    let pem = std::fs::read(out.join("privkey.pem")).unwrap();
    PKey::private_key_from_pem(&pem)
        .unwrap()
        .public_key_to_der()
        .unwrap()
}

fn cert_state(state_dir: &Path, name: &str) -> serde_json::Value {
    let p = state_dir.join("certs").join(format!("{name}.json"));
    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
}

/// The single account directory under `<state>/accounts`.
fn account_dir(state_dir: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(state_dir.join("accounts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs.into_iter().next().unwrap()
}

/// [`World::www_config`] for `domain`, issued once: (config, account dir, account key PEM).
fn issued_with_account(w: &World, domain: &str) -> (PathBuf, PathBuf, Vec<u8>) {
    let cfg = w.www_config(domain);
    ok(&cfg, &["renew"]);
    let acct = account_dir(&w.path("state"));
    let old_pem = std::fs::read(acct.join("key.pem")).unwrap();
    (cfg, acct, old_pem)
}

/// `account rollover` with the test crash hook set to `at`; asserts that it aborted.
fn crashed_rollover(cfg: &Path, at: &str) {
    let o = run(
        cfg,
        &["account", "rollover", "--issuer", "pebble"],
        &[("CERTKEEPER_TEST_CRASH_AT", at)],
    );
    assert!(
        !o.status.success(),
        "the crash hook must abort:\n{}",
        text(&o)
    );
}

async fn acme_client(w: &World) -> acme::Client {
    acme::Client::new(&w.pebble.directory_url(), &[w.pebble.ca_x509()], "e2e-test")
        .await
        .unwrap()
}

async fn cert_status(w: &World, serial: &str) -> String {
    w.pebble
        .mgmt_get(&format!("/cert-status-by-serial/{serial}"))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_then_renew_issues_a_replacement() {
    let Some(w) = World::start().await else {
        return;
    };
    let cfg = w.www_config("www.example.com");
    ok(&cfg, &["renew"]);
    let out = w.path("tls/www");
    let first = serial(&live_cert(&out));
    assert!(
        cert_status(&w, &first).await.contains("Valid"),
        "pebble should see the new certificate as valid"
    );

    let stdout = ok(&cfg, &["revoke", "www", "--reason", "superseded"]);
    assert!(stdout.contains("account key"), "{stdout}");
    let status = cert_status(&w, &first).await;
    assert!(status.contains("Revoked"), "pebble status: {status}");
    // The revoked pair is kept aside, the state marks it.
    let kept: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".revoked-"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let kept_dir = out.join(&kept[0]);
    assert_eq!(
        serial(
            &X509::stack_from_pem(&std::fs::read(kept_dir.join("fullchain.pem")).unwrap()).unwrap()
                [0]
        ),
        first
    );
    assert!(kept_dir.join("privkey.pem").is_file());
    assert!(cert_state(&w.path("state"), "www")["revoked_serial"].is_string());
    // Revoking the same serial again is refused with advice.
    let again = run(&cfg, &["revoke", "www"], &[]);
    assert!(!again.status.success());
    assert!(
        text(&again).contains("certkeeper renew www"),
        "{}",
        text(&again)
    );

    // The next plain renew (no --force) replaces it at once.
    let stdout = ok(&cfg, &["renew"]);
    assert!(stdout.contains("www: issued by pebble"), "{stdout}");
    let second = serial(&live_cert(&out));
    assert_ne!(first, second);
    assert!(cert_state(&w.path("state"), "www")["revoked_serial"].is_null());
    // And the one after that has nothing to do.
    let stdout = ok(&cfg, &["renew"]);
    assert!(stdout.contains("www: not due"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_falls_back_to_the_certificate_key_when_the_account_is_lost() {
    let Some(w) = World::start().await else {
        return;
    };
    let cfg = w.www_config("lost.example.com");
    ok(&cfg, &["renew"]);
    let first = serial(&live_cert(&w.path("tls/www")));
    // The account is unusable (deactivated at the CA behind certkeeper's back): the CA refuses it,
    // the certificate key still works.
    let acct = account_dir(&w.path("state"));
    let key = AccountKey::from_pem(&std::fs::read(acct.join("key.pem")).unwrap()).unwrap();
    let client = acme_client(&w).await;
    acme::Account::find_existing(&client, key)
        .await
        .unwrap()
        .expect("account")
        .deactivate()
        .await
        .unwrap();
    let stdout = ok(&cfg, &["revoke", "www", "--reason", "keyCompromise"]);
    assert!(stdout.contains("certificate key"), "{stdout}");
    let status = cert_status(&w, &first).await;
    assert!(status.contains("Revoked"), "pebble status: {status}");

    // With the account state gone entirely, no account is registered just to revoke.
    std::fs::remove_dir_all(w.path("state/accounts")).unwrap();
    ok(&cfg, &["renew", "--force"]);
    let second = serial(&live_cert(&w.path("tls/www")));
    std::fs::remove_dir_all(w.path("state/accounts")).unwrap();
    let stdout = ok(&cfg, &["revoke", "www"]);
    assert!(stdout.contains("certificate key"), "{stdout}");
    assert!(cert_status(&w, &second).await.contains("Revoked"));
    let accounts = std::fs::read_dir(w.path("state/accounts")).map_or(0, |d| d.count());
    assert_eq!(accounts, 0, "an account was registered just to revoke");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_with_cert_key_flag() {
    let Some(w) = World::start().await else {
        return;
    };
    let cfg = w.www_config("ck.example.com");
    ok(&cfg, &["renew"]);
    let first = serial(&live_cert(&w.path("tls/www")));
    let stdout = ok(
        &cfg,
        &[
            "revoke",
            "www",
            "--with-cert-key",
            "--reason",
            "cessationOfOperation",
        ],
    );
    assert!(stdout.contains("certificate key"), "{stdout}");
    assert!(cert_status(&w, &first).await.contains("Revoked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollover_switches_the_key_and_the_old_one_is_refused() {
    let Some(w) = World::start().await else {
        return;
    };
    let (cfg, acct, old_pem) = issued_with_account(&w, "roll.example.com");
    let shown = ok(&cfg, &["account", "show", "--issuer", "pebble"]);
    assert!(shown.contains("status:     valid"), "{shown}");

    let rolled = ok(&cfg, &["account", "rollover", "--issuer", "pebble"]);
    let new_pem = std::fs::read(acct.join("key.pem")).unwrap();
    assert_ne!(old_pem, new_pem, "key.pem must hold the new key");
    assert!(!acct.join("key.next.pem").exists());
    let new_key = AccountKey::from_pem(&new_pem).unwrap();
    assert!(rolled.contains(&new_key.thumbprint()), "{rolled}");

    // The CA knows the new key and refuses the old one.
    let client = acme_client(&w).await;
    let old_key = AccountKey::from_pem(&old_pem).unwrap();
    assert!(
        acme::Account::find_existing(&client, old_key)
            .await
            .unwrap()
            .is_none(),
        "the CA must not know the old key any more"
    );
    let found = acme::Account::find_existing(&client, new_key)
        .await
        .unwrap()
        .expect("the CA knows the new key");
    assert!(shown.contains(found.url()), "same account URL:\n{shown}");

    // Issuance works with the new key.
    let stdout = ok(&cfg, &["renew", "--force"]);
    assert!(stdout.contains("www: issued by pebble"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "test-hooks"),
    ignore = "needs the crash hook: cargo test --features test-hooks"
)]
async fn rollover_interrupted_after_keychange_is_completed_on_next_start() {
    let Some(w) = World::start().await else {
        return;
    };
    let (cfg, acct, old_pem) = issued_with_account(&w, "crash.example.com");

    crashed_rollover(&cfg, "rollover-after-keychange");
    let staged = std::fs::read(acct.join("key.next.pem")).expect("key.next.pem left by the crash");
    assert_eq!(std::fs::read(acct.join("key.pem")).unwrap(), old_pem);

    // The CA already switched; the next command resolves it and works.
    let stdout = ok(&cfg, &["renew", "--force"]);
    assert!(stdout.contains("www: issued by pebble"), "{stdout}");
    assert!(!acct.join("key.next.pem").exists());
    assert_eq!(std::fs::read(acct.join("key.pem")).unwrap(), staged);
    let client = acme_client(&w).await;
    assert!(
        acme::Account::find_existing(&client, AccountKey::from_pem(&old_pem).unwrap())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "test-hooks"),
    ignore = "needs the crash hook: cargo test --features test-hooks"
)]
async fn rollover_interrupted_before_keychange_keeps_the_old_key() {
    let Some(w) = World::start().await else {
        return;
    };
    let (cfg, acct, old_pem) = issued_with_account(&w, "crash2.example.com");
    crashed_rollover(&cfg, "rollover-after-stage");
    assert!(acct.join("key.next.pem").exists());

    let shown = ok(&cfg, &["account", "show", "--issuer", "pebble"]);
    assert!(!acct.join("key.next.pem").exists());
    assert_eq!(std::fs::read(acct.join("key.pem")).unwrap(), old_pem);
    let old_key = AccountKey::from_pem(&old_pem).unwrap();
    assert!(shown.contains(&old_key.thumbprint()), "{shown}");
    let client = acme_client(&w).await;
    assert!(
        acme::Account::find_existing(&client, old_key)
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_update_contact_and_deactivate() {
    let Some(w) = World::start().await else {
        return;
    };
    let cfg = w.www_config("acct.example.com");
    // No account yet: show says how one is created.
    let o = run(&cfg, &["account", "show", "--issuer", "pebble"], &[]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("no account registered yet"),
        "{}",
        text(&o)
    );
    ok(&cfg, &["renew"]);
    let shown = ok(
        &cfg,
        &[
            "account",
            "update-contact",
            "--issuer",
            "pebble",
            "--contact",
            "ops@example.org",
        ],
    );
    assert!(shown.contains("mailto:ops@example.org"), "{shown}");
    let shown = ok(&cfg, &["account", "show", "--issuer", "pebble"]);
    assert!(shown.contains("mailto:ops@example.org"), "{shown}");

    let o = run(&cfg, &["account", "deactivate", "--issuer", "pebble"], &[]);
    assert!(!o.status.success());
    assert!(text(&o).contains("--yes"), "{}", text(&o));
    let acct = account_dir(&w.path("state"));
    let key = AccountKey::from_pem(&std::fs::read(acct.join("key.pem")).unwrap()).unwrap();
    let out = ok(
        &cfg,
        &["account", "deactivate", "--issuer", "pebble", "--yes"],
    );
    assert!(out.contains("deactivated"), "{out}");
    assert!(!acct.exists(), "the account state is moved aside");
    // The CA refuses the deactivated account's key.
    let client = acme_client(&w).await;
    assert!(acme::Account::find_existing(&client, key).await.is_err());
    // The next renewal registers a new account and issues.
    let stdout = ok(&cfg, &["renew", "--force"]);
    assert!(stdout.contains("www: issued by pebble"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_key_types_p256_p384_rsa_each_issue() {
    let Some(w) = World::start().await else {
        return;
    };
    let mut body = String::new();
    for (name, kt) in [
        ("p256", "ecdsa-p256"),
        ("p384", "ecdsa-p384"),
        ("rsa", "rsa-2048"),
    ] {
        body += &w.issuer(name, kt);
        body += &w.cert(
            name,
            &format!("{name:?}"),
            &[&format!("{name}.example.com")],
            "",
            &format!("tls/{name}"),
        );
    }
    let cfg = w.config("certkeeper.toml", "state", &body);
    let stdout = ok(&cfg, &["renew"]);
    for (name, kt) in [
        ("p256", "ecdsa-p256"),
        ("p384", "ecdsa-p384"),
        ("rsa", "rsa-2048"),
    ] {
        assert!(
            stdout.contains(&format!("{name}: issued by {name}")),
            "{stdout}"
        );
        let shown = ok(&cfg, &["account", "show", "--issuer", name]);
        assert!(shown.contains(&format!("key:        {kt}")), "{shown}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_reuse_keeps_the_private_key_and_default_changes_it() {
    let Some(w) = World::start().await else {
        return;
    };
    let body = w.issuer("pebble", "ecdsa-p256")
        + &w.cert(
            "pinned",
            "\"pebble\"",
            &["pinned.example.com"],
            "key_reuse = true",
            "tls/pinned",
        )
        + &w.cert(
            "fresh",
            "\"pebble\"",
            &["fresh.example.com"],
            "",
            "tls/fresh",
        );
    let cfg = w.config("certkeeper.toml", "state", &body);
    ok(&cfg, &["renew"]);
    let pinned0 = public_key_der(&w.path("tls/pinned"));
    let fresh0 = public_key_der(&w.path("tls/fresh"));
    let s0 = serial(&live_cert(&w.path("tls/pinned")));
    for _ in 0..2 {
        ok(&cfg, &["renew", "--force"]);
    }
    assert_ne!(s0, serial(&live_cert(&w.path("tls/pinned"))), "renewed");
    assert_eq!(public_key_der(&w.path("tls/pinned")), pinned0);
    assert_ne!(public_key_der(&w.path("tls/fresh")), fresh0);
    // A revoked certificate's key is never reused.
    ok(&cfg, &["revoke", "pinned", "--reason", "keyCompromise"]);
    ok(&cfg, &["renew", "pinned"]);
    assert_ne!(public_key_der(&w.path("tls/pinned")), pinned0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_identifier_certificate_over_http01() {
    let Some(w) = World::start().await else {
        return;
    };
    let body = w.issuer("pebble", "ecdsa-p256")
        + &w.cert("ip", "\"pebble\"", &["127.0.0.1"], "", "tls/ip");
    let cfg = w.config("certkeeper.toml", "state", &body);
    let stdout = ok(&cfg, &["renew"]);
    assert!(stdout.contains("ip: issued by pebble"), "{stdout}");
    let leaf = live_cert(&w.path("tls/ip"));
    let sans = leaf.subject_alt_names().expect("SANs");
    let ips: Vec<Vec<u8>> = sans
        .iter()
        .filter_map(|g| g.ipaddress().map(<[u8]>::to_vec))
        .collect();
    assert_eq!(ips, vec![vec![127, 0, 0, 1]]);
    assert!(sans.iter().all(|g| g.dnsname().is_none()));
}

/// A webroot solver behind a real nginx whose port-80 server serves `served` as its `root`, while
/// certkeeper writes tokens under `written` (the same directory when the setup is right). The
/// self-check goes to nginx's port on 127.0.0.1. Returns the `renew` output, nginx's port and the
/// world (kept alive for assertions).
async fn webroot_renew(
    served: &Path,
    written: &Path,
    self_check: &str,
) -> Option<(Output, World, PathBuf, Nginx)> {
    if !nginx_available() {
        eprintln!("nginx not installed; skipping");
        return None;
    }
    let certs = served.parent().unwrap().join("nginx-certs");
    std::fs::create_dir_all(&certs).unwrap();
    let nginx = Nginx::start(NginxOpts {
        cert_dir: certs.clone(),
        webroot: Some(served.to_path_buf()),
        placeholder_cert: true,
        ..Default::default()
    })
    .expect("start nginx");
    // pebble validates HTTP-01 against nginx's port; certkeeper's own listener is elsewhere and unused.
    let w = World::start_on(nginx.http_port()).await?;
    let http01_port = free_port();
    let self_check = self_check.replace("NGINX_PORT", &nginx.http_port().to_string());
    let body = format!(
        r#"
[issuer.pebble]
directory = "{dir}"
ca_bundle = "{ca}"

[[issuer.pebble.solver]]
webroot = {{ path = "{webroot}"{self_check} }}
"#,
        dir = w.pebble.directory_url(),
        ca = w.path("ca.pem").display(),
        webroot = written.display(),
    ) + &w.cert("web", "\"pebble\"", &["web.example.com"], "", "tls/web");
    let text_cfg = format!(
        "state_dir = \"{}\"\n\n[http01]\nlisten = [\"127.0.0.1:{http01_port}\"]\n{body}",
        w.path("state").display()
    );
    let cfg = w.path("certkeeper.toml");
    std::fs::write(&cfg, text_cfg).unwrap();
    let out = run(&cfg, &["renew"], &[]);
    Some((out, w, cfg, nginx))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webroot_behind_a_real_nginx() {
    let pre = tempfile::tempdir().unwrap();
    let webroot = pre.path().join("www");
    std::fs::create_dir_all(&webroot).unwrap();
    // The self-check runs (through nginx, as pebble will) and passes.
    let Some((out, w, _cfg, nginx)) = webroot_renew(
        &webroot,
        &webroot,
        ", self_check = { port = NGINX_PORT, resolve = [\"127.0.0.1\"] }",
    )
    .await
    else {
        return;
    };
    assert!(out.status.success(), "renew failed:\n{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("web: issued by pebble"), "{stdout}");
    // The token files are removed after validation.
    let challenge_dir = webroot.join(".well-known/acme-challenge");
    let left: Vec<_> = std::fs::read_dir(&challenge_dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "token files left behind: {left:?}");
    // nginx served the token: its access to the webroot is what made pebble validate.
    assert!(live_cert(&w.path("tls/web")).subject_alt_names().is_some());
    drop(nginx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webroot_self_check_names_what_nginx_answered() {
    let pre = tempfile::tempdir().unwrap();
    let served = pre.path().join("www");
    let written = pre.path().join("not-served");
    std::fs::create_dir_all(&served).unwrap();
    std::fs::create_dir_all(&written).unwrap();
    let Some((out, w, cfg, nginx)) = webroot_renew(
        &served,
        &written,
        ", self_check = { port = NGINX_PORT, resolve = [\"127.0.0.1\"] }",
    )
    .await
    else {
        return;
    };
    let all = text(&out);
    assert!(!out.status.success(), "renew should fail:\n{all}");
    // The message says the self-check failed before the CA was asked, what nginx answered, where
    // the token was written and what to change.
    assert!(
        all.contains("HTTP-01 self-check failed for web.example.com before asking the CA"),
        "{all}"
    );
    assert!(
        all.contains("HTTP 404 Not Found from server \"nginx"),
        "{all}"
    );
    assert!(
        all.contains(&format!(
            "the token was written to {}/.well-known/acme-challenge/",
            written.display()
        )),
        "{all}"
    );
    assert!(all.contains("does not serve the webroot"), "{all}");
    assert!(
        all.contains(&format!(
            "webroot = {{ path = \"{}\", self_check = false }}",
            written.display()
        )),
        "{all}"
    );
    assert!(!w.path("tls/web").join("fullchain.pem").exists());
    // The token file was cleaned up even though the order failed.
    let left: Vec<_> = std::fs::read_dir(written.join(".well-known/acme-challenge"))
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "token files left behind: {left:?}");

    // With the self-check off, the same setup reaches the CA, which fails validation itself.
    let text_cfg = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!(
            ", self_check = {{ port = {}, resolve = [\"127.0.0.1\"] }}",
            nginx.http_port()
        ),
        ", self_check = false",
    );
    assert!(text_cfg.contains("self_check = false"), "{text_cfg}");
    std::fs::write(&cfg, text_cfg).unwrap();
    let out = run(&cfg, &["renew"], &[]);
    let all = text(&out);
    assert!(!out.status.success(), "renew should fail:\n{all}");
    assert!(!all.contains("self-check failed"), "{all}");
    assert!(!w.path("tls/web").join("fullchain.pem").exists());
    drop(nginx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn falls_back_to_the_next_issuer_when_the_first_is_down() {
    let Some(w) = World::start().await else {
        return;
    };
    let closed = free_port();
    let body = format!(
        r#"
[issuer.down]
directory = "https://127.0.0.1:{closed}/dir"

[[issuer.down.solver]]
http01 = {{ self_check = false }}
"#
    ) + &w.issuer("pebble", "ecdsa-p256")
        + &w.cert(
            "www",
            "[\"down\", \"pebble\"]",
            &["fallback.example.com"],
            "",
            "tls/www",
        );
    let cfg = w.config("certkeeper.toml", "state", &body);
    let stdout = ok(&cfg, &["renew"]);
    assert!(stdout.contains("www: issued by pebble"), "{stdout}");
    assert_eq!(cert_state(&w.path("state"), "www")["issuer"], "pebble");
    assert!(live_cert(&w.path("tls/www")).subject_alt_names().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_adopts_a_certificate_without_reissuing() {
    let Some(w) = World::start().await else {
        return;
    };
    // A certificate issued "elsewhere": another state dir and output dir.
    let body = w.issuer("pebble", "ecdsa-p256")
        + &w.cert("www", "\"pebble\"", &["imp.example.com"], "", "elsewhere");
    let other = w.config("other.toml", "other-state", &body);
    ok(&other, &["renew"]);
    let src = w.path("elsewhere");
    let issued = serial(&live_cert(&src));

    let body = w.issuer("pebble", "ecdsa-p256")
        + &w.cert("www", "\"pebble\"", &["imp.example.com"], "", "tls/www")
        + &w.cert(
            "wrong",
            "\"pebble\"",
            &["other.example.com"],
            "",
            "tls/wrong",
        );
    let cfg = w.config("certkeeper.toml", "state", &body);
    // Names that do not match the config are refused and nothing is written.
    let o = import(&cfg, &src, "wrong");
    assert!(!o.status.success());
    assert!(text(&o).contains("names do not match"), "{}", text(&o));
    assert!(!w.path("tls/wrong/fullchain.pem").exists());

    let o = import(&cfg, &src, "www");
    assert!(
        o.status.success(),
        "certkeeper import www failed:\n{}",
        text(&o)
    );
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(stdout.contains("imported serial"), "{stdout}");
    assert_eq!(serial(&live_cert(&w.path("tls/www"))), issued);
    assert_eq!(
        public_key_der(&w.path("tls/www")),
        public_key_der(&src),
        "the imported key is installed"
    );
    let stdout = ok(&cfg, &["renew", "www"]);
    assert!(stdout.contains("www: not due"), "{stdout}");
    assert_eq!(serial(&live_cert(&w.path("tls/www"))), issued);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_rollover_key_is_left_alone_while_another_process_rolls_over() {
    let Some(w) = World::start().await else {
        return;
    };
    let cfg = w.www_config("race.example.com");
    ok(&cfg, &["renew"]);
    let acct = account_dir(&w.path("state"));
    let id = acct.file_name().unwrap().to_string_lossy().into_owned();
    let old_pem = std::fs::read(acct.join("key.pem")).unwrap();
    // A rollover "in progress": a staged key the CA does not know (yet), and the account lock held.
    let staged = AccountKey::generate(acme::KeyType::EcdsaP256).unwrap();
    std::fs::write(acct.join("key.next.pem"), staged.to_pem().unwrap()).unwrap();
    let storage = certkeeper::store::FileStorage::open(w.path("state")).unwrap();
    let store = certkeeper::store::AccountStore::new(std::sync::Arc::new(storage));
    let lock = store.lock(&id).unwrap();
    ok(&cfg, &["account", "show", "--issuer", "pebble"]);
    assert!(
        acct.join("key.next.pem").exists(),
        "a staged key must not be dropped while its rollover runs"
    );
    let o = run(&cfg, &["account", "rollover", "--issuer", "pebble"], &[]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("another certkeeper process"),
        "{}",
        text(&o)
    );
    // Once the lock is gone the leftover is resolved: the CA never saw the key, so it is dropped.
    drop(lock);
    ok(&cfg, &["account", "show", "--issuer", "pebble"]);
    assert!(!acct.join("key.next.pem").exists());
    assert_eq!(std::fs::read(acct.join("key.pem")).unwrap(), old_pem);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_issues_and_closes_its_listener() {
    let tls_port = free_port();
    let Some(w) = World::start_with(PebbleOpts {
        http_port: free_port(),
        tls_port,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let body = format!(
        r#"
[issuer.pebble]
directory = "{dir}"
ca_bundle = "{ca}"

[[issuer.pebble.solver]]
tlsalpn01 = {{ listen = "127.0.0.1:{tls_port}" }}
"#,
        dir = w.pebble.directory_url(),
        ca = w.path("ca.pem").display(),
    ) + &w.cert(
        "alpn",
        "\"pebble\"",
        &["alpn.example.com", "alpn2.example.com", "127.0.0.1"],
        "",
        "tls/alpn",
    );
    let cfg = w.config("certkeeper.toml", "state", &body);
    let stdout = ok(&cfg, &["renew"]);
    assert!(stdout.contains("alpn: issued by pebble"), "{stdout}");
    let sans = live_cert(&w.path("tls/alpn")).subject_alt_names().unwrap();
    let names: Vec<String> = sans
        .iter()
        .filter_map(|g| g.dnsname().map(str::to_string))
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    // The IP address was proven over tls-alpn-01 too (reverse-DNS SNI, RFC 8738 §6).
    let ips: Vec<Vec<u8>> = sans
        .iter()
        .filter_map(|g| g.ipaddress().map(<[u8]>::to_vec))
        .collect();
    assert_eq!(ips, vec![vec![127, 0, 0, 1]]);
    // The listener is closed once the challenges are cleaned up (the process has exited anyway, so
    // check within one process instead: the solver frees the port after cleanup).
    use certkeeper::challenge::tlsalpn01::TlsAlpn01Solver;
    use certkeeper::challenge::{ChallengeCtx, ChallengeKind, Solver};
    let port = free_port();
    let solver = TlsAlpn01Solver::new(format!("127.0.0.1:{port}").parse().unwrap());
    let ctx = ChallengeCtx {
        cert_name: "t".into(),
        identifier: "x.example.com".into(),
        is_ip: false,
        wildcard: false,
        kind: ChallengeKind::TlsAlpn01,
        token: "tok".into(),
        key_authorization: "tok.thumb".into(),
        persist: None,
    };
    solver.present(&ctx).await.unwrap();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    solver.cleanup(&ctx).await.unwrap();
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
        "the port is free again after cleanup"
    );
}

/// Wait (bounded) until the live certificate in `out` has a serial other than `not`.
async fn wait_new_serial(out: &Path, not: Option<&str>) -> String {
    for _ in 0..600 {
        if out.join("fullchain.pem").exists() {
            let s = serial(&live_cert(out));
            if Some(s.as_str()) != not {
                return s;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no new certificate in {} within 120 s", out.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_daemon_replaces_a_revoked_certificate_after_sighup() {
    let Some(w) = World::start().await else {
        return;
    };
    let cfg = w.www_config("daemon.example.com");
    let mut daemon = Daemon::start(daemon_command_at(&cfg), w.path("daemon.log"));
    let out = w.path("tls/www");
    let first = wait_new_serial(&out, None).await;
    // Let the daemon finish recording the issuance before revoking.
    for _ in 0..100 {
        if w.path("state/certs/www.json").exists()
            && cert_state(&w.path("state"), "www")["last_success"].is_string()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ok(&cfg, &["revoke", "www"]);
    assert!(cert_status(&w, &first).await.contains("Revoked"));
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    let second = wait_new_serial(&out, Some(&first)).await;
    assert_ne!(first, second);
    drop(daemon);
}
