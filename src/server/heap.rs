//! Giving back to the operating system the memory a burst freed.
//!
//! glibc's allocator keeps freed memory mapped for reuse. After a join storm, or once thousands of rooms
//! went idle, most of the heap is free, yet the process's resident size stays at the burst's high-water
//! mark: a 2,000-client storm left 197 MB resident with 112 MB in use. `malloc_trim(0)` hands every whole
//! free page of every arena back (`MADV_DONTNEED`), so the resident size follows what is in use.
//!
//! It walks each arena's free lists with that arena locked, so it runs on a blocking thread, never on the
//! runtime's workers, and only once things calm down: [`QUIET`] after the last time something large was
//! freed ([`freed`]), or [`AT_MOST_EVERY`] while freeing never stops.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Set by [`freed`], taken by the trimmer.
static FREED: AtomicBool = AtomicBool::new(false);

/// How long nothing more is freed before the trim.
pub const QUIET: Duration = Duration::from_secs(2);
/// The longest a trim waits while memory keeps being freed (a steady churn of connections).
pub const AT_MOST_EVERY: Duration = Duration::from_secs(30);
/// How often the trimmer looks.
const TICK: Duration = Duration::from_secs(1);

/// Says that something sizeable was freed (a room's writer stopped, a storm's backlog was let go, a
/// connection ended). Cheap: one relaxed load, and a store only when the flag was clear.
pub fn freed() {
    if !FREED.load(Ordering::Relaxed) {
        FREED.store(true, Ordering::Relaxed);
    }
}

/// When to trim, from what was freed when: a pure rule, so it is tested without a clock.
#[derive(Debug, Default)]
pub struct Schedule {
    /// When the first free not yet trimmed was seen, and when the last one was.
    pending: Option<(Instant, Instant)>,
}

impl Schedule {
    /// One look at `now`, `freed` telling whether anything was freed since the last look; true when the
    /// trim is due now.
    pub fn tick(&mut self, freed: bool, now: Instant) -> bool {
        if freed {
            let first = self.pending.map_or(now, |(first, _)| first);
            self.pending = Some((first, now));
        }
        let Some((first, last)) = self.pending else {
            return false;
        };
        let due = now.duration_since(last) >= QUIET || now.duration_since(first) >= AT_MOST_EVERY;
        if due {
            self.pending = None;
        }
        due
    }
}

/// Trims whenever [`Schedule`] says so, for as long as the runtime runs. One per process: the server
/// starts it.
pub async fn run_trimmer() {
    let mut schedule = Schedule::default();
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if schedule.tick(FREED.swap(false, Ordering::Relaxed), Instant::now()) {
            let started = Instant::now();
            let released = tokio::task::spawn_blocking(trim).await.unwrap_or(false);
            tracing::debug!(released, took = ?started.elapsed(), "gave freed memory back");
        }
    }
}

/// Hands the free pages of every arena back to the system now; whether any were.
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only takes the allocator's own locks and has no preconditions.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        // Other allocators (musl's, the system's elsewhere) give memory back on their own terms.
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trim_waits_for_quiet_after_the_last_free() {
        let start = Instant::now();
        let at = |secs: f64| start + Duration::from_secs_f64(secs);
        let mut schedule = Schedule::default();
        assert!(
            !schedule.tick(false, at(0.0)),
            "nothing freed, nothing to do"
        );
        assert!(!schedule.tick(true, at(1.0)));
        assert!(!schedule.tick(true, at(2.0)), "still freeing");
        assert!(!schedule.tick(false, at(3.0)), "only a second of quiet");
        assert!(
            schedule.tick(false, at(4.0)),
            "two seconds after the last free"
        );
        assert!(!schedule.tick(false, at(5.0)), "once");
        assert!(!schedule.tick(false, at(60.0)));
    }

    #[test]
    fn steady_freeing_still_trims_every_so_often() {
        let start = Instant::now();
        let mut schedule = Schedule::default();
        let mut trims = Vec::new();
        for second in 0..=65 {
            if schedule.tick(true, start + Duration::from_secs(second)) {
                trims.push(second);
            }
        }
        assert_eq!(trims, [30, 61]);
    }

    /// The process's resident size in KiB.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn resident_kib() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
        pages * page / 1024
    }

    /// Set in the child process that does the measuring.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    const ALONE: &str = "CONFAB_HEAP_TEST_ALONE";

    /// Resident size is the whole process's, and other tests allocate beside this one: so the measuring
    /// runs in a process of its own, this test binary started again for this test alone.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_trim_gives_a_bursts_freed_memory_back() {
        const NAME: &str = "server::heap::tests::a_trim_gives_a_bursts_freed_memory_back";
        if std::env::var_os(ALONE).is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
                .env(ALONE, "1")
                .output()
                .unwrap();
            let said = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success(),
                "the measuring process failed:\n{said}"
            );
            assert!(said.contains("1 passed"), "it ran no test:\n{said}");
            return;
        }
        // A burst: 64 MiB in 1 KiB blocks. Then all but every 64th is freed: the survivors are spread
        // over the whole heap, so the allocator cannot simply shrink its top, as it does on its own.
        let blocks: Vec<Vec<u8>> = (0..65_536).map(|i| vec![(i % 251) as u8; 1024]).collect();
        let kept: Vec<Vec<u8>> = blocks.into_iter().step_by(64).collect();
        let freed = resident_kib();
        assert!(trim(), "there were whole free pages to give back");
        let trimmed = resident_kib();
        eprintln!("resident after the frees {freed} KiB, after the trim {trimmed} KiB");
        assert!(
            freed.saturating_sub(trimmed) >= 32 * 1024,
            "at least half of the 64 MiB went back: {freed} KiB → {trimmed} KiB"
        );
        assert_eq!(kept.len(), 1024);
    }
}
