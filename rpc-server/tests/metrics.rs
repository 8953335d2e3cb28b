//! Per-function metrics (issue 16): the Prometheus endpoint scraped over plain HTTP, and
//! its numbers checked after known calls. Several servers with metrics run in this one
//! test binary, in parallel: each has its own recorder and endpoint.
//!
//! Every wait is bounded (`common::within`); handlers hold at gates the test opens, never
//! behind a sleep. One condition is looked for repeatedly, with a short pause, against the
//! bound: a cancel, which the client sends when it sends it.

#[allow(dead_code)] // Each test crate uses a part of the shared helpers.
mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use common::{builder, within};
use easyrpc_client::{Client, Error};
use easyrpc_proto::ErrorCode;
use easyrpc_server::{Builder, Method, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};

/// One scrape: every sample, by metric name and its labels (sorted).
#[derive(Debug)]
struct Scrape(BTreeMap<(String, BTreeMap<String, String>), f64>, String);

impl Scrape {
    /// The value of the sample `name{labels}`; 0 when absent (a series appears with its
    /// first event).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.0.get(&(name.to_string(), labels)).copied().unwrap_or(0.0)
    }
}

/// Parse the Prometheus text format (as our endpoint writes it: no escapes in values).
fn parse(text: &str) -> Scrape {
    let mut samples = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').expect("a sample line: series value");
        let value: f64 = value.parse().expect("a number");
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let rest = rest.strip_suffix('}').expect("labels end with }");
                let labels = rest
                    .split("\",")
                    .filter(|l| !l.is_empty())
                    .map(|l| {
                        let (k, v) = l.split_once("=\"").expect("label=\"value\"");
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                (name, labels)
            }
        };
        assert!(
            samples.insert((name.to_string(), labels), value).is_none(),
            "a series twice: {line}"
        );
    }
    Scrape(samples, text.to_string())
}

/// `GET /metrics` over HTTP/1.1; the status must be 200.
async fn scrape(addr: SocketAddr) -> Scrape {
    let text = within("a scrape", async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: test\r\n\r\n")
            .await
            .unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        String::from_utf8(response).unwrap()
    })
    .await;
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("content-type: text/plain; version=0.0.4"), "{head}");
    parse(body)
}

/// A server with metrics on port 0, running on its own task until `stop` fires.
struct Running {
    addr: SocketAddr,
    metrics: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(builder: Builder) -> Running {
    let server = builder.metrics("127.0.0.1:0").build().unwrap();
    let metrics = server.metrics_addr().expect("the endpoint's address");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .run(listener, async {
                let _ = rx.await;
            })
            .await;
    });
    Running {
        addr,
        metrics,
        stop,
        task,
    }
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        within("the server to stop", self.task).await.unwrap();
    }
}

fn calls(s: &Scrape, method: &str, code: &str) -> f64 {
    s.get("rpc_calls_total", &[("method", method), ("code", code)])
}

