//! TLS end to end: a CA, server and client certificates made here (rcgen), nothing checked
//! in. Both clients and both codecs call over TLS; mutual TLS accepts a client certificate
//! from the CA and refuses a client without one (or with one from another CA); an unknown
//! CA, a name mismatch and an expired server certificate are refused with their cause; a
//! plaintext client on the TLS port is closed while TLS clients are served.
//!
//! Every wait is bounded ([`within`]); nothing sleeps to synchronise. (The identity the
//! server reads from a client certificate is checked in `src/tls.rs`'s unit tests, through
//! the real handshake.)

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use easyrpc_client::{BlockingClient, Client, ClientTls, Codec, Config, Error, ErrorCode, TlsCause};
use easyrpc_server::{Method, Server, TlsConfig};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Await `fut`, failing the test if it takes longer than 10 s.
async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(10), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// A CA of the test's own, and certificates it issues.
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
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    fn issue(&self, cn: &str, sans: &[&str], edit: impl FnOnce(&mut CertificateParams)) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        edit(&mut params);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    fn server(&self) -> Leaf {
        self.issue("server", &["localhost"], |p| {
            p.subject_alt_names
                .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        })
    }

    fn client_tls(&self) -> ClientTls {
        ClientTls::from_ca_pem(self.pem.as_bytes()).unwrap()
    }
}

/// A running server; stopped when dropped.
struct Running {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

/// Serve `add` with `tls` on a port of its own (`Server::run_tls`).
async fn serve(tls: TlsConfig) -> Running {
    let server = Server::builder()
        .register(Method::sync_fn("add", |(a, b): (i64, i64)| a + b))
        // Large blobs are written vectored, through the TLS stream too.
        .register(Method::async_fn(
            "echo_blob",
            |(data,): (easyrpc_server::Blob,)| async move { data },
        ))
        // The client certificate's identity, as a handler sees it in its context.
        .register(Method::sync_context_fn(
            "identity",
            |ctx: easyrpc_server::Context, (): ()| {
                ctx.tls_identity().map(|i| (i.subject.clone(), i.sans.clone()))
            },
        ))
        .build()
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        server
            .run_tls(listener, tls, async {
                let _ = rx.await;
            })
            .await
    });
    Running { addr, _stop: stop }
}

fn tls_config(leaf: &Leaf) -> TlsConfig {
    TlsConfig::from_pem(leaf.cert.as_bytes(), leaf.key.as_bytes()).unwrap()
}

fn config(codec: Codec) -> Config {
    let mut config = Config::default();
    config.codec = codec;
    config
}

/// `add(2, 3)` with the async client, over a new connection.
async fn add_async(addr: &str, tls: ClientTls, config: Config) -> Result<i64, Error> {
    within("the async client", async {
        let client = Client::connect_tls_with(addr, tls, config).await?;
        client.call("add", (2, 3)).await
    })
    .await
}

/// `add(2, 3)` with the blocking client, over a new connection.
async fn add_blocking(addr: &str, tls: ClientTls, config: Config) -> Result<i64, Error> {
    let addr = addr.to_owned();
    let call = tokio::task::spawn_blocking(move || {
        let client = BlockingClient::connect_tls_with(&addr, tls, config)?;
        client.call("add", (2, 3))
    });
    within("the blocking client", call).await.unwrap()
}

/// The cause of a TLS error, or a panic naming what came instead.
fn cause(r: Result<i64, Error>) -> TlsCause {
    match r {
        Err(Error::Tls { cause, .. }) => cause,
        other => panic!("expected a TLS error, got {other:?}"),
    }
}

