//! A pebble (+ pebble-challtestsrv) harness for integration tests.
//!
//! `Pebble::start` generates a TLS CA and a server certificate (SANs localhost, 127.0.0.1, ::1)
//! into a tempdir, writes pebble's JSON config on free loopback ports, starts `/usr/bin/pebble`
//! (and `pebble-challtestsrv` as its DNS unless a DNS server is given), and waits (bounded) until
//! the directory answers. Both processes are killed by PID on drop; their output goes to files in
//! the tempdir and is printed when the test panics.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509, X509NameBuilder};

/// Path of the pebble binary.
pub const PEBBLE_BIN: &str = "/usr/bin/pebble";
/// Path of the challenge test server binary.
pub const CHALLTESTSRV_BIN: &str = "/usr/bin/pebble-challtestsrv";

/// A port free for TCP and UDP on 127.0.0.1 (bound once, then released).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    // Below the kernel's ephemeral range (32768–60999 by default), which every bind to port 0 and
    // every outgoing connection draws from (ours, pebble's, nginx's): nothing else can take a port
    // from here between this call and its user's bind. Never the same port twice in one process.
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 32_768 - FIRST;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = std::process::id().wrapping_mul(97) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(FIRST + (base + n) % SPAN).expect("a port");
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 from {FIRST}");
}

/// How to start pebble.
#[derive(Clone, Debug, Default)]
pub struct PebbleOpts {
    /// EAB keys `(kid, base64url HMAC key)`; when set, EAB is required.
    pub eab_keys: Option<Vec<(String, String)>>,
    /// `PEBBLE_WFE_NONCEREJECT` percentage; pebble's default (5) when `None`.
    pub nonce_reject: Option<u32>,
    /// Use this DNS server instead of starting pebble-challtestsrv.
    pub dns_server: Option<SocketAddr>,
    /// The port pebble's VA connects to for HTTP-01 (your responder listens there).
    pub http_port: u16,
    /// `PEBBLE_ALTERNATE_ROOTS`: number of alternate chains (0 = none).
    pub alternate_roots: u32,
    /// The port pebble's VA connects to for TLS-ALPN-01; 0 picks a free port nobody listens on.
    pub tls_port: u16,
    /// Names pebble refuses with `rejectedIdentifier` (`domainBlocklist`; a name also blocks its
    /// subdomains).
    pub domain_blocklist: Vec<String>,
}

struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

/// A running pebble. Dropping it kills the processes it started.
pub struct Pebble {
    dir: tempfile::TempDir,
    acme_port: u16,
    mgmt_port: u16,
    challtestsrv_mgmt_port: Option<u16>,
    dns_port: Option<u16>,
    ca_pem: String,
    procs: Vec<Proc>,
}

/// True when the pebble binaries are installed.
pub fn available() -> bool {
    Path::new(PEBBLE_BIN).exists() && Path::new(CHALLTESTSRV_BIN).exists()
}

fn name(cn: &str) -> openssl::x509::X509Name {
    let mut n = X509NameBuilder::new().unwrap();
    n.append_entry_by_text("CN", cn).unwrap();
    n.build()
}

fn serial() -> openssl::asn1::Asn1Integer {
    let mut bn = BigNum::new().unwrap();
    bn.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
    bn.to_asn1_integer().unwrap()
}

