//! Secrets read from files or environment variables, redacted in logs.
//!
//! Config keys never hold a secret inline: a secret `foo` is given either as `foo_file` (a path whose
//! content is the secret, one trailing newline trimmed), `foo_env` (the name of an environment
//! variable) or `foo_credential` (the name of a systemd credential: `LoadCredential=NAME:...` or
//! `LoadCredentialEncrypted=NAME:...` in the unit makes it the file `$CREDENTIALS_DIRECTORY/NAME`).
//! [`read_secret`] implements that rule once, for the issuer's EAB key and for the DNS providers'
//! own `*_file` / `*_env` keys; a credential is resolved to its file when the config is loaded
//! ([`credential_path`], [`credentials_to_files`]).

use std::fmt;
use std::path::{Path, PathBuf};

/// A secret value (EAB HMAC key, TSIG secret, API token).
///
/// `Debug` and `Display` print `[redacted]`, so a secret cannot leak through a log line or a
/// `{:?}` of a config struct. Use [`Secret::expose`] at the single place the value is needed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself. Call this only where the value is used, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Where a secret comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    /// A file whose content is the secret (one trailing newline is trimmed).
    File(PathBuf),
    /// An environment variable holding the secret.
    Env(String),
}

/// Why a secret could not be read.
///
/// Messages name the config keys (`<key>_file`, `<key>_env`) but not where they are; the config module
/// prefixes the file:line:column of the key.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Neither `<key>_file` nor `<key>_env` (nor `<key>_credential`) was set.
    #[error(
        "no {key} given: set {key}_file = \"/path/to/file\" or {key}_env = \"VARIABLE\" (or {key}_credential = \"NAME\" with systemd's LoadCredential=)"
    )]
    Missing {
        /// The secret's base key name, e.g. `hmac_key`.
        key: String,
    },
    /// Both `<key>_file` and `<key>_env` were set.
    #[error("both {key}_file and {key}_env are set: keep only one")]
    Both {
        /// The secret's base key name.
        key: String,
    },
    /// `<key>_credential` and `<key>_file` or `<key>_env` were set.
    #[error("both {key}_credential and {key}_{other} are set: keep only one")]
    BothCredential {
        /// The secret's base key name.
        key: String,
        /// `file` or `env`.
        other: &'static str,
    },
    /// The credential name cannot be a file name in `$CREDENTIALS_DIRECTORY`.
    #[error(
        "{name:?} is not a credential name: use the NAME of LoadCredential=NAME:/path (not empty, no '/')"
    )]
    CredentialName {
        /// The name given.
        name: String,
    },
    /// A credential was named but systemd passed no credentials to this process.
    #[error(
        "credential {name:?}: CREDENTIALS_DIRECTORY is not set, so certkeeper was not started by systemd with credentials: add `LoadCredential={name}:/etc/certkeeper/{name}.key` (or LoadCredentialEncrypted=) to the unit in a drop-in (`systemctl edit certkeeper`), or name the file with a *_file key instead"
    )]
    NoCredentialsDirectory {
        /// The credential name.
        name: String,
    },
    /// The credential is not in `$CREDENTIALS_DIRECTORY`.
    #[error(
        "credential {name:?}: {} does not exist: the unit must load it under this name, e.g. `LoadCredential={name}:/etc/certkeeper/{name}.key` (or LoadCredentialEncrypted=) in a drop-in", path.display()
    )]
    CredentialMissing {
        /// The credential name.
        name: String,
        /// `$CREDENTIALS_DIRECTORY/<name>`.
        path: PathBuf,
    },
    /// The secret file could not be read.
    #[error(
        "cannot read secret file {path}: {source} (check the path and that certkeeper's user may read it)"
    )]
    File {
        /// The file named by `<key>_file`.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The environment variable is not set or not valid UTF-8.
    #[error(
        "environment variable {var} is not set (or not valid UTF-8): set it in the service environment, e.g. systemd Environment= or EnvironmentFile="
    )]
    Env {
        /// The variable named by `<key>_env`.
        var: String,
    },
    /// The secret is empty.
    #[error("{origin} is empty: put the secret there")]
    Empty {
        /// The file path or `environment variable NAME`.
        origin: String,
    },
}

