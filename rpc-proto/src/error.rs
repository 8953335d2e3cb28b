//! Errors that travel on the wire, and errors of the protocol core itself.

use std::fmt;

use serde::de::DeserializeOwned;

use crate::codec::{Codec, EncodeValue};

/// The stable numeric codes sent in the `[code, message]` (or `[code, message, data]`) error
/// of a response.
///
/// The numbers never change meaning; new codes are only ever added. Codes that a server
/// does not know (from a third-party peer) are kept as plain integers in
/// [`ServerError::code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The error value did not have the `[code, message]` shape (a third-party peer).
    Unknown,
    /// No function is registered under the requested name.
    MethodNotFound,
    /// The arguments did not match the function: wrong count or wrong types.
    InvalidParams,
    /// The function ran and returned an error; the message is the error's `Display`, and
    /// the data, when the error type is `Serialize`, the error itself.
    HandlerError,
    /// The function panicked. The panic message is logged on the server, not sent.
    HandlerPanicked,
    /// The message was larger than the server's maximum message size.
    MessageTooLarge,
    /// The message was not a valid MessagePack-RPC message.
    MalformedMessage,
    /// The function's `max_flow` limit was reached; the call did not run.
    Overloaded,
    /// The call's deadline passed before it finished.
    DeadlineExceeded,
    /// The server is shutting down and did not run the call.
    ShuttingDown,
    /// An internal server error, such as a result that could not be encoded.
    Internal,
    /// The caller did not prove who it is (a middleware's token check failed, say).
    Unauthenticated,
    /// The server's rules do not allow this call on this connection (a method served only
    /// over the Unix socket, called over TCP, say).
    PermissionDenied,
    /// The method streams (its result or an argument), and the caller's connection cannot:
    /// it did not agree the streams feature in a hello (a plain MessagePack-RPC peer).
    StreamingMethod,
}

impl ErrorCode {
    /// Every known code, in numeric order.
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::Unknown,
        ErrorCode::MethodNotFound,
        ErrorCode::InvalidParams,
        ErrorCode::HandlerError,
        ErrorCode::HandlerPanicked,
        ErrorCode::MessageTooLarge,
        ErrorCode::MalformedMessage,
        ErrorCode::Overloaded,
        ErrorCode::DeadlineExceeded,
        ErrorCode::ShuttingDown,
        ErrorCode::Internal,
        ErrorCode::Unauthenticated,
        ErrorCode::PermissionDenied,
        ErrorCode::StreamingMethod,
    ];

    /// The number sent on the wire.
    pub const fn as_i64(self) -> i64 {
        match self {
            ErrorCode::Unknown => 0,
            ErrorCode::MethodNotFound => 1,
            ErrorCode::InvalidParams => 2,
            ErrorCode::HandlerError => 3,
            ErrorCode::HandlerPanicked => 4,
            ErrorCode::MessageTooLarge => 5,
            ErrorCode::MalformedMessage => 6,
            ErrorCode::Overloaded => 7,
            ErrorCode::DeadlineExceeded => 8,
            ErrorCode::ShuttingDown => 9,
            ErrorCode::Internal => 10,
            ErrorCode::Unauthenticated => 11,
            ErrorCode::PermissionDenied => 12,
            ErrorCode::StreamingMethod => 13,
        }
    }

    /// The code for a number, if it is one of ours.
    pub fn from_i64(code: i64) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_i64() == code)
    }

    /// A short lowercase name, as used in logs and the README.
    pub const fn name(self) -> &'static str {
        match self {
            ErrorCode::Unknown => "unknown",
            ErrorCode::MethodNotFound => "method not found",
            ErrorCode::InvalidParams => "invalid params",
            ErrorCode::HandlerError => "handler error",
            ErrorCode::HandlerPanicked => "handler panicked",
            ErrorCode::MessageTooLarge => "message too large",
            ErrorCode::MalformedMessage => "malformed message",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::DeadlineExceeded => "deadline exceeded",
            ErrorCode::ShuttingDown => "shutting down",
            ErrorCode::Internal => "internal error",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::PermissionDenied => "permission denied",
            ErrorCode::StreamingMethod => "streaming method",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An error as it travels on the wire: `[code, message]`, or `[code, message, data]`.
///
/// The data is the value of a function's own error type (the `E` of its `Result<T, E>`,
/// when `E` is `Serialize`), encoded with the connection's codec; [`ServerError::decode_data`]
/// turns it back into an `E`. A plain peer reads the code and the message as the first two
/// elements, and may ignore the third. An error has no data unless it was given some
/// ([`ServerError::with_data`]) or received some.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// The numeric code; see [`ErrorCode`] for ours.
    pub code: i64,
    /// A human-readable message.
    pub message: String,
    /// Boxed: most errors have none, and a `ServerError` is the error half of the results
    /// of the per-call path (argument decoding), which stay small.
    data: Option<Box<ErrorData>>,
}