/// A test CA and a leaf for localhost / 127.0.0.1 / ::1 signed by it: (ca_pem, leaf_pem, leaf_key_pem).
pub fn make_tls_certs() -> (String, String, String) {
    let ca_key: PKey<Private> = PKey::from_ec_key(
        openssl::ec::EcKey::generate(
            &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&serial()).unwrap();
    b.set_subject_name(&name("certkeeper test TLS CA")).unwrap();
    b.set_issuer_name(&name("certkeeper test TLS CA")).unwrap();
    b.set_pubkey(&ca_key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(30).unwrap())
        .unwrap();
    b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
        .unwrap();
    b.append_extension(
        KeyUsage::new()
            .critical()
            .key_cert_sign()
            .crl_sign()
            .build()
            .unwrap(),
    )
    .unwrap();
    let ski = SubjectKeyIdentifier::new()
        .build(&b.x509v3_context(None, None))
        .unwrap();
    b.append_extension(ski).unwrap();
    b.sign(&ca_key, MessageDigest::sha256()).unwrap();
    let ca = b.build();

    let key: PKey<Private> = PKey::from_ec_key(
        openssl::ec::EcKey::generate(
            &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&serial()).unwrap();
    b.set_subject_name(&name("localhost")).unwrap();
    b.set_issuer_name(ca.subject_name()).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(30).unwrap())
        .unwrap();
    b.append_extension(BasicConstraints::new().build().unwrap())
        .unwrap();
    b.append_extension(
        KeyUsage::new()
            .critical()
            .digital_signature()
            .key_encipherment()
            .build()
            .unwrap(),
    )
    .unwrap();
    b.append_extension(ExtendedKeyUsage::new().server_auth().build().unwrap())
        .unwrap();
    let san = SubjectAlternativeName::new()
        .dns("localhost")
        .ip("127.0.0.1")
        .ip("::1")
        .build(&b.x509v3_context(Some(&ca), None))
        .unwrap();
    b.append_extension(san).unwrap();
    let aki = AuthorityKeyIdentifier::new()
        .keyid(true)
        .build(&b.x509v3_context(Some(&ca), None))
        .unwrap();
    b.append_extension(aki).unwrap();
    b.sign(&ca_key, MessageDigest::sha256()).unwrap();
    let leaf = b.build();
    (
        String::from_utf8(ca.to_pem().unwrap()).unwrap(),
        String::from_utf8(leaf.to_pem().unwrap()).unwrap(),
        String::from_utf8(key.private_key_to_pem_pkcs8().unwrap()).unwrap(),
    )
}

fn spawn(name: &'static str, dir: &Path, cmd: &mut Command) -> Proc {
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log).expect("create log file");
    let err = out.try_clone().expect("clone log file");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    Proc { name, child, log }
}

