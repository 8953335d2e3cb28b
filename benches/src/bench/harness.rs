//! `bench run`: every system's server as its own process, every client against it, in one
//! session, systems interleaved and each measurement repeated.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::conn::{AsyncConn, BlockingConn};
use crate::driver::{self, Callers, Sample, Tally, Timing};
use crate::placement::{self, Placement};
use crate::procfs;
use crate::raw;
use crate::report;
use crate::server::ServerProc;
use crate::system::{Mode, Payload, ServerKind, Variant, Workload};
use crate::Result;

/// The options of `bench run` (also accepted with no subcommand).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct RunArgs {
    /// Tiny counts, to prove the tool works (the test suite runs this); overrides the
    /// counts and durations below.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Repetitions of every measurement; the report shows medians.
    #[arg(long, default_value_t = 3)]
    pub(crate) reps: usize,
    /// Measured calls per sequential measurement, after `calls / 10` warm-up calls (1 MiB
    /// echo: `calls / big_divisor`).
    #[arg(long, default_value_t = 20_000)]
    pub(crate) calls: u64,
    /// Sequential measurements are split into this many rounds, the systems taking turns
    /// round by round, so that a change in the machine's load reaches them all alike.
    #[arg(long, default_value_t = 10)]
    pub(crate) rounds: u64,
    /// The 1 MiB echo makes `calls / big_divisor` calls, to keep the run short.
    #[arg(long, default_value_t = 4)]
    pub(crate) big_divisor: u64,
    /// Seconds measured per load measurement.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) duration: f64,
    /// Load measurements are split into this many slices, the systems taking turns slice
    /// by slice (each slice measures `duration / slices`).
    #[arg(long, default_value_t = 4)]
    pub(crate) slices: usize,
    /// Seconds of warm-up before each load measurement.
    #[arg(long, default_value_t = 0.5)]
    pub(crate) warmup: f64,
    /// Connections of the "many connections, one call each" mode.
    #[arg(long, default_value_t = 256)]
    pub(crate) many: usize,
    /// New connections of the `accept` mode (connection churn: each connects, makes one
    /// `add` and stays open until the last has its answer).
    #[arg(long, default_value_t = 10_000)]
    pub(crate) accept: usize,
    /// Connections of the `accept` mode being opened at a time (connect + call); below
    /// the servers' listen backlog (1024, tokio's), so that no SYN is dropped and
    /// retransmitted a second later.
    #[arg(long, default_value_t = 256)]
    pub(crate) accept_opening: usize,
    /// Where client and server run.
    #[arg(long, value_enum, default_value_t = Placement::Together)]
    pub(crate) placement: Placement,
    /// How the async clients' calls in flight are made in the load modes: a task per call
    /// (the default), or one task per connection joining its calls.
    #[arg(long, value_enum, default_value_t = Callers::Tasks)]
    pub(crate) callers: Callers,
    /// Systems to run (comma-separated); the default is all but `ours-prefork-1`.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub(crate) systems: Vec<ServerKind>,
    /// Worker processes of the `ours-prefork` system (rpc-server's prefork supervisor,
    /// `SO_REUSEPORT`). The kernel puts each connection on one worker (by a hash of its
    /// addresses), so more than one worker can only matter with several connections: the
    /// 16 × 16 and 256 × 1 modes.
    #[arg(long, default_value_t = 2)]
    pub(crate) prefork_workers: usize,
    /// Leave the prefork server's workers unpinned (rpc-server's `bind_core` off, its
    /// default) instead of pinning worker `i` to core `i` mod the cores it may use. Only
    /// `--placement unpinned` differs: with the others the supervisor, and so every
    /// worker, is on the server's one core either way.
    #[arg(long)]
    pub(crate) prefork_unbound: bool,
    /// Clients to run (comma-separated: ours-async-msgpack, ours-async-bincode,
    /// ours-blocking-msgpack, ours-blocking-bincode, ours-prefork-async-msgpack,
    /// ours-prefork-1-async-msgpack (the one-worker prefork server, `ours-prefork-1`), tonic,
    /// tarpc, raw-std, raw-tokio, ours-tls, ours-unix, tonic-tls); the default is all.
    /// Ratios need tonic and the raw floors in the run. The TLS and Unix-socket clients
    /// run `add` only, sequential and 1 × 64.
    #[arg(long, value_delimiter = ',')]
    pub(crate) clients: Vec<String>,
    /// Sequential workloads (comma-separated: add, 16b, 1k, 64k, 1m, records, 1m-text,
    /// 1m-text-zstd, and the big messages 16m and 64m, which run only when named, with our
    /// clients and the raw floors); the default is all but the big ones. Load modes always
    /// use `add`.
    #[arg(long, value_delimiter = ',')]
    pub(crate) workloads: Vec<String>,
    /// Load modes (comma-separated: 1x64, 16x16, many, accept); the default is the first
    /// three (`accept`, connection churn, runs only when named).
    #[arg(long, value_delimiter = ',')]
    pub(crate) modes: Vec<String>,
    /// Skip the sequential measurements.
    #[arg(long)]
    pub(crate) no_sequential: bool,
    /// Skip the load (throughput) measurements.
    #[arg(long)]
    pub(crate) no_load: bool,
    /// Write report.md and the charts (SVG) into this directory.
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
}

