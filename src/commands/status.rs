//! `certkeeper status [--json] [NAME]`: what every certificate looks like now and what happens next.
//!
//! Reads the config and the ledger (state and installed files) only; it never talks to a CA, never
//! builds a runtime and never writes, so it is safe to run while the daemon runs.

use std::path::Path;
use std::sync::Arc;

use jiff::Timestamp;
use serde::Serialize;

use crate::config::{self, CertificateConfig, Config};
use crate::engine::{due, read_only_ledger};
use crate::scheduler::DueReason;
use crate::store::Ledger;

/// Errors of `certkeeper status`.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The config does not load.
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    /// The asked-for certificate is not configured.
    #[error("no certificate named {name:?} in the config (known: {known})")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The configured names.
        known: String,
    },
    /// The state cannot be opened.
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
}

/// One certificate's status.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CertStatus {
    /// The config name.
    pub name: String,
    /// The configured names.
    pub domains: Vec<String>,
    /// The issuer (config name) that issued the installed certificate or runs the in-flight order.
    pub issuer: Option<String>,
    /// The installed leaf's serial (hex); `None` when nothing is installed.
    pub serial: Option<String>,
    /// Not After of the installed certificate.
    pub not_after: Option<Timestamp>,
    /// Why the installed files cannot be used, when they are torn or unreadable.
    pub installed_error: Option<String>,
    /// When the next attempt happens (always set: certkeeper never stops trying).
    pub next_renewal: Option<Timestamp>,
    /// The next renewal time and why, in words.
    pub next_renewal_reason: String,
    /// Failed attempts since the last success.
    pub failures: u32,
    /// The last error since the last success.
    pub last_error: Option<String>,
    /// When the last error happened.
    pub last_error_at: Option<Timestamp>,
    /// When a certificate was last installed.
    pub last_success: Option<Timestamp>,
    /// The order in flight (resumed at the next attempt).
    pub order_url: Option<String>,
    /// The CA's ARI window, when fetched.
    pub ari_window: Option<(Timestamp, Timestamp)>,
    /// The CA needs a human to act (the reason is in `last_error`); still tried at
    /// `next_renewal`, daily, and at once on every reload.
    pub paused: bool,
    /// The serial whose reload hooks have not completed yet (they run at the next start).
    pub reload_pending: Option<String>,
    /// With `verify_deploy`: whether every endpoint served the installed certificate at the last
    /// check (`None` when it has no `verify_deploy` or the installed certificate was not checked yet).
    pub deployed: Option<bool>,
    /// With `verify_deploy`: the last check (when, and what each endpoint served).
    pub deploy_check: Option<crate::store::DeployCheck>,
}

