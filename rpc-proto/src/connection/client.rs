//! The client side of a connection, as a state machine with no I/O.
//!
//! [`ClientConnection`] owns what our clients' bytes mean: the optional hello (codec and
//! session) and its answer, msgid allocation, the in-flight table from msgid to the
//! caller's token, each call's deadline (started when the request is handed to the
//! transport, as a duration relative to `now`), `rpc.cancel` for calls given up on, the
//! idle `rpc.ping`, framing of replies (the one-pass path for a success reply is chosen
//! inside), the size limit, requests and notifications a server sends us (handed to the
//! caller when it serves them, answered method-not-found otherwise), whether the server's
//! error codes are ours ([`ClientConnection::is_server_ours`]), and the one rule of what
//! may be sent again after a reconnect ([`may_resend`]).
//!
//! It outlives the transports under it: after a disconnect ([`ClientConnection::handle_disconnect`])
//! the I/O layer connects again and calls [`ClientConnection::start`]; msgids keep counting,
//! so a call sent again keeps its msgid (the server's dedup key).

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::mem;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};

use crate::blob::Outbox;
use crate::codec::{Codec, EncodeValue, Params};
use crate::compress::{Compression, Zstd};
use crate::error::{EncodeError, ErrorCode, ServerError};
use crate::framer::Framer;
use crate::handshake::features::STREAMS;
use crate::handshake::Hello;
use crate::message::{
    encode_notification, encode_request_ext, encode_response_err, encode_response_ok,
    parse_bincode_response_prefix, parse_response_prefix, Message,
};
use crate::reserved::{CANCEL, PING};
use crate::stream::{encode_credit, encode_end, encode_item, StreamMessage};

use super::server::HINT_LIMIT;

/// Replies up to this size are handed over as a slice of the read buffer, to be copied;
/// larger ones as a `Bytes` split off it, so they are never copied.
pub const INLINE_REPLY: usize = 1024;

/// The settings of a client connection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The codec; anything but msgpack needs the hello.
    pub codec: Codec,
    /// Largest reply accepted.
    pub max_message_size: usize,
    /// Send the hello: the server then knows our extensions (timeouts travel with each
    /// request, `rpc.cancel`, `rpc.ping`). Only for servers of this framework.
    pub hello: bool,
    /// The server is known to be one of ours even without the hello (the caller says so):
    /// its error codes are ours ([`ClientConnection::is_server_ours`]).
    pub our_server: bool,
    /// The session id carried in the hello (unstable-network mode).
    pub session: Option<u128>,
    /// Send `rpc.ping` after this long without writing anything (servers that answered our
    /// hello only).
    pub heartbeat_interval: Option<Duration>,
    /// The optional features offered in the hello ([`features`](crate::handshake::features)
    /// bits); the server's answer says which are on ([`ClientConnection::features`]).
    pub features: u32,
    /// How requests are compressed once the server's hello agreed to
    /// [`ZSTD`](crate::handshake::features::ZSTD) (offered when `features` has it; not by
    /// default). Compressed replies are accepted whenever it was agreed.
    pub compression: Compression,
}

impl ClientConfig {
    /// Settings for `codec` with the defaults: no hello (unless the codec needs it), 64 MiB
    /// replies, a ping after 20 s idle.
    pub fn new(codec: Codec) -> ClientConfig {
        ClientConfig {
            codec,
            max_message_size: crate::DEFAULT_MAX_MESSAGE_SIZE,
            hello: codec != Codec::Msgpack,
            our_server: false,
            session: None,
            heartbeat_interval: Some(Duration::from_secs(20)),
            features: crate::handshake::features::STREAMS,
            compression: Compression::default(),
        }
    }
}

/// What the client does with replies: the calls' side of [`ClientConnection::handle_input`].
///
/// It also hears what a server sends of its own accord (Neovim's `rpcrequest` and
/// `rpcnotify`): by default a request is answered at once with method-not-found and a
/// notification is ignored.
pub trait Replies<T> {
    /// The reply to a call.
    fn reply(&mut self, reply: Reply<'_, T>);

    /// A request the server sent us, `[0, msgid, method, params]` (`params` raw, in the
    /// connection's codec). Return `true` to take it: then the caller answers it, on this
    /// transport, with [`ClientConnection::respond`]. `false` (the default: the caller
    /// serves nothing under that name) has it answered at once with method-not-found,
    /// rather than left waiting (Neovim blocks on it).
    fn request(&mut self, msgid: u64, method: &[u8], params: &[u8]) -> bool {
        let _ = (msgid, method, params);
        false
    }

    /// A notification the server sent us, `[2, method, params]`. Ignored by default.
    fn notification(&mut self, method: &[u8], params: &[u8]) {
        let _ = (method, params);
    }

    /// A stream message about the call `token` (`rpc.item` or `rpc.credit`), on a
    /// transport whose hello agreed streams. Ignored by default.
    fn stream(&mut self, token: T, message: StreamMessage<'_>) {
        let _ = (token, message);
    }
}

/// At most this many requests from the server may wait for the caller's answer at once;
/// beyond it a request is answered `overloaded` at once, so that a server sending requests
/// without end cannot grow the client without bound.
pub const MAX_SERVING: usize = 1024;

/// A reply, as handed to [`Replies::reply`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Reply<'a, T> {
    /// The caller's token for the call.
    pub token: T,
    /// Whether `part` is the result (`true`) or the error value.
    pub ok: bool,
    /// The raw result or error value.
    pub part: &'a [u8],
    /// For a reply larger than [`INLINE_REPLY`], the whole frame as `Bytes`, so that
    /// `frame.slice_ref(part)` keeps it without a copy.
    pub frame: Option<&'a Bytes>,
    /// The call's deadline, once started: a call sent again (after a refusal) keeps it.
    pub deadline: Option<Instant>,
}

/// A read buffer [`ClientConnection::handle_input`] takes replies from.
pub trait ReadBuf {
    /// The bytes received and not consumed yet.
    fn bytes(&self) -> &[u8];
    /// The first `n` bytes are handled.
    fn consume(&mut self, n: usize);
    /// The first `n` bytes (a large reply) split off as `Bytes` without a copy, if this
    /// buffer can; `None` to have them handed over as a slice (and then consumed).
    fn split_frame(&mut self, n: usize) -> Option<Bytes>;
}

impl ReadBuf for BytesMut {
    #[inline]
    fn bytes(&self) -> &[u8] {
        self
    }

    #[inline]
    fn consume(&mut self, n: usize) {
        self.advance(n);
    }

    fn split_frame(&mut self, n: usize) -> Option<Bytes> {
        Some(self.split_to(n).freeze())
    }
}

/// What happened to a call that ends without a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// The request never reached a transport (no connection).
    NotSent,
    /// The connection was lost after the request was written: it may or may not have run.
    Lost,
    /// The server refused it with `shutting down`: it did not run.
    Refused,
    /// Its deadline passed.
    TimedOut,
}

