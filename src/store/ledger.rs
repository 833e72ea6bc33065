//! The ledger: the one owner of a certificate's state and of its installed pair.
//!
//! Nothing else reads or writes a certificate's [`CertState`] or its output directory. A decision
//! reads a [`Snapshot`] once (the installed facts and the state together); every change is an
//! [`Event`] that [`Ledger::record`] applies under the certificate's state lock, as a
//! read-modify-write of only the fields that event owns. So an ARI refresh cannot overwrite the
//! `revoked_serial` that `certkeeper revoke` just saved in another process, and a failure recorded
//! by one task cannot undo a success recorded by another.
//!
//! The state also holds the ledger's summary of the installed pair ([`InstalledSummary`]): the
//! facts last verified from the PEM files and the stamp of those files (see
//! [`install::FilesStamp`]). It is written under the same state lock, in the same write as the
//! install's [`Event::Issued`] or [`Event::Imported`], and rebuilt (by a process that may write)
//! whenever it is missing or its stamp no longer matches the files, so a snapshot of an unchanged
//! certificate reads two small files and a few names instead of parsing and verifying the chain.
//!
//! Keys (see [`super::storage`]):
//! ```text
//! certs/<name>.json       CertState (with the installed summary)
//! certs/<name>.key.pem    private key of the in-flight order (resume with the same key)
//! locks/<name>.lock       issuance lease: held while a certificate is ordered, imported or revoked
//! locks/state-<name>.lock held for the few milliseconds of one read-modify-write of the state
//! ```
//!
//! **Fleet** ([`Ledger::shared`], a store several nodes share): the certificate's current pair is
//! in the store too (`pairs/<name>.json`, see [`super::shared`]), written before the local switch,
//! and every node installs it into its own output directories ([`Ledger::adopt`]). What is a fact
//! of one node — which serial its reload hooks ran for — is kept per node
//! (`nodes/<node>/<name>.json`, events [`Event::Installing`] and [`Event::Reloaded`]). Writes made
//! while the issuance lease is held go through [`Issuance`], fenced by the lease
//! ([`Storage::store_fenced`]): a node that lost its lease cannot overwrite a newer result. With the
//! file backend none of this changes anything: there is no shared pair, node facts are in the one
//! state file, and an flock cannot be lost.

use std::sync::Arc;

use jiff::Timestamp;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::StoreError;
use super::install::{self, Installed, InstalledPaths, OutputSpec};
use super::shared::{self, PairOrigin, SharedPair};
use super::state::{CertState, DeployCheck, InstalledSummary, OrderTrace};
use super::storage::{Lease, LeaseInfo, Storage, check_name};
use super::verify::{self as verify, VerifiedCert, VerifiedPair};
use crate::scheduler::{Failure, RetryState};

/// Something that happened to a certificate. [`CertState::apply`] says what each one changes.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A new order was created at the CA (its key was stored as pending before).
    OrderCreated {
        /// The issuer (config name).
        issuer: String,
        /// The order URL, to resume after a restart.
        url: String,
    },
    /// A new order is about to be created with a new pending key: the previous order (if any) is
    /// no longer resumable.
    OrderAbandoned,
    /// What the CA said during an attempt, for `certkeeper explain`.
    Attempt(Box<OrderTrace>),
    /// A new pair with this serial is about to be switched live: its reload is pending from now on,
    /// so a crash between the switch and the reload hook is caught at the next start.
    Installing {
        /// The new leaf's serial (hex).
        serial: String,
    },
    /// A certificate was issued and installed.
    Issued {
        /// The issuer (config name) that issued it.
        issuer: String,
        /// [`crate::scheduler::config_fingerprint`] of the config it was issued for.
        fingerprint: String,
        /// Its ARI CertID (RFC 9773), sent as `replaces` when renewing it.
        ari_cert_id: Option<String>,
        /// [`super::state::key_fingerprint`] of the private key certkeeper generated (or reused) for it.
        key_fingerprint: Option<String>,
        /// When.
        at: Timestamp,
    },
    /// An attempt failed; the failure policy's verdict is in [`Failure`].
    Failed {
        /// What failed and what the policy decided.
        failure: Failure,
        /// The fingerprint the backoff is bound to (a config fix lifts it).
        retry_fingerprint: String,
    },
    /// The CA's renewal information (RFC 9773) for the installed certificate was asked for.
    Ari {
        /// The CertID of the installed certificate it is about; `None` when it has none (no
        /// Authority Key Identifier), so the CA cannot be asked.
        cert_id: Option<String>,
        /// What the CA said.
        result: AriResult,
        /// When to ask again.
        refetch_at: Timestamp,
    },
    /// `certkeeper revoke` revoked the installed certificate with this serial.
    Revoked {
        /// The revoked serial.
        serial: String,
    },
    /// `certkeeper import` installed a pair issued elsewhere.
    Imported {
        /// The issuer (config name) that renews it.
        issuer: Option<String>,
        /// The config fingerprint it was checked against.
        fingerprint: String,
        /// When.
        at: Timestamp,
    },
    /// The reload hooks ran successfully for the pair with this serial.
    Reloaded {
        /// The serial that servers now read.
        serial: String,
    },
    /// The `verify_deploy` endpoints were asked what they serve.
    DeployChecked(Box<DeployCheck>),
    /// Notifications were decided ([`crate::notify::decide`]) for the conditions holding `at`.
    Notified {
        /// The conditions that hold.
        holding: std::collections::BTreeSet<crate::notify::Condition>,
        /// When.
        at: Timestamp,
    },
    /// The installed pair was read and verified (or found missing): the ledger's summary of it.
    Observed(Option<Box<InstalledSummary>>),
}

