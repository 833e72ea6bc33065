//! The PostgreSQL storage backend: the shared store of a fleet (several hosts, one set of
//! certificates). The file tree ([`super::FileStorage`]) stays the embedded default.
//!
//! **Sync over async.** [`Storage`] is synchronous (the file backend blocks on the file system)
//! and is called from inside the daemon's tokio runtime. [`PgStorage`] therefore owns a worker
//! thread with its own single-threaded tokio runtime, which owns the one connection
//! (tokio-postgres, TLS through OpenSSL via postgres-openssl) and serves calls one at a time from
//! a channel; a caller blocks its own thread on the answer, just as it would on a file write. The
//! worker never runs the caller's runtime, so blocking cannot deadlock it; every call is bounded
//! ([`PgOptions::call_timeout`], connecting included), so a caller is never stuck behind an
//! unreachable database: it gets a [`StoreError`] and retries as for any store error. Async code
//! that must not block a runtime thread at all can wrap calls in `spawn_blocking`.
//!
//! **Reconnecting.** The worker connects on the first call, not at [`PgStorage::open`] (a node
//! whose database is down still starts), and again on the next call whenever the connection was
//! closed. A database that does not answer at all (packets dropped, not refused) holds one call
//! for the call timeout; from then on calls fail at once while a background task reconnects
//! (backing off up to 30 s), so a partition never stalls the daemon call after call. On every new
//! connection it migrates the schema ([`schema::migrate`]: versioned, idempotent, serialized by an
//! advisory lock).
//!
//! **Locks are leases** in `ck_locks`: a row per held lock with the holder node, an expiry the
//! holder moves forward every third of [`PgOptions::lease_ttl`] from a background task on the
//! worker while the [`Lease`] lives, and a fencing token from one sequence, so it grows with
//! every acquisition on every node. A lock whose lease expired (its holder died or paused) is
//! taken over by the next node. Dropping the [`Lease`] deletes the row. [`Storage::store_fenced`]
//! and [`Storage::delete_fenced`] check, in the same transaction as the change and with the row
//! share-locked, that the lease is still this holder's and unexpired; a stale holder's change is
//! refused with [`StoreError::Fenced`]. `lock_wait` polls (20 ms, growing to 250 ms) for at most two lease
//! lifetimes plus [`PgOptions::call_timeout`], after which the holder is treated as stuck
//! ([`StoreError::Locked`]).
//!
//! **HTTP-01 tokens** ([`tokens::PgTokens`]) have a connection of their own, kept open with
//! `LISTEN ck_tokens` by every node that answers challenges; see [`tokens`].
//!
//! **Secrets at rest.** Values that hold private keys ([`ops::is_secret`]) are sealed with
//! AES-256-GCM ([`crypto`]) before they leave the process; the database never sees them in
//! clear, and a dump holds no usable key.
//!
//! **Key rotation** ([`keys`], `certkeeper storage rotate-key`): the database records which key
//! id seals (the unsealed object [`keys::SEALING_KEY`], so no schema change) and which ids were
//! rotated out; [`PgStorage::rotate_key`] switches it to this node's key and re-seals every value
//! sealed with another key, one transaction per value. A node whose key was rotated out is refused
//! when it seals (it would undo the rotation); `previous_encryption_key_files` ([`Keyring`]'s
//! retired keys) keeps nodes reading old values during the roll.
//!
//! **Leases for `certkeeper status`**: [`Storage::leases`] reads every unexpired row of
//! `ck_locks` in one query.
//!
//! **What a network partition can and cannot cause.** Lease expiry is decided by the database's
//! clock alone (`now()` in the same statement), so the nodes' clocks do not matter. A node cut off
//! from the database keeps serving the files it has installed and never deletes them; it cannot
//! order (taking a lease needs the database) nor install a newer pair (it cannot read one), and
//! it retries with backoff until the database answers again. If it held a certificate's lease
//! when cut off, the lease expires after `[storage] lease` and another node takes over with a
//! larger fencing token: it resumes the order recorded in the shared state (the same order at the
//! CA) or, when the cut-off node had created its order but could not record it yet, creates a new
//! one. The cut-off node may still finish its own order at the CA, but its writes are fenced: the
//! pair it obtained becomes neither the fleet's pair nor installed on that node. So at worst a
//! partition costs a **duplicate order** (and a certificate that is thrown away, which counts
//! against the CA's duplicate-certificate limit), never a torn or mismatched pair: the fleet's
//! pair is one value (key, chain and serial together) written only under a valid lease, every
//! node verifies it (key matches the leaf, names, chain) before its atomic switch, and never
//! replaces a newer certificate with an older one. (On a node's very first install the four
//! file names appear one after the other, each pointing into the complete pair.) What a partition can also cause: for up to
//! the nodes' next look at the shared pair (at most 5 minutes in the daemon), nodes serve
//! different certificates, each a complete valid pair; and a node cut off for longer than the
//! remaining lifetime of its certificates serves them until they expire, since only the fleet
//! renews them. Tested in `tests/fleet_faults.rs` (kill -9 of the holder mid-order, PostgreSQL
//! stopped for 30 s).

