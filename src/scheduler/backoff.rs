//! Retry backoff after failed issuance attempts.
//!
//! The state is a plain serde value the caller persists with the certificate's other state, so a
//! restart neither forgets a rate-limit nor hammers the CA.

use jiff::{SignedDuration, Timestamp};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::policy::add_sat;

/// The backoff delays after the 1st, 2nd, … failure as multiples of the first step; the last entry
/// repeats. With the default first step of one minute: 1 m, 2 m, 5 m, 10 m, 30 m, 1 h, 2 h, 4 h, 6 h.
///
/// Front-loaded: a transient glitch (DNS hiccup, CA 503) is retried within minutes, while a
/// persistent failure settles at one attempt every few hours.
const STEPS: [i32; 9] = [1, 2, 5, 10, 30, 60, 120, 240, 360];

/// How often a paused certificate (a CA problem that needs a human) is tried again: daily, and more
/// often as its expiry nears (see [`expiry_cap`]); at once on a reload or restart.
pub const PAUSE_RETRY: SignedDuration = SignedDuration::from_hours(24);

/// The smallest delay [`expiry_cap`] shortens a retry to, so an expiring certificate is retried
/// often but never in a tight loop against the CA.
pub const MIN_RETRY_DELAY: SignedDuration = SignedDuration::from_mins(5);

/// The retry schedule after failures: `[daemon] retry_first` (default 1 minute) scales
/// [`STEPS`], `[daemon] retry_max` (default 6 hours) caps each delay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The delay after the first failure.
    pub first: SignedDuration,
    /// The longest delay between two attempts of a failing certificate.
    pub max: SignedDuration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            first: SignedDuration::from_mins(1),
            max: SignedDuration::from_hours(6),
        }
    }
}

impl Backoff {
    /// The un-jittered delay after `failures` failed attempts (`failures >= 1`).
    pub fn delay(&self, failures: u32) -> SignedDuration {
        let idx = usize::try_from(failures.saturating_sub(1)).unwrap_or(usize::MAX);
        let step = STEPS[idx.min(STEPS.len() - 1)];
        self.first
            .checked_mul(step)
            .unwrap_or(SignedDuration::MAX)
            .min(self.max)
    }
}

/// The latest time a retry may be scheduled for a certificate expiring at `not_after`: a tenth of
/// the remaining lifetime from `now`, but at least [`MIN_RETRY_DELAY`].
///
/// The closer the expiry, the shorter the wait, so a failing renewal gets many more attempts before
/// the certificate runs out. Far from expiry (more than 2.5 days left) this never binds the
/// default backoff, which tops out at 6 hours; it does bind the daily retry of a paused
/// certificate in its last 10 days.
pub fn expiry_cap(now: Timestamp, not_after: Timestamp) -> Timestamp {
    let tenth = not_after.duration_since(now) / 10;
    add_sat(now, tenth.max(MIN_RETRY_DELAY))
}

/// The latest a wait the CA asks for (Retry-After, a rate limit) or an ARI window may push the next
/// attempt of a certificate whose live pair is valid over `lifetime`.
///
/// Before the latest renewal point ([`super::policy::latest_renewal_point`]: a third of the
/// lifetime left, half below 10 days), that point: the same rule that caps the renewal time. After
/// it: [`expiry_cap`]. With nothing installed: [`Backoff::max`] from now, since there is no lifetime
/// to protect but every hour without a certificate counts.
pub fn wait_limit(
    now: Timestamp,
    lifetime: Option<(Timestamp, Timestamp)>,
    backoff: &Backoff,
) -> Timestamp {
    match lifetime {
        None => add_sat(now, backoff.max),
        Some((not_before, not_after)) => {
            let latest = super::policy::latest_renewal_point(not_before, not_after);
            if latest > now {
                latest
            } else {
                expiry_cap(now, not_after)
            }
        }
    }
}

/// One failed attempt, with the failure policy's verdict, as the retry state records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// When the attempt failed.
    pub at: Timestamp,
    /// The whole error message, for `certkeeper status`.
    pub message: String,
    /// The CA refused in a way that needs a human (see the engine's failure policy): retry daily
    /// and on every reload instead of on the backoff schedule.
    pub pause: bool,
    /// The CA's own earliest retry time (Retry-After, end of a rate limit), already clamped with
    /// [`wait_limit`].
    pub ca_wait: Option<Timestamp>,
    /// `(not_before, not_after)` of the live certificate, if any.
    pub lifetime: Option<(Timestamp, Timestamp)>,
    /// The configured schedule.
    pub backoff: Backoff,
}

