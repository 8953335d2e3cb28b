//! The blocking client: std sockets, no runtime.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rpc_proto::{encode_notification, encode_request, Codec, Framer, Hello, Params};
use serde::de::DeserializeOwned;

use crate::reply::RawReply;
use crate::{Config, Error};

/// A blocking client for any MessagePack-RPC server, for code with no async runtime.
///
/// It uses plain std sockets and the same protocol core as the async client, one call at a
/// time: the fastest path for sequential calls. It is `Sync`; calls from several threads
/// take turns. After a transport error the next call reconnects.
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
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    stream: Option<TcpStream>,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    framer: Framer,
    next_id: u64,
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
            state: Mutex::new(State {
                stream: None,
                rbuf: BytesMut::with_capacity(16 * 1024),
                wbuf: Vec::with_capacity(1024),
                framer,
                next_id: 1,
            }),
            config,
        };
        client.lock().connect(&client.addrs, &client.config)?;
        Ok(client)
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
        self.call_timeout(method, params, self.config.timeout)
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
        let mut st = self.lock();
        let msgid = st.next_id;
        st.next_id += 1;
        let codec = self.config.codec;
        st.wbuf.clear();
        encode_request(codec, &mut st.wbuf, msgid, method, &params)?;
        let r = st.round_trip(&self.addrs, &self.config, msgid, timeout);
        if matches!(
            r,
            Err(Error::Transport(_) | Error::Timeout(_) | Error::ConnectionClosed | Error::Protocol(_))
        ) {
            // The stream may hold a late reply or half a message: start afresh next time.
            st.stream = None;
        }
        r?.decode()
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
        if st.stream.is_none() {
            st.connect(&self.addrs, &self.config)?;
        }
        let State { stream, wbuf, .. } = &mut *st;
        // Unwrap: connected just above.
        let r = stream.as_mut().unwrap().write_all(wbuf);
        if r.is_err() {
            st.stream = None;
        }
        Ok(r?)
    }
}

impl State {
    fn connect(&mut self, addrs: &[SocketAddr], config: &Config) -> Result<(), Error> {
        self.stream = None;
        self.rbuf.clear();
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
        let Some(stream) = self.stream.as_mut() else {
            return Err(last.into());
        };
        if config.codec != Codec::Msgpack {
            let mut hello = Vec::new();
            Hello { codec: config.codec }.encode(&mut hello);
            stream.set_read_timeout(Some(config.connect_timeout))?;
            stream.write_all(&hello)?;
            loop {
                match Hello::decode(&self.rbuf) {
                    Ok(Some((h, n))) if h.codec == config.codec => {
                        let _ = self.rbuf.split_to(n);
                        break;
                    }
                    Ok(None) => read_more(stream, &mut self.rbuf)?,
                    _ => {
                        self.stream = None;
                        return Err(Error::Protocol("the server did not accept the hello".into()));
                    }
                }
            }
        }
        Ok(())
    }

    fn round_trip(
        &mut self,
        addrs: &[SocketAddr],
        config: &Config,
        msgid: u64,
        timeout: Duration,
    ) -> Result<RawReply, Error> {
        if self.stream.is_none() {
            self.connect(addrs, config)?;
        }
        let deadline = Instant::now() + timeout;
        // Unwrap: connected just above.
        let stream = self.stream.as_mut().unwrap();
        stream.set_write_timeout(Some(timeout))?;
        stream.write_all(&self.wbuf).map_err(|e| timed_out(e, timeout))?;
        loop {
            while let Some(n) = self
                .framer
                .decode(&self.rbuf)
                .map_err(|e| Error::Protocol(e.to_string()))?
            {
                let frame = self.rbuf.split_to(n).freeze();
                if let Some((id, reply)) = RawReply::parse(config.codec, frame)? {
                    if id == msgid {
                        return Ok(reply);
                    }
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout(timeout));
            }
            stream.set_read_timeout(Some(left))?;
            read_more(stream, &mut self.rbuf).map_err(|e| match e {
                Error::Transport(e) => timed_out(e, timeout),
                e => e,
            })?;
        }
    }
}

fn timed_out(e: io::Error, timeout: Duration) -> Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout(timeout),
        _ => Error::Transport(e),
    }
}

fn read_more(stream: &mut TcpStream, rbuf: &mut BytesMut) -> Result<(), Error> {
    let len = rbuf.len();
    rbuf.resize(len + (16 * 1024usize).max(len), 0);
    match stream.read(&mut rbuf[len..]) {
        Ok(0) => {
            rbuf.truncate(len);
            Err(Error::ConnectionClosed)
        }
        Ok(n) => {
            rbuf.truncate(len + n);
            Ok(())
        }
        Err(e) => {
            rbuf.truncate(len);
            Err(e.into())
        }
    }
}
