//! The PostgreSQL storage backend against a real PostgreSQL (Debian's, started by
//! `tests/support/postgres.rs`): the same storage contract as the file backend, the schema, secrets
//! at rest (checked in a `pg_dump`), leases contended by two nodes with fencing, and a database
//! restart under a live client.

mod support;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use base64::Engine as _;
use certkeeper::store::postgres::crypto::{DataKey, Keyring};
use certkeeper::store::postgres::{PgOptions, schema};
use certkeeper::store::{AccountStore, Ledger, PgStorage, Storage, StoreError, contract};
use support::postgres::{PASSWORD, Postgres};

/// A node's storage on database `db`, with the test password; `tune` adjusts the options.
fn node(
    pg: &Postgres,
    db: &str,
    name: &str,
    key: &DataKey,
    tune: impl FnOnce(&mut PgOptions),
) -> PgStorage {
    let mut opts = PgOptions::new(pg.url(db), name, Keyring::new(key.clone()));
    opts.password = Some(PASSWORD.to_string());
    assert!(
        !format!("{opts:?}").contains(PASSWORD),
        "the password in Debug"
    );
    tune(&mut opts);
    PgStorage::open(opts).expect("open PgStorage")
}

fn private_key_pem(rsa: bool) -> (Vec<u8>, Vec<u8>) {
    let key = if rsa {
        openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap()
    } else {
        let group =
            openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap();
        openssl::pkey::PKey::from_ec_key(openssl::ec::EcKey::generate(&group).unwrap()).unwrap()
    };
    (
        key.private_key_to_pem_pkcs8().unwrap(),
        key.private_key_to_pkcs8().unwrap(),
    )
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn contract_schema_and_secrets_at_rest() {
    let started = Instant::now();
    let pg = Postgres::start();
    let key = DataKey::generate().unwrap();

    // The storage contract, exactly as the file backend passes it.
    pg.create_database("contract");
    let s = node(&pg, "contract", "web1", &key, |_| {});
    contract::check_all(&s);
    assert!(s.describe("certs/www.json").contains("certs/www.json"));

    // The schema: created by the first connection, versioned, not re-applied by a second node.
    assert_eq!(s.schema_version().unwrap(), schema::CURRENT);
    let s2 = node(&pg, "contract", "web2", &key, |_| {});
    assert_eq!(s2.schema_version().unwrap(), schema::CURRENT);
    let rows = pg.psql_in("contract", "SELECT count(*) FROM ck_schema_version");
    assert_eq!(rows.trim(), schema::CURRENT.to_string());
    // A schema from a newer certkeeper is refused, not guessed at.
    pg.create_database("newer");
    let s3 = node(&pg, "newer", "web1", &key, |_| {});
    s3.store("probe", b"x").unwrap();
    pg.psql_in(
        "newer",
        "INSERT INTO ck_schema_version (version) VALUES (99)",
    );
    let s4 = node(&pg, "newer", "web2", &key, |_| {});
    let err = s4.load("probe").unwrap_err();
    assert!(matches!(err, StoreError::Schema { .. }), "{err}");
    assert!(err.to_string().contains("upgrade certkeeper"), "{err}");

    // Secrets at rest: keys saved through the real account store and ledger.
    pg.create_database("secrets");
    let s = Arc::new(node(&pg, "secrets", "web1", &key, |_| {}));
    let (acct_pem, acct_der) = private_key_pem(false);
    let (cert_pem, cert_der) = private_key_pem(true);
    let (next_pem, next_der) = private_key_pem(false);
    let accounts = AccountStore::new(s.clone());
    accounts
        .save_key("le-1", std::str::from_utf8(&acct_pem).unwrap())
        .unwrap();
    accounts
        .stage_next_key("le-1", std::str::from_utf8(&next_pem).unwrap())
        .unwrap();
    let ledger = Ledger::new(s.clone());
    ledger
        .lock("www")
        .unwrap()
        .save_pending_key(&cert_pem)
        .unwrap();
    // A private key under a name not known to hold one is sealed too (recognized by content).
    s.store("misc/stray.txt", &cert_pem).unwrap();
    // A retired account's key is re-sealed under its new name and still opens.
    accounts
        .save_key("le-2", std::str::from_utf8(&acct_pem).unwrap())
        .unwrap();
    let moved_to = accounts.retire("le-2").unwrap();
    let listed = s.list("accounts").unwrap();
    let retired = listed
        .iter()
        .find(|n| n.starts_with("le-2.deactivated-"))
        .unwrap_or_else(|| panic!("{listed:?}"));
    assert!(moved_to.contains(retired.as_str()), "{moved_to}");
    assert!(!listed.contains(&"le-2".to_string()), "{listed:?}");
    assert_eq!(
        s.load(&format!("accounts/{retired}/key.pem")).unwrap(),
        Some(acct_pem.clone())
    );

    // Another node with the same key reads them back as written.
    let other = node(&pg, "secrets", "web2", &key, |_| {});
    assert_eq!(
        other.load("accounts/le-1/key.pem").unwrap(),
        Some(acct_pem.clone())
    );
    assert_eq!(
        other.load("certs/www.key.pem").unwrap(),
        Some(cert_pem.clone())
    );
    assert_eq!(
        other.load("misc/stray.txt").unwrap(),
        Some(cert_pem.clone())
    );
    // A node with another key cannot open them, and says which setting to check.
    let wrong = node(
        &pg,
        "secrets",
        "web3",
        &DataKey::generate().unwrap(),
        |_| {},
    );
    let err = wrong.load("accounts/le-1/key.pem").unwrap_err();
    assert!(matches!(err, StoreError::Sealed { .. }), "{err}");
    assert!(err.to_string().contains("encryption_key_file"), "{err}");
    // A sealed value copied onto another key's row does not open there.
    pg.psql_in(
        "secrets",
        "UPDATE ck_objects SET value = (SELECT value FROM ck_objects WHERE key = 'accounts/le-1/key.pem'), \
         version = (SELECT version FROM ck_objects WHERE key = 'accounts/le-1/key.pem'), sealed = true \
         WHERE key = 'certs/www.key.pem'",
    );
    let err = other.load("certs/www.key.pem").unwrap_err();
    assert!(matches!(err, StoreError::Sealed { .. }), "{err}");

    // The dump: no PEM private key, no key bytes in any encoding, no data key.
    let dump = pg.dump("secrets");
    assert!(contains(&dump, b"ck_objects"), "the dump has the table");
    assert!(
        !contains(&dump, b"PRIVATE KEY"),
        "PEM private key in the dump"
    );
    let b64 = base64::engine::general_purpose::STANDARD;
    let data_key_id = key.id().to_string();
    assert!(
        contains(&dump, hex(data_key_id.as_bytes()).as_bytes()),
        "the key id travels with the values"
    );
    for (what, der) in [
        ("account key", &acct_der),
        ("certificate key", &cert_der),
        ("staged key", &next_der),
    ] {
        assert!(!contains(&dump, der), "raw DER of the {what}");
        assert!(
            !contains(&dump, hex(der).as_bytes()),
            "hex DER of the {what}"
        );
        assert!(
            !contains(&dump, &b64.encode(der).as_bytes()[40..80]),
            "base64 DER of the {what}"
        );
    }
    eprintln!("contract, schema and secrets: {:?}", started.elapsed());
}

#[test]
fn two_nodes_contend_for_leases_with_fencing() {
    let started = Instant::now();
    let pg = Postgres::start();
    pg.create_database("fleet");
    let key = DataKey::generate().unwrap();
    // Renewed every third of it: a loaded machine may delay a renewal by a second and lose nothing.
    let ttl = Duration::from_secs(2);
    let a = Arc::new(node(&pg, "fleet", "web1", &key, |o| o.lease_ttl = ttl));
    let b = Arc::new(node(&pg, "fleet", "web2", &key, |o| o.lease_ttl = ttl));
    a.store("probe", b"x").unwrap(); // schema in place before the race

    // Both nodes try at the same moment: exactly one gets it.
    for round in 0..5 {
        let barrier = Arc::new(Barrier::new(2));
        let tries: Vec<_> = [a.clone(), b.clone()]
            .into_iter()
            .map(|s| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    s.lock("www")
                })
            })
            .collect();
        let results: Vec<_> = tries.into_iter().map(|t| t.join().unwrap()).collect();
        let won = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "round {round}: {results:?}");
        let lost = results.iter().find_map(|r| r.as_ref().err()).unwrap();
        assert!(matches!(lost, StoreError::Locked { .. }), "{lost}");
        assert!(lost.to_string().contains("held by node web"), "{lost}");
    }

    // Tokens grow across nodes; dropping a lease releases it at once.
    let l1 = a.lock("www").unwrap();
    assert!(matches!(b.lock("www"), Err(StoreError::Locked { .. })));
    let t1 = l1.token();
    drop(l1);
    let l2 = b.lock("www").unwrap();
    assert!(l2.token() > t1, "{} > {t1}", l2.token());

    // A renewed lease outlives its lifetime: the other node still cannot take it.
    std::thread::sleep(ttl + ttl / 2);
    assert!(matches!(a.lock("www"), Err(StoreError::Locked { .. })));
    b.store_fenced("certs/www.json", b"{\"by\":\"web2\"}", &l2)
        .unwrap();
    // lock_wait returns as soon as the holder lets go.
    let waiter = {
        let a = a.clone();
        std::thread::spawn(move || a.lock_wait("www").map(|l| l.token()))
    };
    std::thread::sleep(Duration::from_millis(300));
    let t2 = l2.token();
    drop(l2);
    let t3 = waiter.join().unwrap().unwrap();
    assert!(t3 > t2, "{t3} > {t2}");

    // A node that stops renewing (paused) loses its lease after the lifetime; the next holder's
    // token is larger and the paused node's late write is refused.
    let paused = node(&pg, "fleet", "web3", &key, |o| {
        o.lease_ttl = ttl;
        o.renew_leases = false;
    });
    let stale = paused.lock("api").unwrap();
    paused
        .store_fenced("certs/api.json", b"{\"by\":\"web3\"}", &stale)
        .unwrap();
    assert!(matches!(b.lock("api"), Err(StoreError::Locked { .. })));
    std::thread::sleep(ttl + Duration::from_millis(500));
    // Expired: refused even before anyone else took it.
    let err = paused
        .store_fenced("certs/api.json", b"{\"by\":\"web3, late\"}", &stale)
        .unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
    let fresh = b.lock("api").unwrap();
    assert!(
        fresh.token() > stale.token(),
        "{} > {}",
        fresh.token(),
        stale.token()
    );
    b.store_fenced("certs/api.json", b"{\"by\":\"web2\"}", &fresh)
        .unwrap();
    let err = paused
        .store_fenced("certs/api.json", b"{\"by\":\"web3, later\"}", &stale)
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Fenced { name, token, .. } if name == "api" && *token == stale.token())
    );
    assert!(err.to_string().contains("no longer held"), "{err}");
    let err = paused.delete_fenced("certs/api.json", &stale).unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
    assert_eq!(
        a.load("certs/api.json").unwrap().as_deref(),
        Some(&b"{\"by\":\"web2\"}"[..])
    );
    // The stale lease's drop does not release the new holder's lock.
    drop(stale);
    assert!(matches!(a.lock("api"), Err(StoreError::Locked { .. })));
    drop(fresh);
    eprintln!("leases and fencing: {:?}", started.elapsed());
}

