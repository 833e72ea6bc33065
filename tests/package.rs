//! The Debian package and what it ships: `certkeeper man` and `certkeeper completions` from the binary
//! under test (always), and the .deb named by `CERTKEEPER_PACKAGE_DEB` (skipped when unset; `scripts/test`
//! builds it with `scripts/package --debug` from the debug binary, no release build): every file is there,
//! the config is a conffile, the maintainer scripts do what they promise, `lintian` reports no error, the
//! man pages render, the bash completion loads, and the default config loads.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_certkeeper");

/// Every page `certkeeper man --dir` writes: the top page and one per (nested) subcommand.
const MAN1: &[&str] = &[
    "certkeeper",
    "certkeeper-check",
    "certkeeper-explain",
    "certkeeper-renew",
    "certkeeper-run",
    "certkeeper-status",
    "certkeeper-revoke",
    "certkeeper-account",
    "certkeeper-account-show",
    "certkeeper-account-rollover",
    "certkeeper-account-deactivate",
    "certkeeper-account-update-contact",
    "certkeeper-account-persist-record",
    "certkeeper-import",
    "certkeeper-migrate",
    "certkeeper-migrate-certbot",
    "certkeeper-migrate-lego",
    "certkeeper-storage",
    "certkeeper-storage-migrate",
    "certkeeper-storage-rotate-key",
    "certkeeper-completions",
    "certkeeper-man",
];

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn installed(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn completions_are_printed_for_bash_zsh_and_fish_and_bash_loads_them() {
    let bash = ok(&run(BIN, &["completions", "bash"]), "completions bash");
    assert!(
        bash.contains("complete ") && bash.contains("certkeeper"),
        "{bash}"
    );
    let zsh = ok(&run(BIN, &["completions", "zsh"]), "completions zsh");
    assert!(zsh.starts_with("#compdef certkeeper"), "{zsh}");
    let fish = ok(&run(BIN, &["completions", "fish"]), "completions fish");
    assert!(fish.contains("complete -c certkeeper"), "{fish}");
    let out = run(BIN, &["completions", "powershell"]);
    assert!(!out.status.success(), "only bash, zsh and fish are offered");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("certkeeper");
    std::fs::write(&file, bash).unwrap();
    assert_bash_completion_loads(&file);
}

#[test]
fn man_prints_the_top_page_and_writes_one_page_per_subcommand() {
    let page = ok(&run(BIN, &["man"]), "man");
    assert!(page.contains(".TH certkeeper 1"), "{page}");
    assert!(
        page.contains("renew"),
        "the top page lists the subcommands:\n{page}"
    );

    let dir = tempfile::tempdir().unwrap();
    ok(
        &run(BIN, &["man", "--dir", dir.path().to_str().unwrap()]),
        "man --dir",
    );
    let mut written: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    written.sort();
    let mut expected: Vec<String> = MAN1.iter().map(|p| format!("{p}.1")).collect();
    expected.sort();
    assert_eq!(written, expected);
    let renew = std::fs::read_to_string(dir.path().join("certkeeper-renew.1")).unwrap();
    assert!(renew.contains("\\-\\-force"), "{renew}");

    // no config, no state directory, no privileges needed: a missing --dir is a plain error
    let out = run(BIN, &["man", "--dir", "/nonexistent/certkeeper-man"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/certkeeper-man"),
        "{out:?}"
    );
}

#[test]
fn the_hand_written_config_page_renders_without_warnings() {
    let page = concat!(env!("CARGO_MANIFEST_DIR"), "/man/certkeeper.toml.5");
    assert_man_renders(Path::new(page));
}

/// The built package, when `CERTKEEPER_PACKAGE_DEB` names one.
fn package() -> Option<PathBuf> {
    match std::env::var_os("CERTKEEPER_PACKAGE_DEB") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            eprintln!("CERTKEEPER_PACKAGE_DEB is not set (scripts/test sets it); skipping");
            None
        }
    }
}

