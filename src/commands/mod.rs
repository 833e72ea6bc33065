//! Implementations of the `certkeeper` subcommands beyond check/renew/run (one module each); `main.rs`
//! only parses arguments and dispatches here.

pub mod check;
pub mod explain;
