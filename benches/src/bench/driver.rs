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
use crate::{BoxError, Result};

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
    /// Server CPU time (user + system) in the window, summed over its processes (a
    /// prefork supervisor and its workers).
    pub(crate) server_cpu: Duration,
    /// Server resident memory right after the window, summed over its processes.
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
    cpu: procfs::CpuSnapshot,
}

impl Window {
    fn open(pid: u32) -> Result<Window> {
        let cpu = procfs::CpuSnapshot::take(pid)?;
        Ok(Window {
            pid,
            start: Instant::now(),
            cpu,
        })
    }
}

/// Sequential measurements accumulate over several short rounds, interleaved with the
/// other systems' rounds (see `harness`), so that a slow drift in the machine's load
/// (other tenants) reaches every system alike.
#[derive(Debug)]
pub(crate) struct Tally {
    hist: Histogram<u64>,
    elapsed: Duration,
    ticks: u64,
}

impl Tally {
    pub(crate) fn new() -> Tally {
        Tally {
            hist: new_hist(3),
            elapsed: Duration::ZERO,
            ticks: 0,
        }
    }

    /// The sample of every round so far; the server's memory is read now.
    pub(crate) fn into_sample(self, pid: u32) -> Result<Sample> {
        Ok(Sample {
            hist: self.hist,
            elapsed: self.elapsed,
            server_cpu: procfs::ticks(self.ticks),
            rss_kib: procfs::server_rss_kib(pid)?,
        })
    }

    fn add_window(&mut self, window: Window) -> Result<()> {
        self.elapsed += window.start.elapsed();
        self.ticks += procfs::CpuSnapshot::take(window.pid)?.since(&window.cpu);
        Ok(())
    }
}

/// `calls` sequential calls on one async connection, added to `tally` (and with `None`,
/// untimed: a warm-up).
pub(crate) async fn seq_async(
    conn: &mut AsyncConn,
    p: &Payload,
    calls: u64,
    pid: u32,
    tally: Option<&mut Tally>,
) -> Result<()> {
    let Some(tally) = tally else {
        for _ in 0..calls {
            conn.call(p).await?;
        }
        return Ok(());
    };
    let window = Window::open(pid)?;
    for _ in 0..calls {
        let t = Instant::now();
        conn.call(p).await?;
        record(&mut tally.hist, t.elapsed());
    }
    tally.add_window(window)
}

/// As [`seq_async`], on a blocking connection, on this thread.
pub(crate) fn seq_blocking(
    conn: &mut BlockingConn,
    p: &Payload,
    calls: u64,
    pid: u32,
    tally: Option<&mut Tally>,
) -> Result<()> {
    let Some(tally) = tally else {
        for _ in 0..calls {
            conn.call(p)?;
        }
        return Ok(());
    };
    let window = Window::open(pid)?;
    for _ in 0..calls {
        let t = Instant::now();
        conn.call(p)?;
        record(&mut tally.hist, t.elapsed());
    }
    tally.add_window(window)
}

/// Warm up, then open the window, let the loops record, and stop them.
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

