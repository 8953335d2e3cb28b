//! Round trips through the async and blocking clients against a real server, both codecs.

use std::time::Duration;

use easyrpc_client::{BlockingClient, Client, Codec, Config, ErrorCode};
use easyrpc_server::{Method, Server};
use tokio::net::TcpListener;

async fn start() -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let server = Server::builder()
        .register(Method::sync_fn("add", |(a, b): (i64, i64)| a + b))
        .register(Method::async_fn("slow", |(ms,): (u64,)| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            ms
        }))
        .register(Method::try_sync_fn("fail", |(): ()| Err::<(), _>("nope")))
        .register(Method::sync_fn("boom", |(): ()| -> i64 { panic!("kaboom") }))
        .build()
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        server
            .run(listener, async {
                let _ = rx.await;
            })
            .await
    });
    (addr, tx)
}

#[tokio::test]
async fn async_client_round_trips() {
    let (addr, _stop) = start().await;
    for codec in [Codec::Msgpack, Codec::Bincode] {
        let mut cfg = Config::default();
        cfg.codec = codec;
        cfg.our_server = true; // no hello with msgpack: say the codes are ours
        let c = Client::connect_with(addr, cfg).await.unwrap();
        let v: i64 = c.call("add", (2, 3)).await.unwrap();
        assert_eq!(v, 5);
        let e = c.call::<_, i64>("nope", ()).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::MethodNotFound));
        let e = c.call::<_, ()>("fail", ()).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::HandlerError));
        assert_eq!(e.remote().unwrap().message, "nope");
        let e = c.call::<_, i64>("boom", ()).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::HandlerPanicked));
        let e = c.call::<_, i64>("add", (1,)).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::InvalidParams));
        // Out of order: a slow call does not hold up a fast one.
        let slow = c.call::<_, u64>("slow", (200u64,));
        let fast = async {
            let v: i64 = c.call("add", (1, 1)).await.unwrap();
            v
        };
        tokio::pin!(slow);
        tokio::select! {
            _ = &mut slow => panic!("slow finished first"),
            v = fast => assert_eq!(v, 2),
        }
        assert_eq!(slow.await.unwrap(), 200);
    }
}

#[tokio::test]
async fn blocking_client_round_trips() {
    let (addr, _stop) = start().await;
    tokio::task::spawn_blocking(move || {
        for codec in [Codec::Msgpack, Codec::Bincode] {
            let mut cfg = Config::default();
            cfg.codec = codec;
            cfg.our_server = true; // no hello with msgpack: say the codes are ours
            let c = BlockingClient::connect_with(addr, cfg).unwrap();
            let v: i64 = c.call("add", (2, 3)).unwrap();
            assert_eq!(v, 5);
            let e = c.call::<_, i64>("nope", ()).unwrap_err();
            assert_eq!(e.code(), Some(ErrorCode::MethodNotFound));
            if codec == Codec::Msgpack {
                let v = c.call_value("add", vec![1.into(), 2.into()]).unwrap();
                assert_eq!(v.as_i64(), Some(3));
            }
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn async_client_times_out_and_keeps_working() {
    let (addr, _stop) = start().await;
    let c = Client::connect(addr).await.unwrap();
    let quick = c.with_timeout(Duration::from_millis(50));
    let started = std::time::Instant::now();
    let e = quick.call::<_, u64>("slow", (5_000u64,)).await.unwrap_err();
    assert!(
        matches!(e, easyrpc_client::Error::Timeout(d) if d == Duration::from_millis(50)),
        "{e}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "timed out late: {:?}",
        started.elapsed()
    );
    // The same connection still answers, and a late reply to the timed-out call is ignored.
    let v: i64 = c.call("add", (20, 22)).await.unwrap();
    assert_eq!(v, 42);
}
