//! Prefork mode ([`Builder::run`](crate::Builder::run) with
//! [`Config::prefork`](crate::Config::prefork)): a supervisor process forks N workers that
//! all listen on one port with `SO_REUSEPORT`; the kernel spreads connections between them.
//! With several listeners ([`Builder::listen`](crate::Builder::listen)), every worker
//! serves every one: each TCP or TLS port is reserved by the supervisor and bound by every
//! worker with `SO_REUSEPORT`; a Unix socket is bound once, by the supervisor (stale file
//! replaced, mode set), inherited by every worker across the fork (they all accept on the
//! one socket), and its file removed by the supervisor when it exits.
//!
//! The model is gunicorn's and nginx's master/worker design:
//!
//! - The supervisor holds no request logic and never runs a tokio runtime. It forks while
//!   it is the only thread, waits for signals with a `signalfd` (Linux; `sigwait` elsewhere),
//!   reaps every child, and restarts a worker that dies (at once, then with backoff if it
//!   keeps dying at start-up), logging why it died.
//! - Each worker pins itself to a core (with `bind_core`), builds its own runtime, opens
//!   its own listener (`SO_REUSEADDR` + `SO_REUSEPORT`) on the port the supervisor reserved,
//!   and calls the same [`Server::run`] as a single-process server. It dies with the
//!   supervisor (`PR_SET_PDEATHSIG` on Linux; elsewhere it watches its parent).
//! - Signals to the supervisor: TERM or INT stops (every worker stops accepting, finishes
//!   its calls within the grace period, exits; then the supervisor returns); HUP restarts
//!   the workers one by one, each old one told to drain only once its replacement listens;
//!   TTIN and TTOU add and remove a worker.
//! - `max_flow` limits and the dedup cache live in memory shared by every worker (see
//!   [`shm`]), so a limit of N means N across the whole server and a retry that lands on
//!   another worker still finds its answer. They are mapped before the first fork; each
//!   worker then builds its own server from the same [`Builder`] with its index and its
//!   handles on them (`Builder::build_with`): the server defines what a limit and a
//!   dedup store are, and never names this module.
//!
//! This module is the one place of the workspace where `unsafe` is allowed: `fork` and
//! the shared mapping, each with its `SAFETY:` comment.
#![allow(unsafe_code)]

#[cfg(feature = "etcd")]
mod registrar;
mod scrape;
mod shm;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, getppid, ForkResult, Pid};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tracing::{debug, error, info, warn};

use crate::endpoint::{bind_error, bind_first, Kind};
use crate::limits::Limit;
use crate::listener::{Bound, Listener, UnixSocket};
use crate::run::WorkerRuntime;
use crate::{Builder, Error, LocalAddr, Parts, TlsConfig};
use shm::{Control, SharedDedup, SharedFlow};

/// Most workers (TTIN stops here): during a rolling restart each has two slots.
const MAX_WORKERS: usize = shm::MAX_SLOTS / 2;
/// A worker that dies before it listens, or this soon after it started, died at
/// start-up: if it keeps doing so, it is restarted with backoff.
const STARTUP: Duration = Duration::from_secs(1);
/// The second start-up death in a row waits this long, doubling up to [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// After the grace period, how long a stopping worker has before it is killed.
const KILL_AFTER_GRACE: Duration = Duration::from_secs(5);

/// How to run the workers.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) workers: usize,
    pub(crate) bind_core: bool,
    pub(crate) runtime: WorkerRuntime,
    /// Of each worker's listener.
    pub(crate) backlog: u32,
}

/// What every worker listens on, set up by the supervisor before the first fork.
#[derive(Debug)]
enum Planned {
    /// A TCP port every worker binds with `SO_REUSEPORT`; TLS with settings.
    Tcp {
        addr: SocketAddr,
        tls: Option<TlsConfig>,
    },
    /// A Unix socket the supervisor bound, inherited by every worker.
    Unix(UnixSocket),
}

