//! One task per connection: a loop that moves bytes between the socket and the protocol.
//!
//! What the bytes mean is decided by [`easyrpc_proto::ServerConnection`] (hello, framing,
//! limits, deadlines, cancellation, draining, heartbeat). This task owns the socket and the
//! calls: [`Calls`] is the protocol's [`Service`], dispatching each request through the
//! registry. Calls that finish on the spot are answered straight into the write buffer;
//! the rest wait in a queue polled by this same task, so no call costs a task spawn or a
//! cross-thread hop unless its handler needs one (sync handlers go to the blocking pool).
//! All replies ready after one read are written with one syscall.
//!
//! Lifecycle: the connection closes once the peer has closed its sending half and every
//! call it made is answered (end of input means "no more requests", not "the caller is
//! gone": a half-closed peer still reads); when a read or a write fails (the peer is gone:
//! its async calls in flight are cancelled, as after `rpc.cancel`); when no message arrived
//! for the heartbeat timeout while no call was in flight; when the stream is unreadable
//! (after an error reply when the msgid was known); or after the shutdown signal once its
//! calls have finished.

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use easyrpc_proto::{
    encode_response_err, encode_response_ok, Begin, Codec, ConnEvent, EncodeError, ErrorCode, Fatal, Request,
    ServerConfig, ServerConnection, ServerError, Service, StreamMessage, Transmit,
};
use futures_util::future::{AbortHandle, Abortable};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tracing::{debug, info, warn, Instrument};

use crate::context::CallParts;
use crate::context::ConnInfo;
use crate::dedup::Waiter;
use crate::method::{Failure, Reply, ReplyFuture};
use crate::metrics::{Meter, Tally};
use crate::registry::{Dispatch, Slots};
use crate::stream::Hub;
use crate::Shared;

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
    proto: ServerConnection,
    calls: Calls,
}

/// The socket and the timers of [`Connection::serve`].
struct Io<'a, 't, T> {
    stream: &'a mut T,
    // Pinned on the stack of `serve`: no allocation per connection.
    idle: Pin<&'a mut Sleep>,
    cancelled: Pin<&'a mut WaitForCancellationFuture<'t>>,
    /// At shutdown, the time a connection that has sent nothing yet gets for its first
    /// request.
    grace: Option<Pin<Box<Sleep>>>,
    /// Bytes were read that the protocol has not seen yet.
    input: bool,
}

/// The calls of one connection: the protocol's [`Service`].
struct Calls {
    shared: Arc<Shared>,
    /// The peer said hello: its pending calls can be cancelled (`rpc.cancel`).
    extended: bool,
    inflight: FuturesUnordered<InFlight>,
    /// Abort handles of pending calls, for `rpc.cancel` (only on extended connections).
    aborts: HashMap<u64, AbortHandle>,
    /// The boxes this connection's async calls run in, kept from one call to the next.
    slots: Slots,
    /// The connection's facts, for the calls' contexts.
    conn: Arc<ConnInfo>,
    /// The connection's span, carrying the peer: the parent of every event about it. Not
    /// entered around each poll, which costs instructions on every call even with no
    /// subscriber (tracing's `log` compatibility).
    span: tracing::Span,
    /// With metrics: the calls answered on the spot since the last batch of input was
    /// handled, added to the server's metrics after each batch.
    tally: Tally,
    /// The connection's streams, once its hello agreed them.
    hub: Option<Arc<Hub>>,
}

