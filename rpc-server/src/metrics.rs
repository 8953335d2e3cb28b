//! Per-function metrics ([`Builder::metrics`](crate::Builder::metrics)) and their
//! Prometheus endpoint.
//!
//! Each server has its own [`PrometheusRecorder`]: nothing is installed as the process's
//! global recorder, so several servers (and tests) in one process keep their numbers
//! apart, and the application stays free to install a recorder of its own. The handles
//! (`Counter`, `Gauge`) are taken from the recorder once per method and per outcome, the
//! first time each is needed, and kept: a call costs atomic operations on them, never a
//! lookup of a name and labels in the recorder's registry.
//!
//! The durations are the exception: the recorder's `Histogram` keeps every sample until
//! the next upkeep, then sorts each into its bucket (callgrind, server 1 x 64: about 390
//! instructions a call, half the cost of a call without metrics). [`Durations`] counts
//! into fixed buckets with plain atomics, and its text is written after the recorder's,
//! in the same format. The clock is `quanta`'s: the time-stamp counter where it is
//! reliable.
//!
//! Calls answered on the spot (most of them) are not even counted in the shared handles
//! one by one: each connection tallies them in plain integers ([`Tally`]) and adds the
//! tally to the handles after each batch of input, so such a call costs one clock reading
//! and a few additions (callgrind, server 1 x 64: 105 instructions a call; see
//! `benches/RESULTS.md`, "Metrics"). They are timed from the start of their batch: their
//! replies are written together after it.
//!
//! What is counted, and where (`connection.rs`): every request and notification that
//! reaches dispatch, once, when it ends: with its reply's code ("ok" or the error's
//! name), or "cancelled" when it was dropped before it ended (`rpc.cancel`, the
//! connection failed or closed with it running, the grace period ran out). A deadline
//! that passes is its reply, `deadline_exceeded`. A call answered from the dedup cache
//! (or joining the running original) did not run: it counts in `rpc_dedup_hits_total`
//! only. Requests the protocol answers itself, before dispatch (shutting down, too
//! large, malformed), are not counted per method.

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use easyrpc_proto::ErrorCode;
use metrics::{Counter, Gauge, Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
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
pub(crate) const OUTCOMES: [&str; 16] = [
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
    "streaming_method",
    "cancelled",
];
const OK: usize = 0;
const CANCELLED: usize = OUTCOMES.len() - 1;
const OVERLOADED_OUTCOME: usize = 1 + ErrorCode::Overloaded.as_i64() as usize;

/// Upper bounds of the `rpc_call_duration_seconds` buckets, in nanoseconds: 50 µs (a call
/// answered on the spot) to 10 s; and as written in the `le` label.
const BUCKETS_NS: [u64; 17] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];
const BUCKETS_LE: [&str; 17] = [
    "0.00005", "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1",
    "0.25", "0.5", "1", "2.5", "5", "10",
];

/// How often the recorder's upkeep runs when nobody scrapes (a scrape runs it too).
const UPKEEP: Duration = Duration::from_secs(5);

/// The time source of the durations, shared by a server's calls.
static CLOCK: OnceLock<quanta::Clock> = OnceLock::new();

fn clock() -> &'static quanta::Clock {
    CLOCK.get_or_init(quanta::Clock::new)
}

/// Now, as a raw reading of the durations' clock: when a call starts.
#[inline]
pub(crate) fn now() -> u64 {
    clock().raw()
}

/// `rpc_call_duration_seconds` of one method: a count per bucket (not cumulative; the
/// last slot is above every bound) and the sum, in plain atomics.
#[derive(Default)]
pub(crate) struct Durations {
    buckets: [AtomicU64; BUCKETS_NS.len() + 1],
    sum_ns: AtomicU64,
}

/// The bucket of a duration: the first bound at or above `ns` (a sample equal to a bound
/// is in its bucket, `le`); most calls are answered within the first: one comparison.
#[inline]
fn bucket(ns: u64) -> usize {
    if ns <= BUCKETS_NS[0] {
        0
    } else {
        BUCKETS_NS.partition_point(|&b| b < ns)
    }
}

