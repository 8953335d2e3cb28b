//! Encode and decode of requests and responses, both codecs: `add(i64, i64)`, echo of
//! 16 B, 1 KiB and 64 KiB, and the struct-heavy echo of 64 records.
//!
//! Run with
//!
//! ```not_rust
//! cargo bench -p benches --bench codec
//! cargo bench -p benches --bench codec -- decode_request   # one group
//! ```
//!
//! - `encode_request`: what a client does before writing a call.
//! - `decode_request`: what the server does with a complete frame before dispatch
//!   (`Framer` + `Message::parse` + `Args` decode of the argument).
//! - `encode_response`: the server's reply (`encode_response_ok`).
//! - `decode_response`: what a client does with the reply frame (frame, parse, decode).

use std::hint::black_box;
use std::time::Duration;

use benches::Record;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use easyrpc_proto::{encode_request, encode_response_ok, Args, Codec, Framer, FromArgs, Message};
use serde::de::DeserializeOwned;
use serde_bytes::{ByteBuf, Bytes};

const MAX: usize = 64 << 20;
const CODECS: [(&str, Codec); 2] = [("msgpack", Codec::Msgpack), ("bincode", Codec::Bincode)];

/// One payload: a name for the report, the method, and the bytes it takes.
struct Case {
    name: String,
    bytes: u64,
    kind: Kind,
}

enum Kind {
    Add,
    Echo(Vec<u8>),
    Records(Vec<Record>),
}

fn cases() -> Vec<Case> {
    let mut v = vec![Case {
        name: "add".into(),
        bytes: 16,
        kind: Kind::Add,
    }];
    for n in [16, 1024, 64 * 1024] {
        v.push(Case {
            name: format!("echo {}", benches::size_label(n)),
            bytes: n as u64,
            kind: Kind::Echo(benches::blob(n)),
        });
    }
    let records = benches::records(benches::RECORDS_PER_CALL);
    let mut size = Vec::new();
    Codec::Bincode.encode(&mut size, &records).unwrap();
    v.push(Case {
        name: format!("echo {} records", benches::RECORDS_PER_CALL),
        bytes: size.len() as u64,
        kind: Kind::Records(records),
    });
    v
}

fn request(codec: Codec, out: &mut Vec<u8>, case: &Case) {
    let r = match &case.kind {
        Kind::Add => encode_request(codec, out, 7, "add", &(1i64, 2i64), None),
        Kind::Echo(b) => encode_request(codec, out, 7, "echo", &(Bytes::new(b),), None),
        Kind::Records(r) => encode_request(codec, out, 7, "echo_records", &(r,), None),
    };
    r.unwrap();
}

fn response(codec: Codec, out: &mut Vec<u8>, case: &Case) {
    let r = match &case.kind {
        Kind::Add => encode_response_ok(codec, out, 7, &3i64),
        Kind::Echo(b) => encode_response_ok(codec, out, 7, Bytes::new(b)),
        Kind::Records(r) => encode_response_ok(codec, out, 7, r),
    };
    r.unwrap();
}

/// Frame, parse and decode the argument of a request, as the server does.
fn decode_request<A: FromArgs>(codec: Codec, wire: &[u8]) -> A {
    let n = Framer::new(codec, MAX).decode(wire).unwrap().unwrap();
    let Ok(Message::Request { params, .. }) = Message::parse(codec, &wire[..n]) else {
        panic!("not a request")
    };
    A::from_args(&mut Args::new(codec, params)).unwrap()
}

/// Frame, parse and decode the result of a response, as the clients do.
fn decode_response<R: DeserializeOwned>(codec: Codec, wire: &[u8]) -> R {
    let n = Framer::new(codec, MAX).decode(wire).unwrap().unwrap();
    let Ok(Message::Response {
        outcome: Ok(result), ..
    }) = Message::parse(codec, &wire[..n])
    else {
        panic!("not a successful response")
    };
    codec.decode(result).unwrap()
}

fn bench_encode<F: Fn(Codec, &mut Vec<u8>, &Case)>(c: &mut Criterion, group: &str, encode: F) {
    let mut g = c.benchmark_group(group);
    for case in cases() {
        g.throughput(Throughput::Bytes(case.bytes));
        for (cname, codec) in CODECS {
            let mut buf = Vec::with_capacity(128 * 1024);
            g.bench_function(BenchmarkId::new(cname, &case.name), |b| {
                b.iter(|| {
                    buf.clear();
                    encode(codec, &mut buf, black_box(&case));
                    black_box(buf.len())
                })
            });
        }
    }
    g.finish();
}

fn requests(c: &mut Criterion) {
    bench_encode(c, "encode_request", request);
    let mut g = c.benchmark_group("decode_request");
    for case in cases() {
        g.throughput(Throughput::Bytes(case.bytes));
        for (cname, codec) in CODECS {
            let mut wire = Vec::new();
            request(codec, &mut wire, &case);
            let id = BenchmarkId::new(cname, &case.name);
            match &case.kind {
                Kind::Add => g.bench_function(id, |b| {
                    b.iter(|| decode_request::<(i64, i64)>(codec, black_box(&wire)))
                }),
                Kind::Echo(_) => g.bench_function(id, |b| {
                    b.iter(|| decode_request::<(ByteBuf,)>(codec, black_box(&wire)))
                }),
                Kind::Records(_) => g.bench_function(id, |b| {
                    b.iter(|| decode_request::<(Vec<Record>,)>(codec, black_box(&wire)))
                }),
            };
        }
    }
    g.finish();
}

fn responses(c: &mut Criterion) {
    bench_encode(c, "encode_response", response);
    let mut g = c.benchmark_group("decode_response");
    for case in cases() {
        g.throughput(Throughput::Bytes(case.bytes));
        for (cname, codec) in CODECS {
            let mut wire = Vec::new();
            response(codec, &mut wire, &case);
            let id = BenchmarkId::new(cname, &case.name);
            match &case.kind {
                Kind::Add => {
                    g.bench_function(id, |b| b.iter(|| decode_response::<i64>(codec, black_box(&wire))))
                }
                Kind::Echo(_) => g.bench_function(id, |b| {
                    b.iter(|| decode_response::<ByteBuf>(codec, black_box(&wire)))
                }),
                Kind::Records(_) => g.bench_function(id, |b| {
                    b.iter(|| decode_response::<Vec<Record>>(codec, black_box(&wire)))
                }),
            };
        }
    }
    g.finish();
}

fn config() -> Criterion {
    // Short runs: about 2.5 s per benchmark, so the whole file takes about three minutes.
    Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = codec;
    config = config();
    targets = requests, responses
}
criterion_main!(codec);
