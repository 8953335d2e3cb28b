//! Turn plain Rust functions into MessagePack-RPC services, and call them from anywhere.
//!
//! Annotate functions with [`register`], serve them with one builder call, and call them
//! through the typed stubs the macro generates, from an async [`Client`] or a
//! [`BlockingClient`], or by name with any serde arguments. The wire is plain
//! [MessagePack-RPC](https://github.com/msgpack-rpc/msgpack-rpc/blob/master/spec.md), so a
//! stock client in any language calls the same server.
//!
//! ```no_run
//! use easyrpc::{register, Server};
//!
//! /// Sync: runs on the blocking pool, never on the reactor.
//! #[register]
//! fn add(a: i64, b: i64) -> i64 {
//!     a + b
//! }
//!
//! /// Async: at most 100 running at once; the 101st gets an Overloaded error.
//! #[register(max_flow = 100)]
//! async fn fib(n: u64) -> u64 {
//!     (0..n).fold((0u64, 1u64), |(a, b), _| (b, a.wrapping_add(b))).0
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//!     let addr = listener.local_addr()?;
//!     let server = Server::builder().register(add::method()).register(fib::method()).build()?;
//!     tokio::spawn(async move { server.run(listener, std::future::pending()).await });
//!
//!     let client = easyrpc::Client::connect(addr).await?;
//!     assert_eq!(add::call(&client, 2, 3).await?, 5);           // typed stub
//!     assert_eq!(client.call::<_, u64>("fib", (10,)).await?, 55); // by name
//!     Ok(())
//! }
//! ```
//!
//! # What `#[register]` generates
//!
//! Next to `fn add`, which stays an ordinary function, a module `add` holds:
//!
//! - `add::NAME`: the name it is served under (the function's, or `#[register(name = "..")]`);
//! - `add::method()`: the [`Method`] to pass to [`Builder::register`];
//! - `add::call(&Client, a, b).await` and `add::call_blocking(&BlockingClient, a, b)`: typed
//!   stubs with the function's own argument types, returning `Result<T, easyrpc::Error>`, or
//!   `Result<T, easyrpc::CallError<E>>` for a function returning `Result<T, E>` (see
//!   [Typed errors](#typed-errors)).
//!
//! A crate that only calls the service gets the same stubs from [`declare!`] with the
//! signatures alone.
//!
//! Arguments and the return type must be `serde::Serialize + serde::de::DeserializeOwned +
//! Send + 'static`, since one side encodes what the other decodes: derive both, and use owned
//! types (`String`, not `&str`). A function may also return `Result<T, E>` with
//! `E: Display`: the error reaches the caller as [`ErrorCode::HandlerError`] carrying `E`'s
//! message, and `E` itself when it is `Serialize` (below). A return type whose last path
//! segment is `Result` (`Result`, `io::Result`, `anyhow::Result`) is treated this way. An
//! async function's future must be `Send`.
//!
//! Register functions at module level: the generated module refers to the function through
//! `super::`. A signature that breaks a rule is a compile error on the token at fault, and a
//! type that does not qualify is one on the type as written.
//!
//! # Options
//!
//! `#[register(...)]` takes, separated by commas:
//!
//! | option | what it does |
//! |---|---|
//! | `name = "math.add"` | the name served and called (default: the function's); names starting with `rpc.` are reserved |
//! | `max_flow = 100` | at most this many calls of the function run at once (across prefork workers too); the next gets [`ErrorCode::Overloaded`] |
//! | `max_flow_wait = "50ms"` | with `max_flow`: a call waits up to this long for a slot before it is refused (`us`, `ms`, `s`) |
//! | `unstable_network` (or `= false`) | answers are remembered per session so a resent call never runs twice ([`DedupConfig`]); per function, over the server's default ([`Builder::unstable_network`]) |
//! | `inline` (or `= false`) | a sync function runs in the connection's task, as an async one that answers at once does, not on the blocking pool: about half the latency of a small call; **only for functions that never block** ([`Method::inline`]) |
//! | `crate = "my_rpc"` | the path the generated code names this crate by, for a dependency renamed in `Cargo.toml` |
//!
//! `#[service(...)]` takes `prefix = "kv"` (methods are served as `kv.NAME`) and `crate`;
//! its methods take `#[rpc(name, max_flow, max_flow_wait, unstable_network, inline)]`. In
//! [`declare!`], a signature takes `#[rpc(name = "..")]`, and a first line
//! `crate = "my_rpc";` applies to every signature.
//!
//! ```
//! // Cargo.toml: my_rpc = { package = "easyrpc", version = "0.1" }
//! # extern crate easyrpc as my_rpc;
//! #[my_rpc::register(crate = "my_rpc", name = "math.add", max_flow = 8, max_flow_wait = "5ms")]
//! fn add(a: i64, b: i64) -> i64 {
//!     a + b
//! }
//! # fn main() { assert_eq!(add::NAME, "math.add"); }
//! ```
//!
//! # State, context and impl-block services
//!
//! An argument of type [`State<T>`] is the server's state of type `T`, given once to
//! [`Builder::state`]; one of type [`Context`] is the call's facts (peer, metadata,
//! deadline, cancellation). Neither is on the wire: the stubs take the other arguments only.
//! `#[service]` on an impl block serves every `pub` method taking `&self`, the instance
//! shared by all calls, and generates `{Type}Client` and `{Type}BlockingClient`:
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use easyrpc::{register, Context, Server, State};
//!
//! #[derive(Default)]
//! pub struct Hits(AtomicU64);
//!
//! #[register]
//! fn hit(hits: State<Hits>, ctx: Context) -> u64 {
//!     let _caller = ctx.peer();
//!     hits.0.fetch_add(1, Ordering::SeqCst) + 1
//! }
//!
//! #[derive(Default)]
//! pub struct Counter(AtomicU64);
//!
//! #[easyrpc::service(prefix = "counter")]
//! impl Counter {
//!     /// Served as "counter.bump"; `CounterClient::bump(&self, by)` calls it.
//!     pub fn bump(&self, by: u64) -> u64 {
//!         self.0.fetch_add(by, Ordering::SeqCst) + by
//!     }
//! }
//!
//! fn main() {
//!     let server = Server::builder()
//!         .state(Hits::default())
//!         .register(hit::method())
//!         .service(Counter::default())
//!         .build()
//!         .unwrap();
//! }
//! ```
//!
//! Call metadata ([`Metadata`], [`Client::with_metadata`]) and tower layers around dispatch
//! ([`Builder::layer`], [`layers`]) complete the picture; see the README.
//!
//! # Streams
//!
//! A function returning `impl Stream<Item = T>` (async) or `impl Iterator<Item = T>` (sync)
//! streams its result; one taking a [`Streaming<U>`] argument receives a stream from its
//! caller; one doing both is two-way. The async stubs return an [`ItemStream<T>`] and take
//! `impl Stream<Item = U>`; items flow under credit-based flow control (64 items at
//! first, then about 1 MiB of items, 16 to 4096 of them), dropping the stream cancels the
//! call, and the client's timeout covers the whole stream. The client needs the extensions ([`ClientConfig`]'s `extensions`); a plain
//! MessagePack-RPC peer gets [`ErrorCode::StreamingMethod`]. See [`ItemStream`] for an
//! example and the README's "Streams" section for all of it.
//!
//! # Typed errors
//!
//! When a function's error type is `Serialize` (as well as `Display`), the server sends the
//! error itself along with its message, as `[3, message, data]` with `data` encoded in the
//! connection's codec, and the stubs decode it back: they return
//! `Result<T, `[`CallError<E>`]`>`, whose [`CallError::Handler`] holds the function's own
//! error and [`CallError::Rpc`] everything else. No bound is added: an `E` that is only
//! `Display` is sent as its message, as before, and then never comes back as `Handler`.
//!
//! ```no_run
//! use easyrpc::{register, CallError};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! pub enum TodoError {
//!     NotFound(u64),
//! }
//!
//! impl std::fmt::Display for TodoError {
//!     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
//!         match self {
//!             TodoError::NotFound(id) => write!(f, "todo {id} not found"),
//!         }
//!     }
//! }
//!
//! #[register]
//! fn get(id: u64) -> Result<String, TodoError> {
//!     Err(TodoError::NotFound(id))
//! }
//!
//! # async fn demo(client: easyrpc::Client) -> Result<(), easyrpc::Error> {
//! match get::call(&client, 42).await {
//!     Ok(title) => println!("{title}"),
//!     Err(CallError::Handler(TodoError::NotFound(id))) => println!("no todo {id}"),
//!     Err(CallError::Rpc(e)) => return Err(e), // transport, timeout, overloaded...
//! }
//! // `?` still converts to `easyrpc::Error` (the function's error as a `Remote` handler error).
//! let title: String = get::call(&client, 1).await?;
//! # Ok(()) }
//! # fn main() {}
//! ```
//!
//! A plain MessagePack-RPC peer reads the code and the message as the first two elements,
//! as it always has; the shapes for peers that read no array
//! ([`ErrorShape::Message`], [`ErrorShape::TypeAndMessage`]) never carry the data. Callers
//! by name get it from the remote error: [`ServerError::decode_data`] into a type, or
//! [`ServerError::data_value`] as a dynamic value (msgpack), and [`CallError::from_error`]
//! turns any [`Error`] into a `CallError<E>`. A one-parameter alias such as
//! `app::Result<T>` does not name `E`: its stubs return `easyrpc::Error` (the data is still
//! sent). `declare!` keeps the error type it is given. Without the macro,
//! [`Method::typed_sync_fn`] and [`Method::typed_async_fn`] send the error's data; the
//! `try_` forms send its message only.
//!
//! # Features
//!
//! All on by default; each can be left out of a build (`default-features = false` and a
//! list of those you want):
//!
//! - `async`: [`Client`] (tokio), and the async stubs the macros generate (`call`,
//!   `{Type}Client`).
//! - `blocking`: [`BlockingClient`] (std sockets, no runtime), and the blocking stubs
//!   (`call_blocking`, `{Type}BlockingClient`).
//! - `tls`: TLS for the clients (`ClientTls`, `connect_tls`; rustls on ring). The server
//!   always serves TLS.
//! - `prefork`: the prefork supervisor (`Builder::prefork`; nix and core_affinity).
//!
//! The macros generate stubs only for the clients the build has, so code using
//! `#[register]`, `#[service]` and `declare!` compiles with any of these sets; a crate that
//! calls `add::call_blocking` needs `blocking`, as one that names `easyrpc::BlockingClient`
//! does. The server is always part of this crate; a program that only calls services
//! can depend on `easyrpc-client` alone, with the same features (its `blocking` alone
//! brings no tokio at all).
//!
//! # Without the macro
//!
//! [`Method::sync_fn`], [`Method::async_fn`] (and their `try_` forms) build the same thing
//! from a name and a closure taking its arguments as one tuple, for services built at run
//! time.
#![doc(test(attr(deny(warnings, rust_2018_idioms), allow(dead_code, unused_variables))))]
#![cfg_attr(docsrs, feature(doc_cfg))]

