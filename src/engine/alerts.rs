//! Which alert conditions hold for a certificate, and the one place that turns them into
//! notifications: [`evaluate`] records the conditions in the ledger ([`Event::Notified`], where
//! [`crate::notify::decide`] runs under the state lock, so two processes never both send) and
//! delivers what the rule says to send.
//!
//! Called after every outcome the engine records (an attempt, a deploy check) and by the daemon
//! periodically, so `expiring` and the daily reminders come without any other change.

use std::collections::BTreeSet;

use jiff::Timestamp;
use tracing::warn;

use crate::config::{CertificateConfig, Config};
use crate::notify::{self, AlertEvent, Condition, Send};
use crate::store::{Event, Snapshot};

use super::due;
use super::runtime::Runtime;

/// The alert conditions that hold for `cert` according to `snap`, at `now`.
pub fn holding(
    cfg: &Config,
    cert: &CertificateConfig,
    snap: &Snapshot,
    now: Timestamp,
) -> BTreeSet<Condition> {
    let mut set = BTreeSet::new();
    let retry = &snap.state.retry;
    if retry.failures > 0 {
        set.insert(if retry.paused {
            Condition::Paused
        } else {
            Condition::RenewalFailed
        });
    }
    let warn_before = cfg
        .notify
        .as_ref()
        .map_or(crate::config::DEFAULT_WARN_BEFORE, |n| n.warn_before);
    if let Some(live) = snap.live() {
        let left = live.cert.not_after.duration_since(now);
        if left <= jiff::SignedDuration::try_from(warn_before).unwrap_or(jiff::SignedDuration::MAX)
        {
            set.insert(Condition::Expiring);
        }
    }
    if not_deployed(cert, snap) {
        set.insert(Condition::DeployMismatch);
    }
    set
}

/// True when the last deploy check of the installed certificate found an endpoint serving another
/// one (a check of an earlier certificate does not count: the new one is checked after its reload).
pub fn not_deployed(cert: &CertificateConfig, snap: &Snapshot) -> bool {
    let (Some(_), Some(check), Some(live)) = (&cert.verify_deploy, &snap.state.deploy, snap.live())
    else {
        return false;
    };
    !check.deployed && check.serial == live.cert.serial_hex
}

/// Decide and send the notifications of `cert` now; returns what was sent. Nothing happens
/// without a `[notify]` table.
pub async fn evaluate(rt: &Runtime, cert: &CertificateConfig) -> Vec<AlertEvent> {
    let Some(ncfg) = &rt.config.notify else {
        return Vec::new();
    };
    let now = Timestamp::now();
    let snap = rt.ledger.snapshot(&cert.name, &cert.output);
    let holding = holding(&rt.config, cert, &snap, now);
    let (sends, next) = notify::decide(&snap.state.notified, &holding, now);
    if sends.is_empty() && next == snap.state.notified {
        // Nothing to send and nothing to record (the usual case): no state write.
        return Vec::new();
    }
    let event = Event::Notified {
        holding: holding.clone(),
        at: now,
    };
    let before = match rt.ledger.record_change(&cert.name, event) {
        Ok((before, _)) => before,
        Err(e) => {
            // Without a record the same event would be sent again and again: send nothing now.
            warn!(cert = %cert.name, error = %e, "cannot record notifications in the state directory; none sent");
            return Vec::new();
        }
    };
    // Decided again on the state the event was applied to (under the state lock): another process
    // may have sent some of it since the snapshot.
    let (sends, _) = notify::decide(&before.notified, &holding, now);
    let mut sent = Vec::new();
    for s in sends {
        let event = build(&rt.config, cert, &snap, &s, now);
        notify::deliver(ncfg, &event).await;
        sent.push(event);
    }
    sent
}

/// What `condition` means for `cert` and what to do, in plain words.
fn raised_message(
    condition: Condition,
    cert: &CertificateConfig,
    snap: &Snapshot,
    cause: Option<&str>,
    next: Timestamp,
    now: Timestamp,
) -> String {
    let name = &cert.name;
    let live = snap.live();
    match condition {
        Condition::RenewalFailed => format!(
            "renewing {name} failed: {}; certkeeper tries again at {next}",
            cause.unwrap_or("unknown error")
        ),
        Condition::Paused => format!(
            "the CA refused {name} in a way that needs a human: {}; after fixing it run `certkeeper renew --force {name}` or `systemctl reload certkeeper` (otherwise tried again at {next})",
            cause.unwrap_or("unknown error")
        ),
        Condition::Expiring => {
            let na = live.map(|l| l.cert.not_after);
            let days = na.map_or(0, |t| t.duration_since(now).as_hours() / 24);
            format!(
                "{name} expires at {} (in {days} days) and is not renewed yet; next try at {next}{}",
                na.map(|t| t.to_string()).unwrap_or_default(),
                cause
                    .map(|c| format!("; last error: {c}"))
                    .unwrap_or_default()
            )
        }
        Condition::DeployMismatch => format!(
            "{name} (serial {}) is installed but not deployed: {}; check the reload hook and which files the server reads",
            live.map(|l| l.cert.serial_hex.as_str()).unwrap_or("none"),
            snap.state
                .deploy
                .as_ref()
                .map(|d| d.mismatches().join("; "))
                .unwrap_or_default()
        ),
    }
}

