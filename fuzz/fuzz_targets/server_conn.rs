//! The server's connection state machine, as the server runs it: any bytes from a peer
//! (after a hello naming the codec of the control byte's low bit, or none), split at the
//! points the control bytes pick, never panic, and give the same bytes out however they
//! are split.
//!
//! Input: two control bytes (codec and hello; a split point), then the stream from the peer.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use easyrpc_proto::{Codec, Hello, Request, ServerConfig, ServerConnection, ServerError, Service, Transmit};

/// Answers every request (a tenth of them with an error), decoding its arguments.
struct Echo;

impl Service for Echo {
    fn request(&mut self, tx: &mut Transmit<'_>, r: Request<'_>) {
        rpc_fuzz::decode_args(tx.codec(), r.params);
        if r.msgid % 10 == 0 {
            tx.err(r.msgid, &ServerError::method_not_found(r.method));
        } else {
            let _ = tx.ok(r.msgid, &r.params.len());
        }
    }

    fn notification(&mut self, tx: &mut Transmit<'_>, _method: &[u8], params: &[u8]) {
        rpc_fuzz::decode_args(tx.codec(), params);
    }

    fn cancel(&mut self, _msgid: u64) {}

    fn in_flight(&self) -> usize {
        0
    }
}

fn run(stream: &[u8], cuts: &[usize]) -> (Vec<u8>, bool) {
    let now = Instant::now();
    let mut config = ServerConfig::default();
    config.max_message_size = 1 << 16;
    config.heartbeat_timeout = Duration::from_secs(1);
    let mut conn = ServerConnection::new(config, now);
    let mut out = Vec::new();
    let mut from = 0;
    let mut fatal = false;
    for &to in cuts.iter().chain(std::iter::once(&stream.len())) {
        let to = to.clamp(from, stream.len());
        if conn.wants_read(0) {
            conn.read_buf().extend_from_slice(&stream[from..to]);
            fatal |= conn.handle_input(now, &mut Echo).is_err();
        }
        from = to;
        while let Some(bytes) = conn.poll_transmit() {
            out.extend_from_slice(bytes);
            let n = bytes.len();
            conn.advance_transmit(n);
        }
    }
    let _ = conn.handle_eof();
    let _ = conn.handle_timeout(now + Duration::from_secs(2), 0);
    assert!(conn.is_done(0));
    (out, fatal)
}

fuzz_target!(|data: &[u8]| {
    let Some((&[ctl, cut], body)) = data.split_first_chunk::<2>().map(|(c, b)| (c, b)) else {
        return;
    };
    let codec = rpc_fuzz::codec(ctl);
    let mut stream = Vec::new();
    if ctl & 2 != 0 || codec == Codec::Bincode {
        Hello::new(codec)
            .with_session((ctl & 4 != 0).then_some(7))
            .encode(&mut stream);
    }
    stream.extend_from_slice(body);
    let whole = run(&stream, &[]);
    let at = usize::from(cut) * stream.len() / 256;
    let split = run(&stream, &[at, at + usize::from(ctl >> 3)]);
    assert_eq!(whole, split, "the same stream split at {at} gave other bytes out");
});
