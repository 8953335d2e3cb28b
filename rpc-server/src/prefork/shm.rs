//! Memory shared by the supervisor and every worker: mapped once before the first fork,
//! never unmapped, and touched only through 64-bit atomics.
//!
//! Three users:
//!
//! - [`Control`]: per worker slot, the pid running in it and whether it listens. A slot
//!   is a place a worker process occupies (index `i` during a rolling restart has two).
//! - [`SharedFlow`]: one `max_flow` limit for the whole server. Each slot counts the
//!   permits its process holds; a permit is granted under a short cross-process lock when
//!   the sum over all slots is below the limit. When a worker dies the supervisor zeroes
//!   its count, so its permits come back, exactly.
//! - [`SharedDedup`]: the dedup cache of unstable-network mode, shared by every worker
//!   (see `Dedup` in `src/dedup.rs` for why it is shared rather than routed).
//!
//! Locks are spin locks (spin, then yield) held for a few hundred instructions (or one copy
//! of an answer). The lock word holds its holder's slot, so that when a worker dies while
//! holding one, the supervisor, which reaps it, releases the lock; for the dedup cache,
//! whose structure may then be half-updated, it also marks the cache to be cleared.

use std::io;
use std::num::NonZeroUsize;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::{Duration, Instant};

use bytes::Bytes;
use nix::sys::mman::{mmap_anonymous, MapFlags, ProtFlags};
use rpc_proto::{Begin, DedupConfig};

use crate::dedup::DedupKey;

/// Worker processes that may exist at once: during a rolling restart both generations
/// hold a slot.
pub(crate) const MAX_SLOTS: usize = 256;

/// This process's slot, set by a worker right after the fork. The supervisor takes no
/// lock, so it never needs one.
static SLOT: AtomicUsize = AtomicUsize::new(0);
/// This process's owner word in the dedup cache: `slot << 32 | pid`.
static OWNER: AtomicU64 = AtomicU64::new(0);

/// Record, in a freshly forked worker, which slot it occupies.
pub(crate) fn set_slot(slot: usize) {
    SLOT.store(slot, Relaxed);
    OWNER.store(((slot as u64) << 32) | u64::from(std::process::id()), Relaxed);
}

fn my_slot() -> usize {
    SLOT.load(Relaxed)
}

/// A zeroed, shared, anonymous mapping of `words` atomics, kept for the life of the
/// process and of every process forked from it.
fn map_words(words: usize) -> io::Result<&'static [AtomicU64]> {
    let words = words.max(1);
    let bytes = words
        .checked_mul(8)
        .and_then(NonZeroUsize::new)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "shared memory size overflows"))?;
    // SAFETY: a new anonymous mapping with no address hint: it aliases nothing in this
    // process, and the kernel picks a free range.
    let ptr = unsafe {
        mmap_anonymous(
            None,
            bytes,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED,
        )
    }?;
    // SAFETY: the mapping is `words * 8` bytes, page-aligned (so aligned for AtomicU64),
    // and zero-filled by the kernel; zero is a valid AtomicU64. It is never unmapped, so
    // `'static` holds, and every process that shares it (forks of this one) accesses it
    // only through these atomics, so there is no non-atomic access to race with.
    Ok(unsafe { std::slice::from_raw_parts(ptr.as_ptr().cast::<AtomicU64>(), words) })
}

