//! Streams on the server: a function's result stream, sent as `rpc.item`s under the credit
//! the client grants, and a function's argument stream ([`Streaming`]), received under the
//! credit the server grants (the wire is in `easyrpc_proto::stream`).
//!
//! Each connection whose hello agreed streams has one `Hub`: the calls' streams by
//! msgid, and the bytes they queue for the connection (items, credit), which its task
//! writes before any response (so a stream's items always precede its end). A stream
//! waits for credit without holding anything else up: other calls on the connection go
//! on.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::{poll_fn, Future};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use easyrpc_proto::stream::{encode_credit, encode_item, Window};
use easyrpc_proto::{Codec, ErrorCode, ServerError, StreamMessage, Transmit};
use futures_util::{FutureExt, Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::context::Call;
use crate::method::Reply;

/// The streams of one connection.
pub(crate) struct Hub {
    codec: Codec,
    /// Bytes are waiting in `state.out`: the connection looks without locking.
    pending: AtomicBool,
    /// The streams open (result and argument streams).
    active: AtomicUsize,
    state: Mutex<HubState>,
}

#[derive(Default)]
struct HubState {
    /// Items and credit for the connection to write.
    out: Vec<u8>,
    /// The connection's task, woken when `out` fills from elsewhere.
    task: Option<Waker>,
    /// No more input will come: argument streams fail, result streams stop at the end of
    /// their credit.
    closed: bool,
    /// Result streams by msgid: the credit the client granted and not used yet.
    sending: HashMap<u64, Sending>,
    /// Argument streams by msgid.
    receiving: HashMap<u64, Receiving>,
}

struct Sending {
    credit: u64,
    waker: Option<Waker>,
}

struct Receiving {
    items: VecDeque<Vec<u8>>,
    /// How many more items the client may send (granted and not received).
    allowed: u64,
    /// The stream ended: `Ok` normally, `Err` with the client's error or a violation.
    end: Option<Result<(), ServerError>>,
    waker: Option<Waker>,
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("codec", &self.codec)
            .finish_non_exhaustive()
    }
}

impl Hub {
    pub(crate) fn new(codec: Codec) -> Arc<Hub> {
        Arc::new(Hub {
            codec,
            pending: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            state: Mutex::new(HubState::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        // A panic while holding it leaves nothing half-done that matters: go on.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes were queued: have the connection write them.
    fn queued(&self, st: &mut HubState) {
        self.pending.store(true, Ordering::Release);
        if let Some(task) = &st.task {
            task.wake_by_ref();
        }
    }

    /// Whether bytes wait to be written (cheap: no lock).
    #[inline]
    pub(crate) fn has_pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// Whether streams are open: the connection's task is to be known, to be woken.
    #[inline]
    pub(crate) fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire) > 0
    }

    /// Move the queued bytes to the connection's write buffer.
    pub(crate) fn drain(&self, tx: &mut Transmit<'_>) {
        let mut st = self.lock();
        self.pending.store(false, Ordering::Release);
        tx.encoded(&st.out);
        st.out.clear();
        if st.out.capacity() > 256 * 1024 {
            st.out = Vec::new();
        }
    }

    /// The connection's task, to wake when bytes are queued from elsewhere.
    pub(crate) fn set_task(&self, waker: &Waker) {
        let mut st = self.lock();
        if st.task.as_ref().is_none_or(|w| !w.will_wake(waker)) {
            st.task = Some(waker.clone());
        }
    }

    /// A stream message from the client. Returns a complaint to log, if any.
    pub(crate) fn handle(&self, message: StreamMessage<'_>) -> Option<String> {
        let mut st = self.lock();
        match message {
            StreamMessage::Credit { msgid, n } => {
                if let Some(s) = st.sending.get_mut(&msgid) {
                    s.credit = s.credit.saturating_add(n);
                    if let Some(w) = s.waker.take() {
                        w.wake();
                    }
                }
                None
            }
            StreamMessage::Item { msgid, item } => {
                let r = st.receiving.get_mut(&msgid)?;
                if r.end.is_some() {
                    return None;
                }
                let complaint = if r.allowed == 0 {
                    r.end = Some(Err(ServerError::new(
                        ErrorCode::MalformedMessage,
                        "the client sent more items than it was granted credit for",
                    )));
                    r.items.clear();
                    Some(format!(
                        "call {msgid}: items past the credit granted; its stream is ended"
                    ))
                } else {
                    r.allowed -= 1;
                    r.items.push_back(item.to_vec());
                    None
                };
                if let Some(w) = r.waker.take() {
                    w.wake();
                }
                complaint
            }
            StreamMessage::End { msgid, error } => {
                if let Some(r) = st.receiving.get_mut(&msgid) {
                    if r.end.is_none() {
                        r.end = Some(error.map_or(Ok(()), Err));
                    }
                    if let Some(w) = r.waker.take() {
                        w.wake();
                    }
                }
                None
            }
            _ => None,
        }
    }

    /// No more input will come (end of input, or the connection is gone): argument streams
    /// not ended fail, and result streams end once their credit is used up. Every stream is
    /// woken to see it.
    pub(crate) fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        st.task = None;
        for s in st.sending.values_mut() {
            if let Some(w) = s.waker.take() {
                w.wake();
            }
        }
        for r in st.receiving.values_mut() {
            if let Some(w) = r.waker.take() {
                w.wake();
            }
        }
    }
}

/// The hub and msgid of a call, when its connection agreed streams; the error for a caller
/// that cannot stream otherwise.
fn stream_of(call: &Call<'_>) -> Result<(Arc<Hub>, u64), ServerError> {
    let (conn, msgid) = match call.context {
        Some(ctx) => (ctx.conn_info(), ctx.msgid()),
        None => (call.parts.conn, call.parts.msgid()),
    };
    match (&conn.streams, msgid) {
        (Some(hub), Some(msgid)) => Ok((hub.clone(), msgid)),
        _ => Err(ServerError::new(
            ErrorCode::StreamingMethod,
            format!(
                "`{}` is a streaming method: call it with a request from a client whose hello \
                 agreed the streams feature (easyrpc's clients do); a plain MessagePack-RPC \
                 call or a notification cannot stream",
                call.method
            ),
        )),
    }
}

/// The result stream of a call, registered at dispatch: [`StreamOut::send`] drives a
/// stream's items out under the client's credit and ends with the call's reply.
#[doc(hidden)]
pub struct StreamOut {
    hub: Arc<Hub>,
    msgid: u64,
}

impl fmt::Debug for StreamOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamOut").field("msgid", &self.msgid).finish()
    }
}

