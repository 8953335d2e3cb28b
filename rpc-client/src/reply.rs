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

impl RawReply {
    /// The msgid and the reply, or `None` when the frame is a request or notification
    /// from the server, which clients ignore.
    pub(crate) fn parse(codec: Codec, frame: Bytes) -> Result<Option<(u64, RawReply)>, Error> {
        let (msgid, outcome) = match Message::parse(codec, &frame) {
            Ok(Message::Response { msgid, outcome }) => (msgid, outcome),
            Ok(_) => return Ok(None),
            Err(e) => return Err(Error::Protocol(e.to_string())),
        };
        let (ok, part) = match outcome {
            Ok(r) => (true, r),
            Err(e) => (false, e),
        };
        let start = part.as_ptr() as usize - frame.as_ptr() as usize;
        Ok(Some((
            msgid,
            RawReply {
                frame: frame.clone(),
                codec,
                ok,
                start,
            },
        )))
    }

    pub(crate) fn decode<R: DeserializeOwned>(self) -> Result<R, Error> {
        let bytes = &self.frame[self.start..];
        if self.ok {
            Ok(self.codec.decode(bytes)?)
        } else {
            Err(Error::Remote(decode_error(self.codec, bytes)))
        }
    }
}
