//! `certkeeper check`: validate the config, then probe what can be probed without issuing anything —
//! the CA directory and its TLS, the account for the stored key, the output directories, the HTTP-01
//! listener address and the DNS provider credentials. One line per result, `OK` or `FAIL` with the fix.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::acme::{self, AcmeError, ProblemKind, ProblemOrigin};
use crate::caa;
use crate::challenge::dns01::zone::Lookup;
use crate::config::{CertificateConfig, Config, IssuerConfig, SolverKind};
use crate::engine::USER_AGENT;
use crate::store::{self, AccountStore, FileStorage};

/// Longest time the network probes of one issuer may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// One probe result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// True when the probe passed.
    pub ok: bool,
    /// What was checked and what was found; for a failure also what to do.
    pub message: String,
}

impl Probe {
    pub(crate) fn ok(message: impl Into<String>) -> Self {
        Self {
            ok: true,
            message: message.into(),
        }
    }

    pub(crate) fn fail(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}",
            if self.ok { "OK  " } else { "FAIL" },
            self.message
        )
    }
}

/// Run every probe, print one line each, and return the exit code (0 all OK, 1 any FAIL).
pub async fn run(path: &Path, cfg: Config, offline: bool) -> ExitCode {
    println!(
        "OK   config {} is valid: {} issuer(s), {} certificate(s)",
        path.display(),
        cfg.issuers.len(),
        cfg.certificates.len()
    );
    let probes = probes(&cfg, offline).await;
    for p in &probes {
        println!("{p}");
    }
    if probes.iter().all(|p| p.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Every probe for `cfg`; the network ones (CA directory, account) only when `offline` is false.
pub async fn probes(cfg: &Config, offline: bool) -> Vec<Probe> {
    let mut out = Vec::new();
    // `check` creates nothing: the state directory is looked at, never made or changed.
    out.push(state_dir_probe(&cfg.state_dir));
    out.extend(super::storage_probe::probes(cfg, offline).await);
    let state = Some(AccountStore::new(std::sync::Arc::new(
        FileStorage::open_read_only(&cfg.state_dir),
    )));
    let caa = CaaContext {
        certificates: cfg.certificates.values().collect(),
        resolvers: &cfg.dns01.resolvers,
    };
    for issuer in cfg.issuers.values() {
        if offline {
            if let Err(p) = bundle(issuer) {
                out.push(p);
            }
        } else {
            let profiled: Vec<(&str, &str)> = cfg
                .certificates
                .values()
                .filter(|c| c.issuers.contains(&issuer.name))
                .filter_map(|c| c.profile.as_deref().map(|p| (c.name.as_str(), p)))
                .collect();
            match tokio::time::timeout(
                PROBE_TIMEOUT,
                issuer_probes(issuer, &profiled, state.as_ref(), &caa),
            )
            .await
            {
                Ok(mut v) => out.append(&mut v),
                Err(_) => out.push(Probe::fail(format!(
                    "issuer {}: the CA at {} did not answer within {PROBE_TIMEOUT:?} — check the directory URL, \
                     DNS and firewall (outgoing HTTPS)",
                    issuer.name, issuer.directory
                ))),
            }
            out.extend(persist_probes(cfg, issuer, state.as_ref()).await);
        }
        out.extend(solver_probes(issuer));
    }
    for cert in cfg.certificates.values() {
        out.push(output_probe(&cert.name, &cert.output.dir));
    }
    if cfg.issuers.values().any(|i| {
        i.solvers
            .iter()
            .any(|s| matches!(s.kind, SolverKind::Http01 { .. }))
    }) {
        for addr in &cfg.http01.listen {
            out.push(listener_probe(*addr).await);
        }
    }
    out
}

/// Whether certkeeper, as the user running `check`, can use `dir` as its state directory, without
/// creating or changing anything.
fn state_dir_probe(dir: &std::path::Path) -> Probe {
    use nix::unistd::{AccessFlags, access};
    let shown = dir.display();
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => Probe::fail(format!(
            "state directory {shown} is not a directory — remove it or point state_dir elsewhere"
        )),
        Ok(_) => match access(
            dir,
            AccessFlags::R_OK | AccessFlags::W_OK | AccessFlags::X_OK,
        ) {
            Ok(()) => Probe::ok(format!("state directory {shown} is usable")),
            Err(e) => Probe::fail(format!(
                "state directory {shown}: {e} — run certkeeper as the user that owns it (e.g. `runuser -u certkeeper -- certkeeper ...`)"
            )),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = dir.parent().unwrap_or(std::path::Path::new("/"));
            match access(parent, AccessFlags::W_OK | AccessFlags::X_OK) {
                Ok(()) => Probe::ok(format!(
                    "state directory {shown} does not exist yet; the first run creates it (mode 0700)"
                )),
                Err(_) => Probe::fail(format!(
                    "state directory {shown} does not exist and {} is not writable — create it: \
                     `systemd-tmpfiles --create` (packaged unit) or `install -d -m 0700 -o certkeeper {shown}`",
                    parent.display()
                )),
            }
        }
        Err(e) => Probe::fail(format!("state directory {shown}: {e}")),
    }
}

/// The issuer's extra trust roots, or the probe that says why they cannot be used.
fn bundle(issuer: &IssuerConfig) -> Result<Vec<openssl::x509::X509>, Probe> {
    let Some(path) = &issuer.ca_bundle else {
        return Ok(Vec::new());
    };
    let pem = std::fs::read(path).map_err(|e| {
        Probe::fail(format!(
            "issuer {}: cannot read ca_bundle {}: {e} — fix the path or its permissions",
            issuer.name,
            path.display()
        ))
    })?;
    openssl::x509::X509::stack_from_pem(&pem)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            Probe::fail(format!(
                "issuer {}: ca_bundle {} holds no PEM certificate — point it at the CA's root certificate \
                 (-----BEGIN CERTIFICATE-----)",
                issuer.name,
                path.display()
            ))
        })
}

