//! The measurement loops: sequential (a fixed number of calls) and closed-loop load (a
//! fixed time, N connections × K calls in flight), with the server's CPU time and memory
//! read around exactly the measured window.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::conn::{self, AsyncConn, BlockingConn};
use crate::procfs;
use crate::raw;
use crate::system::{Mode, Payload, Variant};
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
    hist.saturating_record(nanos(d));
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The latencies of one load loop, added to a histogram shared by every loop of the
/// measurement in batches of [`Recorder::BATCH`].
///
/// A histogram per loop would be simpler, but at 16 × 16 that is 256 histograms whose
/// counters fall out of the cache between two calls of the same loop: a cache miss per
/// call that the profile showed as 6 % of the client's time, charged to whichever system
/// is measured. Buffered here, a call costs one store into memory the loop just touched.
pub(crate) struct Recorder {
    shared: Arc<Mutex<Histogram<u64>>>,
    buf: Vec<u64>,
}

impl Recorder {
    const BATCH: usize = 256;

    pub(crate) fn new(shared: &Arc<Mutex<Histogram<u64>>>) -> Recorder {
        Recorder {
            shared: shared.clone(),
            buf: Vec::with_capacity(Self::BATCH),
        }
    }

    pub(crate) fn record(&mut self, d: Duration) {
        self.buf.push(nanos(d));
        if self.buf.len() == Self::BATCH {
            self.flush();
        }
    }

    /// Add what is buffered to the shared histogram.
    pub(crate) fn flush(&mut self) {
        let mut h = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        for v in self.buf.drain(..) {
            h.saturating_record(v);
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush();
    }
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
    /// The server's peak resident memory during a sequential measurement (`VmHWM`, reset
    /// at its start), summed over its processes.
    pub(crate) peak_rss_kib: Option<u64>,
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
            peak_rss_kib: None,
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

/// See the end of [`accept_async`].
const TW_REUSE_PAUSE: Duration = Duration::from_millis(1500);

/// How long the `accept` mode waits for the server to close the connections it measured.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);

/// Join the loops of one slice: what they hand back, and the first error.
async fn join_all<T>(tasks: Vec<tokio::task::JoinHandle<(T, Result<()>)>>) -> (Vec<T>, Result<()>) {
    let mut first_error: Option<BoxError> = None;
    let mut back = Vec::with_capacity(tasks.len());
    for t in tasks {
        match tokio::time::timeout(JOIN_TIMEOUT, t).await {
            Ok(Ok((c, r))) => {
                back.push(c);
                if let Err(e) = r {
                    first_error.get_or_insert(e);
                }
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e.into());
            }
            Err(_) => {
                first_error.get_or_insert("a load task did not stop in time".into());
            }
        }
    }
    (back, first_error.map_or(Ok(()), Err))
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

/// How the calls kept in flight on an async connection are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Callers {
    /// A task per call in flight, each calling again as soon as its call returns: how a
    /// service whose requests each run in their own task uses a shared client.
    Tasks,
    /// One task per connection, its calls in flight as futures joined in it
    /// (`join_all`): how one task that issues many calls at once uses a client, and the
    /// shape of the raw tokio floor (one task per connection).
    Connection,
}

impl Callers {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Callers::Tasks => "a task per call in flight",
            Callers::Connection => "one task per connection, its calls in flight as futures joined in it",
        }
    }
}

/// One slice of closed-loop load: `per_conn` loops on each connection, each calling again
/// as soon as its call returns, in a task each or joined in one task per connection
/// (`callers`). The window closes before the loops are joined: what they do after `Stop`
/// is counted neither in calls nor in CPU time.
///
/// A loop reads the clock once per call: the end of one call is the start of the next,
/// which the same loop issues at once.
pub(crate) async fn load_async(
    conns: &[AsyncConn],
    per_conn: usize,
    callers: Callers,
    p: &Arc<Payload>,
    timing: Timing,
    pid: u32,
    tally: &mut Tally,
) -> Result<()> {
    let phase = Arc::new(Phase::default());
    let shared = Arc::new(Mutex::new(new_hist(3)));
    let mut tasks = Vec::new();
    // Each system's loop is spelled out, so that a loop holds only its own system's
    // future (see `conn::call_ours`).
    macro_rules! closed_loop {
        ($call:expr) => {{
            let (phase, mut rec) = (phase.clone(), Recorder::new(&shared));
            async move {
                let mut t = Instant::now();
                let r = loop {
                    if let Err(e) = $call.await {
                        break Err(e);
                    }
                    let now = Instant::now();
                    match phase.step() {
                        Step::Stop => break Ok(()),
                        Step::Record => rec.record(now - t),
                        Step::Warmup => {}
                    }
                    t = now;
                };
                // Into the shared histogram before the task reports back.
                rec.flush();
                r
            }
        }};
    }
    // The loops of one connection: a task each, or joined in one task.
    macro_rules! loops {
        ($c:expr, $variant:ident, |$h:ident| $call:expr) => {{
            let mut loops = Vec::with_capacity(per_conn);
            for _ in 0..per_conn {
                let p = p.clone();
                #[allow(unused_mut)]
                let AsyncConn::$variant(mut $h) = $c.share()?
                else {
                    return Err("a connection shared as another system".into());
                };
                loops.push(closed_loop!($call(&mut $h, &p)));
            }
            match callers {
                Callers::Tasks => tasks.extend(
                    loops
                        .into_iter()
                        .map(|l| tokio::spawn(async move { ((), l.await) })),
                ),
                Callers::Connection => tasks.push(tokio::spawn(async move {
                    let all = futures_util::future::join_all(loops).await;
                    ((), all.into_iter().collect::<Result<Vec<()>>>().map(drop))
                })),
            }
        }};
    }
    for c in conns {
        match c {
            AsyncConn::Ours(_) => loops!(c, Ours, |h| conn::call_ours),
            AsyncConn::Tonic(_) => loops!(c, Tonic, |h| conn::call_tonic),
            AsyncConn::Tarpc(_) => loops!(c, Tarpc, |h| conn::call_tarpc),
            AsyncConn::RawTokio(_) => return Err("a raw connection has no shared handles".into()),
        }
    }
    let window = coordinate(&phase, timing, pid).await;
    let window = window.and_then(|w| tally.add_window(w));
    let (_, joined) = join_all(tasks).await;
    window?;
    joined?;
    let hist = shared.lock().unwrap_or_else(PoisonError::into_inner);
    tally.add_hist(&hist)
}

