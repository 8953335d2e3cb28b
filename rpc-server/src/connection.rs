//! One task per connection: read frames, dispatch, coalesce replies, write.
//!
//! The task owns its read and write buffers. Calls that finish on the spot are answered
//! straight into the write buffer; the rest wait in a queue polled by this same task, so
//! no call costs a task spawn or a cross-thread hop unless its handler needs one (sync
//! handlers go to the blocking pool). All replies ready after one read are written with
//! one syscall.
//!
//! Lifecycle: the connection closes when the peer closes (its async calls in flight are
//! cancelled, as after `rpc.cancel`), when no message arrived for the heartbeat timeout
//! while no call was in flight, when the stream is unreadable (after an error reply when
//! the msgid was known), or after the shutdown signal once its calls have finished.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::future::{AbortHandle, Abortable};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use rpc_proto::{
    encode_response_err, encode_response_ok, parse_bincode_request_prefix, parse_request_prefix, Begin,
    Codec, ErrorCode, FrameError, Framer, Hello, Message, ParseError, ServerError,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::dedup::Waiter;
use crate::method::{Reply, ReplyFuture};
use crate::registry::{Dispatch, Slots, CANCEL};
use crate::Shared;

/// Buffers larger than this are given back to the allocator once empty.
const KEEP_BUFFER: usize = 256 * 1024;
const READ_CHUNK: usize = 16 * 1024;
/// The most a message's headers may make us reserve ahead of the bytes that arrived.
const HINT_LIMIT: usize = 1024 * 1024;
/// After an unreadable stream, how long (and how much) to drain before closing, so the
/// peer reads our error reply instead of a reset.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 16 * 1024 * 1024;
/// At shutdown, how long a connection that has sent nothing yet is given for its first
/// request to arrive, so that it is answered rather than closed unread.
const FIRST_REQUEST_AT_SHUTDOWN: Duration = Duration::from_millis(100);

/// What a call in flight ends with.
enum Finished {
    /// A reply to encode (`None` msgid: a notification's, dropped).
    Reply(Option<u64>, Reply),
    /// An answer already encoded (from the dedup cache).
    Encoded(Bytes),
    /// Cancelled by the client: nothing to send.
    Cancelled,
}

/// A call still running.
enum InFlight {
    /// The common case: a handler's future, with the msgid to answer.
    Call { msgid: Option<u64>, fut: ReplyFuture },
    /// Wrapped: with a deadline, abortable, or waiting on the dedup cache.
    Other(Pin<Box<dyn Future<Output = Finished> + Send>>),
}

impl Future for InFlight {
    type Output = Finished;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Finished> {
        match self.get_mut() {
            InFlight::Call { msgid, fut } => fut.as_mut().poll(cx).map(|r| Finished::Reply(*msgid, r)),
            InFlight::Other(f) => f.as_mut().poll(cx),
        }
    }
}

pub(crate) struct Connection {
    shared: Arc<Shared>,
    peer: SocketAddr,
    framer: Framer,
    /// No message has been read yet: a hello may still come.
    first: bool,
    /// The peer said hello: it may send extensions and `rpc.cancel`.
    extended: bool,
    session: Option<u128>,
    /// Stop reading: EOF, idle, or a fatal stream error.
    reading: bool,
    /// Shutdown: answer new requests `ShuttingDown`, finish the rest, close.
    draining: bool,
    /// Close with a lingering drain (after a fatal stream error).
    linger: bool,
    /// Complete messages wait in the read buffer: `process` stopped at the limits.
    held: bool,
    /// When the last complete message arrived or the last call in flight ended: the
    /// heartbeat timeout counts from here.
    last_message: Instant,
    /// The clock, read at most once per batch of messages and only when needed (for
    /// deadlines, and for `last_message`): a read costs about as much as a small call.
    batch_clock: Option<Instant>,
    wbuf: Vec<u8>,
    written: usize,
    /// The size of the last large message read (0 before the first).
    large: usize,
    /// The framer holds a message begun in an earlier read.
    framing: bool,
    inflight: FuturesUnordered<InFlight>,
    /// Abort handles of pending calls, for `rpc.cancel` (only on extended connections).
    aborts: std::collections::HashMap<u64, AbortHandle>,
    /// The boxes this connection's async calls run in, kept from one call to the next.
    slots: Slots,
}

