//! The runtime shared by the CLI and the daemon: the configuration, the ledger and the account
//! store, the TLS client per CA, the accounts (registered once and cached), and the solvers (built
//! once and reused).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::Mutex;
use tracing::info;

use crate::acme::{self, AcmeError};
use crate::challenge::dns01::Dns01Solver;
use crate::challenge::http01::{Http01Solver, TokenStore};
use crate::challenge::{ChallengeKind, IdentifierKind, SolveError, Solver};
use crate::config::{Config, IssuerConfig, SolverKind, StorageConfig};
use crate::store::postgres::{PgOptions, PgStorage};
use crate::store::{self, AccountStore, FileStorage, Ledger, Storage, StoreError};

use super::error::IssueError;

/// What stays alive across renewal passes and config reloads.
pub struct Runtime {
    /// The validated configuration this runtime serves.
    pub config: Arc<Config>,
    /// The certificates' state and installed pairs.
    pub ledger: Ledger,
    /// The ACME accounts.
    pub accounts: AccountStore,
    /// HTTP-01 key authorizations served by the listener.
    pub tokens: TokenStore,
    /// Cancelled to interrupt in-flight orders (Ctrl-C on `renew`, a shutdown past its grace time):
    /// challenges stop waiting and their cleanup (TXT records, HTTP-01 tokens) still runs.
    pub interrupt: tokio_util::sync::CancellationToken,
    account_cache: Mutex<HashMap<String, acme::Account>>,
    solvers: std::sync::Mutex<HashMap<(String, usize), Arc<dyn Solver>>>,
}

/// Open the storage of `config` for a process that changes state: the state directory (created
/// when missing), or the fleet's PostgreSQL database (its schema created or migrated on the first
/// call; a database that is down is retried call by call, it does not stop the start).
pub fn open_storage(config: &Config) -> Result<Arc<dyn Storage>, StoreError> {
    match &config.storage {
        StorageConfig::File => Ok(Arc::new(FileStorage::open(&config.state_dir)?)),
        StorageConfig::Postgres(pg) => Ok(Arc::new(PgStorage::open(PgOptions::from_config(pg))?)),
    }
}

/// The ledger of `config` over `storage` (from [`open_storage`]): this host's own, or this node's
/// view of the fleet's.
pub fn ledger(config: &Config, storage: Arc<dyn Storage>) -> Result<Ledger, StoreError> {
    match &config.storage {
        StorageConfig::File => Ok(Ledger::new(storage)),
        StorageConfig::Postgres(pg) => Ledger::shared(storage, &pg.node),
    }
}

/// The ledger of `config` for reading only (`status`, `explain`): nothing is created or changed
/// (with PostgreSQL, the schema is not created or migrated either).
pub fn read_only_ledger(config: &Config) -> Result<Ledger, StoreError> {
    let storage: Arc<dyn Storage> = match &config.storage {
        StorageConfig::File => Arc::new(FileStorage::open_read_only(&config.state_dir)),
        StorageConfig::Postgres(pg) => {
            let mut opts = PgOptions::from_config(pg);
            opts.migrate = false;
            Arc::new(PgStorage::open(opts)?)
        }
    };
    ledger(config, storage).map(Ledger::read_only)
}

