//! `exec`: run an external program to create and delete the TXT record.
//!
//! The program is run as `PROGRAM [ARGS...] present|cleanup FQDN VALUE` with the environment
//! variables `CERTKEEPER_DNS_FQDN`, `CERTKEEPER_DNS_VALUE`, `CERTKEEPER_DNS_ZONE` (empty when
//! unknown) and `CERTKEEPER_DNS_TTL`. Exit status 0 means done; anything else fails the challenge
//! with the program's output (its last 8 KiB) in the message.
//!
//! It is started by [`crate::child`]: of the daemon's environment it sees only `PATH`, `LANG`,
//! `LC_*`, `TZ`, the TLS trust variables and the names listed in `env` (its API token, say); no
//! ambient capabilities; in its own process group, all of which is killed at the timeout, so a
//! background process it started cannot re-create a TXT record after cleanup.
//!
//! Mapping from other clients:
//! - lego `EXEC_PATH` programs are called `PROGRAM present|cleanup FQDN VALUE` too: they work as they are.
//! - acme.sh hook scripts (`dns_myapi_add FQDN VALUE` / `dns_myapi_rm FQDN VALUE`) need a small wrapper:
//!   `case "$1" in present) dns_myapi_add "${2%.}" "$3";; cleanup) dns_myapi_rm "${2%.}" "$3";; esac`
//!   after sourcing the hook (acme.sh passes names without the trailing dot).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tokio::process::Command;

use super::SettingError;
use crate::challenge::dns01::{DnsProvider, ProviderError, RecordHandle, TxtRecord};
use crate::child::{self, Ended};
use crate::config::parse_duration;

const NAME: &str = "exec";

/// `dns01 = { provider = "exec", command = "/usr/local/bin/dns-hook", ... }`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    /// The program to run (absolute path recommended).
    pub command: PathBuf,
    /// Arguments put before `present|cleanup FQDN VALUE`.
    #[serde(default)]
    pub args: Vec<String>,
    /// Kill the program after this long (default "60s").
    #[serde(default)]
    pub timeout: Option<String>,
    /// Names of the daemon's environment variables the program may see (e.g. its API token).
    #[serde(default)]
    pub env: Vec<String>,
}

impl ExecConfig {
    /// Problems with the settings, found without running anything.
    pub fn check(&self) -> Vec<SettingError> {
        let mut out = Vec::new();
        if self.command.as_os_str().is_empty() {
            out.push(SettingError::new(
                "command",
                "is empty: give the program to run, e.g. \"/usr/local/bin/dns-hook\"",
            ));
        }
        if let Some(t) = &self.timeout
            && let Err(message) = parse_duration(t)
        {
            out.push(SettingError::new("timeout", message));
        }
        for (i, name) in self.env.iter().enumerate() {
            if let Err(message) = child::check_env_name(name) {
                out.push(SettingError::new(format!("env[{i}]"), message));
            }
        }
        out
    }
}

/// The exec provider.
#[derive(Debug)]
pub struct Exec {
    command: PathBuf,
    args: Vec<String>,
    timeout: Duration,
    env: Vec<String>,
}

impl Exec {
    /// Validate the config.
    pub fn new(cfg: &ExecConfig) -> Result<Self, ProviderError> {
        SettingError::into_result(NAME, cfg.check())?;
        let timeout = match &cfg.timeout {
            Some(t) => parse_duration(t).map_err(|message| ProviderError::Config {
                provider: NAME,
                message,
            })?,
            None => Duration::from_secs(60),
        };
        Ok(Self {
            command: cfg.command.clone(),
            args: cfg.args.clone(),
            timeout,
            env: cfg.env.clone(),
        })
    }

