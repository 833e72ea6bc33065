//! The storage worker: one thread with its own single-threaded tokio runtime that owns the
//! database connection and serves calls, one at a time, from a channel.

use std::sync::Arc;
use std::time::Duration;

use postgres_openssl::MakeTlsConnector;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use super::super::StoreError;
use super::ops::{self, Request, Response, Settings};

pub(super) type Answer = Result<Response, StoreError>;

/// Where the answer to a call goes: a blocked synchronous caller, or a task on the worker's own
/// runtime (lease renewal).
pub(super) enum Reply {
    Sync(std::sync::mpsc::SyncSender<Answer>),
    Async(oneshot::Sender<Answer>),
}

pub(super) struct Call {
    pub req: Request,
    pub reply: Reply,
}

/// How to reach the database.
pub(super) struct Connector {
    pub config: tokio_postgres::Config,
    pub tls: MakeTlsConnector,
    /// The longest one call (connecting and migrating included) may take.
    pub call_timeout: Duration,
    /// Migrate the schema on connecting (everything but `certkeeper check`, which changes nothing).
    pub migrate: bool,
}

/// A handle on the worker: cloning it keeps the worker (and its connection) alive.
#[derive(Clone)]
pub(super) struct Worker {
    pub tx: mpsc::UnboundedSender<Call>,
    pub runtime: tokio::runtime::Handle,
    pub settings: Arc<Settings>,
}

impl Worker {
    /// Start the worker thread. It connects on the first call, not here: a node whose database
    /// is down still starts.
    pub fn spawn(connector: Connector, settings: Arc<Settings>) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (handle_tx, handle_rx) = std::sync::mpsc::sync_channel(1);
        let s = Arc::clone(&settings);
        let unavailable = |reason: String| StoreError::Unavailable {
            action: "starting the storage worker".into(),
            target: settings.target.clone(),
            reason,
        };
        std::thread::Builder::new()
            .name("certkeeper-pg".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(rt.handle().clone()));
                rt.block_on(serve(rx, connector, s));
            })
            .map_err(|e| unavailable(e.to_string()))?;
        let runtime = handle_rx
            .recv()
            .map_err(|e| unavailable(e.to_string()))?
            .map_err(unavailable)?;
        Ok(Self {
            tx,
            runtime,
            settings,
        })
    }

    fn gone(&self, action: &str) -> StoreError {
        StoreError::Unavailable {
            action: action.to_string(),
            target: self.settings.target.clone(),
            reason: "the storage worker thread stopped".into(),
        }
    }

    /// Make a call and block the calling thread until it is answered. Every call is bounded by the
    /// worker's call timeout, so this returns (an error while the database is unreachable).
    pub fn call(&self, action: &str, req: Request) -> Answer {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.tx
            .send(Call {
                req,
                reply: Reply::Sync(tx),
            })
            .map_err(|_| self.gone(action))?;
        rx.recv().map_err(|_| self.gone(action))?
    }

    /// Make a call from a task on the worker's runtime.
    pub async fn call_async(&self, action: &str, req: Request) -> Answer {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Call {
                req,
                reply: Reply::Async(tx),
            })
            .map_err(|_| self.gone(action))?;
        rx.await.map_err(|_| self.gone(action))?
    }
}

/// The longest wait between two background attempts to reach a database that stopped answering.
const PROBE_MAX: Duration = Duration::from_secs(30);

