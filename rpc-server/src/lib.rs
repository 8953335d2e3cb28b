//! The tokio side of the server: listener, connections, dispatch, blocking pool, shutdown.
//!
//! Most users reach this through the `rpc` crate and `#[register]`. This crate serves
//! [`Method`]s (built by the macro or by hand) over MessagePack-RPC on TCP (plain or TLS) and Unix-domain sockets.
//!
//! # Layout
//!
//! - [`Method`]: one function and how it runs (sync on the blocking pool, or async).
//! - [`Builder`] and [`Config`]: collect methods and settings, then [`Builder::build`].
//! - [`Server::run`]: accept connections until the shutdown future completes, then drain.
//! - [`TlsConfig`]: serve TLS, optionally requiring client certificates (mutual TLS).
//! - [`Builder::listen`] and [`Endpoint`]: several listeners at once (TCP, TLS, Unix), served
//!   by [`Builder::serve_listeners`], [`Builder::bind`] or [`Builder::run_listeners`].
//! - [`rules`]: who may connect (by listener, address, uid, TLS identity) and call what.
//! - [`Builder::metrics`]: per-function metrics, served in the Prometheus text format.
//!
//! A request goes through the files in this order: `listener.rs` (the accept loop, one
//! task per connection) → `connection.rs` (reads requests, writes replies) →
//! `registry.rs` (dispatch by method name; `limits.rs` for `max_flow`) → `method.rs`
//! (the handler) or `blocking.rs` (sync handlers on the blocking pool, panics caught) →
//! back to `connection.rs` with the [`Reply`]. `dedup.rs` is the dedup cache of
//! unstable-network mode; `run.rs` the sync entry point [`Builder::run`]; `prefork.rs`
//! the prefork supervisor, which builds each worker's server with its shared-memory
//! limits and dedup store; `tls.rs` the TLS settings and the handshake each connection's
//! task runs before `connection.rs` takes over; `endpoint.rs` where to listen and the
//! binding of every listener; `rules.rs` the connection and per-method rules, checked by
//! `listener.rs` at accept (and after a TLS handshake) and by `registry.rs` at dispatch;
//! `metrics.rs` the per-function metrics and their Prometheus endpoint
//! ([`Builder::metrics`]), counted by `connection.rs` (under prefork,
//! `prefork/scrape.rs` serves one endpoint for every worker).
//!
//! # Example
//!
//! ```no_run
//! use easyrpc_server::{Method, Server};
//!
//! # async fn demo() -> Result<(), easyrpc_server::Error> {
//! Server::builder()
//!     .register(Method::sync_fn("add", |(a, b): (i64, i64)| a + b))
//!     .serve("127.0.0.1:25000", async { tokio::signal::ctrl_c().await.ok(); })
//!     .await
//! # }
//! ```
//!
//! Sync handlers run on tokio's blocking pool behind a semaphore
//! ([`Config::blocking_threads`]). Such work cannot be aborted: a call whose connection is
//! gone still runs to its end.
//!
//! # Features
//!
//! - `prefork` (default): the prefork supervisor on Unix ([`Builder::prefork`],
//!   [`Builder::bind_core`], [`Builder::worker_runtime`]): forked workers sharing the port,
//!   with `max_flow` limits and the dedup cache in shared memory. It is what needs nix
//!   (fork, signals, shared memory) and core_affinity; without it neither is built, and
//!   [`Builder::run`] serves in one process. Nothing else depends on them: a Unix peer's
//!   credentials come from tokio (`SO_PEERCRED`), signals from `tokio::signal`.
#![doc(test(attr(deny(warnings, rust_2018_idioms), allow(dead_code, unused_variables))))]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod blocking;
mod connection;
mod context;
mod dedup;
#[cfg(feature = "etcd")]
mod discovery;
mod endpoint;
mod layer;
pub mod layers;
mod limits;
mod listener;
mod method;
mod metrics;
#[cfg(all(unix, feature = "prefork"))]
mod prefork;
mod registry;
pub mod rules;
mod run;
mod state;
#[doc(hidden)]
pub mod stream;
mod tls;

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, ToSocketAddrs};

#[doc(hidden)]
pub use context::Call;
pub use context::{Context, Peer};
#[cfg(feature = "etcd")]
pub use discovery::{DiscoveryError, Registration};
pub use easyrpc_proto::{
    Args, Blob, Codec, Compression, DedupConfig, ErrorCode, ErrorShape, FromArgs, Metadata, ServerError,
    DEFAULT_MAX_MESSAGE_SIZE,
};
pub use endpoint::{Endpoint, Listening, LocalAddr, Transport};
pub use layer::{BoxError, CallRequest, RpcService};
pub use method::{Method, Reply, ReplyFuture, Service, SyncJob};
pub use rules::Rules;
#[cfg(feature = "prefork")]
pub use run::WorkerRuntime;
pub use state::State;
#[doc(hidden)]
pub use state::States;
pub use stream::Streaming;
pub use tls::{TlsConfig, TlsConfigError, TlsIdentity};

