use std::sync::Arc;
use std::time::Duration;

use easyrpc_proto::{Codec, Compression, ServerError, DEFAULT_MAX_MESSAGE_SIZE};

use crate::handlers::Handlers;

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
    ///
    /// See [`Config::our_server`] for how error codes are read without the hello.
    pub extensions: bool,
    /// Whether a server that was not sent the hello (`extensions` off, MessagePack) is read
    /// as one of ours. A plain client cannot tell our server from any other.
    ///
    /// - `true`, the default (what a client of this framework's servers expects): an error
    ///   reply is [`Error::Remote`](crate::Error::Remote) with [`ErrorCode`](crate::ErrorCode)
    ///   names, typed errors decode, and a call refused as `shutting down` is sent again.
    /// - `false`, for a third-party server such as Neovim: its error replies are reported
    ///   with its own codes ([`Error::Foreign`](crate::Error::Foreign)): Neovim's validation
    ///   error `[1, "Invalid buffer id"]` prints as `server error 1: Invalid buffer id`, not
    ///   as our method-not-found, and its code 9 is not a refusal to resend.
    ///
    /// With the hello it has no effect: a server that answered it is ours.
    pub our_server: bool,
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
    /// zstd compression of large messages (turns `extensions` on: only for servers built
    /// with this framework). The client offers it in its hello; a server that accepts
    /// (ours do by default) may then compress its large replies, and the client compresses
    /// its requests larger than [`Compression::threshold`] (when that makes them smaller).
    /// Each side compresses only what it sends, by its own threshold; with a server that
    /// declines, nothing is compressed. Set it with [`Config::compression`]. Default: `None`
    /// (off), as in tonic, where compression is opt-in per client.
    ///
    /// Compression pays on links slower than zstd itself (level 3: a few hundred MB/s per
    /// core; benches/RESULTS.md measured about 1 Gbit/s as the break-even for 1 MiB of
    /// text); on loopback or a fast LAN it costs more time than it saves.
    pub compression: Option<Compression>,
    /// What the client serves when the server calls it: set with [`Config::on_request`]
    /// and [`Config::on_notification`].
    pub(crate) handlers: Handlers,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            codec: Codec::Msgpack,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            extensions: false,
            our_server: true,
            unstable_network: false,
            heartbeat_interval: Some(Duration::from_secs(20)),
            reconnect_backoff: Duration::from_millis(10),
            reconnect_backoff_max: Duration::from_secs(1),
            wait_for_ready: false,
            compression: None,
            handlers: Handlers::default(),
        }
    }
}

impl Config {
    /// Answer the server's requests for `method` with `handler` (replacing any handler
    /// given for it before). A MessagePack-RPC server may call its client: Neovim does,
    /// through `rpcrequest`, and waits (blocking every client) until it is answered. The
    /// handler gets the request's params (an array, read as a dynamic value) and its
    /// `Ok(result)` or `Err(error)` goes back as `[1, msgid, nil, result]` or
    /// `[1, msgid, [code, message], nil]` (for Neovim, code 0 is an exception and 1 a
    /// validation error). A request for a method with no handler is answered at once with
    /// method-not-found; a handler that panics is answered as error 4, handler panicked.
    ///
    /// When it runs: the async [`Client`](crate::Client) runs it on tokio's blocking pool
    /// as soon as the request is read, so it may take its time and may even call the server
    /// back (`tokio::runtime::Handle::current().block_on(client.call(..))`) without
    /// holding up the connection; several run at once, and the client keeps at most 1 024
    /// waiting for an answer (beyond that, the server is answered `overloaded`). The
    /// [`BlockingClient`](crate::BlockingClient) has no thread of its own: it runs the
    /// handler when it reads, that is only while one of its calls waits for a reply, on
    /// the calling thread. Its handlers must not call the same `BlockingClient` (that call
    /// would wait for the one in progress). Server requests are served with MessagePack
    /// only (a bincode server is ours, and ours sends none).
    ///
    /// ```no_run
    /// # fn demo() -> Result<(), easyrpc_client::Error> {
    /// use easyrpc_client::{BlockingClient, Config, ServerError};
    ///
    /// let mut config = Config::default();
    /// config.on_request("plus_one", |params| match params[0].as_i64() {
    ///     Some(n) => Ok((n + 1).into()),
    ///     None => Err(ServerError::with_code(1, "plus_one takes a number")),
    /// });
    /// config.our_server = false; // Neovim's error codes are its own
    /// let nvim = BlockingClient::connect_with("127.0.0.1:6666", config)?;
    /// // Neovim may now `rpcrequest(chan, "plus_one", 41)` while a call of ours waits.
    /// let v = nvim.call_value("nvim_eval", vec!["1 + 1".into()])?;
    /// # Ok(()) }
    /// ```
    pub fn on_request<F>(&mut self, method: impl Into<String>, handler: F) -> &mut Config
    where
        F: Fn(rmpv::Value) -> Result<rmpv::Value, ServerError> + Send + Sync + 'static,
    {
        self.handlers.add_request(method.into(), Arc::new(handler));
        self
    }

    /// Hand the server's notifications of `method` to `handler` (replacing any handler
    /// given for it before); notifications with no handler are ignored. Neovim sends its
    /// events (`nvim_buf_lines_event`, ...) and `rpcnotify` this way.
    ///
    /// When it runs: the async [`Client`](crate::Client) runs it on its connection task,
    /// in the order the notifications arrived, so it must be quick and must not block (hand
    /// longer work to a channel or a task of your own): while it runs, no reply reaches
    /// its caller. The [`BlockingClient`](crate::BlockingClient) runs it, in order, when it
    /// reads, that is only while one of its calls waits for a reply.
    pub fn on_notification<F>(&mut self, method: impl Into<String>, handler: F) -> &mut Config
    where
        F: Fn(rmpv::Value) + Send + Sync + 'static,
    {
        self.handlers.add_notification(method.into(), Arc::new(handler));
        self
    }

    /// Turn on zstd compression of messages larger than `threshold` bytes, at zstd's
    /// default level (see [`Config::compression`](#structfield.compression); set the field
    /// for another level).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), easyrpc_client::Error> {
    /// use easyrpc_client::{Client, Config};
    ///
    /// let mut config = Config::default();
    /// config.compression(4096);
    /// let client = Client::connect_with("127.0.0.1:25000", config).await?;
    /// # Ok(()) }
    /// ```
    pub fn compression(&mut self, threshold: usize) -> &mut Config {
        self.compression = Some(Compression::new(threshold));
        self
    }

    /// Whether the client sends a hello (and may use the extensions).
    pub(crate) fn uses_hello(&self) -> bool {
        self.extensions || self.unstable_network || self.compression.is_some() || self.codec != Codec::Msgpack
    }

    /// The protocol's settings for a client with `session`.
    pub(crate) fn proto(&self, session: Option<u128>) -> easyrpc_proto::ClientConfig {
        let mut c = easyrpc_proto::ClientConfig::new(self.codec);
        c.max_message_size = self.max_message_size;
        c.hello = self.uses_hello();
        c.our_server = self.our_server;
        c.session = session;
        c.heartbeat_interval = self.heartbeat_interval;
        if let Some(compression) = self.compression {
            c.features |= easyrpc_proto::handshake::features::ZSTD;
            c.compression = compression;
        }
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
