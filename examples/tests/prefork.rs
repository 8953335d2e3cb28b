//! Prefork mode, end to end: the real `server` example binary with `--workers 3`.
//!
//! What each test shows: connections spread over the workers (asked with `rpc.worker`);
//! `--bind-core` pins each worker; a worker killed with SIGKILL under load is back within
//! a second and retrying clients see no failed call; TERM under load lets every call in
//! flight finish and exits 0; HUP under load replaces every worker without a failed call;
//! `max_flow` is one limit across all workers (exactly 10 of 200 run at once), and the
//! slots of a killed worker come back; the dedup cache holds across workers (every key of
//! a fault-injected run executes exactly once, and a retry on another worker waits for the
//! call running on the first).
//!
//! No test sleeps to synchronise: what runs at once is counted at a gate the test holds
//! (the example's `gate` function connects to the test and waits until the test lets go),
//! executions are counted in a journal file, and every wait is bounded ([`WAIT`]); a few
//! conditions are polled with a short pause, always against a deadline. The tests take
//! turns (one server of three workers at a time on a 2-core machine).
#![cfg(target_os = "linux")]

#[path = "../../rpc-server/tests/common/proxy.rs"]
#[allow(dead_code, unreachable_pub)]
mod proxy;

#[path = "common/bins.rs"]
mod bins;
#[path = "common/pki.rs"]
#[allow(dead_code)]
mod pki;

use bins::example;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use easyrpc::{Client, ClientConfig, ErrorCode};
use easyrpc_proto::{encode_request, Codec, Framer, Hello, Message, Params};
use futures_util::StreamExt;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

/// The bound on any single wait.
const WAIT: Duration = Duration::from_secs(30);
const WORKERS: usize = 3;

// ---------------------------------------------------------------------------------------
// Harness

/// One test at a time: each starts a server of three workers, on two cores.
fn serial() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|p| p.into_inner())
}

/// Run an async test on its own runtime, in turn with the others.
fn run<F: Future>(test: F) -> F::Output {
    let _turn = serial();
    // Unwrap: building a runtime only fails when the OS refuses threads.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(test)
}

/// Wait until `cond` holds, checking every 2 ms, failing after [`WAIT`].
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// The server example, in prefork mode, with its log (stderr) collected; stopped (TERM,
/// then KILL) when dropped, its log printed if the test failed.
struct Server {
    child: Option<Child>,
    addr: SocketAddr,
    /// The lines it prints after the first (one per further listener).
    lines: std_mpsc::Receiver<String>,
    log: Arc<Mutex<String>>,
    /// Reads the log until every process holding the pipe (supervisor and workers) exits.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let mut child = Command::new(example("server"))
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("PREFORK_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the server example");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let reader = std::thread::spawn({
            let log = log.clone();
            move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let line = rx.recv_timeout(WAIT).expect("the server printed its address");
        let mut server = Server {
            child: Some(child),
            addr: "0.0.0.0:0".parse().unwrap(),
            lines: rx,
            log,
            reader: Some(reader),
        };
        server.addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}\n{}", server.log()))
            .parse()
            .unwrap();
        server
    }

    fn prefork(extra: &[&str]) -> Server {
        let workers = WORKERS.to_string();
        let mut args = vec!["--workers", workers.as_str()];
        args.extend_from_slice(extra);
        Server::start(&args)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// The next line it printed (a further listener's `listening on` line).
    fn next_line(&self) -> String {
        self.lines
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("no further line within {WAIT:?}\n{}", self.log()))
    }

    fn signal(&self, s: Signal) {
        kill(Pid::from_raw(self.pid() as i32), s).unwrap();
    }

    fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Wait (bounded) for the supervisor to exit, and for its last log lines.
    fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let (tx, rx) = std_mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let status = child.wait();
            let _ = tx.send(());
            (child, status)
        });
        if rx.recv_timeout(WAIT).is_err() {
            panic!("the supervisor did not exit within {WAIT:?}\n{}", self.log());
        }
        let (_, status) = waiter.join().unwrap();
        // The workers exited first: the pipe is closed and the reader ends.
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        status.unwrap()
    }

    /// The supervisor's children, with their state letter from /proc (Z: zombie).
    fn children(&self) -> Vec<(u32, char)> {
        let pid = self.pid();
        let list = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        list.split_whitespace()
            .filter_map(|p| p.parse().ok())
            .map(|p: u32| (p, state(p).unwrap_or('?')))
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let path = std::env::temp_dir().join(format!("rpc-prefork-server-{}.log", self.pid()));
            let log = self.log();
            let _ = std::fs::write(&path, &log);
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("---- server log: {} (last lines) ----", path.display());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let (tx, rx) = std_mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        if rx.recv_timeout(WAIT).is_err() {
            // Its workers die with it (PR_SET_PDEATHSIG).
            let _ = kill(pid, Signal::SIGKILL);
        }
    }
}

/// A process's state letter from /proc/PID/stat, or `None` once it is gone (reaped).
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ppid ...": the comm may hold spaces, so look after the last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

fn client_config() -> ClientConfig {
    let mut config = ClientConfig::default();
    config.timeout = Duration::from_secs(20);
    // Plain clients of our server: its codes are ours (`Overloaded`, and a `shutting down`
    // refusal resent during a roll), which a server that did not answer a hello cannot show.
    config.our_server = true;
    config.reconnect_backoff = Duration::from_millis(1);
    config.reconnect_backoff_max = Duration::from_millis(20);
    config
}

/// `rpc.worker` on `client`'s connection: (index, pid).
async fn worker_of(client: &Client) -> (usize, u32) {
    let w: HashMap<String, u64> = within("rpc.worker", client.call("rpc.worker", ())).await.unwrap();
    (w["index"] as usize, w["pid"] as u32)
}

