//! zstd compression of large messages: the `ZSTD` feature of the hello.
//!
//! A side compresses what it sends only when the hello agreed to
//! [`features::ZSTD`](crate::handshake::features::ZSTD), only when the encoded message is
//! larger than its [`Compression::threshold`], and only when the compressed form is smaller.
//! A plain MessagePack-RPC peer (no hello) never sees a compressed message.
//!
//! # Wire format
//!
//! A compressed message takes the place of one message of the connection's codec. Its
//! payload, `Z`, is one zstd frame (RFC 8878) whose header declares its content size, and
//! whose content is the complete original message exactly as it would have been sent
//! (for bincode, its 4-byte length prefix included). There is no nesting: the content is
//! never itself a compressed message.
//!
//! - msgpack: a top-level msgpack **ext** value of type [`EXT_TYPE`] (90, `'Z'`) whose data
//!   is `Z`, in any of the ext 8, ext 16 or ext 32 forms (`c7 LL 5a Z`, `c8 LLLL 5a Z`,
//!   `c9 LLLLLLLL 5a Z`, lengths big-endian; senders use the smallest that fits). A
//!   MessagePack-RPC message is always an array, so a top-level ext cannot be one.
//! - bincode: an ordinary length-prefixed frame whose first byte after the prefix, where
//!   the message type goes (0 request, 1 response, 2 notification, 3 request with
//!   metadata), is [`BINCODE_TAG`] (`0x5a`): `LLLLLLLL 5a Z`, the length (u32
//!   little-endian) counting the tag and `Z`.
//!
//! A receiver frames it like any other message (its size limit applies to the compressed
//! bytes), refuses it before decompressing when the declared content size is larger than
//! its maximum message size, decompresses it into a buffer of exactly that size, and
//! handles the result as the message received. A frame that is not one zstd frame with a
//! content size, that does not decompress, or whose content is not exactly one message is
//! a stream error: the connection is closed.

use std::cell::RefCell;

use crate::codec::Codec;
use crate::error::FrameError;
use crate::framer::Framer;

/// The msgpack ext type of a compressed message (90, `'Z'`).
pub const EXT_TYPE: u8 = 0x5a;
/// The bincode message-type byte of a compressed message (`'Z'`, never a message type).
pub const BINCODE_TAG: u8 = 0x5a;
/// The default [`Compression::threshold`]: 4 KiB.
pub const DEFAULT_THRESHOLD: usize = 4096;
/// The default [`Compression::level`]: 3, zstd's own default (tonic's too).
pub const DEFAULT_LEVEL: i32 = 3;

/// How one side compresses the messages it sends, on a connection whose hello agreed to
/// [`features::ZSTD`](crate::handshake::features::ZSTD).
///
/// ```
/// use easyrpc_proto::Compression;
///
/// let c = Compression::new(64 * 1024).with_level(1);
/// assert_eq!((c.threshold, c.level), (65_536, 1));
/// assert_eq!(Compression::default().threshold, 4096);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Compression {
    /// Messages whose encoded size is larger than this many bytes are compressed, and sent
    /// compressed when that makes them smaller. Smaller messages cost one comparison.
    /// Default: 4 KiB ([`DEFAULT_THRESHOLD`]).
    pub threshold: usize,
    /// The zstd level: 1 (fastest) to 22 (smallest); negative levels are faster still.
    /// Default: 3 ([`DEFAULT_LEVEL`]).
    pub level: i32,
}

impl Default for Compression {
    fn default() -> Compression {
        Compression {
            threshold: DEFAULT_THRESHOLD,
            level: DEFAULT_LEVEL,
        }
    }
}

impl Compression {
    /// Compress messages larger than `threshold` bytes, at the default level.
    pub fn new(threshold: usize) -> Compression {
        Compression {
            threshold,
            level: DEFAULT_LEVEL,
        }
    }

    /// The same, at zstd level `level`.
    pub fn with_level(mut self, level: i32) -> Compression {
        self.level = level;
        self
    }
}

