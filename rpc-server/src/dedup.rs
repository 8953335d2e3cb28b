//! The dedup cache as the server uses it ("unstable network" mode).
//!
//! The rules are [`easyrpc_proto::dedup::DedupRules`]; here is what the server keeps them in.
//! A [`Store`] is what the server defines: by default a [`LocalStore`], a map in this
//! process whose waiters are woken by a channel. A deployment mode may supply another
//! when it builds a server: prefork keeps one table in memory shared by every worker,
//! because a client that reconnects may be hashed by the kernel to another worker than
//! the one that ran its call (see `prefork/shm.rs`). Connections only see [`Dedup`].
//!
//! Every `now` comes from tokio's clock (`tokio::time::Instant::now().into_std()`), the
//! clock of deadlines too, so that tests can pause it.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use easyrpc_proto::{Begin, DedupCache, DedupConfig};
use tokio::sync::watch;

/// A call key: the client's session id and the call's msgid.
pub(crate) type DedupKey = easyrpc_proto::dedup::DedupKey;

/// What this process's waiters of a call that runs here listen on: the channel the
/// running call sends its encoded answer on.
pub(crate) type Pending = watch::Receiver<Option<Bytes>>;

/// How a retry of a running call waits, as a [`Store`] says.
#[derive(Debug)]
pub(crate) enum Wait {
    /// On the channel of a call running in this process.
    Channel(Pending),
    /// By asking the store ([`Store::peek`]) until the answer is there: the call runs
    /// in another process, and processes share no wake-up. (Prefork's shared store is
    /// the one that waits this way.)
    #[cfg_attr(not(all(unix, feature = "prefork")), allow(dead_code))]
    Poll,
}

/// What a retry waiting by [`Wait::Poll`] sees.
#[derive(Debug)]
#[cfg_attr(not(all(unix, feature = "prefork")), allow(dead_code))]
pub(crate) enum Peek {
    /// The answer.
    Done(Bytes),
    /// Still running.
    Running,
    /// Abandoned, evicted, or its process died.
    Gone,
}

/// Where the server keeps the dedup cache: answers are whole encoded response frames.
pub(crate) trait Store: fmt::Debug + Send + Sync + 'static {
    /// As [`easyrpc_proto::dedup::DedupRules::begin`]. `pending` makes the channel this
    /// process's waiters of a call that is `Run` here listen on.
    fn begin(&self, key: DedupKey, now: Instant, pending: &mut dyn FnMut() -> Pending) -> Begin<Wait, Bytes>;

    /// Store the answer of a call that was `Run` here.
    fn complete(&self, key: DedupKey, value: Bytes, now: Instant);

    /// Forget a call started here that will not complete.
    fn abandon(&self, key: DedupKey);

    /// Drop the expired answers.
    fn evict(&self, now: Instant);

    /// Entries held, running ones included.
    fn len(&self) -> usize;

    /// For a retry that waits by [`Wait::Poll`]: where the call is. A store that never
    /// says `Poll` need not answer (it says `Gone`).
    fn peek(&self, key: DedupKey) -> Peek {
        let _ = key;
        Peek::Gone
    }
}

/// The store of one process: [`DedupCache`], whose running entries hold the channel
/// their waiters listen on.
#[derive(Debug)]
pub(crate) struct LocalStore(DedupCache<Pending, Bytes>);

impl LocalStore {
    /// An empty store with these bounds.
    pub(crate) fn new(config: DedupConfig) -> LocalStore {
        LocalStore(DedupCache::new(config))
    }
}

impl Store for LocalStore {
    fn begin(&self, key: DedupKey, now: Instant, pending: &mut dyn FnMut() -> Pending) -> Begin<Wait, Bytes> {
        match self.0.begin(key, now, pending) {
            Begin::Run => Begin::Run,
            Begin::Wait(rx) => Begin::Wait(Wait::Channel(rx)),
            Begin::Cached(v) => Begin::Cached(v),
        }
    }

    fn complete(&self, key: DedupKey, value: Bytes, now: Instant) {
        let size = value.len();
        self.0.complete(key, value, size, now);
    }

    fn abandon(&self, key: DedupKey) {
        self.0.abandon(key);
    }

    fn evict(&self, now: Instant) {
        self.0.evict(now);
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

/// The server's dedup cache, over whichever [`Store`] it was built with.
#[derive(Debug, Clone)]
pub(crate) struct Dedup {
    store: Arc<dyn Store>,
}

/// A retry waiting for a running call's answer.
pub(crate) enum Waiter {
    /// The call runs in this process: its channel.
    Local(Pending),
    /// The call runs elsewhere: ask the store.
    Poll(Arc<dyn Store>, DedupKey),
}

impl Dedup {
    /// The cache over `store`.
    pub(crate) fn new(store: Arc<dyn Store>) -> Dedup {
        Dedup { store }
    }

    /// A cache in this process with these bounds.
    pub(crate) fn local(config: DedupConfig) -> Dedup {
        Dedup::new(Arc::new(LocalStore::new(config)))
    }

    /// Look `key` up (see [`easyrpc_proto::dedup::DedupRules::begin`]). `pending` makes the
    /// channel this process's waiters of a call that is `Run` here listen on; it is
    /// called whenever the answer is `Run`.
    pub(crate) fn begin(
        &self,
        key: DedupKey,
        now: Instant,
        pending: impl FnOnce() -> Pending,
    ) -> Begin<Waiter, Bytes> {
        let mut pending = Some(pending);
        // Unwrap: a store asks for the channel at most once per `begin`.
        let begin = self.store.begin(key, now, &mut || (pending.take().unwrap())());
        match begin {
            Begin::Run => {
                // A store that keeps no channel (shared memory) did not ask for one; the
                // connection that runs the call still waits on it.
                if let Some(make) = pending.take() {
                    drop(make());
                }
                Begin::Run
            }
            Begin::Wait(Wait::Channel(rx)) => Begin::Wait(Waiter::Local(rx)),
            Begin::Wait(Wait::Poll) => Begin::Wait(Waiter::Poll(self.store.clone(), key)),
            Begin::Cached(v) => Begin::Cached(v),
        }
    }

    /// Store the answer of a call that was `Run` here. `size` is the answer's length
    /// (kept for the callers written against the map; the store measures it itself).
    pub(crate) fn complete(&self, key: DedupKey, value: Bytes, size: usize, now: Instant) {
        debug_assert_eq!(size, value.len());
        self.store.complete(key, value, now);
    }

    /// Forget a call started here that will not complete, so that a retry runs it.
    pub(crate) fn abandon(&self, key: DedupKey) {
        self.store.abandon(key);
    }

    /// Drop the expired answers.
    pub(crate) fn evict(&self, now: Instant) {
        self.store.evict(now);
    }

    /// Entries held, running ones included.
    pub(crate) fn len(&self) -> usize {
        self.store.len()
    }
}

impl Waiter {
    /// The answer, or `None` if the call was abandoned (or its process died).
    pub(crate) async fn wait(self) -> Option<Bytes> {
        match self {
            Waiter::Local(mut rx) => {
                let answer = rx.wait_for(Option::is_some).await.ok().and_then(|v| v.clone());
                answer
            }
            Waiter::Poll(store, key) => {
                // No cross-process wake-up: poll, 1 ms doubling to 20 ms.
                let mut pause = Duration::from_millis(1);
                loop {
                    match store.peek(key) {
                        Peek::Done(v) => return Some(v),
                        Peek::Gone => return None,
                        Peek::Running => {}
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
            }
        }
    }
}
