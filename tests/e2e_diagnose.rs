//! Diagnosis end to end, through the `certkeeper` binary against pebble: the HTTP-01 self-check stops
//! a broken setup before the CA is asked, `explain` shows the CA's problem and advice for a failed
//! challenge, and `check` probes the directory, its TLS, the account, output directories and the
//! HTTP-01 listener address.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use support::certkeeper::{CliOutput, command_at, run_command};
use support::{Pebble, PebbleOpts, free_port};

/// A web server that answers every request with nginx's 404, like nginx without the proxy location.
async fn nginx_404() -> (u16, tokio_util::sync::CancellationToken) {
    let app = axum::Router::new().fallback(|| async {
        (
            StatusCode::NOT_FOUND,
            [("server", "nginx/1.22.1")],
            "<html>\r\n<head><title>404 Not Found</title></head>\r\n</html>\r\n",
        )
            .into_response()
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let stop = tokio_util::sync::CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(l, app)
            .with_graceful_shutdown(s.cancelled_owned())
            .await;
    });
    (port, stop)
}

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
}

/// Write a config for one certificate `www` (www.example.test) at `pebble`, with `solver` as the
/// http01 table and certkeeper's listener on `listen_port`.
fn write_config(pebble: &Pebble, listen_port: u16, solver: &str, ca_pem: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("ca.pem"), ca_pem).unwrap();
    let config = d.join("certkeeper.toml");
    write(&config, pebble, listen_port, solver, d);
    Setup { dir, config }
}

fn write(config: &Path, pebble: &Pebble, listen_port: u16, solver: &str, d: &Path) {
    let text = format!(
        r#"state_dir = "{d}/state"

[http01]
listen = ["127.0.0.1:{listen_port}"]

[issuer.pebble]
directory = "{dir}"
ca_bundle = "{d}/ca.pem"

[[issuer.pebble.solver]]
http01 = {solver}

[certificate.www]
issuer = "pebble"
domains = ["www.example.test"]
output = {{ dir = "{d}/tls/www" }}
"#,
        d = d.display(),
        dir = pebble.directory_url(),
    );
    std::fs::write(config, text).unwrap();
}

/// `certkeeper ARGS` on `config` with logs at `warn` (these tests read the report).
async fn run_warn(config: &Path, args: &[&str]) -> CliOutput {
    let mut cmd = command_at(config, args);
    cmd.env("CERTKEEPER_LOG", "warn");
    run_command(cmd, args).await
}

