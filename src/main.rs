//! The `certkeeper` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

use certkeeper::challenge::http01::{Http01Server, TokenStore};
use certkeeper::config::{self, Config};
use certkeeper::daemon::pass::{self, PassOptions, PassReport};
use certkeeper::daemon::{self, Runtime};

/// The default config file, as the systemd unit uses it.
const DEFAULT_CONFIG: &str = "/etc/certkeeper/certkeeper.toml";

/// certkeeper keeps TLS certificates from an ACME CA (Let's Encrypt, ZeroSSL, a private CA) issued,
/// renewed and installed for nginx and other servers.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// The main config file.
    #[arg(short, long, global = true, env = "CERTKEEPER_CONFIG", default_value = DEFAULT_CONFIG)]
    config: PathBuf,

    /// Log filter, e.g. `info`, `debug`, `certkeeper=debug` (RUST_LOG syntax).
    #[arg(long, global = true, env = "CERTKEEPER_LOG", default_value = "info")]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config (like `nginx -t`) and probe the CA, accounts, output directories,
    /// listener and DNS credentials; exit non-zero on any failure.
    Check {
        /// Only validate the config and local files; no network probes.
        #[arg(long)]
        offline: bool,
    },
    /// Explain one certificate: config, live certificate, last order, the CA's problems, what to do.
    Explain {
        /// The certificate's config name.
        name: String,
    },
    /// One pass: issue what is missing or due, run reload hooks, then exit.
    ///
    /// Exits non-zero when any certificate failed.
    Renew {
        /// Issue even when not due.
        #[arg(long)]
        force: bool,
        /// Only these certificates (config names); all when none is given.
        names: Vec<String>,
    },
    /// Run the daemon: keep every certificate valid, serve HTTP-01, reload on SIGHUP or config change.
    Run,
}

fn main() -> ExitCode {
    certkeeper::tls_env::prefer_lazy_system_roots();
    let cli = Cli::parse();
    init_logging(&cli.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("certkeeper: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Check { offline } => match load(&cli.config) {
                Ok(cfg) => certkeeper::commands::check::run(&cli.config, cfg, offline).await,
                Err(code) => code,
            },
            Command::Explain { name } => match load(&cli.config) {
                Ok(cfg) => match certkeeper::commands::explain::explain(Arc::new(cfg), &name) {
                    Ok(text) => {
                        print!("{text}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("certkeeper: {e}");
                        ExitCode::FAILURE
                    }
                },
                Err(code) => code,
            },
            Command::Renew { force, names } => {
                renew(&cli.config, PassOptions { force, only: names }).await
            }
            Command::Run => match daemon::run::run(&cli.config).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("certkeeper: {e:#}");
                    ExitCode::FAILURE
                }
            },
        }
    })
}

/// Logs go to stderr; under systemd (JOURNAL_STREAM set) without our own timestamps, since journald
/// adds its own.
fn init_logging(filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    if under_journald {
        tracing_subscriber::registry()
            .with(filter)
            .with(fmt.without_time().with_ansi(false))
            .init();
    } else {
        tracing_subscriber::registry().with(filter).with(fmt).init();
    }
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    config::load(path).map_err(|e| {
        eprintln!("certkeeper: {e}");
        ExitCode::from(2)
    })
}

async fn renew(path: &std::path::Path, opts: PassOptions) -> ExitCode {
    let cfg = match load(path) {
        Ok(c) => Arc::new(c),
        Err(code) => return code,
    };
    let tokens = TokenStore::default();
    let rt = match Runtime::new(cfg.clone(), tokens.clone()) {
        Ok(rt) => Arc::new(rt),
        Err(e) => {
            eprintln!("certkeeper: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let _server = match Http01Server::bind(&cfg.http01.listen, tokens)
        .and_then(|s| s.serve(shutdown.clone()))
    {
        Ok(handles) => Some(handles),
        Err(e) => {
            tracing::warn!(error = %e, "HTTP-01 listener not started; http-01 challenges will fail (is the daemon running? then use `systemctl reload certkeeper` instead)");
            None
        }
    };
    // Ctrl-C / SIGTERM interrupt the orders, whose challenge cleanup still runs; a second one exits.
    let interrupt = rt.interrupt.clone();
    let signals = tokio::spawn(async move {
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
    });
    let report = pass::run_pass(rt, &opts).await;
    signals.abort();
    shutdown.cancel();
    print_report(&report);
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_report(report: &PassReport) {
    for (name, issued) in &report.issued {
        println!(
            "{name}: issued by {} (serial {}, valid until {}) -> {}",
            issued.issuer,
            issued.cert.serial_hex,
            issued.cert.not_after,
            issued.paths.fullchain.display()
        );
    }
    for (name, due) in &report.not_due {
        if report.backing_off().any(|(n, _)| n == name) {
            println!(
                "{name}: NOT RENEWED (backing off after a failure): {due}; `certkeeper renew --force {name}` tries now"
            );
        } else {
            println!("{name}: not due; {due}");
        }
    }
    for (name, e) in &report.failed {
        println!("{name}: FAILED: {e}");
    }
    for hook in &report.hooks {
        println!("hook: {hook}");
    }
}
