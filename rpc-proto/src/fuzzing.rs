//! Internals for the fuzz targets in `fuzz/` (the `fuzzing` feature); not a public API.
//!
//! The targets use only this module and the crate's public API, so that internals can
//! change (or become private) without the targets reaching into them: whatever a target
//! needs is re-exported here.

use crate::Message;

/// The msgid of the request at the start of `buf`, as the framer reports it with a
/// too-large error.
pub fn peek_msgid(codec: crate::Codec, buf: &[u8]) -> Option<u64> {
    crate::message::peek_msgid(codec, buf)
}

/// The one-pass parse of a plain msgpack request at the start of `buf` (the server's fast
/// path): the request and its length, or `None` for the general path to take.
pub fn parse_request_prefix(buf: &[u8], max: usize) -> Option<(Message<'_>, usize)> {
    crate::message::parse_request_prefix(buf, max)
}

/// The one-pass parse of a bincode request, as [`parse_request_prefix`].
pub fn parse_bincode_request_prefix(buf: &[u8], max: usize) -> Option<(Message<'_>, usize)> {
    crate::message::parse_bincode_request_prefix(buf, max)
}

/// The one-pass parse of a msgpack success reply (the clients' fast path).
pub fn parse_response_prefix(buf: &[u8], max: usize) -> Option<(Message<'_>, usize)> {
    crate::message::parse_response_prefix(buf, max)
}

/// The one-pass parse of a bincode success reply.
pub fn parse_bincode_response_prefix(buf: &[u8], max: usize) -> Option<(Message<'_>, usize)> {
    crate::message::parse_bincode_response_prefix(buf, max)
}

/// The length of the one complete msgpack value at the start of `b`.
///
/// # Errors
///
/// When `b` does not start with a complete, valid msgpack value.
pub fn value_len(b: &[u8]) -> Result<usize, crate::FrameError> {
    crate::framer::value_len(b)
}