/// Serve calls until every handle is dropped.
///
/// A database that refuses connections fails each call at once. One that does not answer at all
/// (packets dropped: a partition, a firewall) would hold every call for the whole call timeout, and
/// the daemon's loop, which reads the ledger synchronously, with it. So once a call got no answer
/// in time, the database counts as *silent*: calls that need a connection fail at once with the
/// reason, and a background task tries to connect (at once, then backing off up to
/// [`PROBE_MAX`]) until the database answers; its connection then serves the calls again.
async fn serve(mut rx: mpsc::UnboundedReceiver<Call>, connector: Connector, s: Arc<Settings>) {
    let connector = Arc::new(connector);
    let mut conn: Option<Client> = None;
    let mut silent: Option<String> = None;
    let mut probe: Option<JoinHandle<Result<Client, StoreError>>> = None;
    let mut probe_wait = Duration::ZERO;
    loop {
        tokio::select! {
            call = rx.recv() => {
                let Some(call) = call else { break };
                let answer = match &silent {
                    Some(reason) if conn.is_none() => Err(StoreError::Unavailable {
                        action: "waiting for the database".into(),
                        target: s.target.clone(),
                        reason: format!("{reason}; reconnecting in the background"),
                    }),
                    _ => serve_one(&mut conn, &connector, &s, call.req).await,
                };
                if conn.is_none() && silent.is_none() && is_no_answer(&answer) {
                    silent = Some(format!(
                        "no answer within {:?} (since {})",
                        connector.call_timeout,
                        jiff::Timestamp::now().round(jiff::Unit::Second).unwrap_or_default()
                    ));
                    probe_wait = Duration::ZERO;
                    tracing::warn!(database = %s.target, "the database does not answer; failing calls at once until it does");
                }
                if silent.is_some() && probe.is_none() {
                    probe = Some(spawn_probe(&connector, &s, probe_wait));
                }
                reply(call.reply, answer);
            }
            done = async { probe.as_mut().expect("guarded").await }, if probe.is_some() => {
                probe = None;
                match done {
                    Ok(Ok(client)) => {
                        tracing::info!(database = %s.target, "the database answers again");
                        conn = Some(client);
                        silent = None;
                    }
                    _ => {
                        probe_wait = (probe_wait * 2).clamp(Duration::from_secs(1), PROBE_MAX);
                        probe = Some(spawn_probe(&connector, &s, probe_wait));
                    }
                }
            }
        }
    }
}

/// One call with the call timeout; a connection that did not answer is dropped.
async fn serve_one(
    conn: &mut Option<Client>,
    connector: &Connector,
    s: &Settings,
    req: Request,
) -> Answer {
    let answer = tokio::time::timeout(connector.call_timeout, one(conn, connector, s, req))
        .await
        .unwrap_or_else(|_| {
            // The connection may be stuck mid-statement: start afresh.
            *conn = None;
            Err(StoreError::Unavailable {
                action: "waiting for the database".into(),
                target: s.target.clone(),
                reason: format!("no answer within {:?}", connector.call_timeout),
            })
        });
    if answer.is_err() && conn.as_ref().is_some_and(Client::is_closed) {
        *conn = None;
    }
    answer
}

/// The call timed out (as opposed to a refusal or an error the database sent).
fn is_no_answer(answer: &Answer) -> bool {
    matches!(answer, Err(StoreError::Unavailable { reason, .. }) if reason.starts_with("no answer within"))
}

/// Try to connect after `wait`, bounded by the call timeout, in the background.
fn spawn_probe(
    connector: &Arc<Connector>,
    s: &Arc<Settings>,
    wait: Duration,
) -> JoinHandle<Result<Client, StoreError>> {
    let (connector, s) = (Arc::clone(connector), Arc::clone(s));
    tokio::spawn(async move {
        tokio::time::sleep(wait).await;
        tokio::time::timeout(connector.call_timeout, connect(&connector, &s))
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable {
                    action: "connecting".into(),
                    target: s.target.clone(),
                    reason: format!("no answer within {:?}", connector.call_timeout),
                })
            })
    })
}

fn reply(to: Reply, answer: Answer) {
    match to {
        Reply::Sync(tx) => {
            let _ = tx.send(answer);
        }
        Reply::Async(tx) => {
            let _ = tx.send(answer);
        }
    }
}

/// One call: (re)connect when there is no open connection, then run the request.
async fn one(
    conn: &mut Option<Client>,
    connector: &Connector,
    s: &Settings,
    req: Request,
) -> Answer {
    let client = match conn.take().filter(|c| !c.is_closed()) {
        Some(c) => c,
        None => connect(connector, s).await?,
    };
    let client = conn.insert(client);
    ops::run(client, s, req).await
}

/// Connect and bring the schema up to date (idempotent, so done on every new connection: a
/// database restored from an old dump is migrated again).
async fn connect(connector: &Connector, s: &Settings) -> Result<Client, StoreError> {
    let (mut client, connection) = connector
        .config
        .connect(connector.tls.clone())
        .await
        .map_err(|source| StoreError::Database {
            action: "connecting".into(),
            target: s.target.clone(),
            source,
        })?;
    let target = s.target.clone();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(database = %target, error = %e, "database connection lost; reconnecting on the next call");
        }
    });
    if !connector.migrate {
        return Ok(client);
    }
    let before = super::schema::migrate(&mut client, &s.target).await?;
    if before != super::schema::CURRENT {
        tracing::info!(database = %s.target, from = before, to = super::schema::CURRENT, "database schema migrated");
    }
    Ok(client)
}
