//! Flow control and unstable networks: `max_flow`, request deadlines, cancellation,
//! heartbeats, per-connection bounds, and the clients' reconnect and retry.
//!
//! Every wait is bounded (`common::within`, or `WAIT` in a handler's gate), so a hang fails.
//! Handlers report through a [`Probe`] (how many are inside, the peak, how many entered
//! and left) and hold at its gate until the test lets them through.
//!
//! No test sleeps to synchronise. Tests that need to show that something does *not*
//! happen, or that measure time, run under paused tokio time: the clock moves only when the
//! runtime has nothing left to do (no task to run, no socket event; a loopback write is in
//! the peer's socket when `write` returns), so what has not happened when [`settle`]
//! returns would not happen without outside help, and durations are exact. The sleeps
//! left are the time under test (a peer that idles or trickles), in paused time. Tests of
//! sync handlers blocked at a gate and of the blocking client run in real time and wait
//! on events only (a blocking task in flight stops the paused clock).

#[allow(dead_code)] // Each test crate uses a part of the shared helpers.
mod common;

use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use common::{builder, check_client, within, TestServer, WAIT};
use easyrpc_client::{BlockingClient, CallOptions, Client, Config as ClientConfig, Error};
use easyrpc_proto::{encode_request, encode_response_ok, Codec, ErrorCode, Framer, Hello, Message, Params};
use easyrpc_server::{Config, Method};
use serde_bytes::ByteBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;

/// The server's heartbeat timeout in the heartbeat tests.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// The `max_flow` limit in the `max_flow` tests.
const LIMIT: usize = 10;

// ---------------------------------------------------------------------------------------
// Instruments

/// What the executions of one handler have done so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    /// Executions inside the function now.
    running: usize,
    /// The most that were ever inside at once.
    peak: usize,
    /// Executions that started.
    entered: usize,
    /// Executions that ended: returned, failed, panicked or were dropped.
    left: usize,
}

/// Counts a handler's executions and holds them at a gate until the test lets them
/// through, one permit each. An async handler waits on a semaphore, a sync one on a
/// condvar; a probe serves one kind of handler.
struct Probe {
    counts: watch::Sender<Counts>,
    permits: Semaphore,
    tickets: Mutex<usize>,
    ticket: Condvar,
}

/// One execution inside the function; its drop (on return, panic or cancellation) is the
/// execution leaving.
struct Inside {
    probe: Arc<Probe>,
    /// The execution's number, from 0, in order of entry.
    n: usize,
}

impl Drop for Inside {
    fn drop(&mut self) {
        self.probe.counts.send_modify(|c| {
            c.running -= 1;
            c.left += 1;
        });
    }
}

impl Probe {
    fn new() -> Arc<Probe> {
        Arc::new(Probe {
            counts: watch::Sender::new(Counts::default()),
            permits: Semaphore::new(0),
            tickets: Mutex::new(0),
            ticket: Condvar::new(),
        })
    }

    fn enter(self: &Arc<Self>) -> Inside {
        let mut n = 0;
        self.counts.send_modify(|c| {
            n = c.entered;
            c.entered += 1;
            c.running += 1;
            c.peak = c.peak.max(c.running);
        });
        Inside {
            probe: self.clone(),
            n,
        }
    }

    /// The gate, for an async handler.
    async fn pass(&self) {
        let permit = within("the gate (async handler)", self.permits.acquire()).await;
        permit.expect("the gate is never closed").forget();
    }

    /// The gate, for a sync handler.
    fn pass_blocking(&self) {
        let tickets = self.tickets.lock().unwrap();
        let (mut tickets, wait) = self
            .ticket
            .wait_timeout_while(tickets, WAIT, |t| *t == 0)
            .unwrap();
        assert!(
            !wait.timed_out(),
            "timed out after {WAIT:?} at the gate (sync handler)"
        );
        *tickets -= 1;
    }

    /// Let `n` more executions through the gate.
    fn release(&self, n: usize) {
        self.permits.add_permits(n);
        *self.tickets.lock().unwrap() += n;
        self.ticket.notify_all();
    }

    fn counts(&self) -> Counts {
        *self.counts.borrow()
    }

    /// Wait (bounded) until the counts satisfy `pred`.
    async fn until(&self, what: &str, mut pred: impl FnMut(&Counts) -> bool) -> Counts {
        let mut rx = self.counts.subscribe();
        let counts = *within(what, rx.wait_for(|c| pred(c))).await.unwrap();
        counts
    }
}

/// `name(i) -> i`, async, held at `probe`'s gate.
fn gated_async(name: &'static str, probe: &Arc<Probe>) -> Method {
    let probe = probe.clone();
    Method::async_fn(name, move |(i,): (u64,)| {
        let probe = probe.clone();
        async move {
            let _inside = probe.enter();
            probe.pass().await;
            i
        }
    })
}

