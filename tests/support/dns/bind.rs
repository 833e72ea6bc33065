//! A throw-away bind9 primary with TSIG-guarded dynamic updates.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::{Proc, free_port, wait_ready};

/// The TSIG key name bind grants updates to.
pub const KEY_NAME: &str = "certkeeper.";
/// The base64 TSIG secret (32 bytes).
pub const SECRET: &str = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=";

/// A running `named -g` serving `example.test` and `acme.test`.
///
/// `www.example.test` has the address 127.0.0.1, `alt.example.test` 127.0.0.2 (another loopback
/// address, for a second HTTP-01 responder on the same port).
/// `_acme-challenge.cname.example.test` is a CNAME to `delegated.acme.test` (another zone, as
/// with acme-dns).
pub struct Bind {
    /// The UDP/TCP address named listens on.
    pub addr: SocketAddr,
    /// The temp directory (config, zones, log).
    pub dir: tempfile::TempDir,
    /// `None` between [`Bind::stop`] and [`Bind::start_again`].
    proc: Option<Proc>,
}

fn zone_file(origin: &str, extra: &str) -> String {
    format!(
        "$ORIGIN {origin}.\n$TTL 60\n@ IN SOA ns1.{origin}. hostmaster.{origin}. 1 3600 600 86400 60\n@ IN NS ns1.{origin}.\nns1 IN A 127.0.0.1\n{extra}"
    )
}

impl Bind {
    /// Start named, or `None` (test skipped, with a message) when it is not installed.
    pub async fn start() -> Option<Self> {
        Self::start_inner(false).await
    }

    /// Like [`Bind::start`], but answering queries with RD set recursively (loopback clients only).
    ///
    /// An authoritative-only named does not chase a CNAME into another of its zones; a recursive
    /// resolver, as a real CA uses, does. pebble sends RD, so with this it sees the TXT behind
    /// `_acme-challenge.cname.example.test`. Queries with RD off (certkeeper's own checks) are
    /// answered from the zones as before.
    pub async fn start_recursive() -> Option<Self> {
        Self::start_inner(true).await
    }

    async fn start_inner(recursive: bool) -> Option<Self> {
        if !std::path::Path::new("/usr/sbin/named").exists() {
            eprintln!("skipping: /usr/sbin/named is not installed (apt-get install bind9)");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().display().to_string();
        let port = free_port();
        let recursion = if recursive {
            "recursion yes; allow-recursion { 127.0.0.1; };"
        } else {
            "recursion no;"
        };
        let conf = format!(
            r#"options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    {recursion}
    dnssec-validation no;
    allow-query {{ any; }};
    notify no;
}};
controls {{ }};
key "{KEY_NAME}" {{ algorithm hmac-sha256; secret "{SECRET}"; }};
zone "example.test" {{ type primary; file "{d}/example.test.zone"; update-policy {{ grant {KEY_NAME} zonesub TXT; }}; }};
zone "acme.test" {{ type primary; file "{d}/acme.test.zone"; update-policy {{ grant {KEY_NAME} zonesub TXT; }}; }};
"#
        );
        std::fs::write(dir.path().join("named.conf"), conf).expect("write conf");
        std::fs::write(
            dir.path().join("example.test.zone"),
            zone_file(
                "example.test",
                "www IN A 127.0.0.1\nalt IN A 127.0.0.2\n_acme-challenge.cname IN CNAME delegated.acme.test.\n",
            ),
        )
        .expect("zone");
        std::fs::write(
            dir.path().join("acme.test.zone"),
            zone_file("acme.test", ""),
        )
        .expect("zone");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let mut b = Self {
            addr,
            dir,
            proc: None,
        };
        b.start_again().await;
        Some(b)
    }

    /// Stop named (SIGKILL to the process this harness started, then reap it): the server is down
    /// until [`Bind::start_again`].
    pub fn stop(&mut self) {
        // Dropping the guard kills and reaps it.
        self.proc = None;
    }

    /// Start named again from the same config, zone files and journals, on the same port; waits
    /// (bounded) until it answers. A no-op while it runs.
    pub async fn start_again(&mut self) {
        if self.proc.is_some() {
            return;
        }
        let log: PathBuf = self.dir.path().join("named.log");
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log");
        let mut cmd = Command::new("/usr/sbin/named");
        cmd.args(["-g", "-n", "1", "-c"])
            .arg(self.dir.path().join("named.conf"));
        // As root, named would switch to the `bind` user, which cannot write our temp dir.
        cmd.stdout(Stdio::null()).stderr(logf);
        let mut proc = Proc(cmd.spawn().expect("spawn named"));
        wait_ready(self.addr, "example.test.", "named", &mut proc, &log).await;
        self.proc = Some(proc);
    }

    /// True unless stopped.
    pub fn is_running(&self) -> bool {
        self.proc.is_some()
    }

    /// named's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("named.log")).unwrap_or_default()
    }
}
