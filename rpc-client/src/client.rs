//! The async client: one connection, many calls in flight.
//!
//! # Layout
//!
//! Everything a client's calls share lives behind one lock ([`State`]): the write buffer
//! of the live connection, a table of call slots, and the msgid → slot map. A call takes
//! the lock once to encode its request straight into the write buffer and take a slot,
//! and once more to take its reply out of the slot. The connection task ([`Driver`])
//! swaps the write buffer out and writes it with one syscall, however many calls filled
//! it; it parses every reply that one read brought, puts each into its caller's slot and
//! wakes the caller. There is no channel, no task and no timer per call, and once the slot
//! table has grown to the number of calls in flight, no allocation per call either (a
//! small reply is copied into its slot's buffer, which keeps its capacity).
//!
//! Deadlines: every slot holds its call's deadline, and the connection task keeps one
//! timer, armed at the earliest deadline it was told of; when it fires, the task fails
//! the calls whose deadline passed and re-arms at the earliest one left.

use std::fmt;
use std::future::{poll_fn, Future};
use std::io;
use std::marker::PhantomData;
use std::mem;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rpc_proto::{may_resend, ClientConnection, ClientReply, Failure, Params, Replies};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tracing::debug;

use crate::config::new_session;
use crate::reply;
use crate::{Config, Error};

/// Write buffers larger than this are given back to the allocator once written.
const KEEP_BUFFER: usize = 256 * 1024;

/// An async client for any MessagePack-RPC server.
///
/// Cheap to clone: clones share one connection, on which many calls may be in flight;
/// each reply is matched to its call by msgid. When the connection drops, every call in
/// flight fails at once with [`Error::ConnectionClosed`] and the next call reconnects
/// (with exponential backoff, within the call's timeout). Calls that are safe to resend
/// are resent on the new connection: with `unstable_network` (the server answers a
/// retry from its dedup cache), calls made through [`Client::idempotent`], and calls the
/// server refused because it was shutting down.
///
/// ```no_run
/// # async fn demo() -> Result<(), rpc_client::Error> {
/// let client = rpc_client::Client::connect("127.0.0.1:25000").await?;
/// let sum: i64 = client.call("add", (1, 2)).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    handle: Arc<Handle>,
    timeout: Duration,
    idempotent: bool,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.addr())
            .field("timeout", &self.timeout)
            .field("idempotent", &self.idempotent)
            .field("codec", &self.handle.0.config.codec)
            .finish_non_exhaustive()
    }
}

/// What the clones of a [`Client`] share. The connection task holds the [`Core`] but not
/// this: when the last clone goes, the task flushes what was queued and ends.
struct Handle(Arc<Core>);

impl Drop for Handle {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.abandoned = true;
        if let Some(task) = &st.task {
            task.wake_by_ref();
        }
    }
}

struct Core {
    addrs: Vec<SocketAddr>,
    config: Config,
    session: Option<u128>,
    state: Mutex<State>,
    /// One reconnection at a time.
    connecting: tokio::sync::Mutex<()>,
}

