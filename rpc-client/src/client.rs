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

use std::collections::HashMap;
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

use bytes::{Buf, Bytes, BytesMut};
use rpc_proto::{
    encode_notification, encode_request, parse_bincode_response_prefix, parse_response_prefix, Codec,
    ErrorCode, Framer, Hello, Message, Params,
};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tracing::debug;

use crate::config::new_session;
use crate::reply;
use crate::{Config, Error};

/// Replies up to this size are copied into their slot and decoded under the lock; larger
/// ones are handed over as a `Bytes` of the read buffer and decoded after it.
const INLINE_REPLY: usize = 1024;
/// Write buffers larger than this are given back to the allocator once written.
const KEEP_BUFFER: usize = 256 * 1024;
/// The most a reply's headers may make the task reserve ahead of the bytes that arrived.
const HINT_LIMIT: usize = 1024 * 1024;

/// A hasher for msgids: sequential integers need mixing, not SipHash's defence against
/// chosen keys (the client picks its own msgids).
#[derive(Default)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

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
    /// The connection's extensions are on: timeouts travel, cancels are sent.
    extended: bool,
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
    next_id: u64,
    /// Requests (and notifications) for the live connection, not yet taken by its task.
    wbuf: Vec<u8>,
    /// The connection task's waker.
    task: Option<Waker>,
    /// The task has been woken since it last took `wbuf`: no need to wake it again.
    task_notified: bool,
    /// Slots of calls queued since the task last took `wbuf`: the task starts their
    /// deadlines when it takes them (one clock read per batch, not per call).
    fresh: Vec<u32>,
    /// Every handle is gone: the task flushes and ends.
    abandoned: bool,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// The slot of each call waiting for its reply.
    waiting: Waiting,
}

struct Slot {
    msgid: u64,
    /// The connection the call was written on.
    epoch: u64,
    timeout: Duration,
    /// `None` until the connection task takes the call (then `timeout` from then on), or
    /// the first attempt's deadline for a call sent again.
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
    fn new() -> State {
        State {
            live: None,
            epoch: 0,
            next_id: 0,
            wbuf: Vec::new(),
            task: None,
            task_notified: false,
            fresh: Vec::new(),
            abandoned: false,
            slots: Vec::new(),
            free: Vec::new(),
            waiting: Waiting::default(),
        }
    }

    /// Make sure the connection task will look at `wbuf`.
    fn wake_writer(&mut self) {
        if !self.task_notified {
            self.task_notified = true;
            if let Some(task) = &self.task {
                task.wake_by_ref();
            }
        }
    }

    /// Take a slot for a call just queued on connection `epoch`.
    fn take_slot(
        &mut self,
        msgid: u64,
        epoch: u64,
        timeout: Duration,
        deadline: Option<Instant>,
        waker: &Waker,
    ) -> u32 {
        let state = SlotState::Waiting;
        let idx = if let Some(idx) = self.free.pop() {
            let slot = &mut self.slots[idx as usize];
            slot.msgid = msgid;
            slot.epoch = epoch;
            slot.timeout = timeout;
            slot.deadline = deadline;
            slot.state = state;
            slot.waker.clone_from(waker);
            idx
        } else {
            self.slots.push(Slot {
                msgid,
                epoch,
                timeout,
                deadline,
                state,
                waker: waker.clone(),
                buf: Vec::new(),
            });
            // The table grows with the calls in flight; a u32 index is plenty.
            u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
        };
        self.waiting.insert(msgid, idx);
        self.fresh.push(idx);
        self.wake_writer();
        idx
    }

    /// Give a slot back (its reply taken or abandoned).
    fn free_slot(&mut self, idx: u32) {
        let slot = &mut self.slots[idx as usize];
        if let SlotState::Waiting = slot.state {
            self.waiting.remove(slot.msgid);
        }
        slot.state = SlotState::Free;
        if slot.buf.capacity() > INLINE_REPLY * 4 {
            slot.buf = Vec::new();
        }
        self.free.push(idx);
    }

    /// Fail every call waiting on connection `epoch`, making `error` for each.
    fn fail_epoch(&mut self, epoch: u64, error: impl Fn() -> Error) {
        for slot in &mut self.slots {
            if slot.epoch == epoch && matches!(slot.state, SlotState::Waiting) {
                slot.state = SlotState::Failed(error());
                self.waiting.remove(slot.msgid);
                slot.waker.wake_by_ref();
            }
        }
    }
}