/// Why reading stopped for good.
enum Fatal {
    Frame(FrameError),
    Hello,
}

impl Connection {
    pub(crate) fn new(shared: Arc<Shared>, peer: SocketAddr) -> Connection {
        let framer = Framer::new(Codec::Msgpack, shared.config.max_message_size);
        Connection {
            shared,
            peer,
            framer,
            first: true,
            extended: false,
            session: None,
            reading: true,
            draining: false,
            linger: false,
            held: false,
            last_message: Instant::now(),
            batch_clock: None,
            wbuf: Vec::with_capacity(READ_CHUNK),
            written: 0,
            large: 0,
            framing: false,
            inflight: FuturesUnordered::new(),
            aborts: std::collections::HashMap::new(),
            slots: Slots::default(),
        }
    }

    pub(crate) async fn run(mut self, mut stream: TcpStream, shutdown: CancellationToken) {
        info!(peer = %self.peer, "connection opened");
        let result = self.serve(&mut stream, &shutdown).await;
        // Cancel what is still running (async handlers are dropped here).
        let cancelled = self.inflight.len();
        self.inflight = FuturesUnordered::new();
        if self.linger {
            linger(&mut stream).await;
        }
        match result {
            Ok(()) => info!(peer = %self.peer, cancelled, "connection closed"),
            Err(e) => info!(peer = %self.peer, cancelled, error = %e, "connection closed with an error"),
        }
    }