impl SecretSource {
    /// Choose the source from a `<key>_file` / `<key>_env` pair; exactly one must be set.
    ///
    /// `key` is the base name used in messages, e.g. `"tsig_secret"` for `tsig_secret_file` /
    /// `tsig_secret_env`.
    pub fn from_keys(
        key: &str,
        file: Option<&Path>,
        env: Option<&str>,
    ) -> Result<Self, SecretError> {
        match (file, env) {
            (Some(path), None) => Ok(Self::File(path.to_path_buf())),
            (None, Some(var)) => Ok(Self::Env(var.to_string())),
            (None, None) => Err(SecretError::Missing {
                key: key.to_string(),
            }),
            (Some(_), Some(_)) => Err(SecretError::Both {
                key: key.to_string(),
            }),
        }
    }

    /// Read the secret now.
    ///
    /// A file's content loses one trailing `\n` (or `\r\n`); an empty secret is an error.
    pub fn read(&self) -> Result<Secret, SecretError> {
        match self {
            Self::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| SecretError::File {
                    path: path.clone(),
                    source,
                })?;
                warn_if_others_can_read(path);
                let value = text
                    .strip_suffix("\r\n")
                    .or_else(|| text.strip_suffix('\n'))
                    .unwrap_or(&text);
                if value.is_empty() {
                    return Err(SecretError::Empty {
                        origin: format!("secret file {}", path.display()),
                    });
                }
                Ok(Secret::new(value))
            }
            Self::Env(var) => {
                let value =
                    std::env::var(var).map_err(|_| SecretError::Env { var: var.clone() })?;
                if value.is_empty() {
                    return Err(SecretError::Empty {
                        origin: format!("environment variable {var}"),
                    });
                }
                Ok(Secret::new(value))
            }
        }
    }
}

/// The environment variable systemd sets to the directory holding the service's credentials.
pub const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

/// The file of systemd credential `name`: `$CREDENTIALS_DIRECTORY/<name>`, which must exist.
pub fn credential_path(name: &str) -> Result<PathBuf, SecretError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(SecretError::CredentialName {
            name: name.to_string(),
        });
    }
    credential_in(std::env::var_os(CREDENTIALS_DIRECTORY).as_deref(), name)
}

/// [`credential_path`] with the value of `CREDENTIALS_DIRECTORY` given.
fn credential_in(dir: Option<&std::ffi::OsStr>, name: &str) -> Result<PathBuf, SecretError> {
    let dir = dir
        .filter(|d| !d.is_empty())
        .ok_or_else(|| SecretError::NoCredentialsDirectory {
            name: name.to_string(),
        })?;
    let path = Path::new(dir).join(name);
    if !path.exists() {
        return Err(SecretError::CredentialMissing {
            name: name.to_string(),
            path,
        });
    }
    Ok(path)
}

/// `<key>_credential` next to `<key>_file` / `<key>_env`: with a credential, neither of the others
/// may be set, and the source is the credential's file.
pub fn source_with_credential(
    key: &str,
    file: Option<&Path>,
    env: Option<&str>,
    credential: Option<&str>,
) -> Result<SecretSource, SecretError> {
    match credential {
        None => SecretSource::from_keys(key, file, env),
        Some(name) => {
            credential_file(key, file.is_some(), env.is_some(), name).map(SecretSource::File)
        }
    }
}

