//! HTTP-01 tokens shared through PostgreSQL (Debian's, started by `tests/support/postgres.rs`):
//! three nodes' real listeners ([`Http01Server`]) over their own [`PgTokens`] connections. A token
//! one node publishes is answered by the others when it was pushed to them (NOTIFY) and when it was
//! not (a node that started listening later looks it up on the miss); a withdrawn token is 404
//! everywhere; with the database stopped, a node still answers the tokens it has and 404s the
//! others at once, and picks up new ones after the restart.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use certkeeper::challenge::http01::{CHALLENGE_PREFIX, Entry, Http01Server, TokenStore};
use certkeeper::store::postgres::crypto::{DataKey, Keyring};
use certkeeper::store::postgres::{PgOptions, PgTokens};
use support::postgres::{PASSWORD, Postgres};
use tokio_util::sync::CancellationToken;

const NAME: &str = "www.fleet.test";

/// One node: its token connection, its store, and its listener on a free loopback port.
struct Node {
    fleet: Arc<PgTokens>,
    tokens: TokenStore,
    addr: SocketAddr,
}

fn node(pg: &Postgres, name: &str, key: &DataKey, stop: &CancellationToken) -> Node {
    let mut opts = PgOptions::new(pg.url("certkeeper"), name, Keyring::new(key.clone()));
    opts.password = Some(PASSWORD.to_string());
    opts.call_timeout = Duration::from_secs(3);
    let fleet = PgTokens::start(&opts).expect("start PgTokens");
    let tokens = TokenStore::new().with_fleet(Some(fleet.clone()));
    let server = Http01Server::bind(&["127.0.0.1:0".parse().unwrap()], tokens.clone()).unwrap();
    let addr = server.local_addrs()[0];
    server.serve(stop.clone()).unwrap();
    Node {
        fleet,
        tokens,
        addr,
    }
}

fn entry(token: &str) -> Entry {
    Entry {
        key_authorization: format!("{token}.thumbprint"),
        identifier: NAME.to_string(),
    }
}

/// Poll `cond` every 20 ms for at most `limit`.
async fn eventually(what: &str, limit: Duration, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// GET the token from `addr` as the CA would (Host: the identifier): status and body.
async fn fetch(addr: SocketAddr, token: &str, host: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .get(format!("http://{addr}{CHALLENGE_PREFIX}{token}"))
        .header("host", host)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_answers_the_tokens_any_node_publishes() {
    let started = Instant::now();
    let pg = Postgres::start();
    let key = DataKey::generate().unwrap();
    let stop = CancellationToken::new();
    let a = node(&pg, "web1", &key, &stop);
    let b = node(&pg, "web2", &key, &stop);
    eventually("both nodes connected", Duration::from_secs(15), || {
        a.fleet.connected() && b.fleet.connected()
    })
    .await;

    // (a) Pushed: B has the token in its cache before any request, and answers it.
    a.tokens.publish("tokPush", entry("tokPush")).await.unwrap();
    eventually("the NOTIFY reached B", Duration::from_secs(5), || {
        b.tokens.get("tokPush").is_some()
    })
    .await;
    assert_eq!(
        fetch(b.addr, "tokPush", NAME).await,
        (200, "tokPush.thumbprint".to_string())
    );
    assert_eq!(fetch(a.addr, "tokPush", NAME).await.0, 200);
    // The listener's defences hold for shared tokens: the Host must be the identifier, and a
    // token outside base64url is 404 before any lookup.
    assert_eq!(fetch(b.addr, "tokPush", "evil.test").await.0, 404);
    assert_eq!(fetch(b.addr, "tok.Push", NAME).await.0, 404);

    // (b) Not pushed: C was not listening when the token was published; its miss is looked up.
    a.tokens.publish("tokLate", entry("tokLate")).await.unwrap();
    let c = node(&pg, "web3", &key, &stop);
    assert!(c.tokens.get("tokLate").is_none(), "C was sent tokLate");
    // Asked at once, while C's connection is still being opened (a node that just started): the
    // lookup waits for it.
    assert_eq!(
        fetch(c.addr, "tokLate", NAME).await,
        (200, "tokLate.thumbprint".to_string())
    );
    assert!(c.fleet.connected());
    assert_eq!(fetch(c.addr, "tokLate", "evil.test").await.0, 404);
    assert_eq!(fetch(c.addr, "tokUnknown", NAME).await.0, 404);
    // The row is in the table, the key authorization only there and in the notification.
    let rows = pg.psql_in(
        "certkeeper",
        "SELECT token, identifier, published_by FROM ck_tokens ORDER BY token",
    );
    assert!(rows.contains("tokLate|www.fleet.test|web1"), "{rows}");

    // Withdrawn: 404 on every node, pushed or looked up.
    a.tokens.withdraw("tokPush").await;
    a.tokens.withdraw("tokLate").await;
    eventually("the removal reached B", Duration::from_secs(5), || {
        b.tokens.get("tokPush").is_none()
    })
    .await;
    for n in [&a, &b, &c] {
        for t in ["tokPush", "tokLate"] {
            assert_eq!(fetch(n.addr, t, NAME).await.0, 404, "{t} on {}", n.addr);
        }
    }
    let rows = pg.psql_in("certkeeper", "SELECT count(*) FROM ck_tokens");
    assert_eq!(rows.trim(), "0");

    // Database down: B keeps answering what it was pushed and 404s the rest at once.
    a.tokens
        .publish("tokCached", entry("tokCached"))
        .await
        .unwrap();
    eventually("tokCached reached B", Duration::from_secs(5), || {
        b.tokens.get("tokCached").is_some()
    })
    .await;
    pg.stop();
    eventually("B noticed the outage", Duration::from_secs(10), || {
        !b.fleet.connected()
    })
    .await;
    assert_eq!(fetch(b.addr, "tokCached", NAME).await.0, 200);
    // A miss right after the loss waits for the reconnection attempt, within the lookup's bound;
    // once that failed, misses are answered at once.
    let asked = Instant::now();
    assert_eq!(fetch(b.addr, "tokNever", NAME).await.0, 404);
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let asked = Instant::now();
    assert_eq!(fetch(b.addr, "tokNever", NAME).await.0, 404);
    assert!(
        asked.elapsed() < Duration::from_millis(500),
        "a miss while the database is down took {:?}",
        asked.elapsed()
    );
    assert_eq!(fetch(b.addr, "tokCached", NAME).await.0, 200);
    // Publishing fails (the order is retried), within the call timeout, and says why.
    let asked = Instant::now();
    let err = a
        .tokens
        .publish("tokDown", entry("tokDown"))
        .await
        .unwrap_err();
    assert!(err.contains("unreachable"), "{err}");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    assert!(
        a.tokens.get("tokDown").is_none(),
        "served after a failed publication"
    );

    // Back: the nodes reconnect on their own and new tokens reach them again.
    pg.start_again();
    eventually("B reconnected", Duration::from_secs(40), || {
        b.fleet.connected()
    })
    .await;
    a.tokens.publish("tokBack", entry("tokBack")).await.unwrap();
    for n in [&b, &c] {
        assert_eq!(fetch(n.addr, "tokBack", NAME).await.0, 200);
    }
    stop.cancel();
    eprintln!("fleet tokens test: {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(60));
}
