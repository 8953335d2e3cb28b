//! Real services (issue 11): `State<T>` and `Context` arguments, call metadata, and tower
//! layers around dispatch, against a real server on 127.0.0.1 with both codecs and both
//! clients.
//!
//! No test sleeps to wait for something: every wait is on an event the code under test
//! produces, bounded by a timeout.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use easyrpc::layers::{Log, MethodTimeout, RequireToken};
use easyrpc::{
    register, BlockingClient, BuildError, Builder, CallOptions, Client, ClientConfig, Codec, Context,
    ErrorCode, Metadata, Server, State,
};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::time::timeout;
use tower::Layer;

const LIMIT: Duration = Duration::from_secs(10);

// ---- State ----------------------------------------------------------------------------

/// The shared store of the key-value functions.
#[derive(Default)]
struct Store(Mutex<HashMap<String, String>>);

/// Sync, with the state first.
#[register]
fn kv_put(store: State<Store>, key: String, value: String) -> Option<String> {
    store.0.lock().unwrap().insert(key, value)
}

/// Async, with the state between wire arguments.
#[register]
async fn kv_get(key: String, store: easyrpc::State<Store>) -> Option<String> {
    tokio::task::yield_now().await;
    store.0.lock().unwrap().get(&key).cloned()
}

/// Counts calls: a second state type.
#[derive(Default)]
struct Calls(AtomicUsize);

#[register]
fn counted(calls: State<Calls>, store: State<Store>) -> (usize, usize) {
    let n = calls.0.fetch_add(1, Ordering::SeqCst) + 1;
    (n, store.0.lock().unwrap().len())
}

// ---- Context --------------------------------------------------------------------------

#[register]
fn whoami(ctx: Context) -> String {
    ctx.peer().to_string()
}

/// What the context says, as one tuple: method, msgid, listener, session?, metadata
/// "user", deadline given.
#[register]
async fn facts(n: u32, ctx: Context) -> (String, Option<u64>, String, bool, Option<String>, bool, u32) {
    (
        ctx.method().to_owned(),
        ctx.msgid(),
        ctx.listener().to_owned(),
        ctx.session().is_some(),
        ctx.metadata().get("user").map(str::to_owned),
        ctx.deadline().is_some(),
        n,
    )
}

/// Waits until cancelled; reports the cancellation through the state.
#[derive(Default)]
struct Seen {
    started: Notify,
    cancelled: Notify,
}

#[register]
async fn wait_for_cancel(seen: State<Seen>, ctx: Context) -> u32 {
    let watcher = ctx.clone();
    let seen2 = State::arc(&seen).clone();
    tokio::spawn(async move {
        watcher.cancelled().await;
        seen2.cancelled.notify_one();
    });
    seen.started.notify_one();
    std::future::pending::<()>().await;
    0
}

/// Sync: spins until its context says the caller has gone.
#[register]
fn sync_until_cancelled(seen: State<Seen>, ctx: Context) -> u32 {
    seen.started.notify_one();
    let start = std::time::Instant::now();
    while !ctx.is_cancelled() && start.elapsed() < LIMIT {
        std::thread::yield_now();
    }
    if ctx.is_cancelled() {
        seen.cancelled.notify_one();
    }
    1
}

#[register]
async fn slow(seen: State<Seen>) -> u32 {
    seen.started.notify_one();
    std::future::pending::<()>().await;
    0
}

#[register]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

fn builder() -> Builder {
    Server::builder()
        .state(Store::default())
        .state_with(Calls::default)
        .state(Seen::default())
        .register(kv_put::method())
        .register(kv_get::method())
        .register(counted::method())
        .register(whoami::method())
        .register(facts::method())
        .register(wait_for_cancel::method())
        .register(sync_until_cancelled::method())
        .register(slow::method())
        .register(add::method())
}

async fn start(builder: Builder) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = builder.build().unwrap();
    tokio::spawn(async move { server.run(listener, std::future::pending()).await });
    addr
}

fn config(codec: Codec) -> ClientConfig {
    let mut c = ClientConfig::default();
    c.codec = codec;
    c.extensions = true;
    c
}

fn code(e: &easyrpc::Error) -> ErrorCode {
    e.code().unwrap_or_else(|| panic!("not a remote error: {e}"))
}

