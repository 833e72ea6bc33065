//! Reload hooks: run the configured commands once per batch after new certificate files are installed.
//!
//! Each distinct command runs exactly once per batch, however many certificates asked for it (ten
//! certificates renewed together reload nginx once), in first-asked order, via `/bin/sh -c`, started
//! by [`crate::child`]: an allowlisted environment (plus the certificates' `reload_env` names), no
//! ambient capabilities, its own process group, stdin from `/dev/null`, output captured (the last
//! 8 KiB), and a timeout that kills the whole process group. A failing hook is reported and logged;
//! it never undoes the install.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use crate::child::{self, Ended};

/// One certificate's request to run its reload commands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReloadRequest {
    /// The certificate's config name.
    pub cert_name: String,
    /// The serial (hex) of the pair the reload is for; recorded as reloaded when it succeeds.
    pub serial: String,
    /// Its domains.
    pub domains: Vec<String>,
    /// Path of its `fullchain.pem`.
    pub fullchain: PathBuf,
    /// Path of its `privkey.pem`.
    pub key: PathBuf,
    /// The commands to run, each with `/bin/sh -c`.
    pub commands: Vec<String>,
    /// Names of daemon environment variables its commands may see (`reload_env`), beyond the
    /// allowlist of [`crate::child`].
    pub env: Vec<String>,
}

/// What happened to one command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookOutcome {
    /// The command as configured.
    pub command: String,
    /// The certificates that asked for it, in request order.
    pub cert_names: Vec<String>,
    /// How it ended.
    pub status: HookStatus,
}

/// How a hook command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HookStatus {
    /// Exit status 0.
    Ok {
        /// The last 8 KiB of stdout and stderr, interleaved.
        output: String,
    },
    /// Non-zero exit, or killed by a signal.
    Failed {
        /// The exit code; `None` when a signal ended it (see `signal`).
        code: Option<i32>,
        /// The signal that ended it, if any.
        signal: Option<i32>,
        /// The last 8 KiB of stdout and stderr, interleaved.
        output: String,
    },
    /// It ran longer than the timeout; its process group was killed.
    TimedOut {
        /// The output seen before it was killed.
        output: String,
    },
    /// `/bin/sh` could not be started.
    SpawnError {
        /// Why.
        message: String,
    },
}

impl std::fmt::Display for HookOutcome {
    /// One line for the administrator: the command, for which certificates, and how it ended.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let certs = self.cert_names.join(", ");
        let tail = |o: &str| {
            let o = o.trim();
            if o.is_empty() {
                String::new()
            } else {
                format!("; output: {o}")
            }
        };
        match &self.status {
            HookStatus::Ok { .. } => write!(f, "`{}` (for {certs}) ran ok", self.command),
            HookStatus::Failed {
                code: Some(c),
                output,
                ..
            } => {
                write!(
                    f,
                    "`{}` (for {certs}) FAILED with exit code {c}{}",
                    self.command,
                    tail(output)
                )
            }
            HookStatus::Failed { signal, output, .. } => write!(
                f,
                "`{}` (for {certs}) FAILED, killed by signal {}{}",
                self.command,
                signal.unwrap_or(0),
                tail(output)
            ),
            HookStatus::TimedOut { output } => {
                write!(
                    f,
                    "`{}` (for {certs}) TIMED OUT and was killed{}",
                    self.command,
                    tail(output)
                )
            }
            HookStatus::SpawnError { message } => {
                write!(
                    f,
                    "`{}` (for {certs}) could not be started: {message}",
                    self.command
                )
            }
        }
    }
}

impl HookStatus {
    /// True for [`HookStatus::Ok`].
    pub fn is_ok(&self) -> bool {
        matches!(self, Self::Ok { .. })
    }
}

struct Batch<'a> {
    command: &'a str,
    requests: Vec<&'a ReloadRequest>,
}

