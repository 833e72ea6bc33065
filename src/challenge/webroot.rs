//! HTTP-01 through a directory another web server already serves (`webroot`).
//!
//! For hosts where certkeeper's own listener cannot be used: the token file is written to
//! `<path>/.well-known/acme-challenge/<token>` and the existing server (nginx `root`, Apache
//! `DocumentRoot`) answers the CA. The file is removed after validation, whatever the outcome.
//! Before the CA is told, [`Solver::wait`] runs the same self-check as the listener solver
//! ([`super::http01::selfcheck`]), so a web server that does not serve the webroot costs no failed
//! validation at the CA.

use std::io::Write as _;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::fcntl::{AT_FDCWD, OFlag, openat, renameat};
use nix::sys::stat::{Mode, fchmod, fstat, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use super::http01::{SelfCheckTarget, selfcheck};
use super::{ChallengeCtx, ChallengeKind, SolveError, Solver};

/// Writes HTTP-01 responses as files under a web server's document root.
#[derive(Debug, Clone)]
pub struct WebrootSolver {
    root: PathBuf,
    /// Where the self-check fetches the token; `None` turns it off.
    self_check: Option<SelfCheckTarget>,
}

impl WebrootSolver {
    /// A solver writing under `root` (the directory that holds `.well-known/`), without self-check.
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            self_check: None,
        }
    }

    /// Fetch each token through `target` (as the CA will) before the CA is asked to validate.
    pub fn with_self_check(mut self, target: SelfCheckTarget) -> Self {
        self.self_check = Some(target);
        self
    }

    fn challenge_dir(&self) -> PathBuf {
        self.root.join(".well-known").join("acme-challenge")
    }

    /// The file that answers `token`, after checking the token cannot escape the directory.
    fn token_path(&self, token: &str) -> Result<PathBuf, SolveError> {
        if token.is_empty()
            || !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(SolveError::permanent(format!(
                "the CA sent a challenge token with characters outside base64url ({token:?}); refusing to write it"
            )));
        }
        Ok(self.challenge_dir().join(token))
    }
}

/// The challenge directory `<root>/.well-known/acme-challenge`, created when missing and opened
/// without following a symlink at either level: a symlink planted there (by a web application that
/// can write the document root) cannot redirect certkeeper's writes or chmods elsewhere. Each level
/// is made traversable and readable for the web server through its descriptor (never by path).
/// With `create` false nothing is created or changed (for cleanup).
fn open_challenge_dir(root: &Path, create: bool) -> Result<OwnedFd, (PathBuf, nix::Error)> {
    let root_fd = openat(
        AT_FDCWD,
        root,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| (root.to_path_buf(), e))?;
    let wk = open_subdir(&root_fd, root, ".well-known", create)?;
    open_subdir(&wk, &root.join(".well-known"), "acme-challenge", create)
}

/// Create (when missing) and open the directory `name` under `parent` with `O_NOFOLLOW`; a directory
/// the web server cannot read gets `o+rx` through the descriptor.
fn open_subdir(
    parent: &OwnedFd,
    parent_path: &Path,
    name: &str,
    create: bool,
) -> Result<OwnedFd, (PathBuf, nix::Error)> {
    let at = parent_path.join(name);
    if create {
        match mkdirat(parent, name, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(e) => return Err((at, e)),
        }
    }
    let fd = openat(
        parent,
        name,
        OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| (at.clone(), e))?;
    let st = fstat(&fd).map_err(|e| (at.clone(), e))?;
    let mode = st.st_mode & 0o7777;
    if create && mode & 0o005 != 0o005 && st.st_uid == nix::unistd::geteuid().as_raw() {
        fchmod(&fd, Mode::from_bits_truncate(mode | 0o755)).map_err(|e| (at.clone(), e))?;
    }
    Ok(fd)
}

/// Write `body` as `token` in the challenge directory `dir`: a fresh temporary file (`O_EXCL |
/// O_NOFOLLOW`, so neither an existing file nor a symlink is written through), synced, then renamed
/// into place.
fn write_token(
    dir: &OwnedFd,
    dir_path: &Path,
    token: &str,
    body: &[u8],
) -> Result<(), (PathBuf, nix::Error)> {
    let tmp = format!(".{token}.tmp");
    let at = |e| (dir_path.join(&tmp), e);
    let flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mode = Mode::from_bits_truncate(0o644);
    let fd = match openat(dir, tmp.as_str(), flags, mode) {
        Err(nix::Error::EEXIST) => {
            // Left by a crash (or planted): remove the entry itself, never what it points to.
            unlinkat(dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir).map_err(at)?;
            openat(dir, tmp.as_str(), flags, mode).map_err(at)?
        }
        r => r.map_err(at)?,
    };
    // The umask must not narrow what the web server needs to read.
    fchmod(&fd, mode).map_err(at)?;
    let mut f = std::fs::File::from(fd);
    f.write_all(body)
        .map_err(|e| at(nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO))))?;
    f.sync_all()
        .map_err(|e| at(nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO))))?;
    renameat(dir, tmp.as_str(), dir, token).map_err(|e| (dir_path.join(token), e))
}