/// Fork the workers and supervise them until TERM or INT; `on_listening` is called once,
/// with what each listener listens on (ports resolved), when every first worker listens.
pub(crate) fn run(
    mut builder: Builder,
    settings: Settings,
    on_listening: impl FnOnce(&[LocalAddr]),
) -> Result<(), Error> {
    check_single_thread()?;
    // The metrics endpoint is the supervisor's (see `scrape`); the workers record.
    let metrics_at = builder.metrics.take();
    // Check the methods once, here, rather than in every worker.
    let uses_dedup = builder.clone().build()?.shared.registry.any_dedup();
    let metrics = match &metrics_at {
        Some(at) => crate::metrics::Metrics::endpoint(at)?,
        None => None,
    };
    if metrics.is_some() {
        builder.metrics = Some(crate::MetricsAt::Supervisor);
    }
    drop(metrics_at);
    let endpoints = std::mem::take(&mut builder.listeners);
    let mut listeners = Vec::with_capacity(endpoints.len());
    let mut reserve = Vec::new();
    let mut local = Vec::with_capacity(endpoints.len());
    for endpoint in &endpoints {
        let planned = match &endpoint.0 {
            Kind::Tcp { addr, tls } => {
                let tls = tls.clone().or_else(|| builder.tls.clone());
                // Choose the port once: a bound, never listening socket holds it (it
                // receives no connections) for as long as the supervisor lives, and every
                // worker binds it too.
                let socket = addr
                    .resolve()
                    .and_then(|addrs| {
                        bind_first(&addrs, |a| {
                            let socket = reuseport_socket(a)?;
                            socket.bind(&a.into())?;
                            Ok(socket)
                        })
                    })
                    .map_err(|e| bind_error(endpoint, e))?;
                let addr = socket
                    .local_addr()?
                    .as_socket()
                    .ok_or_else(|| io::Error::other("the reserved socket has no IP address"))?;
                reserve.push(socket);
                local.push(if tls.is_some() {
                    LocalAddr::Tls(addr)
                } else {
                    LocalAddr::Tcp(addr)
                });
                Planned::Tcp { addr, tls }
            }
            Kind::Unix(path) => {
                let socket = UnixSocket::bind(path, builder.config.unix_socket_mode)
                    .map_err(|e| bind_error(endpoint, e))?;
                local.push(LocalAddr::Unix(path.clone()));
                Planned::Unix(socket)
            }
        };
        listeners.push(planned);
    }

    // Registered once for all workers, before the first of them starts.
    #[cfg(feature = "etcd")]
    let registrar = match builder.discovery.take() {
        Some(reg) => {
            let first = local
                .iter()
                .find_map(LocalAddr::socket_addr)
                .map(|a| a.to_string());
            let workers = u32::try_from(settings.workers).unwrap_or(u32::MAX);
            Some(registrar::Registrar::spawn(reg, first, workers)?)
        }
        None => None,
    };

    // Shared memory, set up before the first fork so that every worker maps it.
    let control = Control::new()?;
    let mut flows = HashMap::new();
    for m in &builder.methods {
        if let Some(limit) = m.max_flow {
            flows.insert(m.name.to_string(), SharedFlow::new(limit)?);
        }
    }
    let dedup = if uses_dedup {
        Some(SharedDedup::new(builder.config.dedup, control)?)
    } else {
        None
    };

    let cores = if settings.bind_core {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    if settings.bind_core && cores.is_empty() {
        warn!("bind_core: the usable cores are unknown; workers are not pinned");
    }
    let desired = settings.workers.clamp(1, MAX_WORKERS);
    let supervisor = Supervisor {
        grace: builder.config.grace_period,
        builder,
        listeners,
        local,
        settings,
        control,
        flows,
        dedup,
        cores,
        me: Pid::this(),
        workers: Vec::new(),
        taken: vec![false; shm::MAX_SLOTS],
        desired,
        generation: 0,
        backoff: Vec::new(),
        stopping: None,
        failed: None,
        announced: false,
        reserve,
        signals: Some(Signals::new()?),
        metrics,
        scrapes: 0,
        #[cfg(feature = "etcd")]
        registrar,
    };
    supervisor.supervise(on_listening)
}

/// Forking a process with more than one thread leaves the child without them (a tokio
/// runtime forked this way never runs a task). Checked on Linux, where `/proc` says.
fn check_single_thread() -> Result<(), Error> {
    #[cfg(target_os = "linux")]
    {
        let threads = std::fs::read_dir("/proc/self/task")?.count();
        if threads != 1 {
            return Err(Error::Threads(threads));
        }
    }
    Ok(())
}

/// A TCP socket for `addr` with `SO_REUSEADDR` and `SO_REUSEPORT` (the latter must be set
/// before `bind`, on every socket sharing the port).
fn reuseport_socket(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    reuseport(&socket)?;
    Ok(socket)
}

/// Set `SO_REUSEPORT` (and, on FreeBSD, the balancing `SO_REUSEPORT_LB`).
fn reuseport(socket: &Socket) -> io::Result<()> {
    #[cfg(not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin")))]
    socket.set_reuse_port(true)?;
    // FreeBSD shares the port with SO_REUSEPORT but balances only with SO_REUSEPORT_LB.
    #[cfg(target_os = "freebsd")]
    socket.set_reuse_port_lb(true)?;
    #[cfg(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin"))]
    return Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "prefork needs SO_REUSEPORT",
    ));
    #[cfg(not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin")))]
    Ok(())
}

