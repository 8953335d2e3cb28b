//! Limits on work, and the typed answer a call gets when one is hit.
//!
//! - `max_flow` (per method): at most N executions at once; call N + 1 is answered
//!   [`ErrorCode::Overloaded`] (at once, or after `max_flow_wait`), never dropped
//!   silently, as tarpc's `MaxRequests` answers "server throttled the request".
//! - `max_connections` is the listener's (see `listener.rs`), the message size the
//!   codec's (`Config::max_message_size`), and the blocking pool's bound `blocking.rs`'s.
//!
//! A [`Limit`] is what the server defines; it makes a semaphore-backed one
//! ([`LocalLimit`]) for each method with `max_flow`. A deployment mode may supply another
//! kind when it builds a server (prefork shares one counter between its processes), so
//! that dispatch never needs to know which kind it holds.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use easyrpc_proto::{ErrorCode, ServerError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::method::Reply;

/// A future returned by [`Limit::acquire_within`].
pub(crate) type Acquire<'a> = Pin<Box<dyn Future<Output = Option<Permit>> + Send + 'a>>;

/// A cap on how many executions run at once (a method's `max_flow`).
///
/// Dispatch holds one as `Arc<dyn Limit>`: a call under `max_flow` pays one indirect call
/// for [`Limit::try_acquire`]; a method without `max_flow` has none and pays nothing.
pub(crate) trait Limit: fmt::Debug + Send + Sync + 'static {
    /// A slot, if one is free now.
    fn try_acquire(&self) -> Option<Permit>;

    /// A slot within `wait`, or `None` once `wait` has passed (tokio's clock).
    fn acquire_within(&self, wait: Duration) -> Acquire<'_>;
}

/// A held slot of a [`Limit`], given back when dropped. It travels with the execution: a
/// sync job keeps it until the job really ends, even if its caller has gone.
#[must_use = "the slot is given back as soon as the permit is dropped"]
pub(crate) struct Permit(Held);

enum Held {
    /// A slot of an in-process semaphore (released by its own `Drop`).
    Semaphore(#[allow(dead_code)] OwnedSemaphorePermit),
    /// A slot counted in a counter that lives as long as the process (for example in
    /// memory shared with other processes): released by decrementing it.
    #[cfg_attr(not(all(unix, feature = "prefork")), allow(dead_code))]
    Counted(&'static AtomicU64),
}

impl Permit {
    /// A slot counted in `counter`, which the caller has just incremented.
    #[cfg_attr(not(all(unix, feature = "prefork")), allow(dead_code))]
    pub(crate) fn counted(counter: &'static AtomicU64) -> Permit {
        Permit(Held::Counted(counter))
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Held::Counted(counter) = self.0 {
            counter.fetch_sub(1, Ordering::Release);
        }
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Held::Semaphore(_) => "Permit(semaphore)",
            Held::Counted(_) => "Permit(counted)",
        })
    }
}

/// `max_flow` in one process: a semaphore, with its fair queue for `max_flow_wait`.
#[derive(Debug)]
pub(crate) struct LocalLimit(Arc<Semaphore>);

impl LocalLimit {
    /// At most `limit` slots at once.
    pub(crate) fn new(limit: usize) -> LocalLimit {
        LocalLimit(Arc::new(Semaphore::new(limit.min(Semaphore::MAX_PERMITS))))
    }
}

impl Limit for LocalLimit {
    fn try_acquire(&self) -> Option<Permit> {
        let permit = self.0.clone().try_acquire_owned().ok()?;
        Some(Permit(Held::Semaphore(permit)))
    }

    fn acquire_within(&self, wait: Duration) -> Acquire<'_> {
        Box::pin(async move {
            // The semaphore is never closed, so `Ok(Err(_))` cannot happen.
            match tokio::time::timeout(wait, self.0.clone().acquire_owned()).await {
                Ok(Ok(permit)) => Some(Permit(Held::Semaphore(permit))),
                _ => None,
            }
        })
    }
}

/// The answer to a call refused by its method's `max_flow`.
pub(crate) fn overloaded(name: &str) -> Reply {
    Reply::err(ServerError::new(
        ErrorCode::Overloaded,
        format!("{name} is at its max_flow limit"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_limit_gives_back_its_slots() {
        let limit = LocalLimit::new(2);
        let a = limit.try_acquire().unwrap();
        let _b = limit.try_acquire().unwrap();
        assert!(limit.try_acquire().is_none());
        drop(a);
        assert!(limit.try_acquire().is_some());
    }

    #[test]
    fn a_counted_permit_decrements_its_counter() {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        COUNTER.fetch_add(1, Ordering::Relaxed);
        let p = Permit::counted(&COUNTER);
        assert_eq!(COUNTER.load(Ordering::Relaxed), 1);
        drop(p);
        assert_eq!(COUNTER.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_a_slot_is_bounded_and_fair() {
        let limit = LocalLimit::new(1);
        let held = limit.try_acquire().unwrap();
        assert!(limit.acquire_within(Duration::from_secs(1)).await.is_none());
        let waiter = limit.acquire_within(Duration::from_secs(5));
        drop(held);
        assert!(waiter.await.is_some());
    }
}