#[async_trait::async_trait]
impl Solver for WebrootSolver {
    fn kind(&self) -> ChallengeKind {
        ChallengeKind::Http01
    }

    async fn present(&self, ch: &ChallengeCtx) -> Result<(), SolveError> {
        self.token_path(&ch.token)?;
        let dir = self.challenge_dir();
        let body = ch.key_authorization.clone();
        let root = self.root.clone();
        let token = ch.token.clone();
        tokio::task::spawn_blocking(move || -> Result<(), (PathBuf, nix::Error)> {
            let fd = open_challenge_dir(&root, true)?;
            write_token(&fd, &dir, &token, body.as_bytes())
        })
        .await
        .map_err(|e| SolveError::retryable(format!("webroot: writing the token was interrupted: {e}")))?
        .map_err(|(at, e)| {
            let hint = if e == nix::Error::ELOOP || e == nix::Error::ENOTDIR {
                " (a symlink or a file where a directory is expected: certkeeper does not follow symlinks under the webroot; make it a real directory)"
            } else {
                " (the directory must exist and be writable by certkeeper)"
            };
            SolveError::permanent(format!(
                "webroot: cannot write the HTTP-01 token under {}: {}: {}{hint}",
                self.root.display(),
                at.display(),
                std::io::Error::from(e)
            ))
        })
    }

    async fn wait(&self, ch: &ChallengeCtx) -> Result<(), SolveError> {
        match &self.self_check {
            None => Ok(()),
            Some(target) => selfcheck::self_check_webroot(ch, target, &self.root).await,
        }
    }

