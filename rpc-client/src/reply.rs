//! What both clients do with a response frame.

use rpc_proto::{decode_error, Codec, Message};
use serde::de::DeserializeOwned;

use crate::Error;

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
        Ok(bytes) => Ok(codec.decode_framed(bytes)?),
        Err(bytes) => Err(Error::Remote(decode_error(codec, bytes))),
    }
}
