//! `route53`: AWS Route 53 `ChangeResourceRecordSets` (REST/XML API, SigV4-signed).
//!
//! TXT values at one name are kept together in this process and written with `UPSERT` of the
//! whole set, so concurrent challenges on one name (apex + wildcard) coexist; the last value goes
//! with a `DELETE` of exactly that value.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::Deserialize;
use tokio::sync::Mutex;

use super::{
    SettingError, base, check_non_empty, check_secret_keys, check_url, http_client, sigv4,
    status_error, transport_error,
};
use crate::challenge::dns01::{
    DnsProvider, ProviderError, RecordHandle, Secret, TxtRecord, fqdn, load_secret,
};

const NAME: &str = "route53";
const API_VERSION: &str = "2013-04-01";

/// `dns01 = { provider = "route53", access_key_id = "AKIA...", secret_access_key_file = "..." }`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route53Config {
    /// The IAM access key id (not secret).
    pub access_key_id: String,
    /// File holding the secret access key.
    pub secret_access_key_file: Option<PathBuf>,
    /// Environment variable holding the secret access key.
    pub secret_access_key_env: Option<String>,
    /// Hosted zone id (`Z0123...`); looked up by zone name when absent.
    pub hosted_zone_id: Option<String>,
    /// API base URL (default `https://route53.amazonaws.com`).
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Signing region (Route 53 is global: default "us-east-1").
    #[serde(default = "default_region")]
    pub region: String,
}

fn default_base_url() -> String {
    "https://route53.amazonaws.com".to_string()
}

fn default_region() -> String {
    "us-east-1".to_string()
}

impl Route53Config {
    /// Problems with the settings, found without reading the secret or using the network.
    pub fn check(&self) -> Vec<SettingError> {
        let mut out = Vec::new();
        out.extend(check_non_empty("access_key_id", &self.access_key_id));
        out.extend(check_secret_keys(
            "secret_access_key",
            self.secret_access_key_file.as_deref(),
            self.secret_access_key_env.as_deref(),
        ));
        out.extend(check_url("base_url", &self.base_url));
        out.extend(check_non_empty("region", &self.region));
        out
    }
}

/// The Route 53 provider.
#[derive(Debug)]
pub struct Route53 {
    base: String,
    host: String,
    access_key: String,
    secret: Secret,
    zone_id: Option<String>,
    region: String,
    http: reqwest::Client,
    /// Values this process has published per record name.
    values: Mutex<HashMap<String, Vec<String>>>,
}