/// A [`ServerError`]'s data: one value, encoded with `codec`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ErrorData {
    codec: Codec,
    bytes: Box<[u8]>,
}

impl ServerError {
    /// An error with one of our codes.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ServerError {
        ServerError::with_code(code.as_i64(), message)
    }

    /// An error with any numeric code, such as a third-party server's.
    ///
    /// ```
    /// use easyrpc_proto::{ErrorCode, ServerError};
    ///
    /// let e = ServerError::with_code(-32601, "no such method");
    /// assert_eq!((e.code, e.kind()), (-32601, ErrorCode::Unknown));
    /// ```
    pub fn with_code(code: i64, message: impl Into<String>) -> ServerError {
        ServerError {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// The same error carrying `data`, encoded with `codec`: it is sent as the third element
    /// of the error, `[code, message, data]`, on a connection that uses `codec` (to a peer
    /// that reads errors as `[code, message]`), and left out on any other.
    ///
    /// ```
    /// use easyrpc_proto::{Codec, ErrorCode, ServerError};
    ///
    /// let e = ServerError::new(ErrorCode::HandlerError, "todo 42 not found")
    ///     .with_data(Codec::Msgpack, &42u64)
    ///     .unwrap();
    /// assert_eq!(e.data(), Some(&[42u8][..]));
    /// assert_eq!(e.decode_data::<u64>().unwrap().unwrap(), 42);
    /// ```
    ///
    /// # Errors
    ///
    /// When `data`'s `Serialize` implementation fails.
    pub fn with_data<V: EncodeValue + ?Sized>(
        mut self,
        codec: Codec,
        data: &V,
    ) -> Result<ServerError, EncodeError> {
        let mut bytes = Vec::new();
        data.encode_value(codec, &mut bytes)?;
        self.set_data(codec, bytes);
        Ok(self)
    }

    /// Attach data already encoded with `codec`: one whole value (the caller checked it).
    pub(crate) fn set_data(&mut self, codec: Codec, bytes: impl Into<Box<[u8]>>) {
        self.data = Some(Box::new(ErrorData {
            codec,
            bytes: bytes.into(),
        }));
    }

    /// The code as one of ours, or [`ErrorCode::Unknown`].
    pub fn kind(&self) -> ErrorCode {
        ErrorCode::from_i64(self.code).unwrap_or(ErrorCode::Unknown)
    }

    /// The error's data, encoded with [`ServerError::data_codec`], if it has any.
    pub fn data(&self) -> Option<&[u8]> {
        self.data.as_ref().map(|d| &*d.bytes)
    }

    /// The codec the data is encoded with (the connection's, for an error received).
    pub fn data_codec(&self) -> Option<Codec> {
        self.data.as_ref().map(|d| d.codec)
    }

    /// The data, if it is encoded with `codec`: what a connection using `codec` sends.
    pub(crate) fn data_in(&self, codec: Codec) -> Option<&[u8]> {
        self.data.as_ref().filter(|d| d.codec == codec).map(|d| &*d.bytes)
    }

    /// The data decoded as a `T`: `None` when the error has no data.
    ///
    /// A server built with `rpc` sends the data only for a [`ErrorCode::HandlerError`]
    /// whose function's error type is `Serialize`: decode it as that type.
    ///
    /// # Errors
    ///
    /// `Some(Err(_))` when the data is not a `T`.
    pub fn decode_data<T: DeserializeOwned>(&self) -> Option<Result<T, DecodeError>> {
        let d = self.data.as_deref()?;
        Some(d.codec.decode(&d.bytes))
    }

    /// The data as a dynamic MessagePack value, for callers that do not know its type
    /// (such as `call_value`'s): `None` when the error has no data.
    ///
    /// A msgpack str whose bytes are not UTF-8 stays a `Value::String`.
    ///
    /// # Errors
    ///
    /// `Some(Err(_))` when the data is bincode, whose values do not describe themselves:
    /// decode it into its type with [`ServerError::decode_data`].
    pub fn data_value(&self) -> Option<Result<rmpv::Value, DecodeError>> {
        let d = self.data.as_deref()?;
        Some(match d.codec {
            Codec::Msgpack => {
                rmpv::decode::read_value_with_max_depth(&mut &*d.bytes, crate::codec::MAX_DEPTH)
                    .map_err(|e| DecodeError::Msgpack(rmp_serde::decode::Error::Uncategorized(e.to_string())))
            }
            Codec::Bincode => Err(DecodeError::Bincode(bincode::error::DecodeError::Other(
                "bincode values do not describe themselves: decode the data into its type",
            ))),
        })
    }

    /// "method not found: NAME".
    pub fn method_not_found(method: &[u8]) -> ServerError {
        ServerError::new(
            ErrorCode::MethodNotFound,
            format!("method not found: {}", String::from_utf8_lossy(method)),
        )
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.kind(), self.code, self.message)
    }
}

