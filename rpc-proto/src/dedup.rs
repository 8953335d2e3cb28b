//! The dedup cache of "unstable network" mode: each call key runs at most once.
//!
//! A key is a client's session id and the call's msgid. The rules, written once here in
//! [`DedupRules`]:
//!
//! - the first request for a key runs;
//! - a retry that arrives while it is running waits for its answer (if whoever runs it
//!   is gone, the call counts as abandoned and the retry runs it);
//! - a retry after it finished gets the stored answer, errors included;
//! - finished answers expire after a TTL; the cache is bounded in entries and in bytes,
//!   evicting the oldest answer first;
//! - a running call that will never complete is abandoned: a retry runs it afresh.
//!
//! The rules work on a [`DedupStore`], which only keeps entries: [`DedupCache`] is the
//! in-process one (a map and a queue behind a mutex); the server's prefork mode keeps a
//! table in memory shared between processes. Like the rest of this crate the rules read
//! no clock: every step that needs the time takes `now`, so tests never sleep.
//!
//! [`dedup_suite!`](crate::dedup_suite) is the one test suite of the rules; every store
//! runs it.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// What to do with a request, from [`DedupRules::begin`] (or [`DedupCache::begin`]).
#[derive(Debug)]
pub enum Begin<P, V> {
    /// First time: run it, then complete it (or abandon it).
    Run,
    /// Running now: wait on this for its answer.
    Wait(P),
    /// Finished: here is its answer.
    Cached(V),
}

/// An entry of a [`DedupStore`].
#[derive(Debug, Clone)]
pub enum Slot<R, A> {
    /// Running: `R` tells who runs it, or how a retry waits for it.
    Running(R),
    /// Finished at `at`, with an answer of `size` bytes.
    Done {
        /// The answer, or where the store keeps it.
        answer: A,
        /// When it finished.
        at: Instant,
        /// Its size, counted toward [`DedupConfig::max_bytes`].
        size: usize,
    },
}

/// A finished answer in the eviction queue, oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    /// Its key.
    pub key: DedupKey,
    /// When it finished: with the key, which answer this is (the key may have run again).
    pub at: Instant,
    /// Its size.
    pub size: usize,
}

/// Where a dedup cache keeps its entries. It decides nothing: [`DedupRules`] does, calling
/// these with the store to itself (a `&mut`, under whatever lock the store needs).
pub trait DedupStore {
    /// What a running entry holds.
    type Running;
    /// What a retry of a running call waits on.
    type Waiter;
    /// A finished answer as the store keeps it (the value, or where it is).
    type Answer: Clone;

    /// The entry of `key`.
    fn get(&self, key: DedupKey) -> Option<Slot<Self::Running, Self::Answer>>;

    /// Put `slot` at `key`, replacing its entry. A store with a fixed number of places may
    /// refuse a new key: it gives the slot back and changes nothing.
    ///
    /// # Errors
    ///
    /// The slot, when there is no room for another key.
    #[allow(clippy::type_complexity)]
    fn put(
        &mut self,
        key: DedupKey,
        slot: Slot<Self::Running, Self::Answer>,
    ) -> Result<(), Slot<Self::Running, Self::Answer>>;

    /// Forget the entry of `key`.
    fn remove(&mut self, key: DedupKey);

    /// Append a finished answer to the eviction queue and count its size.
    fn push(&mut self, finished: Finished, answer: &Self::Answer);

    /// The oldest finished answer in the queue.
    fn oldest(&self) -> Option<Finished>;

    /// Drop the oldest finished answer from the queue and uncount its size.
    fn pop(&mut self);

    /// Answers in the queue.
    fn finished(&self) -> usize;

    /// Bytes of the answers in the queue.
    fn bytes(&self) -> usize;

    /// How a retry waits on a running entry, or `None` when whoever runs it is gone (a
    /// process that died): the call then counts as abandoned.
    fn waiter(&self, running: &Self::Running) -> Option<Self::Waiter>;

    /// Whether the running entry was started here (only its starter may abandon it).
    fn is_mine(&self, running: &Self::Running) -> bool;
}

/// The rules of the cache, over any [`DedupStore`].
#[derive(Debug, Clone, Copy)]
pub struct DedupRules {
    config: DedupConfig,
}

