//! The `bench` binary works end to end: a quick run with tiny counts (no timing is
//! asserted), the load generator against a server it started, and the prefork hook
//! refusing what it cannot do yet.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

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
        "## Targets",
        "ours async msgpack",
        "ours blocking bincode",
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

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        // Closing stdin stops the server; kill it in case it does not.
        drop(self.0.stdin.take());
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn load_generator_against_our_server() {
    let mut child = Command::new(BENCH)
        .args(["server", "--system", "ours", "--addr", "127.0.0.1:0"])
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
        .unwrap_or_else(|| panic!("printed {line:?}"));
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

#[test]
fn prefork_workers_are_refused_until_implemented() {
    let out = Command::new(BENCH)
        .args(["server", "--system", "ours", "--workers", "4"])
        .stdin(Stdio::null())
        .output()
        .expect("run bench server");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not implemented"));
}
