//! One deadline per certificate, ordered by time, for the daemon's event loop.
//!
//! The daemon sleeps until [`Timers::next_deadline`] (e.g. `tokio::time::sleep_until`, woken early
//! by a config reload or a control command), then takes the due names with [`Timers::pop_due`].
//! There is no polling loop.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;

/// A set of `(deadline, certificate name)` pairs with at most one deadline per name.
///
/// Both indexes share one allocation of each name (a daemon keeps 10,000 of them for weeks).
#[derive(Debug, Clone, Default)]
pub struct Timers {
    by_time: BTreeSet<(Timestamp, Arc<str>)>,
    by_name: HashMap<Arc<str>, Timestamp>,
}

impl Timers {
    /// An empty set of timers.
    pub fn new() -> Timers {
        Timers::default()
    }

    /// Sets (or moves) the deadline of `name` to `at`.
    pub fn set(&mut self, name: &str, at: Timestamp) {
        let key = match self.by_name.get_key_value(name) {
            Some((key, old)) => {
                let entry = (*old, key.clone());
                self.by_time.remove(&entry);
                entry.1
            }
            None => Arc::from(name),
        };
        self.by_time.insert((at, key.clone()));
        self.by_name.insert(key, at);
    }

    /// Rebuilds the time index in full nodes: after deadlines were set in time order (a start or
    /// reload sets thousands), its B-tree nodes are half empty for as long as the daemon idles.
    pub fn pack(&mut self) {
        self.by_time = std::mem::take(&mut self.by_time).into_iter().collect();
    }

    /// Removes the deadline of `name`; returns it if there was one.
    pub fn remove(&mut self, name: &str) -> Option<Timestamp> {
        let (key, at) = self.by_name.remove_entry(name)?;
        self.by_time.remove(&(at, key));
        Some(at)
    }

    /// The deadline of `name`, if set.
    pub fn get(&self, name: &str) -> Option<Timestamp> {
        self.by_name.get(name).copied()
    }

    /// The earliest deadline, if any.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.by_time.first().map(|(at, _)| *at)
    }

    /// How long to sleep from `now` until the earliest deadline (zero if it has passed), or
    /// `None` when no timer is set; ready for `tokio::time::sleep`.
    pub fn sleep_for(&self, now: Timestamp) -> Option<Duration> {
        let at = self.next_deadline()?;
        let d = at.duration_since(now);
        Some(Duration::try_from(d).unwrap_or(Duration::ZERO))
    }

    /// Removes and returns every name whose deadline is at or before `now`, earliest first
    /// (ties by name).
    pub fn pop_due(&mut self, now: Timestamp) -> Vec<String> {
        let mut out = Vec::new();
        while let Some((at, _)) = self.by_time.first() {
            if *at > now {
                break;
            }
            let Some((_, name)) = self.by_time.pop_first() else {
                break;
            };
            self.by_name.remove(&name);
            out.push(name.to_string());
        }
        out
    }

    /// All `(deadline, name)` pairs, earliest first.
    pub fn iter(&self) -> impl Iterator<Item = (Timestamp, &str)> {
        self.by_time.iter().map(|(at, n)| (*at, &**n))
    }

    /// Number of certificates with a deadline.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether no deadline is set.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("test timestamp")
    }

    #[test]
    fn ordered_by_time_and_pop_due() {
        let mut t = Timers::new();
        assert_eq!(t.next_deadline(), None);
        assert_eq!(t.sleep_for(ts("2026-01-01T00:00:00Z")), None);
        t.set("c", ts("2026-01-03T00:00:00Z"));
        t.set("a", ts("2026-01-01T00:00:00Z"));
        t.set("b", ts("2026-01-02T00:00:00Z"));
        t.set("a2", ts("2026-01-01T00:00:00Z"));
        assert_eq!(t.len(), 4);
        assert_eq!(t.next_deadline(), Some(ts("2026-01-01T00:00:00Z")));
        let order: Vec<_> = t.iter().map(|(_, n)| n.to_owned()).collect();
        assert_eq!(order, ["a", "a2", "b", "c"]);

        assert!(t.pop_due(ts("2025-12-31T23:59:59Z")).is_empty());
        assert_eq!(t.pop_due(ts("2026-01-02T00:00:00Z")), ["a", "a2", "b"]);
        assert_eq!(t.len(), 1);
        assert_eq!(t.get("a"), None);
        assert_eq!(t.next_deadline(), Some(ts("2026-01-03T00:00:00Z")));
        assert_eq!(
            t.sleep_for(ts("2026-01-02T23:00:00Z")),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            t.sleep_for(ts("2026-01-04T00:00:00Z")),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn set_moves_and_remove_clears() {
        let mut t = Timers::new();
        t.set("a", ts("2026-01-05T00:00:00Z"));
        t.set("b", ts("2026-01-02T00:00:00Z"));
        t.set("a", ts("2026-01-01T00:00:00Z"));
        assert_eq!(t.len(), 2);
        assert_eq!(t.get("a"), Some(ts("2026-01-01T00:00:00Z")));
        // The old deadline of "a" is gone: popping at Jan 5 yields "a" once.
        assert_eq!(t.pop_due(ts("2026-01-05T00:00:00Z")), ["a", "b"]);
        assert!(t.is_empty());

        t.set("x", ts("2026-01-01T00:00:00Z"));
        assert_eq!(t.remove("x"), Some(ts("2026-01-01T00:00:00Z")));
        assert_eq!(t.remove("x"), None);
        assert_eq!(t.next_deadline(), None);
        assert!(t.pop_due(Timestamp::MAX).is_empty());
    }

    #[test]
    fn packing_keeps_every_deadline() {
        let mut t = Timers::new();
        let start = ts("2026-01-01T00:00:00Z");
        for i in 0..100i64 {
            t.set(&format!("c{i}"), start + jiff::SignedDuration::from_secs(i));
        }
        let before: Vec<_> = t.iter().map(|(at, n)| (at, n.to_owned())).collect();
        t.pack();
        let after: Vec<_> = t.iter().map(|(at, n)| (at, n.to_owned())).collect();
        assert_eq!(before, after);
        t.set("c0", ts("2026-02-01T00:00:00Z"));
        assert_eq!(t.len(), 100);
        assert_eq!(t.pop_due(start).len(), 0);
        assert_eq!(t.pop_due(ts("2026-02-01T00:00:00Z")).last().unwrap(), "c0");
    }
}
