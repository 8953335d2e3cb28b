//! Streams: the messages of a call whose result or argument is a stream of items, on
//! connections whose hello agreed the [`STREAMS`](crate::handshake::features::STREAMS)
//! feature.
//!
//! A streaming call is an ordinary request `[0, msgid, method, params]`; everything about
//! its streams is carried by notifications naming its msgid, in either direction:
//!
//! - `[2, "rpc.item", [msgid, item]]`: one item of the stream that flows from the sender
//!   (the server's result stream, or the client's argument stream).
//! - `[2, "rpc.credit", [msgid, n]]`: the sender of this message may be sent `n` more items
//!   of msgid's stream that flows toward it. Nothing may be sent beyond the credit granted:
//!   a receiver bounds its memory by what it grants. Credit starts at 0; a client grants
//!   its first credit right after its request, a server when the call starts.
//! - `[2, "rpc.end", [msgid]]` or `[2, "rpc.end", [msgid, [code, message]]]`: the client's
//!   argument stream ended (normally, or with an error).
//!
//! The response `[1, msgid, error, result]` ends the call and every stream of it: a
//! result stream ends normally with `[1, msgid, nil, nil]` and with an error with
//! `[1, msgid, [code, message], nil]`; a call that takes a stream and returns a value
//! answers it as usual. The client cancels with `rpc.cancel [msgid]`; items and credit
//! naming a msgid that is not (or no longer) streaming are ignored.

use crate::codec::{Args, Codec, EncodeValue, Params, ParamsEncoder};
use crate::error::{EncodeError, ServerError};
use crate::message::encode_notification;
use crate::reserved::{CREDIT, END, ITEM};

/// The credit our receivers grant at first, in items.
pub const INITIAL_WINDOW: u64 = 64;
/// What our receivers aim to let wait in memory for one stream, in bytes: their window in
/// items follows the items' mean size ([`Window`]).
pub const WINDOW_BYTES: u64 = 1024 * 1024;
/// The fewest items our receivers' window holds, however large the items.
pub const MIN_WINDOW: u64 = 16;
/// The most items our receivers' window holds, however small the items.
pub const MAX_WINDOW: u64 = 4096;

/// A receiver's flow-control window: how much credit to grant as items are taken.
///
/// It starts at [`INITIAL_WINDOW`] items; each time half of what was granted has been
/// taken, it grants enough to have `WINDOW_BYTES / mean item size` items outstanding
/// (between [`MIN_WINDOW`] and [`MAX_WINDOW`]). So a stream of small items flows without
/// waiting a round trip every few items, and one of large items keeps about 1 MiB in
/// flight, not thousands of items: what waits in the receiver's memory is bounded.
///
/// ```
/// use easyrpc_proto::stream::{Window, INITIAL_WINDOW};
///
/// let mut w = Window::new();
/// assert_eq!(w.initial(), INITIAL_WINDOW);
/// // 64 KiB items: after half the first grant, the window shrinks to 16 items.
/// let grants: Vec<u64> = (0..64).filter_map(|_| w.take(64 * 1024)).collect();
/// assert!(grants.iter().sum::<u64>() <= 16);
/// ```
#[derive(Debug, Clone)]
pub struct Window {
    /// Granted and not taken yet.
    outstanding: u64,
    /// What to have outstanding after a grant.
    target: u64,
    items: u64,
    bytes: u64,
}

impl Default for Window {
    fn default() -> Window {
        Window::new()
    }
}

impl Window {
    /// A window that has granted its [`Window::initial`] credit.
    pub fn new() -> Window {
        Window {
            outstanding: INITIAL_WINDOW,
            target: INITIAL_WINDOW,
            items: 0,
            bytes: 0,
        }
    }

    /// The credit to grant when the stream opens.
    pub fn initial(&self) -> u64 {
        INITIAL_WINDOW
    }

