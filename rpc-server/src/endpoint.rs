//! Where a server listens: an [`Endpoint`] given to [`Builder::listen`], and the
//! [`LocalAddr`] it listens on once bound; a server with its listeners bound and not yet
//! serving is [`Listening`].
//!
//! Binding happens here, without a runtime (std sockets), so that the sync entry point and
//! the prefork supervisor bind before any runtime or thread exists; the accept loop
//! (`listener.rs`) takes the sockets over inside a runtime.
//!
//! [`Builder::listen`]: crate::Builder::listen

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::listener::{self, Bound, Listener};
use crate::{Server, TlsConfig};

/// How connections reach a listener: what [rules](crate::rules) and
/// [`LocalAddr::transport`] tell apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Transport {
    /// Plain TCP.
    Tcp,
    /// TLS on TCP.
    Tls,
    /// A Unix-domain socket.
    Unix,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Unix => "unix",
        })
    }
}

/// Where a server listens: a TCP address (plain, or TLS with its own settings) or a
/// Unix-domain socket. Give one or more to [`Builder::listen`](crate::Builder::listen).
///
/// A string is a TCP address (`"127.0.0.1:5000"`, `"localhost:5000"`, `"[::1]:5000"`,
/// resolved when the server binds), or a Unix socket when written `unix:/path/to/sock`.
///
/// ```
/// use easyrpc_server::{Endpoint, Transport};
///
/// assert_eq!(Endpoint::from("127.0.0.1:5000").transport(), Transport::Tcp);
/// assert_eq!(Endpoint::from("unix:/run/app.sock").transport(), Transport::Unix);
/// assert_eq!(Endpoint::from("unix:/run/app.sock").to_string(), "unix:/run/app.sock");
/// ```
#[derive(Debug, Clone)]
pub struct Endpoint(pub(crate) Kind);

#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Tcp {
        addr: TcpAddr,
        /// Its own TLS settings; without, the builder's ([`Builder::tls`]), if any.
        ///
        /// [`Builder::tls`]: crate::Builder::tls
        tls: Option<TlsConfig>,
    },
    Unix(PathBuf),
}

/// A TCP address: to resolve when binding, or resolved already (`Builder::run`'s).
#[derive(Debug, Clone)]
pub(crate) enum TcpAddr {
    Name(String),
    Resolved(Vec<SocketAddr>),
}

impl fmt::Display for TcpAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TcpAddr::Name(name) => f.write_str(name),
            TcpAddr::Resolved(addrs) => match addrs.first() {
                Some(a) => write!(f, "{a}"),
                None => f.write_str("(no address)"),
            },
        }
    }
}

impl TcpAddr {
    /// Every address it stands for, with std's resolver (blocking).
    pub(crate) fn resolve(&self) -> io::Result<Vec<SocketAddr>> {
        use std::net::ToSocketAddrs;
        match self {
            TcpAddr::Name(name) => Ok(name.to_socket_addrs()?.collect()),
            TcpAddr::Resolved(addrs) => Ok(addrs.clone()),
        }
    }

    /// Every address it stands for, with tokio's resolver.
    async fn resolve_async(&self) -> io::Result<Vec<SocketAddr>> {
        match self {
            TcpAddr::Name(name) => Ok(tokio::net::lookup_host(name.as_str()).await?.collect()),
            TcpAddr::Resolved(addrs) => Ok(addrs.clone()),
        }
    }
}

impl Endpoint {
    /// A plain TCP address (TLS if the builder has [`Builder::tls`](crate::Builder::tls)).
    ///
    /// ```
    /// let e = easyrpc_server::Endpoint::tcp("0.0.0.0:25000");
    /// ```
    pub fn tcp(addr: impl Into<String>) -> Endpoint {
        Endpoint(Kind::Tcp {
            addr: TcpAddr::Name(addr.into()),
            tls: None,
        })
    }

    /// A TCP address served with TLS, with these settings (whatever the builder's).
    ///
    /// ```no_run
    /// use easyrpc_server::{Endpoint, TlsConfig};
    ///
    /// let tls = TlsConfig::from_pem_files("server.crt", "server.key")?;
    /// let e = Endpoint::tls("0.0.0.0:25001", tls);
    /// # Ok::<(), easyrpc_server::TlsConfigError>(())
    /// ```
    pub fn tls(addr: impl Into<String>, tls: TlsConfig) -> Endpoint {
        Endpoint(Kind::Tcp {
            addr: TcpAddr::Name(addr.into()),
            tls: Some(tls),
        })
    }

    /// A Unix-domain socket at `path` (see [`Server::run_unix`] for what happens to the
    /// file).
    ///
    /// ```
    /// let e = easyrpc_server::Endpoint::unix("/run/app/rpc.sock");
    /// ```
    pub fn unix(path: impl Into<PathBuf>) -> Endpoint {
        Endpoint(Kind::Unix(path.into()))
    }

