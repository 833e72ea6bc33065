//! `cloudflare`: the Cloudflare v4 API with a scoped API token (Zone:Read, DNS:Edit).

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::json;

use super::{
    SettingError, base, check_secret_keys, check_url, http_client, status_error, transport_error,
};
use crate::challenge::dns01::{
    DnsProvider, ProviderError, RecordHandle, Secret, TxtRecord, fqdn, load_secret,
};

const NAME: &str = "cloudflare";

/// `dns01 = { provider = "cloudflare", api_token_file = "/etc/certkeeper/cf.token" }`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudflareConfig {
    /// File holding the API token.
    pub api_token_file: Option<PathBuf>,
    /// Environment variable holding the API token.
    pub api_token_env: Option<String>,
    /// API base URL (default `https://api.cloudflare.com/client/v4`).
    #[serde(default = "default_base_url")]
    pub base_url: String,
}

fn default_base_url() -> String {
    "https://api.cloudflare.com/client/v4".to_string()
}

impl CloudflareConfig {
    /// Problems with the settings, found without reading the token or using the network.
    pub fn check(&self) -> Vec<SettingError> {
        let mut out = Vec::new();
        out.extend(check_secret_keys(
            "api_token",
            self.api_token_file.as_deref(),
            self.api_token_env.as_deref(),
        ));
        out.extend(check_url("base_url", &self.base_url));
        out
    }
}

/// The Cloudflare provider.
#[derive(Debug)]
pub struct Cloudflare {
    base: String,
    token: Secret,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct Envelope<T> {
    success: bool,
    #[serde(default)]
    errors: Vec<serde_json::Value>,
    result: Option<T>,
}

#[derive(Deserialize)]
struct WithId {
    id: String,
}

impl Cloudflare {
    /// Validate the config and read the token.
    pub fn new(cfg: &CloudflareConfig) -> Result<Self, ProviderError> {
        SettingError::into_result(NAME, cfg.check())?;
        let token = load_secret(
            NAME,
            "api_token",
            cfg.api_token_file.as_deref(),
            cfg.api_token_env.as_deref(),
        )?;
        Ok(Self {
            base: base(&cfg.base_url),
            token,
            http: http_client(NAME)?,
        })
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<Option<T>, ProviderError> {
        let resp = req
            .bearer_auth(self.token.expose())
            .send()
            .await
            .map_err(|e| transport_error(NAME, what, &e))?;
        let status = resp.status();
        let body = resp
            .text()
            .await
            .map_err(|e| transport_error(NAME, what, &e))?;
        if !status.is_success() {
            return Err(status_error(NAME, what, status, &body));
        }
        let env: Envelope<T> = serde_json::from_str(&body).map_err(|e| ProviderError::Api {
            provider: NAME,
            message: format!("{what}: unexpected JSON: {e}"),
            retryable: false,
        })?;
        if !env.success {
            return Err(ProviderError::Api {
                provider: NAME,
                message: format!("{what}: {}", serde_json::Value::Array(env.errors)),
                retryable: false,
            });
        }
        Ok(env.result)
    }

    /// The zone id: the first of the record's zone (or its ancestors) Cloudflare knows.
    async fn zone_id(&self, rec: &TxtRecord) -> Result<String, ProviderError> {
        let candidates = match &rec.zone {
            Some(z) => vec![fqdn::normalize(z)],
            None => fqdn::ancestors(&rec.fqdn),
        };
        for zone in &candidates {
            let name = fqdn::unfqdn(zone);
            let what = format!("looking up zone {name}");
            let req = self.http.get(format!("{}/zones?name={name}", self.base));
            let zones: Vec<WithId> = self.call(req, &what).await?.unwrap_or_default();
            if let Some(z) = zones.into_iter().next() {
                return Ok(z.id);
            }
        }
        Err(ProviderError::Api {
            provider: NAME,
            message: format!(
                "no Cloudflare zone for {} visible to this token (tried {})",
                rec.fqdn,
                candidates.join(", ")
            ),
            retryable: false,
        })
    }
}

#[async_trait::async_trait]
impl DnsProvider for Cloudflare {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn present(&self, rec: &TxtRecord) -> Result<RecordHandle, ProviderError> {
        let zone_id = self.zone_id(rec).await?;
        let what = format!("creating TXT {}", rec.fqdn);
        let req = self
            .http
            .post(format!("{}/zones/{zone_id}/dns_records", self.base))
            .json(&json!({
                "type": "TXT",
                "name": fqdn::unfqdn(&rec.fqdn),
                "content": rec.value,
                "ttl": rec.ttl.max(60),
            }));
        let created: Option<WithId> = self.call(req, &what).await?;
        let id = created.ok_or_else(|| ProviderError::Api {
            provider: NAME,
            message: format!("{what}: no record id in the answer"),
            retryable: false,
        })?;
        Ok(RecordHandle::id(format!("{zone_id}/{}", id.id)))
    }

    async fn cleanup(&self, rec: &TxtRecord, handle: RecordHandle) -> Result<(), ProviderError> {
        let ids: Vec<(String, String)> = match handle.id.as_deref().and_then(|h| h.split_once('/'))
        {
            Some((zone_id, record_id)) => vec![(zone_id.to_string(), record_id.to_string())],
            None => {
                // No id (present's answer was lost): find records by exact name and value.
                let zone_id = self.zone_id(rec).await?;
                let what = format!("looking up TXT {} by value", rec.fqdn);
                let req = self.http.get(format!(
                    "{}/zones/{zone_id}/dns_records?type=TXT&name={}&content={}",
                    self.base,
                    fqdn::unfqdn(&rec.fqdn),
                    rec.value
                ));
                let found: Vec<WithId> = self.call(req, &what).await?.unwrap_or_default();
                found.into_iter().map(|r| (zone_id.clone(), r.id)).collect()
            }
        };
        for (zone_id, record_id) in ids {
            let what = format!("deleting TXT {} (id {record_id})", rec.fqdn);
            let req = self.http.delete(format!(
                "{}/zones/{zone_id}/dns_records/{record_id}",
                self.base
            ));
            let _: Option<serde_json::Value> = self.call(req, &what).await?;
        }
        Ok(())
    }
}
