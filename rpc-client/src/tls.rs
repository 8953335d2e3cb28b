//! TLS for both clients: what a TLS failure becomes ([`Error::Tls`] with its
//! [`TlsCause`]), and, with the `tls` feature, [`ClientTls`] (which CAs to trust, the server
//! name to check, a client certificate for mutual TLS) and the handshake over a TCP stream
//! (`tls/connect.rs`: tokio-rustls for the async client, rustls's blocking stream for the
//! blocking one).
//!
//! [`TlsCause`] and [`Error::Tls`] exist without the feature too, so that code matching
//! on a client's errors compiles whatever features the build has; such a build never
//! returns them.

use std::fmt;
use std::io;

use crate::Error;

#[cfg(feature = "tls")]
mod connect;

#[cfg(feature = "tls")]
pub use connect::ClientTls;
#[cfg(all(feature = "tls", any(feature = "async", feature = "blocking")))]
pub(crate) use connect::Connector;

/// Without the `tls` feature there is no way to make a connector: the `Option<Connector>`
/// each client keeps is always `None`, and the code that would use one stays as it is.
#[cfg(not(feature = "tls"))]
#[derive(Debug, Clone)]
pub(crate) enum Connector {}

#[cfg(not(feature = "tls"))]
impl Connector {
    #[cfg(feature = "async")]
    pub(crate) async fn connect(&self, _tcp: tokio::net::TcpStream) -> Result<tokio::net::TcpStream, Error> {
        match *self {}
    }

    #[cfg(feature = "blocking")]
    pub(crate) fn connect_blocking(
        &self,
        _tcp: std::net::TcpStream,
        _timeout: std::time::Duration,
    ) -> Result<std::net::TcpStream, Error> {
        match *self {}
    }
}

/// Why TLS failed: the cause [`Error::Tls`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsCause {
    /// The server's certificate is not issued by a CA the client trusts (unknown CA, or a
    /// self-signed certificate).
    UnknownIssuer,
    /// The server's certificate is not valid for the server name checked (the host of the
    /// address, or [`ClientTls::server_name`]).
    NameMismatch,
    /// The server's certificate has expired.
    Expired,
    /// The server's certificate is not valid yet.
    NotYetValid,
    /// The server's certificate is revoked.
    Revoked,
    /// The server's certificate is invalid otherwise: a bad signature, a bad encoding, not
    /// meant for a TLS server.
    BadCertificate,
    /// The server requires a client certificate (mutual TLS) and the client sent none.
    /// With TLS 1.3 the server decides after the client's half of the handshake is over,
    /// so this comes with the first call (or at connect when the client says hello).
    ClientCertificateRequired,
    /// The server refused the client's certificate (unknown CA, expired, revoked...). As
    /// with `ClientCertificateRequired`, it may come with the first call.
    ClientCertificateRefused,
    /// The handshake failed otherwise: the peer does not speak TLS (a plaintext server),
    /// no protocol version or cipher in common, or the connection closed during it.
    Handshake,
    /// The TLS settings could not be used: a PEM file that cannot be read or holds
    /// nothing usable, a key rustls refuses, an invalid server name.
    Config,
}

impl fmt::Display for TlsCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsCause::UnknownIssuer => {
                "the server's certificate is not issued by a trusted CA (unknown issuer)"
            }
            TlsCause::NameMismatch => {
                "the server's certificate is not valid for the server name (name mismatch)"
            }
            TlsCause::Expired => "the server's certificate has expired",
            TlsCause::NotYetValid => "the server's certificate is not valid yet",
            TlsCause::Revoked => "the server's certificate is revoked",
            TlsCause::BadCertificate => "the server's certificate is invalid",
            TlsCause::ClientCertificateRequired => {
                "the server requires a client certificate and none was sent"
            }
            TlsCause::ClientCertificateRefused => "the server refused the client certificate",
            TlsCause::Handshake => "the TLS handshake failed",
            TlsCause::Config => "the TLS settings could not be used",
        })
    }
}

impl TlsCause {
    /// Whether connecting again may help: not for a certificate or settings problem.
    pub(crate) fn is_transient(self) -> bool {
        self == TlsCause::Handshake
    }
}

/// An I/O error, unless it carries a TLS failure (rustls reports them as I/O errors of kind
/// `InvalidData` around its own error): then [`Error::Tls`] with its cause. Every `?` on
/// an I/O error of either client goes through here, so that a failure that surfaces after
/// the handshake (a client certificate refused under TLS 1.3) is named too.
impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        #[cfg(feature = "tls")]
        if let Some(tls) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return connect::tls_error(TlsCause::of(tls), tls.clone());
        }
        Error::Transport(e)
    }
}
