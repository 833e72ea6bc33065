//! Running the real `certkeeper` binary in tests: a [`TestConfig`] builder that writes a config (and
//! the files it points to: CA bundle, EAB key) into its own tempdir, [`TestConfig::run_cli`] for one
//! command with its exit status and output, and [`TestConfig::spawn_daemon`] for `certkeeper run`
//! with a guard that stops it on drop.
//!
//! This is the one way tests run the binary. Tests with a hand-written config file use the same
//! pieces by path: [`command_at`] / [`std_command_at`] build the command, [`run_command`] (async)
//! and [`run_command_sync`] (blocking) run it bounded, [`Daemon::start`] runs `certkeeper run`.
//!
//! ```ignore
//! let pebble = Pebble::start(PebbleOpts { http_port, ..Default::default() }).await;
//! let cfg = TestConfig::new()
//!     .http01_listen(http_port)
//!     .issuer(IssuerSpec::pebble("pebble", &pebble).solver_http01())
//!     .certificate(CertSpec::new("www", "pebble", &["example.com"]))
//!     .write();
//! let out = cfg.run_cli(&["renew"]).await;
//! assert!(out.status.success(), "{out}");
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::pebble::Pebble;

/// The binary under test.
pub const CERTKEEPER_BIN: &str = env!("CARGO_BIN_EXE_certkeeper");

/// How long one CLI command may take before the test kills it and fails (a loaded 2-core machine).
pub const CLI_TIMEOUT: Duration = Duration::from_secs(240);

/// Quote `s` as a TOML basic string.
pub fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Quote a list of strings as a TOML array.
pub fn toml_list<S: AsRef<str>>(items: &[S]) -> String {
    let parts: Vec<String> = items.iter().map(|s| toml_str(s.as_ref())).collect();
    format!("[{}]", parts.join(", "))
}

/// One `[issuer.NAME]` table and its solvers.
#[derive(Clone, Debug)]
pub struct IssuerSpec {
    /// The issuer's config name.
    pub name: String,
    /// The ACME directory URL (or a shorthand).
    pub directory: String,
    /// PEM written to `<name>-ca.pem` in the config dir and used as `ca_bundle`.
    pub ca_bundle_pem: Option<String>,
    /// `ca_bundle` as a path, written as is (wins over `ca_bundle_pem`).
    pub ca_bundle_path: Option<PathBuf>,
    /// EAB `(kid, key text)`; the key is written to `<name>-eab.key` and used as `hmac_key_file`.
    pub eab: Option<(String, String)>,
    /// `account_key` when set.
    pub account_key: Option<String>,
    /// `contact`.
    pub contact: Vec<String>,
    /// Each solver as the body of a `[[issuer.NAME.solver]]` table (TOML lines).
    pub solvers: Vec<String>,
    /// Extra TOML lines inside the issuer table.
    pub extra: Vec<String>,
}

impl IssuerSpec {
    /// An issuer at `directory` with no solver yet.
    pub fn new(name: &str, directory: &str) -> Self {
        Self {
            name: name.to_string(),
            directory: directory.to_string(),
            ca_bundle_pem: None,
            ca_bundle_path: None,
            eab: None,
            account_key: None,
            contact: vec!["mailto:admin@example.com".to_string()],
            solvers: Vec::new(),
            extra: Vec::new(),
        }
    }

    /// An issuer for a running pebble: its directory, and its TLS CA as `ca_bundle`.
    pub fn pebble(name: &str, pebble: &Pebble) -> Self {
        Self::new(name, &pebble.directory_url()).ca_bundle_pem(pebble.ca_pem())
    }

    /// Trust `pem` for the directory's TLS (written to a file in the config dir).
    pub fn ca_bundle_pem(mut self, pem: &str) -> Self {
        self.ca_bundle_pem = Some(pem.to_string());
        self
    }

    /// Use `path` as `ca_bundle`.
    pub fn ca_bundle_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_bundle_path = Some(path.into());
        self
    }

    /// External account binding with `kid` and the HMAC key text (as the CA hands it out).
    pub fn eab(mut self, kid: &str, key: &str) -> Self {
        self.eab = Some((kid.to_string(), key.to_string()));
        self
    }

    /// `account_key = "..."`.
    pub fn account_key(mut self, kind: &str) -> Self {
        self.account_key = Some(kind.to_string());
        self
    }

    /// An HTTP-01 solver through the built-in listener, without self-check.
    pub fn solver_http01(self) -> Self {
        self.solver("http01 = { self_check = false }")
    }

    /// A solver given as the TOML body of its `[[issuer.NAME.solver]]` table.
    pub fn solver(mut self, toml_body: &str) -> Self {
        self.solvers.push(toml_body.to_string());
        self
    }

    /// An extra TOML line in the issuer table.
    pub fn extra(mut self, line: &str) -> Self {
        self.extra.push(line.to_string());
        self
    }
}

