//! Property tests: the config parser and the ACME response parsing never panic on arbitrary or
//! mutated input, and config errors always carry the file and a line.

use std::path::Path;

use certkeeper::acme::client::{parse_links, parse_retry_after};
use certkeeper::acme::{Authorization, Directory, OrderBody, Problem};
use certkeeper::config::Config;
use proptest::prelude::*;

/// A valid config touching most sections (its TSIG secret file is written by [`setup`]).
const VALID: &str = r#"state_dir = "/tmp/certkeeper-proptest/state"

[http01]
listen = ["127.0.0.1:8402"]

[daemon]
max_concurrent = 4
hook_timeout = "60s"

[issuer.le]
directory = "https://127.0.0.1:14000/dir"
contact = ["mailto:admin@example.com"]
account_key = "ecdsa-p256"

[[issuer.le.solver]]
http01 = { self_check = true }

[[issuer.le.solver]]
selector = { dns_zones = ["example.com"] }
dns01 = { provider = "rfc2136", server = "127.0.0.1:53", tsig_key = "certkeeper.", tsig_algorithm = "hmac-sha256", tsig_secret_file = "/tmp/certkeeper-proptest/tsig.key" }
propagation = { check = true, timeout = "120s", interval = "2s" }

[certificate.www]
issuer = "le"
domains = ["example.com", "www.example.com", "*.example.com"]
key = "ecdsa-p256"
renew_before = "30d"
output = { dir = "/tmp/certkeeper-proptest/www", key_mode = "0640" }
reload = ["true"]
"#;

const PATH: &str = "/tmp/certkeeper-proptest/certkeeper.toml";

/// Write the secret file the base config names (same content in every process, so races are harmless).
fn setup() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::fs::create_dir_all("/tmp/certkeeper-proptest").unwrap();
        std::fs::write("/tmp/certkeeper-proptest/tsig.key", "c2VjcmV0\n").unwrap();
    });
}

fn check_config(text: &str) -> Result<(), TestCaseError> {
    setup();
    if let Err(e) = Config::from_str(text, Path::new(PATH)) {
        let msg = e.to_string();
        prop_assert!(!msg.is_empty(), "empty error");
        let diags = e.diagnostics();
        prop_assert!(!diags.is_empty(), "no diagnostics for: {msg}");
        for d in diags {
            // Errors about the main file (no includes here) carry its name and a line.
            prop_assert_eq!(d.file.as_path(), Path::new(PATH), "file of {}", d);
            prop_assert!(
                d.position
                    .is_some_and(|(l, c)| l >= 1 && c >= 1 && l <= text.lines().count().max(1) + 1),
                "no or bad position in {:?} for\n{}",
                d,
                text
            );
            let prefix = format!("{}:", PATH);
            prop_assert!(d.to_string().starts_with(&prefix));
        }
    }
    Ok(())
}

