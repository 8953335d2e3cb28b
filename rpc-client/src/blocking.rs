//! The blocking client: std sockets, no runtime; a loop over the protocol's
//! [`ClientConnection`], one call at a time.

use std::fmt;
use std::io::{self, Read, Write};
use std::marker::PhantomData;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use easyrpc_proto::{
    may_resend, ClientConnection, ClientReply, Codec, Failure, Metadata, Params, ReadBuf, Replies,
};
use serde::de::DeserializeOwned;

use crate::config::new_session;
use crate::foreign::decode_reply;
use crate::handlers::{notify, Handlers, Incoming};
use crate::reply::{Decoder, NativeValue, Serde};
use crate::tls::Connector;
#[cfg(feature = "tls")]
use crate::ClientTls;
use crate::{Config, Error};
use easyrpc_proto::blob::Outbox;

/// A write buffer larger than this (a large request) is given back once written.
const KEEP_WRITE_BUFFER: usize = 256 * 1024;

/// After this long unused, the connection is checked (one non-blocking peek) before a
/// call is sent on it, so that a connection the server closed as idle is replaced instead
/// of failing the call.
const STALE_AFTER: Duration = Duration::from_secs(1);
const READ_CHUNK: usize = 64 * 1024;
/// A reply larger than this is handed over as `Bytes` of the read buffer (so that a large
/// `Blob` in it needs no copy); smaller ones are decoded where they lie.
const SPLIT_REPLY: usize = 256 * 1024;

mod stream;
pub use stream::BlockingItems;

/// A byte stream the blocking client can call over: TCP, a Unix-domain socket, TLS over
/// TCP (`tls.rs`); anything with blocking reads and writes, a timeout and a way to tell
/// that the peer closed it.
pub(crate) trait Stream: Read + Write + Send {
    /// Set the read and write timeouts.
    fn set_timeouts(&self, t: Duration) -> io::Result<()>;
    /// A non-blocking check: has the peer closed the stream? (`&mut`: TLS must read what
    /// has arrived to tell.)
    fn is_closed(&mut self) -> bool;
}

/// A non-blocking peek on an idle stream: end of stream or an error (other than "nothing
/// yet") means the peer closed it. Any failure to switch modes counts as closed too.
fn peer_closed(
    set_nonblocking: impl Fn(bool) -> io::Result<()>,
    peek: impl FnOnce() -> io::Result<usize>,
) -> bool {
    if set_nonblocking(true).is_err() {
        return true;
    }
    let closed = match peek() {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != io::ErrorKind::WouldBlock,
    };
    closed || set_nonblocking(false).is_err()
}

impl Stream for TcpStream {
    fn set_timeouts(&self, t: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(t))?;
        self.set_write_timeout(Some(t))
    }

    fn is_closed(&mut self) -> bool {
        peer_closed(|on| self.set_nonblocking(on), || self.peek(&mut [0u8; 1]))
    }
}

#[cfg(unix)]
impl Stream for std::os::unix::net::UnixStream {
    fn set_timeouts(&self, t: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(t))?;
        self.set_write_timeout(Some(t))
    }

    fn is_closed(&mut self) -> bool {
        let mut b = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        peer_closed(
            |on| self.set_nonblocking(on),
            || socket2::SockRef::from(&*self).peek(&mut b),
        )
    }
}

/// Options of one call of the blocking client.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CallOptions {
    /// The call's timeout; `None` for the client's configured one.
    pub timeout: Option<Duration>,
    /// Resend the call after a reconnect if the connection drops before the reply.
    pub idempotent: bool,
    /// The call's metadata; `None` for the client's own
    /// ([`BlockingClient::with_metadata`]). Needs the extensions, as there.
    pub metadata: Option<Metadata>,
}

impl CallOptions {
    /// Options with a timeout.
    pub fn timeout(mut self, timeout: Duration) -> CallOptions {
        self.timeout = Some(timeout);
        self
    }