/// Run the reload commands of `requests`, each distinct command once, in first-asked order.
///
/// The command sees `CERTKEEPER_CERT_NAME` and `CERTKEEPER_FULLCHAIN` / `CERTKEEPER_KEY` of the first
/// certificate that asked for it, `CERTKEEPER_CERT_NAMES` (all that asked, space separated) and
/// `CERTKEEPER_DOMAINS` (their domains, space separated, without repeats), and the daemon's variables
/// named in the `env` of any of them (nothing else of the daemon's environment beyond the allowlist
/// of [`crate::child`]). Commands run one after
/// another, so a `nginx -t && systemctl reload nginx` never overlaps another reload.
pub async fn run_reloads(requests: &[ReloadRequest], timeout: Duration) -> Vec<HookOutcome> {
    let mut batches: Vec<Batch<'_>> = Vec::new();
    for req in requests {
        for cmd in &req.commands {
            match batches.iter_mut().find(|b| b.command == cmd) {
                Some(b) => {
                    if !b.requests.iter().any(|r| r.cert_name == req.cert_name) {
                        b.requests.push(req);
                    }
                }
                None => batches.push(Batch {
                    command: cmd,
                    requests: vec![req],
                }),
            }
        }
    }
    let mut out = Vec::with_capacity(batches.len());
    for b in batches {
        let first = b.requests[0];
        let names: Vec<String> = b.requests.iter().map(|r| r.cert_name.clone()).collect();
        let mut seen = HashSet::new();
        let domains: Vec<&str> = b
            .requests
            .iter()
            .flat_map(|r| r.domains.iter().map(String::as_str))
            .filter(|d| seen.insert(*d))
            .collect();
        let env = [
            ("CERTKEEPER_CERT_NAME", first.cert_name.clone()),
            ("CERTKEEPER_CERT_NAMES", names.join(" ")),
            ("CERTKEEPER_DOMAINS", domains.join(" ")),
            (
                "CERTKEEPER_FULLCHAIN",
                first.fullchain.display().to_string(),
            ),
            ("CERTKEEPER_KEY", first.key.display().to_string()),
        ];
        let mut extra: Vec<String> = Vec::new();
        for name in b.requests.iter().flat_map(|r| &r.env) {
            if !extra.contains(name) {
                extra.push(name.clone());
            }
        }
        let status = run_one(b.command, &env, &extra, timeout).await;
        let certs = names.join(",");
        match &status {
            HookStatus::Ok { .. } => {
                tracing::info!(command = b.command, certs = %certs, "reload hook succeeded")
            }
            HookStatus::Failed {
                code,
                signal,
                output,
            } => tracing::warn!(
                command = b.command, certs = %certs, exit_code = ?code, signal = ?signal, output = %output,
                "reload hook failed; the new certificate files stay installed"
            ),
            HookStatus::TimedOut { output } => tracing::warn!(
                command = b.command, certs = %certs, timeout = ?timeout, output = %output,
                "reload hook timed out and was killed; the new certificate files stay installed"
            ),
            HookStatus::SpawnError { message } => {
                tracing::error!(command = b.command, certs = %certs, error = %message, "reload hook could not start")
            }
        }
        out.push(HookOutcome {
            command: b.command.to_string(),
            cert_names: names,
            status,
        });
    }
    out
}

