//! Serde wire types for ACME objects (RFC 8555 §7.1). Absent fields are never sent as JSON `null`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::problem::Problem;

/// The directory object (RFC 8555 §7.1.1, RFC 9773 `renewalInfo`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Directory {
    /// URL to get a fresh nonce.
    pub new_nonce: String,
    /// URL to create or look up an account.
    pub new_account: String,
    /// URL to create an order.
    pub new_order: String,
    /// URL for pre-authorization, when offered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_authz: Option<String>,
    /// URL to revoke a certificate.
    pub revoke_cert: String,
    /// URL to roll over the account key.
    pub key_change: String,
    /// ARI endpoint (RFC 9773), when the CA offers it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_info: Option<String>,
    /// Metadata.
    #[serde(default)]
    pub meta: DirectoryMeta,
}

/// Directory metadata (RFC 8555 §7.1.1, profiles draft).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectoryMeta {
    /// The terms of service URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terms_of_service: Option<String>,
    /// The CA's website.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub website: Option<String>,
    /// Domains the CA recognizes in CAA records.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caa_identities: Vec<String>,
    /// True when newAccount needs external account binding.
    #[serde(default)]
    pub external_account_required: bool,
    /// Certificate profiles: name → description.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub profiles: BTreeMap<String, String>,
}

/// An identifier (RFC 8555 §9.7.7): `dns` or `ip` (RFC 8738).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub struct Identifier {
    /// `dns` or `ip`.
    #[serde(rename = "type")]
    pub type_: String,
    /// The name or IP address text.
    pub value: String,
}

impl Identifier {
    /// A DNS identifier (may start with `*.` in an order).
    pub fn dns(name: impl Into<String>) -> Self {
        Self {
            type_: "dns".into(),
            value: name.into(),
        }
    }

    /// An IP address identifier.
    pub fn ip(addr: std::net::IpAddr) -> Self {
        Self {
            type_: "ip".into(),
            value: addr.to_string(),
        }
    }

    /// A DNS or IP identifier, decided by whether `s` parses as an IP address.
    pub fn parse(s: &str) -> Self {
        match s.parse::<std::net::IpAddr>() {
            Ok(ip) => Self::ip(ip),
            Err(_) => Self::dns(s),
        }
    }
}

/// What to order (RFC 8555 §7.4, RFC 9773 `replaces`, profiles).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NewOrder {
    /// The names for the certificate.
    pub identifiers: Vec<Identifier>,
    /// The CA profile; sent only when set, and must be listed in the directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// The ARI CertID of the certificate this one replaces.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
}

/// Order status (RFC 8555 §7.1.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    /// Authorizations pending.
    Pending,
    /// Ready to finalize.
    Ready,
    /// Being issued.
    Processing,
    /// Certificate available.
    Valid,
    /// Failed.
    Invalid,
}

/// The order object (RFC 8555 §7.1.3).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderBody {
    /// Status.
    pub status: OrderStatus,
    /// Expiry of the order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// The identifiers.
    pub identifiers: Vec<Identifier>,
    /// The authorization URLs.
    #[serde(default)]
    pub authorizations: Vec<String>,
    /// The finalize URL.
    pub finalize: String,
    /// The certificate URL, once valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// The error that made the order invalid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Problem>,
    /// The profile, when the CA reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
}

/// An order with its URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Order {
    /// The order URL (keep it to resume after a crash).
    pub url: String,
    /// The latest order object.
    pub body: OrderBody,
}

/// Authorization status (RFC 8555 §7.1.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthorizationStatus {
    /// Not yet validated.
    Pending,
    /// Validated.
    Valid,
    /// Failed.
    Invalid,
    /// Deactivated by the client.
    Deactivated,
    /// Expired.
    Expired,
    /// Revoked.
    Revoked,
}

/// Challenge status (RFC 8555 §7.1.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChallengeStatus {
    /// Not yet answered.
    Pending,
    /// The CA is validating.
    Processing,
    /// Passed.
    Valid,
    /// Failed.
    Invalid,
}

/// A challenge object (RFC 8555 §7.1.5, §8).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Challenge {
    /// `http-01`, `dns-01`, `tls-alpn-01`, ...
    #[serde(rename = "type")]
    pub type_: String,
    /// The challenge URL (POST `{}` to respond).
    pub url: String,
    /// The token (absent for unknown challenge types and for dns-persist-01).
    #[serde(default)]
    pub token: String,
    /// dns-persist-01: the CA's issuer domain names, one of which the standing record must start
    /// with (`issuer-domain-names` in draft-00/01, `issuerDomainNames` in later drafts).
    #[serde(
        default,
        rename = "issuer-domain-names",
        alias = "issuerDomainNames",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub issuer_domain_names: Vec<String>,
    /// Status.
    pub status: ChallengeStatus,
    /// When it was validated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validated: Option<String>,
    /// Why validation failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Problem>,
}

