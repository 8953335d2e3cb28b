//! The tokio side of the server: listener, connections, dispatch, blocking pool, shutdown.
//!
//! Most users reach this through the `rpc` crate and `#[register]`. This crate serves
//! [`Method`]s (built by the macro or by hand) over MessagePack-RPC on TCP.
//!
//! # Layout
//!
//! - [`Method`]: one function and how it runs (sync on the blocking pool, or async).
//! - [`Builder`] and [`Config`]: collect methods and settings, then [`Builder::build`].
//! - [`Server::run`]: accept connections until the shutdown future completes, then drain.
//!
//! # Example
//!
//! ```no_run
//! use rpc_server::{Method, Server};
//!
//! # async fn demo() -> Result<(), rpc_server::Error> {
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
#![doc(test(attr(deny(warnings, rust_2018_idioms), allow(dead_code, unused_variables))))]

mod connection;
mod dedup;
mod method;
#[cfg(unix)]
mod prefork;
mod registry;
mod run;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

pub use method::{Method, Reply, ReplyFuture, SyncJob};
pub use rpc_proto::{Args, Codec, DedupConfig, ErrorCode, FromArgs, ServerError, DEFAULT_MAX_MESSAGE_SIZE};
pub use run::WorkerRuntime;

use connection::Connection;
use dedup::Dedup;
use registry::Registry;

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
    /// Connections served at once; a connection beyond it is closed at once and logged.
    /// Default: 10 000.
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
    pub prefork: Option<usize>,
    /// With `prefork`: worker `i` pins itself to core `i % cores` before building its
    /// runtime. Less cache and scheduler traffic between cores, but a worker can no longer
    /// use an idle core when its own is busy (with other processes, or with its blocking
    /// pool). Default: off.
    pub bind_core: bool,
    /// With `prefork`: the runtime each worker builds. Default:
    /// [`WorkerRuntime::CurrentThread`]. (One process always uses a multi-thread runtime.)
    pub worker_runtime: WorkerRuntime,
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
            unstable_network: false,
            dedup: DedupConfig::default(),
            prefork: None,
            bind_core: false,
            worker_runtime: WorkerRuntime::default(),
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
    #[error("prefork needs a single-threaded process, but it has {0} threads: call Builder::run before starting a runtime or a thread")]
    Threads(usize),
}

/// Collects methods and settings.
#[derive(Debug, Default)]
#[must_use = "a builder does nothing until built or served"]
pub struct Builder {
    methods: Vec<Method>,
    config: Config,
}

impl Builder {
    /// Serve `method`.
    pub fn register(mut self, method: Method) -> Builder {
        self.methods.push(method);
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

    /// Check the methods and build the server.
    ///
    /// # Errors
    ///
    /// [`BuildError::DuplicateMethod`] when two methods share a name (including the
    /// reserved `rpc.ping`).
    pub fn build(self) -> Result<Server, BuildError> {
        let registry = Registry::new(
            self.methods,
            self.config.blocking_threads,
            self.config.unstable_network,
        )?;
        Ok(Server {
            shared: Arc::new(Shared {
                registry,
                dedup: Arc::new(Dedup::Local(DedupMap::new(self.config.dedup))),
                config: self.config,
            }),
        })
    }

    /// Build, bind `addr` and serve until `shutdown` completes.
    ///
    /// # Errors
    ///
    /// When the server cannot be built or the address cannot be bound.
    pub async fn serve(
        self,
        addr: impl ToSocketAddrs,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        let server = self.build()?;
        let listener = TcpListener::bind(addr).await?;
        server.run(listener, shutdown).await;
        Ok(())
    }
}

/// The dedup cache as the server uses it: waiters hold a watch receiver, answers are
/// whole encoded response frames.
pub(crate) type DedupMap =
    rpc_proto::DedupCache<tokio::sync::watch::Receiver<Option<bytes::Bytes>>, bytes::Bytes>;

/// What every connection of a server shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) registry: Registry,
    pub(crate) config: Config,
    pub(crate) dedup: Arc<Dedup>,
}

/// A built server: serve it with [`Server::run`].
#[derive(Debug, Clone)]
pub struct Server {
    shared: Arc<Shared>,
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

    /// Entries in the dedup cache (running and finished), for tests and metrics.
    pub fn dedup_entries(&self) -> usize {
        self.shared.dedup.len()
    }

    /// Accept connections on `listener` until `shutdown` completes; then stop accepting,
    /// let in-flight calls finish for up to [`Config::grace_period`], and close.
    pub async fn run(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let token = CancellationToken::new();
        let config = &self.shared.config;
        let limit = Arc::new(Semaphore::new(config.max_connections.max(1)));
        let mut sweep = tokio::time::interval((config.dedup.ttl / 4).max(Duration::from_millis(100)));
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, "listening");
        }
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                _ = sweep.tick() => self.shared.dedup.evict(std::time::Instant::now()),
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let Ok(permit) = limit.clone().try_acquire_owned() else {
                            warn!(%peer, max = config.max_connections, "too many connections; closing the new one");
                            continue;
                        };
                        self.start(&mut conns, stream, peer, token.clone(), permit);
                    }
                    Err(e) if is_connection_error(&e) => debug!(error = %e, "accept"),
                    // EMFILE and the like: wait for connections to close (as hyper and axum do).
                    Err(e) => {
                        error!("accept error: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
        // Connections already in the accept queue would be reset when the listener closes
        // (with SO_REUSEPORT, no other worker's listener takes them over): accept them all,
        // without waiting, so that they drain with the rest and their first requests are
        // answered ShuttingDown (which clients may retry) instead.
        match listener.into_std() {
            Ok(listener) => loop {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        let stream = stream
                            .set_nonblocking(true)
                            .and_then(|()| TcpStream::from_std(stream));
                        match (stream, limit.clone().try_acquire_owned()) {
                            (Ok(stream), Ok(permit)) => {
                                self.start(&mut conns, stream, peer, token.clone(), permit)
                            }
                            _ => warn!(%peer, "could not take a queued connection at shutdown"),
                        }
                    }
                    Err(e) if is_connection_error(&e) => {}
                    // WouldBlock: the queue is empty.
                    Err(_) => break,
                }
            },
            Err(e) => debug!(error = %e, "the accept queue could not be drained"),
        }
        info!(connections = conns.len(), "shutting down");
        token.cancel();
        let drain = async { while conns.join_next().await.is_some() {} };
        if tokio::time::timeout(config.grace_period, drain).await.is_err() {
            warn!(connections = conns.len(), "grace period over; closing the rest");
            conns.shutdown().await;
        }
    }

    fn start(
        &self,
        conns: &mut JoinSet<()>,
        stream: TcpStream,
        peer: SocketAddr,
        token: CancellationToken,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        if let Err(e) = stream.set_nodelay(true) {
            debug!(%peer, error = %e, "set_nodelay");
        }
        let conn = Connection::new(self.shared.clone(), peer);
        conns.spawn(async move {
            conn.run(stream, token).await;
            drop(permit);
        });
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}
