//! `certkeeper check` for `[storage]`: with a PostgreSQL backend, reach the database, read its
//! schema version and the key ids of its sealed values — changing nothing (no schema is created).

use std::time::Duration;

use super::check::Probe;
use crate::config::{Config, PostgresConfig, StorageConfig};
use crate::store::postgres::{PgOptions, PgStorage, Probe as DbReport, schema};

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
    out.extend(keys(pg, &target, &report));
    out
}

/// The encryption key: which key id the database seals with (as the last rotation recorded it)
/// against this node's keys, and which keys the sealed values are under.
fn keys(pg: &PostgresConfig, target: &str, report: &DbReport) -> Vec<Probe> {
    let key_id = pg.encryption_key.id();
    let file = pg.encryption_key_file.display();
    let previous: Vec<&str> = pg
        .previous_encryption_keys
        .iter()
        .map(|(_, k)| k.id())
        .collect();
    let mut out = Vec::new();
    if let Some(rec) = &report.sealing {
        let since = rec.since.strftime("%Y-%m-%d %H:%M:%S UTC");
        out.push(if rec.retired.iter().any(|id| id == key_id) {
            Probe::fail(format!(
                "storage: {file} (key id {key_id}) was rotated out of {target} on {since} by node {}; the database \
                 seals with key id {}: install that key file on this node, set encryption_key_file to it and reload",
                rec.by, rec.key_id
            ))
        } else if rec.key_id == key_id {
            Probe::ok(format!(
                "storage: {target} seals with key id {key_id} since {since} (rotated by node {}), the configured key",
                rec.by
            ))
        } else {
            Probe::ok(format!(
                "storage: {target} seals with key id {} since {since}; this node is configured with key id {key_id}: \
                 once every node has it, run `certkeeper storage rotate-key`",
                rec.key_id
            ))
        });
    }
    let mut foreign = Vec::new();
    let mut older = Vec::new();
    for (id, n) in report.sealed_by_key.iter().filter(|(id, _)| **id != key_id) {
        let line = format!("{n} with key id {id}");
        if previous.contains(&id.as_str()) {
            older.push(line);
        } else {
            foreign.push(line);
        }
    }
    let mine = report.sealed_by_key.get(key_id).copied().unwrap_or(0);
    out.push(if foreign.is_empty() {
        Probe::ok(format!(
            "storage: encryption key {file} (id {key_id}) seals private keys; {mine} stored under it"
        ))
    } else {
        Probe::fail(format!(
            "storage: encrypted values in {target} were sealed with another key ({}), not with {file} (id {key_id}) \
             nor a previous_encryption_key_files key: give every node the same encryption_key_file",
            foreign.join(", ")
        ))
    });
    if !older.is_empty() {
        out.push(Probe::ok(format!(
            "storage: {} still sealed with a previous key: run `certkeeper storage rotate-key` to re-seal them",
            older.join(", ")
        )));
    }
    for id in previous
        .iter()
        .filter(|id| !report.sealed_by_key.contains_key(**id))
    {
        out.push(Probe::ok(format!(
            "storage: previous key id {id} seals nothing in {target} any more: remove it from \
             previous_encryption_key_files once every node runs with key id {key_id}"
        )));
    }
    out
}