impl RunArgs {
    fn apply_quick(&mut self) {
        if self.quick {
            self.reps = 1;
            self.calls = 200;
            self.rounds = 2;
            self.slices = 1;
            self.big_divisor = 4;
            self.duration = 0.2;
            self.warmup = 0.05;
            self.many = self.many.min(16);
            self.accept = self.accept.min(16);
        }
    }

    /// Calls per sequential measurement: `calls`, a `big_divisor`th of it for the 1 MiB
    /// echo, and for bigger echoes as many bytes as the 1 MiB echo moves (at least 2).
    fn calls_for(&self, w: Workload) -> u64 {
        let big = (self.calls / self.big_divisor.max(1)).max(1);
        match w {
            Workload::Echo(n) | Workload::EchoBlob(n) if n > 1 << 20 => (big / (n as u64 >> 20)).max(2),
            Workload::Echo(n) | Workload::EchoBlob(n) if n >= 1 << 20 => big,
            Workload::EchoText { .. } => big,
            _ => self.calls,
        }
    }

    /// Whether `name` (a workload of `Workload::all` or `Workload::big`) is to run.
    fn wants_workload(&self, name: &str, big: bool) -> bool {
        if self.workloads.is_empty() {
            !big
        } else {
            self.workloads.iter().any(|n| n == name)
        }
    }

    /// The largest message our servers and clients must accept, if a planned workload is
    /// over the default limit: the 64 MiB echo's frame (the bench server's
    /// `--max-message-size`, and our clients' `Config::max_message_size`).
    pub(crate) fn max_message_size(&self) -> Option<usize> {
        self.plan()
            .iter()
            .filter_map(|(_, w)| match w {
                Workload::Echo(n) | Workload::EchoBlob(n) => Some(n + 1024),
                _ => None,
            })
            .max()
            .filter(|&n| n > easyrpc_proto::DEFAULT_MAX_MESSAGE_SIZE)
    }

    fn timing(&self) -> Timing {
        Timing {
            warmup: Duration::from_secs_f64(self.warmup),
            measure: Duration::from_secs_f64(self.duration),
        }
    }

    /// What is measured, in order: sequential latency of every workload, then load with
    /// `add`.
    pub(crate) fn plan(&self) -> Vec<(Mode, Workload)> {
        let mut plan = Vec::new();
        if !self.no_sequential {
            for (name, w) in Workload::all() {
                if self.wants_workload(name, false) {
                    plan.push((Mode::SEQUENTIAL, w));
                }
            }
            for (name, w) in Workload::big() {
                if self.wants_workload(name, true) {
                    plan.push((Mode::SEQUENTIAL, w));
                }
            }
        }
        if !self.no_load {
            for (name, mode) in [
                ("1x64", Mode::load(1, 64)),
                ("16x16", Mode::load(16, 16)),
                ("many", Mode::load(self.many, 1)),
            ] {
                if self.modes.is_empty() || self.modes.iter().any(|m| m == name) {
                    plan.push((mode, Workload::Add));
                }
            }
            if self.modes.iter().any(|m| m == "accept") {
                plan.push((Mode::accept(self.accept, self.accept_opening), Workload::Add));
            }
        }
        plan
    }
}