/// The slot of each call waiting for its reply, by msgid.
///
/// Msgids are handed out in sequence, so the calls in flight nearly always land in
/// distinct places of a ring indexed by the msgid's low bits (kept at least twice as
/// large as the number of calls); the rare one that collides (a call still waiting when
/// the ring has come round to it again) goes to a map. No hashing on the common path.
#[derive(Default)]
struct Waiting {
    /// `(msgid, slot)`; msgid 0 (never handed out) marks a free place.
    ring: Vec<(u64, u32)>,
    overflow: HashMap<u64, u32, std::hash::BuildHasherDefault<IdHasher>>,
    len: usize,
}

impl Waiting {
    fn place(&self, msgid: u64) -> usize {
        // Truncation intended: the low bits pick the place.
        (msgid as usize) & (self.ring.len() - 1)
    }

    fn insert(&mut self, msgid: u64, slot: u32) {
        if self.len * 2 >= self.ring.len() {
            self.grow();
        }
        let at = self.place(msgid);
        if self.ring[at].0 == 0 {
            self.ring[at] = (msgid, slot);
        } else {
            self.overflow.insert(msgid, slot);
        }
        self.len += 1;
    }

    fn remove(&mut self, msgid: u64) -> Option<u32> {
        if self.ring.is_empty() {
            return None;
        }
        let at = self.place(msgid);
        let found = if self.ring[at].0 == msgid && msgid != 0 {
            let slot = self.ring[at].1;
            self.ring[at] = (0, 0);
            Some(slot)
        } else {
            self.overflow.remove(&msgid)
        };
        if found.is_some() {
            self.len -= 1;
        }
        found
    }

