//! Config fixtures for unit tests of other modules.

use std::path::{Path, PathBuf};

use super::Config;

/// A config in `dir/c.toml` with one issuer `le` (a dead directory URL, HTTP-01 without the
/// self-check) and one certificate `www` for `www.example.com` written to `dir/tls`, plus `extra`
/// TOML appended (keys of `[certificate.www]` first, then any further tables); state in
/// `dir/state`.
pub(crate) fn one_certificate(dir: &Path, extra: &str) -> Config {
    let text = format!(
        r#"state_dir = "{d}/state"
[issuer.le]
directory = "https://127.0.0.1:1/dir"
[[issuer.le.solver]]
http01 = {{ self_check = false }}
[certificate.www]
domains = ["www.example.com"]
output = {{ dir = "{d}/tls" }}
{extra}
"#,
        d = dir.display()
    );
    std::fs::write(dir.join("c.toml"), text).unwrap();
    super::load(&dir.join("c.toml")).unwrap()
}

/// `main` as `certkeeper.toml` and `(name, text)` includes under `conf.d/`, written to a new temp
/// dir (kept while the returned guard lives); the main file's path.
pub(crate) fn write_files(main: &str, includes: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("conf.d")).unwrap();
    for (name, text) in includes {
        std::fs::write(dir.path().join("conf.d").join(name), text).unwrap();
    }
    let path = dir.path().join("certkeeper.toml");
    std::fs::write(&path, main).unwrap();
    (dir, path)
}
