//! The blocking client: std sockets, no runtime.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rpc_proto::{encode_notification, encode_request, ErrorCode, Framer, Hello, Params};
use serde::de::DeserializeOwned;

use crate::config::new_session;
use crate::reply;
use crate::{Config, Error};

/// After this long unused, the connection is checked (one non-blocking peek) before a
/// call is sent on it, so that a connection the server closed as idle is replaced instead
/// of failing the call.
const STALE_AFTER: Duration = Duration::from_secs(1);
const READ_CHUNK: usize = 64 * 1024;

/// Options of one call of the blocking client.
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct CallOptions {
    /// The call's timeout; `None` for the client's configured one.
    pub timeout: Option<Duration>,
    /// Resend the call after a reconnect if the connection drops before the reply.
    pub idempotent: bool,
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
}

/// A blocking client for any MessagePack-RPC server, for code with no async runtime.
///
/// It uses plain std sockets and the same protocol core as the async client, one call at a
/// time: the fastest path for sequential calls. It is `Sync`; calls from several threads
/// take turns. After a transport error the next call reconnects; calls that are safe to
/// resend (unstable-network mode, [`CallOptions::idempotent`], or refused by a server
/// shutting down) are resent, with backoff, within their timeout.
///
/// ```no_run
/// let client = rpc_client::BlockingClient::connect("127.0.0.1:25000")?;
/// let sum: i64 = client.call("add", (1, 2))?;
/// # Ok::<(), rpc_client::Error>(())
/// ```
#[derive(Debug)]
pub struct BlockingClient {
    addrs: Vec<SocketAddr>,
    config: Config,
    session: Option<u128>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    stream: Option<TcpStream>,
    /// Received bytes live in `rbuf[start..end]`; the rest is spare, already initialised.
    rbuf: Vec<u8>,
    start: usize,
    end: usize,
    wbuf: Vec<u8>,
    framer: Framer,
    next_id: u64,
    last_used: Instant,
    /// The socket timeouts last set, to skip the syscall when unchanged.
    timeouts: Option<Duration>,
}

/// Where a call failed: before its request could reach the server, or after.
enum Failure {
    NotSent(Error),
    Sent(Error),
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
        let framer = Framer::new(config.codec, config.max_message_size);
        let client = BlockingClient {
            addrs,
            session: config.unstable_network.then(new_session),
            state: Mutex::new(State {
                stream: None,
                rbuf: vec![0; READ_CHUNK],
                start: 0,
                end: 0,
                wbuf: Vec::with_capacity(1024),
                framer,
                next_id: 1,
                last_used: Instant::now(),
                timeouts: None,
            }),
            config,
        };
        client
            .lock()
            .connect(&client.addrs, &client.config, client.session)?;
        Ok(client)
    }

    /// The session id, in unstable-network mode.
    pub fn session(&self) -> Option<u128> {
        self.session
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
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
        let timeout = opts.timeout.unwrap_or(self.config.timeout);
        let deadline = Instant::now() + timeout;
        let resend = self.session.is_some() || opts.idempotent;
        let mut st = self.lock();
        let msgid = st.next_id;
        st.next_id += 1;
        st.wbuf.clear();
        let sent_timeout = self.config.uses_hello().then_some(timeout);
        encode_request(
            self.config.codec,
            &mut st.wbuf,
            msgid,
            method,
            &params,
            sent_timeout,
        )?;
        let mut backoff = self.config.reconnect_backoff;
        loop {
            let error = match st.round_trip(self, msgid, timeout, deadline) {
                Ok(r) => match r {
                    Err(Error::Remote(e)) if e.kind() == ErrorCode::ShuttingDown => Error::Remote(e),
                    Ok(bytes_range) => {
                        let (codec, frame) = (self.config.codec, &st.rbuf[bytes_range.0..bytes_range.1]);
                        return match reply::parse(codec, frame)? {
                            Some((_, outcome)) => reply::decode(codec, outcome),
                            None => Err(Error::Protocol("not a response".into())),
                        };
                    }
                    Err(e) => return Err(e),
                },
                Err(Failure::NotSent(e)) => e,
                Err(Failure::Sent(e)) => {
                    // The stream may hold half a message or a late reply: start afresh.
                    st.stream = None;
                    if !resend {
                        return Err(e);
                    }
                    e
                }
            };
            if matches!(error, Error::Timeout(_)) || Instant::now() + backoff >= deadline {
                return Err(error);
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(self.config.reconnect_backoff_max);
        }
    }

    /// Call with dynamic MessagePack values in and out.
    ///
    /// # Errors
    ///
    /// As [`BlockingClient::call`].
    pub fn call_value(&self, method: &str, params: Vec<rmpv::Value>) -> Result<rmpv::Value, Error> {
        self.call(method, params)
    }

    /// Send a notification.
    ///
    /// # Errors
    ///
    /// When it cannot be encoded or written.
    pub fn notify<P: Params>(&self, method: &str, params: P) -> Result<(), Error> {
        let mut st = self.lock();
        st.wbuf.clear();
        encode_notification(self.config.codec, &mut st.wbuf, method, &params)?;
        st.ensure_connected(self).map_err(|f| match f {
            Failure::NotSent(e) | Failure::Sent(e) => e,
        })?;
        st.set_timeouts(self.config.timeout)?;
        let State { stream, wbuf, .. } = &mut *st;
        // Unwrap: connected just above.
        let r = stream.as_mut().unwrap().write_all(wbuf);
        if r.is_err() {
            st.stream = None;
        }
        st.last_used = Instant::now();
        r.map_err(|e| timed_out(e, self.config.timeout))
    }
}

