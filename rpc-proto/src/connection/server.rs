//! The server side of one connection, as a state machine with no I/O.
//!
//! [`ServerConnection`] owns everything a connection's bytes mean on the server: the
//! optional hello and the codec it selects, framing (a plain request is framed and parsed
//! in one pass; the [`Framer`] resumes everything else), the message size limit, the
//! request extension (a deadline relative to `now`) and `rpc.cancel`, the answer to
//! requests that arrive while the server drains, what an unreadable stream gets before it
//! is closed, end of input, and the heartbeat timeout. It reads no clock and touches no
//! socket: the I/O loop around it reads into [`ServerConnection::read_buf`], calls
//! [`ServerConnection::handle_input`] with the time, writes what
//! [`ServerConnection::poll_transmit`] gives, and sleeps until
//! [`ServerConnection::poll_timeout`].
//!
//! What to do with a call is the [`Service`]'s business: it gets each request, notification
//! and cancellation, answers at once through the [`Transmit`] it is handed, or later through
//! [`ServerConnection::transmit`].

use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};

use crate::blob::{Outbox, SHARE_MIN};
use crate::codec::{Args, Codec, EncodeValue};
use crate::compress::{Compression, Zstd};
use crate::error::{EncodeError, ErrorCode, FrameError, ParseError, ServerError};
use crate::framer::Framer;
use crate::handshake::features::STREAMS;
use crate::handshake::Hello;
use crate::message::{
    encode_response_err_shaped, encode_response_ok, parse_bincode_request_prefix, parse_request_prefix,
    ErrorShape, Message,
};
use crate::reserved::CANCEL;
use crate::stream::StreamMessage;

/// Reads start with at least this much room.
pub(crate) const READ_CHUNK: usize = 16 * 1024;
/// A connection that has sent only small messages, one read at a time (or nothing yet),
/// reads into a buffer this small: an idle connection holds little memory.
pub(crate) const SMALL_READ: usize = 1024;
/// After this long without a message, a connection's buffers are given back (when empty):
/// the next read starts small again.
pub(crate) const IDLE_SHRINK: Duration = Duration::from_secs(1);
/// Buffers larger than this are given back to the allocator once empty.
pub(crate) const KEEP_BUFFER: usize = 256 * 1024;
/// The most a message's headers may make a reader reserve ahead of the bytes that arrived.
pub(crate) const HINT_LIMIT: usize = 1024 * 1024;

/// The limits and timings of a server connection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Largest message accepted, checked from headers before the body is buffered.
    pub max_message_size: usize,
    /// Calls in flight (as the [`Service`] counts them) beyond which no further message is
    /// taken from the stream until some finish.
    pub max_in_flight: usize,
    /// Reply bytes waiting to be written beyond which no further message is taken.
    pub write_buffer_high_water: usize,
    /// No complete message for this long, while no call is in flight: the connection is
    /// closed.
    pub heartbeat_timeout: Duration,
    /// How errors are written for a peer that did not say hello.
    pub error_shape: ErrorShape,
    /// The optional features this server supports ([`features`](crate::handshake::features)
    /// bits): a client's hello gets those of them it offered.
    pub features: u32,
    /// How replies are compressed to a client whose hello agreed to
    /// [`ZSTD`](crate::handshake::features::ZSTD) (compressed messages are accepted from
    /// it whatever this says). Without `ZSTD` in `features`, nothing is compressed either
    /// way.
    pub compression: Compression,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            max_message_size: crate::DEFAULT_MAX_MESSAGE_SIZE,
            max_in_flight: 1024,
            write_buffer_high_water: 1024 * 1024,
            heartbeat_timeout: Duration::from_secs(60),
            error_shape: ErrorShape::default(),
            features: crate::handshake::features::STREAMS | crate::handshake::features::ZSTD,
            compression: Compression::default(),
        }
    }
}

/// A request, as handed to [`Service::request`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Request<'a> {
    /// To be echoed in the response.
    pub msgid: u64,
    /// The method name (from a msgpack str or bin).
    pub method: &'a [u8],
    /// The raw params, in the connection's codec.
    pub params: &'a [u8],
    /// When the caller stops waiting (the request extension's timeout, counted from the
    /// `now` the request arrived at).
    pub deadline: Option<Instant>,
    /// The client's session id, from its hello (unstable-network mode).
    pub session: Option<u128>,
    /// The call's [metadata](crate::Metadata), raw (a msgpack map; read it with
    /// [`Metadata::decode`](crate::Metadata::decode)).
    pub metadata: Option<&'a [u8]>,
}

