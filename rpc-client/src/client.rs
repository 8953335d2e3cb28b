//! The async client: one connection, many calls in flight.
//!
//! # Layout
//!
//! - `client.rs` (this file): [`Client`], its calls and the retry loop around each.
//! - `state.rs`: what the calls and the connection task share behind one lock: the
//!   protocol's [`ClientConnection`] (msgids, the in-flight table, deadlines, the bytes
//!   queued for the transport) and a table of call slots its tokens point at.
//! - `driver.rs`: connecting, and the connection task that moves bytes between the
//!   transport and the protocol and keeps its timers.
//!
//! A call takes the lock once to encode its request straight into the queued bytes and
//! take a slot, and once more to take its reply out of the slot. The connection task swaps
//! the queued bytes out and writes them with one syscall, however many calls queued them;
//! it hands every reply that one read brought to the protocol, which puts each into its
//! caller's slot, and wakes the caller. There is no channel, no task and no timer per
//! call, and once the slot table has grown to the number of calls in flight, no
//! allocation per call either (a small reply is copied into its slot's buffer, which keeps
//! its capacity).
//!
//! Deadlines: the protocol starts each call's deadline when the connection task takes it
//! (one clock read per batch) and tells the task the earliest one; the task keeps one timer
//! armed there, and when it fires the protocol fails the calls whose deadline passed.

use std::fmt;
use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::mem;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use easyrpc_proto::{may_resend, ClientConnection, Failure, Metadata, Params};
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tracing::debug;

mod balance;
#[cfg(feature = "etcd")]
pub(crate) mod discover;
mod driver;
mod state;
mod stream;

pub use balance::InstanceState;
use driver::connect;
use state::{SlotState, State};
pub use stream::ItemStream;

use crate::config::new_session;
use crate::foreign::foreign;
use crate::reply;
use crate::reply::{Decoder, NativeValue, Serde};
use crate::tls::Connector;
#[cfg(feature = "tls")]
use crate::ClientTls;
use crate::{Config, Error};

/// An async client for any MessagePack-RPC server.
///
/// Cheap to clone: clones share one connection, on which many calls may be in flight;
/// each reply is matched to its call by msgid. When the connection drops, every call in
/// flight fails at once with [`Error::ConnectionClosed`] and the next call reconnects
/// (with exponential backoff, within the call's timeout). Calls that are safe to resend
/// are resent on the new connection: with `unstable_network` (the server answers a
/// retry from its dedup cache), calls made through [`Client::idempotent`], and calls a
/// server of ours refused because it was shutting down.
///
/// A client made with [`Client::balanced`] (or `Client::discover`, feature `etcd`) calls
/// several servers instead, one connection each, and picks one per call; the same methods
/// work on it, typed stubs included.
///
/// Requests and notifications the server sends are handed to the handlers registered with
/// [`Config::on_request`](crate::Config::on_request) and
/// [`Config::on_notification`](crate::Config::on_notification), and requests with none are
/// answered method-not-found, all without holding up the calls.
///
/// ```no_run
/// # async fn demo() -> Result<(), easyrpc_client::Error> {
/// let client = easyrpc_client::Client::connect("127.0.0.1:25000").await?;
/// let sum: i64 = client.call("add", (1, 2)).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    target: Target,
    timeout: Duration,
    idempotent: bool,
    /// Metadata sent with every call of this handle, encoded.
    metadata: Option<Arc<[u8]>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.addr())
            .field("timeout", &self.timeout)
            .field("idempotent", &self.idempotent)
            .field("codec", &self.config().codec)
            .finish_non_exhaustive()
    }
}

/// What a client calls: one server, or several with a balancer in front.
#[derive(Clone)]
enum Target {
    One(Arc<Handle>),
    Balanced(Arc<balance::Pool>),
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
    /// A Unix-domain socket to connect to instead (then `addrs` is empty).
    #[cfg(unix)]
    unix: Option<std::path::PathBuf>,
    /// TLS over the TCP connection ([`Client::connect_tls`]): each connection, the first
    /// and every reconnect, does a full handshake.
    tls: Option<Connector>,
    config: Config,
    session: Option<u128>,
    state: Mutex<State>,
    /// One reconnection at a time.
    connecting: tokio::sync::Mutex<()>,
}

