//! Issue 11, typed errors: a function returning `Result<T, E>` with a `Serialize` `E` sends
//! `[3, message, data]`, and its stubs return `CallError<E>`, over both codecs and both
//! clients; a plain MessagePack-RPC peer still reads the code and the message first; an `E`
//! that is only `Display` keeps `[3, message]`.
//!
//! Every wait is bounded by [`LIMIT`]; nothing sleeps.

use std::net::SocketAddr;
use std::time::Duration;

use easyrpc::{
    register, BlockingClient, Builder, CallError, Client, ClientConfig, Codec, ErrorCode, ErrorShape, Method,
    Server,
};
use easyrpc_proto::{decode_error, Framer, Message};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::timeout;

/// The bound on every wait: far above what any step takes, so that only a hang trips it.
const LIMIT: Duration = Duration::from_secs(10);

// ---- The served functions -------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum TodoError {
    NotFound(u64),
    Locked { by: String },
}

impl std::fmt::Display for TodoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TodoError::NotFound(id) => write!(f, "todo {id} not found"),
            TodoError::Locked { by } => write!(f, "locked by {by}"),
        }
    }
}

impl std::error::Error for TodoError {}

#[register]
fn get_todo(id: u64) -> Result<String, TodoError> {
    match id {
        1 => Ok("write the tests".to_owned()),
        7 => Err(TodoError::Locked { by: "ann".to_owned() }),
        _ => Err(TodoError::NotFound(id)),
    }
}

#[register]
async fn get_todo_async(id: u64) -> Result<String, TodoError> {
    tokio::task::yield_now().await;
    get_todo(id)
}

/// An error type that is only `Display`: today's behaviour.
#[derive(Debug)]
struct Opaque(u64);

impl std::fmt::Display for Opaque {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "opaque {}", self.0)
    }
}

#[register]
fn opaque(id: u64) -> Result<u64, Opaque> {
    Err(Opaque(id))
}

#[register]
async fn checked_div(a: i64, b: i64) -> Result<i64, String> {
    a.checked_div(b)
        .ok_or_else(|| format!("cannot divide {a} by zero"))
}

mod app {
    /// A one-parameter alias, as `anyhow::Result` is: the stubs keep `easyrpc::Error`, and the
    /// server still sends the data.
    pub(crate) type Result<T> = std::result::Result<T, super::TodoError>;
}

#[register]
fn get_todo_aliased(id: u64) -> app::Result<String> {
    get_todo(id)
}

/// The client's view, by signature alone.
mod api {
    use super::TodoError;

    easyrpc::declare! {
        pub fn get_todo(id: u64) -> Result<String, TodoError>;
        #[rpc(name = "checked_div")]
        pub fn div(a: i64, b: i64) -> Result<i64, String>;
    }
}

// ---- Harness --------------------------------------------------------------------------

/// A server with every function above.
fn builder() -> Builder {
    Server::builder()
        .register(get_todo::method())
        .register(get_todo_async::method())
        .register(opaque::method())
        .register(checked_div::method())
        .register(get_todo_aliased::method())
        // Without the macro.
        .register(Method::typed_sync_fn("typed_sync", |(id,): (u64,)| get_todo(id)))
        .register(Method::typed_async_fn(
            "typed_async",
            |(id,): (u64,)| async move { get_todo(id) },
        ))
        .register(Method::try_sync_fn("try_sync", |(id,): (u64,)| get_todo(id)))
}

/// Serve `builder` on 127.0.0.1, port 0; it stops when the returned sender is dropped.
async fn serve(builder: Builder) -> (SocketAddr, oneshot::Sender<()>) {
    let server = builder.build().expect("distinct names");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        server
            .run(listener, async {
                let _ = stopped.await;
            })
            .await;
    });
    (addr, stop)
}

async fn start() -> (SocketAddr, oneshot::Sender<()>) {
    serve(builder()).await
}

fn config(codec: Codec) -> ClientConfig {
    let mut config = ClientConfig::default();
    config.codec = codec;
    config
}

async fn connect(addr: SocketAddr, codec: Codec) -> Client {
    timeout(LIMIT, Client::connect_with(addr, config(codec)))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// A plain MessagePack-RPC peer (no hello): sends `request`, returns the response frame.
async fn plain_call(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    timeout(LIMIT, async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut framer = Framer::new(Codec::Msgpack, 1 << 20);
        let mut buf = Vec::new();
        loop {
            if let Some(n) = framer.decode(&buf).expect("valid msgpack") {
                return buf[..n].to_vec();
            }
            assert!(stream.read_buf(&mut buf).await.unwrap() > 0, "closed early");
        }
    })
    .await
    .expect("a response in time")
}

/// `[0, 1, method, [id]]` for a small `id`.
fn request(method: &str, id: u8) -> Vec<u8> {
    assert!(method.len() < 32 && id < 128);
    let mut out = vec![0x94, 0x00, 0x01, 0xa0 | method.len() as u8];
    out.extend_from_slice(method.as_bytes());
    out.extend_from_slice(&[0x91, id]);
    out
}

