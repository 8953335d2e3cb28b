//! Issue 17, the client side: a hostile server's bincode reply declaring a length of 2^40
//! made the client allocate it (`memory allocation of 1099511627776 bytes failed`, abort).
//! The call must fail with an error instead, for the async and the blocking client.
//!
//! The fake server is a plain tokio listener on port 0 that answers the hello and then
//! every request with the reply it is given. Every wait is bounded by [`WAIT`].

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use easyrpc_client::{BlockingClient, Client, Config, Error};
use easyrpc_proto::{Codec, ErrorCode, Framer, Hello, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(10);

async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// bincode's varint for 2^40: a u64 follows, little-endian.
const TERA: [u8; 9] = [0xfd, 0, 0, 0, 0, 0, 1, 0, 0];

/// The body of a bincode reply after its msgid: status 0 (ok) and a result.
fn ok_reply(result: &[u8]) -> Vec<u8> {
    [&[0][..], result].concat()
}

/// A fake server that answers the hello, then every request with `body` (status and
/// value) under the request's msgid. Returns its address.
async fn fake_server(body: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(serve(conn, body.clone()));
        }
    });
    addr
}

async fn serve(mut conn: TcpStream, body: Vec<u8>) {
    let mut buf = BytesMut::new();
    loop {
        match Hello::decode(&buf) {
            Ok(Some((hello, n))) => {
                buf.advance(n);
                assert_eq!(hello.codec, Codec::Bincode);
                let mut out = Vec::new();
                Hello::new(Codec::Bincode)
                    .with_session(hello.session)
                    .encode(&mut out);
                conn.write_all(&out).await.unwrap();
                break;
            }
            Ok(None) => {}
            Err(e) => panic!("not a hello: {e}"),
        }
        if conn.read_buf(&mut buf).await.unwrap_or(0) == 0 {
            return;
        }
    }
    let mut framer = Framer::new(Codec::Bincode, 1 << 20);
    loop {
        while let Some(n) = framer.decode(&buf).unwrap() {
            let frame = buf.split_to(n);
            if let Ok(Message::Request { msgid, .. }) = Message::parse(Codec::Bincode, &frame) {
                let mut reply = Vec::new();
                reply.extend_from_slice(&((1 + 8 + body.len()) as u32).to_le_bytes());
                reply.push(1); // a response
                reply.extend_from_slice(&msgid.to_le_bytes());
                reply.extend_from_slice(&body);
                if conn.write_all(&reply).await.is_err() {
                    return;
                }
            }
        }
        if conn.read_buf(&mut buf).await.unwrap_or(0) == 0 {
            return;
        }
    }
}

fn config() -> Config {
    let mut config = Config::default();
    config.codec = Codec::Bincode;
    config.timeout = WAIT;
    config
}

#[tokio::test]
async fn issue17_async_client_survives_a_result_declaring_2_pow_40_bytes() {
    let addr = fake_server(ok_reply(&TERA)).await;
    let client = within("connect", Client::connect_with(addr, config()))
        .await
        .unwrap();
    for _ in 0..2 {
        let r: Result<String, Error> = within("the call", client.call("echo", ("abc",))).await;
        match r {
            Err(Error::Decode(e)) => eprintln!("{e}"),
            Err(Error::Result(e)) => eprintln!("{e}"),
            other => panic!("expected a decode error, got {other:?}"),
        }
        let r: Result<serde_bytes::ByteBuf, Error> = within("the call", client.call("echo", ("abc",))).await;
        assert!(matches!(r, Err(Error::Decode(_) | Error::Result(_))), "{r:?}");
        let r: Result<Vec<String>, Error> = within("the call", client.call("echo", ("abc",))).await;
        assert!(matches!(r, Err(Error::Decode(_) | Error::Result(_))), "{r:?}");
    }
}

#[tokio::test]
async fn issue17_async_client_survives_an_error_declaring_2_pow_40_bytes() {
    // Status 1 (error), then (code 1, a message declaring 2^40 bytes).
    let addr = fake_server([&[1, 2][..], &TERA].concat()).await;
    let client = within("connect", Client::connect_with(addr, config()))
        .await
        .unwrap();
    let r: Result<String, Error> = within("the call", client.call("echo", ("abc",))).await;
    match r {
        Err(Error::Remote(e)) => assert_eq!(e.kind(), ErrorCode::Unknown, "{e}"),
        other => panic!("expected a remote error, got {other:?}"),
    }
}

#[tokio::test]
async fn issue17_blocking_client_survives_a_result_declaring_2_pow_40_bytes() {
    let addr = fake_server(ok_reply(&TERA)).await;
    let r = within(
        "the blocking call",
        tokio::task::spawn_blocking(move || {
            let client = BlockingClient::connect_with(addr, config())?;
            client.call::<_, String>("echo", ("abc",))
        }),
    )
    .await
    .unwrap();
    assert!(matches!(r, Err(Error::Decode(_) | Error::Result(_))), "{r:?}");
}
