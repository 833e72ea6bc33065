//! The fault matrix: a running daemon meets a transient fault, the fault is removed, and the
//! certificate is issued without any signal or restart, within the first backoff steps (made short
//! through `[daemon] retry_first` / `retry_max`). Each case asserts on the pair that was issued and
//! installed (checked against pebble's root), and on what `status --json` says meanwhile.

mod support;

use support::fault_env as util;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::{PebbleOpts, free_port};
use util::proxy::{Mode, Proxy};
use util::{Env, KillOnDrop, cert, check_pair, head, issuer, pebble_issuer, wait_for};

/// How long a removed fault may take to turn into an installed pair: a few backoff steps plus an
/// order against pebble on a loaded machine.
const RECOVERY: Duration = Duration::from_secs(90);

/// Start `certkeeper run` on the environment's config, output in `daemon.log`.
fn spawn_daemon(env: &Env, extra_env: &[(&str, &str)]) -> (KillOnDrop, PathBuf) {
    let log = env.dir.path().join(format!(
        "daemon-{}.log",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let file = std::fs::File::create(&log).unwrap();
    let mut cmd = env.cmd(&["run"]);
    cmd.env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    (KillOnDrop(cmd.spawn().expect("spawn certkeeper run")), log)
}

/// `certkeeper status --json NAME`, parsed.
fn status(env: &Env, name: &str) -> serde_json::Value {
    let out = env.run(&["status", "--json", name], Duration::from_secs(30));
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    list[0].clone()
}

/// Wait until `status` shows at least one failed attempt of `name`, not paused, with a retry
/// planned; returns that status.
async fn failing(env: &Env, name: &str, log: &Path) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = status(env, name);
        if s["failures"].as_u64().unwrap_or(0) >= 1 {
            assert_eq!(s["paused"], false, "a transient fault never pauses: {s}");
            assert!(s["next_renewal"].is_string(), "a retry is planned: {s}");
            assert!(
                !env.out_dir(name).join("fullchain.pem").exists(),
                "nothing installed while the fault lasts"
            );
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "no failed attempt of {name} recorded within 120 s; daemon log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Wait until the pair of `name` for `names` is installed and verifies to pebble's root; returns its
/// serial. The daemon gets no signal in between.
async fn recovers(env: &Env, name: &str, names: &[&str], log: &Path) -> String {
    let root = env.root().await;
    let dir = env.out_dir(name);
    let started = Instant::now();
    let deadline = started + RECOVERY;
    loop {
        if let Ok(pair) = check_pair(&dir, &root, names) {
            eprintln!(
                "{name}: issued {:?} after the fault was removed",
                started.elapsed()
            );
            let s = status(env, name);
            assert_eq!(s["failures"], 0, "the success reset the failures: {s}");
            assert_eq!(
                s["serial"].as_str().map(str::to_lowercase),
                Some(pair.serial.to_lowercase())
            );
            return pair.serial;
        }
        assert!(
            Instant::now() < deadline,
            "{name} not issued within {RECOVERY:?} after the fault was removed; daemon log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Write `text` to `path` as an executable script, atomically (a rename), so a reader never sees
/// half a script.
fn install_script(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// True while the process `pid` exists.
fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// Read a PID written by a test script.
fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_plugin_missing_then_installed() {
    let Some(env) = Env::start(PebbleOpts::default()).await else {
        return;
    };
    let mgmt = env.pebble.challtestsrv_mgmt().expect("challtestsrv");
    let plugin = env.dir.path().join("dns-plugin");
    let solver = format!(
        "dns01 = {{ provider = \"exec\", command = \"{}\", timeout = \"30s\" }}\n\
         propagation = {{ check = false }}",
        plugin.display()
    );
    let names = ["www.example.com", "*.example.com"];
    let text = head(&env, false, "", None)
        + &pebble_issuer(&env, &solver)
        + &cert(&env, "www", &["ca"], &names, "");
    std::fs::write(&env.config, text).unwrap();
    let (_daemon, log) = spawn_daemon(&env, &[]);

    let s = failing(&env, "www", &log).await;
    let err = s["last_error"].as_str().unwrap_or_default();
    assert!(
        err.contains("dns-plugin"),
        "the error names the plugin: {s}"
    );

    // The package that ships the plugin is installed a moment later.
    install_script(
        &plugin,
        &format!(
            "#!/bin/sh\nset -e\nfqdn=\"${{2%.}}.\"\ncase \"$1\" in\n\
             present) curl -fsS -d \"{{\\\"host\\\":\\\"$fqdn\\\",\\\"value\\\":\\\"$3\\\"}}\" {mgmt}/set-txt ;;\n\
             cleanup) curl -fsS -d \"{{\\\"host\\\":\\\"$fqdn\\\"}}\" {mgmt}/clear-txt ;;\n\
             esac\n"
        ),
    );
    recovers(&env, "www", &names, &log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_frozen_then_answering() {
    let Some(env) = Env::start(PebbleOpts::default()).await else {
        return;
    };
    let names = ["frozen.example.com"];
    let text = head(&env, true, "", None)
        + &pebble_issuer(&env, "http01 = { self_check = false }")
        + &cert(&env, "www", &["ca"], &names, "");
    std::fs::write(&env.config, text).unwrap();
    // The CA accepts connections but answers nothing (SIGSTOP): every request runs into the client's
    // request timeout.
    env.pebble.pause();
    let (_daemon, log) = spawn_daemon(&env, &[]);
    let s = failing(&env, "www", &log).await;
    eprintln!("while frozen: {s}");
    env.pebble.resume();
    recovers(&env, "www", &names, &log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_tls_untrusted_then_trusted() {
    let Some(env) = Env::start(PebbleOpts::default()).await else {
        return;
    };
    let proxy = Proxy::for_pebble(&env.pebble).await;
    proxy.set(Mode::UntrustedTls);
    let names = ["tls.example.com"];
    let text = head(&env, true, "", None)
        + &issuer(
            "ca",
            &proxy.directory_url(),
            &proxy.ca_file,
            "http01 = { self_check = false }",
        )
        + &cert(&env, "www", &["ca"], &names, "");
    std::fs::write(&env.config, text).unwrap();
    let (_daemon, log) = spawn_daemon(&env, &[]);
    let s = failing(&env, "www", &log).await;
    let err = s["last_error"].as_str().unwrap_or_default().to_lowercase();
    assert!(
        err.contains("tls") || err.contains("certificate"),
        "the error says the CA's certificate is not trusted: {s}"
    );
    assert!(proxy.faulted() > 0);
    // The CA's certificate is fixed (here: the proxy presents the trusted one again).
    proxy.set(Mode::Pass);
    recovers(&env, "www", &names, &log).await;
}

/// A tiny static file server for a webroot, on `port` (pebble's HTTP-01 port): GET PATH serves
/// `root/PATH`.
async fn serve_webroot(root: PathBuf, port: u16) -> tokio::task::JoinHandle<()> {
    use http_body_util::Full;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind webroot server");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let root = root.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let path = root.join(req.uri().path().trim_start_matches('/'));
                        async move {
                            let resp = match std::fs::read(&path) {
                                Ok(b) => hyper::Response::new(Full::new(bytes::Bytes::from(b))),
                                Err(_) => hyper::Response::builder()
                                    .status(404)
                                    .body(Full::new(bytes::Bytes::new()))
                                    .unwrap(),
                            };
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webroot_not_writable_then_writable() {
    let Some(env) = Env::start(PebbleOpts::default()).await else {
        return;
    };
    let webroot = env.dir.path().join("www");
    std::fs::create_dir(&webroot).unwrap();
    // `.well-known` is a file: the challenge directory cannot be created (ENOTDIR, whoever runs it).
    std::fs::write(webroot.join(".well-known"), "in the way").unwrap();
    let server = serve_webroot(webroot.clone(), env.http_port).await;
    let names = ["webroot.example.com"];
    let solver = format!(
        "webroot = {{ path = \"{}\", self_check = false }}",
        webroot.display()
    );
    let text = head(&env, false, "", None)
        + &pebble_issuer(&env, &solver)
        + &cert(&env, "www", &["ca"], &names, "");
    std::fs::write(&env.config, text).unwrap();
    let (_daemon, log) = spawn_daemon(&env, &[]);
    let s = failing(&env, "www", &log).await;
    let err = s["last_error"].as_str().unwrap_or_default();
    assert!(err.contains(".well-known"), "the error names the path: {s}");
    std::fs::remove_file(webroot.join(".well-known")).unwrap();
    recovers(&env, "www", &names, &log).await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_for_a_year_the_second_issuer_issues() {
    let Some(env) = Env::start(PebbleOpts::default()).await else {
        return;
    };
    let proxy = Proxy::for_pebble(&env.pebble).await;
    proxy.set(Mode::RateLimited {
        retry_after_secs: 365 * 86400,
    });
    let names = ["limited.example.com"];
    let http = "http01 = { self_check = false }";
    let text = head(&env, true, "", None)
        + &issuer("limited", &proxy.directory_url(), &proxy.ca_file, http)
        + &issuer(
            "second",
            &env.pebble.directory_url(),
            &env.dir.path().join("pebble-ca.pem"),
            http,
        )
        + &cert(&env, "www", &["limited", "second"], &names, "");
    std::fs::write(&env.config, text).unwrap();
    let (_daemon, log) = spawn_daemon(&env, &[]);
    recovers(&env, "www", &names, &log).await;
    assert!(
        proxy.faulted() >= 1,
        "the first issuer was asked and said 429"
    );
    let s = status(&env, "www");
    assert_eq!(s["issuer"], "second", "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_alone_is_retried_soon_not_in_a_year() {
    let Some(env) = Env::start(PebbleOpts::default()).await else {
        return;
    };
    let proxy = Proxy::for_pebble(&env.pebble).await;
    proxy.set(Mode::RateLimited {
        retry_after_secs: 365 * 86400,
    });
    let names = ["alone.example.com"];
    let text = head(&env, true, "", None)
        + &issuer(
            "ca",
            &proxy.directory_url(),
            &proxy.ca_file,
            "http01 = { self_check = false }",
        )
        + &cert(&env, "www", &["ca"], &names, "");
    std::fs::write(&env.config, text).unwrap();
    let (_daemon, log) = spawn_daemon(&env, &[]);
    let s = failing(&env, "www", &log).await;
    // Nothing is installed: a wait past the backoff cap would leave the site without a certificate
    // for a year. The retry is at most `retry_max` away.
    let next: jiff::Timestamp = s["next_renewal"].as_str().unwrap().parse().unwrap();
    let failed: jiff::Timestamp = s["last_error_at"].as_str().unwrap().parse().unwrap();
    assert!(
        next.duration_since(failed) <= jiff::SignedDuration::from_secs(10),
        "the one-year Retry-After is clamped: {s}"
    );
    assert!(
        s["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("rateLimited")
            || s["last_error"]
                .as_str()
                .unwrap_or_default()
                .to_lowercase()
                .contains("rate"),
        "{s}"
    );
    // The limit is lifted: the next retry issues.
    proxy.set(Mode::Pass);
    recovers(&env, "www", &names, &log).await;
}

/// A notify socket read the way systemd reads it (always drained), counting `WATCHDOG=1`.
struct NotifySocket {
    path: PathBuf,
    pings: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl NotifySocket {
    fn bind(path: PathBuf) -> Self {
        use std::sync::atomic::Ordering;
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let pings = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p, st) = (pings.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !st.load(Ordering::SeqCst) {
                if let Ok(len) = sock.recv(&mut buf)
                    && String::from_utf8_lossy(&buf[..len])
                        .lines()
                        .any(|l| l == "WATCHDOG=1")
                {
                    p.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        NotifySocket { path, pings, stop }
    }

    /// `WATCHDOG=1` messages received during the next `window`.
    async fn pings_during(&self, window: Duration) -> usize {
        use std::sync::atomic::Ordering;
        let before = self.pings.load(Ordering::SeqCst);
        tokio::time::sleep(window).await;
        self.pings.load(Ordering::SeqCst) - before
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// GET `path` on the admin listener; the HTTP status.
async fn admin_get(port: u16, path: &str) -> Option<(u16, String)> {
    let resp = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| eprintln!("GET {path}: {e:?}"))
        .ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.text().await.unwrap_or_default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_reload_hook_blocks_nothing() {
    let Some(env) = Env::start(PebbleOpts::default()).await else {
        return;
    };
    let proxy = Proxy::for_pebble(&env.pebble).await;
    // The second certificate's CA is unreachable at first, so it is issued while the first one's
    // reload hook hangs.
    proxy.set(Mode::Drop);
    let hang = env.dir.path().join("hang");
    let pid_file = env.dir.path().join("hang.pid");
    install_script(
        &hang,
        &format!(
            "#!/bin/sh\necho $$ > {}\nexec sleep 600\n",
            pid_file.display()
        ),
    );
    let admin_port = free_port();
    let http = "http01 = { self_check = false }";
    let text = head(&env, true, "hook_timeout = \"25s\"\n", Some(admin_port))
        + &pebble_issuer(&env, http)
        + &issuer("later", &proxy.directory_url(), &proxy.ca_file, http)
        + &cert(
            &env,
            "one",
            &["ca"],
            &["one.example.com"],
            &format!("reload = [\"{}\"]\n", hang.display()),
        )
        + &cert(&env, "two", &["later"], &["two.example.com"], "");
    std::fs::write(&env.config, text).unwrap();
    let notify = NotifySocket::bind(env.dir.path().join("notify.sock"));
    let (_daemon, log) = spawn_daemon(
        &env,
        &[
            ("NOTIFY_SOCKET", notify.path.to_str().unwrap()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    let one = recovers(&env, "one", &["one.example.com"], &log).await;
    let pid = wait_for("the reload hook to start", Duration::from_secs(60), || {
        read_pid(&pid_file)
    })
    .await;
    assert!(alive(pid));

    // While the hook hangs: the watchdog keeps coming (every 0.5 s), /healthz answers, and the
    // other certificate is issued as soon as its CA answers.
    let pings = notify.pings_during(Duration::from_secs(3)).await;
    assert!(
        pings >= 3,
        "only {pings} WATCHDOG=1 in 3 s while a hook hangs"
    );
    let health = admin_get(admin_port, "/healthz").await;
    assert_eq!(
        health.map(|h| h.0),
        Some(200),
        "/healthz while a hook hangs"
    );
    proxy.set(Mode::Pass);
    recovers(&env, "two", &["two.example.com"], &log).await;
    assert!(
        alive(pid),
        "the second certificate was issued while the hook still hung"
    );
    let (code, metrics) = admin_get(admin_port, "/metrics").await.expect("metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("certkeeper_certificate_reload_pending{name=\"one\"} 1"),
        "the reload of one is pending while its hook hangs:\n{metrics}"
    );

    // Past its timeout the hook's process group is killed; the reload stays pending (it runs again at
    // the next start) and the daemon still answers.
    let deadline = Instant::now() + Duration::from_secs(60);
    while alive(pid) {
        assert!(
            Instant::now() < deadline,
            "the hanging hook was not killed after its timeout"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let s = status(&env, "one");
    assert_eq!(
        s["reload_pending"].as_str().map(str::to_lowercase),
        Some(one.to_lowercase()),
        "{s}"
    );
    assert_eq!(
        admin_get(admin_port, "/healthz").await.map(|h| h.0),
        Some(200),
        "/healthz after the hook was killed; daemon log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let pings = notify.pings_during(Duration::from_secs(2)).await;
    assert!(pings >= 2, "the watchdog goes on after the hook was killed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_between_install_and_reload_reloads_at_the_next_start() {
    let Some(env) = Env::start(PebbleOpts::default()).await else {
        return;
    };
    let hook = env.dir.path().join("reload");
    let reloads = env.dir.path().join("reloads.log");
    let block = env.dir.path().join("block");
    let pid_file = env.dir.path().join("reload.pid");
    // Each run appends the serial it saw; while `block` exists the hook waits (the daemon is killed
    // meanwhile, so the reload never completes).
    install_script(
        &hook,
        &format!(
            "#!/bin/sh\nopenssl x509 -noout -serial -in \"$CERTKEEPER_FULLCHAIN\" >> {log}\n\
             if [ -e {block} ]; then echo $$ > {pid}; exec sleep 600; fi\n",
            log = reloads.display(),
            block = block.display(),
            pid = pid_file.display()
        ),
    );
    std::fs::write(&block, "").unwrap();
    let names = ["reload.example.com"];
    let text = head(&env, true, "", None)
        + &pebble_issuer(&env, "http01 = { self_check = false }")
        + &cert(
            &env,
            "www",
            &["ca"],
            &names,
            &format!("reload = [\"{}\"]\n", hook.display()),
        );
    std::fs::write(&env.config, text).unwrap();
    let (mut daemon, log) = spawn_daemon(&env, &[]);
    let serial = recovers(&env, "www", &names, &log).await;
    let pid = wait_for("the reload hook to start", Duration::from_secs(60), || {
        read_pid(&pid_file)
    })
    .await;
    assert_eq!(
        status(&env, "www")["reload_pending"]
            .as_str()
            .map(str::to_lowercase),
        Some(serial.to_lowercase())
    );

    // kill -9 of the daemon while its reload runs; the hook (our grandchild, by its PID) goes too.
    daemon.0.kill().unwrap();
    daemon.0.wait().unwrap();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    std::fs::remove_file(&block).unwrap();
    let before = std::fs::read_to_string(&reloads).unwrap();
    assert_eq!(before.lines().count(), 1, "{before}");

    // The next start runs the reload for the installed pair, without issuing again.
    let (_daemon, log) = spawn_daemon(&env, &[]);
    let after = wait_for(
        "the reload at the next start",
        Duration::from_secs(60),
        || {
            std::fs::read_to_string(&reloads)
                .ok()
                .filter(|t| t.lines().count() >= 2)
        },
    )
    .await;
    let line = after.lines().nth(1).unwrap().to_lowercase();
    assert!(
        line.trim_start_matches("serial=").trim_start_matches('0')
            == serial.to_lowercase().trim_start_matches('0'),
        "the reload was for the installed serial {serial}: {after}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let s = wait_for("the reload to be recorded", Duration::from_secs(30), || {
        Some(status(&env, "www")).filter(|s| s["reload_pending"].is_null())
    })
    .await;
    assert_eq!(
        s["serial"].as_str().map(str::to_lowercase),
        Some(serial.to_lowercase()),
        "not issued again: {s}"
    );
}

/// The number of failed attempts `status` shows for `name`.
fn failures_of(env: &Env, name: &str) -> u64 {
    status(env, name)["failures"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_certificate_is_shown_and_retried_on_reload_and_restart() {
    let Some(env) = Env::start(PebbleOpts {
        domain_blocklist: vec!["blocked.example.com".into()],
        ..PebbleOpts::default()
    })
    .await
    else {
        return;
    };
    let admin_port = free_port();
    let text = head(&env, true, "", Some(admin_port))
        + &pebble_issuer(&env, "http01 = { self_check = false }")
        + &cert(&env, "www", &["ca"], &["blocked.example.com"], "");
    std::fs::write(&env.config, text).unwrap();
    let (mut daemon, log) = spawn_daemon(&env, &[]);
    let s = wait_for(
        "the certificate to be paused",
        Duration::from_secs(60),
        || Some(status(&env, "www")).filter(|s| s["paused"] == true),
    )
    .await;
    // Paused: the reason in plain words, the next try a day away (not 2 s as for a transient fault).
    let err = s["last_error"].as_str().unwrap_or_default();
    assert!(
        err.contains("rejectedIdentifier") || err.to_lowercase().contains("refuses"),
        "{s}"
    );
    let next: jiff::Timestamp = s["next_renewal"].as_str().unwrap().parse().unwrap();
    let left = next.duration_since(jiff::Timestamp::now());
    assert!(
        left > jiff::SignedDuration::from_hours(20) && left <= jiff::SignedDuration::from_hours(27),
        "a paused certificate is retried daily: {s}"
    );
    let (_, metrics) = admin_get(admin_port, "/metrics").await.expect("metrics");
    assert!(
        metrics.contains("certkeeper_certificate_paused{name=\"www\"} 1"),
        "{metrics}"
    );
    let text = status_text(&env);
    assert!(
        text.to_lowercase().contains("paused"),
        "status says paused:\n{text}"
    );

    // SIGHUP with the config unchanged: tried again at once.
    let before = failures_of(&env, "www");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.0.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    wait_for("a retry on SIGHUP", Duration::from_secs(30), || {
        (failures_of(&env, "www") > before).then_some(())
    })
    .await;
    // A restart: tried again at once, too.
    daemon.0.kill().unwrap();
    daemon.0.wait().unwrap();
    let before = failures_of(&env, "www");
    let (_daemon, log2) = spawn_daemon(&env, &[]);
    wait_for("a retry at start", Duration::from_secs(30), || {
        (failures_of(&env, "www") > before).then_some(())
    })
    .await;
    assert!(status(&env, "www")["paused"] == true);
    let _ = (log, log2);
}

/// `certkeeper status` as text.
fn status_text(env: &Env) -> String {
    let out = env.run(&["status"], Duration::from_secs(30));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc2136_server_stopped_then_started() {
    let Some(mut bind) = support::dns::bind::Bind::start().await else {
        eprintln!("bind9 is not available; skipping");
        return;
    };
    let Some(env) = Env::start(PebbleOpts {
        dns_server: Some(bind.addr),
        ..PebbleOpts::default()
    })
    .await
    else {
        return;
    };
    let secret = env.dir.path().join("tsig.key");
    std::fs::write(&secret, format!("{}\n", support::dns::bind::SECRET)).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let solver = format!(
        "dns01 = {{ provider = \"rfc2136\", server = \"{addr}\", tsig_key = \"{key}\", \
         tsig_algorithm = \"hmac-sha256\", tsig_secret_file = \"{secret}\" }}\n\
         propagation = {{ nameservers = [\"{addr}\"], timeout = \"20s\", interval = \"1s\" }}",
        addr = bind.addr,
        key = support::dns::bind::KEY_NAME,
        secret = secret.display()
    );
    let names = ["www.example.test", "*.example.test"];
    let text = head(&env, false, "", None)
        + &pebble_issuer(&env, &solver)
        + &cert(&env, "www", &["ca"], &names, "");
    std::fs::write(&env.config, text).unwrap();
    // The DNS server is down when the daemon first needs it.
    bind.stop();
    let (_daemon, log) = spawn_daemon(&env, &[]);
    let s = failing(&env, "www", &log).await;
    eprintln!("while bind9 is down: {s}");
    bind.start_again().await;
    recovers(&env, "www", &names, &log).await;
}
