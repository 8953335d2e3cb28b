//! Memory shared by the supervisor and every worker: mapped once before the first fork,
//! never unmapped, and touched only through atomics.
//!
//! Three users:
//!
//! - [`Control`]: per worker slot, the pid running in it and whether it listens. A slot
//!   is a place a worker process occupies (index `i` during a rolling restart has two).
//! - [`SharedFlow`]: one `max_flow` limit for the whole server (a [`Limit`]). Each slot
//!   counts the permits its process holds; a permit is granted under a short
//!   cross-process lock when the sum over all slots is below the limit. When a worker
//!   dies the supervisor zeroes its count, so its permits come back, exactly.
//! - [`SharedDedup`]: the dedup cache of unstable-network mode, shared by every worker
//!   (a dedup [`Store`]; see `src/dedup.rs` for why it is shared rather than routed).
//!
//! Each worker gets its own handle on the shared objects ([`SharedFlow::for_slot`],
//! [`SharedDedup::for_worker`]) when it builds its server after the fork: the handle
//! knows the worker's slot, so no process-wide static is needed.
//!
//! # The lock
//!
//! A lock is held only for bookkeeping: a probe of the table, a few words written, and
//! the evictions an insertion causes (amortised O(1)); the sum of 256 counters for a
//! limit. Answers, up to the message size, are copied outside it (see [`SharedDedup`]).
//! So contention is short, and a waiter spins briefly and then sleeps in the kernel on
//! the lock word (a futex on Linux, woken by the unlocker), exactly like
//! `std::sync::Mutex`, which tokio's docs allow on async threads for short critical
//! sections. It never spins with `yield_now`: on 2 cores that would spin against the
//! holder. Elsewhere than Linux the sleep is a short `thread::sleep` instead of a futex.
//!
//! The lock word holds its holder's slot, so that when a worker dies while holding one,
//! the supervisor, which reaps it, releases the lock; for the dedup cache, whose
//! structure may then be half-updated, it also marks the cache to be cleared.

use std::io;
use std::num::NonZeroUsize;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::sync::atomic::{fence, AtomicU32, AtomicU64};
use std::time::{Duration, Instant};

use bytes::Bytes;
use easyrpc_proto::dedup::{DedupRules, DedupStore, Finished, Slot};
use easyrpc_proto::{Begin, DedupConfig};
use nix::sys::mman::{mmap_anonymous, MapFlags, ProtFlags};

use crate::dedup::{DedupKey, Peek, Pending, Store, Wait};
use crate::limits::{Acquire as AcquireFuture, Limit, Permit};

/// Worker processes that may exist at once: during a rolling restart both generations
/// hold a slot.
pub(crate) const MAX_SLOTS: usize = 256;

/// An atomic integer type whose all-zero bytes are a valid value (zero).
trait ZeroAtomic: Sized {}
impl ZeroAtomic for AtomicU64 {}
impl ZeroAtomic for AtomicU32 {}

/// A zeroed, shared, anonymous mapping of `n` atomics, kept for the life of the process
/// and of every process forked from it.
fn map<T: ZeroAtomic>(n: usize) -> io::Result<&'static [T]> {
    let n = n.max(1);
    let bytes = n
        .checked_mul(std::mem::size_of::<T>())
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
    // SAFETY: the mapping is `n * size_of::<T>()` bytes, page-aligned (so aligned for an
    // atomic integer), and zero-filled by the kernel; zero is a valid value of every
    // `ZeroAtomic`. It is never unmapped, so `'static` holds, and every process that
    // shares it (forks of this one) accesses it only through these atomics of this one
    // type, so there is no non-atomic or mixed-size access to race with.
    Ok(unsafe { std::slice::from_raw_parts(ptr.as_ptr().cast::<T>(), n) })
}

fn map_words(words: usize) -> io::Result<&'static [AtomicU64]> {
    map(words)
}

/// Set in a lock word while a process sleeps on it: the unlocker must wake one.
const WAITERS: u32 = 1 << 31;
/// Spins before sleeping: the holder only does bookkeeping.
const SPINS: u32 = 100;

