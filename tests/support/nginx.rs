//! A real nginx for integration tests.
//!
//! [`Nginx::start`] writes a self-contained `nginx.conf` into a temporary prefix (pid file, logs and every
//! temp path live there, so nothing under `/var/lib/nginx` or `/run` is touched), starts
//! `nginx -c CONF -p PREFIX -e ERRLOG` in the foreground (`daemon off; master_process on;`) in its own
//! process group, waits until its HTTP and HTTPS ports accept, and stops it on `Drop` (SIGTERM, bounded wait,
//! then SIGKILL to the whole group).
//!
//! The HTTP server either proxies `/.well-known/acme-challenge/` to an upstream (the certkeeper HTTP-01
//! listener), passing the client's `Host` header through unchanged, or serves it from a webroot; every other
//! path answers 404 locally and never reaches the upstream. The HTTPS server presents
//! `cert_dir/fullchain.pem` + `cert_dir/privkey.pem` (symlinks are fine: nginx resolves them on every
//! (re)load, which is what makes the store's `.live` switch + reload work).
//!
//! The probes ([`served_certificate`], [`wait_for_serial`]) are blocking; from async code call them through
//! `tokio::task::spawn_blocking` or use [`wait_for_serial_async`].
//!
//! Self-contained on purpose: it depends on no other `tests/support` file. Set `CERTKEEPER_TEST_NGINX` to use
//! an nginx binary other than `/usr/sbin/nginx`.

#![allow(dead_code)]

use std::fmt::Write as _;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use openssl::x509::extension::SubjectAlternativeName;
use openssl::x509::{X509, X509NameBuilder};

/// Default nginx binary (Debian's package).
pub const DEFAULT_NGINX_BIN: &str = "/usr/sbin/nginx";

/// How long [`Nginx::start`] waits for both ports to accept before giving up.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// How many times [`Nginx::start`] retries when a probed free port was taken by someone else meanwhile.
const START_ATTEMPTS: usize = 3;

