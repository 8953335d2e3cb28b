//! A real server fed hand-written bad bytes on a raw TCP connection.
//!
//! Each test checks the exact reply (or the absence of one, or the close) and then that a
//! well-behaved client on another connection still gets right answers. Fixtures are hex;
//! error codes are compared as wire numbers (`ErrorCode::as_i64`). No test sleeps to
//! synchronise: "no reply" is shown by the next reply on the same connection being the
//! answer to a later request, or by reading to EOF, and every wait is bounded by
//! `common::WAIT`.

#[allow(dead_code)] // Each test crate uses a part of the shared helpers.
mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::{builder, check_client, parse_response, within, RawConn, TestServer};
use easyrpc_proto::{encode_notification, encode_request, Codec, ErrorCode};
use easyrpc_server::{BuildError, Method, Server};
use hex_literal::hex;
use serde_bytes::ByteBuf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Notify};

/// `[0, 1, "add", [2, 3]]`.
const ADD_1: [u8; 10] = hex!("94 00 01 a3 61 64 64 92 02 03");

#[test]
fn wire_codes_are_the_documented_numbers() {
    // The numbers the tests below expect on the wire; a renumbering must fail here first.
    let codes = [
        (ErrorCode::MethodNotFound, 1),
        (ErrorCode::InvalidParams, 2),
        (ErrorCode::HandlerPanicked, 4),
        (ErrorCode::MessageTooLarge, 5),
        (ErrorCode::MalformedMessage, 6),
    ];
    for (code, n) in codes {
        assert_eq!(code.as_i64(), n, "{code}");
    }
}

// 1.
#[tokio::test]
async fn garbage_bytes_close_the_connection() {
    let server = TestServer::start(builder()).await;

    // As the first bytes: 0xc1 is never valid msgpack (it only starts our hello).
    let mut conn = server.raw().await;
    conn.send(&hex!("c1 ff ff ff 00 00 00 00")).await;
    conn.expect_closed().await;

    // After a good request, in the same write: the request is answered, then the close.
    let mut conn = server.raw().await;
    conn.send(&[&ADD_1[..], &hex!("c1 ff ff ff")].concat()).await;
    conn.response().await.assert_ok(1, 5i64);
    conn.expect_closed().await;

    // Mid-stream, after the connection has been used.
    let mut conn = server.raw().await;
    conn.check_add(1, 2, 3).await;
    conn.send(&hex!("c1")).await;
    conn.expect_closed().await;

    check_client(server.addr).await;
}

// 2.
#[tokio::test]
async fn truncated_message_then_close() {
    let server = TestServer::start(builder()).await;

    // Half a request, then our write half closes: the server closes too, sending nothing.
    let mut conn = server.raw().await;
    conn.send(&ADD_1[..6]).await;
    conn.shutdown_write().await;
    conn.expect_closed().await;

    // A whole request and half of the next, then EOF: end of input means "no more
    // requests", not "the caller is gone" (issue 17), so the whole one is answered and the
    // half dropped; then the server closes.
    let mut conn = server.raw().await;
    conn.send(&[&ADD_1[..], &hex!("94 00 02 a3 61")].concat()).await;
    conn.shutdown_write().await;
    let frame = conn.read_frame().await.expect("the whole request is answered");
    common::parse_response(&frame).assert_ok(1, 5i64);
    conn.expect_closed().await;

    // Half a request, then the socket is dropped altogether.
    let mut conn = server.raw().await;
    conn.send(&ADD_1[..4]).await;
    drop(conn);

    check_client(server.addr).await;
}

