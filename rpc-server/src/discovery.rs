//! Registration in etcd (feature `etcd`): the server announces itself under
//! `rpc/services/NAME/INSTANCE` with a lease it keeps alive, so that clients
//! ([`Client::discover`](https://docs.rs/easyrpc-client)) find it.
//!
//! - **Start-up**: [`Builder::discovery`](crate::Builder::discovery) makes
//!   [`Builder::run`](crate::Builder::run) connect to etcd, grant a lease of
//!   [`Registration::ttl`] and put the key before it serves; a failure there is
//!   [`Error::Discovery`](crate::Error::Discovery) and the server does not start.
//! - **While serving**: the lease is kept alive every third of its TTL. When etcd cannot be
//!   reached (or the lease was lost), the server goes on serving and logs it, then
//!   registers again with a new lease, with backoff, as soon as etcd answers, and logs that.
//! - **Graceful shutdown** (TERM, INT): the lease is revoked first (which deletes the key,
//!   and clients watching drop the instance), then the server drains: no client is sent to
//!   a draining server. Revoking is bounded (2 s): with etcd away the key goes when the
//!   lease expires.
//! - **Crash**: nothing revokes the lease; the key goes when it expires, one TTL later.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use easyrpc_proto::discovery::{instance_key, InstanceInfo};
use etcd_client::{Client as Etcd, ConnectOptions, PutOptions};
use tokio::sync::oneshot;
use tokio::time::{sleep, timeout};
use tracing::{info, warn};

/// How long one etcd request may take before the server counts etcd as away.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest wait between two attempts to register again.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Where and how a server registers itself in etcd ([`Builder::discovery`](crate::Builder::discovery)).
///
/// ```no_run
/// use std::time::Duration;
/// use easyrpc_server::{Method, Registration, Server};
///
/// fn main() -> Result<(), easyrpc_server::Error> {
///     Server::builder()
///         .register(Method::sync_fn("add", |(a, b): (i64, i64)| a + b))
///         .discovery(
///             Registration::new(["http://127.0.0.1:2379"], "calc")
///                 .advertise("10.0.0.5:25000")
///                 .ttl(Duration::from_secs(5)),
///         )
///         .run("0.0.0.0:25000")
/// }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Registration {
    /// etcd's client URLs (`http://host:2379`).
    pub endpoints: Vec<String>,
    /// The service name: the key is `rpc/services/NAME/INSTANCE`.
    pub service: String,
    /// The instance's name in the key. Default: the advertised address.
    pub instance: Option<String>,
    /// The address clients are told to connect to. Default: the first listener's bound
    /// address (port 0 resolved), which only suits a server bound to a specific
    /// interface: give it when listening on `0.0.0.0`.
    pub advertise: Option<String>,
    /// The lease's TTL: how long a crashed server stays listed. Default: 5 s; at least 1 s
    /// (etcd counts in seconds).
    pub ttl: Duration,
    /// The instance's share of calls relative to the others. Default: 1.
    pub weight: u32,
    /// The version put in the key. Default: this crate's.
    pub version: String,
}

impl Registration {
    /// Register as an instance of `service` in the etcd cluster at `endpoints`.
    pub fn new<E: Into<String>>(
        endpoints: impl IntoIterator<Item = E>,
        service: impl Into<String>,
    ) -> Registration {
        Registration {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            service: service.into(),
            instance: None,
            advertise: None,
            ttl: Duration::from_secs(5),
            weight: 1,
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    /// See [`Registration::advertise`](#structfield.advertise).
    pub fn advertise(mut self, addr: impl Into<String>) -> Registration {
        self.advertise = Some(addr.into());
        self
    }

    /// See [`Registration::ttl`](#structfield.ttl).
    pub fn ttl(mut self, ttl: Duration) -> Registration {
        self.ttl = ttl;
        self
    }

    /// See [`Registration::weight`](#structfield.weight).
    pub fn weight(mut self, weight: u32) -> Registration {
        self.weight = weight;
        self
    }

    /// See [`Registration::instance`](#structfield.instance).
    pub fn instance(mut self, name: impl Into<String>) -> Registration {
        self.instance = Some(name.into());
        self
    }

    fn ttl_secs(&self) -> i64 {
        i64::try_from(self.ttl.as_secs().max(1)).unwrap_or(i64::MAX)
    }
}

/// Why registering failed at start-up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// No address to advertise: none given and no TCP listener.
    #[error("no address to advertise for service {0:?}: give Registration::advertise")]
    NoAddress(String),
    /// etcd could not be reached or refused the registration.
    #[error("registering {key:?} in etcd at {endpoints}: {cause}")]
    Etcd {
        /// The key being registered.
        key: String,
        /// The endpoints tried, comma-separated.
        endpoints: String,
        /// What went wrong.
        cause: String,
    },
    /// Under prefork, the process that registers for every worker failed; its message.
    #[error("{0}")]
    Process(String),
}

/// The registration of a running server: keeps its lease alive until
/// [`Registered::deregister`].
#[derive(Debug)]
pub(crate) struct Registered {
    stop: Option<oneshot::Sender<oneshot::Sender<()>>>,
    key: String,
}

/// The live lease, as the keep-alive task last made it.
#[derive(Default)]
struct Current {
    lease: Option<(Etcd, i64)>,
}

impl Registered {
    /// Register (`local`: the first TCP listener's address, for the default advertised
    /// address) and spawn the task keeping the lease alive.
    pub(crate) async fn start(
        reg: Registration,
        local: Option<String>,
        workers: u32,
    ) -> Result<Registered, DiscoveryError> {
        let addr = reg
            .advertise
            .clone()
            .or(local)
            .ok_or_else(|| DiscoveryError::NoAddress(reg.service.clone()))?;
        let instance = reg.instance.clone().unwrap_or_else(|| addr.clone());
        let key = instance_key(&reg.service, &instance);
        let mut info = InstanceInfo::new(addr);
        info.weight = reg.weight;
        info.workers = workers;
        info.version = reg.version.clone();
        // Serializing a struct of strings and integers to JSON cannot fail.
        let value = serde_json::to_vec(&info).unwrap_or_default();
        let fail = |cause: String| DiscoveryError::Etcd {
            key: key.clone(),
            endpoints: reg.endpoints.join(","),
            cause,
        };
        let lease = register(&reg, &key, &value).await.map_err(fail)?;
        info!(key = %key, ttl = ?reg.ttl, "registered in etcd");
        let current = Arc::new(Mutex::new(Current { lease: Some(lease) }));
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(keep(reg, key.clone(), value, current, stopped));
        Ok(Registered {
            stop: Some(stop),
            key,
        })
    }