/// The outcome of a renewalInfo request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AriResult {
    /// The CA's suggested window.
    Window(Timestamp, Timestamp),
    /// The CA offers no renewal information.
    Unsupported,
    /// The request failed; the window fetched before (if any) stays.
    Failed,
}

impl CertState {
    /// Apply one event: the only place where a certificate's state changes.
    pub fn apply(&mut self, event: Event) {
        match event {
            Event::OrderCreated { issuer, url } => {
                self.order_url = Some(url);
                self.issuer = Some(issuer);
            }
            Event::OrderAbandoned => self.order_url = None,
            Event::Attempt(trace) => self.last_order = Some(*trace),
            Event::Installing { serial } => self.reload_pending = Some(serial),
            Event::Issued {
                issuer,
                fingerprint,
                ari_cert_id,
                key_fingerprint,
                at,
            } => {
                self.key_fingerprint = key_fingerprint;
                self.order_url = None;
                self.retry = self.retry.on_success();
                self.last_success = Some(at);
                self.ari_cert_issuer = Some(issuer.clone());
                self.issuer = Some(issuer);
                self.config_fingerprint = Some(fingerprint);
                self.ari_cert_id = ari_cert_id;
                self.ari_window = None;
                self.ari_refetch_at = None;
                self.revoked_serial = None;
            }
            Event::Failed {
                failure,
                retry_fingerprint,
            } => {
                let retry = std::mem::take(&mut self.retry).for_config(&retry_fingerprint);
                self.retry = retry.on_failure(&failure, &mut rand::rng());
                self.last_error_at = Some(failure.at);
            }
            Event::Ari {
                cert_id,
                result,
                refetch_at,
            } => {
                if self.ari_cert_id != cert_id {
                    // The window stored was for another certificate.
                    self.ari_cert_id = cert_id;
                    self.ari_window = None;
                }
                match result {
                    AriResult::Window(start, end) => self.ari_window = Some((start, end)),
                    AriResult::Unsupported => self.ari_window = None,
                    AriResult::Failed => {}
                }
                self.ari_refetch_at = Some(refetch_at);
            }
            Event::Revoked { serial } => self.revoked_serial = Some(serial),
            Event::Imported {
                issuer,
                fingerprint,
                at,
            } => {
                self.order_url = None;
                // Not a key certkeeper generated: `key_reuse` will not reuse it.
                self.key_fingerprint = None;
                self.issuer = issuer;
                self.last_success = Some(at);
                self.retry = RetryState::default();
                self.config_fingerprint = Some(fingerprint);
                // The CA that issued it is unknown: its CertID sent as `replaces` to another CA
                // would get the renewal order refused, so the first renewal is a plain order.
                self.ari_cert_id = None;
                self.ari_cert_issuer = None;
                self.ari_window = None;
                self.ari_refetch_at = None;
                self.revoked_serial = None;
            }
            Event::Reloaded { serial } => {
                if self.reload_pending.as_deref() == Some(serial.as_str()) {
                    self.reload_pending = None;
                }
                self.reloaded_serial = Some(serial);
            }
            Event::DeployChecked(check) => self.deploy = Some(*check),
            Event::Notified { holding, at } => {
                self.notified = crate::notify::decide(&self.notified, &holding, at).1;
            }
            Event::Observed(summary) => self.installed = summary.map(|s| *s),
        }
    }
}

/// What the ledger knows about one certificate at one moment: its state and what is installed,
/// read together once per decision.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The persisted state (empty when there is none, or it is unreadable: see `state_error`).
    pub state: CertState,
    /// Why the state could not be read (it is then treated as empty, so scheduling never stops).
    pub state_error: Option<String>,
    /// The pair on disk, as read (it may be expired, a placeholder, or revoked).
    pub installed: Option<Installed>,
    /// Why the installed files cannot be used (torn, unreadable); they are then replaced.
    pub installed_error: Option<String>,
    /// The installed certificate is a self-signed placeholder (written so nginx could start).
    pub placeholder: bool,
    /// In a fleet, the serial of the current pair in the shared store (`None`: none there, or
    /// not a fleet).
    pub shared_serial: Option<String>,
    /// In a fleet, the current pair's serial and the node that ordered it (`certkeeper status`).
    pub shared_origin: Option<PairOrigin>,
    /// In a fleet, why the current pair could not be read (then `shared_serial` is `None`).
    pub shared_error: Option<String>,
}

impl Snapshot {
    /// The installed certificate that counts as live: readable, not a self-signed placeholder, and
    /// not revoked with `certkeeper revoke`. `None` means a certificate must be issued at once.
    pub fn live(&self) -> Option<&Installed> {
        self.installed.as_ref().filter(|live| {
            !self.placeholder
                && self.state.revoked_serial.as_deref() != Some(live.cert.serial_hex.as_str())
        })
    }

    /// `(not_before, not_after)` of the live certificate.
    pub fn lifetime(&self) -> Option<(Timestamp, Timestamp)> {
        self.live().map(|l| (l.cert.not_before, l.cert.not_after))
    }

    /// The serial of the certificate's current pair: the shared one in a fleet, else the one
    /// installed here.
    pub fn current_serial(&self) -> Option<&str> {
        self.shared_serial
            .as_deref()
            .or_else(|| self.installed.as_ref().map(|i| i.cert.serial_hex.as_str()))
    }

    /// True when, since `before` was read, another process or node put a new pair in place: the
    /// work decided on `before` is done already.
    pub fn renewed_since(&self, before: &Snapshot) -> bool {
        self.current_serial()
            .is_some_and(|now| Some(now) != before.current_serial())
    }

