//! acme2certifier as a second real CA: [`A2c::start`] runs `../shared/testca/acme2certifier/up.sh`
//! (acme2certifier 0.46.3 behind nginx, pebble-challtestsrv as its DNS) in a tempdir on free loopback
//! ports, parses the directory JSON it prints, and runs the `run/down.sh` it wrote on drop, which
//! stops exactly the processes up.sh started (by their PID files).
//!
//! The Python venv is shared by every test and every run: it lives in `target/tmp/a2c-venv`
//! (`VENV`, a knob of up.sh), so only the first start pays the pip install (about a minute, needs
//! the package registry). Starts are serialised with `flock` on `target/tmp/a2c.lock` so two tests
//! never build the venv at once; `flock -o` keeps the lock out of the daemons up.sh leaves behind.
//!
//! What acme2certifier does and where it is lenient: `../shared/testca/acme2certifier/README.md`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::pebble::free_port;

/// External account binding on the CA (`EAB=` of up.sh).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Eab {
    /// Accepted when sent, not required (up.sh's default).
    #[default]
    Optional,
    /// New accounts need a binding (`eab_strict_mode`).
    Required,
    /// No EAB handler at all.
    Off,
}

/// How to start acme2certifier.
#[derive(Clone, Debug, Default)]
pub struct A2cOpts {
    /// EAB mode.
    pub eab: Eab,
    /// Offer `dns-persist-01` (`DNS_PERSIST=1`).
    pub dns_persist: bool,
    /// The port of a DNS server already listening on 127.0.0.1 (a test bind9) for acme2certifier
    /// to ask instead of pebble-challtestsrv (up.sh starts none when the port is taken).
    pub dns_port: Option<u16>,
}

/// A running acme2certifier; dropping it runs `run/down.sh`.
pub struct A2c {
    dir: tempfile::TempDir,
    tls_port: u16,
    dns_port: u16,
    mgmt_port: u16,
    http01_port: u16,
    /// pebble-challtestsrv was started (no `dns_port` given).
    challtestsrv: bool,
    /// The directory document up.sh printed.
    pub directory: serde_json::Value,
}

/// Where up.sh lives: `$A2C_UP`, else `../shared/testca/acme2certifier/up.sh` next to the repo.
pub fn up_script() -> PathBuf {
    if let Some(p) = std::env::var_os("A2C_UP") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/testca/acme2certifier/up.sh")
}

/// The venv every start shares (and the lock serialising starts).
fn venv_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("a2c-venv")
}

/// The directory JSON after up.sh's "acme2certifier up:" line.
fn parse_up_output(stdout: &str) -> Result<serde_json::Value, String> {
    let after = stdout
        .split_once("acme2certifier up:")
        .map(|(_, rest)| rest)
        .ok_or_else(|| format!("up.sh did not say it was up:\n{stdout}"))?;
    let json = after
        .find('{')
        .map(|i| &after[i..])
        .ok_or_else(|| format!("no directory JSON in up.sh's output:\n{stdout}"))?;
    serde_json::from_str(json.trim()).map_err(|e| format!("directory JSON: {e}:\n{json}"))
}

impl A2c {
    /// Start acme2certifier; panics (with up.sh's output and the logs) when it does not come up.
    ///
    /// Ports are picked free but could be taken before the servers bind them; a failed start is
    /// stopped and retried on new ports (three tries in all).
    pub fn start(opts: A2cOpts) -> A2c {
        let script = up_script();
        assert!(
            script.exists(),
            "{} is missing (set A2C_UP to acme2certifier's up.sh)",
            script.display()
        );
        let mut last = String::new();
        for attempt in 1..=3 {
            match Self::start_once(&script, &opts) {
                Ok(a) => return a,
                Err(e) => {
                    eprintln!("a2c harness: start {attempt} failed: {e}");
                    last = e;
                }
            }
        }
        panic!("acme2certifier did not start: {last}");
    }