/// A worker's TCP listener: its own socket in the port's `SO_REUSEPORT` group.
fn listen(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    TcpListener::from_std(crate::listener::bind(addr, backlog, reuseport)?)
}

/// The signals the supervisor acts on; blocked in it and read from a `signalfd`.
/// SIGUSR1 is a worker saying it listens.
fn supervisor_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGTTIN,
        Signal::SIGTTOU,
        Signal::SIGCHLD,
        Signal::SIGUSR1,
        Signal::SIGALRM,
    ] {
        set.add(s);
    }
    set
}

#[cfg(target_os = "linux")]
#[derive(Debug)]
struct Signals(nix::sys::signalfd::SignalFd);

#[cfg(target_os = "linux")]
impl Signals {
    fn new() -> io::Result<Signals> {
        use nix::sys::signalfd::{SfdFlags, SignalFd};
        let set = supervisor_signals();
        set.thread_block()?;
        Ok(Signals(SignalFd::with_flags(
            &set,
            SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC,
        )?))
    }

    /// The signals that arrived, waiting up to `timeout` (forever if `None`) for one, or
    /// for `also` to be readable.
    fn wait(
        &mut self,
        timeout: Option<Duration>,
        also: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> io::Result<Vec<Signal>> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let timeout = match timeout {
            None => PollTimeout::NONE,
            // Rounded up: a wake-up a little early would only spin.
            Some(d) => PollTimeout::try_from(d.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32)
                .unwrap_or(PollTimeout::MAX),
        };
        let mut fds = vec![PollFd::new(self.0.as_fd(), PollFlags::POLLIN)];
        fds.extend(also.map(|fd| PollFd::new(fd, PollFlags::POLLIN)));
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        let mut got = Vec::new();
        while let Some(info) = self.0.read_signal()? {
            if let Ok(s) = Signal::try_from(info.ssi_signo as i32) {
                got.push(s);
            }
        }
        Ok(got)
    }
}

/// Other Unix: `sigwait`, with `alarm` (whole seconds) as the timer.
#[cfg(not(target_os = "linux"))]
#[derive(Debug)]
struct Signals(SigSet);

#[cfg(not(target_os = "linux"))]
impl Signals {
    fn new() -> io::Result<Signals> {
        let set = supervisor_signals();
        set.thread_block()?;
        Ok(Signals(set))
    }

    /// `also` cannot be waited for with `sigwait`: with it, the wait is a second at most.
    fn wait(
        &mut self,
        timeout: Option<Duration>,
        also: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> io::Result<Vec<Signal>> {
        use nix::unistd::alarm;
        let timeout = match (timeout, also) {
            (t, None) => t,
            (t, Some(_)) => Some(t.map_or(Duration::from_secs(1), |t| t.min(Duration::from_secs(1)))),
        };
        if let Some(d) = timeout {
            alarm::set(d.as_secs_f64().ceil().clamp(1.0, f64::from(u32::MAX)) as u32);
        }
        let s = self.0.wait()?;
        alarm::cancel();
        Ok(if s == Signal::SIGALRM { Vec::new() } else { vec![s] })
    }
}

/// Why a worker ended.
#[derive(Debug, Clone, Copy)]
enum Cause {
    Exit(i32),
    Signal(Signal),
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::Exit(code) => write!(f, "exited with code {code}"),
            Cause::Signal(s) => write!(f, "killed by {}", s.as_str()),
        }
    }
}

