//! DNS-01: publish `_acme-challenge` TXT records through a [`DnsProvider`] and wait until every
//! authoritative nameserver serves them.
//!
//! The generic work lives here once: the challenge name ([`fqdn`]), following a CNAME on it and
//! finding the zone ([`zone`]), and the propagation check ([`propagation`]). Providers
//! ([`providers`]) only create and delete one TXT value in their back end.

pub mod fqdn;
pub mod propagation;
pub mod providers;
pub mod zone;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use tokio::sync::Mutex;

use crate::challenge::{ChallengeCtx, ChallengeKind, SolveError, Solver};
pub use propagation::PropagationConfig;

/// Default TTL of challenge records: short, so a retried order is not held up by caches.
pub const DEFAULT_TTL: u32 = 60;

/// One TXT value to publish.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TxtRecord {
    /// Absolute record name after CNAME following, lower-case with trailing dot
    /// (`_acme-challenge.example.com.`).
    pub fqdn: String,
    /// The zone the record belongs to (`example.com.`), when it could be found.
    pub zone: Option<String>,
    /// The TXT value (base64url digest; not secret).
    pub value: String,
    /// TTL in seconds.
    pub ttl: u32,
}

/// What a provider needs later to delete exactly the record it created (e.g. a vendor record id).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordHandle {
    /// Provider-specific id; `None` when the record is identified by name and value alone.
    pub id: Option<String>,
}

impl RecordHandle {
    /// A handle for providers that delete by name and value.
    pub fn none() -> Self {
        Self { id: None }
    }

    /// A handle carrying a provider record id.
    pub fn id(id: impl Into<String>) -> Self {
        Self {
            id: Some(id.into()),
        }
    }
}

/// Why a provider could not be built or could not create/delete a record.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The provider configuration is unusable (missing secret, bad algorithm, ...).
    #[error("dns01 provider {provider}: {message}")]
    Config {
        /// Provider name (`rfc2136`, `powerdns`, ...).
        provider: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The DNS server rejected the TSIG key or signature.
    #[error("TSIG key rejected by {server} ({code}): check tsig_key/tsig_secret")]
    TsigRejected {
        /// The server address.
        server: String,
        /// BADSIG / BADKEY / NOTAUTH as seen.
        code: String,
    },
    /// The back end refused or failed the request.
    #[error("dns01 provider {provider}: {message}")]
    Api {
        /// Provider name.
        provider: &'static str,
        /// What happened, including the server's own words.
        message: String,
        /// True when a retry later may help (timeouts, 5xx).
        retryable: bool,
    },
}

impl ProviderError {
    /// True when trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Config { .. } | Self::TsigRejected { .. } => false,
            Self::Api { retryable, .. } => *retryable,
        }
    }
}

pub use crate::config::Secret;

/// Load a provider secret from `<key>_file` or `<key>_env` (exactly one; the rule of
/// [`crate::config::read_secret`]), naming the provider in errors.
pub fn load_secret(
    provider: &'static str,
    key: &str,
    file: Option<&std::path::Path>,
    env: Option<&str>,
) -> Result<Secret, ProviderError> {
    crate::config::read_secret(key, file, env).map_err(|e| ProviderError::Config {
        provider,
        message: e.to_string(),
    })
}

/// A DNS back end that can create and delete one TXT value.
///
/// Implementations MUST add the value next to existing TXT values at the same name (an apex and a
/// wildcard authorization share `_acme-challenge.<name>` and are solved at the same time), and
/// `cleanup` MUST remove only the value `present` created.
#[async_trait::async_trait]
pub trait DnsProvider: Send + Sync {
    /// The provider's name for logs and messages (`rfc2136`, `powerdns`, ...).
    fn name(&self) -> &'static str;

    /// Create the TXT value and return what `cleanup` needs to delete it again.
    async fn present(&self, rec: &TxtRecord) -> Result<RecordHandle, ProviderError>;

    /// Delete exactly the value `present` created.
    async fn cleanup(&self, rec: &TxtRecord, handle: RecordHandle) -> Result<(), ProviderError>;
}

/// (challenge name, TXT value): one presented record.
type PresentKey = (String, String);

/// A [`Solver`] for `dns-01` on top of a [`DnsProvider`].
pub struct Dns01Solver {
    provider: Arc<dyn DnsProvider>,
    propagation: PropagationConfig,
    /// The recursive resolvers (`[dns01] resolvers`); empty: `/etc/resolv.conf`.
    resolvers: Vec<std::net::SocketAddr>,
    ttl: u32,
    /// What `present` created, keyed by (challenge name, value), so `cleanup` deletes exactly that.
    /// A `None` handle means `present` failed: the record may or may not exist (e.g. a timeout
    /// after the server applied the change), so `cleanup` tries a best-effort delete.
    presented: Mutex<HashMap<PresentKey, (TxtRecord, Option<RecordHandle>)>>,
}

impl fmt::Debug for Dns01Solver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dns01Solver")
            .field("provider", &self.provider.name())
            .field("propagation", &self.propagation)
            .finish_non_exhaustive()
    }
}

