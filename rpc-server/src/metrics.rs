//! Per-function metrics ([`Builder::metrics`](crate::Builder::metrics)) and their
//! Prometheus endpoint.
//!
//! Each server has its own [`PrometheusRecorder`]: nothing is installed as the process's
//! global recorder, so several servers (and tests) in one process keep their numbers
//! apart, and the application stays free to install a recorder of its own. The handles
//! (`Counter`, `Gauge`, `Histogram`) are taken from the recorder once per method and per
//! outcome, the first time each is needed, and kept: a call costs atomic operations on
//! them, never a lookup of a name and labels in the recorder's registry.
//!
//! What is counted, and where (`connection.rs`): every request and notification that
//! reaches dispatch, once, when it ends: with its reply's code ("ok" or the error's
//! name), or "cancelled" when it was dropped before it ended (`rpc.cancel`, the
//! connection failed or closed with it running, the grace period ran out). A deadline
//! that passes is its reply, `deadline_exceeded`. A call answered from the dedup cache
//! (or joining the running original) did not run: it counts in `rpc_dedup_hits_total`
//! only. Requests the protocol answers itself, before dispatch (shutting down, too
//! large, malformed), are not counted per method.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use easyrpc_proto::ErrorCode;
use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::method::{Reply, ReplyFuture};
use crate::{BuildError, MetricsAt};

/// Calls ended, by method and outcome (`code`).
pub(crate) const CALLS: &str = "rpc_calls_total";
/// Time from dispatch to the reply, by method.
pub(crate) const DURATION: &str = "rpc_call_duration_seconds";
/// Calls running (not answered on the spot), by method.
pub(crate) const IN_FLIGHT: &str = "rpc_calls_in_flight";
/// Calls refused by `max_flow`, by method.
pub(crate) const OVERLOADED: &str = "rpc_overloaded_total";
/// Calls answered from the dedup cache, or joining the running original.
pub(crate) const DEDUP_HITS: &str = "rpc_dedup_hits_total";
/// Connections open, by listener.
pub(crate) const CONNECTIONS: &str = "rpc_connections";

/// The `method` label of calls of a method that does not exist: one fixed value, so that
/// a peer cannot make the server keep a series per name it sends.
pub(crate) const UNKNOWN_METHOD: &str = "<unknown>";

/// The `code` label values: "ok", then each [`ErrorCode`] in numeric order (its name,
/// snake_case), then "cancelled" (the call was dropped before it ended).
pub(crate) const OUTCOMES: [&str; 15] = [
    "ok",
    "unknown",
    "method_not_found",
    "invalid_params",
    "handler_error",
    "handler_panicked",
    "message_too_large",
    "malformed_message",
    "overloaded",
    "deadline_exceeded",
    "shutting_down",
    "internal_error",
    "unauthenticated",
    "permission_denied",
    "cancelled",
];
const OK: usize = 0;
const CANCELLED: usize = OUTCOMES.len() - 1;
const OVERLOADED_OUTCOME: usize = 1 + ErrorCode::Overloaded.as_i64() as usize;

/// Buckets of `rpc_call_duration_seconds`: 50 µs (a call answered on the spot) to 10 s.
const BUCKETS: [f64; 17] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// How often histogram samples are folded into their buckets when nobody scrapes (a
/// scrape does it too): bounds the memory samples hold between scrapes.
const UPKEEP: Duration = Duration::from_secs(5);

/// A server's metrics: its recorder and the handles of each method.
pub(crate) struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    /// By the registry's method index; the last is [`UNKNOWN_METHOD`]'s.
    methods: Box<[Arc<MethodMetrics>]>,
    dedup_hits: Counter,
    /// The endpoint's socket, taken by the first [`Metrics::serve`] (`None` in a prefork
    /// worker: the supervisor serves the endpoint).
    endpoint: Mutex<Option<std::net::TcpListener>>,
    /// Where the endpoint listens.
    addr: Option<SocketAddr>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").field("addr", &self.addr).finish_non_exhaustive()
    }
}

