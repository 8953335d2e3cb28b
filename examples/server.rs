//! The example server: serves `add`, `fib_async`, `fib_sync` and `echo`.
//!
//! Run with
//!
//! ```not_rust
//! cargo run --release --example server -- --addr 127.0.0.1:25000
//! ```
//!
//! It prints `listening on ADDR` once it accepts connections (so `--addr 127.0.0.1:0` works
//! for tests), and stops gracefully on ctrl-c or TERM.

use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Serve the example functions over MessagePack-RPC")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:25000")]
    addr: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    examples::init_tracing();
    let args = Args::parse();
    let server = examples::service::builder().build()?;
    let listener = tokio::net::TcpListener::bind(&args.addr).await?;
    println!("listening on {}", listener.local_addr()?);
    server.run(listener, shutdown_signal()).await;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        // Unwrap: installing a TERM handler only fails outside a runtime.
        let mut term = signal(SignalKind::terminate()).unwrap();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
