//! Wiring: the long-lived runtime (accounts, solvers, the HTTP-01 token store, the state store), one
//! renewal pass over the configured certificates, and the daemon loop.

pub mod admin;
pub mod ari;
pub mod issue;
pub mod pass;
pub mod run;
pub mod watch;

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::Mutex;
use tracing::info;

use crate::acme::{self, AcmeError};
use crate::challenge::dns01::Dns01Solver;
use crate::challenge::http01::{Http01Solver, TokenStore};
use crate::challenge::{ChallengeKind, SolveError, Solver};
use crate::config::{Config, IssuerConfig, SolverKind};
use crate::store::{self, StateStore, StoreError};

/// A certificate could not be issued this time.
///
/// `Display` is the whole message for the administrator: what failed, what the CA or the solver saw,
/// and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct IssueError {
    /// Plain-words description, including the CA's problem document and advice where there was one.
    pub message: String,
    /// Trying again later may succeed without a config change.
    pub retryable: bool,
    /// The next issuer in a fallback list should be tried (the CA is unreachable or refused for good).
    pub fall_back: bool,
    /// The CA asked not to retry before this time (Retry-After, rateLimited).
    pub retry_after: Option<jiff::Timestamp>,
    /// The CA's problem document behind the failure, when there was one (for `certkeeper explain`).
    pub problem: Option<Box<acme::Problem>>,
}

impl IssueError {
    /// A failure that needs a config change.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
            fall_back: true,
            retry_after: None,
            problem: None,
        }
    }

    /// A failure that may pass later.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
            fall_back: false,
            retry_after: None,
            problem: None,
        }
    }

    /// A bug or an environment problem on this host (key generation, encoding).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::retryable(message)
    }

    /// Classify an error of the protocol layer.
    pub fn from_acme(e: AcmeError, issuer: &IssuerConfig) -> Self {
        let retryable = e.is_retryable();
        Self {
            fall_back: !retryable || e.is_unreachable(),
            retry_after: e.retry_after(),
            problem: e.problem().cloned().map(Box::new),
            message: format!("issuer {}: {e}", issuer.name),
            retryable,
        }
    }

    /// Classify a solver failure.
    pub fn from_solve(e: SolveError) -> Self {
        Self {
            retryable: e.retryable,
            fall_back: false,
            retry_after: None,
            problem: None,
            message: e.message,
        }
    }

    /// Classify a store failure (disk full, permissions): retryable, the same CA is not to blame.
    pub fn from_store(e: StoreError) -> Self {
        Self::retryable(e.to_string())
    }
}

/// What stays alive across renewal passes and config reloads.
pub struct Runtime {
    /// The validated configuration this runtime serves.
    pub config: Arc<Config>,
    /// Accounts, per-certificate state, locks.
    pub state: StateStore,
    /// HTTP-01 key authorizations served by the listener.
    pub tokens: TokenStore,
    /// Cancelled to interrupt in-flight orders (Ctrl-C on `renew`, a shutdown past its grace time):
    /// challenges stop waiting and their cleanup (TXT records, HTTP-01 tokens) still runs.
    pub interrupt: tokio_util::sync::CancellationToken,
    accounts: Mutex<HashMap<String, acme::Account>>,
    solvers: std::sync::Mutex<HashMap<(String, usize), Arc<dyn Solver>>>,
}

impl Runtime {
    /// A runtime for `config`, sharing `tokens` with an HTTP-01 listener that may already run.
    pub fn new(config: Arc<Config>, tokens: TokenStore) -> Result<Self, StoreError> {
        let state = StateStore::open(&config.state_dir)?;
        Ok(Self {
            config,
            state,
            tokens,
            interrupt: tokio_util::sync::CancellationToken::new(),
            accounts: Mutex::new(HashMap::new()),
            solvers: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// A protocol client for `issuer`'s directory, trusting its `ca_bundle` in addition to the system roots.
    pub async fn client(&self, issuer: &IssuerConfig) -> Result<acme::Client, IssueError> {
        let roots = match &issuer.ca_bundle {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    IssueError::permanent(format!(
                        "issuer {}: cannot read ca_bundle {}: {e}",
                        issuer.name,
                        path.display()
                    ))
                })?;
                openssl::x509::X509::stack_from_pem(&pem).map_err(|e| {
                    IssueError::permanent(format!(
                        "issuer {}: ca_bundle {} holds no PEM certificate: {e}",
                        issuer.name,
                        path.display()
                    ))
                })?
            }
            None => Vec::new(),
        };
        acme::Client::new(&issuer.directory, &roots, USER_AGENT)
            .await
            .map_err(|e| {
                // With a ca_bundle configured, a TLS failure means that file is the wrong one: name it.
                let bundle_msg = match (&e, &issuer.ca_bundle) {
                    (AcmeError::Tls { url, message }, Some(bundle)) => Some(format!(
                        "issuer {}: the CA's TLS certificate at {url} does not verify against ca_bundle {}: {message}; check that this file holds the root (or intermediate) that signed the CA's TLS certificate (`openssl s_client -connect HOST:PORT -CAfile {}` shows the chain)",
                        issuer.name,
                        bundle.display(),
                        bundle.display()
                    )),
                    _ => None,
                };
                let mut err = IssueError::from_acme(e, issuer);
                if let Some(m) = bundle_msg {
                    err.message = m;
                }
                err
            })
    }