/// One `[certificate.NAME]` table.
#[derive(Clone, Debug)]
pub struct CertSpec {
    /// The certificate's config name.
    pub name: String,
    /// `issuer`: one name, or a fallback list when longer.
    pub issuers: Vec<String>,
    /// `domains`.
    pub domains: Vec<String>,
    /// `key` when set (the product's default otherwise).
    pub key: Option<String>,
    /// `output.dir`; `<config dir>/tls/<name>` when not set.
    pub output_dir: Option<PathBuf>,
    /// `output.key_mode`, e.g. `"0640"`.
    pub key_mode: Option<String>,
    /// `output.cert_mode`.
    pub cert_mode: Option<String>,
    /// `output.owner`.
    pub owner: Option<String>,
    /// `output.group`.
    pub group: Option<String>,
    /// `reload` commands.
    pub reload: Vec<String>,
    /// Extra TOML lines inside the certificate table (`renew_before = "10d"`, ...).
    pub extra: Vec<String>,
}

impl CertSpec {
    /// A certificate for `domains` from `issuer`.
    pub fn new(name: &str, issuer: &str, domains: &[&str]) -> Self {
        Self {
            name: name.to_string(),
            issuers: vec![issuer.to_string()],
            domains: domains.iter().map(|d| d.to_string()).collect(),
            key: None,
            output_dir: None,
            key_mode: None,
            cert_mode: None,
            owner: None,
            group: None,
            reload: Vec::new(),
            extra: Vec::new(),
        }
    }

    /// An ordered issuer fallback list.
    pub fn issuers(mut self, issuers: &[&str]) -> Self {
        self.issuers = issuers.iter().map(|s| s.to_string()).collect();
        self
    }

    /// `key = "..."`.
    pub fn key(mut self, kind: &str) -> Self {
        self.key = Some(kind.to_string());
        self
    }

    /// `output.dir`.
    pub fn output_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.output_dir = Some(dir.into());
        self
    }

    /// `output.key_mode`.
    pub fn key_mode(mut self, mode: &str) -> Self {
        self.key_mode = Some(mode.to_string());
        self
    }

    /// `output.cert_mode`.
    pub fn cert_mode(mut self, mode: &str) -> Self {
        self.cert_mode = Some(mode.to_string());
        self
    }

    /// `output.owner`.
    pub fn owner(mut self, owner: &str) -> Self {
        self.owner = Some(owner.to_string());
        self
    }

    /// `output.group`.
    pub fn group(mut self, group: &str) -> Self {
        self.group = Some(group.to_string());
        self
    }

    /// Add a reload command.
    pub fn reload(mut self, command: &str) -> Self {
        self.reload.push(command.to_string());
        self
    }

    /// An extra TOML line in the certificate table.
    pub fn extra(mut self, line: &str) -> Self {
        self.extra.push(line.to_string());
        self
    }
}

/// A certkeeper config in its own tempdir (state dir, output dirs and the config file inside it).
///
/// Clones share the tempdir: a clone is another config text for the same place.
#[derive(Clone)]
pub struct TestConfig {
    dir: Arc<tempfile::TempDir>,
    /// `http01.listen` addresses.
    pub http01_listen: Vec<String>,
    /// Issuers in order.
    pub issuers: Vec<IssuerSpec>,
    /// Certificates in order.
    pub certificates: Vec<CertSpec>,
    /// Extra top-level TOML lines (before any table).
    pub top: Vec<String>,
    /// Extra TOML appended at the end (whole tables: `[daemon]`, `[admin]`, ...).
    pub tail: Vec<String>,
    /// The admin listener's port, when [`TestConfig::admin_listen`] set one.
    pub admin_port: Option<u16>,
}

impl Default for TestConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl TestConfig {
    /// An empty config in a fresh tempdir.
    pub fn new() -> Self {
        Self {
            dir: Arc::new(tempfile::tempdir().expect("tempdir")),
            http01_listen: Vec::new(),
            issuers: Vec::new(),
            certificates: Vec::new(),
            top: Vec::new(),
            tail: Vec::new(),
            admin_port: None,
        }
    }

    /// The tempdir, shared (it is removed when the last holder drops it).
    pub fn shared_dir(&self) -> Arc<tempfile::TempDir> {
        self.dir.clone()
    }

