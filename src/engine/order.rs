//! The order flow for one certificate: account → order → authorizations → challenges → finalize →
//! download → verify → install.
//!
//! Every step that talks to the CA is resumable: the order URL and the new private key are in the
//! ledger before the CA is asked to validate anything, so a process killed at any point continues
//! the same order on its next start instead of leaving it (and its rate-limit cost) behind.

use std::time::Duration;
use tracing::Instrument as _;

use futures_util::future::join_all;
use openssl::pkey::{PKey, Private};
use tracing::{debug, info, warn};

use crate::acme::{self, AcmeError, AuthorizationStatus, Identifier, NewOrder, OrderStatus, Poll};
use crate::caa;
use crate::challenge::dns01::zone::Lookup;
use crate::challenge::{ChallengeCtx, ChallengeKind, IdentifierKind, PersistCtx, Solver};
use crate::config::{CertificateConfig, IssuerConfig};
use crate::store::{
    self, AuthzTrace, ErrorTrace, Event, InstalledPaths, Issuance, OrderTrace, Snapshot,
    StoreError, VerifiedCert,
};

use super::due::fingerprint;
use super::error::{Cause, Decision, IssueError, combine, decide};
use super::runtime::Runtime;

/// What a successful issuance produced.
#[derive(Debug)]
pub struct Issued {
    /// The issuer (config name) that issued the certificate.
    pub issuer: String,
    /// The new certificate, as verified before it was installed.
    pub cert: VerifiedCert,
    /// Where the files are.
    pub paths: InstalledPaths,
    /// The ARI CertID of the new certificate (RFC 9773), for renewal information and `replaces`.
    pub ari_cert_id: Option<String>,
    /// False when another node of the fleet ordered it and this node installed it from the shared
    /// store ([`adopt`]).
    pub ordered_here: bool,
}

/// How long one order may take from newOrder to a downloaded certificate before it is given up for
/// this attempt (it stays resumable).
const ORDER_TIMEOUT: Duration = Duration::from_secs(300);

/// Issue (or renew) one certificate, trying its issuers in order; `snap` is the ledger's snapshot
/// the decision to issue was made on.
///
/// Falls back to the next issuer when the failure policy says so ([`decide`]: the CA is unreachable
/// or failing, refuses for a reason only a human fixes, or asks to wait past the point where the
/// certificate must be renewed). The error returned is the first issuer's (the CA the administrator
/// prefers), followed by the others', with the verdict over all of them.
pub async fn issue(
    rt: &Runtime,
    cert: &CertificateConfig,
    snap: &Snapshot,
) -> Result<Issued, IssueError> {
    if rt.interrupt.is_cancelled() {
        return Err(IssueError::interrupted());
    }
    let held = rt.ledger.lock(&cert.name)?;
    // Decided on `snap`, read before the lease was taken: another process or node may have
    // renewed it since. Then there is nothing to order; in a fleet its pair is installed here.
    let fresh = rt.ledger.snapshot(&cert.name, &cert.output);
    if fresh.renewed_since(snap) {
        drop(held);
        return match adopt(rt, cert)? {
            Some(issued) => Ok(issued),
            None => Err(IssueError::new(StoreError::RenewedElsewhere {
                name: cert.name.clone(),
                serial: fresh.current_serial().unwrap_or_default().to_string(),
            })),
        };
    }
    let lifetime = snap.lifetime();
    // ARI's `replaces` names the live certificate, sent only to the CA that issued it (state from
    // before that was recorded: the first issuer).
    let replaces = snap.live().and_then(|_| snap.state.ari_cert_id.clone());
    let issued_by = snap.state.ari_cert_issuer.as_deref();
    let mut failed: Vec<(IssueError, Decision)> = Vec::new();
    for (i, issuer_name) in cert.issuers.iter().enumerate() {
        let Some(issuer) = rt.config.issuers.get(issuer_name) else {
            return Err(IssueError::config(format!(
                "unknown issuer {issuer_name:?}"
            )));
        };
        let to_this = issued_by.map_or(i == 0, |by| by == issuer_name);
        let replaces = replaces.clone().filter(|_| to_this);
        let trace = Trace::new(issuer_name);
        let result = issue_with(rt, &held, cert, issuer, replaces, &trace).await;
        let e = match result {
            // The trace went into the install's own state write.
            Ok(issued) => return Ok(issued),
            Err(e) => e.context(format!("issuer {issuer_name}")),
        };
        if e.is_interrupted() {
            return Err(e);
        }
        let d = decide(
            e.cause(),
            jiff::Timestamp::now(),
            lifetime,
            &rt.config.daemon.backoff,
        );
        trace.finish(rt, &cert.name, (&e, &d));
        let more = i + 1 < cert.issuers.len();
        if more && d.fall_back {
            warn!(cert = %cert.name, issuer = %issuer_name, error = %e, "issuer failed; trying the next one");
        }
        failed.push((e, d));
        if !(more && d.fall_back) {
            break;
        }
    }
    let decisions: Vec<Decision> = failed.iter().map(|(_, d)| *d).collect();
    let mut errors = failed.into_iter().map(|(e, _)| e);
    let Some(first) = errors.next() else {
        return Err(IssueError::config("the certificate names no issuer"));
    };
    Err(first.with_fallbacks(errors.collect(), combine(&decisions)))
}

