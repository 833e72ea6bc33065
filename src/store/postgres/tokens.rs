//! HTTP-01 tokens shared by a fleet: whichever node orders a certificate publishes its challenges
//! here, and every node's listener answers them, wherever the CA's request lands.
//!
//! **Publishing** a token is one statement: the row goes into `ck_tokens` (with an expiry, so a
//! node that dies before its cleanup leaves nothing answered for long) and a `NOTIFY ck_tokens`
//! carrying it is sent when the row commits. Withdrawing deletes the row and notifies the same way.
//!
//! **Answering.** Each process keeps one connection of its own (not the storage worker's: a
//! `LISTEN` needs its connection polled all the time, and a listener's lookup must not wait behind
//! the engine's calls). It `LISTEN`s, caches what is pushed, and on a miss for a well-formed token
//! the listener looks it up over the same connection — one query bounded by [`LOOKUP_TIMEOUT`], so
//! a lost notification costs one query, not a failed validation. While the connection is being
//! opened (the node just started, or lost it a moment ago) a lookup waits for it within that bound.
//! While the database is down the connection is re-opened with backoff (never giving up, never
//! crashing) and the listener keeps answering the tokens it has cached and answers 404 at once for
//! the others. On every new
//! connection the cache is emptied: a withdrawal may have been missed while disconnected, and what
//! is still published is found by the lookup.
//!
//! Key authorizations are not secrets (the CA fetches them in clear), but nothing here logs them.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::super::StoreError;
use super::worker::Connector;
use super::{PgOptions, connector};
use crate::challenge::http01::{Entry, SharedTokens, valid_token};

/// The `LISTEN`/`NOTIFY` channel.
pub const CHANNEL: &str = "ck_tokens";
/// How long a published token is answered at most (an order validates within minutes).
pub const TOKEN_TTL: Duration = Duration::from_secs(3600);
/// The longest a listener's lookup on a miss may take; then it answers 404.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// Lookups running at once; more wait for a turn within [`LOOKUP_TIMEOUT`], so a flood of unknown
/// tokens gets 404s, not a flood of queries (a CA validating many names at once only waits).
const MAX_LOOKUPS: usize = 16;
/// First pause before reconnecting; it doubles up to [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often an idle connection is checked, so a silently dead one (a partition) is replaced.
const PING_EVERY: Duration = Duration::from_secs(30);

/// What a notification carries.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Note {
    Put {
        token: String,
        identifier: String,
        key_authorization: String,
        /// Seconds the token is answered (relative, so the nodes' clocks do not matter).
        ttl_secs: u64,
    },
    Remove {
        token: String,
    },
}

/// A fleet's HTTP-01 tokens in PostgreSQL (see the module docs). Dropping it closes its connection.
pub struct PgTokens {
    shared: Arc<Shared>,
    _stop: DropGuard,
}

impl std::fmt::Debug for PgTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTokens")
            .field("target", &self.shared.target)
            .field("node", &self.shared.node)
            .finish_non_exhaustive()
    }
}

/// The state of a node's token connection.
#[derive(Clone)]
enum Link {
    /// Being opened (at the start, or right after it was lost): a lookup waits for it, briefly.
    Connecting,
    Up(Arc<Client>),
    /// The last attempt failed; retrying with backoff: a lookup answers at once.
    Down,
}

impl Link {
    fn client(&self) -> Option<Arc<Client>> {
        match self {
            Link::Up(c) => Some(c.clone()),
            _ => None,
        }
    }
}

struct Shared {
    target: String,
    node: String,
    /// The connection's state.
    link: watch::Sender<Link>,
    /// Reconnect now rather than at the end of the backoff pause (a publication is waiting).
    wake: Notify,
    /// Tokens pushed by notifications, with the instant they stop being answered.
    cache: RwLock<HashMap<String, (Entry, Instant)>>,
    lookups: Semaphore,
    call_timeout: Duration,
}