impl Pebble {
    /// Start pebble (and challtestsrv unless `opts.dns_server`), waiting until the directory answers.
    ///
    /// Ports are picked free but could be taken before pebble binds them; a start whose
    /// processes exit early is retried (three tries in all) on new ports.
    pub async fn start(opts: PebbleOpts) -> Pebble {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut p = Self::start_once(&opts);
            match p.wait_ready().await {
                Ok(()) => return p,
                Err(e) if attempt < 3 => {
                    eprintln!("pebble harness: start {attempt} failed: {e}; retrying on new ports");
                    p.print_logs();
                }
                Err(e) => {
                    p.print_logs();
                    panic!("pebble harness: {e}");
                }
            }
        }
    }

    fn start_once(opts: &PebbleOpts) -> Pebble {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca_pem, leaf_pem, key_pem) = make_tls_certs();
        std::fs::write(dir.path().join("ca.pem"), &ca_pem).unwrap();
        std::fs::write(dir.path().join("cert.pem"), &leaf_pem).unwrap();
        std::fs::write(dir.path().join("key.pem"), &key_pem).unwrap();
        let acme_port = free_port();
        let mgmt_port = free_port();
        let tls_port = if opts.tls_port != 0 {
            opts.tls_port
        } else {
            free_port()
        };
        let mut cfg = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{acme_port}"),
                "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
                "certificate": dir.path().join("cert.pem"),
                "privateKey": dir.path().join("key.pem"),
                "httpPort": opts.http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": opts.eab_keys.is_some(),
            }
        });
        if let Some(keys) = &opts.eab_keys {
            let m: serde_json::Map<String, serde_json::Value> = keys
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().into()))
                .collect();
            cfg["pebble"]["externalAccountMACKeys"] = m.into();
        }
        if !opts.domain_blocklist.is_empty() {
            cfg["pebble"]["domainBlocklist"] = opts.domain_blocklist.clone().into();
        }
        let cfg_path = dir.path().join("pebble-config.json");
        std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();

        let mut procs = Vec::new();
        let (dns, challtestsrv_mgmt_port, dns_port) = match opts.dns_server {
            Some(a) => (a.to_string(), None, None),
            None => {
                let dns_port = free_port();
                let m = free_port();
                procs.push(spawn(
                    "challtestsrv",
                    dir.path(),
                    Command::new(CHALLTESTSRV_BIN).args([
                        "-dns01",
                        &format!("127.0.0.1:{dns_port}"),
                        "-http01",
                        "",
                        "-https01",
                        "",
                        "-tlsalpn01",
                        "",
                        "-management",
                        &format!("127.0.0.1:{m}"),
                        "-defaultIPv4",
                        "127.0.0.1",
                        "-defaultIPv6",
                        "",
                    ]),
                ));
                (format!("127.0.0.1:{dns_port}"), Some(m), Some(dns_port))
            }
        };
        let mut cmd = Command::new(PEBBLE_BIN);
        cmd.args([
            "-config",
            cfg_path.to_str().unwrap(),
            "-strict=false",
            "-dnsserver",
            &dns,
        ])
        .env("PEBBLE_VA_NOSLEEP", "1")
        // every order validates its names: no test passes on an authorization left by an earlier one
        .env("PEBBLE_AUTHZREUSE", "0");
        if let Some(n) = opts.nonce_reject {
            cmd.env("PEBBLE_WFE_NONCEREJECT", n.to_string());
        }
        if opts.alternate_roots > 0 {
            cmd.env("PEBBLE_ALTERNATE_ROOTS", opts.alternate_roots.to_string());
        }
        procs.push(spawn("pebble", dir.path(), &mut cmd));
        Pebble {
            dir,
            acme_port,
            mgmt_port,
            challtestsrv_mgmt_port,
            dns_port,
            ca_pem,
            procs,
        }
    }

    /// Wait until the directory answers and challtestsrv listens; `Err` when a process exited
    /// (typically a port taken between `free_port` and its bind) or the deadline passed.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let http = self.http_client();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            self.check_alive()?;
            if let Ok(r) = http.get(self.directory_url()).send().await
                && r.status().is_success()
            {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "pebble did not answer at {} within 20 s",
                    self.directory_url()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Some(m) = self.challtestsrv_mgmt_port {
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", m)).is_err() {
                self.check_alive()?;
                if Instant::now() > deadline {
                    return Err(format!(
                        "pebble-challtestsrv did not listen on {m} within 10 s"
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        self.check_alive()
    }

    fn check_alive(&mut self) -> Result<(), String> {
        for p in &mut self.procs {
            if let Ok(Some(status)) = p.child.try_wait() {
                return Err(format!("{} exited early ({status})", p.name));
            }
        }
        Ok(())
    }

    /// Freeze the pebble process (SIGSTOP): connections are accepted by the kernel, nothing answers.
    pub fn pause(&self) {
        self.signal_pebble(nix::sys::signal::Signal::SIGSTOP);
    }

    /// Let a paused pebble go on (SIGCONT).
    pub fn resume(&self) {
        self.signal_pebble(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal_pebble(&self, sig: nix::sys::signal::Signal) {
        for p in self.procs.iter().filter(|p| p.name == "pebble") {
            // Only the process this harness started, by its own PID.
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.child.id() as i32), sig)
                .expect("signal pebble");
        }
    }

    /// The ACME directory URL.
    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.acme_port)
    }

    /// The PEM of the CA that signed pebble's TLS certificate (the `ca_bundle`).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The TLS CA as an openssl certificate.
    pub fn ca_x509(&self) -> X509 {
        X509::from_pem(self.ca_pem.as_bytes()).unwrap()
    }

    /// The management interface base URL (`/roots/0`, `/cert-status-by-serial/...`).
    pub fn mgmt_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.mgmt_port)
    }

    /// The challtestsrv management URL, when the harness started it.
    pub fn challtestsrv_mgmt(&self) -> Option<String> {
        self.challtestsrv_mgmt_port
            .map(|p| format!("http://127.0.0.1:{p}"))
    }

    /// The mock DNS server address (challtestsrv), when the harness started it.
    pub fn dns_addr(&self) -> Option<SocketAddr> {
        self.dns_port.map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
    }

    /// The tempdir holding certs, config and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A reqwest client that trusts pebble's TLS CA.
    pub fn http_client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .tls_certs_merge([reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap()])
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    /// GET a management path and return the body text.
    pub async fn mgmt_get(&self, path: &str) -> String {
        let r = self
            .http_client()
            .get(format!("{}{path}", self.mgmt_url()))
            .send()
            .await
            .expect("mgmt GET");
        assert!(
            r.status().is_success(),
            "mgmt GET {path}: HTTP {}",
            r.status()
        );
        r.text().await.unwrap()
    }

    /// The issuing root certificate (PEM) from `/roots/0`.
    pub async fn root_pem(&self) -> String {
        self.mgmt_get("/roots/0").await
    }

    /// POST a JSON command to challtestsrv's management API (`/set-txt`, `/clear-txt`, `/add-a`, ...).
    ///
    /// Panics when the harness did not start challtestsrv or the command fails.
    pub async fn challtestsrv(&self, path: &str, body: serde_json::Value) {
        let base = self
            .challtestsrv_mgmt()
            .expect("challtestsrv was not started (dns_server given)");
        let r = reqwest::Client::new()
            .post(format!("{base}{path}"))
            .body(body.to_string())
            .send()
            .await
            .expect("challtestsrv POST");
        assert!(
            r.status().is_success(),
            "challtestsrv {path}: HTTP {}",
            r.status()
        );
    }

    /// Publish a TXT record in challtestsrv's mock DNS (`host` is an FQDN with trailing dot).
    pub async fn set_txt(&self, host: &str, value: &str) {
        self.challtestsrv(
            "/set-txt",
            serde_json::json!({ "host": host, "value": value }),
        )
        .await;
    }

    /// Remove the TXT records of `host` from challtestsrv's mock DNS.
    pub async fn clear_txt(&self, host: &str) {
        self.challtestsrv("/clear-txt", serde_json::json!({ "host": host }))
            .await;
    }

    /// Wait (bounded, 10 s) until every thread of a [`Pebble::pause`]d pebble is stopped.
    ///
    /// SIGSTOP is asynchronous: right after `pause`, a pebble thread running on another core may
    /// still answer a request. Call this when the next request must find pebble frozen.
    pub fn wait_paused(&self) {
        let pid = self
            .procs
            .iter()
            .find(|p| p.name == "pebble")
            .map(|p| p.child.id())
            .expect("pebble process");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !all_threads_stopped(pid) {
            assert!(
                Instant::now() < deadline,
                "pebble (pid {pid}) did not stop within 10 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// How many orders pebble created so far (its log's `Added order` lines): what a test counts
    /// to prove one order per certificate.
    pub fn orders_added(&self) -> usize {
        self.log().matches("Added order").count()
    }

    /// The pebble process's log so far (e.g. to check that no order was created).
    pub fn log(&self) -> String {
        self.procs
            .iter()
            .filter(|p| p.name == "pebble")
            .map(|p| std::fs::read_to_string(&p.log).unwrap_or_default())
            .collect()
    }

    /// Print the process logs (also done automatically when a test panics).
    pub fn print_logs(&self) {
        for p in &self.procs {
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            eprintln!("===== {} log ({}) =====\n{text}", p.name, p.log.display());
        }
    }
}

/// True when every thread of process `pid` is in the stopped state (`T` in `/proc/.../stat`).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat"))
            .ok()
            .and_then(|stat| {
                // The state follows the parenthesised command name, which may contain spaces.
                let rest = &stat[stat.rfind(')')? + 1..];
                rest.split_whitespace().next().map(|st| st == "T")
            })
            .unwrap_or(false)
    })
}

impl Drop for Pebble {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        // A paused pebble is resumed first (SIGCONT to our own pebble; harmless when it runs).
        for p in self.procs.iter().filter(|p| p.name == "pebble") {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p.child.id() as i32),
                nix::sys::signal::Signal::SIGCONT,
            );
        }
        for p in &mut self.procs {
            // Kill only the processes this harness started, by their own handle (PID).
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}
