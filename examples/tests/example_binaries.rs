//! Runs the real `server` example binary on port 0 and the `client` example against it,
//! plain and over mutual TLS; and the `quickstart` example (the README's first command) to
//! its end.

#[path = "common/bins.rs"]
mod bins;
#[path = "common/pki.rs"]
#[allow(dead_code)]
mod pki;

use bins::example;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start the server on port 0 and read the address it prints.
fn start_server() -> (KillOnDrop, String) {
    start_server_with(&[])
}

/// [`start_server`] with more flags.
fn start_server_with(extra: &[&std::ffi::OsStr]) -> (KillOnDrop, String) {
    let mut child = Command::new(example("server"))
        .args(["--addr", "127.0.0.1:0"])
        .args(extra)
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
        "stream   countdown(5)       = [4, 3, 2, 1, 0]",
        "stream   sum_stream(1..=100) = 5050",
        "all calls succeeded",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
}

/// The README's first command: `quickstart` serves and calls every function of the
/// example service, streams included, in one process, and exits 0.
#[test]
fn quickstart_example_runs_to_its_end() {
    let out = client_output(&mut Command::new(example("quickstart")));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "quickstart failed: {}\n{stdout}\n{stderr}",
        out.status
    );
    for expected in [
        "server listening on 127.0.0.1:",
        "blocking add(2, 3)          = 5",
        "sequential add calls:",
        "async    kv_get(\"greeting\") = Some(\"hello\")",
        "stream   countdown(5)       = [4, 3, 2, 1, 0]",
        "stream   sum_stream(1..=100) = 5050",
        "all calls succeeded; server stopped",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}");
    }
}

/// The TLS flags of both examples: the server requires a client certificate from the CA
/// (`--tls-client-ca`), the client presents one and checks the server as `localhost`.
#[test]
fn client_example_calls_server_example_over_mutual_tls() {
    let pki = pki::Pki::new("examples");
    let (_server, addr) = start_server_with(&[
        "--tls-cert".as_ref(),
        pki.server_cert.as_os_str(),
        "--tls-key".as_ref(),
        pki.server_key.as_os_str(),
        "--tls-client-ca".as_ref(),
        pki.ca.as_os_str(),
    ]);
    let tls = |cmd: &mut Command| {
        cmd.args(["--addr", &addr, "--tls-server-name", "localhost", "--tls-ca"])
            .arg(&pki.ca);
    };
    let out = client_output(
        Command::new(example("client"))
            .tap(tls)
            .arg("--tls-cert")
            .arg(&pki.client_cert)
            .arg("--tls-key")
            .arg(&pki.client_key),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all calls succeeded"), "{stdout}");

    // Without a client certificate the server refuses, and the client says why.
    let out = client_output(Command::new(example("client")).tap(tls));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("ClientCertificateRequired"), "{stderr}");
}

/// Run `cmd` to its end (bounded) and collect its output.
fn client_output(cmd: &mut Command) -> std::process::Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the client example");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    rx.recv_timeout(Duration::from_secs(120))
        .expect("client finished")
        .unwrap()
}

/// `f(self)`, then `self`: for a command built in steps.
trait Tap {
    fn tap(&mut self, f: impl FnOnce(&mut Self)) -> &mut Self;
}

impl Tap for Command {
    fn tap(&mut self, f: impl FnOnce(&mut Command)) -> &mut Command {
        f(self);
        self
    }
}

#[test]
fn server_example_stops_on_term() {
    let (mut server, addr) = start_server();
    let client = easyrpc::BlockingClient::connect(addr.as_str()).unwrap();
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
