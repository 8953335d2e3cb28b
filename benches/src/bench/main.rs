//! `bench`: compare our server with gRPC (tonic), tarpc and raw TCP, each server in its own
//! process on loopback; or load any MessagePack-RPC server.
//!
//! Run with
//!
//! ```not_rust
//! cargo run --release -p benches --bin bench -- --out benches/results       # full run
//! cargo run --release -p benches --bin bench -- --quick                     # seconds
//! cargo run --release -p benches --bin bench -- --placement separate --systems ours,tonic
//! cargo run --release -p benches --bin bench -- load --addr 127.0.0.1:25000 \
//!     --method add --args '[1, 2]' --concurrency 64 --duration 10
//! cargo run --release -p benches --bin bench -- streams                    # vs tonic
//! ```
//!
//! `bench server --system X` is what the full run starts for each system; it prints
//! `PORT <n>` and serves until its stdin closes. `bench server --system ours --workers N`
//! serves through rpc-server's prefork supervisor (N worker processes on one port).

mod charts;
mod conn;
mod driver;
mod grpc;
mod harness;
mod load;
mod placement;
mod procfs;
mod raw;
mod report;
mod secure;
mod server;
mod streams;
mod system;
mod tarpc_svc;

use clap::{Parser, Subcommand};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type Result<T> = std::result::Result<T, BoxError>;

#[derive(Debug, Parser)]
#[command(
    name = "bench",
    about = "Benchmark our MessagePack-RPC server against tonic, tarpc and raw TCP, or load any server",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: harness::RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The full comparison (the default).
    Run(harness::RunArgs),
    /// Serve one system (started by `run`, one process per system).
    Server(server::ServerArgs),
    /// Load a server: keep N calls in flight for a while, print latency and throughput.
    Load(load::LoadArgs),
    /// Server-streaming throughput: ours against tonic, in turns.
    Streams(streams::StreamArgs),
    /// Started by a prefork `server`: stop it (TERM) when stdin closes.
    #[command(hide = true)]
    StdinWatch(server::WatchArgs),
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.command {
        None => harness::run(cli.run),
        Some(Command::Run(args)) => harness::run(args),
        Some(Command::Server(args)) => server::serve(&args),
        Some(Command::Load(args)) => load::run(&args),
        Some(Command::Streams(args)) => streams::run(&args),
        Some(Command::StdinWatch(args)) => server::watch_stdin(&args),
    };
    if let Err(e) = r {
        eprintln!("bench: {e}");
        std::process::exit(1);
    }
}
