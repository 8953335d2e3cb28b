//! The balanced client: one connection per instance, a pick per call.
//!
//! - **Pick**: power of two choices. Two instances that are up are drawn at random and the
//!   call goes to the one with fewer calls in flight for its weight (`(in_flight + 1) /
//!   weight`); on a tie, to the one with the clearly lower latency (an EWMA of its calls'
//!   round trips, when it is more than a quarter lower), else to the first drawn. With one
//!   instance up, it gets every call.
//! - **Ejection**: an instance whose connection drops, cannot be made, or that refuses a
//!   call as `shutting down` is out of the rotation at once; a background task connects
//!   to it again with backoff ([`Config::reconnect_backoff`] doubling up to
//!   [`Config::reconnect_backoff_max`]) and puts it back when that works. With etcd, an
//!   instance whose key goes (deregistered, or its lease expired) leaves for good.
//! - **Resend**: a call that ends without an answer goes to another instance when
//!   [`easyrpc_proto::may_resend`] allows it: never sent, refused as `shutting down`, or
//!   lost with the connection when it is idempotent ([`Client::idempotent`]) or of a dedup
//!   session. A session's call first goes back to its own instance (its dedup cache is
//!   there) while that can be reached; see [`Client::balanced`] for what moving means.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use easyrpc_proto::{may_resend, Params};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, info};

use super::{call_on, connect, notify_on, Client, Core, Handle, Sent, Target};
use crate::reply::Decoder;
use crate::{Config, Error};

/// One instance of a balanced client, as [`Client::instances`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InstanceState {
    /// Its name: its etcd key's last part, or the address given to [`Client::balanced`].
    pub name: String,
    /// Where it is reached.
    pub addr: SocketAddr,
    /// Its weight (from its etcd key; 1 for a static list).
    pub weight: u32,
    /// In the rotation: connected, not ejected.
    pub up: bool,
    /// Calls in flight on it now.
    pub in_flight: u32,
    /// Calls it answered since it joined.
    pub calls: u64,
}

/// What the clones of a balanced [`Client`] share: the instances and their state.
pub(super) struct Pool {
    config: Config,
    instances: RwLock<Vec<Arc<Instance>>>,
    /// Wakes calls waiting for an instance to be up.
    changed: Arc<Notify>,
    rng: AtomicU64,
    /// The discovery task, if any: it ends with the pool.
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Some(task) = self.task.get_mut().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
        for inst in self.instances.get_mut().unwrap_or_else(|p| p.into_inner()).iter() {
            inst.removed.store(true, Ordering::Relaxed);
        }
    }
}

struct Instance {
    name: String,
    addr: SocketAddr,
    weight: AtomicU32,
    /// The connection; closed when the instance is dropped (removed, and no call left on it).
    handle: Handle,
    in_flight: AtomicU32,
    up: AtomicBool,
    /// A task is connecting to it again.
    probing: AtomicBool,
    /// Left the pool: its probe stops.
    removed: AtomicBool,
    calls: AtomicU64,
    /// Round-trip EWMA, in nanoseconds.
    ewma_ns: AtomicU64,
}

impl Instance {
    fn core(&self) -> &Arc<Core> {
        &self.handle.0
    }

    /// `(in_flight + 1) / weight`, as a fraction to compare by cross-multiplying.
    fn load(&self) -> (u64, u64) {
        (
            u64::from(self.in_flight.load(Ordering::Relaxed)) + 1,
            u64::from(self.weight.load(Ordering::Relaxed).max(1)),
        )
    }
}