/// One method's handles, each registered the first time it is needed (a series appears
/// with its first event).
pub(crate) struct MethodMetrics {
    recorder: Arc<PrometheusRecorder>,
    name: Arc<str>,
    calls: [OnceLock<Counter>; OUTCOMES.len()],
    duration: OnceLock<Histogram>,
    in_flight: OnceLock<Gauge>,
    overloaded: OnceLock<Counter>,
}

fn key(name: &'static str, labels: Vec<Label>) -> Key {
    Key::from_parts(name, labels)
}

/// The metadata the registry is given; the Prometheus recorder ignores it.
fn metadata() -> Metadata<'static> {
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()))
}

impl MethodMetrics {
    fn new(recorder: Arc<PrometheusRecorder>, name: Arc<str>) -> MethodMetrics {
        MethodMetrics {
            recorder,
            name,
            calls: Default::default(),
            duration: OnceLock::new(),
            in_flight: OnceLock::new(),
            overloaded: OnceLock::new(),
        }
    }

    fn method_label(&self) -> Vec<Label> {
        vec![Label::new("method", self.name.to_string())]
    }

    fn in_flight(&self) -> &Gauge {
        self.in_flight
            .get_or_init(|| self.recorder.register_gauge(&key(IN_FLIGHT, self.method_label()), &metadata()))
    }

    /// Count a call that ended with `outcome` (an index of [`OUTCOMES`]), `started` then.
    fn record(&self, outcome: usize, started: Instant) {
        let counter = self.calls[outcome].get_or_init(|| {
            let mut labels = self.method_label();
            labels.push(Label::new("code", OUTCOMES[outcome]));
            self.recorder.register_counter(&key(CALLS, labels), &metadata())
        });
        counter.increment(1);
        if outcome == OVERLOADED_OUTCOME {
            self.overloaded
                .get_or_init(|| self.recorder.register_counter(&key(OVERLOADED, self.method_label()), &metadata()))
                .increment(1);
        }
        self.duration
            .get_or_init(|| self.recorder.register_histogram(&key(DURATION, self.method_label()), &metadata()))
            .record(started.elapsed().as_secs_f64());
    }
}

/// The outcome of a reply, as an index of [`OUTCOMES`].
fn outcome(reply: &Reply) -> usize {
    match reply.error() {
        None => OK,
        Some(e) => match e.code {
            // Ours: 0 (unknown) to 12, in the order of `OUTCOMES`.
            code @ 0..=12 => 1 + code as usize,
            // A code of someone else's (a layer's own error): "unknown".
            _ => 1,
        },
    }
}

