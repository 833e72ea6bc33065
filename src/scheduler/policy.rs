//! When a certificate should be renewed: the default renewal point, jitter, ARI windows and the
//! combined [`due`] decision.
//!
//! Everything here is pure: the caller passes the clock (`now`) and the random source, so the same
//! inputs always give the same answer.

use std::fmt;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use rand::Rng;

use super::backoff::RetryState;

/// The default lead time before Not After when the certificate gives no other reason: 30 days.
pub const DEFAULT_RENEW_BEFORE: SignedDuration = SignedDuration::from_hours(30 * 24);

/// The upper bound of the random jitter applied before a renewal point: one hour.
pub const MAX_JITTER: SignedDuration = SignedDuration::from_hours(1);

/// Lower bound for the delay until the next ARI fetch (RFC 9773 `Retry-After`).
pub const ARI_REFETCH_MIN: SignedDuration = SignedDuration::from_hours(1);

/// Upper bound for the delay until the next ARI fetch.
pub const ARI_REFETCH_MAX: SignedDuration = SignedDuration::from_hours(24);

/// Delay until the next ARI fetch when the CA sent no `Retry-After`.
pub const ARI_REFETCH_DEFAULT: SignedDuration = SignedDuration::from_hours(6);

/// Adds a signed duration to a timestamp, saturating at the ends of jiff's range.
pub(crate) fn add_sat(ts: Timestamp, d: SignedDuration) -> Timestamp {
    ts.checked_add(d).unwrap_or(if d.is_negative() {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    })
}

/// Converts a `std` duration, saturating at [`SignedDuration::MAX`].
pub(crate) fn signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

/// The lifetime `not_after - not_before`, or zero when the dates are inverted.
fn lifetime(not_before: Timestamp, not_after: Timestamp) -> SignedDuration {
    let l = not_after.duration_since(not_before);
    if l.is_negative() {
        SignedDuration::ZERO
    } else {
        l
    }
}

/// Certificates with a lifetime shorter than this are renewed when half of it remains, longer ones
/// when a third remains (see [`latest_renewal_point`]): 10 days, as in certbot and lego.
pub const SHORT_LIFETIME: SignedDuration = SignedDuration::from_hours(10 * 24);

/// The latest moment a certificate valid from `not_before` to `not_after` may be renewed: when only
/// a third of its lifetime remains, or half of it for a lifetime shorter than [`SHORT_LIFETIME`].
///
/// This is the one home of the "how much lifetime must be left" rule. The default
/// [`renewal_point`] is never later than it, and no wait may push a renewal past it: neither a
/// CA's Retry-After (see [`super::backoff::wait_limit`]) nor an ARI window (see [`due`]).
///
/// A short-lived certificate keeps half its lifetime because a few days leave little room for a
/// failing renewal to be noticed and fixed (certbot and lego renew them at half too).
pub fn latest_renewal_point(not_before: Timestamp, not_after: Timestamp) -> Timestamp {
    let l = lifetime(not_before, not_after);
    let used = if l < SHORT_LIFETIME { l / 2 } else { l * 2 / 3 };
    add_sat(not_before, used)
}

/// The moment a certificate valid from `not_before` to `not_after` should be renewed (no jitter).
///
/// The product rule is "renew 30 days before Not After by default, but always while at least a
/// third of the lifetime remains (half, below 10 days)". With `L = not_after - not_before` and
/// `latest =` [`latest_renewal_point`] (`not_before + 2L/3`, or `not_before + L/2` when
/// `L < 10 d`):
///
/// - `before = renew_before.unwrap_or(min(30 d, not_after - latest))`;
/// - `point = min(not_after - before, latest)` (90-day cert: 30 d before; 45-day: 15 d; 10-day:
///   3.3 d; 9.9-day: 4.95 d; 6-day: 3 d; 365-day: ~121.7 d before, because a third of a year is
///   more than 30 days). An explicit `renew_before` can therefore only move the renewal
///   *earlier* than `latest`, never later;
/// - **floor**: the point is never earlier than `not_before + L/10`. Without it, a `renew_before`
///   longer than the lifetime (say `"30d"` on a 6-day certificate) would put the renewal point
///   before the new certificate's own Not Before, so every freshly issued certificate would be due
///   again at once: a renewal loop that burns through the CA's rate limits. With the floor, each
///   certificate is used for at least a tenth of its lifetime.
///
/// A certificate whose Not After is not after its Not Before has no usable lifetime; its point is
/// `not_before`, so it is renewed at once.
pub fn renewal_point(
    not_before: Timestamp,
    not_after: Timestamp,
    renew_before: Option<Duration>,
) -> Timestamp {
    let l = lifetime(not_before, not_after);
    if l.is_zero() {
        return not_before;
    }
    let latest = latest_renewal_point(not_before, not_after);
    let before = match renew_before {
        Some(d) => signed(d),
        None => DEFAULT_RENEW_BEFORE.min(not_after.duration_since(latest)),
    };
    let by_lead_time = add_sat(not_after, -before);
    let floor = add_sat(not_before, l / 10);
    by_lead_time.min(latest).max(floor)
}

/// The largest jitter used for a certificate of this lifetime: `min(1 h, 1 % of the lifetime)`.
pub fn max_jitter(not_before: Timestamp, not_after: Timestamp) -> SignedDuration {
    MAX_JITTER.min(lifetime(not_before, not_after) / 100)
}

/// Moves `point` earlier by a random amount in `[0, max_jitter]`, never later.
///
/// Jitter spreads the renewals of many certificates issued at the same moment (and of many hosts
/// running certkeeper) so they don't hit the CA in the same second. The result depends only on
/// the random source, so a seeded RNG (see [`super::stable_rng`]) gives a reproducible schedule.
pub fn jitter_earlier<R: Rng + ?Sized>(
    point: Timestamp,
    max_jitter: SignedDuration,
    rng: &mut R,
) -> Timestamp {
    let max_ms = max_jitter.as_millis();
    if max_ms <= 0 {
        return point;
    }
    let max_ms = i64::try_from(max_ms).unwrap_or(i64::MAX);
    let pick = rng.random_range(0..=max_ms);
    add_sat(point, -SignedDuration::from_millis(pick))
}

