//! The HTTP side of ACME: one reqwest client, the directory, the nonce pool and signed POSTs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use openssl::x509::X509;
use reqwest::header::{HeaderMap, HeaderValue};

use super::jws::{self, KeyRef};
use super::key::AccountKey;
use super::problem::{Problem, ProblemKind, ProblemOrigin};
use super::types::Directory;
use super::{AcmeError, Result};

/// Largest JSON response accepted (directory, orders, authorizations, problems).
pub const MAX_JSON_BODY: usize = 1024 * 1024;
/// Largest certificate chain accepted.
pub const MAX_CERT_BODY: usize = 256 * 1024;
/// How many times a request is sent in all when the CA keeps answering `badNonce`.
///
/// Real CAs rarely reject a fresh nonce, but test CAs do on purpose (pebble: 5 % by default, tests
/// up to 50 %). Measured against pebble at 50 %, ten attempts still failed a whole issuance about
/// one run in twenty; sixteen make that about one request in 65,000, and a retry is cheap.
pub const BAD_NONCE_ATTEMPTS: usize = 16;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection to one ACME CA: cheap to clone, shares the HTTP client and the nonce pool.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    directory_url: String,
    directory: Directory,
    nonces: Mutex<Vec<String>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("directory_url", &self.inner.directory_url)
            .finish()
    }
}

/// A CA response with its body read (bounded).
#[derive(Clone, Debug)]
pub struct Response {
    /// The request URL.
    pub url: String,
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl Response {
    /// The `Location` header.
    pub fn location(&self) -> Option<String> {
        header_str(&self.headers, "location").map(str::to_string)
    }

    /// The `Retry-After` header as a point in time.
    pub fn retry_after(&self) -> Option<jiff::Timestamp> {
        header_str(&self.headers, "retry-after")
            .and_then(|v| parse_retry_after(v, jiff::Timestamp::now()))
    }

    /// URLs of the `Link` headers with the given `rel`.
    pub fn links(&self, rel: &str) -> Vec<String> {
        self.headers
            .get_all("link")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| parse_links(v, rel))
            .collect()
    }

    /// Parse the body as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body).map_err(|e| AcmeError::BadResponse {
            url: self.url.clone(),
            message: format!("the CA's answer is not the expected JSON object: {e}"),
        })
    }
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Parse `Retry-After`: delay seconds or an HTTP date (RFC 9110 §10.2.3).
pub fn parse_retry_after(value: &str, now: jiff::Timestamp) -> Option<jiff::Timestamp> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        // Cap absurd values at one year so the arithmetic cannot overflow.
        let secs = secs.min(366 * 86400) as i64;
        return now.checked_add(jiff::SignedDuration::from_secs(secs)).ok();
    }
    jiff::fmt::rfc2822::DateTimeParser::new()
        .parse_timestamp(v)
        .ok()
}

/// Parse one `Link` header value (RFC 8288) and return the targets whose `rel` matches.
pub fn parse_links(value: &str, rel: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = value;
    while let Some(start) = rest.find('<') {
        let Some(end) = rest[start..].find('>') else {
            break;
        };
        let target = &rest[start + 1..start + end];
        let after = &rest[start + end + 1..];
        let params_end = after.find('<').unwrap_or(after.len());
        let params = &after[..params_end];
        let matches = params.split(';').any(|p| {
            let p = p.trim().trim_end_matches(',').trim();
            p.split_once('=').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("rel")
                    && v.trim()
                        .trim_matches('"')
                        .split_whitespace()
                        .any(|r| r.eq_ignore_ascii_case(rel))
            })
        });
        if matches {
            out.push(target.to_string());
        }
        rest = &after[params_end..];
    }
    out
}

