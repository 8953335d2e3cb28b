//! Registration in etcd under prefork (feature `etcd`): once for all workers, by a process
//! of its own.
//!
//! The supervisor must stay single-threaded (it forks workers for as long as it lives),
//! and the etcd client needs a runtime: so the supervisor forks a registrar before its
//! first worker. The registrar registers, says so through a pipe (the supervisor waits:
//! a failure is a start-up error, before any worker runs), and keeps the lease alive.
//! On TERM or INT the supervisor stops the registrar first (which revokes the lease) and
//! waits for it (at most 3 s), then drains its workers. The registrar dies with the
//! supervisor (`PR_SET_PDEATHSIG`, KILL): a crashed supervisor's key expires with its
//! lease.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use tracing::warn;

use crate::discovery::{DiscoveryError, Registered};
use crate::{Error, Registration};

/// How long the supervisor waits for the registrar to deregister.
const DEREGISTER_WAIT: Duration = Duration::from_secs(3);

/// The registrar process, seen from the supervisor.
#[derive(Debug)]
pub(super) struct Registrar {
    pid: Option<Pid>,
}

impl Registrar {
    /// Fork the registrar and wait until it has registered. The process must have one
    /// thread (checked by the caller).
    pub(super) fn spawn(reg: Registration, local: Option<String>, workers: u32) -> Result<Registrar, Error> {
        let (read, write) = nix::unistd::pipe().map_err(std::io::Error::from)?;
        // Buffered output would be written by both processes.
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        // SAFETY: the process has a single thread (prefork::run checked it, and the
        // supervisor starts none), so no lock can be held by a thread missing in the
        // child, and the child may run any code. The child never returns into the
        // supervisor's code: it registers, waits for a signal and exits.
        match unsafe { fork() }.map_err(std::io::Error::from)? {
            ForkResult::Child => {
                drop(read);
                let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    registrar(reg, local, workers, std::fs::File::from(write))
                }))
                .unwrap_or(101);
                std::process::exit(code);
            }
            ForkResult::Parent { child } => {
                drop(write);
                let mut status = String::new();
                // The registrar writes its outcome and closes its end, or dies (EOF): its
                // registration is bounded in time, so this read is too.
                let _ = std::fs::File::from(read).read_to_string(&mut status);
                if status == "ok" {
                    return Ok(Registrar { pid: Some(child) });
                }
                let _ = kill(child, Signal::SIGKILL);
                let _ = waitpid(child, None);
                let why = if status.is_empty() {
                    "the registering process died".to_owned()
                } else {
                    status
                };
                Err(DiscoveryError::Process(why).into())
            }
        }
    }

    /// Stop the registrar (it revokes the lease) and wait for it, at most 3 s.
    pub(super) fn deregister(mut self) {
        self.stop();
    }

    /// In a worker: this process's copy is not the registrar's owner.
    pub(super) fn disown(mut self) {
        self.pid = None;
    }

    fn stop(&mut self) {
        let Some(pid) = self.pid.take() else { return };
        if kill(pid, Signal::SIGTERM).is_err() {
            // Gone already (and reaped by the supervisor's loop).
            return;
        }
        let deadline = Instant::now() + DEREGISTER_WAIT;
        loop {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(WaitStatus::StillAlive) => {
                    warn!(
                        pid = pid.as_raw(),
                        "the registrar did not stop in time: killed (the key goes with its lease)"
                    );
                    let _ = kill(pid, Signal::SIGKILL);
                    let _ = waitpid(pid, None);
                    return;
                }
                _ => return,
            }
        }
    }
}

impl Drop for Registrar {
    /// The supervisor returns (every worker stopped, or start-up failed): deregister.
    fn drop(&mut self) {
        self.stop();
    }
}

/// The registrar's life, in the child process: returns its exit code.
fn registrar(reg: Registration, local: Option<String>, workers: u32, mut status: std::fs::File) -> i32 {
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        warn!(error = %e, "PR_SET_PDEATHSIG failed: the registrar may outlive the supervisor");
    }
    // Signals the supervisor may block are this process's to receive.
    let _ = SigSet::all().thread_unblock();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = write!(status, "no runtime for the registrar: {e}");
            return 1;
        }
    };
    runtime.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
        else {
            let _ = write!(status, "the registrar cannot listen for TERM");
            return 1;
        };
        let registered = match Registered::start(reg, local, workers).await {
            Ok(r) => r,
            Err(e) => {
                let _ = write!(status, "{e}");
                return 1;
            }
        };
        let _ = status.write_all(b"ok");
        drop(status);
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        registered.deregister().await;
        0
    })
}
