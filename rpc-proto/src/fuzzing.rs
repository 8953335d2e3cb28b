//! Internals for the fuzz targets in `fuzz/` (the `fuzzing` feature); not a public API.
//!
//! The targets use only this module and the crate's public API, so that internals can
//! change (or become private) without the targets reaching into them: whatever a target
//! needs is re-exported here.

pub use crate::message::{
    parse_bincode_request_prefix, parse_bincode_response_prefix, parse_request_prefix, parse_response_prefix,
};

/// The length of the one complete msgpack value at the start of `b`.
///
/// # Errors
///
/// When `b` does not start with a complete, valid msgpack value.
pub fn value_len(b: &[u8]) -> Result<usize, crate::FrameError> {
    crate::framer::value_len(b)
}
