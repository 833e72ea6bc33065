//! Key types for account and certificate keys, and the account key with its JWK and JWS signing.
//!
//! All key material is generated and handled by openssl (OS RNG). Secrets never appear in `Debug`.

use std::fmt;
use std::str::FromStr;

use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::{HasPublic, Id, PKey, Private};
use openssl::rsa::Rsa;

/// The kind of a private key: curve or RSA modulus size.
///
/// Written in config files as `ecdsa-p256`, `ecdsa-p384`, `rsa-2048`, `rsa-3072` or `rsa-4096`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum KeyType {
    /// ECDSA on NIST P-256 (prime256v1); signs ES256.
    #[default]
    EcdsaP256,
    /// ECDSA on NIST P-384 (secp384r1); signs ES384.
    EcdsaP384,
    /// RSA with a 2048-bit modulus; signs RS256.
    Rsa2048,
    /// RSA with a 3072-bit modulus; signs RS256.
    Rsa3072,
    /// RSA with a 4096-bit modulus; signs RS256.
    Rsa4096,
}

/// A key type name that certkeeper does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown key type {0:?}: use one of ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096")]
pub struct UnknownKeyType(pub String);

/// Generating a key failed inside openssl.
#[derive(Debug, thiserror::Error)]
#[error("generating a {key_type} key failed in openssl: {source}")]
pub struct KeyGenError {
    /// The key type that was being generated.
    pub key_type: KeyType,
    /// The openssl error stack.
    #[source]
    pub source: openssl::error::ErrorStack,
}

impl KeyType {
    /// All key types, in config-name order.
    pub const ALL: [KeyType; 5] = [
        Self::EcdsaP256,
        Self::EcdsaP384,
        Self::Rsa2048,
        Self::Rsa3072,
        Self::Rsa4096,
    ];

    /// The config name, e.g. `ecdsa-p256`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EcdsaP256 => "ecdsa-p256",
            Self::EcdsaP384 => "ecdsa-p384",
            Self::Rsa2048 => "rsa-2048",
            Self::Rsa3072 => "rsa-3072",
            Self::Rsa4096 => "rsa-4096",
        }
    }

    /// Generate a fresh private key of this type with openssl (OS RNG).
    ///
    /// RSA keys use the public exponent 65537. RSA-4096 takes a noticeable fraction of a second.
    pub fn generate(self) -> Result<PKey<Private>, KeyGenError> {
        let err = |source| KeyGenError {
            key_type: self,
            source,
        };
        match self {
            Self::EcdsaP256 | Self::EcdsaP384 => {
                let nid = if self == Self::EcdsaP256 {
                    Nid::X9_62_PRIME256V1
                } else {
                    Nid::SECP384R1
                };
                let group = EcGroup::from_curve_name(nid).map_err(err)?;
                let ec = EcKey::generate(&group).map_err(err)?;
                PKey::from_ec_key(ec).map_err(err)
            }
            Self::Rsa2048 | Self::Rsa3072 | Self::Rsa4096 => {
                let bits = match self {
                    Self::Rsa2048 => 2048,
                    Self::Rsa3072 => 3072,
                    _ => 4096,
                };
                let rsa = Rsa::generate(bits).map_err(err)?;
                PKey::from_rsa(rsa).map_err(err)
            }
        }
    }

    /// The type of an existing key; `None` for curves or sizes certkeeper does not use.
    pub fn of<T: HasPublic>(key: &PKey<T>) -> Option<KeyType> {
        match key.id() {
            Id::EC => {
                let ec = key.ec_key().ok()?;
                match ec.group().curve_name()? {
                    Nid::X9_62_PRIME256V1 => Some(Self::EcdsaP256),
                    Nid::SECP384R1 => Some(Self::EcdsaP384),
                    _ => None,
                }
            }
            Id::RSA => match key.bits() {
                2048 => Some(Self::Rsa2048),
                3072 => Some(Self::Rsa3072),
                4096 => Some(Self::Rsa4096),
                _ => None,
            },
            _ => None,
        }
    }

    /// True for the ECDSA types.
    pub fn is_ecdsa(self) -> bool {
        matches!(self, Self::EcdsaP256 | Self::EcdsaP384)
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyType {
    type Err = UnknownKeyType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownKeyType(s.to_string()))
    }
}

