//! What both clients do with a response frame.

use rpc_proto::{decode_error, Codec, Framer, Message};
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

/// A complete success reply at the start of `buf`, read in one pass:
/// `[1, msgid, nil, result]` (msgpack). Returns the frame's length, its msgid and where its
/// result starts. Anything else (an error reply, a frame not complete yet, a message that
/// is not a reply) is `None`, for the general framer and parser to take.
pub(crate) fn fast_reply(buf: &[u8], max: usize) -> Option<(usize, u64, usize)> {
    let [0x94, 0x01, m, rest @ ..] = buf else {
        return None;
    };
    let be = |n: usize| {
        rest.get(..n)
            .map(|b| b.iter().fold(0u64, |a, x| (a << 8) | u64::from(*x)))
    };
    let (msgid, k) = match *m {
        0x00..=0x7f => (u64::from(*m), 0),
        0xcc => (be(1)?, 1),
        0xcd => (be(2)?, 2),
        0xce => (be(4)?, 4),
        0xcf => (be(8)?, 8),
        _ => return None,
    };
    if *rest.get(k)? != 0xc0 {
        return None;
    }
    let start = 3 + k + 1;
    let n = match *buf.get(start)? {
        // A one-byte result (small integer, nil, bool): the common case, no walk.
        0x00..=0x7f | 0xc0 | 0xc2 | 0xc3 | 0xe0..=0xff => 1,
        _ => Framer::new(Codec::Msgpack, max.saturating_sub(start))
            .decode(&buf[start..])
            .ok()??,
    };
    Some((start + n, msgid, start))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(msgid: u64, result: &(impl serde::Serialize + Send + Sync)) -> Vec<u8> {
        let mut out = Vec::new();
        rpc_proto::encode_response_ok(Codec::Msgpack, &mut out, msgid, result).unwrap();
        out
    }

    #[test]
    fn fast_reply_reads_every_msgid_width_and_stops_at_the_frame_end() {
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
            let mut buf = reply(msgid, &(1, "two", [3.0])); // a container result
            let len = buf.len();
            buf.extend_from_slice(&reply(msgid.wrapping_add(1), &7)); // the next frame, not taken
            let (n, id, start) = fast_reply(&buf, 1 << 20).unwrap();
            assert_eq!((n, id), (len, msgid));
            // The same as the general parser finds.
            let (pid, outcome) = parse(Codec::Msgpack, &buf[..n]).unwrap().unwrap();
            assert_eq!(pid, msgid);
            assert_eq!(outcome.unwrap(), &buf[start..n]);
        }
    }

    #[test]
    fn fast_reply_leaves_the_rest_to_the_general_path() {
        let ok = reply(5, &"result");
        // Not complete yet, at every cut.
        for cut in 0..ok.len() {
            assert_eq!(fast_reply(&ok[..cut], 1 << 20), None, "cut at {cut}");
        }
        // An error reply, a notification, a request: not for the one-pass path.
        let mut err = Vec::new();
        rpc_proto::encode_response_err(
            Codec::Msgpack,
            &mut err,
            5,
            &rpc_proto::ServerError::new(rpc_proto::ErrorCode::Internal, "x"),
        );
        assert_eq!(fast_reply(&err, 1 << 20), None);
        let mut note = Vec::new();
        rpc_proto::encode_notification(Codec::Msgpack, &mut note, "n", &(1,)).unwrap();
        assert_eq!(fast_reply(&note, 1 << 20), None);
        // Over the size limit: refused here, and the general framer reports it.
        assert_eq!(fast_reply(&ok, 6), None);
    }
}
