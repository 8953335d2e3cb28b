//! The README's Rust examples, compiled. Each ```rust block of README.md is below, word for
//! word, in the least context that makes it compile (a module, a function around its
//! statements, the names it assumes); `every_rust_block_of_the_readme_is_here` checks that
//! the README has no block that is not here. So an example that stops compiling fails the
//! build, and a README example changed without this file fails the test: copy it here.
//!
//! Lines are compared trimmed, blank lines and lines ending in `// readme: context` (the
//! context inserted inside a block) left out. The blocks are not run: they use fixed ports
//! and paths.

#![allow(unused, unreachable_pub, clippy::all)]

// Block 6 names the facade under another name, as a crate that renames it would.
extern crate easyrpc as my_rpc;

/// The README's ```rust blocks: every one of them must be in this file.
const BLOCKS: usize = 20;

/// The `add` that the later blocks register, as the first one defines it.
#[easyrpc::register]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

/// `text`'s lines, trimmed, without blank lines and context lines.
fn normalize(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.ends_with("// readme: context"))
        .collect()
}

/// The ```rust blocks of a markdown text.
fn rust_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match &mut current {
            None if line.starts_with("```rust") => current = Some(String::new()),
            None => {}
            Some(_) if line.starts_with("```") => blocks.extend(current.take()),
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    blocks
}

#[test]
fn every_rust_block_of_the_readme_is_here() {
    let blocks = rust_blocks(include_str!("../../README.md"));
    let here = normalize(include_str!("readme.rs"));
    let missing: Vec<String> = blocks
        .iter()
        .enumerate()
        .filter(|(_, block)| {
            let lines = normalize(block);
            !here.windows(lines.len()).any(|w| w == lines.as_slice())
        })
        .map(|(i, block)| format!("block {} of the README:\n{block}", i + 1))
        .collect();
    assert!(
        missing.is_empty(),
        "README examples not in rpc/tests/readme.rs (copy them in, word for word, where they compile):\n{}",
        missing.join("\n")
    );
    assert_eq!(
        blocks.len(),
        BLOCKS,
        "the README's ```rust blocks: add the new ones here, and to BLOCKS"
    );
}

#[rustfmt::skip]
mod b01_tracing {
fn subscriber() {
let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
tracing_subscriber::fmt().with_env_filter(filter).init();
}
}

#[rustfmt::skip]
mod b02_03_register_and_call {
use easyrpc::{register, Server};

#[register]                      // sync fn: runs on the blocking pool, never on the reactor
fn add(a: i64, b: i64) -> i64 { a + b }

#[register(max_flow = 100)]      // at most 100 running at once; the 101st gets Overloaded
async fn fib(n: u64) -> u64 { (0..n).fold((0, 1), |(a, b), _| (b, a + b)).0 }

#[register(name = "div")]        // served as "div"; Err reaches the caller as a handler error
fn checked_div(a: i64, b: i64) -> Result<i64, String> {
    a.checked_div(b).ok_or_else(|| "division by zero".to_string())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    Server::builder()
        .register(add::method())
        .register(fib::method())
        .register(checked_div::method())
        .serve("127.0.0.1:25000", easyrpc::shutdown_signal()) // ctrl-c or TERM: drain, then stop
        .await?;
    Ok(())
}

async fn calls() -> Result<(), Box<dyn std::error::Error>> {
let client = easyrpc::Client::connect("127.0.0.1:25000").await?;
let five = add::call(&client, 2, 3).await?;                  // typed stub, async
let sum: i64 = client.call("add", (2, 3)).await?;            // by name, any serde types
let v = client.call_value("add", vec![2.into(), 3.into()]).await?; // rmpv::Value in and out
client.notify("add", (1, 1)).await?;                         // notification: no reply

let blocking = easyrpc::BlockingClient::connect("127.0.0.1:25000")?; // no runtime needed
let five = add::call_blocking(&blocking, 2, 3)?;
Ok(())
}
}

#[rustfmt::skip]
mod b04_declare {
easyrpc::declare! {
    pub fn add(a: i64, b: i64) -> i64;
    #[rpc(name = "div")]
    pub fn checked_div(a: i64, b: i64) -> Result<i64, String>; // stubs return CallError<String>
}
}

