//! One server on several listeners at once (TCP, TLS and a Unix socket), and the rules of
//! who may connect and call what (issue 12).
//!
//! What each test shows: calls over all three transports reach the same methods, each
//! call's context names its listener, and `admin_*` methods are served over the Unix
//! socket only (12 "permission denied" over TCP and TLS); one connection limit covers
//! every listener; graceful shutdown stops every listener at once, lets the calls running
//! on each finish, and removes the socket file; a CIDR rule closes a TCP connection at
//! once while the Unix socket is still served; a rule on the client certificate's names
//! decides after the TLS handshake; and no listener is an error.
//!
//! Certificates are made here (rcgen). Every wait is bounded ([`within`]); nothing sleeps
//! to synchronise (handlers report that they run over a channel and wait on a semaphore
//! the test holds).
#![cfg(unix)]

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use easyrpc_client::{Client, ClientTls, Codec, Config, ErrorCode};
use easyrpc_server::rules::{Match, Rules};
use easyrpc_server::{Context, Error, Listening, LocalAddr, Method, Server, TlsConfig, Transport};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Await `fut`, failing the test if it takes longer than 10 s.
async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(10), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Retry `attempt` until it gives `Some`, within the test bound (a condition the server
/// reaches on its own: a connection's task ending after its client left).
async fn eventually<T, F: Future<Output = Option<T>>>(what: &str, mut attempt: impl FnMut() -> F) -> T {
    within(what, async {
        loop {
            if let Some(v) = attempt().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

/// A CA of the test's own.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM.
struct Leaf {
    cert: String,
    key: String,
}

impl Ca {
    fn new() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "listeners test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    fn issue(&self, cn: &str, sans: &[&str]) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn server_tls(&self) -> TlsConfig {
        let leaf = self.issue("server", &["localhost"]);
        TlsConfig::from_pem(leaf.cert.as_bytes(), leaf.key.as_bytes()).unwrap()
    }

    fn client_tls(&self) -> ClientTls {
        ClientTls::from_ca_pem(self.pem.as_bytes()).unwrap()
    }
}

/// A socket path in a fresh directory of its own.
fn socket_path(name: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("rpc-listeners-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    (dir.join("rpc.sock"), dir)
}

fn config(codec: Codec) -> Config {
    let mut config = Config::default();
    config.codec = codec;
    config.timeout = Duration::from_secs(10);
    config
}

/// A server's three listeners, as bound.
struct Addrs {
    tcp: String,
    tls: String,
    unix: PathBuf,
}

fn addrs(listening: &Listening) -> Addrs {
    let local = listening.local_addrs();
    assert_eq!(local.len(), 3, "{local:?}");
    assert_eq!(
        local.iter().map(LocalAddr::transport).collect::<Vec<_>>(),
        [Transport::Tcp, Transport::Tls, Transport::Unix]
    );
    Addrs {
        tcp: local[0].socket_addr().unwrap().to_string(),
        tls: local[1].socket_addr().unwrap().to_string(),
        unix: local[2].unix_path().unwrap().to_owned(),
    }
}

/// The methods of these tests: `add`, `where` (the listener the call arrived on, from its
/// context) and `admin_stats`.
fn builder() -> easyrpc_server::Builder {
    Server::builder()
        .register(Method::sync_fn("add", |(a, b): (i64, i64)| a + b))
        .register(Method::sync_context_fn("where", |ctx: Context, (): ()| {
            ctx.listener().to_owned()
        }))
        .register(Method::async_fn("admin_stats", |(): ()| async { 42u32 }))
}

/// Serve `listening` until the returned sender is dropped or fires.
fn serve(listening: Listening) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(listening.serve(async {
        let _ = rx.await;
    }));
    (stop, task)
}

/// One connection of each kind.
async fn clients(addrs: &Addrs, ca: &Ca, codec: Codec) -> [(Transport, Client); 3] {
    let tcp = Client::connect_with(addrs.tcp.as_str(), config(codec));
    let tls = Client::connect_tls_with(&addrs.tls, ca.client_tls(), config(codec));
    let unix = Client::connect_unix_with(&addrs.unix, config(codec));
    [
        (Transport::Tcp, within("tcp connect", tcp).await.unwrap()),
        (Transport::Tls, within("tls connect", tls).await.unwrap()),
        (Transport::Unix, within("unix connect", unix).await.unwrap()),
    ]
}

#[tokio::test]
async fn tcp_tls_and_unix_at_once_with_admin_methods_on_the_unix_socket_only() {
    let ca = Ca::new();
    let (path, dir) = socket_path("all");
    let listening = builder()
        .listen("127.0.0.1:0")
        .listen_tls("127.0.0.1:0", ca.server_tls())
        .listen(format!("unix:{}", path.display()))
        .rules(Rules::new().methods_only("admin_*", Match::any().on(Transport::Unix)))
        .bind()
        .await
        .unwrap();
    let addrs = addrs(&listening);
    let names: Vec<String> = listening.local_addrs().iter().map(ToString::to_string).collect();
    assert_eq!(names[2], format!("unix:{}", path.display()));
    let (stop, task) = serve(listening);

    for codec in [Codec::Msgpack, Codec::Bincode] {
        for (i, (transport, client)) in clients(&addrs, &ca, codec).await.into_iter().enumerate() {
            let what = format!("{transport} {codec:?}");
            let sum: i64 = within(&what, client.call("add", (2, 3))).await.unwrap();
            assert_eq!(sum, 5, "{what}");
            let listener: String = within(&what, client.call("where", ())).await.unwrap();
            assert_eq!(
                listener, names[i],
                "{what}: the call's context names its listener"
            );
            let stats = within(&what, client.call::<_, u32>("admin_stats", ())).await;
            if transport == Transport::Unix {
                assert_eq!(stats.unwrap(), 42, "{what}");
            } else {
                let e = stats.unwrap_err();
                let remote = e.remote().unwrap_or_else(|| panic!("{what}: {e:?}"));
                assert_eq!(remote.kind(), ErrorCode::PermissionDenied, "{what}: {e}");
                assert_eq!(remote.code, 12);
                // The connection goes on.
                let sum: i64 = within(&what, client.call("add", (1, 1))).await.unwrap();
                assert_eq!(sum, 2, "{what}");
            }
            // Reserved methods are never refused.
            within(&what, client.call::<_, ()>("rpc.ping", ())).await.unwrap();
        }
    }
    drop(stop);
    within("the server to stop", task).await.unwrap();
    assert!(!path.exists(), "the socket file is removed at shutdown");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn one_connection_limit_covers_every_listener() {
    let ca = Ca::new();
    let (path, dir) = socket_path("limit");
    let listening = builder()
        .max_connections(2)
        .listen("127.0.0.1:0")
        .listen_tls("127.0.0.1:0", ca.server_tls())
        .listen_unix(&path)
        .bind()
        .await
        .unwrap();
    let addrs = addrs(&listening);
    let (_stop, _task) = serve(listening);

    let tcp = within(
        "tcp",
        Client::connect_with(addrs.tcp.as_str(), config(Codec::Msgpack)),
    )
    .await
    .unwrap();
    let unix = within(
        "unix",
        Client::connect_unix_with(&addrs.unix, config(Codec::Msgpack)),
    )
    .await
    .unwrap();
    // Both hold their permits once a call has been answered on each.
    assert_eq!(
        within("tcp add", tcp.call::<_, i64>("add", (1, 2)))
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        within("unix add", unix.call::<_, i64>("add", (1, 2)))
            .await
            .unwrap(),
        3
    );
    // A third connection, on the third listener, is one too many.
    let third = within("tls over the limit", async {
        let client = Client::connect_tls_with(&addrs.tls, ca.client_tls(), config(Codec::Msgpack)).await?;
        client.call::<_, i64>("add", (1, 2)).await
    })
    .await;
    assert!(third.is_err(), "a third connection is refused: {third:?}");
    // One leaves: a TLS connection gets in (once the server has seen it leave).
    drop(unix);
    let sum = eventually("a permit to come back", || async {
        let client = Client::connect_tls_with(&addrs.tls, ca.client_tls(), config(Codec::Msgpack))
            .await
            .ok()?;
        client.call::<_, i64>("add", (20, 22)).await.ok()
    })
    .await;
    assert_eq!(sum, 42);
    drop(tcp);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn graceful_shutdown_covers_every_listener() {
    let ca = Ca::new();
    let (path, dir) = socket_path("shutdown");
    // `hold` reports that it runs, then waits for a permit the test gives.
    let gate = Arc::new(Semaphore::new(0));
    let (started_tx, mut started) = mpsc::unbounded_channel::<()>();
    let hold = {
        let gate = gate.clone();
        Method::async_fn("hold", move |(n,): (u32,)| {
            let (gate, started) = (gate.clone(), started_tx.clone());
            async move {
                let _ = started.send(());
                gate.acquire().await.unwrap().forget();
                n
            }
        })
    };
    let listening = builder()
        .register(hold)
        .grace_period(Duration::from_secs(20))
        .listen("127.0.0.1:0")
        .listen_tls("127.0.0.1:0", ca.server_tls())
        .listen_unix(&path)
        .bind()
        .await
        .unwrap();
    let addrs = addrs(&listening);
    let (stop, task) = serve(listening);

    let mut calls = Vec::new();
    for (i, (transport, client)) in clients(&addrs, &ca, Codec::Msgpack).await.into_iter().enumerate() {
        calls.push(tokio::spawn(async move {
            let r = client.call::<_, u32>("hold", (i as u32,)).await;
            (transport, r)
        }));
    }
    for _ in 0..3 {
        within("a call to start", started.recv()).await.unwrap();
    }
    stop.send(()).unwrap();
    // Every listener stops accepting; the socket file goes.
    eventually("the TCP listener to close", || async {
        tokio::net::TcpStream::connect(&addrs.tcp)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    eventually("the TLS listener to close", || async {
        tokio::net::TcpStream::connect(&addrs.tls)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    eventually("the socket file to go", || async {
        (!path.exists()).then_some(())
    })
    .await;
    assert!(!task.is_finished(), "the calls still run");
    // The calls running on every listener finish, and are answered.
    gate.add_permits(3);
    for (i, call) in calls.into_iter().enumerate() {
        let (transport, r) = within("a held call", call).await.unwrap();
        assert_eq!(r.unwrap(), i as u32, "{transport}");
    }
    within("the server to stop", task).await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_cidr_rule_closes_a_tcp_connection_at_once_and_the_unix_socket_is_still_served() {
    let (path, dir) = socket_path("cidr");
    let rules = Rules::new()
        .allow(Match::any().from("10.0.0.0/8".parse().unwrap()))
        .deny(Match::any().on(Transport::Tcp).on(Transport::Tls));
    let listening = builder()
        .listen("127.0.0.1:0")
        .listen_unix(&path)
        .rules(rules)
        .bind()
        .await
        .unwrap();
    let tcp = listening.local_addrs()[0].socket_addr().unwrap();
    let (_stop, _task) = serve(listening);

    // Closed without a byte.
    let mut raw = within("connect", tokio::net::TcpStream::connect(tcp))
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let n = within("the refused connection to close", raw.read(&mut buf)).await;
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    // Our client: the call fails.
    let r = within("a call over a refused connection", async {
        let client = Client::connect_with(tcp, config(Codec::Msgpack)).await?;
        client.call::<_, i64>("add", (1, 2)).await
    })
    .await;
    assert!(r.is_err(), "{r:?}");
    // The Unix socket is not matched by either rule.
    let unix = within("unix", Client::connect_unix_with(&path, config(Codec::Msgpack)))
        .await
        .unwrap();
    assert_eq!(
        within("unix add", unix.call::<_, i64>("add", (1, 2)))
            .await
            .unwrap(),
        3
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_rule_on_the_client_certificate_decides_after_the_handshake() {
    let ca = Ca::new();
    let tls = ca.server_tls().client_ca_pem(ca.pem.as_bytes()).unwrap();
    let rules = Rules::new()
        .allow(Match::any().tls_san("*.ops.example.com"))
        .deny(Match::any().on(Transport::Tls))
        .methods_only("admin_*", Match::any().tls_subject("CN=root*"));
    let listening = builder()
        .listen_tls("127.0.0.1:0", tls)
        .rules(rules)
        .bind()
        .await
        .unwrap();
    let addr = listening.local_addrs()[0].socket_addr().unwrap().to_string();
    let (_stop, _task) = serve(listening);
    let with_cert = |leaf: &Leaf| {
        ca.client_tls()
            .client_cert_pem(leaf.cert.as_bytes(), leaf.key.as_bytes())
            .unwrap()
    };
    let call = |tls: ClientTls, method: &'static str| {
        let addr = addr.clone();
        async move {
            let client = Client::connect_tls_with(&addr, tls, config(Codec::Msgpack)).await?;
            client.call::<_, u32>(method, ()).await
        }
    };

    let root = with_cert(&ca.issue("root-1", &["a.ops.example.com"]));
    assert_eq!(within("root", call(root, "admin_stats")).await.unwrap(), 42);
    let alice = with_cert(&ca.issue("alice", &["alice.ops.example.com"]));
    let e = within("alice", call(alice, "admin_stats")).await.unwrap_err();
    assert_eq!(
        e.remote().map(|r| r.kind()),
        Some(ErrorCode::PermissionDenied),
        "{e}"
    );
    let eve = with_cert(&ca.issue("eve", &["eve.example.com"]));
    let e = within("eve", call(eve, "admin_stats")).await.unwrap_err();
    assert!(
        e.remote().is_none(),
        "eve's connection is closed, not answered: {e:?}"
    );
}

#[tokio::test]
async fn no_listener_is_an_error() {
    let e = builder().serve_listeners(async {}).await.unwrap_err();
    assert!(matches!(e, Error::NoListener), "{e:?}");
    let e = builder()
        .listen("unix:/nonexistent-dir/x.sock")
        .bind()
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("unix:/nonexistent-dir/x.sock"),
        "the error names the listener: {e}"
    );
}
