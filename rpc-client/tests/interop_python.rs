//! Interop with a peer written in Python on the stock PyPI `msgpack` library, both ways:
//! a Python client against our server, and our clients against a Python server.
//!
//! Needs `python3` on PATH (or the interpreter named by `$PYTHON`);
//! `scripts/ensure-python-deps.sh` installs `msgpack` with pip when it is missing. Without
//! Python these tests fail, on purpose: they must not pass without having run.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{mpsc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use easyrpc_client::{BlockingClient, Client, Config, Error};
use easyrpc_server::{Method, Server};
use serde_bytes::ByteBuf;
use tokio::net::TcpListener;

/// The longest any Python process may run before it is killed and the test fails.
const PROCESS_LIMIT: Duration = Duration::from_secs(60);
/// Installing msgpack may download it.
const INSTALL_LIMIT: Duration = Duration::from_secs(180);
/// How long the Python server may take to print its port.
const STARTUP_LIMIT: Duration = Duration::from_secs(30);

/// The interpreter of the test environment `scripts/ensure-python-deps.sh` makes (under
/// `target/`, from `$PYTHON` or `python3`), with msgpack.
fn python() -> OsString {
    ensure_python_deps()
}

fn repo_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Kills (and reaps) the child when dropped, so a failing test leaves no process behind.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A finished process: its status and everything it wrote.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

fn spawn(cmd: &mut Command) -> Child {
    match cmd.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "cannot run {:?}: not found. The Python interop tests need python3 on PATH, or $PYTHON \
             set to an interpreter (Debian: apt-get install python3 python3-pip); they fail rather \
             than pass untested.",
            cmd.get_program()
        ),
        Err(e) => panic!("cannot run {cmd:?}: {e}"),
    }
}

fn drain(mut r: impl Read + Send + 'static, done: mpsc::Sender<()>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        let _ = done.send(());
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Run `cmd` to completion with its output captured; kill it and panic after `limit`.
fn run_bounded(cmd: &mut Command, limit: Duration) -> Finished {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = KillOnDrop(spawn(cmd));
    let (done_tx, done_rx) = mpsc::channel();
    // Unwraps: both were requested as pipes just above.
    let out = drain(child.0.stdout.take().unwrap(), done_tx.clone());
    let err = drain(child.0.stderr.take().unwrap(), done_tx);
    // Both pipes reach EOF when the process exits (it starts no long-lived children).
    let deadline = Instant::now() + limit;
    for _ in 0..2 {
        let left = deadline.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            // Dropping the guard kills the process.
            drop(child);
            panic!("{cmd:?} did not finish within {limit:?}; killed");
        }
    }
    let status = child.0.wait().expect("wait for the child");
    Finished {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// Run `scripts/ensure-python-deps.sh` once per test binary; every test sees its outcome:
/// the environment's interpreter.
fn ensure_python_deps() -> OsString {
    static DEPS: OnceLock<Result<OsString, String>> = OnceLock::new();
    let r = DEPS.get_or_init(|| {
        let root = repo_root();
        let f = run_bounded(
            Command::new("sh")
                .arg(root.join("scripts/ensure-python-deps.sh"))
                .current_dir(&root),
            INSTALL_LIMIT,
        );
        match f.stdout.lines().last() {
            Some(path) if f.status.success() => Ok(path.into()),
            _ => Err(format!(
                "scripts/ensure-python-deps.sh failed ({}); the Python interop tests need python3 \
                 (with venv) and PyPI's msgpack:\n{}{}",
                f.status, f.stdout, f.stderr
            )),
        }
    });
    match r {
        Ok(python) => python.clone(),
        Err(e) => panic!("{e}"),
    }
}

async fn start_server() -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let server = Server::builder()
        .register(Method::sync_fn("add", |(a, b): (i64, i64)| a + b))
        .register(Method::sync_fn("echo", |(b,): (ByteBuf,)| b))
        .build()
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        server
            .run(listener, async {
                let _ = rx.await;
            })
            .await
    });
    (addr, tx)
}

