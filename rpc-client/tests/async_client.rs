//! The async client's connection handling, against scripted peers (a plain TCP listener
//! that reads requests and answers as each test says) and against our real server.
//!
//! Every wait is bounded by `within`; no sleep is used as synchronisation.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use easyrpc_client::{Client, Codec, Config, Error};
use easyrpc_proto::{encode_notification, encode_response_ok, Framer, Hello, Message};
use serde_bytes::ByteBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BOUND: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within {BOUND:?}"))
}

/// A message as the scripted peer saw it.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Request {
        msgid: u64,
        method: String,
        params: rmpv::Value,
    },
    Notification {
        method: String,
        params: rmpv::Value,
    },
}

/// The server side of one scripted connection.
struct Peer {
    stream: TcpStream,
    rbuf: BytesMut,
    framer: Framer,
}

impl Peer {
    async fn accept(listener: &TcpListener) -> Peer {
        let (stream, _) = within("accept", listener.accept()).await.unwrap();
        Peer {
            stream,
            rbuf: BytesMut::new(),
            framer: Framer::new(Codec::Msgpack, 1 << 20),
        }
    }

    /// Answer the client's hello (extensions on).
    async fn hello(&mut self) {
        loop {
            if let Some((hello, n)) = Hello::decode(&self.rbuf).unwrap() {
                let _ = self.rbuf.split_to(n);
                let mut out = Vec::new();
                Hello::new(hello.codec).encode(&mut out);
                self.stream.write_all(&out).await.unwrap();
                return;
            }
            let n = within("hello", self.stream.read_buf(&mut self.rbuf))
                .await
                .unwrap();
            assert!(n > 0, "EOF before the hello");
        }
    }

    /// The next message, or `None` at EOF.
    async fn next(&mut self) -> Option<Seen> {
        loop {
            if let Some(n) = self.framer.decode(&self.rbuf).unwrap() {
                let frame = self.rbuf.split_to(n);
                let value = |raw: &[u8]| rmpv::decode::read_value(&mut &raw[..]).unwrap();
                let text = |raw: &[u8]| String::from_utf8(raw.to_vec()).unwrap();
                return Some(match Message::parse(Codec::Msgpack, &frame).unwrap() {
                    Message::Request {
                        msgid,
                        method,
                        params,
                        ..
                    } => Seen::Request {
                        msgid,
                        method: text(method),
                        params: value(params),
                    },
                    Message::Notification { method, params } => Seen::Notification {
                        method: text(method),
                        params: value(params),
                    },
                    Message::Response { .. } => panic!("a response from the client"),
                });
            }
            if within("read", self.stream.read_buf(&mut self.rbuf))
                .await
                .unwrap()
                == 0
            {
                return None;
            }
        }
    }

    async fn request(&mut self) -> (u64, String, rmpv::Value) {
        match self.next().await {
            Some(Seen::Request {
                msgid,
                method,
                params,
            }) => (msgid, method, params),
            other => panic!("expected a request, got {other:?}"),
        }
    }

    async fn reply(&mut self, msgid: u64, result: impl serde::Serialize + Send) {
        let mut out = Vec::new();
        encode_response_ok(Codec::Msgpack, &mut out, msgid, &result).unwrap();
        self.stream.write_all(&out).await.unwrap();
    }
}

async fn listen() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

fn config() -> Config {
    let mut c = Config::default();
    c.reconnect_backoff = Duration::from_millis(1);
    c
}

#[tokio::test]
async fn replies_out_of_order_reach_their_callers() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let mut peer = Peer::accept(&listener).await;
        let mut calls = Vec::new();
        for _ in 0..50 {
            calls.push(peer.request().await);
        }
        // Answer in reverse order, each with its own argument doubled.
        for (msgid, _, params) in calls.into_iter().rev() {
            let n = params[0].as_i64().unwrap();
            peer.reply(msgid, n * 2).await;
        }
        peer
    });
    let client = Client::connect_with(addr, config()).await.unwrap();
    let calls = (0..50i64).map(|i| {
        let c = client.clone();
        async move { (i, c.call::<_, i64>("double", (i,)).await) }
    });
    for (i, r) in within("calls", futures_join_all(calls)).await {
        assert_eq!(r.unwrap(), i * 2, "call {i}");
    }
    within("server", server).await.unwrap();
}

