//! Retry backoff after failed issuance attempts.
//!
//! The state is a plain serde value the caller persists with the certificate's other state, so a
//! restart neither forgets a rate-limit nor hammers the CA.

use jiff::{SignedDuration, Timestamp};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::policy::add_sat;

/// The backoff delay after the 1st, 2nd, … failure; the last entry repeats.
///
/// Front-loaded: a transient glitch (DNS hiccup, CA 503) is retried within minutes, while a
/// persistent failure settles at one attempt every 6 hours.
pub const BACKOFF_SCHEDULE: [SignedDuration; 9] = [
    SignedDuration::from_mins(1),
    SignedDuration::from_mins(2),
    SignedDuration::from_mins(5),
    SignedDuration::from_mins(10),
    SignedDuration::from_mins(30),
    SignedDuration::from_hours(1),
    SignedDuration::from_hours(2),
    SignedDuration::from_hours(4),
    SignedDuration::from_hours(6),
];

/// Test-only: the environment variable that shrinks the backoff schedule (see [`test_scaled`]).
pub const TEST_BACKOFF_SCALE_ENV: &str = "CERTKEEPER_TEST_BACKOFF_SCALE";

/// Test-only: `delay` multiplied by `CERTKEEPER_TEST_BACKOFF_SCALE` (a factor in `(0, 1]`, read once).
///
/// Lets the fault tests watch a daemon back off and recover within seconds instead of minutes. Unset,
/// unparsable or out-of-range values leave the schedule as documented; never set it in production.
pub fn test_scaled(delay: SignedDuration) -> SignedDuration {
    static SCALE: std::sync::OnceLock<Option<f64>> = std::sync::OnceLock::new();
    let scale = SCALE.get_or_init(|| {
        std::env::var(TEST_BACKOFF_SCALE_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|f| *f > 0.0 && *f <= 1.0)
    });
    match scale {
        Some(f) => SignedDuration::from_secs_f64(delay.as_secs_f64() * f),
        None => delay,
    }
}

/// Smallest retry delay near expiry (see [`expiry_cap`]).
pub const MIN_RETRY_DELAY: SignedDuration = SignedDuration::from_mins(1);

/// The un-jittered backoff delay after `failures` failed attempts (`failures >= 1`).
pub fn backoff_delay(failures: u32) -> SignedDuration {
    let idx = usize::try_from(failures.saturating_sub(1)).unwrap_or(usize::MAX);
    BACKOFF_SCHEDULE[idx.min(BACKOFF_SCHEDULE.len() - 1)]
}

/// The latest time a retry may be scheduled for a certificate expiring at `not_after`.
///
/// `now + max(1 min, (not_after - now) / 4)`: the closer the expiry, the shorter the wait, so a
/// failing renewal gets several more attempts before the certificate runs out. Far from expiry
/// (more than a day left) this never binds, because the backoff tops out at 6 hours.
pub fn expiry_cap(now: Timestamp, not_after: Timestamp) -> Timestamp {
    let quarter = not_after.duration_since(now) / 4;
    add_sat(now, quarter.max(MIN_RETRY_DELAY))
}

/// Failure and backoff state of one certificate.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RetryState {
    /// Failed attempts since the last success.
    pub failures: u32,
    /// When to try again; `None` after success or after a permanent failure.
    pub next_retry: Option<Timestamp>,
    /// The last failure was permanent (e.g. a rejected identifier): no retry until the
    /// certificate's configuration changes (see [`RetryState::for_config`]).
    pub permanent: bool,
    /// The last error message, shown by `certkeeper status`.
    pub last_error: Option<String>,
    /// The CA's own earliest retry time (`Retry-After`, end of a `rateLimited` window). Unlike the
    /// exponential backoff, this is never shortened near expiry.
    #[serde(default)]
    pub server_retry_after: Option<Timestamp>,
    /// [`super::config_fingerprint`] of the configuration these failures happened with.
    #[serde(default)]
    pub config_fingerprint: Option<String>,
}

impl RetryState {
    /// The state to use with the certificate's current configuration fingerprint.
    ///
    /// Returns `self` when the fingerprint is unchanged; otherwise a fresh state (no failures, not
    /// permanent) bound to `fingerprint`. This is how a permanent failure is lifted: the operator
    /// fixes the names, key type, issuer or profile, and the next evaluation starts clean.
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

