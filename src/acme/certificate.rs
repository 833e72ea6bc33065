//! A certificate as certkeeper reads it: its DER walked once for the fields the client needs
//! (RFC 5280 §4.1), and the signature of a certificate checked with its issuer's key.
//!
//! OpenSSL 3 builds a decoder context for the public key of every certificate it parses, which was
//! the largest single cost of an issuance; a chain arriving from the CA is read here instead. The
//! reader is strict DER (definite lengths, the fields in order) and keeps the byte ranges of what
//! it does not interpret, so the bytes written out are the bytes received. Whatever the fast
//! checks here cannot confirm (an algorithm they do not know, names that differ only in
//! encoding), [`Certificate::to_openssl`] hands to OpenSSL, which decides as before.

use std::net::IpAddr;
use std::ops::Range;
use std::sync::OnceLock;

use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey, EcPoint};
use openssl::ecdsa::EcdsaSig;
use openssl::nid::Nid;
use openssl::pkey::{PKeyRef, Private};
use openssl::rsa::{Padding, Rsa};
use openssl::x509::X509;

const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
const OID_O: &[u8] = &[0x55, 0x04, 0x0a];
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];
const OID_AKI: &[u8] = &[0x55, 0x1d, 0x23];
const OID_SKI: &[u8] = &[0x55, 0x1d, 0x0e];
const OID_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x0f];
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_RSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
const OID_RSA_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c];
const OID_RSA_SHA512: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d];
const OID_ECDSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
const OID_ECDSA_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
const OID_ECDSA_SHA512: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04];

/// One certificate: its DER and what was read from it.
#[derive(Clone, PartialEq, Eq)]
pub struct Certificate {
    der: Vec<u8>,
    tbs: Range<usize>,
    sig_alg: Range<usize>,
    signature: Range<usize>,
    serial: Range<usize>,
    issuer: Range<usize>,
    subject: Range<usize>,
    not_before: jiff::Timestamp,
    not_after: jiff::Timestamp,
    key_alg: Range<usize>,
    key_param: Option<Range<usize>>,
    key: Range<usize>,
    dns_names: Vec<String>,
    ip_addrs: Vec<IpAddr>,
    aki: Option<Range<usize>>,
    ski: Option<Range<usize>>,
    /// `Some(may sign certificates)` when the certificate has a key usage extension.
    key_cert_sign: Option<bool>,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("subject", &self.subject_cn())
            .field("serial", &self.serial_hex())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A certificate's DER that is not a certificate certkeeper can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CertificateError(String);

fn bad(what: &str) -> CertificateError {
    CertificateError(format!("malformed certificate: {what}"))
}

impl Certificate {
    /// Read a DER certificate.
    pub fn from_der(der: Vec<u8>) -> Result<Self, CertificateError> {
        let mut outer = Reader::new(&der, 0..der.len());
        let cert = outer.expect(0x30, "certificate")?;
        if !outer.done() {
            return Err(bad("bytes after the certificate"));
        }
        let mut c = Reader::new(&der, cert);
        let tbs = c.expect_whole(0x30, "tbsCertificate")?;
        let sig_alg = algorithm(&der, c.expect(0x30, "signatureAlgorithm")?)?.0;
        let signature = bit_string(&der, c.expect(0x03, "signatureValue")?)?;
        let mut t = Reader::new(&der, Reader::new(&der, tbs.clone()).expect(0x30, "tbs")?);
        if t.peek() == Some(0xa0) {
            t.expect(0xa0, "version")?;
        }
        let serial = t.expect(0x02, "serialNumber")?;
        t.expect(0x30, "signature")?;
        let issuer = t.expect_whole(0x30, "issuer")?;
        let mut validity = Reader::new(&der, t.expect(0x30, "validity")?);
        let not_before = time(&der, validity.any("notBefore")?)?;
        let not_after = time(&der, validity.any("notAfter")?)?;
        let subject = t.expect_whole(0x30, "subject")?;
        let mut spki = Reader::new(&der, t.expect(0x30, "subjectPublicKeyInfo")?);
        let (key_alg, key_param) = algorithm(&der, spki.expect(0x30, "algorithm")?)?;
        let key = bit_string(&der, spki.expect(0x03, "subjectPublicKey")?)?;
        let mut cert = Self {
            tbs,
            sig_alg,
            signature,
            serial,
            issuer,
            subject,
            not_before,
            not_after,
            key_alg,
            key_param,
            key,
            dns_names: Vec::new(),
            ip_addrs: Vec::new(),
            aki: None,
            ski: None,
            key_cert_sign: None,
            der: Vec::new(),
        };
        while let Some(tag) = t.peek() {
            let body = t.any("tbs field")?.1;
            if tag == 0xa3 {
                let mut wrapped = Reader::new(&der, body);
                cert.extensions(&der, wrapped.expect(0x30, "extensions")?)?;
            }
        }
        cert.der = der;
        Ok(cert)
    }

