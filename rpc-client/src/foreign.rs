//! Errors from servers that are not ours: their codes are their own.

use std::fmt;

#[cfg(feature = "blocking")]
use easyrpc_proto::Codec;
use rmpv::Value;

#[cfg(feature = "blocking")]
use crate::reply::{Decoder, Outcome};
use crate::Error;

/// An error reply from a server that did not answer our hello: a third-party
/// MessagePack-RPC server (Neovim, a Python or Go service), or one of ours called without
/// the hello. Its code is that server's own, so it is not read as an
/// [`ErrorCode`](crate::ErrorCode): Neovim's `[1, "Invalid buffer id"]` is its validation
/// error, not our method-not-found, and prints as `server error 1: Invalid buffer id`.
///
/// The spec leaves the error's shape open. `code` and `message` read the common
/// `[code, message, ...]` shape; `value` keeps the error as sent, whatever its shape.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ForeignError {
    /// The first element when the error is an array of at least two elements that starts
    /// with an integer (`[code, message, ...]`); `None` for any other shape.
    pub code: Option<i64>,
    /// The second element of `[code, message, ...]`, the error itself when it is a string
    /// (str or bin, read as UTF-8 with invalid bytes replaced), otherwise the error value
    /// written out.
    pub message: String,
    /// The whole error value as the server sent it.
    pub value: Value,
}

impl ForeignError {
    /// Read the error value of a reply (MessagePack: a server that does not say hello
    /// speaks nothing else). The value lies in a frame the framer checked, so every length
    /// it declares is within the bytes present.
    pub(crate) fn decode(raw: &[u8]) -> ForeignError {
        match rmpv::decode::read_value(&mut &raw[..]) {
            Ok(value) => ForeignError::from_value(value),
            Err(e) => ForeignError {
                code: None,
                message: format!("undecodable error value: {e}"),
                value: Value::Binary(raw.to_vec()),
            },
        }
    }

    fn from_value(value: Value) -> ForeignError {
        let (code, message) = match &value {
            Value::Array(v) if v.len() >= 2 && v[0].is_i64() => (v[0].as_i64(), text(&v[1])),
            other => (None, text(other)),
        };
        ForeignError { code, message, value }
    }
}

/// A string as text (str or bin, lossily), anything else written out.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Value::Binary(b) => String::from_utf8_lossy(b).into_owned(),
        other => other.to_string(),
    }
}

impl fmt::Display for ForeignError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            Some(code) => write!(f, "server error {code}: {}", self.message),
            None => write!(f, "server error: {}", self.message),
        }
    }
}

impl std::error::Error for ForeignError {}

/// The error value of a reply from a server that is not ours (the protocol's
/// [`is_server_ours`](easyrpc_proto::ClientConnection::is_server_ours)) as an error. Out of
/// line: never on a call's path.
#[cold]
#[inline(never)]
pub(crate) fn foreign(raw: &[u8]) -> Error {
    Error::Foreign(Box::new(ForeignError::decode(raw)))
}

/// Decode a reply: an error reply from a server that is not ours is a [`ForeignError`];
/// everything else goes to `D`.
#[inline(always)]
#[cfg(feature = "blocking")]
pub(crate) fn decode_reply<R, D: Decoder<R>>(
    codec: Codec,
    ours: bool,
    outcome: Outcome<'_>,
) -> Result<R, Error> {
    match outcome {
        Err(raw) if !ours => Err(foreign(raw)),
        outcome => D::decode(codec, outcome),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn foreign(v: Value) -> ForeignError {
        let mut raw = Vec::new();
        rmpv::encode::write_value(&mut raw, &v).unwrap();
        ForeignError::decode(&raw)
    }

    #[test]
    fn shapes() {
        let e = foreign(Value::Array(vec![1.into(), "Invalid buffer id".into()]));
        assert_eq!((e.code, e.message.as_str()), (Some(1), "Invalid buffer id"));
        assert_eq!(e.to_string(), "server error 1: Invalid buffer id");
        // msgpack-rpc-python's old unpacker defaults send bytes.
        let e = foreign(Value::Array(vec![(-3).into(), Value::Binary(b"bad".to_vec())]));
        assert_eq!(e.to_string(), "server error -3: bad");
        // A str that is not UTF-8 stays a str in `value`.
        let e = ForeignError::decode(&[0xa2, 0xff, b'x']);
        assert_eq!((e.code, e.message.as_str()), (None, "\u{fffd}x"));
        assert!(
            matches!(&e.value, Value::String(s) if s.as_bytes() == b"\xffx"),
            "{e:?}"
        );
        // A lone code, or a code too large for i64: no code read.
        let e = foreign(Value::Array(vec![5.into()]));
        assert_eq!((e.code, e.to_string().as_str()), (None, "server error: [5]"));
        let e = foreign(Value::Array(vec![u64::MAX.into(), "x".into()]));
        assert_eq!(e.code, None);
        let e = ForeignError::decode(&[0xa5, b'a']);
        assert!(e.message.starts_with("undecodable error value"), "{e}");
    }
}
