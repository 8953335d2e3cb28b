//! Where `rpc` connects and how: the address ([`Target`]: `host:port` or `unix:/path`),
//! TLS, the timeout and the codec, gathered in a [`Connection`] that opens clients.
//!
//! ```
//! use easyrpc_cli::connect::Target;
//!
//! assert_eq!("127.0.0.1:25000".parse::<Target>()?, Target::Tcp("127.0.0.1:25000".into()));
//! assert_eq!("unix:/run/rpc.sock".parse::<Target>()?, Target::Unix("/run/rpc.sock".into()));
//! assert!("no-port".parse::<Target>().is_err());
//! # Ok::<(), String>(())
//! ```

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use easyrpc_client::{BlockingClient, Client, ClientTls, Codec, Config};

/// A server's address.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Target {
    /// `host:port` (a name, an IPv4 address, or `[v6]`), over TCP, or TLS with the TLS
    /// options.
    Tcp(String),
    /// `unix:/path`: a Unix-domain socket.
    Unix(PathBuf),
}

impl FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Target, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a socket path, as in unix:/run/app.sock".into());
            }
            return Ok(Target::Unix(path.into()));
        }
        match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Target::Tcp(s.into()))
            }
            _ => Err(format!("{s:?} is not host:port nor unix:/path")),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tcp(addr) => f.write_str(addr),
            Target::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// A server to connect to, and how: opens the blocking client (one-off commands) or the
/// async one (`rpc load`).
#[derive(Debug, Clone)]
pub struct Connection {
    /// The address.
    pub target: Target,
    /// TLS settings, for a `host:port` target.
    pub tls: Option<ClientTls>,
    /// The clients' settings (timeouts, codec).
    pub config: Config,
}

impl Connection {
    /// The same server with another codec (introspection always speaks MessagePack).
    pub fn with_codec(&self, codec: Codec) -> Connection {
        let mut c = self.clone();
        c.config.codec = codec;
        c
    }

    /// Connect a blocking client.
    ///
    /// # Errors
    ///
    /// As `BlockingClient::connect`: the server is unavailable, TLS failed, the timeout
    /// passed.
    pub fn blocking(&self) -> Result<BlockingClient, easyrpc_client::Error> {
        let config = self.config.clone();
        match (&self.target, &self.tls) {
            (Target::Tcp(addr), None) => BlockingClient::connect_with(addr.as_str(), config),
            (Target::Tcp(addr), Some(tls)) => BlockingClient::connect_tls_with(addr, tls.clone(), config),
            #[cfg(unix)]
            (Target::Unix(path), _) => BlockingClient::connect_unix_with(path, config),
            #[cfg(not(unix))]
            (Target::Unix(_), _) => Err(unix_unsupported()),
        }
    }

    /// Connect an async client (within a tokio runtime).
    ///
    /// # Errors
    ///
    /// As [`Connection::blocking`].
    pub async fn client(&self) -> Result<Client, easyrpc_client::Error> {
        let config = self.config.clone();
        match (&self.target, &self.tls) {
            (Target::Tcp(addr), None) => Client::connect_with(addr.as_str(), config).await,
            (Target::Tcp(addr), Some(tls)) => Client::connect_tls_with(addr, tls.clone(), config).await,
            #[cfg(unix)]
            (Target::Unix(path), _) => Client::connect_unix_with(path, config).await,
            #[cfg(not(unix))]
            (Target::Unix(_), _) => Err(unix_unsupported()),
        }
    }
}

#[cfg(not(unix))]
fn unix_unsupported() -> easyrpc_client::Error {
    easyrpc_client::Error::Transport(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "Unix-domain sockets are not supported on this platform",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_parsed() {
        for ok in ["localhost:1", "[::1]:25000", "rpc.example.com:443"] {
            assert_eq!(ok.parse::<Target>(), Ok(Target::Tcp(ok.into())));
        }
        assert_eq!(
            "unix:rel.sock".parse::<Target>(),
            Ok(Target::Unix("rel.sock".into()))
        );
        for bad in ["", "host", ":80", "host:port", "host:70000", "unix:"] {
            assert!(bad.parse::<Target>().is_err(), "{bad}");
        }
        assert_eq!(Target::Unix("/x".into()).to_string(), "unix:/x");
    }
}
