//! What the kernel says about a process and the machine: CPU time, resident memory, CPU
//! model.

use std::io;
use std::time::Duration;

/// Clock ticks per second of the `utime`/`stime` fields of `/proc/<pid>/stat`. Linux
/// reports them in USER_HZ, which is 100 on every architecture the kernel supports
/// (`sysconf(_SC_CLK_TCK)`); a tick is therefore 10 ms.
pub(crate) const TICKS_PER_SEC: u64 = 100;

/// User plus system CPU time of `pid`, every thread included (those that have exited
/// too), in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may contain spaces: fields are
    // counted after the last ')'. There, index 0 is field 3 (state); utime is field 14
    // and stime field 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::other("unexpected /proc/<pid>/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> io::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::other("unexpected /proc/<pid>/stat"))
    };
    Ok(field(11)? + field(12)?)
}

/// The processes of a server: `pid` itself and the children it forked without exec (the
/// workers of a prefork supervisor; they share its command line), read from
/// `/proc/<pid>/task/<pid>/children`. A child that was exec'd into another program (a
/// prefork server's stdin watcher) is not counted. A single-process server has none.
///
/// The supervisor of our prefork server is single-threaded, so its main thread's
/// `children` file lists all of its children.
pub(crate) fn server_pids(pid: u32) -> io::Result<Vec<u32>> {
    let mut pids = vec![pid];
    let Ok(children) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) else {
        // Gone, or a kernel without CONFIG_PROC_CHILDREN: just the process.
        return Ok(pids);
    };
    let cmdline = |p: u32| std::fs::read(format!("/proc/{p}/cmdline")).ok();
    let own = cmdline(pid).ok_or_else(|| io::Error::other(format!("no process {pid}")))?;
    pids.extend(
        children
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
            .filter(|&c| cmdline(c).is_some_and(|line| line == own)),
    );
    Ok(pids)
}

/// CPU time of a server's processes ([`server_pids`]) at one instant, per process.
#[derive(Debug, Clone, Default)]
pub(crate) struct CpuSnapshot(Vec<(u32, u64)>);

impl CpuSnapshot {
    /// Read every process of the server rooted at `pid`; a worker that exits while this
    /// reads is left out. The root itself must be readable.
    pub(crate) fn take(pid: u32) -> io::Result<CpuSnapshot> {
        let mut ticks = Vec::new();
        for p in server_pids(pid)? {
            match cpu_ticks(p) {
                Ok(t) => ticks.push((p, t)),
                Err(e) if p == pid => return Err(e),
                Err(_) => {}
            }
        }
        Ok(CpuSnapshot(ticks))
    }

    /// Clock ticks spent since `before`, summed over the processes: per process, so that
    /// a worker started in between counts from zero and one that ended in between only
    /// loses its own last ticks (they are not subtracted from the others').
    pub(crate) fn since(&self, before: &CpuSnapshot) -> u64 {
        self.0
            .iter()
            .map(|&(pid, now)| {
                let then = before.0.iter().find(|(p, _)| *p == pid).map_or(0, |(_, t)| *t);
                now.saturating_sub(then)
            })
            .sum()
    }
}

/// Resident set size of a server's processes ([`server_pids`]), summed, in KiB. Pages
/// shared between them (the executable, the pages a forked worker has not written since
/// the fork, shared memory) count once per process: for a prefork server this is an upper
/// bound of the memory used (PSS, in `/proc/<pid>/smaps_rollup`, would split them).
pub(crate) fn server_rss_kib(pid: u32) -> io::Result<u64> {
    let mut total = 0;
    for p in server_pids(pid)? {
        match rss_kib(p) {
            Ok(kib) => total += kib,
            Err(e) if p == pid => return Err(e),
            Err(_) => {}
        }
    }
    Ok(total)
}

/// Reset the peak resident memory (`VmHWM`) of a server's processes ([`server_pids`]) to
/// their current resident memory, by writing 5 to `/proc/<pid>/clear_refs` (Linux 4.0 and
/// later). Best effort: where it fails, the peak read later covers the process's life.
pub(crate) fn reset_peak_rss(pid: u32) {
    for p in server_pids(pid).unwrap_or_else(|_| vec![pid]) {
        let _ = std::fs::write(format!("/proc/{p}/clear_refs"), "5");
    }
}