pub mod crypto;
pub mod keys;
mod lease;
mod ops;
pub mod schema;
pub mod tokens;
mod worker;

use std::path::PathBuf;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openssl::ssl::{SslConnector, SslMethod};
use postgres_openssl::MakeTlsConnector;

use super::StoreError;
use super::storage::{Lease, LeaseInfo, Storage, check_key, check_name};
use crypto::Keyring;
pub use ops::Probe;
use ops::{Request, Response, Settings};
pub use tokens::PgTokens;
use worker::{Connector, Worker};

/// Lease lifetime by default: a node that dies holds a certificate's lock this long at most.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);
/// The longest one database call may take by default (connecting included).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How to open a [`PgStorage`] (`Debug` shows no password).
#[derive(Clone)]
pub struct PgOptions {
    /// `postgresql://user@host:port/dbname[?sslmode=...]` (a password in it is not read from
    /// here by the config, but the driver would accept it).
    pub url: String,
    /// The password (from `password_file`); `None`: `PGPASSWORD`, then none.
    pub password: Option<String>,
    /// This node's name: lock holder and writer in the tables.
    pub node: String,
    /// The key that seals private keys, and retired keys that still open.
    pub keyring: Keyring,
    /// How long a lease lives without renewal.
    pub lease_ttl: Duration,
    /// Renew held leases in the background (always, except to simulate a paused node in tests).
    pub renew_leases: bool,
    /// The longest one call may take.
    pub call_timeout: Duration,
    /// Create and migrate the schema on connecting; `false` for a probe that changes nothing
    /// (`certkeeper check`), whose other calls then fail on a database without the schema.
    pub migrate: bool,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "[redacted]"))
            .field("node", &self.node)
            .field("keyring", &self.keyring)
            .field("lease_ttl", &self.lease_ttl)
            .field("renew_leases", &self.renew_leases)
            .field("call_timeout", &self.call_timeout)
            .field("migrate", &self.migrate)
            .finish()
    }
}

impl PgOptions {
    /// Options with the defaults.
    pub fn new(url: impl Into<String>, node: impl Into<String>, keyring: Keyring) -> Self {
        Self {
            url: url.into(),
            password: None,
            node: node.into(),
            keyring,
            lease_ttl: DEFAULT_LEASE_TTL,
            renew_leases: true,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            migrate: true,
        }
    }

    /// Options for the `[storage]` PostgreSQL settings of the config.
    pub fn from_config(pg: &crate::config::PostgresConfig) -> Self {
        let keyring = pg
            .previous_encryption_keys
            .iter()
            .fold(Keyring::new(pg.encryption_key.clone()), |ring, (_, k)| {
                ring.with_retired(k.clone())
            });
        let mut opts = Self::new(pg.url.clone(), pg.node.clone(), keyring);
        opts.password = pg.password.as_ref().map(|p| p.expose().to_string());
        opts.lease_ttl = pg.lease;
        opts
    }
}

/// The PostgreSQL backend (see the module docs). Cheap to clone; clones share the worker.
#[derive(Clone)]
pub struct PgStorage {
    worker: Worker,
    renew_leases: bool,
}

impl std::fmt::Debug for PgStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStorage")
            .field("target", &self.worker.settings.target)
            .field("node", &self.worker.settings.node)
            .finish_non_exhaustive()
    }
}

