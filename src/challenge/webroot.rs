//! HTTP-01 through a directory another web server already serves (`webroot`).
//!
//! For hosts where certkeeper's own listener cannot be used: the token file is written to
//! `<path>/.well-known/acme-challenge/<token>` and the existing server (nginx `root`, Apache
//! `DocumentRoot`) answers the CA. The file is removed after validation, whatever the outcome.
//! Before the CA is told, [`Solver::wait`] runs the same self-check as the listener solver
//! ([`super::http01::selfcheck`]), so a web server that does not serve the webroot costs no failed
//! validation at the CA.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

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

fn create_dir_world_readable(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    // The web server usually runs as another user: the path must be traversable and readable.
    let mut perms = std::fs::metadata(dir)?.permissions();
    if perms.mode() & 0o005 != 0o005 {
        perms.set_mode(perms.mode() | 0o755);
        std::fs::set_permissions(dir, perms)?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl Solver for WebrootSolver {
    fn kind(&self) -> ChallengeKind {
        ChallengeKind::Http01
    }

    async fn present(&self, ch: &ChallengeCtx) -> Result<(), SolveError> {
        let path = self.token_path(&ch.token)?;
        let dir = self.challenge_dir();
        let body = ch.key_authorization.clone();
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || -> Result<(), (PathBuf, std::io::Error)> {
            let at = |p: &Path| { let p = p.to_path_buf(); move |e| (p, e) };
            let well_known = root.join(".well-known");
            create_dir_world_readable(&well_known).map_err(at(&well_known))?;
            create_dir_world_readable(&dir).map_err(at(&dir))?;
            let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("token")));
            let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o644).open(&tmp).map_err(at(&tmp))?;
            f.write_all(body.as_bytes()).map_err(at(&tmp))?;
            f.sync_all().map_err(at(&tmp))?;
            std::fs::rename(&tmp, &path).map_err(at(&path))?;
            Ok(())
        })
        .await
        .map_err(|e| SolveError::retryable(format!("webroot: writing the token was interrupted: {e}")))?
        .map_err(|(at, e)| {
            SolveError::permanent(format!(
                "webroot: cannot write the HTTP-01 token under {}: {}: {e} (the directory must exist and be writable by certkeeper)",
                self.root.display(),
                at.display()
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
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(SolveError::retryable(format!(
                "webroot: cannot remove {}: {e}",
                path.display()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(token: &str) -> ChallengeCtx {
        ChallengeCtx {
            cert_name: "www".into(),
            identifier: "example.com".into(),
            is_ip: false,
            wildcard: false,
            kind: ChallengeKind::Http01,
            token: token.into(),
            key_authorization: format!("{token}.thumbprint"),
        }
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
