//! A held PostgreSQL lease: renewed in the background while it lives, released when dropped.

use std::time::Duration;

use tokio::sync::oneshot;

use super::ops::{Request, Response};
use super::worker::Worker;

/// The guard inside a [`crate::store::Lease`] from [`super::PgStorage`].
pub(super) struct PgLease {
    worker: Worker,
    name: String,
    token: u64,
    /// Dropping it stops the renewal task.
    stop_renewal: Option<oneshot::Sender<()>>,
}

/// How long dropping a lease waits for the release to be confirmed; when the database does not
/// answer, the lease expires on its own.
const RELEASE_WAIT: Duration = Duration::from_secs(3);

impl PgLease {
    /// Guard the lease `name`/`token`; renew it every third of its lifetime when `renew`.
    pub fn new(worker: Worker, name: &str, token: u64, renew: bool) -> Self {
        let stop = renew.then(|| start_renewal(worker.clone(), name.to_string(), token));
        Self {
            worker,
            name: name.to_string(),
            token,
            stop_renewal: stop,
        }
    }
}

impl Drop for PgLease {
    fn drop(&mut self) {
        self.stop_renewal.take();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let call = super::worker::Call {
            req: Request::Release {
                name: self.name.clone(),
                token: self.token,
            },
            reply: super::worker::Reply::Sync(tx),
        };
        if self.worker.tx.send(call).is_err() {
            return;
        }
        match rx.recv_timeout(RELEASE_WAIT) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(lock = %self.name, error = %e, "releasing a lease failed; it expires on its own");
            }
            Err(_) => {
                tracing::warn!(lock = %self.name, "releasing a lease got no answer; it expires on its own");
            }
        }
    }
}

/// Renew `name`/`token` every third of the lease's lifetime until the returned sender is dropped
/// or the lease is found lost.
fn start_renewal(worker: Worker, name: String, token: u64) -> oneshot::Sender<()> {
    let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
    let every = worker.settings.lease_ttl / 3;
    let runtime = worker.runtime.clone();
    runtime.spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                _ = &mut stop_rx => break,
                _ = tick.tick() => {}
            }
            let req = Request::Renew {
                name: name.clone(),
                token,
            };
            match worker.call_async("renewing a lease", req).await {
                Ok(Response::Held(true)) => {}
                Ok(_) => {
                    tracing::warn!(lock = %name, token, "lease lost (expired or taken over); writes under it are refused");
                    break;
                }
                // The database is unreachable: try again at the next tick, while the lease may
                // still be valid.
                Err(e) => tracing::warn!(lock = %name, error = %e, "renewing a lease failed; retrying"),
            }
        }
    });
    stop_tx
}