impl PgTokens {
    /// Start keeping the connection (connecting in the background: a node whose database is down
    /// still starts). Must be called inside a tokio runtime.
    pub fn start(opts: &PgOptions) -> Result<Arc<Self>, StoreError> {
        let (connector, target) = connector(opts)?;
        let shared = Arc::new(Shared {
            target,
            node: opts.node.clone(),
            link: watch::Sender::new(Link::Connecting),
            wake: Notify::new(),
            cache: RwLock::default(),
            lookups: Semaphore::new(MAX_LOOKUPS),
            call_timeout: opts.call_timeout,
        });
        let stop = CancellationToken::new();
        tokio::spawn(keep_listening(shared.clone(), connector, stop.clone()));
        Ok(Arc::new(Self {
            shared,
            _stop: stop.drop_guard(),
        }))
    }

    /// Whether the connection is open now (tests wait for it).
    pub fn connected(&self) -> bool {
        matches!(*self.shared.link.borrow(), Link::Up(_))
    }
}

#[async_trait::async_trait]
impl SharedTokens for PgTokens {
    async fn publish(&self, token: &str, entry: &Entry) -> Result<(), String> {
        let s = &self.shared;
        let client = s.connection().await?;
        let ttl = i64::try_from(TOKEN_TTL.as_secs()).unwrap_or(i64::MAX);
        let note = serde_json::to_string(&Note::Put {
            token: token.to_string(),
            identifier: entry.identifier.clone(),
            key_authorization: entry.key_authorization.clone(),
            ttl_secs: TOKEN_TTL.as_secs(),
        })
        .map_err(|e| e.to_string())?;
        let put = async {
            client
                .execute("DELETE FROM ck_tokens WHERE expires <= now()", &[])
                .await?;
            client
                .execute(
                    "WITH up AS (
                 INSERT INTO ck_tokens (token, identifier, key_authorization, published_by, expires)
                 VALUES ($1, $2, $3, $4, now() + $5::bigint * interval '1 second')
                 ON CONFLICT (token) DO UPDATE SET identifier = EXCLUDED.identifier,
                     key_authorization = EXCLUDED.key_authorization,
                     published_by = EXCLUDED.published_by, expires = EXCLUDED.expires
                 RETURNING token)
             SELECT pg_notify('ck_tokens', $6) FROM up",
                    &[
                        &token,
                        &entry.identifier,
                        &entry.key_authorization,
                        &s.node,
                        &ttl,
                        &note,
                    ],
                )
                .await
        };
        s.bounded("publishing an HTTP-01 token", put).await
    }

    async fn withdraw(&self, token: &str) -> Result<(), String> {
        let s = &self.shared;
        let client = s.connection().await?;
        let note = serde_json::to_string(&Note::Remove {
            token: token.to_string(),
        })
        .map_err(|e| e.to_string())?;
        let gone = async {
            client
                .execute(
                    "WITH gone AS (DELETE FROM ck_tokens WHERE token = $1)
                     SELECT pg_notify('ck_tokens', $2)",
                    &[&token, &note],
                )
                .await
        };
        s.bounded("withdrawing an HTTP-01 token", gone).await
    }

    fn cached(&self, token: &str) -> Option<Entry> {
        let cache = self.shared.cache.read().unwrap_or_else(|p| p.into_inner());
        cache
            .get(token)
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(e, _)| e.clone())
    }

    async fn lookup(&self, token: &str) -> Option<Entry> {
        let s = &self.shared;
        // Down: 404 at once (the connection is re-opened in the background). Being opened (this
        // node just started, or lost it a moment ago): wait for it within the lookup's time.
        let mut link = s.link.subscribe();
        let query = async {
            let client = link
                .wait_for(|l| !matches!(l, Link::Connecting))
                .await
                .ok()
                .and_then(|l| l.client());
            let Some(client) = client else {
                return Ok(None);
            };
            let _turn = s.lookups.acquire().await;
            client
                .query_opt(
                    "SELECT identifier, key_authorization FROM ck_tokens
                     WHERE token = $1 AND expires > now()",
                    &[&token],
                )
                .await
        };
        match tokio::time::timeout(LOOKUP_TIMEOUT, query).await {
            Ok(Ok(row)) => row.map(|r| Entry {
                identifier: r.get(0),
                key_authorization: r.get(1),
            }),
            Ok(Err(e)) => {
                tracing::debug!(database = %s.target, error = %super::error_text(&e), "HTTP-01 token lookup failed; answered 404");
                None
            }
            Err(_) => {
                tracing::debug!(database = %s.target, "HTTP-01 token lookup got no answer in time; answered 404");
                None
            }
        }
    }
}