#[tokio::test]
async fn both_clients_and_both_codecs_over_tls() {
    let ca = Ca::new("test CA");
    let server = serve(tls_config(&ca.server())).await;
    // The server name from the address (an IP address the certificate names), and set.
    let by_ip = server.addr.to_string();
    let by_name = format!("localhost:{}", server.addr.port());
    for codec in [Codec::Msgpack, Codec::Bincode] {
        for addr in [&by_ip, &by_name] {
            assert_eq!(
                add_async(addr, ca.client_tls(), config(codec)).await.unwrap(),
                5,
                "{codec:?} {addr}"
            );
            assert_eq!(
                add_blocking(addr, ca.client_tls(), config(codec)).await.unwrap(),
                5,
                "{codec:?} {addr}"
            );
        }
        let tls = ca.client_tls().server_name("localhost");
        let client = within("connect", Client::connect_tls_with(&by_ip, tls, config(codec)))
            .await
            .unwrap();
        // Many calls in flight at once, on one TLS connection.
        let calls = (0..64).map(|i| {
            let client = client.clone();
            async move { client.call::<_, i64>("add", (i, 1)).await }
        });
        let sums = within("64 calls", futures_util::future::join_all(calls)).await;
        for (i, sum) in sums.into_iter().enumerate() {
            assert_eq!(sum.unwrap(), i as i64 + 1);
        }
        let e = within("nope", client.call::<_, i64>("nope", ()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::MethodNotFound));
    }
}

#[tokio::test]
async fn large_blobs_cross_tls_whole_both_ways() {
    let ca = Ca::new("test CA");
    let server = serve(tls_config(&ca.server())).await;
    let addr = server.addr.to_string();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 13 % 251) as u8).collect();
    for codec in [Codec::Msgpack, Codec::Bincode] {
        let client = within(
            "connect",
            Client::connect_tls_with(&addr, ca.client_tls(), config(codec)),
        )
        .await
        .unwrap();
        for n in [70_000, data.len()] {
            let blob = easyrpc_server::Blob::from(data[..n].to_vec());
            let got: easyrpc_server::Blob = within("echo", client.call("echo_blob", (blob,))).await.unwrap();
            assert!(got[..] == data[..n], "{codec:?} {n}");
        }
        let (addr, tls, data) = (addr.clone(), ca.client_tls(), data.clone());
        let blocking = tokio::task::spawn_blocking(move || {
            let client = BlockingClient::connect_tls_with(&addr, tls, config(codec)).unwrap();
            let got: easyrpc_server::Blob = client
                .call("echo_blob", (easyrpc_server::Blob::from(data.clone()),))
                .unwrap();
            assert!(got[..] == data[..], "blocking {codec:?}");
        });
        within("the blocking client", blocking).await.unwrap();
    }
}

#[tokio::test]
async fn mutual_tls_accepts_a_certificate_from_the_client_ca_and_refuses_the_rest() {
    let ca = Ca::new("test CA");
    let clients_ca = Ca::new("clients CA");
    let tls = tls_config(&ca.server())
        .client_ca_pem(clients_ca.pem.as_bytes())
        .unwrap();
    assert!(tls.requires_client_certificate());
    let server = serve(tls).await;
    let addr = server.addr.to_string();
    let alice = clients_ca.issue("alice", &["alice.example.com"], |_| {});
    let with_cert = || {
        ca.client_tls()
            .client_cert_pem(alice.cert.as_bytes(), alice.key.as_bytes())
            .unwrap()
    };
    for codec in [Codec::Msgpack, Codec::Bincode] {
        assert_eq!(add_async(&addr, with_cert(), config(codec)).await.unwrap(), 5);
        assert_eq!(add_blocking(&addr, with_cert(), config(codec)).await.unwrap(), 5);
        // The handler sees who the client is, in its context.
        let client = within(
            "connect",
            Client::connect_tls_with(&addr, with_cert(), config(codec)),
        )
        .await
        .unwrap();
        let who: Option<(String, Vec<String>)> =
            within("identity", client.call("identity", ())).await.unwrap();
        let (subject, sans) = who.expect("an identity on a mutual-TLS connection");
        assert!(subject.contains("CN=alice"), "{subject}");
        assert_eq!(sans, ["alice.example.com"], "{codec:?}");
        // No certificate: refused at connect (bincode says hello) or at the first call
        // (TLS 1.3 checks the client after the client's half of the handshake).
        assert_eq!(
            cause(add_async(&addr, ca.client_tls(), config(codec)).await),
            TlsCause::ClientCertificateRequired
        );
        assert_eq!(
            cause(add_blocking(&addr, ca.client_tls(), config(codec)).await),
            TlsCause::ClientCertificateRequired
        );
    }
    // A certificate from a CA the server does not trust.
    let mallory = ca.issue("mallory", &["mallory.example.com"], |_| {});
    let wrong = ca
        .client_tls()
        .client_cert_pem(mallory.cert.as_bytes(), mallory.key.as_bytes())
        .unwrap();
    assert_eq!(
        cause(add_async(&addr, wrong.clone(), Config::default()).await),
        TlsCause::ClientCertificateRefused
    );
    assert_eq!(
        cause(add_blocking(&addr, wrong, Config::default()).await),
        TlsCause::ClientCertificateRefused
    );
    // The server is still there for a good client.
    assert_eq!(add_async(&addr, with_cert(), Config::default()).await.unwrap(), 5);
}

