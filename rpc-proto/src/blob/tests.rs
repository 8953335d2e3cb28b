use std::io::IoSlice;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use super::*;
use crate::connection::client::{ClientConfig, ClientConnection, Replies, Reply};
use crate::connection::server::{Request, ServerConfig, ServerConnection, Service, Transmit};
use crate::message::{encode_request, encode_response_ok};
use crate::{Args, Codec};

const CODECS: [Codec; 2] = [Codec::Msgpack, Codec::Bincode];

fn pattern(n: usize) -> Bytes {
    (0..n)
        .map(|i| (i * 7 + i / 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// The bytes an outbox writes, taken through `chunk` and `advance` in steps of `step`.
fn drain_by_chunks(mut out: Outbox, step: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while let Some(c) = out.chunk() {
        let n = c.len().min(step);
        got.extend_from_slice(&c[..n]);
        out.advance(n, usize::MAX);
    }
    assert!(out.is_empty());
    assert_eq!(out.len(), 0);
    got
}

/// The same through `slices`, `max` slices at a time, writing at most `step` bytes each.
fn drain_by_slices(mut out: Outbox, max: usize, step: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while !out.is_empty() {
        let mut slices = vec![IoSlice::new(&[]); max];
        let k = out.slices(&mut slices);
        assert!(k > 0);
        let mut budget = step;
        for s in &slices[..k] {
            let n = s.len().min(budget);
            got.extend_from_slice(&s[..n]);
            budget -= n;
        }
        let n = step - budget;
        out.advance(n, usize::MAX);
    }
    got
}

#[test]
fn a_shared_blob_is_written_as_if_it_were_in_the_buffer() {
    start_sharing();
    for codec in CODECS {
        for size in [0, 10, SHARE_MIN - 1, SHARE_MIN, SHARE_MIN + 1, 1 << 20] {
            let blob = Blob::from(pattern(size));
            // Two responses and a request, with blobs between other bytes.
            let mut plain = Vec::new();
            encode_response_ok(codec, &mut plain, 1, &blob).unwrap();
            encode_response_ok(codec, &mut plain, 2, &(5u8, blob.clone(), "after")).unwrap();
            encode_request(codec, &mut plain, 3, "put", &(blob.clone(), 9u32), None).unwrap();

            let mut out = Outbox::default();
            out.encode_shared(|b| encode_response_ok(codec, b, 1, &blob))
                .unwrap();
            out.encode_shared(|b| encode_response_ok(codec, b, 2, &(5u8, blob.clone(), "after")))
                .unwrap();
            out.encode_shared(|b| encode_request(codec, b, 3, "put", &(blob.clone(), 9u32), None))
                .unwrap();
            assert_eq!(out.len(), plain.len(), "{codec:?} {size}");
            // Large blobs stayed out of the buffer; small ones were copied.
            assert_eq!(out.has_blobs(), size >= SHARE_MIN, "{codec:?} {size}");
            if size >= SHARE_MIN {
                assert!(out.buf.len() < 200, "{codec:?} {size}: {}", out.buf.len());
            }
            assert_eq!(out.to_vec(), plain, "{codec:?} {size}");
            for step in [1, 3, 4096, usize::MAX] {
                let copy = || out.clone_cursor();
                if step >= 4096 || size < 4096 {
                    assert_eq!(drain_by_chunks(copy(), step), plain, "{codec:?} {size} {step}");
                }
                for max in [1, 2, 16] {
                    if step >= 4096 || size < 4096 {
                        assert_eq!(
                            drain_by_slices(copy(), max, step),
                            plain,
                            "{codec:?} {size} {max}"
                        );
                    }
                }
            }
        }
    }
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct File {
    name: String,
    data: Blob,
    tags: Vec<String>,
}

#[test]
fn a_blob_inside_a_struct_is_shared_and_decoded_in_place() {
    start_sharing();
    for codec in CODECS {
        let file = File {
            name: "a".repeat(40),
            data: Blob::from(pattern(SHARE_MIN * 2)),
            tags: vec!["x".into(), "y".into()],
        };
        let mut plain = Vec::new();
        encode_response_ok(codec, &mut plain, 1, &file).unwrap();
        let mut out = Outbox::default();
        out.encode_shared(|b| encode_response_ok(codec, b, 1, &file))
            .unwrap();
        assert!(out.has_blobs(), "{codec:?}");
        let wire = Bytes::from(out.to_vec());
        assert_eq!(wire, plain, "{codec:?}");

        // Decoded from a frame handed over as `Bytes`: the blob points into it.
        let result = result_part(codec, &wire);
        let decoded: File = with_frame(&wire, || codec.decode_framed(result).unwrap());
        assert_eq!(decoded, file);
        assert!(
            inside(&decoded.data, &wire),
            "{codec:?}: not a slice of the frame"
        );
        // Without the frame (or a small blob) it is a copy.
        let copied: File = codec.decode_framed(result).unwrap();
        assert!(!inside(&copied.data, &wire));
    }
}

#[test]
fn small_blobs_are_copied_even_from_a_frame() {
    start_sharing();
    for codec in CODECS {
        let mut wire = Vec::new();
        encode_response_ok(codec, &mut wire, 1, &Blob::from(pattern(SHARE_MIN - 1))).unwrap();
        let wire = Bytes::from(wire);
        let b: Blob = with_frame(&wire, || codec.decode_framed(result_part(codec, &wire)).unwrap());
        assert_eq!(b.len(), SHARE_MIN - 1);
        assert!(!inside(&b, &wire));
    }
}

#[test]
fn a_failed_encode_leaves_no_blob_behind() {
    start_sharing();
    #[derive(Serialize)]
    struct Bad {
        data: Blob,
        map: std::collections::BTreeMap<Vec<u8>, u8>,
    }
    // msgpack through rmp-serde writes any key; a failing `Serialize` is what fails.
    struct Fails;
    impl Serialize for Fails {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("no"))
        }
    }
    for codec in CODECS {
        let mut out = Outbox::default();
        out.encode_shared(|b| encode_response_ok(codec, b, 1, &1u8))
            .unwrap();
        let before = out.to_vec();
        let value = (Blob::from(pattern(SHARE_MIN)), Fails);
        assert!(out
            .encode_shared(|b| encode_response_ok(codec, b, 2, &value))
            .is_err());
        assert!(!out.has_blobs(), "{codec:?}");
        assert_eq!(out.to_vec(), before);
        // The next shared encode starts clean (no blob or length left over).
        let blob = Blob::from(pattern(SHARE_MIN));
        out.encode_shared(|b| encode_response_ok(codec, b, 3, &blob))
            .unwrap();
        let mut plain = before.clone();
        encode_response_ok(codec, &mut plain, 3, &blob).unwrap();
        assert_eq!(out.to_vec(), plain, "{codec:?}");
        let _ = Bad {
            data: Blob::new(),
            map: Default::default(),
        };
    }
}

#[test]
fn outside_a_shared_encode_a_blob_is_copied() {
    start_sharing();
    let blob = Blob::from(pattern(SHARE_MIN * 3));
    for codec in CODECS {
        let mut v = Vec::new();
        codec.encode(&mut v, &blob).unwrap();
        assert!(v.len() > blob.len());
        let back: Blob = codec.decode(&v).unwrap();
        assert_eq!(back, blob);
    }
    // Other serializers see a byte string.
    let j = serde_json::to_string(&Blob::from(&b"ab"[..])).unwrap();
    assert_eq!(j, "[97,98]");
    let back: Blob = serde_json::from_str(&j).unwrap();
    assert_eq!(&back[..], b"ab");
}

#[test]
fn appending_outboxes_keeps_the_order() {
    start_sharing();
    for codec in CODECS {
        let big = Blob::from(pattern(SHARE_MIN));
        let mut a = Outbox::default();
        a.encode_shared(|b| encode_response_ok(codec, b, 1, &big))
            .unwrap();
        a.advance(3, usize::MAX);
        let mut b = Outbox::default();
        b.encode_shared(|o| encode_response_ok(codec, o, 2, &(1u8, big.clone())))
            .unwrap();
        b.advance(2, usize::MAX);
        let (wa, wb) = (a.to_vec(), b.to_vec());
        a.append(&mut b);
        assert!(b.is_empty());
        assert_eq!(a.to_vec(), [wa, wb].concat());
    }
}

/// The result element of a response frame.
fn result_part(codec: Codec, frame: &[u8]) -> &[u8] {
    match crate::Message::parse(codec, frame).unwrap() {
        crate::Message::Response { outcome, .. } => outcome.unwrap(),
        m => panic!("{m:?}"),
    }
}

fn inside(b: &[u8], frame: &[u8]) -> bool {
    let (s, e) = (frame.as_ptr() as usize, frame.as_ptr() as usize + frame.len());
    let p = b.as_ptr() as usize;
    s <= p && p + b.len() <= e
}

/// Echoes `echo`'s blob and records whether it came as a slice of the request's params.
#[derive(Default)]
struct Echo {
    in_place: Vec<bool>,
}

impl Service for Echo {
    fn request(&mut self, tx: &mut Transmit<'_>, r: Request<'_>) {
        let mut args = Args::new(tx.codec(), r.params);
        let blob: Blob = args.next("data").unwrap();
        self.in_place.push(inside(&blob, r.params));
        tx.ok(r.msgid, &blob).unwrap();
    }
    fn notification(&mut self, _: &mut Transmit<'_>, _: &[u8], _: &[u8]) {}
    fn cancel(&mut self, _: u64) {}
    fn in_flight(&self) -> usize {
        0
    }
}

struct Got(Codec, Vec<Vec<u8>>);

impl Replies<u32> for Got {
    fn reply(&mut self, r: Reply<'_, u32>) {
        assert!(r.ok);
        let codec = self.0;
        let b: Blob = match r.frame {
            Some(f) => with_frame(f, || codec.decode_framed(r.part)),
            None => codec.decode_framed(r.part),
        }
        .unwrap();
        self.1.push(b.to_vec());
    }
}

#[test]
fn a_server_connection_echoes_large_blobs_without_copying_them() {
    start_sharing();
    for codec in CODECS {
        let now = Instant::now();
        let config = ServerConfig {
            max_message_size: 8 << 20,
            ..ServerConfig::default()
        };
        let mut server = ServerConnection::new(config, now);
        let mut cconfig = ClientConfig::new(codec);
        cconfig.max_message_size = 8 << 20;
        cconfig.hello = codec == Codec::Bincode;
        let mut client = ClientConnection::<u32>::new(cconfig, now);
        client.start(now);
        let sizes = [SHARE_MIN - 1, SHARE_MIN, 3 << 20, 100, SHARE_MIN * 2];
        let blobs: Vec<Blob> = sizes.iter().map(|&n| Blob::from(pattern(n))).collect();
        for (i, b) in blobs.iter().enumerate() {
            client
                .send_request(
                    None,
                    "echo",
                    &(b.clone(),),
                    Duration::from_secs(5),
                    None,
                    None,
                    i as u32,
                )
                .unwrap();
        }
        let mut wire = Outbox::default();
        client.take_transmit(now, &mut wire);
        assert!(
            wire.has_blobs(),
            "the client sends large blobs from their own buffers"
        );
        // The server reads the requests in pieces of odd sizes.
        let input = wire.to_vec();
        let mut echo = Echo::default();
        let mut reply = Vec::new();
        let mut vectored = false;
        for piece in input.chunks(100_003) {
            server.read_buf().extend_from_slice(piece);
            server.handle_input(now, &mut echo).unwrap();
            // A reply over the write buffer's high-water mark (blobs count) holds the
            // next requests until it is written.
            loop {
                vectored |= server.is_transmit_vectored();
                drain_server(&mut server, &mut reply);
                if !server.has_held_input(0) {
                    break;
                }
                server.handle_input(now, &mut echo).unwrap();
            }
        }
        assert_eq!(echo.in_place, sizes.map(|n| n >= SHARE_MIN).to_vec(), "{codec:?}");
        assert!(vectored);
        // (With bincode the server's hello comes first: the client reads it.)
        let mut rbuf = BytesMut::from(&reply[..]);
        let mut got = Got(codec, Vec::new());
        client.handle_input(&mut rbuf, &mut got).unwrap();
        let want: Vec<Vec<u8>> = blobs.iter().map(|b| b.to_vec()).collect();
        assert_eq!(got.1, want, "{codec:?}");
    }
}

/// Write everything the server has queued into `reply`, with vectored writes of a few
/// slices and at most 1 MiB at a time.
fn drain_server(server: &mut ServerConnection, reply: &mut Vec<u8>) {
    while server.poll_transmit().is_some() {
        let mut slices = [IoSlice::new(&[]); 3];
        let k = server.transmit_slices(&mut slices);
        let n: usize = slices[..k].iter().map(|s| s.len()).sum::<usize>().min(1 << 20);
        let mut left = n;
        for s in &slices[..k] {
            let m = s.len().min(left);
            reply.extend_from_slice(&s[..m]);
            left -= m;
        }
        server.advance_transmit(n);
    }
}
