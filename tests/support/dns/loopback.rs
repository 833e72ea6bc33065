//! DNS as a host sees it, on loopback: an authoritative bind9 for `example.test` on 127.0.0.2:53
//! (its NS record `ns1.example.test.` with glue pointing there) and a recursive bind9 on
//! 127.0.0.3:53 that reaches the zone through a `static-stub` zone, the way a resolver follows a
//! delegation. With `[dns01] resolvers = ["127.0.0.3:53"]` and no `propagation.nameservers`,
//! certkeeper finds the zone's NS set through the recursive server and then asks 127.0.0.2
//! directly: the default path almost every user runs.
//!
//! The resolver sends names under `dead.example.test` to 127.0.0.9:53, where nothing listens: it
//! cannot answer for them (SERVFAIL or a timeout), while the authoritative server still has them.
//!
//! Port 53 and adding 127.0.0.2 and 127.0.0.3 to `lo` (named listens only on configured addresses)
//! need root (CI runs as root); without it the tests are skipped with a message. An address already
//! taken fails the test with a message saying so. Both named processes are killed (by PID) and the
//! addresses the harness added are removed when it drops.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use certkeeper::challenge::dns01::zone;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use super::bind::{KEY_NAME, SECRET};
use super::{Proc, wait_ready};

/// The authoritative server's address (the glue of `ns1.example.test.`).
pub const AUTHORITATIVE: &str = "127.0.0.2:53";
/// The recursive resolver's address.
pub const RECURSIVE: &str = "127.0.0.3:53";

/// The two servers; dropped: both killed.
pub struct LoopbackDns {
    /// The authoritative server (TSIG-guarded dynamic updates of TXT records, key [`KEY_NAME`]).
    pub authoritative: SocketAddr,
    /// The recursive resolver.
    pub recursive: SocketAddr,
    /// Config, zones and logs of both.
    pub dir: tempfile::TempDir,
    // Dropped in this order: the resolver, the authoritative server, then the addresses.
    _recursive: Proc,
    _authoritative: Proc,
    _addresses: LoopbackAddresses,
}