/// The nginx binary the harness runs: `$CERTKEEPER_TEST_NGINX` or [`DEFAULT_NGINX_BIN`].
pub fn nginx_bin() -> PathBuf {
    std::env::var_os("CERTKEEPER_TEST_NGINX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_NGINX_BIN))
}

/// Whether an nginx binary is available; tests use it to skip cleanly on machines without nginx.
pub fn nginx_available() -> bool {
    nginx_bin().is_file()
}

/// What the test nginx serves.
#[derive(Debug, Clone, Default)]
pub struct NginxOpts {
    /// Directory holding `fullchain.pem` and `privkey.pem` (may be symlinks, e.g. into `.live`).
    pub cert_dir: PathBuf,
    /// Where `/.well-known/acme-challenge/` is proxied (the `Host` header is passed through unchanged).
    pub acme_upstream: Option<SocketAddr>,
    /// When not empty, `/.well-known/acme-challenge/` is proxied round-robin across these (an
    /// nginx `upstream`, as a load balancer in front of a fleet), and the access log records which
    /// one answered ([`Nginx::access_log_text`]). Takes precedence over `acme_upstream`.
    pub acme_balance: Vec<SocketAddr>,
    /// `server_name`s of both servers; empty means `_` (both servers are the default server of their port anyway).
    pub server_names: Vec<String>,
    /// If set, serve `/.well-known/acme-challenge/<token>` from `<webroot>/.well-known/acme-challenge/<token>`
    /// (nginx `root`, the certbot `--webroot` convention) instead of proxying. Takes precedence over
    /// `acme_upstream`.
    pub webroot: Option<PathBuf>,
    /// If `fullchain.pem`/`privkey.pem` are missing from `cert_dir`, write a self-signed placeholder pair for
    /// `server_names` (or `localhost`) so nginx can start before the first issuance. Without it a missing file
    /// is an error from [`Nginx::start`]. Existing files are never touched.
    pub placeholder_cert: bool,
}

/// A running nginx (master + workers in their own process group), killed on `Drop`.
#[derive(Debug)]
pub struct Nginx {
    child: Child,
    prefix: tempfile::TempDir,
    conf: PathBuf,
    error_log: PathBuf,
    http_port: u16,
    https_port: u16,
}

impl Nginx {
    /// A pebble whose HTTP-01 validations come to this nginx (which serves or proxies them).
    pub async fn pebble(&self) -> super::pebble::Pebble {
        super::pebble::Pebble::start(super::pebble::PebbleOpts {
            http_port: self.http_port(),
            ..Default::default()
        })
        .await
    }

    /// Write the config, start nginx and wait (bounded) until both ports accept.
    ///
    /// Fails with a message naming the cause (missing certificate file, nginx binary not found, nginx exited
    /// early — with its error log —, ports never accepting).
    pub fn start(opts: NginxOpts) -> io::Result<Nginx> {
        let bin = nginx_bin();
        if !bin.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "nginx binary {} not found: install nginx or set CERTKEEPER_TEST_NGINX",
                    bin.display()
                ),
            ));
        }
        prepare_cert_dir(&opts)?;
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(&bin, &opts) {
                Ok(n) => return Ok(n),
                // Another process took a probed port between our probe and nginx's bind: probe again.
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("nginx did not start")))
    }

    fn try_start(bin: &Path, opts: &NginxOpts) -> io::Result<Nginx> {
        let prefix = tempfile::Builder::new()
            .prefix("certkeeper-nginx-")
            .tempdir()?;
        let http_port = free_port()?;
        let https_port = loop {
            let p = free_port()?;
            if p != http_port {
                break p;
            }
        };
        let conf = prefix.path().join("nginx.conf");
        let error_log = prefix.path().join("error.log");
        let text = render_conf(prefix.path(), &error_log, http_port, https_port, opts)?;
        std::fs::write(&conf, text)?;

        let mut cmd = Command::new(bin);
        cmd.arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(prefix.path())
            .arg("-e")
            .arg(&error_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Own process group: Drop kills master and workers with one signal to -pgid.
            .process_group(0);
        let child = cmd
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("spawning {}: {e}", bin.display())))?;
        let mut nginx = Nginx {
            child,
            prefix,
            conf,
            error_log,
            http_port,
            https_port,
        };

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = nginx.child.try_wait()? {
                let log = nginx.error_log_text();
                let kind = if log.contains("Address already in use") {
                    io::ErrorKind::AddrInUse
                } else {
                    io::ErrorKind::Other
                };
                return Err(io::Error::new(
                    kind,
                    format!(
                        "nginx exited during startup ({status}); config {}; error log:\n{log}",
                        nginx.conf.display()
                    ),
                ));
            }
            if accepts(http_port) && accepts(https_port) {
                return Ok(nginx);
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "nginx did not accept on 127.0.0.1:{http_port} and :{https_port} within {START_TIMEOUT:?}; error log:\n{}",
                        nginx.error_log_text()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Port of the plain-HTTP server (challenge proxy / webroot) on 127.0.0.1.
    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// Port of the TLS server on 127.0.0.1.
    pub fn https_port(&self) -> u16 {
        self.https_port
    }

    /// `127.0.0.1:<http_port>`.
    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.http_port))
    }

    /// `127.0.0.1:<https_port>`.
    pub fn https_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.https_port))
    }

    /// PID of the nginx master process (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A `/bin/sh -c` command that makes this nginx reload its config and certificates (`kill -HUP <master>`).
    ///
    /// Suitable as a certkeeper `reload` hook. The reload is asynchronous: use [`wait_for_serial`] to see it land.
    pub fn reload_command(&self) -> String {
        format!("kill -HUP {}", self.pid())
    }

    /// Send SIGHUP to the master directly (same effect as running [`Nginx::reload_command`]).
    pub fn reload(&self) -> io::Result<()> {
        let pid = libc::pid_t::try_from(self.pid()).map_err(io::Error::other)?;
        // SAFETY: kill(2) with a pid we spawned and still own (the Child is not reaped until Drop).
        if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// nginx's access log so far (with `upstream=<addr>` when [`NginxOpts::acme_balance`] is set).
    pub fn access_log_text(&self) -> String {
        std::fs::read_to_string(self.prefix.path().join("access.log")).unwrap_or_default()
    }

    /// Path of the error log (startup and reload failures land here, e.g. an unreadable key).
    pub fn error_log(&self) -> &Path {
        &self.error_log
    }

    /// Contents of the error log (empty string if unreadable).
    pub fn error_log_text(&self) -> String {
        std::fs::read_to_string(&self.error_log).unwrap_or_default()
    }

    /// Path of the generated `nginx.conf`.
    pub fn conf_path(&self) -> &Path {
        &self.conf
    }

    /// The temporary prefix directory (conf, logs, pid, temp paths).
    pub fn prefix(&self) -> &Path {
        self.prefix.path()
    }

    /// Like [`wait_for_serial`] against this nginx's HTTPS port, but a failure also quotes the error log's tail
    /// (a rejected reload — e.g. key/cert mismatch — is only visible there).
    pub fn wait_for_https_serial(
        &self,
        sni: &str,
        expected_serial: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        wait_for_serial(self.https_addr(), sni, expected_serial, timeout).map_err(|e| {
            let log = self.error_log_text();
            let tail: Vec<&str> = log.lines().rev().take(10).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("{e}; nginx error log tail:\n{}", tail.join("\n"))
        })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM first: the master stops and reaps its workers, so no zombie workers are left behind (a
        // SIGKILLed worker group lingers as zombies until init reaps them). Bounded; then SIGKILL the group.
        let Ok(pid) = libc::pid_t::try_from(self.child.id()) else {
            let _ = self.child.kill();
            let _ = self.child.wait();
            return;
        };
        // SAFETY: kill(2) on the master we spawned; it is not reaped yet, so the pid cannot have been reused.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(_) => break,
            }
        }
        // SAFETY: signals the process group created by process_group(0) (pgid == master pid, not yet reaped).
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Leaf certificate the TLS server at `addr` presents for `sni` (verification off: we only look at it).
pub fn served_certificate(addr: SocketAddr, sni: &str) -> io::Result<X509> {
    let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(io::Error::other)?;
    builder.set_verify(SslVerifyMode::NONE);
    let connector = builder.build();
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut config = connector.configure().map_err(io::Error::other)?;
    config.set_verify_hostname(false);
    // use_server_name_indication defaults to true: `sni` goes into the ClientHello.
    let stream = config
        .connect(sni, tcp)
        .map_err(|e| io::Error::other(format!("TLS handshake with {addr} (SNI {sni}): {e}")))?;
    stream
        .ssl()
        .peer_certificate()
        .ok_or_else(|| io::Error::other(format!("{addr} (SNI {sni}) presented no certificate")))
}

/// Serial number of `cert` as uppercase hex without leading zeros (openssl's `BN_bn2hex` form).
pub fn serial_hex(cert: &X509) -> String {
    cert.serial_number()
        .to_bn()
        .and_then(|bn| bn.to_hex_str().map(|s| s.to_string()))
        .unwrap_or_default()
}

fn normalize_serial(s: &str) -> String {
    let s = s
        .trim()
        .trim_start_matches("0x")
        .replace(':', "")
        .to_ascii_uppercase();
    let t = s.trim_start_matches('0');
    if t.is_empty() {
        "0".to_string()
    } else {
        t.to_string()
    }
}

/// Poll (bounded by `timeout`) until the server at `addr` presents a leaf whose serial is `expected_serial`.
///
/// `expected_serial` is hex, compared case-insensitively and ignoring leading zeros and `:` separators. After a
/// reload nginx's old workers keep serving the old certificate on their connections while new workers start,
/// so a few probes may still see the old one. The error says what was served last (serial and subject) or
/// why nothing could be fetched.
pub fn wait_for_serial(
    addr: SocketAddr,
    sni: &str,
    expected_serial: &str,
    timeout: Duration,
) -> Result<(), String> {
    let want = normalize_serial(expected_serial);
    let deadline = Instant::now() + timeout;
    let mut polls = 0u32;
    loop {
        polls += 1;
        let last = match served_certificate(addr, sni) {
            Ok(cert) => {
                let got = serial_hex(&cert);
                if normalize_serial(&got) == want {
                    return Ok(());
                }
                format!(
                    "it served serial {got} (subject {})",
                    describe_subject(&cert)
                )
            }
            Err(e) => format!("the last probe failed: {e}"),
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "{addr} (SNI {sni}) did not serve serial {want} within {timeout:?} ({polls} probes); {last}"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// [`wait_for_serial`] for async tests: runs the blocking probe loop on tokio's blocking pool.
pub async fn wait_for_serial_async(
    addr: SocketAddr,
    sni: &str,
    expected_serial: &str,
    timeout: Duration,
) -> Result<(), String> {
    let sni = sni.to_string();
    let serial = expected_serial.to_string();
    tokio::task::spawn_blocking(move || wait_for_serial(addr, &sni, &serial, timeout))
        .await
        .map_err(|e| format!("wait_for_serial task failed: {e}"))?
}

fn describe_subject(cert: &X509) -> String {
    cert.subject_name()
        .entries()
        .filter_map(|e| e.data().to_string().ok())
        .collect::<Vec<_>>()
        .join(",")
}

/// Generate a self-signed P-256 certificate for `names` (CN = first name, SAN = all), valid for a day.
///
/// The serial is 64 random bits, so two calls give different serials. Returns the cert and its key.
pub fn self_signed(names: &[&str]) -> io::Result<(X509, PKey<Private>)> {
    let inner = || -> Result<(X509, PKey<Private>), openssl::error::ErrorStack> {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
        let key = PKey::from_ec_key(EcKey::generate(&group)?)?;
        let cn = names.first().copied().unwrap_or("localhost");
        let mut name = X509NameBuilder::new()?;
        name.append_entry_by_nid(Nid::COMMONNAME, cn)?;
        let name = name.build();
        let mut serial = BigNum::new()?;
        serial.rand(64, MsbOption::ONE, false)?;
        let mut b = X509::builder()?;
        b.set_version(2)?;
        b.set_serial_number(Asn1Integer::from_bn(&serial)?.as_ref())?;
        b.set_subject_name(&name)?;
        b.set_issuer_name(&name)?;
        b.set_pubkey(&key)?;
        b.set_not_before(Asn1Time::days_from_now(0)?.as_ref())?;
        b.set_not_after(Asn1Time::days_from_now(1)?.as_ref())?;
        let mut san = SubjectAlternativeName::new();
        for n in names.iter().chain(if names.is_empty() {
            &["localhost"][..]
        } else {
            &[][..]
        }) {
            san.dns(n);
        }
        let san = san.build(&b.x509v3_context(None, None))?;
        b.append_extension(san)?;
        b.sign(&key, MessageDigest::sha256())?;
        Ok((b.build(), key))
    };
    inner().map_err(|e| io::Error::other(format!("generating a self-signed certificate: {e}")))
}

/// Write `cert` as `fullchain.pem` and `key` as `privkey.pem` (mode 0600) into `dir`, replacing regular files.
pub fn write_pair(dir: &Path, cert: &X509, key: &PKey<Private>) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let cert_pem = cert.to_pem().map_err(io::Error::other)?;
    let key_pem = key.private_key_to_pem_pkcs8().map_err(io::Error::other)?;
    std::fs::write(dir.join("fullchain.pem"), cert_pem)?;
    let key_path = dir.join("privkey.pem");
    std::fs::write(&key_path, key_pem)?;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

fn prepare_cert_dir(opts: &NginxOpts) -> io::Result<()> {
    let chain = opts.cert_dir.join("fullchain.pem");
    let key = opts.cert_dir.join("privkey.pem");
    // `exists()` follows symlinks: a dangling `.live` link counts as missing.
    let missing: Vec<&Path> = [chain.as_path(), key.as_path()]
        .into_iter()
        .filter(|p| !p.exists())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !opts.placeholder_cert {
        let list: Vec<String> = missing.iter().map(|p| p.display().to_string()).collect();
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "nginx needs {} to start its TLS server: issue the certificate first, or set NginxOpts::placeholder_cert",
                list.join(" and ")
            ),
        ));
    }
    if chain.exists() != key.exists() {
        // Never pair a placeholder with a real half: that would leave a mismatched pair on disk.
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} has only one of fullchain.pem/privkey.pem; refusing to write a placeholder next to it",
                opts.cert_dir.display()
            ),
        ));
    }
    let names: Vec<&str> = opts.server_names.iter().map(String::as_str).collect();
    let (cert, pkey) = self_signed(&names)?;
    for p in [&chain, &key] {
        // A dangling symlink would otherwise be followed by the write and create its target.
        match std::fs::remove_file(p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    write_pair(&opts.cert_dir, &cert, &pkey)
}

fn free_port() -> io::Result<u16> {
    Ok(super::pebble::free_port())
}

fn accepts(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// Quote a path for nginx.conf; refuses characters that would need escaping.
fn q(p: &Path) -> io::Result<String> {
    let s = p.to_str().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("path {} is not UTF-8", p.display()),
        )
    })?;
    if s.contains(['"', '\\', '$', '\n', ';', '{', '}']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("path {s:?} contains characters the nginx.conf writer does not quote"),
        ));
    }
    Ok(format!("\"{s}\""))
}

