//! `acme-dns`: an [acme-dns](https://github.com/joohoi/acme-dns) server holding the challenge
//! records; `_acme-challenge.<name>` is a CNAME to `<subdomain>.<acme-dns domain>`.
//!
//! Cleanup does nothing by design: acme-dns keeps the last two values per subdomain and has no
//! delete call.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::json;

use super::{
    SettingError, base, check_non_empty, check_secret_keys, check_url, http_client, status_error,
    transport_error,
};
use crate::challenge::dns01::{
    DnsProvider, ProviderError, RecordHandle, Secret, TxtRecord, load_secret,
};

const NAME: &str = "acme-dns";

/// `dns01 = { provider = "acme-dns", api_url = "https://auth.acme-dns.io", ... }`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeDnsConfig {
    /// Base URL of the acme-dns API.
    pub api_url: String,
    /// The `username` from acme-dns `/register`.
    pub username: String,
    /// File holding the `password` from `/register`.
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// The `subdomain` from `/register` (the CNAME target is `<subdomain>.<acme-dns domain>`).
    pub subdomain: String,
}

impl AcmeDnsConfig {
    /// Problems with the settings, found without reading the password or using the network.
    pub fn check(&self) -> Vec<SettingError> {
        let mut out = Vec::new();
        out.extend(check_url("api_url", &self.api_url));
        out.extend(check_non_empty("username", &self.username));
        out.extend(check_secret_keys(
            "password",
            self.password_file.as_deref(),
            self.password_env.as_deref(),
        ));
        out.extend(check_non_empty("subdomain", &self.subdomain));
        out
    }
}

/// The acme-dns provider.
#[derive(Debug)]
pub struct AcmeDns {
    api: String,
    username: String,
    password: Secret,
    subdomain: String,
    http: reqwest::Client,
}

impl AcmeDns {
    /// Validate the config and read the password.
    pub fn new(cfg: &AcmeDnsConfig) -> Result<Self, ProviderError> {
        SettingError::into_result(NAME, cfg.check())?;
        let password = load_secret(
            NAME,
            "password",
            cfg.password_file.as_deref(),
            cfg.password_env.as_deref(),
        )?;
        Ok(Self {
            api: base(&cfg.api_url),
            username: cfg.username.clone(),
            password,
            subdomain: cfg.subdomain.clone(),
            http: http_client(NAME)?,
        })
    }
}

#[async_trait::async_trait]
impl DnsProvider for AcmeDns {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn present(&self, rec: &TxtRecord) -> Result<RecordHandle, ProviderError> {
        let url = format!("{}/update", self.api);
        let what = format!("acme-dns update of subdomain {} at {url}", self.subdomain);
        let resp = self
            .http
            .post(&url)
            .header("X-Api-User", &self.username)
            .header("X-Api-Key", self.password.expose())
            .json(&json!({ "subdomain": self.subdomain, "txt": rec.value }))
            .send()
            .await
            .map_err(|e| transport_error(NAME, &what, &e))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(status_error(NAME, &what, status, &body));
        }
        Ok(RecordHandle::none())
    }

    async fn cleanup(&self, _rec: &TxtRecord, _handle: RecordHandle) -> Result<(), ProviderError> {
        Ok(())
    }
}
