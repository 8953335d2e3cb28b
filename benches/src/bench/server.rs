//! `bench server`: one system's server in this process, and the handle the harness keeps
//! on such a process.
//!
//! The server binds, prints `PORT <n>` on stdout, and serves until its stdin closes: the
//! harness holds the other end, so a server never outlives the run, even if the harness
//! dies. Our prefork server (`--system ours --workers N`, N > 1, or `--system
//! ours-prefork`) does the same through rpc-server's supervisor: see [`serve_prefork`].

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use benches::Record;
use easyrpc_server::{Builder, Method, Server, WorkerRuntime};
use futures_util::StreamExt;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
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
    /// Worker processes (ours only). With `--system ours`, 1 serves from this process and
    /// N > 1 through rpc-server's prefork supervisor; `--system ours-prefork` always goes
    /// through the supervisor, with N workers (1 included).
    #[arg(long, default_value_t = 1)]
    pub(crate) workers: usize,
    /// Prefork only: leave the workers unpinned (rpc-server's `bind_core` off, its
    /// default): the kernel places them within the supervisor's CPU mask. Without it each
    /// worker is pinned to a core (see `serve_prefork`).
    #[arg(long)]
    pub(crate) no_bind_core: bool,
    /// Ours only: put this many pass-through tower layers around dispatch (what the
    /// layered path costs, with layers that do nothing themselves).
    #[arg(long, default_value_t = 0)]
    pub(crate) layers: usize,
    /// Ours only: the largest message accepted (rpc-server's `max_message_size`; default
    /// 64 MiB). The harness raises it for the 64 MiB echo, whose frame is over the default.
    #[arg(long, value_name = "BYTES")]
    pub(crate) max_message_size: Option<usize>,
    /// Ours only: record per-function metrics, with their endpoint on a free port of
    /// 127.0.0.1 (what metrics cost per call; nobody scrapes).
    #[arg(long)]
    pub(crate) metrics: bool,
    /// The certificate chain of `ours-tls` and `tonic-tls` (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub(crate) tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub(crate) tls_key: Option<std::path::PathBuf>,
    /// The socket of `ours-unix` (which then prints `PORT 0`).
    #[arg(long, value_name = "PATH")]
    pub(crate) unix: Option<std::path::PathBuf>,
}

impl ServerArgs {
    /// The certificate and key files, for a TLS system.
    fn tls_files(&self) -> Result<(&std::path::Path, &std::path::Path)> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => Ok((c, k)),
            _ => Err(format!("--system {} needs --tls-cert and --tls-key", self.system.arg()).into()),
        }
    }
}

/// Our server's functions and settings, as [`our_server`] builds them.
///
/// Every function is registered as an *async* fn: a sync fn runs on the blocking pool by
/// design (a thread hop per call), which is not what a cheap `add` should measure. The
/// other systems' handlers are async too.
fn our_builder() -> Builder {
    Server::builder()
        .register(Method::async_fn("add", |(a, b): (i64, i64)| async move {
            a.wrapping_add(b)
        }))
        .register(Method::async_fn(
            "echo",
            |(data,): (ByteBuf,)| async move { data },
        ))
        // The same as a `Blob`: large ones are not copied (`--workloads 64m-blob`).
        .register(Method::async_fn(
            "echo_blob",
            |(data,): (easyrpc_proto::Blob,)| async move { data },
        ))
        .register(Method::async_fn(
            "echo_records",
            |(records,): (Vec<Record>,)| async move { records },
        ))
        // `count` items of `size` bytes each, as a stream (`bench streams`).
        .register(Method::stream_fn("items", |(count, size): (u64, u32)| {
            let data = bytes::Bytes::from(vec![7u8; size as usize]);
            futures_util::stream::iter((0..count).map(move |_| data.clone()))
        }))
}

