//! `certkeeper run`: the daemon loop.
//!
//! One due time per certificate lives in a timer set; the loop sleeps until the earliest one (no
//! polling), a finished issuance, a config change, or a signal. Issuances run concurrently under the
//! configured limit; reload hooks run once per batch, when no issuance is in flight any more.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use jiff::Timestamp;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::challenge::http01::{Http01Server, TokenStore};
use crate::config::{self, CertificateConfig};
use crate::hooks::{self, ReloadRequest};
use crate::scheduler::Timers;
use crate::store;

use super::admin::{self, CertMetrics, HealthPing, Metrics};
use super::ari;
use super::issue::Issued;
use super::pass::{due_for, issue_and_record};
use super::watch::{ConfigWatcher, settle, watch_config};
use super::{IssueError, Runtime};

/// How long a clean shutdown waits for in-flight orders before leaving them to be resumed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// How long interrupted orders get to clean up their challenges after [`SHUTDOWN_GRACE`]; together
/// they stay below systemd's default stop timeout (90 s).
const CLEANUP_GRACE: Duration = Duration::from_secs(45);

/// A finished task: `None` when it only refreshed ARI and the certificate was not due.
type Done = (String, Option<Result<Issued, IssueError>>);

/// Run the daemon until SIGTERM or SIGINT.
pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let cfg = Arc::new(config::load(config_path)?);
    let tokens = TokenStore::reading_spool(super::http01_spool(&cfg));
    let shutdown = CancellationToken::new();
    let server = Http01Server::bind(&cfg.http01.listen, tokens.clone())?;
    let _server = server.serve(shutdown.clone())?;
    let mut rt =
        Arc::new(Runtime::new(cfg.clone(), tokens.clone()).context("opening the state directory")?);

    let metrics = Arc::new(Metrics::default());
    let (health_tx, mut health_rx) = mpsc::channel::<HealthPing>(16);
    if let Some(admin) = &cfg.admin {
        admin::serve(admin.listen, metrics.clone(), health_tx, shutdown.clone()).await?;
    } else {
        drop(health_tx);
    }

    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let (cfg_tx, mut cfg_rx) = mpsc::channel::<()>(4);
    let mut _watcher = watch_config(&cfg, cfg_tx.clone());

    let mut timers = Timers::default();
    schedule_all(&rt, &mut timers, &metrics);
    let limit = Arc::new(Semaphore::new(cfg.daemon.max_concurrent.max(1)));
    let mut inflight: JoinSet<Done> = JoinSet::new();
    let mut running: HashSet<String> = HashSet::new();
    let mut reloads: Vec<ReloadRequest> = Vec::new();

    // One persistent interval: a sleep recreated on every loop iteration would never fire while
    // other events keep the loop busy, and systemd would kill a healthy daemon.
    let mut watchdog = sd_watchdog_interval().map(|d| {
        let mut i = tokio::time::interval(d);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("running"),
    ]);
    info!(
        certificates = rt.config.certificates.len(),
        "certkeeper running"
    );

    let shared = Shared {
        tokens: &tokens,
        cfg_tx: &cfg_tx,
        metrics: &metrics,
    };
    loop {
        let now = Timestamp::now();
        for name in timers.pop_due(now) {
            let Some(cert) = rt.config.certificates.get(&name).cloned() else {
                continue;
            };
            if !running.insert(name.clone()) {
                continue;
            }
            let (rt, limit) = (rt.clone(), limit.clone());
            inflight.spawn(async move {
                let _permit = limit.acquire_owned().await;
                let now = Timestamp::now();
                ari::refresh(&rt, &cert, now).await;
                if !due_for(&rt, &cert, now).is_due(now) {
                    return (name, None);
                }
                let result = issue_and_record(&rt, &cert).await;
                (name, Some(result))
            });
        }
        let sleep = match timers.next_deadline() {
            Some(at) => {
                let wait = at.duration_since(Timestamp::now()).unsigned_abs();
                tokio::time::sleep(wait.min(Duration::from_secs(24 * 3600)))
            }
            None => tokio::time::sleep(Duration::from_secs(24 * 3600)),
        };
        tokio::select! {
            _ = sleep => {}
            Some(done) = inflight.join_next() => {
                match done {
                    Ok((name, result)) => {
                        running.remove(&name);
                        finished(&rt, &mut timers, &mut reloads, &metrics, name, result);
                    }
                    Err(e) => error!(error = %e, "an issuance task panicked"),
                }
                if inflight.is_empty() && !reloads.is_empty() {
                    let batch = std::mem::take(&mut reloads);
                    hooks::run_reloads(&batch, rt.config.daemon.hook_timeout).await;
                }
                if inflight.is_empty() {
                    release_memory();
                }
            }
            _ = hup.recv() => reload(config_path, &mut rt, &mut timers, &mut _watcher, &shared, "SIGHUP"),
            Some(()) = cfg_rx.recv() => {
                // editors write in several steps: wait until the files are quiet
                settle(&mut cfg_rx).await;
                reload(config_path, &mut rt, &mut timers, &mut _watcher, &shared, "config change")
            }
            Some(ping) = health_rx.recv() => { let _ = ping.send(()); }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tick(watchdog.as_mut()) => { let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]); }
        }
    }

    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    info!(in_flight = inflight.len(), "shutting down");
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    while !inflight.is_empty() {
        match tokio::time::timeout_at(deadline, inflight.join_next()).await {
            Ok(Some(Ok((name, result)))) => {
                finished(&rt, &mut timers, &mut reloads, &metrics, name, result)
            }
            Ok(_) => {}
            Err(_) => {
                warn!(
                    left = inflight.len(),
                    "orders still in flight are interrupted, to resume at the next start"
                );
                // Interrupt instead of aborting at once, so challenge cleanup (DNS-01 TXT records)
                // still runs; abort only what does not stop within CLEANUP_GRACE.
                rt.interrupt.cancel();
                let deadline = tokio::time::Instant::now() + CLEANUP_GRACE;
                while let Ok(Some(joined)) =
                    tokio::time::timeout_at(deadline, inflight.join_next()).await
                {
                    if let Ok((name, result)) = joined {
                        finished(&rt, &mut timers, &mut reloads, &metrics, name, result);
                    }
                }
                inflight.abort_all();
                break;
            }
        }
    }
    if !reloads.is_empty() {
        hooks::run_reloads(&reloads, rt.config.daemon.hook_timeout).await;
    }
    shutdown.cancel();
    info!("stopped");
    Ok(())
}