    /// Options marking the call idempotent.
    pub fn idempotent(mut self) -> CallOptions {
        self.idempotent = true;
        self
    }

    /// Options with the call's metadata.
    pub fn metadata(mut self, metadata: Metadata) -> CallOptions {
        self.metadata = Some(metadata);
        self
    }
}

/// A blocking client for any MessagePack-RPC server, for code with no async runtime.
///
/// It uses plain std sockets and the same protocol core as the async client, one call at a
/// time: the fastest path for sequential calls. It is `Sync`; calls from several threads
/// take turns. After a transport error the next call reconnects; calls that are safe to
/// resend (unstable-network mode, [`CallOptions::idempotent`], or refused by a server
/// of ours shutting down) are resent, with backoff, within their timeout.
///
/// It reads only while a call waits for its reply, so requests and notifications the
/// server sends ([`Config::on_request`], [`Config::on_notification`]) are handled then, on
/// the calling thread, and answered at once; between calls they wait.
///
/// ```no_run
/// let client = easyrpc_client::BlockingClient::connect("127.0.0.1:25000")?;
/// let sum: i64 = client.call("add", (1, 2))?;
/// # Ok::<(), easyrpc_client::Error>(())
/// ```
pub struct BlockingClient {
    addrs: Vec<SocketAddr>,
    /// A Unix-domain socket to connect to instead (then `addrs` is empty).
    #[cfg(unix)]
    unix: Option<std::path::PathBuf>,
    /// TLS over the TCP connection ([`BlockingClient::connect_tls`]); every reconnect does
    /// the handshake again.
    tls: Option<Connector>,
    config: Config,
    session: Option<u128>,
    /// Metadata sent with every call, encoded.
    metadata: Option<Vec<u8>>,
    /// Boxed: the protocol's state is large, the client a handle.
    state: Mutex<Box<State>>,
}

impl fmt::Debug for BlockingClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockingClient")
            .field("addrs", &self.addrs)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

struct State {
    stream: Option<Box<dyn Stream>>,
    /// The protocol: msgids, the call in flight, hello, framing.
    proto: ClientConnection<()>,
    rbuf: Window,
    wbuf: Outbox,
    last_used: Instant,
    /// The socket timeouts last set, to skip the syscall when unchanged.
    timeouts: Option<Duration>,
}

/// Where a call failed: before its request could reach the server, or after.
enum Failed {
    NotSent(Error),
    Sent(Error),
}

impl Failed {
    fn into_error(self) -> Error {
        match self {
            Failed::NotSent(e) | Failed::Sent(e) => e,
        }
    }
}

/// The one reply the blocking client waits for, decoded where it lies in the read buffer;
/// and what the server sends of its own accord, queued for its handlers.
struct Decode<'a, R, D> {
    codec: Codec,
    /// Whether the server's error codes are ours ([`ClientConnection::is_server_ours`]).
    ours: bool,
    got: Option<Result<R, Error>>,
    handlers: &'a Handlers,
    incoming: Vec<Incoming>,
    decoder: PhantomData<D>,
}

impl<'a, R, D: Decoder<R>> Decode<'a, R, D> {
    fn new(codec: Codec, ours: bool, handlers: &'a Handlers) -> Decode<'a, R, D> {
        Decode {
            codec,
            ours,
            got: None,
            handlers,
            incoming: Vec::new(),
            decoder: PhantomData,
        }
    }
}

impl<R, D: Decoder<R>> Replies<()> for Decode<'_, R, D> {
    fn reply(&mut self, r: ClientReply<'_, ()>) {
        let outcome = if r.ok { Ok(r.part) } else { Err(r.part) };
        let (codec, ours) = (self.codec, self.ours);
        self.got = Some(match r.frame {
            // A large `Blob` in a large reply is a slice of it, not a copy.
            Some(frame) => {
                easyrpc_proto::blob::with_frame(frame, || decode_reply::<R, D>(codec, ours, outcome))
            }
            None => decode_reply::<R, D>(codec, ours, outcome),
        });
    }

