//! MessagePack-RPC messages: parsing a complete frame and encoding one.
//!
//! Parsing borrows from the frame: the method name and the params or result stay as raw
//! bytes, to be decoded straight into the handler's argument types.

use std::time::Duration;

use crate::codec::{Codec, EncodeValue, Params, ParamsEncoder};
use crate::error::{EncodeError, ErrorCode, ParseError, ServerError};
use crate::framer::value_len;
use crate::wire::{read_array_len, write_str, write_uint};

/// The message type tag of a request.
pub const REQUEST: u8 = 0;
/// The message type tag of a response.
pub const RESPONSE: u8 = 1;
/// The message type tag of a notification.
pub const NOTIFICATION: u8 = 2;

/// One parsed message, borrowing from its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// `[0, msgid, method, params]`, or with our extension
    /// `[0, msgid, method, params, {1: timeout_us, 2: metadata}]` (only after a
    /// [hello](crate::Hello)).
    Request {
        /// Echoed back unchanged in the response.
        msgid: u64,
        /// The method name, from a msgpack str or bin.
        method: &'a [u8],
        /// The raw params (an array, in msgpack).
        params: &'a [u8],
        /// The caller's timeout, relative to when the request arrives.
        timeout: Option<Duration>,
        /// The call's [metadata](crate::Metadata), raw: a msgpack map (not checked further
        /// until it is read).
        metadata: Option<&'a [u8]>,
    },
    /// `[1, msgid, error, result]`.
    Response {
        /// The request's msgid.
        msgid: u64,
        /// The raw result on success, or the raw error value.
        outcome: Result<&'a [u8], &'a [u8]>,
    },
    /// `[2, method, params]`.
    Notification {
        /// The method name.
        method: &'a [u8],
        /// The raw params.
        params: &'a [u8],
    },
}

impl<'a> Message<'a> {
    /// Parse one complete frame, as delimited by [`Framer`](crate::Framer): exactly one
    /// message, with no bytes after it (the last element is taken as the rest of the frame).
    ///
    /// # Errors
    ///
    /// [`ParseError`] when the frame is not a MessagePack-RPC message; it carries the msgid
    /// when the message was a request whose msgid could be read.
    pub fn parse(codec: Codec, frame: &'a [u8]) -> Result<Message<'a>, ParseError> {
        match codec {
            Codec::Msgpack => parse_msgpack(frame),
            Codec::Bincode => parse_bincode(frame),
        }
    }
}

/// A cursor over a frame, for the few envelope fields we read by hand.
struct Cursor<'a> {
    b: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.b.len() < n {
            return None;
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Some(h)
    }

    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (h, t) = self.b.split_first_chunk::<N>()?;
        self.b = t;
        Some(*h)
    }

    /// Any msgpack unsigned integer (or non-negative signed one).
    #[inline]
    fn uint(&mut self) -> Option<u64> {
        let m = self.byte()?;
        // A signed one must be non-negative.
        let v = match m {
            0x00..=0x7f => return Some(u64::from(m)),
            0xcc => u64::from(self.array::<1>()?[0]),
            0xcd => u64::from(u16::from_be_bytes(self.array()?)),
            0xce => u64::from(u32::from_be_bytes(self.array()?)),
            0xcf => u64::from_be_bytes(self.array()?),
            0xd0 => u64::try_from(i8::from_be_bytes(self.array()?)).ok()?,
            0xd1 => u64::try_from(i16::from_be_bytes(self.array()?)).ok()?,
            0xd2 => u64::try_from(i32::from_be_bytes(self.array()?)).ok()?,
            0xd3 => u64::try_from(i64::from_be_bytes(self.array()?)).ok()?,
            _ => return None,
        };
        Some(v)
    }

    /// A msgpack str or bin.
    fn str_or_bin(&mut self) -> Option<&'a [u8]> {
        let m = self.byte()?;
        let n = match m {
            0xa0..=0xbf => usize::from(m & 0x1f),
            0xd9 | 0xc4 => usize::from(self.byte()?),
            0xda | 0xc5 => self
                .take(2)
                .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))?,
            0xdb | 0xc6 => self
                .take(4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)?,
            _ => return None,
        };
        self.take(n)
    }

    /// The last value of a frame: everything left. The framer delimited the frame as one
    /// array of exactly this many values, so what is left is exactly one value, and it
    /// need not be walked again.
    fn last(&mut self) -> Option<&'a [u8]> {
        let rest = std::mem::take(&mut self.b);
        (!rest.is_empty()).then_some(rest)
    }

    /// One whole msgpack value, raw.
    fn value(&mut self) -> Option<&'a [u8]> {
        let n = value_len(self.b).ok()?;
        self.take(n)
    }
}

/// The request extension: a map of small integer keys; key 1 is the timeout in µs, key 2
/// the call's metadata (a map). Unknown keys are skipped.
fn request_ext<'a>(c: &mut Cursor<'a>) -> Option<(Option<Duration>, Option<&'a [u8]>)> {
    let m = c.byte()?;
    // Every map form: a peer's encoder may pick a wider one than the entries need.
    let n = match m {
        0x80..=0x8f => usize::from(m & 0x0f),
        0xde => usize::from(u16::from_be_bytes(c.array()?)),
        0xdf => usize::try_from(u32::from_be_bytes(c.array()?)).ok()?,
        _ => return None,
    };
    let mut timeout = None;
    let mut metadata = None;
    for _ in 0..n {
        let key = c.uint()?;
        if key == EXT_TIMEOUT {
            timeout = Some(Duration::from_micros(c.uint()?));
        } else if key == EXT_METADATA {
            metadata = Some(c.value().filter(|v| is_map(v))?);
        } else {
            c.value()?;
        }
    }
    Some((timeout, metadata))
}

/// Whether a whole msgpack value is a map.
fn is_map(v: &[u8]) -> bool {
    matches!(v.first(), Some(0x80..=0x8f | 0xde | 0xdf))
}

const EXT_TIMEOUT: u64 = 1;
const EXT_METADATA: u64 = 2;
/// The bincode tag of a request carrying metadata.
const BINCODE_REQUEST_METADATA: u8 = 3;

