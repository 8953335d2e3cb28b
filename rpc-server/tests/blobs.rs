//! `Blob` arguments and results end to end: large ones are sliced out of the message they
//! came in and written from their own buffers (vectored), and every path where they must be
//! copied instead (compression, the dedup cache, the blocking client's replies under
//! 256 KiB) still carries them whole. Both clients, both codecs, through a real server.
//!
//! Deterministic: port 0, no sleeps; every wait is bounded by `common::WAIT`.

#[allow(dead_code)] // Each test crate uses a part of the shared helpers.
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{builder, seeded_noise, text, within, TestServer};
use easyrpc_client::{BlockingClient, Client, Config};
use easyrpc_proto::blob::SHARE_MIN;
use easyrpc_proto::{Blob, Codec};
use easyrpc_server::{Builder, Method};
use serde_bytes::ByteBuf;

const CODECS: [Codec; 2] = [Codec::Msgpack, Codec::Bincode];

const SIZES: [usize; 7] = [0, 100, SHARE_MIN - 1, SHARE_MIN, SHARE_MIN + 1, 700_000, 5 << 20];

fn blob_server() -> Builder {
    builder()
        .max_message_size(16 << 20)
        .register(Method::async_fn(
            "echo_blob",
            |(data,): (Blob,)| async move { data },
        ))
        .register(Method::sync_fn("echo_blob_sync", |(data,): (Blob,)| data))
        // A blob in a larger result, between other values.
        .register(Method::async_fn("wrap", |(tag, data): (u32, Blob)| async move {
            (tag, data.clone(), tag + 1, data)
        }))
        // A client's `Blob` is an ordinary byte string to a `ByteBuf` function, and back.
        .register(Method::sync_fn("echo_bytebuf", |(data,): (ByteBuf,)| data))
}

