//! Tower middleware around dispatch: [`Builder::layer`](crate::Builder::layer).
//!
//! With at least one layer, every call of a user method (reserved `rpc.*` ones aside, and
//! unknown methods included, so that a logging layer sees them) goes through the stack as a
//! [`CallRequest`]: its [`Context`] and its raw params. The innermost service decodes the
//! params and runs the function as usual (sync functions on the blocking pool), and its
//! response is the function's [`Reply`]. A layer may answer itself (an auth check refusing a
//! call), wrap the call (a timeout, a log line), or look at the outcome
//! ([`Reply::error`]). A layer's error (`tower::BoxError`) becomes the caller's error: a
//! [`ServerError`] as it is, tower's `Elapsed` as [`ErrorCode::DeadlineExceeded`], anything
//! else as [`ErrorCode::Internal`].
//!
//! A server without layers takes none of this path: its calls cost what they did.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use easyrpc_proto::{Codec, ErrorCode, ServerError};
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceExt};

use crate::context::CallParts;
use crate::context::{CancelOnDrop, Context};
use crate::method::Reply;
use crate::registry::{Dispatch, Table};

/// The error type of services in the stack.
pub type BoxError = tower::BoxError;

/// A call, as layers see it: its context and its params, not decoded yet.
#[derive(Debug, Clone)]
pub struct CallRequest {
    pub(crate) context: Context,
    pub(crate) params: Bytes,
    pub(crate) codec: Codec,
}

impl CallRequest {
    /// The call's facts: method, peer, metadata, deadline.
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// The method called.
    pub fn method(&self) -> &str {
        self.context.method()
    }

    /// The params, raw, in the connection's codec (an array, in msgpack).
    pub fn params(&self) -> &[u8] {
        &self.params
    }

    /// The connection's codec.
    pub fn codec(&self) -> Codec {
        self.codec
    }
}

/// The service a layer wraps: the rest of the stack, down to the function.
pub type RpcService = BoxCloneSyncService<CallRequest, Reply, BoxError>;

/// One layer, as the builder keeps it: wraps the rest of the stack.
pub(crate) type LayerFn = Arc<dyn Fn(RpcService) -> RpcService + Send + Sync>;

/// `layer` as a [`LayerFn`].
pub(crate) fn layer_fn<L>(layer: L) -> LayerFn
where
    L: Layer<RpcService> + Send + Sync + 'static,
    L::Service: Service<CallRequest, Response = Reply> + Clone + Send + Sync + 'static,
    <L::Service as Service<CallRequest>>::Error: Into<BoxError>,
    <L::Service as Service<CallRequest>>::Future: Send + 'static,
{
    Arc::new(move |inner| BoxCloneSyncService::new(layer.layer(inner).map_err(Into::into)))
}

/// The innermost service: decode and run the function.
#[derive(Clone)]
struct Innermost(Arc<Table>);

type BoxFuture = Pin<Box<dyn Future<Output = Result<Reply, BoxError>> + Send>>;

impl Service<CallRequest> for Innermost {
    type Response = Reply;
    type Error = BoxError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: CallRequest) -> BoxFuture {
        match self.0.call(&request) {
            Dispatch::Ready(reply) => Box::pin(std::future::ready(Ok(reply))),
            Dispatch::Pending(fut) => Box::pin(async move { Ok(fut.await) }),
        }
    }
}

/// A registry's layer stack.
pub(crate) struct Layered {
    service: RpcService,
}

impl Layered {
    /// The stack of `layers` around the methods of `table`; the first layer is the
    /// outermost (as with tower's `ServiceBuilder`).
    pub(crate) fn new(table: Arc<Table>, layers: &[LayerFn]) -> Layered {
        let mut service = BoxCloneSyncService::new(Innermost(table));
        for layer in layers.iter().rev() {
            service = layer(service);
        }
        Layered { service }
    }

    /// Send a call through the stack.
    pub(crate) fn dispatch(
        &self,
        table: &Table,
        method: &[u8],
        params: &[u8],
        codec: Codec,
        parts: CallParts<'_>,
    ) -> Dispatch {
        let name = table.name_of(method);
        let token = tokio_util::sync::CancellationToken::new();
        let context = Context::new(name, parts, token.clone());
        let request = CallRequest {
            context,
            params: Bytes::copy_from_slice(params),
            codec,
        };
        let call = self.service.clone().oneshot(request);
        let mut fut: crate::method::ReplyFuture = Box::pin(async move {
            match call.await {
                Ok(reply) => reply,
                Err(e) => Reply::err(to_server_error(e)),
            }
        });
        // Answer on the spot when the stack does (a refused call, a function that is
        // ready at once).
        let mut cx = TaskContext::from_waker(std::task::Waker::noop());
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.as_mut().poll(&mut cx))) {
            Ok(Poll::Ready(reply)) => Dispatch::Ready(reply),
            Ok(Poll::Pending) => Dispatch::Pending(Box::pin(CancelOnDrop {
                fut,
                token: Some(token),
            })),
            Err(p) => Dispatch::Ready(crate::blocking::panicked(&table.name_of(method), &*p)),
        }
    }
}

/// A layer's error, as the caller's.
fn to_server_error(e: BoxError) -> ServerError {
    if let Some(e) = e.downcast_ref::<ServerError>() {
        return e.clone();
    }
    if e.is::<tower::timeout::error::Elapsed>() {
        return ServerError::new(ErrorCode::DeadlineExceeded, "the call's timeout passed");
    }
    ServerError::new(ErrorCode::Internal, e.to_string())
}
