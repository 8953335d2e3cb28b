//! Property tests on the stable toolchain, the `cargo test` counterpart of the fuzz targets
//! in `fuzz/` (issue 17):
//!
//! - no panic on arbitrary or mutated input, for the framer, `Message::parse` and argument
//!   decoding with both codecs into representative types;
//! - no allocation beyond the input's size: while decoding an input of `n` bytes, no single
//!   allocation is larger than `n` times the largest element type plus a small constant
//!   (a counting global allocator records the largest one, on the decoding thread only);
//! - split input equals whole input for the framer, at every split point of valid
//!   messages and at random splits of runs of them.
//!
//! The generator is seeded (`RngSeed::Fixed`) and nothing is persisted, so every run tests
//! the same cases; the whole file runs in a few seconds in a debug build.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::time::Duration;

use easyrpc_proto::{
    decode_error, encode_notification, encode_request, encode_response_err, encode_response_ok, Args, Codec,
    ErrorCode, Framer, FromArgs, Message, ServerError,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// The system allocator, recording the largest single allocation made by a thread while
/// that thread has [`largest_allocation`] running.
struct Counting;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn record(size: usize) {
    // `try_with`: the allocator also runs while thread-locals are being torn down.
    if ARMED.try_with(Cell::get).unwrap_or(false) {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
    }
}

// SAFETY: every call is passed straight to `System`, which upholds `GlobalAlloc`'s
// contract; the bookkeeping touches only const-initialised thread-locals (no allocation).
// A global allocator is the one way to see every allocation; `unsafe` is confined to this
// test binary.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Run `f` and return the size of the largest single allocation it made on this thread.
fn largest_allocation(f: impl FnOnce()) -> usize {
    LARGEST.with(|l| l.set(0));
    ARMED.with(|a| a.set(true));
    f();
    ARMED.with(|a| a.set(false));
    LARGEST.with(Cell::get)
}

/// The most a decode of `n` bytes may allocate at once: each element the input can hold
/// (at most one per byte) times the largest in-memory element below (a hash map's bucket
/// array is about 2.3 buckets per element), plus room for an error message.
fn allowed(n: usize) -> usize {
    n * 512 + 4096
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Inner {
    tags: Vec<String>,
    data: ByteBuf,
    score: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Outer {
    name: String,
    id: u64,
    inner: Inner,
    counts: HashMap<String, i32>,
    choice: Choice,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Choice {
    Unit,
    Text(String),
    Pair(i8, Vec<u16>),
    Named { v: Vec<Inner> },
}

/// Decode `bytes` as every representative type through every entry point; panics are
/// the failures (errors are expected).
fn decode_everything(codec: Codec, bytes: &[u8]) {
    macro_rules! each {
        ($($t:ty),*) => {
            $(
                let _ = codec.decode::<$t>(bytes);
                let _ = codec.decode_framed::<$t>(bytes);
                if let Ok((_, used)) = codec.decode_prefix::<$t>(bytes) {
                    assert!(used <= bytes.len());
                }
            )*
        };
    }
    each!(
        String,
        ByteBuf,
        Vec<u8>,
        Vec<String>,
        HashMap<String, u32>,
        Outer,
        Vec<Outer>,
        Choice,
        Vec<()>,
        Option<Vec<String>>,
        (i64, String),
        rmpv::Value
    );
    let _ = decode_error(codec, bytes);
    let _ = <(String, ByteBuf, Outer)>::from_args(&mut Args::new(codec, bytes));
    let _ = <(Choice, Vec<String>)>::from_args(&mut Args::new(codec, bytes));
    let _ = Args::new(codec, bytes).values();
}

/// A service that answers every request with an error and ignores the rest.
struct Null;

impl easyrpc_proto::Service for Null {
    fn request(&mut self, tx: &mut easyrpc_proto::Transmit<'_>, r: easyrpc_proto::Request<'_>) {
        tx.err(r.msgid, &easyrpc_proto::ServerError::method_not_found(r.method));
    }

    fn notification(&mut self, _: &mut easyrpc_proto::Transmit<'_>, _: &[u8], _: &[u8]) {}

    fn cancel(&mut self, _: u64) {}

    fn in_flight(&self) -> usize {
        0
    }
}

impl easyrpc_proto::Replies<u32> for Null {
    fn reply(&mut self, r: easyrpc_proto::ClientReply<'_, u32>) {
        let outcome = if r.ok { Ok(r.part) } else { Err(r.part) };
        let (Ok(raw) | Err(raw)) = outcome;
        let _ = decode_error(Codec::Msgpack, raw);
    }
}

/// Both sides' connection state machines, made before the allocation bound is measured
/// (their own buffers are a fixed size, not the peer's choice): the server after a hello
/// naming `codec`, and a client with calls in flight.
fn connections(
    codec: Codec,
) -> (
    easyrpc_proto::ServerConnection,
    easyrpc_proto::ClientConnection<u32>,
) {
    let now = std::time::Instant::now();
    let mut config = easyrpc_proto::ServerConfig::default();
    config.max_message_size = 1 << 20;
    let mut server = easyrpc_proto::ServerConnection::new(config, now);
    if codec == Codec::Bincode {
        let mut hello = Vec::new();
        easyrpc_proto::Hello::new(codec).encode(&mut hello);
        server.read_buf().extend_from_slice(&hello);
        let _ = server.handle_input(now, &mut Null);
    }
    // Room for the input, so that filling the buffer does not count as the peer's doing.
    server.read_buf().reserve(64 * 1024);
    let mut config = easyrpc_proto::ClientConfig::new(codec);
    config.max_message_size = 1 << 20;
    config.hello = false;
    let mut client = easyrpc_proto::ClientConnection::<u32>::new(config, now);
    client.start(now);
    for token in 0..4u32 {
        let _ = client.send_request(
            None,
            "m",
            &(1,),
            std::time::Duration::from_secs(1),
            None,
            None,
            token,
        );
    }
    (server, client)
}

/// Feed `input` to both connections.
fn feed_connections(
    (server, client): &mut (
        easyrpc_proto::ServerConnection,
        easyrpc_proto::ClientConnection<u32>,
    ),
    rbuf: &mut bytes::BytesMut,
    input: &[u8],
) {
    let now = std::time::Instant::now();
    if server.read_buf().capacity() - server.read_buf().len() >= input.len() {
        server.read_buf().extend_from_slice(input);
        let _ = server.handle_input(now, &mut Null);
    }
    rbuf.extend_from_slice(input);
    let _ = client.handle_input(rbuf, &mut Null);
}

/// Frame, parse and decode `input` every way there is, and check the allocation bound.
fn survive(input: &[u8]) {
    for codec in [Codec::Msgpack, Codec::Bincode] {
        let mut conns = connections(codec);
        let mut rbuf = bytes::BytesMut::with_capacity(input.len());
        let largest = largest_allocation(|| {
            let _ = Framer::new(codec, 1 << 20).decode(input);
            feed_connections(&mut conns, &mut rbuf, input);
            match Message::parse(codec, input) {
                Ok(Message::Request { params, .. } | Message::Notification { params, .. }) => {
                    decode_everything(codec, params);
                }
                Ok(Message::Response { outcome, .. }) => {
                    let (Ok(raw) | Err(raw)) = outcome;
                    decode_everything(codec, raw);
                }
                Err(_) => {}
            }
            decode_everything(codec, input);
        });
        assert!(
            largest <= allowed(input.len()),
            "{codec:?}: an allocation of {largest} bytes for {} input bytes: {input:02x?}",
            input.len()
        );
    }
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(17),
        failure_persistence: None,
        ..Config::default()
    }
}

fn sample(i: u8) -> Outer {
    Outer {
        name: "n".repeat(usize::from(i % 40)),
        id: u64::from(i) << (i % 64),
        inner: Inner {
            tags: (0..i % 5).map(|t| t.to_string()).collect(),
            data: ByteBuf::from(vec![i; usize::from(i % 50)]),
            score: (i % 2 == 0).then_some(f64::from(i)),
        },
        counts: (0..i % 4).map(|k| (k.to_string(), i32::from(k))).collect(),
        choice: match i % 4 {
            0 => Choice::Unit,
            1 => Choice::Text("t".into()),
            2 => Choice::Pair(-1, vec![1, 300]),
            _ => Choice::Named { v: vec![] },
        },
    }
}

/// One valid message of any kind, in `codec`, chosen by `kind` and `i`.
fn message(codec: Codec, kind: u8, msgid: u64, i: u8) -> Vec<u8> {
    let mut out = Vec::new();
    let timeout = (i % 3 == 0).then(|| Duration::from_micros(u64::from(i) * 1000));
    match kind % 5 {
        0 => encode_request(codec, &mut out, msgid, "add", &(i64::from(i), -1i64), None).unwrap(),
        1 => encode_request(codec, &mut out, msgid, "f", &(sample(i), ByteBuf::new()), timeout).unwrap(),
        2 => encode_response_ok(codec, &mut out, msgid, &sample(i)).unwrap(),
        3 => encode_response_err(
            codec,
            &mut out,
            msgid,
            &ServerError::new(ErrorCode::InvalidParams, "x".repeat(usize::from(i))),
        ),
        _ => encode_notification(codec, &mut out, "note", &(vec!["s"; usize::from(i % 20)],)).unwrap(),
    }
    out
}

/// A header that declares a length or count (of up to 2^64) that is probably not there.
fn hostile_header() -> impl Strategy<Value = Vec<u8>> {
    (0u8..8, any::<u64>()).prop_map(|(kind, n)| match kind {
        // msgpack str32, bin32, array32, map32, ext32
        0 => [&[0xdb][..], &(n as u32).to_be_bytes()].concat(),
        1 => [&[0xc6][..], &(n as u32).to_be_bytes()].concat(),
        2 => [&[0xdd][..], &(n as u32).to_be_bytes()].concat(),
        3 => [&[0xdf][..], &(n as u32).to_be_bytes()].concat(),
        4 => [&[0xc9][..], &(n as u32).to_be_bytes(), &[1]].concat(),
        // bincode varints: u64, u32, u16
        5 => [&[0xfd][..], &n.to_le_bytes()].concat(),
        6 => [&[0xfc][..], &(n as u32).to_le_bytes()].concat(),
        _ => [&[0xfb][..], &(n as u16).to_le_bytes()].concat(),
    })
}

/// A valid message with one mutation: a hostile header spliced in (or written over the
/// bytes there), a flipped byte, or the end cut off.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<bool>(),
        any::<u8>(),
        any::<u64>(),
        any::<u8>(),
        any::<prop::sample::Index>(),
        0u8..4,
        hostile_header(),
        any::<u8>(),
    )
        .prop_map(|(bincode, kind, msgid, i, at, how, header, byte)| {
            let codec = if bincode { Codec::Bincode } else { Codec::Msgpack };
            let mut m = message(codec, kind, msgid, i);
            let at = at.index(m.len());
            match how {
                0 => {
                    m.splice(at..at, header);
                }
                1 => {
                    let end = (at + header.len()).min(m.len());
                    m.splice(at..end, header);
                }
                2 => m[at] ^= byte | 1,
                _ => m.truncate(at),
            }
            m
        })
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn arbitrary_bytes_never_panic_or_allocate_beyond_their_size(
        input in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        survive(&input);
    }

    #[test]
    fn hostile_headers_never_panic_or_allocate_beyond_their_size(
        prefix in prop::collection::vec(any::<u8>(), 0..4),
        header in hostile_header(),
        suffix in prop::collection::vec(any::<u8>(), 0..8),
    ) {
        // A few bytes of anything (a count, a tag, a struct's first fields), then a
        // declared length, then a few bytes of body.
        survive(&[&prefix[..], &header, &suffix].concat());
    }

    #[test]
    fn mutated_messages_never_panic_or_allocate_beyond_their_size(input in mutated()) {
        survive(&input);
    }

    #[test]
    fn framer_split_input_equals_whole_input(
        bincode in any::<bool>(),
        max in prop::sample::select(vec![64usize, 1024, 1 << 20]),
        msgs in prop::collection::vec((any::<u8>(), any::<u64>(), any::<u8>()), 1..6),
        cuts in prop::collection::vec(1usize..40, 1..20),
        tail in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let codec = if bincode { Codec::Bincode } else { Codec::Msgpack };
        let mut stream: Vec<u8> = msgs
            .iter()
            .flat_map(|&(kind, msgid, i)| message(codec, kind, msgid, i))
            .collect();
        // Garbage after the valid messages: the two ways must still agree on it.
        stream.extend_from_slice(&tail);
        let whole = frames(codec, max, &stream, &[stream.len()]);
        let split = frames(codec, max, &stream, &cuts);
        prop_assert_eq!(whole, split);
    }
}

/// Frame `stream` as a connection would: reads of `cuts[i]` bytes (cycling), the framer
/// resuming on each; returns every frame's length and how it ended.
fn frames(codec: Codec, max: usize, stream: &[u8], cuts: &[usize]) -> (Vec<usize>, String) {
    let mut framer = Framer::new(codec, max);
    let mut start = 0;
    let mut end = 0;
    let mut lens = Vec::new();
    for &cut in cuts.iter().cycle() {
        end = (end + cut).min(stream.len());
        loop {
            match framer.decode(&stream[start..end]) {
                Ok(Some(n)) => {
                    lens.push(n);
                    start += n;
                }
                Ok(None) if end == stream.len() => return (lens, "needs more".into()),
                Ok(None) => break,
                Err(e) => return (lens, e.to_string()),
            }
        }
    }
    unreachable!("`cycle` of a non-empty list never ends")
}

#[test]
fn framer_every_split_point_of_valid_messages() {
    for codec in [Codec::Msgpack, Codec::Bincode] {
        for kind in 0..5 {
            for (msgid, i) in [(0, 0), (300, 7), (u64::MAX, 40), (1 << 33, 200)] {
                let msg = message(codec, kind, msgid, i);
                for cut in 0..msg.len() {
                    let mut f = Framer::new(codec, 1 << 20);
                    assert_eq!(f.decode(&msg[..cut]).unwrap(), None, "{codec:?} cut at {cut}");
                    assert_eq!(f.decode(&msg).unwrap(), Some(msg.len()), "{codec:?} cut at {cut}");
                }
                // And the message parses, whole.
                assert!(Message::parse(codec, &msg).is_ok());
            }
        }
    }
}

#[test]
fn issue17_the_bound_holds_for_the_reproduction() {
    // The in-process reproduction, measured: nothing near 2^40 (or serde's 1 MiB cap).
    let input = [0xfd, 0, 0, 0, 0, 0, 1, 0, 0];
    let largest = largest_allocation(|| {
        let _ = Codec::Bincode.decode::<String>(&input);
        let _ = Codec::Bincode.decode::<Vec<String>>(&input);
        let _ = Codec::Msgpack.decode_framed::<Vec<String>>(&[0xdd, 0xff, 0xff, 0xff, 0xff]);
    });
    assert!(largest <= allowed(input.len()), "{largest}");
}