impl StreamOut {
    /// Register the result stream of `call`.
    ///
    /// # Errors
    ///
    /// [`ErrorCode::StreamingMethod`] when the caller cannot stream (a plain peer).
    pub fn open(call: &Call<'_>) -> Result<StreamOut, ServerError> {
        let (hub, msgid) = stream_of(call)?;
        hub.lock().sending.insert(
            msgid,
            Sending {
                credit: 0,
                waker: None,
            },
        );
        hub.active.fetch_add(1, Ordering::AcqRel);
        Ok(StreamOut { hub, msgid })
    }

    /// Wait until the client has granted credit, and take all of it; `None` when the
    /// connection is gone (no credit can come).
    async fn credit(&self) -> Option<u64> {
        poll_fn(|cx| {
            let mut st = self.hub.lock();
            let closed = st.closed;
            let Some(s) = st.sending.get_mut(&self.msgid) else {
                return Poll::Ready(None);
            };
            if s.credit > 0 {
                return Poll::Ready(Some(std::mem::take(&mut s.credit)));
            }
            if closed {
                return Poll::Ready(None);
            }
            s.waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Hand the items encoded in `local` to the connection.
    fn flush(&self, local: &mut Vec<u8>) {
        if local.is_empty() {
            return;
        }
        let mut st = self.hub.lock();
        st.out.extend_from_slice(local);
        local.clear();
        self.hub.queued(&mut st);
    }

    /// Send every item of `items`, each once the client has granted credit for it (an item
    /// is not even taken from `items` before then), and answer the call: `nil` at its end,
    /// or the first error item's error. Items ready one after another are encoded together
    /// and handed to the connection at once (up to 64 KiB at a time).
    pub async fn send<S, T>(self, items: S) -> Reply
    where
        S: Stream<Item = Result<T, ServerError>> + Send,
        T: Serialize + Send,
    {
        let mut items = std::pin::pin!(items);
        let mut local = Vec::new();
        let mut credit = 0u64;
        let end = loop {
            if credit == 0 {
                self.flush(&mut local);
                match self.credit().await {
                    Some(n) => credit = n,
                    None => {
                        break Reply::err(ServerError::new(ErrorCode::Internal, "the connection is gone"))
                    }
                }
            }
            let next = match items.next().now_or_never() {
                Some(next) => next,
                None => {
                    // Not ready: what is encoded goes out while it waits.
                    self.flush(&mut local);
                    items.next().await
                }
            };
            match next {
                None => break Reply::ok(()),
                Some(Err(e)) => break Reply::err(e),
                Some(Ok(item)) => {
                    if let Err(e) = encode_item(self.hub.codec, &mut local, self.msgid, &item) {
                        break Reply::err(ServerError::new(
                            ErrorCode::Internal,
                            format!("a stream item could not be encoded: {e}"),
                        ));
                    }
                    credit -= 1;
                    if local.len() >= 64 * 1024 {
                        self.flush(&mut local);
                    }
                }
            }
        };
        self.flush(&mut local);
        end
    }
}

impl Drop for StreamOut {
    fn drop(&mut self) {
        self.hub.lock().sending.remove(&self.msgid);
        self.hub.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A stream of items a function receives from its caller: an argument of type
/// `Streaming<T>` (anywhere in the list; it is not among the wire arguments). Items come
/// as the client sends them, under the credit the server grants (64 items at first, then
/// about 1 MiB of items, between 16 and 4096 of them: see `easyrpc_proto::stream::Window`):
/// a function that reads slowly holds the client back, not the server's memory.
///
/// It is a [`Stream`] of `Result<T, ServerError>` for async functions; sync ones (which
/// run on the blocking pool, where waiting is allowed) read it with
/// [`Streaming::blocking_iter`] or [`Streaming::blocking_next`].
/// It ends when the client ends it; an item that does not decode as a `T`, a client that
/// ends with an error, or a connection that drops gives one `Err` and then the end.
///
/// ```
/// use easyrpc_server::{Method, Streaming};
/// use futures_util::StreamExt;
///
/// // The sum of every number the client sends. With `#[register]`:
/// // `async fn sum(numbers: Streaming<i64>) -> i64`.
/// let sum = Method::upload_fn("sum", |(): (), mut numbers: Streaming<i64>| async move {
///     let mut total = 0;
///     while let Some(Ok(n)) = numbers.next().await {
///         total += n;
///     }
///     total
/// });
/// ```
pub struct Streaming<T> {
    hub: Arc<Hub>,
    msgid: u64,
    /// The credit to grant as items are taken.
    window: Window,
    done: bool,
    _item: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for Streaming<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Streaming")
            .field("msgid", &self.msgid)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<T> Streaming<T> {
    /// Open the argument stream of `call`, granting the client its first credit.
    ///
    /// # Errors
    ///
    /// [`ErrorCode::StreamingMethod`] when the caller cannot stream (a plain peer).
    #[doc(hidden)]
    pub fn open(call: &Call<'_>) -> Result<Streaming<T>, ServerError> {
        let (hub, msgid) = stream_of(call)?;
        let window = Window::new();
        let initial = window.initial();
        {
            let mut st = hub.lock();
            st.receiving.insert(
                msgid,
                Receiving {
                    items: VecDeque::new(),
                    allowed: initial,
                    end: None,
                    waker: None,
                },
            );
            encode_credit(hub.codec, &mut st.out, msgid, initial);
            hub.queued(&mut st);
        }
        hub.active.fetch_add(1, Ordering::AcqRel);
        Ok(Streaming {
            hub,
            msgid,
            window,
            done: false,
            _item: PhantomData,
        })
    }
}

impl<T: DeserializeOwned> Streaming<T> {
    fn poll_item(&mut self, cx: Option<&mut Context<'_>>) -> Poll<Option<Result<T, ServerError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let mut st = self.hub.lock();
        let closed = st.closed;
        let Some(r) = st.receiving.get_mut(&self.msgid) else {
            self.done = true;
            return Poll::Ready(None);
        };
        if let Some(bytes) = r.items.pop_front() {
            if let Some(grant) = self.window.take(bytes.len()) {
                r.allowed += grant;
                encode_credit(self.hub.codec, &mut st.out, self.msgid, grant);
                self.hub.queued(&mut st);
            }
            drop(st);
            return Poll::Ready(Some(self.hub.codec.decode::<T>(&bytes).map_err(|e| {
                self.done = true;
                ServerError::new(
                    ErrorCode::InvalidParams,
                    format!("a stream item is not a {}: {e}", std::any::type_name::<T>()),
                )
            })));
        }
        if let Some(end) = r.end.take() {
            self.done = true;
            return Poll::Ready(end.err().map(Err));
        }
        if closed {
            self.done = true;
            return Poll::Ready(Some(Err(ServerError::new(
                ErrorCode::Internal,
                "the connection closed before the stream ended",
            ))));
        }
        if let Some(cx) = cx {
            r.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl<T: DeserializeOwned> Stream for Streaming<T> {
    type Item = Result<T, ServerError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_item(Some(cx))
    }
}

impl<T: DeserializeOwned> Streaming<T> {
    /// The next item, waiting for it on this thread: for sync functions, which run on the
    /// blocking pool (never call it in async code: it blocks the runtime's thread).
    pub fn blocking_next(&mut self) -> Option<Result<T, ServerError>> {
        let thread = std::thread::current();
        let waker = Waker::from(Arc::new(ThreadWaker(thread)));
        let mut cx = Context::from_waker(&waker);
        loop {
            match self.poll_item(Some(&mut cx)) {
                Poll::Ready(item) => return item,
                Poll::Pending => std::thread::park(),
            }
        }
    }

    /// The items as an [`Iterator`] that waits for each ([`Streaming::blocking_next`]): for
    /// sync functions.
    pub fn blocking_iter(&mut self) -> impl Iterator<Item = Result<T, ServerError>> + '_ {
        std::iter::from_fn(|| self.blocking_next())
    }
}

struct ThreadWaker(std::thread::Thread);

impl std::task::Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

impl<T> Drop for Streaming<T> {
    fn drop(&mut self) {
        // Later items are dropped as they come (the client stops at its credit).
        self.hub.lock().receiving.remove(&self.msgid);
        self.hub.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The items of a sync function's iterator, produced on the blocking pool and handed over
/// through a channel of 16 items (the iterator waits while it is full, holding its
/// blocking thread). A panic in the function or its iterator ends the stream with
/// [`ErrorCode::HandlerPanicked`].
pub(crate) fn from_iter<I, T>(
    name: Arc<str>,
    make: impl FnOnce() -> I + Send + 'static,
) -> impl Stream<Item = Result<T, ServerError>> + Send
where
    I: IntoIterator<Item = Result<T, ServerError>>,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<T, ServerError>>(16);
    tokio::task::spawn_blocking(move || {
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for item in make() {
                let stop = item.is_err();
                // An error ends the stream; so does a receiver that is gone (the call was
                // cancelled or the connection closed).
                if tx.blocking_send(item).is_err() || stop {
                    return;
                }
            }
        }));
        if let Err(p) = run {
            let reply = crate::blocking::panicked(&name, &*p);
            if let Some(e) = reply.error() {
                let _ = tx.blocking_send(Err(e.clone()));
            }
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|i| (i, rx)) })
}

/// A stream of items that cannot fail, as the stream [`StreamOut::send`] takes.
#[doc(hidden)]
pub fn ok_items<S: Stream<Item = T>, T>(items: S) -> impl Stream<Item = Result<T, ServerError>> {
    items.map(Ok)
}

/// A stream of `Result` items, as the stream [`StreamOut::send`] takes: an `Err` becomes a
/// [`ErrorCode::HandlerError`] with its message, which ends the stream.
#[doc(hidden)]
pub fn try_items<S, T, E>(items: S) -> impl Stream<Item = Result<T, ServerError>>
where
    S: Stream<Item = Result<T, E>>,
    E: fmt::Display,
{
    items.map(|r| r.map_err(|e| ServerError::new(ErrorCode::HandlerError, e.to_string())))
}

/// The stream of a function's future that resolves to a stream (an `async fn` returning
/// `impl Stream`).
#[doc(hidden)]
pub fn flatten<F, S>(fut: F) -> impl Stream<Item = S::Item>
where
    F: Future<Output = S>,
    S: Stream,
{
    futures_util::stream::once(fut).flatten()
}

/// The items of a sync function's iterator, produced on the blocking pool (see
/// `from_iter`); `ok` says whether its items are plain values or `Result`s.
#[doc(hidden)]
pub fn iter_items<I, T>(
    name: &str,
    make: impl FnOnce() -> I + Send + 'static,
) -> impl Stream<Item = Result<T, ServerError>> + Send
where
    I: IntoIterator<Item = Result<T, ServerError>>,
    T: Send + 'static,
{
    from_iter(Arc::from(name), make)
}
