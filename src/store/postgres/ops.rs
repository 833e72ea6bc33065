//! The SQL of each storage operation, run by the worker on its connection.

use std::time::Duration;

use tokio_postgres::{Client, Transaction};

use super::super::StoreError;
use super::super::storage::{LeaseInfo, check_key};
use super::crypto::Keyring;
use super::keys::{self, Resealed, SealingKey};

/// What a call asks of the database (keys are checked by the caller).
#[derive(Debug)]
pub(super) enum Request {
    Load(String),
    Store {
        key: String,
        value: Vec<u8>,
        /// `(lock name, token)` of the lease the write is made under.
        fence: Option<(String, u64)>,
    },
    Delete {
        key: String,
        /// `(lock name, token)` of the lease the removal is made under.
        fence: Option<(String, u64)>,
    },
    List(String),
    Rename {
        from: String,
        to: String,
    },
    Lock(String),
    Renew {
        name: String,
        token: u64,
    },
    Release {
        name: String,
        token: u64,
    },
    SchemaVersion,
    Probe,
    Leases,
    /// Make this node's key the sealing key ([`keys::adopt`]).
    AdoptKey,
    /// The key id of every sealed value.
    SealedKeys,
    /// Re-seal one value with this node's key.
    Reseal(String),
}

/// The answer to a [`Request`].
#[derive(Debug)]
pub(super) enum Response {
    Done,
    Value(Option<Vec<u8>>),
    Names(Vec<String>),
    /// The new token, or the holder that has the lock.
    Lock(Result<u64, String>),
    /// Whether a renewal found the lease still held.
    Held(bool),
    Version(i32),
    Probe(Probe),
    Leases(Vec<LeaseInfo>),
    /// The sealing key record before and after.
    Adopted(Option<SealingKey>, SealingKey),
    /// `(storage key, key id)` of every sealed value.
    Sealed(Vec<(String, String)>),
    Resealed(Resealed),
}

/// What `certkeeper check` reports about the database (read without changing anything).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The server's `server_version`.
    pub server_version: String,
    /// The schema version found (0: not created yet).
    pub schema_version: i32,
    /// How many sealed values name each key id.
    pub sealed_by_key: std::collections::BTreeMap<String, u64>,
    /// The sealing key the last `storage rotate-key` recorded (`None`: never rotated).
    pub sealing: Option<SealingKey>,
}

/// What every operation needs besides the connection.
#[derive(Debug)]
pub(super) struct Settings {
    /// `host:port/dbname`, for messages.
    pub target: String,
    /// This node's name, recorded as lock holder and writer.
    pub node: String,
    pub keyring: Keyring,
    pub lease_ttl: Duration,
    /// The longest one call may take.
    pub call_timeout: Duration,
}

impl Settings {
    pub(super) fn db(
        &self,
        action: impl Into<String>,
    ) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
        let (action, target) = (action.into(), self.target.clone());
        move |source| StoreError::Database {
            action,
            target,
            source,
        }
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.lease_ttl.as_millis()).unwrap_or(i64::MAX)
    }
}

/// Run `req` on `client`.
pub(super) async fn run(
    client: &mut Client,
    s: &Settings,
    req: Request,
) -> Result<Response, StoreError> {
    match req {
        Request::Load(key) => load(client, s, &key).await.map(Response::Value),
        Request::Store { key, value, fence } => {
            store(client, s, &key, &value, fence).await?;
            Ok(Response::Done)
        }
        Request::Delete { key, fence } => {
            delete(client, s, &key, fence).await?;
            Ok(Response::Done)
        }
        Request::List(prefix) => list(client, s, &prefix).await.map(Response::Names),
        Request::Rename { from, to } => {
            rename(client, s, &from, &to).await?;
            Ok(Response::Done)
        }
        Request::Lock(name) => lock(client, s, &name).await.map(Response::Lock),
        Request::Renew { name, token } => {
            let n = client
                .execute(
                    "UPDATE ck_locks SET expires_at = now() + $3::bigint * interval '1 millisecond'
                     WHERE name = $1 AND token = $2 AND expires_at > now()",
                    &[&name, &as_i64(token), &s.ttl_ms()],
                )
                .await
                .map_err(s.db(format!("renewing the lease on {name}")))?;
            Ok(Response::Held(n == 1))
        }
        Request::Release { name, token } => {
            client
                .execute(
                    "DELETE FROM ck_locks WHERE name = $1 AND token = $2",
                    &[&name, &as_i64(token)],
                )
                .await
                .map_err(s.db(format!("releasing the lease on {name}")))?;
            Ok(Response::Done)
        }
        Request::SchemaVersion => super::schema::version(client)
            .await
            .map(Response::Version)
            .map_err(s.db("reading the schema version")),
        Request::Probe => probe(client)
            .await
            .map(Response::Probe)
            .map_err(s.db("probing the database")),
        Request::Leases => leases(client, s).await.map(Response::Leases),
        Request::AdoptKey => keys::adopt(client, s)
            .await
            .map(|(before, after)| Response::Adopted(before, after)),
        Request::SealedKeys => keys::sealed(client, s).await.map(Response::Sealed),
        Request::Reseal(key) => keys::reseal(client, s, &key).await.map(Response::Resealed),
    }
}