/// `join_all` without a futures dependency: spawn each on the test's runtime.
async fn futures_join_all<F>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn unknown_msgids_and_server_messages_are_ignored() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let mut peer = Peer::accept(&listener).await;
        let (msgid, method, _) = peer.request().await;
        assert_eq!(method, "m");
        let mut out = Vec::new();
        encode_notification(Codec::Msgpack, &mut out, "server.says", &(1,)).unwrap();
        encode_response_ok(Codec::Msgpack, &mut out, msgid + 1000, &"not yours").unwrap();
        // A request from the server: clients ignore it.
        out.extend_from_slice(&[0x94, 0x00, 0x07, 0xa1, b'x', 0x90]);
        encode_response_ok(Codec::Msgpack, &mut out, msgid, &"yours").unwrap();
        peer.stream.write_all(&out).await.unwrap();
        peer
    });
    let client = Client::connect_with(addr, config()).await.unwrap();
    let r: String = within("call", client.call("m", ())).await.unwrap();
    assert_eq!(r, "yours");
    within("server", server).await.unwrap();
}

#[tokio::test]
async fn large_and_small_replies_interleaved() {
    let (listener, addr) = listen().await;
    let sizes: Vec<usize> = (0..40).map(|i| [3, 1000, 1025, 70_000, 300_000][i % 5]).collect();
    let server = tokio::spawn(async move {
        let mut peer = Peer::accept(&listener).await;
        let mut calls = Vec::new();
        for _ in 0..40 {
            calls.push(peer.request().await);
        }
        // All replies in one write, so that one read holds several, large ones split.
        let mut out = Vec::new();
        for (msgid, _, params) in calls {
            let n = params[0].as_u64().unwrap() as usize;
            let body = ByteBuf::from(vec![(n % 251) as u8; n]);
            encode_response_ok(Codec::Msgpack, &mut out, msgid, &body).unwrap();
        }
        peer.stream.write_all(&out).await.unwrap();
        peer
    });
    let client = Client::connect_with(addr, config()).await.unwrap();
    let calls = sizes.clone().into_iter().map(|n| {
        let c = client.clone();
        async move { (n, c.call::<_, ByteBuf>("blob", (n as u64,)).await) }
    });
    for (n, r) in within("calls", futures_join_all(calls)).await {
        let body = r.unwrap();
        assert_eq!(body.len(), n);
        assert!(
            body.iter().all(|b| *b == (n % 251) as u8),
            "reply of {n} bytes corrupted"
        );
    }
    within("server", server).await.unwrap();
}

#[tokio::test]
async fn a_call_times_out_alone_and_an_earlier_deadline_rearms_the_timer() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let mut peer = Peer::accept(&listener).await;
        // "slow" (long timeout), then "hang" (short timeout): never answered.
        let mut pending = Vec::new();
        loop {
            let (msgid, method, params) = peer.request().await;
            match method.as_str() {
                "hang" | "slow" => pending.push(msgid),
                "echo" => peer.reply(msgid, params[0].as_i64().unwrap()).await,
                "stop" => {
                    peer.reply(msgid, pending.len()).await;
                    return peer;
                }
                m => panic!("unexpected {m}"),
            }
        }
    });
    let client = Client::connect_with(addr, config()).await.unwrap();
    let slow = client.with_timeout(Duration::from_secs(60));
    let slow_call = tokio::spawn(async move { slow.call::<_, i64>("slow", ()).await });
    // The slow call is written first, so its 60 s deadline arms the timer; the hanging
    // call's 150 ms must move it earlier.
    let echo: i64 = within("echo", client.call("echo", (1,))).await.unwrap();
    assert_eq!(echo, 1);
    let short = client.with_timeout(Duration::from_millis(150));
    let started = std::time::Instant::now();
    let r = within("hang", short.call::<_, i64>("hang", ())).await;
    assert!(
        matches!(r, Err(Error::Timeout(t)) if t == Duration::from_millis(150)),
        "{r:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(150));
    // Other calls go on: on the same connection, the slow call still waits.
    let echo: i64 = within("echo after timeout", client.call("echo", (2,)))
        .await
        .unwrap();
    assert_eq!(echo, 2);
    assert!(!slow_call.is_finished());
    let pending: usize = within("stop", client.call("stop", ())).await.unwrap();
    assert_eq!(pending, 2);
    slow_call.abort();
    within("server", server).await.unwrap();
}