impl DedupRules {
    /// Rules with these bounds.
    pub fn new(config: DedupConfig) -> DedupRules {
        DedupRules { config }
    }

    /// The bounds in force.
    pub fn config(&self) -> &DedupConfig {
        &self.config
    }

    fn fresh(&self, at: Instant, now: Instant) -> bool {
        now.saturating_duration_since(at) < self.config.ttl
    }

    /// Look `key` up: wait for it, answer it from the store, or (new, expired, or its
    /// runner gone) mark it running with `running()` and return [`Begin::Run`]. When the
    /// store has no room even after expired answers went, the call runs untracked.
    pub fn begin<S: DedupStore>(
        &self,
        store: &mut S,
        key: DedupKey,
        now: Instant,
        running: impl FnOnce() -> S::Running,
    ) -> Begin<S::Waiter, S::Answer> {
        match store.get(key) {
            Some(Slot::Running(r)) => {
                if let Some(w) = store.waiter(&r) {
                    return Begin::Wait(w);
                }
            }
            Some(Slot::Done { answer, at, .. }) if self.fresh(at, now) => return Begin::Cached(answer),
            Some(Slot::Done { .. }) | None => {}
        }
        if let Err(slot) = store.put(key, Slot::Running(running())) {
            self.evict(store, now);
            let _ = store.put(key, slot);
        }
        Begin::Run
    }

    /// Store the answer of a call that was [`Begin::Run`], of `size` bytes. First the
    /// expired answers go, then the oldest while the new one would exceed a bound. An
    /// answer larger than [`DedupConfig::max_bytes`] is not kept (nor is its key) and
    /// evicts nothing.
    /// Returns whether it was kept.
    pub fn complete<S: DedupStore>(
        &self,
        store: &mut S,
        key: DedupKey,
        answer: S::Answer,
        size: usize,
        now: Instant,
    ) -> bool {
        // Checked first: an answer that cannot be kept evicts nobody.
        if size > self.config.max_bytes || self.config.max_entries == 0 {
            store.remove(key);
            return false;
        }
        self.make_room(store, size, now);
        let done = Slot::Done {
            answer: answer.clone(),
            at: now,
            size,
        };
        if store.put(key, done).is_err() {
            return false;
        }
        store.push(Finished { key, at: now, size }, &answer);
        true
    }

    /// Evict the expired answers, then the oldest while one more answer of `size` bytes
    /// would exceed a bound.
    pub fn make_room<S: DedupStore>(&self, store: &mut S, size: usize, now: Instant) {
        while let Some(old) = store.oldest() {
            let expired = !self.fresh(old.at, now);
            let over = store.finished() + 1 > self.config.max_entries
                || store.bytes().saturating_add(size) > self.config.max_bytes;
            if !expired && !over {
                break;
            }
            self.pop_oldest(store);
        }
    }

    /// Forget a running call that will never complete (if it was started here), so that
    /// a retry runs it afresh.
    pub fn abandon<S: DedupStore>(&self, store: &mut S, key: DedupKey) {
        if let Some(Slot::Running(r)) = store.get(key) {
            if store.is_mine(&r) {
                store.remove(key);
            }
        }
    }

    /// Drop the expired answers.
    pub fn evict<S: DedupStore>(&self, store: &mut S, now: Instant) {
        while let Some(old) = store.oldest() {
            if self.fresh(old.at, now) {
                break;
            }
            self.pop_oldest(store);
        }
    }

    /// Evict the oldest answer. A store that must make room of its own kind (a ring of
    /// bytes) calls this too.
    pub fn pop_oldest<S: DedupStore>(&self, store: &mut S) {
        let Some(old) = store.oldest() else { return };
        store.pop();
        // The key may have run again since: remove only this answer.
        if let Some(Slot::Done { at, .. }) = store.get(old.key) {
            if at == old.at {
                store.remove(old.key);
            }
        }
    }
}

/// The in-process store: a map and the eviction queue.
#[derive(Debug)]
pub struct MapStore<P, V> {
    map: HashMap<DedupKey, Slot<P, V>>,
    order: VecDeque<Finished>,
    bytes: usize,
}

impl<P, V> Default for MapStore<P, V> {
    fn default() -> MapStore<P, V> {
        MapStore {
            map: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
        }
    }
}

impl<P: Clone, V: Clone> DedupStore for MapStore<P, V> {
    type Running = P;
    type Waiter = P;
    type Answer = V;

