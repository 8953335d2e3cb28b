//! The async client: one connection, many calls in flight.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rpc_proto::{encode_notification, encode_request, ErrorCode, Framer, Hello, Params};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::debug;

use crate::config::new_session;
use crate::reply::RawReply;
use crate::{Config, Error};

type ReplyTx = oneshot::Sender<Result<RawReply, Error>>;
type Queue = mpsc::UnboundedSender<Command>;

/// What callers ask of the connection task. The queue is unbounded, but each caller has at
/// most one command in it at a time, so it is bounded by the number of callers.
enum Command {
    Call {
        msgid: u64,
        frame: Bytes,
        reply: ReplyTx,
        deadline: Instant,
    },
    Send {
        frame: Bytes,
    },
    Cancel {
        msgid: u64,
    },
}

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

/// Calls written and not yet answered: the reply channel and the deadline of each.
type Pending = HashMap<u64, (ReplyTx, Instant), std::hash::BuildHasherDefault<IdHasher>>;

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
#[derive(Debug, Clone)]
pub struct Client {
    shared: Arc<Shared>,
    timeout: Duration,
    idempotent: bool,
}

#[derive(Debug)]
struct Shared {
    addrs: Vec<SocketAddr>,
    config: Config,
    session: Option<u128>,
    next_id: AtomicU64,
    conn: Mutex<Option<Queue>>,
    connecting: tokio::sync::Mutex<()>,
}

