//! The functions served by the examples, and the client calls they make.
//!
//! [`service`] holds the implementation (with `#[register]`); [`api`] declares the same
//! functions by signature alone, the way a crate that only calls the service would.

use std::time::Instant;

use serde_bytes::ByteBuf;

/// The served functions.
pub mod service {
    use easyrpc::register;
    use serde_bytes::ByteBuf;

    /// Adds two numbers.
    #[register]
    pub fn add(a: i64, b: i64) -> i64 {
        a.wrapping_add(b)
    }

    /// Adds two numbers, in the connection's task (`inline`: it never blocks).
    #[register(inline)]
    pub fn add_inline(a: i64, b: i64) -> i64 {
        a.wrapping_add(b)
    }

    /// Fibonacci, iteratively, on the runtime.
    #[register]
    pub async fn fib_async(n: u64) -> u64 {
        (0..n).fold((0u64, 1u64), |(a, b), _| (b, a.wrapping_add(b))).0
    }

    /// Fibonacci, recursively: CPU-bound, so it runs on the blocking pool. At most 100 run
    /// at once.
    #[register(max_flow = 100)]
    pub fn fib_sync(n: u64) -> u64 {
        fn fib(n: u64) -> u64 {
            if n < 2 {
                n
            } else {
                fib(n - 1).wrapping_add(fib(n - 2))
            }
        }
        fib(n)
    }

    /// Returns its argument (msgpack bin in, bin out).
    #[register]
    pub async fn echo(data: ByteBuf) -> ByteBuf {
        data
    }

    /// Test aid (`server --gate ADDR`): connects to ADDR, sends this process's pid (4 bytes,
    /// little-endian) and holds one of 10 `max_flow` slots until the peer closes that
    /// connection; returns the pid. With `--workers`, the 10 slots are shared by every
    /// worker, so the peer sees how many run at once across the whole server.
    #[register(max_flow = 10)]
    pub async fn gate() -> Result<u32, std::io::Error> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = super::probes::gate_addr()?;
        let mut peer = tokio::net::TcpStream::connect(addr).await?;
        peer.write_all(&std::process::id().to_le_bytes()).await?;
        let mut sink = [0u8; 64];
        while peer.read(&mut sink).await? != 0 {}
        Ok(std::process::id())
    }

    /// Test aid (`server --journal FILE`): appends a line `KEY PID` to FILE, so that every
    /// execution leaves a trace, with the process that ran it; returns `key`.
    #[register]
    pub fn journal(key: u64) -> Result<u64, std::io::Error> {
        super::probes::append_journal(key)?;
        Ok(key)
    }

    /// The caller's address as the server sees it (`127.0.0.1:41234`, or `unix:uid=..`
    /// on a Unix socket), from the call's context.
    #[register]
    pub fn whoami(ctx: easyrpc::Context) -> String {
        ctx.peer().to_string()
    }

    /// What a server administrator may see (served over a Unix socket only: the example
    /// server's rules refuse `admin_*` elsewhere): this process's id, the listener the
    /// call came on, and the caller.
    #[register]
    pub fn admin_info(ctx: easyrpc::Context) -> std::collections::BTreeMap<String, String> {
        std::collections::BTreeMap::from([
            ("pid".to_owned(), std::process::id().to_string()),
            ("listener".to_owned(), ctx.listener().to_owned()),
            ("peer".to_owned(), ctx.peer().to_string()),
        ])
    }

    /// The key-value store `kv_put` and `kv_get` share: the server's state. Under
    /// `--workers`, each worker process has its own.
    #[derive(Debug, Default)]
    pub struct Kv(std::sync::Mutex<std::collections::HashMap<String, String>>);

    /// Sets `key` to `value`; returns the value it had.
    #[register]
    pub fn kv_put(kv: easyrpc::State<Kv>, key: String, value: String) -> Option<String> {
        kv.0.lock().unwrap_or_else(|p| p.into_inner()).insert(key, value)
    }

    /// The value of `key`.
    #[register]
    pub async fn kv_get(kv: easyrpc::State<Kv>, key: String) -> Option<String> {
        kv.0.lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned()
    }

    /// `n - 1` down to 0, one item at a time: a result stream (the caller reads each number
    /// as it comes; `rpc call ADDR countdown 3` prints one JSON line per item).
    #[register]
    pub async fn countdown(n: u64) -> impl easyrpc::Stream<Item = u64> {
        easyrpc::stream::iter((0..n).rev())
    }

    /// The sum of every number the caller streams: an argument stream (an upload).
    #[register]
    pub async fn sum_stream(mut numbers: easyrpc::Streaming<i64>) -> Result<i64, easyrpc::ServerError> {
        use easyrpc::StreamExt;
        let mut total = 0i64;
        while let Some(n) = numbers.next().await {
            total = total.wrapping_add(n?);
        }
        Ok(total)
    }

    /// The server with every example function registered, and the state they share.
    pub fn builder() -> easyrpc::Builder {
        easyrpc::Server::builder()
            .state_with(Kv::default)
            .register(whoami::method())
            .register(admin_info::method())
            .register(kv_put::method())
            .register(kv_get::method())
            .register(add::method())
            .register(add_inline::method())
            .register(fib_async::method())
            .register(fib_sync::method())
            .register(echo::method())
            .register(gate::method())
            .register(journal::method())
            .register(countdown::method())
            .register(sum_stream::method())
    }
}

