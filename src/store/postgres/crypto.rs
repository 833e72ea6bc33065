//! Secrets at rest: private keys reach the database only sealed with AES-256-GCM (through OpenSSL).
//!
//! A sealed value is `CKS1 | key-id length (1 byte) | key id | nonce (12) | tag (16) | ciphertext`.
//! The associated data binds it to where it lives: the format tag, the object's storage key (name),
//! its version (the row's version, new on every write) and the key id. So a ciphertext copied onto
//! another object's row, or an older version replayed onto a row, does not open; neither does a
//! value whose bytes were changed, nor one opened with another key.
//!
//! The key id (16 hex digits of a SHA-256 over the key) travels in clear, so a [`Keyring`] with the
//! current key and retired keys opens values written before a rotation, and a rotation can re-seal
//! them with the current key.

use base64::Engine as _;
use openssl::symm::{Cipher, decrypt_aead, encrypt_aead};

/// The length of a data key: AES-256.
pub const KEY_LEN: usize = 32;
const MAGIC: &[u8; 4] = b"CKS1";
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const AD_TAG: &[u8] = b"certkeeper sealed value v1\0";

/// Why a value cannot be sealed, opened or a key loaded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// The key file's text is not base64 of exactly 32 bytes.
    #[error(
        "the encryption key must be 32 random bytes in base64 (create it with `openssl rand -base64 32`): {0}"
    )]
    BadKey(String),
    /// The value is not in the sealed format.
    #[error("not a sealed value (bad header)")]
    Malformed,
    /// The value was sealed with a key this keyring does not have.
    #[error(
        "sealed with key id {0}, which is neither this node's encryption_key_file nor one of its \
         previous_encryption_key_files (if the fleet's key was rotated, install the new key file on this node \
         and set encryption_key_file to it)"
    )]
    UnknownKey(String),
    /// This node's key was rotated out of the database: sealing with it would undo the rotation.
    #[error(
        "this node's encryption_key_file (key id {}) was rotated out of the database on {} by node {} \
         (`certkeeper storage rotate-key`); the database now seals with key id {}: install that key file on \
         this node, set encryption_key_file to it (the old file may stay in previous_encryption_key_files) \
         and reload certkeeper",
        .0.mine, .0.since, .0.by, .0.current
    )]
    RotatedOut(Box<RotatedOut>),
    /// Authentication failed: the value was changed, moved to another name or version, or the key
    /// with its id is a different key.
    #[error("authentication failed: the value was altered, moved, or the key is wrong")]
    Refused,
    /// OpenSSL failed to encrypt (out of memory, no randomness).
    #[error("encrypting failed: {0}")]
    Openssl(String),
}

/// A node's key rotated out: which, to which, when and by whom ([`CryptoError::RotatedOut`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotatedOut {
    /// This node's key id.
    pub mine: String,
    /// The key id the database seals with now.
    pub current: String,
    /// When it was rotated.
    pub since: String,
    /// The node that rotated it.
    pub by: String,
}

/// One 256-bit data key and its id.
#[derive(Clone)]
pub struct DataKey {
    id: String,
    key: [u8; KEY_LEN],
}

impl DataKey {
    /// A key from its raw bytes.
    pub fn from_bytes(key: [u8; KEY_LEN]) -> Self {
        let mut input = b"certkeeper key id\0".to_vec();
        input.extend_from_slice(&key);
        let digest = openssl::sha::sha256(&input);
        let id = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        Self { id, key }
    }

    /// A key from the text of an `encryption_key_file`: base64 of 32 bytes (surrounding
    /// whitespace is ignored).
    pub fn from_base64(text: &str) -> Result<Self, CryptoError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|e| CryptoError::BadKey(format!("not base64 ({e})")))?;
        let key: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| {
            CryptoError::BadKey(format!("it decodes to {} bytes, not 32", bytes.len()))
        })?;
        Ok(Self::from_bytes(key))
    }

    /// A new random key (tests).
    pub fn generate() -> Result<Self, CryptoError> {
        let mut key = [0u8; KEY_LEN];
        openssl::rand::rand_bytes(&mut key).map_err(|e| CryptoError::Openssl(e.to_string()))?;
        Ok(Self::from_bytes(key))
    }

    /// The key id: 16 hex digits, safe to show and to store.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The current key (seals) and retired keys (only open), chosen by the id in each sealed value.