/// The file of `<key>_credential = "NAME"`, when neither `<key>_file` nor `<key>_env` is set too.
fn credential_file(
    key: &str,
    has_file: bool,
    has_env: bool,
    name: &str,
) -> Result<PathBuf, SecretError> {
    let other = if has_file {
        Some("file")
    } else if has_env {
        Some("env")
    } else {
        None
    };
    if let Some(other) = other {
        return Err(SecretError::BothCredential {
            key: key.to_string(),
            other,
        });
    }
    credential_path(name)
}

/// A problem with a settings key: `(key, message)`.
pub type KeyProblem = (String, String);

/// Replace every `<key>_credential = "NAME"` of a settings table (a DNS provider's) by
/// `<key>_file = "$CREDENTIALS_DIRECTORY/NAME"`, so the provider reads it as any secret file.
///
/// Returns the `(<key>_file, <key>_credential)` pairs it wrote, for naming the key the user wrote
/// in a later error, or the problems, each with the `<key>_credential` key it is about.
pub fn credentials_to_files(
    table: &mut toml::Table,
) -> Result<Vec<(String, String)>, Vec<KeyProblem>> {
    let keys: Vec<String> = table
        .keys()
        .filter(|k| k.ends_with("_credential"))
        .cloned()
        .collect();
    let mut done = Vec::new();
    let mut problems = Vec::new();
    for cred_key in keys {
        let base = cred_key.trim_end_matches("_credential").to_string();
        let file_key = format!("{base}_file");
        let Some(name) = table.get(&cred_key).and_then(|v| v.as_str()) else {
            problems.push((
                cred_key,
                "must be a string: the NAME of LoadCredential=NAME:/path".to_string(),
            ));
            continue;
        };
        let has_env = table.contains_key(&format!("{base}_env"));
        match credential_file(&base, table.contains_key(&file_key), has_env, name) {
            Ok(path) => {
                table.remove(&cred_key);
                table.insert(
                    file_key.clone(),
                    toml::Value::String(path.display().to_string()),
                );
                done.push((file_key, cred_key));
            }
            Err(e) => problems.push((cred_key, e.to_string())),
        }
    }
    if problems.is_empty() {
        Ok(done)
    } else {
        Err(problems)
    }
}

/// Log a warning naming the file and the fix when every user on the host can read the secret
/// file at `path` (group-readable is fine: `root:certkeeper 0640` is the recommended setup).
pub fn warn_if_others_can_read(path: &Path) {
    if let Some(mode) = world_readable(path) {
        tracing::warn!(
            file = %path.display(),
            mode = %format!("{mode:04o}"),
            "secret file is readable by every user on this host; run `chmod o-rwx {}` (e.g. root:certkeeper 0640)",
            path.display()
        );
    }
}

/// The mode of the file at `path` when every user can read it.
fn world_readable(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o004 != 0).then_some(mode)
}