/// What the CA said during one order attempt, recorded for `certkeeper explain`.
struct Trace(std::sync::Mutex<OrderTrace>);

impl Trace {
    fn new(issuer: &str) -> Self {
        Self(std::sync::Mutex::new(OrderTrace {
            at: Some(jiff::Timestamp::now()),
            issuer: Some(issuer.to_string()),
            ..OrderTrace::default()
        }))
    }

    fn with(&self, f: impl FnOnce(&mut OrderTrace)) {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn order(&self, order: &acme::Order) {
        self.with(|t| {
            t.url = Some(order.url.clone());
            t.status = Some(store::status_word(&order.body.status));
            t.problem = order.body.error.as_ref().map(|p| {
                // An order made invalid by a failed validation carries the challenge's problem; with
                // one name, advise as for that challenge.
                let mut p = p.clone();
                if let [only] = order.body.identifiers.as_slice() {
                    p.origin = acme::ProblemOrigin::Challenge(only.value.clone());
                }
                store::ProblemTrace::from(&p)
            });
        });
    }

    fn authz(&self, url: &str, authz: &acme::Authorization) {
        let rec = AuthzTrace::from_authorization(url, authz);
        self.with(
            |t| match t.authorizations.iter_mut().find(|a| a.url == url) {
                Some(a) => *a = rec,
                None => t.authorizations.push(rec),
            },
        );
    }

    /// The trace as the ledger's event, with the attempt's error if it failed.
    fn event(&self, err: Option<(&IssueError, &Decision)>) -> Event {
        let mut trace = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        trace.error = err.map(|(e, d)| ErrorTrace {
            message: e.to_string(),
            retryable: !d.pause,
            problem: e.problem().map(store::ProblemTrace::from),
        });
        Event::Attempt(Box::new(trace))
    }

    /// Record a failed attempt's trace in the ledger (best effort: a failure is logged, not
    /// fatal). A successful one is recorded by the install.
    fn finish(&self, rt: &Runtime, name: &str, err: (&IssueError, &Decision)) {
        if let Err(e) = rt.ledger.record(name, self.event(Some(err))) {
            warn!(cert = %name, error = %e, "cannot record the order attempt for `certkeeper explain`");
        }
    }
}

/// Install the fleet's current pair of `cert` here when it is newer than what is installed (see
/// [`crate::store::Ledger::adopt`]); `None` when there is nothing to install, or not a fleet.
pub fn adopt(rt: &Runtime, cert: &CertificateConfig) -> Result<Option<Issued>, IssueError> {
    let Some((verified, paths)) = rt.ledger.adopt(&cert.name, &cert.output, &cert.domains)? else {
        return Ok(None);
    };
    let state = rt.ledger.state(&cert.name)?.unwrap_or_default();
    info!(cert = %cert.name, serial = %verified.serial_hex, not_after = %verified.not_after, "installed the fleet's current certificate");
    Ok(Some(Issued {
        issuer: state.issuer.unwrap_or_default(),
        cert: verified,
        paths,
        ari_cert_id: state.ari_cert_id,
        ordered_here: false,
    }))
}

async fn issue_with(
    rt: &Runtime,
    held: &Issuance<'_>,
    cert: &CertificateConfig,
    issuer: &IssuerConfig,
    replaces: Option<String>,
    trace: &Trace,
) -> Result<Issued, IssueError> {
    let account = rt.account(issuer).await?;
    let state = rt.ledger.state(&cert.name)?.unwrap_or_default();
    let identifiers: Vec<Identifier> = cert.domains.iter().map(|d| Identifier::parse(d)).collect();

    // Resume an order left by a previous run (crash, kill -9, shutdown) when it is still usable.
    let mut resumed = None;
    if let Some(url) = state
        .order_url
        .clone()
        .filter(|_| state.issuer.as_deref() == Some(issuer.name.as_str()))
    {
        let key = rt
            .ledger
            .pending_key(&cert.name)?
            .and_then(|pem| PKey::private_key_from_pem(&pem).ok());
        // A valid order whose key is the installed one was installed before the process died (the
        // switch happened, the bookkeeping after it did not): it is done, not something to resume.
        // (With key_reuse every order has the live key: a valid one is then installed once more,
        // which costs a download, not an order.)
        let installed_already = !cert.key_reuse
            && key.as_ref().is_some_and(|k| {
                let live = rt.ledger.snapshot(&cert.name, &cert.output);
                live.live()
                    .and_then(|l| l.key_pem().ok())
                    .and_then(|pem| PKey::private_key_from_pem(pem).ok())
                    .is_some_and(|lk| lk.public_eq(k))
            });
        if installed_already {
            info!(cert = %cert.name, order = %url, "the previous order's certificate is already installed; starting a new order");
        }
        if let Some(key) = key.filter(|_| !installed_already) {
            match account.order(&url).await {
                Ok(order)
                    if order_matches(&order.body.identifiers, &identifiers)
                        && usable(order.body.status) =>
                {
                    info!(cert = %cert.name, order = %url, status = ?order.body.status, "resuming order");
                    resumed = Some((order, key));
                }
                Ok(order) => {
                    debug!(cert = %cert.name, order = %url, status = ?order.body.status, "previous order not usable")
                }
                Err(e) => {
                    debug!(cert = %cert.name, order = %url, error = %e, "previous order not found")
                }
            }
        }
    }

    let (mut order, key) = match resumed {
        Some(r) => r,
        None => {
            caa_preflight(rt, &account, cert, issuer).await?;
            preflight(rt, &account, cert, issuer).await?;
            let created = new_order(
                rt,
                held,
                &account,
                cert,
                issuer,
                identifiers.clone(),
                replaces,
            )
            .await?;
            hold_point(rt, "order-created").await;
            created
        }
    };

    trace.order(&order);
    let poll = Poll {
        timeout: ORDER_TIMEOUT,
        ..Poll::default()
    };

    if order.body.status == OrderStatus::Pending {
        let solved = solve_authorizations(
            rt,
            &account,
            cert,
            issuer,
            &order.body.authorizations,
            trace,
        )
        .await;
        if let Err(e) = solved {
            // The order's status after a failed authorization (usually `invalid`), for explain.
            if let Ok(Ok(o)) =
                tokio::time::timeout(Duration::from_secs(15), account.order(&order.url)).await
            {
                trace.order(&o);
            }
            return Err(e);
        }
        order = account.poll_order(&order.url, &poll).await?;
        trace.order(&order);
    }
    if order.body.status == OrderStatus::Ready {
        let csr = acme::build_csr(&key, &identifiers)
            .map_err(|e| IssueError::internal(format!("building the CSR: {e}")))?;
        order = account.finalize(&order, &csr).await?;
        trace.order(&order);
    }
    if order.body.status == OrderStatus::Processing || order.body.status == OrderStatus::Ready {
        order = account.poll_order(&order.url, &poll).await?;
        trace.order(&order);
    }
    hold_point(rt, "order-valid").await;
    let cert_url = finished_order(&order)?;
    let chain = account
        .certificate_with_preference(&cert_url, cert.preferred_chain.as_deref())
        .instrument(tracing::info_span!("download", cert = %cert.name))
        .await?;
    let done = Done {
        url: &cert_url,
        trace,
        account: &account,
    };
    install(held, cert, issuer, (&key, &chain), done)
}

/// What an order that reached `valid` leaves for its install: the certificate URL, the trace and
/// the account (whose CA may not offer ARI, recorded in the same write).
struct Done<'a> {
    url: &'a str,
    trace: &'a Trace,
    account: &'a acme::Account,
}

