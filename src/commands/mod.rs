//! Implementations of the `certkeeper` subcommands beyond check/renew/run (one module each); `main.rs`
//! only parses arguments and dispatches here.

pub mod account;
pub mod check;
pub mod explain;
pub mod import;
pub mod migrate;
pub mod renew;
pub mod revoke;
pub mod status;
pub mod storage_migrate;
pub mod storage_probe;
pub mod storage_rotate;