fn parse_msgpack(frame: &[u8]) -> Result<Message<'_>, ParseError> {
    let Some((len, used)) = read_array_len(frame) else {
        return Err(ParseError::new("a message must be an array", None));
    };
    let mut c = Cursor { b: &frame[used..] };
    let Some(tag) = c.uint().filter(|t| *t <= 2) else {
        return Err(ParseError::new("unknown message type", None));
    };
    match tag as u8 {
        REQUEST => {
            let msgid = c.uint();
            let Some(msgid) = msgid else {
                return Err(ParseError::new("request msgid must be an unsigned integer", None));
            };
            if len != 4 && len != 5 {
                return Err(ParseError::new(
                    format!("a request has 4 elements, this one has {len}"),
                    Some(msgid),
                ));
            }
            let method = c
                .str_or_bin()
                .ok_or_else(|| ParseError::new("method must be a str or bin", Some(msgid)))?;
            let params = if len == 4 { c.last() } else { c.value() }
                .ok_or_else(|| ParseError::new("params are missing", Some(msgid)))?;
            let (timeout, metadata) = if len == 5 {
                request_ext(&mut c).ok_or_else(|| ParseError::new("bad request extension", Some(msgid)))?
            } else {
                (None, None)
            };
            Ok(Message::Request {
                msgid,
                method,
                params,
                timeout,
                metadata,
            })
        }
        RESPONSE => {
            if len != 4 {
                return Err(ParseError::new(
                    format!("a response has 4 elements, not {len}"),
                    None,
                ));
            }
            let msgid = c
                .uint()
                .ok_or_else(|| ParseError::new("response msgid must be an unsigned integer", None))?;
            let error = c
                .value()
                .ok_or_else(|| ParseError::new("error is missing", None))?;
            let result = c
                .last()
                .ok_or_else(|| ParseError::new("result is missing", None))?;
            let outcome = if error == [0xc0] { Ok(result) } else { Err(error) };
            Ok(Message::Response { msgid, outcome })
        }
        _ => {
            if len != 3 {
                return Err(ParseError::new(
                    format!("a notification has 3 elements, not {len}"),
                    None,
                ));
            }
            let method = c
                .str_or_bin()
                .ok_or_else(|| ParseError::new("method must be a str or bin", None))?;
            let params = c
                .last()
                .ok_or_else(|| ParseError::new("params are missing", None))?;
            Ok(Message::Notification { method, params })
        }
    }
}

fn read_bincode_method<'a>(c: &mut Cursor<'a>, msgid: Option<u64>) -> Result<&'a [u8], ParseError> {
    let n = c
        .take(2)
        .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])))
        .ok_or_else(|| ParseError::new("truncated method", msgid))?;
    c.take(n)
        .ok_or_else(|| ParseError::new("truncated method", msgid))
}

#[inline]
fn parse_bincode(frame: &[u8]) -> Result<Message<'_>, ParseError> {
    let mut c = Cursor {
        b: frame.get(4..).unwrap_or_default(),
    };
    let tag = c.byte().ok_or_else(|| ParseError::new("empty frame", None))?;
    let u64le = |c: &mut Cursor<'_>| {
        c.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
    };
    match tag {
        REQUEST | BINCODE_REQUEST_METADATA => {
            let msgid = u64le(&mut c).ok_or_else(|| ParseError::new("truncated msgid", None))?;
            let us = u64le(&mut c).ok_or_else(|| ParseError::new("truncated timeout", Some(msgid)))?;
            let method = read_bincode_method(&mut c, Some(msgid))?;
            let metadata = if tag == BINCODE_REQUEST_METADATA {
                let bad = || ParseError::new("bad request metadata", Some(msgid));
                let n = c.array::<4>().ok_or_else(bad)?;
                let n = usize::try_from(u32::from_le_bytes(n)).map_err(|_| bad())?;
                Some(c.take(n).filter(|v| is_map(v)).ok_or_else(bad)?)
            } else {
                None
            };
            Ok(Message::Request {
                msgid,
                method,
                params: c.b,
                timeout: (us != 0).then(|| Duration::from_micros(us)),
                metadata,
            })
        }
        RESPONSE => {
            let msgid = u64le(&mut c).ok_or_else(|| ParseError::new("truncated msgid", None))?;
            let outcome = match c.byte() {
                Some(0) => Ok(c.b),
                Some(1) => Err(c.b),
                _ => return Err(ParseError::new("bad response status", None)),
            };
            Ok(Message::Response { msgid, outcome })
        }
        NOTIFICATION => {
            let method = read_bincode_method(&mut c, None)?;
            Ok(Message::Notification { method, params: c.b })
        }
        _ => Err(ParseError::new("unknown message type", None)),
    }
}

/// A plain msgpack request at the start of `buf`, framed and parsed in one pass:
/// `[0, msgid, method, params]`. Returns it and its length in bytes, which is at most
/// `max`.
///
/// `None` for anything else (another message, a request with the extension element, a
/// request not complete yet, over `max`, malformed): the [`Framer`](crate::Framer) and
/// [`Message::parse`] then take it, and report what is wrong. A message they would
/// accept as a plain request is read here the same way.
pub(crate) fn parse_request_prefix(buf: &[u8], max: usize) -> Option<(Message<'_>, usize)> {
    let [0x94, 0x00, rest @ ..] = buf else {
        return None;
    };
    let mut c = Cursor { b: rest };
    let msgid = c.uint()?;
    let method = c.str_or_bin()?;
    let start = buf.len() - c.b.len();
    let n = crate::framer::value_len(c.b).ok()?;
    let total = start.checked_add(n).filter(|t| *t <= max)?;
    let request = Message::Request {
        msgid,
        method,
        params: &c.b[..n],
        timeout: None,
        metadata: None,
    };
    Some((request, total))
}

/// A bincode request at the start of `buf`, framed and parsed in one pass (a bincode frame
/// is delimited by its 4-byte length: no framer state to resume). Returns it and its length
/// in bytes, which is at most `max`.
///
/// `None` for anything else (another message, a request not complete yet, over `max`,
/// malformed): the [`Framer`](crate::Framer) and [`Message::parse`] then take it, and
/// report what is wrong.
#[inline]
pub(crate) fn parse_bincode_request_prefix(buf: &[u8], max: usize) -> Option<(Message<'_>, usize)> {
    let (frame, total) = bincode_frame(buf, max)?;
    match parse_bincode(frame) {
        Ok(request @ Message::Request { .. }) => Some((request, total)),
        _ => None,
    }
}

/// A msgpack success reply at the start of `buf`, framed and parsed in one pass:
/// `[1, msgid, nil, result]`. Returns it and its length in bytes, which is at most `max`.
///
/// `None` for anything else (an error reply, a reply not complete yet, over `max`, another
/// message): the [`Framer`](crate::Framer) and [`Message::parse`] then take it.
#[inline(always)]
pub(crate) fn parse_response_prefix(buf: &[u8], max: usize) -> Option<(Message<'_>, usize)> {
    let [0x94, 0x01, rest @ ..] = buf else {
        return None;
    };
    let mut c = Cursor { b: rest };
    let msgid = c.uint()?;
    let [0xc0, result @ ..] = c.b else {
        return None;
    };
    let start = buf.len() - result.len();
    let n = crate::framer::value_len(result).ok()?;
    let total = start.checked_add(n).filter(|t| *t <= max)?;
    let reply = Message::Response {
        msgid,
        outcome: Ok(&result[..n]),
    };
    Some((reply, total))
}

