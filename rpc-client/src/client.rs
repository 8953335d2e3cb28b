//! The async client: one connection, many calls in flight.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use rpc_proto::{encode_notification, encode_request, Codec, Framer, Hello, Params};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::reply::RawReply;
use crate::{Config, Error};

type ReplyTx = oneshot::Sender<Result<RawReply, Error>>;

enum Command {
    Call {
        msgid: u64,
        frame: Vec<u8>,
        reply: ReplyTx,
    },
    Send {
        frame: Vec<u8>,
    },
    Cancel {
        msgid: u64,
    },
}

/// An async client for any MessagePack-RPC server.
///
/// Cheap to clone: clones share one connection, on which many calls may be in flight;
/// each reply is matched to its call by msgid. When the connection drops, every call in
/// flight fails at once with [`Error::ConnectionClosed`] and the next call reconnects.
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
}

#[derive(Debug)]
struct Shared {
    addr: SocketAddr,
    config: Config,
    next_id: AtomicU64,
    conn: Mutex<Option<mpsc::Sender<Command>>>,
    connecting: tokio::sync::Mutex<()>,
}

/// Removes a call from the connection's table if its future is dropped (timeout or
/// cancellation) before the reply arrives.
struct CancelGuard<'a> {
    tx: &'a mpsc::Sender<Command>,
    msgid: u64,
    armed: bool,
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            // Best effort: if the queue is full the entry goes when the reply comes.
            let _ = self.tx.try_send(Command::Cancel { msgid: self.msgid });
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
        let addr = tokio::net::lookup_host(addr)
            .await?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address"))?;
        let timeout = config.timeout;
        let client = Client {
            shared: Arc::new(Shared {
                addr,
                config,
                next_id: AtomicU64::new(1),
                conn: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
            }),
            timeout,
        };
        client.sender().await?;
        Ok(client)
    }

    /// A handle on the same connection whose calls time out after `timeout`.
    pub fn with_timeout(&self, timeout: Duration) -> Client {
        Client {
            shared: self.shared.clone(),
            timeout,
        }
    }

    /// The address this client connects to.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
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
        let msgid = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let codec = self.shared.config.codec;
        let mut frame = Vec::with_capacity(64);
        encode_request(codec, &mut frame, msgid, method, &params)?;
        let tx = self.sender().await?;
        let (reply_tx, reply_rx) = oneshot::channel();
        tx.send(Command::Call {
            msgid,
            frame,
            reply: reply_tx,
        })
        .await
        .map_err(|_| Error::ConnectionClosed)?;
        let mut guard = CancelGuard {
            tx: &tx,
            msgid,
            armed: true,
        };
        let r = tokio::time::timeout(self.timeout, reply_rx).await;
        guard.armed = r.is_err();
        match r {
            Err(_) => Err(Error::Timeout(self.timeout)),
            Ok(Err(_)) => Err(Error::ConnectionClosed),
            Ok(Ok(reply)) => reply?.decode(),
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
        let tx = self.sender().await?;
        tx.send(Command::Send { frame })
            .await
            .map_err(|_| Error::ConnectionClosed)
    }

    /// The live connection's queue, connecting first if there is none.
    async fn sender(&self) -> Result<mpsc::Sender<Command>, Error> {
        if let Some(tx) = self.live() {
            return Ok(tx);
        }
        let _one_at_a_time = self.shared.connecting.lock().await;
        if let Some(tx) = self.live() {
            return Ok(tx);
        }
        let tx = connect(self.shared.addr, &self.shared.config).await?;
        // Unwrap: the lock is never held across a panic.
        *self.shared.conn.lock().unwrap() = Some(tx.clone());
        Ok(tx)
    }

    fn live(&self) -> Option<mpsc::Sender<Command>> {
        // Unwrap: the lock is never held across a panic.
        let conn = self.shared.conn.lock().unwrap();
        conn.as_ref().filter(|tx| !tx.is_closed()).cloned()
    }
}

async fn connect(addr: SocketAddr, config: &Config) -> Result<mpsc::Sender<Command>, Error> {
    let connect = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut rbuf = BytesMut::with_capacity(16 * 1024);
        if config.codec != Codec::Msgpack {
            let mut hello = Vec::new();
            Hello { codec: config.codec }.encode(&mut hello);
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
    let (tx, rx) = mpsc::channel(1024);
    let framer = Framer::new(config.codec, config.max_message_size);
    tokio::spawn(drive(stream, rbuf, rx, framer));
    Ok(tx)
}

/// The connection task: writes queued calls, matches replies to callers.
async fn drive(
    mut stream: TcpStream,
    mut rbuf: BytesMut,
    mut rx: mpsc::Receiver<Command>,
    mut framer: Framer,
) {
    let codec = framer.codec();
    let mut pending: HashMap<u64, ReplyTx> = HashMap::new();
    let mut wbuf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut written = 0;
    let (mut rd, wr) = stream.split();
    let apply = |cmd: Command, wbuf: &mut Vec<u8>, pending: &mut HashMap<u64, ReplyTx>| match cmd {
        Command::Call { msgid, frame, reply } => {
            wbuf.extend_from_slice(&frame);
            pending.insert(msgid, reply);
        }
        Command::Send { frame } => wbuf.extend_from_slice(&frame),
        Command::Cancel { msgid } => {
            pending.remove(&msgid);
        }
    };
    let error: Error = 'run: loop {
        while let Ok(cmd) = rx.try_recv() {
            apply(cmd, &mut wbuf, &mut pending);
        }
        if written < wbuf.len() {
            match wr.try_write(&wbuf[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => break 'run e.into(),
            }
            if written == wbuf.len() {
                wbuf.clear();
                written = 0;
            }
        }
        if rbuf.capacity() - rbuf.len() < 4096 {
            rbuf.reserve((16 * 1024usize).max(rbuf.len()));
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
                                    if let Some(tx) = pending.remove(&msgid) {
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
                Some(cmd) => apply(cmd, &mut wbuf, &mut pending),
                // Every handle is gone: nobody can call any more.
                None => return,
            },
            r = wr.writable(), if written < wbuf.len() => if let Err(e) = r {
                break 'run e.into();
            },
        }
    };
    debug!(error = %error, calls = pending.len(), "connection lost");
    rx.close();
    for (_, tx) in pending.drain() {
        let _ = tx.send(Err(match &error {
            Error::Transport(e) => Error::Transport(io::Error::new(e.kind(), e.to_string())),
            Error::Protocol(p) => Error::Protocol(p.clone()),
            _ => Error::ConnectionClosed,
        }));
    }
    // Calls queued but never written fail when their reply senders drop here.
}
