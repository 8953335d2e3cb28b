use std::io;
use std::sync::Arc;
use std::time::Duration;

use easyrpc_proto::{DecodeError, EncodeError, ErrorCode, ServerError};

use crate::tls::TlsCause;
use crate::ForeignError;

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
    /// A server of ours (one that answered our hello) answered with an error: its code is
    /// one of ours ([`Error::code`]).
    #[error("remote error: {0}")]
    Remote(Box<ServerError>),
    /// A server that did not answer our hello (a third-party one, or ours called without
    /// the hello) answered with an error: its code is that server's own, and is not read
    /// as one of ours. Boxed: it carries the whole error value, and every call's `Result`
    /// would otherwise be twice as large.
    #[error("{0}")]
    Foreign(Box<ForeignError>),
    /// The arguments could not be encoded.
    #[error("could not encode the arguments: {0}")]
    Encode(#[from] EncodeError),
    /// The result could not be decoded into the expected type.
    #[error("could not decode the result: {0}")]
    Decode(#[from] DecodeError),
    /// The result of a call did not decode as the type asked for: the method and the type
    /// are named. Boxed: rare, and every call's `Result` stays small.
    #[error(transparent)]
    Result(Box<ResultError>),
    /// The server sent something that is not valid MessagePack-RPC.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The call needs this framework's extensions (call metadata does), and the client
    /// was configured without them ([`Config::extensions`](crate::Config::extensions)).
    #[error(
        "{0} needs the extensions: set Config::extensions (the server must be built with this framework)"
    )]
    NeedsExtensions(&'static str),
    /// Service discovery failed: etcd could not be reached or read when the client
    /// started (`Client::discover`, feature `etcd`).
    #[error("service discovery: {0}")]
    Discovery(String),
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
    /// The error's code as one of ours, if a server of ours answered with an error
    /// ([`Error::Remote`]). `None` for a [foreign](Error::Foreign) error: its code is that
    /// server's own ([`Error::raw_code`]).
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Remote(e) => Some(e.kind()),
            _ => None,
        }
    }

    /// The code of an error reply as it came on the wire, from any server: ours
    /// ([`Error::Remote`]) or another ([`Error::Foreign`], when its error has a code).
    pub fn raw_code(&self) -> Option<i64> {
        match self {
            Error::Remote(e) => Some(e.code),
            Error::Foreign(e) => e.code,
            _ => None,
        }
    }

    /// The remote error, if a server of ours answered with one.
    pub fn remote(&self) -> Option<&ServerError> {
        match self {
            Error::Remote(e) => Some(e.as_ref()),
            _ => None,
        }
    }

    /// The error, if a server that did not answer our hello answered with one.
    pub fn foreign(&self) -> Option<&ForeignError> {
        match self {
            Error::Foreign(e) => Some(e.as_ref()),
            _ => None,
        }
    }
}

/// A failed connection attempt as an error: [`Error::Unavailable`] when the server refused
/// it (nothing listens there; for a Unix socket, also no socket file), a transport error
/// otherwise.
pub(crate) fn refused(e: io::Error) -> Error {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
    ) {
        Error::Unavailable(e)
    } else {
        Error::Transport(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every call's `Result` carries an `Error`: a foreign error's value is boxed so that
    /// it stays as small as before it existed (the per-call path moves it around).
    #[test]
    fn an_error_stays_small() {
        assert!(
            std::mem::size_of::<Error>() <= 40,
            "{}",
            std::mem::size_of::<Error>()
        );
    }
}

/// A call's error, with the method and the expected type named when its result did not
/// decode. Out of line: the error path only.
#[cold]
#[inline(never)]
pub(crate) fn name_result<R>(method: &str, e: Error) -> Error {
    match e {
        Error::Decode(source) => Error::Result(Box::new(ResultError {
            method: method.to_owned(),
            expected: std::any::type_name::<R>(),
            source,
        })),
        e => e,
    }
}

/// A result that did not decode as the type asked for ([`Error::Result`]).
#[derive(Debug, thiserror::Error)]
#[error("the result of {method} did not decode as {expected}: {source}")]
#[non_exhaustive]
pub struct ResultError {
    /// The method called.
    pub method: String,
    /// The type asked for.
    pub expected: &'static str,
    /// Why it did not decode.
    #[source]
    pub source: DecodeError,
}