#[derive(Debug)]
struct Worker {
    pid: Pid,
    slot: usize,
    index: usize,
    /// Bumped by HUP: an older worker is retired once its replacement listens.
    generation: u64,
    /// The supervisor's end of the worker's metrics channel (with metrics on).
    scrape: Option<std::os::unix::net::UnixStream>,
    started: Instant,
    ready: bool,
    /// When it was told to stop (TERM), and whether it was killed after the grace period.
    stop_sent: Option<Instant>,
    killed: bool,
}

/// Per worker index: start-up deaths in a row, and when the next start may happen.
#[derive(Debug, Default, Clone, Copy)]
struct Backoff {
    failures: u32,
    not_before: Option<Instant>,
}

#[derive(Debug)]
struct Supervisor {
    builder: Builder,
    /// What every worker listens on (the Unix sockets are bound here, and their files
    /// removed when the supervisor is dropped).
    listeners: Vec<Planned>,
    /// The same, as `on_listening` is told.
    local: Vec<LocalAddr>,
    settings: Settings,
    grace: Duration,
    control: Control,
    /// The shared `max_flow` limits, by method name.
    flows: HashMap<String, SharedFlow>,
    dedup: Option<SharedDedup>,
    cores: Vec<core_affinity::CoreId>,
    me: Pid,
    workers: Vec<Worker>,
    /// Slots in use (by a worker not yet reaped).
    taken: Vec<bool>,
    desired: usize,
    generation: u64,
    backoff: Vec<Backoff>,
    /// TERM or INT received (or start-up failed) at this instant.
    stopping: Option<Instant>,
    /// A worker could not start before the server was announced: the error to return.
    failed: Option<String>,
    announced: bool,
    /// The reserved TCP ports; dropped by each child right after the fork: not the
    /// worker's to keep.
    reserve: Vec<Socket>,
    signals: Option<Signals>,
    /// The metrics endpoint's socket (non-blocking), with metrics on.
    metrics: Option<std::net::TcpListener>,
    /// Scrapes so far: the sequence number of the workers' answers.
    scrapes: u32,
    /// The process keeping the registration in etcd alive ([`Builder::discovery`]).
    #[cfg(feature = "etcd")]
    registrar: Option<registrar::Registrar>,
}

impl Supervisor {
    fn supervise(mut self, on_listening: impl FnOnce(&[LocalAddr])) -> Result<(), Error> {
        let mut on_listening = Some(on_listening);
        let addrs = self
            .local
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        info!(addr = %addrs, workers = self.desired, pid = self.me.as_raw(), "prefork supervisor started");
        loop {
            let now = Instant::now();
            self.reap(now);
            self.refresh_ready();
            if !self.announced && self.stopping.is_none() && self.all_ready() {
                self.announced = true;
                info!(addr = %addrs, workers = self.desired, "every worker listens");
                if let Some(f) = on_listening.take() {
                    f(&self.local);
                }
                // Whatever the callback printed must not be printed again by a child.
                let _ = io::stdout().flush();
            }
            if self.stopping.is_some() {
                if self.workers.is_empty() {
                    return match self.failed.take() {
                        Some(why) => Err(io::Error::other(why).into()),
                        None => {
                            info!("every worker has stopped; the supervisor exits");
                            Ok(())
                        }
                    };
                }
                self.escalate(now);
            } else {
                self.reconcile(now);
            }
            let timeout = self.next_wake(now);
            // Unwrap: only a child drops the signal reader, and a child never gets here.
            let signals = {
                use std::os::fd::AsFd;
                let also = self.metrics.as_ref().map(AsFd::as_fd);
                self.signals.as_mut().unwrap().wait(timeout, also)?
            };
            for s in signals {
                self.on_signal(s);
            }
            self.serve_scrapes();
        }
    }

