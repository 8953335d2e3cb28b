//! The accept loop: listener → connection.
//!
//! [`Listener`] takes connections from every listener of the server (TCP, TLS, Unix) until
//! the shutdown signal, checks the connection rules, gives each one its task (a
//! [`Connection`]) and a connection permit (one limit for all the listeners), and at
//! shutdown takes what is still queued on each, tells every connection to drain, and waits
//! for them within the grace period. As in mini-redis's `server.rs`, each concern is a
//! field.

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::connection::Connection;
use crate::context::{ConnInfo, Peer};
use crate::rules::ConnFacts;
use crate::tls::{Acceptor, TlsIdentity};
use crate::{Shared, Transport};

/// A bound TCP socket listening with `backlog` pending connections at most (the kernel
/// caps it at `net.core.somaxconn`). std's `TcpListener::bind` always asks for 128: a
/// burst of connects beyond it waits 1–2 s for a SYN retransmission. Like std, it sets
/// `SO_REUSEADDR` on Unix; `configure` may set more options before `bind`.
pub(crate) fn bind(
    addr: SocketAddr,
    backlog: u32,
    configure: impl FnOnce(&socket2::Socket) -> io::Result<()>,
) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    configure(&socket)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// One listening socket of a server, with what its connections need to know about it.
#[derive(Debug)]
pub(crate) struct Bound {
    incoming: Incoming,
    meta: Meta,
}

/// What a listener lends each of its connections.
#[derive(Debug)]
struct Meta {
    /// What it listens on ("127.0.0.1:5000", "unix:/run/x.sock"): the calls' contexts
    /// and the rules see it.
    name: Arc<str>,
    /// TLS: each connection's task runs the handshake before serving.
    tls: Option<Acceptor>,
    transport: Transport,
    /// `rpc_connections{listener}`, with metrics on (set by [`Listener::new`]).
    connections: Option<metrics::Gauge>,
}

/// Where connections come from. An enum rather than a trait object: the accept loop
/// matches once per connection, and each connection's task is generic over its stream
/// (no dispatch per read or write).
#[derive(Debug)]
enum Incoming {
    Tcp(TcpListener),
    #[cfg(unix)]
    Unix(UnixIncoming),
}

/// A connection just accepted.
enum Accepted {
    Tcp(TcpStream, SocketAddr),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

impl Accepted {
    fn peer(&self) -> Peer {
        match self {
            Accepted::Tcp(_, addr) => Peer::Tcp(*addr),
            #[cfg(unix)]
            Accepted::Unix(stream) => unix::peer(stream),
        }
    }
}

impl Bound {
    /// A TCP listener; TLS with `tls`.
    pub(crate) fn tcp(listener: TcpListener, tls: Option<Acceptor>) -> Bound {
        let name = listener
            .local_addr()
            .map_or_else(|e| e.to_string(), |a| a.to_string());
        let transport = if tls.is_some() {
            Transport::Tls
        } else {
            Transport::Tcp
        };
        Bound {
            incoming: Incoming::Tcp(listener),
            meta: Meta {
                name: Arc::from(name),
                tls,
                transport,
                connections: None,
            },
        }
    }

    /// A Unix-domain listener.
    #[cfg(unix)]
    pub(crate) fn unix(listener: UnixIncoming) -> Bound {
        Bound {
            meta: Meta {
                name: Arc::from(format!("unix:{}", listener.path().display())),
                tls: None,
                transport: Transport::Unix,
                connections: None,
            },
            incoming: Incoming::Unix(listener),
        }
    }
}

impl Incoming {
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<Accepted>> {
        match self {
            Incoming::Tcp(l) => l.poll_accept(cx).map_ok(|(stream, peer)| {
                if let Err(e) = stream.set_nodelay(true) {
                    debug!(%peer, error = %e, "set_nodelay");
                }
                Accepted::Tcp(stream, peer)
            }),
            #[cfg(unix)]
            Incoming::Unix(l) => l.poll_accept(cx).map_ok(Accepted::Unix),
        }
    }

    /// At shutdown: hand every connection already queued to `take`, without waiting.
    fn drain_queue(self, mut take: impl FnMut(Accepted)) {
        match self {
            Incoming::Tcp(l) => match l.into_std() {
                Ok(listener) => drain_queue(&listener, |stream, peer| take(Accepted::Tcp(stream, peer))),
                Err(e) => debug!(error = %e, "the accept queue could not be drained"),
            },
            #[cfg(unix)]
            Incoming::Unix(l) => l.drain_queue(take),
        }
    }
}

/// Server-side state of the accept loop, over every listener of the server.
#[derive(Debug)]
pub(crate) struct Listener {
    /// What every connection shares.
    shared: Arc<Shared>,
    /// The sockets connections arrive on.
    listeners: Vec<Bound>,
    /// Bounds the connections served at once, over every listener
    /// ([`Config::max_connections`]): a permit moves into each connection's task and is
    /// given back when it ends. A connection beyond the bound is closed at once and
    /// logged (the kernel completed its handshake already; waiting for a permit would
    /// only hide it in the accept queue).
    ///
    /// [`Config::max_connections`]: crate::Config::max_connections
    limit_connections: Arc<Semaphore>,
    /// Every connection's task, drained at shutdown.
    conns: JoinSet<()>,
    /// Cancelled at shutdown: each connection stops reading and finishes its calls.
    token: CancellationToken,
}

/// The parts of the accept loop a new connection needs, lent.
struct Spawner<'a> {
    shared: &'a Arc<Shared>,
    conns: &'a mut JoinSet<()>,
    token: &'a CancellationToken,
}