#[tokio::test]
async fn dropping_a_call_cancels_it_on_the_server_with_extensions() {
    let (listener, addr) = listen().await;
    let (got, seen) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(async move {
        let mut peer = Peer::accept(&listener).await;
        peer.hello().await;
        let (msgid, method, _) = peer.request().await;
        assert_eq!(method, "hang");
        got.send(()).unwrap();
        let cancel = peer.next().await;
        assert_eq!(
            cancel,
            Some(Seen::Notification {
                method: "rpc.cancel".into(),
                params: rmpv::Value::Array(vec![msgid.into()]),
            })
        );
        // A late reply to the cancelled call is ignored; the next call works.
        peer.reply(msgid, 0).await;
        let (msgid, _, _) = peer.request().await;
        peer.reply(msgid, 7).await;
        peer
    });
    let mut cfg = config();
    cfg.extensions = true;
    let client = Client::connect_with(addr, cfg).await.unwrap();
    tokio::select! {
        r = client.call::<_, i64>("hang", ()) => panic!("hang answered: {r:?}"),
        r = seen => r.unwrap(),
    }
    let r: i64 = within("call after cancel", client.call("next", ()))
        .await
        .unwrap();
    assert_eq!(r, 7);
    within("server", server).await.unwrap();
}

#[tokio::test]
async fn without_extensions_a_dropped_call_sends_nothing() {
    let (listener, addr) = listen().await;
    let (got, seen) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(async move {
        let mut peer = Peer::accept(&listener).await;
        let (msgid, _, _) = peer.request().await;
        got.send(()).unwrap();
        // The next thing on the wire is the next call, not a cancel.
        let (next, method, _) = peer.request().await;
        assert_eq!(method, "next");
        assert_ne!(next, msgid);
        peer.reply(next, 1).await;
        peer
    });
    let client = Client::connect_with(addr, config()).await.unwrap();
    tokio::select! {
        r = client.call::<_, i64>("hang", ()) => panic!("hang answered: {r:?}"),
        r = seen => r.unwrap(),
    }
    let r: i64 = within("next", client.call("next", ())).await.unwrap();
    assert_eq!(r, 1);
    within("server", server).await.unwrap();
}

#[tokio::test]
async fn a_lost_connection_fails_every_call_in_flight_then_the_client_reconnects() {
    let (listener, addr) = listen().await;
    let listener = Arc::new(listener);
    let l = listener.clone();
    let server = tokio::spawn(async move {
        let mut peer = Peer::accept(&l).await;
        for _ in 0..3 {
            peer.request().await;
        }
        drop(peer); // Close with three calls in flight.
        let mut peer = Peer::accept(&l).await;
        let (msgid, method, _) = peer.request().await;
        assert_eq!(method, "again");
        peer.reply(msgid, 42).await;
        peer
    });
    let client = Client::connect_with(addr, config()).await.unwrap();
    let calls = (0..3).map(|_| {
        let c = client.clone();
        async move { c.call::<_, i64>("lost", ()).await }
    });
    for r in within("lost calls", futures_join_all(calls)).await {
        assert!(matches!(r, Err(Error::ConnectionClosed)), "{r:?}");
    }
    let r: i64 = within("after reconnect", client.call("again", ())).await.unwrap();
    assert_eq!(r, 42);
    within("server", server).await.unwrap();
}