    fn on_signal(&mut self, s: Signal) {
        match s {
            Signal::SIGTERM | Signal::SIGINT if self.stopping.is_none() => {
                info!(
                    signal = s.as_str(),
                    "stopping: every worker finishes its calls, then exits"
                );
                // Deregistered before draining: no client is sent to a draining worker.
                #[cfg(feature = "etcd")]
                if let Some(registrar) = self.registrar.take() {
                    registrar.deregister();
                }
                self.stop_all();
            }
            Signal::SIGHUP if self.stopping.is_none() => {
                self.generation += 1;
                info!(
                    workers = self.desired,
                    "rolling restart: each worker is replaced once its successor listens"
                );
            }
            Signal::SIGTTIN if self.stopping.is_none() => {
                if self.desired < MAX_WORKERS {
                    self.desired += 1;
                }
                info!(workers = self.desired, "one worker more");
            }
            Signal::SIGTTOU if self.stopping.is_none() => {
                if self.desired > 1 {
                    self.desired -= 1;
                }
                info!(workers = self.desired, "one worker fewer");
            }
            // SIGCHLD and SIGUSR1 only wake the loop, which reaps and reads readiness.
            _ => {}
        }
    }

    fn stop_all(&mut self) {
        self.stopping = Some(Instant::now());
        for i in 0..self.workers.len() {
            self.term(i);
        }
    }

    fn term(&mut self, i: usize) {
        let w = &mut self.workers[i];
        if w.stop_sent.is_none() {
            w.stop_sent = Some(Instant::now());
            debug!(
                index = w.index,
                pid = w.pid.as_raw(),
                "telling the worker to stop"
            );
            let _ = kill(w.pid, Signal::SIGTERM);
        }
    }

    /// Kill workers still running past the grace period (plus a margin).
    fn escalate(&mut self, now: Instant) {
        for w in &mut self.workers {
            if let Some(at) = w.stop_sent {
                if !w.killed && now >= at + self.grace + KILL_AFTER_GRACE {
                    warn!(
                        index = w.index,
                        pid = w.pid.as_raw(),
                        "worker still running after the grace period; killing it"
                    );
                    w.killed = true;
                    let _ = kill(w.pid, Signal::SIGKILL);
                }
            }
        }
    }

    /// Whether index `i` has a current worker (this generation, not stopping).
    fn has_current(&self, index: usize, ready: bool) -> bool {
        self.workers.iter().any(|w| {
            w.index == index
                && w.generation == self.generation
                && w.stop_sent.is_none()
                && (w.ready || !ready)
        })
    }

    fn all_ready(&self) -> bool {
        (0..self.desired).all(|i| self.has_current(i, true))
    }

    fn refresh_ready(&mut self) {
        for w in &mut self.workers {
            if !w.ready && self.control.is_ready(w.slot) {
                w.ready = true;
                debug!(index = w.index, pid = w.pid.as_raw(), "worker listens");
            }
        }
    }

    /// Retire what is not wanted any more; start what is missing.
    fn reconcile(&mut self, now: Instant) {
        for i in 0..self.workers.len() {
            let w = &self.workers[i];
            if w.stop_sent.is_some() {
                continue;
            }
            let replaced = w.generation < self.generation && self.has_current(w.index, true);
            if w.index >= self.desired || replaced {
                self.term(i);
            }
        }
        for index in 0..self.desired {
            if self.backoff.len() <= index {
                self.backoff.resize(index + 1, Backoff::default());
            }
            if self.has_current(index, false) || self.backoff[index].not_before.is_some_and(|t| now < t) {
                continue;
            }
            if let Err(e) = self.spawn(index) {
                error!(index, error = %e, "could not start a worker; trying again shortly");
                self.backoff[index].not_before = Some(now + BACKOFF_FIRST);
            }
        }
    }

    /// The next instant something is due: a delayed start or a kill after the grace period.
    fn next_wake(&self, now: Instant) -> Option<Duration> {
        let starts = (0..self.desired)
            .filter(|&i| self.stopping.is_none() && !self.has_current(i, false))
            .filter_map(|i| self.backoff.get(i).and_then(|b| b.not_before));
        let kills = self
            .workers
            .iter()
            .filter(|w| !w.killed)
            .filter_map(|w| w.stop_sent.map(|at| at + self.grace + KILL_AFTER_GRACE));
        starts
            .chain(kills)
            .min()
            .map(|t| t.saturating_duration_since(now))
    }

