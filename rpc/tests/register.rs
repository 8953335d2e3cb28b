//! `#[register]` and `declare!` against a real server on 127.0.0.1: what the generated
//! `method()` serves and what the generated stubs send, over both codecs.
//!
//! No test sleeps to wait for something: calls in flight are observed through semaphores
//! that the functions themselves signal, and every wait is bounded by a timeout.

use std::net::SocketAddr;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use easyrpc::{register, BlockingClient, BuildError, Client, ClientConfig, Codec, ErrorCode, Server};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};
use tokio::time::timeout;

/// The bound on every wait: far above what any step takes, so that only a hang trips it.
const LIMIT: Duration = Duration::from_secs(10);

// ---- The served functions -------------------------------------------------------------

#[register]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

#[register]
async fn double(n: u64) -> u64 {
    tokio::task::yield_now().await;
    n * 2
}

#[register]
fn parse_int(text: String) -> Result<i64, std::num::ParseIntError> {
    text.trim().parse()
}

#[register]
async fn checked_div(a: i64, b: i64) -> Result<i64, String> {
    if b == 0 {
        Err(format!("cannot divide {a} by zero"))
    } else {
        Ok(a / b)
    }
}

#[register]
fn open(path: String) -> std::io::Result<u64> {
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("no such file: {path}"),
    ))
}

/// The thread a call runs on: inline, in the connection's task.
#[register(inline)]
fn thread_inline() -> String {
    format!("{:?}", std::thread::current().id())
}

/// The same on the blocking pool.
#[register]
fn thread_pooled() -> String {
    format!("{:?}", std::thread::current().id())
}

/// The same from an async function: the connection's task.
#[register]
async fn thread_async() -> String {
    format!("{:?}", std::thread::current().id())
}

/// An inline function that panics on 0, with at most one call running at once.
#[register(inline, max_flow = 1)]
fn inline_checked(n: u32) -> u32 {
    assert!(n != 0, "zero");
    n + 1
}

/// Served as `add` too: for the duplicate-name check, never registered with `add`.
#[register(name = "add")]
fn another_add(a: i64, b: i64) -> i64 {
    a - b
}

