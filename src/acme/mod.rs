//! The RFC 8555 (ACME) protocol layer: directory, nonces, JWS, accounts, orders, certificates, ARI.
//!
//! Built on openssl and reqwest (native-tls). Nothing here knows about TOML, files or axum.

pub mod key;

pub use key::{AccountKey, KeyError, KeyGenError, KeyType, UnknownKeyType};
