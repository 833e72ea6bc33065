//! (being written) — the config branch only declares `providers` here so the placeholder compiles.

pub mod providers;
