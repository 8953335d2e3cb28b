//! The example server with several listeners at once (issue 12), in one process: `--addr`
//! (plain TCP), `--tls-addr` (TLS) and `--unix` (a Unix-domain socket), and `--allow`.
//!
//! What each test shows: the example client calls the server over the Unix socket
//! (`--addr unix:PATH`) and over TLS (`--tls-ca`); `admin_*` answers over the Unix socket
//! only (12 elsewhere); Python's standard `ssl` module and `socket.AF_UNIX` with PyPI
//! `msgpack` (`tests/python/client.py`) call the server over TLS and over the Unix socket;
//! `--allow` closes a TCP connection from outside its networks at once while the Unix
//! socket is served; TERM stops every listener and removes the socket file.
//!
//! The Python test needs `python3` (or `$PYTHON`); `scripts/ensure-python-deps.sh`
//! installs `msgpack` when missing. Every wait is bounded; nothing sleeps to synchronise.
#![cfg(target_os = "linux")]

#[path = "common/bins.rs"]
mod bins;
#[path = "common/pki.rs"]
#[allow(dead_code)]
mod pki;

use bins::example;

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use easyrpc::ErrorCode;

/// The bound on any single wait.
const WAIT: Duration = Duration::from_secs(60);

fn repo_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// A socket path in a fresh directory of the test's own.
fn socket_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rpc-example-listeners-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The example server, with what it printed: one `listening on` line per listener.
/// Stopped (TERM, then KILL) when dropped.
struct Server {
    child: Option<Child>,
    lines: Vec<String>,
}

impl Server {
    /// Start the server with `args` and read its first `listeners` lines.
    fn start(args: &[&std::ffi::OsStr], listeners: usize) -> Server {
        let mut child = Command::new(example("server"))
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the server example");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Server {
            child: Some(child),
            lines: Vec::new(),
        };
        for _ in 0..listeners {
            let line = rx.recv_timeout(WAIT).expect("the server printed its listeners");
            server.lines.push(line);
        }
        server
    }

    /// The address printed on line `i` (`listening on ADDR`, an optional ` (tls)` after it).
    fn addr(&self, i: usize) -> String {
        let line = &self.lines[i];
        let rest = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected line {line:?}"));
        rest.strip_suffix(" (tls)").unwrap_or(rest).to_owned()
    }

    /// TERM, and the exit status (bounded).
    fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        wait_bounded(&mut child)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_bounded(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the process did not exit within {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Run `cmd` to its end, within [`WAIT`], with its output.
fn output(cmd: &mut Command) -> std::process::Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(WAIT) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            panic!("{cmd:?} did not finish within {WAIT:?}; killed")
        }
    }
}

fn assert_success(what: &str, out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `admin_info` over a new connection of the blocking client: its listener, or the error.
fn admin_info(
    connect: impl FnOnce() -> Result<easyrpc::BlockingClient, easyrpc::Error>,
) -> Result<String, easyrpc::Error> {
    let client = connect()?;
    let info = examples::api::admin_info::call_blocking(&client)?;
    Ok(info["listener"].clone())
}

fn assert_permission_denied(what: &str, r: Result<String, easyrpc::Error>) {
    let e = r.expect_err(what);
    assert_eq!(
        e.remote().map(|r| r.kind()),
        Some(ErrorCode::PermissionDenied),
        "{what}: {e}"
    );
}

/// The three listeners: the client example over each, `admin_*` over the Unix socket only.
#[test]
fn one_process_serves_tcp_tls_and_unix_at_once() {
    let pki = pki::Pki::new("listeners-one");
    let dir = socket_dir("one");
    let sock = dir.join("rpc.sock");
    let mut server = Server::start(
        &[
            "--addr".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--tls-addr".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--tls-cert".as_ref(),
            pki.server_cert.as_os_str(),
            "--tls-key".as_ref(),
            pki.server_key.as_os_str(),
            "--unix".as_ref(),
            sock.as_os_str(),
        ],
        3,
    );
    let (tcp, tls) = (server.addr(0), server.addr(1));
    assert!(server.lines[1].ends_with(" (tls)"), "{:?}", server.lines);
    assert_eq!(server.addr(2), format!("unix:{}", sock.display()));
    tcp.parse::<SocketAddr>().unwrap();
    tls.parse::<SocketAddr>().unwrap();

    let unix_addr = format!("unix:{}", sock.display());
    let out = output(Command::new(example("client")).args(["--addr", &unix_addr]));
    let stdout = assert_success("the client example over the Unix socket", &out);
    for expected in [
        "async    whoami()           = unix:",
        "admin_info()",
        "all calls succeeded",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}");
    }
    let out = output(
        Command::new(example("client"))
            .args(["--addr", &tls, "--tls-server-name", "localhost", "--tls-ca"])
            .arg(&pki.ca),
    );
    let stdout = assert_success("the client example over TLS", &out);
    assert!(stdout.contains("all calls succeeded"), "{stdout}");

    // admin_* over the Unix socket only.
    assert_eq!(
        admin_info(|| easyrpc::BlockingClient::connect_unix(&sock)).unwrap(),
        unix_addr
    );
    assert_permission_denied(
        "admin_info over TCP",
        admin_info(|| easyrpc::BlockingClient::connect(tcp.as_str())),
    );
    assert_permission_denied(
        "admin_info over TLS",
        admin_info(|| easyrpc::BlockingClient::connect_tls(&tls, pki.client_tls().server_name("localhost"))),
    );

    // TERM: every listener stops, the socket file goes.
    let status = server.stop();
    assert!(status.success(), "{status}");
    assert!(!sock.exists(), "the socket file is removed at shutdown");
    assert!(std::net::TcpStream::connect(&tcp).is_err());
    let _ = std::fs::remove_dir_all(dir);
}