    /// Revoke the lease (the key goes with it), within 2 s; the keep-alive task ends.
    pub(crate) async fn deregister(mut self) {
        let Some(stop) = self.stop.take() else { return };
        let (done, wait) = oneshot::channel();
        if stop.send(done).is_ok()
            && timeout(REQUEST_TIMEOUT + Duration::from_millis(500), wait)
                .await
                .is_err()
        {
            warn!(key = %self.key, "deregistering took too long: the key goes when its lease expires");
        }
    }
}

/// Connect, grant a lease and put the key under it.
async fn register(reg: &Registration, key: &str, value: &[u8]) -> Result<(Etcd, i64), String> {
    let attempt = async {
        let options = ConnectOptions::new().with_connect_timeout(REQUEST_TIMEOUT);
        let mut etcd = Etcd::connect(&reg.endpoints, Some(options)).await?;
        let lease = etcd.lease_grant(reg.ttl_secs(), None).await?.id();
        etcd.put(key, value, Some(PutOptions::new().with_lease(lease)))
            .await?;
        Ok::<_, etcd_client::Error>((etcd, lease))
    };
    match timeout(REQUEST_TIMEOUT * 2, attempt).await {
        Ok(Ok(lease)) => Ok(lease),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {:?}", REQUEST_TIMEOUT * 2)),
    }
}

/// The keep-alive task: refreshes the lease every third of its TTL; registers again when
/// etcd was away or the lease lost; on stop, revokes the lease and says so.
async fn keep(
    reg: Registration,
    key: String,
    value: Vec<u8>,
    current: Arc<Mutex<Current>>,
    stopped: oneshot::Receiver<oneshot::Sender<()>>,
) {
    let alive = async {
        loop {
            let lease = current.lock().unwrap_or_else(|p| p.into_inner()).lease.clone();
            if let Some((etcd, id)) = lease {
                let e = keep_alive(etcd, id, reg.ttl).await;
                warn!(key = %key, error = %e, "etcd lost: serving on, registering again when it is back");
                current.lock().unwrap_or_else(|p| p.into_inner()).lease = None;
            }
            let mut backoff = Duration::from_millis(100);
            loop {
                match register(&reg, &key, &value).await {
                    Ok(lease) => {
                        info!(key = %key, "registered in etcd again");
                        current.lock().unwrap_or_else(|p| p.into_inner()).lease = Some(lease);
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(key = %key, error = %e, "registering again failed");
                        sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
        }
    };
    let done = tokio::select! {
        () = alive => return,
        done = stopped => done,
    };
    let lease = current.lock().unwrap_or_else(|p| p.into_inner()).lease.take();
    if let Some((mut etcd, id)) = lease {
        match timeout(REQUEST_TIMEOUT, etcd.lease_revoke(id)).await {
            Ok(Ok(_)) => info!(key = %key, "deregistered from etcd"),
            Ok(Err(e)) => {
                warn!(key = %key, error = %e, "deregistering failed: the key goes when its lease expires")
            }
            Err(_) => warn!(key = %key, "etcd did not answer: the key goes when its lease expires"),
        }
    }
    if let Ok(done) = done {
        let _ = done.send(());
    }
}

/// Keep lease `id` alive until that fails; returns why.
async fn keep_alive(mut etcd: Etcd, id: i64, ttl: Duration) -> String {
    let every = (ttl / 3).max(Duration::from_millis(300));
    let (mut keeper, mut stream) = match timeout(REQUEST_TIMEOUT, etcd.lease_keep_alive(id)).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => return e.to_string(),
        Err(_) => return "no answer to the keep-alive".into(),
    };
    loop {
        let round = async {
            keeper.keep_alive().await?;
            stream.message().await
        };
        match timeout(REQUEST_TIMEOUT.min(every), round).await {
            Ok(Ok(Some(resp))) if resp.ttl() > 0 => {}
            Ok(Ok(Some(_))) => return "the lease expired".into(),
            Ok(Ok(None)) => return "the keep-alive stream ended".into(),
            Ok(Err(e)) => return e.to_string(),
            Err(_) => return "no answer to the keep-alive".into(),
        }
        sleep(every).await;
    }
}