/// Before a new order: let the solver of each name check what the CA will look at for it (a
/// dns-persist-01 standing record), so a missing one is reported with what to publish instead of
/// failing an order at the CA.
async fn preflight(
    rt: &Runtime,
    account: &acme::Account,
    cert: &CertificateConfig,
    issuer: &IssuerConfig,
) -> Result<(), IssueError> {
    for d in &cert.domains {
        let (kind, name) = IdentifierKind::split(d);
        let (solver, _) = rt.solver_for(issuer, name, kind)?;
        solver
            .preflight(name, kind, account.url())
            .await
            .map_err(|e| IssueError::new(e).context(format!("before ordering {d}")))?;
    }
    Ok(())
}

/// Look up the CAA records of the certificate's names before a new order, and refuse when they do
/// not let this CA issue ([`crate::caa`]). Names the resolvers cannot answer for are logged and not
/// held against the order; a CA without CAA identities is not checked.
async fn caa_preflight(
    rt: &Runtime,
    account: &acme::Account,
    cert: &CertificateConfig,
    issuer: &IssuerConfig,
) -> Result<(), IssueError> {
    let identities = caa::identities(issuer, &account.client().directory().meta.caa_identities);
    if identities.is_empty() {
        debug!(cert = %cert.name, issuer = %issuer.name, "the CA publishes no caaIdentities; CAA preflight skipped");
        return Ok(());
    }
    let lookup = Lookup::resolvers(&rt.config.dns01.resolvers);
    let names = caa::names_to_check(cert, issuer);
    let findings = caa::check(&lookup, &identities, Some(account.url()), &names).await;
    for f in &findings {
        match f {
            caa::Finding::Unchecked { name, error } => {
                warn!(cert = %cert.name, name = %name, error = %error, "CAA lookup failed; ordering anyway (the CA checks CAA itself)")
            }
            caa::Finding::Allowed { name, why } => {
                debug!(cert = %cert.name, name = %name, "CAA: {why}")
            }
            caa::Finding::Refused { .. } => {}
        }
    }
    match caa::refusal_message(&findings) {
        Some(msg) => Err(IssueError::new(Cause::Caa(msg))),
        None => Ok(()),
    }
}

