//! `certkeeper revoke NAME`: revoke the live certificate of a configured certificate (RFC 8555 §7.6),
//! keep the revoked pair aside and mark it so the next pass (daemon or `renew`) replaces it at once.
//!
//! The request is signed with the account key of the issuer that issued the certificate; when that
//! account is lost or refused (or `--with-cert-key` is given) it is signed with the certificate's own
//! private key instead, which every CA must accept.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use openssl::pkey::PKey;
use openssl::x509::X509;
use tracing::{info, warn};

use crate::acme::{self, AcmeError, ProblemKind};
use crate::engine::Runtime;
use crate::store::{self, StoreError};

/// A revocation reason (RFC 5280 §5.3.1), as far as ACME CAs accept them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// No reason given (code 0).
    Unspecified,
    /// The private key was (or may have been) disclosed (code 1).
    KeyCompromise,
    /// The subject's name or affiliation changed (code 3).
    AffiliationChanged,
    /// The certificate was replaced by another (code 4).
    Superseded,
    /// The certificate is no longer needed (code 5).
    CessationOfOperation,
}

impl Reason {
    /// Every reason with its command-line spelling.
    pub const ALL: [(Reason, &'static str); 5] = [
        (Reason::Unspecified, "unspecified"),
        (Reason::KeyCompromise, "keyCompromise"),
        (Reason::AffiliationChanged, "affiliationChanged"),
        (Reason::Superseded, "superseded"),
        (Reason::CessationOfOperation, "cessationOfOperation"),
    ];

    /// The CRLReason code sent to the CA.
    pub fn code(self) -> u8 {
        match self {
            Reason::Unspecified => 0,
            Reason::KeyCompromise => 1,
            Reason::AffiliationChanged => 3,
            Reason::Superseded => 4,
            Reason::CessationOfOperation => 5,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = Reason::ALL
            .iter()
            .find(|(r, _)| r == self)
            .map(|(_, n)| *n)
            .unwrap_or("unspecified");
        f.write_str(name)
    }
}

impl FromStr for Reason {
    type Err = String;

    /// Case-insensitive; `key-compromise` and `key_compromise` are accepted too.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm: String = s
            .chars()
            .filter(|c| *c != '-' && *c != '_')
            .collect::<String>()
            .to_ascii_lowercase();
        Reason::ALL
            .iter()
            .find(|(_, n)| n.to_ascii_lowercase() == norm)
            .map(|(r, _)| *r)
            .ok_or_else(|| {
                let names: Vec<&str> = Reason::ALL.iter().map(|(_, n)| *n).collect();
                format!(
                    "unknown revocation reason {s:?}; use one of: {}",
                    names.join(", ")
                )
            })
    }
}

/// What `certkeeper revoke` was asked to do.
#[derive(Clone, Debug)]
pub struct RevokeOptions {
    /// The certificate's config name.
    pub name: String,
    /// The reason sent to the CA.
    pub reason: Reason,
    /// Sign with the certificate's private key instead of the account key.
    pub with_cert_key: bool,
}

/// The outcome of a revocation.
#[derive(Clone, Debug)]
pub struct Revoked {
    /// Serial of the revoked certificate (hex).
    pub serial: String,
    /// The issuer (config name) asked to revoke it.
    pub issuer: String,
    /// Which key signed the request: `"account key"` or `"certificate key"`.
    pub signed_with: &'static str,
    /// Where the revoked pair was kept.
    pub kept: PathBuf,
    /// The CA already had it revoked.
    pub already_revoked: bool,
}

/// Why a revocation failed.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    /// The name is not a configured certificate.
    #[error("no certificate named {name:?} in the config (known: {known})")]
    UnknownCertificate {
        /// The name asked for.
        name: String,
        /// The configured names, comma-separated.
        known: String,
    },
    /// Nothing is installed for the certificate.
    #[error("certificate {name}: no installed certificate in {dir}, so there is nothing to revoke")]
    NotInstalled {
        /// The certificate's name.
        name: String,
        /// Its output directory.
        dir: PathBuf,
    },
    /// The live certificate was revoked before and not replaced yet.
    #[error(
        "certificate {name}: serial {serial} is already revoked; run `certkeeper renew {name}` (or reload the daemon) to install its replacement"
    )]
    AlreadyRevoked {
        /// The certificate's name.
        name: String,
        /// The serial of the revoked certificate.
        serial: String,
    },
    /// The CA refused or could not be reached.
    #[error("certificate {name}: the CA did not revoke serial {serial}: {message}")]
    Ca {
        /// The certificate's name.
        name: String,
        /// The serial of the certificate.
        serial: String,
        /// What went wrong, for every key tried.
        message: String,
    },
    /// The installed files or the state directory could not be read or written.
    #[error("certificate {name}: {source}")]
    Store {
        /// The certificate's name.
        name: String,
        /// The store error.
        #[source]
        source: StoreError,
    },
    /// The installed files are not usable PEM.
    #[error("certificate {name}: the installed files cannot be read: {message}")]
    BadFiles {
        /// The certificate's name.
        name: String,
        /// The parse error.
        message: String,
    },
}

