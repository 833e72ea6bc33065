//! Sending one [`AlertEvent`]: to the `[notify]` command and to its webhook.

use std::io::{Seek as _, Write as _};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::AlertEvent;
use crate::child::{self, Ended};
use crate::config::{NotifyConfig, WebhookConfig};

/// Tries of one webhook delivery (the first and two retries), within `[notify] timeout`.
const WEBHOOK_TRIES: u32 = 3;
/// The wait before the first retry; doubled before the next.
const WEBHOOK_RETRY_WAIT: Duration = Duration::from_secs(1);

/// Why a notification did not reach a destination.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The command could not run or did not succeed.
    #[error("notify command `{command}` {what}")]
    Command {
        /// The command as configured.
        command: String,
        /// How it ended, with its output.
        what: String,
    },
    /// The webhook did not accept the event.
    #[error("notify webhook {url}: {what}")]
    Webhook {
        /// The URL.
        url: String,
        /// What the last try got.
        what: String,
    },
}

/// Send `event` to every destination of `cfg`; the errors of those that failed (each is logged).
pub async fn deliver(cfg: &NotifyConfig, event: &AlertEvent) -> Vec<DeliveryError> {
    let json = match serde_json::to_vec(event) {
        Ok(j) => j,
        Err(e) => {
            warn!(error = %e, "cannot encode the notification");
            return Vec::new();
        }
    };
    let mut errors = Vec::new();
    if let Some(command) = &cfg.command
        && let Err(e) = run_command(command, &cfg.command_env, event, &json, cfg.timeout).await
    {
        errors.push(e);
    }
    if let Some(hook) = &cfg.webhook
        && let Err(e) = post(hook, &json, cfg.timeout).await
    {
        errors.push(e);
    }
    for e in &errors {
        warn!(cert = %event.certificate, event = %event.event, error = %e, "notification not delivered");
    }
    if errors.is_empty() {
        info!(cert = %event.certificate, event = %event.event, reminder = event.reminder, "notification sent");
    }
    errors
}

/// Run the command with `/bin/sh -c` as [`crate::child`] starts hooks, the JSON on stdin.
async fn run_command(
    command: &str,
    env_names: &[String],
    event: &AlertEvent,
    json: &[u8],
    timeout: Duration,
) -> Result<(), DeliveryError> {
    let fail = |what: String| DeliveryError::Command {
        command: command.to_string(),
        what,
    };
    // An unnamed temporary file as stdin: the whole event is there whether or not the command
    // reads it, and a command that never reads cannot block certkeeper on a full pipe.
    let stdin = tempfile::tempfile()
        .and_then(|mut f| {
            f.write_all(json)?;
            f.write_all(b"\n")?;
            f.rewind()?;
            Ok(f)
        })
        .map_err(|e| fail(format!("could not be given its input: {e}")))?;
    let mut cmd = tokio::process::Command::new("/bin/sh");
    child::prepare(&mut cmd, env_names);
    cmd.stdin(std::process::Stdio::from(stdin));
    cmd.arg("-c").arg(command);
    let na = event.not_after.map(|t| t.to_string()).unwrap_or_default();
    for (k, v) in [
        ("CERTKEEPER_EVENT", event.event.as_str()),
        ("CERTKEEPER_CERT_NAME", event.certificate.as_str()),
        ("CERTKEEPER_DOMAINS", &event.domains.join(" ")),
        ("CERTKEEPER_MESSAGE", event.message.as_str()),
        ("CERTKEEPER_SERIAL", event.serial.as_deref().unwrap_or("")),
        ("CERTKEEPER_NOT_AFTER", &na),
        (
            "CERTKEEPER_REMINDER",
            if event.reminder { "1" } else { "0" },
        ),
    ] {
        cmd.env(k, v);
    }
    match child::run(cmd, timeout).await {
        Err(e) => Err(fail(format!("could not be started: {e}"))),
        Ok((Ended::Exited(st), _)) if st.success() => Ok(()),
        Ok((Ended::Exited(st), out)) => Err(fail(format!("failed ({st}); output: {}", out.trim()))),
        Ok((Ended::TimedOut, out)) => Err(fail(format!(
            "timed out after {timeout:?} and was killed; output: {}",
            out.trim()
        ))),
        Ok((Ended::WaitError(e), _)) => Err(fail(format!("could not be waited for: {e}"))),
    }
}

