//! Processes measured from outside: wall time from spawn to exit, and peak memory (the child's
//! `ru_maxrss`, read by `wait4`).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Instant;

/// What a measured process did.
#[derive(Debug, Clone)]
pub struct Measured {
    pub seconds: f64,
    /// Peak resident set size in bytes.
    pub max_rss: u64,
    pub success: bool,
    pub stdout: String,
}

/// Runs `command` to its end; its stdout is captured (keep it small), stderr inherited.
pub fn run_measured(mut command: Command, capture_stdout: bool) -> Result<Measured, String> {
    command.stdin(Stdio::null());
    if capture_stdout {
        command.stdout(Stdio::piped());
    }
    let started = Instant::now();
    let mut child = command.spawn().map_err(|e| format!("spawn {command:?}: {e}"))?;
    let mut stdout = String::new();
    if let Some(mut out) = child.stdout.take() {
        out.read_to_string(&mut stdout).map_err(|e| format!("read child output: {e}"))?;
    }
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: plain syscall on a child of ours with valid out-pointers; `Child` never waits
    // itself once we have reaped it (its drop neither waits nor kills).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = loop {
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == -1 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        break r;
    };
    let seconds = started.elapsed().as_secs_f64();
    if reaped != pid {
        return Err(format!("wait4 on {pid}: {}", std::io::Error::last_os_error()));
    }
    let success = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    // Linux reports ru_maxrss in KiB.
    Ok(Measured { seconds, max_rss: usage.ru_maxrss as u64 * 1024, success, stdout })
}

/// CPU seconds (user + system) of this process and of its children reaped so far.
pub fn client_cpu() -> f64 {
    let of = |who| {
        // SAFETY: getrusage fills the struct it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(who, &mut usage) };
        tv(usage.ru_utime) + tv(usage.ru_stime)
    };
    of(libc::RUSAGE_SELF) + of(libc::RUSAGE_CHILDREN)
}

fn tv(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 / 1e6
}

/// The engine's long-lived processes (`dockerd`, `containerd`), found once by name in /proc.
pub fn engine_pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            matches!(comm.trim(), "dockerd" | "containerd")
        })
        .collect()
}

/// CPU seconds the given processes have used (fields 14 and 15 of `/proc/<pid>/stat`).
pub fn cpu_of(pids: &[u32]) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    pids.iter()
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let rest = &stat[stat.rfind(')')? + 1..];
            let mut fields = rest.split_whitespace().skip(11);
            let utime: f64 = fields.next()?.parse().ok()?;
            let stime: f64 = fields.next()?.parse().ok()?;
            Some((utime + stime) / ticks)
        })
        .sum()
}

/// The machine's CPU time counters (the `cpu` line of `/proc/stat`), in clock ticks.
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineCpu {
    busy: u64,
    total: u64,
}

impl MachineCpu {
    /// The share of CPU time spent busy between `self` and `later`, 0 to 1.
    pub fn busy_until(&self, later: &MachineCpu) -> f64 {
        let total = later.total.saturating_sub(self.total);
        if total == 0 {
            return 0.0;
        }
        later.busy.saturating_sub(self.busy) as f64 / total as f64
    }
}

pub fn machine_cpu() -> MachineCpu {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    parse_cpu_line(stat.lines().next().unwrap_or_default())
}

/// `cpu user nice system idle iowait irq softirq steal ...`: idle and iowait are not busy.
fn parse_cpu_line(line: &str) -> MachineCpu {
    let fields: Vec<u64> = line.split_whitespace().skip(1).take(8).filter_map(|f| f.parse().ok()).collect();
    let total = fields.iter().sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    MachineCpu { busy: total - idle, total }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_cpu_counts_idle_and_iowait_as_not_busy() {
        let before = parse_cpu_line("cpu  100 0 50 800 50 0 0 0 0 0");
        let after = parse_cpu_line("cpu  200 0 100 850 50 0 0 0 0 0");
        assert_eq!(before.total, 1000);
        assert!((before.busy_until(&after) - 0.75).abs() < 1e-9);
        assert_eq!(after.busy_until(&after), 0.0);
    }
}