/// The renewal time for an ARI window (RFC 9773 §4.2), or `None` when the window is invalid.
///
/// Picks a uniformly random time in `[start, end]`. If the window has already closed
/// (`end <= now`) or the pick lies in the past, the answer is `now`: renew immediately. A window
/// whose end is before its start is invalid; the caller then falls back to [`renewal_point`].
///
/// RFC 9773 lets a client keep its pick until the window changes; seed the RNG from the window
/// (see [`super::stable_rng`]) to get the same pick on every re-evaluation.
pub fn ari_renewal_time<R: Rng + ?Sized>(
    start: Timestamp,
    end: Timestamp,
    now: Timestamp,
    rng: &mut R,
) -> Option<Timestamp> {
    if end < start {
        return None;
    }
    if end <= now {
        return Some(now);
    }
    let width_ms = i64::try_from(end.duration_since(start).as_millis()).unwrap_or(i64::MAX);
    let pick = add_sat(
        start,
        SignedDuration::from_millis(rng.random_range(0..=width_ms)),
    );
    Some(pick.max(now))
}

/// When to fetch the ARI `renewalInfo` again, given the CA's `Retry-After` (RFC 9773 §4.3).
///
/// The delay is the CA's `retry_after - now`, or 6 hours when the CA sent none, clamped to
/// `[1 h, 24 h]`: a CA asking for a re-poll every few seconds is not obeyed, and a very long
/// Retry-After does not stop us from noticing a revocation-driven window change for days.
pub fn ari_refetch_at(now: Timestamp, retry_after: Option<Timestamp>) -> Timestamp {
    let delay = retry_after
        .map(|at| at.duration_since(now))
        .unwrap_or(ARI_REFETCH_DEFAULT)
        .clamp(ARI_REFETCH_MIN, ARI_REFETCH_MAX);
    add_sat(now, delay)
}

/// What the scheduler knows about one certificate when deciding when it is due.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CertFacts {
    /// `(not_before, not_after)` of the installed certificate; `None` when nothing is on disk.
    pub installed: Option<(Timestamp, Timestamp)>,
    /// The configured names, key type, issuers or profile differ from the installed certificate's
    /// (compare [`super::config_fingerprint`] values).
    pub fingerprint_changed: bool,
    /// The CA's ARI suggested window `(start, end)`, when it offers one.
    pub ari_window: Option<(Timestamp, Timestamp)>,
    /// Failure/backoff state of previous attempts.
    pub retry: RetryState,
    /// The certificate's `renew_before`, when configured.
    pub renew_before: Option<Duration>,
    /// The daemon just started or reloaded (or an operator asked): a paused certificate is tried
    /// at once instead of at its daily retry time.
    pub retry_paused_now: bool,
}

/// Why a certificate is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DueReason {
    /// No certificate is installed yet.
    Missing,
    /// Names, key type, issuers or profile changed since the installed certificate was issued.
    ConfigChanged,
    /// certkeeper's own renewal time: the [`renewal_point`] with jitter.
    Expiring {
        /// The unjittered renewal point.
        renew_point: Timestamp,
        /// Not After of the installed certificate.
        not_after: Timestamp,
        /// The CA's ARI window `(start, end)` when it starts at or after certkeeper's own renewal
        /// time and was therefore not followed: ARI can make a renewal earlier, never later.
        ari_later: Option<(Timestamp, Timestamp)>,
    },
    /// The CA's ARI suggested window, which starts before certkeeper's own renewal time.
    AriWindow {
        /// Window start.
        start: Timestamp,
        /// Window end.
        end: Timestamp,
        /// The window ends after certkeeper's own renewal time, so the renewal was picked in the
        /// part of the window before it.
        clamped: bool,
    },
    /// A retry after a failed attempt, at the backoff time.
    Retry {
        /// Number of failed attempts so far (this is retry number `attempt`).
        attempt: u32,
        /// The last error, for `certkeeper status`.
        error: String,
    },
    /// An operator asked for a renewal (`certkeeper renew --force`).
    Forced,
    /// The CA refused in a way that needs a human (a rejected identifier, CAA, the account or its
    /// EAB): tried again daily (sooner near expiry) and at once on every reload or restart.
    Paused {
        /// Failed attempts so far.
        attempt: u32,
        /// The CA's answer and what to do.
        error: String,
    },
}

/// When a certificate is next due, and why. There is always a next time: certkeeper never stops
/// trying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// When to act.
    pub at: Timestamp,
    /// Why.
    pub reason: DueReason,
}

impl Due {
    /// A forced renewal at `now`.
    pub fn forced(now: Timestamp) -> Due {
        Due {
            at: now,
            reason: DueReason::Forced,
        }
    }

    /// Whether the certificate should be worked on at `now`.
    pub fn is_due(&self, now: Timestamp) -> bool {
        self.at <= now
    }

    /// True when the certificate waits because its last attempt failed (backoff or pause).
    pub fn after_failure(&self) -> bool {
        matches!(
            self.reason,
            DueReason::Retry { .. } | DueReason::Paused { .. }
        )
    }
}

/// Formats a timestamp the way `certkeeper status` shows it: `2026-12-01 09:13 UTC`.
pub(crate) fn fmt_ts(ts: Timestamp) -> impl fmt::Display {
    ts.strftime("%Y-%m-%d %H:%M UTC")
}

/// Formats a duration in whole days (or hours below two days), e.g. `30 days`, `5 hours`.
fn fmt_lead(d: SignedDuration) -> String {
    let secs = d.as_secs().max(0);
    let plural = |n: i64, unit: &str| {
        if n == 1 {
            format!("1 {unit}")
        } else {
            format!("{n} {unit}s")
        }
    };
    if secs >= 2 * 86_400 {
        plural((secs + 43_200) / 86_400, "day")
    } else {
        plural((secs + 1_800) / 3_600, "hour")
    }
}