    /// Read the certificates of a PEM text, in order (other text between them is skipped).
    pub fn chain_from_pem(pem: &str) -> Result<Vec<Self>, CertificateError> {
        use base64::Engine as _;
        const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
        const END: &str = "-----END CERTIFICATE-----";
        let mut out = Vec::new();
        let mut rest = pem;
        while let Some(start) = rest.find(BEGIN) {
            let body = &rest[start + BEGIN.len()..];
            let end = body
                .find(END)
                .ok_or_else(|| CertificateError("a PEM certificate has no END line".into()))?;
            let b64: String = body[..end]
                .chars()
                .filter(|c| !c.is_ascii_whitespace())
                .collect();
            let der = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| CertificateError(format!("a PEM certificate is not base64: {e}")))?;
            out.push(Self::from_der(der)?);
            rest = &body[end + END.len()..];
        }
        Ok(out)
    }

    fn extensions(&mut self, der: &[u8], list: Range<usize>) -> Result<(), CertificateError> {
        let mut exts = Reader::new(der, list);
        while !exts.done() {
            let mut ext = Reader::new(der, exts.expect(0x30, "extension")?);
            let oid = ext.expect(0x06, "extnID")?;
            if ext.peek() == Some(0x01) {
                ext.expect(0x01, "critical")?;
            }
            let value = ext.expect(0x04, "extnValue")?;
            match &der[oid] {
                OID_SAN => self.sans(der, value)?,
                OID_AKI => {
                    let mut aki = Reader::new(der, Reader::new(der, value).expect(0x30, "AKI")?);
                    while let Some(tag) = aki.peek() {
                        let (_, body) = aki.any("AKI field")?;
                        if tag == 0x80 {
                            self.aki = Some(body);
                        }
                    }
                }
                OID_SKI => self.ski = Some(Reader::new(der, value).expect(0x04, "SKI")?),
                OID_KEY_USAGE => {
                    let bits = bit_string(der, Reader::new(der, value).expect(0x03, "keyUsage")?)?;
                    // keyCertSign is bit 5 of the first byte (RFC 5280 §4.2.1.3).
                    self.key_cert_sign = Some(der[bits].first().is_some_and(|b| b & 0x04 != 0));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn sans(&mut self, der: &[u8], value: Range<usize>) -> Result<(), CertificateError> {
        let mut names = Reader::new(der, Reader::new(der, value).expect(0x30, "SAN")?);
        while let Some(tag) = names.peek() {
            let (_, body) = names.any("GeneralName")?;
            let bytes = &der[body];
            match tag {
                0x82 => self.dns_names.push(
                    std::str::from_utf8(bytes)
                        .map_err(|_| bad("a dNSName is not text"))?
                        .to_string(),
                ),
                0x87 => {
                    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
                        self.ip_addrs.push(IpAddr::from(v4));
                    } else if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
                        self.ip_addrs.push(IpAddr::from(v6));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The DER.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The certificate as PEM, 64 base64 characters a line (as OpenSSL writes it).
    pub fn to_pem(&self) -> Vec<u8> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.der);
        let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 60);
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap_or_default());
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
        out.into_bytes()
    }

    /// The certificate parsed by OpenSSL, for what only OpenSSL does (path building to trusted
    /// roots) and for the checks the fast paths here leave to it.
    pub fn to_openssl(&self) -> Result<X509, openssl::error::ErrorStack> {
        X509::from_der(&self.der)
    }

    /// The serial number in lowercase hex without leading zero bytes (as OpenSSL's `BN_bn2hex`,
    /// lowercased).
    pub fn serial_hex(&self) -> String {
        let bytes = &self.der[self.serial.clone()];
        if bytes.first().is_some_and(|b| b & 0x80 != 0) {
            // Negative (RFC 5280 forbids it; some old CAs did it): as OpenSSL prints it.
            return BigNum::from_slice(&twos_complement(bytes))
                .and_then(|mut bn| {
                    bn.set_negative(true);
                    bn.to_hex_str().map(|s| s.to_ascii_lowercase())
                })
                .unwrap_or_default();
        }
        let magnitude = self.serial_magnitude();
        if magnitude.is_empty() {
            return "0".into();
        }
        magnitude.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The serial number's big-endian magnitude, without leading zero bytes.
    pub fn serial_magnitude(&self) -> &[u8] {
        let bytes = &self.der[self.serial.clone()];
        let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
        &bytes[first..]
    }

    /// Not valid before.
    pub fn not_before(&self) -> jiff::Timestamp {
        self.not_before
    }

    /// Not valid after.
    pub fn not_after(&self) -> jiff::Timestamp {
        self.not_after
    }

    /// The subject alternative names of type dNSName, as written.
    pub fn dns_names(&self) -> &[String] {
        &self.dns_names
    }

    /// The subject alternative names of type iPAddress.
    pub fn ip_addrs(&self) -> &[IpAddr] {
        &self.ip_addrs
    }

    /// The Authority Key Identifier's keyIdentifier.
    pub fn authority_key_id(&self) -> Option<&[u8]> {
        self.aki.clone().map(|r| &self.der[r])
    }

    /// The first common name of the subject.
    pub fn subject_cn(&self) -> Option<String> {
        name_values(&self.der, self.subject.clone(), OID_CN)
            .into_iter()
            .next()
    }

    /// The first common name of the issuer.
    pub fn issuer_cn(&self) -> Option<String> {
        name_values(&self.der, self.issuer.clone(), OID_CN)
            .into_iter()
            .next()
    }

    /// Every common name and every organization of the issuer (`true`) or subject (`false`).
    pub fn name_parts(&self, issuer: bool) -> (Vec<String>, Vec<String>) {
        let name = if issuer { &self.issuer } else { &self.subject };
        (
            name_values(&self.der, name.clone(), OID_CN),
            name_values(&self.der, name.clone(), OID_O),
        )
    }

    /// `Some(true)` when `parent` issued this certificate and its key signed it, read from the
    /// bytes; `None` when that cannot be confirmed here (names equal only after normalization, an
    /// algorithm not handled here, a signature that does not verify): ask OpenSSL then.
    pub fn issued_by(&self, parent: &Certificate) -> Option<bool> {
        let names_match = self.der[self.issuer.clone()] == parent.der[parent.subject.clone()];
        let ids_match = match (self.authority_key_id(), parent.ski.clone()) {
            (Some(aki), Some(ski)) => aki == &parent.der[ski],
            _ => true,
        };
        if !names_match || !ids_match || parent.key_cert_sign == Some(false) {
            return None;
        }
        parent
            .signed(
                &self.der[self.sig_alg.clone()],
                &self.der[self.tbs.clone()],
                &self.der[self.signature.clone()],
            )
            .then_some(true)
    }

    /// True when this certificate's key made `signature` over `message` with `alg`.
    fn signed(&self, alg: &[u8], message: &[u8], signature: &[u8]) -> bool {
        let key = &self.der[self.key.clone()];
        match &self.der[self.key_alg.clone()] {
            OID_RSA => rsa_verified(key, alg, message, signature).unwrap_or(false),
            OID_EC => {
                let curve = self.key_param.clone().map(|r| &self.der[r]);
                ec_verified(curve, key, alg, message, signature).unwrap_or(false)
            }
            _ => false,
        }
    }

    /// `Some(true)` when `key` is the private half of this certificate's public key, read from
    /// the bytes (EC and RSA keys); `None` when that cannot be confirmed here.
    pub fn has_key(&self, key: &PKeyRef<Private>) -> Option<bool> {
        let public = &self.der[self.key.clone()];
        match &self.der[self.key_alg.clone()] {
            OID_EC => {
                let ec = key.ec_key().ok()?;
                let curve = self.key_param.clone().map(|r| &self.der[r])?;
                let nid = curve_nid(curve)?;
                if ec.group().curve_name() != Some(nid) {
                    return None;
                }
                let mut ctx = openssl::bn::BigNumContext::new().ok()?;
                let point = ec
                    .public_key()
                    .to_bytes(
                        ec.group(),
                        openssl::ec::PointConversionForm::UNCOMPRESSED,
                        &mut ctx,
                    )
                    .ok()?;
                (point == public).then_some(true)
            }
            OID_RSA => {
                let rsa = key.rsa().ok()?;
                let (n, e) = rsa_public(public)?;
                (rsa.n().to_vec() == n && rsa.e().to_vec() == e).then_some(true)
            }
            _ => None,
        }
    }
}

/// The magnitude of a negative two's-complement integer.
fn twos_complement(bytes: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = bytes.iter().map(|b| !b).collect();
    for b in out.iter_mut().rev() {
        let (v, carry) = b.overflowing_add(1);
        *b = v;
        if !carry {
            break;
        }
    }
    out
}

fn curve_nid(oid: &[u8]) -> Option<Nid> {
    match oid {
        OID_P256 => Some(Nid::X9_62_PRIME256V1),
        OID_P384 => Some(Nid::SECP384R1),
        _ => None,
    }
}

/// The group of a curve, built once (building one is not free).
fn group(nid: Nid) -> Option<&'static EcGroup> {
    static P256: OnceLock<Option<EcGroup>> = OnceLock::new();
    static P384: OnceLock<Option<EcGroup>> = OnceLock::new();
    let cell = match nid {
        Nid::X9_62_PRIME256V1 => &P256,
        Nid::SECP384R1 => &P384,
        _ => return None,
    };
    cell.get_or_init(|| EcGroup::from_curve_name(nid).ok())
        .as_ref()
}

fn digest(alg: &[u8], message: &[u8]) -> Option<(Vec<u8>, &'static [u8])> {
    // The DER DigestInfo prefix of PKCS#1 v1.5 for each hash (RFC 8017 §9.2, note 1).
    const SHA256: &[u8] = &[
        0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        0x05, 0x00, 0x04, 0x20,
    ];
    const SHA384: &[u8] = &[
        0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02,
        0x05, 0x00, 0x04, 0x30,
    ];
    const SHA512: &[u8] = &[
        0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03,
        0x05, 0x00, 0x04, 0x40,
    ];
    use openssl::sha;
    match alg {
        OID_RSA_SHA256 | OID_ECDSA_SHA256 => Some((sha::sha256(message).to_vec(), SHA256)),
        OID_RSA_SHA384 | OID_ECDSA_SHA384 => Some((sha::sha384(message).to_vec(), SHA384)),
        OID_RSA_SHA512 | OID_ECDSA_SHA512 => Some((sha::sha512(message).to_vec(), SHA512)),
        _ => None,
    }
}

fn rsa_verified(key: &[u8], alg: &[u8], message: &[u8], signature: &[u8]) -> Option<bool> {
    if !matches!(alg, OID_RSA_SHA256 | OID_RSA_SHA384 | OID_RSA_SHA512) {
        return None;
    }
    let (hash, prefix) = digest(alg, message)?;
    let (n, e) = rsa_public(key)?;
    let rsa =
        Rsa::from_public_components(BigNum::from_slice(&n).ok()?, BigNum::from_slice(&e).ok()?)
            .ok()?;
    let mut out = vec![0u8; rsa.size() as usize];
    let len = rsa
        .public_decrypt(signature, &mut out, Padding::PKCS1)
        .ok()?;
    let got = &out[..len];
    Some(got.len() == prefix.len() + hash.len() && got.starts_with(prefix) && got.ends_with(&hash))
}

fn ec_verified(
    curve: Option<&[u8]>,
    key: &[u8],
    alg: &[u8],
    message: &[u8],
    signature: &[u8],
) -> Option<bool> {
    if !matches!(alg, OID_ECDSA_SHA256 | OID_ECDSA_SHA384 | OID_ECDSA_SHA512) {
        return None;
    }
    let group = group(curve_nid(curve?)?)?;
    let mut ctx = openssl::bn::BigNumContext::new().ok()?;
    let point = EcPoint::from_bytes(group, key, &mut ctx).ok()?;
    let ec = EcKey::from_public_key(group, &point).ok()?;
    let sig = EcdsaSig::from_der(signature).ok()?;
    let (hash, _) = digest(alg, message)?;
    sig.verify(&hash, &ec).ok()
}

/// The modulus and exponent of a PKCS#1 RSAPublicKey, without leading zero bytes.
fn rsa_public(key: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut outer = Reader::new(key, 0..key.len());
    let mut seq = Reader::new(key, outer.expect(0x30, "RSAPublicKey").ok()?);
    let strip = |r: Range<usize>| {
        let b = &key[r];
        let first = b.iter().position(|x| *x != 0).unwrap_or(b.len());
        b[first..].to_vec()
    };
    let n = strip(seq.expect(0x02, "modulus").ok()?);
    let e = strip(seq.expect(0x02, "exponent").ok()?);
    Some((n, e))
}

/// An AlgorithmIdentifier's OID, and its parameter when that is an OID (an EC key's curve).
fn algorithm(
    der: &[u8],
    body: Range<usize>,
) -> Result<(Range<usize>, Option<Range<usize>>), CertificateError> {
    let mut r = Reader::new(der, body);
    let oid = r.expect(0x06, "algorithm")?;
    let param = match r.peek() {
        Some(0x06) => Some(r.expect(0x06, "parameters")?),
        _ => None,
    };
    Ok((oid, param))
}

/// A BIT STRING's bytes (whole bytes only, as every key and signature is).
fn bit_string(der: &[u8], body: Range<usize>) -> Result<Range<usize>, CertificateError> {
    match der.get(body.start) {
        Some(_) => Ok(body.start + 1..body.end),
        None => Err(bad("an empty BIT STRING")),
    }
}

/// A UTCTime or GeneralizedTime in the forms RFC 5280 §4.1.2.5 allows (seconds, `Z`).
fn time(der: &[u8], (tag, body): (u8, Range<usize>)) -> Result<jiff::Timestamp, CertificateError> {
    let text = std::str::from_utf8(&der[body]).map_err(|_| bad("a time is not text"))?;
    let (year, rest) = match (tag, text.len()) {
        (0x17, 13) => {
            let yy: i16 = text[..2].parse().map_err(|_| bad("a UTCTime"))?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        (0x18, 15) => (
            text[..4].parse().map_err(|_| bad("a GeneralizedTime"))?,
            &text[4..],
        ),
        _ => return Err(bad("a validity time in an unexpected form")),
    };
    if !rest.ends_with('Z') || !rest[..rest.len() - 1].bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("a validity time in an unexpected form"));
    }
    let two = |i: usize| {
        rest[i..i + 2]
            .parse::<i8>()
            .map_err(|_| bad("a validity time"))
    };
    jiff::civil::DateTime::new(year, two(0)?, two(2)?, two(4)?, two(6)?, two(8)?, 0)
        .and_then(|dt| jiff::tz::TimeZone::UTC.to_timestamp(dt))
        .map_err(|e| bad(&format!("a validity time out of range: {e}")))
}

/// The values of attribute `oid` in a Name, in order, as text.
fn name_values(der: &[u8], name: Range<usize>, oid: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(seq) = Reader::new(der, name).expect(0x30, "Name") else {
        return out;
    };
    let mut rdns = Reader::new(der, seq);
    while let Ok(set) = rdns.expect(0x31, "RDN") {
        let mut attrs = Reader::new(der, set);
        while let Ok(attr) = attrs.expect(0x30, "attribute") {
            let mut a = Reader::new(der, attr);
            let (Ok(id), Ok((tag, value))) = (a.expect(0x06, "type"), a.any("value")) else {
                continue;
            };
            if &der[id] == oid
                && let Some(text) = string(tag, &der[value])
            {
                out.push(text);
            }
        }
    }
    out
}

/// A directory string as text (UTF8String, PrintableString, IA5String, TeletexString as
/// Latin-1, BMPString, UniversalString).
fn string(tag: u8, bytes: &[u8]) -> Option<String> {
    match tag {
        0x0c | 0x13 | 0x16 => std::str::from_utf8(bytes).ok().map(str::to_string),
        0x14 => Some(bytes.iter().map(|&b| char::from(b)).collect()),
        0x1e => {
            let units: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        0x1c => bytes
            .chunks_exact(4)
            .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        _ => None,
    }
}

/// A cursor over the DER elements inside `range` of `der`.
struct Reader<'a> {
    der: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Reader<'a> {
    fn new(der: &'a [u8], range: Range<usize>) -> Self {
        Self {
            der,
            pos: range.start,
            end: range.end.min(der.len()),
        }
    }

    fn done(&self) -> bool {
        self.pos >= self.end
    }

    fn peek(&self) -> Option<u8> {
        (!self.done()).then(|| self.der[self.pos])
    }

    /// The next element: its tag, its content, and the whole element (tag and length included).
    fn element(
        &mut self,
        what: &str,
    ) -> Result<(u8, Range<usize>, Range<usize>), CertificateError> {
        let start = self.pos;
        let byte = |i: usize| {
            (i < self.end)
                .then(|| self.der[i])
                .ok_or_else(|| bad(&format!("{what} is cut short")))
        };
        let tag = byte(start)?;
        if tag & 0x1f == 0x1f {
            return Err(bad(&format!("{what} has a multi-byte tag")));
        }
        let first = byte(start + 1)?;
        let (len, header) = if first < 0x80 {
            (usize::from(first), 2)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 {
                return Err(bad(&format!("{what} has an indefinite or huge length")));
            }
            let mut len = 0usize;
            for i in 0..n {
                len = (len << 8) | usize::from(byte(start + 2 + i)?);
            }
            (len, 2 + n)
        };
        let body = start + header..start + header + len;
        if body.end > self.end {
            return Err(bad(&format!("{what} is cut short")));
        }
        self.pos = body.end;
        Ok((tag, body, start..self.pos))
    }

    fn any(&mut self, what: &str) -> Result<(u8, Range<usize>), CertificateError> {
        self.element(what).map(|(tag, body, _)| (tag, body))
    }

    /// The content of the next element, which must have `tag`.
    fn expect(&mut self, tag: u8, what: &str) -> Result<Range<usize>, CertificateError> {
        self.tagged(tag, what).map(|(body, _)| body)
    }

    /// The whole next element (tag and length included), which must have `tag`.
    fn expect_whole(&mut self, tag: u8, what: &str) -> Result<Range<usize>, CertificateError> {
        self.tagged(tag, what).map(|(_, whole)| whole)
    }

    fn tagged(
        &mut self,
        tag: u8,
        what: &str,
    ) -> Result<(Range<usize>, Range<usize>), CertificateError> {
        let (got, body, whole) = self.element(what)?;
        if got != tag {
            return Err(bad(&format!("{what} has tag {got:#04x}, not {tag:#04x}")));
        }
        Ok((body, whole))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::verify::testpki::{Pki, cert, ec_key};
    use openssl::pkey::PKey;

    fn read(x: &X509) -> Certificate {
        Certificate::from_der(x.to_der().unwrap()).unwrap()
    }

    fn hex(bn: &openssl::bn::BigNumRef) -> String {
        bn.to_hex_str().unwrap().to_ascii_lowercase()
    }

    #[test]
    fn reads_what_openssl_reads() {
        let pki = Pki::new();
        let key = ec_key();
        let sans = [
            "www.example.com",
            "*.example.com",
            "192.0.2.7",
            "2001:db8::1",
        ];
        for serial in [1u32, 0x80, 0x0abc, 0x8765_4321] {
            let x = cert(
                "leaf",
                &key,
                Some((&pki.inter, &pki.inter_key)),
                &sans,
                serial,
                (-1, 90),
            );
            let c = read(&x);
            assert_eq!(c.serial_hex(), hex(&x.serial_number().to_bn().unwrap()));
            assert_eq!(
                c.serial_magnitude(),
                x.serial_number().to_bn().unwrap().to_vec()
            );
            let ts = |t: &openssl::asn1::Asn1TimeRef| crate::store::verify::asn1_to_ts(t).unwrap();
            assert_eq!(c.not_before(), ts(x.not_before()));
            assert_eq!(c.not_after(), ts(x.not_after()));
            assert_eq!(c.dns_names(), ["www.example.com", "*.example.com"]);
            assert_eq!(
                c.ip_addrs(),
                [
                    "192.0.2.7".parse::<IpAddr>().unwrap(),
                    "2001:db8::1".parse().unwrap()
                ]
            );
            assert_eq!(c.issuer_cn().as_deref(), Some("Test Intermediate E1"));
            assert_eq!(c.subject_cn().as_deref(), Some("leaf"));
            assert_eq!(c.to_pem(), x.to_pem().unwrap());
            assert_eq!(c.der(), x.to_der().unwrap());
            assert_eq!(c.issued_by(&read(&pki.inter)), Some(true));
            assert_eq!(c.has_key(&key), Some(true));
            assert_eq!(c.has_key(&ec_key()), None, "another key");
        }
        assert_eq!(read(&pki.inter).issued_by(&read(&pki.root)), Some(true));
        // Not the issuer: the names differ, so OpenSSL is asked.
        assert_eq!(read(&pki.inter).issued_by(&read(&pki.inter)), None);
    }

    #[test]
    fn rsa_issuers_and_keys_and_times_past_2049() {
        let rsa = PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
        let root = cert("RSA Root", &rsa, None, &[], 9, (-1, 365 * 40));
        let r = read(&root);
        // After 2049 a time is a GeneralizedTime (RFC 5280 §4.1.2.5).
        assert_eq!(
            r.not_after(),
            crate::store::verify::asn1_to_ts(root.not_after()).unwrap()
        );
        assert!(r.not_after().as_second() > 2_524_608_000);
        assert_eq!(r.issued_by(&r), Some(true), "self-signed with RSA/SHA-256");
        assert_eq!(r.has_key(&rsa), Some(true));
        let leaf_key = ec_key();
        let leaf = read(&cert(
            "leaf",
            &leaf_key,
            Some((&root, &rsa)),
            &["a.example"],
            3,
            (-1, 1),
        ));
        assert_eq!(leaf.issued_by(&r), Some(true));
    }

    #[test]
    fn a_signature_that_does_not_verify_is_left_to_openssl() {
        let pki = Pki::new();
        let (_, chain) = pki.leaf(&["a.example"], 5, (-1, 1));
        let text = String::from_utf8(chain).unwrap();
        let mut leaf = Certificate::chain_from_pem(&text).unwrap().remove(0);
        let last = leaf.der.len() - 1;
        leaf.der[last] ^= 1;
        let leaf = Certificate::from_der(leaf.der).unwrap();
        assert_eq!(leaf.issued_by(&read(&pki.inter)), None);
        // OpenSSL, asked then, says no too.
        let inter_key = pki.inter.public_key().unwrap();
        assert!(
            !leaf
                .to_openssl()
                .unwrap()
                .verify(&inter_key)
                .unwrap_or(false)
        );
    }

    #[test]
    fn a_pem_chain_is_read_in_order_and_garbage_is_refused() {
        let pki = Pki::new();
        let (_, chain) = pki.leaf(&["a.example"], 5, (-1, 1));
        let text = format!("junk before\n{}", String::from_utf8(chain).unwrap());
        let certs = Certificate::chain_from_pem(&text).unwrap();
        assert_eq!(certs.len(), 2);
        assert_eq!(
            certs[1].subject_cn().as_deref(),
            Some("Test Intermediate E1")
        );
        assert!(
            Certificate::chain_from_pem("no certificate")
                .unwrap()
                .is_empty()
        );
        let cut = &text[..text.len() - 40];
        assert!(Certificate::chain_from_pem(cut).is_err());
        let der = pki.inter.to_der().unwrap();
        for bad in [
            &der[..der.len() - 1],
            &der[1..],
            &[0x30, 0x80, 0, 0][..],
            &[][..],
        ] {
            assert!(Certificate::from_der(bad.to_vec()).is_err(), "{bad:02x?}");
        }
        let mut trailing = der.clone();
        trailing.push(0);
        assert!(Certificate::from_der(trailing).is_err());
    }

    #[test]
    fn serials_zero_and_negative_print_as_openssl_prints_them() {
        for (content, want) in [
            (&[0x00][..], "0"),
            (&[0x00, 0x80][..], "80"),
            (&[0xff][..], "-01"),
            (&[0x80, 0x00][..], "-8000"),
        ] {
            let mut c = read(&Pki::new().root);
            // Swap the serial's content for `content` (same length field rules: short form).
            let start = c.serial.start;
            let mut der = c.der[..start - 1].to_vec();
            der.push(u8::try_from(content.len()).unwrap());
            der.extend_from_slice(content);
            c.serial = start..start + content.len();
            c.der = der;
            assert_eq!(c.serial_hex(), want, "{content:02x?}");
        }
    }
}
