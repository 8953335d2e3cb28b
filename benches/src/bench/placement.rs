//! Where the client and the server run: pinned together on one core, on separate cores, or
//! wherever the scheduler puts them.
//!
//! On these 2-vCPU machines a wake-up across vCPUs costs tens of microseconds, far more
//! than the software path being measured, so the default pins both processes to one core.

use std::io;

use crate::Result;

/// The CPU placement of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Placement {
    /// Client and server pinned to core 0.
    Together,
    /// Client on core 0, server on core 1.
    Separate,
    /// No pinning.
    Unpinned,
}

impl Placement {
    pub(crate) fn client_core(self) -> Option<usize> {
        match self {
            Placement::Together | Placement::Separate => Some(0),
            Placement::Unpinned => None,
        }
    }

    pub(crate) fn server_core(self) -> Option<usize> {
        match self {
            Placement::Together => Some(0),
            Placement::Separate => Some(1),
            Placement::Unpinned => None,
        }
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            Placement::Together => "client and server pinned together on core 0",
            Placement::Separate => "client pinned to core 0, server to core 1",
            Placement::Unpinned => "unpinned",
        }
    }

    /// Where the prefork server's workers run. The supervisor is pinned to the server's
    /// core, if any, and with `bind_core` (the bench's default) turns rpc-server's
    /// `bind_core` on, which pins worker `i` to core `i % n` of the `n` cores the
    /// supervisor may use (see `server::serve_prefork`).
    pub(crate) fn describe_prefork(self, bind_core: bool) -> &'static str {
        match (self, bind_core) {
            (Placement::Together, _) => "every worker on core 0, with the client",
            (Placement::Separate, _) => "every worker on core 1",
            (Placement::Unpinned, true) => {
                "worker i pinned to core i mod the number of cores (bind_core), the client unpinned"
            }
            (Placement::Unpinned, false) => {
                "workers and client unpinned (bind_core off, `--prefork-unbound`): the kernel places them"
            }
        }
    }
}

/// Pin the calling thread to `core`; threads it creates afterwards inherit the mask (so
/// do child processes, which is why servers are started before the client pins itself).
pub(crate) fn pin(core: usize) -> Result<()> {
    // The core is named directly rather than looked up in `get_core_ids`, which lists only
    // the cores of the current mask.
    if core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
        Ok(())
    } else {
        Err(format!("could not pin to core {core}").into())
    }
}

/// The cores this thread may run on.
pub(crate) fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The tokio runtime every server and client of a run uses: current-thread when the
/// process has one core, multi-thread with a worker per core otherwise. Every system gets
/// the same, so the comparison is of the software, not of runtime settings.
pub(crate) fn runtime() -> io::Result<tokio::runtime::Runtime> {
    match available_cores() {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
}

/// How [`runtime`] is built here, for the report.
pub(crate) fn runtime_description() -> String {
    match available_cores() {
        1 => "tokio current-thread runtime".to_string(),
        n => format!("tokio multi-thread runtime, {n} workers"),
    }
}