impl Connection {
    /// A connection of the server `shared`, with the facts the listener gathered.
    pub(crate) fn new(shared: Arc<Shared>, info: ConnInfo) -> Connection {
        let config = &shared.config;
        let mut proto_config = ServerConfig::default();
        proto_config.max_message_size = config.max_message_size;
        proto_config.max_in_flight = config.max_in_flight_per_connection;
        proto_config.write_buffer_high_water = config.write_buffer_high_water;
        proto_config.heartbeat_timeout = config.heartbeat_timeout;
        proto_config.error_shape = config.plain_error_shape;
        match config.compression {
            Some(c) => proto_config.compression = c,
            None => proto_config.features &= !easyrpc_proto::handshake::features::ZSTD,
        }
        let span = tracing::info_span!("connection", peer = %info.peer);
        if let Some(identity) = &info.tls {
            debug!(parent: &span, subject = %identity.subject, sans = ?identity.sans, "TLS client identity");
        }
        Connection {
            proto: ServerConnection::new(proto_config, Instant::now().into_std()),
            calls: Calls {
                shared,
                extended: false,
                inflight: FuturesUnordered::new(),
                aborts: HashMap::new(),
                slots: Slots::default(),
                span,
                conn: Arc::new(info),
                tally: Tally::default(),
                hub: None,
            },
        }
    }

    /// Serve the connection on `stream` until it closes; then cancel what still runs.
    pub(crate) async fn run<T>(mut self, mut stream: T, shutdown: CancellationToken)
    where
        T: AsyncRead + AsyncWrite + Unpin,
    {
        let span = self.calls.span.clone();
        // Debug, not info: at scale, connections come and go all the time.
        debug!(parent: &span, "connection opened");
        let result = self.serve(&mut stream, &shutdown).await;
        // Cancel what is still running (async handlers are dropped here).
        let cancelled = self.calls.inflight.len();
        self.calls.inflight = FuturesUnordered::new();
        // Streams handed elsewhere (a sync function's argument stream) see the end.
        if let Some(hub) = &self.calls.hub {
            hub.close();
        }
        if self.proto.should_linger() {
            linger(&mut stream).await;
        }
        match result {
            Ok(()) => debug!(parent: &span, cancelled, "connection closed"),
            Err(e) => debug!(parent: &span, cancelled, error = %e, "connection closed with an error"),
        }
    }

    async fn serve<T>(&mut self, stream: &mut T, shutdown: &CancellationToken) -> io::Result<()>
    where
        T: AsyncRead + AsyncWrite + Unpin,
    {
        // One timer for the connection, re-armed only when it fires: the protocol's
        // heartbeat deadline only moves later in between.
        let idle = tokio::time::sleep_until(to_tokio(self.proto.poll_timeout()));
        tokio::pin!(idle);
        // One future for the whole connection: a new `cancelled()` per turn would lock the
        // token's waiter list twice more per wake-up.
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        let mut io = Io {
            stream,
            idle,
            cancelled,
            grace: None,
            input: false,
        };
        // Handlers run inside: their panics are logged once, by the server.
        poll_fn(|cx| crate::blocking::handlers_run(|| self.poll_serve(cx, &mut io))).await
    }