impl State {
    fn connect(&mut self, addrs: &[SocketAddr], config: &Config, session: Option<u128>) -> Result<(), Error> {
        self.stream = None;
        self.start = 0;
        self.end = 0;
        self.timeouts = None;
        self.framer.reset();
        let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address");
        for addr in addrs {
            match TcpStream::connect_timeout(addr, config.connect_timeout) {
                Ok(s) => {
                    s.set_nodelay(true)?;
                    self.stream = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        if self.stream.is_none() {
            return Err(last.into());
        }
        self.last_used = Instant::now();
        if config.uses_hello() {
            let mut hello = Vec::new();
            Hello::new(config.codec).with_session(session).encode(&mut hello);
            let sent = self.set_timeouts(config.connect_timeout).and_then(|()| {
                // Unwrap: connected just above.
                Ok(self.stream.as_mut().unwrap().write_all(&hello)?)
            });
            if let Err(e) = sent {
                self.stream = None;
                return Err(e);
            }
            loop {
                match rpc_proto::Hello::decode(&self.rbuf[self.start..self.end]) {
                    Ok(Some((h, n))) if h.codec == config.codec => {
                        self.start += n;
                        break;
                    }
                    Ok(None) => self.read_more().inspect_err(|_| self.stream = None)?,
                    _ => {
                        self.stream = None;
                        return Err(Error::Protocol("the server did not accept the hello".into()));
                    }
                }
            }
        }
        Ok(())
    }

    /// Connect if there is no connection, or if the idle one turns out closed.
    fn ensure_connected(&mut self, client: &BlockingClient) -> Result<(), Failure> {
        if self.stream.is_some() && self.last_used.elapsed() > STALE_AFTER && self.is_closed() {
            self.stream = None;
        }
        if self.stream.is_none() {
            self.connect(&client.addrs, &client.config, client.session)
                .map_err(Failure::NotSent)?;
        }
        Ok(())
    }

    /// A non-blocking peek: has the server closed this connection?
    fn is_closed(&mut self) -> bool {
        let Some(s) = self.stream.as_ref() else {
            return true;
        };
        if s.set_nonblocking(true).is_err() {
            return true;
        }
        let mut b = [0u8; 1];
        let closed = match s.peek(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() != io::ErrorKind::WouldBlock,
        };
        closed || s.set_nonblocking(false).is_err()
    }

    fn set_timeouts(&mut self, t: Duration) -> Result<(), Error> {
        if self.timeouts != Some(t) {
            // Unwrap: only called while connected.
            let s = self.stream.as_ref().unwrap();
            s.set_read_timeout(Some(t))?;
            s.set_write_timeout(Some(t))?;
            self.timeouts = Some(t);
        }
        Ok(())
    }

    /// Send `wbuf` and read until the reply to `msgid`: its frame's range in `rbuf`, or
    /// the remote's `ShuttingDown` refusal as an error.
    fn round_trip(
        &mut self,
        client: &BlockingClient,
        msgid: u64,
        timeout: Duration,
        deadline: Instant,
    ) -> Result<Result<(usize, usize), Error>, Failure> {
        self.ensure_connected(client)?;
        self.set_timeouts(timeout).map_err(Failure::NotSent)?;
        // Unwrap: connected just above.
        let stream = self.stream.as_mut().unwrap();
        stream
            .write_all(&self.wbuf)
            .map_err(|e| Failure::Sent(timed_out(e, timeout)))?;
        self.last_used = Instant::now();
        loop {
            while let Some(n) = self
                .framer
                .decode(&self.rbuf[self.start..self.end])
                .map_err(|e| Failure::Sent(Error::Protocol(e.to_string())))?
            {
                let (a, b) = (self.start, self.start + n);
                self.start = b;
                let codec = client.config.codec;
                match reply::parse(codec, &self.rbuf[a..b]).map_err(Failure::Sent)? {
                    Some((id, Err(e))) if id == msgid => {
                        let e = rpc_proto::decode_error(codec, e);
                        if e.kind() == ErrorCode::ShuttingDown {
                            // The call did not run; this connection is going away.
                            self.stream = None;
                            return Ok(Err(Error::Remote(e)));
                        }
                        return Ok(Ok((a, b)));
                    }
                    Some((id, Ok(_))) if id == msgid => return Ok(Ok((a, b))),
                    _ => {}
                }
            }
            if Instant::now() >= deadline {
                return Err(Failure::Sent(Error::Timeout(timeout)));
            }
            self.read_more().map_err(|e| {
                Failure::Sent(match e {
                    Error::Transport(e) => timed_out(e, timeout),
                    e => e,
                })
            })?;
        }
    }

    /// Read once into the spare part of `rbuf`, compacting or growing it first.
    fn read_more(&mut self) -> Result<(), Error> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        // Room for the rest of a large reply in one read, as its headers tell (up to 1 MiB
        // ahead of what has arrived).
        let hint = self
            .framer
            .needed(&self.rbuf[self.start..self.end])
            .min(1024 * 1024);
        let want = (READ_CHUNK / 4).max(hint);
        if self.rbuf.len() - self.end < want {
            if self.start > 0 {
                self.rbuf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.rbuf.len() - self.end < want {
                let grow = self.rbuf.len().max(READ_CHUNK).max(want);
                self.rbuf.resize(self.rbuf.len() + grow, 0);
            }
        }
        // Unwrap: only called while connected.
        let stream = self.stream.as_mut().unwrap();
        match stream.read(&mut self.rbuf[self.end..]) {
            Ok(0) => Err(Error::ConnectionClosed),
            Ok(n) => {
                self.end += n;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

fn timed_out(e: io::Error, timeout: Duration) -> Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout(timeout),
        _ => Error::Transport(e),
    }
}
