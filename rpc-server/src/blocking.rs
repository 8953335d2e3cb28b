//! The blocking pool and panic capture.
//!
//! Sync handlers run on tokio's blocking pool (`spawn_blocking`) behind a semaphore
//! ([`Config::blocking_threads`](crate::Config::blocking_threads)): tokio warns that "a
//! semaphore or some other synchronization primitive should be used to limit the number
//! of computations executed in parallel". Such work "cannot be aborted": a deadline or a
//! cancellation drops the *reply* of a sync call, never its work, which runs to its end
//! (and keeps its `max_flow` slot until then).
//!
//! A handler that panics, sync or async, answers [`ErrorCode::HandlerPanicked`] and the
//! panic is logged; the connection and the server go on.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::panic::{AssertUnwindSafe, UnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Once;
use std::task::{Context, Poll};

use easyrpc_proto::{ErrorCode, ServerError};
use tokio::sync::Semaphore;

use crate::limits::Permit;
use crate::method::{Reply, ReplyFuture, SyncJob};

/// Where sync handlers run: tokio's blocking pool, at most `threads` at once.
#[derive(Debug, Clone)]
pub(crate) struct BlockingPool {
    slots: Arc<Semaphore>,
}

impl BlockingPool {
    /// A pool running at most `threads` jobs at once (at least one).
    pub(crate) fn new(threads: usize) -> BlockingPool {
        BlockingPool {
            slots: Arc::new(Semaphore::new(threads.clamp(1, Semaphore::MAX_PERMITS))),
        }
    }

    /// Run `job` (of the method `name`) once a slot is free. Its `max_flow` permit, if
    /// any, moves into the job with the pool's slot: both are released when the work
    /// really ends, even if the caller has gone.
    pub(crate) fn run(&self, job: SyncJob, name: &Arc<str>, flow: Option<Permit>) -> ReplyFuture {
        let (name, slots) = (name.clone(), self.slots.clone());
        // The caller's subscriber and span (a call's, when per-call tracing is on): the job
        // runs in them, so its events go where an async handler's do, nested in the call.
        let dispatch = tracing::dispatcher::get_default(Clone::clone);
        let span = tracing::Span::current();
        Box::pin(async move {
            // Unwrap: the semaphore is never closed.
            let slot = slots.acquire_owned().await.unwrap();
            let run = move || {
                let r = tracing::dispatcher::with_default(&dispatch, || {
                    span.in_scope(|| catch_unwind(AssertUnwindSafe(job)))
                });
                drop((slot, flow));
                // Where it panicked was noted on this thread: it travels with the payload.
                r.map_err(|p| (p, PANIC_AT.take()))
            };
            match tokio::task::spawn_blocking(run).await {
                Ok(Ok(reply)) => reply,
                Ok(Err((p, at))) => {
                    PANIC_AT.set(at);
                    panicked(&name, &*p)
                }
                Err(e) => Reply::err(ServerError::new(ErrorCode::Internal, e.to_string())),
            }
        })
    }
}

thread_local! {
    /// This thread runs handlers now: a connection's poll (where async handlers run, each
    /// inside a `catch_unwind`) or a sync handler's job.
    static IN_HANDLER: Cell<bool> = const { Cell::new(false) };
    /// Where the last handler panic on this thread happened, for [`panicked`]'s log line.
    static PANIC_AT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Run `f`, where handlers run, with the panic hook the server installs quiet for this
/// thread: a handler's panic is caught and logged once by [`panicked`], through tracing,
/// with its location, instead of the default hook printing it to stderr as well. Set once
/// per connection wake-up (and per sync job), not per call: per call it cost 37
/// instructions (callgrind, server 1 x 64).
#[inline]
pub(crate) fn handlers_run<R>(f: impl FnOnce() -> R) -> R {
    let outer = IN_HANDLER.replace(true);
    let r = f();
    IN_HANDLER.set(outer);
    r
}

/// A sync job: caught, with the hook quiet ([`handlers_run`]).
fn catch_unwind<R>(f: impl FnOnce() -> R + UnwindSafe) -> std::thread::Result<R> {
    handlers_run(|| std::panic::catch_unwind(f))
}

/// Whether a panic at `file` is the framework's own (a bug to report loudly), not a
/// handler's.
fn is_framework(file: &str) -> bool {
    [
        "rpc-server/src/",
        "rpc-proto/src/",
        "easyrpc-server-",
        "easyrpc-proto-",
    ]
    .iter()
    .any(|p| file.contains(p))
}

/// Install, once per process, a panic hook that leaves handler panics to [`panicked`] and
/// passes every other panic to the hook that was there before (the default one prints it).
pub(crate) fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // The framework's own panics are bugs: always shown by the previous hook.
            let framework = info.location().is_some_and(|l| is_framework(l.file()));
            if IN_HANDLER.get() && !framework {
                let at = info
                    .location()
                    .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
                PANIC_AT.set(at);
                return;
            }
            previous(info);
        }));
    });
}

/// The reply to a handler that panicked with `payload`; the panic is logged, once.
pub(crate) fn panicked(method: &str, payload: &(dyn std::any::Any + Send)) -> Reply {
    let msg = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("<non-string panic payload>");
    let at = PANIC_AT.take().unwrap_or_default();
    tracing::error!(method, panic = msg, at = %at, "handler panicked");
    Reply::err(ServerError::new(
        ErrorCode::HandlerPanicked,
        format!("handler {method} panicked"),
    ))
}

/// An async handler's future, with panics turned into replies and its `max_flow` permit
/// held until it completes or is dropped.
pub(crate) struct Guarded {
    pub(crate) fut: ReplyFuture,
    pub(crate) name: Arc<str>,
    pub(crate) _flow: Option<Permit>,
}

impl Future for Guarded {
    type Output = Reply;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Reply> {
        let this = &mut *self;
        match catch_unwind(AssertUnwindSafe(|| this.fut.as_mut().poll(cx))) {
            Ok(p) => p,
            Err(p) => Poll::Ready(panicked(&this.name, &*p)),
        }
    }
}
