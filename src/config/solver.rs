//! `[[issuer.NAME.solver]]`: exactly one solver kind per table (http01, webroot, tlsalpn01,
//! dns01, dns_persist01), its selector, the http01/webroot self-check, the dns01 provider table
//! and the propagation check.

use std::net::{IpAddr, SocketAddr};

use toml::Spanned;

use super::raw::{
    RawDnsPersist01, RawPropagation, RawProvider, RawSelector, RawSelfCheck, RawSolver,
    RawTlsAlpn01,
};
use super::secret::credentials_to_files;
use super::validate::{Ctx, duration, normalize_name, written};
use super::{PropagationConfig, Selector, SolverConfig, SolverKind};
use crate::challenge::IdentifierKind;
use crate::challenge::dns01::providers::{DnsProviderConfig, SettingError};

/// The solver table `s` at key `p` (`issuer.X.solver[i]`) in `file`: one kind, its selector and
/// its settings; `None` when the kind or its settings are wrong.
pub(super) fn solver(
    cx: &mut Ctx,
    file: usize,
    p: &str,
    s: &Spanned<RawSolver>,
) -> Option<SolverConfig> {
    let raw = s.get_ref();
    if !one_kind(cx, file, p, s) {
        return None;
    }
    if let (Some(prop), None, None) = (&raw.propagation, &raw.dns01, &raw.dns_persist01) {
        cx.err(
            file,
            &prop.span(),
            format!("{p}.propagation"),
            "only applies to dns01 solvers: remove it",
        );
    }
    let selector = match &raw.selector {
        Some(sel) => selector(cx, file, p, sel),
        None => Selector::default(),
    };
    let kind = solver_kind(cx, file, p, raw)?;
    Some(SolverConfig { selector, kind })
}

/// The solver table `s` at key `p` sets exactly one of the solver kinds (else it is reported).
fn one_kind(cx: &mut Ctx, file: usize, p: &str, s: &Spanned<RawSolver>) -> bool {
    let raw = s.get_ref();
    let mut kinds = Vec::new();
    if raw.http01.is_some() {
        kinds.push("http01");
    }
    if raw.webroot.is_some() {
        kinds.push("webroot");
    }
    if raw.tlsalpn01.is_some() {
        kinds.push("tlsalpn01");
    }
    if raw.dns01.is_some() {
        kinds.push("dns01");
    }
    if raw.dns_persist01.is_some() {
        kinds.push("dns_persist01");
    }
    if kinds.len() == 1 {
        return true;
    }
    let msg = if kinds.is_empty() {
        "no solver kind: set exactly one of http01 = {}, webroot = { path = \"...\" }, tlsalpn01 = {}, dns01 = { provider = \"...\" }"
            .to_string()
    } else {
        format!(
            "set exactly one of http01, webroot, tlsalpn01, dns01 per solver, found {}: split them into separate [[...solver]] tables",
            kinds.join(" and ")
        )
    };
    cx.err(file, &s.span(), p, msg);
    false
}

/// `selector = { dns_zones, dns_names }` of the solver at key `p`: zones are DNS names, names are
/// DNS names, wildcards or IP addresses.
fn selector(cx: &mut Ctx, file: usize, p: &str, sel: &RawSelector) -> Selector {
    let mut selector = Selector::default();
    for (i, z) in sel.dns_zones.iter().enumerate() {
        match normalize_name(z.get_ref()) {
            Ok((IdentifierKind::Dns, n)) => selector.dns_zones.push(n),
            Ok(_) => cx.err(
                file,
                &z.span(),
                format!("{p}.selector.dns_zones[{i}]"),
                format!(
                    "\"{}\" is not a DNS zone name: write e.g. \"example.com\"",
                    z.get_ref()
                ),
            ),
            Err(msg) => cx.err(file, &z.span(), format!("{p}.selector.dns_zones[{i}]"), msg),
        }
    }
    for (i, n) in sel.dns_names.iter().enumerate() {
        match normalize_name(n.get_ref()) {
            Ok((kind, n)) => selector.dns_names.push(written(kind, &n)),
            Err(msg) => cx.err(file, &n.span(), format!("{p}.selector.dns_names[{i}]"), msg),
        }
    }
    selector
}

/// The settings of the one solver kind `raw` (at key `p`) sets; `None` when they are wrong.
fn solver_kind(cx: &mut Ctx, file: usize, p: &str, raw: &RawSolver) -> Option<SolverKind> {
    let kind = if let Some(h) = &raw.http01 {
        let (self_check, self_check_target) = self_check_setting(
            cx,
            file,
            &format!("{p}.http01"),
            h.get_ref().self_check.as_ref(),
        );
        SolverKind::Http01 {
            self_check,
            self_check_target,
        }
    } else if let Some(w) = &raw.webroot {
        let (self_check, self_check_target) = self_check_setting(
            cx,
            file,
            &format!("{p}.webroot"),
            w.get_ref().self_check.as_ref(),
        );
        SolverKind::Webroot {
            path: cx.resolve(file, w.get_ref().path.get_ref()),
            self_check,
            self_check_target,
        }
    } else if let Some(t) = &raw.tlsalpn01 {
        SolverKind::TlsAlpn01 {
            listen: tlsalpn01_listen(cx, file, p, t)?,
        }
    } else if let Some(d) = &raw.dns01 {
        let propagation = propagation_setting(cx, file, p, raw.propagation.as_ref());
        SolverKind::Dns01 {
            provider: dns_provider(cx, file, &format!("{p}.dns01"), d)?,
            propagation,
        }
    } else if let Some(d) = &raw.dns_persist01 {
        dns_persist01(cx, file, p, d, raw.propagation.as_ref())?
    } else {
        return None;
    };
    Some(kind)
}