async fn run_one(
    command: &str,
    env: &[(&str, String)],
    extra: &[String],
    timeout: Duration,
) -> HookStatus {
    let mut cmd = tokio::process::Command::new("/bin/sh");
    child::prepare(&mut cmd, extra);
    cmd.arg("-c").arg(command);
    for (k, v) in env {
        cmd.env(k, v);
    }
    match child::run(cmd, timeout).await {
        Err(e) => HookStatus::SpawnError {
            message: format!("starting /bin/sh: {e}"),
        },
        Ok((Ended::TimedOut, output)) => HookStatus::TimedOut { output },
        Ok((Ended::WaitError(e), _)) => HookStatus::SpawnError {
            message: format!("waiting for the hook: {e}"),
        },
        Ok((Ended::Exited(st), output)) if st.success() => HookStatus::Ok { output },
        Ok((Ended::Exited(st), output)) => {
            use std::os::unix::process::ExitStatusExt as _;
            HookStatus::Failed {
                code: st.code(),
                signal: st.signal(),
                output,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn req(name: &str, domains: &[&str], cmds: &[&str]) -> ReloadRequest {
        ReloadRequest {
            cert_name: name.into(),
            serial: "01".into(),
            domains: domains.iter().map(|s| s.to_string()).collect(),
            fullchain: PathBuf::from(format!("/etc/tls/{name}/fullchain.pem")),
            key: PathBuf::from(format!("/etc/tls/{name}/privkey.pem")),
            commands: cmds.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
        }
    }

    #[tokio::test]
    async fn shared_command_runs_once_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("log");
        let reload = format!("echo reload >> {}", log.display());
        let a_only = format!("echo a-only >> {}", log.display());
        let reqs = [
            req("a", &["a.test"], &[&reload, &a_only]),
            req("b", &["b.test"], &[&reload]),
        ];
        let out = run_reloads(&reqs, Duration::from_secs(10)).await;
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "reload\na-only\n");
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].cert_names, ["a", "b"]);
        assert_eq!(out[1].cert_names, ["a"]);
        assert!(out.iter().all(|o| o.status.is_ok()));
    }

    #[tokio::test]
    async fn env_variables_are_set() {
        let cmd = "echo \"$CERTKEEPER_CERT_NAME|$CERTKEEPER_CERT_NAMES|$CERTKEEPER_DOMAINS|$CERTKEEPER_FULLCHAIN|$CERTKEEPER_KEY\"; read x; echo \"stdin=$x\"";
        let reqs = [
            req("a", &["a.test", "w.test"], &[cmd]),
            req("b", &["w.test", "b.test"], &[cmd]),
        ];
        let out = run_reloads(&reqs, Duration::from_secs(10)).await;
        let HookStatus::Ok { output } = &out[0].status else {
            panic!("{:?}", out[0])
        };
        assert_eq!(
            output,
            "a|a b|a.test w.test b.test|/etc/tls/a/fullchain.pem|/etc/tls/a/privkey.pem\nstdin=\n"
        );
    }

    #[tokio::test]
    async fn failure_reports_code_and_output() {
        let reqs = [req("a", &["a.test"], &["echo out; echo err >&2; exit 3"])];
        let out = run_reloads(&reqs, Duration::from_secs(10)).await;
        assert_eq!(
            out[0].status,
            HookStatus::Failed {
                code: Some(3),
                signal: None,
                output: "out\nerr\n".into()
            }
        );
    }

    #[tokio::test]
    async fn output_is_bounded_to_the_tail() {
        let reqs = [req(
            "a",
            &["a.test"],
            &["head -c 100000 /dev/zero | tr '\\0' x; echo END"],
        )];
        let out = run_reloads(&reqs, Duration::from_secs(10)).await;
        let HookStatus::Ok { output } = &out[0].status else {
            panic!("{:?}", out[0])
        };
        assert!(
            output.ends_with("xEND\n") && output.len() < child::OUTPUT_LIMIT + 64,
            "{}",
            output.len()
        );
        assert!(output.starts_with("[…earlier output cut]"));
    }

    #[tokio::test]
    async fn timeout_kills_the_process_group() {
        let tmp = tempfile::tempdir().unwrap();
        let pidfile = tmp.path().join("pid");
        let cmd = format!(
            "sleep 30 & echo $! > {}; echo started; wait",
            pidfile.display()
        );
        let start = Instant::now();
        let out = run_reloads(
            &[req("a", &["a.test"], &[&cmd])],
            Duration::from_millis(500),
        )
        .await;
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(
            out[0].status,
            HookStatus::TimedOut {
                output: "started\n".into()
            }
        );
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The background `sleep` (same process group) must be gone: absent or a zombie.
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().next())
                .unwrap_or("");
            if stat.is_empty() || state == "Z" || state == "X" {
                break;
            }
            assert!(Instant::now() < deadline, "sleep {pid} still alive: {stat}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn background_child_holding_output_does_not_block() {
        // A hook that starts a daemon which keeps stdout open must still return promptly.
        let start = Instant::now();
        let out = run_reloads(
            &[req("a", &["a.test"], &["sleep 4 & echo hi"])],
            Duration::from_secs(10),
        )
        .await;
        assert!(
            start.elapsed() < Duration::from_millis(3500),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(
            out[0].status,
            HookStatus::Ok {
                output: "hi\n".into()
            }
        );
    }

    #[tokio::test]
    async fn nothing_to_run() {
        assert!(
            run_reloads(&[req("a", &["a.test"], &[])], Duration::from_secs(1))
                .await
                .is_empty()
        );
    }
}
