//! `certkeeper run`: the daemon loop.
//!
//! One due time per certificate lives in a timer set; the loop sleeps until the earliest one (no
//! polling), a finished issuance, a config change, or a signal. Issuances run concurrently under the
//! configured limit, each in a task of its own (a panicking one is logged with its certificate and
//! rescheduled with backoff). Reload hooks run once per batch in the [`Reloader`]'s task, so the
//! loop keeps answering `/healthz`, sending WATCHDOG=1 and handling SIGTERM while a hook runs.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use jiff::Timestamp;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::challenge::http01::{Http01Server, TokenStore};
use crate::config::{self, CertificateConfig};
use crate::engine::order::{Issued, adopt};
use crate::engine::pass::{attempt, record_failure};
use crate::engine::{IssueError, Runtime, alerts, ari, due, reload, uses_http01_listener};
use crate::hooks::ReloadRequest;
use crate::scheduler::{DueReason, Timers};

use super::admin::{self, CertMetrics, HealthPing, Metrics};
use super::reloader::{Job, Reloader, recheck_every};
use super::watch::{ConfigWatcher, settle, watch_config};

/// How long a clean shutdown waits for in-flight orders before interrupting them (they stay
/// resumable).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// How long interrupted orders get to clean up their challenges after [`SHUTDOWN_GRACE`].
const CLEANUP_GRACE: Duration = Duration::from_secs(20);

/// The whole stop, from SIGTERM to exit, stays below this; the unit's `TimeoutStopSec` is 90 s.
/// Reload hooks still running then are left: their reload is still pending in the ledger and runs
/// at the next start.
const STOP_BUDGET: Duration = Duration::from_secs(80);
/// In a fleet, how often a node looks whether another node renewed a certificate.
const FLEET_POLL: jiff::SignedDuration = jiff::SignedDuration::from_secs(300);

/// A finished task: `None` when the certificate turned out not to be due.
type Done = (String, Option<Result<Issued, IssueError>>);

/// Run the daemon until SIGTERM or SIGINT.
pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let cfg = Arc::new(config::load(config_path)?);
    let mut tokens = TokenStore::reading_spool(crate::engine::http01_spool(&cfg));
    let shutdown = CancellationToken::new();
    // The HTTP-01 listener only when some issuer answers HTTP-01 through it: a webroot-only host
    // keeps its port 80 (or the default 8402) to the web server. In a fleet it answers every
    // node's tokens.
    let _server = if uses_http01_listener(&cfg) {
        tokens = tokens.with_fleet(crate::engine::fleet_tokens(&cfg)?);
        let server = Http01Server::bind(&cfg.http01.listen, tokens.clone())?;
        Some(server.serve(shutdown.clone())?)
    } else {
        info!("no issuer uses the http01 solver; the HTTP-01 listener is not started");
        None
    };
    let rt =
        Arc::new(Runtime::new(cfg.clone(), tokens.clone()).context("opening the state directory")?);

    let metrics = Arc::new(Metrics::default());
    let (health_tx, mut health_rx) = mpsc::channel::<HealthPing>(16);
    if let Some(admin) = &cfg.admin {
        admin::serve(
            admin.listen,
            admin.token.clone(),
            metrics.clone(),
            health_tx,
            shutdown.clone(),
        )
        .await?;
    } else {
        drop(health_tx);
    }

    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let (cfg_tx, mut cfg_rx) = mpsc::channel::<()>(4);
    let watcher = watch_config(&cfg, cfg_tx.clone());
    // From here the runtime holds the config: a reload must be able to free this one.
    drop(cfg);

    // One persistent interval: a sleep recreated on every loop iteration would never fire while
    // other events keep the loop busy, and systemd would kill a healthy daemon.
    let mut watchdog = sd_watchdog_interval().map(|d| {
        let mut i = tokio::time::interval(d);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    let mut d = Daemon::new(rt, metrics, tokens, cfg_tx, watcher);
    d.start();
    let _ = super::notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("running"),
    ]);
    info!(
        certificates = d.rt.config.certificates.len(),
        "certkeeper running"
    );

    loop {
        d.spawn_due();
        let sleep = tokio::time::sleep(d.sleep_for());
        tokio::select! {
            _ = sleep => {}
            Some(joined) = d.inflight.join_next_with_id() => d.joined(joined),
            _ = hup.recv() => d.reload_config(config_path, "SIGHUP"),
            Some(()) = cfg_rx.recv() => {
                // editors write in several steps: wait until the files are quiet
                settle(&mut cfg_rx).await;
                d.reload_config(config_path, "config change")
            }
            Some(ping) = health_rx.recv() => { let _ = ping.send(()); }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = d.recheck.tick() => d.reloader.send(Job::Recheck { rt: d.rt.clone(), force: false }),
            _ = tick(watchdog.as_mut()) => { let _ = super::notify::notify(&[sd_notify::NotifyState::Watchdog]); }
        }
    }
    d.shutdown().await;
    shutdown.cancel();
    info!("stopped");
    Ok(())
}