#[rustfmt::skip]
mod b05_without_macros {
use easyrpc::Server;

fn build() -> Result<(), Box<dyn std::error::Error>> {
let server = Server::builder()
    .sync_fn("add", |(a, b): (i64, i64)| a + b)
    .async_fn("twice", |(x,): (u64,)| async move { x * 2 })
    .register(easyrpc::Method::try_sync_fn("parse", |(s,): (String,)| s.parse::<i64>()))
    .build()?; // two functions under one name is an error here, never an overwrite
Ok(())
}
}

#[rustfmt::skip]
mod b06_renamed {
#[my_rpc::register(crate = "my_rpc")]
fn add(a: i64, b: i64) -> i64 { a + b }

my_rpc::declare! {
    crate = "my_rpc";
    pub fn sub(a: i64, b: i64) -> i64;
}
}

#[rustfmt::skip]
mod b07_state_and_context {
use std::collections::HashMap;
use std::sync::Mutex;
use easyrpc::{register, Context, Server, State};

#[derive(Default)]
struct Store(Mutex<HashMap<String, String>>);

#[register]                                   // sync: on the blocking pool, as always
fn kv_put(store: State<Store>, key: String, value: String) -> Option<String> {
    store.0.lock().unwrap().insert(key, value)
}

#[register]                                   // State and Context may go anywhere in the list
async fn kv_get(key: String, store: State<Store>) -> Option<String> {
    store.0.lock().unwrap().get(&key).cloned()
}

#[register]
fn whoami(ctx: Context) -> String {           // the call's facts
    ctx.peer().to_string()
}

fn build() -> Result<(), Box<dyn std::error::Error>> { // readme: context
let server = Server::builder()
    .state(Store::default())                  // one value per type; several types allowed
    .register(kv_put::method())
    .register(kv_get::method())
    .register(whoami::method())
    .build()?;                                // a missing state fails here, naming function and type
// The stubs take the wire arguments only: kv_put::call(&client, key, value).
Ok(()) // readme: context
}
}

#[rustfmt::skip]
mod b08_service {
use std::collections::HashMap;
use std::sync::Mutex;
use easyrpc::Server;

#[derive(Default)]
pub struct Kv(Mutex<HashMap<String, String>>);

#[easyrpc::service(prefix = "kv")]                // served as "kv.put", "kv.get"
impl Kv {
    pub fn new() -> Kv { Kv::default() }      // no `self`: not served
    pub fn put(&self, key: String, value: String) -> Option<String> {   // sync: blocking pool
        self.0.lock().unwrap().insert(key, value)
    }
    pub async fn get(&self, key: String) -> Option<String> {
        self.0.lock().unwrap().get(&key).cloned()
    }
    #[rpc(name = "kv_len", max_flow = 10)]   // per-method options, as for #[register]
    pub async fn len(&self) -> usize { self.0.lock().unwrap().len() }
    fn helper(&self) {}                       // not `pub`: not served
}

async fn build(client: easyrpc::Client, blocking: easyrpc::BlockingClient) -> Result<(), Box<dyn std::error::Error>> { // readme: context
let server = Server::builder().service(Kv::new()).build()?;   // one instance, shared by all calls
let kv = KvClient::new(client.clone());      // generated: one typed method each
kv.put("a".into(), "1".into()).await?;
let kv = KvBlockingClient::new(blocking);    // and the blocking one
Ok(()) // readme: context
}
}

#[rustfmt::skip]
mod b09_layers {
use std::time::Duration;
use easyrpc::Server;

fn build() {
use easyrpc::layers::{Log, MethodTimeout, RequireToken};

Server::builder()
    .layer(Log::new())                                                // info line per call: method, peer, time, outcome
    .layer(RequireToken::new("authorization", |t| t == "Bearer t0ken")) // else code 11, unauthenticated
    .layer(MethodTimeout::new().method("slow", Duration::from_secs(2)))  // else code 8; the context is cancelled
;
}
}

#[rustfmt::skip]
mod b10_typed_errors {
use easyrpc::register;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub enum TodoError { NotFound(u64) }
impl std::fmt::Display for TodoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let TodoError::NotFound(id) = self;
        write!(f, "todo {id} not found")
    }
}

#[register]
fn get(id: u64) -> Result<String, TodoError> { Err(TodoError::NotFound(id)) }

