//! What a handler may know about its call: [`Context`], and the [`Peer`] it came from.
//!
//! A function asks for it by taking a `Context` argument (not on the wire). It is built
//! only for the functions that take one (or when a [layer](crate::Builder::layer) is
//! installed): a call to any other function pays nothing for it.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use easyrpc_proto::Metadata;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::method::{Reply, ReplyFuture};
use crate::rules::Denied;
use crate::tls::TlsIdentity;

/// Who is at the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Peer {
    /// A TCP peer, by address.
    Tcp(SocketAddr),
    /// A peer on a Unix-domain socket, with its credentials when the kernel gave them
    /// (`SO_PEERCRED`).
    Unix {
        /// The peer process's user id.
        uid: Option<u32>,
        /// The peer process's group id.
        gid: Option<u32>,
        /// The peer process's id.
        pid: Option<i32>,
    },
    /// Not known (a call made in-process, a test).
    Unknown,
}

impl Peer {
    /// The TCP address, for a TCP peer.
    pub fn addr(&self) -> Option<SocketAddr> {
        match self {
            Peer::Tcp(a) => Some(*a),
            _ => None,
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Tcp(a) => write!(f, "{a}"),
            Peer::Unix { uid, gid, pid } => {
                f.write_str("unix")?;
                if let (Some(uid), Some(gid)) = (uid, gid) {
                    write!(f, ":uid={uid},gid={gid}")?;
                }
                if let Some(pid) = pid {
                    write!(f, ",pid={pid}")?;
                }
                Ok(())
            }
            Peer::Unknown => f.write_str("unknown"),
        }
    }
}

impl From<SocketAddr> for Peer {
    fn from(a: SocketAddr) -> Peer {
        Peer::Tcp(a)
    }
}

/// The facts of a connection, shared by its calls' contexts.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    pub(crate) peer: Peer,
    /// What the listener listens on ("127.0.0.1:5000", "unix:/run/x.sock").
    pub(crate) listener: Arc<str>,
    /// The client's session id, from its hello.
    pub(crate) session: Option<u128>,
    /// The client certificate's identity (mutual TLS).
    pub(crate) tls: Option<Arc<TlsIdentity>>,
    /// The methods the server's rules refuse on this connection; `None` when it may call
    /// every method (always, on a server without per-method rules).
    pub(crate) denied: Option<Arc<Denied>>,
    /// The connection's streams, once its hello agreed them.
    pub(crate) streams: Option<Arc<crate::stream::Hub>>,
}

impl ConnInfo {
    /// A connection of unknown origin (tests, in-process calls).
    pub(crate) fn unknown() -> Arc<ConnInfo> {
        static UNKNOWN: OnceLock<Arc<ConnInfo>> = OnceLock::new();
        UNKNOWN
            .get_or_init(|| {
                Arc::new(ConnInfo {
                    peer: Peer::Unknown,
                    listener: Arc::from(""),
                    session: None,
                    tls: None,
                    denied: None,
                    streams: None,
                })
            })
            .clone()
    }
}

/// What the connection knows of a call besides its method and params: the request (its
/// msgid, deadline and metadata), or none for a notification, and the connection.
#[derive(Clone, Copy)]
pub(crate) struct CallParts<'a> {
    pub(crate) request: Option<&'a easyrpc_proto::Request<'a>>,
    pub(crate) conn: &'a Arc<ConnInfo>,
}

impl CallParts<'_> {
    pub(crate) fn msgid(&self) -> Option<u64> {
        self.request.map(|r| r.msgid)
    }

    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.request.and_then(|r| r.deadline)
    }

    pub(crate) fn metadata(&self) -> Option<&[u8]> {
        self.request.and_then(|r| r.metadata)
    }
}

/// One call, as dispatch sees it: borrowed, built on the stack for every call (a few
/// words), and made into a [`Context`] only for a function that asks for one. Generated
/// code passes it through; users never build one.
#[doc(hidden)]
#[derive(Clone, Copy)]
pub struct Call<'a> {
    pub(crate) method: &'a Arc<str>,
    pub(crate) parts: CallParts<'a>,
    /// The call's cancellation, when its function takes a context.
    pub(crate) cancel: Option<&'a CancellationToken>,
    /// A context built already (by the layer path).
    pub(crate) context: Option<&'a Context>,
}

impl fmt::Debug for Call<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Call")
            .field("method", &self.method)
            .field("msgid", &self.parts.msgid())
            .finish_non_exhaustive()
    }
}

impl Call<'_> {
    /// The call's [`Context`].
    pub fn context(&self) -> Context {
        if let Some(c) = self.context {
            return c.clone();
        }
        Context::new(
            self.method.clone(),
            self.parts,
            self.cancel.cloned().unwrap_or_default(),
        )
    }
}