/// A cross-process spin lock: 0 when free, else its holder's slot + 1.
#[derive(Debug, Clone, Copy)]
struct ShmLock(&'static AtomicU64);

struct ShmGuard(&'static AtomicU64);

impl ShmLock {
    fn lock(self) -> ShmGuard {
        let me = my_slot() as u64 + 1;
        let mut spins = 0u32;
        while self.0.compare_exchange_weak(0, me, Acquire, Relaxed).is_err() {
            // Held for a few hundred instructions: spin a little, then let the holder run
            // (on 2 cores it may be waiting for this very CPU).
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        ShmGuard(self.0)
    }

    /// Whether the (dead) process of `slot` holds the lock.
    fn held_by(self, slot: usize) -> bool {
        self.0.load(Acquire) == slot as u64 + 1
    }

    /// Release a lock whose holder, in `slot`, is dead.
    fn release_dead(self, slot: usize) -> bool {
        self.0
            .compare_exchange(slot as u64 + 1, 0, AcqRel, Relaxed)
            .is_ok()
    }
}

impl Drop for ShmGuard {
    fn drop(&mut self) {
        self.0.store(0, Release);
    }
}

/// Per slot: the pid running in it (0: free) and whether it listens.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Control {
    words: &'static [AtomicU64],
}

impl Control {
    pub(crate) fn new() -> io::Result<Control> {
        Ok(Control {
            words: map_words(MAX_SLOTS * 2)?,
        })
    }

    /// A worker was forked into `slot` (written by both sides of the fork, so that it
    /// holds before either runs on; the ready flag was cleared when the slot was vacated,
    /// and the worker may have set it already).
    pub(crate) fn occupy(self, slot: usize, pid: u32) {
        self.words[2 * slot].store(u64::from(pid), Release);
    }

    /// The worker in `slot` listens.
    pub(crate) fn set_ready(self, slot: usize) {
        self.words[2 * slot + 1].store(1, Release);
    }

    pub(crate) fn is_ready(self, slot: usize) -> bool {
        self.words[2 * slot + 1].load(Acquire) == 1
    }

    /// The worker in `slot` was reaped.
    pub(crate) fn vacate(self, slot: usize) {
        self.words[2 * slot + 1].store(0, Relaxed);
        self.words[2 * slot].store(0, Release);
    }

    /// Whether the process of an owner word (`slot << 32 | pid`) still runs.
    fn alive(self, owner: u64) -> bool {
        let (slot, pid) = ((owner >> 32) as usize, owner & 0xffff_ffff);
        pid != 0 && slot < MAX_SLOTS && self.words[2 * slot].load(Acquire) == pid
    }
}

// ---------------------------------------------------------------------------------------
// max_flow

/// One `max_flow` limit shared by every worker.
#[derive(Debug, Clone)]
pub(crate) struct SharedFlow {
    lock: ShmLock,
    /// Permits held, per slot.
    held: &'static [AtomicU64],
    limit: u64,
}

/// A held slot of a [`SharedFlow`]; released when dropped.
#[derive(Debug)]
pub(crate) struct SharedPermit(&'static AtomicU64);

impl Drop for SharedPermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Release);
    }
}

impl SharedFlow {
    /// A counter for `limit` concurrent executions.
    pub(crate) fn new(limit: usize) -> io::Result<SharedFlow> {
        let words = map_words(1 + MAX_SLOTS)?;
        Ok(SharedFlow {
            lock: ShmLock(&words[0]),
            held: &words[1..],
            limit: limit as u64,
        })
    }

    /// A permit if fewer than `limit` are held across all workers.
    pub(crate) fn try_acquire(&self) -> Option<SharedPermit> {
        let mine = &self.held[my_slot()];
        let _guard = self.lock.lock();
        // Every grant happens under the lock, so the sum sees all of them; a release
        // (outside the lock) seen late only makes this refuse, never over-grant.
        let held: u64 = self.held.iter().map(|h| h.load(Acquire)).sum();
        if held >= self.limit {
            return None;
        }
        mine.fetch_add(1, Relaxed);
        Some(SharedPermit(mine))
    }

    /// A permit within `wait`, polling with a growing pause (1 to 16 ms): processes share
    /// no wake-up channel.
    pub(crate) async fn acquire_within(&self, wait: Duration) -> Option<SharedPermit> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut pause = Duration::from_millis(1);
        loop {
            if let Some(p) = self.try_acquire() {
                return Some(p);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return None;
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(16));
        }
    }

    /// The worker in `slot` died: give its permits back (and the lock, if it held it).
    pub(crate) fn reclaim(&self, slot: usize) -> u64 {
        let n = self.held[slot].swap(0, AcqRel);
        self.lock.release_dead(slot);
        n
    }
}