    async fn cleanup(&self, ch: &ChallengeCtx) -> Result<(), SolveError> {
        let path = self.token_path(&ch.token)?;
        let root = self.root.clone();
        let token = ch.token.clone();
        let removed = tokio::task::spawn_blocking(move || -> Result<(), nix::Error> {
            let fd = match open_challenge_dir(&root, false) {
                Ok(fd) => fd,
                // No challenge directory (or not a real one): nothing of ours to remove.
                Err((_, nix::Error::ENOENT | nix::Error::ELOOP | nix::Error::ENOTDIR)) => {
                    return Ok(());
                }
                Err((_, e)) => return Err(e),
            };
            match unlinkat(&fd, token.as_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(nix::Error::ENOENT) => Ok(()),
                Err(e) => Err(e),
            }
        })
        .await
        .map_err(|e| {
            SolveError::retryable(format!("webroot: removing the token was interrupted: {e}"))
        })?;
        removed.map_err(|e| {
            SolveError::retryable(format!(
                "webroot: cannot remove {}: {}",
                path.display(),
                std::io::Error::from(e)
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn ctx(token: &str) -> ChallengeCtx {
        ChallengeCtx {
            cert_name: "www".into(),
            identifier: "example.com".into(),
            is_ip: false,
            wildcard: false,
            kind: ChallengeKind::Http01,
            token: token.into(),
            key_authorization: format!("{token}.thumbprint"),
            persist: None,
        }
    }

    #[tokio::test]
    async fn symlinks_under_the_webroot_are_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("www");
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(elsewhere.join("acme-challenge")).unwrap();
        std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o700)).unwrap();
        // `.well-known` planted as a symlink to another directory.
        std::os::unix::fs::symlink(&elsewhere, root.join(".well-known")).unwrap();
        let solver = WebrootSolver::new(root.clone());
        let err = solver.present(&ctx("tok1")).await.unwrap_err();
        assert!(err.message.contains("does not follow symlinks"), "{err}");
        assert_eq!(
            std::fs::read_dir(elsewhere.join("acme-challenge"))
                .unwrap()
                .count(),
            0
        );
        assert_eq!(
            std::fs::metadata(&elsewhere).unwrap().permissions().mode() & 0o777,
            0o700,
            "the symlink's target was not chmodded"
        );
        solver.cleanup(&ctx("tok1")).await.unwrap();

        // A real challenge directory with the temporary file planted as a symlink to a victim.
        std::fs::remove_file(root.join(".well-known")).unwrap();
        let ch_dir = root.join(".well-known/acme-challenge");
        std::fs::create_dir_all(&ch_dir).unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep me").unwrap();
        std::os::unix::fs::symlink(&victim, ch_dir.join(".tok2.tmp")).unwrap();
        solver.present(&ctx("tok2")).await.unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
        assert_eq!(
            std::fs::read_to_string(ch_dir.join("tok2")).unwrap(),
            "tok2.thumbprint"
        );
        // A token name planted as a symlink is replaced, not written through.
        std::os::unix::fs::symlink(&victim, ch_dir.join("tok3")).unwrap();
        solver.present(&ctx("tok3")).await.unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
        assert!(
            !std::fs::symlink_metadata(ch_dir.join("tok3"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[tokio::test]
    async fn writes_then_removes_the_token_file() {
        let dir = tempfile::tempdir().unwrap();
        let solver = WebrootSolver::new(dir.path().to_path_buf());
        let ch = ctx("abc_DEF-123");
        solver.present(&ch).await.unwrap();
        let file = dir.path().join(".well-known/acme-challenge/abc_DEF-123");
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "abc_DEF-123.thumbprint"
        );
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o644
        );
        solver.cleanup(&ch).await.unwrap();
        assert!(!file.exists());
        // cleanup is idempotent and does not assume present succeeded
        solver.cleanup(&ch).await.unwrap();
    }

    #[tokio::test]
    async fn refuses_tokens_that_could_escape_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let solver = WebrootSolver::new(dir.path().to_path_buf());
        let err = solver.present(&ctx("../../etc/passwd")).await.unwrap_err();
        assert!(err.message.contains("outside base64url"), "{err}");
        assert!(!err.retryable);
        assert!(!dir.path().join(".well-known").exists());
    }

    /// A tiny web server on 127.0.0.1 serving files under `root` (like nginx `root`), 404 otherwise.
    async fn file_server(root: PathBuf) -> (u16, tokio::task::JoinHandle<()>) {
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
            let root = root.clone();
            async move {
                use axum::response::IntoResponse as _;
                let path = root.join(uri.path().trim_start_matches('/'));
                match tokio::fs::read_to_string(&path).await {
                    Ok(body) => body.into_response(),
                    Err(_) => (
                        axum::http::StatusCode::NOT_FOUND,
                        [("server", "nginx/1.22.1")],
                        "<html>404</html>",
                    )
                        .into_response(),
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (port, task)
    }

    fn loopback(port: u16) -> SelfCheckTarget {
        SelfCheckTarget {
            port,
            resolve: vec!["127.0.0.1".parse().unwrap()],
        }
    }

    #[tokio::test]
    async fn wait_self_checks_through_the_web_server() {
        let served = tempfile::tempdir().unwrap();
        let (port, task) = file_server(served.path().to_path_buf()).await;
        let ch = ctx("tok_SELF-1");

        // The web server serves the webroot: the self-check passes.
        let good = WebrootSolver::new(served.path().to_path_buf()).with_self_check(loopback(port));
        good.present(&ch).await.unwrap();
        good.wait(&ch).await.unwrap();
        good.cleanup(&ch).await.unwrap();

        // Tokens written where the server does not look: the self-check fails, naming the answer,
        // the file written and the nginx `root` to set.
        let other = tempfile::tempdir().unwrap();
        let bad = WebrootSolver::new(other.path().to_path_buf()).with_self_check(loopback(port));
        bad.present(&ch).await.unwrap();
        let err = bad.wait(&ch).await.unwrap_err();
        let m = &err.message;
        assert!(err.retryable, "{m}");
        assert!(
            m.contains("HTTP 404 Not Found from server \"nginx/1.22.1\""),
            "{m}"
        );
        assert!(
            m.contains(&format!(
                "the token was written to {}/.well-known/acme-challenge/tok_SELF-1",
                other.path().display()
            )),
            "{m}"
        );
        assert!(
            m.contains(&format!(
                "location /.well-known/acme-challenge/ {{ root {}; }}",
                other.path().display()
            )),
            "{m}"
        );
        assert!(m.contains("self_check = false }"), "{m}");
        assert!(
            !m.contains("proxy_pass"),
            "webroot advice must not talk about the listener: {m}"
        );

        // Without the self-check, wait does not fetch anything.
        WebrootSolver::new(other.path().to_path_buf())
            .wait(&ch)
            .await
            .unwrap();
        bad.cleanup(&ch).await.unwrap();
        task.abort();
    }

    #[tokio::test]
    async fn unwritable_root_says_what_to_fix() {
        let solver = WebrootSolver::new(PathBuf::from("/proc/certkeeper-no-such-dir"));
        let err = solver.present(&ctx("tok")).await.unwrap_err();
        assert!(
            err.message
                .contains("cannot write the HTTP-01 token under /proc/certkeeper-no-such-dir"),
            "{err}"
        );
    }
}
