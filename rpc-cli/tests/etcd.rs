//! Issue 13: `rpc call` and `rpc load` with `--etcd URL --service NAME` in place of the
//! address, against a real etcd (needs `etcd` on PATH: `scripts/ensure-etcd.sh`) holding
//! the registrations of two servers of ours run in this process.

#![cfg(feature = "etcd")]

#[path = "../../examples/tests/common/etcd.rs"]
#[allow(dead_code)]
mod etcd;

use std::process::{Command, Stdio};

use easyrpc_server::Server;
use etcd::Etcd;

/// A server of ours serving `add` on a port of its own, until the runtime drops.
fn serve(rt: &tokio::runtime::Runtime) -> String {
    let server = Server::builder()
        .sync_fn("add", |(a, b): (i64, i64)| a + b)
        .build()
        .unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    rt.spawn(async move { server.run(listener, std::future::pending::<()>()).await });
    addr
}

/// Put `addr` under `rpc/services/calc/` as the servers' registration does.
fn register(rt: &tokio::runtime::Runtime, etcd: &Etcd, addr: &str) {
    rt.block_on(async {
        let mut c = etcd_client::Client::connect([etcd.url()], None).await.unwrap();
        let value = format!(r#"{{"addr":"{addr}","weight":1,"workers":1}}"#);
        c.put(format!("rpc/services/calc/{addr}"), value, None)
            .await
            .unwrap();
    });
}

fn rpc(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rpc"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run rpc");
    (
        out.status.code().expect("rpc exited by a signal"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn issue13_call_and_load_by_service_name() {
    let etcd = Etcd::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for _ in 0..2 {
        let addr = serve(&rt);
        register(&rt, &etcd, &addr);
    }
    let url = etcd.url();
    let (code, out, err) = rpc(&["call", "--etcd", &url, "--service", "calc", "add", "1", "2"]);
    assert_eq!((code, out.as_str()), (0, "3\n"), "{err}");
    // Flags anywhere, `=` forms, and the address form they stand for.
    let (code, out, err) = rpc(&[
        "--json",
        "call",
        "add",
        "[1, 2]",
        "--service=calc",
        &format!("--etcd={url}"),
    ]);
    assert_eq!((code, out.as_str()), (0, "{\"result\":3}\n"), "{err}");
    let target = format!("etcd:calc@{url}");
    let (code, out, err) = rpc(&["call", &target, "add", "1", "2"]);
    assert_eq!((code, out.as_str()), (0, "3\n"), "{err}");
    // Load, balanced over both instances.
    let (code, out, err) = rpc(&[
        "--json",
        "load",
        "--etcd",
        &url,
        "--service",
        "calc",
        "add",
        "1",
        "2",
        "--duration",
        "0.5",
    ]);
    assert_eq!(code, 0, "{out} {err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["errors"], 0, "{report}");
    assert!(report["ok"].as_u64().unwrap() > 0, "{report}");
    // A service with no instance: a transport error naming it.
    let (code, _, err) = rpc(&["call", "--etcd", &url, "--service", "nosuch", "add", "1", "2"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no instance of \"nosuch\""), "{err}");
}
