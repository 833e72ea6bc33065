//! Fleet faults against real parts: `certkeeper run` daemons sharing a real PostgreSQL from Debian
//! (tests/support/postgres.rs), pebble, and a real nginx serving a shared webroot for HTTP-01 (as in
//! tests/fleet.rs).
//!
//! - kill -9 of the node holding a certificate's lease in the middle of its order (its order
//!   created, or already issued by the CA): another node finishes the same order after the lease
//!   expires, the CA sees no second order; no torn pair anywhere, at any time.
//! - PostgreSQL stopped for 30 s while the daemons run: no daemon crashes, the installed files are
//!   untouched, and a certificate that fell due during the outage is issued once it is back.
//!
//! The node to kill is made to stop in the middle of its order by the `test-hooks` build's hold
//! points (`CERTKEEPER_TEST_HOLD_AT=STEP:FILE`, STEP `order-created` or `order-valid`): the first
//! daemon that gets there writes its PID to FILE and waits, alive and renewing its lease, until
//! the test kills it.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use openssl::x509::X509;
use support::certkeeper::{CertSpec, Daemon, IssuerSpec, TestConfig, daemon_command_at};
use support::fleet::WebrootFleet;
use support::nginx::Nginx;
use support::pair::check_pair;
use support::postgres::Postgres;
use support::{Pebble, free_port};

/// The lease of every node: short, so a dead holder is replaced within seconds (renewed every
/// 1.3 s, it outlives a renewal slowed by a loaded machine).
const LEASE: Duration = Duration::from_secs(4);

/// The parts a fleet runs against, and the files its nodes share (key, password, webroot).
struct Fleet {
    pg: Postgres,
    shared: tempfile::TempDir,
    webroot: PathBuf,
    _nginx: Nginx,
    pebble: Pebble,
    root: X509,
    /// The output directories seen with a complete pair (see [`Fleet::observe`]).
    complete: std::sync::Mutex<std::collections::HashSet<PathBuf>>,
}

impl Fleet {
    /// PostgreSQL, nginx on the port pebble validates HTTP-01 on, pebble; `None` (skip) when
    /// pebble or nginx is not installed.
    async fn start() -> Option<Fleet> {
        let WebrootFleet {
            pg,
            shared,
            webroot,
            nginx,
            pebble,
        } = WebrootFleet::start().await?;
        let root = X509::from_pem(pebble.root_pem().await.as_bytes()).unwrap();
        Some(Fleet {
            pg,
            shared,
            webroot,
            _nginx: nginx,
            pebble,
            root,
            complete: Default::default(),
        })
    }

    /// Node `node`'s config: `certs` over the shared webroot, the short [`LEASE`], and `tail`
    /// (more tables).
    fn node(&self, node: &str, certs: &[&str], tail: &str) -> TestConfig {
        let issuer = IssuerSpec::pebble("pebble", &self.pebble).solver(&format!(
            "webroot = {{ path = \"{}\", self_check = false }}",
            self.webroot.display()
        ));
        let mut cfg = TestConfig::new().issuer(issuer);
        for name in certs {
            cfg = cfg.certificate(CertSpec::new(name, "pebble", &[&domain(name)]));
        }
        let storage = format!(
            "{}\nlease = \"{}s\"",
            self.pg
                .storage_table("certkeeper", self.shared.path(), node),
            LEASE.as_secs()
        );
        cfg.tail(&storage).tail(tail).write()
    }

    /// How many orders pebble created.
    fn orders(&self) -> usize {
        self.pebble.orders_added()
    }

    /// The shared state of certificate `name` as the database holds it (not sealed: no key in it).
    fn shared_state(&self, name: &str) -> serde_json::Value {
        let text = self.pg.psql_in(
            "certkeeper",
            &format!(
                "SELECT convert_from(value, 'UTF8') FROM ck_objects WHERE key = 'certs/{name}.json'"
            ),
        );
        serde_json::from_str(text.trim())
            .unwrap_or_else(|e| panic!("state of {name} in the database: {e}: {text:?}"))
    }