    async fn run(&self, action: &str, rec: &TxtRecord) -> Result<(), ProviderError> {
        let mut cmd = Command::new(&self.command);
        child::prepare(&mut cmd, &self.env);
        cmd.args(&self.args)
            .arg(action)
            .arg(&rec.fqdn)
            .arg(&rec.value)
            .env("CERTKEEPER_DNS_FQDN", &rec.fqdn)
            .env("CERTKEEPER_DNS_VALUE", &rec.value)
            .env("CERTKEEPER_DNS_ZONE", rec.zone.as_deref().unwrap_or(""))
            .env("CERTKEEPER_DNS_TTL", rec.ttl.to_string());
        let shown = self.command.display();
        let (ended, output) =
            child::run(cmd, self.timeout)
                .await
                .map_err(|e| ProviderError::Config {
                    provider: NAME,
                    message: format!(
                        "cannot run {shown}: {e}; check `command` (path and execute permission)"
                    ),
                })?;
        let status = match ended {
            Ended::Exited(st) if st.success() => return Ok(()),
            Ended::Exited(st) => st,
            Ended::TimedOut => {
                return Err(ProviderError::Api {
                    provider: NAME,
                    message: format!(
                        "{shown} {action} {} did not finish within {:?} and was killed (with its \
                         process group)",
                        rec.fqdn, self.timeout
                    ),
                    retryable: true,
                });
            }
            Ended::WaitError(e) => {
                return Err(ProviderError::Api {
                    provider: NAME,
                    message: format!("waiting for {shown}: {e}"),
                    retryable: true,
                });
            }
        };
        Err(ProviderError::Api {
            provider: NAME,
            message: format!(
                "{shown} {action} {} failed ({status}): {}",
                rec.fqdn,
                output.trim()
            ),
            retryable: true,
        })
    }
}

#[async_trait::async_trait]
impl DnsProvider for Exec {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn present(&self, rec: &TxtRecord) -> Result<RecordHandle, ProviderError> {
        self.run("present", rec).await?;
        Ok(RecordHandle::none())
    }

    async fn cleanup(&self, rec: &TxtRecord, _handle: RecordHandle) -> Result<(), ProviderError> {
        self.run("cleanup", rec).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn rec() -> TxtRecord {
        TxtRecord {
            fqdn: "_acme-challenge.example.com.".into(),
            zone: Some("example.com.".into()),
            value: "abc".into(),
            ttl: 60,
        }
    }

    fn script(dir: &std::path::Path, body: &str) -> PathBuf {
        let p = dir.join("hook.sh");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[tokio::test]
    async fn passes_arguments_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let p = script(
            dir.path(),
            &format!(
                "echo \"$1 $2 $3 $4 $CERTKEEPER_DNS_FQDN $CERTKEEPER_DNS_VALUE $CERTKEEPER_DNS_ZONE $CERTKEEPER_DNS_TTL\" >> {}",
                log.display()
            ),
        );
        let e = Exec::new(&ExecConfig {
            command: p,
            args: vec!["--flag".into()],
            timeout: None,
            env: vec![],
        })
        .unwrap();
        let h = e.present(&rec()).await.unwrap();
        e.cleanup(&rec(), h).await.unwrap();
        let got = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            got,
            "--flag present _acme-challenge.example.com. abc _acme-challenge.example.com. abc example.com. 60\n\
             --flag cleanup _acme-challenge.example.com. abc _acme-challenge.example.com. abc example.com. 60\n"
        );
    }

    #[tokio::test]
    async fn failure_and_timeout_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let p = script(dir.path(), "echo 'api said no' >&2; exit 3");
        let e = Exec::new(&ExecConfig {
            command: p,
            args: vec![],
            timeout: None,
            env: vec![],
        })
        .unwrap();
        let err = e.present(&rec()).await.unwrap_err().to_string();
        assert!(
            err.contains("api said no") && err.contains("exit status: 3"),
            "{err}"
        );

