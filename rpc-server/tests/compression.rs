//! zstd compression of large messages (the hello's `ZSTD` feature), end to end: both
//! clients and both codecs through a real server, a byte-counting relay to see what
//! crossed the wire, and raw peers for plain clients, corrupt frames and bombs.
//!
//! Deterministic: port 0, no sleeps; every wait is bounded by `common::WAIT`.

#[allow(dead_code)] // Each test crate uses a part of the shared helpers.
mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use common::{builder, check_client, noise, parse_response, text, within, TestServer};
use easyrpc_client::{BlockingClient, Client, Config};
use easyrpc_proto::handshake::features;
use easyrpc_proto::{encode_request, Codec, Compression, Framer, Hello, Message};
use easyrpc_server::{Builder, Method};
use hex_literal::hex;
use serde_bytes::ByteBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const THRESHOLD: usize = 4096;

fn echo_server() -> Builder {
    builder().register(Method::sync_fn("echo", |(data,): (ByteBuf,)| data))
}

/// Payload sizes whose echo request and reply are a few bytes either side of the
/// threshold (the envelope is a few dozen bytes), then large ones.
fn sizes() -> Vec<(Vec<u8>, &'static str)> {
    let mut v: Vec<_> = (THRESHOLD - 48..=THRESHOLD + 4)
        .map(|n| (text(n), "around the threshold"))
        .collect();
    v.push((text(1 << 20), "1 MiB of text"));
    v.push((noise(1 << 20), "1 MiB of noise"));
    v
}

/// A relay between the clients and the server that counts the bytes in each direction.
struct Relay {
    addr: SocketAddr,
    up: Arc<AtomicU64>,
    down: Arc<AtomicU64>,
}

impl Relay {
    async fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (up, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (u, d) = (up.clone(), down.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pipe(cr, sw, u.clone()));
                tokio::spawn(pipe(sr, cw, d.clone()));
            }
        });
        Relay { addr, up, down }
    }

    /// Bytes forwarded so far (client to server, server to client); reset to 0.
    fn take(&self) -> (u64, u64) {
        (
            self.up.swap(0, Ordering::SeqCst),
            self.down.swap(0, Ordering::SeqCst),
        )
    }
}

