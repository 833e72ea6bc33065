//! Applying a migration so that every file ends up owned as the daemon needs it, whatever client it
//! comes from.
//!
//! The packaged set-up runs the daemon as `certkeeper` on a state directory it owns, while the
//! other client's files (certbot's `/etc/letsencrypt/{live,archive,accounts}`) are root-only. Run as
//! root, a migration therefore:
//! 1. reads everything on the other client's side as root (the caller);
//! 2. writes `conf.d/` as root, the owner of the config ([`Written`]), and loads the result;
//! 3. hands what the daemon will write to the state directory's owner ([`HandOver`]): the output
//!    directories, the webroots' challenge directories, group access to moved secrets;
//! 4. writes the state acting as that owner ([`as_state_owner`]: [`adopt_account`],
//!    [`import_served`]), so accounts, ledger and installed pairs are the daemon's, as if it had
//!    written them;
//! 5. finishes as root again (renaming the other client's files).
//!
//! Not root, or a state directory owned by root: steps 3 and 4 change no owner.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _, chown};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::unistd::User;

use crate::challenge::http01::TokenStore;
use crate::commands::import::{ImportError, Imported, import_pem};
use crate::config::Config;
use crate::engine::Runtime;
use crate::store::{self, AccountRecord, Event, atomic_write};

/// The files written to `conf.d/`, with what was there before, to put back if the migration stops.
#[derive(Default)]
pub struct Written(Vec<(PathBuf, Option<Vec<u8>>)>);

impl Written {
    /// Write `text` to `path` (atomically, owned by the invoking user) and remember what was there.
    pub fn write(&mut self, path: &Path, text: &str, mode: u32) -> Result<(), String> {
        let before = std::fs::read(path).ok();
        atomic_write(path, text.as_bytes(), mode, None, None)
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        self.0.push((path.to_path_buf(), before));
        Ok(())
    }

    /// Put back every file written: the previous content, or no file.
    pub fn restore(&self) {
        for (p, before) in self.0.iter().rev() {
            let _ = match before {
                Some(b) => atomic_write(p, b, 0o644, None, None).map_err(|e| e.to_string()),
                None => std::fs::remove_file(p).map_err(|e| e.to_string()),
            };
        }
    }
}

/// Giving the state directory's owner what the daemon will write; a no-op without an owner.
pub struct HandOver<'a> {
    user: Option<&'a User>,
    /// What was changed, in words with the undo, for the report.
    pub done: Vec<String>,
}

fn io_err(what: &str, p: &Path, e: std::io::Error) -> String {
    format!("{what} {}: {e}", p.display())
}

impl<'a> HandOver<'a> {
    /// Hand over to `user`, the state directory's owner (`None`: nothing to change).
    pub fn new(user: Option<&'a User>) -> Self {
        Self {
            user,
            done: Vec::new(),
        }
    }

    /// Let the owner pass through `dir` (search permission for group and others), e.g. certbot's
    /// `live/`, which certbot creates 0700.
    pub fn traversable(&mut self, dir: &Path) -> Result<(), String> {
        let Some(user) = self.user else { return Ok(()) };
        let meta = std::fs::metadata(dir).map_err(|e| io_err("cannot read", dir, e))?;
        let mode = meta.mode() & 0o7777;
        if mode & 0o001 != 0 {
            return Ok(());
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o011))
            .map_err(|e| io_err("cannot change the mode of", dir, e))?;
        self.done.push(format!(
            "made {} traversable (mode {:04o}) so {} reaches the certificates in it; undo: chmod {mode:04o} '{}'",
            dir.display(),
            mode | 0o011,
            user.name,
            dir.display()
        ));
        Ok(())
    }

    /// Make an output directory the owner's; returns its previous owner when it changed.
    pub fn give_dir(&mut self, dir: &Path) -> Result<Option<u32>, String> {
        let Some(user) = self.user else {
            return Ok(None);
        };
        let meta = std::fs::metadata(dir).map_err(|e| io_err("cannot read", dir, e))?;
        if meta.uid() == user.uid.as_raw() {
            return Ok(None);
        }
        chown(dir, Some(user.uid.as_raw()), None)
            .map_err(|e| io_err("cannot change the owner of", dir, e))?;
        Ok(Some(meta.uid()))
    }

    /// Give the owner a webroot's `.well-known/acme-challenge/` (created when missing).
    pub fn give_webroot(&mut self, root: &Path) -> Result<(), String> {
        let Some(user) = self.user else { return Ok(()) };
        let challenge = root.join(".well-known/acme-challenge");
        std::fs::create_dir_all(&challenge).map_err(|e| io_err("cannot create", &challenge, e))?;
        chown(&challenge, Some(user.uid.as_raw()), None)
            .map_err(|e| io_err("cannot change the owner of", &challenge, e))
    }

    /// A secret written 0600 by root becomes root:<owner's group> 0640, as the unit expects for
    /// secrets in `/etc/certkeeper`.
    pub fn share_secret(&mut self, path: &Path) -> Result<(), String> {
        let Some(user) = self.user else { return Ok(()) };
        chown(path, None, Some(user.gid.as_raw()))
            .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o640)))
            .map_err(|e| io_err("cannot give the group access to", path, e))
    }

    /// Put a directory given with [`HandOver::give_dir`] back to its previous owner.
    pub fn take_back(&self, dir: &Path, uid: u32) {
        let _ = chown(dir, Some(uid), None);
    }
}

