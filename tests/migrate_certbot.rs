//! `certkeeper migrate certbot` on lineages issued by Debian's real certbot from pebble, run as root
//! on a state directory owned by a service user (the packaged set-up):
//! - `standalone` (alt.example.test): certbot's own HTTP-01 server on 127.0.0.2, pebble's HTTP port;
//! - `webroot` (www.example.test): a webroot served by a real nginx on 127.0.0.1, same port;
//! - `manual` (dns.example.test): DNS-01 through `--manual-auth-hook`/`--manual-cleanup-hook` scripts
//!   that nsupdate bind9, which pebble resolves through;
//! - `rfc2136` (tsig.example.test): DNS-01 through certbot's dns-rfc2136 plugin and a TSIG key;
//!
//! plus a deploy hook in `renewal-hooks/deploy/` and a `--deploy-hook` (`renew_hook`). `--dry-run`
//! changes nothing; the migration adopts the pairs in place and certbot's account; `renew` issues
//! nothing; `renew --force` renews all four with certbot's account into `live/<lineage>/` and runs
//! the deploy hooks.

mod support;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use openssl::x509::X509;
use support::certkeeper::{CliOutput, run_command_sync, std_command_at, toml_str};
use support::dns::bind::{self, Bind};
use support::nginx::{Nginx, NginxOpts};
use support::pair::check_pair;
use support::process::run_bounded;
use support::sysuser::SystemUser;
use support::{Pebble, PebbleOpts};

const CERTBOT: &str = "/usr/bin/certbot";
const LIMIT: Duration = Duration::from_secs(120);
/// (lineage, name).
const LINEAGES: [(&str, &str); 4] = [
    ("standalone", "alt.example.test"),
    ("webroot", "www.example.test"),
    ("manual", "dns.example.test"),
    ("rfc2136", "tsig.example.test"),
];

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn write_script(p: &Path, text: &str) {
    std::fs::write(p, text).unwrap();
    chmod(p, 0o755);
}

struct World {
    dir: tempfile::TempDir,
    pebble: Pebble,
    bind: Bind,
    nginx: Nginx,
    user: SystemUser,
}

impl World {
    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn certbot_dir(&self) -> PathBuf {
        self.p("letsencrypt")
    }

    fn live(&self, lineage: &str) -> PathBuf {
        self.certbot_dir().join("live").join(lineage)
    }

    fn config(&self) -> PathBuf {
        self.p("etc/certkeeper.toml")
    }

    /// `certbot certonly` with the pebble, directories and trust of this world.
    ///
    /// certbot retries a request refused with `badNonce` once; pebble refuses 5% of nonces, so a
    /// second refusal (about one request in 400) fails the run: such a run is repeated (3 runs at
    /// most). Any other failure fails the test.
    fn certbot(&self, lineage: &str, name: &str, how: &[&str]) {
        for attempt in 1..=3 {
            let mut cmd = Command::new(CERTBOT);
            cmd.args(["certonly", "--non-interactive", "--agree-tos"])
                .args([
                    "--register-unsafely-without-email",
                    "--no-random-sleep-on-renew",
                ])
                .args(["--server", &self.pebble.directory_url()])
                .arg("--config-dir")
                .arg(self.certbot_dir())
                .arg("--work-dir")
                .arg(self.p("certbot-work"))
                .arg("--logs-dir")
                .arg(self.p("certbot-logs"))
                .args(["--cert-name", lineage, "-d", name])
                .args(how)
                .env("REQUESTS_CA_BUNDLE", self.p("pebble-ca.pem"))
                .stdin(std::process::Stdio::null());
            let out = run_bounded(cmd, LIMIT);
            if out.status.success() {
                return;
            }
            // certbot rotates its log at every run: this is the failed run's.
            let log =
                std::fs::read_to_string(self.p("certbot-logs/letsencrypt.log")).unwrap_or_default();
            let bad_nonce = log.contains("urn:ietf:params:acme:error:badNonce");
            assert!(
                bad_nonce && attempt < 3,
                "certbot {lineage} failed ({}, run {attempt}):\n{}\n{}\n{log}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
            );
            eprintln!("certbot {lineage}: pebble refused a nonce twice; running it again");
        }
    }