/// Every unexpired lease, in one query; none when the schema is not created yet (a reader opened
/// without migrating).
async fn leases(client: &Client, s: &Settings) -> Result<Vec<LeaseInfo>, StoreError> {
    let rows = client
        .query(
            "SELECT name, holder, token,
                 (extract(epoch FROM acquired_at) * 1000000)::bigint,
                 (extract(epoch FROM expires_at) * 1000000)::bigint
             FROM ck_locks WHERE expires_at > now() ORDER BY name",
            &[],
        )
        .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) if no_schema(&e) => return Ok(Vec::new()),
        Err(e) => return Err(s.db("reading the leases")(e)),
    };
    let at = |us: i64| jiff::Timestamp::from_microsecond(us).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    Ok(rows
        .iter()
        .map(|r| LeaseInfo {
            name: r.get(0),
            holder: r.get(1),
            token: u64::try_from(r.get::<_, i64>(2)).unwrap_or(0),
            acquired_at: at(r.get(3)),
            expires_at: at(r.get(4)),
        })
        .collect())
}

async fn probe(client: &Client) -> Result<Probe, tokio_postgres::Error> {
    let server_version: String = client.query_one("SHOW server_version", &[]).await?.get(0);
    let schema_version = super::schema::version(client).await?;
    let mut sealed_by_key = std::collections::BTreeMap::new();
    let mut sealing = None;
    if schema_version > 0 {
        sealing = keys::read(client).await?;
        // The header of each sealed value holds its key id (see crypto).
        let rows = client
            .query(
                "SELECT substring(value from 1 for 64) FROM ck_objects WHERE sealed",
                &[],
            )
            .await?;
        for row in rows {
            let head: Vec<u8> = row.get(0);
            let id = super::crypto::key_id_of(&head).unwrap_or_else(|| keys::MALFORMED.into());
            *sealed_by_key.entry(id).or_insert(0u64) += 1;
        }
    }
    Ok(Probe {
        server_version,
        schema_version,
        sealed_by_key,
        sealing,
    })
}

fn as_i64(token: u64) -> i64 {
    i64::try_from(token).unwrap_or(i64::MAX)
}

/// Whether the value under `key` is a private key, stored only sealed: account keys
/// (`accounts/<id>/key.pem`, `key.next.pem`), certificate keys (`certs/<name>.key.pem`), a fleet's
/// current pairs (`pairs/<name>.json`), and any
/// value that looks like a PEM private key whatever its name.
pub(super) fn is_secret(key: &str, value: &[u8]) -> bool {
    let last = key.rsplit('/').next().unwrap_or(key);
    key.starts_with("pairs/")
        || last == "key.pem"
        || last == "key.next.pem"
        || last.ends_with(".key.pem")
        || value.windows(16).any(|w| w == b"PRIVATE KEY-----")
}

/// The schema is not created yet: a reader opened without migrating (`status`) reads nothing, as
/// from an empty state directory.
fn no_schema(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE)
}

async fn load(client: &Client, s: &Settings, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let row = match client
        .query_opt(
            "SELECT value, sealed, version FROM ck_objects WHERE key = $1",
            &[&key],
        )
        .await
    {
        Err(e) if no_schema(&e) => return Ok(None),
        other => other.map_err(s.db(format!("loading {key}")))?,
    };
    let Some(row) = row else { return Ok(None) };
    let (value, sealed, version): (Vec<u8>, bool, i64) = (row.get(0), row.get(1), row.get(2));
    if !sealed {
        return Ok(Some(value));
    }
    s.keyring
        .open(key, version, &value)
        .map(Some)
        .map_err(|source| StoreError::Sealed {
            key: key.to_string(),
            source,
        })
}

