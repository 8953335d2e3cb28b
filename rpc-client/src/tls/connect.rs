//! rustls for both clients (the `tls` feature): [`ClientTls`], the handshake over a TCP
//! stream (tokio-rustls for the async client, rustls's blocking stream for the blocking
//! one), and what a rustls error becomes.
//!
//! rustls runs on the `ring` provider, chosen here rather than through a process-wide
//! default, so that nothing depends on which provider another crate installed.

use std::fmt;
use std::io;
#[cfg(feature = "blocking")]
use std::io::{Read, Write};
#[cfg(feature = "blocking")]
use std::net::TcpStream;
use std::path::Path;
#[cfg(feature = "async")]
use std::pin::Pin;
use std::sync::Arc;
#[cfg(feature = "async")]
use std::task::{Context, Poll};
#[cfg(feature = "blocking")]
use std::time::Duration;

use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
#[cfg(feature = "async")]
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::TlsCause;
use crate::Error;

impl TlsCause {
    /// The cause of a rustls error.
    pub(super) fn of(e: &rustls::Error) -> TlsCause {
        use rustls::Error as E;
        match e {
            E::InvalidCertificate(c) => match c {
                CertificateError::UnknownIssuer => TlsCause::UnknownIssuer,
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                    TlsCause::NameMismatch
                }
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => TlsCause::Expired,
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    TlsCause::NotYetValid
                }
                CertificateError::Revoked => TlsCause::Revoked,
                _ => TlsCause::BadCertificate,
            },
            E::AlertReceived(AlertDescription::CertificateRequired) => TlsCause::ClientCertificateRequired,
            E::AlertReceived(
                AlertDescription::BadCertificate
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::CertificateRevoked
                | AlertDescription::CertificateExpired
                | AlertDescription::CertificateUnknown
                | AlertDescription::UnknownCA
                | AlertDescription::AccessDenied,
            ) => TlsCause::ClientCertificateRefused,
            _ => TlsCause::Handshake,
        }
    }
}

/// An [`Error::Tls`] of cause `cause`.
pub(super) fn tls_error(cause: TlsCause, source: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Tls {
        cause,
        source: Arc::new(source),
    }
}

fn config_error(what: impl fmt::Display) -> Error {
    tls_error(TlsCause::Config, io::Error::other(what.to_string()))
}

/// An error of the handshake itself: any I/O failure during it is a failed handshake.
fn handshake_error(e: io::Error) -> Error {
    match Error::from(e) {
        Error::Transport(e) => tls_error(TlsCause::Handshake, e),
        e => e,
    }
}

/// rustls's `ring` provider. Deprecated since rustls 0.23.48 because ring has no
/// post-quantum key exchange; aws-lc-rs has one, but its C build takes minutes on our
/// machines.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// How a client connects with TLS: the CAs it trusts, the name the server's certificate
/// must be valid for, and optionally a client certificate (mutual TLS).
///
/// The server name is the host of the address given to `connect_tls` (a DNS name or an IP
/// address) unless [`ClientTls::server_name`] sets it.
///
/// ```no_run
/// use easyrpc_client::{Client, ClientTls};
///
/// # async fn demo() -> Result<(), easyrpc_client::Error> {
/// let tls = ClientTls::from_ca_file("ca.crt")?
///     .server_name("rpc.example.com")
///     // Mutual TLS: present this certificate.
///     .client_cert("client.crt", "client.key")?;
/// let client = Client::connect_tls("10.0.0.5:25000", tls).await?;
/// let sum: i64 = client.call("add", (1, 2)).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClientTls {
    roots: Arc<RootCertStore>,
    server_name: Option<String>,
    client_cert: Option<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>)>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("roots", &self.roots.len())
            .field("server_name", &self.server_name)
            .field("client_cert", &self.client_cert.is_some())
            .finish()
    }
}

impl ClientTls {
    /// Trust the CA certificates of the PEM file `ca` (one or more).
    ///
    /// ```no_run
    /// let tls = easyrpc_client::ClientTls::from_ca_file("ca.crt")?;
    /// # Ok::<(), easyrpc_client::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Tls`] ([`TlsCause::Config`]) when the file cannot be read or holds no
    /// usable certificate.
    pub fn from_ca_file(ca: impl AsRef<Path>) -> Result<ClientTls, Error> {
        ClientTls::from_ca_pem(&read(ca.as_ref())?)
    }

    /// Trust the CA certificates of PEM text.
    ///
    /// ```no_run
    /// let pem = std::fs::read("ca.crt")?;
    /// let tls = easyrpc_client::ClientTls::from_ca_pem(&pem)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`ClientTls::from_ca_file`].
    pub fn from_ca_pem(ca: &[u8]) -> Result<ClientTls, Error> {
        let mut roots = RootCertStore::empty();
        for cert in certificates(ca, "CA")? {
            roots.add(cert).map_err(|e| config_error(format!("CA: {e}")))?;
        }
        Ok(ClientTls::with_roots(roots))
    }