    /// `waitpid` every child that has ended: no zombie is left.
    fn reap(&mut self, now: Instant) {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => self.ended(pid, Cause::Exit(code), now),
                Ok(WaitStatus::Signaled(pid, s, _)) => self.ended(pid, Cause::Signal(s), now),
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return,
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    error!(error = %e, "waitpid");
                    return;
                }
            }
        }
    }

    fn ended(&mut self, pid: Pid, cause: Cause, now: Instant) {
        let Some(i) = self.workers.iter().position(|w| w.pid == pid) else {
            debug!(pid = pid.as_raw(), %cause, "reaped a child that is not a worker");
            return;
        };
        let w = self.workers.swap_remove(i);
        // Give back what it held: max_flow permits, and any lock it died holding.
        for flow in self.flows.values() {
            let permits = flow.reclaim(w.slot);
            if permits > 0 {
                info!(
                    index = w.index,
                    pid = pid.as_raw(),
                    permits,
                    "returned the max_flow permits of an ended worker"
                );
            }
        }
        if let Some(cache) = &self.dedup {
            if cache.reclaim(w.slot) {
                warn!(
                    index = w.index,
                    pid = pid.as_raw(),
                    "worker died holding the dedup cache's lock; it will be cleared"
                );
            }
        }
        self.control.vacate(w.slot);
        self.taken[w.slot] = false;

        let asked = w.stop_sent.is_some() || self.stopping.is_some();
        if asked {
            match cause {
                Cause::Exit(0) => info!(index = w.index, pid = pid.as_raw(), "worker stopped"),
                _ => warn!(index = w.index, pid = pid.as_raw(), %cause, "worker stopped abnormally"),
            }
            return;
        }
        if !self.announced && !w.ready {
            error!(index = w.index, pid = pid.as_raw(), %cause, "worker failed to start; stopping");
            self.failed = Some(format!("worker {} failed to start: it {cause}", w.index));
            self.stop_all();
            return;
        }
        let startup = !w.ready || now.saturating_duration_since(w.started) < STARTUP;
        let b = &mut self.backoff[w.index];
        b.failures = if startup { b.failures + 1 } else { 1 };
        let delay = restart_delay(b.failures);
        b.not_before = Some(now + delay);
        warn!(index = w.index, pid = pid.as_raw(), %cause, restart_in = ?delay, "worker died; starting another");
    }

    /// Answer every scraper waiting on the metrics endpoint (see `scrape`). Each scrape
    /// holds the loop for at most a few [`scrape::ASK`] (reading the request, each worker's
    /// answer, writing the response); signals that arrive meanwhile are handled after it.
    fn serve_scrapes(&mut self) {
        let Some(listener) = self.metrics.take() else {
            return;
        };
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    if let Err(e) = scrape::answer_http(stream, || self.gather()) {
                        debug!(error = %e, "metrics scrape");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    debug!(error = %e, "metrics endpoint: accept");
                    break;
                }
            }
        }
        self.metrics = Some(listener);
    }

    /// Every worker's metrics, merged: one worker per index, the current generation's
    /// once it listens.
    fn gather(&mut self) -> String {
        self.scrapes = self.scrapes.wrapping_add(1);
        let mut asked: BTreeMap<usize, usize> = BTreeMap::new();
        for (i, w) in self.workers.iter().enumerate() {
            if !w.ready || w.scrape.is_none() {
                continue;
            }
            let better =
                |o: &Worker| (o.generation, o.stop_sent.is_none()) < (w.generation, w.stop_sent.is_none());
            match asked.get(&w.index) {
                Some(&o) if !better(&self.workers[o]) => {}
                _ => {
                    asked.insert(w.index, i);
                }
            }
        }
        let mut texts = Vec::with_capacity(asked.len());
        for (index, i) in asked {
            let w = &self.workers[i];
            // Unwrap: only workers with a channel were chosen.
            match scrape::ask(w.scrape.as_ref().unwrap(), self.scrapes) {
                Ok(text) => texts.push((index, text)),
                Err(e) => debug!(index, pid = w.pid.as_raw(), error = %e, "a worker's metrics did not come"),
            }
        }
        scrape::merge(&texts)
    }

    fn free_slot(&self) -> Option<usize> {
        self.taken.iter().position(|t| !t)
    }

    fn spawn(&mut self, index: usize) -> io::Result<()> {
        let slot = self.free_slot().ok_or_else(|| {
            io::Error::other("every worker slot is taken (too many workers still stopping)")
        })?;
        // The worker's metrics channel: made before the fork, one end each.
        let (ours, theirs) = match self.metrics {
            Some(_) => {
                let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
                (Some(ours), Some(theirs))
            }
            None => (None, None),
        };
        // Buffered output would be written by both processes.
        let _ = io::stdout().flush();
        let _ = io::stderr().flush();
        // SAFETY: the process has a single thread: checked before the first fork, and the
        // supervisor starts none (no runtime, no thread). So no lock can be held by a
        // thread that does not exist in the child, and the child may run any code. The
        // child never returns into the supervisor's loop: it runs the worker and exits.
        match unsafe { fork() }? {
            ForkResult::Child => {
                // Not the supervisor's: the reserved sockets and the signal reader.
                self.reserve.clear();
                self.signals = None;
                #[cfg(feature = "etcd")]
                if let Some(registrar) = self.registrar.take() {
                    registrar.disown();
                }
                // Nor the metrics endpoint, nor the other workers' channels.
                self.metrics = None;
                drop(ours);
                for w in &mut self.workers {
                    w.scrape = None;
                }
                // The listeners, taken over (this process never returns to the
                // supervisor's code): a Unix socket's file is the supervisor's to remove.
                let mut listeners = std::mem::take(&mut self.listeners);
                for l in &mut listeners {
                    if let Planned::Unix(socket) = l {
                        socket.disown();
                    }
                }
                let launch = Launch {
                    builder: self.builder.clone(),
                    flows: self.flows.clone(),
                    dedup: self.dedup.clone(),
                    listeners,
                    index,
                    slot,
                    supervisor: self.me,
                    control: self.control,
                    core: (!self.cores.is_empty()).then(|| self.cores[index % self.cores.len()]),
                    runtime: self.settings.runtime.clone(),
                    backlog: self.settings.backlog,
                    scrape: theirs,
                };
                // A panic must not unwind into the supervisor's code in this process.
                let code =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker(launch))).unwrap_or(101);
                std::process::exit(code);
            }
            ForkResult::Parent { child } => {
                self.control.occupy(slot, child.as_raw() as u32);
                self.taken[slot] = true;
                info!(
                    index,
                    pid = child.as_raw(),
                    generation = self.generation,
                    "worker started"
                );
                self.workers.push(Worker {
                    pid: child,
                    slot,
                    index,
                    generation: self.generation,
                    scrape: ours,
                    started: Instant::now(),
                    ready: false,
                    stop_sent: None,
                    killed: false,
                });
                Ok(())
            }
        }
    }
}