/// `rpc.worker` over a fresh connection: where the kernel put it. A connection the
/// kernel queued at a listener that is closing (a killed worker's) is reset: try again, a
/// bounded number of times.
async fn probe(addr: SocketAddr) -> (usize, u32) {
    let mut last = None;
    for _ in 0..100 {
        let attempt = async {
            let client = Client::connect_with(addr, client_config()).await?;
            let w: HashMap<String, u64> = client.call("rpc.worker", ()).await?;
            Ok::<_, easyrpc::Error>((w["index"] as usize, w["pid"] as u32))
        };
        match within("rpc.worker on a new connection", attempt).await {
            Ok(w) => return w,
            Err(e) => last = Some(e),
        }
    }
    panic!("100 connections failed, the last with {last:?}");
}

/// Every worker, by index, probing with new connections until `n` indices answered.
async fn workers(addr: SocketAddr, n: usize) -> BTreeMap<usize, u32> {
    let mut seen = BTreeMap::new();
    for _ in 0..1000 {
        let (index, pid) = probe(addr).await;
        seen.insert(index, pid);
        if seen.len() == n {
            return seen;
        }
    }
    panic!("1000 connections reached only the workers {seen:?}");
}

/// Calls of `add` from several clients until stopped, each checked; retrying clients
/// (`idempotent`: resent on a new connection when theirs drops).
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    /// The worker index each client's first connection landed on.
    landed: Arc<Mutex<Vec<usize>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    async fn start(addr: SocketAddr, clients: usize) -> Load {
        let load = Load {
            stop: Arc::new(AtomicBool::new(false)),
            ok: Arc::new(AtomicU64::new(0)),
            failures: Arc::new(Mutex::new(Vec::new())),
            landed: Arc::new(Mutex::new(Vec::new())),
            tasks: Vec::new(),
        };
        let mut tasks = Vec::new();
        for c in 0..clients as i64 {
            let client = within("connect", Client::connect_with(addr, client_config()))
                .await
                .unwrap()
                .idempotent();
            let (index, _) = worker_of(&client).await;
            load.landed.lock().unwrap().push(index);
            let (stop, ok, failures) = (load.stop.clone(), load.ok.clone(), load.failures.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    match client.call::<_, i64>("add", (i, c)).await {
                        Ok(v) if v == i + c => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(v) => failures.lock().unwrap().push(format!("add({i}, {c}) = {v}")),
                        Err(e) => failures.lock().unwrap().push(format!("add({i}, {c}): {e}")),
                    }
                    i += 1;
                }
            }));
        }
        Load { tasks, ..load }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Wait until `more` further calls have succeeded.
    async fn progress(&self, more: u64) {
        let target = self.ok() + more;
        until("calls to keep succeeding", || self.ok() >= target).await;
    }

    /// Stop the calls where they are (the server is gone: a retrying call would retry
    /// until its timeout).
    fn abort(self) {
        for t in self.tasks {
            t.abort();
        }
    }

    /// Stop and return the failures.
    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            within("the load to stop", t).await.unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

/// The test's end of the example's `gate` function: every execution of `gate` connects
/// here and holds its `max_flow` slot until its connection is dropped.
struct Gate {
    addr: SocketAddr,
    rx: mpsc::UnboundedReceiver<(TcpStream, u32)>,
    task: JoinHandle<()>,
}

impl Gate {
    async fn start() -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut pid = [0u8; 4];
                    if s.read_exact(&mut pid).await.is_ok() {
                        let _ = tx.send((s, u32::from_le_bytes(pid)));
                    }
                });
            }
        });
        Gate { addr, rx, task }
    }

    fn arg(&self) -> String {
        self.addr.to_string()
    }

    /// The next execution to reach the gate: its connection (drop it to let the execution
    /// finish) and its worker's pid.
    async fn next(&mut self) -> (TcpStream, u32) {
        within("an execution at the gate", self.rx.recv()).await.unwrap()
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------
// Spread, pinning, rpc.worker

#[test]
fn connections_spread_over_the_workers() {
    run(async {
        let server = Server::prefork(&[]);
        // Held open at once, so that every one has its own 4-tuple.
        let mut clients = Vec::new();
        let mut seen: BTreeMap<usize, BTreeSet<u32>> = BTreeMap::new();
        for _ in 0..60 {
            let client = within("connect", Client::connect_with(server.addr, client_config()))
                .await
                .unwrap();
            let (index, pid) = worker_of(&client).await;
            seen.entry(index).or_default().insert(pid);
            clients.push(client);
        }
        println!("60 connections over the workers: {seen:?}");
        assert_eq!(
            seen.keys().copied().collect::<Vec<_>>(),
            vec![0, 1, 2],
            "every worker got connections"
        );
        for (index, pids) in &seen {
            assert_eq!(pids.len(), 1, "index {index} answered from one process: {pids:?}");
            let pid = *pids.iter().next().unwrap();
            assert_ne!(pid, server.pid(), "a worker is not the supervisor");
            assert_eq!(
                parent_of(pid),
                Some(server.pid()),
                "worker {pid} is a child of the supervisor"
            );
        }
        let children = server.children();
        assert_eq!(children.len(), WORKERS, "children {children:?}");
    });
}

/// `--tls-cert`/`--tls-key` with `--workers`: every worker serves TLS (each makes its
/// acceptor from the settings loaded before the fork); a plaintext connection is closed.
#[test]
fn every_worker_serves_tls() {
    run(async {
        let pki = pki::Pki::new("prefork");
        let (cert, key) = (
            pki.server_cert.to_str().unwrap(),
            pki.server_key.to_str().unwrap(),
        );
        let server = Server::prefork(&["--tls-cert", cert, "--tls-key", key]);
        let addr = server.addr.to_string();
        let mut seen = BTreeMap::new();
        for _ in 0..1000 {
            let attempt = async {
                let client = Client::connect_tls_with(&addr, pki.client_tls(), client_config()).await?;
                let w: HashMap<String, u64> = client.call("rpc.worker", ()).await?;
                Ok::<_, easyrpc::Error>((w["index"] as usize, w["pid"] as u32))
            };
            // A connection queued at a listener that is closing is reset: try again.
            if let Ok((index, pid)) = within("rpc.worker over TLS", attempt).await {
                seen.insert(index, pid);
            }
            if seen.len() == WORKERS {
                break;
            }
        }
        assert_eq!(
            seen.keys().copied().collect::<Vec<_>>(),
            (0..WORKERS).collect::<Vec<_>>(),
            "every worker answered over TLS\n{}",
            server.log()
        );
        let mut plain = TcpStream::connect(server.addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut plain, b"\x94\x00\x01\xa3add\x92\x02\x03")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        within("the plaintext connection to close", async {
            while !matches!(plain.read(&mut buf).await, Ok(0) | Err(_)) {}
        })
        .await;
    });
}

/// A worker stopped with SIGSTOP (so that the other one must accept), continued when
/// dropped.
struct Stopped(u32);

impl Stopped {
    fn new(pid: u32) -> Stopped {
        kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).unwrap();
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0 as i32), Signal::SIGCONT);
    }
}

