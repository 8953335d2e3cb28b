//! Helpers shared by the server's integration tests: a real server on an ephemeral port,
//! a raw TCP peer that speaks bytes, and a well-behaved client to check the server with.
//!
//! Every wait is bounded by [`WAIT`]: a server that hangs fails the test instead of
//! blocking it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use easyrpc_proto::{decode_error, Codec, ErrorCode, Framer, Hello, Message, ServerError};
use easyrpc_server::{Builder, Method, Server};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The bound on every single wait in these tests.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// Await `fut`, failing the test if it takes longer than [`WAIT`].
pub(crate) async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// Make `stream` close with a reset when it is dropped (SO_LINGER 0).
#[allow(dead_code)] // Not every test file resets connections.
pub(crate) fn reset(stream: &TcpStream) {
    socket2::SockRef::from(stream)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER");
}

/// The methods every test server has: `add` (sync) is what the well-behaved client calls.
pub(crate) fn builder() -> Builder {
    Server::builder()
        .register(Method::sync_fn("add", |(a, b): (i64, i64)| a + b))
        .register(Method::async_fn("add_async", |(a, b): (i64, i64)| async move {
            a + b
        }))
}

/// A server running on its own task, stopped when this is dropped.
pub(crate) struct TestServer {
    pub(crate) addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Build `builder` and serve it on 127.0.0.1, port 0.
    pub(crate) async fn start(builder: Builder) -> TestServer {
        // Unwrap: the test's own methods have distinct names.
        let server = builder.build().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run(listener, async {
                    let _ = rx.await;
                })
                .await;
        });
        TestServer {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A raw connection to the server.
    pub(crate) async fn raw(&self) -> RawConn {
        RawConn::connect(self.addr).await
    }

    /// Fire the shutdown future and wait for `run` to return.
    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            within("the server to stop", task).await.unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Check, on a fresh connection of its own, that a well-behaved client gets right answers.
pub(crate) async fn check_client(addr: SocketAddr) {
    let client = within("the client to connect", easyrpc_client::Client::connect(addr))
        .await
        .expect("a well-behaved client can connect");
    for (a, b) in [(2i64, 3i64), (-7, 7), (i64::MAX - 1, 1)] {
        let sum: i64 = within("add", client.call("add", (a, b)))
            .await
            .expect("add succeeds");
        assert_eq!(sum, a + b);
    }
    let sum: i64 = within("add_async", client.call("add_async", (40, 2)))
        .await
        .expect("add_async succeeds");
    assert_eq!(sum, 42);
}

/// A parsed response.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) msgid: u64,
    pub(crate) outcome: Result<Vec<u8>, ServerError>,
}

impl Response {
    /// The result decoded as `T`; panics on an error response.
    pub(crate) fn ok<T: DeserializeOwned>(&self) -> T {
        match &self.outcome {
            Ok(raw) => Codec::Msgpack.decode(raw).expect("result decodes"),
            Err(e) => panic!("expected a result for msgid {}, got error {e}", self.msgid),
        }
    }

    /// The error; panics on a successful response.
    pub(crate) fn err(&self) -> &ServerError {
        match &self.outcome {
            Ok(raw) => panic!(
                "expected an error for msgid {}, got result {raw:02x?}",
                self.msgid
            ),
            Err(e) => e,
        }
    }

    /// Assert this is the error `code` (compared as the wire number) for `msgid`.
    pub(crate) fn assert_error(&self, msgid: u64, code: ErrorCode) -> &ServerError {
        assert_eq!(self.msgid, msgid, "msgid echoed: {self:?}");
        let e = self.err();
        assert_eq!(
            e.code,
            code.as_i64(),
            "expected {code} ({}), got {e}",
            code.as_i64()
        );
        e
    }

    /// Assert this is the result `value` for `msgid`.
    pub(crate) fn assert_ok<T: DeserializeOwned + PartialEq + std::fmt::Debug>(&self, msgid: u64, value: T) {
        assert_eq!(self.msgid, msgid, "msgid echoed: {self:?}");
        assert_eq!(self.ok::<T>(), value);
    }
}

/// A raw TCP peer: writes whatever bytes it is given and splits what comes back into
/// messages with the protocol's own [`Framer`].
pub(crate) struct RawConn {
    stream: TcpStream,
    rbuf: BytesMut,
    framer: Framer,
}

impl RawConn {
    pub(crate) async fn connect(addr: SocketAddr) -> RawConn {
        let stream = within("connect", TcpStream::connect(addr))
            .await
            .expect("connect");
        stream.set_nodelay(true).unwrap();
        RawConn {
            stream,
            rbuf: BytesMut::new(),
            framer: Framer::new(Codec::Msgpack, 64 << 20),
        }
    }

    /// Write all of `bytes` in one `write_all`.
    pub(crate) async fn send(&mut self, bytes: &[u8]) {
        within("write", self.stream.write_all(bytes))
            .await
            .expect("write");
    }