/// What the server does with the calls of a connection.
pub trait Service {
    /// A request arrived: answer it through `tx` now, or later through
    /// [`ServerConnection::transmit`].
    fn request(&mut self, tx: &mut Transmit<'_>, request: Request<'_>);
    /// A notification arrived (never `rpc.cancel` from a peer that said hello).
    fn notification(&mut self, tx: &mut Transmit<'_>, method: &[u8], params: &[u8]);
    /// The peer gave up on the call `msgid` (`rpc.cancel`, after a hello only).
    fn cancel(&mut self, msgid: u64);
    /// A stream message about call `msgid` (`rpc.item`, `rpc.credit`, `rpc.end`), on a
    /// connection whose hello agreed streams. Ignored by default.
    fn stream(&mut self, tx: &mut Transmit<'_>, message: StreamMessage<'_>) {
        let _ = (tx, message);
    }
    /// Calls of this connection still running: while they reach
    /// [`ServerConfig::max_in_flight`], no further message is taken.
    fn in_flight(&self) -> usize;
    /// Something the service may want to log: the connection decided it alone.
    fn event(&mut self, event: ConnEvent<'_>) {
        let _ = event;
    }
}

/// What the connection decided on its own, for the service to log.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConnEvent<'a> {
    /// The peer said hello (its `features` are those agreed).
    Hello(&'a Hello),
    /// A message could not be parsed (answered when its msgid was known).
    Malformed(&'a ParseError),
    /// An error reply the connection sent itself.
    ErrorSent(u64, &'a ServerError),
    /// A response from the peer, which a server does not expect.
    UnexpectedResponse(u64),
    /// A `rpc.cancel` that does not name a msgid.
    BadCancel(&'a ServerError),
    /// A stream message (`rpc.item`, `rpc.credit`, `rpc.end`) whose params are not right.
    BadStream(&'a ServerError),
}

/// Where replies go: the connection's write buffer, in its codec.
#[derive(Debug)]
pub struct Transmit<'a> {
    out: &'a mut Outbox,
    codec: Codec,
    shape: ErrorShape,
    /// Large blobs in results are sent from their own buffers ([`crate::blob`]): not when
    /// replies are compressed (compression reads the whole frame from the buffer).
    share: bool,
}

impl Transmit<'_> {
    /// The connection's codec.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// Answer `msgid` with `value`.
    ///
    /// # Errors
    ///
    /// When the value cannot be encoded: nothing was written, answer with an error.
    #[inline(always)]
    pub fn ok<V: EncodeValue + ?Sized>(&mut self, msgid: u64, value: &V) -> Result<(), EncodeError> {
        if !self.share || !crate::blob::in_use() {
            return encode_response_ok(self.codec, &mut self.out.buf, msgid, value);
        }
        self.ok_shared(msgid, value)
    }

    /// [`Transmit::ok`] with blob sharing on, kept out of the common path.
    #[inline(never)]
    fn ok_shared<V: EncodeValue + ?Sized>(&mut self, msgid: u64, value: &V) -> Result<(), EncodeError> {
        let codec = self.codec;
        self.out
            .encode_shared(|buf| encode_response_ok(codec, buf, msgid, value))
    }

    /// Answer `msgid` with an error (in the shape the peer reads).
    pub fn err(&mut self, msgid: u64, error: &ServerError) {
        encode_response_err_shaped(self.codec, &mut self.out.buf, msgid, error, self.shape);
    }

    /// Grant the client `n` more items of call `msgid`'s argument stream (`rpc.credit`).
    pub fn credit(&mut self, msgid: u64, n: u64) {
        crate::stream::encode_credit(self.codec, &mut self.out.buf, msgid, n);
    }

    /// Append a whole response encoded earlier in this codec (by
    /// [`encode_response_ok`](crate::encode_response_ok) or
    /// [`encode_response_err`](crate::encode_response_err): the dedup cache keeps them).
    pub fn encoded(&mut self, frame: &[u8]) {
        self.out.buf.extend_from_slice(frame);
    }
}

/// The [`Transmit`] of [`ServerConnection::transmit`]: what is written through it is
/// compressed, when the hello agreed to it, as the guard is dropped.
#[derive(Debug)]
pub struct TransmitGuard<'a> {
    tx: Transmit<'a>,
    zstd: Zstd,
    start: usize,
}

impl<'a> std::ops::Deref for TransmitGuard<'a> {
    type Target = Transmit<'a>;

    fn deref(&self) -> &Transmit<'a> {
        &self.tx
    }
}

impl<'a> std::ops::DerefMut for TransmitGuard<'a> {
    fn deref_mut(&mut self) -> &mut Transmit<'a> {
        &mut self.tx
    }
}

impl Drop for TransmitGuard<'_> {
    fn drop(&mut self) {
        self.zstd
            .apply_all(self.tx.codec, &mut self.tx.out.buf, self.start);
    }
}

/// Why the connection stopped reading for good.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fatal {
    /// The stream is corrupt or a message is too large (answered when its msgid was known).
    Frame(FrameError),
    /// The hello could not be accepted.
    Hello,
}

/// The server side of one connection.
#[derive(Debug)]
pub struct ServerConnection {
    config: ServerConfig,
    framer: Framer,
    rbuf: BytesMut,
    out: Outbox,
    /// No message has been read yet: a hello may still come.
    first: bool,
    /// The peer said hello: it may send extensions and `rpc.cancel`.
    extended: bool,
    session: Option<u128>,
    /// The features agreed in the hello.
    agreed: u32,
    /// How replies are compressed (off unless the hello agreed to zstd).
    zstd: Zstd,
    /// Messages are still taken from the stream (no end of input, no fatal error).
    reading: bool,
    /// Shutdown: answer new requests `ShuttingDown`, finish the rest, close.
    draining: bool,
    /// Why reading stopped, if the stream was unreadable: close with a lingering drain.
    fatal: Option<Fatal>,
    /// Complete messages wait in the read buffer: `handle_input` stopped at the limits.
    held: bool,
    /// The framer holds a message begun in an earlier read.
    framing: bool,
    /// The size of the last large message read (0 before the first).
    large: usize,
    /// How this connection's errors are written: the configured shape for a plain peer,
    /// `[code, message]` once the peer said hello.
    shape: ErrorShape,
    /// When the last complete message arrived or the last call in flight ended.
    last_message: Instant,
    /// The heartbeat timer is not to fire before this (calls were in flight when it last did).
    not_before: Option<Instant>,
    /// Reads go into a small buffer ([`SMALL_READ`]) until one fills it.
    small_reads: bool,
    /// The `last_message` the buffers were given back after (no shrink is due until the
    /// next message).
    shrunk_for: Option<Instant>,
    /// The buffers could not be given back (a message begun, replies unwritten): look
    /// again at this time.
    shrink_retry: Option<Instant>,
}

impl ServerConnection {
    /// A connection accepted at `now`.
    pub fn new(config: ServerConfig, now: Instant) -> ServerConnection {
        ServerConnection {
            framer: Framer::new(Codec::Msgpack, config.max_message_size),
            shape: config.error_shape,
            config,
            // Both allocated at the first read and the first reply.
            rbuf: BytesMut::new(),
            out: Outbox::default(),
            first: true,
            extended: false,
            session: None,
            agreed: 0,
            zstd: Zstd::OFF,
            reading: true,
            draining: false,
            fatal: None,
            held: false,
            framing: false,
            large: 0,
            last_message: now,
            not_before: None,
            small_reads: true,
            shrunk_for: None,
            shrink_retry: None,
        }
    }

    /// The connection's codec (msgpack until a hello names another).
    pub fn codec(&self) -> Codec {
        self.framer.codec()
    }

    /// Whether the peer said hello (it understands our extensions).
    pub fn is_extended(&self) -> bool {
        self.extended
    }

    /// The client's session id, from its hello.
    pub fn session(&self) -> Option<u128> {
        self.session
    }

    /// The optional features agreed in the hello ([`features`](crate::handshake::features)
    /// bits; 0 for a plain peer).
    pub fn features(&self) -> u32 {
        self.agreed
    }

    /// Whether nothing has been received yet.
    pub fn is_fresh(&self) -> bool {
        self.first && self.rbuf.is_empty()
    }

    /// Whether the connection wants more bytes from the peer now: it is still reading, and
    /// calls in flight and reply bytes waiting are under their limits.
    #[inline]
    pub fn wants_read(&self, in_flight: usize) -> bool {
        self.reading && self.has_room(in_flight)
    }

    /// Complete messages wait in the read buffer, and there is room for them again: call
    /// [`ServerConnection::handle_input`] before reading more.
    #[inline]
    pub fn has_held_input(&self, in_flight: usize) -> bool {
        self.reading && self.held && self.has_room(in_flight)
    }

    #[inline(always)]
    fn has_room(&self, in_flight: usize) -> bool {
        in_flight < self.config.max_in_flight && self.out.queued() < self.config.write_buffer_high_water
    }