// Rustdoc shows the docs written on a re-export before the item's own docs, and runs their
// examples as this crate's doctests, with the paths users write. So each item whose own docs
// have no example is re-exported on its own line below: a summary (the line the crate's item
// list shows), an example, and a `# Details` heading over the item's own docs that follow.
// The items whose docs have an example already are re-exported in groups.

pub use easyrpc_client::CallError;
#[cfg(feature = "async")]
pub use easyrpc_client::Client;
#[cfg(feature = "tls")]
pub use easyrpc_client::ClientTls;
#[cfg(feature = "blocking")]
pub use easyrpc_client::{BalancedBlockingClient, BlockingClient};
pub use easyrpc_proto::Metadata;
pub use easyrpc_server::{shutdown_signal, Context, Endpoint, Listening, Method, TlsConfig, TlsIdentity};

// ---- Clients ------------------------------------------------------------------------------

/// Options of one [`BlockingClient`] call: its own timeout, whether it may be resent after a
/// reconnect, its metadata.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use easyrpc::{BlockingClient, CallOptions};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let rt = tokio::runtime::Runtime::new()?;
/// # let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
/// # let addr = listener.local_addr()?;
/// # let server = easyrpc::Server::builder().sync_fn("add", |(a, b): (i64, i64)| a + b).build()?;
/// # rt.spawn(async move { server.run(listener, std::future::pending()).await });
/// let client = BlockingClient::connect(addr)?;
/// // `add` changes nothing: it is safe to send again if the connection drops mid-call.
/// let opts = CallOptions::default().timeout(Duration::from_millis(500)).idempotent();
/// let sum: i64 = client.call_with("add", (2, 3), opts)?;
/// assert_eq!(sum, 5);
/// # Ok(()) }
/// ```
///
/// # Details
#[cfg(feature = "blocking")]
pub use easyrpc_client::CallOptions;

/// Settings of a [`Client`] or a [`BlockingClient`], given to `connect_with`: timeouts, codec,
/// extensions, reconnection, and handlers for the server's own requests.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use easyrpc::{Client, ClientConfig};
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// # let addr = listener.local_addr()?;
/// # let server = easyrpc::Server::builder().sync_fn("add", |(a, b): (i64, i64)| a + b).build()?;
/// # tokio::spawn(async move { server.run(listener, std::future::pending()).await });
/// let mut config = ClientConfig::default();
/// config.timeout = Duration::from_secs(2); // each call's, retries included
/// config.extensions = true; // a server of ours: the timeout travels and cancels the handler
/// let client = Client::connect_with(addr, config).await?;
/// let sum: i64 = client.call("add", (2, 3)).await?;
/// assert_eq!(sum, 5);
/// # Ok(()) }
/// ```
///
/// # Details
pub use easyrpc_client::Config as ClientConfig;

/// Why a call failed: the connection, a timeout, or an error the server answered with.
///
/// # Examples
///
/// ```
/// use easyrpc::{Client, Error, ErrorCode};
///
/// /// What to tell the user about a failed call.
/// fn explain(e: &Error) -> String {
///     match e {
///         Error::Unavailable(_) => "the server is down".to_owned(),
///         Error::Timeout(after) => format!("no answer within {after:?}"),
///         e if e.code() == Some(ErrorCode::MethodNotFound) => "the server is too old".to_owned(),
///         e => e.to_string(),
///     }
/// }
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// # let addr = listener.local_addr()?;
/// # let server = easyrpc::Server::builder().sync_fn("add", |(a, b): (i64, i64)| a + b).build()?;
/// # tokio::spawn(async move { server.run(listener, std::future::pending()).await });
/// let client = Client::connect(addr).await?;
/// let err = client.call::<_, i64>("sub", (5, 3)).await.unwrap_err();
/// assert_eq!(explain(&err), "the server is too old");
/// # Ok(()) }
/// ```
///
/// # Details
pub use easyrpc_client::Error;

/// An error answered by a server that is not ours, or not known to be
/// ([`ClientConfig::our_server`]): its code is that server's own ([`Error::Foreign`]).
///
/// # Examples
///
/// ```
/// use easyrpc::{Client, ClientConfig};
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// # let addr = listener.local_addr()?;
/// # let server = easyrpc::Server::builder().sync_fn("add", |(a, b): (i64, i64)| a + b).build()?;
/// # tokio::spawn(async move { server.run(listener, std::future::pending()).await });
/// let mut config = ClientConfig::default();
/// config.our_server = false; // a third-party server, such as Neovim: its codes are its own
/// let client = Client::connect_with(addr, config).await?;
/// let err = client.call::<_, i64>("sub", (5, 3)).await.unwrap_err();
/// let foreign = err.foreign().expect("read as the server's own error");
/// assert_eq!(foreign.code, Some(1));
/// assert_eq!(foreign.message, "method not found: sub");
/// assert_eq!(err.to_string(), "server error 1: method not found: sub");
/// # Ok(()) }
/// ```
///
/// # Details
pub use easyrpc_client::ForeignError;

/// What failed when TLS did ([`Error::Tls`]): tells a certificate or settings problem,
/// which connecting again will not fix, from a failed handshake.
///
/// # Examples
///
/// ```
/// use easyrpc::{ClientTls, Error, TlsCause};
///
/// let err = ClientTls::from_ca_pem(b"not a certificate").unwrap_err();
/// let advice = match &err {
///     Error::Tls { cause: TlsCause::UnknownIssuer | TlsCause::NameMismatch, .. } => {
///         "check the CA file and the server name"
///     }
///     Error::Tls { cause: TlsCause::Config, .. } => "check the PEM files",
///     _ => "try again",
/// };
/// assert_eq!(advice, "check the PEM files");
/// ```
///
/// # Details
pub use easyrpc_client::TlsCause;

// ---- The protocol -------------------------------------------------------------------------