use dedup::Dedup;
use listener::{Bound, Listener};
use registry::Registry;
use rules::ServerRules;

/// Server settings. Every field has a documented default ([`Config::default`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Largest message accepted, checked from msgpack headers before the body is
    /// buffered. Default: 64 MiB.
    pub max_message_size: usize,
    /// How many sync handlers may run on the blocking pool at once; more wait for a slot.
    /// Default: 128.
    pub blocking_threads: usize,
    /// Connections served at once, over every listener of the server; a connection beyond
    /// it is closed at once and logged. Default: 10 000.
    pub max_connections: usize,
    /// Calls running at once on one connection; beyond it the server stops reading that
    /// connection until some finish. Default: 1024.
    pub max_in_flight_per_connection: usize,
    /// Once this many reply bytes wait to be written, the server stops reading the
    /// connection until the peer reads. Default: 1 MiB.
    pub write_buffer_high_water: usize,
    /// After the shutdown signal, how long in-flight calls get to finish. Default: 30 s.
    pub grace_period: Duration,
    /// A connection from which no complete message arrived for this long, while none of
    /// its calls is running, is closed. Our clients send `rpc.ping` when idle; a plain
    /// client is simply closed. Default: 60 s.
    pub heartbeat_timeout: Duration,
    /// How errors are written for plain MessagePack-RPC peers (those that did not send our
    /// hello): `[code, message]`, the message alone (Go's net/rpc clients), or Neovim's
    /// `[type, message]`. Peers that said hello always get `[code, message]`. Only
    /// `[code, message]` carries a typed error's data, as `[code, message, data]`. Default:
    /// [`ErrorShape::CodeAndMessage`].
    pub plain_error_shape: ErrorShape,
    /// "Unstable network" mode: calls from a client session (our client, with
    /// `unstable_network` on) run at most once per msgid, and a retry gets the first
    /// answer. Functions may opt in or out one by one. Default: off.
    pub unstable_network: bool,
    /// Bounds of the dedup cache. Default: 60 s TTL, 100 000 answers, 64 MiB.
    pub dedup: DedupConfig,
    /// Prefork mode, for [`Builder::run`] on Unix: a supervisor process forks this many
    /// workers, each with its own runtime and its own listener on the same port
    /// (`SO_REUSEPORT`); `Some(0)` means one per core. `max_flow` limits and the dedup
    /// cache are shared by all workers. Default: `None` (one process).
    #[cfg(feature = "prefork")]
    pub prefork: Option<usize>,
    /// With `prefork`: worker `i` pins itself to core `i % cores` before building its
    /// runtime. Less cache and scheduler traffic between cores, but a worker can no longer
    /// use an idle core when its own is busy (with other processes, or with its blocking
    /// pool). Default: off.
    #[cfg(feature = "prefork")]
    pub bind_core: bool,
    /// With `prefork`: the runtime each worker builds. Default:
    /// [`WorkerRuntime::CurrentThread`]. (One process always uses a multi-thread runtime.)
    #[cfg(feature = "prefork")]
    pub worker_runtime: WorkerRuntime,
    /// How many connections the kernel queues for the listener before the server
    /// accepts them ([`Builder::serve`], [`Builder::run`], and each prefork worker's
    /// listener). A connect beyond it waits for a SYN retransmission (1–2 s), so a
    /// reconnect storm after a restart needs room. The kernel caps it at
    /// `net.core.somaxconn`. A listener passed to [`Server::run`] keeps its own.
    /// Default: 1024.
    pub backlog: u32,
    /// The file mode of a Unix-domain socket the server binds ([`Server::run_unix`],
    /// [`Builder::listen_unix`]): who may connect. Default: `0o660` (the owner and the
    /// group).
    pub unix_socket_mode: u32,
    /// zstd compression of large messages, with clients that offer it in their hello (our
    /// clients with compression turned on in their `Config`): the
    /// server then accepts compressed requests and compresses its replies larger than
    /// [`Compression::threshold`] (when that makes them smaller). Each side compresses only
    /// what it sends, by its own threshold. A client that did not offer it (any plain
    /// MessagePack-RPC client) never gets a compressed message. `None`: not offered to
    /// clients, nothing compressed. Default: on, 4 KiB threshold, zstd level 3.
    pub compression: Option<Compression>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            blocking_threads: 128,
            max_connections: 10_000,
            max_in_flight_per_connection: 1024,
            write_buffer_high_water: 1024 * 1024,
            grace_period: Duration::from_secs(30),
            heartbeat_timeout: Duration::from_secs(60),
            plain_error_shape: ErrorShape::CodeAndMessage,
            unix_socket_mode: 0o660,
            compression: Some(Compression::default()),
            unstable_network: false,
            dedup: DedupConfig::default(),
            #[cfg(feature = "prefork")]
            prefork: None,
            #[cfg(feature = "prefork")]
            bind_core: false,
            #[cfg(feature = "prefork")]
            worker_runtime: WorkerRuntime::default(),
            backlog: 1024,
        }
    }
}