impl Shared {
    /// The open connection, waiting (at most the call timeout) for one to be opened.
    async fn connection(&self) -> Result<Arc<Client>, String> {
        if let Some(c) = self.link.borrow().client() {
            return Ok(c);
        }
        self.wake.notify_one();
        let mut rx = self.link.subscribe();
        let up = rx.wait_for(|l| matches!(l, Link::Up(_)));
        match tokio::time::timeout(self.call_timeout, up).await {
            Ok(Ok(l)) => l.client().ok_or_else(|| self.down()),
            _ => Err(self.down()),
        }
    }

    fn down(&self) -> String {
        format!(
            "the database {} is unreachable, so the other nodes cannot answer HTTP-01 challenges; retrying",
            self.target
        )
    }

    async fn bounded<T>(
        &self,
        action: &str,
        f: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<(), String> {
        match tokio::time::timeout(self.call_timeout, f).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!(
                "{action} in {}: {}",
                self.target,
                super::error_text(&e)
            )),
            Err(_) => Err(format!(
                "{action} in {}: no answer within {:?}",
                self.target, self.call_timeout
            )),
        }
    }

    /// Apply one notification to the cache.
    fn apply(&self, payload: &str) {
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        match serde_json::from_str::<Note>(payload) {
            Ok(Note::Put {
                token,
                identifier,
                key_authorization,
                ttl_secs,
            }) if valid_token(&token) => {
                let now = Instant::now();
                cache.retain(|_, (_, until)| now < *until);
                let until = now + Duration::from_secs(ttl_secs.min(TOKEN_TTL.as_secs()));
                let entry = Entry {
                    key_authorization,
                    identifier,
                };
                cache.insert(token, (entry, until));
            }
            Ok(Note::Remove { token }) => {
                cache.remove(&token);
            }
            _ => tracing::debug!("ignored a malformed HTTP-01 token notification"),
        }
    }

    fn forget_pushed(&self) {
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

/// Keep one listening connection open until `stop`, reconnecting with backoff.
async fn keep_listening(shared: Arc<Shared>, connector: Connector, stop: CancellationToken) {
    let mut pause = BACKOFF_FIRST;
    let mut failures = 0u32;
    loop {
        let opened = tokio::select! {
            _ = stop.cancelled() => return,
            r = tokio::time::timeout(connector.call_timeout, open(&shared, &connector)) => r,
        };
        match opened {
            Ok(Ok((client, pump))) => {
                if failures > 0 {
                    tracing::info!(database = %shared.target, "connected again for HTTP-01 tokens");
                }
                pause = BACKOFF_FIRST;
                failures = 0;
                shared.link.send_replace(Link::Up(client.clone()));
                hold(&client, pump, &stop).await;
                shared.link.send_replace(Link::Connecting);
                if stop.is_cancelled() {
                    return;
                }
                tracing::warn!(database = %shared.target, "lost the connection for HTTP-01 tokens; answering the tokens already known and reconnecting");
            }
            Ok(Err(e)) => failures = logged(&shared, failures, &e.to_string()),
            Err(_) => {
                let why = format!("no answer within {:?}", connector.call_timeout);
                failures = logged(&shared, failures, &why);
            }
        }
        if failures > 0 {
            shared.link.send_replace(Link::Down);
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
            _ = shared.wake.notified() => {}
        }
        pause = (pause * 2).min(BACKOFF_MAX);
    }
}

/// Log a failed connection attempt (the first as a warning, the retries quietly); the new count.
fn logged(shared: &Shared, failures: u32, why: &str) -> u32 {
    if failures == 0 {
        tracing::warn!(database = %shared.target, error = %why, "cannot connect for HTTP-01 tokens; retrying with backoff");
    } else {
        tracing::debug!(database = %shared.target, error = %why, attempt = failures + 1, "cannot connect for HTTP-01 tokens");
    }
    failures + 1
}

/// Connect, migrate the schema (so `ck_tokens` exists), empty the cache and `LISTEN`; the client
/// and the task that polls the connection and applies its notifications.
async fn open(
    shared: &Arc<Shared>,
    connector: &Connector,
) -> Result<(Arc<Client>, JoinHandle<()>), StoreError> {
    let db = |action: &str| {
        let (action, target) = (action.to_string(), shared.target.clone());
        move |source| StoreError::Database {
            action,
            target,
            source,
        }
    };
    let (mut client, mut connection) = connector
        .config
        .connect(connector.tls.clone())
        .await
        .map_err(db("connecting for HTTP-01 tokens"))?;
    let sh = shared.clone();
    let pump = tokio::spawn(async move {
        while let Some(msg) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match msg {
                Ok(AsyncMessage::Notification(n)) => sh.apply(n.payload()),
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(database = %sh.target, error = %e, "HTTP-01 token connection ended");
                    break;
                }
            }
        }
    });
    let ready = async {
        if connector.migrate {
            super::schema::migrate(&mut client, &shared.target).await?;
        }
        shared.forget_pushed();
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .map_err(db("listening for HTTP-01 tokens"))
    };
    if let Err(e) = ready.await {
        pump.abort();
        return Err(e);
    }
    Ok((Arc::new(client), pump))
}