    fn start_once(script: &Path, opts: &A2cOpts) -> Result<A2c, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut a = A2c {
            dir,
            tls_port: free_port(),
            dns_port: opts.dns_port.unwrap_or_else(free_port),
            mgmt_port: free_port(),
            http01_port: free_port(),
            challtestsrv: opts.dns_port.is_none(),
            directory: serde_json::Value::Null,
        };
        let a2c_port = free_port();
        std::fs::create_dir_all(env!("CARGO_TARGET_TMPDIR")).expect("target tmp dir");
        let lock = Path::new(env!("CARGO_TARGET_TMPDIR")).join("a2c.lock");
        let mut cmd = Command::new("flock");
        cmd.arg("-o")
            .arg(&lock)
            .arg(script)
            .env("A2C_DIR", a.dir.path())
            .env("VENV", venv_dir())
            .env("A2C_PORT", a2c_port.to_string())
            .env("TLS_PORT", a.tls_port.to_string())
            .env("DNS_PORT", a.dns_port.to_string())
            .env("MGMT_PORT", a.mgmt_port.to_string())
            .env("HTTP01_PORT", a.http01_port.to_string())
            .env(
                "EAB",
                match opts.eab {
                    Eab::Optional => "optional",
                    Eab::Required => "required",
                    Eab::Off => "off",
                },
            )
            .env("DNS_PERSIST", if opts.dns_persist { "1" } else { "0" })
            .env_remove("RUN");
        // The first start installs the venv from the registry: allow it time.
        let out = super::process::run_bounded(cmd, Duration::from_secs(400));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            let msg = format!(
                "up.sh exited with {}:\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            a.print_logs();
            return Err(msg); // dropping `a` runs down.sh if up.sh got that far
        }
        a.directory = parse_up_output(&stdout)?;
        if a.challtestsrv {
            a.wait_challtestsrv()?;
        }
        Ok(a)
    }

    /// Wait (bounded) until challtestsrv's management API accepts connections.
    fn wait_challtestsrv(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.mgmt_port)).is_err() {
            if Instant::now() > deadline {
                return Err(format!(
                    "pebble-challtestsrv did not listen on {} within 10 s",
                    self.mgmt_port
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// up.sh's run directory (CA, logs, eab.csv, down.sh).
    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// The ACME directory URL (TLS through nginx).
    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/directory", self.tls_port)
    }

    /// The TLS root nginx's certificate chains to (the issuer's `ca_bundle`).
    pub fn tls_ca_file(&self) -> PathBuf {
        self.run_dir().join("tls/tls-ca.pem")
    }

    /// The TLS root as PEM text.
    pub fn tls_ca_pem(&self) -> String {
        std::fs::read_to_string(self.tls_ca_file()).expect("read a2c tls-ca.pem")
    }

    /// The issuing CA certificate (PEM text) the leaves chain to.
    pub fn issuing_ca_pem(&self) -> String {
        std::fs::read_to_string(self.run_dir().join("ca/ca-cert.pem"))
            .expect("read a2c ca-cert.pem")
    }

    /// The port acme2certifier fetches HTTP-01 responses from (certkeeper's `http01.listen`).
    pub fn http01_port(&self) -> u16 {
        self.http01_port
    }

    /// The nameserver acme2certifier asks: challtestsrv (every A is 127.0.0.1), or the server
    /// given as `dns_port`.
    pub fn dns_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.dns_port))
    }

    /// challtestsrv's management API base URL (`/set-txt`, `/clear-txt`).
    pub fn challtestsrv_mgmt(&self) -> String {
        format!("http://127.0.0.1:{}", self.mgmt_port)
    }

    /// The EAB `(kid, base64url HMAC key)` from `run/eab.csv`.
    pub fn eab_key(&self) -> (String, String) {
        let text = std::fs::read_to_string(self.run_dir().join("eab.csv")).expect("read eab.csv");
        let line = text
            .lines()
            .find(|l| !l.starts_with("eab_kid") && l.contains(','))
            .expect("a kid line in eab.csv");
        let (kid, mac) = line.split_once(',').unwrap();
        (kid.trim().to_string(), mac.trim().to_string())
    }

    /// `meta.profiles` names of the directory, sorted.
    pub fn profiles(&self) -> Vec<String> {
        self.directory["meta"]["profiles"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// POST a JSON command to challtestsrv's management API; panics when it fails.
    pub fn challtestsrv(&self, path: &str, body: serde_json::Value) {
        let out = Command::new("curl")
            .args(["-sf", "-X", "POST", "--data-binary"])
            .arg(body.to_string())
            .arg(format!("{}{path}", self.challtestsrv_mgmt()))
            .output()
            .expect("run curl");
        assert!(
            out.status.success(),
            "challtestsrv {path}: curl {}",
            out.status
        );
    }

    /// Publish a TXT record in challtestsrv (`host` with trailing dot).
    pub fn set_txt(&self, host: &str, value: &str) {
        self.challtestsrv(
            "/set-txt",
            serde_json::json!({ "host": host, "value": value }),
        );
    }

    /// The request log of acme2certifier (for asserting on what it was asked).
    pub fn a2c_log(&self) -> String {
        std::fs::read_to_string(self.run_dir().join("log/a2c.log")).unwrap_or_default()
    }

    /// The lines of nginx's access log (every request certkeeper made, with its path).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.run_dir().join("log/nginx-access.log")).unwrap_or_default()
    }

    /// Print up.sh's logs (also done when a test panics).
    pub fn print_logs(&self) {
        let Ok(entries) = std::fs::read_dir(self.run_dir().join("log")) else {
            return;
        };
        for e in entries.flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            eprintln!(
                "===== {} (last 60 lines) =====\n{}",
                e.path().display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

impl Drop for A2c {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        // down.sh stops only what up.sh started, by the PID files up.sh wrote.
        let run = self.run_dir();
        let down = run.join("down.sh");
        if down.exists() {
            let _ = Command::new(&down)
                .stdout(std::process::Stdio::null())
                .status();
            return;
        }
        // up.sh failed before writing down.sh: the same PID files, by hand.
        for f in ["nginx/nginx.pid", "a2c.pid", "challtestsrv.pid"] {
            if let Some(pid) = std::fs::read_to_string(run.join(f))
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_up_output() {
        let out = "note: x\nacme2certifier up: https://127.0.0.1:1/directory  (CA bundle: /x)\n{\n  \"newNonce\": \"n\"\n}\n";
        let v = super::parse_up_output(out).unwrap();
        assert_eq!(v["newNonce"], "n");
        assert!(super::parse_up_output("nothing").is_err());
    }
}
