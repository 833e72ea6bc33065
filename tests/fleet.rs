//! Fleet mode against real parts: a PostgreSQL cluster from Debian (tests/support/postgres.rs),
//! pebble, and a real nginx.
//!
//! Two "nodes" are two certkeeper configs on this machine, each with its own state and output
//! directories and its own reload hook, sharing one database and one encryption key. HTTP-01 is
//! answered the simplest real way a fleet can without certkeeper's token sharing: a shared webroot
//! (as an NFS-mounted document root would be) that one nginx serves on the port pebble validates
//! on. Whichever node takes a certificate's lease writes the token there; nginx answers pebble.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::Pebble;
use support::certkeeper::{CertSpec, CliOutput, IssuerSpec, TestConfig};
use support::fleet::WebrootFleet;

const CERTS: [&str; 3] = ["alpha", "bravo", "charlie"];

/// A node's config: the three certificates over the shared webroot, a reload hook that logs the
/// serial it was run for, and `storage` as its `[storage]` table (none: the file backend).
fn node_config(pebble: &Pebble, webroot: &Path, storage: Option<String>) -> TestConfig {
    let issuer = IssuerSpec::pebble("pebble", pebble).solver(&format!(
        "webroot = {{ path = \"{}\", self_check = false }}",
        webroot.display()
    ));
    let mut cfg = TestConfig::new().issuer(issuer);
    let hook_log = cfg.dir().join("reloads.log");
    for name in CERTS {
        let domain = format!("{name}.fleet.test");
        cfg = cfg.certificate(
            CertSpec::new(name, "pebble", &[&domain])
                .reload(&format!("echo {name} >> {}", hook_log.display())),
        );
    }
    match storage {
        Some(s) => cfg.tail(&s).write(),
        None => cfg.write(),
    }
}

/// The serial of the leaf in `dir/fullchain.pem`.
fn installed_serial(dir: &Path) -> String {
    let pem = std::fs::read(dir.join("fullchain.pem"))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let leaf = openssl::x509::X509::from_pem(&pem).unwrap();
    let bn = leaf.serial_number().to_bn().unwrap();
    bn.to_hex_str().unwrap().to_lowercase()
}