async fn call(client: easyrpc::Client) -> Result<(), easyrpc::Error> { // readme: context
match get::call(&client, 42).await {                  // or get::call_blocking(&blocking, 42)
    Ok(title) => println!("{title}"),
    Err(easyrpc::CallError::Handler(TodoError::NotFound(id))) => println!("no todo {id}"),
    Err(easyrpc::CallError::Rpc(e)) => return Err(e.into()), // transport, timeout, overloaded...
}
let title = get::call(&client, 1).await?;              // `?` into easyrpc::Error still works
Ok(())
}
}

#[rustfmt::skip]
mod b11_12_streams {
use easyrpc::stream::{self, Stream, StreamExt};
use easyrpc::{register, Streaming};

/// n - 1 down to 0, one item at a time.
#[register]
async fn countdown(n: u64) -> impl Stream<Item = u64> {
    stream::iter((0..n).rev())
}

/// Lines of a log, read lazily on the blocking pool; an `Err` item ends the stream.
#[register]
fn tail(path: String) -> impl Iterator<Item = std::io::Result<String>> {
    use std::io::BufRead;
    let file = std::fs::File::open(path);
    file.into_iter().flat_map(|f| std::io::BufReader::new(f).lines())
}

/// The sum of what the caller sends.
#[register]
async fn sum(mut numbers: Streaming<i64>) -> i64 {
    let mut total = 0;
    while let Some(Ok(n)) = numbers.next().await {
        total += n;
    }
    total
}

/// Each number back, doubled, as it comes.
#[register]
async fn double(numbers: Streaming<i64>) -> impl Stream<Item = i64> {
    numbers.filter_map(|n| async move { n.ok().map(|n| n * 2) })
}

async fn calls(client: easyrpc::Client, blocking_client: easyrpc::BlockingClient) -> Result<(), Box<dyn std::error::Error>> {
let mut ticks = countdown::call(&client, 3).await?;       // ItemStream<u64>
while let Some(n) = ticks.next().await {
    println!("{}", n?);                                     // 2, 1, 0
}
let total = sum::call(&client, stream::iter(1..=100)).await?;   // 5050
let doubled = double::call(&client, stream::iter([1, 2])).await?;
// Blocking: an iterator out, any IntoIterator in.
for n in countdown::call_blocking(&blocking_client, 3)? {
    println!("{}", n?);
}
let total = sum::call_blocking(&blocking_client, 1..=100)?;
// By name: client.call_stream::<_, u64>("countdown", (3,)), call_upload, call_bidi.
Ok(())
}
}

#[rustfmt::skip]
mod b13_unix {
use easyrpc::Server;

use super::add;

async fn serve() -> Result<(), Box<dyn std::error::Error>> {
Server::builder()
    .register(add::method())
    .unix_socket_mode(0o660)             // the default: owner and group may connect
    .serve_unix("/run/myapp/rpc.sock", easyrpc::shutdown_signal())
    .await?;

let client = easyrpc::Client::connect_unix("/run/myapp/rpc.sock").await?;
let blocking = easyrpc::BlockingClient::connect_unix("/run/myapp/rpc.sock")?;
Ok(())
}
}

#[rustfmt::skip]
mod b14_tls {
use easyrpc::Server;

use super::add;

async fn serve() -> Result<(), Box<dyn std::error::Error>> {
use easyrpc::{ClientTls, TlsConfig};

// Server: `serve`, `run` (one process or prefork: every worker serves TLS) and
// `Server::run` all serve TLS once the builder has it (and so does every plain TCP
// address given to `listen`; `listen_tls(addr, tls)` serves TLS on that address only,
// next to plain TCP and Unix listeners).
let tls = TlsConfig::from_pem_files("server.crt", "server.key")?
    .client_ca("clients-ca.crt")?;       // optional: mutual TLS
Server::builder()
    .register(add::method())
    .tls(tls)
    .serve("0.0.0.0:25000", easyrpc::shutdown_signal())
    .await?;
// Or with a listener of your own: server.run_tls(listener, tls, shutdown).await

// Clients: the server name is the host of the address unless set.
let tls = ClientTls::from_ca_file("ca.crt")?      // or ClientTls::webpki_roots()
    .server_name("localhost")                     // optional
    .client_cert("client.crt", "client.key")?;    // mutual TLS
let client = easyrpc::Client::connect_tls("127.0.0.1:25000", tls.clone()).await?;
let blocking = easyrpc::BlockingClient::connect_tls("127.0.0.1:25000", tls)?; // no runtime
Ok(())
}
}

