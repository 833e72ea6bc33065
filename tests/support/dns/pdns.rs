//! A throw-away PowerDNS Authoritative server with the sqlite3 backend and the HTTP API on.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::{Proc, free_port, wait_ready};

/// The API key the test server accepts.
pub const API_KEY: &str = "pdns-test-key";

/// A running `pdns_server` serving `example.test`.
pub struct Pdns {
    /// DNS address.
    pub addr: SocketAddr,
    /// API base URL (`http://127.0.0.1:PORT`).
    pub api_url: String,
    /// Temp directory (database, sockets, log).
    pub dir: tempfile::TempDir,
    proc: Proc,
}

impl Pdns {
    /// Start pdns_server, or `None` when it or sqlite3 is not installed.
    pub async fn start() -> Option<Self> {
        let schema = "/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql";
        for p in ["/usr/sbin/pdns_server", "/usr/bin/sqlite3", schema] {
            if !std::path::Path::new(p).exists() {
                eprintln!(
                    "skipping: {p} missing (apt-get install pdns-server pdns-backend-sqlite3 sqlite3)"
                );
                return None;
            }
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("pdns.sqlite3");
        let zone_sql = "INSERT INTO domains (name, type) VALUES ('example.test', 'NATIVE');\n\
             INSERT INTO records (domain_id, name, type, content, ttl, prio, disabled, auth) VALUES \
             (1, 'example.test', 'SOA', 'ns1.example.test. hostmaster.example.test. 1 3600 600 86400 60', 60, 0, 0, 1),\
             (1, 'example.test', 'NS', 'ns1.example.test.', 60, 0, 0, 1),\
             (1, 'ns1.example.test', 'A', '127.0.0.1', 60, 0, 0, 1);\n";
        let sql = format!(
            "{}\n{zone_sql}",
            std::fs::read_to_string(schema).expect("schema")
        );
        let out = Command::new("sqlite3")
            .arg(&db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write as _;
                c.stdin.take().expect("stdin").write_all(sql.as_bytes())?;
                c.wait_with_output()
            })
            .expect("sqlite3");
        assert!(
            out.status.success(),
            "sqlite3: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let web = free_port();
        let log: PathBuf = dir.path().join("pdns.log");
        let logf = std::fs::File::create(&log).expect("log");
        let mut cmd = Command::new("/usr/sbin/pdns_server");
        cmd.args([
            "--no-config",
            "--guardian=no",
            "--daemon=no",
            "--disable-syslog",
            "--write-pid=no",
            "--launch=gsqlite3",
            "--local-address=127.0.0.1",
            "--api=yes",
            "--webserver=yes",
            "--webserver-address=127.0.0.1",
            "--webserver-allow-from=127.0.0.0/8",
        ])
        .arg(format!("--gsqlite3-database={}", db.display()))
        .arg(format!("--local-port={port}"))
        .arg(format!("--api-key={API_KEY}"))
        .arg(format!("--webserver-port={web}"))
        .arg(format!("--socket-dir={}", dir.path().display()))
        .stdout(logf.try_clone().expect("log"))
        .stderr(logf);
        let mut proc = Proc(cmd.spawn().expect("spawn pdns_server"));
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        wait_ready(addr, "example.test.", "pdns_server", &mut proc, &log).await;
        Some(Self {
            addr,
            api_url: format!("http://127.0.0.1:{web}"),
            dir,
            proc,
        })
    }
}
