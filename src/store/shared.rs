//! A fleet's current pair of a certificate in the shared store: `pairs/<name>.json`, the private
//! key, the full chain and the leaf's serial in one value, so a reader never sees the key of one
//! pair with the chain of another. The value holds a private key: a shared backend stores it only
//! sealed (see [`super::postgres::crypto`]). Written by the node that issued (or imported) the
//! pair, under its issuance lease; read by every node ([`super::Ledger::adopt`]).

use serde::{Deserialize, Serialize};

use super::StoreError;
use super::ledger::load_json;
use super::storage::{Lease, Storage, check_name};
use super::verify::VerifiedPair;

/// The fleet's current pair of one certificate. `Debug` leaves the key out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedPair {
    /// The leaf's serial (hex, as [`VerifiedCert::serial_hex`]).
    pub serial: String,
    /// The private key, PEM.
    pub key_pem: String,
    /// The full chain, leaf first, PEM.
    pub chain_pem: String,
    /// The node that ordered (or imported, or migrated) this pair; `None` in a pair written by an
    /// older certkeeper.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordered_by: Option<String>,
    /// When that node made it the current pair (`None`: not known, e.g. a migrated pair).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordered_at: Option<jiff::Timestamp>,
}

impl std::fmt::Debug for SharedPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedPair")
            .field("serial", &self.serial)
            .field("ordered_by", &self.ordered_by)
            .field("ordered_at", &self.ordered_at)
            .finish_non_exhaustive()
    }
}

/// Which pair is the fleet's current one and who made it so: what `certkeeper status` shows,
/// without the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PairOrigin {
    /// The leaf's serial (hex).
    pub serial: String,
    /// The node that ordered it (`None`: written by an older certkeeper).
    pub ordered_by: Option<String>,
    /// When (`None`: not known).
    pub ordered_at: Option<jiff::Timestamp>,
}

impl SharedPair {
    /// Its serial and origin.
    pub fn origin(&self) -> PairOrigin {
        PairOrigin {
            serial: self.serial.clone(),
            ordered_by: self.ordered_by.clone(),
            ordered_at: self.ordered_at,
        }
    }
}

/// The storage key of certificate `name`'s pair.
pub fn key(name: &str) -> Result<String, StoreError> {
    check_name(name)?;
    Ok(format!("pairs/{name}.json"))
}

/// The current pair of `name`, if any.
pub fn load(storage: &dyn Storage, name: &str) -> Result<Option<SharedPair>, StoreError> {
    load_json(storage, &key(name)?)
}

/// Make a verified pair the current pair of `name`, ordered by node `node`, under `lease` (the
/// certificate's issuance lease): refused once the lease was lost.
pub fn store(
    storage: &dyn Storage,
    name: &str,
    node: &str,
    pair: &VerifiedPair,
    lease: &Lease,
) -> Result<(), StoreError> {
    let key = key(name)?;
    let text = |pem: &[u8]| {
        String::from_utf8(pem.to_vec())
            .map_err(|_| StoreError::Verify("the pair is not PEM text".into()))
    };
    let value = SharedPair {
        serial: pair.cert().serial_hex.clone(),
        key_pem: text(pair.key_pem())?,
        chain_pem: text(&pair.fullchain_pem())?,
        ordered_by: Some(node.to_string()),
        ordered_at: Some(jiff::Timestamp::now()),
    };
    let bytes = serde_json::to_vec(&value).map_err(|source| StoreError::Encode {
        path: storage.describe(&key).into(),
        source,
    })?;
    storage.store_fenced(&key, &bytes, lease)
}

/// Seed the current pair of `name` outside of any lease (`certkeeper storage migrate`): only when
/// there is none yet. Returns whether it was stored.
pub fn seed(storage: &dyn Storage, name: &str, value: &SharedPair) -> Result<bool, StoreError> {
    let key = key(name)?;
    if storage.load(&key)?.is_some() {
        return Ok(false);
    }
    let bytes = serde_json::to_vec(value).map_err(|source| StoreError::Encode {
        path: storage.describe(&key).into(),
        source,
    })?;
    storage.store(&key, &bytes)?;
    Ok(true)
}
