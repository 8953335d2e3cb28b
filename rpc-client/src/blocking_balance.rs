//! The blocking client over several servers: round robin with ejection.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use easyrpc_proto::{may_resend, Params};
use serde::de::DeserializeOwned;
use tracing::{debug, info};

use crate::{BlockingClient, CallOptions, Config, Error};

/// A [`BlockingClient`] per server, called in turn ([`BlockingClient::balanced`]).
///
/// The policy is simpler than the async client's (which has a connection task and weighs
/// calls in flight): **round robin with ejection**. Each call goes to the next server in
/// the list that is not ejected. A server that cannot be reached, whose connection drops,
/// or that refuses a call as `shutting down` is ejected for a backoff
/// ([`Config::reconnect_backoff`], doubling at each failure in a row up to
/// [`Config::reconnect_backoff_max`]); then it is tried again by the next call that comes
/// to it. A call is sent to the next server when the resend rule allows it (never sent,
/// refused as `shutting down`, or lost with its connection when idempotent
/// ([`CallOptions::idempotent`]) or of a dedup session: each server has its own session,
/// so a moved call may run twice, see [`Client::balanced`](crate::Client::balanced)).
/// When every server is ejected, the one whose backoff ends first is tried. Each server's
/// connection is made on its first call, and calls to one server are serialized on it as
/// with one [`BlockingClient`]; calls to different servers run in parallel.
///
/// ```no_run
/// use easyrpc_client::{BlockingClient, CallOptions};
///
/// let client = BlockingClient::balanced(["10.0.0.5:25000", "10.0.0.6:25000"])?;
/// let sum: i64 = client.call_with("add", (1, 2), CallOptions::default().idempotent())?;
/// # Ok::<(), easyrpc_client::Error>(())
/// ```
pub struct BalancedBlockingClient {
    members: Vec<Member>,
    next: AtomicUsize,
    config: Config,
}

struct Member {
    addr: SocketAddr,
    client: Mutex<Option<std::sync::Arc<BlockingClient>>>,
    health: Mutex<Health>,
}

#[derive(Default)]
struct Health {
    failures: u32,
    ejected_until: Option<Instant>,
}

impl fmt::Debug for BalancedBlockingClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addrs: Vec<_> = self.members.iter().map(|m| m.addr).collect();
        f.debug_struct("BalancedBlockingClient")
            .field("addrs", &addrs)
            .finish_non_exhaustive()
    }
}

impl BlockingClient {
    /// A blocking client over the servers at `addrs` (round robin with ejection; see
    /// [`BalancedBlockingClient`]), with the default [`Config`]. Nothing is connected
    /// until the first call.
    ///
    /// # Errors
    ///
    /// When an address does not resolve, or none is given.
    pub fn balanced<I>(addrs: I) -> Result<BalancedBlockingClient, Error>
    where
        I: IntoIterator,
        I::Item: ToSocketAddrs,
    {
        BalancedBlockingClient::new(addrs, Config::default())
    }

    /// A blocking client over the instances of `service` registered in etcd at
    /// `endpoints`, read once now (the blocking client has no thread to watch with: make a
    /// new one to see instances that came since; the ones that went are ejected when they
    /// fail). Round robin with ejection, weights ignored: see [`BalancedBlockingClient`].
    /// Feature `etcd`.
    ///
    /// # Errors
    ///
    /// [`Error::Discovery`] when etcd cannot be reached or read, or no instance is
    /// registered.
    #[cfg(feature = "etcd")]
    pub fn discover<E: AsRef<str>>(
        endpoints: impl AsRef<[E]>,
        service: &str,
        config: Config,
    ) -> Result<BalancedBlockingClient, Error> {
        let endpoints: Vec<String> = endpoints.as_ref().iter().map(|e| e.as_ref().to_owned()).collect();
        let prefix = easyrpc_proto::discovery::service_prefix(service);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let found = runtime
            .block_on(crate::client::discover::read_instances(&endpoints, &prefix))
            .map_err(|cause| {
                Error::Discovery(format!(
                    "reading {prefix:?} from etcd at {}: {cause}",
                    endpoints.join(",")
                ))
            })?;
        if found.is_empty() {
            return Err(Error::Discovery(format!(
                "no instance of {service:?} is registered"
            )));
        }
        BalancedBlockingClient::new(found.into_iter().map(|(_, addr, _)| addr), config)
    }
}