impl std::error::Error for ServerError {}

/// A stream-level framing error: the stream cannot be read any further.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A message declared (in its headers) more bytes than the maximum message size.
    #[error("message of at least {declared} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The size the headers declared, at least.
        declared: u64,
        /// The configured limit.
        limit: usize,
        /// The request's msgid, when it could be read from the bytes already received.
        msgid: Option<u64>,
    },
    /// The bytes are not MessagePack (for example the never-used marker `0xc1`).
    #[error("invalid messagepack: {0}")]
    Invalid(&'static str),
    /// A compressed message (the hello's zstd feature) could not be decompressed: not one
    /// zstd frame with a content size, corrupt, or not exactly one message inside.
    #[error("corrupt compressed message: {reason}")]
    Decompress {
        /// What is wrong with it.
        reason: String,
    },
    /// A compressed message declares a decompressed size larger than the maximum message
    /// size: refused before anything is decompressed.
    #[error("compressed message decompresses to {declared} bytes, over the limit of {limit} bytes")]
    DecompressedTooLarge {
        /// The decompressed size its zstd frame declares.
        declared: u64,
        /// The configured limit.
        limit: usize,
    },
}

impl FrameError {
    /// The wire error to send back for this framing error.
    pub fn to_server_error(&self) -> ServerError {
        match self {
            FrameError::TooLarge { .. } | FrameError::DecompressedTooLarge { .. } => {
                ServerError::new(ErrorCode::MessageTooLarge, self.to_string())
            }
            FrameError::Invalid(_) | FrameError::Decompress { .. } => {
                ServerError::new(ErrorCode::MalformedMessage, self.to_string())
            }
        }
    }

    /// The msgid of the request that caused this error, when it is known.
    pub fn msgid(&self) -> Option<u64> {
        match self {
            FrameError::TooLarge { msgid, .. } => *msgid,
            FrameError::Invalid(_)
            | FrameError::Decompress { .. }
            | FrameError::DecompressedTooLarge { .. } => None,
        }
    }
}

/// A complete message that is not a valid MessagePack-RPC message. The stream itself is
/// still in sync: the next message can be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed message: {reason}")]
pub struct ParseError {
    /// Why the message is malformed.
    pub reason: String,
    /// The msgid, when the message was a request whose msgid could be read.
    pub msgid: Option<u64>,
}

impl ParseError {
    pub(crate) fn new(reason: impl Into<String>, msgid: Option<u64>) -> ParseError {
        ParseError {
            reason: reason.into(),
            msgid,
        }
    }

    /// The wire error to send back.
    pub fn to_server_error(&self) -> ServerError {
        ServerError::new(ErrorCode::MalformedMessage, self.to_string())
    }
}

/// A value could not be encoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// MessagePack encoding failed.
    #[error("messagepack encode: {0}")]
    Msgpack(#[from] rmp_serde::encode::Error),
    /// bincode encoding failed.
    #[error("bincode encode: {0}")]
    Bincode(#[from] bincode::error::EncodeError),
    /// A method name longer than the bincode envelope allows (65 535 bytes).
    #[error("method name too long")]
    MethodTooLong,
    /// Call metadata larger than a message can carry (4 GiB).
    #[error("call metadata too long")]
    MetadataTooLong,
}

/// A value could not be decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// MessagePack decoding failed.
    #[error("{0}")]
    Msgpack(#[from] rmp_serde::decode::Error),
    /// bincode decoding failed.
    #[error("{}", bincode_message(.0))]
    Bincode(#[from] bincode::error::DecodeError),
    /// The bytes did not hold one complete value.
    #[error("{0}")]
    Framing(#[from] FrameError),
    /// Bytes were left over after the value.
    #[error("{0} trailing bytes after the value")]
    Trailing(usize),
}

/// bincode's errors print as their `Debug` form; the two that a hostile length produces
/// are said in words.
fn bincode_message(e: &bincode::error::DecodeError) -> String {
    use bincode::error::DecodeError as E;
    match e {
        E::UnexpectedEnd { additional } => {
            format!("the value needs at least {additional} more bytes than are present")
        }
        E::LimitExceeded => "the value declares a length larger than any frame can hold".to_owned(),
        other => other.to_string(),
    }
}
