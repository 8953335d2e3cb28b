//! The example client: calls every function of the example server through typed stubs,
//! async and blocking, and prints what it got.
//!
//! Run with (the server first)
//!
//! ```not_rust
//! cargo run --release --example server &
//! cargo run --release --example client -- --addr 127.0.0.1:25000
//! ```
//!
//! Over TLS: `--tls-ca FILE` (the CA that issued the server's certificate, PEM), with
//! `--tls-server-name NAME` when the certificate does not name the host of `--addr`, and
//! `--tls-cert FILE --tls-key FILE` to present a client certificate (mutual TLS):
//!
//! ```not_rust
//! cargo run --release --example client -- --addr 127.0.0.1:25000 --tls-ca ca.crt --tls-server-name localhost
//! ```
//!
//! Over a Unix-domain socket (the server's `--unix PATH`): `--addr unix:PATH`; it then also
//! calls `admin_info`, which the example server serves over a Unix socket only.

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Call the example server")]
struct Args {
    /// Address of the server: HOST:PORT, or unix:PATH for a Unix-domain socket.
    #[arg(long, default_value = "127.0.0.1:25000")]
    addr: String,
    /// Connect with TLS, trusting this CA (PEM).
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// With --tls-ca: the name the server's certificate must be valid for (default: the
    /// host of --addr).
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    tls_server_name: Option<String>,
    /// With --tls-ca: present this client certificate chain (PEM; needs --tls-key).
    #[arg(long, value_name = "FILE", requires_all = ["tls_ca", "tls_key"])]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl Args {
    /// The TLS settings, with --tls-ca.
    fn tls(&self) -> Result<Option<easyrpc::ClientTls>, easyrpc::Error> {
        let Some(ca) = &self.tls_ca else { return Ok(None) };
        let mut tls = easyrpc::ClientTls::from_ca_file(ca)?;
        if let Some(name) = &self.tls_server_name {
            tls = tls.server_name(name.as_str());
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            tls = tls.client_cert(cert, key)?;
        }
        Ok(Some(tls))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    examples::init_tracing();
    let args = Args::parse();

    let tls = args.tls()?;
    let unix = args.addr.strip_prefix("unix:").map(PathBuf::from);
    if unix.is_some() && tls.is_some() {
        return Err("--tls-ca: TLS is served on TCP addresses only, not on unix:PATH".into());
    }

    // The blocking client needs no runtime at all.
    let blocking = match (&tls, &unix) {
        (Some(tls), _) => easyrpc::BlockingClient::connect_tls(&args.addr, tls.clone())?,
        (None, Some(path)) => easyrpc::BlockingClient::connect_unix(path)?,
        (None, None) => easyrpc::BlockingClient::connect(args.addr.as_str())?,
    };
    examples::blocking_calls(&blocking)?;
    if unix.is_some() {
        println!(
            "blocking admin_info()       = {:?}",
            examples::api::admin_info::call_blocking(&blocking)?
        );
    }

    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        // The extensions (a hello first): streams need them.
        let mut config = easyrpc::ClientConfig::default();
        config.extensions = true;
        let client = match (tls, &unix) {
            (Some(tls), _) => easyrpc::Client::connect_tls_with(&args.addr, tls, config).await?,
            (None, Some(path)) => easyrpc::Client::connect_unix_with(path, config).await?,
            (None, None) => easyrpc::Client::connect_with(args.addr.as_str(), config).await?,
        };
        examples::async_calls(&client).await
    })?;
    println!("all calls succeeded");
    Ok(())
}
