//! The same server over a Unix-domain socket: both clients and both codecs call it, a stale
//! socket file is replaced, a live one is refused, the file has the configured mode and is
//! removed when the server stops. The connection code is the TCP one: the protocol does
//! not know the transport.
#![cfg(unix)]

use easyrpc_client::{BlockingClient, Client, Codec, Config, Error, ErrorCode};
use easyrpc_server::{Method, Server};
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Await `fut`, failing the test if it takes longer than 10 s.
async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(10), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// A socket path in a fresh directory of its own.
fn socket_path(name: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("rpc-unix-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    (dir.join("rpc.sock"), dir)
}

/// Serve `add` on `path`; returns once the socket file exists.
async fn serve(path: &Path, mode: Option<u32>) -> (oneshot::Sender<()>, JoinHandle<std::io::Result<()>>) {
    let mut builder = Server::builder()
        .register(Method::sync_fn("add", |(a, b): (i64, i64)| a + b))
        // The peer's credentials, as a handler sees them (SO_PEERCRED).
        .register(Method::sync_context_fn(
            "peer",
            |ctx: easyrpc_server::Context, (): ()| match ctx.peer() {
                easyrpc_server::Peer::Unix { uid, gid, pid } => (*uid, *gid, *pid, ctx.listener().to_owned()),
                other => panic!("not a Unix peer: {other}"),
            },
        ));
    if let Some(mode) = mode {
        builder = builder.unix_socket_mode(mode);
    }
    let server = builder.build().unwrap();
    let (stop, rx) = oneshot::channel::<()>();
    let path = path.to_owned();
    let task = tokio::spawn(async move {
        server
            .run_unix(&path, async {
                let _ = rx.await;
            })
            .await
    });
    (stop, task)
}

/// Connect with the async client, retrying while the server task has not bound yet (it is
/// spawned; `Unavailable` until the file exists), within the test bound.
async fn connect(path: &Path, config: Config) -> Client {
    within("the server to listen", async {
        loop {
            match Client::connect_unix_with(path, config.clone()).await {
                Ok(c) => return c,
                Err(Error::Unavailable(_)) => tokio::task::yield_now().await,
                Err(e) => panic!("connect: {e}"),
            }
        }
    })
    .await
}

#[tokio::test]
async fn both_clients_and_both_codecs_over_a_unix_socket() {
    let (path, dir) = socket_path("calls");
    let (stop, task) = serve(&path, None).await;
    for codec in [Codec::Msgpack, Codec::Bincode] {
        let mut config = Config::default();
        config.codec = codec;
        config.our_server = true; // no hello with msgpack: say the codes are ours
        let client = connect(&path, config.clone()).await;
        let v: i64 = within("add", client.call("add", (2, 3))).await.unwrap();
        assert_eq!(v, 5, "{codec:?}");
        let (uid, gid, pid, listener): (Option<u32>, Option<u32>, Option<i32>, String) =
            within("peer", client.call("peer", ())).await.unwrap();
        // /proc/self belongs to this process's effective user and group.
        let me = std::fs::metadata("/proc/self").unwrap();
        assert_eq!(uid, Some(std::os::unix::fs::MetadataExt::uid(&me)));
        assert_eq!(gid, Some(std::os::unix::fs::MetadataExt::gid(&me)));
        assert_eq!(pid, Some(std::process::id() as i32));
        assert_eq!(listener, format!("unix:{}", path.display()));
        let e = within("nope", client.call::<_, i64>("nope", ()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::MethodNotFound));
        let p = path.clone();
        let v = within(
            "blocking add",
            tokio::task::spawn_blocking(move || {
                let c = BlockingClient::connect_unix_with(&p, config).unwrap();
                c.call::<_, i64>("add", (40, 2))
            }),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(v, 42, "{codec:?}");
    }
    // The default mode: owner and group.
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);

    // A second server on the same live socket is refused, and leaves the first alone.
    let second = Server::builder().build().unwrap();
    let e = second.run_unix(&path, async {}).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
    assert!(path.exists());

    // Graceful shutdown removes the file; then a call is refused at once.
    stop.send(()).unwrap();
    within("the server to stop", task).await.unwrap().unwrap();
    assert!(!path.exists(), "the socket file is removed at shutdown");
    let e = Client::connect_unix(&path).await.unwrap_err();
    assert!(matches!(e, Error::Unavailable(_)), "{e:?}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_stale_socket_file_is_replaced_and_the_mode_is_set() {
    let (path, dir) = socket_path("stale");
    // A socket file whose server is gone: bound, then the listener dropped (the file
    // stays, and connecting to it is refused).
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let (stop, task) = serve(&path, Some(0o600)).await;
    let client = connect(&path, Config::default()).await;
    let v: i64 = within("add", client.call("add", (1, 1))).await.unwrap();
    assert_eq!(v, 2);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    stop.send(()).unwrap();
    within("the server to stop", task).await.unwrap().unwrap();

    // A path that is another kind of file is never removed.
    std::fs::write(&path, b"not a socket").unwrap();
    let server = Server::builder().build().unwrap();
    let e = server.run_unix(&path, async {}).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists, "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
    std::fs::remove_dir_all(dir).unwrap();
}