/// The error element of a response frame, as a dynamic value.
fn error_value(frame: &[u8]) -> rmpv::Value {
    let Ok(Message::Response {
        msgid: 1,
        outcome: Err(mut raw),
    }) = Message::parse(Codec::Msgpack, frame)
    else {
        panic!("expected an error response to msgid 1: {frame:02x?}")
    };
    rmpv::decode::read_value(&mut raw).unwrap()
}

// ---- Tests ----------------------------------------------------------------------------

#[tokio::test]
async fn async_stubs_return_the_functions_own_error_over_both_codecs() {
    let (addr, _stop) = start().await;
    for codec in [Codec::Msgpack, Codec::Bincode] {
        let c = connect(addr, codec).await;
        timeout(LIMIT, async {
            assert_eq!(get_todo::call(&c, 1).await.unwrap(), "write the tests");
            let e = get_todo::call(&c, 42).await.unwrap_err();
            assert!(
                matches!(e, CallError::Handler(TodoError::NotFound(42))),
                "{codec:?}: {e:?}"
            );
            assert_eq!(e.code(), Some(ErrorCode::HandlerError));
            assert_eq!(e.to_string(), "todo 42 not found");
            let e = get_todo_async::call(&c, 7).await.unwrap_err();
            assert_eq!(
                e.into_handler(),
                Some(TodoError::Locked { by: "ann".to_owned() }),
                "{codec:?}"
            );
            // Declared stubs keep the declared type.
            let e: CallError<TodoError> = api::get_todo::call(&c, 42).await.unwrap_err();
            assert_eq!(e.handler(), Some(&TodoError::NotFound(42)), "{codec:?}");
            // `String` is `Serialize` too.
            assert_eq!(api::div::call(&c, 8, 2).await.unwrap(), 4);
            let e = checked_div::call(&c, 1, 0).await.unwrap_err();
            assert_eq!(e.into_handler().as_deref(), Some("cannot divide 1 by zero"));
            let e = api::div::call(&c, 1, 0).await.unwrap_err();
            assert_eq!(e.into_handler().as_deref(), Some("cannot divide 1 by zero"));
        })
        .await
        .expect("the calls finish in time");
    }
}

#[tokio::test]
async fn blocking_stubs_return_the_functions_own_error_over_both_codecs() {
    let (addr, _stop) = start().await;
    let work = tokio::task::spawn_blocking(move || {
        for codec in [Codec::Msgpack, Codec::Bincode] {
            let c = BlockingClient::connect_with(addr, config(codec)).expect("connect");
            let e = get_todo::call_blocking(&c, 42).unwrap_err();
            assert!(
                matches!(e, CallError::Handler(TodoError::NotFound(42))),
                "{codec:?}: {e:?}"
            );
            let e = get_todo_async::call_blocking(&c, 42).unwrap_err();
            assert!(matches!(e, CallError::Handler(TodoError::NotFound(42))), "{e:?}");
            let e = api::get_todo::call_blocking(&c, 7).unwrap_err();
            assert!(matches!(e, CallError::Handler(TodoError::Locked { .. })), "{e:?}");
            // `?` into `easyrpc::Error` keeps the code and the message.
            let as_rpc = || -> Result<String, easyrpc::Error> { Ok(get_todo::call_blocking(&c, 42)?) };
            let e = as_rpc().unwrap_err();
            let remote = e.remote().expect("a remote error");
            assert_eq!(
                (remote.kind(), remote.message.as_str()),
                (ErrorCode::HandlerError, "todo 42 not found")
            );
        }
    });
    timeout(LIMIT, work).await.expect("in time").expect("no panic");
}

#[tokio::test]
async fn display_only_errors_keep_code_and_message() {
    let (addr, _stop) = start().await;
    for codec in [Codec::Msgpack, Codec::Bincode] {
        let c = connect(addr, codec).await;
        let e = timeout(LIMIT, opaque::call(&c, 5)).await.unwrap().unwrap_err();
        let CallError::Rpc(easyrpc::Error::Remote(remote)) = &e else {
            panic!("{codec:?}: expected a remote error, got {e:?}")
        };
        assert_eq!(
            (remote.kind(), remote.message.as_str(), remote.data()),
            (ErrorCode::HandlerError, "opaque 5", None)
        );
        // `try_sync_fn` keeps today's behaviour even for a `Serialize` error.
        let e = timeout(LIMIT, c.call::<_, String>("try_sync", (42u64,)))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(e.remote().unwrap().message, "todo 42 not found");
        assert_eq!(e.remote().unwrap().data(), None);
    }
    // On the wire: `[3, "opaque 5"]`, two elements.
    let frame = plain_call(addr, &request("opaque", 5)).await;
    assert_eq!(
        error_value(&frame),
        rmpv::Value::Array(vec![3.into(), "opaque 5".into()])
    );
}