impl Listener {
    /// The accept loop of `listeners`, for the server `shared`.
    pub(crate) fn new(shared: Arc<Shared>, mut listeners: Vec<Bound>) -> Listener {
        let limit = shared.config.max_connections.max(1);
        if let Some(metrics) = &shared.metrics {
            for l in &mut listeners {
                l.meta.connections = Some(metrics.connections(&l.meta.name));
            }
        }
        Listener {
            shared,
            limit_connections: Arc::new(Semaphore::new(limit.min(Semaphore::MAX_PERMITS))),
            conns: JoinSet::new(),
            token: CancellationToken::new(),
            listeners,
        }
    }

    /// Accept connections until `shutdown` completes; then take the queued ones, let
    /// in-flight calls finish for up to the grace period, and close.
    pub(crate) async fn run(self, shutdown: impl Future<Output = ()>) {
        let Listener {
            shared,
            listeners,
            limit_connections,
            mut conns,
            token,
        } = self;
        let config = &shared.config;
        let (max_connections, grace) = (config.max_connections, config.grace_period);
        // The dedup cache's sweep of expired answers; a retry checks the TTL itself, so
        // this only bounds how long expired answers hold memory.
        let mut sweep = tokio::time::interval((config.dedup.ttl / 4).max(Duration::from_millis(100)));
        tokio::pin!(shutdown);
        // The metrics endpoint, served until the connections are drained.
        let _metrics = shared
            .metrics
            .clone()
            .map(|m| AbortOnDrop(tokio::spawn(m.serve())));
        for l in &listeners {
            info!(addr = %l.meta.name, worker = shared.worker, transport = %l.meta.transport, "listening");
        }
        // Where the next look for a connection starts: each listener in turn goes first,
        // so that a busy one cannot starve the others.
        let mut next = 0;
        loop {
            let (index, accepted) = tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => continue,
                _ = sweep.tick() => {
                    shared.dedup.evict(tokio::time::Instant::now().into_std());
                    continue;
                }
                accepted = poll_fn(|cx| poll_accept(&listeners, &mut next, cx)) => accepted,
            };
            let meta = &listeners[index].meta;
            match accepted {
                Ok(accepted) => {
                    let peer = accepted.peer();
                    if let Some(rules) = &shared.rules {
                        if let Some(rule) = rules.refuses_early(meta.transport, &meta.name, &peer) {
                            info!(%peer, listener = %meta.name, %rule, "connection refused by a rule; closing");
                            continue;
                        }
                    }
                    let Ok(permit) = limit_connections.clone().try_acquire_owned() else {
                        warn!(%peer, listener = %meta.name, max = max_connections, "too many connections; closing the new one");
                        continue;
                    };
                    let mut spawner = Spawner {
                        shared: &shared,
                        conns: &mut conns,
                        token: &token,
                    };
                    spawner.start(meta, accepted, peer, permit);
                }
                Err(e) if is_connection_error(&e) => debug!(listener = %meta.name, error = %e, "accept"),
                // EMFILE and the like: wait for connections to close (as hyper and axum
                // do, so that the loop does not spin on an error that persists).
                Err(e) => {
                    error!("accept error: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        for Bound { incoming, meta } in listeners {
            incoming.drain_queue(|accepted| {
                let peer = accepted.peer();
                if let Some(rules) = &shared.rules {
                    if let Some(rule) = rules.refuses_early(meta.transport, &meta.name, &peer) {
                        info!(%peer, listener = %meta.name, %rule, "connection refused by a rule; closing");
                        return;
                    }
                }
                match limit_connections.clone().try_acquire_owned() {
                    Ok(permit) => Spawner {
                        shared: &shared,
                        conns: &mut conns,
                        token: &token,
                    }
                    .start(&meta, accepted, peer, permit),
                    Err(_) => warn!(%peer, "could not take a queued connection at shutdown"),
                }
            });
        }
        info!(connections = conns.len(), "shutting down");
        shared.draining.store(true, std::sync::atomic::Ordering::Relaxed);
        token.cancel();
        let drain = async { while conns.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, drain).await.is_err() {
            warn!(connections = conns.len(), "grace period over; closing the rest");
            conns.shutdown().await;
        }
    }
}

/// A connection counted in `rpc_connections` while this lives.
struct Open(metrics::Gauge);

impl Open {
    fn new(gauge: metrics::Gauge) -> Open {
        gauge.increment(1.0);
        Open(gauge)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// A task aborted when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The next connection of any listener, trying each in turn from `next`.
fn poll_accept(
    listeners: &[Bound],
    next: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<(usize, io::Result<Accepted>)> {
    let n = listeners.len();
    for k in 0..n {
        let i = (*next + k) % n;
        if let Poll::Ready(r) = listeners[i].incoming.poll_accept(cx) {
            *next = (i + 1) % n;
            return Poll::Ready((i, r));
        }
    }
    Poll::Pending
}

impl Spawner<'_> {
    /// Give an accepted connection its task.
    fn start(&mut self, meta: &Meta, accepted: Accepted, peer: Peer, permit: OwnedSemaphorePermit) {
        match accepted {
            Accepted::Tcp(stream, _) => self.spawn(meta, stream, peer, permit),
            #[cfg(unix)]
            Accepted::Unix(stream) => self.spawn(meta, stream, peer, permit),
        }
    }

    /// Run a connection on its own task; `permit` is given back when it ends. With TLS,
    /// the task runs the handshake first (never the accept loop: a slow or silent client
    /// must not hold up the others), bounded by the handshake timeout; a failed one
    /// closes only this connection. Rules that need the client's certificate are checked
    /// after it.
    fn spawn<S>(&mut self, meta: &Meta, stream: S, peer: Peer, permit: OwnedSemaphorePermit)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (shared, token, listener) = (self.shared.clone(), self.token.clone(), meta.name.clone());
        let transport = meta.transport;
        // Counted from accept to close (the TLS handshake included).
        let open = meta.connections.clone().map(Open::new);
        match &meta.tls {
            None => {
                let Some(info) = conn_info(&shared, transport, listener, peer, None) else {
                    return;
                };
                let conn = Connection::new(shared, info);
                self.conns.spawn(async move {
                    conn.run(stream, token).await;
                    drop((permit, open));
                });
            }
            Some(tls) => {
                let tls = tls.clone();
                self.conns.spawn(async move {
                    match tls.handshake(stream).await {
                        Ok((mut stream, identity)) => {
                            if let Some(info) = conn_info(&shared, transport, listener, peer, identity) {
                                Connection::new(shared, info).run(&mut stream, token).await;
                            }
                            stream.close().await;
                        }
                        Err(e) => info!(%peer, error = %e, "TLS handshake failed; closing"),
                    }
                    drop((permit, open));
                });
            }
        }
    }
}

/// The facts of a new connection, once its TLS identity is known: `None` (logged) when a
/// rule refuses it. With per-method rules, which methods it may not call.
fn conn_info(
    shared: &Shared,
    transport: Transport,
    listener: Arc<str>,
    peer: Peer,
    tls: Option<Arc<TlsIdentity>>,
) -> Option<ConnInfo> {
    let mut denied = None;
    if let Some(rules) = &shared.rules {
        let facts = ConnFacts {
            transport,
            listener: &listener,
            peer: &peer,
            tls: tls.as_deref(),
        };
        if let Some(refusal) = rules.rules().refuses_connection(&facts) {
            info!(%peer, listener = %listener, rule = %refusal, "connection refused by a rule; closing");
            return None;
        }
        denied = rules.denied(&facts);
    }
    Some(ConnInfo {
        peer,
        listener,
        session: None,
        tls,
        denied,
        streams: None,
    })
}

/// Connections already in the accept queue would be reset when the listener closes (with
/// SO_REUSEPORT, no other worker's listener takes them over): accept them all, without
/// waiting, so that they drain with the rest and their first requests are answered
/// ShuttingDown (which clients may retry) instead.
fn drain_queue(listener: &std::net::TcpListener, mut take: impl FnMut(TcpStream, SocketAddr)) {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => match stream
                .set_nonblocking(true)
                .and_then(|()| stream.set_nodelay(true))
                .and_then(|()| TcpStream::from_std(stream))
            {
                Ok(stream) => take(stream, peer),
                Err(e) => warn!(%peer, error = %e, "could not take a queued connection at shutdown"),
            },
            Err(e) if is_connection_error(&e) => {}
            // WouldBlock: the queue is empty.
            Err(_) => break,
        }
    }
}

/// Refused, aborted and reset connections are the peer's business: skip them.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// `bind` (used by `Builder::serve`, `Builder::run` and prefork's workers) listens
    /// with the backlog asked for: 600 connects complete with nobody accepting, where
    /// std's 128 would drop the SYN of the 130th (see `tests/backlog.rs`).
    #[test]
    fn bind_listens_with_the_backlog_asked_for() {
        let listener = bind("127.0.0.1:0".parse().unwrap(), 600, |_| Ok(())).unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Vec<_> = (0..600)
            .map(|i| {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                    .unwrap_or_else(|e| panic!("connect {i}: {e}"))
            })
            .collect();
        assert_eq!(conns.len(), 600);
    }
}