fn render(out: &CliOutput) -> String {
    format!("stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_order_each_certificate_once_and_both_install_it() {
    let started = Instant::now();
    let Some(WebrootFleet {
        pg,
        shared,
        webroot,
        nginx,
        pebble,
    }) = WebrootFleet::start().await
    else {
        return;
    };

    let nodes: Vec<TestConfig> = ["web1", "web2"]
        .iter()
        .map(|n| {
            let storage = pg.storage_table("certkeeper", shared.path(), n);
            node_config(&pebble, &webroot, Some(storage))
        })
        .collect();

    // Both nodes renew at the same moment.
    let (a, b) = tokio::join!(nodes[0].run_cli(&["renew"]), nodes[1].run_cli(&["renew"]));
    let first = [&a, &b];
    let both = format!("web1 {}\nweb2 {}", render(&a), render(&b));
    assert_eq!(
        pebble.orders_added(),
        CERTS.len(),
        "pebble saw other than one order per certificate:\n{both}"
    );
    for name in CERTS {
        let issued: usize = first
            .iter()
            .filter(|o| o.stdout.contains(&format!("{name}: issued by pebble")))
            .count();
        assert_eq!(issued, 1, "{name} was ordered by exactly one node:\n{both}");
    }
    // A node that found a certificate being issued or renewed by the other installs it at its
    // next pass (step by step: every node installs the fleet's current pair).
    for cfg in &nodes {
        let again = cfg.run_cli(&["renew"]).await;
        assert!(again.ok(), "second renew:\n{}", render(&again));
    }
    assert_eq!(
        pebble.orders_added(),
        CERTS.len(),
        "no order on the second pass"
    );
    for name in CERTS {
        let s1 = installed_serial(&nodes[0].output_dir(name));
        let s2 = installed_serial(&nodes[1].output_dir(name));
        assert_eq!(s1, s2, "{name}: both nodes serve the same certificate");
    }
    // Every node ran its own reload hook once per certificate.
    let all: Vec<String> = CERTS.iter().map(|s| s.to_string()).collect();
    for cfg in &nodes {
        assert_eq!(
            cfg.sorted_lines("reloads.log"),
            all,
            "reload hooks of {}",
            cfg.dir().display()
        );
    }
    // A third pass changes nothing and reloads nothing.
    let third = nodes[1].run_cli(&["renew"]).await;
    assert!(
        third.ok() && !third.stdout.contains("installed"),
        "{}",
        render(&third)
    );
    assert_eq!(nodes[1].sorted_lines("reloads.log"), all);

    // No private key in the database in clear: not as PEM, not as the key's base64 body.
    let dump = pg.dump("certkeeper");
    let dump = String::from_utf8_lossy(&dump);
    assert!(
        dump.contains("pairs/alpha.json"),
        "the dump holds the tables"
    );
    assert!(
        !dump.contains("PRIVATE KEY"),
        "a PEM private key in the dump"
    );
    let key_pem =
        std::fs::read_to_string(nodes[0].output_dir("alpha").join("privkey.pem")).unwrap();
    let body_line = key_pem.lines().nth(1).unwrap();
    assert!(!dump.contains(body_line), "raw key bytes in the dump");

    // status reads the shared state: the issuer recorded by whichever node ordered it.
    let status = nodes[1].run_cli(&["status"]).await;
    assert!(status.ok(), "{}", render(&status));
    for name in CERTS {
        let serial = installed_serial(&nodes[1].output_dir(name));
        assert!(
            status
                .stdout
                .contains(&format!("installed:   serial {serial}")),
            "{}",
            status.stdout
        );
    }
    assert!(
        !status.stdout.contains("issuer unknown"),
        "{}",
        status.stdout
    );
    // ... and, per certificate, the node that ordered its current pair, and no lease held.
    for name in CERTS {
        let serial = installed_serial(&nodes[1].output_dir(name));
        let by = ["web1", "web2"][first
            .iter()
            .position(|o| o.stdout.contains(&format!("{name}: issued by pebble")))
            .unwrap()];
        let block = &status.stdout[status.stdout.find(&format!("{name}: ")).unwrap()..];
        let block = &block[..block.find("\n\n").unwrap_or(block.len())];
        assert!(
            block.contains(&format!(
                "fleet pair:  serial {serial}, ordered by node {by} at "
            )),
            "{name} ordered by {by}:\n{}",
            status.stdout
        );
    }
    assert!(
        status.stdout.matches("lease:       none").count() == CERTS.len(),
        "{}",
        status.stdout
    );

    // A single host on the file backend moves into the fleet's database with `storage migrate`.
    pg.create_database("migrated");
    let solo = node_config(&pebble, &webroot, None);
    let renewed = solo.run_cli(&["renew", "alpha"]).await;
    assert!(renewed.ok(), "{}", render(&renewed));
    let before = solo.run_cli(&["status", "alpha"]).await;
    let storage = pg.storage_table("migrated", shared.path(), "solo");
    let as_fleet = solo.clone().tail(&storage).write();
    let migrate = as_fleet
        .run_cli(&["storage", "migrate", "--from", "file"])
        .await;
    assert!(migrate.ok(), "{}", render(&migrate));
    assert!(
        migrate.stdout.contains("copied     certs/alpha.json"),
        "{}",
        migrate.stdout
    );
    assert!(
        migrate.stdout.contains("/key.pem"),
        "the account key: {}",
        migrate.stdout
    );
    assert!(
        migrate.stdout.contains("pair       alpha: serial"),
        "{}",
        migrate.stdout
    );
    let again = as_fleet
        .run_cli(&["storage", "migrate", "--from", "file"])
        .await;
    assert!(again.ok(), "{}", render(&again));
    assert!(
        again.stdout.contains("0 copied"),
        "idempotent: {}",
        again.stdout
    );
    let after = as_fleet.run_cli(&["status", "alpha"]).await;
    assert!(after.ok(), "{}", render(&after));
    let installed_line = |s: &str| {
        s.lines()
            .find(|l| l.contains("installed:"))
            .map(str::to_string)
            .unwrap_or_default()
    };
    assert_eq!(
        installed_line(&after.stdout),
        installed_line(&before.stdout),
        "status on PostgreSQL shows what the file backend showed"
    );
    assert!(after.stdout.contains("issuer pebble"), "{}", after.stdout);
    let dump = pg.dump("migrated");
    assert!(!String::from_utf8_lossy(&dump).contains("PRIVATE KEY"));
    drop(nginx);
    eprintln!("fleet test: {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(120));
}
