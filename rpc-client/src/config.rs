use std::time::Duration;

use rpc_proto::{Codec, DEFAULT_MAX_MESSAGE_SIZE};

/// Client settings, shared by the async and the blocking client.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Timeout of each call unless overridden, retries included. Default: 15 s.
    ///
    /// The async client starts counting when the connection task takes the call to write
    /// it (within microseconds of the call, without a clock read per call), or when the
    /// call starts waiting for a connection.
    pub timeout: Duration,
    /// Timeout of one connection attempt (and of the hello). Default: 5 s.
    pub connect_timeout: Duration,
    /// The codec. [`Codec::Bincode`] needs a server of ours (it turns `extensions` on);
    /// the default, [`Codec::Msgpack`], talks to any MessagePack-RPC server.
    pub codec: Codec,
    /// Largest reply accepted. Default: 64 MiB.
    pub max_message_size: usize,
    /// Use this framework's extensions: the client sends a hello first, each call's timeout
    /// travels to the server (which answers `DeadlineExceeded` and cancels the handler when
    /// it passes), and a call given up on is cancelled on the server. Only for servers built
    /// with this framework: a plain MessagePack-RPC server does not understand the hello.
    /// Default: off.
    pub extensions: bool,
    /// "Unstable network" mode (turns `extensions` on): the client opens a session with a
    /// random 128-bit id; a call whose connection drops is resent after reconnecting, and
    /// a server in unstable-network mode runs each call once and answers retries from its
    /// cache. Default: off.
    pub unstable_network: bool,
    /// When the async client has sent nothing for this long, it sends an `rpc.ping`
    /// notification so the server does not close the connection as idle. `None` turns it
    /// off. The blocking client has no background thread: it reconnects instead when it
    /// finds its idle connection closed. Default: 20 s (a third of the server's default
    /// heartbeat timeout).
    pub heartbeat_interval: Option<Duration>,
    /// First wait before reconnecting after a failed attempt; doubled each time up to
    /// `reconnect_backoff_max`, and always within the call's timeout. Default: 10 ms.
    pub reconnect_backoff: Duration,
    /// Longest wait between reconnection attempts. Default: 1 s.
    pub reconnect_backoff_max: Duration,
    /// What a call does when there is no connection and the server refuses a new one: with
    /// `false`, the default, it fails at once with [`Error::Unavailable`](crate::Error::Unavailable)
    /// (gRPC's default: fail fast); with `true` it keeps trying with backoff until the
    /// server is there or the call's timeout passes (gRPC's `wait_for_ready`). A call
    /// already sent that may be resent after the connection dropped always keeps trying
    /// with backoff within its timeout (the server may be restarting).
    pub wait_for_ready: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            codec: Codec::Msgpack,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            extensions: false,
            unstable_network: false,
            heartbeat_interval: Some(Duration::from_secs(20)),
            reconnect_backoff: Duration::from_millis(10),
            reconnect_backoff_max: Duration::from_secs(1),
            wait_for_ready: false,
        }
    }
}

impl Config {
    /// Whether the client sends a hello (and may use the extensions).
    pub(crate) fn uses_hello(&self) -> bool {
        self.extensions || self.unstable_network || self.codec != Codec::Msgpack
    }

    /// The protocol's settings for a client with `session`.
    pub(crate) fn proto(&self, session: Option<u128>) -> rpc_proto::ClientConfig {
        let mut c = rpc_proto::ClientConfig::new(self.codec);
        c.max_message_size = self.max_message_size;
        c.hello = self.uses_hello();
        c.session = session;
        c.heartbeat_interval = self.heartbeat_interval;
        c
    }
}

/// A fresh session id: 128 bits from the operating system's randomness.
///
/// A session id is a secret bearer of its cached answers: a server in unstable-network
/// mode hands whoever presents it the stored replies of that session. So it must not be
/// guessable (it used to be built from the standard library's hasher, the time and the
/// process id).
pub(crate) fn new_session() -> Result<u128, crate::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| {
        crate::Error::Transport(std::io::Error::other(format!(
            "no randomness from the operating system for the session id: {e}"
        )))
    })?;
    Ok(u128::from_le_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_distinct_and_use_all_their_bits() {
        let ids: Vec<u128> = (0..256).map(|_| new_session().unwrap()).collect();
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len(), "a session id came twice");
        // Every bit position is set in some ids and clear in others.
        let (any, all) = ids
            .iter()
            .fold((0u128, u128::MAX), |(any, all), id| (any | id, all & id));
        assert_eq!((any, all), (u128::MAX, 0));
    }
}