/// Revoke the live certificate of `opts.name`, keep the pair aside in `<output.dir>/.revoked-<serial>/`
/// and mark it in the state so the next pass issues a replacement at once.
///
/// The live files stay in place until the replacement is installed, so a running web server keeps
/// serving something meanwhile.
pub async fn revoke(rt: &Runtime, opts: &RevokeOptions) -> Result<Revoked, RevokeError> {
    let name = opts.name.as_str();
    let Some(cert) = rt.config.certificates.get(name) else {
        let known: Vec<&str> = rt.config.certificates.keys().map(String::as_str).collect();
        return Err(RevokeError::UnknownCertificate {
            name: name.to_string(),
            known: known.join(", "),
        });
    };
    let store_err = |source| RevokeError::Store {
        name: name.to_string(),
        source,
    };
    // No issuance of this certificate while it is being revoked.
    let held = rt.ledger.lock(name).map_err(store_err)?;
    let spec = &cert.output;
    let snap = rt.ledger.snapshot(name, spec);
    if let Some(e) = &snap.installed_error {
        return Err(RevokeError::BadFiles {
            name: name.to_string(),
            message: e.clone(),
        });
    }
    let live = snap
        .installed
        .clone()
        .ok_or_else(|| RevokeError::NotInstalled {
            name: name.to_string(),
            dir: spec.dir.clone(),
        })?;
    let serial = live.cert.serial_hex.clone();
    let state = &snap.state;
    if state.revoked_serial.as_deref() == Some(serial.as_str()) {
        return Err(RevokeError::AlreadyRevoked {
            name: name.to_string(),
            serial,
        });
    }
    let issuer_name = state
        .issuer
        .clone()
        .filter(|i| rt.config.issuers.contains_key(i))
        .or_else(|| cert.issuers.first().cloned())
        .unwrap_or_default();
    let Some(issuer) = rt.config.issuers.get(&issuer_name) else {
        return Err(RevokeError::Ca {
            name: name.to_string(),
            serial,
            message: "the certificate names no configured issuer".into(),
        });
    };
    let bad_files = |message: String| RevokeError::BadFiles {
        name: name.to_string(),
        message,
    };
    let leaf_der = live
        .fullchain_pem()
        .map_err(|e| bad_files(e.to_string()))
        .and_then(|pem| X509::stack_from_pem(pem).map_err(|e| bad_files(e.to_string())))?
        .first()
        .ok_or_else(|| bad_files("fullchain.pem holds no certificate".into()))?
        .to_der()
        .map_err(|e| bad_files(e.to_string()))?;
    let reason = Some(opts.reason.code()).filter(|c| *c != 0);

    let mut failures: Vec<String> = Vec::new();
    let mut outcome: Option<(&'static str, bool)> = None;
    // Without a stored account (state lost, or a pair imported from elsewhere) registering a new one
    // would not help: only the issuing account or the certificate key may revoke.
    let has_account = rt
        .accounts
        .load(&store::account_id(&issuer.name, &issuer.directory))
        .ok()
        .flatten()
        .is_some_and(|a| a.record.is_some());
    if !opts.with_cert_key && !has_account {
        info!(cert = %name, issuer = %issuer.name, "no account stored for the issuer; revoking with the certificate key");
    }
    if !opts.with_cert_key && has_account {
        match rt.account(issuer).await {
            Ok(account) => match account.revoke(&leaf_der, reason).await {
                Ok(()) => outcome = Some(("account key", false)),
                Err(e) if is_already_revoked(&e) => outcome = Some(("account key", true)),
                Err(e) if e.is_unreachable() => {
                    return Err(RevokeError::Ca {
                        name: name.to_string(),
                        serial,
                        message: format!("issuer {}: {e}", issuer.name),
                    });
                }
                Err(e) => {
                    warn!(cert = %name, error = %e, "the CA refused the revocation signed with the account key; trying the certificate key");
                    failures.push(format!("signed with the account key: {e}"));
                }
            },
            Err(e) => {
                warn!(cert = %name, error = %e, "the account is not usable; revoking with the certificate key");
                failures.push(format!("account: {e}"));
            }
        }
    }
    if outcome.is_none() {
        let key = live
            .key_pem()
            .map_err(|e| bad_files(e.to_string()))
            .and_then(|pem| {
                PKey::private_key_from_pem(pem).map_err(|e| bad_files(format!("privkey.pem: {e}")))
            })?;
        let result = match rt.client(issuer).await {
            Ok(client) => acme::revoke_with_certificate_key(&client, &key, &leaf_der, reason)
                .await
                .map_err(|e| {
                    let already = is_already_revoked(&e);
                    (format!("signed with the certificate key: {e}"), already)
                }),
            Err(e) => Err((e.to_string(), false)),
        };
        match result {
            Ok(()) => outcome = Some(("certificate key", false)),
            Err((_, true)) => outcome = Some(("certificate key", true)),
            Err((m, false)) => failures.push(m),
        }
    }
    let Some((signed_with, already_revoked)) = outcome else {
        return Err(RevokeError::Ca {
            name: name.to_string(),
            serial,
            message: failures.join("; "),
        });
    };
    let kept = held.revoked(spec, &live).map_err(store_err)?;
    info!(cert = %name, serial = %serial, issuer = %issuer.name, reason = %opts.reason, signed_with, kept = %kept.display(), "certificate revoked; a replacement is due at once");
    Ok(Revoked {
        serial,
        issuer: issuer.name.clone(),
        signed_with,
        kept,
        already_revoked,
    })
}

fn is_already_revoked(e: &AcmeError) -> bool {
    e.problem()
        .is_some_and(|p| p.kind() == ProblemKind::AlreadyRevoked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_parse_in_rfc_and_cli_spellings() {
        assert_eq!(
            "keyCompromise".parse::<Reason>().unwrap(),
            Reason::KeyCompromise
        );
        assert_eq!(
            "key-compromise".parse::<Reason>().unwrap(),
            Reason::KeyCompromise
        );
        assert_eq!(
            "CESSATION_OF_OPERATION".parse::<Reason>().unwrap(),
            Reason::CessationOfOperation
        );
        let err = "stolen".parse::<Reason>().unwrap_err();
        assert!(
            err.contains("keyCompromise") && err.contains("stolen"),
            "{err}"
        );
        for (r, n) in Reason::ALL {
            assert_eq!(r.to_string(), n);
            assert_eq!(n.parse::<Reason>().unwrap(), r);
        }
    }

    #[test]
    fn reason_codes_follow_rfc5280() {
        let codes: Vec<u8> = Reason::ALL.iter().map(|(r, _)| r.code()).collect();
        assert_eq!(codes, vec![0, 1, 3, 4, 5]);
    }
}
