//! "Unstable network" mode: each call key (session id, msgid) runs at most once.
//!
//! The first tests drive the dedup cache with raw connections whose hello carries a
//! session id, so that a retry is exactly a resent request: it joins a running original,
//! or gets the cached answer (errors included), and never runs the function again. Then
//! the opt-in rules (server-wide, per function, never for a plain client), expiry, and
//! the bounds of the cache under a flood of keys.
//!
//! The last tests put a fault-injecting proxy (`common/proxy.rs`) between our clients and
//! the server: it cuts connections before requests are forwarded, after they are
//! forwarded but before the reply, and in the middle of replies. Every call must get its
//! own correct answer and every key must have run exactly once. The proxy's cut points
//! come from a seeded PRNG; the seed is printed (test output is shown on failure) and can
//! be set with `DEDUP_SEED=<u64>`.
//!
//! No test sleeps to synchronise. "The retry waits" is shown by a later request on the
//! same connection being answered first; executions are counted when the server
//! dispatches them. Every wait is bounded by `common::WAIT` or by the run's own bound.

#[allow(dead_code)] // Each test crate uses a part of the shared helpers.
mod common;
#[path = "common/proxy.rs"]
mod proxy;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use common::{builder, check_client, parse_response, within, RawConn, Response, WAIT};
use easyrpc_proto::{encode_request, Codec, ErrorCode, Framer, Hello, Params};
use easyrpc_server::{Builder, DedupConfig, Method, Reply, Server, SyncJob};
use futures_util::StreamExt;
use proxy::{Proxy, Stats};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;

const SESSION: u128 = 0x5e55_1011_0000_0000_0000_0000_0000_0001;
const OTHER_SESSION: u128 = 0x5e55_1011_0000_0000_0000_0000_0000_0002;