/// Join the loops of one slice: their histograms, or the first error.
async fn join_all<T>(
    tasks: Vec<tokio::task::JoinHandle<(T, Result<Histogram<u64>>)>>,
) -> (Vec<T>, Result<Histogram<u64>>) {
    let mut total = new_hist(2);
    let mut first_error: Option<BoxError> = None;
    let mut back = Vec::with_capacity(tasks.len());
    for t in tasks {
        match tokio::time::timeout(JOIN_TIMEOUT, t).await {
            Ok(Ok((c, Ok(h)))) => {
                back.push(c);
                if let Err(e) = total.add(h) {
                    first_error.get_or_insert(e.to_string().into());
                }
            }
            Ok(Ok((c, Err(e)))) => {
                back.push(c);
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
        Some(e) => (back, Err(e)),
        None => (back, Ok(total)),
    }
}

/// A load measurement in slices: the slices of all systems are interleaved by the
/// harness, and each slice adds its window and its calls here.
impl Tally {
    pub(crate) fn for_load() -> Tally {
        Tally {
            hist: new_hist(2),
            elapsed: Duration::ZERO,
            ticks: 0,
        }
    }

    fn add_hist(&mut self, h: &Histogram<u64>) -> Result<()> {
        self.hist.add(h).map_err(|e| e.to_string().into())
    }
}

/// One slice of closed-loop load: `per_conn` tasks on each connection, each calling again
/// as soon as its call returns. The window closes before the loops are joined: what they
/// do after `Stop` is counted neither in calls nor in CPU time.
pub(crate) async fn load_async(
    conns: &[AsyncConn],
    per_conn: usize,
    p: &Arc<Payload>,
    timing: Timing,
    pid: u32,
    tally: &mut Tally,
) -> Result<()> {
    let phase = Arc::new(Phase::default());
    let mut tasks = Vec::new();
    for c in conns {
        for _ in 0..per_conn {
            let mut c = c.share()?;
            let (p, phase) = (p.clone(), phase.clone());
            tasks.push(tokio::spawn(async move {
                let mut h = new_hist(2);
                let r = loop {
                    let t = Instant::now();
                    if let Err(e) = c.call(&p).await {
                        break Err(e);
                    }
                    match phase.step() {
                        Step::Stop => break Ok(()),
                        Step::Record => record(&mut h, t.elapsed()),
                        Step::Warmup => {}
                    }
                };
                ((), r.map(|()| h))
            }));
        }
    }
    let window = coordinate(&phase, timing, pid).await;
    let window = window.and_then(|w| tally.add_window(w));
    let (_, hist) = join_all(tasks).await;
    window?;
    tally.add_hist(&hist?)
}

/// One slice of closed-loop load on raw tokio connections: one task per connection keeps
/// `in_flight` requests outstanding (see [`raw::TokioConn::pipelined`]).
pub(crate) async fn load_raw_tokio(
    conns: &mut Vec<raw::TokioConn>,
    in_flight: usize,
    timing: Timing,
    pid: u32,
    tally: &mut Tally,
) -> Result<()> {
    let phase = Arc::new(Phase::default());
    let tasks = conns
        .drain(..)
        .map(|mut c| {
            let phase = phase.clone();
            tokio::spawn(async move {
                let mut h = new_hist(2);
                let r = c.pipelined(in_flight, &phase, &mut h).await;
                (c, r.map(|()| h))
            })
        })
        .collect();
    let window = coordinate(&phase, timing, pid).await;
    let window = window.and_then(|w| tally.add_window(w));
    let (back, hist) = join_all(tasks).await;
    *conns = back;
    window?;
    tally.add_hist(&hist?)
}

/// One slice of closed-loop load from threads, one per connection, each running `body`
/// until the phase says stop.
pub(crate) fn load_threads<C, F>(
    conns: &mut [C],
    body: F,
    timing: Timing,
    pid: u32,
    tally: &mut Tally,
) -> Result<()>
where
    C: Send,
    F: Fn(&mut C, &Phase, &mut Histogram<u64>) -> Result<()> + Sync,
{
    let phase = Phase::default();
    std::thread::scope(|s| {
        let handles: Vec<_> = conns
            .iter_mut()
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
        let window = window.and_then(|w| tally.add_window(w));
        let mut first_error = None;
        for h in handles {
            match h.join() {
                Ok(Ok(h)) => {
                    if let Err(e) = tally.add_hist(&h) {
                        first_error.get_or_insert(e.to_string());
                    }
                }
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(_) => {
                    first_error.get_or_insert("a load thread panicked".to_string());
                }
            }
        }
        window?;
        match first_error {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    })
}

/// The loop of one blocking client thread with one call in flight.
pub(crate) fn blocking_loop(
    p: &Payload,
) -> impl Fn(&mut BlockingConn, &Phase, &mut Histogram<u64>) -> Result<()> + Sync + '_ {
    move |c, phase, h| loop {
        let t = Instant::now();
        c.call(p)?;
        match phase.step() {
            Step::Stop => return Ok(()),
            Step::Record => record(h, t.elapsed()),
            Step::Warmup => {}
        }
    }
}