// 3.
#[tokio::test]
async fn map_instead_of_array_is_skipped() {
    let server = TestServer::start(builder()).await;
    let mut conn = server.raw().await;

    // `{"a": 1}`: a whole value, but no msgid to answer. Nothing comes back and the stream
    // stays in sync: the next reply is the one to the request that follows.
    conn.send(&hex!("81 a1 61 01")).await;
    conn.check_add(2, 20, 22).await;

    // The same in one write with other non-array values: int, nil, str, empty array.
    conn.send(&[&hex!("81 a1 61 01 05 c0 a3 61 64 64 90")[..], &ADD_1].concat())
        .await;
    conn.response().await.assert_ok(1, 5i64);

    conn.check_add(3, -1, 1).await;
    check_client(server.addr).await;
}

// 4.
#[tokio::test]
async fn wrong_array_length_with_msgid_gets_malformed_message() {
    let server = TestServer::start(builder()).await;
    let mut conn = server.raw().await;

    // `[0, 5, "add"]`: three elements.
    conn.send(&hex!("93 00 05 a3 61 64 64")).await;
    let e = conn
        .response()
        .await
        .assert_error(5, ErrorCode::MalformedMessage)
        .clone();
    assert!(e.message.contains("4 elements"), "{e}");
    conn.check_add(100, 1, 2).await;

    // `[0, 6, "add", [2, 3], nil]`: five elements.
    conn.send(&hex!("95 00 06 a3 61 64 64 92 02 03 c0")).await;
    conn.response().await.assert_error(6, ErrorCode::MalformedMessage);

    // `[0, 7, 5, [2, 3]]`: the method is an integer.
    conn.send(&hex!("94 00 07 05 92 02 03")).await;
    conn.response().await.assert_error(7, ErrorCode::MalformedMessage);

    conn.check_add(101, 3, 4).await;
    check_client(server.addr).await;
}

// 5.
#[tokio::test]
async fn unknown_type_tag_is_ignored() {
    let server = TestServer::start(builder()).await;
    let mut conn = server.raw().await;

    // `[7, 1, "add", []]`: type 7 does not exist, so element 1 is not known to be a msgid.
    conn.send(&hex!("94 07 01 a3 61 64 64 90")).await;
    conn.check_add(10, 1, 1).await;

    // Along with a response sent to the server and a request with a negative msgid (none
    // of which can be answered), all before a good request in one write.
    let bad = hex!(
        "94 07 01 a3 61 64 64 90"
        "94 01 05 c0 c0"
        "94 00 ff a3 61 64 64 92 02 03"
    );
    conn.send(&[&bad[..], &ADD_1].concat()).await;
    conn.response().await.assert_ok(1, 5i64);

    conn.check_add(11, 5, 6).await;
    check_client(server.addr).await;
}

// 6.
#[tokio::test]
async fn unknown_method_gets_method_not_found() {
    let server = TestServer::start(builder()).await;
    let mut conn = server.raw().await;

    // `[0, 11, "nope", [2, 3]]`.
    conn.send(&hex!("94 00 0b a4 6e 6f 70 65 92 02 03")).await;
    let e = conn
        .response()
        .await
        .assert_error(11, ErrorCode::MethodNotFound)
        .clone();
    assert!(e.message.contains("nope"), "{e}");

    conn.check_add(12, 2, 2).await;
    check_client(server.addr).await;
}

// 7.
#[tokio::test]
async fn wrong_argument_count_gets_invalid_params() {
    let server = TestServer::start(builder()).await;
    let mut conn = server.raw().await;

    let cases: [(u64, &[u8]); 4] = [
        // add(1)
        (12, &hex!("94 00 0c a3 61 64 64 91 01")),
        // add(1, 2, 3)
        (13, &hex!("94 00 0d a3 61 64 64 93 01 02 03")),
        // add()
        (14, &hex!("94 00 0e a3 61 64 64 90")),
        // add_async(1): the async path decodes the same way.
        (15, &hex!("94 00 0f a9 61 64 64 5f 61 73 79 6e 63 91 01")),
    ];
    for (msgid, req) in cases {
        conn.send(req).await;
        let e = conn
            .response()
            .await
            .assert_error(msgid, ErrorCode::InvalidParams)
            .clone();
        assert!(e.message.contains("expected 2 arguments"), "{e}");
    }

    conn.check_add(16, 8, 9).await;
    check_client(server.addr).await;
}

