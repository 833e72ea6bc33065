//! Faults that must lose nothing, against a real pebble, driven through the `certkeeper` binary:
//! nonce rejection, a CA that is unreachable or answers 500s, kill -9 during issuance, a hostile CA,
//! a full disk or read-only output directory, and the security properties of a full run (file
//! modes, no secrets in debug logs).

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::Rng;
use support::PebbleOpts;
use support::fault_env::{CertSpec, Env, KillOnDrop, check_pair, failures, run_bounded, wait_for};
use support::proxy::{Flaw, Mode, Proxy, forged_chain};

const RUN_LIMIT: Duration = Duration::from_secs(240);

fn www() -> CertSpec<'static> {
    CertSpec {
        name: "www",
        domains: &["www.example.com", "example.com"],
        key: "ecdsa-p256",
    }
}

fn assert_ok(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonce_rejection_at_half_every_issuance_succeeds() {
    let Some(env) = Env::start(PebbleOpts {
        nonce_reject: Some(50),
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let certs = [
        www(),
        CertSpec {
            name: "api",
            domains: &["api.example.com"],
            key: "rsa-2048",
        },
        CertSpec {
            name: "mail",
            domains: &["mail.example.com", "smtp.example.com", "imap.example.com"],
            key: "ecdsa-p384",
        },
    ];
    env.write_pebble_config(&certs);
    let root = env.root().await;
    let mut serials = Vec::new();
    let mut resent = 0;
    for round in 0..2 {
        let args: &[&str] = if round == 0 {
            &["renew"]
        } else {
            &["renew", "--force"]
        };
        let mut cmd = env.cmd(args);
        cmd.env("CERTKEEPER_LOG", "info,certkeeper=debug");
        let out = run_bounded(cmd, RUN_LIMIT);
        assert_ok(&out, &format!("renew round {round} at 50% nonce rejection"));
        resent += stderr(&out)
            .matches("badNonce, resending with a fresh nonce")
            .count();
        for c in &certs {
            let pair = check_pair(&env.out_dir(c.name), &root, c.domains)
                .unwrap_or_else(|e| panic!("{} after round {round}: {e}", c.name));
            serials.push(pair.serial);
        }
    }
    serials.sort();
    serials.dedup();
    assert_eq!(serials.len(), 6, "every round issued new certificates");
    // pebble really rejected nonces, and certkeeper resent those requests.
    assert!(
        resent > 0,
        "no badNonce was seen; was PEBBLE_WFE_NONCEREJECT applied?"
    );
    eprintln!("{resent} requests resent after badNonce");
}

/// SIGKILL the child (our own, by PID) and reap it; true when it was still running.
fn kill9(child: &mut std::process::Child) -> bool {
    let running = matches!(child.try_wait(), Ok(None));
    let _ = child.kill();
    let _ = child.wait();
    running
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_issuance_never_tears_the_pair() {
    let iterations: usize = std::env::var("FAULTS_KILL_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let Some(env) = Env::start(PebbleOpts::default()).await else {
        return;
    };
    env.write_pebble_config(&[
        www(),
        CertSpec {
            name: "first",
            domains: &["first.example.com"],
            key: "ecdsa-p256",
        },
    ]);
    let root = env.root().await;
    let dir = env.out_dir("www");
    let names = www().domains;

    // A first pair, and how long one forced renewal takes here (to spread the kills over it).
    assert_ok(&env.run(&["renew", "www"], RUN_LIMIT), "first issuance");
    let first = check_pair(&dir, &root, names).expect("first pair");
    let t0 = Instant::now();
    assert_ok(
        &env.run(&["renew", "--force", "www"], RUN_LIMIT),
        "timed renewal",
    );
    let typical = t0.elapsed();
    eprintln!("one forced renewal takes {typical:?}; killing at random points in it");

    let mut serials = vec![first.serial.clone()];
    let mut mid_run_kills = 0;
    let mut rng = rand::rng();
    for i in 0..iterations {
        let mut child = env
            .cmd(&["renew", "--force", "www"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn certkeeper renew");
        // Spread over the whole run, and every other kill near its end (finalize, download, install).
        let t = (typical.as_millis() as u64).max(50);
        let ms = if i % 2 == 0 {
            rng.random_range(0..=t * 12 / 10)
        } else {
            rng.random_range(t * 7 / 10..=t * 11 / 10)
        };
        tokio::time::sleep(Duration::from_millis(ms)).await;
        if kill9(&mut child) {
            mid_run_kills += 1;
        }
        let pair = check_pair(&dir, &root, names).unwrap_or_else(|e| {
            panic!("iteration {i}: killed after {ms} ms, the pair is torn: {e}")
        });
        if serials.last() != Some(&pair.serial) {
            serials.push(pair.serial);
        }
        // The state file is never torn either.
        let state_file = env.state_dir().join("certs/www.json");
        if state_file.exists() {
            let text = std::fs::read_to_string(&state_file).unwrap();
            serde_json::from_str::<serde_json::Value>(&text).unwrap_or_else(|e| {
                panic!("iteration {i}: state file torn after kill -9: {e}\n{text}")
            });
        }
    }
    eprintln!(
        "{iterations} kills, {mid_run_kills} while certkeeper was running; {} distinct serials installed",
        serials.len()
    );
    assert!(
        mid_run_kills > 0,
        "no kill landed while certkeeper was running"
    );

    // The very first issuance killed: afterwards either nothing is installed or a complete pair.
    let first_dir = env.out_dir("first");
    let first_names = ["first.example.com"];
    for i in 0..(iterations / 2).max(5) {
        let _ = std::fs::remove_dir_all(&first_dir);
        let mut child = env
            .cmd(&["renew", "first"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn certkeeper renew first");
        let t = (typical.as_millis() as u64).max(50);
        let ms = rng.random_range(0..=t * 12 / 10);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        kill9(&mut child);
        let any_top = ["fullchain.pem", "privkey.pem", "chain.pem", "cert.pem"]
            .iter()
            .any(|f| std::fs::symlink_metadata(first_dir.join(f)).is_ok());
        if any_top {
            check_pair(&first_dir, &root, &first_names).unwrap_or_else(|e| {
                panic!("first issuance {i}: killed after {ms} ms, partial install: {e}")
            });
        }
    }
    assert_ok(
        &env.run(&["renew", "first"], RUN_LIMIT),
        "first issuance after the kills",
    );
    check_pair(&first_dir, &root, &first_names).expect("first pair after the kills");

    // The next run finishes the work: a new, complete pair and nothing left pending.
    let out = env.run(&["renew", "--force", "www"], RUN_LIMIT);
    assert_ok(&out, "renewal after the kills");
    let last = check_pair(&dir, &root, names).expect("pair after the kills");
    assert!(
        !serials.contains(&last.serial),
        "the final run installed a new certificate"
    );
    let state = env.cert_state("www").expect("state file");
    assert!(
        state["order_url"].is_null(),
        "no order left pending: {state}"
    );
    assert!(
        !env.state_dir().join("certs/www.key.pem").exists(),
        "the pending key is removed once installed"
    );
    // No staging directories or temp files left in the output directory after a clean run.
    for e in std::fs::read_dir(&dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !name.starts_with(".staging-"),
            "staging directory {name} left behind after a clean run"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_daemon_then_the_next_start_finishes() {
    let Some(env) = Env::start(PebbleOpts::default()).await else {
        return;
    };
    let certs = [
        www(),
        CertSpec {
            name: "api",
            domains: &["api.example.com"],
            key: "rsa-2048",
        },
    ];
    env.write_pebble_config(&certs);
    let root = env.root().await;
    let mut rng = rand::rng();
    for i in 0..6 {
        let mut daemon = env
            .cmd(&["run"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn certkeeper run");
        let ms = rng.random_range(0..=2500);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        kill9(&mut daemon);
        for c in &certs {
            let dir = env.out_dir(c.name);
            if std::fs::symlink_metadata(dir.join("fullchain.pem")).is_ok() {
                check_pair(&dir, &root, c.domains).unwrap_or_else(|e| {
                    panic!(
                        "daemon killed after {ms} ms (round {i}): {} torn: {e}",
                        c.name
                    )
                });
            }
        }
    }
    // The next start finishes whatever is missing.
    let log_path = env.dir.path().join("daemon.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let daemon = KillOnDrop(
        env.cmd(&["run"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn certkeeper run"),
    );
    for c in &certs {
        let dir = env.out_dir(c.name);
        wait_for(
            &format!("{} installed by the restarted daemon", c.name),
            Duration::from_secs(180),
            || check_pair(&dir, &root, c.domains).ok(),
        )
        .await;
    }
    let state = wait_for(
        "the order bookkeeping to finish",
        Duration::from_secs(30),
        || env.cert_state("api").filter(|s| s["order_url"].is_null()),
    )
    .await;
    assert_eq!(failures(&state), 0, "{state}");
    drop(daemon);
}

/// A backoff of 1 s, then 2 s, so a test sees several retries within seconds.
const FAST_RETRIES: &str = "[daemon]\nretry_first = \"1s\"\nretry_max = \"2s\"\n";

/// Certificate `www` for www.example.com and new.example.com.
fn www_and_new() -> CertSpec<'static> {
    CertSpec {
        name: "www",
        domains: &["www.example.com", "new.example.com"],
        key: "ecdsa-p256",
    }
}

/// `certkeeper run` on the env's config, its output in `daemon.log` (returned), killed on drop.
fn daemon_logging(env: &Env) -> (KillOnDrop, PathBuf) {
    let log_path = env.dir.path().join("daemon.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let daemon = KillOnDrop(
        env.cmd(&["run"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn certkeeper run"),
    );
    (daemon, log_path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_unreachable_then_500_daemon_backs_off_and_recovers() {
    let Some(env) = Env::start(PebbleOpts::default()).await else {
        return;
    };
    let proxy = Proxy::for_pebble(&env.pebble).await;
    let one = [CertSpec {
        name: "www",
        domains: &["www.example.com"],
        key: "ecdsa-p256",
    }];
    env.write_config(&proxy.directory_url(), &proxy.ca_file, "", &one, "");
    let root = env.root().await;
    let dir = env.out_dir("www");
    assert_ok(
        &env.run(&["renew"], RUN_LIMIT),
        "first issuance through the proxy",
    );
    let before = check_pair(&dir, &root, &["www.example.com"]).expect("first pair");

    // The CA goes away, and the config now asks for one more name: due at once.
    proxy.set(Mode::Drop);
    let two = [www_and_new()];
    // A short backoff through the config, so the test sees several retries within seconds.
    env.write_config(
        &proxy.directory_url(),
        &proxy.ca_file,
        "",
        &two,
        FAST_RETRIES,
    );
    let (mut daemon, log_path) = daemon_logging(&env);
    let dump = || std::fs::read_to_string(&log_path).unwrap_or_default();

    wait_for(
        "two failed attempts while the CA drops connections",
        Duration::from_secs(120),
        || env.cert_state("www").filter(|s| failures(s) >= 2),
    )
    .await;
    assert!(
        daemon.0.try_wait().unwrap().is_none(),
        "daemon exited:\n{}",
        dump()
    );
    assert!(proxy.faulted() > 0, "the daemon did try the CA");
    assert_eq!(
        check_pair(&dir, &root, &["www.example.com"]).expect("pair while CA down"),
        before,
        "files touched while the CA was unreachable"
    );
    let state = env.cert_state("www").unwrap();
    assert!(
        state["retry"]["next_retry"].is_string(),
        "a retry is scheduled: {state}"
    );
    assert_eq!(state["retry"]["paused"], false, "{state}");
    let msg = state["retry"]["last_error"].as_str().unwrap_or_default();
    assert!(
        msg.contains("cannot reach the CA"),
        "the recorded error says the CA is unreachable: {msg}"
    );

    // Now the CA answers 500s.
    proxy.set(Mode::Status500);
    let f = failures(&env.cert_state("www").unwrap());
    let faulted = proxy.faulted();
    wait_for(
        "two more failed attempts while the CA answers 500",
        Duration::from_secs(120),
        || {
            env.cert_state("www")
                .filter(|s| failures(s) >= f + 2 && proxy.faulted() > faulted)
        },
    )
    .await;
    let state = env.cert_state("www").unwrap();
    assert_eq!(
        state["retry"]["paused"],
        false,
        "a 500 does not pause: {state}\n{}",
        dump()
    );
    let msg = state["retry"]["last_error"].as_str().unwrap_or_default();
    assert!(
        msg.contains("500"),
        "the recorded error shows the CA's HTTP 500: {msg}"
    );
    assert!(
        daemon.0.try_wait().unwrap().is_none(),
        "daemon exited:\n{}",
        dump()
    );
    assert_eq!(
        check_pair(&dir, &root, &["www.example.com"]).expect("pair while CA fails"),
        before,
        "files touched while the CA answered 500"
    );

    // The CA is back: the daemon's next retry succeeds.
    proxy.set(Mode::Pass);
    let after = wait_for(
        "the new pair once the CA is back",
        Duration::from_secs(180),
        || check_pair(&dir, &root, &["www.example.com", "new.example.com"]).ok(),
    )
    .await;
    assert_ne!(after.serial, before.serial);
    let state = wait_for(
        "state to record the success",
        Duration::from_secs(30),
        || env.cert_state("www").filter(|s| failures(s) == 0),
    )
    .await;
    assert!(state["retry"]["last_error"].is_null(), "{state}");
    // A clean stop.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = daemon.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "daemon did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "daemon exit {status}:\n{}", dump());
    let text = dump();
    assert!(
        text.contains("issuance failed"),
        "the daemon logged the failures:\n{text}"
    );
}

/// The state directory taken away under a running daemon (here: replaced by a file, so nothing
/// under it can be made): an attempt fails at its lock and its failure cannot be recorded. The
/// daemon must back off as it does when a failure is recorded, never try again at once (that was a
/// tight loop of attempts and log lines), and recover once the directory can be made again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_directory_taken_away_is_retried_with_backoff_then_recovers() {
    let Some(env) = Env::start(PebbleOpts::default()).await else {
        return;
    };
    let proxy = Proxy::for_pebble(&env.pebble).await;
    let two = [www_and_new()];
    // A failing CA first, so the daemon is in its (recorded) backoff; a short schedule.
    proxy.set(Mode::Drop);
    env.write_config(
        &proxy.directory_url(),
        &proxy.ca_file,
        "",
        &two,
        FAST_RETRIES,
    );
    let (mut daemon, log_path) = daemon_logging(&env);
    let dump = || std::fs::read_to_string(&log_path).unwrap_or_default();
    wait_for(
        "a recorded failure while the CA drops connections",
        Duration::from_secs(60),
        || env.cert_state("www").filter(|s| failures(s) >= 1),
    )
    .await;

    let state = env.state_dir();
    let aside = env.dir.path().join("state.aside");
    std::fs::rename(&state, &aside).unwrap();
    std::fs::write(&state, "not a directory").unwrap();
    let failed = |text: &str| text.matches("issuance failed").count();
    let at_start = failed(&dump());
    tokio::time::sleep(Duration::from_secs(6)).await;
    let text = dump();
    let in_window = failed(&text) - at_start;
    assert!(
        daemon.0.try_wait().unwrap().is_none(),
        "daemon exited:\n{text}"
    );
    // On a 1 s, 2 s, 2 s ... schedule: a handful in 6 s; a tight loop makes thousands.
    assert!(
        (1..=8).contains(&in_window),
        "{in_window} failed attempts in 6 s with the state directory gone:\n{}",
        &text[text.len().saturating_sub(4000)..]
    );
    assert!(
        text.contains("could not be recorded in the state directory"),
        "the log says why it backs off:\n{text}"
    );

    // The directory can be made again and the CA answers: the next retry issues.
    std::fs::remove_file(&state).unwrap();
    proxy.set(Mode::Pass);
    let root = env.root().await;
    wait_for(
        "the pair once the state directory can be made again",
        Duration::from_secs(120),
        || {
            check_pair(
                &env.out_dir("www"),
                &root,
                &["www.example.com", "new.example.com"],
            )
            .ok()
        },
    )
    .await;
    let state_now = wait_for(
        "state to record the success",
        Duration::from_secs(30),
        || {
            env.cert_state("www")
                .filter(|s| s["last_success"].is_string() || failures(s) == 0)
        },
    )
    .await;
    assert_eq!(failures(&state_now), 0, "{state_now}");
    let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o700, "the state directory is made private again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_ca_answers_are_rejected_and_files_untouched() {
    let Some(env) = Env::start(PebbleOpts::default()).await else {
        return;
    };
    let proxy = Proxy::for_pebble(&env.pebble).await;
    env.write_config(&proxy.directory_url(), &proxy.ca_file, "", &[www()], "");
    let root = env.root().await;
    let dir = env.out_dir("www");
    let names = www().domains;
    assert_ok(&env.run(&["renew"], RUN_LIMIT), "first issuance");
    let before = check_pair(&dir, &root, names).expect("first pair");

    let cases: Vec<(&str, Mode, &[&str])> = vec![
        (
            "broken JSON for the new order",
            Mode::BadJson("/order-plz".into()),
            &["JSON"],
        ),
        (
            "a 3 MiB answer to the new order",
            Mode::HugeBody("/order-plz".into()),
            &["larger than"],
        ),
        (
            "broken JSON for an authorization",
            Mode::BadJson("/authZ/".into()),
            &["JSON"],
        ),
        (
            "a 3 MiB certificate download",
            Mode::HugeBody("/certZ/".into()),
            &["larger than"],
        ),
        (
            "broken JSON for the directory",
            Mode::BadJson("/dir".into()),
            &["did not return an ACME directory"],
        ),
        (
            "a certificate for another key",
            Mode::ReplaceCert(forged_chain(names, None)),
            &["private key does not belong", "nothing was written"],
        ),
        (
            // Our own (pending) key, so only the names are wrong.
            "a certificate for other names",
            Mode::ForgeForKey {
                key_file: env.state_dir().join("certs/www.key.pem"),
                names: vec!["evil.example.net".into()],
                flaw: Flaw::None,
            },
            &[
                "do not match the configured domains",
                "evil.example.net",
                "nothing was written",
            ],
        ),
        (
            "an expired certificate for our key and names",
            Mode::ForgeForKey {
                key_file: env.state_dir().join("certs/www.key.pem"),
                names: names.iter().map(|n| n.to_string()).collect(),
                flaw: Flaw::Expired,
            },
            &["nothing was written"],
        ),
        (
            "a chain whose issuer did not sign the leaf",
            Mode::ForgeForKey {
                key_file: env.state_dir().join("certs/www.key.pem"),
                names: names.iter().map(|n| n.to_string()).collect(),
                flaw: Flaw::WrongIssuer,
            },
            &["nothing was written"],
        ),
        (
            "a certificate download that is not PEM",
            Mode::ReplaceCert("<html>gateway error</html>".into()),
            &["certificate chain is empty"],
        ),
    ];
    let mut before = before;
    for (what, mode, expect) in cases {
        proxy.set(mode);
        let mut attempt = 0;
        let (out, err) = loop {
            attempt += 1;
            let faulted = proxy.faulted();
            let out = env.run(&["renew", "--force"], RUN_LIMIT);
            let err = stderr(&out);
            let hit = proxy.faulted() > faulted;
            // pebble reuses valid authorizations (PEBBLE_AUTHZREUSE, 50 % by default): an order can be
            // ready at once, and then no authorization is fetched and an authz fault is never hit.
            // That run legitimately succeeds; try again with the new pair as the baseline.
            if out.status.success() && !hit && attempt < 8 {
                before = check_pair(&dir, &root, names).expect("pair of a fault-free run");
                continue;
            }
            assert!(hit, "{what}: the fault was never hit:\n{err}");
            break (out, err);
        };
        assert!(
            !out.status.success(),
            "{what}: certkeeper accepted it:\n{err}"
        );
        for e in expect {
            assert!(
                err.contains(e),
                "{what}: the error does not say {e:?}:\n{err}"
            );
        }
        assert_eq!(
            check_pair(&dir, &root, names).unwrap_or_else(|e| panic!("{what}: {e}")),
            before,
            "{what}: the installed files changed"
        );
        eprintln!("{what}: rejected as expected");
    }
    // An honest CA again: the next run succeeds.
    proxy.set(Mode::Pass);
    assert_ok(
        &env.run(&["renew", "--force"], RUN_LIMIT),
        "renewal from an honest CA",
    );
    let after = check_pair(&dir, &root, names).expect("pair from the honest CA");
    assert_ne!(after.serial, before.serial);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_that_never_answers_times_out_with_a_clear_error() {
    let Some(env) = Env::start(PebbleOpts::default()).await else {
        return;
    };
    let proxy = Proxy::for_pebble(&env.pebble).await;
    env.write_config(&proxy.directory_url(), &proxy.ca_file, "", &[www()], "");
    let root = env.root().await;
    let dir = env.out_dir("www");
    assert_ok(&env.run(&["renew"], RUN_LIMIT), "first issuance");
    let before = check_pair(&dir, &root, www().domains).expect("first pair");
    proxy.set(Mode::Hang);
    // Bounded by certkeeper's own request timeout (30 s), well inside RUN_LIMIT.
    let out = env.run(&["renew", "--force"], RUN_LIMIT);
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "renew succeeded against a silent CA:\n{err}"
    );
    assert!(proxy.faulted() > 0, "the request reached the proxy");
    assert!(
        err.contains("cannot reach the CA") || err.contains("timed out"),
        "the error says the CA did not answer:\n{err}"
    );
    assert_eq!(
        check_pair(&dir, &root, www().domains).expect("pair after the timeout"),
        before
    );
    let state = env.cert_state("www").expect("state");
    assert!(failures(&state) >= 1, "the failure is recorded: {state}");
    assert_eq!(state["retry"]["paused"], false, "{state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_directory_that_breaks_after_install_still_reloads() {
    let Some(env) = Env::start(PebbleOpts::default()).await else {
        return;
    };
    let proxy = Proxy::for_pebble(&env.pebble).await;
    let marker = env.dir.path().join("reloaded");
    let tail = format!("reload = [\"touch {}\"]\n", marker.display());
    env.write_config(&proxy.directory_url(), &proxy.ca_file, "", &[www()], &tail);
    let root = env.root().await;
    let dir = env.out_dir("www");
    assert_ok(&env.run(&["renew"], RUN_LIMIT), "first issuance");
    let before = check_pair(&dir, &root, www().domains).expect("first pair");
    std::fs::remove_file(&marker).expect("the first issuance ran the reload hook");

    // The state directory turns read-only while the certificate is downloaded: after install.
    let certs = env.state_dir().join("certs");
    let certs_s = certs.to_str().unwrap().to_string();
    if !try_cmd("chattr", &["-i", &certs_s]) {
        eprintln!("chattr not supported here; skipping");
        return;
    }
    let _undo = Undo(vec![("chattr", vec!["-i".into(), certs_s.clone()])]);
    proxy.set(Mode::OnCertDownload(vec![
        "chattr".into(),
        "+i".into(),
        certs_s.clone(),
    ]));
    let out = env.run(&["renew", "--force"], RUN_LIMIT);
    let err = stderr(&out);
    assert!(
        proxy.faulted() > 0,
        "the certificate was downloaded:\n{err}"
    );
    let after = check_pair(&dir, &root, www().domains).expect("the new pair is complete");
    assert_ne!(
        after.serial, before.serial,
        "the new certificate is live:\n{err}"
    );
    assert!(
        err.contains("its state could not be updated"),
        "the state problem is reported:\n{err}"
    );
    assert!(
        marker.exists(),
        "the reload hook ran for the installed certificate:\n{err}"
    );
    assert_ok(&out, "renew whose certificate was installed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_renewals_never_tear_the_pair() {
    let Some(env) = Env::start(PebbleOpts::default()).await else {
        return;
    };
    env.write_pebble_config(&[www()]);
    let root = env.root().await;
    let dir = env.out_dir("www");
    assert_ok(&env.run(&["renew"], RUN_LIMIT), "first issuance");
    for round in 0..3 {
        let children: Vec<_> = (0..3)
            .map(|_| {
                KillOnDrop(
                    env.cmd(&["renew", "--force"])
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped())
                        .spawn()
                        .expect("spawn certkeeper renew"),
                )
            })
            .collect();
        let mut ok = 0;
        for mut c in children {
            let deadline = Instant::now() + RUN_LIMIT;
            while c.0.try_wait().unwrap().is_none() {
                assert!(Instant::now() < deadline, "a concurrent renew hung");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let mut err = String::new();
            use std::io::Read as _;
            c.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            if c.0.wait().unwrap().success() {
                ok += 1;
            } else {
                // Only one process can hold the HTTP-01 port; a renew that did not get it publishes its
                // tokens for the holder, which answers them only while it still runs.
                assert!(
                    err.contains("is being issued by another certkeeper")
                        || err.contains("HTTP-01 listener not started")
                        || err.contains("HTTP-01 port taken"),
                    "round {round}: a concurrent renew failed for another reason than the lock:\n{err}"
                );
            }
        }
        eprintln!("round {round}: {ok} of 3 concurrent renewals succeeded");
        check_pair(&dir, &root, www().domains)
            .unwrap_or_else(|e| panic!("round {round}: pair after concurrent renewals: {e}"));
    }
    // Alone again, a renewal succeeds.
    assert_ok(
        &env.run(&["renew", "--force"], RUN_LIMIT),
        "renewal after the concurrent ones",
    );
    check_pair(&dir, &root, www().domains).expect("pair after the concurrent renewals");
}

/// Undo a mount or `chattr +i` on drop.
struct Undo(Vec<(&'static str, Vec<String>)>);

impl Drop for Undo {
    fn drop(&mut self) {
        for (cmd, args) in self.0.iter().rev() {
            let _ = Command::new(cmd).args(args).status();
        }
    }
}

fn try_cmd(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn fill_disk(dir: &Path) -> PathBuf {
    use std::io::Write;
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).expect("create filler");
    let block = vec![0u8; 4096];
    while f.write_all(&block).is_ok() {}
    let _ = f.sync_all();
    filler
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_and_read_only_output_fail_clearly_and_keep_old_files() {
    let Some(env) = Env::start(PebbleOpts::default()).await else {
        return;
    };
    let full = CertSpec {
        name: "full",
        domains: &["full.example.com"],
        key: "ecdsa-p256",
    };
    // The "full" certificate's output directory is a small tmpfs (needs root / CAP_SYS_ADMIN).
    let mnt = env.out_dir("full");
    std::fs::create_dir_all(&mnt).unwrap();
    let mnt_s = mnt.to_str().unwrap().to_string();
    if !try_cmd(
        "mount",
        &["-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", &mnt_s],
    ) {
        eprintln!("cannot mount a tmpfs here (not root?); skipping");
        return;
    }
    let mut undo = Undo(vec![("umount", vec![mnt_s.clone()])]);
    env.write_pebble_config(&[www(), full]);
    let root = env.root().await;
    assert_ok(&env.run(&["renew"], RUN_LIMIT), "first issuance");
    let www_dir = env.out_dir("www");
    let www_before = check_pair(&www_dir, &root, www().domains).expect("www pair");
    let full_before = check_pair(&mnt, &root, &["full.example.com"]).expect("full pair");

    // Read-only output directory: immutable even for root.
    let www_s = www_dir.to_str().unwrap().to_string();
    if try_cmd("chattr", &["+i", &www_s]) {
        undo.0.push(("chattr", vec!["-i".into(), www_s.clone()]));
        let out = env.run(&["renew", "--force", "www"], RUN_LIMIT);
        let err = stderr(&out);
        assert!(
            !out.status.success(),
            "renewal into an immutable directory succeeded:\n{err}"
        );
        assert!(
            err.contains(&www_s) && err.contains("ermission denied")
                || err.contains("not permitted"),
            "the error names the directory and the OS reason:\n{err}"
        );
        assert_eq!(
            check_pair(&www_dir, &root, www().domains).expect("www after the failure"),
            www_before
        );
        assert!(try_cmd("chattr", &["-i", &www_s]));
        undo.0.pop();
        assert_ok(
            &env.run(&["renew", "--force", "www"], RUN_LIMIT),
            "renewal once writable again",
        );
        check_pair(&www_dir, &root, www().domains).expect("www after recovery");
    } else {
        eprintln!("chattr +i not supported here; read-only case skipped");
    }

    // Disk full.
    let filler = fill_disk(&mnt);
    let out = env.run(&["renew", "--force", "full"], RUN_LIMIT);
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "renewal onto a full disk succeeded:\n{err}"
    );
    assert!(
        err.contains("No space left on device") && err.contains(&mnt_s),
        "the error names the directory and says the disk is full:\n{err}"
    );
    assert_eq!(
        check_pair(&mnt, &root, &["full.example.com"]).expect("full after the failure"),
        full_before,
        "the old pair survived the full disk"
    );
    for e in std::fs::read_dir(&mnt).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !name.starts_with(".staging-"),
            "a failed write left {name} behind on the full disk"
        );
    }
    // Space again: the next run succeeds.
    std::fs::remove_file(&filler).unwrap();
    assert_ok(
        &env.run(&["renew", "--force", "full"], RUN_LIMIT),
        "renewal with space again",
    );
    let after = check_pair(&mnt, &root, &["full.example.com"]).expect("full after recovery");
    assert_ne!(after.serial, full_before.serial);
    drop(undo);
}

fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_file_modes_and_no_secrets_in_debug_logs() {
    use base64::Engine;
    let hmac = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let tsig = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
    let Some(env) = Env::start(PebbleOpts {
        eab_keys: Some(vec![("kid-sec".into(), hmac.clone())]),
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let eab_file = env.dir.path().join("eab.key");
    std::fs::write(&eab_file, format!("{hmac}\n")).unwrap();
    let tsig_file = env.dir.path().join("tsig.key");
    std::fs::write(&tsig_file, format!("{tsig}\n")).unwrap();
    let issuer_extra = format!(
        "eab = {{ kid = \"kid-sec\", hmac_key_file = \"{}\" }}\n\n\
         [[issuer.ca.solver]]\nselector = {{ dns_zones = [\"dns.example.com\"] }}\n\
         dns01 = {{ provider = \"rfc2136\", server = \"127.0.0.1:9\", tsig_key = \"certkeeper.\", \
         tsig_algorithm = \"hmac-sha256\", tsig_secret_file = \"{}\" }}\n",
        eab_file.display(),
        tsig_file.display()
    );
    let group = CertSpec {
        name: "grp",
        domains: &["grp.example.com"],
        key: "ecdsa-p256",
    };
    let ca = env.dir.path().join("pebble-ca.pem");
    env.write_config(
        &env.pebble.directory_url(),
        &ca,
        &issuer_extra,
        &[www(), group],
        "",
    );
    // grp's key is group-readable because the config says so.
    let text = std::fs::read_to_string(&env.config).unwrap().replacen(
        &format!("output = {{ dir = \"{}\" }}", env.out_dir("grp").display()),
        &format!(
            "output = {{ dir = \"{}\", key_mode = \"0640\" }}",
            env.out_dir("grp").display()
        ),
        1,
    );
    std::fs::write(&env.config, text).unwrap();

    let out = env
        .cmd(&["renew"])
        .env("CERTKEEPER_LOG", "debug")
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    assert_ok(&out, "renew with EAB at debug level");
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(logs.lines().count() > 10, "debug logging was on:\n{logs}");
    let hmac_std = base64::engine::general_purpose::STANDARD.encode(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&hmac)
            .unwrap(),
    );
    for (what, secret) in [
        ("EAB key", hmac.as_str()),
        ("EAB key (std base64)", hmac_std.trim_end_matches('=')),
        ("TSIG secret", tsig.trim_end_matches('=')),
    ] {
        assert!(!logs.contains(secret), "the {what} is in the debug logs");
    }

    // Debug of the loaded config shows no secret either.
    let cfg = certkeeper::config::load(&env.config).expect("config loads");
    let dbg = format!("{cfg:?} {:#?}", cfg);
    assert!(!dbg.contains(&hmac), "EAB key in Debug of the config");
    assert!(
        !dbg.contains(tsig.trim_end_matches('=')),
        "TSIG secret in Debug of the config"
    );

    // File modes.
    let key = std::fs::canonicalize(env.out_dir("www").join("privkey.pem")).unwrap();
    assert_eq!(mode_of(&key), 0o600, "privkey.pem default mode");
    let cert = std::fs::canonicalize(env.out_dir("www").join("fullchain.pem")).unwrap();
    assert_eq!(mode_of(&cert), 0o644, "fullchain.pem default mode");
    let gkey = std::fs::canonicalize(env.out_dir("grp").join("privkey.pem")).unwrap();
    assert_eq!(mode_of(&gkey), 0o640, "privkey.pem with key_mode = 0640");
    let state = env.state_dir();
    assert_eq!(mode_of(&state), 0o700, "state directory");
    let mut secrets = 0;
    for sub in ["accounts", "certs", "locks"] {
        assert_eq!(mode_of(&state.join(sub)), 0o700, "state/{sub}");
    }
    for entry in walk(&state) {
        let md = std::fs::symlink_metadata(&entry).unwrap();
        if md.is_dir() {
            assert_eq!(mode_of(&entry), 0o700, "{}", entry.display());
        } else if md.is_file() {
            assert_eq!(
                md.permissions().mode() & 0o077,
                0,
                "{} is readable by others",
                entry.display()
            );
            if entry.extension().is_some_and(|e| e == "pem") {
                secrets += 1;
            }
            let content = std::fs::read_to_string(&entry).unwrap_or_default();
            assert!(
                !content.contains(&hmac),
                "EAB key stored in {}",
                entry.display()
            );
        }
    }
    assert!(secrets >= 1, "the account key is in the state directory");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}
