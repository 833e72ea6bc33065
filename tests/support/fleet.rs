//! What a fleet test runs against when HTTP-01 is answered from a shared webroot: PostgreSQL
//! (tests/support/postgres.rs), a directory of the files every node shares (encryption key,
//! password, webroot), a real nginx serving that webroot on the port pebble validates HTTP-01 on,
//! and pebble.

use std::path::PathBuf;

use super::nginx::{Nginx, NginxOpts, nginx_available};
use super::pebble::{self, Pebble, PebbleOpts};
use super::postgres::{Postgres, write_shared_secrets};

/// The parts (see the module docs). Its fields may be moved out: it has no `Drop` of its own.
pub struct WebrootFleet {
    pub pg: Postgres,
    /// Holds `storage.key`, `pg.pass` and the webroot `www/`.
    pub shared: tempfile::TempDir,
    pub webroot: PathBuf,
    pub nginx: Nginx,
    pub pebble: Pebble,
}

impl WebrootFleet {
    /// Start everything; `None` (the test skips, saying why) when pebble or nginx is not installed.
    pub async fn start() -> Option<Self> {
        if !pebble::available() || !nginx_available() {
            eprintln!("pebble or nginx not installed; skipping");
            return None;
        }
        let pg = Postgres::start();
        let shared = tempfile::tempdir().unwrap();
        let webroot = shared.path().join("www");
        std::fs::create_dir_all(&webroot).unwrap();
        write_shared_secrets(shared.path());
        let nginx_certs = shared.path().join("nginx-certs");
        std::fs::create_dir_all(&nginx_certs).unwrap();
        let nginx = Nginx::start(NginxOpts {
            cert_dir: nginx_certs,
            webroot: Some(webroot.clone()),
            placeholder_cert: true,
            ..Default::default()
        })
        .expect("start nginx");
        let pebble = nginx.pebble().await;
        Some(Self {
            pg,
            shared,
            webroot,
            nginx,
            pebble,
        })
    }
}