/// Every repetition of one measurement.
#[derive(Debug, Default)]
pub(crate) struct Results {
    pub(crate) samples: BTreeMap<(Mode, Workload, Variant), Vec<std::result::Result<Sample, String>>>,
}

/// What the report needs besides the samples.
#[derive(Debug)]
pub(crate) struct Context {
    pub(crate) args: RunArgs,
    pub(crate) command: String,
    pub(crate) machine: procfs::Machine,
    pub(crate) runtime: String,
    pub(crate) idle_rss_kib: BTreeMap<ServerKind, u64>,
    pub(crate) total: Duration,
    /// The commit measured.
    pub(crate) tree: String,
    /// Load averages at the start and at the end of the run.
    pub(crate) load: (String, String),
}

/// Run everything and write the report.
pub(crate) fn run(mut args: RunArgs) -> Result<()> {
    args.apply_quick();
    // The TLS certificate and the Unix socket of the run go when it ends (the servers,
    // dropped before this, have stopped).
    struct Cleanup;
    impl Drop for Cleanup {
        fn drop(&mut self) {
            crate::secure::cleanup();
        }
    }
    let _cleanup = Cleanup;
    let started = Instant::now();
    let load_start = procfs::loadavg();
    let tree = procfs::tree();
    let machine = procfs::machine();
    if args.placement == Placement::Separate && machine.nproc < 2 {
        return Err("--placement separate needs two cores".into());
    }
    if args.prefork_workers == 0 {
        return Err("--prefork-workers must be at least 1".into());
    }
    for name in &args.clients {
        if !Variant::ALL.iter().any(|v| v.arg() == name) {
            return Err(format!("unknown client {name:?}").into());
        }
    }
    for name in &args.modes {
        if !["1x64", "16x16", "many", "accept"].contains(&name.as_str()) {
            return Err(format!("unknown mode {name:?}").into());
        }
    }
    for name in &args.workloads {
        if !Workload::all()
            .iter()
            .chain(&Workload::big())
            .any(|(n, _)| n == name)
        {
            return Err(format!("unknown workload {name:?}").into());
        }
    }
    let selected = |v: Variant| args.clients.is_empty() || args.clients.iter().any(|c| c == v.arg());
    let kinds: Vec<ServerKind> = ServerKind::ALL
        .into_iter()
        // `ours-prefork-1` runs only when named: the baseline of a prefork comparison.
        .filter(|k| {
            if args.systems.is_empty() {
                *k != ServerKind::OursPrefork1
            } else {
                args.systems.contains(k)
            }
        })
        .filter(|k| Variant::ALL.iter().any(|v| v.server() == *k && selected(*v)))
        .collect();
    // Servers first: a child inherits the CPU mask of the thread that starts it, and
    // each server pins itself as told.
    let mut servers = BTreeMap::new();
    for &kind in &kinds {
        let s = ServerProc::spawn(
            kind,
            args.placement.server_core(),
            (args.prefork_workers, !args.prefork_unbound),
            args.max_message_size(),
        )?;
        let pids = procfs::server_pids(s.pid).unwrap_or_default();
        let workers = match pids.get(1..) {
            Some(w) if !w.is_empty() => format!(" (workers {w:?})"),
            _ => String::new(),
        };
        eprintln!(
            "started {} server: pid {}{workers}, {}",
            kind.arg(),
            s.pid,
            s.addr
        );
        servers.insert(kind, s);
    }
    if let Some(core) = args.placement.client_core() {
        placement::pin(core)?;
    }
    if let Some(n) = args.max_message_size() {
        crate::conn::set_max_message_size(n);
    }
    let rt = placement::runtime()?;
    let plan = args.plan();
    let variants: Vec<Variant> = Variant::ALL
        .into_iter()
        .filter(|v| servers.contains_key(&v.server()) && selected(*v))
        .collect();
    // One untimed pass over every sequential workload first: a fresh server process grows
    // its buffers and its allocator settles (glibc's mmap threshold adapts to the 1 MiB
    // messages only after the first ones are freed), and none of that should land in the
    // first repetition of whichever system happens to run first.
    for &(mode, workload) in plan.iter().filter(|(m, _)| m.sequential) {
        let payload = Payload::new(workload);
        let order: Vec<Variant> = variants
            .iter()
            .copied()
            .filter(|v| v.supports(mode, workload))
            .collect();
        let mut warm = args.clone();
        warm.calls = (args.calls_for(workload) / 10).max(1);
        warm.big_divisor = 1;
        warm.rounds = 1;
        for (v, r) in measure_sequential(&rt, &warm, &order, &payload, &servers) {
            if let Err(e) = r {
                eprintln!("warm-up {mode} {workload} {v}: {e}");
            }
        }
    }
    eprintln!("warm-up pass done");
    let mut results = Results::default();
    for rep in 0..args.reps {
        for &(mode, workload) in &plan {
            let payload = Payload::new(workload);
            let mut order: Vec<Variant> = variants
                .iter()
                .copied()
                .filter(|v| v.supports(mode, workload))
                .collect();
            // Interleaved, and each repetition starts with a different system, so that no
            // system always runs right after the same other one.
            let len = order.len().max(1);
            order.rotate_left(rep % len);
            let measured = if mode.sequential {
                measure_sequential(&rt, &args, &order, &payload, &servers)
            } else if mode.accept {
                measure_accept(&rt, mode, &order, &payload, &servers)
            } else {
                measure_loads(&rt, &args, &order, mode, &payload, &servers)
            };
            for (v, r) in measured {
                match &r {
                    Ok(s) => eprintln!(
                        "[{}/{}] {mode} {workload:<18} {v:<22} p50 {:>9.1} µs  p99 {:>9.1} µs  {:>9.0} calls/s  server {:>6.2} µs/call",
                        rep + 1,
                        args.reps,
                        s.quantile(0.5).as_secs_f64() * 1e6,
                        s.quantile(0.99).as_secs_f64() * 1e6,
                        s.throughput(),
                        s.cpu_per_call().as_secs_f64() * 1e6,
                    ),
                    Err(e) => eprintln!("[{}/{}] {mode} {workload} {v}: FAILED: {e}", rep + 1, args.reps),
                }
                results.samples.entry((mode, workload, v)).or_default().push(r);
            }
        }
    }
    let idle_rss_kib = servers.iter().map(|(k, s)| (*k, s.idle_rss_kib)).collect();
    drop(servers);
    let ctx = Context {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine,
        runtime: placement::runtime_description(),
        idle_rss_kib,
        total: started.elapsed(),
        load: (load_start, procfs::loadavg()),
        tree,
        args,
    };
    let md = report::markdown(&ctx, &results);
    println!("{md}");
    if let Some(dir) = &ctx.args.out {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("report.md"), &md)?;
        crate::charts::write_all(dir, &results)?;
        eprintln!("wrote {}", dir.display());
    }
    let failed = results.samples.values().flatten().filter(|r| r.is_err()).count();
    if failed > 0 {
        return Err(format!("{failed} measurement(s) failed").into());
    }
    Ok(())
}