    fn get(&self, key: DedupKey) -> Option<Slot<P, V>> {
        self.map.get(&key).cloned()
    }

    fn put(&mut self, key: DedupKey, slot: Slot<P, V>) -> Result<(), Slot<P, V>> {
        self.map.insert(key, slot);
        Ok(())
    }

    fn remove(&mut self, key: DedupKey) {
        self.map.remove(&key);
    }

    fn push(&mut self, finished: Finished, _: &V) {
        self.bytes += finished.size;
        self.order.push_back(finished);
    }

    fn oldest(&self) -> Option<Finished> {
        self.order.front().copied()
    }

    fn pop(&mut self) {
        if let Some(f) = self.order.pop_front() {
            self.bytes -= f.size;
        }
    }

    fn finished(&self) -> usize {
        self.order.len()
    }

    fn bytes(&self) -> usize {
        self.bytes
    }

    fn waiter(&self, running: &P) -> Option<P> {
        Some(running.clone())
    }

    fn is_mine(&self, _: &P) -> bool {
        true
    }
}

/// The cache in one process: [`DedupRules`] over a [`MapStore`] behind a mutex, held
/// for a lookup or an insertion (and the evictions it causes) at a time.
///
/// It is generic over what a waiter holds (`P`, a channel receiver in the server) and over
/// the stored answer (`V`, encoded bytes in the server).
#[derive(Debug)]
pub struct DedupCache<P, V> {
    store: Mutex<MapStore<P, V>>,
    rules: DedupRules,
}

impl<P: Clone, V: Clone> DedupCache<P, V> {
    /// An empty cache.
    pub fn new(config: DedupConfig) -> DedupCache<P, V> {
        DedupCache {
            store: Mutex::new(MapStore::default()),
            rules: DedupRules::new(config),
        }
    }

    /// The bounds in force.
    pub fn config(&self) -> &DedupConfig {
        self.rules.config()
    }

    fn store(&self) -> std::sync::MutexGuard<'_, MapStore<P, V>> {
        // A panic while the lock is held leaves the store consistent (every step is
        // one map or queue operation), so a poisoned lock is taken as it is.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Look `key` up; if it is new (or its answer expired), mark it running with the waiter
    /// handle `pending()` and return [`Begin::Run`].
    pub fn begin(&self, key: DedupKey, now: Instant, pending: impl FnOnce() -> P) -> Begin<P, V> {
        self.rules.begin(&mut *self.store(), key, now, pending)
    }

    /// Store the answer of a call that was [`Begin::Run`]; `size` counts toward
    /// [`DedupConfig::max_bytes`]. Evicts what is over the bounds.
    pub fn complete(&self, key: DedupKey, value: V, size: usize, now: Instant) {
        self.rules.complete(&mut *self.store(), key, value, size, now);
    }

    /// Forget a running call that will never complete, so a retry runs it afresh.
    pub fn abandon(&self, key: DedupKey) {
        self.rules.abandon(&mut *self.store(), key);
    }

    /// Drop expired answers.
    pub fn evict(&self, now: Instant) {
        self.rules.evict(&mut *self.store(), now);
    }

    /// Entries held, running ones included.
    pub fn len(&self) -> usize {
        self.store().map.len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of finished answers held.
    pub fn bytes(&self) -> usize {
        self.store().bytes
    }
}

/// What [`dedup_suite!`](crate::dedup_suite) drives: a dedup cache with byte answers, as
/// a store's user sees it (so that each store is tested through its real paths).
#[doc(hidden)]
#[allow(clippy::len_without_is_empty)] // A test harness: `len` is what the suite checks.
pub trait SuiteCache {
    /// Begin `key`; a waiter is reported as `Wait(())`.
    fn begin(&self, key: DedupKey, now: Instant) -> Begin<(), Vec<u8>>;
    /// Complete `key` with `value`.
    fn complete(&self, key: DedupKey, value: &[u8], now: Instant);
    /// Abandon `key`.
    fn abandon(&self, key: DedupKey);
    /// Drop expired answers.
    fn evict(&self, now: Instant);
    /// Entries held, running ones included.
    fn len(&self) -> usize;
    /// Bytes of finished answers held.
    fn bytes(&self) -> usize;
}

impl SuiteCache for DedupCache<(), Vec<u8>> {
    fn begin(&self, key: DedupKey, now: Instant) -> Begin<(), Vec<u8>> {
        DedupCache::begin(self, key, now, || ())
    }