/// A cross-process lock: 0 when free, else its holder's slot + 1, with [`WAITERS`].
#[derive(Debug, Clone, Copy)]
struct ShmLock(&'static AtomicU32);

struct ShmGuard(&'static AtomicU32);

impl ShmLock {
    fn lock(self, slot: usize) -> ShmGuard {
        let me = slot as u32 + 1;
        if self.0.compare_exchange(0, me, Acquire, Relaxed).is_ok() {
            return ShmGuard(self.0);
        }
        for _ in 0..SPINS {
            std::hint::spin_loop();
            if self.0.load(Relaxed) == 0 && self.0.compare_exchange(0, me, Acquire, Relaxed).is_ok() {
                return ShmGuard(self.0);
            }
        }
        loop {
            let cur = self.0.load(Relaxed);
            if cur == 0 {
                // Taken with the flag set: others may still sleep on the word.
                if self.0.compare_exchange(0, me | WAITERS, Acquire, Relaxed).is_ok() {
                    return ShmGuard(self.0);
                }
                continue;
            }
            if cur & WAITERS == 0
                && self
                    .0
                    .compare_exchange(cur, cur | WAITERS, Relaxed, Relaxed)
                    .is_err()
            {
                continue;
            }
            sleep_on(self.0, cur | WAITERS);
        }
    }

    /// Whether the (dead) process of `slot` holds the lock.
    fn held_by(self, slot: usize) -> bool {
        self.0.load(Acquire) & !WAITERS == slot as u32 + 1
    }

    /// Release a lock whose holder, in `slot`, is dead.
    fn release_dead(self, slot: usize) -> bool {
        let mut cur = self.0.load(Acquire);
        while cur & !WAITERS == slot as u32 + 1 {
            match self.0.compare_exchange(cur, 0, AcqRel, Acquire) {
                Ok(_) => {
                    wake(self.0, i32::MAX);
                    return true;
                }
                Err(now) => cur = now,
            }
        }
        false
    }
}

impl Drop for ShmGuard {
    fn drop(&mut self) {
        if self.0.swap(0, Release) & WAITERS != 0 {
            wake(self.0, 1);
        }
    }
}

/// Sleep while `word` holds `expected`, or for 10 ms at most (a waker may die).
#[cfg(target_os = "linux")]
fn sleep_on(word: &AtomicU32, expected: u32) {
    use nix::libc;
    let timeout = libc::timespec {
        tv_sec: 0,
        tv_nsec: 10_000_000,
    };
    // SAFETY: FUTEX_WAIT reads the aligned u32 at `word` (an atomic in a live shared
    // mapping), and sleeps only if it still equals `expected`; the kernel writes no user
    // memory. Not FUTEX_PRIVATE: the word is shared with other processes. Any error
    // (EAGAIN: the word changed; EINTR; ETIMEDOUT) just sends the caller round again.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &timeout as *const libc::timespec,
        );
    }
}

/// Wake up to `n` processes sleeping on `word`.
#[cfg(target_os = "linux")]
fn wake(word: &AtomicU32, n: i32) {
    use nix::libc;
    // SAFETY: FUTEX_WAKE only uses the address as a key to find sleepers; it reads and
    // writes no user memory.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, n);
    }
}

#[cfg(not(target_os = "linux"))]
fn sleep_on(word: &AtomicU32, expected: u32) {
    if word.load(Relaxed) == expected {
        std::thread::sleep(Duration::from_micros(50));
    }
}

#[cfg(not(target_os = "linux"))]
fn wake(_: &AtomicU32, _: i32) {}

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
    /// The slot of the process using this handle.
    slot: usize,
}

impl SharedFlow {
    /// A counter for `limit` concurrent executions.
    pub(crate) fn new(limit: usize) -> io::Result<SharedFlow> {
        Ok(SharedFlow {
            lock: ShmLock(&map::<AtomicU32>(1)?[0]),
            held: map_words(MAX_SLOTS)?,
            limit: limit as u64,
            slot: 0,
        })
    }

