//! Verification of a private key and certificate chain before anything is installed.

use std::collections::BTreeSet;
use std::net::IpAddr;

use openssl::asn1::{Asn1Time, Asn1TimeRef};
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, Private};
use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{X509, X509StoreContext, X509VerifyResult};
use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::acme::Certificate;

/// What a verified certificate chain holds, as the scheduler and `status` need it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifiedCert {
    /// The leaf's serial number, lowercase hex without separators, padded to whole bytes.
    pub serial_hex: String,
    /// Start of the leaf's validity.
    pub not_before: jiff::Timestamp,
    /// End of the leaf's validity.
    pub not_after: jiff::Timestamp,
    /// The leaf's subject alternative names (DNS names lowercased, IPs in canonical text form), sorted.
    pub names: Vec<String>,
    /// The private key type in config spelling: `ecdsa-p256`, `ecdsa-p384`, `ecdsa-p521`, `rsa-<bits>`,
    /// `ed25519`, or `unknown`.
    pub key_type: String,
    /// The common name of the leaf's issuer (the intermediate), when present.
    pub issuer_cn: Option<String>,
    /// The issuer common name of the topmost certificate of the chain (the root the chain leads to);
    /// this is what `preferred_chain` matches.
    pub top_issuer_cn: Option<String>,
}

/// Verify that `key_pem` and `chain_pem` form a complete, matching, currently valid certificate;
/// what [`VerifiedPair::from_pem`] checks, for callers that need only the facts.
pub fn verify_pair(
    key_pem: &[u8],
    chain_pem: &[u8],
    expected_names: &[String],
    roots: Option<&[X509]>,
) -> Result<VerifiedCert, StoreError> {
    VerifiedPair::from_pem(key_pem, chain_pem, expected_names, roots).map(|p| p.cert)
}

/// A key and chain that passed verification, with the bytes to install. Only verification makes
/// one, so an install (which takes nothing else) never writes a pair that was not checked, and
/// the pair is parsed once: OpenSSL 3 builds a decoder context for every key and certificate it
/// parses, which was most of the client's CPU per issuance when each step parsed the pair again
/// (the chain is read by [`Certificate`], which does not).
pub struct VerifiedPair {
    cert: VerifiedCert,
    key_pem: Vec<u8>,
    chain: Vec<Certificate>,
    /// The PEM of each certificate of `chain`, end-entity first.
    pems: Vec<Vec<u8>>,
    placeholder: bool,
}

impl VerifiedPair {
    /// Verify a pair given as PEM (an import, a fleet's shared pair). Checks, in order: the chain
    /// parses and holds at least one certificate; the key parses and matches the leaf's public
    /// key; every certificate is issued and signed by the next one; the leaf's SANs (DNS and IP)
    /// equal `expected_names` (case-insensitive, wildcards literal, IPs compared as addresses);
    /// when `roots` are given, the chain verifies up to one of them at the current time; the leaf
    /// is valid now.
    pub fn from_pem(
        key_pem: &[u8],
        chain_pem: &[u8],
        expected_names: &[String],
        roots: Option<&[X509]>,
    ) -> Result<Self, StoreError> {
        let chain = parse_chain(chain_pem)?;
        let key = parse_key(key_pem)?;
        Self::checked(&key, key_pem.to_vec(), chain, expected_names, roots)
    }

    /// Verify a chain already parsed (a download) against the key in hand (the order's), as
    /// [`VerifiedPair::from_pem`] does; the key is written as PKCS#8 PEM.
    pub fn from_key(
        key: &PKey<Private>,
        chain: Vec<Certificate>,
        expected_names: &[String],
        roots: Option<&[X509]>,
    ) -> Result<Self, StoreError> {
        let key_pem = key
            .private_key_to_pem_pkcs8()
            .map_err(StoreError::ssl("encoding the private key"))?;
        Self::checked(key, key_pem, chain, expected_names, roots)
    }

