//! `rfc2136`: dynamic DNS UPDATE (RFC 2136) signed with TSIG (RFC 8945), e.g. to BIND, Knot,
//! PowerDNS or Windows DNS.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use hickory_net::client::{Client, ClientHandle as _};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::udp::UdpClientStream;
use hickory_proto::op::{DnsResponse, ResponseCode};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::{RData, Record, TSigner};
use serde::Deserialize;

use super::{SettingError, check_secret_keys};
use crate::challenge::dns01::zone::parse_name;
use crate::challenge::dns01::{DnsProvider, ProviderError, RecordHandle, TxtRecord, load_secret};

const NAME: &str = "rfc2136";
const TIMEOUT: Duration = Duration::from_secs(10);
/// Allowed clock difference for TSIG, in seconds (RFC 8945 recommends 300).
const FUDGE: u16 = 300;

/// `dns01 = { provider = "rfc2136", ... }`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rfc2136Config {
    /// The primary server taking UPDATEs: "ip:port", "host:port" or just "ip" (port 53).
    pub server: String,
    /// TSIG key name as the server knows it (e.g. "certkeeper."). Without it, updates are unsigned.
    pub tsig_key: Option<String>,
    /// hmac-sha256 (default), hmac-sha384 or hmac-sha512.
    #[serde(default = "default_algorithm")]
    pub tsig_algorithm: String,
    /// File holding the base64 TSIG secret (as in a BIND `key` clause).
    pub tsig_secret_file: Option<PathBuf>,
    /// Environment variable holding the base64 TSIG secret.
    pub tsig_secret_env: Option<String>,
    /// The zone to update; found by SOA lookup when absent.
    pub zone: Option<String>,
}

fn default_algorithm() -> String {
    "hmac-sha256".to_string()
}

/// The TSIG algorithm named by `tsig_algorithm`, if supported.
fn algorithm(name: &str) -> Option<TsigAlgorithm> {
    match name.to_ascii_lowercase().trim_end_matches('.') {
        "hmac-sha256" => Some(TsigAlgorithm::HmacSha256),
        "hmac-sha384" => Some(TsigAlgorithm::HmacSha384),
        "hmac-sha512" => Some(TsigAlgorithm::HmacSha512),
        _ => None,
    }
}

impl Rfc2136Config {
    /// Problems with the settings, found without reading the secret or using the network.
    pub fn check(&self) -> Vec<SettingError> {
        let mut out = Vec::new();
        if self.server.trim().is_empty() {
            out.push(SettingError::new(
                "server",
                "is empty: set it to the primary's \"ip:port\"",
            ));
        }
        if algorithm(&self.tsig_algorithm).is_none() {
            out.push(SettingError::new(
                "tsig_algorithm",
                format!(
                    "{:?} is not supported: use hmac-sha256, hmac-sha384 or hmac-sha512",
                    self.tsig_algorithm
                ),
            ));
        }
        match &self.tsig_key {
            Some(key) => {
                if let Err(e) = parse_name(key) {
                    out.push(SettingError::new("tsig_key", e.to_string()));
                }
                out.extend(check_secret_keys(
                    "tsig_secret",
                    self.tsig_secret_file.as_deref(),
                    self.tsig_secret_env.as_deref(),
                ));
            }
            None if self.tsig_secret_file.is_some() || self.tsig_secret_env.is_some() => {
                out.push(SettingError::new(
                    "tsig_key",
                    "is not set, but a TSIG secret is: set tsig_key to the key's name as the server knows it (e.g. \"certkeeper.\"), or remove the secret for unsigned updates",
                ));
            }
            None => {}
        }
        if let Some(zone) = &self.zone
            && let Err(e) = parse_name(zone)
        {
            out.push(SettingError::new("zone", e.to_string()));
        }
        out
    }
}

/// The RFC 2136 provider.
pub struct Rfc2136 {
    server: String,
    signer: Option<TSigner>,
    zone: Option<String>,
}

