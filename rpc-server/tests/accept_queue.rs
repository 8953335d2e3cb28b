//! Shutdown and the accept queue: connections the kernel has accepted but the server has
//! not yet taken are not reset when the listener closes. With `SO_REUSEPORT` (prefork)
//! nothing else takes them over: a draining worker accepts them all and answers them
//! (`ShuttingDown`, which our clients resend elsewhere) before it closes.

#[allow(dead_code)] // Each test crate uses a part of the shared helpers.
mod common;

use common::{builder, within, RawConn};
use easyrpc_proto::{encode_request, Codec, ErrorCode};
use tokio::net::TcpListener;

#[tokio::test]
async fn connections_queued_at_shutdown_are_answered_not_reset() {
    let server = builder().build().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Connected (the kernel completed each handshake) and each with a request sent, but
    // not accepted: the server does not run yet.
    let mut conns = Vec::new();
    for msgid in 0..8u64 {
        let mut conn = RawConn::connect(addr).await;
        let mut req = Vec::new();
        encode_request(
            Codec::Msgpack,
            &mut req,
            msgid,
            "add",
            &(msgid as i64, 1i64),
            None,
        )
        .unwrap();
        conn.send(&req).await;
        conns.push(conn);
    }
    // Shut down at once: `run` stops before its first accept, then drains the queue.
    within(
        "run to drain and return",
        server.run(listener, std::future::ready(())),
    )
    .await;
    for (msgid, conn) in conns.iter_mut().enumerate() {
        let msgid = msgid as u64;
        // A reset would lose the answer (and `response` would panic).
        let response = conn.response().await;
        match response.outcome {
            Ok(_) => response.assert_ok(msgid, msgid as i64 + 1),
            Err(_) => {
                response.assert_error(msgid, ErrorCode::ShuttingDown);
            }
        }
        conn.expect_closed().await;
    }
}
