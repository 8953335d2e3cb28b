//! `#[easyrpc::service]` on impl blocks: every `pub` method taking `&self` served with the
//! instance shared, the generated `{Type}Client` and `{Type}BlockingClient`, prefixes and
//! per-method options, against a real server with both codecs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use easyrpc::{BlockingClient, Builder, Client, ClientConfig, Codec, Context, ErrorCode, Server, State};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(10);

/// A key-value store, served under the prefix `kv`.
#[derive(Debug, Default)]
pub struct Kv {
    map: Mutex<HashMap<String, String>>,
    writes: AtomicU64,
}

#[easyrpc::service(prefix = "kv")]
impl Kv {
    /// Make one (not served: no `self`).
    pub fn new() -> Kv {
        Kv::default()
    }

    /// Sets `key`; returns the old value. Sync: on the blocking pool.
    pub fn put(&self, key: String, value: String) -> Option<String> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.map.lock().unwrap().insert(key, value)
    }

    /// The value of `key`.
    pub async fn get(&self, key: String) -> Option<String> {
        tokio::task::yield_now().await;
        self.map.lock().unwrap().get(&key).cloned()
    }

    /// How many writes so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// Context and state work in methods too.
    pub fn describe(&self, ctx: Context, greeting: State<String>) -> String {
        format!(
            "{} {} from {}",
            *greeting,
            ctx.method(),
            self.map.lock().unwrap().len()
        )
    }

    /// Renamed, and limited.
    #[rpc(name = "kv_size", max_flow = 1)]
    pub async fn size(&self) -> usize {
        self.map.lock().unwrap().len()
    }

    /// A typed error, as for `#[register]`.
    pub async fn must_get(&self, key: String) -> Result<String, KvError> {
        self.map
            .lock()
            .unwrap()
            .get(&key)
            .cloned()
            .ok_or(KvError::Missing(key))
    }

    /// Not served: private.
    fn helper(&self) -> usize {
        self.map.lock().unwrap().len()
    }
}

/// The error of `Kv::must_get`.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum KvError {
    /// No such key.
    Missing(String),
}

impl std::fmt::Display for KvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KvError::Missing(k) => write!(f, "no key {k}"),
        }
    }
}

/// A service without a prefix, whose method holds its one `max_flow` slot until told.
#[derive(Debug)]
pub struct Gate {
    entered: Semaphore,
    release: Semaphore,
}

#[easyrpc::service]
impl Gate {
    /// Waits for a release; at most one at once.
    #[rpc(max_flow = 1)]
    pub async fn pass(&self, n: u32) -> u32 {
        self.entered.add_permits(1);
        self.release.acquire().await.unwrap().forget();
        n
    }
}

fn builder() -> Builder {
    Server::builder().service(Kv::new()).state("hello".to_string())
}

async fn start(builder: Builder) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = builder.build().unwrap();
    tokio::spawn(async move { server.run(listener, std::future::pending()).await });
    addr
}

fn config(codec: Codec) -> ClientConfig {
    let mut c = ClientConfig::default();
    c.codec = codec;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_are_served_under_the_prefix_with_the_instance_shared() {
    let addr = start(builder()).await;
    for (i, codec) in [Codec::Msgpack, Codec::Bincode].into_iter().enumerate() {
        let kv = KvClient::new(Client::connect_with(addr, config(codec)).await.unwrap());
        let key = format!("k{i}");
        assert_eq!(kv.put(key.clone(), "1".into()).await.unwrap(), None);
        assert_eq!(kv.put(key.clone(), "2".into()).await.unwrap(), Some("1".into()));
        assert_eq!(kv.get(key.clone()).await.unwrap(), Some("2".into()));
        assert_eq!(kv.size().await.unwrap(), i + 1);
        assert_eq!(
            kv.describe().await.unwrap(),
            format!("hello kv.describe from {}", i + 1)
        );
        // The blocking client, on the same instance.
        let blocking = tokio::task::spawn_blocking(move || {
            let kv = KvBlockingClient::new(BlockingClient::connect_with(addr, config(codec)).unwrap());
            (kv.get(key).unwrap(), kv.writes().unwrap())
        })
        .await
        .unwrap();
        assert_eq!(blocking, (Some("2".into()), 2 * (i as u64 + 1)));
    }
    // By name: the prefix, the rename; the constructor and private methods are not served.
    let client = Client::connect(addr).await.unwrap();
    let v: Option<String> = client.call("kv.get", ("k0",)).await.unwrap();
    assert_eq!(v.as_deref(), Some("2"));
    let n: usize = client.call("kv_size", ()).await.unwrap();
    assert_eq!(n, 2);
    for missing in ["kv.new", "kv.helper", "kv.size", "get", "new"] {
        let e = client.call::<_, easyrpc::Value>(missing, ()).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::MethodNotFound), "{missing}: {e}");
    }
    // The methods are plain methods still.
    let kv = Kv::new();
    assert_eq!(kv.put("a".into(), "b".into()), None);
    assert_eq!(kv.helper(), 1);
}

#[tokio::test]
async fn per_method_options_apply() {
    let gate = Gate {
        entered: Semaphore::new(0),
        release: Semaphore::new(0),
    };
    let gate = std::sync::Arc::new(gate);
    let addr = start(Server::builder().service_arc(gate.clone())).await;
    let client = GateClient::new(Client::connect(addr).await.unwrap());
    let first = tokio::spawn({
        let client = client.clone();
        async move { client.pass(1).await }
    });
    timeout(LIMIT, gate.entered.acquire())
        .await
        .unwrap()
        .unwrap()
        .forget();
    // The one slot is taken: the second call is refused at once.
    let e = client.pass(2).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Overloaded), "{e}");
    gate.release.add_permits(1);
    assert_eq!(timeout(LIMIT, first).await.unwrap().unwrap().unwrap(), 1);
}

#[test]
fn a_service_missing_its_state_fails_the_build() {
    let e = Server::builder().service(Kv::new()).build().unwrap_err();
    assert!(e.to_string().contains("kv.describe"), "{e}");
}
