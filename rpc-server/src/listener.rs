//! The accept loop: listener → connection.
//!
//! [`Listener`] takes connections until the shutdown signal, gives each one its task (a
//! [`Connection`]) and a connection permit, and at shutdown takes what is still queued,
//! tells every connection to drain, and waits for them within the grace period. As in
//! mini-redis's `server.rs`, each concern is a field.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::connection::Connection;
use crate::tls::Acceptor;
use crate::Shared;

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

/// Where connections come from: a TCP listener, or (Unix) a Unix-domain one. The
/// connection task is the same for every kind: it is generic over the stream.
pub(crate) trait Incoming: Send + 'static {
    /// A connection's byte stream.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Who is at the other end.
    type Peer: Into<crate::Peer> + fmt::Display + Send;
    /// The next connection.
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, Self::Peer)>> + Send;
    /// What the listener listens on, for the logs.
    fn local(&self) -> String;
    /// At shutdown: hand every connection already queued to `take`, without waiting.
    fn drain_queue(self, take: impl FnMut(Self::Stream, Self::Peer));
}

impl Incoming for TcpListener {
    type Stream = TcpStream;
    type Peer = SocketAddr;

    async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let (stream, peer) = TcpListener::accept(self).await?;
        if let Err(e) = stream.set_nodelay(true) {
            debug!(%peer, error = %e, "set_nodelay");
        }
        Ok((stream, peer))
    }

    fn local(&self) -> String {
        self.local_addr()
            .map_or_else(|e| e.to_string(), |a| a.to_string())
    }

    fn drain_queue(self, take: impl FnMut(TcpStream, SocketAddr)) {
        match self.into_std() {
            Ok(listener) => drain_queue(&listener, take),
            Err(e) => debug!(error = %e, "the accept queue could not be drained"),
        }
    }
}

/// Server-side state of the accept loop.
#[derive(Debug)]
pub(crate) struct Listener<L> {
    /// What every connection shares.
    shared: Arc<Shared>,
    /// The socket connections arrive on.
    listener: L,
    /// Bounds the connections served at once ([`Config::max_connections`]): a permit
    /// moves into each connection's task and is given back when it ends. A connection
    /// beyond the bound is closed at once and logged (the kernel completed its handshake
    /// already; waiting for a permit would only hide it in the accept queue).
    ///
    /// [`Config::max_connections`]: crate::Config::max_connections
    limit_connections: Arc<Semaphore>,
    /// Every connection's task, drained at shutdown.
    conns: JoinSet<()>,
    /// Cancelled at shutdown: each connection stops reading and finishes its calls.
    token: CancellationToken,
    /// TLS: each connection's task runs the handshake before serving.
    tls: Option<Acceptor>,
    /// What the listener listens on, for the calls' contexts.
    name: Arc<str>,
}

impl<L: Incoming> Listener<L> {
    /// The accept loop of `listener`, for the server `shared`.
    pub(crate) fn new(shared: Arc<Shared>, listener: L) -> Listener<L> {
        let limit = shared.config.max_connections.max(1);
        Listener {
            shared,
            limit_connections: Arc::new(Semaphore::new(limit.min(Semaphore::MAX_PERMITS))),
            conns: JoinSet::new(),
            token: CancellationToken::new(),
            tls: None,
            name: Arc::from(listener.local()),
            listener,
        }
    }

    /// Serve TLS on every connection (with `Some`).
    pub(crate) fn with_tls(mut self, tls: Option<Acceptor>) -> Listener<L> {
        self.tls = tls;
        self
    }

