//! HTTP-01 from any node, end to end: three `certkeeper run` daemons on this machine (each with
//! its own state and output directories, its own HTTP-01 listener port and reload hook, all on one
//! PostgreSQL database from Debian with the same encryption key) behind a real nginx that
//! round-robins pebble's HTTP-01 validations across the three listeners, as a load balancer in
//! front of a fleet would. Whichever node orders a certificate publishes its tokens through the
//! database; the node the CA's request lands on answers it.
//!
//! 20 certificates: pebble sees exactly one order per certificate (a validation answered 404 by
//! any node would fail the order and make another), every node installs the same verified pair,
//! every node's reload hook runs once per certificate, and each of the three listeners answered
//! validations. Then a `renew --force` by hand next to the daemons publishes its tokens through
//! the fleet as well.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use support::certkeeper::{CertSpec, Daemon, IssuerSpec, TestConfig};
use support::nginx::{Nginx, NginxOpts, nginx_available};
use support::pair::check_pair;
use support::postgres::{Postgres, write_shared_secrets};
use support::{Pebble, free_port, pebble};

const NODES: [&str; 3] = ["web1", "web2", "web3"];
const CERTS: usize = 20;
/// How long the fleet may take to issue and install everything.
const CONVERGE: Duration = Duration::from_secs(45);

fn cert_names() -> Vec<String> {
    (1..=CERTS).map(|i| format!("c{i:02}")).collect()
}

fn domain(name: &str) -> String {
    format!("{name}.fleet.test")
}

/// Node `node`'s config: its own listener port, the 20 certificates with a reload hook logging
/// each certificate it ran for, and the shared database.
fn node_config(pebble: &Pebble, pg: &Postgres, shared: &Path, node: &str, port: u16) -> TestConfig {
    let issuer = IssuerSpec::pebble("pebble", pebble).solver_http01();
    let mut cfg = TestConfig::new().issuer(issuer).http01_listen(port);
    let hook_log = cfg.dir().join("reloads.log");
    for name in cert_names() {
        cfg = cfg.certificate(
            CertSpec::new(&name, "pebble", &[&domain(&name)])
                .reload(&format!("echo {name} >> {}", hook_log.display())),
        );
    }
    let storage = pg.storage_table("certkeeper", shared, node);
    cfg.tail(&storage)
        .tail("[daemon]\nretry_first = \"2s\"\nretry_max = \"5s\"")
        .write()
}

/// Whether every node has installed every certificate and run its hook for each.
fn converged(nodes: &[TestConfig]) -> bool {
    nodes.iter().all(|cfg| {
        cfg.sorted_lines("reloads.log").len() >= CERTS
            && cert_names()
                .iter()
                .all(|n| cfg.output_dir(n).join("fullchain.pem").exists())
    })
}

