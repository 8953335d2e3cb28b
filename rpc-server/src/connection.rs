//! One task per connection: read frames, dispatch, coalesce replies, write.
//!
//! The task owns its read and write buffers. Calls that finish on the spot are answered
//! straight into the write buffer; the rest wait in a queue polled by this same task, so
//! no call costs a task spawn or a cross-thread hop unless its handler needs one (sync
//! handlers go to the blocking pool). All replies ready after one read are written with
//! one syscall.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use rpc_proto::{
    encode_response_err, encode_response_ok, Codec, ErrorCode, FrameError, Framer, Hello, Message,
    ServerError,
};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::method::{Reply, ReplyFuture};
use crate::registry::{Dispatch, Registry};
use crate::Config;

/// Buffers larger than this are given back to the allocator once empty.
const KEEP_BUFFER: usize = 256 * 1024;
const READ_CHUNK: usize = 16 * 1024;

/// A call still running, with the msgid to answer (`None` for a notification).
struct InFlight {
    msgid: Option<u64>,
    fut: ReplyFuture,
}

impl Future for InFlight {
    type Output = (Option<u64>, Reply);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let msgid = self.msgid;
        self.fut.as_mut().poll(cx).map(|r| (msgid, r))
    }
}

pub(crate) struct Connection {
    registry: Arc<Registry>,
    config: Arc<Config>,
    peer: SocketAddr,
    framer: Framer,
    /// No message has been read yet: a hello may still come.
    first: bool,
    /// Stop reading: EOF, shutdown, or a fatal stream error.
    reading: bool,
    wbuf: Vec<u8>,
    written: usize,
    inflight: FuturesUnordered<InFlight>,
}

/// Why reading stopped for good.
enum Fatal {
    Frame(FrameError),
    Hello,
}

impl Connection {
    pub(crate) fn new(registry: Arc<Registry>, config: Arc<Config>, peer: SocketAddr) -> Connection {
        let framer = Framer::new(Codec::Msgpack, config.max_message_size);
        Connection {
            registry,
            config,
            peer,
            framer,
            first: true,
            reading: true,
            wbuf: Vec::with_capacity(READ_CHUNK),
            written: 0,
            inflight: FuturesUnordered::new(),
        }
    }

    pub(crate) async fn run(mut self, mut stream: TcpStream, shutdown: CancellationToken) {
        info!(peer = %self.peer, "connection opened");
        let result = self.serve(&mut stream, &shutdown).await;
        match result {
            Ok(()) => info!(peer = %self.peer, "connection closed"),
            Err(e) => info!(peer = %self.peer, error = %e, "connection closed with an error"),
        }
    }