/// How long to wait before restarting a worker after `failures` deaths in a row (all but
/// the first at start-up): the first restart is immediate, then 100 ms doubling to 10 s.
fn restart_delay(failures: u32) -> Duration {
    match failures {
        0 | 1 => Duration::ZERO,
        n => BACKOFF_FIRST
            .saturating_mul(1 << (n - 2).min(16))
            .min(BACKOFF_MAX),
    }
}

/// What a freshly forked worker needs.
struct Launch {
    builder: Builder,
    flows: HashMap<String, SharedFlow>,
    dedup: Option<SharedDedup>,
    listeners: Vec<Planned>,
    index: usize,
    slot: usize,
    supervisor: Pid,
    control: Control,
    core: Option<core_affinity::CoreId>,
    runtime: WorkerRuntime,
    backlog: u32,
    /// The worker's end of its metrics channel (with metrics on).
    scrape: Option<std::os::unix::net::UnixStream>,
}

thread_local! {
    /// The worker's span, entered on every thread of its runtime.
    static SPAN: RefCell<Option<tracing::span::EnteredSpan>> = const { RefCell::new(None) };
}

/// A worker's life, in the child process: returns its exit code.
fn worker(l: Launch) -> i32 {
    l.control.occupy(l.slot, std::process::id());
    // At the error level so that it is enabled whenever anything is logged: every line a
    // worker logs carries its index and pid.
    let span = tracing::error_span!("worker", index = l.index, pid = std::process::id());
    let _entered = span.clone().entered();
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM) {
        warn!(error = %e, "PR_SET_PDEATHSIG failed: this worker may outlive the supervisor");
    }
    // The supervisor may have died before the line above.
    if getppid() != l.supervisor {
        return 1;
    }
    // Pinned before the runtime exists, so that every thread it starts inherits the mask.
    if let Some(core) = l.core {
        if core_affinity::set_for_current(core) {
            info!(core = core.id, "pinned to a core");
        } else {
            warn!(core = core.id, "could not pin to the core");
        }
    }
    let mut builder = match l.runtime {
        WorkerRuntime::CurrentThread => tokio::runtime::Builder::new_current_thread(),
        WorkerRuntime::MultiThread { threads } => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if threads > 0 {
                b.worker_threads(threads);
            }
            b
        }
    };
    let thread_span = span.clone();
    builder.enable_all().on_thread_start(move || {
        SPAN.with(|s| *s.borrow_mut() = Some(thread_span.clone().entered()));
    });
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "could not build the runtime");
            return 1;
        }
    };
    // This worker's server: its index, and its handles on the shared limits and cache.
    let limit = |name: &str, limit: usize| -> Arc<dyn Limit> {
        match l.flows.get(name) {
            Some(flow) => Arc::new(flow.for_slot(l.slot)),
            // Not reached: the map was made from these same methods.
            None => Arc::new(crate::limits::LocalLimit::new(limit)),
        }
    };
    let parts = Parts {
        worker: l.index,
        limit: Some(&limit),
        dedup: l
            .dedup
            .as_ref()
            .map(|d| Arc::new(d.for_worker(l.slot, std::process::id())) as Arc<dyn crate::dedup::Store>),
    };
    let server = match l.builder.clone().build_with(parts) {
        Ok(server) => server,
        Err(e) => {
            error!(error = %e, "could not build the server");
            return 1;
        }
    };
    let code = runtime.block_on(serve(l, server));
    // A sync handler still running after the grace period cannot be stopped: do not wait.
    runtime.shutdown_timeout(Duration::from_millis(100));
    code
}