/// Seal `value` for `key` at `version` when it is a secret; the bytes to store and whether sealed.
fn seal_for(
    s: &Settings,
    key: &str,
    version: i64,
    value: &[u8],
) -> Result<(Vec<u8>, bool), StoreError> {
    if !is_secret(key, value) {
        return Ok((value.to_vec(), false));
    }
    let sealed = s
        .keyring
        .seal(key, version, value)
        .map_err(|source| StoreError::Sealed {
            key: key.to_string(),
            source,
        })?;
    Ok((sealed, true))
}

async fn put(
    tx: &Transaction<'_>,
    s: &Settings,
    key: &str,
    value: &[u8],
) -> Result<(), StoreError> {
    let version: i64 = tx
        .query_one("SELECT nextval('ck_version')", &[])
        .await
        .map_err(s.db(format!("storing {key}")))?
        .get(0);
    if is_secret(key, value) {
        keys::check_sealing(tx, s, key).await?;
    }
    let (bytes, sealed) = seal_for(s, key, version, value)?;
    tx.execute(
        "INSERT INTO ck_objects (key, value, sealed, version, updated_by) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, sealed = EXCLUDED.sealed,
             version = EXCLUDED.version, updated_at = now(), updated_by = EXCLUDED.updated_by",
        &[&key, &bytes, &sealed, &version, &s.node],
    )
    .await
    .map_err(s.db(format!("storing {key}")))?;
    Ok(())
}

async fn store(
    client: &mut Client,
    s: &Settings,
    key: &str,
    value: &[u8],
    fence: Option<(String, u64)>,
) -> Result<(), StoreError> {
    let tx = client
        .transaction()
        .await
        .map_err(s.db(format!("storing {key}")))?;
    check_fence(&tx, s, key, fence).await?;
    put(&tx, s, key, value).await?;
    tx.commit().await.map_err(s.db(format!("committing {key}")))
}

async fn delete(
    client: &mut Client,
    s: &Settings,
    key: &str,
    fence: Option<(String, u64)>,
) -> Result<(), StoreError> {
    let tx = client
        .transaction()
        .await
        .map_err(s.db(format!("deleting {key}")))?;
    check_fence(&tx, s, key, fence).await?;
    tx.execute("DELETE FROM ck_objects WHERE key = $1", &[&key])
        .await
        .map_err(s.db(format!("deleting {key}")))?;
    tx.commit()
        .await
        .map_err(s.db(format!("committing the removal of {key}")))
}

/// Within `tx`, refuse ([`StoreError::Fenced`]) unless the lease `fence` is still held and
/// unexpired. FOR SHARE: a node taking the lock over (an UPDATE of the row) waits until `tx`
/// commits, so no change lands after a newer holder got its token.
async fn check_fence(
    tx: &Transaction<'_>,
    s: &Settings,
    key: &str,
    fence: Option<(String, u64)>,
) -> Result<(), StoreError> {
    let Some((name, token)) = fence else {
        return Ok(());
    };
    let held = tx
        .query_opt(
            "SELECT 1 FROM ck_locks WHERE name = $1 AND token = $2 AND expires_at > now() FOR SHARE",
            &[&name, &as_i64(token)],
        )
        .await
        .map_err(s.db(format!("checking the lease on {name}")))?;
    if held.is_none() {
        return Err(StoreError::Fenced {
            key: key.to_string(),
            name,
            token,
        });
    }
    Ok(())
}

async fn list(client: &Client, s: &Settings, prefix: &str) -> Result<Vec<String>, StoreError> {
    let under = format!("{prefix}/");
    let from = i32::try_from(under.len() + 1).unwrap_or(i32::MAX);
    let rows = match client
        .query(
            "SELECT DISTINCT split_part(substr(key, $2), '/', 1) FROM ck_objects
             WHERE starts_with(key, $1)",
            &[&under, &from],
        )
        .await
    {
        Err(e) if no_schema(&e) => return Ok(Vec::new()),
        other => other.map_err(s.db(format!("listing {prefix}")))?,
    };
    let mut names: Vec<String> = rows
        .iter()
        .map(|r| r.get::<_, String>(0))
        .filter(|n| super::super::storage::check_name(n).is_ok())
        .collect();
    names.sort();
    Ok(names)
}