impl Core {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere (in a caller's `Serialize`, say):
        // every update below leaves the state consistent before anything can panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The state every call and the connection task share.
struct State {
    /// The number of the live connection; `None` when there is none (the next call
    /// connects).
    live: Option<u64>,
    /// The number the last connection got.
    epoch: u64,
    /// The protocol: msgids, the in-flight table, deadlines, what is queued for the
    /// transport (callers encode their requests straight into it).
    proto: ClientConnection<u32>,
    /// The connection task's waker.
    task: Option<Waker>,
    /// The task has been woken since it last took the queued bytes: no need to wake it
    /// again.
    task_notified: bool,
    /// Every handle is gone: the task flushes and ends.
    abandoned: bool,
    slots: Vec<Slot>,
    free: Vec<u32>,
}

struct Slot {
    msgid: u64,
    /// The connection the call was written on.
    epoch: u64,
    /// The call's deadline, when it ended without an answer it can use (the connection was
    /// lost, or the server refused it): a call sent again keeps it.
    deadline: Option<Instant>,
    state: SlotState,
    /// The waker of the task waiting for the call. Kept when the slot is freed: the task
    /// whose call frees it usually takes it again at once for its next call (the free
    /// list is a stack), and then `clone_from` sees the same task and clones nothing, and
    /// the reply wakes it by reference. That is three atomic operations on the task's
    /// state fewer per call than a clone and a wake by value.
    waker: Waker,
    /// A small reply's result (or error value), copied from the read buffer. The slot
    /// keeps the capacity for its next call.
    buf: Vec<u8>,
}

enum SlotState {
    Free,
    Waiting,
    /// The reply came: its result (`ok`) or error value, in `buf` or in `big`.
    Replied {
        ok: bool,
        big: Option<Bytes>,
    },
    Failed(Error),
}

impl State {
    fn new(proto: ClientConnection<u32>) -> State {
        State {
            live: None,
            epoch: 0,
            proto,
            task: None,
            task_notified: false,
            abandoned: false,
            slots: Vec::new(),
            free: Vec::new(),
        }
    }

    /// Make sure the connection task will look at what is queued.
    fn wake_writer(&mut self) {
        if !self.task_notified {
            self.task_notified = true;
            if let Some(task) = &self.task {
                task.wake_by_ref();
            }
        }
    }

    /// Take a slot for a call about to be queued on connection `epoch`.
    fn take_slot(&mut self, epoch: u64, waker: &Waker) -> u32 {
        if let Some(idx) = self.free.pop() {
            let slot = &mut self.slots[idx as usize];
            slot.epoch = epoch;
            slot.deadline = None;
            slot.state = SlotState::Waiting;
            slot.waker.clone_from(waker);
            idx
        } else {
            self.slots.push(Slot {
                msgid: 0,
                epoch,
                deadline: None,
                state: SlotState::Waiting,
                waker: waker.clone(),
                buf: Vec::new(),
            });
            // The table grows with the calls in flight; a u32 index is plenty.
            u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
        }
    }

    /// Give a slot back (its reply taken or abandoned).
    fn free_slot(&mut self, idx: u32) {
        let slot = &mut self.slots[idx as usize];
        slot.state = SlotState::Free;
        if slot.buf.capacity() > rpc_proto::INLINE_REPLY * 4 {
            slot.buf = Vec::new();
        }
        self.free.push(idx);
    }
}

/// Puts each reply into its caller's slot and wakes the caller.
struct Deliver<'a> {
    slots: &'a mut [Slot],
}

impl Replies<u32> for Deliver<'_> {
    #[inline]
    fn reply(&mut self, r: ClientReply<'_, u32>) {
        let slot = &mut self.slots[r.token as usize];
        let big = r.frame.map(|frame| frame.slice_ref(r.part));
        if big.is_none() {
            slot.buf.clear();
            slot.buf.extend_from_slice(r.part);
        }
        if !r.ok {
            slot.deadline = r.deadline.map(Instant::from_std);
        }
        if let SlotState::Waiting = mem::replace(&mut slot.state, SlotState::Replied { ok: r.ok, big }) {
            slot.waker.wake_by_ref();
        }
    }
}

/// How one attempt at a call ended.
enum Attempted<R> {
    /// There is no live connection: connect, then try again.
    NotConnected,
    Done(Result<R, Error>),
}

/// One attempt at a call: writes it on the live connection, then waits for its reply.
struct Attempt<'a, P: ?Sized, R> {
    core: &'a Core,
    method: &'a str,
    /// `&mut` rather than `&` only so that the call's future is `Send` without `P: Sync`.
    params: &'a mut P,
    /// Kept across attempts: a resent call keeps its msgid (the server's dedup key).
    msgid: &'a mut Option<u64>,
    /// Kept across attempts too: the deadline the first one got.
    deadline: &'a mut Option<Instant>,
    timeout: Duration,
    /// The call's slot, once written.
    slot: Option<u32>,
    result: PhantomData<fn() -> R>,
}