/// Where the test aids [`service::gate()`] and [`service::journal()`] report, set once by the
/// server's `--gate` and `--journal` flags (never by a client).
pub mod probes {
    use std::io::{self, Write};
    use std::path::PathBuf;
    use std::sync::OnceLock;

    static GATE: OnceLock<String> = OnceLock::new();
    static JOURNAL: OnceLock<PathBuf> = OnceLock::new();

    /// The address `gate` connects to.
    pub fn set_gate(addr: String) {
        let _ = GATE.set(addr);
    }

    /// The file `journal` appends to.
    pub fn set_journal(path: PathBuf) {
        let _ = JOURNAL.set(path);
    }

    pub(crate) fn gate_addr() -> io::Result<&'static str> {
        GATE.get()
            .map(String::as_str)
            .ok_or_else(|| io::Error::other("this server was started without --gate"))
    }

    pub(crate) fn append_journal(key: u64) -> io::Result<()> {
        let path = JOURNAL
            .get()
            .ok_or_else(|| io::Error::other("this server was started without --journal"))?;
        // One write to a file opened for appending: lines from several processes do not
        // interleave.
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        file.write_all(format!("{key} {}\n", std::process::id()).as_bytes())
    }
}

/// The same functions, declared by signature only: what a client crate writes.
pub mod api {
    easyrpc::declare! {
        /// Adds two numbers.
        pub fn add(a: i64, b: i64) -> i64;
        /// Adds two numbers, in the connection's task.
        pub fn add_inline(a: i64, b: i64) -> i64;
        /// Fibonacci on the runtime.
        pub async fn fib_async(n: u64) -> u64;
        /// Fibonacci on the blocking pool.
        pub fn fib_sync(n: u64) -> u64;
        /// Echo of bytes.
        pub async fn echo(data: serde_bytes::ByteBuf) -> serde_bytes::ByteBuf;
        /// Test aid: holds a `max_flow` slot until the server's gate peer lets go.
        pub async fn gate() -> u32;
        /// Test aid: one journal line per execution.
        pub fn journal(key: u64) -> u64;
        /// The caller's address, as the server sees it.
        pub fn whoami() -> String;
        /// Sets `key` to `value`; returns the value it had.
        pub fn kv_put(key: String, value: String) -> Option<String>;
        /// The value of `key`.
        pub async fn kv_get(key: String) -> Option<String>;
        /// This process, the call's listener and its caller (over a Unix socket only).
        pub fn admin_info() -> std::collections::BTreeMap<String, String>;
        /// `n - 1` down to 0: a stream of numbers (needs `Config::extensions`).
        pub async fn countdown(n: u64) -> impl Stream<Item = u64>;
        /// The sum of the numbers streamed (needs `Config::extensions`).
        pub async fn sum_stream(numbers: Streaming<i64>) -> i64;
    }
}