/// `name(i) -> i`, sync, held at `probe`'s gate.
fn gated_sync(name: &'static str, probe: &Arc<Probe>) -> Method {
    let probe = probe.clone();
    Method::sync_fn(name, move |(i,): (u64,)| {
        let _inside = probe.enter();
        probe.pass_blocking();
        i
    })
}

/// Half of all executions go wrong: number `n % 4 == 0` panics, `n % 4 == 1` fails.
fn flaky(n: usize, i: u64) -> Result<u64, String> {
    match n % 4 {
        0 => panic!("flaky handler panics on purpose (execution {n})"),
        1 => Err(format!("flaky handler fails on purpose (execution {n})")),
        _ => Ok(i),
    }
}

/// [`gated_async`], going wrong as [`flaky`] says.
fn flaky_async(name: &'static str, probe: &Arc<Probe>) -> Method {
    let probe = probe.clone();
    Method::try_async_fn(name, move |(i,): (u64,)| {
        let probe = probe.clone();
        async move {
            let inside = probe.enter();
            probe.pass().await;
            flaky(inside.n, i)
        }
    })
}

/// [`gated_sync`], going wrong as [`flaky`] says.
fn flaky_sync(name: &'static str, probe: &Arc<Probe>) -> Method {
    let probe = probe.clone();
    Method::try_sync_fn(name, move |(i,): (u64,)| {
        let inside = probe.enter();
        probe.pass_blocking();
        flaky(inside.n, i)
    })
}

/// `nap(ms) -> ms`, async: sleeps `ms` (paused time in the tests that use it).
fn nap() -> Method {
    Method::async_fn("nap", |(ms,): (u64,)| async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        ms
    })
}

/// A msgpack request's bytes.
fn request(msgid: u64, method: &str, params: impl Params, timeout: Option<Duration>) -> Vec<u8> {
    let mut out = Vec::new();
    encode_request(Codec::Msgpack, &mut out, msgid, method, &params, timeout).unwrap();
    out
}

/// Under paused time only: return once the runtime has run out of work and the clock has
/// moved on. Whatever the server would do with what it has been sent, it has done.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(10)).await;
}

async fn connect(addr: SocketAddr, config: ClientConfig) -> Client {
    within("the client to connect", Client::connect_with(addr, config))
        .await
        .expect("connect")
}

fn extensions() -> ClientConfig {
    let mut config = ClientConfig::default();
    config.extensions = true;
    config
}

/// A plain client (no hello) that reads our server's error codes as ours (issue 17: a
/// server that did not answer a hello has codes of its own otherwise).
fn plain_ours() -> ClientConfig {
    let mut config = ClientConfig::default();
    config.our_server = true;
    config
}

/// Run blocking client code off the runtime, bounded.
async fn blocking<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    within(what, tokio::task::spawn_blocking(f)).await.unwrap()
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe
    )
}

/// What a [`Proxy`] has seen.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct ProxyStats {
    /// Connections accepted from clients (and opened to the server).
    accepted: usize,
    /// Connections whose server side has ended (passed on to the client as EOF).
    server_closed: usize,
}

/// A TCP proxy in front of a server: counts connections, and cuts them on demand.
struct Proxy {
    addr: SocketAddr,
    stats: watch::Sender<ProxyStats>,
    cut: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = watch::Sender::new(ProxyStats::default());
        let cut = watch::Sender::new(0u64);
        let task = tokio::spawn({
            let (stats, cut) = (stats.clone(), cut.clone());
            async move {
                loop {
                    let (client, _) = listener.accept().await.unwrap();
                    let server = TcpStream::connect(upstream).await.unwrap();
                    // A cut reaches the server as a reset, as a network failure would
                    // (a FIN would mean only "no more requests").
                    common::reset(&server);
                    client.set_nodelay(true).unwrap();
                    server.set_nodelay(true).unwrap();
                    stats.send_modify(|s| s.accepted += 1);
                    tokio::spawn(pipe(client, server, cut.subscribe(), stats.clone()));
                }
            }
        });
        Proxy {
            addr,
            stats,
            cut,
            task,
        }
    }

    fn stats(&self) -> ProxyStats {
        *self.stats.borrow()
    }

    async fn until(&self, what: &str, mut pred: impl FnMut(&ProxyStats) -> bool) -> ProxyStats {
        let mut rx = self.stats.subscribe();
        let stats = *within(what, rx.wait_for(|s| pred(s))).await.unwrap();
        stats
    }

    /// Close every connection open now, on both sides, as a network failure would.
    fn cut(&self) {
        self.cut.send_modify(|g| *g += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(
    client: TcpStream,
    server: TcpStream,
    mut cut: watch::Receiver<u64>,
    stats: watch::Sender<ProxyStats>,
) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async {
        let _ = tokio::io::copy(&mut cr, &mut sw).await;
        let _ = sw.shutdown().await;
    };
    let down = async {
        let _ = tokio::io::copy(&mut sr, &mut cw).await;
        let _ = cw.shutdown().await;
        stats.send_modify(|s| s.server_closed += 1);
    };
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        _ = cut.changed() => {}
    }
    // No FIN from dropping the write half ahead of the reset.
    sw.forget();
}