impl<P: Params + ?Sized, R: DeserializeOwned> Future for Attempt<'_, P, R> {
    type Output = Attempted<R>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Attempted<R>> {
        let this = &mut *self;
        let codec = this.core.config.codec;
        let mut st = this.core.lock();
        let Some(idx) = this.slot else {
            // First poll: write the request.
            let Some(epoch) = st.live else {
                return Poll::Ready(Attempted::NotConnected);
            };
            let slot = st.take_slot(epoch, cx.waker());
            let sent = st.proto.send_request(
                *this.msgid,
                this.method,
                &*this.params,
                this.timeout,
                this.deadline.map(Instant::into_std),
                slot,
            );
            match sent {
                Ok(msgid) => {
                    *this.msgid = Some(msgid);
                    st.slots[slot as usize].msgid = msgid;
                    st.wake_writer();
                    this.slot = Some(slot);
                    return Poll::Pending;
                }
                Err(e) => {
                    st.free_slot(slot);
                    return Poll::Ready(Attempted::Done(Err(e.into())));
                }
            }
        };
        let st = &mut *st;
        let slot = &mut st.slots[idx as usize];
        if this.deadline.is_none() && slot.deadline.is_some() {
            *this.deadline = slot.deadline;
        }
        let result = match mem::replace(&mut slot.state, SlotState::Free) {
            SlotState::Waiting => {
                slot.waker.clone_from(cx.waker());
                slot.state = SlotState::Waiting;
                return Poll::Pending;
            }
            SlotState::Replied { ok, big: None } => reply::decode(codec, outcome(ok, &slot.buf)),
            SlotState::Replied { ok, big: Some(frame) } => {
                st.free_slot(idx);
                this.slot = None;
                // A large reply is decoded without holding the lock.
                return Poll::Ready(Attempted::Done(reply::decode(codec, outcome(ok, &frame))));
            }
            SlotState::Failed(e) => Err(e),
            SlotState::Free => Err(Error::Protocol("call slot lost".into())),
        };
        st.free_slot(idx);
        this.slot = None;
        Poll::Ready(Attempted::Done(result))
    }
}

fn outcome(ok: bool, bytes: &[u8]) -> reply::Outcome<'_> {
    if ok {
        Ok(bytes)
    } else {
        Err(bytes)
    }
}

impl<P: ?Sized, R> Drop for Attempt<'_, P, R> {
    /// A call dropped before its reply (its future was dropped, or a `select!` chose
    /// something else): the connection forgets it and, with extensions, tells the server.
    fn drop(&mut self) {
        let Some(idx) = self.slot else { return };
        let mut st = self.core.lock();
        let slot = &st.slots[idx as usize];
        let (msgid, epoch) = (slot.msgid, slot.epoch);
        let waiting = matches!(slot.state, SlotState::Waiting);
        st.free_slot(idx);
        if waiting && st.live == Some(epoch) && st.proto.forget(msgid) && st.proto.has_transmit() {
            st.wake_writer();
        }
    }
}

impl Client {
    /// Connect to `addr` with the default [`Config`].
    ///
    /// # Errors
    ///
    /// When the address cannot be resolved or connecting fails.
    pub async fn connect(addr: impl tokio::net::ToSocketAddrs) -> Result<Client, Error> {
        Client::connect_with(addr, Config::default()).await
    }