    /// An item of `len` bytes was taken: the credit to grant now, if any.
    pub fn take(&mut self, len: usize) -> Option<u64> {
        self.outstanding = self.outstanding.saturating_sub(1);
        self.items += 1;
        self.bytes = self.bytes.saturating_add(len as u64);
        if self.outstanding * 2 > self.target {
            return None;
        }
        let mean = (self.bytes / self.items).max(1);
        self.target = (WINDOW_BYTES / mean).clamp(MIN_WINDOW, MAX_WINDOW);
        let grant = self.target.saturating_sub(self.outstanding);
        self.outstanding += grant;
        (grant > 0).then_some(grant)
    }
}

/// A stream message, parsed from a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamMessage<'a> {
    /// `rpc.item`: one item (raw, in the connection's codec).
    Item {
        /// The call.
        msgid: u64,
        /// The item's encoded value.
        item: &'a [u8],
    },
    /// `rpc.credit`: the peer may be sent `n` more items.
    Credit {
        /// The call.
        msgid: u64,
        /// How many more items.
        n: u64,
    },
    /// `rpc.end`: the client's argument stream ended, with an error or not.
    End {
        /// The call.
        msgid: u64,
        /// Why it ended, when it failed.
        error: Option<ServerError>,
    },
}

impl<'a> StreamMessage<'a> {
    /// The message of notification `method` with `params`: `None` when `method` is not a
    /// stream message.
    ///
    /// # Errors
    ///
    /// When it is one but its params are not as above.
    pub fn parse(
        codec: Codec,
        method: &[u8],
        params: &'a [u8],
    ) -> Option<Result<StreamMessage<'a>, ServerError>> {
        let kind = match method {
            m if m == ITEM.as_bytes() => 0,
            m if m == CREDIT.as_bytes() => 1,
            m if m == END.as_bytes() => 2,
            _ => return None,
        };
        let mut args = Args::new(codec, params);
        Some((|| {
            let n = args.len()?;
            match kind {
                0 => {
                    args.expect(2)?;
                    let msgid = args.next::<u64>("msgid")?;
                    Ok(StreamMessage::Item {
                        msgid,
                        item: args.rest(),
                    })
                }
                1 => {
                    args.expect(2)?;
                    let msgid = args.next::<u64>("msgid")?;
                    let n = args.next::<u64>("n")?;
                    Ok(StreamMessage::Credit { msgid, n })
                }
                _ => {
                    if n != 1 && n != 2 {
                        args.expect(1)?;
                    }
                    let msgid = args.next::<u64>("msgid")?;
                    let error = if n == 2 {
                        let (code, message): (i64, String) = args.next("error")?;
                        Some(ServerError::with_code(code, message))
                    } else {
                        None
                    };
                    Ok(StreamMessage::End { msgid, error })
                }
            }
        })())
    }
}

/// `[msgid, item]` with the item encoded by its own [`EncodeValue`].
struct ItemParams<'v, V: ?Sized> {
    msgid: u64,
    item: &'v V,
}

impl<V: EncodeValue + ?Sized> Params for ItemParams<'_, V> {
    fn encode_params(&self, enc: &mut ParamsEncoder<'_>) -> Result<(), EncodeError> {
        enc.count(2);
        enc.push(&self.msgid)?;
        enc.push_encoded(self.item)
    }
}

/// Append `[2, "rpc.item", [msgid, item]]`.
///
/// # Errors
///
/// When the item cannot be encoded: nothing was written.
pub fn encode_item<V: EncodeValue + ?Sized>(
    codec: Codec,
    out: &mut Vec<u8>,
    msgid: u64,
    item: &V,
) -> Result<(), EncodeError> {
    encode_notification(codec, out, ITEM, &ItemParams { msgid, item })
}

/// Append `[2, "rpc.credit", [msgid, n]]`.
pub fn encode_credit(codec: Codec, out: &mut Vec<u8>, msgid: u64, n: u64) {
    // Unwrap: two integers always encode.
    encode_notification(codec, out, CREDIT, &(msgid, n)).unwrap();
}