impl serde::Serialize for KeyType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for KeyType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// base64url without padding (RFC 7515 §2), used everywhere in JWS and ARI.
pub(crate) fn b64(data: impl AsRef<[u8]>) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// Loading, saving or using an account key failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The PEM text could not be parsed as a private key.
    #[error("the account key is not a readable PEM private key: {0}")]
    Pem(#[source] openssl::error::ErrorStack),
    /// The key is of a type ACME signing does not support here.
    #[error(
        "the account key is not a supported type (ecdsa-p256, ecdsa-p384 or rsa-2048/3072/4096); generate a new one"
    )]
    Unsupported,
    /// openssl failed while signing or encoding.
    #[error("signing with the account key failed in openssl: {0}")]
    Openssl(#[from] openssl::error::ErrorStack),
}

/// An ACME account key: a private key with its JWK (RFC 7517), thumbprint (RFC 7638) and JWS signer.
///
/// `Debug` shows the key type and thumbprint only, never the private key.
#[derive(Clone)]
pub struct AccountKey {
    key: PKey<Private>,
    key_type: KeyType,
    /// The EC key in OpenSSL's own form, made once: getting it from `key` converts the key on
    /// every call, which was most of the cost of signing a request.
    ec: Option<openssl::ec::EcKey<Private>>,
}

impl fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountKey")
            .field("key_type", &self.key_type)
            .field("thumbprint", &self.thumbprint())
            .finish()
    }
}

impl AccountKey {
    /// Wrap an existing private key; fails for curves or sizes other than the [`KeyType`]s.
    pub fn new(key: PKey<Private>) -> Result<Self, KeyError> {
        let key_type = KeyType::of(&key).ok_or(KeyError::Unsupported)?;
        let ec = ec_of(&key, key_type)?;
        Ok(Self { key, key_type, ec })
    }

    /// Generate a fresh account key of the given type.
    pub fn generate(key_type: KeyType) -> Result<Self, KeyGenError> {
        let key = key_type.generate()?;
        let ec = ec_of(&key, key_type).map_err(|source| KeyGenError { key_type, source })?;
        Ok(Self { key, key_type, ec })
    }

    /// Parse a PEM private key (PKCS#8, or traditional EC/RSA).
    pub fn from_pem(pem: &[u8]) -> Result<Self, KeyError> {
        let key = PKey::private_key_from_pem(pem).map_err(KeyError::Pem)?;
        Self::new(key)
    }

    /// The key as PKCS#8 PEM, for saving with mode 0600.
    pub fn to_pem(&self) -> Result<Vec<u8>, KeyError> {
        Ok(self.key.private_key_to_pem_pkcs8()?)
    }

    /// The key type.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// The wrapped openssl key.
    pub fn pkey(&self) -> &PKey<Private> {
        &self.key
    }