/// Copy until EOF, counting each chunk before it is forwarded (so that when the peer has
/// read it, it is counted).
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    n: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(k) => {
                n.fetch_add(k as u64, Ordering::SeqCst);
                if to.write_all(&buf[..k]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}

fn config(codec: Codec, compress: bool) -> Config {
    let mut c = Config::default();
    c.codec = codec;
    if compress {
        c.compression(THRESHOLD);
    }
    c
}

/// The sizes of the echo request (msgid 2, as our client sends it: with its timeout
/// element after a hello) and of its reply, uncompressed.
fn plain_sizes(codec: Codec, hello: bool, data: &[u8]) -> (u64, u64) {
    let params = (ByteBuf::from(data),);
    let timeout = hello.then(|| Config::default().timeout);
    let mut req = Vec::new();
    easyrpc_proto::encode_request_ext(codec, &mut req, 2, "echo", &params, timeout, None).unwrap();
    let mut reply = Vec::new();
    easyrpc_proto::encode_response_ok(codec, &mut reply, 2, &params.0).unwrap();
    (req.len() as u64, reply.len() as u64)
}

/// What the echo of `data` cost on the wire in each direction: exactly the plain message
/// at or below the threshold (or incompressible, or with compression off); above it,
/// compressible, less (a quarter at most for 1 MiB).
fn check_wire(
    what: &str,
    codec: Codec,
    data: &[u8],
    (hello, compress): (bool, bool),
    (up, down): (u64, u64),
) {
    let compressible = data[..64] == text(64)[..];
    let (req, reply) = plain_sizes(codec, hello, data);
    for (dir, plain, n) in [("request", req, up), ("reply", reply, down)] {
        if compress && compressible && plain > THRESHOLD as u64 {
            assert!(n < plain, "{what}: {dir} of {plain} bytes took {n}");
            if data.len() > 1 << 16 {
                assert!(n < plain / 4, "{what}: {dir} of {plain} bytes took {n}");
            }
        } else {
            assert_eq!(n, plain, "{what}: {dir} sent as it was");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_client_round_trips_with_both_codecs() {
    let server = TestServer::start(echo_server()).await;
    let relay = Relay::start(server.addr).await;
    for codec in [Codec::Msgpack, Codec::Bincode] {
        for compress in [true, false] {
            let client = within(
                "connect",
                Client::connect_with(relay.addr, config(codec, compress)),
            )
            .await
            .unwrap();
            // The first call completes the hello.
            let _: i64 = within("add", client.call("add", (1, 2))).await.unwrap();
            relay.take();
            for (data, what) in sizes() {
                let back: ByteBuf = within(what, client.call("echo", (ByteBuf::from(data.clone()),)))
                    .await
                    .unwrap();
                assert!(back == data, "{codec:?} {what} ({} bytes)", data.len());
                let what = format!("{codec:?} {what} {}", data.len());
                let hello = compress || codec != Codec::Msgpack;
                check_wire(&what, codec, &data, (hello, compress), relay.take());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_client_round_trips_with_both_codecs() {
    let server = TestServer::start(echo_server()).await;
    let relay = Arc::new(Relay::start(server.addr).await);
    let r = relay.clone();
    within(
        "the blocking client's calls",
        tokio::task::spawn_blocking(move || {
            for codec in [Codec::Msgpack, Codec::Bincode] {
                for compress in [true, false] {
                    let client = BlockingClient::connect_with(r.addr, config(codec, compress)).unwrap();
                    let _: i64 = client.call("add", (1, 2)).unwrap();
                    r.take();
                    for (data, what) in sizes() {
                        let back: ByteBuf = client.call("echo", (ByteBuf::from(data.clone()),)).unwrap();
                        assert!(back == data, "{codec:?} {what} ({} bytes)", data.len());
                        let what = format!("{codec:?} {what} {}", data.len());
                        let hello = compress || codec != Codec::Msgpack;
                        check_wire(&what, codec, &data, (hello, compress), r.take());
                    }
                }
            }
        }),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_server_with_compression_off_gets_and_sends_plain_messages() {
    let server = TestServer::start(echo_server().compression(None)).await;
    let relay = Relay::start(server.addr).await;
    let client = within(
        "connect",
        Client::connect_with(relay.addr, config(Codec::Msgpack, true)),
    )
    .await
    .unwrap();
    let _: i64 = within("add", client.call("add", (1, 2))).await.unwrap();
    relay.take();
    let data = text(1 << 20);
    let back: ByteBuf = within("echo", client.call("echo", (ByteBuf::from(data.clone()),)))
        .await
        .unwrap();
    assert!(back == data);
    // The client said hello (offering zstd); the server declined.
    check_wire(
        "compression off on the server",
        Codec::Msgpack,
        &data,
        (true, false),
        relay.take(),
    );
}

/// A raw peer: our hello (or none), then bytes, framed by the protocol's own [`Framer`].
struct Raw {
    stream: TcpStream,
    rbuf: BytesMut,
    framer: Framer,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        let stream = within("connect", TcpStream::connect(addr)).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Raw {
            stream,
            rbuf: BytesMut::new(),
            framer: Framer::new(Codec::Msgpack, 64 << 20),
        }
    }

    /// Say hello offering `offered`; returns the features the server agreed to.
    async fn hello(&mut self, offered: u32) -> u32 {
        let mut hello = Vec::new();
        Hello::new(Codec::Msgpack)
            .with_features(offered)
            .encode(&mut hello);
        self.send(&hello).await;
        within("the server's hello", async {
            loop {
                if let Some((h, n)) = Hello::decode(&self.rbuf).unwrap() {
                    self.rbuf.advance(n);
                    return h.features;
                }
                let n = self.stream.read_buf(&mut self.rbuf).await.unwrap();
                assert!(n > 0, "closed instead of a hello");
            }
        })
        .await
    }

    async fn send(&mut self, bytes: &[u8]) {
        within("write", self.stream.write_all(bytes)).await.unwrap();
    }

    /// The next message, or `None` at EOF or a reset.
    async fn read_frame(&mut self) -> Option<Vec<u8>> {
        within("a message or EOF", async {
            loop {
                if let Some(n) = self.framer.decode(&self.rbuf).unwrap() {
                    let frame = self.rbuf[..n].to_vec();
                    self.rbuf.advance(n);
                    return Some(frame);
                }
                match self.stream.read_buf(&mut self.rbuf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
    }

    async fn echo(&mut self, msgid: u64, data: &[u8]) -> Vec<u8> {
        let mut req = Vec::new();
        encode_request(
            Codec::Msgpack,
            &mut req,
            msgid,
            "echo",
            &(ByteBuf::from(data),),
            None,
        )
        .unwrap();
        self.send(&req).await;
        self.read_frame().await.expect("a reply")
    }
}

/// The message inside a compressed msgpack message (ext 8/16/32 of type 90), read with the
/// zstd crate as another implementation would, from the README's description alone.
fn unwrap_compressed(frame: &[u8]) -> Option<Vec<u8>> {
    let z = match frame {
        [0xc7, _, 0x5a, z @ ..] | [0xc8, _, _, 0x5a, z @ ..] | [0xc9, _, _, _, _, 0x5a, z @ ..] => z,
        _ => return None,
    };
    let size = zstd::zstd_safe::get_frame_content_size(z).unwrap().unwrap();
    Some(zstd::bulk::decompress(z, size as usize).unwrap())
}

/// A compressed msgpack message holding `msg`, made as another implementation would.
fn wrap_compressed(msg: &[u8]) -> Vec<u8> {
    let z = zstd::bulk::compress(msg, 3).unwrap();
    let mut out = vec![0xc9];
    out.extend_from_slice(&(z.len() as u32).to_be_bytes());
    out.push(0x5a);
    out.extend_from_slice(&z);
    out
}

#[tokio::test]
async fn a_raw_peer_that_offers_zstd_gets_compressed_replies_and_may_send_them() {
    let server = TestServer::start(echo_server()).await;
    let mut conn = Raw::connect(server.addr).await;
    assert_eq!(conn.hello(features::ZSTD | 0x8000).await, features::ZSTD);
    let data = text(100_000);
    // A plain request, a compressed reply.
    let frame = conn.echo(1, &data).await;
    assert!(frame.len() < data.len() / 4, "{} bytes", frame.len());
    let reply = unwrap_compressed(&frame).expect("a compressed reply");
    let r = parse_response(&reply);
    assert_eq!(r.msgid, 1);
    assert!(r.ok::<ByteBuf>() == data);
    // A compressed request, by hand.
    let mut req = Vec::new();
    encode_request(
        Codec::Msgpack,
        &mut req,
        2,
        "echo",
        &(ByteBuf::from(&data[..]),),
        None,
    )
    .unwrap();
    conn.send(&wrap_compressed(&req)).await;
    let reply = unwrap_compressed(&conn.read_frame().await.unwrap()).unwrap();
    assert_eq!(parse_response(&reply).msgid, 2);
    // Small replies stay plain.
    let frame = conn.echo(3, b"small").await;
    assert_eq!(frame[0], 0x94);
}

#[tokio::test]
async fn a_plain_client_gets_plain_replies_from_a_server_with_compression_on() {
    let server = TestServer::start(echo_server().compression(Some(Compression::new(0)))).await;
    // No hello at all.
    let mut conn = Raw::connect(server.addr).await;
    let data = text(1 << 20);
    let frame = conn.echo(7, &data).await;
    assert!(matches!(
        Message::parse(Codec::Msgpack, &frame),
        Ok(Message::Response { msgid: 7, .. })
    ));
    assert!(parse_response(&frame).ok::<ByteBuf>() == data);
    // A hello that does not offer zstd.
    let mut conn = Raw::connect(server.addr).await;
    assert_eq!(conn.hello(features::STREAMS).await, features::STREAMS);
    let frame = conn.echo(8, &data).await;
    assert!(parse_response(&frame).ok::<ByteBuf>() == data);
}

#[tokio::test]
async fn a_corrupt_compressed_frame_closes_only_its_connection() {
    let server = TestServer::start(echo_server()).await;
    // Another connection, open before and after.
    let mut other = Raw::connect(server.addr).await;
    assert_eq!(other.hello(features::ZSTD).await, features::ZSTD);
    let small = other.echo(1, b"before").await;
    assert_eq!(
        parse_response(&small).ok::<ByteBuf>(),
        ByteBuf::from(&b"before"[..])
    );

    let mut req = Vec::new();
    encode_request(
        Codec::Msgpack,
        &mut req,
        5,
        "echo",
        &(ByteBuf::from(text(50_000)),),
        None,
    )
    .unwrap();
    let mut bad = wrap_compressed(&req);
    let n = bad.len();
    for b in &mut bad[20..n - 4] {
        *b = b.rotate_left(3) ^ 0xa5;
    }
    for frame in [bad, hex!("c7 04 5a 00 01 02 03").to_vec()] {
        let mut conn = Raw::connect(server.addr).await;
        assert_eq!(conn.hello(features::ZSTD).await, features::ZSTD);
        conn.send(&frame).await;
        assert_eq!(
            conn.read_frame().await,
            None,
            "closed, no reply (the msgid is inside)"
        );
    }

    let big = text(100_000);
    let frame = other.echo(2, &big).await;
    assert!(parse_response(&unwrap_compressed(&frame).unwrap()).ok::<ByteBuf>() == big);
    check_client(server.addr).await;
}

#[tokio::test]
async fn a_zstd_bomb_is_refused_from_its_header() {
    let server = TestServer::start(echo_server().max_message_size(1 << 20)).await;
    // A real zstd frame of 1 GiB of zeros: 8192 RLE blocks of 128 KiB, 32 KiB in all.
    let mut z = hex!("28 b5 2f fd e0").to_vec();
    z.extend_from_slice(&(1u64 << 30).to_le_bytes());
    for i in 0..8192u32 {
        let head = u32::from(i == 8191) | (1 << 1) | (128 * 1024) << 3;
        z.extend_from_slice(&head.to_le_bytes()[..3]);
        z.push(0);
    }
    let mut frame = vec![0xc9];
    frame.extend_from_slice(&(z.len() as u32).to_be_bytes());
    frame.push(0x5a);
    frame.extend_from_slice(&z);
    let mut conn = Raw::connect(server.addr).await;
    assert_eq!(conn.hello(features::ZSTD).await, features::ZSTD);
    conn.send(&frame).await;
    assert_eq!(conn.read_frame().await, None);
    check_client(server.addr).await;
}