    /// Connect to `addr` with `config`.
    ///
    /// # Errors
    ///
    /// When the address cannot be resolved or connecting fails.
    pub async fn connect_with(addr: impl tokio::net::ToSocketAddrs, config: Config) -> Result<Client, Error> {
        let addrs: Vec<_> = tokio::net::lookup_host(addr).await?.collect();
        if addrs.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no address").into());
        }
        let timeout = config.timeout;
        let session = config.unstable_network.then(new_session);
        let proto = ClientConnection::new(config.proto(session), Instant::now().into_std());
        let core = Arc::new(Core {
            addrs,
            session,
            config,
            state: Mutex::new(State::new(proto)),
            connecting: tokio::sync::Mutex::new(()),
        });
        let (stream, rbuf) = connect(&core).await?;
        Driver::start(&core, stream, rbuf);
        Ok(Client {
            handle: Arc::new(Handle(core)),
            timeout,
            idempotent: false,
        })
    }

    /// A handle on the same connection whose calls time out after `timeout`.
    pub fn with_timeout(&self, timeout: Duration) -> Client {
        Client {
            timeout,
            ..self.clone()
        }
    }

    /// A handle on the same connection whose calls are marked idempotent: if the
    /// connection drops before the reply, they are resent after reconnecting instead of
    /// failing with [`Error::ConnectionClosed`].
    pub fn idempotent(&self) -> Client {
        Client {
            idempotent: true,
            ..self.clone()
        }
    }

    /// The session id, in unstable-network mode.
    pub fn session(&self) -> Option<u128> {
        self.handle.0.session
    }

    /// The address this client connects to (the first one its name resolved to).
    pub fn addr(&self) -> SocketAddr {
        self.handle.0.addrs[0]
    }

    fn core(&self) -> &Core {
        &self.handle.0
    }

    /// Call `method` with `params` (a tuple, or a `Vec` of values) and decode the result.
    ///
    /// # Errors
    ///
    /// [`Error::Remote`] for an error reply; [`Error::Timeout`], [`Error::ConnectionClosed`]
    /// and [`Error::Transport`] when no reply came; encode and decode errors.
    pub async fn call<P, R>(&self, method: &str, mut params: P) -> Result<R, Error>
    where
        P: Params,
        R: DeserializeOwned,
    {
        let core = self.core();
        let config = &core.config;
        let session = core.session.is_some();
        let mut msgid = None;
        // Set by the connection task when it takes the call (no clock read per call here),
        // or below when the call has to wait for a connection first.
        let mut deadline = None;
        let mut backoff = config.reconnect_backoff;
        loop {
            let attempt = Attempt {
                core,
                method,
                params: &mut params,
                msgid: &mut msgid,
                deadline: &mut deadline,
                timeout: self.timeout,
                slot: None,
                result: PhantomData,
            };
            let (failure, error) = match attempt.await {
                Attempted::NotConnected => {
                    let deadline = *deadline.get_or_insert_with(|| Instant::now() + self.timeout);
                    // Boxed: the slow path stays out of every call's future.
                    Box::pin(self.reconnect(deadline)).await?;
                    continue;
                }
                Attempted::Done(Err(Error::Remote(e))) if rpc_proto::is_refused(&e) => {
                    (Failure::Refused, Error::Remote(e))
                }
                Attempted::Done(Err(e @ (Error::ConnectionClosed | Error::Transport(_)))) => {
                    (Failure::Lost, e)
                }
                Attempted::Done(Err(Error::Timeout(_))) => return Err(Error::Timeout(self.timeout)),
                Attempted::Done(r) => return r,
            };
            if !may_resend(failure, session, self.idempotent) {
                return Err(error);
            }
            debug!(msgid, method, "resending the call on a new connection");
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + self.timeout);
            let wait = backoff.min(deadline.saturating_duration_since(Instant::now()));
            Box::pin(tokio::time::sleep(wait)).await;
            if Instant::now() >= deadline {
                return Err(Error::Timeout(self.timeout));
            }
            backoff = (backoff * 2).min(config.reconnect_backoff_max);
        }
    }

    /// Call with dynamic MessagePack values in and out.
    ///
    /// # Errors
    ///
    /// As [`Client::call`].
    pub async fn call_value(&self, method: &str, params: Vec<rmpv::Value>) -> Result<rmpv::Value, Error> {
        self.call(method, params).await
    }

    /// Send a notification: the server runs `method` and sends nothing back.
    ///
    /// # Errors
    ///
    /// When the notification could not be encoded, or there was no connection and none
    /// could be made within the client's timeout.
    pub async fn notify<P: Params>(&self, method: &str, params: P) -> Result<(), Error> {
        let deadline = Instant::now() + self.timeout;
        let core = self.core();
        loop {
            {
                let mut st = core.lock();
                if st.live.is_some() {
                    st.proto.send_notification(method, &params)?;
                    st.wake_writer();
                    return Ok(());
                }
            }
            Box::pin(self.reconnect(deadline)).await?;
        }
    }

    /// Connect again (one caller at a time), with backoff until `deadline`.
    async fn reconnect(&self, deadline: Instant) -> Result<(), Error> {
        let core = &self.handle.0;
        let _one_at_a_time = tokio::time::timeout_at(deadline, core.connecting.lock())
            .await
            .map_err(|_| Error::Timeout(self.timeout))?;
        let config = &core.config;
        let mut backoff = config.reconnect_backoff;
        loop {
            if core.lock().live.is_some() {
                return Ok(());
            }
            let attempt = tokio::time::timeout_at(deadline, connect(core));
            match attempt.await {
                Err(_) => return Err(Error::Timeout(self.timeout)),
                Ok(Ok((stream, rbuf))) => {
                    Driver::start(core, stream, rbuf);
                    return Ok(());
                }
                Ok(Err(e)) => {
                    debug!(error = %e, ?backoff, "reconnect failed");
                    if Instant::now() + backoff >= deadline {
                        return Err(e);
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(config.reconnect_backoff_max);
                }
            }
        }
    }
}