/// Create a new order, its key stored in the ledger before the CA knows the order.
async fn new_order(
    rt: &Runtime,
    held: &Issuance<'_>,
    account: &acme::Account,
    cert: &CertificateConfig,
    issuer: &IssuerConfig,
    identifiers: Vec<Identifier>,
    replaces: Option<String>,
) -> Result<(acme::Order, PKey<Private>), IssueError> {
    let key = new_cert_key(rt, cert)?;
    let key_pem = key
        .private_key_to_pem_pkcs8()
        .map_err(|e| IssueError::internal(format!("encoding the new key: {e}")))?;
    // The order this key replaces is forgotten first: an order URL must never be paired with a key
    // that is not its own (a newOrder failing after the key was saved would otherwise leave every
    // later attempt resuming the old order and rejecting its certificate).
    held.record(Event::OrderAbandoned)?;
    // The key is stored before the CA knows the order, so a resumed order finalizes with it.
    held.save_pending_key(&key_pem)?;
    let mut req = NewOrder {
        identifiers,
        profile: cert.profile.clone(),
        replaces,
    };
    let order = match account.new_order(&req).await {
        // A CA may refuse `replaces` (the old certificate was already replaced, or issued
        // to another account); the renewal itself must not fail on it (RFC 9773 §5).
        Err(e) if req.replaces.is_some() && e.problem().is_some() => {
            warn!(cert = %cert.name, issuer = %issuer.name, error = %e, "the CA refused the order with `replaces`; ordering without it");
            req.replaces = None;
            account.new_order(&req).await
        }
        other => other,
    }?;
    held.record(Event::OrderCreated {
        issuer: issuer.name.clone(),
        url: order.url.clone(),
    })?;
    info!(cert = %cert.name, issuer = %issuer.name, order = %order.url, replaces = req.replaces.as_deref().unwrap_or("-"), "order created");
    Ok((order, key))
}

