//! `exec`: run an external program to create and delete the TXT record.
//!
//! The program is run as `PROGRAM [ARGS...] present|cleanup FQDN VALUE` with the environment
//! variables `CERTKEEPER_DNS_FQDN`, `CERTKEEPER_DNS_VALUE`, `CERTKEEPER_DNS_ZONE` (empty when
//! unknown) and `CERTKEEPER_DNS_TTL`. Exit status 0 means done; anything else fails the challenge
//! with the program's output in the message.
//!
//! Mapping from other clients:
//! - lego `EXEC_PATH` programs are called `PROGRAM present|cleanup FQDN VALUE` too: they work as they are.
//! - acme.sh hook scripts (`dns_myapi_add FQDN VALUE` / `dns_myapi_rm FQDN VALUE`) need a small wrapper:
//!   `case "$1" in present) dns_myapi_add "${2%.}" "$3";; cleanup) dns_myapi_rm "${2%.}" "$3";; esac`
//!   after sourcing the hook (acme.sh passes names without the trailing dot).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::process::Command;

use super::SettingError;
use crate::challenge::dns01::{DnsProvider, ProviderError, RecordHandle, TxtRecord};
use crate::config::parse_duration;

const NAME: &str = "exec";
/// Longest program output kept in an error message.
const MAX_OUTPUT: usize = 2000;

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
        out
    }
}

/// The exec provider.
#[derive(Debug)]
pub struct Exec {
    command: PathBuf,
    args: Vec<String>,
    timeout: Duration,
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
        })
    }

    async fn run(&self, action: &str, rec: &TxtRecord) -> Result<(), ProviderError> {
        let mut cmd = Command::new(&self.command);
        crate::tls_env::child_env(&mut cmd);
        cmd.args(&self.args)
            .arg(action)
            .arg(&rec.fqdn)
            .arg(&rec.value)
            .env("CERTKEEPER_DNS_FQDN", &rec.fqdn)
            .env("CERTKEEPER_DNS_VALUE", &rec.value)
            .env("CERTKEEPER_DNS_ZONE", rec.zone.as_deref().unwrap_or(""))
            .env("CERTKEEPER_DNS_TTL", rec.ttl.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let shown = self.command.display();
        let child = cmd.spawn().map_err(|e| ProviderError::Config {
            provider: NAME,
            message: format!(
                "cannot run {shown}: {e}; check `command` (path and execute permission)"
            ),
        })?;
        let out = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Err(_) => {
                return Err(ProviderError::Api {
                    provider: NAME,
                    message: format!(
                        "{shown} {action} {} did not finish within {:?} and was killed",
                        rec.fqdn, self.timeout
                    ),
                    retryable: true,
                });
            }
            Ok(Err(e)) => {
                return Err(ProviderError::Api {
                    provider: NAME,
                    message: format!("waiting for {shown}: {e}"),
                    retryable: true,
                });
            }
            Ok(Ok(out)) => out,
        };
        if out.status.success() {
            return Ok(());
        }
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        let text = text.trim();
        let text: String = if text.len() > MAX_OUTPUT {
            text.chars().take(MAX_OUTPUT).collect::<String>() + "..."
        } else {
            text.to_string()
        };
        Err(ProviderError::Api {
            provider: NAME,
            message: format!(
                "{shown} {action} {} failed ({}): {text}",
                rec.fqdn, out.status
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
        })
        .unwrap();
        let start = std::time::Instant::now();
        let err = e.present(&rec()).await.unwrap_err().to_string();
        assert!(err.contains("did not finish within"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