/// `tlsalpn01 = { listen }` of the solver at key `p`: an address:port (default 0.0.0.0:443).
fn tlsalpn01_listen(
    cx: &mut Ctx,
    file: usize,
    p: &str,
    t: &Spanned<RawTlsAlpn01>,
) -> Option<SocketAddr> {
    match &t.get_ref().listen {
        None => Some(SocketAddr::from(([0, 0, 0, 0], 443))),
        Some(l) => match l.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                cx.err(
                    file,
                    &l.span(),
                    format!("{p}.tlsalpn01.listen"),
                    format!(
                        "\"{}\" is not an address:port: write e.g. \"0.0.0.0:443\"",
                        l.get_ref()
                    ),
                );
                None
            }
        },
    }
}

/// `dns_persist01 = { issuer_domain }` of the solver at key `p`: the CA's issuer domain name
/// (lower-case, without a trailing dot), then the `propagation` table next to it.
fn dns_persist01(
    cx: &mut Ctx,
    file: usize,
    p: &str,
    d: &Spanned<RawDnsPersist01>,
    propagation: Option<&Spanned<RawPropagation>>,
) -> Option<SolverKind> {
    let domain = d
        .get_ref()
        .issuer_domain
        .get_ref()
        .trim()
        .trim_end_matches('.');
    if domain.is_empty() || domain.contains(char::is_whitespace) || !domain.contains('.') {
        cx.err(
            file,
            &d.get_ref().issuer_domain.span(),
            format!("{p}.dns_persist01.issuer_domain"),
            "is not a domain name: give the CA's issuer domain name, e.g. \"letsencrypt.org\" (the CA documents it; it is in its dns-persist-01 challenges as issuer-domain-names)",
        );
        return None;
    }
    Some(SolverKind::DnsPersist01 {
        issuer_domain: domain.to_ascii_lowercase(),
        propagation: propagation_setting(cx, file, p, propagation),
    })
}

/// `self_check = true | false | { port, resolve }` of an http01 or webroot solver at key `p`
/// (`issuer.X.solver[i].http01`): on by default, port 80 of the name's own addresses.
fn self_check_setting(
    cx: &mut Ctx,
    file: usize,
    p: &str,
    raw: Option<&Spanned<RawSelfCheck>>,
) -> (bool, crate::challenge::http01::SelfCheckTarget) {
    let mut self_check = true;
    let mut self_check_target = crate::challenge::http01::SelfCheckTarget::default();
    match raw.map(|s| s.get_ref()) {
        None => {}
        Some(RawSelfCheck::Enabled(b)) => self_check = *b,
        Some(RawSelfCheck::Target(t)) => {
            if let Some(port) = &t.port {
                match u16::try_from(*port.get_ref()) {
                    Ok(n) if n > 0 => self_check_target.port = n,
                    _ => cx.err(
                        file,
                        &port.span(),
                        format!("{p}.self_check.port"),
                        format!(
                            "{} is not a TCP port: write a number from 1 to 65535",
                            port.get_ref()
                        ),
                    ),
                }
            }
            if let Some(resolve) = &t.resolve {
                for v in &resolve.get_ref().0 {
                    match v.parse::<IpAddr>() {
                        Ok(ip) => self_check_target.resolve.push(ip),
                        Err(_) => cx.err(
                            file,
                            &resolve.span(),
                            format!("{p}.self_check.resolve"),
                            format!("{v:?} is not an IP address: write e.g. \"203.0.113.7\" or \"2001:db8::7\""),
                        ),
                    }
                }
            }
        }
    }
    (self_check, self_check_target)
}

/// The `propagation = { .. }` table next to a dns01 or dns_persist01 solver at key `p`.
fn propagation_setting(
    cx: &mut Ctx,
    file: usize,
    p: &str,
    raw: Option<&Spanned<RawPropagation>>,
) -> PropagationConfig {
    let mut propagation = PropagationConfig::default();
    if let Some(pr) = raw {
        let pr = pr.get_ref();
        if let Some(c) = pr.check {
            propagation.check = c;
        }
        if let Some(t) = duration(
            cx,
            file,
            pr.timeout.as_ref(),
            &format!("{p}.propagation.timeout"),
        ) {
            propagation.timeout = t;
        }
        if let Some(t) = duration(
            cx,
            file,
            pr.interval.as_ref(),
            &format!("{p}.propagation.interval"),
        ) {
            propagation.interval = t;
        }
        for (i, ns) in pr.nameservers.iter().enumerate() {
            let v = ns.get_ref();
            let addr = v
                .parse::<SocketAddr>()
                .ok()
                .or_else(|| v.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)));
            if let Some(addr) = addr {
                propagation.nameservers.push(addr);
            } else {
                cx.err(
                    file,
                    &ns.span(),
                    format!("{p}.propagation.nameservers[{i}]"),
                    format!("\"{v}\" is not a nameserver address: write an IP address with an optional port, e.g. \"192.0.2.53\" or \"127.0.0.1:5353\""),
                );
            }
        }
    }
    propagation
}