#[tokio::test]
async fn idempotent_calls_are_resent_with_the_same_msgid_after_a_drop() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let mut peer = Peer::accept(&listener).await;
        let (first, _, _) = peer.request().await;
        drop(peer);
        let mut peer = Peer::accept(&listener).await;
        let (again, method, _) = peer.request().await;
        assert_eq!(method, "put");
        assert_eq!(again, first, "a resent call keeps its msgid");
        peer.reply(again, "done").await;
        peer
    });
    let client = Client::connect_with(addr, config()).await.unwrap().idempotent();
    let r: String = within("resent", client.call("put", (1,))).await.unwrap();
    assert_eq!(r, "done");
    within("server", server).await.unwrap();
}

#[tokio::test]
async fn dropping_every_handle_flushes_queued_notifications() {
    let (listener, addr) = listen().await;
    let client = Client::connect_with(addr, config()).await.unwrap();
    let mut peer = Peer::accept(&listener).await;
    let other = client.clone();
    client.notify("first", (1,)).await.unwrap();
    other.notify("second", (2,)).await.unwrap();
    drop(client);
    drop(other);
    let mut seen = Vec::new();
    while let Some(m) = within("notifications", peer.next()).await {
        seen.push(m);
    }
    assert_eq!(
        seen,
        vec![
            Seen::Notification {
                method: "first".into(),
                params: rmpv::Value::Array(vec![1.into()]),
            },
            Seen::Notification {
                method: "second".into(),
                params: rmpv::Value::Array(vec![2.into()]),
            },
        ],
        "then EOF: the connection closes once every handle is gone"
    );
}

/// Many threads calling at once, some calls dropped half-way, against our real server:
/// every answer must reach its own caller, and the slot table must stay usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_on_many_threads_get_their_own_replies() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = easyrpc_server::Server::builder()
        .register(easyrpc_server::Method::async_fn(
            "mix",
            |(a, b): (u64, u64)| async move {
                if a % 3 == 0 {
                    tokio::task::yield_now().await;
                }
                a.wrapping_mul(31) ^ b
            },
        ))
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        server
            .run(listener, async move {
                let _ = stopped.await;
            })
            .await
    });
    let client = Client::connect_with(addr, config()).await.unwrap();
    let tasks = (0..8u64).map(|t| {
        let c = client.clone();
        async move {
            for i in 0..2000u64 {
                let a = t * 1_000_000 + i;
                let call = c.call::<_, u64>("mix", (a, t));
                if i % 17 == 0 {
                    // Poll once, then drop: a call abandoned in flight.
                    tokio::select! {
                        biased;
                        r = call => assert_eq!(r.unwrap(), a.wrapping_mul(31) ^ t),
                        () = std::future::ready(()) => {}
                    }
                } else {
                    assert_eq!(call.await.unwrap(), a.wrapping_mul(31) ^ t, "task {t} call {i}");
                }
            }
        }
    });
    within("callers", futures_join_all(tasks)).await;
    let _ = stop.send(());
}

/// Issue 17: a call to a server that is down fails at once with `Unavailable` (it used to
/// retry for the whole timeout: 14.3 s before `ConnectionRefused`), unless the client waits
/// for the server (`wait_for_ready`), in which case it ends in its timeout.
#[tokio::test]
async fn issue17_a_call_to_a_server_that_is_down_fails_fast() {
    let (listener, addr) = listen().await;
    // A timeout far longer than the bound the call is given below.
    let mut long = config();
    long.timeout = Duration::from_secs(60);
    let client = Client::connect_with(addr, long).await.unwrap();
    let peer = Peer::accept(&listener).await;
    drop(listener);
    drop(peer);
    // The drop may or may not have been seen yet: either the call fails with
    // ConnectionClosed on the old connection, or it finds none and is refused.
    let r = within("call", client.call::<_, i64>("x", ())).await;
    assert!(
        matches!(r, Err(Error::ConnectionClosed | Error::Unavailable(_))),
        "{r:?}"
    );
    let r = within("call", client.call::<_, i64>("x", ())).await;
    assert!(matches!(r, Err(Error::Unavailable(_))), "{r:?}");

    // Waiting for the server: the call ends in its own timeout instead.
    let (listener, addr) = listen().await;
    let mut waiting = config();
    waiting.wait_for_ready = true;
    let client = Client::connect_with(addr, waiting).await.unwrap();
    drop(Peer::accept(&listener).await);
    drop(listener);
    let short = client.with_timeout(Duration::from_millis(300));
    let r = within("call", short.call::<_, i64>("x", ())).await;
    assert!(
        matches!(
            r,
            Err(Error::ConnectionClosed | Error::Timeout(_) | Error::Unavailable(_))
        ),
        "{r:?}"
    );
    // It kept trying until its timeout (a lower bound: it cannot end sooner), then said why.
    let start = std::time::Instant::now();
    let r = within("call", short.call::<_, i64>("x", ())).await;
    assert!(
        matches!(r, Err(Error::Timeout(_) | Error::Unavailable(_))),
        "{r:?}"
    );
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "{:?}",
        start.elapsed()
    );
}