    /// The handle of the worker in `slot`.
    pub(crate) fn for_slot(&self, slot: usize) -> SharedFlow {
        SharedFlow { slot, ..self.clone() }
    }

    /// The worker in `slot` died: give its permits back (and the lock, if it held it).
    pub(crate) fn reclaim(&self, slot: usize) -> u64 {
        let n = self.held[slot].swap(0, AcqRel);
        self.lock.release_dead(slot);
        n
    }
}

impl Limit for SharedFlow {
    /// A permit if fewer than `limit` are held across all workers.
    fn try_acquire(&self) -> Option<Permit> {
        let mine = &self.held[self.slot];
        let _guard = self.lock.lock(self.slot);
        // Every grant happens under the lock, so the sum sees all of them; a release
        // (outside the lock) seen late only makes this refuse, never over-grant.
        let held: u64 = self.held.iter().map(|h| h.load(Acquire)).sum();
        if held >= self.limit {
            return None;
        }
        mine.fetch_add(1, Relaxed);
        Some(Permit::counted(mine))
    }

    /// A permit within `wait`, polling with a growing pause (1 to 16 ms): processes share
    /// no wake-up channel.
    fn acquire_within(&self, wait: Duration) -> AcquireFuture<'_> {
        Box::pin(async move {
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
        })
    }
}

// ---------------------------------------------------------------------------------------
// Dedup cache

// Header words.
const DIRTY: usize = 0;
const COUNT: usize = 1;
/// End of the last reservation in the arena (a position that only grows; the arena index
/// is it modulo the arena's size). Never reset, not even by a clear: copies in flight
/// check against it.
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

/// Where an answer's bytes are in the arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Region {
    pos: u64,
    len: u64,
}

/// The dedup cache of unstable-network mode in shared memory, for every worker at once:
/// the rules are [`DedupRules`] (the same code as the in-process cache); this is only
/// where entries live.
///
/// Layout: an open-addressing table (linear probing, backward-shift deletion) of
/// running and finished calls; a queue of finished calls in completion order; a ring of
/// answer bytes. A call running in a process that died counts as abandoned: the next
/// request for its key runs it.
///
/// Answers are copied outside the lock. Completing reserves a region of the ring under
/// the lock (evicting the answers it would overwrite), copies the answer in without the
/// lock, and publishes it under the lock if no later reservation overran the region in
/// the meantime. A reader finds the region under the lock, copies it out without the
/// lock, and keeps the copy only if no reservation reached the region meanwhile (the
/// reservation end, [`HEAD`], only grows; a fence pairs each writer's reservation with
/// the readers of what it wrote). An answer found overrun reads as evicted.
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
    rules: DedupRules,
    /// The slot of the process using this handle.
    slot: usize,
    /// Its owner word, `slot << 32 | pid`, written into the calls it runs.
    owner: u64,
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
        // Answers are padded to whole words: up to a word more each. With this much
        // room, the ring never overwrites an answer the bounds in bytes and entries
        // would keep (only completions racing out of order can).
        let arena_words = config.max_bytes.div_ceil(8).checked_add(entries);
        let total = [
            buckets.checked_mul(BUCKET),
            entries.checked_mul(ITEM),
            arena_words,
        ]
        .into_iter()
        .try_fold(HEADER, |sum, n| n.and_then(|n| sum.checked_add(n)))
        .ok_or_else(too_large)?;
        let words = map_words(total)?;
        let (header, rest) = words.split_at(HEADER);
        let (table, rest) = rest.split_at(buckets * BUCKET);
        let (order, arena) = rest.split_at(entries * ITEM);
        Ok(SharedDedup {
            lock: ShmLock(&map::<AtomicU32>(1)?[0]),
            header,
            table,
            order,
            arena,
            control,
            base: Instant::now(),
            rules: DedupRules::new(config),
            slot: 0,
            owner: 0,
        })
    }

    /// The handle of the worker with `pid` in `slot`.
    pub(crate) fn for_worker(&self, slot: usize, pid: u32) -> SharedDedup {
        SharedDedup {
            slot,
            owner: ((slot as u64) << 32) | u64::from(pid),
            ..self.clone()
        }
    }

    fn nanos(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    fn instant(&self, nanos: u64) -> Instant {
        self.base + Duration::from_nanos(nanos)
    }

    fn locked(&self) -> (ShmGuard, Table<'_>) {
        let guard = self.lock.lock(self.slot);
        let table = Table { d: self };
        if table.h(DIRTY) != 0 {
            tracing::warn!("a worker died while updating the shared dedup cache; clearing it");
            table.clear();
        }
        (guard, table)
    }

    /// The arena's size in words.
    fn ring(&self) -> u64 {
        self.arena.len() as u64
    }

    /// Copy `region` out, without the lock; `None` if a reservation overran it.
    fn read(&self, region: Region) -> Option<Bytes> {
        let n = self.ring();
        let words = region.len.div_ceil(8);
        let mut out = Vec::with_capacity((words * 8) as usize);
        for k in 0..words {
            out.extend_from_slice(
                &self.arena[((region.pos + k) % n) as usize]
                    .load(Relaxed)
                    .to_le_bytes(),
            );
        }
        // Pairs with the writers' fence: if any word above came from a later
        // reservation's writer, HEAD below shows that reservation.
        fence(Acquire);
        if self.header[HEAD].load(Relaxed) > region.pos + n {
            return None;
        }
        out.truncate(region.len as usize);
        Some(Bytes::from(out))
    }

    /// Copy `value` into its reserved `region`, without the lock.
    fn write(&self, region: Region, value: &[u8]) {
        // Pairs with the readers' fence: the reservation (made before) is seen by any
        // reader that sees these words.
        fence(Release);
        let n = self.ring();
        for (k, chunk) in value.chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.arena[((region.pos + k as u64) % n) as usize].store(u64::from_le_bytes(w), Relaxed);
        }
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

    fn buckets(&self) -> usize {
        self.table.len() / BUCKET
    }
}