#[tokio::test]
async fn a_plain_peer_reads_code_and_message_first() {
    let (addr, _stop) = start().await;
    for method in [
        "get_todo",
        "get_todo_async",
        "typed_sync",
        "typed_async",
        "get_todo_aliased",
    ] {
        let frame = plain_call(addr, &request(method, 42)).await;
        // [1, 1, [3, "todo 42 not found", {"NotFound": 42}], nil]
        let mut want = vec![0x94, 0x01, 0x01, 0x93, 0x03, 0xb1];
        want.extend_from_slice(b"todo 42 not found");
        want.extend_from_slice(&[0x81, 0xa8]);
        want.extend_from_slice(b"NotFound");
        want.extend_from_slice(&[0x2a, 0xc0]);
        assert_eq!(frame, want, "{method}");
        let error = error_value(&frame);
        let error = error.as_array().unwrap();
        assert_eq!(error[0].as_u64(), Some(3));
        assert_eq!(error[1].as_str(), Some("todo 42 not found"));
        assert_eq!(error[2]["NotFound"].as_u64(), Some(42));
    }
}

#[tokio::test]
async fn shapes_for_peers_that_read_no_array_carry_no_data() {
    for (shape, want) in [
        (ErrorShape::Message, rmpv::Value::from("todo 42 not found")),
        (
            ErrorShape::TypeAndMessage,
            rmpv::Value::Array(vec![0.into(), "todo 42 not found".into()]),
        ),
    ] {
        let (addr, _stop) = serve(builder().plain_error_shape(shape)).await;
        let frame = plain_call(addr, &request("get_todo", 42)).await;
        assert_eq!(error_value(&frame), want, "{shape:?}");
        // A client that said hello still gets `[code, message, data]`.
        let mut hello = config(Codec::Msgpack);
        hello.extensions = true;
        let c = timeout(LIMIT, Client::connect_with(addr, hello))
            .await
            .unwrap()
            .unwrap();
        let e = timeout(LIMIT, get_todo::call(&c, 42)).await.unwrap().unwrap_err();
        assert!(matches!(e, CallError::Handler(TodoError::NotFound(42))), "{e:?}");
    }
}

#[tokio::test]
async fn call_value_and_call_by_name_see_the_data() {
    let (addr, _stop) = start().await;
    let c = connect(addr, Codec::Msgpack).await;
    let e = timeout(LIMIT, c.call_value("get_todo", vec![42.into()]))
        .await
        .unwrap()
        .unwrap_err();
    let remote = e.remote().expect("a remote error");
    assert_eq!(remote.message, "todo 42 not found");
    let data = remote.data_value().expect("data").expect("msgpack data decodes");
    assert_eq!(data["NotFound"].as_u64(), Some(42));
    assert_eq!(
        remote.decode_data::<TodoError>().unwrap().unwrap(),
        TodoError::NotFound(42)
    );

    // By name, into a typed error.
    for codec in [Codec::Msgpack, Codec::Bincode] {
        let c = connect(addr, codec).await;
        let r: Result<String, CallError<TodoError>> = timeout(LIMIT, c.call("get_todo", (7u64,)))
            .await
            .unwrap()
            .map_err(CallError::from_error);
        assert!(
            matches!(r, Err(CallError::Handler(TodoError::Locked { .. }))),
            "{r:?}"
        );
        // An alias keeps `easyrpc::Error` in the stub, with the data in it.
        let e = timeout(LIMIT, get_todo_aliased::call(&c, 42))
            .await
            .unwrap()
            .unwrap_err();
        let data = e.remote().unwrap().decode_data::<TodoError>();
        assert_eq!(data.unwrap().unwrap(), TodoError::NotFound(42), "{codec:?}");
        // Data of another type is not a `Handler`: the remote error stays whole.
        let e = timeout(LIMIT, c.call::<_, String>("get_todo", (42u64,)))
            .await
            .unwrap()
            .unwrap_err();
        let wrong: CallError<u32> = CallError::from_error(e);
        let remote = wrong.remote().expect("the remote error, whole");
        assert_eq!(remote.message, "todo 42 not found");
        assert!(remote.data().is_some());
    }
}

#[tokio::test]
async fn the_dedup_cache_keeps_the_data() {
    // In unstable-network mode a reply is encoded once, for the cache, before it is sent.
    let (addr, _stop) = serve(builder().unstable_network(true)).await;
    for codec in [Codec::Msgpack, Codec::Bincode] {
        let mut config = config(codec);
        config.unstable_network = true;
        let c = timeout(LIMIT, Client::connect_with(addr, config))
            .await
            .unwrap()
            .unwrap();
        for _ in 0..2 {
            let e = timeout(LIMIT, get_todo_async::call(&c, 42))
                .await
                .unwrap()
                .unwrap_err();
            assert!(
                matches!(e, CallError::Handler(TodoError::NotFound(42))),
                "{codec:?}: {e:?}"
            );
        }
    }
}

#[test]
fn decode_error_keeps_the_raw_data() {
    // As a third-party server of another implementation might send it.
    let e = decode_error(Codec::Msgpack, &[0x93, 0x03, 0xa1, b'x', 0x2a]);
    assert_eq!((e.kind(), e.data()), (ErrorCode::HandlerError, Some(&[0x2a][..])));
}
