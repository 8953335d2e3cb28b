use super::*;
use crate::message::{encode_request, encode_response_ok, Message};
use hex_literal::hex;

fn text(n: usize) -> String {
    let words = ["alpha ", "beta ", "gamma ", "delta ", "epsilon "];
    let mut s = String::with_capacity(n + 8);
    let mut i = 0usize;
    while s.len() < n {
        s.push_str(words[(i * 7 + i / 3) % words.len()]);
        i += 1;
    }
    s.truncate(n);
    s
}

/// Bytes that zstd cannot shrink (a xorshift sequence).
fn noise(n: usize) -> serde_bytes::ByteBuf {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    serde_bytes::ByteBuf::from(
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect::<Vec<u8>>(),
    )
}

#[test]
fn compressed_iff_over_the_threshold_and_smaller() {
    for codec in [Codec::Msgpack, Codec::Bincode] {
        let mut plain = Vec::new();
        encode_response_ok(codec, &mut plain, 7, &text(4000)).unwrap();
        let threshold = plain.len();
        for t in [
            threshold - 2,
            threshold - 1,
            threshold,
            threshold + 1,
            threshold + 2,
        ] {
            let z = Zstd::on(&Compression::new(t));
            let mut out = b"before".to_vec();
            out.extend_from_slice(&plain);
            z.apply(codec, &mut out, 6);
            assert_eq!(&out[..6], b"before");
            let sent = &out[6..];
            if plain.len() > t {
                let inner = compressed(codec, sent).expect("compressed");
                assert!(sent.len() < plain.len());
                assert_eq!(Framer::new(codec, 1 << 20).decode(sent), Ok(Some(sent.len())));
                assert_eq!(decompress(codec, inner, 1 << 20).unwrap(), plain, "{codec:?} {t}");
            } else {
                assert_eq!(sent, plain, "{codec:?} {t}");
            }
        }
        // Incompressible: sent as it was.
        let mut big = Vec::new();
        encode_response_ok(codec, &mut big, 7, &noise(100_000)).unwrap();
        let mut out = big.clone();
        Zstd::on(&Compression::new(0)).apply(codec, &mut out, 0);
        assert_eq!(out, big);
        // Off: nothing is compressed.
        let mut out = plain.clone();
        Zstd::OFF.apply(codec, &mut out, 0);
        assert_eq!(out, plain);
    }
}

#[test]
fn headers_of_every_ext_size() {
    for (n, head) in [
        (10usize, &hex!("c7 0a 5a")[..]),
        (300, &hex!("c8 01 2c 5a")[..]),
        (70_000, &hex!("c9 00 01 11 70 5a")[..]),
    ] {
        let mut out = Vec::new();
        write_header(Codec::Msgpack, &mut out, n);
        assert_eq!(out, head);
        out.resize(out.len() + n, 0);
        assert_eq!(
            Framer::new(Codec::Msgpack, 1 << 20).decode(&out),
            Ok(Some(out.len()))
        );
        assert_eq!(compressed(Codec::Msgpack, &out).map(<[u8]>::len), Some(n));
    }
    let mut out = Vec::new();
    write_header(Codec::Bincode, &mut out, 10);
    assert_eq!(out, hex!("0b 00 00 00 5a"));
    // Other ext types and ordinary messages are not compressed messages.
    assert_eq!(compressed(Codec::Msgpack, &hex!("c7 01 05 00")), None);
    assert_eq!(compressed(Codec::Msgpack, &hex!("94 01 01 c0 05")), None);
    assert_eq!(compressed(Codec::Bincode, &hex!("01 00 00 00 01")), None);
}

#[test]
fn every_split_point_frames_a_compressed_message() {
    for codec in [Codec::Msgpack, Codec::Bincode] {
        let mut out = Vec::new();
        encode_request(codec, &mut out, 3, "echo", &(text(20_000),), None).unwrap();
        let plain = out.clone();
        Zstd::on(&Compression::default()).apply(codec, &mut out, 0);
        assert!(compressed(codec, &out).is_some());
        for cut in 0..out.len() {
            let mut f = Framer::new(codec, 1 << 20);
            assert_eq!(f.decode(&out[..cut]), Ok(None), "{codec:?} cut at {cut}");
            assert_eq!(f.decode(&out), Ok(Some(out.len())), "{codec:?} cut at {cut}");
        }
        let msg = decompress(codec, compressed(codec, &out).unwrap(), 1 << 20).unwrap();
        assert_eq!(msg, plain);
        assert!(matches!(
            Message::parse(codec, &msg),
            Ok(Message::Request { msgid: 3, .. })
        ));
    }
}

