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
}