    /// The state after a failed attempt at `now`.
    ///
    /// - `permanent`: no retry is scheduled (`next_retry = None, permanent = true`).
    /// - otherwise the next retry is `now +` [`backoff_delay`] with ±10 % random jitter, or the
    ///   CA's `retry_after` (Retry-After header or end of a rate limit) when that is later.
    pub fn on_failure<R: Rng + ?Sized>(
        &self,
        now: Timestamp,
        retry_after: Option<Timestamp>,
        permanent: bool,
        msg: impl Into<String>,
        rng: &mut R,
    ) -> RetryState {
        let failures = self.failures.saturating_add(1);
        let base = RetryState {
            failures,
            last_error: Some(msg.into()),
            config_fingerprint: self.config_fingerprint.clone(),
            ..RetryState::default()
        };
        if permanent {
            return RetryState {
                permanent: true,
                next_retry: None,
                ..base
            };
        }
        let delay = test_scaled(backoff_delay(failures));
        let spread_ms = i64::try_from(delay.as_millis() / 10).unwrap_or(0);
        let jitter = SignedDuration::from_millis(rng.random_range(-spread_ms..=spread_ms));
        let mut next = add_sat(now, delay + jitter);
        let server_retry_after = retry_after.filter(|at| *at > now);
        if let Some(server) = server_retry_after {
            next = next.max(server);
        }
        RetryState {
            next_retry: Some(next),
            server_retry_after,
            ..base
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

    #[test]
    fn backoff_sequence_is_front_loaded_and_capped() {
        let now = ts("2026-05-01T00:00:00Z");
        let expected_mins = [1, 2, 5, 10, 30, 60, 120, 240, 360, 360, 360];
        let mut rng = StdRng::seed_from_u64(11);
        let mut state = RetryState::default();
        for (i, mins) in expected_mins.iter().enumerate() {
            state = state.on_failure(now, None, false, format!("fail {i}"), &mut rng);
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
            assert!(!state.permanent);
        }
        assert_eq!(backoff_delay(u32::MAX), SignedDuration::from_hours(6));
        assert_eq!(backoff_delay(0), SignedDuration::from_mins(1));
    }

    #[test]
    fn jitter_varies_the_delay() {
        let now = ts("2026-05-01T00:00:00Z");
        let mut rng = StdRng::seed_from_u64(2);
        let delays: std::collections::BTreeSet<_> = (0..20)
            .map(|_| {
                RetryState::default()
                    .on_failure(now, None, false, "x", &mut rng)
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
            now,
            Some(server),
            false,
            "rateLimited",
            &mut StdRng::seed_from_u64(1),
        );
        assert_eq!(s.next_retry, Some(server));
        assert_eq!(s.server_retry_after, Some(server));

        // An earlier Retry-After does not shorten the backoff.
        let early = ts("2026-05-01T00:00:10Z");
        let s = RetryState::default().on_failure(
            now,
            Some(early),
            false,
            "503",
            &mut StdRng::seed_from_u64(1),
        );
        assert!(s.next_retry.expect("retry") > add_sat(now, SignedDuration::from_secs(50)));
    }

    #[test]
    fn permanent_failure_stops_until_config_changes() {
        let now = ts("2026-05-01T00:00:00Z");
        let s = RetryState::default()
            .for_config("fp-a")
            .on_failure(now, None, false, "timeout", &mut StdRng::seed_from_u64(1))
            .on_failure(
                now,
                None,
                true,
                "rejectedIdentifier",
                &mut StdRng::seed_from_u64(1),
            );
        assert!(s.permanent);
        assert_eq!(s.next_retry, None);
        assert_eq!(s.failures, 2);
        assert_eq!(s.last_error.as_deref(), Some("rejectedIdentifier"));

        // Same config: still stopped.
        let same = s.clone().for_config("fp-a");
        assert_eq!(same, s);
        // New config: a clean slate.
        let fresh = s.for_config("fp-b");
        assert!(!fresh.permanent);
        assert_eq!(fresh.failures, 0);
        assert_eq!(fresh.config_fingerprint.as_deref(), Some("fp-b"));
    }

    #[test]
    fn success_resets() {
        let now = ts("2026-05-01T00:00:00Z");
        let s = RetryState::default()
            .for_config("fp")
            .on_failure(
                now,
                Some(ts("2026-05-02T00:00:00Z")),
                false,
                "x",
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
    fn expiry_cap_is_a_quarter_with_one_minute_floor() {
        let now = ts("2026-05-01T00:00:00Z");
        assert_eq!(
            expiry_cap(now, ts("2026-05-01T04:00:00Z")),
            ts("2026-05-01T01:00:00Z")
        );
        assert_eq!(
            expiry_cap(now, ts("2026-05-01T00:02:00Z")),
            ts("2026-05-01T00:01:00Z")
        );
        assert_eq!(
            expiry_cap(now, ts("2026-04-01T00:00:00Z")),
            ts("2026-05-01T00:01:00Z")
        );
    }

    #[test]
    fn serde_roundtrip_and_old_state_without_new_fields() {
        let now = ts("2026-05-01T00:00:00Z");
        let s = RetryState::default().for_config("abc").on_failure(
            now,
            Some(ts("2026-05-01T02:00:00Z")),
            false,
            "rateLimited",
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
    }
}
