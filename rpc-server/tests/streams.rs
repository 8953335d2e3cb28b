//! Streams end to end: result streams (async and sync functions), argument streams, both
//! at once, with both codecs; flow control (a consumer that stops reading stalls only its
//! own stream, memory stays bounded), cancellation from each side, deadlines over the
//! whole stream, a connection cut mid-stream, many streams on one connection, and a plain
//! MessagePack-RPC peer calling a streaming method.
//!
//! Every wait is bounded (`common::within`); nothing sleeps to synchronise.

#[allow(dead_code)] // Helpers other test files use.
mod common;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{builder, within, TestServer};
use easyrpc_client::{Client, Codec, Config as ClientConfig, Error, ErrorCode};
use easyrpc_server::{Method, Streaming};
use futures_util::StreamExt;

/// A server with the streaming methods of these tests.
fn streaming_builder(produced: Arc<AtomicU64>, dropped: Arc<AtomicUsize>) -> easyrpc_server::Builder {
    let produced_async = produced.clone();
    builder()
        // 0..n, from an async stream; counts what it produced, and when it is dropped.
        .register(Method::stream_fn("count", move |(n,): (u64,)| {
            let produced = produced_async.clone();
            let guard = DropCount(dropped.clone());
            futures_util::stream::iter(0..n).map(move |i| {
                let _ = &guard;
                produced.fetch_add(1, Ordering::SeqCst);
                i
            })
        }))
        // 0..n from a sync iterator, on the blocking pool.
        .register(Method::sync_stream_fn("count_sync", move |(n,): (u64,)| {
            let produced = produced.clone();
            (0..n).inspect(move |_| {
                produced.fetch_add(1, Ordering::SeqCst);
            })
        }))
        // Items then an error.
        .register(Method::try_stream_fn("fail_after", |(n,): (u64,)| {
            futures_util::stream::iter((0..=n).map(move |i| {
                if i < n {
                    Ok(i)
                } else {
                    Err(format!("failed after {n}"))
                }
            }))
        }))
        // The sum of what the client sends, plus an offset.
        .register(Method::upload_fn(
            "sum",
            |(offset,): (i64,), items: Streaming<i64>| async move {
                let mut total = offset;
                let mut items = items;
                while let Some(Ok(n)) = items.next().await {
                    total += n;
                }
                total
            },
        ))
        // The same, as a sync function on the blocking pool.
        .register(Method::sync_upload_fn(
            "sum_sync",
            |(offset,): (i64,), mut items: Streaming<i64>| {
                offset + items.blocking_iter().map(Result::unwrap).sum::<i64>()
            },
        ))
        // The sum of the first `n` items, then the answer (the rest is never read).
        .register(Method::upload_fn(
            "head",
            |(n,): (u64,), items: Streaming<u64>| async move {
                items
                    .take(n as usize)
                    .fold(0u64, |acc, x| async move { acc + x.unwrap() })
                    .await
            },
        ))
        // `n` compressible blobs of `size` bytes.
        .register(Method::stream_fn("blobs", |(n, size): (u64, usize)| {
            let blob = serde_bytes::ByteBuf::from(b"stream me ".repeat(size / 10));
            futures_util::stream::iter((0..n).map(move |_| blob.clone()))
        }))
        // The total length of the blobs sent.
        .register(Method::upload_fn(
            "total_len",
            |(): (), items: Streaming<serde_bytes::ByteBuf>| async move {
                items
                    .fold(0u64, |acc, b| async move { acc + b.unwrap().len() as u64 })
                    .await
            },
        ))
        // Each item back, times a factor.
        .register(Method::bidi_fn("scale", |(k,): (i64,), items: Streaming<i64>| {
            items.filter_map(move |r| async move { r.ok().map(|n| n * k) })
        }))
}

struct DropCount(Arc<AtomicUsize>);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

async fn client(addr: std::net::SocketAddr, codec: Codec) -> Client {
    let mut config = ClientConfig::default();
    config.extensions = true;
    config.codec = codec;
    Client::connect_with(addr, config).await.unwrap()
}

async fn start() -> (TestServer, Arc<AtomicU64>, Arc<AtomicUsize>) {
    let produced = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    let server = TestServer::start(streaming_builder(produced.clone(), dropped.clone())).await;
    (server, produced, dropped)
}