#[tokio::test]
async fn server_certificate_problems_are_refused_with_their_cause() {
    let ca = Ca::new("test CA");
    let server = serve(tls_config(&ca.server())).await;
    let expired = serve(tls_config(&ca.issue("old", &["localhost"], |p| {
        p.not_before = rcgen::date_time_ymd(2000, 1, 1);
        p.not_after = rcgen::date_time_ymd(2001, 1, 1);
    })))
    .await;
    let addr = server.addr.to_string();
    let other_ca = Ca::new("another CA");
    let cases = [
        (addr.clone(), other_ca.client_tls(), TlsCause::UnknownIssuer),
        (
            addr.clone(),
            ca.client_tls().server_name("rpc.example.com"),
            TlsCause::NameMismatch,
        ),
        (
            format!("localhost:{}", expired.addr.port()),
            ca.client_tls(),
            TlsCause::Expired,
        ),
    ];
    for (addr, tls, expected) in cases {
        let e = add_async(&addr, tls.clone(), Config::default())
            .await
            .unwrap_err();
        assert!(e.to_string().starts_with("tls: "), "{e}");
        assert!(std::error::Error::source(&e).is_some(), "{e} keeps its source");
        assert_eq!(cause(Err(e)), expected, "async, {addr}");
        assert_eq!(
            cause(add_blocking(&addr, tls, Config::default()).await),
            expected,
            "blocking, {addr}"
        );
    }
}

#[tokio::test]
async fn a_plaintext_client_on_the_tls_port_is_closed_while_tls_clients_are_served() {
    let ca = Ca::new("test CA");
    let tls = tls_config(&ca.server()).handshake_timeout(Duration::from_millis(300));
    let server = serve(tls).await;
    let addr = server.addr.to_string();
    let client = within("connect", Client::connect_tls(&addr, ca.client_tls()))
        .await
        .unwrap();
    let sum: i64 = within("add", client.call("add", (1, 1))).await.unwrap();
    assert_eq!(sum, 2);

    // A plaintext request ([0, 1, "add", [2, 3]]): the handshake fails, the server closes.
    let mut plain = TcpStream::connect(server.addr).await.unwrap();
    plain
        .write_all(&[0x94, 0x00, 0x01, 0xa3, b'a', b'd', b'd', 0x92, 0x02, 0x03])
        .await
        .unwrap();
    within("the plaintext client to be closed", read_to_close(&mut plain)).await;
    // A client that sends nothing: closed at the handshake timeout.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    within("the silent client to be closed", read_to_close(&mut silent)).await;
    // A plaintext MessagePack-RPC client gets no answer, only the close.
    let e = within("a plaintext client's call", async {
        let c = Client::connect(server.addr).await?;
        c.call::<_, i64>("add", (2, 3)).await
    })
    .await
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::ConnectionClosed | Error::Protocol(_) | Error::Transport(_)
        ),
        "{e:?}"
    );

    // The TLS client connected before is still served, and new ones too.
    let sum: i64 = within("add", client.call("add", (2, 2))).await.unwrap();
    assert_eq!(sum, 4);
    assert_eq!(
        add_async(&addr, ca.client_tls(), Config::default())
            .await
            .unwrap(),
        5
    );
    assert_eq!(
        add_blocking(&addr, ca.client_tls(), Config::default())
            .await
            .unwrap(),
        5
    );
}