/// The `dns01` table at key `p` in `file`: the provider's settings parsed and checked (without
/// reading secrets: a secret file that appears later is fine), and relative paths in it resolved
/// against `file`'s directory. Problems name the key inside the table.
fn dns_provider(
    cx: &mut Ctx,
    file: usize,
    p: &str,
    raw: &Spanned<RawProvider>,
) -> Option<DnsProviderConfig> {
    let name = provider_name(cx, file, p, raw)?;
    let mut settings: toml::Table = raw
        .get_ref()
        .iter()
        .filter(|(k, _)| k.get_ref() != "provider")
        .map(|(k, v)| (k.get_ref().clone(), v.get_ref().clone()))
        .collect();
    let report = |cx: &mut Ctx, e: SettingError| report_setting(cx, file, p, raw, name, e);
    // `<key>_credential` becomes `<key>_file` in $CREDENTIALS_DIRECTORY.
    let credentials = match credentials_to_files(&mut settings) {
        Ok(c) => c,
        Err(problems) => {
            for (key, message) in problems {
                report(cx, SettingError::new(key, message));
            }
            return None;
        }
    };
    let mut config = match DnsProviderConfig::from_table(name, settings) {
        Ok(c) => c,
        Err(e) => {
            report(cx, credential_without_file(name, &credentials, e));
            return None;
        }
    };
    let problems = config.check();
    if !problems.is_empty() {
        for e in problems {
            report(cx, e);
        }
        return None;
    }
    for (key, path) in config.paths_mut() {
        // A bare exec `command` (no `/`) is looked up in PATH, as a shell would.
        let bare_command = key == "command" && path.components().count() < 2;
        if !path.is_absolute() && !bare_command {
            *path = cx.resolve(file, &*path);
        }
    }
    Some(config)
}

/// `provider = "NAME"` of the `dns01` table at key `p`: set, and a string (which provider it
/// names is checked by [`DnsProviderConfig::from_table`]).
fn provider_name<'a>(
    cx: &mut Ctx,
    file: usize,
    p: &str,
    raw: &'a Spanned<RawProvider>,
) -> Option<&'a str> {
    let names = DnsProviderConfig::NAMES.join(", ");
    let Some(name_value) = raw
        .get_ref()
        .iter()
        .find_map(|(k, v)| (k.get_ref() == "provider").then_some(v))
    else {
        cx.err(
            file,
            &raw.span(),
            p,
            format!("no provider: set provider = \"NAME\", one of {names}"),
        );
        return None;
    };
    let Some(name) = name_value.get_ref().as_str() else {
        cx.err(
            file,
            &name_value.span(),
            format!("{p}.provider"),
            format!("must be a string naming the provider, one of {names}"),
        );
        return None;
    };
    Some(name)
}

/// A problem `e` with a setting of the `name` provider's `dns01` table at key `p`, reported where
/// its key (`timeout`, `args[1]`, "" for the table) is written.
fn report_setting(
    cx: &mut Ctx,
    file: usize,
    p: &str,
    raw: &Spanned<RawProvider>,
    name: &str,
    e: SettingError,
) {
    let head = e.key.split(['[', '.']).next().unwrap_or("");
    let found = raw.get_ref().iter().find(|(k, _)| k.get_ref() == head);
    let span = match found {
        Some((k, _)) if e.message.starts_with("unknown field") => k.span(),
        Some((_, v)) => v.span(),
        None => raw.span(),
    };
    let key = if e.key.is_empty() {
        p.to_string()
    } else {
        format!("{p}.{}", e.key)
    };
    let message = match e
        .message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'))
    {
        Some(field) => format!("no {field} given: the {name} provider needs {field} = ..."),
        None => e.message,
    };
    cx.err(file, &span, key, message);
}

/// The `name` provider's error `e` for its settings, said of the `<key>_credential` that was
/// written when it is about the `<key>_file` (in `credentials`, as (file key, credential key))
/// that the provider does not have.
fn credential_without_file(
    name: &str,
    credentials: &[(String, String)],
    e: SettingError,
) -> SettingError {
    match credentials
        .iter()
        .find(|(f, _)| e.message.starts_with(&format!("unknown field `{f}`")))
    {
        Some((file_key, cred_key)) => SettingError::new(
            cred_key.clone(),
            format!(
                "unknown field `{cred_key}`: the {name} provider has no secret `{file_key}` to take from a credential"
            ),
        ),
        None => e,
    }
}