#[tokio::test]
async fn every_stream_kind_round_trips_with_both_codecs() {
    let (server, _, _) = start().await;
    for codec in [Codec::Msgpack, Codec::Bincode] {
        let c = client(server.addr, codec).await;
        for method in ["count", "count_sync"] {
            let items: Vec<u64> = within(method, async {
                c.call_stream::<_, u64>(method, (200u64,))
                    .await
                    .unwrap()
                    .map(Result::unwrap)
                    .collect()
                    .await
            })
            .await;
            assert_eq!(items, (0..200).collect::<Vec<_>>(), "{method} {codec:?}");
        }
        let total: i64 = within(
            "sum",
            c.call_upload("sum", (5i64,), futures_util::stream::iter(1..=1000i64)),
        )
        .await
        .unwrap();
        assert_eq!(total, 5 + 500_500, "{codec:?}");
        let total: i64 = within(
            "sum_sync",
            c.call_upload("sum_sync", (5i64,), futures_util::stream::iter(1..=1000i64)),
        )
        .await
        .unwrap();
        assert_eq!(total, 5 + 500_500, "{codec:?}");
        let scaled: Vec<i64> = within("scale", async {
            c.call_bidi::<_, i64, _, i64>("scale", (3i64,), futures_util::stream::iter(1..=300i64))
                .await
                .unwrap()
                .map(Result::unwrap)
                .collect()
                .await
        })
        .await;
        assert_eq!(scaled, (1..=300).map(|n| n * 3).collect::<Vec<_>>(), "{codec:?}");
    }
}

#[tokio::test]
async fn an_error_item_ends_the_stream_with_code_and_message() {
    let (server, _, _) = start().await;
    let c = client(server.addr, Codec::Msgpack).await;
    let mut s = c.call_stream::<_, u64>("fail_after", (3u64,)).await.unwrap();
    for i in 0..3 {
        assert_eq!(within("item", s.next()).await.unwrap().unwrap(), i);
    }
    match within("error", s.next()).await {
        Some(Err(Error::Remote(e))) => {
            assert_eq!(e.kind(), ErrorCode::HandlerError);
            assert_eq!(e.message, "failed after 3");
        }
        other => panic!("expected the error, got {other:?}"),
    }
    assert!(within("end", s.next()).await.is_none());
}

#[tokio::test]
async fn a_slow_consumer_bounds_the_producer_and_stalls_only_its_own_stream() {
    let (server, produced, _) = start().await;
    let c = client(server.addr, Codec::Msgpack).await;
    let mut s = c.call_stream::<_, u64>("count", (1_000_000u64,)).await.unwrap();
    assert_eq!(within("first item", s.next()).await.unwrap().unwrap(), 0);
    // Not reading: other calls on the same connection are answered meanwhile...
    for i in 0..50i64 {
        let sum: i64 = within("add", c.call("add", (i, 1))).await.unwrap();
        assert_eq!(sum, i + 1);
    }
    let others: Vec<u64> = within("another stream", async {
        c.call_stream::<_, u64>("count_sync", (100u64,))
            .await
            .unwrap()
            .map(Result::unwrap)
            .collect()
            .await
    })
    .await;
    assert_eq!(others.len(), 100);
    // ...and the stalled stream produced no more than its credit (64, plus the other
    // stream's 100).
    let n = produced.load(Ordering::SeqCst);
    assert!(n <= 64 + 100, "produced {n} items for a reader that took one");
    // It goes on when read again.
    for i in 1..1000 {
        assert_eq!(within("item", s.next()).await.unwrap().unwrap(), i);
    }
}

#[tokio::test]
async fn dropping_the_client_stream_cancels_the_server_stream() {
    let (server, _, dropped) = start().await;
    let c = client(server.addr, Codec::Msgpack).await;
    let mut s = c.call_stream::<_, u64>("count", (u64::MAX,)).await.unwrap();
    assert_eq!(within("item", s.next()).await.unwrap().unwrap(), 0);
    drop(s);
    // Within one round trip: `rpc.cancel` goes out before the next request on the same
    // connection, and the server drops the call's stream before it answers that request.
    let _: i64 = within("a round trip", c.call("add", (1, 1))).await.unwrap();
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        1,
        "the server's stream was not dropped"
    );
}

#[tokio::test]
async fn a_plain_peer_calling_a_streaming_method_gets_a_clear_error() {
    let (server, _, _) = start().await;
    // No hello: a plain MessagePack-RPC client.
    let c = Client::connect(server.addr).await.unwrap();
    match within("call", c.call::<_, Vec<u64>>("count", (3u64,))).await {
        Err(Error::Remote(e)) => {
            assert_eq!(e.kind(), ErrorCode::StreamingMethod);
            assert!(
                e.message.contains("`count` is a streaming method"),
                "{}",
                e.message
            );
        }
        other => panic!("expected a streaming-method error, got {other:?}"),
    }
    // The client's streaming calls need the extensions.
    assert!(matches!(
        c.call_stream::<_, u64>("count", (3u64,)).await,
        Err(Error::NeedsExtensions(_))
    ));
}

