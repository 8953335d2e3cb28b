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

/// Notification `[msgid, item]`: one item of a call's stream (see [`crate::stream`]).
pub const ITEM: &str = "rpc.item";

/// Notification `[msgid, n]`: the peer may send `n` more items of a call's stream.
pub const CREDIT: &str = "rpc.credit";

/// Notification `[msgid]` or `[msgid, [code, message]]`: the client's argument stream
/// ended.
pub const END: &str = "rpc.end";

/// Request answering `{"index": i, "pid": p}`: the worker process serving this connection
/// (prefork); one process answers index 0.
pub const WORKER: &str = "rpc.worker";

/// Request answering `"serving"`, or `"draining"` once the server is shutting down (it is
/// answered while draining, where other requests are refused).
pub const HEALTH: &str = "rpc.health";

/// Request answering the server's methods: an array of maps `{"name", "args": [[name,
/// type], ..], "returns", "sync", "max_flow", "doc"}`, types as written in Rust (`"?"`
/// when unknown, for methods built from closures).
pub const METHODS: &str = "rpc.methods";

/// One method, as `rpc.methods` describes it (a msgpack map with these keys).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct MethodDescription {
    /// The name it is served under.
    pub name: String,
    /// The wire arguments: name and Rust type as written (`"?"` when unknown).
    pub args: Vec<(String, String)>,
    /// The Rust return type as written (`"?"` when unknown).
    pub returns: String,
    /// Runs on the blocking pool (a sync fn) rather than the runtime.
    pub sync: bool,
    /// At most this many calls run at once.
    pub max_flow: Option<usize>,
    /// Its doc comment's summary: the first paragraph, lines joined by spaces (empty
    /// without one).
    pub doc: String,
    /// How it streams: `""` (not at all), `"result"`, `"args"` or `"both"` (absent
    /// from the descriptions of servers older than streams). Always written: bincode is
    /// positional, so a field left out shifts every one after it (it broke decoding the
    /// answer of a server without streaming methods).
    #[serde(default)]
    pub streaming: String,
}

impl MethodDescription {
    /// A description with no arguments, returning `"?"`.
    pub fn new(name: impl Into<String>) -> MethodDescription {
        MethodDescription {
            name: name.into(),
            args: Vec::new(),
            returns: "?".into(),
            sync: false,
            max_flow: None,
            doc: String::new(),
            streaming: String::new(),
        }
    }

    /// The signature as one line: `add(a: i64, b: i64) -> i64`.
    pub fn signature(&self) -> String {
        let args: Vec<String> = self.args.iter().map(|(n, t)| format!("{n}: {t}")).collect();
        format!("{}({}) -> {}", self.name, args.join(", "), self.returns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reserved_name_has_the_prefix() {
        for name in [PING, CANCEL, ITEM, CREDIT, END, WORKER, HEALTH, METHODS] {
            assert!(name.starts_with(PREFIX), "{name}");
        }
    }
}
