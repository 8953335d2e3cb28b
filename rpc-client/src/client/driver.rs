//! The connection task of the async client: it moves bytes between the transport and the
//! protocol, and keeps the timers the protocol asks for.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use easyrpc_proto::blob::Outbox;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tracing::debug;

use super::state::{Deliver, SlotState, State};
use super::Core;
use crate::error::refused;
use crate::handlers::{notify, Handlers, Incoming};
use crate::Error;

/// Write buffers larger than this are given back to the allocator once written.
const KEEP_BUFFER: usize = 256 * 1024;

/// Open a connection, start the protocol on it (and say hello, with extensions) and
/// spawn its connection task.
pub(super) async fn connect(core: &Arc<Core>) -> Result<(), Error> {
    let config = &core.config;
    let connect = async {
        #[cfg(unix)]
        if let Some(path) = &core.unix {
            let mut stream = tokio::net::UnixStream::connect(path).await.map_err(refused)?;
            let rbuf = start(core, &mut stream).await?;
            Driver::start(core, stream, rbuf);
            return Ok(());
        }
        let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address");
        let mut stream = None;
        for addr in &core.addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let Some(mut stream) = stream else {
            return Err(refused(last));
        };
        stream.set_nodelay(true)?;
        if let Some(tls) = &core.tls {
            let mut stream = tls.connect(stream).await?;
            let rbuf = start(core, &mut stream).await?;
            Driver::start(core, stream, rbuf);
            return Ok(());
        }
        let rbuf = start(core, &mut stream).await?;
        Driver::start(core, stream, rbuf);
        Ok::<_, Error>(())
    };
    tokio::time::timeout(config.connect_timeout, connect)
        .await
        .map_err(|_| Error::Timeout(config.connect_timeout))?
}

/// Start the protocol on a new transport: no call can use it yet (`live` is `None`), so
/// the hello, if any, is written and answered before the connection task takes over.
/// Returns what was read after the server's hello.
async fn start<T: AsyncRead + AsyncWrite + Unpin>(core: &Core, stream: &mut T) -> Result<BytesMut, Error> {
    let mut hello = Outbox::default();
    let mut rbuf = BytesMut::with_capacity(16 * 1024);
    {
        let mut st = core.lock();
        st.proto.start(Instant::now().into_std());
        st.proto.take_transmit(Instant::now().into_std(), &mut hello);
    }
    if hello.is_empty() {
        return Ok(rbuf);
    }
    stream.write_all(&hello.to_vec()).await?;
    loop {
        if stream.read_buf(&mut rbuf).await? == 0 {
            return Err(Error::ConnectionClosed);
        }
        let mut st = core.lock();
        let State { proto, slots, .. } = &mut *st;
        // Nothing is served before the connection task runs (a server that answers our
        // hello is ours, and ours sends no requests): method-not-found, as with no handler.
        let mut deliver = Deliver {
            slots,
            codec: core.config.codec,
            handlers: &Handlers::default(),
            incoming: &mut Vec::new(),
        };
        proto
            .handle_input(&mut rbuf, &mut deliver)
            .map_err(|e| Error::Protocol(e.to_string()))?;
        if !proto.is_awaiting_hello() {
            return Ok(rbuf);
        }
    }
}

/// Why the connection task stopped.
enum End {
    /// The connection failed or closed: the calls on it fail with this.
    Lost(Error),
    /// Every client handle is gone.
    Abandoned,
}