    /// The installed serial whose reload hooks have not run yet (installed, then the process died
    /// or the hook failed).
    pub fn reload_pending(&self) -> Option<&str> {
        let installed = self.installed.as_ref()?;
        self.state
            .reload_pending
            .as_deref()
            .filter(|s| *s == installed.cert.serial_hex)
    }
}

/// The certificates' ledger over a [`Storage`].
#[derive(Clone, Debug)]
pub struct Ledger {
    storage: Arc<dyn Storage>,
    /// Rebuild a missing or stale installed summary when a snapshot finds one (not for readers).
    refresh: bool,
    /// This node's name when `storage` is shared by a fleet.
    node: Option<String>,
}

impl Ledger {
    /// A ledger kept in `storage`, used by this host alone (the file backend).
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        Self {
            storage,
            refresh: true,
            node: None,
        }
    }

    /// A ledger kept in `storage` shared by a fleet, seen from node `node` (see the module docs).
    pub fn shared(storage: Arc<dyn Storage>, node: &str) -> Result<Self, StoreError> {
        check_name(node)?;
        Ok(Self {
            storage,
            refresh: true,
            node: Some(node.to_string()),
        })
    }

    /// This ledger, only read (`status`, `explain`): a snapshot never writes, not even to rebuild
    /// a stale installed summary (it reads the files in full instead).
    pub fn read_only(self) -> Self {
        Self {
            refresh: false,
            ..self
        }
    }

    /// This node's name in a fleet; `None` for a host on its own.
    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }

    /// The leases held now across the fleet, read at once (`certkeeper status`); none for a host on
    /// its own (its locks are local flocks, held by a process of this host).
    pub fn leases(&self) -> Result<Vec<LeaseInfo>, StoreError> {
        if self.node.is_none() {
            return Ok(Vec::new());
        }
        self.storage.leases()
    }

    /// The storage underneath (for the account store of the same state).
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    fn state_key(name: &str) -> Result<String, StoreError> {
        check_name(name)?;
        Ok(format!("certs/{name}.json"))
    }

    fn pending_path(name: &str) -> Result<String, StoreError> {
        check_name(name)?;
        Ok(format!("certs/{name}.key.pem"))
    }

    /// Where the facts of this node about certificate `name` are kept: its own key in a fleet,
    /// the certificate's state otherwise.
    fn node_key(&self, name: &str) -> Result<String, StoreError> {
        match &self.node {
            Some(node) => {
                check_name(name)?;
                Ok(format!("nodes/{node}/{name}.json"))
            }
            None => Self::state_key(name),
        }
    }

    /// The key an event is recorded under: node facts (which serial this node's servers read) per
    /// node, everything else in the certificate's state.
    fn event_key(&self, name: &str, event: &Event) -> Result<String, StoreError> {
        match event {
            Event::Installing { .. } | Event::Reloaded { .. } | Event::Observed(_) => {
                self.node_key(name)
            }
            _ => Self::state_key(name),
        }
    }

    /// The state of certificate `name`, or `None` when it has none yet (in a fleet, with this
    /// node's reload facts).
    pub fn state(&self, name: &str) -> Result<Option<CertState>, StoreError> {
        let state = load_json::<CertState>(&*self.storage, &Self::state_key(name)?)?;
        if self.node.is_none() {
            return Ok(state);
        }
        // Reload facts in the shared state (copied by `storage migrate` from one host) are that
        // host's, not this node's.
        let mine = load_json::<CertState>(&*self.storage, &self.node_key(name)?)?;
        if state.is_none() && mine.is_none() {
            return Ok(None);
        }
        let (state, mine) = (state.unwrap_or_default(), mine.unwrap_or_default());
        Ok(Some(with_node_facts(state, &mine)))
    }

    /// The serial and origin of the fleet's current pair of `name` (`None`: none, unreadable, or
    /// not a fleet).
    fn shared_origin(&self, name: &str) -> (Option<PairOrigin>, Option<String>) {
        match self.shared_pair(name) {
            Ok(p) => (p.map(|p| p.origin()), None),
            Err(e) => {
                tracing::warn!(cert = %name, error = %e, "the fleet's current pair is unreadable");
                (None, Some(e.to_string()))
            }
        }
    }

    /// The fleet's current pair of certificate `name` (`None` when there is none, or not a fleet).
    pub fn shared_pair(&self, name: &str) -> Result<Option<SharedPair>, StoreError> {
        if self.node.is_none() {
            return Ok(None);
        }
        shared::load(&*self.storage, name)
    }

    /// Read the state and the installed pair of certificate `name` (written to `output`) once.
    ///
    /// When the state's installed summary still matches the files (same stamp), its facts are used
    /// and the PEM files are only read; otherwise they are read and verified in full, and the
    /// summary is rebuilt (unless this ledger is [`Ledger::read_only`]).
    pub fn snapshot(&self, name: &str, output: &OutputSpec) -> Snapshot {
        let (state, state_error) = match self.state(name) {
            Ok(s) => (s.unwrap_or_default(), None),
            Err(e) => {
                tracing::warn!(cert = %name, error = %e, "certificate state unreadable; treating it as empty");
                (CertState::default(), Some(e.to_string()))
            }
        };
        if let Some(known) = &state.installed
            && let Some(live) = install::read_known(output, &known.stamp, &known.cert)
        {
            let (origin, shared_error) = self.shared_origin(name);
            let placeholder = known.placeholder;
            return Snapshot {
                state,
                state_error,
                installed: Some(live),
                installed_error: None,
                placeholder,
                shared_serial: origin.as_ref().map(|o| o.serial.clone()),
                shared_origin: origin,
                shared_error,
            };
        }
        // Stamped before the read: files replaced meanwhile give a stale stamp, never stale facts.
        let stamp = install::stamp(output).ok().flatten();
        let (installed, installed_error) = match install::read_installed(output) {
            Ok(i) => (i, None),
            Err(e) => (None, Some(e.to_string())),
        };
        let placeholder = installed
            .as_ref()
            .and_then(|i| i.fullchain_pem().ok())
            .is_some_and(is_self_signed_placeholder);
        if self.refresh && state_error.is_none() && installed_error.is_none() {
            let summary = installed
                .as_ref()
                .zip(stamp)
                .map(|(i, stamp)| InstalledSummary {
                    stamp,
                    cert: i.cert.clone(),
                    placeholder,
                });
            if summary != state.installed
                && let Err(e) = self.record(name, Event::Observed(summary.map(Box::new)))
            {
                tracing::debug!(cert = %name, error = %e, "cannot save the summary of the installed certificate");
            }
        }
        let (origin, shared_error) = self.shared_origin(name);
        Snapshot {
            state,
            state_error,
            installed,
            installed_error,
            placeholder,
            shared_serial: origin.as_ref().map(|o| o.serial.clone()),
            shared_origin: origin,
            shared_error,
        }
    }

    /// Apply `event` to certificate `name`'s state under its state lock and return the new state.
    pub fn record(&self, name: &str, event: Event) -> Result<CertState, StoreError> {
        self.record_all(name, [event])
    }

    /// Apply `events` in order to certificate `name`'s state in one read-modify-write under its
    /// state lock (one durable write), and return the new state.
    pub fn record_all(
        &self,
        name: &str,
        events: impl IntoIterator<Item = Event>,
    ) -> Result<CertState, StoreError> {
        self.record_changes(name, events, None)
            .map(|(_, after)| after)
    }

    /// [`Ledger::record`], returning the state before the event as well as after it (what a
    /// decision made under the lock, like [`Event::Notified`], started from).
    pub fn record_change(
        &self,
        name: &str,
        event: Event,
    ) -> Result<(CertState, CertState), StoreError> {
        self.record_changes(name, [event], None)
    }

    /// The one read-modify-write of a certificate's state: `events` applied in order under its
    /// state lock, fenced by `lease` when given (see [`Issuance::record`]); the state before and
    /// after. In a fleet, this node's facts (see [`Ledger::event_key`]) go to its own key: one
    /// durable write per key.
    fn record_changes(
        &self,
        name: &str,
        events: impl IntoIterator<Item = Event>,
        lease: Option<&Lease>,
    ) -> Result<(CertState, CertState), StoreError> {
        let (mut shared, mut mine) = (Vec::new(), Vec::new());
        for event in events {
            if self.event_key(name, &event)? == Self::state_key(name)? {
                shared.push(event);
            } else {
                mine.push(event);
            }
        }
        let _lock = self.storage.lock_wait(&format!("state-{name}"))?;
        let state_key = Self::state_key(name)?;
        if mine.is_empty() || self.node.is_none() {
            shared.extend(mine);
            return self.apply_at(name, &state_key, shared, lease);
        }
        let (mine_before, mine_after) = self.apply_at(name, &self.node_key(name)?, mine, lease)?;
        let (before, after) = if shared.is_empty() {
            let state = load_json::<CertState>(&*self.storage, &state_key)
                .ok()
                .flatten()
                .unwrap_or_default();
            (state.clone(), state)
        } else {
            self.apply_at(name, &state_key, shared, lease)?
        };
        Ok((
            with_node_facts(before, &mine_before),
            with_node_facts(after, &mine_after),
        ))
    }

    /// Apply `events` to the state kept under `key` (the caller holds the state lock): one durable
    /// write, fenced by `lease` when given.
    fn apply_at(
        &self,
        name: &str,
        key: &str,
        events: Vec<Event>,
        lease: Option<&Lease>,
    ) -> Result<(CertState, CertState), StoreError> {
        let (mut state, corrupt) = match load_json::<CertState>(&*self.storage, key) {
            Ok(s) => (s.unwrap_or_default(), false),
            // A corrupt state file would otherwise block every later event: start it afresh.
            Err(StoreError::CorruptState { .. }) => {
                tracing::warn!(cert = %name, "certificate state was corrupt; starting it afresh");
                (CertState::default(), true)
            }
            Err(e) => return Err(e),
        };
        let before = state.clone();
        for event in events {
            state.apply(event);
        }
        if state == before && !corrupt {
            // Nothing changed (an order abandoned when there was none): no write, no new file.
            return Ok((before, state));
        }
        let bytes = json_bytes(&*self.storage, key, &state)?;
        match lease {
            Some(lease) => self.storage.store_fenced(key, &bytes, lease)?,
            None => self.storage.store(key, &bytes)?,
        }
        Ok((before, state))
    }

    /// Take the issuance lease of certificate `name` without waiting: held while it is ordered,
    /// imported or revoked, so two tasks, processes or nodes never work on it at once. The writes
    /// of that work go through the returned [`Issuance`].
    pub fn lock(&self, name: &str) -> Result<Issuance<'_>, StoreError> {
        check_name(name)?;
        Ok(Issuance {
            ledger: self,
            name: name.to_string(),
            lease: self.storage.lock(name)?,
        })
    }

    /// The in-flight order's private key of certificate `name`, if any.
    pub fn pending_key(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.storage.load(&Self::pending_path(name)?)
    }

    /// Install the fleet's current pair of `name` into this node's `output` when what is installed
    /// here is older (or missing, torn, a placeholder), recording the reload as pending for this
    /// node. Returns what was installed; `None` when there is nothing to do (or not a fleet).
    ///
    /// The pair is verified against `domains` before anything is touched; a pair older than the
    /// one installed here is never installed.
    pub fn adopt(
        &self,
        name: &str,
        output: &OutputSpec,
        domains: &[String],
    ) -> Result<Option<(VerifiedCert, InstalledPaths)>, StoreError> {
        let Some(pair) = self.shared_pair(name)? else {
            return Ok(None);
        };
        let here = install::read_installed(output).ok().flatten();
        if here
            .as_ref()
            .is_some_and(|i| i.cert.serial_hex == pair.serial)
        {
            return Ok(None);
        }
        let verified = VerifiedPair::from_pem(
            pair.key_pem.as_bytes(),
            pair.chain_pem.as_bytes(),
            domains,
            None,
        )?;
        let newer_here = here.as_ref().is_some_and(|i| {
            i.fullchain_pem()
                .is_ok_and(|p| !is_self_signed_placeholder(p))
                && i.cert.not_before > verified.cert().not_before
        });
        if newer_here {
            return Ok(None);
        }
        let installing = Event::Installing {
            serial: verified.cert().serial_hex.clone(),
        };
        if let Err(e) = self.record(name, installing) {
            tracing::warn!(cert = %name, error = %e, "cannot record the pending reload; installing anyway");
        }
        let paths = install::install(output, &verified)?;
        Ok(Some((verified.cert().clone(), paths)))
    }
}

