//! One renewal pass: decide which certificates are due, issue them concurrently under a limit, then
//! run the reload hooks of everything that changed, once per command.

use std::sync::Arc;

use futures_util::future::join_all;
use jiff::Timestamp;
use tokio::sync::Semaphore;
use tracing::{error, info};

use crate::config::CertificateConfig;
use crate::hooks::{self, HookOutcome, ReloadRequest};
use crate::scheduler::{self, Due, DueReason};
use crate::store::{self, CertState};

use super::issue::{self, Issued};
use super::{IssueError, Runtime};

/// What the caller asked of a pass.
#[derive(Clone, Debug, Default)]
pub struct PassOptions {
    /// Issue even when the certificate is not due.
    pub force: bool,
    /// Only these certificates (config names); all when empty.
    pub only: Vec<String>,
}

/// What one pass did, per certificate.
#[derive(Debug, Default)]
pub struct PassReport {
    /// Certificates issued and installed in this pass.
    pub issued: Vec<(String, Issued)>,
    /// Certificates not due, with when they will be.
    pub not_due: Vec<(String, Due)>,
    /// Certificates that failed.
    pub failed: Vec<(String, IssueError)>,
    /// The reload hooks that ran.
    pub hooks: Vec<HookOutcome>,
}

impl PassReport {
    /// True when every selected certificate is valid and installed (issued now or not due), none
    /// is waiting out a backoff after a failed attempt, and every reload hook succeeded (a failed
    /// reload leaves servers on the old certificate).
    pub fn ok(&self) -> bool {
        self.failed.is_empty()
            && self.backing_off().next().is_none()
            && self.hooks.iter().all(|h| h.status.is_ok())
    }

    /// The not-due certificates that are skipped only because their last attempt failed: waiting
    /// for a retry time, or stopped after a permanent error. `renew --force` tries them now.
    pub fn backing_off(&self) -> impl Iterator<Item = &(String, Due)> {
        self.not_due.iter().filter(|(_, due)| {
            matches!(
                due.reason,
                DueReason::Retry { .. } | DueReason::Stopped { .. }
            )
        })
    }
}

/// Decide whether `cert` is due now and why.
///
/// A certificate is due at once when nothing is installed, when what is installed no longer matches
/// the config (names, key type, issuers, profile), or when the installed files cannot be read as a
/// matching pair; otherwise at its renewal point, or earlier inside the CA's ARI window.
pub fn due_for(rt: &Runtime, cert: &CertificateConfig, now: Timestamp) -> Due {
    let state = rt.state.cert_state_or_default(&cert.name);
    let fingerprint = fingerprint(cert);
    let installed = match store::read_installed(&cert.output) {
            // A self-signed placeholder (written so nginx can start before the first issuance) is
            // not a certificate to keep: issue at once.
            Ok(Some(live)) if is_self_signed_placeholder(&live.fullchain_pem) => {
                info!(cert = %cert.name, "the installed certificate is a self-signed placeholder; issuing");
                None
            }
            Ok(live) => live,
            Err(e) => {
                info!(cert = %cert.name, error = %e, "installed files unusable; issuing again");
                None
            }
        }
        // A revoked certificate (`certkeeper revoke`) counts as missing: replace it at once.
        .filter(|live| state.revoked_serial.as_deref() != Some(live.cert.serial_hex.as_str()));
    let fingerprint_changed = installed.as_ref().is_some_and(|live| {
        let mut a = live.cert.names.clone();
        let mut b = cert.domains.clone();
        a.sort();
        b.sort();
        a != b
            || live.cert.key_type != cert.key.as_str()
            || state
                .config_fingerprint
                .as_deref()
                .is_some_and(|f| f != fingerprint)
    });
    let facts = scheduler::CertFacts {
        installed: installed
            .as_ref()
            .map(|live| (live.cert.not_before, live.cert.not_after)),
        fingerprint_changed,
        ari_window: state.ari_window,
        retry: state.retry.clone().for_config(&retry_fingerprint(rt, cert)),
        renew_before: cert.renew_before,
    };
    // Jitter seeded from the installed serial and the ARI window: re-evaluating (after a reload, in
    // `certkeeper status`) gives the same time until one of them changes.
    let mut salt = installed
        .as_ref()
        .map(|live| live.cert.serial_hex.clone())
        .unwrap_or_default();
    if let Some((start, end)) = state.ari_window {
        salt.push_str(&format!("/{start}/{end}"));
    }
    scheduler::due(
        &facts,
        now,
        &mut scheduler::stable_rng(&cert.name, salt.as_bytes()),
    )
}

