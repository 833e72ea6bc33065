//! Why an attempt failed, as a typed [`Cause`] wrapped in context, and the failure policy derived
//! from it in one function, [`decide`].
//!
//! The policy (README, "On failure"):
//! - only CA problems that need a human pause a certificate: rejectedIdentifier,
//!   unsupportedIdentifier, caa, badCSR, badPublicKey, userActionRequired, externalAccountRequired,
//!   invalidProfile, an `unauthorized` answer to the account request (EAB or account) and a
//!   `malformed` one saying the account needs a contact address. A paused certificate is
//!   still tried daily (sooner near expiry) and at once on every reload or restart;
//! - everything else (transport and TLS failures, timeouts, 5xx, solver and DNS provider failures,
//!   a missing plugin, store and I/O errors, a configuration the CA does not accept) is retried
//!   with backoff, never later than a tenth of the remaining lifetime;
//! - a CA's Retry-After or rate limit is honoured but clamped so the certificate keeps a third of
//!   its lifetime, half below 10 days ([`crate::scheduler::wait_limit`]); when the wait is longer than that and another
//!   issuer is configured, the next issuer is tried;
//! - an unreachable CA, a CA error (5xx), a paused problem or a configuration the CA refuses falls
//!   back to the next issuer at once.

use std::fmt;

use jiff::Timestamp;

use crate::acme::{AcmeError, Problem, ProblemKind, ProblemOrigin};
use crate::challenge::SolveError;
use crate::scheduler::{Backoff, wait_limit};
use crate::store::StoreError;

/// What went wrong, by kind. Context (which issuer, which step) is added around it by
/// [`IssueError::context`], never by rewriting it.
#[derive(Debug)]
pub enum Cause {
    /// The CA answered with a problem document (RFC 8555 §6.7).
    Problem(Box<Problem>),
    /// The CA could not be reached, or answered outside the protocol: connection, TLS, HTTP,
    /// timeouts, malformed answers.
    Transport(AcmeError),
    /// A challenge solver or DNS provider failed: a plugin missing or failing, a DNS server down,
    /// propagation not seen, a webroot not writable, a provider that could not be built.
    Solver(SolveError),
    /// Local storage failed: disk full, read-only file system, permissions.
    Store(StoreError),
    /// The configuration cannot work as written against this CA: a profile or challenge type it
    /// does not offer, no solver for a name.
    Config(String),
    /// The CAA preflight found records that do not let this CA issue (RFC 8659, RFC 8657), before
    /// the CA was asked. A human must change DNS or the issuer, and may do so at any moment without
    /// certkeeper seeing it: so it is retried on the backoff schedule like a configuration the CA
    /// refuses (never later than a tenth of the remaining lifetime), not paused — pausing is for
    /// the CA's own verdicts, retried only daily — and the next issuer, whose CA the records may
    /// allow, is tried at once.
    Caa(String),
    /// A local failure that is no one's configuration: key generation, a panicked task.
    Internal(String),
    /// Ctrl-C or a shutdown stopped the attempt; the order resumes at the next run.
    Interrupted,
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Problem(p) => write!(f, "the CA answered with an error: {p}"),
            Self::Transport(e) => e.fmt(f),
            Self::Solver(e) => e.fmt(f),
            Self::Store(e) => e.fmt(f),
            Self::Config(m) | Self::Caa(m) | Self::Internal(m) => f.write_str(m),
            Self::Interrupted => f.write_str("interrupted; the order resumes at the next run"),
        }
    }
}

impl From<AcmeError> for Cause {
    fn from(e: AcmeError) -> Self {
        match e {
            AcmeError::Problem(p) => Self::Problem(p),
            AcmeError::Config { message } => Self::Config(message),
            AcmeError::Key(_) | AcmeError::Openssl(_) => Self::Internal(e.to_string()),
            other => Self::Transport(other),
        }
    }
}

impl From<SolveError> for Cause {
    fn from(e: SolveError) -> Self {
        Self::Solver(e)
    }
}

