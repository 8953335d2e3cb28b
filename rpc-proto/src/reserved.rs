//! Method names reserved for the framework, shared by the server and the clients.

/// Method names starting with this prefix are reserved for the framework itself.
pub const RESERVED_PREFIX: &str = "rpc.";
/// Reserved method answering `nil`: our clients' heartbeat.
pub const PING: &str = "rpc.ping";
/// Reserved notification `[msgid]`: the client gave up on that call (after a hello only).
pub const CANCEL: &str = "rpc.cancel";
/// Reserved method answering `{"index": i, "pid": p}`: the worker process serving the
/// connection.
pub const WORKER: &str = "rpc.worker";