impl Rfc2136 {
    /// Validate the config and load the TSIG secret.
    pub fn new(cfg: &Rfc2136Config) -> Result<Self, ProviderError> {
        SettingError::into_result(NAME, cfg.check())?;
        let cfg_err = |message: String| ProviderError::Config {
            provider: NAME,
            message,
        };
        let signer = match &cfg.tsig_key {
            None => None,
            Some(key) => {
                let algorithm = algorithm(&cfg.tsig_algorithm)
                    .ok_or_else(|| cfg_err("tsig_algorithm is not supported".into()))?;
                let secret = load_secret(
                    NAME,
                    "tsig_secret",
                    cfg.tsig_secret_file.as_deref(),
                    cfg.tsig_secret_env.as_deref(),
                )?;
                use base64::Engine as _;
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(secret.expose())
                    .map_err(|e| cfg_err(format!("tsig_secret is not valid base64: {e}")))?;
                let name = parse_name(key).map_err(|e| cfg_err(format!("tsig_key: {e}")))?;
                Some(
                    TSigner::new(raw, algorithm, name, FUDGE)
                        .map_err(|e| cfg_err(format!("TSIG: {e}")))?,
                )
            }
        };
        Ok(Self {
            server: cfg.server.trim().to_string(),
            signer,
            zone: cfg.zone.clone(),
        })
    }

    async fn server_addr(&self) -> Result<SocketAddr, ProviderError> {
        let with_port = if self.server.parse::<SocketAddr>().is_ok()
            || self
                .server
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.contains(':') && p.parse::<u16>().is_ok())
        {
            self.server.clone()
        } else if self.server.contains(':') && !self.server.starts_with('[') {
            format!("[{}]:53", self.server)
        } else {
            format!("{}:53", self.server)
        };
        let mut addrs =
            tokio::net::lookup_host(&with_port)
                .await
                .map_err(|e| ProviderError::Config {
                    provider: NAME,
                    message: format!("cannot resolve server {}: {e}", self.server),
                })?;
        addrs.next().ok_or_else(|| ProviderError::Config {
            provider: NAME,
            message: format!("server {} has no address", self.server),
        })
    }

    fn zone_for(&self, rec: &TxtRecord) -> Result<String, ProviderError> {
        self.zone.clone().or_else(|| rec.zone.clone()).ok_or_else(|| ProviderError::Config {
            provider: NAME,
            message: format!("the zone of {} could not be found by SOA lookup; set `zone` in the rfc2136 settings", rec.fqdn),
        })
    }

    async fn update(&self, rec: &TxtRecord, add: bool) -> Result<(), ProviderError> {
        let server = self.server_addr().await?;
        let zone = self.zone_for(rec)?;
        let bad = |m: String| ProviderError::Config {
            provider: NAME,
            message: m,
        };
        let zone_name = parse_name(&zone).map_err(|e| bad(e.to_string()))?;
        let name = parse_name(&rec.fqdn).map_err(|e| bad(e.to_string()))?;
        if !zone_name.zone_of(&name) {
            return Err(bad(format!("{} is not inside zone {zone}", rec.fqdn)));
        }
        let stream = UdpClientStream::builder(server, TokioRuntimeProvider::new())
            .with_timeout(Some(TIMEOUT))
            .with_signer(self.signer.clone())
            .build();
        let (mut client, bg) = Client::<TokioRuntimeProvider>::from_sender(stream);
        let bg = tokio::spawn(bg);
        let ttl = if add { rec.ttl } else { 0 };
        let record = Record::from_rdata(name, ttl, RData::TXT(TXT::new(vec![rec.value.clone()])));
        let fut = async {
            if add {
                client.append(record, zone_name, false).await
            } else {
                client.delete_by_rdata(record, zone_name).await
            }
        };
        let result = tokio::time::timeout(TIMEOUT + Duration::from_secs(2), fut).await;
        bg.abort();
        let action = if add { "adding" } else { "deleting" };
        match result {
            Err(_) => Err(ProviderError::Api {
                provider: NAME,
                message: format!(
                    "{action} TXT {} at {server}: no answer within {TIMEOUT:?}",
                    rec.fqdn
                ),
                retryable: true,
            }),
            Ok(Err(e)) => Err(map_net_error(server, action, &rec.fqdn, &e.to_string())),
            Ok(Ok(resp)) => check_response(server, action, &rec.fqdn, &zone, &resp),
        }
    }
}

