//! ACME Renewal Information (RFC 9773): CertID and the suggested renewal window.

use serde::Deserialize;

use super::client::{Client, MAX_JSON_BODY};
use super::key::b64;
use super::{AcmeError, Result};

/// The ARI CertID of a certificate: base64url(AKI keyIdentifier) "." base64url(serial DER content).
///
/// Fails when the certificate has no Authority Key Identifier.
pub fn cert_id(cert: &super::Certificate) -> Result<String> {
    let aki = cert.authority_key_id().ok_or_else(|| AcmeError::Config {
        message: "the certificate has no Authority Key Identifier, so no ARI CertID can be made"
            .into(),
    })?;
    Ok(cert_id_from_parts(aki, cert.serial_magnitude()))
}

/// CertID from the AKI keyIdentifier and the unsigned big-endian serial magnitude.
///
/// The serial is encoded as DER INTEGER content: a 0x00 is prepended when the high bit is set,
/// and zero is one 0x00 byte.
pub fn cert_id_from_parts(aki: &[u8], serial_magnitude: &[u8]) -> String {
    let mut serial = serial_magnitude.to_vec();
    if serial.first().is_none_or(|b| b & 0x80 != 0) {
        serial.insert(0, 0);
    }
    format!("{}.{}", b64(aki), b64(serial))
}

/// True when `cert_id` (a CertID made by [`cert_id`]) names the certificate with this serial
/// (lowercase hex, as the store reports it); false when it cannot tell.
pub fn cert_id_has_serial(cert_id: &str, serial_hex: &str) -> bool {
    use base64::Engine as _;
    let Some((_, serial)) = cert_id.split_once('.') else {
        return false;
    };
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(serial) else {
        return false;
    };
    let magnitude = match bytes.iter().position(|b| *b != 0) {
        Some(i) => &bytes[i..],
        None => return false,
    };
    let hex: String = magnitude.iter().map(|b| format!("{b:02x}")).collect();
    hex == serial_hex.trim_start_matches("00")
}

/// The window the CA suggests for renewal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub struct SuggestedWindow {
    /// Earliest suggested renewal time.
    pub start: jiff::Timestamp,
    /// Latest suggested renewal time.
    pub end: jiff::Timestamp,
}

/// A renewalInfo answer (RFC 9773 §4.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenewalInfo {
    /// When to renew.
    pub suggested_window: SuggestedWindow,
    /// A page explaining an unusual window (e.g. a revocation event).
    pub explanation_url: Option<String>,
    /// When to ask again (from `Retry-After`).
    pub retry_after: Option<jiff::Timestamp>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire {
    suggested_window: SuggestedWindow,
    #[serde(rename = "explanationURL", default)]
    explanation_url: Option<String>,
}

impl Client {
    /// Ask the CA when to renew the certificate with this CertID.
    ///
    /// `Ok(None)` when the directory offers no `renewalInfo`.
    pub async fn renewal_info(&self, cert_id: &str) -> Result<Option<RenewalInfo>> {
        let Some(base) = self.directory().renewal_info.clone() else {
            return Ok(None);
        };
        let url = format!("{}/{}", base.trim_end_matches('/'), cert_id);
        let resp = self.get(&url, MAX_JSON_BODY).await?;
        if resp.status >= 400 {
            let p =
                super::client::problem_from(&resp, super::ProblemOrigin::Request("renewalInfo"));
            return Err(AcmeError::Problem(Box::new(p)));
        }
        let w: Wire = resp.json()?;
        if w.suggested_window.end < w.suggested_window.start {
            return Err(AcmeError::BadResponse {
                url,
                message: "the suggested renewal window ends before it starts".into(),
            });
        }
        Ok(Some(RenewalInfo {
            suggested_window: w.suggested_window,
            explanation_url: w.explanation_url,
            retry_after: resp.retry_after(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        s.split(':')
            .map(|h| u8::from_str_radix(h, 16).unwrap())
            .collect()
    }

    #[test]
    fn rfc9773_example() {
        // https://www.rfc-editor.org/rfc/rfc9773#section-4.1
        let aki = hex("69:88:5B:6B:87:46:40:41:E1:B3:7B:84:7B:A0:AE:2C:DE:01:C8:D4");
        // openssl's BigNum::to_vec() gives the magnitude without the DER 0x00.
        assert_eq!(
            cert_id_from_parts(&aki, &hex("87:65:43:21")),
            "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"
        );
        assert!(cert_id_from_parts(&aki, &hex("12:34")).ends_with(".EjQ"));
        assert!(cert_id_from_parts(&aki, &[]).ends_with(".AA"));
    }

    #[test]
    fn cert_id_of_real_certificate_keeps_leading_zero() {
        use openssl::x509::extension::{AuthorityKeyIdentifier, SubjectKeyIdentifier};
        let key = crate::acme::KeyType::EcdsaP256.generate().unwrap();
        let mut b = openssl::x509::X509::builder().unwrap();
        b.set_version(2).unwrap();
        let serial = openssl::bn::BigNum::from_hex_str("87654321").unwrap();
        b.set_serial_number(&serial.to_asn1_integer().unwrap())
            .unwrap();
        let mut name = openssl::x509::X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "t").unwrap();
        let name = name.build();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&openssl::asn1::Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        let ski = SubjectKeyIdentifier::new()
            .build(&b.x509v3_context(None, None))
            .unwrap();
        b.append_extension(ski).unwrap();
        let aki = AuthorityKeyIdentifier::new()
            .keyid(true)
            .build(&b.x509v3_context(None, None))
            .unwrap();
        b.append_extension(aki).unwrap();
        b.sign(&key, openssl::hash::MessageDigest::sha256())
            .unwrap();
        let cert = b.build();
        let id =
            cert_id(&crate::acme::Certificate::from_der(cert.to_der().unwrap()).unwrap()).unwrap();
        let kid = cert.subject_key_id().unwrap().as_slice().to_vec();
        assert_eq!(id, format!("{}.AIdlQyE", b64(kid)));
        assert!(cert_id_has_serial(&id, "87654321"));
    }

    #[test]
    fn a_cert_id_tells_its_serial() {
        let aki = hex("69:88:5B");
        let id = cert_id_from_parts(&aki, &hex("87:65:43:21"));
        assert!(cert_id_has_serial(&id, "87654321"));
        assert!(!cert_id_has_serial(&id, "87654322"));
        assert!(cert_id_has_serial(
            &cert_id_from_parts(&aki, &hex("0a:bc")),
            "0abc"
        ));
        assert!(!cert_id_has_serial(
            &cert_id_from_parts(&aki, &hex("0a:bc")),
            "abcd"
        ));
        for bad in ["", "no-dot", "aYhb.!!!", "aYhb.AA"] {
            assert!(!cert_id_has_serial(bad, "00"), "{bad}");
        }
    }
}