/// The issuance lease of one certificate, held ([`Ledger::lock`]), and the ledger's writes made
/// under it: each is fenced by the lease, so once it is lost (expired, taken over by another node)
/// they are refused ([`StoreError::Fenced`]) and a newer result is never overwritten. Dropping it
/// releases the lease.
#[derive(Debug)]
pub struct Issuance<'a> {
    ledger: &'a Ledger,
    name: String,
    lease: Lease,
}

impl Issuance<'_> {
    /// The lease held.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Apply `event` to the certificate's state (see [`Ledger::record`]), fenced.
    pub fn record(&self, event: Event) -> Result<CertState, StoreError> {
        self.ledger
            .record_changes(&self.name, [event], Some(&self.lease))
            .map(|(_, after)| after)
    }

    /// Save the private key of the in-flight order BEFORE the order is created, so a resumed
    /// order finalizes with the same key.
    pub fn save_pending_key(&self, key_pem: &[u8]) -> Result<(), StoreError> {
        let key = Ledger::pending_path(&self.name)?;
        self.ledger.storage.store_fenced(&key, key_pem, &self.lease)
    }

    /// Drop the pending key of an order that will not be resumed (`certkeeper import`).
    pub fn drop_pending_key(&self) -> Result<(), StoreError> {
        let key = Ledger::pending_path(&self.name)?;
        self.ledger.storage.delete_fenced(&key, &self.lease)
    }

    /// Switch the output directory to a verified new pair, then record `after` (an
    /// [`Event::Issued`] or [`Event::Imported`], and what else belongs to the same write).
    ///
    /// In a fleet the pair becomes the fleet's current pair first (fenced: a node that lost its
    /// lease installs nothing). The reload is recorded as pending before the switch (when the state
    /// can be written at all); the order's pending key is removed after it. Once the pair is live,
    /// a failure to record is logged, not returned: the new pair must not count as a failed
    /// issuance (that would skip the reload hooks).
    pub fn install(
        &self,
        output: &OutputSpec,
        pair: &VerifiedPair,
        after: impl IntoIterator<Item = Event>,
    ) -> Result<InstalledPaths, StoreError> {
        let (ledger, name) = (self.ledger, self.name.as_str());
        if let Some(node) = &ledger.node {
            shared::store(&*ledger.storage, name, node, pair, &self.lease)?;
        }
        let installing = Event::Installing {
            serial: pair.cert().serial_hex.clone(),
        };
        if let Err(e) = ledger.record(name, installing) {
            // A state directory that cannot be written must not keep a fresh certificate from its
            // servers; only a crash before the reload would then go unnoticed.
            tracing::warn!(cert = %name, error = %e, "cannot record the pending reload; installing anyway");
        }
        let paths = install::install(output, pair)?;
        // The summary of the new pair goes into the same write as `after`.
        let summary = install::stamp(output).ok().flatten().map(|stamp| {
            Box::new(InstalledSummary {
                stamp,
                cert: pair.cert().clone(),
                placeholder: pair.is_placeholder(),
            })
        });
        let events = after.into_iter().chain([Event::Observed(summary)]);
        let recorded = ledger.record_changes(name, events, Some(&self.lease));
        if let Err(e) = recorded {
            tracing::warn!(cert = %name, error = %e, "certificate installed, but its state could not be updated; fix the state directory");
        }
        if let Err(e) = self.drop_pending_key() {
            tracing::warn!(cert = %name, error = %e, "certificate installed, but the pending key could not be removed from the state directory");
        }
        Ok(paths)
    }

    /// Keep a copy of the revoked live pair aside (see [`install::keep_revoked`]) and record the
    /// revocation, so the next pass replaces it at once.
    pub fn revoked(
        &self,
        output: &OutputSpec,
        live: &Installed,
    ) -> Result<std::path::PathBuf, StoreError> {
        let kept = install::keep_revoked(output, live)?;
        self.record(Event::Revoked {
            serial: live.cert.serial_hex.clone(),
        })?;
        Ok(kept)
    }
}

