//! Runs the real `server` example binary on port 0 and the `client` example against it.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// `target/<profile>/examples/<name>`, built by `cargo test` alongside this test.
fn example(name: &str) -> PathBuf {
    // Unwrap: the test binary has a path, in target/<profile>/deps.
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().join("examples");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo test` so examples are built",
        path.display()
    );
    path
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start the server on port 0 and read the address it prints.
fn start_server() -> (KillOnDrop, String) {
    let mut child = Command::new(example("server"))
        .args(["--addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the server example");
    let stdout = child.stdout.take().unwrap();
    let child = KillOnDrop(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("server printed its address");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (child, addr)
}

#[test]
fn client_example_calls_server_example() {
    let (_server, addr) = start_server();
    let mut client = Command::new(example("client"))
        .args(["--addr", &addr])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the client example");
    let (tx, rx) = mpsc::channel();
    let stdout = client.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut out = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stdout), &mut out);
        let _ = tx.send(out);
    });
    let out = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("client finished");
    let status = client.wait().unwrap();
    assert!(status.success(), "client failed: {status}\n{out}");
    for expected in [
        "blocking add(2, 3)          = 5",
        "async    fib_async(50)      = 12586269025",
        "async    fib_sync(25)       = 75025",
        "sum = 999000",
        "async    whoami()           = 127.0.0.1:",
        "async    kv_get(\"greeting\") = Some(\"hello\")",
        "all calls succeeded",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
}

#[test]
fn server_example_stops_on_term() {
    let (mut server, addr) = start_server();
    let client = rpc::BlockingClient::connect(addr.as_str()).unwrap();
    assert_eq!(examples::api::add::call_blocking(&client, 1, 2).unwrap(), 3);
    // The functions of the state/context issue: stable names and signatures.
    let me = examples::api::whoami::call_blocking(&client).unwrap();
    assert!(me.starts_with("127.0.0.1:"), "{me}");
    assert_eq!(
        examples::api::kv_put::call_blocking(&client, "k".into(), "v".into()).unwrap(),
        None
    );
    assert_eq!(
        examples::api::kv_put::call_blocking(&client, "k".into(), "w".into()).unwrap(),
        Some("v".into())
    );
    assert_eq!(
        examples::api::kv_get::call_blocking(&client, "k".into()).unwrap(),
        Some("w".into())
    );
    assert_eq!(
        examples::api::kv_get::call_blocking(&client, "x".into()).unwrap(),
        None
    );
    let pid = server.0.id();
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let (tx, rx) = mpsc::channel();
    let mut child = std::mem::replace(&mut server.0, Command::new("true").spawn().unwrap());
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let exit = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("server exited after TERM")
        .unwrap();
    assert!(exit.success(), "server exit status {exit}");
}
