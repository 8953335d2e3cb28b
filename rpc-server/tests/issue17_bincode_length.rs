//! Issue 17: one 51-byte request killed the whole server. After the bincode hello, a
//! request whose `String` argument declared a length of 2^40 made the server allocate it
//! before checking that the bytes were there (`memory allocation of 1099511627776 bytes
//! failed`, abort). The server must answer invalid params (code 2) and keep serving.
//!
//! Every wait is bounded by `common::WAIT`; the server listens on port 0.

// Only the server, `within` and the well-behaved client are used here.
#[allow(dead_code)]
mod common;

use bytes::{Buf, BytesMut};
use common::{builder, check_client, within, TestServer};
use easyrpc_proto::{decode_error, Codec, ErrorCode, Framer, Hello, Message};
use easyrpc_server::Method;
use hex_literal::hex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The exact bytes of the connection in the issue: the bincode hello, then
/// `echo(<string declaring 2^40 bytes> "abc")` with msgid 7.
const REPRODUCTION: [u8; 51] = hex!(
    "c1525043 01 01 0000"
    "27000000 00 0700000000000000 0000000000000000 0400 6563686f 01000000"
    "fd0000000000010000 616263"
);

#[tokio::test]
async fn issue17_bincode_length_of_2_pow_40_is_invalid_params() {
    let server = TestServer::start(builder().register(Method::sync_fn("echo", |(s,): (String,)| s))).await;

    let mut conn = within("connect", TcpStream::connect(server.addr)).await.unwrap();
    within("write", conn.write_all(&REPRODUCTION)).await.unwrap();

    // The server's hello, then one bincode reply to msgid 7.
    let mut buf = BytesMut::new();
    let hello = within("the server's hello", async {
        loop {
            if let Some((hello, n)) = Hello::decode(&buf).expect("a hello") {
                buf.advance(n);
                return hello;
            }
            assert!(
                conn.read_buf(&mut buf).await.unwrap() > 0,
                "closed before the hello"
            );
        }
    })
    .await;
    assert_eq!(hello.codec, Codec::Bincode);
    let mut framer = Framer::new(Codec::Bincode, 1 << 20);
    let frame = within("the reply", async {
        loop {
            if let Some(n) = framer.decode(&buf).unwrap() {
                return buf.split_to(n);
            }
            assert!(
                conn.read_buf(&mut buf).await.unwrap() > 0,
                "closed before the reply"
            );
        }
    })
    .await;
    let Ok(Message::Response { msgid, outcome }) = Message::parse(Codec::Bincode, &frame) else {
        panic!("not a response: {frame:02x?}")
    };
    assert_eq!(msgid, 7);
    let e = decode_error(Codec::Bincode, outcome.expect_err("an error reply"));
    assert_eq!(e.code, ErrorCode::InvalidParams.as_i64(), "{e}");
    assert!(e.message.contains("argument 0"), "{e}");

    // The same connection still works: a good echo on it.
    let mut req = Vec::new();
    easyrpc_proto::encode_request(Codec::Bincode, &mut req, 8, "echo", &("abc",), None).unwrap();
    within("write", conn.write_all(&req)).await.unwrap();
    let frame = within("the second reply", async {
        loop {
            if let Some(n) = framer.decode(&buf).unwrap() {
                return buf.split_to(n);
            }
            assert!(
                conn.read_buf(&mut buf).await.unwrap() > 0,
                "closed before the reply"
            );
        }
    })
    .await;
    let Ok(Message::Response {
        msgid: 8,
        outcome: Ok(result),
    }) = Message::parse(Codec::Bincode, &frame)
    else {
        panic!("not the echo reply: {frame:02x?}")
    };
    assert_eq!(Codec::Bincode.decode::<String>(result).unwrap(), "abc");

    // And so does a second connection.
    check_client(server.addr).await;
    server.stop().await;
}
