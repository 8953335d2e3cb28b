//! Property test of the write buffer with blobs beside it (`easyrpc_proto::blob::Outbox`):
//! whatever messages are encoded into it, with large blobs shared or small ones copied,
//! and however a transport takes its bytes (contiguous chunks or vectored slices, partial
//! writes of any size), the bytes written are exactly those of the same messages encoded
//! plainly into a `Vec`.
//!
//! Seeded (`RngSeed::Fixed`), nothing persisted: every run tests the same cases.

use std::io::IoSlice;

use easyrpc_proto::blob::{Outbox, SHARE_MIN};
use easyrpc_proto::{encode_request, encode_response_ok, Blob, Codec};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

/// One message: a request or a response carrying a blob between other values.
#[derive(Debug, Clone)]
struct Msg {
    bincode: bool,
    request: bool,
    msgid: u64,
    tag: u32,
    size: usize,
    text: String,
}

fn msg() -> impl Strategy<Value = Msg> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
        any::<u32>(),
        prop_oneof![
            0..200usize,
            (SHARE_MIN - 2)..(SHARE_MIN + 2),
            SHARE_MIN..(3 * SHARE_MIN)
        ],
        "[a-z]{0,40}",
    )
        .prop_map(|(bincode, request, msgid, tag, size, text)| Msg {
            bincode,
            request,
            msgid,
            tag,
            size,
            text,
        })
}

fn encode(m: &Msg, blob: &Blob, out: &mut Vec<u8>) {
    let codec = if m.bincode { Codec::Bincode } else { Codec::Msgpack };
    let value = (m.tag, blob.clone(), m.text.as_str());
    if m.request {
        encode_request(codec, out, m.msgid, "put", &value, None).unwrap();
    } else {
        encode_response_ok(codec, out, m.msgid, &value).unwrap();
    }
}

/// How a transport takes bytes: vectored or not, with at most this many slices, writing at
/// most this many bytes per call.
#[derive(Debug, Clone)]
struct Write {
    vectored: bool,
    slices: usize,
    max: usize,
}

fn write() -> impl Strategy<Value = Write> {
    (
        any::<bool>(),
        1..6usize,
        prop_oneof![1..64usize, 1000..70_000usize, Just(usize::MAX)],
    )
        .prop_map(|(vectored, slices, max)| Write {
            vectored,
            slices,
            max,
        })
}

/// Take everything from `out` the way `writes` say (cycling), returning the bytes taken.
fn drain(out: &mut Outbox, writes: &[Write]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut i = 0;
    while !out.is_empty() {
        let w = &writes[i % writes.len()];
        i += 1;
        let mut budget = w.max;
        if w.vectored {
            let mut slices = vec![IoSlice::new(&[]); w.slices];
            let k = out.slices(&mut slices);
            for s in &slices[..k] {
                let n = s.len().min(budget);
                got.extend_from_slice(&s[..n]);
                budget -= n;
            }
        } else if let Some(c) = out.chunk() {
            let n = c.len().min(budget);
            got.extend_from_slice(&c[..n]);
            budget -= n;
        }
        let n = w.max - budget;
        assert!(n > 0, "a write took nothing while bytes were waiting");
        out.advance(n, 1 << 20);
    }
    assert_eq!(out.len(), 0);
    got
}

proptest! {
    #![proptest_config(Config { cases: 64, rng_seed: RngSeed::Fixed(23), failure_persistence: None, ..Config::default() })]

    #[test]
    fn an_outbox_writes_what_a_plain_buffer_holds(
        msgs in prop::collection::vec(msg(), 1..6),
        writes in prop::collection::vec(write(), 1..5),
        split in 0..6usize,
    ) {
        // Sharing starts at the first large blob serialized in the process.
        let _ = Codec::Msgpack.encode(&mut Vec::new(), &Blob::from(vec![0u8; SHARE_MIN]));
        let mut plain = Vec::new();
        let (mut first, mut second) = (Outbox::default(), Outbox::default());
        for (i, m) in msgs.iter().enumerate() {
            let blob = Blob::from((0..m.size).map(|j| (j * 31 + i) as u8).collect::<Vec<u8>>());
            encode(m, &blob, &mut plain);
            // The first `split` messages in one outbox, the rest in another, appended to it.
            let out = if i < split { &mut first } else { &mut second };
            out.encode_shared(|b| {
                encode(m, &blob, b);
                Ok::<(), ()>(())
            })
            .unwrap();
        }
        first.append(&mut second);
        prop_assert!(second.is_empty());
        prop_assert_eq!(first.len(), plain.len());
        prop_assert_eq!(first.has_blobs(), msgs.iter().any(|m| m.size >= SHARE_MIN));
        prop_assert!(first.to_vec() == plain);
        prop_assert!(drain(&mut first, &writes) == plain);
    }
}