// ---------------------------------------------------------------------------------------
// max_flow

/// Fire `calls` concurrent calls of `method`, whose handler holds at `probe`'s gate. Check
/// that exactly [`LIMIT`] get in and that all the others are answered `Overloaded` while
/// those are still held; then let them through and return their outcomes, by argument.
async fn wave(
    client: &Client,
    method: &'static str,
    probe: &Probe,
    calls: u64,
) -> Vec<(u64, Result<u64, Error>)> {
    let before = probe.counts();
    assert_eq!(before.running, 0);
    let (tx, mut rx) = mpsc::unbounded_channel();
    for i in 0..calls {
        let (client, tx) = (client.clone(), tx.clone());
        tokio::spawn(async move {
            let _ = tx.send((i, client.call::<_, u64>(method, (i,)).await));
        });
    }
    let refused = usize::try_from(calls).unwrap() - LIMIT;
    for _ in 0..refused {
        let (i, r) = within("the calls beyond the limit to be refused", rx.recv())
            .await
            .unwrap();
        match r {
            Err(e) if e.code() == Some(ErrorCode::Overloaded) => {}
            other => panic!("{method}({i}) beyond the limit: expected Overloaded at once, got {other:?}"),
        }
    }
    let c = probe
        .until("the limit to be reached", |c| c.running == LIMIT)
        .await;
    assert_eq!(c.entered - before.entered, LIMIT, "{c:?}");
    assert_eq!(c.peak, LIMIT, "{c:?}");
    probe.release(LIMIT);
    let mut done = Vec::new();
    for _ in 0..LIMIT {
        done.push(within("the calls let in", rx.recv()).await.unwrap());
    }
    let c = probe.until("every execution to end", |c| c.running == 0).await;
    assert_eq!(c.entered - before.entered, LIMIT, "{c:?}");
    assert_eq!(c.peak, LIMIT, "{c:?}");
    done.sort_by_key(|(i, _)| *i);
    done
}

async fn max_flow_waves(method: Method, probe: &Probe) {
    let server = TestServer::start(builder().register(method.max_flow(LIMIT))).await;
    let client = connect(server.addr, plain_ours()).await;
    for _ in 0..2 {
        for (i, r) in wave(&client, "gated", probe, 200).await {
            assert_eq!(r.unwrap(), i);
        }
    }
    check_client(server.addr).await;
}

#[tokio::test]
async fn max_flow_sync_lets_exactly_the_limit_in() {
    let probe = Probe::new();
    max_flow_waves(gated_sync("gated", &probe), &probe).await;
}

#[tokio::test]
async fn max_flow_async_lets_exactly_the_limit_in() {
    let probe = Probe::new();
    max_flow_waves(gated_async("gated", &probe), &probe).await;
}

#[tokio::test]
async fn max_flow_slots_survive_panics_and_errors() {
    for sync in [false, true] {
        let probe = Probe::new();
        let method = if sync {
            flaky_sync("gated", &probe)
        } else {
            flaky_async("gated", &probe)
        };
        let server = TestServer::start(builder().register(method.max_flow(LIMIT))).await;
        let client = connect(server.addr, plain_ours()).await;
        let (mut ok, mut panicked, mut failed) = (0, 0, 0);
        for _ in 0..2 {
            for (i, r) in wave(&client, "gated", &probe, 200).await {
                match r {
                    Ok(v) => {
                        assert_eq!(v, i);
                        ok += 1;
                    }
                    Err(e) if e.code() == Some(ErrorCode::HandlerPanicked) => panicked += 1,
                    Err(e) if e.code() == Some(ErrorCode::HandlerError) => failed += 1,
                    Err(e) => panic!("unexpected error {e:?}"),
                }
            }
        }
        // Executions 0..20 (by order of entry): 5 panicked, 5 failed.
        assert_eq!((ok, panicked, failed), (10, 5, 5), "sync: {sync}");
        // No slot leaked: LIMIT more concurrent calls all get in.
        assert_eq!(wave(&client, "gated", &probe, LIMIT as u64).await.len(), LIMIT);
        check_client(server.addr).await;
    }
}