#[tokio::test]
async fn the_deadline_covers_the_whole_stream() {
    let (server, _, _) = start().await;
    let c = client(server.addr, Codec::Msgpack)
        .await
        .with_timeout(Duration::from_millis(300));
    // An endless stream, read as fast as it comes: only its deadline ends it.
    let mut s = c.call_stream::<_, u64>("count", (u64::MAX,)).await.unwrap();
    let mut n = 0u64;
    let end = within("the deadline", async {
        loop {
            match s.next().await {
                Some(Ok(_)) => n += 1,
                Some(Err(e)) => return e,
                None => panic!("the stream ended without its deadline"),
            }
        }
    })
    .await;
    assert!(
        matches!(&end, Error::Timeout(_))
            || matches!(&end, Error::Remote(e) if e.kind() == ErrorCode::DeadlineExceeded),
        "{end:?} after {n} items"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_blocking_client_streams_too() {
    let (server, _, dropped) = start().await;
    let addr = server.addr;
    let check = tokio::task::spawn_blocking(move || {
        for codec in [Codec::Msgpack, Codec::Bincode] {
            let mut config = ClientConfig::default();
            config.extensions = true;
            config.codec = codec;
            config.timeout = Duration::from_secs(10);
            let c = easyrpc_client::BlockingClient::connect_with(addr, config).unwrap();
            for method in ["count", "count_sync"] {
                let items: Vec<u64> = c
                    .call_stream::<_, u64>(method, (500u64,))
                    .unwrap()
                    .map(Result::unwrap)
                    .collect();
                assert_eq!(items, (0..500).collect::<Vec<_>>(), "{method} {codec:?}");
            }
            let total: i64 = c.call_upload("sum", (1i64,), 1..=1000i64).unwrap();
            assert_eq!(total, 1 + 500_500);
            let scaled: Vec<i64> = c
                .call_bidi::<_, i64, _, i64>("scale", (2i64,), 1..=500i64)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            assert_eq!(scaled, (1..=500).map(|n| n * 2).collect::<Vec<_>>());
            let mut s = c.call_stream::<_, u64>("fail_after", (2u64,)).unwrap();
            assert_eq!(s.next().unwrap().unwrap(), 0);
            assert_eq!(s.next().unwrap().unwrap(), 1);
            assert!(matches!(s.next(), Some(Err(Error::Remote(e))) if e.message == "failed after 2"));
            assert!(s.next().is_none());
            drop(s);
            // Dropped early: the server stops, and the next call reads past what it sent.
            let before = dropped.load(Ordering::SeqCst);
            let mut s = c.call_stream::<_, u64>("count", (u64::MAX,)).unwrap();
            assert_eq!(s.next().unwrap().unwrap(), 0);
            drop(s);
            let sum: i64 = c.call("add", (2, 3)).unwrap();
            assert_eq!(sum, 5);
            while dropped.load(Ordering::SeqCst) == before {
                let _: i64 = c.call("add", (2, 3)).unwrap();
            }
        }
    });
    within("the blocking client", check).await.unwrap();
}

#[tokio::test]
async fn a_million_small_items_stay_within_the_window() {
    let (server, produced, _) = start().await;
    let c = client(server.addr, Codec::Msgpack).await;
    const N: u64 = 1_000_000;
    let mut s = c.call_stream::<_, u64>("count", (N,)).await.unwrap();
    let mut next = 0;
    within("a million items", async {
        while let Some(item) = s.next().await {
            assert_eq!(item.unwrap(), next);
            next += 1;
            // The server never runs ahead of the reader by more than the window (4096 items
            // at most, for items this small): what waits in either side's memory is bounded.
            let ahead = produced.load(Ordering::SeqCst) - next;
            assert!(ahead <= 4096, "the server ran {ahead} items ahead of the reader");
        }
    })
    .await;
    assert_eq!(next, N);
}

#[tokio::test]
async fn a_million_items_uploaded() {
    let (server, _, _) = start().await;
    let c = client(server.addr, Codec::Bincode).await;
    // The server's memory is bounded by the credit it grants: a client sending past it
    // would have its stream ended (see `Hub::handle`), so the sum is only right if the
    // client kept to it.
    let total: i64 = within(
        "a million items up",
        c.call_upload("sum", (0i64,), futures_util::stream::iter(0..1_000_000i64)),
    )
    .await
    .unwrap();
    assert_eq!(total, 999_999 * 1_000_000 / 2);
}

#[tokio::test]
async fn an_upload_is_pulled_only_as_the_server_grants_credit() {
    let (server, _, _) = start().await;
    let c = client(server.addr, Codec::Msgpack).await;
    // The source counts how far it was pulled; the server reads `head` items only.
    let pulled = Arc::new(AtomicU64::new(0));
    let source = {
        let pulled = pulled.clone();
        futures_util::stream::iter(0..u64::MAX).inspect(move |_| {
            pulled.fetch_add(1, Ordering::SeqCst);
        })
    };
    let head: u64 = within("head", c.call_upload("head", (3u64,), source))
        .await
        .unwrap();
    assert_eq!(head, 3, "the sum of 0, 1, 2");
    // The server's answer ended the upload: the source was pulled no further than the
    // credit granted (64), not to the end.
    let n = pulled.load(Ordering::SeqCst);
    assert!(n <= 64, "pulled {n}");
}

#[tokio::test]
async fn many_streams_on_one_connection_at_once() {
    let (server, _, _) = start().await;
    let c = client(server.addr, Codec::Msgpack).await;
    let calls = (0..64u64).map(|k| {
        let c = c.clone();
        async move {
            let items: Vec<u64> = c
                .call_stream::<_, u64>(if k % 2 == 0 { "count" } else { "count_sync" }, (1000 + k,))
                .await
                .unwrap()
                .map(Result::unwrap)
                .collect()
                .await;
            assert_eq!(items, (0..1000 + k).collect::<Vec<_>>());
        }
    });
    within("64 streams", futures_util::future::join_all(calls)).await;
}

#[tokio::test]
async fn a_connection_cut_mid_stream_fails_every_open_stream_and_stops_the_server() {
    let (server, _, dropped) = start().await;
    // A proxy that cuts the connection when told to.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap();
    let (cut, cut_rx) = tokio::sync::oneshot::channel::<()>();
    let upstream = server.addr;
    tokio::spawn(async move {
        let (mut down, _) = listener.accept().await.unwrap();
        let mut up = tokio::net::TcpStream::connect(upstream).await.unwrap();
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
            _ = cut_rx => {}
        }
        common::reset(&down);
        // Both sides closed here.
    });
    let c = client(proxy, Codec::Msgpack).await;
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut s = c.call_stream::<_, u64>("count", (u64::MAX,)).await.unwrap();
        assert_eq!(within("item", s.next()).await.unwrap().unwrap(), 0);
        streams.push(s);
    }
    cut.send(()).unwrap();
    for mut s in streams {
        let end = within("the cut", async {
            loop {
                match s.next().await {
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return e,
                    None => panic!("a stream ended normally"),
                }
            }
        })
        .await;
        assert!(
            matches!(end, Error::ConnectionClosed | Error::Transport(_)),
            "{end:?}"
        );
    }
    // The server sees the end of its connection and drops the three streams.
    within("the server's streams dropped", async {
        while dropped.load(Ordering::SeqCst) < 3 {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

#[tokio::test]
async fn streams_stay_out_of_a_server_wide_dedup_cache() {
    // Under the dedup cache a call runs detached from its connection (so that a retry can
    // collect its answer): a stream there would not stop when its caller cancels, and a
    // retry would replay its end without its items. Streaming functions stay out of it.
    let produced = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    let server = TestServer::start(streaming_builder(produced, dropped.clone()).unstable_network(true)).await;
    let mut config = ClientConfig::default();
    config.unstable_network = true;
    let c = Client::connect_with(server.addr, config).await.unwrap();
    let mut s = c.call_stream::<_, u64>("count", (u64::MAX,)).await.unwrap();
    assert_eq!(within("item", s.next()).await.unwrap().unwrap(), 0);
    drop(s);
    let _: i64 = within("a round trip", c.call("add", (1, 1))).await.unwrap();
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        1,
        "the stream ran on after its cancellation"
    );
}

#[tokio::test]
async fn large_items_are_compressed_each_on_its_own_with_both_codecs() {
    let (server, _, _) = start().await;
    for codec in [Codec::Msgpack, Codec::Bincode] {
        let mut config = ClientConfig::default();
        config.extensions = true;
        config.codec = codec;
        config.compression(1024);
        let c = Client::connect_with(server.addr, config).await.unwrap();
        // Items below and above the threshold, in batches the server hands over together.
        for size in [100usize, 1020, 1030, 64 * 1024] {
            let blobs: Vec<serde_bytes::ByteBuf> = within("blobs", async {
                c.call_stream::<_, serde_bytes::ByteBuf>("blobs", (50u64, size))
                    .await
                    .unwrap()
                    .map(Result::unwrap)
                    .collect()
                    .await
            })
            .await;
            assert_eq!(blobs.len(), 50, "{codec:?} {size}");
            assert!(blobs
                .iter()
                .all(|b| b.len() == size / 10 * 10 && b.starts_with(b"stream me ")));
            let up = futures_util::stream::iter(blobs);
            let total: u64 = within("total_len", c.call_upload("total_len", (), up))
                .await
                .unwrap();
            assert_eq!(total, 50 * (size / 10 * 10) as u64, "{codec:?} {size}");
        }
    }
}
