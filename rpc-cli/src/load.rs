//! `rpc load`: keep `concurrency` calls of one method in flight over `connections`
//! connections of the async client for a while, then report throughput, errors by code and
//! latency percentiles (an HDR histogram).
//!
//! Each of the `concurrency` tasks calls, waits for the reply, and calls again: a closed
//! loop, as `bench load` does. Latency is measured per call from when the task makes it to
//! when its reply is decoded (one clock read per call: the end of one call is the start of
//! the next). Calls completed during the warm-up, if any, are not counted.
//!
//! ```no_run
//! use std::time::Duration;
//! use easyrpc_cli::connect::{Connection, Target};
//! use easyrpc_cli::load::{self, LoadOptions};
//!
//! # async fn demo() -> Result<(), easyrpc_client::Error> {
//! let conn = Connection {
//!     target: "127.0.0.1:25000".parse::<Target>().unwrap(),
//!     tls: None,
//!     config: easyrpc_client::Config::default(),
//! };
//! let mut opts = LoadOptions::new("add");
//! opts.concurrency = 64;
//! opts.connections = 4;
//! opts.duration = Duration::from_secs(10);
//! let params = vec![rmpv::Value::from(1), rmpv::Value::from(2)];
//! let report = load::run::<_, serde::de::IgnoredAny>(&conn, &opts, params).await?;
//! println!("{}", report.to_json());
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use easyrpc_client::Error;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value as Json};

use crate::connect::Connection;

/// What `rpc load` does.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LoadOptions {
    /// The method called.
    pub method: String,
    /// Calls kept in flight in all.
    pub concurrency: usize,
    /// Connections the calls are spread over (at most `concurrency`).
    pub connections: usize,
    /// How long calls are measured.
    pub duration: Duration,
    /// How long calls run before measuring starts.
    pub warmup: Duration,
    /// Draw a progress bar on stderr (only when it is a terminal).
    pub progress: bool,
}

impl LoadOptions {
    /// Options to call `method`: `rpc load`'s defaults (16 calls in flight on 1
    /// connection for 10 s, no warm-up), no progress bar.
    pub fn new(method: impl Into<String>) -> LoadOptions {
        LoadOptions {
            method: method.into(),
            concurrency: 16,
            connections: 1,
            duration: Duration::from_secs(10),
            warmup: Duration::ZERO,
            progress: false,
        }
    }
}

/// The outcome of a run.
#[derive(Debug, Clone)]
pub struct Report {
    /// Calls that succeeded.
    pub ok: u64,
    /// Failed calls by cause: the error reply's code (`"3"`; `"error"` for an error without
    /// a code) or the kind of local failure (`"timeout"`, `"connection closed"`,
    /// `"unavailable"`, `"transport"`...).
    pub errors: BTreeMap<String, u64>,
    /// Whether some calls failed without an answer from the server (transport errors).
    pub transport_errors: bool,
    /// The first error seen, in words.
    pub first_error: Option<String>,
    /// The time measured.
    pub elapsed: Duration,
    /// Latencies of the calls that succeeded, in nanoseconds.
    pub latency: Histogram<u64>,
    /// Calls in flight, and connections, as run.
    pub concurrency: usize,
    /// Connections, as run.
    pub connections: usize,
}

impl Report {
    /// Calls completed, successes and failures.
    pub fn calls(&self) -> u64 {
        self.ok + self.error_count()
    }