impl Route53 {
    /// Validate the config and read the secret key.
    pub fn new(cfg: &Route53Config) -> Result<Self, ProviderError> {
        SettingError::into_result(NAME, cfg.check())?;
        let secret = load_secret(
            NAME,
            "secret_access_key",
            cfg.secret_access_key_file.as_deref(),
            cfg.secret_access_key_env.as_deref(),
        )?;
        let base = base(&cfg.base_url);
        let url = reqwest::Url::parse(&base).map_err(|e| ProviderError::Config {
            provider: NAME,
            message: format!("base_url {base:?}: {e}"),
        })?;
        let host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            _ => {
                return Err(ProviderError::Config {
                    provider: NAME,
                    message: format!("base_url {base:?} has no host"),
                });
            }
        };
        Ok(Self {
            base,
            host,
            access_key: cfg.access_key_id.clone(),
            secret,
            zone_id: cfg
                .hosted_zone_id
                .as_ref()
                .map(|z| z.trim_start_matches("/hostedzone/").to_string()),
            region: cfg.region.clone(),
            http: http_client(NAME)?,
            values: Mutex::new(HashMap::new()),
        })
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        query: &str,
        body: String,
        what: &str,
    ) -> Result<String, ProviderError> {
        let amz_date = jiff::Timestamp::now()
            .strftime("%Y%m%dT%H%M%SZ")
            .to_string();
        let headers = [
            ("host", self.host.as_str()),
            ("x-amz-date", amz_date.as_str()),
        ];
        let signed = sigv4::sign(
            &sigv4::Request {
                method,
                path,
                query,
                headers: &headers,
                payload: body.as_bytes(),
            },
            &self.access_key,
            self.secret.expose(),
            &self.region,
            "route53",
            &amz_date,
        );
        let url = if query.is_empty() {
            format!("{}{path}", self.base)
        } else {
            format!("{}{path}?{query}", self.base)
        };
        let method =
            reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| ProviderError::Config {
                provider: NAME,
                message: e.to_string(),
            })?;
        let mut req = self
            .http
            .request(method, &url)
            .header("x-amz-date", &amz_date)
            .header("authorization", signed.authorization);
        if !body.is_empty() {
            req = req.header("content-type", "application/xml").body(body);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| transport_error(NAME, what, &e))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| transport_error(NAME, what, &e))?;
        if !status.is_success() {
            return Err(status_error(NAME, what, status, &text));
        }
        Ok(text)
    }

    async fn zone_id(&self, rec: &TxtRecord) -> Result<String, ProviderError> {
        if let Some(id) = &self.zone_id {
            return Ok(id.clone());
        }
        let candidates = match &rec.zone {
            Some(z) => vec![fqdn::normalize(z)],
            None => fqdn::ancestors(&rec.fqdn),
        };
        for zone in &candidates {
            let what = format!("looking up hosted zone {zone}");
            let query = format!("dnsname={}&maxitems=1", fqdn::unfqdn(zone));
            let xml = self
                .send(
                    "GET",
                    &format!("/{API_VERSION}/hostedzonesbyname"),
                    &query,
                    String::new(),
                    &what,
                )
                .await?;
            // The first <HostedZone> is the one at or after dnsname; take it only on an exact name match.
            if let (Some(id), Some(name)) = (
                between(&xml, "<Id>", "</Id>"),
                between(&xml, "<Name>", "</Name>"),
            ) && fqdn::normalize(name) == *zone
            {
                return Ok(id.trim_start_matches("/hostedzone/").to_string());
            }
        }
        Err(ProviderError::Api {
            provider: NAME,
            message: format!(
                "no Route 53 hosted zone for {} (tried {}); set hosted_zone_id",
                rec.fqdn,
                candidates.join(", ")
            ),
            retryable: false,
        })
    }

    async fn change(
        &self,
        rec: &TxtRecord,
        action: &str,
        values: &[String],
    ) -> Result<(), ProviderError> {
        let zone_id = self.zone_id(rec).await?;
        let body = change_xml(action, &rec.fqdn, rec.ttl, values);
        let what = format!("{action} TXT {} in hosted zone {zone_id}", rec.fqdn);
        self.send(
            "POST",
            &format!("/{API_VERSION}/hostedzone/{zone_id}/rrset"),
            "",
            body,
            &what,
        )
        .await?;
        Ok(())
    }
}

fn between<'a>(s: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = s.find(open)? + open.len();
    let end = s[start..].find(close)? + start;
    Some(&s[start..end])
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The `ChangeResourceRecordSetsRequest` body for one TXT rrset.
pub fn change_xml(action: &str, name: &str, ttl: u32, values: &[String]) -> String {
    let records: String = values
        .iter()
        .map(|v| {
            format!(
                "<ResourceRecord><Value>{}</Value></ResourceRecord>",
                xml_escape(&format!("\"{v}\""))
            )
        })
        .collect();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ChangeResourceRecordSetsRequest xmlns=\"https://route53.amazonaws.com/doc/2013-04-01/\"><ChangeBatch><Comment>certkeeper dns-01</Comment><Changes><Change><Action>{action}</Action><ResourceRecordSet><Name>{}</Name><Type>TXT</Type><TTL>{ttl}</TTL><ResourceRecords>{records}</ResourceRecords></ResourceRecordSet></Change></Changes></ChangeBatch></ChangeResourceRecordSetsRequest>",
        xml_escape(name)
    )
}

#[async_trait::async_trait]
impl DnsProvider for Route53 {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn present(&self, rec: &TxtRecord) -> Result<RecordHandle, ProviderError> {
        let mut all = self.values.lock().await;
        let mut values = all.get(&rec.fqdn).cloned().unwrap_or_default();
        if !values.contains(&rec.value) {
            values.push(rec.value.clone());
        }
        self.change(rec, "UPSERT", &values).await?;
        all.insert(rec.fqdn.clone(), values);
        Ok(RecordHandle::none())
    }

    async fn cleanup(&self, rec: &TxtRecord, _handle: RecordHandle) -> Result<(), ProviderError> {
        let mut all = self.values.lock().await;
        let mut values = all.get(&rec.fqdn).cloned().unwrap_or_default();
        values.retain(|v| v != &rec.value);
        if values.is_empty() {
            self.change(rec, "DELETE", std::slice::from_ref(&rec.value))
                .await?;
            all.remove(&rec.fqdn);
        } else {
            self.change(rec, "UPSERT", &values).await?;
            all.insert(rec.fqdn.clone(), values);
        }
        Ok(())
    }
}