#[register(name = "math.mul")]
fn multiply(a: i64, b: i64) -> i64 {
    a * b
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Point {
    x: f64,
    y: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Segment {
    from: Point,
    to: Point,
    label: Option<String>,
}

#[register]
fn midpoint(segment: Segment) -> Point {
    Point {
        x: (segment.from.x + segment.to.x) / 2.0,
        y: (segment.from.y + segment.to.y) / 2.0,
    }
}

#[register]
async fn translate(points: Vec<Point>, by: Point) -> Vec<Point> {
    points
        .into_iter()
        .map(|p| Point {
            x: p.x + by.x,
            y: p.y + by.y,
        })
        .collect()
}

#[register]
fn answer() -> u32 {
    42
}

#[register]
async fn version() -> String {
    "1.0".to_owned()
}

/// Unit return, zero arguments: counts its calls.
#[register]
fn touch() {
    TOUCHED.add_permits(1);
}

static TOUCHED: Semaphore = Semaphore::const_new(0);

/// Unit return, zero arguments, for the blocking stubs.
#[register]
async fn nudge() {}

/// Signalled once per `gated` call that starts running.
static GATE_ENTERED: Semaphore = Semaphore::const_new(0);
/// One permit lets one `gated` call finish.
static GATE_OPEN: Semaphore = Semaphore::const_new(0);

/// At most two at once; each waits for the test to open the gate.
#[register(max_flow = 2)]
async fn gated(n: u32) -> u32 {
    GATE_ENTERED.add_permits(1);
    GATE_OPEN.acquire().await.expect("never closed").forget();
    n
}

/// The sync twin of `gated`, with std primitives (it runs on the blocking pool).
#[register(max_flow = 2)]
fn gated_sync(n: u32) -> u32 {
    SYNC_GATE.enter();
    n
}

static SYNC_GATE: SyncGate = SyncGate::new();

/// A gate for blocking code: `enter` counts the caller in and waits until `open` lets it
/// through.
struct SyncGate {
    state: Mutex<(usize, usize)>, // (entered, let through)
    changed: Condvar,
}

impl SyncGate {
    const fn new() -> SyncGate {
        SyncGate {
            state: Mutex::new((0, 0)),
            changed: Condvar::new(),
        }
    }

    fn enter(&self) {
        let mut s = self.state.lock().unwrap();
        s.0 += 1;
        let ticket = s.0;
        self.changed.notify_all();
        let (s, res) = self
            .changed
            .wait_timeout_while(s, LIMIT, |s| s.1 < ticket)
            .unwrap();
        assert!(
            !res.timed_out(),
            "the gate never opened (entered {}, open {})",
            s.0,
            s.1
        );
    }

    /// Wait until `n` callers in all have entered.
    fn wait_entered(&self, n: usize) -> bool {
        let s = self.state.lock().unwrap();
        let (_s, res) = self.changed.wait_timeout_while(s, LIMIT, |s| s.0 < n).unwrap();
        !res.timed_out()
    }

    fn entered(&self) -> usize {
        self.state.lock().unwrap().0
    }

    fn open(&self, n: usize) {
        self.state.lock().unwrap().1 += n;
        self.changed.notify_all();
    }
}

/// The same functions as a client crate declares them, by signature alone.
mod api {
    use super::{Point, Segment};

    easyrpc::declare! {
        pub fn add(a: i64, b: i64) -> i64;
        /// Sync or async does not matter to the caller.
        pub fn double(n: u64) -> u64;
        pub async fn checked_div(a: i64, b: i64) -> Result<i64, String>;
        #[rpc(name = "math.mul")]
        pub fn times(a: i64, b: i64) -> i64;
        pub fn midpoint(segment: Segment) -> Point;
        pub fn answer() -> u32;
        pub fn touch();
        /// Not served: for the error path.
        pub fn missing(x: i64) -> i64;
    }
}

/// A `Blob` argument and result: large ones travel without a copy (README, "Large
/// payloads").
#[register]
async fn reverse_blob(tag: u8, data: easyrpc::Blob) -> (u8, easyrpc::Blob) {
    let mut v = data.to_vec();
    v.reverse();
    (tag, easyrpc::Blob::from(v))
}

#[register]
fn blob_len(data: easyrpc::Blob) -> u64 {
    data.len() as u64
}

// ---- Harness --------------------------------------------------------------------------

/// A server with every function above; it stops when the returned sender is dropped.
async fn start() -> (SocketAddr, oneshot::Sender<()>) {
    let server = Server::builder()
        .register(add::method())
        .register(double::method())
        .register(parse_int::method())
        .register(checked_div::method())
        .register(open::method())
        .register(multiply::method())
        .register(midpoint::method())
        .register(translate::method())
        .register(answer::method())
        .register(version::method())
        .register(touch::method())
        .register(nudge::method())
        .register(gated::method())
        .register(gated_sync::method())
        .register(thread_inline::method())
        .register(thread_pooled::method())
        .register(thread_async::method())
        .register(inline_checked::method())
        .register(reverse_blob::method())
        .register(blob_len::method())
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
    config.our_server = true; // no hello with msgpack: say the codes are ours
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

fn remote_error(e: &easyrpc::Error) -> (ErrorCode, String) {
    let remote = e
        .remote()
        .unwrap_or_else(|| panic!("expected a remote error, got {e:?}"));
    (remote.kind(), remote.message.clone())
}

// ---- Tests ----------------------------------------------------------------------------

#[test]
fn registered_functions_stay_plain_functions() {
    assert_eq!(add(2, 3), 5);
    assert_eq!(multiply(4, 5), 20);
    assert_eq!(parse_int(" 12 ".to_owned()).unwrap(), 12);
    assert!(parse_int("x".to_owned()).is_err());
    assert_eq!(answer(), 42);
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    assert_eq!(rt.block_on(double(21)), 42);
    assert_eq!(rt.block_on(checked_div(7, 2)), Ok(3));
}

#[test]
fn names_and_methods() {
    assert_eq!(add::NAME, "add");
    assert_eq!(double::NAME, "double");
    assert_eq!(multiply::NAME, "math.mul");
    assert_eq!(api::times::NAME, "math.mul");
    assert_eq!(add::method().name(), "add");
    assert_eq!(multiply::method().name(), "math.mul");
}

#[tokio::test]
async fn sync_and_async_functions_by_stub_and_by_name() {
    let (addr, _stop) = start().await;
    each_codec(addr, |c, codec| async move {
        assert_eq!(add::call(&c, 2, 3).await.unwrap(), 5, "{codec:?}");
        assert_eq!(add::call(&c, -7, 7).await.unwrap(), 0);
        assert_eq!(double::call(&c, 21).await.unwrap(), 42);
        // By name, with any serde arguments.
        assert_eq!(c.call::<_, i64>("add", (40, 2)).await.unwrap(), 42);
        assert_eq!(c.call::<_, u64>("double", (5u64,)).await.unwrap(), 10);
    })
    .await;
}

#[tokio::test]
async fn an_inline_sync_function_runs_in_the_connection_task() {
    let (addr, _stop) = start().await;
    each_codec(addr, |c, _| async move {
        let task = thread_async::call(&c).await.unwrap();
        assert_eq!(
            thread_inline::call(&c).await.unwrap(),
            task,
            "inline: the connection's thread"
        );
        assert_ne!(
            thread_pooled::call(&c).await.unwrap(),
            task,
            "not inline: the blocking pool"
        );
        // A panic is the caller's error, logged; the connection and the limit go on.
        assert_eq!(inline_checked::call(&c, 1).await.unwrap(), 2);
        let e = inline_checked::call(&c, 0).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::HandlerPanicked));
        assert_eq!(inline_checked::call(&c, 2).await.unwrap(), 3);
    })
    .await;
}

#[tokio::test]
async fn result_errors_reach_the_caller_as_handler_errors() {
    let (addr, _stop) = start().await;
    each_codec(addr, |c, _| async move {
        assert_eq!(parse_int::call(&c, "17".to_owned()).await.unwrap(), 17);
        // `ParseIntError` is only `Display`: its message, and no `CallError::Handler`.
        let e = parse_int::call(&c, "seventeen".to_owned()).await.unwrap_err();
        let expected = "seventeen".parse::<i64>().unwrap_err().to_string();
        assert_eq!(
            remote_error(e.rpc().unwrap()),
            (ErrorCode::HandlerError, expected)
        );

        // `String` is `Serialize`: the caller gets it back as the function's own error.
        assert_eq!(checked_div::call(&c, 9, 3).await.unwrap(), 3);
        let e = checked_div::call(&c, 9, 0).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::HandlerError));
        assert_eq!(e.into_handler().as_deref(), Some("cannot divide 9 by zero"));

        let e = open::call(&c, "/nowhere".to_owned()).await.unwrap_err();
        assert_eq!(
            remote_error(&e),
            (ErrorCode::HandlerError, "no such file: /nowhere".to_owned())
        );
    })
    .await;
}

