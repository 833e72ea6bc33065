//! Key rotation: which key seals the database's secrets, and re-sealing values under it.
//!
//! The database records its sealing key in the unsealed object [`SEALING_KEY`]: the key id that
//! seals, the ids rotated out, when and by which node. `certkeeper storage rotate-key` makes the
//! rotating node's `encryption_key_file` the sealing key (`adopt`), then re-seals every value
//! still sealed with another key (`reseal`, one transaction per object).
//!
//! **No race with writers.** Every transaction that seals a value first takes the advisory lock
//! `ROTATION_LOCK` shared and reads the record (`check_sealing`); `adopt` takes it exclusive.
//! So every value sealed with the old key was committed before the switch (and the re-sealing pass
//! after it sees it), and after the switch a node whose key was rotated out cannot seal with it: it
//! is refused ([`CryptoError::RotatedOut`]) with what to do, instead of undoing the rotation
//! value by value. `reseal` locks the row (`FOR UPDATE`), so a concurrent write is either seen
//! (and left alone when it is sealed with the new key already) or waits; the plaintext does not
//! change, so fenced writers lose nothing. Re-running after a crash re-seals what is left.

use serde::{Deserialize, Serialize};
use tokio_postgres::{Client, GenericClient, Transaction};

use super::super::StoreError;
use super::crypto::{CryptoError, RotatedOut, key_id_of};
use super::ops::Settings;

/// The object that records the sealing key (not a secret: ids only).
pub const SEALING_KEY: &str = "meta/sealing-key.json";

/// Serializes sealing with switching the key ("ckrotate" in ASCII).
const ROTATION_LOCK: i64 = 0x636b_726f_7461_7465;

/// The database's sealing key, as recorded by the last rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealingKey {
    /// The key id that seals now.
    pub key_id: String,
    /// Key ids rotated out: a node still sealing with one of them is refused.
    #[serde(default)]
    pub retired: Vec<String>,
    /// When the key was switched.
    pub since: jiff::Timestamp,
    /// The node that switched it.
    pub by: String,
}

/// What a rotation did (`certkeeper storage rotate-key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// The database, `host:port/dbname`.
    pub target: String,
    /// The sealing key recorded before (`None`: never rotated).
    pub before: Option<SealingKey>,
    /// The sealing key now: this node's `encryption_key_file`.
    pub after: SealingKey,
    /// Values re-sealed with it.
    pub resealed: usize,
    /// Values that were sealed with it already.
    pub current: usize,
    /// Values that could not be opened (sealed with a key this node lacks, or altered), and why.
    pub failed: Vec<(String, String)>,
}

/// What `reseal` did to one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resealed {
    /// Re-sealed with the current key.
    Done,
    /// Sealed with the current key already (written since the list was read).
    Current,
    /// Deleted, or no longer sealed, since the list was read.
    Gone,
}

/// The recorded sealing key (`None`: never rotated), through any client or transaction.
pub(super) async fn read(
    client: &impl GenericClient,
) -> Result<Option<SealingKey>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT value FROM ck_objects WHERE key = $1",
            &[&SEALING_KEY],
        )
        .await?;
    // An unreadable record is treated as none: the rotation writes it anew.
    Ok(row.and_then(|r| serde_json::from_slice(&r.get::<_, Vec<u8>>(0)).ok()))
}

/// Within `tx`, before sealing `key`: wait for a key switch in progress, and refuse when this
/// node's key was rotated out.
pub(super) async fn check_sealing(
    tx: &Transaction<'_>,
    s: &Settings,
    key: &str,
) -> Result<(), StoreError> {
    tx.execute("SELECT pg_advisory_xact_lock_shared($1)", &[&ROTATION_LOCK])
        .await
        .map_err(s.db(format!("storing {key}")))?;
    let Some(rec) = read(tx).await.map_err(s.db(format!("storing {key}")))? else {
        return Ok(());
    };
    let mine = s.keyring.current_id();
    if rec.retired.iter().any(|id| id == mine) {
        return Err(StoreError::Sealed {
            key: key.to_string(),
            source: rotated_out(mine, &rec),
        });
    }
    Ok(())
}

fn rotated_out(mine: &str, rec: &SealingKey) -> CryptoError {
    CryptoError::RotatedOut(Box::new(RotatedOut {
        mine: mine.to_string(),
        current: rec.key_id.clone(),
        since: rec.since.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
        by: rec.by.clone(),
    }))
}