    fn checked(
        key: &PKey<Private>,
        key_pem: Vec<u8>,
        chain: Vec<Certificate>,
        expected_names: &[String],
        roots: Option<&[X509]>,
    ) -> Result<Self, StoreError> {
        let cert = check_pair(key, &chain)?;
        check_names(&cert, expected_names)?;
        if let Some(roots) = roots {
            verify_to_roots(&chain, roots)?;
        }
        check_valid_now(&cert)?;
        let pems = chain.iter().map(Certificate::to_pem).collect();
        let placeholder = is_self_signed(&chain);
        Ok(Self {
            cert,
            key_pem,
            chain,
            pems,
            placeholder,
        })
    }

    /// What the certificate holds.
    pub fn cert(&self) -> &VerifiedCert {
        &self.cert
    }

    /// The private key's PEM, as given (or PKCS#8 for a key in hand).
    pub fn key_pem(&self) -> &[u8] {
        &self.key_pem
    }

    /// The end-entity certificate.
    pub fn leaf(&self) -> &Certificate {
        &self.chain[0]
    }

    /// The PEM of the end-entity certificate (`cert.pem`).
    pub fn leaf_pem(&self) -> &[u8] {
        &self.pems[0]
    }

    /// The PEM of the certificates after the leaf (`chain.pem`).
    pub fn rest_pem(&self) -> Vec<u8> {
        self.pems[1..].concat()
    }

    /// The PEM of the whole chain, leaf first (`fullchain.pem`).
    pub fn fullchain_pem(&self) -> Vec<u8> {
        self.pems.concat()
    }

    /// True when the chain is one self-signed certificate (a placeholder, not from a CA).
    pub fn is_placeholder(&self) -> bool {
        self.placeholder
    }
}

/// True when `chain` is one self-signed certificate.
pub(crate) fn is_self_signed(chain: &[Certificate]) -> bool {
    match chain {
        [c] => issued_by(c, c),
        _ => false,
    }
}

/// True when `parent` issued `child` and its key signed it: read from the bytes when they tell,
/// else as OpenSSL's `X509_check_issued` and `X509_verify` decide.
fn issued_by(child: &Certificate, parent: &Certificate) -> bool {
    if let Some(yes) = child.issued_by(parent) {
        return yes;
    }
    let (Ok(child), Ok(parent)) = (child.to_openssl(), parent.to_openssl()) else {
        return false;
    };
    parent.issued(&child) == X509VerifyResult::OK
        && parent
            .public_key()
            .and_then(|k| child.verify(&k))
            .unwrap_or(false)
}

/// True when `key` is the private half of `leaf`'s public key.
fn has_key(leaf: &Certificate, key: &PKey<Private>) -> Result<bool, StoreError> {
    if let Some(yes) = leaf.has_key(key) {
        return Ok(yes);
    }
    let leaf_pub = leaf
        .to_openssl()
        .and_then(|c| c.public_key())
        .map_err(StoreError::ssl("reading the leaf's public key"))?;
    Ok(leaf_pub.public_eq(key))
}

fn check_names(cert: &VerifiedCert, expected_names: &[String]) -> Result<(), StoreError> {
    let want = normalize_names(expected_names.iter().map(String::as_str));
    let got: BTreeSet<String> = cert.names.iter().cloned().collect();
    if want != got {
        let missing: Vec<_> = want.difference(&got).cloned().collect();
        let extra: Vec<_> = got.difference(&want).cloned().collect();
        return Err(StoreError::Verify(format!(
            "the certificate's names do not match the configured domains (missing: [{}], unexpected: [{}])",
            missing.join(", "),
            extra.join(", ")
        )));
    }
    Ok(())
}

fn check_valid_now(cert: &VerifiedCert) -> Result<(), StoreError> {
    let now = jiff::Timestamp::now();
    if now < cert.not_before {
        return Err(StoreError::Verify(format!(
            "the certificate is not valid before {} (now {now}); check the system clock",
            cert.not_before
        )));
    }
    if now > cert.not_after {
        return Err(StoreError::Verify(format!(
            "the certificate expired at {}",
            cert.not_after
        )));
    }
    Ok(())
}

