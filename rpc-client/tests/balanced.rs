//! Issue 13: the balanced client's resend rule when an instance dies with calls in flight:
//! idempotent calls go to another instance, the others fail (they may have run).

use std::time::{Duration, Instant};

use easyrpc_client::{Client, Error};
use easyrpc_server::Server;

/// A server answering `slow(ms)` with `id` after `ms` milliseconds, on a runtime of its own
/// (shutting the runtime down drops its connections at once, as a crash would).
fn server(id: i64) -> (tokio::runtime::Runtime, String) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = Server::builder()
        .async_fn("slow", move |(ms,): (u64,)| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            id
        })
        .build()
        .unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    rt.spawn(async move { server.run(listener, std::future::pending::<()>()).await });
    (rt, addr)
}

async fn until(limit: Duration, what: &str, check: impl Fn() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[test]
fn issue13_a_dead_instance_s_idempotent_calls_move_and_the_others_fail() {
    let (rt_a, a) = server(1);
    let (_rt_b, b) = server(2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(calls(rt_a, a, b));
}

async fn calls(rt_a: tokio::runtime::Runtime, a: String, b: String) {
    let client = Client::balanced([&a, &b]).await.unwrap();
    until(Duration::from_secs(5), "both instances up", || {
        client.instances().iter().all(|i| i.up)
    })
    .await;
    // Calls in flight go to the instance with fewer of them: half of each kind on each.
    let mut plain = Vec::new();
    let mut idempotent = Vec::new();
    for _ in 0..8 {
        let c = client.clone();
        plain.push(tokio::spawn(
            async move { c.call::<_, i64>("slow", (1000u64,)).await },
        ));
        let c = client.idempotent();
        idempotent.push(tokio::spawn(
            async move { c.call::<_, i64>("slow", (1000u64,)).await },
        ));
    }
    until(Duration::from_secs(5), "16 calls in flight", || {
        client.instances().iter().map(|i| i.in_flight).sum::<u32>() == 16
    })
    .await;
    let on_a = client
        .instances()
        .iter()
        .find(|i| i.addr.to_string() == a)
        .unwrap()
        .in_flight;
    assert!(on_a >= 4, "{:?}", client.instances());
    // A dies with its calls.
    rt_a.shutdown_background();
    let (mut lost, mut answered) = (0, 0);
    for call in plain {
        match call.await.unwrap() {
            Ok(id) => {
                assert_eq!(id, 2);
                answered += 1;
            }
            Err(Error::ConnectionClosed | Error::Transport(_)) => lost += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert!(lost >= 1 && answered >= 1, "{lost} lost, {answered} answered");
    for call in idempotent {
        assert_eq!(call.await.unwrap().unwrap(), 2, "idempotent calls end on B");
    }
    let state = client.instances();
    let dead = state.iter().find(|i| i.addr.to_string() == a).unwrap();
    assert!(!dead.up, "{state:?}");
    // New calls go to B only.
    for _ in 0..4 {
        assert_eq!(client.call::<_, i64>("slow", (0u64,)).await.unwrap(), 2);
    }
}
