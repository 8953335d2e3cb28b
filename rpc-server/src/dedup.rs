//! The dedup cache as the server uses it: in this process, or (prefork) shared by every
//! worker.
//!
//! In prefork mode a client that reconnects may be hashed by the kernel to another worker
//! than the one that ran its call, so every worker must see every answer. The cache lives
//! in shared memory ([`crate::prefork::SharedDedup`]) rather than each session being routed
//! back to one owner worker (fd passing after the hello) because an owner can go away:
//! killed, retired by TTOU, or replaced by a rolling restart (HUP), and with it every
//! answer it held. A shared cache keeps them across all of that; only a call running in a
//! worker that dies is lost (it is run again on retry, as after `abandon`). The price: an
//! answer is copied into and out of shared memory under a cross-process lock, and a retry
//! waiting on a call running elsewhere polls for its answer instead of being woken.

use std::time::Instant;

use bytes::Bytes;
use rpc_proto::Begin;
use tokio::sync::watch;

use crate::DedupMap;

/// A call key: the client's session id and the call's msgid.
pub(crate) type DedupKey = (u128, u64);

/// The server's dedup cache.
#[derive(Debug)]
pub(crate) enum Dedup {
    /// One process: waiters hold a watch receiver.
    Local(DedupMap),
    /// Every prefork worker at once.
    #[cfg(unix)]
    Shared(crate::prefork::SharedDedup),
}

/// A retry waiting for a running call's answer.
pub(crate) enum Waiter {
    Local(watch::Receiver<Option<Bytes>>),
    #[cfg(unix)]
    Shared(crate::prefork::SharedDedup, DedupKey),
}

impl Dedup {
    /// As [`rpc_proto::DedupCache::begin`]. `pending` makes the channel this process's
    /// waiters of a call that is `Run` here listen on.
    pub(crate) fn begin(
        &self,
        key: DedupKey,
        now: Instant,
        pending: impl FnOnce() -> watch::Receiver<Option<Bytes>>,
    ) -> Begin<Waiter, Bytes> {
        match self {
            Dedup::Local(cache) => match cache.begin(key, now, pending) {
                Begin::Run => Begin::Run,
                Begin::Wait(rx) => Begin::Wait(Waiter::Local(rx)),
                Begin::Cached(v) => Begin::Cached(v),
            },
            #[cfg(unix)]
            Dedup::Shared(cache) => match cache.begin(key, now) {
                Begin::Run => {
                    // The connection that runs it waits on this channel.
                    let _ = pending();
                    Begin::Run
                }
                Begin::Wait(()) => Begin::Wait(Waiter::Shared(cache.clone(), key)),
                Begin::Cached(v) => Begin::Cached(v),
            },
        }
    }

    pub(crate) fn complete(&self, key: DedupKey, value: Bytes, size: usize, now: Instant) {
        match self {
            Dedup::Local(cache) => cache.complete(key, value, size, now),
            #[cfg(unix)]
            Dedup::Shared(cache) => cache.complete(key, &value, now),
        }
    }

    pub(crate) fn abandon(&self, key: DedupKey) {
        match self {
            Dedup::Local(cache) => cache.abandon(key),
            #[cfg(unix)]
            Dedup::Shared(cache) => cache.abandon(key),
        }
    }

    pub(crate) fn evict(&self, now: Instant) {
        match self {
            Dedup::Local(cache) => cache.evict(now),
            #[cfg(unix)]
            Dedup::Shared(cache) => cache.evict(now),
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Dedup::Local(cache) => cache.len(),
            #[cfg(unix)]
            Dedup::Shared(cache) => cache.len(),
        }
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
            #[cfg(unix)]
            Waiter::Shared(cache, key) => {
                use crate::prefork::Peek;
                // No cross-process wake-up: poll, 1 ms doubling to 20 ms.
                let mut pause = std::time::Duration::from_millis(1);
                loop {
                    match cache.peek(key) {
                        Peek::Done(v) => return Some(v),
                        Peek::Gone => return None,
                        Peek::Running => {}
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_millis(20));
                }
            }
        }
    }
}