/// Several listeners under prefork (issue 12), with two workers: TCP (`--addr`), TLS
/// (`--tls-addr`) and a Unix socket (`--unix`). Every worker serves every listener: over
/// TCP and TLS, new connections reach both (`SO_REUSEPORT`); the Unix socket, bound once
/// by the supervisor, is accepted on by each worker while the other is stopped, also after
/// a rolling restart (the new workers inherit it). `admin_*` answers over the Unix socket
/// only. TERM stops everything and the supervisor removes the socket file.
#[test]
fn every_worker_serves_tcp_tls_and_the_unix_socket() {
    run(async {
        let pki = pki::Pki::new("prefork-listeners");
        let sock = pki.dir.join("rpc.sock");
        let (cert, key) = (
            pki.server_cert.to_str().unwrap(),
            pki.server_key.to_str().unwrap(),
        );
        let mut server = Server::start(&[
            "--workers",
            "2",
            "--tls-addr",
            "127.0.0.1:0",
            "--tls-cert",
            cert,
            "--tls-key",
            key,
            "--unix",
            sock.to_str().unwrap(),
        ]);
        let tls_line = server.next_line();
        let tls = tls_line
            .strip_prefix("listening on ")
            .and_then(|l| l.strip_suffix(" (tls)"))
            .unwrap_or_else(|| panic!("unexpected line {tls_line:?}"))
            .to_owned();
        let unix_name = format!("unix:{}", sock.display());
        assert_eq!(server.next_line(), format!("listening on {unix_name}"));
        assert!(sock.exists());

        // TCP and TLS: the kernel spreads new connections over both workers.
        let by_index = workers(server.addr, 2).await;
        assert_eq!(by_index.keys().copied().collect::<Vec<_>>(), [0, 1]);
        let mut over_tls = BTreeMap::new();
        for _ in 0..1000 {
            let attempt = async {
                let settings = pki.client_tls().server_name("localhost");
                let client = Client::connect_tls_with(&tls, settings, client_config()).await?;
                worker_of_checked(&client).await
            };
            if let Ok((index, pid)) = within("rpc.worker over TLS", attempt).await {
                over_tls.insert(index, pid);
            }
            if over_tls.len() == 2 {
                break;
            }
        }
        assert_eq!(
            over_tls,
            by_index,
            "both workers answer over TLS\n{}",
            server.log()
        );

        // The Unix socket: each worker accepts on it (the other one stopped).
        let over_unix = |workers: BTreeMap<usize, u32>| {
            let sock = sock.clone();
            async move {
                for (&index, &pid) in &workers {
                    let others: Vec<_> = workers.iter().filter(|(i, _)| **i != index).collect();
                    let _stopped: Vec<Stopped> = others.iter().map(|(_, p)| Stopped::new(**p)).collect();
                    let client = within(
                        "connect over the Unix socket",
                        Client::connect_unix_with(&sock, client_config()),
                    )
                    .await
                    .unwrap();
                    assert_eq!(
                        worker_of(&client).await,
                        (index, pid),
                        "the running worker accepted"
                    );
                }
            }
        };
        over_unix(by_index.clone()).await;

        // admin_* over the Unix socket only.
        let unix = within("connect", Client::connect_unix_with(&sock, client_config()))
            .await
            .unwrap();
        let info = within("admin_info", examples::api::admin_info::call(&unix))
            .await
            .unwrap();
        assert_eq!(info["listener"], unix_name);
        for (what, client) in [
            (
                "tcp",
                Client::connect_with(server.addr, client_config()).await.unwrap(),
            ),
            (
                "tls",
                Client::connect_tls_with(&tls, pki.client_tls().server_name("localhost"), client_config())
                    .await
                    .unwrap(),
            ),
        ] {
            let e = within("admin_info", examples::api::admin_info::call(&client))
                .await
                .unwrap_err();
            assert_eq!(
                e.remote().map(|r| r.kind()),
                Some(ErrorCode::PermissionDenied),
                "{what}: {e}"
            );
        }
        drop(unix);

        // HUP: the new workers inherit the Unix socket.
        let old: BTreeSet<u32> = by_index.values().copied().collect();
        server.signal(Signal::SIGHUP);
        until("the old workers to exit", || {
            old.iter().all(|&p| state(p).is_none())
        })
        .await;
        let new = workers(server.addr, 2).await;
        assert!(new.values().all(|p| !old.contains(p)), "{new:?} replaced {old:?}");
        over_unix(new).await;

        server.signal(Signal::SIGTERM);
        let status = server.wait_exit();
        assert!(status.success(), "{status}\n{}", server.log());
        assert!(!sock.exists(), "the supervisor removes the socket file");
    });
}