/// Make this node's key the database's sealing key (the key before it is rotated out); returns
/// the record before and after. Refused when this node's key was rotated out already (that would
/// roll the rotation back), and when this node does not have the recorded sealing key (it could
/// not re-seal what is sealed with it).
pub(super) async fn adopt(
    client: &mut Client,
    s: &Settings,
) -> Result<(Option<SealingKey>, SealingKey), StoreError> {
    let db = |what: &str| s.db(format!("switching the sealing key: {what}"));
    let tx = client.transaction().await.map_err(db("begin"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ROTATION_LOCK])
        .await
        .map_err(db("waiting for writers"))?;
    let before = read(&tx).await.map_err(db("reading the record"))?;
    let mine = s.keyring.current_id().to_string();
    if let Some(rec) = &before
        && rec.retired.contains(&mine)
    {
        return Err(StoreError::Sealed {
            key: SEALING_KEY.to_string(),
            source: rotated_out(&mine, rec),
        });
    }
    if let Some(rec) = &before
        && !s.keyring.knows(&rec.key_id)
    {
        // It could not open what is sealed with the key it would rotate out.
        return Err(StoreError::Sealed {
            key: SEALING_KEY.to_string(),
            source: CryptoError::UnknownKey(rec.key_id.clone()),
        });
    }
    let after = match &before {
        Some(rec) if rec.key_id == mine => rec.clone(),
        _ => {
            let in_use: Vec<String> = sealed(&tx, s)
                .await?
                .into_iter()
                .map(|(_, id)| id)
                .collect();
            switched(before.as_ref(), s, &in_use)
        }
    };
    if before.as_ref() != Some(&after) {
        let bytes = serde_json::to_vec(&after).map_err(|source| StoreError::Encode {
            path: SEALING_KEY.into(),
            source,
        })?;
        tx.execute(
            "INSERT INTO ck_objects (key, value, sealed, version, updated_by)
             VALUES ($1, $2, false, nextval('ck_version'), $3)
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, sealed = false,
                 version = EXCLUDED.version, updated_at = now(), updated_by = EXCLUDED.updated_by",
            &[&SEALING_KEY, &bytes, &s.node],
        )
        .await
        .map_err(db("recording it"))?;
    }
    tx.commit().await.map_err(db("commit"))?;
    Ok((before, after))
}

/// The key id reported for a sealed value whose header does not parse.
pub const MALFORMED: &str = "(malformed)";

/// The record after switching from `before` to this node's key: rotated out are the recorded
/// key, and the other keys of this node that values (`in_use`, their key ids) are sealed with now.
/// Not a previous key nothing is sealed with (a fleet may add the new key there first, before any
/// node seals with it), nor a key this node does not have (when rotate-key is run by mistake on a
/// node that was not given the new key, the nodes that were keep working; the values it cannot open
/// are reported).
fn switched(before: Option<&SealingKey>, s: &Settings, in_use: &[String]) -> SealingKey {
    let mine = s.keyring.current_id();
    let mut retired = before.map(|r| r.retired.clone()).unwrap_or_default();
    let known = in_use.iter().filter(|id| s.keyring.knows(id)).cloned();
    for id in before.map(|r| r.key_id.clone()).into_iter().chain(known) {
        if id != mine && !retired.contains(&id) {
            retired.push(id);
        }
    }
    SealingKey {
        key_id: mine.to_string(),
        retired,
        since: jiff::Timestamp::now(),
        by: s.node.clone(),
    }
}

/// The storage key and key id of every sealed value.
pub(super) async fn sealed(
    client: &impl GenericClient,
    s: &Settings,
) -> Result<Vec<(String, String)>, StoreError> {
    let rows = client
        .query(
            "SELECT key, substring(value from 1 for 64) FROM ck_objects WHERE sealed ORDER BY key",
            &[],
        )
        .await
        .map_err(s.db("listing the sealed values"))?;
    Ok(rows
        .iter()
        .map(|r| {
            let head: Vec<u8> = r.get(1);
            let id = key_id_of(&head).unwrap_or_else(|| MALFORMED.into());
            (r.get(0), id)
        })
        .collect())
}

/// Re-seal the value of `key` with this node's key, in one transaction with the row locked.
pub(super) async fn reseal(
    client: &mut Client,
    s: &Settings,
    key: &str,
) -> Result<Resealed, StoreError> {
    let db = |what: &str| s.db(format!("re-sealing {key}: {what}"));
    let tx = client.transaction().await.map_err(db("begin"))?;
    let row = tx
        .query_opt(
            "SELECT value, version FROM ck_objects WHERE key = $1 AND sealed FOR UPDATE",
            &[&key],
        )
        .await
        .map_err(db("reading"))?;
    let Some(row) = row else {
        return Ok(Resealed::Gone);
    };
    let (value, version): (Vec<u8>, i64) = (row.get(0), row.get(1));
    if key_id_of(&value).as_deref() == Some(s.keyring.current_id()) {
        return Ok(Resealed::Current);
    }
    let sealed_err = |source| StoreError::Sealed {
        key: key.to_string(),
        source,
    };
    let plain = s.keyring.open(key, version, &value).map_err(sealed_err)?;
    let new_version: i64 = tx
        .query_one("SELECT nextval('ck_version')", &[])
        .await
        .map_err(db("versioning"))?
        .get(0);
    let bytes = s
        .keyring
        .seal(key, new_version, &plain)
        .map_err(sealed_err)?;
    // Same plaintext: who wrote it last and when stay as they are.
    tx.execute(
        "UPDATE ck_objects SET value = $2, version = $3 WHERE key = $1",
        &[&key, &bytes, &new_version],
    )
    .await
    .map_err(db("writing"))?;
    tx.commit().await.map_err(db("commit"))?;
    Ok(Resealed::Done)
}