/// hickory reports a rejected TSIG signature as a confusing protocol error (CRATES.md gotcha 4);
/// turn anything TSIG-flavoured into a clear message.
fn map_net_error(server: SocketAddr, action: &str, fqdn: &str, msg: &str) -> ProviderError {
    let lower = msg.to_ascii_lowercase();
    if lower.contains("tsig")
        || lower.contains("hmac")
        || lower.contains("badsig")
        || lower.contains("badkey")
    {
        let code = if lower.contains("badkey") {
            "BADKEY"
        } else {
            "BADSIG/BADKEY"
        };
        return ProviderError::TsigRejected {
            server: server.to_string(),
            code: code.to_string(),
        };
    }
    ProviderError::Api {
        provider: NAME,
        message: format!("{action} TXT {fqdn} at {server}: {msg}"),
        retryable: true,
    }
}

fn check_response(
    server: SocketAddr,
    action: &str,
    fqdn: &str,
    zone: &str,
    resp: &DnsResponse,
) -> Result<(), ProviderError> {
    match resp.metadata.response_code {
        ResponseCode::NoError => Ok(()),
        ResponseCode::NotAuth => Err(ProviderError::TsigRejected {
            server: server.to_string(),
            code: "NOTAUTH".into(),
        }),
        ResponseCode::Refused => Err(ProviderError::Api {
            provider: NAME,
            message: format!(
                "{action} TXT {fqdn} at {server}: REFUSED; the server's update-policy/allow-update must grant this key TXT updates in {zone}"
            ),
            retryable: false,
        }),
        ResponseCode::NotZone => Err(ProviderError::Api {
            provider: NAME,
            message: format!(
                "{action} TXT {fqdn} at {server}: NOTZONE; {server} is not primary for {zone}, set `zone` or `server`"
            ),
            retryable: false,
        }),
        code => Err(ProviderError::Api {
            provider: NAME,
            message: format!("{action} TXT {fqdn} at {server}: server answered {code}"),
            retryable: matches!(code, ResponseCode::ServFail),
        }),
    }
}

#[async_trait::async_trait]
impl DnsProvider for Rfc2136 {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn present(&self, rec: &TxtRecord) -> Result<RecordHandle, ProviderError> {
        self.update(rec, true).await?;
        Ok(RecordHandle::none())
    }

    async fn cleanup(&self, rec: &TxtRecord, _handle: RecordHandle) -> Result<(), ProviderError> {
        self.update(rec, false).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(alg: &str) -> Rfc2136Config {
        Rfc2136Config {
            server: "127.0.0.1:53".into(),
            tsig_key: Some("certkeeper.".into()),
            tsig_algorithm: alg.into(),
            tsig_secret_file: None,
            tsig_secret_env: Some("CERTKEEPER_TEST_RFC2136_SECRET".into()),
            zone: None,
        }
    }

    #[test]
    fn rejects_unsupported_algorithm_and_missing_secret() {
        let e = Rfc2136::new(&cfg("hmac-md5")).err().unwrap().to_string();
        assert!(e.contains("hmac-md5") && e.contains("hmac-sha256"), "{e}");
        let e = Rfc2136::new(&cfg("hmac-sha256")).err().unwrap().to_string();
        assert!(e.contains("CERTKEEPER_TEST_RFC2136_SECRET"), "{e}");
    }

    #[test]
    fn tsig_errors_are_explained() {
        let addr: SocketAddr = "127.0.0.1:53".parse().unwrap();
        let e = map_net_error(
            addr,
            "adding",
            "x.",
            "protocol error: Please file an issue ... truncated HMACs with TSIG",
        );
        assert_eq!(
            e.to_string(),
            "TSIG key rejected by 127.0.0.1:53 (BADSIG/BADKEY): check tsig_key/tsig_secret"
        );
    }
}