impl From<StoreError> for Cause {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// A certificate could not be issued this time: a [`Cause`] and the context around it.
///
/// `Display` is the whole message for the administrator: the context, outermost first, then what
/// failed, what the CA or the solver saw, and what to do.
#[derive(Debug)]
pub struct IssueError {
    cause: Box<Cause>,
    context: Vec<String>,
    /// The errors of the issuers tried after this one (fall-back), in order.
    also: Vec<IssueError>,
    /// The policy's verdict over every issuer tried, when the order flow made one.
    decision: Option<Decision>,
}

impl IssueError {
    /// An error of `cause`, without context yet.
    pub fn new(cause: impl Into<Cause>) -> Self {
        Self {
            cause: Box::new(cause.into()),
            context: Vec::new(),
            also: Vec::new(),
            decision: None,
        }
    }

    /// A configuration the CA does not accept.
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(Cause::Config(message.into()))
    }

    /// A local failure (key generation, encoding, a panic).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Cause::Internal(message.into()))
    }

    /// The attempt was interrupted (Ctrl-C, shutdown).
    pub fn interrupted() -> Self {
        Self::new(Cause::Interrupted)
    }

    /// Wrap in one more layer of context (shown before what is already there).
    #[must_use]
    pub fn context(mut self, context: impl Into<String>) -> Self {
        self.context.insert(0, context.into());
        self
    }

    /// Attach the errors of the issuers tried after this one and the verdict over all of them.
    #[must_use]
    pub fn with_fallbacks(mut self, also: Vec<IssueError>, decision: Decision) -> Self {
        self.also = also;
        self.decision = Some(decision);
        self
    }

    /// The verdict over every issuer tried, when the order flow made one (see
    /// [`IssueError::with_fallbacks`]).
    pub fn decision(&self) -> Option<Decision> {
        self.decision
    }

    /// What went wrong.
    pub fn cause(&self) -> &Cause {
        &self.cause
    }

    /// The CA's problem document behind the failure, when there was one.
    pub fn problem(&self) -> Option<&Problem> {
        match &*self.cause {
            Cause::Problem(p) => Some(p),
            _ => None,
        }
    }

    /// True when Ctrl-C or a shutdown stopped the attempt (no failure to record).
    pub fn is_interrupted(&self) -> bool {
        matches!(*self.cause, Cause::Interrupted)
    }

    /// True when another task, process or node holds the certificate's issuance lease (it is being
    /// worked on), or renewed it meanwhile: no failure of the certificate.
    pub fn is_busy(&self) -> bool {
        matches!(
            *self.cause,
            Cause::Store(StoreError::Locked { .. } | StoreError::RenewedElsewhere { .. })
        )
    }

    /// True when the shared store (the fleet's database) could not be reached or failed: the
    /// ledger could not record this failure either, so its backoff is kept by the caller.
    pub fn is_store_down(&self) -> bool {
        matches!(
            *self.cause,
            Cause::Store(StoreError::Database { .. } | StoreError::Unavailable { .. })
        )
    }
}

impl fmt::Display for IssueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.context {
            write!(f, "{c}: ")?;
        }
        self.cause.fmt(f)?;
        for other in &self.also {
            write!(f, "; then {other}")?;
        }
        Ok(())
    }
}

impl std::error::Error for IssueError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &*self.cause {
            Cause::Transport(e) => Some(e),
            Cause::Solver(e) => Some(e),
            Cause::Store(e) => Some(e),
            _ => None,
        }
    }
}

impl<T: Into<Cause>> From<T> for IssueError {
    fn from(cause: T) -> Self {
        Self::new(cause)
    }
}

/// What the failure policy decided for one failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The CA needs a human to act: pause (retried daily and on every reload).
    pub pause: bool,
    /// Try the next configured issuer now.
    pub fall_back: bool,
    /// The CA's own earliest retry time, clamped with [`wait_limit`].
    pub ca_wait: Option<Timestamp>,
}

