//! Shared test support: the pebble harness and small helpers.
//!
//! Each test file that uses it declares `mod support;`; not every file uses every helper.
#![allow(dead_code)]

pub mod certkeeper;
pub mod nginx;
pub mod pebble;

pub use pebble::{Pebble, PebbleOpts, free_port};