impl Store for SharedDedup {
    fn begin(&self, key: DedupKey, now: Instant, _: &mut dyn FnMut() -> Pending) -> Begin<Wait, Bytes> {
        loop {
            let region = {
                let (_guard, mut t) = self.locked();
                match self.rules.begin(&mut t, key, now, || self.owner) {
                    Begin::Run => return Begin::Run,
                    Begin::Wait(()) => return Begin::Wait(Wait::Poll),
                    Begin::Cached(region) => region,
                }
            };
            if let Some(answer) = self.read(region) {
                return Begin::Cached(answer);
            }
            // Overrun while we copied: it is evicted; look again (it now runs).
            let (_guard, mut t) = self.locked();
            t.forget(key, region);
        }
    }

    fn complete(&self, key: DedupKey, value: Bytes, now: Instant) {
        let words = value.len().div_ceil(8) as u64;
        let region = {
            let (_guard, mut t) = self.locked();
            if words > self.ring() || value.len() > self.rules.config().max_bytes {
                // Larger than the whole cache: kept by nobody.
                t.remove(key);
                return;
            }
            self.rules.make_room(&mut t, value.len(), now);
            // And the answers the reservation would overwrite.
            while t
                .oldest_pos()
                .is_some_and(|pos| t.h(HEAD) + words > pos + self.ring())
            {
                self.rules.pop_oldest(&mut t);
            }
            let pos = t.h(HEAD);
            t.set_h(HEAD, pos + words);
            Region {
                pos,
                len: value.len() as u64,
            }
        };
        self.write(region, &value);
        let (_guard, mut t) = self.locked();
        if t.h(HEAD) > region.pos + self.ring() {
            // Overrun by another completion meanwhile: as if evicted at once.
            t.remove(key);
            return;
        }
        self.rules.complete(&mut t, key, region, value.len(), now);
    }

    fn abandon(&self, key: DedupKey) {
        let (_guard, mut t) = self.locked();
        self.rules.abandon(&mut t, key);
    }

    fn evict(&self, now: Instant) {
        let (_guard, mut t) = self.locked();
        self.rules.evict(&mut t, now);
    }

    fn len(&self) -> usize {
        self.header[COUNT].load(Relaxed) as usize
    }