fn render_conf(
    prefix: &Path,
    error_log: &Path,
    http_port: u16,
    https_port: u16,
    opts: &NginxOpts,
) -> io::Result<String> {
    let tmp = prefix.join("tmp");
    for d in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        std::fs::create_dir_all(tmp.join(d))?;
    }
    let server_names = if opts.server_names.is_empty() {
        "_".to_string()
    } else {
        for n in &opts.server_names {
            if n.is_empty()
                || n.contains(|c: char| {
                    c.is_whitespace() || matches!(c, ';' | '{' | '}' | '"' | '\'')
                })
            {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("server name {n:?} is not valid in nginx.conf"),
                ));
            }
        }
        opts.server_names.join(" ")
    };
    let challenge = if let Some(webroot) = &opts.webroot {
        format!(
            "        location /.well-known/acme-challenge/ {{\n            root {};\n            default_type text/plain;\n        }}\n",
            q(webroot)?
        )
    } else if !opts.acme_balance.is_empty() {
        "        location /.well-known/acme-challenge/ {\n            proxy_pass http://certkeeper_fleet;\n            proxy_http_version 1.1;\n            proxy_set_header Host $certkeeper_host;\n            proxy_set_header X-Forwarded-For $remote_addr;\n        }\n".to_string()
    } else if let Some(up) = opts.acme_upstream {
        format!(
            "        location /.well-known/acme-challenge/ {{\n            proxy_pass http://{up};\n            proxy_http_version 1.1;\n            proxy_set_header Host $certkeeper_host;\n            proxy_set_header X-Forwarded-For $remote_addr;\n        }}\n"
        )
    } else {
        String::new()
    };
    // Workers must read a 0600 key in a root-owned temp dir; as root without `user` they would run as nobody.
    // SAFETY: geteuid has no preconditions.
    let user = if unsafe { libc::geteuid() } == 0 {
        "user root;\n"
    } else {
        ""
    };
    // Round-robin (nginx's default) across the fleet; `upstream=` in the access log names who answered.
    let balance = if opts.acme_balance.is_empty() {
        String::new()
    } else {
        let servers: String = opts
            .acme_balance
            .iter()
            .map(|a| format!("        server {a};\n"))
            .collect();
        format!(
            "    upstream certkeeper_fleet {{\n{servers}    }}\n    log_format certkeeper_fleet '$request_uri $status upstream=$upstream_addr';\n"
        )
    };
    let access_format = if opts.acme_balance.is_empty() {
        ""
    } else {
        " certkeeper_fleet"
    };
    let mut c = String::new();
    let _ = write!(
        c,
        "# Generated by certkeeper's tests/support/nginx.rs\n\
{user}daemon off;\n\
master_process on;\n\
worker_processes 1;\n\
pid {pid};\n\
error_log {err} notice;\n\
events {{\n    worker_connections 64;\n}}\n\
http {{\n\
{balance}\
    access_log {access}{access_format};\n\
    client_body_temp_path {cb};\n\
    proxy_temp_path {px};\n\
    fastcgi_temp_path {fc};\n\
    uwsgi_temp_path {uw};\n\
    scgi_temp_path {sc};\n\
    # Pass the client's Host through verbatim (with its port, if any); fall back to $host for HTTP/1.0.\n\
    map $http_host $certkeeper_host {{\n        \"\" $host;\n        default $http_host;\n    }}\n\
    server {{\n\
        listen 127.0.0.1:{http_port} default_server;\n\
        server_name {server_names};\n\
{challenge}\
        location / {{\n            return 404 \"certkeeper-test-nginx: not a challenge path\\n\";\n        }}\n\
    }}\n\
    server {{\n\
        listen 127.0.0.1:{https_port} ssl default_server;\n\
        server_name {server_names};\n\
        ssl_certificate {chain};\n\
        ssl_certificate_key {key};\n\
        location / {{\n            return 200 \"certkeeper-test-nginx sni=$ssl_server_name host=$host\\n\";\n        }}\n\
    }}\n\
}}\n",
        pid = q(&prefix.join("nginx.pid"))?,
        err = q(error_log)?,
        access = q(&prefix.join("access.log"))?,
        cb = q(&tmp.join("client_body"))?,
        px = q(&tmp.join("proxy"))?,
        fc = q(&tmp.join("fastcgi"))?,
        uw = q(&tmp.join("uwsgi"))?,
        sc = q(&tmp.join("scgi"))?,
        chain = q(&opts.cert_dir.join("fullchain.pem"))?,
        key = q(&opts.cert_dir.join("privkey.pem"))?,
    );
    Ok(c)
}