/// Read a secret given as `<key>_file` or `<key>_env` (exactly one of them).
///
/// The helper DNS providers use for their own secret keys, e.g.
/// `read_secret("tsig_secret", cfg.tsig_secret_file.as_deref(), cfg.tsig_secret_env.as_deref())`.
pub fn read_secret(
    key: &str,
    file: Option<&Path>,
    env: Option<&str>,
) -> Result<Secret, SecretError> {
    SecretSource::from_keys(key, file, env)?.read()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_are_redacted() {
        let s = Secret::new("hunter2-very-secret");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{s}"), "[redacted]");
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Holder {
            key: Secret,
        }
        let dbg = format!("{:?}", Holder { key: s.clone() });
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert_eq!(s.expose(), "hunter2-very-secret");
    }

    #[test]
    fn world_readable_secret_files_are_noticed() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, "abc").unwrap();
        for (mode, seen) in [
            (0o644, Some(0o644)),
            (0o640, None),
            (0o600, None),
            (0o604, Some(0o604)),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(world_readable(&path), seen, "{mode:o}");
        }
    }

    #[test]
    fn file_secret_trims_one_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, "abc \n\n").unwrap();
        let s = read_secret("k", Some(&path), None).unwrap();
        assert_eq!(s.expose(), "abc \n");
        std::fs::write(&path, "xyz\r\n").unwrap();
        assert_eq!(read_secret("k", Some(&path), None).unwrap().expose(), "xyz");
    }

    #[test]
    fn missing_both_empty_and_unreadable_are_errors() {
        let e = read_secret("tsig_secret", None, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no tsig_secret given: set tsig_secret_file = \"/path/to/file\" or tsig_secret_env = \"VARIABLE\" (or tsig_secret_credential = \"NAME\" with systemd's LoadCredential=)"
        );
        let e = read_secret("tsig_secret", Some(Path::new("/x")), Some("Y")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "both tsig_secret_file and tsig_secret_env are set: keep only one"
        );
        let e = read_secret("k", Some(Path::new("/nonexistent/certkeeper/k")), None).unwrap_err();
        assert!(
            e.to_string().starts_with(
                "cannot read secret file /nonexistent/certkeeper/k: No such file or directory"
            ),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty");
        std::fs::write(&path, "\n").unwrap();
        let e = read_secret("k", Some(&path), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "secret file {} is empty: put the secret there",
                path.display()
            )
        );
    }

    #[test]
    fn env_secret() {
        let e = read_secret("k", None, Some("CERTKEEPER_TEST_SURELY_UNSET_VAR")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("environment variable CERTKEEPER_TEST_SURELY_UNSET_VAR is not set")
        );
        // PATH is always set in the test environment.
        let s = read_secret("k", None, Some("PATH")).unwrap();
        assert!(!s.expose().is_empty());
    }

    #[test]
    fn credentials_resolve_in_the_credentials_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tsig"), "c2VjcmV0\n").unwrap();
        let d = Some(dir.path().as_os_str());
        assert_eq!(credential_in(d, "tsig").unwrap(), dir.path().join("tsig"));
        let e = credential_in(d, "eab").unwrap_err();
        assert!(
            matches!(&e, SecretError::CredentialMissing { path, .. } if *path == dir.path().join("eab")),
            "{e}"
        );
        assert!(e.to_string().contains("LoadCredential=eab:"), "{e}");
        let e = credential_in(None, "tsig").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("credential \"tsig\": CREDENTIALS_DIRECTORY is not set"),
            "{e}"
        );
        assert!(matches!(
            credential_in(Some(std::ffi::OsStr::new("")), "tsig"),
            Err(SecretError::NoCredentialsDirectory { .. })
        ));
        for bad in ["", "a/b", "..", "."] {
            assert!(
                matches!(
                    credential_path(bad),
                    Err(SecretError::CredentialName { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_credential_excludes_file_and_env() {
        let e = source_with_credential("tsig_secret", Some(Path::new("/k")), None, Some("t"))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "both tsig_secret_credential and tsig_secret_file are set: keep only one"
        );
        let e = source_with_credential("tsig_secret", None, Some("V"), Some("t")).unwrap_err();
        assert!(e.to_string().contains("tsig_secret_env"), "{e}");
        assert_eq!(
            source_with_credential("k", None, Some("V"), None).unwrap(),
            SecretSource::Env("V".into())
        );
        // In a settings table: each problem is named by its `<key>_credential` key.
        let mut t: toml::Table =
            toml::from_str("server = \"x\"\napi_key_credential = 7\ntsig_secret_credential = \"t\"\ntsig_secret_env = \"V\"\n")
                .unwrap();
        let problems = credentials_to_files(&mut t).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["api_key_credential", "tsig_secret_credential"]);
        assert!(problems[0].1.contains("must be a string"));
        assert!(
            problems[1]
                .1
                .starts_with("both tsig_secret_credential and tsig_secret_env")
        );
        let mut t: toml::Table = toml::from_str("server = \"x\"").unwrap();
        assert_eq!(credentials_to_files(&mut t).unwrap(), Vec::new());
    }
}