/// Cancels a call if its future is dropped before the reply arrives: the connection
/// forgets it and, with extensions, tells the server.
struct CancelGuard<'a> {
    tx: &'a Queue,
    msgid: u64,
    armed: bool,
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.tx.send(Command::Cancel { msgid: self.msgid });
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
        let client = Client {
            shared: Arc::new(Shared {
                addrs,
                session: config.unstable_network.then(new_session),
                config,
                next_id: AtomicU64::new(1),
                conn: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
            }),
            timeout,
            idempotent: false,
        };
        let tx = connect(&client.shared.addrs, &client.shared.config, client.shared.session).await?;
        *client.shared.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        Ok(client)
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
        self.shared.session
    }

    /// The address this client connects to (the first one its name resolved to).
    pub fn addr(&self) -> SocketAddr {
        self.shared.addrs[0]
    }

    /// Call `method` with `params` (a tuple, or a `Vec` of values) and decode the result.
    ///
    /// # Errors
    ///
    /// [`Error::Remote`] for an error reply; [`Error::Timeout`], [`Error::ConnectionClosed`]
    /// and [`Error::Transport`] when no reply came; encode and decode errors.
    pub async fn call<P, R>(&self, method: &str, params: P) -> Result<R, Error>
    where
        P: Params,
        R: DeserializeOwned,
    {
        let deadline = Instant::now() + self.timeout;
        let msgid = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let config = &self.shared.config;
        let mut frame = Vec::with_capacity(64);
        let sent_timeout = config.uses_hello().then_some(self.timeout);
        encode_request(config.codec, &mut frame, msgid, method, &params, sent_timeout)?;
        let frame = Bytes::from(frame);
        // Resending is safe when the server dedups, or the caller said so.
        let resend = self.shared.session.is_some() || self.idempotent;
        let mut backoff = config.reconnect_backoff;
        loop {
            let tx = self.sender(deadline).await?;
            let (reply_tx, reply_rx) = oneshot::channel();
            let call = Command::Call {
                msgid,
                frame: frame.clone(),
                reply: reply_tx,
                deadline,
            };
            // The connection task enforces the deadline: no timer per call.
            let outcome = match tx.send(call) {
                Err(_) => Err(Error::ConnectionClosed),
                Ok(()) => {
                    let mut guard = CancelGuard {
                        tx: &tx,
                        msgid,
                        armed: true,
                    };
                    let r = reply_rx.await;
                    guard.armed = false;
                    match r {
                        Err(_) => Err(Error::ConnectionClosed),
                        Ok(Err(Error::Timeout(_))) => return Err(Error::Timeout(self.timeout)),
                        Ok(r) => r,
                    }
                }
            };
            let retry = match outcome {
                Ok(reply) => match reply.decode::<R>() {
                    // Refused before it ran: always safe to send again.
                    Err(Error::Remote(e)) if e.kind() == ErrorCode::ShuttingDown => true,
                    r => return r,
                },
                Err(e @ (Error::ConnectionClosed | Error::Transport(_))) => {
                    if !resend {
                        return Err(e);
                    }
                    true
                }
                Err(e) => return Err(e),
            };
            debug_assert!(retry);
            debug!(msgid, method, "resending the call on a new connection");
            let wait = backoff.min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(wait).await;
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
    /// When the notification could not be encoded or queued.
    pub async fn notify<P: Params>(&self, method: &str, params: P) -> Result<(), Error> {
        let mut frame = Vec::with_capacity(64);
        encode_notification(self.shared.config.codec, &mut frame, method, &params)?;
        let tx = self.sender(Instant::now() + self.timeout).await?;
        tx.send(Command::Send { frame: frame.into() })
            .map_err(|_| Error::ConnectionClosed)
    }

    /// The live connection's queue, (re)connecting first if there is none, with backoff
    /// until `deadline`.
    async fn sender(&self, deadline: Instant) -> Result<Queue, Error> {
        if let Some(tx) = self.live() {
            return Ok(tx);
        }
        let _one_at_a_time = tokio::time::timeout_at(deadline, self.shared.connecting.lock())
            .await
            .map_err(|_| Error::Timeout(self.timeout))?;
        let config = &self.shared.config;
        let mut backoff = config.reconnect_backoff;
        loop {
            if let Some(tx) = self.live() {
                return Ok(tx);
            }
            let attempt =
                tokio::time::timeout_at(deadline, connect(&self.shared.addrs, config, self.shared.session));
            match attempt.await {
                Err(_) => return Err(Error::Timeout(self.timeout)),
                Ok(Ok(tx)) => {
                    *self.shared.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx.clone());
                    return Ok(tx);
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

    fn live(&self) -> Option<Queue> {
        // A poisoned lock only means a panic elsewhere; the slot itself is always valid.
        let conn = self.shared.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.as_ref().filter(|tx| !tx.is_closed()).cloned()
    }
}

async fn connect(addrs: &[SocketAddr], config: &Config, session: Option<u128>) -> Result<Queue, Error> {
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
                        let _ = rbuf.split_to(n);
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
    let (stream, rbuf) = tokio::time::timeout(config.connect_timeout, connect)
        .await
        .map_err(|_| Error::Timeout(config.connect_timeout))??;
    let (tx, rx) = mpsc::unbounded_channel();
    let framer = Framer::new(config.codec, config.max_message_size);
    tokio::spawn(drive(stream, rbuf, rx, framer, config.clone()));
    Ok(tx)
}

/// The connection task: writes queued calls, matches replies to callers, pings when idle.
async fn drive(
    mut stream: TcpStream,
    mut rbuf: BytesMut,
    mut rx: mpsc::UnboundedReceiver<Command>,
    mut framer: Framer,
    config: Config,
) {
    let codec = framer.codec();
    let extended = config.uses_hello();
    let mut pending = Pending::default();
    let mut wbuf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut written = 0;
    let (mut rd, mut wr) = stream.split();
    let heartbeat = config.heartbeat_interval.unwrap_or(Duration::MAX / 4);
    let mut last_write = Instant::now();
    let ping = tokio::time::sleep(heartbeat);
    tokio::pin!(ping);
    // One timer for every call's deadline: armed at the earliest one known, swept when it
    // fires (the sweep looks at the calls in flight only).
    let mut next_deadline: Option<Instant> = None;
    let mut armed_at: Option<Instant> = None;
    let expiry = tokio::time::sleep(Duration::MAX / 4);
    tokio::pin!(expiry);
    let apply =
        |cmd: Command, wbuf: &mut Vec<u8>, pending: &mut Pending, next: &mut Option<Instant>| match cmd {
            Command::Call {
                msgid,
                frame,
                reply,
                deadline,
            } => {
                wbuf.extend_from_slice(&frame);
                pending.insert(msgid, (reply, deadline));
                if next.is_none_or(|n| deadline < n) {
                    *next = Some(deadline);
                }
            }
            Command::Send { frame } => wbuf.extend_from_slice(&frame),
            Command::Cancel { msgid } => {
                if pending.remove(&msgid).is_some() && extended {
                    let _ = encode_notification(codec, wbuf, "rpc.cancel", &(msgid,));
                }
            }
        };
    let error: Error = 'run: loop {
        while let Ok(cmd) = rx.try_recv() {
            apply(cmd, &mut wbuf, &mut pending, &mut next_deadline);
        }
        if next_deadline.is_some() && next_deadline != armed_at {
            // Unwrap-free: checked just above.
            let at = next_deadline.unwrap_or_else(Instant::now);
            expiry.as_mut().reset(at);
            armed_at = Some(at);
        }
        if written < wbuf.len() {
            match wr.try_write(&wbuf[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => break 'run e.into(),
            }
            last_write = Instant::now();
            if written == wbuf.len() {
                wbuf.clear();
                written = 0;
            }
        }
        let hint = framer.needed(&rbuf).min(1024 * 1024);
        if rbuf.capacity() - rbuf.len() < 4096usize.max(hint) {
            rbuf.reserve((16 * 1024usize).max(rbuf.len()).max(hint));
        }
        tokio::select! {
            biased;
            r = rd.read_buf(&mut rbuf) => match r {
                Ok(0) => break 'run Error::ConnectionClosed,
                Err(e) => break 'run e.into(),
                Ok(_) => loop {
                    match framer.decode(&rbuf) {
                        Ok(None) => break,
                        Ok(Some(n)) => {
                            let frame = rbuf.split_to(n).freeze();
                            match RawReply::parse(codec, frame) {
                                Ok(Some((msgid, reply))) => {
                                    if let Some((tx, _)) = pending.remove(&msgid) {
                                        let _ = tx.send(Ok(reply));
                                    } else {
                                        debug!(msgid, "reply to a call nobody waits for");
                                    }
                                }
                                Ok(None) => debug!("message from the server ignored"),
                                Err(e) => debug!(error = %e, "malformed message from the server ignored"),
                            }
                        }
                        Err(e) => break 'run Error::Protocol(e.to_string()),
                    }
                },
            },
            cmd = rx.recv() => match cmd {
                Some(cmd) => apply(cmd, &mut wbuf, &mut pending, &mut next_deadline),
                // Every handle is gone: nobody can call any more. Flush what is queued.
                None => {
                    if written < wbuf.len() {
                        let _ = tokio::time::timeout(config.connect_timeout, wr.write_all(&wbuf[written..])).await;
                    }
                    return;
                }
            },
            r = wr.writable(), if written < wbuf.len() => if let Err(e) = r {
                break 'run e.into();
            },
            () = &mut expiry, if next_deadline.is_some() => {
                let now = Instant::now();
                let expired: Vec<u64> = pending
                    .iter()
                    .filter(|(_, (_, d))| *d <= now)
                    .map(|(id, _)| *id)
                    .collect();
                for msgid in expired {
                    if let Some((tx, _)) = pending.remove(&msgid) {
                        // The caller puts its own timeout in the error.
                        let _ = tx.send(Err(Error::Timeout(Duration::ZERO)));
                        if extended {
                            let _ = encode_notification(codec, &mut wbuf, "rpc.cancel", &(msgid,));
                        }
                    }
                }
                next_deadline = pending.values().map(|(_, d)| *d).min();
                armed_at = None;
            }
            () = &mut ping, if config.heartbeat_interval.is_some() => {
                if last_write.elapsed() >= heartbeat && wbuf.is_empty() {
                    let _ = encode_notification(codec, &mut wbuf, "rpc.ping", &());
                    ping.as_mut().reset(Instant::now() + heartbeat);
                } else {
                    ping.as_mut().reset(last_write + heartbeat);
                }
            }
        }
    };
    debug!(error = %error, calls = pending.len(), "connection lost");
    rx.close();
    for (_, (tx, _)) in pending.drain() {
        let _ = tx.send(Err(match &error {
            Error::Transport(e) => Error::Transport(io::Error::new(e.kind(), e.to_string())),
            Error::Protocol(p) => Error::Protocol(p.clone()),
            _ => Error::ConnectionClosed,
        }));
    }
    // Calls queued but never written fail too. Drain with `recv` rather than dropping the
    // receiver: a send that had already begun when the channel closed still delivers its
    // command, and dropping the receiver would leave that command (and its caller, whose
    // handle keeps the channel alive) stuck in the queue until the call's timeout.
    while let Some(cmd) = rx.recv().await {
        if let Command::Call { reply, .. } = cmd {
            let _ = reply.send(Err(Error::ConnectionClosed));
        }
    }
}
