//! A strict check of an installed certificate/key pair.

use std::path::Path;

use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{X509, X509StoreContext};

/// What a checked pair is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    /// Leaf serial, hex.
    pub serial: String,
    /// The bytes of fullchain.pem, privkey.pem, chain.pem, cert.pem (in that order).
    pub bytes: Vec<Vec<u8>>,
    /// The leaf's DNS names, sorted.
    pub names: Vec<String>,
}

/// Check the pair in `dir` through its top-level symlinks: all four files readable, the key matches
/// the leaf, fullchain = cert + chain, the chain verifies up to `root`, the leaf names are `names`.
pub fn check_pair(dir: &Path, root: &X509, names: &[&str]) -> Result<Pair, String> {
    let mut bytes = Vec::new();
    for f in ["fullchain.pem", "privkey.pem", "chain.pem", "cert.pem"] {
        let p = dir.join(f);
        let b = std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        bytes.push(b);
    }
    let full = X509::stack_from_pem(&bytes[0]).map_err(|e| format!("fullchain.pem: {e}"))?;
    let key = openssl::pkey::PKey::private_key_from_pem(&bytes[1])
        .map_err(|e| format!("privkey.pem: {e}"))?;
    let chain = X509::stack_from_pem(&bytes[2]).map_err(|e| format!("chain.pem: {e}"))?;
    let cert = X509::stack_from_pem(&bytes[3]).map_err(|e| format!("cert.pem: {e}"))?;
    if cert.len() != 1 {
        return Err(format!("cert.pem holds {} certificates", cert.len()));
    }
    if chain.is_empty() {
        return Err("chain.pem holds no certificate".into());
    }
    let der = |v: &[X509]| -> Vec<Vec<u8>> { v.iter().map(|c| c.to_der().unwrap()).collect() };
    let mut expect = der(&cert);
    expect.extend(der(&chain));
    if der(&full) != expect {
        return Err("fullchain.pem is not cert.pem followed by chain.pem".into());
    }
    let leaf = &cert[0];
    let leaf_key = leaf.public_key().map_err(|e| e.to_string())?;
    if !key.public_eq(&leaf_key) {
        return Err("privkey.pem does not match cert.pem".into());
    }
    let mut store = X509StoreBuilder::new().unwrap();
    store.add_cert(root.clone()).unwrap();
    let store = store.build();
    let mut untrusted = Stack::new().unwrap();
    for c in &chain {
        untrusted.push(c.clone()).unwrap();
    }
    let mut ctx = X509StoreContext::new().unwrap();
    let ok = ctx
        .init(&store, leaf, &untrusted, |c| c.verify_cert())
        .map_err(|e| e.to_string())?;
    if !ok {
        return Err(format!(
            "the chain does not verify to pebble's root: {}",
            ctx.error()
        ));
    }
    let mut got: Vec<String> = leaf
        .subject_alt_names()
        .map(|s| {
            s.iter()
                .filter_map(|n| n.dnsname().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    got.sort();
    let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    want.sort();
    if got != want {
        return Err(format!("the leaf is for {got:?}, expected {want:?}"));
    }
    let serial = leaf
        .serial_number()
        .to_bn()
        .unwrap()
        .to_hex_str()
        .unwrap()
        .to_string();
    Ok(Pair {
        serial,
        bytes,
        names: got,
    })
}
