//! The config files as written: serde structs with spans, before validation.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use toml::Spanned;

/// A spanned string.
pub(crate) type SStr = Spanned<String>;

/// A `dns01 = { provider = "...", ... }` table as written, every key and value with its place; the
/// provider's own settings are parsed from it during validation, so errors can name the key.
pub(crate) type RawProvider = BTreeMap<SStr, Spanned<toml::Value>>;

/// The main file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMain {
    pub state_dir: Option<SStr>,
    pub storage: Option<Spanned<RawStorage>>,
    #[serde(default)]
    pub include: Vec<SStr>,
    pub http01: Option<RawHttp01>,
    pub admin: Option<RawAdmin>,
    pub daemon: Option<RawDaemon>,
    pub dns01: Option<RawDns01>,
    pub notify: Option<Spanned<RawNotify>>,
    #[serde(default)]
    pub issuer: BTreeMap<SStr, RawIssuer>,
    #[serde(default)]
    pub certificate: BTreeMap<SStr, RawCertificate>,
}

/// `[dns01]`: DNS settings for every issuer (the recursive resolvers).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDns01 {
    pub resolvers: Option<Spanned<Vec<SStr>>>,
}

/// An included file: only issuers and certificates.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawInclude {
    #[serde(default)]
    pub issuer: BTreeMap<SStr, RawIssuer>,
    #[serde(default)]
    pub certificate: BTreeMap<SStr, RawCertificate>,
}

/// `[storage]`: where the state lives (the file tree, or PostgreSQL for a fleet).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStorage {
    pub backend: Option<SStr>,
    pub url: Option<SStr>,
    pub password_file: Option<SStr>,
    pub encryption_key_file: Option<SStr>,
    pub previous_encryption_key_files: Option<Spanned<Vec<SStr>>>,
    pub node: Option<SStr>,
    pub lease: Option<SStr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHttp01 {
    pub listen: Spanned<Vec<SStr>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub listen: SStr,
    pub allow_remote: Option<bool>,
    pub token_file: Option<SStr>,
    pub token_credential: Option<SStr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDaemon {
    pub max_concurrent: Option<Spanned<i64>>,
    pub hook_timeout: Option<SStr>,
    pub retry_first: Option<SStr>,
    pub retry_max: Option<SStr>,
}

/// `[notify]`: where alerts go.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNotify {
    pub command: Option<SStr>,
    #[serde(default)]
    pub command_env: Vec<SStr>,
    pub webhook: Option<Spanned<RawWebhook>>,
    pub warn_before: Option<SStr>,
    pub timeout: Option<SStr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWebhook {
    pub url: SStr,
    pub header_file: Option<SStr>,
}

/// `verify_deploy = { connect = ["127.0.0.1:443"], server_name = "...", timeout = "10s" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVerifyDeploy {
    pub connect: Spanned<Vec<SStr>>,
    pub server_name: Option<SStr>,
    pub timeout: Option<SStr>,
    pub interval: Option<SStr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIssuer {
    pub directory: SStr,
    #[serde(default)]
    pub contact: Vec<SStr>,
    pub ca_bundle: Option<SStr>,
    pub eab: Option<Spanned<RawEab>>,
    pub account_key: Option<SStr>,
    pub caa_identities: Option<Spanned<Vec<SStr>>>,
    #[serde(default)]
    pub solver: Vec<Spanned<RawSolver>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEab {
    pub kid: SStr,
    pub hmac_key_file: Option<SStr>,
    pub hmac_key_env: Option<SStr>,
    pub hmac_key_credential: Option<SStr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSolver {
    pub selector: Option<RawSelector>,
    pub http01: Option<Spanned<RawHttp01Solver>>,
    pub webroot: Option<Spanned<RawWebroot>>,
    pub tlsalpn01: Option<Spanned<RawTlsAlpn01>>,
    pub dns01: Option<Spanned<RawProvider>>,
    pub dns_persist01: Option<Spanned<RawDnsPersist01>>,
    pub propagation: Option<Spanned<RawPropagation>>,
}

/// `dns_persist01 = { issuer_domain = "..." }` (experimental).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDnsPersist01 {
    pub issuer_domain: SStr,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSelector {
    #[serde(default)]
    pub dns_zones: Vec<SStr>,
    #[serde(default)]
    pub dns_names: Vec<SStr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHttp01Solver {
    pub self_check: Option<Spanned<RawSelfCheck>>,
}

/// `self_check = true | false | { port = 5002, resolve = ["127.0.0.1"] }`.
#[derive(Debug)]
pub(crate) enum RawSelfCheck {
    Enabled(bool),
    Target(RawSelfCheckTarget),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSelfCheckTarget {
    pub port: Option<Spanned<i64>>,
    pub resolve: Option<Spanned<OneOrMany>>,
}

impl<'de> Deserialize<'de> for RawSelfCheck {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawSelfCheck;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false, or a table { port = 80, resolve = [\"203.0.113.7\"] }")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawSelfCheck, E> {
                Ok(RawSelfCheck::Enabled(v))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<RawSelfCheck, A::Error> {
                RawSelfCheckTarget::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawSelfCheck::Target)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTlsAlpn01 {
    pub listen: Option<SStr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWebroot {
    pub path: SStr,
    pub self_check: Option<Spanned<RawSelfCheck>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPropagation {
    pub check: Option<bool>,
    pub timeout: Option<SStr>,
    pub interval: Option<SStr>,
    #[serde(default)]
    pub nameservers: Vec<SStr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCertificate {
    pub issuer: Option<Spanned<OneOrMany>>,
    #[serde(default = "empty_spanned_list")]
    pub domains: Spanned<Vec<SStr>>,
    pub key: Option<SStr>,
    pub renew_before: Option<SStr>,
    pub profile: Option<SStr>,
    pub preferred_chain: Option<SStr>,
    #[serde(default)]
    pub key_reuse: bool,
    pub output: Spanned<RawOutput>,
    #[serde(default)]
    pub reload: Vec<SStr>,
    #[serde(default)]
    pub reload_env: Vec<SStr>,
    pub verify_deploy: Option<Spanned<RawVerifyDeploy>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOutput {
    pub dir: SStr,
    pub owner: Option<SStr>,
    pub group: Option<SStr>,
    pub key_mode: Option<Spanned<Mode>>,
    pub cert_mode: Option<Spanned<Mode>>,
    pub allow_shared_dir: Option<bool>,
}

fn empty_spanned_list() -> Spanned<Vec<SStr>> {
    Spanned::new(0..0, Vec::new())
}

/// `issuer = "le"` or `issuer = ["le", "zerossl"]`.
#[derive(Debug, Default)]
pub(crate) struct OneOrMany(pub Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an issuer name or a list of issuer names")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_string()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(OneOrMany(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A file mode: an octal string `"0640"` (or a TOML octal integer `0o640`).
#[derive(Debug)]
pub(crate) enum Mode {
    Text(String),
    Number(i64),
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Mode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an octal file mode as a string, e.g. \"0640\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Mode, E> {
                Ok(Mode::Text(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Mode, E> {
                Ok(Mode::Number(v))
            }
        }
        d.deserialize_any(V)
    }
}