impl BalancedBlockingClient {
    /// [`BlockingClient::balanced`] with `config`, used for every server.
    ///
    /// # Errors
    ///
    /// As [`BlockingClient::balanced`].
    pub fn new<I>(addrs: I, config: Config) -> Result<BalancedBlockingClient, Error>
    where
        I: IntoIterator,
        I::Item: ToSocketAddrs,
    {
        let mut members = Vec::new();
        for addr in addrs {
            let addr = addr.to_socket_addrs()?.next().ok_or_else(|| {
                Error::Transport(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "no address",
                ))
            })?;
            members.push(Member {
                addr,
                client: Mutex::new(None),
                health: Mutex::new(Health::default()),
            });
        }
        if members.is_empty() {
            return Err(Error::Transport(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "no server given",
            )));
        }
        Ok(BalancedBlockingClient {
            members,
            next: AtomicUsize::new(0),
            config,
        })
    }

    /// The servers, in turn order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.members.iter().map(|m| m.addr).collect()
    }

    /// The servers ejected now.
    pub fn ejected(&self) -> Vec<SocketAddr> {
        let now = Instant::now();
        self.members
            .iter()
            .filter(|m| lock(&m.health).ejected_until.is_some_and(|t| t > now))
            .map(|m| m.addr)
            .collect()
    }

    /// Call `method` on the next server, with the client's timeout.
    ///
    /// # Errors
    ///
    /// As [`BlockingClient::call`]; [`Error::Unavailable`] when no server can be reached.
    pub fn call<P: Params, R: DeserializeOwned>(&self, method: &str, params: P) -> Result<R, Error> {
        self.call_with(method, params, CallOptions::default())
    }

    /// Call with dynamic MessagePack values in and out.
    ///
    /// # Errors
    ///
    /// As [`BalancedBlockingClient::call`].
    pub fn call_value(&self, method: &str, params: Vec<rmpv::Value>) -> Result<rmpv::Value, Error> {
        self.call(method, params)
    }

    /// [`BalancedBlockingClient::call`] with [`CallOptions`]. The timeout covers every
    /// server tried.
    ///
    /// # Errors
    ///
    /// As [`BalancedBlockingClient::call`].
    pub fn call_with<P: Params, R: DeserializeOwned>(
        &self,
        method: &str,
        params: P,
        opts: CallOptions,
    ) -> Result<R, Error> {
        let timeout = opts.timeout.unwrap_or(self.config.timeout);
        let deadline = Instant::now() + timeout;
        // Each server at most twice: enough to go round once after every server failed.
        for _ in 0..self.members.len() * 2 {
            let member = self.pick();
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout(timeout));
            }
            let client = match self.client(member) {
                Ok(client) => client,
                Err(e) => {
                    self.eject(member, &e);
                    continue;
                }
            };
            let mut opts = opts.clone();
            opts.timeout = Some(left);
            match client.call_once::<P, R>(method, &params, opts.clone()) {
                Ok(r) => {
                    lock(&member.health).failures = 0;
                    return Ok(r);
                }
                Err((None, e)) => return Err(e),
                Err((Some(failure), e)) => {
                    if matches!(e, Error::Timeout(_)) {
                        return Err(Error::Timeout(timeout));
                    }
                    self.eject(member, &e);
                    // The connection is gone (or going): make a new one next time.
                    *lock(&member.client) = None;
                    if !may_resend(failure, client.session().is_some(), opts.idempotent) {
                        return Err(e);
                    }
                    debug!(method, addr = %member.addr, ?failure, "sending the call to the next server");
                }
            }
        }
        Err(Error::Unavailable(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            format!("none of the {} servers could be reached", self.members.len()),
        )))
    }

    /// Send a notification to the next server.
    ///
    /// # Errors
    ///
    /// As [`BlockingClient::notify`], for every server in turn.
    pub fn notify<P: Params>(&self, method: &str, params: P) -> Result<(), Error> {
        let mut last = None;
        for _ in 0..self.members.len() {
            let member = self.pick();
            match self.client(member).and_then(|c| c.notify(method, &params)) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    self.eject(member, &e);
                    *lock(&member.client) = None;
                    last = Some(e);
                }
            }
        }
        // Unwrap-free: `members` is never empty, so the loop ran.
        Err(last.unwrap_or(Error::ConnectionClosed))
    }

    /// The next server not ejected, in turn; if all are, the one whose backoff ends first.
    fn pick(&self) -> &Member {
        let n = self.members.len();
        let now = Instant::now();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut soonest: Option<(&Member, Instant)> = None;
        for k in 0..n {
            let m = &self.members[(start + k) % n];
            match lock(&m.health).ejected_until {
                Some(until) if until > now => {
                    if soonest.is_none_or(|(_, t)| until < t) {
                        soonest = Some((m, until));
                    }
                }
                _ => return m,
            }
        }
        // Unwrap-free: with every member ejected, `soonest` is set.
        soonest.map_or(&self.members[0], |(m, _)| m)
    }

    fn client(&self, member: &Member) -> Result<std::sync::Arc<BlockingClient>, Error> {
        let mut slot = lock(&member.client);
        if let Some(c) = &*slot {
            return Ok(c.clone());
        }
        let c = std::sync::Arc::new(BlockingClient::connect_with(member.addr, self.config.clone())?);
        *slot = Some(c.clone());
        Ok(c)
    }

    fn eject(&self, member: &Member, error: &Error) {
        let mut h = lock(&member.health);
        let backoff = self
            .config
            .reconnect_backoff
            .saturating_mul(1 << h.failures.min(16))
            .min(self.config.reconnect_backoff_max);
        h.failures = h.failures.saturating_add(1);
        h.ejected_until = Some(Instant::now() + backoff);
        info!(addr = %member.addr, error = %error, ?backoff, "server ejected");
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every update leaves the value consistent: a poisoned lock is safe to reuse.
    m.lock().unwrap_or_else(|p| p.into_inner())
}
