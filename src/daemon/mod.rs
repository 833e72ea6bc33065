//! Wiring: the long-lived runtime (accounts, solvers, the HTTP-01 token store, the state store), one
//! renewal pass over the configured certificates, and the daemon loop.

pub mod issue;
pub mod pass;
pub mod run;

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::acme::{self, AcmeError};
use crate::challenge::dns01::Dns01Solver;
use crate::challenge::http01::{Http01Solver, TokenStore};
use crate::challenge::{ChallengeKind, SolveError, Solver};
use crate::config::{CertificateConfig, Config, IssuerConfig, SolverKind};
use crate::store::{self, OutputSpec, StateStore, StoreError};

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
}

impl IssueError {
    /// A failure that needs a config change.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self { message: message.into(), retryable: false, fall_back: true, retry_after: None }
    }

    /// A failure that may pass later.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self { message: message.into(), retryable: true, fall_back: false, retry_after: None }
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
            message: format!("issuer {}: {e}", issuer.name),
            retryable,
        }
    }

    /// Classify a solver failure.
    pub fn from_solve(e: SolveError) -> Self {
        Self { retryable: e.retryable, fall_back: false, retry_after: None, message: e.message }
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
            accounts: Mutex::new(HashMap::new()),
            solvers: std::sync::Mutex::new(HashMap::new()),
        })
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
        let roots = match &issuer.ca_bundle {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    IssueError::permanent(format!("issuer {}: cannot read ca_bundle {}: {e}", issuer.name, path.display()))
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
        let client = acme::Client::new(&issuer.directory, &roots, USER_AGENT)
            .await
            .map_err(|e| IssueError::from_acme(e, issuer))?;
        let id = account_id(issuer);
        let key = match self.state.load_account_key(&id).map_err(IssueError::from_store)? {
            Some(pem) => acme::AccountKey::from_pem(&pem)
                .map_err(|e| IssueError::permanent(format!("issuer {}: the stored account key is unreadable: {e}", issuer.name)))?,
            None => {
                let key = acme::AccountKey::generate(issuer.account_key)
                    .map_err(|e| IssueError::internal(format!("generating the account key: {e}")))?;
                let pem = key.to_pem().map_err(|e| IssueError::internal(format!("encoding the account key: {e}")))?;
                self.state.save_account_key(&id, &pem).map_err(IssueError::from_store)?;
                key
            }
        };
        let eab = issuer.eab.as_ref().map(|e| acme::Eab { kid: e.kid.clone(), hmac_key: e.hmac_key.expose().to_vec() });
        let account = acme::Account::find_or_create(client, key, &issuer.contact, eab.as_ref(), true)
            .await
            .map_err(|e| IssueError::from_acme(e, issuer))?;
        self.state
            .save_account_record(&id, &store::AccountRecord::new(account.url(), &issuer.directory, &issuer.contact))
            .map_err(IssueError::from_store)?;
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
            let what = if wildcard { format!("*.{name}") } else { name.to_string() };
            let hint = if wildcard {
                "wildcards can only be proven with DNS-01: add a [[issuer.X.solver]] with dns01 whose selector covers it"
            } else {
                "add a [[issuer.X.solver]] whose selector covers it (or one without a selector)"
            };
            return Err(IssueError::permanent(format!("issuer {}: no solver for {what}: {hint}", issuer.name)));
        };
        if is_ip && !matches!(chosen.kind, SolverKind::Http01 { .. } | SolverKind::Webroot { .. }) {
            return Err(IssueError::permanent(format!(
                "issuer {}: {name} is an IP address, which only HTTP-01 can prove",
                issuer.name
            )));
        }
        let index = issuer.solvers.iter().position(|s| std::ptr::eq(s, chosen)).unwrap_or(0);
        let key = (issuer.name.clone(), index);
        let mut solvers = self.solvers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = solvers.get(&key) {
            return Ok((s.clone(), s.kind()));
        }
        let solver: Arc<dyn Solver> = match &chosen.kind {
            SolverKind::Http01 { self_check } => Arc::new(Http01Solver::new(self.tokens.clone(), *self_check)),
            SolverKind::Webroot { path } => Arc::new(crate::challenge::webroot::WebrootSolver::new(path.clone())),
            SolverKind::Dns01 { provider, propagation } => {
                let p = provider.build().map_err(|e| IssueError::permanent(format!("issuer {}: {e}", issuer.name)))?;
                Arc::new(Dns01Solver::new(p, propagation.clone()))
            }
        };
        solvers.insert(key, solver.clone());
        Ok((solver.clone(), solver.kind()))
    }

    /// Where and how a certificate's files are written.
    pub fn output_spec(&self, cert: &CertificateConfig) -> Result<OutputSpec, IssueError> {
        Ok(OutputSpec {
            dir: cert.output.dir.clone(),
            owner: cert.output.owner.clone(),
            group: cert.output.group.clone(),
            key_mode: cert.output.key_mode,
            cert_mode: cert.output.cert_mode,
        })
    }
}

/// Sent with every request to the CA.
pub const USER_AGENT: &str = concat!("certkeeper/", env!("CARGO_PKG_VERSION"));

/// The state-directory name of an issuer's account: the issuer name plus a short hash of the
/// directory URL, so that pointing an issuer at another CA never reuses the other CA's account.
pub fn account_id(issuer: &IssuerConfig) -> String {
    let digest = openssl::sha::sha256(issuer.directory.as_bytes());
    let short: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    let safe: String = issuer
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .collect();
    format!("{safe}-{short}")
}

#[allow(dead_code)]
fn _unused() {
    warn!("");
}