impl Durations {
    #[inline]
    fn record(&self, ns: u64) {
        self.buckets[bucket(ns)].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// The samples of `method`, in the text format; nothing before the first.
    fn render(&self, method: &str, out: &mut String) {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return;
        }
        let method = escape(method);
        let mut cumulative = 0;
        for (le, n) in BUCKETS_LE.iter().zip(&counts) {
            cumulative += n;
            let _ = writeln!(
                out,
                "{DURATION}_bucket{{method=\"{method}\",le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "{DURATION}_bucket{{method=\"{method}\",le=\"+Inf\"}} {total}"
        );
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{DURATION}_sum{{method=\"{method}\"}} {sum}");
        let _ = writeln!(out, "{DURATION}_count{{method=\"{method}\"}} {total}");
    }
}

/// A label value as the text format writes it: backslash, double quote and newline
/// escaped.
fn escape(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return value.into();
    }
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .into()
}

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
        f.debug_struct("Metrics")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// One method's handles, each registered the first time it is needed (a series appears
/// with its first event).
pub(crate) struct MethodMetrics {
    recorder: Arc<PrometheusRecorder>,
    name: Arc<str>,
    calls: [OnceLock<Counter>; OUTCOMES.len()],
    duration: Durations,
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
            duration: Durations::default(),
            in_flight: OnceLock::new(),
            overloaded: OnceLock::new(),
        }
    }

    fn method_label(&self) -> Vec<Label> {
        vec![Label::new("method", self.name.to_string())]
    }

    fn calls(&self, outcome: usize) -> &Counter {
        self.calls[outcome].get_or_init(|| {
            let mut labels = self.method_label();
            labels.push(Label::new("code", OUTCOMES[outcome]));
            self.recorder.register_counter(&key(CALLS, labels), &metadata())
        })
    }

    fn overloaded(&self) -> &Counter {
        self.overloaded.get_or_init(|| {
            self.recorder
                .register_counter(&key(OVERLOADED, self.method_label()), &metadata())
        })
    }

    /// Add a connection's tally of this method.
    fn add(&self, tally: &MethodTally) {
        for (outcome, &n) in tally.calls.iter().enumerate() {
            if n > 0 {
                self.calls(outcome).increment(u64::from(n));
                if outcome == OVERLOADED_OUTCOME {
                    self.overloaded().increment(u64::from(n));
                }
            }
        }
        for (slot, &n) in self.duration.buckets.iter().zip(&tally.buckets) {
            if n > 0 {
                slot.fetch_add(u64::from(n), Ordering::Relaxed);
            }
        }
        self.duration.sum_ns.fetch_add(tally.sum_ns, Ordering::Relaxed);
    }

    fn in_flight(&self) -> &Gauge {
        self.in_flight.get_or_init(|| {
            self.recorder
                .register_gauge(&key(IN_FLIGHT, self.method_label()), &metadata())
        })
    }

    /// Count a call that ended with `outcome` (an index of [`OUTCOMES`]), started at
    /// `started` (from [`now`]).
    #[inline]
    fn record(&self, outcome: usize, started: u64) {
        self.calls(outcome).increment(1);
        if outcome == OVERLOADED_OUTCOME {
            self.overloaded().increment(1);
        }
        let clock = clock();
        self.duration.record(clock.delta_as_nanos(started, clock.raw()));
    }
}

/// The outcome of a reply, as an index of [`OUTCOMES`].
fn outcome(reply: &Reply) -> usize {
    match reply.error() {
        None => OK,
        Some(e) => match e.code {
            // Ours: 0 (unknown) to 13, in the order of `OUTCOMES`.
            code @ 0..=13 => 1 + code as usize,
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
        let recorder = Arc::new(PrometheusBuilder::new().build_recorder());
        // Calibrated now, not at the first call.
        clock();
        describe(&recorder);
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
        by_index.push(Arc::new(MethodMetrics::new(
            recorder.clone(),
            Arc::from(UNKNOWN_METHOD),
        )));
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
        &self.methods[self.slot(index)]
    }

    /// Where the handles of the method at `index` in the registry are.
    #[inline]
    fn slot(&self, index: Option<usize>) -> usize {
        // The last entry is the unknown methods'.
        let last = self.methods.len() - 1;
        index.map_or(last, |i| i.min(last))
    }

    /// A call was answered from the dedup cache (or joined the running original).
    pub(crate) fn dedup_hit(&self) {
        self.dedup_hits.increment(1);
    }

    /// The gauge of the connections open on `listener`.
    pub(crate) fn connections(&self, listener: &str) -> Gauge {
        let labels = vec![Label::new("listener", listener.to_string())];
        self.recorder
            .register_gauge(&key(CONNECTIONS, labels), &metadata())
    }

    /// The metrics in the Prometheus text format.
    pub(crate) fn render(&self) -> String {
        let mut out = self.handle.render();
        let mut durations = String::new();
        for m in &*self.methods {
            m.duration.render(&m.name, &mut durations);
        }
        if !durations.is_empty() {
            let _ = writeln!(
                out,
                "# HELP {DURATION} Time from dispatch (of the batch of input, for calls answered at once) to the reply, by method."
            );
            let _ = writeln!(out, "# TYPE {DURATION} histogram");
            out.push_str(&durations);
            out.push('\n');
        }
        out
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

async fn accept(
    listener: Option<&tokio::net::TcpListener>,
) -> io::Result<(tokio::net::TcpStream, SocketAddr)> {
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
        (b"GET", _) => (
            "404 Not Found",
            "text/plain",
            "not found: try /metrics\n".to_string(),
        ),
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

/// A connection's count of the calls it answered on the spot since its last flush, in
/// plain integers: a call costs one clock reading and a few additions, and the shared
/// handles (atomics) are updated once per batch of input ([`Tally::flush`]), not once per
/// call (callgrind and throughput both showed the atomics per call).
///
/// The calls of one batch are timed from its start (the first call's dispatch): their
/// replies are written together, after the batch, so that is the time each caller waits
/// for on the server, its place in the batch included.
#[derive(Default)]
pub(crate) struct Tally {
    /// When the current batch started (from [`now`]); 0: no batch.
    started: u64,
    methods: Vec<MethodTally>,
    /// Where in `methods` the last call's method is.
    last: usize,
}

struct MethodTally {
    /// Where the method's handles are in [`Metrics`].
    slot: usize,
    calls: [u32; OUTCOMES.len()],
    buckets: [u32; BUCKETS_NS.len() + 1],
    sum_ns: u64,
}

impl Tally {
    /// When the current batch started (now, for its first call).
    #[inline]
    pub(crate) fn start(&mut self) -> u64 {
        if self.started == 0 {
            self.started = now();
        }
        self.started
    }

    /// A call of the method at `index` (in the registry) was answered on the spot.
    #[inline]
    pub(crate) fn ready(&mut self, metrics: &Metrics, index: Option<usize>, reply: &Reply) {
        let clock = clock();
        let ns = clock.delta_as_nanos(self.started, clock.raw());
        let slot = metrics.slot(index);
        let at = match self.methods.get(self.last) {
            Some(m) if m.slot == slot => self.last,
            _ => self.find(slot),
        };
        let m = &mut self.methods[at];
        m.calls[outcome(reply)] += 1;
        m.buckets[bucket(ns)] += 1;
        m.sum_ns += ns;
    }

    #[cold]
    fn find(&mut self, slot: usize) -> usize {
        self.last = match self.methods.iter().position(|m| m.slot == slot) {
            Some(at) => at,
            None => {
                self.methods.push(MethodTally {
                    slot,
                    calls: [0; OUTCOMES.len()],
                    buckets: [0; BUCKETS_NS.len() + 1],
                    sum_ns: 0,
                });
                self.methods.len() - 1
            }
        };
        self.last
    }

    /// Add what was counted to the server's metrics, and start a new batch.
    pub(crate) fn flush(&mut self, metrics: &Metrics) {
        for m in self.methods.drain(..) {
            metrics.methods[m.slot].add(&m);
        }
        self.started = 0;
        self.last = 0;
    }
}

/// One call being measured, from dispatch on.
pub(crate) struct Meter {
    method: Arc<MethodMetrics>,
    /// From [`now`].
    started: u64,
}

impl MethodMetrics {
    /// A call of this method, started at `started` (from [`now`]), was answered on the
    /// spot with `reply`.
    #[inline]
    pub(crate) fn ready(&self, started: u64, reply: &Reply) {
        self.record(outcome(reply), started);
    }
}

impl Meter {
    /// Start measuring a call of `method`.
    #[inline]
    pub(crate) fn start(method: &Arc<MethodMetrics>) -> Meter {
        Meter::started(method, now())
    }

    /// Measure a call of `method` that started at `started` (from [`now`]).
    #[inline]
    pub(crate) fn started(method: &Arc<MethodMetrics>, started: u64) -> Meter {
        Meter {
            method: method.clone(),
            started,
        }
    }

    /// The call was answered on the spot.
    #[inline]
    pub(crate) fn ready(self, reply: &Reply) {
        self.method.ready(self.started, reply);
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
    fn durations_fill_cumulative_buckets() {
        let d = Durations::default();
        for ns in [10_000, 50_000, 50_001, 20_000_000_000] {
            d.record(ns);
        }
        let mut out = String::new();
        d.render("a\"b", &mut out);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            r#"rpc_call_duration_seconds_bucket{method="a\"b",le="0.00005"} 2"#
        );
        assert_eq!(
            lines[1],
            r#"rpc_call_duration_seconds_bucket{method="a\"b",le="0.0001"} 3"#
        );
        assert_eq!(
            lines[16],
            r#"rpc_call_duration_seconds_bucket{method="a\"b",le="10"} 3"#
        );
        assert_eq!(
            lines[17],
            r#"rpc_call_duration_seconds_bucket{method="a\"b",le="+Inf"} 4"#
        );
        assert_eq!(
            lines[18],
            r#"rpc_call_duration_seconds_sum{method="a\"b"} 20.000110001"#
        );
        assert_eq!(lines[19], r#"rpc_call_duration_seconds_count{method="a\"b"} 4"#);
        let mut none = String::new();
        Durations::default().render("x", &mut none);
        assert!(none.is_empty());
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
