//! `bench/populate.rs` (cargo example `bench_populate`): give every certificate of a config an
//! installed pair without a CA, for the `scale` scenario of `bench/run.sh` (issue 14).
//!
//! ```text
//! cargo build --release --example bench_populate
//! target/release/examples/bench_populate CONFIG [THREADS]
//! ```
//!
//! It makes one local CA (ECDSA P-256), then for every configured certificate a key of its
//! configured type and a leaf for its domains (valid from a day ago for 90 days) signed by that CA,
//! and installs the pair through certkeeper's own `import` ([`certkeeper::commands::import::import_pem`]):
//! the same verification, output layout, ledger events and fsyncs as `certkeeper import`, without
//! starting a process (and loading the whole config) once per certificate. It then records an ARI
//! check ("unsupported", next one in 24 h), as the daemon would after its first look at the CA, so
//! the daemon starts settled. THREADS workers (default 8) overlap the fsyncs. Afterwards every certificate is installed and not due, so `status`, a
//! no-op `renew`, the daemon's start and a SIGHUP reload read the state of N certificates.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use certkeeper::challenge::http01::TokenStore;
use certkeeper::commands::import::import_pem;
use certkeeper::engine::Runtime;
use certkeeper::store::{AriResult, Event};
use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509, X509NameBuilder};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn ec_key() -> Res<PKey<Private>> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    Ok(PKey::from_ec_key(EcKey::generate(&group)?)?)
}

fn name(cn: &str) -> Res<openssl::x509::X509Name> {
    let mut n = X509NameBuilder::new()?;
    n.append_entry_by_text("CN", cn)?;
    Ok(n.build())
}

/// A certificate valid from a day ago for `days` days.
fn builder(serial: u32, subject: &str, days: u32) -> Res<openssl::x509::X509Builder> {
    let mut b = X509::builder()?;
    b.set_version(2)?;
    let serial = BigNum::from_u32(serial)?;
    let serial = Asn1Integer::from_bn(&serial)?;
    b.set_serial_number(&serial)?;
    let subject = name(subject)?;
    b.set_subject_name(&subject)?;
    let now = jiff::Timestamp::now().as_second();
    let (from, until) = (now - 86_400, now - 86_400 + i64::from(days) * 86_400);
    let (from, until) = (Asn1Time::from_unix(from)?, Asn1Time::from_unix(until)?);
    b.set_not_before(&from)?;
    b.set_not_after(&until)?;
    Ok(b)
}

struct Ca {
    key: PKey<Private>,
    cert: X509,
}

impl Ca {
    fn new() -> Res<Self> {
        let key = ec_key()?;
        let mut b = builder(1, "certkeeper bench local CA", 365)?;
        let issuer = name("certkeeper bench local CA")?;
        b.set_issuer_name(&issuer)?;
        b.set_pubkey(&key)?;
        b.append_extension(BasicConstraints::new().critical().ca().build()?)?;
        b.append_extension(KeyUsage::new().critical().key_cert_sign().build()?)?;
        let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(None, None))?;
        b.append_extension(ski)?;
        b.sign(&key, MessageDigest::sha256())?;
        Ok(Self {
            key,
            cert: b.build(),
        })
    }

    /// A key, a full chain (leaf, CA) for `domains`, and the leaf's ARI CertID.
    fn leaf(&self, serial: u32, domains: &[String]) -> Res<(Vec<u8>, Vec<u8>, String)> {
        let key = ec_key()?;
        let mut b = builder(serial, &domains[0], 90)?;
        b.set_issuer_name(self.cert.subject_name())?;
        b.set_pubkey(&key)?;
        let mut san = SubjectAlternativeName::new();
        for d in domains {
            san.dns(d);
        }
        let san = san.build(&b.x509v3_context(Some(&self.cert), None))?;
        b.append_extension(san)?;
        let aki = AuthorityKeyIdentifier::new()
            .keyid(true)
            .build(&b.x509v3_context(Some(&self.cert), None))?;
        b.append_extension(aki)?;
        b.sign(&self.key, MessageDigest::sha256())?;
        let leaf = b.build();
        let cert_id =
            certkeeper::acme::cert_id(&certkeeper::acme::Certificate::from_der(leaf.to_der()?)?)?;
        let mut chain = leaf.to_pem()?;
        chain.extend(self.cert.to_pem()?);
        Ok((key.private_key_to_pem_pkcs8()?, chain, cert_id))
    }
}

fn main() -> Res<()> {
    let mut args = std::env::args().skip(1);
    let config_path = PathBuf::from(
        args.next()
            .ok_or("usage: bench_populate CONFIG [THREADS]")?,
    );
    let threads: usize = args.next().map_or(Ok(8), |t| t.parse())?;
    let config = Arc::new(certkeeper::config::load(&config_path)?);
    if let Some(c) = config
        .certificates
        .values()
        .find(|c| c.key.as_str() != "ecdsa-p256")
    {
        return Err(format!(
            "certificate {}: only key = \"ecdsa-p256\" is supported here",
            c.name
        )
        .into());
    }
    let rt = Runtime::new(config.clone(), TokenStore::new())?;
    let ca = Ca::new()?;
    let names: Vec<&String> = config.certificates.keys().collect();
    let next = AtomicUsize::new(0);
    let t0 = std::time::Instant::now();
    std::thread::scope(|s| -> Res<()> {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                s.spawn(|| -> Res<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(name) = names.get(i) else {
                            return Ok(());
                        };
                        let cert = &config.certificates[*name];
                        let (key, chain, cert_id) =
                            ca.leaf(u32::try_from(i)? + 2, &cert.domains)?;
                        import_pem(&rt, name, &key, &chain)
                            .map_err(|e| format!("importing {name}: {e}"))?;
                        // Settled, as after the daemon's first ARI check: the next one is a day
                        // away, so the daemon starts idle instead of asking the (absent) CA.
                        let ari = Event::Ari {
                            cert_id: Some(cert_id),
                            result: AriResult::Unsupported,
                            refetch_at: jiff::Timestamp::now()
                                + jiff::SignedDuration::from_hours(24),
                        };
                        rt.ledger.record(name, ari)?;
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| "a worker panicked")??;
        }
        Ok(())
    })?;
    eprintln!(
        "installed {} certificates in {:.1}s",
        names.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
