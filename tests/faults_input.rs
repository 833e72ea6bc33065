//! Bad input at the edges, through the `certkeeper` binary: a table of malformed configs for
//! `certkeeper check` (one clear error with file and line each), and garbage or oversized requests to
//! the HTTP-01 listener of a running daemon (4xx, never a crash).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use support::certkeeper::{Daemon, daemon_command_at, std_command_at};
use support::process::run_bounded;

/// A valid config; `{STATE}`, `{OUT}` and `{PORT}` are filled in.
const BASE: &str = r#"state_dir = "{STATE}"

[http01]
listen = ["127.0.0.1:{PORT}"]

[issuer.ca]
directory = "https://127.0.0.1:9/dir"
contact = ["mailto:admin@example.com"]

[[issuer.ca.solver]]
http01 = { self_check = false }

[certificate.www]
issuer = "ca"
domains = ["www.example.com", "example.com"]
key = "ecdsa-p256"
output = { dir = "{OUT}" }
"#;

struct Case {
    what: &'static str,
    /// (from, to) replacements applied to BASE; the line holding `# <-` is where the error must point.
    edits: &'static [(&'static str, &'static str)],
    /// Appended to the main file.
    append: &'static str,
    /// An included file `conf.d/extra.toml` (the main file then includes `conf.d/*.toml`).
    include: Option<&'static str>,
    /// Words the error must contain.
    expect: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        what: "TOML syntax error",
        edits: &[(
            r#"domains = ["www.example.com", "example.com"]"#,
            r#"domains = ["www.example.com", "example.com"]]] # <-"#,
        )],
        append: "",
        include: None,
        expect: &[],
    },
    Case {
        what: "unknown key",
        edits: &[(
            r#"key = "ecdsa-p256""#,
            "key = \"ecdsa-p256\"\ncolour = \"blue\" # <-",
        )],
        append: "",
        include: None,
        expect: &["colour"],
    },
    Case {
        what: "wrong type",
        edits: &[(
            r#"domains = ["www.example.com", "example.com"]"#,
            r#"domains = "www.example.com" # <-"#,
        )],
        append: "",
        include: None,
        expect: &["domains"],
    },
    Case {
        what: "wrong type (number for a duration)",
        edits: &[(
            r#"key = "ecdsa-p256""#,
            "key = \"ecdsa-p256\"\nrenew_before = 30 # <-",
        )],
        append: "",
        include: None,
        expect: &["renew_before"],
    },
    Case {
        what: "unknown issuer",
        edits: &[(r#"issuer = "ca""#, r#"issuer = "nope" # <-"#)],
        append: "",
        include: None,
        expect: &["nope"],
    },
    Case {
        what: "unknown key type",
        edits: &[(r#"key = "ecdsa-p256""#, r#"key = "rsa-1024" # <-"#)],
        append: "",
        include: None,
        expect: &["rsa-1024"],
    },
    Case {
        what: "wildcard with no DNS-01 solver",
        edits: &[(
            r#"domains = ["www.example.com", "example.com"]"#,
            r#"domains = ["*.example.com", "example.com"] # <-"#,
        )],
        append: "",
        include: None,
        expect: &["*.example.com", "dns"],
    },
    Case {
        what: "unreadable secret file",
        edits: &[(
            r#"contact = ["mailto:admin@example.com"]"#,
            "contact = [\"mailto:admin@example.com\"]\neab = { kid = \"k1\", hmac_key_file = \"/nonexistent/certkeeper/eab.key\" } # <-",
        )],
        append: "",
        include: None,
        expect: &["/nonexistent/certkeeper/eab.key"],
    },
    Case {
        what: "duplicate certificate table",
        edits: &[],
        append: "\n[certificate.www] # <-\nissuer = \"ca\"\ndomains = [\"b.example.com\"]\n",
        include: None,
        expect: &["www"],
    },
    Case {
        what: "the same domain twice in one certificate",
        edits: &[(
            r#"domains = ["www.example.com", "example.com"]"#,
            r#"domains = ["www.example.com", "WWW.example.com"] # <-"#,
        )],
        append: "",
        include: None,
        expect: &["www.example.com"],
    },
    Case {
        what: "an included file redefines a certificate",
        edits: &[],
        append: "",
        include: Some(
            "[certificate.www] # <-\nissuer = \"ca\"\ndomains = [\"other.example.com\"]\noutput = { dir = \"/tmp/x\" }\n",
        ),
        expect: &["www"],
    },
    Case {
        what: "unknown key in an included file",
        edits: &[],
        append: "",
        include: Some(
            "[certificate.api]\nissuer = \"ca\"\ndomains = [\"api.example.com\"]\noutput = { dir = \"/tmp/api\" }\nrelaod = [\"true\"] # <-\n",
        ),
        expect: &["relaod"],
    },
    Case {
        what: "unknown DNS provider",
        edits: &[],
        append: "\n[[issuer.ca.solver]]\ndns01 = { provider = \"bogus-dns\" } # <-\n",
        include: None,
        expect: &["bogus-dns"],
    },
    Case {
        what: "a bad duration in a DNS provider table",
        edits: &[],
        append: "\n[[issuer.ca.solver]]\ndns01 = { provider = \"exec\", command = \"/bin/true\", timeout = \"soon\" } # <-\n",
        include: None,
        expect: &["dns01.timeout", "soon"],
    },
    Case {
        what: "a DNS provider table missing a required key, in an included file",
        edits: &[],
        append: "",
        include: Some(
            "[issuer.other]\ndirectory = \"letsencrypt\"\n[[issuer.other.solver]]\ndns01 = { provider = \"rfc2136\", tsig_key = \"k.\", tsig_secret_file = \"tsig.key\" } # <-\n",
        ),
        expect: &["issuer.other.solver[0].dns01", "server"],
    },
    Case {
        what: "a bad duration",
        edits: &[(
            r#"key = "ecdsa-p256""#,
            "key = \"ecdsa-p256\"\nrenew_before = \"thirty days\" # <-",
        )],
        append: "",
        include: None,
        expect: &["renew_before"],
    },
];

fn marker_line(text: &str) -> Option<usize> {
    text.lines().position(|l| l.contains("# <-")).map(|i| i + 1)
}

#[test]
fn malformed_configs_give_one_clear_error_with_file_and_line() {
    let mut failures = Vec::new();
    for case in CASES {
        let dir = tempfile::tempdir().unwrap();
        let mut text = BASE
            .replace("{STATE}", &dir.path().join("state").display().to_string())
            .replace("{OUT}", &dir.path().join("out").display().to_string())
            .replace("{PORT}", "8402");
        for (from, to) in case.edits {
            assert!(text.contains(from), "{}: edit target missing", case.what);
            text = text.replacen(from, to, 1);
        }
        text.push_str(case.append);
        let main = dir.path().join("certkeeper.toml");
        let (bad_file, bad_text) = match case.include {
            Some(inc) => {
                let conf_d = dir.path().join("conf.d");
                std::fs::create_dir_all(&conf_d).unwrap();
                let f = conf_d.join("extra.toml");
                std::fs::write(&f, inc).unwrap();
                text = format!("include = [\"{}/*.toml\"]\n{text}", conf_d.display());
                (f, inc.to_string())
            }
            None => (main.clone(), text.clone()),
        };
        std::fs::write(&main, &text).unwrap();
        let line = marker_line(&bad_text).expect("case has a marker");
        let out = run_bounded(std_command_at(&main, &["check"]), Duration::from_secs(60));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let problems = check_case(case, &out, &err, &bad_file, line);
        if !problems.is_empty() {
            failures.push(format!(
                "{}: {}\n--- stderr:\n{err}--- config:\n{text}",
                case.what,
                problems.join("; ")
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

fn check_case(
    case: &Case,
    out: &std::process::Output,
    err: &str,
    file: &Path,
    line: usize,
) -> Vec<String> {
    let mut p = Vec::new();
    if out.status.success() {
        p.push("check exited 0".into());
    }
    let file_s = file.display().to_string();
    let located: Vec<&str> = err.lines().filter(|l| l.contains(&file_s)).collect();
    if located.len() != 1 {
        p.push(format!(
            "expected exactly one error line naming {file_s}, got {}",
            located.len()
        ));
    }
    if !err.contains(&format!("{file_s}:{line}:")) {
        p.push(format!("the error does not point at {file_s}:{line}"));
    }
    for w in case.expect {
        if !err.to_lowercase().contains(&w.to_lowercase()) {
            p.push(format!("the error does not mention {w:?}"));
        }
    }
    if err.contains("panicked") {
        p.push("certkeeper panicked".into());
    }
    p
}

#[test]
fn missing_and_unreadable_config_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let out = run_bounded(
        std_command_at(&missing, &["check"]),
        Duration::from_secs(60),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&missing.display().to_string()) && err.contains("No such file"),
        "{err}"
    );
    // A directory, and binary garbage, as the config.
    let garbage = dir.path().join("garbage.toml");
    std::fs::write(&garbage, [0xffu8, 0xfe, 0x00, 0x01, b'=', b'[']).unwrap();
    for path in [dir.path().to_path_buf(), garbage] {
        let out = run_bounded(std_command_at(&path, &["check"]), Duration::from_secs(60));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{}: {err}", path.display());
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// Send raw bytes and read what comes back (bounded); the status code when there is one.
fn raw(port: u16, bytes: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the HTTP-01 listener");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    // The server may answer (and close) before reading everything; a failed write is fine then.
    // No half-close: a server may take EOF on its read side as the client giving up.
    let _ = s.write_all(bytes);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                // The status line is all we need; keep-alive connections stay open after it.
                if buf.windows(2).any(|w| w == b"\r\n") || buf.len() > 1 << 20 {
                    break;
                }
            }
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let first = text.lines().next()?;
    first.split_whitespace().nth(1)?.parse().ok()
}

fn get(port: u16, path: &str) -> Option<u16> {
    raw(
        port,
        format!("GET {path} HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
}

#[test]
fn garbage_and_oversized_requests_to_the_http01_listener_get_4xx() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let text = BASE
        .replace("{STATE}", &dir.path().join("state").display().to_string())
        .replace("{OUT}", &dir.path().join("out").display().to_string())
        .replace("{PORT}", &port.to_string());
    let config = dir.path().join("certkeeper.toml");
    std::fs::write(&config, text).unwrap();
    let log_path = dir.path().join("daemon.log");
    // The CA (127.0.0.1:9) is unreachable: the daemon fails its issuance and keeps serving.
    let mut daemon = Daemon::start(daemon_command_at(&config), log_path.clone());
    let dump = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(daemon.exited().is_none(), "daemon exited:\n{}", dump());
        assert!(
            Instant::now() < deadline,
            "listener never came up:\n{}",
            dump()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let long_path = format!("/.well-known/acme-challenge/{}", "A".repeat(100_000));
    let long_token = format!("/.well-known/acme-challenge/{}", "A".repeat(300));
    let big_header = format!(
        "GET /.well-known/acme-challenge/abc HTTP/1.1\r\nHost: www.example.com\r\nX-Pad: {}\r\n\r\n",
        "x".repeat(200_000)
    );
    let many_headers = format!(
        "GET /.well-known/acme-challenge/abc HTTP/1.1\r\nHost: www.example.com\r\n{}\r\n",
        (0..500)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    let mut big_post =
        b"POST /.well-known/acme-challenge/abc HTTP/1.1\r\nHost: www.example.com\r\nContent-Length: 10485760\r\n\r\n"
            .to_vec();
    big_post.extend(std::iter::repeat_n(b'z', 256 * 1024));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("binary garbage", b"\x00\xff\x13\x37garbage\r\n\r\n".to_vec()),
        ("a TLS ClientHello", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n".to_vec()),
        ("a bad request line", b"GET\r\n\r\n".to_vec()),
        ("an invalid method", b"BR EW / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("an unknown method", b"BREW /.well-known/acme-challenge/abc HTTP/1.1\r\nHost: www.example.com\r\n\r\n".to_vec()),
        ("a 100 kB path", format!("GET {long_path} HTTP/1.1\r\nHost: www.example.com\r\n\r\n").into_bytes()),
        ("a 300-character token", format!("GET {long_token} HTTP/1.1\r\nHost: www.example.com\r\n\r\n").into_bytes()),
        ("a 200 kB header", big_header.into_bytes()),
        ("500 headers", many_headers.into_bytes()),
        ("a 10 MB POST body", big_post),
        ("path traversal", b"GET /.well-known/acme-challenge/../../../etc/passwd HTTP/1.1\r\nHost: www.example.com\r\n\r\n".to_vec()),
        ("encoded traversal", b"GET /.well-known/acme-challenge/..%2F..%2Fetc%2Fpasswd HTTP/1.1\r\nHost: www.example.com\r\n\r\n".to_vec()),
        ("a token with bad characters", b"GET /.well-known/acme-challenge/a%00b%FF HTTP/1.1\r\nHost: www.example.com\r\n\r\n".to_vec()),
        ("an unknown token", b"GET /.well-known/acme-challenge/unknownToken_123 HTTP/1.1\r\nHost: www.example.com\r\n\r\n".to_vec()),
        ("another path", b"GET /admin HTTP/1.1\r\nHost: www.example.com\r\n\r\n".to_vec()),
        ("a garbage Host", b"GET /.well-known/acme-challenge/abc HTTP/1.1\r\nHost: \xff\xfe:::\r\n\r\n".to_vec()),
        ("bad chunked encoding", b"POST /.well-known/acme-challenge/abc HTTP/1.1\r\nHost: www.example.com\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nnot-a-chunk\r\n".to_vec()),
        ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()),
    ];
    let mut bad = Vec::new();
    for (what, bytes) in &cases {
        let status = raw(port, bytes);
        match status {
            Some(s) if (400..500).contains(&s) => {}
            // An HTTP/1-only server has no HTTP/1 answer for the HTTP/2 prior-knowledge preface: it
            // closes the connection, which is the correct refusal.
            None if what.starts_with("HTTP/2") => {}
            other => bad.push(format!("{what}: got {other:?}, expected a 4xx")),
        }
        if let Some(s) = daemon.exited() {
            panic!("the daemon died ({s}) after {what}:\n{}", dump());
        }
    }
    // Many idle connections at once from another address (127.0.0.2: loopback is all local), more
    // than its per-address cap, then a normal request from 127.0.0.1.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let idle: Vec<TcpStream> = (0..100)
        .filter_map(|_| {
            rt.block_on(async {
                let s = tokio::net::TcpSocket::new_v4().ok()?;
                s.bind("127.0.0.2:0".parse().unwrap()).ok()?;
                let s = s.connect(([127, 0, 0, 1], port).into()).await.ok()?;
                s.into_std().ok()
            })
        })
        .collect();
    assert_eq!(
        get(port, "/.well-known/acme-challenge/unknownToken_123"),
        Some(404),
        "answers with 100 idle connections open"
    );
    drop(idle);
    assert!(daemon.exited().is_none(), "daemon exited:\n{}", dump());
    assert!(
        bad.is_empty(),
        "{}\n\ndaemon log:\n{}",
        bad.join("\n"),
        dump()
    );
    assert!(!dump().contains("panicked"), "{}", dump());
}
