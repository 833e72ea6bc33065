//! The shipped systemd unit: `systemd-analyze verify` accepts it and `systemd-analyze security`
//! rates its exposure at 1.5 or lower (skipped where systemd-analyze is not installed).

use std::path::Path;
use std::process::Command;

const ANALYZE: &str = "/usr/bin/systemd-analyze";
const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/certkeeper.service");

/// The unit with ExecStart pointing at the binary under test, in a temp dir, named like the original.
fn unit_for_test(dir: &Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(UNIT).unwrap();
    let text = text.replace("/usr/bin/certkeeper", env!("CARGO_BIN_EXE_certkeeper"));
    let path = dir.join("certkeeper.service");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_unit_verifies_and_its_exposure_is_at_most_1_5() {
    if !Path::new(ANALYZE).exists() {
        eprintln!("systemd-analyze is not installed; skipping");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_test(dir.path());
    let out = Command::new(ANALYZE)
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(ANALYZE)
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| {
            panic!(
                "no exposure figure in:\n{text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let level: f64 = line
        .split(':')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the exposure from {line:?}"));
    assert!(level <= 1.5, "exposure {level} > 1.5:\n{text}");
}

/// The credentials drop-in the README and certkeeper.toml(5) show (`systemctl edit certkeeper`):
/// the sandboxed unit takes it without a warning and its exposure does not change.
#[test]
fn the_documented_credentials_drop_in_verifies() {
    if !Path::new(ANALYZE).exists() {
        eprintln!("systemd-analyze is not installed; skipping");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_test(dir.path());
    let drop_in = dir.path().join("certkeeper.service.d");
    std::fs::create_dir(&drop_in).unwrap();
    std::fs::write(
        drop_in.join("credentials.conf"),
        "[Service]\n\
         LoadCredential=tsig:/etc/certkeeper/tsig.key\n\
         LoadCredentialEncrypted=eab:/etc/certkeeper/eab.cred\n",
    )
    .unwrap();
    // The unit's directory first in the search path, so its drop-in directory is read.
    let search = format!("{}:", dir.path().display());
    let out = Command::new(ANALYZE)
        .env("SYSTEMD_UNIT_PATH", &search)
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify with the drop-in: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A misspelt key in the same place is reported: the drop-in really is read.
    std::fs::write(drop_in.join("z.conf"), "[Service]\nLoadCredentialz=x:/y\n").unwrap();
    let out = Command::new(ANALYZE)
        .env("SYSTEMD_UNIT_PATH", &search)
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("LoadCredentialz"),
        "the drop-in directory was not read: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