/// True when `fullchain_pem` is one self-signed certificate (a placeholder, not from a CA).
pub fn is_self_signed_placeholder(fullchain_pem: &[u8]) -> bool {
    match openssl::x509::X509::stack_from_pem(fullchain_pem) {
        Ok(certs) if certs.len() == 1 => {
            let c = &certs[0];
            c.issued(c) == openssl::x509::X509VerifyResult::OK
                && c.public_key().and_then(|k| c.verify(&k)).unwrap_or(false)
        }
        _ => false,
    }
}

/// The fingerprint of what a certificate's config asks for; a change means issue again.
pub fn fingerprint(cert: &CertificateConfig) -> String {
    scheduler::config_fingerprint(
        &cert.domains,
        cert.key.as_str(),
        &cert.issuers,
        cert.profile.as_deref(),
    )
}

/// The fingerprint a failure's backoff is bound to: the certificate's [`fingerprint`] plus
/// everything else an operator edits to fix a failed order (the issuers' directory, `ca_bundle`
/// path and contents, EAB kid and key, account key type and solvers, and the HTTP-01 listen
/// addresses). Any change lifts the backoff or a permanent stop, without reissuing certificates
/// that are fine. Secrets enter only through SHA-256.
pub fn retry_fingerprint(rt: &Runtime, cert: &CertificateConfig) -> String {
    let mut text = fingerprint(cert);
    text.push_str(&format!("\nlisten={:?}", rt.config.http01.listen));
    for name in &cert.issuers {
        let Some(issuer) = rt.config.issuers.get(name) else {
            continue;
        };
        text.push_str(&format!(
            "\nissuer={name} dir={} key={:?} solvers={:?}",
            issuer.directory, issuer.account_key, issuer.solvers
        ));
        if let Some(path) = &issuer.ca_bundle {
            let contents = std::fs::read(path).unwrap_or_default();
            text.push_str(&format!(
                " ca_bundle={} {}",
                path.display(),
                hex(&openssl::sha::sha256(&contents))
            ));
        }
        if let Some(eab) = &issuer.eab {
            text.push_str(&format!(
                " eab={} {}",
                eab.kid,
                hex(&openssl::sha::sha256(eab.hmac_key.expose().as_bytes()))
            ));
        }
    }
    hex(&openssl::sha::sha256(text.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Run one pass over the configured certificates.
pub async fn run_pass(rt: Arc<Runtime>, opts: &PassOptions) -> PassReport {
    let now = Timestamp::now();
    let mut report = PassReport::default();
    let mut todo: Vec<CertificateConfig> = Vec::new();
    for (name, cert) in &rt.config.certificates {
        if !opts.only.is_empty() && !opts.only.contains(name) {
            continue;
        }
        if opts.force {
            todo.push(cert.clone());
            continue;
        }
        let due = due_for(&rt, cert, now);
        if due.at <= now {
            info!(cert = %name, reason = %due.reason, "due");
            todo.push(cert.clone());
        } else {
            report.not_due.push((name.clone(), due));
        }
    }
    for name in &opts.only {
        if !rt.config.certificates.contains_key(name) {
            let known: Vec<&str> = rt.config.certificates.keys().map(String::as_str).collect();
            report.failed.push((
                name.clone(),
                IssueError::permanent(format!(
                    "no certificate named {name:?} in the config (known: {})",
                    known.join(", ")
                )),
            ));
        }
    }

    let limit = Arc::new(Semaphore::new(rt.config.daemon.max_concurrent.max(1)));
    let results = join_all(todo.into_iter().map(|cert| {
        let rt = rt.clone();
        let limit = limit.clone();
        async move {
            let _permit = limit.acquire().await;
            let result = issue_and_record(&rt, &cert).await;
            (cert, result)
        }
    }))
    .await;

    let mut reloads = Vec::new();
    for (cert, result) in results {
        match result {
            Ok(issued) => {
                if !cert.reload.is_empty() {
                    reloads.push(ReloadRequest {
                        cert_name: cert.name.clone(),
                        domains: cert.domains.clone(),
                        fullchain: issued.paths.fullchain.clone(),
                        key: issued.paths.key.clone(),
                        commands: cert.reload.clone(),
                    });
                }
                report.issued.push((cert.name.clone(), issued));
            }
            Err(e) => {
                error!(cert = %cert.name, error = %e, "issuance failed");
                report.failed.push((cert.name.clone(), e));
            }
        }
    }
    if !reloads.is_empty() {
        report.hooks = hooks::run_reloads(&reloads, rt.config.daemon.hook_timeout).await;
    }
    report
}

/// Issue one certificate and record the outcome (success, or the failure and its retry time) in its
/// state file, so that backoff survives restarts.
pub async fn issue_and_record(
    rt: &Runtime,
    cert: &CertificateConfig,
) -> Result<Issued, IssueError> {
    let replaces = rt
        .state
        .load_cert_state(&cert.name)
        .ok()
        .flatten()
        .and_then(|s| s.ari_cert_id);
    let result = issue::issue(rt, cert, replaces).await;
    if result.is_err() && rt.interrupt.is_cancelled() {
        // Stopped by Ctrl-C or shutdown, not by the CA or the solver: no backoff for that.
        return result;
    }
    let now = Timestamp::now();
    let mut state = match rt.state.load_cert_state(&cert.name) {
        Ok(s) => s.unwrap_or_default(),
        Err(e) => {
            error!(cert = %cert.name, error = %e, "cannot read the certificate's state; starting afresh");
            CertState::default()
        }
    };
    let fp = fingerprint(cert);
    match &result {
        Ok(issued) => {
            state.retry = state.retry.on_success();
            state.last_success = Some(now);
            state.issuer = Some(issued.issuer.clone());
            state.config_fingerprint = Some(fp);
            state.ari_cert_id = issued.ari_cert_id.clone();
            state.ari_window = None;
            state.ari_refetch_at = None;
            state.revoked_serial = None;
        }
        Err(e) => {
            let retry = state.retry.clone().for_config(&retry_fingerprint(rt, cert));
            state.retry = retry.on_failure(
                now,
                e.retry_after,
                !e.retryable,
                e.message.clone(),
                &mut rand::rng(),
            );
            state.last_error_at = Some(now);
        }
    }
    if let Err(e) = rt.state.save_cert_state(&cert.name, &state) {
        error!(cert = %cert.name, error = %e, "cannot record the outcome in the state directory");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::hash::MessageDigest;
    use openssl::pkey::{PKey, Private};
    use openssl::x509::{X509, X509NameBuilder};

    fn key() -> PKey<Private> {
        crate::acme::KeyType::EcdsaP256.generate().unwrap()
    }

    fn cert(cn: &str, issuer_cn: &str, key: &PKey<Private>, signer: &PKey<Private>) -> X509 {
        let name = |cn: &str| {
            let mut n = X509NameBuilder::new().unwrap();
            n.append_entry_by_text("CN", cn).unwrap();
            n.build()
        };
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_subject_name(&name(cn)).unwrap();
        b.set_issuer_name(&name(issuer_cn)).unwrap();
        b.set_pubkey(key).unwrap();
        b.set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&openssl::asn1::Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        b.sign(signer, MessageDigest::sha256()).unwrap();
        b.build()
    }

    #[test]
    fn self_signed_placeholders_are_recognised() {
        let k = key();
        let placeholder = cert("www.example.com", "www.example.com", &k, &k);
        assert!(is_self_signed_placeholder(&placeholder.to_pem().unwrap()));

        let ca = key();
        let ca_cert = cert("Test CA", "Test CA", &ca, &ca);
        let leaf = cert("www.example.com", "Test CA", &k, &ca);
        assert!(!is_self_signed_placeholder(&leaf.to_pem().unwrap()));
        let mut chain = leaf.to_pem().unwrap();
        chain.extend(ca_cert.to_pem().unwrap());
        assert!(!is_self_signed_placeholder(&chain));
        // same subject and issuer name but signed by another key: not self-signed
        let other = cert("x", "x", &k, &ca);
        assert!(!is_self_signed_placeholder(&other.to_pem().unwrap()));
    }

    fn runtime(dir: &std::path::Path, eab_key: &str, max_concurrent: usize) -> Runtime {
        std::fs::write(dir.join("eab.key"), eab_key).unwrap();
        let text = format!(
            r#"state_dir = "{d}/state"
[daemon]
max_concurrent = {max_concurrent}
[issuer.le]
directory = "https://127.0.0.1:1/dir"
eab = {{ kid = "kid-1", hmac_key_file = "{d}/eab.key" }}
[[issuer.le.solver]]
http01 = {{ self_check = false }}
[certificate.www]
issuer = "le"
domains = ["example.com"]
output = {{ dir = "{d}/tls" }}
"#,
            d = dir.display()
        );
        std::fs::write(dir.join("c.toml"), text).unwrap();
        let cfg = crate::config::load(&dir.join("c.toml")).unwrap();
        Runtime::new(Arc::new(cfg), Default::default()).unwrap()
    }

    #[test]
    fn an_issuer_fix_changes_the_retry_fingerprint_but_not_the_reissue_one() {
        let tmp = tempfile::tempdir().unwrap();
        let a = runtime(tmp.path(), "a2V5LW9uZQ", 8);
        let cert = &a.config.certificates["www"];
        let (fp, retry) = (fingerprint(cert), retry_fingerprint(&a, cert));
        assert!(
            !retry.contains("a2V5LW9uZQ"),
            "no secret in the fingerprint"
        );
        let b = runtime(tmp.path(), "a2V5LXR3bw", 8);
        let cert_b = &b.config.certificates["www"];
        assert_eq!(fingerprint(cert_b), fp, "an EAB fix does not reissue");
        assert_ne!(
            retry_fingerprint(&b, cert_b),
            retry,
            "an EAB fix lifts the backoff"
        );
        let c = runtime(tmp.path(), "a2V5LW9uZQ", 2);
        let cert_c = &c.config.certificates["www"];
        assert_eq!(
            retry_fingerprint(&c, cert_c),
            retry,
            "unrelated settings keep the backoff"
        );
    }

    fn not_due(reason: DueReason) -> PassReport {
        PassReport {
            not_due: vec![(
                "www".to_string(),
                Due {
                    at: Timestamp::now(),
                    reason,
                },
            )],
            ..Default::default()
        }
    }

    #[test]
    fn a_pass_is_ok_only_without_failures_backoffs_or_failed_reloads() {
        assert!(PassReport::default().ok());
        assert!(not_due(DueReason::Missing).ok());
        let retry = not_due(DueReason::Retry {
            attempt: 1,
            error: "connection refused".into(),
        });
        assert!(!retry.ok(), "a certificate in backoff is not ok");
        assert_eq!(retry.backing_off().count(), 1);
        let stopped = not_due(DueReason::Stopped {
            error: "rejectedIdentifier".into(),
        });
        assert!(!stopped.ok(), "a stopped certificate is not ok");
        let mut failed = PassReport::default();
        failed
            .failed
            .push(("www".into(), IssueError::permanent("boom")));
        assert!(!failed.ok());
        let hook = |status| PassReport {
            hooks: vec![HookOutcome {
                command: "systemctl reload nginx".into(),
                cert_names: vec!["www".into()],
                status,
            }],
            ..Default::default()
        };
        assert!(
            hook(crate::hooks::HookStatus::Ok {
                output: String::new()
            })
            .ok()
        );
        assert!(
            !hook(crate::hooks::HookStatus::Failed {
                code: Some(1),
                signal: None,
                output: String::new()
            })
            .ok(),
            "a failed reload fails the pass"
        );
    }
}
