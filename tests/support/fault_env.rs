//! The fault tests' setup (`tests/faults_*.rs`): a pebble, and a [`TestConfig`] with one issuer
//! `ca` solving HTTP-01 on our own port, all driven through the binary.
//!
//! [`Env`] is a thin layer on [`TestConfig`]: the work directory is the config's tempdir, and
//! [`Env::write_config`] renders through it. This module also re-exports what those tests use
//! from the rest of `support`, so a fault test declares
//!
//! ```ignore
//! mod support;
//! use support::fault_env as util;
//! ```
//!
//! and keeps `util::{Env, CertSpec, KillOnDrop, check_pair, wait_for, ...}` and `util::proxy::...`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use openssl::x509::X509;

use super::certkeeper::{self as ck, IssuerSpec, TestConfig};
use super::{Pebble, PebbleOpts, free_port};

pub use super::certkeeper::{CERTKEEPER_BIN as BIN, failures};
pub use super::pair::{Pair, check_pair};
pub use super::process::{KillOnDrop, run_bounded, wait_for};
pub use super::proxy;

/// A pebble, a work directory and a certkeeper config in it.
pub struct Env {
    /// The CA.
    pub pebble: Pebble,
    /// Work directory (config, state, outputs, logs): the tempdir of [`Env::cfg`].
    pub dir: Arc<tempfile::TempDir>,
    /// The port of certkeeper's HTTP-01 listener (pebble validates there).
    pub http_port: u16,
    /// The config file.
    pub config: PathBuf,
    /// The config this environment writes (HTTP-01 listener set; issuers and certificates are
    /// filled in by [`Env::write_config`]).
    pub cfg: TestConfig,
}

/// One certificate of a generated config.
pub struct CertSpec<'a> {
    pub name: &'a str,
    pub domains: &'a [&'a str],
    pub key: &'a str,
}

impl Env {
    /// Start pebble for this environment; `None` (test skipped) when pebble is not installed.
    pub async fn start(opts: PebbleOpts) -> Option<Env> {
        if !super::pebble::available() {
            eprintln!("pebble is not installed; skipping");
            return None;
        }
        let http_port = free_port();
        let pebble = Pebble::start(PebbleOpts { http_port, ..opts }).await;
        let cfg = TestConfig::new().http01_listen(http_port);
        std::fs::write(cfg.dir().join("pebble-ca.pem"), pebble.ca_pem()).unwrap();
        Some(Env {
            pebble,
            dir: cfg.shared_dir(),
            http_port,
            config: cfg.path(),
            cfg,
        })
    }

    /// The state directory of the generated config.
    pub fn state_dir(&self) -> PathBuf {
        self.cfg.state_dir()
    }

    /// The output directory of certificate `name`.
    pub fn out_dir(&self, name: &str) -> PathBuf {
        self.cfg.output_dir(name)
    }

    /// Write the config: one issuer `ca` at `directory` (trusting `ca_pem_file`), HTTP-01 on our port,
    /// `issuer_extra` appended to the issuer table, and the given certificates; `tail` is raw TOML
    /// at the end.
    pub fn write_config(
        &self,
        directory: &str,
        ca_pem_file: &Path,
        issuer_extra: &str,
        certs: &[CertSpec<'_>],
        tail: &str,
    ) {
        let mut cfg = self.cfg.clone();
        let mut issuer = IssuerSpec::new("ca", directory)
            .ca_bundle_path(ca_pem_file)
            .solver_http01();
        if !issuer_extra.is_empty() {
            issuer = issuer.extra(issuer_extra);
        }
        cfg = cfg.issuer(issuer);
        for c in certs {
            cfg = cfg.certificate(ck::CertSpec::new(c.name, "ca", c.domains).key(c.key));
        }
        if !tail.is_empty() {
            cfg = cfg.tail(tail);
        }
        std::fs::write(cfg.path(), cfg.render()).unwrap();
    }

    /// Write a config straight against pebble.
    pub fn write_pebble_config(&self, certs: &[CertSpec<'_>]) {
        let ca = self.dir.path().join("pebble-ca.pem");
        self.write_config(&self.pebble.directory_url(), &ca, "", certs, "");
    }

    /// A `certkeeper` command with `--config` and logs at `info`.
    pub fn cmd(&self, args: &[&str]) -> Command {
        self.cfg.std_command(args)
    }

    /// Run `certkeeper ARGS` to completion (bounded: killed after `limit`).
    pub fn run(&self, args: &[&str], limit: Duration) -> Output {
        run_bounded(self.cmd(args), limit)
    }

    /// The issuing root of pebble (PEM).
    pub async fn root(&self) -> X509 {
        X509::from_pem(self.pebble.root_pem().await.as_bytes()).expect("pebble root")
    }

    /// The state file of certificate `name`, as JSON (None when absent).
    pub fn cert_state(&self, name: &str) -> Option<serde_json::Value> {
        self.cfg.cert_state(name)
    }
}

// Config text for tests that write their own issuers and certificates.

/// Backoff short enough that a removed fault is retried within seconds.
pub const FAST: &str = "retry_first = \"2s\"\nretry_max = \"4s\"\n";

/// The head of a config: state dir, `[daemon]` with [`FAST`] plus `daemon_extra`, the HTTP-01
/// listener on the port pebble validates when `http01`, and the admin listener when given.
pub fn head(env: &Env, http01: bool, daemon_extra: &str, admin: Option<u16>) -> String {
    let mut s = format!(
        "state_dir = \"{}\"\n\n[daemon]\n{FAST}{daemon_extra}\n",
        env.state_dir().display()
    );
    if http01 {
        s.push_str(&format!(
            "[http01]\nlisten = [\"127.0.0.1:{}\"]\n\n",
            env.http_port
        ));
    }
    if let Some(port) = admin {
        s.push_str(&format!("[admin]\nlisten = \"127.0.0.1:{port}\"\n\n"));
    }
    s
}

/// An `[issuer.NAME]` table at `directory`, trusting `ca_file`, with one solver (`solver` is the
/// body of its `[[issuer.NAME.solver]]` table).
pub fn issuer(name: &str, directory: &str, ca_file: &Path, solver: &str) -> String {
    format!(
        "[issuer.{name}]\ndirectory = \"{directory}\"\nca_bundle = \"{}\"\n\
         contact = [\"mailto:admin@example.com\"]\n\n[[issuer.{name}.solver]]\n{solver}\n\n",
        ca_file.display()
    )
}

/// The pebble issuer of `env`, named `ca`.
pub fn pebble_issuer(env: &Env, solver: &str) -> String {
    issuer(
        "ca",
        &env.pebble.directory_url(),
        &env.dir.path().join("pebble-ca.pem"),
        solver,
    )
}

/// A `[certificate.NAME]` table with output under the environment's `tls/NAME`.
pub fn cert(env: &Env, name: &str, issuers: &[&str], domains: &[&str], extra: &str) -> String {
    let q = |v: &[&str]| {
        v.iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "[certificate.{name}]\nissuer = [{}]\ndomains = [{}]\nkey = \"ecdsa-p256\"\n\
         output = {{ dir = \"{}\" }}\n{extra}\n",
        q(issuers),
        q(domains),
        env.out_dir(name).display()
    )
}