// ---------------------------------------------------------------------------------------
// Dedup cache

// Header words.
const DIRTY: usize = 0;
const COUNT: usize = 1;
/// Next free word of the arena (a position that only grows; the arena index is it modulo
/// the arena's size).
const HEAD: usize = 2;
const ORDER_START: usize = 3;
const ORDER_LEN: usize = 4;
const BYTES: usize = 5;
const HEADER: usize = 8;

// A table bucket: 8 words.
const B_STATE: usize = 0;
const B_HI: usize = 1;
const B_LO: usize = 2;
const B_MSGID: usize = 3;
/// Running: the owner word of the process running it.
const B_OWNER: usize = 4;
/// Done: when, in nanoseconds since the cache's base instant.
const B_AT: usize = 5;
const B_POS: usize = 6;
const B_LEN: usize = 7;
const BUCKET: usize = 8;

const EMPTY: u64 = 0;
const RUNNING: u64 = 1;
const DONE: u64 = 2;

// An item of the completion queue (oldest first): 6 words.
const O_HI: usize = 0;
const O_LO: usize = 1;
const O_MSGID: usize = 2;
const O_AT: usize = 3;
const O_POS: usize = 4;
const O_LEN: usize = 5;
const ITEM: usize = 6;

/// The dedup cache of unstable-network mode in shared memory: the same rules as
/// [`rpc_proto::DedupCache`] (run once, retries wait for the running call or get the
/// stored answer, TTL, bounded in entries and bytes, oldest evicted first) for every
/// worker at once.
///
/// Layout: an open-addressing table (linear probing, backward-shift deletion) of
/// running and finished calls; a queue of finished calls in completion order; a ring of
/// answer bytes written in that same order, so the oldest answer is always the next one
/// to be overwritten and eviction is popping the queue. A call running in a process that
/// died counts as abandoned: the next request for its key runs it.
#[derive(Debug, Clone)]
pub(crate) struct SharedDedup {
    lock: ShmLock,
    header: &'static [AtomicU64],
    table: &'static [AtomicU64],
    order: &'static [AtomicU64],
    arena: &'static [AtomicU64],
    control: Control,
    /// The instant timestamps count from: taken before the fork, so every worker has the
    /// same (the monotonic clock is system-wide).
    base: Instant,
    config: DedupConfig,
}

/// What a retry waiting on a call in another process sees.
pub(crate) enum Peek {
    Done(Bytes),
    Running,
    Gone,
}

