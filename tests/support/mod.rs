//! Shared test support: one way to run the binary and one pebble / bind9 / PowerDNS / nginx
//! environment for every integration test.
//!
//! - [`certkeeper`]: the config builder, the CLI runners (async and blocking) and the daemon guard;
//! - [`pebble`]: pebble + challtestsrv; [`a2c`]: acme2certifier, the second real CA; [`proxy`]: a switchable TLS proxy in front of it;
//! - [`dns`]: bind9 and PowerDNS; [`nginx`]: an nginx serving the installed pair;
//! - [`pair`]: the strict check of an installed pair; [`process`]: child-process helpers;
//! - [`fault_env`]: the fault tests' pebble + config layer; [`sysuser`]: a throw-away service user.
//!
//! Each test file that uses it declares `mod support;`; not every file uses every helper.
#![allow(dead_code, unused_imports)]

pub mod a2c;
pub mod certkeeper;
pub mod dns;
pub mod fault_env;
pub mod fleet;
pub mod nginx;
pub mod pair;
pub mod pebble;
pub mod postgres;
pub mod process;
pub mod proxy;
pub mod sysuser;

pub use pebble::{Pebble, PebbleOpts, free_port};