    fn complete(&self, key: DedupKey, value: &[u8], now: Instant) {
        DedupCache::complete(self, key, value.to_vec(), value.len(), now);
    }

    fn abandon(&self, key: DedupKey) {
        DedupCache::abandon(self, key);
    }

    fn evict(&self, now: Instant) {
        DedupCache::evict(self, now);
    }

    fn len(&self) -> usize {
        DedupCache::len(self)
    }

    fn bytes(&self) -> usize {
        DedupCache::bytes(self)
    }
}

/// The test suite of the dedup rules, run against a store: `dedup_suite!(make)` where
/// `make(config)` returns a fresh [`SuiteCache`]. Expands to `#[test]` functions, in a
/// test module of the caller's.
#[doc(hidden)]
#[macro_export]
macro_rules! dedup_suite {
    ($make:expr) => {
        use ::std::time::{Duration, Instant};
        use $crate::dedup::{Begin, DedupConfig, SuiteCache as _};

        fn fresh(config: DedupConfig) -> impl $crate::dedup::SuiteCache {
            ($make)(config)
        }

        fn cached(b: Begin<(), Vec<u8>>) -> Option<Vec<u8>> {
            match b {
                Begin::Cached(v) => Some(v),
                _ => None,
            }
        }

        #[test]
        fn runs_once_then_waits_then_caches() {
            let c = fresh(DedupConfig::default());
            let t0 = Instant::now();
            assert!(matches!(c.begin((1, 1), t0), Begin::Run));
            assert!(matches!(c.begin((1, 1), t0), Begin::Wait(())));
            // Another session with the same msgid is another key.
            assert!(matches!(c.begin((2, 1), t0), Begin::Run));
            c.complete((1, 1), b"answer", t0);
            assert_eq!(cached(c.begin((1, 1), t0)).as_deref(), Some(&b"answer"[..]));
            assert_eq!(c.bytes(), 6);
            assert_eq!(c.len(), 2);
        }

        #[test]
        fn expires_after_ttl() {
            let mut config = DedupConfig::default();
            config.ttl = Duration::from_secs(60);
            let c = fresh(config);
            let t0 = Instant::now();
            assert!(matches!(c.begin((1, 1), t0), Begin::Run));
            c.complete((1, 1), b"a", t0);
            let later = t0 + Duration::from_secs(59);
            assert_eq!(cached(c.begin((1, 1), later)).as_deref(), Some(&b"a"[..]));
            c.evict(t0 + Duration::from_secs(61));
            assert_eq!(c.len(), 0);
            assert_eq!(c.bytes(), 0);
            assert!(matches!(
                c.begin((1, 1), t0 + Duration::from_secs(61)),
                Begin::Run
            ));
        }

        #[test]
        fn an_expired_answer_runs_again_without_a_sweep() {
            let mut config = DedupConfig::default();
            config.ttl = Duration::from_secs(1);
            let c = fresh(config);
            let t0 = Instant::now();
            assert!(matches!(c.begin((1, 1), t0), Begin::Run));
            c.complete((1, 1), b"a", t0);
            assert!(matches!(
                c.begin((1, 1), t0 + Duration::from_secs(1)),
                Begin::Run
            ));
        }

        #[test]
        fn a_flood_of_keys_stays_bounded_and_keeps_the_newest() {
            let mut config = DedupConfig::default();
            config.max_entries = 1000;
            config.max_bytes = 50_000;
            let c = fresh(config);
            let t0 = Instant::now();
            let answer = |i: u64| i.to_le_bytes().repeat(1 + (i % 13) as usize);
            let key = |i: u64| ((u128::from(i) << 70) | 7, i);
            for i in 0..100_000u64 {
                assert!(matches!(c.begin(key(i), t0), Begin::Run), "key {i}");
                c.complete(key(i), &answer(i), t0);
                assert!(
                    c.len() <= 1000 && c.bytes() <= 50_000,
                    "at {i}: {} {}",
                    c.len(),
                    c.bytes()
                );
                // A recent answer reads back intact.
                if i >= 5 {
                    let k = i - 5;
                    assert_eq!(cached(c.begin(key(k), t0)), Some(answer(k)), "key {k}");
                }
            }
            // The newest survive, the oldest went first.
            assert_eq!(cached(c.begin(key(99_999), t0)), Some(answer(99_999)));
            assert!(matches!(c.begin(key(0), t0), Begin::Run));
        }

        #[test]
        fn the_oldest_answer_goes_first() {
            let mut config = DedupConfig::default();
            config.max_entries = 3;
            let c = fresh(config);
            let t0 = Instant::now();
            for i in 0..4u64 {
                let at = t0 + Duration::from_millis(i);
                assert!(matches!(c.begin((1, i), at), Begin::Run));
                c.complete((1, i), &[i as u8], at);
            }
            let at = t0 + Duration::from_millis(10);
            assert!(matches!(c.begin((1, 0), at), Begin::Run), "the oldest went");
            for i in 1..4u64 {
                assert_eq!(
                    cached(c.begin((1, i), at)),
                    Some(vec![i as u8]),
                    "{i} stays"
                );
            }
        }

        #[test]
        fn a_bound_in_bytes_evicts_as_many_as_needed() {
            let mut config = DedupConfig::default();
            config.max_bytes = 100;
            let c = fresh(config);
            let t0 = Instant::now();
            for i in 0..10u64 {
                assert!(matches!(c.begin((1, i), t0), Begin::Run));
                c.complete((1, i), &[i as u8; 10], t0);
            }
            assert_eq!(c.bytes(), 100);
            assert!(matches!(c.begin((2, 0), t0), Begin::Run));
            c.complete((2, 0), &[9; 35], t0);
            assert_eq!(c.bytes(), 95);
            for i in 0..4u64 {
                assert!(matches!(c.begin((1, i), t0), Begin::Run), "{i} went");
                c.abandon((1, i));
            }
            for i in 4..10u64 {
                assert_eq!(
                    cached(c.begin((1, i), t0)),
                    Some(vec![i as u8; 10]),
                    "{i} stays"
                );
            }
            assert_eq!(cached(c.begin((2, 0), t0)), Some(vec![9; 35]));
        }

        #[test]
        fn an_answer_larger_than_the_bound_is_not_kept() {
            let mut config = DedupConfig::default();
            config.max_bytes = 16;
            let c = fresh(config);
            let t0 = Instant::now();
            assert!(matches!(c.begin((1, 1), t0), Begin::Run));
            c.complete((1, 1), &[1; 8], t0);
            assert!(matches!(c.begin((1, 2), t0), Begin::Run));
            c.complete((1, 2), &[2; 17], t0);
            assert!(matches!(c.begin((1, 2), t0), Begin::Run), "not kept");
            assert_eq!(cached(c.begin((1, 1), t0)), Some(vec![1; 8]));
        }

        #[test]
        fn abandon_lets_a_retry_run() {
            let c = fresh(DedupConfig::default());
            let t0 = Instant::now();
            assert!(matches!(c.begin((1, 1), t0), Begin::Run));
            c.abandon((1, 1));
            assert_eq!(c.len(), 0);
            assert!(matches!(c.begin((1, 1), t0), Begin::Run));
            // A finished answer is not abandoned.
            c.complete((1, 1), b"kept", t0);
            c.abandon((1, 1));
            assert_eq!(cached(c.begin((1, 1), t0)).as_deref(), Some(&b"kept"[..]));
        }

        #[test]
        fn rerun_after_expiry_is_not_evicted_by_the_old_entry() {
            let mut config = DedupConfig::default();
            config.ttl = Duration::from_secs(1);
            let c = fresh(config);
            let t0 = Instant::now();
            let t1 = t0 + Duration::from_secs(2);
            assert!(matches!(c.begin((1, 1), t0), Begin::Run));
            c.complete((1, 1), b"old", t0);
            assert!(matches!(c.begin((1, 1), t1), Begin::Run));
            c.complete((1, 1), b"new", t1);
            assert_eq!(cached(c.begin((1, 1), t1)).as_deref(), Some(&b"new"[..]));
            c.evict(t1);
            assert_eq!(cached(c.begin((1, 1), t1)).as_deref(), Some(&b"new"[..]));
        }
    };
}

#[cfg(test)]
mod tests {
    crate::dedup_suite!(super::DedupCache::<(), Vec<u8>>::new);
}