/// A key and chain that parse, match each other, and are chained by signatures.
pub(crate) struct ParsedPair {
    pub(crate) info: VerifiedCert,
    pub(crate) chain: Vec<Certificate>,
}

/// The checks that hold for any intact pair, whatever the time or configured names.
pub(crate) fn parse_pair(key_pem: &[u8], chain_pem: &[u8]) -> Result<ParsedPair, StoreError> {
    let chain = parse_chain(chain_pem)?;
    let key = parse_key(key_pem)?;
    let info = check_pair(&key, &chain)?;
    Ok(ParsedPair { info, chain })
}

/// The certificates of a PEM chain, in order.
pub(crate) fn parse_chain(chain_pem: &[u8]) -> Result<Vec<Certificate>, StoreError> {
    // Bytes that are not UTF-8 can only be outside the PEM blocks (which are ASCII): skipped, as
    // OpenSSL's PEM reader skips them.
    let text = String::from_utf8_lossy(chain_pem);
    Certificate::chain_from_pem(&text)
        .map_err(|e| StoreError::Verify(format!("the certificate chain is not valid PEM: {e}")))
}

fn parse_key(key_pem: &[u8]) -> Result<PKey<Private>, StoreError> {
    PKey::private_key_from_pem(key_pem)
        .map_err(|_| StoreError::Verify("the private key is not a valid PEM private key".into()))
}

/// The leaf's facts, once the key matches the leaf and each certificate is signed by the next.
fn check_pair(key: &PKey<Private>, chain: &[Certificate]) -> Result<VerifiedCert, StoreError> {
    let Some(leaf) = chain.first() else {
        return Err(StoreError::Verify(
            "the certificate chain holds no certificate".into(),
        ));
    };
    if !has_key(leaf, key)? {
        return Err(StoreError::Verify(
            "the private key does not belong to the certificate (public keys differ)".into(),
        ));
    }
    for (i, pair) in chain.windows(2).enumerate() {
        let (child, parent) = (&pair[0], &pair[1]);
        if !issued_by(child, parent) {
            return Err(StoreError::Verify(format!(
                "chain certificate #{i} ({}) is not signed by the next one ({})",
                child.subject_cn().unwrap_or_default(),
                parent.subject_cn().unwrap_or_default()
            )));
        }
    }
    let names = sans(leaf);
    if names.is_empty() {
        return Err(StoreError::Verify(
            "the certificate has no DNS or IP subject alternative names".into(),
        ));
    }
    Ok(VerifiedCert {
        serial_hex: leaf.serial_hex(),
        not_before: leaf.not_before(),
        not_after: leaf.not_after(),
        names: names.into_iter().collect(),
        key_type: key_type(key),
        issuer_cn: leaf.issuer_cn(),
        top_issuer_cn: chain.last().and_then(Certificate::issuer_cn),
    })
}

fn verify_to_roots(chain: &[Certificate], roots: &[X509]) -> Result<(), StoreError> {
    let chain = chain
        .iter()
        .map(Certificate::to_openssl)
        .collect::<Result<Vec<X509>, _>>()
        .map_err(StoreError::ssl("reading the chain"))?;
    let mut builder = X509StoreBuilder::new().map_err(StoreError::ssl("building a trust store"))?;
    for root in roots {
        builder
            .add_cert(root.clone())
            .map_err(StoreError::ssl("adding a trust root"))?;
    }
    let store = builder.build();
    let mut untrusted = Stack::new().map_err(StoreError::ssl("building the chain"))?;
    for c in chain.iter().skip(1) {
        untrusted
            .push(c.clone())
            .map_err(StoreError::ssl("building the chain"))?;
    }
    let mut ctx = X509StoreContext::new().map_err(StoreError::ssl("building a verify context"))?;
    let (ok, reason) = ctx
        .init(&store, &chain[0], &untrusted, |c| {
            let ok = c.verify_cert()?;
            Ok((ok, c.error().error_string().to_string()))
        })
        .map_err(StoreError::ssl("verifying the chain"))?;
    if !ok {
        return Err(StoreError::Verify(format!(
            "the chain does not lead to a trusted root: {reason}; check ca_bundle or preferred_chain"
        )));
    }
    Ok(())
}