    fn peek(&self, key: DedupKey) -> Peek {
        let region = {
            let (_guard, t) = self.locked();
            match t.get(key) {
                Some(Slot::Done { answer, .. }) => answer,
                Some(Slot::Running(owner)) if self.control.alive(owner) => return Peek::Running,
                _ => return Peek::Gone,
            }
        };
        match self.read(region) {
            Some(answer) => Peek::Done(answer),
            None => Peek::Gone,
        }
    }
}

/// The cache while its lock is held: plain loads and stores (the lock orders them). This
/// is the store the rules work on.
struct Table<'a> {
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

impl DedupStore for Table<'_> {
    type Running = u64;
    type Waiter = ();
    type Answer = Region;

    fn get(&self, key: DedupKey) -> Option<Slot<u64, Region>> {
        let b = self.find(key).ok()?;
        Some(match self.b(b, B_STATE) {
            RUNNING => Slot::Running(self.b(b, B_OWNER)),
            _ => Slot::Done {
                answer: Region {
                    pos: self.b(b, B_POS),
                    len: self.b(b, B_LEN),
                },
                at: self.d.instant(self.b(b, B_AT)),
                size: self.b(b, B_LEN) as usize,
            },
        })
    }

    fn put(&mut self, key: DedupKey, slot: Slot<u64, Region>) -> Result<(), Slot<u64, Region>> {
        let b = match self.find(key) {
            Ok(b) => b,
            Err(_) if self.full() => return Err(slot),
            Err(b) => {
                self.insert(b, key);
                b
            }
        };
        match slot {
            Slot::Running(owner) => {
                self.set_b(b, B_OWNER, owner);
                self.set_b(b, B_STATE, RUNNING);
            }
            Slot::Done { answer, at, .. } => {
                self.set_b(b, B_AT, self.d.nanos(at));
                self.set_b(b, B_POS, answer.pos);
                self.set_b(b, B_LEN, answer.len);
                self.set_b(b, B_STATE, DONE);
            }
        }
        Ok(())
    }

    fn remove(&mut self, key: DedupKey) {
        if let Ok(b) = self.find(key) {
            self.remove_at(b);
        }
    }

    fn push(&mut self, f: Finished, answer: &Region) {
        let cap = self.d.order.len() / ITEM;
        if self.h(ORDER_LEN) as usize >= cap {
            // The rules evict before pushing past `max_entries`, the queue's size.
            self.d.rules.pop_oldest(self);
        }
        let i = (self.h(ORDER_START) as usize + self.h(ORDER_LEN) as usize) % cap;
        self.set_o(i, O_HI, (f.key.0 >> 64) as u64);
        self.set_o(i, O_LO, f.key.0 as u64);
        self.set_o(i, O_MSGID, f.key.1);
        self.set_o(i, O_AT, self.d.nanos(f.at));
        self.set_o(i, O_POS, answer.pos);
        self.set_o(i, O_LEN, f.size as u64);
        self.set_h(ORDER_LEN, self.h(ORDER_LEN) + 1);
        self.set_h(BYTES, self.h(BYTES) + f.size as u64);
    }

    fn oldest(&self) -> Option<Finished> {
        if self.h(ORDER_LEN) == 0 {
            return None;
        }
        let i = self.h(ORDER_START) as usize;
        Some(Finished {
            key: (
                (u128::from(self.o(i, O_HI)) << 64) | u128::from(self.o(i, O_LO)),
                self.o(i, O_MSGID),
            ),
            at: self.d.instant(self.o(i, O_AT)),
            size: self.o(i, O_LEN) as usize,
        })
    }

    fn pop(&mut self) {
        if self.h(ORDER_LEN) == 0 {
            return;
        }
        let cap = self.d.order.len() / ITEM;
        let i = self.h(ORDER_START) as usize;
        self.set_h(BYTES, self.h(BYTES).saturating_sub(self.o(i, O_LEN)));
        self.set_h(ORDER_START, ((i + 1) % cap) as u64);
        self.set_h(ORDER_LEN, self.h(ORDER_LEN) - 1);
    }

    fn finished(&self) -> usize {
        self.h(ORDER_LEN) as usize
    }

    fn bytes(&self) -> usize {
        self.h(BYTES) as usize
    }

    fn waiter(&self, owner: &u64) -> Option<()> {
        self.d.control.alive(*owner).then_some(())
    }

    fn is_mine(&self, owner: &u64) -> bool {
        *owner == self.d.owner
    }
}