/// A server could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// Two methods were registered under one name.
    #[error("two functions are registered under the name {0:?}")]
    DuplicateMethod(String),
    /// The metrics endpoint ([`Builder::metrics`]) could not be bound.
    #[error("cannot serve metrics on {addr}: {message}")]
    MetricsAddr {
        /// The address given.
        addr: String,
        /// Why it could not be bound.
        message: String,
    },
    /// A function takes a `State<T>` and the builder was given no `T`
    /// ([`Builder::state`]).
    #[error("{function} takes State<{ty}>, but the server was given no {ty}: add .state(..) to the builder")]
    MissingState {
        /// The function's RPC name.
        function: String,
        /// The state's type.
        ty: &'static str,
    },
}

/// A server could not be built or could not listen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The methods or settings are invalid.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// Binding the address failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// Prefork must fork a single-threaded process, and this one has more threads: a
    /// runtime or a thread was started before [`Builder::run`].
    #[cfg(feature = "prefork")]
    #[error("prefork needs a single-threaded process, but it has {0} threads: call Builder::run before starting a runtime or a thread")]
    Threads(usize),
    /// The TLS settings could not be loaded.
    #[error("tls: {0}")]
    Tls(#[from] TlsConfigError),
    /// Nothing to listen on: serving the listeners given with [`Builder::listen`], but
    /// none was.
    #[error("no listener: give the server at least one with Builder::listen")]
    NoListener,
    /// Registering in etcd at start-up failed ([`Builder::discovery`]).
    #[cfg(feature = "etcd")]
    #[error("service discovery: {0}")]
    Discovery(#[from] DiscoveryError),
}

/// Collects methods and settings.
#[derive(Debug, Default, Clone)]
#[must_use = "a builder does nothing until built or served"]
pub struct Builder {
    methods: Vec<Method>,
    config: Config,
    states: state::StateSources,
    layers: Layers,
    /// Serve TLS ([`Builder::tls`]).
    tls: Option<TlsConfig>,
    /// Where to listen ([`Builder::listen`]), in order.
    listeners: Vec<Endpoint>,
    /// Who may connect and call what ([`Builder::rules`]).
    rules: Rules,
    /// Where to register in etcd ([`Builder::discovery`]).
    #[cfg(feature = "etcd")]
    discovery: Option<Registration>,
    /// Where to serve the metrics endpoint ([`Builder::metrics`]).
    metrics: Option<MetricsAt>,
}

/// Where a server's metrics endpoint is ([`Builder::metrics`]).
#[derive(Debug, Clone)]
pub(crate) enum MetricsAt {
    /// An address to bind when the server is built.
    Addr(String),
    /// A socket bound already ([`Builder::metrics_listener`]).
    Listener(Arc<std::net::TcpListener>),
    /// A prefork worker's: recorded there, served by the supervisor.
    #[cfg_attr(not(all(unix, feature = "prefork")), allow(dead_code))]
    Supervisor,
}

/// The layers given to a builder, outermost first.
#[derive(Clone, Default)]
struct Layers(Vec<layer::LayerFn>);

impl std::fmt::Debug for Layers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} layers", self.0.len())
    }
}