#[tokio::test]
async fn every_outcome_is_counted_once_by_method_and_code() {
    // `slow` holds at the gate; `entered` says it is inside; max_flow 1.
    let gate = Arc::new(Semaphore::new(0));
    let (entered_tx, mut entered) = mpsc::unbounded_channel::<()>();
    let slow_gate = gate.clone();
    let server = start(
        builder()
            .register(Method::try_sync_fn("fail", |(n,): (i64,)| {
                if n < 0 {
                    Err(format!("{n} is negative"))
                } else {
                    Ok(n)
                }
            }))
            .register(Method::sync_fn("boom", |(): ()| -> i64 { panic!("boom") }))
            .register(
                Method::async_fn("slow", move |(): ()| {
                    let (gate, entered) = (slow_gate.clone(), entered_tx.clone());
                    async move {
                        let _ = entered.send(());
                        gate.acquire().await.unwrap().forget();
                        7i64
                    }
                })
                .max_flow(1),
            ),
    )
    .await;
    let client = within("connect", Client::connect(server.addr)).await.unwrap();

    for i in 0..3i64 {
        let sum: i64 = within("add", client.call("add", (i, 1))).await.unwrap();
        assert_eq!(sum, i + 1);
    }
    let bad = within("add with bad params", client.call::<_, i64>("add", ("x", 1))).await;
    assert!(
        matches!(&bad, Err(Error::Remote(e)) if e.kind() == ErrorCode::InvalidParams),
        "{bad:?}"
    );
    for _ in 0..2 {
        let sum: i64 = within("add_async", client.call("add_async", (40, 2)))
            .await
            .unwrap();
        assert_eq!(sum, 42);
    }
    let failed = within("fail", client.call::<_, i64>("fail", (-1,))).await;
    assert!(
        matches!(&failed, Err(Error::Remote(e)) if e.kind() == ErrorCode::HandlerError),
        "{failed:?}"
    );
    let ok: i64 = within("fail", client.call("fail", (1,))).await.unwrap();
    assert_eq!(ok, 1);
    let panicked = within("boom", client.call::<_, i64>("boom", ())).await;
    assert!(
        matches!(&panicked, Err(Error::Remote(e)) if e.kind() == ErrorCode::HandlerPanicked),
        "{panicked:?}"
    );
    for name in ["nope", "also_nope"] {
        let missing = within("an unknown method", client.call::<_, i64>(name, ())).await;
        assert!(
            matches!(&missing, Err(Error::Remote(e)) if e.kind() == ErrorCode::MethodNotFound),
            "{missing:?}"
        );
    }

    // One `slow` inside, held; the next is refused at once.
    let first = {
        let client = client.clone();
        tokio::spawn(async move { client.call::<_, i64>("slow", ()).await })
    };
    within("slow to be entered", entered.recv()).await.unwrap();
    let refused = within("slow, overloaded", client.call::<_, i64>("slow", ())).await;
    assert!(
        matches!(&refused, Err(Error::Remote(e)) if e.kind() == ErrorCode::Overloaded),
        "{refused:?}"
    );
    let during = scrape(server.metrics).await;
    assert_eq!(
        during.get("rpc_calls_in_flight", &[("method", "slow")]),
        1.0,
        "{}",
        during.1
    );
    assert_eq!(calls(&during, "slow", "ok"), 0.0);
    gate.add_permits(1);
    assert_eq!(within("slow", first).await.unwrap().unwrap(), 7);

    let s = scrape(server.metrics).await;
    let text = &s.1;
    assert_eq!(calls(&s, "add", "ok"), 3.0, "{text}");
    assert_eq!(calls(&s, "add", "invalid_params"), 1.0, "{text}");
    assert_eq!(calls(&s, "add_async", "ok"), 2.0, "{text}");
    assert_eq!(calls(&s, "fail", "handler_error"), 1.0, "{text}");
    assert_eq!(calls(&s, "fail", "ok"), 1.0, "{text}");
    assert_eq!(calls(&s, "boom", "handler_panicked"), 1.0, "{text}");
    // Unknown methods share one label value, whatever their names.
    assert_eq!(calls(&s, "<unknown>", "method_not_found"), 2.0, "{text}");
    assert!(!text.contains("nope"), "{text}");
    assert_eq!(calls(&s, "slow", "ok"), 1.0, "{text}");
    assert_eq!(calls(&s, "slow", "overloaded"), 1.0, "{text}");
    assert_eq!(
        s.get("rpc_overloaded_total", &[("method", "slow")]),
        1.0,
        "{text}"
    );
    assert_eq!(s.get("rpc_calls_in_flight", &[("method", "slow")]), 0.0, "{text}");
    // One duration per call, in a histogram with buckets.
    assert_eq!(
        s.get("rpc_call_duration_seconds_count", &[("method", "add")]),
        4.0,
        "{text}"
    );
    assert_eq!(
        s.get("rpc_call_duration_seconds_count", &[("method", "slow")]),
        2.0,
        "{text}"
    );
    assert_eq!(
        s.get(
            "rpc_call_duration_seconds_bucket",
            &[("method", "add"), ("le", "+Inf")]
        ),
        4.0,
        "{text}"
    );
    assert!(
        text.contains("# TYPE rpc_call_duration_seconds histogram"),
        "{text}"
    );
    assert!(text.contains("# TYPE rpc_calls_total counter"), "{text}");
    assert!(text.contains("# HELP rpc_calls_total "), "{text}");
    // The client's connection; the scrapes are not RPC connections.
    let listener = server.addr.to_string();
    assert_eq!(
        s.get("rpc_connections", &[("listener", &listener)]),
        1.0,
        "{text}"
    );
    assert_eq!(s.get("rpc_dedup_hits_total", &[]), 0.0, "{text}");

    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn servers_in_one_process_keep_their_own_numbers() {
    let (a, b) = tokio::join!(start(builder()), start(builder()));
    assert_ne!(a.metrics, b.metrics);
    let (ca, cb) = (
        within("connect", Client::connect(a.addr)).await.unwrap(),
        within("connect", Client::connect(b.addr)).await.unwrap(),
    );
    for i in 0..5i64 {
        let _: i64 = within("add", ca.call("add", (i, i))).await.unwrap();
    }
    let _: i64 = within("add", cb.call("add_async", (1, 1))).await.unwrap();
    let (sa, sb) = tokio::join!(scrape(a.metrics), scrape(b.metrics));
    assert_eq!(calls(&sa, "add", "ok"), 5.0, "{}", sa.1);
    assert_eq!(calls(&sa, "add_async", "ok"), 0.0, "{}", sa.1);
    assert_eq!(calls(&sb, "add", "ok"), 0.0, "{}", sb.1);
    assert_eq!(calls(&sb, "add_async", "ok"), 1.0, "{}", sb.1);
    drop((ca, cb));
    tokio::join!(a.stop(), b.stop());
}

#[tokio::test]
async fn the_endpoint_answers_only_get_metrics() {
    let server = start(builder()).await;
    for (request, status) in [
        ("GET /other HTTP/1.1\r\n\r\n", "HTTP/1.1 404"),
        (
            "POST /metrics HTTP/1.1\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 405",
        ),
    ] {
        let response = within("a response", async {
            let mut stream = TcpStream::connect(server.metrics).await.unwrap();
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut out = String::new();
            stream.read_to_string(&mut out).await.unwrap();
            out
        })
        .await;
        assert!(response.starts_with(status), "{request:?}: {response}");
    }
    server.stop().await;
}

#[test]
fn an_address_that_cannot_be_bound_fails_the_build() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let err = Server::builder().metrics(addr.clone()).build().unwrap_err();
    assert!(
        matches!(&err, easyrpc_server::BuildError::MetricsAddr { addr: a, .. } if *a == addr),
        "{err:?}"
    );
}