/// Call every function through the async stubs, including 1 000 concurrent calls and the
/// streaming ones (`client` needs `Config::extensions` for those).
///
/// # Errors
///
/// The first failed call.
pub async fn async_calls(client: &easyrpc::Client) -> Result<(), easyrpc::Error> {
    println!(
        "async    add(2, 3)          = {}",
        api::add::call(client, 2, 3).await?
    );
    println!(
        "async    fib_async(50)      = {}",
        api::fib_async::call(client, 50).await?
    );
    println!(
        "async    fib_sync(25)       = {}",
        api::fib_sync::call(client, 25).await?
    );
    let data = api::echo::call(client, ByteBuf::from(b"hello".to_vec())).await?;
    println!(
        "async    echo(b\"hello\")     = {:?}",
        String::from_utf8_lossy(&data)
    );
    let by_name: i64 = client.call("add", (40, 2)).await?;
    println!("by name  add(40, 2)         = {by_name}");
    let value = client.call_value("add", vec![1.into(), 1.into()]).await?;
    println!("dynamic  add(1, 1)          = {value}");
    println!(
        "async    whoami()           = {}",
        api::whoami::call(client).await?
    );
    api::kv_put::call(client, "greeting".into(), "hello".into()).await?;
    println!(
        "async    kv_get(\"greeting\") = {:?}",
        api::kv_get::call(client, "greeting".into()).await?
    );

    // Streams: the client was made with `Config::extensions`.
    let mut numbers = api::countdown::call(client, 5).await?;
    let mut items = Vec::new();
    while let Some(n) = easyrpc::StreamExt::next(&mut numbers).await {
        items.push(n?);
    }
    println!("stream   countdown(5)       = {items:?}");
    let total = api::sum_stream::call(client, easyrpc::stream::iter(1..=100)).await?;
    println!("stream   sum_stream(1..=100) = {total}");

    let start = Instant::now();
    let calls: Vec<_> = (0..1000i64)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { api::add::call(&client, i, i).await })
        })
        .collect();
    let mut sum = 0i64;
    for c in calls {
        // Unwrap: the spawned calls do not panic.
        sum += c.await.unwrap()?;
    }
    assert_eq!(sum, 999 * 1000, "1000 concurrent adds");
    println!(
        "async    1000 concurrent add(i, i), gathered: sum = {sum} in {:?}",
        start.elapsed()
    );
    Ok(())
}

/// Call every function through the blocking stubs.
///
/// # Errors
///
/// The first failed call.
pub fn blocking_calls(client: &easyrpc::BlockingClient) -> Result<(), easyrpc::Error> {
    println!(
        "blocking add(2, 3)          = {}",
        api::add::call_blocking(client, 2, 3)?
    );
    println!(
        "blocking fib_async(50)      = {}",
        api::fib_async::call_blocking(client, 50)?
    );
    println!(
        "blocking fib_sync(25)       = {}",
        api::fib_sync::call_blocking(client, 25)?
    );
    let data = api::echo::call_blocking(client, ByteBuf::from(vec![7u8; 1024]))?;
    println!("blocking echo(1 KiB)        = {} bytes back", data.len());
    // The same sequential loop through the three ways a function runs: the blocking pool
    // (a plain sync fn), the connection's task (`inline`), and an async fn.
    let n = 10_000;
    let start = Instant::now();
    for i in 0..n {
        api::add::call_blocking(client, i, 1)?;
    }
    let per = start.elapsed() / n as u32;
    println!("blocking {n} sequential add calls: {per:?} per call (sync fn, blocking pool)");
    let start = Instant::now();
    for i in 0..n {
        api::add_inline::call_blocking(client, i, 1)?;
    }
    let per = start.elapsed() / n as u32;
    println!("blocking {n} sequential add_inline calls: {per:?} per call (sync fn, inline)");
    let start = Instant::now();
    for _ in 0..n {
        api::fib_async::call_blocking(client, 1)?;
    }
    let per = start.elapsed() / n as u32;
    println!("blocking {n} sequential fib_async(1) calls: {per:?} per call (async fn)");
    Ok(())
}

/// Log to stderr at `info` unless `RUST_LOG` says otherwise.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
