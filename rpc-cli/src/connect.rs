//! Where `rpc` connects and how: the address ([`Target`]: `host:port`, `unix:/path`, or
//! the instances of a service registered in etcd, `etcd:NAME@URL`),
//! TLS, the timeout and the codec, gathered in a [`Connection`] that opens clients.
//!
//! ```
//! use easyrpc_cli::connect::Target;
//!
//! assert_eq!("127.0.0.1:25000".parse::<Target>()?, Target::Tcp("127.0.0.1:25000".into()));
//! assert_eq!("unix:/run/rpc.sock".parse::<Target>()?, Target::Unix("/run/rpc.sock".into()));
//! assert!("no-port".parse::<Target>().is_err());
//! assert_eq!(
//!     "etcd:calc@http://127.0.0.1:2379".parse::<Target>()?,
//!     Target::Etcd { service: "calc".into(), endpoints: vec!["http://127.0.0.1:2379".into()] },
//! );
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
    /// `etcd:NAME@URL[,URL...]` (what `--etcd URL --service NAME` stand for): the
    /// instances of service NAME registered in etcd. `rpc load` balances over them (and
    /// follows them as they come and go); one-off commands call one of them.
    Etcd {
        /// The service name.
        service: String,
        /// etcd's client URLs.
        endpoints: Vec<String>,
    },
}

impl FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Target, String> {
        if let Some(rest) = s.strip_prefix("etcd:") {
            return match rest.split_once('@') {
                Some((service, urls)) if !service.is_empty() && !urls.is_empty() => Ok(Target::Etcd {
                    service: service.into(),
                    endpoints: urls.split(',').map(Into::into).collect(),
                }),
                _ => Err(format!(
                    "{s:?}: etcd: needs a service and etcd's URL, as in etcd:calc@http://127.0.0.1:2379"
                )),
            };
        }
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
            Target::Etcd { service, endpoints } => write!(f, "etcd:{service}@{}", endpoints.join(",")),
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
            (Target::Etcd { service, endpoints }, _) => discover_one(endpoints, service, config),
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
            #[cfg(feature = "etcd")]
            (Target::Etcd { service, endpoints }, _) => {
                Client::discover_with(endpoints, service, config).await
            }
            #[cfg(not(feature = "etcd"))]
            (Target::Etcd { .. }, _) => Err(etcd_unsupported()),
        }
    }
}

/// A blocking client of one instance of `service`: the instances are read from etcd,
/// and the first one that answers, starting from one chosen by the process id, is taken.
#[cfg(feature = "etcd")]
fn discover_one(
    endpoints: &[String],
    service: &str,
    config: Config,
) -> Result<BlockingClient, easyrpc_client::Error> {
    let all = BlockingClient::discover(endpoints, service, config.clone())?.addrs();
    let start = std::process::id() as usize % all.len();
    let mut last = None;
    for addr in all.iter().cycle().skip(start).take(all.len()) {
        match BlockingClient::connect_with(*addr, config.clone()) {
            Ok(client) => return Ok(client),
            Err(e) => last = Some(e),
        }
    }
    // `discover` returns at least one instance, so the loop ran.
    Err(last.unwrap_or(easyrpc_client::Error::ConnectionClosed))
}

#[cfg(not(feature = "etcd"))]
fn discover_one(_: &[String], _: &str, _: Config) -> Result<BlockingClient, easyrpc_client::Error> {
    Err(etcd_unsupported())
}

#[cfg(not(feature = "etcd"))]
fn etcd_unsupported() -> easyrpc_client::Error {
    easyrpc_client::Error::Discovery("this rpc was built without the etcd feature".into())
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