/// Give the memory a burst of issuances grew into back to the system before the daemon goes idle for
/// weeks (glibc keeps freed heap pages of every arena mapped otherwise).
fn release_memory() {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Record a finished task: queue its reload hooks and set its next wake-up time.
fn finished(
    rt: &Runtime,
    timers: &mut Timers,
    reloads: &mut Vec<ReloadRequest>,
    metrics: &Metrics,
    name: String,
    result: Option<Result<Issued, IssueError>>,
) {
    let Some(cert) = rt.config.certificates.get(&name) else {
        return;
    };
    let attempted = result.is_some();
    match result {
        Some(Ok(issued)) => {
            metrics.count_renewal(&name, true);
            if !cert.reload.is_empty() {
                reloads.push(ReloadRequest {
                    cert_name: name.clone(),
                    domains: cert.domains.clone(),
                    fullchain: issued.paths.fullchain,
                    key: issued.paths.key,
                    commands: cert.reload.clone(),
                });
            }
        }
        Some(Err(e)) => {
            metrics.count_renewal(&name, false);
            error!(cert = %name, error = %e, "issuance failed");
        }
        None => {}
    }
    schedule_one(rt, timers, metrics, cert, !attempted);
}

/// Set the timer of one certificate and refresh its metrics.
///
/// `after_check`: the certificate was just looked at and found not due; a wake-up time that is
/// already past (state that cannot be saved, a clock jump) is pushed a minute out so the loop
/// cannot spin.
fn schedule_one(
    rt: &Runtime,
    timers: &mut Timers,
    metrics: &Metrics,
    cert: &CertificateConfig,
    after_check: bool,
) {
    let now = Timestamp::now();
    let (due, wake) = ari::next_wake(rt, cert, now);
    info!(cert = %cert.name, at = %due.at, reason = %due.reason, "next renewal");
    match wake {
        Some(mut at) => {
            if after_check && at <= now {
                at = now + jiff::SignedDuration::from_secs(60);
            }
            timers.set(&cert.name, at)
        }
        None => {
            timers.remove(&cert.name);
        }
    }
    let state = rt.state.cert_state_or_default(&cert.name);
    let not_after = store::read_installed(&cert.output)
        .ok()
        .flatten()
        .map(|live| live.cert.not_after.as_second());
    metrics.set_cert(
        &cert.name,
        CertMetrics {
            not_after,
            failures: state.retry.failures,
            last_error: if state.retry.failures > 0 {
                state.retry.last_error.clone()
            } else {
                None
            },
        },
    );
}

fn schedule_all(rt: &Runtime, timers: &mut Timers, metrics: &Metrics) {
    for cert in rt.config.certificates.values() {
        schedule_one(rt, timers, metrics, cert, false);
    }
    let names: Vec<&str> = rt.config.certificates.keys().map(String::as_str).collect();
    metrics.retain(&names);
}

/// What a reload needs besides the runtime it replaces.
#[derive(Clone, Copy)]
struct Shared<'a> {
    tokens: &'a TokenStore,
    cfg_tx: &'a mpsc::Sender<()>,
    metrics: &'a Metrics,
}

/// Load the config again; keep the running one when the new one does not validate.
fn reload(
    path: &Path,
    rt: &mut Arc<Runtime>,
    timers: &mut Timers,
    watcher: &mut Option<ConfigWatcher>,
    shared: &Shared<'_>,
    why: &str,
) {
    let Shared {
        tokens,
        cfg_tx,
        metrics,
    } = *shared;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
    match config::load(path) {
        Err(e) => error!("{why}: the new config is invalid, keeping the running one: {e}"),
        Ok(new) => {
            if new.http01.listen != rt.config.http01.listen {
                warn!("http01.listen changed; the new addresses take effect after a restart");
            }
            if new.admin != rt.config.admin {
                warn!("[admin] changed; the new listener takes effect after a restart");
            }
            let new = Arc::new(new);
            match Runtime::new(new.clone(), tokens.clone()) {
                Ok(mut new_rt) => {
                    // Orders still running on the old runtime stop with the same interrupt.
                    new_rt.interrupt = rt.interrupt.clone();
                    *rt = Arc::new(new_rt);
                    *timers = Timers::default();
                    schedule_all(rt, timers, metrics);
                    *watcher = watch_config(&new, cfg_tx.clone());
                    info!(
                        certificates = new.certificates.len(),
                        "{why}: config reloaded"
                    );
                }
                Err(e) => error!(
                    "{why}: cannot open the state directory of the new config, keeping the running one: {e}"
                ),
            }
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
}

/// Half the systemd watchdog interval, when systemd asked for a watchdog.
fn sd_watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}

async fn tick(interval: Option<&mut tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}