    /// The serial installed for `cert` on each node (`None`: nothing installed yet). Panics when
    /// any output directory holds a torn or mismatched pair (key not the leaf's, fullchain not
    /// cert + chain, chain not up to pebble's root, other names).
    ///
    /// A first install creates the four names one after the other (each a symlink into `.live`,
    /// which already holds the whole pair): until the last one exists the pair is not installed
    /// yet. Once a directory was seen complete, a missing name is a failure.
    fn observe(&self, nodes: &[&TestConfig], cert: &str) -> Vec<Option<String>> {
        nodes
            .iter()
            .map(|n| {
                let dir = n.output_dir(cert);
                let present: Vec<bool> = ["fullchain.pem", "privkey.pem", "chain.pem", "cert.pem"]
                    .iter()
                    .map(|f| dir.join(f).symlink_metadata().is_ok())
                    .collect();
                let mut complete = self.complete.lock().unwrap();
                if present.contains(&false) {
                    assert!(
                        !complete.contains(&dir),
                        "{}: files gone after a complete install: {present:?}",
                        dir.display()
                    );
                    return None;
                }
                match check_pair(&dir, &self.root, &[&domain(cert)]) {
                    Ok(p) => {
                        complete.insert(dir);
                        Some(p.serial)
                    }
                    Err(e) => panic!("torn pair in {}: {e}", dir.display()),
                }
            })
            .collect()
    }
}

fn domain(cert: &str) -> String {
    format!("{cert}.faults.test")
}

/// `certkeeper run` on `cfg` with the test environment plus `env`; its log in the node's dir.
fn spawn(cfg: &TestConfig, env: &[(&str, String)]) -> Daemon {
    let mut cmd = daemon_command_at(&cfg.path());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let mut d = Daemon::start(cmd, cfg.dir().join(format!("daemon-{stamp}.log")));
    d.admin_port = cfg.admin_port;
    d
}

