//! `Client::discover` (feature `etcd`): the instances of a service, from a watch on its
//! prefix in etcd (`rpc/services/NAME/`), fed to the balanced client.
//!
//! The first read is done before `discover` returns (an etcd that cannot be reached then
//! is an error). A task then watches the prefix from the revision read: a new key adds
//! an instance, a deleted one (deregistered, or its lease expired) removes it. When etcd
//! goes away, the client keeps the instances it knows and goes on calling them; it
//! reconnects with backoff, reads every key again and watches from there.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use easyrpc_proto::discovery::{service_prefix, InstanceInfo};
use etcd_client::{Client as Etcd, ConnectOptions, EventType, GetOptions, WatchOptions};
use tracing::{debug, info, warn};

use super::balance::Pool;
use super::Client;
use crate::{Config, Error};

/// How long one etcd request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

impl Client {
    /// A balanced client (see [`Client::balanced`]) over the instances of `service`
    /// registered in etcd at `endpoints` (`http://host:2379`), with the default
    /// [`Config`]; it follows the instances as they come and go. Feature `etcd`.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), easyrpc_client::Error> {
    /// let client = easyrpc_client::Client::discover(["http://127.0.0.1:2379"], "calc").await?;
    /// let sum: i64 = client.idempotent().call("add", (1, 2)).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// An instance whose key is deleted (its server shut down gracefully) or expires (it
    /// crashed: one lease TTL later) leaves the rotation; one whose connection fails is
    /// ejected at once and retried with backoff while its key is there. While etcd cannot
    /// be reached, calls go on to the instances known.
    ///
    /// # Errors
    ///
    /// [`Error::Discovery`] when etcd cannot be reached or read at start-up. No instance
    /// registered is not an error: calls wait for one up to [`Config::connect_timeout`].
    pub async fn discover<E: AsRef<str>>(endpoints: impl AsRef<[E]>, service: &str) -> Result<Client, Error> {
        Client::discover_with(endpoints, service, Config::default()).await
    }

    /// [`Client::discover`] with `config` (used for every instance's connection).
    ///
    /// # Errors
    ///
    /// As [`Client::discover`].
    pub async fn discover_with<E: AsRef<str>>(
        endpoints: impl AsRef<[E]>,
        service: &str,
        config: Config,
    ) -> Result<Client, Error> {
        let endpoints: Vec<String> = endpoints.as_ref().iter().map(|e| e.as_ref().to_owned()).collect();
        let prefix = service_prefix(service);
        let pool = Pool::new(config)?;
        let (etcd, revision) = read_all(&endpoints, &prefix, &pool).await.map_err(|cause| {
            Error::Discovery(format!(
                "reading {prefix:?} from etcd at {}: {cause}",
                endpoints.join(",")
            ))
        })?;
        let task = tokio::spawn(follow(Arc::downgrade(&pool), endpoints, prefix, etcd, revision));
        pool.set_task(task.abort_handle());
        Ok(Client::from_pool(pool))
    }
}

/// The instances registered under `prefix` now: (name, address, weight) each.
pub(crate) async fn read_instances(
    endpoints: &[String],
    prefix: &str,
) -> Result<Vec<(String, SocketAddr, u32)>, String> {
    let (_, _, all) = read(endpoints, prefix).await?;
    Ok(all)
}

/// Connect and read every key under `prefix` into the pool; returns the client and the
/// revision read.
async fn read_all(endpoints: &[String], prefix: &str, pool: &Pool) -> Result<(Etcd, i64), String> {
    let (etcd, revision, all) = read(endpoints, prefix).await?;
    pool.replace_all(&all);
    Ok((etcd, revision))
}

/// Connect and read every key under `prefix`.
async fn read(
    endpoints: &[String],
    prefix: &str,
) -> Result<(Etcd, i64, Vec<(String, SocketAddr, u32)>), String> {
    let read = async {
        let options = ConnectOptions::new().with_connect_timeout(REQUEST_TIMEOUT);
        let mut etcd = Etcd::connect(endpoints, Some(options)).await?;
        let resp = etcd.get(prefix, Some(GetOptions::new().with_prefix())).await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let all: Vec<_> = resp
            .kvs()
            .iter()
            .filter_map(|kv| instance(prefix, kv.key(), kv.value()))
            .collect();
        Ok::<_, etcd_client::Error>((etcd, revision, all))
    };
    match tokio::time::timeout(REQUEST_TIMEOUT * 2, read).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {:?}", REQUEST_TIMEOUT * 2)),
    }
}

/// An instance from its key and value; `None` (logged) for a value that is not one.
fn instance(prefix: &str, key: &[u8], value: &[u8]) -> Option<(String, SocketAddr, u32)> {
    let name = String::from_utf8_lossy(key.strip_prefix(prefix.as_bytes())?).into_owned();
    let info: InstanceInfo = match serde_json::from_slice(value) {
        Ok(info) => info,
        Err(e) => {
            warn!(key = %String::from_utf8_lossy(key), error = %e, "not an instance: ignored");
            return None;
        }
    };
    // A name is resolved once, when the key is read.
    let Some(addr) = std::net::ToSocketAddrs::to_socket_addrs(&info.addr)
        .ok()
        .and_then(|mut a| a.next())
    else {
        warn!(key = %String::from_utf8_lossy(key), addr = %info.addr, "instance address does not resolve: ignored");
        return None;
    };
    Some((name, addr, info.weight))
}

/// Watch `prefix` from `revision` and apply what changes; when the watch fails, keep the
/// instances, reconnect with backoff, read everything again and watch from there.
async fn follow(pool: Weak<Pool>, endpoints: Vec<String>, prefix: String, etcd: Etcd, revision: i64) {
    let mut current = Some((etcd, revision));
    let mut backoff = Duration::from_millis(100);
    loop {
        if let Some((etcd, revision)) = current.take() {
            let e = watch(&pool, etcd, &prefix, revision).await;
            if pool.strong_count() == 0 {
                return;
            }
            warn!(prefix = %prefix, error = %e, "etcd watch lost: keeping the instances known");
        }
        let Some(strong) = pool.upgrade() else { return };
        match read_all(&endpoints, &prefix, &strong).await {
            Ok(again) => {
                info!(prefix = %prefix, "etcd watch back");
                current = Some(again);
                backoff = Duration::from_millis(100);
            }
            Err(e) => {
                debug!(error = %e, ?backoff, "etcd still away");
                drop(strong);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Apply the watch's events until it fails; returns why.
async fn watch(pool: &Weak<Pool>, mut etcd: Etcd, prefix: &str, revision: i64) -> String {
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let mut stream = match tokio::time::timeout(REQUEST_TIMEOUT, etcd.watch(prefix, Some(options))).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return e.to_string(),
        Err(_) => return "no answer to the watch".into(),
    };
    loop {
        let resp = match stream.message().await {
            Ok(Some(resp)) => resp,
            Ok(None) => return "the watch ended".into(),
            Err(e) => return e.to_string(),
        };
        if resp.canceled() {
            return format!("the watch was cancelled: {}", resp.cancel_reason());
        }
        let Some(pool) = pool.upgrade() else {
            return "client dropped".into();
        };
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            match event.event_type() {
                EventType::Put => {
                    if let Some((name, addr, weight)) = instance(prefix, kv.key(), kv.value()) {
                        pool.upsert(&name, addr, weight);
                    }
                }
                EventType::Delete => {
                    if let Some(name) = kv.key().strip_prefix(prefix.as_bytes()) {
                        pool.remove(&String::from_utf8_lossy(name));
                    }
                }
            }
        }
    }
}