#[test]
fn the_deb_holds_every_file_and_declares_the_conffile() {
    let Some(deb) = package() else { return };
    let deb = deb.to_str().unwrap();
    let name = Path::new(deb).file_name().unwrap().to_str().unwrap();
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        name.starts_with(&format!("certkeeper_{version}_")) && name.ends_with(".deb"),
        "{name}"
    );

    let listing = ok(&run("dpkg-deb", &["-c", deb]), "dpkg-deb -c");
    let files: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches('.'))
        .collect();
    let mut expected: Vec<String> = [
        "/usr/bin/certkeeper",
        "/lib/systemd/system/certkeeper.service",
        "/usr/lib/sysusers.d/certkeeper.conf",
        "/usr/lib/tmpfiles.d/certkeeper.conf",
        "/etc/certkeeper/certkeeper.toml",
        "/usr/share/man/man5/certkeeper.toml.5.gz",
        "/usr/share/bash-completion/completions/certkeeper",
        "/usr/share/zsh/vendor-completions/_certkeeper",
        "/usr/share/fish/vendor_completions.d/certkeeper.fish",
        "/usr/share/doc/certkeeper/README.md",
        "/usr/share/doc/certkeeper/README.systemd.md",
        "/usr/share/doc/certkeeper/copyright",
        "/usr/share/doc/certkeeper/changelog.gz",
        "/usr/share/doc/certkeeper/examples/certkeeper.toml",
        "/usr/share/doc/certkeeper/examples/conf.d/example.toml",
        "/usr/share/doc/certkeeper/examples/50-certkeeper-reload-nginx.rules",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    expected.extend(MAN1.iter().map(|p| format!("/usr/share/man/man1/{p}.1.gz")));
    for f in &expected {
        assert!(
            files.contains(&f.as_str()),
            "{f} is missing from {deb}:\n{listing}"
        );
    }
    assert!(
        listing
            .lines()
            // dpkg-deb --root-owner-group writes root/root, cargo-deb 0/0
            .any(
                |l| (l.starts_with("-rwxr-xr-x root/root") || l.starts_with("-rwxr-xr-x 0/0"))
                    && l.ends_with("./usr/bin/certkeeper")
            ),
        "{listing}"
    );

    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("DEBIAN");
    ok(
        &run("dpkg-deb", &["-e", deb, control.to_str().unwrap()]),
        "dpkg-deb -e",
    );
    let read = |f: &str| std::fs::read_to_string(control.join(f)).unwrap();
    let conffiles = read("conffiles");
    assert_eq!(conffiles.trim(), "/etc/certkeeper/certkeeper.toml");
    let fields = read("control");
    assert!(fields.contains("Package: certkeeper\n"), "{fields}");
    assert!(
        fields.contains(&format!("Version: {version}\n")),
        "{fields}"
    );
    assert!(fields.contains("Depends: libc6"), "{fields}");

    // user and directories through sysusers/tmpfiles; enabled, never started
    let postinst = read("postinst");
    for needle in [
        "systemd-sysusers",
        "certkeeper.conf",
        "systemd-tmpfiles",
        "--create",
        "deb-systemd-helper enable certkeeper.service",
    ] {
        assert!(
            postinst.contains(needle),
            "postinst lacks {needle}:\n{postinst}"
        );
    }
    for line in postinst
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
    {
        assert!(
            !line.contains(" start ") && !line.contains("enable --now"),
            "postinst must not start the unit: {line}"
        );
    }
    // /var/lib/certkeeper goes on purge only
    let postrm = read("postrm");
    let purge = postrm.find("purge)").expect("postrm has a purge branch");
    let rm = postrm
        .find("rm -rf /var/lib/certkeeper")
        .expect("postrm removes the state directory");
    let next_branch = postrm[purge..].find(";;").map(|i| purge + i).unwrap();
    assert!(
        purge < rm && rm < next_branch,
        "only in the purge branch:\n{postrm}"
    );
    for script in ["postinst", "prerm", "postrm"] {
        ok(
            &run("sh", &["-n", control.join(script).to_str().unwrap()]),
            script,
        );
    }
}

