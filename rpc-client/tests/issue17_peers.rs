//! Issue 17, "our clients as good peers of third-party servers", with both clients:
//!
//! - an error from a server that did not answer our hello is that server's own
//!   (`Error::Foreign`: Neovim's validation error `[1, "Invalid buffer id"]` is not our
//!   method-not-found), while our own server's errors after the hello keep our codes;
//! - a request the server sends while our call waits (Neovim's `rpcrequest`) goes to the
//!   handler registered for it, or is answered method-not-found; notifications reach theirs.
//!
//! The third-party servers are plain tokio listeners on port 0 speaking raw MessagePack
//! and never answering a hello. Every wait is bounded by [`BOUND`]; no sleep synchronises.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use easyrpc_client::{BlockingClient, Client, Codec, Config, Error, ErrorCode, ServerError};
use easyrpc_proto::{Framer, Message};
use rmpv::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BOUND: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within {BOUND:?}"))
}

fn encode(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, v).unwrap();
    out
}

fn decode(raw: &[u8]) -> Value {
    rmpv::decode::read_value(&mut &raw[..]).unwrap()
}

/// One connection of a third-party server: raw MessagePack, no hello.
struct Peer {
    stream: TcpStream,
    rbuf: BytesMut,
    framer: Framer,
}

/// What the client sent, as the peer saw it.
enum Seen {
    Request(u64, String),
    Response(u64, Value, Value),
}

impl Peer {
    fn new(stream: TcpStream) -> Peer {
        Peer {
            stream,
            rbuf: BytesMut::new(),
            framer: Framer::new(Codec::Msgpack, 1 << 20),
        }
    }

    /// The next message from the client, or `None` at end of input.
    async fn next(&mut self) -> Option<Seen> {
        loop {
            if let Some(n) = self.framer.decode(&self.rbuf).unwrap() {
                let frame = self.rbuf.split_to(n);
                return Some(match Message::parse(Codec::Msgpack, &frame).unwrap() {
                    Message::Request { msgid, method, .. } => {
                        Seen::Request(msgid, String::from_utf8(method.to_vec()).unwrap())
                    }
                    Message::Response { msgid, outcome } => match outcome {
                        Ok(result) => Seen::Response(msgid, Value::Nil, decode(result)),
                        Err(error) => Seen::Response(msgid, decode(error), Value::Nil),
                    },
                    Message::Notification { .. } => continue,
                });
            }
            if within("read", self.stream.read_buf(&mut self.rbuf)).await.ok()? == 0 {
                return None;
            }
        }
    }

    async fn send(&mut self, message: Value) {
        self.stream.write_all(&encode(&message)).await.unwrap();
    }
}

/// A third-party server: accepts connections on port 0 and runs `serve` on each.
async fn third_party<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(Peer) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(Peer::new(stream)));
        }
    });
    addr
}

fn response(msgid: u64, error: Value, result: Value) -> Value {
    Value::Array(vec![1.into(), msgid.into(), error, result])
}

// ---- Foreign error codes -------------------------------------------------------------

/// Neovim's answer to a call with a bad buffer: `[1, "Invalid buffer id"]`, its
/// validation error.
async fn neovim_like() -> SocketAddr {
    third_party(|mut peer| async move {
        while let Some(seen) = peer.next().await {
            if let Seen::Request(msgid, _) = seen {
                let error = Value::Array(vec![1.into(), "Invalid buffer id".into()]);
                peer.send(response(msgid, error, Value::Nil)).await;
            }
        }
    })
    .await
}

/// A client told that the server is not ours: a third party's codes stay its own.
fn foreign() -> Config {
    let mut c = Config::default();
    c.our_server = false;
    c
}

fn assert_foreign(e: &Error) {
    assert_eq!(e.code(), None, "our names do not apply: {e:?}");
    assert_eq!(e.to_string(), "server error 1: Invalid buffer id");
    assert!(e.remote().is_none(), "{e:?}");
    let Error::Foreign(f) = e else {
        panic!("expected a foreign error, got {e:?}")
    };
    assert_eq!(f.code, Some(1));
    assert_eq!(f.message, "Invalid buffer id");
    assert_eq!(f.value, Value::Array(vec![1.into(), "Invalid buffer id".into()]));
    assert_eq!(e.raw_code(), Some(1));
}

#[tokio::test]
async fn issue17_an_error_from_a_third_party_server_keeps_its_own_code() {
    let addr = neovim_like().await;
    let client = within("connect", Client::connect_with(addr, foreign()))
        .await
        .unwrap();
    let e = within("the call", client.call::<_, i64>("nvim_buf_get_name", (99,)))
        .await
        .unwrap_err();
    assert_foreign(&e);
    let e = within(
        "call_value",
        client.call_value("nvim_buf_get_name", vec![99.into()]),
    )
    .await
    .unwrap_err();
    assert_foreign(&e);

    let e = within(
        "the blocking call",
        tokio::task::spawn_blocking(move || {
            let client = BlockingClient::connect_with(addr, foreign()).unwrap();
            let typed = client.call::<_, i64>("nvim_buf_get_name", (99,)).unwrap_err();
            assert_foreign(&typed);
            client
                .call_value("nvim_buf_get_name", vec![99.into()])
                .unwrap_err()
        }),
    )
    .await
    .unwrap();
    assert_foreign(&e);
}