/// Turn a reqwest error into a message a system administrator understands.
fn transport_error(url: &str, e: reqwest::Error) -> AcmeError {
    let mut chain = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        let text = s.to_string();
        // Error layers often repeat their source's text; show each piece once.
        if !chain.contains(&text) {
            chain.push_str(": ");
            chain.push_str(&text);
        }
        src = s.source();
    }
    let lc = chain.to_lowercase();
    if lc.contains("certificate verify failed")
        || lc.contains("self-signed")
        || lc.contains("self signed")
        || lc.contains("unable to get local issuer")
        || lc.contains("certificate has expired")
        || lc.contains("hostname mismatch")
    {
        AcmeError::Tls {
            url: url.to_string(),
            message: chain,
        }
    } else if e.is_connect() || e.is_timeout() {
        AcmeError::Connect {
            url: url.to_string(),
            message: chain,
        }
    } else {
        AcmeError::Http {
            url: url.to_string(),
            message: chain,
        }
    }
}

impl Client {
    /// Connect to a CA: build the HTTP client and fetch the directory once.
    ///
    /// `extra_roots` are trusted in addition to the system roots (the issuer's `ca_bundle`).
    /// `http://` directory URLs are allowed (tests, local CAs).
    pub async fn new(directory_url: &str, extra_roots: &[X509], user_agent: &str) -> Result<Self> {
        let mut certs = Vec::new();
        for root in extra_roots {
            let der = root.to_der().map_err(|e| AcmeError::Config {
                message: format!("a ca_bundle certificate cannot be encoded: {e}"),
            })?;
            certs.push(
                reqwest::Certificate::from_der(&der).map_err(|e| AcmeError::Config {
                    message: format!("a ca_bundle certificate is not usable as a trust root: {e}"),
                })?,
            );
        }
        let http = reqwest::Client::builder()
            .user_agent(user_agent)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .tls_certs_merge(certs)
            .build()
            .map_err(|e| AcmeError::Config {
                message: format!("cannot set up the HTTPS client: {e}"),
            })?;
        let nonces = Mutex::new(Vec::new());
        let resp = fetch(
            &http,
            &nonces,
            reqwest::Method::GET,
            directory_url,
            MAX_JSON_BODY,
        )
        .await?;
        if resp.status != 200 {
            return Err(AcmeError::BadResponse {
                url: directory_url.to_string(),
                message: format!(
                    "the directory URL answered HTTP {} instead of an ACME directory: check the issuer's directory URL",
                    resp.status
                ),
            });
        }
        let directory: Directory = serde_json::from_slice(&resp.body).map_err(|e| {
            AcmeError::BadResponse {
                url: directory_url.to_string(),
                message: format!(
                    "this URL did not return an ACME directory ({e}): check the issuer's directory URL"
                ),
            }
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                directory_url: directory_url.to_string(),
                directory,
                nonces,
            }),
        })
    }

    /// The directory as fetched at connect time.
    pub fn directory(&self) -> &Directory {
        &self.inner.directory
    }

    /// The directory URL.
    pub fn directory_url(&self) -> &str {
        &self.inner.directory_url
    }

    /// A plain unauthenticated GET (directory-style resources, ARI), bounded to `limit` bytes.
    pub async fn get(&self, url: &str, limit: usize) -> Result<Response> {
        fetch(
            &self.inner.http,
            &self.inner.nonces,
            reqwest::Method::GET,
            url,
            limit,
        )
        .await
    }

    async fn nonce(&self) -> Result<String> {
        if let Some(n) = self.pool().pop() {
            return Ok(n);
        }
        let url = &self.inner.directory.new_nonce;
        let resp = fetch(
            &self.inner.http,
            &self.inner.nonces,
            reqwest::Method::HEAD,
            url,
            0,
        )
        .await?;
        self.pool().pop().ok_or_else(|| AcmeError::BadResponse {
            url: url.clone(),
            message: format!("the CA gave no Replay-Nonce header (HTTP {})", resp.status),
        })
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        // A poisoned pool only means another task panicked mid-push; the nonces are still fine.
        self.inner.nonces.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A signed POST (RFC 8555 §6.2), resent with a fresh nonce on `badNonce`.
    ///
    /// An error status is returned as [`AcmeError::Problem`] carrying `origin`.
    pub async fn post(
        &self,
        key: &AccountKey,
        key_ref: KeyRef<'_>,
        url: &str,
        payload: Option<&[u8]>,
        origin: ProblemOrigin,
        accept_pem: bool,
    ) -> Result<Response> {
        let limit = if accept_pem {
            MAX_CERT_BODY
        } else {
            MAX_JSON_BODY
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let nonce = self.nonce().await?;
            let body = jws::sign(key, key_ref, Some(&nonce), url, payload)?;
            let mut req = self
                .inner
                .http
                .post(url)
                .header("content-type", "application/jose+json")
                .body(body.to_string());
            if accept_pem {
                req = req.header("accept", "application/pem-certificate-chain");
            }
            let resp = read(
                req.send().await.map_err(|e| transport_error(url, e))?,
                url,
                limit,
                &self.inner.nonces,
            )
            .await?;
            if resp.status < 400 {
                return Ok(resp);
            }
            let problem = problem_from(&resp, origin.clone());
            if problem.kind() == ProblemKind::BadNonce && attempt < BAD_NONCE_ATTEMPTS {
                tracing::debug!(url, attempt, "badNonce, resending with a fresh nonce");
                continue;
            }
            return Err(AcmeError::Problem(Box::new(problem)));
        }
    }
}