impl PgStorage {
    /// Parse the options and start the worker; the database is first contacted by the first call.
    pub fn open(opts: PgOptions) -> Result<Self, StoreError> {
        let (connector, target) = connector(&opts)?;
        let settings = Arc::new(Settings {
            target,
            node: opts.node,
            keyring: opts.keyring,
            lease_ttl: opts.lease_ttl,
            call_timeout: opts.call_timeout,
        });
        Ok(Self {
            worker: Worker::spawn(connector, settings)?,
            renew_leases: opts.renew_leases,
        })
    }

    /// The database, `host:port/dbname`.
    pub fn target(&self) -> &str {
        &self.worker.settings.target
    }

    /// Connect (migrating the schema) and return its version: what `certkeeper check` probes.
    pub fn schema_version(&self) -> Result<i32, StoreError> {
        match self
            .worker
            .call("reading the schema version", Request::SchemaVersion)?
        {
            Response::Version(v) => Ok(v),
            other => Err(self.unexpected(other)),
        }
    }

    /// The server version, the schema version and the key ids of the sealed values, read without
    /// changing anything when opened with `migrate = false`: what `certkeeper check` reports.
    pub fn probe(&self) -> Result<Probe, StoreError> {
        match self.worker.call("probing the database", Request::Probe)? {
            Response::Probe(p) => Ok(p),
            other => Err(self.unexpected(other)),
        }
    }

    /// The id of the key that seals.
    pub fn key_id(&self) -> &str {
        self.worker.settings.keyring.current_id()
    }

    /// Rotate the database's encryption key to this node's `encryption_key_file`: record it as the
    /// sealing key (the keys before it are rotated out), then re-seal every value sealed with
    /// another key, one transaction per value (see [`keys`]). Idempotent: run again after a crash
    /// or a failure, it re-seals what is left. A value that cannot be opened is reported, not
    /// fatal; a database error stops the rotation (run it again).
    pub fn rotate_key(&self) -> Result<keys::Rotation, StoreError> {
        let (before, after) = match self
            .worker
            .call("switching the sealing key", Request::AdoptKey)?
        {
            Response::Adopted(before, after) => (before, after),
            other => return Err(self.unexpected(other)),
        };
        let all = match self
            .worker
            .call("listing the sealed values", Request::SealedKeys)?
        {
            Response::Sealed(all) => all,
            other => return Err(self.unexpected(other)),
        };
        let mut rotation = keys::Rotation {
            target: self.target().to_string(),
            before,
            after,
            resealed: 0,
            current: 0,
            failed: Vec::new(),
        };
        for (key, id) in all {
            if id == self.key_id() {
                rotation.current += 1;
                continue;
            }
            match self.worker.call("re-sealing", Request::Reseal(key.clone())) {
                Ok(Response::Resealed(keys::Resealed::Done)) => rotation.resealed += 1,
                Ok(Response::Resealed(keys::Resealed::Current)) => rotation.current += 1,
                Ok(Response::Resealed(keys::Resealed::Gone)) => {}
                Ok(other) => return Err(self.unexpected(other)),
                Err(StoreError::Sealed { source, .. }) => {
                    rotation.failed.push((key, source.to_string()));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(rotation)
    }

    fn unexpected(&self, r: Response) -> StoreError {
        StoreError::Unavailable {
            action: "talking to the storage worker".into(),
            target: self.target().to_string(),
            reason: format!("unexpected answer {r:?}"),
        }
    }

    fn done(&self, action: &str, req: Request) -> Result<(), StoreError> {
        match self.worker.call(action, req)? {
            Response::Done => Ok(()),
            other => Err(self.unexpected(other)),
        }
    }

    fn try_lock(&self, name: &str) -> Result<Result<Lease, String>, StoreError> {
        check_name(name)?;
        match self
            .worker
            .call("taking a lock", Request::Lock(name.to_string()))?
        {
            Response::Lock(Ok(token)) => {
                let guard =
                    lease::PgLease::new(self.worker.clone(), name, token, self.renew_leases);
                Ok(Ok(Lease::new(name, token, Box::new(guard))))
            }
            Response::Lock(Err(holder)) => Ok(Err(holder)),
            other => Err(self.unexpected(other)),
        }
    }

    fn locked(&self, name: &str, holder: &str) -> StoreError {
        StoreError::Locked {
            name: name.to_string(),
            path: PathBuf::from(format!(
                "'{name}' in {}, held by node {holder}",
                self.target()
            )),
        }
    }
}

/// How to reach the database of `opts`, and its `host:port/dbname` for messages.
fn connector(opts: &PgOptions) -> Result<(Connector, String), StoreError> {
    let url_error = |reason: String| StoreError::Schema {
        target: "[storage] url".into(),
        reason,
    };
    let mut config = tokio_postgres::Config::from_str(&opts.url)
        .map_err(|e| url_error(format!("cannot parse the url: {}", error_text(&e))))?;
    if let Some(p) = opts
        .password
        .clone()
        .or_else(|| std::env::var("PGPASSWORD").ok())
    {
        config.password(p);
    }
    config.application_name(format!("certkeeper {}", opts.node));
    config.connect_timeout(opts.call_timeout);
    let target = target_of(&config);
    let tls = SslConnector::builder(SslMethod::tls())
        .map(|b| MakeTlsConnector::new(b.build()))
        .map_err(StoreError::ssl("setting up TLS to the database"))?;
    let connector = Connector {
        config,
        tls,
        call_timeout: opts.call_timeout,
        migrate: opts.migrate,
    };
    Ok((connector, target))
}

/// A driver error in words: its kind, then the server's message (severity, text, detail, hint) or
/// the chain of causes (the driver's own `Display` stops at "db error").
pub fn error_text(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{}: {}", db.severity(), db.message());
        if let Some(d) = db.detail() {
            s.push_str(&format!(" ({d})"));
        }
        if let Some(h) = db.hint() {
            s.push_str(&format!("; hint: {h}"));
        }
        return s;
    }
    let mut s = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        s.push_str(&format!(": {c}"));
        cause = c.source();
    }
    s
}

fn target_of(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    format!("{host}:{port}/{db}")
}

impl Storage for PgStorage {
    fn load(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        check_key(key)?;
        match self
            .worker
            .call("loading", Request::Load(key.to_string()))?
        {
            Response::Value(v) => Ok(v),
            other => Err(self.unexpected(other)),
        }
    }

