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
//! closed or a call timed out. On every new connection it migrates the schema
//! ([`schema::migrate`]: versioned, idempotent, serialized by an advisory lock).
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

pub mod crypto;
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
use super::storage::{Lease, Storage, check_key, check_name};
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
        let mut opts = Self::new(
            pg.url.clone(),
            pg.node.clone(),
            Keyring::new(pg.encryption_key.clone()),
        );
        opts.password = pg.password.as_ref().map(|p| p.expose().to_string());
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
}
