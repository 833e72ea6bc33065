//! The [`Storage`] contract as executable checks, run against every backend: [`FileStorage`]'s
//! unit tests and PostgreSQL's integration tests (`tests/pg_storage.rs`) call the same functions,
//! so the backends cannot drift apart. Each function expects an empty store and panics with what
//! broke. Compiled for tests and with the `test-hooks` feature only.
//!
//! [`FileStorage`]: super::FileStorage

use super::StoreError;
use super::storage::Storage;

/// Every check below, in turn.
pub fn check_all(s: &dyn Storage) {
    blobs(s);
    listing(s);
    rejects_unsafe_keys(s);
    rename_prefix(s);
    locks(s);
}

/// `load`/`store`/`delete`: missing is `None`, values round-trip byte for byte, overwrite
/// replaces, delete is idempotent.
pub fn blobs(s: &dyn Storage) {
    assert_eq!(s.load("blobs/www.json").unwrap(), None);
    s.store("blobs/www.json", b"{}").unwrap();
    assert_eq!(
        s.load("blobs/www.json").unwrap().as_deref(),
        Some(&b"{}"[..])
    );
    s.store("blobs/www.json", b"{\"v\":2}").unwrap();
    assert_eq!(
        s.load("blobs/www.json").unwrap().as_deref(),
        Some(&b"{\"v\":2}"[..])
    );
    let every_byte: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    s.store("blobs/bin", &every_byte).unwrap();
    assert_eq!(s.load("blobs/bin").unwrap(), Some(every_byte));
    s.store("blobs/empty", b"").unwrap();
    assert_eq!(s.load("blobs/empty").unwrap(), Some(Vec::new()));
    s.delete("blobs/www.json").unwrap();
    s.delete("blobs/www.json").unwrap();
    assert_eq!(s.load("blobs/www.json").unwrap(), None);
    s.delete("blobs/never-there").unwrap();
}

/// `list`: the names directly below a prefix (sub-"directories" too), sorted, relative; a
/// missing prefix lists nothing.
pub fn listing(s: &dyn Storage) {
    s.store("list/www.json", b"{}").unwrap();
    s.store("list/api.json", b"{}").unwrap();
    s.store("list/acct-1/key.pem", b"k").unwrap();
    s.store("list/acct-1/account.json", b"{}").unwrap();
    s.store("list2/other", b"x").unwrap();
    assert_eq!(s.list("list").unwrap(), ["acct-1", "api.json", "www.json"]);
    assert_eq!(s.list("list/acct-1").unwrap(), ["account.json", "key.pem"]);
    assert!(s.list("nothing").unwrap().is_empty());
    assert!(s.list("list/www").unwrap().is_empty());
    s.delete("list/api.json").unwrap();
    assert_eq!(s.list("list").unwrap(), ["acct-1", "www.json"]);
}

/// Keys that could escape the store or hide are refused before anything is touched.
pub fn rejects_unsafe_keys(s: &dyn Storage) {
    for bad in [
        "../x",
        "certs/../x",
        "/abs",
        "certs/.hidden",
        "",
        "a//b",
        "a/b/",
        "sp ace",
    ] {
        assert!(
            matches!(s.load(bad), Err(StoreError::InvalidName(_))),
            "load {bad:?}"
        );
        assert!(
            matches!(s.store(bad, b"x"), Err(StoreError::InvalidName(_))),
            "store {bad:?}"
        );
        assert!(
            matches!(s.delete(bad), Err(StoreError::InvalidName(_))),
            "delete {bad:?}"
        );
        assert!(
            matches!(s.list(bad), Err(StoreError::InvalidName(_))),
            "list {bad:?}"
        );
    }
    assert!(matches!(s.lock("a/b"), Err(StoreError::InvalidName(_))));
}

/// `rename_prefix` moves a "directory" of keys, nested ones included.
pub fn rename_prefix(s: &dyn Storage) {
    s.store("accounts/a/key.pem", b"k").unwrap();
    s.store("accounts/a/account.json", b"{}").unwrap();
    s.store("accounts/a/sub/deep", b"d").unwrap();
    s.store("accounts/ab/key.pem", b"other").unwrap();
    s.rename_prefix("accounts/a", "accounts/a.old").unwrap();
    assert_eq!(s.load("accounts/a/key.pem").unwrap(), None);
    assert_eq!(
        s.load("accounts/a.old/key.pem").unwrap().as_deref(),
        Some(&b"k"[..])
    );
    assert_eq!(
        s.load("accounts/a.old/sub/deep").unwrap().as_deref(),
        Some(&b"d"[..])
    );
    // A sibling sharing the name's first letters is not part of the prefix.
    assert_eq!(
        s.load("accounts/ab/key.pem").unwrap().as_deref(),
        Some(&b"other"[..])
    );
    assert_eq!(s.list("accounts").unwrap(), ["a.old", "ab"]);
    assert_eq!(
        s.list("accounts/a.old").unwrap(),
        ["account.json", "key.pem", "sub"]
    );
}

/// Locks exclude without waiting, are independent by name, are released on drop, and every
/// acquisition has a larger fencing token; a write fenced by a held lease goes through.
pub fn locks(s: &dyn Storage) {
    let a = s.lock("www").unwrap();
    assert_eq!(a.name(), "www");
    assert!(matches!(s.lock("www"), Err(StoreError::Locked { .. })));
    let other = s.lock("api").unwrap();
    let first = a.token();
    s.store_fenced("fenced/www.json", b"under lease", &a)
        .unwrap();
    assert_eq!(
        s.load("fenced/www.json").unwrap().as_deref(),
        Some(&b"under lease"[..])
    );
    s.store("fenced/www.key.pem", b"k").unwrap();
    s.delete_fenced("fenced/www.key.pem", &a).unwrap();
    assert_eq!(s.load("fenced/www.key.pem").unwrap(), None);
    drop(a);
    let b = s.lock_wait("www").unwrap();
    assert!(b.token() > first, "{} > {first}", b.token());
    drop(b);
    let c = s.lock("www").unwrap();
    assert!(c.token() > first + 1, "{} > {}", c.token(), first + 1);
    drop((c, other));
}