    /// Calls that failed.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Calls completed per second.
    pub fn calls_per_sec(&self) -> f64 {
        self.calls() as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// The latency at quantile `q` (0.5 for p50), in microseconds; 0 without a success.
    pub fn quantile_us(&self, q: f64) -> f64 {
        if self.latency.is_empty() {
            return 0.0;
        }
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }

    /// The report as one JSON object: `calls`, `ok`, `errors`, `errors_by_code`,
    /// `duration_s`, `calls_per_s`, `concurrency`, `connections`, and latencies in µs
    /// (`min_us`, `mean_us`, `p50_us`, `p90_us`, `p99_us`, `p999_us`, `max_us`).
    pub fn to_json(&self) -> Json {
        let h = &self.latency;
        let us = |ns: f64| (ns / 10.0).round() / 100.0;
        let (min, mean, max) = if h.is_empty() {
            (0.0, 0.0, 0.0)
        } else {
            (h.min() as f64, h.mean(), h.max() as f64)
        };
        json!({
            "calls": self.calls(),
            "ok": self.ok,
            "errors": self.error_count(),
            "errors_by_code": self.errors,
            "duration_s": self.elapsed.as_secs_f64(),
            "calls_per_s": self.calls_per_sec().round() as u64,
            "concurrency": self.concurrency,
            "connections": self.connections,
            "min_us": us(min),
            "mean_us": us(mean),
            "p50_us": us(self.quantile_us(0.5) * 1000.0),
            "p90_us": us(self.quantile_us(0.9) * 1000.0),
            "p99_us": us(self.quantile_us(0.99) * 1000.0),
            "p999_us": us(self.quantile_us(0.999) * 1000.0),
            "max_us": us(max),
            "first_error": self.first_error,
        })
    }

    /// The report in lines of text: calls and throughput, errors by code, percentiles.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "calls: {} in {:.1} s, {:.0} calls/s ({} ok, {} errors)\n",
            self.calls(),
            self.elapsed.as_secs_f64(),
            self.calls_per_sec(),
            self.ok,
            self.error_count()
        );
        if !self.errors.is_empty() {
            let by: Vec<String> = self
                .errors
                .iter()
                // Codes as numbers: another server's codes are its own, not ours.
                .map(|(code, n)| match code.parse::<i64>() {
                    Ok(c) => format!("error {c}: {n}"),
                    Err(_) => format!("{code}: {n}"),
                })
                .collect();
            s.push_str(&format!("errors: {}\n", by.join(", ")));
            if let Some(e) = &self.first_error {
                s.push_str(&format!("first error: {e}\n"));
            }
        }
        if !self.latency.is_empty() {
            s.push_str(&format!(
                "latency µs: p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}\n",
                self.quantile_us(0.5),
                self.quantile_us(0.9),
                self.quantile_us(0.99),
                self.quantile_us(0.999),
                self.latency.max() as f64 / 1000.0,
            ));
        }
        s
    }
}

/// The kind of a failed call, as [`Report::errors`] counts it, and whether the server
/// answered it.
fn error_key(e: &Error) -> (String, bool) {
    match e {
        Error::Remote(r) => (r.code.to_string(), true),
        Error::Foreign(f) => (f.code.map_or_else(|| "error".into(), |c| c.to_string()), true),
        Error::Timeout(_) => ("timeout".into(), false),
        Error::ConnectionClosed => ("connection closed".into(), false),
        Error::Unavailable(_) => ("unavailable".into(), false),
        Error::Tls { .. } => ("tls".into(), false),
        Error::Protocol(_) => ("protocol".into(), false),
        Error::Decode(_) | Error::Result(_) => ("decode".into(), false),
        Error::Encode(_) => ("encode".into(), false),
        _ => ("transport".into(), false),
    }
}

const WARMUP: u8 = 0;
const RECORD: u8 = 1;
const STOP: u8 = 2;

/// What one task saw.
struct Tally {
    hist: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
    transport_errors: bool,
    first_error: Option<String>,
}

/// The largest latency recorded exactly: longer calls count as this long.
const MAX_LATENCY_NS: u64 = 3_600_000_000_000;

fn histogram() -> Histogram<u64> {
    // Unwrap: constant, valid bounds (low 1 ≥ 1, high ≥ 2 × low, 3 significant figures).
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).unwrap()
}