#[tokio::test(start_paused = true)]
async fn max_flow_wait_waits_for_a_slot_then_refuses() {
    let wait = Duration::from_millis(100);
    let server = TestServer::start(builder().register(nap().max_flow(1).max_flow_wait(wait))).await;
    let client = connect(server.addr, plain_ours()).await;

    // The slot frees within the wait: the second call gets in when it does.
    let t0 = Instant::now();
    let first = tokio::spawn({
        let client = client.clone();
        async move { client.call::<_, u64>("nap", (50u64,)).await }
    });
    settle().await; // The first call holds the slot.
    let v: u64 = within("the second call", client.call("nap", (0u64,)))
        .await
        .unwrap();
    assert_eq!(v, 0);
    assert_eq!(
        t0.elapsed(),
        Duration::from_millis(50),
        "answered when the slot freed"
    );
    assert_eq!(within("the first call", first).await.unwrap().unwrap(), 50);

    // The slot stays taken past the wait: the second call is refused at the end of it.
    let first = tokio::spawn({
        let client = client.clone();
        async move { client.call::<_, u64>("nap", (300u64,)).await }
    });
    settle().await;
    let t1 = Instant::now();
    let e = within("the second call", client.call::<_, u64>("nap", (0u64,)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Overloaded), "{e:?}");
    assert_eq!(t1.elapsed(), wait, "refused at the end of the wait");
    assert_eq!(within("the first call", first).await.unwrap().unwrap(), 300);
}

// ---------------------------------------------------------------------------------------
// Deadlines

/// A stand-in server that answers each request with the timeout it carried, in
/// milliseconds (`nil` for none), after answering the hello if there is one.
async fn timeout_echo(listener: TcpListener) {
    loop {
        let (mut stream, _) = listener.accept().await.unwrap();
        tokio::spawn(async move {
            let mut rbuf = BytesMut::new();
            let mut framer = Framer::new(Codec::Msgpack, 1 << 20);
            let mut first = true;
            loop {
                if first && Hello::is_hello(&rbuf) {
                    if let Some((hello, n)) = Hello::decode(&rbuf).unwrap() {
                        rbuf.advance(n);
                        let mut out = Vec::new();
                        hello.encode(&mut out);
                        stream.write_all(&out).await.unwrap();
                        first = false;
                    }
                }
                if !(first && Hello::is_hello(&rbuf)) {
                    while let Some(n) = framer.decode(&rbuf).unwrap() {
                        first = false;
                        let frame = rbuf.split_to(n);
                        if let Ok(Message::Request { msgid, timeout, .. }) =
                            Message::parse(Codec::Msgpack, &frame)
                        {
                            let ms = timeout.map(|t| u64::try_from(t.as_millis()).unwrap());
                            let mut out = Vec::new();
                            encode_response_ok(Codec::Msgpack, &mut out, msgid, &ms).unwrap();
                            stream.write_all(&out).await.unwrap();
                        }
                    }
                }
                if matches!(stream.read_buf(&mut rbuf).await, Ok(0) | Err(_)) {
                    return;
                }
            }
        });
    }
}

#[tokio::test]
async fn client_timeout_travels_with_the_call_with_extensions_only() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let echo = tokio::spawn(timeout_echo(listener));
    for extensions in [false, true] {
        let mut config = ClientConfig::default();
        config.extensions = extensions;
        config.timeout = Duration::from_millis(4321);
        let expected = extensions.then_some(4321u64);

        let client = connect(addr, config.clone()).await;
        let seen: Option<u64> = within("the call", client.call("peek", ())).await.unwrap();
        assert_eq!(seen, expected, "async client, extensions: {extensions}");
        let seen: Option<u64> = within(
            "the call",
            client.with_timeout(Duration::from_millis(777)).call("peek", ()),
        )
        .await
        .unwrap();
        assert_eq!(seen, extensions.then_some(777), "async client, with_timeout");

        let seen = blocking("the blocking client", move || {
            let client = BlockingClient::connect_with(addr, config).unwrap();
            let default: Option<u64> = client.call("peek", ()).unwrap();
            let own: Option<u64> = client
                .call_timeout("peek", (), Duration::from_millis(777))
                .unwrap();
            (default, own)
        })
        .await;
        assert_eq!(
            seen,
            (expected, extensions.then_some(777)),
            "blocking client, extensions: {extensions}"
        );
    }
    echo.abort();
}

#[tokio::test(start_paused = true)]
async fn deadline_drops_an_async_handler_and_answers_deadline_exceeded() {
    let probe = Probe::new();
    let server = TestServer::start(builder().register(gated_async("hang", &probe))).await;
    let mut conn = server.raw().await;
    conn.hello().await;

    let timeout = Duration::from_millis(250);
    let t0 = Instant::now();
    conn.send(&request(7, "hang", (1u64,), Some(timeout))).await;
    conn.response().await.assert_error(7, ErrorCode::DeadlineExceeded);
    assert_eq!(t0.elapsed(), timeout);
    // The handler's future was dropped before the answer was written.
    assert_eq!(
        probe.counts(),
        Counts {
            running: 0,
            peak: 1,
            entered: 1,
            left: 1
        }
    );

    // A call that ends within its deadline is answered as usual.
    conn.send(&request(8, "add_async", (2, 3), Some(timeout))).await;
    conn.response().await.assert_ok(8, 5i64);
    conn.send(&request(9, "hang", (9u64,), Some(timeout))).await;
    probe.until("the handler to start", |c| c.entered == 2).await;
    probe.release(1);
    conn.response().await.assert_ok(9, 9u64);
    conn.check_add(10, 1, 2).await;
}

