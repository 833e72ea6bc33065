//! Renewal scheduling policy: when each certificate is due, and why.
//!
//! Pure code with an injected clock (`now`) and random source:
//! - [`renewal_point`]: the default renewal time (30 days before Not After, but always while at
//!   least a third of the lifetime remains, half below 10 days ([`latest_renewal_point`]), never
//!   before a tenth of it has passed);
//! - [`jitter_earlier`], [`ari_renewal_time`], [`ari_refetch_at`]: jitter and RFC 9773 ARI;
//! - [`RetryState`]: persisted failure state; [`RetryState::on_failure`] turns a [`Failure`] (the
//!   engine's failure policy has decided whether it pauses and how long the CA asked to wait)
//!   into the next try: the [`Backoff`] schedule, or daily when paused, never later than a tenth of
//!   the remaining lifetime ([`expiry_cap`]); [`wait_limit`] clamps the CA's waits;
//! - [`due`]: combines all of the above into a [`Due`] with a plain-words [`DueReason`]; there is
//!   always a next time;
//! - [`config_fingerprint`]: detects config changes that need a new certificate;
//! - [`Timers`]: the daemon's per-certificate deadlines.
//!
//! The engine builds [`CertFacts`] from one ledger snapshot, asks [`due`], and sets the timer.

mod backoff;
mod policy;
mod timers;

use rand::SeedableRng;
use rand::rngs::StdRng;

pub use backoff::{
    Backoff, Failure, MIN_RETRY_DELAY, PAUSE_RETRY, RetryState, expiry_cap, wait_limit,
};
pub use policy::{
    ARI_REFETCH_DEFAULT, ARI_REFETCH_MAX, ARI_REFETCH_MIN, CertFacts, DEFAULT_RENEW_BEFORE, Due,
    DueReason, MAX_JITTER, SHORT_LIFETIME, ari_refetch_at, ari_renewal_time, due, jitter_earlier,
    latest_renewal_point, max_jitter, renewal_point,
};
pub use timers::Timers;

/// A stable fingerprint of the certificate settings that require a new certificate when changed.
///
/// SHA-256 (lowercase hex) over a versioned, length-prefixed encoding of:
/// - `domains`: lowercased, sorted and de-duplicated, so order and case don't matter;
/// - `key_type`: the configured key type string (e.g. `ecdsa-p256`);
/// - `issuers`: in order, since the first issuer is the one that issues;
/// - `profile`: the ACME profile, if any.
///
/// Store it with the certificate; a different value for the current config means
/// [`CertFacts::fingerprint_changed`].
pub fn config_fingerprint<D, I>(
    domains: &[D],
    key_type: &str,
    issuers: &[I],
    profile: Option<&str>,
) -> String
where
    D: AsRef<str>,
    I: AsRef<str>,
{
    let mut names: Vec<String> = domains
        .iter()
        .map(|d| d.as_ref().trim_end_matches('.').to_ascii_lowercase())
        .collect();
    names.sort();
    names.dedup();

    let mut buf = Vec::new();
    let mut field = |tag: &[u8], value: &[u8]| {
        buf.extend_from_slice(tag);
        buf.extend_from_slice(&(value.len() as u64).to_be_bytes());
        buf.extend_from_slice(value);
    };
    field(b"v", b"certkeeper-config-fingerprint-1");
    for n in &names {
        field(b"d", n.as_bytes());
    }
    field(b"k", key_type.as_bytes());
    for i in issuers {
        field(b"i", i.as_ref().as_bytes());
    }
    match profile {
        Some(p) => field(b"p", p.as_bytes()),
        None => field(b"n", b""),
    }
    hex(&openssl::sha::sha256(&buf))
}

/// Lowercase hex of `bytes` (a fingerprint is computed for every certificate on every decision).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// A random source seeded from a certificate name and a salt, for reproducible jitter.
///
/// Seeding with, e.g., the installed certificate's serial or the ARI window bounds gives the same
/// renewal time on every re-evaluation and across restarts, so a reload does not re-roll the dice
/// (RFC 9773 lets a client keep its pick until the window changes), while different certificates
/// still spread out.
pub fn stable_rng(cert_name: &str, salt: &[u8]) -> StdRng {
    let mut input = Vec::with_capacity(cert_name.len() + salt.len() + 9);
    input.extend_from_slice(&(cert_name.len() as u64).to_be_bytes());
    input.extend_from_slice(cert_name.as_bytes());
    input.extend_from_slice(salt);
    StdRng::from_seed(openssl::sha::sha256(&input))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    fn fp(domains: &[&str], key: &str, issuers: &[&str], profile: Option<&str>) -> String {
        config_fingerprint(domains, key, issuers, profile)
    }

    #[test]
    fn fingerprint_is_stable_hex_sha256() {
        let a = fp(&["example.com"], "ecdsa-p256", &["le"], None);
        assert_eq!(a.len(), 64);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(a, fp(&["example.com"], "ecdsa-p256", &["le"], None));
    }

    #[test]
    fn fingerprint_ignores_domain_order_case_and_duplicates() {
        let a = fp(&["a.example", "b.example"], "rsa-2048", &["le"], None);
        assert_eq!(
            a,
            fp(&["b.example", "a.example"], "rsa-2048", &["le"], None)
        );
        assert_eq!(
            a,
            fp(
                &["B.example.", "a.example", "a.example"],
                "rsa-2048",
                &["le"],
                None
            )
        );
    }

    #[test]
    fn fingerprint_changes_with_each_input() {
        let base = fp(
            &["a.example"],
            "ecdsa-p256",
            &["le", "zerossl"],
            Some("tlsserver"),
        );
        let variants = [
            fp(
                &["a.example", "b.example"],
                "ecdsa-p256",
                &["le", "zerossl"],
                Some("tlsserver"),
            ),
            fp(
                &["c.example"],
                "ecdsa-p256",
                &["le", "zerossl"],
                Some("tlsserver"),
            ),
            fp(
                &["a.example"],
                "ecdsa-p384",
                &["le", "zerossl"],
                Some("tlsserver"),
            ),
            fp(
                &["a.example"],
                "ecdsa-p256",
                &["zerossl", "le"],
                Some("tlsserver"),
            ),
            fp(&["a.example"], "ecdsa-p256", &["le"], Some("tlsserver")),
            fp(
                &["a.example"],
                "ecdsa-p256",
                &["le", "zerossl"],
                Some("shortlived"),
            ),
            fp(&["a.example"], "ecdsa-p256", &["le", "zerossl"], None),
            // Field boundaries are unambiguous: a domain can't masquerade as a key type.
            fp(
                &["a.exampleecdsa-p256"],
                "",
                &["le", "zerossl"],
                Some("tlsserver"),
            ),
            fp(
                &["a.example"],
                "ecdsa-p256",
                &["lezerossl"],
                Some("tlsserver"),
            ),
            fp(&["a.example"], "ecdsa-p256", &["le", "zerossl"], Some("")),
        ];
        for (i, v) in variants.iter().enumerate() {
            assert_ne!(&base, v, "variant {i} collides");
        }
    }

    #[test]
    fn stable_rng_is_reproducible_per_name_and_salt() {
        let a: u64 = stable_rng("www", b"serial-1").random();
        let b: u64 = stable_rng("www", b"serial-1").random();
        let c: u64 = stable_rng("www", b"serial-2").random();
        let d: u64 = stable_rng("api", b"serial-1").random();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }
}