/// Issue 17, the blocking client: a call to a server that is down fails at once.
#[tokio::test]
async fn issue17_a_blocking_call_to_a_server_that_is_down_fails_fast() {
    let (listener, addr) = listen().await;
    let mut long = config();
    long.timeout = Duration::from_secs(60);
    let client = within(
        "connect",
        tokio::task::spawn_blocking(move || easyrpc_client::BlockingClient::connect_with(addr, long)),
    )
    .await
    .unwrap()
    .unwrap();
    drop(Peer::accept(&listener).await);
    drop(listener);
    let r = within(
        "two calls",
        tokio::task::spawn_blocking(move || {
            // The first may find the old connection (closed); the second has none.
            let _ = client.call::<_, i64>("x", ());
            client.call::<_, i64>("x", ())
        }),
    )
    .await
    .unwrap();
    assert!(matches!(r, Err(Error::Unavailable(_))), "{r:?}");
}

/// With `wait_for_ready`, a call made while the server is down is answered once it is back.
#[tokio::test]
async fn wait_for_ready_calls_once_the_server_is_back() {
    let (listener, addr) = listen().await;
    let mut waiting = config();
    waiting.wait_for_ready = true;
    let client = Client::connect_with(addr, waiting).await.unwrap();
    drop(Peer::accept(&listener).await);
    drop(listener);
    // Make sure the client knows the connection is gone: this call fails on the old
    // connection or waits out its short timeout for a new one.
    let short = client.with_timeout(Duration::from_millis(100));
    let _ = within("a call", short.call::<_, i64>("x", ())).await;
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.call::<_, i64>("add", (1, 2)).await }
    });
    // Bounded check that it waits (it would fail at once without wait_for_ready).
    let mut call = call;
    if let Ok(r) = tokio::time::timeout(Duration::from_millis(300), &mut call).await {
        panic!("the call ended while the server was down: {r:?}");
    }
    // The server comes back on the same address: the call is sent and answered.
    let listener = TcpListener::bind(addr).await.unwrap();
    let mut peer = Peer::accept(&listener).await;
    let (msgid, method, _) = peer.request().await;
    assert_eq!(method, "add");
    peer.reply(msgid, 3i64).await;
    assert_eq!(within("the call", call).await.unwrap().unwrap(), 3);
}

/// A call's future stays small: the reconnection path is boxed, out of the common path.
#[tokio::test]
async fn a_call_future_is_small() {
    let (_listener, addr) = listen().await;
    let client = Client::connect_with(addr, config()).await.unwrap();
    let call = client.call::<_, i64>("add", (1i64, 2i64));
    let size = std::mem::size_of_val(&call);
    assert!(size <= 384, "a call's future takes {size} bytes");
}

/// Read one whole message the client sent, raw.
async fn raw_frame(peer: &mut Peer) -> Vec<u8> {
    loop {
        if let Some(n) = peer.framer.decode(&peer.rbuf).unwrap() {
            return peer.rbuf.split_to(n).to_vec();
        }
        let n = within("read", peer.stream.read_buf(&mut peer.rbuf))
            .await
            .unwrap();
        assert!(n > 0, "EOF");
    }
}