/// One mutation of the valid config: delete, duplicate, or replace a byte range, or insert text.
#[derive(Clone, Debug)]
enum Mutation {
    Delete(usize, usize),
    Insert(usize, String),
    Replace(usize, String),
    DupLine(usize),
    SwapLines(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let snippet = prop_oneof![
        Just("\"".to_string()),
        Just("[".to_string()),
        Just("]]".to_string()),
        Just("{".to_string()),
        Just("=".to_string()),
        Just("\n".to_string()),
        Just("#".to_string()),
        Just("\"\"\"".to_string()),
        Just("'".to_string()),
        Just("1e999".to_string()),
        Just("-0".to_string()),
        Just("true".to_string()),
        Just("\n[certificate.www]\n".to_string()),
        Just("\n[issuer.x]\n".to_string()),
        Just("*.".to_string()),
        Just("\u{0}".to_string()),
        Just("é".to_string()),
        "[ -~]{0,12}",
        any::<String>(),
    ];
    prop_oneof![
        (0usize..2000, 1usize..40).prop_map(|(a, n)| Mutation::Delete(a, n)),
        (0usize..2000, snippet.clone()).prop_map(|(a, s)| Mutation::Insert(a, s)),
        (0usize..2000, snippet).prop_map(|(a, s)| Mutation::Replace(a, s)),
        (0usize..60).prop_map(Mutation::DupLine),
        (0usize..60, 0usize..60).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
    ]
}

fn char_floor(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn apply(text: &str, m: &Mutation) -> String {
    match m {
        Mutation::Delete(a, n) => {
            let a = char_floor(text, *a);
            let b = char_floor(text, a + n);
            format!("{}{}", &text[..a], &text[b..])
        }
        Mutation::Insert(a, s) => {
            let a = char_floor(text, *a);
            format!("{}{s}{}", &text[..a], &text[a..])
        }
        Mutation::Replace(a, s) => {
            let a = char_floor(text, *a);
            let b = char_floor(text, a + s.len().max(1));
            format!("{}{s}{}", &text[..a], &text[b..])
        }
        Mutation::DupLine(i) => {
            let mut lines: Vec<&str> = text.lines().collect();
            let i = i % lines.len();
            lines.insert(i, lines[i]);
            lines.join("\n")
        }
        Mutation::SwapLines(a, b) => {
            let mut lines: Vec<&str> = text.lines().collect();
            let n = lines.len();
            lines.swap(a % n, b % n);
            lines.join("\n")
        }
    }
}

#[test]
fn the_valid_base_config_is_valid() {
    setup();
    if let Err(e) = Config::from_str(VALID, Path::new(PATH)) {
        panic!("the base config of the mutation tests must be valid: {e}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn mutated_configs_never_panic_and_errors_have_file_and_line(
        muts in proptest::collection::vec(mutation(), 1..4)
    ) {
        let mut text = VALID.to_string();
        for m in &muts {
            text = apply(&text, m);
        }
        check_config(&text)?;
    }

    #[test]
    fn arbitrary_text_as_config_never_panics(text in any::<String>()) {
        check_config(&text)?;
    }

    #[test]
    fn toml_shaped_text_as_config_never_panics(
        text in "([a-z_.\\[\\]]{1,12} ?= ?(\"[ -~]{0,10}\"|[0-9]{1,4}|true|\\[\\]|\\{\\})\n){0,12}"
    ) {
        check_config(&text)?;
    }

    #[test]
    fn acme_json_never_panics(body in any::<Vec<u8>>()) {
        let _ = serde_json::from_slice::<Problem>(&body);
        let _ = serde_json::from_slice::<OrderBody>(&body);
        let _ = serde_json::from_slice::<Authorization>(&body);
        let _ = serde_json::from_slice::<Directory>(&body);
    }

    #[test]
    fn acme_json_shaped_values_never_panic(v in json_value()) {
        let body = v.to_string();
        if let Ok(p) = serde_json::from_str::<Problem>(&body) {
            // Everything derived from a parsed problem is total.
            let _ = p.to_string();
            let _ = p.advice();
            let _ = p.kind();
            let _ = certkeeper::engine::decide(
                &certkeeper::engine::Cause::Problem(Box::new(p.clone())),
                jiff::Timestamp::now(),
                None,
                &certkeeper::scheduler::Backoff::default(),
            );
            let _ = p.effective_status();
        }
        if let Ok(o) = serde_json::from_str::<OrderBody>(&body) {
            let _ = format!("{o:?}");
        }
        if let Ok(a) = serde_json::from_str::<Authorization>(&body) {
            let _ = a.challenge("http-01");
        }
        let _ = serde_json::from_str::<Directory>(&body);
    }

    #[test]
    fn problem_documents_with_odd_fields_never_panic(
        type_ in prop_oneof![
            Just("urn:ietf:params:acme:error:rateLimited".to_string()),
            Just("urn:ietf:params:acme:error:badNonce".to_string()),
            Just("urn:ietf:params:acme:error:unauthorized".to_string()),
            Just("urn:ietf:params:acme:error:caa".to_string()),
            Just("urn:ietf:params:acme:error:externalAccountRequired".to_string()),
            Just("urn:ietf:params:acme:error:".to_string()),
            any::<String>(),
        ],
        detail in any::<String>(),
        status in any::<i64>(),
        sub in proptest::collection::vec((any::<String>(), any::<String>()), 0..4),
    ) {
        let subproblems: Vec<serde_json::Value> = sub
            .iter()
            .map(|(t, d)| serde_json::json!({"type": t, "detail": d, "identifier": {"type": "dns", "value": d}}))
            .collect();
        let body = serde_json::json!({
            "type": type_, "detail": detail, "status": status, "subproblems": subproblems,
        });
        if let Ok(p) = serde_json::from_value::<Problem>(body) {
            let _ = p.to_string();
            let _ = p.advice();
            let _ = certkeeper::engine::decide(
                &certkeeper::engine::Cause::Problem(Box::new(p.clone())),
                jiff::Timestamp::now(),
                None,
                &certkeeper::scheduler::Backoff::default(),
            );
            let _ = p.effective_status();
        }
    }

    #[test]
    fn retry_after_never_panics(v in any::<String>(), secs in any::<u64>()) {
        let now = jiff::Timestamp::now();
        let _ = parse_retry_after(&v, now);
        let at = parse_retry_after(&secs.to_string(), now).expect("delay seconds parse");
        prop_assert!(at >= now);
        let _ = parse_retry_after(&format!("{secs}, {v}"), jiff::Timestamp::MAX);
        let _ = parse_retry_after(&secs.to_string(), jiff::Timestamp::MAX);
    }

    #[test]
    fn link_headers_never_panic(v in any::<String>(), rel in "[a-z-]{0,10}") {
        let _ = parse_links(&v, &rel);
        let _ = parse_links(&format!("<{v}>;rel=\"{rel}\""), &rel);
        let _ = parse_links(&format!("<{v}>,<{v}>;rel={rel}, <"), &rel);
    }

    #[test]
    fn link_header_targets_are_found(url in "https://[a-z]{1,10}/[a-zA-Z0-9/]{0,20}") {
        let header = format!("<{url}>;rel=\"alternate\", <https://x/index>;rel=\"index\"");
        prop_assert_eq!(parse_links(&header, "alternate"), vec![url]);
    }
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null)),
        prop_oneof![
            Just("valid".to_string()),
            Just("pending".to_string()),
            Just("invalid".to_string()),
            Just("dns".to_string()),
            Just("http-01".to_string()),
            Just("2026-01-01T00:00:00Z".to_string()),
            Just("urn:ietf:params:acme:error:malformed".to_string()),
            any::<String>(),
        ]
        .prop_map(serde_json::Value::from),
    ];
    let keys = prop_oneof![
        Just("type".to_string()),
        Just("status".to_string()),
        Just("detail".to_string()),
        Just("identifier".to_string()),
        Just("identifiers".to_string()),
        Just("value".to_string()),
        Just("challenges".to_string()),
        Just("authorizations".to_string()),
        Just("finalize".to_string()),
        Just("certificate".to_string()),
        Just("expires".to_string()),
        Just("error".to_string()),
        Just("subproblems".to_string()),
        Just("url".to_string()),
        Just("token".to_string()),
        Just("wildcard".to_string()),
        Just("newNonce".to_string()),
        Just("meta".to_string()),
        Just("suggestedWindow".to_string()),
        Just("start".to_string()),
        Just("end".to_string()),
        "[a-zA-Z]{1,8}",
    ];
    leaf.prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map(keys.clone(), inner, 0..8)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}