/// Other shapes a third-party server may send: a plain string, a code with a message that
/// is not a string, a longer array, a map. Never our names; and its code 9 is not our
/// `shutting down`, so the call is not sent again.
#[tokio::test]
async fn issue17_foreign_errors_of_other_shapes() {
    let cases: Vec<(Value, Option<i64>, &str, &str)> = vec![
        (
            Value::Array(vec![9.into(), "busy".into()]),
            Some(9),
            "busy",
            "server error 9: busy",
        ),
        ("boom".into(), None, "boom", "server error: boom"),
        (
            Value::Array(vec![0.into(), "failed".into(), "data".into()]),
            Some(0),
            "failed",
            "server error 0: failed",
        ),
        (
            Value::Array(vec![7.into(), 5.into()]),
            Some(7),
            "5",
            "server error 7: 5",
        ),
        (
            Value::Map(vec![("code".into(), 3.into())]),
            None,
            "{\"code\": 3}",
            "server error: {\"code\": 3}",
        ),
    ];
    let errors: Vec<Value> = cases.iter().map(|c| c.0.clone()).collect();
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = requests.clone();
    let addr = third_party(move |mut peer| {
        let (errors, seen) = (errors.clone(), seen.clone());
        async move {
            while let Some(Seen::Request(msgid, _)) = peer.next().await {
                let n = seen.fetch_add(1, Ordering::SeqCst);
                let error = errors.get(n).cloned().unwrap_or_else(|| "resent".into());
                peer.send(response(msgid, error, Value::Nil)).await;
            }
        }
    })
    .await;
    let client = within("connect", Client::connect_with(addr, foreign()))
        .await
        .unwrap();
    for (value, code, message, display) in cases {
        let e = within("the call", client.call::<_, ()>("f", ()))
            .await
            .unwrap_err();
        let Error::Foreign(f) = &e else {
            panic!("expected a foreign error, got {e:?}")
        };
        assert_eq!((f.code, f.message.as_str(), &f.value), (code, message, &value));
        assert_eq!(e.to_string(), display);
        assert_eq!(e.code(), None);
    }
    assert_eq!(
        requests.load(Ordering::SeqCst),
        5,
        "one request per call, none resent"
    );
}

/// Our own server: after the hello the codes are ours (`Error::Remote`); called without
/// the hello it cannot be told from any other server: the default reads the codes as
/// ours, and a client told `our_server = false` reports them as the server's own.
#[tokio::test]
async fn issue17_our_server_keeps_our_codes_after_the_hello() {
    let server = easyrpc_server::Server::builder()
        .register(easyrpc_server::Method::sync_fn("add", |(a, b): (i64, i64)| a + b))
        .build()
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .run(listener, async {
                let _ = stopped.await;
            })
            .await
    });
    let mut extended = Config::default();
    extended.extensions = true;

    let client = within("connect", Client::connect_with(addr, extended.clone()))
        .await
        .unwrap();
    let e = within("the call", client.call::<_, i64>("nope", ()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::MethodNotFound), "{e:?}");
    assert!(matches!(e, Error::Remote(_)), "{e:?}");
    assert_eq!(e.raw_code(), Some(1));
    assert_eq!(
        e.to_string(),
        "remote error: method not found (1): method not found: nope"
    );

    let plain = within("connect", Client::connect_with(addr, foreign()))
        .await
        .unwrap();
    let e = within("the call", plain.call::<_, i64>("nope", ()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), None, "{e:?}");
    assert_eq!(e.raw_code(), Some(1));
    assert_eq!(e.to_string(), "server error 1: method not found: nope");
    // The default: a plain client reads the codes as ours.
    let said_ours = Config::default();
    assert!(said_ours.our_server);
    let ours = within("connect", Client::connect_with(addr, said_ours.clone()))
        .await
        .unwrap();
    let e = within("the call", ours.call::<_, i64>("nope", ()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::MethodNotFound), "{e:?}");

    let (e, plain_e) = within(
        "the blocking calls",
        tokio::task::spawn_blocking(move || {
            let client = BlockingClient::connect_with(addr, extended).unwrap();
            let plain = BlockingClient::connect_with(addr, foreign()).unwrap();
            let ours = BlockingClient::connect_with(addr, said_ours).unwrap();
            let e = ours.call::<_, i64>("nope", ()).unwrap_err();
            assert_eq!(e.code(), Some(ErrorCode::MethodNotFound), "{e:?}");
            (
                client.call::<_, i64>("nope", ()).unwrap_err(),
                plain.call::<_, i64>("nope", ()).unwrap_err(),
            )
        }),
    )
    .await
    .unwrap();
    assert_eq!(e.code(), Some(ErrorCode::MethodNotFound), "{e:?}");
    assert!(matches!(e, Error::Remote(_)), "{e:?}");
    assert_eq!(plain_e.code(), None, "{plain_e:?}");
    assert_eq!(plain_e.to_string(), "server error 1: method not found: nope");
    drop(stop);
    within("the server to stop", task).await.unwrap();
}