fn sans(leaf: &Certificate) -> BTreeSet<String> {
    let dns = leaf.dns_names().iter().map(|d| normalize_name(d));
    dns.chain(leaf.ip_addrs().iter().map(IpAddr::to_string))
        .collect()
}

/// Canonical form of a configured or certified name: IPs as addresses, DNS names lowercased
/// without a trailing dot.
pub(crate) fn normalize_name(n: &str) -> String {
    let t = n.trim().trim_start_matches('[').trim_end_matches(']');
    match t.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => n.trim().trim_end_matches('.').to_ascii_lowercase(),
    }
}

pub(crate) fn normalize_names<'a>(names: impl Iterator<Item = &'a str>) -> BTreeSet<String> {
    names.map(normalize_name).collect()
}

fn key_type(key: &PKey<Private>) -> String {
    match key.id() {
        Id::RSA => format!("rsa-{}", key.bits()),
        Id::EC => match key.ec_key().ok().and_then(|k| k.group().curve_name()) {
            Some(Nid::X9_62_PRIME256V1) => "ecdsa-p256".into(),
            Some(Nid::SECP384R1) => "ecdsa-p384".into(),
            Some(Nid::SECP521R1) => "ecdsa-p521".into(),
            _ => "ecdsa".into(),
        },
        Id::ED25519 => "ed25519".into(),
        _ => "unknown".into(),
    }
}

/// An ASN.1 time (Not Before / Not After) as a timestamp.
pub(crate) fn asn1_to_ts(t: &Asn1TimeRef) -> Result<jiff::Timestamp, StoreError> {
    let epoch = Asn1Time::from_unix(0).map_err(StoreError::ssl("building the epoch"))?;
    let d = epoch
        .diff(t)
        .map_err(StoreError::ssl("reading a certificate time"))?;
    let secs = i64::from(d.days) * 86_400 + i64::from(d.secs);
    jiff::Timestamp::from_second(secs)
        .map_err(|e| StoreError::Verify(format!("certificate time out of range: {e}")))
}

/// Test certificates: a root, an intermediate and leaves with chosen names, keys and validity.
#[cfg(test)]
pub(crate) mod testpki {
    use openssl::asn1::Asn1Time;
    use openssl::bn::BigNum;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::{PKey, Private};
    use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
    use openssl::x509::{X509, X509NameBuilder};

    pub fn ec_key() -> PKey<Private> {
        let g = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        PKey::from_ec_key(EcKey::generate(&g).unwrap()).unwrap()
    }

    pub fn cert(
        cn: &str,
        key: &PKey<Private>,
        issuer: Option<(&X509, &PKey<Private>)>,
        sans: &[&str],
        serial: u32,
        days: (i64, i64),
    ) -> X509 {
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_nid(Nid::COMMONNAME, cn).unwrap();
        let name = name.build();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_serial_number(&BigNum::from_u32(serial).unwrap().to_asn1_integer().unwrap())
            .unwrap();
        b.set_subject_name(&name).unwrap();
        let now = jiff::Timestamp::now().as_second();
        b.set_not_before(&Asn1Time::from_unix(now + days.0 * 86400).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::from_unix(now + days.1 * 86400).unwrap())
            .unwrap();
        b.set_pubkey(key).unwrap();
        if sans.is_empty() {
            b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
                .unwrap();
        } else {
            let mut s = SubjectAlternativeName::new();
            for n in sans {
                if n.parse::<std::net::IpAddr>().is_ok() {
                    s.ip(n);
                } else {
                    s.dns(n);
                }
            }
            let ext = s
                .build(&b.x509v3_context(issuer.map(|i| i.0.as_ref()), None))
                .unwrap();
            b.append_extension(ext).unwrap();
        }
        match issuer {
            Some((ic, ik)) => {
                b.set_issuer_name(ic.subject_name()).unwrap();
                b.sign(ik, MessageDigest::sha256()).unwrap();
            }
            None => {
                b.set_issuer_name(&name).unwrap();
                b.sign(key, MessageDigest::sha256()).unwrap();
            }
        }
        b.build()
    }