/// `rpc.worker` on `client`'s connection, as a result (a connection reset while a worker
/// starts or stops is an error to retry, not a failure).
async fn worker_of_checked(client: &Client) -> Result<(usize, u32), easyrpc::Error> {
    let w: HashMap<String, u64> = client.call("rpc.worker", ()).await?;
    Ok((w["index"] as usize, w["pid"] as u32))
}

/// `State<T>` under prefork (issue 11): each worker builds its own (`state_with`), so a
/// value put through one worker is seen by calls on that worker and not on another.
#[test]
fn each_worker_has_its_own_state() {
    run(async {
        let server = Server::prefork(&[]);
        // Connections held open, by worker, until two workers have one.
        let mut by_worker: BTreeMap<usize, Client> = BTreeMap::new();
        for _ in 0..200 {
            let client = within("connect", Client::connect_with(server.addr, client_config()))
                .await
                .unwrap();
            let (index, _) = worker_of(&client).await;
            by_worker.entry(index).or_insert(client);
            if by_worker.len() == 2 {
                break;
            }
        }
        let mut clients = by_worker.into_values();
        let (a, b) = (
            clients.next().unwrap(),
            clients.next().expect("two workers answered"),
        );
        let put = examples::api::kv_put::call(&a, "k".into(), "on a".into());
        assert_eq!(within("kv_put", put).await.unwrap(), None);
        let get = examples::api::kv_get::call(&a, "k".into());
        assert_eq!(within("kv_get", get).await.unwrap(), Some("on a".into()));
        let get = examples::api::kv_get::call(&b, "k".into());
        assert_eq!(
            within("kv_get", get).await.unwrap(),
            None,
            "another worker's state"
        );
    });
}

#[test]
fn one_process_answers_rpc_worker_with_index_0() {
    run(async {
        let server = Server::start(&[]);
        assert_eq!(probe(server.addr).await, (0, server.pid()));
        assert!(server.children().is_empty());
    });
}