impl SharedDedup {
    pub(crate) fn new(config: DedupConfig, control: Control) -> io::Result<SharedDedup> {
        let too_large = || {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "the dedup bounds are too large to share",
            )
        };
        let entries = config.max_entries.max(1);
        // Room for every finished entry plus running calls, at most 3/4 full.
        let buckets = entries
            .checked_mul(2)
            .and_then(|n| n.checked_add(4096))
            .and_then(usize::checked_next_power_of_two)
            .ok_or_else(too_large)?;
        let arena_words = config.max_bytes.div_ceil(8).max(1);
        let total = [
            buckets.checked_mul(BUCKET),
            entries.checked_mul(ITEM),
            Some(arena_words),
        ]
        .into_iter()
        .try_fold(1 + HEADER, |sum, n| n.and_then(|n| sum.checked_add(n)))
        .ok_or_else(too_large)?;
        let words = map_words(total)?;
        let (lock, rest) = words.split_at(1);
        let (header, rest) = rest.split_at(HEADER);
        let (table, rest) = rest.split_at(buckets * BUCKET);
        let (order, arena) = rest.split_at(entries * ITEM);
        Ok(SharedDedup {
            lock: ShmLock(&lock[0]),
            header,
            table,
            order,
            arena,
            control,
            base: Instant::now(),
            config,
        })
    }

    fn nanos(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    fn locked(&self) -> (ShmGuard, Cache<'_>) {
        let guard = self.lock.lock();
        let cache = Cache { d: self };
        if cache.h(DIRTY) != 0 {
            tracing::warn!("a worker died while updating the shared dedup cache; clearing it");
            cache.clear();
        }
        (guard, cache)
    }

    /// As [`rpc_proto::DedupCache::begin`]; `Wait` carries nothing (the waiter polls).
    pub(crate) fn begin(&self, key: DedupKey, now: Instant) -> Begin<(), Bytes> {
        let now = self.nanos(now);
        let me = OWNER.load(Relaxed);
        let (_guard, c) = self.locked();
        match c.find(key) {
            Ok(b) if c.b(b, B_STATE) == RUNNING => {
                if self.control.alive(c.b(b, B_OWNER)) {
                    return Begin::Wait(());
                }
                // Its process died: the call was abandoned; run it again.
                c.set_b(b, B_OWNER, me);
                Begin::Run
            }
            Ok(b) => {
                if now.saturating_sub(c.b(b, B_AT)) < self.ttl() {
                    return Begin::Cached(c.read(c.b(b, B_POS), c.b(b, B_LEN) as usize));
                }
                c.set_b(b, B_STATE, RUNNING);
                c.set_b(b, B_OWNER, me);
                Begin::Run
            }
            Err(_) => {
                if c.full() {
                    c.evict(now, None);
                }
                match c.find(key) {
                    Err(b) if !c.full() => {
                        c.insert(b, key, me);
                        Begin::Run
                    }
                    // Full of running calls: run it without a record (not deduplicated).
                    _ => {
                        tracing::warn!(
                            "the shared dedup cache is full of running calls; this one is not tracked"
                        );
                        Begin::Run
                    }
                }
            }
        }
    }

    /// Store the answer of a call this process ran.
    pub(crate) fn complete(&self, key: DedupKey, value: &[u8], now: Instant) {
        let now = self.nanos(now);
        let words = value.len().div_ceil(8) as u64;
        let (_guard, c) = self.locked();
        if words > self.arena.len() as u64 {
            // Larger than the whole cache: kept by nobody (as DedupCache would evict it at once).
            if let Ok(b) = c.find(key) {
                c.remove(b);
            }
            return;
        }
        c.evict(now, Some(words));
        let b = match c.find(key) {
            Ok(b) => b,
            Err(b) if !c.full() => {
                c.insert(b, key, 0);
                b
            }
            Err(_) => return,
        };
        let pos = c.h(HEAD);
        c.write(pos, value);
        c.set_h(HEAD, pos + words);
        c.set_h(BYTES, c.h(BYTES) + value.len() as u64);
        c.push(key, now, pos, value.len() as u64);
        c.set_b(b, B_AT, now);
        c.set_b(b, B_POS, pos);
        c.set_b(b, B_LEN, value.len() as u64);
        c.set_b(b, B_STATE, DONE);
    }

    /// Forget a call this process started and will not complete.
    pub(crate) fn abandon(&self, key: DedupKey) {
        let me = OWNER.load(Relaxed);
        let (_guard, c) = self.locked();
        if let Ok(b) = c.find(key) {
            if c.b(b, B_STATE) == RUNNING && c.b(b, B_OWNER) == me {
                c.remove(b);
            }
        }
    }

    /// For a retry waiting on a running call: its answer, still running, or gone (its
    /// process died, or it was abandoned).
    pub(crate) fn peek(&self, key: DedupKey) -> Peek {
        let (_guard, c) = self.locked();
        match c.find(key) {
            Ok(b) if c.b(b, B_STATE) == DONE => Peek::Done(c.read(c.b(b, B_POS), c.b(b, B_LEN) as usize)),
            Ok(b) if self.control.alive(c.b(b, B_OWNER)) => Peek::Running,
            _ => Peek::Gone,
        }
    }

    /// Drop expired answers.
    pub(crate) fn evict(&self, now: Instant) {
        let now = self.nanos(now);
        let (_guard, c) = self.locked();
        c.evict(now, None);
    }

    /// Entries held, running ones included.
    pub(crate) fn len(&self) -> usize {
        self.header[COUNT].load(Relaxed) as usize
    }

    /// The worker in `slot` died. If it held the lock, the structure may be half-updated:
    /// mark it to be cleared by the next holder, then release the lock.
    pub(crate) fn reclaim(&self, slot: usize) -> bool {
        if !self.lock.held_by(slot) {
            return false;
        }
        self.header[DIRTY].store(1, Release);
        self.lock.release_dead(slot)
    }

    fn ttl(&self) -> u64 {
        u64::try_from(self.config.ttl.as_nanos()).unwrap_or(u64::MAX)
    }

    fn buckets(&self) -> usize {
        self.table.len() / BUCKET
    }
}

