//! The `bench` binary works end to end: a quick run with tiny counts (no timing is
//! asserted), the async clients' calls joined in one task per connection, the load generator against a server it started, and our prefork server
//! (its workers visible to the harness, pinned unless told not to, all gone once its stdin
//! closes).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

const BENCH: &str = env!("CARGO_BIN_EXE_bench");

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("benches-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn quick_run_writes_the_report_and_the_charts() {
    let dir = scratch_dir("quick");
    let out = Command::new(BENCH)
        .args(["--quick", "--out"])
        .arg(&dir)
        .output()
        .expect("run bench --quick");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench --quick failed:\n{stderr}");
    let report = std::fs::read_to_string(dir.join("report.md")).expect("report.md");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        report.trim(),
        "stdout is the report"
    );
    for needle in [
        "## Sequential latency",
        "## Throughput",
        "mean nothing; no target is judged",
        "ours async msgpack",
        "ours blocking bincode",
        "ours prefork async msgpack",
        "`ours-prefork`",
        "tonic (gRPC)",
        "tarpc (bincode)",
        "raw TCP std",
        "raw TCP tokio",
        "echo 1 MiB",
        "echo 64 records",
        "1 conn × 64 in flight",
        "16 conn × 16 in flight",
    ] {
        assert!(
            report.contains(needle),
            "{needle:?} missing from the report:\n{report}"
        );
    }
    assert!(!report.contains("## Failed measurements"), "{report}");
    // No verdicts from a smoke run.
    assert!(
        !report.contains("## Targets") && !report.contains("FAIL"),
        "{report}"
    );
    for chart in [
        "latency_add.svg",
        "latency_p50_by_size.svg",
        "throughput.svg",
        "cpu_per_call.svg",
    ] {
        let svg = std::fs::read_to_string(dir.join(chart)).unwrap_or_else(|e| panic!("{chart}: {e}"));
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{chart} is not an SVG"
        );
        assert!(
            svg.contains("<rect") || svg.contains("<polyline"),
            "{chart} draws nothing"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Run `bench --quick` with `args` (and `--out` a scratch directory); returns its report,
/// once it is known to have succeeded with no failed measurement.
fn quick_report(name: &str, args: &[&str]) -> String {
    let dir = scratch_dir(name);
    let out = Command::new(BENCH)
        .arg("--quick")
        .args(args)
        .arg("--out")
        .arg(&dir)
        .output()
        .expect("run bench --quick");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench --quick failed:\n{stderr}");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!report.contains("## Failed measurements"), "{report}");
    let _ = std::fs::remove_dir_all(&dir);
    report
}

#[test]
fn big_messages_and_connection_churn() {
    let report = quick_report(
        "big",
        &[
            "--systems",
            "ours,ours-prefork-1,raw-std,raw-tokio",
            "--workloads",
            "16m",
            "--modes",
            "accept",
        ],
    );
    for needle in [
        "## Big messages",
        "| 16 MiB | ours async msgpack |",
        "| 16 MiB | ours blocking msgpack |",
        "| 16 MiB | raw TCP std |",
        "16 new connections, one call each",
        "| ours prefork, 1 worker, async msgpack |",
        "peak × message",
    ] {
        assert!(
            report.contains(needle),
            "{needle:?} missing from the report:\n{report}"
        );
    }
}

#[test]
fn prefork_workers_left_unpinned_on_request() {
    let report = quick_report(
        "unbound",
        &[
            "--placement",
            "unpinned",
            "--prefork-unbound",
            "--no-sequential",
            "--systems",
            "ours-prefork",
            "--modes",
            "16x16",
        ],
    );
    for needle in [
        "workers and client unpinned (bind_core off, `--prefork-unbound`)",
        "| ours prefork async msgpack |",
    ] {
        assert!(
            report.contains(needle),
            "{needle:?} missing from the report:\n{report}"
        );
    }
}

#[test]
fn async_clients_under_load_from_one_task_per_connection() {
    let report = quick_report(
        "callers",
        &[
            "--callers",
            "connection",
            "--no-sequential",
            "--systems",
            "ours,tonic,tarpc,raw-tokio",
            "--workloads",
            "add",
            "--modes",
            "1x64,16x16",
        ],
    );
    for needle in [
        "Async clients under load: one task per connection",
        "| ours async msgpack |",
        "| ours async bincode |",
        "| tonic (gRPC) |",
        "| tarpc (bincode) |",
        "| raw TCP tokio |",
    ] {
        assert_eq!(
            report.matches(needle).count(),
            if needle.starts_with('|') { 2 } else { 1 },
            "{needle:?} in the report:\n{report}"
        );
    }
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        // Closing stdin stops the server; kill it in case it does not.
        drop(self.0.stdin.take());
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `bench server` with `args`; returns it with its port once it printed it.
fn start_server(args: &[&str]) -> (Server, u16, BufReader<ChildStdout>) {
    let mut child = Command::new(BENCH)
        .args(["server", "--addr", "127.0.0.1:0"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start bench server");
    // Unwrap: stdout is piped.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let server = Server(child);
    let mut line = String::new();
    stdout.read_line(&mut line).expect("read the port");
    let port = line
        .trim()
        .strip_prefix("PORT ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("printed {line:?}"));
    (server, port, stdout)
}

#[test]
fn load_generator_against_our_server() {
    let (server, port, _stdout) = start_server(&["--system", "ours"]);
    let pid = server.0.id().to_string();
    let out = Command::new(BENCH)
        .args([
            "load",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--method",
            "add",
            "--args",
            "[1, 2]",
        ])
        .args([
            "--concurrency",
            "8",
            "--connections",
            "2",
            "--duration",
            "0.3",
            "--warmup",
            "0.1",
        ])
        .args(["--server-pid", &pid])
        .output()
        .expect("run bench load");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench load failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "throughput:",
        "calls/s",
        "p50",
        "p99.9",
        "histogram",
        "µs per call",
        "errors: 0",
    ] {
        assert!(stdout.contains(needle), "{needle:?} missing:\n{stdout}");
    }
    // A method the server does not have: every call fails, and the tool says so.
    let out = Command::new(BENCH)
        .args(["load", "--addr", &format!("127.0.0.1:{port}"), "--method", "nope"])
        .args(["--duration", "0.2", "--warmup", "0.05"])
        .output()
        .expect("run bench load");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("first error"));
    drop(server);
}

/// The children of `pid` forked without exec (same command line): what the harness
/// counts as a prefork server's workers.
fn forked_children(pid: u32) -> Vec<u32> {
    let cmdline = |p: u32| std::fs::read(format!("/proc/{p}/cmdline")).ok();
    let own = cmdline(pid).expect("the server's command line");
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .expect("/proc/<pid>/task/<pid>/children")
        .split_whitespace()
        .map(|c| c.parse().expect("a pid"))
        .filter(|&c| cmdline(c).as_ref() == Some(&own))
        .collect()
}

/// The CPUs `pid` may run on: `Cpus_allowed_list` of its status, e.g. `0-1` or `0`.
fn cpus_allowed(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list")
        .trim()
        .to_owned()
}

#[test]
fn prefork_workers_are_pinned_unless_told_not_to() {
    // The servers inherit this process's CPU mask.
    let own = cpus_allowed(std::process::id());
    let single = |list: &str| !list.contains(['-', ',']);

    let (server, _, _stdout) = start_server(&["--system", "ours-prefork", "--workers", "2"]);
    let workers = forked_children(server.0.id());
    assert_eq!(workers.len(), 2, "{workers:?}");
    let pinned: Vec<String> = workers.iter().map(|&w| cpus_allowed(w)).collect();
    assert!(pinned.iter().all(|l| single(l)), "bind_core: {pinned:?}");
    if !single(&own) {
        // Worker i on core i of the mask: two cores, two different ones.
        assert_ne!(pinned[0], pinned[1], "bind_core: {pinned:?} (mask {own})");
    }
    drop(server);

    let (server, _, _stdout) =
        start_server(&["--system", "ours-prefork", "--workers", "2", "--no-bind-core"]);
    let workers = forked_children(server.0.id());
    assert_eq!(workers.len(), 2, "{workers:?}");
    for w in workers {
        assert_eq!(cpus_allowed(w), own, "--no-bind-core: worker {w}");
    }
}

#[test]
fn prefork_server_serves_from_its_workers_and_stops_with_its_stdin() {
    let (mut server, port, _stdout) = start_server(&["--system", "ours", "--workers", "2"]);
    let pid = server.0.id();
    // `PORT` is printed once every worker listens: both are there.
    let workers = forked_children(pid);
    assert_eq!(workers.len(), 2, "workers of {pid}: {workers:?}");
    let client = easyrpc_client::BlockingClient::connect(("127.0.0.1", port)).expect("connect");
    let sum: i64 = client.call("add", (1i64, 2i64)).expect("add");
    assert_eq!(sum, 3);
    // A worker answers, not the supervisor.
    let at: BTreeMap<String, u64> = client.call("rpc.worker", ()).expect("rpc.worker");
    assert!(
        workers.iter().any(|&w| u64::from(w) == at["pid"]),
        "{at:?} not in {workers:?}"
    );
    drop(client);

    // Closing stdin stops the supervisor, which returns only after reaping every worker.
    drop(server.0.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = server.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the prefork server did not stop");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status}");
    for w in workers {
        assert!(
            !std::path::Path::new(&format!("/proc/{w}")).exists(),
            "worker {w} outlived its supervisor"
        );
    }
}

#[test]
fn workers_are_refused_for_other_systems() {
    for args in [
        ["--system", "tonic", "--workers", "2"],
        ["--system", "ours", "--workers", "0"],
    ] {
        let out = Command::new(BENCH)
            .arg("server")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run bench server");
        assert!(!out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--workers"),
            "{args:?}"
        );
    }
}