// Multi-thread: the blocking clients' hellos block a thread the server does not need.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_is_shared_by_sync_and_async_functions_with_each_codec() {
    let addr = start(builder()).await;
    for codec in [Codec::Msgpack, Codec::Bincode] {
        let client = Client::connect_with(addr, config(codec)).await.unwrap();
        let key = format!("k-{codec:?}");
        assert_eq!(
            kv_put::call(&client, key.clone(), "1".into()).await.unwrap(),
            None
        );
        assert_eq!(
            kv_put::call(&client, key.clone(), "2".into()).await.unwrap(),
            Some("1".into())
        );
        assert_eq!(
            kv_get::call(&client, key.clone()).await.unwrap(),
            Some("2".into())
        );
        assert_eq!(kv_get::call(&client, "nope".into()).await.unwrap(), None);
        let blocking = BlockingClient::connect_with(addr, config(codec)).unwrap();
        let got = tokio::task::spawn_blocking(move || kv_get::call_blocking(&blocking, key))
            .await
            .unwrap();
        assert_eq!(got.unwrap(), Some("2".into()));
    }
    // Several state types; `state_with` built once per server.
    let client = Client::connect(addr).await.unwrap();
    let (n1, keys) = counted::call(&client).await.unwrap();
    let (n2, _) = counted::call(&client).await.unwrap();
    assert_eq!((n1, n2, keys), (1, 2, 2));
    // Plain msgpack callers see only the wire arguments too.
    let v = client
        .call_value("kv_get", vec![easyrpc::Value::from("k-Msgpack")])
        .await
        .unwrap();
    assert_eq!(v, easyrpc::Value::from("2"));
    let e = client
        .call::<_, Option<String>>("kv_get", ("a", "b"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::InvalidParams);
}