#[cfg(unix)]
pub(crate) use self::unix::{UnixIncoming, UnixSocket};

#[cfg(unix)]
mod unix {
    use std::os::unix::net::UnixListener as StdUnixListener;
    use std::path::{Path, PathBuf};

    use futures_util::FutureExt;
    use tokio::net::{UnixListener, UnixStream};

    use super::*;

    /// The socket file of a Unix listener, removed when this is dropped if it is ours
    /// (`remove`): a single server's, or a prefork supervisor's; never a worker's, whose
    /// listener is the supervisor's, inherited across the fork.
    #[derive(Debug)]
    struct SocketFile {
        path: PathBuf,
        remove: bool,
    }

    impl Drop for SocketFile {
        fn drop(&mut self) {
            if self.remove {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }

    /// A Unix-domain socket bound and listening, with std (no runtime needed): what a
    /// prefork supervisor binds once for all its workers.
    #[derive(Debug)]
    pub(crate) struct UnixSocket {
        listener: StdUnixListener,
        file: SocketFile,
    }

    impl UnixSocket {
        /// Bind `path` with file mode `mode`. A socket file left by a server that is gone
        /// (connecting to it is refused) is replaced; a live one is an error
        /// (`AddrInUse`), as is any other file there. The file is removed when this (or
        /// the listener made of it) is dropped.
        pub(crate) fn bind(path: &Path, mode: u32) -> io::Result<UnixSocket> {
            use std::os::unix::fs::{FileTypeExt, PermissionsExt};
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                if !meta.file_type().is_socket() {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("{} exists and is not a socket", path.display()),
                    ));
                }
                match std::os::unix::net::UnixStream::connect(path) {
                    Ok(_) => {
                        return Err(io::Error::new(
                            io::ErrorKind::AddrInUse,
                            format!("a server listens on {} already", path.display()),
                        ))
                    }
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        info!(path = %path.display(), "replacing a stale socket file");
                        std::fs::remove_file(path)?;
                    }
                    Err(e) => return Err(e),
                }
            }
            let listener = StdUnixListener::bind(path)?;
            let file = SocketFile {
                path: path.to_owned(),
                remove: true,
            };
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
            listener.set_nonblocking(true)?;
            Ok(UnixSocket { listener, file })
        }

        pub(crate) fn path(&self) -> &Path {
            &self.file.path
        }

        /// Leave the file alone when dropped (a forked worker's copy of the supervisor's).
        #[cfg_attr(not(all(unix, feature = "prefork")), allow(dead_code))]
        pub(crate) fn disown(&mut self) {
            self.file.remove = false;
        }

        /// The accept loop's listener (inside a runtime).
        pub(crate) fn into_incoming(self) -> io::Result<UnixIncoming> {
            Ok(UnixIncoming {
                listener: UnixListener::from_std(self.listener)?,
                file: self.file,
            })
        }
    }

    /// A Unix-domain listener, and the path it owns: the socket file is removed when the
    /// listener is (after a graceful shutdown), unless a prefork supervisor owns it.
    #[derive(Debug)]
    pub(crate) struct UnixIncoming {
        listener: UnixListener,
        file: SocketFile,
    }

    /// A Unix peer's credentials, when the kernel gives them (`SO_PEERCRED`).
    pub(super) fn peer(stream: &UnixStream) -> crate::Peer {
        let cred = stream.peer_cred().ok();
        crate::Peer::Unix {
            uid: cred.map(|c| c.uid()),
            gid: cred.map(|c| c.gid()),
            pid: cred.and_then(|c| c.pid()),
        }
    }

    impl UnixIncoming {
        /// Bind `path` (see [`UnixSocket::bind`]).
        pub(crate) fn bind(path: &Path, mode: u32) -> io::Result<UnixIncoming> {
            UnixSocket::bind(path, mode)?.into_incoming()
        }

        pub(crate) fn path(&self) -> &Path {
            &self.file.path
        }

        pub(super) fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<UnixStream>> {
            self.listener.poll_accept(cx).map_ok(|(stream, _)| stream)
        }

        pub(super) fn drain_queue(self, mut take: impl FnMut(Accepted)) {
            loop {
                match self.listener.accept().now_or_never() {
                    Some(Ok((stream, _))) => take(Accepted::Unix(stream)),
                    Some(Err(e)) if is_connection_error(&e) => {}
                    _ => break,
                }
            }
        }
    }
}