/// What the loop owns.
struct Daemon {
    rt: Arc<Runtime>,
    metrics: Arc<Metrics>,
    tokens: TokenStore,
    cfg_tx: mpsc::Sender<()>,
    watcher: Option<ConfigWatcher>,
    timers: Timers,
    limit: Arc<Semaphore>,
    inflight: JoinSet<Done>,
    /// Which certificate each task works on (a panicked task is known only by its id).
    tasks: HashMap<Id, String>,
    running: HashSet<String>,
    /// Paused certificates to try at once (a start or reload), whatever their daily retry time.
    paused_now: HashSet<String>,
    /// Failed attempts in a row the ledger could not record (the store down, the state directory
    /// gone or full), per certificate: their backoff is kept here.
    unrecorded: HashMap<String, u32>,
    /// Reloads of this batch, sent to the reloader when no issuance is in flight any more.
    reloads: Vec<ReloadRequest>,
    /// Certificates installed in this batch (deploy-checked and notified after the reloads).
    changed: Vec<String>,
    reloader: Reloader,
    /// When to look again at what is served and what to notify ([`recheck_every`]).
    recheck: tokio::time::Interval,
}

impl Daemon {
    fn new(
        rt: Arc<Runtime>,
        metrics: Arc<Metrics>,
        tokens: TokenStore,
        cfg_tx: mpsc::Sender<()>,
        watcher: Option<ConfigWatcher>,
    ) -> Self {
        let limit = Arc::new(Semaphore::new(rt.config.daemon.max_concurrent.max(1)));
        let reloader = Reloader::start(metrics.clone());
        let recheck = recheck_interval(&rt.config);
        Self {
            rt,
            metrics,
            tokens,
            cfg_tx,
            watcher,
            timers: Timers::default(),
            limit,
            inflight: JoinSet::new(),
            tasks: HashMap::new(),
            running: HashSet::new(),
            paused_now: HashSet::new(),
            unrecorded: HashMap::new(),
            reloads: Vec::new(),
            changed: Vec::new(),
            reloader,
            recheck,
        }
    }

    /// Schedule every certificate (paused ones at once) and run the reloads a previous run left
    /// pending (killed between install and reload, or a failed hook).
    fn start(&mut self) {
        self.adopt_all();
        let mut pending = self.schedule_all(true);
        pending.retain(|p| !self.reloads.iter().any(|r| r.cert_name == p.cert_name));
        // Loading the config and reading every certificate freed far more than stays in use.
        release_memory();
        if !pending.is_empty() {
            let names: Vec<&str> = pending.iter().map(|r| r.cert_name.as_str()).collect();
            info!(certs = %names.join(","), "reloading for certificates installed before the last stop whose reload did not complete");
            self.reloads.extend(pending);
            self.flush_reloads();
        }
        // What is served, and what to notify, at start-up (after the pending reloads).
        self.reloader.send(Job::Recheck {
            rt: self.rt.clone(),
            force: true,
        });
    }