/// One method of a server, as the reserved call `rpc.methods` describes it: name, signature,
/// sync or async, `max_flow`, and the summary of its doc comment (its first paragraph).
///
/// # Examples
///
/// ```
/// use easyrpc::{register, Client, MethodDescription, Server};
///
/// /// Adds two numbers.
/// #[register]
/// fn add(a: i64, b: i64) -> i64 {
///     a + b
/// }
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// # let addr = listener.local_addr()?;
/// # let server = Server::builder().register(add::method()).build()?;
/// # tokio::spawn(async move { server.run(listener, std::future::pending()).await });
/// let client = Client::connect(addr).await?;
/// let methods: Vec<MethodDescription> = client.call("rpc.methods", ()).await?;
/// assert_eq!(methods[0].signature(), "add(a: i64, b: i64) -> i64");
/// assert_eq!(methods[0].doc, "Adds two numbers.");
/// # Ok(()) }
/// ```
///
/// # Details
pub use easyrpc_proto::reserved::MethodDescription;

/// How values become bytes on a connection: MessagePack, which any peer speaks, or bincode,
/// for Rust-to-Rust calls to a server of ours ([`ClientConfig::codec`]).
///
/// # Examples
///
/// ```
/// use easyrpc::{Client, ClientConfig, Codec};
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// # let addr = listener.local_addr()?;
/// # let server = easyrpc::Server::builder().sync_fn("add", |(a, b): (i64, i64)| a + b).build()?;
/// # tokio::spawn(async move { server.run(listener, std::future::pending()).await });
/// let mut config = ClientConfig::default();
/// config.codec = Codec::Bincode; // the server tells from the connection's first byte
/// let client = Client::connect_with(addr, config).await?;
/// let sum: i64 = client.call("add", (2, 3)).await?;
/// assert_eq!(sum, 5);
/// # Ok(()) }
/// ```
///
/// # Details
pub use easyrpc_proto::Codec;

/// The numbered errors a server of ours answers with; [`Error::code`] reads one.
///
/// # Examples
///
/// ```
/// use easyrpc::{Client, ErrorCode};
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// # let addr = listener.local_addr()?;
/// # let server = easyrpc::Server::builder().sync_fn("add", |(a, b): (i64, i64)| a + b).build()?;
/// # tokio::spawn(async move { server.run(listener, std::future::pending()).await });
/// let client = Client::connect(addr).await?;
/// let err = client.call::<_, i64>("add", ("two", 3)).await.unwrap_err();
/// assert_eq!(err.code(), Some(ErrorCode::InvalidParams));
/// assert_eq!(ErrorCode::InvalidParams.as_i64(), 2); // the number on the wire
/// # Ok(()) }
/// ```
///
/// # Details
pub use easyrpc_proto::ErrorCode;

/// How a server writes errors for plain MessagePack-RPC clients, which read them in
/// different shapes ([`Builder::plain_error_shape`]).
///
/// # Examples
///
/// ```
/// use easyrpc::{Client, ClientConfig, ErrorShape, Server, Value};
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // For Go's net/rpc clients, which read an error as its message alone.
/// let server = Server::builder()
///     .sync_fn("add", |(a, b): (i64, i64)| a + b)
///     .plain_error_shape(ErrorShape::Message)
///     .build()?;
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// # let addr = listener.local_addr()?;
/// # tokio::spawn(async move { server.run(listener, std::future::pending()).await });
///
/// // A plain client (no hello) gets the error in that shape.
/// let mut config = ClientConfig::default();
/// config.our_server = false;
/// let client = Client::connect_with(addr, config).await?;
/// let err = client.call::<_, i64>("sub", (5, 3)).await.unwrap_err();
/// let sent = &err.foreign().expect("a plain client's error").value;
/// assert_eq!(*sent, Value::from("method not found: sub"));
/// # Ok(()) }
/// ```
///
/// # Details
pub use easyrpc_proto::ErrorShape;

/// An error as it travels: a code, a message and, for a function's own error type, data.
///
/// [`Error::remote`] gives the one a server of ours answered with.
///
/// # Examples
///
/// ```
/// use easyrpc::{Client, ErrorCode, Method, Server, ServerError};
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let server = Server::builder()
///     .register(Method::try_sync_fn("div", |(a, b): (i64, i64)| {
///         a.checked_div(b).ok_or("division by zero")
///     }))
///     .build()?;
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// # let addr = listener.local_addr()?;
/// # tokio::spawn(async move { server.run(listener, std::future::pending()).await });
///
/// let client = Client::connect(addr).await?;
/// let err = client.call::<_, i64>("div", (1, 0)).await.unwrap_err();
/// let remote: &ServerError = err.remote().expect("a server of ours answered");
/// assert_eq!(remote.kind(), ErrorCode::HandlerError);
/// assert_eq!(remote.message, "division by zero");
/// # Ok(()) }
/// ```
///
/// # Details
pub use easyrpc_proto::ServerError;

// ---- Servers ------------------------------------------------------------------------------

/// Collects a server's methods and settings, then builds it ([`Builder::build`]) or serves
/// them at once ([`Builder::serve`], [`Builder::run`]).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use easyrpc::Server;
///
/// let server = Server::builder()
///     .sync_fn("add", |(a, b): (i64, i64)| a + b)
///     .async_fn("double", |(n,): (u64,)| async move { n * 2 })
///     .max_connections(1_000)
///     .grace_period(Duration::from_secs(5))
///     .build()?;
/// assert_eq!(server.config().max_connections, 1_000);
/// # Ok::<(), easyrpc::BuildError>(())
/// ```
///
/// # Details
pub use easyrpc_server::Builder;

/// Why [`Builder::build`] refused the methods it was given.
///
/// # Examples
///
/// ```
/// use easyrpc::{BuildError, Server};
///
/// let err = Server::builder()
///     .sync_fn("add", |(a, b): (i64, i64)| a + b)
///     .sync_fn("add", |(a, b): (f64, f64)| a + b)
///     .build()
///     .unwrap_err();
/// assert_eq!(err, BuildError::DuplicateMethod("add".to_owned()));
/// ```
///
/// # Details
pub use easyrpc_server::BuildError;

/// Every setting of a server in one value, for [`Builder::config`]: settings read from a
/// file or a command line.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use easyrpc::{Server, ServerConfig};
///
/// let mut config = ServerConfig::default();
/// config.max_message_size = 1024 * 1024;
/// config.heartbeat_timeout = Duration::from_secs(30);
/// let server = Server::builder()
///     .config(config) // replaces every setting: give it before the builder's own setters
///     .sync_fn("add", |(a, b): (i64, i64)| a + b)
///     .build()?;
/// assert_eq!(server.config().max_message_size, 1024 * 1024);
/// # Ok::<(), easyrpc::BuildError>(())
/// ```
///
/// # Details
pub use easyrpc_server::Config as ServerConfig;

/// Why a server could not be built or could not listen: what [`Builder::serve`],
/// [`Builder::bind`] and [`Builder::run`] return.
///
/// # Examples
///
/// ```
/// use std::io;
/// use easyrpc::{ServeError, Server};
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let result = Server::builder()
///     .sync_fn("add", |(a, b): (i64, i64)| a + b)
///     .listen(taken.local_addr()?)
///     .bind()
///     .await;
/// match result {
///     Err(ServeError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::AddrInUse),
///     other => panic!("expected the address to be taken, got {other:?}"),
/// }
/// # Ok(()) }
/// ```
///
/// # Details
pub use easyrpc_server::Error as ServeError;

/// A built server: [`Server::run`] serves it on a listener until its shutdown future
/// completes, then lets the calls in flight finish.
///
/// # Examples
///
/// ```
/// use easyrpc::{Client, Server};
/// use tokio::net::TcpListener;
/// use tokio::sync::oneshot;
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let server = Server::builder().sync_fn("add", |(a, b): (i64, i64)| a + b).build()?;
/// let listener = TcpListener::bind("127.0.0.1:0").await?;
/// let addr = listener.local_addr()?;
/// let (stop, stopped) = oneshot::channel::<()>();
/// let serving = tokio::spawn(async move {
///     server.run(listener, async { stopped.await.ok(); }).await
/// });
///
/// let client = Client::connect(addr).await?;
/// assert_eq!(client.call::<_, i64>("add", (2, 3)).await?, 5);
///
/// stop.send(()).ok();
/// serving.await?; // drained and closed
/// # Ok(()) }
/// ```
///
/// # Details
pub use easyrpc_server::Server;

