//! ACME accounts (RFC 8555 §7.3) and everything done with one: orders, authorizations,
//! challenges, finalize, certificate download, key rollover and revocation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openssl::pkey::{PKey, Private};
use serde_json::json;

use super::client::{Client, Response};
use super::jws::{self, KeyRef};
use super::key::{AccountKey, b64};
use super::problem::{Problem, ProblemKind, ProblemOrigin};
use super::types::{
    AccountBody, Authorization, AuthorizationStatus, Challenge, NewOrder, Order, OrderBody,
    OrderStatus,
};
use super::{AcmeError, Result};

/// External account binding credentials (RFC 8555 §7.3.4). `Debug` hides the key.
#[derive(Clone)]
pub struct Eab {
    /// The key identifier the CA issued.
    pub kid: String,
    /// The raw (decoded) HMAC key.
    pub hmac_key: Vec<u8>,
}

impl std::fmt::Debug for Eab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Eab")
            .field("kid", &self.kid)
            .field("hmac_key", &"<redacted>")
            .finish()
    }
}

/// How to poll an order or authorization: exponential backoff from `first` up to `max_interval`,
/// giving up after `timeout`. A `Retry-After` from the CA replaces the backoff step (capped to
/// the time left).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Poll {
    /// The first wait.
    pub first: Duration,
    /// The longest wait between two polls.
    pub max_interval: Duration,
    /// Total time before giving up.
    pub timeout: Duration,
}

impl Default for Poll {
    /// 10 ms first (pebble validates within tens of milliseconds), growing by half each time to at most
    /// 1 s apart (a CA that wants fewer polls says so with Retry-After, which wins), 3 min total.
    fn default() -> Self {
        Self {
            first: Duration::from_millis(10),
            max_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(180),
        }
    }
}

impl Poll {
    /// The wait before the next poll: the backoff step, or `Retry-After` when given, never past
    /// the deadline.
    fn next_wait(
        &self,
        step: Duration,
        retry_after: Option<jiff::Timestamp>,
        left: Duration,
    ) -> Duration {
        let want = match retry_after {
            Some(t) => {
                let d = t.duration_since(jiff::Timestamp::now());
                Duration::try_from(d)
                    .unwrap_or(Duration::ZERO)
                    .max(step.min(Duration::from_millis(10)))
            }
            None => step,
        };
        want.min(left)
    }
}

/// A downloaded certificate chain, parsed once when it arrives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateChain {
    /// The PEM chain: end-entity certificate first.
    pub pem: String,
    /// URLs of alternate chains (`Link: <..>;rel="alternate"`).
    pub alternates: Vec<String>,
    certs: Vec<super::Certificate>,
}

impl CertificateChain {
    /// Parse `pem` (end-entity first); an error when it is not PEM certificates or holds none.
    pub fn parse(pem: String, alternates: Vec<String>) -> std::result::Result<Self, String> {
        let certs = super::Certificate::chain_from_pem(&pem)
            .map_err(|e| format!("the certificate chain is not valid PEM: {e}"))?;
        if certs.is_empty() {
            return Err("the certificate chain is empty".into());
        }
        Ok(Self {
            pem,
            alternates,
            certs,
        })
    }

    /// The parsed certificates, end-entity first.
    pub fn certificates(&self) -> &[super::Certificate] {
        &self.certs
    }
}

/// An ACME account: the key, its URL at the CA, and the client to talk through.
#[derive(Clone, Debug)]
pub struct Account {
    client: Client,
    key: Arc<AccountKey>,
    url: String,
    body: AccountBody,
}

impl Account {
    /// Find the account for `key`, or create it.
    ///
    /// First asks with `onlyReturnExisting` (no side effects); on `accountDoesNotExist` creates the
    /// account with `contact`, the EAB binding when given and `termsOfServiceAgreed` when `agree_tos`.
    pub async fn find_or_create(
        client: &Client,
        key: AccountKey,
        contact: &[String],
        eab: Option<&Eab>,
        agree_tos: bool,
    ) -> Result<Account> {
        if let Some(resp) = Self::lookup(client, &key).await? {
            return Self::from_response(client, key, resp);
        }
        if eab.is_none() && client.directory().meta.external_account_required {
            return Err(AcmeError::Config {
                message: "this CA requires external account binding (EAB): set the issuer's eab kid and HMAC key from the CA's account page".into(),
            });
        }
        let url = &client.directory().new_account;
        let mut payload = serde_json::Map::new();
        if !contact.is_empty() {
            payload.insert("contact".into(), json!(contact));
        }
        if agree_tos {
            payload.insert("termsOfServiceAgreed".into(), json!(true));
        }
        if let Some(eab) = eab {
            payload.insert(
                "externalAccountBinding".into(),
                jws::eab(&key.jwk(), &eab.kid, &eab.hmac_key, url)?,
            );
        }
        let body = serde_json::Value::Object(payload).to_string();
        let resp = client
            .post(
                &key,
                KeyRef::Jwk,
                url,
                Some(body.as_bytes()),
                ProblemOrigin::NewAccount,
                false,
            )
            .await?;
        tracing::info!(directory = client.directory_url(), "created ACME account");
        Self::from_response(client, key, resp)
    }

