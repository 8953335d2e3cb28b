//! Issue 13: service discovery on a real etcd and client-side balancing, with the example
//! server binaries. Needs `etcd` on PATH (`scripts/ensure-etcd.sh` installs Debian's
//! `etcd-server`); each test starts its own etcd on free loopback ports and stops it.
//!
//! The tests run one at a time (a lock): they measure delays (an instance joining, one
//! leaving) that a second test's processes on the same two cores would distort.

#[path = "common/bins.rs"]
mod bins;
#[path = "common/etcd.rs"]
mod etcd;
#[path = "common/example_server.rs"]
mod example_server;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use easyrpc::{Client, ClientConfig};
use etcd::Etcd;
use example_server::Server;

/// One test at a time (see the module's docs).
static SERIAL: Mutex<()> = Mutex::new(());

/// The registrations' lease TTL in these tests, in seconds (the issue allows shorter than
/// the default 5 s to keep the tests short).
const TTL: u64 = 2;

/// Idempotent calls kept `in_flight` at once until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(client: &Client, in_flight: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..in_flight)
            .map(|t| {
                let client = client.idempotent();
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                tokio::spawn(async move {
                    let mut i = 0i64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        match client.call::<_, i64>("add", (i, t as i64)).await {
                            Ok(sum) => {
                                assert_eq!(sum, i + t as i64);
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => failed.lock().unwrap().push(e.to_string()),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Stop, and return (calls answered, errors).
    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let failed = self.failed.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failed)
    }
}

fn config() -> ClientConfig {
    let mut config = ClientConfig::default();
    config.timeout = Duration::from_secs(10);
    config.connect_timeout = Duration::from_secs(2);
    config
}

/// Poll `check` every 10 ms until it holds or `limit` passes; how long it took.
async fn until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if check() {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether `client` lists an instance at `addr`, and it is up.
fn listed(client: &Client, addr: &str) -> Option<bool> {
    client
        .instances()
        .iter()
        .find(|i| i.addr.to_string() == addr)
        .map(|i| i.up)
}

fn calls_of(client: &Client, addr: &str) -> u64 {
    client
        .instances()
        .iter()
        .find(|i| i.addr.to_string() == addr)
        .map_or(0, |i| i.calls)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// 3 servers registered, 16 idempotent calls in flight for 10 s: one server killed with
/// kill -9 (no call fails; it leaves the rotation at once and the list within about a
/// TTL), a 4th started (takes calls within 1 s of registering), another stopped with TERM
/// (no call fails; deregistered before it stops accepting).
#[test]
fn issue13_discovery_under_load() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let etcd = Etcd::start();
    let mut servers: Vec<Server> = (0..3).map(|_| Server::registered(&etcd, "calc", TTL)).collect();
    runtime().block_on(async {
        let client = Client::discover_with([etcd.url()], "calc", config())
            .await
            .unwrap();
        until(Duration::from_secs(5), "3 instances up", || {
            servers.iter().all(|s| listed(&client, &s.addr) == Some(true))
        })
        .await;
        let started = Instant::now();
        let load = Load::start(&client, 16);

        // kill -9 in the middle of the load.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let killed = servers[0].addr.clone();
        servers[0].kill();
        let out = until(
            Duration::from_secs(1),
            "killed instance out of the rotation",
            || listed(&client, &killed) != Some(true),
        )
        .await;
        let gone = until(
            Duration::from_secs(TTL + 2),
            "killed instance's key expired",
            || listed(&client, &killed).is_none(),
        )
        .await;
        eprintln!("kill -9: out of the rotation after {out:?}, out of the list after {gone:?} (TTL {TTL} s)");
        assert!(
            gone <= Duration::from_millis(TTL * 1000 + 1000),
            "removed after {gone:?}"
        );

        // A 4th server: its first call within 1 s of registering (it registers before it
        // prints its address).
        let fourth = Server::registered(&etcd, "calc", TTL);
        let first_call = until(Duration::from_secs(1), "the 4th instance takes calls", || {
            calls_of(&client, &fourth.addr) > 0
        })
        .await;
        eprintln!("4th instance: first call answered {first_call:?} after it registered");
        servers.push(fourth);

        // TERM another: deregistered before it stops accepting, no call fails.
        let ok_before = load.ok();
        let termed = servers[1].addr.clone();
        servers[1].term();
        until(Duration::from_secs(5), "TERM'd instance leaves the list", || {
            listed(&client, &termed).is_none()
        })
        .await;
        assert!(
            servers[1].wait_exit(Duration::from_secs(10)),
            "TERM'd server did not exit: {:?}",
            servers[1].log()
        );
        let (dereg, stopping) = (
            servers[1].log_line("deregistered from etcd"),
            servers[1].log_line("shutting down"),
        );
        assert!(
            matches!((dereg, stopping), (Some(d), Some(s)) if d < s),
            "deregistered before it stopped accepting: {:?}",
            servers[1].log()
        );
        let keys = etcd.instances("calc").await;
        assert!(!keys.iter().any(|(_, v)| v.contains(&termed)), "{keys:?}");

        tokio::time::sleep(Duration::from_secs(10).saturating_sub(started.elapsed())).await;
        let (ok, failed) = load.finish().await;
        eprintln!(
            "{ok} calls in {:?} ({} after TERM), {} failed",
            started.elapsed(),
            ok - ok_before,
            failed.len()
        );
        assert!(
            failed.is_empty(),
            "{} calls failed, first: {:?}",
            failed.len(),
            failed.first()
        );
        assert!(ok > 1000, "only {ok} calls");
        let left: Vec<_> = client
            .instances()
            .into_iter()
            .map(|i| i.addr.to_string())
            .collect();
        let mut want = vec![servers[2].addr.clone(), servers[3].addr.clone()];
        want.sort();
        let mut left = left;
        left.sort();
        assert_eq!(left, want);
    });
}

/// etcd stopped for 3 s under load: calls go on to the instances known; when it is back,
/// every server registers again and the client's watch resumes (a server started then is
/// found).
#[test]
fn issue13_etcd_down_under_load() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut etcd = Etcd::start();
    let servers: Vec<Server> = (0..3).map(|_| Server::registered(&etcd, "calc", TTL)).collect();
    runtime().block_on(async {
        let client = Client::discover_with([etcd.url()], "calc", config())
            .await
            .unwrap();
        until(Duration::from_secs(5), "3 instances up", || {
            servers.iter().all(|s| listed(&client, &s.addr) == Some(true))
        })
        .await;
        let load = Load::start(&client, 16);
        tokio::time::sleep(Duration::from_millis(500)).await;
        etcd.stop();
        let during = load.ok();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let served = load.ok() - during;
        eprintln!("{served} calls answered while etcd was down for 3 s");
        assert!(served > 100, "only {served} calls while etcd was down");
        assert_eq!(client.instances().len(), 3, "the known instances are kept");
        etcd.restart();
        for s in &servers {
            until(Duration::from_secs(10), "registered again", || {
                s.log_line("registered in etcd again").is_some()
            })
            .await;
        }
        let keys = etcd.instances("calc").await;
        assert_eq!(keys.len(), 3, "{keys:?}");
        let late = Server::registered(&etcd, "calc", TTL);
        let found = until(
            Duration::from_secs(5),
            "a server registered after the outage is found",
            || listed(&client, &late.addr) == Some(true),
        )
        .await;
        eprintln!("after the outage: a new instance found in {found:?}");
        let (ok, failed) = load.finish().await;
        assert!(
            failed.is_empty(),
            "{} calls failed, first: {:?}",
            failed.len(),
            failed.first()
        );
        eprintln!("{ok} calls, none failed");
    });
}

/// A static list, no etcd: 3 equal instances share the calls (each 25 %..42 %), and one
/// killed with kill -9 costs no call.
#[test]
fn issue13_static_list_spread() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut servers: Vec<Server> = (0..3).map(|_| Server::start(&[])).collect();
    runtime().block_on(async {
        let addrs: Vec<String> = servers.iter().map(|s| s.addr.clone()).collect();
        let client = Client::balanced_with(&addrs, config()).await.unwrap();
        until(Duration::from_secs(5), "3 instances up", || {
            addrs.iter().all(|a| listed(&client, a) == Some(true))
        })
        .await;
        let load = Load::start(&client, 16);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let counts: Vec<u64> = addrs.iter().map(|a| calls_of(&client, a)).collect();
        let total: u64 = counts.iter().sum();
        let shares: Vec<f64> = counts.iter().map(|&c| c as f64 * 100.0 / total as f64).collect();
        eprintln!("spread over 3 equal instances: {shares:.1?} % of {total} calls");
        for s in &shares {
            assert!((25.0..=42.0).contains(s), "shares {shares:?}");
        }
        servers[0].kill();
        until(Duration::from_secs(1), "killed instance ejected", || {
            listed(&client, &addrs[0]) == Some(false)
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (ok, failed) = load.finish().await;
        assert!(
            failed.is_empty(),
            "{} calls failed, first: {:?}",
            failed.len(),
            failed.first()
        );
        eprintln!("{ok} calls, none failed");
    });
}

/// The blocking client over etcd's instances (read once): round robin, and one killed with kill -9 is ejected without failing an idempotent call.
#[test]
fn issue13_blocking_round_robin() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let etcd = Etcd::start();
    let mut servers: Vec<Server> = (0..2).map(|_| Server::registered(&etcd, "calc", TTL)).collect();
    let client = easyrpc::BlockingClient::discover([etcd.url()], "calc", config()).unwrap();
    let mut addrs: Vec<String> = client.addrs().iter().map(ToString::to_string).collect();
    addrs.sort();
    let mut want: Vec<String> = servers.iter().map(|s| s.addr.clone()).collect();
    want.sort();
    assert_eq!(addrs, want);
    let idempotent = easyrpc::CallOptions::default().idempotent();
    for i in 0..10i64 {
        let sum: i64 = client.call_with("add", (i, 1), idempotent.clone()).unwrap();
        assert_eq!(sum, i + 1);
    }
    servers[0].kill();
    for i in 0..50i64 {
        let sum: i64 = client.call_with("add", (i, 1), idempotent.clone()).unwrap();
        assert_eq!(sum, i + 1);
    }
    assert_eq!(client.ejected().len(), 1, "the killed server is ejected");
    assert_eq!(client.ejected()[0].to_string(), servers[0].addr);
}

/// Under prefork the supervisor registers once for all its workers (one key, with the
/// worker count); TERM deregisters before any worker stops accepting.
#[test]
fn issue13_prefork_registers_once() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let etcd = Etcd::start();
    let mut server = Server::start(&[
        "--workers",
        "2",
        "--etcd",
        &etcd.url(),
        "--service",
        "calc",
        "--lease-ttl",
        &TTL.to_string(),
    ]);
    runtime().block_on(async {
        let keys = etcd.instances("calc").await;
        assert_eq!(keys.len(), 1, "{keys:?}");
        assert!(keys[0].1.contains("\"workers\":2"), "{keys:?}");
        assert!(keys[0].1.contains(&server.addr), "{keys:?}");
        let client = Client::discover_with([etcd.url()], "calc", config())
            .await
            .unwrap();
        let sum: i64 = client.idempotent().call("add", (1, 2)).await.unwrap();
        assert_eq!(sum, 3);
        server.term();
        assert!(server.wait_exit(Duration::from_secs(10)), "{:?}", server.log());
        let (dereg, stopping) = (
            server.log_line("deregistered from etcd"),
            server.log_line("shutting down"),
        );
        assert!(
            matches!((dereg, stopping), (Some(d), Some(s)) if d < s),
            "deregistered before the workers stopped accepting: {:?}",
            server.log()
        );
        assert!(etcd.instances("calc").await.is_empty());
    });
}