impl Builder {
    /// Give the functions that take a `State<T>` their `T` (one value per type; several
    /// types may be given). The value is shared by every call (an `Arc` inside
    /// [`State`]); under prefork, each worker gets a copy made by `fork` (see
    /// [`Builder::state_with`] for values that must be made in each worker).
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use std::sync::Mutex;
    /// use easyrpc_server::Server;
    ///
    /// // Functions take it as `State<Store>` (`#[register] fn get(store: State<Store>, ..)`).
    /// #[derive(Default)]
    /// struct Store(Mutex<HashMap<String, String>>);
    ///
    /// let server = Server::builder().state(Store::default()).build().unwrap();
    /// ```
    pub fn state<T: Send + Sync + 'static>(mut self, value: T) -> Builder {
        self.states.value(value);
        self
    }

    /// Like [`Builder::state`], for a value the rest of the program keeps a handle on:
    /// the functions' `State<T>` and `value` are the same `T`.
    pub fn shared_state<T: Send + Sync + 'static>(mut self, value: Arc<T>) -> Builder {
        self.states.shared(value);
        self
    }

    /// Like [`Builder::state`], with the value made by `make` when the server is built:
    /// in each worker process under prefork (a database pool, anything holding threads
    /// or sockets, which do not survive a fork).
    pub fn state_with<T, F>(mut self, make: F) -> Builder
    where
        T: Send + Sync + 'static,
        F: Fn() -> T + Send + Sync + 'static,
    {
        self.states.make(make);
        self
    }

    /// Put a tower [`Layer`](tower::Layer) around dispatch: every call of a user method
    /// (sync or async) goes through it as a [`CallRequest`], and its response is the
    /// function's [`Reply`]. The first layer given is the outermost, as with tower's
    /// `ServiceBuilder`. See [`layers`] for a token check, per-method timeouts and
    /// request logging. A server with no layer does not pay for any of this.
    pub fn layer<L>(mut self, layer: L) -> Builder
    where
        L: tower::Layer<RpcService> + Send + Sync + 'static,
        L::Service: tower::Service<CallRequest, Response = Reply> + Clone + Send + Sync + 'static,
        <L::Service as tower::Service<CallRequest>>::Error: Into<BoxError>,
        <L::Service as tower::Service<CallRequest>>::Future: Send + 'static,
    {
        self.layers.0.push(layer::layer_fn(layer));
        self
    }

    /// Serve `method`.
    pub fn register(mut self, method: Method) -> Builder {
        self.methods.push(method);
        self
    }

    /// Serve every method of `service` (an impl block with `#[easyrpc::service]`), all calls
    /// sharing the one instance. Under prefork each worker has its own copy of it, made
    /// by `fork`.
    pub fn service<S: Service>(self, service: S) -> Builder {
        self.service_arc(Arc::new(service))
    }

    /// [`Builder::service`] with an instance the rest of the program keeps a handle on.
    pub fn service_arc<S: Service>(mut self, service: Arc<S>) -> Builder {
        self.methods.extend(service.methods());
        self
    }

    /// Serve a sync closure taking its arguments as one tuple (see [`Method::sync_fn`]).
    pub fn sync_fn<A, R, F>(self, name: &'static str, f: F) -> Builder
    where
        A: FromArgs + Send + 'static,
        R: serde::Serialize + Send + 'static,
        F: Fn(A) -> R + Send + Sync + 'static,
    {
        self.register(Method::sync_fn(name, f))
    }

    /// Serve an async closure taking its arguments as one tuple (see [`Method::async_fn`]).
    pub fn async_fn<A, R, Fut, F>(self, name: &'static str, f: F) -> Builder
    where
        A: FromArgs,
        R: serde::Serialize + Send + 'static,
        Fut: Future<Output = R> + Send + 'static,
        F: Fn(A) -> Fut + Send + Sync + 'static,
    {
        self.register(Method::async_fn(name, f))
    }

    /// Replace all settings.
    pub fn config(mut self, config: Config) -> Builder {
        self.config = config;
        self
    }

    /// See [`Config::max_message_size`].
    pub fn max_message_size(mut self, bytes: usize) -> Builder {
        self.config.max_message_size = bytes;
        self
    }

    /// See [`Config::blocking_threads`].
    pub fn blocking_threads(mut self, n: usize) -> Builder {
        self.config.blocking_threads = n;
        self
    }

    /// See [`Config::grace_period`].
    pub fn grace_period(mut self, d: Duration) -> Builder {
        self.config.grace_period = d;
        self
    }

    /// See [`Config::max_connections`].
    pub fn max_connections(mut self, n: usize) -> Builder {
        self.config.max_connections = n;
        self
    }

    /// See [`Config::heartbeat_timeout`].
    pub fn heartbeat_timeout(mut self, d: Duration) -> Builder {
        self.config.heartbeat_timeout = d;
        self
    }

    /// See [`Config::unix_socket_mode`].
    pub fn unix_socket_mode(mut self, mode: u32) -> Builder {
        self.config.unix_socket_mode = mode;
        self
    }

    /// See [`Config::plain_error_shape`].
    pub fn plain_error_shape(mut self, shape: ErrorShape) -> Builder {
        self.config.plain_error_shape = shape;
        self
    }

    /// See [`Config::unstable_network`].
    pub fn unstable_network(mut self, on: bool) -> Builder {
        self.config.unstable_network = on;
        self
    }

    /// See [`Config::dedup`].
    pub fn dedup(mut self, dedup: DedupConfig) -> Builder {
        self.config.dedup = dedup;
        self
    }

    /// See [`Config::max_in_flight_per_connection`].
    pub fn max_in_flight_per_connection(mut self, n: usize) -> Builder {
        self.config.max_in_flight_per_connection = n.max(1);
        self
    }

    /// See [`Config::write_buffer_high_water`].
    pub fn write_buffer_high_water(mut self, bytes: usize) -> Builder {
        self.config.write_buffer_high_water = bytes.max(1);
        self
    }

    /// See [`Config::backlog`].
    pub fn backlog(mut self, n: u32) -> Builder {
        self.config.backlog = n;
        self
    }

    /// See [`Config::compression`]: `None` turns compression off; `Some` sets the
    /// threshold and level of the replies compressed.
    ///
    /// ```
    /// use easyrpc_server::{Compression, Server};
    ///
    /// // Compress replies over 64 KiB, at zstd's fastest level.
    /// let builder = Server::builder().compression(Some(Compression::new(64 * 1024).with_level(1)));
    /// // Never compress.
    /// let builder = Server::builder().compression(None);
    /// ```
    pub fn compression(mut self, compression: Option<Compression>) -> Builder {
        self.config.compression = compression;
        self
    }

    /// Serve TLS on TCP: [`Builder::serve`], [`Builder::run`] (in one process and under
    /// prefork, where every worker serves it), [`Server::run`] of the built server, and
    /// every TCP address given to [`Builder::listen`] without TLS settings of its own all
    /// make each new connection do a TLS handshake first (in the connection's own task,
    /// within [`TlsConfig::handshake_timeout`]). A Unix-domain socket is still served
    /// plain. To serve plain TCP and TLS at once, give the TLS address its own settings
    /// ([`Builder::listen_tls`]) instead.
    ///
    // Without the `prefork` feature the example does not build: not a test then.
    #[cfg_attr(feature = "prefork", doc = "```no_run")]
    #[cfg_attr(not(feature = "prefork"), doc = "```ignore")]
    /// use easyrpc_server::{Server, TlsConfig};
    ///
    /// fn main() -> Result<(), easyrpc_server::Error> {
    ///     Server::builder()
    ///         .sync_fn("add", |(a, b): (i64, i64)| a + b)
    ///         .tls(TlsConfig::from_pem_files("server.crt", "server.key")?)
    ///         .prefork(0)
    ///         .run("0.0.0.0:25000")
    /// }
    /// ```
    pub fn tls(mut self, tls: TlsConfig) -> Builder {
        self.tls = Some(tls);
        self
    }

    /// Listen on `endpoint` too: a TCP address (`"0.0.0.0:5000"`), a Unix socket
    /// (`"unix:/run/app.sock"`), or any [`Endpoint`]. Call it once per listener, in any
    /// mix of TCP, TLS and Unix; every listener feeds the same methods, and one
    /// connection limit ([`Config::max_connections`]), one shutdown signal and one grace
    /// period cover them all. Serve them with [`Builder::serve_listeners`],
    /// [`Builder::bind`] or [`Builder::run_listeners`] (also under prefork, where every
    /// worker serves every listener); [`Builder::serve`] and [`Builder::run`] serve their
    /// own address first and these after it.
    ///
    /// Each connection's [`Context::listener`] names its listener, and
    /// [rules](Builder::rules) can tell them apart.
    ///
    /// ```no_run
    /// use easyrpc_server::{Server, TlsConfig};
    ///
    /// fn main() -> Result<(), easyrpc_server::Error> {
    ///     Server::builder()
    ///         .sync_fn("add", |(a, b): (i64, i64)| a + b)
    ///         .listen("127.0.0.1:25000")
    ///         .listen_tls("0.0.0.0:25001", TlsConfig::from_pem_files("server.crt", "server.key")?)
    ///         .listen("unix:/run/app/rpc.sock")
    ///         .run_listeners()
    /// }
    /// ```
    pub fn listen(mut self, endpoint: impl Into<Endpoint>) -> Builder {
        self.listeners.push(endpoint.into());
        self
    }

    /// Listen with TLS on the TCP address `addr`, with these settings (see
    /// [`Builder::listen`]).
    pub fn listen_tls(self, addr: impl Into<String>, tls: TlsConfig) -> Builder {
        self.listen(Endpoint::tls(addr, tls))
    }

    /// Listen on the Unix-domain socket `path` (see [`Builder::listen`] and
    /// [`Server::run_unix`]: a stale file is replaced, the file gets
    /// [`Config::unix_socket_mode`] and is removed at shutdown; under prefork the
    /// supervisor binds it once, every worker accepts on it, and the supervisor removes
    /// it when it exits).
    pub fn listen_unix(self, path: impl Into<std::path::PathBuf>) -> Builder {
        self.listen(Endpoint::unix(path))
    }

    /// Who may connect, and who may call what (see [`rules`]). Replaces any rules given
    /// before. A server without rules (the default) checks nothing, per connection or
    /// per call.
    ///
    /// ```
    /// use easyrpc_server::rules::{Match, Rules};
    /// use easyrpc_server::{Server, Transport};
    ///
    /// let server = Server::builder()
    ///     .sync_fn("add", |(a, b): (i64, i64)| a + b)
    ///     .sync_fn("admin_reset", |(): ()| ())
    ///     .rules(
    ///         Rules::new()
    ///             .allow(Match::any().from("10.0.0.0/8".parse()?))
    ///             .deny(Match::any().on(Transport::Tcp).on(Transport::Tls))
    ///             .methods_only("admin_*", Match::any().on(Transport::Unix)),
    ///     )
    ///     .build()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn rules(mut self, rules: Rules) -> Builder {
        self.rules = rules;
        self
    }

    /// Record per-function metrics and serve them in the Prometheus text format on
    /// `addr` (`GET /metrics`, plain HTTP/1.1), while the server runs. Off by default: a
    /// server without metrics pays nothing for them per call.
    ///
    /// The metrics are the server's own (its own recorder; nothing is installed as the
    /// process's global `metrics` recorder), so several servers in one process each serve
    /// their own. The endpoint is bound when the server is built (port 0 works:
    /// [`Server::metrics_addr`] tells the port). Under prefork the supervisor serves it,
    /// for every worker (each sample labelled `worker`). The metric names and labels are
    /// in the README's "Observability" section.
    ///
    /// ```no_run
    /// use easyrpc_server::Server;
    ///
    /// # async fn demo() -> Result<(), easyrpc_server::Error> {
    /// Server::builder()
    ///     .sync_fn("add", |(a, b): (i64, i64)| a + b)
    ///     .metrics("127.0.0.1:9100") // curl http://127.0.0.1:9100/metrics
    ///     .serve("127.0.0.1:25000", async { tokio::signal::ctrl_c().await.ok(); })
    ///     .await
    /// # }
    /// ```
    pub fn metrics(mut self, addr: impl Into<String>) -> Builder {
        self.metrics = Some(MetricsAt::Addr(addr.into()));
        self
    }

    /// [`Builder::metrics`] on a socket bound already (by you, before the server starts:
    /// you know its port, and under prefork it must exist before the fork). The server
    /// accepts scrapes on it while it runs.
    ///
    /// ```no_run
    /// use easyrpc_server::Server;
    ///
    /// fn main() -> Result<(), Box<dyn std::error::Error>> {
    ///     let metrics = std::net::TcpListener::bind("127.0.0.1:0")?;
    ///     println!("metrics on {}", metrics.local_addr()?);
    ///     Server::builder()
    ///         .sync_fn("add", |(a, b): (i64, i64)| a + b)
    ///         .metrics_listener(metrics)
    ///         .prefork(2)
    ///         .run("127.0.0.1:25000")?;
    ///     Ok(())
    /// }
    /// ```
    pub fn metrics_listener(mut self, listener: std::net::TcpListener) -> Builder {
        self.metrics = Some(MetricsAt::Listener(Arc::new(listener)));
        self
    }

    /// Check the methods and build the server.
    ///
    /// # Errors
    ///
    /// [`BuildError::DuplicateMethod`] when two methods share a name (including the
    /// reserved `rpc.ping`); [`BuildError::MissingState`] when a function takes a state
    /// the builder was not given; [`BuildError::MetricsAddr`] when the metrics endpoint
    /// cannot be bound.
    pub fn build(self) -> Result<Server, BuildError> {
        self.build_with(Parts::default())
    }

    /// Build with what a deployment mode supplies (prefork: the worker's index, shared
    /// limits and dedup store); [`Builder::build`] is one process.
    pub(crate) fn build_with(self, parts: Parts<'_>) -> Result<Server, BuildError> {
        blocking::install_panic_hook();
        let states = self.states.build();
        let method_rules = self.rules.rules().iter().any(|r| r.methods().is_some());
        let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let registry = Registry::build(
            self.methods,
            registry::Setup {
                blocking_threads: self.config.blocking_threads,
                unstable_network: self.config.unstable_network,
                worker: parts.worker,
                limit: parts.limit,
                states: &states,
                layers: &self.layers.0,
                method_rules,
                draining: draining.clone(),
            },
        )?;
        let rules =
            (!self.rules.is_empty()).then(|| Arc::new(ServerRules::new(self.rules, registry.names())));
        let metrics = match &self.metrics {
            None => None,
            Some(at) => {
                let endpoint = metrics::Metrics::endpoint(at)?;
                Some(Arc::new(metrics::Metrics::new(registry.names(), endpoint)))
            }
        };
        let dedup = match parts.dedup {
            Some(store) => Dedup::new(store),
            None => Dedup::local(self.config.dedup),
        };
        Ok(Server {
            shared: Arc::new(Shared {
                registry,
                dedup: Arc::new(dedup),
                config: self.config,
                worker: parts.worker,
                rules,
                draining,
                metrics,
            }),
            tls: self.tls,
        })
    }

    /// Build and bind every listener given with [`Builder::listen`], without accepting
    /// yet: the addresses actually bound (port 0 resolved) are known before serving
    /// ([`Listening::local_addrs`]), then [`Listening::serve`].
    ///
    /// ```no_run
    /// use easyrpc_server::Server;
    ///
    /// # async fn demo() -> Result<(), easyrpc_server::Error> {
    /// let listening = Server::builder()
    ///     .sync_fn("add", |(a, b): (i64, i64)| a + b)
    ///     .listen("127.0.0.1:0")
    ///     .listen_unix("/tmp/app.sock")
    ///     .bind()
    ///     .await?;
    /// println!("listening on {}", listening.local_addrs()[0]);
    /// listening.serve(async { tokio::signal::ctrl_c().await.ok(); }).await;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// When the server cannot be built, no listener was given ([`Error::NoListener`]),
    /// or one cannot be bound (the error names it; those bound already are closed).
    pub async fn bind(mut self) -> Result<Listening, Error> {
        let endpoints = std::mem::take(&mut self.listeners);
        let (tls, backlog, unix_mode) = (
            self.tls.clone(),
            self.config.backlog,
            self.config.unix_socket_mode,
        );
        let server = self.build()?;
        let options = endpoint::BindOptions {
            tls: tls.as_ref(),
            backlog,
            unix_mode,
        };
        Listening::bind(server, &endpoints, &options).await
    }

    /// Build, bind every listener given with [`Builder::listen`], and serve them all until
    /// `shutdown` completes (see [`Listening::serve`]).
    ///
    /// ```no_run
    /// use easyrpc_server::Server;
    ///
    /// # async fn demo() -> Result<(), easyrpc_server::Error> {
    /// Server::builder()
    ///     .sync_fn("add", |(a, b): (i64, i64)| a + b)
    ///     .listen("0.0.0.0:25000")
    ///     .listen("unix:/run/app/rpc.sock")
    ///     .serve_listeners(async { tokio::signal::ctrl_c().await.ok(); })
    ///     .await
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Builder::bind`].
    pub async fn serve_listeners(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        self.bind().await?.serve(shutdown).await;
        Ok(())
    }

    /// Build, bind `addr` and serve until `shutdown` completes; with listeners given
    /// ([`Builder::listen`]), those too, after `addr`.
    ///
    /// # Errors
    ///
    /// When the server cannot be built or an address cannot be bound.
    pub async fn serve(
        mut self,
        addr: impl ToSocketAddrs,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        let addrs: Vec<_> = tokio::net::lookup_host(addr).await?.collect();
        self.listeners.insert(0, Endpoint::resolved(addrs));
        self.serve_listeners(shutdown).await
    }

    /// Build, bind the Unix-domain socket `path` and serve until `shutdown` completes (see
    /// [`Server::run_unix`]); with listeners given ([`Builder::listen`]), those too.
    ///
    /// # Errors
    ///
    /// When the server cannot be built or the socket cannot be bound.
    #[cfg(unix)]
    pub async fn serve_unix(
        mut self,
        path: impl AsRef<std::path::Path>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        self.listeners.insert(0, Endpoint::unix(path.as_ref()));
        self.serve_listeners(shutdown).await
    }
}

/// Completes when the process is asked to stop: ctrl-c (INT) or TERM (what `kill`,
/// systemd and Kubernetes send). Give it to [`Builder::serve`] or [`Server::run`] so that
/// a stop drains the calls in flight instead of killing them (exit status 143).
///
/// ```no_run
/// use easyrpc_server::{shutdown_signal, Method, Server};
///
/// # async fn demo() -> Result<(), easyrpc_server::Error> {
/// Server::builder()
///     .register(Method::sync_fn("add", |(a, b): (i64, i64)| a + b))
///     .serve("127.0.0.1:25000", shutdown_signal())
///     .await
/// # }
/// ```
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for TERM; stopping on ctrl-c only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// What a deployment mode supplies when it builds a server ([`Builder::build_with`]).
/// The default is one process: worker 0, semaphores, a dedup map in this process.
#[derive(Default)]
pub(crate) struct Parts<'a> {
    /// The worker's index (`rpc.worker`).
    pub(crate) worker: usize,
    /// Makes the `max_flow` limit of a method, from its name and limit.
    pub(crate) limit: Option<registry::MakeLimit<'a>>,
    /// The dedup store.
    pub(crate) dedup: Option<Arc<dyn dedup::Store>>,
}