// 8.
#[tokio::test]
async fn wrong_argument_type_gets_invalid_params() {
    let server = TestServer::start(builder()).await;
    let mut conn = server.raw().await;

    let cases: [(u64, &[u8]); 5] = [
        // add("x", 2)
        (16, &hex!("94 00 10 a3 61 64 64 92 a1 78 02")),
        // add(nil, 2)
        (17, &hex!("94 00 11 a3 61 64 64 92 c0 02")),
        // add(u64::MAX, 2): does not fit an i64.
        (18, &hex!("94 00 12 a3 61 64 64 92 cf ff ff ff ff ff ff ff ff 02")),
        // add with params 5: not an array at all.
        (19, &hex!("94 00 13 a3 61 64 64 05")),
        // add_async(1, "y")
        (20, &hex!("94 00 14 a9 61 64 64 5f 61 73 79 6e 63 92 01 a1 79")),
    ];
    for (msgid, req) in cases {
        conn.send(req).await;
        conn.response()
            .await
            .assert_error(msgid, ErrorCode::InvalidParams);
    }

    conn.check_add(21, 10, 11).await;
    check_client(server.addr).await;
}

// 9.
#[tokio::test]
async fn panic_in_sync_handler_gets_handler_panicked() {
    // One blocking slot: if a panic leaked its permit, the `add` calls below would hang.
    let b = builder()
        .register(Method::sync_fn("boom", |(): ()| -> i64 { panic!("sync kaboom") }))
        .blocking_threads(1);
    let server = TestServer::start(b).await;
    let mut conn = server.raw().await;

    for msgid in [20, 21] {
        // `[0, msgid, "boom", []]`.
        conn.send(&[&[0x94, 0x00, msgid][..], &hex!("a4 62 6f 6f 6d 90")].concat())
            .await;
        let e = conn
            .response()
            .await
            .assert_error(u64::from(msgid), ErrorCode::HandlerPanicked)
            .clone();
        // The panic message stays in the server's log.
        assert!(!e.message.contains("kaboom"), "{e}");
    }

    conn.check_add(22, 1, 2).await;
    check_client(server.addr).await;
}

async fn boom_now() -> i64 {
    panic!("async kaboom on the first poll")
}

async fn boom_later() -> i64 {
    tokio::task::yield_now().await;
    panic!("async kaboom on a later poll")
}

fn boom_early() -> std::future::Ready<i64> {
    panic!("kaboom before the future exists")
}

// 10.
#[tokio::test]
async fn panic_in_async_handler_gets_handler_panicked() {
    let b = builder()
        .register(Method::async_fn("boom_now", |(): ()| boom_now()))
        .register(Method::async_fn("boom_later", |(): ()| boom_later()))
        .register(Method::async_fn("boom_early", |(): ()| boom_early()));
    let server = TestServer::start(b).await;
    let mut conn = server.raw().await;

    let cases: [(u64, &[u8]); 3] = [
        // Panics in the connection task's first poll.
        (30, &hex!("94 00 1e a8 62 6f 6f 6d 5f 6e 6f 77 90")),
        // Pending first, then panics when the connection polls it again.
        (31, &hex!("94 00 1f aa 62 6f 6f 6d 5f 6c 61 74 65 72 90")),
        // Panics while building the future.
        (32, &hex!("94 00 20 aa 62 6f 6f 6d 5f 65 61 72 6c 79 90")),
    ];
    for (msgid, req) in cases {
        conn.send(req).await;
        conn.response()
            .await
            .assert_error(msgid, ErrorCode::HandlerPanicked);
    }

    conn.check_add(33, 4, 5).await;
    check_client(server.addr).await;
}