/// Connection churn ([`Mode::accept`]): `mode.connections` new connections to `addr`, at
/// most `mode.in_flight` of them being opened at a time, each making one call of `p`'s
/// workload. Every connection stays open until the last one has its answer (the server
/// holds them all at the end, as a burst of clients would leave it), then all are closed
/// after the window. The window runs from the first connect to the last answer; each
/// latency recorded is one connect plus its call.
pub(crate) async fn accept_async(
    v: Variant,
    addr: std::net::SocketAddr,
    mode: Mode,
    p: &Arc<Payload>,
    pid: u32,
    tally: &mut Tally,
) -> Result<()> {
    let opening = Arc::new(tokio::sync::Semaphore::new(mode.in_flight.max(1)));
    let fds = procfs::server_open_fds(pid)?;
    let window = Window::open(pid)?;
    let mut tasks = Vec::with_capacity(mode.connections);
    for _ in 0..mode.connections {
        // Unwrap: the semaphore is never closed.
        let permit = opening.clone().acquire_owned().await.unwrap();
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = async {
                let mut c = AsyncConn::connect_small(v, addr, &p).await?;
                c.call(&p).await?;
                Ok::<_, BoxError>(c)
            }
            .await;
            drop(permit);
            let done = Instant::now();
            match r {
                Ok(c) => ((Some(c), done, done - t), Ok(())),
                Err(e) => ((None, done, done - t), Err(e)),
            }
        }));
    }
    let (back, joined) = join_all(tasks).await;
    let last = back.iter().map(|(_, done, _)| *done).max();
    // The CPU window closes before the connections do (closing them is not accepting).
    let ticks = procfs::CpuSnapshot::take(pid)?.since(&window.cpu);
    let mut hist = new_hist(2);
    let mut conns = Vec::with_capacity(back.len());
    for (c, _, d) in back {
        record(&mut hist, d);
        conns.push(c);
    }
    drop(conns);
    // Closing them costs the server as much as accepting did: let it finish before the
    // next measurement (the same core, pinned together), or it lands on whoever is next.
    let settle = Instant::now() + SETTLE_TIMEOUT;
    while procfs::server_open_fds(pid)? > fds && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The client closed first: its 10 000 ports are in TIME_WAIT, and with the next
    // measurement's 10 000 that is more than the 28 232 of the ephemeral range. A connect
    // may take a port in TIME_WAIT (`tcp_tw_reuse`, on for loopback) only a second after
    // its last segment: before that, connects stall for hundreds of milliseconds.
    if mode.connections >= 1000 {
        tokio::time::sleep(TW_REUSE_PAUSE).await;
    }
    joined?;
    tally.elapsed += last.map_or(Duration::ZERO, |l| l - window.start);
    tally.ticks += ticks;
    tally.add_hist(&hist)
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
    let shared = Arc::new(Mutex::new(new_hist(3)));
    let tasks = conns
        .drain(..)
        .map(|mut c| {
            let (phase, shared) = (phase.clone(), shared.clone());
            tokio::spawn(async move {
                // One task per connection: its own histogram stays in the cache.
                let mut h = new_hist(2);
                let r = c.pipelined(in_flight, &phase, &mut h).await;
                let added = shared.lock().unwrap_or_else(PoisonError::into_inner).add(&h);
                (c, r.and_then(|()| added.map_err(|e| e.to_string().into())))
            })
        })
        .collect();
    let window = coordinate(&phase, timing, pid).await;
    let window = window.and_then(|w| tally.add_window(w));
    let (back, joined) = join_all(tasks).await;
    *conns = back;
    window?;
    joined?;
    let hist = shared.lock().unwrap_or_else(PoisonError::into_inner);
    tally.add_hist(&hist)
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
    move |c, phase, h| {
        // As in `load_async`: one clock read per call.
        let mut t = Instant::now();
        loop {
            c.call(p)?;
            let now = Instant::now();
            match phase.step() {
                Step::Stop => return Ok(()),
                Step::Record => record(h, now - t),
                Step::Warmup => {}
            }
            t = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorders_add_every_latency_to_the_shared_histogram() {
        let shared = Arc::new(Mutex::new(new_hist(3)));
        let mut a = Recorder::new(&shared);
        let mut b = Recorder::new(&shared);
        // More than a batch from one, less from the other.
        for i in 0..(Recorder::BATCH as u64 + 10) {
            a.record(Duration::from_micros(100 + i % 7));
        }
        for _ in 0..5 {
            b.record(Duration::from_millis(2));
        }
        assert_eq!(
            shared.lock().unwrap().len(),
            Recorder::BATCH as u64,
            "one batch flushed so far"
        );
        a.flush();
        drop(b);
        let h = shared.lock().unwrap();
        assert_eq!(h.len(), Recorder::BATCH as u64 + 15);
        assert!(h.max() >= 1_990_000, "{}", h.max());
        assert!(h.min() <= 100_100, "{}", h.min());
    }
}