impl fmt::Display for DueReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DueReason::Missing => f.write_str("no certificate installed"),
            DueReason::ConfigChanged => {
                f.write_str("configuration changed (names, key type, issuer or profile)")
            }
            DueReason::Expiring { not_after, .. } => {
                write!(f, "certificate expires at {}", fmt_ts(*not_after))
            }
            DueReason::AriWindow { start, end, .. } => {
                write!(f, "ARI window {} to {}", fmt_ts(*start), fmt_ts(*end))
            }
            DueReason::Retry { attempt, error } => write!(f, "retry {attempt} after: {error}"),
            DueReason::Forced => f.write_str("renewal forced by the operator"),
            DueReason::Paused { error, .. } => {
                write!(f, "paused: the CA needs a human to act: {error}")
            }
        }
    }
}

impl fmt::Display for Due {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = fmt_ts(self.at);
        match &self.reason {
            DueReason::Missing => write!(f, "no certificate installed; issues at {at}"),
            DueReason::ConfigChanged => write!(
                f,
                "configuration changed (names, key type, issuer or profile); reissues at {at}"
            ),
            DueReason::Expiring {
                not_after,
                ari_later: None,
                ..
            } => write!(
                f,
                "renews at {at}, {} before expiry",
                fmt_lead(not_after.duration_since(self.at))
            ),
            DueReason::Expiring {
                not_after,
                ari_later: Some((start, end)),
                ..
            } => write!(
                f,
                "renews at {at}, {} before expiry; the CA's ARI window {} to {} starts later and \
                 is not waited for (ARI can only make a renewal earlier)",
                fmt_lead(not_after.duration_since(self.at)),
                fmt_ts(*start),
                fmt_ts(*end)
            ),
            DueReason::AriWindow {
                start,
                end,
                clamped: false,
            } => write!(
                f,
                "renews at {at}, in the CA's ARI window {} to {}",
                fmt_ts(*start),
                fmt_ts(*end)
            ),
            DueReason::AriWindow {
                start,
                end,
                clamped: true,
            } => write!(
                f,
                "renews at {at}, in the CA's ARI window {} to {}, before certkeeper's own renewal time (the window ends after it)",
                fmt_ts(*start),
                fmt_ts(*end)
            ),
            DueReason::Retry { attempt, error } => {
                write!(f, "retry {attempt} at {at} after: {error}")
            }
            DueReason::Forced => write!(f, "renewal forced by the operator; runs at {at}"),
            DueReason::Paused { attempt, error } => write!(
                f,
                "PAUSED after {attempt} failed attempt(s) because the CA needs a human to act: {error}; \
                 tries again at {at} (daily, sooner near expiry) and at once on `systemctl reload certkeeper`"
            ),
        }
    }
}

/// Decides when a certificate is next due.
///
/// 1. The base time: no certificate → now ([`DueReason::Missing`]); changed config → now
///    ([`DueReason::ConfigChanged`]); otherwise certkeeper's own time `own`, the jittered
///    [`renewal_point`] ([`DueReason::Expiring`]), never earlier than `now`. An ARI window can
///    make the renewal earlier, never later: one that starts before `own` gives a random time in
///    `[start, min(end, own)]` ([`ari_renewal_time`]; at once when that time has passed, e.g. a
///    window in the past after a revocation) ([`DueReason::AriWindow`]); one that starts at or
///    after `own` is not followed (`own` stands, with the window noted in
///    [`DueReason::Expiring::ari_later`]).
/// 2. After a failed attempt the retry time ([`RetryState::next_retry`]) postpones the base time
///    ([`DueReason::Retry`], or [`DueReason::Paused`] when the CA needs a human), capped near
///    expiry at a tenth of the remaining validity ([`super::backoff::expiry_cap`]) and never
///    earlier than the CA's own (already clamped) wait. A paused certificate is tried at once when
///    [`CertFacts::retry_paused_now`] (a reload or restart).
pub fn due<R: Rng + ?Sized>(facts: &CertFacts, now: Timestamp, rng: &mut R) -> Due {
    let base = base_due(facts, now, rng);
    let retry = &facts.retry;
    if retry.failures == 0 {
        return base;
    }
    // A pause recorded by an older version has no retry time: try it now.
    let mut at = retry.next_retry.unwrap_or(now);
    if let Some((_, not_after)) = facts.installed {
        at = at.min(super::backoff::expiry_cap(now, not_after));
    }
    if let Some(server) = retry.server_retry_after {
        at = at.max(server);
    }
    if retry.paused && facts.retry_paused_now {
        at = now;
    }
    if at < base.at {
        return base;
    }
    let error = retry
        .last_error
        .clone()
        .unwrap_or_else(|| "unknown error".to_owned());
    let reason = if retry.paused {
        DueReason::Paused {
            attempt: retry.failures,
            error,
        }
    } else {
        DueReason::Retry {
            attempt: retry.failures,
            error,
        }
    };
    Due { at, reason }
}