fn logs(daemons: &[Daemon], pebble: &Pebble, nginx: &Nginx) -> String {
    let mut s = String::new();
    for (node, d) in NODES.iter().zip(daemons) {
        s.push_str(&format!("===== {node} =====\n{}\n", d.log()));
    }
    s.push_str(&format!(
        "===== nginx access log =====\n{}\n===== pebble =====\n{}",
        nginx.access_log_text(),
        pebble.log()
    ));
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_daemons_behind_a_balancer_answer_each_others_challenges() {
    if !pebble::available() || !nginx_available() {
        eprintln!("pebble or nginx not installed; skipping");
        return;
    }
    let started = Instant::now();
    let pg = Postgres::start();
    let shared = tempfile::tempdir().unwrap();
    write_shared_secrets(shared.path());
    let ports: Vec<u16> = NODES.iter().map(|_| free_port()).collect();
    let listeners: Vec<SocketAddr> = ports.iter().map(|p| ([127, 0, 0, 1], *p).into()).collect();
    let nginx_certs = shared.path().join("nginx-certs");
    std::fs::create_dir_all(&nginx_certs).unwrap();
    let nginx = Nginx::start(NginxOpts {
        cert_dir: nginx_certs,
        acme_balance: listeners.clone(),
        placeholder_cert: true,
        ..Default::default()
    })
    .expect("start nginx");
    let pebble = nginx.pebble().await;
    let root = openssl::x509::X509::from_pem(pebble.root_pem().await.as_bytes()).unwrap();

    let nodes: Vec<TestConfig> = NODES
        .iter()
        .zip(&ports)
        .map(|(node, port)| node_config(&pebble, &pg, shared.path(), node, *port))
        .collect();
    let mut daemons: Vec<Daemon> = nodes.iter().map(TestConfig::spawn_daemon).collect();

    let deadline = Instant::now() + CONVERGE;
    while !converged(&nodes) {
        for d in &mut daemons {
            d.assert_running();
        }
        assert!(
            Instant::now() < deadline,
            "the fleet did not install every certificate on every node within {CONVERGE:?}\n{}",
            logs(&daemons, &pebble, &nginx)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // A moment for a stray second order or hook run to show.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all = logs(&daemons, &pebble, &nginx);

    assert_eq!(
        pebble.orders_added(),
        CERTS,
        "pebble saw other than one order per certificate\n{all}"
    );
    // Every node installed the same verified pair of every certificate.
    for name in cert_names() {
        let d = domain(&name);
        let serials: Vec<String> = nodes
            .iter()
            .map(|cfg| {
                check_pair(&cfg.output_dir(&name), &root, &[&d])
                    .unwrap_or_else(|e| panic!("{name} in {}: {e}\n{all}", cfg.dir().display()))
                    .serial
            })
            .collect();
        assert!(
            serials.iter().all(|s| *s == serials[0]),
            "{name}: the nodes installed different certificates {serials:?}"
        );
    }
    // Every node ran its own hook once per certificate.
    for (node, cfg) in NODES.iter().zip(&nodes) {
        assert_eq!(
            cfg.sorted_lines("reloads.log"),
            cert_names(),
            "reload hooks of {node}\n{all}"
        );
    }
    // The balancer spread the validations over all three listeners (pebble fetches each token
    // more than once), and every request was answered, whichever node had published the token.
    let mut answered: BTreeMap<String, usize> = BTreeMap::new();
    let mut tokens = std::collections::BTreeSet::new();
    for line in nginx.access_log_text().lines() {
        let Some(rest) = line.strip_prefix("/.well-known/acme-challenge/") else {
            continue;
        };
        assert!(
            line.contains(" 200 upstream="),
            "a validation not answered: {line}\n{all}"
        );
        tokens.insert(rest.split(' ').next().unwrap_or_default().to_string());
        let up = line.rsplit("upstream=").next().unwrap_or_default();
        *answered.entry(up.to_string()).or_default() += 1;
    }
    for l in &listeners {
        assert!(
            answered.get(&l.to_string()).is_some_and(|n| *n > 0),
            "listener {l} answered no validation: {answered:?}"
        );
    }
    assert_eq!(
        tokens.len(),
        CERTS,
        "one token per certificate validated: {answered:?}"
    );
    // The tokens were withdrawn after use.
    let left = pg.psql_in("certkeeper", "SELECT count(*) FROM ck_tokens");
    assert_eq!(left.trim(), "0", "tokens left in the database");

    // `renew` run by hand next to a daemon that holds its port publishes through the fleet too:
    // the validations land on all three listeners again.
    let renewed = nodes[1].run_cli(&["renew", "--force", "c01"]).await;
    assert!(
        renewed.ok() && renewed.stdout.contains("c01: issued by pebble"),
        "stdout:\n{}\nstderr:\n{}",
        renewed.stdout,
        renewed.stderr
    );
    assert_eq!(pebble.orders_added(), CERTS + 1);
    for d in &mut daemons {
        d.assert_running();
    }
    drop(daemons);
    drop(nginx);
    eprintln!("fleet HTTP-01 test: {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(60));
}
