//! Splitting a byte stream into messages, incrementally.
//!
//! MessagePack-RPC puts msgpack objects back to back with no length prefix, so the end of a
//! message is found by walking its headers. [`Framer`] keeps its place between calls: when
//! more bytes arrive it resumes where it stopped instead of parsing again from the start, so
//! the cost of framing a message is linear in its size however it is split. Bodies of
//! strings, binaries and extensions are skipped by arithmetic, never looked at.
//!
//! The size limit is checked from the headers: a header that declares more bytes than the
//! limit allows is an error at once, before any of the body is buffered.

use crate::codec::Codec;
use crate::error::FrameError;

/// The default maximum message size: 64 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// An incremental message splitter for one direction of one connection.
///
/// Call [`Framer::decode`] with everything buffered so far (starting at the first byte of
/// the current message). It returns `Ok(Some(len))` when the first `len` bytes are one
/// complete message, `Ok(None)` when more bytes are needed, and an error when the stream is
/// corrupt or the message is too large: the stream should then be closed.
///
/// ```
/// use easyrpc_proto::{Codec, Framer};
/// let msg = [0x94, 0x00, 0x01, 0xa3, b'a', b'd', b'd', 0x92, 0x02, 0x03];
/// let mut framer = Framer::new(Codec::Msgpack, 1024);
/// assert_eq!(framer.decode(&msg[..4]).unwrap(), None);
/// assert_eq!(framer.decode(&msg).unwrap(), Some(msg.len()));
/// ```
#[derive(Debug, Clone)]
pub struct Framer {
    codec: Codec,
    max: usize,
    /// Offset of the next header to read, in the current message; may lie past the end of
    /// the buffer while a body is still arriving.
    pos: u64,
    /// Values still to be read before the message is complete; 0 when no message is started.
    remaining: u64,
}

impl Framer {
    /// A framer for `codec` with a maximum message size of `max` bytes.
    pub fn new(codec: Codec, max: usize) -> Framer {
        Framer {
            codec,
            max,
            pos: 0,
            remaining: 0,
        }
    }

    /// The codec this framer splits.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// Switch codec; only valid between messages.
    pub fn set_codec(&mut self, codec: Codec) {
        self.codec = codec;
        self.reset();
    }

    /// The maximum message size.
    pub fn max_message_size(&self) -> usize {
        self.max
    }

    /// How many more bytes the message at the start of `buf` needs at least, as far as its
    /// headers tell: a hint for sizing the next read, so that a large message arrives in
    /// one read instead of many. 0 when nothing is known yet. Never more than the maximum
    /// message size.
    pub fn needed(&self, buf: &[u8]) -> usize {
        let total = match self.codec {
            Codec::Msgpack if self.remaining > 0 || self.pos > 0 => self.pos.saturating_add(self.remaining),
            Codec::Msgpack => 0,
            Codec::Bincode => match buf.get(..4) {
                // Unwrap: `head` is exactly 4 bytes long.
                Some(head) => u64::from(u32::from_le_bytes(head.try_into().unwrap())) + 4,
                None => 0,
            },
        };
        usize::try_from(total)
            .unwrap_or(usize::MAX)
            .min(self.max)
            .saturating_sub(buf.len())
    }

    /// Forget any partly read message.
    pub fn reset(&mut self) {
        self.pos = 0;
        self.remaining = 0;
    }

    /// Look for one complete message at the start of `buf`.
    ///
    /// `buf` must start at the same byte on every call until a message is returned; it may
    /// grow between calls.
    ///
    /// # Errors
    ///
    /// [`FrameError`] when the stream is corrupt or the message is larger than the limit.
    /// The framer is then reset; the stream should be closed.
    pub fn decode(&mut self, buf: &[u8]) -> Result<Option<usize>, FrameError> {
        let r = match self.codec {
            Codec::Msgpack => self.decode_msgpack(buf),
            Codec::Bincode => self.decode_prefixed(buf),
        };
        match r {
            // Too large, and the request's msgid is a few bytes away: wait for them, so
            // that the error can name the request. The walk is kept where it was, so the
            // next call finds the same header again.
            Err(FrameError::TooLarge { msgid: None, .. })
                if crate::message::msgid_pending(self.codec, buf) =>
            {
                return Ok(None);
            }
            Ok(Some(_)) | Err(_) => self.reset(),
            Ok(None) => {}
        }
        r
    }