#[test]
fn a_missing_state_fails_the_build_naming_function_and_type() {
    let e = Server::builder().register(kv_put::method()).build().unwrap_err();
    match &e {
        BuildError::MissingState { function, ty } => {
            assert_eq!(function, "kv_put");
            assert!(ty.ends_with("Store"), "{ty}");
        }
        other => panic!("{other:?}"),
    }
    let msg = e.to_string();
    assert!(msg.contains("kv_put") && msg.contains("Store"), "{msg}");
    // With the state, it builds.
    Server::builder()
        .state(Store::default())
        .register(kv_put::method())
        .build()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_gives_the_call_s_facts() {
    let addr = start(builder()).await;
    // Plain client: no hello, no metadata, no deadline on the wire.
    let plain = Client::connect(addr).await.unwrap();
    let me = whoami::call(&plain).await.unwrap();
    let local = {
        // The client's own address, as the server saw it: 127.0.0.1:PORT.
        let peer: SocketAddr = me.parse().unwrap();
        assert!(peer.ip().is_loopback(), "{me}");
        peer
    };
    assert_ne!(local.port(), addr.port());
    let (method, msgid, listener, session, user, deadline, n) = facts::call(&plain, 7).await.unwrap();
    assert_eq!(method, "facts");
    assert!(msgid.is_some());
    assert_eq!(listener, addr.to_string());
    assert_eq!((session, user, deadline, n), (false, None, false, 7));

    // Extended client with metadata and a session, each codec.
    for codec in [Codec::Msgpack, Codec::Bincode] {
        let mut c = config(codec);
        c.unstable_network = true;
        let client = Client::connect_with(addr, c).await.unwrap();
        let md = Metadata::new().with("user", "ada");
        let with = client.with_metadata(md.clone()).unwrap();
        let (_, _, _, session, user, deadline, _) = facts::call(&with, 1).await.unwrap();
        assert_eq!(
            (session, user.as_deref(), deadline),
            (true, Some("ada"), true),
            "{codec:?}"
        );
        // The handle without metadata sends none.
        let (_, _, _, _, user, _, _) = facts::call(&client, 1).await.unwrap();
        assert_eq!(user, None);
        // The blocking client: per client and per call.
        let blocking = BlockingClient::connect_with(addr, config(codec))
            .unwrap()
            .with_metadata(md)
            .unwrap();
        let got = tokio::task::spawn_blocking(move || {
            let a: (String, Option<u64>, String, bool, Option<String>, bool, u32) =
                blocking.call("facts", (2,)).unwrap();
            let b: (String, Option<u64>, String, bool, Option<String>, bool, u32) = blocking
                .call_with(
                    "facts",
                    (3,),
                    CallOptions::default().metadata(Metadata::new().with("user", "bob")),
                )
                .unwrap();
            (a.4, b.4)
        })
        .await
        .unwrap();
        assert_eq!(got, (Some("ada".into()), Some("bob".into())), "{codec:?}");
    }
    // Metadata needs the extensions.
    let e = plain.with_metadata(Metadata::new()).unwrap_err();
    assert!(matches!(e, easyrpc::Error::NeedsExtensions(_)), "{e}");
}

#[tokio::test]
async fn a_cancelled_call_cancels_its_context_async_and_sync() {
    let seen = Arc::new(Seen::default());
    let addr = start(
        Server::builder()
            .register(wait_for_cancel::method())
            .register(sync_until_cancelled::method())
            .shared_state(seen.clone()),
    )
    .await;
    for codec in [Codec::Msgpack, Codec::Bincode] {
        let client = Client::connect_with(addr, config(codec)).await.unwrap();
        // Async: the caller drops its call once it runs; the server cancels it.
        let call = wait_for_cancel::call(&client);
        tokio::select! {
            _ = call => panic!("the call never returns"),
            _ = timeout(LIMIT, seen.started.notified()) => {}
        }
        timeout(LIMIT, seen.cancelled.notified())
            .await
            .expect("the context was not cancelled when the caller gave up");
        // Sync: the call's deadline (its timeout, sent with it) passes; the handler sees
        // its context cancelled and returns.
        let short = client.with_timeout(Duration::from_millis(300));
        let e = sync_until_cancelled::call(&short).await.unwrap_err();
        assert!(
            matches!(e, easyrpc::Error::Timeout(_)) || code(&e) == ErrorCode::DeadlineExceeded,
            "{e}"
        );
        timeout(LIMIT, seen.started.notified()).await.unwrap();
        timeout(LIMIT, seen.cancelled.notified())
            .await
            .expect("the sync handler never saw its context cancelled");
    }
}

// ---- Layers ---------------------------------------------------------------------------

#[tokio::test]
async fn a_token_check_layer_answers_unauthenticated() {
    let addr = start(builder().layer(RequireToken::new("authorization", |t| t == "Bearer good"))).await;
    for codec in [Codec::Msgpack, Codec::Bincode] {
        let client = Client::connect_with(addr, config(codec)).await.unwrap();
        let e = add::call(&client, 1, 2).await.unwrap_err();
        assert_eq!(code(&e), ErrorCode::Unauthenticated, "{codec:?}: {e}");
        assert_eq!(ErrorCode::Unauthenticated.as_i64(), 11);
        let bad = client
            .with_metadata(Metadata::new().with("authorization", "Bearer bad"))
            .unwrap();
        assert_eq!(
            code(&add::call(&bad, 1, 2).await.unwrap_err()),
            ErrorCode::Unauthenticated
        );
        let good = client
            .with_metadata(Metadata::new().with("authorization", "Bearer good"))
            .unwrap();
        assert_eq!(add::call(&good, 1, 2).await.unwrap(), 3);
        // Sync and async functions, state and context alike go through it.
        let key = format!("{codec:?}");
        assert_eq!(kv_put::call(&good, key.clone(), "b".into()).await.unwrap(), None);
        assert_eq!(kv_get::call(&good, key).await.unwrap(), Some("b".into()));
        let (method, _, _, _, _, _, _) = facts::call(&good, 1).await.unwrap();
        assert_eq!(method, "facts");
        // Unknown methods pass the layer and are not found.
        let e = good.call::<_, i64>("nope", ()).await.unwrap_err();
        assert_eq!(code(&e), ErrorCode::MethodNotFound);
        // Reserved methods bypass layers: the heartbeat works without a token.
        let () = client.call("rpc.ping", ()).await.unwrap();
    }
    // A plain client cannot send metadata: refused.
    let plain = Client::connect(addr).await.unwrap();
    assert_eq!(
        code(&add::call(&plain, 1, 2).await.unwrap_err()),
        ErrorCode::Unauthenticated
    );
}

#[tokio::test]
async fn a_method_timeout_layer_ends_slow_calls_only() {
    let seen = Arc::new(Seen::default());
    let addr = start(
        Server::builder()
            .register(slow::method())
            .register(add::method())
            .shared_state(seen.clone())
            .layer(MethodTimeout::new().method("slow", Duration::from_millis(50))),
    )
    .await;
    let client = Client::connect(addr).await.unwrap();
    let e = timeout(LIMIT, slow::call(&client)).await.unwrap().unwrap_err();
    assert_eq!(code(&e), ErrorCode::DeadlineExceeded, "{e}");
    assert!(e.to_string().contains("slow"), "{e}");
    assert_eq!(add::call(&client, 2, 2).await.unwrap(), 4);
}

/// Captures what a tracing subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_log_layer_logs_every_call_with_its_outcome() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    // One thread: the connection's task, where the layer logs, runs on it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tracing::subscriber::with_default(subscriber, || {
        rt.block_on(async {
            let addr = start(builder().layer(Log::new())).await;
            let client = Client::connect(addr).await.unwrap();
            assert_eq!(add::call(&client, 20, 22).await.unwrap(), 42);
            let e = client.call::<_, i64>("add", ("x",)).await.unwrap_err();
            assert_eq!(code(&e), ErrorCode::InvalidParams);
        });
    });
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("easyrpc_server::layers"))
        .collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert!(
        lines[0].contains("call ok") && lines[0].contains("method=\"add\""),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("call failed") && lines[1].contains("code=2"),
        "{}",
        lines[1]
    );
}