#[derive(Clone, Debug)]
pub struct Keyring {
    current: DataKey,
    retired: Vec<DataKey>,
}

impl Keyring {
    /// A keyring that seals with `current`.
    pub fn new(current: DataKey) -> Self {
        Self {
            current,
            retired: Vec::new(),
        }
    }

    /// Also open values sealed with `key` (a key rotated out).
    pub fn with_retired(mut self, key: DataKey) -> Self {
        self.retired.push(key);
        self
    }

    /// The id of the key that seals.
    pub fn current_id(&self) -> &str {
        self.current.id()
    }

    /// Whether this keyring holds the key with id `id` (current or retired).
    pub fn knows(&self, id: &str) -> bool {
        std::iter::once(&self.current)
            .chain(&self.retired)
            .any(|k| k.id == id)
    }

    /// The ids of the retired keys (they open, never seal).
    pub fn retired_ids(&self) -> impl Iterator<Item = &str> {
        self.retired.iter().map(DataKey::id)
    }

    /// Seal `plain` as the value of `name` at `version`.
    pub fn seal(&self, name: &str, version: i64, plain: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let kid = self.current.id.as_bytes();
        let mut nonce = [0u8; NONCE_LEN];
        openssl::rand::rand_bytes(&mut nonce).map_err(|e| CryptoError::Openssl(e.to_string()))?;
        let mut tag = [0u8; TAG_LEN];
        let ad = associated_data(name, version, kid);
        let ct = encrypt_aead(
            Cipher::aes_256_gcm(),
            &self.current.key,
            Some(&nonce),
            &ad,
            plain,
            &mut tag,
        )
        .map_err(|e| CryptoError::Openssl(e.to_string()))?;
        let mut out = Vec::with_capacity(5 + kid.len() + NONCE_LEN + TAG_LEN + ct.len());
        out.extend_from_slice(MAGIC);
        out.push(u8::try_from(kid.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(kid);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&tag);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Open what [`Keyring::seal`] made for `name` at `version`.
    pub fn open(&self, name: &str, version: i64, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let parts = Parts::parse(sealed)?;
        let key = std::iter::once(&self.current)
            .chain(&self.retired)
            .find(|k| k.id.as_bytes() == parts.kid)
            .ok_or_else(|| CryptoError::UnknownKey(String::from_utf8_lossy(parts.kid).into()))?;
        let ad = associated_data(name, version, parts.kid);
        decrypt_aead(
            Cipher::aes_256_gcm(),
            &key.key,
            Some(parts.nonce),
            &ad,
            parts.ct,
            parts.tag,
        )
        .map_err(|_| CryptoError::Refused)
    }
}

/// The key id a sealed value names, when it is one.
pub fn key_id_of(sealed: &[u8]) -> Option<String> {
    Parts::parse(sealed)
        .ok()
        .map(|p| String::from_utf8_lossy(p.kid).into_owned())
}

struct Parts<'a> {
    kid: &'a [u8],
    nonce: &'a [u8],
    tag: &'a [u8],
    ct: &'a [u8],
}

impl<'a> Parts<'a> {
    fn parse(b: &'a [u8]) -> Result<Self, CryptoError> {
        let rest = b.strip_prefix(MAGIC).ok_or(CryptoError::Malformed)?;
        let (&len, rest) = rest.split_first().ok_or(CryptoError::Malformed)?;
        let len = usize::from(len);
        if rest.len() < len + NONCE_LEN + TAG_LEN {
            return Err(CryptoError::Malformed);
        }
        let (kid, rest) = rest.split_at(len);
        let (nonce, rest) = rest.split_at(NONCE_LEN);
        let (tag, ct) = rest.split_at(TAG_LEN);
        Ok(Self {
            kid,
            nonce,
            tag,
            ct,
        })
    }
}

fn associated_data(name: &str, version: i64, kid: &[u8]) -> Vec<u8> {
    let mut ad = AD_TAG.to_vec();
    ad.extend_from_slice(name.as_bytes());
    ad.push(0);
    ad.extend_from_slice(&version.to_be_bytes());
    ad.extend_from_slice(kid);
    ad
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &[u8] = b"-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49\n-----END PRIVATE KEY-----\n";

    fn ring() -> Keyring {
        Keyring::new(DataKey::generate().unwrap())
    }

    #[test]
    fn round_trip_hides_the_plaintext() {
        let r = ring();
        let sealed = r.seal("accounts/le/key.pem", 7, PEM).unwrap();
        assert!(!sealed.windows(PEM.len()).any(|w| w == PEM));
        assert!(!sealed.windows(11).any(|w| w == b"PRIVATE KEY"));
        assert_eq!(r.open("accounts/le/key.pem", 7, &sealed).unwrap(), PEM);
        // Two seals of the same value differ (fresh nonce).
        assert_ne!(sealed, r.seal("accounts/le/key.pem", 7, PEM).unwrap());
        assert_eq!(r.open("x", 1, &r.seal("x", 1, b"").unwrap()).unwrap(), b"");
    }

    #[test]
    fn other_name_or_version_is_refused() {
        let r = ring();
        let sealed = r.seal("certs/www.key.pem", 3, PEM).unwrap();
        assert_eq!(
            r.open("certs/api.key.pem", 3, &sealed),
            Err(CryptoError::Refused)
        );
        assert_eq!(
            r.open("certs/www.key.pem", 2, &sealed),
            Err(CryptoError::Refused)
        );
    }

    #[test]
    fn wrong_key_is_refused() {
        let sealed = ring().seal("k", 1, PEM).unwrap();
        // Another key: its id is not the one in the value.
        assert!(matches!(
            ring().open("k", 1, &sealed),
            Err(CryptoError::UnknownKey(_))
        ));
        // A different key that claims the same id (forged header) fails authentication.
        let r = ring();
        let mut forged = Keyring::new(DataKey::generate().unwrap());
        forged.current.id = r.current_id().to_string();
        let sealed = r.seal("k", 1, PEM).unwrap();
        assert_eq!(forged.open("k", 1, &sealed), Err(CryptoError::Refused));
    }

    #[test]
    fn tampering_anywhere_is_refused() {
        let r = ring();
        let sealed = r.seal("k", 1, PEM).unwrap();
        let header = 5 + r.current_id().len();
        // Every byte after the key id: nonce, tag and ciphertext.
        for i in header..sealed.len() {
            let mut t = sealed.clone();
            t[i] ^= 0x01;
            assert_eq!(r.open("k", 1, &t), Err(CryptoError::Refused), "byte {i}");
        }
        assert_eq!(r.open("k", 1, &sealed[..20]), Err(CryptoError::Malformed));
        assert_eq!(r.open("k", 1, b"plain text"), Err(CryptoError::Malformed));
        let mut truncated = sealed.clone();
        truncated.pop();
        assert_eq!(r.open("k", 1, &truncated), Err(CryptoError::Refused));
    }

    #[test]
    fn key_id_is_carried_and_retired_keys_still_open() {
        let old = DataKey::generate().unwrap();
        let sealed_old = Keyring::new(old.clone()).seal("k", 1, PEM).unwrap();
        assert_eq!(key_id_of(&sealed_old).as_deref(), Some(old.id()));
        assert_eq!(old.id().len(), 16);
        let new = DataKey::generate().unwrap();
        let rotated = Keyring::new(new.clone()).with_retired(old.clone());
        assert_eq!(rotated.open("k", 1, &sealed_old).unwrap(), PEM);
        let resealed = rotated.seal("k", 2, PEM).unwrap();
        assert_eq!(key_id_of(&resealed).as_deref(), Some(new.id()));
        assert_eq!(key_id_of(b"nope"), None);
    }

    #[test]
    fn key_file_text_must_be_32_bytes_of_base64() {
        let text = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let k = DataKey::from_base64(&format!("{text}\n")).unwrap();
        assert_eq!(k.id(), DataKey::from_bytes([7u8; 32]).id());
        assert!(!format!("{k:?}").contains(&text));
        let short = base64::engine::general_purpose::STANDARD.encode([7u8; 16]);
        let err = DataKey::from_base64(&short).unwrap_err().to_string();
        assert!(err.contains("16 bytes, not 32"), "{err}");
        assert!(DataKey::from_base64("not base64 !!").is_err());
    }
}