/// A bincode success reply at the start of `buf`, framed and parsed in one pass, as
/// [`parse_bincode_request_prefix`]. Returns it and its length in bytes, which is at most
/// `max`.
///
/// `None` for anything else, as [`parse_response_prefix`].
#[inline(always)]
pub(crate) fn parse_bincode_response_prefix(buf: &[u8], max: usize) -> Option<(Message<'_>, usize)> {
    let (frame, total) = bincode_frame(buf, max)?;
    match parse_bincode(frame) {
        Ok(reply @ Message::Response { outcome: Ok(_), .. }) => Some((reply, total)),
        _ => None,
    }
}

/// The complete bincode frame at the start of `buf`, length prefix included, if it is at
/// most `max` bytes long; and its length.
#[inline]
fn bincode_frame(buf: &[u8], max: usize) -> Option<(&[u8], usize)> {
    let head = buf.first_chunk::<4>()?;
    let total = usize::try_from(u32::from_le_bytes(*head)).ok()?.checked_add(4)?;
    let frame = buf.get(..total).filter(|_| total <= max)?;
    Some((frame, total))
}

/// The msgid of the request at the start of `buf`, if the bytes there show one.
pub(crate) fn peek_msgid(codec: Codec, buf: &[u8]) -> Option<u64> {
    match codec {
        Codec::Msgpack => {
            let (_, used) = read_array_len(buf)?;
            let mut c = Cursor { b: &buf[used..] };
            (c.uint()? == u64::from(REQUEST)).then_some(())?;
            c.uint()
        }
        Codec::Bincode => {
            (*buf.get(4)? == REQUEST).then_some(())?;
            buf.get(5..13)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
        }
    }
}

/// Whether `buf`, which starts with a message whose headers declare it too large, could
/// still show a request's msgid once a few more bytes arrive: its bytes so far are the
/// start of a request whose msgid is not complete. At most 23 bytes (msgpack: a 5-byte
/// array header, then the tag and the msgid of up to 9 bytes each) or 13 (bincode: the
/// length, the tag and 8 bytes of msgid) are ever waited for.
pub(crate) fn msgid_pending(codec: Codec, buf: &[u8]) -> bool {
    match codec {
        Codec::Msgpack => {
            let Some((_, used)) = read_array_len(buf) else {
                return false;
            };
            let mut rest = &buf[used..];
            for field in [Some(u64::from(REQUEST)), None] {
                let Some(&m) = rest.first() else {
                    return true;
                };
                let len = match m {
                    0x00..=0x7f => 1,
                    0xcc | 0xd0 => 2,
                    0xcd | 0xd1 => 3,
                    0xce | 0xd2 => 5,
                    0xcf | 0xd3 => 9,
                    _ => return false,
                };
                let Some((head, tail)) = rest.split_at_checked(len) else {
                    return true;
                };
                if field.is_some() && (Cursor { b: head }).uint() != field {
                    return false;
                }
                rest = tail;
            }
            false
        }
        Codec::Bincode => match buf.get(4) {
            None => true,
            Some(&tag) => tag == REQUEST && buf.len() < 13,
        },
    }
}

/// Decode the error value of a response into a [`ServerError`].
///
/// `[code, message]` (our shape, and what common clients send) maps directly, and so does
/// `[code, message, data]`, whose data is kept as raw bytes in `codec`
/// ([`ServerError::decode_data`]); any other shape from a third-party server becomes
/// [`ErrorCode::Unknown`] with the value printed as the message. In bincode, the data is
/// whatever follows `(code, message)`.
pub fn decode_error(codec: Codec, raw: &[u8]) -> ServerError {
    match codec {
        Codec::Msgpack => match crate::codec::msgpack_from_slice::<rmpv::Value>(raw) {
            Ok(rmpv::Value::Array(v)) if matches!(v.len(), 2 | 3) && (v[0].is_i64() || v[0].is_u64()) => {
                let code = v[0].as_i64().unwrap_or(i64::MAX);
                let message = match &v[1] {
                    rmpv::Value::String(s) => {
                        s.as_str().map(str::to_owned).unwrap_or_else(|| format!("{s:?}"))
                    }
                    other => other.to_string(),
                };
                let mut e = ServerError::with_code(code, message);
                if v.len() == 3 {
                    if let Some(data) = last_of_three(raw) {
                        e.set_data(codec, data);
                    }
                }
                e
            }
            Ok(rmpv::Value::String(s)) => ServerError::new(
                ErrorCode::Unknown,
                s.as_str().map(str::to_owned).unwrap_or_else(|| format!("{s:?}")),
            ),
            Ok(other) => ServerError::new(ErrorCode::Unknown, other.to_string()),
            Err(e) => ServerError::new(ErrorCode::Unknown, format!("undecodable error value: {e}")),
        },
        Codec::Bincode => match Codec::Bincode.decode_prefix::<(i64, String)>(raw) {
            Ok(((code, message), used)) => {
                let mut e = ServerError::with_code(code, message);
                if used < raw.len() {
                    e.set_data(codec, &raw[used..]);
                }
                e
            }
            Err(e) => ServerError::new(ErrorCode::Unknown, format!("undecodable error value: {e}")),
        },
    }
}

/// The raw third element of `raw`, a msgpack array of three values that decoded as one
/// value (so every length in it is within the bytes present).
fn last_of_three(raw: &[u8]) -> Option<&[u8]> {
    let (_, mut at) = read_array_len(raw)?;
    for _ in 0..2 {
        at += value_len(raw.get(at..)?).ok()?;
    }
    raw.get(at..).filter(|d| !d.is_empty())
}

/// Writes the 4-byte length prefix of a bincode frame once its body is complete (blobs
/// placed beside the buffer meanwhile count: [`crate::blob`]).
struct Prefix(usize, usize);

impl Prefix {
    #[inline]
    fn begin(codec: Codec, out: &mut Vec<u8>) -> Prefix {
        let at = out.len();
        if codec == Codec::Bincode {
            out.extend_from_slice(&[0; 4]);
            return Prefix(at, crate::blob::placed_len());
        }
        Prefix(at, 0)
    }

    #[inline]
    fn end(self, codec: Codec, out: &mut [u8]) {
        if codec == Codec::Bincode {
            let blobs = crate::blob::placed_len() - self.1;
            let len = (out.len() - self.0 - 4 + blobs) as u32;
            out[self.0..self.0 + 4].copy_from_slice(&len.to_le_bytes());
        }
    }
}

