//! `powerdns`: the PowerDNS Authoritative Server HTTP API (`/api/v1`).
//!
//! TXT values at one name are written as a whole rrset (`changetype: REPLACE` with every current
//! value), so an apex and a wildcard challenge on the same name never clobber each other; the
//! rrset is deleted when its last value goes.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::json;
use tokio::sync::Mutex;

use super::{
    SettingError, base, check_non_empty, check_secret_keys, check_url, http_client, status_error,
    transport_error,
};
use crate::challenge::dns01::{
    DnsProvider, ProviderError, RecordHandle, Secret, TxtRecord, fqdn, load_secret,
};

const NAME: &str = "powerdns";

/// `dns01 = { provider = "powerdns", api_url = "http://127.0.0.1:8081", ... }`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PowerdnsConfig {
    /// Base URL of the web server (without `/api/v1`).
    pub api_url: String,
    /// Server id in the API path (default "localhost").
    #[serde(default = "default_server_id")]
    pub server_id: String,
    /// File holding the API key (`api-key` in pdns.conf).
    pub api_key_file: Option<PathBuf>,
    /// Environment variable holding the API key.
    pub api_key_env: Option<String>,
    /// The zone; found by SOA lookup when absent.
    pub zone: Option<String>,
}

fn default_server_id() -> String {
    "localhost".to_string()
}

impl PowerdnsConfig {
    /// Problems with the settings, found without reading the key or using the network.
    pub fn check(&self) -> Vec<SettingError> {
        let mut out = Vec::new();
        out.extend(check_url("api_url", &self.api_url));
        out.extend(check_non_empty("server_id", &self.server_id));
        out.extend(check_secret_keys(
            "api_key",
            self.api_key_file.as_deref(),
            self.api_key_env.as_deref(),
        ));
        out
    }
}

/// The PowerDNS provider.
#[derive(Debug)]
pub struct Powerdns {
    api: String,
    server_id: String,
    key: Secret,
    zone: Option<String>,
    http: reqwest::Client,
    /// Read-modify-write of an rrset must not interleave within this process.
    lock: Mutex<()>,
}

#[derive(Deserialize)]
struct Zone {
    #[serde(default)]
    rrsets: Vec<RrSet>,
}

#[derive(Deserialize)]
struct RrSet {
    name: String,
    #[serde(rename = "type")]
    rtype: String,
    #[serde(default)]
    records: Vec<Rec>,
}

#[derive(Deserialize)]
struct Rec {
    content: String,
}

impl Powerdns {
    /// Validate the config and read the API key.
    pub fn new(cfg: &PowerdnsConfig) -> Result<Self, ProviderError> {
        SettingError::into_result(NAME, cfg.check())?;
        let key = load_secret(
            NAME,
            "api_key",
            cfg.api_key_file.as_deref(),
            cfg.api_key_env.as_deref(),
        )?;
        Ok(Self {
            api: base(&cfg.api_url),
            server_id: cfg.server_id.clone(),
            key,
            zone: cfg.zone.clone(),
            http: http_client(NAME)?,
            lock: Mutex::new(()),
        })
    }

    fn zone_url(&self, rec: &TxtRecord) -> Result<String, ProviderError> {
        let zone = self
            .zone
            .clone()
            .or_else(|| rec.zone.clone())
            .ok_or_else(|| ProviderError::Config {
                provider: NAME,
                message: format!(
                    "the zone of {} could not be found by SOA lookup; set `zone`",
                    rec.fqdn
                ),
            })?;
        Ok(format!(
            "{}/api/v1/servers/{}/zones/{}",
            self.api,
            self.server_id,
            fqdn::normalize(&zone)
        ))
    }

    /// Current TXT contents (quoted, as PowerDNS stores them) at `rec.fqdn`.
    async fn current(&self, url: &str, rec: &TxtRecord) -> Result<Vec<String>, ProviderError> {
        let what = format!("reading zone at {url}");
        let resp = self
            .http
            .get(url)
            .header("X-API-Key", self.key.expose())
            .send()
            .await
            .map_err(|e| transport_error(NAME, &what, &e))?;
        let status = resp.status();
        let body = resp
            .text()
            .await
            .map_err(|e| transport_error(NAME, &what, &e))?;
        if !status.is_success() {
            return Err(status_error(NAME, &what, status, &body));
        }
        let zone: Zone = serde_json::from_str(&body).map_err(|e| ProviderError::Api {
            provider: NAME,
            message: format!("{what}: unexpected JSON: {e}"),
            retryable: false,
        })?;
        Ok(zone
            .rrsets
            .into_iter()
            .filter(|r| r.rtype == "TXT" && fqdn::normalize(&r.name) == rec.fqdn)
            .flat_map(|r| r.records.into_iter().map(|c| c.content))
            .collect())
    }

    async fn write(
        &self,
        url: &str,
        rec: &TxtRecord,
        values: &[String],
    ) -> Result<(), ProviderError> {
        let rrset = if values.is_empty() {
            json!({ "name": rec.fqdn, "type": "TXT", "changetype": "DELETE" })
        } else {
            let records: Vec<_> = values
                .iter()
                .map(|v| json!({ "content": v, "disabled": false }))
                .collect();
            json!({ "name": rec.fqdn, "type": "TXT", "ttl": rec.ttl, "changetype": "REPLACE", "records": records })
        };
        let what = format!("updating TXT {} at {url}", rec.fqdn);
        let resp = self
            .http
            .patch(url)
            .header("X-API-Key", self.key.expose())
            .json(&json!({ "rrsets": [rrset] }))
            .send()
            .await
            .map_err(|e| transport_error(NAME, &what, &e))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(status_error(NAME, &what, status, &body));
        }
        Ok(())
    }
}

fn quoted(value: &str) -> String {
    format!("\"{value}\"")
}

#[async_trait::async_trait]
impl DnsProvider for Powerdns {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn present(&self, rec: &TxtRecord) -> Result<RecordHandle, ProviderError> {
        let url = self.zone_url(rec)?;
        let _guard = self.lock.lock().await;
        let mut values = self.current(&url, rec).await?;
        if !values.contains(&quoted(&rec.value)) {
            values.push(quoted(&rec.value));
        }
        self.write(&url, rec, &values).await?;
        Ok(RecordHandle::none())
    }

    async fn cleanup(&self, rec: &TxtRecord, _handle: RecordHandle) -> Result<(), ProviderError> {
        let url = self.zone_url(rec)?;
        let _guard = self.lock.lock().await;
        let mut values = self.current(&url, rec).await?;
        let before = values.len();
        values.retain(|v| v != &quoted(&rec.value));
        if values.len() == before {
            return Ok(());
        }
        self.write(&url, rec, &values).await
    }
}
