//! `certkeeper account show|rollover|deactivate|update-contact --issuer NAME`: manage the ACME account
//! certkeeper holds at one issuer.
//!
//! Key rollover (RFC 8555 §7.3.5) is crash-safe: the new key is written to `key.next.pem` before the CA
//! is asked to switch, and moved over `key.pem` after. A crash in between leaves `key.next.pem`, which
//! the next command (or the daemon) resolves by asking the CA which key it knows
//! ([`Runtime::resolve_rollover`]).

use std::fmt;

use tracing::{info, warn};

use crate::acme::{self, AccountKey, KeyType};
use crate::config::IssuerConfig;
use crate::engine::{IssueError, Runtime};
use crate::store::{self, StoreError};

/// Environment variable for crash tests: when it names a step (`rollover-after-keychange`), the
/// process aborts right there, as a power cut would.
#[cfg(feature = "test-hooks")]
pub const CRASH_AT_ENV: &str = "CERTKEEPER_TEST_CRASH_AT";

/// The account as the CA and the state directory know it.
#[derive(Clone, Debug)]
pub struct AccountInfo {
    /// The issuer's config name.
    pub issuer: String,
    /// The ACME directory URL.
    pub directory: String,
    /// The account URL.
    pub url: String,
    /// The account status the CA reports (`valid`, `deactivated`, `revoked`); empty when not reported.
    pub status: String,
    /// The contact URLs the CA has.
    pub contact: Vec<String>,
    /// The account key type.
    pub key_type: KeyType,
    /// The RFC 7638 thumbprint of the account's public key (not secret).
    pub thumbprint: String,
}

impl fmt::Display for AccountInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "issuer:     {}", self.issuer)?;
        writeln!(f, "directory:  {}", self.directory)?;
        writeln!(f, "account:    {}", self.url)?;
        writeln!(
            f,
            "status:     {}",
            if self.status.is_empty() {
                "(not reported)"
            } else {
                &self.status
            }
        )?;
        writeln!(
            f,
            "contact:    {}",
            if self.contact.is_empty() {
                "(none)".to_string()
            } else {
                self.contact.join(", ")
            }
        )?;
        writeln!(f, "key:        {}", self.key_type)?;
        write!(f, "thumbprint: {}", self.thumbprint)
    }
}

/// Why an account command failed.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// The issuer is not configured.
    #[error("no issuer named {name:?} in the config (known: {known})")]
    UnknownIssuer {
        /// The name asked for.
        name: String,
        /// The configured issuers, comma-separated.
        known: String,
    },
    /// No account was ever registered at the issuer.
    #[error(
        "issuer {issuer}: no account registered yet; it is created on the first `certkeeper renew` (or by the daemon)"
    )]
    NoAccount {
        /// The issuer's name.
        issuer: String,
    },
    /// Deactivation is irreversible and was not confirmed.
    #[error(
        "issuer {issuer}: deactivating an account cannot be undone; add --yes to confirm (the next renewal then registers a new account)"
    )]
    NotConfirmed {
        /// The issuer's name.
        issuer: String,
    },
    /// The account could not be loaded, or the CA refused or could not be reached.
    #[error("{0}")]
    Issue(#[from] IssueError),
    /// The CA refused the request.
    #[error("issuer {issuer}: {what} failed: {source}")]
    Acme {
        /// The issuer's name.
        issuer: String,
        /// The operation.
        what: &'static str,
        /// The protocol error.
        #[source]
        source: acme::AcmeError,
    },
    /// The state directory could not be read or written.
    #[error("issuer {issuer}: {source}")]
    Store {
        /// The issuer's name.
        issuer: String,
        /// The store error.
        #[source]
        source: StoreError,
    },
    /// Another process is rolling the account key over.
    #[error(
        "issuer {issuer}: another certkeeper process is rolling over this account's key; wait for it to finish"
    )]
    Busy {
        /// The issuer's name.
        issuer: String,
    },
    /// `persist-record` for an issuer without a dns_persist01 solver.
    #[error(
        "issuer {issuer}: no dns_persist01 solver configured: add [[issuer.{issuer}.solver]] with dns_persist01 = {{ issuer_domain = \"<the CA's issuer domain>\" }}"
    )]
    NoPersistSolver {
        /// The issuer's name.
        issuer: String,
    },
    /// A key could not be generated or encoded.
    #[error("issuer {issuer}: {message}")]
    Key {
        /// The issuer's name.
        issuer: String,
        /// What went wrong.
        message: String,
    },
}

