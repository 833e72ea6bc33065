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