    /// Finish or undo an account key rollover that was interrupted between staging the new key
    /// (`key.next.pem`) and switching to it: the CA is asked whether it knows an account for the new
    /// key (`onlyReturnExisting`); if so the new key becomes the account key, otherwise it is dropped.
    /// When the CA cannot be asked, nothing is decided and the error is returned.
    pub async fn resolve_rollover(
        &self,
        client: &acme::Client,
        issuer: &IssuerConfig,
        id: &str,
    ) -> Result<(), IssueError> {
        let Some(next_pem) = self
            .state
            .load_next_account_key(id)
            .map_err(IssueError::from_store)?
        else {
            return Ok(());
        };
        // A rollover running right now (another process) holds the account lock; deciding now could
        // drop the key the CA is about to switch to. Leave it to that process.
        let _lock = match self.state.lock_account(id) {
            Ok(lock) => lock,
            Err(StoreError::Locked { .. }) => {
                info!(issuer = %issuer.name, "an account key rollover is in progress in another process");
                return Ok(());
            }
            Err(e) => return Err(IssueError::from_store(e)),
        };
        let next = match acme::AccountKey::from_pem(next_pem.as_bytes()) {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(issuer = %issuer.name, error = %e, "unreadable staged rollover key; dropping it (the CA cannot have switched to a key it never saw in full)");
                return self
                    .state
                    .discard_next_account_key(id)
                    .map_err(IssueError::from_store);
            }
        };
        match acme::Account::find_existing(client, next).await {
            Ok(Some(account)) => {
                self.state
                    .promote_next_account_key(id)
                    .map_err(IssueError::from_store)?;
                info!(issuer = %issuer.name, account = %account.url(), "an interrupted key rollover had reached the CA; the new account key is now in use");
                Ok(())
            }
            Ok(None) => {
                self.state
                    .discard_next_account_key(id)
                    .map_err(IssueError::from_store)?;
                info!(issuer = %issuer.name, "an interrupted key rollover never reached the CA; keeping the old account key");
                Ok(())
            }
            Err(e) => {
                let mut err = IssueError::from_acme(e, issuer);
                err.message = format!(
                    "{}: a key rollover was interrupted and the CA could not be asked which key it knows; try again when the CA is reachable",
                    err.message
                );
                Err(err)
            }
        }
    }

    /// The account at `issuer`, registered on first use and cached for the life of the runtime.
    ///
    /// The account key is written to the state directory before the CA sees it, so a crash during
    /// registration finds the same account again (`onlyReturnExisting`) instead of stranding it.
    pub async fn account(&self, issuer: &IssuerConfig) -> Result<acme::Account, IssueError> {
        let mut accounts = self.accounts.lock().await;
        if let Some(a) = accounts.get(&issuer.name) {
            return Ok(a.clone());
        }
        let client = self.client(issuer).await?;
        let id = store::account_id(&issuer.name, &issuer.directory);
        self.resolve_rollover(&client, issuer, &id).await?;
        let stored = self
            .state
            .load_account(&id)
            .map_err(IssueError::from_store)?;
        let known = stored.as_ref().and_then(|s| s.record.as_ref()).is_some();
        let key = match stored {
            Some(stored) => acme::AccountKey::from_pem(stored.key_pem.as_bytes()).map_err(|e| {
                IssueError::permanent(format!(
                    "issuer {}: the stored account key in {} is unreadable: {e}",
                    issuer.name,
                    self.state.root().display()
                ))
            })?,
            None => {
                let key = acme::AccountKey::generate(issuer.account_key).map_err(|e| {
                    IssueError::internal(format!("generating the account key: {e}"))
                })?;
                let pem = key
                    .to_pem()
                    .map_err(|e| IssueError::internal(format!("encoding the account key: {e}")))?;
                let pem = String::from_utf8(pem)
                    .map_err(|e| IssueError::internal(format!("encoding the account key: {e}")))?;
                // Stored before the CA sees it: a crash during registration finds the same account again.
                self.state
                    .save_account_key(&id, &pem)
                    .map_err(IssueError::from_store)?;
                key
            }
        };
        let eab = match &issuer.eab {
            Some(e) => Some(acme::Eab {
                kid: e.kid.clone(),
                hmac_key: decode_eab_key(e.hmac_key.expose()).map_err(|m| {
                    IssueError::permanent(format!("issuer {}: eab.hmac_key: {m}", issuer.name))
                })?,
            }),
            None => None,
        };
        let account =
            acme::Account::find_or_create(&client, key, &issuer.contact, eab.as_ref(), true)
                .await
                .map_err(|e| IssueError::from_acme(e, issuer))?;
        if !known {
            let record = store::AccountRecord {
                url: account.url().to_string(),
                directory: issuer.directory.clone(),
                contact: issuer.contact.clone(),
                created: jiff::Timestamp::now(),
            };
            self.state
                .save_account_record(&id, &record)
                .map_err(IssueError::from_store)?;
        }
        info!(issuer = %issuer.name, account = %account.url(), "account ready");
        accounts.insert(issuer.name.clone(), account.clone());
        Ok(account)
    }

    /// The solver the issuer configures for one identifier, built once and reused.
    pub fn solver_for(
        &self,
        issuer: &IssuerConfig,
        name: &str,
        wildcard: bool,
        is_ip: bool,
    ) -> Result<(Arc<dyn Solver>, ChallengeKind), IssueError> {
        let Some(chosen) = issuer.solver_for(name, wildcard) else {
            let what = if wildcard {
                format!("*.{name}")
            } else {
                name.to_string()
            };
            let hint = if wildcard {
                "wildcards can only be proven with DNS-01: add a [[issuer.X.solver]] with dns01 whose selector covers it"
            } else {
                "add a [[issuer.X.solver]] whose selector covers it (or one without a selector)"
            };
            return Err(IssueError::permanent(format!(
                "issuer {}: no solver for {what}: {hint}",
                issuer.name
            )));
        };
        if is_ip
            && !matches!(
                chosen.kind,
                SolverKind::Http01 { .. } | SolverKind::Webroot { .. }
            )
        {
            return Err(IssueError::permanent(format!(
                "issuer {}: {name} is an IP address, which only HTTP-01 can prove",
                issuer.name
            )));
        }
        let index = issuer
            .solvers
            .iter()
            .position(|s| std::ptr::eq(s, chosen))
            .unwrap_or(0);
        let key = (issuer.name.clone(), index);
        let mut solvers = self.solvers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = solvers.get(&key) {
            return Ok((s.clone(), s.kind()));
        }
        let solver: Arc<dyn Solver> = match &chosen.kind {
            SolverKind::Http01 {
                self_check,
                self_check_target,
            } => {
                let mut s = Http01Solver::new(self.tokens.clone(), false);
                if *self_check {
                    s = s.with_self_check(
                        self_check_target.clone(),
                        self.config.http01.listen.clone(),
                    );
                }
                Arc::new(s)
            }
            SolverKind::Webroot {
                path,
                self_check,
                self_check_target,
            } => {
                let mut s = crate::challenge::webroot::WebrootSolver::new(path.clone());
                if *self_check {
                    s = s.with_self_check(self_check_target.clone());
                }
                Arc::new(s)
            }
            SolverKind::TlsAlpn01 { listen } => {
                Arc::new(crate::challenge::tlsalpn01::TlsAlpn01Solver::new(*listen))
            }
            SolverKind::Dns01 {
                provider,
                propagation,
            } => {
                let p = provider
                    .build()
                    .map_err(|e| IssueError::permanent(format!("issuer {}: {e}", issuer.name)))?;
                Arc::new(Dns01Solver::new(p, propagation.clone()))
            }
        };
        solvers.insert(key, solver.clone());
        Ok((solver.clone(), solver.kind()))
    }
}