/// Append `[2, "rpc.end", [msgid]]`, or with `[code, message]` when `error` is given.
pub fn encode_end(codec: Codec, out: &mut Vec<u8>, msgid: u64, error: Option<&ServerError>) {
    // Unwraps: integers and a string always encode.
    match error {
        None => encode_notification(codec, out, END, &(msgid,)).unwrap(),
        Some(e) => encode_notification(codec, out, END, &(msgid, (e.code, e.message.as_str()))).unwrap(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;
    use crate::Framer;

    fn parse_one(codec: Codec, wire: &[u8]) -> StreamMessage<'_> {
        let mut framer = Framer::new(codec, 1 << 20);
        assert_eq!(framer.decode(wire).unwrap(), Some(wire.len()));
        let Ok(Message::Notification { method, params }) = Message::parse(codec, wire) else {
            panic!("not a notification")
        };
        StreamMessage::parse(codec, method, params).unwrap().unwrap()
    }

    #[test]
    fn every_message_round_trips_in_both_codecs() {
        for codec in [Codec::Msgpack, Codec::Bincode] {
            let mut out = Vec::new();
            encode_item(codec, &mut out, 7, &("hi", 3u32)).unwrap();
            let StreamMessage::Item { msgid, item } = parse_one(codec, &out) else {
                panic!()
            };
            assert_eq!(msgid, 7);
            assert_eq!(codec.decode::<(String, u32)>(item).unwrap(), ("hi".into(), 3));

            out.clear();
            encode_credit(codec, &mut out, 9, 64);
            assert_eq!(parse_one(codec, &out), StreamMessage::Credit { msgid: 9, n: 64 });

            out.clear();
            encode_end(codec, &mut out, 11, None);
            assert_eq!(
                parse_one(codec, &out),
                StreamMessage::End {
                    msgid: 11,
                    error: None
                }
            );

            out.clear();
            let e = ServerError::with_code(3, "boom");
            encode_end(codec, &mut out, 12, Some(&e));
            assert_eq!(
                parse_one(codec, &out),
                StreamMessage::End {
                    msgid: 12,
                    error: Some(e)
                }
            );
        }
    }

    #[test]
    fn the_msgpack_wire_is_as_documented() {
        let mut out = Vec::new();
        encode_item(Codec::Msgpack, &mut out, 1, &5u8).unwrap();
        // [2, "rpc.item", [1, 5]]
        assert_eq!(out, b"\x93\x02\xa8rpc.item\x92\x01\x05");
        out.clear();
        encode_credit(Codec::Msgpack, &mut out, 1, 64);
        assert_eq!(out, b"\x93\x02\xaarpc.credit\x92\x01\x40");
    }

    #[test]
    fn the_window_follows_the_item_size_within_its_bounds() {
        for (size, expect) in [(8usize, MAX_WINDOW), (64 * 1024, MIN_WINDOW), (4096, 256)] {
            let mut w = Window::new();
            let mut granted = w.initial();
            let mut taken = 0u64;
            // Take everything granted, as a fast reader would, for a while.
            for _ in 0..20_000 {
                if taken == granted {
                    break;
                }
                taken += 1;
                granted += w.take(size).unwrap_or(0);
                assert!(
                    granted - taken <= MAX_WINDOW.max(INITIAL_WINDOW),
                    "{size}: never more than the bounds"
                );
            }
            // Steady state: the outstanding credit sits at the target.
            let outstanding = granted - taken;
            assert!(
                outstanding <= expect && outstanding * 2 >= expect,
                "{size}: {outstanding} outstanding, target {expect}"
            );
        }
    }

    #[test]
    fn other_notifications_and_bad_params() {
        assert!(StreamMessage::parse(Codec::Msgpack, b"log", b"\x90").is_none());
        // rpc.credit with one argument; rpc.item whose msgid is a string.
        assert!(StreamMessage::parse(Codec::Msgpack, b"rpc.credit", b"\x91\x01")
            .unwrap()
            .is_err());
        assert!(
            StreamMessage::parse(Codec::Msgpack, b"rpc.item", b"\x92\xa1x\x01")
                .unwrap()
                .is_err()
        );
    }
}