/// The failure policy: what to do after `cause`, for a certificate whose live pair is valid over
/// `lifetime` (if any), at `now`. The only place where retry, pause and fall-back are decided.
pub fn decide(
    cause: &Cause,
    now: Timestamp,
    lifetime: Option<(Timestamp, Timestamp)>,
    backoff: &Backoff,
) -> Decision {
    let retry = Decision {
        pause: false,
        fall_back: false,
        ca_wait: None,
    };
    match cause {
        Cause::Problem(p) => {
            let pause = needs_human(p);
            let limit = wait_limit(now, lifetime, backoff);
            let wait = p.retry_after.filter(|at| *at > now);
            Decision {
                pause,
                // A CA that is down, refuses for a reason only a human fixes, or asks to wait past
                // the point where the certificate must be renewed: another CA may do it now.
                fall_back: pause || p.effective_status() >= 500 || wait.is_some_and(|w| w > limit),
                ca_wait: wait.map(|w| w.min(limit)),
            }
        }
        Cause::Transport(e) => Decision {
            fall_back: e.is_unreachable(),
            ..retry
        },
        Cause::Config(_) | Cause::Caa(_) => Decision {
            fall_back: true,
            ..retry
        },
        Cause::Solver(_) | Cause::Store(_) | Cause::Internal(_) | Cause::Interrupted => retry,
    }
}

/// The verdict over the issuers of one certificate tried in order, each with its own verdict:
/// paused only when every one of them needs a human; the CA wait is the earliest one, and none
/// when some issuer can be tried again on the backoff schedule.
pub fn combine(decisions: &[Decision]) -> Decision {
    let waits: Option<Vec<Timestamp>> = decisions.iter().map(|d| d.ca_wait).collect();
    Decision {
        pause: !decisions.is_empty() && decisions.iter().all(|d| d.pause),
        fall_back: false,
        ca_wait: waits.and_then(|w| w.into_iter().min()),
    }
}