/// Where `certkeeper renew` publishes HTTP-01 tokens for the running daemon's listener.
pub fn http01_spool(cfg: &Config) -> std::path::PathBuf {
    cfg.state_dir.join("http01")
}

/// Sent with every request to the CA.
pub const USER_AGENT: &str = concat!("certkeeper/", env!("CARGO_PKG_VERSION"));

/// Decode an EAB HMAC key as CAs hand it out: base64url without padding (RFC 8555 §7.3.4), but
/// padded or standard base64 is accepted too, since that is what people paste.
pub fn decode_eab_key(text: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let t = text.trim();
    let unpadded = t.trim_end_matches('=');
    URL_SAFE_NO_PAD
        .decode(unpadded)
        .or_else(|_| STANDARD.decode(t))
        .map_err(|_| "not a base64url key as the CA gives it (e.g. \"zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W\")".to_string())
        .and_then(|k| if k.is_empty() { Err("the key is empty".to_string()) } else { Ok(k) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eab_keys_decode_in_every_form_people_paste() {
        let raw = b"\xfb\xff\x00secret-bytes";
        use base64::Engine as _;
        for enc in [
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw),
            base64::engine::general_purpose::URL_SAFE.encode(raw),
            base64::engine::general_purpose::STANDARD.encode(raw),
        ] {
            assert_eq!(
                decode_eab_key(&format!("{enc}\n")).unwrap(),
                raw.to_vec(),
                "{enc}"
            );
        }
        assert!(
            decode_eab_key("not base64 !!")
                .unwrap_err()
                .contains("base64url")
        );
        assert!(decode_eab_key("").is_err());
    }
}
