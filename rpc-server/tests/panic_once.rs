//! A handler panic is logged once: by the server, through tracing, with the panic's
//! message and location; the panic hook that was installed before (the default one prints
//! to stderr) is not called for it, and still is for a panic outside any handler.
//!
//! Its own test binary: the server installs its panic hook once per process, wrapping the
//! hook in place when the first server is built.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use easyrpc_client::{BlockingClient, Client, ErrorCode};
use easyrpc_server::{Method, Server};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_handler_panic_is_logged_once_with_its_location() {
    // The hook "before" the server: counts what reaches it.
    static HOOK_CALLS: AtomicUsize = AtomicUsize::new(0);
    std::panic::set_hook(Box::new(|_| {
        HOOK_CALLS.fetch_add(1, Ordering::SeqCst);
    }));
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let server = Server::builder()
            .register(Method::async_fn("boom_async", |(): ()| async move {
                if true {
                    panic!("async kaboom");
                }
                0u8
            }))
            .register(Method::sync_fn("boom_sync", |(): ()| -> u8 {
                panic!("sync kaboom")
            }))
            .build()
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { server.run(listener, std::future::pending()).await });
        let client = Client::connect(addr).await.unwrap();
        for method in ["boom_async", "boom_sync"] {
            let e = tokio::time::timeout(Duration::from_secs(10), client.call::<_, u8>(method, ()))
                .await
                .unwrap()
                .unwrap_err();
            assert_eq!(e.code(), Some(ErrorCode::HandlerPanicked), "{e}");
        }
        let blocking = tokio::task::spawn_blocking(move || {
            BlockingClient::connect(addr)
                .unwrap()
                .call::<_, u8>("boom_sync", ())
                .unwrap_err()
        })
        .await
        .unwrap();
        assert_eq!(blocking.code(), Some(ErrorCode::HandlerPanicked));
    });
    assert_eq!(
        HOOK_CALLS.load(Ordering::SeqCst),
        0,
        "the previous hook saw a handler panic"
    );
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("handler panicked")).collect();
    assert_eq!(lines.len(), 3, "{log}");
    for l in &lines {
        assert!(l.contains("panic_once.rs:"), "no location in {l}");
    }
    assert!(lines.iter().any(|l| l.contains("async kaboom")), "{log}");
    assert!(lines.iter().any(|l| l.contains("sync kaboom")), "{log}");
    // A panic outside any handler still reaches the previous hook.
    let _ = std::panic::catch_unwind(|| panic!("not a handler"));
    assert_eq!(HOOK_CALLS.load(Ordering::SeqCst), 1);
}
