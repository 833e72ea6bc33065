//! Finding things out about DNS names: direct queries, CNAME following, the zone (via SOA) and its
//! authoritative nameservers.
//!
//! Every query goes straight to a given server with a raw hickory-net client: no cache, so a
//! propagation check never sees a stale answer.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::StreamExt as _;
use hickory_net::client::Client;
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::udp::UdpClientStream;
use hickory_net::xfer::DnsHandle as _;
use hickory_proto::op::{DnsRequestOptions, DnsResponse, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

use super::fqdn;

/// How long one query may take before it counts as unanswered.
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest CNAME chain followed from `_acme-challenge` (loops and silly chains end here).
const MAX_CNAME_HOPS: usize = 8;

/// Why a lookup failed.
#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    /// The name is not a valid DNS name.
    #[error("invalid DNS name {name:?}: {message}")]
    BadName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        message: String,
    },
    /// No server answered a query.
    #[error("no answer from {servers} for {name} {rtype}: {message}")]
    NoAnswer {
        /// The servers asked, comma-separated.
        servers: String,
        /// The queried name.
        name: String,
        /// The queried type.
        rtype: String,
        /// The last error seen.
        message: String,
    },
    /// No SOA was found at or above the name.
    #[error(
        "no zone (SOA) found for {name} at {servers}; set `zone` in the provider or `propagation.nameservers`"
    )]
    NoZone {
        /// The name whose zone was looked for.
        name: String,
        /// The servers asked.
        servers: String,
    },
    /// The CNAME chain is too long or loops.
    #[error("CNAME chain from {name} is longer than {MAX_CNAME_HOPS} hops or loops")]
    CnameLoop {
        /// The start of the chain.
        name: String,
    },
    /// The zone has no usable nameserver address.
    #[error("zone {zone} has no nameserver with an address (NS: {ns})")]
    NoNameservers {
        /// The zone.
        zone: String,
        /// The NS names seen.
        ns: String,
    },
}

/// Parse a name into hickory's absolute form.
pub fn parse_name(name: &str) -> Result<Name, ZoneError> {
    let n = fqdn::normalize(name);
    Name::from_ascii(&n).map_err(|e| ZoneError::BadName {
        name: name.to_string(),
        message: e.to_string(),
    })
}

/// Send one query straight to `server` and return the raw response (any RCODE).
///
/// `recursion_desired` is off for authoritative checks and on when asking a recursive resolver.
pub async fn query(
    server: SocketAddr,
    name: &str,
    rtype: RecordType,
    recursion_desired: bool,
) -> Result<DnsResponse, String> {
    let qname = parse_name(name).map_err(|e| e.to_string())?;
    let stream = UdpClientStream::builder(server, TokioRuntimeProvider::new())
        .with_timeout(Some(QUERY_TIMEOUT))
        .build();
    let (client, bg) = Client::<TokioRuntimeProvider>::from_sender(stream);
    let bg = tokio::spawn(bg);
    let mut options = DnsRequestOptions::default();
    options.recursion_desired = recursion_desired;
    options.use_edns = true;
    options.case_randomization = false;
    let mut responses = client.lookup(Query::query(qname, rtype), options);
    let result = match tokio::time::timeout(
        QUERY_TIMEOUT + Duration::from_secs(1),
        responses.next(),
    )
    .await
    {
        Ok(Some(Ok(resp))) => Ok(resp),
        Ok(Some(Err(e))) => Err(e.to_string()),
        Ok(None) | Err(_) => Err("timed out".to_string()),
    };
    bg.abort();
    result
}

/// Where lookups go: explicit servers (authoritative or split-horizon, RD off) or the system's
/// recursive resolvers from `/etc/resolv.conf` (RD on).
#[derive(Clone, Debug)]
pub struct Lookup {
    servers: Vec<SocketAddr>,
    recursive: bool,
}

impl Lookup {
    /// Ask these servers directly, without recursion (they must be authoritative for the zones).
    pub fn explicit(servers: Vec<SocketAddr>) -> Self {
        Self {
            servers,
            recursive: false,
        }
    }

