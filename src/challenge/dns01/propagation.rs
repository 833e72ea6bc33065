//! Propagation check: poll every authoritative nameserver of the zone until each one answers the
//! expected TXT value with the AA flag.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};

use super::fqdn;
use super::zone::{self, Lookup, ZoneError};

/// Propagation-check options (`propagation = { .. }` next to a `dns01` solver).
///
/// The config module parses the `propagation = { .. }` table into this type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PropagationConfig {
    /// Run the check at all; `false` trusts the provider and asks the CA to validate at once.
    pub check: bool,
    /// Give up after this long (e.g. "120s").
    pub timeout: Duration,
    /// Time between two rounds of queries (e.g. "2s").
    pub interval: Duration,
    /// Explicit nameservers ("ip:port"): used to find the zone and as the servers to check
    /// (split-horizon DNS). Empty means: the system resolver finds the zone's NS set.
    pub nameservers: Vec<SocketAddr>,
}

impl Default for PropagationConfig {
    fn default() -> Self {
        // 2 min covers slow provider APIs (lego uses 60 s); 2 s keeps the query load low.
        Self {
            check: true,
            timeout: Duration::from_secs(120),
            interval: Duration::from_secs(2),
            nameservers: Vec::new(),
        }
    }
}

impl PropagationConfig {
    /// The lookup these options describe: explicit servers, or the system resolver.
    pub fn lookup(&self) -> Lookup {
        self.lookup_with(&[])
    }

    /// The lookup these options describe: explicit servers, or else the recursive `resolvers`
    /// (`[dns01] resolvers`; empty means the system's, from `/etc/resolv.conf`).
    pub fn lookup_with(&self, resolvers: &[SocketAddr]) -> Lookup {
        if self.nameservers.is_empty() {
            Lookup::resolvers(resolvers)
        } else {
            Lookup::explicit(self.nameservers.clone())
        }
    }
}

/// Why the check did not pass.
#[derive(Debug, thiserror::Error)]
pub enum PropagationError {
    /// Finding the zone or its nameservers failed.
    #[error(transparent)]
    Zone(#[from] ZoneError),
    /// Some nameservers still did not answer the value when time ran out.
    #[error(
        "TXT {value:?} for {fqdn} not visible at every authoritative nameserver after {timeout:?}: {details}; check that the dns01 provider updates the zone these servers serve (with `propagation.nameservers`, list exactly those servers), or raise `propagation.timeout` if the provider is slow"
    )]
    Timeout {
        /// The record name.
        fqdn: String,
        /// The expected value.
        value: String,
        /// The configured timeout.
        timeout: Duration,
        /// One entry per lagging server: "ns1 (127.0.0.1:5353) answered NXDOMAIN".
        details: String,
    },
}

/// What one server said, in words for the error message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observation {
    /// The expected value is there, with AA.
    Ok,
    /// Anything else, described.
    Lagging(String),
}

/// What one server answered for a name's TXT records (RD off).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxtAnswer {
    /// The TXT values, each record's strings joined.
    pub values: Vec<String>,
    /// The AA flag: the server is authoritative for the name.
    pub authoritative: bool,
    /// NXDOMAIN (then `values` is empty).
    pub nxdomain: bool,
}

/// Ask `server` for the TXT records at `name` (RD off). An error (in words, for messages) when it
/// does not answer or answers other than NOERROR or NXDOMAIN.
pub async fn txt_at(server: SocketAddr, name: &str) -> Result<TxtAnswer, String> {
    let resp = zone::query(server, name, RecordType::TXT, false)
        .await
        .map_err(|e| format!("no answer ({e})"))?;
    let code = resp.metadata.response_code;
    if code != ResponseCode::NoError && code != ResponseCode::NXDomain {
        return Err(code.to_string());
    }
    let values = resp
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(t) => Some(
                t.txt_data
                    .iter()
                    .map(|part| String::from_utf8_lossy(part).into_owned())
                    .collect::<String>(),
            ),
            _ => None,
        })
        .collect();
    Ok(TxtAnswer {
        values,
        authoritative: resp.metadata.authoritative,
        nxdomain: code == ResponseCode::NXDomain,
    })
}

/// A nameserver as messages name it: `ns1.example.com (192.0.2.53:53)`, or the address alone
/// when that is all that is known (explicit `nameservers`).
pub fn server_label(name: &str, addr: SocketAddr) -> String {
    if name == addr.to_string() {
        name.to_string()
    } else {
        format!("{name} ({addr})")
    }
}

/// Ask one server for `fqdn` TXT (RD off) and judge the answer against `value`.
pub async fn observe(server: SocketAddr, fqdn: &str, value: &str) -> Observation {
    let answer = match txt_at(server, fqdn).await {
        Ok(a) => a,
        Err(what) => return Observation::Lagging(what),
    };
    if answer.nxdomain {
        return Observation::Lagging("NXDOMAIN".to_string());
    }
    let values = answer.values;
    if !answer.authoritative {
        return Observation::Lagging(format!(
            "TXT {values:?} without the AA flag (not authoritative)"
        ));
    }
    if values.iter().any(|v| v == value) {
        Observation::Ok
    } else if values.is_empty() {
        Observation::Lagging("no TXT record (NOERROR, empty answer)".to_string())
    } else {
        Observation::Lagging(format!("TXT {values:?}"))
    }
}