#[tokio::test]
async fn rename_serves_under_the_given_name_only() {
    let (addr, _stop) = start().await;
    each_codec(addr, |c, _| async move {
        assert_eq!(multiply::call(&c, 6, 7).await.unwrap(), 42);
        assert_eq!(c.call::<_, i64>("math.mul", (6, 7)).await.unwrap(), 42);
        let e = c.call::<_, i64>("multiply", (6, 7)).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::MethodNotFound));
    })
    .await;
}

#[tokio::test]
async fn struct_arguments_and_returns() {
    let (addr, _stop) = start().await;
    each_codec(addr, |c, codec| async move {
        let segment = Segment {
            from: Point { x: 0.0, y: 0.0 },
            to: Point { x: 4.0, y: -2.0 },
            label: Some("diagonal".to_owned()),
        };
        let mid = midpoint::call(&c, segment.clone()).await.unwrap();
        assert_eq!(mid, Point { x: 2.0, y: -1.0 }, "{codec:?}");
        let moved = translate::call(
            &c,
            vec![Point { x: 1.0, y: 1.0 }, Point { x: -1.0, y: 0.5 }],
            Point { x: 0.5, y: 0.5 },
        )
        .await
        .unwrap();
        assert_eq!(moved, vec![Point { x: 1.5, y: 1.5 }, Point { x: -0.5, y: 1.0 }]);
        assert_eq!(
            translate::call(&c, vec![], Point { x: 1.0, y: 1.0 })
                .await
                .unwrap(),
            vec![]
        );
        assert_eq!(api::midpoint::call(&c, segment).await.unwrap(), mid);
    })
    .await;
}

#[tokio::test]
async fn zero_argument_and_unit_functions() {
    let (addr, _stop) = start().await;
    each_codec(addr, |c, _| async move {
        assert_eq!(answer::call(&c).await.unwrap(), 42);
        assert_eq!(version::call(&c).await.unwrap(), "1.0");
        let before = TOUCHED.available_permits();
        touch::call(&c).await.unwrap();
        api::touch::call(&c).await.unwrap();
        // `touch` ran once per call (no other test calls it).
        assert_eq!(TOUCHED.available_permits(), before + 2);
        // A zero-argument function rejects arguments.
        let e = c.call::<_, u32>("answer", (1,)).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::InvalidParams));
    })
    .await;
}