async fn pebble(http_port: u16) -> Option<Pebble> {
    if !support::pebble::available() {
        eprintln!("pebble is not installed; skipping");
        return None;
    }
    Some(
        Pebble::start(PebbleOpts {
            http_port,
            nonce_reject: Some(0),
            ..PebbleOpts::default()
        })
        .await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_check_then_ca_failure_are_explained() {
    // The CA's HTTP-01 port is served by an "nginx" that does not proxy the challenge path.
    let (wrong_port, stop) = nginx_404().await;
    let Some(pebble) = pebble(wrong_port).await else {
        return;
    };
    let listen = free_port();
    // 1. The self-check, pointed where the CA looks, catches it before the CA is asked.
    let solver = format!("{{ self_check = {{ port = {wrong_port}, resolve = [\"127.0.0.1\"] }} }}");
    let s = write_config(&pebble, listen, &solver, pebble.ca_pem());
    let out = run_warn(&s.config, &["renew"]).await;
    let all = out.to_string();
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("HTTP-01 self-check failed for www.example.test"),
        "{all}"
    );
    assert!(
        all.contains("HTTP 404 Not Found from server \"nginx/1.22.1\""),
        "{all}"
    );
    assert!(
        all.contains("the token is not reachable through the public address"),
        "{all}"
    );
    assert!(
        all.contains(&format!(
            "location /.well-known/acme-challenge/ {{ proxy_pass http://127.0.0.1:{listen};"
        )),
        "{all}"
    );
    let ex = run_warn(&s.config, &["explain", "www"]).await;
    let ex_text = ex.to_string();
    assert!(ex.status.success(), "{ex_text}");
    // The CA was never asked: the authorization is still pending, and the error is the self-check's.
    assert!(
        ex_text.contains("Authorization www.example.test: pending"),
        "{ex_text}"
    );
    assert!(ex_text.contains("Status:      pending"), "{ex_text}");
    assert!(
        ex_text.contains("Last error:\n  issuer ")
            && ex_text.contains(": certificate 'www': HTTP-01 self-check failed"),
        "{ex_text}"
    );
    assert!(
        ex_text.contains("Failures since the last success: 1"),
        "{ex_text}"
    );

    // 2. With the self-check off the CA tries, fails, and explain shows its problem and advice.
    write(
        &s.config,
        &pebble,
        listen,
        "{ self_check = false }",
        s.dir.path(),
    );
    let out = run_warn(&s.config, &["renew", "--force"]).await;
    assert!(!out.status.success(), "{}", out.to_string());
    let ex = run_warn(&s.config, &["explain", "www"]).await;
    let ex_text = ex.to_string();
    assert!(ex.status.success(), "{ex_text}");
    for want in [
        "Certificate: www",
        "www.example.test             pebble: http-01 via listener",
        "(self-check off)",
        "none installed in",
        "Status:      invalid",
        "Authorization www.example.test: invalid",
        "Challenge http-01: invalid",
        "Problem: urn:ietf:params:acme:error:",
        "Advice: the CA could not verify control of www.example.test; it saw:",
        "What to do: the CA could not verify control of www.example.test",
        "Failures since the last success: ",
    ] {
        assert!(ex_text.contains(want), "missing {want:?} in\n{ex_text}");
    }
    assert!(
        ex_text.contains(&format!("URL:         {}", "https://127.0.0.1:")),
        "{ex_text}"
    );
    // The CA's detail names the 404 it got; the advice for it points at the proxy location.
    assert!(ex_text.contains("404"), "{ex_text}");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn correct_setup_passes_self_check_and_check_probes_report() {
    let listen = free_port();
    let Some(pebble) = pebble(listen).await else {
        return;
    };
    // The self-check goes exactly where the CA goes: certkeeper's own listener.
    let solver = format!("{{ self_check = {{ port = {listen}, resolve = [\"127.0.0.1\"] }} }}");
    let s = write_config(&pebble, listen, &solver, pebble.ca_pem());

    // check before anything was issued: directory and TLS fine, no account yet, all OK.
    let out = run_warn(&s.config, &["check"]).await;
    let all = out.to_string();
    assert!(out.status.success(), "{all}");
    for want in [
        "OK   config ",
        &format!(
            "OK   issuer pebble: directory {} reachable, TLS verified with ca_bundle",
            pebble.directory_url()
        ),
        "OK   issuer pebble: no account yet",
        "OK   certificate www: output directory",
        &format!("OK   http01.listen 127.0.0.1:{listen} is free"),
    ] {
        assert!(all.contains(want), "missing {want:?} in\n{all}");
    }

    let out = run_warn(&s.config, &["renew"]).await;
    assert!(out.status.success(), "{}", out.to_string());
    let ex = run_warn(&s.config, &["explain", "www"]).await;
    let ex_text = ex.to_string();
    assert!(ex.status.success(), "{ex_text}");
    for want in [
        "Serial:",
        "days left",
        "Status:      valid",
        "Authorization www.example.test: valid",
        "Challenge http-01: valid",
        "Last error:\n  none",
    ] {
        assert!(ex_text.contains(want), "missing {want:?} in\n{ex_text}");
    }

    // After issuance the account exists for the stored key.
    let out = run_warn(&s.config, &["check"]).await;
    let all = out.to_string();
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("OK   issuer pebble: account https://127.0.0.1:"),
        "{all}"
    );
    assert!(all.contains("exists for the stored key"), "{all}");

    // The listener address taken by another program, and a ca_bundle of another CA: FAIL with fixes.
    let taken = std::net::TcpListener::bind(("127.0.0.1", listen)).unwrap();
    let (other_ca, _, _) = support::pebble::make_tls_certs();
    std::fs::write(s.dir.path().join("ca.pem"), other_ca).unwrap();
    let out = run_warn(&s.config, &["check"]).await;
    let all = out.to_string();
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains(&format!(
            "FAIL http01.listen 127.0.0.1:{listen} is in use by another program"
        )),
        "{all}"
    );
    assert!(
        all.contains("FAIL issuer pebble: the CA's TLS certificate does not verify"),
        "{all}"
    );
    // --offline skips the CA: the bad bundle still parses, so only the listener fails.
    let out = run_warn(&s.config, &["check", "--offline"]).await;
    let all = out.to_string();
    assert!(!all.contains("reachable"), "{all}");
    assert!(all.contains("FAIL http01.listen"), "{all}");
    drop(taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eab_required_is_reported_by_check_and_explain() {
    if !support::pebble::available() {
        eprintln!("pebble is not installed; skipping");
        return;
    }
    let listen = free_port();
    let pebble = Pebble::start(PebbleOpts {
        http_port: listen,
        nonce_reject: Some(0),
        eab_keys: Some(vec![(
            "kid-1".into(),
            "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W".into(),
        )]),
        ..PebbleOpts::default()
    })
    .await;
    let s = write_config(&pebble, listen, "{ self_check = false }", pebble.ca_pem());
    let out = run_warn(&s.config, &["check"]).await;
    let all = out.to_string();
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("FAIL issuer pebble: the CA requires external account binding — set `eab = {"),
        "{all}"
    );

    // A wrong HMAC key: the CA refuses the account; explain shows no order and the EAB advice.
    let text_cfg = std::fs::read_to_string(&s.config).unwrap().replace(
        "ca_bundle =",
        &format!(
            "eab = {{ kid = \"kid-1\", hmac_key_file = \"{}/eab.key\" }}\nca_bundle =",
            s.dir.path().display()
        ),
    );
    std::fs::write(&s.config, text_cfg).unwrap();
    std::fs::write(
        s.dir.path().join("eab.key"),
        "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ",
    )
    .unwrap();
    let out = run_warn(&s.config, &["renew"]).await;
    assert!(!out.status.success(), "{}", out.to_string());
    let ex = run_warn(&s.config, &["explain", "www"]).await;
    let ex_text = ex.to_string();
    assert!(ex.status.success(), "{ex_text}");
    assert!(
        ex_text.contains("no order was created (the attempt failed before newOrder)"),
        "{ex_text}"
    );
    for want in [
        "urn:ietf:params:acme:error:unauthorized",
        "What to do: the CA refused the account credentials: check the EAB kid and HMAC key",
        "certkeeper renew --force www",
    ] {
        assert!(ex_text.contains(want), "missing {want:?} in\n{ex_text}");
    }
}

/// The self-check through a real nginx: a correct proxy passes; a proxy that drops the Host header,
/// and an nginx without the challenge location, are each named with their fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_check_through_real_nginx() {
    use certkeeper::challenge::http01::{
        Http01Server, Http01Solver, SelfCheckTarget, TokenStore, selfcheck,
    };
    use certkeeper::challenge::{ChallengeCtx, ChallengeKind, Solver as _};
    use support::nginx::{Nginx, NginxOpts, nginx_available};
    if !nginx_available() {
        eprintln!("nginx is not installed; skipping");
        return;
    }
    let tokens = TokenStore::new();
    let server = Http01Server::bind(&["127.0.0.1:0".parse().unwrap()], tokens.clone()).unwrap();
    let listener = server.local_addrs()[0];
    let stop = tokio_util::sync::CancellationToken::new();
    let _t = server.serve(stop.clone()).unwrap();
    let certs = tempfile::tempdir().unwrap();
    let nginx = Nginx::start(NginxOpts {
        cert_dir: certs.path().to_path_buf(),
        acme_upstream: Some(listener),
        server_names: vec!["www.example.test".into()],
        placeholder_cert: true,
        ..NginxOpts::default()
    })
    .expect("start nginx");
    let target = SelfCheckTarget {
        port: nginx.http_port(),
        resolve: vec!["127.0.0.1".parse().unwrap()],
    };
    let solver =
        Http01Solver::new(tokens.clone(), true).with_self_check(target.clone(), vec![listener]);
    let ch = ChallengeCtx {
        cert_name: "www".into(),
        identifier: "www.example.test".into(),
        is_ip: false,
        wildcard: false,
        kind: ChallengeKind::Http01,
        token: "tokNginx".into(),
        key_authorization: "tokNginx.thumb".into(),
        persist: None,
    };
    solver.present(&ch).await.unwrap();
    solver
        .wait(&ch)
        .await
        .expect("self-check through a correct nginx proxy");

    // The same proxy without `proxy_set_header Host`: nginx sends the upstream address as Host.
    let conf = std::fs::read_to_string(nginx.conf_path()).unwrap();
    let no_host: String = conf
        .lines()
        .filter(|l| !l.contains("proxy_set_header Host"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_ne!(conf, no_host, "the harness config has no Host line");
    std::fs::write(nginx.conf_path(), &no_host).unwrap();
    nginx.reload().unwrap();
    let mut msg = String::new();
    // The reload is asynchronous in nginx; wait (bounded) until the new config answers.
    for _ in 0..20 {
        match selfcheck::self_check(&ch, &target, &[listener]).await {
            Ok(()) => tokio::time::sleep(Duration::from_millis(500)).await,
            Err(e) => {
                msg = e.message;
                break;
            }
        }
    }
    assert!(msg.contains("proxy_set_header Host $host;"), "{msg}");

    // No challenge location at all: nginx's own 404.
    let no_location = no_host.replace("location /.well-known/acme-challenge/", "location /unused/");
    std::fs::write(nginx.conf_path(), &no_location).unwrap();
    nginx.reload().unwrap();
    let mut msg = String::new();
    for _ in 0..20 {
        match selfcheck::self_check(&ch, &target, &[listener]).await {
            Err(e) if e.message.contains("from server \"nginx") => {
                msg = e.message;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    assert!(
        msg.contains("the token is not reachable through the public address"),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("proxy_pass http://{listener};")),
        "{msg}"
    );
    stop.cancel();
}
