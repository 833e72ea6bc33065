//! `certkeeper run`: the daemon loop.
//!
//! One due time per certificate lives in a timer set; the loop sleeps until the earliest one (no
//! polling), a finished issuance, a config change, or a signal. Issuances run concurrently under the
//! configured limit; reload hooks run once per batch, when no issuance is in flight any more.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
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
use crate::config::{self, Config};
use crate::hooks::{self, ReloadRequest};
use crate::scheduler::Timers;

use super::issue::Issued;
use super::pass::{due_for, issue_and_record};
use super::{IssueError, Runtime};

/// How long a clean shutdown waits for in-flight orders before leaving them to be resumed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// How long interrupted orders get to clean up their challenges after [`SHUTDOWN_GRACE`]; together
/// they stay below systemd's default stop timeout (90 s).
const CLEANUP_GRACE: Duration = Duration::from_secs(45);

type Done = (String, Result<Issued, IssueError>);

/// Run the daemon until SIGTERM or SIGINT.
pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let cfg = Arc::new(config::load(config_path)?);
    let tokens = TokenStore::default();
    let shutdown = CancellationToken::new();
    let server = Http01Server::bind(&cfg.http01.listen, tokens.clone())?;
    let _server = server.serve(shutdown.clone())?;
    let mut rt =
        Arc::new(Runtime::new(cfg.clone(), tokens.clone()).context("opening the state directory")?);

    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let (cfg_tx, mut cfg_rx) = mpsc::channel::<()>(4);
    let mut _watcher = watch_config(&cfg, cfg_tx.clone());

    let mut timers = Timers::default();
    schedule_all(&rt, &mut timers);
    let limit = Arc::new(Semaphore::new(cfg.daemon.max_concurrent.max(1)));
    let mut inflight: JoinSet<Done> = JoinSet::new();
    let mut running: HashSet<String> = HashSet::new();
    let mut reloads: Vec<ReloadRequest> = Vec::new();

    let watchdog = sd_watchdog_interval();
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("running"),
    ]);
    info!(
        certificates = rt.config.certificates.len(),
        "certkeeper running"
    );

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
                let result = issue_and_record(&rt, &cert).await;
                (name, result)
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
                        finished(&rt, &mut timers, &mut reloads, name, result);
                    }
                    Err(e) => error!(error = %e, "an issuance task panicked"),
                }
                if inflight.is_empty() && !reloads.is_empty() {
                    let batch = std::mem::take(&mut reloads);
                    hooks::run_reloads(&batch, rt.config.daemon.hook_timeout).await;
                }
            }
            _ = hup.recv() => reload(config_path, &mut rt, &tokens, &mut timers, &mut _watcher, &cfg_tx, "SIGHUP"),
            Some(()) = cfg_rx.recv() => {
                // editors write in several steps; the debouncer already merged them
                reload(config_path, &mut rt, &tokens, &mut timers, &mut _watcher, &cfg_tx, "config change")
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tick(watchdog) => { let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]); }
        }
    }

    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    info!(in_flight = inflight.len(), "shutting down");
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    while !inflight.is_empty() {
        match tokio::time::timeout_at(deadline, inflight.join_next()).await {
            Ok(Some(Ok((name, result)))) => finished(&rt, &mut timers, &mut reloads, name, result),
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
                        finished(&rt, &mut timers, &mut reloads, name, result);
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
    Ok(())
}

/// Record a finished issuance: queue its reload hooks and set its next due time.
fn finished(
    rt: &Runtime,
    timers: &mut Timers,
    reloads: &mut Vec<ReloadRequest>,
    name: String,
    result: Result<Issued, IssueError>,
) {
    let Some(cert) = rt.config.certificates.get(&name) else {
        return;
    };
    match result {
        Ok(issued) if !cert.reload.is_empty() => reloads.push(ReloadRequest {
            cert_name: name.clone(),
            domains: cert.domains.clone(),
            fullchain: issued.paths.fullchain,
            key: issued.paths.key,
            commands: cert.reload.clone(),
        }),
        Ok(_) => {}
        Err(e) => error!(cert = %name, error = %e, "issuance failed"),
    }
    let due = due_for(rt, cert, Timestamp::now());
    info!(cert = %name, at = %due.at, reason = %due.reason, "next renewal");
    match due.wake_at() {
        Some(at) => timers.set(&name, at),
        None => {
            timers.remove(&name);
        }
    }
}

fn schedule_all(rt: &Runtime, timers: &mut Timers) {
    let now = Timestamp::now();
    for (name, cert) in &rt.config.certificates {
        let due = due_for(rt, cert, now);
        info!(cert = %name, at = %due.at, reason = %due.reason, "scheduled");
        match due.wake_at() {
            Some(at) => timers.set(name, at),
            None => {
                timers.remove(name);
            }
        }
    }
}

/// Load the config again; keep the running one when the new one does not validate.
fn reload(
    path: &Path,
    rt: &mut Arc<Runtime>,
    tokens: &TokenStore,
    timers: &mut Timers,
    watcher: &mut Option<Watcher>,
    cfg_tx: &mpsc::Sender<()>,
    why: &str,
) {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
    match config::load(path) {
        Err(e) => error!("{why}: the new config is invalid, keeping the running one: {e}"),
        Ok(new) => {
            if new.http01.listen != rt.config.http01.listen {
                warn!("http01.listen changed; the new addresses take effect after a restart");
            }
            let new = Arc::new(new);
            match Runtime::new(new.clone(), tokens.clone()) {
                Ok(mut new_rt) => {
                    // Orders still running on the old runtime stop with the same interrupt.
                    new_rt.interrupt = rt.interrupt.clone();
                    *rt = Arc::new(new_rt);
                    *timers = Timers::default();
                    schedule_all(rt, timers);
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

type Watcher = notify_debouncer_full::Debouncer<
    notify::RecommendedWatcher,
    notify_debouncer_full::RecommendedCache,
>;

/// Watch the directories of every config file (editors save by rename, so the file itself would be
/// lost) and send one message per debounced burst of changes to one of those files.
fn watch_config(cfg: &Config, tx: mpsc::Sender<()>) -> Option<Watcher> {
    let files: HashSet<PathBuf> = cfg
        .files
        .iter()
        .filter_map(|f| std::fs::canonicalize(f).ok().or(Some(f.clone())))
        .collect();
    let mut dirs: HashSet<PathBuf> = files
        .iter()
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect();
    dirs.extend(cfg.include_dirs.iter().cloned());
    let watched_files = files.clone();
    let include_dirs: HashSet<PathBuf> = cfg.include_dirs.iter().cloned().collect();
    let handler = move |res: notify_debouncer_full::DebounceEventResult| {
        let Ok(events) = res else { return };
        let relevant = events.iter().flat_map(|e| e.paths.iter()).any(|p| {
            watched_files.contains(p)
                || (p.extension().is_some_and(|x| x == "toml")
                    && p.parent().is_some_and(|d| include_dirs.contains(d)))
        });
        if relevant {
            let _ = tx.try_send(());
        }
    };
    let mut debouncer = match notify_debouncer_full::new_debouncer(
        Duration::from_millis(300),
        None,
        handler,
    ) {
        Ok(d) => d,
        Err(e) => {
            warn!(error = %e, "cannot watch the config files; use SIGHUP (systemctl reload certkeeper) after edits");
            return None;
        }
    };
    for dir in dirs {
        if let Err(e) = debouncer.watch(&dir, notify::RecursiveMode::NonRecursive) {
            warn!(dir = %dir.display(), error = %e, "cannot watch a config directory; use SIGHUP after edits");
        }
    }
    Some(debouncer)
}

/// Half the systemd watchdog interval, when systemd asked for a watchdog.
fn sd_watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}

async fn tick(interval: Option<Duration>) {
    match interval {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}
