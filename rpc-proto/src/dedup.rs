//! The dedup cache of "unstable network" mode: each call key runs at most once.
//!
//! A key is a client's session id and the call's msgid. The first request for a key runs;
//! a retry that arrives while it is running waits for its answer; a retry after it finished
//! gets the stored answer, errors included. Finished entries expire after a TTL and the
//! cache is bounded in entries and in bytes, evicting the oldest first.
//!
//! Like the rest of this crate it reads no clock: every method that needs the time takes
//! `now`. It is generic over what a waiter holds (`P`, a channel receiver in the server)
//! and over the stored answer (`V`, encoded bytes in the server).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

/// A call key: the client's session id and the call's msgid.
pub type DedupKey = (u128, u64);

/// Bounds of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DedupConfig {
    /// How long a finished answer is kept. Default: 60 s.
    pub ttl: Duration,
    /// Most finished answers kept. Default: 100 000.
    pub max_entries: usize,
    /// Most bytes of finished answers kept. Default: 64 MiB.
    pub max_bytes: usize,
}

impl Default for DedupConfig {
    fn default() -> DedupConfig {
        DedupConfig {
            ttl: Duration::from_secs(60),
            max_entries: 100_000,
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

#[derive(Debug)]
enum Slot<P, V> {
    Running(P),
    Done { value: V, at: Instant },
}

/// What to do with a request, from [`DedupCache::begin`].
#[derive(Debug)]
pub enum Begin<P, V> {
    /// First time: run it, then call [`DedupCache::complete`] (or [`DedupCache::abandon`]).
    Run,
    /// Running now: wait on this for its answer.
    Wait(P),
    /// Finished: here is its answer.
    Cached(V),
}

/// The cache. Lookups go to a sharded map (dashmap); only finishing a call touches the
/// eviction queue's lock.
#[derive(Debug)]
pub struct DedupCache<P, V> {
    map: DashMap<DedupKey, Slot<P, V>>,
    /// Finished entries, oldest first: (finished at, key, size).
    order: Mutex<VecDeque<(Instant, DedupKey, usize)>>,
    bytes: AtomicUsize,
    config: DedupConfig,
}

impl<P: Clone, V: Clone> DedupCache<P, V> {
    /// An empty cache.
    pub fn new(config: DedupConfig) -> DedupCache<P, V> {
        DedupCache {
            map: DashMap::new(),
            order: Mutex::new(VecDeque::new()),
            bytes: AtomicUsize::new(0),
            config,
        }
    }

    /// The bounds in force.
    pub fn config(&self) -> &DedupConfig {
        &self.config
    }

    /// Look `key` up; if it is new (or its answer expired), mark it running with the waiter
    /// handle `pending()` and return [`Begin::Run`].
    pub fn begin(&self, key: DedupKey, now: Instant, pending: impl FnOnce() -> P) -> Begin<P, V> {
        match self.map.entry(key) {
            Entry::Occupied(mut e) => match e.get() {
                Slot::Running(p) => Begin::Wait(p.clone()),
                Slot::Done { value, at } if now.saturating_duration_since(*at) < self.config.ttl => {
                    Begin::Cached(value.clone())
                }
                Slot::Done { .. } => {
                    e.insert(Slot::Running(pending()));
                    Begin::Run
                }
            },
            Entry::Vacant(e) => {
                e.insert(Slot::Running(pending()));
                Begin::Run
            }
        }
    }

    /// Store the answer of a call that was [`Begin::Run`]; `size` counts toward
    /// [`DedupConfig::max_bytes`]. Evicts what is over the bounds.
    pub fn complete(&self, key: DedupKey, value: V, size: usize, now: Instant) {
        self.map.insert(key, Slot::Done { value, at: now });
        self.bytes.fetch_add(size, Ordering::Relaxed);
        // Unwrap: the lock is never held across a panic.
        let mut order = self.order.lock().unwrap();
        order.push_back((now, key, size));
        self.evict_locked(&mut order, now);
    }

    /// Forget a running call that will never complete, so a retry runs it afresh.
    pub fn abandon(&self, key: DedupKey) {
        self.map.remove_if(&key, |_, s| matches!(s, Slot::Running(_)));
    }

    /// Drop expired answers, and the oldest ones while over the bounds.
    pub fn evict(&self, now: Instant) {
        // Unwrap: the lock is never held across a panic.
        let mut order = self.order.lock().unwrap();
        self.evict_locked(&mut order, now);
    }

    fn evict_locked(&self, order: &mut VecDeque<(Instant, DedupKey, usize)>, now: Instant) {
        while let Some(&(at, key, size)) = order.front() {
            let expired = now.saturating_duration_since(at) >= self.config.ttl;
            let over = order.len() > self.config.max_entries
                || self.bytes.load(Ordering::Relaxed) > self.config.max_bytes;
            if !expired && !over {
                break;
            }
            order.pop_front();
            self.bytes.fetch_sub(size, Ordering::Relaxed);
            // The key may have run again since: remove only this answer.
            self.map
                .remove_if(&key, |_, s| matches!(s, Slot::Done { at: a, .. } if *a == at));
        }
    }

    /// Entries held, running ones included.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes of finished answers held.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Cache = DedupCache<u32, &'static str>;

    #[test]
    fn runs_once_then_waits_then_caches() {
        let c = Cache::new(DedupConfig::default());
        let t0 = Instant::now();
        assert!(matches!(c.begin((1, 1), t0, || 7), Begin::Run));
        assert!(matches!(c.begin((1, 1), t0, || 8), Begin::Wait(7)));
        // Another session with the same msgid is another key.
        assert!(matches!(c.begin((2, 1), t0, || 9), Begin::Run));
        c.complete((1, 1), "answer", 6, t0);
        assert!(matches!(c.begin((1, 1), t0, || 0), Begin::Cached("answer")));
        assert_eq!(c.bytes(), 6);
    }

    #[test]
    fn expires_after_ttl() {
        let cfg = DedupConfig {
            ttl: Duration::from_secs(60),
            ..DedupConfig::default()
        };
        let c = Cache::new(cfg);
        let t0 = Instant::now();
        assert!(matches!(c.begin((1, 1), t0, || 0), Begin::Run));
        c.complete((1, 1), "a", 1, t0);
        let later = t0 + Duration::from_secs(59);
        assert!(matches!(c.begin((1, 1), later, || 0), Begin::Cached("a")));
        c.evict(t0 + Duration::from_secs(61));
        assert!(c.is_empty());
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn a_flood_of_keys_stays_bounded() {
        let cfg = DedupConfig {
            max_entries: 1000,
            max_bytes: 50_000,
            ..DedupConfig::default()
        };
        let c = Cache::new(cfg);
        let t0 = Instant::now();
        for i in 0..100_000u64 {
            assert!(matches!(c.begin((i as u128, i), t0, || 0), Begin::Run));
            c.complete((i as u128, i), "x", 100, t0);
            assert!(
                c.len() <= 1000 && c.bytes() <= 50_000,
                "at {i}: {} {}",
                c.len(),
                c.bytes()
            );
        }
        // The newest survive, the oldest went first.
        assert!(matches!(c.begin((99_999, 99_999), t0, || 0), Begin::Cached(_)));
        assert!(matches!(c.begin((0, 0), t0, || 0), Begin::Run));
    }

    #[test]
    fn abandon_lets_a_retry_run() {
        let c = Cache::new(DedupConfig::default());
        let t0 = Instant::now();
        assert!(matches!(c.begin((1, 1), t0, || 0), Begin::Run));
        c.abandon((1, 1));
        assert!(matches!(c.begin((1, 1), t0, || 0), Begin::Run));
    }

    #[test]
    fn rerun_after_expiry_is_not_evicted_by_the_old_entry() {
        let c = Cache::new(DedupConfig {
            ttl: Duration::from_secs(1),
            ..DedupConfig::default()
        });
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(2);
        assert!(matches!(c.begin((1, 1), t0, || 0), Begin::Run));
        c.complete((1, 1), "old", 1, t0);
        assert!(matches!(c.begin((1, 1), t1, || 0), Begin::Run));
        c.complete((1, 1), "new", 1, t1);
        assert!(matches!(c.begin((1, 1), t1, || 0), Begin::Cached("new")));
    }
}