#[tokio::test]
async fn wrong_arguments_name_the_argument() {
    let (addr, _stop) = start().await;
    each_codec(addr, |c, codec| async move {
        let e = c.call::<_, i64>("add", (1,)).await.unwrap_err();
        assert_eq!(
            remote_error(&e),
            (ErrorCode::InvalidParams, "expected 2 arguments, got 1".to_owned())
        );
        if codec == Codec::Msgpack {
            // Bincode is not self-describing: a string there may decode as anything.
            let e = c.call::<_, i64>("add", (1, "two")).await.unwrap_err();
            let (code, message) = remote_error(&e);
            assert_eq!(code, ErrorCode::InvalidParams);
            assert!(message.starts_with("argument 1 (b)"), "{message}");
        }
    })
    .await;
}

#[tokio::test]
async fn declared_stubs_call_registered_functions() {
    let (addr, _stop) = start().await;
    each_codec(addr, |c, _| async move {
        assert_eq!(api::add::call(&c, 20, 22).await.unwrap(), 42);
        assert_eq!(api::double::call(&c, 4).await.unwrap(), 8);
        assert_eq!(api::times::call(&c, 3, 4).await.unwrap(), 12);
        assert_eq!(api::answer::call(&c).await.unwrap(), 42);
        // The declared `Result<T, E>` is the served one: the client sees `T`, and `E`
        // arrives as the function's own error.
        assert_eq!(api::checked_div::call(&c, 8, 2).await.unwrap(), 4);
        let e = api::checked_div::call(&c, 8, 0).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::HandlerError));
        assert!(matches!(e, easyrpc::CallError::Handler(m) if m == "cannot divide 8 by zero"));
        let e = api::missing::call(&c, 1).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::MethodNotFound));
    })
    .await;
}

#[tokio::test]
async fn blocking_stubs_from_a_blocking_thread() {
    let (addr, _stop) = start().await;
    let work = tokio::task::spawn_blocking(move || {
        for codec in [Codec::Msgpack, Codec::Bincode] {
            let mut config = ClientConfig::default();
            config.codec = codec;
            config.our_server = true;
            let c = BlockingClient::connect_with(addr, config).expect("connect");
            assert_eq!(add::call_blocking(&c, 2, 3).unwrap(), 5);
            assert_eq!(double::call_blocking(&c, 8).unwrap(), 16);
            assert_eq!(multiply::call_blocking(&c, 3, 3).unwrap(), 9);
            assert_eq!(answer::call_blocking(&c).unwrap(), 42);
            nudge::call_blocking(&c).unwrap();
            let mid = midpoint::call_blocking(
                &c,
                Segment {
                    from: Point { x: 1.0, y: 1.0 },
                    to: Point { x: 3.0, y: 3.0 },
                    label: None,
                },
            )
            .unwrap();
            assert_eq!(mid, Point { x: 2.0, y: 2.0 });
            let e = checked_div::call_blocking(&c, 1, 0).unwrap_err();
            assert_eq!(e.into_handler().as_deref(), Some("cannot divide 1 by zero"));
            // Declared stubs too.
            assert_eq!(api::add::call_blocking(&c, 1, 1).unwrap(), 2);
            assert_eq!(api::times::call_blocking(&c, 2, 5).unwrap(), 10);
        }
    });
    timeout(LIMIT, work).await.expect("in time").expect("no panic");
}

#[tokio::test]
async fn max_flow_rejects_the_call_over_the_limit() {
    let (addr, _stop) = start().await;
    let client = connect(addr, Codec::Msgpack).await;

    // Two calls start and wait at the gate.
    let first = tokio::spawn({
        let c = client.clone();
        async move { gated::call(&c, 1).await }
    });
    let second = tokio::spawn({
        let c = client.clone();
        async move { gated::call(&c, 2).await }
    });
    timeout(LIMIT, GATE_ENTERED.acquire_many(2))
        .await
        .expect("both calls start")
        .unwrap()
        .forget();

    // The third is answered at once, without running: the gate is still closed, so a call
    // that ran could not answer.
    let third = timeout(LIMIT, gated::call(&client, 3))
        .await
        .expect("answered without waiting");
    assert_eq!(third.unwrap_err().code(), Some(ErrorCode::Overloaded));
    assert_eq!(
        GATE_ENTERED.available_permits(),
        0,
        "the rejected call did not run"
    );
    assert!(!first.is_finished() && !second.is_finished());

    // Open the gate: both finish with their own results.
    GATE_OPEN.add_permits(2);
    assert_eq!(timeout(LIMIT, first).await.expect("in time").unwrap().unwrap(), 1);
    assert_eq!(
        timeout(LIMIT, second).await.expect("in time").unwrap().unwrap(),
        2
    );

    // The slots are free again.
    GATE_OPEN.add_permits(2);
    let (a, b) = timeout(LIMIT, async {
        tokio::join!(gated::call(&client, 4), gated::call(&client, 5))
    })
    .await
    .expect("in time");
    assert_eq!((a.unwrap(), b.unwrap()), (4, 5));
    timeout(LIMIT, GATE_ENTERED.acquire_many(2))
        .await
        .unwrap()
        .unwrap()
        .forget();
}