/// The CA problems only a human can resolve (RFC 8555 §6.7; RFC 8555 §7.3.4 for the account).
fn needs_human(p: &Problem) -> bool {
    use ProblemKind::*;
    match p.kind() {
        RejectedIdentifier
        | UnsupportedIdentifier
        | Caa
        | BadCsr
        | BadPublicKey
        | UserActionRequired
        | ExternalAccountRequired => true,
        Unauthorized => p.origin == ProblemOrigin::NewAccount,
        // A profile the CA does not offer, or an account without the contact it demands: only a
        // change of the config helps.
        InvalidProfile => true,
        Malformed => p.origin == ProblemOrigin::NewAccount && p.says_contact_missing(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn problem(short: &str, origin: ProblemOrigin, status: u16) -> Cause {
        Cause::Problem(Box::new(Problem {
            type_: format!("urn:ietf:params:acme:error:{short}"),
            detail: Some("detail".into()),
            status: Some(status),
            subproblems: Vec::new(),
            http_status: status,
            retry_after: None,
            origin,
            offered_profiles: Vec::new(),
        }))
    }

    const NOW: &str = "2026-02-01T00:00:00Z";

    fn decided(c: &Cause) -> Decision {
        decide(c, ts(NOW), None, &Backoff::default())
    }

    #[test]
    fn only_ca_problems_that_need_a_human_pause() {
        use ProblemOrigin::*;
        for t in [
            "rejectedIdentifier",
            "unsupportedIdentifier",
            "caa",
            "badCSR",
            "badPublicKey",
            "userActionRequired",
            "externalAccountRequired",
        ] {
            let d = decided(&problem(t, Unknown, 400));
            assert!(d.pause && d.fall_back, "{t}: {d:?}");
        }
        assert!(decided(&problem("unauthorized", NewAccount, 403)).pause);
        for (t, origin, status) in [
            ("unauthorized", Challenge("a.example".into()), 403),
            ("dns", Unknown, 400),
            ("connection", Unknown, 400),
            ("incorrectResponse", Unknown, 403),
            ("malformed", Unknown, 400),
            ("badNonce", Unknown, 400),
            ("rateLimited", Unknown, 429),
            ("serverInternal", Unknown, 500),
            ("accountDoesNotExist", Unknown, 400),
            ("somethingNew", Unknown, 400),
        ] {
            assert!(!decided(&problem(t, origin, status)).pause, "{t}");
        }
        let transport = Cause::Transport(AcmeError::Tls {
            url: "https://ca".into(),
            message: "unknown issuer".into(),
        });
        for c in [
            transport,
            Cause::Solver(SolveError::permanent(
                "exec: /usr/local/bin/hook: not found",
            )),
            Cause::Store(StoreError::Verify("x".into())),
            Cause::Config("profile not offered".into()),
            Cause::Caa("CAA records forbid this CA".into()),
            Cause::Internal("panic".into()),
        ] {
            assert!(!decided(&c).pause, "{c}");
        }
    }

    #[test]
    fn an_unreachable_or_failing_ca_falls_back_a_solver_failure_does_not() {
        let down = Cause::Transport(AcmeError::Connect {
            url: "https://ca".into(),
            message: "refused".into(),
        });
        assert!(decided(&down).fall_back);
        assert!(decided(&problem("serverInternal", ProblemOrigin::Unknown, 503)).fall_back);
        assert!(!decided(&problem("dns", ProblemOrigin::Unknown, 400)).fall_back);
        assert!(!decided(&Cause::Solver(SolveError::retryable("bind down"))).fall_back);
        assert!(decided(&Cause::Config("profile".into())).fall_back);
        // CAA forbidding this CA: retried on the backoff schedule, and another CA tried now.
        let caa = decided(&Cause::Caa("CAA".into()));
        assert!(caa.fall_back && !caa.pause && caa.ca_wait.is_none());
    }

    #[test]
    fn retry_after_is_clamped_and_a_long_one_falls_back() {
        let rate_limited = |after: &str| {
            let mut c = problem("rateLimited", ProblemOrigin::NewOrder, 429);
            if let Cause::Problem(p) = &mut c {
                p.retry_after = Some(ts(after));
            }
            c
        };
        // Nothing installed: at most the longest backoff step (6 h) is waited.
        let d = decided(&rate_limited("2026-02-01T02:00:00Z"));
        assert_eq!(d.ca_wait, Some(ts("2026-02-01T02:00:00Z")));
        assert!(!d.fall_back && !d.pause);
        let d = decided(&rate_limited("2027-02-01T00:00:00Z"));
        assert_eq!(d.ca_wait, Some(ts("2026-02-01T06:00:00Z")));
        assert!(d.fall_back);
        // A 90-day certificate from January 1: no wait past March 2.
        let life = Some((ts("2026-01-01T00:00:00Z"), ts("2026-04-01T00:00:00Z")));
        let d = decide(
            &rate_limited("2026-02-20T00:00:00Z"),
            ts(NOW),
            life,
            &Backoff::default(),
        );
        assert_eq!(d.ca_wait, Some(ts("2026-02-20T00:00:00Z")));
        assert!(!d.fall_back);
        let d = decide(
            &rate_limited("2026-06-01T00:00:00Z"),
            ts(NOW),
            life,
            &Backoff::default(),
        );
        assert_eq!(d.ca_wait, Some(ts("2026-03-02T00:00:00Z")));
        assert!(d.fall_back);
    }

    #[test]
    fn context_wraps_without_rewriting() {
        let e = IssueError::new(AcmeError::Connect {
            url: "https://ca/dir".into(),
            message: "connection refused".into(),
        })
        .context("account")
        .context("issuer le");
        let text = e.to_string();
        assert!(
            text.starts_with("issuer le: account: cannot reach the CA at https://ca/dir"),
            "{text}"
        );
        assert!(matches!(
            e.cause(),
            Cause::Transport(AcmeError::Connect { .. })
        ));
        assert!(std::error::Error::source(&e).is_some());
    }
}