/// [`our_builder`] with the limits of `args`.
fn our_builder_with(args: &ServerArgs) -> Builder {
    let builder = our_builder();
    match args.max_message_size {
        Some(n) => builder.max_message_size(n),
        None => builder,
    }
}

/// Our server with the benchmark's functions, for one process, with `args.layers`
/// pass-through layers, and metrics with `args.metrics`.
pub(crate) fn our_server(args: &ServerArgs) -> Result<Server> {
    Ok(our_layered_builder(args).build()?)
}

fn our_layered_builder(args: &ServerArgs) -> Builder {
    let mut builder = our_builder_with(args);
    for _ in 0..args.layers {
        builder = builder.layer(tower::layer::util::Identity::new());
    }
    if args.metrics {
        builder = builder.metrics("127.0.0.1:0");
    }
    builder
}

/// The listen backlog of every tokio server here. `TcpListener::bind` listens with 128
/// (std's), and a burst of connects beyond it is dropped and retransmitted a second later
/// (the `accept` mode opens 256 at a time): 1024 as the bench's servers, below the
/// kernel's `somaxconn` (4096 here).
const BACKLOG: u32 = 1024;

fn listen(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket.listen(BACKLOG)?)
}

fn announce(addr: SocketAddr) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "PORT {}", addr.port())?;
    out.flush()?;
    Ok(())
}