    fn grow(&mut self) {
        let size = (self.ring.len() * 2).max(64);
        let old = mem::replace(&mut self.ring, vec![(0, 0); size]);
        let entries: Vec<(u64, u32)> = old
            .into_iter()
            .filter(|(id, _)| *id != 0)
            .chain(self.overflow.drain())
            .collect();
        for (msgid, slot) in entries {
            let at = self.place(msgid);
            if self.ring[at].0 == 0 {
                self.ring[at] = (msgid, slot);
            } else {
                self.overflow.insert(msgid, slot);
            }
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
    /// The timeout sent with the request (with extensions).
    sent_timeout: Option<Duration>,
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
            let msgid = *this.msgid.get_or_insert_with(|| {
                st.next_id += 1;
                st.next_id
            });
            let encoded = encode_request(
                codec,
                &mut st.wbuf,
                msgid,
                this.method,
                &*this.params,
                this.sent_timeout,
            );
            if let Err(e) = encoded {
                return Poll::Ready(Attempted::Done(Err(e.into())));
            }
            let slot = st.take_slot(msgid, epoch, this.timeout, *this.deadline, cx.waker());
            this.slot = Some(slot);
            return Poll::Pending;
        };
        let st = &mut *st;
        let slot = &mut st.slots[idx as usize];
        if this.deadline.is_none() {
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
        if waiting && self.core.extended && st.live == Some(epoch) {
            // Encoding an integer cannot fail.
            let _ = encode_notification(self.core.config.codec, &mut st.wbuf, "rpc.cancel", &(msgid,));
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
        let core = Arc::new(Core {
            addrs,
            session: config.unstable_network.then(new_session),
            extended: config.uses_hello(),
            config,
            state: Mutex::new(State::new()),
            connecting: tokio::sync::Mutex::new(()),
        });
        let (stream, rbuf) = connect(&core.addrs, &core.config, core.session).await?;
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
        let sent_timeout = core.extended.then_some(self.timeout);
        // Resending is safe when the server dedups, or the caller said so.
        let resend = core.session.is_some() || self.idempotent;
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
                sent_timeout,
                slot: None,
                result: PhantomData,
            };
            let retry = match attempt.await {
                Attempted::NotConnected => {
                    let deadline = *deadline.get_or_insert_with(|| Instant::now() + self.timeout);
                    // Boxed: the slow path stays out of every call's future.
                    Box::pin(self.reconnect(deadline)).await?;
                    continue;
                }
                // Refused before it ran: always safe to send again.
                Attempted::Done(Err(Error::Remote(e))) if e.kind() == ErrorCode::ShuttingDown => true,
                Attempted::Done(Err(e @ (Error::ConnectionClosed | Error::Transport(_)))) if !resend => {
                    return Err(e);
                }
                Attempted::Done(Err(Error::ConnectionClosed | Error::Transport(_))) => true,
                Attempted::Done(Err(Error::Timeout(_))) => return Err(Error::Timeout(self.timeout)),
                Attempted::Done(r) => return r,
            };
            debug_assert!(retry);
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
                    encode_notification(core.config.codec, &mut st.wbuf, method, &params)?;
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
            let attempt = tokio::time::timeout_at(deadline, connect(&core.addrs, config, core.session));
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

/// Open a connection (and say hello, with extensions).
async fn connect(
    addrs: &[SocketAddr],
    config: &Config,
    session: Option<u128>,
) -> Result<(TcpStream, BytesMut), Error> {
    let connect = async {
        let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address");
        let mut stream = None;
        for addr in addrs {
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
        let mut rbuf = BytesMut::with_capacity(16 * 1024);
        if config.uses_hello() {
            let mut hello = Vec::new();
            Hello::new(config.codec).with_session(session).encode(&mut hello);
            stream.write_all(&hello).await?;
            loop {
                match Hello::decode(&rbuf) {
                    Ok(Some((h, n))) if h.codec == config.codec => {
                        rbuf.advance(n);
                        break;
                    }
                    Ok(None) => {
                        if stream.read_buf(&mut rbuf).await? == 0 {
                            return Err(Error::ConnectionClosed);
                        }
                    }
                    _ => return Err(Error::Protocol("the server did not accept the hello".into())),
                }
            }
        }
        Ok::<_, Error>((stream, rbuf))
    };
    tokio::time::timeout(config.connect_timeout, connect)
        .await
        .map_err(|_| Error::Timeout(config.connect_timeout))?
}

/// Why the connection task stopped.
enum End {
    /// The connection failed or closed: the calls on it fail with this.
    Lost(Error),
    /// Every client handle is gone.
    Abandoned,
}

/// The connection task: writes what callers queued, puts replies into their slots, fails
/// calls past their deadline, pings when idle.
struct Driver {
    core: Arc<Core>,
    epoch: u64,
    stream: TcpStream,
    rbuf: BytesMut,
    framer: Framer,
    /// The framer holds a message begun in an earlier read.
    framing: bool,
    /// The size of the last reply too large to copy (0 before the first).
    large: usize,
    /// The write buffer taken from the callers, and how much of it is written.
    out: Vec<u8>,
    written: usize,
    /// The deadline timer, and the deadline it is armed at.
    timer: Timer,
    armed: Option<Instant>,
    ping: Timer,
    heartbeat: Option<Duration>,
    /// When the last batch was taken from the callers (as good as when it was written,
    /// for the heartbeat).
    last_write: Instant,
}

impl Driver {
    /// Make `stream` the live connection and spawn its task.
    fn start(core: &Arc<Core>, stream: TcpStream, rbuf: BytesMut) {
        let epoch = {
            let mut st = core.lock();
            st.epoch += 1;
            st.live = Some(st.epoch);
            st.wbuf.clear();
            st.task = None;
            st.task_notified = false;
            st.fresh.clear();
            st.epoch
        };
        let config = &core.config;
        let heartbeat = config.heartbeat_interval;
        let now = Instant::now();
        let driver = Driver {
            core: core.clone(),
            epoch,
            stream,
            rbuf,
            framer: Framer::new(config.codec, config.max_message_size),
            framing: false,
            large: 0,
            out: Vec::new(),
            written: 0,
            timer: Timer::new(now),
            armed: None,
            ping: Timer::new(now + heartbeat.unwrap_or(Duration::ZERO)),
            heartbeat,
            last_write: now,
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
        let ours = st.live == Some(self.epoch);
        if ours {
            st.live = None;
            st.task = None;
        }
        match end {
            End::Lost(error) => {
                debug!(error = %error, "connection lost");
                // Calls written and not yet answered fail, and so do those queued and
                // never written (`wbuf` belongs to this connection).
                if ours {
                    st.wbuf.clear();
                }
                st.fail_epoch(self.epoch, || match &error {
                    Error::Transport(e) => Error::Transport(io::Error::new(e.kind(), e.to_string())),
                    Error::Protocol(p) => Error::Protocol(p.clone()),
                    _ => Error::ConnectionClosed,
                });
                false
            }
            End::Abandoned => {
                self.out.append(&mut st.wbuf);
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
            let hint = self.framer.needed(&self.rbuf).max(self.large).min(HINT_LIMIT);
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
            if read {
                progress = true;
                if let Err(e) = deliver(
                    &mut self.framer,
                    &mut self.framing,
                    &mut self.large,
                    &mut self.rbuf,
                    &mut st,
                ) {
                    return Poll::Ready(End::Lost(e));
                }
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
                mem::swap(&mut self.out, &mut st.wbuf);
                st.task_notified = false;
                if !self.out.is_empty() {
                    // One clock read per batch: the heartbeat's and the new calls' deadlines.
                    let now = Instant::now();
                    self.last_write = now;
                    if !st.fresh.is_empty() {
                        start_deadlines(&mut st, now, &mut self.armed, &mut self.timer);
                    }
                }
            }
            drop(st);
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
                self.expire();
                progress = true;
            }
            if let Some(heartbeat) = self.heartbeat {
                if self.ping.fired(cx) {
                    self.heartbeat(heartbeat);
                    progress = true;
                }
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }

    /// The deadline timer fired: fail the calls whose deadline passed, re-arm at the
    /// earliest one left.
    fn expire(&mut self) {
        let now = Instant::now();
        let codec = self.core.config.codec;
        let extended = self.core.extended;
        let mut st = self.core.lock();
        let st = &mut *st;
        let mut next: Option<Instant> = None;
        for slot in &mut st.slots {
            if slot.epoch != self.epoch {
                continue;
            }
            if let SlotState::Waiting = slot.state {
                // Not started yet: queued after the last batch; the next one starts it.
                let Some(deadline) = slot.deadline else { continue };
                if deadline > now {
                    next = Some(next.map_or(deadline, |n| n.min(deadline)));
                    continue;
                }
                // The caller puts its own timeout in the error.
                slot.state = SlotState::Failed(Error::Timeout(Duration::ZERO));
                st.waiting.remove(slot.msgid);
                if extended {
                    let _ = encode_notification(codec, &mut st.wbuf, "rpc.cancel", &(slot.msgid,));
                    st.task_notified = true;
                }
                slot.waker.wake_by_ref();
            }
        }
        self.armed = next;
        if let Some(at) = next {
            self.timer.reset(at);
        }
    }

    /// The heartbeat timer fired: ping if nothing was written for a whole interval.
    fn heartbeat(&mut self, interval: Duration) {
        let now = Instant::now();
        if now.duration_since(self.last_write) >= interval && self.written == self.out.len() {
            let mut st = self.core.lock();
            if st.wbuf.is_empty() {
                let _ = encode_notification(self.core.config.codec, &mut st.wbuf, "rpc.ping", &());
            }
            self.ping.reset(now + interval);
        } else {
            self.ping.reset(self.last_write + interval);
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

/// Start the deadlines of the calls queued since the last batch, and arm the timer (armed
/// at `armed`) if one of them is the earliest.
fn start_deadlines(st: &mut State, now: Instant, armed: &mut Option<Instant>, timer: &mut Timer) {
    let mut earliest = *armed;
    for idx in st.fresh.drain(..) {
        let slot = &mut st.slots[idx as usize];
        // A slot freed (its call dropped) since it was queued holds nothing to time.
        if let SlotState::Waiting = slot.state {
            let deadline = *slot.deadline.get_or_insert(now + slot.timeout);
            if earliest.is_none_or(|e| deadline < e) {
                earliest = Some(deadline);
            }
        }
    }
    if earliest != *armed {
        *armed = earliest;
        if let Some(at) = earliest {
            timer.reset(at);
        }
    }
}

/// Hand every complete reply in the read buffer to its caller. `framing`: the framer
/// holds a message begun in an earlier read (the one-pass path must not start over).
fn deliver(
    framer: &mut Framer,
    framing: &mut bool,
    large: &mut usize,
    rbuf: &mut BytesMut,
    st: &mut State,
) -> Result<(), Error> {
    let codec = framer.codec();
    let max = framer.max_message_size();
    // Small replies are read in place and the buffer advanced once for the batch.
    let mut at = 0;
    let result = loop {
        // A success reply is framed and parsed in one pass (its msgid, and where its result
        // starts); anything else, or a message begun in an earlier read, goes through the
        // framer and is parsed below.
        let buf = &rbuf[at..];
        let parsed = match (*framing, codec) {
            (false, Codec::Msgpack) => parse_response_prefix(buf, max),
            (false, Codec::Bincode) => parse_bincode_response_prefix(buf, max),
            _ => None,
        };
        let one_pass = match parsed {
            // The result is the frame's last element: it ends where the frame does.
            Some((
                Message::Response {
                    msgid,
                    outcome: Ok(result),
                },
                n,
            )) => Some((msgid, n - result.len(), n)),
            _ => None,
        };
        let n = match one_pass {
            Some((_, _, n)) => n,
            None => match framer.decode(buf) {
                Ok(None) => {
                    *framing = !buf.is_empty();
                    break Ok(());
                }
                Ok(Some(n)) => {
                    *framing = false;
                    n
                }
                Err(e) => break Err(Error::Protocol(e.to_string())),
            },
        };
        let known = one_pass.map(|(msgid, start, _)| (msgid, start));
        if n <= INLINE_REPLY {
            put_frame(st, codec, &buf[..n], known, None);
            at += n;
        } else {
            *large = n;
            rbuf.advance(at);
            at = 0;
            let frame = rbuf.split_to(n).freeze();
            put_frame(st, codec, &frame, known, Some(&frame));
        }
    };
    rbuf.advance(at);
    result
}

/// Put the reply in `frame` into its caller's slot: `known` is its msgid and where its
/// result starts when it was parsed already; otherwise it is parsed here.
fn put_frame(
    st: &mut State,
    codec: Codec,
    frame: &[u8],
    known: Option<(u64, usize)>,
    shared: Option<&Bytes>,
) {
    match known {
        Some((msgid, start)) => put(st, msgid, true, &frame[start..], shared),
        None => parse_and_put(st, codec, frame, shared),
    }
}

/// Parse one message from the server; if it is a reply, put it into its caller's slot.
fn parse_and_put(st: &mut State, codec: Codec, frame: &[u8], shared: Option<&Bytes>) {
    match reply::parse(codec, frame) {
        Ok(Some((msgid, Ok(result)))) => put(st, msgid, true, result, shared),
        Ok(Some((msgid, Err(error)))) => put(st, msgid, false, error, shared),
        Ok(None) => debug!("message from the server ignored"),
        Err(e) => debug!(error = %e, "malformed message from the server ignored"),
    }
}

/// Put a reply's result (`ok`) or error value into its caller's slot and wake the caller.
/// `shared` is the whole frame as `Bytes` when it is too large to copy.
fn put(st: &mut State, msgid: u64, ok: bool, part: &[u8], shared: Option<&Bytes>) {
    let Some(idx) = st.waiting.remove(msgid) else {
        return debug!(msgid, "reply to a call nobody waits for");
    };
    let slot = &mut st.slots[idx as usize];
    let big = shared.map(|frame| frame.slice_ref(part));
    if big.is_none() {
        slot.buf.clear();
        slot.buf.extend_from_slice(part);
    }
    if let SlotState::Waiting = mem::replace(&mut slot.state, SlotState::Replied { ok, big }) {
        slot.waker.wake_by_ref();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_calls_by_msgid_with_collisions_and_growth() {
        let mut w = Waiting::default();
        assert_eq!(w.remove(1), None);
        // A long call (msgid 1), then many short ones whose msgids come round the ring.
        w.insert(1, 100);
        for id in 2..2000u64 {
            w.insert(id, id as u32);
            assert_eq!(w.remove(id), Some(id as u32), "msgid {id}");
            assert_eq!(w.remove(id), None, "msgid {id} removed twice");
        }
        // Calls colliding with msgid 1 in a 64- or 128-place ring, all in flight at once.
        let colliding: Vec<u64> = (1..=40).map(|k| 1 + 64 * k).collect();
        for &id in &colliding {
            w.insert(id, id as u32);
        }
        assert_eq!(w.len, 41);
        // Grown past the collisions, or kept in the overflow map: every one is found.
        for &id in colliding.iter().rev() {
            assert_eq!(w.remove(id), Some(id as u32), "msgid {id}");
        }
        assert_eq!(w.remove(1), Some(100));
        assert_eq!(w.len, 0);
        assert!(w.overflow.is_empty());
        assert_eq!(w.remove(0), None, "msgid 0 is never a call");
    }
}
