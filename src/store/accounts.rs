//! ACME accounts in storage: the key (saved before the CA sees it), the record, and the key staged
//! during a rollover.
//!
//! Keys (see [`super::storage`]):
//! ```text
//! accounts/<id>/key.pem        account private key (saved before registering)
//! accounts/<id>/account.json   AccountRecord
//! accounts/<id>/key.next.pem   new account key staged during a key rollover
//! locks/account-<id>.lock      held across a key rollover
//! ```

use std::sync::Arc;

use super::StoreError;
use super::state::{AccountRecord, StoredAccount};
use super::storage::{Lease, Storage, check_name};

/// The accounts of every issuer.
#[derive(Clone, Debug)]
pub struct AccountStore {
    storage: Arc<dyn Storage>,
}

impl AccountStore {
    /// Accounts kept in `storage`.
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        Self { storage }
    }

    fn key(id: &str, file: &str) -> Result<String, StoreError> {
        check_name(id)?;
        Ok(format!("accounts/{id}/{file}"))
    }

    fn load_text(&self, key: &str) -> Result<Option<String>, StoreError> {
        match self.storage.load(key)? {
            None => Ok(None),
            Some(b) => String::from_utf8(b).map(Some).map_err(|_| {
                StoreError::io(
                    "reading",
                    self.storage.describe(key),
                    std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 PEM"),
                )
            }),
        }
    }

    /// Where account `id` is kept, for messages.
    pub fn describe(&self, id: &str) -> String {
        self.storage.describe(&format!("accounts/{id}"))
    }

    /// The stored account `id`, or `None` when no key was ever saved.
    pub fn load(&self, id: &str) -> Result<Option<StoredAccount>, StoreError> {
        let Some(key_pem) = self.load_text(&Self::key(id, "key.pem")?)? else {
            return Ok(None);
        };
        let record = super::ledger::load_json(&*self.storage, &Self::key(id, "account.json")?)?;
        Ok(Some(StoredAccount { key_pem, record }))
    }

    /// Save an account key. Call this BEFORE registering the key with the CA, so a crash between
    /// the two never strands an account the CA knows and we do not.
    ///
    /// Refuses ([`StoreError::AccountExists`]) once the account has a record, so a registered
    /// account's key is never overwritten by mistake.
    pub fn save_key(&self, id: &str, key_pem: &str) -> Result<(), StoreError> {
        if self
            .storage
            .load(&Self::key(id, "account.json")?)?
            .is_some()
        {
            return Err(StoreError::AccountExists(id.to_string()));
        }
        self.storage
            .store(&Self::key(id, "key.pem")?, key_pem.as_bytes())
    }

    /// Save the record of a registered account.
    pub fn save_record(&self, id: &str, record: &AccountRecord) -> Result<(), StoreError> {
        super::ledger::store_json(&*self.storage, &Self::key(id, "account.json")?, record)
    }

    /// Stage the new key of an account key rollover as `key.next.pem`, BEFORE the CA is asked to
    /// switch (RFC 8555 keyChange).
    ///
    /// Whatever happens next, one of `key.pem` and `key.next.pem` is the key the CA knows; a leftover
    /// `key.next.pem` is resolved by asking the CA which of the two it knows
    /// ([`AccountStore::promote_next_key`] or [`AccountStore::discard_next_key`]).
    pub fn stage_next_key(&self, id: &str, key_pem: &str) -> Result<(), StoreError> {
        self.storage
            .store(&Self::key(id, "key.next.pem")?, key_pem.as_bytes())
    }

    /// The staged rollover key of account `id`, if a rollover did not finish.
    pub fn load_next_key(&self, id: &str) -> Result<Option<String>, StoreError> {
        self.load_text(&Self::key(id, "key.next.pem")?)
    }

    /// Make the staged rollover key the account key.
    ///
    /// The staged key is written as `key.pem` (atomically), then the staged copy is removed. A
    /// crash between the two leaves both holding the new key; the next start asks the CA, finds the
    /// account for the staged key, and promotes again, which changes nothing.
    pub fn promote_next_key(&self, id: &str) -> Result<(), StoreError> {
        let next = Self::key(id, "key.next.pem")?;
        let Some(pem) = self.storage.load(&next)? else {
            return Ok(());
        };
        self.storage.store(&Self::key(id, "key.pem")?, &pem)?;
        self.storage.delete(&next)
    }

    /// Drop a staged rollover key the CA never accepted. Absent is fine.
    pub fn discard_next_key(&self, id: &str) -> Result<(), StoreError> {
        self.storage.delete(&Self::key(id, "key.next.pem")?)
    }

    /// Move account `id` out of the way (after deactivation) to `accounts/<id>.deactivated-<unix>`,
    /// kept for the record; the next use of the issuer registers a new account. Returns where it
    /// went.
    pub fn retire(&self, id: &str) -> Result<String, StoreError> {
        check_name(id)?;
        let unix = jiff::Timestamp::now().as_second();
        let taken = self.storage.list("accounts")?;
        let mut target = format!("{id}.deactivated-{unix}");
        let mut n = 1;
        while taken.contains(&target) {
            target = format!("{id}.deactivated-{unix}.{n}");
            n += 1;
        }
        let target = format!("accounts/{target}");
        self.storage
            .rename_prefix(&format!("accounts/{id}"), &target)?;
        Ok(self.storage.describe(&target))
    }

    /// Take the lock of account `id`, waiting for its holder: held while an account is first
    /// registered, so two processes or nodes sharing a store register one account, not two.
    pub fn lock_wait(&self, id: &str) -> Result<Lease, StoreError> {
        check_name(id)?;
        self.storage.lock_wait(&format!("account-{id}"))
    }

    /// Take the lock of account `id` (held across a key rollover) without waiting;
    /// [`StoreError::Locked`] when another process holds it.
    pub fn lock(&self, id: &str) -> Result<Lease, StoreError> {
        check_name(id)?;
        self.storage.lock(&format!("account-{id}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::account_id;
    use crate::store::storage::FileStorage;
    use std::os::unix::fs::MetadataExt as _;

    fn store(dir: &std::path::Path) -> AccountStore {
        AccountStore::new(Arc::new(FileStorage::open(dir).unwrap()))
    }

    fn mode(p: &std::path::Path) -> u32 {
        std::fs::metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn account_key_first_then_record() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path());
        let id = account_id("le", "https://ca/dir");
        assert!(s.load(&id).unwrap().is_none());
        s.save_key(&id, "-----BEGIN PRIVATE KEY-----\nx\n").unwrap();
        let acct = s.load(&id).unwrap().unwrap();
        assert!(acct.record.is_none());
        assert!(!format!("{acct:?}").contains("BEGIN"));
        assert_eq!(
            mode(&tmp.path().join("accounts").join(&id).join("key.pem")),
            0o600
        );
        let rec = AccountRecord {
            url: "https://ca/acct/1".into(),
            directory: "https://ca/dir".into(),
            contact: vec!["mailto:a@b".into()],
            created: jiff::Timestamp::from_second(1_700_000_000).unwrap(),
        };
        s.save_record(&id, &rec).unwrap();
        let acct = s.load(&id).unwrap().unwrap();
        assert_eq!(acct.record, Some(rec));
        assert_eq!(acct.key_pem, "-----BEGIN PRIVATE KEY-----\nx\n");
        let err = s.save_key(&id, "other").unwrap_err();
        assert!(matches!(err, StoreError::AccountExists(_)), "{err}");
        assert_eq!(
            s.load(&id).unwrap().unwrap().key_pem,
            "-----BEGIN PRIVATE KEY-----\nx\n"
        );
    }

    #[test]
    fn rollover_key_is_staged_then_promoted_or_discarded() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path());
        let id = account_id("le", "https://ca/dir");
        s.save_key(&id, "old").unwrap();
        assert_eq!(s.load_next_key(&id).unwrap(), None);
        s.stage_next_key(&id, "new").unwrap();
        assert_eq!(s.load_next_key(&id).unwrap().as_deref(), Some("new"));
        assert_eq!(
            mode(&tmp.path().join("accounts").join(&id).join("key.next.pem")),
            0o600
        );
        // Staging leaves the current key alone.
        assert_eq!(s.load(&id).unwrap().unwrap().key_pem, "old");
        s.discard_next_key(&id).unwrap();
        s.discard_next_key(&id).unwrap();
        assert_eq!(s.load_next_key(&id).unwrap(), None);
        assert_eq!(s.load(&id).unwrap().unwrap().key_pem, "old");
        s.stage_next_key(&id, "new").unwrap();
        s.promote_next_key(&id).unwrap();
        s.promote_next_key(&id).unwrap();
        assert_eq!(s.load(&id).unwrap().unwrap().key_pem, "new");
        assert_eq!(s.load_next_key(&id).unwrap(), None);
        let retired = s.retire(&id).unwrap();
        assert!(s.load(&id).unwrap().is_none());
        assert_eq!(
            std::fs::read_to_string(std::path::Path::new(&retired).join("key.pem")).unwrap(),
            "new"
        );
    }

    #[test]
    fn the_account_lock_is_exclusive() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path());
        let l = s.lock("le-1").unwrap();
        assert!(matches!(s.lock("le-1"), Err(StoreError::Locked { .. })));
        drop(l);
        s.lock("le-1").unwrap();
    }
}