/// Settings of the dedup cache of unstable-network mode, which answers a resent call from
/// its first run ([`Builder::dedup`]).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use easyrpc::{DedupConfig, Server};
///
/// // Clients may stay cut off for minutes: remember answers for 5 minutes.
/// let mut dedup = DedupConfig::default();
/// dedup.ttl = Duration::from_secs(300);
/// dedup.max_entries = 10_000;
/// let server = Server::builder()
///     .sync_fn("charge", |(cents,): (u64,)| cents)
///     .unstable_network(true)
///     .dedup(dedup)
///     .build()?;
/// assert_eq!(server.config().dedup.ttl, Duration::from_secs(300));
/// # Ok::<(), easyrpc::BuildError>(())
/// ```
///
/// # Details
pub use easyrpc_server::DedupConfig;

/// zstd compression of large messages: its threshold and level, for one side.
///
/// A client turns it on ([`ClientConfig::compression`]; off by default, as in tonic) and
/// offers it in its hello; our server accepts it by default ([`ServerConfig::compression`],
/// [`Builder::compression`] to change or turn off) and then compresses its large replies
/// to that client. Each side compresses what it sends when the message is larger than its
/// own threshold (default 4 KiB) and the compressed form is smaller. A plain
/// MessagePack-RPC peer never sees a compressed message.
///
/// ```
/// use easyrpc::{ClientConfig, Compression, Server};
///
/// let mut config = ClientConfig::default();
/// config.compression(8 * 1024);
/// let builder = Server::builder().compression(Some(Compression::new(16 * 1024).with_level(1)));
/// ```
///
/// # Details
///
/// The wire format is in the README's protocol section and in `easyrpc_proto::compress`.
pub use easyrpc_proto::Compression;

/// A byte string that large messages carry without a copy: use it instead of `Vec<u8>` or
/// `serde_bytes::ByteBuf` for arguments and results that may be large (files, images,
/// tensors).
///
/// On the wire it is exactly a `ByteBuf`: a msgpack bin (with bincode, a byte string), so a
/// plain MessagePack-RPC peer sees no difference. From 64 KiB on
/// ([`SHARE_MIN`](easyrpc_proto::blob::SHARE_MIN)):
///
/// - decoded from a message (an argument on the server, a result on the async client), it
///   is a slice of the message's buffer, not a copy; it keeps that buffer alive while it
///   lives ([`Blob::detach`] copies it out);
/// - encoded (a result on the server, an argument on either client), it is written from its
///   own buffer, vectored, instead of being copied into the connection's write buffer.
///
/// A 64 MiB echo thus copies its payload only between the kernel and the read buffers.
/// Where a copy is needed anyway it is made as for a `ByteBuf`: when compression was
/// agreed, in the dedup cache's copy of a reply, in a stream item, and for the result of a
/// blocking client (which reads replies into a buffer it reuses).
///
/// ```
/// use easyrpc::{Blob, Method, Server};
///
/// let builder = Server::builder()
///     .register(Method::async_fn("echo_blob", |(data,): (Blob,)| async move { data }))
///     .register(Method::async_fn("size", |(data,): (Blob,)| async move { data.len() as u64 }));
/// # let _ = builder;
/// ```
pub use easyrpc_proto::Blob;

/// What a listener listens on once bound, port 0 resolved: from [`Listening::local_addrs`].
///
/// # Examples
///
/// ```
/// use easyrpc::{Client, Server, Transport};
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let listening = Server::builder()
///     .sync_fn("add", |(a, b): (i64, i64)| a + b)
///     .listen("127.0.0.1:0") // port 0: the system picks one
///     .bind()
///     .await?;
/// let local = &listening.local_addrs()[0];
/// assert_eq!(local.transport(), Transport::Tcp);
/// let addr = local.socket_addr().expect("a TCP listener");
/// tokio::spawn(listening.serve(std::future::pending()));
///
/// let client = Client::connect(addr).await?;
/// assert_eq!(client.call::<_, i64>("add", (2, 3)).await?, 5);
/// # Ok(()) }
/// ```
///
/// # Details
pub use easyrpc_server::LocalAddr;

/// Who called: [`Context::peer`], for a function that takes a [`Context`].
///
/// # Examples
///
/// ```
/// use easyrpc::{register, Client, Context, Peer, Server};
///
/// #[register]
/// fn origin(ctx: Context) -> String {
///     match ctx.peer() {
///         Peer::Tcp(addr) if addr.ip().is_loopback() => "this machine".to_owned(),
///         Peer::Tcp(addr) => addr.ip().to_string(),
///         Peer::Unix { uid: Some(uid), .. } => format!("local user {uid}"),
///         _ => "unknown".to_owned(),
///     }
/// }
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// # let addr = listener.local_addr()?;
/// # let server = Server::builder().register(origin::method()).build()?;
/// # tokio::spawn(async move { server.run(listener, std::future::pending()).await });
/// let client = Client::connect(addr).await?;
/// assert_eq!(origin::call(&client).await?, "this machine");
/// # Ok(()) }
/// ```
///
/// # Details
pub use easyrpc_server::Peer;

/// A value shared by every call, given once to [`Builder::state`]: a function takes it as a
/// `State<T>` argument, which is not on the wire.
///
/// # Examples
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use easyrpc::{register, Server, State};
///
/// #[register]
/// fn next_id(counter: State<AtomicU64>) -> u64 {
///     counter.fetch_add(1, Ordering::Relaxed)
/// }
///
/// fn main() {
///     // Served: every call gets the builder's counter.
///     let server = Server::builder()
///         .state(AtomicU64::new(1))
///         .register(next_id::method())
///         .build()
///         .unwrap();
///     // Tested: call the function itself, with a state of its own.
///     assert_eq!(next_id(State::new(AtomicU64::new(7))), 7);
/// }
/// ```
///
/// # Details
pub use easyrpc_server::State;

/// A set of methods served together, sharing one instance, for [`Builder::service`]:
/// what [`#[service]`](service) implements for an impl block, or written by hand.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use easyrpc::{Client, Method, Server, Service};
///
/// struct Greeter {
///     greeting: String,
/// }
///
/// impl Service for Greeter {
///     fn methods(self: Arc<Self>) -> Vec<Method> {
///         vec![Method::sync_fn("greet", move |(name,): (String,)| {
///             format!("{}, {name}!", self.greeting)
///         })]
///     }
/// }
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let server = Server::builder().service(Greeter { greeting: "Hello".into() }).build()?;
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// # let addr = listener.local_addr()?;
/// # tokio::spawn(async move { server.run(listener, std::future::pending()).await });
/// let client = Client::connect(addr).await?;
/// let greeting: String = client.call("greet", ("Ada",)).await?;
/// assert_eq!(greeting, "Hello, Ada!");
/// # Ok(()) }
/// ```
///
/// # Details
pub use easyrpc_server::Service;

/// Why TLS settings could not be loaded ([`TlsConfig::from_pem_files`] and the like).
///
/// # Examples
///
/// ```
/// use std::path::Path;
/// use easyrpc::{TlsConfig, TlsConfigError};
///
/// match TlsConfig::from_pem_files("/no/such/server.crt", "/no/such/server.key") {
///     Err(TlsConfigError::Read { path, .. }) => assert_eq!(path, Path::new("/no/such/server.crt")),
///     other => panic!("expected a read error, got {other:?}"),
/// }
/// ```
///
/// # Details
pub use easyrpc_server::TlsConfigError;

/// How connections reach a listener (TCP, TLS or a Unix socket): what [rules] and
/// [`LocalAddr::transport`] tell apart.
///
/// # Examples
///
/// ```
/// use easyrpc::rules::Match;
/// use easyrpc::{Endpoint, Rules, Transport};
///
/// // admin_* over the Unix socket only.
/// let rules =
///     Rules::new().deny_methods("admin_*", Match::any().on(Transport::Tcp).on(Transport::Tls));
/// assert_eq!(rules.to_string(), "1. deny methods admin_* on tcp or tls\n");
/// assert_eq!(Endpoint::from("unix:/run/app.sock").transport(), Transport::Unix);
/// ```
///
/// # Details
pub use easyrpc_server::Transport;

/// The tokio runtime each prefork worker builds ([`Builder::worker_runtime`]).
///
/// # Examples
///
/// Serve until TERM or ctrl-c, in four worker processes of two threads each:
///
/// ```no_run
/// use easyrpc::{ServeError, Server, WorkerRuntime};
///
/// fn main() -> Result<(), ServeError> {
///     Server::builder()
///         .sync_fn("add", |(a, b): (i64, i64)| a + b)
///         .prefork(4)
///         .worker_runtime(WorkerRuntime::MultiThread { threads: 2 })
///         .run("0.0.0.0:25000")
/// }
/// ```
///
/// # Details
#[cfg(feature = "prefork")]
pub use easyrpc_server::WorkerRuntime;