fn config(codec: Codec) -> Config {
    let mut c = Config::default();
    c.codec = codec;
    c.max_message_size = 16 << 20;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_of_every_size_echo_through_both_clients_and_codecs() {
    let srv = TestServer::start(blob_server()).await;
    for codec in CODECS {
        let client = within("connect", Client::connect_with(srv.addr, config(codec)))
            .await
            .unwrap();
        for (i, &n) in SIZES.iter().enumerate() {
            let data = seeded_noise(n, i as u64);
            for method in ["echo_blob", "echo_blob_sync", "echo_bytebuf"] {
                let got: Blob = within(method, client.call(method, (Blob::from(data.clone()),)))
                    .await
                    .unwrap();
                assert!(got[..] == data[..], "{codec:?} {method} {n}");
            }
            let (a, x, b, y): (u32, Blob, u32, Blob) =
                within("wrap", client.call("wrap", (7u32, Blob::from(data.clone()))))
                    .await
                    .unwrap();
            assert_eq!((a, b), (7, 8));
            assert!(x[..] == data[..] && y[..] == data[..], "{codec:?} wrap {n}");
        }
        let addr = srv.addr;
        let blocking = tokio::task::spawn_blocking(move || {
            let c = BlockingClient::connect_with(addr, config(codec)).unwrap();
            for (i, &n) in SIZES.iter().enumerate() {
                let data = seeded_noise(n, 100 + i as u64);
                for method in ["echo_blob", "echo_blob_sync", "echo_bytebuf"] {
                    let got: Blob = c.call(method, (Blob::from(data.clone()),)).unwrap();
                    assert!(got[..] == data[..], "blocking {codec:?} {method} {n}");
                }
            }
        });
        within("the blocking client", blocking).await.unwrap();
    }
    srv.stop().await;
}

/// Two large blobs of one reply, decoded as slices of it, lie in one buffer: the second
/// starts right after the first and the few bytes between them (`tag + 1` and the second's
/// header). Copies would each be an allocation of their own.
fn one_after_the_other(x: &Blob, y: &Blob) -> bool {
    let gap = (y.as_ptr() as usize).wrapping_sub(x.as_ptr() as usize + x.len());
    gap < 16
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_blob_results_are_slices_of_the_reply_in_both_clients() {
    let srv = TestServer::start(blob_server()).await;
    // Over the blocking client's kept read buffer (256 KiB): such a reply is read into a
    // buffer of its own and handed over.
    let sizes = [700_000, 5 << 20];
    for codec in CODECS {
        let client = within("connect", Client::connect_with(srv.addr, config(codec)))
            .await
            .unwrap();
        for n in sizes {
            let data = seeded_noise(n, 7);
            let (_, x, _, y): (u32, Blob, u32, Blob) =
                within("wrap", client.call("wrap", (7u32, Blob::from(data.clone()))))
                    .await
                    .unwrap();
            assert!(x[..] == data[..] && y[..] == data[..], "{codec:?} {n}");
            assert!(one_after_the_other(&x, &y), "async {codec:?} {n}: copied");
        }
        let addr = srv.addr;
        let blocking = tokio::task::spawn_blocking(move || {
            let c = BlockingClient::connect_with(addr, config(codec)).unwrap();
            for n in sizes {
                let data = seeded_noise(n, 8);
                let (_, x, _, y): (u32, Blob, u32, Blob) =
                    c.call("wrap", (7u32, Blob::from(data.clone()))).unwrap();
                assert!(x[..] == data[..] && y[..] == data[..], "blocking {codec:?} {n}");
                assert!(one_after_the_other(&x, &y), "blocking {codec:?} {n}: copied");
                // The connection goes on with small replies after the large one.
                let v: i64 = c.call("add_async", (2i64, 3i64)).unwrap();
                assert_eq!(v, 5);
                // A smaller blob is copied out of the kept buffer, and is whole.
                let small = seeded_noise(SHARE_MIN + 1, 9);
                let got: Blob = c.call("echo_blob", (Blob::from(small.clone()),)).unwrap();
                assert!(got[..] == small[..], "blocking {codec:?} after {n}");
            }
        });
        within("the blocking client", blocking).await.unwrap();
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_calls_in_flight_mix_large_blobs_and_small_replies() {
    let srv = TestServer::start(blob_server()).await;
    for codec in CODECS {
        let client = Arc::new(
            within("connect", Client::connect_with(srv.addr, config(codec)))
                .await
                .unwrap(),
        );
        let mut calls = Vec::new();
        for i in 0..48u64 {
            let client = client.clone();
            calls.push(tokio::spawn(async move {
                if i % 3 == 0 {
                    let v: i64 = client.call("add_async", (i as i64, 1i64)).await.unwrap();
                    assert_eq!(v, i as i64 + 1);
                } else {
                    let data = seeded_noise(SHARE_MIN / 2 + (i as usize) * 37_000, i);
                    let got: Blob = client
                        .call("echo_blob", (Blob::from(data.clone()),))
                        .await
                        .unwrap();
                    assert!(got[..] == data[..], "{codec:?} call {i}");
                }
            }));
        }
        for c in calls {
            within("a call", c).await.unwrap();
        }
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_connections_carry_blobs_whole() {
    let srv = TestServer::start(blob_server()).await;
    for codec in CODECS {
        let mut cfg = config(codec);
        cfg.compression(4096);
        let client = within("connect", Client::connect_with(srv.addr, cfg.clone()))
            .await
            .unwrap();
        for data in [text(300_000), seeded_noise(300_000, 3)] {
            let got: Blob = within("echo", client.call("echo_blob", (Blob::from(data.clone()),)))
                .await
                .unwrap();
            assert!(got[..] == data[..], "{codec:?}");
        }
        let addr = srv.addr;
        within(
            "the blocking client",
            tokio::task::spawn_blocking(move || {
                let c = BlockingClient::connect_with(addr, cfg).unwrap();
                let data = text(300_000);
                let got: Blob = c.call("echo_blob", (Blob::from(data.clone()),)).unwrap();
                assert!(got[..] == data[..], "blocking {codec:?}");
            }),
        )
        .await
        .unwrap();
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_reply_kept_in_the_dedup_cache_is_whole() {
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let srv = TestServer::start(blob_server().unstable_network(true).register(Method::async_fn(
        "echo_counted",
        move |(data,): (Blob,)| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move { data }
        },
    )))
    .await;
    for codec in CODECS {
        let mut cfg = config(codec);
        cfg.unstable_network = true;
        let client = within("connect", Client::connect_with(srv.addr, cfg))
            .await
            .unwrap();
        let data = seeded_noise(SHARE_MIN * 3, 9);
        let got: Blob = within("echo", client.call("echo_counted", (Blob::from(data.clone()),)))
            .await
            .unwrap();
        assert!(got[..] == data[..], "{codec:?}");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    srv.stop().await;
}
