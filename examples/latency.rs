//! Sequential latency of `add` with each client, against the example server.
//!
//! Run with
//!
//! ```not_rust
//! cargo run --release --example latency -- --calls 20000
//! taskset -c 0 cargo run --release --example latency   # client and server on one core
//! ```
//!
//! Without `--addr` it starts the example server in-process (on its own thread and
//! runtime). It prints p50/p99 per call for the blocking and the async client, for the
//! sync `add` (blocking pool), the same function marked `#[register(inline)]` (`add_inline`,
//! run in the connection's task) and the async `fib_async(1)` (answered inline).

use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Measure sequential call latency")]
struct Args {
    /// Server address; without it, an in-process server is started.
    #[arg(long)]
    addr: Option<String>,
    /// Calls per measurement.
    #[arg(long, default_value_t = 20_000)]
    calls: usize,
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort_unstable();
    let q = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    println!(
        "{what:<34} p50 {:>8.1?}  p90 {:>8.1?}  p99 {:>8.1?}",
        q(0.50),
        q(0.90),
        q(0.99)
    );
}

fn measure(calls: usize, mut f: impl FnMut()) -> Vec<Duration> {
    for _ in 0..calls / 10 {
        f();
    }
    (0..calls)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let addr = match args.addr {
        Some(a) => a,
        None => {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let server = examples::service::builder().build().unwrap();
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                    tx.send(listener.local_addr().unwrap()).unwrap();
                    server.run(listener, std::future::pending()).await;
                });
            });
            rx.recv()?.to_string()
        }
    };
    let api = &examples::api::add::call_blocking;
    let blocking = easyrpc::BlockingClient::connect(addr.as_str())?;
    report(
        "blocking client, add (sync fn)",
        measure(args.calls, || {
            api(&blocking, 1, 2).unwrap();
        }),
    );
    report(
        "blocking client, add_inline",
        measure(args.calls, || {
            examples::api::add_inline::call_blocking(&blocking, 1, 2).unwrap();
        }),
    );
    report(
        "blocking client, fib_async(1)",
        measure(args.calls, || {
            examples::api::fib_async::call_blocking(&blocking, 1).unwrap();
        }),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = easyrpc::Client::connect(addr.as_str()).await?;
        for (what, f) in [
            ("async client, add (sync fn)", 0),
            ("async client, add_inline", 2),
            ("async client, fib_async(1)", 1),
        ] {
            let mut samples = Vec::with_capacity(args.calls);
            for i in 0..args.calls + args.calls / 10 {
                let t = Instant::now();
                match f {
                    0 => {
                        examples::api::add::call(&client, 1, 2).await?;
                    }
                    2 => {
                        examples::api::add_inline::call(&client, 1, 2).await?;
                    }
                    _ => {
                        examples::api::fib_async::call(&client, 1).await?;
                    }
                }
                if i >= args.calls / 10 {
                    samples.push(t.elapsed());
                }
            }
            report(what, samples);
        }
        Ok::<_, easyrpc::Error>(())
    })?;
    Ok(())
}
