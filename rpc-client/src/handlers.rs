//! Handlers for what a server sends of its own accord: requests (Neovim's `rpcrequest`)
//! and notifications (`rpcnotify`). The protocol ([`Replies::request`]) asks whether the
//! client serves a method; the clients run the handlers and answer through
//! [`ClientConnection::respond`](easyrpc_proto::ClientConnection::respond).
//!
//! [`Replies::request`]: easyrpc_proto::Replies::request

use std::collections::HashMap;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use easyrpc_proto::{Codec, EncodeError, EncodeValue, ErrorCode, ServerError};
use rmpv::Value;
use tracing::warn;

/// A handler for a request from the server.
pub(crate) type RequestFn = dyn Fn(Value) -> Result<Value, ServerError> + Send + Sync;
/// A handler for a notification from the server.
pub(crate) type NotificationFn = dyn Fn(Value) + Send + Sync;

/// The handlers registered with [`Config::on_request`](crate::Config::on_request) and
/// [`Config::on_notification`](crate::Config::on_notification), by method name.
#[derive(Clone, Default)]
pub(crate) struct Handlers {
    requests: HashMap<Box<[u8]>, Arc<RequestFn>>,
    notifications: HashMap<Box<[u8]>, Arc<NotificationFn>>,
}

impl fmt::Debug for Handlers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn names<V>(map: &HashMap<Box<[u8]>, V>) -> Vec<String> {
            let mut names: Vec<String> = map
                .keys()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect();
            names.sort_unstable();
            names
        }
        f.debug_struct("Handlers")
            .field("requests", &names(&self.requests))
            .field("notifications", &names(&self.notifications))
            .finish()
    }
}

impl Handlers {
    pub(crate) fn add_request(&mut self, method: String, handler: Arc<RequestFn>) {
        self.requests.insert(method.into_bytes().into(), handler);
    }

    pub(crate) fn add_notification(&mut self, method: String, handler: Arc<NotificationFn>) {
        self.notifications.insert(method.into_bytes().into(), handler);
    }

    /// The protocol's [`Replies::request`](easyrpc_proto::Replies::request): whether `method`
    /// is served; if so, the request is queued in `incoming` for the client to run.
    /// MessagePack only (a server that speaks bincode is ours, and ours sends no requests).
    pub(crate) fn request(
        &self,
        codec: Codec,
        msgid: u64,
        method: &[u8],
        params: &[u8],
        incoming: &mut Vec<Incoming>,
    ) -> bool {
        if codec != Codec::Msgpack {
            return false;
        }
        let Some(handler) = self.requests.get(method) else {
            return false;
        };
        incoming.push(Incoming::Request(Request {
            msgid,
            handler: handler.clone(),
            params: read_params(params),
        }));
        true
    }

    /// The protocol's [`Replies::notification`](easyrpc_proto::Replies::notification): queued
    /// in `incoming` if `method` has a handler, ignored otherwise.
    pub(crate) fn notification(
        &self,
        codec: Codec,
        method: &[u8],
        params: &[u8],
        incoming: &mut Vec<Incoming>,
    ) {
        if codec != Codec::Msgpack {
            return;
        }
        let Some(handler) = self.notifications.get(method) else {
            return;
        };
        match read_params(params) {
            Ok(params) => incoming.push(Incoming::Notification(handler.clone(), params)),
            Err(e) => warn!(error = %e.message, "a notification from the server with unreadable params"),
        }
    }
}

/// The params of a message from the server, read natively (a str keeps its type even when
/// not UTF-8). They lie in a frame the framer checked, so every length they declare is
/// within the bytes present.
fn read_params(mut raw: &[u8]) -> Result<Value, ServerError> {
    rmpv::decode::read_value(&mut raw)
        .map_err(|e| ServerError::new(ErrorCode::InvalidParams, format!("unreadable params: {e}")))
}

/// A request or notification from the server, with its handler, to be run.
pub(crate) enum Incoming {
    Request(Request),
    Notification(Arc<NotificationFn>, Value),
}

/// A request from the server, with its handler.
pub(crate) struct Request {
    pub(crate) msgid: u64,
    handler: Arc<RequestFn>,
    params: Result<Value, ServerError>,
}

impl Request {
    /// Run the handler: its answer (the result encoded), or an error if it panicked.
    pub(crate) fn run(self) -> Result<Encoded, ServerError> {
        let params = self.params?;
        let handler = &self.handler;
        let result = catch_unwind(AssertUnwindSafe(|| handler(params))).unwrap_or_else(|_| {
            warn!(
                msgid = self.msgid,
                "a handler of a request from the server panicked"
            );
            Err(ServerError::new(
                ErrorCode::HandlerPanicked,
                "the client's handler panicked",
            ))
        })?;
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, &result).map_err(|e| {
            ServerError::new(ErrorCode::Internal, format!("could not encode the result: {e}"))
        })?;
        Ok(Encoded(bytes))
    }
}

/// A handler's result, encoded natively in MessagePack (a str stays a str even when its
/// bytes are not UTF-8; serde would write it as bin). Also keeps the answer's encoding
/// apart from the code that encodes a call's `rmpv::Value` params: sharing it changed how
/// the compiler inlined the per-call path.
pub(crate) struct Encoded(Vec<u8>);

impl EncodeValue for Encoded {
    fn encode_value(&self, codec: Codec, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        // Handlers serve MessagePack connections only (`Handlers::request`).
        debug_assert_eq!(codec, Codec::Msgpack);
        out.extend_from_slice(&self.0);
        Ok(())
    }
}

/// Run a notification's handler; a panic is logged, not propagated (it would end the
/// connection task, or the call that read the notification).
pub(crate) fn notify(handler: &NotificationFn, params: Value) {
    if catch_unwind(AssertUnwindSafe(|| handler(params))).is_err() {
        warn!("a handler of a notification from the server panicked");
    }
}
