//! DNS-01 end to end: `certkeeper renew` against pebble, with pebble's VA resolving through a real
//! authoritative DNS server (bind9 or PowerDNS) that certkeeper updates through a provider.
//!
//! Each test starts its own DNS server(s), its own pebble (`-dnsserver` = that DNS server) and runs
//! the real binary on a generated config. After every run the zone is queried directly: no
//! `_acme-challenge` TXT record may be left, whether the order succeeded or failed.

mod support;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use openssl::x509::X509;
use support::certkeeper::{CliOutput, run_command_sync, std_command_at};
use support::dns::bind::{self, Bind};
use support::dns::pdns::{self, Pdns};
use support::dns::txt_values;
use support::process::KillOnDrop;
use support::{Pebble, PebbleOpts};

/// The challenge names a certificate for `example.test` + `*.example.test` (+ `www`) can use.
const CHALLENGE_NAMES: [&str; 2] = [
    "_acme-challenge.example.test.",
    "_acme-challenge.www.example.test.",
];

/// `certkeeper ARGS` on `config` with debug logs from certkeeper, bounded by `limit`.
fn run_debug(config: &Path, args: &[&str], limit: Duration) -> CliOutput {
    let mut cmd = std_command_at(config, args);
    cmd.env("CERTKEEPER_LOG", "info,certkeeper=debug");
    run_command_sync(cmd, args, limit)
}

/// `certkeeper renew` with a limit generous enough for a loaded machine.
fn renew(config: &Path) -> CliOutput {
    run_debug(config, &["renew"], Duration::from_secs(300))
}

/// The pieces every config shares: state dir, HTTP-01 listener, the pebble issuer.
fn config_head(dir: &Path, pebble: &Pebble, http_port: u16) -> String {
    let ca = dir.join("pebble-tls-ca.pem");
    std::fs::write(&ca, pebble.ca_pem()).expect("write ca");
    format!(
        r#"state_dir = "{state}"

[http01]
listen = ["127.0.0.1:{http_port}"]

[issuer.pebble]
directory = "{url}"
ca_bundle = "{ca}"
contact = ["mailto:admin@example.test"]
"#,
        state = dir.join("state").display(),
        url = pebble.directory_url(),
        ca = ca.display(),
    )
}

/// A `[certificate.NAME]` table for `domains`, output under `dir/tls/NAME`.
fn certificate(dir: &Path, name: &str, domains: &[&str]) -> String {
    let list: Vec<String> = domains.iter().map(|d| format!("\"{d}\"")).collect();
    format!(
        "\n[certificate.{name}]\nissuer = \"pebble\"\ndomains = [{}]\nkey = \"ecdsa-p256\"\noutput = {{ dir = \"{}\" }}\n",
        list.join(", "),
        dir.join("tls").join(name).display()
    )
}

/// A propagation table checking exactly `servers`.
fn propagation(check: bool, timeout: &str, servers: &[SocketAddr]) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "propagation = {{ check = {check}, timeout = \"{timeout}\", interval = \"300ms\", nameservers = [{}] }}\n",
        list.join(", ")
    )
}

/// An rfc2136 `dns01` value for the test bind9, the TSIG secret in a file.
fn rfc2136(dir: &Path, server: &Bind) -> String {
    let secret = dir.join("tsig.key");
    std::fs::write(&secret, format!("{}\n", bind::SECRET)).expect("write tsig secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    format!(
        "dns01 = {{ provider = \"rfc2136\", server = \"{}\", tsig_key = \"{}\", tsig_algorithm = \"hmac-sha256\", tsig_secret_file = \"{}\" }}\n",
        server.addr,
        bind::KEY_NAME,
        secret.display()
    )
}