    /// Trust the web's CAs (Mozilla's root store, built in): for a server with a
    /// certificate from a public CA.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), easyrpc_client::Error> {
    /// let tls = easyrpc_client::ClientTls::webpki_roots();
    /// let client = easyrpc_client::Client::connect_tls("rpc.example.com:443", tls).await?;
    /// # Ok(()) }
    /// ```
    pub fn webpki_roots() -> ClientTls {
        ClientTls::with_roots(RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        })
    }

    fn with_roots(roots: RootCertStore) -> ClientTls {
        ClientTls {
            roots: Arc::new(roots),
            server_name: None,
            client_cert: None,
        }
    }

    /// Check the server's certificate against `name` (a DNS name or an IP address)
    /// instead of the host of the address connected to: for a server reached by an
    /// address its certificate does not name.
    ///
    /// ```no_run
    /// let tls = easyrpc_client::ClientTls::from_ca_file("ca.crt")?.server_name("localhost");
    /// # Ok::<(), easyrpc_client::Error>(())
    /// ```
    #[must_use]
    pub fn server_name(mut self, name: impl Into<String>) -> ClientTls {
        self.server_name = Some(name.into());
        self
    }

    /// Mutual TLS: present the certificate chain of the PEM file `cert` (the client's
    /// certificate first) and prove it with the private key of the PEM file `key`.
    ///
    /// ```no_run
    /// let tls = easyrpc_client::ClientTls::from_ca_file("ca.crt")?
    ///     .client_cert("client.crt", "client.key")?;
    /// # Ok::<(), easyrpc_client::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Tls`] ([`TlsCause::Config`]) when a file cannot be read or holds no
    /// certificate or no key.
    pub fn client_cert(self, cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<ClientTls, Error> {
        let (cert, key) = (read(cert.as_ref())?, read(key.as_ref())?);
        self.client_cert_pem(&cert, &key)
    }

    /// As [`ClientTls::client_cert`], from PEM text in memory.
    ///
    /// ```no_run
    /// # let ca = Vec::<u8>::new();
    /// let (cert, key) = (std::fs::read("client.crt")?, std::fs::read("client.key")?);
    /// let tls = easyrpc_client::ClientTls::from_ca_pem(&ca)?.client_cert_pem(&cert, &key)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`ClientTls::client_cert`].
    pub fn client_cert_pem(mut self, cert: &[u8], key: &[u8]) -> Result<ClientTls, Error> {
        let chain = certificates(cert, "client certificate")?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| config_error(format!("client key: {e}")))?;
        self.client_cert = Some((chain, Arc::new(key)));
        Ok(self)
    }

    /// What a client keeps to connect (and reconnect) to `addr`: the rustls settings and
    /// the server name.
    pub(crate) fn connector(&self, addr: &str) -> Result<Connector, Error> {
        let name = match &self.server_name {
            Some(name) => name.as_str(),
            None => host(addr),
        };
        let name = ServerName::try_from(name.to_owned())
            .map_err(|e| config_error(format!("invalid server name {name:?}: {e}")))?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error(TlsCause::Config, e))?
            .with_root_certificates(self.roots.clone());
        let config = match &self.client_cert {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(|e| tls_error(TlsCause::Config, e))?,
            None => builder.with_no_client_auth(),
        };
        Ok(Connector {
            config: Arc::new(config),
            name,
        })
    }
}

/// The host of `host:port`, `[v6]:port` or a bare host.
fn host(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        // Two colons or more: a bare IPv6 address.
        Some((host, _)) if !host.contains(':') => host,
        _ => addr,
    }
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| config_error(format!("cannot read {}: {e}", path.display())))
}

fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| config_error(format!("{what}: {e}")))?;
    if certs.is_empty() {
        return Err(config_error(format!("{what}: no certificate in the PEM text")));
    }
    Ok(certs)
}

/// The rustls settings and server name of one client: every connection it makes (the
/// first and each reconnect) does a full handshake with them.
#[derive(Clone)]
pub(crate) struct Connector {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// The async client's handshake on `tcp`.
    #[cfg(feature = "async")]
    pub(crate) async fn connect(&self, tcp: tokio::net::TcpStream) -> Result<AsyncTls, Error> {
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        let stream = connector
            .connect(self.name.clone(), tcp)
            .await
            .map_err(handshake_error)?;
        Ok(AsyncTls(stream))
    }