impl Metrics {
    /// The metrics of a server whose registry has these methods (index, name), with its
    /// endpoint on `endpoint` (`None`: record only).
    pub(crate) fn new<'a>(
        methods: impl Iterator<Item = (usize, &'a str)>,
        endpoint: Option<std::net::TcpListener>,
    ) -> Metrics {
        // Unwrap: the bucket list is not empty, the only error `set_buckets_for_metric` has.
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(DURATION.into()), &BUCKETS)
            .unwrap();
        let recorder = Arc::new(builder.build_recorder());
        describe(&*recorder);
        let handle = recorder.handle();
        let mut names: Vec<(usize, &str)> = methods.collect();
        names.sort_by_key(|&(i, _)| i);
        let mut by_index: Vec<Arc<MethodMetrics>> = names
            .into_iter()
            .enumerate()
            .map(|(at, (index, name))| {
                debug_assert_eq!(at, index, "method indexes run from 0 without gaps");
                Arc::new(MethodMetrics::new(recorder.clone(), Arc::from(name)))
            })
            .collect();
        by_index.push(Arc::new(MethodMetrics::new(recorder.clone(), Arc::from(UNKNOWN_METHOD))));
        let dedup_hits = recorder.register_counter(&Key::from_static_name(DEDUP_HITS), &metadata());
        let addr = endpoint.as_ref().and_then(|l| l.local_addr().ok());
        Metrics {
            recorder,
            handle,
            methods: by_index.into_boxed_slice(),
            dedup_hits,
            endpoint: Mutex::new(endpoint),
            addr,
        }
    }

    /// The endpoint's socket, bound now if given as an address (a plain std socket, as
    /// no runtime may exist yet; registered with tokio when served). `None`: a prefork
    /// worker's metrics, served by the supervisor.
    ///
    /// # Errors
    ///
    /// When the address cannot be bound, or the socket given cannot be used.
    pub(crate) fn endpoint(at: &MetricsAt) -> Result<Option<std::net::TcpListener>, BuildError> {
        let (listener, addr) = match at {
            MetricsAt::Supervisor => return Ok(None),
            MetricsAt::Addr(addr) => (std::net::TcpListener::bind(addr), addr.clone()),
            MetricsAt::Listener(l) => (
                l.try_clone(),
                l.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()),
            ),
        };
        let error = |e: io::Error| BuildError::MetricsAddr {
            addr: addr.clone(),
            message: e.to_string(),
        };
        let listener = listener.map_err(error)?;
        listener.set_nonblocking(true).map_err(error)?;
        Ok(Some(listener))
    }

    /// Where the endpoint listens, if this server serves one.
    pub(crate) fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// The handles of the method at `index` in the registry (`None`: no such method).
    #[inline]
    pub(crate) fn method(&self, index: Option<usize>) -> &Arc<MethodMetrics> {
        // The last entry is the unknown methods'.
        let last = self.methods.len() - 1;
        &self.methods[index.map_or(last, |i| i.min(last))]
    }

    /// A call was answered from the dedup cache (or joined the running original).
    pub(crate) fn dedup_hit(&self) {
        self.dedup_hits.increment(1);
    }

    /// The gauge of the connections open on `listener`.
    pub(crate) fn connections(&self, listener: &str) -> Gauge {
        let labels = vec![Label::new("listener", listener.to_string())];
        self.recorder.register_gauge(&key(CONNECTIONS, labels), &metadata())
    }

    /// The metrics in the Prometheus text format.
    pub(crate) fn render(&self) -> String {
        self.handle.render()
    }

    /// Serve the endpoint (when this server has one and no other run serves it yet) and
    /// fold histogram samples into their buckets now and then, until dropped (abort the
    /// task).
    pub(crate) async fn serve(self: Arc<Metrics>) {
        let listener = self
            .endpoint
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .and_then(|l| match tokio::net::TcpListener::from_std(l) {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::error!(error = %e, "cannot serve metrics");
                    None
                }
            });
        let mut upkeep = tokio::time::interval(UPKEEP);
        let mut scrapes = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = upkeep.tick() => self.handle.run_upkeep(),
                Some(_) = scrapes.join_next(), if !scrapes.is_empty() => {}
                accepted = accept(listener.as_ref()) => match accepted {
                    Ok((stream, _)) => {
                        let metrics = self.clone();
                        scrapes.spawn(async move {
                            let render = || metrics.render();
                            let _ = tokio::time::timeout(SCRAPE_TIMEOUT, answer(stream, render)).await;
                        });
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "metrics endpoint: accept");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
    }
}

/// How long one scrape may take, from accept to the last byte written.
pub(crate) const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest request head read; a scraper's is a few hundred bytes.
pub(crate) const MAX_HEAD: usize = 8 * 1024;

