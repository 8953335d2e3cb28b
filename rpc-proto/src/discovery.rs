//! Service discovery's shared vocabulary: the key layout in etcd and what each key holds.
//!
//! A server registers one key per instance, `rpc/services/NAME/INSTANCE`, under a lease it
//! keeps alive; the value is an [`InstanceInfo`] as JSON. Clients watch the prefix
//! `rpc/services/NAME/`. No I/O here: the server's registration and the client's watch
//! (feature `etcd` of `easyrpc-server` and `easyrpc-client`) both read these.
//!
//! ```
//! use easyrpc_proto::discovery;
//!
//! assert_eq!(discovery::service_prefix("todo"), "rpc/services/todo/");
//! assert_eq!(discovery::instance_key("todo", "host-1:25000"), "rpc/services/todo/host-1:25000");
//! ```

use serde::{Deserialize, Serialize};

/// Where every service's keys live.
pub const SERVICES_PREFIX: &str = "rpc/services/";

/// The prefix of `service`'s instances: `rpc/services/NAME/`.
pub fn service_prefix(service: &str) -> String {
    format!("{SERVICES_PREFIX}{service}/")
}

/// The key of one instance of `service`: `rpc/services/NAME/INSTANCE`.
pub fn instance_key(service: &str, instance: &str) -> String {
    format!("{SERVICES_PREFIX}{service}/{instance}")
}

/// What an instance's key holds (as JSON): where to reach it and how much to send it.
///
/// Unknown fields are ignored and missing ones take their defaults, so servers and
/// clients of different versions read each other's keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct InstanceInfo {
    /// The address clients connect to (`host:port`).
    pub addr: String,
    /// Its share of the calls relative to the other instances (an instance of weight 2
    /// gets about twice the calls of one of weight 1). Default: 1.
    pub weight: u32,
    /// Worker processes serving it (1 without prefork).
    pub workers: u32,
    /// The codecs it speaks (`msgpack`, `bincode`).
    pub codecs: Vec<String>,
    /// The server's version (free text; the example server puts the crate's).
    pub version: String,
}

impl Default for InstanceInfo {
    fn default() -> InstanceInfo {
        InstanceInfo {
            addr: String::new(),
            weight: 1,
            workers: 1,
            codecs: vec!["msgpack".into(), "bincode".into()],
            version: String::new(),
        }
    }
}

impl InstanceInfo {
    /// An instance at `addr`, with the defaults for the rest.
    pub fn new(addr: impl Into<String>) -> InstanceInfo {
        InstanceInfo {
            addr: addr.into(),
            ..InstanceInfo::default()
        }
    }
}