impl Runtime {
    /// A runtime for `config`, sharing `tokens` with an HTTP-01 listener that may already run.
    pub fn new(config: Arc<Config>, tokens: TokenStore) -> Result<Self, StoreError> {
        let storage = open_storage(&config)?;
        Ok(Self {
            ledger: ledger(&config, storage.clone())?,
            config,
            accounts: AccountStore::new(storage),
            tokens,
            interrupt: tokio_util::sync::CancellationToken::new(),
            account_cache: Mutex::new(HashMap::new()),
            solvers: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// A protocol client for `issuer`'s directory, trusting its `ca_bundle` in addition to the system roots.
    pub async fn client(&self, issuer: &IssuerConfig) -> Result<acme::Client, IssueError> {
        let roots = match &issuer.ca_bundle {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    IssueError::config(format!("cannot read ca_bundle {}: {e}", path.display()))
                })?;
                openssl::x509::X509::stack_from_pem(&pem).map_err(|e| {
                    IssueError::config(format!(
                        "ca_bundle {} holds no PEM certificate: {e}",
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
                let bundle = match (&e, &issuer.ca_bundle) {
                    (AcmeError::Tls { .. }, Some(bundle)) => Some(bundle.display().to_string()),
                    _ => None,
                };
                let err = IssueError::new(e);
                match bundle {
                    Some(b) => err.context(format!(
                        "ca_bundle {b} does not verify the CA's TLS certificate: check that this file holds the root (or intermediate) that signed it (`openssl s_client -connect HOST:PORT -CAfile {b}` shows the chain)"
                    )),
                    None => err,
                }
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
        let Some(next_pem) = self.accounts.load_next_key(id)? else {
            return Ok(());
        };
        // A rollover running right now (another process) holds the account lock; deciding now could
        // drop the key the CA is about to switch to. Leave it to that process.
        let _lock = match self.accounts.lock(id) {
            Ok(lock) => lock,
            Err(StoreError::Locked { .. }) => {
                info!(issuer = %issuer.name, "an account key rollover is in progress in another process");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let next = match acme::AccountKey::from_pem(next_pem.as_bytes()) {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(issuer = %issuer.name, error = %e, "unreadable staged rollover key; dropping it (the CA cannot have switched to a key it never saw in full)");
                return Ok(self.accounts.discard_next_key(id)?);
            }
        };
        match acme::Account::find_existing(client, next).await {
            Ok(Some(account)) => {
                self.accounts.promote_next_key(id)?;
                info!(issuer = %issuer.name, account = %account.url(), "an interrupted key rollover had reached the CA; the new account key is now in use");
                Ok(())
            }
            Ok(None) => {
                self.accounts.discard_next_key(id)?;
                info!(issuer = %issuer.name, "an interrupted key rollover never reached the CA; keeping the old account key");
                Ok(())
            }
            Err(e) => Err(IssueError::new(e).context(
                "a key rollover was interrupted and the CA could not be asked which key it knows; it is decided when the CA is reachable",
            )),
        }
    }

    /// The account at `issuer`, registered on first use and cached for the life of the runtime.
    ///
    /// The account key is written to storage before the CA sees it, so a crash during registration
    /// finds the same account again (`onlyReturnExisting`) instead of stranding it.
    pub async fn account(&self, issuer: &IssuerConfig) -> Result<acme::Account, IssueError> {
        let mut accounts = self.account_cache.lock().await;
        if let Some(a) = accounts.get(&issuer.name) {
            return Ok(a.clone());
        }
        let client = self.client(issuer).await?;
        let id = store::account_id(&issuer.name, &issuer.directory);
        self.resolve_rollover(&client, issuer, &id).await?;
        let mut stored = self.accounts.load(&id)?;
        let mut known = stored.as_ref().and_then(|s| s.record.as_ref()).is_some();
        // Registering: another process or node sharing the store may be registering the same
        // account right now; wait for it and use what it registered.
        let _registering = if known {
            None
        } else {
            let lock = self.accounts.lock_wait(&id)?;
            stored = self.accounts.load(&id)?;
            known = stored.as_ref().and_then(|s| s.record.as_ref()).is_some();
            Some(lock)
        };
        let key = match stored {
            Some(stored) => acme::AccountKey::from_pem(stored.key_pem.as_bytes()).map_err(|e| {
                IssueError::internal(format!(
                    "the stored account key in {} is unreadable: {e}; move that directory aside to register a new account",
                    self.accounts.describe(&id)
                ))
            })?,
            None => {
                let key = acme::AccountKey::generate(issuer.account_key).map_err(|e| {
                    IssueError::internal(format!("generating the account key: {e}"))
                })?;
                let pem = key
                    .to_pem()
                    .ok()
                    .and_then(|pem| String::from_utf8(pem).ok())
                    .ok_or_else(|| IssueError::internal("encoding the account key"))?;
                // Stored before the CA sees it: a crash during registration finds the same account again.
                self.accounts.save_key(&id, &pem)?;
                key
            }
        };
        let eab = match &issuer.eab {
            Some(e) => Some(acme::Eab {
                kid: e.kid.clone(),
                hmac_key: decode_eab_key(e.hmac_key.expose())
                    .map_err(|m| IssueError::config(format!("eab.hmac_key: {m}")))?,
            }),
            None => None,
        };
        let account =
            acme::Account::find_or_create(&client, key, &issuer.contact, eab.as_ref(), true)
                .await?;
        if !known {
            let record = store::AccountRecord {
                url: account.url().to_string(),
                directory: issuer.directory.clone(),
                contact: issuer.contact.clone(),
                created: jiff::Timestamp::now(),
            };
            self.accounts.save_record(&id, &record)?;
        }
        info!(issuer = %issuer.name, account = %account.url(), "account ready");
        accounts.insert(issuer.name.clone(), account.clone());
        Ok(account)
    }

    /// The solver the issuer configures for one identifier, built once and reused.
    ///
    /// Which solver may answer which identifier is decided by the config's one rule
    /// ([`IssuerConfig::solver_for`], which follows [`ChallengeKind::can_prove`]); a provider
    /// that cannot be built now (a secret file missing) is a solver failure, retried with backoff,
    /// and built again at the next attempt.
    pub fn solver_for(
        &self,
        issuer: &IssuerConfig,
        name: &str,
        kind: IdentifierKind,
    ) -> Result<(Arc<dyn Solver>, ChallengeKind), IssueError> {
        let Some(chosen) = issuer.solver_for(name, kind) else {
            let what = if kind == IdentifierKind::Wildcard {
                format!("*.{name}")
            } else {
                name.to_string()
            };
            let can = SolverKind::keys_that_can_prove(kind).join(", ");
            return Err(IssueError::config(format!(
                "no solver of issuer {} can prove the {} {what}: add a [[issuer.{}.solver]] of a kind that can ({can}) whose selector covers it",
                issuer.name,
                kind.describe(),
                issuer.name
            )));
        };
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
                    .map_err(|e| IssueError::new(SolveError::retryable(e.to_string())))?;
                Arc::new(
                    Dns01Solver::new(p, propagation.clone())
                        .with_resolvers(self.config.dns01.resolvers.clone()),
                )
            }
            SolverKind::DnsPersist01 {
                issuer_domain,
                propagation,
            } => Arc::new(crate::challenge::dnspersist01::DnsPersist01Solver::new(
                issuer_domain,
                propagation.clone(),
            )),
        };
        solvers.insert(key, solver.clone());
        Ok((solver.clone(), solver.kind()))
    }
}

/// Where `certkeeper renew` publishes HTTP-01 tokens for the running daemon's listener.
pub fn http01_spool(cfg: &Config) -> std::path::PathBuf {
    cfg.state_dir.join("http01")
}

/// True when some issuer has an `http01` solver (answered by certkeeper's own listener).
pub fn uses_http01_listener(cfg: &Config) -> bool {
    cfg.issuers.values().any(|i| {
        i.solvers
            .iter()
            .any(|s| matches!(s.kind, SolverKind::Http01 { .. }))
    })
}

/// In a fleet whose issuers answer HTTP-01, the tokens every node answers (their own connection
/// to the database, opened in the background); `None` on the file backend or without an `http01`
/// solver. Must be called inside a tokio runtime.
pub fn fleet_tokens(
    cfg: &Config,
) -> Result<Option<Arc<dyn crate::challenge::http01::SharedTokens>>, StoreError> {
    match &cfg.storage {
        StorageConfig::File => Ok(None),
        StorageConfig::Postgres(_) if !uses_http01_listener(cfg) => Ok(None),
        StorageConfig::Postgres(pg) => {
            let tokens = crate::store::postgres::PgTokens::start(&PgOptions::from_config(pg))?;
            Ok(Some(tokens))
        }
    }
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

    /// A provider secret file missing at issuance is a solver failure (retried with backoff), not a
    /// config error, and the solver is built once the file is there.
    #[test]
    fn missing_provider_secret_is_a_retryable_solver_error() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let text = format!(
            "state_dir = {state:?}\n\
             [issuer.le]\ndirectory = \"https://127.0.0.1:14000/dir\"\n\
             [[issuer.le.solver]]\ndns01 = {{ provider = \"cloudflare\", api_token_file = \"cf.token\" }}\n\
             [certificate.www]\ndomains = [\"*.example.com\"]\noutput = {{ dir = {out:?} }}\n",
            state = d.join("state").display().to_string(),
            out = d.join("out").display().to_string(),
        );
        let cfg = Config::from_str(&text, &d.join("certkeeper.toml")).unwrap();
        let rt = Runtime::new(Arc::new(cfg.clone()), TokenStore::default()).unwrap();
        let issuer = &cfg.issuers["le"];
        let err = rt
            .solver_for(issuer, "example.com", IdentifierKind::Wildcard)
            .err()
            .unwrap();
        assert!(
            matches!(err.cause(), super::super::error::Cause::Solver(e) if e.retryable),
            "{err}"
        );
        assert!(err.to_string().contains("cf.token"), "{err}");
        std::fs::write(d.join("cf.token"), "t\n").unwrap();
        let (_, kind) = rt
            .solver_for(issuer, "example.com", IdentifierKind::Wildcard)
            .unwrap();
        assert_eq!(kind, ChallengeKind::Dns01);
    }

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