    fn too_large(&self, declared: u64, buf: &[u8]) -> FrameError {
        FrameError::TooLarge {
            declared,
            limit: self.max,
            msgid: crate::message::peek_msgid(self.codec, buf),
        }
    }

    fn decode_prefixed(&mut self, buf: &[u8]) -> Result<Option<usize>, FrameError> {
        let Some(head) = buf.get(..4) else {
            return Ok(None);
        };
        // Unwrap: `head` is exactly 4 bytes long.
        let len = u64::from(u32::from_le_bytes(head.try_into().unwrap()));
        let total = len + 4;
        if total > self.max as u64 {
            return Err(self.too_large(total, buf));
        }
        if (buf.len() as u64) < total {
            return Ok(None);
        }
        Ok(Some(total as usize))
    }

    fn decode_msgpack(&mut self, buf: &[u8]) -> Result<Option<usize>, FrameError> {
        // Not started yet (a started message has `pos > 0`, even once its last value's
        // header is read and only that value's body is still arriving).
        if self.remaining == 0 && self.pos == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            self.remaining = 1;
        }
        let max = self.max as u64;
        let len = buf.len() as u64;
        // The walk runs on locals, stored back when the message is incomplete (on success
        // or error, `decode` resets the state anyway).
        let (mut pos, mut remaining) = (self.pos, self.remaining);
        loop {
            if remaining == 0 {
                if pos > len {
                    // The last value's body is still arriving.
                    break;
                }
                return Ok(Some(pos as usize));
            }
            if pos >= len {
                break;
            }
            let m = buf[pos as usize];
            // One-byte headers (small integers, nil, booleans, short strings, small
            // arrays and maps: nearly every header of a typical call) are read here;
            // the rest through `header`.
            let head = match m {
                0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => Header::Value { len: 1 },
                0xa0..=0xbf => Header::Value {
                    len: 1 + u64::from(m & 0x1f),
                },
                0x90..=0x9f => Header::Container {
                    header: 1,
                    values: u64::from(m & 0x0f),
                },
                0x80..=0x8f => Header::Container {
                    header: 1,
                    values: u64::from(m & 0x0f) * 2,
                },
                _ => match header(&buf[pos as usize..])? {
                    Some(head) => head,
                    None => break,
                },
            };
            remaining -= 1;
            match head {
                Header::Value { len: body } => {
                    pos += body;
                    if pos > max {
                        return Err(self.too_large(pos, buf));
                    }
                }
                Header::Container { header, values } => {
                    pos += header;
                    remaining += values;
                    // Every value takes at least one byte.
                    if pos.saturating_add(remaining) > max {
                        return Err(self.too_large(pos.saturating_add(remaining), buf));
                    }
                }
            }
        }
        self.pos = pos;
        self.remaining = remaining;
        Ok(None)
    }
}

/// What a msgpack header says about the value that starts with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Header {
    /// A value of `len` bytes in all, header included.
    Value { len: u64 },
    /// An array or map: a header of `header` bytes followed by `values` values.
    Container { header: u64, values: u64 },
}