    /// In a fleet, install the current pair of every certificate that another node renewed while
    /// this one was down, and queue its reload.
    fn adopt_all(&mut self) {
        let certs: Vec<CertificateConfig> = self.rt.config.certificates.values().cloned().collect();
        for cert in &certs {
            match adopt(&self.rt, cert) {
                Ok(Some(issued)) => self
                    .reloads
                    .extend(reload::request(cert, &issued.cert.serial_hex)),
                Ok(None) => {}
                Err(e) => {
                    error!(cert = %cert.name, error = %e, "cannot install the fleet's current certificate here")
                }
            }
        }
    }

    fn sleep_for(&self) -> Duration {
        let day = Duration::from_secs(24 * 3600);
        self.timers.next_deadline().map_or(day, |at| {
            at.duration_since(Timestamp::now()).unsigned_abs().min(day)
        })
    }

    /// Start a task for every certificate whose timer is due.
    fn spawn_due(&mut self) {
        for name in self.timers.pop_due(Timestamp::now()) {
            let Some(cert) = self.rt.config.certificates.get(&name).cloned() else {
                continue;
            };
            if !self.running.insert(name.clone()) {
                continue;
            }
            let paused_now = self.paused_now.remove(&name);
            let (rt, limit) = (self.rt.clone(), self.limit.clone());
            let handle = self
                .inflight
                .spawn(async move { work(rt, cert, limit, paused_now).await });
            self.tasks.insert(handle.id(), name);
        }
    }

    /// A task ended: record it, queue its reload, reschedule the certificate.
    fn joined(&mut self, joined: Result<(Id, Done), JoinError>) {
        let (name, result) = match joined {
            Ok((id, (name, result))) => {
                self.tasks.remove(&id);
                (name, result)
            }
            Err(e) => {
                let Some(name) = self.tasks.remove(&e.id()) else {
                    error!(error = %e, "a task of unknown certificate ended abnormally");
                    return;
                };
                (name.clone(), Some(Err(self.panicked(&name, &e))))
            }
        };
        self.running.remove(&name);
        self.finished(name, result);
        if self.inflight.is_empty() {
            self.flush_reloads();
            release_memory();
        }
    }

    /// Record the failure of a task that panicked or was cancelled, so it backs off like any other.
    fn panicked(&self, name: &str, e: &JoinError) -> IssueError {
        let what = if e.is_panic() {
            let payload = e.to_string();
            format!(
                "the issuance task panicked ({payload}); this is a bug in certkeeper, please report it with the log"
            )
        } else {
            "the issuance task was cancelled".to_string()
        };
        error!(cert = %name, error = %what, "issuance task failed; retrying with backoff");
        let err = IssueError::internal(what);
        if let Some(cert) = self.rt.config.certificates.get(name) {
            let snap = self.rt.ledger.snapshot(name, &cert.output);
            record_failure(&self.rt, cert, &snap, &err);
        }
        err
    }

    /// Queue a finished task's reload and set its next wake-up time.
    fn finished(&mut self, name: String, result: Option<Result<Issued, IssueError>>) {
        let Some(cert) = self.rt.config.certificates.get(&name).cloned() else {
            return;
        };
        // Found not due, or found busy in another process: look again in a minute at the earliest.
        let busy = result
            .as_ref()
            .is_some_and(|r| r.as_ref().is_err_and(IssueError::is_busy));
        let attempted = result.is_some() && !busy;
        let store_down = result
            .as_ref()
            .is_some_and(|r| r.as_ref().is_err_and(IssueError::is_store_down));
        let failed = result.as_ref().is_some_and(|r| {
            r.as_ref()
                .is_err_and(|e| !e.is_interrupted() && !e.is_busy())
        });
        match result {
            Some(Ok(issued)) => {
                if issued.ordered_here {
                    self.metrics.count_renewal(&name, true);
                }
                self.reloads.retain(|r| r.cert_name != name);
                self.reloads
                    .extend(reload::request(&cert, &issued.cert.serial_hex));
                self.changed.push(name.clone());
            }
            Some(Err(e)) if e.is_interrupted() => {}
            Some(Err(e)) if e.is_busy() => {
                info!(cert = %name, reason = %e, "being issued by another certkeeper process or node; looking again later");
            }
            Some(Err(e)) => {
                self.metrics.count_renewal(&name, false);
                error!(cert = %name, error = %e, "issuance failed");
            }
            None => {}
        }
        // A reload of this certificate is queued above or still pending from before this run.
        let _ = self.schedule_one(&cert, !attempted, false);
        if busy {
            self.look_again_within_lease(&name);
        }
        // A failure the ledger holds sets a retry a backoff away. One it could not take (the shared
        // store down, the state directory removed or on a full disk) leaves the certificate due
        // at once: never a tight loop of orders and log lines.
        let unrecorded = failed
            && self
                .timers
                .get(&name)
                .is_some_and(|t| t <= Timestamp::now() + jiff::SignedDuration::from_secs(1));
        if store_down || unrecorded {
            self.back_off_unrecorded(&name, store_down);
        } else if attempted {
            self.unrecorded.remove(&name);
        }
    }