    /// Serve the admin listener (`/healthz`, `/metrics`) on `127.0.0.1:<port>`.
    pub fn admin_listen(mut self, port: u16) -> Self {
        self.admin_port = Some(port);
        self.tail(&format!("[admin]\nlisten = \"127.0.0.1:{port}\""))
    }

    /// Listen for HTTP-01 on `127.0.0.1:<port>` (pebble's `http_port`).
    pub fn http01_listen(mut self, port: u16) -> Self {
        self.http01_listen = vec![format!("127.0.0.1:{port}")];
        self
    }

    /// Add an issuer.
    pub fn issuer(mut self, issuer: IssuerSpec) -> Self {
        self.issuers.push(issuer);
        self
    }

    /// Add a certificate.
    pub fn certificate(mut self, cert: CertSpec) -> Self {
        self.certificates.push(cert);
        self
    }

    /// Add raw TOML at the end of the file.
    pub fn tail(mut self, toml: &str) -> Self {
        self.tail.push(toml.to_string());
        self
    }

    /// The lines of `file` in this config's directory, sorted (empty when it does not exist yet):
    /// e.g. the log a reload hook appends to.
    pub fn sorted_lines(&self, file: &str) -> Vec<String> {
        let mut lines: Vec<String> = std::fs::read_to_string(self.dir().join(file))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        lines.sort();
        lines
    }

    /// The tempdir everything lives in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The config file path (`certkeeper.toml` in the tempdir).
    pub fn path(&self) -> PathBuf {
        self.dir().join("certkeeper.toml")
    }