/// Counts a call in flight on an instance while it lives.
struct InFlight<'a>(&'a Instance);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    pub(super) fn new(config: Config) -> Result<Arc<Pool>, Error> {
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).map_err(|e| Error::Transport(std::io::Error::other(e.to_string())))?;
        Ok(Arc::new(Pool {
            config,
            instances: RwLock::new(Vec::new()),
            changed: Arc::new(Notify::new()),
            rng: AtomicU64::new(u64::from_le_bytes(seed) | 1),
            task: Mutex::new(None),
        }))
    }

    pub(super) fn config(&self) -> &Config {
        &self.config
    }

    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub(super) fn set_task(&self, task: tokio::task::AbortHandle) {
        *self.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
    }

    pub(super) fn first_addr(&self) -> Option<SocketAddr> {
        self.read().first().map(|i| i.addr)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Instance>>> {
        self.instances.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Arc<Instance>>> {
        self.instances.write().unwrap_or_else(|p| p.into_inner())
    }

    /// A random number (xorshift; the pick needs no more).
    fn random(&self) -> u64 {
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.store(x, Ordering::Relaxed);
        x
    }

    /// Add instance `name` at `addr` (or update its weight if it is there at that
    /// address; replace it if its address changed). It joins the rotation once connected.
    pub(super) fn upsert(&self, name: &str, addr: SocketAddr, weight: u32) {
        let mut instances = self.write();
        if let Some(pos) = instances.iter().position(|i| i.name == name) {
            if instances[pos].addr == addr {
                instances[pos].weight.store(weight, Ordering::Relaxed);
                return;
            }
            let old = instances.remove(pos);
            old.removed.store(true, Ordering::Relaxed);
        }
        let Ok(core) = Core::new(vec![addr], None, None, self.config.clone()) else {
            return;
        };
        let inst = Arc::new(Instance {
            name: name.to_owned(),
            addr,
            weight: AtomicU32::new(weight),
            handle: Handle(core),
            in_flight: AtomicU32::new(0),
            up: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            calls: AtomicU64::new(0),
            ewma_ns: AtomicU64::new(0),
        });
        info!(instance = name, %addr, weight, "instance added");
        instances.push(inst.clone());
        drop(instances);
        self.probe(&inst, Duration::ZERO);
    }

    /// Take instance `name` out for good (its key went).
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub(super) fn remove(&self, name: &str) {
        let mut instances = self.write();
        if let Some(pos) = instances.iter().position(|i| i.name == name) {
            let old = instances.remove(pos);
            old.removed.store(true, Ordering::Relaxed);
            old.up.store(false, Ordering::Relaxed);
            info!(instance = name, addr = %old.addr, "instance removed");
        }
    }

    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    /// Make the instances exactly `all` (after reading every key again).
    pub(super) fn replace_all(&self, all: &[(String, SocketAddr, u32)]) {
        let gone: Vec<String> = self
            .read()
            .iter()
            .filter(|i| !all.iter().any(|(name, _, _)| *name == i.name))
            .map(|i| i.name.clone())
            .collect();
        for name in gone {
            self.remove(&name);
        }
        for (name, addr, weight) in all {
            self.upsert(name, *addr, *weight);
        }
    }

    /// Connect to `inst` again in the background, with backoff, and put it back in the
    /// rotation once that works.
    fn probe(&self, inst: &Arc<Instance>, first_wait: Duration) {
        if inst.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (inst, changed) = (inst.clone(), self.changed.clone());
        let (min, max, connect_timeout) = (
            self.config.reconnect_backoff,
            self.config.reconnect_backoff_max,
            self.config.connect_timeout,
        );
        tokio::spawn(async move {
            let mut wait = first_wait;
            loop {
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                if inst.removed.load(Ordering::Relaxed) {
                    break;
                }
                let core = inst.core();
                let result = {
                    let _one_at_a_time = core.connecting.lock().await;
                    if core.lock().live.is_some() {
                        Ok(())
                    } else {
                        match tokio::time::timeout(connect_timeout, connect(core)).await {
                            Ok(r) => r,
                            Err(_) => Err(Error::Timeout(connect_timeout)),
                        }
                    }
                };
                match result {
                    Ok(()) => {
                        inst.up
                            .store(!inst.removed.load(Ordering::Relaxed), Ordering::Release);
                        debug!(instance = %inst.name, addr = %inst.addr, "instance up");
                        changed.notify_waiters();
                        break;
                    }
                    Err(e) => {
                        debug!(instance = %inst.name, error = %e, ?wait, "instance still unreachable");
                        wait = (wait * 2).clamp(min, max);
                    }
                }
            }
            inst.probing.store(false, Ordering::Release);
        });
    }

    /// Take `inst` out of the rotation until a reconnection works.
    fn eject(&self, inst: &Arc<Instance>, error: &Error) {
        if inst.up.swap(false, Ordering::AcqRel) {
            info!(instance = %inst.name, addr = %inst.addr, error = %error, "instance ejected");
        }
        if !inst.removed.load(Ordering::Relaxed) {
            self.probe(inst, self.config.reconnect_backoff);
        }
    }

    /// The connection of an instance picked for a call that stays on it (a stream).
    pub(super) fn pick_core(&self) -> Result<Arc<Core>, Error> {
        self.pick().map(|i| i.core().clone()).ok_or_else(|| {
            Error::Unavailable(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "no instance of the service is up",
            ))
        })
    }

    /// Power of two choices among the instances up.
    fn pick(&self) -> Option<Arc<Instance>> {
        let instances = self.read();
        let up: Vec<&Arc<Instance>> = instances
            .iter()
            .filter(|i| i.up.load(Ordering::Acquire))
            .collect();
        match up.len() {
            0 => None,
            1 => Some(up[0].clone()),
            n => {
                let r = self.random();
                let n64 = n as u64;
                let a = (r % n64) as usize;
                let b = (a + 1 + ((r >> 32) % (n64 - 1)) as usize) % n;
                let (a, b) = (up[a], up[b]);
                let ((la, wa), (lb, wb)) = (a.load(), b.load());
                let (ka, kb) = (la * wb, lb * wa);
                let (ea, eb) = (
                    a.ewma_ns.load(Ordering::Relaxed),
                    b.ewma_ns.load(Ordering::Relaxed),
                );
                // Latency breaks a tie only when it differs by more than a quarter: closer
                // than that it is noise (equal instances got 30/30/40 % of the calls when
                // any difference counted), and the first drawn, random, wins.
                let better = if ka != kb {
                    if ka < kb {
                        a
                    } else {
                        b
                    }
                } else if eb.saturating_mul(4) < ea.saturating_mul(3) {
                    b
                } else {
                    a
                };
                Some(better.clone())
            }
        }
    }

    /// An instance that is up, waiting for one until `until` if none is.
    async fn wait_pick(&self, until: Instant) -> Option<Arc<Instance>> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(inst) = self.pick() {
                return Some(inst);
            }
            if tokio::time::timeout_at(until, changed).await.is_err() {
                return None;
            }
        }
    }

    fn no_instance(&self) -> Error {
        let known = self.read().len();
        Error::Unavailable(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            if known == 0 {
                "no instance known".to_owned()
            } else {
                format!("none of the {known} instances is reachable")
            },
        ))
    }

    /// A call: picked, sent, and sent again elsewhere as the resend rule allows.
    pub(super) async fn call<P, R, D>(
        &self,
        method: &str,
        mut params: P,
        timeout: Duration,
        idempotent: bool,
        metadata: Option<&[u8]>,
    ) -> Result<R, Error>
    where
        P: Params,
        D: Decoder<R>,
    {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            // With no instance up, wait for one (a probe, or a new key) at most as long as
            // a connection attempt may take (or the whole timeout with `wait_for_ready`).
            let until = if self.config.wait_for_ready {
                deadline
            } else {
                deadline.min(Instant::now() + self.config.connect_timeout)
            };
            let Some(inst) = self.wait_pick(until).await else {
                return Err(if Instant::now() >= deadline {
                    Error::Timeout(timeout)
                } else {
                    last.unwrap_or_else(|| self.no_instance())
                });
            };
            inst.in_flight.fetch_add(1, Ordering::Relaxed);
            let counted = InFlight(&inst);
            let started = Instant::now();
            let sent =
                call_on::<P, R, D>(inst.core(), method, &mut params, deadline, timeout, metadata).await;
            drop(counted);
            let (failure, error) = match sent {
                Sent::Done(r) => {
                    if !matches!(r, Err(Error::Timeout(_))) {
                        inst.calls.fetch_add(1, Ordering::Relaxed);
                        let rtt = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                        let old = inst.ewma_ns.load(Ordering::Relaxed);
                        // Weight 1/8 on the newest sample.
                        let new = if old == 0 { rtt } else { old - old / 8 + rtt / 8 };
                        inst.ewma_ns.store(new, Ordering::Relaxed);
                    }
                    return r;
                }
                Sent::Failed(failure, error) => (failure, error),
            };
            self.eject(&inst, &error);
            let session = inst.core().session.is_some();
            if !may_resend(failure, session, idempotent) {
                return Err(error);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout(timeout));
            }
            debug!(method, instance = %inst.name, ?failure, "sending the call to another instance");
            last = Some(error);
        }
    }

    /// A notification, to one instance that is up.
    pub(super) async fn notify<P: Params>(
        &self,
        method: &str,
        params: P,
        deadline: Instant,
    ) -> Result<(), Error> {
        loop {
            let until = deadline.min(Instant::now() + self.config.connect_timeout);
            let Some(inst) = self.wait_pick(until).await else {
                return Err(self.no_instance());
            };
            if notify_on(inst.core(), method, &params)? {
                return Ok(());
            }
            self.eject(&inst, &Error::ConnectionClosed);
        }
    }

    fn states(&self) -> Vec<InstanceState> {
        self.read()
            .iter()
            .map(|i| InstanceState {
                name: i.name.clone(),
                addr: i.addr,
                weight: i.weight.load(Ordering::Relaxed),
                up: i.up.load(Ordering::Relaxed),
                in_flight: i.in_flight.load(Ordering::Relaxed),
                calls: i.calls.load(Ordering::Relaxed),
            })
            .collect()
    }
}