/// True when `fullchain_pem` is one self-signed certificate (a placeholder, not from a CA).
pub fn is_self_signed_placeholder(fullchain_pem: &[u8]) -> bool {
    verify::parse_chain(fullchain_pem).is_ok_and(|c| verify::is_self_signed(&c))
}

/// Load and parse the JSON under `key`; `None` when there is none.
pub(crate) fn load_json<T: DeserializeOwned>(
    storage: &dyn Storage,
    key: &str,
) -> Result<Option<T>, StoreError> {
    match storage.load(key)? {
        None => Ok(None),
        Some(b) => {
            serde_json::from_slice(&b)
                .map(Some)
                .map_err(|source| StoreError::CorruptState {
                    path: storage.describe(key).into(),
                    source,
                })
        }
    }
}

/// The shared `state` of a certificate with this node's own facts from `mine` (reload facts and
/// the summary of what is installed here): in a fleet those in the shared state (copied by
/// `storage migrate` from one host) are that host's, not this node's.
fn with_node_facts(mut state: CertState, mine: &CertState) -> CertState {
    state.reload_pending.clone_from(&mine.reload_pending);
    state.reloaded_serial.clone_from(&mine.reloaded_serial);
    state.installed.clone_from(&mine.installed);
    state
}

/// `value` as pretty JSON, as stored under `key`.
fn json_bytes<T: Serialize>(
    storage: &dyn Storage,
    key: &str,
    value: &T,
) -> Result<Vec<u8>, StoreError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|source| StoreError::Encode {
        path: storage.describe(key).into(),
        source,
    })?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Store `value` as pretty JSON under `key`.
