//! certkeeper: a standalone ACME (RFC 8555) client daemon for bare-metal hosts.
//!
//! The flow: [`config`] is parsed and validated, the [`scheduler`] decides what is due, the [`acme`]
//! protocol layer orders certificates, [`challenge`] solvers prove control of each name, the [`store`]
//! verifies and writes the PEM files, and [`hooks`] reload the servers that read them; the engine
//! then checks what the servers serve, and [`notify`] tells a human when something needs attention.

pub mod acme;
pub mod caa;
pub mod challenge;
pub mod child;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod hooks;
pub mod listener;
pub mod notify;
pub mod privileges;
pub mod scheduler;
pub mod store;
pub mod tls_env;