async fn rename(client: &mut Client, s: &Settings, from: &str, to: &str) -> Result<(), StoreError> {
    let (from_dir, to_dir) = (format!("{from}/"), format!("{to}/"));
    let tx = client
        .transaction()
        .await
        .map_err(s.db(format!("moving {from}")))?;
    let rows = tx
        .query(
            "SELECT key, value, sealed, version FROM ck_objects
             WHERE key = $1 OR starts_with(key, $2) ORDER BY key FOR UPDATE",
            &[&from, &from_dir],
        )
        .await
        .map_err(s.db(format!("moving {from}")))?;
    let io = |kind: std::io::ErrorKind, what: &str| {
        StoreError::io("moving", format!("{what} ({})", s.target), kind.into())
    };
    if rows.is_empty() {
        return Err(io(std::io::ErrorKind::NotFound, from));
    }
    let taken = tx
        .query_opt(
            "SELECT 1 FROM ck_objects WHERE key = $1 OR starts_with(key, $2) LIMIT 1",
            &[&to, &to_dir],
        )
        .await
        .map_err(s.db(format!("moving {from}")))?;
    if taken.is_some() {
        return Err(io(std::io::ErrorKind::AlreadyExists, to));
    }
    for row in rows {
        let (key, value, sealed, version): (String, Vec<u8>, bool, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let new_key = format!("{to}{}", &key[from.len()..]);
        check_key(&new_key)?;
        // A sealed value is bound to its name: open it under the old name, seal it anew.
        let plain = if sealed {
            s.keyring
                .open(&key, version, &value)
                .map_err(|source| StoreError::Sealed {
                    key: key.clone(),
                    source,
                })?
        } else {
            value
        };
        put(&tx, s, &new_key, &plain).await?;
        tx.execute("DELETE FROM ck_objects WHERE key = $1", &[&key])
            .await
            .map_err(s.db(format!("moving {key}")))?;
    }
    tx.commit().await.map_err(s.db(format!("moving {from}")))
}

async fn lock(
    client: &Client,
    s: &Settings,
    name: &str,
) -> Result<Result<u64, String>, StoreError> {
    // A free name gets a row; a row whose lease expired is taken over; a live row stays. Either
    // way a new token from the one sequence, so tokens grow across all nodes.
    let row = client
        .query_opt(
            "INSERT INTO ck_locks (name, token, holder, expires_at)
             VALUES ($1, nextval('ck_fence'), $2, now() + $3::bigint * interval '1 millisecond')
             ON CONFLICT (name) DO UPDATE SET token = EXCLUDED.token, holder = EXCLUDED.holder,
                 acquired_at = now(), expires_at = EXCLUDED.expires_at
             WHERE ck_locks.expires_at <= now()
             RETURNING token",
            &[&name, &s.node, &s.ttl_ms()],
        )
        .await
        .map_err(s.db(format!("taking the lock {name}")))?;
    if let Some(row) = row {
        let token: i64 = row.get(0);
        return Ok(Ok(u64::try_from(token).unwrap_or(0)));
    }
    let holder = client
        .query_opt("SELECT holder FROM ck_locks WHERE name = $1", &[&name])
        .await
        .map_err(s.db(format!("reading the holder of lock {name}")))?
        .map_or_else(|| "another node".to_string(), |r| r.get::<_, String>(0));
    Ok(Err(holder))
}

#[cfg(test)]
mod tests {
    use super::is_secret;

    #[test]
    fn private_keys_are_secrets_by_name_or_content() {
        for key in [
            "accounts/le-1/key.pem",
            "accounts/le-1/key.next.pem",
            "certs/www.key.pem",
        ] {
            assert!(is_secret(key, b"anything"), "{key}");
        }
        for key in ["accounts/le-1/account.json", "certs/www.json", "keys.pem"] {
            assert!(!is_secret(key, b"{}"), "{key}");
        }
        let pem = b"-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n";
        assert!(is_secret("certs/www.json", pem));
    }
}