    /// Close the connection with a reset (SO_LINGER 0), as a peer that is gone for good:
    /// the server's next read fails.
    #[allow(dead_code)] // Not every test file resets connections.
    pub(crate) fn reset(self) {
        reset(&self.stream);
    }

    /// Close our write half: the server reads EOF.
    pub(crate) async fn shutdown_write(&mut self) {
        within("shutdown", self.stream.shutdown())
            .await
            .expect("shutdown");
    }

    /// The next message's bytes, or `None` once the server has closed the connection
    /// (EOF, or a reset). Panics if the connection closes in the middle of a message.
    pub(crate) async fn read_frame(&mut self) -> Option<Vec<u8>> {
        within("a message or EOF from the server", async {
            loop {
                if let Some(n) = self
                    .framer
                    .decode(&self.rbuf)
                    .expect("the server sends valid msgpack")
                {
                    let frame = self.rbuf[..n].to_vec();
                    self.rbuf.advance(n);
                    return Some(frame);
                }
                match self.stream.read_buf(&mut self.rbuf).await {
                    Ok(0) => {
                        assert!(
                            self.rbuf.is_empty(),
                            "server closed mid-message: {:02x?}",
                            &self.rbuf[..]
                        );
                        return None;
                    }
                    Ok(_) => {}
                    Err(e) if is_reset(&e) => {
                        assert!(
                            self.rbuf.is_empty(),
                            "server reset mid-message: {:02x?}",
                            &self.rbuf[..]
                        );
                        return None;
                    }
                    Err(e) => panic!("read failed: {e}"),
                }
            }
        })
        .await
    }

    /// The next message, which must be a response.
    pub(crate) async fn response(&mut self) -> Response {
        let frame = self
            .read_frame()
            .await
            .expect("a response, not a closed connection");
        parse_response(&frame)
    }

    /// Assert the server closes the connection without sending anything more.
    pub(crate) async fn expect_closed(&mut self) {
        if let Some(frame) = self.read_frame().await {
            panic!("expected the connection to close, got {:02x?}", frame);
        }
    }

    /// Say hello (msgpack, no session) and read the server's hello back: the connection may
    /// then use the extensions (request timeouts, `rpc.cancel`).
    #[allow(dead_code)] // Not every test file uses the extensions.
    pub(crate) async fn hello(&mut self) {
        let mut hello = Vec::new();
        Hello::new(Codec::Msgpack).encode(&mut hello);
        self.send(&hello).await;
        within("the server's hello", async {
            loop {
                match Hello::decode(&self.rbuf) {
                    Ok(Some((h, n))) => {
                        assert_eq!(h, Hello::new(Codec::Msgpack), "the server's hello");
                        self.rbuf.advance(n);
                        return;
                    }
                    Ok(None) => {
                        let n = self
                            .stream
                            .read_buf(&mut self.rbuf)
                            .await
                            .expect("read the hello");
                        assert!(n > 0, "the server closed instead of answering the hello");
                    }
                    Err(e) => panic!("bad hello from the server: {e} in {:02x?}", &self.rbuf[..]),
                }
            }
        })
        .await;
    }

    /// Send `add(a, b)` with `msgid` and check the answer: the connection still works.
    pub(crate) async fn check_add(&mut self, msgid: u64, a: i64, b: i64) {
        let mut req = Vec::new();
        easyrpc_proto::encode_request(Codec::Msgpack, &mut req, msgid, "add", &(a, b), None).unwrap();
        self.send(&req).await;
        self.response().await.assert_ok(msgid, a + b);
    }
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe
    )
}

/// Parse one frame, which must be a msgpack response.
pub(crate) fn parse_response(frame: &[u8]) -> Response {
    match Message::parse(Codec::Msgpack, frame) {
        Ok(Message::Response { msgid, outcome }) => Response {
            msgid,
            outcome: outcome
                .map(<[u8]>::to_vec)
                .map_err(|raw| decode_error(Codec::Msgpack, raw)),
        },
        other => panic!("expected a response, got {other:?} from {frame:02x?}"),
    }
}

/// Words from a tiny vocabulary: zstd shrinks them severalfold.
pub(crate) fn text(n: usize) -> Vec<u8> {
    let words = ["alpha ", "beta ", "gamma ", "delta ", "epsilon "];
    let mut s = Vec::with_capacity(n + 8);
    let mut i = 0usize;
    while s.len() < n {
        s.extend_from_slice(words[(i * 7 + i / 3) % words.len()].as_bytes());
        i += 1;
    }
    s.truncate(n);
    s
}

/// Bytes zstd cannot shrink (xorshift).
pub(crate) fn noise(n: usize) -> Vec<u8> {
    seeded_noise(n, 0)
}

/// [`noise`] that differs with `seed`, so that a reply carrying another call's bytes (or a
/// piece of the wrong ones) is caught.
pub(crate) fn seeded_noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = (0x2545_f491_4f6c_dd1du64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
