//! JSON Web Signature in flattened JSON serialization (RFC 7515, RFC 8555 §6.2), EAB (§7.3.4).

use serde_json::{Value, json};

use super::key::{AccountKey, KeyError, b64};

/// How the JWS names its key: by account URL (`kid`) or with the public key inline (`jwk`).
#[derive(Clone, Copy, Debug)]
pub enum KeyRef<'a> {
    /// The account URL, for every request after account creation.
    Kid(&'a str),
    /// The public JWK, for newAccount, revocation by certificate key and the inner keyChange JWS.
    Jwk,
}

/// Sign a request body.
///
/// `payload: None` gives the empty payload of a POST-as-GET (RFC 8555 §6.3); `nonce: None` leaves
/// the nonce out (only for the inner keyChange JWS).
pub fn sign(
    key: &AccountKey,
    key_ref: KeyRef<'_>,
    nonce: Option<&str>,
    url: &str,
    payload: Option<&[u8]>,
) -> Result<Value, KeyError> {
    let mut protected = serde_json::Map::new();
    protected.insert("alg".into(), key.alg().into());
    match key_ref {
        KeyRef::Kid(kid) => protected.insert("kid".into(), kid.into()),
        KeyRef::Jwk => protected.insert("jwk".into(), key.jwk()),
    };
    if let Some(n) = nonce {
        protected.insert("nonce".into(), n.into());
    }
    protected.insert("url".into(), url.into());
    let protected = b64(Value::Object(protected).to_string());
    let payload = payload.map(b64).unwrap_or_default();
    let signature = b64(key.sign(format!("{protected}.{payload}").as_bytes())?);
    Ok(json!({ "protected": protected, "payload": payload, "signature": signature }))
}

/// The external account binding (RFC 8555 §7.3.4): an HS256 JWS over the account JWK.
pub fn eab(
    account_jwk: &Value,
    kid: &str,
    hmac_key: &[u8],
    new_account_url: &str,
) -> Result<Value, KeyError> {
    let protected = b64(json!({ "alg": "HS256", "kid": kid, "url": new_account_url }).to_string());
    let payload = b64(account_jwk.to_string());
    let pkey = openssl::pkey::PKey::hmac(hmac_key)?;
    let mut signer = openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &pkey)?;
    signer.update(format!("{protected}.{payload}").as_bytes())?;
    let signature = b64(signer.sign_to_vec()?);
    Ok(json!({ "protected": protected, "payload": payload, "signature": signature }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acme::KeyType;
    use base64::Engine as _;

    fn unb64(s: &str) -> Vec<u8> {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .unwrap()
    }

    #[test]
    fn jws_structure_and_signature() {
        let key = AccountKey::generate(KeyType::EcdsaP256).unwrap();
        let jws = sign(
            &key,
            KeyRef::Kid("https://ca/acct/1"),
            Some("n0nce"),
            "https://ca/x",
            Some(b"{}"),
        )
        .unwrap();
        let prot: Value =
            serde_json::from_slice(&unb64(jws["protected"].as_str().unwrap())).unwrap();
        assert_eq!(
            prot,
            json!({"alg":"ES256","kid":"https://ca/acct/1","nonce":"n0nce","url":"https://ca/x"})
        );
        assert_eq!(unb64(jws["payload"].as_str().unwrap()), b"{}");
        let sig = unb64(jws["signature"].as_str().unwrap());
        assert_eq!(sig.len(), 64);
        // Verify r||s over "protected.payload".
        let input = format!(
            "{}.{}",
            jws["protected"].as_str().unwrap(),
            jws["payload"].as_str().unwrap()
        );
        let es = openssl::ecdsa::EcdsaSig::from_private_components(
            openssl::bn::BigNum::from_slice(&sig[..32]).unwrap(),
            openssl::bn::BigNum::from_slice(&sig[32..]).unwrap(),
        )
        .unwrap();
        assert!(
            es.verify(
                &openssl::sha::sha256(input.as_bytes()),
                &key.pkey().ec_key().unwrap()
            )
            .unwrap()
        );

        let get = sign(&key, KeyRef::Jwk, Some("n"), "https://ca/y", None).unwrap();
        assert_eq!(get["payload"], "");
        let prot: Value =
            serde_json::from_slice(&unb64(get["protected"].as_str().unwrap())).unwrap();
        assert_eq!(prot["jwk"], key.jwk());
        assert!(prot.get("kid").is_none());
    }

    #[test]
    fn eab_structure_and_hmac() {
        let key = AccountKey::generate(KeyType::EcdsaP256).unwrap();
        let hmac = b"0123456789abcdef0123456789abcdef";
        let e = eab(&key.jwk(), "kid-1", hmac, "https://ca/new-acct").unwrap();
        let prot: Value = serde_json::from_slice(&unb64(e["protected"].as_str().unwrap())).unwrap();
        assert_eq!(
            prot,
            json!({"alg":"HS256","kid":"kid-1","url":"https://ca/new-acct"})
        );
        assert!(prot.get("nonce").is_none());
        let payload: Value =
            serde_json::from_slice(&unb64(e["payload"].as_str().unwrap())).unwrap();
        assert_eq!(payload, key.jwk());
        let input = format!(
            "{}.{}",
            e["protected"].as_str().unwrap(),
            e["payload"].as_str().unwrap()
        );
        let mac = openssl::pkey::PKey::hmac(hmac).unwrap();
        let mut s =
            openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &mac).unwrap();
        s.update(input.as_bytes()).unwrap();
        assert_eq!(
            unb64(e["signature"].as_str().unwrap()),
            s.sign_to_vec().unwrap()
        );
    }
}