/// What one connection does with the messages it sends. Eight bytes, copied into each
/// reply's [`Transmit`](crate::Transmit): the check on every message is one comparison
/// with `threshold`, which is `u32::MAX` while compression is off (no hello, or the
/// feature not agreed); `level` is then [`Zstd::OFF_LEVEL`], which the out-of-line path
/// checks, so that not even a message over 4 GiB is compressed for a peer that did not
/// agree.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Zstd {
    threshold: u32,
    level: i32,
}

impl Zstd {
    const OFF_LEVEL: i32 = i32::MIN;

    /// Nothing is compressed.
    pub(crate) const OFF: Zstd = Zstd {
        threshold: u32::MAX,
        level: Zstd::OFF_LEVEL,
    };

    /// Whether anything may be compressed.
    pub(crate) fn is_on(self) -> bool {
        self.level != Zstd::OFF_LEVEL
    }

    /// Compression as configured (the feature was agreed). A threshold over 4 GiB is
    /// 4 GiB; the level is clamped to zstd's range.
    pub(crate) fn on(c: &Compression) -> Zstd {
        Zstd {
            threshold: u32::try_from(c.threshold).unwrap_or(u32::MAX),
            level: c
                .level
                .clamp(zstd::zstd_safe::min_c_level(), zstd::zstd_safe::max_c_level()),
        }
    }

    /// The message encoded at `out[start..]` is in place: compress it if it is larger than
    /// the threshold. The only cost for a small message is this comparison.
    #[inline(always)]
    pub(crate) fn apply(self, codec: Codec, out: &mut Vec<u8>, start: usize) {
        if out.len() - start > self.threshold as usize {
            self.compress(codec, out, start);
        }
    }

    /// Whole messages were written at `out[start..]` (usually one, or none): compress each
    /// that is larger than the threshold. The only cost when they are small together is
    /// this comparison.
    #[inline(always)]
    pub(crate) fn apply_all(self, codec: Codec, out: &mut Vec<u8>, start: usize) {
        if out.len() - start > self.threshold as usize {
            self.compress_all(codec, out, start);
        }
    }

    #[cold]
    #[inline(never)]
    fn compress_all(self, codec: Codec, out: &mut Vec<u8>, start: usize) {
        if self.level == Zstd::OFF_LEVEL {
            return;
        }
        let written = out.split_off(start);
        let mut rest = &written[..];
        while !rest.is_empty() {
            // Our own encoding: always whole messages (the rest as it is otherwise).
            let n = match Framer::new(codec, usize::MAX).decode(rest) {
                Ok(Some(n)) => n,
                _ => rest.len(),
            };
            let at = out.len();
            out.extend_from_slice(&rest[..n]);
            self.apply(codec, out, at);
            rest = &rest[n..];
        }
    }

    #[cold]
    #[inline(never)]
    fn compress(self, codec: Codec, out: &mut Vec<u8>, start: usize) {
        if self.level != Zstd::OFF_LEVEL {
            compress_tail(codec, out, start, self.level);
        }
    }
}

thread_local! {
    /// One compression context per thread, kept from one message to the next (a context
    /// holds its tables; connections hold none).
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    /// One decompression context per thread.
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// The largest header a compressed message has before its zstd frame.
const MAX_HEADER: usize = 6;

/// Replace the message at `out[start..]` by its compressed form, if that is smaller.
pub(crate) fn compress_tail(codec: Codec, out: &mut Vec<u8>, start: usize, level: i32) {
    let len = out.len() - start;
    // The compressed form is worth sending only if it is smaller, header included: zstd
    // fails with "destination too small" otherwise, and the message goes as it was.
    let room = len.saturating_sub(MAX_HEADER + 1);
    if room == 0 {
        return;
    }
    let mut z = Vec::with_capacity(room);
    let done = COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        let c = match &mut *c {
            Some(c) => c,
            None => c.insert(zstd::bulk::Compressor::new(level).ok()?),
        };
        c.set_compression_level(level).ok()?;
        c.compress_to_buffer(&out[start..], &mut z).ok()
    });
    if done.is_none() {
        return;
    }
    out.truncate(start);
    write_header(codec, out, z.len());
    out.extend_from_slice(&z);
}