/// A server on 127.0.0.1 with a handle on it (for `dedup_entries`), stopped when dropped.
struct Running {
    server: Server,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Running {
    async fn start(builder: Builder) -> Running {
        let server = builder.build().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn({
            let server = server.clone();
            async move {
                server
                    .run(listener, async {
                        let _ = rx.await;
                    })
                    .await;
            }
        });
        Running {
            server,
            addr,
            stop: Some(stop),
            task,
        }
    }

    /// Shut down and wait until `run` returned: every connection has closed, so no call
    /// can be dispatched any more.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        within("the server to stop", &mut self.task).await.unwrap();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Executions per key, counted when the server dispatches the call (before its future or
/// job first runs), so that no execution can escape the count.
#[derive(Debug, Clone, Default)]
struct Runs(Arc<Mutex<HashMap<u64, u32>>>);

impl Runs {
    /// Count one execution of `key`; returns how many there have been.
    fn record(&self, key: u64) -> u32 {
        let mut runs = self.0.lock().unwrap();
        let n = runs.entry(key).or_default();
        *n += 1;
        *n
    }

    fn of(&self, key: u64) -> u32 {
        self.0.lock().unwrap().get(&key).copied().unwrap_or(0)
    }
}

/// `name(key) -> (key, n)`: the n-th execution of `key`, so a second run shows in the
/// answer too.
fn counted(name: &'static str, runs: &Runs) -> Method {
    let runs = runs.clone();
    Method::async_fn(name, move |(key,): (u64,)| {
        let n = runs.record(key);
        async move { (key, n) }
    })
}

/// `fail(key)`: always an error whose message names the execution.
fn failing(runs: &Runs) -> Method {
    let runs = runs.clone();
    Method::try_async_fn("fail", move |(key,): (u64,)| {
        let n = runs.record(key);
        async move { Err::<(), _>(format!("failure {n} of key {key}")) }
    })
}

/// `gated(key) -> (key, n)`: reports its start on `started`, then waits for a permit of
/// `gate`.
fn gated(runs: &Runs, started: mpsc::UnboundedSender<u64>, gate: Arc<Semaphore>) -> Method {
    let runs = runs.clone();
    Method::async_fn("gated", move |(key,): (u64,)| {
        let n = runs.record(key);
        let _ = started.send(key);
        let gate = gate.clone();
        async move {
            let _permit = gate.acquire().await;
            (key, n)
        }
    })
}

/// A raw connection that opens with a hello (with or without a session) and reads the
/// server's hello back, then speaks msgpack requests and responses.
struct Conn {
    stream: TcpStream,
    rbuf: BytesMut,
    framer: Framer,
}

impl Conn {
    async fn open(addr: SocketAddr, session: Option<u128>) -> Conn {
        Conn::try_open(addr, session)
            .await
            .expect("the server closed before its hello")
    }

    /// `None` if the server closes the connection instead of answering the hello (as it
    /// does beyond `max_connections`).
    async fn try_open(addr: SocketAddr, session: Option<u128>) -> Option<Conn> {
        let mut stream = within("connect", TcpStream::connect(addr)).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let mut hello = Vec::new();
        Hello::new(Codec::Msgpack)
            .with_session(session)
            .encode(&mut hello);
        // The server may already have closed it: then the write or the read fails.
        if within("write the hello", stream.write_all(&hello)).await.is_err() {
            return None;
        }
        let mut rbuf = BytesMut::new();
        loop {
            if let Some((h, n)) = Hello::decode(&rbuf).expect("the server answers with a hello") {
                assert_eq!(h.codec, Codec::Msgpack);
                assert_eq!(h.session, session, "the server echoes the session");
                rbuf.advance(n);
                break;
            }
            match within("the server's hello", stream.read_buf(&mut rbuf)).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
        Some(Conn {
            stream,
            rbuf,
            framer: Framer::new(Codec::Msgpack, 64 << 20),
        })
    }

    /// Send a request (without a timeout extension).
    async fn request<P: Params>(&mut self, msgid: u64, method: &str, params: P) {
        let mut req = Vec::new();
        encode_request(Codec::Msgpack, &mut req, msgid, method, &params, None).unwrap();
        within("write", self.stream.write_all(&req)).await.unwrap();
    }

    /// The next message's bytes and the response they hold.
    async fn response(&mut self) -> (Vec<u8>, Response) {
        within("a response", async {
            loop {
                if let Some(n) = self.framer.decode(&self.rbuf).expect("valid msgpack") {
                    let frame = self.rbuf.split_to(n).to_vec();
                    let response = parse_response(&frame);
                    return (frame, response);
                }
                let n = self.stream.read_buf(&mut self.rbuf).await.unwrap();
                assert!(n > 0, "closed instead of answering");
            }
        })
        .await
    }
}

/// A retry that arrives while the original still runs waits for it and gets its answer;
/// the function runs once.
#[tokio::test]
async fn retry_while_running_waits_for_the_original() {
    let runs = Runs::default();
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(0));
    let srv = Running::start(
        builder()
            .unstable_network(true)
            .register(counted("count", &runs))
            .register(gated(&runs, started_tx, gate.clone())),
    )
    .await;

    let mut a = Conn::open(srv.addr, Some(SESSION)).await;
    a.request(7, "gated", (1u64,)).await;
    assert_eq!(within("gated to start", started.recv()).await, Some(1));

    let mut b = Conn::open(srv.addr, Some(SESSION)).await;
    b.request(7, "gated", (1u64,)).await;
    b.request(8, "count", (2u64,)).await;
    // Requests on one connection are handled in order: msgid 7 was handled before 8 was
    // answered, and it has no answer yet. It waits rather than running again.
    let (_, r) = b.response().await;
    r.assert_ok(8, (2u64, 1u32));
    assert_eq!(runs.of(1), 1, "the retry must not run the function again");
    assert_eq!(srv.server.dedup_entries(), 2);

    // Enough permits for any number of executions: a bug shows as a count, not a hang.
    gate.add_permits(100);
    let (fa, ra) = a.response().await;
    let (fb, rb) = b.response().await;
    ra.assert_ok(7, (1u64, 1u32));
    rb.assert_ok(7, (1u64, 1u32));
    assert_eq!(fa, fb, "both get the same answer");
    assert_eq!(runs.of(1), 1);
    assert!(started.try_recv().is_err(), "gated started once");

    // And once it has finished, a third attempt gets it from the cache.
    let mut c = Conn::open(srv.addr, Some(SESSION)).await;
    c.request(7, "gated", (1u64,)).await;
    assert_eq!(c.response().await.0, fa);
    assert_eq!(runs.of(1), 1);
}

/// The original keeps running when its connection closes (the client's retry will want
/// its answer): a retry on a new connection, once the old one is gone, waits for it and
/// does not run the function again.
#[tokio::test]
async fn the_original_survives_its_connection() {
    let runs = Runs::default();
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(0));
    // One connection at a time: the retry's connection is accepted only once the
    // original's connection task has ended (and dropped whatever it was running).
    let srv = Running::start(
        builder()
            .unstable_network(true)
            .max_connections(1)
            .register(counted("count", &runs))
            .register(gated(&runs, started_tx, gate.clone())),
    )
    .await;

    let mut a = Conn::open(srv.addr, Some(SESSION)).await;
    a.request(7, "gated", (60u64,)).await;
    assert_eq!(within("gated to start", started.recv()).await, Some(60));
    // Gone for good (a reset: end of input alone means "no more requests").
    common::reset(&a.stream);
    drop(a);
    let start = Instant::now();
    let mut b = loop {
        if let Some(b) = Conn::try_open(srv.addr, Some(SESSION)).await {
            break b;
        }
        assert!(start.elapsed() < WAIT, "the first connection never closed");
        tokio::task::yield_now().await;
    };
    b.request(7, "gated", (60u64,)).await;
    b.request(8, "count", (61u64,)).await;
    b.response().await.1.assert_ok(8, (61u64, 1u32));
    assert_eq!(runs.of(60), 1, "the retry must not run the function again");
    gate.add_permits(100);
    b.response().await.1.assert_ok(7, (60u64, 1u32));
    assert_eq!(runs.of(60), 1);
}

/// A retry after the call finished gets the stored answer, errors included, on the same
/// connection or another one, and the function does not run again.
#[tokio::test]
async fn retry_after_completion_gets_the_cached_answer_errors_included() {
    let runs = Runs::default();
    let srv = Running::start(
        builder()
            .unstable_network(true)
            .register(counted("count", &runs))
            .register(failing(&runs)),
    )
    .await;

    let mut a = Conn::open(srv.addr, Some(SESSION)).await;
    a.request(3, "count", (10u64,)).await;
    let (ok, r) = a.response().await;
    r.assert_ok(3, (10u64, 1u32));
    a.request(4, "fail", (11u64,)).await;
    let (err, r) = a.response().await;
    let e = r.assert_error(4, ErrorCode::HandlerError);
    assert_eq!(e.message, "failure 1 of key 11");
    // An unknown method is an answer too.
    a.request(5, "nope", (12u64,)).await;
    let (missing, r) = a.response().await;
    r.assert_error(5, ErrorCode::MethodNotFound);

    // The same connection, then a new one after the first closed.
    a.request(3, "count", (10u64,)).await;
    a.request(4, "fail", (11u64,)).await;
    assert_eq!(a.response().await.0, ok);
    assert_eq!(a.response().await.0, err);
    drop(a);
    let mut b = Conn::open(srv.addr, Some(SESSION)).await;
    b.request(4, "fail", (11u64,)).await;
    b.request(3, "count", (10u64,)).await;
    b.request(5, "nope", (12u64,)).await;
    assert_eq!(b.response().await.0, err);
    assert_eq!(b.response().await.0, ok);
    assert_eq!(b.response().await.0, missing);
    assert_eq!((runs.of(10), runs.of(11)), (1, 1));
}

/// The key is the session and the msgid: the same msgid from another session runs, and
/// so does another msgid from the same session.
#[tokio::test]
async fn same_msgid_in_another_session_is_another_key() {
    let runs = Runs::default();
    let srv = Running::start(builder().unstable_network(true).register(counted("count", &runs))).await;

    let mut s1 = Conn::open(srv.addr, Some(SESSION)).await;
    let mut s2 = Conn::open(srv.addr, Some(OTHER_SESSION)).await;
    s1.request(7, "count", (20u64,)).await;
    s1.response().await.1.assert_ok(7, (20u64, 1u32));
    s2.request(7, "count", (20u64,)).await;
    s2.response().await.1.assert_ok(7, (20u64, 2u32));
    s1.request(8, "count", (20u64,)).await;
    s1.response().await.1.assert_ok(8, (20u64, 3u32));
    // Each session still gets its own answer back.
    s2.request(7, "count", (20u64,)).await;
    s2.response().await.1.assert_ok(7, (20u64, 2u32));
    s1.request(7, "count", (20u64,)).await;
    s1.response().await.1.assert_ok(7, (20u64, 1u32));
    assert_eq!(runs.of(20), 3);
}

/// Without a session there is no dedup, even on a server in unstable-network mode: a
/// plain MessagePack-RPC client (no hello) and a hello without a session run the same
/// msgid twice, as they always did.
#[tokio::test]
async fn no_session_no_dedup() {
    let runs = Runs::default();
    let srv = Running::start(builder().unstable_network(true).register(counted("count", &runs))).await;

    let mut plain = RawConn::connect(srv.addr).await;
    let mut req = Vec::new();
    encode_request(Codec::Msgpack, &mut req, 7, "count", &(30u64,), None).unwrap();
    plain.send(&req).await;
    plain.response().await.assert_ok(7, (30u64, 1u32));
    plain.send(&req).await;
    plain.response().await.assert_ok(7, (30u64, 2u32));
    plain.check_add(8, 2, 3).await;

    let mut no_session = Conn::open(srv.addr, None).await;
    no_session.request(7, "count", (31u64,)).await;
    no_session.response().await.1.assert_ok(7, (31u64, 1u32));
    no_session.request(7, "count", (31u64,)).await;
    no_session.response().await.1.assert_ok(7, (31u64, 2u32));

    check_client(srv.addr).await;
    assert_eq!(srv.server.dedup_entries(), 0);
}

/// Call `method(key)` twice with one msgid; the execution numbers of both answers.
async fn twice(conn: &mut Conn, msgid: u64, method: &str, key: u64) -> (u32, u32) {
    conn.request(msgid, method, (key,)).await;
    let (_, first) = conn.response().await;
    conn.request(msgid, method, (key,)).await;
    let (_, second) = conn.response().await;
    (first.ok::<(u64, u32)>().1, second.ok::<(u64, u32)>().1)
}

/// Dedup is opt-in: server-wide, or per function with the server's flag off; a function
/// may opt out of a server-wide setting.
#[tokio::test]
async fn opt_in_per_server_and_per_function() {
    let runs = Runs::default();
    // The server's flag off (the default).
    let off = Running::start(
        builder()
            .register(counted("opted_in", &runs).unstable_network(true))
            .register(counted("default", &runs)),
    )
    .await;
    let mut c = Conn::open(off.addr, Some(SESSION)).await;
    assert_eq!(
        twice(&mut c, 1, "opted_in", 40).await,
        (1, 1),
        "opted in: runs once"
    );
    assert_eq!(
        twice(&mut c, 2, "default", 41).await,
        (1, 2),
        "default: runs each time"
    );
    assert_eq!(off.server.dedup_entries(), 1);

    // The server's flag on.
    let on = Running::start(
        builder()
            .unstable_network(true)
            .register(counted("opted_out", &runs).unstable_network(false))
            .register(counted("default", &runs)),
    )
    .await;
    let mut c = Conn::open(on.addr, Some(SESSION)).await;
    assert_eq!(
        twice(&mut c, 1, "opted_out", 42).await,
        (1, 2),
        "opted out: runs each time"
    );
    assert_eq!(
        twice(&mut c, 2, "default", 43).await,
        (1, 1),
        "default: runs once"
    );
    assert_eq!(on.server.dedup_entries(), 1);
}

/// Answers are forgotten after the TTL (the server sweeps them out); a retry after that
/// runs the call again. Under paused time: the server feeds the cache from tokio's
/// clock, so the TTL passes without a real wait.
#[tokio::test(start_paused = true)]
async fn answers_expire_after_the_ttl() {
    let runs = Runs::default();
    let mut dedup = DedupConfig::default();
    dedup.ttl = Duration::from_millis(200);
    let srv = Running::start(
        builder()
            .unstable_network(true)
            .dedup(dedup)
            .register(counted("count", &runs)),
    )
    .await;

    let mut c = Conn::open(srv.addr, Some(SESSION)).await;
    c.request(1, "count", (50u64,)).await;
    c.response().await.1.assert_ok(1, (50u64, 1u32));
    // Wait (bounded) for the sweep: the clock only moves while the server is idle.
    let start = tokio::time::Instant::now();
    while srv.server.dedup_entries() > 0 {
        assert!(start.elapsed() < WAIT, "the answer was never swept out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.request(1, "count", (50u64,)).await;
    c.response().await.1.assert_ok(1, (50u64, 2u32));
}

/// Send `count(base + i)` as msgid `first + i` for `n` calls, in pipelined batches, and
/// check the answers; after each batch, `check` sees the server.
async fn flood(conn: &mut Conn, first: u64, n: u64, base: u64, method: &str, mut check: impl FnMut()) {
    const BATCH: u64 = 250;
    let mut i = 0;
    while i < n {
        let end = (i + BATCH).min(n);
        let mut reqs = Vec::new();
        for j in i..end {
            encode_request(Codec::Msgpack, &mut reqs, first + j, method, &(base + j,), None).unwrap();
        }
        within("write", conn.stream.write_all(&reqs)).await.unwrap();
        for j in i..end {
            let (_, r) = conn.response().await;
            assert_eq!(r.msgid, first + j);
            assert!(r.outcome.is_ok(), "{r:?}");
        }
        check();
        i = end;
    }
}

/// A client sending a flood of distinct keys cannot grow the cache past its bounds, in
/// entries or in bytes. The price: a retry of a key evicted meanwhile runs again.
#[tokio::test]
async fn a_flood_of_keys_stays_within_the_bounds() {
    let runs = Runs::default();

    // Bounded in entries.
    let mut dedup = DedupConfig::default();
    dedup.max_entries = 100;
    let srv = Running::start(
        builder()
            .unstable_network(true)
            .dedup(dedup)
            .register(counted("count", &runs)),
    )
    .await;
    let mut c = Conn::open(srv.addr, Some(SESSION)).await;
    let mut most = 0;
    flood(&mut c, 1, 5_000, 100_000, "count", || {
        let n = srv.server.dedup_entries();
        assert!(n <= 100, "{n} entries");
        most = most.max(n);
    })
    .await;
    assert_eq!(most, 100, "the cache fills up to its bound");
    // The newest answer is still there; the oldest was evicted, so its retry runs again.
    c.request(5_000, "count", (104_999u64,)).await;
    c.response().await.1.assert_ok(5_000, (104_999u64, 1u32));
    c.request(1, "count", (100_000u64,)).await;
    c.response().await.1.assert_ok(1, (100_000u64, 2u32));

    // Bounded in bytes: answers of ~1 KiB, 16 KiB for all of them.
    let mut dedup = DedupConfig::default();
    dedup.max_bytes = 16 * 1024;
    let big = Method::async_fn("big", |(key,): (u64,)| async move { (key, "x".repeat(1000)) });
    let srv = Running::start(builder().unstable_network(true).dedup(dedup).register(big)).await;
    let mut c = Conn::open(srv.addr, Some(SESSION)).await;
    c.request(1, "big", (0u64,)).await;
    let answer = c.response().await.0.len();
    let bound = 16 * 1024 / answer;
    let mut most = 0;
    flood(&mut c, 2, 1_000, 1, "big", || {
        let n = srv.server.dedup_entries();
        assert!(n <= bound, "{n} entries of {answer} bytes");
        most = most.max(n);
    })
    .await;
    assert_eq!(most, bound, "the cache fills up to its bound");
}

// ---------------------------------------------------------------------------------------
// Fault injection.

const DEFAULT_SEED: u64 = 0x00de_d0b5_eed5;

fn seed() -> u64 {
    match std::env::var("DEDUP_SEED") {
        Ok(s) => s.parse().expect("DEDUP_SEED is a u64"),
        Err(_) => DEFAULT_SEED,
    }
}

/// The answer `work*(key)` must give.
fn answer(key: u64) -> u64 {
    key.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5eed
}

/// Executions per key, for keys `0..n`.
struct Table(Vec<AtomicU32>);

impl Table {
    fn new(n: usize) -> Arc<Table> {
        Arc::new(Table((0..n).map(|_| AtomicU32::new(0)).collect()))
    }

    fn record(&self, key: u64) {
        self.0[key as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Keys that did not run exactly once, with their counts (at most 10).
    fn wrong(&self) -> (usize, Vec<(usize, u32)>) {
        let wrong: Vec<_> = (self.0.iter().map(|n| n.load(Ordering::Relaxed)).enumerate())
            .filter(|&(_, n)| n != 1)
            .collect();
        (wrong.len(), wrong.into_iter().take(10).collect())
    }
}

/// The three kinds of function behind the proxy, each counting its executions per key
/// at dispatch: `work_ready` answers on the spot, `work_async` takes a few milliseconds
/// (so that retries find it still running), `work_sync` runs on the blocking pool.
fn work_server(table: &Arc<Table>) -> Builder {
    let (t1, t2, t3) = (table.clone(), table.clone(), table.clone());
    builder()
        .unstable_network(true)
        .register(Method::async_fn("work_ready", move |(key,): (u64,)| {
            t1.record(key);
            async move { answer(key) }
        }))
        .register(Method::async_fn("work_async", move |(key,): (u64,)| {
            t2.record(key);
            async move {
                tokio::time::sleep(Duration::from_millis(key % 4)).await;
                answer(key)
            }
        }))
        .register(Method::sync_raw("work_sync", move |args| {
            let (key,): (u64,) = easyrpc_server::FromArgs::from_args(args)?;
            t3.record(key);
            Ok(Box::new(move || Reply::ok(answer(key))) as SyncJob)
        }))
}

fn method_for(key: u64) -> &'static str {
    ["work_ready", "work_async", "work_sync"][(key % 3) as usize]
}

fn client_config() -> easyrpc_client::Config {
    let mut config = easyrpc_client::Config::default();
    config.unstable_network = true;
    config.timeout = Duration::from_secs(20);
    config.connect_timeout = Duration::from_secs(5);
    config.reconnect_backoff = Duration::from_millis(1);
    config.reconnect_backoff_max = Duration::from_millis(8);
    config
}

/// Check what the proxy did: every kind of fault happened.
fn check_faults(stats: &Stats, seed: u64) {
    println!("seed {seed}: {stats}");
    for (what, n) in [
        ("mid-request", &stats.cut_mid_request),
        ("mid-reply", &stats.cut_mid_reply),
        ("forwarded but unanswered", &stats.unanswered_calls),
    ] {
        assert!(Stats::get(n) > 0, "seed {seed}: no {what} cut ({stats})");
    }
}

/// Check the outcome: every call got its answer, every key ran exactly once.
fn check_runs(failures: &[(u64, String)], table: &Table, seed: u64) {
    assert!(
        failures.is_empty(),
        "seed {seed}: {} calls failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    let (n, some) = table.wrong();
    assert_eq!(
        n, 0,
        "seed {seed}: {n} keys did not run exactly once, e.g. (key, runs) {some:?}"
    );
}

/// 10 000 calls from the async client, 64 at a time, through a proxy that keeps cutting
/// the connection: each gets its own answer, each key runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_client_through_faults_runs_each_call_once() {
    const CALLS: u64 = 10_000;
    let seed = seed();
    println!("seed {seed} (rerun with DEDUP_SEED={seed})");
    let table = Table::new(CALLS as usize);
    let srv = Running::start(work_server(&table)).await;
    let proxy = Proxy::start(srv.addr, seed, 1_500).await;

    let run = async {
        // Connecting is not a call: the proxy may cut the hello, so try again.
        let mut tries = 0;
        let client = loop {
            match easyrpc_client::Client::connect_with(proxy.addr, client_config()).await {
                Ok(c) => break c,
                Err(_) if tries < 50 => tries += 1,
                Err(e) => panic!("seed {seed}: cannot connect through the proxy: {e}"),
            }
        };
        let failures: Vec<(u64, String)> = futures_util::stream::iter(0..CALLS)
            .map(|key| {
                let client = client.clone();
                async move {
                    match client.call::<_, u64>(method_for(key), (key,)).await {
                        Ok(v) if v == answer(key) => None,
                        Ok(v) => Some((key, format!("wrong answer {v}"))),
                        Err(e) => Some((key, e.to_string())),
                    }
                }
            })
            .buffer_unordered(64)
            .filter_map(|f| async move { f })
            .collect()
            .await;
        failures
    };
    let started = Instant::now();
    let failures = match tokio::time::timeout(Duration::from_secs(50), run).await {
        Ok(f) => f,
        Err(_) => panic!(
            "seed {seed}: the calls did not finish within 50 s ({})",
            proxy.stats
        ),
    };
    println!("{CALLS} calls in {:?}", started.elapsed());
    // No call can be dispatched after this: the counts are final.
    srv.stop().await;
    check_faults(&proxy.stats, seed);
    check_runs(&failures, &table, seed);
}

/// The same with blocking clients (one call at a time each), two threads of 1 000 calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_client_through_faults_runs_each_call_once() {
    const THREADS: u64 = 2;
    const CALLS: u64 = 1_000;
    let seed = seed();
    println!("seed {seed} (rerun with DEDUP_SEED={seed})");
    let table = Table::new((THREADS * CALLS) as usize);
    let srv = Running::start(work_server(&table)).await;
    // Small cut points: one call at a time carries few bytes.
    let proxy = Proxy::start(srv.addr, seed, 300).await;
    let addr = proxy.addr;

    let started = Instant::now();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            tokio::task::spawn_blocking(move || {
                let mut tries = 0;
                let client = loop {
                    match easyrpc_client::BlockingClient::connect_with(addr, client_config()) {
                        Ok(c) => break c,
                        Err(_) if tries < 50 => tries += 1,
                        Err(e) => return vec![(u64::MAX, format!("cannot connect through the proxy: {e}"))],
                    }
                };
                let mut failures = Vec::new();
                for key in t * CALLS..(t + 1) * CALLS {
                    match client.call::<_, u64>(method_for(key), (key,)) {
                        Ok(v) if v == answer(key) => {}
                        Ok(v) => failures.push((key, format!("wrong answer {v}"))),
                        Err(e) => failures.push((key, e.to_string())),
                    }
                }
                failures
            })
        })
        .collect();
    let mut failures = Vec::new();
    for thread in threads {
        // Each call is bounded by the client's timeout; the whole run by this.
        match tokio::time::timeout(Duration::from_secs(50), thread).await {
            Ok(f) => failures.extend(f.unwrap()),
            Err(_) => panic!(
                "seed {seed}: the calls did not finish within 50 s ({})",
                proxy.stats
            ),
        }
    }
    println!("{} calls in {:?}", THREADS * CALLS, started.elapsed());
    srv.stop().await;
    check_faults(&proxy.stats, seed);
    check_runs(&failures, &table, seed);
}