/// The Python client (`tests/python/client.py`) against our server.
#[tokio::test]
async fn python_client_against_our_server() {
    let (addr, _stop) = start_server().await;
    let f = tokio::task::spawn_blocking(move || {
        ensure_python_deps();
        let root = repo_root();
        run_bounded(
            Command::new(python())
                .arg(root.join("tests/python/client.py"))
                .arg("--addr")
                .arg(addr.to_string())
                .current_dir(&root),
            PROCESS_LIMIT,
        )
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    assert!(
        f.status.success() && f.stdout.trim() == "OK",
        "tests/python/client.py failed against our server ({}):\nstdout:\n{}\nstderr:\n{}",
        f.status,
        f.stdout,
        f.stderr
    );
}

/// The Python server, killed when dropped. Its stdin stays open while it lives: the server
/// exits by itself when stdin closes, so it cannot outlive the test process either.
struct PythonServer {
    addr: SocketAddr,
    _stdin: ChildStdin,
    _child: KillOnDrop,
}

fn start_python_server() -> PythonServer {
    ensure_python_deps();
    let root = repo_root();
    let mut child = KillOnDrop(spawn(
        Command::new(python())
            .arg(root.join("tests/python/spec_server.py"))
            .current_dir(&root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    ));
    // Unwraps: both were requested as pipes just above.
    let stdin = child.0.stdin.take().unwrap();
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut line = String::new();
        let r = BufReader::new(stdout).read_line(&mut line).map(|_| line);
        let _ = tx.send(r);
    });
    let line = match rx.recv_timeout(STARTUP_LIMIT) {
        Ok(Ok(line)) => line,
        Ok(Err(e)) => panic!("reading the port from spec_server.py: {e}"),
        Err(_) => panic!("spec_server.py printed no port within {STARTUP_LIMIT:?}"),
    };
    let port: u16 = line.trim().parse().unwrap_or_else(|_| {
        panic!("spec_server.py's first line is not a port: {line:?} (see its stderr above)")
    });
    PythonServer {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        _stdin: stdin,
        _child: child,
    }
}

fn big_payload() -> Vec<u8> {
    (0..100 * 1024u32).map(|i| (i * 7 % 251) as u8).collect()
}

/// The Python server is a third party (the clients are told `our_server = false`): its
/// error codes are its own, reported as such (issue 17), never with our names.
fn assert_boom(e: &Error) {
    let foreign = e
        .foreign()
        .unwrap_or_else(|| panic!("expected a foreign error, got {e:?}"));
    assert_eq!((foreign.code, foreign.message.as_str()), (Some(3), "boom"), "{e}");
    assert_eq!((e.code(), e.to_string().as_str()), (None, "server error 3: boom"));
}

fn config() -> Config {
    let mut cfg = Config::default();
    cfg.timeout = Duration::from_secs(20);
    // A third-party server: its error codes are its own.
    cfg.our_server = false;
    cfg
}

/// Our async and blocking clients against the Python server (`tests/python/spec_server.py`).
#[test]
fn our_clients_against_python_server() {
    let server = start_python_server();
    let addr = server.addr;
    let small = ByteBuf::from(b"0123456789".to_vec());
    let big = ByteBuf::from(big_payload());

    // The blocking client.
    let c = BlockingClient::connect_with(addr, config()).unwrap();
    c.notify("ignored_notification", ()).unwrap();
    let v: i64 = c.call("add", (2, 3)).unwrap();
    assert_eq!(v, 5);
    let v: ByteBuf = c.call("echo", (&small,)).unwrap();
    assert_eq!(v, small);
    let v: ByteBuf = c.call("echo", (&big,)).unwrap();
    assert_eq!(v, big);
    assert_boom(&c.call::<_, ()>("fail", ()).unwrap_err());
    let e = c.call::<_, i64>("no_such_method", ()).unwrap_err();
    assert_eq!(e.raw_code(), Some(1), "{e}");
    let v = c.call_value("add", vec![40.into(), 2.into()]).unwrap();
    assert_eq!(v.as_i64(), Some(42));
    let v = c
        .call_value("echo", vec![rmpv::Value::Binary(vec![1, 2, 3])])
        .unwrap();
    assert_eq!(v, rmpv::Value::Binary(vec![1, 2, 3]));
    // Still in step after the error replies.
    let v: i64 = c.call("add", (-1, 1)).unwrap();
    assert_eq!(v, 0);
    drop(c);

    // The async client, with calls in flight at once.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = Client::connect_with(addr, config()).await.unwrap();
        c.notify("ignored_notification", ()).await.unwrap();
        let v: i64 = c.call("add", (2, 3)).await.unwrap();
        assert_eq!(v, 5);
        let v: ByteBuf = c.call("echo", (&small,)).await.unwrap();
        assert_eq!(v, small);
        let v: ByteBuf = c.call("echo", (&big,)).await.unwrap();
        assert_eq!(v, big);
        assert_boom(&c.call::<_, ()>("fail", ()).await.unwrap_err());
        let e = c.call::<_, i64>("no_such_method", ()).await.unwrap_err();
        assert_eq!(e.raw_code(), Some(1), "{e}");
        let v = c.call_value("add", vec![40.into(), 2.into()]).await.unwrap();
        assert_eq!(v.as_i64(), Some(42));

        // Pipelined: replies are matched to calls by msgid.
        let (a, b, f, d) = tokio::join!(
            c.call::<_, ByteBuf>("echo", (&big,)),
            c.call::<_, i64>("add", (20, 22)),
            c.call::<_, ()>("fail", ()),
            c.call_value("echo", vec![rmpv::Value::from("text")]),
        );
        assert_eq!(a.unwrap(), big);
        assert_eq!(b.unwrap(), 42);
        assert_boom(&f.unwrap_err());
        assert_eq!(d.unwrap(), rmpv::Value::from("text"));
    });
    drop(server);
}