#[tokio::test]
async fn deadline_discards_a_late_sync_result() {
    let probe = Probe::new();
    // One blocking thread: `add` below runs only once the late handler has returned.
    let builder = builder().blocking_threads(1).register(gated_sync("hang", &probe));
    let server = TestServer::start(builder).await;
    let mut conn = server.raw().await;
    conn.hello().await;

    let timeout = Duration::from_millis(100);
    let t0 = std::time::Instant::now();
    conn.send(&request(1, "hang", (1u64,), Some(timeout))).await;
    conn.response().await.assert_error(1, ErrorCode::DeadlineExceeded);
    assert!(t0.elapsed() >= timeout);
    // The handler cannot be stopped: it is still inside, and returns when let through.
    assert_eq!(probe.counts().running, 1);
    probe.release(1);
    // The next message is the answer to `add`: the late result was dropped, not sent.
    conn.check_add(2, 2, 3).await;
    assert_eq!(probe.counts().left, 1);
    conn.check_add(3, 4, 5).await;
}

// ---------------------------------------------------------------------------------------
// Cancellation

#[tokio::test(start_paused = true)]
async fn dropping_a_call_cancels_its_async_handler() {
    let probe = Probe::new();
    let server = TestServer::start(builder().register(gated_async("hang", &probe))).await;
    let client = connect(server.addr, extensions()).await;

    // The caller gives up long before the client's own timeout: the call future is dropped.
    let gave_up =
        tokio::time::timeout(Duration::from_millis(100), client.call::<_, u64>("hang", (1u64,))).await;
    assert!(gave_up.is_err(), "{gave_up:?}");
    assert_eq!(probe.counts().entered, 1, "the handler had started");
    let c = probe
        .until("the server to drop the handler", |c| c.left == 1)
        .await;
    assert_eq!(c.running, 0);

    // Same with select!, and the connection goes on serving.
    let call = client.call::<_, u64>("hang", (2u64,));
    tokio::select! {
        r = call => panic!("hang returned {r:?}"),
        _ = probe.until("the handler to start", |c| c.entered == 2) => {}
    }
    probe
        .until("the server to drop the handler", |c| c.left == 2)
        .await;
    let v: i64 = within("add", client.call("add", (20, 22))).await.unwrap();
    assert_eq!(v, 42);
    assert_eq!(probe.counts().running, 0);
}

#[tokio::test]
async fn closing_a_connection_cancels_its_async_handlers_only() {
    let probe = Probe::new();
    let server = TestServer::start(builder().register(gated_async("hang", &probe))).await;
    let mut other = server.raw().await;
    other.send(&request(1, "hang", (100u64,), None)).await;
    probe
        .until("the other connection's call", |c| c.running == 1)
        .await;

    // With and without a hello: a connection that is reset is gone, and so are its calls.
    for hello in [true, false] {
        let before = probe.counts();
        let mut conn = server.raw().await;
        if hello {
            conn.hello().await;
        }
        let calls: Vec<u8> = (0..3).flat_map(|i| request(i, "hang", (i,), None)).collect();
        conn.send(&calls).await;
        probe.until("three more calls", |c| c.running == 4).await;
        conn.reset();
        let c = probe
            .until("the closed connection's handlers to be dropped", |c| {
                c.left == before.left + 3
            })
            .await;
        assert_eq!(c.running, 1, "hello: {hello}");
    }

    // The other connection's call was left alone.
    probe.release(1);
    other.response().await.assert_ok(1, 100u64);
    check_client(server.addr).await;
    server.stop().await;
}