impl Core {
    /// A connection state for `addrs` (or `unix`), not yet connected.
    fn new(
        addrs: Vec<SocketAddr>,
        #[cfg_attr(not(unix), allow(unused_variables))] unix: Option<std::path::PathBuf>,
        tls: Option<Connector>,
        config: Config,
    ) -> Result<Arc<Core>, Error> {
        let session = config.unstable_network.then(new_session).transpose()?;
        let proto = ClientConnection::new(config.proto(session), Instant::now().into_std());
        Ok(Arc::new(Core {
            addrs,
            #[cfg(unix)]
            unix,
            tls,
            session,
            config,
            state: Mutex::new(State::new(proto)),
            connecting: tokio::sync::Mutex::new(()),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere (in a caller's `Serialize`, say):
        // every update below leaves the state consistent before anything can panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How one attempt at a call ended.
enum Attempted<R> {
    /// There is no live connection: connect, then try again.
    NotConnected,
    Done(Result<R, Error>),
}

/// One attempt at a call: writes it on the live connection, then waits for its reply.
struct Attempt<'a, P: ?Sized, R, D> {
    core: &'a Core,
    method: &'a str,
    /// `&mut` rather than `&` only so that the call's future is `Send` without `P: Sync`.
    params: &'a mut P,
    /// Kept across attempts: a resent call keeps its msgid (the server's dedup key).
    msgid: &'a mut Option<u64>,
    /// Kept across attempts too: the deadline the first one got.
    deadline: &'a mut Option<Instant>,
    timeout: Duration,
    metadata: Option<&'a [u8]>,
    /// The call's slot, once written.
    slot: Option<u32>,
    result: PhantomData<fn() -> (R, D)>,
}

impl<P: Params + ?Sized, R, D: Decoder<R>> Future for Attempt<'_, P, R, D> {
    type Output = Attempted<R>;

    #[inline]
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
                this.metadata,
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
            // An error from a server that is not ours has codes of its own (only error
            // replies ask).
            SlotState::Replied { ok: false, big } if !st.proto.is_server_ours() => {
                Err(foreign(big.as_deref().unwrap_or(&slot.buf)))
            }
            SlotState::Replied { ok, big: None } => D::decode(codec, outcome(ok, &slot.buf)),
            SlotState::Replied { ok, big: Some(frame) } => {
                st.free_slot(idx);
                this.slot = None;
                // A large reply is decoded without holding the lock.
                // A large `Blob` in it is a slice of the reply, not a copy.
                let decoded =
                    easyrpc_proto::blob::with_frame(&frame, || D::decode(codec, outcome(ok, &frame)));
                return Poll::Ready(Attempted::Done(decoded));
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

impl<P: ?Sized, R, D> Drop for Attempt<'_, P, R, D> {
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
        Client::start(addrs, None, None, config).await
    }

    /// Connect to `addr` (`host:port`) over TLS with the default [`Config`]. The server's
    /// certificate must be issued by a CA `tls` trusts and be valid for the host of `addr`
    /// (or for [`ClientTls::server_name`]). Every reconnect does the handshake again.
    ///
    /// ```no_run
    /// use easyrpc_client::{Client, ClientTls};
    ///
    /// # async fn demo() -> Result<(), easyrpc_client::Error> {
    /// let tls = ClientTls::from_ca_file("ca.crt")?;
    /// let client = Client::connect_tls("localhost:25000", tls).await?;
    /// let sum: i64 = client.call("add", (1, 2)).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Tls`] when the handshake fails, naming the cause (an unknown CA, a name
    /// mismatch, an expired certificate...); otherwise as [`Client::connect`]. A server
    /// that requires a client certificate may refuse one only after the handshake (TLS
    /// 1.3): then the first call fails with [`Error::Tls`].
    #[cfg(feature = "tls")]
    pub async fn connect_tls(addr: &str, tls: ClientTls) -> Result<Client, Error> {
        Client::connect_tls_with(addr, tls, Config::default()).await
    }

    /// [`Client::connect_tls`] with `config`.
    ///
    /// ```no_run
    /// use easyrpc_client::{Client, ClientTls, Codec, Config};
    ///
    /// # async fn demo() -> Result<(), easyrpc_client::Error> {
    /// let mut config = Config::default();
    /// config.codec = Codec::Bincode;
    /// let tls = ClientTls::from_ca_file("ca.crt")?.server_name("localhost");
    /// let client = Client::connect_tls_with("127.0.0.1:25000", tls, config).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Client::connect_tls`].
    #[cfg(feature = "tls")]
    pub async fn connect_tls_with(addr: &str, tls: ClientTls, config: Config) -> Result<Client, Error> {
        let connector = tls.connector(addr)?;
        let addrs: Vec<_> = tokio::net::lookup_host(addr).await?.collect();
        if addrs.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no address").into());
        }
        Client::start(addrs, None, Some(connector), config).await
    }

    /// Connect to the Unix-domain socket `path` (a server's `run_unix`) with the default
    /// [`Config`]: the same protocol, with no TCP in the way.
    ///
    /// # Errors
    ///
    /// When connecting fails ([`Error::Unavailable`] when nothing listens there).
    #[cfg(unix)]
    pub async fn connect_unix(path: impl AsRef<std::path::Path>) -> Result<Client, Error> {
        Client::connect_unix_with(path, Config::default()).await
    }

    /// Connect to the Unix-domain socket `path` with `config`.
    ///
    /// # Errors
    ///
    /// As [`Client::connect_unix`].
    #[cfg(unix)]
    pub async fn connect_unix_with(
        path: impl AsRef<std::path::Path>,
        config: Config,
    ) -> Result<Client, Error> {
        Client::start(Vec::new(), Some(path.as_ref().to_owned()), None, config).await
    }

    async fn start(
        addrs: Vec<SocketAddr>,
        #[cfg_attr(not(unix), allow(unused_variables))] unix: Option<std::path::PathBuf>,
        tls: Option<Connector>,
        config: Config,
    ) -> Result<Client, Error> {
        let timeout = config.timeout;
        let core = Core::new(addrs, unix, tls, config)?;
        connect(&core).await?;
        Ok(Client {
            target: Target::One(Arc::new(Handle(core))),
            timeout,
            idempotent: false,
            metadata: None,
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

    /// A handle on the same connection whose calls carry `metadata` (string pairs the
    /// server's handlers and layers read from their `Context`, like gRPC metadata). For a
    /// single call, make a handle for it: `add::call(&client.with_metadata(md)?, 1, 2)`.
    ///
    /// Metadata is an extension, sent after the hello: the client must be configured with
    /// [`Config::extensions`] (or bincode, or unstable-network mode), and the server built
    /// with this framework. It counts in the message size.
    ///
    /// # Errors
    ///
    /// [`Error::NeedsExtensions`] when the client does not use the extensions.
    pub fn with_metadata(&self, metadata: Metadata) -> Result<Client, Error> {
        if !self.config().uses_hello() {
            return Err(Error::NeedsExtensions("call metadata"));
        }
        Ok(Client {
            metadata: Some(Arc::from(metadata.encode())),
            ..self.clone()
        })
    }

    /// The session id, in unstable-network mode (`None` for a balanced client: each
    /// instance has a session of its own).
    pub fn session(&self) -> Option<u128> {
        match &self.target {
            Target::One(handle) => handle.0.session,
            Target::Balanced(_) => None,
        }
    }

    fn config(&self) -> &Config {
        match &self.target {
            Target::One(handle) => &handle.0.config,
            Target::Balanced(pool) => pool.config(),
        }
    }

    /// The address this client connects to (the first one its name resolved to); the
    /// unspecified address `0.0.0.0:0` for a client of a Unix-domain socket, and for a
    /// balanced client with no instance (else its first instance's).
    pub fn addr(&self) -> SocketAddr {
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        match &self.target {
            Target::One(handle) => handle.0.addrs.first().copied().unwrap_or(unspecified),
            Target::Balanced(pool) => pool.first_addr().unwrap_or(unspecified),
        }
    }

    /// The one server's connection state. Balanced clients take another path before this.
    fn core(&self) -> &Arc<Core> {
        match &self.target {
            Target::One(handle) => &handle.0,
            Target::Balanced(_) => unreachable!("a balanced client calls through its pool"),
        }
    }

    /// Call `method` with `params` (a tuple, or a `Vec` of values) and decode the result.
    ///
    /// # Errors
    ///
    /// [`Error::Remote`] for an error reply from a server that answered our hello (codes
    /// ours), [`Error::Foreign`] from any other (codes its own); [`Error::Timeout`],
    /// [`Error::ConnectionClosed`] and [`Error::Transport`] when no reply came; encode and
    /// decode errors.
    pub async fn call<P, R>(&self, method: &str, params: P) -> Result<R, Error>
    where
        P: Params,
        R: DeserializeOwned,
    {
        self.call_decoded::<P, R, Serde>(method, params)
            .await
            .map_err(|e| crate::error::name_result::<R>(method, e))
    }

    /// A call whose result `D` decodes.
    async fn call_decoded<P, R, D>(&self, method: &str, mut params: P) -> Result<R, Error>
    where
        P: Params,
        D: Decoder<R>,
    {
        let core = match &self.target {
            Target::One(handle) => &handle.0,
            // Boxed: the balanced path stays out of the one-server call's future.
            Target::Balanced(pool) => {
                return Box::pin(pool.call::<P, R, D>(
                    method,
                    params,
                    self.timeout,
                    self.idempotent,
                    self.metadata.as_deref(),
                ))
                .await;
            }
        };
        let config = &core.config;
        let session = core.session.is_some();
        let mut msgid = None;
        // Set by the connection task when it takes the call (no clock read per call here),
        // or below when the call has to wait for a connection first.
        let mut deadline = None;
        let mut backoff = config.reconnect_backoff;
        loop {
            let attempt = Attempt::<P, R, D> {
                core,
                method,
                params: &mut params,
                msgid: &mut msgid,
                deadline: &mut deadline,
                timeout: self.timeout,
                metadata: self.metadata.as_deref(),
                slot: None,
                result: PhantomData,
            };
            let (failure, error) = match attempt.await {
                Attempted::NotConnected => {
                    let deadline = *deadline.get_or_insert_with(|| Instant::now() + self.timeout);
                    // A call never sent fails fast when the server refuses; one to be sent
                    // again keeps trying (the server may be restarting).
                    let fail_fast = !config.wait_for_ready && msgid.is_none();
                    // Boxed: the slow path stays out of every call's future.
                    Box::pin(self.reconnect(deadline, fail_fast)).await?;
                    continue;
                }
                Attempted::Done(Err(Error::Remote(e))) if easyrpc_proto::is_refused(&e) => {
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
    /// As [`Client::call`]. A function's own error comes as [`Error::Remote`], its data (when
    /// it sent some) a value too: [`ServerError::data_value`](easyrpc_proto::ServerError::data_value).
    /// The result is read natively from MessagePack: a str whose bytes are not UTF-8 stays a
    /// `Value::String` (serde would make it `Value::Binary`).
    pub async fn call_value(&self, method: &str, params: Vec<rmpv::Value>) -> Result<rmpv::Value, Error> {
        self.call_decoded::<_, _, NativeValue>(method, params).await
    }

    /// Send a notification: the server runs `method` and sends nothing back.
    ///
    /// # Errors
    ///
    /// When the notification could not be encoded, or there was no connection and none
    /// could be made within the client's timeout.
    pub async fn notify<P: Params>(&self, method: &str, params: P) -> Result<(), Error> {
        let deadline = Instant::now() + self.timeout;
        let core = match &self.target {
            Target::One(handle) => &handle.0,
            Target::Balanced(pool) => return pool.notify(method, params, deadline).await,
        };
        loop {
            {
                let mut st = core.lock();
                if st.live.is_some() {
                    st.proto.send_notification(method, &params)?;
                    st.wake_writer();
                    return Ok(());
                }
            }
            Box::pin(self.reconnect(deadline, !core.config.wait_for_ready)).await?;
        }
    }

    /// Connect again (one caller at a time), with backoff until `deadline`; with
    /// `fail_fast`, a refused connection ends it at once ([`Error::Unavailable`]).
    async fn reconnect(&self, deadline: Instant, fail_fast: bool) -> Result<(), Error> {
        reconnect(self.core(), deadline, fail_fast, self.timeout).await
    }
}

/// How a call on one instance of a balanced client ended.
enum Sent<R> {
    /// With an answer (a result or an error the server sent), or an error that another
    /// instance would not change (a timeout, an encoding error).
    Done(Result<R, Error>),
    /// Without one: what happened, for the resend rule, and the error to report if the
    /// call is not sent again.
    Failed(Failure, Error),
}

/// One call on `core` (an instance of a balanced client), until `deadline`. A call of a
/// dedup session stays on its instance while it can be reached: when the connection drops
/// it is resent there with the same msgid (the server's dedup key) after reconnecting; only
/// when that fails does it end as [`Failure::Lost`].
async fn call_on<P, R, D>(
    core: &Arc<Core>,
    method: &str,
    params: &mut P,
    deadline: Instant,
    timeout: Duration,
    metadata: Option<&[u8]>,
) -> Sent<R>
where
    P: Params,
    D: Decoder<R>,
{
    let session = core.session.is_some();
    let mut msgid = None;
    let mut call_deadline = Some(deadline);
    loop {
        let attempt = Attempt::<P, R, D> {
            core,
            method,
            params: &mut *params,
            msgid: &mut msgid,
            deadline: &mut call_deadline,
            timeout,
            metadata,
            slot: None,
            result: PhantomData,
        };
        let lost = match attempt.await {
            Attempted::NotConnected if msgid.is_none() => {
                return Sent::Failed(Failure::NotSent, Error::ConnectionClosed);
            }
            Attempted::NotConnected => Error::ConnectionClosed,
            Attempted::Done(Err(Error::Remote(e))) if easyrpc_proto::is_refused(&e) => {
                return Sent::Failed(Failure::Refused, Error::Remote(e));
            }
            Attempted::Done(Err(e @ (Error::ConnectionClosed | Error::Transport(_)))) => e,
            Attempted::Done(Err(Error::Timeout(_))) => return Sent::Done(Err(Error::Timeout(timeout))),
            Attempted::Done(r) => return Sent::Done(r),
        };
        if !session {
            return Sent::Failed(Failure::Lost, lost);
        }
        // The session's dedup cache is on this server: try it again first, for as long as
        // one connection attempt may take.
        let until = deadline.min(Instant::now() + core.config.connect_timeout);
        if let Err(e) = reconnect(core, until, true, timeout).await {
            debug!(error = %e, "the session's instance cannot be reached");
            return Sent::Failed(Failure::Lost, lost);
        }
        debug!(msgid, method, "resending the call of the session on its instance");
    }
}

/// Send a notification on `core` if it has a live connection; `false` when it has none.
fn notify_on<P: Params>(core: &Core, method: &str, params: &P) -> Result<bool, Error> {
    let mut st = core.lock();
    if st.live.is_none() {
        return Ok(false);
    }
    st.proto.send_notification(method, params)?;
    st.wake_writer();
    Ok(true)
}

/// [`Client::reconnect`] for `core`; `timeout` is the call's, for its error.
async fn reconnect(
    core: &Arc<Core>,
    deadline: Instant,
    fail_fast: bool,
    timeout: Duration,
) -> Result<(), Error> {
    let _one_at_a_time = tokio::time::timeout_at(deadline, core.connecting.lock())
        .await
        .map_err(|_| Error::Timeout(timeout))?;
    let config = &core.config;
    let mut backoff = config.reconnect_backoff;
    loop {
        if core.lock().live.is_some() {
            return Ok(());
        }
        let attempt = tokio::time::timeout_at(deadline, connect(core));
        match attempt.await {
            Err(_) => return Err(Error::Timeout(timeout)),
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e @ Error::Unavailable(_))) if fail_fast => return Err(e),
            // A certificate or settings problem does not go away by trying again.
            Ok(Err(e @ Error::Tls { cause, .. })) if !cause.is_transient() => return Err(e),
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