/// Open a connection and start the protocol on it (and say hello, with extensions).
async fn connect(core: &Core) -> Result<(TcpStream, BytesMut), Error> {
    let config = &core.config;
    let connect = async {
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
        let mut stream = stream.ok_or(last)?;
        stream.set_nodelay(true)?;
        let rbuf = start(core, &mut stream).await?;
        Ok::<_, Error>((stream, rbuf))
    };
    tokio::time::timeout(config.connect_timeout, connect)
        .await
        .map_err(|_| Error::Timeout(config.connect_timeout))?
}

/// Start the protocol on a new transport: no call can use it yet (`live` is `None`), so
/// the hello, if any, is written and answered before the connection task takes over.
/// Returns what was read after the server's hello.
async fn start<T: AsyncRead + AsyncWrite + Unpin>(core: &Core, stream: &mut T) -> Result<BytesMut, Error> {
    let mut hello = Vec::new();
    let mut rbuf = BytesMut::with_capacity(16 * 1024);
    {
        let mut st = core.lock();
        st.proto.start(Instant::now().into_std());
        st.proto.take_transmit(Instant::now().into_std(), &mut hello);
    }
    if hello.is_empty() {
        return Ok(rbuf);
    }
    stream.write_all(&hello).await?;
    loop {
        if stream.read_buf(&mut rbuf).await? == 0 {
            return Err(Error::ConnectionClosed);
        }
        let mut st = core.lock();
        let State { proto, slots, .. } = &mut *st;
        proto
            .handle_input(&mut rbuf, &mut Deliver { slots })
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
struct Driver<T> {
    core: Arc<Core>,
    epoch: u64,
    stream: T,
    rbuf: BytesMut,
    /// The bytes taken from the protocol, and how much of them is written.
    out: Vec<u8>,
    written: usize,
    /// The deadline timer, and the deadline it is armed at.
    timer: Timer,
    armed: Option<std::time::Instant>,
    ping: Timer,
    /// The ping timer is in use.
    pinging: bool,
    /// The protocol's hint for the next read's size, as of the last read.
    hint: usize,
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Driver<T> {
    /// Make `stream` the live connection and spawn its task.
    fn start(core: &Arc<Core>, stream: T, rbuf: BytesMut) {
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
            out: Vec::new(),
            written: 0,
            timer: Timer::new(now),
            armed: None,
            ping: Timer::new(ping.map_or(now, Instant::from_std)),
            pinging: ping.is_some(),
            hint: 0,
        };
        tokio::spawn(driver.run());
    }

    async fn run(mut self) {
        let end = poll_fn(|cx| self.poll_drive(cx)).await;
        if self.finish(end) {
            // Nobody can call any more: flush what was queued (notifications, cancels).
            let flush = self.stream.write_all(&self.out[self.written..]);
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
                        _ => Error::ConnectionClosed,
                    });
                    slot.deadline = deadline.map(Instant::from_std);
                    slot.waker.wake_by_ref();
                });
                false
            }
            End::Abandoned => {
                let mut rest = Vec::new();
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
            let mut st = self.core.lock();
            let st = &mut *st;
            if read {
                progress = true;
                let delivered = st
                    .proto
                    .handle_input(&mut self.rbuf, &mut Deliver { slots: &mut st.slots });
                if let Err(e) = delivered {
                    return Poll::Ready(End::Lost(Error::Protocol(e.to_string())));
                }
                self.hint = st.proto.read_hint(&self.rbuf);
            }
            if st.task.as_ref().is_none_or(|w| !w.will_wake(cx.waker())) {
                st.task = Some(cx.waker().clone());
            }
            if st.abandoned {
                return Poll::Ready(End::Abandoned);
            }
            if self.written == self.out.len() {
                // Everything handed over is written: take what callers queued since.
                self.written = 0;
                self.out.clear();
                if self.out.capacity() > KEEP_BUFFER {
                    self.out = Vec::new();
                }
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
            if self.written < self.out.len() {
                match Pin::new(&mut self.stream).poll_write(cx, &self.out[self.written..]) {
                    Poll::Ready(Ok(n)) => {
                        self.written += n;
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
                let writing = self.written < self.out.len();
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