#[test]
fn calls_fail_cleanly_while_postgres_is_down_and_resume_after() {
    let started = Instant::now();
    let pg = Postgres::start();
    pg.create_database("outage");
    let key = DataKey::generate().unwrap();
    let s = node(&pg, "outage", "web1", &key, |o| {
        o.call_timeout = Duration::from_secs(3)
    });
    s.store("certs/www.json", b"before").unwrap();

    pg.stop();
    for _ in 0..3 {
        let err = s.load("certs/www.json").unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Database { .. } | StoreError::Unavailable { .. }
            ),
            "{err}"
        );
        assert!(s.store("certs/www.json", b"during").is_err());
        assert!(s.lock("www").is_err());
    }
    let down_for = Instant::now();
    pg.start_again();

    // The next call reconnects (bounded: a few tries while the server finishes starting).
    let mut value = None;
    for _ in 0..20 {
        match s.load("certs/www.json") {
            Ok(v) => {
                value = Some(v);
                break;
            }
            Err(e) => {
                eprintln!("after restart: {e}");
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    }
    assert_eq!(
        value,
        Some(Some(b"before".to_vec())),
        "no reconnect after the restart"
    );
    s.store("certs/www.json", b"after").unwrap();
    let lease = s.lock("www").unwrap();
    s.store_fenced("certs/www.json", b"fenced", &lease).unwrap();
    assert_eq!(s.load("certs/www.json").unwrap(), Some(b"fenced".to_vec()));
    eprintln!(
        "outage: {:?} in all, {:?} since restart",
        started.elapsed(),
        down_for.elapsed()
    );
}

/// `certkeeper check` with a PostgreSQL backend reaches the database, reports the schema and the
/// key ids of the sealed values, and creates nothing.
/// A TCP relay to `to` that, while `forward` is false, takes connections and never answers (a
/// database behind a partition that drops packets); connections made while forwarding are relayed.
fn silent_relay(to: u16, forward: Arc<std::sync::atomic::AtomicBool>) -> u16 {
    use std::net::{TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().take(64) {
            let Ok(conn) = conn else { continue };
            if !forward.load(std::sync::atomic::Ordering::SeqCst) {
                held.push(conn);
                continue;
            }
            let Ok(upstream) = TcpStream::connect(("127.0.0.1", to)) else {
                continue;
            };
            for (mut from, mut into) in [
                (conn.try_clone().unwrap(), upstream.try_clone().unwrap()),
                (upstream, conn),
            ] {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut into);
                    let _ = into.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
    port
}

/// A database that does not answer at all holds one call for the call timeout; after that calls
/// fail at once (the daemon's loop must not stall call after call), and a background attempt
/// reaches the database once it answers again.
#[test]
fn a_silent_database_fails_calls_at_once_and_is_reached_again_in_the_background() {
    let pg = Postgres::start();
    pg.create_database("silent");
    let forward = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let relay = silent_relay(pg.port, forward.clone());
    let key = DataKey::generate().unwrap();
    let s = node(&pg, "silent", "web1", &key, |o| {
        o.url = format!("postgresql://certkeeper@127.0.0.1:{relay}/silent?sslmode=disable");
        o.call_timeout = Duration::from_millis(1500);
    });

    let t = Instant::now();
    let err = s.load("certs/www.json").unwrap_err();
    assert!(t.elapsed() >= Duration::from_millis(1400), "{err}");
    assert!(err.to_string().contains("no answer within"), "{err}");
    for _ in 0..5 {
        let t = Instant::now();
        let err = s.store("certs/www.json", b"x").unwrap_err();
        assert!(
            t.elapsed() < Duration::from_millis(300),
            "a call waited {:?} on a silent database: {err}",
            t.elapsed()
        );
        assert!(
            err.to_string().contains("reconnecting in the background"),
            "{err}"
        );
    }

    forward.store(true, std::sync::atomic::Ordering::SeqCst);
    let t = Instant::now();
    let mut stored = s.store("certs/www.json", b"back");
    for _ in 0..60 {
        if stored.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
        stored = s.store("certs/www.json", b"back");
    }
    stored.unwrap_or_else(|e| panic!("not reached again within {:?}: {e}", t.elapsed()));
    assert_eq!(
        s.load("certs/www.json").unwrap().as_deref(),
        Some(&b"back"[..])
    );
}

#[test]
fn check_probes_the_database_and_changes_nothing() {
    use support::certkeeper::TestConfig;
    let pg = Postgres::start();
    pg.create_database("probe");
    let mut raw = [0u8; 32];
    openssl::rand::rand_bytes(&mut raw).unwrap();
    let key = DataKey::from_bytes(raw);
    let b64 = base64::engine::general_purpose::STANDARD;
    let config = |key_bytes: &[u8], password: &str| {
        let cfg = TestConfig::new()
            .tail(&format!(
                "[storage]\nbackend = \"postgres\"\nurl = \"{}\"\npassword_file = \"pg.pass\"\n\
                 encryption_key_file = \"storage.key\"\nnode = \"web1\"",
                pg.url("probe")
            ))
            .write();
        std::fs::write(cfg.dir().join("storage.key"), b64.encode(key_bytes)).unwrap();
        std::fs::write(cfg.dir().join("pg.pass"), format!("{password}\n")).unwrap();
        cfg
    };
    let check = |cfg: &TestConfig| {
        let out = cfg.run_sync(&["check"], Duration::from_secs(60));
        out.stdout
    };

    let cfg = config(&raw, PASSWORD);
    let out = check(&cfg);
    assert!(out.contains("OK   storage: PostgreSQL 1"), "{out}");
    assert!(out.contains("has no certkeeper schema yet"), "{out}");
    let schema_table = pg.psql_in("probe", "SELECT to_regclass('ck_schema_version') IS NULL");
    assert_eq!(schema_table.trim(), "t", "check created the schema");

    let s = node(&pg, "probe", "web1", &key, |_| {});
    s.store(
        "accounts/le-1/key.pem",
        b"-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let out = check(&cfg);
    assert!(
        out.contains(&format!("has schema version {} (current)", schema::CURRENT)),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "(id {}) seals private keys; 1 stored under it",
            key.id()
        )),
        "{out}"
    );

    let other = config(&[7u8; 32], PASSWORD);
    let out = check(&other);
    assert!(out.contains(&format!("FAIL storage: encrypted values in 127.0.0.1:{}/probe were sealed with another key (1 with key id {})", pg.port, key.id())), "{out}");

    let wrong_pw = config(&raw, "not-the-password");
    let out = check(&wrong_pw);
    assert!(out.contains("FAIL storage: connecting"), "{out}");
    assert!(out.contains("password authentication failed"), "{out}");
}

/// A node's config on database `db`: certificates `www` and `api` (status never asks a CA),
/// `[storage]` with the key files in `keys` (`storage.key` sealing; `previous` retired ones).
fn fleet_config(
    pg: &Postgres,
    db: &str,
    node: &str,
    keys: &std::path::Path,
    key_file: &str,
    previous: &[&str],
) -> support::certkeeper::TestConfig {
    use support::certkeeper::{CertSpec, IssuerSpec, TestConfig, toml_list};
    let previous: Vec<String> = previous
        .iter()
        .map(|f| keys.join(f).display().to_string())
        .collect();
    TestConfig::new()
        .issuer(IssuerSpec::new("le", "http://127.0.0.1:1/directory").solver_http01())
        .certificate(CertSpec::new("www", "le", &["www.example.com"]))
        .certificate(CertSpec::new("api", "le", &["api.example.com"]))
        .tail(&format!(
            "[storage]\nbackend = \"postgres\"\nurl = \"{}\"\npassword_file = \"{}\"\n\
             encryption_key_file = \"{}\"\nprevious_encryption_key_files = {}\nnode = \"{node}\"",
            pg.url(db),
            keys.join("pg.pass").display(),
            keys.join(key_file).display(),
            toml_list(&previous),
        ))
        .write()
}

/// Write `key` base64-encoded to `dir/file` and the test password to `dir/pg.pass`.
fn write_key_file(dir: &std::path::Path, file: &str, key: &[u8; 32]) {
    let b64 = base64::engine::general_purpose::STANDARD;
    std::fs::write(dir.join(file), b64.encode(key)).unwrap();
    std::fs::write(dir.join("pg.pass"), format!("{PASSWORD}\n")).unwrap();
}

/// `certkeeper status` on node web2 shows the issuance lease node web1 holds (holder and expiry,
/// in text and JSON, read with one query) and which node ordered the fleet's current pair;
/// it creates no schema on a database that has none.
#[test]
fn status_shows_lease_holder_and_ordering_node() {
    use certkeeper::store::shared::{self, SharedPair};
    let started = Instant::now();
    let pg = Postgres::start();
    pg.create_database("status");
    let keys = tempfile::tempdir().unwrap();
    let mut raw = [0u8; 32];
    openssl::rand::rand_bytes(&mut raw).unwrap();
    write_key_file(keys.path(), "storage.key", &raw);
    let web2 = fleet_config(&pg, "status", "web2", keys.path(), "storage.key", &[]);
    let status = |args: &[&str]| {
        let out = web2.run_sync(args, Duration::from_secs(60));
        out.assert_ok();
        out.stdout
    };

    // Before any node ran: no lease, no pair, and status created nothing.
    let out = status(&["status"]);
    assert!(out.contains("lease:       none"), "{out}");
    assert!(out.contains("fleet pair:  none yet"), "{out}");
    let schema_table = pg.psql_in("status", "SELECT to_regclass('ck_schema_version') IS NULL");
    assert_eq!(schema_table.trim(), "t", "status created the schema");

    // Node web1 holds www's issuance lease and ordered api's current pair.
    let web1 = node(&pg, "status", "web1", &DataKey::from_bytes(raw), |_| {});
    let lease = web1.lock("www").unwrap();
    let ordered_at = jiff::Timestamp::now();
    let pair = SharedPair {
        serial: "0a1b".into(),
        key_pem: "-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n".into(),
        chain_pem: "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n".into(),
        ordered_by: Some("web1".into()),
        ordered_at: Some(ordered_at),
    };
    assert!(shared::seed(&web1, "api", &pair).unwrap());

    let out = status(&["status"]);
    let www = &out[out.find("www:").unwrap()..];
    let api = &out[out.find("api:").unwrap()..out.find("www:").unwrap()];
    assert!(
        www.contains("lease:       held by node web1 since "),
        "{out}"
    );
    assert!(www.contains("unless renewed"), "{out}");
    assert!(api.contains("lease:       none"), "{out}");
    assert!(
        api.contains(&format!(
            "fleet pair:  serial 0a1b, ordered by node web1 at {}",
            ordered_at.strftime("%Y-%m-%d %H:%M:%S UTC")
        )),
        "{out}"
    );

    let json: serde_json::Value = serde_json::from_str(&status(&["status", "--json"])).unwrap();
    let by_name = |n: &str| {
        json.as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == n)
            .unwrap_or_else(|| panic!("{n} in {json}"))
            .clone()
    };
    let www = by_name("www");
    assert_eq!(www["fleet"]["node"], "web2", "{www}");
    assert_eq!(www["fleet"]["lease"]["holder"], "web1", "{www}");
    assert_eq!(www["fleet"]["lease"]["token"], lease.token(), "{www}");
    let expires: jiff::Timestamp = www["fleet"]["lease"]["expires_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let now = jiff::Timestamp::now();
    assert!(
        expires > now && expires < now + jiff::SignedDuration::from_mins(2),
        "{www}"
    );
    assert!(www["fleet"]["current"].is_null(), "{www}");
    let api = by_name("api");
    assert!(api["fleet"]["lease"].is_null(), "{api}");
    assert_eq!(api["fleet"]["current"]["ordered_by"], "web1", "{api}");
    assert_eq!(api["fleet"]["current"]["serial"], "0a1b", "{api}");

    // Released: gone from status at once.
    drop(lease);
    let out = status(&["status", "www"]);
    assert!(out.contains("lease:       none"), "{out}");
    eprintln!("status in a fleet: {:?}", started.elapsed());
}

/// Key rotation on a real PostgreSQL: the fleet's values sealed with the old key are re-sealed
/// with the new one by `certkeeper storage rotate-key` (idempotent, safe next to a node writing),
/// a node with only the new key reads every account and certificate key, a node with only the old
/// key is refused with what to do, `check` reports the keys, and the dump holds neither key.
#[test]
fn rotate_key_reseals_everything_and_refuses_the_old_key() {
    use certkeeper::store::postgres::crypto::CryptoError;
    use certkeeper::store::shared::{self, SharedPair};
    let started = Instant::now();
    let pg = Postgres::start();
    pg.create_database("rotate");
    let keys = tempfile::tempdir().unwrap();
    let (mut raw_old, mut raw_new) = ([0u8; 32], [0u8; 32]);
    openssl::rand::rand_bytes(&mut raw_old).unwrap();
    openssl::rand::rand_bytes(&mut raw_new).unwrap();
    write_key_file(keys.path(), "old.key", &raw_old);
    write_key_file(keys.path(), "new.key", &raw_new);
    let (old_key, new_key) = (DataKey::from_bytes(raw_old), DataKey::from_bytes(raw_new));

    // The fleet's state, sealed with the old key.
    let web1 = Arc::new(node(&pg, "rotate", "web1", &old_key, |_| {}));
    let (acct_pem, acct_der) = private_key_pem(false);
    let (cert_pem, cert_der) = private_key_pem(false);
    let (pair_pem, pair_der) = private_key_pem(false);
    AccountStore::new(web1.clone())
        .save_key("le-1", std::str::from_utf8(&acct_pem).unwrap())
        .unwrap();
    Ledger::new(web1.clone())
        .lock("www")
        .unwrap()
        .save_pending_key(&cert_pem)
        .unwrap();
    let pair = SharedPair {
        serial: "0c".into(),
        key_pem: String::from_utf8(pair_pem.clone()).unwrap(),
        chain_pem: "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n".into(),
        ordered_by: Some("web1".into()),
        ordered_at: None,
    };
    assert!(shared::seed(&*web1, "api", &pair).unwrap());

    // Every node gets the new key, the old one as previous: check says what is left to do.
    let rolled = fleet_config(&pg, "rotate", "web1", keys.path(), "new.key", &["old.key"]);
    let out = rolled.run_sync(&["check"], Duration::from_secs(60)).stdout;
    assert!(
        out.contains(&format!("OK   storage: 3 with key id {} still sealed with a previous key: run `certkeeper storage rotate-key`", old_key.id())),
        "{out}"
    );
    // A node already on the new key seals its writes with it (one value rotated "before the crash").
    let ahead = node(&pg, "rotate", "web2", &new_key, |o| {
        o.keyring = Keyring::new(new_key.clone()).with_retired(old_key.clone())
    });
    ahead.store("certs/early.key.pem", &cert_pem).unwrap();

    // A node with only the old key writes while the rotation runs: each of its writes either lands
    // before the switch (and is re-sealed) or is refused after it.
    let writer = {
        let web1 = web1.clone();
        let cert_pem = cert_pem.clone();
        std::thread::spawn(move || {
            for i in 0..3000 {
                if let Err(e) = web1.store(&format!("certs/w{i}.key.pem"), &cert_pem) {
                    return (i, Some(e));
                }
            }
            (3000, None)
        })
    };
    while web1.list("certs").unwrap().len() < 5 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = rolled.run_sync(&["storage", "rotate-key"], Duration::from_secs(120));
    out.assert_ok();
    let text = out.stdout.clone();
    assert!(
        text.contains(&format!("now seals with key id {}", new_key.id())),
        "{text}"
    );
    assert!(
        text.contains(&format!("rotated out: key id {}", old_key.id())),
        "{text}"
    );
    assert!(
        text.contains("every private key in the database is sealed with key id"),
        "{text}"
    );
    let (written, refused) = writer.join().unwrap();
    let refused = refused.expect("the old-key writer was never refused");
    assert!(
        matches!(
            &refused,
            StoreError::Sealed {
                source: CryptoError::RotatedOut(_),
                ..
            }
        ),
        "{refused}"
    );
    let msg = refused.to_string();
    assert!(msg.contains("was rotated out of the database"), "{msg}");
    assert!(msg.contains("set encryption_key_file to it"), "{msg}");
    eprintln!("old-key writer: {written} writes before it was refused");

    // Every value is under the new key; running it again re-seals nothing.
    let probe = node(&pg, "rotate", "probe", &new_key, |_| {})
        .probe()
        .unwrap();
    assert_eq!(
        probe.sealed_by_key.keys().collect::<Vec<_>>(),
        [new_key.id()],
        "{probe:?}"
    );
    let out = rolled.run_sync(&["storage", "rotate-key"], Duration::from_secs(120));
    out.assert_ok();
    assert!(
        out.stdout.contains("re-sealed 0 value(s)"),
        "{}",
        out.stdout
    );

    // A node with only the new key reads every account and certificate key.
    let fresh = node(&pg, "rotate", "web3", &new_key, |_| {});
    assert_eq!(
        fresh.load("accounts/le-1/key.pem").unwrap(),
        Some(acct_pem.clone())
    );
    assert_eq!(
        fresh.load("certs/www.key.pem").unwrap(),
        Some(cert_pem.clone())
    );
    assert_eq!(
        fresh.load("certs/early.key.pem").unwrap(),
        Some(cert_pem.clone())
    );
    assert_eq!(
        fresh.load("certs/w0.key.pem").unwrap(),
        Some(cert_pem.clone())
    );
    assert_eq!(shared::load(&fresh, "api").unwrap(), Some(pair.clone()));
    // One with only the old key cannot read, and is told what to do.
    let stale = node(&pg, "rotate", "web4", &old_key, |_| {});
    let err = stale.load("accounts/le-1/key.pem").unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("sealed with key id {}", new_key.id()))
            && err.to_string().contains("install the new key file"),
        "{err}"
    );
    let old_only = fleet_config(&pg, "rotate", "web4", keys.path(), "old.key", &[]);
    let out = old_only
        .run_sync(&["check"], Duration::from_secs(60))
        .stdout;
    assert!(
        out.contains(&format!(
            "FAIL storage: {} (key id {}) was rotated out of",
            keys.path().join("old.key").display(),
            old_key.id()
        )),
        "{out}"
    );
    // Its status says why it cannot read the fleet's pair, instead of "none".
    let out = old_only
        .run_sync(&["status", "api"], Duration::from_secs(60))
        .stdout;
    assert!(
        out.contains("fleet pair:  unreadable on this node:")
            && out.contains("install the new key file"),
        "{out}"
    );
    let out = rolled.run_sync(&["check"], Duration::from_secs(60)).stdout;
    assert!(
        out.contains(&format!("seals with key id {} since", new_key.id())),
        "{out}"
    );
    assert!(
        out.contains(&format!("previous key id {} seals nothing", old_key.id())),
        "{out}"
    );

    // Rotating from a node that lacks the sealing key, or back to the old key, is refused and
    // changes nothing.
    let record = || {
        pg.psql_in(
            "rotate",
            "SELECT value FROM ck_objects WHERE key = 'meta/sealing-key.json'",
        )
    };
    let before = record();
    let third = node(&pg, "rotate", "web5", &DataKey::generate().unwrap(), |_| {});
    let err = third.rotate_key().unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("sealed with key id {}", new_key.id())),
        "{err}"
    );
    let err = stale.rotate_key().unwrap_err();
    assert!(err.to_string().contains("was rotated out"), "{err}");
    assert_eq!(record(), before);

    // The dump: no PEM private key, no key material, neither data key.
    let dump = pg.dump("rotate");
    assert!(contains(&dump, b"ck_objects"), "the dump has the table");
    assert!(
        !contains(&dump, b"PRIVATE KEY"),
        "PEM private key in the dump"
    );
    let b64 = base64::engine::general_purpose::STANDARD;
    for (what, bytes) in [
        ("account key", &acct_der[..]),
        ("certificate key", &cert_der[..]),
        ("pair key", &pair_der[..]),
        ("old data key", &raw_old[..]),
        ("new data key", &raw_new[..]),
    ] {
        assert!(!contains(&dump, bytes), "raw {what}");
        assert!(!contains(&dump, hex(bytes).as_bytes()), "hex {what}");
        assert!(
            !contains(&dump, b64.encode(bytes).as_bytes()),
            "base64 {what}"
        );
    }
    eprintln!("key rotation: {:?}", started.elapsed());
}