fn issuer<'a>(rt: &'a Runtime, name: &str) -> Result<&'a IssuerConfig, AccountError> {
    rt.config
        .issuers
        .get(name)
        .ok_or_else(|| AccountError::UnknownIssuer {
            name: name.to_string(),
            known: rt
                .config
                .issuers
                .keys()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The account's id in the state directory, or [`AccountError::NoAccount`] when none was registered.
fn existing_id(rt: &Runtime, issuer: &IssuerConfig) -> Result<String, AccountError> {
    let id = store::account_id(&issuer.name, &issuer.directory);
    let stored = rt
        .accounts
        .load(&id)
        .map_err(|source| AccountError::Store {
            issuer: issuer.name.clone(),
            source,
        })?;
    match stored {
        Some(s) if s.record.is_some() => Ok(id),
        _ => Err(AccountError::NoAccount {
            issuer: issuer.name.clone(),
        }),
    }
}

fn info_of(issuer: &IssuerConfig, account: &acme::Account) -> AccountInfo {
    AccountInfo {
        issuer: issuer.name.clone(),
        directory: issuer.directory.clone(),
        url: account.url().to_string(),
        status: account.body().status.clone(),
        contact: account.body().contact.clone(),
        key_type: account.key().key_type(),
        thumbprint: account.key().thumbprint(),
    }
}

/// Show the account at `issuer_name` as the CA reports it (a side-effect-free lookup).
pub async fn show(rt: &Runtime, issuer_name: &str) -> Result<AccountInfo, AccountError> {
    let issuer = issuer(rt, issuer_name)?;
    existing_id(rt, issuer)?;
    let account = rt.account(issuer).await?;
    Ok(info_of(issuer, &account))
}

/// Roll the account over to a new key of the issuer's configured `account_key` type (so changing
/// `account_key` in the config and running this switches the key type too).
///
/// Order of steps: the new key is stored as `key.next.pem`; the CA is asked to switch (keyChange);
/// `key.next.pem` is renamed over `key.pem`. If the keyChange request fails, the CA is asked which key
/// it knows before anything is dropped, so an answer lost on the way back never strands the account.
pub async fn rollover(rt: &Runtime, issuer_name: &str) -> Result<AccountInfo, AccountError> {
    let issuer = issuer(rt, issuer_name)?;
    let id = existing_id(rt, issuer)?;
    let store_err = |source| AccountError::Store {
        issuer: issuer.name.clone(),
        source,
    };
    let key_err = |message: String| AccountError::Key {
        issuer: issuer.name.clone(),
        message,
    };
    // Loading the account first finishes or undoes an earlier interrupted rollover.
    let mut account = rt.account(issuer).await?;
    // Held until key.pem holds the new key: another process must neither start a second rollover nor
    // resolve our staged key.next.pem meanwhile.
    let _lock = rt.accounts.lock(&id).map_err(|e| match e {
        StoreError::Locked { .. } => AccountError::Busy {
            issuer: issuer.name.clone(),
        },
        other => store_err(other),
    })?;
    let new_key = AccountKey::generate(issuer.account_key)
        .map_err(|e| key_err(format!("generating the new account key: {e}")))?;
    let pem = new_key
        .to_pem()
        .map_err(|e| key_err(format!("encoding the new account key: {e}")))
        .and_then(|p| {
            String::from_utf8(p).map_err(|e| key_err(format!("encoding the new account key: {e}")))
        })?;
    rt.accounts.stage_next_key(&id, &pem).map_err(store_err)?;
    crash_point("rollover-after-stage");
    if let Err(e) = account.key_change(new_key).await {
        warn!(issuer = %issuer.name, error = %e, "key change failed; asking the CA which key it knows");
        let client = account.client().clone();
        rt.resolve_rollover(&client, issuer, &id).await?;
        return Err(AccountError::Acme {
            issuer: issuer.name.clone(),
            what: "the key change",
            source: e,
        });
    }
    crash_point("rollover-after-keychange");
    rt.accounts.promote_next_key(&id).map_err(store_err)?;
    info!(issuer = %issuer.name, account = %account.url(), key = %issuer.account_key, "account key rolled over");
    // Confirm with the CA that the new key is the one it knows.
    let client = account.client().clone();
    let confirmed = acme::Account::find_existing(&client, account.key().clone())
        .await
        .map_err(|source| AccountError::Acme {
            issuer: issuer.name.clone(),
            what: "looking up the account with the new key",
            source,
        })?
        .ok_or_else(|| {
            key_err("the CA accepted the key change but knows no account for the new key; report this to the CA".into())
        })?;
    Ok(info_of(issuer, &confirmed))
}

/// Replace the account's contact URLs; with an empty `contact`, the issuer's configured `contact`.
pub async fn update_contact(
    rt: &Runtime,
    issuer_name: &str,
    contact: &[String],
) -> Result<AccountInfo, AccountError> {
    let issuer = issuer(rt, issuer_name)?;
    let id = existing_id(rt, issuer)?;
    let contact: Vec<String> = if contact.is_empty() {
        issuer.contact.clone()
    } else {
        contact
            .iter()
            .map(|c| {
                if c.contains(':') {
                    c.clone()
                } else {
                    format!("mailto:{c}")
                }
            })
            .collect()
    };
    let mut account = rt.account(issuer).await?;
    account
        .update_contact(&contact)
        .await
        .map_err(|source| AccountError::Acme {
            issuer: issuer.name.clone(),
            what: "the contact update",
            source,
        })?;
    let store_err = |source| AccountError::Store {
        issuer: issuer.name.clone(),
        source,
    };
    if let Some(mut record) = rt
        .accounts
        .load(&id)
        .map_err(store_err)?
        .and_then(|s| s.record)
    {
        record.contact = contact.clone();
        rt.accounts.save_record(&id, &record).map_err(store_err)?;
    }
    let mut info = info_of(issuer, &account);
    if info.contact.is_empty() {
        info.contact = contact;
    }
    info!(issuer = %issuer.name, contact = ?info.contact, "account contact updated");
    Ok(info)
}

/// Deactivate the account (irreversible) and move its state aside, so the next renewal registers a
/// new account. `confirmed` must be true (`--yes`).
pub async fn deactivate(
    rt: &Runtime,
    issuer_name: &str,
    confirmed: bool,
) -> Result<AccountInfo, AccountError> {
    let issuer = issuer(rt, issuer_name)?;
    let id = existing_id(rt, issuer)?;
    if !confirmed {
        return Err(AccountError::NotConfirmed {
            issuer: issuer.name.clone(),
        });
    }
    let mut account = rt.account(issuer).await?;
    account
        .deactivate()
        .await
        .map_err(|source| AccountError::Acme {
            issuer: issuer.name.clone(),
            what: "the deactivation",
            source,
        })?;
    let moved = rt
        .accounts
        .retire(&id)
        .map_err(|source| AccountError::Store {
            issuer: issuer.name.clone(),
            source,
        })?;
    info!(issuer = %issuer.name, account = %account.url(), kept = %moved, "account deactivated");
    let mut info = info_of(issuer, &account);
    if info.status.is_empty() {
        info.status = "deactivated".into();
    }
    Ok(info)
}

/// Abort the process here when [`CRASH_AT_ENV`] names `step` (crash-recovery tests only: compiled
/// in with the `test-hooks` feature, a no-op otherwise).
#[cfg(feature = "test-hooks")]
/// The dns-persist-01 records to publish for `issuer_name` (experimental), one zone-file line
/// each: for `domain` when given (`policy=wildcard` when `wildcard` is set or it is `*.name`),
/// else for every name of every certificate at this issuer that its dns_persist01 solver proves.
///
/// The record names the account, so the account is registered first when there is none yet.
pub async fn persist_records(
    rt: &Runtime,
    issuer_name: &str,
    domain: Option<&str>,
    wildcard: bool,
) -> Result<String, AccountError> {
    use crate::challenge::IdentifierKind;
    use crate::challenge::dnspersist01::{record_value, zone_line};
    use crate::config::SolverKind;
    let issuer = issuer(rt, issuer_name)?;
    let persist_domain = |name: &str, kind: IdentifierKind| -> Option<String> {
        match issuer.solver_for(name, kind).map(|s| &s.kind) {
            Some(SolverKind::DnsPersist01 { issuer_domain, .. }) => Some(issuer_domain.clone()),
            _ => None,
        }
    };
    let mut names: Vec<(String, bool, String)> = Vec::new();
    match domain {
        Some(d) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            let (kind, name) = IdentifierKind::split(&d);
            let issuer_domain = persist_domain(name, kind)
                .or_else(|| {
                    issuer.solvers.iter().find_map(|s| match &s.kind {
                        SolverKind::DnsPersist01 { issuer_domain, .. } => {
                            Some(issuer_domain.clone())
                        }
                        _ => None,
                    })
                })
                .ok_or_else(|| AccountError::NoPersistSolver {
                    issuer: issuer.name.clone(),
                })?;
            names.push((
                name.to_string(),
                wildcard || kind == IdentifierKind::Wildcard,
                issuer_domain,
            ));
        }
        None => {
            for cert in rt.config.certificates.values() {
                if !cert.issuers.iter().any(|i| i == &issuer.name) {
                    continue;
                }
                for d in &cert.domains {
                    let (kind, name) = IdentifierKind::split(d);
                    if let Some(issuer_domain) = persist_domain(name, kind) {
                        let w = wildcard || kind == IdentifierKind::Wildcard;
                        match names.iter_mut().find(|(n, _, _)| n == name) {
                            // `example.com` and `*.example.com` share one record.
                            Some(e) => e.1 |= w,
                            None => names.push((name.to_string(), w, issuer_domain)),
                        }
                    }
                }
            }
            if names.is_empty() {
                return Err(AccountError::NoPersistSolver {
                    issuer: issuer.name.clone(),
                });
            }
        }
    }
    let account = rt.account(issuer).await?;
    let lines: Vec<String> = names
        .iter()
        .map(|(name, w, issuer_domain)| {
            zone_line(name, &record_value(issuer_domain, account.url(), *w))
        })
        .collect();
    Ok(lines.join("\n"))
}

fn crash_point(step: &str) {
    if std::env::var(CRASH_AT_ENV).is_ok_and(|v| v == step) {
        eprintln!("certkeeper: {CRASH_AT_ENV}={step}: aborting as requested");
        std::process::abort();
    }
}

#[cfg(not(feature = "test-hooks"))]
fn crash_point(_step: &str) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_info_display_names_every_field_and_no_secret() {
        let key = AccountKey::generate(KeyType::EcdsaP256).unwrap();
        let info = AccountInfo {
            issuer: "le".into(),
            directory: "https://ca/dir".into(),
            url: "https://ca/acct/7".into(),
            status: String::new(),
            contact: vec![],
            key_type: key.key_type(),
            thumbprint: key.thumbprint(),
        };
        let text = info.to_string();
        for want in [
            "https://ca/acct/7",
            "(not reported)",
            "(none)",
            "ecdsa-p256",
            &key.thumbprint(),
        ] {
            assert!(text.contains(want), "{want} missing in:\n{text}");
        }
        assert!(!text.contains("PRIVATE"));
    }
}
