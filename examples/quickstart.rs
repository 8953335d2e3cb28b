//! Starts the example server and runs the example client's calls against it, in one
//! process.
//!
//! Run with
//!
//! ```not_rust
//! cargo run --release --example quickstart
//! ```

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    examples::init_tracing();
    let server = examples::service::builder().build()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    println!("server listening on {addr}");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(async move {
        server
            .run(listener, async {
                let _ = stopped.await;
            })
            .await
    });

    let blocking = tokio::task::spawn_blocking(move || -> Result<(), easyrpc::Error> {
        let client = easyrpc::BlockingClient::connect(addr)?;
        examples::blocking_calls(&client)
    });
    blocking.await??;

    // The extensions (a hello first): the streaming calls need them.
    let mut config = easyrpc::ClientConfig::default();
    config.extensions = true;
    let client = easyrpc::Client::connect_with(addr, config).await?;
    examples::async_calls(&client).await?;

    let _ = stop.send(());
    serving.await?;
    println!("all calls succeeded; server stopped");
    Ok(())
}