// ---- Handlers for what the server sends ---------------------------------------------

/// A server that, while our call `q` waits, calls us (`[0, 7, "ask", [1]]` and
/// `[0, 8, "fail", []]`, as Neovim's `rpcrequest` does) and notifies us
/// (`[2, "note", ["hi"]]`), waits for both answers, then replies to our call with them:
/// `[[error, result] of 7, [error, result] of 8]`.
async fn asking_server() -> SocketAddr {
    third_party(|mut peer| async move {
        while let Some(seen) = peer.next().await {
            let Seen::Request(call, method) = seen else {
                panic!("a response before the server asked anything")
            };
            assert_eq!(method, "q");
            let ask = |msgid: u64, method: &str, params: Vec<Value>| {
                Value::Array(vec![0.into(), msgid.into(), method.into(), params.into()])
            };
            peer.send(ask(7, "ask", vec![1.into()])).await;
            peer.send(ask(8, "fail", vec![])).await;
            let note = Value::Array(vec![2.into(), "note".into(), vec![Value::from("hi")].into()]);
            peer.send(note).await;
            let mut answers = [Value::Nil, Value::Nil];
            while answers.iter().any(Value::is_nil) {
                match peer.next().await {
                    Some(Seen::Response(msgid @ (7 | 8), error, result)) => {
                        answers[msgid as usize - 7] = Value::Array(vec![error, result]);
                    }
                    Some(Seen::Response(msgid, ..)) => panic!("an answer to {msgid}, never asked"),
                    Some(Seen::Request(..)) => panic!("another call while the first waits"),
                    None => return,
                }
            }
            peer.send(response(call, Value::Nil, answers.to_vec().into()))
                .await;
        }
    })
    .await
}

/// A client config answering `ask` (its argument plus one) and `fail` (Neovim's
/// exception error), and handing `note`'s argument to `note`.
fn serving(note: impl Fn(Value) + Send + Sync + 'static) -> Config {
    let mut config = Config::default();
    config
        .on_request("ask", |params| match params.as_array().map(Vec::as_slice) {
            Some([n]) => Ok(Value::from(n.as_i64().unwrap_or(0) + 1)),
            _ => Err(ServerError::with_code(0, "ask takes one number")),
        })
        .on_request("fail", |_| Err(ServerError::with_code(0, "no")))
        .on_notification("note", note);
    config
}

fn error_of(e: &str) -> Value {
    Value::Array(vec![0.into(), e.into()])
}

/// The answers the server got, `[[error, result] of 7, [error, result] of 8]`.
fn assert_served(answers: &Value) {
    let expected = Value::Array(vec![
        Value::Array(vec![Value::Nil, 2.into()]),
        Value::Array(vec![error_of("no"), Value::Nil]),
    ]);
    assert_eq!(answers, &expected);
}

fn assert_not_served(answers: &Value) {
    let not_found = |method: &str| {
        Value::Array(vec![
            Value::Array(vec![1.into(), format!("method not found: {method}").into()]),
            Value::Nil,
        ])
    };
    assert_eq!(answers, &Value::Array(vec![not_found("ask"), not_found("fail")]));
}

#[tokio::test]
async fn issue17_the_async_client_answers_server_requests_with_its_handlers() {
    let addr = asking_server().await;
    let (tx, mut notes) = tokio::sync::mpsc::unbounded_channel();
    let config = serving(move |params| {
        let _ = tx.send(params);
    });
    let client = within("connect", Client::connect_with(addr, config))
        .await
        .unwrap();
    // Twice: the connection goes on after serving.
    for _ in 0..2 {
        let answers = within("the call", client.call_value("q", vec![])).await.unwrap();
        assert_served(&answers);
        let note = within("the note", notes.recv()).await;
        assert_eq!(note, Some(Value::Array(vec!["hi".into()])));
    }

    let plain = within("connect", Client::connect(addr)).await.unwrap();
    let answers = within("the call", plain.call_value("q", vec![])).await.unwrap();
    assert_not_served(&answers);
}

#[tokio::test]
async fn issue17_the_blocking_client_answers_server_requests_while_it_calls() {
    let addr = asking_server().await;
    within(
        "the blocking calls",
        tokio::task::spawn_blocking(move || {
            let (tx, notes) = std::sync::mpsc::channel();
            let config = serving(move |params| {
                let _ = tx.send(params);
            });
            let client = BlockingClient::connect_with(addr, config).unwrap();
            for _ in 0..2 {
                assert_served(&client.call_value("q", vec![]).unwrap());
                // Handled while the call read, so already there.
                let note = notes.try_recv().expect("the notification handler ran");
                assert_eq!(note, Value::Array(vec!["hi".into()]));
            }
            let plain = BlockingClient::connect(addr).unwrap();
            assert_not_served(&plain.call_value("q", vec![]).unwrap());
        }),
    )
    .await
    .unwrap();
}