#[rustfmt::skip]
mod b15_listeners_and_rules {
use super::add;

#[easyrpc::register]
fn admin_reset() {}

async fn serve() -> Result<(), Box<dyn std::error::Error>> {
use easyrpc::rules::{Match, Rules};
use easyrpc::{Server, TlsConfig, Transport};

Server::builder()
    .register(add::method())
    .register(admin_reset::method())
    .listen("127.0.0.1:25000")                                // plain TCP
    .listen_tls("0.0.0.0:25001", TlsConfig::from_pem_files("server.crt", "server.key")?)
    .listen("unix:/run/myapp/rpc.sock")                       // or listen_unix(path)
    .rules(
        Rules::new()
            // Who may connect: TCP and TLS peers from 10/8 only (Unix peers match
            // neither rule, so they are let in).
            .allow(Match::any().from("10.0.0.0/8".parse()?))
            .deny(Match::any().on(Transport::Tcp).on(Transport::Tls))
            // Who may call what: admin_* over the Unix socket only, as root.
            .methods_only("admin_*", Match::any().on(Transport::Unix).uid(0)),
    )
    .serve_listeners(easyrpc::shutdown_signal())   // or .bind().await? (addresses bound), then .serve(..)
    .await?;
// From a plain fn main, with or without prefork: .run_listeners() / .run_listeners_with(|addrs| ..)
Ok(())
}
}

#[rustfmt::skip]
mod b16_prefork {
use easyrpc::Server;

use super::add;

fn main() -> Result<(), easyrpc::ServeError> {
    // A plain fn main: no runtime and no thread may exist before the fork.
    Server::builder()
        .register(add::method())
        .prefork(0)          // workers; 0 = one per core (the default when prefork is on)
        .bind_core(true)     // pin worker i to core i % cores
        .run("127.0.0.1:25000")
}
}

#[cfg(feature = "etcd")]
#[rustfmt::skip]
mod b17_etcd {
use easyrpc::{Client, Registration, Server};

use super::add;

async fn scale_out() -> Result<(), Box<dyn std::error::Error>> {
// easyrpc = { version = "0.1", features = ["etcd"] }
Server::builder()
    .register(add::method())
    .discovery(Registration::new(["http://10.0.0.1:2379"], "calc").advertise("10.0.0.5:25000"))
    .run("0.0.0.0:25000")?;

let client = Client::discover(["http://10.0.0.1:2379"], "calc").await?;   // follows etcd
let client = Client::balanced(["10.0.0.5:25000", "10.0.0.6:25000"]).await?; // a fixed list
let sum: i64 = client.idempotent().call("add", (1, 2)).await?;
let sum: i64 = add::call(&client, 1, 2).await?;            // typed stubs work the same
Ok(())
}
}

#[rustfmt::skip]
mod b18_client_handlers {
use easyrpc::{ClientConfig, ServerError};

fn handlers() {
let mut config = ClientConfig::default();
config
    .on_request("plus_one", |params| match params[0].as_i64() {
        Some(n) => Ok((n + 1).into()),
        None => Err(ServerError::with_code(1, "plus_one takes a number")),
    })
    .on_notification("nvim_buf_lines_event", |params| println!("{params}"));
}
}

#[rustfmt::skip]
mod b19_compression {
use easyrpc::{Client, ClientConfig, Compression, Server};

async fn compressed(addr: std::net::SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
let mut config = ClientConfig::default();
config.compression(4096);                       // or config.compression = Some(Compression::new(t).with_level(1))
let client = Client::connect_with(addr, config).await?;

let server = Server::builder()
    .compression(Some(Compression::new(64 * 1024)))  // the server's own threshold; None: off
    /* ... */;
Ok(())
}
}

#[rustfmt::skip]
mod b20_blob {
use easyrpc::{register, Blob};

#[register]
async fn store(name: String, data: Blob) -> u64 { /* data derefs to [u8] */ data.len() as u64 }

#[register]
async fn fetch(name: String) -> Blob { Blob::from(std::fs::read(name).unwrap_or_default()) }

async fn call(client: easyrpc::Client, bytes: Vec<u8>) -> Result<(), Box<dyn std::error::Error>> { // readme: context
let reply: Blob = client.call("echo_blob", (Blob::from(bytes),)).await?;
Ok(()) // readme: context
}
}