#[test]
fn without_metrics_there_is_no_endpoint() {
    assert_eq!(Server::builder().build().unwrap().metrics_addr(), None);
}

/// A retry of a finished call from the same client session is answered from the dedup
/// cache: the function ran once, and the retry counts as a dedup hit, not as a call.
#[tokio::test]
async fn a_dedup_hit_is_counted_as_such_not_as_a_call() {
    use bytes::{Buf, BytesMut};
    use easyrpc_proto::{encode_request, Codec, Framer, Hello};

    let server = start(builder().unstable_network(true)).await;
    let mut stream = within("connect", TcpStream::connect(server.addr)).await.unwrap();
    let mut hello = Vec::new();
    Hello::new(Codec::Msgpack)
        .with_session(Some(0x5e55_1011))
        .encode(&mut hello);
    stream.write_all(&hello).await.unwrap();
    let mut rbuf = BytesMut::new();
    within("the server's hello", async {
        loop {
            if let Some((_, n)) = Hello::decode(&rbuf).unwrap() {
                rbuf.advance(n);
                return;
            }
            assert!(stream.read_buf(&mut rbuf).await.unwrap() > 0, "closed");
        }
    })
    .await;
    let mut framer = Framer::new(Codec::Msgpack, 1 << 20);
    let mut answers = Vec::new();
    for _ in 0..2 {
        let mut req = Vec::new();
        encode_request(Codec::Msgpack, &mut req, 9, "add", &(2i64, 3i64), None).unwrap();
        stream.write_all(&req).await.unwrap();
        let frame = within("an answer", async {
            loop {
                if let Some(n) = framer.decode(&rbuf).unwrap() {
                    return rbuf.split_to(n).to_vec();
                }
                assert!(stream.read_buf(&mut rbuf).await.unwrap() > 0, "closed");
            }
        })
        .await;
        answers.push(frame);
    }
    assert_eq!(answers[0], answers[1], "the retry got the first answer");
    let s = scrape(server.metrics).await;
    assert_eq!(calls(&s, "add", "ok"), 1.0, "{}", s.1);
    assert_eq!(s.get("rpc_dedup_hits_total", &[]), 1.0, "{}", s.1);
    drop(stream);
    server.stop().await;
}

/// A call the client gives up on (`rpc.cancel`) ends as `cancelled`, and leaves the
/// in-flight gauge.
#[tokio::test]
async fn a_cancelled_call_counts_as_cancelled() {
    let (entered_tx, mut entered) = mpsc::unbounded_channel::<()>();
    let server = start(builder().register(Method::async_fn("stuck", move |(): ()| {
        let entered = entered_tx.clone();
        async move {
            let _ = entered.send(());
            std::future::pending::<()>().await;
        }
    })))
    .await;
    let mut config = easyrpc_client::Config::default();
    config.extensions = true;
    let client = within("connect", Client::connect_with(server.addr, config))
        .await
        .unwrap();
    let call = {
        let client = client.clone();
        tokio::spawn(async move { client.call::<_, ()>("stuck", ()).await })
    };
    within("stuck to be entered", entered.recv()).await.unwrap();
    let during = scrape(server.metrics).await;
    assert_eq!(
        during.get("rpc_calls_in_flight", &[("method", "stuck")]),
        1.0,
        "{}",
        during.1
    );
    // Dropping the call's future makes the client send `rpc.cancel`.
    call.abort();
    let _ = call.await;
    // The cancel arrives when it arrives: look until it is counted, within the bound.
    let s = within("the cancel to be counted", async {
        loop {
            let s = scrape(server.metrics).await;
            if calls(&s, "stuck", "cancelled") > 0.0 {
                return s;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(calls(&s, "stuck", "cancelled"), 1.0, "{}", s.1);
    assert_eq!(
        s.get("rpc_calls_in_flight", &[("method", "stuck")]),
        0.0,
        "{}",
        s.1
    );
    assert_eq!(
        s.get("rpc_call_duration_seconds_count", &[("method", "stuck")]),
        1.0,
        "{}",
        s.1
    );
    drop(client);
    server.stop().await;
}