impl Table<'_> {
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

    /// Where the oldest finished answer is in the arena.
    fn oldest_pos(&self) -> Option<u64> {
        (self.h(ORDER_LEN) > 0).then(|| self.o(self.h(ORDER_START) as usize, O_POS))
    }

    /// Remove `key`'s answer if it is still the one at `region` (a reader found it
    /// overrun).
    fn forget(&mut self, key: DedupKey, region: Region) {
        if let Some(Slot::Done { answer, .. }) = self.get(key) {
            if answer == region {
                self.remove(key);
            }
        }
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

    /// A new running entry for `key` in the empty bucket `b` (its state is written by
    /// the caller).
    fn insert(&self, b: usize, key: DedupKey) {
        self.set_b(b, B_HI, (key.0 >> 64) as u64);
        self.set_b(b, B_LO, key.0 as u64);
        self.set_b(b, B_MSGID, key.1);
        self.set_b(b, B_STATE, RUNNING);
        self.set_h(COUNT, self.h(COUNT) + 1);
    }

    /// Backward-shift deletion: later entries of the probe run move up, so lookups never
    /// need tombstones.
    fn remove_at(&self, mut hole: usize) {
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

    /// Forget everything (after a worker died holding the lock). HEAD stays: copies in
    /// flight check against it.
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

    fn control() -> Control {
        let control = Control::new().unwrap();
        control.occupy(0, std::process::id());
        control
    }

    /// This process in slot 0.
    fn cache(config: DedupConfig) -> SharedDedup {
        SharedDedup::new(config, control())
            .unwrap()
            .for_worker(0, std::process::id())
    }

    /// The rules' suite, through the shared store's own paths.
    mod suite {
        use super::*;

        impl easyrpc_proto::dedup::SuiteCache for SharedDedup {
            fn begin(&self, key: DedupKey, now: Instant) -> Begin<(), Vec<u8>> {
                let mut pending = || -> Pending { unreachable!("the shared store keeps no channel") };
                match Store::begin(self, key, now, &mut pending) {
                    Begin::Run => Begin::Run,
                    Begin::Wait(_) => Begin::Wait(()),
                    Begin::Cached(v) => Begin::Cached(v.to_vec()),
                }
            }

            fn complete(&self, key: DedupKey, value: &[u8], now: Instant) {
                Store::complete(self, key, Bytes::copy_from_slice(value), now);
            }

            fn abandon(&self, key: DedupKey) {
                Store::abandon(self, key);
            }

            fn evict(&self, now: Instant) {
                Store::evict(self, now);
            }

            fn len(&self) -> usize {
                Store::len(self)
            }

            fn bytes(&self) -> usize {
                self.header[BYTES].load(Relaxed) as usize
            }
        }

        easyrpc_proto::dedup_suite!(super::cache);
    }

    #[test]
    fn a_waiter_peeks_at_the_running_call() {
        let c = cache(DedupConfig::default());
        let t0 = Instant::now();
        let mut none = || -> Pending { unreachable!() };
        assert!(matches!(c.begin((1, 1), t0, &mut none), Begin::Run));
        assert!(matches!(c.begin((1, 1), t0, &mut none), Begin::Wait(Wait::Poll)));
        assert!(matches!(c.peek((1, 1)), Peek::Running));
        c.complete((1, 1), Bytes::from_static(b"answer"), t0);
        assert!(matches!(c.peek((1, 1)), Peek::Done(b) if &b[..] == b"answer"));
        assert!(matches!(c.begin((2, 1), t0, &mut none), Begin::Run));
        c.abandon((2, 1));
        assert!(matches!(c.peek((2, 1)), Peek::Gone));
    }

    #[test]
    fn answers_wrap_around_the_ring_intact() {
        let mut config = DedupConfig::default();
        config.max_bytes = 1000;
        config.max_entries = 10;
        let c = cache(config);
        let t0 = Instant::now();
        let mut none = || -> Pending { unreachable!() };
        for i in 0..2000u64 {
            let answer: Vec<u8> = (0..(i % 97) as u8).map(|b| b ^ i as u8).collect();
            assert!(matches!(c.begin((3, i), t0, &mut none), Begin::Run));
            c.complete((3, i), Bytes::from(answer.clone()), t0);
            assert!(
                matches!(c.peek((3, i)), Peek::Done(b) if b[..] == answer[..]),
                "{i}"
            );
        }
        assert!(c.header[HEAD].load(Relaxed) > 10 * c.ring(), "the ring wrapped");
    }

    #[test]
    fn a_dead_owner_abandons_and_a_dead_lock_holder_clears() {
        let shared = SharedDedup::new(DedupConfig::default(), control()).unwrap();
        let c = shared.for_worker(0, std::process::id());
        // Slot 3's process is gone (never occupied).
        let dead = shared.for_worker(3, 1);
        let t0 = Instant::now();
        let mut none = || -> Pending { unreachable!() };
        assert!(matches!(dead.begin((9, 9), t0, &mut none), Begin::Run));
        assert!(matches!(c.peek((9, 9)), Peek::Gone));
        assert!(matches!(c.begin((9, 9), t0, &mut none), Begin::Run));
        c.complete((9, 9), Bytes::from_static(b"x"), t0);
        // Slot 3 dies holding the lock.
        c.lock.0.store(4, Relaxed);
        assert!(c.reclaim(3));
        assert!(matches!(c.begin((9, 9), t0, &mut none), Begin::Run), "cleared");
    }

    #[test]
    fn an_overrun_answer_reads_as_evicted() {
        let mut config = DedupConfig::default();
        config.max_bytes = 64;
        let c = cache(config);
        let t0 = Instant::now();
        let mut none = || -> Pending { unreachable!() };
        assert!(matches!(c.begin((1, 1), t0, &mut none), Begin::Run));
        c.complete((1, 1), Bytes::from_static(&[1; 16]), t0);
        // A reservation beyond the ring's length past it (a completion racing with this
        // reader) overruns it.
        c.header[HEAD].fetch_add(c.ring(), Relaxed);
        assert!(matches!(c.peek((1, 1)), Peek::Gone));
        assert!(matches!(c.begin((1, 1), t0, &mut none), Begin::Run));
    }

    #[test]
    fn shared_flow_counts_every_slot() {
        let f = SharedFlow::new(3).unwrap();
        let (s0, s1) = (f.for_slot(0), f.for_slot(1));
        let a = s0.try_acquire().unwrap();
        let b = s1.try_acquire().unwrap();
        let c = s1.try_acquire().unwrap();
        assert!(s0.try_acquire().is_none());
        drop(a);
        let d = s0.try_acquire().unwrap();
        assert!(s1.try_acquire().is_none());
        // Slot 1 dies holding two permits.
        std::mem::forget((b, c));
        assert_eq!(f.reclaim(1), 2);
        let _e = s0.try_acquire().unwrap();
        let _g = s0.try_acquire().unwrap();
        assert!(s0.try_acquire().is_none());
        drop(d);
    }

    #[test]
    fn a_contended_lock_sleeps_and_is_handed_over() {
        let f = SharedFlow::new(1).unwrap();
        let guard = f.lock.lock(0);
        let waiter = {
            let f = f.clone();
            std::thread::spawn(move || {
                let _g = f.lock.lock(1);
            })
        };
        // The waiter flags the word once it sleeps; wait (bounded) for that.
        let start = Instant::now();
        while f.lock.0.load(Relaxed) & WAITERS == 0 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the waiter never slept"
            );
            std::hint::spin_loop();
        }
        drop(guard);
        waiter.join().unwrap();
        assert_eq!(f.lock.0.load(Relaxed), 0);
    }
}
