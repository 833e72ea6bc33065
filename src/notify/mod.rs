//! Notifications: tell a human when a certificate needs attention (`[notify]`).
//!
//! Not to be confused with [`crate::daemon::notify`] (systemd's sd_notify).
//!
//! [`rule::decide`] decides what to send from what was notified before (kept in the ledger, so a
//! restart does not send again); [`deliver`] sends one [`AlertEvent`] to the configured command
//! (JSON on stdin, `CERTKEEPER_*` in the environment, started like a reload hook by
//! [`crate::child`]) and webhook (an HTTP POST of the same JSON, bounded retries). Which
//! conditions hold for a certificate is the engine's business ([`crate::engine::alerts`]).

pub mod deliver;
pub mod rule;

use jiff::Timestamp;
use serde::Serialize;

pub use deliver::{DeliveryError, deliver};
pub use rule::{Condition, Notified, Send, decide};

/// One notification, as sent: the JSON on the command's stdin and in the webhook's body.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AlertEvent {
    /// `renewal_failed`, `expiring`, `deploy_mismatch`, `paused` or `recovered`.
    pub event: String,
    /// The certificate's config name.
    pub certificate: String,
    /// Its names.
    pub domains: Vec<String>,
    /// True for a daily reminder of a condition notified before.
    pub reminder: bool,
    /// When certkeeper decided to send it.
    pub at: Timestamp,
    /// What happened and what to do, in plain words.
    pub message: String,
    /// The installed certificate's serial (hex), when one is installed.
    pub serial: Option<String>,
    /// Its Not After.
    pub not_after: Option<Timestamp>,
    /// Why the last renewal failed (`renewal_failed`, `paused`).
    pub cause: Option<String>,
    /// When certkeeper tries again (`renewal_failed`, `paused`, `expiring`).
    pub next_try: Option<Timestamp>,
    /// What each `verify_deploy` endpoint served (`deploy_mismatch`).
    pub endpoints: Vec<crate::store::EndpointServed>,
    /// For `recovered`: the conditions that ended.
    pub recovered_from: Vec<String>,
    /// The host certkeeper runs on.
    pub host: String,
}

/// This host's name, for [`AlertEvent::host`].
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}
