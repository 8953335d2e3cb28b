//! The sync entry point, [`Builder::run`]: call it from a plain `fn main`, with no runtime.
//! One process builds its runtime and serves; prefork forks the workers first.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use crate::endpoint::{bind_all_std, BindOptions, StdBound};
use crate::{shutdown_signal, Builder, Endpoint, Error, Listening, LocalAddr};

/// The tokio runtime each prefork worker builds ([`Config::worker_runtime`](crate::Config::worker_runtime)).
#[cfg(feature = "prefork")]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkerRuntime {
    /// One thread per worker, the default: with a worker per core, no task hops between
    /// cores and nothing is shared between threads. Sync handlers still run on the
    /// worker's blocking pool.
    #[default]
    CurrentThread,
    /// A multi-thread runtime of `threads` threads per worker (0: tokio's default, one per
    /// core).
    MultiThread {
        /// Worker threads of each worker's runtime.
        threads: usize,
    },
}

#[cfg(feature = "prefork")]
impl Builder {
    /// Prefork mode for [`Builder::run`] (Unix): a supervisor forks `workers` processes
    /// that share the port (`SO_REUSEPORT`); `0` means one per core. See
    /// [`Config::prefork`](crate::Config::prefork).
    pub fn prefork(mut self, workers: usize) -> Builder {
        self.config.prefork = Some(workers);
        self
    }

    /// See [`Config::bind_core`](crate::Config::bind_core).
    pub fn bind_core(mut self, on: bool) -> Builder {
        self.config.bind_core = on;
        self
    }

    /// Register this server in etcd while [`Builder::run`] (or `run_with`,
    /// `run_listeners`) serves: before it serves, with a lease kept alive; deregistered
    /// first on TERM or INT, then drained (see the `Registration` docs for what happens
    /// when etcd goes away). A failure to register at start-up is
    /// [`Error::Discovery`]. Under prefork the supervisor's
    /// process registers once for every worker. Feature `etcd`.
    #[cfg(feature = "etcd")]
    pub fn discovery(mut self, registration: crate::Registration) -> Builder {
        self.discovery = Some(registration);
        self
    }

    /// See [`Config::worker_runtime`](crate::Config::worker_runtime).
    pub fn worker_runtime(mut self, runtime: WorkerRuntime) -> Builder {
        self.config.worker_runtime = runtime;
        self
    }
}

impl Builder {
    /// Build and serve `addr` until TERM or INT (ctrl-c), from a plain `fn main`: this
    /// builds the runtime itself, so call it with none running. Listeners given with
    /// [`Builder::listen`] are served too, after `addr` (see [`Builder::run_listeners`]).
    ///
    /// In one process (the default) it binds, builds a multi-thread runtime and runs
    /// [`Server::run`](crate::Server::run). With [`Builder::prefork`] this process becomes
    /// the supervisor of forked workers, each with its own runtime and listener on the
    /// same port (`SO_REUSEPORT`: the kernel spreads connections by a hash of their
    /// addresses, not by load). `max_flow` limits and the dedup cache are shared by all
    /// workers. The supervisor answers signals:
    ///
    /// - TERM or INT: every worker stops accepting, finishes its calls within the grace
    ///   period and exits; then `run` returns `Ok`.
    /// - HUP: rolling restart: a new worker starts for each, and each old one drains once
    ///   its successor listens.
    /// - TTIN / TTOU: one worker more / fewer.
    ///
    /// A worker that dies is restarted at once (with backoff if it keeps dying at
    /// start-up) and the cause is logged. Workers log inside a `worker{index, pid}` span,
    /// and the reserved method `rpc.worker` answers `{"index": i, "pid": p}`. The
    /// supervisor keeps those signals blocked when it returns: the process is expected to
    /// exit then.
    ///
    // Without the `prefork` feature the example does not build: not a test then.
    #[cfg_attr(feature = "prefork", doc = "```no_run")]
    #[cfg_attr(not(feature = "prefork"), doc = "```ignore")]
    /// use easyrpc_server::{Method, Server};
    ///
    /// fn main() -> Result<(), easyrpc_server::Error> {
    ///     Server::builder()
    ///         .register(Method::sync_fn("add", |(a, b): (i64, i64)| a + b))
    ///         .prefork(0) // one worker per core
    ///         .run("127.0.0.1:25000")
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// When the server cannot be built, the address cannot be bound, or (prefork) the
    /// process already has more than one thread ([`Error::Threads`]), prefork is not
    /// supported here, or a first worker fails to start.
    pub fn run(self, addr: impl std::net::ToSocketAddrs) -> Result<(), Error> {
        self.run_with(addr, |_| {})
    }

