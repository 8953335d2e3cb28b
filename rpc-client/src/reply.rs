//! What both clients do with a response frame.

use bytes::Bytes;
use rpc_proto::{decode_error, Codec, Message};
use serde::de::DeserializeOwned;

use crate::Error;

/// A response frame, parsed once to find its msgid and outcome.
#[derive(Debug)]
pub(crate) struct RawReply {
    frame: Bytes,
    codec: Codec,
    ok: bool,
    start: usize,
}

/// A response's raw result (`Ok`) or raw error value (`Err`).
pub(crate) type Outcome<'a> = Result<&'a [u8], &'a [u8]>;

/// The msgid and outcome of a response, or `None` for a request or notification from the
/// server, which clients ignore.
pub(crate) fn parse(codec: Codec, frame: &[u8]) -> Result<Option<(u64, Outcome<'_>)>, Error> {
    match Message::parse(codec, frame) {
        Ok(Message::Response { msgid, outcome }) => Ok(Some((msgid, outcome))),
        Ok(_) => Ok(None),
        Err(e) => Err(Error::Protocol(e.to_string())),
    }
}

/// Decode an outcome into the result type or a remote error.
pub(crate) fn decode<R: DeserializeOwned>(codec: Codec, outcome: Outcome<'_>) -> Result<R, Error> {
    match outcome {
        Ok(bytes) => Ok(codec.decode(bytes)?),
        Err(bytes) => Err(Error::Remote(decode_error(codec, bytes))),
    }
}

impl RawReply {
    /// Parse an owned frame, keeping it for the caller to decode.
    pub(crate) fn parse(codec: Codec, frame: Bytes) -> Result<Option<(u64, RawReply)>, Error> {
        let Some((msgid, outcome)) = parse(codec, &frame)? else {
            return Ok(None);
        };
        let (ok, part) = match outcome {
            Ok(r) => (true, r),
            Err(e) => (false, e),
        };
        let start = part.as_ptr() as usize - frame.as_ptr() as usize;
        Ok(Some((
            msgid,
            RawReply {
                frame,
                codec,
                ok,
                start,
            },
        )))
    }

    pub(crate) fn decode<R: DeserializeOwned>(self) -> Result<R, Error> {
        let bytes = &self.frame[self.start..];
        decode(self.codec, if self.ok { Ok(bytes) } else { Err(bytes) })
    }
}
