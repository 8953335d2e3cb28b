//! Three ready-made [layers](crate::Builder::layer): a token check, per-method
//! timeouts and request logging. Each is a plain tower `Layer` over a
//! [`CallRequest`] service, and a model for writing your own.
//!
//! ```
//! use std::time::Duration;
//! use easyrpc_server::layers::{Log, MethodTimeout, RequireToken};
//! use easyrpc_server::{Method, Server};
//!
//! let server = Server::builder()
//!     .register(Method::sync_fn("add", |(a, b): (i64, i64)| a + b))
//!     .layer(Log::new())
//!     .layer(RequireToken::new("authorization", |t| t == "Bearer s3cret"))
//!     .layer(MethodTimeout::new().method("slow", Duration::from_secs(2)))
//!     .build()
//!     .unwrap();
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use easyrpc_proto::{ErrorCode, ServerError};
use tower::{Layer, Service};

use crate::layer::{BoxError, CallRequest};
use crate::method::Reply;

type BoxFuture = Pin<Box<dyn Future<Output = Result<Reply, BoxError>> + Send>>;

/// Refuses every call whose metadata lacks a valid token: the caller gets
/// [`ErrorCode::Unauthenticated`] (code 11) and the function does not run.
///
/// The token is read from the metadata key given (say `"authorization"`), which our
/// clients send with `Client::with_metadata`; a plain MessagePack-RPC client cannot send
/// metadata, so it is refused too.
#[derive(Clone)]
pub struct RequireToken {
    key: Arc<str>,
    check: Arc<dyn Fn(&str) -> bool + Send + Sync>,
}

impl fmt::Debug for RequireToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequireToken")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl RequireToken {
    /// Let a call through when `check` accepts the value of metadata `key`.
    pub fn new(key: &str, check: impl Fn(&str) -> bool + Send + Sync + 'static) -> RequireToken {
        RequireToken {
            key: Arc::from(key),
            check: Arc::new(check),
        }
    }
}

impl<S> Layer<S> for RequireToken {
    type Service = RequireTokenService<S>;

    fn layer(&self, inner: S) -> RequireTokenService<S> {
        RequireTokenService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`RequireToken`].
#[derive(Clone, Debug)]
pub struct RequireTokenService<S> {
    inner: S,
    layer: RequireToken,
}

impl<S> Service<CallRequest> for RequireTokenService<S>
where
    S: Service<CallRequest, Response = Reply, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Reply;
    type Error = BoxError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: CallRequest) -> BoxFuture {
        let ok = request
            .context()
            .metadata()
            .get(&self.layer.key)
            .is_some_and(|t| (self.layer.check)(t));
        if !ok {
            let e = ServerError::new(
                ErrorCode::Unauthenticated,
                format!("missing or invalid {:?} in the call's metadata", &*self.layer.key),
            );
            return Box::pin(std::future::ready(Ok(Reply::err(e))));
        }
        Box::pin(self.inner.call(request))
    }
}

/// A timeout per method (and optionally one for all others): a call that has not
/// finished in time is answered [`ErrorCode::DeadlineExceeded`] and its context is
/// cancelled. An async function is dropped then; a sync one runs to its end on the
/// blocking pool (it cannot be stopped), its reply discarded.
#[derive(Clone, Debug, Default)]
pub struct MethodTimeout {
    methods: Arc<HashMap<String, Duration>>,
    default: Option<Duration>,
}

impl MethodTimeout {
    /// No timeouts yet.
    pub fn new() -> MethodTimeout {
        MethodTimeout::default()
    }

    /// Calls of `method` end after `timeout`.
    #[must_use]
    pub fn method(mut self, method: &str, timeout: Duration) -> MethodTimeout {
        Arc::make_mut(&mut self.methods).insert(method.to_owned(), timeout);
        self
    }

    /// Calls of every other method end after `timeout`.
    #[must_use]
    pub fn default_timeout(mut self, timeout: Duration) -> MethodTimeout {
        self.default = Some(timeout);
        self
    }
}

impl<S> Layer<S> for MethodTimeout {
    type Service = MethodTimeoutService<S>;

    fn layer(&self, inner: S) -> MethodTimeoutService<S> {
        MethodTimeoutService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`MethodTimeout`].
#[derive(Clone, Debug)]
pub struct MethodTimeoutService<S> {
    inner: S,
    layer: MethodTimeout,
}

impl<S> Service<CallRequest> for MethodTimeoutService<S>
where
    S: Service<CallRequest, Response = Reply, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Reply;
    type Error = BoxError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: CallRequest) -> BoxFuture {
        let limit = self
            .layer
            .methods
            .get(request.method())
            .copied()
            .or(self.layer.default);
        let Some(limit) = limit else {
            return Box::pin(self.inner.call(request));
        };
        let context = request.context().clone();
        let fut = self.inner.call(request);
        Box::pin(async move {
            match tokio::time::timeout(limit, fut).await {
                Ok(r) => r,
                Err(_) => {
                    context.cancel();
                    Ok(Reply::err(ServerError::new(
                        ErrorCode::DeadlineExceeded,
                        format!(
                            "{} did not finish within its timeout of {limit:?}",
                            context.method()
                        ),
                    )))
                }
            }
        })
    }
}

/// Logs every call at `info` when it ends (target `easyrpc_server::layers`): method, msgid,
/// peer, duration, and `ok` or the error code and message.
#[derive(Clone, Debug, Default)]
pub struct Log {
    _private: (),
}

impl Log {
    /// Log every call.
    pub fn new() -> Log {
        Log::default()
    }
}

impl<S> Layer<S> for Log {
    type Service = LogService<S>;

    fn layer(&self, inner: S) -> LogService<S> {
        LogService { inner }
    }
}

/// The service of [`Log`].
#[derive(Clone, Debug)]
pub struct LogService<S> {
    inner: S,
}

impl<S> Service<CallRequest> for LogService<S>
where
    S: Service<CallRequest, Response = Reply, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Reply;
    type Error = BoxError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: CallRequest) -> BoxFuture {
        let context = request.context().clone();
        let started = Instant::now();
        let fut = self.inner.call(request);
        Box::pin(async move {
            let r = fut.await;
            let elapsed = started.elapsed();
            let (method, msgid, peer) = (context.method(), context.msgid(), context.peer());
            match &r {
                Ok(reply) => match reply.error() {
                    None => tracing::info!(method, msgid, %peer, ?elapsed, "call ok"),
                    Some(e) => {
                        tracing::info!(method, msgid, %peer, ?elapsed, code = e.code, error = %e.message, "call failed")
                    }
                },
                Err(e) => {
                    tracing::info!(method, msgid, %peer, ?elapsed, error = %e, "call failed in a layer")
                }
            }
            r
        })
    }
}