fn be(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

/// Read the header at the start of `b`: `Ok(None)` if it is not complete yet.
pub(crate) fn header(b: &[u8]) -> Result<Option<Header>, FrameError> {
    let m = b[0];
    // Bytes of header after the marker, and how to read the rest.
    let value = |n: u64| Ok(Some(Header::Value { len: n }));
    // A length-prefixed body: `k` length bytes after the marker, plus `extra` bytes (ext type).
    let sized = |k: usize, extra: u64| -> Result<Option<Header>, FrameError> {
        match b.get(1..1 + k) {
            None => Ok(None),
            Some(l) => Ok(Some(Header::Value {
                len: 1 + k as u64 + extra + be(l),
            })),
        }
    };
    let container = |k: usize, per: u64| -> Result<Option<Header>, FrameError> {
        match b.get(1..1 + k) {
            None => Ok(None),
            Some(l) => Ok(Some(Header::Container {
                header: 1 + k as u64,
                values: be(l) * per,
            })),
        }
    };
    match m {
        0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => value(1),
        0x80..=0x8f => Ok(Some(Header::Container {
            header: 1,
            values: u64::from(m & 0x0f) * 2,
        })),
        0x90..=0x9f => Ok(Some(Header::Container {
            header: 1,
            values: u64::from(m & 0x0f),
        })),
        0xa0..=0xbf => value(1 + u64::from(m & 0x1f)),
        0xc1 => Err(FrameError::Invalid("the marker 0xc1 is never used")),
        0xc4 | 0xd9 => sized(1, 0),
        0xc5 | 0xda => sized(2, 0),
        0xc6 | 0xdb => sized(4, 0),
        0xc7 => sized(1, 1),
        0xc8 => sized(2, 1),
        0xc9 => sized(4, 1),
        0xca => value(5),
        0xcb => value(9),
        0xcc | 0xd0 => value(2),
        0xcd | 0xd1 => value(3),
        0xce | 0xd2 => value(5),
        0xcf | 0xd3 => value(9),
        0xd4 => value(3),
        0xd5 => value(4),
        0xd6 => value(6),
        0xd7 => value(10),
        0xd8 => value(18),
        0xdc => container(2, 1),
        0xdd => container(4, 1),
        0xde => container(2, 2),
        0xdf => container(4, 2),
    }
}

/// The length of the one complete msgpack value at the start of `b`.
#[inline]
pub(crate) fn value_len(b: &[u8]) -> Result<usize, FrameError> {
    if let Some(n) = flat_value_len(b) {
        return Ok(n);
    }
    walked_value_len(b)
}

fn walked_value_len(b: &[u8]) -> Result<usize, FrameError> {
    let mut f = Framer::new(Codec::Msgpack, usize::MAX);
    match f.decode_msgpack(b)? {
        Some(n) => Ok(n),
        None => Err(FrameError::Invalid("truncated value")),
    }
}

/// [`value_len`] for the values most calls carry, a scalar or a short array of scalars,
/// each of whose markers tells its whole length: counted without the framer's walk (which
/// was a tenth of the server's instructions for a pipelined `add(1, 2)`, its params being
/// such an array). `None` for anything else, or when `b` ends first: the framer decides.
fn flat_value_len(b: &[u8]) -> Option<usize> {
    let m = *b.first()?;
    let end = match m {
        0x90..=0x9f => {
            let mut pos = 1;
            for _ in 0..m & 0x0f {
                pos += scalar_len(*b.get(pos)?)?;
            }
            pos
        }
        _ => scalar_len(m)?,
    };
    (end <= b.len()).then_some(end)
}

/// The whole length of a scalar that starts with marker `m`, when the marker alone tells
/// it: integers, floats, nil, booleans and short strings.
fn scalar_len(m: u8) -> Option<usize> {
    Some(match m {
        0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => 1,
        0xa0..=0xbf => 1 + usize::from(m & 0x1f),
        0xcc | 0xd0 => 2,
        0xcd | 0xd1 => 3,
        0xca | 0xce | 0xd2 => 5,
        0xcb | 0xcf | 0xd3 => 9,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hex_literal::hex;

    const ADD: [u8; 10] = hex!("94 00 01 a3 61 64 64 92 02 03");

    #[test]
    fn every_split_point() {
        for cut in 0..=ADD.len() {
            let mut f = Framer::new(Codec::Msgpack, 1024);
            let first = f.decode(&ADD[..cut]).unwrap();
            if cut == ADD.len() {
                assert_eq!(first, Some(ADD.len()));
            } else {
                assert_eq!(first, None, "cut at {cut}");
                assert_eq!(f.decode(&ADD).unwrap(), Some(ADD.len()), "cut at {cut}");
            }
        }
    }

    #[test]
    fn every_split_point_of_every_header_kind() {
        // [0, 300, "m", [{1: -1, "k": nil}, array16 [true, false], str8 "ab", bin16 "c",
        //  fixext1, ext8 (2 bytes), float32, int64, map16 {}]]
        let msg = hex!(
            "94 00 cd 01 2c a1 6d 99 82 01 ff a1 6b c0 dc 00 02 c3 c2 d9 02 61 62"
            "c5 00 01 63 d4 05 aa c7 02 05 aa bb ca 00 00 00 00"
            "d3 00 00 00 00 00 00 00 01 de 00 00"
        );
        for cut in 0..msg.len() {
            let mut f = Framer::new(Codec::Msgpack, 1024);
            assert_eq!(f.decode(&msg[..cut]).unwrap(), None, "cut at {cut}");
            assert_eq!(f.decode(&msg).unwrap(), Some(msg.len()), "cut at {cut}");
            let mut g = Framer::new(Codec::Msgpack, 1024);
            for n in cut..msg.len() {
                assert_eq!(g.decode(&msg[..n]).unwrap(), None, "from {cut}, at {n}");
            }
            assert_eq!(g.decode(&msg).unwrap(), Some(msg.len()), "from {cut}");
        }
        // Followed by another message: only the first is taken.
        let mut two = msg.to_vec();
        two.extend_from_slice(&ADD);
        assert_eq!(
            Framer::new(Codec::Msgpack, 1024).decode(&two).unwrap(),
            Some(msg.len())
        );
        // One byte under the size of the message is too small a limit.
        let mut f = Framer::new(Codec::Msgpack, msg.len() - 1);
        assert!(matches!(f.decode(&msg), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn byte_at_a_time() {
        let mut f = Framer::new(Codec::Msgpack, 1024);
        for n in 1..ADD.len() {
            assert_eq!(f.decode(&ADD[..n]).unwrap(), None);
        }
        assert_eq!(f.decode(&ADD).unwrap(), Some(ADD.len()));
    }

    #[test]
    fn many_in_one_buffer() {
        let mut buf = Vec::new();
        for _ in 0..3 {
            buf.extend_from_slice(&ADD);
        }
        let mut f = Framer::new(Codec::Msgpack, 1024);
        let mut at = 0;
        let mut n = 0;
        while let Some(len) = f.decode(&buf[at..]).unwrap() {
            assert_eq!(&buf[at..at + len], &ADD);
            at += len;
            n += 1;
        }
        assert_eq!(n, 3);
    }

    #[test]
    fn declared_huge_string_is_rejected_from_header() {
        // [0, 7, "add", [str32 of 4 GiB - 1 ...
        let msg = hex!("94 00 07 a3 61 64 64 91 db ff ff ff ff");
        let mut f = Framer::new(Codec::Msgpack, 1 << 20);
        match f.decode(&msg) {
            Err(FrameError::TooLarge { msgid, declared, .. }) => {
                assert_eq!(msgid, Some(7));
                assert!(declared > 1 << 32);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn declared_huge_array_is_rejected() {
        let msg = hex!("94 00 cf 00 00 00 01 00 00 00 00 a1 61 dd ff ff ff ff");
        let mut f = Framer::new(Codec::Msgpack, 1 << 20);
        match f.decode(&msg) {
            Err(FrameError::TooLarge { msgid, .. }) => assert_eq!(msgid, Some(1 << 32)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn too_large_before_the_msgid_waits_for_the_msgid() {
        // bincode: a 16 MiB frame's length arrives alone, then its request's msgid 42.
        let msg = hex!("ffffff00 00 2a00000000000000 0000");
        let mut f = Framer::new(Codec::Bincode, 1024);
        for n in 0..13 {
            assert_eq!(f.decode(&msg[..n]).unwrap(), None, "{n} bytes");
        }
        for n in 13..=msg.len() {
            match f.decode(&msg[..n]) {
                Err(FrameError::TooLarge { msgid, .. }) => assert_eq!(msgid, Some(42)),
                other => panic!("{n} bytes: {other:?}"),
            }
        }
        // msgpack: an array16 of 65 536 elements, then tag 0 and msgid 300 (uint16).
        let msg = hex!("dc ff ff 00 cd 01 2c a1 6d");
        let mut f = Framer::new(Codec::Msgpack, 1024);
        for n in 3..7 {
            assert_eq!(f.decode(&msg[..n]).unwrap(), None, "{n} bytes");
        }
        for n in 7..=msg.len() {
            match f.decode(&msg[..n]) {
                Err(FrameError::TooLarge { msgid, .. }) => assert_eq!(msgid, Some(300)),
                other => panic!("{n} bytes: {other:?}"),
            }
        }
        // Not a request (a response, a notification, a tag that is not an integer, a msgid
        // that is not one): no msgid to wait for, the error at once.
        let now = |codec, bytes: &[u8]| match Framer::new(codec, 1024).decode(bytes) {
            Err(FrameError::TooLarge { msgid: None, .. }) => {}
            other => panic!("{bytes:02x?}: {other:?}"),
        };
        now(Codec::Bincode, &hex!("ffffff00 01"));
        now(Codec::Msgpack, &hex!("dc ff ff 01"));
        now(Codec::Msgpack, &hex!("dc ff ff 02"));
        now(Codec::Msgpack, &hex!("dd 00 01 00 00 a1"));
        now(Codec::Msgpack, &hex!("dd 00 01 00 00 00 a1"));
        now(Codec::Msgpack, &hex!("dd 00 01 00 00 cc 00 ff"));
    }

    #[test]
    fn needed_hints_the_rest_of_a_large_message() {
        let mut msg = vec![0x94, 0x00, 0x01, 0xa1, b'e', 0x91, 0xc6];
        msg.extend_from_slice(&(100_000u32).to_be_bytes());
        let mut f = Framer::new(Codec::Msgpack, 1 << 20);
        assert_eq!(f.needed(&[]), 0);
        assert_eq!(f.decode(&msg).unwrap(), None);
        assert_eq!(f.needed(&msg), 100_000);
        let mut b = Framer::new(Codec::Bincode, 1 << 20);
        assert_eq!(b.decode(&[10, 0, 0, 0, 1]).unwrap(), None);
        assert_eq!(b.needed(&[10, 0, 0, 0, 1]), 9);
    }

    #[test]
    fn invalid_marker() {
        let mut f = Framer::new(Codec::Msgpack, 1024);
        assert!(matches!(f.decode(&[0xc1]), Err(FrameError::Invalid(_))));
    }

    #[test]
    fn big_bin_in_small_reads_is_linear() {
        // A 4 MiB bin body fed in 4 KiB steps: each call only looks at new headers.
        let body = 4 << 20;
        let mut msg = vec![0x94, 0x00, 0x01, 0xa1, b'e', 0x91, 0xc6];
        msg.extend_from_slice(&(body as u32).to_be_bytes());
        msg.resize(msg.len() + body, 0xab);
        let mut f = Framer::new(Codec::Msgpack, 8 << 20);
        let mut got = None;
        let mut n = 4096;
        while got.is_none() {
            n = n.min(msg.len());
            got = f.decode(&msg[..n]).unwrap();
            n += 4096;
        }
        assert_eq!(got, Some(msg.len()));
    }

    #[test]
    fn ext_and_fixed_types() {
        // [fixext4, float64, ext8(len 2)]
        let v = hex!("93 d6 01 00 00 00 00 cb 00 00 00 00 00 00 00 00 c7 02 05 aa bb");
        assert_eq!(value_len(&v).unwrap(), v.len());
        for cut in 0..v.len() {
            assert!(value_len(&v[..cut]).is_err());
        }
    }

    #[test]
    fn flat_values_and_arrays_of_them() {
        // [1, -1, nil, true, "ab", uint8, int16, float32, uint32, float64, int64] and each
        // element alone: the count without the framer agrees with the framer's, and a
        // value cut short is an error either way.
        let v = hex!(
            "9b 01 ff c0 c3 a2 61 62 cc 80 d1 80 00 ca 00 00 00 00 ce 00 01 00 00"
            "cb 00 00 00 00 00 00 00 00 d3 00 00 00 00 00 00 00 01"
        );
        let framed = |b: &[u8]| Framer::new(Codec::Msgpack, usize::MAX).decode(b).unwrap();
        let mut at = 1;
        while at < v.len() {
            let n = value_len(&v[at..]).unwrap();
            assert_eq!(Some(n), framed(&v[at..at + n]));
            at += n;
        }
        assert_eq!(at, v.len());
        assert_eq!(value_len(&v).unwrap(), v.len());
        assert_eq!(framed(&v), Some(v.len()));
        for cut in 0..v.len() {
            assert!(value_len(&v[..cut]).is_err(), "cut at {cut}");
        }
        // An array holding anything else is the framer's.
        let nested = hex!("92 01 91 02");
        assert_eq!(flat_value_len(&nested), None);
        assert_eq!(value_len(&nested).unwrap(), nested.len());
    }

    #[test]
    fn prefixed_frames() {
        let mut f = Framer::new(Codec::Bincode, 64);
        let mut msg = vec![3, 0, 0, 0, 1, 2, 3];
        assert_eq!(f.decode(&msg[..5]).unwrap(), None);
        assert_eq!(f.decode(&msg).unwrap(), Some(7));
        msg[0] = 200;
        assert!(matches!(f.decode(&msg), Err(FrameError::TooLarge { .. })));
    }
}