fn bincode_method(out: &mut Vec<u8>, method: &str) -> Result<(), EncodeError> {
    let n = u16::try_from(method.len()).map_err(|_| EncodeError::MethodTooLong)?;
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(method.as_bytes());
    Ok(())
}

/// Append a request to `out`. On error `out` is left as it was.
///
/// With a `timeout`, a msgpack request gets a fifth element, `{1: timeout_us}`: send one
/// only to a server that answered our [hello](crate::Hello), never to a plain peer.
///
/// # Errors
///
/// When a parameter cannot be serialized.
#[inline]
pub fn encode_request<P: Params + ?Sized>(
    codec: Codec,
    out: &mut Vec<u8>,
    msgid: u64,
    method: &str,
    params: &P,
    timeout: Option<Duration>,
) -> Result<(), EncodeError> {
    encode_request_ext(codec, out, msgid, method, params, timeout, None)
}

/// [`encode_request`] with the call's [metadata](crate::Metadata), as
/// [`Metadata::encode`](crate::Metadata::encode) wrote it: in the extension element
/// (msgpack) or a request of tag 3 (bincode). Like the timeout, only for a server that
/// answered our hello.
///
/// # Errors
///
/// When a parameter cannot be serialized.
pub fn encode_request_ext<P: Params + ?Sized>(
    codec: Codec,
    out: &mut Vec<u8>,
    msgid: u64,
    method: &str,
    params: &P,
    timeout: Option<Duration>,
    metadata: Option<&[u8]>,
) -> Result<(), EncodeError> {
    let start = out.len();
    let prefix = Prefix::begin(codec, out);
    let us = timeout.map(|t| u64::try_from(t.as_micros()).unwrap_or(u64::MAX).max(1));
    let r = (|| {
        match codec {
            Codec::Msgpack => {
                let ext = us.is_some() || metadata.is_some();
                out.extend_from_slice(&[if ext { 0x95 } else { 0x94 }, REQUEST]);
                write_uint(out, msgid);
                write_str(out, method.as_bytes());
            }
            Codec::Bincode => {
                out.push(if metadata.is_some() {
                    BINCODE_REQUEST_METADATA
                } else {
                    REQUEST
                });
                out.extend_from_slice(&msgid.to_le_bytes());
                out.extend_from_slice(&us.unwrap_or(0).to_le_bytes());
                bincode_method(out, method)?;
                if let Some(md) = metadata {
                    let n = u32::try_from(md.len()).map_err(|_| EncodeError::MetadataTooLong)?;
                    out.extend_from_slice(&n.to_le_bytes());
                    out.extend_from_slice(md);
                }
            }
        }
        params.encode_params(&mut ParamsEncoder::new(codec, out))?;
        if codec == Codec::Msgpack {
            match (us, metadata) {
                (None, None) => {}
                (Some(us), None) => {
                    out.extend_from_slice(&[0x81, EXT_TIMEOUT as u8]);
                    write_uint(out, us);
                }
                (us, Some(md)) => {
                    out.push(if us.is_some() { 0x82 } else { 0x81 });
                    if let Some(us) = us {
                        out.push(EXT_TIMEOUT as u8);
                        write_uint(out, us);
                    }
                    out.push(EXT_METADATA as u8);
                    out.extend_from_slice(md);
                }
            }
        }
        Ok(())
    })();
    match r {
        Ok(()) => {
            prefix.end(codec, out);
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

/// Append a notification to `out`. On error `out` is left as it was.
///
/// # Errors
///
/// When a parameter cannot be serialized.
pub fn encode_notification<P: Params + ?Sized>(
    codec: Codec,
    out: &mut Vec<u8>,
    method: &str,
    params: &P,
) -> Result<(), EncodeError> {
    let start = out.len();
    let prefix = Prefix::begin(codec, out);
    let r = (|| {
        match codec {
            Codec::Msgpack => {
                out.extend_from_slice(&[0x93, NOTIFICATION]);
                write_str(out, method.as_bytes());
            }
            Codec::Bincode => {
                out.push(NOTIFICATION);
                bincode_method(out, method)?;
            }
        }
        params.encode_params(&mut ParamsEncoder::new(codec, out))
    })();
    match r {
        Ok(()) => {
            prefix.end(codec, out);
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

/// Append a successful response to `out`. On error `out` is left as it was, and the
/// caller should send an error response instead.
///
/// # Errors
///
/// When the result cannot be serialized.
// Always inlined: it is the server's per-call writer, called through `Transmit::ok` from
// another crate, where LLVM otherwise leaves it out of line (about 25 instructions more
// per call, measured with callgrind).
#[inline(always)]
pub fn encode_response_ok<V: EncodeValue + ?Sized>(
    codec: Codec,
    out: &mut Vec<u8>,
    msgid: u64,
    result: &V,
) -> Result<(), EncodeError> {
    let start = out.len();
    let prefix = Prefix::begin(codec, out);
    match codec {
        Codec::Msgpack => {
            out.extend_from_slice(&[0x94, RESPONSE]);
            write_uint(out, msgid);
            out.push(0xc0);
        }
        Codec::Bincode => {
            out.push(RESPONSE);
            out.extend_from_slice(&msgid.to_le_bytes());
            out.push(0);
        }
    }
    match result.encode_value(codec, out) {
        Ok(()) => {
            prefix.end(codec, out);
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

/// Append an error response `[1, msgid, [code, message], nil]` to `out`, or
/// `[1, msgid, [code, message, data], nil]` when the error carries data in `codec`.
pub fn encode_response_err(codec: Codec, out: &mut Vec<u8>, msgid: u64, error: &ServerError) {
    encode_response_err_shaped(codec, out, msgid, error, ErrorShape::CodeAndMessage);
}

/// How an error is written for a peer that did not say hello (a plain MessagePack-RPC
/// client). The spec leaves the error element's shape open, and peers read it differently.
/// A peer that said hello always gets `[code, message]` (with the data, when there is any).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorShape {
    /// `[code, message]`: read correctly by the common Python and npm clients, pynvim and
    /// aio-msgpack-rpc. The default. An error with data is `[code, message, data]`: the
    /// code and the message stay the first two elements.
    #[default]
    CodeAndMessage,
    /// The message alone, as a string: what Go's net/rpc clients on ugorji's codec
    /// (`MsgpackSpecRpc`) decode; `[code, message]` is a decode failure for them. Never
    /// carries data.
    Message,
    /// Neovim's `[type, message]`: type 1 (validation) for a wrong method or arguments, 0
    /// (exception) for everything else; Neovim shows the message only for these two types.
    /// Never carries data.
    TypeAndMessage,
}

/// Append an error response in `shape` (msgpack only: bincode peers are ours and always
/// get `[code, message]`). The error's data goes along in the shape `[code, message, data]`
/// (bincode: after the code and the message) when it is encoded with `codec`.
pub fn encode_response_err_shaped(
    codec: Codec,
    out: &mut Vec<u8>,
    msgid: u64,
    error: &ServerError,
    shape: ErrorShape,
) {
    if codec == Codec::Msgpack && shape != ErrorShape::CodeAndMessage {
        out.extend_from_slice(&[0x94, RESPONSE]);
        write_uint(out, msgid);
        if shape == ErrorShape::TypeAndMessage {
            let validation = matches!(error.kind(), ErrorCode::MethodNotFound | ErrorCode::InvalidParams);
            out.extend_from_slice(&[0x92, u8::from(validation)]);
        }
        write_str(out, error.message.as_bytes());
        out.push(0xc0);
        return;
    }
    let data = error.data_in(codec);
    let prefix = Prefix::begin(codec, out);
    match codec {
        Codec::Msgpack => {
            out.extend_from_slice(&[0x94, RESPONSE]);
            write_uint(out, msgid);
            out.push(if data.is_some() { 0x93 } else { 0x92 });
            // Unwrap: writing an integer to a Vec cannot fail.
            rmp::encode::write_sint(out, error.code).unwrap();
            write_str(out, error.message.as_bytes());
            out.extend_from_slice(data.unwrap_or_default());
            out.push(0xc0);
        }
        Codec::Bincode => {
            out.push(RESPONSE);
            out.extend_from_slice(&msgid.to_le_bytes());
            out.push(1);
            // Unwrap: an (i64, &str) always encodes.
            Codec::Bincode
                .encode(out, &(error.code, error.message.as_str()))
                .unwrap();
            out.extend_from_slice(data.unwrap_or_default());
        }
    }
    prefix.end(codec, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Framer;
    use hex_literal::hex;

    #[test]
    fn request_fixture() {
        let mut out = Vec::new();
        encode_request(Codec::Msgpack, &mut out, 1, "add", &(2, 3), None).unwrap();
        assert_eq!(out, hex!("94 00 01 a3 61 64 64 92 02 03"));
        assert_eq!(
            Message::parse(Codec::Msgpack, &out).unwrap(),
            Message::Request {
                msgid: 1,
                method: b"add",
                params: &hex!("92 02 03"),
                timeout: None,
                metadata: None,
            }
        );
    }

    #[test]
    fn bin_method_and_u64_msgid() {
        let frame = hex!("94 00 cf ff ff ff ff ff ff ff fe c4 03 61 64 64 90");
        match Message::parse(Codec::Msgpack, &frame).unwrap() {
            Message::Request {
                msgid,
                method,
                params,
                ..
            } => {
                assert_eq!(msgid, u64::MAX - 1);
                assert_eq!(method, b"add");
                assert_eq!(params, [0x90]);
            }
            m => panic!("{m:?}"),
        }
        let mut out = Vec::new();
        encode_response_ok(Codec::Msgpack, &mut out, u64::MAX - 1, &5u8).unwrap();
        assert_eq!(out, hex!("94 01 cf ff ff ff ff ff ff ff fe c0 05"));
    }

    #[test]
    fn nested_params() {
        let mut out = Vec::new();
        let p = (vec![vec![1, 2], vec![3]], ("x", Some(4u8)));
        encode_request(Codec::Msgpack, &mut out, 9, "f", &p, None).unwrap();
        assert_eq!(
            Framer::new(Codec::Msgpack, 1024).decode(&out).unwrap(),
            Some(out.len())
        );
        let Message::Request { params, .. } = Message::parse(Codec::Msgpack, &out).unwrap() else {
            panic!()
        };
        let mut args = crate::Args::new(Codec::Msgpack, params);
        let back: (Vec<Vec<i32>>, (String, Option<u8>)) = crate::FromArgs::from_args(&mut args).unwrap();
        assert_eq!(back.0, vec![vec![1, 2], vec![3]]);
        assert_eq!(back.1, ("x".to_string(), Some(4)));
    }

    #[test]
    fn error_response_shape() {
        let mut out = Vec::new();
        encode_response_err(
            Codec::Msgpack,
            &mut out,
            3,
            &ServerError::new(ErrorCode::MethodNotFound, "no"),
        );
        assert_eq!(out, hex!("94 01 03 92 01 a2 6e 6f c0"));
        let Message::Response { msgid, outcome } = Message::parse(Codec::Msgpack, &out).unwrap() else {
            panic!()
        };
        assert_eq!(msgid, 3);
        let e = decode_error(Codec::Msgpack, outcome.unwrap_err());
        assert_eq!((e.kind(), e.message.as_str()), (ErrorCode::MethodNotFound, "no"));
    }

    /// Issue 11 (typed errors): `[code, message, data]`, the data in the connection's codec.
    #[test]
    fn error_response_with_data() {
        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        enum TodoError {
            NotFound(u64),
        }
        let error = ServerError::new(ErrorCode::HandlerError, "no")
            .with_data(Codec::Msgpack, &TodoError::NotFound(42))
            .unwrap();
        let mut out = Vec::new();
        encode_response_err(Codec::Msgpack, &mut out, 3, &error);
        // [1, 3, [3, "no", {"NotFound": 42}], nil]: code and message first.
        assert_eq!(
            out,
            hex!("94 01 03 93 03 a2 6e 6f 81 a8 4e 6f 74 46 6f 75 6e 64 2a c0")
        );
        let Message::Response { outcome, .. } = Message::parse(Codec::Msgpack, &out).unwrap() else {
            panic!()
        };
        let e = decode_error(Codec::Msgpack, outcome.unwrap_err());
        assert_eq!(e, error);
        assert_eq!(
            e.decode_data::<TodoError>().unwrap().unwrap(),
            TodoError::NotFound(42)
        );
        let value = e.data_value().unwrap().unwrap();
        assert_eq!(value.as_map().unwrap()[0].0.as_str(), Some("NotFound"));
        assert!(e.decode_data::<String>().unwrap().is_err());

        // bincode: the data follows (code, message) in the frame.
        let error = ServerError::new(ErrorCode::HandlerError, "no")
            .with_data(Codec::Bincode, &TodoError::NotFound(42))
            .unwrap();
        let mut out = Vec::new();
        encode_response_err(Codec::Bincode, &mut out, 3, &error);
        let Message::Response { outcome, .. } = Message::parse(Codec::Bincode, &out).unwrap() else {
            panic!()
        };
        let e = decode_error(Codec::Bincode, outcome.unwrap_err());
        assert_eq!((e.code, e.message.as_str()), (3, "no"));
        assert_eq!(e.data_codec(), Some(Codec::Bincode));
        assert_eq!(
            e.decode_data::<TodoError>().unwrap().unwrap(),
            TodoError::NotFound(42)
        );
        assert!(e.data_value().unwrap().is_err(), "bincode is not self-describing");

        // Data in another codec than the connection's is left out.
        let mut out = Vec::new();
        encode_response_err(Codec::Msgpack, &mut out, 3, &error);
        assert_eq!(out, hex!("94 01 03 92 03 a2 6e 6f c0"));
        let e = decode_error(Codec::Msgpack, &hex!("92 03 a2 6e 6f"));
        assert_eq!((e.data(), e.decode_data::<u8>().is_none()), (None, true));
        let mut out = Vec::new();
        let with_msgpack = ServerError::new(ErrorCode::HandlerError, "no")
            .with_data(Codec::Msgpack, &1u8)
            .unwrap();
        encode_response_err(Codec::Bincode, &mut out, 3, &with_msgpack);
        let Message::Response { outcome, .. } = Message::parse(Codec::Bincode, &out).unwrap() else {
            panic!()
        };
        assert_eq!(decode_error(Codec::Bincode, outcome.unwrap_err()).data(), None);

        // The shapes for plain peers that read no array never carry the data.
        let error = ServerError::new(ErrorCode::HandlerError, "no")
            .with_data(Codec::Msgpack, &7u8)
            .unwrap();
        for (shape, want) in [
            (ErrorShape::Message, &hex!("94 01 03 a2 6e 6f c0")[..]),
            (
                ErrorShape::TypeAndMessage,
                &hex!("94 01 03 92 00 a2 6e 6f c0")[..],
            ),
            (
                ErrorShape::CodeAndMessage,
                &hex!("94 01 03 93 03 a2 6e 6f 07 c0")[..],
            ),
        ] {
            let mut out = Vec::new();
            encode_response_err_shaped(Codec::Msgpack, &mut out, 3, &error, shape);
            assert_eq!(out, want, "{shape:?}");
        }
    }

    #[test]
    fn third_party_error_with_a_third_element() {
        // [-32000, "bad", [1, 2]] from another implementation: code, message and data kept.
        let e = decode_error(Codec::Msgpack, &hex!("93 d1 83 00 a3 62 61 64 92 01 02"));
        assert_eq!((e.code, e.message.as_str()), (-32000, "bad"));
        assert_eq!(e.data(), Some(&hex!("92 01 02")[..]));
        assert_eq!(e.decode_data::<Vec<u8>>().unwrap().unwrap(), [1, 2]);
        // Four elements is another shape.
        let e = decode_error(Codec::Msgpack, &hex!("94 01 a1 78 c0 c0"));
        assert_eq!((e.kind(), e.data()), (ErrorCode::Unknown, None));
    }

    #[test]
    fn msgid_in_every_integer_form() {
        let ok: [(&[u8], u64); 12] = [
            (&hex!("05"), 5),
            (&hex!("cc ff"), 0xff),
            (&hex!("cd 01 00"), 0x100),
            (&hex!("ce 01 02 03 04"), 0x0102_0304),
            (&hex!("cf ff ff ff ff ff ff ff ff"), u64::MAX),
            (&hex!("d0 7f"), 0x7f),
            (&hex!("d1 7f ff"), 0x7fff),
            (&hex!("d2 7f ff ff ff"), 0x7fff_ffff),
            (&hex!("d3 7f ff ff ff ff ff ff ff"), i64::MAX as u64),
            (&hex!("d0 00"), 0),
            (&hex!("d2 00 00 00 09"), 9),
            (&hex!("cf 00 00 00 01 00 00 00 00"), 1 << 32),
        ];
        for (id, want) in ok {
            let mut frame = vec![0x94, 0x00];
            frame.extend_from_slice(id);
            frame.extend_from_slice(&hex!("a1 6d 90"));
            match Message::parse(Codec::Msgpack, &frame) {
                Ok(Message::Request { msgid, .. }) => assert_eq!(msgid, want, "{id:02x?}"),
                other => panic!("{id:02x?}: {other:?}"),
            }
            assert_eq!(peek_msgid(Codec::Msgpack, &frame), Some(want));
        }
        // Negative, truncated, or not an integer.
        for id in [
            &hex!("ff")[..],
            &hex!("d0 80"),
            &hex!("d1 80 00"),
            &hex!("d2 ff ff ff ff"),
            &hex!("d3 80 00 00 00 00 00 00 00"),
            &hex!("cd 01"),
            &hex!("cb 00 00 00 00 00 00 00 00"),
        ] {
            let mut frame = vec![0x94, 0x00];
            frame.extend_from_slice(id);
            assert!(Message::parse(Codec::Msgpack, &frame).is_err(), "{id:02x?}");
        }
    }

    #[test]
    fn malformed_envelopes() {
        // A map.
        assert_eq!(
            Message::parse(Codec::Msgpack, &hex!("80")).unwrap_err().msgid,
            None
        );
        // Wrong length, msgid readable.
        let e = Message::parse(Codec::Msgpack, &hex!("93 00 05 a1 61")).unwrap_err();
        assert_eq!(e.msgid, Some(5));
        // Unknown type tag.
        assert!(Message::parse(Codec::Msgpack, &hex!("94 07 01 a1 61 90")).is_err());
        // Negative msgid.
        assert!(Message::parse(Codec::Msgpack, &hex!("94 00 ff a1 61 90")).is_err());
        // Method is an int.
        let e = Message::parse(Codec::Msgpack, &hex!("94 00 01 05 90")).unwrap_err();
        assert_eq!(e.msgid, Some(1));
    }

    #[test]
    fn request_metadata_with_each_codec() {
        let md = crate::Metadata::new().with("token", "s3cret").encode();
        for codec in [Codec::Msgpack, Codec::Bincode] {
            for timeout in [None, Some(Duration::from_millis(3))] {
                let mut out = Vec::new();
                encode_request_ext(codec, &mut out, 9, "get", &("k",), timeout, Some(&md)).unwrap();
                let len = Framer::new(codec, 1024).decode(&out).unwrap();
                assert_eq!(len, Some(out.len()), "{codec:?}");
                match Message::parse(codec, &out).unwrap() {
                    Message::Request {
                        msgid,
                        method,
                        params,
                        timeout: t,
                        metadata,
                    } => {
                        assert_eq!((msgid, method, t), (9, &b"get"[..], timeout), "{codec:?}");
                        assert_eq!(metadata, Some(&md[..]), "{codec:?}");
                        let (k,): (String,) =
                            crate::FromArgs::from_args(&mut crate::Args::new(codec, params)).unwrap();
                        assert_eq!(k, "k");
                    }
                    m => panic!("{m:?}"),
                }
            }
        }
        // msgpack: exactly the extension map, metadata under key 2.
        let mut out = Vec::new();
        encode_request_ext(Codec::Msgpack, &mut out, 1, "f", &(), None, Some(&hex!("80"))).unwrap();
        assert_eq!(out, hex!("95 00 01 a1 66 90 81 02 80"));
        // Metadata that is not a map is a bad extension.
        let e = Message::parse(Codec::Msgpack, &hex!("95 00 01 a1 66 90 81 02 a1 78")).unwrap_err();
        assert_eq!(e.msgid, Some(1));
        // bincode: a length beyond the frame is an error, not a read past it.
        let mut out = Vec::new();
        encode_request_ext(Codec::Bincode, &mut out, 1, "f", &(), None, Some(&hex!("80"))).unwrap();
        let at = 4 + 1 + 8 + 8 + 2 + 1;
        out[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Message::parse(Codec::Bincode, &out).unwrap_err().msgid, Some(1));
    }

    #[test]
    fn request_timeout_extension() {
        let mut out = Vec::new();
        encode_request(
            Codec::Msgpack,
            &mut out,
            1,
            "add",
            &(2, 3),
            Some(Duration::from_millis(2)),
        )
        .unwrap();
        assert_eq!(out, hex!("95 00 01 a3 61 64 64 92 02 03 81 01 cd 07 d0"));
        assert_eq!(
            Framer::new(Codec::Msgpack, 1024).decode(&out).unwrap(),
            Some(out.len())
        );
        match Message::parse(Codec::Msgpack, &out).unwrap() {
            Message::Request { timeout, .. } => assert_eq!(timeout, Some(Duration::from_millis(2))),
            m => panic!("{m:?}"),
        }
        // Every map form: map16 and map32 too, as other encoders may write them.
        for ext in [
            &hex!("81 01 05")[..],
            &hex!("de 00 01 01 05"),
            &hex!("df 00 00 00 01 01 05"),
            &hex!("df 00 00 00 02 07 c0 01 05"),
        ] {
            let frame = [&hex!("95 00 01 a1 61 90")[..], ext].concat();
            assert_eq!(
                Framer::new(Codec::Msgpack, 1024).decode(&frame).unwrap(),
                Some(frame.len())
            );
            match Message::parse(Codec::Msgpack, &frame) {
                Ok(Message::Request { timeout, .. }) => {
                    assert_eq!(timeout, Some(Duration::from_micros(5)), "{ext:02x?}");
                }
                other => panic!("{ext:02x?}: {other:?}"),
            }
        }
        // A map32 declaring more entries than follow.
        let frame = hex!("95 00 01 a1 61 90 df 00 00 00 02 01 05");
        assert!(Message::parse(Codec::Msgpack, &frame).is_err());
        // Unknown extension keys are skipped.
        let frame = hex!("95 00 01 a1 61 90 82 07 a1 78 01 05");
        match Message::parse(Codec::Msgpack, &frame).unwrap() {
            Message::Request { timeout, .. } => assert_eq!(timeout, Some(Duration::from_micros(5))),
            m => panic!("{m:?}"),
        }
    }

    #[test]
    fn notification() {
        let mut out = Vec::new();
        encode_notification(Codec::Msgpack, &mut out, "ping", &()).unwrap();
        assert_eq!(out, hex!("93 02 a4 70 69 6e 67 90"));
        assert!(matches!(
            Message::parse(Codec::Msgpack, &out).unwrap(),
            Message::Notification { method: b"ping", .. }
        ));
    }

    #[test]
    fn bincode_round_trip() {
        let c = Codec::Bincode;
        let mut out = Vec::new();
        encode_request(
            c,
            &mut out,
            77,
            "add",
            &(2i64, 3i64),
            Some(Duration::from_millis(1500)),
        )
        .unwrap();
        assert_eq!(Framer::new(c, 1024).decode(&out).unwrap(), Some(out.len()));
        assert_eq!(peek_msgid(c, &out), Some(77));
        let Message::Request {
            msgid,
            method,
            params,
            timeout,
            ..
        } = Message::parse(c, &out).unwrap()
        else {
            panic!()
        };
        assert_eq!((msgid, method), (77, &b"add"[..]));
        assert_eq!(timeout, Some(Duration::from_millis(1500)));
        let (a, b): (i64, i64) = crate::FromArgs::from_args(&mut crate::Args::new(c, params)).unwrap();
        assert_eq!(a + b, 5);

        out.clear();
        encode_response_ok(c, &mut out, 77, &5i64).unwrap();
        let Message::Response { outcome, .. } = Message::parse(c, &out).unwrap() else {
            panic!()
        };
        assert_eq!(c.decode::<i64>(outcome.unwrap()).unwrap(), 5);

        out.clear();
        encode_response_err(
            c,
            &mut out,
            78,
            &ServerError::new(ErrorCode::InvalidParams, "bad"),
        );
        let Message::Response { msgid, outcome } = Message::parse(c, &out).unwrap() else {
            panic!()
        };
        assert_eq!(msgid, 78);
        assert_eq!(
            decode_error(c, outcome.unwrap_err()).kind(),
            ErrorCode::InvalidParams
        );
    }

    #[test]
    fn one_pass_request_parse_agrees_with_framer_and_parser() {
        let mut frames: Vec<Vec<u8>> = Vec::new();
        for msgid in [0u64, 5, 0x80, 0x1_0000, 1 << 40] {
            let mut f = Vec::new();
            encode_request(Codec::Msgpack, &mut f, msgid, "add", &(1, 2), None).unwrap();
            frames.push(f);
            let mut f = Vec::new();
            let long = "m".repeat(40);
            encode_request(
                Codec::Msgpack,
                &mut f,
                msgid,
                &long,
                &(vec![1, 2], ("x", 2.5)),
                None,
            )
            .unwrap();
            frames.push(f);
        }
        // A bin method name and signed-int msgid forms, as some peers send them.
        frames.push(hex!("94 00 d0 07 c4 01 6d 91 c0").to_vec());
        frames.push(hex!("94 00 05 a1 6d 90").to_vec());
        for frame in &frames {
            let mut buf = frame.clone();
            buf.extend_from_slice(&hex!("94 00 01 a1 6d 90")); // the next message
            let (fast, n) = parse_request_prefix(&buf, 1 << 20).unwrap_or_else(|| panic!("{frame:02x?}"));
            let mut framer = crate::Framer::new(Codec::Msgpack, 1 << 20);
            assert_eq!(framer.decode(&buf).unwrap(), Some(frame.len()));
            assert_eq!(n, frame.len());
            assert_eq!(fast, Message::parse(Codec::Msgpack, frame).unwrap());
            for cut in 0..frame.len() {
                assert_eq!(parse_request_prefix(&frame[..cut], 1 << 20), None, "cut at {cut}");
            }
            assert_eq!(
                parse_request_prefix(frame, frame.len() - 1),
                None,
                "over the limit"
            );
        }
        // Left to the general path: the timeout extension, other messages, malformed ones.
        let mut ext = Vec::new();
        encode_request(
            Codec::Msgpack,
            &mut ext,
            1,
            "m",
            &(1,),
            Some(Duration::from_secs(1)),
        )
        .unwrap();
        let mut note = Vec::new();
        encode_notification(Codec::Msgpack, &mut note, "m", &(1,)).unwrap();
        for other in [
            &ext[..],
            &note[..],
            &hex!("94 00 ff a1 6d 90"),
            &hex!("94 00 01 01 90"),
            &hex!("94 00 01 a1 6d c1"),
        ] {
            assert_eq!(parse_request_prefix(other, 1 << 20), None, "{other:02x?}");
        }
    }

    fn reply(codec: Codec, msgid: u64, result: &(impl serde::Serialize + Send + Sync)) -> Vec<u8> {
        let mut out = Vec::new();
        encode_response_ok(codec, &mut out, msgid, result).unwrap();
        out
    }

    /// The one-pass reply parser of `codec`.
    fn reply_prefix(codec: Codec, buf: &[u8], max: usize) -> Option<(Message<'_>, usize)> {
        match codec {
            Codec::Msgpack => parse_response_prefix(buf, max),
            Codec::Bincode => parse_bincode_response_prefix(buf, max),
        }
    }

    #[test]
    fn one_pass_bincode_request_parse_agrees_with_framer_and_parser() {
        let c = Codec::Bincode;
        let long = "m".repeat(300);
        for msgid in [0u64, 5, u64::MAX] {
            for timeout in [None, Some(Duration::from_millis(1500))] {
                for method in ["add", "", long.as_str()] {
                    let mut frame = Vec::new();
                    encode_request(c, &mut frame, msgid, method, &(1, "two", [3.0]), timeout).unwrap();
                    let mut buf = frame.clone();
                    buf.extend_from_slice(&frame); // the next frame, not taken
                    let (fast, n) = parse_bincode_request_prefix(&buf, 1 << 20).unwrap();
                    assert_eq!(n, frame.len());
                    let mut framer = crate::Framer::new(c, 1 << 20);
                    assert_eq!(framer.decode(&buf).unwrap(), Some(n));
                    assert_eq!(fast, Message::parse(c, &frame).unwrap());
                }
            }
        }
        let mut frame = Vec::new();
        encode_request(c, &mut frame, 7, "add", &(1, 2), None).unwrap();
        // Not complete yet, at every cut; over the limit.
        for cut in 0..frame.len() {
            assert_eq!(
                parse_bincode_request_prefix(&frame[..cut], 1 << 20),
                None,
                "cut at {cut}"
            );
        }
        assert_eq!(parse_bincode_request_prefix(&frame, frame.len() - 1), None);
        // A method longer than the frame: left to the parser, which reports it.
        let mut bad = frame.clone();
        bad[21] = 0xff;
        assert_eq!(parse_bincode_request_prefix(&bad, 1 << 20), None);
        assert!(Message::parse(c, &bad).is_err());
        // Not a request.
        let mut note = Vec::new();
        encode_notification(c, &mut note, "n", &(1,)).unwrap();
        assert_eq!(parse_bincode_request_prefix(&note, 1 << 20), None);
        let reply = reply(c, 7, &3);
        assert_eq!(parse_bincode_request_prefix(&reply, 1 << 20), None);
    }

    #[test]
    fn one_pass_reply_parse_reads_every_msgid_width_and_stops_at_the_frame_end() {
        for codec in [Codec::Msgpack, Codec::Bincode] {
            for msgid in [
                0,
                0x7f,
                0x80,
                0xff,
                0x100,
                0xffff,
                0x1_0000,
                u64::from(u32::MAX),
                1 << 32,
                u64::MAX,
            ] {
                for frame in [reply(codec, msgid, &(1, "two", [3.0])), reply(codec, msgid, &7)] {
                    let mut buf = frame.clone();
                    // The next frame, not taken.
                    buf.extend_from_slice(&reply(codec, msgid.wrapping_add(1), &7));
                    let (fast, n) = reply_prefix(codec, &buf, 1 << 20).unwrap();
                    assert_eq!(n, frame.len(), "{codec:?}");
                    // The same as the framer and the general parser find.
                    let mut framer = crate::Framer::new(codec, 1 << 20);
                    assert_eq!(framer.decode(&buf).unwrap(), Some(n));
                    assert_eq!(fast, Message::parse(codec, &frame).unwrap());
                    let Message::Response { msgid: id, .. } = fast else {
                        panic!("{fast:?}")
                    };
                    assert_eq!(id, msgid);
                }
            }
        }
    }

    #[test]
    fn one_pass_reply_parse_leaves_the_rest_to_the_general_path() {
        for codec in [Codec::Msgpack, Codec::Bincode] {
            let ok = reply(codec, 5, &"result");
            // Not complete yet, at every cut.
            for cut in 0..ok.len() {
                assert_eq!(
                    reply_prefix(codec, &ok[..cut], 1 << 20),
                    None,
                    "{codec:?} cut at {cut}"
                );
            }
            // An error reply, a notification, a request: not for the one-pass path.
            let mut err = Vec::new();
            encode_response_err(codec, &mut err, 5, &ServerError::new(ErrorCode::Internal, "x"));
            assert_eq!(reply_prefix(codec, &err, 1 << 20), None);
            let mut note = Vec::new();
            encode_notification(codec, &mut note, "n", &(1,)).unwrap();
            assert_eq!(reply_prefix(codec, &note, 1 << 20), None);
            let mut req = Vec::new();
            encode_request(codec, &mut req, 5, "m", &(1,), None).unwrap();
            assert_eq!(reply_prefix(codec, &req, 1 << 20), None);
            // Over the size limit: refused here, and the general framer reports it.
            assert_eq!(reply_prefix(codec, &ok, ok.len() - 1), None);
            assert!(reply_prefix(codec, &ok, ok.len()).is_some());
        }
    }
}