    /// Ask the system's recursive resolvers (from `/etc/resolv.conf`).
    pub fn system() -> Self {
        let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let servers = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("nameserver"))
            .filter_map(|ip| ip.trim().split('%').next()?.parse::<IpAddr>().ok())
            .map(|ip| SocketAddr::new(ip, 53))
            .collect();
        Self::recursive(servers)
    }

    /// Ask the recursive resolvers `[dns01] resolvers` names, or the system's when it names none.
    pub fn resolvers(resolvers: &[SocketAddr]) -> Self {
        if resolvers.is_empty() {
            Self::system()
        } else {
            Self::recursive(resolvers.to_vec())
        }
    }

    /// Ask these recursive resolvers (RD on); the zone's NS set is then resolved through them.
    pub fn recursive(servers: Vec<SocketAddr>) -> Self {
        Self {
            servers,
            recursive: true,
        }
    }

    /// True when these are explicit servers (they are then also the servers to check).
    pub fn is_explicit(&self) -> bool {
        !self.recursive
    }

    /// The servers this lookup asks.
    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// The servers asked, comma-separated, for messages.
    pub fn servers_text(&self) -> String {
        if self.servers.is_empty() {
            return "(no nameserver configured in /etc/resolv.conf)".to_string();
        }
        self.servers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Ask the servers in turn; the first that answers with NOERROR or NXDOMAIN wins.
    pub async fn ask(&self, name: &str, rtype: RecordType) -> Result<DnsResponse, ZoneError> {
        let mut last = "no server to ask".to_string();
        for server in &self.servers {
            match query(*server, name, rtype, self.recursive).await {
                Ok(resp)
                    if matches!(
                        resp.metadata.response_code,
                        ResponseCode::NoError | ResponseCode::NXDomain
                    ) =>
                {
                    return Ok(resp);
                }
                Ok(resp) => last = format!("{server} answered {}", resp.metadata.response_code),
                Err(e) => last = format!("{server}: {e}"),
            }
        }
        Err(ZoneError::NoAnswer {
            servers: self.servers_text(),
            name: name.to_string(),
            rtype: rtype.to_string(),
            message: last,
        })
    }

    /// Follow CNAMEs from `name` (e.g. `_acme-challenge` delegated to an acme-dns zone) and return
    /// the final name, absolute and lower-case.
    pub async fn follow_cname(&self, name: &str) -> Result<String, ZoneError> {
        let start = fqdn::normalize(name);
        let mut current = start.clone();
        let mut seen = vec![current.clone()];
        for _ in 0..MAX_CNAME_HOPS {
            let resp = self.ask(&current, RecordType::CNAME).await?;
            let target = resp.answers.iter().find_map(|r| match &r.data {
                RData::CNAME(c) if fqdn::normalize(&r.name.to_ascii()) == current => {
                    Some(c.0.to_ascii())
                }
                _ => None,
            });
            match target {
                Some(t) => {
                    let t = fqdn::normalize(&t);
                    if seen.contains(&t) {
                        return Err(ZoneError::CnameLoop { name: start });
                    }
                    tracing::debug!(from = %current, to = %t, "following CNAME");
                    seen.push(t.clone());
                    current = t;
                }
                None => return Ok(current),
            }
        }
        Err(ZoneError::CnameLoop { name: start })
    }

    /// The zone `name` belongs to: the owner of the SOA found at or above it.
    pub async fn find_zone(&self, name: &str) -> Result<String, ZoneError> {
        for candidate in fqdn::ancestors(name) {
            let resp = self.ask(&candidate, RecordType::SOA).await?;
            // An answer SOA at the candidate means it is the apex; an authority-section SOA in a
            // negative answer names the zone directly.
            let owner = resp
                .answers
                .iter()
                .chain(resp.authorities.iter())
                .find(|r| matches!(r.data, RData::SOA(_)))
                .map(|r| fqdn::normalize(&r.name.to_ascii()));
            if let Some(owner) = owner
                && (owner == candidate || candidate.ends_with(&format!(".{owner}")))
            {
                return Ok(owner);
            }
        }
        Err(ZoneError::NoZone {
            name: fqdn::normalize(name),
            servers: self.servers_text(),
        })
    }

    /// The authoritative nameservers of `zone` as (NS name, address) pairs.
    ///
    /// With explicit servers these are the servers themselves (split horizon: the public NS set is
    /// not reachable or not relevant); otherwise the zone's NS names resolved to port-53 addresses.
    pub async fn nameservers(&self, zone: &str) -> Result<Vec<(String, SocketAddr)>, ZoneError> {
        if self.is_explicit() {
            return Ok(self.servers.iter().map(|s| (s.to_string(), *s)).collect());
        }
        let resp = self.ask(zone, RecordType::NS).await?;
        let names: Vec<String> = resp
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::NS(ns) => Some(fqdn::normalize(&ns.0.to_ascii())),
                _ => None,
            })
            .collect();
        let mut out = Vec::new();
        for ns in &names {
            for rtype in [RecordType::A, RecordType::AAAA] {
                let Ok(resp) = self.ask(ns, rtype).await else {
                    continue;
                };
                for r in &resp.answers {
                    match &r.data {
                        RData::A(a) => out.push((ns.clone(), SocketAddr::new(IpAddr::V4(a.0), 53))),
                        RData::AAAA(a) => {
                            out.push((ns.clone(), SocketAddr::new(IpAddr::V6(a.0), 53)))
                        }
                        _ => {}
                    }
                }
            }
        }
        if out.is_empty() {
            return Err(ZoneError::NoNameservers {
                zone: zone.to_string(),
                ns: names.join(", "),
            });
        }
        Ok(out)
    }
}