/// The connection task: writes what callers queued, puts replies into their slots, fails
/// calls past their deadline, pings when idle. The protocol decides all of it; this moves
/// the bytes and keeps the timers.
pub(super) struct Driver<T> {
    core: Arc<Core>,
    epoch: u64,
    stream: T,
    rbuf: BytesMut,
    /// The bytes taken from the protocol and not written yet (large blobs beside them).
    out: Outbox,
    /// The deadline timer, and the deadline it is armed at.
    timer: Timer,
    armed: Option<std::time::Instant>,
    ping: Timer,
    /// The ping timer is in use.
    pinging: bool,
    /// The protocol's hint for the next read's size, as of the last read.
    hint: usize,
    /// Requests and notifications from the server that the last read brought, for their
    /// handlers.
    incoming: Vec<Incoming>,
    /// On a multi-thread runtime, new requests wait for one turn of the scheduler before
    /// they are written (`poll_drive`); `deferred` is set while they wait.
    defer: bool,
    deferred: bool,
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Driver<T> {
    /// Make `stream` the live connection and spawn its task.
    pub(super) fn start(core: &Arc<Core>, stream: T, rbuf: BytesMut) {
        let (epoch, ping) = {
            let mut st = core.lock();
            st.epoch += 1;
            st.live = Some(st.epoch);
            st.task = None;
            st.task_notified = false;
            (st.epoch, st.proto.poll_ping())
        };
        let now = Instant::now();
        let driver = Driver {
            core: core.clone(),
            epoch,
            stream,
            rbuf,
            out: Outbox::default(),
            timer: Timer::new(now),
            armed: None,
            ping: Timer::new(ping.map_or(now, Instant::from_std)),
            pinging: ping.is_some(),
            hint: 0,
            incoming: Vec::new(),
            defer: tokio::runtime::Handle::current().runtime_flavor()
                == tokio::runtime::RuntimeFlavor::MultiThread,
            deferred: false,
        };
        tokio::spawn(driver.run());
    }

    async fn run(mut self) {
        let end = poll_fn(|cx| self.poll_drive(cx)).await;
        if self.finish(end) {
            // Nobody can call any more: flush what was queued (notifications, cancels).
            let flush = async {
                while let Some(chunk) = self.out.chunk() {
                    let n = chunk.len();
                    self.stream.write_all(chunk).await?;
                    self.out.advance(n, KEEP_BUFFER);
                }
                Ok::<_, io::Error>(())
            };
            let _ = tokio::time::timeout(self.core.config.connect_timeout, flush).await;
            debug!("client dropped, connection closed");
        }
    }

    /// The connection is over: no call may use it any more. Returns whether what was
    /// queued is to be flushed (every handle is gone) rather than dropped.
    fn finish(&mut self, end: End) -> bool {
        let mut st = self.core.lock();
        let st = &mut *st;
        if st.live == Some(self.epoch) {
            st.live = None;
            st.task = None;
        }
        match end {
            End::Lost(error) => {
                debug!(error = %error, "connection lost");
                // Calls written and not yet answered fail, and so do those queued and
                // never written (what is queued belongs to this connection).
                let slots = &mut st.slots;
                st.proto.handle_disconnect(|idx, deadline| {
                    let slot = &mut slots[idx as usize];
                    slot.state = SlotState::Failed(match &error {
                        Error::Transport(e) => Error::Transport(io::Error::new(e.kind(), e.to_string())),
                        Error::Protocol(p) => Error::Protocol(p.clone()),
                        Error::Tls { cause, source } => Error::Tls {
                            cause: *cause,
                            source: source.clone(),
                        },
                        _ => Error::ConnectionClosed,
                    });
                    slot.deadline = deadline.map(Instant::from_std);
                    slot.waker.wake_by_ref();
                });
                false
            }
            End::Abandoned => {
                let mut rest = Outbox::default();
                st.proto.take_transmit(Instant::now().into_std(), &mut rest);
                self.out.append(&mut rest);
                true
            }
        }
    }

    fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        loop {
            let mut progress = false;
            // Read what has arrived.
            // Room for what the message being read still needs, and for a whole large reply
            // when large replies have been coming: one read, not a small one then the rest.
            let hint = self.hint;
            if self.rbuf.capacity() - self.rbuf.len() < 4096usize.max(hint) {
                self.rbuf.reserve((16 * 1024usize).max(self.rbuf.len()).max(hint));
            }
            let read = match tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.rbuf) {
                Poll::Ready(Ok(0)) => return Poll::Ready(End::Lost(Error::ConnectionClosed)),
                Poll::Ready(Ok(_)) => true,
                Poll::Ready(Err(e)) => return Poll::Ready(End::Lost(e.into())),
                Poll::Pending => false,
            };
            let mut guard = self.core.lock();
            if read {
                progress = true;
                let st = &mut *guard;
                let delivered = st.proto.handle_input(
                    &mut self.rbuf,
                    &mut Deliver {
                        slots: &mut st.slots,
                        codec: self.core.config.codec,
                        handlers: &self.core.config.handlers,
                        incoming: &mut self.incoming,
                    },
                );
                if let Err(e) = delivered {
                    return Poll::Ready(End::Lost(Error::Protocol(e.to_string())));
                }
                self.hint = st.proto.read_hint(&self.rbuf);
                if !self.incoming.is_empty() {
                    // Handlers run without the lock: calls go on meanwhile.
                    drop(guard);
                    serve(&self.core, self.epoch, &mut self.incoming);
                    guard = self.core.lock();
                }
            }
            let st = &mut *guard;
            if st.task.as_ref().is_none_or(|w| !w.will_wake(cx.waker())) {
                st.task = Some(cx.waker().clone());
            }
            if st.abandoned {
                return Poll::Ready(End::Abandoned);
            }
            if self.out.is_empty() {
                // Everything handed over is written (and the buffer cleared, or given back
                // when large): take what callers queued since.
                if self.defer && !self.deferred && st.proto.has_transmit() && st.calls_open() > 1 {
                    // A multi-thread runtime runs the task a caller wakes next on the
                    // caller's worker (its LIFO slot), before the other callers that are
                    // ready: writing now would send one request per write, and the server
                    // would be woken for each. One turn of the scheduler first lets them
                    // add theirs (a task that wakes itself goes to the back of the queue).
                    // Not for a call alone: nobody else is coming, and the turn would wake
                    // another worker to take this task over, a cross-CPU wake-up added to
                    // the call. The calls that count are those open, not those in flight:
                    // when a read brings a batch of replies, the first caller to run sends
                    // its next call while the others have yet to take their replies, and
                    // that call must wait for theirs too.
                    self.deferred = true;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                self.deferred = false;
                st.task_notified = false;
                if st.proto.has_transmit() {
                    // One clock read per batch: the heartbeat's and the new calls' deadlines.
                    st.proto.take_transmit(Instant::now().into_std(), &mut self.out);
                    let earliest = st.proto.poll_deadline();
                    if earliest != self.armed {
                        self.armed = earliest;
                        if let Some(at) = earliest {
                            self.timer.reset(Instant::from_std(at));
                        }
                    }
                }
            }
            if !self.out.is_empty() {
                let stream = Pin::new(&mut self.stream);
                let written = if self.out.has_blobs() {
                    // Large blobs beside the buffer: everything in one call.
                    let mut slices = [io::IoSlice::new(&[]); 16];
                    let k = self.out.slices(&mut slices);
                    stream.poll_write_vectored(cx, &slices[..k])
                } else {
                    // Not empty: there is a chunk.
                    stream.poll_write(cx, self.out.chunk().unwrap_or_default())
                };
                match written {
                    Poll::Ready(Ok(n)) => {
                        self.out.advance(n, KEEP_BUFFER);
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(End::Lost(e.into())),
                    Poll::Pending => {}
                }
            }
            if self.armed.is_some() && self.timer.fired(cx) {
                // Fail the calls whose deadline passed; re-arm at the earliest one left.
                let slots = &mut st.slots;
                st.proto.handle_deadlines(Instant::now().into_std(), |idx| {
                    let slot = &mut slots[idx as usize];
                    // The caller puts its own timeout in the error.
                    slot.state = SlotState::Failed(Error::Timeout(Duration::ZERO));
                    slot.waker.wake_by_ref();
                });
                self.armed = st.proto.poll_deadline();
                if let Some(at) = self.armed {
                    self.timer.reset(Instant::from_std(at));
                }
                progress = true;
            }
            if self.pinging && self.ping.fired(cx) {
                let writing = !self.out.is_empty();
                if let Some(at) = st.proto.handle_ping(Instant::now().into_std(), writing) {
                    self.ping.reset(Instant::from_std(at));
                }
                progress = true;
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }
}

/// Run the handlers of what the server sent on connection `epoch`: a request on the
/// blocking pool (it may take its time, or call the server back), its answer queued on
/// the connection if it is still the live one; a notification here, in the order they
/// came. Not generic, and out of line: compiled once, never on a call's path.
#[cold]
#[inline(never)]
fn serve(core: &Arc<Core>, epoch: u64, incoming: &mut Vec<Incoming>) {
    for incoming in incoming.drain(..) {
        match incoming {
            Incoming::Notification(handler, params) => notify(&*handler, params),
            Incoming::Request(request) => {
                let core = core.clone();
                tokio::task::spawn_blocking(move || {
                    let msgid = request.msgid;
                    let answer = request.run();
                    let mut st = core.lock();
                    // An answer for a connection that is gone is dropped (the protocol
                    // forgets the requests of a transport when it ends; the epoch guards
                    // against a msgid the next connection's server reuses).
                    if st.live == Some(epoch) && st.proto.respond(msgid, answer.as_ref()) {
                        st.wake_writer();
                    }
                });
            }
        }
    }
}

/// A tokio `Sleep` polled only when it needs to be: once after each reset (so that it
/// wakes the task), and then only once it has elapsed. The connection task looks at its
/// timers every time it runs; polling a `Sleep` each time would cost more than the rest
/// of a small batch.
struct Timer {
    sleep: Pin<Box<Sleep>>,
    registered: bool,
}

impl Timer {
    fn new(at: Instant) -> Timer {
        Timer {
            sleep: Box::pin(tokio::time::sleep_until(at)),
            registered: false,
        }
    }

    fn reset(&mut self, at: Instant) {
        self.sleep.as_mut().reset(at);
        self.registered = false;
    }

    /// Whether the timer has fired; registers the task's waker when needed.
    fn fired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.registered && !self.sleep.is_elapsed() {
            return false;
        }
        // Without coop budget the poll returns `Pending` without registering (and has the
        // task woken to run again): then it must be polled again next time.
        self.registered = tokio::task::coop::has_budget_remaining();
        self.sleep.as_mut().poll(cx).is_ready()
    }
}