/// POST the JSON; retry a failed connection, a 5xx, 408 or 429 (at most [`WEBHOOK_TRIES`] tries,
/// all within `budget`); any other answer is final.
async fn post(hook: &WebhookConfig, json: &[u8], budget: Duration) -> Result<(), DeliveryError> {
    let fail = |what: String| DeliveryError::Webhook {
        url: hook.url.clone(),
        what,
    };
    let deadline = Instant::now() + budget;
    let client = reqwest::Client::builder()
        .user_agent(crate::engine::USER_AGENT)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(budget.min(Duration::from_secs(10)))
        .build()
        .map_err(|e| fail(format!("cannot build an HTTP client: {e}")))?;
    let mut wait = WEBHOOK_RETRY_WAIT;
    let mut last = String::new();
    for attempt in 1..=WEBHOOK_TRIES {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let mut req = client
            .post(&hook.url)
            .timeout(left)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(json.to_vec());
        for (name, value) in &hook.headers {
            req = req.header(name.as_str(), value.expose());
        }
        let retry = match req.send().await {
            Ok(resp) if resp.status().is_success() => return Ok(()),
            Ok(resp) => {
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                let body: String = body.chars().take(300).collect();
                last = format!("answered {status}: {}", body.trim());
                status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429
            }
            Err(e) => {
                last = format!("{e}");
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    last.push_str(&format!(": {s}"));
                    src = s.source();
                }
                true
            }
        };
        if !retry || attempt == WEBHOOK_TRIES {
            break;
        }
        if Instant::now() + wait >= deadline {
            break;
        }
        tokio::time::sleep(wait).await;
        wait *= 2;
    }
    Err(fail(last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> AlertEvent {
        AlertEvent {
            event: "paused".into(),
            certificate: "www".into(),
            domains: vec!["www.example.com".into(), "example.com".into()],
            reminder: false,
            at: "2026-01-01T00:00:00Z".parse().unwrap(),
            message: "the CA refuses".into(),
            serial: Some("0a".into()),
            not_after: None,
            cause: Some("rejectedIdentifier".into()),
            next_try: None,
            endpoints: Vec::new(),
            recovered_from: Vec::new(),
            host: "h".into(),
        }
    }

    fn cfg(command: &str) -> NotifyConfig {
        NotifyConfig {
            command: Some(command.into()),
            command_env: Vec::new(),
            webhook: None,
            warn_before: Duration::from_secs(86400),
            timeout: Duration::from_secs(10),
        }
    }

    #[tokio::test]
    async fn the_command_gets_json_on_stdin_and_the_environment() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let cmd = format!(
            "{{ echo \"$CERTKEEPER_EVENT|$CERTKEEPER_CERT_NAME|$CERTKEEPER_DOMAINS|$CERTKEEPER_SERIAL|$CERTKEEPER_REMINDER\"; cat; }} > {}",
            out.display()
        );
        let errors = deliver(&cfg(&cmd), &event()).await;
        assert!(errors.is_empty(), "{errors:?}");
        let text = std::fs::read_to_string(&out).unwrap();
        let (env, json) = text.split_once('\n').unwrap();
        assert_eq!(env, "paused|www|www.example.com example.com|0a|0");
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["event"], "paused");
        assert_eq!(v["cause"], "rejectedIdentifier");
    }

    #[tokio::test]
    async fn a_failing_or_hanging_command_is_reported() {
        let errors = deliver(&cfg("echo nope; exit 4"), &event()).await;
        let e = errors[0].to_string();
        assert!(e.contains("exit status: 4") && e.contains("nope"), "{e}");
        let mut c = cfg("sleep 20");
        c.timeout = Duration::from_millis(300);
        let errors = deliver(&c, &event()).await;
        assert!(errors[0].to_string().contains("timed out"), "{:?}", errors);
    }

    #[tokio::test]
    async fn an_unreachable_webhook_gives_up_within_the_budget() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = NotifyConfig {
            command: None,
            webhook: Some(WebhookConfig {
                url: format!("http://127.0.0.1:{port}/hook"),
                headers: Vec::new(),
            }),
            timeout: Duration::from_secs(5),
            ..cfg("true")
        };
        let start = std::time::Instant::now();
        let errors = deliver(&c, &event()).await;
        assert!(
            start.elapsed() < Duration::from_secs(6),
            "{:?}",
            start.elapsed()
        );
        let e = errors[0].to_string();
        assert!(e.contains(&format!("127.0.0.1:{port}")), "{e}");
    }
}
