use std::io;
use std::sync::Arc;
use std::time::Duration;

use rpc_proto::{DecodeError, EncodeError, ErrorCode, ServerError};

use crate::tls::TlsCause;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Connecting, reading or writing failed. (`From<io::Error>` is in `tls.rs`: an I/O
    /// error carrying a TLS failure becomes [`Error::Tls`].)
    #[error("transport error: {0}")]
    Transport(#[source] io::Error),
    /// The server refused the connection (it is down, or nothing listens there), and the
    /// call was not sent: it did not run. See [`Config::wait_for_ready`](crate::Config::wait_for_ready).
    #[error("the server is unavailable: {0}")]
    Unavailable(#[source] io::Error),
    /// The connection closed while the call was in flight: the call may or may not have run.
    #[error("the connection closed before the reply arrived; the call may or may not have run")]
    ConnectionClosed,
    /// No reply within the call's timeout.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The server answered with an error.
    #[error("remote error: {0}")]
    Remote(ServerError),
    /// The arguments could not be encoded.
    #[error("could not encode the arguments: {0}")]
    Encode(#[from] EncodeError),
    /// The result could not be decoded into the expected type.
    #[error("could not decode the result: {0}")]
    Decode(#[from] DecodeError),
    /// The server sent something that is not valid MessagePack-RPC.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The call needs this framework's extensions (call metadata does), and the client
    /// was configured without them ([`Config::extensions`](crate::Config::extensions)).
    #[error(
        "{0} needs the extensions: set Config::extensions (the server must be built with this framework)"
    )]
    NeedsExtensions(&'static str),
    /// TLS failed: the handshake (an unknown CA, a name mismatch, an expired certificate,
    /// a client certificate required or refused...), or the TLS settings could not be
    /// used. `cause` says which; `source` is the underlying error (a `rustls::Error` for a
    /// handshake refused by either side).
    #[error("tls: {cause}")]
    Tls {
        /// What failed.
        cause: TlsCause,
        /// The underlying error.
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// The remote error's code, if the server answered with an error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Remote(e) => Some(e.kind()),
            _ => None,
        }
    }

    /// The remote error, if the server answered with one.
    pub fn remote(&self) -> Option<&ServerError> {
        match self {
            Error::Remote(e) => Some(e),
            _ => None,
        }
    }
}