impl Dns01Solver {
    /// A solver publishing through `provider` and checking propagation as `propagation` says.
    pub fn new(provider: Arc<dyn DnsProvider>, propagation: PropagationConfig) -> Self {
        Self {
            provider,
            propagation,
            resolvers: Vec::new(),
            ttl: DEFAULT_TTL,
            presented: Mutex::new(HashMap::new()),
        }
    }

    /// Find zones, nameservers and CNAMEs through these recursive resolvers (`[dns01] resolvers`)
    /// instead of those of `/etc/resolv.conf`; explicit `propagation.nameservers` still win.
    pub fn with_resolvers(mut self, resolvers: Vec<std::net::SocketAddr>) -> Self {
        self.resolvers = resolvers;
        self
    }

    /// Use another TTL for the records (default [`DEFAULT_TTL`]).
    pub fn with_ttl(mut self, ttl: u32) -> Self {
        self.ttl = ttl;
        self
    }

    /// Work out the record for a challenge: name, CNAME target, zone.
    ///
    /// The zone is best effort: when it cannot be found the provider gets `None` and may use its
    /// own configured zone.
    pub async fn record_for(&self, ch: &ChallengeCtx) -> Result<TxtRecord, SolveError> {
        let name = fqdn::challenge_name(&ch.identifier);
        let lookup = self.propagation.lookup_with(&self.resolvers);
        let target = match lookup.follow_cname(&name).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(cert = %ch.cert_name, name = %name, error = %e, "could not check for a CNAME; using the name itself");
                name.clone()
            }
        };
        let zone = match lookup.find_zone(&target).await {
            Ok(z) => Some(z),
            Err(e) => {
                tracing::warn!(cert = %ch.cert_name, name = %target, error = %e, "zone not found by SOA lookup");
                None
            }
        };
        Ok(TxtRecord {
            fqdn: target,
            zone,
            value: ch.dns_txt_value(),
            ttl: self.ttl,
        })
    }
}

fn key_of(ch: &ChallengeCtx) -> PresentKey {
    (fqdn::challenge_name(&ch.identifier), ch.dns_txt_value())
}

fn solve_error(e: &ProviderError) -> SolveError {
    SolveError {
        message: e.to_string(),
        retryable: e.is_retryable(),
    }
}

#[async_trait::async_trait]
impl Solver for Dns01Solver {
    fn kind(&self) -> ChallengeKind {
        ChallengeKind::Dns01
    }

    async fn present(&self, ch: &ChallengeCtx) -> Result<(), SolveError> {
        // Solver selection never picks dns-01 for an IP address; this guards direct callers.
        if !ChallengeKind::Dns01.can_prove(ch.identifier_kind()) {
            return Err(SolveError::permanent(format!(
                "dns-01 cannot prove the {} {}; use http-01 or tls-alpn-01 for it",
                ch.identifier_kind().describe(),
                ch.identifier
            )));
        }
        let key = key_of(ch);
        if matches!(self.presented.lock().await.get(&key), Some((_, Some(_)))) {
            return Ok(());
        }
        let rec = self.record_for(ch).await?;
        tracing::info!(cert = %ch.cert_name, fqdn = %rec.fqdn, provider = self.provider.name(), "creating DNS-01 TXT record");
        match self.provider.present(&rec).await {
            Ok(handle) => {
                self.presented.lock().await.insert(key, (rec, Some(handle)));
                Ok(())
            }
            Err(e) => {
                self.presented.lock().await.insert(key, (rec, None));
                Err(solve_error(&e))
            }
        }
    }

    async fn wait(&self, ch: &ChallengeCtx) -> Result<(), SolveError> {
        if !self.propagation.check {
            return Ok(());
        }
        let Some((rec, Some(_))) = self.presented.lock().await.get(&key_of(ch)).cloned() else {
            return Err(SolveError::permanent(format!(
                "no DNS-01 record was presented for {}",
                ch.identifier
            )));
        };
        propagation::wait_for_txt_via(
            &self.propagation,
            &self.propagation.lookup_with(&self.resolvers),
            &rec.fqdn,
            rec.zone.as_deref(),
            &rec.value,
        )
        .await
        // No certificate name in front: the daemon's report already names the certificate.
        .map_err(|e| SolveError::retryable(e.to_string()))
    }