/// The header of a compressed message whose zstd frame is `n` bytes long.
fn write_header(codec: Codec, out: &mut Vec<u8>, n: usize) {
    match codec {
        Codec::Msgpack => {
            if let Ok(n) = u8::try_from(n) {
                out.extend_from_slice(&[0xc7, n]);
            } else if let Ok(n) = u16::try_from(n) {
                out.push(0xc8);
                out.extend_from_slice(&n.to_be_bytes());
            } else {
                out.push(0xc9);
                out.extend_from_slice(&(n as u32).to_be_bytes());
            }
            out.push(EXT_TYPE);
        }
        Codec::Bincode => {
            out.extend_from_slice(&((n + 1) as u32).to_le_bytes());
            out.push(BINCODE_TAG);
        }
    }
}

/// The zstd frame of `frame`, one complete message, if it is a compressed message.
#[inline]
pub(crate) fn compressed(codec: Codec, frame: &[u8]) -> Option<&[u8]> {
    match codec {
        Codec::Msgpack => match frame {
            [0xc7, _, EXT_TYPE, z @ ..]
            | [0xc8, _, _, EXT_TYPE, z @ ..]
            | [0xc9, _, _, _, _, EXT_TYPE, z @ ..] => Some(z),
            _ => None,
        },
        Codec::Bincode => match frame {
            [_, _, _, _, BINCODE_TAG, z @ ..] => Some(z),
            _ => None,
        },
    }
}

/// Decompress the zstd frame `z` of a compressed message: the message it holds, at most
/// `max` bytes long. Nothing larger than the declared content size (itself at most `max`)
/// is ever allocated, whatever the frame claims or holds.
///
/// # Errors
///
/// [`FrameError::DecompressedTooLarge`] when the frame declares more than `max` bytes;
/// [`FrameError::Decompress`] when it is not one zstd frame with a content size, does not
/// decompress, or holds anything but exactly one message (a compressed one included).
pub(crate) fn decompress(codec: Codec, z: &[u8], max: usize) -> Result<Vec<u8>, FrameError> {
    let corrupt = |reason: String| FrameError::Decompress { reason };
    let declared = match zstd::zstd_safe::get_frame_content_size(z) {
        Ok(Some(n)) => n,
        Ok(None) => return Err(corrupt("the zstd frame does not declare its content size".into())),
        Err(_) => return Err(corrupt("not a zstd frame".into())),
    };
    if declared > max as u64 {
        return Err(FrameError::DecompressedTooLarge { declared, limit: max });
    }
    // One frame, and nothing after it (a second frame would decompress into the same
    // buffer).
    match zstd::zstd_safe::find_frame_compressed_size(z) {
        Ok(n) if n == z.len() => {}
        Ok(n) => return Err(corrupt(format!("{} bytes after the zstd frame", z.len() - n))),
        Err(e) => return Err(corrupt(zstd::zstd_safe::get_error_name(e).to_owned())),
    }
    // At most `max`, checked above.
    let mut msg = Vec::with_capacity(declared as usize);
    let result = DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        let d = match &mut *d {
            Some(d) => d,
            None => d.insert(zstd::bulk::Decompressor::new()?),
        };
        d.decompress_to_buffer(z, &mut msg)
    });
    match result {
        Ok(n) if n as u64 == declared => {}
        Ok(n) => return Err(corrupt(format!("{n} bytes decompressed, {declared} declared"))),
        Err(e) => return Err(corrupt(e.to_string())),
    }
    // Exactly one message, and not a compressed one.
    let one = Framer::new(codec, usize::MAX).decode(&msg);
    if one != Ok(Some(msg.len())) || compressed(codec, &msg).is_some() {
        return Err(corrupt("the content is not one message".into()));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests;
