//! The example server: serves `add`, `fib_async`, `fib_sync` and `echo`, the streams
//! `countdown` (a result stream) and `sum_stream` (an argument stream), and two test aids,
//! `gate` and `journal`.
//!
//! Run with
//!
//! ```not_rust
//! cargo run --release --example server -- --addr 127.0.0.1:25000
//! cargo run --release --example server -- --addr 127.0.0.1:25000 --workers 4 --bind-core
//! cargo run --release --example server -- --tls-cert server.crt --tls-key server.key
//! cargo run --release --example server -- --addr 127.0.0.1:25000 --unix /tmp/rpc.sock \
//!     --tls-addr 0.0.0.0:25001 --tls-cert server.crt --tls-key server.key --allow 10.0.0.0/8
//! ```
//!
//! It prints `listening on ADDR` once it accepts connections (so `--addr 127.0.0.1:0` works
//! for tests), and stops gracefully on ctrl-c or TERM.
//!
//! `--unstable-network` turns the dedup cache on (clients in unstable-network mode get
//! each call run once, however often they resend it); `--heartbeat-timeout SECS` closes
//! connections silent for that long (default 60).
//!
//! `--tls-cert FILE --tls-key FILE` serves TLS (PEM files: the certificate chain and its
//! key; with prefork, every worker serves it): on `--tls-addr ADDR` when given (then
//! `--addr` stays plain TCP and both are served), else on `--addr` itself.
//! `--tls-client-ca FILE` also requires each client to present a certificate issued by
//! that CA (mutual TLS).
//!
//! `--unix PATH` serves a Unix-domain socket too (with prefork, every worker accepts on
//! it); `--addr unix:PATH` makes the main address one. The `admin_*` functions
//! (`admin_info`) are served over a Unix socket only: over TCP or TLS they answer 12
//! "permission denied". `--allow CIDR` (repeatable) refuses TCP and TLS peers outside
//! every CIDR given (Unix peers are not affected).
//!
//! It prints `listening on ADDR` for `--addr` first, then one line for each other
//! listener: `listening on ADDR (tls)` for `--tls-addr`, `listening on unix:PATH` for
//! `--unix`.
//!
//! `--etcd URL --service NAME` registers the server in etcd as an instance of NAME (key
//! `rpc/services/NAME/ADDR`, under a lease of `--lease-ttl SECS`, default 5, kept alive);
//! `--advertise ADDR` is the address put there (default: the `--addr` bound, port 0
//! resolved). TERM deregisters first, then drains. Comma-separate several etcd URLs.
//!
//! ```not_rust
//! cargo run --release --example server -- --addr 127.0.0.1:0 --etcd http://127.0.0.1:2379 --service calc
//! ```
//!
//! `--workers N` serves from N forked worker processes sharing the port (Unix; 0: one per
//! core), `--bind-core` pins each to a core. The process started is then the supervisor:
//! TERM or INT stops every worker gracefully, HUP replaces them one by one, TTIN and TTOU
//! add and remove one; a worker that dies is restarted. Without `--workers` it is one
//! process.
//!
//! `--metrics-addr ADDR` serves per-function metrics in the Prometheus text format at
//! `http://ADDR/metrics` (with `--workers`, one endpoint for all workers, served by the
//! supervisor); it prints `metrics on ADDR` after the `listening on` lines (port 0 works).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Serve the example functions over MessagePack-RPC")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:25000")]
    addr: String,
    /// Execute each call of a client session at most once, answering retries from a cache.
    #[arg(long)]
    unstable_network: bool,
    /// Close connections that sent nothing for this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    heartbeat_timeout: u64,
    /// Serve from N forked worker processes (0: one per core). Default: one process.
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// With --workers: pin worker i to core i % cores.
    #[arg(long)]
    bind_core: bool,
    /// Test aid: the address the `gate` function connects to.
    #[arg(long, value_name = "ADDR")]
    gate: Option<String>,
    /// Test aid: the file the `journal` function appends to.
    #[arg(long, value_name = "FILE")]
    journal: Option<PathBuf>,
    /// Serve TLS with this certificate chain (PEM; needs --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// With --tls-cert: require client certificates issued by this CA (PEM): mutual TLS.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Serve TLS on this address (with --tls-cert and --tls-key), besides --addr (which
    /// then stays plain TCP). Without it, --tls-cert makes --addr itself TLS.
    #[arg(long, value_name = "ADDR", requires = "tls_cert")]
    tls_addr: Option<String>,
    /// Serve a Unix-domain socket at this path too.
    #[arg(long, value_name = "PATH")]
    unix: Option<PathBuf>,
    /// Accept TCP and TLS peers from this network only (repeatable: any of them).
    #[arg(long, value_name = "CIDR")]
    allow: Vec<easyrpc::rules::Cidr>,
    /// Serve per-function metrics (Prometheus text format) at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<String>,
    /// Register in etcd at this URL (comma-separated for several), with --service.
    #[arg(long, value_name = "URL", requires = "service")]
    etcd: Option<String>,
    /// With --etcd: the service name to register under.
    #[arg(long, value_name = "NAME", requires = "etcd")]
    service: Option<String>,
    /// With --etcd: the address clients are given (default: the --addr bound).
    #[arg(long, value_name = "ADDR", requires = "etcd")]
    advertise: Option<String>,
    /// With --etcd: the registration lease's TTL.
    #[arg(long, value_name = "SECS", default_value_t = 5, requires = "etcd")]
    lease_ttl: u64,
}