/// Issue 17: a client that half-closes (`shutdown(SHUT_WR)`, as `nc -N` does) still reads.
/// End of input means "no more requests": every request received is answered (sync fns on
/// the blocking pool, async calls still pending, calls answered inline), then the server
/// closes. Before the fix, 72-96 of 100 sync calls were never answered.
#[tokio::test]
async fn issue17_half_close_answers_every_request() {
    let probe = Probe::new();
    let server = TestServer::start(builder().register(gated_async("hang", &probe))).await;

    // The reproduction: 100 calls of the sync `add`, then SHUT_WR, then read.
    for method in ["add", "add_async"] {
        let mut conn = server.raw().await;
        let calls: Vec<u8> = (0..100u64)
            .flat_map(|k| request(k, method, (k as i64, 2i64), None))
            .collect();
        conn.send(&calls).await;
        conn.shutdown_write().await;
        let mut seen = [false; 100];
        for _ in 0..100 {
            let frame = conn.read_frame().await.expect("every call is answered");
            let r = common::parse_response(&frame);
            let k = r.msgid;
            r.assert_ok(k, k as i64 + 2);
            assert!(
                !std::mem::replace(&mut seen[k as usize], true),
                "{method}: msgid {k} twice"
            );
        }
        conn.expect_closed().await;
    }

    // Async calls still pending at end of input are answered once they finish.
    let mut conn = server.raw().await;
    let calls: Vec<u8> = (0..3).flat_map(|i| request(i, "hang", (i,), None)).collect();
    conn.send(&calls).await;
    probe.until("three calls", |c| c.running == 3).await;
    conn.shutdown_write().await;
    probe.release(3);
    let mut got: Vec<u64> = Vec::new();
    for _ in 0..3 {
        let frame = conn.read_frame().await.expect("answered after end of input");
        let r = common::parse_response(&frame);
        got.push(r.ok());
    }
    got.sort_unstable();
    assert_eq!(got, [0, 1, 2]);
    conn.expect_closed().await;
    assert_eq!(probe.counts().left, 3);
    check_client(server.addr).await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Heartbeats

#[tokio::test(start_paused = true)]
async fn idle_connection_is_closed_at_the_heartbeat_timeout() {
    let server = TestServer::start(builder().heartbeat_timeout(HEARTBEAT)).await;

    let t0 = Instant::now();
    let mut conn = server.raw().await;
    conn.expect_closed().await;
    assert_eq!(t0.elapsed(), HEARTBEAT);

    // A message restarts the count.
    let t0 = Instant::now();
    let mut conn = server.raw().await;
    tokio::time::sleep(HEARTBEAT / 2).await;
    conn.send(&request(1, "add_async", (1, 2), None)).await;
    conn.response().await.assert_ok(1, 3i64);
    conn.expect_closed().await;
    assert_eq!(t0.elapsed(), HEARTBEAT / 2 + HEARTBEAT);
}

#[tokio::test(start_paused = true)]
async fn call_in_flight_keeps_the_connection_open() {
    let server = TestServer::start(builder().heartbeat_timeout(HEARTBEAT).register(nap())).await;
    let mut conn = server.raw().await;
    let t0 = Instant::now();
    conn.send(&request(1, "nap", (2900u64,), None)).await;
    conn.response().await.assert_ok(1, 2900u64);
    assert_eq!(t0.elapsed(), Duration::from_millis(2900));

    // The peer was waiting for its answer, not idle: it has a whole timeout from there.
    tokio::time::sleep(HEARTBEAT / 2).await;
    conn.send(&request(2, "add_async", (1, 2), None)).await;
    conn.response().await.assert_ok(2, 3i64);
    let t1 = Instant::now();
    conn.expect_closed().await;
    assert_eq!(t1.elapsed(), HEARTBEAT);
}

#[tokio::test(start_paused = true)]
async fn client_heartbeat_keeps_an_idle_connection_open() {
    let server = TestServer::start(builder().heartbeat_timeout(HEARTBEAT)).await;
    let proxy = Proxy::start(server.addr).await;
    let mut config = ClientConfig::default();
    config.heartbeat_interval = Some(HEARTBEAT / 3);
    // The ping goes only to a server that answered our hello.
    config.extensions = true;
    let client = connect(proxy.addr, config).await;
    let v: i64 = within("add", client.call("add", (1, 2))).await.unwrap();
    assert_eq!(v, 3);

    tokio::time::sleep(HEARTBEAT * 4).await; // The caller makes no call for 4 timeouts.
    let v: i64 = within("add", client.call("add", (3, 4))).await.unwrap();
    assert_eq!(v, 7);
    assert_eq!(
        proxy.stats(),
        ProxyStats {
            accepted: 1,
            server_closed: 0
        },
        "the same connection all along"
    );
}

/// Issue 17: the idle `rpc.ping` goes only to servers that answered our hello (a plain
/// server such as Neovim answers each one with an error event). A plain client is closed
/// when idle, and its next call connects again. (Before the fix the ping kept this
/// connection open, and `server_closed` stayed 0.)
#[tokio::test(start_paused = true)]
async fn issue17_no_ping_without_a_hello() {
    let server = TestServer::start(builder().heartbeat_timeout(HEARTBEAT)).await;
    let proxy = Proxy::start(server.addr).await;
    let mut config = ClientConfig::default();
    config.heartbeat_interval = Some(HEARTBEAT / 3);
    let client = connect(proxy.addr, config).await;
    let v: i64 = within("add", client.call("add", (1, 2))).await.unwrap();
    assert_eq!(v, 3);

    tokio::time::sleep(HEARTBEAT * 2).await; // No ping: the server closes the connection.
    assert_eq!(proxy.stats().server_closed, 1, "no ping reached the server");
    let v: i64 = within("add", client.call("add", (3, 4))).await.unwrap();
    assert_eq!(v, 7);
    assert_eq!(proxy.stats().accepted, 2);
}

#[tokio::test(start_paused = true)]
async fn async_client_reconnects_after_an_idle_close() {
    let server = TestServer::start(builder().heartbeat_timeout(HEARTBEAT)).await;
    let proxy = Proxy::start(server.addr).await;
    let mut config = ClientConfig::default();
    config.heartbeat_interval = None;
    let client = connect(proxy.addr, config).await;
    let v: i64 = within("add", client.call("add", (1, 2))).await.unwrap();
    assert_eq!(v, 3);

    tokio::time::sleep(HEARTBEAT * 2).await; // No ping: the server closes the connection.
    assert_eq!(proxy.stats().server_closed, 1);
    let v: i64 = within("add", client.call("add", (3, 4))).await.unwrap();
    assert_eq!(v, 7);
    assert_eq!(proxy.stats().accepted, 2);
}

#[tokio::test]
async fn blocking_client_reconnects_after_an_idle_close() {
    // Real time: the blocking client checks an idle connection only after 1 s unused.
    let server = TestServer::start(builder().heartbeat_timeout(Duration::from_millis(1200))).await;
    let proxy = Proxy::start(server.addr).await;
    let addr = proxy.addr;
    let client = blocking("connect", move || BlockingClient::connect(addr).unwrap()).await;
    let client = Arc::new(client);
    let c = client.clone();
    let v: i64 = blocking("add", move || c.call("add", (1, 2)).unwrap()).await;
    assert_eq!(v, 3);

    proxy
        .until("the server to close the idle connection", |s| {
            s.server_closed == 1
        })
        .await;
    let c = client.clone();
    let v: i64 = blocking("add", move || c.call("add", (3, 4)).unwrap()).await;
    assert_eq!(v, 7);
    assert_eq!(proxy.stats().accepted, 2);
}

#[tokio::test(start_paused = true)]
async fn request_trickling_in_is_closed_at_the_heartbeat_timeout() {
    let server = TestServer::start(builder().heartbeat_timeout(HEARTBEAT)).await;
    let stream = within("connect", TcpStream::connect(server.addr)).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let t0 = Instant::now();
    // One byte every third of the timeout: the whole request would take 3 timeouts.
    let req = request(1, "add", (1, 2), None);
    let trickle = tokio::spawn(async move {
        for b in req {
            if wr.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(HEARTBEAT / 3).await;
        }
    });
    let mut buf = [0u8; 64];
    match within("the close", rd.read(&mut buf)).await {
        Ok(0) => {}
        Err(e) if is_reset(&e) => {}
        other => panic!("expected the connection to close, got {other:?}"),
    }
    assert_eq!(t0.elapsed(), HEARTBEAT);
    trickle.abort();
}

#[tokio::test(start_paused = true)]
async fn peer_that_never_reads_is_closed_with_bounded_memory() {
    const REPLY: usize = 1 << 20;
    const REQUESTS: usize = 64;
    let runs = Arc::new(AtomicUsize::new(0));
    let mut config = Config::default();
    config.heartbeat_timeout = HEARTBEAT;
    config.write_buffer_high_water = REPLY;
    let big = Method::async_fn("big", {
        let runs = runs.clone();
        move |(): ()| {
            runs.fetch_add(1, Ordering::SeqCst);
            async { ByteBuf::from(vec![7u8; REPLY]) }
        }
    });
    let server = TestServer::start(builder().config(config).register(big)).await;

    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let mut stream = within("connect", socket.connect(server.addr)).await.unwrap();
    let requests: Vec<u8> = (0..REQUESTS as u64)
        .flat_map(|i| request(i, "big", (), None))
        .collect();
    within("write the requests", stream.write_all(&requests))
        .await
        .unwrap();

    // The peer reads nothing for two timeouts.
    tokio::time::sleep(HEARTBEAT * 2).await;
    let ran = runs.load(Ordering::SeqCst);
    assert!(
        ran < REQUESTS / 2,
        "{ran} of {REQUESTS} requests ran, each with a {REPLY}-byte reply"
    );

    // The connection was closed meanwhile: reading now finds what the server had written
    // before it closed, then the end, and nothing more runs.
    let (mut total, mut clean) = (0, false);
    let mut buf = vec![0u8; 64 * 1024];
    within("the end of the connection", async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => {
                    clean = true;
                    break;
                }
                Ok(n) => total += n,
                Err(e) if is_reset(&e) => break,
                Err(e) => panic!("read: {e}"),
            }
        }
    })
    .await;
    assert_eq!(runs.load(Ordering::SeqCst), ran);
    // What ran beyond the socket buffers was held by the server, and that stayed under
    // the high-water mark plus one reply. (A reset would lose bytes in flight: then only
    // the count above says anything.)
    let frame = REPLY + 9; // [1, msgid, nil, bin32]
    assert!(total <= ran * frame, "read {total} bytes after {ran} runs");
    if clean {
        let held = ran * frame - total;
        assert!(held < REPLY + frame, "the server held {held} bytes of replies");
    }
    check_client(server.addr).await;
}

