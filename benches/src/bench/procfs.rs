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

/// Clock ticks as a duration.
pub(crate) fn ticks(t: u64) -> Duration {
    Duration::from_millis(t * 1000 / TICKS_PER_SEC)
}

/// Resident set size of `pid` (`VmRSS` of `/proc/<pid>/status`), in KiB.
pub(crate) fn rss_kib(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::other("no VmRSS in /proc/<pid>/status"))
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
}