    /// The state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.dir().join("state")
    }

    /// The output directory of certificate `name`.
    pub fn output_dir(&self, name: &str) -> PathBuf {
        self.certificates
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| c.output_dir.clone())
            .unwrap_or_else(|| self.dir().join("tls").join(name))
    }

    /// The config text as [`TestConfig::write`] writes it (also writes CA bundles and EAB keys).
    pub fn render(&self) -> String {
        let mut t = String::new();
        t.push_str(&format!(
            "state_dir = {}\n",
            toml_str(&self.state_dir().display().to_string())
        ));
        for line in &self.top {
            t.push_str(line);
            t.push('\n');
        }
        if !self.http01_listen.is_empty() {
            t.push_str(&format!(
                "\n[http01]\nlisten = {}\n",
                toml_list(&self.http01_listen)
            ));
        }
        for i in &self.issuers {
            t.push_str(&format!("\n[issuer.{}]\n", i.name));
            t.push_str(&format!("directory = {}\n", toml_str(&i.directory)));
            if !i.contact.is_empty() {
                t.push_str(&format!("contact = {}\n", toml_list(&i.contact)));
            }
            let bundle = match (&i.ca_bundle_path, &i.ca_bundle_pem) {
                (Some(p), _) => Some(p.clone()),
                (None, Some(pem)) => {
                    let p = self.dir().join(format!("{}-ca.pem", i.name));
                    std::fs::write(&p, pem).expect("write ca bundle");
                    Some(p)
                }
                (None, None) => None,
            };
            if let Some(p) = bundle {
                t.push_str(&format!(
                    "ca_bundle = {}\n",
                    toml_str(&p.display().to_string())
                ));
            }
            if let Some((kid, key)) = &i.eab {
                let p = self.dir().join(format!("{}-eab.key", i.name));
                std::fs::write(&p, format!("{key}\n")).expect("write eab key");
                t.push_str(&format!(
                    "eab = {{ kid = {}, hmac_key_file = {} }}\n",
                    toml_str(kid),
                    toml_str(&p.display().to_string())
                ));
            }
            if let Some(k) = &i.account_key {
                t.push_str(&format!("account_key = {}\n", toml_str(k)));
            }
            for line in &i.extra {
                t.push_str(line);
                t.push('\n');
            }
            for s in &i.solvers {
                t.push_str(&format!("\n[[issuer.{}.solver]]\n{s}\n", i.name));
            }
        }
        for c in &self.certificates {
            t.push_str(&format!("\n[certificate.{}]\n", c.name));
            if c.issuers.len() == 1 {
                t.push_str(&format!("issuer = {}\n", toml_str(&c.issuers[0])));
            } else {
                t.push_str(&format!("issuer = {}\n", toml_list(&c.issuers)));
            }
            t.push_str(&format!("domains = {}\n", toml_list(&c.domains)));
            if let Some(k) = &c.key {
                t.push_str(&format!("key = {}\n", toml_str(k)));
            }
            let mut out = vec![format!(
                "dir = {}",
                toml_str(&self.output_dir(&c.name).display().to_string())
            )];
            for (k, v) in [
                ("owner", &c.owner),
                ("group", &c.group),
                ("key_mode", &c.key_mode),
                ("cert_mode", &c.cert_mode),
            ] {
                if let Some(v) = v {
                    out.push(format!("{k} = {}", toml_str(v)));
                }
            }
            t.push_str(&format!("output = {{ {} }}\n", out.join(", ")));
            if !c.reload.is_empty() {
                t.push_str(&format!("reload = {}\n", toml_list(&c.reload)));
            }
            for line in &c.extra {
                t.push_str(line);
                t.push('\n');
            }
        }
        for block in &self.tail {
            t.push('\n');
            t.push_str(block);
            t.push('\n');
        }
        t
    }

    /// Write the config file (and the files it refers to); returns `self` for chaining.
    pub fn write(self) -> Self {
        let text = self.render();
        std::fs::write(self.path(), text).expect("write config");
        self
    }

    /// Replace the config file with `text` as is.
    pub fn write_raw(&self, text: &str) {
        std::fs::write(self.path(), text).expect("write config");
    }

    /// A `certkeeper --config <path> <args...>` command with logs at `info`.
    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        command_at(&self.path(), args)
    }

    /// The blocking twin of [`TestConfig::command`].
    pub fn std_command(&self, args: &[&str]) -> std::process::Command {
        std_command_at(&self.path(), args)
    }

    /// Run one command to completion (bounded by [`CLI_TIMEOUT`]) and return what it did.
    pub async fn run_cli(&self, args: &[&str]) -> CliOutput {
        run_command(self.command(args), args).await
    }

    /// Run one command to completion from sync code, bounded by `limit` (killed and the test
    /// panics when over).
    pub fn run_sync(&self, args: &[&str], limit: Duration) -> CliOutput {
        run_command_sync(self.std_command(args), args, limit)
    }

    /// Start `certkeeper run` on this config; stopped (SIGTERM, then SIGKILL) when the guard drops.
    pub fn spawn_daemon(&self) -> Daemon {
        let log = self.dir().join(format!(
            "daemon-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let mut d = Daemon::start(daemon_command_at(&self.path()), log);
        d.admin_port = self.admin_port;
        d
    }

    /// The state file of certificate `name`, as JSON (None when absent or unreadable).
    pub fn cert_state(&self, name: &str) -> Option<serde_json::Value> {
        let p = self.state_dir().join("certs").join(format!("{name}.json"));
        let text = std::fs::read_to_string(p).ok()?;
        serde_json::from_str(&text).ok()
    }
}

/// The `failures` count of a certificate's state file (see [`TestConfig::cert_state`]).
pub fn failures(state: &serde_json::Value) -> u64 {
    state["retry"]["failures"].as_u64().unwrap_or(0)
}

/// A `certkeeper --config <config> <args...>` command (async) with the test environment: logs at
/// `info` (set `CERTKEEPER_LOG` on it for more), no colours, no journal, stdin closed, killed
/// when dropped.
pub fn command_at(config: &Path, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::from(std_command_at(config, args));
    cmd.kill_on_drop(true);
    cmd
}

/// The blocking twin of [`command_at`].
pub fn std_command_at(config: &Path, args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(CERTKEEPER_BIN);
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env_remove("CERTKEEPER_CONFIG")
        .env_remove("CERTKEEPER_LOG")
        .env_remove("JOURNAL_STREAM")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    cmd
}

/// `certkeeper --config <config> run` as [`Daemon::start`] takes it: no systemd notify socket or
/// watchdog inherited from the test runner (set them on the command to test them).
pub fn daemon_command_at(config: &Path) -> std::process::Command {
    let mut cmd = std_command_at(config, &["run"]);
    cmd.env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID");
    cmd
}

/// Run a blocking command (described by `args` in messages) to completion, bounded by `limit`.
pub fn run_command_sync(cmd: std::process::Command, args: &[&str], limit: Duration) -> CliOutput {
    CliOutput::from_output(args, super::process::run_bounded(cmd, limit))
}

/// Run `cmd` (described by `args` in messages) to completion, bounded by [`CLI_TIMEOUT`].
pub async fn run_command(mut cmd: tokio::process::Command, args: &[&str]) -> CliOutput {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().expect("start certkeeper");
    match tokio::time::timeout(CLI_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(out)) => CliOutput::from_output(args, out),
        Ok(Err(e)) => panic!("certkeeper {args:?}: waiting failed: {e}"),
        // The child was moved into the future; dropping it kills it (kill_on_drop).
        Err(_) => panic!("certkeeper {args:?} did not finish within {CLI_TIMEOUT:?}"),
    }
}