        let p = script(dir.path(), "sleep 30");
        let e = Exec::new(&ExecConfig {
            command: p,
            args: vec![],
            timeout: Some("300ms".into()),
            env: vec![],
        })
        .unwrap();
        let start = std::time::Instant::now();
        let err = e.present(&rec()).await.unwrap_err().to_string();
        assert!(err.contains("did not finish within"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    fn exec(command: PathBuf, timeout: Option<&str>, env: &[&str]) -> Exec {
        Exec::new(&ExecConfig {
            command,
            args: vec![],
            timeout: timeout.map(str::to_string),
            env: env.iter().map(|s| s.to_string()).collect(),
        })
        .unwrap()
    }

    /// Absent, or a zombie waiting for its reparented parent: either way it cannot act any more.
    fn gone(pid: i32) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or("");
        stat.is_empty() || state == "Z" || state == "X"
    }

    #[tokio::test]
    async fn timeout_kills_the_plugin_and_what_it_forked() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pids");
        let p = script(
            dir.path(),
            &format!(
                "sleep 300 & echo $! > {0}; echo $$ >> {0}; sleep 300",
                pidfile.display()
            ),
        );
        let e = exec(p, Some("1s"), &[]);
        let err = e.present(&rec()).await.unwrap_err().to_string();
        assert!(err.contains("did not finish within"), "{err}");
        let pids: Vec<i32> = std::fs::read_to_string(&pidfile)
            .unwrap()
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect();
        assert_eq!(pids.len(), 2, "{pids:?}");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        for pid in pids {
            while !gone(pid) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "process {pid} of the plugin outlived its timeout"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    #[tokio::test]
    async fn huge_output_is_cut_to_its_tail() {
        let dir = tempfile::tempdir().unwrap();
        let p = script(
            dir.path(),
            "head -c 10000000 /dev/zero | tr '\\0' x; echo; echo 'the real error' >&2; exit 1",
        );
        let err = exec(p, None, &[])
            .present(&rec())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.len() < crate::child::OUTPUT_LIMIT + 500,
            "{}",
            err.len()
        );
        assert!(err.contains("[…earlier output cut]"), "{}", &err[..200]);
        assert!(
            err.ends_with("the real error"),
            "{}",
            &err[err.len() - 200..]
        );
    }

    #[tokio::test]
    async fn sees_the_allowlist_and_its_env_names_only() {
        // Two variables of this process that are not on the allowlist: one listed, one not.
        let mut others = std::env::vars().map(|(k, _)| k).filter(|k| {
            !["PATH", "LANG", "TZ", "SSL_CERT_FILE", "SSL_CERT_DIR"].contains(&k.as_str())
                && !k.starts_with("LC_")
                && child::check_env_name(k).is_ok()
        });
        let (listed, unlisted) = (others.next().unwrap(), others.next().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env");
        let p = script(dir.path(), &format!("env > {}", out.display()));
        exec(p, None, &[&listed]).present(&rec()).await.unwrap();
        let env = std::fs::read_to_string(&out).unwrap();
        let names: Vec<&str> = env
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, _)| k)
            .collect();
        assert!(names.contains(&listed.as_str()), "{listed}: {env}");
        assert!(!names.contains(&unlisted.as_str()), "{unlisted}: {env}");
        assert!(names.contains(&"CERTKEEPER_DNS_FQDN"), "{env}");
        assert_eq!(
            names.contains(&"PATH"),
            std::env::var_os("PATH").is_some(),
            "{env}"
        );
    }

    #[test]
    fn env_names_are_checked() {
        let mut cfg = ExecConfig {
            command: "/bin/true".into(),
            args: vec![],
            timeout: None,
            env: vec!["CF_TOKEN".into(), "bad-name".into(), "WATCHDOG_PID".into()],
        };
        let keys: Vec<String> = cfg.check().into_iter().map(|p| p.key).collect();
        assert_eq!(keys, ["env[1]", "env[2]"]);
        cfg.env.truncate(1);
        assert!(cfg.check().is_empty());
    }
}
