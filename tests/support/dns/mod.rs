//! Test harnesses for real DNS servers: bind9 (`named`) and PowerDNS (`pdns_server`, sqlite3);
//! [`loopback`]: an authoritative and a recursive bind9 on port 53 of 127.0.0.2 / 127.0.0.3.
//!
//! Each server runs from a temp directory on free loopback ports and is killed (by PID) on Drop.
#![allow(dead_code)]

pub mod bind;
pub mod loopback;
pub mod pdns;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use certkeeper::challenge::dns01::zone;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};

/// A port free for both UDP and TCP on 127.0.0.1 (see [`super::pebble::free_port`]).
pub fn free_port() -> u16 {
    super::pebble::free_port()
}

/// A child process killed on Drop.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Wait until `server` answers an SOA query for `zone` authoritatively (bounded).
pub async fn wait_ready(
    server: SocketAddr,
    zone: &str,
    what: &str,
    proc: &mut Proc,
    log: &std::path::Path,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(resp) = zone::query(server, zone, RecordType::SOA, false).await
            && resp.metadata.response_code == ResponseCode::NoError
            && resp.metadata.authoritative
        {
            return;
        }
        if let Ok(Some(status)) = proc.0.try_wait() {
            panic!(
                "{what} exited with {status}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{what} not ready: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The TXT values at `name` as `server` answers them (RD off); `None` on NXDOMAIN.
pub async fn txt_values(server: SocketAddr, name: &str) -> Option<Vec<String>> {
    let resp = zone::query(server, name, RecordType::TXT, false)
        .await
        .expect("query");
    if resp.metadata.response_code == ResponseCode::NXDomain {
        return None;
    }
    assert_eq!(resp.metadata.response_code, ResponseCode::NoError);
    let mut v: Vec<String> = resp
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(t) => Some(
                t.txt_data
                    .iter()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect(),
            ),
            _ => None,
        })
        .collect();
    v.sort();
    Some(v)
}