    fn request(&mut self, msgid: u64, method: &[u8], params: &[u8]) -> bool {
        self.handlers
            .request(self.codec, msgid, method, params, &mut self.incoming)
    }

    fn notification(&mut self, method: &[u8], params: &[u8]) {
        self.handlers
            .notification(self.codec, method, params, &mut self.incoming);
    }
}

impl BlockingClient {
    /// Connect to `addr` with the default [`Config`].
    ///
    /// # Errors
    ///
    /// When connecting fails.
    pub fn connect(addr: impl ToSocketAddrs) -> Result<BlockingClient, Error> {
        BlockingClient::connect_with(addr, Config::default())
    }

    /// Connect to `addr` with `config`.
    ///
    /// # Errors
    ///
    /// When connecting fails.
    pub fn connect_with(addr: impl ToSocketAddrs, config: Config) -> Result<BlockingClient, Error> {
        let addrs: Vec<_> = addr.to_socket_addrs()?.collect();
        BlockingClient::start(addrs, None, None, config)
    }

    /// Connect to `addr` (`host:port`) over TLS with the default [`Config`], as the async
    /// client's `connect_tls` does: rustls's blocking stream, no runtime.
    ///
    /// ```no_run
    /// use easyrpc_client::{BlockingClient, ClientTls};
    ///
    /// let tls = ClientTls::from_ca_file("ca.crt")?;
    /// let client = BlockingClient::connect_tls("localhost:25000", tls)?;
    /// let sum: i64 = client.call("add", (1, 2))?;
    /// # Ok::<(), easyrpc_client::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Tls`] when the handshake fails, naming the cause; otherwise as
    /// [`BlockingClient::connect`]. A client certificate the server refuses after the
    /// handshake (TLS 1.3) fails the first call with [`Error::Tls`].
    #[cfg(feature = "tls")]
    pub fn connect_tls(addr: &str, tls: ClientTls) -> Result<BlockingClient, Error> {
        BlockingClient::connect_tls_with(addr, tls, Config::default())
    }

    /// [`BlockingClient::connect_tls`] with `config`.
    ///
    /// ```no_run
    /// use easyrpc_client::{BlockingClient, ClientTls, Config};
    ///
    /// let tls = ClientTls::from_ca_file("ca.crt")?.server_name("localhost");
    /// let client = BlockingClient::connect_tls_with("127.0.0.1:25000", tls, Config::default())?;
    /// # Ok::<(), easyrpc_client::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`BlockingClient::connect_tls`].
    #[cfg(feature = "tls")]
    pub fn connect_tls_with(addr: &str, tls: ClientTls, config: Config) -> Result<BlockingClient, Error> {
        let connector = tls.connector(addr)?;
        let addrs: Vec<_> = addr.to_socket_addrs()?.collect();
        BlockingClient::start(addrs, None, Some(connector), config)
    }

    /// Connect to the Unix-domain socket `path` (a server's `run_unix`) with the default
    /// [`Config`].
    ///
    /// # Errors
    ///
    /// When connecting fails ([`Error::Unavailable`] when nothing listens there).
    #[cfg(unix)]
    pub fn connect_unix(path: impl AsRef<std::path::Path>) -> Result<BlockingClient, Error> {
        BlockingClient::connect_unix_with(path, Config::default())
    }

    /// Connect to the Unix-domain socket `path` with `config`.
    ///
    /// # Errors
    ///
    /// As [`BlockingClient::connect_unix`].
    #[cfg(unix)]
    pub fn connect_unix_with(
        path: impl AsRef<std::path::Path>,
        config: Config,
    ) -> Result<BlockingClient, Error> {
        BlockingClient::start(Vec::new(), Some(path.as_ref().to_owned()), None, config)
    }