    /// The buffer to read into, with room for the rest of a large message in one read as
    /// its headers tell (up to 1 MiB ahead of what has arrived), and, between messages when
    /// large ones have been coming, for a whole one. A connection starts with a small one,
    /// kept while its reads leave room (small messages, one at a time).
    pub fn read_buf(&mut self) -> &mut BytesMut {
        let between = if self.rbuf.is_empty() { self.large } else { 0 };
        let hint = self.framer.needed(&self.rbuf).max(between).min(HINT_LIMIT);
        let small = self.small_reads && hint == 0;
        let room = if small {
            SMALL_READ / 4
        } else {
            (READ_CHUNK / 4).max(hint)
        };
        if self.rbuf.capacity() - self.rbuf.len() < room {
            if small && self.rbuf.is_empty() {
                // Allocates the small buffer, or reclaims its room (nothing to move).
                self.rbuf.reserve(SMALL_READ);
            } else if self.rbuf.is_empty() && self.rbuf.capacity() > KEEP_BUFFER {
                self.rbuf = BytesMut::with_capacity(READ_CHUNK);
            } else {
                self.rbuf.reserve(READ_CHUNK.max(self.rbuf.len()).max(hint));
            }
        }
        &mut self.rbuf
    }

    /// Handle every complete message in the read buffer, as of `now`.
    ///
    /// # Errors
    ///
    /// [`Fatal`] when the stream became unreadable: the connection stops reading (the error
    /// reply is queued when the msgid was known), and is to be closed once its calls are
    /// answered, with a lingering drain ([`ServerConnection::should_linger`]).
    pub fn handle_input<S: Service>(&mut self, now: Instant, service: &mut S) -> Result<(), Fatal> {
        if !self.reading {
            return Ok(());
        }
        // The last read filled the buffer: more is coming at once, read in full chunks.
        if self.rbuf.len() == self.rbuf.capacity() {
            self.small_reads = false;
        }
        let result = self.process(now, service);
        if let Err(fatal) = &result {
            self.reading = false;
            self.fatal = Some(fatal.clone());
            if let Fatal::Frame(e) = fatal {
                if let Some(msgid) = e.msgid() {
                    let error = e.to_server_error();
                    service.event(ConnEvent::ErrorSent(msgid, &error));
                    encode_response_err_shaped(
                        self.framer.codec(),
                        &mut self.out.buf,
                        msgid,
                        &error,
                        self.shape,
                    );
                }
            }
        }
        result
    }

    fn process<S: Service>(&mut self, now: Instant, service: &mut S) -> Result<(), Fatal> {
        if self.first && !self.rbuf.is_empty() {
            if Hello::is_hello(&self.rbuf) {
                match Hello::decode(&self.rbuf) {
                    Ok(None) => return Ok(()),
                    Ok(Some((mut hello, n))) => {
                        self.rbuf.advance(n);
                        self.framer.set_codec(hello.codec);
                        self.extended = true;
                        self.shape = ErrorShape::CodeAndMessage;
                        self.session = hello.session;
                        self.agreed = hello.features & self.config.features;
                        // The service hears the features agreed, not those offered.
                        hello.features = self.agreed;
                        if self.agreed & crate::handshake::features::ZSTD != 0 {
                            self.zstd = Zstd::on(&self.config.compression);
                        }
                        Hello::new(hello.codec)
                            .with_session(hello.session)
                            .with_features(self.agreed)
                            .encode(&mut self.out.buf);
                        service.event(ConnEvent::Hello(&hello));
                    }
                    Err(_) => return Err(Fatal::Hello),
                }
            }
            self.first = false;
        }
        self.held = false;
        // Messages are handled in place and the buffer advanced once for the batch.
        let mut at = 0;
        let mut result = Ok(());
        // A large message was split off the buffer (see below).
        let mut split = false;
        let mut rbuf = std::mem::take(&mut self.rbuf);
        loop {
            // A message of at least `SHARE_MIN` bytes is handed to the service as `Bytes`
            // of its own, so that it can keep parts of it without a copy (a `Blob`
            // argument is a slice of it): the loop stops at it, and goes on after it.
            let mut large = None;
            while at < rbuf.len() {
                // The limits hold for messages already read too, not only for reading more.
                if !self.has_room(service.in_flight()) {
                    self.held = true;
                    break;
                }
                // A request, the common case, is framed and parsed in one pass; the framer
                // and parser take everything else (and a message begun in an earlier read,
                // which the framer resumes).
                if !self.framing {
                    let (buf, max) = (&rbuf[at..], self.framer.max_message_size());
                    let parsed = match self.framer.codec() {
                        Codec::Msgpack => parse_request_prefix(buf, max),
                        Codec::Bincode => parse_bincode_request_prefix(buf, max),
                    };
                    if let Some((request, n)) = parsed {
                        if n > READ_CHUNK / 4 {
                            if n >= SHARE_MIN {
                                large = Some(n);
                                break;
                            }
                            self.large = n.min(HINT_LIMIT);
                        }
                        self.dispatch(Ok(request), now, service);
                        at += n;
                        continue;
                    }
                }
                let n = match self.framer.decode(&rbuf[at..]) {
                    Ok(Some(n)) => n,
                    Ok(None) => {
                        self.framing = true;
                        break;
                    }
                    Err(e) => {
                        result = Err(Fatal::Frame(e));
                        break;
                    }
                };
                self.framing = false;
                let frame = &rbuf[at..at + n];
                match self.inflate(frame) {
                    None if n >= SHARE_MIN => {
                        large = Some(n);
                        break;
                    }
                    None => self.dispatch(Message::parse(self.framer.codec(), frame), now, service),
                    // Decompressed: already a buffer of its own.
                    Some(Ok(msg)) if msg.len() >= SHARE_MIN => {
                        self.dispatch_large(&Bytes::from(msg), n, now, service);
                    }
                    Some(Ok(msg)) => self.dispatch(Message::parse(self.framer.codec(), &msg), now, service),
                    Some(Err(e)) => {
                        result = Err(Fatal::Frame(e));
                        break;
                    }
                }
                if n > READ_CHUNK / 4 {
                    self.large = n.min(HINT_LIMIT);
                }
                at += n;
            }
            let Some(n) = large else { break };
            rbuf.advance(at);
            let frame = rbuf.split_to(n).freeze();
            (at, split) = (0, true);
            self.dispatch_large(&frame, n, now, service);
        }
        self.rbuf = rbuf;
        if split && self.rbuf.len() == at {
            // What is left of the buffer shares the large message's allocation: let it go
            // with the message.
            self.rbuf = BytesMut::new();
            self.last_message = now;
        } else if at > 0 || split {
            // The room before the messages handled: about the allocation's size.
            let capacity = self.rbuf.capacity();
            self.rbuf.advance(at);
            self.last_message = now;
            // A large buffer left empty goes back now (`KEEP_BUFFER`), not at the next read
            // that lacks room: after one big message its room may suffice for the next
            // read, and a connection would hold that memory until it goes idle (each of
            // several connections its own).
            if self.rbuf.is_empty() && capacity > KEEP_BUFFER {
                self.rbuf = BytesMut::new();
            }
        }
        result
    }

