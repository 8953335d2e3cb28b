//! The example client: calls every function of the example server through typed stubs,
//! async and blocking, and prints what it got.
//!
//! Run with (the server first)
//!
//! ```not_rust
//! cargo run --release --example server &
//! cargo run --release --example client -- --addr 127.0.0.1:25000
//! ```

use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Call the example server")]
struct Args {
    /// Address of the server.
    #[arg(long, default_value = "127.0.0.1:25000")]
    addr: String,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    examples::init_tracing();
    let args = Args::parse();

    // The blocking client needs no runtime at all.
    let blocking = rpc::BlockingClient::connect(args.addr.as_str())?;
    examples::blocking_calls(&blocking)?;

    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let client = rpc::Client::connect(args.addr.as_str()).await?;
        examples::async_calls(&client).await
    })?;
    println!("all calls succeeded");
    Ok(())
}
