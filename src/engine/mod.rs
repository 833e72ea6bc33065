//! The engine, shared by the CLI and the daemon: the runtime (TLS clients, accounts, solvers), the
//! order flow, one attempt and one pass, ARI, reloads, deploy verification, the alert conditions,
//! and the failure policy.
//!
//! ```text
//! daemon (loop, watcher, admin)   commands (renew, status, explain, revoke, import, account, check)
//!           └──────────────► engine ◄──────────────┘
//!                 │ due (scheduler policy on a ledger snapshot)   error (typed cause → decide)
//!                 │ order (one certificate)   pass (renew)   ari   reload
//!                 │ deploy (what the servers serve)   alerts (conditions → crate::notify)
//!                 ▼
//!         store::Ledger (state + installed pair, events)   store::AccountStore
//! ```

pub mod alerts;
pub mod ari;
pub mod deploy;
pub mod due;
pub mod error;
pub mod order;
pub mod pass;
pub mod reload;
pub mod runtime;
pub mod side_by_side;

#[cfg(test)]
mod order_tests;

pub use error::{Cause, Decision, IssueError, decide};
pub use runtime::{
    Runtime, USER_AGENT, decode_eab_key, fleet_tokens, http01_spool, ledger, open_storage,
    read_only_ledger, uses_http01_listener,
};