#[tokio::test]
async fn layers_run_outermost_first() {
    let order = Arc::new(Mutex::new(Vec::new()));
    let tag = |name: &'static str| {
        let order = order.clone();
        tower::layer::layer_fn(move |inner: easyrpc::RpcService| {
            let order = order.clone();
            tower::util::MapRequestLayer::new(move |r: easyrpc::CallRequest| {
                order.lock().unwrap().push(name);
                r
            })
            .layer(inner)
        })
    };
    let addr = start(
        Server::builder()
            .register(add::method())
            .layer(tag("outer"))
            .layer(tag("inner")),
    )
    .await;
    let client = Client::connect(addr).await.unwrap();
    assert_eq!(add::call(&client, 1, 1).await.unwrap(), 2);
    assert_eq!(*order.lock().unwrap(), ["outer", "inner"]);
}

// ---- Introspection --------------------------------------------------------------------

/// Adds two numbers,
///   whatever their signs.
///
/// More text that `rpc.methods` leaves out: its summary is the first paragraph.
#[register]
fn add_documented(a: i64, b: i64) -> i64 {
    a + b
}

#[tokio::test]
async fn rpc_methods_describes_every_method() {
    let addr = start(
        builder()
            .register(add_documented::method())
            .register(easyrpc::Method::async_fn(
                "closure",
                |(n,): (u32,)| async move { n },
            )),
    )
    .await;
    for codec in [Codec::Msgpack, Codec::Bincode] {
        let client = Client::connect_with(addr, config(codec)).await.unwrap();
        let methods: Vec<easyrpc::MethodDescription> = client.call("rpc.methods", ()).await.unwrap();
        let find = |name: &str| {
            methods
                .iter()
                .find(|m| m.name == name)
                .unwrap_or_else(|| panic!("{name} missing from {methods:?}"))
        };
        let add = find("add_documented");
        assert_eq!(add.args, [("a".into(), "i64".into()), ("b".into(), "i64".into())]);
        assert_eq!(
            (add.returns.as_str(), add.sync, add.doc.as_str()),
            ("i64", true, "Adds two numbers, whatever their signs.")
        );
        assert_eq!(add.signature(), "add_documented(a: i64, b: i64) -> i64");
        // State and Context are not on the wire: not listed.
        let put = find("kv_put");
        assert_eq!(
            put.signature(),
            "kv_put(key: String, value: String) -> Option<String>"
        );
        let get = find("kv_get");
        assert!(!get.sync);
        assert_eq!(find("facts").args.len(), 1);
        // A closure: types unknown.
        let closure = find("closure");
        assert_eq!((closure.returns.as_str(), closure.args.len()), ("?", 1));
        assert_eq!(closure.args[0].1, "?");
        // Reserved methods are not listed; the list is sorted.
        assert!(methods.iter().all(|m| !m.name.starts_with("rpc.")));
        let mut names: Vec<&str> = methods.iter().map(|m| m.name.as_str()).collect();
        let sorted = {
            let mut n = names.clone();
            n.sort_unstable();
            n
        };
        assert_eq!(names, sorted);
        names.dedup();
    }
}