async fn serve(l: Launch, server: crate::Server) -> i32 {
    use tokio::signal::unix::{signal, SignalKind};
    let (term, int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            error!(error = %e, "could not handle TERM and INT");
            return 1;
        }
    };
    // Blocked since the fork (the supervisor's mask); TERM and INT now reach tokio's
    // handlers, a pending one included. HUP, TTIN and TTOU stay blocked: only the
    // supervisor acts on them. std's Command resets the mask of processes it starts.
    let mut unblock = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD, Signal::SIGALRM] {
        unblock.add(s);
    }
    if let Err(e) = unblock.thread_unblock() {
        error!(error = %e, "could not unblock TERM and INT");
        return 1;
    }
    let mut bound = Vec::with_capacity(l.listeners.len());
    for planned in l.listeners {
        let listener = match planned {
            Planned::Tcp { addr, tls } => match listen(addr, l.backlog) {
                Ok(listener) => Bound::tcp(listener, tls.as_ref().map(TlsConfig::acceptor)),
                Err(e) => {
                    error!(%addr, error = %e, "could not listen");
                    return 1;
                }
            },
            Planned::Unix(socket) => {
                let path = socket.path().display().to_string();
                match socket.into_incoming() {
                    Ok(incoming) => Bound::unix(incoming),
                    Err(e) => {
                        error!(%path, error = %e, "could not take over the Unix socket");
                        return 1;
                    }
                }
            }
        };
        bound.push(listener);
    }
    if let (Some(stream), Some(metrics)) = (l.scrape, server.shared.metrics.clone()) {
        tokio::spawn(scrape::answer_supervisor(stream, metrics));
    }
    l.control.set_ready(l.slot);
    let _ = kill(l.supervisor, Signal::SIGUSR1);
    info!(listeners = bound.len(), "worker listening");
    Listener::new(server.shared.clone(), bound)
        .run(stop_signal(term, int, l.supervisor))
        .await;
    info!("worker stopped");
    0
}

async fn stop_signal(
    mut term: tokio::signal::unix::Signal,
    mut int: tokio::signal::unix::Signal,
    supervisor: Pid,
) {
    let orphaned = async {
        if cfg!(target_os = "linux") {
            // PR_SET_PDEATHSIG sends TERM.
            std::future::pending::<()>().await;
        }
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if getppid() != supervisor {
                warn!("the supervisor is gone; stopping");
                return;
            }
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        () = orphaned => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_only_when_a_worker_keeps_dying_at_start_up() {
        let delays: Vec<_> = (1..=10).map(|n| restart_delay(n).as_millis()).collect();
        assert_eq!(delays, [0, 100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]);
        assert_eq!(restart_delay(u32::MAX), BACKOFF_MAX);
    }
}