    /// Accept connections until `shutdown` completes; then take the queued ones, let
    /// in-flight calls finish for up to the grace period, and close.
    pub(crate) async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let config = &self.shared.config;
        let (max_connections, grace) = (config.max_connections, config.grace_period);
        // The dedup cache's sweep of expired answers; a retry checks the TTL itself, so
        // this only bounds how long expired answers hold memory.
        let mut sweep = tokio::time::interval((config.dedup.ttl / 4).max(Duration::from_millis(100)));
        tokio::pin!(shutdown);
        info!(addr = %self.listener.local(), worker = self.shared.worker, tls = self.tls.is_some(), "listening");
        loop {
            let accepted = tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(_) = self.conns.join_next(), if !self.conns.is_empty() => continue,
                _ = sweep.tick() => {
                    self.shared.dedup.evict(tokio::time::Instant::now().into_std());
                    continue;
                }
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let Ok(permit) = self.limit_connections.clone().try_acquire_owned() else {
                        warn!(%peer, max = max_connections, "too many connections; closing the new one");
                        continue;
                    };
                    self.start(stream, peer, permit);
                }
                Err(e) if is_connection_error(&e) => debug!(error = %e, "accept"),
                // EMFILE and the like: wait for connections to close (as hyper and axum
                // do, so that the loop does not spin on an error that persists).
                Err(e) => {
                    error!("accept error: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        // The listener itself is needed to drain its queue: take the struct apart.
        let Listener {
            shared,
            listener,
            limit_connections,
            mut conns,
            token,
            name,
            tls,
        } = self;
        listener.drain_queue(
            |stream, peer| match limit_connections.clone().try_acquire_owned() {
                Ok(permit) => spawn(
                    &shared,
                    &mut conns,
                    &token,
                    &name,
                    tls.as_ref(),
                    stream,
                    peer,
                    permit,
                ),
                Err(_) => warn!(%peer, "could not take a queued connection at shutdown"),
            },
        );
        info!(connections = conns.len(), "shutting down");
        shared.draining.store(true, std::sync::atomic::Ordering::Relaxed);
        token.cancel();
        let drain = async { while conns.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, drain).await.is_err() {
            warn!(connections = conns.len(), "grace period over; closing the rest");
            conns.shutdown().await;
        }
    }

    /// Give `stream` its task.
    fn start(&mut self, stream: L::Stream, peer: L::Peer, permit: OwnedSemaphorePermit) {
        let tls = self.tls.as_ref();
        spawn(
            &self.shared,
            &mut self.conns,
            &self.token,
            &self.name,
            tls,
            stream,
            peer,
            permit,
        );
    }
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

/// Run a connection on its own task; `permit` is given back when it ends. With `tls`, the
/// task runs the handshake first (never the accept loop: a slow or silent client must not
/// hold up the others), bounded by the handshake timeout; a failed one closes only this
/// connection.
#[allow(clippy::too_many_arguments)] // The accept loop's parts, lent: a struct would only rename them.
fn spawn<S, P>(
    shared: &Arc<Shared>,
    conns: &mut JoinSet<()>,
    token: &CancellationToken,
    listener: &Arc<str>,
    tls: Option<&Acceptor>,
    stream: S,
    peer: P,
    permit: OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    P: Into<crate::Peer> + fmt::Display,
{
    // For the log of a failed handshake (no allocation on plain connections).
    let peer_name = if tls.is_some() {
        peer.to_string()
    } else {
        String::new()
    };
    let conn = Connection::new(shared.clone(), peer.into(), listener.clone());
    let token = token.clone();
    match tls {
        None => {
            conns.spawn(async move {
                conn.run(stream, token).await;
                drop(permit);
            });
        }
        Some(tls) => {
            let tls = tls.clone();
            let peer = peer_name;
            conns.spawn(async move {
                match tls.handshake(stream).await {
                    Ok((mut stream, identity)) => {
                        conn.with_tls(identity).run(&mut stream, token).await;
                        stream.close().await;
                    }
                    Err(e) => info!(%peer, error = %e, "TLS handshake failed; closing"),
                }
                drop(permit);
            });
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
pub(crate) use self::unix::UnixIncoming;

#[cfg(unix)]
mod unix {
    use std::path::{Path, PathBuf};

    use tokio::net::{UnixListener, UnixStream};

    use super::*;

    /// A Unix-domain listener, and the path it owns: the socket file is removed when the
    /// listener is (after a graceful shutdown).
    #[derive(Debug)]
    pub(crate) struct UnixIncoming {
        listener: UnixListener,
        path: PathBuf,
    }

    /// A Unix peer, for the logs: its credentials when the kernel gives them.
    #[derive(Debug)]
    pub(crate) struct UnixPeer(Option<tokio::net::unix::UCred>);

    impl fmt::Display for UnixPeer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match &self.0 {
                Some(c) => write!(f, "unix:pid={:?},uid={},gid={}", c.pid(), c.uid(), c.gid()),
                None => f.write_str("unix"),
            }
        }
    }

    impl From<UnixPeer> for crate::Peer {
        fn from(p: UnixPeer) -> crate::Peer {
            crate::Peer::Unix {
                uid: p.0.map(|c| c.uid()),
                gid: p.0.map(|c| c.gid()),
                pid: p.0.and_then(|c| c.pid()),
            }
        }
    }

    impl UnixIncoming {
        /// Bind `path` with file mode `mode`. A socket file left by a server that is gone
        /// (connecting to it is refused) is replaced; a live one is an error
        /// (`AddrInUse`), as is any other file there.
        pub(crate) fn bind(path: &Path, mode: u32) -> io::Result<UnixIncoming> {
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
            let listener = UnixListener::bind(path)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
            Ok(UnixIncoming {
                listener,
                path: path.to_owned(),
            })
        }
    }

    impl Drop for UnixIncoming {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    impl Incoming for UnixIncoming {
        type Stream = UnixStream;
        type Peer = UnixPeer;

        async fn accept(&self) -> io::Result<(UnixStream, UnixPeer)> {
            let (stream, _) = self.listener.accept().await?;
            let cred = stream.peer_cred().ok();
            Ok((stream, UnixPeer(cred)))
        }

        fn local(&self) -> String {
            format!("unix:{}", self.path.display())
        }

        fn drain_queue(self, mut take: impl FnMut(UnixStream, UnixPeer)) {
            loop {
                match self.listener.accept().now_or_never() {
                    Some(Ok((stream, _))) => {
                        let cred = stream.peer_cred().ok();
                        take(stream, UnixPeer(cred));
                    }
                    Some(Err(e)) if is_connection_error(&e) => {}
                    _ => break,
                }
            }
        }
    }

    use futures_util::FutureExt;
}
