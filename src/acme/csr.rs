//! Certificate signing requests (RFC 2986) for finalize, built with openssl.

use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::stack::Stack;
use openssl::x509::extension::SubjectAlternativeName;
use openssl::x509::{X509NameBuilder, X509ReqBuilder};

use super::types::Identifier;
use super::{AcmeError, Result};

/// Build a DER CSR for `identifiers`, signed with SHA-256 by `key`.
///
/// All names go into the subjectAltName (DNS names and IP addresses); the CN is set to the first
/// name only when it fits the 64-byte limit of X.520.
pub fn build_csr(key: &PKey<Private>, identifiers: &[Identifier]) -> Result<Vec<u8>> {
    let Some(first) = identifiers.first() else {
        return Err(AcmeError::Config {
            message: "a certificate needs at least one name".into(),
        });
    };
    let mut req = X509ReqBuilder::new()?;
    req.set_pubkey(key)?;
    let mut name = X509NameBuilder::new()?;
    if first.value.len() <= 64 {
        name.append_entry_by_text("CN", &first.value)?;
    }
    req.set_subject_name(&name.build())?;
    let mut san = SubjectAlternativeName::new();
    for id in identifiers {
        match id.type_.as_str() {
            "dns" => san.dns(&id.value),
            "ip" => san.ip(&id.value),
            other => {
                return Err(AcmeError::Config {
                    message: format!(
                        "identifier type {other:?} ({}) cannot go into a CSR",
                        id.value
                    ),
                });
            }
        };
    }
    let ctx = req.x509v3_context(None);
    let ext = san.build(&ctx)?;
    let mut exts = Stack::new()?;
    exts.push(ext)?;
    req.add_extensions(&exts)?;
    req.sign(key, MessageDigest::sha256())?;
    Ok(req.build().to_der()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acme::KeyType;
    use openssl::x509::X509Req;

    #[test]
    fn csr_has_sans_cn_and_verifies() {
        let key = KeyType::EcdsaP256.generate().unwrap();
        let ids = vec![
            Identifier::dns("a.example"),
            Identifier::dns("*.b.example"),
            Identifier::parse("192.0.2.7"),
            Identifier::parse("2001:db8::1"),
        ];
        let der = build_csr(&key, &ids).unwrap();
        let req = X509Req::from_der(&der).unwrap();
        assert!(req.verify(&req.public_key().unwrap()).unwrap());
        let cn = req
            .subject_name()
            .entries_by_nid(openssl::nid::Nid::COMMONNAME)
            .next()
            .unwrap();
        assert_eq!(cn.data().to_string().unwrap(), "a.example");
        let text = String::from_utf8(req.to_text().unwrap()).unwrap();
        for s in [
            "DNS:a.example",
            "DNS:*.b.example",
            "IP Address:192.0.2.7",
            "IP Address:2001:DB8:0:0:0:0:0:1",
        ] {
            assert!(text.contains(s), "{s} missing in {text}");
        }
        assert!(text.contains("ecdsa-with-SHA256"), "{text}");
    }

    #[test]
    fn long_first_name_has_no_cn() {
        let key = KeyType::EcdsaP256.generate().unwrap();
        let long = format!("{}.example.com", "a".repeat(60));
        let der = build_csr(&key, &[Identifier::dns(&long)]).unwrap();
        let req = X509Req::from_der(&der).unwrap();
        assert_eq!(req.subject_name().entries().count(), 0);
        assert!(
            String::from_utf8(req.to_text().unwrap())
                .unwrap()
                .contains(&long)
        );
        assert!(build_csr(&key, &[]).is_err());
    }
}
