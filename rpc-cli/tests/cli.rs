//! The `rpc` binary end to end: run as a process against servers started here (an
//! rpc-server with `add`, `echo`, a failing method and a notification sink, over TCP, a Unix
//! socket and TLS; its `rpc.methods` for `list`, `describe` and bincode), against a fake
//! server that speaks raw MessagePack and answers `rpc.methods` its own way, or not at all,
//! and against the Python spec server (`call` only).
//!
//! No test sleeps to synchronise: servers are bound before the binary starts, and every
//! wait (a process, a notification, the Python server's port) is bounded.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use easyrpc_server::{Codec, ErrorCode, Method, Reply, Server, ServerError, Streaming, TlsConfig};
use futures_util::StreamExt;
use serde_json::{json, Value as Json};

/// The longest any `rpc` process may run before it is killed and the test fails.
const PROCESS_LIMIT: Duration = Duration::from_secs(60);

/// A finished `rpc`: its exit code and output.
#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    /// Stdout as JSON (the last line with `--json`).
    fn json(&self) -> Json {
        let text = self.stdout.trim();
        serde_json::from_str(text).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
}

/// Kills (and reaps) the child when dropped, so a failing test leaves no process behind.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
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

/// Run `cmd` to completion with its output captured; kill it and panic after the limit.
fn run_cmd(cmd: &mut Command) -> Out {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = KillOnDrop(cmd.spawn().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}")));
    let (done_tx, done_rx) = mpsc::channel();
    // Unwraps: both were requested as pipes just above.
    let out = drain(child.0.stdout.take().unwrap(), done_tx.clone());
    let err = drain(child.0.stderr.take().unwrap(), done_tx);
    let deadline = Instant::now() + PROCESS_LIMIT;
    for _ in 0..2 {
        let left = deadline.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            drop(child);
            panic!("{cmd:?} did not finish within {PROCESS_LIMIT:?}; killed");
        }
    }
    let status = child.0.wait().expect("wait for rpc");
    Out {
        code: status.code().expect("rpc exited by a signal"),
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// `rpc ARGS...`, with stdin closed.
fn rpc<S: AsRef<OsStr>>(args: &[S]) -> Out {
    run_cmd(
        Command::new(env!("CARGO_BIN_EXE_rpc"))
            .args(args)
            .stdin(Stdio::null()),
    )
}

/// Assert the exit code, showing the whole output when it differs.
#[track_caller]
fn expect_code(out: &Out, code: i32) {
    assert_eq!(out.code, code, "unexpected exit code: {out:?}");
}

// ----- a server of ours, in this process -----

/// An rpc-server on its own runtime: `add`, `concat` (`max_flow` 50), `echo` (any value
/// back, bin stays bin; a closure left undescribed, so `rpc.methods` shows `?`), `fail`
/// (error 3 "boom") and `note` (sends its argument to `notes`).
struct TestServer {
    addr: String,
    notes: mpsc::Receiver<String>,
    _stop: tokio::sync::oneshot::Sender<()>,
    // Last: dropping the runtime ends the server's tasks.
    _rt: tokio::runtime::Runtime,
}

fn server() -> Server {
    server_with_notes().0
}

fn server_with_notes() -> (Server, mpsc::Receiver<String>) {
    let (tx, notes) = mpsc::channel();
    let server = Server::builder()
        .register(Method::sync_fn("add", |(a, b): (i64, i64)| a + b).describe(
            &[("a", "i64"), ("b", "i64")],
            "i64",
            "Adds two numbers.",
        ))
        .register(
            Method::sync_fn("concat", |(a, b): (String, String)| a + &b)
                .describe(&[("a", "String"), ("b", "String")], "String", "")
                .max_flow(50),
        )
        .register(Method::sync_fn("echo", |(v,): (rmpv::Value,)| v))
        // An error with data: `[3, "not found", {"id": 42}]`.
        .register(Method::sync_raw("lookup", |_| {
            Ok(Box::new(|| {
                let data = rmpv::Value::Map(vec![("id".into(), 42.into())]);
                let e = ServerError::new(ErrorCode::HandlerError, "not found")
                    .with_data(Codec::Msgpack, &data)
                    .unwrap();
                Reply::err(e)
            }))
        }))
        .register(
            Method::try_sync_fn("fail", |(): ()| Err::<(), _>("boom")).describe(
                &[],
                "Result<(), String>",
                "",
            ),
        )
        .register(
            Method::async_fn("note", move |(s,): (String,)| {
                let _ = tx.send(s);
                async {}
            })
            .describe(&[("s", "String")], "()", "Records a note."),
        )
        // Streams: a result stream, an argument stream (an upload), and both.
        .register(
            Method::stream_fn("countdown", |(n,): (u64,)| {
                futures_util::stream::iter((0..n).rev())
            })
            .describe(&[("n", "u64")], "u64", "Counts down."),
        )
        .register(
            Method::upload_fn("sum_stream", |(): (), items: Streaming<i64>| async move {
                items
                    .filter_map(|n| async move { n.ok() })
                    .fold(0, |a, n| async move { a + n })
                    .await
            })
            .describe(&[], "i64", ""),
        )
        .register(
            Method::bidi_fn("double", |(): (), items: Streaming<i64>| {
                items.filter_map(|n| async move { n.ok().map(|n| n * 2) })
            })
            .describe(&[], "i64", ""),
        )
        .build()
        .unwrap();
    (server, notes)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn start_server() -> TestServer {
    let rt = runtime();
    let (server, notes) = server_with_notes();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    rt.spawn(async move {
        server
            .run(listener, async {
                let _ = stopped.await;
            })
            .await
    });
    TestServer {
        addr,
        notes,
        _stop: stop,
        _rt: rt,
    }
}

#[test]
fn call_with_integers_strings_and_negative_numbers() {
    let s = start_server();
    let out = rpc(&["call", &s.addr, "add", "[1, 2]"]);
    expect_code(&out, 0);
    assert_eq!(out.stdout, "3\n");
    // One word per argument; negative numbers are not flags.
    let out = rpc(&["call", &s.addr, "add", "-40", "-2"]);
    expect_code(&out, 0);
    assert_eq!(out.stdout, "-42\n");
    let out = rpc(&["call", &s.addr, "concat", r#"["ab", "cd"]"#]);
    expect_code(&out, 0);
    assert_eq!(out.stdout, "\"abcd\"\n");
    // Floats stay floats, maps with integer keys keep them.
    let out = rpc(&[
        "call",
        &s.addr,
        "echo",
        r#"[[1.5, {"$map": [[1, "one"]]}, {"k": null}]]"#,
    ]);
    expect_code(&out, 0);
    assert_eq!(out.json(), json!([1.5, {"$map": [[1, "one"]]}, {"k": null}]));
    // --json, before or after the subcommand.
    for args in [
        ["--json", "call", &s.addr, "add", "[1, 2]"],
        ["call", &s.addr, "add", "[1, 2]", "--json"],
    ] {
        let out = rpc(&args);
        expect_code(&out, 0);
        assert_eq!(out.json(), json!({"result": 3}));
    }
}

#[test]
fn call_with_bin_from_base64_and_from_a_file() {
    let s = start_server();
    let out = rpc(&["call", &s.addr, "echo", r#"[{"$bin": "AAEC/w=="}]"#]);
    expect_code(&out, 0);
    assert_eq!(out.json(), json!({"$bin": "AAEC/w=="}));

    let path = std::env::temp_dir().join(format!("rpc-cli-test-{}.bin", std::process::id()));
    let bytes: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&path, &bytes).unwrap();
    let out = rpc(&[
        OsStr::new("--json"),
        "call".as_ref(),
        s.addr.as_ref(),
        "echo".as_ref(),
        format!("@{}", path.display()).as_ref(),
    ]);
    let _ = std::fs::remove_file(&path);
    expect_code(&out, 0);
    let b64 = out.json()["result"]["$bin"].as_str().unwrap().to_owned();
    use base64::Engine as _;
    assert_eq!(
        base64::engine::general_purpose::STANDARD.decode(b64).unwrap(),
        bytes
    );
}

#[test]
fn a_remote_error_exits_1_with_its_code_and_message() {
    let s = start_server();
    let out = rpc(&["call", &s.addr, "fail"]);
    expect_code(&out, 1);
    assert_eq!(out.stderr, "error 3: boom\n");
    assert_eq!(out.stdout, "");
    let out = rpc(&["call", &s.addr, "nosuch", "--json"]);
    expect_code(&out, 1);
    assert_eq!(
        out.json(),
        json!({"error": {"kind": "remote", "code": 1, "message": "method not found: nosuch"}})
    );
    let out = rpc(&["call", &s.addr, "add", r#"["one", 2]"#]);
    expect_code(&out, 1);
    assert!(out.stderr.starts_with("error 2: "), "{out:?}");
    // The error's data, when it has some.
    let out = rpc(&["call", &s.addr, "lookup"]);
    expect_code(&out, 1);
    assert_eq!(out.stderr, "error 3: not found\ndata: {\"id\":42}\n");
    let out = rpc(&["call", &s.addr, "lookup", "--json"]);
    expect_code(&out, 1);
    assert_eq!(out.json()["error"]["data"], json!({"id": 42}));
}

#[test]
fn transport_errors_exit_2() {
    // A port nothing listens on: bound, then closed.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let out = rpc(&["call", &addr, "add", "[1, 2]"]);
    expect_code(&out, 2);
    assert!(
        out.stderr
            .starts_with(&format!("rpc: cannot connect to {addr}: ")),
        "{out:?}"
    );
    let out = rpc(&["--json", "call", &addr, "add", "[1, 2]"]);
    expect_code(&out, 2);
    assert_eq!(out.json()["error"]["kind"], "transport");

    // A server that accepts (the kernel does, into the backlog) and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let out = rpc(&["call", &addr, "add", "[1, 2]", "--timeout", "0.3"]);
    expect_code(&out, 2);
    assert!(out.stderr.contains("no reply within"), "{out:?}");
    drop(silent);

    let out = rpc(&["call", "unix:/nonexistent/rpc.sock", "add"]);
    expect_code(&out, 2);
}

#[test]
fn usage_errors_exit_64() {
    let s = start_server();
    let out = rpc(&["call", &s.addr, "concat", "text", "more"]);
    expect_code(&out, 64);
    assert!(out.stderr.contains("argument 1 is not JSON"), "{out:?}");
    let out = rpc(&["call", &s.addr, "echo", "@/no/such/file"]);
    expect_code(&out, 64);
    let out = rpc(&["call", "no-port", "add"]);
    expect_code(&out, 64);
    let out = rpc(&["call", &s.addr, "add", "--timeout", "-1"]);
    expect_code(&out, 64);
    let out = rpc(&["--help"]);
    expect_code(&out, 0);
    assert!(out.stdout.contains("Exit codes"), "{out:?}");
}

#[test]
fn notify_reaches_the_server() {
    let s = start_server();
    let out = rpc(&["notify", &s.addr, "note", r#"["hello"]"#]);
    expect_code(&out, 0);
    assert_eq!(out.stdout, "");
    assert_eq!(s.notes.recv_timeout(PROCESS_LIMIT).unwrap(), "hello");
    let out = rpc(&["notify", &s.addr, "note", r#""again""#, "--json"]);
    expect_code(&out, 0);
    assert_eq!(out.json(), json!({"sent": true}));
    assert_eq!(s.notes.recv_timeout(PROCESS_LIMIT).unwrap(), "again");
}

#[test]
fn load_reports_calls_errors_and_percentiles_as_json() {
    let s = start_server();
    let out = rpc(&[
        "load",
        &s.addr,
        "add",
        "[1, 2]",
        "--concurrency",
        "4",
        "--connections",
        "2",
        "--duration",
        "1",
        "--json",
    ]);
    expect_code(&out, 0);
    let j = out.json();
    assert!(j["calls"].as_u64().unwrap() > 0, "{j}");
    assert_eq!(j["errors"], 0, "{j}");
    assert_eq!(j["ok"], j["calls"], "{j}");
    assert_eq!(
        (j["concurrency"].as_u64(), j["connections"].as_u64()),
        (Some(4), Some(2))
    );
    let p50 = j["p50_us"].as_f64().unwrap();
    let p99 = j["p99_us"].as_f64().unwrap();
    assert!(
        p50 > 0.0 && p50 <= p99 && p99 <= j["max_us"].as_f64().unwrap(),
        "{j}"
    );

    // Every call fails: counted by code, exit 1, and the text report says so.
    let out = rpc(&["load", &s.addr, "fail", "--duration", "0.3", "--concurrency", "2"]);
    expect_code(&out, 1);
    assert!(out.stdout.contains("errors: error 3: "), "{out:?}");
    assert!(out.stdout.contains("calls/s"), "{out:?}");
}

// ----- Unix socket and TLS -----

#[cfg(unix)]
#[test]
fn call_over_a_unix_socket() {
    let dir = std::env::temp_dir().join(format!("rpc-cli-unix-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("rpc.sock");
    let rt = runtime();
    let server = server();
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let sock = path.clone();
    let mut serving = Box::pin(async move {
        server
            .run_unix(&sock, async {
                let _ = stopped.await;
            })
            .await
    });
    // Polled once, `run_unix` has bound the socket (it binds before its first await).
    rt.block_on(async {
        tokio::select! {
            biased;
            r = &mut serving => panic!("the server stopped at once: {r:?}"),
            () = std::future::ready(()) => {}
        }
    });
    rt.spawn(serving);
    let out = rpc(&["call", &format!("unix:{}", path.display()), "add", "[20, 22]"]);
    expect_code(&out, 0);
    assert_eq!(out.stdout, "42\n");
    // TLS is for TCP addresses.
    let out = rpc(&[
        "call",
        &format!("unix:{}", path.display()),
        "add",
        "--tls-ca",
        "/dev/null",
    ]);
    expect_code(&out, 64);
    drop(rt);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A CA, and a server certificate for `localhost` and 127.0.0.1 from it, as PEM files.
struct Pki {
    dir: PathBuf,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
        let dir = std::env::temp_dir().join(format!("rpc-cli-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::new()).unwrap();
        ca.distinguished_name.push(DnType::CommonName, "test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let cert = params.signed_by(&key, &issuer).unwrap();
        let pki = Pki {
            ca: dir.join("ca.crt"),
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
            dir,
        };
        std::fs::write(&pki.ca, ca_pem).unwrap();
        std::fs::write(&pki.cert, cert.pem()).unwrap();
        std::fs::write(&pki.key, key.serialize_pem()).unwrap();
        pki
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn call_over_tls() {
    let pki = Pki::new();
    let rt = runtime();
    let server = server();
    let tls = TlsConfig::from_pem_files(&pki.cert, &pki.key).unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    rt.spawn(async move {
        server
            .run_tls(listener, tls, async {
                let _ = stopped.await;
            })
            .await
    });
    let ca = pki.ca.to_str().unwrap();
    // By name: the certificate names localhost.
    let out = rpc(&[
        "call",
        &format!("localhost:{port}"),
        "add",
        "[1, 2]",
        "--tls-ca",
        ca,
    ]);
    expect_code(&out, 0);
    assert_eq!(out.stdout, "3\n");
    // By address, checking another name than the host.
    let out = rpc(&[
        "--tls-ca",
        ca,
        "--tls-server-name",
        "localhost",
        "call",
        &format!("127.0.0.1:{port}"),
        "add",
        "[1, 2]",
    ]);
    expect_code(&out, 0);
    // A name the certificate does not hold: the handshake fails, a transport error.
    let out = rpc(&[
        "call",
        &format!("127.0.0.1:{port}"),
        "add",
        "[1, 2]",
        "--tls-ca",
        ca,
        "--tls-server-name",
        "other.example.com",
    ]);
    expect_code(&out, 2);
    assert!(out.stderr.contains("tls:"), "{out:?}");
    // A CA file that does not exist: the command line is wrong.
    let out = rpc(&[
        "call",
        &format!("localhost:{port}"),
        "add",
        "--tls-ca",
        "/no/such/ca.crt",
    ]);
    expect_code(&out, 64);
}

// ----- list and describe: a fake server that answers rpc.methods -----

/// What `rpc.methods` answers on the fake server.
fn methods_answer() -> rmpv::Value {
    use rmpv::Value as V;
    let method =
        |name: &str, args: &[(&str, &str)], returns: &str, sync: bool, max_flow: Option<u64>, doc: &str| {
            V::Map(vec![
                ("name".into(), name.into()),
                (
                    "args".into(),
                    V::Array(
                        args.iter()
                            .map(|(n, t)| V::Array(vec![(*n).into(), (*t).into()]))
                            .collect(),
                    ),
                ),
                ("returns".into(), returns.into()),
                ("sync".into(), sync.into()),
                ("max_flow".into(), max_flow.map_or(V::Nil, V::from)),
                ("doc".into(), doc.into()),
            ])
        };
    V::Array(vec![
        method(
            "fib_sync",
            &[("n", "u64")],
            "u64",
            true,
            Some(100),
            "Fibonacci, recursively.",
        ),
        method(
            "add",
            &[("a", "i64"), ("b", "i64")],
            "i64",
            true,
            None,
            "Adds two numbers.",
        ),
        method(
            "concat",
            &[("a", "String"), ("b", "String")],
            "String",
            true,
            None,
            "",
        ),
        method("echo", &[("v", "Point")], "Point", true, None, ""),
        method("closure", &[("0", "?")], "?", false, None, ""),
        method("note", &[("s", "&str")], "()", false, None, "Records a note."),
        method("fail", &[], "()", true, None, ""),
    ])
}

/// A server speaking raw MessagePack-RPC on blocking sockets, one thread per connection:
/// it answers `rpc.methods` with [`methods_answer`] (or, `introspection: false`, with
/// "method not found" as a server without it does), and "method not found" to any other
/// call.
struct FakeServer {
    addr: String,
}

fn fake_server(introspection: bool) -> FakeServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            thread::spawn(move || answer(conn, introspection));
        }
    });
    FakeServer { addr }
}

fn answer(conn: TcpStream, introspection: bool) {
    use rmpv::Value as V;
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut writer = conn;
    // Ends when the client closes (a read error).
    while let Ok(msg) = rmpv::decode::read_value(&mut reader) {
        let Some([kind, msgid, method, _params]) = msg.as_array().map(Vec::as_slice) else {
            continue; // a notification: nothing to answer
        };
        if kind.as_u64() != Some(0) {
            continue;
        }
        let method = method.as_str().unwrap_or("").to_owned();
        let (error, result) = if method == "rpc.methods" && introspection {
            (V::Nil, methods_answer())
        } else {
            (
                V::Array(vec![1.into(), format!("method not found: {method}").into()]),
                V::Nil,
            )
        };
        let reply = V::Array(vec![1.into(), msgid.clone(), error, result]);
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, &reply).unwrap();
        if writer.write_all(&bytes).is_err() {
            return;
        }
    }
}

#[test]
fn list_prints_sorted_signatures() {
    let fake = fake_server(true);
    let out = rpc(&["list", &fake.addr]);
    expect_code(&out, 0);
    assert_eq!(
        out.stdout,
        "add(a: i64, b: i64) -> i64\n\
         closure(0: ?) -> ?\n\
         concat(a: String, b: String) -> String\n\
         echo(v: Point) -> Point\n\
         fail() -> ()\n\
         fib_sync(n: u64) -> u64\n\
         note(s: &str) -> ()\n"
    );
    let out = rpc(&["list", &fake.addr, "--json"]);
    expect_code(&out, 0);
    let j = out.json();
    let methods = j["methods"].as_array().unwrap();
    assert_eq!(methods.len(), 7);
    assert_eq!(
        methods[0],
        json!({
            "name": "add",
            "args": [["a", "i64"], ["b", "i64"]],
            "returns": "i64",
            "sync": true,
            "max_flow": null,
            "doc": "Adds two numbers.",
            "signature": "add(a: i64, b: i64) -> i64",
        })
    );
}

#[test]
fn describe_prints_one_method() {
    let fake = fake_server(true);
    let out = rpc(&["describe", &fake.addr, "fib_sync"]);
    expect_code(&out, 0);
    assert_eq!(
        out.stdout,
        "fib_sync(n: u64) -> u64\n  sync (runs on the blocking pool), max_flow 100\n  Fibonacci, recursively.\n"
    );
    let out = rpc(&["describe", &fake.addr, "closure", "--json"]);
    expect_code(&out, 0);
    let j = out.json();
    assert_eq!(
        (j["sync"].as_bool(), j["returns"].as_str()),
        (Some(false), Some("?"))
    );
    let out = rpc(&["describe", &fake.addr, "nosuch"]);
    expect_code(&out, 1);
    assert!(out.stderr.contains("has no method \"nosuch\""), "{out:?}");
}

#[test]
fn list_and_describe_our_server() {
    let s = start_server();
    let out = rpc(&["list", &s.addr]);
    expect_code(&out, 0);
    assert_eq!(
        out.stdout,
        "add(a: i64, b: i64) -> i64\n\
         concat(a: String, b: String) -> String\n\
         countdown(n: u64) -> stream of u64\n\
         double(+stream) -> stream of i64\n\
         echo(?: ?) -> ?\n\
         fail() -> Result<(), String>\n\
         lookup(?: ?) -> ?\n\
         note(s: String) -> ()\n\
         sum_stream(+stream) -> i64\n"
    );
    let out = rpc(&["describe", &s.addr, "add"]);
    expect_code(&out, 0);
    assert_eq!(
        out.stdout,
        "add(a: i64, b: i64) -> i64\n  sync (runs on the blocking pool), no max_flow\n  Adds two numbers.\n"
    );
    let out = rpc(&["describe", &s.addr, "note"]);
    expect_code(&out, 0);
    assert_eq!(
        out.stdout,
        "note(s: String) -> ()\n  async, no max_flow\n  Records a note.\n"
    );
    let out = rpc(&["describe", &s.addr, "concat", "--json"]);
    expect_code(&out, 0);
    assert_eq!(
        out.json(),
        json!({
            "name": "concat",
            "args": [["a", "String"], ["b", "String"]],
            "returns": "String",
            "sync": true,
            "max_flow": 50,
            "doc": "",
            "signature": "concat(a: String, b: String) -> String",
        })
    );
}

/// `rpc ARGS...`, with `input` on stdin (then closed).
fn rpc_with_stdin<S: AsRef<OsStr>>(args: &[S], input: &str) -> Out {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rpc"));
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = KillOnDrop(cmd.spawn().expect("run rpc"));
    // Unwrap: requested as a pipe just above. Written on a thread: a full pipe must not
    // block the test while the process is read below.
    let mut stdin = child.0.stdin.take().unwrap();
    let input = input.to_owned();
    let writer = thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let (done_tx, done_rx) = mpsc::channel();
    let out = drain(child.0.stdout.take().unwrap(), done_tx.clone());
    let err = drain(child.0.stderr.take().unwrap(), done_tx);
    for _ in 0..2 {
        if done_rx.recv_timeout(PROCESS_LIMIT).is_err() {
            drop(child);
            panic!(
                "rpc {:?} did not finish within {PROCESS_LIMIT:?}; killed",
                cmd.get_args()
            );
        }
    }
    writer.join().expect("stdin writer");
    let status = child.0.wait().expect("wait for rpc");
    Out {
        code: status.code().expect("rpc exited by a signal"),
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

#[test]
fn call_prints_a_result_stream_as_json_lines() {
    let s = start_server();
    // Found out from the server's answer, asked for with --stream, and typed by
    // rpc.methods for bincode: the same lines.
    for extra in [&[][..], &["--stream"][..], &["--codec", "bincode"][..]] {
        let mut args = vec!["call", s.addr.as_str(), "countdown", "3"];
        args.extend_from_slice(extra);
        let out = rpc(&args);
        expect_code(&out, 0);
        assert_eq!(out.stdout, "2\n1\n0\n", "{extra:?}");
    }
    let out = rpc(&["call", &s.addr, "countdown", "2", "--json"]);
    expect_code(&out, 0);
    assert_eq!(out.stdout, "{\"item\":1}\n{\"item\":0}\n");
    // An empty stream prints nothing.
    let out = rpc(&["call", &s.addr, "countdown", "0"]);
    expect_code(&out, 0);
    assert_eq!(out.stdout, "");
}

#[test]
fn call_sends_stdin_lines_as_the_argument_stream() {
    let s = start_server();
    let out = rpc_with_stdin(&["call", &s.addr, "sum_stream"], "1\n2\n\n39\n");
    expect_code(&out, 0);
    assert_eq!(out.stdout.trim(), "42");
    let out = rpc_with_stdin(&["call", &s.addr, "double", "--json"], "1\n2\n");
    expect_code(&out, 0);
    assert_eq!(out.stdout, "{\"item\":2}\n{\"item\":4}\n");
    // Bincode cannot encode items whose type it is not told.
    let out = rpc_with_stdin(&["call", &s.addr, "sum_stream", "--codec", "bincode"], "1\n");
    expect_code(&out, 64);
    assert!(out.stderr.contains("--codec msgpack"), "{out:?}");
}

#[test]
fn describe_marks_streaming_methods() {
    let s = start_server();
    let out = rpc(&["describe", &s.addr, "countdown"]);
    expect_code(&out, 0);
    assert_eq!(
        out.stdout,
        "countdown(n: u64) -> stream of u64\n  async, no max_flow, streams its result (rpc call prints one JSON \
         line per item)\n  Counts down.\n"
    );
    let out = rpc(&["describe", &s.addr, "sum_stream", "--json"]);
    expect_code(&out, 0);
    assert_eq!(out.json()["streaming"], "args");
    assert_eq!(out.json()["signature"], "sum_stream(+stream) -> i64");
}

#[test]
fn list_without_introspection_says_so() {
    let fake = fake_server(false);
    for cmd in [&["list", &fake.addr][..], &["describe", &fake.addr, "add"][..]] {
        let out = rpc(cmd);
        expect_code(&out, 1);
        assert_eq!(
            out.stderr,
            format!(
                "rpc: {} does not support introspection: it answered rpc.methods with error 1: \
                 method not found: rpc.methods\n",
                fake.addr
            )
        );
    }
    let out = rpc(&["list", &fake.addr, "--json"]);
    expect_code(&out, 1);
    assert_eq!(out.json()["error"]["kind"], "server");
}

#[test]
fn bincode_calls_are_typed_by_rpc_methods() {
    let s = start_server();
    let out = rpc(&["--codec", "bincode", "call", &s.addr, "add", "[40, 2]"]);
    expect_code(&out, 0);
    assert_eq!(out.stdout, "42\n");
    let out = rpc(&[
        "--codec", "bincode", "call", &s.addr, "concat", "\"a\"", "\"b\"", "--json",
    ]);
    expect_code(&out, 0);
    assert_eq!(out.json(), json!({"result": "ab"}));
    // A remote error comes back in bincode too.
    let out = rpc(&["--codec", "bincode", "call", &s.addr, "fail"]);
    expect_code(&out, 1);
    assert_eq!(out.stderr, "error 3: boom\n");
    // The server said hello back: its codes are ours, and named.
    let out = rpc(&["--codec", "bincode", "call", &s.addr, "fail", "--json"]);
    expect_code(&out, 1);
    assert_eq!(
        out.json(),
        json!({"error": {"kind": "remote", "code": 3, "name": "handler error", "message": "boom"}})
    );
    // Arguments are checked against the signature before anything is sent.
    let out = rpc(&["--codec", "bincode", "call", &s.addr, "add", "[1, 2, 3]"]);
    expect_code(&out, 64);
    assert!(
        out.stderr
            .contains("add(a: i64, b: i64) -> i64 takes 2 argument(s), 3 given"),
        "{out:?}"
    );
    let out = rpc(&["--codec", "bincode", "call", &s.addr, "add", r#"[1, "2"]"#]);
    expect_code(&out, 64);
    assert!(
        out.stderr
            .contains("argument b of add(a: i64, b: i64) -> i64: expected i64, got \"2\""),
        "{out:?}"
    );
    // A type rpc does not know (`?`: a closure the server has no types for): bincode
    // cannot do without it.
    let out = rpc(&["--codec", "bincode", "call", &s.addr, "echo", "{}"]);
    expect_code(&out, 64);
    assert!(out.stderr.contains("use --codec msgpack"), "{out:?}");
    let out = rpc(&["--codec", "bincode", "notify", &s.addr, "note", "\"bin\""]);
    expect_code(&out, 0);
    assert_eq!(s.notes.recv_timeout(PROCESS_LIMIT).unwrap(), "bin");
    let out = rpc(&[
        "--codec",
        "bincode",
        "load",
        &s.addr,
        "add",
        "[1, 2]",
        "--duration",
        "0.5",
        "--concurrency",
        "2",
        "--json",
    ]);
    expect_code(&out, 0);
    let j = out.json();
    assert!(j["ok"].as_u64().unwrap() > 0 && j["errors"] == 0, "{j}");
}

// ----- the Python spec server -----

fn repo_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// `tests/python/spec_server.py` (stock PyPI msgpack), killed when dropped; it also exits
/// when its stdin closes.
struct PythonServer {
    addr: String,
    _stdin: ChildStdin,
    _child: KillOnDrop,
}

fn start_python_server(root: &Path) -> PythonServer {
    let deps = run_cmd(
        Command::new("sh")
            .arg(root.join("scripts/ensure-python-deps.sh"))
            .current_dir(root)
            .stdin(Stdio::null()),
    );
    assert_eq!(
        deps.code, 0,
        "scripts/ensure-python-deps.sh failed; this test needs python3 (with venv) and PyPI msgpack: {deps:?}"
    );
    // The script prints the test environment's interpreter (under `target/`).
    let python = deps
        .stdout
        .lines()
        .last()
        .expect("the interpreter's path")
        .to_owned();
    let mut child = KillOnDrop(
        Command::new(&python)
            .arg(root.join("tests/python/spec_server.py"))
            .current_dir(root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {python:?}: {e}")),
    );
    // Unwraps: both were requested as pipes just above.
    let stdin = child.0.stdin.take().unwrap();
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(PROCESS_LIMIT)
        .expect("spec_server.py printed no port");
    let port: u16 = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("spec_server.py's first line is not a port: {line:?}"));
    PythonServer {
        addr: format!("127.0.0.1:{port}"),
        _stdin: stdin,
        _child: child,
    }
}

#[test]
fn call_against_the_python_spec_server() {
    let py = start_python_server(&repo_root());
    let out = rpc(&["call", &py.addr, "add", "[2, 3]"]);
    expect_code(&out, 0);
    assert_eq!(out.stdout, "5\n");
    let out = rpc(&["call", &py.addr, "echo", r#"[{"$bin": "AAEC/w=="}]"#, "--json"]);
    expect_code(&out, 0);
    assert_eq!(out.json(), json!({"result": {"$bin": "AAEC/w=="}}));
    let out = rpc(&["call", &py.addr, "echo", r#"["text"]"#]);
    expect_code(&out, 0);
    assert_eq!(out.stdout, "\"text\"\n");
    let out = rpc(&["call", &py.addr, "fail"]);
    expect_code(&out, 1);
    assert_eq!(out.stderr, "error 3: boom\n");
    let out = rpc(&["list", &py.addr]);
    expect_code(&out, 1);
    assert!(out.stderr.contains("does not support introspection"), "{out:?}");
}
