//! What `max_flow` and the dedup cache cost per call, as ratios against the same call
//! without them, measured in one run.
//!
//! Run with
//!
//! ```not_rust
//! taskset -c 0 cargo run --release -p easyrpc-server --example flow_cost
//! ```
//!
//! The server runs in-process on its own thread and current-thread runtime; the client is
//! the blocking one, sequential calls. Rounds interleave the variants so drift hits each
//! alike; the report gives each variant's median per call and its ratio to the plain call.

use std::time::{Duration, Instant};

use easyrpc_client::{BlockingClient, Config};
use easyrpc_server::{Method, Server};

fn main() {
    let calls: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let add = |(a, b): (i64, i64)| async move { a + b };
            let server = Server::builder()
                .register(Method::async_fn("add", add))
                .register(Method::async_fn("add_flow", add).max_flow(1000))
                .register(Method::async_fn("add_dedup", add).unstable_network(true))
                .build()
                .unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            server.run(listener, std::future::pending()).await;
        });
    });
    let addr = rx.recv().unwrap();
    let plain = BlockingClient::connect(addr).unwrap();
    let mut cfg = Config::default();
    cfg.unstable_network = true;
    let session = BlockingClient::connect_with(addr, cfg).unwrap();

    let variants: [(&str, &BlockingClient, &str); 4] = [
        ("plain call", &plain, "add"),
        ("max_flow", &plain, "add_flow"),
        ("session, no dedup", &session, "add"),
        ("session + dedup", &session, "add_dedup"),
    ];
    let rounds = 10;
    let mut samples = vec![Vec::new(); variants.len()];
    for _ in 0..rounds {
        for (i, (_, client, method)) in variants.iter().enumerate() {
            let n = calls / rounds;
            let t = Instant::now();
            for k in 0..n as i64 {
                let v: i64 = client.call(method, (k, 1)).unwrap();
                assert_eq!(v, k + 1);
            }
            samples[i].push(t.elapsed() / n as u32);
        }
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort_unstable();
        v[v.len() / 2]
    };
    let base = median(&mut samples[0].clone());
    println!("{calls} sequential calls per variant, {rounds} interleaved rounds, median per call:");
    for (i, (name, _, _)) in variants.iter().enumerate() {
        let m = median(&mut samples[i]);
        println!(
            "  {name:<20} {:>8.2?}  ratio {:.3}",
            m,
            m.as_secs_f64() / base.as_secs_f64()
        );
    }
}
