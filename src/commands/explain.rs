//! `certkeeper explain NAME`: everything known about one certificate, in the order a failure travels
//! (like `kubectl describe` for cert-manager): config → live certificate → last order →
//! authorizations and challenges with the CA's problems → last error with cause and what to do.

use std::fmt::Write as _;
use std::sync::Arc;

use crate::config::{CertificateConfig, Config, SolverKind};
use crate::engine::{due, read_only_ledger};
use crate::scheduler::DueReason;
use crate::store::{CertState, OrderTrace, ProblemTrace, Snapshot};

/// Why `explain` could not describe a certificate.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// The name is not a configured certificate.
    #[error("no certificate named {name:?} in the config; configured: {known}")]
    UnknownCertificate {
        /// The name asked for.
        name: String,
        /// The configured names, comma-separated.
        known: String,
    },
    /// The certificate's state could not be read.
    #[error(
        "cannot read the state of this certificate: {0} (run as the user certkeeper runs as, usually root)"
    )]
    State(String),
    /// The state cannot be opened at all (a storage backend this build does not run on).
    #[error("{0}")]
    Storage(#[from] crate::store::StoreError),
}

/// Describe certificate `name` of `cfg` as text for the terminal.
pub fn explain(cfg: Arc<Config>, name: &str) -> Result<String, ExplainError> {
    let Some(cert) = cfg.certificates.get(name).cloned() else {
        return Err(ExplainError::UnknownCertificate {
            name: name.to_string(),
            known: cfg
                .certificates
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    // The ledger is read, never written, and no runtime is built: safe next to a running daemon.
    let snap = read_only_ledger(&cfg)
        .map_err(ExplainError::Storage)?
        .snapshot(name, &cert.output);
    if let Some(e) = snap.state_error {
        return Err(ExplainError::State(e));
    }
    let state = &snap.state;
    let mut out = String::new();
    config_section(&mut out, &cfg, &cert);
    live_section(&mut out, &cfg, &cert, &snap);
    match &state.last_order {
        Some(t) => order_section(&mut out, t),
        None => out.push_str(
            "\nLast order:\n  none recorded yet (no issuance attempted by this version)\n",
        ),
    }
    error_section(&mut out, state, name);
    Ok(out)
}

fn config_section(out: &mut String, cfg: &Config, cert: &CertificateConfig) {
    let _ = writeln!(out, "Certificate: {}", cert.name);
    for (i, issuer_name) in cert.issuers.iter().enumerate() {
        let label = if i == 0 { "Issuer:" } else { "Fallback:" };
        match cfg.issuers.get(issuer_name) {
            Some(iss) => {
                let _ = writeln!(out, "  {label:<13}{} ({})", iss.name, iss.directory);
            }
            None => {
                let _ = writeln!(out, "  {label:<13}{issuer_name} (not configured!)");
            }
        }
    }
    let _ = writeln!(out, "  Names:       {}", cert.domains.join(", "));
    let _ = writeln!(
        out,
        "  Key:         {}{}",
        cert.key,
        if cert.key_reuse {
            " (reused across renewals)"
        } else {
            " (new key at each renewal)"
        }
    );
    if let Some(p) = &cert.profile {
        let _ = writeln!(out, "  Profile:     {p}");
    }
    if let Some(c) = &cert.preferred_chain {
        let _ = writeln!(out, "  Chain:       prefer {c:?}");
    }
    let _ = writeln!(out, "  Solvers:");
    for domain in &cert.domains {
        let (kind, bare) = crate::challenge::IdentifierKind::split(domain);
        for issuer_name in &cert.issuers {
            let Some(iss) = cfg.issuers.get(issuer_name) else {
                continue;
            };
            let how = match iss.solver_for(bare, kind) {
                Some(s) => describe_solver(&s.kind, &cfg.http01.listen),
                None => "NO SOLVER covers this name: add a [[issuer.X.solver]] for it".to_string(),
            };
            let _ = writeln!(out, "    {domain:<28} {issuer_name}: {how}");
        }
    }
    let _ = writeln!(
        out,
        "  Output:      {} (fullchain.pem, privkey.pem, chain.pem, cert.pem; key mode {:04o})",
        cert.output.dir.display(),
        cert.output.key_mode
    );
    if !cert.reload.is_empty() {
        let _ = writeln!(out, "  Reload:      {}", cert.reload.join(" ; "));
    }
}

/// How an HTTP-01 self-check is set, for the solver line.
fn self_check_text(
    self_check: bool,
    self_check_target: &crate::challenge::http01::SelfCheckTarget,
) -> String {
    if !self_check {
        "self-check off".to_string()
    } else if self_check_target.resolve.is_empty() && self_check_target.port == 80 {
        "self-check on".to_string()
    } else {
        format!(
            "self-check via port {}{}",
            self_check_target.port,
            if self_check_target.resolve.is_empty() {
                String::new()
            } else {
                format!(
                    " at {}",
                    self_check_target
                        .resolve
                        .iter()
                        .map(|i| i.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        )
    }
}

fn describe_solver(kind: &SolverKind, listen: &[std::net::SocketAddr]) -> String {
    match kind {
        SolverKind::Http01 {
            self_check,
            self_check_target,
        } => {
            let listen: Vec<String> = listen.iter().map(|a| a.to_string()).collect();
            let check = self_check_text(*self_check, self_check_target);
            format!("http-01 via listener {} ({check})", listen.join(", "))
        }
        SolverKind::Webroot {
            path,
            self_check,
            self_check_target,
        } => format!(
            "http-01 via webroot {} ({})",
            path.display(),
            self_check_text(*self_check, self_check_target)
        ),
        SolverKind::TlsAlpn01 { listen } => format!("tls-alpn-01 on {listen}"),
        SolverKind::Dns01 {
            provider,
            propagation,
        } => format!(
            "dns-01 via {} (propagation check {})",
            provider.name(),
            if propagation.check { "on" } else { "off" }
        ),
        SolverKind::DnsPersist01 { issuer_domain, .. } => format!(
            "dns-persist-01 (experimental) with the standing record for issuer {issuer_domain}"
        ),
    }
}

fn live_section(out: &mut String, cfg: &Config, cert: &CertificateConfig, snap: &Snapshot) {
    out.push_str("\nLive certificate:\n");
    let state = &snap.state;
    match (&snap.installed, &snap.installed_error) {
        (Some(live), _) => {
            let now = jiff::Timestamp::now();
            let left = live.cert.not_after.duration_since(now);
            let days = left.as_secs() / 86_400;
            let _ = writeln!(out, "  Serial:      {}", live.cert.serial_hex);
            let _ = writeln!(
                out,
                "  Not After:   {} ({})",
                live.cert.not_after,
                if left.is_negative() {
                    "EXPIRED".to_string()
                } else {
                    format!("{days} days left")
                }
            );
            let _ = writeln!(out, "  Names:       {}", live.cert.names.join(", "));
            if let Some(i) = &live.cert.issuer_cn {
                let _ = writeln!(out, "  Issued by:   {i}");
            }
            let _ = writeln!(out, "  Files:       {}", live.source_dir.display());
        }
        (None, None) => {
            let _ = writeln!(out, "  none installed in {}", cert.output.dir.display());
        }
        (None, Some(e)) => {
            let _ = writeln!(out, "  unusable: {e}");
        }
    }
    if snap.placeholder {
        out.push_str("  (a self-signed placeholder: replaced at once)\n");
    }
    if let Some(t) = state.last_success {
        let _ = writeln!(out, "  Last issued: {t}");
    }
    if let Some(serial) = snap.reload_pending().filter(|_| !cert.reload.is_empty()) {
        let _ = writeln!(
            out,
            "  Reload:      PENDING for serial {serial}: the reload hook did not complete; it runs at the next start"
        );
    }
    deploy_lines(out, cert, snap);
    let due = due::due(cfg, cert, snap, jiff::Timestamp::now(), false);
    let _ = writeln!(out, "  Next renewal: {due}");
    if let DueReason::Paused { .. } = due.reason {
        let _ = writeln!(
            out,
            "  PAUSED: the CA needs a human to act (see Last error); after fixing it, `systemctl reload certkeeper` (or `certkeeper renew --force {}`) tries at once",
            cert.name
        );
    }
}

/// What the `verify_deploy` endpoints served at the last check of the installed certificate.
fn deploy_lines(out: &mut String, cert: &CertificateConfig, snap: &Snapshot) {
    let Some(v) = &cert.verify_deploy else {
        return;
    };
    let installed = snap.live().map(|l| l.cert.serial_hex.as_str());
    match snap
        .state
        .deploy
        .as_ref()
        .filter(|d| Some(d.serial.as_str()) == installed)
    {
        None => {
            let _ = writeln!(
                out,
                "  Deployed:    not checked yet ({} with SNI {})",
                v.connect.join(", "),
                v.server_name
            );
        }
        Some(d) if d.deployed => {
            let _ = writeln!(out, "  Deployed:    yes: {} serve it", v.connect.join(", "));
        }
        Some(d) => {
            let _ = writeln!(out, "  Deployed:    NO: installed, not deployed");
            for line in d.mismatches() {
                let _ = writeln!(out, "               {line}");
            }
            let _ = writeln!(
                out,
                "               check that the reload hook reloads this server and that it reads {}",
                cert.output.dir.join("fullchain.pem").display()
            );
        }
    }
}

fn problem_lines(out: &mut String, indent: &str, p: &ProblemTrace) {
    let status = p.status.map(|s| format!(" (HTTP {s})")).unwrap_or_default();
    let _ = writeln!(
        out,
        "{indent}Problem: {}{status}: {}",
        p.type_,
        p.detail.as_deref().unwrap_or("(no detail)")
    );
    for s in &p.subproblems {
        let _ = writeln!(
            out,
            "{indent}  - {}{}: {}",
            s.identifier
                .as_ref()
                .map(|i| format!("[{i}] "))
                .unwrap_or_default(),
            s.type_,
            s.detail.as_deref().unwrap_or("(no detail)")
        );
    }
    if let Some(t) = p.retry_after {
        let _ = writeln!(out, "{indent}Retry after: {t}");
    }
    let _ = writeln!(out, "{indent}Advice: {}", p.advice);
}

fn order_section(out: &mut String, t: &OrderTrace) {
    let _ = writeln!(
        out,
        "\nLast order{}{}:",
        t.at.map(|a| format!(" (attempt at {a}"))
            .unwrap_or_else(|| " (".into()),
        t.issuer
            .as_ref()
            .map(|i| format!(", issuer {i})"))
            .unwrap_or_else(|| ")".into())
    );
    match &t.url {
        Some(u) => {
            let _ = writeln!(out, "  URL:         {u}");
            let _ = writeln!(
                out,
                "  Status:      {}",
                t.status.as_deref().unwrap_or("unknown")
            );
        }
        None => out.push_str("  no order was created (the attempt failed before newOrder)\n"),
    }
    if let Some(p) = &t.problem {
        problem_lines(out, "  ", p);
    }
    for a in &t.authorizations {
        let _ = writeln!(
            out,
            "  Authorization {}{}: {}  ({})",
            if a.wildcard { "*." } else { "" },
            a.identifier,
            a.status,
            a.url
        );
        for c in &a.challenges {
            // Only the challenges that were tried (or are the CA's verdict) are of interest.
            if c.status == "pending" && c.problem.is_none() && a.status != "pending" {
                continue;
            }
            let _ = writeln!(out, "    Challenge {}: {}  ({})", c.type_, c.status, c.url);
            if let Some(v) = &c.validated {
                let _ = writeln!(out, "      Validated: {v}");
            }
            if let Some(p) = &c.problem {
                problem_lines(out, "      ", p);
            }
        }
    }
}

fn error_section(out: &mut String, state: &CertState, state_name: &str) {
    let trace_err = state.last_order.as_ref().and_then(|t| t.error.as_ref());
    let last = trace_err
        .map(|e| e.message.clone())
        .or_else(|| state.retry.last_error.clone());
    out.push_str("\nLast error:\n");
    let Some(message) = last else {
        out.push_str("  none\n");
        return;
    };
    if state.last_success.is_some()
        && state
            .last_error_at
            .is_some_and(|e| Some(e) < state.last_success)
        && trace_err.is_none()
    {
        out.push_str("  none since the last success\n");
        return;
    }
    let _ = writeln!(out, "  {message}");
    if let Some(p) = trace_err.and_then(|e| e.problem.as_ref()) {
        let _ = writeln!(out, "  What to do: {}", p.advice);
        if let Some(t) = p.retry_after {
            let _ = writeln!(out, "  The CA accepts a new attempt after {t}.");
        }
    } else if let Some(e) = trace_err {
        let _ = writeln!(
            out,
            "  What to do: {}",
            if e.retryable {
                "see the message above; certkeeper retries on its own with backoff"
            } else {
                "fix the cause above; certkeeper keeps retrying with backoff, and at once on a reload"
            }
        );
    }
    if state.retry.failures > 0 {
        let _ = write!(
            out,
            "  Failures since the last success: {}",
            state.retry.failures
        );
        match (state.retry.paused, state.retry.next_retry) {
            (true, t) => {
                let _ = writeln!(
                    out,
                    "; paused: tried again {} and at once on `systemctl reload certkeeper` — after fixing the cause \
                     (issuer, DNS, CAA, account) you can also run `certkeeper renew --force {name}`",
                    t.map(|t| format!("at {t}")).unwrap_or_else(|| "now".into()),
                    name = state_name
                );
            }
            (false, Some(t)) => {
                let _ = writeln!(out, "; next attempt at {t}");
            }
            (false, None) => out.push('\n'),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{self, AuthzTrace, ChallengeTrace, ErrorTrace, SubProblemTrace};

    fn cfg(dir: &std::path::Path) -> Arc<Config> {
        let text = format!(
            r#"
state_dir = "{d}/state"
[issuer.le]
directory = "https://127.0.0.1:1/dir"
[[issuer.le.solver]]
http01 = {{ self_check = {{ port = 5002, resolve = ["127.0.0.1"] }} }}
[certificate.www]
issuer = "le"
domains = ["www.example.test"]
output = {{ dir = "{d}/out" }}
"#,
            d = dir.display()
        );
        let path = dir.join("certkeeper.toml");
        std::fs::write(&path, &text).unwrap();
        Arc::new(crate::config::load(&path).unwrap())
    }

    #[test]
    fn webroot_solver_line_shows_the_self_check() {
        let on = SolverKind::Webroot {
            path: "/var/www/acme".into(),
            self_check: true,
            self_check_target: Default::default(),
        };
        assert_eq!(
            describe_solver(&on, &[]),
            "http-01 via webroot /var/www/acme (self-check on)"
        );
        let off = SolverKind::Webroot {
            path: "/var/www/acme".into(),
            self_check: false,
            self_check_target: Default::default(),
        };
        assert_eq!(
            describe_solver(&off, &[]),
            "http-01 via webroot /var/www/acme (self-check off)"
        );
    }

    #[test]
    fn unknown_name_lists_the_configured_ones() {
        let dir = tempfile::tempdir().unwrap();
        let err = explain(cfg(dir.path()), "nope").unwrap_err().to_string();
        assert_eq!(
            err,
            "no certificate named \"nope\" in the config; configured: www"
        );
    }

    #[test]
    fn shows_config_order_challenge_problem_and_advice() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cfg(dir.path());
        let text = explain(cfg.clone(), "www").unwrap();
        assert!(text.contains("Certificate: www"), "{text}");
        assert!(
            text.contains("www.example.test             le: http-01 via listener 127.0.0.1:8402 (self-check via port 5002 at 127.0.0.1)"),
            "{text}"
        );
        assert!(text.contains("none installed in"), "{text}");
        assert!(text.contains("none recorded yet"), "{text}");

        let st = store::FileStorage::open(&cfg.state_dir).unwrap();
        let problem = ProblemTrace {
            type_: "urn:ietf:params:acme:error:unauthorized".into(),
            detail: Some("Invalid response from http://www.example.test/x: 404".into()),
            status: Some(403),
            subproblems: vec![SubProblemTrace {
                type_: "urn:ietf:params:acme:error:unauthorized".into(),
                detail: Some("sub detail".into()),
                identifier: Some("dns:www.example.test".into()),
            }],
            advice: "serve the token".into(),
            retry_after: None,
        };
        let state = CertState {
            last_order: Some(OrderTrace {
                at: Some(jiff::Timestamp::UNIX_EPOCH),
                issuer: Some("le".into()),
                url: Some("https://ca/order/1".into()),
                status: Some("invalid".into()),
                problem: None,
                authorizations: vec![AuthzTrace {
                    url: "https://ca/authz/1".into(),
                    identifier: "www.example.test".into(),
                    wildcard: false,
                    status: "invalid".into(),
                    challenges: vec![ChallengeTrace {
                        type_: "http-01".into(),
                        status: "invalid".into(),
                        url: "https://ca/chal/1".into(),
                        validated: None,
                        problem: Some(problem.clone()),
                    }],
                }],
                error: Some(ErrorTrace {
                    message: "issuer le: it failed".into(),
                    retryable: true,
                    problem: Some(problem),
                }),
            }),
            ..CertState::default()
        };
        use store::Storage as _;
        st.store("certs/www.json", &serde_json::to_vec(&state).unwrap())
            .unwrap();
        let text = explain(cfg, "www").unwrap();
        for want in [
            "URL:         https://ca/order/1",
            "Status:      invalid",
            "Authorization www.example.test: invalid  (https://ca/authz/1)",
            "Challenge http-01: invalid  (https://ca/chal/1)",
            "Problem: urn:ietf:params:acme:error:unauthorized (HTTP 403): Invalid response",
            "- [dns:www.example.test] urn:ietf:params:acme:error:unauthorized: sub detail",
            "Advice: serve the token",
            "Last error:\n  issuer le: it failed\n  What to do: serve the token",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        // Order of the sections is the order a failure travels.
        let pos = |s: &str| text.find(s).unwrap();
        assert!(pos("Certificate:") < pos("Live certificate:"));
        assert!(pos("Live certificate:") < pos("Last order"));
        assert!(pos("Last order") < pos("Last error:"));
    }
}