pub(crate) fn store_json<T: Serialize>(
    storage: &dyn Storage,
    key: &str,
    value: &T,
) -> Result<(), StoreError> {
    storage.store(key, &json_bytes(storage, key, value)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::{Backoff, Failure};
    use crate::store::FileStorage;
    use openssl::hash::MessageDigest;
    use openssl::pkey::{PKey, Private};
    use openssl::x509::{X509, X509NameBuilder};

    fn key() -> PKey<Private> {
        crate::acme::KeyType::EcdsaP256.generate().unwrap()
    }
    fn cert(cn: &str, issuer_cn: &str, key: &PKey<Private>, signer: &PKey<Private>) -> X509 {
        let name = |cn: &str| {
            let mut n = X509NameBuilder::new().unwrap();
            n.append_entry_by_text("CN", cn).unwrap();
            n.build()
        };
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_subject_name(&name(cn)).unwrap();
        b.set_issuer_name(&name(issuer_cn)).unwrap();
        b.set_pubkey(key).unwrap();
        b.set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&openssl::asn1::Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        b.sign(signer, MessageDigest::sha256()).unwrap();
        b.build()
    }

    #[test]
    fn self_signed_placeholders_are_recognised() {
        let k = key();
        let placeholder = cert("www.example.com", "www.example.com", &k, &k);
        assert!(is_self_signed_placeholder(&placeholder.to_pem().unwrap()));

        let ca = key();
        let ca_cert = cert("Test CA", "Test CA", &ca, &ca);
        let leaf = cert("www.example.com", "Test CA", &k, &ca);
        assert!(!is_self_signed_placeholder(&leaf.to_pem().unwrap()));
        let mut chain = leaf.to_pem().unwrap();
        chain.extend(ca_cert.to_pem().unwrap());
        assert!(!is_self_signed_placeholder(&chain));
        // same subject and issuer name but signed by another key: not self-signed
        let other = cert("x", "x", &k, &ca);
        assert!(!is_self_signed_placeholder(&other.to_pem().unwrap()));
    }

    fn ledger(dir: &std::path::Path) -> Ledger {
        Ledger::new(Arc::new(FileStorage::open(dir).unwrap()))
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn failed(at: &str, pause: bool) -> Event {
        Event::Failed {
            failure: Failure {
                at: ts(at),
                message: "boom".into(),
                pause,
                ca_wait: None,
                lifetime: None,
                backoff: Backoff::default(),
            },
            retry_fingerprint: "fp".into(),
        }
    }

    #[test]
    fn an_abandoned_order_is_not_resumable() {
        let tmp = tempfile::tempdir().unwrap();
        let l = ledger(tmp.path());
        let created = Event::OrderCreated {
            issuer: "le".into(),
            url: "https://ca/order/1".into(),
        };
        let st = l.record("www", created).unwrap();
        assert_eq!(st.order_url.as_deref(), Some("https://ca/order/1"));
        let st = l.record("www", Event::OrderAbandoned).unwrap();
        assert_eq!(st.order_url, None);
        assert_eq!(
            st.issuer.as_deref(),
            Some("le"),
            "only the order is forgotten"
        );
    }

    #[test]
    fn an_event_that_changes_nothing_is_not_written() {
        let tmp = tempfile::tempdir().unwrap();
        let l = ledger(tmp.path());
        let file = tmp.path().join("certs/www.json");
        // No order to abandon: no state file is made.
        l.record("www", Event::OrderAbandoned).unwrap();
        assert!(!file.exists());
        l.record(
            "www",
            Event::Revoked {
                serial: "01".into(),
            },
        )
        .unwrap();
        let inode = |p: &std::path::Path| {
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap())
        };
        let before = inode(&file);
        l.record("www", Event::OrderAbandoned).unwrap();
        assert_eq!(inode(&file), before, "unchanged state, no rewrite");
        // A corrupt file is rewritten even by an event that changes nothing.
        std::fs::write(&file, "{not json").unwrap();
        l.record("www", Event::OrderAbandoned).unwrap();
        assert_eq!(l.state("www").unwrap(), Some(CertState::default()));
    }

    #[test]
    fn events_change_only_their_own_fields() {
        let tmp = tempfile::tempdir().unwrap();
        let l = ledger(tmp.path());
        assert_eq!(l.state("www").unwrap(), None);
        l.record(
            "www",
            Event::Revoked {
                serial: "0a".into(),
            },
        )
        .unwrap();
        // An ARI refresh after the revocation keeps the revoked serial.
        let st = l
            .record(
                "www",
                Event::Ari {
                    cert_id: Some("id-1".into()),
                    result: AriResult::Window(
                        ts("2026-03-01T00:00:00Z"),
                        ts("2026-03-02T00:00:00Z"),
                    ),
                    refetch_at: ts("2026-02-01T06:00:00Z"),
                },
            )
            .unwrap();
        assert_eq!(st.revoked_serial.as_deref(), Some("0a"));
        assert!(st.ari_window.is_some());
        // A failed refresh keeps the window; one for another certificate drops it.
        let st = l
            .record(
                "www",
                Event::Ari {
                    cert_id: Some("id-1".into()),
                    result: AriResult::Failed,
                    refetch_at: ts("2026-02-01T07:00:00Z"),
                },
            )
            .unwrap();
        assert!(st.ari_window.is_some());
        let st = l
            .record(
                "www",
                Event::Ari {
                    cert_id: Some("id-2".into()),
                    result: AriResult::Failed,
                    refetch_at: ts("2026-02-01T07:00:00Z"),
                },
            )
            .unwrap();
        assert_eq!(
            (st.ari_window, st.ari_cert_id.as_deref()),
            (None, Some("id-2"))
        );

        let st = l
            .record("www", failed("2026-02-01T00:00:00Z", true))
            .unwrap();
        assert!(st.retry.paused && st.retry.failures == 1);
        let st = l
            .record(
                "www",
                Event::OrderCreated {
                    issuer: "le".into(),
                    url: "https://ca/order/1".into(),
                },
            )
            .unwrap();
        assert_eq!(st.order_url.as_deref(), Some("https://ca/order/1"));
        assert_eq!(st.retry.failures, 1, "an order does not reset the failures");
        l.record(
            "www",
            Event::Installing {
                serial: "0b".into(),
            },
        )
        .unwrap();
        let st = l
            .record(
                "www",
                Event::Issued {
                    issuer: "le".into(),
                    fingerprint: "f".into(),
                    ari_cert_id: Some("id-3".into()),
                    key_fingerprint: None,
                    at: ts("2026-02-01T01:00:00Z"),
                },
            )
            .unwrap();
        assert_eq!(st.retry.failures, 0);
        assert_eq!(st.order_url, None);
        assert_eq!(st.revoked_serial, None);
        assert_eq!(
            st.reload_pending.as_deref(),
            Some("0b"),
            "the reload is still to run"
        );
        let st = l
            .record(
                "www",
                Event::Reloaded {
                    serial: "0b".into(),
                },
            )
            .unwrap();
        assert_eq!(st.reload_pending, None);
        assert_eq!(st.reloaded_serial.as_deref(), Some("0b"));
        assert_eq!(l.state("www").unwrap(), Some(st));
    }

    #[test]
    fn concurrent_events_from_many_threads_are_all_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let l = ledger(tmp.path());
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..5 {
                        l.record("www", failed("2026-02-01T00:00:00Z", false))
                            .unwrap();
                    }
                });
            }
        });
        assert_eq!(l.state("www").unwrap().unwrap().retry.failures, 40);
    }

    #[test]
    fn corrupt_state_reads_as_empty_and_the_next_event_starts_afresh() {
        let tmp = tempfile::tempdir().unwrap();
        let l = ledger(tmp.path());
        std::fs::create_dir_all(tmp.path().join("certs")).unwrap();
        std::fs::write(tmp.path().join("certs/www.json"), "{not json").unwrap();
        let err = l.state("www").unwrap_err().to_string();
        assert!(err.contains("www.json is corrupt"), "{err}");
        let spec = OutputSpec {
            dir: tmp.path().join("tls"),
            owner: None,
            group: None,
            key_mode: 0o600,
            cert_mode: 0o644,
            allow_shared_dir: false,
        };
        let snap = l.snapshot("www", &spec);
        assert!(snap.state_error.is_some());
        assert!(snap.live().is_none() && snap.installed_error.is_none());
        let st = l
            .record(
                "www",
                Event::Revoked {
                    serial: "01".into(),
                },
            )
            .unwrap();
        assert_eq!(st.revoked_serial.as_deref(), Some("01"));
        assert!(matches!(l.state("../x"), Err(StoreError::InvalidName(_))));
    }

    #[test]
    fn the_installed_summary_is_used_while_the_files_are_unchanged_and_rebuilt_when_stale() {
        let tmp = tempfile::tempdir().unwrap();
        let l = ledger(&tmp.path().join("state"));
        let pki = crate::store::testpki::Pki::new();
        let names = vec!["a.test".to_string()];
        let spec = OutputSpec {
            dir: tmp.path().join("out"),
            owner: None,
            group: None,
            key_mode: 0o600,
            cert_mode: 0o644,
            allow_shared_dir: false,
        };
        let pair = |serial| {
            let (k, c) = pki.leaf(&["a.test"], serial, (-1, 90));
            let v = VerifiedPair::from_pem(&k, &c, &names, None).unwrap();
            (k, c, v)
        };
        let (k1, _c1, v1) = pair(1);
        let imported = Event::Imported {
            issuer: None,
            fingerprint: "f".into(),
            at: Timestamp::now(),
        };
        l.lock("www")
            .unwrap()
            .install(&spec, &v1, [imported])
            .unwrap();
        let summary = l.state("www").unwrap().unwrap().installed;
        let summary = summary.expect("the install records the summary in the same write");
        assert_eq!((&summary.cert, summary.placeholder), (v1.cert(), false));
        let snap = l.snapshot("www", &spec);
        assert_eq!(&snap.live().unwrap().cert, v1.cert());
        assert_eq!(snap.live().unwrap().key_pem().unwrap(), k1);

        // A pair switched behind the ledger's back: the stamp differs, so the files are read in
        // full; a read-only ledger does not write, a writing one rebuilds the summary.
        let (_k2, c2, v2) = pair(2);
        install::install(&spec, &v2).unwrap();
        let reader = Ledger::new(Arc::new(FileStorage::open_read_only(
            tmp.path().join("state"),
        )))
        .read_only();
        assert_eq!(
            &reader.snapshot("www", &spec).live().unwrap().cert,
            v2.cert()
        );
        let kept = l.state("www").unwrap().unwrap().installed;
        assert_eq!(kept.as_ref(), Some(&summary), "a reader never writes");
        assert_eq!(&l.snapshot("www", &spec).live().unwrap().cert, v2.cert());
        let rebuilt = l.state("www").unwrap().unwrap().installed.unwrap();
        assert_eq!(&rebuilt.cert, v2.cert());
        assert_eq!(rebuilt.stamp, install::stamp(&spec).unwrap().unwrap());

        // A file edited in place changes the stamp too: a snapshot taken before (from the
        // summary, its files not read yet) refuses the new bytes, the next one reads them in full.
        let before = l.snapshot("www", &spec);
        let key_file = spec.dir.join("privkey.pem");
        std::fs::write(&key_file, b"not a key").unwrap();
        let live = before.live().unwrap();
        assert!(matches!(live.key_pem(), Err(StoreError::Changed(_))));
        assert_eq!(
            live.fullchain_pem().unwrap(),
            c2,
            "an unchanged file is still read"
        );
        let snap = l.snapshot("www", &spec);
        assert!(snap.live().is_none() && snap.installed_error.is_some());

        // Gone: read as missing, and the summary is dropped.
        std::fs::remove_dir_all(&spec.dir).unwrap();
        l.lock("www")
            .unwrap()
            .install(&spec, &v1, [Event::OrderAbandoned])
            .unwrap();
        std::fs::remove_dir_all(&spec.dir).unwrap();
        let snap = l.snapshot("www", &spec);
        assert!(snap.installed.is_none() && snap.installed_error.is_none());
        assert_eq!(l.state("www").unwrap().unwrap().installed, None);
    }

    #[test]
    fn pending_key_lifecycle_and_lease() {
        let tmp = tempfile::tempdir().unwrap();
        let l = ledger(tmp.path());
        assert!(l.pending_key("www").unwrap().is_none());
        let held = l.lock("www").unwrap();
        held.save_pending_key(b"KEY").unwrap();
        assert_eq!(l.pending_key("www").unwrap().as_deref(), Some(&b"KEY"[..]));
        held.drop_pending_key().unwrap();
        held.drop_pending_key().unwrap();
        assert!(l.pending_key("www").unwrap().is_none());
        let err = l.lock("www").unwrap_err();
        assert!(
            err.to_string().contains("another certkeeper process"),
            "{err}"
        );
        // The state lock is a different one: events are recorded while the lease is held.
        held.record(Event::Revoked {
            serial: "01".into(),
        })
        .unwrap();
        l.record(
            "www",
            Event::Revoked {
                serial: "02".into(),
            },
        )
        .unwrap();
        drop(held);
        l.lock("www").unwrap();
    }

    /// On its own (file backend) a host keeps every fact in the one state file and has no shared
    /// pair; in a fleet, reload facts are per node and the other facts shared.
    #[test]
    fn node_facts_are_per_node_in_a_fleet_only() {
        let tmp = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(FileStorage::open(tmp.path()).unwrap());
        let alone = Ledger::new(storage.clone());
        alone
            .record(
                "www",
                Event::Installing {
                    serial: "0a".into(),
                },
            )
            .unwrap();
        assert!(!tmp.path().join("nodes").exists());
        assert_eq!(
            alone
                .state("www")
                .unwrap()
                .unwrap()
                .reload_pending
                .as_deref(),
            Some("0a")
        );
        assert!(alone.shared_pair("www").unwrap().is_none());

        let (a, b) = (
            Ledger::shared(storage.clone(), "web1").unwrap(),
            Ledger::shared(storage, "web2").unwrap(),
        );
        a.record(
            "api",
            Event::Installing {
                serial: "0b".into(),
            },
        )
        .unwrap();
        a.record(
            "api",
            Event::Revoked {
                serial: "09".into(),
            },
        )
        .unwrap();
        let seen_by_b = b.state("api").unwrap().unwrap();
        assert_eq!(seen_by_b.revoked_serial.as_deref(), Some("09"), "shared");
        assert_eq!(seen_by_b.reload_pending, None, "web1's reload is web1's");
        let seen_by_a = a.state("api").unwrap().unwrap();
        assert_eq!(seen_by_a.reload_pending.as_deref(), Some("0b"));
        assert!(tmp.path().join("nodes/web1/api.json").exists());
        assert!(Ledger::shared(Arc::new(FileStorage::open(tmp.path()).unwrap()), "../x").is_err());
    }
}
