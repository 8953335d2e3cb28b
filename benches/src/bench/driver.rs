//! The measurement loops: sequential (a fixed number of calls) and closed-loop load (a
//! fixed time, N connections × K calls in flight), with the server's CPU time and memory
//! read around exactly the measured window.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::conn::{AsyncConn, BlockingConn};
use crate::procfs;
use crate::raw;
use crate::system::Payload;
use crate::Result;

/// How long a load measurement warms up, then measures.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) warmup: Duration,
    pub(crate) measure: Duration,
}

/// What a load loop should do with the call that just finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Warming up: do not record.
    Warmup,
    /// Inside the measured window: record.
    Record,
    /// The window is over: stop.
    Stop,
}

/// The phase of a load measurement, shared by every task or thread issuing calls.
#[derive(Debug, Default)]
pub(crate) struct Phase(AtomicU8);

impl Phase {
    pub(crate) fn step(&self) -> Step {
        match self.0.load(Ordering::Relaxed) {
            0 => Step::Warmup,
            1 => Step::Record,
            _ => Step::Stop,
        }
    }

    pub(crate) fn set(&self, step: Step) {
        let v = match step {
            Step::Warmup => 0,
            Step::Record => 1,
            Step::Stop => 2,
        };
        self.0.store(v, Ordering::Relaxed);
    }
}

/// A latency histogram in nanoseconds, up to 100 s. Sequential runs keep 3 significant
/// digits; load runs, with one histogram per task (256 of them at 256 × 1), keep 2 (1 %
/// steps, 30 KiB each instead of 230).
pub(crate) fn new_hist(sigfig: u8) -> Histogram<u64> {
    // Unwrap: the bounds are valid constants.
    Histogram::new_with_bounds(1, 100_000_000_000, sigfig).unwrap()
}

pub(crate) fn record(hist: &mut Histogram<u64>, d: Duration) {
    hist.saturating_record(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
}

/// One measurement.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    /// Latency of every measured call, in nanoseconds.
    pub(crate) hist: Histogram<u64>,
    /// The measured window.
    pub(crate) elapsed: Duration,
    /// Server CPU time (user + system) in the window.
    pub(crate) server_cpu: Duration,
    /// Server resident memory right after the window.
    pub(crate) rss_kib: u64,
}

impl Sample {
    pub(crate) fn calls(&self) -> u64 {
        self.hist.len()
    }

    pub(crate) fn throughput(&self) -> f64 {
        self.calls() as f64 / self.elapsed.as_secs_f64()
    }

    pub(crate) fn cpu_per_call(&self) -> Duration {
        self.server_cpu.div_f64(self.calls().max(1) as f64)
    }

    /// The latency at quantile `q`.
    pub(crate) fn quantile(&self, q: f64) -> Duration {
        Duration::from_nanos(self.hist.value_at_quantile(q))
    }
}

/// The server's counters at the start of a window.
struct Window {
    pid: u32,
    start: Instant,
    ticks: u64,
}

impl Window {
    fn open(pid: u32) -> Result<Window> {
        let ticks = procfs::cpu_ticks(pid)?;
        Ok(Window {
            pid,
            start: Instant::now(),
            ticks,
        })
    }

    fn close(self, hist: Histogram<u64>) -> Result<Sample> {
        let elapsed = self.start.elapsed();
        let ticks = procfs::cpu_ticks(self.pid)?;
        Ok(Sample {
            hist,
            elapsed,
            server_cpu: procfs::ticks(ticks.saturating_sub(self.ticks)),
            rss_kib: procfs::rss_kib(self.pid)?,
        })
    }
}

/// Sequential calls on one async connection.
pub(crate) async fn seq_async(
    mut conn: AsyncConn,
    p: Arc<Payload>,
    warmup: u64,
    calls: u64,
    pid: u32,
) -> Result<Sample> {
    for _ in 0..warmup {
        conn.call(&p).await?;
    }
    let mut hist = new_hist(3);
    let window = Window::open(pid)?;
    for _ in 0..calls {
        let t = Instant::now();
        conn.call(&p).await?;
        record(&mut hist, t.elapsed());
    }
    window.close(hist)
}

/// Sequential calls on one blocking connection, on this thread.
pub(crate) fn seq_blocking(
    conn: &mut BlockingConn,
    p: &Payload,
    warmup: u64,
    calls: u64,
    pid: u32,
) -> Result<Sample> {
    for _ in 0..warmup {
        conn.call(p)?;
    }
    let mut hist = new_hist(3);
    let window = Window::open(pid)?;
    for _ in 0..calls {
        let t = Instant::now();
        conn.call(p)?;
        record(&mut hist, t.elapsed());
    }
    window.close(hist)
}

