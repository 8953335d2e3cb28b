//! `bench load`: the load generator, against any MessagePack-RPC server (ours or not).
//!
//! `--concurrency N` calls are kept in flight, spread over `--connections C` connections of
//! our async client, for `--duration S` seconds after a warm-up; then the latency
//! histogram and the throughput are printed. Arguments are given as a JSON array and sent
//! as dynamic MessagePack values.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::driver::{new_hist, Phase, Recorder, Step};
use crate::Result;

/// The options of `bench load`.
#[derive(Debug, clap::Args)]
pub(crate) struct LoadArgs {
    /// Server address, `host:port`.
    #[arg(long)]
    pub(crate) addr: String,
    /// Method to call.
    #[arg(long)]
    pub(crate) method: String,
    /// Arguments, as a JSON array: `'[1, 2]'`, `'["text", {"k": 1}]'`.
    #[arg(long, default_value = "[]")]
    pub(crate) args: String,
    /// Calls kept in flight in all.
    #[arg(long, default_value_t = 1)]
    pub(crate) concurrency: usize,
    /// Connections the calls are spread over (at most `concurrency`).
    #[arg(long, default_value_t = 1)]
    pub(crate) connections: usize,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) duration: f64,
    /// Seconds of warm-up before measuring.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) warmup: f64,
    /// Timeout of each call, in seconds.
    #[arg(long, default_value_t = 15.0)]
    pub(crate) timeout: f64,
    /// The server's pid, to report its CPU time per call and its memory (local servers;
    /// summed over the workers it forked, for a prefork server).
    #[arg(long)]
    pub(crate) server_pid: Option<u32>,
}

/// Run `bench load`.
pub(crate) fn run(a: &LoadArgs) -> Result<()> {
    let json: serde_json::Value = serde_json::from_str(&a.args).map_err(|e| format!("--args: {e}"))?;
    let serde_json::Value::Array(items) = json else {
        return Err("--args must be a JSON array".into());
    };
    let params: Vec<rmpv::Value> = items
        .iter()
        .map(rmpv::ext::to_value)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| format!("--args: {e}"))?;
    let params = Arc::new(params);
    let concurrency = a.concurrency.max(1);
    let connections = a.connections.clamp(1, concurrency);
    let rt = crate::placement::runtime()?;
    rt.block_on(async {
        let mut cfg = easyrpc_client::Config::default();
        cfg.timeout = Duration::from_secs_f64(a.timeout);
        let mut clients = Vec::with_capacity(connections);
        for _ in 0..connections {
            clients.push(easyrpc_client::Client::connect_with(a.addr.as_str(), cfg.clone()).await?);
        }
        let phase = Arc::new(Phase::default());
        let errors = Arc::new(AtomicU64::new(0));
        let first_error = Arc::new(Mutex::new(None::<String>));
        let shared = Arc::new(Mutex::new(new_hist(3)));
        let tasks: Vec<_> = (0..concurrency)
            .map(|i| {
                let client = clients[i % connections].clone();
                let (phase, params, method) = (phase.clone(), params.clone(), a.method.clone());
                let (errors, first_error) = (errors.clone(), first_error.clone());
                let mut rec = Recorder::new(&shared);
                tokio::spawn(async move {
                    // One clock read per call: the end of one call is the start of the next.
                    let mut t = Instant::now();
                    loop {
                        let r = client.call::<_, rmpv::Value>(&method, &*params).await;
                        let mut now = Instant::now();
                        let step = phase.step();
                        match r {
                            Ok(_) if step == Step::Record => rec.record(now - t),
                            Ok(_) => {}
                            Err(e) => {
                                if step == Step::Record {
                                    errors.fetch_add(1, Ordering::Relaxed);
                                }
                                first_error
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .get_or_insert_with(|| e.to_string());
                                // A call that fails at once must not spin the loop.
                                if e.raw_code().is_none() {
                                    tokio::time::sleep(Duration::from_millis(10)).await;
                                    now = Instant::now();
                                }
                            }
                        }
                        if step == Step::Stop {
                            // Into the shared histogram before the task reports back.
                            rec.flush();
                            return;
                        }
                        t = now;
                    }
                })
            })
            .collect();
        drop(clients);
        tokio::time::sleep(Duration::from_secs_f64(a.warmup)).await;
        let cpu0 = a.server_pid.map(crate::procfs::CpuSnapshot::take).transpose()?;
        let start = Instant::now();
        phase.set(Step::Record);
        tokio::time::sleep(Duration::from_secs_f64(a.duration)).await;
        phase.set(Step::Stop);
        let elapsed = start.elapsed();
        let cpu1 = a.server_pid.map(crate::procfs::CpuSnapshot::take).transpose()?;
        for t in tasks {
            t.await?;
        }
        let hist = shared.lock().unwrap_or_else(|p| p.into_inner());
        let errors = errors.load(Ordering::Relaxed);
        print_summary(a, &hist, elapsed, errors, concurrency, connections);
        if let (Some(pid), Some(c0), Some(c1)) = (a.server_pid, cpu0, cpu1) {
            let cpu = crate::procfs::ticks(c1.since(&c0));
            println!(
                "server pid {pid}: CPU {:.3} s in the window, {:.2} µs per call; RSS {:.1} MiB",
                cpu.as_secs_f64(),
                cpu.as_secs_f64() * 1e6 / hist.len().max(1) as f64,
                crate::procfs::server_rss_kib(pid)? as f64 / 1024.0
            );
        }
        if let Some(e) = first_error.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            println!("first error: {e}");
        }
        if hist.is_empty() {
            return Err("no call succeeded".into());
        }
        Ok(())
    })
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

fn print_summary(
    a: &LoadArgs,
    h: &Histogram<u64>,
    elapsed: Duration,
    errors: u64,
    concurrency: usize,
    connections: usize,
) {
    println!(
        "{} {} on {}: {concurrency} in flight over {connections} connection(s), {:.1} s",
        a.method,
        a.args,
        a.addr,
        elapsed.as_secs_f64()
    );
    println!(
        "calls: {}  errors: {errors}  throughput: {:.0} calls/s",
        h.len(),
        h.len() as f64 / elapsed.as_secs_f64()
    );
    if h.is_empty() {
        return;
    }
    println!(
        "latency µs: min {:.1}  mean {:.1}  max {:.1}",
        us(h.min()),
        h.mean() / 1000.0,
        us(h.max())
    );
    for q in [0.5, 0.75, 0.9, 0.99, 0.999, 0.9999] {
        println!("  p{:<7} {:>10.1} µs", q * 100.0, us(h.value_at_quantile(q)));
    }
    println!("histogram (µs, doubling buckets):");
    let total = h.len() as f64;
    let mut below = 0u64;
    for v in h.iter_log(1000, 2.0) {
        let count = v.count_since_last_iteration();
        below += count;
        if count == 0 && below == 0 {
            continue;
        }
        let share = count as f64 / total;
        let bar = "#".repeat((share * 50.0).round() as usize);
        println!(
            "  ≤ {:>10.1} {:>10} {:>6.2}% {bar}",
            us(v.value_iterated_to()),
            count,
            share * 100.0
        );
        if below == h.len() {
            break;
        }
    }
}