fn logs(daemons: &[&Daemon]) -> String {
    daemons
        .iter()
        .enumerate()
        .map(|(i, d)| format!("===== node {} (pid {}) =====\n{}", i + 1, d.pid(), d.log()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Poll (every 200 ms, at most `limit`) until `done` holds; panics with `what` and the logs.
async fn wait_until(
    what: &str,
    limit: Duration,
    daemons: &[&Daemon],
    mut done: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}\n{}",
            logs(daemons)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_lease_holder_mid_order_another_node_finishes_the_same_order() {
    // Killed with the order created, its authorization not yet answered: the successor answers
    // the challenge, finalizes with the order's key from the shared store, and installs.
    kill_holder_at("order-created", "Pending").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_lease_holder_after_the_ca_issued_another_node_installs_that_certificate() {
    // Killed with the order valid (the CA issued), before the download: the successor downloads
    // that certificate and installs it with the order's key; the CA issues nothing more.
    kill_holder_at("order-valid", "Valid").await;
}

/// Three daemons; the first to reach the hold point `step` (see the module docs) is killed with
/// SIGKILL while it holds the lease; one survivor resumes the order (found in status `status`).
async fn kill_holder_at(step: &str, status: &str) {
    let Some(fleet) = Fleet::start().await else {
        return;
    };
    let started = Instant::now();
    let nodes: Vec<TestConfig> = ["web1", "web2", "web3"]
        .iter()
        .map(|n| fleet.node(n, &["alpha"], ""))
        .collect();
    let node_refs: Vec<&TestConfig> = nodes.iter().collect();
    let marker = fleet.shared.path().join("holder.pid");
    let hold = [(
        "CERTKEEPER_TEST_HOLD_AT",
        format!("{step}:{}", marker.display()),
    )];
    let mut daemons: Vec<Daemon> = nodes.iter().map(|n| spawn(n, &hold)).collect();

    // The first node to create the order stops in the middle of it, holding the lease.
    let mut holder_pid = None;
    wait_until(
        &format!("a node to hold at {step} (the test binary needs --features test-hooks)"),
        Duration::from_secs(40),
        &daemons.iter().collect::<Vec<_>>(),
        || {
            holder_pid = std::fs::read_to_string(&marker)
                .ok()
                .and_then(|t| t.trim().parse::<u32>().ok());
            holder_pid.is_some()
        },
    )
    .await;
    let holder_pid = holder_pid.unwrap();
    let holder = daemons
        .iter()
        .position(|d| d.pid() == holder_pid)
        .unwrap_or_else(|| panic!("PID {holder_pid} in the marker is none of our daemons"));
    let order_url = fleet.shared_state("alpha")["order_url"]
        .as_str()
        .expect("the order URL is in the shared state before the CA validates anything")
        .to_string();
    assert_eq!(fleet.orders(), 1);

    // While the holder lives its lease is renewed: for twice the lease nobody takes over.
    let hold_until = Instant::now() + LEASE * 2;
    while Instant::now() < hold_until {
        for d in &mut daemons {
            d.assert_running();
        }
        let seen = fleet.observe(&node_refs, "alpha");
        assert!(
            seen.iter().all(Option::is_none),
            "installed while the holder holds the order: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(fleet.orders(), 1, "no second order while the lease is held");
    let all_logs = logs(&daemons.iter().collect::<Vec<_>>());
    assert!(
        !all_logs.contains("resuming order"),
        "another node took over a live lease:\n{all_logs}"
    );

    // kill -9 of the holder, by the PID of the daemon we started.
    let killed_at = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(holder_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let exit = daemons[holder].wait_exit(Duration::from_secs(10));
    assert!(!exit.success(), "{exit}");

    // The survivors: one takes the lease once it expires and finishes the same order, the other
    // installs what it issued. Every observation on the way checks every output directory.
    let survivors: Vec<usize> = (0..nodes.len()).filter(|i| *i != holder).collect();
    let refs: Vec<&Daemon> = daemons.iter().collect();
    wait_until(
        "the survivors to install alpha",
        Duration::from_secs(45),
        &refs,
        || {
            let seen = fleet.observe(&node_refs, "alpha");
            survivors.iter().all(|i| seen[*i].is_some())
        },
    )
    .await;
    let took_over = killed_at.elapsed();
    assert!(
        took_over >= LEASE * 2 / 3,
        "taken over before the lease could expire ({took_over:?})"
    );
    let all_logs = logs(&refs);
    assert_eq!(
        fleet.orders(),
        1,
        "the CA saw a second order: the dead node's order was not resumed\n{all_logs}"
    );
    let resumed: Vec<&usize> = survivors
        .iter()
        .filter(|i| {
            daemons[**i].log().lines().any(|l| {
                l.contains("resuming order")
                    && l.contains(&order_url)
                    && l.contains(&format!("status={status}"))
            })
        })
        .collect();
    assert_eq!(
        resumed.len(),
        1,
        "exactly one survivor resumed {order_url} in status {status}:\n{all_logs}"
    );
    let state = fleet.shared_state("alpha");
    assert_eq!(
        state["last_order"]["url"].as_str(),
        Some(order_url.as_str()),
        "the certificate came from the held order: {state}"
    );

    // The killed node comes back and installs the fleet's pair: every node has the same one.
    daemons[holder] = spawn(&nodes[holder], &hold);
    let refs: Vec<&Daemon> = daemons.iter().collect();
    wait_until(
        "the restarted node to install alpha",
        Duration::from_secs(20),
        &refs,
        || fleet.observe(&node_refs, "alpha")[holder].is_some(),
    )
    .await;
    let seen = fleet.observe(&node_refs, "alpha");
    assert!(
        seen.iter().all(|s| s.is_some() && *s == seen[0]),
        "every node serves the same pair: {seen:?}"
    );
    assert_eq!(fleet.orders(), 1);
    for d in &mut daemons {
        d.assert_running();
    }
    eprintln!(
        "kill -9 at {step}: {:?} (taken over {took_over:?} after the kill)",
        started.elapsed()
    );
}

/// The four files of an output directory as they are: for each, where its symlink points, the
/// bytes read through it, and the modification times of the link and of the file.
type FilesSeen = Vec<(PathBuf, Option<PathBuf>, Vec<u8>, SystemTime, SystemTime)>;

fn files_seen(dir: &Path) -> FilesSeen {
    ["fullchain.pem", "privkey.pem", "chain.pem", "cert.pem"]
        .iter()
        .map(|f| {
            let p = dir.join(f);
            let link = std::fs::read_link(&p).ok();
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let link_mtime = std::fs::symlink_metadata(&p).unwrap().modified().unwrap();
            let mtime = std::fs::metadata(&p).unwrap().modified().unwrap();
            (p, link, bytes, link_mtime, mtime)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_for_30s_no_crash_files_untouched_then_the_due_certificate_is_issued() {
    let Some(fleet) = Fleet::start().await else {
        return;
    };
    let started = Instant::now();
    // Failures retried quickly, so the test sees the retry after the outage within seconds.
    let daemon_table = "[daemon]\nretry_first = \"2s\"\nretry_max = \"8s\"";
    let nodes: Vec<TestConfig> = ["web1", "web2"]
        .iter()
        .map(|n| {
            fleet
                .node(n, &["alpha"], daemon_table)
                .admin_listen(free_port())
                .write()
        })
        .collect();
    let node_refs: Vec<&TestConfig> = nodes.iter().collect();
    let mut daemons: Vec<Daemon> = nodes.iter().map(|n| spawn(n, &[])).collect();
    let refs: Vec<&Daemon> = daemons.iter().collect();
    wait_until(
        "both nodes to install alpha",
        Duration::from_secs(40),
        &refs,
        || {
            fleet
                .observe(&node_refs, "alpha")
                .iter()
                .all(Option::is_some)
        },
    )
    .await;
    let before: Vec<FilesSeen> = nodes
        .iter()
        .map(|n| files_seen(&n.output_dir("alpha")))
        .collect();
    assert_eq!(fleet.orders(), 1);

    // PostgreSQL goes away; meanwhile a certificate is added on every node (config edit + SIGHUP).
    fleet.pg.stop();
    let outage = Instant::now();
    let nodes: Vec<TestConfig> = nodes
        .into_iter()
        .map(|n| {
            n.certificate(CertSpec::new("bravo", "pebble", &[&domain("bravo")]))
                .write()
        })
        .collect();
    let node_refs: Vec<&TestConfig> = nodes.iter().collect();
    for d in &mut daemons {
        d.signal(nix::sys::signal::Signal::SIGHUP);
    }
    while outage.elapsed() < Duration::from_secs(30) {
        for d in &mut daemons {
            d.assert_running();
            let (status, body) = d.admin_get("/healthz").await;
            assert_eq!(status, 200, "/healthz during the outage: {body}");
        }
        for (n, seen) in nodes.iter().zip(&before) {
            assert_eq!(
                &files_seen(&n.output_dir("alpha")),
                seen,
                "alpha's files changed during the outage"
            );
        }
        assert!(
            fleet
                .observe(&node_refs, "bravo")
                .iter()
                .all(Option::is_none),
            "bravo issued without the database"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Retried with backoff, not in a tight loop (2 s, 4 s, 8 s, 8 s ... over 30 s).
    for d in &daemons {
        let tries = d.log().matches("issuance failed cert=bravo").count();
        assert!(
            (1..=12).contains(&tries),
            "{tries} attempts of bravo during the outage:\n{}",
            d.log()
        );
    }

    // PostgreSQL is back: bravo is issued once, and installed on both nodes.
    fleet.pg.start_again();
    let back = Instant::now();
    let refs: Vec<&Daemon> = daemons.iter().collect();
    wait_until(
        "both nodes to install bravo after the outage",
        Duration::from_secs(40),
        &refs,
        || {
            fleet
                .observe(&node_refs, "bravo")
                .iter()
                .all(Option::is_some)
        },
    )
    .await;
    let recovered = back.elapsed();
    let seen = fleet.observe(&node_refs, "bravo");
    assert_eq!(seen[0], seen[1], "both nodes serve the same bravo");
    assert_eq!(
        fleet.orders(),
        2,
        "one order for alpha, one for bravo\n{}",
        logs(&refs)
    );
    for (n, seen) in nodes.iter().zip(&before) {
        assert_eq!(
            &files_seen(&n.output_dir("alpha")),
            seen,
            "alpha's files changed"
        );
    }
    for d in &mut daemons {
        d.assert_running();
        let (status, _) = d.admin_get("/healthz").await;
        assert_eq!(status, 200);
    }
    // Nothing lost in the shared state: status on each node shows both certificates installed.
    for (i, n) in nodes.iter().enumerate() {
        let status = n.run_cli(&["status"]).await;
        assert!(status.ok(), "{status}");
        for cert in ["alpha", "bravo"] {
            let serial = fleet.observe(&node_refs, cert)[i]
                .clone()
                .unwrap()
                .to_lowercase();
            assert!(
                status
                    .stdout
                    .contains(&format!("installed:   serial {serial}")),
                "{cert} on node {}: {}",
                i + 1,
                status.stdout
            );
        }
    }
    eprintln!(
        "outage test: {:?} (bravo on both nodes {recovered:?} after PostgreSQL came back)",
        started.elapsed()
    );
}