#[test]
fn corrupt_frames_are_clear_errors() {
    let codec = Codec::Msgpack;
    let mut plain = Vec::new();
    encode_response_ok(codec, &mut plain, 1, &text(10_000)).unwrap();
    let z = zstd::bulk::compress(&plain, 3).unwrap();
    let check = |z: &[u8], what: &str| match decompress(codec, z, 1 << 20) {
        Err(e @ FrameError::Decompress { .. }) => {
            assert!(e.to_string().contains("compressed message"), "{e}");
        }
        other => panic!("{what}: {other:?}"),
    };
    check(b"not zstd at all", "garbage");
    check(&z[..z.len() / 2], "truncated");
    let mut flipped = z.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0xff;
    flipped[mid + 1] ^= 0x55;
    // zstd without a checksum may decode a flipped byte into other bytes: then the
    // content is not the message any more, or not a message at all.
    match decompress(codec, &flipped, 1 << 20) {
        Err(FrameError::Decompress { .. }) => {}
        Ok(msg) => assert_ne!(msg, plain),
        other => panic!("flipped: {other:?}"),
    }
    let mut two = z.clone();
    two.extend_from_slice(&z);
    check(&two, "two frames");
    // Content that is not one message: two messages, half a message, a compressed one.
    let doubled = [plain.clone(), plain.clone()].concat();
    check(&zstd::bulk::compress(&doubled, 3).unwrap(), "two messages");
    check(&zstd::bulk::compress(&plain[..100], 3).unwrap(), "half a message");
    let mut nested = plain.clone();
    Zstd::on(&Compression::new(0)).apply(codec, &mut nested, 0);
    check(&zstd::bulk::compress(&nested, 3).unwrap(), "nested");
    // A frame without a content size (streamed).
    let mut streamed = Vec::new();
    {
        use std::io::Write;
        let mut e = zstd::stream::write::Encoder::new(&mut streamed, 3).unwrap();
        e.include_contentsize(false).unwrap();
        e.write_all(&plain).unwrap();
        e.finish().unwrap();
    }
    check(&streamed, "no content size");
}