/// Run `f` with a runtime on `cfg`, acting as `owner` (the state directory's owner) meanwhile.
pub fn as_state_owner<T>(
    cfg: &Arc<Config>,
    owner: Option<&User>,
    f: impl FnOnce(&Runtime) -> T,
) -> Result<T, String> {
    let acting = match owner {
        Some(user) => {
            Some(crate::privileges::act_as(user, &cfg.state_dir).map_err(|e| e.to_string())?)
        }
        None => None,
    };
    let rt = Runtime::new(cfg.clone(), TokenStore::default()).map_err(|e| e.to_string())?;
    let out = f(&rt);
    drop(rt);
    drop(acting);
    Ok(out)
}

/// Another client's ACME account, to become certkeeper's account of an issuer.
#[derive(Clone, Debug)]
pub struct AccountToAdopt {
    /// The issuer's config name.
    pub issuer: String,
    /// How the other client named it (certbot's account id), for messages.
    pub label: String,
    /// PKCS#8 PEM of the account key.
    pub key_pem: String,
    /// The account URL.
    pub url: String,
    /// Contacts the CA has, when known.
    pub contact: Vec<String>,
}

/// Make `a` the account of its issuer, unless certkeeper already has another one there (then
/// `Err` says which). Returns the line for the report.
pub fn adopt_account(rt: &Runtime, a: &AccountToAdopt) -> Result<String, String> {
    let issuer = &a.issuer;
    let Some(ic) = rt.config.issuers.get(issuer) else {
        return Err(format!("issuer {issuer} is not in the config"));
    };
    let aid = store::account_id(issuer, &ic.directory);
    match rt
        .accounts
        .load(&aid)
        .map_err(|e| format!("issuer {issuer}: {e}"))?
    {
        Some(s) if s.record.as_ref().is_some_and(|r| r.url == a.url) => Ok(format!(
            "issuer {issuer}: the account {} is already certkeeper's",
            a.url
        )),
        Some(s) if s.record.is_some() => Err(format!(
            "issuer {issuer}: certkeeper already has the account {}; the account {} ({}) was not adopted",
            s.record.map(|r| r.url).unwrap_or_default(),
            a.url,
            a.label
        )),
        _ => {
            let record = AccountRecord {
                url: a.url.clone(),
                directory: ic.directory.clone(),
                contact: a.contact.clone(),
                created: jiff::Timestamp::now(),
            };
            rt.accounts
                .save_key(&aid, &a.key_pem)
                .and_then(|()| rt.accounts.save_record(&aid, &record))
                .map_err(|e| format!("issuer {issuer}: the account was not adopted: {e}"))?;
            Ok(format!(
                "issuer {issuer}: adopted the account {} ({})",
                a.label, a.url
            ))
        }
    }
}

/// Import a pair that servers already read from the certificate's output directory (the other
/// client installed it there): as `certkeeper import`, but no reload is owed for it.
pub fn import_served(
    rt: &Runtime,
    name: &str,
    key_pem: &[u8],
    chain_pem: &[u8],
) -> Result<Imported, ImportError> {
    let imported = import_pem(rt, name, key_pem, chain_pem)?;
    let served = Event::Reloaded {
        serial: imported.serial.clone(),
    };
    if let Err(e) = rt.ledger.record(name, served) {
        tracing::warn!(cert = %name, error = %e, "cannot record that the pair is already served; the reload hooks run once at the next pass");
    }
    Ok(imported)
}
