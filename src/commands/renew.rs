//! `certkeeper renew [--force] [NAME…]`: one pass, next to a running daemon or on its own.
//!
//! Serves this run's HTTP-01 challenges on its own listener, or, when the daemon holds the port,
//! hands the tokens to the daemon's listener through the state directory. Ctrl-C interrupts the
//! orders (their challenge cleanup still runs); a second Ctrl-C quits at once.

use std::process::ExitCode;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::challenge::http01::{Http01Server, TokenStore};
use crate::config::Config;
use crate::engine::pass::{self, PassOptions, PassReport};
use crate::engine::{Runtime, fleet_tokens, http01_spool};

/// Run one pass over `cfg` and print what happened; the exit code is non-zero when any
/// certificate failed, is backing off or paused, a reload hook failed, or a `verify_deploy`
/// endpoint does not serve the installed certificate.
pub async fn run(cfg: Config, opts: PassOptions) -> ExitCode {
    let cfg = Arc::new(cfg);
    let shutdown = CancellationToken::new();
    let (tokens, _server) = listener(&cfg, &shutdown);
    let rt = match Runtime::new(cfg.clone(), tokens) {
        Ok(rt) => Arc::new(rt),
        Err(e) => {
            eprintln!("certkeeper: {e}");
            return ExitCode::FAILURE;
        }
    };
    let signals = tokio::spawn(interrupt_on_signal(rt.interrupt.clone()));
    let report = pass::run_pass(rt, &opts).await;
    signals.abort();
    shutdown.cancel();
    print!("{}", render(&report));
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Our own HTTP-01 listener, or the daemon's through the spool when it holds the port.
fn listener(
    cfg: &Config,
    shutdown: &CancellationToken,
) -> (TokenStore, Option<Vec<tokio::task::JoinHandle<()>>>) {
    // In a fleet the tokens go to every node too, whichever way they are served here.
    let fleet = match fleet_tokens(cfg) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "HTTP-01 tokens are not shared with the fleet; only this host answers them");
            None
        }
    };
    // Our own listener also answers tokens other certkeeper processes publish (a concurrent renew).
    let own = TokenStore::reading_spool(http01_spool(cfg)).with_fleet(fleet.clone());
    match Http01Server::bind(&cfg.http01.listen, own.clone())
        .and_then(|s| s.serve(shutdown.clone()))
    {
        Ok(handles) => (own, Some(handles)),
        // Usually the daemon holds the port: hand it our tokens through the state directory.
        Err(e) => match TokenStore::publishing_spool(http01_spool(cfg)) {
            Ok(spool) => {
                let spool = spool.with_fleet(fleet);
                tracing::info!(error = %e, "HTTP-01 port taken (by the running daemon?); its listener will answer this run's challenges");
                (spool, None)
            }
            Err(se) => {
                tracing::warn!(error = %e, spool_error = %se, "HTTP-01 listener not started; http-01 challenges will fail");
                (own, None)
            }
        },
    }
}

/// Ctrl-C / SIGTERM interrupt the orders, whose challenge cleanup still runs; a second one exits.
async fn interrupt_on_signal(interrupt: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::warn!("cannot install signal handlers; Ctrl-C will not clean up");
        return;
    };
    tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
    tracing::warn!("interrupted: cleaning up challenges (press Ctrl-C again to quit at once)");
    interrupt.cancel();
    tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
    std::process::exit(130);
}

/// One line per certificate and per hook, as `renew` prints them.
pub fn render(report: &PassReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for (name, issued) in &report.issued {
        if !issued.ordered_here {
            let _ = writeln!(
                out,
                "{name}: installed the fleet's current certificate, issued by another node (serial {}, valid until {}) -> {}",
                issued.cert.serial_hex,
                issued.cert.not_after,
                issued.paths.fullchain.display()
            );
            continue;
        }
        let _ = writeln!(
            out,
            "{name}: issued by {} (serial {}, valid until {}) -> {}",
            issued.issuer,
            issued.cert.serial_hex,
            issued.cert.not_after,
            issued.paths.fullchain.display()
        );
    }
    for (name, due) in &report.not_due {
        if due.after_failure() {
            let _ = writeln!(
                out,
                "{name}: NOT RENEWED (backing off after a failure): {due}; `certkeeper renew --force {name}` tries now"
            );
        } else {
            let _ = writeln!(out, "{name}: not due; {due}");
        }
    }
    for (name, e) in &report.failed {
        let _ = writeln!(out, "{name}: FAILED: {e}");
    }
    for hook in &report.hooks {
        let _ = writeln!(out, "hook: {hook}");
    }
    for (name, check) in &report.deploy {
        if check.deployed {
            let _ = writeln!(
                out,
                "{name}: deployed (every verify_deploy endpoint serves serial {})",
                check.serial
            );
        } else {
            let _ = writeln!(
                out,
                "{name}: INSTALLED, NOT DEPLOYED (installed serial {}): {}; check the reload hook and which files the server reads",
                check.serial,
                check.mismatches().join("; ")
            );
        }
    }
    out
}