/// The certificate URL of an order that reached `valid`; otherwise why it did not.
fn finished_order(order: &acme::Order) -> Result<String, IssueError> {
    if order.body.status != OrderStatus::Valid {
        return Err(match &order.body.error {
            Some(p) => IssueError::new(AcmeError::Problem(Box::new(p.clone()))).context(format!(
                "the order {} ended as {:?}",
                order.url, order.body.status
            )),
            None => IssueError::new(AcmeError::BadResponse {
                url: order.url.clone(),
                message: format!(
                    "the order ended as {:?} without a reason",
                    order.body.status
                ),
            }),
        });
    }
    order.body.certificate.clone().ok_or_else(|| {
        IssueError::new(AcmeError::BadResponse {
            url: order.url.clone(),
            message: "the CA marked the order valid but gave no certificate URL".into(),
        })
    })
}

/// Verify the chain downloaded from the order's certificate URL against the key and the
/// configured names, then install it through the ledger; the attempt's trace, and ARI's absence
/// at a CA without it, go into the same state write.
fn install(
    held: &Issuance<'_>,
    cert: &CertificateConfig,
    issuer: &IssuerConfig,
    (key, chain): (&PKey<Private>, &acme::CertificateChain),
    done: Done<'_>,
) -> Result<Issued, IssueError> {
    let Done {
        url,
        trace,
        account,
    } = done;
    let pair =
        store::VerifiedPair::from_key(key, chain.certificates().to_vec(), &cert.domains, None)
            .map_err(|e| {
                IssueError::new(AcmeError::BadResponse {
                    url: url.to_string(),
                    message: format!("the CA's certificate was rejected, nothing was written: {e}"),
                })
            })?;
    let ari_cert_id = acme::cert_id(pair.leaf()).ok();
    let now = jiff::Timestamp::now();
    let issued = Event::Issued {
        issuer: issuer.name.clone(),
        fingerprint: fingerprint(cert),
        ari_cert_id: ari_cert_id.clone(),
        // From the key in hand: decoding its PEM again costs OpenSSL 3 a decoder context.
        key_fingerprint: store::key_fingerprint(key),
        at: now,
    };
    let no_ari = super::ari::unsupported_at_issuance(account, ari_cert_id.as_deref(), now);
    let events = [Some(issued), no_ari, Some(trace.event(None))];
    let paths = held.install(&cert.output, &pair, events.into_iter().flatten())?;
    let verified = pair.cert().clone();
    info!(cert = %cert.name, issuer = %issuer.name, serial = %verified.serial_hex, not_after = %verified.not_after, "certificate installed");
    Ok(Issued {
        issuer: issuer.name.clone(),
        cert: verified,
        paths,
        ari_cert_id,
        ordered_here: true,
    })
}