    /// Dispatch a large message held as `Bytes` of its own (split off the read buffer, or
    /// decompressed), `n` bytes on the wire, so that a [`Blob`](crate::Blob) in it is a slice.
    #[cold]
    #[inline(never)]
    fn dispatch_large<S: Service>(&mut self, frame: &Bytes, n: usize, now: Instant, service: &mut S) {
        self.large = n.min(HINT_LIMIT);
        let codec = self.framer.codec();
        crate::blob::with_frame(frame, || {
            self.dispatch(Message::parse(codec, frame), now, service)
        });
    }

    /// The message inside `frame`, if it is a compressed message from a peer whose hello
    /// agreed to zstd (from any other peer it is an ordinary malformed message).
    fn inflate(&self, frame: &[u8]) -> Option<Result<Vec<u8>, FrameError>> {
        if self.agreed & crate::handshake::features::ZSTD == 0 {
            return None;
        }
        let z = crate::compress::compressed(self.framer.codec(), frame)?;
        Some(crate::compress::decompress(
            self.framer.codec(),
            z,
            self.config.max_message_size,
        ))
    }

    fn dispatch<S: Service>(
        &mut self,
        parsed: Result<Message<'_>, ParseError>,
        now: Instant,
        service: &mut S,
    ) {
        let codec = self.framer.codec();
        match parsed {
            Ok(Message::Request {
                msgid,
                method,
                params,
                timeout,
                metadata,
            }) => {
                // `rpc.health` is answered while draining: it says so.
                if self.draining && method != crate::reserved::HEALTH.as_bytes() {
                    let e = ServerError::new(ErrorCode::ShuttingDown, "the server is shutting down; retry");
                    return self.send_error(service, msgid, &e);
                }
                let request = Request {
                    msgid,
                    method,
                    params,
                    deadline: timeout.map(|t| now + t),
                    session: self.session,
                    metadata,
                };
                let mut tx = Transmit {
                    out: &mut self.out,
                    codec,
                    shape: self.shape,
                    share: !self.zstd.is_on(),
                };
                // What the service wrote is compressed if it is large (one comparison).
                let start = tx.out.buf.len();
                service.request(&mut tx, request);
                self.zstd.apply_all(codec, &mut self.out.buf, start);
            }
            Ok(Message::Notification { method, params }) => {
                if method == CANCEL.as_bytes() && self.extended {
                    let mut args = Args::new(codec, params);
                    match args.expect(1).and_then(|()| args.next::<u64>("msgid")) {
                        Ok(msgid) => service.cancel(msgid),
                        Err(e) => service.event(ConnEvent::BadCancel(&e)),
                    }
                    return;
                }
                let mut tx = Transmit {
                    out: &mut self.out,
                    codec,
                    shape: self.shape,
                    share: !self.zstd.is_on(),
                };
                let start = tx.out.buf.len();
                if self.agreed & STREAMS != 0 {
                    match StreamMessage::parse(codec, method, params) {
                        Some(Ok(message)) => service.stream(&mut tx, message),
                        Some(Err(e)) => service.event(ConnEvent::BadStream(&e)),
                        None => service.notification(&mut tx, method, params),
                    }
                    self.zstd.apply_all(codec, &mut self.out.buf, start);
                    return;
                }
                service.notification(&mut tx, method, params);
                self.zstd.apply_all(codec, &mut self.out.buf, start);
            }
            Ok(Message::Response { msgid, .. }) => service.event(ConnEvent::UnexpectedResponse(msgid)),
            Err(e) => {
                service.event(ConnEvent::Malformed(&e));
                if let Some(msgid) = e.msgid {
                    self.send_error(service, msgid, &e.to_server_error());
                }
            }
        }
    }

    fn send_error<S: Service>(&mut self, service: &mut S, msgid: u64, e: &ServerError) {
        service.event(ConnEvent::ErrorSent(msgid, e));
        encode_response_err_shaped(self.framer.codec(), &mut self.out.buf, msgid, e, self.shape);
    }