/// Write the config file and return its path.
fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("certkeeper.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// The SANs of the installed certificate `dir/tls/NAME/cert.pem`, sorted.
fn installed_sans(dir: &Path, name: &str) -> Vec<String> {
    let pem = std::fs::read(dir.join("tls").join(name).join("cert.pem")).expect("cert.pem");
    let cert = X509::from_pem(&pem).expect("parse cert.pem");
    let mut sans: Vec<String> = cert
        .subject_alt_names()
        .expect("SAN extension")
        .iter()
        .filter_map(|g| g.dnsname().map(str::to_string))
        .collect();
    sans.sort();
    sans
}

/// Assert the server holds no challenge TXT record any more.
async fn assert_no_challenge_txt(server: SocketAddr, what: &str) {
    for name in CHALLENGE_NAMES {
        assert_eq!(
            txt_values(server, name).await,
            None,
            "{what} still serves TXT at {name}"
        );
    }
}

/// True when every tool a test needs is installed (else it prints why and is skipped).
fn have(paths: &[&str]) -> bool {
    if !support::pebble::available() {
        eprintln!("skipping: pebble is not installed");
        return false;
    }
    for p in paths {
        if !Path::new(p).exists() {
            eprintln!("skipping: {p} is not installed");
            return false;
        }
    }
    true
}

async fn pebble_with_dns(dns: SocketAddr, http_port: u16) -> Pebble {
    Pebble::start(PebbleOpts {
        dns_server: Some(dns),
        http_port,
        ..Default::default()
    })
    .await
}

/// The solver table sending every name under `example.test` to the `dns01` value that follows.
const ZONE_SOLVER: &str =
    "\n[[issuer.pebble.solver]]\nselector = { dns_zones = [\"example.test\"] }\n";

/// What every issuing test starts with: a temp dir, a pebble resolving through `dns` (keep it
/// alive for the whole test) and the config head pointing at that pebble.
async fn setup(dns: SocketAddr) -> (tempfile::TempDir, Pebble, String) {
    let http_port = support::free_port();
    let pebble = pebble_with_dns(dns, http_port).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_head(dir.path(), &pebble, http_port);
    (dir, pebble, cfg)
}

/// [`ZONE_SOLVER`] updating `server` over rfc2136, its propagation check (`check`, `timeout`) asking `ask`.
fn rfc2136_solver(
    dir: &Path,
    server: &Bind,
    check: bool,
    timeout: &str,
    ask: SocketAddr,
) -> String {
    format!(
        "{ZONE_SOLVER}{}{}",
        rfc2136(dir, server),
        propagation(check, timeout, &[ask])
    )
}

/// A powerdns `dns01` value for the test PowerDNS, the API key in a file.
fn powerdns(dir: &Path, server: &Pdns) -> String {
    let key = dir.join("pdns.key");
    std::fs::write(&key, format!("{}\n", pdns::API_KEY)).unwrap();
    format!(
        "dns01 = {{ provider = \"powerdns\", api_url = \"{}\", api_key_file = \"{}\" }}\n",
        server.api_url,
        key.display()
    )
}

/// An exec `dns01` value running `script`.
fn exec_provider(script: &Path) -> String {
    format!(
        "dns01 = {{ provider = \"exec\", command = \"{}\", timeout = \"60s\" }}\n",
        script.display()
    )
}

/// When the tools in `needs` are installed and bind9 starts: that bind9 and [`setup`] for it.
async fn bind_setup(needs: &[&str]) -> Option<(Bind, tempfile::TempDir, Pebble, String)> {
    if !have(needs) {
        return None;
    }
    let server = Bind::start().await?;
    let (dir, pebble, cfg) = setup(server.addr).await;
    Some((server, dir, pebble, cfg))
}

/// Two bind9 servers, or None (the test is skipped) when bind9 cannot start.
async fn two_binds() -> Option<(Bind, Bind)> {
    let first = Bind::start().await?;
    let second = Bind::start().await?;
    Some((first, second))
}

/// `certkeeper renew` that must fail; its output is printed for the test log.
fn failed_renew(config: &Path) -> CliOutput {
    let run = renew(config);
    eprintln!("{}", run);
    assert!(!run.ok(), "the order must fail: {}", run);
    run
}

/// Assert `server` logged adding the apex challenge TXT record (else fail with `why`); returns
/// the log for further checks.
#[track_caller]
fn assert_txt_added(server: &Bind, why: &str) -> String {
    let log = server.log();
    assert!(
        log.contains("adding an RR at '_acme-challenge.example.test' TXT"),
        "{why}:\n{log}"
    );
    log
}

/// Assert no certificate `name` was installed under `dir/tls`.
fn assert_nothing_installed(dir: &Path, name: &str) {
    assert!(
        !dir.join("tls").join(name).join("fullchain.pem").exists(),
        "nothing may be installed"
    );
}

/// The report line `NAME: FAILED ...` of a run, or "" when there is none.
fn failed_line(run: &CliOutput, name: &str) -> String {
    run.stdout
        .lines()
        .find(|l| l.contains(&format!("{name}: FAILED")))
        .unwrap_or_default()
        .to_string()
}

/// Assert `wild` was installed for the apex and the wildcard.
fn assert_wild_installed(dir: &Path) {
    assert_eq!(
        installed_sans(dir, "wild"),
        vec!["*.example.test", "example.test"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc2136_issues_apex_and_wildcard_and_leaves_no_txt() {
    let Some((server, dir, _pebble, mut cfg)) = bind_setup(&[]).await else {
        return;
    };
    cfg += &rfc2136_solver(dir.path(), &server, true, "60s", server.addr);
    cfg += &certificate(dir.path(), "wild", &["example.test", "*.example.test"]);
    let config = write_config(dir.path(), &cfg);

    let run = renew(&config);
    assert!(run.ok(), "{}\n{}", run, server.log());
    assert!(run.stdout.contains("wild: issued by pebble"), "{}", run);
    assert_wild_installed(dir.path());
    // Both values were really written to bind and removed again.
    let log = assert_txt_added(&server, "named never saw the challenge record added");
    assert!(
        log.contains("deleting an RR at _acme-challenge.example.test TXT")
            || log.contains("deleting an RR at '_acme-challenge.example.test' TXT"),
        "named never saw the challenge record deleted:\n{log}"
    );
    assert_no_challenge_txt(server.addr, "bind9").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn powerdns_issues_apex_and_wildcard_and_leaves_no_txt() {
    if !have(&[]) {
        return;
    }
    let Some(server) = Pdns::start().await else {
        return;
    };
    let (dir, _pebble, mut cfg) = setup(server.addr).await;
    cfg += ZONE_SOLVER;
    cfg += &powerdns(dir.path(), &server);
    cfg += &propagation(true, "60s", &[server.addr]);
    cfg += &certificate(dir.path(), "wild", &["example.test", "*.example.test"]);
    let config = write_config(dir.path(), &cfg);

    let run = renew(&config);
    assert!(run.ok(), "{}", run);
    assert!(run.stdout.contains("wild: issued by pebble"), "{}", run);
    assert_wild_installed(dir.path());
    assert_no_challenge_txt(server.addr, "pdns_server").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_nsupdate_issues_apex_and_wildcard_and_leaves_no_txt() {
    let Some((server, dir, _pebble, mut cfg)) = bind_setup(&["/usr/bin/nsupdate"]).await else {
        return;
    };
    // The documented hook shape: `present|cleanup FQDN VALUE`, nsupdate with a TSIG key file.
    let keyconf = dir.path().join("tsig.conf");
    std::fs::write(
        &keyconf,
        format!(
            "key \"{}\" {{ algorithm hmac-sha256; secret \"{}\"; }};\n",
            bind::KEY_NAME,
            bind::SECRET
        ),
    )
    .unwrap();
    let calls = dir.path().join("calls.log");
    let script = dir.path().join("dns-hook.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nset -e\necho \"$1 $2\" >> '{calls}'\n\
             case \"$1\" in present) op=add ;; cleanup) op=delete ;; *) echo \"unknown action $1\" >&2; exit 2 ;; esac\n\
             printf 'server {ip} {port}\\nupdate %s %s %s TXT \"%s\"\\nsend\\n' \"$op\" \"$2\" \"$CERTKEEPER_DNS_TTL\" \"$3\" \\\n\
             | nsupdate -k '{keyconf}'\n",
            calls = calls.display(),
            ip = server.addr.ip(),
            port = server.addr.port(),
            keyconf = keyconf.display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    cfg += ZONE_SOLVER;
    cfg += &exec_provider(&script);
    cfg += &propagation(true, "60s", &[server.addr]);
    cfg += &certificate(dir.path(), "wild", &["example.test", "*.example.test"]);
    let config = write_config(dir.path(), &cfg);

    let run = renew(&config);
    assert!(run.ok(), "{}\n{}", run, server.log());
    assert_wild_installed(dir.path());
    let mut calls: Vec<String> = std::fs::read_to_string(&calls)
        .expect("the hook was never run")
        .lines()
        .map(str::to_string)
        .collect();
    calls.sort();
    assert_eq!(
        calls,
        vec![
            "cleanup _acme-challenge.example.test.",
            "cleanup _acme-challenge.example.test.",
            "present _acme-challenge.example.test.",
            "present _acme-challenge.example.test.",
        ],
        "one present and one cleanup per authorization (apex and wildcard)"
    );
    assert_no_challenge_txt(server.addr, "bind9").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_http01_and_dns01_names_in_one_certificate() {
    let Some((server, dir, _pebble, mut cfg)) = bind_setup(&[]).await else {
        return;
    };
    // HTTP-01 is the default (no selector); the apex goes to DNS-01 by name. www.example.test has an
    // A record 127.0.0.1 in the test zone, so pebble reaches certkeeper's HTTP-01 listener.
    cfg += "\n[[issuer.pebble.solver]]\nhttp01 = { self_check = false }\n";
    cfg += "\n[[issuer.pebble.solver]]\nselector = { dns_names = [\"example.test\"] }\n";
    cfg += &rfc2136(dir.path(), &server);
    cfg += &propagation(true, "60s", &[server.addr]);
    cfg += &certificate(dir.path(), "mixed", &["example.test", "www.example.test"]);
    let config = write_config(dir.path(), &cfg);

    let run = renew(&config);
    assert!(run.ok(), "{}\n{}", run, server.log());
    assert_eq!(
        installed_sans(dir.path(), "mixed"),
        vec!["example.test", "www.example.test"]
    );
    let log = assert_txt_added(&server, "the apex was not solved through DNS-01");
    assert!(
        !log.contains("_acme-challenge.www.example.test"),
        "www.example.test must be solved over HTTP-01, yet a TXT record was written for it:\n{log}"
    );
    assert_no_challenge_txt(server.addr, "bind9").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_without_dns01_solver_is_a_config_error_at_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        r#"state_dir = "{state}"

[http01]
listen = ["127.0.0.1:1"]

[issuer.pebble]
directory = "https://127.0.0.1:1/dir"

[[issuer.pebble.solver]]
http01 = {{}}
{cert}"#,
        state = dir.path().join("state").display(),
        cert = certificate(dir.path(), "wild", &["example.test", "*.example.test"]),
    );
    let config = write_config(dir.path(), &cfg);
    assert_wildcard_rejected(&config, dir.path());

    // A dns01 solver whose selector does not cover the wildcard does not help.
    let cfg = cfg.replace(
        "http01 = {}\n",
        "http01 = {}\n\n[[issuer.pebble.solver]]\nselector = { dns_zones = [\"other.test\"] }\ndns01 = { provider = \"exec\", command = \"/bin/true\" }\n",
    );
    assert!(cfg.contains("other.test"), "{cfg}");
    let config = write_config(dir.path(), &cfg);
    assert_wildcard_rejected(&config, dir.path());
}

fn assert_wildcard_rejected(config: &Path, dir: &Path) {
    for cmd in ["check", "renew"] {
        let run = run_debug(config, &[cmd], Duration::from_secs(60));
        assert_eq!(run.status.code(), Some(2), "certkeeper {cmd}: {}", run);
        assert!(
            run.stderr
                .contains("*.example.test is a wildcard name and needs a dns01 solver"),
            "certkeeper {cmd} must name the wildcard and the missing dns01 solver: {}",
            run
        );
        assert!(
            run.stderr.contains("certkeeper.toml"),
            "certkeeper {cmd} must name the config file: {}",
            run
        );
    }
    assert!(
        !dir.join("state").exists(),
        "a rejected config must not touch the state dir"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_validation_reports_the_ca_message_and_leaves_no_txt() {
    if !have(&[]) {
        return;
    }
    // certkeeper writes to `written`; pebble asks `asked`, which never gets the record. The
    // propagation check is off, as a user might set it, so the CA is the one that fails.
    let Some((written, asked)) = two_binds().await else {
        return;
    };
    let (dir, _pebble, mut cfg) = setup(asked.addr).await;
    cfg += &rfc2136_solver(dir.path(), &written, false, "60s", written.addr);
    cfg += &certificate(dir.path(), "wild", &["example.test", "*.example.test"]);
    let config = write_config(dir.path(), &cfg);

    let run = failed_renew(&config);
    assert!(run.stdout.contains("wild: FAILED"), "{}", run);
    // pebble's own words about the missing TXT record reach the user.
    let failed = failed_line(&run, "wild");
    assert!(
        failed.contains("TXT") && failed.contains("example.test"),
        "the failure must carry the CA's message about the TXT record: {}",
        run
    );
    assert_txt_added(
        &written,
        "the record was never written, so cleanup was not tested",
    );
    assert_no_challenge_txt(written.addr, "the updated bind9").await;
    assert_no_challenge_txt(asked.addr, "pebble's bind9").await;
    assert_nothing_installed(dir.path(), "wild");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn propagation_timeout_names_the_server_and_leaves_no_txt() {
    if !have(&[]) {
        return;
    }
    // The record goes to `written`, the propagation check asks only `lagging`, which never has it.
    let Some((written, lagging)) = two_binds().await else {
        return;
    };
    let (dir, _pebble, mut cfg) = setup(written.addr).await;
    cfg += &rfc2136_solver(dir.path(), &written, true, "3s", lagging.addr);
    cfg += &certificate(dir.path(), "apex", &["example.test"]);
    let config = write_config(dir.path(), &cfg);

    let run = failed_renew(&config);
    let failed = failed_line(&run, "apex");
    assert!(
        failed.contains(&format!("{} answered NXDOMAIN", lagging.addr)),
        "the timeout must say which server answered what: {}",
        run
    );
    assert!(
        failed.contains("propagation.timeout") && !failed.contains("apex: FAILED: apex:"),
        "the message must say what to do, naming the certificate once: {}",
        run
    );
    assert_txt_added(
        &written,
        "the record was never written, so cleanup was not tested",
    );
    assert_no_challenge_txt(written.addr, "the updated bind9").await;
    assert_nothing_installed(dir.path(), "apex");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cname_delegated_challenge_is_written_in_the_target_zone() {
    if !have(&[]) {
        return;
    }
    // The harness zone has `_acme-challenge.cname.example.test. CNAME delegated.acme.test.`: the
    // record must be written at the CNAME target (zone acme.test) and pebble must follow it, which
    // it does through a recursive server (as a real CA's resolver does).
    let Some(server) = Bind::start_recursive().await else {
        return;
    };
    let (dir, _pebble, mut cfg) = setup(server.addr).await;
    cfg += &rfc2136_solver(dir.path(), &server, true, "60s", server.addr);
    cfg += &certificate(
        dir.path(),
        "cname",
        &["cname.example.test", "*.cname.example.test"],
    );
    let config = write_config(dir.path(), &cfg);

    let run = renew(&config);
    assert!(run.ok(), "{}\n{}", run, server.log());
    assert_eq!(
        installed_sans(dir.path(), "cname"),
        vec!["*.cname.example.test", "cname.example.test"]
    );
    let log = server.log();
    assert!(
        log.contains("updating zone 'acme.test/IN': adding an RR at 'delegated.acme.test' TXT"),
        "the record was not written at the CNAME target:\n{log}"
    );
    assert_eq!(
        txt_values(server.addr, "delegated.acme.test.").await,
        None,
        "the delegated record was left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn powerdns_two_certificates_sharing_a_challenge_name_in_one_pass() {
    if !have(&[]) {
        return;
    }
    // `apex` and `wild` are separate certificates issued concurrently in one pass; both write TXT
    // values at `_acme-challenge.example.test`, which PowerDNS stores as one rrset.
    let Some(server) = Pdns::start().await else {
        return;
    };
    let (dir, _pebble, mut cfg) = setup(server.addr).await;
    cfg += ZONE_SOLVER;
    cfg += &powerdns(dir.path(), &server);
    cfg += &propagation(true, "60s", &[server.addr]);
    cfg += &certificate(dir.path(), "apex", &["example.test"]);
    cfg += &certificate(dir.path(), "wild", &["*.example.test"]);
    let config = write_config(dir.path(), &cfg);

    let run = renew(&config);
    assert!(run.ok(), "{}", run);
    assert_eq!(installed_sans(dir.path(), "apex"), vec!["example.test"]);
    assert_eq!(installed_sans(dir.path(), "wild"), vec!["*.example.test"]);
    assert_no_challenge_txt(server.addr, "pdns_server").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tsig_secret_is_reported_as_rejected_key() {
    let Some((server, dir, _pebble, mut cfg)) = bind_setup(&[]).await else {
        return;
    };
    cfg += &rfc2136_solver(dir.path(), &server, true, "30s", server.addr);
    cfg += &certificate(dir.path(), "wild", &["example.test", "*.example.test"]);
    let config = write_config(dir.path(), &cfg);
    // Another valid base64 secret of the same length: bind answers BADSIG.
    std::fs::write(
        dir.path().join("tsig.key"),
        "AAAAEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=\n",
    )
    .unwrap();

    let run = failed_renew(&config);
    let failed = failed_line(&run, "wild");
    assert!(
        failed.contains("TSIG key rejected") && failed.contains("check tsig_key/tsig_secret"),
        "a wrong secret must be named as such: {}",
        run
    );
    assert_no_challenge_txt(server.addr, "bind9").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_renew_removes_its_txt_records() {
    interrupted_run_removes_its_txt_records("renew", nix::sys::signal::Signal::SIGINT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_stopped_mid_order_removes_its_txt_records() {
    // `run` waits 30 s for in-flight orders, then interrupts them; cleanup must still run.
    interrupted_run_removes_its_txt_records("run", nix::sys::signal::Signal::SIGTERM).await;
}

/// Start `certkeeper SUBCOMMAND`, send `sig` while the propagation check waits, and check that the
/// TXT records are gone afterwards and that a fixed config then issues.
async fn interrupted_run_removes_its_txt_records(subcommand: &str, sig: nix::sys::signal::Signal) {
    if !have(&[]) {
        return;
    }
    // The propagation check waits (up to 10 min) for a server that never gets the record; Ctrl-C
    // (SIGINT) during that wait must still delete the records already written.
    let Some((written, lagging)) = two_binds().await else {
        return;
    };
    let (dir, _pebble, mut cfg) = setup(written.addr).await;
    cfg += &rfc2136_solver(dir.path(), &written, true, "10m", lagging.addr);
    cfg += &certificate(dir.path(), "wild", &["example.test", "*.example.test"]);
    let config = write_config(dir.path(), &cfg);

    let out_path = dir.path().join("interrupted.out");
    let mut child = KillOnDrop(
        std_command_at(&config, &[subcommand])
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(dir.path().join("interrupted.err")).unwrap())
            .spawn()
            .expect("spawn certkeeper"),
    );
    let pid = nix::unistd::Pid::from_raw(child.0.id() as i32);

    // Both values (apex and wildcard) are written, then the check waits.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = txt_values(written.addr, "_acme-challenge.example.test.")
            .await
            .map_or(0, |v| v.len());
        if n == 2 {
            break;
        }
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "certkeeper exited early: {}",
            std::fs::read_to_string(dir.path().join("interrupted.err")).unwrap_or_default()
        );
        assert!(
            Instant::now() < deadline,
            "the records were never written: {}",
            written.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    nix::sys::signal::kill(pid, sig).expect("signal certkeeper");
    let deadline = Instant::now() + Duration::from_secs(150);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "certkeeper did not stop after SIGINT"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(dir.path().join("interrupted.err")).unwrap_or_default();
    if subcommand == "renew" {
        assert!(!status.success(), "an interrupted renew must not exit 0");
        assert!(
            stdout.contains("wild: FAILED") && stdout.contains("interrupted"),
            "the report must say the order was interrupted:\n{stdout}\n{stderr}"
        );
    } else {
        assert!(
            status.success(),
            "the daemon stops cleanly on SIGTERM:\n{stderr}"
        );
        assert!(
            stderr.contains("interrupted"),
            "the daemon must log that it interrupted the order:\n{stderr}"
        );
    }
    assert_no_challenge_txt(written.addr, "the updated bind9").await;

    // Fixed config (check the server the provider updates): the next plain `renew` issues.
    let fixed = cfg.replace(&lagging.addr.to_string(), &written.addr.to_string());
    assert_ne!(fixed, cfg);
    let config = write_config(dir.path(), &fixed);
    let run = renew(&config);
    assert!(run.ok() && run.stdout.contains("wild: issued"), "{}", run);
    assert_wild_installed(dir.path());
    assert_no_challenge_txt(written.addr, "the updated bind9").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_exec_hook_is_reported_and_its_record_still_removed() {
    // The hook writes the record, then fails (as an API that applied a change but timed out would):
    // the user sees the hook's words, and cleanup still runs the hook to delete the record.
    let Some((server, dir, _pebble, mut cfg)) = bind_setup(&["/usr/bin/nsupdate"]).await else {
        return;
    };
    let script = dir.path().join("dns-hook.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nset -e\n\
             case \"$1\" in present) op=add ;; cleanup) op=delete ;; *) exit 2 ;; esac\n\
             printf 'server {ip} {port}\\nupdate %s %s 60 TXT \"%s\"\\nsend\\n' \"$op\" \"$2\" \"$3\" \\\n\
             | nsupdate -y hmac-sha256:{key}:{secret}\n\
             if [ \"$1\" = present ]; then echo 'provider says: quota exceeded' >&2; exit 1; fi\n",
            ip = server.addr.ip(),
            port = server.addr.port(),
            key = bind::KEY_NAME,
            secret = bind::SECRET,
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    cfg += ZONE_SOLVER;
    cfg += &exec_provider(&script);
    cfg += &propagation(true, "30s", &[server.addr]);
    cfg += &certificate(dir.path(), "wild", &["example.test", "*.example.test"]);
    let config = write_config(dir.path(), &cfg);

    let run = renew(&config);
    assert!(!run.ok(), "the order must fail: {}", run);
    let failed = failed_line(&run, "wild");
    assert!(
        failed.contains("provider says: quota exceeded"),
        "the hook's own message must reach the user: {}",
        run
    );
    assert_txt_added(
        &server,
        "the hook never wrote the record, so cleanup was not tested",
    );
    assert_no_challenge_txt(server.addr, "bind9").await;
}

/// The TSIG secret as a systemd credential (`tsig_secret_credential = "tsig"`, as
/// `LoadCredential=tsig:...` gives it): without `CREDENTIALS_DIRECTORY` the config is refused with
/// file:line:key; with it, certkeeper reads `$CREDENTIALS_DIRECTORY/tsig` and issues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc2136_tsig_secret_from_a_systemd_credential() {
    let Some((server, dir, _pebble, mut cfg)) = bind_setup(&[]).await else {
        return;
    };
    let solver = rfc2136_solver(dir.path(), &server, true, "60s", server.addr);
    let file_key = format!(
        "tsig_secret_file = \"{}\"",
        dir.path().join("tsig.key").display()
    );
    assert!(solver.contains(&file_key), "{solver}");
    std::fs::remove_file(dir.path().join("tsig.key")).unwrap();
    cfg += &solver.replace(&file_key, "tsig_secret_credential = \"tsig\"");
    cfg += &certificate(dir.path(), "cred", &["example.test"]);
    let config = write_config(dir.path(), &cfg);

    let run = |env: Option<&Path>, args: &[&str]| {
        let mut cmd = std_command_at(&config, args);
        cmd.env_remove("CREDENTIALS_DIRECTORY");
        if let Some(d) = env {
            cmd.env("CREDENTIALS_DIRECTORY", d);
        }
        run_command_sync(cmd, args, Duration::from_secs(300))
    };
    let refused = run(None, &["check"]);
    assert!(!refused.ok(), "{refused}");
    let line = cfg
        .lines()
        .position(|l| l.contains("tsig_secret_credential"))
        .unwrap()
        + 1;
    assert!(
        refused.stderr.contains(&format!("certkeeper.toml:{line}:"))
            && refused
                .stderr
                .contains("dns01.tsig_secret_credential: credential \"tsig\": CREDENTIALS_DIRECTORY is not set"),
        "{refused}"
    );

    // What systemd does for LoadCredential=tsig:/etc/certkeeper/tsig.key: a private read-only dir.
    let creds = dir.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    let missing = run(Some(&creds), &["check"]);
    assert!(
        !missing.ok() && missing.stderr.contains("LoadCredential=tsig:"),
        "{missing}"
    );
    std::fs::write(creds.join("tsig"), format!("{}\n", bind::SECRET)).unwrap();
    std::fs::set_permissions(creds.join("tsig"), std::fs::Permissions::from_mode(0o400)).unwrap();
    let issued = run(Some(&creds), &["renew"]);
    assert!(issued.ok(), "{issued}\n{}", server.log());
    assert!(issued.stdout.contains("cred: issued by pebble"), "{issued}");
    assert_txt_added(&server, "named never saw the signed update");
    assert_no_challenge_txt(server.addr, "bind9").await;
}