/// Build a problem from an error response, even when the body is not a problem document.
pub(crate) fn problem_from(resp: &Response, origin: ProblemOrigin) -> Problem {
    let mut p = serde_json::from_slice::<Problem>(&resp.body).unwrap_or_else(|_| {
        let text = String::from_utf8_lossy(&resp.body);
        let text: String = text.chars().take(300).collect();
        Problem {
            type_: "about:blank".into(),
            detail: Some(if text.trim().is_empty() {
                format!("HTTP {} with no problem document", resp.status)
            } else {
                text
            }),
            status: None,
            subproblems: Vec::new(),
            http_status: 0,
            retry_after: None,
            origin: ProblemOrigin::Unknown,
            offered_profiles: Vec::new(),
        }
    });
    p.http_status = resp.status;
    p.retry_after = resp.retry_after();
    p.origin = origin;
    p
}

async fn fetch(
    http: &reqwest::Client,
    nonces: &Mutex<Vec<String>>,
    method: reqwest::Method,
    url: &str,
    limit: usize,
) -> Result<Response> {
    let resp = http
        .request(method, url)
        .send()
        .await
        .map_err(|e| transport_error(url, e))?;
    read(resp, url, limit, nonces).await
}

/// Read a response body up to `limit` bytes and keep its `Replay-Nonce`.
async fn read(
    mut resp: reqwest::Response,
    url: &str,
    limit: usize,
    nonces: &Mutex<Vec<String>>,
) -> Result<Response> {
    if let Some(n) = resp
        .headers()
        .get("replay-nonce")
        .and_then(|v: &HeaderValue| v.to_str().ok())
    {
        let mut pool = nonces.lock().unwrap_or_else(|p| p.into_inner());
        pool.push(n.to_string());
        // Old nonces go stale; keep the pool small.
        if pool.len() > 32 {
            pool.remove(0);
        }
    }
    let too_large = || AcmeError::BadResponse {
        url: url.to_string(),
        message: format!("the CA's answer is larger than {limit} bytes; refusing to read it"),
    };
    if resp
        .content_length()
        .is_some_and(|l| l as usize > limit.max(1))
        && limit > 0
    {
        return Err(too_large());
    }
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| transport_error(url, e))? {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Response {
        url: url.to_string(),
        status,
        headers,
        body: body.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_http_date() {
        let now: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(
            parse_retry_after("120", now).unwrap().to_string(),
            "2026-01-01T00:02:00Z"
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now)
                .unwrap()
                .to_string(),
            "2015-10-21T07:28:00Z"
        );
        assert!(parse_retry_after("soon", now).is_none());
        assert!(parse_retry_after("-5", now).is_none());
    }

    #[test]
    fn link_parsing() {
        let v = r#"<https://ca/cert/1/1>;rel="alternate", <https://ca/dir>;rel="index", <https://ca/cert/1/2>; rel=alternate"#;
        assert_eq!(
            parse_links(v, "alternate"),
            vec!["https://ca/cert/1/1", "https://ca/cert/1/2"]
        );
        assert_eq!(parse_links(v, "index"), vec!["https://ca/dir"]);
        assert!(parse_links(v, "up").is_empty());
        assert!(parse_links("garbage", "alternate").is_empty());
    }
}