/// The due time without regard to failures (step 1 of [`due`]).
fn base_due<R: Rng + ?Sized>(facts: &CertFacts, now: Timestamp, rng: &mut R) -> Due {
    let Some((not_before, not_after)) = facts.installed else {
        return Due {
            at: now,
            reason: DueReason::Missing,
        };
    };
    if facts.fingerprint_changed {
        return Due {
            at: now,
            reason: DueReason::ConfigChanged,
        };
    }
    let renew_point = renewal_point(not_before, not_after, facts.renew_before);
    let own = jitter_earlier(renew_point, max_jitter(not_before, not_after), rng);
    let expiring = |ari_later| Due {
        at: own.max(now),
        reason: DueReason::Expiring {
            renew_point,
            not_after,
            ari_later,
        },
    };
    let Some((start, end)) = facts.ari_window else {
        return expiring(None);
    };
    if end < start {
        tracing::warn!(
            start = %start,
            end = %end,
            "ignoring ARI window that ends before it starts; using the default renewal point"
        );
        return expiring(None);
    }
    // A window that starts at or after our own time would only make the renewal later (up to
    // Not After, with acme2certifier): ARI may move a renewal earlier, never later.
    if start >= own {
        return expiring(Some((start, end)));
    }
    // `start < own` and `start <= end`, so the cut window is valid.
    let pick = ari_renewal_time(start, end.min(own), now, rng).unwrap_or(now);
    Due {
        at: pick,
        reason: DueReason::AriWindow {
            start,
            end,
            clamped: end > own,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::{Backoff, Failure, wait_limit};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const DAY: i64 = 86_400;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("test timestamp")
    }

    fn days(n: u64) -> Duration {
        Duration::from_secs(n * 86_400)
    }

    /// A certificate issued at T0 with the given lifetime in days.
    fn cert(lifetime_days: i64) -> (Timestamp, Timestamp) {
        let nb = ts("2026-01-01T00:00:00Z");
        (
            nb,
            add_sat(nb, SignedDuration::from_secs(lifetime_days * DAY)),
        )
    }

    fn before_expiry(point: Timestamp, not_after: Timestamp) -> SignedDuration {
        not_after.duration_since(point)
    }

    #[test]
    fn default_90_day_renews_30_days_before() {
        let (nb, na) = cert(90);
        let p = renewal_point(nb, na, None);
        assert_eq!(before_expiry(p, na), SignedDuration::from_secs(30 * DAY));
    }

    #[test]
    fn default_45_day_renews_15_days_before() {
        let (nb, na) = cert(45);
        let p = renewal_point(nb, na, None);
        assert_eq!(before_expiry(p, na), SignedDuration::from_secs(15 * DAY));
    }

    #[test]
    fn default_6_day_renews_at_half_3_days_before() {
        let (nb, na) = cert(6);
        let p = renewal_point(nb, na, None);
        assert_eq!(before_expiry(p, na), SignedDuration::from_secs(3 * DAY));
        assert_eq!(p, latest_renewal_point(nb, na));
    }

    #[test]
    fn just_under_10_days_renews_at_half() {
        let nb = ts("2026-01-01T00:00:00Z");
        let l = SignedDuration::from_secs(99 * DAY / 10); // 9.9 days
        let na = add_sat(nb, l);
        let p = renewal_point(nb, na, None);
        assert_eq!(before_expiry(p, na), l / 2);
        assert_eq!(p, latest_renewal_point(nb, na));
        // One second short of 10 days is still short.
        let na = add_sat(nb, SignedDuration::from_secs(10 * DAY - 1));
        assert_eq!(latest_renewal_point(nb, na), add_sat(nb, (na - nb) / 2));
    }

    #[test]
    fn exactly_10_days_renews_at_a_third() {
        let (nb, na) = cert(10);
        let p = renewal_point(nb, na, None);
        assert_eq!(
            before_expiry(p, na),
            SignedDuration::from_secs(10 * DAY) / 3
        );
        assert_eq!(p, latest_renewal_point(nb, na));
        // A longer renew_before moves it earlier; a shorter one cannot move it later.
        assert_eq!(
            before_expiry(renewal_point(nb, na, Some(days(5))), na),
            SignedDuration::from_secs(5 * DAY)
        );
        assert_eq!(renewal_point(nb, na, Some(days(1))), p);
    }

    #[test]
    fn renewal_point_table_in_the_readme() {
        // README "Renewal time" table: lifetime → days before expiry, default renew_before.
        for (lifetime, before_secs) in [
            (90, 30 * DAY),
            (45, 15 * DAY),
            (10, 10 * DAY / 3),
            (6, 3 * DAY),
        ] {
            let (nb, na) = cert(lifetime);
            let p = renewal_point(nb, na, None);
            assert_eq!(
                before_expiry(p, na),
                SignedDuration::from_secs(before_secs),
                "{lifetime}-day certificate"
            );
        }
    }

    #[test]
    fn default_365_day_keeps_a_third_of_the_lifetime() {
        let (nb, na) = cert(365);
        let p = renewal_point(nb, na, None);
        // 2/3 of 365 days after issuance, i.e. ~121.67 days before expiry, not 30.
        let expected = add_sat(nb, SignedDuration::from_secs(365 * DAY) * 2 / 3);
        assert_eq!(p, expected);
        let lead = before_expiry(p, na).as_secs();
        assert!(lead > 121 * DAY && lead < 122 * DAY, "lead {lead}");
    }

    #[test]
    fn explicit_renew_before_smaller_than_a_third_is_capped_at_two_thirds() {
        let (nb, na) = cert(90);
        let p = renewal_point(nb, na, Some(days(10)));
        assert_eq!(p, add_sat(nb, SignedDuration::from_secs(60 * DAY)));
    }

    #[test]
    fn explicit_renew_before_larger_than_a_third_is_honoured() {
        let (nb, na) = cert(90);
        let p = renewal_point(nb, na, Some(days(45)));
        assert_eq!(before_expiry(p, na), SignedDuration::from_secs(45 * DAY));
        let (nb, na) = cert(6);
        let p = renewal_point(nb, na, Some(days(3)));
        assert_eq!(before_expiry(p, na), SignedDuration::from_secs(3 * DAY));
    }

    #[test]
    fn explicit_renew_before_longer_than_lifetime_hits_the_floor() {
        // "30d" on a 6-day certificate would be before Not Before: renewal loop without the floor.
        let (nb, na) = cert(6);
        let p = renewal_point(nb, na, Some(days(30)));
        assert_eq!(p, add_sat(nb, SignedDuration::from_secs(6 * DAY) / 10));
        assert!(p > nb);
        // Absurdly large values saturate instead of panicking.
        let p = renewal_point(nb, na, Some(Duration::MAX));
        assert_eq!(p, add_sat(nb, SignedDuration::from_secs(6 * DAY) / 10));
    }

    #[test]
    fn inverted_validity_renews_at_not_before() {
        let (nb, na) = cert(90);
        assert_eq!(renewal_point(na, nb, None), na);
    }

    #[test]
    fn jitter_is_earlier_and_bounded() {
        let (nb, na) = cert(90);
        let point = renewal_point(nb, na, None);
        let max = max_jitter(nb, na);
        assert_eq!(max, SignedDuration::from_hours(1));
        let mut rng = StdRng::seed_from_u64(7);
        let mut saw_nonzero = false;
        for _ in 0..1000 {
            let j = jitter_earlier(point, max, &mut rng);
            assert!(j <= point);
            assert!(point.duration_since(j) <= max);
            saw_nonzero |= j != point;
        }
        assert!(saw_nonzero, "jitter never moved the point");
    }

    #[test]
    fn jitter_on_short_cert_is_one_percent() {
        let (nb, na) = cert(1);
        // 1 % of a day is 14.4 minutes, less than 1 h.
        assert_eq!(max_jitter(nb, na), SignedDuration::from_secs(864));
        let point = renewal_point(nb, na, None);
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..500 {
            let j = jitter_earlier(point, max_jitter(nb, na), &mut rng);
            assert!(j <= point && point.duration_since(j) <= SignedDuration::from_secs(864));
        }
    }

    #[test]
    fn jitter_is_deterministic_for_a_seed() {
        let (nb, na) = cert(90);
        let point = renewal_point(nb, na, None);
        let a = jitter_earlier(point, MAX_JITTER, &mut StdRng::seed_from_u64(42));
        let b = jitter_earlier(point, MAX_JITTER, &mut StdRng::seed_from_u64(42));
        assert_eq!(a, b);
    }

    #[test]
    fn ari_window_in_future_picks_inside() {
        let now = ts("2026-03-01T00:00:00Z");
        let start = ts("2026-03-10T00:00:00Z");
        let end = ts("2026-03-12T00:00:00Z");
        let mut rng = StdRng::seed_from_u64(3);
        let mut lo = end;
        let mut hi = start;
        for _ in 0..2000 {
            let at = ari_renewal_time(start, end, now, &mut rng).expect("valid window");
            assert!(at >= start && at <= end);
            lo = lo.min(at);
            hi = hi.max(at);
        }
        // Uniform over two days: 2000 picks spread across most of the window.
        assert!(lo < ts("2026-03-10T06:00:00Z"), "lo {lo}");
        assert!(hi > ts("2026-03-11T18:00:00Z"), "hi {hi}");
    }

    #[test]
    fn ari_window_in_past_renews_now() {
        let now = ts("2026-03-20T00:00:00Z");
        let at = ari_renewal_time(
            ts("2026-03-10T00:00:00Z"),
            ts("2026-03-12T00:00:00Z"),
            now,
            &mut StdRng::seed_from_u64(3),
        );
        assert_eq!(at, Some(now));
    }

    #[test]
    fn ari_window_straddling_now_never_returns_the_past() {
        let now = ts("2026-03-11T00:00:00Z");
        let mut rng = StdRng::seed_from_u64(9);
        for _ in 0..200 {
            let at = ari_renewal_time(
                ts("2026-03-10T00:00:00Z"),
                ts("2026-03-12T00:00:00Z"),
                now,
                &mut rng,
            )
            .expect("valid window");
            assert!(at >= now && at <= ts("2026-03-12T00:00:00Z"));
        }
    }

    #[test]
    fn ari_inverted_window_is_rejected() {
        let at = ari_renewal_time(
            ts("2026-03-12T00:00:00Z"),
            ts("2026-03-10T00:00:00Z"),
            ts("2026-03-01T00:00:00Z"),
            &mut StdRng::seed_from_u64(3),
        );
        assert_eq!(at, None);
    }

    #[test]
    fn ari_refetch_is_bounded() {
        let now = ts("2026-03-01T00:00:00Z");
        assert_eq!(
            ari_refetch_at(now, None),
            ts("2026-03-01T06:00:00Z"),
            "default 6 h"
        );
        assert_eq!(
            ari_refetch_at(now, Some(ts("2026-03-01T00:00:30Z"))),
            ts("2026-03-01T01:00:00Z"),
            "floor 1 h"
        );
        assert_eq!(
            ari_refetch_at(now, Some(ts("2026-03-09T00:00:00Z"))),
            ts("2026-03-02T00:00:00Z"),
            "ceiling 24 h"
        );
        assert_eq!(
            ari_refetch_at(now, Some(ts("2026-03-01T03:00:00Z"))),
            ts("2026-03-01T03:00:00Z"),
            "in range: honoured"
        );
        assert_eq!(
            ari_refetch_at(now, Some(ts("2026-02-01T00:00:00Z"))),
            ts("2026-03-01T01:00:00Z"),
            "in the past: floor"
        );
    }

    fn facts_90() -> CertFacts {
        CertFacts {
            installed: Some(cert(90)),
            ..CertFacts::default()
        }
    }

    #[test]
    fn due_missing_is_now() {
        let now = ts("2026-02-01T00:00:00Z");
        let d = due(&CertFacts::default(), now, &mut StdRng::seed_from_u64(1));
        assert_eq!(
            d,
            Due {
                at: now,
                reason: DueReason::Missing
            }
        );
        assert!(d.is_due(now));
    }

    #[test]
    fn due_config_changed_is_now() {
        let now = ts("2026-02-01T00:00:00Z");
        let facts = CertFacts {
            fingerprint_changed: true,
            ..facts_90()
        };
        let d = due(&facts, now, &mut StdRng::seed_from_u64(1));
        assert_eq!(d.reason, DueReason::ConfigChanged);
        assert_eq!(d.at, now);
    }

    #[test]
    fn due_expiring_uses_jittered_point() {
        let (nb, na) = cert(90);
        let now = ts("2026-02-01T00:00:00Z");
        let d = due(&facts_90(), now, &mut StdRng::seed_from_u64(1));
        let point = renewal_point(nb, na, None);
        assert_eq!(
            d.reason,
            DueReason::Expiring {
                renew_point: point,
                not_after: na,
                ari_later: None,
            }
        );
        assert!(d.at <= point && point.duration_since(d.at) <= MAX_JITTER);
        assert!(!d.is_due(now));
        let text = d.to_string();
        assert!(text.starts_with("renews at 2026-03-0"), "{text}");
        assert!(text.ends_with(", 30 days before expiry"), "{text}");
    }

    #[test]
    fn due_overdue_expiring_is_now() {
        let now = ts("2026-03-25T00:00:00Z");
        let d = due(&facts_90(), now, &mut StdRng::seed_from_u64(1));
        assert_eq!(d.at, now);
        assert!(d.is_due(now));
    }

    /// certkeeper's own (jittered) renewal time for [`facts_90`] with seed 1, as [`due`] draws it.
    fn own_90() -> Timestamp {
        let (nb, na) = cert(90);
        jitter_earlier(
            renewal_point(nb, na, None),
            max_jitter(nb, na),
            &mut StdRng::seed_from_u64(1),
        )
    }

    #[test]
    fn due_ari_window_before_own_time_picks_inside_it() {
        let now = ts("2026-02-01T00:00:00Z");
        for (start, end) in [
            (ts("2026-02-10T00:00:00Z"), ts("2026-02-11T00:00:00Z")),
            (ts("2026-02-25T00:00:00Z"), ts("2026-02-26T00:00:00Z")),
        ] {
            let facts = CertFacts {
                ari_window: Some((start, end)),
                ..facts_90()
            };
            let d = due(&facts, now, &mut StdRng::seed_from_u64(1));
            assert_eq!(
                d.reason,
                DueReason::AriWindow {
                    start,
                    end,
                    clamped: false
                }
            );
            assert!(d.at >= start && d.at <= end, "{d:?}");
            assert!(d.at < own_90());
            assert!(!d.is_due(now));
        }
        let facts = CertFacts {
            ari_window: Some((ts("2026-02-10T00:00:00Z"), ts("2026-02-11T00:00:00Z"))),
            ..facts_90()
        };
        let d = due(&facts, now, &mut StdRng::seed_from_u64(1));
        assert!(
            d.to_string()
                .contains("in the CA's ARI window 2026-02-10 00:00 UTC to 2026-02-11 00:00 UTC"),
            "{d}"
        );
    }

    #[test]
    fn due_ari_window_after_own_time_is_ignored() {
        // The 90-day certificate's own time is March 2 (minus jitter); a window from March 20, or
        // one starting exactly at the own time, would only make the renewal later.
        let now = ts("2026-02-01T00:00:00Z");
        let own = own_90();
        for window in [
            (ts("2026-03-20T00:00:00Z"), ts("2026-03-21T00:00:00Z")),
            (own, ts("2026-04-01T00:00:00Z")),
        ] {
            let facts = CertFacts {
                ari_window: Some(window),
                ..facts_90()
            };
            let d = due(&facts, now, &mut StdRng::seed_from_u64(1));
            assert_eq!(d.at, own);
            assert_eq!(
                d.reason,
                DueReason::Expiring {
                    renew_point: ts("2026-03-02T00:00:00Z"),
                    not_after: ts("2026-04-01T00:00:00Z"),
                    ari_later: Some(window),
                }
            );
            let text = d.to_string();
            assert!(
                text.contains("30 days before expiry; the CA's ARI window")
                    && text.contains("starts later"),
                "{text}"
            );
        }
        // Past the own time with such a window: at once, as without ARI.
        let late = ts("2026-03-10T00:00:00Z");
        let facts = CertFacts {
            ari_window: Some((ts("2026-03-20T00:00:00Z"), ts("2026-04-01T00:00:00Z"))),
            ..facts_90()
        };
        let d = due(&facts, late, &mut StdRng::seed_from_u64(1));
        assert_eq!(d.at, late);
        assert!(matches!(d.reason, DueReason::Expiring { .. }), "{d:?}");
    }

    #[test]
    fn due_ari_window_straddling_own_time_is_cut_at_it() {
        // acme2certifier's shape: a window that ends at Not After. The renewal is picked between
        // its start and certkeeper's own time, never in the last third of the lifetime.
        let now = ts("2026-02-01T00:00:00Z");
        let own = own_90();
        let (start, end) = (ts("2026-02-27T00:00:00Z"), ts("2026-04-01T00:00:00Z"));
        let facts = CertFacts {
            ari_window: Some((start, end)),
            ..facts_90()
        };
        let mut picks = Vec::new();
        for seed in 0..200 {
            let d = due(&facts, now, &mut StdRng::seed_from_u64(seed));
            assert_eq!(
                d.reason,
                DueReason::AriWindow {
                    start,
                    end,
                    clamped: true
                }
            );
            assert!(d.at >= start, "{d:?}");
            assert!(d.at <= ts("2026-03-02T00:00:00Z"), "{d:?}");
            picks.push(d.at);
        }
        // Spread over the three days before the own time, not piled at one end.
        assert!(picks.iter().any(|&p| p < ts("2026-02-28T00:00:00Z")));
        assert!(picks.iter().any(|&p| p > ts("2026-03-01T00:00:00Z")));
        let d = due(&facts, now, &mut StdRng::seed_from_u64(1));
        assert!(d.at <= own);
        assert!(
            d.to_string()
                .contains("before certkeeper's own renewal time"),
            "{d}"
        );
        // Once the cut window has begun and the pick is past: at once.
        let inside = ts("2026-03-01T23:00:00Z");
        for seed in 0..50 {
            let d = due(&facts, inside, &mut StdRng::seed_from_u64(seed));
            assert!(
                d.at >= inside && d.at <= ts("2026-03-02T00:00:00Z"),
                "{d:?}"
            );
        }
        let past_own = ts("2026-03-05T00:00:00Z");
        let d = due(&facts, past_own, &mut StdRng::seed_from_u64(1));
        assert_eq!(d.at, past_own);
        assert!(matches!(d.reason, DueReason::AriWindow { .. }));
    }

    #[test]
    fn due_ari_on_a_6_day_certificate_stays_before_half() {
        // A 6-day certificate whose CA window ends at Not After: renewed while half is left.
        let (nb, na) = cert(6);
        let facts = CertFacts {
            installed: Some((nb, na)),
            ari_window: Some((add_sat(nb, SignedDuration::from_hours(48)), na)),
            ..CertFacts::default()
        };
        for seed in 0..100 {
            let d = due(&facts, nb, &mut StdRng::seed_from_u64(seed));
            assert!(d.at <= latest_renewal_point(nb, na), "{d:?}");
            assert!(d.at >= add_sat(nb, SignedDuration::from_hours(48)), "{d:?}");
        }
    }

    #[test]
    fn due_ari_past_window_is_now_and_invalid_window_falls_back() {
        let now = ts("2026-02-20T00:00:00Z");
        let facts = CertFacts {
            ari_window: Some((ts("2026-02-10T00:00:00Z"), ts("2026-02-11T00:00:00Z"))),
            ..facts_90()
        };
        let d = due(&facts, now, &mut StdRng::seed_from_u64(1));
        assert_eq!(d.at, now);
        assert!(matches!(d.reason, DueReason::AriWindow { .. }));

        let facts = CertFacts {
            ari_window: Some((ts("2026-02-11T00:00:00Z"), ts("2026-02-10T00:00:00Z"))),
            ..facts_90()
        };
        let d = due(&facts, now, &mut StdRng::seed_from_u64(1));
        assert!(matches!(d.reason, DueReason::Expiring { .. }), "{d:?}");
    }

    fn failed(now: Timestamp, pause: bool, ca_wait: Option<Timestamp>, msg: &str) -> Failure {
        Failure {
            at: now,
            message: msg.into(),
            pause,
            ca_wait,
            lifetime: None,
            backoff: Backoff::default(),
        }
    }

    #[test]
    fn due_retry_postpones_and_a_pause_still_retries() {
        let now = ts("2026-03-05T00:00:00Z"); // past the day-60 point
        let retry = RetryState::default().on_failure(
            &failed(now, false, None, "connection refused"),
            &mut StdRng::seed_from_u64(1),
        );
        let facts = CertFacts {
            retry: retry.clone(),
            ..facts_90()
        };
        let d = due(&facts, now, &mut StdRng::seed_from_u64(1));
        assert_eq!(
            d.reason,
            DueReason::Retry {
                attempt: 1,
                error: "connection refused".into()
            }
        );
        assert_eq!(Some(d.at), retry.next_retry);
        assert!(d.after_failure());
        assert!(
            d.to_string().starts_with("retry 1 at 2026-03-05 00:0")
                && d.to_string().ends_with("after: connection refused"),
            "{d}"
        );

        let paused = RetryState::default().on_failure(
            &failed(now, true, None, "rejectedIdentifier: example.invalid"),
            &mut StdRng::seed_from_u64(1),
        );
        let facts = CertFacts {
            retry: paused,
            ..facts_90()
        };
        let d = due(&facts, now, &mut StdRng::seed_from_u64(1));
        assert!(matches!(d.reason, DueReason::Paused { attempt: 1, .. }));
        // 27 days left: a tenth is 2.7 days, so the daily retry stands.
        let hours = d.at.duration_since(now).as_hours();
        assert!((21..=26).contains(&hours), "{hours} h");
        let text = d.to_string();
        assert!(
            text.starts_with("PAUSED after 1 failed attempt(s)")
                && text.contains("rejectedIdentifier")
                && text.contains("systemctl reload certkeeper"),
            "{text}"
        );
        // A reload or restart tries it at once.
        let now_facts = CertFacts {
            retry_paused_now: true,
            ..facts
        };
        let d = due(&now_facts, now, &mut StdRng::seed_from_u64(1));
        assert_eq!(d.at, now);
        assert!(matches!(d.reason, DueReason::Paused { .. }));
    }

    #[test]
    fn an_old_permanent_stop_is_retried_now() {
        let now = ts("2026-03-05T00:00:00Z");
        let old: RetryState =
            serde_json::from_str(r#"{"failures": 1, "permanent": true, "last_error": "caa"}"#)
                .unwrap();
        let d = due(
            &CertFacts {
                retry: old,
                ..CertFacts::default()
            },
            now,
            &mut StdRng::seed_from_u64(1),
        );
        assert_eq!(d.at, now);
        assert!(matches!(d.reason, DueReason::Paused { .. }));
    }

    #[test]
    fn due_backoff_capped_near_expiry_and_ca_waits_kept() {
        let (nb, na) = cert(90);
        let now = add_sat(na, -SignedDuration::from_hours(10)); // 10 h left
        let mut retry = RetryState::default();
        let mut rng = StdRng::seed_from_u64(5);
        for _ in 0..9 {
            retry = retry.on_failure(&failed(now, false, None, "timeout"), &mut rng);
        }
        // Backoff alone would be ~6 h; capped at a tenth of 10 h = 1 h.
        let facts = CertFacts {
            retry: retry.clone(),
            ..facts_90()
        };
        let d = due(&facts, now, &mut StdRng::seed_from_u64(1));
        assert_eq!(d.at, add_sat(now, SignedDuration::from_hours(1)));
        assert!(matches!(d.reason, DueReason::Retry { attempt: 9, .. }));

        // Expired certificate whose retry time has passed: due now.
        let later = add_sat(na, SignedDuration::from_hours(1));
        let d = due(&facts, later, &mut StdRng::seed_from_u64(1));
        assert_eq!(d.at, later);
        // A failure while expired: retried after the 5-minute floor, not in a tight loop.
        let expired = CertFacts {
            retry: retry.on_failure(
                &Failure {
                    lifetime: Some((nb, na)),
                    ..failed(later, false, None, "timeout")
                },
                &mut rng,
            ),
            ..facts_90()
        };
        let d = due(&expired, later, &mut StdRng::seed_from_u64(1));
        assert_eq!(d.at, add_sat(later, SignedDuration::from_mins(5)));

        // A CA rate-limit end, clamped when it was recorded, is not cut further.
        let server = wait_limit(now, Some((nb, na)), &Backoff::default());
        let retry = RetryState::default()
            .on_failure(&failed(now, false, Some(server), "rateLimited"), &mut rng);
        let facts = CertFacts {
            retry,
            ..facts_90()
        };
        let d = due(&facts, now, &mut StdRng::seed_from_u64(1));
        assert_eq!(d.at, server);
    }

    #[test]
    fn due_later_base_beats_earlier_retry() {
        // A retry pending earlier than a (new) ARI window: the window wins.
        let now = ts("2026-02-01T00:00:00Z");
        let retry = RetryState::default().on_failure(
            &failed(now, false, None, "x"),
            &mut StdRng::seed_from_u64(1),
        );
        let (start, end) = (ts("2026-02-10T00:00:00Z"), ts("2026-02-11T00:00:00Z"));
        let facts = CertFacts {
            retry,
            ari_window: Some((start, end)),
            ..facts_90()
        };
        let d = due(&facts, now, &mut StdRng::seed_from_u64(1));
        assert_eq!(
            d.reason,
            DueReason::AriWindow {
                start,
                end,
                clamped: false
            }
        );
    }

    #[test]
    fn due_missing_or_changed_respects_pending_backoff() {
        let now = ts("2026-02-01T00:00:00Z");
        let mut rng = StdRng::seed_from_u64(4);
        let retry = RetryState::default()
            .for_config("fp-1")
            .on_failure(&failed(now, false, None, "dns timeout"), &mut rng)
            .on_failure(&failed(now, false, None, "dns timeout"), &mut rng)
            .on_failure(&failed(now, false, None, "dns timeout"), &mut rng);
        let pending = retry
            .next_retry
            .expect("transient failure schedules a retry");
        assert!(pending > now);
        for facts in [
            CertFacts {
                retry: retry.clone(),
                ..CertFacts::default()
            },
            CertFacts {
                retry: retry.clone(),
                fingerprint_changed: true,
                ..facts_90()
            },
        ] {
            let d = due(&facts, now, &mut rng);
            assert_eq!(d.at, pending);
            assert_eq!(
                d.reason,
                DueReason::Retry {
                    attempt: 3,
                    error: "dns timeout".into()
                }
            );
            assert!(!d.is_due(now) && d.is_due(pending));
        }
    }

    #[test]
    fn a_config_fix_lifts_a_pause() {
        let now = ts("2026-02-01T00:00:00Z");
        let mut rng = StdRng::seed_from_u64(4);
        let paused = RetryState::default()
            .for_config("fp-1")
            .on_failure(&failed(now, true, None, "CAA forbids this CA"), &mut rng);
        let facts = |retry: RetryState| CertFacts {
            retry,
            ..CertFacts::default()
        };
        let d = due(&facts(paused.clone().for_config("fp-1")), now, &mut rng);
        assert!(matches!(d.reason, DueReason::Paused { .. }), "{d:?}");
        let d = due(&facts(paused.for_config("fp-2")), now, &mut rng);
        assert_eq!(
            d,
            Due {
                at: now,
                reason: DueReason::Missing
            }
        );
    }

    proptest::proptest! {
        /// For any certificate and any renew_before: the point keeps a third of the lifetime, is
        /// past the 1/10 floor, and the jittered due time is never after the point nor before now.
        #[test]
        fn renewal_point_bounds(
            start in 1_600_000_000i64..2_000_000_000,
            lifetime_secs in 3_600i64..(10 * 365 * DAY),
            renew_before in proptest::option::of(0u64..(20 * 365 * 86_400)),
            now_offset in 0i64..(10 * 365 * DAY),
            seed in proptest::prelude::any::<u64>(),
            ari in proptest::option::of((0i64..(11 * 365 * DAY), 0i64..(365 * DAY))),
        ) {
            let nb = Timestamp::from_second(start).expect("in range");
            let l = SignedDuration::from_secs(lifetime_secs);
            let na = add_sat(nb, l);
            let p = renewal_point(nb, na, renew_before.map(Duration::from_secs));
            proptest::prop_assert!(p <= latest_renewal_point(nb, na));
            proptest::prop_assert!(p <= add_sat(nb, l * 2 / 3));
            if l < SHORT_LIFETIME {
                proptest::prop_assert!(p <= add_sat(nb, l / 2));
            }
            proptest::prop_assert!(p >= add_sat(nb, l / 10));
            proptest::prop_assert!(p < na);

            let now = add_sat(nb, SignedDuration::from_secs(now_offset));
            let facts = CertFacts {
                installed: Some((nb, na)),
                renew_before: renew_before.map(Duration::from_secs),
                ..CertFacts::default()
            };
            let d = due(&facts, now, &mut StdRng::seed_from_u64(seed));
            proptest::prop_assert!(d.at >= now);
            proptest::prop_assert!(d.at <= p.max(now));
            proptest::prop_assert!(d.at >= add_sat(p, -max_jitter(nb, na)).max(now));

            // Any ARI window: never later than without it, and inside the window when earlier.
            let window = ari.map(|(s, w)| {
                let s = add_sat(nb, SignedDuration::from_secs(s));
                (s, add_sat(s, SignedDuration::from_secs(w)))
            });
            let with_ari = CertFacts { ari_window: window, ..facts };
            let a = due(&with_ari, now, &mut StdRng::seed_from_u64(seed));
            proptest::prop_assert!(a.at >= now);
            proptest::prop_assert!(a.at <= d.at, "{a:?} later than {d:?}");
            if let DueReason::AriWindow { start, end, .. } = a.reason {
                proptest::prop_assert!(a.at == now || (a.at >= start && a.at <= end));
            }
        }
    }

    #[test]
    fn display_texts() {
        let now = ts("2026-12-01T09:13:00Z");
        assert_eq!(
            Due {
                at: now,
                reason: DueReason::Expiring {
                    renew_point: now,
                    not_after: ts("2026-12-31T09:13:00Z"),
                    ari_later: None,
                }
            }
            .to_string(),
            "renews at 2026-12-01 09:13 UTC, 30 days before expiry"
        );
        assert_eq!(
            Due {
                at: now,
                reason: DueReason::Expiring {
                    renew_point: now,
                    not_after: ts("2026-12-01T14:13:00Z"),
                    ari_later: None,
                }
            }
            .to_string(),
            "renews at 2026-12-01 09:13 UTC, 5 hours before expiry"
        );
        assert_eq!(
            Due::forced(now).to_string(),
            "renewal forced by the operator; runs at 2026-12-01 09:13 UTC"
        );
        assert_eq!(
            DueReason::Retry {
                attempt: 3,
                error: "dns timeout".into()
            }
            .to_string(),
            "retry 3 after: dns timeout"
        );
        assert_eq!(
            Due {
                at: now,
                reason: DueReason::Missing
            }
            .to_string(),
            "no certificate installed; issues at 2026-12-01 09:13 UTC"
        );
    }
}
