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