/// What every connection of a server shares.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The methods, and how to dispatch a call.
    pub(crate) registry: Registry,
    /// The settings.
    pub(crate) config: Config,
    /// The dedup cache of unstable-network mode.
    pub(crate) dedup: Arc<Dedup>,
    /// Which worker process this is (prefork; 0 in one process). `rpc.worker` answers
    /// it: the registry's handler was given the same index when the server was built.
    pub(crate) worker: usize,
    /// Who may connect and call what; `None` without rules (nothing is checked).
    pub(crate) rules: Option<Arc<ServerRules>>,
    /// Set once shutdown begins: `rpc.health` answers "draining" (its handler shares it).
    pub(crate) draining: Arc<std::sync::atomic::AtomicBool>,
    /// Per-function metrics ([`Builder::metrics`]); `None`: none recorded, one test per
    /// call.
    pub(crate) metrics: Option<Arc<metrics::Metrics>>,
}

/// A built server: serve it with [`Server::run`].
#[derive(Debug, Clone)]
pub struct Server {
    shared: Arc<Shared>,
    /// Serve TLS on TCP ([`Builder::tls`]).
    tls: Option<TlsConfig>,
}

impl Server {
    /// Start collecting methods and settings.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The settings in force.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Where the metrics endpoint listens ([`Builder::metrics`], port 0 resolved); `None`
    /// without metrics, and in a prefork worker (the supervisor serves it).
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.shared.metrics.as_ref().and_then(|m| m.addr())
    }

    /// Entries in the dedup cache (running and finished), for tests and metrics.
    pub fn dedup_entries(&self) -> usize {
        self.shared.dedup.len()
    }

    /// Accept connections on `listener` until `shutdown` completes; then stop accepting,
    /// let in-flight calls finish for up to [`Config::grace_period`], and close. With
    /// [`Builder::tls`], every connection is TLS (as with [`Server::run_tls`]).
    pub async fn run(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let bound = Bound::tcp(listener, self.tls.as_ref().map(TlsConfig::acceptor));
        Listener::new(self.shared.clone(), vec![bound])
            .run(shutdown)
            .await;
    }

    /// Serve TLS on `listener` (bound by you) until `shutdown` completes, as
    /// [`Server::run`] serves plain TCP: the same protocol, limits and shutdown. Each
    /// connection's task runs the handshake first, within
    /// [`TlsConfig::handshake_timeout`] and holding one of [`Config::max_connections`]; a
    /// failed handshake (a plaintext client, a client certificate refused) is logged
    /// with its cause and closes that connection only. `tls` is used instead of any
    /// [`Builder::tls`].
    ///
    /// ```no_run
    /// use easyrpc_server::{Server, TlsConfig};
    ///
    /// # async fn demo() -> Result<(), easyrpc_server::Error> {
    /// let tls = TlsConfig::from_pem_files("server.crt", "server.key")?;
    /// let server = Server::builder().sync_fn("add", |(a, b): (i64, i64)| a + b).build()?;
    /// let listener = tokio::net::TcpListener::bind("0.0.0.0:25000").await?;
    /// server.run_tls(listener, tls, async { tokio::signal::ctrl_c().await.ok(); }).await;
    /// # Ok(()) }
    /// ```
    pub async fn run_tls(&self, listener: TcpListener, tls: TlsConfig, shutdown: impl Future<Output = ()>) {
        let bound = Bound::tcp(listener, Some(tls.acceptor()));
        Listener::new(self.shared.clone(), vec![bound])
            .run(shutdown)
            .await;
    }

    /// Bind the Unix-domain socket `path` and serve it until `shutdown` completes, as
    /// [`Server::run`] does a TCP listener: the same protocol, limits and shutdown. A
    /// socket file left by a server that is gone (connecting to it is refused) is replaced;
    /// a live one is an error. The file gets [`Config::unix_socket_mode`] and is removed
    /// when the server stops. Clients connect with `Client::connect_unix(path)`.
    ///
    /// # Errors
    ///
    /// When `path` cannot be bound: a server listens there already (`AddrInUse`), the path
    /// is another kind of file, or the directory is not writable.
    #[cfg(unix)]
    pub async fn run_unix(
        &self,
        path: impl AsRef<std::path::Path>,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let incoming = listener::UnixIncoming::bind(path.as_ref(), self.shared.config.unix_socket_mode)?;
        Listener::new(self.shared.clone(), vec![Bound::unix(incoming)])
            .run(shutdown)
            .await;
        Ok(())
    }
}
