//! The one rule that decides what to notify: a pure function of what was notified before, the
//! conditions that hold now, and the time.
//!
//! - A condition that starts to hold is notified once (`renewal_failed`, `expiring`,
//!   `deploy_mismatch`, `paused`).
//! - While it keeps holding, it is notified again as a reminder at most every [`REMINDER_EVERY`].
//! - When none holds any more after some did, `recovered` is notified once, naming what ended.
//!
//! What was notified ([`Notified`]) is certificate state kept in the ledger, so a restart (or a
//! `certkeeper renew` next to the daemon) does not send again.

use std::collections::{BTreeMap, BTreeSet};

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

/// A reminder for a condition that still holds is sent at most this often.
pub const REMINDER_EVERY: SignedDuration = SignedDuration::from_hours(24);

/// Something wrong with a certificate that a human should hear about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// The last renewal attempt failed (certkeeper retries with backoff).
    RenewalFailed,
    /// Not After is within `warn_before` and the certificate is still not renewed.
    Expiring,
    /// The certificate is installed, but an endpoint of `verify_deploy` serves another one.
    DeployMismatch,
    /// The CA refused in a way that needs a human; retried daily and on every reload.
    Paused,
}

impl Condition {
    /// The event name, as in the JSON `event` field and `CERTKEEPER_EVENT`.
    pub fn event_name(self) -> &'static str {
        match self {
            Self::RenewalFailed => "renewal_failed",
            Self::Expiring => "expiring",
            Self::DeployMismatch => "deploy_mismatch",
            Self::Paused => "paused",
        }
    }
}

/// What was last notified about a certificate: each condition that held then, with when it was
/// last sent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Notified {
    /// The conditions notified and still holding at the last decision, and when each was last sent.
    pub active: BTreeMap<Condition, Timestamp>,
}

/// One notification to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Send {
    /// A condition started to hold (or, with `reminder`, still holds a day later).
    Raised {
        /// Which.
        condition: Condition,
        /// True for a daily reminder of a condition already notified.
        reminder: bool,
    },
    /// No condition holds any more; these held before.
    Recovered {
        /// The conditions that ended.
        from: Vec<Condition>,
    },
}

/// What to send now, and what is then notified, given what was notified before (`prev`) and the
/// conditions that hold `now`.
pub fn decide(
    prev: &Notified,
    holding: &BTreeSet<Condition>,
    now: Timestamp,
) -> (Vec<Send>, Notified) {
    let mut sends = Vec::new();
    let mut next = Notified::default();
    for &condition in holding {
        let sent_at = match prev.active.get(&condition) {
            None => {
                sends.push(Send::Raised {
                    condition,
                    reminder: false,
                });
                now
            }
            Some(&last) if now.duration_since(last) >= REMINDER_EVERY => {
                sends.push(Send::Raised {
                    condition,
                    reminder: true,
                });
                now
            }
            Some(&last) => last,
        };
        next.active.insert(condition, sent_at);
    }
    if holding.is_empty() && !prev.active.is_empty() {
        sends.push(Send::Recovered {
            from: prev.active.keys().copied().collect(),
        });
    }
    (sends, next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Condition::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn set(c: &[Condition]) -> BTreeSet<Condition> {
        c.iter().copied().collect()
    }

    fn raised(condition: Condition, reminder: bool) -> Send {
        Send::Raised {
            condition,
            reminder,
        }
    }

    #[test]
    fn nothing_holds_nothing_is_sent() {
        let (sends, next) = decide(&Notified::default(), &set(&[]), t("2026-01-01T00:00:00Z"));
        assert!(sends.is_empty());
        assert_eq!(next, Notified::default());
    }

    #[test]
    fn one_event_per_state_change_and_a_daily_reminder() {
        let t0 = t("2026-01-01T00:00:00Z");
        let (sends, n1) = decide(&Notified::default(), &set(&[RenewalFailed]), t0);
        assert_eq!(sends, [raised(RenewalFailed, false)]);
        // Still failing an hour later, and 23h59m later: nothing.
        for later in ["2026-01-01T01:00:00Z", "2026-01-01T23:59:59Z"] {
            let (sends, n) = decide(&n1, &set(&[RenewalFailed]), t(later));
            assert!(sends.is_empty(), "{later}");
            assert_eq!(n, n1, "the last-sent time does not move without a send");
        }
        // A day later: one reminder, and the next one a day after that.
        let t1 = t("2026-01-02T00:00:00Z");
        let (sends, n2) = decide(&n1, &set(&[RenewalFailed]), t1);
        assert_eq!(sends, [raised(RenewalFailed, true)]);
        assert_eq!(n2.active[&RenewalFailed], t1);
        let (sends, _) = decide(&n2, &set(&[RenewalFailed]), t("2026-01-02T12:00:00Z"));
        assert!(sends.is_empty());
    }

    #[test]
    fn a_new_condition_is_sent_while_another_still_holds() {
        let t0 = t("2026-01-01T00:00:00Z");
        let (_, n1) = decide(&Notified::default(), &set(&[RenewalFailed]), t0);
        let t1 = t("2026-01-01T06:00:00Z");
        let (sends, n2) = decide(&n1, &set(&[RenewalFailed, Expiring]), t1);
        assert_eq!(sends, [raised(Expiring, false)]);
        assert_eq!(n2.active[&RenewalFailed], t0);
        assert_eq!(n2.active[&Expiring], t1);
        // The failure turns into a pause: the pause is news, the failure is dropped silently.
        let (sends, n3) = decide(&n2, &set(&[Paused, Expiring]), t1);
        assert_eq!(sends, [raised(Paused, false)]);
        assert!(!n3.active.contains_key(&RenewalFailed));
    }

    #[test]
    fn recovered_once_when_nothing_holds_any_more() {
        let t0 = t("2026-01-01T00:00:00Z");
        let (_, n1) = decide(&Notified::default(), &set(&[DeployMismatch, Expiring]), t0);
        let (sends, n2) = decide(&n1, &set(&[]), t("2026-01-01T00:10:00Z"));
        assert_eq!(
            sends,
            [Send::Recovered {
                from: vec![Expiring, DeployMismatch]
            }]
        );
        assert_eq!(n2, Notified::default());
        let (sends, _) = decide(&n2, &set(&[]), t("2026-01-05T00:00:00Z"));
        assert!(sends.is_empty(), "recovered is sent once");
        // Only part of it ends: no recovered yet.
        let (sends, _) = decide(&n1, &set(&[Expiring]), t("2026-01-01T00:10:00Z"));
        assert!(sends.is_empty());
    }

    #[test]
    fn a_clock_that_went_back_sends_no_reminder() {
        let t0 = t("2026-01-02T00:00:00Z");
        let (_, n1) = decide(&Notified::default(), &set(&[Paused]), t0);
        let (sends, n2) = decide(&n1, &set(&[Paused]), t("2026-01-01T00:00:00Z"));
        assert!(sends.is_empty());
        assert_eq!(n2, n1);
    }

    #[test]
    fn notified_state_roundtrips_as_json() {
        let (_, n) = decide(
            &Notified::default(),
            &set(&[Paused, DeployMismatch]),
            t("2026-01-01T00:00:00Z"),
        );
        let json = serde_json::to_string(&n).unwrap();
        assert!(json.contains("\"deploy_mismatch\""), "{json}");
        assert_eq!(serde_json::from_str::<Notified>(&json).unwrap(), n);
    }
}