/// A connection kept open across the rounds of a sequential measurement.
enum Conn {
    Blocking(BlockingConn),
    Async(AsyncConn),
}

fn open(rt: &tokio::runtime::Runtime, v: Variant, server: &ServerProc, payload: &Payload) -> Result<Conn> {
    if v.is_blocking() {
        Ok(Conn::Blocking(BlockingConn::connect(v, server.addr, payload)?))
    } else {
        Ok(Conn::Async(rt.block_on(AsyncConn::connect(
            v,
            server.addr,
            payload,
        ))?))
    }
}

/// `calls` sequential calls on `conn`, timed into `tally` or (`None`) untimed.
fn run_calls(
    rt: &tokio::runtime::Runtime,
    conn: &mut Option<Conn>,
    payload: &Arc<Payload>,
    calls: u64,
    pid: u32,
    mut tally: Option<&mut Tally>,
) -> Result<()> {
    match conn.take() {
        Some(Conn::Blocking(mut c)) => {
            let r = driver::seq_blocking(&mut c, payload, calls, pid, tally);
            *conn = Some(Conn::Blocking(c));
            r
        }
        Some(Conn::Async(mut c)) => {
            let mut owned = tally.as_deref().map(|_| Tally::new());
            if let (Some(t), Some(o)) = (tally.as_deref_mut(), owned.as_mut()) {
                std::mem::swap(t, o);
            }
            let p = payload.clone();
            // As a task, so that on a multi-thread runtime it runs on a worker like the
            // connection tasks it talks to.
            let (c, owned, r) = rt.block_on(async move {
                tokio::spawn(async move {
                    let r = driver::seq_async(&mut c, &p, calls, pid, owned.as_mut()).await;
                    (c, owned, r)
                })
                .await
            })?;
            if let (Some(t), Some(o)) = (tally, owned) {
                *t = o;
            }
            *conn = Some(Conn::Async(c));
            r
        }
        None => Err("the connection was lost".into()),
    }
}