    async fn cleanup(&self, ch: &ChallengeCtx) -> Result<(), SolveError> {
        let Some((rec, handle)) = self.presented.lock().await.remove(&key_of(ch)) else {
            // present never ran for this challenge: nothing to delete.
            return Ok(());
        };
        let Some(handle) = handle else {
            // present failed, yet the record may exist (the answer was lost after the change was
            // applied): delete by name and value, and don't fail if there was nothing.
            if let Err(e) = self.provider.cleanup(&rec, RecordHandle::none()).await {
                tracing::debug!(cert = %ch.cert_name, fqdn = %rec.fqdn, error = %e, "best-effort cleanup after a failed present");
            }
            return Ok(());
        };
        tracing::info!(cert = %ch.cert_name, fqdn = %rec.fqdn, provider = self.provider.name(), "deleting DNS-01 TXT record");
        if let Err(e) = self.provider.cleanup(&rec, handle.clone()).await {
            // Keep it so a later cleanup call can try again.
            self.presented
                .lock()
                .await
                .insert(key_of(ch), (rec, Some(handle)));
            return Err(solve_error(&e));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;

    #[derive(Default)]
    struct Recorder {
        log: StdMutex<Vec<String>>,
        fail_present: bool,
    }

    #[async_trait::async_trait]
    impl DnsProvider for Recorder {
        fn name(&self) -> &'static str {
            "recorder"
        }
        async fn present(&self, rec: &TxtRecord) -> Result<RecordHandle, ProviderError> {
            if self.fail_present {
                return Err(ProviderError::Api {
                    provider: "recorder",
                    message: "down".into(),
                    retryable: true,
                });
            }
            self.log
                .lock()
                .unwrap()
                .push(format!("present {} {}", rec.fqdn, rec.value));
            Ok(RecordHandle::id(format!("id-{}", rec.value)))
        }
        async fn cleanup(
            &self,
            rec: &TxtRecord,
            handle: RecordHandle,
        ) -> Result<(), ProviderError> {
            self.log
                .lock()
                .unwrap()
                .push(format!("cleanup {} {:?}", rec.fqdn, handle.id));
            Ok(())
        }
    }

    fn ctx(id: &str, wildcard: bool, ka: &str) -> ChallengeCtx {
        ChallengeCtx {
            cert_name: "www".into(),
            identifier: id.into(),
            is_ip: false,
            wildcard,
            kind: ChallengeKind::Dns01,
            token: "tok".into(),
            key_authorization: ka.into(),
            persist: None,
        }
    }

    /// A loopback DNS "server" that answers every query REFUSED at once: lookups fail fast and
    /// the solver falls back to the plain challenge name with no zone.
    async fn refusing_server() -> std::net::SocketAddr {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                if n < 12 {
                    continue;
                }
                let mut reply = buf[..n].to_vec();
                reply[2] |= 0x80; // QR: response
                reply[3] = (reply[3] & 0xF0) | 5; // RCODE REFUSED
                let _ = sock.send_to(&reply, from).await;
            }
        });
        addr
    }

    async fn offline() -> PropagationConfig {
        PropagationConfig {
            check: false,
            nameservers: vec![refusing_server().await],
            ..PropagationConfig::default()
        }
    }

    #[tokio::test]
    async fn cleanup_deletes_exactly_what_present_created() {
        let rec = Arc::new(Recorder::default());
        let solver = Dns01Solver::new(rec.clone(), offline().await);
        let a = ctx("example.com", false, "a.b");
        let w = ctx("example.com", true, "c.d");
        // Cleanup before present: nothing happens.
        solver.cleanup(&a).await.unwrap();
        solver.present(&a).await.unwrap();
        solver.present(&w).await.unwrap();
        solver.cleanup(&w).await.unwrap();
        solver.cleanup(&w).await.unwrap(); // idempotent
        solver.cleanup(&a).await.unwrap();
        let log = rec.log.lock().unwrap().clone();
        assert_eq!(
            log,
            vec![
                format!("present _acme-challenge.example.com. {}", a.dns_txt_value()),
                format!("present _acme-challenge.example.com. {}", w.dns_txt_value()),
                format!(
                    "cleanup _acme-challenge.example.com. Some(\"id-{}\")",
                    w.dns_txt_value()
                ),
                format!(
                    "cleanup _acme-challenge.example.com. Some(\"id-{}\")",
                    a.dns_txt_value()
                ),
            ]
        );
    }

    #[tokio::test]
    async fn failed_present_gets_one_best_effort_cleanup() {
        let rec = Arc::new(Recorder {
            fail_present: true,
            ..Recorder::default()
        });
        let solver = Dns01Solver::new(rec.clone(), offline().await);
        let a = ctx("example.com", false, "a.b");
        let err = solver.present(&a).await.unwrap_err();
        assert!(err.retryable && err.message.contains("down"), "{err}");
        // wait refuses: there is nothing to wait for.
        let mut checking = offline().await;
        checking.check = true;
        let solver2 = Dns01Solver::new(rec.clone(), checking);
        assert!(solver2.present(&a).await.is_err());
        let w = solver2.wait(&a).await.unwrap_err();
        assert!(w.message.contains("no DNS-01 record was presented"), "{w}");
        solver.cleanup(&a).await.unwrap();
        solver.cleanup(&a).await.unwrap();
        // One best-effort delete by name and value (the record may exist after a lost answer),
        // none on the second cleanup; solver2 was not cleaned up.
        assert_eq!(
            *rec.log.lock().unwrap(),
            vec!["cleanup _acme-challenge.example.com. None".to_string()]
        );
    }

    #[test]
    fn secret_is_redacted_and_loaded() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, "c2VjcmV0\n").unwrap();
        assert_eq!(
            load_secret("x", "tsig_secret", Some(&p), None)
                .unwrap()
                .expose(),
            "c2VjcmV0"
        );
        let e = load_secret("x", "tsig_secret", None, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("set tsig_secret_file = \"/path/to/file\" or tsig_secret_env"),
            "{e}"
        );
    }
}