#[test]
fn lintian_reports_no_error() {
    let Some(deb) = package() else { return };
    if !installed("lintian") {
        eprintln!("lintian is not installed; skipping");
        return;
    }
    let out = run("lintian", &[deb.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("E:")).collect();
    assert!(
        errors.is_empty(),
        "lintian errors:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // exit 2 means lintian itself failed
    assert_ne!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn the_packaged_man_pages_render_and_completion_and_default_config_load() {
    let Some(deb) = package() else { return };
    let root = tempfile::tempdir().unwrap();
    ok(
        &run(
            "dpkg-deb",
            &["-x", deb.to_str().unwrap(), root.path().to_str().unwrap()],
        ),
        "dpkg-deb -x",
    );
    let r = root.path();

    for p in MAN1 {
        assert_man_renders(&r.join(format!("usr/share/man/man1/{p}.1.gz")));
    }
    assert_man_renders(&r.join("usr/share/man/man5/certkeeper.toml.5.gz"));

    assert_bash_completion_loads(&r.join("usr/share/bash-completion/completions/certkeeper"));

    // The shipped binary runs, and the shipped config loads: no issuer, no certificate. Its state
    // directory is pointed at a temp dir, and conf.d exists as postinst makes sure it does.
    let bin = r.join("usr/bin/certkeeper");
    let version = ok(
        &run(bin.to_str().unwrap(), &["--version"]),
        "certkeeper --version",
    );
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
    let etc = r.join("etc/certkeeper");
    std::fs::create_dir(etc.join("conf.d")).unwrap();
    let shipped = std::fs::read_to_string(etc.join("certkeeper.toml")).unwrap();
    assert!(
        shipped.contains("\nstate_dir = \"/var/lib/certkeeper\"\n"),
        "{shipped}"
    );
    assert!(shipped.contains("letsencrypt-staging"), "{shipped}");
    let active: Vec<&str> = shipped
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    assert!(
        !active
            .iter()
            .any(|l| l.contains("[certificate.") || l.contains("[issuer.")),
        "the default config defines nothing to issue:\n{shipped}"
    );
    let state = r.join("state");
    let cfg = etc.join("certkeeper.toml");
    std::fs::write(
        &cfg,
        shipped.replace(
            "state_dir = \"/var/lib/certkeeper\"",
            &format!("state_dir = {:?}", state.to_str().unwrap()),
        ),
    )
    .unwrap();
    let out = Command::new(&bin)
        .args(["check", "--offline", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let text = ok(&out, "certkeeper check --offline on the shipped config");
    assert!(text.contains("0 issuer(s), 0 certificate(s)"), "{text}");
}

/// `man -l` renders the page without warnings; `groff` when man is not installed; skipped without both.
fn assert_man_renders(page: &Path) {
    let path = page.to_str().unwrap();
    let out = if installed("man") {
        Command::new("man")
            .args(["--warnings", "-l", path])
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "80")
            .output()
            .unwrap()
    } else if installed("groff") {
        let cat = if path.ends_with(".gz") { "zcat" } else { "cat" };
        Command::new("sh")
            .args([
                "-c",
                &format!("{cat} \"$1\" | groff -man -Tutf8 -ww"),
                "sh",
                path,
            ])
            .output()
            .unwrap()
    } else {
        eprintln!("neither man nor groff is installed; not rendering {path}");
        return;
    };
    let text = ok(&out, &format!("rendering {path}"));
    assert!(
        out.stderr.is_empty(),
        "{path}: warnings:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("NAME") && text.contains("certkeeper"),
        "{path}:\n{text}"
    );
}

fn assert_bash_completion_loads(file: &Path) {
    let out = Command::new("bash")
        .args(["-c", "source \"$1\" && complete -p certkeeper", "bash"])
        .arg(file)
        .output()
        .unwrap();
    let text = ok(&out, "bash: source the completion; complete -p certkeeper");
    assert!(text.contains("certkeeper"), "{text}");
}