/// Sequential latency of every client in `order`: each opens its connection and warms up
/// with `calls / 10` calls, then the clients take turns, `calls / rounds` calls each per
/// round.
fn measure_sequential(
    rt: &tokio::runtime::Runtime,
    args: &RunArgs,
    order: &[Variant],
    payload: &Arc<Payload>,
    servers: &BTreeMap<ServerKind, ServerProc>,
) -> Vec<(Variant, std::result::Result<Sample, String>)> {
    struct Live {
        v: Variant,
        pid: u32,
        conn: Option<Conn>,
        tally: Tally,
        error: Option<String>,
    }
    // Tokio objects dropped outside `block_on` still find their runtime.
    let _runtime = rt.enter();
    let calls = args.calls_for(payload.workload);
    let warmup = (calls / 10).max(1);
    let rounds = args.rounds.clamp(1, calls.max(1));
    let mut live: Vec<Live> = order
        .iter()
        .map(|&v| {
            let server = &servers[&v.server()];
            let (conn, error) = match open(rt, v, server, payload) {
                Ok(c) => (Some(c), None),
                Err(e) => (None, Some(e.to_string())),
            };
            Live {
                v,
                pid: server.pid,
                conn,
                tally: Tally::new(),
                error,
            }
        })
        .collect();
    for l in live.iter_mut().filter(|l| l.error.is_none()) {
        if let Err(e) = run_calls(rt, &mut l.conn, payload, warmup, l.pid, None) {
            l.error = Some(e.to_string());
        }
    }
    // The peak memory of each server over this measurement's rounds (its clients share
    // it): the kernel's high-water mark, reset now.
    for l in &live {
        procfs::reset_peak_rss(l.pid);
    }
    let n = live.len();
    for round in 0..rounds {
        let share = calls / rounds + u64::from(round < calls % rounds);
        for i in 0..n {
            // Each round starts with the next client.
            let l = &mut live[(i + round as usize) % n];
            if l.error.is_some() {
                continue;
            }
            if let Err(e) = run_calls(rt, &mut l.conn, payload, share, l.pid, Some(&mut l.tally)) {
                l.error = Some(e.to_string());
            }
        }
    }
    live.into_iter()
        .map(|l| {
            let r = match l.error {
                Some(e) => Err(e),
                None => l.tally.into_sample(l.pid).map_err(|e| e.to_string()),
            };
            let r = r.map(|mut s| {
                s.peak_rss_kib = procfs::server_peak_rss_kib(l.pid).ok();
                s
            });
            (l.v, r)
        })
        .collect()
}

/// Connection churn ([`Mode::accept`]) of every client in `order`, one after the other.
fn measure_accept(
    rt: &tokio::runtime::Runtime,
    mode: Mode,
    order: &[Variant],
    payload: &Arc<Payload>,
    servers: &BTreeMap<ServerKind, ServerProc>,
) -> Vec<(Variant, std::result::Result<Sample, String>)> {
    let _runtime = rt.enter();
    order
        .iter()
        .map(|&v| {
            let server = &servers[&v.server()];
            let mut tally = Tally::for_load();
            let r = rt
                .block_on(driver::accept_async(
                    v,
                    server.addr,
                    mode,
                    payload,
                    server.pid,
                    &mut tally,
                ))
                .and_then(|()| tally.into_sample(server.pid));
            (v, r.map_err(|e| e.to_string()))
        })
        .collect()
}

/// The connections of one client for a load measurement, kept across its slices.
enum LoadConns {
    Async(Vec<AsyncConn>),
    RawTokio(Vec<raw::TokioConn>),
    RawStd(Vec<raw::StdConn>),
    Blocking(Vec<BlockingConn>),
}

