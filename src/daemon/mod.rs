//! The daemon (`certkeeper run`): the loop with its timers and reloader, the config watcher and the
//! admin listener. What it does to a certificate is the engine's ([`crate::engine`]).

pub mod admin;
mod notify;
mod reloader;
pub mod run;
pub mod watch;