/// The private key for a new order: the live key again when `key_reuse` is set, its type still
/// matches and it is the key certkeeper generated for this certificate (its fingerprint is in the
/// ledger), otherwise a fresh one from the OS RNG.
fn new_cert_key(rt: &Runtime, cert: &CertificateConfig) -> Result<PKey<Private>, IssueError> {
    if cert.key_reuse {
        let snap = rt.ledger.snapshot(&cert.name, &cert.output);
        // Never reuse the key of a revoked certificate: it may be the reason it was revoked.
        if let Some(live) = snap.live()
            && let Ok(pem) = live.key_pem()
            && let Ok(key) = PKey::private_key_from_pem(pem)
            && acme::KeyType::of(&key) == Some(cert.key)
        {
            let ours = snap.state.key_fingerprint.is_some()
                && store::key_fingerprint(&key) == snap.state.key_fingerprint;
            if ours {
                return Ok(key);
            }
            warn!(cert = %cert.name, dir = %cert.output.dir.display(), "key_reuse: the installed key is not the one certkeeper generated for this certificate (imported or replaced by hand); using a new key");
        }
    }
    cert.key
        .generate()
        .map_err(|e| IssueError::internal(format!("generating a {} key: {e}", cert.key)))
}

fn order_matches(a: &[Identifier], b: &[Identifier]) -> bool {
    let key = |ids: &[Identifier]| {
        let mut v: Vec<(String, String)> = ids
            .iter()
            .map(|i| (i.type_.clone(), i.value.to_ascii_lowercase()))
            .collect();
        v.sort();
        v
    };
    key(a) == key(b)
}

/// An order that can still lead to a certificate.
fn usable(status: OrderStatus) -> bool {
    matches!(
        status,
        OrderStatus::Pending | OrderStatus::Ready | OrderStatus::Processing | OrderStatus::Valid
    )
}

/// The environment variable of [`hold_point`]: `STEP:FILE`.
#[cfg(feature = "test-hooks")]
pub const HOLD_AT_ENV: &str = "CERTKEEPER_TEST_HOLD_AT";

/// Stop here, alive (leases still renewed), until interrupted, when [`HOLD_AT_ENV`] is
/// `step:FILE` and this process is the first to get there: it creates FILE with its PID, for a
/// fault test to kill -9 a node in the middle of an order. Compiled in with the `test-hooks`
/// feature only; a no-op otherwise.
#[cfg(feature = "test-hooks")]
async fn hold_point(rt: &Runtime, step: &str) {
    use std::io::Write as _;
    let Ok(value) = std::env::var(HOLD_AT_ENV) else {
        return;
    };
    let Some((at, file)) = value.split_once(':') else {
        return;
    };
    if at != step {
        return;
    }
    let marker = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(file);
    if let Ok(mut marker) = marker {
        let _ = writeln!(marker, "{}", std::process::id());
        let _ = marker.sync_all();
        warn!("{HOLD_AT_ENV}={value}: holding here until interrupted (test hook)");
        rt.interrupt.cancelled().await;
    }
}

#[cfg(not(feature = "test-hooks"))]
async fn hold_point(_rt: &Runtime, _step: &str) {}

/// The CA's reason for a failed authorization: the first challenge error it recorded.
fn authz_failure(authz: &acme::Authorization) -> Option<&acme::Problem> {
    authz.challenges.iter().find_map(|c| c.error.as_ref())
}

/// Solve every pending authorization of an order concurrently. Cleanup runs for every challenge that
/// was presented, whatever happened.
async fn solve_authorizations(
    rt: &Runtime,
    account: &acme::Account,
    cert: &CertificateConfig,
    issuer: &IssuerConfig,
    authz_urls: &[String],
    trace: &Trace,
) -> Result<(), IssueError> {
    let results = join_all(
        authz_urls
            .iter()
            .map(|url| solve_one(rt, account, cert, issuer, url, trace)),
    )
    .await;
    // Report the first failure, but only after every authorization finished and cleaned up.
    results
        .into_iter()
        .collect::<Result<Vec<()>, _>>()
        .map(|_| ())
}

