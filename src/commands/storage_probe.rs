//! `certkeeper check` for `[storage]`: with a PostgreSQL backend, reach the database, read its
//! schema version and the key ids of its sealed values — changing nothing (no schema is created).

use std::time::Duration;

use super::check::Probe;
use crate::config::{Config, PostgresConfig, StorageConfig};
use crate::store::postgres::{PgOptions, PgStorage, schema};

/// The longest the database probe may take.
const TIMEOUT: Duration = Duration::from_secs(15);

/// The storage probes of `cfg`; the database is contacted only when not `offline`.
pub async fn probes(cfg: &Config, offline: bool) -> Vec<Probe> {
    let StorageConfig::Postgres(pg) = &cfg.storage else {
        return Vec::new();
    };
    if offline {
        return Vec::new();
    }
    database(pg).await
}

async fn database(pg: &PostgresConfig) -> Vec<Probe> {
    let mut opts = PgOptions::from_config(pg);
    opts.migrate = false;
    opts.call_timeout = TIMEOUT;
    let storage = match PgStorage::open(opts) {
        Ok(s) => s,
        Err(e) => return vec![Probe::fail(format!("storage: {e}"))],
    };
    let target = storage.target().to_string();
    let key_id = storage.key_id().to_string();
    let found = tokio::task::spawn_blocking(move || storage.probe()).await;
    let report = match found {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return vec![Probe::fail(format!("storage: {e}"))],
        Err(e) => {
            return vec![Probe::fail(format!(
                "storage: the database probe failed: {e}"
            ))];
        }
    };
    let mut out = vec![Probe::ok(format!(
        "storage: PostgreSQL {} at {target} is reachable (node {})",
        report.server_version, pg.node
    ))];
    out.push(match report.schema_version {
        0 => Probe::ok(format!(
            "storage: {target} has no certkeeper schema yet; the first node that runs creates it (version {})",
            schema::CURRENT
        )),
        v if v > schema::CURRENT => Probe::fail(format!(
            "storage: {target} has schema version {v}, written by a newer certkeeper (this one knows up to {}): \
             upgrade certkeeper on this node",
            schema::CURRENT
        )),
        v if v < schema::CURRENT => Probe::ok(format!(
            "storage: {target} has schema version {v}; the next run migrates it to {}",
            schema::CURRENT
        )),
        v => Probe::ok(format!("storage: {target} has schema version {v} (current)")),
    });
    let foreign: Vec<String> = report
        .sealed_by_key
        .iter()
        .filter(|(id, _)| **id != key_id)
        .map(|(id, n)| format!("{n} with key id {id}"))
        .collect();
    let mine = report.sealed_by_key.get(&key_id).copied().unwrap_or(0);
    out.push(if foreign.is_empty() {
        Probe::ok(format!(
            "storage: encryption key {} (id {key_id}) seals private keys; {mine} stored under it",
            pg.encryption_key_file.display()
        ))
    } else {
        Probe::fail(format!(
            "storage: encrypted values in {target} were sealed with another key ({}), not with {} (id {key_id}): \
             give every node the same encryption_key_file",
            foreign.join(", "),
            pg.encryption_key_file.display()
        ))
    });
    out
}