    fn store(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        check_key(key)?;
        let req = Request::Store {
            key: key.to_string(),
            value: value.to_vec(),
            fence: None,
        };
        self.done("storing", req)
    }

    fn store_fenced(&self, key: &str, value: &[u8], lease: &Lease) -> Result<(), StoreError> {
        check_key(key)?;
        let req = Request::Store {
            key: key.to_string(),
            value: value.to_vec(),
            fence: Some((lease.name().to_string(), lease.token())),
        };
        self.done("storing under a lease", req)
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        check_key(key)?;
        let req = Request::Delete {
            key: key.to_string(),
            fence: None,
        };
        self.done("deleting", req)
    }

    fn delete_fenced(&self, key: &str, lease: &Lease) -> Result<(), StoreError> {
        check_key(key)?;
        let req = Request::Delete {
            key: key.to_string(),
            fence: Some((lease.name().to_string(), lease.token())),
        };
        self.done("deleting under a lease", req)
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        check_key(prefix)?;
        match self
            .worker
            .call("listing", Request::List(prefix.to_string()))?
        {
            Response::Names(n) => Ok(n),
            other => Err(self.unexpected(other)),
        }
    }

    fn rename_prefix(&self, from: &str, to: &str) -> Result<(), StoreError> {
        check_key(from)?;
        check_key(to)?;
        let req = Request::Rename {
            from: from.to_string(),
            to: to.to_string(),
        };
        self.done("moving", req)
    }

    fn lock(&self, name: &str) -> Result<Lease, StoreError> {
        self.try_lock(name)?
            .map_err(|holder| self.locked(name, &holder))
    }

    fn lock_wait(&self, name: &str) -> Result<Lease, StoreError> {
        let settings = &self.worker.settings;
        let deadline = Instant::now() + settings.lease_ttl * 2 + settings.call_timeout;
        let mut pause = Duration::from_millis(20);
        loop {
            match self.try_lock(name)? {
                Ok(lease) => return Ok(lease),
                Err(holder) if Instant::now() >= deadline => {
                    return Err(self.locked(name, &holder));
                }
                Err(_) => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(250));
                }
            }
        }
    }

    fn describe(&self, key: &str) -> String {
        format!("{key} in PostgreSQL {}", self.target())
    }

    fn leases(&self) -> Result<Vec<LeaseInfo>, StoreError> {
        match self.worker.call("reading the leases", Request::Leases)? {
            Response::Leases(l) => Ok(l),
            other => Err(self.unexpected(other)),
        }
    }
}