    fn start(
        addrs: Vec<SocketAddr>,
        #[cfg_attr(not(unix), allow(unused_variables))] unix: Option<std::path::PathBuf>,
        tls: Option<Connector>,
        config: Config,
    ) -> Result<BlockingClient, Error> {
        let session = config.unstable_network.then(new_session).transpose()?;
        let client = BlockingClient {
            addrs,
            #[cfg(unix)]
            unix,
            tls,
            session,
            metadata: None,
            state: Mutex::new(Box::new(State {
                stream: None,
                proto: ClientConnection::new(config.proto(session), Instant::now()),
                rbuf: Window::default(),
                wbuf: Outbox::default(),
                last_used: Instant::now(),
                timeouts: None,
            })),
            config,
        };
        client.lock().connect(&client)?;
        Ok(client)
    }

    /// The client with `metadata` sent with every call (string pairs the server's
    /// handlers and layers read from their `Context`, like gRPC metadata);
    /// [`CallOptions::metadata`] sets it for one call. Metadata is an extension: the client
    /// must be configured with [`Config::extensions`] (or bincode, or unstable-network
    /// mode), and the server built with this framework.
    ///
    /// # Errors
    ///
    /// [`Error::NeedsExtensions`] when the client does not use the extensions.
    pub fn with_metadata(mut self, metadata: Metadata) -> Result<BlockingClient, Error> {
        if !self.config.uses_hello() {
            return Err(Error::NeedsExtensions("call metadata"));
        }
        self.metadata = Some(metadata.encode());
        Ok(self)
    }