/// Peak resident memory (`VmHWM`) of a server's processes ([`server_pids`]), summed, in
/// KiB: since they started or since [`reset_peak_rss`].
pub(crate) fn server_peak_rss_kib(pid: u32) -> io::Result<u64> {
    let mut total = 0;
    for p in server_pids(pid)? {
        match status_kib(p, "VmHWM:") {
            Ok(kib) => total += kib,
            Err(e) if p == pid => return Err(e),
            Err(_) => {}
        }
    }
    Ok(total)
}

/// Open file descriptors of a server's processes ([`server_pids`]), summed.
pub(crate) fn server_open_fds(pid: u32) -> io::Result<usize> {
    let mut total = 0;
    for p in server_pids(pid)? {
        match std::fs::read_dir(format!("/proc/{p}/fd")) {
            Ok(d) => total += d.count(),
            Err(e) if p == pid => return Err(e),
            Err(_) => {}
        }
    }
    Ok(total)
}

/// Clock ticks as a duration.
pub(crate) fn ticks(t: u64) -> Duration {
    Duration::from_millis(t * 1000 / TICKS_PER_SEC)
}

/// Resident set size of `pid` (`VmRSS` of `/proc/<pid>/status`), in KiB.
pub(crate) fn rss_kib(pid: u32) -> io::Result<u64> {
    status_kib(pid, "VmRSS:")
}

/// A `kB` field of `/proc/<pid>/status`.
fn status_kib(pid: u32, field: &str) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::other(format!("no {field} in /proc/<pid>/status")))
}

/// The 1, 5 and 15 minute load averages (`/proc/loadavg`): how busy the machine was.
pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_string())
}

/// The commit measured, and whether the library crates had uncommitted changes (`git`,
/// when it is installed and this is a checkout).
pub(crate) fn tree() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        None => "unknown".to_string(),
        Some(head) => {
            let dirty = git(&[
                "status",
                "--porcelain",
                "--",
                "rpc-proto",
                "rpc-server",
                "rpc-client",
            ])
            .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{head} with uncommitted changes in rpc-proto/rpc-server/rpc-client")
            } else {
                head
            }
        }
    }
}

/// The machine a run happened on.
#[derive(Debug, Clone)]
pub(crate) struct Machine {
    /// Online CPUs (`nproc` before any pinning).
    pub(crate) nproc: usize,
    pub(crate) cpu_model: String,
    pub(crate) kernel: String,
}

pub(crate) fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or_else(|| "unknown".to_string(), |(_, m)| m.trim().to_string());
    let nproc = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_string(), |k| k.trim().to_string());
    Machine {
        nproc: nproc.max(1),
        cpu_model,
        kernel,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        cpu_ticks(pid).unwrap();
        assert!(rss_kib(pid).unwrap() > 0);
        assert!(machine().nproc >= 1);
    }

    #[test]
    fn a_process_without_forked_children_is_just_itself() {
        let pid = std::process::id();
        assert_eq!(server_pids(pid).unwrap(), [pid]);
        let a = CpuSnapshot::take(pid).unwrap();
        let b = CpuSnapshot::take(pid).unwrap();
        assert_eq!(b.since(&a), b.0[0].1 - a.0[0].1);
        assert!(server_rss_kib(pid).unwrap() > 0);
    }

    #[test]
    fn peak_memory_is_read_and_reset() {
        let pid = std::process::id();
        // 64 MiB touched, then freed: above glibc's largest mmap threshold (32 MiB), so
        // the pages go back to the system at once.
        let big = vec![1u8; 64 << 20];
        assert_eq!(big.iter().map(|&b| u64::from(b)).sum::<u64>(), 64 << 20);
        drop(big);
        // The kernel's counters are batched per thread (a few hundred KiB): compare with
        // room to spare.
        let peak = server_peak_rss_kib(pid).unwrap();
        assert!(peak >= 64 << 10, "{peak}");
        reset_peak_rss(pid);
        let reset = server_peak_rss_kib(pid).unwrap();
        assert!(reset + (32 << 10) < peak, "{reset} {peak}");
    }

    #[test]
    fn ticks_are_summed_per_process() {
        let before = CpuSnapshot(vec![(1, 10), (2, 5), (3, 7)]);
        // 2 ended, 4 started, 1 and 3 went on.
        let after = CpuSnapshot(vec![(1, 12), (3, 10), (4, 4)]);
        assert_eq!(after.since(&before), 2 + 3 + 4);
    }
}