/// The event for `send`, with the facts of `snap`.
fn build(
    cfg: &Config,
    cert: &CertificateConfig,
    snap: &Snapshot,
    send: &Send,
    now: Timestamp,
) -> AlertEvent {
    let live = snap.live();
    let name = &cert.name;
    let cause = snap
        .state
        .retry
        .last_error
        .clone()
        .filter(|_| snap.state.retry.failures > 0);
    let next = due::due(cfg, cert, snap, now, false).at;
    let not_deployed = not_deployed(cert, snap);
    let (event, reminder, message, recovered_from) = match send {
        Send::Raised {
            condition,
            reminder,
        } => {
            let message = raised_message(*condition, cert, snap, cause.as_deref(), next, now);
            (condition.event_name(), *reminder, message, Vec::new())
        }
        Send::Recovered { from } => {
            let names: Vec<String> = from.iter().map(|c| c.event_name().to_string()).collect();
            let message = format!("{name} is fine again ({} ended)", names.join(", "));
            ("recovered", false, message, names)
        }
    };
    AlertEvent {
        event: event.to_string(),
        certificate: name.clone(),
        domains: cert.domains.clone(),
        reminder,
        at: now,
        message,
        serial: live.map(|l| l.cert.serial_hex.clone()),
        not_after: live.map(|l| l.cert.not_after),
        cause,
        next_try: Some(next),
        endpoints: snap
            .state
            .deploy
            .as_ref()
            .filter(|_| not_deployed || event == "recovered")
            .map(|d| d.endpoints.clone())
            .unwrap_or_default(),
        recovered_from,
        host: notify::hostname(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{DeployCheck, Installed, VerifiedCert};

    fn config(dir: &std::path::Path, extra: &str) -> Config {
        let notify = "[notify]\ncommand = \"true\"\nwarn_before = \"10d\"";
        crate::config::testing::one_certificate(dir, &format!("{extra}\n{notify}"))
    }

    fn snapshot(days_left: i64) -> Snapshot {
        let now = Timestamp::now();
        Snapshot {
            installed: Some(Installed::new(
                VerifiedCert {
                    serial_hex: "0b".into(),
                    not_before: now - jiff::SignedDuration::from_hours(24),
                    not_after: now + jiff::SignedDuration::from_hours(24 * days_left),
                    names: vec!["www.example.com".into()],
                    key_type: "ecdsa-p256".into(),
                    issuer_cn: None,
                    top_issuer_cn: None,
                },
                Vec::new(),
                Vec::new(),
                "/x".into(),
            )),
            ..Default::default()
        }
    }

    #[test]
    fn conditions_come_from_the_ledger_and_the_config() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path(), "");
        let cert = &cfg.certificates["www"];
        let now = Timestamp::now();
        assert!(holding(&cfg, cert, &snapshot(30), now).is_empty());
        assert_eq!(
            holding(&cfg, cert, &snapshot(9), now),
            [Condition::Expiring].into()
        );
        let mut snap = snapshot(30);
        snap.state.retry.failures = 2;
        assert_eq!(
            holding(&cfg, cert, &snap, now),
            [Condition::RenewalFailed].into()
        );
        snap.state.retry.paused = true;
        assert_eq!(holding(&cfg, cert, &snap, now), [Condition::Paused].into());

        // A failed deploy check counts only for the installed serial and with verify_deploy.
        let mut snap = snapshot(30);
        snap.state.deploy = Some(DeployCheck {
            serial: "0b".into(),
            deployed: false,
            ..Default::default()
        });
        assert!(
            holding(&cfg, cert, &snap, now).is_empty(),
            "no verify_deploy configured"
        );
        let cfg = config(
            tmp.path(),
            r#"verify_deploy = { connect = ["127.0.0.1:443"] }"#,
        );
        let cert = &cfg.certificates["www"];
        assert_eq!(
            holding(&cfg, cert, &snap, now),
            [Condition::DeployMismatch].into()
        );
        snap.state.deploy.as_mut().unwrap().serial = "0a".into();
        assert!(
            holding(&cfg, cert, &snap, now).is_empty(),
            "a check of the previous certificate says nothing about this one"
        );
    }
}