/// Wait until every authoritative nameserver for `zone` answers `value` at `fqdn` with AA.
///
/// `zone` is looked up when `None`. Polls every `opts.interval` until `opts.timeout`. Without
/// explicit `opts.nameservers` the zone and its NS set are found through the system's resolvers;
/// [`wait_for_txt_via`] takes the lookup to use.
pub async fn wait_for_txt(
    opts: &PropagationConfig,
    fqdn: &str,
    zone: Option<&str>,
    value: &str,
) -> Result<(), PropagationError> {
    wait_for_txt_via(opts, &opts.lookup(), fqdn, zone, value).await
}

/// [`wait_for_txt`] finding the zone and its nameservers through `lookup` (usually
/// [`PropagationConfig::lookup_with`] the configured resolvers).
pub async fn wait_for_txt_via(
    opts: &PropagationConfig,
    lookup: &Lookup,
    fqdn: &str,
    zone: Option<&str>,
    value: &str,
) -> Result<(), PropagationError> {
    let fqdn = fqdn::normalize(fqdn);
    let deadline = tokio::time::Instant::now() + opts.timeout;
    let zone = match zone {
        Some(z) => fqdn::normalize(z),
        None => lookup.find_zone(&fqdn).await?,
    };
    let servers = lookup.nameservers(&zone).await?;
    tracing::debug!(
        fqdn = %fqdn,
        zone = %zone,
        servers = %servers.iter().map(|(n, a)| format!("{n} ({a})")).collect::<Vec<_>>().join(", "),
        via = %if lookup.is_explicit() { "propagation.nameservers".to_string() } else { lookup.servers_text() },
        "checking the TXT record at the zone's authoritative nameservers"
    );
    loop {
        let mut lagging = Vec::new();
        for (name, addr) in &servers {
            if let Observation::Lagging(what) = observe(*addr, &fqdn, value).await {
                lagging.push(format!("{} answered {what}", server_label(name, *addr)));
            }
        }
        if lagging.is_empty() {
            tracing::info!(fqdn = %fqdn, zone = %zone, servers = servers.len(), "TXT record visible at all authoritative nameservers");
            return Ok(());
        }
        if tokio::time::Instant::now() + opts.interval > deadline {
            let mut details = lagging.join("; ");
            if !lookup.is_explicit() {
                // Say where the servers came from: a wrong NS set is a common cause.
                let found: Vec<String> = servers
                    .iter()
                    .map(|(name, addr)| format!("{name} ({addr})"))
                    .collect();
                details = format!(
                    "{details} (zone {zone}, authoritative nameservers {} found through the resolvers {})",
                    found.join(", "),
                    lookup.servers_text()
                );
            }
            return Err(PropagationError::Timeout {
                fqdn,
                value: value.to_string(),
                timeout: opts.timeout,
                details,
            });
        }
        tracing::debug!(fqdn = %fqdn, lagging = %lagging.join("; "), "waiting for DNS propagation");
        tokio::time::sleep(opts.interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dead_server_is_reported() {
        // Nothing listens on the discard port of loopback over UDP; the query must not hang.
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        drop(sock);
        let opts = PropagationConfig {
            check: true,
            timeout: Duration::from_millis(10),
            interval: Duration::from_millis(5),
            nameservers: vec![addr],
        };
        let err = wait_for_txt(
            &opts,
            "_acme-challenge.example.com",
            Some("example.com"),
            "v",
        )
        .await
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&addr.to_string()) && msg.contains("no answer"),
            "{msg}"
        );
    }

    /// A loopback responder answering every query with TXT `values`, AA set as told.
    async fn fake_server(values: &'static [&'static str], authoritative: bool) -> SocketAddr {
        use hickory_proto::op::{Message, OpCode};
        use hickory_proto::rr::Record;
        use hickory_proto::rr::rdata::TXT;
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                let Ok(q) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut r = Message::response(q.metadata.id, OpCode::Query);
                r.metadata.authoritative = authoritative;
                r.queries = q.queries.clone();
                for v in values {
                    let name = q.queries[0].name().clone();
                    r.answers.push(Record::from_rdata(
                        name,
                        60,
                        RData::TXT(TXT::new(vec![v.to_string()])),
                    ));
                }
                let _ = sock.send_to(&r.to_vec().unwrap(), from).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn judges_aa_flag_and_values() {
        let fqdn = "_acme-challenge.example.com.";
        let good = fake_server(&["other", "want"], true).await;
        assert_eq!(observe(good, fqdn, "want").await, Observation::Ok);
        let stale = fake_server(&["old"], true).await;
        assert_eq!(
            observe(stale, fqdn, "want").await,
            Observation::Lagging("TXT [\"old\"]".into())
        );
        let cache = fake_server(&["want"], false).await;
        let Observation::Lagging(what) = observe(cache, fqdn, "want").await else {
            panic!("no AA must not pass")
        };
        assert!(what.contains("without the AA flag"), "{what}");

        // Every server must pass: one good and one stale server still time out, naming the stale one.
        let opts = PropagationConfig {
            check: true,
            timeout: Duration::from_millis(300),
            interval: Duration::from_millis(100),
            nameservers: vec![good, stale],
        };
        let msg = wait_for_txt(&opts, fqdn, Some("example.com."), "want")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains(&format!("{stale} answered TXT [\"old\"]"))
                && !msg.contains(&good.to_string()),
            "{msg}"
        );
        let opts = PropagationConfig {
            nameservers: vec![good],
            ..opts
        };
        wait_for_txt(&opts, fqdn, Some("example.com."), "want")
            .await
            .unwrap();
    }
}