// ---- Rules and layers ---------------------------------------------------------------------

/// Who may connect, and who may call what: rules given to [`Builder::rules`], and checked
/// without a server.
///
/// # Examples
///
/// ```
/// use easyrpc::rules::{ConnFacts, Match};
/// use easyrpc::{Peer, Rules, Transport};
///
/// // Over TCP, only 10.0.0.0/8 may connect.
/// let rules = Rules::new()
///     .allow(Match::any().from("10.0.0.0/8".parse()?))
///     .deny(Match::any().on(Transport::Tcp));
/// let peer = Peer::Tcp("192.0.2.7:40000".parse()?);
/// let conn = ConnFacts {
///     transport: Transport::Tcp,
///     listener: "0.0.0.0:25000",
///     peer: &peer,
///     tls: None,
/// };
/// let refusal = rules.refuses_connection(&conn).expect("not from 10.0.0.0/8");
/// assert_eq!(refusal.to_string(), "rule 2 (deny connections on tcp)");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Details
pub use easyrpc_server::rules;

/// A server's rules, in order: who may connect, and who may call what ([`Builder::rules`]).
///
/// # Examples
///
/// ```
/// use easyrpc::rules::Match;
/// use easyrpc::{Client, ErrorCode, Rules, Server, Transport};
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let server = Server::builder()
///     .sync_fn("add", |(a, b): (i64, i64)| a + b)
///     .sync_fn("admin_reset", |(): ()| ())
///     .rules(Rules::new().methods_only("admin_*", Match::any().on(Transport::Unix)))
///     .build()?;
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// # let addr = listener.local_addr()?;
/// # tokio::spawn(async move { server.run(listener, std::future::pending()).await });
///
/// let client = Client::connect(addr).await?; // over TCP
/// assert_eq!(client.call::<_, i64>("add", (2, 3)).await?, 5);
/// let err = client.call::<_, ()>("admin_reset", ()).await.unwrap_err();
/// assert_eq!(err.code(), Some(ErrorCode::PermissionDenied));
/// # Ok(()) }
/// ```
///
/// # Details
pub use easyrpc_server::Rules;

/// Ready-made tower layers around dispatch, for [`Builder::layer`]: a token check,
/// per-method timeouts, request logging.
///
/// # Examples
///
/// ```
/// use easyrpc::layers::RequireToken;
/// use easyrpc::{Client, ClientConfig, ErrorCode, Metadata, Server};
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let server = Server::builder()
///     .sync_fn("add", |(a, b): (i64, i64)| a + b)
///     .layer(RequireToken::new("authorization", |t| t == "Bearer s3cret"))
///     .build()?;
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// # let addr = listener.local_addr()?;
/// # tokio::spawn(async move { server.run(listener, std::future::pending()).await });
///
/// let mut config = ClientConfig::default();
/// config.extensions = true; // metadata travels after the hello
/// let client = Client::connect_with(addr, config).await?;
/// let err = client.call::<_, i64>("add", (2, 3)).await.unwrap_err();
/// assert_eq!(err.code(), Some(ErrorCode::Unauthenticated));
///
/// let client = client.with_metadata(Metadata::new().with("authorization", "Bearer s3cret"))?;
/// assert_eq!(client.call::<_, i64>("add", (2, 3)).await?, 5);
/// # Ok(()) }
/// ```
///
/// # Details
pub use easyrpc_server::layers;

/// The rest of the stack a [layer](Builder::layer) wraps, down to the function: a boxed
/// tower service from [`CallRequest`] to [`Reply`].
///
/// # Examples
///
/// A layer that counts the calls reaching the functions, and keeps the stack boxed:
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
/// use easyrpc::{CallRequest, Client, RpcService, Server};
/// use tower::ServiceExt;
///
/// #[derive(Clone)]
/// struct CountCalls(Arc<AtomicU64>);
///
/// impl tower::Layer<RpcService> for CountCalls {
///     type Service = RpcService;
///
///     fn layer(&self, inner: RpcService) -> RpcService {
///         let calls = self.0.clone();
///         RpcService::new(inner.map_request(move |req: CallRequest| {
///             calls.fetch_add(1, Ordering::Relaxed);
///             req
///         }))
///     }
/// }
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let calls = Arc::new(AtomicU64::new(0));
/// let server = Server::builder()
///     .sync_fn("add", |(a, b): (i64, i64)| a + b)
///     .layer(CountCalls(calls.clone()))
///     .build()?;
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// # let addr = listener.local_addr()?;
/// # tokio::spawn(async move { server.run(listener, std::future::pending()).await });
/// let client = Client::connect(addr).await?;
/// assert_eq!(client.call::<_, i64>("add", (2, 3)).await?, 5);
/// assert_eq!(calls.load(Ordering::Relaxed), 1);
/// # Ok(()) }
/// ```
///
/// # Details
pub use easyrpc_server::RpcService;