// 11.
#[tokio::test]
async fn message_over_the_size_limit_gets_message_too_large_then_close() {
    let b = builder()
        .register(Method::sync_fn("len", |(b,): (ByteBuf,)| b.len() as u64))
        .max_message_size(1024);
    let server = TestServer::start(b).await;
    let mut conn = server.raw().await;

    // Under the limit: served.
    let mut req = Vec::new();
    encode_request(
        Codec::Msgpack,
        &mut req,
        40,
        "len",
        &(ByteBuf::from(vec![0xab; 512]),),
        None,
    )
    .unwrap();
    assert_eq!(&req[..13], hex!("94 00 28 a3 6c 65 6e 91 c5 02 00 ab ab"));
    conn.send(&req).await;
    conn.response().await.assert_ok(40, 512u64);

    // A 4 KiB bin argument: refused with its msgid, then the stream is given up.
    req.clear();
    encode_request(
        Codec::Msgpack,
        &mut req,
        41,
        "len",
        &(ByteBuf::from(vec![0xab; 4096]),),
        None,
    )
    .unwrap();
    assert_eq!(&req[..11], hex!("94 00 29 a3 6c 65 6e 91 c5 10 00"));
    conn.send(&req).await;
    let e = conn
        .response()
        .await
        .assert_error(41, ErrorCode::MessageTooLarge)
        .clone();
    assert!(e.message.contains("1024"), "{e}");
    conn.expect_closed().await;

    check_client(server.addr).await;
}

// 12.
#[tokio::test]
async fn declared_4_gib_length_is_refused_from_the_header() {
    // The default limit (64 MiB). Only the headers are sent: a server that waited for the
    // body, or allocated for it, would time out or abort here.
    let server = TestServer::start(builder()).await;

    let cases: [(u64, &[u8]); 6] = [
        // [0, 7, "add", [str32 of 4 GiB - 1
        (7, &hex!("94 00 07 a3 61 64 64 91 db ff ff ff ff")),
        // [0, 8, "add", [bin32 of 4 GiB - 1
        (8, &hex!("94 00 08 a3 61 64 64 91 c6 ff ff ff ff")),
        // [0, 9, "add", [ext32 of 4 GiB - 1, type 1
        (9, &hex!("94 00 09 a3 61 64 64 91 c9 ff ff ff ff 01")),
        // [0, 10, "add", array32 of 4 Gi - 1 elements
        (10, &hex!("94 00 0a a3 61 64 64 dd ff ff ff ff")),
        // [0, 11, "add", [map32 of 4 Gi - 1 pairs
        (11, &hex!("94 00 0b a3 61 64 64 91 df ff ff ff ff")),
        // [0, u64::MAX - 1, str32 method of 4 GiB - 1
        (
            u64::MAX - 1,
            &hex!("94 00 cf ff ff ff ff ff ff ff fe db ff ff ff ff"),
        ),
    ];
    within("every huge header to be refused", async {
        for (msgid, req) in cases {
            let mut conn = server.raw().await;
            conn.send(req).await;
            conn.response()
                .await
                .assert_error(msgid, ErrorCode::MessageTooLarge);
            conn.expect_closed().await;
        }
    })
    .await;

    check_client(server.addr).await;
}