    /// The JWS `alg` for this key: ES256, ES384 or RS256.
    pub fn alg(&self) -> &'static str {
        match self.key_type {
            KeyType::EcdsaP256 => "ES256",
            KeyType::EcdsaP384 => "ES384",
            _ => "RS256",
        }
    }

    /// The public JWK members, in lexicographic order (RFC 7638 §3.2).
    ///
    /// EC coordinates are left-padded to the field size (32 or 48 bytes).
    fn jwk_members(&self) -> Vec<(&'static str, String)> {
        match self.key_type {
            KeyType::EcdsaP256 | KeyType::EcdsaP384 => {
                let (crv, len) = if self.key_type == KeyType::EcdsaP256 {
                    ("P-256", 32)
                } else {
                    ("P-384", 48)
                };
                let coords = (|| -> Result<(Vec<u8>, Vec<u8>), openssl::error::ErrorStack> {
                    let ec = self.key.ec_key()?;
                    let mut ctx = openssl::bn::BigNumContext::new()?;
                    let mut x = openssl::bn::BigNum::new()?;
                    let mut y = openssl::bn::BigNum::new()?;
                    ec.public_key()
                        .affine_coordinates(ec.group(), &mut x, &mut y, &mut ctx)?;
                    Ok((x.to_vec_padded(len)?, y.to_vec_padded(len)?))
                })();
                // A key that passed KeyType::of is a valid EC key on a named curve, so the
                // coordinates always exist; fall back to empty values rather than panic.
                let (x, y) = coords.unwrap_or_default();
                vec![
                    ("crv", crv.to_string()),
                    ("kty", "EC".into()),
                    ("x", b64(x)),
                    ("y", b64(y)),
                ]
            }
            _ => {
                let (n, e) = match self.key.rsa() {
                    Ok(rsa) => (rsa.n().to_vec(), rsa.e().to_vec()),
                    Err(_) => (Vec::new(), Vec::new()),
                };
                vec![("e", b64(e)), ("kty", "RSA".into()), ("n", b64(n))]
            }
        }
    }

    /// The public key as a JWK object (RFC 7517).
    pub fn jwk(&self) -> serde_json::Value {
        let map: serde_json::Map<String, serde_json::Value> = self
            .jwk_members()
            .into_iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::String(v)))
            .collect();
        serde_json::Value::Object(map)
    }

    /// The JWK thumbprint (RFC 7638): base64url(SHA-256(canonical JWK)).
    pub fn thumbprint(&self) -> String {
        thumbprint_of(&self.jwk_members())
    }

    /// The key authorization for a challenge token: `token "." thumbprint` (RFC 8555 §8.1).
    pub fn key_authorization(&self, token: &str) -> String {
        format!("{token}.{}", self.thumbprint())
    }

    /// Sign `data` with the JWS algorithm of this key.
    ///
    /// ECDSA signatures are returned as fixed-size `r || s` (RFC 7518 §3.4), not DER.
    pub fn sign(&self, data: &[u8]) -> Result<Vec<u8>, KeyError> {
        match (&self.ec, self.key_type) {
            (Some(ec), KeyType::EcdsaP256 | KeyType::EcdsaP384) => {
                let (digest, len) = if self.key_type == KeyType::EcdsaP256 {
                    (openssl::sha::sha256(data).to_vec(), 32)
                } else {
                    (openssl::sha::sha384(data).to_vec(), 48)
                };
                let sig = openssl::ecdsa::EcdsaSig::sign(&digest, ec)?;
                let mut out = sig.r().to_vec_padded(len)?;
                out.extend(sig.s().to_vec_padded(len)?);
                Ok(out)
            }
            _ => {
                let mut signer =
                    openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &self.key)?;
                signer.set_rsa_padding(openssl::rsa::Padding::PKCS1)?;
                signer.update(data)?;
                Ok(signer.sign_to_vec()?)
            }
        }
    }
}

/// The EC key of an ECDSA account key, for signing.
fn ec_of(
    key: &PKey<Private>,
    key_type: KeyType,
) -> Result<Option<openssl::ec::EcKey<Private>>, openssl::error::ErrorStack> {
    match key_type {
        KeyType::EcdsaP256 | KeyType::EcdsaP384 => key.ec_key().map(Some),
        _ => Ok(None),
    }
}

