//! The MessagePack-RPC protocol core, with no I/O in it.
//!
//! This crate turns bytes into messages and messages into bytes. It opens no socket, starts
//! no task and reads no clock: the server (`rpc-server`) and the clients (`rpc-client`)
//! feed it the bytes they read and write out the bytes it produces. Most users want the
//! `rpc` crate instead, which puts the pieces together.
//!
//! # Layout
//!
//! - [`ServerConnection`] and [`ClientConnection`]: one connection's protocol on each side,
//!   as state machines in quinn-proto's style. Bytes and the time go in; calls (through a
//!   [`Service`]) or replies (through [`Replies`]), bytes to write and the next timer come
//!   out. They decide the hello and the codec, framing (a fast one-pass path for the common
//!   message, chosen inside), the size limit, deadlines, cancellation, draining, end of
//!   input and heartbeats; and on the client, msgids, the in-flight table and, with
//!   [`may_resend`], what may be sent again after a reconnect. The server's connection
//!   task and both clients are loops that move bytes between a transport and these.
//! - [`Framer`]: finds where each message ends in a byte stream, incrementally, with a size
//!   limit checked from headers.
//! - [`Message`]: parses one complete frame into a request, response or notification that
//!   borrows its method and params from the frame; `encode_*` write them.
//! - [`Codec`], [`Args`], [`Params`]: how argument and result values become bytes.
//! - [`ServerError`], [`ErrorCode`]: the `[code, message]` errors on the wire (`[code, message,
//!   data]` for a function's own error, its data in the connection's codec).
//! - [`Hello`]: the opt-in handshake that selects the bincode codec, carries a session and
//!   agrees optional features.
//! - [`compress`]: zstd compression of large messages ([`Compression`]), when the hello
//!   agreed to it.
//! - [`DedupCache`]: the completed-response cache of "unstable network" mode; it takes the
//!   time as an argument, so tests never sleep.
//!
//! # Example
//!
//! ```
//! use easyrpc_proto::{encode_request, Codec, Framer, Message};
//!
//! let mut wire = Vec::new();
//! encode_request(Codec::Msgpack, &mut wire, 1, "add", &(2, 3), None).unwrap();
//!
//! let mut framer = Framer::new(Codec::Msgpack, 1 << 20);
//! let len = framer.decode(&wire).unwrap().unwrap();
//! let Message::Request { msgid, method, params, .. } = Message::parse(Codec::Msgpack, &wire[..len]).unwrap() else {
//!     unreachable!()
//! };
//! let (a, b): (i64, i64) = easyrpc_proto::FromArgs::from_args(&mut easyrpc_proto::Args::new(Codec::Msgpack, params)).unwrap();
//! assert_eq!((msgid, method, a + b), (1, &b"add"[..], 5));
//! ```
#![doc(test(attr(deny(warnings, rust_2018_idioms), allow(dead_code, unused_variables))))]

pub mod blob;
mod codec;
pub mod compress;
mod connection;
pub mod dedup;
pub mod discovery;
mod error;
mod framer;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod handshake;
mod message;
mod metadata;
pub mod reserved;
pub mod stream;
mod wire;

pub use blob::Blob;
pub use codec::{Args, Codec, EncodeValue, FromArgs, Params, ParamsEncoder};
pub use compress::Compression;
pub use connection::client::{
    is_refused, may_resend, ClientConfig, ClientConnection, Failure, ProtocolError, ReadBuf, Replies,
    Reply as ClientReply, INLINE_REPLY, MAX_SERVING,
};
pub use connection::server::{
    ConnEvent, Fatal, Request, ServerConfig, ServerConnection, Service, Transmit, TransmitGuard,
};
pub use dedup::{Begin, DedupCache, DedupConfig};
pub use error::{DecodeError, EncodeError, ErrorCode, FrameError, ParseError, ServerError};
pub use framer::{Framer, DEFAULT_MAX_MESSAGE_SIZE};
pub use handshake::Hello;
pub use message::{
    decode_error, encode_notification, encode_request, encode_request_ext, encode_response_err,
    encode_response_err_shaped, encode_response_ok, ErrorShape, Message, NOTIFICATION, REQUEST, RESPONSE,
};
pub use metadata::{Metadata, MetadataError};
pub use stream::StreamMessage;

/// Method names starting with this prefix are reserved for the framework itself.
pub const RESERVED_PREFIX: &str = reserved::PREFIX;