/// What one CLI command did.
#[derive(Debug)]
pub struct CliOutput {
    /// The arguments after `--config <path>`.
    pub args: Vec<String>,
    /// The exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error (the logs).
    pub stderr: String,
}

impl CliOutput {
    /// What `args` did, from a finished process's output.
    pub fn from_output(args: &[&str], out: Output) -> Self {
        CliOutput {
            args: args.iter().map(|s| s.to_string()).collect(),
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Exit status 0.
    pub fn ok(&self) -> bool {
        self.status.success()
    }

    /// stdout and stderr together, for searching messages wherever they were printed.
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// Panic with the whole output unless the command exited 0.
    pub fn assert_ok(&self) -> &Self {
        assert!(self.ok(), "expected success: {self}");
        self
    }

    /// Panic with the whole output unless the command exited non-zero.
    pub fn assert_failed(&self) -> &Self {
        assert!(!self.ok(), "expected failure: {self}");
        self
    }

    /// Panic unless stdout or stderr contains `needle` (case-insensitive).
    pub fn assert_mentions(&self, needle: &str) -> &Self {
        assert!(
            self.all().to_lowercase().contains(&needle.to_lowercase()),
            "expected the output to mention {needle:?}: {self}"
        );
        self
    }
}

impl fmt::Display for CliOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "certkeeper {:?} exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args, self.status, self.stdout, self.stderr
        )
    }
}

/// A running `certkeeper run`; dropping it stops the process it started (by its own handle).
pub struct Daemon {
    child: Option<std::process::Child>,
    log: PathBuf,
    /// The admin listener's port (set by [`TestConfig::spawn_daemon`], or by the test).
    pub admin_port: Option<u16>,
}

impl Daemon {
    /// Start `cmd` (a [`daemon_command_at`], possibly with more environment) with its stdout and
    /// stderr in the file `log`.
    pub fn start(mut cmd: std::process::Command, log: PathBuf) -> Daemon {
        let out = std::fs::File::create(&log).expect("create daemon log");
        let err = out.try_clone().expect("clone daemon log");
        let child = cmd
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("start certkeeper run");
        Daemon {
            child: Some(child),
            log,
            admin_port: None,
        }
    }

    /// The exit status when the daemon has exited, `None` while it runs.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let c = self.child.as_mut()?;
        c.try_wait().expect("wait for the daemon")
    }

    /// Panic with the log when the daemon has exited.
    pub fn assert_running(&mut self) {
        if let Some(c) = &mut self.child
            && let Ok(Some(status)) = c.try_wait()
        {
            panic!("the daemon exited ({status}); log:\n{}", self.log());
        }
    }

    /// Wait (bounded; panics with the log after `timeout`) until the daemon exits by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.child.as_mut().expect("the daemon was already stopped");
            if let Some(status) = c.try_wait().expect("wait for the daemon") {
                // Reaped: never signal this PID again.
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not exit within {timeout:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// GET `path` (`/healthz`, `/metrics`) from the admin listener: (HTTP status, body).
    ///
    /// Panics when no admin port is known or the listener does not answer within 10 s.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let port = self
            .admin_port
            .expect("no admin port: use TestConfig::admin_listen or set Daemon::admin_port");
        admin_get(port, path).await
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The daemon's combined stdout/stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Send `sig` to the daemon; panics (with the log) when it is not running.
    pub fn signal(&mut self, sig: nix::sys::signal::Signal) {
        self.assert_running();
        let c = self.child.as_ref().expect("the daemon was already stopped");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig)
            .expect("signal the daemon");
    }

    /// Wait (bounded) until `cond` holds for the daemon's log so far, checking before each try
    /// that the daemon still runs; panics with the log on timeout or exit.
    pub async fn wait_for_log(
        &mut self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut(&str) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_running();
            if cond(&self.log()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Poll (bounded) until `cond` holds; panics with the daemon log after `timeout`.
    pub async fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut() -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            if cond() {
                return;
            }
            if let Some(c) = &mut self.child
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!(
                    "certkeeper run exited ({status}) while waiting for {what}:\n{}",
                    self.log()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; daemon log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stop with SIGTERM and wait (bounded, then SIGKILL); returns the exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        // Already exited (and reaped by an earlier check): no signal to a PID that is not ours.
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "===== certkeeper run log ({}) =====\n{}",
                self.log.display(),
                self.log()
            );
        }
        self.stop();
    }
}

/// GET `path` from an admin listener on `127.0.0.1:<port>`: (HTTP status, body).
pub async fn admin_get(port: u16, path: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap_or_else(|e| panic!("admin GET {path} on port {port}: {e}"));
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}