/// RFC 7638 thumbprint over members already in lexicographic order.
fn thumbprint_of(members: &[(&str, String)]) -> String {
    let body: Vec<String> = members
        .iter()
        .map(|(k, v)| {
            format!(
                "{}:{}",
                serde_json::Value::from(*k),
                serde_json::Value::from(v.as_str())
            )
        })
        .collect();
    b64(openssl::sha::sha256(
        format!("{{{}}}", body.join(",")).as_bytes(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_type_names_round_trip() {
        for k in KeyType::ALL {
            assert_eq!(k.to_string().parse::<KeyType>().unwrap(), k);
        }
        assert_eq!("ecdsa-p384".parse::<KeyType>().unwrap(), KeyType::EcdsaP384);
        assert_eq!("rsa-3072".parse::<KeyType>().unwrap(), KeyType::Rsa3072);
        let e = "ed25519".parse::<KeyType>().unwrap_err();
        assert!(e.to_string().contains("ecdsa-p256"), "{e}");
    }

    #[test]
    fn generate_and_detect() {
        for k in [KeyType::EcdsaP256, KeyType::EcdsaP384, KeyType::Rsa2048] {
            let key = k.generate().unwrap();
            assert_eq!(KeyType::of(&key), Some(k));
        }
        let odd = PKey::from_rsa(Rsa::generate(1024).unwrap()).unwrap();
        assert_eq!(KeyType::of(&odd), None);
    }

    #[test]
    fn serde_uses_config_names() {
        #[derive(serde::Deserialize)]
        struct W {
            key: KeyType,
        }
        let w: W = toml::from_str("key = \"rsa-4096\"").unwrap();
        assert_eq!(w.key, KeyType::Rsa4096);
        assert!(toml::from_str::<W>("key = \"rsa-1024\"").is_err());
    }

    #[test]
    fn thumbprint_matches_rfc7638_example() {
        // https://www.rfc-editor.org/rfc/rfc7638#section-3.1
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let tp = thumbprint_of(&[("e", "AQAB".into()), ("kty", "RSA".into()), ("n", n.into())]);
        assert_eq!(tp, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }

    fn verify(key: &AccountKey, data: &[u8], sig: &[u8]) -> bool {
        use openssl::hash::MessageDigest;
        match key.key_type() {
            KeyType::EcdsaP256 | KeyType::EcdsaP384 => {
                let half = sig.len() / 2;
                let r = openssl::bn::BigNum::from_slice(&sig[..half]).unwrap();
                let s = openssl::bn::BigNum::from_slice(&sig[half..]).unwrap();
                let es = openssl::ecdsa::EcdsaSig::from_private_components(r, s).unwrap();
                let digest = if key.key_type() == KeyType::EcdsaP256 {
                    openssl::sha::sha256(data).to_vec()
                } else {
                    openssl::sha::sha384(data).to_vec()
                };
                es.verify(&digest, &key.pkey().ec_key().unwrap()).unwrap()
            }
            _ => {
                let mut v =
                    openssl::sign::Verifier::new(MessageDigest::sha256(), key.pkey()).unwrap();
                v.update(data).unwrap();
                v.verify(sig).unwrap()
            }
        }
    }

    #[test]
    fn sign_then_verify_each_key_type() {
        for (kt, len, alg) in [
            (KeyType::EcdsaP256, 64, "ES256"),
            (KeyType::EcdsaP384, 96, "ES384"),
            (KeyType::Rsa2048, 256, "RS256"),
        ] {
            let key = AccountKey::generate(kt).unwrap();
            assert_eq!(key.alg(), alg);
            // Many signatures so that short r or s values (leading zero bytes) are hit too.
            for i in 0..40u8 {
                let data = [b"payload-".as_slice(), &[i]].concat();
                let sig = key.sign(&data).unwrap();
                assert_eq!(sig.len(), len, "{kt}");
                assert!(verify(&key, &data, &sig), "{kt}");
                assert!(!verify(&key, b"other", &sig), "{kt}");
            }
        }
    }

    #[test]
    fn jwk_has_fixed_length_coordinates_and_pem_round_trips() {
        let key = AccountKey::generate(KeyType::EcdsaP384).unwrap();
        let jwk = key.jwk();
        assert_eq!(jwk["crv"], "P-384");
        assert_eq!(jwk["x"].as_str().unwrap().len(), 64); // 48 bytes base64url
        assert_eq!(jwk["y"].as_str().unwrap().len(), 64);
        let pem = key.to_pem().unwrap();
        let back = AccountKey::from_pem(&pem).unwrap();
        assert_eq!(back.thumbprint(), key.thumbprint());
        assert!(!format!("{key:?}").contains("PRIVATE"));
        assert!(AccountKey::from_pem(b"garbage").is_err());
        let rsa = AccountKey::generate(KeyType::Rsa2048).unwrap();
        assert_eq!(rsa.jwk()["e"], "AQAB");
        assert_eq!(
            rsa.key_authorization("tok"),
            format!("tok.{}", rsa.thumbprint())
        );
    }
}
