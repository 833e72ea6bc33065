//! Shared helpers of the fault tests (`tests/faults_*.rs`): a certkeeper setup against pebble driven
//! through the binary, a strict check of an installed pair, and a switchable TLS-terminating proxy
//! between certkeeper and the CA.

#![allow(dead_code)]

pub mod proxy;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{X509, X509StoreContext};

use crate::support::{Pebble, PebbleOpts, free_port};

/// The certkeeper binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_certkeeper");

/// A pebble, a work directory and a certkeeper config in it.
pub struct Env {
    /// The CA.
    pub pebble: Pebble,
    /// Work directory (config, state, outputs, logs).
    pub dir: tempfile::TempDir,
    /// The port of certkeeper's HTTP-01 listener (pebble validates there).
    pub http_port: u16,
    /// The config file.
    pub config: PathBuf,
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
        if !crate::support::pebble::available() {
            eprintln!("pebble is not installed; skipping");
            return None;
        }
        let http_port = free_port();
        let pebble = Pebble::start(PebbleOpts { http_port, ..opts }).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("certkeeper.toml");
        std::fs::write(dir.path().join("pebble-ca.pem"), pebble.ca_pem()).unwrap();
        Some(Env {
            pebble,
            dir,
            http_port,
            config,
        })
    }

    /// The state directory of the generated config.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The output directory of certificate `name`.
    pub fn out_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join("tls").join(name)
    }

    /// Write the config: one issuer `ca` at `directory` (trusting `ca_pem_file`), HTTP-01 on our port,
    /// `issuer_extra` appended to the issuer table, and the given certificates.
    pub fn write_config(
        &self,
        directory: &str,
        ca_pem_file: &Path,
        issuer_extra: &str,
        certs: &[CertSpec<'_>],
        tail: &str,
    ) {
        let mut s = format!(
            "state_dir = \"{state}\"\n\n[http01]\nlisten = [\"127.0.0.1:{port}\"]\n\n\
             [issuer.ca]\ndirectory = \"{directory}\"\nca_bundle = \"{ca}\"\n\
             contact = [\"mailto:admin@example.com\"]\n{issuer_extra}\n\n\
             [[issuer.ca.solver]]\nhttp01 = {{ self_check = false }}\n\n",
            state = self.state_dir().display(),
            port = self.http_port,
            ca = ca_pem_file.display(),
        );
        for c in certs {
            let domains: Vec<String> = c.domains.iter().map(|d| format!("\"{d}\"")).collect();
            s.push_str(&format!(
                "[certificate.{}]\nissuer = \"ca\"\ndomains = [{}]\nkey = \"{}\"\noutput = {{ dir = \"{}\" }}\n\n",
                c.name,
                domains.join(", "),
                c.key,
                self.out_dir(c.name).display()
            ));
        }
        s.push_str(tail);
        std::fs::write(&self.config, s).unwrap();
    }

    /// Write a config straight against pebble.
    pub fn write_pebble_config(&self, certs: &[CertSpec<'_>]) {
        let ca = self.dir.path().join("pebble-ca.pem");
        self.write_config(&self.pebble.directory_url(), &ca, "", certs, "");
    }

    /// A `certkeeper` command with `--config` and a log level set.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--config")
            .arg(&self.config)
            .args(args)
            .env("CERTKEEPER_LOG", "info")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null());
        c
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
        let p = self.state_dir().join("certs").join(format!("{name}.json"));
        let text = std::fs::read_to_string(p).ok()?;
        serde_json::from_str(&text).ok()
    }
}

/// Run a command to completion with a time limit; the child is killed (by its PID) when over.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn certkeeper");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait for certkeeper"),
        Err(_) => {
            // Our own child, by PID.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let out = rx.recv().expect("child output").expect("wait");
            panic!(
                "certkeeper did not finish within {limit:?}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// A child process killed (SIGKILL, by PID) and reaped when dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a checked pair is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    /// Leaf serial, hex.
    pub serial: String,
    /// The bytes of fullchain.pem, privkey.pem, chain.pem, cert.pem (in that order).
    pub bytes: Vec<Vec<u8>>,
    /// The leaf's DNS names, sorted.
    pub names: Vec<String>,
}

/// Check the pair in `dir` through its top-level symlinks: all four files readable, the key matches
/// the leaf, fullchain = cert + chain, the chain verifies up to `root`, the leaf names are `names`.
pub fn check_pair(dir: &Path, root: &X509, names: &[&str]) -> Result<Pair, String> {
    let mut bytes = Vec::new();
    for f in ["fullchain.pem", "privkey.pem", "chain.pem", "cert.pem"] {
        let p = dir.join(f);
        let b = std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        bytes.push(b);
    }
    let full = X509::stack_from_pem(&bytes[0]).map_err(|e| format!("fullchain.pem: {e}"))?;
    let key = openssl::pkey::PKey::private_key_from_pem(&bytes[1])
        .map_err(|e| format!("privkey.pem: {e}"))?;
    let chain = X509::stack_from_pem(&bytes[2]).map_err(|e| format!("chain.pem: {e}"))?;
    let cert = X509::stack_from_pem(&bytes[3]).map_err(|e| format!("cert.pem: {e}"))?;
    if cert.len() != 1 {
        return Err(format!("cert.pem holds {} certificates", cert.len()));
    }
    if chain.is_empty() {
        return Err("chain.pem holds no certificate".into());
    }
    let der = |v: &[X509]| -> Vec<Vec<u8>> { v.iter().map(|c| c.to_der().unwrap()).collect() };
    let mut expect = der(&cert);
    expect.extend(der(&chain));
    if der(&full) != expect {
        return Err("fullchain.pem is not cert.pem followed by chain.pem".into());
    }
    let leaf = &cert[0];
    let leaf_key = leaf.public_key().map_err(|e| e.to_string())?;
    if !key.public_eq(&leaf_key) {
        return Err("privkey.pem does not match cert.pem".into());
    }
    let mut store = X509StoreBuilder::new().unwrap();
    store.add_cert(root.clone()).unwrap();
    let store = store.build();
    let mut untrusted = Stack::new().unwrap();
    for c in &chain {
        untrusted.push(c.clone()).unwrap();
    }
    let mut ctx = X509StoreContext::new().unwrap();
    let ok = ctx
        .init(&store, leaf, &untrusted, |c| c.verify_cert())
        .map_err(|e| e.to_string())?;
    if !ok {
        return Err(format!(
            "the chain does not verify to pebble's root: {}",
            ctx.error()
        ));
    }
    let mut got: Vec<String> = leaf
        .subject_alt_names()
        .map(|s| {
            s.iter()
                .filter_map(|n| n.dnsname().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    got.sort();
    let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    want.sort();
    if got != want {
        return Err(format!("the leaf is for {got:?}, expected {want:?}"));
    }
    let serial = leaf
        .serial_number()
        .to_bn()
        .unwrap()
        .to_hex_str()
        .unwrap()
        .to_string();
    Ok(Pair {
        serial,
        bytes,
        names: got,
    })
}

/// Wait (bounded) until `f` returns `Some`, polling every 200 ms.
pub async fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The `failures` count of a certificate's state file.
pub fn failures(state: &serde_json::Value) -> u64 {
    state["retry"]["failures"].as_u64().unwrap_or(0)
}