/// The facts of one call, for a handler that takes it as an argument: who called, on
/// which listener, with what metadata and deadline, and whether the caller is still there.
///
/// A function gets one by taking a `Context` argument anywhere in its list; it is not on
/// the wire, and the client stubs do not have it.
///
/// ```
/// use easyrpc_server::{Context, Method};
///
/// // The caller's address, as the server sees it. With `#[register]`:
/// // `fn whoami(ctx: Context) -> String`.
/// let whoami = Method::sync_context_fn("whoami", |ctx: Context, (): ()| ctx.peer().to_string());
/// ```
///
/// Cloning is cheap (one reference count).
#[derive(Clone)]
pub struct Context(Arc<Inner>);

struct Inner {
    method: Arc<str>,
    msgid: Option<u64>,
    deadline: Option<Instant>,
    metadata: Metadata,
    conn: Arc<ConnInfo>,
    cancel: CancellationToken,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("method", &self.method())
            .field("msgid", &self.msgid())
            .field("peer", &self.peer())
            .field("listener", &self.listener())
            .field("metadata", self.metadata())
            .field("cancelled", &self.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl Context {
    pub(crate) fn new(method: Arc<str>, parts: CallParts<'_>, cancel: CancellationToken) -> Context {
        let metadata = match parts.metadata().map(Metadata::decode) {
            None => Metadata::new(),
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                tracing::debug!(%method, error = %e, "call metadata ignored");
                Metadata::new()
            }
        };
        Context(Arc::new(Inner {
            method,
            msgid: parts.msgid(),
            deadline: parts.deadline(),
            metadata,
            conn: parts.conn.clone(),
            cancel,
        }))
    }

    /// A context for a call made outside any connection (tests of a handler, say): method
    /// `method`, an [unknown](Peer::Unknown) peer, no deadline, `metadata`.
    pub fn detached(method: &str, metadata: Metadata) -> Context {
        Context(Arc::new(Inner {
            method: Arc::from(method),
            msgid: None,
            deadline: None,
            metadata,
            conn: ConnInfo::unknown(),
            cancel: CancellationToken::new(),
        }))
    }

    /// The method called.
    pub fn method(&self) -> &str {
        &self.0.method
    }

    /// The request's msgid; `None` for a notification.
    pub fn msgid(&self) -> Option<u64> {
        self.0.msgid
    }

    /// Who called.
    pub fn peer(&self) -> &Peer {
        &self.0.conn.peer
    }

    /// What the listener the call arrived on listens on: `"127.0.0.1:5000"`, or
    /// `"unix:/run/app.sock"`.
    pub fn listener(&self) -> &str {
        &self.0.conn.listener
    }

    /// The identity in the client's certificate (subject and alternative names), on a
    /// TLS connection whose client presented one (mutual TLS).
    pub fn tls_identity(&self) -> Option<&TlsIdentity> {
        self.0.conn.tls.as_deref()
    }

    /// The client's session id (unstable-network mode), if it opened one.
    pub fn session(&self) -> Option<u128> {
        self.0.conn.session
    }

    /// When the caller stops waiting, if it said (our clients send their timeout).
    pub fn deadline(&self) -> Option<Instant> {
        self.0.deadline
    }

    /// How long until the deadline (zero once it passed); `None` without one.
    pub fn time_left(&self) -> Option<Duration> {
        self.0
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// The call's metadata (empty when the client sent none, or a plain client called).
    pub fn metadata(&self) -> &Metadata {
        &self.0.metadata
    }

    /// Whether the caller has gone: it cancelled the call, its deadline passed, or its
    /// connection was reset. A sync handler may check it between steps of long work (its
    /// reply would be dropped anyway).
    pub fn is_cancelled(&self) -> bool {
        self.0.cancel.is_cancelled()
    }

    /// Cancel the call (a layer's timeout).
    /// The connection's facts.
    pub(crate) fn conn_info(&self) -> &Arc<ConnInfo> {
        &self.0.conn
    }

    pub(crate) fn cancel(&self) {
        self.0.cancel.cancel();
    }

    /// Completes when the caller has gone (see [`Context::is_cancelled`]). An async
    /// handler is dropped then anyway; this is for work it handed elsewhere (a spawned
    /// task, a thread).
    pub fn cancelled(&self) -> WaitForCancellationFutureOwned {
        self.0.cancel.clone().cancelled_owned()
    }
}

/// A running call whose function takes a context: dropping it before it finishes (a
/// cancel, a deadline, a reset connection) cancels the context's token.
pub(crate) struct CancelOnDrop {
    pub(crate) fut: ReplyFuture,
    pub(crate) token: Option<CancellationToken>,
}

impl Future for CancelOnDrop {
    type Output = Reply;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Reply> {
        let r = self.fut.as_mut().poll(cx);
        if r.is_ready() {
            self.token = None;
        }
        r
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(t) = self.token.take() {
            t.cancel();
        }
    }
}