fn cpus_allowed(status: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// "0-1,4" as [0, 1, 4].
fn cpu_list(list: &str) -> Vec<usize> {
    list.split(',')
        .filter(|p| !p.is_empty())
        .flat_map(|part| match part.split_once('-') {
            Some((a, b)) => (a.parse().unwrap()..=b.parse().unwrap()).collect::<Vec<usize>>(),
            None => vec![part.parse().unwrap()],
        })
        .collect()
}

#[test]
fn bind_core_pins_each_worker_and_its_threads_to_one_core() {
    run(async {
        let server = Server::prefork(&["--bind-core"]);
        let mine = std::fs::read_to_string("/proc/self/status").unwrap();
        let cores = cpu_list(&cpus_allowed(&mine));
        assert!(!cores.is_empty());
        let by_index = workers(server.addr, WORKERS).await;
        for (index, pid) in &by_index {
            let want = cores[index % cores.len()].to_string();
            // Every thread: the runtime's and the blocking pool's, started after pinning.
            let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
            for task in tasks {
                let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
                assert_eq!(
                    cpus_allowed(&status),
                    want,
                    "worker {index} (pid {pid}) on {cores:?}"
                );
            }
        }
        println!("cores {cores:?}, workers {by_index:?}");
        // The supervisor is not pinned.
        let sup = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
        assert_eq!(cpus_allowed(&sup), cpus_allowed(&mine));
    });
}

/// Forking a process with threads would leave the child without them: refused.
#[test]
fn prefork_refuses_a_process_that_has_threads() {
    let _turn = serial();
    // The test harness runs this on a thread of its own: the process has several.
    let err = easyrpc::Server::builder()
        .prefork(2)
        .run("127.0.0.1:0")
        .unwrap_err();
    assert!(matches!(err, easyrpc::ServeError::Threads(n) if n > 1), "{err}");
}

// ---------------------------------------------------------------------------------------
// Failures and signals

#[test]
fn a_killed_worker_is_back_within_a_second_and_retrying_clients_see_no_failure() {
    run(async {
        let server = Server::prefork(&[]);
        let load = Load::start(server.addr, 6).await;
        load.progress(200).await;
        // A worker that serves at least one of the load's connections.
        let victim = load.landed.lock().unwrap()[0];
        let before = workers(server.addr, WORKERS).await;
        let old = before[&victim];
        kill(Pid::from_raw(old as i32), Signal::SIGKILL).unwrap();
        let killed = Instant::now();
        // Probe until a new process answers for that index.
        let back = loop {
            let (index, pid) = probe(server.addr).await;
            if index == victim && pid != old {
                break killed.elapsed();
            }
            assert!(killed.elapsed() < WAIT, "worker {victim} did not come back");
        };
        println!("worker {victim} (pid {old}) killed; a new one answered after {back:?}");
        assert!(back < Duration::from_secs(1), "back after {back:?}");
        load.progress(500).await;
        let (ok, failures) = load.finish().await;
        assert!(
            failures.is_empty(),
            "{} failed calls of {ok}, e.g. {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        // Reaped (no zombie), and the supervisor said why it died.
        assert_eq!(state(old), None, "the killed worker was reaped");
        assert!(
            server.children().iter().all(|&(_, s)| s != 'Z'),
            "no zombie: {:?}",
            server.children()
        );
        let log = server.log();
        assert!(
            log.lines().any(|l| l.contains("worker died")
                && l.contains("killed by SIGKILL")
                && l.contains(&format!("pid={old}"))),
            "the death is logged with its cause:\n{log}"
        );
    });
}

#[test]
fn term_under_load_finishes_every_call_in_flight_and_exits_0() {
    run(async {
        let mut gate = Gate::start().await;
        let mut server = Server::prefork(&["--gate", &gate.arg()]);
        let load = Load::start(server.addr, 4).await;
        load.progress(100).await;
        // Six calls in flight, each on its own plain (non-retrying) client.
        let mut calls = JoinSet::new();
        for _ in 0..6 {
            let client = within("connect", Client::connect_with(server.addr, client_config()))
                .await
                .unwrap();
            calls.spawn(async move { client.call::<_, u32>("gate", ()).await });
        }
        let mut held = Vec::new();
        for _ in 0..6 {
            held.push(gate.next().await);
        }
        server.signal(Signal::SIGTERM);
        // Every worker has stopped accepting once the port refuses connections.
        let addr = server.addr;
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(addr).is_ok() {
            assert!(Instant::now() < deadline, "the workers kept accepting after TERM");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // Now let the calls in flight finish: each gets its answer.
        let pids: BTreeSet<u32> = held.iter().map(|(_, pid)| *pid).collect();
        drop(held);
        while let Some(r) = within("a call in flight", calls.join_next()).await {
            let pid = r.unwrap().expect("a call in flight at TERM got its answer");
            assert!(pids.contains(&pid));
        }
        let status = server.wait_exit();
        assert!(status.success(), "exit status {status}\n{}", server.log());
        // The load ran into the shutdown: its failures are expected.
        load.abort();
        assert!(server.log().contains("every worker has stopped"));
    });
}

#[test]
fn hup_under_load_replaces_every_worker_without_a_failed_call() {
    run(async {
        let mut gate = Gate::start().await;
        let server = Server::prefork(&["--gate", &gate.arg()]);
        let old = workers(server.addr, WORKERS).await;
        let old_pids: BTreeSet<u32> = old.values().copied().collect();
        let load = Load::start(server.addr, 6).await;
        load.progress(200).await;
        // Calls in flight across the restart, on plain clients: they finish on the old
        // workers, which drain.
        let mut calls = JoinSet::new();
        for _ in 0..3 {
            let client = within("connect", Client::connect_with(server.addr, client_config()))
                .await
                .unwrap();
            calls.spawn(async move { client.call::<_, u32>("gate", ()).await });
        }
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(gate.next().await);
        }
        server.signal(Signal::SIGHUP);
        // Every index answers from a new process.
        let mut new = BTreeMap::new();
        let deadline = Instant::now() + WAIT;
        while new.len() < WORKERS {
            let (index, pid) = probe(server.addr).await;
            if !old_pids.contains(&pid) {
                new.insert(index, pid);
            }
            assert!(Instant::now() < deadline, "only {new:?} replaced");
        }
        println!("workers {old:?} replaced by {new:?}");
        load.progress(200).await;
        drop(held);
        while let Some(r) = within("a call in flight", calls.join_next()).await {
            let pid = r.unwrap().expect("a call in flight at HUP got its answer");
            assert!(old_pids.contains(&pid), "it ran on an old worker");
        }
        // The old workers drain and are reaped.
        until("the old workers to exit", || {
            old_pids.iter().all(|&p| state(p).is_none())
        })
        .await;
        load.progress(200).await;
        let (ok, failures) = load.finish().await;
        assert!(
            failures.is_empty(),
            "{} failed calls of {ok}, e.g. {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        let children = server.children();
        assert_eq!(
            children.len(),
            WORKERS,
            "children after the restart: {children:?}"
        );
        assert!(children.iter().all(|(p, _)| new.values().any(|n| n == p)));
    });
}

#[test]
fn ttin_and_ttou_add_and_remove_a_worker() {
    run(async {
        let server = Server::prefork(&[]);
        server.signal(Signal::SIGTTIN);
        let by_index = workers(server.addr, WORKERS + 1).await;
        assert_eq!(by_index.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        until("four workers", || server.children().len() == WORKERS + 1).await;
        // One at a time: two of the same signal sent before the supervisor reads the first
        // are one signal. The highest index goes: 3, then 2.
        server.signal(Signal::SIGTTOU);
        until("worker 3 to exit", || state(by_index[&3]).is_none()).await;
        server.signal(Signal::SIGTTOU);
        until("worker 2 to exit", || state(by_index[&2]).is_none()).await;
        until("two workers", || server.children().len() == WORKERS - 1).await;
        assert!(server.children().iter().all(|&(_, s)| s != 'Z'));
        let left = workers(server.addr, WORKERS - 1).await;
        assert_eq!(left, BTreeMap::from([(0, by_index[&0]), (1, by_index[&1])]));
    });
}

#[test]
fn workers_die_with_the_supervisor() {
    run(async {
        let mut server = Server::prefork(&[]);
        let pids = workers(server.addr, WORKERS).await;
        server.signal(Signal::SIGKILL);
        assert!(!server.wait_exit().success());
        // PR_SET_PDEATHSIG: each gets TERM and exits (then it is init's to reap, which
        // some containers never do: a zombie has exited too).
        until("the orphaned workers to exit", || {
            pids.values().all(|&p| state(p).is_none_or(|s| s == 'Z'))
        })
        .await;
    });
}

// ---------------------------------------------------------------------------------------
// max_flow across workers

/// `n` calls of `gate` spread over `clients`; returns their tasks.
fn fire(clients: &[Client], n: usize, calls: &mut JoinSet<Result<u32, easyrpc::Error>>) {
    for i in 0..n {
        let client = clients[i % clients.len()].clone();
        calls.spawn(async move { client.call::<_, u32>("gate", ()).await });
    }
}

/// Sort `n` fired calls into the ones at the gate (returned) and the ones refused
/// Overloaded (counted), waiting until every one is one or the other.
async fn admitted(
    gate: &mut Gate,
    calls: &mut JoinSet<Result<u32, easyrpc::Error>>,
    n: usize,
) -> (Vec<(TcpStream, u32)>, usize) {
    let mut held = Vec::new();
    let mut overloaded = 0;
    within("every call admitted or refused", async {
        while held.len() + overloaded < n {
            tokio::select! {
                Some(at_gate) = gate.rx.recv() => held.push(at_gate),
                Some(done) = calls.join_next() => match done.unwrap() {
                    Err(e) if e.remote().is_some_and(|e| e.kind() == ErrorCode::Overloaded) => overloaded += 1,
                    other => panic!("a call beyond the limit ended with {other:?}"),
                },
            }
        }
    })
    .await;
    (held, overloaded)
}

async fn gate_clients(addr: SocketAddr, n: usize) -> (Vec<Client>, BTreeSet<usize>) {
    let mut clients = Vec::new();
    let mut indices = BTreeSet::new();
    for _ in 0..n {
        let client = within("connect", Client::connect_with(addr, client_config()))
            .await
            .unwrap();
        indices.insert(worker_of(&client).await.0);
        clients.push(client);
    }
    (clients, indices)
}

#[test]
fn max_flow_is_one_limit_across_all_workers() {
    run(async {
        let mut gate = Gate::start().await;
        let server = Server::prefork(&["--gate", &gate.arg()]);
        let (clients, indices) = gate_clients(server.addr, 20).await;
        assert!(indices.len() >= 2, "20 connections on one worker: {indices:?}");
        // 200 at once against max_flow = 10.
        let mut calls = JoinSet::new();
        fire(&clients, 200, &mut calls);
        let (held, overloaded) = admitted(&mut gate, &mut calls, 200).await;
        let mut by_pid: BTreeMap<u32, usize> = BTreeMap::new();
        for (_, pid) in &held {
            *by_pid.entry(*pid).or_default() += 1;
        }
        println!("connections on workers {indices:?}; the 10 admitted ran on {by_pid:?}");
        assert_eq!(held.len(), 10, "peak across all workers");
        assert_eq!(overloaded, 190);
        drop(held);
        while let Some(r) = within("the admitted calls", calls.join_next()).await {
            r.unwrap().expect("an admitted call succeeds");
        }
        // Every slot came back: 10 more are all admitted.
        fire(&clients, 10, &mut calls);
        let (held, overloaded) = admitted(&mut gate, &mut calls, 10).await;
        assert_eq!((held.len(), overloaded), (10, 0));
        drop(held);
        while let Some(r) = within("the second round", calls.join_next()).await {
            r.unwrap().expect("an admitted call succeeds");
        }
    });
}

#[test]
fn max_flow_slots_of_a_killed_worker_come_back() {
    run(async {
        let mut gate = Gate::start().await;
        let server = Server::prefork(&["--gate", &gate.arg()]);
        let (clients, _) = gate_clients(server.addr, 20).await;
        let mut calls = JoinSet::new();
        fire(&clients, 10, &mut calls);
        let (held, overloaded) = admitted(&mut gate, &mut calls, 10).await;
        assert_eq!((held.len(), overloaded), (10, 0));
        // Kill the worker holding the most slots.
        let mut by_pid: BTreeMap<u32, usize> = BTreeMap::new();
        for (_, pid) in &held {
            *by_pid.entry(*pid).or_default() += 1;
        }
        let (&victim, &slots) = by_pid.iter().max_by_key(|(_, n)| **n).unwrap();
        let index = workers(server.addr, WORKERS)
            .await
            .into_iter()
            .find(|(_, p)| *p == victim)
            .unwrap()
            .0;
        kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
        // Once a new process answers for its index, the supervisor has reaped it and
        // returned its slots.
        let deadline = Instant::now() + WAIT;
        loop {
            let (i, pid) = probe(server.addr).await;
            if i == index && pid != victim {
                break;
            }
            assert!(Instant::now() < deadline, "worker {index} did not come back");
        }
        // Its calls failed with it (plain clients, no retry); the others still hold.
        let mut still: Vec<_> = held.into_iter().filter(|(_, pid)| *pid != victim).collect();
        let mut lost = 0;
        while lost < slots {
            let r = within("the killed worker's calls", calls.join_next())
                .await
                .unwrap()
                .unwrap();
            assert!(r.is_err(), "a call of the killed worker failed: {r:?}");
            lost += 1;
        }
        // Exactly its slots are free again.
        fire(&clients, 10, &mut calls);
        let (again, overloaded) = admitted(&mut gate, &mut calls, 10).await;
        println!(
            "worker {index} (pid {victim}) held {slots} of 10; {} admitted after it died",
            again.len()
        );
        assert_eq!((again.len(), overloaded), (slots, 10 - slots));
        still.extend(again);
        drop(still);
        while let Some(r) = within("the remaining calls", calls.join_next()).await {
            r.unwrap().expect("a held call succeeds");
        }
    });
}

// ---------------------------------------------------------------------------------------
// Dedup across workers

fn journal_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rpc-prefork-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    path
}

/// Executions per key, and per worker pid, from the journal's `key pid` lines.
fn journal_counts(path: &Path) -> (HashMap<u64, u32>, BTreeMap<u32, u32>) {
    let (mut keys, mut pids) = (HashMap::new(), BTreeMap::new());
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        f.read_to_string(&mut text).unwrap();
    }
    for line in text.lines() {
        let (key, pid) = line.split_once(' ').unwrap();
        *keys.entry(key.parse().unwrap()).or_default() += 1;
        *pids.entry(pid.parse().unwrap()).or_default() += 1;
    }
    (keys, pids)
}

/// The fault-injecting proxy of rpc-server's dedup tests between an unstable-network
/// client and three workers: each reconnection may land on another worker, and every key
/// must still run exactly once.
#[test]
fn dedup_through_faults_runs_each_key_once_across_workers() {
    run(async {
        const CALLS: u64 = 5000;
        let journal = journal_path("dedup-faults");
        let mut server = Server::prefork(&["--unstable-network", "--journal", journal.to_str().unwrap()]);
        let seed = 0x00de_d0b5_eed5_u64;
        let proxy = proxy::Proxy::start(server.addr, seed, 3_000).await;
        let mut config = client_config();
        config.unstable_network = true;
        let mut tries = 0;
        let client = loop {
            match Client::connect_with(proxy.addr, config.clone()).await {
                Ok(c) => break c,
                Err(_) if tries < 50 => tries += 1,
                Err(e) => panic!("cannot connect through the proxy: {e}"),
            }
        };
        let failures: Vec<String> = within(
            "the calls",
            futures_util::stream::iter(0..CALLS)
                .map(|key| {
                    let client = client.clone();
                    async move {
                        match client.call::<_, u64>("journal", (key,)).await {
                            Ok(v) if v == key => None,
                            Ok(v) => Some(format!("journal({key}) = {v}")),
                            Err(e) => Some(format!("journal({key}): {e}")),
                        }
                    }
                })
                .buffer_unordered(32)
                .filter_map(|f| async move { f })
                .collect(),
        )
        .await;
        drop(client);
        println!("{}", proxy.stats);
        // Stopped: no execution can happen any more, the journal is final.
        server.signal(Signal::SIGTERM);
        assert!(server.wait_exit().success());
        assert!(
            failures.is_empty(),
            "{} failed, e.g. {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        assert!(
            proxy::Stats::get(&proxy.stats.unanswered_calls) > 0,
            "the proxy cut no call short: {}",
            proxy.stats
        );
        let (counts, by_pid) = journal_counts(&journal);
        let _ = std::fs::remove_file(&journal);
        let _ = std::fs::remove_dir(journal.parent().unwrap());
        println!("executions per worker: {by_pid:?}");
        assert!(by_pid.len() >= 2, "the calls ran on one worker only: {by_pid:?}");
        let wrong: Vec<_> = (0..CALLS)
            .filter(|k| counts.get(k) != Some(&1))
            .map(|k| (k, counts.get(&k)))
            .collect();
        assert!(
            wrong.is_empty(),
            "{} keys did not run exactly once, e.g. {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(10)]
        );
    });
}

/// A raw connection with a hello carrying a session id, speaking requests and responses.
struct Raw {
    stream: std::net::TcpStream,
    rbuf: BytesMut,
    framer: Framer,
}

impl Raw {
    fn open(addr: SocketAddr, session: u128) -> Raw {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut hello = Vec::new();
        Hello::new(Codec::Msgpack)
            .with_session(Some(session))
            .encode(&mut hello);
        stream.write_all(&hello).unwrap();
        let mut raw = Raw {
            stream,
            rbuf: BytesMut::new(),
            framer: Framer::new(Codec::Msgpack, 1 << 20),
        };
        loop {
            if let Some((h, n)) = Hello::decode(&raw.rbuf).expect("the server answers with a hello") {
                assert_eq!(h.session, Some(session));
                raw.rbuf.advance(n);
                return raw;
            }
            raw.fill();
        }
    }

    fn fill(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).expect("read within the bound");
        assert!(n > 0, "closed by the server");
        self.rbuf.extend_from_slice(&chunk[..n]);
    }

    fn request<P: Params>(&mut self, msgid: u64, method: &str, params: P) {
        let mut req = Vec::new();
        encode_request(Codec::Msgpack, &mut req, msgid, method, &params, None).unwrap();
        self.stream.write_all(&req).unwrap();
    }

    /// The next response: its msgid and its result, decoded.
    fn response<R: serde::de::DeserializeOwned>(&mut self) -> (u64, R) {
        loop {
            if let Some(n) = self.framer.decode(&self.rbuf).unwrap() {
                let frame = self.rbuf.split_to(n);
                let Ok(Message::Response { msgid, outcome }) = Message::parse(Codec::Msgpack, &frame) else {
                    panic!("not a response: {frame:?}");
                };
                let result = outcome.unwrap_or_else(|e| {
                    panic!("error reply {:?}", rmp_serde::from_slice::<easyrpc::Value>(e))
                });
                return (msgid, rmp_serde::from_slice(result).unwrap());
            }
            self.fill();
        }
    }

    fn worker(&mut self, msgid: u64) -> usize {
        self.request(msgid, "rpc.worker", ());
        let (id, w): (u64, HashMap<String, u64>) = self.response();
        assert_eq!(id, msgid);
        w["index"] as usize
    }
}

/// A retry that lands on another worker while the call still runs on the first waits for
/// its answer there, and the call runs once.
#[test]
fn a_retry_on_another_worker_waits_for_the_running_call() {
    run(async {
        let mut gate = Gate::start().await;
        let server = Server::prefork(&["--unstable-network", "--gate", &gate.arg()]);
        let addr = server.addr;
        let session = 0x5e55_1011_0000_0000_0000_0000_0000_0042_u128;
        let (first, a) = tokio::task::spawn_blocking(move || {
            let mut first = Raw::open(addr, session);
            let a = first.worker(1);
            first.request(7, "gate", ());
            (first, a)
        })
        .await
        .unwrap();
        // Running on worker `a`, held at the gate.
        let (held, pid) = gate.next().await;
        let (mut second, b) = tokio::task::spawn_blocking(move || {
            for _ in 0..1000 {
                let mut second = Raw::open(addr, session);
                let b = second.worker(1);
                if b != a {
                    // The same call again, then a call answered at once: its answer coming
                    // first shows the retry was read and is waiting.
                    second.request(7, "gate", ());
                    second.request(8, "rpc.worker", ());
                    let (id, _): (u64, HashMap<String, u64>) = second.response();
                    assert_eq!(id, 8);
                    return (second, b);
                }
            }
            panic!("1000 connections all landed on worker {a}");
        })
        .await
        .unwrap();
        // The first connection goes away, as a flaky network would have it; the call runs on.
        first.stream.shutdown(std::net::Shutdown::Both).unwrap();
        drop(held);
        let (id, answer): (u64, u32) = tokio::task::spawn_blocking(move || second.response())
            .await
            .unwrap();
        println!("call ran on worker {a} (pid {pid}); its retry on worker {b} got the answer");
        assert_eq!(
            (id, answer),
            (7, pid),
            "the retry got the first execution's answer"
        );
        // A second execution would have reached the gate before any answer could be sent.
        assert!(gate.rx.try_recv().is_err(), "the call ran twice");
    });
}

// ---------------------------------------------------------------------------------------
// Metrics: one endpoint for the whole server

/// `GET /metrics` over HTTP/1.1 on `addr`: the body (the status must be 200).
async fn scrape(addr: SocketAddr) -> String {
    use tokio::io::AsyncWriteExt;
    let text = within("a scrape", async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: test\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    })
    .await;
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    body.to_string()
}