    async fn serve(&mut self, stream: &mut TcpStream, shutdown: &CancellationToken) -> io::Result<()> {
        let (mut rd, wr) = stream.split();
        let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
        let heartbeat = self.shared.config.heartbeat_timeout;
        let idle = tokio::time::sleep(heartbeat);
        tokio::pin!(idle);
        // One future for the whole connection: a new `cancelled()` per turn of the loop
        // would lock the token's waiter list twice more per wake-up, to register and to
        // deregister.
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        loop {
            if self.reading {
                if let Err(fatal) = self.process(&mut rbuf) {
                    self.reading = false;
                    self.linger = true;
                    match fatal {
                        Fatal::Frame(e) => {
                            warn!(peer = %self.peer, error = %e, "unreadable stream; closing after the replies");
                            if let Some(msgid) = e.msgid() {
                                self.send_error(msgid, &e.to_server_error());
                            }
                        }
                        Fatal::Hello => warn!(peer = %self.peer, "bad hello; closing"),
                    }
                }
            }
            // Collect every call that has finished meanwhile, without waiting.
            if !self.inflight.is_empty() {
                while let Some(Some(done)) = self.inflight.next().now_or_never() {
                    self.finish(done);
                }
                self.restart_idle_clock();
            }
            if self.written < self.wbuf.len() {
                match wr.try_write(&self.wbuf[self.written..]) {
                    Ok(n) => self.written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                if self.written == self.wbuf.len() {
                    self.wbuf.clear();
                    self.written = 0;
                    if self.wbuf.capacity() > KEEP_BUFFER {
                        self.wbuf = Vec::with_capacity(READ_CHUNK);
                    }
                }
            }
            let pending_write = self.written < self.wbuf.len();
            if (!self.reading || self.draining) && self.inflight.is_empty() && !pending_write {
                return Ok(());
            }
            if self.reading && self.held && self.has_room() {
                // Room again for the messages already read: take them before reading more.
                continue;
            }
            let can_read = self.reading && self.has_room();
            if can_read {
                // Room for the rest of a large message in one read, as its headers tell,
                // up to 1 MiB ahead of what has arrived; then doubling.
                // And, between messages when large ones have been coming, room for a whole
                // one: one read rather than a short one, then moving it to make room.
                let between = if rbuf.is_empty() { self.large } else { 0 };
                let hint = self.framer.needed(&rbuf).max(between).min(HINT_LIMIT);
                if rbuf.capacity() - rbuf.len() < (READ_CHUNK / 4).max(hint) {
                    if rbuf.is_empty() && rbuf.capacity() > KEEP_BUFFER {
                        rbuf = BytesMut::with_capacity(READ_CHUNK);
                    } else {
                        rbuf.reserve(READ_CHUNK.max(rbuf.len()).max(hint));
                    }
                }
            }
            tokio::select! {
                biased;
                () = &mut cancelled, if !self.draining => {
                    self.draining = true;
                    // Requests that have arrived already are answered (ShuttingDown, which
                    // clients may retry) rather than reset by the close. A connection that
                    // has sent nothing yet (one taken from the accept queue at shutdown) is
                    // new to the reactor: give its first request a moment to be seen.
                    if can_read {
                        if self.first {
                            let _ = tokio::time::timeout(FIRST_REQUEST_AT_SHUTDOWN, rd.readable()).await;
                        }
                        let _ = rd.try_read_buf(&mut rbuf);
                    }
                    debug!(peer = %self.peer, in_flight = self.inflight.len(), "draining for shutdown");
                }
                Some(done) = self.inflight.next(), if !self.inflight.is_empty() => {
                    self.finish(done);
                    self.restart_idle_clock();
                }
                r = wr.writable(), if pending_write => r?,
                r = rd.read_buf(&mut rbuf), if can_read => {
                    if r? == 0 {
                        // The peer is gone: what it asked for is no longer wanted.
                        self.reading = false;
                        self.inflight = FuturesUnordered::new();
                        if !rbuf.is_empty() {
                            warn!(peer = %self.peer, bytes = rbuf.len(), "connection closed in the middle of a message");
                        }
                    }
                }
                () = &mut idle => {
                    let deadline = self.last_message + heartbeat;
                    if Instant::now() >= deadline && self.inflight.is_empty() {
                        info!(peer = %self.peer, timeout = ?heartbeat, "no message within the heartbeat timeout; closing");
                        return Ok(());
                    }
                    idle.as_mut().reset(deadline.max(Instant::now() + heartbeat / 8));
                }
            }
        }
    }

    /// Handle every complete message in `rbuf`.
    fn process(&mut self, rbuf: &mut BytesMut) -> Result<(), Fatal> {
        if self.first && !rbuf.is_empty() {
            if Hello::is_hello(rbuf) {
                match Hello::decode(rbuf) {
                    Ok(None) => return Ok(()),
                    Ok(Some((hello, n))) => {
                        rbuf.advance(n);
                        self.framer.set_codec(hello.codec);
                        self.extended = true;
                        self.session = hello.session;
                        Hello::new(hello.codec)
                            .with_session(hello.session)
                            .encode(&mut self.wbuf);
                        debug!(peer = %self.peer, codec = ?hello.codec, session = ?hello.session, "hello");
                    }
                    Err(_) => return Err(Fatal::Hello),
                }
            }
            self.first = false;
        }
        self.held = false;
        // Messages are handled in place and the buffer advanced once for the batch.
        let mut at = 0;
        let mut result = Ok(());
        while at < rbuf.len() {
            // The limits hold for messages already read too, not only for reading more.
            if !self.has_room() {
                self.held = true;
                break;
            }
            // A request, the common case, is framed and parsed in one pass; the
            // framer and parser take everything else (and a message begun in an earlier
            // read, which the framer resumes).
            if !self.framing {
                let (buf, max) = (&rbuf[at..], self.framer.max_message_size());
                let parsed = match self.framer.codec() {
                    Codec::Msgpack => parse_request_prefix(buf, max),
                    Codec::Bincode => parse_bincode_request_prefix(buf, max),
                    _ => None,
                };
                if let Some((request, n)) = parsed {
                    self.handle_parsed(Ok(request));
                    if n > READ_CHUNK / 4 {
                        self.large = n.min(HINT_LIMIT);
                    }
                    at += n;
                    continue;
                }
            }
            let n = match self.framer.decode(&rbuf[at..]) {
                Ok(Some(n)) => n,
                Ok(None) => {
                    self.framing = true;
                    break;
                }
                Err(e) => {
                    result = Err(Fatal::Frame(e));
                    break;
                }
            };
            self.framing = false;
            self.handle(&rbuf[at..at + n]);
            if n > READ_CHUNK / 4 {
                self.large = n.min(HINT_LIMIT);
            }
            at += n;
        }
        if at > 0 {
            rbuf.advance(at);
            self.last_message = self.now();
        }
        self.batch_clock = None;
        result
    }

    /// The time of the batch being processed.
    fn now(&mut self) -> Instant {
        *self.batch_clock.get_or_insert_with(Instant::now)
    }

    /// Whether another message may be taken on: calls in flight and reply bytes waiting
    /// are under their limits.
    fn has_room(&self) -> bool {
        self.inflight.len() < self.shared.config.max_in_flight_per_connection
            && self.wbuf.len() < self.shared.config.write_buffer_high_water
    }

    fn handle(&mut self, frame: &[u8]) {
        let parsed = Message::parse(self.framer.codec(), frame);
        self.handle_parsed(parsed);
    }

    fn handle_parsed(&mut self, parsed: Result<Message<'_>, ParseError>) {
        let codec = self.framer.codec();
        match parsed {
            Ok(Message::Request {
                msgid,
                method,
                params,
                timeout,
            }) => {
                if self.draining {
                    let e = ServerError::new(ErrorCode::ShuttingDown, "the server is shutting down; retry");
                    return self.send_error(msgid, &e);
                }
                // A deadline counts from when the batch was read.
                let deadline = timeout.map(|t| self.now() + t);
                if let Some(session) = self.session {
                    if self.shared.registry.dedup(method) {
                        return self.dedup_call((session, msgid), method, params, deadline);
                    }
                }
                match self
                    .shared
                    .registry
                    .dispatch(method, params, codec, &mut self.slots)
                {
                    Dispatch::Ready(reply) => self.finish(Finished::Reply(Some(msgid), reply)),
                    Dispatch::Pending(fut) => self.push(msgid, fut, deadline),
                }
            }
            Ok(Message::Notification { method, params }) => {
                if method == CANCEL && self.extended {
                    return self.cancel(params);
                }
                if !self.shared.registry.contains(method) {
                    debug!(peer = %self.peer, method = %String::from_utf8_lossy(method), "unknown notification ignored");
                    return;
                }
                match self
                    .shared
                    .registry
                    .dispatch(method, params, codec, &mut self.slots)
                {
                    Dispatch::Ready(reply) => self.finish(Finished::Reply(None, reply)),
                    Dispatch::Pending(fut) => self.inflight.push(InFlight::Call { msgid: None, fut }),
                }
            }
            Ok(Message::Response { msgid, .. }) => {
                debug!(peer = %self.peer, msgid, "unexpected response ignored");
            }
            Err(e) => {
                warn!(peer = %self.peer, error = %e, "malformed message");
                if let Some(msgid) = e.msgid {
                    self.send_error(msgid, &e.to_server_error());
                }
            }
        }
    }

    /// Queue a pending call, wrapped with its deadline and, on extended connections, an
    /// abort handle for `rpc.cancel`.
    fn push(&mut self, msgid: u64, fut: ReplyFuture, deadline: Option<Instant>) {
        if deadline.is_none() && !self.extended {
            self.inflight.push(InFlight::Call {
                msgid: Some(msgid),
                fut,
            });
            return;
        }
        let fut = with_deadline(fut, deadline);
        let fut: Pin<Box<dyn Future<Output = Finished> + Send>> = if self.extended {
            let (handle, reg) = AbortHandle::new_pair();
            self.aborts.insert(msgid, handle);
            Box::pin(Abortable::new(fut, reg).map(move |r| match r {
                Ok(reply) => Finished::Reply(Some(msgid), reply),
                Err(_) => Finished::Cancelled,
            }))
        } else {
            Box::pin(fut.map(move |reply| Finished::Reply(Some(msgid), reply)))
        };
        self.inflight.push(InFlight::Other(fut));
    }

    /// `rpc.cancel [msgid]`: drop that call's future (an async handler stops at once; a
    /// sync one runs on, its result discarded).
    fn cancel(&mut self, params: &[u8]) {
        let mut args = rpc_proto::Args::new(self.framer.codec(), params);
        match args.expect(1).and_then(|()| args.next::<u64>("msgid")) {
            Ok(msgid) => {
                if let Some(h) = self.aborts.remove(&msgid) {
                    debug!(peer = %self.peer, msgid, "call cancelled by the client");
                    h.abort();
                }
            }
            Err(e) => debug!(peer = %self.peer, error = %e, "bad rpc.cancel ignored"),
        }
    }

    /// A call under the dedup cache: run it once per key, detached from this connection
    /// so that a retry on another connection can collect its answer.
    fn dedup_call(&mut self, key: (u128, u64), method: &[u8], params: &[u8], deadline: Option<Instant>) {
        let cache = self.shared.dedup.clone();
        let mut tx = None;
        let begin = cache.begin(key, Instant::now().into_std(), || {
            let (t, r) = watch::channel(None);
            tx = Some(t);
            r
        });
        match begin {
            Begin::Cached(bytes) => {
                debug!(peer = %self.peer, msgid = key.1, "answer from the dedup cache");
                self.wbuf.extend_from_slice(&bytes);
            }
            Begin::Wait(rx) => {
                debug!(peer = %self.peer, msgid = key.1, "retry joins the running call");
                self.inflight.push(InFlight::Other(Box::pin(wait_dedup(
                    rx,
                    key.1,
                    self.framer.codec(),
                ))));
            }
            Begin::Run => {
                // Unwrap: `begin` called the closure, since it returned `Run`.
                let tx = tx.unwrap();
                let codec = self.framer.codec();
                let msgid = key.1;
                let rx = Waiter::Local(tx.subscribe());
                let guard = Abandon {
                    cache: cache.clone(),
                    key,
                    done: false,
                };
                match self
                    .shared
                    .registry
                    .dispatch(method, params, codec, &mut self.slots)
                {
                    Dispatch::Ready(reply) => {
                        let bytes = encode_reply(codec, self.peer, msgid, reply);
                        cache.complete(key, bytes.clone(), bytes.len(), Instant::now().into_std());
                        let _ = tx.send(Some(bytes.clone()));
                        let mut guard = guard;
                        guard.done = true;
                        self.wbuf.extend_from_slice(&bytes);
                        return;
                    }
                    Dispatch::Pending(fut) => {
                        let fut = with_deadline(fut, deadline);
                        let peer = self.peer;
                        tokio::spawn(async move {
                            let mut guard = guard;
                            let bytes = encode_reply(codec, peer, msgid, fut.await);
                            cache.complete(key, bytes.clone(), bytes.len(), Instant::now().into_std());
                            guard.done = true;
                            let _ = tx.send(Some(bytes));
                        });
                    }
                }
                self.inflight
                    .push(InFlight::Other(Box::pin(wait_dedup(rx, msgid, codec))));
            }
        }
    }

    /// After calls left the queue: once none is in flight, the heartbeat timeout starts
    /// now (a peer waiting for its last answer was not idle). Calls answered on the spot
    /// never entered the queue; `process` restarts the clock for them.
    fn restart_idle_clock(&mut self) {
        if self.inflight.is_empty() {
            self.last_message = Instant::now();
        }
    }

    /// Encode a finished call's reply into the write buffer.
    fn finish(&mut self, done: Finished) {
        let codec = self.framer.codec();
        match done {
            Finished::Reply(Some(msgid), reply) => {
                // A call answered at once was never registered (hashing its msgid costs
                // more than the call).
                if self.extended && !self.aborts.is_empty() {
                    self.aborts.remove(&msgid);
                }
                write_reply(codec, &mut self.wbuf, self.peer, msgid, reply);
            }
            Finished::Reply(None, reply) => {
                if let Err(e) = reply.0 {
                    debug!(peer = %self.peer, error = %e, "notification failed");
                }
            }
            Finished::Encoded(bytes) => self.wbuf.extend_from_slice(&bytes),
            Finished::Cancelled => {}
        }
    }

    fn send_error(&mut self, msgid: u64, e: &ServerError) {
        log_error(self.peer, msgid, e);
        encode_response_err(self.framer.codec(), &mut self.wbuf, msgid, e);
    }
}

fn log_error(peer: SocketAddr, msgid: u64, e: &ServerError) {
    match e.kind() {
        ErrorCode::HandlerError
        | ErrorCode::MethodNotFound
        | ErrorCode::InvalidParams
        | ErrorCode::Overloaded => {
            debug!(%peer, msgid, code = e.code, error = %e.message, "error reply");
        }
        _ => warn!(%peer, msgid, code = e.code, error = %e.message, "error reply"),
    }
}

/// A pending call with its deadline: past it, the future is dropped (an async handler is
/// cancelled; a sync one runs on and its result is discarded) and the answer is
/// `DeadlineExceeded`.
fn with_deadline(fut: ReplyFuture, deadline: Option<Instant>) -> ReplyFuture {
    match deadline {
        None => fut,
        Some(at) => Box::pin(async move {
            match tokio::time::timeout_at(at, fut).await {
                Ok(reply) => reply,
                Err(_) => Reply::err(ServerError::new(
                    ErrorCode::DeadlineExceeded,
                    "the call's deadline passed before it finished",
                )),
            }
        }),
    }
}

/// The whole response frame for a reply, as stored in the dedup cache.
/// Append the response to a finished call: its value, or its error (logged), or an
/// `Internal` error when the value cannot be encoded.
fn write_reply(codec: Codec, out: &mut Vec<u8>, peer: SocketAddr, msgid: u64, reply: Reply) {
    let error = match reply.0 {
        Ok(value) => match encode_response_ok(codec, out, msgid, &value) {
            Ok(()) => return,
            Err(e) => ServerError::new(ErrorCode::Internal, format!("result could not be encoded: {e}")),
        },
        Err(e) => e,
    };
    log_error(peer, msgid, &error);
    encode_response_err(codec, out, msgid, &error);
}

/// The whole response frame for a reply, as stored in the dedup cache.
fn encode_reply(codec: Codec, peer: SocketAddr, msgid: u64, reply: Reply) -> Bytes {
    let mut out = Vec::new();
    write_reply(codec, &mut out, peer, msgid, reply);
    Bytes::from(out)
}

async fn wait_dedup(rx: Waiter, msgid: u64, codec: Codec) -> Finished {
    match rx.wait().await {
        Some(v) => Finished::Encoded(v),
        None => {
            let e = ServerError::new(ErrorCode::Internal, "the original call was abandoned; retry");
            let mut out = Vec::new();
            encode_response_err(codec, &mut out, msgid, &e);
            Finished::Encoded(out.into())
        }
    }
}

/// Forgets a dedup key whose execution never completed (its task was dropped), so that a
/// retry runs it afresh.
struct Abandon {
    cache: Arc<crate::dedup::Dedup>,
    key: (u128, u64),
    done: bool,
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if !self.done {
            self.cache.abandon(self.key);
        }
    }
}

/// Close without resetting: stop writing, then read and discard for a bounded time so the
/// peer gets our last reply rather than a reset.
async fn linger(stream: &mut TcpStream) {
    let _ = stream.shutdown().await;
    let mut scratch = vec![0u8; 64 * 1024];
    let mut seen = 0;
    let _ = tokio::time::timeout(LINGER, async {
        while seen < LINGER_BYTES {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen += n,
            }
        }
    })
    .await;
}