/// Failure and backoff state of one certificate.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RetryState {
    /// Failed attempts since the last success.
    pub failures: u32,
    /// When to try again; `None` after success.
    pub next_retry: Option<Timestamp>,
    /// The last failure was a CA problem that needs a human (e.g. a rejected identifier): tried
    /// again daily (sooner near expiry) and at once on every reload or restart.
    #[serde(alias = "permanent")]
    pub paused: bool,
    /// The last error message, shown by `certkeeper status`.
    pub last_error: Option<String>,
    /// The CA's own earliest retry time (`Retry-After`, end of a `rateLimited` window), clamped
    /// so it never passes the latest renewal point (a third of the lifetime left, half below 10
    /// days; see [`wait_limit`]). Unlike the backoff, it is not shortened further near expiry.
    #[serde(default)]
    pub server_retry_after: Option<Timestamp>,
    /// The retry fingerprint of the configuration these failures happened with.
    #[serde(default)]
    pub config_fingerprint: Option<String>,
}

impl RetryState {
    /// The state to use with the certificate's current retry fingerprint.
    ///
    /// Returns `self` when the fingerprint is unchanged; otherwise a fresh state (no failures, not
    /// paused) bound to `fingerprint`: the operator changed something that may fix the failure,
    /// so the next evaluation starts clean.
    pub fn for_config(self, fingerprint: &str) -> RetryState {
        if self.config_fingerprint.as_deref() == Some(fingerprint) {
            self
        } else {
            RetryState {
                config_fingerprint: Some(fingerprint.to_owned()),
                ..RetryState::default()
            }
        }
    }

    /// The state after the failed attempt `f`.
    ///
    /// The next try is `f.at +` the backoff delay (±10 % random jitter), or [`PAUSE_RETRY`] when
    /// paused; never later than [`expiry_cap`] when a certificate is live; never earlier than the
    /// CA's (clamped) wait.
    pub fn on_failure<R: Rng + ?Sized>(&self, f: &Failure, rng: &mut R) -> RetryState {
        let failures = self.failures.saturating_add(1);
        let delay = if f.pause {
            PAUSE_RETRY
        } else {
            f.backoff.delay(failures)
        };
        let spread_ms = i64::try_from(delay.as_millis() / 10).unwrap_or(0);
        let jitter = SignedDuration::from_millis(rng.random_range(-spread_ms..=spread_ms));
        let mut next = add_sat(f.at, delay + jitter);
        if let Some((_, not_after)) = f.lifetime {
            next = next.min(expiry_cap(f.at, not_after));
        }
        let server_retry_after = f.ca_wait.filter(|at| *at > f.at);
        if let Some(server) = server_retry_after {
            next = next.max(server);
        }
        RetryState {
            failures,
            next_retry: Some(next),
            paused: f.pause,
            last_error: Some(f.message.clone()),
            server_retry_after,
            config_fingerprint: self.config_fingerprint.clone(),
        }
    }