    /// Like [`Builder::run`], calling `on_listening` with the address actually bound (port
    /// 0 resolved) once connections are accepted: in prefork mode, once every first worker
    /// listens, in the supervisor, before any further fork.
    ///
    /// # Errors
    ///
    /// As [`Builder::run`].
    pub fn run_with(
        mut self,
        addr: impl std::net::ToSocketAddrs,
        on_listening: impl FnOnce(SocketAddr),
    ) -> Result<(), Error> {
        let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
        if addrs.is_empty() {
            return Err(
                io::Error::new(io::ErrorKind::InvalidInput, "the address resolved to nothing").into(),
            );
        }
        self.listeners.insert(0, Endpoint::resolved(addrs));
        self.run_listeners_with(|local| {
            if let Some(addr) = local.first().and_then(LocalAddr::socket_addr) {
                on_listening(addr);
            }
        })
    }

    /// [`Builder::run`] for the listeners given with [`Builder::listen`]: every one of them
    /// served by this process, or under prefork by every worker (TCP and TLS listeners
    /// with `SO_REUSEPORT` in each worker; a Unix socket bound once by the supervisor,
    /// which every worker accepts on, and which the supervisor removes when it exits).
    ///
    // Without the `prefork` feature the example does not build: not a test then.
    #[cfg_attr(feature = "prefork", doc = "```no_run")]
    #[cfg_attr(not(feature = "prefork"), doc = "```ignore")]
    /// use easyrpc_server::{Method, Server};
    ///
    /// fn main() -> Result<(), easyrpc_server::Error> {
    ///     Server::builder()
    ///         .register(Method::sync_fn("add", |(a, b): (i64, i64)| a + b))
    ///         .listen("0.0.0.0:25000")
    ///         .listen("unix:/run/app/rpc.sock")
    ///         .prefork(2)
    ///         .run_listeners()
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Builder::run`]; [`Error::NoListener`] when no listener was given.
    pub fn run_listeners(self) -> Result<(), Error> {
        self.run_listeners_with(|_| {})
    }

    /// Like [`Builder::run_listeners`], calling `on_listening` with what each listener
    /// listens on (port 0 resolved), in the order given, once connections are accepted
    /// (under prefork: once every first worker listens, in the supervisor).
    ///
    /// # Errors
    ///
    /// As [`Builder::run_listeners`].
    pub fn run_listeners_with(self, on_listening: impl FnOnce(&[LocalAddr])) -> Result<(), Error> {
        if self.listeners.is_empty() {
            return Err(Error::NoListener);
        }
        #[cfg(not(feature = "prefork"))]
        return self.run_single(on_listening);
        #[cfg(feature = "prefork")]
        match self.config.prefork {
            None => self.run_single(on_listening),
            #[cfg(unix)]
            Some(workers) => {
                let settings = crate::prefork::Settings {
                    workers: if workers == 0 {
                        std::thread::available_parallelism().map_or(1, |n| n.get())
                    } else {
                        workers
                    },
                    bind_core: self.config.bind_core,
                    runtime: self.config.worker_runtime.clone(),
                    backlog: self.config.backlog,
                };
                crate::prefork::run(self, settings, on_listening)
            }
            #[cfg(not(unix))]
            Some(_) => Err(io::Error::new(io::ErrorKind::Unsupported, "prefork needs Unix").into()),
        }
    }

    fn run_single(mut self, on_listening: impl FnOnce(&[LocalAddr])) -> Result<(), Error> {
        let endpoints = std::mem::take(&mut self.listeners);
        #[cfg(feature = "etcd")]
        let discovery = self.discovery.take();
        let (tls, backlog, unix_mode) = (
            self.tls.clone(),
            self.config.backlog,
            self.config.unix_socket_mode,
        );
        let server = self.build()?;
        let options = BindOptions {
            tls: tls.as_ref(),
            backlog,
            unix_mode,
        };
        let bound = bind_all_std(&endpoints, &options)?;
        let local: Vec<LocalAddr> = bound.iter().map(StdBound::local).collect();
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        #[cfg(feature = "etcd")]
        let registered = match discovery {
            Some(reg) => {
                let first = local
                    .iter()
                    .find_map(LocalAddr::socket_addr)
                    .map(|a| a.to_string());
                Some(runtime.block_on(crate::discovery::Registered::start(reg, first, 1))?)
            }
            None => None,
        };
        // The sockets listen already: connections queue until the runtime accepts them.
        on_listening(&local);
        runtime.block_on(async move {
            let shutdown = async move {
                shutdown_signal().await;
                // Deregistered before draining: no client is sent to a draining server.
                #[cfg(feature = "etcd")]
                if let Some(registered) = registered {
                    registered.deregister().await;
                }
            };
            Listening::from_std(server, bound)?.serve(shutdown).await;
            Ok::<_, io::Error>(())
        })?;
        // A sync handler still running after the grace period cannot be stopped: do not wait.
        runtime.shutdown_timeout(Duration::from_millis(100));
        Ok(())
    }
}