/// The cache while its lock is held: plain loads and stores (the lock orders them).
struct Cache<'a> {
    d: &'a SharedDedup,
}

fn hash(key: DedupKey) -> u64 {
    // splitmix64 finaliser over the three words: the same in every process (no random
    // state), spread well enough for linear probing.
    let mut z = (key.0 as u64) ^ ((key.0 >> 64) as u64).rotate_left(21) ^ key.1.rotate_left(42);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Cache<'_> {
    fn h(&self, i: usize) -> u64 {
        self.d.header[i].load(Relaxed)
    }

    fn set_h(&self, i: usize, v: u64) {
        self.d.header[i].store(v, Relaxed);
    }

    fn b(&self, b: usize, f: usize) -> u64 {
        self.d.table[b * BUCKET + f].load(Relaxed)
    }

    fn set_b(&self, b: usize, f: usize, v: u64) {
        self.d.table[b * BUCKET + f].store(v, Relaxed);
    }

    fn o(&self, i: usize, f: usize) -> u64 {
        self.d.order[i * ITEM + f].load(Relaxed)
    }

    fn set_o(&self, i: usize, f: usize, v: u64) {
        self.d.order[i * ITEM + f].store(v, Relaxed);
    }

    fn mask(&self) -> usize {
        self.d.buckets() - 1
    }

    fn home(&self, key: DedupKey) -> usize {
        hash(key) as usize & self.mask()
    }

    fn key_at(&self, b: usize) -> DedupKey {
        (
            (u128::from(self.b(b, B_HI)) << 64) | u128::from(self.b(b, B_LO)),
            self.b(b, B_MSGID),
        )
    }

    /// `Ok(bucket)` holding `key`, or `Err(empty bucket)` where it would go.
    fn find(&self, key: DedupKey) -> Result<usize, usize> {
        let mut b = self.home(key);
        loop {
            if self.b(b, B_STATE) == EMPTY {
                return Err(b);
            }
            if self.key_at(b) == key {
                return Ok(b);
            }
            b = (b + 1) & self.mask();
        }
    }

    fn full(&self) -> bool {
        self.h(COUNT) as usize >= self.d.buckets() / 4 * 3
    }

    fn insert(&self, b: usize, key: DedupKey, owner: u64) {
        self.set_b(b, B_HI, (key.0 >> 64) as u64);
        self.set_b(b, B_LO, key.0 as u64);
        self.set_b(b, B_MSGID, key.1);
        self.set_b(b, B_OWNER, owner);
        self.set_b(b, B_STATE, RUNNING);
        self.set_h(COUNT, self.h(COUNT) + 1);
    }

    /// Backward-shift deletion: later entries of the probe run move up, so lookups never
    /// need tombstones.
    fn remove(&self, mut hole: usize) {
        self.set_h(COUNT, self.h(COUNT).saturating_sub(1));
        let mask = self.mask();
        let mut j = hole;
        loop {
            self.set_b(hole, B_STATE, EMPTY);
            loop {
                j = (j + 1) & mask;
                if self.b(j, B_STATE) == EMPTY {
                    return;
                }
                let home = self.home(self.key_at(j));
                // The entry at j may move to the hole unless its home lies cyclically in
                // (hole, j].
                let stays = if hole <= j {
                    hole < home && home <= j
                } else {
                    hole < home || home <= j
                };
                if !stays {
                    for f in 0..BUCKET {
                        self.set_b(hole, f, self.b(j, f));
                    }
                    hole = j;
                    break;
                }
            }
        }
    }

    fn push(&self, key: DedupKey, at: u64, pos: u64, len: u64) {
        let cap = self.d.order.len() / ITEM;
        let i = (self.h(ORDER_START) as usize + self.h(ORDER_LEN) as usize) % cap;
        self.set_o(i, O_HI, (key.0 >> 64) as u64);
        self.set_o(i, O_LO, key.0 as u64);
        self.set_o(i, O_MSGID, key.1);
        self.set_o(i, O_AT, at);
        self.set_o(i, O_POS, pos);
        self.set_o(i, O_LEN, len);
        self.set_h(ORDER_LEN, self.h(ORDER_LEN) + 1);
    }

    /// Pop the oldest answers while they are expired and, before pushing an answer of
    /// `push` words, while the queue is full or the answer would overwrite them.
    fn evict(&self, now: u64, push: Option<u64>) {
        let cap = self.d.order.len() / ITEM;
        let arena = self.d.arena.len() as u64;
        let ttl = self.d.ttl();
        while self.h(ORDER_LEN) > 0 {
            let i = self.h(ORDER_START) as usize;
            let (at, pos, len) = (self.o(i, O_AT), self.o(i, O_POS), self.o(i, O_LEN));
            let expired = now.saturating_sub(at) >= ttl;
            let queue_full = push.is_some() && self.h(ORDER_LEN) as usize >= cap;
            let overwritten = push.is_some_and(|room| self.h(HEAD) + room > pos + arena);
            if !expired && !queue_full && !overwritten {
                break;
            }
            self.set_h(ORDER_START, ((i + 1) % cap) as u64);
            self.set_h(ORDER_LEN, self.h(ORDER_LEN) - 1);
            self.set_h(BYTES, self.h(BYTES).saturating_sub(len));
            let key = (
                (u128::from(self.o(i, O_HI)) << 64) | u128::from(self.o(i, O_LO)),
                self.o(i, O_MSGID),
            );
            // The key may have run again since: remove only this answer.
            if let Ok(b) = self.find(key) {
                if self.b(b, B_STATE) == DONE && self.b(b, B_AT) == at && self.b(b, B_POS) == pos {
                    self.remove(b);
                }
            }
        }
    }

    fn write(&self, pos: u64, value: &[u8]) {
        let n = self.d.arena.len() as u64;
        for (k, chunk) in value.chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.d.arena[((pos + k as u64) % n) as usize].store(u64::from_le_bytes(w), Relaxed);
        }
    }

    fn read(&self, pos: u64, len: usize) -> Bytes {
        let n = self.d.arena.len() as u64;
        let mut out = Vec::with_capacity(len.next_multiple_of(8));
        for k in 0..len.div_ceil(8) as u64 {
            out.extend_from_slice(&self.d.arena[((pos + k) % n) as usize].load(Relaxed).to_le_bytes());
        }
        out.truncate(len);
        Bytes::from(out)
    }

    /// Forget everything (after a worker died holding the lock).
    fn clear(&self) {
        for b in 0..self.d.buckets() {
            self.set_b(b, B_STATE, EMPTY);
        }
        for i in [COUNT, ORDER_START, ORDER_LEN, BYTES] {
            self.set_h(i, 0);
        }
        self.set_h(DIRTY, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The slot is process-wide: tests that set it take turns.
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn cache(config: DedupConfig) -> SharedDedup {
        let control = Control::new().unwrap();
        set_slot(0);
        control.occupy(0, std::process::id());
        SharedDedup::new(config, control).unwrap()
    }

    #[test]
    fn runs_once_then_waits_then_caches() {
        let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
        let c = cache(DedupConfig::default());
        let t0 = Instant::now();
        assert!(matches!(c.begin((1, 1), t0), Begin::Run));
        assert!(matches!(c.begin((1, 1), t0), Begin::Wait(())));
        assert!(matches!(c.peek((1, 1)), Peek::Running));
        assert!(matches!(c.begin((2, 1), t0), Begin::Run));
        c.complete((1, 1), b"answer", t0);
        assert!(matches!(c.begin((1, 1), t0), Begin::Cached(b) if &b[..] == b"answer"));
        assert!(matches!(c.peek((1, 1)), Peek::Done(b) if &b[..] == b"answer"));
        assert_eq!(c.len(), 2);
        c.abandon((2, 1));
        assert!(matches!(c.peek((2, 1)), Peek::Gone));
        assert!(matches!(c.begin((2, 1), t0), Begin::Run));
    }

    #[test]
    fn expires_after_ttl() {
        let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
        let mut config = DedupConfig::default();
        config.ttl = Duration::from_secs(60);
        let c = cache(config);
        let t0 = Instant::now();
        assert!(matches!(c.begin((1, 1), t0), Begin::Run));
        c.complete((1, 1), b"a", t0);
        assert!(matches!(
            c.begin((1, 1), t0 + Duration::from_secs(59)),
            Begin::Cached(_)
        ));
        c.evict(t0 + Duration::from_secs(61));
        assert_eq!(c.len(), 0);
        assert!(matches!(
            c.begin((1, 1), t0 + Duration::from_secs(61)),
            Begin::Run
        ));
    }

    #[test]
    fn a_flood_of_keys_stays_bounded_and_keeps_the_newest() {
        let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
        let mut config = DedupConfig::default();
        config.max_entries = 1000;
        config.max_bytes = 50_000;
        let c = cache(config);
        let t0 = Instant::now();
        for i in 0..100_000u64 {
            let key = ((u128::from(i) << 70) | 7, i);
            assert!(matches!(c.begin(key, t0), Begin::Run), "key {i}");
            let answer = i.to_le_bytes().repeat(1 + (i % 13) as usize);
            c.complete(key, &answer, t0);
            assert!(c.len() <= 1000, "at {i}: {}", c.len());
            assert!(c.header[BYTES].load(Relaxed) <= 50_000);
            // A recent answer reads back intact (the ring wraps many times).
            if i >= 5 {
                let k = i - 5;
                let key = ((u128::from(k) << 70) | 7, k);
                let want = k.to_le_bytes().repeat(1 + (k % 13) as usize);
                assert!(
                    matches!(c.peek(key), Peek::Done(b) if b[..] == want[..]),
                    "key {k}"
                );
            }
        }
        assert!(matches!(c.begin((7, 0), t0), Begin::Run));
    }

    #[test]
    fn a_dead_owner_abandons_and_a_dead_lock_holder_clears() {
        let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
        let c = cache(DedupConfig::default());
        let t0 = Instant::now();
        // A call owned by slot 3, whose process is gone.
        set_slot(3);
        assert!(matches!(c.begin((9, 9), t0), Begin::Run));
        set_slot(0);
        assert!(matches!(c.peek((9, 9)), Peek::Gone));
        assert!(matches!(c.begin((9, 9), t0), Begin::Run));
        c.complete((9, 9), b"x", t0);
        // Slot 3 dies holding the lock.
        c.lock.0.store(4, Relaxed);
        assert!(c.reclaim(3));
        assert!(matches!(c.begin((9, 9), t0), Begin::Run), "cleared");
    }

    #[test]
    fn shared_flow_counts_every_slot() {
        let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
        let f = SharedFlow::new(3).unwrap();
        set_slot(0);
        let a = f.try_acquire().unwrap();
        set_slot(1);
        let b = f.try_acquire().unwrap();
        let c = f.try_acquire().unwrap();
        assert!(f.try_acquire().is_none());
        drop(a);
        set_slot(0);
        let d = f.try_acquire().unwrap();
        assert!(f.try_acquire().is_none());
        // Slot 1 dies holding two permits.
        std::mem::forget((b, c));
        assert_eq!(f.reclaim(1), 2);
        let _e = f.try_acquire().unwrap();
        let _g = f.try_acquire().unwrap();
        assert!(f.try_acquire().is_none());
        drop(d);
    }
}
