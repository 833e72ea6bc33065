//! The schema: created and migrated by certkeeper itself, versioned in `ck_schema_version`.
//!
//! Each migration runs once, in order, in one transaction together with its row in
//! `ck_schema_version`; a transaction-scoped advisory lock makes nodes that start at the same
//! time migrate one after the other (the second finds nothing left to do). A database migrated by
//! a newer certkeeper (a version this build does not know) is refused rather than guessed at.
//!
//! Tables:
//! - `ck_objects`: one row per storage key; `value` is the blob, or the sealed blob when `sealed`
//!   (see [`super::crypto`]); `version` comes from `ck_version` and is new on every write (it is
//!   part of a sealed value's associated data).
//! - `ck_locks`: one row per held lease: the holder's node, the fencing `token` (from the sequence
//!   `ck_fence`, so it grows with every acquisition, across all nodes) and `expires_at`, which the
//!   holder moves forward while it works. A row whose `expires_at` passed is free to take.
//! - `ck_tokens` (version 2): the HTTP-01 challenges in flight, one row per token, published by the
//!   node that orders and answered by every node's listener ([`super::tokens`]); a row whose
//!   `expires` passed is answered by no one and swept by the next publication.

use tokio_postgres::Client;

use super::super::StoreError;

/// The migrations, in order; the schema version is the number of migrations applied.
const MIGRATIONS: &[&str] = &[
    // 1: objects and leases.
    "CREATE TABLE ck_objects (
         key text PRIMARY KEY,
         value bytea NOT NULL,
         sealed boolean NOT NULL,
         version bigint NOT NULL,
         updated_at timestamptz NOT NULL DEFAULT now(),
         updated_by text NOT NULL
     );
     CREATE SEQUENCE ck_version;
     CREATE TABLE ck_locks (
         name text PRIMARY KEY,
         token bigint NOT NULL,
         holder text NOT NULL,
         acquired_at timestamptz NOT NULL DEFAULT now(),
         expires_at timestamptz NOT NULL
     );
     CREATE SEQUENCE ck_fence;",
    // 2: HTTP-01 tokens answered by every node.
    "CREATE TABLE ck_tokens (
         token text PRIMARY KEY,
         identifier text NOT NULL,
         key_authorization text NOT NULL,
         published_by text NOT NULL,
         expires timestamptz NOT NULL
     );",
];

/// The schema version this build creates and expects.
pub const CURRENT: i32 = MIGRATIONS.len() as i32;

/// The advisory lock key that serializes migrations ("certkeep" in ASCII).
const MIGRATION_LOCK: i64 = 0x6365_7274_6b65_6570;

/// Bring the database to [`CURRENT`]; returns the version found before.
pub async fn migrate(client: &mut Client, target: &str) -> Result<i32, StoreError> {
    let db = |action: &str| {
        let (action, target) = (action.to_string(), target.to_string());
        move |source| StoreError::Database {
            action,
            target,
            source,
        }
    };
    let tx = client
        .transaction()
        .await
        .map_err(db("starting the schema migration"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db("waiting for another node's schema migration"))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS ck_schema_version (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(db("creating ck_schema_version"))?;
    let found: i32 = tx
        .query_one(
            "SELECT COALESCE(max(version), 0) FROM ck_schema_version",
            &[],
        )
        .await
        .map_err(db("reading the schema version"))?
        .get(0);
    if found > CURRENT {
        return Err(StoreError::Schema {
            target: target.to_string(),
            reason: format!(
                "schema version {found} was written by a newer certkeeper (this one knows up to {CURRENT}); \
                 upgrade certkeeper on this node"
            ),
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = i as i32 + 1;
        tx.batch_execute(sql)
            .await
            .map_err(db(&format!("applying schema migration {version}")))?;
        tx.execute(
            "INSERT INTO ck_schema_version (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(db("recording the schema version"))?;
    }
    tx.commit()
        .await
        .map_err(db("committing the schema migration"))?;
    Ok(found)
}

/// The schema version the database has now (0: none), for `certkeeper check`.
pub async fn version(client: &Client) -> Result<i32, tokio_postgres::Error> {
    let exists: bool = client
        .query_one("SELECT to_regclass('ck_schema_version') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(0);
    }
    Ok(client
        .query_one(
            "SELECT COALESCE(max(version), 0) FROM ck_schema_version",
            &[],
        )
        .await?
        .get(0))
}