/// What the CAA probes need besides the issuer: every certificate and the resolvers.
struct CaaContext<'a> {
    certificates: Vec<&'a CertificateConfig>,
    resolvers: &'a [SocketAddr],
}

/// The CA probes of one issuer; `profiled` are the (certificate, profile) pairs that use it.
async fn issuer_probes(
    issuer: &IssuerConfig,
    profiled: &[(&str, &str)],
    state: Option<&AccountStore>,
    caa: &CaaContext<'_>,
) -> Vec<Probe> {
    let mut out = Vec::new();
    let roots = match bundle(issuer) {
        Ok(r) => r,
        Err(p) => return vec![p],
    };
    let client = match acme::Client::new(&issuer.directory, &roots, USER_AGENT).await {
        Ok(c) => c,
        Err(e) => {
            out.push(Probe::fail(format!("issuer {}: {e}", issuer.name)));
            return out;
        }
    };
    let trust = match &issuer.ca_bundle {
        Some(p) => format!("TLS verified with ca_bundle {}", p.display()),
        None => "TLS verified with the system roots".to_string(),
    };
    out.push(Probe::ok(format!(
        "issuer {}: directory {} reachable, {trust}",
        issuer.name, issuer.directory
    )));
    let meta = &client.directory().meta;
    if meta.external_account_required && issuer.eab.is_none() {
        out.push(Probe::fail(format!(
            "issuer {}: the CA requires external account binding — set `eab = {{ kid = \"...\", hmac_key_file = \"...\" }}` \
             with the values from the CA's account page",
            issuer.name
        )));
    }
    for (cert, profile) in profiled {
        out.push(profile_probe(&issuer.name, cert, profile, &meta.profiles));
    }
    let account_uri = match state {
        Some(state) => account_probes(issuer, &client, state, &mut out).await,
        None => None,
    };
    out.extend(caa_probes(issuer, &meta.caa_identities, caa, account_uri.as_deref()).await);
    out
}

/// The CAA preflight of every certificate using `issuer` (`caa`: those certificates and the
/// resolvers), as orders run it: a refusal fails, a name the resolvers cannot answer for is
/// reported but passes (the CA decides), and a CA without CAA identities is skipped, saying so.
async fn caa_probes(
    issuer: &IssuerConfig,
    published: &[String],
    caa: &CaaContext<'_>,
    account_uri: Option<&str>,
) -> Vec<Probe> {
    let certs: Vec<&CertificateConfig> = caa
        .certificates
        .iter()
        .copied()
        .filter(|c| c.issuers.contains(&issuer.name))
        .collect();
    if certs.is_empty() {
        return Vec::new();
    }
    let identities = caa::identities(issuer, published);
    if identities.is_empty() {
        return vec![Probe::ok(format!(
            "issuer {}: the CA publishes no caaIdentities in its directory, so CAA records are not checked \
             (set `caa_identities = [\"...\"]` in the issuer to check them)",
            issuer.name
        ))];
    }
    let lookup = Lookup::resolvers(caa.resolvers);
    let mut out = Vec::new();
    for cert in certs {
        let names = caa::names_to_check(cert, issuer);
        let findings = caa::check(&lookup, &identities, account_uri, &names).await;
        for f in findings {
            out.push(match f {
                caa::Finding::Allowed { name, why } => Probe::ok(format!(
                    "certificate {}: CAA for {name} allows issuer {}: {why}",
                    cert.name, issuer.name
                )),
                caa::Finding::Refused { name, why } => Probe::fail(format!(
                    "certificate {}: CAA for {name} forbids issuer {}: {why}",
                    cert.name, issuer.name
                )),
                caa::Finding::Unchecked { name, error } => Probe::ok(format!(
                    "certificate {}: CAA for {name} not checked, the resolvers did not answer ({error}); \
                     orders go ahead and the CA checks CAA itself",
                    cert.name
                )),
            });
        }
    }
    out
}