/// The one rule of what a client may send again on a new connection: what did not run
/// (never sent, or refused by a server shutting down), and what may have run when running
/// it twice is harmless: the server dedups it (the client has a session) or the caller
/// said it is idempotent. A call past its deadline is never sent again.
pub fn may_resend(failure: Failure, session: bool, idempotent: bool) -> bool {
    match failure {
        Failure::NotSent | Failure::Refused => true,
        Failure::Lost => session || idempotent,
        Failure::TimedOut => false,
    }
}

/// A reply that breaks the protocol: the connection is to be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The stream is corrupt or a reply is too large.
    #[error("{0}")]
    Frame(#[from] crate::error::FrameError),
    /// The server did not answer our hello with one of its own in our codec.
    #[error("the server did not accept the hello")]
    Hello,
}

/// A call in flight.
#[derive(Debug, Clone, Copy)]
struct Entry<T> {
    msgid: u64,
    token: T,
    /// Started when the request is handed to the transport (the timeout waits in
    /// `fresh` until then: entries stay small).
    deadline: Option<Instant>,
}

/// The client side of a connection, outliving the transports under it. `T` is the
/// caller's token for a call (the async client's slot index).
#[derive(Debug)]
pub struct ClientConnection<T> {
    config: ClientConfig,
    framer: Framer,
    /// The framer holds a message begun in an earlier read.
    framing: bool,
    /// The size of the last reply too large to copy (0 before the first).
    large: usize,
    /// The hello is sent and its answer not read yet.
    awaiting_hello: bool,
    /// Requests and notifications for the transport, not yet taken.
    out: Outbox,
    next_id: u64,
    waiting: Waiting<T>,
    /// Msgids of calls queued since the last [`ClientConnection::take_transmit`]: their
    /// deadlines start then (one clock read per batch, not per call).
    fresh: Vec<(u64, Duration)>,
    /// The earliest deadline of a call in flight, as last computed.
    earliest: Option<Instant>,
    /// When requests were last taken for the transport.
    last_write: Instant,
    /// Msgids of requests from the server taken by the caller ([`Replies::request`]) and
    /// not answered yet, on the current transport.
    serving: Vec<u64>,
    /// The features the server's hello agreed to, on the current transport.
    agreed: u32,
    /// How what we send is compressed: off until the server's hello agrees to zstd (a
    /// request queued before its answer goes uncompressed).
    zstd: Zstd,
}

impl<T: Copy> ClientConnection<T> {
    /// A client connection with `config`, not started yet.
    pub fn new(config: ClientConfig, now: Instant) -> ClientConnection<T> {
        ClientConnection {
            framer: Framer::new(config.codec, config.max_message_size),
            config,
            framing: false,
            large: 0,
            awaiting_hello: false,
            out: Outbox::default(),
            next_id: 0,
            waiting: Waiting::default(),
            fresh: Vec::new(),
            earliest: None,
            last_write: now,
            serving: Vec::new(),
            agreed: 0,
            zstd: Zstd::OFF,
        }
    }

    /// The optional features on for the current transport, as the server's hello agreed
    /// ([`features`](crate::handshake::features) bits; 0 without the hello).
    pub fn features(&self) -> u32 {
        self.agreed
    }

    /// The settings.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Whether our extensions are on (the hello is sent): timeouts travel, cancels and
    /// pings are sent.
    pub fn is_extended(&self) -> bool {
        self.config.hello
    }

    /// Whether the server is one of ours: it answered our hello, or the caller said so
    /// ([`ClientConfig::our_server`]). Only then are the codes of its error replies ours
    /// ([`ErrorCode`]; a `shutting down` refusal among them, see [`is_refused`]); any other
    /// server (a third-party MessagePack-RPC server, which cannot be told from ours called
    /// without the hello) has codes of its own: Neovim's `[1, "Invalid buffer id"]` is its
    /// validation error, not our method-not-found. With the hello on, no reply is handed
    /// over before the server's hello has been read (one that does not answer it is a
    /// [`ProtocolError::Hello`]), so every reply comes from a server that answered.
    pub fn is_server_ours(&self) -> bool {
        self.config.hello || self.config.our_server
    }

    /// A new transport is up, at `now`: queue the hello if we send one. Calls of an
    /// earlier transport must have been failed ([`ClientConnection::handle_disconnect`]).
    pub fn start(&mut self, now: Instant) {
        self.framer.reset();
        self.framing = false;
        self.out.clear();
        self.fresh.clear();
        self.earliest = None;
        self.last_write = now;
        self.serving.clear();
        self.agreed = 0;
        self.zstd = Zstd::OFF;
        self.awaiting_hello = self.config.hello;
        if self.config.hello {
            Hello::new(self.config.codec)
                .with_session(self.config.session)
                .with_features(self.config.features)
                .encode(self.out.buf_mut());
        }
    }

    /// Whether the server's answer to our hello is still to come: calls should wait for it
    /// (a request queued now is written after the hello, which is correct, but an error in
    /// the hello would fail it).
    pub fn is_awaiting_hello(&self) -> bool {
        self.awaiting_hello
    }