impl Client {
    /// A client that balances its calls over the servers at `addrs` (`host:port` each),
    /// with the default [`Config`]: one connection per server, each call to the less
    /// loaded of two picked at random; a server that fails is ejected and retried with
    /// backoff (see [`Client::instances`]).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), easyrpc_client::Error> {
    /// let client = easyrpc_client::Client::balanced(["10.0.0.5:25000", "10.0.0.6:25000"]).await?;
    /// // Idempotent calls lost with a server that died are sent to another.
    /// let sum: i64 = client.idempotent().call("add", (1, 2)).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// What is sent again to another instance: a call never sent, or refused by a server
    /// shutting down (it did not run); and a call lost with its connection when it is
    /// idempotent ([`Client::idempotent`]) or of a dedup session
    /// ([`Config::unstable_network`]). A call that is neither fails with
    /// [`Error::ConnectionClosed`], as with one server.
    ///
    /// **At-most-once and dedup sessions.** Each instance has a session of its own, and a
    /// server's dedup cache knows only its own sessions. A session's call whose connection
    /// drops goes back to the same instance (same msgid: answered from its cache if it ran)
    /// as long as that instance can be reached. If it cannot (it died), the call is sent to
    /// another instance, which has never seen it: the call may then run twice, once on the
    /// dead instance before it died and once on the new one. At-most-once holds per
    /// instance, not across a move; calls that must never run twice should not be balanced.
    ///
    /// # Errors
    ///
    /// When an address cannot be resolved, or none of the servers can be reached within
    /// [`Config::connect_timeout`] ([`Error::Unavailable`]).
    pub async fn balanced<I>(addrs: I) -> Result<Client, Error>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        Client::balanced_with(addrs, Config::default()).await
    }

    /// [`Client::balanced`] with `config` (used for every instance's connection).
    ///
    /// # Errors
    ///
    /// As [`Client::balanced`].
    pub async fn balanced_with<I>(addrs: I, config: Config) -> Result<Client, Error>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let pool = Pool::new(config)?;
        for addr in addrs {
            let name = addr.as_ref();
            let resolved = tokio::net::lookup_host(name).await?.next().ok_or_else(|| {
                Error::Transport(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{name}: no address"),
                ))
            })?;
            pool.upsert(name, resolved, 1);
        }
        let until = Instant::now() + pool.config.connect_timeout;
        if pool.wait_pick(until).await.is_none() {
            return Err(pool.no_instance());
        }
        Ok(Client::from_pool(pool))
    }

    pub(super) fn from_pool(pool: Arc<Pool>) -> Client {
        Client {
            timeout: pool.config.timeout,
            target: Target::Balanced(pool),
            idempotent: false,
            metadata: None,
        }
    }

    /// The instances of a balanced client ([`Client::balanced`], or `Client::discover`
    /// with the `etcd` feature) and their state; empty for a client of one server.
    pub fn instances(&self) -> Vec<InstanceState> {
        match &self.target {
            Target::One(_) => Vec::new(),
            Target::Balanced(pool) => pool.states(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn two_choices_follow_calls_in_flight_and_weights() {
        let pool = Pool::new(Config::default()).unwrap();
        // Nothing listens on these ports: the probes fail, and the test says who is up.
        for (port, weight) in [(1u16, 1u32), (2, 1), (3, 2)] {
            pool.upsert(
                &format!("i{port}"),
                SocketAddr::from(([127, 0, 0, 1], port)),
                weight,
            );
        }
        for inst in pool.read().iter() {
            inst.up.store(true, Ordering::Release);
        }
        let picks = |n| {
            let mut count = [0u32; 3];
            for _ in 0..n {
                let inst = pool.pick().unwrap();
                count[usize::from(inst.addr.port()) - 1] += 1;
            }
            count
        };
        // Idle: weight 2 wins every pair it is in (2 pairs of 3); the two of weight 1 tie.
        let [a, b, c] = picks(3000);
        assert!(c > 1800 && c < 2200, "{:?}", [a, b, c]);
        assert!(a > 300 && b > 300, "{:?}", [a, b, c]);
        // Busy: 10 calls in flight on i1 and it loses every draw.
        pool.read()[0].in_flight.store(10, Ordering::Relaxed);
        let [a, _, _] = picks(1000);
        assert_eq!(a, 0);
        // Down: never picked; none up: none.
        pool.read()[2].up.store(false, Ordering::Release);
        let [_, b, c] = picks(100);
        assert_eq!((b, c), (100, 0));
        for inst in pool.read().iter() {
            inst.up.store(false, Ordering::Release);
        }
        assert!(pool.pick().is_none());
    }
}
