//! The opt-in hello that our client sends to our server before anything else.
//!
//! A plain MessagePack-RPC client never sends it and never sees it: it starts with the byte
//! `0xc1`, which msgpack never uses, so the server can tell it from a first message with
//! one byte. The server answers with a hello of its own, then both sides switch to the
//! codec the hello named.
//!
//! Layout: `c1 'R' 'P' 'C'`, version (1 byte), codec id (1 byte), extension length (u16
//! little-endian), extensions (tag, length, value; unknown tags are skipped).
//!
//! Extensions: tag 1 carries the client's 16-byte session id (for the dedup cache of
//! "unstable network" mode); tag 2 carries a feature bitmask (u32 little-endian, see
//! [`features`]): the client offers, the server answers with the features both sides
//! will use (those it offers and supports), and a hello without tag 2 offers none. A connection that began with a hello may also use the request
//! extension (a fifth element carrying the call's timeout, see
//! [`encode_request`](crate::encode_request)) and the `rpc.cancel` notification.

use crate::codec::Codec;

/// The first four bytes of a hello.
pub const MAGIC: [u8; 4] = [0xc1, b'R', b'P', b'C'];
/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
const HEADER: usize = 8;
const MAX_EXT: usize = 1024;

const TAG_SESSION: u8 = 1;
const TAG_FEATURES: u8 = 2;

/// The optional features a hello may offer (bits of [`Hello::features`]).
pub mod features {
    /// Streams: `rpc.item`, `rpc.credit` and `rpc.end` (see the README's protocol section).
    pub const STREAMS: u32 = 1;
    /// zstd compression of large messages, in both directions.
    pub const ZSTD: u32 = 2;
}

/// A hello, from the client or the server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Hello {
    /// The codec for the rest of the connection.
    pub codec: Codec,
    /// The client's session id: calls carrying it are executed at most once per msgid by a
    /// server in unstable-network mode. The server's answer echoes it.
    pub session: Option<u128>,
    /// The optional features offered (client) or agreed (server), as [`features`] bits.
    pub features: u32,
}

/// A hello that cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HelloError {
    /// The bytes are not a hello.
    #[error("not a hello")]
    NotHello,
    /// The hello names a codec this side does not know.
    #[error("unknown codec {0}")]
    UnknownCodec(u8),
    /// The extensions are longer than allowed.
    #[error("hello extensions too long")]
    TooLong,
}

impl Hello {
    /// A hello for `codec`, with no session.
    pub fn new(codec: Codec) -> Hello {
        Hello {
            codec,
            session: None,
            features: 0,
        }
    }

    /// The same hello offering (or agreeing to) `features`.
    pub fn with_features(mut self, features: u32) -> Hello {
        self.features = features;
        self
    }

    /// The same hello with a session id.
    pub fn with_session(mut self, session: Option<u128>) -> Hello {
        self.session = session;
        self
    }

    /// Append the hello's bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(self.codec.id());
        let mut ext = Vec::new();
        if let Some(s) = self.session {
            ext.extend_from_slice(&[TAG_SESSION, 16]);
            ext.extend_from_slice(&s.to_le_bytes());
        }
        if self.features != 0 {
            ext.extend_from_slice(&[TAG_FEATURES, 4]);
            ext.extend_from_slice(&self.features.to_le_bytes());
        }
        out.extend_from_slice(&(ext.len() as u16).to_le_bytes());
        out.extend_from_slice(&ext);
    }

    /// Whether `buf` starts (or could start) with a hello rather than a msgpack message.
    pub fn is_hello(buf: &[u8]) -> bool {
        buf.first() == Some(&MAGIC[0])
    }

    /// Parse a hello at the start of `buf`: `Ok(None)` if more bytes are needed, else the
    /// hello and its length.
    ///
    /// # Errors
    ///
    /// When the bytes are not a hello we can accept.
    pub fn decode(buf: &[u8]) -> Result<Option<(Hello, usize)>, HelloError> {
        let n = buf.len().min(4);
        if buf[..n] != MAGIC[..n] {
            return Err(HelloError::NotHello);
        }
        let Some(head) = buf.get(..HEADER) else {
            return Ok(None);
        };
        let ext = usize::from(u16::from_le_bytes([head[6], head[7]]));
        if ext > MAX_EXT {
            return Err(HelloError::TooLong);
        }
        if buf.len() < HEADER + ext {
            return Ok(None);
        }
        let codec = Codec::from_id(head[5]).ok_or(HelloError::UnknownCodec(head[5]))?;
        let mut session = None;
        let mut features = 0;
        let mut rest = &buf[HEADER..HEADER + ext];
        while let [tag, len, tail @ ..] = rest {
            let len = usize::from(*len);
            let value = tail.get(..len).ok_or(HelloError::NotHello)?;
            if *tag == TAG_SESSION {
                let bytes: [u8; 16] = value.try_into().map_err(|_| HelloError::NotHello)?;
                session = Some(u128::from_le_bytes(bytes));
            } else if *tag == TAG_FEATURES {
                let bytes: [u8; 4] = value.try_into().map_err(|_| HelloError::NotHello)?;
                features = u32::from_le_bytes(bytes);
            }
            rest = &tail[len..];
        }
        if !rest.is_empty() {
            return Err(HelloError::NotHello);
        }
        Ok(Some((
            Hello {
                codec,
                session,
                features,
            },
            HEADER + ext,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_at_every_split() {
        for hello in [
            Hello::new(Codec::Bincode),
            Hello::new(Codec::Msgpack).with_session(Some(0x0123_4567_89ab_cdef_0011_2233_4455_6677)),
            Hello::new(Codec::Msgpack)
                .with_session(Some(5))
                .with_features(features::STREAMS | features::ZSTD),
        ] {
            let mut out = Vec::new();
            hello.encode(&mut out);
            for cut in 0..out.len() {
                assert_eq!(Hello::decode(&out[..cut]).unwrap(), None);
            }
            assert_eq!(Hello::decode(&out).unwrap(), Some((hello, out.len())));
        }
        assert!(Hello::decode(&[0x94]).is_err());
    }

    #[test]
    fn unknown_extensions_are_skipped() {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[VERSION, 0, 3, 0, 9, 1, 0xff]);
        assert_eq!(
            Hello::decode(&out).unwrap(),
            Some((Hello::new(Codec::Msgpack), out.len()))
        );
    }
}