    /// A certificate whose attempt failed and whose failure is not in the ledger (the store was
    /// down or could not be written, so the ledger shows it as due at once): retried on the
    /// configured backoff schedule counted here, never in a tight loop.
    fn back_off_unrecorded(&mut self, name: &str, store_down: bool) {
        let failures = self.unrecorded.entry(name.to_string()).or_insert(0);
        *failures = failures.saturating_add(1);
        let delay = self.rt.config.daemon.backoff.delay(*failures);
        let at = Timestamp::now()
            .checked_add(delay)
            .unwrap_or(Timestamp::MAX);
        if self.timers.get(name).is_none_or(|t| t < at) {
            self.timers.set(name, at);
        }
        if store_down {
            warn!(cert = %name, failures = *failures, retry_at = %at, "the shared store is unreachable; this certificate is retried with backoff");
        } else {
            warn!(cert = %name, failures = *failures, retry_at = %at, "the failure could not be recorded in the state directory (is it there, is the disk full?); this certificate is retried with backoff");
        }
    }

    /// In a fleet, a certificate another node holds the lease of is looked at again every half
    /// lease (its holder's lease runs out at most one lease after its last renewal): once its
    /// holder died, this node takes over within a lease and a half and resumes the holder's order;
    /// while it lives, this node installs what it issued. Trying a held lease costs one statement.
    fn look_again_within_lease(&mut self, name: &str) {
        let config::StorageConfig::Postgres(pg) = &self.rt.config.storage else {
            return;
        };
        let half = (pg.lease / 2).max(Duration::from_secs(1));
        let at = Timestamp::now() + jiff::SignedDuration::try_from(half).unwrap_or(FLEET_POLL);
        if self.timers.get(name).is_none_or(|t| t > at) {
            self.timers.set(name, at);
        }
    }

    /// Hand the batch's reloads (and the certificates installed in it) to the reloader.
    fn flush_reloads(&mut self) {
        if self.reloads.is_empty() && self.changed.is_empty() {
            return;
        }
        self.reloader.send(Job::Batch {
            rt: self.rt.clone(),
            requests: std::mem::take(&mut self.reloads),
            changed: std::mem::take(&mut self.changed),
        });
    }