/// The account probe for the stored key, pushed to `out`; returns the account URL when the CA knows
/// the account.
async fn account_probes(
    issuer: &IssuerConfig,
    client: &acme::Client,
    state: &AccountStore,
    out: &mut Vec<Probe>,
) -> Option<String> {
    let id = store::account_id(&issuer.name, &issuer.directory);
    let stored = match state.load(&id) {
        Ok(s) => s,
        Err(e) => {
            out.push(Probe::fail(format!(
                "issuer {}: cannot read the stored account: {e}",
                issuer.name
            )));
            return None;
        }
    };
    let Some(stored) = stored else {
        out.push(Probe::ok(format!(
            "issuer {}: no account yet; certkeeper registers one at the first issuance",
            issuer.name
        )));
        return None;
    };
    let key = match acme::AccountKey::from_pem(stored.key_pem.as_bytes()) {
        Ok(k) => k,
        Err(e) => {
            out.push(Probe::fail(format!(
                "issuer {}: the stored account key in {} is unreadable: {e} — move that directory \
                 away to register a new account",
                issuer.name,
                state.describe(&id)
            )));
            return None;
        }
    };
    let lookup = client
        .post(
            &key,
            acme::jws::KeyRef::Jwk,
            &client.directory().new_account,
            Some(br#"{"onlyReturnExisting":true}"#),
            ProblemOrigin::NewAccount,
            false,
        )
        .await;
    let mut url = None;
    out.push(match lookup {
        Ok(r) => {
            url = r.location();
            Probe::ok(format!(
                "issuer {}: account {} exists for the stored key",
                issuer.name,
                url.as_deref().unwrap_or("(no URL given)")
            ))
        }
        Err(AcmeError::Problem(p)) if p.kind() == ProblemKind::AccountDoesNotExist => {
            Probe::ok(format!(
                "issuer {}: the CA has no account for the stored key yet; certkeeper registers it at the next \
                 issuance",
                issuer.name
            ))
        }
        Err(AcmeError::Problem(p)) => Probe::fail(format!(
            "issuer {}: account lookup refused: {} — {}",
            issuer.name,
            p.detail.as_deref().unwrap_or(&p.type_),
            p.advice()
        )),
        Err(e) => Probe::fail(format!("issuer {}: account lookup failed: {e}", issuer.name)),
    });
    url
}

/// Whether the CA's directory lists the profile a certificate asks for.
fn profile_probe(
    issuer: &str,
    cert: &str,
    profile: &str,
    offered: &std::collections::BTreeMap<String, String>,
) -> Probe {
    if offered.contains_key(profile) {
        Probe::ok(format!(
            "certificate {cert}: issuer {issuer} offers profile {profile:?}"
        ))
    } else if offered.is_empty() {
        Probe::fail(format!(
            "certificate {cert}: profile {profile:?} is set, but issuer {issuer} offers no profiles — remove \
             `profile` (orders to this CA would be refused before they are sent)"
        ))
    } else {
        let names: Vec<&str> = offered.keys().map(String::as_str).collect();
        Probe::fail(format!(
            "certificate {cert}: issuer {issuer} does not offer profile {profile:?}; it offers: {} — set \
             `profile` to one of them",
            names.join(", ")
        ))
    }
}

/// dns-persist-01 (experimental): the standing record of every name a dns_persist01 solver of
/// `issuer` proves, read at the authoritative nameservers as before an order, for the stored
/// account.
async fn persist_probes(
    cfg: &Config,
    issuer: &IssuerConfig,
    state: Option<&AccountStore>,
) -> Vec<Probe> {
    use crate::challenge::IdentifierKind;
    use crate::challenge::dnspersist01::DnsPersist01Solver;
    let mut names = Vec::new();
    for cert in cfg.certificates.values() {
        if !cert.issuers.contains(&issuer.name) {
            continue;
        }
        for d in &cert.domains {
            let (kind, name) = IdentifierKind::split(d);
            if let Some(SolverKind::DnsPersist01 {
                issuer_domain,
                propagation,
            }) = issuer.solver_for(name, kind).map(|s| &s.kind)
            {
                let solver = DnsPersist01Solver::new(issuer_domain, propagation.clone());
                names.push((d.clone(), name.to_string(), kind, solver));
            }
        }
    }
    if names.is_empty() {
        return Vec::new();
    }
    let id = store::account_id(&issuer.name, &issuer.directory);
    let url = state
        .and_then(|s| s.load(&id).ok().flatten())
        .and_then(|a| a.record)
        .map(|r| r.url);
    let Some(url) = url else {
        return vec![Probe::ok(format!(
            "issuer {}: no account yet, so no dns-persist-01 record can name it: `certkeeper account \
             persist-record --issuer {}` registers it and prints the records to publish",
            issuer.name, issuer.name
        ))];
    };
    let mut out = Vec::new();
    for (written, name, kind, solver) in names {
        let wildcard = kind == IdentifierKind::Wildcard;
        out.push(match solver.check(&name, wildcard, &url).await {
            Ok(()) => Probe::ok(format!(
                "issuer {}: the dns-persist-01 record for {written} is in place",
                issuer.name
            )),
            Err(e) => Probe::fail(format!("issuer {}: {e}", issuer.name)),
        });
    }
    out
}

/// Solver probes: DNS provider credentials (built as issuance would) and webroot writability.
fn solver_probes(issuer: &IssuerConfig) -> Vec<Probe> {
    issuer
        .solvers
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match &s.kind {
            SolverKind::Webroot { path, .. } => Some(webroot_probe(&issuer.name, i, path)),
            SolverKind::Dns01 { provider, .. } => Some(match provider.build() {
                Ok(p) => Probe::ok(format!(
                    "issuer {} solver[{i}]: dns01 provider {} configured, credentials readable",
                    issuer.name,
                    p.name()
                )),
                Err(e) => Probe::fail(format!(
                    "issuer {} solver[{i}]: dns01 provider: {e}",
                    issuer.name
                )),
            }),
            _ => None,
        })
        .collect()
}