/// `--allow`: a TCP peer outside the networks given is closed at once; the Unix socket is
/// still served.
#[test]
fn allow_refuses_tcp_peers_outside_its_networks() {
    let dir = socket_dir("allow");
    let sock = dir.join("rpc.sock");
    let server = Server::start(
        &[
            "--addr".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--unix".as_ref(),
            sock.as_os_str(),
            "--allow".as_ref(),
            "10.0.0.0/8".as_ref(),
            "--allow".as_ref(),
            "192.168.0.0/16".as_ref(),
        ],
        2,
    );
    let tcp = server.addr(0);
    let mut raw = std::net::TcpStream::connect(&tcp).unwrap();
    raw.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 16];
    let n = raw.read(&mut buf);
    assert!(matches!(n, Ok(0) | Err(_)), "closed without a byte: {n:?}");
    let e = easyrpc::BlockingClient::connect(tcp.as_str())
        .and_then(|c| examples::api::add::call_blocking(&c, 1, 2))
        .unwrap_err();
    assert!(e.remote().is_none(), "refused, not answered: {e:?}");

    let client = easyrpc::BlockingClient::connect_unix(&sock).unwrap();
    assert_eq!(examples::api::add::call_blocking(&client, 1, 2).unwrap(), 3);
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------------------------------
// Python

/// The interpreter of the test environment `scripts/ensure-python-deps.sh` makes (under
/// `target/`, from `$PYTHON` or `python3`), with msgpack.
fn python() -> OsString {
    ensure_python_deps()
}

/// Run `scripts/ensure-python-deps.sh` once per test binary: the environment's interpreter.
fn ensure_python_deps() -> OsString {
    static DEPS: OnceLock<Result<OsString, String>> = OnceLock::new();
    let r = DEPS.get_or_init(|| {
        let root = repo_root();
        let out = output(
            Command::new("sh")
                .arg(root.join("scripts/ensure-python-deps.sh"))
                .current_dir(&root),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        match stdout.lines().last() {
            Some(path) if out.status.success() => Ok(path.into()),
            _ => Err(format!(
                "scripts/ensure-python-deps.sh failed ({}); the Python tests need python3 (with venv) and msgpack:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )),
        }
    });
    match r {
        Ok(python) => python.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// `tests/python/client.py` with `args`: it prints OK when every check passed.
fn python_client(what: &str, args: &[&std::ffi::OsStr]) {
    let root = repo_root();
    let out = output(
        Command::new(python())
            .arg(root.join("tests/python/client.py"))
            .args(args)
            .current_dir(&root),
    );
    let stdout = assert_success(what, &out);
    assert_eq!(stdout.trim(), "OK", "{what}");
}

/// Python's standard `ssl` module and `socket.AF_UNIX`, with PyPI `msgpack`, against the
/// example server's TLS and Unix listeners (stock clients: plain MessagePack-RPC).
#[test]
fn python_over_tls_and_over_the_unix_socket() {
    ensure_python_deps();
    let pki = pki::Pki::new("listeners-python");
    let dir = socket_dir("python");
    let sock = dir.join("rpc.sock");
    let server = Server::start(
        &[
            "--addr".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--tls-addr".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--tls-cert".as_ref(),
            pki.server_cert.as_os_str(),
            "--tls-key".as_ref(),
            pki.server_key.as_os_str(),
            "--unix".as_ref(),
            sock.as_os_str(),
        ],
        3,
    );
    let tls = server.addr(1);
    python_client(
        "client.py over TLS (ssl module)",
        &[
            "--addr".as_ref(),
            tls.as_ref(),
            "--tls-server-name".as_ref(),
            "localhost".as_ref(),
            "--tls-ca".as_ref(),
            pki.ca.as_os_str(),
        ],
    );
    python_client(
        "client.py over the Unix socket (AF_UNIX)",
        &["--addr".as_ref(), format!("unix:{}", sock.display()).as_ref()],
    );
    // A TLS client that does not trust the server's CA fails the handshake (and the
    // Python side says so).
    let root = repo_root();
    let out = output(
        Command::new(python())
            .arg(root.join("tests/python/client.py"))
            .args(["--addr", &tls, "--tls-ca"])
            .arg(pki.dir.join("client.crt"))
            .current_dir(&root),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("SSL") || stderr.contains("certificate"),
        "{stderr}"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