impl Args {
    /// Who may connect (`--allow`), and `admin_*` over a Unix socket only.
    fn rules(&self) -> easyrpc::Rules {
        use easyrpc::rules::Match;
        use easyrpc::Transport;
        let mut rules = easyrpc::Rules::new();
        if !self.allow.is_empty() {
            for cidr in &self.allow {
                rules = rules.allow(Match::any().from(*cidr));
            }
            rules = rules.deny(Match::any().on(Transport::Tcp).on(Transport::Tls));
        }
        rules.methods_only("admin_*", Match::any().on(Transport::Unix))
    }
}

/// No `#[tokio::main]`: prefork must fork before any runtime or thread exists, so
/// `run_listeners_with` builds the runtime itself (in each worker, or in this one process).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    examples::init_tracing();
    let args = Args::parse();
    if let Some(addr) = args.gate.clone() {
        examples::probes::set_gate(addr);
    }
    if let Some(path) = args.journal.clone() {
        examples::probes::set_journal(path);
    }
    let mut builder = examples::service::builder()
        .unstable_network(args.unstable_network)
        .heartbeat_timeout(Duration::from_secs(args.heartbeat_timeout))
        .bind_core(args.bind_core);
    if let Some(workers) = args.workers {
        builder = builder.prefork(workers);
    }
    builder = builder.rules(args.rules());
    if let (Some(etcd), Some(service)) = (&args.etcd, &args.service) {
        let mut reg = easyrpc::Registration::new(etcd.split(','), service.as_str())
            .ttl(Duration::from_secs(args.lease_ttl));
        if let Some(addr) = &args.advertise {
            reg = reg.advertise(addr.as_str());
        }
        builder = builder.discovery(reg);
    }
    let mut main = easyrpc::Endpoint::from(args.addr.as_str());
    let mut tls_listener = None;
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let mut tls = easyrpc::TlsConfig::from_pem_files(cert, key)?;
        if let Some(ca) = &args.tls_client_ca {
            tls = tls.client_ca(ca)?;
        }
        match &args.tls_addr {
            Some(addr) => tls_listener = Some(easyrpc::Endpoint::tls(addr.as_str(), tls)),
            // As before --tls-addr existed: the main address is TLS.
            None => main = easyrpc::Endpoint::tls(args.addr.as_str(), tls),
        }
    }
    builder = builder.listen(main);
    if let Some(tls) = tls_listener {
        builder = builder.listen(tls);
    }
    if let Some(path) = &args.unix {
        builder = builder.listen_unix(path);
    }
    // Bound here, so that its port is known (and printed) with port 0.
    let mut metrics_addr = None;
    if let Some(addr) = &args.metrics_addr {
        let listener = std::net::TcpListener::bind(addr)?;
        metrics_addr = Some(listener.local_addr()?);
        builder = builder.metrics_listener(listener);
    }
    builder.run_listeners_with(|listeners| {
        // The main address first, as `listening on ADDR` (tests read that line).
        for (i, local) in listeners.iter().enumerate() {
            match local.transport() {
                easyrpc::Transport::Tls if i > 0 => println!("listening on {local} (tls)"),
                _ => println!("listening on {local}"),
            }
        }
        if let Some(addr) = metrics_addr {
            println!("metrics on {addr}");
        }
        let _ = std::io::stdout().flush();
    })?;
    Ok(())
}