    /// The state after a successful issuance: no failures, nothing pending.
    pub fn on_success(&self) -> RetryState {
        RetryState {
            config_fingerprint: self.config_fingerprint.clone(),
            ..RetryState::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("test timestamp")
    }

    fn failure(at: Timestamp) -> Failure {
        Failure {
            at,
            message: "boom".into(),
            pause: false,
            ca_wait: None,
            lifetime: None,
            backoff: Backoff::default(),
        }
    }

    #[test]
    fn backoff_sequence_is_front_loaded_and_capped() {
        let now = ts("2026-05-01T00:00:00Z");
        let expected_mins = [1, 2, 5, 10, 30, 60, 120, 240, 360, 360, 360];
        let mut rng = StdRng::seed_from_u64(11);
        let mut state = RetryState::default();
        for (i, mins) in expected_mins.iter().enumerate() {
            state = state.on_failure(&failure(now), &mut rng);
            assert_eq!(state.failures as usize, i + 1);
            let next = state
                .next_retry
                .expect("transient failure schedules a retry");
            let delay_ms = next.duration_since(now).as_millis();
            let nominal = i128::from(*mins) * 60_000;
            assert!(
                delay_ms >= nominal * 9 / 10 && delay_ms <= nominal * 11 / 10,
                "failure {}: delay {delay_ms} ms, expected ~{nominal} ms",
                i + 1
            );
            assert!(!state.paused);
        }
        let b = Backoff::default();
        assert_eq!(b.delay(u32::MAX), SignedDuration::from_hours(6));
        assert_eq!(b.delay(0), SignedDuration::from_mins(1));
    }

    #[test]
    fn the_schedule_scales_with_the_first_step_and_stops_at_the_max() {
        let b = Backoff {
            first: SignedDuration::from_secs(2),
            max: SignedDuration::from_secs(30),
        };
        let delays: Vec<i64> = (1..=6).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(delays, [2, 4, 10, 20, 30, 30]);
    }

    #[test]
    fn jitter_varies_the_delay() {
        let now = ts("2026-05-01T00:00:00Z");
        let mut rng = StdRng::seed_from_u64(2);
        let delays: std::collections::BTreeSet<_> = (0..20)
            .map(|_| {
                RetryState::default()
                    .on_failure(&failure(now), &mut rng)
                    .next_retry
            })
            .collect();
        assert!(delays.len() > 1, "no jitter applied");
    }

    #[test]
    fn retry_after_wins_when_later() {
        let now = ts("2026-05-01T00:00:00Z");
        let server = ts("2026-05-01T03:00:00Z");
        let s = RetryState::default().on_failure(
            &Failure {
                ca_wait: Some(server),
                ..failure(now)
            },
            &mut StdRng::seed_from_u64(1),
        );
        assert_eq!(s.next_retry, Some(server));
        assert_eq!(s.server_retry_after, Some(server));

        // An earlier Retry-After does not shorten the backoff.
        let early = ts("2026-05-01T00:00:10Z");
        let s = RetryState::default().on_failure(
            &Failure {
                ca_wait: Some(early),
                ..failure(now)
            },
            &mut StdRng::seed_from_u64(1),
        );
        assert!(s.next_retry.expect("retry") > add_sat(now, SignedDuration::from_secs(50)));
    }

    #[test]
    fn a_pause_is_retried_daily_and_sooner_near_expiry() {
        let now = ts("2026-05-01T00:00:00Z");
        let s = RetryState::default()
            .for_config("fp-a")
            .on_failure(&failure(now), &mut StdRng::seed_from_u64(1))
            .on_failure(
                &Failure {
                    pause: true,
                    message: "rejectedIdentifier".into(),
                    ..failure(now)
                },
                &mut StdRng::seed_from_u64(1),
            );
        assert!(s.paused);
        assert_eq!(s.failures, 2);
        assert_eq!(s.last_error.as_deref(), Some("rejectedIdentifier"));
        let next = s.next_retry.expect("a paused certificate is still retried");
        let hours = next.duration_since(now).as_hours();
        assert!((21..=26).contains(&hours), "{hours} h");

        // Five days before expiry: half a day, not a whole one.
        let near = RetryState::default().on_failure(
            &Failure {
                pause: true,
                lifetime: Some((ts("2026-02-05T00:00:00Z"), ts("2026-05-06T00:00:00Z"))),
                ..failure(now)
            },
            &mut StdRng::seed_from_u64(1),
        );
        assert_eq!(near.next_retry, Some(ts("2026-05-01T12:00:00Z")));

        // Same config: still paused. New config: a clean slate.
        let same = s.clone().for_config("fp-a");
        assert_eq!(same, s);
        let fresh = s.for_config("fp-b");
        assert!(!fresh.paused);
        assert_eq!(fresh.failures, 0);
        assert_eq!(fresh.config_fingerprint.as_deref(), Some("fp-b"));
    }

    #[test]
    fn success_resets() {
        let now = ts("2026-05-01T00:00:00Z");
        let s = RetryState::default()
            .for_config("fp")
            .on_failure(
                &Failure {
                    ca_wait: Some(ts("2026-05-02T00:00:00Z")),
                    ..failure(now)
                },
                &mut StdRng::seed_from_u64(1),
            )
            .on_success();
        assert_eq!(
            s,
            RetryState {
                config_fingerprint: Some("fp".into()),
                ..RetryState::default()
            }
        );
    }

    #[test]
    fn expiry_cap_is_a_tenth_with_a_floor() {
        let now = ts("2026-05-01T00:00:00Z");
        assert_eq!(
            expiry_cap(now, ts("2026-05-11T00:00:00Z")),
            ts("2026-05-02T00:00:00Z")
        );
        assert_eq!(
            expiry_cap(now, ts("2026-05-01T00:20:00Z")),
            ts("2026-05-01T00:05:00Z")
        );
        assert_eq!(
            expiry_cap(now, ts("2026-04-01T00:00:00Z")),
            ts("2026-05-01T00:05:00Z")
        );
        // A backoff retry is never later than a tenth of the remaining lifetime.
        let s = RetryState {
            failures: 8,
            ..Default::default()
        }
        .on_failure(
            &Failure {
                lifetime: Some((ts("2026-02-01T00:00:00Z"), ts("2026-05-01T20:00:00Z"))),
                ..failure(now)
            },
            &mut StdRng::seed_from_u64(1),
        );
        assert_eq!(s.next_retry, Some(ts("2026-05-01T02:00:00Z")));
    }

    #[test]
    fn ca_waits_are_limited_to_the_last_third_of_the_lifetime() {
        let b = Backoff::default();
        let (nb, na) = (ts("2026-01-01T00:00:00Z"), ts("2026-04-01T00:00:00Z"));
        // 90 days: a third is left on March 2.
        let early = ts("2026-02-01T00:00:00Z");
        assert_eq!(
            wait_limit(early, Some((nb, na)), &b),
            ts("2026-03-02T00:00:00Z")
        );
        // Past that point: a tenth of what remains.
        let late = ts("2026-03-22T00:00:00Z");
        assert_eq!(
            wait_limit(late, Some((nb, na)), &b),
            ts("2026-03-23T00:00:00Z")
        );
        // Nothing installed: the longest backoff step.
        assert_eq!(wait_limit(early, None, &b), ts("2026-02-01T06:00:00Z"));
    }

    #[test]
    fn ca_waits_stop_at_the_renewal_point_of_short_certificates() {
        let b = Backoff::default();
        // 6 days: half is left on January 4, which is also the default renewal point.
        let (nb, na) = (ts("2026-01-01T00:00:00Z"), ts("2026-01-07T00:00:00Z"));
        let early = ts("2026-01-02T00:00:00Z");
        let limit = wait_limit(early, Some((nb, na)), &b);
        assert_eq!(limit, ts("2026-01-04T00:00:00Z"));
        assert_eq!(limit, crate::scheduler::renewal_point(nb, na, None));
        assert_eq!(limit, crate::scheduler::latest_renewal_point(nb, na));
        // Past it: a tenth of what remains (3 days → 7.2 hours).
        assert_eq!(
            wait_limit(limit, Some((nb, na)), &b),
            ts("2026-01-04T07:12:00Z")
        );
        // 10 days: the third rule again, also for the default renewal point.
        let na = ts("2026-01-11T00:00:00Z");
        let limit = wait_limit(early, Some((nb, na)), &b);
        assert_eq!(limit, nb + SignedDuration::from_secs(10 * 86_400 * 2 / 3));
        assert_eq!(limit, crate::scheduler::renewal_point(nb, na, None));
    }

    #[test]
    fn serde_roundtrip_and_old_state_without_new_fields() {
        let now = ts("2026-05-01T00:00:00Z");
        let s = RetryState::default().for_config("abc").on_failure(
            &Failure {
                ca_wait: Some(ts("2026-05-01T02:00:00Z")),
                ..failure(now)
            },
            &mut StdRng::seed_from_u64(1),
        );
        let json = serde_json::to_string(&s).expect("serialize");
        let back: RetryState = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, s);

        let old: RetryState = serde_json::from_str(
            r#"{"failures":2,"next_retry":"2026-05-01T00:05:00Z","permanent":false,"last_error":"x"}"#,
        )
        .expect("old state parses");
        assert_eq!(old.failures, 2);
        assert_eq!(old.next_retry, Some(ts("2026-05-01T00:05:00Z")));
        assert_eq!(old.server_retry_after, None);
        assert!(!old.paused);
    }
}