    /// certkeeper as root, with certbot's `REQUESTS_CA_BUNDLE`.
    fn certkeeper(&self, args: &[&str]) -> CliOutput {
        let mut cmd = std_command_at(&self.config(), args);
        cmd.env("REQUESTS_CA_BUNDLE", self.p("pebble-ca.pem"));
        run_command_sync(cmd, args, LIMIT)
    }

    fn serials(&self, root: &X509) -> Vec<String> {
        LINEAGES
            .iter()
            .map(|(l, n)| {
                check_pair(&self.live(l), root, &[n])
                    .unwrap_or_else(|e| panic!("{l}: {e}"))
                    .serial
            })
            .collect()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.p("log/hooks.log")).unwrap_or_default()
    }
}

/// Every `.conf` / `.conf.migrated` file name in certbot's renewal dir, sorted.
fn renewal_files(certbot_dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(certbot_dir.join("renewal"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Every path under `dir` (including it), symlinks not followed.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.symlink_metadata().is_ok_and(|m| m.is_dir()) {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

async fn world() -> Option<World> {
    if !Path::new(CERTBOT).exists() || !support::pebble::available() {
        eprintln!("skipping: certbot or pebble is not installed (scripts/deps)");
        return None;
    }
    if !support::nginx::nginx_available()
        || !Path::new("/usr/bin/nsupdate").exists()
        || !Path::new("/usr/lib/python3/dist-packages/certbot_dns_rfc2136").exists()
    {
        eprintln!(
            "skipping: nginx, nsupdate or certbot's dns-rfc2136 plugin is not installed (scripts/deps)"
        );
        return None;
    }
    let user = SystemUser::create()?;
    let bind = Bind::start().await?;
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o755);
    let webroot = dir.path().join("www");
    let nginx_tls = dir.path().join("nginx-tls");
    for d in [&webroot, &nginx_tls] {
        std::fs::create_dir_all(d).unwrap();
    }
    let nginx = Nginx::start(NginxOpts {
        cert_dir: nginx_tls,
        webroot: Some(webroot),
        placeholder_cert: true,
        ..Default::default()
    })
    .expect("nginx starts");
    // pebble resolves through bind9 (www → 127.0.0.1: nginx; alt → 127.0.0.2: certbot standalone,
    // later certkeeper's listener) and connects to nginx's HTTP port.
    let pebble = Pebble::start(PebbleOpts {
        dns_server: Some(bind.addr),
        http_port: nginx.http_port(),
        ..Default::default()
    })
    .await;
    let w = World {
        dir,
        pebble,
        bind,
        nginx,
        user,
    };
    // What certbot is told to trust (and what the migration turns into `ca_bundle`), readable by
    // the service user.
    std::fs::write(w.p("pebble-ca.pem"), w.pebble.ca_pem()).unwrap();
    chmod(&w.p("pebble-ca.pem"), 0o644);
    // The hooks log into a directory the service user may write (hooks run as it under certkeeper).
    std::fs::create_dir_all(w.p("log")).unwrap();
    std::os::unix::fs::chown(w.p("log"), Some(w.user.uid()), None).unwrap();
    std::fs::create_dir_all(w.p("hooks")).unwrap();
    chmod(&w.p("hooks"), 0o755);
    let nsupdate = |op: &str| {
        format!(
            "#!/bin/sh\nset -e\nprintf 'server {ip} {port}\\nupdate {op} _acme-challenge.%s. 60 TXT \"%s\"\\nsend\\n' \"$CERTBOT_DOMAIN\" \"$CERTBOT_VALIDATION\" | nsupdate -y hmac-sha256:{key}:{secret}\necho \"{op} $CERTBOT_DOMAIN\" >> {log}\n",
            ip = w.bind.addr.ip(),
            port = w.bind.addr.port(),
            key = bind::KEY_NAME,
            secret = bind::SECRET,
            log = w.p("log/hooks.log").display(),
        )
    };
    write_script(&w.p("hooks/auth.sh"), &nsupdate("add"));
    write_script(&w.p("hooks/cleanup.sh"), &nsupdate("delete"));
    // certbot-dns-rfc2136's credentials, root-only as certbot wants them.
    std::fs::write(
        w.p("rfc2136.ini"),
        format!(
            "dns_rfc2136_server = {}\ndns_rfc2136_port = {}\ndns_rfc2136_name = {}\n\
             dns_rfc2136_secret = {}\ndns_rfc2136_algorithm = HMAC-SHA256\n",
            w.bind.addr.ip(),
            w.bind.addr.port(),
            bind::KEY_NAME,
            bind::SECRET
        ),
    )
    .unwrap();
    chmod(&w.p("rfc2136.ini"), 0o600);
    Some(w)
}

impl World {
    /// certbot issues the four lineages (one at a time: certbot locks its directories), then a
    /// deploy hook is added to `renewal-hooks/deploy/`.
    fn issue_with_certbot(&self) {
        let port = self.nginx.http_port().to_string();
        let log = self.p("log/hooks.log").display().to_string();
        self.certbot(
            "standalone",
            "alt.example.test",
            &[
                "--standalone",
                "--http-01-address",
                "127.0.0.2",
                "--http-01-port",
                &port,
            ],
        );
        let webroot = self.p("www").display().to_string();
        let renew_hook = format!("echo \"renew_hook $RENEWED_LINEAGE\" >> {log}");
        self.certbot(
            "webroot",
            "www.example.test",
            &["--webroot", "-w", &webroot, "--deploy-hook", &renew_hook],
        );
        let (auth, cleanup) = (self.p("hooks/auth.sh"), self.p("hooks/cleanup.sh"));
        self.certbot(
            "manual",
            "dns.example.test",
            &[
                "--manual",
                "--preferred-challenges",
                "dns",
                "--manual-auth-hook",
                auth.to_str().unwrap(),
                "--manual-cleanup-hook",
                cleanup.to_str().unwrap(),
            ],
        );
        let ini = self.p("rfc2136.ini");
        self.certbot(
            "rfc2136",
            "tsig.example.test",
            &[
                "--dns-rfc2136",
                "--dns-rfc2136-credentials",
                ini.to_str().unwrap(),
                "--dns-rfc2136-propagation-seconds",
                "1",
            ],
        );
        write_script(
            &self.certbot_dir().join("renewal-hooks/deploy/10-log"),
            &format!("#!/bin/sh\necho \"deploy $RENEWED_LINEAGE $RENEWED_DOMAINS\" >> {log}\n"),
        );
        assert!(
            self.log().contains("add dns.example.test"),
            "{}",
            self.log()
        );
        // From here on the hooks run as the service user: they create the log afresh.
        std::fs::remove_file(self.p("log/hooks.log")).unwrap();
    }

    /// The account URL certbot recorded (`regr.json`'s `uri`).
    fn certbot_account_url(&self) -> String {
        let regr = walk(&self.certbot_dir().join("accounts"))
            .into_iter()
            .find(|p| p.ends_with("regr.json"))
            .expect("certbot's regr.json");
        let regr: serde_json::Value =
            serde_json::from_slice(&std::fs::read(regr).unwrap()).unwrap();
        regr["uri"].as_str().expect("regr.json uri").to_string()
    }

    /// certkeeper's main config (root's, including conf.d, HTTP-01 where certbot's standalone
    /// listened) and its state directory (the service user's, as tmpfiles would leave it).
    fn write_certkeeper_config(&self) -> PathBuf {
        let state = self.p("state");
        std::fs::create_dir_all(self.p("etc")).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        std::os::unix::fs::chown(&state, Some(self.user.uid()), None).unwrap();
        chmod(&state, 0o700);
        std::fs::write(
            self.config(),
            format!(
                "state_dir = {}\ninclude = [\"conf.d/*.toml\"]\n\n[http01]\nlisten = [\"127.0.0.2:{}\"]\n",
                toml_str(&state.display().to_string()),
                self.nginx.http_port()
            ),
        )
        .unwrap();
        state
    }

    /// conf.d is root's and readable by the daemon, but for certbot's TSIG secret: moved to its own
    /// root:<user's group> 0640 file, out of the TOML.
    fn assert_conf_d_owners(&self) {
        let tsig = self.p("etc/conf.d/certbot-rfc2136-tsig.key");
        let gid = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(self.user.uid()))
            .unwrap()
            .unwrap()
            .gid
            .as_raw();
        for p in walk(&self.p("etc/conf.d")) {
            let m = p.symlink_metadata().unwrap();
            assert_eq!(m.uid(), 0, "{}", p.display());
            if p == tsig {
                assert_eq!((m.gid(), m.mode() & 0o777), (gid, 0o640));
                assert_eq!(
                    std::fs::read_to_string(&p).unwrap(),
                    format!("{}\n", bind::SECRET)
                );
                continue;
            }
            assert_eq!(m.mode() & 0o044, 0o044, "{} not readable", p.display());
            if m.is_file() {
                let text = std::fs::read_to_string(&p).unwrap();
                assert!(!text.contains(bind::SECRET), "{}: the secret", p.display());
            }
        }
    }

    /// The state and everything certkeeper put in `live/<lineage>/` belong to the service user
    /// (certbot's links were replaced; only certbot's README is left of its files).
    fn assert_state_and_live_owners(&self, state: &Path) {
        for (l, _) in LINEAGES {
            let live_files = walk(&self.live(l))
                .into_iter()
                .skip(1)
                .filter(|p| !p.ends_with("README"));
            for p in walk(state).into_iter().chain(live_files) {
                assert_eq!(
                    p.symlink_metadata().unwrap().uid(),
                    self.user.uid(),
                    "{} does not belong to the service user",
                    p.display()
                );
            }
            let key = std::fs::metadata(self.live(l).join("privkey.pem")).unwrap();
            assert_eq!(key.mode() & 0o777, 0o600, "{l}: privkey.pem mode");
            assert_eq!(
                std::fs::read_link(self.live(l).join("fullchain.pem")).unwrap(),
                Path::new(".live/fullchain.pem")
            );
        }
    }

    /// The names resolve only through bind9: point the migrated HTTP-01 self-checks at the
    /// addresses directly (the one edit the test makes to the generated files).
    fn let_self_checks_reach_loopback(&self) {
        let file = self.p("etc/conf.d/certbot-issuers.toml");
        let issuers = std::fs::read_to_string(&file).unwrap();
        assert!(issuers.contains("ca_bundle = "), "{issuers}");
        let port = self.nginx.http_port();
        let self_check =
            |ip: &str| format!("self_check = {{ port = {port}, resolve = [\"{ip}\"] }}");
        let webroot = toml_str(&self.p("www").display().to_string());
        let issuers = issuers
            .replace(
                "http01 = {}",
                &format!("http01 = {{ {} }}", self_check("127.0.0.2")),
            )
            .replace(
                &format!("webroot = {{ path = {webroot} }}"),
                &format!(
                    "webroot = {{ path = {webroot}, {} }}",
                    self_check("127.0.0.1")
                ),
            );
        assert_eq!(issuers.matches("self_check").count(), 2, "{issuers}");
        std::fs::write(&file, issuers).unwrap();
    }

    /// After `renew --force`: every lineage has a new pair and ran the deploy hooks, the DNS hooks
    /// ran, and the one account is certbot's.
    fn assert_renewed(&self, before: &[String], root: &X509, state: &Path, account_url: &str) {
        let renewed = self.serials(root);
        let log = self.log();
        for (i, (l, _)) in LINEAGES.iter().enumerate() {
            assert_ne!(renewed[i], before[i], "{l} was not renewed");
            let live = self.live(l).display().to_string();
            assert!(
                log.contains(&format!("deploy {live} ")),
                "{l}: deploy hook did not run:\n{log}"
            );
        }
        assert!(
            log.contains(&format!("renew_hook {}", self.live("webroot").display())),
            "{log}"
        );
        assert!(
            log.contains("add dns.example.test") && log.contains("delete dns.example.test"),
            "{log}"
        );
        let records: Vec<PathBuf> = walk(&state.join("accounts"))
            .into_iter()
            .filter(|p| p.ends_with("account.json"))
            .collect();
        assert_eq!(records.len(), 1, "one account: {records:?}");
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&records[0]).unwrap()).unwrap();
        assert_eq!(record["url"], account_url, "certbot's account was used");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certbot_lineages_are_adopted_and_renewed_with_certbots_account() {
    let Some(w) = world().await else {
        return;
    };
    let started = Instant::now();
    w.issue_with_certbot();
    let certbot_done = started.elapsed();
    let root = X509::from_pem(w.pebble.root_pem().await.as_bytes()).unwrap();
    let certbot_serials = w.serials(&root);
    let account_url = w.certbot_account_url();
    let state = w.write_certkeeper_config();
    let cb = w.certbot_dir();
    let cb_arg = cb.display().to_string();
    let confs = |suffix: &str| -> Vec<String> {
        let mut v: Vec<String> = LINEAGES
            .iter()
            .map(|(l, _)| format!("{l}{suffix}"))
            .collect();
        v.sort();
        v
    };

    // --dry-run prints every lineage and changes nothing.
    let dry = w.certkeeper(&["migrate", "certbot", "--certbot-dir", &cb_arg, "--dry-run"]);
    dry.assert_ok();
    for (l, _) in LINEAGES {
        dry.assert_mentions(&format!("[certificate.\"{l}\"]"));
    }
    dry.assert_mentions(&account_url);
    assert!(!w.p("etc/conf.d").exists(), "--dry-run wrote conf.d");
    assert_eq!(walk(&state), vec![state.clone()], "--dry-run wrote state");
    assert_eq!(renewal_files(&cb), confs(".conf"));
    assert_eq!(w.serials(&root), certbot_serials);

    // The migration, as root.
    let out = w.certkeeper(&["migrate", "certbot", "--certbot-dir", &cb_arg]);
    out.assert_ok();
    for (l, _) in LINEAGES {
        out.assert_mentions(&format!("{l}: imported serial"));
    }
    out.assert_mentions("adopted the account certbot's");
    out.assert_mentions("undo: mv ");
    assert_eq!(renewal_files(&cb), confs(".conf.migrated"));
    assert_eq!(w.serials(&root), certbot_serials, "nothing re-issued");
    w.assert_conf_d_owners();
    w.assert_state_and_live_owners(&state);
    w.let_self_checks_reach_loopback();

    // The next renew issues nothing and owes no reload.
    w.certkeeper(&["renew"]).assert_ok();
    assert_eq!(w.serials(&root), certbot_serials, "renew re-issued");
    assert_eq!(w.log(), "", "hooks ran without a renewal");

    // renew --force renews each lineage with certbot's account, in place, and runs the hooks.
    let forced = w.certkeeper(&["renew", "--force"]);
    forced.assert_ok();
    w.assert_renewed(&certbot_serials, &root, &state, &account_url);
    // The account the CA answered for certbot's key ("account ready") is certbot's: a new key
    // would have made pebble register a new account with another URL.
    forced.assert_mentions(&account_url);
    eprintln!(
        "certbot issuance {certbot_done:?}, whole test {:?}",
        started.elapsed()
    );
}