    /// Queue a request: `msgid` is `None` for a new call (one is allocated) or the msgid of
    /// an earlier attempt (a call sent again keeps it, as the server's dedup key);
    /// `deadline` is the earlier attempt's, if any (otherwise it starts `timeout` from when
    /// the request is taken for the transport). `metadata` is the call's
    /// [metadata](crate::Metadata), encoded; it is sent only with the extensions (the
    /// hello), and dropped otherwise. Returns the msgid.
    ///
    /// # Errors
    ///
    /// When the params cannot be encoded: nothing was queued.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub fn send_request<P: Params + ?Sized>(
        &mut self,
        msgid: Option<u64>,
        method: &str,
        params: &P,
        timeout: Duration,
        deadline: Option<Instant>,
        metadata: Option<&[u8]>,
        token: T,
    ) -> Result<u64, EncodeError> {
        let msgid = msgid.unwrap_or_else(|| {
            self.next_id += 1;
            self.next_id
        });
        let sent_timeout = self.config.hello.then_some(timeout);
        let (codec, metadata) = (self.config.codec, metadata.filter(|_| self.config.hello));
        // Large blobs in the params are sent from their own buffers, once any has been
        // seen in this process (`crate::blob`); not when compressing (compression reads
        // the whole frame from the buffer).
        if crate::blob::in_use() && !self.zstd.is_on() {
            send_shared(
                &mut self.out,
                codec,
                msgid,
                method,
                params,
                sent_timeout,
                metadata,
            )?;
        } else {
            let start = self.out.buf.len();
            encode_request_ext(
                codec,
                &mut self.out.buf,
                msgid,
                method,
                params,
                sent_timeout,
                metadata,
            )?;
            self.zstd.apply(codec, &mut self.out.buf, start);
        }
        self.waiting.insert(Entry {
            msgid,
            token,
            deadline,
        });
        if deadline.is_none() {
            self.fresh.push((msgid, timeout));
        } else if self.earliest.is_none_or(|e| deadline < Some(e)) {
            self.earliest = deadline;
        }
        Ok(msgid)
    }

    /// Queue a notification.
    ///
    /// # Errors
    ///
    /// When the params cannot be encoded: nothing was queued.
    pub fn send_notification<P: Params + ?Sized>(
        &mut self,
        method: &str,
        params: &P,
    ) -> Result<(), EncodeError> {
        let start = self.out.buf.len();
        encode_notification(self.config.codec, &mut self.out.buf, method, params)?;
        self.zstd.apply(self.config.codec, &mut self.out.buf, start);
        Ok(())
    }

    /// The caller gave up on `msgid` before its reply (its future was dropped): forget it
    /// and, with extensions, tell the server. Returns whether it was still in flight.
    pub fn forget(&mut self, msgid: u64) -> bool {
        let in_flight = self.waiting.remove(msgid).is_some();
        if in_flight && self.config.hello {
            self.cancel(msgid);
        }
        in_flight
    }

    fn cancel(&mut self, msgid: u64) {
        // Encoding an integer cannot fail.
        let _ = encode_notification(self.config.codec, &mut self.out.buf, CANCEL, &(msgid,));
    }

    /// Whether requests or notifications wait to be taken.
    pub fn has_transmit(&self) -> bool {
        !self.out.is_empty()
    }

    /// Take everything queued for the transport, at `now`, by swapping it with `buf`
    /// (which must be empty; its capacity is kept for the next batch). The deadlines of the
    /// calls in it start now. Write it with [`Outbox::chunk`] and [`Outbox::advance`], or
    /// [`Outbox::slices`] for vectored writes: large [`Blob`](crate::Blob) arguments are
    /// beside the buffer, not in it.
    #[inline]
    pub fn take_transmit(&mut self, now: Instant, buf: &mut Outbox) {
        debug_assert!(buf.is_empty());
        mem::swap(&mut self.out, buf);
        if buf.is_empty() {
            return;
        }
        self.last_write = now;
        for (msgid, timeout) in self.fresh.drain(..) {
            // A call forgotten since it was queued holds nothing to time.
            if let Some(entry) = self.waiting.get_mut(msgid) {
                let deadline = *entry.deadline.get_or_insert(now + timeout);
                if self.earliest.is_none_or(|e| deadline < e) {
                    self.earliest = Some(deadline);
                }
            }
        }
    }

    /// The deadline of `msgid`, once started.
    pub fn deadline(&mut self, msgid: u64) -> Option<Instant> {
        self.waiting.get_mut(msgid).and_then(|e| e.deadline)
    }

    /// Calls in flight.
    pub fn in_flight(&self) -> usize {
        self.waiting.len
    }

    /// How much room the next read should have for the reply being read, as its headers
    /// tell, and for a whole large reply when large ones have been coming.
    pub fn read_hint(&self, rbuf: &[u8]) -> usize {
        self.framer.needed(rbuf).max(self.large).min(HINT_LIMIT)
    }

    /// Hand every complete reply in `rbuf` to its caller, and consume it.
    ///
    /// # Errors
    ///
    /// [`ProtocolError`] when the stream is unreadable: close the transport.
    pub fn handle_input<B: ReadBuf, R: Replies<T>>(
        &mut self,
        rbuf: &mut B,
        replies: &mut R,
    ) -> Result<(), ProtocolError> {
        if self.awaiting_hello {
            match Hello::decode(rbuf.bytes()) {
                Ok(None) => return Ok(()),
                Ok(Some((hello, n))) if hello.codec == self.config.codec => {
                    rbuf.consume(n);
                    self.awaiting_hello = false;
                    // Never more than offered, whatever the server says.
                    self.agreed = hello.features & self.config.features;
                    if self.agreed & crate::handshake::features::ZSTD != 0 {
                        self.zstd = Zstd::on(&self.config.compression);
                    }
                }
                _ => return Err(ProtocolError::Hello),
            }
        }
        let codec = self.config.codec;
        let max = self.framer.max_message_size();
        // Small replies are read in place and the buffer advanced once for the batch.
        let mut at = 0;
        let result = loop {
            // A success reply is framed and parsed in one pass (its msgid, and where its
            // result starts); anything else, or a message begun in an earlier read, goes
            // through the framer and is parsed below.
            let buf = &rbuf.bytes()[at..];
            let parsed = match (self.framing, codec) {
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
                None => match self.framer.decode(buf) {
                    Ok(None) => {
                        self.framing = !buf.is_empty();
                        break Ok(());
                    }
                    Ok(Some(n)) => {
                        self.framing = false;
                        // A compressed message: only from a server that agreed to zstd
                        // (never on the one-pass path).
                        if self.agreed & crate::handshake::features::ZSTD != 0 {
                            match self.put_compressed(replies, &buf[..n]) {
                                Ok(false) => {}
                                Ok(true) => {
                                    at += n;
                                    continue;
                                }
                                Err(e) => break Err(e),
                            }
                        }
                        n
                    }
                    Err(e) => break Err(ProtocolError::Frame(e)),
                },
            };
            let known = one_pass.map(|(msgid, start, _)| (msgid, start));
            if n > INLINE_REPLY {
                self.large = n;
                rbuf.consume(at);
                at = 0;
                if let Some(frame) = rbuf.split_frame(n) {
                    self.put_frame(replies, &frame, known, Some(&frame));
                    continue;
                }
            }
            self.put_frame(replies, &rbuf.bytes()[at..at + n], known, None);
            at += n;
        };
        rbuf.consume(at);
        result
    }

    /// If `frame` is a compressed message, decompress it and handle what it holds; returns
    /// whether it was one. Out of line: never on a small reply's path.
    #[cold]
    #[inline(never)]
    fn put_compressed<R: Replies<T>>(
        &mut self,
        replies: &mut R,
        frame: &[u8],
    ) -> Result<bool, ProtocolError> {
        let codec = self.config.codec;
        let Some(z) = crate::compress::compressed(codec, frame) else {
            return Ok(false);
        };
        let msg = Bytes::from(crate::compress::decompress(
            codec,
            z,
            self.framer.max_message_size(),
        )?);
        let shared = (msg.len() > INLINE_REPLY).then_some(&msg);
        self.put_frame(replies, &msg, None, shared);
        Ok(true)
    }

    /// Put the reply in `frame` into its caller's hands: `known` is its msgid and where its
    /// result starts when it was parsed already; otherwise it is parsed here.
    #[inline(always)]
    fn put_frame<R: Replies<T>>(
        &mut self,
        replies: &mut R,
        frame: &[u8],
        known: Option<(u64, usize)>,
        shared: Option<&Bytes>,
    ) {
        match known {
            Some((msgid, start)) => self.put(replies, msgid, true, &frame[start..], shared),
            None => match Message::parse(self.config.codec, frame) {
                Ok(Message::Response { msgid, outcome }) => match outcome {
                    Ok(result) => self.put(replies, msgid, true, result, shared),
                    Err(error) => self.put(replies, msgid, false, error, shared),
                },
                Ok(Message::Request {
                    msgid,
                    method,
                    params,
                    ..
                }) => self.server_request(replies, msgid, method, params),
                Ok(Message::Notification { method, params }) => {
                    self.server_notification(replies, method, params)
                }
                // A message that does not parse is ignored (the framer found where it
                // ends: the stream is still in step).
                Err(_) => {}
            },
        }
    }

    /// A notification from the server: a stream message about a call in flight (when
    /// streams were agreed), or the caller's. Stream messages naming no call in flight are
    /// dropped (the call ended or was given up on).
    #[inline(never)]
    fn server_notification<R: Replies<T>>(&mut self, replies: &mut R, method: &[u8], params: &[u8]) {
        if self.agreed & STREAMS != 0 {
            match StreamMessage::parse(self.config.codec, method, params) {
                Some(Ok(message)) => {
                    let msgid = match message {
                        StreamMessage::Item { msgid, .. }
                        | StreamMessage::Credit { msgid, .. }
                        | StreamMessage::End { msgid, .. } => msgid,
                    };
                    if let Some(entry) = self.waiting.get_mut(msgid) {
                        replies.stream(entry.token, message);
                    }
                    return;
                }
                Some(Err(_)) => return,
                None => {}
            }
        }
        replies.notification(method, params);
    }

    /// Queue one item of call `msgid`'s argument stream (`rpc.item`); the caller keeps to
    /// the credit the server granted.
    ///
    /// # Errors
    ///
    /// When the item cannot be encoded: nothing was queued.
    pub fn send_item<V: EncodeValue + ?Sized>(&mut self, msgid: u64, item: &V) -> Result<(), EncodeError> {
        let start = self.out.buf.len();
        encode_item(self.config.codec, &mut self.out.buf, msgid, item)?;
        self.zstd.apply(self.config.codec, &mut self.out.buf, start);
        Ok(())
    }

    /// Grant the server `n` more items of call `msgid`'s result stream (`rpc.credit`).
    pub fn send_credit(&mut self, msgid: u64, n: u64) {
        encode_credit(self.config.codec, &mut self.out.buf, msgid, n);
    }

    /// End call `msgid`'s argument stream (`rpc.end`), with an error or not.
    pub fn send_end(&mut self, msgid: u64, error: Option<&ServerError>) {
        encode_end(self.config.codec, &mut self.out.buf, msgid, error);
    }

    /// A server calling us (Neovim's `rpcrequest`): handed to the caller if it serves the
    /// method, otherwise answered at once with method-not-found rather than left waiting
    /// (Neovim blocks every client until it is answered). Out of line: never on a reply's
    /// path.
    #[inline(never)]
    fn server_request<R: Replies<T>>(&mut self, replies: &mut R, msgid: u64, method: &[u8], params: &[u8]) {
        let error = if self.serving.len() >= MAX_SERVING {
            ServerError::new(
                ErrorCode::Overloaded,
                format!("{MAX_SERVING} requests from the server are waiting for an answer already"),
            )
        } else if replies.request(msgid, method, params) {
            self.serving.push(msgid);
            return;
        } else {
            ServerError::method_not_found(method)
        };
        encode_response_err(self.config.codec, &mut self.out.buf, msgid, &error);
    }

    /// Answer the server's request `msgid`, taken by [`Replies::request`] on the current
    /// transport: `[1, msgid, nil, result]` or `[1, msgid, error, nil]`. A result that
    /// cannot be encoded is answered as an internal error. Returns whether it was answered:
    /// `false` when `msgid` is not waiting for an answer (its transport is gone, or it was
    /// answered already), and then nothing is queued.
    pub fn respond<V: EncodeValue + ?Sized>(
        &mut self,
        msgid: u64,
        outcome: Result<&V, &ServerError>,
    ) -> bool {
        let Some(at) = self.serving.iter().position(|&id| id == msgid) else {
            return false;
        };
        self.serving.swap_remove(at);
        let codec = self.config.codec;
        let start = self.out.buf.len();
        let encoded = match outcome {
            Ok(result) => encode_response_ok(codec, &mut self.out.buf, msgid, result),
            Err(error) => {
                encode_response_err(codec, &mut self.out.buf, msgid, error);
                Ok(())
            }
        };
        if let Err(e) = encoded {
            let error = ServerError::new(ErrorCode::Internal, format!("could not encode the result: {e}"));
            encode_response_err(codec, &mut self.out.buf, msgid, &error);
        }
        self.zstd.apply(codec, &mut self.out.buf, start);
        true
    }

    #[inline(always)]
    fn put<R: Replies<T>>(
        &mut self,
        replies: &mut R,
        msgid: u64,
        ok: bool,
        part: &[u8],
        shared: Option<&Bytes>,
    ) {
        // A reply to a call nobody waits for any more is dropped.
        if let Some(entry) = self.waiting.remove(msgid) {
            replies.reply(Reply {
                token: entry.token,
                ok,
                part,
                frame: shared,
                deadline: entry.deadline,
            });
        }
    }

    /// The transport is gone: every call in flight ends (the caller decides with
    /// [`may_resend`] whether to send it again), with the deadline it had. Queued bytes
    /// are dropped.
    pub fn handle_disconnect(&mut self, mut lost: impl FnMut(T, Option<Instant>)) {
        self.out.clear();
        // Requests of the lost transport can no longer be answered.
        self.serving.clear();
        self.fresh.clear();
        self.earliest = None;
        self.awaiting_hello = false;
        for entry in self.waiting.drain() {
            lost(entry.token, entry.deadline);
        }
    }

    /// The earliest deadline of a call in flight.
    pub fn poll_deadline(&self) -> Option<Instant> {
        self.earliest
    }

    /// Fail the calls whose deadline passed at `now` (with extensions, the server is told
    /// to cancel them).
    pub fn handle_deadlines(&mut self, now: Instant, mut timed_out: impl FnMut(T)) {
        let mut next: Option<Instant> = None;
        let mut expired = Vec::new();
        for entry in self.waiting.iter() {
            let Some(deadline) = entry.deadline else { continue };
            if deadline > now {
                next = Some(next.map_or(deadline, |n| n.min(deadline)));
            } else {
                expired.push(entry.msgid);
            }
        }
        for msgid in expired {
            if let Some(entry) = self.waiting.remove(msgid) {
                if self.config.hello {
                    self.cancel(msgid);
                }
                timed_out(entry.token);
            }
        }
        self.earliest = next;
    }

    /// When the idle ping is next due: only to a server that answered our hello. A plain
    /// MessagePack-RPC server does not know `rpc.ping` (Neovim answers each one with an
    /// error event); it may close an idle connection, and the next call connects again.
    pub fn poll_ping(&self) -> Option<Instant> {
        let interval = self.config.heartbeat_interval?;
        self.config.hello.then(|| self.last_write + interval)
    }

    /// The ping timer fired at `now`; `writing` says whether the transport still has bytes
    /// to write. Queues `rpc.ping` if nothing was written for a whole interval. Returns
    /// when to look again.
    pub fn handle_ping(&mut self, now: Instant, writing: bool) -> Option<Instant> {
        let interval = self.config.heartbeat_interval?;
        if !self.config.hello {
            return None;
        }
        if now.duration_since(self.last_write) >= interval && !writing {
            if self.out.is_empty() {
                // Encoding an empty array cannot fail.
                let _ = encode_notification(self.config.codec, &mut self.out.buf, PING, &());
            }
            Some(now + interval)
        } else {
            Some(self.last_write + interval)
        }
    }
}