    /// The blocking client's handshake on `tcp`, within `timeout`.
    #[cfg(feature = "blocking")]
    pub(crate) fn connect_blocking(
        &self,
        mut tcp: TcpStream,
        timeout: Duration,
    ) -> Result<BlockingTls, Error> {
        let mut conn = rustls::ClientConnection::new(self.config.clone(), self.name.clone())
            .map_err(|e| tls_error(TlsCause::Config, e))?;
        tcp.set_read_timeout(Some(timeout))?;
        tcp.set_write_timeout(Some(timeout))?;
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp).map_err(|e| match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout(timeout),
                _ => handshake_error(e),
            })?;
        }
        Ok(BlockingTls(rustls::StreamOwned::new(conn, tcp)))
    }
}

/// The async client's TLS stream. A server that closes without TLS's `close_notify` is
/// read as a plain end of stream, as over TCP: MessagePack-RPC messages delimit
/// themselves, so a cut message is still seen as one (rustls would report
/// `UnexpectedEof`).
#[cfg(feature = "async")]
pub(crate) struct AsyncTls(tokio_rustls::client::TlsStream<tokio::net::TcpStream>);

#[cfg(feature = "async")]
impl AsyncRead for AsyncTls {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.0).poll_read(cx, buf) {
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Poll::Ready(Ok(())),
            other => other,
        }
    }
}

#[cfg(feature = "async")]
impl AsyncWrite for AsyncTls {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The blocking client's TLS stream: rustls's own blocking stream over a std socket.
#[cfg(feature = "blocking")]
pub(crate) struct BlockingTls(rustls::StreamOwned<rustls::ClientConnection, TcpStream>);

#[cfg(feature = "blocking")]
impl Read for BlockingTls {
    /// As [`AsyncTls`]: a close without `close_notify` is an end of stream.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.0.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
            other => other,
        }
    }
}

#[cfg(feature = "blocking")]
impl Write for BlockingTls {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(feature = "blocking")]
impl crate::blocking::Stream for BlockingTls {
    fn set_timeouts(&self, t: Duration) -> io::Result<()> {
        crate::blocking::Stream::set_timeouts(&self.0.sock, t)
    }

    /// The TCP socket may hold TLS records that are no data (session tickets, a
    /// `close_notify`), so a peek at it cannot tell: read what has arrived into rustls,
    /// without blocking. Data for the next call stays buffered in rustls.
    fn is_closed(&mut self) -> bool {
        let rustls::StreamOwned { conn, sock } = &mut self.0;
        if sock.set_nonblocking(true).is_err() {
            return true;
        }
        let closed = loop {
            match conn.read_tls(sock) {
                Ok(0) => break true,
                Ok(_) => match conn.process_new_packets() {
                    Ok(state) if state.peer_has_closed() => break true,
                    Ok(state) if state.plaintext_bytes_to_read() > 0 => break false,
                    Ok(_) => {}
                    Err(_) => break true,
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                Err(_) => break true,
            }
        };
        closed || sock.set_nonblocking(false).is_err()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_name_is_the_host_of_the_address() {
        assert_eq!(host("localhost:25000"), "localhost");
        assert_eq!(host("127.0.0.1:25000"), "127.0.0.1");
        assert_eq!(host("[::1]:25000"), "::1");
        assert_eq!(host("::1"), "::1");
        assert_eq!(host("rpc.example.com"), "rpc.example.com");
    }

    #[test]
    fn certificate_errors_name_their_cause() {
        let cert = |e| rustls::Error::InvalidCertificate(e);
        assert_eq!(
            TlsCause::of(&cert(CertificateError::UnknownIssuer)),
            TlsCause::UnknownIssuer
        );
        assert_eq!(
            TlsCause::of(&cert(CertificateError::NotValidForName)),
            TlsCause::NameMismatch
        );
        assert_eq!(TlsCause::of(&cert(CertificateError::Expired)), TlsCause::Expired);
        assert_eq!(
            TlsCause::of(&cert(CertificateError::BadSignature)),
            TlsCause::BadCertificate
        );
        assert_eq!(
            TlsCause::of(&rustls::Error::AlertReceived(
                AlertDescription::CertificateRequired
            )),
            TlsCause::ClientCertificateRequired
        );
        assert_eq!(
            TlsCause::of(&rustls::Error::AlertReceived(AlertDescription::HandshakeFailure)),
            TlsCause::Handshake
        );
        // Through an I/O error, as rustls reports them.
        let io = io::Error::new(io::ErrorKind::InvalidData, cert(CertificateError::Expired));
        assert!(matches!(
            Error::from(io),
            Error::Tls {
                cause: TlsCause::Expired,
                ..
            }
        ));
        let io = io::Error::from(io::ErrorKind::ConnectionReset);
        assert!(matches!(Error::from(io), Error::Transport(_)));
    }
}
