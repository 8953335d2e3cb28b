//! Streaming functions made by `#[register]`, `#[service]` and `declare!`, against a real
//! server on 127.0.0.1: each kind (result stream, argument stream, two-way), async and
//! sync, through the typed stubs and by name, over both codecs.
//!
//! No test sleeps to wait for something: a stream's end is observed through a drop guard
//! that signals a channel, and every wait is bounded by a timeout.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use easyrpc::stream::{self, Stream, StreamExt};
use easyrpc::{
    register, BlockingClient, CallError, Client, ClientConfig, Codec, Context, Error, ErrorCode,
    MethodDescription, Server, State, Streaming,
};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;

/// The bound on every wait: far above what any step takes, so that only a hang trips it.
const LIMIT: Duration = Duration::from_secs(10);

// ---- The served functions -------------------------------------------------------------

/// `n - 1` down to 0.
#[register]
async fn countdown(n: u64) -> impl Stream<Item = u64> {
    tokio::task::yield_now().await;
    stream::iter((0..n).rev())
}

/// A struct item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// Where it comes from.
    pub sensor: String,
    /// What it reads.
    pub value: f64,
}

/// Struct items, with the server's state and the call's context anywhere in the list.
#[register(name = "sensor.readings")]
async fn readings(scale: State<Scale>, sensor: String, ctx: Context, n: u32) -> impl Stream<Item = Reading> {
    let factor = scale.0;
    let method = ctx.method().to_owned();
    stream::iter((0..n).map(move |i| Reading {
        sensor: format!("{sensor}@{method}"),
        value: f64::from(i) * factor,
    }))
}

/// The server's state: the readings' factor.
#[derive(Debug)]
pub struct Scale(f64);

/// Items until `fail_at`, then an error that ends the stream.
#[register]
async fn until(fail_at: u32) -> impl Stream<Item = Result<u32, String>> {
    stream::iter((0..).map(move |i| {
        if i < fail_at {
            Ok(i)
        } else {
            Err(format!("stopped at {i}"))
        }
    }))
}

/// A sync result stream: an iterator driven on the blocking pool.
#[register]
fn lines(n: u32) -> impl Iterator<Item = String> {
    (0..n).map(|i| format!("line {i}"))
}

/// Fallible sync items: the first word that is not a number ends the stream.
#[register]
fn parse_all(words: Vec<String>) -> impl Iterator<Item = Result<i64, std::num::ParseIntError>> {
    words.into_iter().map(|w| w.parse::<i64>())
}

/// An argument stream (async), after a wire argument.
#[register]
async fn sum(offset: i64, mut numbers: Streaming<i64>) -> i64 {
    let mut total = offset;
    while let Some(n) = numbers.next().await {
        total += n.expect("an i64");
    }
    total
}

/// An argument stream (sync), with a typed error.
#[register]
fn longest(mut lines: Streaming<String>) -> Result<usize, String> {
    lines
        .blocking_iter()
        .map(|l| l.map(|l| l.len()).map_err(|e| e.to_string()))
        .try_fold(None, |max: Option<usize>, len| {
            len.map(|len| Some(max.map_or(len, |m| m.max(len))))
        })?
        .ok_or_else(|| "no lines".to_owned())
}

/// Two-way (async): each number doubled as it comes.
#[register]
async fn double(items: Streaming<i64>) -> impl Stream<Item = i64> {
    items.map(|n| n.expect("an i64") * 2)
}

/// Two-way (sync): each line upper-cased, on the blocking pool.
#[register]
fn shout(mut lines: Streaming<String>, suffix: String) -> impl Iterator<Item = String> {
    std::iter::from_fn(move || lines.blocking_next())
        .map(move |l| format!("{}{suffix}", l.expect("a String").to_uppercase()))
}

/// The senders of the streams that ended (or were dropped): the tests wait on them.
static ENDED: Mutex<Option<mpsc::UnboundedSender<&'static str>>> = Mutex::new(None);