// ---------------------------------------------------------------------------------------
// Bounded resources

#[tokio::test(start_paused = true)]
async fn max_connections_closes_the_extra_connection_at_once() {
    let server = TestServer::start(builder().max_connections(2)).await;
    let mut a = server.raw().await;
    a.check_add(1, 1, 1).await;
    let mut b = server.raw().await;
    b.check_add(1, 2, 2).await;

    let t0 = Instant::now();
    let mut c = server.raw().await;
    c.expect_closed().await;
    assert_eq!(t0.elapsed(), Duration::ZERO, "closed at once");

    a.check_add(2, 3, 3).await;
    b.check_add(2, 4, 4).await;

    // A slot frees when a connection ends.
    a.shutdown_write().await;
    a.expect_closed().await;
    let mut d = server.raw().await;
    d.check_add(1, 5, 5).await;
    b.check_add(3, 6, 6).await;
}

#[tokio::test(start_paused = true)]
async fn max_in_flight_per_connection_stops_reading() {
    let probe = Probe::new();
    let builder = builder()
        .max_in_flight_per_connection(4)
        .register(gated_async("hang", &probe));
    let server = TestServer::start(builder).await;
    let mut conn = server.raw().await;

    // Ten calls in one write.
    let calls: Vec<u8> = (0..10).flat_map(|i| request(i, "hang", (i,), None)).collect();
    conn.send(&calls).await;
    probe.until("four calls to start", |c| c.running >= 4).await;
    settle().await;
    assert_eq!(probe.counts().entered, 4, "only four calls may start");

    // One ends: one more starts.
    probe.release(1);
    let first = conn.response().await;
    probe.until("a fifth call to start", |c| c.entered == 5).await;
    settle().await;
    let c = probe.counts();
    assert_eq!((c.entered, c.running), (5, 4), "{c:?}");

    // The gate opens: every call is answered, once.
    probe.release(100);
    first.assert_ok(first.msgid, first.msgid);
    let mut seen = BTreeSet::from([first.msgid]);
    for _ in 1..10 {
        let r = conn.response().await;
        r.assert_ok(r.msgid, r.msgid);
        assert!(seen.insert(r.msgid), "msgid {} answered twice", r.msgid);
    }
    assert_eq!(seen, (0..10).collect());
    let c = probe.counts();
    assert_eq!((c.entered, c.peak, c.running), (10, 4, 0), "{c:?}");
    conn.check_add(10, 1, 2).await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Client retry

#[tokio::test]
async fn async_call_cut_mid_call_fails_unless_idempotent() {
    let probe = Probe::new();
    let server = TestServer::start(builder().register(gated_async("hang", &probe))).await;
    let proxy = Proxy::start(server.addr).await;
    let client = connect(proxy.addr, ClientConfig::default()).await;

    // Not idempotent: the call may have run, so it fails.
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.call::<_, u64>("hang", (1u64,)).await }
    });
    probe.until("the call to start", |c| c.entered == 1).await;
    proxy.cut();
    let r = within("the call", call).await.unwrap();
    assert!(matches!(r, Err(Error::ConnectionClosed)), "{r:?}");
    probe
        .until("the server to drop the handler", |c| c.left == 1)
        .await;

    // Idempotent: resent on a new connection, and answered.
    let call = tokio::spawn({
        let client = client.idempotent();
        async move { client.call::<_, u64>("hang", (2u64,)).await }
    });
    probe.until("the call to start", |c| c.entered == 2).await;
    proxy.cut();
    probe.until("the call to be resent", |c| c.entered == 3).await;
    probe.release(1);
    let r = within("the call", call).await.unwrap();
    assert_eq!(r.unwrap(), 2);
    assert_eq!(proxy.stats().accepted, 3);
    assert_eq!(probe.counts().running, 0);
}