/// Hold the connection until it ends, stops answering, or `stop`.
async fn hold(client: &Client, mut pump: JoinHandle<()>, stop: &CancellationToken) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = &mut pump => return,
            _ = tick.tick() => {
                let ping = tokio::time::timeout(LOOKUP_TIMEOUT, client.simple_query("SELECT 1")).await;
                if !matches!(ping, Ok(Ok(_))) {
                    break;
                }
            }
        }
    }
    pump.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        Shared {
            target: "db:5432/ck".into(),
            node: "web1".into(),
            link: watch::Sender::new(Link::Connecting),
            wake: Notify::new(),
            cache: RwLock::default(),
            lookups: Semaphore::new(1),
            call_timeout: Duration::from_millis(50),
        }
    }

    #[test]
    fn notifications_fill_and_empty_the_cache() {
        let s = shared();
        let put = serde_json::to_string(&Note::Put {
            token: "tok_1".into(),
            identifier: "www.example.com".into(),
            key_authorization: "tok_1.thumb".into(),
            ttl_secs: 60,
        })
        .unwrap();
        s.apply(&put);
        assert_eq!(
            s.cache.read().unwrap()["tok_1"].0.identifier,
            "www.example.com"
        );
        // A token outside base64url, an unknown op and garbage are ignored.
        s.apply(&put.replace("tok_1\"", "../x\""));
        s.apply(r#"{"op":"drop","token":"tok_1"}"#);
        s.apply("not json");
        assert_eq!(s.cache.read().unwrap().len(), 1);
        s.apply(r#"{"op":"remove","token":"tok_1"}"#);
        assert!(s.cache.read().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_publication_while_down_fails_within_the_call_timeout() {
        let s = shared();
        let started = Instant::now();
        let err = s.connection().await.unwrap_err();
        assert!(err.contains("db:5432/ck is unreachable"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
