//! `certkeeper status [--json] [NAME]`: what every certificate looks like now and what happens next.
//!
//! Reads the config and the ledger (state and installed files) only; it never talks to a CA, never
//! builds a runtime and never writes, so it is safe to run while the daemon runs.

use std::path::Path;
use std::sync::Arc;

use jiff::Timestamp;
use serde::Serialize;

use crate::config::{self, CertificateConfig, Config};
use crate::engine::{due, read_only_ledger, side_by_side};
use crate::scheduler::DueReason;
use crate::store::shared::PairOrigin;
use crate::store::{LeaseInfo, Ledger};

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
    /// In a fleet (PostgreSQL storage): who works on it and who ordered its current pair. Absent
    /// (not `null`) for a host on its own, whose output is as before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetStatus>,
}

/// A certificate's owner in a fleet.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FleetStatus {
    /// The node this status was read on.
    pub node: String,
    /// The issuance lease held now: which node orders (or installs) it, and until when unless it
    /// renews the lease. `None`: no node is working on it.
    pub lease: Option<LeaseInfo>,
    /// Why the leases could not be read (then `lease` is unknown, not none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_error: Option<String>,
    /// The fleet's current pair: its serial and the node that ordered it. `None`: there is none
    /// (or it is unreadable here, see `current_error`).
    pub current: Option<PairOrigin>,
    /// Why this node cannot read the fleet's current pair (e.g. its encryption key was rotated out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_error: Option<String>,
}

/// The status of every configured certificate (or only `only`), at `now`.
pub fn collect(
    config_path: &Path,
    only: Option<&str>,
    now: Timestamp,
) -> Result<Vec<CertStatus>, StatusError> {
    // About one certificate: the others' config is not validated (`check` does that).
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
    // One query for every certificate's lease (in a fleet; nothing is read on its own).
    let leases = ledger.node().map(|_| ledger.leases());
    let certs: Vec<&CertificateConfig> = cfg
        .certificates
        .values()
        .filter(|c| only.is_none_or(|n| n == c.name))
        .collect();
    let status = |c: &&CertificateConfig| one(&cfg, &ledger, c, now, leases.as_ref());
    Ok(match ledger.node() {
        // A fleet's storage client lives on this thread's runtime: one certificate at a time.
        Some(_) => certs.iter().map(status).collect(),
        None => side_by_side::map(&certs, status),
    })
}

/// Every lease of the fleet, read at once, or why they could not be read.
type Leases = Result<Vec<LeaseInfo>, crate::store::StoreError>;

/// The fleet part of a status (`None` on its own): the lease named after the certificate (its
/// issuance lease) and the origin of the fleet's current pair.
fn fleet(
    ledger: &Ledger,
    leases: Option<&Leases>,
    name: &str,
    snap: &crate::store::Snapshot,
) -> Option<FleetStatus> {
    let node = ledger.node()?.to_string();
    let (lease, lease_error) = match leases? {
        Ok(all) => (all.iter().find(|l| l.name == name).cloned(), None),
        Err(e) => (None, Some(e.to_string())),
    };
    Some(FleetStatus {
        node,
        lease,
        lease_error,
        current: snap.shared_origin.clone(),
        current_error: snap.shared_error.clone(),
    })
}

fn one(
    cfg: &Config,
    ledger: &Ledger,
    cert: &CertificateConfig,
    now: Timestamp,
    leases: Option<&Leases>,
) -> CertStatus {
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
        fleet: fleet(ledger, leases, &cert.name, &snap),
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
        if let Some(f) = &s.fleet {
            render_fleet(&mut out, f);
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

/// The fleet lines of one certificate: who ordered the current pair, and who holds the lease.
fn render_fleet(out: &mut String, f: &FleetStatus) {
    use std::fmt::Write as _;
    let ts = |t: Timestamp| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string();
    let _ = match &f.current {
        Some(c) => writeln!(
            out,
            "  fleet pair:  serial {}, ordered by node {}{}",
            c.serial,
            c.ordered_by.as_deref().unwrap_or("(not recorded)"),
            c.ordered_at
                .map(|t| format!(" at {}", ts(t)))
                .unwrap_or_default()
        ),
        None => match &f.current_error {
            Some(e) => writeln!(out, "  fleet pair:  unreadable on this node: {e}"),
            None => writeln!(out, "  fleet pair:  none yet"),
        },
    };
    let this = |n: &str| if n == f.node { " (this node)" } else { "" };
    let _ = match (&f.lease, &f.lease_error) {
        (Some(l), _) => writeln!(
            out,
            "  lease:       held by node {}{} since {}, until {} unless renewed",
            l.holder,
            this(&l.holder),
            ts(l.acquired_at),
            ts(l.expires_at)
        ),
        (None, Some(e)) => writeln!(out, "  lease:       unknown ({e})"),
        (None, None) => writeln!(out, "  lease:       none (no node is working on it now)"),
    };
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
        // On its own (file backend) there is no fleet part, in text or JSON.
        assert!(json[0].get("fleet").is_none(), "{json}");
        assert!(
            !text.contains("lease:") && !text.contains("fleet pair:"),
            "{text}"
        );
    }
}