/// [`encode_request_ext`] into `out` with blob sharing on, kept out of the common path.
#[inline(never)]
fn send_shared<P: Params + ?Sized>(
    out: &mut Outbox,
    codec: Codec,
    msgid: u64,
    method: &str,
    params: &P,
    timeout: Option<Duration>,
    metadata: Option<&[u8]>,
) -> Result<(), EncodeError> {
    out.encode_shared(|buf| encode_request_ext(codec, buf, msgid, method, params, timeout, metadata))
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

/// The calls in flight, by msgid.
///
/// Msgids are handed out in sequence, so the calls in flight nearly always land in
/// distinct places of a ring indexed by the msgid's low bits (kept at least twice as large
/// as the number of calls); the rare one that collides (a call still waiting when the ring
/// has come round to it again) goes to a map. No hashing on the common path.
#[derive(Debug)]
struct Waiting<T> {
    /// msgid 0 (never handed out) marks a free place.
    ring: Vec<Option<Entry<T>>>,
    overflow: HashMap<u64, Entry<T>, BuildHasherDefault<IdHasher>>,
    len: usize,
}

impl<T> Default for Waiting<T> {
    fn default() -> Waiting<T> {
        Waiting {
            ring: Vec::new(),
            overflow: HashMap::default(),
            len: 0,
        }
    }
}

impl<T: Copy> Waiting<T> {
    #[inline]
    fn place(&self, msgid: u64) -> usize {
        // Truncation intended: the low bits pick the place.
        (msgid as usize) & (self.ring.len() - 1)
    }

    #[inline]
    fn insert(&mut self, entry: Entry<T>) {
        if self.len * 2 >= self.ring.len() {
            self.grow();
        }
        let at = self.place(entry.msgid);
        match &mut self.ring[at] {
            free @ None => *free = Some(entry),
            Some(_) => {
                self.overflow.insert(entry.msgid, entry);
            }
        }
        self.len += 1;
    }

    #[inline]
    fn get_mut(&mut self, msgid: u64) -> Option<&mut Entry<T>> {
        if self.ring.is_empty() {
            return None;
        }
        let at = self.place(msgid);
        match &mut self.ring[at] {
            Some(e) if e.msgid == msgid => Some(e),
            _ => self.overflow.get_mut(&msgid),
        }
    }

    #[inline]
    fn remove(&mut self, msgid: u64) -> Option<Entry<T>> {
        if self.ring.is_empty() {
            return None;
        }
        let at = self.place(msgid);
        let found = match self.ring[at] {
            Some(e) if e.msgid == msgid => self.ring[at].take(),
            _ => self.overflow.remove(&msgid),
        };
        if found.is_some() {
            self.len -= 1;
        }
        found
    }

    fn iter(&self) -> impl Iterator<Item = &Entry<T>> {
        self.ring.iter().flatten().chain(self.overflow.values())
    }

    fn drain(&mut self) -> Vec<Entry<T>> {
        let mut all: Vec<Entry<T>> = self.ring.iter_mut().filter_map(Option::take).collect();
        all.extend(self.overflow.drain().map(|(_, e)| e));
        self.len = 0;
        all
    }

    fn grow(&mut self) {
        // Small at first (a blocking client has one call in flight; a client per request
        // should not pay for a large table), doubling with the calls in flight.
        let size = (self.ring.len() * 2).max(8);
        let old = mem::replace(&mut self.ring, vec![None; size]);
        let entries: Vec<Entry<T>> = old
            .into_iter()
            .flatten()
            .chain(self.overflow.drain().map(|(_, e)| e))
            .collect();
        for entry in entries {
            let at = self.place(entry.msgid);
            match &mut self.ring[at] {
                free @ None => *free = Some(entry),
                Some(_) => {
                    self.overflow.insert(entry.msgid, entry);
                }
            }
        }
    }
}

/// Whether `e` is a server's refusal of a call that did not run (it was shutting down).
pub fn is_refused(e: &ServerError) -> bool {
    e.kind() == ErrorCode::ShuttingDown
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{encode_request, encode_response_err, encode_response_ok};
    use hex_literal::hex;

    /// Records every reply: token, ok, the part's bytes, whether it came as `Bytes`.
    #[derive(Default)]
    struct Got(Vec<(u32, bool, Vec<u8>, bool)>);

    impl Replies<u32> for Got {
        fn reply(&mut self, r: Reply<'_, u32>) {
            self.0.push((r.token, r.ok, r.part.to_vec(), r.frame.is_some()));
        }
    }

    fn conn(codec: Codec, hello: bool) -> (ClientConnection<u32>, Instant) {
        let now = Instant::now();
        let mut config = ClientConfig::new(codec);
        config.hello = hello;
        config.session = hello.then_some(7);
        let mut c = ClientConnection::new(config, now);
        c.start(now);
        (c, now)
    }

    fn take(c: &mut ClientConnection<u32>, now: Instant) -> Vec<u8> {
        let mut out = crate::blob::Outbox::default();
        c.take_transmit(now, &mut out);
        out.to_vec()
    }

    #[test]
    fn plain_request_bytes_and_reply_at_every_split_point() {
        let (mut c, now) = conn(Codec::Msgpack, false);
        let id = c
            .send_request(None, "add", &(2, 3), Duration::from_secs(1), None, None, 10)
            .unwrap();
        assert_eq!(id, 1);
        // No hello, no timeout element: exactly the spec's request.
        assert_eq!(take(&mut c, now), hex!("94 00 01 a3 61 64 64 92 02 03"));
        // A success reply (one pass) then an error reply to an unknown msgid (framer).
        let mut input = hex!("94 01 01 c0 05").to_vec();
        encode_response_err(
            Codec::Msgpack,
            &mut input,
            99,
            &ServerError::new(ErrorCode::Internal, "x"),
        );
        for cut in 0..=input.len() {
            let (mut c, now) = conn(Codec::Msgpack, false);
            c.send_request(None, "add", &(2, 3), Duration::from_secs(1), None, None, 10)
                .unwrap();
            take(&mut c, now);
            let mut got = Got::default();
            let mut rbuf = BytesMut::from(&input[..cut]);
            c.handle_input(&mut rbuf, &mut got).unwrap();
            rbuf.extend_from_slice(&input[cut..]);
            c.handle_input(&mut rbuf, &mut got).unwrap();
            assert_eq!(got.0, [(10, true, vec![0x05], false)], "cut at {cut}");
            assert!(rbuf.is_empty());
            assert_eq!(c.in_flight(), 0);
        }
    }

    #[test]
    fn hello_with_each_codec_then_timeouts_travel() {
        for codec in [Codec::Msgpack, Codec::Bincode] {
            let (mut c, now) = conn(codec, true);
            assert!(c.is_awaiting_hello());
            let mut expect = Vec::new();
            Hello::new(codec)
                .with_session(Some(7))
                .with_features(crate::handshake::features::STREAMS)
                .encode(&mut expect);
            c.send_request(None, "add", &(1, 2), Duration::from_millis(1500), None, None, 3)
                .unwrap();
            encode_request(
                codec,
                &mut expect,
                1,
                "add",
                &(1, 2),
                Some(Duration::from_millis(1500)),
            )
            .unwrap();
            assert_eq!(
                take(&mut c, now),
                expect,
                "{codec:?}: the hello first, then the request with its timeout"
            );
            // The server's hello and the reply, split anywhere.
            let mut input = Vec::new();
            Hello::new(codec).with_session(Some(7)).encode(&mut input);
            encode_response_ok(codec, &mut input, 1, &3i64).unwrap();
            for cut in 0..=input.len() {
                let (mut c, now) = conn(codec, true);
                c.send_request(None, "add", &(1, 2), Duration::from_secs(1), None, None, 3)
                    .unwrap();
                take(&mut c, now);
                let mut got = Got::default();
                let mut rbuf = BytesMut::from(&input[..cut]);
                c.handle_input(&mut rbuf, &mut got).unwrap();
                rbuf.extend_from_slice(&input[cut..]);
                c.handle_input(&mut rbuf, &mut got).unwrap();
                assert!(!c.is_awaiting_hello());
                assert_eq!(got.0.len(), 1, "{codec:?} cut at {cut}");
                assert_eq!(codec.decode_framed::<i64>(&got.0[0].2).unwrap(), 3);
            }
        }
    }

    #[test]
    fn a_server_that_refuses_the_hello_is_an_error() {
        let (mut c, _) = conn(Codec::Msgpack, true);
        let mut rbuf = BytesMut::from(&hex!("94 01 01 c0 05")[..]);
        assert_eq!(
            c.handle_input(&mut rbuf, &mut Got::default()),
            Err(ProtocolError::Hello)
        );
        // A hello naming another codec too.
        let (mut c, _) = conn(Codec::Bincode, true);
        let mut rbuf = hello_bytes(Codec::Msgpack);
        assert_eq!(
            c.handle_input(&mut rbuf, &mut Got::default()),
            Err(ProtocolError::Hello)
        );
    }

    #[test]
    fn deadlines_start_when_taken_and_expire_with_a_cancel() {
        let (mut c, t0) = conn(Codec::Msgpack, true);
        c.handle_input(&mut hello_bytes(Codec::Msgpack), &mut Got::default())
            .unwrap();
        take(&mut c, t0);
        let a = c
            .send_request(None, "slow", &(1,), Duration::from_secs(2), None, None, 1)
            .unwrap();
        let b = c
            .send_request(None, "slow", &(2,), Duration::from_secs(5), None, None, 2)
            .unwrap();
        assert_eq!(
            c.poll_deadline(),
            None,
            "not started before the transport takes them"
        );
        let t1 = t0 + Duration::from_millis(10);
        take(&mut c, t1);
        assert_eq!(c.poll_deadline(), Some(t1 + Duration::from_secs(2)));
        assert_eq!(c.deadline(b), Some(t1 + Duration::from_secs(5)));
        let mut timed_out = Vec::new();
        c.handle_deadlines(t1 + Duration::from_secs(2), |t| timed_out.push(t));
        assert_eq!(timed_out, [1]);
        assert_eq!(c.poll_deadline(), Some(t1 + Duration::from_secs(5)));
        // The server is told to cancel it.
        let mut cancel = Vec::new();
        encode_notification(Codec::Msgpack, &mut cancel, CANCEL, &(a,)).unwrap();
        assert_eq!(take(&mut c, t1), cancel);
        // Its late reply is dropped.
        let mut got = Got::default();
        let mut rbuf = BytesMut::new();
        let mut late = Vec::new();
        encode_response_ok(Codec::Msgpack, &mut late, a, &1u8).unwrap();
        rbuf.extend_from_slice(&late);
        c.handle_input(&mut rbuf, &mut got).unwrap();
        assert!(got.0.is_empty());
    }

    fn hello_bytes(codec: Codec) -> BytesMut {
        let mut v = Vec::new();
        Hello::new(codec).with_session(Some(7)).encode(&mut v);
        BytesMut::from(&v[..])
    }

    #[test]
    fn disconnect_ends_every_call_and_a_resent_call_keeps_its_msgid_and_deadline() {
        let (mut c, t0) = conn(Codec::Msgpack, false);
        let a = c
            .send_request(None, "f", &(1,), Duration::from_secs(3), None, None, 1)
            .unwrap();
        take(&mut c, t0);
        let b = c
            .send_request(None, "f", &(2,), Duration::from_secs(3), None, None, 2)
            .unwrap();
        let mut lost = Vec::new();
        c.handle_disconnect(|t, d| lost.push((t, d)));
        lost.sort_unstable();
        assert_eq!(lost, [(1, Some(t0 + Duration::from_secs(3))), (2, None)]);
        assert_eq!(c.in_flight(), 0);
        assert!(!c.has_transmit(), "queued bytes belong to the lost transport");
        // The resend rule: what did not run always; what may have run with a session or
        // when idempotent; never past its deadline.
        assert!(may_resend(Failure::NotSent, false, false));
        assert!(may_resend(Failure::Refused, false, false));
        assert!(!may_resend(Failure::Lost, false, false));
        assert!(may_resend(Failure::Lost, true, false));
        assert!(may_resend(Failure::Lost, false, true));
        assert!(!may_resend(Failure::TimedOut, true, true));
        // On the next transport, a resent call keeps its msgid and deadline; a new call
        // gets the next msgid.
        let t1 = t0 + Duration::from_secs(1);
        c.start(t1);
        let deadline = Some(t0 + Duration::from_secs(3));
        assert_eq!(
            c.send_request(Some(a), "f", &(1,), Duration::from_secs(3), deadline, None, 1)
                .unwrap(),
            a
        );
        assert_eq!(
            c.send_request(None, "f", &(3,), Duration::from_secs(3), None, None, 3)
                .unwrap(),
            b + 1
        );
        take(&mut c, t1);
        assert_eq!(c.deadline(a), deadline);
        assert_eq!(c.poll_deadline(), deadline);
    }

    #[test]
    fn forgetting_a_call_cancels_it_with_extensions_only() {
        let (mut plain, now) = conn(Codec::Msgpack, false);
        let id = plain
            .send_request(None, "f", &(1,), Duration::from_secs(1), None, None, 1)
            .unwrap();
        take(&mut plain, now);
        assert!(plain.forget(id));
        assert!(!plain.has_transmit());
        assert!(!plain.forget(id), "forgotten once");
        let (mut ext, now) = conn(Codec::Msgpack, true);
        let id = ext
            .send_request(None, "f", &(1,), Duration::from_secs(1), None, None, 1)
            .unwrap();
        take(&mut ext, now);
        assert!(ext.forget(id));
        let mut cancel = Vec::new();
        encode_notification(Codec::Msgpack, &mut cancel, CANCEL, &(id,)).unwrap();
        assert_eq!(take(&mut ext, now), cancel);
    }

    #[test]
    fn a_request_from_the_server_is_answered_method_not_found() {
        let (mut c, now) = conn(Codec::Msgpack, false);
        // Neovim's `rpcrequest`: [0, 4, "nvim_hello", []].
        let mut rbuf = BytesMut::from(&hex!("94 00 04 aa 6e 76 69 6d 5f 68 65 6c 6c 6f 90")[..]);
        let mut got = Got::default();
        c.handle_input(&mut rbuf, &mut got).unwrap();
        assert!(got.0.is_empty());
        let out = take(&mut c, now);
        let Ok(Message::Response {
            msgid: 4,
            outcome: Err(e),
        }) = Message::parse(Codec::Msgpack, &out)
        else {
            panic!("{out:x?}")
        };
        assert_eq!(
            crate::decode_error(Codec::Msgpack, e).kind(),
            ErrorCode::MethodNotFound
        );
    }

    /// Serves `ask`: records the requests and notifications the connection hands over.
    #[derive(Default)]
    struct Serving {
        requests: Vec<(u64, Vec<u8>, Vec<u8>)>,
        notifications: Vec<(Vec<u8>, Vec<u8>)>,
    }

    impl Replies<u32> for Serving {
        fn reply(&mut self, _: Reply<'_, u32>) {}

        fn request(&mut self, msgid: u64, method: &[u8], params: &[u8]) -> bool {
            self.requests.push((msgid, method.to_vec(), params.to_vec()));
            method == b"ask"
        }

        fn notification(&mut self, method: &[u8], params: &[u8]) {
            self.notifications.push((method.to_vec(), params.to_vec()));
        }
    }

    fn response_to(out: &[u8]) -> (u64, Result<&[u8], &[u8]>) {
        match Message::parse(Codec::Msgpack, out) {
            Ok(Message::Response { msgid, outcome }) => (msgid, outcome),
            other => panic!("not a response: {other:?} {out:x?}"),
        }
    }

    #[test]
    fn a_request_from_the_server_is_handed_over_when_served_and_answered_once() {
        let (mut c, now) = conn(Codec::Msgpack, false);
        assert!(!c.is_server_ours());
        // [0, 7, "ask", [1]], [0, 8, "other", []], [2, "note", ["hi"]]
        let mut rbuf = BytesMut::from(
            &hex!(
                "94 00 07 a3 61 73 6b 91 01  94 00 08 a5 6f 74 68 65 72 90  93 02 a4 6e 6f 74 65 91 a2 68 69"
            )[..],
        );
        let mut s = Serving::default();
        c.handle_input(&mut rbuf, &mut s).unwrap();
        assert_eq!(
            s.requests,
            [
                (7, b"ask".to_vec(), hex!("91 01").to_vec()),
                (8, b"other".to_vec(), hex!("90").to_vec())
            ]
        );
        assert_eq!(
            s.notifications,
            [(b"note".to_vec(), hex!("91 a2 68 69").to_vec())]
        );
        // Only the one not served is answered at once.
        let out = take(&mut c, now);
        let (8, Err(e)) = response_to(&out) else {
            panic!("{out:x?}")
        };
        assert_eq!(
            crate::decode_error(Codec::Msgpack, e).kind(),
            ErrorCode::MethodNotFound
        );
        // The caller answers 7, once; a msgid never handed over is not answered.
        assert!(!c.respond(9, Ok(&2i64)));
        assert!(c.respond(7, Ok(&2i64)));
        assert!(!c.respond(7, Ok(&2i64)), "answered twice");
        assert_eq!(take(&mut c, now), hex!("94 01 07 c0 02"));
        // An error answer, and a result that cannot be encoded (an internal error).
        c.handle_input(&mut BytesMut::from(&hex!("94 00 0a a3 61 73 6b 90")[..]), &mut s)
            .unwrap();
        assert!(c.respond::<i64>(10, Err(&ServerError::with_code(0, "no"))));
        assert_eq!(take(&mut c, now), hex!("94 01 0a 92 00 a2 6e 6f c0"));
        struct Unencodable;
        impl serde::Serialize for Unencodable {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("nope"))
            }
        }
        c.handle_input(&mut BytesMut::from(&hex!("94 00 0b a3 61 73 6b 90")[..]), &mut s)
            .unwrap();
        assert!(c.respond(11, Ok(&Unencodable)));
        let out = take(&mut c, now);
        let (11, Err(e)) = response_to(&out) else {
            panic!("{out:x?}")
        };
        assert_eq!(crate::decode_error(Codec::Msgpack, e).kind(), ErrorCode::Internal);
        // A request of a transport that is gone is never answered on the next one.
        c.handle_input(&mut BytesMut::from(&hex!("94 00 0c a3 61 73 6b 90")[..]), &mut s)
            .unwrap();
        c.handle_disconnect(|_, _| {});
        c.start(now);
        assert!(!c.respond(12, Ok(&1i64)));
        assert!(!c.has_transmit());
    }

    #[test]
    fn requests_waiting_for_the_caller_are_bounded() {
        let (mut c, now) = conn(Codec::Msgpack, false);
        let mut s = Serving::default();
        let mut input = Vec::new();
        for msgid in 1..=MAX_SERVING as u64 + 1 {
            input.extend_from_slice(&[0x94, 0x00, 0xcd]);
            input.extend_from_slice(&(msgid as u16).to_be_bytes());
            input.extend_from_slice(&hex!("a3 61 73 6b 90"));
        }
        c.handle_input(&mut BytesMut::from(&input[..]), &mut s).unwrap();
        assert_eq!(
            s.requests.len(),
            MAX_SERVING,
            "the one past the bound is not handed over"
        );
        let out = take(&mut c, now);
        let (msgid, Err(e)) = response_to(&out) else {
            panic!("{out:x?}")
        };
        assert_eq!(msgid, MAX_SERVING as u64 + 1);
        assert_eq!(
            crate::decode_error(Codec::Msgpack, e).kind(),
            ErrorCode::Overloaded
        );
        // Answering one makes room again.
        assert!(c.respond(1, Ok(&())));
        take(&mut c, now);
        c.handle_input(
            &mut BytesMut::from(&hex!("94 00 cd ff ff a3 61 73 6b 90")[..]),
            &mut s,
        )
        .unwrap();
        assert!(!c.has_transmit());
        assert_eq!(s.requests.len(), MAX_SERVING + 1);
    }

    #[test]
    fn stream_items_and_credit_reach_their_call_when_streams_were_agreed() {
        use crate::handshake::features::STREAMS;
        use crate::stream::{encode_credit, encode_item};
        #[derive(Default)]
        struct Streams(Vec<(u32, String)>, usize);
        impl Replies<u32> for Streams {
            fn reply(&mut self, _: Reply<'_, u32>) {}
            fn notification(&mut self, _: &[u8], _: &[u8]) {
                self.1 += 1;
            }
            fn stream(&mut self, token: u32, message: StreamMessage<'_>) {
                self.0.push((token, format!("{message:?}")));
            }
        }
        for (agreed, codec) in [
            (STREAMS, Codec::Msgpack),
            (STREAMS, Codec::Bincode),
            (0, Codec::Msgpack),
        ] {
            let (mut c, now) = conn(codec, true);
            let id = c
                .send_request(None, "items", &(3,), Duration::from_secs(1), None, None, 9)
                .unwrap();
            c.send_credit(id, 64);
            let out = take(&mut c, now);
            assert!(!out.is_empty());
            let mut hello = Vec::new();
            Hello::new(codec)
                .with_session(Some(7))
                .with_features(agreed)
                .encode(&mut hello);
            let mut input = BytesMut::from(&hello[..]);
            let mut body = Vec::new();
            encode_item(codec, &mut body, id, &1u8).unwrap();
            encode_credit(codec, &mut body, id, 5);
            // Items of a call not in flight are dropped.
            encode_item(codec, &mut body, id + 100, &1u8).unwrap();
            input.extend_from_slice(&body);
            let mut r = Streams::default();
            c.handle_input(&mut input, &mut r).unwrap();
            assert_eq!(c.features(), agreed);
            if agreed == STREAMS {
                assert_eq!(r.0.len(), 2, "{codec:?}: {:?}", r.0);
                assert!(r.0.iter().all(|(token, _)| *token == 9));
                assert_eq!(r.1, 0);
            } else {
                assert!(r.0.is_empty());
                assert_eq!(r.1, 3, "plain notifications without streams agreed");
            }
        }
    }

    #[test]
    fn only_a_server_that_answered_the_hello_or_is_said_to_be_is_ours() {
        assert!(!conn(Codec::Msgpack, false).0.is_server_ours());
        let (mut c, _) = conn(Codec::Msgpack, true);
        c.handle_input(&mut hello_bytes(Codec::Msgpack), &mut Got::default())
            .unwrap();
        assert!(c.is_server_ours());
        let mut config = ClientConfig::new(Codec::Msgpack);
        config.our_server = true;
        assert!(ClientConnection::<u32>::new(config, Instant::now()).is_server_ours());
    }

    #[test]
    fn large_replies_come_as_bytes_and_the_limit_holds() {
        let (mut c, now) = conn(Codec::Msgpack, false);
        c.send_request(None, "echo", &(1,), Duration::from_secs(1), None, None, 5)
            .unwrap();
        take(&mut c, now);
        let big = vec![7u8; 4000];
        let mut input = Vec::new();
        encode_response_ok(Codec::Msgpack, &mut input, 1, &serde_bytes::Bytes::new(&big)).unwrap();
        let mut rbuf = BytesMut::from(&input[..]);
        let mut got = Got::default();
        c.handle_input(&mut rbuf, &mut got).unwrap();
        assert_eq!(got.0.len(), 1);
        assert!(got.0[0].3, "handed over as Bytes");
        assert!(
            c.read_hint(&[]) >= input.len(),
            "room for a whole large reply next time"
        );
        // Over the limit: a protocol error, from the header.
        let mut config = ClientConfig::new(Codec::Msgpack);
        config.max_message_size = 1024;
        let mut small = ClientConnection::<u32>::new(config, now);
        small.start(now);
        let mut rbuf = BytesMut::from(&input[..16]);
        let r = small.handle_input(&mut rbuf, &mut Got::default());
        assert!(matches!(r, Err(ProtocolError::Frame(_))), "{r:?}");
    }

    #[test]
    fn waiting_calls_by_msgid_with_collisions_and_growth() {
        let entry = |msgid: u64| Entry {
            msgid,
            token: msgid as u32,
            deadline: None,
        };
        let mut w = Waiting::<u32>::default();
        assert!(w.remove(1).is_none());
        // A long call (msgid 1), then many short ones whose msgids come round the ring.
        w.insert(Entry {
            msgid: 1,
            token: 100,
            deadline: None,
        });
        for id in 2..2000u64 {
            w.insert(entry(id));
            assert_eq!(w.remove(id).map(|e| e.token), Some(id as u32), "msgid {id}");
            assert!(w.remove(id).is_none(), "msgid {id} removed twice");
        }
        // Calls colliding with msgid 1 in a small ring, all in flight at once.
        let colliding: Vec<u64> = (1..=40).map(|k| 1 + 8 * k).collect();
        for &id in &colliding {
            w.insert(entry(id));
        }
        assert_eq!(w.len, 41);
        assert_eq!(w.iter().count(), 41);
        // Grown past the collisions, or kept in the overflow map: every one is found.
        for &id in colliding.iter().rev() {
            assert_eq!(w.get_mut(id).map(|e| e.token), Some(id as u32), "msgid {id}");
            assert_eq!(w.remove(id).map(|e| e.token), Some(id as u32), "msgid {id}");
        }
        assert_eq!(w.remove(1).map(|e| e.token), Some(100));
        assert_eq!(w.len, 0);
        assert!(w.overflow.is_empty());
        assert!(w.remove(0).is_none(), "msgid 0 is never a call");
        // Drain hands back everything, ring and overflow alike.
        for id in [3u64, 3 + 8, 3 + 16, 5] {
            w.insert(entry(id));
        }
        let mut drained: Vec<u64> = w.drain().into_iter().map(|e| e.msgid).collect();
        drained.sort_unstable();
        assert_eq!(drained, [3, 5, 11, 19]);
        assert_eq!(w.len, 0);
    }

    #[test]
    fn no_ping_to_a_plain_server() {
        let (mut c, t0) = conn(Codec::Msgpack, false);
        assert_eq!(c.poll_ping(), None);
        assert_eq!(c.handle_ping(t0 + Duration::from_secs(3600), false), None);
        assert!(!c.has_transmit());
    }

    #[test]
    fn ping_after_an_idle_interval_only() {
        let (mut c, t0) = conn(Codec::Msgpack, true);
        let interval = Duration::from_secs(20);
        assert_eq!(c.poll_ping(), Some(t0 + interval));
        take(&mut c, t0);
        c.send_notification("x", &()).unwrap();
        let t1 = t0 + Duration::from_secs(5);
        take(&mut c, t1);
        // Fired at t0 + 20 s, but something was written at t1: look again at t1 + 20 s.
        assert_eq!(c.handle_ping(t0 + interval, false), Some(t1 + interval));
        assert!(!c.has_transmit());
        // Idle for a whole interval: ping.
        assert_eq!(
            c.handle_ping(t1 + interval, false),
            Some(t1 + interval + interval)
        );
        let mut ping = Vec::new();
        encode_notification(Codec::Msgpack, &mut ping, PING, &()).unwrap();
        assert_eq!(take(&mut c, t1 + interval), ping);
    }
}
