//! Every example config under `config/` loads and validates, and the reference example is complete.

use std::path::{Path, PathBuf};

use certkeeper::challenge::IdentifierKind;
use certkeeper::config::{self, SolverKind};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

/// All `*.toml` files below `dir`, sorted.
fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "toml") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn reference_example_loads_with_its_includes() {
    let main = examples_dir().join("certkeeper.toml");
    let cfg = config::load(&main).unwrap_or_else(|e| panic!("{e}"));
    // Every example file is read: the main file includes all the others.
    let mut read = cfg.files.clone();
    read.sort();
    let examples: Vec<PathBuf> = toml_files(&examples_dir())
        .into_iter()
        .filter(|f| !f.ends_with("config/demo.toml"))
        .collect();
    assert_eq!(read, examples);
    assert_eq!(
        cfg.issuers.keys().collect::<Vec<_>>(),
        ["pebble", "staging"]
    );
    assert_eq!(cfg.certificates.keys().collect::<Vec<_>>(), ["api", "www"]);
    let www = &cfg.certificates["www"];
    assert_eq!(
        www.domains,
        ["example.com", "www.example.com", "*.example.com"]
    );
    assert_eq!(www.output.key_mode, 0o640);
    let pebble = &cfg.issuers["pebble"];
    assert!(matches!(
        pebble
            .solver_for("example.com", IdentifierKind::Wildcard)
            .map(|s| &s.kind),
        Some(SolverKind::Dns01 { .. })
    ));
    assert!(matches!(
        pebble
            .solver_for("other.org", IdentifierKind::Dns)
            .map(|s| &s.kind),
        Some(SolverKind::Http01 {
            self_check: true,
            ..
        })
    ));
    assert_eq!(cfg.certificates["api"].issuers, ["pebble", "staging"]);
}

#[test]
fn every_example_file_is_valid_toml_for_its_role() {
    // Included files hold only issuer/certificate tables; checking each one on its own (with the
    // issuers it references) catches an example that only loads by accident through another.
    for file in toml_files(&examples_dir()) {
        let text = std::fs::read_to_string(&file).unwrap();
        let value: toml::Table =
            toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        if file.ends_with("config/certkeeper.toml") || file.ends_with("config/demo.toml") {
            continue;
        }
        for key in value.keys() {
            assert!(
                key == "issuer" || key == "certificate",
                "{}: top-level key {key}",
                file.display()
            );
        }
    }
}

#[test]
fn examples_reject_an_unknown_key_in_every_table() {
    // Inserting a misspelt key into each table of the reference example must fail with the exact key
    // path: unknown keys are errors at every level.
    let main = examples_dir().join("certkeeper.toml");
    let text = std::fs::read_to_string(&main).unwrap();
    let tables = [
        ("[http01]\n", "http01.bogus_key"),
        ("[admin]\n", "admin.bogus_key"),
        ("[daemon]\n", "daemon.bogus_key"),
        ("[issuer.pebble]\n", "issuer.pebble.bogus_key"),
        (
            "[[issuer.pebble.solver]]\nhttp01",
            "issuer.pebble.solver[0].bogus_key",
        ),
        ("[certificate.www]\n", "certificate.www.bogus_key"),
    ];
    for (header, key) in tables {
        let header_line = header.lines().next().unwrap();
        let broken = text.replacen(header_line, &format!("{header_line}\nbogus_key = 1"), 1);
        assert_ne!(broken, text, "{header} not found in the example");
        let err = config::Config::from_str(&broken, &main)
            .unwrap_err()
            .to_string();
        let line = broken.lines().position(|l| l == "bogus_key = 1").unwrap() + 1;
        let want = format!(
            "{}:{line}:1: {key}: unknown field `bogus_key`",
            main.display()
        );
        assert!(err.starts_with(&want), "want prefix {want}\ngot {err}");
    }
    for (inline, key) in [
        (
            "http01 = { self_check = true }",
            "issuer.pebble.solver[0].http01.bogus_key",
        ),
        (
            "propagation = { check = true,",
            "issuer.pebble.solver[1].propagation.bogus_key",
        ),
        (
            "output = { dir = \"/etc/nginx/tls/www\",",
            "certificate.www.output.bogus_key",
        ),
    ] {
        let opened = inline.replacen("{ ", "{ bogus_key = 1, ", 1);
        let broken = text.replacen(inline, &opened, 1);
        assert_ne!(broken, text, "{inline} not found in the example");
        let err = config::Config::from_str(&broken, &main)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!(": {key}: unknown field `bogus_key`")),
            "{key}: {err}"
        );
    }
}

#[test]
fn demo_config_loads_once_its_paths_are_filled_in() {
    // scripts/demo replaces @WORK@ with its work directory; the result must be a valid main config.
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("ca.pem"), "").unwrap();
    let text = std::fs::read_to_string(examples_dir().join("demo.toml"))
        .unwrap()
        .replace("@WORK@", &work.path().display().to_string());
    let path = work.path().join("certkeeper.toml");
    std::fs::write(&path, text).unwrap();
    let cfg = config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.certificates.keys().collect::<Vec<_>>(), ["api", "www"]);
    assert_eq!(cfg.http01.listen, ["127.0.0.1:5002".parse().unwrap()]);
}
