//! Method names the framework reserves for itself, shared by the server and the clients.
//!
//! Every name here starts with [`PREFIX`]; a server refuses to register a function under
//! one of them.

/// Method names starting with this prefix are reserved for the framework itself.
pub const PREFIX: &str = "rpc.";

/// Request answering `nil`: our clients' heartbeat.
pub const PING: &str = "rpc.ping";

/// Notification `[msgid]`: the client gave up on that call (only on connections that sent
/// the hello).
pub const CANCEL: &str = "rpc.cancel";

/// Request answering `{"index": i, "pid": p}`: the worker process serving this connection
/// (prefork); one process answers index 0.
pub const WORKER: &str = "rpc.worker";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reserved_name_has_the_prefix() {
        for name in [PING, CANCEL, WORKER] {
            assert!(name.starts_with(PREFIX), "{name}");
        }
    }
}
