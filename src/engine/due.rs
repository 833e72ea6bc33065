//! When a certificate is due: the scheduler's pure policy applied to one ledger [`Snapshot`].
//!
//! Used alike by the daemon (its timers), `certkeeper renew`, `status` and `explain`, so they all
//! show the same time for the same reason.

use jiff::Timestamp;
use tracing::info;

use crate::config::{CertificateConfig, Config};
use crate::scheduler::{self, Due};
use crate::store::Snapshot;

/// Decide whether `cert` is due at `now`, and why, from one snapshot.
///
/// A certificate is due at once when nothing usable is installed (missing, torn, a self-signed
/// placeholder, revoked), or when what is installed no longer matches the config (names, key type,
/// issuers, profile); otherwise at its renewal point, or inside the CA's ARI window; later when a
/// failed attempt is backing off or paused. `retry_paused_now`: the daemon (re)started or reloaded,
/// so a paused certificate is tried at once.
pub fn due(
    cfg: &Config,
    cert: &CertificateConfig,
    snap: &Snapshot,
    now: Timestamp,
    retry_paused_now: bool,
) -> Due {
    let state = &snap.state;
    let live = snap.live();
    let fingerprint_changed = live.is_some_and(|live| {
        let mut a = live.cert.names.clone();
        let mut b = cert.domains.clone();
        a.sort();
        b.sort();
        a != b
            || live.cert.key_type != cert.key.as_str()
            || state
                .config_fingerprint
                .as_deref()
                .is_some_and(|f| f != fingerprint(cert))
    });
    // Without failures there is no backoff for a config fix to lift (the policy ignores the
    // rest), so the retry fingerprint (which reads the issuers' ca_bundle files) is not computed.
    let retry = if state.retry.failures == 0 {
        state.retry.clone()
    } else {
        state
            .retry
            .clone()
            .for_config(&retry_fingerprint(cfg, cert))
    };
    let facts = scheduler::CertFacts {
        installed: live.map(|l| (l.cert.not_before, l.cert.not_after)),
        fingerprint_changed,
        ari_window: state.ari_window,
        retry,
        renew_before: cert.renew_before,
        retry_paused_now,
    };
    // Jitter seeded from the installed serial and the ARI window: re-evaluating (after a reload, in
    // `certkeeper status`) gives the same time until one of them changes.
    let mut salt = live.map(|l| l.cert.serial_hex.clone()).unwrap_or_default();
    if let Some((start, end)) = state.ari_window {
        salt.push_str(&format!("/{start}/{end}"));
    }
    scheduler::due(
        &facts,
        now,
        &mut scheduler::stable_rng(&cert.name, salt.as_bytes()),
    )
}

/// When the daemon must next look at `cert`: its due time, or earlier when the ARI window of the
/// installed certificate is to be fetched (again) first.
pub fn next_wake(
    cfg: &Config,
    cert: &CertificateConfig,
    snap: &Snapshot,
    now: Timestamp,
    retry_paused_now: bool,
) -> (Due, Timestamp) {
    let due = due(cfg, cert, snap, now, retry_paused_now);
    if snap.placeholder {
        info!(cert = %cert.name, "the installed certificate is a self-signed placeholder; issuing");
    } else if let Some(e) = &snap.installed_error {
        info!(cert = %cert.name, error = %e, "installed files unusable; issuing again");
    }
    let wake = match snap.live() {
        Some(_) => due.at.min(snap.state.ari_refetch_at.unwrap_or(now)),
        None => due.at,
    };
    (due, wake)
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
/// path and contents, EAB kid and key, account key type and solvers, the HTTP-01 listen addresses
/// and the output settings). Any change lifts the backoff or a pause, without reissuing certificates that are
/// fine. Secrets enter only through SHA-256.
pub fn retry_fingerprint(cfg: &Config, cert: &CertificateConfig) -> String {
    let mut text = fingerprint(cert);
    text.push_str(&format!("\nlisten={:?}", cfg.http01.listen));
    // Output settings (owner, group, modes, allow_shared_dir): a fix to a refused install retries.
    text.push_str(&format!(
        "\noutput={:?} key_reuse={}",
        cert.output, cert.key_reuse
    ));
    for name in &cert.issuers {
        let Some(issuer) = cfg.issuers.get(name) else {
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
    scheduler::hex(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn config(dir: &std::path::Path, eab_key: &str, max_concurrent: usize) -> Arc<Config> {
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
        Arc::new(crate::config::load(&dir.join("c.toml")).unwrap())
    }

    #[test]
    fn an_issuer_fix_changes_the_retry_fingerprint_but_not_the_reissue_one() {
        let tmp = tempfile::tempdir().unwrap();
        let a = config(tmp.path(), "a2V5LW9uZQ", 8);
        let cert = &a.certificates["www"];
        let (fp, retry) = (fingerprint(cert), retry_fingerprint(&a, cert));
        assert!(
            !retry.contains("a2V5LW9uZQ"),
            "no secret in the fingerprint"
        );
        let b = config(tmp.path(), "a2V5LXR3bw", 8);
        let cert_b = &b.certificates["www"];
        assert_eq!(fingerprint(cert_b), fp, "an EAB fix does not reissue");
        assert_ne!(
            retry_fingerprint(&b, cert_b),
            retry,
            "an EAB fix lifts the backoff"
        );
        let c = config(tmp.path(), "a2V5LW9uZQ", 2);
        let cert_c = &c.certificates["www"];
        assert_eq!(
            retry_fingerprint(&c, cert_c),
            retry,
            "unrelated settings keep the backoff"
        );
    }
}