/// Addresses this harness added to `lo` (named only listens on addresses an interface has; Linux
/// routes all of 127/8 to `lo`, but only 127.0.0.1 is configured); removed again on drop.
struct LoopbackAddresses(Vec<&'static str>);

impl LoopbackAddresses {
    fn ensure(ips: &[&'static str]) -> Self {
        let shown = Command::new("/usr/sbin/ip")
            .args(["-4", "-o", "addr", "show", "dev", "lo"])
            .output()
            .expect("run `ip addr show dev lo` (apt-get install iproute2)");
        let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
        let mut added = Vec::new();
        for ip in ips {
            if shown.contains(&format!("inet {ip}/")) {
                continue;
            }
            let out = Command::new("/usr/sbin/ip")
                .args(["addr", "add", &format!("{ip}/32"), "dev", "lo"])
                .output()
                .expect("run ip addr add");
            assert!(
                out.status.success(),
                "cannot add {ip} to lo (`ip addr add {ip}/32 dev lo` needs root with CAP_NET_ADMIN): {}",
                String::from_utf8_lossy(&out.stderr)
            );
            added.push(*ip);
        }
        Self(added)
    }
}

impl Drop for LoopbackAddresses {
    fn drop(&mut self) {
        for ip in &self.0 {
            let _ = Command::new("/usr/sbin/ip")
                .args(["addr", "del", &format!("{ip}/32"), "dev", "lo"])
                .output();
        }
    }
}

/// Fail clearly when `addr` (UDP and TCP) cannot be bound: something else serves DNS there.
fn assert_free(addr: SocketAddr) {
    let udp = UdpSocket::bind(addr);
    let tcp = TcpListener::bind(addr);
    if let Err(e) = udp.and(tcp) {
        panic!(
            "{addr} is not free ({e}): this test runs bind9 on port 53 of 127.0.0.2 and 127.0.0.3; stop \
             whatever listens there (`ss -lnutp 'sport = :53'`) and run it again"
        );
    }
}

fn named(dir: &Path, conf: &str, log: &str) -> Proc {
    let logf = std::fs::File::create(dir.join(log)).expect("named log");
    let mut cmd = Command::new("/usr/sbin/named");
    // -u is not given: as root named then keeps running as root and can read the temp dir.
    cmd.args(["-g", "-n", "1", "-c"]).arg(dir.join(conf));
    cmd.stdout(Stdio::null()).stderr(logf);
    Proc(cmd.spawn().expect("spawn named"))
}

impl LoopbackDns {
    /// Start both servers, `example.test` holding `records` (zone-file lines, `$ORIGIN
    /// example.test.`) next to its SOA, NS and glue. `None` (skipped, with a message) without
    /// bind9 or root.
    pub async fn start(records: &str) -> Option<Self> {
        if !Path::new("/usr/sbin/named").exists() {
            eprintln!("skipping: /usr/sbin/named is not installed (apt-get install bind9)");
            return None;
        }
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: bind9 on port 53 of 127.0.0.2 and 127.0.0.3 needs root");
            return None;
        }
        let authoritative: SocketAddr = AUTHORITATIVE.parse().unwrap();
        let recursive: SocketAddr = RECURSIVE.parse().unwrap();
        assert_free(authoritative);
        assert_free(recursive);
        let addresses = LoopbackAddresses::ensure(&["127.0.0.2", "127.0.0.3"]);
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().display().to_string();
        let common = |name: &str, ip: &str| {
            format!(
                r#"    directory "{d}";
    pid-file "{d}/{name}.pid";
    session-keyfile "{d}/{name}.session.key";
    listen-on port 53 {{ {ip}; }};
    listen-on-v6 {{ none; }};
    dnssec-validation no;
    allow-query {{ any; }};
    notify no;"#
            )
        };
        // Negative answers live 0 s in the zone (SOA minimum) and in the resolver's cache: the
        // NXDOMAIN certkeeper's CNAME check sees before the TXT exists must not hide it from pebble.
        std::fs::write(
            dir.path().join("auth.conf"),
            format!(
                r#"options {{
{}
    recursion no;
}};
controls {{ }};
key "{KEY_NAME}" {{ algorithm hmac-sha256; secret "{SECRET}"; }};
zone "example.test" {{ type primary; file "{d}/example.test.zone"; update-policy {{ grant {KEY_NAME} zonesub TXT; }}; }};
"#,
                common("auth", "127.0.0.2")
            ),
        )
        .expect("write auth.conf");
        std::fs::write(
            dir.path().join("example.test.zone"),
            format!(
                "$ORIGIN example.test.\n$TTL 60\n@ IN SOA ns1.example.test. hostmaster.example.test. 1 3600 600 86400 0\n@ IN NS ns1.example.test.\nns1 IN A 127.0.0.2\n{records}\n"
            ),
        )
        .expect("write zone");
        // The resolver serves a local root zone (nothing leaves loopback, no priming of the real
        // roots) and reaches example.test through a static stub, as through a delegation.
        std::fs::write(
            dir.path().join("rec.conf"),
            format!(
                r#"options {{
{}
    recursion yes;
    allow-recursion {{ 127.0.0.0/8; }};
    max-cache-ttl 0;
    max-ncache-ttl 0;
    servfail-ttl 0;
}};
controls {{ }};
zone "." {{ type primary; file "{d}/root.zone"; }};
zone "example.test" {{ type static-stub; server-addresses {{ 127.0.0.2; }}; }};
zone "dead.example.test" {{ type static-stub; server-addresses {{ 127.0.0.9; }}; }};
"#,
                common("rec", "127.0.0.3")
            ),
        )
        .expect("write rec.conf");
        std::fs::write(
            dir.path().join("root.zone"),
            "$TTL 60\n. IN SOA root. hostmaster.root. 1 3600 600 86400 0\n. IN NS root.\nroot. IN A 127.0.0.3\n",
        )
        .expect("write root zone");

        let mut auth = named(dir.path(), "auth.conf", "auth.log");
        wait_ready(
            authoritative,
            "example.test.",
            "named (authoritative)",
            &mut auth,
            &dir.path().join("auth.log"),
        )
        .await;
        let mut rec = named(dir.path(), "rec.conf", "rec.log");
        wait_recursive(recursive, &mut rec, &dir.path().join("rec.log")).await;
        Some(Self {
            authoritative,
            recursive,
            dir,
            _recursive: rec,
            _authoritative: auth,
            _addresses: addresses,
        })
    }

    /// Both servers' logs, for assertion messages.
    pub fn logs(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        format!(
            "--- authoritative ---\n{}\n--- recursive ---\n{}",
            read("auth.log"),
            read("rec.log")
        )
    }
}

/// Wait (bounded) until the resolver answers, through the stub, the SOA of example.test.
async fn wait_recursive(server: SocketAddr, proc: &mut Proc, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(resp) = zone::query(server, "example.test.", RecordType::SOA, true).await
            && resp.metadata.response_code == ResponseCode::NoError
            && !resp.answers.is_empty()
        {
            return;
        }
        if let Ok(Some(status)) = proc.0.try_wait() {
            panic!(
                "named (recursive) exited with {status}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "named (recursive) not ready: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