async fn solve_one(
    rt: &Runtime,
    account: &acme::Account,
    cert: &CertificateConfig,
    issuer: &IssuerConfig,
    url: &str,
    trace: &Trace,
) -> Result<(), IssueError> {
    let authz = account.authorization(url).await?;
    trace.authz(url, &authz);
    match authz.status {
        AuthorizationStatus::Valid => return Ok(()),
        AuthorizationStatus::Pending => {}
        other => {
            let what = format!("authorization for {} is {other:?}", authz.identifier.value);
            return Err(match authz_failure(&authz).cloned() {
                Some(mut p) => {
                    p.origin = acme::ProblemOrigin::Challenge(authz.identifier.value.clone());
                    IssueError::new(AcmeError::Problem(Box::new(p))).context(what)
                }
                None => IssueError::new(AcmeError::BadResponse {
                    url: url.to_string(),
                    message: format!("{what} and the CA gave no reason"),
                }),
            });
        }
    }
    let name = authz.identifier.value.clone();
    let id_kind = IdentifierKind::of_authorization(&authz.identifier.type_, authz.wildcard);
    let (solver, kind) = rt.solver_for(issuer, &name, id_kind)?;
    let Some(challenge) = authz
        .challenges
        .iter()
        .find(|c| ChallengeKind::parse(&c.type_) == Some(kind))
    else {
        let offered: Vec<&str> = authz.challenges.iter().map(|c| c.type_.as_str()).collect();
        return Err(IssueError::config(format!(
            "the CA offers {} for {name}, not {kind} which the solver for this name uses: configure a solver of an offered type",
            offered.join(", ")
        )));
    };
    let ctx = ChallengeCtx {
        cert_name: cert.name.clone(),
        identifier: name.clone(),
        is_ip: id_kind == IdentifierKind::Ip,
        wildcard: id_kind == IdentifierKind::Wildcard,
        kind,
        token: challenge.token.clone(),
        key_authorization: account.key_authorization(&challenge.token),
        persist: (kind == ChallengeKind::DnsPersist01).then(|| PersistCtx {
            account_url: account.url().to_string(),
            issuer_domain_names: challenge.issuer_domain_names.clone(),
        }),
    };
    // An interrupt (Ctrl-C, shutdown) stops the waiting, not the cleanup below.
    let result = tokio::select! {
        r = present_and_validate(account, solver.as_ref(), &ctx, &challenge.url, url, trace) => r,
        () = rt.interrupt.cancelled() => Err(IssueError::interrupted()
            .context(format!("solving the challenge for {name}"))),
    };
    // Cleanup gets its own time; the order's failure must not leave a TXT record or token behind.
    if let Err(e) = tokio::time::timeout(Duration::from_secs(60), solver.cleanup(&ctx))
        .await
        .unwrap_or_else(|_| {
            Err(crate::challenge::SolveError::retryable(format!(
                "cleanup for {name} timed out"
            )))
        })
    {
        warn!(cert = %cert.name, identifier = %name, error = %e, "challenge cleanup failed");
    }
    result
}

async fn present_and_validate(
    account: &acme::Account,
    solver: &dyn Solver,
    ctx: &ChallengeCtx,
    challenge_url: &str,
    authz_url: &str,
    trace: &Trace,
) -> Result<(), IssueError> {
    solver.present(ctx).await?;
    solver.wait(ctx).await?;
    account.respond(challenge_url).await?;
    let poll = Poll {
        timeout: ORDER_TIMEOUT,
        ..Poll::default()
    };
    let polled = account.poll_authorization(authz_url, &poll).await;
    // Record the CA's final word on this authorization (an invalid one comes back as an error).
    match &polled {
        Ok(a) => trace.authz(authz_url, a),
        Err(_) => {
            if let Ok(Ok(a)) =
                tokio::time::timeout(Duration::from_secs(15), account.authorization(authz_url))
                    .await
            {
                trace.authz(authz_url, &a);
            }
        }
    }
    let authz = polled?;
    if authz.status == AuthorizationStatus::Valid {
        debug!(cert = %ctx.cert_name, identifier = %ctx.identifier, "authorization valid");
        return Ok(());
    }
    let problem = authz_failure(&authz).cloned().map(|mut p| {
        p.origin = acme::ProblemOrigin::Challenge(ctx.identifier.clone());
        p
    });
    Err(match problem {
        Some(p) => IssueError::new(AcmeError::Problem(Box::new(p))),
        None => IssueError::new(AcmeError::BadResponse {
            url: authz_url.to_string(),
            message: format!(
                "the CA did not validate {} ({:?}) and gave no reason",
                ctx.identifier, authz.status
            ),
        }),
    })
}
