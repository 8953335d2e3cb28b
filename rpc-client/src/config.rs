use std::time::Duration;

use rpc_proto::{Codec, DEFAULT_MAX_MESSAGE_SIZE};

/// Client settings, shared by the async and the blocking client.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Timeout of each call unless overridden. Default: 15 s.
    pub timeout: Duration,
    /// Timeout of connecting (and of the hello, with bincode). Default: 5 s.
    pub connect_timeout: Duration,
    /// The codec. [`Codec::Bincode`] sends a hello that only our server understands; the
    /// default, [`Codec::Msgpack`], talks to any MessagePack-RPC server.
    pub codec: Codec,
    /// Largest reply accepted. Default: 64 MiB.
    pub max_message_size: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            codec: Codec::Msgpack,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        }
    }
}