    /// Which transport it serves: [`Transport::Tcp`] for a plain address (which
    /// [`Builder::tls`](crate::Builder::tls) still turns into TLS).
    pub fn transport(&self) -> Transport {
        match &self.0 {
            Kind::Tcp { tls: None, .. } => Transport::Tcp,
            Kind::Tcp { tls: Some(_), .. } => Transport::Tls,
            Kind::Unix(_) => Transport::Unix,
        }
    }

    /// An address resolved already.
    pub(crate) fn resolved(addrs: Vec<SocketAddr>) -> Endpoint {
        Endpoint(Kind::Tcp {
            addr: TcpAddr::Resolved(addrs),
            tls: None,
        })
    }
}

impl From<&str> for Endpoint {
    /// `unix:/path` is a Unix socket; anything else a TCP address.
    fn from(s: &str) -> Endpoint {
        match s.strip_prefix("unix:") {
            Some(path) => Endpoint::unix(path),
            None => Endpoint::tcp(s),
        }
    }
}

impl From<String> for Endpoint {
    fn from(s: String) -> Endpoint {
        Endpoint::from(s.as_str())
    }
}

impl From<&String> for Endpoint {
    fn from(s: &String) -> Endpoint {
        Endpoint::from(s.as_str())
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(a: SocketAddr) -> Endpoint {
        Endpoint::resolved(vec![a])
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Kind::Tcp { addr, tls: None } => write!(f, "{addr}"),
            Kind::Tcp { addr, tls: Some(_) } => write!(f, "{addr} (tls)"),
            Kind::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// What a listener listens on, once bound (a TCP port 0 resolved). Its `Display` is the
/// listener's name, as [`Context::listener`](crate::Context::listener) gives it and
/// [rules](crate::rules::Match::listener) match it: `127.0.0.1:5000` (TCP or TLS) or
/// `unix:/run/app.sock`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LocalAddr {
    /// Plain TCP.
    Tcp(SocketAddr),
    /// TLS on TCP.
    Tls(SocketAddr),
    /// A Unix-domain socket.
    Unix(PathBuf),
}

impl LocalAddr {
    /// The transport.
    pub fn transport(&self) -> Transport {
        match self {
            LocalAddr::Tcp(_) => Transport::Tcp,
            LocalAddr::Tls(_) => Transport::Tls,
            LocalAddr::Unix(_) => Transport::Unix,
        }
    }

    /// The TCP address (TCP or TLS).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self {
            LocalAddr::Tcp(a) | LocalAddr::Tls(a) => Some(*a),
            LocalAddr::Unix(_) => None,
        }
    }

    /// The socket file (Unix).
    pub fn unix_path(&self) -> Option<&Path> {
        match self {
            LocalAddr::Unix(p) => Some(p),
            _ => None,
        }
    }
}

impl fmt::Display for LocalAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LocalAddr::Tcp(a) | LocalAddr::Tls(a) => write!(f, "{a}"),
            LocalAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A socket bound with std, before any runtime: taken over by the accept loop with
/// [`StdBound::into_bound`] inside one.
#[derive(Debug)]
pub(crate) enum StdBound {
    Tcp {
        listener: std::net::TcpListener,
        local: SocketAddr,
        tls: Option<TlsConfig>,
    },
    #[cfg(unix)]
    Unix(listener::UnixSocket),
}

impl StdBound {
    pub(crate) fn local(&self) -> LocalAddr {
        match self {
            StdBound::Tcp { local, tls: None, .. } => LocalAddr::Tcp(*local),
            StdBound::Tcp {
                local, tls: Some(_), ..
            } => LocalAddr::Tls(*local),
            #[cfg(unix)]
            StdBound::Unix(u) => LocalAddr::Unix(u.path().to_owned()),
        }
    }

    /// The accept loop's listener (inside a runtime).
    pub(crate) fn into_bound(self) -> io::Result<Bound> {
        match self {
            StdBound::Tcp { listener, tls, .. } => Ok(Bound::tcp(
                tokio::net::TcpListener::from_std(listener)?,
                tls.as_ref().map(TlsConfig::acceptor),
            )),
            #[cfg(unix)]
            StdBound::Unix(u) => Ok(Bound::unix(u.into_incoming()?)),
        }
    }
}

/// How to bind: what the builder says besides each endpoint.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BindOptions<'a> {
    /// For plain TCP endpoints ([`Builder::tls`](crate::Builder::tls)).
    pub(crate) tls: Option<&'a TlsConfig>,
    pub(crate) backlog: u32,
    pub(crate) unix_mode: u32,
}

impl Kind {
    /// The TLS settings a TCP endpoint is served with.
    pub(crate) fn tls<'a>(&'a self, options: &BindOptions<'a>) -> Option<&'a TlsConfig> {
        match self {
            Kind::Tcp { tls, .. } => tls.as_ref().or(options.tls),
            Kind::Unix(_) => None,
        }
    }
}

