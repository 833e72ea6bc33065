//! The `certkeeper` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

use certkeeper::challenge::http01::TokenStore;
use certkeeper::config::{self, Config};
use certkeeper::daemon;
use certkeeper::engine::Runtime;
use certkeeper::engine::pass::PassOptions;

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
    /// Show every certificate: names, issuer, serial, Not After, next renewal and why, last error.
    ///
    /// Reads the state directory and the installed files only; safe while the daemon runs.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Only this certificate (config name).
        name: Option<String>,
    },
    /// Revoke the live certificate NAME at its CA, keep the pair aside in `<output.dir>/.revoked-<serial>/`
    /// and mark it so the next `renew` (or the daemon after `systemctl reload certkeeper`) replaces it at once.
    ///
    /// Signed with the account key; when the account is lost or refused, with the certificate's own key.
    Revoke {
        /// The certificate's config name.
        name: String,
        /// keyCompromise | superseded | cessationOfOperation | affiliationChanged | unspecified.
        #[arg(long, default_value = "unspecified")]
        reason: certkeeper::commands::revoke::Reason,
        /// Sign with the certificate's private key instead of the account key (lost account).
        #[arg(long)]
        with_cert_key: bool,
    },
    /// Show or change the ACME account at an issuer.
    Account {
        #[command(subcommand)]
        action: AccountAction,
    },
    /// Adopt an existing certificate (from certbot, lego, another host) as the live pair of NAME, so it is
    /// renewed when due instead of reissued at once. The names and key type must match the config.
    Import {
        /// The certificate's config name.
        name: String,
        /// PEM certificate (the leaf, optionally followed by its chain).
        #[arg(long)]
        cert: PathBuf,
        /// PEM private key.
        #[arg(long)]
        key: PathBuf,
        /// PEM intermediate chain, when --cert holds only the leaf.
        #[arg(long)]
        chain: Option<PathBuf>,
    },
    /// Adopt another ACME client's certificates, accounts and settings without re-issuing anything.
    Migrate {
        #[command(subcommand)]
        from: MigrateFrom,
    },
    /// Manage where state is kept (`[storage]`).
    Storage {
        #[command(subcommand)]
        action: StorageAction,
    },
    /// Print the shell completion script for bash, zsh or fish to stdout.
    ///
    /// E.g. `certkeeper completions bash > ~/.local/share/bash-completion/completions/certkeeper`;
    /// the Debian package installs all three.
    Completions {
        /// The shell.
        shell: Shell,
    },
    /// Print the certkeeper(1) man page (roff) to stdout, or write it and one page per subcommand
    /// (certkeeper-renew.1, ...) into DIR.
    ///
    /// E.g. `certkeeper man | man -l -`. The config format is in certkeeper.toml(5).
    Man {
        /// Write certkeeper.1 and certkeeper-SUBCOMMAND.1 pages into this directory (which must exist).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum MigrateFrom {
    /// Write conf.d/certbot-<lineage>.toml per renewal/*.conf, adopt certbot's account and live pairs
    /// (nginx keeps reading live/<lineage>/), rename the confs to .conf.migrated and print the undo.
    Certbot {
        /// certbot's config directory.
        #[arg(long, default_value = "/etc/letsencrypt")]
        certbot_dir: PathBuf,
        /// Print the files and actions; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Write conf.d/lego-<domain>.toml per certificates/<domain>.crt, adopt lego's account and pairs
    /// (lego's .crt/.key/.issuer.crt become symlinks into DIR/certkeeper/<domain>/) and print the undo.
    Lego {
        /// lego's --path (holds accounts/ and certificates/).
        #[arg(long, env = "LEGO_PATH", default_value = ".lego", value_name = "DIR")]
        path: PathBuf,
        /// lego's --server: the ACME directory URL lego used.
        #[arg(
            long,
            short = 's',
            env = "LEGO_SERVER",
            default_value = "https://acme-v02.api.letsencrypt.org/directory"
        )]
        server: String,
        /// lego's --email: which account, when lego has several for the server.
        #[arg(long, short = 'm', env = "LEGO_EMAIL")]
        email: Option<String>,
        /// Solve HTTP-01 with certkeeper's listener (lego's --http).
        #[arg(long, conflicts_with = "http_webroot")]
        http: bool,
        /// Solve HTTP-01 by writing into this document root (lego's --http.webroot).
        #[arg(long, value_name = "DIR")]
        http_webroot: Option<PathBuf>,
        /// CA bundle for the server's TLS certificate, when it is not publicly trusted.
        #[arg(long, env = "LEGO_CA_CERTIFICATES", value_name = "FILE")]
        ca_bundle: Option<PathBuf>,
        /// Print the files and actions; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum StorageAction {
    /// Copy a single host's state (accounts, certificate states, keys) and its installed
    /// certificates into the PostgreSQL database of `[storage]`, private keys sealed. Idempotent:
    /// what the database already holds is kept; nothing is deleted.
    Migrate {
        /// Where the state comes from.
        #[arg(long, value_enum)]
        from: StorageSource,
        /// The state directory to copy (default: the config's state_dir).
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Rotate the encryption key: re-seal the database's private keys with `encryption_key_file`.
    ///
    /// First give every node the new key file as `encryption_key_file` and the old one in
    /// `previous_encryption_key_files`, and reload them; then run this on one node. It records the
    /// new key as the database's sealing key and re-seals every value sealed with another key (opened
    /// with `previous_encryption_key_files`), one transaction per value, safely while the daemons
    /// run. From then on a node still configured with only the old key is refused, with what to do.
    /// Idempotent: after an interruption, run it again. When `certkeeper check` reports nothing left
    /// under the old key, remove it from every node.
    RotateKey,
}

/// Where `storage migrate` copies from.
#[derive(Clone, Copy, ValueEnum)]
enum StorageSource {
    /// A single host's state directory (the file backend).
    File,
}

/// The shells `certkeeper completions` writes a script for.
#[derive(Clone, Copy, ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Subcommand)]
enum AccountAction {
    /// Show the account as the CA reports it (URL, status, contact, key type, thumbprint).
    Show {
        /// The issuer's config name.
        #[arg(long)]
        issuer: String,
    },
    /// Switch the account to a new key (RFC 8555 keyChange) of the issuer's configured `account_key` type.
    ///
    /// The new key is stored as key.next.pem before the switch and replaces key.pem after; an interrupted
    /// rollover is finished or undone on the next start by asking the CA which key it knows.
    Rollover {
        /// The issuer's config name.
        #[arg(long)]
        issuer: String,
    },
    /// Deactivate the account for good; the next renewal registers a new one.
    Deactivate {
        /// The issuer's config name.
        #[arg(long)]
        issuer: String,
        /// Confirm: deactivation cannot be undone.
        #[arg(long)]
        yes: bool,
    },
    /// Print the standing dns-persist-01 TXT record(s) to publish (experimental; registers the
    /// account first when there is none).
    ///
    /// Without DOMAIN: one record for every name the issuer's dns_persist01 solver proves.
    PersistRecord {
        /// The issuer's config name.
        #[arg(long)]
        issuer: String,
        /// The name to publish a record for (`*.example.com` implies --wildcard).
        domain: Option<String>,
        /// Add `policy=wildcard`: the record also covers `*.DOMAIN` and every name below DOMAIN.
        #[arg(long)]
        wildcard: bool,
    },
    /// Replace the account's contact addresses (default: the issuer's `contact` from the config).
    UpdateContact {
        /// The issuer's config name.
        #[arg(long)]
        issuer: String,
        /// A contact address (`mailto:` is added when missing); repeat for several.
        #[arg(long)]
        contact: Vec<String>,
    },
}

fn main() -> ExitCode {
    certkeeper::tls_env::prefer_lazy_system_roots();
    let cli = Cli::parse();
    // Generated from the CLI definition alone: no config, no privileges, no logging.
    match &cli.command {
        Command::Completions { shell } => return completions(*shell),
        Command::Man { dir } => return man(dir.as_deref()),
        _ => {}
    }
    init_logging(&cli.log);
    let switch = if matches!(cli.command, Command::Run) {
        certkeeper::daemon::run::one_malloc_arena();
        certkeeper::privileges::refuse_root_daemon(&cli.config)
    } else if matches!(cli.command, Command::Migrate { .. }) {
        // Reads the other client's root-only files first, then acts as the state owner itself.
        Ok(())
    } else {
        certkeeper::privileges::become_state_owner(&cli.config)
    };
    if let Err(e) = switch {
        eprintln!("certkeeper: {e}");
        return ExitCode::FAILURE;
    }
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
            Command::Explain { name } => match load_one(&cli.config, &name) {
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
            Command::Renew { force, names } => match load(&cli.config) {
                Ok(cfg) => {
                    let opts = PassOptions { force, only: names };
                    certkeeper::commands::renew::run(cfg, opts).await
                }
                Err(code) => code,
            },
            Command::Revoke {
                name,
                reason,
                with_cert_key,
            } => {
                let opts = certkeeper::commands::revoke::RevokeOptions {
                    name,
                    reason,
                    with_cert_key,
                };
                lifecycle(&cli.config, Lifecycle::Revoke(opts)).await
            }
            Command::Account { action } => lifecycle(&cli.config, Lifecycle::Account(action)).await,
            Command::Import {
                name,
                cert,
                key,
                chain,
            } => {
                let opts = certkeeper::commands::import::ImportOptions {
                    name,
                    cert,
                    key,
                    chain,
                };
                lifecycle(&cli.config, Lifecycle::Import(opts)).await
            }
            Command::Migrate {
                from:
                    MigrateFrom::Certbot {
                        certbot_dir,
                        dry_run,
                    },
            } => {
                let opts = certkeeper::commands::migrate::certbot::CertbotOptions {
                    certbot_dir,
                    dry_run,
                };
                match certkeeper::commands::migrate::certbot::migrate(&cli.config, &opts) {
                    Ok(report) => {
                        print!("{report}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("certkeeper: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Command::Migrate {
                from:
                    MigrateFrom::Lego {
                        path,
                        server,
                        email,
                        http,
                        http_webroot,
                        ca_bundle,
                        dry_run,
                    },
            } => {
                use certkeeper::commands::migrate::lego::{LegoOptions, LegoSolver, migrate};
                let solver = match (http, http_webroot) {
                    (_, Some(dir)) => LegoSolver::Webroot(dir),
                    (true, None) => LegoSolver::Http,
                    (false, None) => LegoSolver::Existing,
                };
                let opts = LegoOptions {
                    path,
                    server,
                    email,
                    solver,
                    ca_bundle,
                    dry_run,
                };
                match migrate(&cli.config, &opts) {
                    Ok(report) => {
                        print!("{report}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("certkeeper: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Command::Storage {
                action:
                    StorageAction::Migrate {
                        from: StorageSource::File,
                        state_dir,
                    },
            } => match load(&cli.config) {
                Ok(cfg) => {
                    let migrated = tokio::task::spawn_blocking(move || {
                        certkeeper::commands::storage_migrate::from_file(&cfg, state_dir.as_deref())
                    })
                    .await
                    .unwrap_or_else(|e| Err(format!("the migration stopped: {e}")));
                    match migrated {
                        Ok(report) => {
                            println!("{report}");
                            ExitCode::SUCCESS
                        }
                        Err(e) => {
                            eprintln!("certkeeper: {e}");
                            ExitCode::FAILURE
                        }
                    }
                }
                Err(code) => code,
            },
            Command::Storage {
                action: StorageAction::RotateKey,
            } => match load(&cli.config) {
                Ok(cfg) => {
                    let rotated = tokio::task::spawn_blocking(move || {
                        certkeeper::commands::storage_rotate::rotate_key(&cfg)
                    })
                    .await
                    .unwrap_or_else(|e| Err(format!("the rotation stopped: {e}")));
                    match rotated {
                        Ok(report) => {
                            println!("{report}");
                            if report.complete() {
                                ExitCode::SUCCESS
                            } else {
                                ExitCode::FAILURE
                            }
                        }
                        Err(e) => {
                            eprintln!("certkeeper: {e}; run `certkeeper storage rotate-key` again once it is fixed (it continues where it stopped)");
                            ExitCode::FAILURE
                        }
                    }
                }
                Err(code) => code,
            },
            Command::Status { json, name } => {
                certkeeper::commands::status::run(&cli.config, json, name.as_deref())
            }
            Command::Completions { .. } | Command::Man { .. } => unreachable!("handled before"),
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

/// `certkeeper completions SHELL`: the script on stdout.
fn completions(shell: Shell) -> ExitCode {
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "certkeeper", &mut out);
    write_stdout(&out)
}

/// `certkeeper man [--dir DIR]`: certkeeper(1) on stdout, or every page written into DIR.
fn man(dir: Option<&std::path::Path>) -> ExitCode {
    let cmd = Cli::command();
    match dir {
        Some(dir) => match clap_mangen::generate_to(cmd, dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("certkeeper: writing man pages into {}: {e}", dir.display());
                ExitCode::FAILURE
            }
        },
        None => {
            let mut out = Vec::new();
            match clap_mangen::Man::new(cmd).render(&mut out) {
                Ok(()) => write_stdout(&out),
                Err(e) => {
                    eprintln!("certkeeper: rendering the man page: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Writes generated text to stdout; a closed pipe (`| head`) is not an error worth a panic.
fn write_stdout(bytes: &[u8]) -> ExitCode {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("certkeeper: writing to stdout: {e}");
            ExitCode::FAILURE
        }
    }
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
        // no colour codes in files and pipes
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        tracing_subscriber::registry()
            .with(filter)
            .with(fmt.with_ansi(ansi))
            .init();
    }
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    config::load(path).map_err(|e| {
        eprintln!("certkeeper: {e}");
        ExitCode::from(2)
    })
}

/// The config for a read-only command about certificate `name` (see [`config::load_one`]).
fn load_one(path: &std::path::Path, name: &str) -> Result<Config, ExitCode> {
    config::load_one(path, name).map_err(|e| {
        eprintln!("certkeeper: {e}");
        ExitCode::from(2)
    })
}

enum Lifecycle {
    Revoke(certkeeper::commands::revoke::RevokeOptions),
    Account(AccountAction),
    Import(certkeeper::commands::import::ImportOptions),
}

/// revoke, account and import: load the config, open the state, run the command, print the outcome.
async fn lifecycle(path: &std::path::Path, what: Lifecycle) -> ExitCode {
    use certkeeper::commands::{account, import, revoke};
    let cfg = match load(path) {
        Ok(c) => Arc::new(c),
        Err(code) => return code,
    };
    let rt = match Runtime::new(cfg, TokenStore::default()) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("certkeeper: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<String, String> = match what {
        Lifecycle::Revoke(opts) => revoke::revoke(&rt, &opts).await.map(|r| {
            format!(
                "{}: serial {} {} at issuer {} (signed with the {}); pair kept in {}; the next `certkeeper renew` or daemon pass (`systemctl reload certkeeper`) issues a replacement",
                opts.name,
                r.serial,
                if r.already_revoked { "was already revoked" } else { "revoked" },
                r.issuer,
                r.signed_with,
                r.kept.display()
            )
        }).map_err(|e| e.to_string()),
        Lifecycle::Account(action) => match action {
            AccountAction::Show { issuer } => account::show(&rt, &issuer).await.map(|i| i.to_string()),
            AccountAction::Rollover { issuer } => account::rollover(&rt, &issuer).await.map(|i| i.to_string()),
            AccountAction::Deactivate { issuer, yes } => {
                account::deactivate(&rt, &issuer, yes).await.map(|i| i.to_string())
            }
            AccountAction::UpdateContact { issuer, contact } => {
                account::update_contact(&rt, &issuer, &contact).await.map(|i| i.to_string())
            }
            AccountAction::PersistRecord {
                issuer,
                domain,
                wildcard,
            } => account::persist_records(&rt, &issuer, domain.as_deref(), wildcard).await,
        }
        .map_err(|e| e.to_string()),
        Lifecycle::Import(opts) => import::import(&rt, &opts).map(|i| {
            format!(
                "{}: imported serial {} (valid until {}) -> {}; {}",
                opts.name,
                i.serial,
                i.not_after,
                i.paths.fullchain.display(),
                i.due
            )
        }).map_err(|e| e.to_string()),
    };
    match result {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("certkeeper: {e}");
            ExitCode::FAILURE
        }
    }
}
