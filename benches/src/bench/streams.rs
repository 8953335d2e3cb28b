//! `bench streams`: server-streaming throughput, ours against tonic's, in the same run.
//!
//! Each system serves `items(count, size)`: `count` items of `size` bytes as a server
//! stream (ours: `Method::stream_fn`, read with `Client::call_stream`; tonic: a
//! `returns (stream Blob)` method, read with `Streaming::message`). Each server runs in its
//! own process (`bench server`), the client here; both unpinned unless `--separate` pins
//! the client to core 0 and the servers to core 1. The systems take turns, `--reps` times
//! each (ours, tonic, tonic, ours, ...), and the report gives each run's items/s and bytes/s
//! and the median ratio.

use std::time::{Duration, Instant};

use clap::Args;
use futures_util::StreamExt;

use crate::server::ServerProc;
use crate::system::ServerKind;
use crate::Result;

/// Options of `bench streams`.
#[derive(Debug, Args)]
pub(crate) struct StreamArgs {
    /// Items per stream of small items (8 bytes each).
    #[arg(long, default_value_t = 200_000)]
    small_items: u64,
    /// Items per stream of 64 KiB items.
    #[arg(long, default_value_t = 2_000)]
    large_items: u64,
    /// Runs of each system per size (taking turns).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Pin the client to core 0 and the servers to core 1 (default: unpinned).
    #[arg(long)]
    separate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sys {
    Ours,
    Tonic,
}

/// One stream of `count` items of `size` bytes, timed from the call to its last item.
async fn run_one(sys: Sys, addr: std::net::SocketAddr, count: u64, size: u32) -> Result<Duration> {
    match sys {
        Sys::Ours => {
            let mut config = easyrpc_client::Config::default();
            config.extensions = true;
            config.timeout = Duration::from_secs(600);
            let client = easyrpc_client::Client::connect_with(addr, config).await?;
            let start = Instant::now();
            let mut items = client
                .call_stream::<_, serde_bytes::ByteBuf>("items", (count, size))
                .await?;
            let mut n = 0;
            while let Some(item) = items.next().await {
                let item = item?;
                debug_assert_eq!(item.len(), size as usize);
                n += 1;
            }
            let took = start.elapsed();
            if n != count {
                return Err(format!("ours: {n} items of {count}").into());
            }
            Ok(took)
        }
        Sys::Tonic => {
            let mut client = crate::grpc::BenchClient::connect(format!("http://{addr}")).await?;
            let start = Instant::now();
            let mut items = client
                .items(crate::grpc::ItemsRequest { count, size })
                .await?
                .into_inner();
            let mut n = 0;
            while let Some(item) = items.message().await? {
                debug_assert_eq!(item.data.len(), size as usize);
                n += 1;
            }
            let took = start.elapsed();
            if n != count {
                return Err(format!("tonic: {n} items of {count}").into());
            }
            Ok(took)
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Run `bench streams` and print its report (markdown).
pub(crate) fn run(args: &StreamArgs) -> Result<()> {
    let server_core = args.separate.then_some(1);
    let ours = ServerProc::spawn(ServerKind::Ours, server_core, (1, true), None)?;
    let tonic = ServerProc::spawn(ServerKind::Tonic, server_core, (1, true), None)?;
    if args.separate {
        crate::placement::pin(0)?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    println!(
        "# bench streams\n\nServer streams of `items(count, size)`, {}; each system in turns, {} runs per size.\n",
        if args.separate {
            "client on core 0, servers on core 1"
        } else {
            "unpinned"
        },
        args.reps
    );
    println!("| size | items | system | items/s (median) | MB/s (median) | runs (items/s) |");
    println!("|---:|---:|---|---:|---:|---|");
    let mut ratios = Vec::new();
    for (size, count) in [(8u32, args.small_items), (64 * 1024, args.large_items)] {
        let mut rates = [Vec::new(), Vec::new()];
        for rep in 0..args.reps {
            // ABBA: ours first on even runs, tonic first on odd ones.
            let order = if rep % 2 == 0 {
                [Sys::Ours, Sys::Tonic]
            } else {
                [Sys::Tonic, Sys::Ours]
            };
            for sys in order {
                let addr = if sys == Sys::Ours { ours.addr } else { tonic.addr };
                let took = rt.block_on(run_one(sys, addr, count, size))?;
                rates[usize::from(sys == Sys::Tonic)].push(count as f64 / took.as_secs_f64());
            }
        }
        let med = [median(rates[0].clone()), median(rates[1].clone())];
        for (i, name) in ["ours", "tonic"].into_iter().enumerate() {
            let runs: Vec<String> = rates[i].iter().map(|r| format!("{r:.0}")).collect();
            println!(
                "| {size} B | {count} | {name} | {:.0} | {:.1} | {} |",
                med[i],
                med[i] * f64::from(size) / 1e6,
                runs.join(", ")
            );
        }
        ratios.push((size, med[0] / med[1]));
    }
    println!();
    for (size, r) in ratios {
        println!("- {size} B items: ours / tonic = **{r:.2}×** (median items/s)");
    }
    Ok(())
}