/// Issue 17: a request a server sends to our client (Neovim's `rpcrequest`) is answered at
/// once with method-not-found (it used to be ignored, and Neovim froze until our call timed
/// out); the client's own call goes on.
#[tokio::test]
async fn issue17_a_request_from_the_server_is_answered_method_not_found() {
    let (listener, addr) = listen().await;
    let client = Client::connect_with(addr, config()).await.unwrap();
    let mut peer = Peer::accept(&listener).await;
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.call::<_, i64>("add", (1, 2)).await }
    });
    let (msgid, method, _) = peer.request().await;
    assert_eq!(method, "add");
    // [0, 7, "nvim_x", []]
    peer.stream
        .write_all(&[0x94, 0x00, 0x07, 0xa6, b'n', b'v', b'i', b'm', b'_', b'x', 0x90])
        .await
        .unwrap();
    let frame = raw_frame(&mut peer).await;
    let Message::Response {
        msgid: 7,
        outcome: Err(e),
    } = Message::parse(Codec::Msgpack, &frame).unwrap()
    else {
        panic!("not an error response to 7: {frame:x?}")
    };
    let e = easyrpc_proto::decode_error(Codec::Msgpack, e);
    assert_eq!(e.kind(), easyrpc_client::ErrorCode::MethodNotFound, "{e}");
    peer.reply(msgid, 3i64).await;
    assert_eq!(within("the call", call).await.unwrap().unwrap(), 3);
}

/// Issue 17: `call_value` keeps a msgpack str as `Value::String` even when its bytes are
/// not UTF-8 (it used to become `Value::Binary`), with both clients.
#[tokio::test]
async fn issue17_call_value_keeps_a_str_that_is_not_utf8() {
    let (listener, addr) = listen().await;
    let client = Client::connect_with(addr, config()).await.unwrap();
    let blocking = {
        let config = config();
        tokio::task::spawn_blocking(move || easyrpc_client::BlockingClient::connect_with(addr, config))
    };
    let mut peer = Peer::accept(&listener).await;
    let mut bpeer = Peer::accept(&listener).await;
    let blocking = within("connect", blocking).await.unwrap().unwrap();
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.call_value("s", vec![]).await }
    });
    let bcall = tokio::task::spawn_blocking(move || blocking.call_value("s", vec![]));
    for peer in [&mut peer, &mut bpeer] {
        let (msgid, _, _) = peer.request().await;
        // [1, msgid, nil, str "\xff\xfe"]
        let reply = [0x94, 0x01, msgid as u8, 0xc0, 0xa2, 0xff, 0xfe];
        peer.stream.write_all(&reply).await.unwrap();
    }
    for r in [
        within("the call", call).await.unwrap(),
        within("the blocking call", bcall).await.unwrap(),
    ] {
        match r.unwrap() {
            rmpv::Value::String(s) => assert_eq!(s.as_bytes(), [0xff, 0xfe]),
            other => panic!("not a string: {other:?}"),
        }
    }
}

/// A by-name call whose result does not decode names the method and the type asked for.
#[tokio::test]
async fn a_result_of_the_wrong_type_names_the_method_and_the_type() {
    let server = easyrpc_server::Server::builder()
        .register(easyrpc_server::Method::sync_fn("greet", |(): ()| {
            "hello".to_string()
        }))
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { server.run(listener, std::future::pending()).await });
    let client = easyrpc_client::Client::connect(addr).await.unwrap();
    let e = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        client.call::<_, i64>("greet", ()),
    )
    .await
    .unwrap()
    .unwrap_err();
    let easyrpc_client::Error::Result(r) = &e else {
        panic!("{e:?}")
    };
    assert_eq!((r.method.as_str(), r.expected), ("greet", "i64"));
    let text = e.to_string();
    assert!(
        text.starts_with("the result of greet did not decode as i64"),
        "{text}"
    );
    let blocking = tokio::task::spawn_blocking(move || {
        let c = easyrpc_client::BlockingClient::connect(addr).unwrap();
        c.call::<_, u32>("greet", ()).unwrap_err().to_string()
    })
    .await
    .unwrap();
    assert!(
        blocking.starts_with("the result of greet did not decode as u32"),
        "{blocking}"
    );
}