// 13.
#[tokio::test]
async fn large_msgid_is_echoed_and_bin_method_names_work() {
    let server = TestServer::start(builder()).await;
    let mut conn = server.raw().await;

    let cases: [(&[u8], &[u8]); 5] = [
        // msgid u64::MAX - 1, method as bin8.
        (
            &hex!("94 00 cf ff ff ff ff ff ff ff fe c4 03 61 64 64 92 02 03"),
            &hex!("94 01 cf ff ff ff ff ff ff ff fe c0 05"),
        ),
        // msgid u64::MAX, method as str.
        (
            &hex!("94 00 cf ff ff ff ff ff ff ff ff a3 61 64 64 92 02 03"),
            &hex!("94 01 cf ff ff ff ff ff ff ff ff c0 05"),
        ),
        // msgid 2^32: not truncated to u32.
        (
            &hex!("94 00 cf 00 00 00 01 00 00 00 00 a3 61 64 64 92 02 03"),
            &hex!("94 01 cf 00 00 00 01 00 00 00 00 c0 05"),
        ),
        // Method as str8, async handler.
        (
            &hex!("94 00 01 d9 09 61 64 64 5f 61 73 79 6e 63 92 02 03"),
            &hex!("94 01 01 c0 05"),
        ),
        // Method as bin16.
        (
            &hex!("94 00 02 c5 00 03 61 64 64 92 02 03"),
            &hex!("94 01 02 c0 05"),
        ),
    ];
    let msgids = [u64::MAX - 1, u64::MAX, 1 << 32, 1, 2];
    for ((req, reply), msgid) in cases.into_iter().zip(msgids) {
        conn.send(req).await;
        let frame = conn.read_frame().await.expect("a reply");
        assert_eq!(frame, reply, "reply to {req:02x?}");
        parse_response(&frame).assert_ok(msgid, 5i64);
    }

    conn.check_add(3, 6, 7).await;
    check_client(server.addr).await;
}

// 14.
#[tokio::test]
async fn pipelined_burst_and_notifications() {
    let recorded = Arc::new(AtomicU64::new(0));
    let r = recorded.clone();
    let b = builder().register(Method::async_fn("record", move |(n,): (u64,)| {
        r.fetch_add(n, Ordering::SeqCst);
        async move {}
    }));
    let server = TestServer::start(b).await;
    let mut conn = server.raw().await;

    let mut burst = Vec::new();
    for i in 0..100i64 {
        let msgid = 1000 + i as u64;
        encode_request(Codec::Msgpack, &mut burst, msgid, "add", &(i, i), None).unwrap();
        if i == 50 {
            // To a registered sync method: runs, answers nothing.
            encode_notification(Codec::Msgpack, &mut burst, "add", &(1, 2)).unwrap();
            // To a registered async method, by str and (as pynvim sends it) by bin name.
            burst.extend_from_slice(&hex!("93 02 a6 72 65 63 6f 72 64 91 07"));
            burst.extend_from_slice(&hex!("93 02 c4 06 72 65 63 6f 72 64 91 23"));
            // Unknown, by str and by bin name: ignored.
            burst.extend_from_slice(&hex!("93 02 a7 75 6e 6b 6e 6f 77 6e 90"));
            burst.extend_from_slice(&hex!("93 02 c4 07 75 6e 6b 6e 6f 77 6e 90"));
            // A notification with the wrong arguments fails quietly.
            encode_notification(Codec::Msgpack, &mut burst, "add", &("x",)).unwrap();
        }
    }
    conn.send(&burst).await;

    let mut seen = BTreeSet::new();
    for _ in 0..100 {
        let r = conn.response().await;
        let i = r.msgid.checked_sub(1000).expect("a msgid of the burst") as i64;
        r.assert_ok(r.msgid, 2 * i);
        assert!(seen.insert(r.msgid), "msgid {} answered twice", r.msgid);
    }
    assert_eq!(seen, (1000..1100).collect::<BTreeSet<u64>>());

    // After EOF the server drains every call, notifications included, then closes: so
    // reading to the close shows that nothing else was ever sent.
    conn.check_add(2000, 1, 1).await;
    conn.shutdown_write().await;
    conn.expect_closed().await;
    assert_eq!(recorded.load(Ordering::SeqCst), 7 + 35);

    check_client(server.addr).await;
    server.stop().await;
}

