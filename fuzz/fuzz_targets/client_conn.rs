//! The clients' connection state machine, as both clients run it: any bytes from a server,
//! split at the point a control byte picks, never panic, hand each reply to the call it
//! names at most once, and give the same replies however they are split.
//!
//! Input: two control bytes (codec and hello; a split point), then the stream from the
//! server (after our hello, the server's hello is expected first).
#![no_main]

use std::time::{Duration, Instant};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use easyrpc_proto::{decode_error, ClientConfig, ClientConnection, ClientReply, Codec, Replies};

#[derive(Default)]
struct Got(Vec<(u32, bool, Vec<u8>)>);

impl Replies<u32> for Got {
    fn reply(&mut self, r: ClientReply<'_, u32>) {
        let codec = Codec::Msgpack;
        if r.ok {
            let _ = codec.decode_framed::<rmpv::Value>(r.part);
        } else {
            let _ = decode_error(codec, r.part);
        }
        self.0.push((r.token, r.ok, r.part.to_vec()));
    }
}

fn run(codec: Codec, hello: bool, stream: &[u8], cut: Option<usize>) -> (Vec<(u32, bool, Vec<u8>)>, bool) {
    let now = Instant::now();
    let mut config = ClientConfig::new(codec);
    config.max_message_size = 1 << 16;
    config.hello = hello;
    let mut conn = ClientConnection::<u32>::new(config, now);
    conn.start(now);
    for token in 0..16u32 {
        let _ = conn.send_request(None, "m", &(token,), Duration::from_secs(1), None, None, token);
    }
    let mut out = easyrpc_proto::blob::Outbox::default();
    conn.take_transmit(now, &mut out);
    let mut got = Got::default();
    let mut rbuf = BytesMut::new();
    let mut failed = false;
    let pieces = match cut {
        Some(at) => vec![&stream[..at], &stream[at..]],
        None => vec![stream],
    };
    for piece in pieces {
        rbuf.extend_from_slice(piece);
        if conn.handle_input(&mut rbuf, &mut got).is_err() {
            failed = true;
            break;
        }
    }
    let mut tokens: Vec<u32> = got.0.iter().map(|g| g.0).collect();
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(tokens.len(), got.0.len(), "a call was answered twice");
    conn.handle_disconnect(|_, _| {});
    assert_eq!(conn.in_flight(), 0);
    (got.0, failed)
}

fuzz_target!(|data: &[u8]| {
    let Some((&[ctl, cut], body)) = data.split_first_chunk::<2>().map(|(c, b)| (c, b)) else {
        return;
    };
    let codec = rpc_fuzz::codec(ctl);
    let hello = ctl & 2 != 0 || codec == Codec::Bincode;
    let whole = run(codec, hello, body, None);
    let at = usize::from(cut) * body.len() / 256;
    let split = run(codec, hello, body, Some(at));
    // A stream that breaks the protocol may break it at another point when split; what
    // was handed over before must agree.
    if !whole.1 && !split.1 {
        assert_eq!(whole.0, split.0, "split at {at}");
    }
});
