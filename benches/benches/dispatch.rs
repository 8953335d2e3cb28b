//! The server's per-call work, without and with I/O.
//!
//! Run with
//!
//! ```not_rust
//! cargo bench -p benches --bench dispatch
//! ```
//!
//! - `server_path`: what the connection task does for one `add` call apart from the
//!   syscalls (the registry is private to rpc-server, so its lookup is stood in for by a
//!   `HashMap` from method name to handler, as the registry keeps them): frame, parse,
//!   look up, decode the arguments, run, encode the reply.
//! - `round_trip`: one `add` call through a real `Server` on a loopback socket, with the
//!   blocking and the async client, both codecs. The whole process (server thread and
//!   client) is pinned to core 0, as the `bench` binary does by default: on these 2-vCPU
//!   machines a wake-up across cores costs more than the call itself.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use easyrpc_proto::{encode_request, encode_response_ok, Args, Codec, Framer, FromArgs, Message};

const CODECS: [(&str, Codec); 2] = [("msgpack", Codec::Msgpack), ("bincode", Codec::Bincode)];

type Handler = fn(&mut Args<'_>) -> Result<i64, easyrpc_proto::ServerError>;

fn add(args: &mut Args<'_>) -> Result<i64, easyrpc_proto::ServerError> {
    let (a, b) = <(i64, i64)>::from_args(args)?;
    Ok(a.wrapping_add(b))
}

fn server_path(c: &mut Criterion) {
    let mut methods: HashMap<Box<[u8]>, Handler> = HashMap::new();
    for name in ["rpc.ping", "add", "echo", "echo_records"] {
        methods.insert(name.as_bytes().into(), add);
    }
    let mut g = c.benchmark_group("server_path");
    for (cname, codec) in CODECS {
        let mut wire = Vec::new();
        encode_request(codec, &mut wire, 7, "add", &(1i64, 2i64), None).unwrap();
        let mut framer = Framer::new(codec, 1 << 20);
        let mut out = Vec::with_capacity(1024);
        g.bench_function(BenchmarkId::new(cname, "add"), |b| {
            b.iter(|| {
                let wire = black_box(&wire[..]);
                let n = framer.decode(wire).unwrap().unwrap();
                let Ok(Message::Request {
                    msgid,
                    method,
                    params,
                    ..
                }) = Message::parse(codec, &wire[..n])
                else {
                    panic!("not a request")
                };
                let handler = methods[method];
                let sum = handler(&mut Args::new(codec, params)).unwrap();
                out.clear();
                encode_response_ok(codec, &mut out, msgid, &sum).unwrap();
                black_box(out.len())
            })
        });
    }
    g.finish();
}

/// Start a server with an async `add` on its own thread and runtime; returns its address.
fn start_server() -> std::net::SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let server = easyrpc_server::Server::builder()
                .register(easyrpc_server::Method::async_fn(
                    "add",
                    |(a, b): (i64, i64)| async move { a.wrapping_add(b) },
                ))
                .build()
                .unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            server.run(listener, std::future::pending()).await;
        });
    });
    rx.recv().unwrap()
}

fn round_trip(c: &mut Criterion) {
    // Pin before any thread exists: the server thread inherits the mask.
    if !core_affinity::set_for_current(core_affinity::CoreId { id: 0 }) {
        eprintln!("could not pin to core 0; the round trips cross cores");
    }
    let addr = start_server();
    let mut g = c.benchmark_group("round_trip");
    for (cname, codec) in CODECS {
        let mut cfg = easyrpc_client::Config::default();
        cfg.codec = codec;
        let blocking = easyrpc_client::BlockingClient::connect_with(addr, cfg.clone()).unwrap();
        g.bench_function(BenchmarkId::new("blocking", cname), |b| {
            b.iter(|| {
                let v: i64 = blocking.call("add", (1i64, 2i64)).unwrap();
                black_box(v)
            })
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = rt
            .block_on(easyrpc_client::Client::connect_with(addr, cfg))
            .unwrap();
        g.bench_function(BenchmarkId::new("async", cname), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let v: i64 = client.call("add", (1i64, 2i64)).await.unwrap();
                        black_box(v);
                    }
                    start.elapsed()
                })
            })
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = dispatch;
    config = config();
    targets = server_path, round_trip
}
criterion_main!(dispatch);
