//! `bench server`: one system's server in this process, and the handle the harness keeps
//! on such a process.
//!
//! The server binds, prints `PORT <n>` on stdout, and serves until its stdin closes: the
//! harness holds the other end, so a server never outlives the run, even if the harness
//! dies.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use benches::Record;
use futures_util::StreamExt;
use rpc_server::{Method, Server};
use serde_bytes::ByteBuf;
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Bincode;

use crate::placement;
use crate::system::ServerKind;
use crate::tarpc_svc::Bench as _;
use crate::Result;

/// The options of `bench server`.
#[derive(Debug, clap::Args)]
pub(crate) struct ServerArgs {
    /// Which system to serve.
    #[arg(long, value_enum)]
    pub(crate) system: ServerKind,
    /// Address to listen on; port 0 picks a free port (printed as `PORT <n>`).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub(crate) addr: SocketAddr,
    /// Pin the server (every thread it starts) to this core.
    #[arg(long)]
    pub(crate) cpu: Option<usize>,
    /// Worker processes (ours only). Only 1 for now: see the prefork hook in `serve`.
    #[arg(long, default_value_t = 1)]
    pub(crate) workers: usize,
}

/// Our server with the benchmark's functions.
///
/// Every function is registered as an *async* fn: a sync fn runs on the blocking pool by
/// design (a thread hop per call), which is not what a cheap `add` should measure. The
/// other systems' handlers are async too.
pub(crate) fn our_server() -> Result<Server> {
    Ok(Server::builder()
        .register(Method::async_fn("add", |(a, b): (i64, i64)| async move {
            a.wrapping_add(b)
        }))
        .register(Method::async_fn(
            "echo",
            |(data,): (ByteBuf,)| async move { data },
        ))
        .register(Method::async_fn(
            "echo_records",
            |(records,): (Vec<Record>,)| async move { records },
        ))
        .build()?)
}

fn announce(addr: SocketAddr) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "PORT {}", addr.port())?;
    out.flush()?;
    Ok(())
}

/// Run `bench server`: serve until stdin closes.
pub(crate) fn serve(args: &ServerArgs) -> Result<()> {
    if let Some(core) = args.cpu {
        placement::pin(core)?;
    }
    // HOOK(prefork): the prefork issue adds `--workers N > 1` for ours: the supervisor
    // forks N workers (before any runtime or thread exists), each running `serve_ours` on
    // a SO_REUSEPORT listener; CPU time and RSS must then be summed over the workers'
    // pids. Until then only one worker exists, and asking for more is an error rather
    // than a silent single worker.
    if args.workers != 1 {
        return Err(format!(
            "--workers {}: prefork workers are not implemented yet (only 1 worker)",
            args.workers
        )
        .into());
    }
    // The harness closes our stdin when it is done (or dies): exit then.
    std::thread::spawn(|| {
        let _ = std::io::stdin().lock().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    match args.system {
        ServerKind::RawStd => {
            let listener = std::net::TcpListener::bind(args.addr)?;
            announce(listener.local_addr()?)?;
            crate::raw::serve_std(listener)
        }
        kind => placement::runtime()?.block_on(async move {
            let listener = tokio::net::TcpListener::bind(args.addr).await?;
            announce(listener.local_addr()?)?;
            match kind {
                ServerKind::Ours => {
                    our_server()?.run(listener, std::future::pending()).await;
                    Ok(())
                }
                ServerKind::Tonic => serve_tonic(listener).await,
                ServerKind::Tarpc => serve_tarpc(listener).await,
                ServerKind::RawTokio => crate::raw::serve_tokio(listener).await,
                ServerKind::RawStd => unreachable!("served above"),
            }
        }),
    }
}

async fn serve_tonic(listener: tokio::net::TcpListener) -> Result<()> {
    // tonic sets TCP_NODELAY only on the sockets it accepts itself; with our own listener
    // the incoming stream has to be told.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .serve_with_incoming(crate::grpc::BenchServer::new(crate::grpc::Service), incoming)
        .await?;
    Ok(())
}

async fn serve_tarpc(listener: tokio::net::TcpListener) -> Result<()> {
    let mut incoming = tarpc::serde_transport::tcp::listen_on(listener, Bincode::default).await?;
    incoming
        .config_mut()
        .max_frame_length(crate::conn::TARPC_MAX_FRAME);
    // As tarpc's examples do, but with no cap on concurrent connections (the examples'
    // `buffer_unordered(10)` would stall the 256-connection runs).
    incoming
        .for_each(|transport| async move {
            let Ok(transport) = transport else { return };
            let _ = transport.get_ref().set_nodelay(true);
            let channel = BaseChannel::with_defaults(transport);
            tokio::spawn(channel.execute(crate::tarpc_svc::Service.serve()).for_each(
                |response| async move {
                    tokio::spawn(response);
                },
            ));
        })
        .await;
    Ok(())
}

/// A server process started by the harness.
#[derive(Debug)]
pub(crate) struct ServerProc {
    pub(crate) addr: SocketAddr,
    pub(crate) pid: u32,
    /// Resident memory right after start, before any call.
    pub(crate) idle_rss_kib: u64,
    child: Child,
    stdin: Option<ChildStdin>,
    _stdout: BufReader<ChildStdout>,
}

impl ServerProc {
    /// Start `bench server --system kind` (this same executable) and wait for its port.
    pub(crate) fn spawn(kind: ServerKind, cpu: Option<usize>) -> Result<ServerProc> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(["server", "--system", kind.arg(), "--addr", "127.0.0.1:0"]);
        if let Some(core) = cpu {
            cmd.args(["--cpu", &core.to_string()]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let pid = child.id();
        let stdin = child.stdin.take();
        // Unwrap: stdout was piped just above.
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let port: u16 = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("{} server printed {line:?} instead of its port", kind.arg()))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        Ok(ServerProc {
            addr,
            pid,
            idle_rss_kib: crate::procfs::rss_kib(pid)?,
            child,
            stdin,
            _stdout: stdout,
        })
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        // Closing stdin asks the server to exit; kill it if it has not after a while.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