/// The value of the sample written exactly `series` (as the supervisor writes it: the
/// `worker` label first, then the worker's own labels in their order).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_of_every_worker_on_one_endpoint() {
    run(async {
        let server = Server::prefork(&["--metrics-addr", "127.0.0.1:0"]);
        let line = server.next_line();
        let metrics: SocketAddr = line
            .strip_prefix("metrics on ")
            .unwrap_or_else(|| panic!("unexpected line {line:?}"))
            .parse()
            .unwrap();
        // One connection on each worker, found with `rpc.worker`.
        let mut on: BTreeMap<usize, Client> = BTreeMap::new();
        for _ in 0..1000 {
            if on.len() == WORKERS {
                break;
            }
            let client = within("connect", Client::connect_with(server.addr, client_config()))
                .await
                .unwrap();
            let (index, _) = worker_of(&client).await;
            on.entry(index).or_insert(client);
        }
        assert_eq!(on.len(), WORKERS, "every worker reached");
        // Known calls: worker i answers 2(i+1) adds; worker 0 also an unknown method.
        for (&index, client) in &on {
            for k in 0..2 * (index as i64 + 1) {
                let sum: i64 = within("add", client.call("add", (k, 1))).await.unwrap();
                assert_eq!(sum, k + 1);
            }
        }
        let missing = within("no_such_function", on[&0].call::<_, i64>("no_such_function", ())).await;
        assert!(
            matches!(&missing, Err(easyrpc::Error::Remote(e)) if e.kind() == ErrorCode::MethodNotFound),
            "{missing:?}"
        );

        let text = scrape(metrics).await;
        for index in 0..WORKERS {
            let series = format!("rpc_calls_total{{worker=\"{index}\",method=\"add\",code=\"ok\"}}");
            assert_eq!(
                sample(&text, &series),
                Some(2.0 * (index as f64 + 1.0)),
                "{series}\n{text}"
            );
            // Every worker answered the supervisor, calls or not.
            let series = format!("rpc_dedup_hits_total{{worker=\"{index}\"}}");
            assert_eq!(sample(&text, &series), Some(0.0), "{series}\n{text}");
        }
        let series = "rpc_calls_total{worker=\"0\",method=\"<unknown>\",code=\"method_not_found\"}";
        assert_eq!(sample(&text, series), Some(1.0), "{text}");
        // One valid text: each family's HELP and TYPE once.
        for family in [
            "rpc_calls_total",
            "rpc_call_duration_seconds",
            "rpc_dedup_hits_total",
            "rpc_connections",
        ] {
            let kind = text
                .lines()
                .filter(|l| l.starts_with(&format!("# TYPE {family} ")))
                .count();
            let help = text
                .lines()
                .filter(|l| l.starts_with(&format!("# HELP {family} ")))
                .count();
            assert_eq!((kind, help), (1, 1), "{family}\n{text}");
        }
        // A second scrape: counters carry on.
        let add = on[&1].call::<_, i64>("add", (1, 1));
        assert_eq!(within("add", add).await.unwrap(), 2);
        let text = scrape(metrics).await;
        let series = "rpc_calls_total{worker=\"1\",method=\"add\",code=\"ok\"}";
        assert_eq!(sample(&text, series), Some(5.0), "{text}");
    });
}