/// Read until the server closes the connection (end of stream or a reset); what it sends
/// first (a TLS alert) is ignored.
async fn read_to_close(stream: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// A TLS client whose server restarts reconnects with a new handshake.
#[tokio::test]
async fn a_reconnect_does_the_handshake_again() {
    let ca = Ca::new("test CA");
    let leaf = ca.server();
    let server = Server::builder()
        .register(Method::sync_fn("add", |(a, b): (i64, i64)| a + b))
        .tls(tls_config(&leaf))
        .build()
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = oneshot::channel::<()>();
    // Served by `Server::run`, with the builder's TLS.
    let first = tokio::spawn({
        let server = server.clone();
        async move {
            server
                .run(listener, async {
                    let _ = rx.await;
                })
                .await
        }
    });
    let mut config = Config::default();
    config.wait_for_ready = true;
    let client = within(
        "connect",
        Client::connect_tls_with(&addr.to_string(), ca.client_tls(), config),
    )
    .await
    .unwrap();
    let sum: i64 = within("add", client.call("add", (1, 2))).await.unwrap();
    assert_eq!(sum, 3);
    // Stop the server (the connection closes) and serve again on the same port.
    stop.send(()).unwrap();
    within("the server to stop", first).await.unwrap();
    let listener = TcpListener::bind(addr).await.unwrap();
    let (_stop, rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        server
            .run(listener, async {
                let _ = rx.await;
            })
            .await
    });
    let sum: i64 = within("add after the restart", client.idempotent().call("add", (3, 4)))
        .await
        .unwrap();
    assert_eq!(sum, 7);
}

/// The blocking client's check of an idle connection reads what the server sent (session
/// tickets, then `close_notify`) instead of peeking at the socket: a connection the server
/// closed as idle is replaced, and the call goes through. Real time, as the plain test in
/// `flow.rs`: the client checks a connection only after 1 s unused.
#[tokio::test]
async fn the_blocking_client_replaces_a_tls_connection_closed_as_idle() {
    let ca = Ca::new("test CA");
    let server = Server::builder()
        .register(Method::sync_fn("add", |(a, b): (i64, i64)| a + b))
        .heartbeat_timeout(Duration::from_millis(1200))
        .build()
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let tls = tls_config(&ca.server());
    let (_stop, rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        server
            .run_tls(listener, tls, async {
                let _ = rx.await;
            })
            .await
    });
    // A forwarder that says when the server closes a connection.
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = front.local_addr().unwrap().to_string();
    let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
    let mut accepted = 0usize;
    let (accepted_tx, accepted_rx) = std::sync::mpsc::channel();
    tokio::spawn(async move {
        while let Ok((client, _)) = front.accept().await {
            accepted += 1;
            let _ = accepted_tx.send(accepted);
            let server = TcpStream::connect(upstream).await.unwrap();
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move { tokio::io::copy(&mut cr, &mut sw).await });
                let _ = tokio::io::copy(&mut sr, &mut cw).await;
                let _ = closed_tx.send(());
            });
        }
    });

    let tls = ca.client_tls().server_name("localhost");
    let client = within(
        "connect",
        tokio::task::spawn_blocking(move || BlockingClient::connect_tls(&addr, tls).unwrap()),
    )
    .await
    .unwrap();
    let client = std::sync::Arc::new(client);
    let c = client.clone();
    let v: i64 = within("add", tokio::task::spawn_blocking(move || c.call("add", (1, 2))))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v, 3);
    within("the server to close the idle connection", closed.recv())
        .await
        .unwrap();
    let c = client.clone();
    let v: i64 = within("add", tokio::task::spawn_blocking(move || c.call("add", (3, 4))))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v, 7);
    assert_eq!(accepted_rx.try_iter().last(), Some(2), "one reconnect");
}