/// The authorization object (RFC 8555 §7.1.4).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Authorization {
    /// The identifier (without `*.` for wildcards).
    pub identifier: Identifier,
    /// Status.
    pub status: AuthorizationStatus,
    /// Expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// The challenges offered.
    #[serde(default)]
    pub challenges: Vec<Challenge>,
    /// True when this authorization is for a wildcard name.
    #[serde(default)]
    pub wildcard: bool,
}

impl Authorization {
    /// The challenge of the given type, if offered.
    pub fn challenge(&self, type_: &str) -> Option<&Challenge> {
        self.challenges.iter().find(|c| c.type_ == type_)
    }
}

/// The account object (RFC 8555 §7.1.2).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountBody {
    /// `valid`, `deactivated` or `revoked`.
    #[serde(default)]
    pub status: String,
    /// Contact URLs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contact: Vec<String>,
    /// The orders list URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orders: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc8555_directory() {
        // https://www.rfc-editor.org/rfc/rfc8555#section-7.1.1
        let d: Directory = serde_json::from_str(
            r#"{
            "newNonce": "https://example.com/acme/new-nonce",
            "newAccount": "https://example.com/acme/new-account",
            "newOrder": "https://example.com/acme/new-order",
            "newAuthz": "https://example.com/acme/new-authz",
            "revokeCert": "https://example.com/acme/revoke-cert",
            "keyChange": "https://example.com/acme/key-change",
            "meta": {
                "termsOfService": "https://example.com/acme/terms/2017-5-30",
                "website": "https://www.example.com/",
                "caaIdentities": ["example.com"],
                "externalAccountRequired": false
            }
        }"#,
        )
        .unwrap();
        assert_eq!(d.new_nonce, "https://example.com/acme/new-nonce");
        assert_eq!(d.renewal_info, None);
        assert_eq!(d.meta.caa_identities, vec!["example.com"]);
        assert!(d.meta.profiles.is_empty());
    }

    #[test]
    fn rfc8555_order_and_authorization() {
        // https://www.rfc-editor.org/rfc/rfc8555#section-7.1.3
        let o: OrderBody = serde_json::from_str(
            r#"{
            "status": "valid",
            "expires": "2016-01-20T14:09:07.99Z",
            "identifiers": [
                { "type": "dns", "value": "www.example.org" },
                { "type": "dns", "value": "example.org" }
            ],
            "notBefore": "2016-01-01T00:00:00Z",
            "notAfter": "2016-01-08T00:00:00Z",
            "authorizations": [
                "https://example.com/acme/authz/PAniVnsZcis",
                "https://example.com/acme/authz/r4HqLzrSrpI"
            ],
            "finalize": "https://example.com/acme/order/TOlocE8rfgo/finalize",
            "certificate": "https://example.com/acme/cert/mAt3xBGaobw"
        }"#,
        )
        .unwrap();
        assert_eq!(o.status, OrderStatus::Valid);
        assert_eq!(o.authorizations.len(), 2);
        assert_eq!(
            o.certificate.as_deref(),
            Some("https://example.com/acme/cert/mAt3xBGaobw")
        );
        // https://www.rfc-editor.org/rfc/rfc8555#section-7.1.4
        let a: Authorization = serde_json::from_str(
            r#"{
            "status": "valid",
            "expires": "2015-03-01T14:09:07.99Z",
            "identifier": { "type": "dns", "value": "www.example.org" },
            "challenges": [
                {
                    "url": "https://example.com/acme/chall/prV_B7yEyA4",
                    "type": "http-01",
                    "status": "valid",
                    "token": "DGyRejmCefe7v4NfDGDKfA",
                    "validated": "2014-12-01T12:05:58.16Z"
                }
            ],
            "wildcard": false
        }"#,
        )
        .unwrap();
        assert_eq!(a.status, AuthorizationStatus::Valid);
        assert_eq!(
            a.challenge("http-01").unwrap().token,
            "DGyRejmCefe7v4NfDGDKfA"
        );
        assert!(a.challenge("dns-01").is_none());
    }

    #[test]
    fn new_order_never_sends_nulls() {
        let o = NewOrder {
            identifiers: vec![
                Identifier::parse("10.0.0.1"),
                Identifier::parse("a.example"),
            ],
            ..Default::default()
        };
        let s = serde_json::to_string(&o).unwrap();
        assert_eq!(
            s,
            r#"{"identifiers":[{"type":"ip","value":"10.0.0.1"},{"type":"dns","value":"a.example"}]}"#
        );
        let o = NewOrder {
            profile: Some("shortlived".into()),
            replaces: Some("a.b".into()),
            ..o
        };
        let v = serde_json::to_value(&o).unwrap();
        assert_eq!(v["profile"], "shortlived");
        assert_eq!(v["replaces"], "a.b");
    }
}