    /// Set the timer of one certificate and refresh its metrics, from one ledger snapshot.
    ///
    /// `after_check`: the certificate was just looked at and found not due; a wake-up time that is
    /// already past (state that cannot be saved, a clock jump) is pushed a minute out so the loop
    /// cannot spin. `paused_now`: try a paused certificate at once (start, reload). Returns the
    /// reload the snapshot shows as not completed, if any.
    fn schedule_one(
        &mut self,
        cert: &CertificateConfig,
        after_check: bool,
        paused_now: bool,
    ) -> Option<ReloadRequest> {
        let now = Timestamp::now();
        let snap = self.rt.ledger.snapshot(&cert.name, &cert.output);
        let (due, mut wake) = due::next_wake(&self.rt.config, cert, &snap, now, paused_now);
        info!(cert = %cert.name, at = %due.at, reason = %due.reason, "next renewal");
        let paused = matches!(due.reason, DueReason::Paused { .. });
        if paused && paused_now {
            self.paused_now.insert(cert.name.clone());
        }
        if after_check && wake <= now {
            wake = now + jiff::SignedDuration::from_secs(60);
        }
        // In a fleet, another node may renew it any time: look at the shared pair regularly.
        if self.rt.ledger.node().is_some() {
            wake = wake.min(now + FLEET_POLL);
        }
        self.timers.set(&cert.name, wake);
        let retry = &snap.state.retry;
        let deploy_check = snap.state.deploy.as_ref().filter(|d| {
            cert.verify_deploy.is_some()
                && snap.live().is_some_and(|l| l.cert.serial_hex == d.serial)
        });
        self.metrics.set_cert(
            &cert.name,
            CertMetrics {
                not_after: snap.live().map(|l| l.cert.not_after.as_second()),
                failures: retry.failures,
                last_error: retry.last_error.clone().filter(|_| retry.failures > 0),
                paused,
                next_attempt: Some(due.at.as_second()),
                reload_pending: !cert.reload.is_empty() && snap.reload_pending().is_some(),
                deployed: deploy_check.map(|d| d.deployed),
                served_not_after: deploy_check
                    .and_then(|d| d.served_not_after())
                    .map(|t| t.as_second()),
            },
        );
        reload::pending_one(cert, &snap)
    }

    /// Set every certificate's timer; returns the reloads that did not complete (from the same
    /// snapshots, so the start reads each certificate once).
    fn schedule_all(&mut self, paused_now: bool) -> Vec<ReloadRequest> {
        let config = self.rt.config.clone();
        let pending = config
            .certificates
            .values()
            .filter_map(|cert| self.schedule_one(cert, false, paused_now))
            .collect();
        self.timers.pack();
        self.metrics
            .retain(|name| config.certificates.contains_key(name));
        pending
    }