/// Bind the first of `addrs` that binds (as std's `TcpListener::bind`).
pub(crate) fn bind_first<T>(
    addrs: &[SocketAddr],
    mut bind: impl FnMut(SocketAddr) -> io::Result<T>,
) -> io::Result<T> {
    let mut last = None;
    for &addr in addrs {
        match bind(addr) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last
        .unwrap_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the address resolved to nothing")))
}

/// Bind `endpoint` with std (TCP addresses resolved with std's resolver).
pub(crate) fn bind_std(endpoint: &Endpoint, options: &BindOptions<'_>) -> io::Result<StdBound> {
    match &endpoint.0 {
        Kind::Tcp { addr, .. } => bind_tcp(&addr.resolve()?, endpoint.0.tls(options), options),
        Kind::Unix(path) => bind_unix(path, options),
    }
}

/// Bind `endpoint` with std, TCP addresses resolved with tokio's resolver.
async fn bind_async(endpoint: &Endpoint, options: &BindOptions<'_>) -> io::Result<StdBound> {
    match &endpoint.0 {
        Kind::Tcp { addr, .. } => bind_tcp(&addr.resolve_async().await?, endpoint.0.tls(options), options),
        Kind::Unix(path) => bind_unix(path, options),
    }
}

fn bind_tcp(
    addrs: &[SocketAddr],
    tls: Option<&TlsConfig>,
    options: &BindOptions<'_>,
) -> io::Result<StdBound> {
    let listener = bind_first(addrs, |a| listener::bind(a, options.backlog, |_| Ok(())))?;
    Ok(StdBound::Tcp {
        local: listener.local_addr()?,
        listener,
        tls: tls.cloned(),
    })
}

#[cfg(unix)]
fn bind_unix(path: &Path, options: &BindOptions<'_>) -> io::Result<StdBound> {
    Ok(StdBound::Unix(listener::UnixSocket::bind(
        path,
        options.unix_mode,
    )?))
}

#[cfg(not(unix))]
fn bind_unix(path: &Path, _: &BindOptions<'_>) -> io::Result<StdBound> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        format!("unix:{}: Unix-domain sockets need Unix", path.display()),
    ))
}

/// Bind every endpoint, in order; a failure unbinds the ones bound already (a Unix socket
/// file made is removed).
pub(crate) fn bind_all_std(
    endpoints: &[Endpoint],
    options: &BindOptions<'_>,
) -> Result<Vec<StdBound>, crate::Error> {
    if endpoints.is_empty() {
        return Err(crate::Error::NoListener);
    }
    endpoints
        .iter()
        .map(|e| bind_std(e, options).map_err(|err| bind_error(e, err)))
        .collect()
}

/// A bind error, naming the endpoint.
pub(crate) fn bind_error(endpoint: &Endpoint, e: io::Error) -> crate::Error {
    crate::Error::Io(io::Error::new(e.kind(), format!("{endpoint}: {e}")))
}

/// A built server whose listeners are bound: connections queue until [`Listening::serve`]
/// accepts them. Made by [`Builder::bind`](crate::Builder::bind); tells the addresses
/// actually bound (port 0 resolved) before serving.
///
/// ```no_run
/// use easyrpc_server::Server;
///
/// # async fn demo() -> Result<(), easyrpc_server::Error> {
/// let listening = Server::builder()
///     .sync_fn("add", |(a, b): (i64, i64)| a + b)
///     .listen("127.0.0.1:0")
///     .listen("unix:/tmp/app.sock")
///     .bind()
///     .await?;
/// for addr in listening.local_addrs() {
///     println!("listening on {addr}");
/// }
/// listening.serve(async { tokio::signal::ctrl_c().await.ok(); }).await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a server listens but accepts nothing until served"]
pub struct Listening {
    server: Server,
    bound: Vec<Bound>,
    local: Vec<LocalAddr>,
}

impl Listening {
    /// Bind every endpoint of `endpoints` for `server` (inside a runtime).
    pub(crate) async fn bind(
        server: Server,
        endpoints: &[Endpoint],
        options: &BindOptions<'_>,
    ) -> Result<Listening, crate::Error> {
        if endpoints.is_empty() {
            return Err(crate::Error::NoListener);
        }
        let mut std = Vec::with_capacity(endpoints.len());
        for e in endpoints {
            std.push(bind_async(e, options).await.map_err(|err| bind_error(e, err))?);
        }
        Listening::from_std(server, std).map_err(Into::into)
    }

    /// Take over sockets bound with std (inside a runtime).
    pub(crate) fn from_std(server: Server, std: Vec<StdBound>) -> io::Result<Listening> {
        let local = std.iter().map(StdBound::local).collect();
        let bound = std
            .into_iter()
            .map(StdBound::into_bound)
            .collect::<io::Result<_>>()?;
        Ok(Listening { server, bound, local })
    }

    /// What each listener listens on, in the order they were given.
    pub fn local_addrs(&self) -> &[LocalAddr] {
        &self.local
    }

    /// The server.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// Accept connections on every listener until `shutdown` completes; then stop
    /// accepting on all of them, let in-flight calls finish for up to the grace period,
    /// and close (a Unix socket file is removed). One connection limit
    /// ([`Config::max_connections`](crate::Config::max_connections)) covers all the
    /// listeners.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        Listener::new(self.server.shared.clone(), self.bound)
            .run(shutdown)
            .await;
    }
}