/// Run the load: connect `opts.connections` clients, keep `opts.concurrency` calls of
/// `opts.method` with `params` in flight for the warm-up and then `opts.duration`, and
/// report. `R` is the type results are decoded as: `serde::de::IgnoredAny` in MessagePack
/// (nothing kept), [`crate::typed::TypedResult`] in bincode (which must read the whole
/// value).
///
/// # Errors
///
/// When a connection cannot be made. Failed calls are counted in the report instead.
pub async fn run<P, R>(conn: &Connection, opts: &LoadOptions, params: Vec<P>) -> Result<Report, Error>
where
    P: Serialize + Send + Sync + 'static,
    R: DeserializeOwned + Send + 'static,
{
    let concurrency = opts.concurrency.max(1);
    let connections = opts.connections.clamp(1, concurrency);
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        clients.push(conn.client().await?);
    }
    let params = Arc::new(params);
    let method: Arc<str> = Arc::from(opts.method.as_str());
    let phase = Arc::new(AtomicU8::new(if opts.warmup.is_zero() { RECORD } else { WARMUP }));
    let show = opts.progress && std::io::stderr().is_terminal();
    // Counted for the progress bar only: no shared counter per call otherwise.
    let progress_count = show.then(|| Arc::new(AtomicU64::new(0)));
    let tasks: Vec<_> = (0..concurrency)
        .map(|i| {
            let client = clients[i % connections].clone();
            let (params, method, phase) = (params.clone(), method.clone(), phase.clone());
            let count = progress_count.clone();
            tokio::spawn(async move {
                let mut tally = Tally {
                    hist: histogram(),
                    ok: 0,
                    errors: BTreeMap::new(),
                    transport_errors: false,
                    first_error: None,
                };
                let mut t = Instant::now();
                loop {
                    let r = client.call::<_, R>(&method, &*params).await;
                    let mut now = Instant::now();
                    let step = phase.load(Ordering::Relaxed);
                    if let Some(c) = &count {
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                    match r {
                        Ok(_) if step == RECORD => {
                            let ns = u64::try_from((now - t).as_nanos()).unwrap_or(u64::MAX);
                            tally.hist.saturating_record(ns.clamp(1, MAX_LATENCY_NS));
                            tally.ok += 1;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            let (key, answered) = error_key(&e);
                            if step == RECORD {
                                *tally.errors.entry(key).or_default() += 1;
                                tally.transport_errors |= !answered;
                                tally.first_error.get_or_insert_with(|| e.to_string());
                            }
                            // A call that fails at once without the server (it is gone)
                            // must not spin the loop.
                            if !answered {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                now = Instant::now();
                            }
                        }
                    }
                    if step == STOP {
                        return tally;
                    }
                    t = now;
                }
            })
        })
        .collect();
    drop(clients);

    if !opts.warmup.is_zero() {
        tokio::time::sleep(opts.warmup).await;
        phase.store(RECORD, Ordering::Relaxed);
    }
    let start = Instant::now();
    let bar = progress_count
        .as_ref()
        .map(|count| progress(opts.duration, count.clone(), start));
    tokio::time::sleep(opts.duration).await;
    phase.store(STOP, Ordering::Relaxed);
    let elapsed = start.elapsed();
    if let Some((bar, ticker)) = bar {
        ticker.abort();
        bar.finish_and_clear();
    }

    let mut report = Report {
        ok: 0,
        errors: BTreeMap::new(),
        transport_errors: false,
        first_error: None,
        elapsed,
        latency: histogram(),
        concurrency,
        connections,
    };
    for task in tasks {
        // A task panics only if the histogram does, which saturating_record rules out.
        let tally = task
            .await
            .map_err(|e| Error::Protocol(format!("load task failed: {e}")))?;
        // Unwrap-free: both histograms have the same bounds, so `add` cannot fail; a
        // failure would only lose that task's latencies.
        let _ = report.latency.add(&tally.hist);
        report.ok += tally.ok;
        for (k, n) in tally.errors {
            *report.errors.entry(k).or_default() += n;
        }
        report.transport_errors |= tally.transport_errors;
        if report.first_error.is_none() {
            report.first_error = tally.first_error;
        }
    }
    Ok(report)
}

/// The progress bar, and the task that updates it every 100 ms.
fn progress(
    duration: Duration,
    count: Arc<AtomicU64>,
    start: Instant,
) -> (ProgressBar, tokio::task::JoinHandle<()>) {
    let bar = ProgressBar::new(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX).max(1));
    let style = ProgressStyle::with_template("{spinner} {elapsed:>4} [{bar:30}] {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    let b = bar.clone();
    let base = count.load(Ordering::Relaxed);
    let ticker = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            let elapsed = start.elapsed();
            let calls = count.load(Ordering::Relaxed) - base;
            b.set_position(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
            b.set_message(format!(
                "{calls} calls, {:.0} calls/s",
                calls as f64 / elapsed.as_secs_f64().max(1e-3)
            ));
        }
    });
    (bar, ticker)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_counts_and_prints_what_it_holds() {
        let mut latency = histogram();
        for us in [100u64, 200, 300, 400] {
            latency.record(us * 1000).unwrap();
        }
        let report = Report {
            ok: 4,
            errors: BTreeMap::from([("3".to_owned(), 2), ("timeout".to_owned(), 1)]),
            transport_errors: true,
            first_error: Some("remote error: boom".into()),
            elapsed: Duration::from_secs(2),
            latency,
            concurrency: 2,
            connections: 1,
        };
        assert_eq!((report.calls(), report.error_count()), (7, 3));
        let j = report.to_json();
        assert_eq!(j["calls"], 7);
        assert_eq!(j["errors"], 3);
        assert_eq!(j["errors_by_code"]["3"], 2);
        assert_eq!(j["calls_per_s"], 4);
        assert!((j["p50_us"].as_f64().unwrap() - 200.0).abs() < 1.0, "{j}");
        assert!((j["max_us"].as_f64().unwrap() - 400.0).abs() < 1.0, "{j}");
        let s = report.summary();
        assert!(s.contains("errors: error 3: 2, timeout: 1"), "{s}");
        assert!(s.contains("p99.9"), "{s}");
    }
}
