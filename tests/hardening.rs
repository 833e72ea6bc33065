//! Operator mistakes and planted files, against a real pebble through the binary: root running the
//! CLI on the service user's state directory, a key planted behind `.live` with `key_reuse`, and an
//! output directory others can write.

mod support;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::PebbleOpts;
use support::fault_env::{Env, cert, head, pebble_issuer};
use support::pair::check_pair;
use support::sysuser::SystemUser;

const LIMIT: Duration = Duration::from_secs(240);

fn assert_ok(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn all(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every path under `dir` (including it).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_on_the_service_users_state_dir_acts_as_that_user() {
    let Some(user) = SystemUser::create() else {
        return;
    };
    let Some(env) = Env::start(PebbleOpts::default()).await else {
        return;
    };
    let uid = user.uid();
    // As systemd-tmpfiles would leave it: the state directory belongs to the service user, the
    // output parent too; the work directory is traversable.
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for d in [env.state_dir(), env.dir.path().join("tls")] {
        std::fs::create_dir_all(&d).unwrap();
        std::os::unix::fs::chown(&d, Some(uid), None).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    std::fs::set_permissions(
        env.dir.path().join("tls"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let names = ["svc.example.com"];
    let text = head(&env, true, "", None)
        + &pebble_issuer(&env, "http01 = { self_check = false }")
        + &cert(&env, "www", &["ca"], &names, "");
    std::fs::write(&env.config, text).unwrap();
    std::fs::set_permissions(&env.config, std::fs::Permissions::from_mode(0o644)).unwrap();

    // `check` as root creates nothing.
    let out = env.run(&["check", "--offline"], LIMIT);
    assert_eq!(
        walk(&env.state_dir()),
        vec![env.state_dir()],
        "check created files:\n{}",
        all(&out)
    );

    // `renew` as root: everything it creates belongs to the service user.
    assert_ok(&env.run(&["renew"], LIMIT), "renew as root");
    let root = env.root().await;
    let first = check_pair(&env.out_dir("www"), &root, &names).expect("pair after renew as root");
    for p in walk(&env.state_dir())
        .into_iter()
        .chain(walk(&env.out_dir("www")))
    {
        let owner = p.symlink_metadata().unwrap().uid();
        assert_eq!(
            owner,
            uid,
            "{} belongs to uid {owner}, not the service user",
            p.display()
        );
    }

    // The service user itself (as the daemon runs) can go on from there.
    let out = Command::new("runuser")
        .args(["-u", &user.name, "--"])
        .arg(support::fault_env::BIN)
        .arg("--config")
        .arg(&env.config)
        .args(["renew", "--force"])
        .env_remove("CERTKEEPER_LOG")
        .output()
        .expect("runuser");
    assert_ok(&out, "renew --force as the service user");
    let second =
        check_pair(&env.out_dir("www"), &root, &names).expect("pair after the user's renew");
    assert_ne!(first.serial, second.serial);

    // The daemon is not started as root on the user's state directory: it says what to run.
    let out = env.run(&["run"], LIMIT);
    assert!(!out.status.success());
    assert!(
        all(&out).contains(&format!("runuser -u {}", user.name)),
        "{}",
        all(&out)
    );
}

/// The public key of the PEM private key in `path`, DER.
fn public_der(path: &Path) -> Vec<u8> {
    let pem = std::fs::read(path).unwrap();
    openssl::pkey::PKey::private_key_from_pem(&pem)
        .unwrap()
        .public_key_to_der()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_reuse_never_reuses_a_planted_key() {
    let Some(env) = Env::start(PebbleOpts::default()).await else {
        return;
    };
    let names = ["reuse.example.com"];
    let text = head(&env, true, "", None)
        + &pebble_issuer(&env, "http01 = { self_check = false }")
        + &cert(&env, "www", &["ca"], &names, "key_reuse = true\n")
        + &cert(&env, "other", &["ca"], &names, "");
    std::fs::write(&env.config, text).unwrap();
    assert_ok(&env.run(&["renew"], LIMIT), "first issuance");
    let root = env.root().await;
    let www = env.out_dir("www");
    check_pair(&www, &root, &names).unwrap();
    let own = public_der(&www.join("privkey.pem"));

    // key_reuse keeps certkeeper's own key.
    assert_ok(
        &env.run(&["renew", "--force", "www"], LIMIT),
        "renewal with key_reuse",
    );
    assert_eq!(
        public_der(&www.join("privkey.pem")),
        own,
        "key_reuse reuses certkeeper's own key"
    );

    // Someone with write access puts another consistent pair (their key) behind `.live`.
    let other = env.out_dir("other");
    let live = std::fs::canonicalize(www.join(".live")).unwrap();
    for f in ["privkey.pem", "fullchain.pem", "chain.pem", "cert.pem"] {
        std::fs::copy(other.join(f), live.join(f)).unwrap();
    }
    let planted = public_der(&www.join("privkey.pem"));
    assert_ne!(planted, own);
    check_pair(&www, &root, &names).expect("the planted pair is consistent");

    assert_ok(
        &env.run(&["renew", "--force", "www"], LIMIT),
        "renewal after the plant",
    );
    check_pair(&www, &root, &names).unwrap();
    let after = public_der(&www.join("privkey.pem"));
    assert_ne!(after, planted, "the planted key was reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_dir_others_can_write_is_refused() {
    let Some(env) = Env::start(PebbleOpts::default()).await else {
        return;
    };
    let names = ["shared.example.com"];
    let out_dir = env.out_dir("www");
    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::set_permissions(&out_dir, std::fs::Permissions::from_mode(0o775)).unwrap();
    let config = |allow: bool| {
        head(&env, true, "", None)
            + &pebble_issuer(&env, "http01 = { self_check = false }")
            + &format!(
                "[certificate.www]\nissuer = \"ca\"\ndomains = [\"{}\"]\n\
                 output = {{ dir = \"{}\", allow_shared_dir = {allow} }}\n",
                names[0],
                out_dir.display()
            )
    };
    std::fs::write(&env.config, config(false)).unwrap();
    let out = env.run(&["renew"], LIMIT);
    assert!(!out.status.success(), "{}", all(&out));
    assert!(
        all(&out).contains("chmod go-w"),
        "the error says what to run:\n{}",
        all(&out)
    );
    assert_eq!(
        std::fs::read_dir(&out_dir).unwrap().count(),
        0,
        "nothing written"
    );

    std::fs::write(&env.config, config(true)).unwrap();
    assert_ok(&env.run(&["renew"], LIMIT), "renew with allow_shared_dir");
    check_pair(&out_dir, &env.root().await, &names).unwrap();
}