    async fn serve(&mut self, stream: &mut TcpStream, shutdown: &CancellationToken) -> io::Result<()> {
        let (mut rd, wr) = stream.split();
        let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
        let mut shutting_down = false;
        loop {
            if self.reading {
                if let Err(fatal) = self.process(&mut rbuf) {
                    self.reading = false;
                    match fatal {
                        Fatal::Frame(e) => {
                            warn!(peer = %self.peer, error = %e, "unreadable stream; closing after the replies");
                            if let Some(msgid) = e.msgid() {
                                self.send_error(msgid, &e.to_server_error());
                            }
                        }
                        Fatal::Hello => warn!(peer = %self.peer, "bad hello; closing"),
                    }
                }
            }
            // Collect every call that has finished meanwhile, without waiting.
            while let Some(Some((msgid, reply))) = self.inflight.next().now_or_never() {
                self.finish(msgid, reply);
            }
            if self.written < self.wbuf.len() {
                match wr.try_write(&self.wbuf[self.written..]) {
                    Ok(n) => self.written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                if self.written == self.wbuf.len() {
                    self.wbuf.clear();
                    self.written = 0;
                    if self.wbuf.capacity() > KEEP_BUFFER {
                        self.wbuf = Vec::with_capacity(READ_CHUNK);
                    }
                }
            }
            let pending_write = self.written < self.wbuf.len();
            if !self.reading && self.inflight.is_empty() && !pending_write {
                return Ok(());
            }
            let can_read = self.reading
                && self.inflight.len() < self.config.max_in_flight_per_connection
                && self.wbuf.len() < self.config.write_buffer_high_water;
            if can_read && rbuf.capacity() - rbuf.len() < READ_CHUNK / 4 {
                if rbuf.is_empty() && rbuf.capacity() > KEEP_BUFFER {
                    rbuf = BytesMut::with_capacity(READ_CHUNK);
                } else {
                    rbuf.reserve(READ_CHUNK.max(rbuf.len()));
                }
            }
            tokio::select! {
                biased;
                () = shutdown.cancelled(), if !shutting_down => {
                    shutting_down = true;
                    self.reading = false;
                    debug!(peer = %self.peer, in_flight = self.inflight.len(), "draining for shutdown");
                }
                Some((msgid, reply)) = self.inflight.next(), if !self.inflight.is_empty() => {
                    self.finish(msgid, reply);
                }
                r = wr.writable(), if pending_write => r?,
                r = rd.read_buf(&mut rbuf), if can_read => {
                    if r? == 0 {
                        self.reading = false;
                        if !rbuf.is_empty() {
                            warn!(peer = %self.peer, bytes = rbuf.len(), "connection closed in the middle of a message");
                        }
                    }
                }
            }
        }
    }

    /// Handle every complete message in `rbuf`.
    fn process(&mut self, rbuf: &mut BytesMut) -> Result<(), Fatal> {
        if self.first && !rbuf.is_empty() {
            if Hello::is_hello(rbuf) {
                match Hello::decode(rbuf) {
                    Ok(None) => return Ok(()),
                    Ok(Some((hello, n))) => {
                        rbuf.advance(n);
                        self.framer.set_codec(hello.codec);
                        Hello { codec: hello.codec }.encode(&mut self.wbuf);
                        debug!(peer = %self.peer, codec = ?hello.codec, "hello");
                    }
                    Err(_) => return Err(Fatal::Hello),
                }
            }
            self.first = false;
        }
        while !rbuf.is_empty() {
            let n = match self.framer.decode(rbuf) {
                Ok(Some(n)) => n,
                Ok(None) => return Ok(()),
                Err(e) => return Err(Fatal::Frame(e)),
            };
            self.handle(&rbuf[..n]);
            rbuf.advance(n);
        }
        Ok(())
    }

    fn handle(&mut self, frame: &[u8]) {
        let codec = self.framer.codec();
        match Message::parse(codec, frame) {
            Ok(Message::Request {
                msgid,
                method,
                params,
            }) => match self.registry.dispatch(method, params, codec) {
                Dispatch::Ready(reply) => self.finish(Some(msgid), reply),
                Dispatch::Pending(fut) => self.inflight.push(InFlight {
                    msgid: Some(msgid),
                    fut,
                }),
            },
            Ok(Message::Notification { method, params }) => {
                if !self.registry.contains(method) {
                    debug!(peer = %self.peer, method = %String::from_utf8_lossy(method), "unknown notification ignored");
                    return;
                }
                match self.registry.dispatch(method, params, codec) {
                    Dispatch::Ready(reply) => self.finish(None, reply),
                    Dispatch::Pending(fut) => self.inflight.push(InFlight { msgid: None, fut }),
                }
            }
            Ok(Message::Response { msgid, .. }) => {
                debug!(peer = %self.peer, msgid, "unexpected response ignored");
            }
            Err(e) => {
                warn!(peer = %self.peer, error = %e, "malformed message");
                if let Some(msgid) = e.msgid {
                    self.send_error(msgid, &e.to_server_error());
                }
            }
        }
    }

    /// Encode a finished call's reply into the write buffer.
    fn finish(&mut self, msgid: Option<u64>, reply: Reply) {
        let codec = self.framer.codec();
        match (msgid, reply.0) {
            (Some(msgid), Ok(value)) => {
                if let Err(e) = encode_response_ok(codec, &mut self.wbuf, msgid, &*value) {
                    let err =
                        ServerError::new(ErrorCode::Internal, format!("result could not be encoded: {e}"));
                    self.send_error(msgid, &err);
                }
            }
            (Some(msgid), Err(e)) => self.send_error(msgid, &e),
            (None, Ok(_)) => {}
            (None, Err(e)) => debug!(peer = %self.peer, error = %e, "notification failed"),
        }
    }

    fn send_error(&mut self, msgid: u64, e: &ServerError) {
        match e.kind() {
            ErrorCode::HandlerError | ErrorCode::MethodNotFound | ErrorCode::InvalidParams => {
                debug!(peer = %self.peer, msgid, code = e.code, error = %e.message, "error reply");
            }
            _ => warn!(peer = %self.peer, msgid, code = e.code, error = %e.message, "error reply"),
        }
        encode_response_err(self.framer.codec(), &mut self.wbuf, msgid, e);
    }
}