    /// The session id, in unstable-network mode.
    pub fn session(&self) -> Option<u128> {
        self.session
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Box<State>> {
        // A panic while holding the lock leaves at worst a half-written call; the state
        // is reset on the next connect, so a poisoned lock is safe to reuse.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Call `method` with `params` and decode the result, waiting at most the configured
    /// timeout.
    ///
    /// # Errors
    ///
    /// As the async client's `call`.
    pub fn call<P: Params, R: DeserializeOwned>(&self, method: &str, params: P) -> Result<R, Error> {
        self.call_with(method, params, CallOptions::default())
    }

    /// [`BlockingClient::call`] with its own timeout.
    ///
    /// # Errors
    ///
    /// As the async client's `call`.
    pub fn call_timeout<P: Params, R: DeserializeOwned>(
        &self,
        method: &str,
        params: P,
        timeout: Duration,
    ) -> Result<R, Error> {
        self.call_with(method, params, CallOptions::default().timeout(timeout))
    }

    /// [`BlockingClient::call`] with [`CallOptions`].
    ///
    /// # Errors
    ///
    /// As the async client's `call`.
    pub fn call_with<P: Params, R: DeserializeOwned>(
        &self,
        method: &str,
        params: P,
        opts: CallOptions,
    ) -> Result<R, Error> {
        self.call_decoded::<P, R, Serde>(method, params, opts)
            .map_err(|e| crate::error::name_result::<R>(method, e))
    }

    /// A call whose result `D` decodes.
    fn call_decoded<P: Params, R, D: Decoder<R>>(
        &self,
        method: &str,
        params: P,
        opts: CallOptions,
    ) -> Result<R, Error> {
        self.call_attempts::<P, R, D>(method, &params, opts, false)
            .map_err(|(_, e)| e)
    }

    /// One call on this server only, for the balanced client: no resend here; a failure
    /// says what happened, for the balancer's resend rule (`None`: an error another
    /// server would not change).
    pub(crate) fn call_once<P: Params, R: DeserializeOwned>(
        &self,
        method: &str,
        params: &P,
        opts: CallOptions,
    ) -> Result<R, (Option<Failure>, Error)> {
        self.call_attempts::<P, R, Serde>(method, params, opts, true)
            .map_err(|(f, e)| (f, crate::error::name_result::<R>(method, e)))
    }

    /// The call loop: attempts, and resends as the rule allows (none with `once`).
    fn call_attempts<P: Params, R, D: Decoder<R>>(
        &self,
        method: &str,
        params: &P,
        opts: CallOptions,
        once: bool,
    ) -> Result<R, (Option<Failure>, Error)> {
        let timeout = opts.timeout.unwrap_or(self.config.timeout);
        let deadline = Instant::now() + timeout;
        let own;
        let metadata = match &opts.metadata {
            None => self.metadata.as_deref(),
            Some(_) if !self.config.uses_hello() => {
                return Err((None, Error::NeedsExtensions("call metadata")))
            }
            Some(md) => {
                own = md.encode();
                Some(&own[..])
            }
        };
        let mut st = self.lock();
        let mut msgid = None;
        let mut backoff = self.config.reconnect_backoff;
        loop {
            let (failure, error) = match st
                .round_trip::<P, R, D>(self, &mut msgid, method, params, timeout, deadline, metadata)
            {
                Ok(Err(Error::Remote(e))) if easyrpc_proto::is_refused(&e) => {
                    // The call did not run; this connection is going away.
                    st.stream = None;
                    (Failure::Refused, Error::Remote(e))
                }
                Ok(r) => return r.map_err(|e| (None, e)),
                // A certificate or settings problem does not go away by trying again.
                Err(
                    Failed::NotSent(e @ Error::Tls { cause, .. })
                    | Failed::Sent(e @ Error::Tls { cause, .. }),
                ) if !cause.is_transient() => {
                    st.stream = None;
                    return Err((None, e));
                }
                // A call never sent fails fast when the server refuses; one to be sent
                // again keeps trying (the server may be restarting).
                Err(Failed::NotSent(e @ Error::Unavailable(_)))
                    if !self.config.wait_for_ready && msgid.is_none() =>
                {
                    return Err((Some(Failure::NotSent), e))
                }
                Err(Failed::NotSent(e)) => (Failure::NotSent, e),
                Err(Failed::Sent(Error::Timeout(t))) => (Failure::TimedOut, Error::Timeout(t)),
                Err(Failed::Sent(e)) => {
                    // The stream may hold half a message: start afresh.
                    st.stream = None;
                    (Failure::Lost, e)
                }
            };
            let resend = may_resend(failure, self.session.is_some(), opts.idempotent);
            if once || !resend || Instant::now() + backoff >= deadline {
                return Err((Some(failure), error));
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(self.config.reconnect_backoff_max);
        }
    }

    /// Call with dynamic MessagePack values in and out.
    ///
    /// # Errors
    ///
    /// As [`BlockingClient::call`]. A function's own error comes as [`Error::Remote`], its data (when
    /// it sent some) a value too: [`ServerError::data_value`](easyrpc_proto::ServerError::data_value).
    /// The result is read natively from MessagePack: a str whose bytes are not UTF-8 stays a
    /// `Value::String` (serde would make it `Value::Binary`).
    pub fn call_value(&self, method: &str, params: Vec<rmpv::Value>) -> Result<rmpv::Value, Error> {
        self.call_decoded::<_, _, NativeValue>(method, params, CallOptions::default())
    }

    /// Send a notification.
    ///
    /// # Errors
    ///
    /// When it cannot be encoded or written.
    pub fn notify<P: Params>(&self, method: &str, params: P) -> Result<(), Error> {
        let mut st = self.lock();
        st.ensure_connected(self).map_err(|f| match f {
            Failed::NotSent(e) | Failed::Sent(e) => e,
        })?;
        st.proto.send_notification(method, &params)?;
        st.set_timeouts(self.config.timeout)?;
        let r = st.flush();
        if r.is_err() {
            st.stream = None;
        }
        r.map_err(|e| transport(e, self.config.timeout))
    }
}

impl State {
    fn connect(&mut self, client: &BlockingClient) -> Result<(), Error> {
        let config = &client.config;
        self.stream = None;
        self.rbuf.start = 0;
        self.rbuf.end = 0;
        self.timeouts = None;
        let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address");
        #[cfg(unix)]
        if let Some(path) = &client.unix {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(s) => self.stream = Some(Box::new(s)),
                Err(e) => last = e,
            }
        }
        for addr in &client.addrs {
            match TcpStream::connect_timeout(addr, config.connect_timeout) {
                Ok(s) => {
                    s.set_nodelay(true)?;
                    self.stream = Some(match &client.tls {
                        Some(tls) => Box::new(tls.connect_blocking(s, config.connect_timeout)?),
                        None => Box::new(s),
                    });
                    break;
                }
                Err(e) => last = e,
            }
        }
        if self.stream.is_none() {
            return Err(crate::error::refused(last));
        }
        self.last_used = Instant::now();
        self.proto.handle_disconnect(|(), _| {});
        self.proto.start(self.last_used);
        if self.proto.is_awaiting_hello() {
            let said = self.set_timeouts(config.connect_timeout).and_then(|()| {
                self.flush()?;
                // Nothing is served before the hello is answered (a server that answers
                // it is ours, and ours sends no requests).
                let no_handlers = Handlers::default();
                let mut none = Decode::<(), Serde>::new(config.codec, true, &no_handlers);
                while self.proto.is_awaiting_hello() {
                    self.read_more()?;
                    self.proto
                        .handle_input(&mut self.rbuf, &mut none)
                        .map_err(|e| Error::Protocol(e.to_string()))?;
                }
                Ok(())
            });
            if let Err(e) = said {
                self.stream = None;
                return Err(e);
            }
        }
        Ok(())
    }

    /// Connect if there is no connection, or if the idle one turns out closed.
    fn ensure_connected(&mut self, client: &BlockingClient) -> Result<(), Failed> {
        if self.last_used.elapsed() > STALE_AFTER && self.stream.as_mut().is_some_and(|s| s.is_closed()) {
            self.stream = None;
        }
        if self.stream.is_none() {
            self.connect(client).map_err(Failed::NotSent)?;
        }
        Ok(())
    }

    fn set_timeouts(&mut self, t: Duration) -> Result<(), Error> {
        if self.timeouts != Some(t) {
            if let Some(s) = &self.stream {
                s.set_timeouts(t)?;
            }
            self.timeouts = Some(t);
        }
        Ok(())
    }

    /// Write everything the protocol has queued.
    fn flush(&mut self) -> Result<(), Error> {
        self.wbuf.clear();
        // One clock read: when the batch is taken is as good as when it was written.
        let now = Instant::now();
        self.proto.take_transmit(now, &mut self.wbuf);
        let Some(stream) = self.stream.as_mut() else {
            return Err(Error::ConnectionClosed);
        };
        self.wbuf.write_to(stream, KEEP_WRITE_BUFFER)?;
        self.last_used = now;
        Ok(())
    }

    /// Send the call and read until its reply, decoded (an error reply as
    /// [`Error::Remote`]).
    #[allow(clippy::too_many_arguments)]
    fn round_trip<P: Params, R, D: Decoder<R>>(
        &mut self,
        client: &BlockingClient,
        msgid: &mut Option<u64>,
        method: &str,
        params: &P,
        timeout: Duration,
        deadline: Instant,
        metadata: Option<&[u8]>,
    ) -> Result<Result<R, Error>, Failed> {
        self.ensure_connected(client)?;
        self.set_timeouts(timeout).map_err(Failed::NotSent)?;
        let id = self
            .proto
            .send_request(*msgid, method, params, timeout, Some(deadline), metadata, ())
            .map_err(|e| Failed::NotSent(e.into()))?;
        *msgid = Some(id);
        self.flush().map_err(|e| Failed::Sent(transport(e, timeout)))?;
        let ours = self.proto.is_server_ours();
        let mut decode = Decode::<R, D>::new(client.config.codec, ours, &client.config.handlers);
        loop {
            self.proto
                .handle_input(&mut self.rbuf, &mut decode)
                .map_err(|e| Failed::Sent(Error::Protocol(e.to_string())))?;
            if !decode.incoming.is_empty() {
                self.serve(&mut decode.incoming);
            }
            if let Some(r) = decode.got.take() {
                if self.proto.has_transmit() {
                    // Answers to the server's requests read with the reply (it may be
                    // waiting for them) go out now; if that fails, the next call connects
                    // again, and this one has its reply.
                    if self.flush().is_err() {
                        self.stream = None;
                    }
                }
                return Ok(r);
            }
            if Instant::now() >= deadline {
                // A late reply will find no call waiting for it (and with extensions the
                // server is told to cancel).
                self.proto.forget(id);
                return Err(Failed::Sent(Error::Timeout(timeout)));
            }
            if self.proto.has_transmit() {
                self.flush().map_err(|e| Failed::Sent(transport(e, timeout)))?;
            }
            self.read_more().map_err(|e| {
                self.proto.forget(id);
                Failed::Sent(transport(e, timeout))
            })?;
        }
    }

    /// Run the handlers of what the server sent, in the order it came, on the calling
    /// thread; the answers are queued for the transport.
    fn serve(&mut self, incoming: &mut Vec<Incoming>) {
        for incoming in incoming.drain(..) {
            match incoming {
                Incoming::Notification(handler, params) => notify(&*handler, params),
                Incoming::Request(request) => {
                    let msgid = request.msgid;
                    let answer = request.run();
                    self.proto.respond(msgid, answer.as_ref());
                }
            }
        }
    }

    /// Read once into the spare part of `rbuf`, compacting or growing it first.
    fn read_more(&mut self) -> Result<(), Error> {
        let w = &mut self.rbuf;
        if w.start == w.end {
            w.start = 0;
            w.end = 0;
        }
        // Room for the rest of a large reply in one read, as its headers tell.
        let want = (READ_CHUNK / 4).max(self.proto.read_hint(&w.buf[w.start..w.end]));
        if w.buf.len() - w.end < want {
            if w.start > 0 {
                w.buf.copy_within(w.start..w.end, 0);
                w.end -= w.start;
                w.start = 0;
            }
            if w.buf.len() - w.end < want {
                let len = w.end + w.buf.len().max(READ_CHUNK).max(want);
                // Only the bytes received move if the buffer does. A large buffer handed
                // over with a reply (`split_frame`) is taken back here once the caller
                // has dropped it (`BytesMut` reclaims a buffer it is the only holder of):
                // its pages are mapped already, where a fresh one would fault them in
                // during the read, one by one.
                w.buf.truncate(w.end);
                w.buf.resize(len, 0);
            }
        }
        let stream = self.stream.as_mut().ok_or(Error::ConnectionClosed)?;
        match stream.read(&mut w.buf[w.end..]) {
            Ok(0) => Err(Error::ConnectionClosed),
            Ok(n) => {
                w.end += n;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// The read buffer: received bytes live in `buf[start..end]`; the rest is spare room,
/// initialised once (std's `Read` takes initialised bytes) and reused. A reply over
/// `SPLIT_REPLY` leaves with the part of the buffer it lies in (`split_frame`).
#[derive(Default)]
struct Window {
    buf: BytesMut,
    start: usize,
    end: usize,
}

impl ReadBuf for Window {
    fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
    }

    fn split_frame(&mut self, n: usize) -> Option<Bytes> {
        // Replies are decoded where they lie, but a large one is handed over, so that a
        // large `Blob` in it is a slice of it and not a copy.
        if n <= SPLIT_REPLY {
            return None;
        }
        let mut frame = self.buf.split_to(self.start + n);
        frame.advance(self.start);
        self.end -= self.start + n;
        self.start = 0;
        Some(frame.freeze())
    }
}

fn transport(e: Error, timeout: Duration) -> Error {
    match e {
        Error::Transport(e) => timed_out(e, timeout),
        e => e,
    }
}

fn timed_out(e: io::Error, timeout: Duration) -> Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout(timeout),
        _ => Error::Transport(e),
    }
}