    /// Where to put the replies of calls that finished after their request was handled
    /// (compressed, when the hello agreed to it, once the guard is dropped).
    pub fn transmit(&mut self) -> TransmitGuard<'_> {
        TransmitGuard {
            start: self.out.buf.len(),
            zstd: self.zstd,
            tx: Transmit {
                out: &mut self.out,
                codec: self.framer.codec(),
                shape: self.shape,
                share: !self.zstd.is_on(),
            },
        }
    }

    /// The next contiguous bytes waiting to be written, if any (a large [`Blob`] in a
    /// result comes as a piece of its own: [`ServerConnection::transmit_slices`] gives them
    /// all for one vectored write).
    ///
    /// [`Blob`]: crate::Blob
    #[inline]
    pub fn poll_transmit(&self) -> Option<&[u8]> {
        self.out.chunk()
    }

    /// Whether what waits to be written is in more than one piece (blobs beside the
    /// buffer): then [`ServerConnection::transmit_slices`] writes it in one call.
    #[inline]
    pub fn is_transmit_vectored(&self) -> bool {
        self.out.has_blobs()
    }

    /// Fill `dst` with the pieces waiting to be written, in order; returns how many.
    pub fn transmit_slices<'a>(&'a self, dst: &mut [std::io::IoSlice<'a>]) -> usize {
        self.out.slices(dst)
    }

    /// `n` bytes of [`ServerConnection::poll_transmit`] (or of the slices) were written.
    #[inline]
    pub fn advance_transmit(&mut self, n: usize) {
        self.out.advance(n, KEEP_BUFFER);
    }

    /// The peer closed its sending half: no more requests will come, but it may still be
    /// reading. Everything received is answered before the connection closes. Returns the
    /// number of bytes of an incomplete message that are dropped.
    pub fn handle_eof(&mut self) -> usize {
        self.reading = false;
        self.held = false;
        let partial = self.rbuf.len();
        self.rbuf.clear();
        partial
    }

    /// The server is shutting down: requests still to come are answered `ShuttingDown`
    /// (the client may retry them elsewhere); calls in flight finish; then the connection
    /// closes.
    pub fn start_drain(&mut self) {
        self.draining = true;
    }

    /// Whether [`ServerConnection::start_drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// The last call in flight finished at `now`: the heartbeat timeout counts from here
    /// (a peer waiting for its last answer was not idle).
    pub fn calls_idle(&mut self, now: Instant) {
        self.last_message = now;
    }

    /// When [`ServerConnection::handle_timeout`] is next due. It stays due after end of
    /// input too: a peer that half-closed and then stops reading its answers is closed at
    /// the heartbeat timeout like any other.
    /// Before the heartbeat, it is due 1 s (`IDLE_SHRINK`) after the last message, to give the
    /// buffers back.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let due = self.last_message + self.config.heartbeat_timeout;
        let due = self.not_before.map_or(due, |n| n.max(due));
        Some(self.shrink_due().map_or(due, |s| s.min(due)))
    }

    /// When the buffers are to be given back, if they have not been since the last message.
    fn shrink_due(&self) -> Option<Instant> {
        if self.shrunk_for == Some(self.last_message) {
            return None;
        }
        let due = self.last_message + IDLE_SHRINK;
        Some(self.shrink_retry.map_or(due, |r| r.max(due)))
    }

    /// Give the buffers back if nothing is in them (no message begun, every reply
    /// written); otherwise look again later.
    fn shrink(&mut self, now: Instant) {
        if self.rbuf.is_empty() && self.poll_transmit().is_none() {
            self.rbuf = BytesMut::new();
            self.out = Outbox::default();
            self.small_reads = true;
            self.shrunk_for = Some(self.last_message);
            self.shrink_retry = None;
        } else {
            self.shrink_retry = Some(now + IDLE_SHRINK);
        }
    }

    /// The heartbeat timer fired at `now`. Returns whether the connection is to be closed:
    /// no complete message for the heartbeat timeout while no call was in flight.
    /// Buffers idle for 1 s (`IDLE_SHRINK`) are given back first.
    pub fn handle_timeout(&mut self, now: Instant, in_flight: usize) -> bool {
        if self.shrink_due().is_some_and(|due| now >= due) {
            self.shrink(now);
        }
        let due = self.last_message + self.config.heartbeat_timeout;
        if now < due {
            // The buffers' deadline, before the heartbeat's.
            return false;
        }
        if in_flight == 0 {
            self.reading = false;
            return true;
        }
        // Calls in flight keep the connection open: look again a while later.
        self.not_before = Some(due.max(now + self.config.heartbeat_timeout / 8));
        false
    }

    /// Whether the connection is finished: no more input is taken (end of input, a fatal
    /// error, or draining), no call is in flight, and everything is written.
    pub fn is_done(&self, in_flight: usize) -> bool {
        (!self.reading || self.draining) && in_flight == 0 && self.poll_transmit().is_none()
    }

    /// Why reading stopped, if the stream was unreadable.
    pub fn fatal(&self) -> Option<&Fatal> {
        self.fatal.as_ref()
    }

    /// Whether to close without a reset: after an unreadable stream, the peer may still be
    /// sending; shut down writing, then read and discard for a bounded time so that it gets
    /// our last reply rather than a reset.
    pub fn should_linger(&self) -> bool {
        self.fatal.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{encode_notification, encode_request};
    use hex_literal::hex;

    /// A request as the service saw it: msgid, method, deadline, session.
    type Seen = (u64, Vec<u8>, Option<Instant>, Option<u128>);

    /// A service that answers `add` at once, keeps `slow` pending, and records the rest.
    #[derive(Default)]
    struct Recorder {
        pending: Vec<u64>,
        requests: Vec<Seen>,
        notifications: Vec<Vec<u8>>,
        cancels: Vec<u64>,
        streams: Vec<String>,
    }

    impl Service for Recorder {
        fn stream(&mut self, tx: &mut Transmit<'_>, message: StreamMessage<'_>) {
            // Grants credit back for each item, as a receiver would.
            if let StreamMessage::Item { msgid, .. } = message {
                tx.credit(msgid, 1);
            }
            self.streams.push(format!("{message:?}"));
        }

        fn request(&mut self, tx: &mut Transmit<'_>, r: Request<'_>) {
            self.requests
                .push((r.msgid, r.method.to_vec(), r.deadline, r.session));
            match r.method {
                b"add" => {
                    let mut args = Args::new(tx.codec(), r.params);
                    args.expect(2).unwrap();
                    let (a, b): (i64, i64) = (args.next("a").unwrap(), args.next("b").unwrap());
                    tx.ok(r.msgid, &(a + b)).unwrap();
                }
                b"slow" => self.pending.push(r.msgid),
                _ => tx.err(r.msgid, &ServerError::method_not_found(r.method)),
            }
        }

        fn notification(&mut self, _tx: &mut Transmit<'_>, method: &[u8], _params: &[u8]) {
            self.notifications.push(method.to_vec());
        }

        fn cancel(&mut self, msgid: u64) {
            self.cancels.push(msgid);
        }

        fn in_flight(&self) -> usize {
            self.pending.len()
        }
    }

    fn config() -> ServerConfig {
        ServerConfig {
            max_message_size: 1024,
            max_in_flight: 4,
            write_buffer_high_water: 4096,
            heartbeat_timeout: Duration::from_secs(60),
            error_shape: ErrorShape::default(),
            features: crate::handshake::features::STREAMS | crate::handshake::features::ZSTD,
            compression: Compression::default(),
        }
    }

    fn request(
        codec: Codec,
        msgid: u64,
        method: &str,
        params: (i64, i64),
        timeout: Option<Duration>,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        encode_request(codec, &mut out, msgid, method, &params, timeout).unwrap();
        out
    }

    /// Feed `input` in pieces cut at `cuts`, handling after each; return what was written.
    fn run(
        conn: &mut ServerConnection,
        svc: &mut Recorder,
        input: &[u8],
        cuts: &[usize],
        now: Instant,
    ) -> Vec<u8> {
        let mut from = 0;
        for &to in cuts.iter().chain(std::iter::once(&input.len())) {
            conn.read_buf().extend_from_slice(&input[from..to]);
            from = to;
            conn.handle_input(now, svc).unwrap();
        }
        take(conn)
    }

    /// Let the timer fire for the buffers (at [`IDLE_SHRINK`] and its retries) until the
    /// next deadline is at or after `until`; none of them closes the connection.
    fn skip_shrinks(conn: &mut ServerConnection, until: Instant) {
        while let Some(at) = conn.poll_timeout().filter(|&at| at < until) {
            assert!(!conn.handle_timeout(at, 0), "closed at {at:?}, before {until:?}");
            assert!(conn.poll_timeout().unwrap() > at, "the timer must move on");
        }
    }

    fn take(conn: &mut ServerConnection) -> Vec<u8> {
        let out = conn.poll_transmit().map(<[u8]>::to_vec).unwrap_or_default();
        conn.advance_transmit(out.len());
        out
    }

    /// Read `input` as a socket would: at most the buffer's room per read.
    fn read_as_socket(
        conn: &mut ServerConnection,
        svc: &mut Recorder,
        mut input: &[u8],
        now: Instant,
    ) -> usize {
        let mut reads = 0;
        while !input.is_empty() {
            let buf = conn.read_buf();
            let n = (buf.capacity() - buf.len()).min(input.len());
            buf.extend_from_slice(&input[..n]);
            input = &input[n..];
            reads += 1;
            conn.handle_input(now, svc).unwrap();
        }
        reads
    }

    #[test]
    fn an_idle_connection_holds_small_buffers_and_gives_them_back() {
        let t0 = Instant::now();
        let mut conn = ServerConnection::new(config(), t0);
        let mut svc = Recorder::default();
        // Nothing read yet: no buffer at all; the first read gets a small one.
        assert_eq!((conn.rbuf.capacity(), conn.out.buf.capacity()), (0, 0));
        assert!(conn.read_buf().capacity() <= SMALL_READ);
        // Small calls one at a time keep it small.
        for id in 0..100 {
            let reads = read_as_socket(
                &mut conn,
                &mut svc,
                &request(Codec::Msgpack, id, "add", (1, 2), None),
                t0,
            );
            assert_eq!(reads, 1);
            assert!(!take(&mut conn).is_empty());
        }
        assert!(conn.rbuf.capacity() <= SMALL_READ, "{}", conn.rbuf.capacity());
        // A burst that fills the small buffer: reads go on in full chunks.
        let burst: Vec<u8> = (0..200)
            .flat_map(|id| request(Codec::Msgpack, id, "add", (1, 2), None))
            .collect();
        assert!(burst.len() > 2 * SMALL_READ);
        read_as_socket(&mut conn, &mut svc, &burst, t0);
        assert!(conn.read_buf().capacity() >= READ_CHUNK / 4);
        take(&mut conn);
        // Idle: due IDLE_SHRINK after the last message, before the heartbeat; then the
        // buffers are gone and only the heartbeat is due.
        assert_eq!(conn.poll_timeout(), Some(t0 + IDLE_SHRINK));
        assert!(!conn.handle_timeout(t0 + IDLE_SHRINK, 0));
        assert_eq!((conn.rbuf.capacity(), conn.out.buf.capacity()), (0, 0));
        assert_eq!(conn.poll_timeout(), Some(t0 + Duration::from_secs(60)));
        assert!(conn.read_buf().capacity() <= SMALL_READ);
    }

    #[test]
    fn a_large_read_buffer_is_given_back_once_its_messages_are_handled() {
        let t0 = Instant::now();
        let mut cfg = config();
        cfg.max_message_size = 4 << 20;
        let mut conn = ServerConnection::new(cfg, t0);
        let mut svc = Recorder::default();
        // One message of 2 MiB (an unknown method: answered with an error), read as a
        // socket would, then a small call.
        let mut big = Vec::new();
        let params = (serde_bytes::ByteBuf::from(vec![7u8; 2 << 20]),);
        encode_request(Codec::Msgpack, &mut big, 1, "blob", &params, None).unwrap();
        read_as_socket(&mut conn, &mut svc, &big, t0);
        assert_eq!(svc.requests.len(), 1);
        assert!(!take(&mut conn).is_empty());
        // Handled: nothing of the buffer is kept, although no read came since.
        assert_eq!(conn.rbuf.capacity(), 0);
        // The next read gets room for another large message (up to 1 MiB ahead), and the
        // buffer is given back again once it is empty.
        assert!(conn.read_buf().capacity() >= HINT_LIMIT);
        read_as_socket(
            &mut conn,
            &mut svc,
            &request(Codec::Msgpack, 2, "add", (1, 2), None),
            t0,
        );
        assert_eq!(svc.requests.len(), 2);
        assert_eq!(conn.rbuf.capacity(), 0);
    }

    #[test]
    fn buffers_holding_a_message_begun_are_kept_and_looked_at_later() {
        let t0 = Instant::now();
        let mut conn = ServerConnection::new(config(), t0);
        let mut svc = Recorder::default();
        let req = request(Codec::Msgpack, 1, "add", (1, 2), None);
        read_as_socket(&mut conn, &mut svc, &req[..3], t0);
        let t1 = t0 + IDLE_SHRINK;
        assert!(!conn.handle_timeout(t1, 0));
        assert_eq!(conn.rbuf.len(), 3, "the bytes of the message begun are kept");
        // Looked at again later, not at once (the timer must not spin).
        assert_eq!(conn.poll_timeout(), Some(t1 + IDLE_SHRINK));
        // Unwritten replies keep the write buffer too.
        read_as_socket(&mut conn, &mut svc, &req[3..], t1);
        assert!(conn.poll_transmit().is_some());
        let t2 = t1 + IDLE_SHRINK;
        assert!(!conn.handle_timeout(t2, 0));
        assert_eq!(take(&mut conn), hex!("94 01 01 c0 03"));
        assert!(!conn.handle_timeout(t2 + IDLE_SHRINK, 0));
        assert_eq!((conn.rbuf.capacity(), conn.out.buf.capacity()), (0, 0));
        // The heartbeat still closes it, counted from the last message.
        assert_eq!(conn.poll_timeout(), Some(t1 + Duration::from_secs(60)));
        assert!(conn.handle_timeout(t1 + Duration::from_secs(60), 0));
    }

    #[test]
    fn plain_peer_without_hello_is_answered_in_msgpack() {
        let now = Instant::now();
        let mut conn = ServerConnection::new(config(), now);
        let mut svc = Recorder::default();
        // [0, 1, "add", [2, 3]] -> [1, 1, nil, 5]
        let out = run(
            &mut conn,
            &mut svc,
            &hex!("94 00 01 a3 61 64 64 92 02 03"),
            &[],
            now,
        );
        assert_eq!(out, hex!("94 01 01 c0 05"));
        assert!(!conn.is_extended());
        assert_eq!(conn.codec(), Codec::Msgpack);
    }

    #[test]
    fn every_split_point_gives_the_same_bytes_out() {
        let now = Instant::now();
        let mut input = request(Codec::Msgpack, 7, "add", (40, 2), None);
        input.extend(request(Codec::Msgpack, 8, "nope", (0, 0), None));
        // A bin method name (pynvim) and a notification.
        input.extend(hex!("94 00 09 c4 03 61 64 64 92 01 01"));
        encode_notification(Codec::Msgpack, &mut input, "note", &(1,)).unwrap();
        let mut whole_conn = ServerConnection::new(config(), now);
        let mut whole_svc = Recorder::default();
        let whole = run(&mut whole_conn, &mut whole_svc, &input, &[], now);
        assert_eq!(whole_svc.requests.len(), 3);
        assert_eq!(whole_svc.notifications, [b"note".to_vec()]);
        for a in 0..=input.len() {
            for b in a..=input.len() {
                let mut conn = ServerConnection::new(config(), now);
                let mut svc = Recorder::default();
                let out = run(&mut conn, &mut svc, &input, &[a, b], now);
                assert_eq!(out, whole, "cut at {a} and {b}");
                assert_eq!(svc.notifications.len(), 1);
            }
        }
    }

    #[test]
    fn hello_with_each_codec_switches_and_is_echoed() {
        for codec in [Codec::Msgpack, Codec::Bincode] {
            let now = Instant::now();
            let mut conn = ServerConnection::new(config(), now);
            let mut svc = Recorder::default();
            let mut input = Vec::new();
            Hello::new(codec).with_session(Some(42)).encode(&mut input);
            input.extend(request(codec, 5, "add", (1, 2), Some(Duration::from_millis(250))));
            for cut in 0..=input.len() {
                let mut c = ServerConnection::new(config(), now);
                let mut s = Recorder::default();
                let out = run(&mut c, &mut s, &input, &[cut], now);
                let mut expect = Vec::new();
                Hello::new(codec).with_session(Some(42)).encode(&mut expect);
                encode_response_ok(codec, &mut expect, 5, &3i64).unwrap();
                assert_eq!(out, expect, "{codec:?} cut at {cut}");
            }
            let _ = run(&mut conn, &mut svc, &input, &[], now);
            assert!(conn.is_extended());
            assert_eq!(conn.codec(), codec);
            assert_eq!(conn.session(), Some(42));
            // The deadline is the request's timeout from the `now` it arrived at.
            assert_eq!(svc.requests[0].2, Some(now + Duration::from_millis(250)));
            assert_eq!(svc.requests[0].3, Some(42));
        }
    }

    #[test]
    fn stream_messages_reach_the_service_after_a_hello_that_agreed_streams_only() {
        use crate::handshake::features::{STREAMS, ZSTD};
        use crate::stream::{encode_credit, encode_end, encode_item};
        for codec in [Codec::Msgpack, Codec::Bincode] {
            let now = Instant::now();
            let mut body = Vec::new();
            encode_item(codec, &mut body, 4, &7u8).unwrap();
            encode_credit(codec, &mut body, 4, 10);
            encode_end(codec, &mut body, 4, None);
            // A hello offering streams (and zstd, which this server does not support).
            let mut input = Vec::new();
            Hello::new(codec).with_features(STREAMS | ZSTD).encode(&mut input);
            input.extend_from_slice(&body);
            let mut cfg = config();
            cfg.features = STREAMS;
            for cut in [0, 3, input.len() - 2] {
                let mut conn = ServerConnection::new(cfg.clone(), now);
                let mut svc = Recorder::default();
                let out = run(&mut conn, &mut svc, &input, &[cut], now);
                assert_eq!(conn.features(), STREAMS, "only what both support");
                let mut expect = Vec::new();
                Hello::new(codec).with_features(STREAMS).encode(&mut expect);
                encode_credit(codec, &mut expect, 4, 1);
                assert_eq!(
                    out, expect,
                    "{codec:?}: the hello's answer, then the service's credit"
                );
                assert_eq!(svc.streams.len(), 3, "{:?}", svc.streams);
                assert!(svc.notifications.is_empty());
            }
            // Without streams agreed (no hello, or a hello not offering them), they are
            // plain notifications (a server serves no `rpc.` names: ignored).
            let mut plain = Vec::new();
            Hello::new(codec).encode(&mut plain);
            plain.extend_from_slice(&body);
            let mut conn = ServerConnection::new(config(), now);
            let mut svc = Recorder::default();
            let _ = run(&mut conn, &mut svc, &plain, &[], now);
            assert!(svc.streams.is_empty());
            assert_eq!(svc.notifications.len(), 3);
        }
    }

    #[test]
    fn bad_hello_is_fatal() {
        let now = Instant::now();
        let mut conn = ServerConnection::new(config(), now);
        let mut svc = Recorder::default();
        conn.read_buf()
            .extend_from_slice(&hex!("c1 52 50 43 01 09 00 00"));
        assert_eq!(conn.handle_input(now, &mut svc), Err(Fatal::Hello));
        assert!(conn.should_linger());
        assert!(conn.is_done(0));
    }

    #[test]
    fn cancel_only_after_a_hello() {
        let now = Instant::now();
        let mut cancel = Vec::new();
        encode_notification(Codec::Msgpack, &mut cancel, CANCEL, &(9u64,)).unwrap();
        // A plain peer's `rpc.cancel` is an ordinary notification.
        let mut conn = ServerConnection::new(config(), now);
        let mut svc = Recorder::default();
        run(&mut conn, &mut svc, &cancel, &[], now);
        assert!(svc.cancels.is_empty());
        assert_eq!(svc.notifications, [CANCEL.as_bytes().to_vec()]);
        // After a hello it names the call to cancel.
        let mut input = Vec::new();
        Hello::new(Codec::Msgpack).encode(&mut input);
        input.extend(&cancel);
        let mut conn = ServerConnection::new(config(), now);
        let mut svc = Recorder::default();
        run(&mut conn, &mut svc, &input, &[], now);
        assert_eq!(svc.cancels, [9]);
        assert!(svc.notifications.is_empty());
    }

    #[test]
    fn too_large_is_answered_with_its_msgid_then_fatal() {
        let now = Instant::now();
        let mut conn = ServerConnection::new(config(), now);
        let mut svc = Recorder::default();
        // [0, 3, "add", [bin32 of 1 MiB ...]]: over the 1 KiB limit, from the header.
        let input = hex!("94 00 03 a3 61 64 64 91 c6 00 10 00 00");
        conn.read_buf().extend_from_slice(&input);
        let r = conn.handle_input(now, &mut svc);
        assert!(
            matches!(r, Err(Fatal::Frame(FrameError::TooLarge { .. }))),
            "{r:?}"
        );
        let out = take(&mut conn);
        let Ok(Message::Response {
            msgid: 3,
            outcome: Err(e),
        }) = Message::parse(Codec::Msgpack, &out)
        else {
            panic!("{out:x?}")
        };
        assert_eq!(
            crate::decode_error(Codec::Msgpack, e).kind(),
            ErrorCode::MessageTooLarge
        );
        assert!(conn.should_linger());
        assert!(!conn.wants_read(0));
    }

    #[test]
    fn errors_take_the_configured_shape_for_plain_peers_only() {
        let now = Instant::now();
        let nope = request(Codec::Msgpack, 6, "nope", (0, 0), None);
        let expect = |shape| {
            let mut config = config();
            config.error_shape = shape;
            let mut conn = ServerConnection::new(config, now);
            run(&mut conn, &mut Recorder::default(), &nope, &[], now)
        };
        // [1, 6, [1, "method not found: nope"], nil] (method not found is our code 1)
        let mut msg = b"method not found: nope".to_vec();
        let mut str_ = vec![0xa0 | msg.len() as u8];
        str_.append(&mut msg);
        let code_and_message = [&hex!("94 01 06 92 01")[..], &str_, &hex!("c0")].concat();
        assert_eq!(expect(ErrorShape::CodeAndMessage), code_and_message);
        // Go's net/rpc: the message alone.
        assert_eq!(
            expect(ErrorShape::Message),
            [&hex!("94 01 06")[..], &str_, &hex!("c0")].concat()
        );
        // Neovim: [1 (validation), message]; a handler's error would be [0, message].
        assert_eq!(
            expect(ErrorShape::TypeAndMessage),
            [&hex!("94 01 06 92 01")[..], &str_, &hex!("c0")].concat()
        );
        let mut out = Vec::new();
        let failed = ServerError::new(ErrorCode::HandlerError, "x");
        encode_response_err_shaped(Codec::Msgpack, &mut out, 6, &failed, ErrorShape::TypeAndMessage);
        assert_eq!(out, hex!("94 01 06 92 00 a1 78 c0"));
        // A peer that said hello gets [code, message] whatever the setting.
        let mut config = config();
        config.error_shape = ErrorShape::Message;
        let mut conn = ServerConnection::new(config, now);
        let mut input = Vec::new();
        Hello::new(Codec::Msgpack).encode(&mut input);
        let hello_len = input.len();
        input.extend(&nope);
        let out = run(&mut conn, &mut Recorder::default(), &input, &[], now);
        assert_eq!(&out[hello_len..], &code_and_message[..]);
    }

    #[test]
    fn draining_answers_shutting_down() {
        let now = Instant::now();
        let mut conn = ServerConnection::new(config(), now);
        let mut svc = Recorder::default();
        conn.start_drain();
        let out = run(
            &mut conn,
            &mut svc,
            &request(Codec::Msgpack, 4, "add", (1, 1), None),
            &[],
            now,
        );
        let Ok(Message::Response {
            msgid: 4,
            outcome: Err(e),
        }) = Message::parse(Codec::Msgpack, &out)
        else {
            panic!("{out:x?}")
        };
        assert_eq!(
            crate::decode_error(Codec::Msgpack, e).kind(),
            ErrorCode::ShuttingDown
        );
        assert!(svc.requests.is_empty(), "never dispatched");
        assert!(conn.is_done(0));
        // `rpc.health` still reaches the service, which answers "draining".
        run(
            &mut conn,
            &mut svc,
            &request(Codec::Msgpack, 5, crate::reserved::HEALTH, (0, 0), None),
            &[],
            now,
        );
        assert_eq!(svc.requests.len(), 1);
    }

    #[test]
    fn end_of_input_answers_what_was_received_then_is_done() {
        let now = Instant::now();
        let mut conn = ServerConnection::new(config(), now);
        let mut svc = Recorder::default();
        let mut input = request(Codec::Msgpack, 1, "slow", (0, 0), None);
        input.extend(&request(Codec::Msgpack, 2, "add", (1, 1), None)[..5]);
        run(&mut conn, &mut svc, &input, &[], now);
        assert_eq!(conn.handle_eof(), 5, "the half request is dropped");
        assert!(!conn.wants_read(1));
        assert!(!conn.is_done(1), "a call is in flight");
        conn.transmit().ok(1, &7u8).unwrap();
        svc.pending.clear();
        assert!(!conn.is_done(0), "its answer is not written yet");
        assert_eq!(take(&mut conn), hex!("94 01 01 c0 07"));
        assert!(conn.is_done(0));
        assert!(!conn.should_linger());
    }

    #[test]
    fn a_half_closed_peer_that_stops_reading_meets_the_heartbeat() {
        let t0 = Instant::now();
        let hb = config().heartbeat_timeout;
        let mut conn = ServerConnection::new(config(), t0);
        let mut svc = Recorder::default();
        run(
            &mut conn,
            &mut svc,
            &request(Codec::Msgpack, 1, "slow", (0, 0), None),
            &[],
            t0,
        );
        conn.handle_eof();
        // The call ends; its answer waits, unread.
        let t1 = t0 + Duration::from_secs(5);
        conn.transmit().ok(1, &7u8).unwrap();
        conn.calls_idle(t1);
        assert!(!conn.is_done(0), "an answer waits");
        skip_shrinks(&mut conn, t1 + hb);
        assert_eq!(conn.poll_timeout(), Some(t1 + hb));
        assert!(!conn.handle_timeout(t1 + hb - Duration::from_millis(1), 0));
        assert!(conn.handle_timeout(t1 + hb, 0), "closed at the heartbeat timeout");
    }

    #[test]
    fn heartbeat_expires_only_when_idle() {
        let t0 = Instant::now();
        let hb = config().heartbeat_timeout;
        let mut conn = ServerConnection::new(config(), t0);
        let mut svc = Recorder::default();
        skip_shrinks(&mut conn, t0 + hb);
        assert_eq!(conn.poll_timeout(), Some(t0 + hb));
        // A message at t0 + 10 s moves the deadline.
        let t1 = t0 + Duration::from_secs(10);
        run(
            &mut conn,
            &mut svc,
            &request(Codec::Msgpack, 1, "slow", (0, 0), None),
            &[],
            t1,
        );
        skip_shrinks(&mut conn, t1 + hb);
        assert_eq!(conn.poll_timeout(), Some(t1 + hb));
        // Due, but a call is in flight: not closed; looked at again an eighth later.
        let t2 = t1 + hb;
        assert!(!conn.handle_timeout(t2, 1));
        assert_eq!(conn.poll_timeout(), Some(t2 + hb / 8));
        // The call ends at t3: the timeout counts from there.
        let t3 = t2 + Duration::from_secs(1);
        conn.calls_idle(t3);
        assert!(!conn.handle_timeout(t3 + hb - Duration::from_millis(1), 0));
        assert!(conn.handle_timeout(t3 + hb, 0));
        assert!(!conn.wants_read(0));
        assert!(conn.is_done(0));
    }

    #[test]
    fn limits_hold_messages_until_there_is_room() {
        let now = Instant::now();
        let mut conn = ServerConnection::new(config(), now);
        let mut svc = Recorder::default();
        let input: Vec<u8> = (1..=6)
            .flat_map(|i| request(Codec::Msgpack, i, "slow", (0, 0), None))
            .collect();
        run(&mut conn, &mut svc, &input, &[], now);
        assert_eq!(svc.pending, [1, 2, 3, 4], "max_in_flight is 4");
        assert!(!conn.wants_read(4));
        assert!(!conn.has_held_input(4));
        svc.pending.remove(0);
        assert!(conn.has_held_input(3));
        conn.handle_input(now, &mut svc).unwrap();
        assert_eq!(svc.pending, [2, 3, 4, 5]);
    }
}