#[tokio::test]
async fn max_flow_applies_to_sync_functions() {
    let (addr, _stop) = start().await;
    let client = connect(addr, Codec::Msgpack).await;

    let first = tokio::spawn({
        let c = client.clone();
        async move { gated_sync::call(&c, 1).await }
    });
    let second = tokio::spawn({
        let c = client.clone();
        async move { gated_sync::call(&c, 2).await }
    });
    let both_in = tokio::task::spawn_blocking(|| SYNC_GATE.wait_entered(2));
    assert!(
        timeout(LIMIT, both_in).await.unwrap().unwrap(),
        "both calls start"
    );

    let third = timeout(LIMIT, gated_sync::call(&client, 3))
        .await
        .expect("answered without waiting");
    assert_eq!(third.unwrap_err().code(), Some(ErrorCode::Overloaded));
    assert_eq!(SYNC_GATE.entered(), 2, "the rejected call did not run");
    // Two sync calls hold their threads: other connections are served all the same, async,
    // sync and inline functions alike.
    let other = connect(addr, Codec::Msgpack).await;
    let served = async {
        (
            double::call(&other, 4).await.unwrap(),
            add::call(&other, 1, 2).await.unwrap(),
            inline_checked::call(&other, 5).await.unwrap(),
        )
    };
    assert_eq!(timeout(LIMIT, served).await.expect("not stalled"), (8, 3, 6));
    assert_eq!(SYNC_GATE.entered(), 2);

    SYNC_GATE.open(2);
    assert_eq!(timeout(LIMIT, first).await.expect("in time").unwrap().unwrap(), 1);
    assert_eq!(
        timeout(LIMIT, second).await.expect("in time").unwrap().unwrap(),
        2
    );

    SYNC_GATE.open(1);
    let again = timeout(LIMIT, gated_sync::call(&client, 4))
        .await
        .expect("in time");
    assert_eq!(again.unwrap(), 4);
}

#[test]
fn duplicate_names_are_a_build_error() {
    let err = Server::builder()
        .register(add::method())
        .register(answer::method())
        .register(another_add::method())
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, BuildError::DuplicateMethod(name) if name == "add"),
        "{err:?}"
    );

    // The same function twice, too.
    let err = Server::builder()
        .register(touch::method())
        .register(touch::method())
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, BuildError::DuplicateMethod(name) if name == "touch"),
        "{err:?}"
    );

    // And the one without the other builds.
    Server::builder()
        .register(another_add::method())
        .register(answer::method())
        .build()
        .expect("distinct names");
}

#[tokio::test]
async fn blobs_through_the_stubs_both_ways() {
    let (addr, _stop) = start().await;
    each_codec(addr, |c, codec| async move {
        for n in [0usize, 10, 200_000] {
            let data: Vec<u8> = (0..n).map(|i| (i % 253) as u8).collect();
            let (tag, back) = reverse_blob::call(&c, 7, easyrpc::Blob::from(data.clone()))
                .await
                .unwrap();
            let mut want = data.clone();
            want.reverse();
            assert_eq!((tag, &back[..]), (7, &want[..]), "{codec:?} {n}");
            assert_eq!(
                blob_len::call(&c, easyrpc::Blob::from(data)).await.unwrap(),
                n as u64
            );
        }
    })
    .await;
    let blocking = tokio::task::spawn_blocking(move || {
        let mut config = ClientConfig::default();
        config.our_server = true;
        let c = BlockingClient::connect_with(addr, config).unwrap();
        let data = vec![3u8; 100_000];
        let (_, back) = reverse_blob::call_blocking(&c, 1, easyrpc::Blob::from(data.clone())).unwrap();
        assert_eq!(&back[..], &data[..]);
    });
    timeout(LIMIT, blocking).await.unwrap().unwrap();
}