/// The status of every configured certificate (or only `only`), at `now`.
pub fn collect(
    config_path: &Path,
    only: Option<&str>,
    now: Timestamp,
) -> Result<Vec<CertStatus>, StatusError> {
    // About one certificate: the others' config is parsed but not validated (`check` does that).
    let cfg = Arc::new(match only {
        Some(name) => config::load_one(config_path, name)?,
        None => config::load(config_path)?,
    });
    if let Some(name) = only
        && !cfg.certificates.contains_key(name)
    {
        return Err(StatusError::Unknown {
            name: name.to_string(),
            known: cfg
                .certificates
                .keys()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let ledger = read_only_ledger(&cfg)?;
    Ok(cfg
        .certificates
        .values()
        .filter(|c| only.is_none_or(|n| n == c.name))
        .map(|c| one(&cfg, &ledger, c, now))
        .collect())
}

fn one(cfg: &Config, ledger: &Ledger, cert: &CertificateConfig, now: Timestamp) -> CertStatus {
    let snap = ledger.snapshot(&cert.name, &cert.output);
    let state = &snap.state;
    let live = snap.installed.as_ref();
    let installed_error = snap.installed_error.clone().or_else(|| {
        snap.placeholder
            .then(|| "a self-signed placeholder, replaced at once".to_string())
    });
    let due = due::due(cfg, cert, &snap, now, false);
    let deploy_check = cert
        .verify_deploy
        .as_ref()
        .and(state.deploy.clone())
        .filter(|d| live.is_some_and(|l| l.cert.serial_hex == d.serial));
    CertStatus {
        name: cert.name.clone(),
        domains: cert.domains.clone(),
        issuer: state.issuer.clone(),
        serial: live.as_ref().map(|l| l.cert.serial_hex.clone()),
        not_after: live.as_ref().map(|l| l.cert.not_after),
        installed_error,
        next_renewal: Some(due.at),
        next_renewal_reason: due.to_string(),
        failures: state.retry.failures,
        last_error: state
            .retry
            .last_error
            .clone()
            .filter(|_| state.retry.failures > 0),
        last_error_at: state.last_error_at,
        last_success: state.last_success,
        order_url: state.order_url.clone(),
        ari_window: state.ari_window,
        paused: matches!(due.reason, DueReason::Paused { .. }),
        reload_pending: (!cert.reload.is_empty())
            .then(|| snap.reload_pending().map(str::to_string))
            .flatten(),
        deployed: deploy_check.as_ref().map(|d| d.deployed),
        deploy_check,
    }
}

/// Human-readable text, one block per certificate.
pub fn render_text(list: &[CertStatus]) -> String {
    use std::fmt::Write as _;
    let ts = |t: Timestamp| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string();
    let mut out = String::new();
    for s in list {
        let _ = writeln!(out, "{}: {}", s.name, s.domains.join(", "));
        match (&s.serial, s.not_after) {
            (Some(serial), Some(na)) => {
                let _ = writeln!(
                    out,
                    "  installed:   serial {serial}, not after {}, issuer {}",
                    ts(na),
                    s.issuer.as_deref().unwrap_or("unknown")
                );
            }
            _ => {
                let _ = writeln!(
                    out,
                    "  installed:   none{}",
                    s.installed_error
                        .as_ref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                );
            }
        }
        let _ = writeln!(out, "  next:        {}", s.next_renewal_reason);
        if let Some((a, b)) = s.ari_window {
            let _ = writeln!(out, "  ARI window:  {} to {}", ts(a), ts(b));
        }
        if let Some(e) = &s.last_error {
            let _ = writeln!(
                out,
                "  last error:  {e} ({} failure(s){})",
                s.failures,
                s.last_error_at
                    .map(|t| format!(", at {}", ts(t)))
                    .unwrap_or_default()
            );
        }
        if let Some(u) = &s.order_url {
            let _ = writeln!(out, "  in flight:   {u}");
        }
        if let Some(d) = &s.deploy_check {
            let at =
                d.at.map(|t| format!(" (checked {})", ts(t)))
                    .unwrap_or_default();
            if d.deployed {
                let _ = writeln!(
                    out,
                    "  deployed:    yes, every verify_deploy endpoint serves it{at}"
                );
            } else {
                let _ = writeln!(
                    out,
                    "  deployed:    NO: installed, not deployed{at}: {}",
                    d.mismatches().join("; ")
                );
            }
        }
        if let Some(serial) = &s.reload_pending {
            let _ = writeln!(
                out,
                "  reload:      PENDING for serial {serial} (the hook did not complete; it runs at the next start of the daemon or `certkeeper renew`)"
            );
        }
    }
    out
}

/// Run `certkeeper status`: print, and return the process exit code (0, or 2 on a config error).
pub fn run(config_path: &Path, json: bool, name: Option<&str>) -> std::process::ExitCode {
    match collect(config_path, name, Timestamp::now()) {
        Ok(list) => {
            if json {
                match serde_json::to_string_pretty(&list) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("certkeeper: encoding the status as JSON: {e}");
                        return std::process::ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", render_text(&list));
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("certkeeper: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store;

    fn write_config(dir: &Path) -> std::path::PathBuf {
        let p = dir.join("certkeeper.toml");
        std::fs::write(
            &p,
            format!(
                r#"state_dir = "{d}/state"
[issuer.le]
directory = "http://127.0.0.1:1/dir"
[[issuer.le.solver]]
http01 = {{}}
[certificate.www]
issuer = "le"
domains = ["www.example.com"]
output = {{ dir = "{d}/out/www" }}
[certificate.api]
issuer = "le"
domains = ["api.example.com"]
output = {{ dir = "{d}/out/api" }}
"#,
                d = dir.display()
            ),
        )
        .unwrap();
        p
    }

    #[test]
    fn status_shows_missing_certificates_and_recorded_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config(dir.path());
        let now = Timestamp::now();
        // a recorded failure with an order in flight for "api"
        let state = store::FileStorage::open(dir.path().join("state")).unwrap();
        let mut st = store::CertState {
            order_url: Some("https://ca/order/7".into()),
            issuer: Some("le".into()),
            ..Default::default()
        };
        st.retry.failures = 2;
        st.retry.last_error = Some("connection refused".into());
        st.retry.next_retry = Some(now + jiff::SignedDuration::from_mins(5));
        use store::Storage as _;
        state
            .store("certs/api.json", &serde_json::to_vec(&st).unwrap())
            .unwrap();

        let list = collect(&cfg, None, now).unwrap();
        assert_eq!(list.len(), 2);
        let api = list.iter().find(|s| s.name == "api").unwrap();
        assert_eq!(api.failures, 2);
        assert_eq!(api.last_error.as_deref(), Some("connection refused"));
        assert_eq!(api.order_url.as_deref(), Some("https://ca/order/7"));
        assert!(api.serial.is_none());
        let www = list.iter().find(|s| s.name == "www").unwrap();
        assert_eq!(www.next_renewal, Some(now));
        assert!(www.next_renewal_reason.contains("no certificate installed"));
        let text = render_text(&list);
        assert!(text.contains("in flight:   https://ca/order/7"), "{text}");
        assert!(
            text.contains("last error:  connection refused (2 failure(s)"),
            "{text}"
        );
        assert!(text.contains("installed:   none"), "{text}");

        let only = collect(&cfg, Some("www"), now).unwrap();
        assert_eq!(only.len(), 1);
        let err = collect(&cfg, Some("nope"), now).unwrap_err().to_string();
        assert!(err.contains("known: api, www"), "{err}");
        let json = serde_json::to_value(&list).unwrap();
        assert_eq!(json[0]["name"], "api");
        assert_eq!(json[0]["failures"], 2);
    }
}