    /// The connection's work at one wake-up: look at the shutdown signal and the heartbeat
    /// timer, then read, hand what was read to the protocol, collect finished calls and
    /// write, until reading would block.
    fn poll_serve<T>(&mut self, cx: &mut Context<'_>, io: &mut Io<'_, '_, T>) -> Poll<io::Result<()>>
    where
        T: AsyncRead + AsyncWrite + Unpin,
    {
        if !self.proto.is_draining() && io.cancelled.as_mut().poll(cx).is_ready() {
            self.proto.start_drain();
            // Requests that have arrived already are answered (ShuttingDown, which clients
            // may retry) rather than reset by the close. A connection that has sent nothing
            // yet (one taken from the accept queue at shutdown) is new to the reactor: give
            // its first request a moment to be seen.
            if self.proto.is_fresh() {
                io.grace = Some(Box::pin(tokio::time::sleep(FIRST_REQUEST_AT_SHUTDOWN)));
            }
            debug!(parent: &self.calls.span, in_flight = self.calls.inflight.len(), "draining for shutdown");
        }
        while io.idle.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            if self
                .proto
                .handle_timeout(now.into_std(), self.calls.inflight.len())
            {
                info!(parent: &self.calls.span, timeout = ?self.calls.shared.config.heartbeat_timeout, "no message within the heartbeat timeout; closing");
                return Poll::Ready(Ok(()));
            }
            // Later than `now`, or never: the loop ends.
            io.idle.as_mut().reset(to_tokio(self.proto.poll_timeout()));
        }
        if io.grace.as_mut().is_some_and(|g| g.as_mut().poll(cx).is_ready()) {
            io.grace = None;
        }
        loop {
            let mut again = false;
            // Reading was tried and would block: the socket wakes us when there is more.
            let mut read_blocked = false;
            let in_flight = self.calls.inflight.len();
            if self.proto.wants_read(in_flight) && !self.proto.has_held_input(in_flight) {
                let buf = self.proto.read_buf();
                match tokio_util::io::poll_read_buf(Pin::new(&mut *io.stream), cx, buf) {
                    Poll::Ready(Ok(0)) => {
                        // End of input: no more requests, but the peer may still read.
                        let partial = self.proto.handle_eof();
                        // No more credit or items can come: streams waiting for them end.
                        if let Some(hub) = &self.calls.hub {
                            hub.close();
                        }
                        if partial > 0 {
                            warn!(parent: &self.calls.span, bytes = partial, "end of input in the middle of a message");
                        }
                        debug!(parent: &self.calls.span, in_flight, "end of input; answering what was received");
                        io.grace = None;
                    }
                    Poll::Ready(Ok(_)) => {
                        io.input = true;
                        io.grace = None;
                        // Read again once this is handled: until it would block.
                        again = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => read_blocked = true,
                }
            }
            if io.input || self.proto.has_held_input(in_flight) {
                io.input = false;
                let now = Instant::now().into_std();
                let handled = self.proto.handle_input(now, &mut self.calls);
                if let Some(metrics) = &self.calls.shared.metrics {
                    self.calls.tally.flush(metrics);
                }
                if let Err(fatal) = handled {
                    match fatal {
                        Fatal::Frame(e) => {
                            warn!(parent: &self.calls.span, error = %e, "unreadable stream; closing after the replies")
                        }
                        Fatal::Hello => warn!(parent: &self.calls.span, "bad hello; closing"),
                        _ => warn!(parent: &self.calls.span, ?fatal, "closing"),
                    }
                }
                // Messages held at the limits are taken as soon as there is room.
                again |= self.proto.has_held_input(self.calls.inflight.len());
            }
            // Collect every call that has finished meanwhile.
            if !self.calls.inflight.is_empty() {
                let mut finished = false;
                while let Poll::Ready(Some(done)) = self.calls.inflight.poll_next_unpin(cx) {
                    self.calls.finish(&mut self.proto.transmit(), done);
                    finished = true;
                }
                if finished {
                    self.restart_idle_clock();
                    again |= self.proto.has_held_input(self.calls.inflight.len());
                }
            }
            // Stream items and credit queued by the calls, and by their streams elsewhere
            // (which wake this task once it is known).
            if let Some(hub) = &self.calls.hub {
                if hub.is_active() {
                    hub.set_task(cx.waker());
                }
                if hub.has_pending() {
                    hub.drain(&mut self.proto.transmit());
                }
            }
            // Write until done or the socket is full (then it wakes us).
            loop {
                let stream = Pin::new(&mut *io.stream);
                let written = if self.proto.is_transmit_vectored() {
                    // Large blobs beside the buffer: everything in one call.
                    let mut slices = [io::IoSlice::new(&[]); 16];
                    let k = self.proto.transmit_slices(&mut slices);
                    stream.poll_write_vectored(cx, &slices[..k])
                } else {
                    match self.proto.poll_transmit() {
                        Some(bytes) => stream.poll_write(cx, bytes),
                        None => break,
                    }
                };
                match written {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => {
                        self.proto.advance_transmit(n);
                        // Room in the write buffer again may let held messages in.
                        again |= self.proto.has_held_input(self.calls.inflight.len());
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => break,
                }
            }
            let in_flight = self.calls.inflight.len();
            if self.proto.is_done(in_flight) && io.grace.is_none() {
                return Poll::Ready(Ok(()));
            }
            // Room to read again (calls finished, replies written) but not tried yet.
            again |= !read_blocked && self.proto.wants_read(in_flight);
            if !again {
                return Poll::Pending;
            }
        }
    }

    /// After calls left the queue: once none is in flight, the heartbeat timeout starts
    /// now (a peer waiting for its last answer was not idle). Calls answered on the spot
    /// never entered the queue; the protocol restarts the clock for them.
    fn restart_idle_clock(&mut self) {
        if self.calls.inflight.is_empty() {
            self.proto.calls_idle(Instant::now().into_std());
        }
    }
}

fn to_tokio(at: Option<std::time::Instant>) -> Instant {
    // Far enough to never fire, near enough not to overflow tokio's timer.
    at.map_or_else(
        || Instant::now() + Duration::from_secs(86_400 * 365),
        Instant::from_std,
    )
}

impl Service for Calls {
    fn request(&mut self, tx: &mut Transmit<'_>, request: Request<'_>) {
        let Request {
            msgid,
            method,
            params,
            deadline,
            session,
            ..
        } = request;
        let deadline = deadline.map(Instant::from_std);
        // Metrics: one test of an `Option` per call when they are off.
        if self.shared.metrics.is_some() {
            return self.metered_request(tx, &request, deadline);
        }
        if let Some(session) = session {
            if self.shared.registry.dedup(method) {
                return self.dedup_call(tx, (session, msgid), &request, deadline, None);
            }
        }
        // The per-call span, only when someone listens at debug for `easyrpc_server::call`:
        // otherwise this is one check of a cached interest.
        if tracing::enabled!(target: CALL_TARGET, tracing::Level::DEBUG) {
            return self.traced_request(tx, &request, deadline, None);
        }
        let parts = CallParts {
            request: Some(&request),
            conn: &self.conn,
        };
        match self
            .shared
            .registry
            .dispatch(method, params, tx.codec(), &mut self.slots, parts)
        {
            Dispatch::Ready(reply) => write_reply(&self.span, tx, msgid, reply),
            Dispatch::Pending(fut) => self.push(msgid, fut, deadline),
        }
    }

    fn notification(&mut self, tx: &mut Transmit<'_>, method: &[u8], params: &[u8]) {
        if !self.shared.registry.contains(method) {
            debug!(parent: &self.span, method = %String::from_utf8_lossy(method), "unknown notification ignored");
            return;
        }
        let meter = self.shared.metrics.as_ref().map(|m| {
            let index = self.shared.registry.index(method, &mut self.slots);
            Meter::start(m.method(index))
        });
        let parts = CallParts {
            request: None,
            conn: &self.conn,
        };
        match self
            .shared
            .registry
            .dispatch(method, params, tx.codec(), &mut self.slots, parts)
        {
            Dispatch::Ready(reply) => {
                if let Some(meter) = meter {
                    meter.ready(&reply);
                }
                self.finish(tx, Finished::Reply(None, reply));
            }
            Dispatch::Pending(fut) => {
                let fut = match meter {
                    Some(meter) => meter.pending(fut),
                    None => fut,
                };
                self.inflight.push(InFlight::Call { msgid: None, fut });
            }
        }
    }

    /// `rpc.cancel [msgid]`: drop that call's future (an async handler stops at once; a
    /// sync one runs on, its result discarded).
    fn cancel(&mut self, msgid: u64) {
        if let Some(h) = self.aborts.remove(&msgid) {
            debug!(parent: &self.span, msgid, "call cancelled by the client");
            h.abort();
        }
    }

    /// `rpc.item`, `rpc.credit`, `rpc.end` of a call's streams.
    fn stream(&mut self, _tx: &mut Transmit<'_>, message: StreamMessage<'_>) {
        if let Some(complaint) = self.hub.as_ref().and_then(|hub| hub.handle(message)) {
            warn!(parent: &self.span, "{complaint}");
        }
    }

    #[inline]
    fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    fn event(&mut self, event: ConnEvent<'_>) {
        match event {
            ConnEvent::Hello(hello) => {
                self.extended = true;
                let streams = hello.features & easyrpc_proto::handshake::features::STREAMS != 0;
                if hello.session.is_some() || streams {
                    let mut info = (*self.conn).clone();
                    info.session = hello.session;
                    if streams {
                        let hub = Hub::new(hello.codec);
                        info.streams = Some(hub.clone());
                        self.hub = Some(hub);
                    }
                    self.conn = Arc::new(info);
                }
                debug!(parent: &self.span, codec = ?hello.codec, session = ?hello.session, "hello");
            }
            ConnEvent::Malformed(e) => warn!(parent: &self.span, error = %e, "malformed message"),
            ConnEvent::ErrorSent(msgid, e) => log_error(&self.span, msgid, e),
            ConnEvent::UnexpectedResponse(msgid) => {
                debug!(parent: &self.span, msgid, "unexpected response ignored")
            }
            ConnEvent::BadCancel(e) => debug!(parent: &self.span, error = %e, "bad rpc.cancel ignored"),
            ConnEvent::BadStream(e) => warn!(parent: &self.span, error = %e, "bad stream message ignored"),
            _ => {}
        }
    }
}

/// The target of the per-call spans: `RUST_LOG=easyrpc_server::call=debug` shows them.
pub(crate) const CALL_TARGET: &str = "easyrpc_server::call";

/// How a finished call is recorded on its span.
fn record_outcome(span: &tracing::Span, reply: &Reply, started: std::time::Instant) {
    let outcome = match reply.error() {
        None => "ok",
        Some(e) => e.kind().name(),
    };
    span.record("outcome", outcome);
    span.record("duration_us", started.elapsed().as_micros() as u64);
}

impl Calls {
    /// [`Service::request`] with a span for the call: method, msgid, peer and codec, and on
    /// close its duration and outcome. The handler runs inside it (its own events nest),
    /// sync ones too (the blocking pool enters the span it was given the job in).
    #[cold]
    fn traced_request(
        &mut self,
        tx: &mut Transmit<'_>,
        request: &Request<'_>,
        deadline: Option<Instant>,
        meter: Option<Meter>,
    ) {
        let span = tracing::debug_span!(
            target: CALL_TARGET,
            parent: &self.span,
            "call",
            method = %String::from_utf8_lossy(request.method),
            msgid = request.msgid,
            peer = %self.conn.peer,
            codec = ?tx.codec(),
            outcome = tracing::field::Empty,
            duration_us = tracing::field::Empty,
        );
        let started = std::time::Instant::now();
        let parts = CallParts {
            request: Some(request),
            conn: &self.conn,
        };
        let registry = &self.shared.registry;
        let slots = &mut self.slots;
        let dispatched =
            span.in_scope(|| registry.dispatch(request.method, request.params, tx.codec(), slots, parts));
        match dispatched {
            Dispatch::Ready(reply) => {
                record_outcome(&span, &reply, started);
                if let Some(meter) = meter {
                    meter.ready(&reply);
                }
                write_reply(&self.span, tx, request.msgid, reply);
            }
            Dispatch::Pending(fut) => {
                let fut: ReplyFuture = Box::pin(async move {
                    let reply = fut.instrument(span.clone()).await;
                    record_outcome(&span, &reply, started);
                    reply
                });
                match meter {
                    // Metered outside the deadline: a deadline that passes is the call's
                    // outcome, not a cancellation.
                    Some(meter) => {
                        self.push(request.msgid, meter.pending(with_deadline(fut, deadline)), None)
                    }
                    None => self.push(request.msgid, fut, deadline),
                }
            }
        }
    }

    /// [`Service::request`] with metrics: the call is counted once, when it ends (see
    /// `metrics.rs` for what is counted where). Out of line: a server without metrics
    /// does not carry this code in its per-call path.
    #[inline(never)]
    fn metered_request(&mut self, tx: &mut Transmit<'_>, request: &Request<'_>, deadline: Option<Instant>) {
        // Unwrap: the caller checked that this server has metrics.
        let metrics = self.shared.metrics.as_ref().unwrap();
        let started = self.tally.start();
        if let Some(session) = request.session {
            if self.shared.registry.dedup(request.method) {
                let index = self.shared.registry.index(request.method, &mut self.slots);
                let meter = Meter::started(metrics.method(index), started);
                return self.dedup_call(tx, (session, request.msgid), request, deadline, Some(meter));
            }
        }
        if tracing::enabled!(target: CALL_TARGET, tracing::Level::DEBUG) {
            let index = self.shared.registry.index(request.method, &mut self.slots);
            let meter = Meter::started(metrics.method(index), started);
            return self.traced_request(tx, request, deadline, Some(meter));
        }
        let parts = CallParts {
            request: Some(request),
            conn: &self.conn,
        };
        // The method's name is looked up once, by dispatch.
        let (index, dispatched) = self.shared.registry.dispatch_indexed(
            request.method,
            request.params,
            tx.codec(),
            &mut self.slots,
            parts,
        );
        match dispatched {
            // Counted in the connection's tally, added to the server's once per batch.
            Dispatch::Ready(reply) => {
                self.tally.ready(metrics, index, &reply);
                write_reply(&self.span, tx, request.msgid, reply);
            }
            // Metered outside the deadline: a deadline that passes is the call's outcome
            // (`deadline_exceeded`), not a cancellation.
            Dispatch::Pending(fut) => {
                let fut =
                    Meter::started(metrics.method(index), started).pending(with_deadline(fut, deadline));
                self.push(request.msgid, fut, None);
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

    /// A call under the dedup cache: run it once per key, detached from this connection
    /// so that a retry on another connection can collect its answer.
    fn dedup_call(
        &mut self,
        tx: &mut Transmit<'_>,
        key: (u128, u64),
        request: &Request<'_>,
        deadline: Option<Instant>,
        meter: Option<Meter>,
    ) {
        let (method, params) = (request.method, request.params);
        let cache = self.shared.dedup.clone();
        let mut chan = None;
        let begin = cache.begin(key, Instant::now().into_std(), || {
            let (t, r) = watch::channel(None);
            chan = Some(t);
            r
        });
        match begin {
            Begin::Cached(bytes) => {
                debug!(parent: &self.span, msgid = key.1, "answer from the dedup cache");
                if let Some(m) = &self.shared.metrics {
                    m.dedup_hit();
                }
                tx.encoded(&bytes);
            }
            Begin::Wait(rx) => {
                debug!(parent: &self.span, msgid = key.1, "retry joins the running call");
                if let Some(m) = &self.shared.metrics {
                    m.dedup_hit();
                }
                self.inflight
                    .push(InFlight::Other(Box::pin(wait_dedup(rx, key.1, tx.codec()))));
            }
            Begin::Run => {
                // Unwrap: `begin` called the closure, since it returned `Run`.
                let chan = chan.unwrap();
                let codec = tx.codec();
                let msgid = key.1;
                let rx = Waiter::Local(chan.subscribe());
                let guard = Abandon {
                    cache: cache.clone(),
                    key,
                    done: false,
                };
                let parts = CallParts {
                    request: Some(request),
                    conn: &self.conn,
                };
                match self
                    .shared
                    .registry
                    .dispatch(method, params, codec, &mut self.slots, parts)
                {
                    Dispatch::Ready(reply) => {
                        if let Some(meter) = meter {
                            meter.ready(&reply);
                        }
                        let bytes = encode_reply(&self.span, codec, msgid, reply);
                        cache.complete(key, bytes.clone(), bytes.len(), Instant::now().into_std());
                        let _ = chan.send(Some(bytes.clone()));
                        let mut guard = guard;
                        guard.done = true;
                        tx.encoded(&bytes);
                        return;
                    }
                    Dispatch::Pending(fut) => {
                        let fut = with_deadline(fut, deadline);
                        let fut = match meter {
                            Some(meter) => meter.pending(fut),
                            None => fut,
                        };
                        let span = self.span.clone();
                        let events = span.clone();
                        tokio::spawn(
                            async move {
                                let mut guard = guard;
                                let bytes = encode_reply(&events, codec, msgid, fut.await);
                                cache.complete(key, bytes.clone(), bytes.len(), Instant::now().into_std());
                                guard.done = true;
                                let _ = chan.send(Some(bytes));
                            }
                            .instrument(span),
                        );
                    }
                }
                self.inflight
                    .push(InFlight::Other(Box::pin(wait_dedup(rx, msgid, codec))));
            }
        }
    }

    /// Encode a finished call's reply into the write buffer.
    fn finish(&mut self, tx: &mut Transmit<'_>, done: Finished) {
        // A stream's items go before its end.
        if let Some(hub) = &self.hub {
            if hub.has_pending() {
                hub.drain(tx);
            }
        }
        match done {
            Finished::Reply(Some(msgid), reply) => {
                // A call answered at once was never registered (hashing its msgid costs
                // more than the call).
                if self.extended && !self.aborts.is_empty() {
                    self.aborts.remove(&msgid);
                }
                write_reply(&self.span, tx, msgid, reply);
            }
            Finished::Reply(None, reply) => {
                if let Err(e) = reply.0 {
                    debug!(parent: &self.span, error = %e.error, "notification failed");
                }
            }
            Finished::Encoded(bytes) => tx.encoded(&bytes),
            Finished::Cancelled => {}
        }
    }
}

fn log_error(span: &tracing::Span, msgid: u64, e: &ServerError) {
    match e.kind() {
        ErrorCode::HandlerError
        | ErrorCode::MethodNotFound
        | ErrorCode::InvalidParams
        | ErrorCode::Overloaded
        // Logged at info with the rule where it is refused.
        | ErrorCode::PermissionDenied => {
            debug!(parent: span, msgid, code = e.code, error = %e.message, "error reply");
        }
        _ => warn!(parent: span, msgid, code = e.code, error = %e.message, "error reply"),
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

/// Append the response to a finished call: its value, or its error (logged), or an
/// `Internal` error when the value cannot be encoded.
#[inline(always)]
fn write_reply(span: &tracing::Span, tx: &mut Transmit<'_>, msgid: u64, reply: Reply) {
    let failure = match reply.0 {
        Ok(value) => match tx.ok(msgid, &value) {
            Ok(()) => return,
            Err(e) => unencodable(e),
        },
        Err(failure) => failure,
    };
    write_error(span, tx, msgid, failure);
}

/// The error half of [`write_reply`], out of line: kept out of the common path, whose
/// code stays small (callgrind counted 6 instructions more per call when it was inlined).
// The box is the reply's own: handing it on moves a pointer, and the inlined caller never
// unboxes it.
#[allow(clippy::boxed_local)]
#[cold]
#[inline(never)]
fn write_error(span: &tracing::Span, tx: &mut Transmit<'_>, msgid: u64, failure: Box<Failure>) {
    let error = failure.into_error(tx.codec());
    log_error(span, msgid, &error);
    tx.err(msgid, &error);
}

/// The `Internal` error for a result that could not be encoded.
#[cold]
#[inline(never)]
fn unencodable(e: EncodeError) -> Box<Failure> {
    let error = ServerError::new(ErrorCode::Internal, format!("result could not be encoded: {e}"));
    Box::new(Failure { error, data: None })
}

/// The whole response frame for a reply, as stored in the dedup cache.
fn encode_reply(span: &tracing::Span, codec: Codec, msgid: u64, reply: Reply) -> Bytes {
    let mut out = Vec::new();
    let failure = match reply.0 {
        Ok(value) => match encode_response_ok(codec, &mut out, msgid, &value) {
            Ok(()) => return Bytes::from(out),
            Err(e) => unencodable(e),
        },
        Err(failure) => failure,
    };
    let error = failure.into_error(codec);
    log_error(span, msgid, &error);
    out.clear();
    encode_response_err(codec, &mut out, msgid, &error);
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
async fn linger<T: AsyncRead + AsyncWrite + Unpin>(stream: &mut T) {
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
