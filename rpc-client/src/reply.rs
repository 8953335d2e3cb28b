//! What both clients do with a response frame.

use easyrpc_proto::{decode_error, Codec};
use serde::de::DeserializeOwned;

use crate::Error;

/// A response's raw result (`Ok`) or raw error value (`Err`).
pub(crate) type Outcome<'a> = Result<&'a [u8], &'a [u8]>;

/// Decode an outcome into the result type or a remote error.
pub(crate) fn decode<R: DeserializeOwned>(codec: Codec, outcome: Outcome<'_>) -> Result<R, Error> {
    match outcome {
        Ok(bytes) => Ok(codec.decode_framed(bytes)?),
        Err(bytes) => Err(Error::Remote(Box::new(decode_error(codec, bytes)))),
    }
}

/// How a call's result is decoded: through serde ([`Serde`]), or, for a dynamic
/// [`rmpv::Value`], natively ([`NativeValue`]).
pub(crate) trait Decoder<R> {
    fn decode(codec: Codec, outcome: Outcome<'_>) -> Result<R, Error>;
}

/// Any `DeserializeOwned` result, through serde.
pub(crate) struct Serde;

impl<R: DeserializeOwned> Decoder<R> for Serde {
    #[inline]
    fn decode(codec: Codec, outcome: Outcome<'_>) -> Result<R, Error> {
        decode(codec, outcome)
    }
}

/// A dynamic `rmpv::Value`, read natively from MessagePack: a str keeps its type even when
/// its bytes are not UTF-8 (serde would hand it over as bytes, and it would become
/// `Value::Binary`). The value lies in a frame the framer checked, so every length it
/// declares is within the bytes present.
pub(crate) struct NativeValue;

impl Decoder<rmpv::Value> for NativeValue {
    fn decode(codec: Codec, outcome: Outcome<'_>) -> Result<rmpv::Value, Error> {
        match (codec, outcome) {
            (Codec::Msgpack, Ok(mut bytes)) => rmpv::decode::read_value(&mut bytes).map_err(|e| {
                Error::Decode(easyrpc_proto::DecodeError::Msgpack(
                    rmp_serde::decode::Error::Uncategorized(e.to_string()),
                ))
            }),
            (_, outcome) => decode(codec, outcome),
        }
    }
}