    /// Load the config again; keep the running one when the new one does not validate. Either way,
    /// paused certificates are tried at once.
    fn reload_config(&mut self, path: &Path, why: &str) {
        let _ = super::notify::notify(&[sd_notify::NotifyState::Reloading]);
        match config::load(path) {
            Err(e) => error!("{why}: the new config is invalid, keeping the running one: {e}"),
            Ok(new) => {
                if new.http01.listen != self.rt.config.http01.listen {
                    warn!("http01.listen changed; the new addresses take effect after a restart");
                }
                if uses_http01_listener(&new) && !uses_http01_listener(&self.rt.config) {
                    warn!(
                        "an issuer now uses the http01 solver; its listener starts after a restart"
                    );
                }
                if new.admin != self.rt.config.admin {
                    warn!("[admin] changed; the new listener takes effect after a restart");
                }
                let new = Arc::new(new);
                match Runtime::new(new.clone(), self.tokens.clone()) {
                    Ok(mut new_rt) => {
                        // Orders still running on the old runtime stop with the same interrupt.
                        new_rt.interrupt = self.rt.interrupt.clone();
                        self.rt = Arc::new(new_rt);
                        self.watcher = watch_config(&new, self.cfg_tx.clone());
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
        self.timers = Timers::default();
        // Reloads left pending before this run were handed to the reloader at the start.
        let _ = self.schedule_all(true);
        self.recheck = recheck_interval(&self.rt.config);
        self.reloader.send(Job::Recheck {
            rt: self.rt.clone(),
            force: true,
        });
        release_memory();
        let _ = super::notify::notify(&[sd_notify::NotifyState::Ready]);
    }

    /// SIGTERM: let orders in flight finish (or interrupt them, resumable), hand the last reloads to
    /// the reloader, and stop within [`STOP_BUDGET`].
    async fn shutdown(mut self) {
        let _ = super::notify::notify(&[sd_notify::NotifyState::Stopping]);
        let stop_by = Instant::now() + STOP_BUDGET;
        info!(in_flight = self.inflight.len(), "shutting down");
        let grace = Instant::now() + SHUTDOWN_GRACE;
        while !self.inflight.is_empty() {
            match tokio::time::timeout_at(grace, self.inflight.join_next_with_id()).await {
                Ok(Some(joined)) => self.joined(joined),
                Ok(None) => break,
                Err(_) => {
                    warn!(
                        left = self.inflight.len(),
                        "orders still in flight are interrupted, to resume at the next start"
                    );
                    // Interrupt instead of aborting at once, so challenge cleanup (DNS-01 TXT
                    // records) still runs; abort only what does not stop within CLEANUP_GRACE.
                    self.rt.interrupt.cancel();
                    let cleanup = Instant::now() + CLEANUP_GRACE;
                    while let Ok(Some(joined)) =
                        tokio::time::timeout_at(cleanup, self.inflight.join_next_with_id()).await
                    {
                        self.joined(joined);
                    }
                    self.inflight.abort_all();
                    break;
                }
            }
        }
        self.flush_reloads();
        self.reloader.finish(stop_by).await;
    }
}

/// One certificate's task: wait for a permit, then [`work_held`].
///
/// The order flow's future is large (many kilobytes); boxed, it is allocated only once the permit
/// is held, so the thousands of tasks of a big pass that wait for one cost a few bytes each.
async fn work(
    rt: Arc<Runtime>,
    cert: CertificateConfig,
    limit: Arc<Semaphore>,
    paused_now: bool,
) -> Done {
    let _permit = limit.acquire_owned().await;
    Box::pin(work_held(rt, cert, paused_now)).await
}

/// Refresh ARI, look again whether the certificate is due, and attempt it.
async fn work_held(rt: Arc<Runtime>, cert: CertificateConfig, paused_now: bool) -> Done {
    match adopt(&rt, &cert) {
        Ok(Some(issued)) => return (cert.name, Some(Ok(issued))),
        Ok(None) => {}
        Err(e) => {
            error!(cert = %cert.name, error = %e, "cannot install the fleet's current certificate here")
        }
    }
    let now = Timestamp::now();
    let mut snap = rt.ledger.snapshot(&cert.name, &cert.output);
    if snap.live().is_some()
        && ari::refresh(&rt, &cert, &snap, now).await != ari::AriOutcome::Skipped
    {
        snap = rt.ledger.snapshot(&cert.name, &cert.output);
    }
    if !due::due(&rt.config, &cert, &snap, now, paused_now).is_due(now) {
        return (cert.name, None);
    }
    let result = attempt(&rt, &cert, &snap).await;
    if result
        .as_ref()
        .is_err_and(|e| !e.is_interrupted() && !e.is_busy())
    {
        // A success is notified after its reload and deploy check (the reloader's batch).
        alerts::evaluate(&rt, &cert).await;
    }
    (cert.name, Some(result))
}

/// The periodic deploy and notification check; its first tick is one period away (the start
/// and every config reload queue a check of their own).
fn recheck_interval(cfg: &config::Config) -> tokio::time::Interval {
    let every = recheck_every(cfg);
    let mut i = tokio::time::interval_at(Instant::now() + every, every);
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    i
}

/// For the daemon, before the async runtime starts its threads: one malloc arena for every thread.
/// glibc gives each thread that meets contention an arena of its own, and what a pass freed in
/// those stays resident ([`release_memory`] cannot shrink their tops); two workers doing network
/// I/O do not need that parallelism.
pub fn one_malloc_arena() {
    // SAFETY: mallopt only sets a tunable of the allocator.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Give the memory a burst of issuances grew into back to the system before the daemon goes idle for
/// weeks (glibc keeps freed heap pages of every arena mapped otherwise).
pub(super) fn release_memory() {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn daemon(dir: &Path) -> Daemon {
        daemon_with(dir, "")
    }

    /// A daemon on a config with `top` (top-level keys and tables) before its issuer.
    fn daemon_with(dir: &Path, top: &str) -> Daemon {
        let text = format!(
            r#"state_dir = "{d}/state"
{top}
[issuer.le]
directory = "https://127.0.0.1:1/dir"
[[issuer.le.solver]]
http01 = {{ self_check = false }}
[certificate.www]
issuer = "le"
domains = ["example.com"]
output = {{ dir = "{d}/tls" }}
"#,
            d = dir.display()
        );
        std::fs::write(dir.join("c.toml"), text).unwrap();
        let cfg = Arc::new(config::load(&dir.join("c.toml")).unwrap());
        let rt = Arc::new(Runtime::new(cfg, TokenStore::default()).unwrap());
        let (tx, _rx) = mpsc::channel(1);
        Daemon::new(
            rt,
            Arc::new(Metrics::default()),
            TokenStore::default(),
            tx,
            None,
        )
    }

    #[tokio::test]
    async fn a_task_waiting_for_its_permit_is_small() {
        let tmp = tempfile::tempdir().unwrap();
        let d = daemon(tmp.path());
        let cert = d.rt.config.certificates["www"].clone();
        let waiting = work(d.rt.clone(), cert.clone(), d.limit.clone(), false);
        let held = work_held(d.rt.clone(), cert, false);
        let (waiting, held) = (
            std::mem::size_of_val(&waiting),
            std::mem::size_of_val(&held),
        );
        // Every due certificate of a pass has a task at once: 10,000 of them must not each hold
        // the order flow's whole state.
        assert!(
            waiting <= 1024 && held > waiting,
            "waiting {waiting} B, held {held} B"
        );
    }

    #[tokio::test]
    async fn a_panicking_task_is_recorded_and_rescheduled_with_backoff() {
        let tmp = tempfile::tempdir().unwrap();
        let mut d = daemon(tmp.path());
        d.running.insert("www".into());
        let h = d.inflight.spawn(async { panic!("boom in the order flow") });
        d.tasks.insert(h.id(), "www".into());
        let joined = d.inflight.join_next_with_id().await.unwrap();
        let before = Timestamp::now();
        d.joined(joined);
        assert!(d.running.is_empty() && d.tasks.is_empty());
        let state = d.rt.ledger.state("www").unwrap().unwrap();
        assert_eq!(state.retry.failures, 1);
        assert!(!state.retry.paused);
        let err = state.retry.last_error.unwrap();
        assert!(
            err.contains("panicked") && err.contains("boom in the order flow"),
            "{err}"
        );
        // Rescheduled on the backoff schedule (about a minute), not left running or stopped.
        let at = d.timers.get("www").expect("a timer is set");
        let secs = at.duration_since(before).as_secs();
        assert!((50..=70).contains(&secs), "{secs} s");
        assert!(
            d.metrics
                .render()
                .contains("certkeeper_certificate_failures{name=\"www\"} 1")
        );
    }

    fn store_down() -> IssueError {
        IssueError::new(crate::store::StoreError::Unavailable {
            action: "connecting".into(),
            target: "db1:5432/certkeeper".into(),
            reason: "connection refused".into(),
        })
    }

    #[tokio::test]
    async fn a_store_outage_is_retried_on_the_backoff_schedule_counted_in_memory() {
        let tmp = tempfile::tempdir().unwrap();
        let mut d = daemon(tmp.path());
        let backoff = d.rt.config.daemon.backoff;
        for n in 1..=3u32 {
            let before = Timestamp::now();
            d.running.insert("www".into());
            d.finished("www".into(), Some(Err(store_down())));
            // The ledger holds no failure (it could not be written): without the count kept
            // here the certificate would look due at once, and be tried in a tight loop.
            let wait = d.timers.get("www").unwrap().duration_since(before);
            let want = backoff.delay(n);
            assert!(
                wait >= want && wait < want + jiff::SignedDuration::from_secs(5),
                "failure {n}: retried after {wait}, wanted {want}"
            );
        }
        assert_eq!(d.unrecorded.get("www"), Some(&3));
        // Any other outcome of an attempt, its failure recorded as an attempt records it, ends
        // the outage's count.
        let cert = d.rt.config.certificates["www"].clone();
        let boom = IssueError::internal("boom");
        let snap = d.rt.ledger.snapshot("www", &cert.output);
        crate::engine::pass::record_failure(&d.rt, &cert, &snap, &boom);
        d.finished("www".into(), Some(Err(boom)));
        assert!(d.unrecorded.is_empty());
    }

    #[tokio::test]
    async fn a_failure_the_state_directory_cannot_take_is_retried_with_backoff_not_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let mut d = daemon(tmp.path());
        let backoff = d.rt.config.daemon.backoff;
        // The state directory removed under the running daemon (or on a full disk): the attempt
        // failed at its lock, and its failure could not be written either.
        let gone = || {
            IssueError::new(crate::store::StoreError::io(
                "opening lock file",
                tmp.path().join("state/locks/www.lock"),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ))
        };
        for n in 1..=2u32 {
            let before = Timestamp::now();
            d.running.insert("www".into());
            d.finished("www".into(), Some(Err(gone())));
            let wait = d.timers.get("www").unwrap().duration_since(before);
            let want = backoff.delay(n);
            assert!(
                wait >= want && wait < want + jiff::SignedDuration::from_secs(5),
                "failure {n}: retried after {wait}, wanted {want}"
            );
        }
        assert_eq!(d.unrecorded.get("www"), Some(&2));
    }

    #[tokio::test]
    async fn in_a_fleet_a_busy_certificate_is_looked_at_again_every_half_lease() {
        use base64::Engine as _;
        let tmp = tempfile::tempdir().unwrap();
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        std::fs::write(tmp.path().join("storage.key"), key).unwrap();
        // Nothing listens on port 1: the snapshots fail at once, as in an outage.
        let storage = format!(
            "[storage]\nbackend = \"postgres\"\nurl = \"postgresql://ck@127.0.0.1:1/ck\"\n\
             encryption_key_file = \"{}\"\nnode = \"web1\"\nlease = \"4s\"\n",
            tmp.path().join("storage.key").display()
        );
        let mut d = daemon_with(tmp.path(), &storage);
        let busy = IssueError::new(crate::store::StoreError::Locked {
            name: "www".into(),
            path: "'www' held by node web2".into(),
        });
        let before = Timestamp::now();
        d.running.insert("www".into());
        d.finished("www".into(), Some(Err(busy)));
        let wait = d.timers.get("www").unwrap().duration_since(before);
        assert!(
            wait >= jiff::SignedDuration::from_secs(2)
                && wait <= jiff::SignedDuration::from_secs(3),
            "looked at again after {wait}, not after half the 4 s lease"
        );
        assert!(d.unrecorded.is_empty(), "busy is not an outage");
    }

    #[tokio::test]
    async fn a_start_tries_paused_certificates_at_once() {
        use crate::scheduler::{Backoff, Failure};
        use crate::store::Event;
        let tmp = tempfile::tempdir().unwrap();
        let mut d = daemon(tmp.path());
        let cert = d.rt.config.certificates["www"].clone();
        let failure = Failure {
            at: Timestamp::now(),
            message: "urn:ietf:params:acme:error:caa".into(),
            pause: true,
            ca_wait: None,
            lifetime: None,
            backoff: Backoff::default(),
        };
        let fp = crate::engine::due::retry_fingerprint(&d.rt.config, &cert);
        d.rt.ledger
            .record(
                "www",
                Event::Failed {
                    failure,
                    retry_fingerprint: fp,
                },
            )
            .unwrap();
        d.start();
        let at = d.timers.get("www").unwrap();
        assert!(at <= Timestamp::now(), "{at}");
        assert!(d.paused_now.contains("www"));
        assert!(
            d.metrics
                .render()
                .contains("certkeeper_certificate_paused{name=\"www\"} 1")
        );
        // Without a start or reload, the daily retry time stands.
        d.paused_now.clear();
        d.schedule_one(&cert, false, false);
        let hours = d
            .timers
            .get("www")
            .unwrap()
            .duration_since(Timestamp::now())
            .as_hours();
        assert!((20..=26).contains(&hours), "{hours} h");
    }
}