/// Warm up, then open the window, let the loops record, stop them and close it.
async fn coordinate(phase: &Phase, timing: Timing, pid: u32) -> Result<Window> {
    tokio::time::sleep(timing.warmup).await;
    let window = Window::open(pid)?;
    phase.set(Step::Record);
    tokio::time::sleep(timing.measure).await;
    phase.set(Step::Stop);
    Ok(window)
}

/// How long stopped loops get to finish their last call.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

async fn join_all(tasks: Vec<tokio::task::JoinHandle<Result<Histogram<u64>>>>) -> Result<Histogram<u64>> {
    let mut total = new_hist(2);
    let mut first_error = None;
    for t in tasks {
        match tokio::time::timeout(JOIN_TIMEOUT, t).await {
            Ok(Ok(Ok(h))) => total.add(h).map_err(|e| e.to_string())?,
            Ok(Ok(Err(e))) => {
                first_error.get_or_insert(e);
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e.into());
            }
            Err(_) => {
                first_error.get_or_insert("a load task did not stop in time".into());
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

/// Closed-loop load: `per_conn` tasks on each connection, each calling again as soon as
/// its call returns.
pub(crate) async fn load_async(
    conns: Vec<AsyncConn>,
    per_conn: usize,
    p: Arc<Payload>,
    timing: Timing,
    pid: u32,
) -> Result<Sample> {
    let phase = Arc::new(Phase::default());
    let mut tasks = Vec::new();
    for c in &conns {
        for _ in 0..per_conn {
            let mut c = c.share()?;
            let (p, phase) = (p.clone(), phase.clone());
            tasks.push(tokio::spawn(async move {
                let mut h = new_hist(2);
                loop {
                    let t = Instant::now();
                    c.call(&p).await?;
                    match phase.step() {
                        Step::Stop => return Ok(h),
                        Step::Record => record(&mut h, t.elapsed()),
                        Step::Warmup => {}
                    }
                }
            }));
        }
    }
    drop(conns);
    let window = coordinate(&phase, timing, pid).await?;
    // The window closes before the loops are joined: what they do after `Stop` is not
    // counted, in calls or in CPU time.
    let closed = window.close(new_hist(2));
    let hist = join_all(tasks).await?;
    Ok(Sample { hist, ..closed? })
}

/// Closed-loop load on raw tokio connections: one task per connection keeps `in_flight`
/// requests outstanding (see [`raw::TokioConn::pipelined`]).
pub(crate) async fn load_raw_tokio(
    conns: Vec<raw::TokioConn>,
    in_flight: usize,
    timing: Timing,
    pid: u32,
) -> Result<Sample> {
    let phase = Arc::new(Phase::default());
    let tasks = conns
        .into_iter()
        .map(|c| {
            let phase = phase.clone();
            tokio::spawn(async move {
                let mut h = new_hist(2);
                c.pipelined(in_flight, &phase, &mut h).await?;
                Ok(h)
            })
        })
        .collect();
    let window = coordinate(&phase, timing, pid).await?;
    let closed = window.close(new_hist(2));
    let hist = join_all(tasks).await?;
    Ok(Sample { hist, ..closed? })
}

/// Closed-loop load from threads, one per connection, each running `body` until the phase
/// says stop.
pub(crate) fn load_threads<C, F>(conns: Vec<C>, body: F, timing: Timing, pid: u32) -> Result<Sample>
where
    C: Send,
    F: Fn(C, &Phase, &mut Histogram<u64>) -> Result<()> + Sync,
{
    let phase = Phase::default();
    std::thread::scope(|s| {
        let handles: Vec<_> = conns
            .into_iter()
            .map(|c| {
                let (phase, body) = (&phase, &body);
                s.spawn(move || {
                    let mut h = new_hist(2);
                    body(c, phase, &mut h).map(|()| h).map_err(|e| e.to_string())
                })
            })
            .collect();
        std::thread::sleep(timing.warmup);
        let window = Window::open(pid);
        phase.set(Step::Record);
        std::thread::sleep(timing.measure);
        phase.set(Step::Stop);
        let closed = window.and_then(|w| w.close(new_hist(2)));
        let mut total = new_hist(2);
        let mut first_error = None;
        for h in handles {
            match h.join() {
                Ok(Ok(h)) => total.add(h).map_err(|e| e.to_string())?,
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(_) => {
                    first_error.get_or_insert("a load thread panicked".to_string());
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e.into());
        }
        Ok(Sample {
            hist: total,
            ..closed?
        })
    })
}

/// The loop of one blocking client thread with one call in flight.
pub(crate) fn blocking_loop(
    p: &Payload,
) -> impl Fn(BlockingConn, &Phase, &mut Histogram<u64>) -> Result<()> + Sync + '_ {
    move |mut c, phase, h| loop {
        let t = Instant::now();
        c.call(p)?;
        match phase.step() {
            Step::Stop => return Ok(()),
            Step::Record => record(h, t.elapsed()),
            Step::Warmup => {}
        }
    }
}
