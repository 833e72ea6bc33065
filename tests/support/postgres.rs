//! A real PostgreSQL from Debian for the fleet tests: its own cluster (`initdb`) in a temp dir,
//! run by `pg_ctl` as the `postgres` user on a free loopback port, with a `certkeeper` role that
//! logs in with a password (SCRAM over TCP) and owns the databases the tests create. Stopped
//! (`pg_ctl stop -m fast`, then SIGKILL of its postmaster PID) when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::process::run_bounded;

/// The role the tests connect as, and its password.
pub const ROLE: &str = "certkeeper";
pub const PASSWORD: &str = "ck-test-password-1";

/// The directory with PostgreSQL's server binaries (`/usr/lib/postgresql/<ver>/bin`), the newest
/// installed; `None` when the `postgresql` package is not installed.
pub fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

/// A running cluster.
pub struct Postgres {
    bin: PathBuf,
    /// Holds data/, sock/ and the server log; removed on drop.
    dir: tempfile::TempDir,
    pub port: u16,
}

impl Postgres {
    /// initdb, start, create the `certkeeper` role. Panics with the server's log on failure: the
    /// fleet tests need it (scripts/deps installs `postgresql`).
    pub fn start() -> Self {
        let bin =
            bin_dir().expect("PostgreSQL is not installed: run scripts/deps (package postgresql)");
        let dir = tempfile::Builder::new()
            .prefix("ck-pg-")
            .tempdir()
            .expect("temp dir");
        for sub in ["", "data", "sock"] {
            let p = dir.path().join(sub);
            std::fs::create_dir_all(&p).unwrap();
            chown_postgres(&p);
        }
        std::fs::write(dir.path().join("pwfile"), "postgres-superuser-pw\n").unwrap();
        chown_postgres(&dir.path().join("pwfile"));
        let pg = Self {
            bin,
            port: super::free_port(),
            dir,
        };
        let data = pg.data_dir();
        pg.as_postgres(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--pwfile",
                pg.dir.path().join("pwfile").to_str().unwrap(),
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        pg.start_server();
        pg.psql(&format!("CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'"));
        pg.create_database("certkeeper");
        pg
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn sock_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// Run one of PostgreSQL's programs as the `postgres` user; panics with its output on failure.
    fn as_postgres(&self, program: &str, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"])
            .arg(self.bin.join(program))
            .args(args)
            .current_dir(self.dir.path());
        let out = run_bounded(cmd, Duration::from_secs(60));
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}\n{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        out
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn start_server(&self) {
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c full_page_writes=off",
            self.port,
            self.sock_dir().display()
        );
        let (data, log) = (self.data_dir(), self.dir.path().join("server.log"));
        self.as_postgres(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &opts,
                "-w",
                "-t",
                "30",
                "start",
            ],
        );
    }

    /// Stop the server (fast shutdown: clients are disconnected). Data is kept for [`start_again`].
    ///
    /// [`start_again`]: Postgres::start_again
    pub fn stop(&self) {
        let data = self.data_dir();
        self.as_postgres(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-m",
                "fast",
                "-w",
                "-t",
                "30",
                "stop",
            ],
        );
    }

    /// Start the stopped server again on the same port.
    pub fn start_again(&self) {
        self.start_server();
    }

    /// Run SQL as the superuser over the Unix socket; returns psql's unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in("postgres", sql)
    }

    /// Run SQL as the superuser in database `db`.
    pub fn psql_in(&self, db: &str, sql: &str) -> String {
        let (sock, port) = (self.sock_dir(), self.port.to_string());
        let out = self.as_postgres(
            "psql",
            &[
                "-h",
                sock.to_str().unwrap(),
                "-p",
                &port,
                "-U",
                "postgres",
                "-d",
                db,
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A new empty database owned by the `certkeeper` role; each test takes its own.
    pub fn create_database(&self, name: &str) {
        self.psql(&format!("CREATE DATABASE \"{name}\" OWNER {ROLE}"));
    }

    /// The URL certkeeper connects with (the password goes separately).
    pub fn url(&self, db: &str) -> String {
        format!("postgresql://{ROLE}@127.0.0.1:{}/{db}", self.port)
    }

    /// `pg_dump` of database `db` (plain SQL, data included) as bytes.
    pub fn dump(&self, db: &str) -> Vec<u8> {
        let (sock, port) = (self.sock_dir(), self.port.to_string());
        self.as_postgres(
            "pg_dump",
            &[
                "-h",
                sock.to_str().unwrap(),
                "-p",
                &port,
                "-U",
                "postgres",
                db,
            ],
        )
        .stdout
    }

    /// The postmaster's PID while it runs.
    fn postmaster_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let pid = self.postmaster_pid();
        let data = self.data_dir();
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args([
                "-D",
                data.to_str().unwrap(),
                "-m",
                "fast",
                "-w",
                "-t",
                "10",
                "stop",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        // Still there (pg_ctl failed or timed out): the postmaster we started, by its PID.
        if let Some(pid) = pid
            && self.postmaster_pid() == Some(pid)
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn chown_postgres(p: &Path) {
    let user = nix::unistd::User::from_name("postgres")
        .expect("look up user postgres")
        .expect("user postgres exists (package postgresql)");
    std::os::unix::fs::chown(p, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
        .unwrap_or_else(|e| panic!("chown {} to postgres (tests run as root): {e}", p.display()));
}

/// The files the nodes of a fleet share, written into `dir` with mode 0600: `storage.key` (a
/// fresh random encryption key, base64) and `pg.pass` (the `certkeeper` role's password).
pub fn write_shared_secrets(dir: &Path) {
    use base64::Engine as _;
    use std::os::unix::fs::PermissionsExt as _;
    let mut key = [0u8; 32];
    openssl::rand::rand_bytes(&mut key).unwrap();
    let key_b64 = base64::engine::general_purpose::STANDARD.encode(key);
    std::fs::write(dir.join("storage.key"), key_b64).unwrap();
    std::fs::write(dir.join("pg.pass"), format!("{PASSWORD}\n")).unwrap();
    for f in ["storage.key", "pg.pass"] {
        let perms = std::fs::Permissions::from_mode(0o600);
        std::fs::set_permissions(dir.join(f), perms).unwrap();
    }
}

impl Postgres {
    /// The `[storage]` table of fleet node `node` on database `db`, with the files of
    /// [`write_shared_secrets`] in `shared` (no trailing newline: append keys such as `lease`).
    pub fn storage_table(&self, db: &str, shared: &Path, node: &str) -> String {
        format!(
            "[storage]\nbackend = \"postgres\"\nurl = \"{}\"\npassword_file = \"{}\"\n\
             encryption_key_file = \"{}\"\nnode = \"{node}\"",
            self.url(db),
            shared.join("pg.pass").display(),
            shared.join("storage.key").display()
        )
    }
}
