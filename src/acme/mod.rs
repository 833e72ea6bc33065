//! (being written) — TEMPORARY: the config branch carries a copy of `KeyType` until the acme branch
//! lands its own `src/acme/key.rs`; at merge, take the acme branch's version of this module.

mod key;

pub use key::KeyType;