#[test]
fn a_bomb_is_refused_from_its_header() {
    // 1 GiB of zeros, as a real zstd frame of 8192 RLE blocks of 128 KiB (32 KiB in
    // all): its header says 1 GiB, and it is refused before anything is allocated.
    let mut z = hex!("28 b5 2f fd e0").to_vec();
    z.extend_from_slice(&(1u64 << 30).to_le_bytes());
    for i in 0..8192u32 {
        let last = u32::from(i == 8191);
        let head = last | (1 << 1) | (128 * 1024) << 3;
        z.extend_from_slice(&head.to_le_bytes()[..3]);
        z.push(0);
    }
    assert_eq!(zstd::zstd_safe::find_frame_compressed_size(&z), Ok(z.len()));
    match decompress(Codec::Msgpack, &z, 1 << 20) {
        Err(e @ FrameError::DecompressedTooLarge { declared, limit }) => {
            assert_eq!((declared, limit), (1 << 30, 1 << 20));
            assert!(e.to_string().contains("compressed message"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    // A frame that declares less than it holds stops at what it declared.
    let mut plain = Vec::new();
    encode_response_ok(Codec::Msgpack, &mut plain, 1, &text(10_000)).unwrap();
    let mut z = zstd::bulk::compress(&plain, 3).unwrap();
    // The frame header's single-segment content size (2 bytes for this size) is
    // after the magic (4) and the descriptor (1).
    let fhd = z[4];
    assert_eq!(fhd >> 6, 1, "a 2-byte content size");
    let single = fhd & 0x20 != 0;
    let at = if single { 5 } else { 6 };
    z[at..at + 2].copy_from_slice(&(300u16 - 256).to_le_bytes());
    assert!(matches!(
        decompress(Codec::Msgpack, &z, 1 << 20),
        Err(FrameError::Decompress { .. })
    ));
}

// A client and a server connection talking through bytes, as the transports would carry
// them: every round trip below goes through both state machines.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use serde_bytes::ByteBuf;

use crate::connection::client::{ClientConfig, ClientConnection, ProtocolError, Replies, Reply};
use crate::connection::server::{
    ConnEvent, Fatal, Request, ServerConfig, ServerConnection, Service, Transmit,
};
use crate::handshake::{features, Hello};
use crate::ParseError;

/// Answers `echo [bytes]` with the bytes; counts malformed messages.
#[derive(Default)]
struct Echo {
    seen: Vec<Vec<u8>>,
    malformed: usize,
}

impl Service for Echo {
    fn request(&mut self, tx: &mut Transmit<'_>, r: Request<'_>) {
        let mut args = crate::Args::new(tx.codec(), r.params);
        args.expect(1).unwrap();
        let data: ByteBuf = args.next("data").unwrap();
        self.seen.push(data.to_vec());
        tx.ok(r.msgid, &data).unwrap();
    }

    fn notification(&mut self, _tx: &mut Transmit<'_>, _method: &[u8], _params: &[u8]) {}

    fn cancel(&mut self, _msgid: u64) {}

    fn in_flight(&self) -> usize {
        0
    }

    fn event(&mut self, event: ConnEvent<'_>) {
        if let ConnEvent::Malformed(ParseError { .. }) = event {
            self.malformed += 1;
        }
    }
}

/// Records each reply: token, ok, the result decoded as bytes.
#[derive(Default)]
struct Got(Vec<(u32, bool, Vec<u8>)>, Option<crate::Codec>);

impl Replies<u32> for Got {
    fn reply(&mut self, r: Reply<'_, u32>) {
        // Unwrap: the codec is set before any reply.
        let data: ByteBuf = self.1.unwrap().decode(r.part).unwrap();
        self.0.push((r.token, r.ok, data.into_vec()));
    }
}

fn compressible(n: usize) -> Vec<u8> {
    text(n).into_bytes()
}

/// A server that compresses above `server_threshold` and a client that offers zstd
/// (`client_threshold`, or not at all), with the hello exchanged.
fn pair(
    codec: Codec,
    client_threshold: Option<usize>,
    server_threshold: usize,
    max: usize,
) -> (ClientConnection<u32>, ServerConnection, Echo, Instant) {
    let now = Instant::now();
    let mut cc = ClientConfig::new(codec);
    cc.hello = true;
    cc.max_message_size = max;
    if let Some(t) = client_threshold {
        cc.features |= features::ZSTD;
        cc.compression = Compression::new(t);
    }
    let mut client = ClientConnection::new(cc, now);
    client.start(now);
    let sc = ServerConfig {
        max_message_size: max,
        compression: Compression::new(server_threshold),
        ..ServerConfig::default()
    };
    let mut server = ServerConnection::new(sc, now);
    let mut svc = Echo::default();
    let hello = take_client(&mut client, now);
    server.read_buf().extend_from_slice(&hello);
    server.handle_input(now, &mut svc).unwrap();
    let answer = take_server(&mut server);
    let mut rbuf = BytesMut::from(&answer[..]);
    client.handle_input(&mut rbuf, &mut Got::default()).unwrap();
    assert!(!client.is_awaiting_hello());
    let agreed = client_threshold.map_or(0, |_| features::ZSTD);
    assert_eq!(client.features() & features::ZSTD, agreed);
    assert_eq!(server.features() & features::ZSTD, agreed);
    (client, server, svc, now)
}

fn take_client(c: &mut ClientConnection<u32>, now: Instant) -> Vec<u8> {
    let mut out = crate::blob::Outbox::default();
    c.take_transmit(now, &mut out);
    out.to_vec()
}

fn take_server(s: &mut ServerConnection) -> Vec<u8> {
    let out = s.poll_transmit().unwrap_or_default().to_vec();
    s.advance_transmit(out.len());
    out
}

fn send_echo(c: &mut ClientConnection<u32>, data: &[u8], token: u32, now: Instant) -> Vec<u8> {
    c.send_request(
        None,
        "echo",
        &(ByteBuf::from(data),),
        Duration::from_secs(5),
        None,
        None,
        token,
    )
    .unwrap();
    take_client(c, now)
}

/// The size of `data`'s echo request and of its reply, uncompressed, on a connection that
/// said hello.
fn plain_sizes(codec: Codec, data: &[u8]) -> (usize, usize) {
    let (mut c, _, _, now) = pair(codec, None, usize::MAX, 64 << 20);
    let request = send_echo(&mut c, data, 0, now).len();
    let mut reply = Vec::new();
    encode_response_ok(codec, &mut reply, 1, &ByteBuf::from(data)).unwrap();
    (request, reply.len())
}

fn is_compressed(codec: Codec, frame: &[u8]) -> bool {
    compressed(codec, frame).is_some()
}

#[test]
fn round_trips_at_every_size_around_the_threshold_at_every_split_point() {
    for codec in [Codec::Msgpack, Codec::Bincode] {
        let data = compressible(6000);
        let (request_size, reply_size) = plain_sizes(codec, &data);
        for d in [-2isize, -1, 0, 1, 2] {
            // The threshold moves around the message: it is d bytes larger than the
            // threshold (compressed when d > 0).
            let client_t = request_size.checked_add_signed(-d).unwrap();
            let server_t = reply_size.checked_add_signed(-d).unwrap();
            let (mut c, mut s, mut svc, now) = pair(codec, Some(client_t), server_t, 1 << 20);
            let wire = send_echo(&mut c, &data, 9, now);
            assert_eq!(is_compressed(codec, &wire), d > 0, "{codec:?} request, d = {d}");
            if d > 0 {
                assert!(wire.len() < request_size / 4, "{} of {request_size}", wire.len());
            } else {
                assert_eq!(wire.len(), request_size);
            }
            // The request at every split point gives the same reply bytes.
            let mut whole = None;
            for cut in 0..=wire.len() {
                let (_, mut s2, mut svc2, _) = pair(codec, Some(client_t), server_t, 1 << 20);
                for piece in [&wire[..cut], &wire[cut..]] {
                    s2.read_buf().extend_from_slice(piece);
                    s2.handle_input(now, &mut svc2).unwrap();
                }
                assert_eq!(svc2.seen, std::slice::from_ref(&data), "{codec:?} cut at {cut}");
                let out = take_server(&mut s2);
                assert_eq!(
                    *whole.get_or_insert_with(|| out.clone()),
                    out,
                    "{codec:?} cut at {cut}"
                );
            }
            let reply = whole.unwrap();
            assert_eq!(is_compressed(codec, &reply), d > 0, "{codec:?} reply, d = {d}");
            s.read_buf().extend_from_slice(&wire);
            s.handle_input(now, &mut svc).unwrap();
            assert_eq!(take_server(&mut s), reply);
            // The reply at every split point reaches its caller whole.
            for cut in 0..=reply.len() {
                let (mut c2, _, _, _) = pair(codec, Some(client_t), server_t, 1 << 20);
                send_echo(&mut c2, &data, 9, now);
                let mut got = Got(Vec::new(), Some(codec));
                let mut rbuf = BytesMut::from(&reply[..cut]);
                c2.handle_input(&mut rbuf, &mut got).unwrap();
                rbuf.extend_from_slice(&reply[cut..]);
                c2.handle_input(&mut rbuf, &mut got).unwrap();
                assert_eq!(got.0, [(9, true, data.clone())], "{codec:?} cut at {cut}");
                assert!(rbuf.is_empty());
            }
        }
    }
}

#[test]
fn large_compressible_and_incompressible_messages_round_trip() {
    for codec in [Codec::Msgpack, Codec::Bincode] {
        for (data, shrinks) in [(compressible(1 << 20), true), (noise(1 << 20).into_vec(), false)] {
            let (mut c, mut s, mut svc, now) =
                pair(codec, Some(DEFAULT_THRESHOLD), DEFAULT_THRESHOLD, 2 << 20);
            let wire = send_echo(&mut c, &data, 1, now);
            assert_eq!(is_compressed(codec, &wire), shrinks);
            s.read_buf().extend_from_slice(&wire);
            s.handle_input(now, &mut svc).unwrap();
            assert_eq!(svc.seen.len(), 1);
            assert!(svc.seen[0] == data);
            let reply = take_server(&mut s);
            assert_eq!(is_compressed(codec, &reply), shrinks);
            if shrinks {
                assert!(reply.len() < data.len() / 10, "{}", reply.len());
            }
            let mut got = Got(Vec::new(), Some(codec));
            let mut rbuf = BytesMut::from(&reply[..]);
            c.handle_input(&mut rbuf, &mut got).unwrap();
            assert_eq!(got.0.len(), 1);
            assert!(got.0[0].2 == data);
        }
    }
}

#[test]
fn nothing_is_compressed_unless_the_client_offered_it() {
    for codec in [Codec::Msgpack, Codec::Bincode] {
        let data = compressible(100_000);
        let (mut c, mut s, mut svc, now) = pair(codec, None, 0, 1 << 20);
        let wire = send_echo(&mut c, &data, 1, now);
        assert!(!is_compressed(codec, &wire));
        s.read_buf().extend_from_slice(&wire);
        s.handle_input(now, &mut svc).unwrap();
        let reply = take_server(&mut s);
        assert!(!is_compressed(codec, &reply));
        assert!(reply.len() > data.len());
    }
    // A plain peer (no hello) gets plain msgpack, and a compressed message from it is an
    // ordinary malformed message, not decompressed.
    let now = Instant::now();
    let sc = ServerConfig {
        compression: Compression::new(0),
        ..ServerConfig::default()
    };
    let mut s = ServerConnection::new(sc, now);
    let mut svc = Echo::default();
    let data = compressible(100_000);
    let mut wire = Vec::new();
    encode_request(
        Codec::Msgpack,
        &mut wire,
        1,
        "echo",
        &(ByteBuf::from(&data[..]),),
        None,
    )
    .unwrap();
    let mut compressed_request = wire.clone();
    Zstd::on(&Compression::new(0)).apply(Codec::Msgpack, &mut compressed_request, 0);
    s.read_buf().extend_from_slice(&compressed_request);
    s.read_buf().extend_from_slice(&wire);
    s.handle_input(now, &mut svc).unwrap();
    assert_eq!(svc.malformed, 1);
    assert_eq!(svc.seen.len(), 1);
    let reply = take_server(&mut s);
    assert_eq!(reply[0], 0x94, "a plain four-element array");
    assert!(reply.len() > data.len());
}

#[test]
fn a_request_queued_before_the_hello_answer_goes_uncompressed() {
    let now = Instant::now();
    let mut cc = ClientConfig::new(Codec::Msgpack);
    cc.hello = true;
    cc.features |= features::ZSTD;
    cc.compression = Compression::new(0);
    let mut c = ClientConnection::<u32>::new(cc, now);
    c.start(now);
    let wire = send_echo(&mut c, &compressible(10_000), 1, now);
    let (_, hello_len) = Hello::decode(&wire).unwrap().unwrap();
    assert_eq!(
        wire[hello_len], 0x95,
        "the request with its extension element, uncompressed"
    );
}

#[test]
fn a_corrupt_compressed_request_is_fatal_for_its_connection() {
    for codec in [Codec::Msgpack, Codec::Bincode] {
        let (mut c, mut s, mut svc, now) = pair(codec, Some(0), 0, 1 << 20);
        let mut wire = send_echo(&mut c, &compressible(50_000), 1, now);
        assert!(is_compressed(codec, &wire));
        // Scramble the zstd frame after its header.
        let head = wire.len() - compressed(codec, &wire).unwrap().len();
        for b in &mut wire[head + 12..] {
            *b = b.rotate_left(3) ^ 0xa5;
        }
        s.read_buf().extend_from_slice(&wire);
        let r = s.handle_input(now, &mut svc);
        let Err(Fatal::Frame(e @ FrameError::Decompress { .. })) = r else {
            panic!("{codec:?}: {r:?}")
        };
        assert!(e.to_string().starts_with("corrupt compressed message"), "{e}");
        assert!(svc.seen.is_empty());
        assert!(s.should_linger());
        assert!(!s.wants_read(0));
    }
}

#[test]
fn a_compressed_request_over_the_limit_once_decompressed_is_refused() {
    for codec in [Codec::Msgpack, Codec::Bincode] {
        // 200 KB of text compresses far below the server's 64 KiB limit.
        let (mut c, _, _, now) = pair(codec, Some(0), 0, 1 << 20);
        let wire = send_echo(&mut c, &compressible(200_000), 1, now);
        assert!(wire.len() < 64 * 1024);
        let sc = ServerConfig {
            max_message_size: 64 * 1024,
            ..ServerConfig::default()
        };
        let mut s = ServerConnection::new(sc, now);
        let mut svc = Echo::default();
        let mut input = Vec::new();
        Hello::new(codec).with_features(features::ZSTD).encode(&mut input);
        input.extend_from_slice(&wire);
        s.read_buf().extend_from_slice(&input);
        let r = s.handle_input(now, &mut svc);
        let Err(Fatal::Frame(e @ FrameError::DecompressedTooLarge { limit: 65536, .. })) = r else {
            panic!("{codec:?}: {r:?}")
        };
        assert!(e.to_string().contains("compressed message"), "{e}");
        assert!(svc.seen.is_empty());
    }
}

#[test]
fn a_corrupt_compressed_reply_is_a_protocol_error() {
    for codec in [Codec::Msgpack, Codec::Bincode] {
        let (mut c, _, _, now) = pair(codec, Some(DEFAULT_THRESHOLD), 0, 1 << 20);
        send_echo(&mut c, b"hi", 1, now);
        let mut reply = Vec::new();
        encode_response_ok(codec, &mut reply, 1, &ByteBuf::from(compressible(50_000))).unwrap();
        Zstd::on(&Compression::new(0)).apply(codec, &mut reply, 0);
        let n = reply.len();
        reply[n - 20..].fill(0xee);
        let mut got = Got(Vec::new(), Some(codec));
        let r = c.handle_input(&mut BytesMut::from(&reply[..]), &mut got);
        assert!(
            matches!(r, Err(ProtocolError::Frame(FrameError::Decompress { .. }))),
            "{codec:?}: {r:?}"
        );
        assert!(got.0.is_empty());
    }
}

#[test]
fn replies_given_later_are_compressed_too_each_on_its_own() {
    for codec in [Codec::Msgpack, Codec::Bincode] {
        let (_, mut s, _, _) = pair(codec, Some(DEFAULT_THRESHOLD), DEFAULT_THRESHOLD, 1 << 20);
        let data = ByteBuf::from(compressible(50_000));
        // Three replies through one guard (a small one between two large ones), then one
        // through another.
        {
            let mut tx = s.transmit();
            tx.ok(1, &data).unwrap();
            tx.ok(2, &ByteBuf::from(&b"small"[..])).unwrap();
            tx.ok(3, &data).unwrap();
        }
        s.transmit().ok(4, &data).unwrap();
        let out = take_server(&mut s);
        let mut rest = &out[..];
        let mut got = Vec::new();
        while !rest.is_empty() {
            let n = Framer::new(codec, 1 << 20).decode(rest).unwrap().unwrap();
            let frame = &rest[..n];
            let msg = match compressed(codec, frame) {
                Some(z) => decompress(codec, z, 1 << 20).unwrap(),
                None => frame.to_vec(),
            };
            let Ok(Message::Response {
                msgid,
                outcome: Ok(v),
            }) = Message::parse(codec, &msg)
            else {
                panic!("{codec:?}: {frame:02x?}")
            };
            let v: ByteBuf = codec.decode(v).unwrap();
            got.push((msgid, compressed(codec, frame).is_some(), v.len()));
            rest = &rest[n..];
        }
        assert_eq!(
            got,
            [
                (1, true, 50_000),
                (2, false, 5),
                (3, true, 50_000),
                (4, true, 50_000)
            ],
            "{codec:?}"
        );
    }
}