#[tokio::test]
async fn rpc_health_says_serving_then_draining() {
    let seen = Arc::new(Seen::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::builder()
        .register(slow::method())
        .shared_state(seen.clone())
        .grace_period(Duration::from_secs(5))
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .run(listener, async {
                let _ = stopped.await;
            })
            .await
    });
    // With the extensions: dropping the held call below cancels it on the server.
    let client = Client::connect_with(addr, config(Codec::Msgpack)).await.unwrap();
    let health: String = client.call("rpc.health", ()).await.unwrap();
    assert_eq!(health, "serving");
    // A call in flight keeps the connection through the drain.
    let held = tokio::spawn({
        let client = client.clone();
        async move { slow::call(&client).await }
    });
    timeout(LIMIT, seen.started.notified()).await.unwrap();
    stop.send(()).unwrap();
    // Asked until the drain is seen (the connection sees the signal on its next wake-up).
    let mut last = String::new();
    for _ in 0..1000 {
        last = timeout(LIMIT, client.call("rpc.health", ()))
            .await
            .unwrap()
            .unwrap();
        if last == "draining" {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(last, "draining");
    // Other calls are refused while draining (the client then finds the port closed).
    // (It may be resent: a short timeout bounds the retries.)
    let e = add::call(&client.with_timeout(Duration::from_millis(300)), 1, 2)
        .await
        .unwrap_err();
    assert!(
        matches!(e, easyrpc::Error::Unavailable(_) | easyrpc::Error::Timeout(_))
            || e.code() == Some(ErrorCode::ShuttingDown),
        "{e}"
    );
    held.abort();
    drop(client);
    timeout(LIMIT, task).await.unwrap().unwrap();
}

// ---- Per-call tracing -----------------------------------------------------------------

#[register]
fn traced_sync(n: i64) -> i64 {
    tracing::info!(n, "inside the sync handler");
    n
}

#[register]
async fn traced_async(n: i64) -> Result<i64, String> {
    tokio::task::yield_now().await;
    tracing::info!(n, "inside the async handler");
    if n < 0 {
        Err("negative".into())
    } else {
        Ok(n)
    }
}

#[test]
fn each_call_has_a_span_with_its_outcome_and_the_handler_s_events_nest_in_it() {
    use tracing_subscriber::fmt::format::FmtSpan;
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_span_events(FmtSpan::CLOSE)
        .with_env_filter("easyrpc_server::call=debug,services=info")
        .finish();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tracing::subscriber::with_default(subscriber, || {
        rt.block_on(async {
            let addr = start(
                Server::builder()
                    .register(traced_sync::method())
                    .register(traced_async::method()),
            )
            .await;
            let client = Client::connect(addr).await.unwrap();
            assert_eq!(traced_sync::call(&client, 7).await.unwrap(), 7);
            assert_eq!(traced_async::call(&client, 8).await.unwrap(), 8);
            assert!(traced_async::call(&client, -1).await.is_err());
        });
    });
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = |needle: &str| {
        log.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{log}"))
            .to_owned()
    };
    // The handlers' events, inside their call's span (sync ones too, on the blocking pool).
    let sync_event = line("inside the sync handler");
    assert!(sync_event.contains("call{method=traced_sync"), "{sync_event}");
    let async_event = line("inside the async handler n=8");
    assert!(async_event.contains("call{method=traced_async"), "{async_event}");
    // Each span's close carries its outcome and duration.
    let closes: Vec<&str> = log.lines().filter(|l| l.contains("close")).collect();
    assert_eq!(closes.len(), 3, "{log}");
    assert!(
        closes
            .iter()
            .any(|l| l.contains("traced_sync") && l.contains("outcome=\"ok\"")),
        "{log}"
    );
    assert!(
        closes.iter().any(|l| l.contains("traced_async")
            && l.contains("outcome=\"handler error\"")
            && l.contains("duration_us=")),
        "{log}"
    );
}