fn open_load(
    rt: &tokio::runtime::Runtime,
    v: Variant,
    mode: Mode,
    server: &ServerProc,
    payload: &Payload,
) -> Result<LoadConns> {
    let (addr, n) = (server.addr, mode.connections);
    Ok(match v {
        Variant::RawStd => LoadConns::RawStd(
            (0..n)
                .map(|_| BlockingConn::connect(v, addr, payload)?.into_raw())
                .collect::<Result<_>>()?,
        ),
        Variant::OursBlocking(_) => LoadConns::Blocking(
            (0..n)
                .map(|_| BlockingConn::connect(v, addr, payload))
                .collect::<Result<_>>()?,
        ),
        Variant::RawTokio => LoadConns::RawTokio(rt.block_on(async {
            let mut conns = Vec::with_capacity(n);
            for _ in 0..n {
                conns.push(raw::TokioConn::connect(addr, payload).await?);
            }
            Ok::<_, crate::BoxError>(conns)
        })?),
        _ => LoadConns::Async(rt.block_on(async {
            let mut conns = Vec::with_capacity(n);
            for _ in 0..n {
                conns.push(AsyncConn::connect(v, addr, payload).await?);
            }
            Ok::<_, crate::BoxError>(conns)
        })?),
    })
}

/// One slice of load on `conns`, added to `tally`.
#[allow(clippy::too_many_arguments)]
fn load_slice(
    rt: &tokio::runtime::Runtime,
    conns: &mut LoadConns,
    mode: Mode,
    callers: Callers,
    payload: &Arc<Payload>,
    timing: Timing,
    pid: u32,
    tally: &mut Tally,
) -> Result<()> {
    match conns {
        LoadConns::RawStd(c) => driver::load_threads(
            c,
            |c: &mut raw::StdConn, phase, h| c.pipelined(mode.in_flight, phase, h),
            timing,
            pid,
            tally,
        ),
        LoadConns::Blocking(c) => driver::load_threads(c, driver::blocking_loop(payload), timing, pid, tally),
        LoadConns::RawTokio(c) => rt.block_on(driver::load_raw_tokio(c, mode.in_flight, timing, pid, tally)),
        LoadConns::Async(c) => rt.block_on(driver::load_async(
            c,
            mode.in_flight,
            callers,
            payload,
            timing,
            pid,
            tally,
        )),
    }
}

/// Closed-loop load of every client in `order` in one mode: each opens its connections,
/// then the clients take turns, `slices` times, each slice warming up first (the first
/// one for `warmup`, the others for a fifth of it) and then measuring `duration / slices`.
fn measure_loads(
    rt: &tokio::runtime::Runtime,
    args: &RunArgs,
    order: &[Variant],
    mode: Mode,
    payload: &Arc<Payload>,
    servers: &BTreeMap<ServerKind, ServerProc>,
) -> Vec<(Variant, std::result::Result<Sample, String>)> {
    struct Live {
        v: Variant,
        pid: u32,
        conns: Option<LoadConns>,
        tally: Tally,
        error: Option<String>,
    }
    let _runtime = rt.enter();
    let slices = args.slices.max(1);
    let mut live: Vec<Live> = order
        .iter()
        .map(|&v| {
            let server = &servers[&v.server()];
            let (conns, error) = match open_load(rt, v, mode, server, payload) {
                Ok(c) => (Some(c), None),
                Err(e) => (None, Some(e.to_string())),
            };
            Live {
                v,
                pid: server.pid,
                conns,
                tally: Tally::for_load(),
                error,
            }
        })
        .collect();
    let full = args.timing();
    let n = live.len();
    for slice in 0..slices {
        let timing = Timing {
            warmup: if slice == 0 { full.warmup } else { full.warmup / 5 },
            measure: full.measure / slices as u32,
        };
        for i in 0..n {
            let l = &mut live[(i + slice) % n];
            let (Some(conns), None) = (l.conns.as_mut(), &l.error) else {
                continue;
            };
            if let Err(e) = load_slice(
                rt,
                conns,
                mode,
                args.callers,
                payload,
                timing,
                l.pid,
                &mut l.tally,
            ) {
                l.error = Some(e.to_string());
            }
        }
    }
    // Close every connection before the next mode opens its own.
    live.into_iter()
        .map(|l| {
            let r = match l.error {
                Some(e) => Err(e),
                None => l.tally.into_sample(l.pid).map_err(|e| e.to_string()),
            };
            rt.block_on(async move { drop(l.conns) });
            (l.v, r)
        })
        .collect()
}