    /// A root, an intermediate, and a way to issue leaves under them.
    pub struct Pki {
        pub root: X509,
        pub inter: X509,
        pub inter_key: PKey<Private>,
    }

    impl Pki {
        pub fn new() -> Self {
            let root_key = ec_key();
            let root = cert("Test Root X1", &root_key, None, &[], 1, (-10, 3650));
            let inter_key = ec_key();
            let inter = cert(
                "Test Intermediate E1",
                &inter_key,
                Some((&root, &root_key)),
                &[],
                2,
                (-10, 3650),
            );
            // The intermediate is a CA; `cert` adds CA constraints when there are no SANs.
            Self {
                root,
                inter,
                inter_key,
            }
        }

        /// (key PEM, chain PEM = leaf + intermediate) for a leaf with `sans`.
        pub fn leaf(&self, sans: &[&str], serial: u32, days: (i64, i64)) -> (Vec<u8>, Vec<u8>) {
            let key = ec_key();
            let leaf = cert(
                "leaf",
                &key,
                Some((&self.inter, &self.inter_key)),
                sans,
                serial,
                days,
            );
            let mut chain = leaf.to_pem().unwrap();
            chain.extend(self.inter.to_pem().unwrap());
            (key.private_key_to_pem_pkcs8().unwrap(), chain)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testpki::*;
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_verified_pair_is_parsed_once_and_gives_the_files_to_write() {
        let pki = Pki::new();
        let (key_pem, chain_pem) = pki.leaf(&["a.test"], 0x21, (-1, 90));
        let by_pem =
            VerifiedPair::from_pem(&key_pem, &chain_pem, &names(&["a.test"]), None).unwrap();
        assert_eq!(by_pem.key_pem(), key_pem, "the key is written as given");
        assert_eq!(by_pem.fullchain_pem(), chain_pem);
        let leaf = X509::from_pem(by_pem.leaf_pem()).unwrap();
        assert_eq!(leaf.to_der().unwrap(), by_pem.leaf().der());
        assert_eq!(
            [by_pem.leaf_pem(), &by_pem.rest_pem()].concat(),
            by_pem.fullchain_pem()
        );
        assert!(!by_pem.is_placeholder());

        // The key in hand and a chain already parsed (a download) give the same facts; the
        // checks are the same (a wrong key, wrong names are refused).
        let key = PKey::private_key_from_pem(&key_pem).unwrap();
        let chain = parse_chain(&chain_pem).unwrap();
        // Bytes outside the PEM blocks, even not UTF-8, are skipped as OpenSSL's reader skips them.
        let noisy = [&b"\xff\xfe comment\n"[..], &chain_pem].concat();
        assert_eq!(parse_chain(&noisy).unwrap(), chain);
        let by_key =
            VerifiedPair::from_key(&key, chain.clone(), &names(&["a.test"]), None).unwrap();
        assert_eq!(by_key.cert(), by_pem.cert());
        assert_eq!(by_key.fullchain_pem(), chain_pem);
        let other = ec_key();
        assert!(VerifiedPair::from_key(&other, chain.clone(), &names(&["a.test"]), None).is_err());
        assert!(VerifiedPair::from_key(&key, chain, &names(&["b.test"]), None).is_err());

        // One self-signed certificate is a placeholder.
        let own = ec_key();
        let placeholder = cert("a.test", &own, None, &["a.test"], 1, (-1, 30));
        let placeholder = Certificate::from_der(placeholder.to_der().unwrap()).unwrap();
        let p = VerifiedPair::from_key(&own, vec![placeholder], &names(&["a.test"]), None).unwrap();
        assert!(p.is_placeholder());
    }

    #[test]
    fn accepts_a_good_pair_and_reports_its_facts() {
        let pki = Pki::new();
        let (key, chain) = pki.leaf(
            &["Example.com", "*.example.com", "192.0.2.1", "::1"],
            0xabc,
            (-1, 90),
        );
        let v = verify_pair(
            &key,
            &chain,
            &names(&["example.COM.", "*.example.com", "192.0.2.1", "[::1]"]),
            Some(std::slice::from_ref(&pki.root)),
        )
        .unwrap();
        assert_eq!(v.serial_hex, "0abc");
        assert_eq!(v.key_type, "ecdsa-p256");
        assert_eq!(v.issuer_cn.as_deref(), Some("Test Intermediate E1"));
        assert_eq!(v.top_issuer_cn.as_deref(), Some("Test Root X1"));
        assert_eq!(
            v.names,
            names(&["*.example.com", "192.0.2.1", "::1", "example.com"])
        );
        let life = v.not_after.as_second() - v.not_before.as_second();
        assert_eq!(life, 91 * 86400);
    }

    #[test]
    fn rejects_foreign_key() {
        let pki = Pki::new();
        let (_, chain) = pki.leaf(&["a.test"], 1, (-1, 90));
        let other = ec_key().private_key_to_pem_pkcs8().unwrap();
        let err = verify_pair(&other, &chain, &names(&["a.test"]), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not belong"), "{err}");
    }

    #[test]
    fn rejects_name_mismatch_and_says_which() {
        let pki = Pki::new();
        let (key, chain) = pki.leaf(&["a.test", "b.test"], 1, (-1, 90));
        let err = verify_pair(&key, &chain, &names(&["a.test", "c.test"]), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("missing: [c.test]") && err.contains("unexpected: [b.test]"),
            "{err}"
        );
        // A wildcard is literal: *.a.test does not stand for x.a.test.
        let (key, chain) = pki.leaf(&["*.a.test"], 1, (-1, 90));
        assert!(verify_pair(&key, &chain, &names(&["x.a.test"]), None).is_err());
    }

    #[test]
    fn rejects_broken_chain_order_and_untrusted_root() {
        let pki = Pki::new();
        let (key, chain) = pki.leaf(&["a.test"], 1, (-1, 90));
        // leaf followed by an unrelated CA
        let other = Pki::new();
        let leaf = X509::stack_from_pem(&chain).unwrap().remove(0);
        let mut bad = leaf.to_pem().unwrap();
        bad.extend(other.inter.to_pem().unwrap());
        let err = verify_pair(&key, &bad, &names(&["a.test"]), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not signed by the next"), "{err}");
        // good chain, wrong trust root
        let err = verify_pair(
            &key,
            &chain,
            &names(&["a.test"]),
            Some(std::slice::from_ref(&other.root)),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("trusted root"), "{err}");
    }

    #[test]
    fn rejects_expired_and_not_yet_valid() {
        let pki = Pki::new();
        let (key, chain) = pki.leaf(&["a.test"], 1, (-90, -1));
        assert!(
            verify_pair(&key, &chain, &names(&["a.test"]), None)
                .unwrap_err()
                .to_string()
                .contains("expired")
        );
        let (key, chain) = pki.leaf(&["a.test"], 1, (2, 90));
        assert!(
            verify_pair(&key, &chain, &names(&["a.test"]), None)
                .unwrap_err()
                .to_string()
                .contains("not valid before")
        );
    }

    #[test]
    fn rejects_garbage_and_empty() {
        let pki = Pki::new();
        let (key, _) = pki.leaf(&["a.test"], 1, (-1, 90));
        assert!(verify_pair(&key, b"", &names(&["a.test"]), None).is_err());
        assert!(verify_pair(b"nope", b"nope", &names(&["a.test"]), None).is_err());
    }
}
