//! TLS on the server: [`TlsConfig`] (the certificate chain and key, and for mutual TLS the
//! CA whose client certificates are accepted), the handshake each connection's task runs
//! before serving, and [`TlsIdentity`], who a client's certificate says it is.
//!
//! The accept loop never waits for a handshake: it hands the TCP stream to the
//! connection's task (with its connection permit, so a handshake in progress counts
//! against [`Config::max_connections`](crate::Config::max_connections)), and that task runs
//! the handshake within [`TlsConfig::handshake_timeout`]. A failed handshake (a plaintext
//! client, an unknown client certificate, a timeout) is logged with its cause and closes
//! that connection only. After it, the connection code is the plain one: it is generic
//! over the stream.
//!
//! rustls runs on the `ring` provider, chosen here rather than through a process-wide
//! default, so that nothing depends on which provider another crate installed.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// The default of [`TlsConfig::handshake_timeout`].
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS setting could not be loaded: a PEM file that cannot be read or holds nothing
/// usable, or certificates and key that rustls refuses.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// PEM text that is malformed, or holds no item of the kind needed.
    #[error("{what}: {reason}")]
    Pem {
        /// What was being read: "certificate chain", "private key", "client CA".
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the settings (for example: the key does not belong to the
    /// certificate, or a CA certificate cannot be parsed).
    #[error("rustls refused the settings: {0}")]
    Rustls(String),
}

/// The server's TLS settings: its certificate chain and private key, and optionally the CA
/// whose certificates clients must present (mutual TLS).
///
/// Give it to [`Builder::tls`](crate::Builder::tls) (then [`Builder::serve`](crate::Builder::serve),
/// [`Builder::run`](crate::Builder::run) in one process or prefork, and
/// [`Server::run`](crate::Server::run) all serve TLS), or to
/// [`Server::run_tls`](crate::Server::run_tls) with a listener of your own. Cheap to clone:
/// the loaded settings are shared (and, under prefork, copied into each worker by the
/// fork; each worker makes its own acceptor from them).
///
/// ```no_run
/// use easyrpc_server::{Server, TlsConfig};
///
/// # async fn demo() -> Result<(), easyrpc_server::Error> {
/// let tls = TlsConfig::from_pem_files("server.crt", "server.key")?
///     // Mutual TLS: only clients with a certificate from this CA get in.
///     .client_ca("clients-ca.crt")?;
/// Server::builder()
///     .sync_fn("add", |(a, b): (i64, i64)| a + b)
///     .tls(tls)
///     .serve("0.0.0.0:25000", async { tokio::signal::ctrl_c().await.ok(); })
///     .await
/// # }
/// ```
#[derive(Clone)]
pub struct TlsConfig {
    /// What the acceptors are made from.
    server: Arc<ServerConfig>,
    /// Kept to build `server` again with a client verifier ([`TlsConfig::client_ca`]).
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    /// The CA client certificates must come from, if any.
    client_ca: Option<Arc<RootCertStore>>,
    handshake_timeout: Duration,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("chain", &self.chain.len())
            .field("client_ca", &self.client_ca.as_ref().map(|r| r.len()))
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// The certificate chain (the server's certificate first, then intermediates) and the
    /// private key (PKCS#8, PKCS#1 or SEC1), from PEM files.
    ///
    /// ```no_run
    /// let tls = easyrpc_server::TlsConfig::from_pem_files("server.crt", "server.key")?;
    /// # Ok::<(), easyrpc_server::TlsConfigError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// When a file cannot be read, holds no certificate or no key, or rustls refuses them
    /// (the key does not match the certificate, say).
    pub fn from_pem_files(
        cert_chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<TlsConfig, TlsConfigError> {
        TlsConfig::from_pem(&read(cert_chain.as_ref())?, &read(key.as_ref())?)
    }

    /// As [`TlsConfig::from_pem_files`], from PEM text in memory.
    ///
    /// ```no_run
    /// let cert = std::fs::read("server.crt")?;
    /// let key = std::fs::read("server.key")?;
    /// let tls = easyrpc_server::TlsConfig::from_pem(&cert, &key)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`TlsConfig::from_pem_files`].
    pub fn from_pem(cert_chain: &[u8], key: &[u8]) -> Result<TlsConfig, TlsConfigError> {
        let chain = certificates(cert_chain, "certificate chain")?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| TlsConfigError::Pem {
            what: "private key",
            reason: e.to_string(),
        })?;
        let key = Arc::new(key);
        let server = server_config(&chain, &key, None)?;
        Ok(TlsConfig {
            server,
            chain,
            key,
            client_ca: None,
            handshake_timeout: HANDSHAKE_TIMEOUT,
        })
    }

    /// Mutual TLS: require every client to present a certificate issued by a CA of the PEM
    /// file `ca` (one or more certificates). A client without one, or with another, fails
    /// the handshake. Its certificate's subject and names are then the connection's
    /// [`TlsIdentity`].
    ///
    /// ```no_run
    /// let tls = easyrpc_server::TlsConfig::from_pem_files("server.crt", "server.key")?
    ///     .client_ca("clients-ca.crt")?;
    /// # Ok::<(), easyrpc_server::TlsConfigError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// When the file cannot be read, holds no certificate, or a certificate is not a CA
    /// rustls accepts.
    pub fn client_ca(self, ca: impl AsRef<Path>) -> Result<TlsConfig, TlsConfigError> {
        let pem = read(ca.as_ref())?;
        self.client_ca_pem(&pem)
    }

    /// As [`TlsConfig::client_ca`], from PEM text in memory.
    ///
    /// ```no_run
    /// # let (cert, key) = (Vec::<u8>::new(), Vec::<u8>::new());
    /// let ca = std::fs::read("clients-ca.crt")?;
    /// let tls = easyrpc_server::TlsConfig::from_pem(&cert, &key)?.client_ca_pem(&ca)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`TlsConfig::client_ca`].
    pub fn client_ca_pem(mut self, ca: &[u8]) -> Result<TlsConfig, TlsConfigError> {
        let mut roots = RootCertStore::empty();
        for cert in certificates(ca, "client CA")? {
            roots
                .add(cert)
                .map_err(|e| TlsConfigError::Rustls(format!("client CA: {e}")))?;
        }
        let roots = Arc::new(roots);
        self.server = server_config(&self.chain, &self.key, Some(roots.clone()))?;
        self.client_ca = Some(roots);
        Ok(self)
    }

    /// How long a new connection has to complete its handshake before it is closed.
    /// Default: 10 s.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// let tls = easyrpc_server::TlsConfig::from_pem_files("server.crt", "server.key")?
    ///     .handshake_timeout(Duration::from_secs(5));
    /// # Ok::<(), easyrpc_server::TlsConfigError>(())
    /// ```
    #[must_use]
    pub fn handshake_timeout(mut self, timeout: Duration) -> TlsConfig {
        self.handshake_timeout = timeout;
        self
    }

    /// Whether clients must present a certificate ([`TlsConfig::client_ca`]).
    pub fn requires_client_certificate(&self) -> bool {
        self.client_ca.is_some()
    }

    /// What one listener uses: an acceptor made from the loaded settings.
    pub(crate) fn acceptor(&self) -> Acceptor {
        Acceptor {
            acceptor: TlsAcceptor::from(self.server.clone()),
            timeout: self.handshake_timeout,
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsConfigError> {
    std::fs::read(path).map_err(|source| TlsConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Every certificate of PEM text; at least one.
fn certificates(pem: &[u8], what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsConfigError::Pem {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsConfigError::Pem {
            what,
            reason: "no certificate in the PEM text".into(),
        });
    }
    Ok(certs)
}

fn server_config(
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    client_ca: Option<Arc<RootCertStore>>,
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsConfigError::Rustls(e.to_string()))?;
    let builder = match client_ca {
        Some(roots) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| TlsConfigError::Rustls(format!("client CA: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(chain.to_vec(), key.clone_key())
        .map_err(|e| TlsConfigError::Rustls(e.to_string()))?;
    Ok(Arc::new(config))
}

/// rustls's `ring` provider. Deprecated since rustls 0.23.48 because ring has no
/// post-quantum key exchange; aws-lc-rs has one, but its C build takes minutes on our
/// machines. Chosen explicitly, not as the process default, so that no other crate's
/// choice changes ours.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes TLS connections out of accepted streams: one per listener.
#[derive(Clone)]
pub(crate) struct Acceptor {
    acceptor: TlsAcceptor,
    timeout: Duration,
}

impl fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acceptor")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Acceptor {
    /// Run the server's half of the handshake on `stream`, within the handshake timeout;
    /// then the client's identity, when it presented a certificate.
    pub(crate) async fn handshake<S>(&self, stream: S) -> io::Result<(Tls<S>, Option<Arc<TlsIdentity>>)>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let stream = tokio::time::timeout(self.timeout, self.acceptor.accept(stream))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no TLS handshake within {:?}", self.timeout),
                )
            })??;
        let identity = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| TlsIdentity::from_der(leaf))
            .map(Arc::new);
        Ok((Tls(stream), identity))
    }
}

/// A connection's TLS stream. A client that closes without TLS's `close_notify` is read as
/// a plain end of input, as over TCP (rustls reports `UnexpectedEof`): MessagePack-RPC
/// messages delimit themselves, so a cut message is still seen as one, and a client that
/// is gone is not logged as an error.
#[derive(Debug)]
pub(crate) struct Tls<S>(TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> Tls<S> {
    /// Close the TLS session (`close_notify`, then the TCP write half) once the
    /// connection is over, so that the client reads a clean end. Bounded: a client that
    /// reads nothing any more cannot hold the task.
    pub(crate) async fn close(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.0.shutdown()).await;
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Tls<S> {
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

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Tls<S> {
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

/// Who a client's TLS certificate says it is (mutual TLS, [`TlsConfig::client_ca`]): the
/// subject of its certificate and its subject alternative names. The certificate was
/// verified against the client CA before this is made.
///
/// ```
/// # fn demo(identity: &easyrpc_server::TlsIdentity) {
/// // For a certificate with subject CN=alice,O=Example and the names
/// // alice.example.com and alice@example.com:
/// assert_eq!(identity.subject, "CN=alice,O=Example");
/// assert!(identity.sans.iter().any(|n| n == "alice@example.com"));
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsIdentity {
    /// The certificate's subject as an RFC 4514 string: the most specific part first,
    /// `CN=alice,OU=ops,O=Example`. Attributes without a short name are written as their
    /// dotted OID (an e-mail address in the subject: `1.2.840.113549.1.9.1=…`).
    pub subject: String,
    /// The subject alternative names, in certificate order, as plain strings: DNS names
    /// (`client.example.com`), IP addresses (`127.0.0.1`, `::1`), e-mail addresses
    /// (`alice@example.com`) and URIs (`spiffe://example.org/alice`). Other kinds are left
    /// out.
    pub sans: Vec<String>,
}

impl TlsIdentity {
    /// An identity with this subject and these alternative names: for checking
    /// [rules](crate::rules::Rules::refuses_connection) without a handshake.
    ///
    /// ```
    /// let alice = easyrpc_server::TlsIdentity::new("CN=alice,O=Example", ["alice.example.com"]);
    /// assert_eq!(alice.sans, ["alice.example.com"]);
    /// ```
    pub fn new(subject: impl Into<String>, sans: impl IntoIterator<Item = impl Into<String>>) -> TlsIdentity {
        TlsIdentity {
            subject: subject.into(),
            sans: sans.into_iter().map(Into::into).collect(),
        }
    }

    /// The identity in a DER certificate; `None` if it cannot be read (it was verified
    /// already, so in practice it always can).
    pub(crate) fn from_der(cert: &[u8]) -> Option<TlsIdentity> {
        der::identity(cert)
    }
}

/// Just enough DER to read a certificate's subject and subject alternative names (RFC
/// 5280); the certificate was verified by rustls, which parses it fully, before this
/// runs. Every read is bounds-checked: bad input gives `None`, never a panic.
mod der {
    use super::*;

    const BOOLEAN: u8 = 0x01;
    const OCTET_STRING: u8 = 0x04;
    const OID: u8 = 0x06;
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    /// `[0]` and `[3]` EXPLICIT in `TBSCertificate`: the version and the extensions.
    const VERSION: u8 = 0xa0;
    const EXTENSIONS: u8 = 0xa3;
    /// id-ce-subjectAltName, 2.5.29.17.
    const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

    /// The next element of `input`: its tag and its contents.
    fn next<'a>(input: &mut &'a [u8]) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = input.split_first()?;
        // High tag numbers do not occur in certificates.
        if tag & 0x1f == 0x1f {
            return None;
        }
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let (bytes, after) = rest.split_at(n);
            rest = after;
            bytes.iter().fold(0usize, |len, &b| (len << 8) | usize::from(b))
        };
        if rest.len() < len {
            return None;
        }
        let (body, after) = rest.split_at(len);
        *input = after;
        Some((tag, body))
    }

    /// The next element's contents, if it has tag `tag`.
    fn expect<'a>(input: &mut &'a [u8], tag: u8) -> Option<&'a [u8]> {
        let (t, body) = next(input)?;
        (t == tag).then_some(body)
    }

    pub(super) fn identity(cert: &[u8]) -> Option<TlsIdentity> {
        let mut input = cert;
        let mut cert = expect(&mut input, SEQUENCE)?;
        let mut tbs = expect(&mut cert, SEQUENCE)?;
        if tbs.first() == Some(&VERSION) {
            next(&mut tbs)?;
        }
        // serialNumber, signature, issuer, validity.
        for _ in 0..4 {
            next(&mut tbs)?;
        }
        let subject = name(expect(&mut tbs, SEQUENCE)?)?;
        // subjectPublicKeyInfo; then the optional unique ids and extensions.
        next(&mut tbs)?;
        let mut sans = Vec::new();
        while !tbs.is_empty() {
            let (tag, mut body) = next(&mut tbs)?;
            if tag != EXTENSIONS {
                continue;
            }
            let mut extensions = expect(&mut body, SEQUENCE)?;
            while !extensions.is_empty() {
                let mut extension = expect(&mut extensions, SEQUENCE)?;
                let oid = expect(&mut extension, OID)?;
                if extension.first() == Some(&BOOLEAN) {
                    next(&mut extension)?;
                }
                let value = expect(&mut extension, OCTET_STRING)?;
                if oid == SUBJECT_ALT_NAME {
                    sans = alt_names(value)?;
                }
            }
        }
        Some(TlsIdentity { subject, sans })
    }

    /// GeneralNames: the kinds a rule may name, as strings.
    fn alt_names(mut value: &[u8]) -> Option<Vec<String>> {
        let mut names = expect(&mut value, SEQUENCE)?;
        let mut out = Vec::new();
        while !names.is_empty() {
            let (tag, body) = next(&mut names)?;
            match tag {
                // rfc822Name [1], dNSName [2], uniformResourceIdentifier [6]: IA5String.
                0x81 | 0x82 | 0x86 => out.push(String::from_utf8_lossy(body).into_owned()),
                // iPAddress [7]: 4 or 16 bytes.
                0x87 => match body.len() {
                    4 => out.push(Ipv4Addr::from(<[u8; 4]>::try_from(body).ok()?).to_string()),
                    16 => out.push(Ipv6Addr::from(<[u8; 16]>::try_from(body).ok()?).to_string()),
                    _ => {}
                },
                _ => {}
            }
        }
        Some(out)
    }

    /// A Name as an RFC 4514 string: the relative names in reverse order, joined by `,`;
    /// the attributes of one joined by `+`.
    fn name(mut rdns: &[u8]) -> Option<String> {
        let mut parts = Vec::new();
        while !rdns.is_empty() {
            let mut set = expect(&mut rdns, SET)?;
            let mut attributes = Vec::new();
            while !set.is_empty() {
                let mut attribute = expect(&mut set, SEQUENCE)?;
                let oid = expect(&mut attribute, OID)?;
                let whole = attribute;
                let (tag, value) = next(&mut attribute)?;
                attributes.push(format!(
                    "{}={}",
                    short_name(oid)?,
                    value_string(tag, value, whole)
                ));
            }
            parts.push(attributes.join("+"));
        }
        parts.reverse();
        Some(parts.join(","))
    }

    /// RFC 4514's short names, or the dotted OID.
    fn short_name(oid: &[u8]) -> Option<String> {
        const DC_UID: &[u8] = &[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01];
        let short = match oid {
            [0x55, 0x04, 0x03] => "CN",
            [0x55, 0x04, 0x06] => "C",
            [0x55, 0x04, 0x07] => "L",
            [0x55, 0x04, 0x08] => "ST",
            [0x55, 0x04, 0x09] => "STREET",
            [0x55, 0x04, 0x0a] => "O",
            [0x55, 0x04, 0x0b] => "OU",
            [prefix @ .., 0x19] if prefix == DC_UID => "DC",
            [prefix @ .., 0x01] if prefix == DC_UID => "UID",
            _ => return dotted(oid),
        };
        Some(short.to_owned())
    }

    fn dotted(oid: &[u8]) -> Option<String> {
        let mut arcs = Vec::new();
        let mut value: u64 = 0;
        for &b in oid {
            value = value.checked_mul(128)? | u64::from(b & 0x7f);
            if b & 0x80 == 0 {
                if arcs.is_empty() {
                    let first = (value / 40).min(2);
                    arcs.push(first);
                    arcs.push(value - first * 40);
                } else {
                    arcs.push(value);
                }
                value = 0;
            }
        }
        if arcs.is_empty() {
            return None;
        }
        Some(arcs.iter().map(u64::to_string).collect::<Vec<_>>().join("."))
    }

    /// An attribute's value: a string, escaped as RFC 4514 says; anything else as `#` and
    /// the hex of its DER (`whole`).
    fn value_string(tag: u8, value: &[u8], whole: &[u8]) -> String {
        let text = match tag {
            // UTF8String, PrintableString, TeletexString (read as UTF-8), IA5String.
            0x0c | 0x13 | 0x14 | 0x16 => String::from_utf8_lossy(value).into_owned(),
            // BMPString: UTF-16, big-endian.
            0x1e => {
                let units: Vec<u16> = value
                    .chunks_exact(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect();
                String::from_utf16_lossy(&units)
            }
            _ => {
                return format!(
                    "#{}",
                    whole.iter().map(|b| format!("{b:02x}")).collect::<String>()
                )
            }
        };
        let mut out = String::with_capacity(text.len());
        let last = text.chars().count().saturating_sub(1);
        for (i, c) in text.chars().enumerate() {
            match c {
                ',' | '+' | '"' | '\\' | '<' | '>' | ';' => {
                    out.push('\\');
                    out.push(c);
                }
                '#' if i == 0 => out.push_str("\\#"),
                ' ' if i == 0 || i == last => out.push_str("\\ "),
                '\0' => out.push_str("\\00"),
                c => out.push(c),
            }
        }
        out
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn dotted_oids() {
            assert_eq!(
                dotted(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01]).unwrap(),
                "1.2.840.113549.1.9.1"
            );
            assert_eq!(dotted(&[0x55, 0x1d, 0x11]).unwrap(), "2.5.29.17");
            assert_eq!(dotted(&[0x88, 0x37]).unwrap(), "2.999");
        }

        #[test]
        fn malformed_input_is_none_not_a_panic() {
            assert_eq!(identity(&[]), None);
            assert_eq!(identity(&[0x30]), None);
            assert_eq!(identity(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
            assert_eq!(identity(&[0x30, 0x03, 0x30, 0x01, 0x02]), None);
        }

        #[test]
        fn escapes_as_rfc_4514_says() {
            assert_eq!(value_string(0x0c, b"a,b+c", b""), "a\\,b\\+c");
            assert_eq!(value_string(0x0c, b"#x ", b""), "\\#x\\ ");
            assert_eq!(value_string(0x02, b"\x05", b"\x02\x01\x05"), "#020105");
        }
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

    use super::*;

    fn cert(params: CertificateParams) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn identity_of_a_certificate_with_every_kind_of_name() {
        let mut params = CertificateParams::new(vec!["client.example.com".to_owned()]).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CountryName, "FR");
        dn.push(DnType::OrganizationName, "Example, Inc.");
        dn.push(DnType::OrganizationalUnitName, "ops");
        dn.push(DnType::CommonName, "alice");
        params.distinguished_name = dn;
        params.subject_alt_names.extend([
            SanType::IpAddress("127.0.0.1".parse().unwrap()),
            SanType::IpAddress("::1".parse().unwrap()),
            SanType::Rfc822Name("alice@example.com".try_into().unwrap()),
            SanType::URI("spiffe://example.org/alice".try_into().unwrap()),
        ]);
        let identity = TlsIdentity::from_der(&cert(params)).unwrap();
        assert_eq!(identity.subject, "CN=alice,OU=ops,O=Example\\, Inc.,C=FR");
        assert_eq!(
            identity.sans,
            [
                "client.example.com",
                "127.0.0.1",
                "::1",
                "alice@example.com",
                "spiffe://example.org/alice"
            ]
        );
    }

    /// The handshake a connection's task runs gives the identity of the client's
    /// certificate (mutual TLS), as the connection will hold it.
    #[tokio::test]
    async fn the_handshake_yields_the_client_certificates_identity() {
        use rcgen::{BasicConstraints, IsCa, Issuer};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, &ca_key);
        let make = |names: Vec<String>, cn: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(names).unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            let cert = params.signed_by(&key, &issuer).unwrap();
            (cert, key)
        };
        let (server_cert, server_key) = make(vec!["localhost".into()], "server");
        let (client_cert, client_key) = make(vec!["client.example.com".into()], "client-1");
        let tls = TlsConfig::from_pem(
            server_cert.pem().as_bytes(),
            server_key.serialize_pem().as_bytes(),
        )
        .unwrap()
        .client_ca_pem(ca_cert.pem().as_bytes())
        .unwrap();
        assert!(tls.requires_client_certificate());

        let mut roots = RootCertStore::empty();
        roots.add(ca_cert.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![client_cert.der().clone()],
                PrivateKeyDer::from_pem_slice(client_key.serialize_pem().as_bytes()).unwrap(),
            )
            .unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tls.acceptor();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (mut stream, identity) = acceptor.handshake(stream).await.unwrap();
            // One byte through, so that the client's handshake is over too.
            stream.write_all(b"!").await.unwrap();
            stream.flush().await.unwrap();
            identity
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let run = async {
            let mut stream = connector.connect(name, tcp).await.unwrap();
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await.unwrap();
            server.await.unwrap()
        };
        let identity = tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("the handshake within 10 s")
            .expect("an identity");
        assert_eq!(identity.subject, "CN=client-1");
        assert_eq!(identity.sans, ["client.example.com"]);
    }

    #[test]
    fn identity_without_alternative_names() {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "bob");
        let identity = TlsIdentity::from_der(&cert(params)).unwrap();
        assert_eq!(identity.subject, "CN=bob");
        assert!(identity.sans.is_empty());
    }
}