/// Run `bench server`: serve until stdin closes.
pub(crate) fn serve(args: &ServerArgs) -> Result<()> {
    let prefork = match (args.system, args.workers) {
        (_, 0) => return Err("--workers must be at least 1".into()),
        (ServerKind::OursPrefork, _) => true,
        (ServerKind::OursPrefork1, 1) => true,
        (ServerKind::OursPrefork1, n) => {
            return Err(format!("--workers {n}: ours-prefork-1 has one worker").into())
        }
        (ServerKind::Ours, n) => n > 1,
        (_, 1) => false,
        (kind, n) => {
            return Err(format!("--workers {n}: only our server has workers, not {}", kind.arg()).into())
        }
    };
    // Before any thread exists: the threads of a runtime, and prefork workers, inherit it.
    if let Some(core) = args.cpu {
        placement::pin(core)?;
    }
    if prefork {
        return serve_prefork(args);
    }
    // The harness closes our stdin when it is done (or dies): exit then.
    std::thread::spawn(|| {
        let _ = std::io::stdin().lock().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    match args.system {
        ServerKind::OursUnix => {
            let path = args.unix.clone().ok_or("--system ours-unix needs --unix PATH")?;
            let builder = our_layered_builder(args).listen_unix(path);
            placement::runtime()?.block_on(async move {
                let listening = builder.bind().await?;
                println!("PORT 0");
                std::io::stdout().flush()?;
                listening.serve(std::future::pending()).await;
                Ok(())
            })
        }
        ServerKind::RawStd => {
            let listener = std::net::TcpListener::bind(args.addr)?;
            announce(listener.local_addr()?)?;
            crate::raw::serve_std(listener)
        }
        kind => placement::runtime()?.block_on(async move {
            let listener = listen(args.addr)?;
            announce(listener.local_addr()?)?;
            match kind {
                ServerKind::Ours => {
                    our_server(args)?.run(listener, std::future::pending()).await;
                    Ok(())
                }
                ServerKind::OursTls => {
                    let (cert, key) = args.tls_files()?;
                    let tls = easyrpc_server::TlsConfig::from_pem_files(cert, key)?;
                    our_server(args)?
                        .run_tls(listener, tls, std::future::pending())
                        .await;
                    Ok(())
                }
                ServerKind::Tonic => serve_tonic(listener, None).await,
                ServerKind::TonicTls => serve_tonic(listener, Some(args.tls_files()?)).await,
                ServerKind::Tarpc => serve_tarpc(listener).await,
                ServerKind::RawTokio => crate::raw::serve_tokio(listener).await,
                ServerKind::RawStd
                | ServerKind::OursPrefork
                | ServerKind::OursPrefork1
                | ServerKind::OursUnix => {
                    unreachable!("served above")
                }
            }
        }),
    }
}

/// Our server through rpc-server's prefork supervisor ([`Builder::prefork`] and
/// [`Builder::run_with`]): this process becomes the supervisor and forks `args.workers`
/// worker processes, each with its own current-thread runtime and its own `SO_REUSEPORT`
/// listener on the port. `PORT <n>` is printed once every worker listens.
///
/// The supervisor must fork while it is the only thread (a forked copy of a threaded
/// process has lost its other threads), so the stdin-watching thread of the other servers
/// cannot be used here. A child process holds stdin instead (`bench stdin-watch`, see
/// [`watch_stdin`]) and sends the supervisor TERM when stdin closes: the workers stop
/// accepting, finish their calls (grace period 1 s: nothing is in flight when the harness
/// is done) and exit, and the supervisor returns once it has reaped every one of them.
/// Should the supervisor be killed instead, its workers get TERM from the kernel
/// (`PR_SET_PDEATHSIG`): no worker outlives it by more than its grace period.
///
/// `bind_core` (on unless `--no-bind-core`) pins worker `i` to core `i % n` of the `n`
/// cores this process may use
/// (rpc-server reads them from the affinity mask). With `--cpu` (placements `together`
/// and `separate`) that is the one core, so every worker runs on the server's core, as
/// the one-worker server does; with no `--cpu` (`unpinned`) the workers are spread over
/// every core, one per core with as many workers as cores, as prefork is meant to run. A
/// current-thread runtime per worker follows the rule of [`placement::runtime`]: one
/// core, one thread.
fn serve_prefork(args: &ServerArgs) -> Result<()> {
    let mut watcher = Command::new(std::env::current_exe()?)
        .args(["stdin-watch", "--supervisor", &std::process::id().to_string()])
        .stdin(Stdio::inherit())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut builder = our_builder_with(args);
    if args.metrics {
        builder = builder.metrics("127.0.0.1:0");
    }
    let served = builder
        .grace_period(Duration::from_secs(1))
        .prefork(args.workers)
        .bind_core(!args.no_bind_core)
        .worker_runtime(WorkerRuntime::CurrentThread)
        .run_with(args.addr, |addr| {
            // If stdout is gone, so is the harness: stdin closes too, and we stop.
            if let Err(e) = announce(addr) {
                eprintln!("bench server: cannot print the port: {e}");
            }
        });
    // The supervisor reaps every child, the watcher included once it has exited; if it
    // has not (the supervisor failed), end it. `try_wait` returning `None` means it is
    // still our unreaped child, so its pid cannot have been reused.
    if let Ok(None) = watcher.try_wait() {
        let _ = watcher.kill();
        let _ = watcher.wait();
    }
    Ok(served?)
}

/// The options of `bench stdin-watch`.
#[derive(Debug, clap::Args)]
pub(crate) struct WatchArgs {
    /// The prefork supervisor to stop: our parent.
    #[arg(long)]
    pub(crate) supervisor: u32,
}

/// Run `bench stdin-watch`, the child of a prefork server ([`serve_prefork`]): wait until
/// stdin (shared with the supervisor) closes, then send the supervisor TERM.
pub(crate) fn watch_stdin(args: &WatchArgs) -> Result<()> {
    // Die with the supervisor; and if it is already gone (our parent is someone else),
    // there is nothing to watch for, and its pid must not be signalled.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
    if std::os::unix::process::parent_id() != args.supervisor {
        return Ok(());
    }
    let _ = std::io::stdin().lock().read_to_end(&mut Vec::new());
    if std::os::unix::process::parent_id() == args.supervisor {
        let pid = i32::try_from(args.supervisor).map_err(|_| "--supervisor: not a pid")?;
        kill(Pid::from_raw(pid), Signal::SIGTERM)?;
    }
    Ok(())
}

/// tonic, over TLS with `tls` (certificate and key files).
async fn serve_tonic(
    listener: tokio::net::TcpListener,
    tls: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<()> {
    // tonic sets TCP_NODELAY only on the sockets it accepts itself; with our own listener
    // the incoming stream has to be told.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut builder = tonic::transport::Server::builder();
    if let Some((cert, key)) = tls {
        let identity = tonic::transport::Identity::from_pem(std::fs::read(cert)?, std::fs::read(key)?);
        builder = builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?;
    }
    builder
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
    /// The server process (a prefork server's supervisor): its CPU time and memory are
    /// read with those of the workers it forked (`procfs::server_pids`).
    pub(crate) pid: u32,
    /// Resident memory right after start, before any call (summed over the workers).
    pub(crate) idle_rss_kib: u64,
    child: Child,
    stdin: Option<ChildStdin>,
    _stdout: BufReader<ChildStdout>,
}

impl ServerProc {
    /// Start `bench server --system kind` (this same executable) and wait for its port;
    /// `workers` is the prefork server's worker count, `bind_core` whether its workers are
    /// pinned (both ignored for the other systems). `max_message` raises our servers'
    /// message size limit (ignored for the others).
    pub(crate) fn spawn(
        kind: ServerKind,
        cpu: Option<usize>,
        (workers, bind_core): (usize, bool),
        max_message: Option<usize>,
    ) -> Result<ServerProc> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(["server", "--system", kind.arg(), "--addr", "127.0.0.1:0"]);
        if let Some(n) = max_message.filter(|_| kind.is_ours()) {
            cmd.args(["--max-message-size", &n.to_string()]);
        }
        if let Some(core) = cpu {
            cmd.args(["--cpu", &core.to_string()]);
        }
        if kind == ServerKind::OursPrefork {
            cmd.args(["--workers", &workers.to_string()]);
        }
        if kind == ServerKind::OursPrefork1 {
            cmd.args(["--workers", "1"]);
        }
        if matches!(kind, ServerKind::OursPrefork | ServerKind::OursPrefork1) && !bind_core {
            cmd.arg("--no-bind-core");
        }
        if kind.is_tls() {
            let pki = crate::secure::pki()?;
            cmd.arg("--tls-cert")
                .arg(&pki.cert)
                .arg("--tls-key")
                .arg(&pki.key);
        }
        if kind == ServerKind::OursUnix {
            cmd.arg("--unix").arg(crate::secure::unix_path());
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
        let server = ServerProc {
            addr,
            pid,
            idle_rss_kib: crate::procfs::server_rss_kib(pid)?,
            child,
            stdin,
            _stdout: stdout,
        };
        // The port is printed once every worker listens: they are all there now. Fewer
        // would mean the harness cannot see them, and would under-count CPU and memory.
        let forked = crate::procfs::server_pids(pid)?.len() - 1;
        let expected = match kind {
            ServerKind::OursPrefork => workers,
            ServerKind::OursPrefork1 => 1,
            _ => 0,
        };
        if forked != expected {
            return Err(format!(
                "{} server: {forked} worker process(es) found under pid {pid}, expected {expected}",
                kind.arg()
            )
            .into());
        }
        Ok(server)
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        // Closing stdin asks the server to exit; kill it if it has not after a while. A
        // prefork supervisor exits only after reaping its workers.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Workers would get TERM when their supervisor dies, and drain before exiting:
        // kill them as well, so that none outlives the run.
        let workers = crate::procfs::server_pids(self.pid).unwrap_or_default();
        let _ = self.child.kill();
        for &w in workers.iter().skip(1) {
            if let Ok(w) = i32::try_from(w) {
                let _ = kill(Pid::from_raw(w), Signal::SIGKILL);
            }
        }
        let _ = self.child.wait();
    }
}