/// A call as [layers](Builder::layer) see it: its [`Context`] and its params, not decoded yet.
///
/// # Examples
///
/// A layer that records what is called, before the arguments are decoded:
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use easyrpc::{CallRequest, Client, RpcService, Server};
/// use tower::ServiceExt;
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let record = {
///     let seen = seen.clone();
///     tower::layer::layer_fn(move |inner: RpcService| {
///         let seen = seen.clone();
///         tower::service_fn(move |req: CallRequest| {
///             let line = format!("{} ({} bytes of params)", req.method(), req.params().len());
///             seen.lock().unwrap().push(line);
///             inner.clone().oneshot(req)
///         })
///     })
/// };
/// let server = Server::builder()
///     .sync_fn("add", |(a, b): (i64, i64)| a + b)
///     .layer(record)
///     .build()?;
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// # let addr = listener.local_addr()?;
/// # tokio::spawn(async move { server.run(listener, std::future::pending()).await });
///
/// let client = Client::connect(addr).await?;
/// client.call::<_, i64>("add", (2, 3)).await?;
/// assert_eq!(*seen.lock().unwrap(), ["add (3 bytes of params)"]);
/// # Ok(()) }
/// ```
///
/// # Details
pub use easyrpc_server::CallRequest;

/// What a function, or a [layer](Builder::layer) answering for it, replies: a value or an
/// error.
///
/// # Examples
///
/// A layer that answers `version` itself, without a function:
///
/// ```
/// use easyrpc::{CallRequest, Client, Reply, RpcService, Server};
/// use tower::ServiceExt;
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let version = tower::layer::layer_fn(|inner: RpcService| {
///     tower::service_fn(move |req: CallRequest| {
///         let inner = inner.clone();
///         async move {
///             if req.method() == "version" {
///                 return Ok(Reply::ok("1.4.2"));
///             }
///             inner.oneshot(req).await
///         }
///     })
/// });
/// let server = Server::builder()
///     .sync_fn("add", |(a, b): (i64, i64)| a + b)
///     .layer(version)
///     .build()?;
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// # let addr = listener.local_addr()?;
/// # tokio::spawn(async move { server.run(listener, std::future::pending()).await });
///
/// let client = Client::connect(addr).await?;
/// assert_eq!(client.call::<_, String>("version", ()).await?, "1.4.2");
/// # Ok(()) }
/// ```
///
/// # Details
pub use easyrpc_server::Reply;

/// The error type of the services in a [layer](Builder::layer) stack.
///
/// A layer's error reaches the caller: a [`ServerError`] as it is, tower's timeout as
/// [`ErrorCode::DeadlineExceeded`], anything else as [`ErrorCode::Internal`].
///
/// # Examples
///
/// A layer that refuses `admin_*` calls with an error of its choosing:
///
/// ```
/// use easyrpc::{BoxError, CallRequest, Client, ErrorCode, RpcService, Server, ServerError};
/// use tower::ServiceExt;
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let no_admin = tower::layer::layer_fn(|inner: RpcService| {
///     tower::service_fn(move |req: CallRequest| {
///         let inner = inner.clone();
///         async move {
///             if req.method().starts_with("admin_") {
///                 let refused = ServerError::new(ErrorCode::PermissionDenied, "admin calls are off");
///                 return Err(BoxError::from(refused));
///             }
///             inner.oneshot(req).await
///         }
///     })
/// });
/// let server = Server::builder()
///     .sync_fn("admin_reset", |(): ()| ())
///     .layer(no_admin)
///     .build()?;
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// # let addr = listener.local_addr()?;
/// # tokio::spawn(async move { server.run(listener, std::future::pending()).await });
///
/// let client = Client::connect(addr).await?;
/// let err = client.call::<_, ()>("admin_reset", ()).await.unwrap_err();
/// assert_eq!(err.code(), Some(ErrorCode::PermissionDenied));
/// assert_eq!(err.remote().unwrap().message, "admin calls are off");
/// # Ok(()) }
/// ```
///
/// # Details
pub use easyrpc_server::BoxError;

// ---- Macros -------------------------------------------------------------------------------

/// Serves a function over RPC and generates its typed client stubs: see
/// [What `#[register]` generates](crate#what-register-generates) and [Options](crate#options).
///
/// # Examples
///
/// ```
/// use easyrpc::{register, Client, Server};
///
/// #[register]
/// fn add(a: i64, b: i64) -> i64 {
///     a + b
/// }
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let server = Server::builder().register(add::method()).build()?;
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// # let addr = listener.local_addr()?;
/// # tokio::spawn(async move { server.run(listener, std::future::pending()).await });
/// let client = Client::connect(addr).await?;
/// assert_eq!(add::call(&client, 2, 3).await?, 5); // the typed stub
/// assert_eq!(add(2, 3), 5); // still a plain function
/// # Ok(()) }
/// ```
///
/// # Details
pub use easyrpc_macros::register;

/// Generates the typed stubs of functions served elsewhere, from their signatures alone: for
/// a crate that calls a service without containing it.
///
/// # Examples
///
/// ```
/// use easyrpc::Client;
///
/// mod api {
///     easyrpc::declare! {
///         pub fn add(a: i64, b: i64) -> i64;
///         #[rpc(name = "math.mul")]
///         pub fn times(a: i64, b: i64) -> i64;
///     }
/// }
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// # let addr = listener.local_addr()?;
/// # let server = easyrpc::Server::builder()
/// #     .sync_fn("add", |(a, b): (i64, i64)| a + b)
/// #     .sync_fn("math.mul", |(a, b): (i64, i64)| a * b)
/// #     .build()?;
/// # tokio::spawn(async move { server.run(listener, std::future::pending()).await });
/// let client = Client::connect(addr).await?;
/// assert_eq!(api::add::call(&client, 2, 3).await?, 5);
/// assert_eq!(api::times::call(&client, 2, 3).await?, 6);
/// # Ok(()) }
/// ```
///
/// # Details
pub use easyrpc_macros::declare;

/// Serves the `pub` methods taking `&self` of an impl block, one instance shared by every
/// call, and generates the typed clients `{Type}Client` and `{Type}BlockingClient`.
///
/// # Examples
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use easyrpc::{Client, Server};
///
/// #[derive(Default)]
/// pub struct Counter(AtomicU64);
///
/// #[easyrpc::service(prefix = "counter")]
/// impl Counter {
///     /// Served as "counter.bump".
///     pub fn bump(&self, by: u64) -> u64 {
///         self.0.fetch_add(by, Ordering::SeqCst) + by
///     }
/// }
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let server = Server::builder().service(Counter::default()).build()?;
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// # let addr = listener.local_addr()?;
/// # tokio::spawn(async move { server.run(listener, std::future::pending()).await });
/// let counter = CounterClient::new(Client::connect(addr).await?);
/// assert_eq!(counter.bump(2).await?, 2);
/// assert_eq!(counter.bump(3).await?, 5);
/// # Ok(()) }
/// ```
///
/// # Details
pub use easyrpc_macros::service;

// ---- Several machines --------------------------------------------------------------------

pub use easyrpc_proto::discovery;
/// Where and how a server registers in etcd (feature `etcd`): see the README, "Several
/// machines".
#[cfg(feature = "etcd")]
pub use easyrpc_server::Registration;

/// Why registering in etcd failed at start-up (feature `etcd`), inside
/// [`ServeError::Discovery`].
///
/// # Examples
///
/// ```no_run
/// use easyrpc::{Registration, ServeError, Server};
///
/// // Nothing listens on port 1: the server does not start.
/// let err = Server::builder()
///     .sync_fn("add", |(a, b): (i64, i64)| a + b)
///     .discovery(Registration::new(["http://127.0.0.1:1"], "calc"))
///     .run("127.0.0.1:0")
///     .unwrap_err();
/// assert!(matches!(err, ServeError::Discovery(_)), "{err}");
/// ```
///
/// # Details
#[cfg(feature = "etcd")]
pub use easyrpc_server::DiscoveryError;

/// One instance of a balanced [`Client`] ([`Client::balanced`], `Client::discover`), as
/// [`Client::instances`] reports it.
///
/// # Examples
///
/// ```
/// use easyrpc::Client;
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let mut addrs = Vec::new();
/// # for _ in 0..2 {
/// #     let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// #     addrs.push(listener.local_addr()?.to_string());
/// #     let server = easyrpc::Server::builder().sync_fn("add", |(a, b): (i64, i64)| a + b).build()?;
/// #     tokio::spawn(async move { server.run(listener, std::future::pending()).await });
/// # }
/// let client = Client::balanced(&addrs).await?;
/// for i in 0..10 {
///     let _: i64 = client.idempotent().call("add", (i, 1)).await?;
/// }
/// let answered: u64 = client.instances().iter().map(|i| i.calls).sum();
/// assert_eq!(answered, 10);
/// # Ok(()) }
/// ```
///
/// # Details
#[cfg(feature = "async")]
pub use easyrpc_client::InstanceState;

/// The dynamic value type for calls by name: `rmpv::Value`.
///
/// # Examples
///
/// Arguments and result as MessagePack values, for types known only at run time:
///
/// ```
/// use easyrpc::{Client, Value};
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// # let addr = listener.local_addr()?;
/// # let server = easyrpc::Server::builder().sync_fn("add", |(a, b): (i64, i64)| a + b).build()?;
/// # tokio::spawn(async move { server.run(listener, std::future::pending()).await });
/// let client = Client::connect(addr).await?;
/// let sum = client.call_value("add", vec![Value::from(2), Value::from(3)]).await?;
/// assert_eq!(sum, Value::from(5));
/// # Ok(()) }
/// ```
///
/// # Details
pub use rmpv::Value;

// ---- Streams ------------------------------------------------------------------------------

/// The items of a streaming call, as they come: what the async stub of a function returning
/// `impl Stream<Item = T>` (or `impl Iterator<Item = T>`) returns, and
/// [`Client::call_stream`]. Dropping it cancels the call.
///
/// # Examples
///
/// ```
/// use easyrpc::stream::{self, Stream, StreamExt};
/// use easyrpc::{register, Client, ClientConfig, ItemStream, Server};
///
/// #[register]
/// async fn countdown(n: u64) -> impl Stream<Item = u64> {
///     stream::iter((0..n).rev())
/// }
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// # let addr = listener.local_addr()?;
/// # let server = Server::builder().register(countdown::method()).build()?;
/// # tokio::spawn(async move { server.run(listener, std::future::pending()).await });
/// // Streams need the extensions (a hello first).
/// let mut config = ClientConfig::default();
/// config.extensions = true;
/// let client = Client::connect_with(addr, config).await?;
/// let mut items: ItemStream<u64> = countdown::call(&client, 3).await?;
/// let mut got = Vec::new();
/// while let Some(n) = items.next().await {
///     got.push(n?);
/// }
/// assert_eq!(got, [2, 1, 0]);
/// # Ok(()) }
/// ```
///
/// # Details
#[cfg(feature = "async")]
pub use easyrpc_client::ItemStream;

/// The items of a streaming call through a [`BlockingClient`], as an [`Iterator`]: what the
/// blocking stub of a function returning a stream returns, and
/// [`BlockingClient::call_stream`]. It borrows the client; dropping it before its end
/// cancels the call.
///
/// # Examples
///
/// ```
/// use easyrpc::{register, BlockingClient, BlockingItems, ClientConfig, Server};
///
/// #[register]
/// fn lines(n: u32) -> impl Iterator<Item = String> {
///     (0..n).map(|i| format!("line {i}"))
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let rt = tokio::runtime::Runtime::new()?;
/// # let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
/// # let addr = listener.local_addr()?;
/// # let server = Server::builder().register(lines::method()).build()?;
/// # rt.spawn(async move { server.run(listener, std::future::pending()).await });
/// let mut config = ClientConfig::default();
/// config.extensions = true;
/// let client = BlockingClient::connect_with(addr, config)?;
/// let items: BlockingItems<'_, String> = lines::call_blocking(&client, 2)?;
/// let got: Vec<String> = items.collect::<Result<_, _>>()?;
/// assert_eq!(got, ["line 0", "line 1"]);
/// # Ok(()) }
/// ```
///
/// # Details
#[cfg(feature = "blocking")]
pub use easyrpc_client::BlockingItems;
pub use easyrpc_server::Streaming;
/// futures' `stream` module (`stream::iter`, `stream::unfold`, ...), to make the streams a
/// function returns or a stub sends.
pub use futures_util::stream;
/// futures' `Stream` and `StreamExt`: the item type of a result stream is written
/// `impl Stream<Item = T>`, and `StreamExt::next` reads an [`ItemStream`] or a [`Streaming`].
pub use futures_util::{Stream, StreamExt};

/// Items used by the code that `#[register]` and `declare!` generate. Not a public API.
///
/// The generated code checks each type the user wrote with an `assert_*` function, spanned
/// on that type, and then uses it only through the functions below, bounded by the same
/// trait: a type that does not qualify gets one error, on the type, worded by the trait's
/// `on_unimplemented`.
#[doc(hidden)]
pub mod __private {
    use core::fmt::Display;
    use core::marker::PhantomData;

    use serde::de::DeserializeOwned;
    use serde::Serialize;

    pub use easyrpc_proto::{Args, EncodeError, Params, ParamsEncoder};
    pub use easyrpc_server::{BuildError, Call, Method, Reply, Service, State, States};

    #[cfg(feature = "blocking")]
    use crate::BlockingClient;
    #[cfg(feature = "async")]
    use crate::Client;
    use crate::{CallError, Error, ServerError};

    /// An argument type of a registered or declared function.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be an argument of an RPC function",
        label = "not `Serialize + DeserializeOwned + Send + 'static`",
        note = "the stubs encode the arguments and the server decodes them: derive `serde::Serialize` and \
                `serde::Deserialize` for your own types, and use owned, `Send` types such as `String`, \
                `Vec<u8>` or `Box<T>`, not `&str` or `Rc<T>`"
    )]
    pub trait RpcArg: Serialize + DeserializeOwned + Send + 'static {}
    #[diagnostic::do_not_recommend]
    impl<T: Serialize + DeserializeOwned + Send + 'static> RpcArg for T {}

    /// A return type of a registered or declared function (the `T` of a `Result<T, E>`).
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be returned by an RPC function",
        label = "not `Serialize + DeserializeOwned + Send + 'static`",
        note = "the server encodes the result and the stubs decode it: derive `serde::Serialize` and \
                `serde::Deserialize` for your own types, and use owned, `Send` types; a `Result<T, E>` \
                needs this of `T`"
    )]
    pub trait RpcReturn: Serialize + DeserializeOwned + Send + 'static {}
    #[diagnostic::do_not_recommend]
    impl<T: Serialize + DeserializeOwned + Send + 'static> RpcReturn for T {}

    /// The `E` of a registered function returning `Result<T, E>`.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be the error type of an RPC function",
        label = "does not implement `Display`",
        note = "the `E` of `Result<T, E>` must implement `std::fmt::Display`: its message reaches the \
                caller as an `ErrorCode::HandlerError` (with the error itself as data when `E` is also \
                `Serialize`)"
    )]
    pub trait RpcError: Display {}
    #[diagnostic::do_not_recommend]
    impl<E: Display> RpcError for E {}

    /// Compile-time check of an argument type.
    pub const fn assert_arg<T: RpcArg>() {}

    /// Compile-time check of a return type.
    pub const fn assert_return<T: RpcReturn>() {}

    /// Compile-time check of an error type.
    pub const fn assert_error<E: RpcError>() {}

    /// A type a function takes as `State<T>`.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be a server state",
        label = "not `Send + Sync + 'static`",
        note = "a `State<T>` is shared by every call, on every thread: `T` must be `Send + Sync + 'static` \
                (wrap what changes in a `Mutex` or an atomic)"
    )]
    pub trait RpcState: Send + Sync + 'static {}
    #[diagnostic::do_not_recommend]
    impl<T: Send + Sync + 'static> RpcState for T {}

    /// Compile-time check of a state type.
    pub const fn assert_state<T: RpcState>() {}

    /// The framework's `Context`, as an argument.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` is not `easyrpc::Context`",
        label = "an argument of a type named `Context` is taken as the call's context",
        note = "use `easyrpc::Context`, or rename your own type: it cannot travel on the wire under this name"
    )]
    pub trait IsContext {}
    impl IsContext for easyrpc_server::Context {}

    /// Compile-time check of a context argument.
    pub const fn assert_context<T: IsContext>() {}

    /// The state of type `T` of the server being built, for the function `name`.
    ///
    /// # Errors
    ///
    /// [`BuildError::MissingState`] when the server has none.
    pub fn get_state<T: RpcState>(states: &States, name: &str) -> Result<State<T>, BuildError> {
        states.get::<T>(name)
    }

    /// Decode the next argument.
    ///
    /// # Errors
    ///
    /// `InvalidParams` when it does not decode as a `T`.
    pub fn next_arg<T: RpcArg>(args: &mut Args<'_>, name: &str) -> Result<T, ServerError> {
        args.next(name)
    }

    /// Encode the next argument.
    ///
    /// # Errors
    ///
    /// When `T`'s `Serialize` fails.
    pub fn push_arg<T: RpcArg>(enc: &mut ParamsEncoder<'_>, value: &T) -> Result<(), EncodeError> {
        enc.push(value)
    }

    /// A successful result.
    pub fn reply<T: RpcReturn>(value: T) -> Reply {
        Reply::ok(value)
    }

    /// A function's `Err(e)`, as an `ErrorCode::HandlerError` with `e`'s message.
    pub fn reply_error<E: RpcError>(error: E) -> Reply {
        Reply::from_result::<(), E>(Err(error))
    }

    /// Picks how a function's `Err(e)` is sent, by autoref specialization on the concrete
    /// `E` (`(&ErrorReply::of(&e)).reply_error(e)` with [`TypedReply`] and [`DisplayReply`]
    /// in scope): with `e` as the error's data when `E` is `Serialize` ([`TypedReply`], found
    /// without an autoref), with its message alone otherwise ([`DisplayReply`], on
    /// `&ErrorReply`). Users' `E` never needs `Serialize`.
    #[derive(Debug)]
    pub struct ErrorReply<E>(PhantomData<fn(E)>);

    impl<E> ErrorReply<E> {
        /// The selector for `error`'s type.
        pub fn of(_error: &E) -> ErrorReply<E> {
            ErrorReply(PhantomData)
        }
    }

    /// The typed half of [`ErrorReply`]: `E` is also sent as the error's data.
    pub trait TypedReply<E> {
        /// `Reply::typed_err(error)`.
        fn reply_error(&self, error: E) -> Reply;
    }

    impl<E: Serialize + Display + Send + 'static> TypedReply<E> for ErrorReply<E> {
        fn reply_error(&self, error: E) -> Reply {
            Reply::typed_err(error)
        }
    }

    /// The `Display`-only half of [`ErrorReply`]: today's `[code, message]`.
    pub trait DisplayReply<E> {
        /// [`reply_error`]`(error)`. The bound sits on the method, not the impl, so that an
        /// `E` that is not `Display` fails it with [`RpcError`]'s message, as
        /// [`assert_error`] does (and rustc shows the two as one).
        fn reply_error(&self, error: E) -> Reply
        where
            E: RpcError;
    }

    impl<E> DisplayReply<E> for &ErrorReply<E> {
        fn reply_error(&self, error: E) -> Reply
        where
            E: RpcError,
        {
            reply_error(error)
        }
    }

    /// Picks what a stub's error becomes, by autoref specialization on the concrete `E` as
    /// [`ErrorReply`] does: [`CallError::from_error`] when `E` is `DeserializeOwned`
    /// ([`TypedStub`]), always [`CallError::Rpc`] otherwise ([`UntypedStub`]).
    #[derive(Debug)]
    pub struct StubError<E>(PhantomData<fn() -> E>);

    impl<E> StubError<E> {
        /// The selector for `E`.
        #[allow(clippy::new_without_default)]
        pub fn new() -> StubError<E> {
            StubError(PhantomData)
        }
    }

    /// The typed half of [`StubError`].
    pub trait TypedStub<E> {
        /// `CallError::from_error(error)`.
        fn call_error(&self, error: Error) -> CallError<E>;
    }

    impl<E: DeserializeOwned> TypedStub<E> for StubError<E> {
        fn call_error(&self, error: Error) -> CallError<E> {
            CallError::from_error(error)
        }
    }

    /// The untyped half of [`StubError`]: the data cannot become an `E`.
    pub trait UntypedStub<E> {
        /// `CallError::Rpc(error)`.
        fn call_error(&self, error: Error) -> CallError<E>;
    }

    impl<E> UntypedStub<E> for &StubError<E> {
        fn call_error(&self, error: Error) -> CallError<E> {
            CallError::Rpc(error)
        }
    }

    // ---- Streams ----------------------------------------------------------------------

    pub use futures_util::Stream;

    #[cfg(feature = "async")]
    use crate::ItemStream;
    use core::future::Future;
    use easyrpc_server::stream::StreamOut;
    use easyrpc_server::Streaming;

    /// The item type of a stream, either way (`T` of `impl Stream<Item = T>`, of
    /// `impl Iterator<Item = T>` or of `Streaming<T>`).
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be the item of an RPC stream",
        label = "not `Serialize + DeserializeOwned + Send + 'static`",
        note = "one side encodes each item and the other decodes it: derive `serde::Serialize` and \
                `serde::Deserialize` for your own types, and use owned, `Send` types; a stream of \
                `Result<T, E>` needs this of `T`"
    )]
    pub trait RpcItem: Serialize + DeserializeOwned + Send + 'static {}
    #[diagnostic::do_not_recommend]
    impl<T: Serialize + DeserializeOwned + Send + 'static> RpcItem for T {}

    /// Compile-time check of a stream's item type.
    pub const fn assert_item<T: RpcItem>() {}

    /// The framework's `Streaming<T>`, as an argument.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` is not `easyrpc::Streaming<T>`",
        label = "an argument of a type named `Streaming<T>` is taken as the caller's stream",
        note = "use `easyrpc::Streaming<T>`, or rename your own type: it cannot travel on the wire under this name"
    )]
    pub trait IsStreaming: Sized {
        /// Open the caller's stream of `call`: the argument is made through its type as
        /// written, so that a type that is not ours fails this trait only.
        ///
        /// # Errors
        ///
        /// `StreamingMethod` for a caller that cannot stream.
        fn open(call: &Call<'_>) -> Result<Self, ServerError>;
    }

    impl<T> IsStreaming for Streaming<T> {
        fn open(call: &Call<'_>) -> Result<Self, ServerError> {
            Streaming::open(call)
        }
    }

    /// Compile-time check of a `Streaming<T>` argument.
    pub const fn assert_streaming<T: IsStreaming>() {}

    /// Open the result stream of `call`.
    ///
    /// # Errors
    ///
    /// `StreamingMethod` for a caller that cannot stream.
    pub fn open_result(call: &Call<'_>) -> Result<StreamOut, ServerError> {
        StreamOut::open(call)
    }

    /// Send the items of an `impl Stream<Item = T>`, then end the call.
    pub fn send_items<T: RpcItem, S: Stream<Item = T> + Send>(
        out: StreamOut,
        items: S,
    ) -> impl Future<Output = Reply> + Send {
        out.send(easyrpc_server::stream::ok_items(items))
    }

    /// Send the items of an `impl Stream<Item = Result<T, E>>`: an `Err` ends the stream
    /// with `E`'s message.
    pub fn send_try_items<T, E, S>(out: StreamOut, items: S) -> impl Future<Output = Reply> + Send
    where
        T: RpcItem,
        E: RpcError,
        S: Stream<Item = Result<T, E>> + Send,
    {
        out.send(easyrpc_server::stream::try_items(items))
    }

    /// Send the items a sync function's iterator makes on the blocking pool, then end the
    /// call.
    pub fn send_iter<T, I, F>(out: StreamOut, name: &str, make: F) -> impl Future<Output = Reply> + Send
    where
        T: RpcItem,
        I: IntoIterator<Item = T>,
        F: FnOnce() -> I + Send + 'static,
    {
        out.send(easyrpc_server::stream::iter_items(name, move || {
            make().into_iter().map(Ok)
        }))
    }

    /// [`send_iter`] for an iterator of `Result<T, E>`: an `Err` ends the stream with `E`'s
    /// message.
    pub fn send_try_iter<T, E, I, F>(
        out: StreamOut,
        name: &str,
        make: F,
    ) -> impl Future<Output = Reply> + Send
    where
        T: RpcItem,
        E: RpcError,
        I: IntoIterator<Item = Result<T, E>>,
        F: FnOnce() -> I + Send + 'static,
    {
        out.send(easyrpc_server::stream::iter_items(name, move || {
            make()
                .into_iter()
                .map(|r| r.map_err(|e| ServerError::new(crate::ErrorCode::HandlerError, e.to_string())))
        }))
    }

    /// The async stub's call of a function whose result is a stream.
    ///
    /// # Errors
    ///
    /// As [`Client::call_stream`].
    #[cfg(feature = "async")]
    pub async fn call_stream<P: Params, T: RpcItem>(
        client: &Client,
        name: &str,
        params: P,
    ) -> Result<ItemStream<T>, Error> {
        client.call_stream(name, params).await
    }

    /// The async stub's call of a function taking a `Streaming<U>` and returning a value.
    ///
    /// # Errors
    ///
    /// As [`Client::call_upload`].
    #[cfg(feature = "async")]
    pub async fn call_upload<P, U, S, R>(client: &Client, name: &str, params: P, items: S) -> Result<R, Error>
    where
        P: Params,
        U: RpcItem,
        S: Stream<Item = U> + Send + 'static,
        R: RpcReturn,
    {
        client.call_upload(name, params, items).await
    }

    /// The async stub's call of a function taking a `Streaming<U>` and returning a stream.
    ///
    /// # Errors
    ///
    /// As [`Client::call_bidi`].
    #[cfg(feature = "async")]
    pub async fn call_bidi<P, U, S, T>(
        client: &Client,
        name: &str,
        params: P,
        items: S,
    ) -> Result<ItemStream<T>, Error>
    where
        P: Params,
        U: RpcItem,
        S: Stream<Item = U> + Send + 'static,
        T: RpcItem,
    {
        client.call_bidi(name, params, items).await
    }

    /// The blocking stub's call of a function whose result is a stream.
    ///
    /// # Errors
    ///
    /// As [`BlockingClient::call_stream`].
    #[cfg(feature = "blocking")]
    pub fn call_stream_blocking<'a, P: Params, T: RpcItem>(
        client: &'a BlockingClient,
        name: &str,
        params: P,
    ) -> Result<crate::BlockingItems<'a, T>, Error> {
        client.call_stream(name, params)
    }

    /// The blocking stub's call of a function taking a `Streaming<U>` and returning a value.
    ///
    /// # Errors
    ///
    /// As [`BlockingClient::call_upload`].
    #[cfg(feature = "blocking")]
    pub fn call_upload_blocking<P, U, I, R>(
        client: &BlockingClient,
        name: &str,
        params: P,
        items: I,
    ) -> Result<R, Error>
    where
        P: Params,
        U: RpcItem,
        I: IntoIterator<Item = U>,
        R: RpcReturn,
    {
        client.call_upload(name, params, items)
    }

    /// The blocking stub's call of a function taking a `Streaming<U>` and returning a
    /// stream.
    ///
    /// # Errors
    ///
    /// As [`BlockingClient::call_bidi`].
    #[cfg(feature = "blocking")]
    pub fn call_bidi_blocking<'a, P, U, I, T>(
        client: &'a BlockingClient,
        name: &str,
        params: P,
        items: I,
    ) -> Result<crate::BlockingItems<'a, T>, Error>
    where
        P: Params,
        U: RpcItem,
        I: IntoIterator<Item = U>,
        I::IntoIter: 'a,
        T: RpcItem,
    {
        client.call_bidi(name, params, items)
    }

    /// The async stub's call.
    ///
    /// # Errors
    ///
    /// As [`Client::call`].
    #[cfg(feature = "async")]
    pub async fn call<P: Params, R: RpcReturn>(client: &Client, name: &str, params: P) -> Result<R, Error> {
        client.call(name, params).await
    }

    /// The blocking stub's call.
    ///
    /// # Errors
    ///
    /// As [`BlockingClient::call`].
    #[cfg(feature = "blocking")]
    pub fn call_blocking<P: Params, R: RpcReturn>(
        client: &BlockingClient,
        name: &str,
        params: P,
    ) -> Result<R, Error> {
        client.call(name, params)
    }
}