/// Whether certkeeper can write challenge files under a webroot.
fn webroot_probe(issuer: &str, i: usize, root: &Path) -> Probe {
    if !root.is_dir() {
        return Probe::fail(format!(
            "issuer {issuer} solver[{i}]: webroot {} is not a directory — set `path` to the `root` your web server serves for these names on port 80",
            root.display()
        ));
    }
    let challenge_dir = root.join(".well-known/acme-challenge");
    let probe = output_probe("(webroot)", &challenge_dir);
    if probe.ok {
        Probe::ok(format!(
            "issuer {issuer} solver[{i}]: webroot {} is writable",
            root.display()
        ))
    } else {
        Probe::fail(format!(
            "issuer {issuer} solver[{i}]: cannot write challenge files under {} — give certkeeper's user write access to it",
            challenge_dir.display()
        ))
    }
}

/// Whether certkeeper can write `dir`, or create it.
fn output_probe(cert: &str, dir: &Path) -> Probe {
    if dir.is_dir() {
        return match tempfile::Builder::new()
            .prefix(".certkeeper-check")
            .tempfile_in(dir)
        {
            Ok(_) => Probe::ok(format!(
                "certificate {cert}: output directory {} is writable",
                dir.display()
            )),
            Err(e) => Probe::fail(format!(
                "certificate {cert}: output directory {} is not writable: {e} — run certkeeper as root or \
                 give its user write access to the directory (and mount it read-write)",
                dir.display()
            )),
        };
    }
    if dir.exists() {
        return Probe::fail(format!(
            "certificate {cert}: output.dir {} exists but is not a directory — point output.dir elsewhere",
            dir.display()
        ));
    }
    let mut parent: PathBuf = dir.to_path_buf();
    while !parent.exists() {
        match parent.parent() {
            Some(p) if !p.as_os_str().is_empty() => parent = p.to_path_buf(),
            _ => break,
        }
    }
    match nix::unistd::access(&parent, nix::unistd::AccessFlags::W_OK) {
        Ok(()) if parent.is_dir() => Probe::ok(format!(
            "certificate {cert}: output directory {} does not exist yet; it will be created under {}",
            dir.display(),
            parent.display()
        )),
        _ => Probe::fail(format!(
            "certificate {cert}: output directory {} does not exist and {} is not writable — create the \
             directory or run certkeeper as a user that may",
            dir.display(),
            parent.display()
        )),
    }
}