// 15.
// Single-threaded on purpose: see the comment after `stop_tx.send`.
#[tokio::test(flavor = "current_thread")]
async fn graceful_shutdown_finishes_calls_in_flight_and_refuses_new_connections() {
    let started = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let (s, r) = (started.clone(), release.clone());
    let server = builder()
        .register(Method::async_fn("slow", move |(): ()| {
            let (s, r) = (s.clone(), r.clone());
            async move {
                s.notify_one();
                r.notified().await;
                42u64
            }
        }))
        .build()
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (fired_tx, fired_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .run(listener, async move {
                let _ = stop_rx.await;
                let _ = fired_tx.send(());
            })
            .await;
    });

    // `[0, 1, "slow", []]`, running until released.
    let mut conn = RawConn::connect(addr).await;
    conn.send(&hex!("94 00 01 a4 73 6c 6f 77 90")).await;
    within("the slow call to start", started.notified()).await;
    check_client(addr).await;

    stop_tx.send(()).unwrap();
    // The shutdown future has completed. On this single-threaded runtime the server task
    // then runs on, without yielding, through dropping the listener and cancelling the
    // connections, before this task is polled again.
    within("the shutdown future to fire", fired_rx).await.unwrap();

    let refused = within("a connection attempt", TcpStream::connect(addr)).await;
    assert_eq!(
        refused.expect_err("the listener is closed").kind(),
        std::io::ErrorKind::ConnectionRefused
    );

    release.notify_one();
    conn.response().await.assert_ok(1, 42u64);
    conn.expect_closed().await;
    within("run to return", task).await.unwrap();
}

// 16.
#[tokio::test]
async fn two_methods_under_one_name_fail_to_build() {
    let e = builder()
        .register(Method::async_fn("add", |(a, b): (i64, i64)| async move { a - b }))
        .build()
        .unwrap_err();
    assert_eq!(e, BuildError::DuplicateMethod("add".into()));

    // The reserved heartbeat counts too.
    let e = Server::builder()
        .register(Method::sync_fn("rpc.ping", |(): ()| ()))
        .build()
        .unwrap_err();
    assert_eq!(e, BuildError::DuplicateMethod("rpc.ping".into()));

    let server = TestServer::start(builder()).await;
    check_client(server.addr).await;
}

/// `[0, msgid, method, [x]]` where `x` is `depth` nested one-element arrays around `[]`.
fn nested_request(msgid: u8, method: &str, depth: usize) -> Vec<u8> {
    assert!(msgid < 0x80 && method.len() < 32);
    let mut req = vec![0x94, 0x00, msgid, 0xa0 | method.len() as u8];
    req.extend_from_slice(method.as_bytes());
    req.push(0x91);
    req.resize(req.len() + depth, 0x91);
    req.push(0x90);
    req
}

// 17. Found while writing these tests: rmp-serde's own depth limit (1024) let a 1 KiB
// message of nested arrays overflow the connection task's stack and abort the process.
#[tokio::test]
async fn deeply_nested_argument_gets_invalid_params() {
    let b = builder()
        .register(Method::sync_fn("echo", |(v,): (rmpv::Value,)| v))
        .register(Method::async_fn(
            "echo_async",
            |(v,): (rmpv::Value,)| async move { v },
        ));
    let server = TestServer::start(b).await;
    let mut conn = server.raw().await;

    // Moderate nesting is served and echoed back unchanged.
    for (msgid, method) in [(1, "echo"), (2, "echo_async")] {
        let req = nested_request(msgid, method, 100);
        conn.send(&req).await;
        let frame = conn.read_frame().await.expect("a reply");
        assert_eq!(frame[..4], [0x94, 0x01, msgid, 0xc0]);
        assert_eq!(frame[4..], req[4 + method.len() + 1..]);
    }

    // Deeper than the limit, up to a 100 KB message: refused, and the server lives on.
    for depth in [1_000, 100_000] {
        for (msgid, method) in [(3, "echo"), (4, "echo_async")] {
            conn.send(&nested_request(msgid, method, depth)).await;
            let e = conn
                .response()
                .await
                .assert_error(u64::from(msgid), ErrorCode::InvalidParams)
                .clone();
            assert!(e.message.contains("depth"), "{e}");
        }
    }

    conn.check_add(5, 1, 2).await;
    check_client(server.addr).await;
}
