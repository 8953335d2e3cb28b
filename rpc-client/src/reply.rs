//! What both clients do with a response frame.

use rpc_proto::{decode_error, Codec};
use serde::de::DeserializeOwned;

use crate::Error;

/// A response's raw result (`Ok`) or raw error value (`Err`).
pub(crate) type Outcome<'a> = Result<&'a [u8], &'a [u8]>;

/// Decode an outcome into the result type or a remote error.
pub(crate) fn decode<R: DeserializeOwned>(codec: Codec, outcome: Outcome<'_>) -> Result<R, Error> {
    match outcome {
        Ok(bytes) => Ok(codec.decode_framed(bytes)?),
        Err(bytes) => Err(Error::Remote(decode_error(codec, bytes))),
    }
}