/// Whether the HTTP-01 listener can bind `addr`, or a running certkeeper already serves there.
async fn listener_probe(addr: SocketAddr) -> Probe {
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Probe::ok(format!("http01.listen {addr} is free")),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if served_by_certkeeper(addr).await {
                Probe::ok(format!(
                    "http01.listen {addr} is served by a running certkeeper (the daemon)"
                ))
            } else {
                Probe::fail(format!(
                    "http01.listen {addr} is in use by another program — stop it, or listen on a free port and \
                     proxy /.well-known/acme-challenge/ to it (`ss -ltnp 'sport = :{}'` shows who holds it)",
                    addr.port()
                ))
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Probe::fail(format!(
            "http01.listen {addr}: permission denied ({e}) — ports below 1024 need root or \
             CAP_NET_BIND_SERVICE (AmbientCapabilities= in the systemd unit), or use a high port behind nginx"
        )),
        Err(e) => Probe::fail(format!(
            "http01.listen {addr}: cannot bind ({e}) — use an address of this host"
        )),
    }
}

async fn served_by_certkeeper(addr: SocketAddr) -> bool {
    let Ok(client) = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
    else {
        return false;
    };
    client
        .get(format!("http://{addr}/"))
        .send()
        .await
        .ok()
        .and_then(|r| {
            r.headers()
                .get(reqwest::header::SERVER)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.starts_with(crate::challenge::http01::SERVER_NAME))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_probe_cases() {
        let mut offered = std::collections::BTreeMap::new();
        let p = profile_probe("le", "www", "shortlived", &offered);
        assert!(!p.ok && p.message.contains("offers no profiles"), "{p}");
        offered.insert("classic".to_string(), "90 days".to_string());
        offered.insert("shortlived".to_string(), "6 days".to_string());
        let p = profile_probe("le", "www", "shortlived", &offered);
        assert!(p.ok, "{p}");
        let p = profile_probe("le", "www", "tlsserver", &offered);
        assert!(
            !p.ok && p.message.contains("it offers: classic, shortlived"),
            "{p}"
        );
    }

    #[test]
    fn webroot_probe_cases() {
        let dir = tempfile::tempdir().unwrap();
        let p = webroot_probe("le", 0, dir.path());
        assert!(p.ok && p.message.contains("is writable"), "{p}");
        let p = webroot_probe("le", 1, &dir.path().join("missing"));
        assert!(!p.ok && p.message.contains("is not a directory"), "{p}");
    }

    #[test]
    fn output_probe_cases() {
        let dir = tempfile::tempdir().unwrap();
        assert!(output_probe("www", dir.path()).ok);
        let p = output_probe("www", &dir.path().join("a/b"));
        assert!(p.ok && p.message.contains("will be created"), "{p}");
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let p = output_probe("www", &file);
        assert!(!p.ok && p.message.contains("not a directory"), "{p}");
        let ro = dir.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::os::unix::fs::PermissionsExt::from_mode(0o500)).unwrap();
        // root may write anywhere; the probe must agree with what a write would do.
        let root = nix::unistd::geteuid().is_root();
        let p = output_probe("www", &ro);
        assert_eq!(p.ok, root, "{p}");
        if !root {
            assert!(p.message.contains("is not writable"), "{p}");
        }
    }

    #[tokio::test]
    async fn listener_probe_free_taken_and_certkeeper() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let p = listener_probe(addr).await;
        assert!(
            !p.ok && p.message.contains("in use by another program"),
            "{p}"
        );
        drop(l);
        assert!(listener_probe(addr).await.ok);
        let tokens = crate::challenge::http01::TokenStore::new();
        let server =
            crate::challenge::http01::Http01Server::bind(&["127.0.0.1:0".parse().unwrap()], tokens)
                .unwrap();
        let addr = server.local_addrs()[0];
        let stop = tokio_util::sync::CancellationToken::new();
        let _t = server.serve(stop.clone()).unwrap();
        let p = listener_probe(addr).await;
        assert!(p.ok && p.message.contains("running certkeeper"), "{p}");
        stop.cancel();
    }
}