    /// The account registered for `key`, or `None` when the CA knows no account with that key
    /// (`onlyReturnExisting`, RFC 8555 §7.3.1; never creates one).
    pub async fn find_existing(client: &Client, key: AccountKey) -> Result<Option<Account>> {
        match Self::lookup(client, &key).await? {
            Some(resp) => Ok(Some(Self::from_response(client, key, resp)?)),
            None => Ok(None),
        }
    }

    /// newAccount with `onlyReturnExisting`: the CA's answer, or `None` for `accountDoesNotExist`.
    async fn lookup(client: &Client, key: &AccountKey) -> Result<Option<Response>> {
        let lookup = client
            .post(
                key,
                KeyRef::Jwk,
                &client.directory().new_account,
                Some(br#"{"onlyReturnExisting":true}"#),
                ProblemOrigin::NewAccount,
                false,
            )
            .await;
        match lookup {
            Ok(r) => Ok(Some(r)),
            Err(AcmeError::Problem(p)) if p.kind() == ProblemKind::AccountDoesNotExist => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The account a newAccount answer describes (its URL is the `Location` header).
    fn from_response(client: &Client, key: AccountKey, resp: Response) -> Result<Account> {
        let url = resp.location().ok_or_else(|| AcmeError::BadResponse {
            url: client.directory().new_account.clone(),
            message: "the CA did not return the account URL (Location header)".into(),
        })?;
        let body: AccountBody = resp.json().unwrap_or_default();
        Ok(Account {
            client: client.clone(),
            key: Arc::new(key),
            url,
            body,
        })
    }

    /// An account known by URL (from saved state), without asking the CA.
    pub fn from_parts(client: &Client, key: AccountKey, url: String) -> Account {
        Account {
            client: client.clone(),
            key: Arc::new(key),
            url,
            body: AccountBody::default(),
        }
    }

    /// The account URL (the JWS `kid`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The account key.
    pub fn key(&self) -> &AccountKey {
        &self.key
    }

    /// The client this account talks through.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The account object as last returned by the CA (may be empty for [`Account::from_parts`]).
    pub fn body(&self) -> &AccountBody {
        &self.body
    }

    /// The key authorization for a challenge token (RFC 8555 §8.1).
    pub fn key_authorization(&self, token: &str) -> String {
        self.key.key_authorization(token)
    }

    async fn post(
        &self,
        url: &str,
        payload: Option<&[u8]>,
        origin: ProblemOrigin,
    ) -> Result<Response> {
        self.client
            .post(
                &self.key,
                KeyRef::Kid(&self.url),
                url,
                payload,
                origin,
                false,
            )
            .await
    }

    /// Replace the contact URLs.
    pub async fn update_contact(&mut self, contact: &[String]) -> Result<()> {
        let body = json!({ "contact": contact }).to_string();
        let r = self
            .post(
                &self.url.clone(),
                Some(body.as_bytes()),
                ProblemOrigin::Request("account update"),
            )
            .await?;
        self.body = r.json().unwrap_or_default();
        Ok(())
    }

    /// Deactivate the account (RFC 8555 §7.3.6). The account can no longer be used afterwards.
    pub async fn deactivate(&mut self) -> Result<()> {
        let r = self
            .post(
                &self.url.clone(),
                Some(br#"{"status":"deactivated"}"#),
                ProblemOrigin::Request("account deactivation"),
            )
            .await?;
        self.body = r.json().unwrap_or_default();
        Ok(())
    }

    /// Roll over to a new account key (RFC 8555 §7.3.5). On success this account uses `new_key`.
    pub async fn key_change(&mut self, new_key: AccountKey) -> Result<()> {
        let url = self.client.directory().key_change.clone();
        let inner_payload = json!({ "account": self.url, "oldKey": self.key.jwk() }).to_string();
        let inner = jws::sign(
            &new_key,
            KeyRef::Jwk,
            None,
            &url,
            Some(inner_payload.as_bytes()),
        )?;
        let body = inner.to_string();
        self.post(
            &url,
            Some(body.as_bytes()),
            ProblemOrigin::Request("account key change"),
        )
        .await?;
        self.key = Arc::new(new_key);
        tracing::info!(account = %self.url, "account key changed");
        Ok(())
    }

    /// Revoke a certificate (DER), signed by this account (RFC 8555 §7.6).
    pub async fn revoke(&self, cert_der: &[u8], reason: Option<u8>) -> Result<()> {
        let url = self.client.directory().revoke_cert.clone();
        let body = revoke_body(cert_der, reason);
        self.post(
            &url,
            Some(body.as_bytes()),
            ProblemOrigin::Request("revocation"),
        )
        .await?;
        Ok(())
    }

    /// Create an order. A `profile` must be one the directory lists.
    pub async fn new_order(&self, new: &NewOrder) -> Result<Order> {
        if let Some(p) = &new.profile {
            let profiles = &self.client.directory().meta.profiles;
            if !profiles.contains_key(p) {
                let offered: Vec<&str> = profiles.keys().map(String::as_str).collect();
                return Err(AcmeError::Config {
                    message: if offered.is_empty() {
                        format!(
                            "profile {p:?} was requested but this CA offers no profiles: remove `profile`"
                        )
                    } else {
                        format!(
                            "profile {p:?} is not offered by this CA; it offers: {}. Set `profile` to one of \
                             them, or remove it for the CA's default",
                            offered.join(", ")
                        )
                    },
                });
            }
        }
        let url = self.client.directory().new_order.clone();
        let body = serde_json::to_string(new).map_err(|e| AcmeError::Config {
            message: format!("cannot encode the order: {e}"),
        })?;
        let r = match self
            .post(&url, Some(body.as_bytes()), ProblemOrigin::NewOrder)
            .await
        {
            Err(AcmeError::Problem(mut p)) => {
                // Name what the CA offers next to its refusal of the profile.
                p.offered_profiles = self
                    .client
                    .directory()
                    .meta
                    .profiles
                    .keys()
                    .cloned()
                    .collect();
                return Err(AcmeError::Problem(p));
            }
            other => other?,
        };
        let order_url = r.location().ok_or_else(|| AcmeError::BadResponse {
            url: url.clone(),
            message: "the CA did not return the order URL (Location header)".into(),
        })?;
        Ok(Order {
            url: order_url,
            body: r.json()?,
        })
    }

    /// Fetch an order by URL (POST-as-GET), e.g. to resume after a restart.
    pub async fn order(&self, url: &str) -> Result<Order> {
        Ok(self.order_with_retry_after(url).await?.0)
    }

    async fn order_with_retry_after(&self, url: &str) -> Result<(Order, Option<jiff::Timestamp>)> {
        let r = self
            .post(url, None, ProblemOrigin::Request("order"))
            .await?;
        let body: OrderBody = r.json()?;
        Ok((
            Order {
                url: url.to_string(),
                body,
            },
            r.retry_after(),
        ))
    }

    /// Fetch an authorization (POST-as-GET).
    pub async fn authorization(&self, url: &str) -> Result<Authorization> {
        Ok(self.authorization_with_retry_after(url).await?.0)
    }

    async fn authorization_with_retry_after(
        &self,
        url: &str,
    ) -> Result<(Authorization, Option<jiff::Timestamp>)> {
        let r = self
            .post(url, None, ProblemOrigin::Request("authorization"))
            .await?;
        Ok((r.json()?, r.retry_after()))
    }

    /// Tell the CA a challenge is ready to be validated (POST `{}`).
    pub async fn respond(&self, challenge_url: &str) -> Result<Challenge> {
        let r = self
            .post(
                challenge_url,
                Some(b"{}"),
                ProblemOrigin::Request("challenge"),
            )
            .await?;
        r.json()
    }

    /// Poll an authorization until it is valid or invalid.
    ///
    /// Invalid gives [`AcmeError::Problem`] with the failed challenge's problem, its origin set to
    /// the identifier, so the message says what the CA saw.
    pub async fn poll_authorization(&self, url: &str, poll: &Poll) -> Result<Authorization> {
        let start = Instant::now();
        let mut step = poll.first;
        loop {
            let (authz, retry_after) = self.authorization_with_retry_after(url).await?;
            let name = if authz.wildcard {
                format!("*.{}", authz.identifier.value)
            } else {
                authz.identifier.value.clone()
            };
            match authz.status {
                AuthorizationStatus::Valid => return Ok(authz),
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Invalid => {
                    let mut p = authz
                        .challenges
                        .iter()
                        .find_map(|c| c.error.clone())
                        .unwrap_or_else(|| generic_problem(format!("the authorization for {name} became invalid without a reason from the CA")));
                    p.origin = ProblemOrigin::Challenge(name);
                    return Err(AcmeError::Problem(Box::new(p)));
                }
                other => {
                    let mut p = generic_problem(format!(
                        "the authorization for {name} is {other:?}, not valid"
                    ));
                    p.origin = ProblemOrigin::Challenge(name);
                    return Err(AcmeError::Problem(Box::new(p)));
                }
            }
            step = self
                .sleep(
                    poll,
                    start,
                    step,
                    retry_after,
                    "authorization",
                    url,
                    format!("{:?}", authz.status),
                )
                .await?;
        }
    }

    /// Poll an order until it is ready, valid or invalid; invalid gives the order's problem.
    pub async fn poll_order(&self, url: &str, poll: &Poll) -> Result<Order> {
        let start = Instant::now();
        let mut step = poll.first;
        loop {
            let (order, retry_after) = self.order_with_retry_after(url).await?;
            match order.body.status {
                OrderStatus::Ready | OrderStatus::Valid => return Ok(order),
                OrderStatus::Invalid => {
                    let mut p = order.body.error.clone().unwrap_or_else(|| {
                        generic_problem(
                            "the order became invalid without a reason from the CA".into(),
                        )
                    });
                    if p.origin == ProblemOrigin::Unknown {
                        p.origin = ProblemOrigin::Request("order");
                    }
                    return Err(AcmeError::Problem(Box::new(p)));
                }
                OrderStatus::Pending | OrderStatus::Processing => {}
            }
            step = self
                .sleep(
                    poll,
                    start,
                    step,
                    retry_after,
                    "order",
                    url,
                    format!("{:?}", order.body.status),
                )
                .await?;
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn sleep(
        &self,
        poll: &Poll,
        start: Instant,
        step: Duration,
        retry_after: Option<jiff::Timestamp>,
        what: &'static str,
        url: &str,
        status: String,
    ) -> Result<Duration> {
        let elapsed = start.elapsed();
        if elapsed >= poll.timeout {
            return Err(AcmeError::Timeout {
                what,
                url: url.to_string(),
                status,
                waited: elapsed,
            });
        }
        let wait = poll.next_wait(step, retry_after, poll.timeout - elapsed);
        tokio::time::sleep(wait).await;
        // Gentle growth: with many orders in flight at a busy CA a doubling step overshoots the moment
        // a validation finishes by as much as it already waited.
        Ok((step * 3 / 2).min(poll.max_interval))
    }

    /// Finalize an order with a DER CSR; returns the updated order (usually `processing` or `valid`).
    pub async fn finalize(&self, order: &Order, csr_der: &[u8]) -> Result<Order> {
        let body = json!({ "csr": b64(csr_der) }).to_string();
        let r = self
            .post(
                &order.body.finalize,
                Some(body.as_bytes()),
                ProblemOrigin::Finalize,
            )
            .await?;
        Ok(Order {
            url: order.url.clone(),
            body: r.json()?,
        })
    }

    /// Download the certificate chain (POST-as-GET) with its alternate chain links.
    pub async fn certificate(&self, url: &str) -> Result<CertificateChain> {
        let r = self
            .client
            .post(
                &self.key,
                KeyRef::Kid(&self.url),
                url,
                None,
                ProblemOrigin::Request("certificate download"),
                true,
            )
            .await?;
        let pem = String::from_utf8(r.body.to_vec()).map_err(|_| AcmeError::BadResponse {
            url: url.to_string(),
            message: "the certificate chain is not text (expected PEM)".into(),
        })?;
        CertificateChain::parse(pem, r.links("alternate")).map_err(|message| {
            AcmeError::BadResponse {
                url: url.to_string(),
                message,
            }
        })
    }

    /// Download the certificate, preferring the chain whose top issuer (or any certificate in it)
    /// has the common name `preferred_issuer_cn`; falls back to the default chain.
    pub async fn certificate_with_preference(
        &self,
        url: &str,
        preferred_issuer_cn: Option<&str>,
    ) -> Result<CertificateChain> {
        let default = self.certificate(url).await?;
        let Some(cn) = preferred_issuer_cn else {
            return Ok(default);
        };
        if chain_matches(&default, cn) {
            return Ok(default);
        }
        let mut offered = vec![top_issuer(&default)];
        for alt in &default.alternates {
            match self.certificate(alt).await {
                Ok(chain) if chain_matches(&chain, cn) => return Ok(chain),
                Ok(chain) => offered.push(top_issuer(&chain)),
                Err(e) => tracing::warn!(url = %alt, error = %e, "cannot fetch an alternate chain"),
            }
        }
        tracing::info!(
            preferred = cn,
            offered = %offered.join(", "),
            "no chain matches preferred_chain; installing the default chain (set preferred_chain to one of the offered top issuers, or remove it)"
        );
        Ok(default)
    }
}

/// The issuer CN of a chain's topmost certificate, for messages ("?" when it cannot be read).
fn top_issuer(chain: &CertificateChain) -> String {
    chain
        .certificates()
        .last()
        .map(|c| c.name_parts(true).0.join(" / "))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "?".to_string())
}

/// The names `preferred_chain` may use for a CA: each common name, and each organization followed
/// by a common name. Let's Encrypt's 2026 roots are `O = ISRG, CN = Root YE` (ECDSA) and
/// `O = ISRG, CN = Root YR` (RSA), called "ISRG Root YE" and "ISRG Root YR" in its documentation;
/// both spellings select them, as "ISRG Root X1" keeps selecting `CN = ISRG Root X1`.
fn ca_names(cert: &super::Certificate, issuer: bool) -> Vec<String> {
    let (cns, orgs) = cert.name_parts(issuer);
    let mut out = cns.clone();
    for o in &orgs {
        out.extend(cns.iter().map(|cn| format!("{o} {cn}")));
    }
    out
}

/// True when the chain's topmost certificate is issued by `cn`, or any certificate in it is `cn`
/// (a common name, or organization and common name: see [`ca_names`]).
pub fn chain_matches(chain: &CertificateChain, cn: &str) -> bool {
    let certs = chain.certificates();
    let top_issuer = certs.last().map(|c| ca_names(c, true)).unwrap_or_default();
    top_issuer.iter().any(|n| n == cn)
        || certs
            .iter()
            .any(|c| ca_names(c, false).iter().any(|n| n == cn))
}

fn generic_problem(detail: String) -> Problem {
    Problem {
        type_: "about:blank".into(),
        detail: Some(detail),
        status: None,
        subproblems: Vec::new(),
        http_status: 0,
        retry_after: None,
        origin: ProblemOrigin::Unknown,
        offered_profiles: Vec::new(),
    }
}

fn revoke_body(cert_der: &[u8], reason: Option<u8>) -> String {
    let mut m = serde_json::Map::new();
    m.insert("certificate".into(), b64(cert_der).into());
    if let Some(r) = reason {
        m.insert("reason".into(), r.into());
    }
    serde_json::Value::Object(m).to_string()
}

/// Revoke a certificate with a request signed by the certificate's own private key (JWK in the
/// header, RFC 8555 §7.6), for when the account key is lost.
pub async fn revoke_with_certificate_key(
    client: &Client,
    cert_key: &PKey<Private>,
    cert_der: &[u8],
    reason: Option<u8>,
) -> Result<()> {
    let key = AccountKey::new(cert_key.clone())?;
    let url = client.directory().revoke_cert.clone();
    let body = revoke_body(cert_der, reason);
    client
        .post(
            &key,
            KeyRef::Jwk,
            &url,
            Some(body.as_bytes()),
            ProblemOrigin::Request("revocation"),
            false,
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_wait_honours_retry_after_capped() {
        let p = Poll {
            first: Duration::from_millis(10),
            max_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
        };
        assert_eq!(
            p.next_wait(Duration::from_millis(10), None, Duration::from_secs(5)),
            Duration::from_millis(10)
        );
        let in_3s = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3);
        let w = p.next_wait(
            Duration::from_millis(10),
            Some(in_3s),
            Duration::from_secs(5),
        );
        assert!(
            w > Duration::from_millis(2500) && w <= Duration::from_secs(3),
            "{w:?}"
        );
        let in_1h = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3600);
        assert_eq!(
            p.next_wait(
                Duration::from_millis(10),
                Some(in_1h),
                Duration::from_secs(2)
            ),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn revoke_body_omits_absent_reason() {
        assert_eq!(revoke_body(b"\x01", None), r#"{"certificate":"AQ"}"#);
        assert_eq!(
            revoke_body(b"\x01", Some(4)),
            r#"{"certificate":"AQ","reason":4}"#
        );
    }

    #[test]
    fn eab_debug_hides_key() {
        let e = Eab {
            kid: "k".into(),
            hmac_key: b"supersecret".to_vec(),
        };
        assert!(!format!("{e:?}").contains("supersecret"));
    }
}