/// Signals `ENDED` when dropped: with the stream it lives in.
struct OnDrop(&'static str);

impl Drop for OnDrop {
    fn drop(&mut self) {
        if let Some(tx) = ENDED.lock().unwrap().as_ref() {
            let _ = tx.send(self.0);
        }
    }
}

/// Numbers for ever, until the caller drops its stream.
#[register]
async fn forever() -> impl Stream<Item = u64> {
    let guard = OnDrop("forever");
    stream::iter(0..).map(move |i| {
        let _ = &guard;
        i
    })
}

/// A service with each kind.
#[derive(Debug, Default)]
pub struct Feed {
    step: u64,
}

#[easyrpc::service(prefix = "feed")]
impl Feed {
    /// `0, step, 2 * step, ...`: `n` of them.
    pub async fn multiples(&self, n: u64) -> impl Stream<Item = u64> {
        let step = self.step;
        stream::iter((0..n).map(move |i| i * step))
    }

    /// The same, sync.
    pub fn multiples_sync(&self, n: u64) -> impl Iterator<Item = u64> {
        let step = self.step;
        (0..n).map(move |i| i * step)
    }

    /// How many items came.
    pub async fn count(&self, items: Streaming<String>) -> usize {
        items.count().await
    }

    /// The same, sync.
    pub fn count_sync(&self, mut items: Streaming<String>) -> usize {
        items.blocking_iter().count()
    }

    /// Each item times the step.
    pub async fn scale(&self, items: Streaming<u64>) -> impl Stream<Item = u64> {
        let step = self.step;
        items.map(move |n| n.expect("a u64") * step)
    }
}

// The stubs of a crate that only calls the service: `Stream` and `Streaming` are
// recognised by name, and need not be in scope.
mod remote {
    easyrpc::declare! {
        #[rpc(name = "countdown")]
        pub async fn remote_countdown(n: u64) -> impl Stream<Item = u64>;
        #[rpc(name = "sum")]
        pub fn remote_sum(offset: i64, numbers: Streaming<i64>) -> i64;
        #[rpc(name = "double")]
        pub async fn remote_double(items: Streaming<i64>) -> impl Stream<Item = i64>;
    }
}

// ---- Harness --------------------------------------------------------------------------

/// A server with every function above; it stops when the returned sender is dropped.
async fn start() -> (SocketAddr, oneshot::Sender<()>) {
    let server = Server::builder()
        .state(Scale(0.5))
        .register(countdown::method())
        .register(readings::method())
        .register(until::method())
        .register(lines::method())
        .register(parse_all::method())
        .register(sum::method())
        .register(longest::method())
        .register(double::method())
        .register(shout::method())
        .register(forever::method())
        .service(Feed { step: 3 })
        .build()
        .expect("distinct names");
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

async fn connect(addr: SocketAddr, codec: Codec) -> Client {
    let mut config = ClientConfig::default();
    config.codec = codec;
    // Streams need the hello (bincode turns it on by itself).
    config.extensions = true;
    timeout(LIMIT, Client::connect_with(addr, config))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// Run `f` with an async client of each codec.
async fn each_codec<F, Fut>(addr: SocketAddr, mut f: F)
where
    F: FnMut(Client, Codec) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for codec in [Codec::Msgpack, Codec::Bincode] {
        let client = connect(addr, codec).await;
        timeout(LIMIT, f(client, codec))
            .await
            .expect("the calls finish in time");
    }
}

/// Every item of `items`, until its end or its first error (returned too).
async fn collect<T>(items: impl Stream<Item = Result<T, Error>>) -> (Vec<T>, Option<Error>) {
    let mut items = std::pin::pin!(items);
    let mut out = Vec::new();
    while let Some(item) = items.next().await {
        match item {
            Ok(v) => out.push(v),
            Err(e) => {
                assert!(items.next().await.is_none(), "an error ends the stream");
                return (out, Some(e));
            }
        }
    }
    (out, None)
}

fn remote_error(e: &Error) -> (ErrorCode, String) {
    let remote = e
        .remote()
        .unwrap_or_else(|| panic!("expected a remote error, got {e:?}"));
    (remote.kind(), remote.message.clone())
}

// ---- Tests ----------------------------------------------------------------------------

#[tokio::test]
async fn result_streams_through_the_stubs_and_by_name() {
    let (addr, _stop) = start().await;
    each_codec(addr, |client, codec| async move {
        let (items, end) = collect(countdown::call(&client, 4).await.unwrap()).await;
        assert_eq!((items, end.is_none()), (vec![3, 2, 1, 0], true), "{codec:?}");

        let (items, end) = collect(lines::call(&client, 3).await.unwrap()).await;
        assert!(end.is_none(), "{codec:?}");
        assert_eq!(items, ["line 0", "line 1", "line 2"], "{codec:?}");

        let (items, _) = collect(readings::call(&client, "t".to_owned(), 3).await.unwrap()).await;
        let values: Vec<f64> = items.iter().map(|r| r.value).collect();
        assert_eq!(values, [0.0, 0.5, 1.0], "{codec:?}");
        assert_eq!(items[0].sensor, "t@sensor.readings", "the context is the call's");

        // By name, as any caller does.
        let by_name = client
            .call_stream::<_, u64>(countdown::NAME, (2u64,))
            .await
            .unwrap();
        assert_eq!(collect(by_name).await.0, [1, 0], "{codec:?}");

        // An empty stream ends at once.
        let (items, end) = collect(countdown::call(&client, 0).await.unwrap()).await;
        assert!(items.is_empty() && end.is_none(), "{codec:?}");
    })
    .await;
}

#[tokio::test]
async fn an_error_item_ends_the_stream_with_its_message() {
    let (addr, _stop) = start().await;
    each_codec(addr, |client, codec| async move {
        let (items, end) = collect(until::call(&client, 3).await.unwrap()).await;
        assert_eq!(items, [0, 1, 2], "{codec:?}");
        let end = end.expect("the stream ends with the error");
        assert_eq!(
            remote_error(&end),
            (ErrorCode::HandlerError, "stopped at 3".to_owned())
        );

        let words = vec!["1".to_owned(), "2".to_owned(), "x".to_owned(), "4".to_owned()];
        let (items, end) = collect(parse_all::call(&client, words).await.unwrap()).await;
        assert_eq!(items, [1, 2], "{codec:?}");
        let (code, message) = remote_error(&end.expect("the sync stream ends with the error"));
        assert_eq!(code, ErrorCode::HandlerError);
        assert!(message.contains("invalid digit"), "{message}");
    })
    .await;
}

#[tokio::test]
async fn argument_streams_async_and_sync() {
    let (addr, _stop) = start().await;
    each_codec(addr, |client, codec| async move {
        let total = sum::call(&client, 100, stream::iter(1..=1000)).await.unwrap();
        assert_eq!(total, 100 + 500_500, "{codec:?}");
        assert_eq!(sum::call(&client, 7, stream::empty()).await.unwrap(), 7);

        let lines = ["a", "abcd", "ab"].map(str::to_owned);
        assert_eq!(
            longest::call(&client, stream::iter(lines)).await.unwrap(),
            4,
            "{codec:?}"
        );
        // The function's own error comes back typed.
        match longest::call(&client, stream::empty()).await {
            Err(CallError::Handler(message)) => assert_eq!(message, "no lines"),
            other => panic!("expected the handler's error, got {other:?}"),
        }
        // Items from a channel: a sender handle.
        let (tx, rx) = mpsc::channel::<i64>(4);
        let feeder = tokio::spawn(async move {
            for n in [5, 6, 7] {
                tx.send(n).await.unwrap();
            }
        });
        let items = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|n| (n, rx)) });
        assert_eq!(sum::call(&client, 0, items).await.unwrap(), 18, "{codec:?}");
        feeder.await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn two_way_streams_async_and_sync() {
    let (addr, _stop) = start().await;
    each_codec(addr, |client, codec| async move {
        let doubled = double::call(&client, stream::iter(1..=200)).await.unwrap();
        let (items, end) = collect(doubled).await;
        assert!(end.is_none(), "{codec:?}");
        assert_eq!(items, (1..=200).map(|n| n * 2).collect::<Vec<i64>>(), "{codec:?}");

        let words = stream::iter(["a", "b"].map(str::to_owned));
        let (items, end) = collect(shout::call(&client, words, "!".to_owned()).await.unwrap()).await;
        assert!(end.is_none(), "{codec:?}");
        assert_eq!(items, ["A!", "B!"], "{codec:?}");
    })
    .await;
}

#[tokio::test]
async fn service_streams_through_the_typed_client() {
    let (addr, _stop) = start().await;
    each_codec(addr, |client, codec| async move {
        let feed = FeedClient::new(client);
        assert_eq!(
            collect(feed.multiples(4).await.unwrap()).await.0,
            [0, 3, 6, 9],
            "{codec:?}"
        );
        assert_eq!(
            collect(feed.multiples_sync(3).await.unwrap()).await.0,
            [0, 3, 6],
            "{codec:?}"
        );
        let words = || stream::iter(["x", "y", "z"].map(str::to_owned));
        assert_eq!(feed.count(words()).await.unwrap(), 3, "{codec:?}");
        assert_eq!(feed.count_sync(words()).await.unwrap(), 3, "{codec:?}");
        assert_eq!(
            collect(feed.scale(stream::iter(1..=3)).await.unwrap()).await.0,
            [3, 6, 9],
            "{codec:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn declared_stubs_call_streaming_functions() {
    let (addr, _stop) = start().await;
    each_codec(addr, |client, codec| async move {
        let (items, _) = collect(remote::remote_countdown::call(&client, 3).await.unwrap()).await;
        assert_eq!(items, [2, 1, 0], "{codec:?}");
        assert_eq!(
            remote::remote_sum::call(&client, 1, stream::iter([2, 3]))
                .await
                .unwrap(),
            6
        );
        let (items, _) = collect(
            remote::remote_double::call(&client, stream::iter([4]))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(items, [8], "{codec:?}");
    })
    .await;
}

#[tokio::test]
async fn dropping_the_stubs_stream_cancels_the_function_stream() {
    let (tx, mut ended) = mpsc::unbounded_channel();
    *ENDED.lock().unwrap() = Some(tx);
    let (addr, _stop) = start().await;
    let client = connect(addr, Codec::Msgpack).await;
    let mut numbers = forever::call(&client).await.unwrap();
    for want in 0..100u64 {
        let got = timeout(LIMIT, numbers.next()).await.expect("an item in time");
        assert_eq!(got.expect("not the end").unwrap(), want);
    }
    drop(numbers);
    let which = timeout(LIMIT, ended.recv())
        .await
        .expect("the server's stream is dropped in time");
    assert_eq!(which, Some("forever"));
    // The connection goes on.
    assert_eq!(collect(countdown::call(&client, 1).await.unwrap()).await.0, [0]);
}

#[tokio::test]
async fn rpc_methods_marks_streaming_functions() {
    let (addr, _stop) = start().await;
    // Over bincode too: `streaming` is always written (bincode is positional).
    let client = connect(addr, Codec::Bincode).await;
    let methods: Vec<MethodDescription> = timeout(LIMIT, client.call("rpc.methods", ()))
        .await
        .expect("in time")
        .unwrap();
    let client = connect(addr, Codec::Msgpack).await;
    let by_msgpack: Vec<MethodDescription> = timeout(LIMIT, client.call("rpc.methods", ()))
        .await
        .expect("in time")
        .unwrap();
    assert_eq!(methods, by_msgpack);
    let find = |name: &str| {
        methods
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("{name} is listed"))
    };
    // (name, streaming, item or result type, sync: a sync function's iterator or upload
    // runs on the blocking pool)
    let kinds = [
        ("countdown", "result", "u64", false),
        ("sensor.readings", "result", "Reading", false),
        ("until", "result", "Result<u32, String>", false),
        ("lines", "result", "String", true),
        ("sum", "args", "i64", false),
        ("longest", "args", "Result<usize, String>", true),
        ("double", "both", "i64", false),
        ("shout", "both", "String", true),
        ("feed.multiples", "result", "u64", false),
        ("feed.multiples_sync", "result", "u64", true),
        ("feed.count_sync", "args", "usize", true),
        ("feed.scale", "both", "u64", false),
    ];
    for (name, streaming, returns, sync) in kinds {
        let m = find(name);
        assert_eq!(
            (m.streaming.as_str(), m.returns.as_str(), m.sync),
            (streaming, returns, sync),
            "{name}"
        );
    }
    // The stream is not among the wire arguments; state and context neither.
    let args: Vec<&str> = find("sum").args.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(args, ["offset"]);
    let args: Vec<&str> = find("sensor.readings")
        .args
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(args, ["sensor", "n"]);
    assert_eq!(find("shout").args, [("suffix".to_owned(), "String".to_owned())]);
}

#[tokio::test]
async fn a_client_without_the_extensions_is_told_it_needs_them() {
    let (addr, _stop) = start().await;
    let mut config = ClientConfig::default();
    config.our_server = true;
    let client = timeout(LIMIT, Client::connect_with(addr, config))
        .await
        .unwrap()
        .unwrap();
    match countdown::call(&client, 3).await {
        Err(Error::NeedsExtensions(_)) => {}
        other => panic!("expected NeedsExtensions, got {other:?}"),
    }
    // A plain MessagePack-RPC call of a streaming method: a clear error naming it.
    let e = client
        .call::<_, easyrpc::Value>("countdown", (3,))
        .await
        .unwrap_err();
    let (code, message) = remote_error(&e);
    assert_eq!(code, ErrorCode::StreamingMethod);
    assert!(message.contains("`countdown` is a streaming method"), "{message}");
}

#[tokio::test]
async fn blocking_stubs_of_each_kind() {
    let (addr, _stop) = start().await;
    for codec in [Codec::Msgpack, Codec::Bincode] {
        let calls = tokio::task::spawn_blocking(move || {
            let mut config = ClientConfig::default();
            config.codec = codec;
            config.extensions = true;
            let client = BlockingClient::connect_with(addr, config).expect("connect");
            // Result streams, async and sync functions: an iterator.
            let items: Vec<u64> = countdown::call_blocking(&client, 3)
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(items, [2, 1, 0], "{codec:?}");
            let items: Result<Vec<String>, _> = lines::call_blocking(&client, 2).unwrap().collect();
            assert_eq!(items.unwrap(), ["line 0", "line 1"], "{codec:?}");
            // An error item ends it.
            let mut items = until::call_blocking(&client, 1).unwrap();
            assert_eq!(items.next().unwrap().unwrap(), 0);
            let (code, message) = remote_error(&items.next().unwrap().unwrap_err());
            assert_eq!(
                (code, message.as_str()),
                (ErrorCode::HandlerError, "stopped at 1")
            );
            assert!(items.next().is_none());
            drop(items);
            // Uploads from an iterator, async and sync functions.
            assert_eq!(sum::call_blocking(&client, 1, 1..=10).unwrap(), 56, "{codec:?}");
            let lines = vec!["ab".to_owned(), "abc".to_owned()];
            assert_eq!(longest::call_blocking(&client, lines).unwrap(), 3, "{codec:?}");
            // Two-way.
            let items: Vec<i64> = double::call_blocking(&client, vec![1, 2, 3])
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(items, [2, 4, 6], "{codec:?}");
            let words = ["x".to_owned()];
            let items: Vec<String> = shout::call_blocking(&client, words, "?".to_owned())
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(items, ["X?"], "{codec:?}");
            // The service's blocking client.
            let feed = FeedBlockingClient::new(client);
            let items: Vec<u64> = feed.multiples(3).unwrap().collect::<Result<_, _>>().unwrap();
            assert_eq!(items, [0, 3, 6], "{codec:?}");
            assert_eq!(feed.count_sync(["a", "b"].map(str::to_owned)).unwrap(), 2);
            let items: Vec<u64> = feed.scale(vec![2u64]).unwrap().collect::<Result<_, _>>().unwrap();
            assert_eq!(items, [6], "{codec:?}");
            let items: Vec<i64> = remote::remote_double::call_blocking(feed.client(), [5])
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(items, [10], "{codec:?}");
        });
        timeout(LIMIT, calls)
            .await
            .expect("the blocking calls finish in time")
            .expect("no panic");
    }
}
