//! `certkeeper migrate lego` against a directory written by Debian's real `lego`: lego registers an
//! account and issues a certificate from pebble over HTTP-01; the migration adopts both (lego's
//! files become symlinks into certkeeper's output dir); `renew` issues nothing; `renew --force`
//! renews with lego's account (same account URL) and the new pair, seen through lego's paths,
//! verifies against pebble's root; a leftover `lego renew` can no longer run.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use openssl::x509::X509;

use support::certkeeper::{CliOutput, TestConfig, run_command_sync, toml_str};
use support::pair::check_pair;
use support::process::run_bounded;
use support::{Pebble, PebbleOpts, free_port};

const LEGO_BIN: &str = "/usr/bin/lego";
const NAMES: [&str; 2] = ["lego.example.com", "www.lego.example.com"];
const LIMIT: Duration = Duration::from_secs(60);

/// Debian's lego with pebble's TLS CA trusted and nothing inherited from the runner's environment.
fn lego(pebble: &Pebble, ca: &Path, dir: &Path, http_port: u16, args: &[&str]) -> Command {
    let mut cmd = Command::new(LEGO_BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("LEGO_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("LEGO_CA_CERTIFICATES", ca)
        .arg("--server")
        .arg(pebble.directory_url())
        .arg("--path")
        .arg(dir)
        .args(["--accept-tos", "--email", "admin@example.com", "--http"])
        .arg("--http.port")
        .arg(format!("127.0.0.1:{http_port}"));
    for n in NAMES {
        cmd.args(["--domains", n]);
    }
    cmd.args(args);
    cmd
}

fn certkeeper(cfg: &TestConfig, ca: &Path, args: &[&str]) -> CliOutput {
    let mut cmd = cfg.std_command(args);
    cmd.env("LEGO_CA_CERTIFICATES", ca);
    run_command_sync(cmd, args, LIMIT)
}

fn ok(out: CliOutput) -> String {
    assert!(
        out.status.success(),
        "certkeeper {:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
        out.args,
        out.status,
        out.stdout,
        out.stderr
    );
    out.stdout
}

fn serial(pem_file: &Path) -> String {
    let pem = std::fs::read(pem_file).unwrap_or_else(|e| panic!("{}: {e}", pem_file.display()));
    let leaf = X509::stack_from_pem(&pem).unwrap().remove(0);
    leaf.serial_number()
        .to_bn()
        .unwrap()
        .to_hex_str()
        .unwrap()
        .to_string()
}

/// The account URL certkeeper holds for the only account in its state.
fn certkeeper_account_url(state: &Path) -> String {
    let dirs: Vec<PathBuf> = std::fs::read_dir(state.join("accounts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(dirs.len(), 1, "one account: {dirs:?}");
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dirs[0].join("account.json")).unwrap()).unwrap();
    record["url"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lego_dir_is_adopted_and_renewed_with_legos_account() {
    if !support::pebble::available() || !Path::new(LEGO_BIN).exists() {
        panic!("pebble and lego must be installed (scripts/deps)");
    }
    let http_port = free_port();
    let pebble = Pebble::start(PebbleOpts {
        http_port,
        ..Default::default()
    })
    .await;
    let root = X509::from_pem(pebble.root_pem().await.as_bytes()).unwrap();
    let cfg = TestConfig::new().http01_listen(http_port);
    let ca = cfg.dir().join("pebble-tls-ca.pem");
    std::fs::write(&ca, pebble.ca_pem()).unwrap();
    let lego_dir = cfg.dir().join("lego");

    // lego registers and issues.
    let out = run_bounded(lego(&pebble, &ca, &lego_dir, http_port, &["run"]), LIMIT);
    assert!(
        out.status.success(),
        "lego run: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let certs = lego_dir.join("certificates");
    let crt = certs.join("lego.example.com.crt");
    let key = certs.join("lego.example.com.key");
    let lego_serial = serial(&crt);
    let lego_key = std::fs::read(&key).unwrap();
    let host = pebble.directory_url()["https://".len()..]
        .split('/')
        .next()
        .unwrap()
        .replace(':', "_");
    let acct_json = lego_dir.join(format!("accounts/{host}/admin@example.com/account.json"));
    let acct: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&acct_json).unwrap()).unwrap();
    let lego_url = acct["registration"]["uri"].as_str().unwrap().to_string();

    // certkeeper's main config includes conf.d; the migration fills it.
    let mut cfg = cfg;
    cfg.top.push("include = [\"conf.d/*.toml\"]".into());
    let cfg = cfg.write();
    let dir_arg = lego_dir.display().to_string();
    let server = pebble.directory_url();
    let migrate = |extra: &[&str]| {
        let mut args = vec![
            "migrate", "lego", "--path", &dir_arg, "--server", &server, "--http",
        ];
        args.extend_from_slice(extra);
        certkeeper(&cfg, &ca, &args)
    };

    let dry = ok(migrate(&["--dry-run"]));
    assert!(
        dry.contains("[certificate.\"lego.example.com\"]") && dry.contains(&lego_url),
        "{dry}"
    );
    assert!(
        dry.contains(&format!(
            "ca_bundle = {}",
            toml_str(&ca.display().to_string())
        )),
        "LEGO_CA_CERTIFICATES becomes the issuer's ca_bundle: {dry}"
    );
    assert!(
        !cfg.dir().join("conf.d").exists(),
        "--dry-run writes nothing"
    );
    assert!(!std::fs::symlink_metadata(&crt).unwrap().is_symlink());

    let report = ok(migrate(&[]));
    assert!(report.contains("adopted the account lego's"), "{report}");
    assert!(
        report.contains(&format!(
            "lego.example.com: imported serial {}",
            lego_serial.to_lowercase()
        )) || report.contains(&format!("lego.example.com: imported serial {lego_serial}")),
        "{report}"
    );
    assert!(report.contains("undo: "), "{report}");
    let out_dir = lego_dir.join("certkeeper/lego.example.com");
    for (f, target) in [
        ("lego.example.com.crt", "fullchain.pem"),
        ("lego.example.com.key", "privkey.pem"),
        ("lego.example.com.issuer.crt", "chain.pem"),
    ] {
        assert_eq!(
            std::fs::read_link(certs.join(f)).unwrap(),
            Path::new("../certkeeper/lego.example.com").join(target),
            "{f}"
        );
    }
    assert_eq!(
        serial(&crt),
        lego_serial,
        "the same pair, through lego's path"
    );
    assert_eq!(std::fs::read(&key).unwrap(), lego_key);
    check_pair(&out_dir, &root, &NAMES).unwrap();
    assert_eq!(certkeeper_account_url(&cfg.state_dir()), lego_url);
    assert!(!acct_json.exists() && acct_json.with_extension("json.migrated").exists());

    // The test names resolve only in pebble's DNS: no self-check here (the one edit a user of a
    // real domain does not make).
    let issuer_file = cfg.dir().join(format!(
        "conf.d/lego-issuer-{}.toml",
        host.replace('_', "-")
    ));
    let text = std::fs::read_to_string(&issuer_file).unwrap();
    assert!(text.contains("http01 = {}"), "{text}");
    std::fs::write(
        &issuer_file,
        text.replace("http01 = {}", "http01 = { self_check = false }"),
    )
    .unwrap();

    // Nothing is due: nothing is issued.
    let renew = ok(certkeeper(&cfg, &ca, &["renew"]));
    assert!(renew.contains("lego.example.com: not due"), "{renew}");
    assert_eq!(serial(&crt), lego_serial);

    // --force renews with lego's account; lego's paths show the new pair.
    let forced = certkeeper(&cfg, &ca, &["renew", "--force"]);
    assert!(
        forced.stderr.contains(&format!("account={lego_url}")),
        "the order is placed with lego's account: {}",
        forced.stderr
    );
    let forced = ok(forced);
    assert!(forced.contains("lego.example.com: issued by"), "{forced}");
    let pair = check_pair(&out_dir, &root, &NAMES).unwrap();
    assert_ne!(pair.serial.to_lowercase(), lego_serial.to_lowercase());
    assert_eq!(serial(&crt), serial(&out_dir.join("cert.pem")));
    assert_eq!(std::fs::read(&key).unwrap(), pair.bytes[1]);
    assert_eq!(
        certkeeper_account_url(&cfg.state_dir()),
        lego_url,
        "no new account"
    );

    // A leftover `lego renew` stops before it writes anything.
    let before = std::fs::read(&crt).unwrap();
    let out = run_bounded(
        lego(
            &pebble,
            &ca,
            &lego_dir,
            http_port,
            &["renew", "--days", "999"],
        ),
        LIMIT,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "lego renew must refuse to run: {stderr}"
    );
    assert!(stderr.contains("not registered"), "{stderr}");
    assert_eq!(std::fs::read(&crt).unwrap(), before);
    assert!(std::fs::symlink_metadata(&crt).unwrap().is_symlink());

    // A second migration finds nothing left to do.
    let again = migrate(&[]);
    assert!(!again.status.success());
    assert!(
        again.stderr.contains("nothing to migrate"),
        "{}",
        again.stderr
    );
}
