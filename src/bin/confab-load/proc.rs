//! What the load generator reads about a server process from /proc.

use serde::Serialize;

/// Memory and CPU of a process at one moment.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ProcSample {
    /// Resident set size, KiB.
    pub rss_kib: u64,
    /// Peak resident set size so far, KiB.
    pub peak_rss_kib: u64,
    /// User plus system CPU time, seconds.
    pub cpu_s: f64,
}

impl ProcSample {
    pub fn read(pid: u32) -> Option<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kib| kib.parse::<u64>().ok())
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may contain spaces, so skip past its closing parenthesis).
        let after = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = after.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        // SAFETY: sysconf only reads a configuration value.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        Some(Self {
            rss_kib: field("VmRSS:")?,
            peak_rss_kib: field("VmHWM:")?,
            cpu_s: ticks as f64 / per_second,
        })
    }
}

/// This process's open-file limit (after any raise); the server started by `bench` inherits it.
pub fn fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    limit.rlim_cur
}