#[tokio::test]
async fn blocking_call_cut_mid_call_fails_unless_idempotent() {
    let probe = Probe::new();
    let server = TestServer::start(builder().register(gated_async("hang", &probe))).await;
    let proxy = Proxy::start(server.addr).await;
    let addr = proxy.addr;
    let mut config = ClientConfig::default();
    config.timeout = Duration::from_secs(5);
    let client = Arc::new(
        blocking("connect", move || {
            BlockingClient::connect_with(addr, config).unwrap()
        })
        .await,
    );

    let c = client.clone();
    let call = tokio::task::spawn_blocking(move || c.call::<_, u64>("hang", (1u64,)));
    probe.until("the call to start", |c| c.entered == 1).await;
    proxy.cut();
    let r = within("the call", call).await.unwrap();
    assert!(matches!(r, Err(Error::ConnectionClosed)), "{r:?}");
    probe
        .until("the server to drop the handler", |c| c.left == 1)
        .await;

    let c = client.clone();
    let call = tokio::task::spawn_blocking(move || {
        c.call_with::<_, u64>("hang", (2u64,), CallOptions::default().idempotent())
    });
    probe.until("the call to start", |c| c.entered == 2).await;
    proxy.cut();
    probe.until("the call to be resent", |c| c.entered == 3).await;
    probe.release(1);
    let r = within("the call", call).await.unwrap();
    assert_eq!(r.unwrap(), 2);
    assert_eq!(proxy.stats().accepted, 3);
}