async fn accept(listener: Option<&tokio::net::TcpListener>) -> io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Read one HTTP/1.1 request head and answer it: `GET /metrics` with `render()`.
async fn answer(mut stream: tokio::net::TcpStream, render: impl FnOnce() -> String) -> io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head_complete(&head) {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() + n > MAX_HEAD {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    stream.write_all(&response(&head, render)).await?;
    stream.shutdown().await
}

pub(crate) fn head_complete(head: &[u8]) -> bool {
    head.windows(4).any(|w| w == b"\r\n\r\n")
}

/// The whole HTTP response to a request head: the metrics for `GET /metrics` (or `/`),
/// 404 for another path, 405 for another method. The connection closes after it.
pub(crate) fn response(head: &[u8], render: impl FnOnce() -> String) -> Vec<u8> {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    let (status, content_type, body) = match (method, path) {
        (b"GET", b"/metrics" | b"/") => ("200 OK", "text/plain; version=0.0.4", render()),
        (b"GET", _) => ("404 Not Found", "text/plain", "not found: try /metrics\n".to_string()),
        _ => ("405 Method Not Allowed", "text/plain", "GET only\n".to_string()),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// The HELP lines.
fn describe(recorder: &PrometheusRecorder) {
    recorder.describe_counter(
        CALLS.into(),
        None,
        "Calls ended, by method and outcome: ok, an error name, or cancelled.".into(),
    );
    recorder.describe_histogram(
        DURATION.into(),
        Some(Unit::Seconds),
        "Time from dispatch to the reply, by method.".into(),
    );
    recorder.describe_gauge(
        IN_FLIGHT.into(),
        None,
        "Calls running (not answered on the spot), by method.".into(),
    );
    recorder.describe_counter(
        OVERLOADED.into(),
        None,
        "Calls refused by the method's max_flow limit.".into(),
    );
    recorder.describe_counter(
        DEDUP_HITS.into(),
        None,
        "Calls answered from the dedup cache, or joining the running original.".into(),
    );
    recorder.describe_gauge(CONNECTIONS.into(), None, "Connections open, by listener.".into());
}

/// One call being measured, from dispatch on.
pub(crate) struct Meter {
    method: Arc<MethodMetrics>,
    started: Instant,
}

impl Meter {
    /// Start measuring a call of `method`.
    #[inline]
    pub(crate) fn start(method: &Arc<MethodMetrics>) -> Meter {
        Meter {
            method: method.clone(),
            started: Instant::now(),
        }
    }

    /// The call was answered on the spot.
    #[inline]
    pub(crate) fn ready(self, reply: &Reply) {
        self.method.record(outcome(reply), self.started);
    }

    /// The call runs on: count it in flight, and count its outcome when `fut` ends (or
    /// "cancelled" when it is dropped first).
    pub(crate) fn pending(self, fut: ReplyFuture) -> ReplyFuture {
        self.method.in_flight().increment(1.0);
        Box::pin(Metered {
            fut,
            meter: Some(self),
        })
    }
}

/// A running call's future, counted when it ends or is dropped.
struct Metered {
    fut: ReplyFuture,
    meter: Option<Meter>,
}

impl std::future::Future for Metered {
    type Output = Reply;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Reply> {
        let reply = std::task::ready!(self.fut.as_mut().poll(cx));
        if let Some(meter) = self.meter.take() {
            meter.method.in_flight().decrement(1.0);
            meter.method.record(outcome(&reply), meter.started);
        }
        std::task::Poll::Ready(reply)
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        if let Some(meter) = self.meter.take() {
            meter.method.in_flight().decrement(1.0);
            meter.method.record(CANCELLED, meter.started);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_the_error_names_in_snake_case() {
        for code in ErrorCode::ALL {
            let index = 1 + code.as_i64() as usize;
            assert_eq!(OUTCOMES[index], code.name().replace(' ', "_"), "{code:?}");
        }
        assert_eq!(OUTCOMES[OVERLOADED_OUTCOME], "overloaded");
        assert_eq!(OUTCOMES[CANCELLED], "cancelled");
    }

    #[test]
    fn only_get_metrics_is_answered() {
        let ok = response(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n", || "a 1\n".into());
        let ok = String::from_utf8(ok).unwrap();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\na 1\n"), "{ok}");
        let missing = response(b"GET /other HTTP/1.1\r\n\r\n", || unreachable!());
        assert!(missing.starts_with(b"HTTP/1.1 404"));
        let post = response(b"POST /metrics HTTP/1.1\r\n\r\n", || unreachable!());
        assert!(post.starts_with(b"HTTP/1.1 405"));
    }
}
