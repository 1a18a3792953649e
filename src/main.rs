//! The `confab` server binary. Everything lives in the library; this only starts it.

#[cfg(feature = "ssr")]
#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let done = match confab::server::command(&args).await {
        Some(done) => done,
        None => confab::server::run_from_env().await,
    };
    match done {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("confab: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(not(feature = "ssr"))]
fn main() {
    // The browser half starts from `confab::hydrate`; this binary is built with `--features ssr`.
}

/// One allocator for the whole process, SQLite's C code included: jemalloc, which gives the pages a burst
/// freed back to the system by itself. glibc's allocator keeps them: after 10,000 rooms were made and
/// their writers stopped, what they freed stayed resident in pages the rooms' own small allocations were
/// spread over, 2.9 KiB per idle room even with `malloc_trim`, against 1.5–1.7 KiB with these settings
/// (README, "What an idle connection and an idle room hold").
#[cfg(feature = "ssr")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read when it starts; `MALLOC_CONF` in the environment overrides them.
/// - `abort_conf`: a setting jemalloc cannot read stops the process at start, with jemalloc's sentence
///   naming it, instead of being ignored;
/// - `background_thread`: purging runs on jemalloc's own thread, so an idle server (which allocates
///   nothing that would trigger it) still gives memory back;
/// - `dirty_decay_ms:1000,muzzy_decay_ms:0`: pages freed for a second go back with `MADV_DONTNEED`, which
///   the resident size shows at once (`MADV_FREE` pages count until the kernel wants them);
/// - `percpu_arena:percpu`: one arena per core, not four, so fewer partly used pages.
#[cfg(all(feature = "ssr", target_os = "linux"))]
#[unsafe(no_mangle)]
#[allow(non_upper_case_globals)]
pub static malloc_conf: CharPtr = CharPtr(
    c"abort_conf:true,background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,percpu_arena:percpu".as_ptr(),
);

/// A C `const char *`, as jemalloc declares `malloc_conf` (a `&CStr` is not one pointer).
#[cfg(all(feature = "ssr", target_os = "linux"))]
#[repr(transparent)]
pub struct CharPtr(*const std::ffi::c_char);

// SAFETY: it points at a string literal, never written.
#[cfg(all(feature = "ssr", target_os = "linux"))]
unsafe impl Sync for CharPtr {}

#[cfg(all(test, feature = "ssr", target_os = "linux"))]
mod tests {
    use std::time::{Duration, Instant};

    /// The process's resident size in KiB.
    fn resident_kib() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
        pages * page / 1024
    }

    /// What the settings above are for, and a check that jemalloc read them (a misspelt `malloc_conf` is
    /// silently ignored, and then an idle process keeps what it freed): a burst freed while nothing else
    /// allocates goes back to the system without being asked for.
    #[test]
    fn a_bursts_freed_memory_goes_back_by_itself() {
        // 64 MiB in 1 KiB blocks, then all but every 64th freed: the survivors are spread over the whole
        // burst, as the rooms' small allocations were over the writers' freed ones.
        let before = resident_kib();
        let blocks: Vec<Vec<u8>> = (0..65_536).map(|i| vec![(i % 251) as u8; 1024]).collect();
        let peak = resident_kib();
        let kept: Vec<Vec<u8>> = blocks.into_iter().step_by(64).collect();
        assert!(
            peak >= before + 60 * 1024,
            "the burst was resident: {before} → {peak} KiB"
        );
        // Bounded: jemalloc purges a second after the frees; a generous deadline, not a timing claim.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut now = resident_kib();
        while peak.saturating_sub(now) < 32 * 1024 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            now = resident_kib();
        }
        assert!(
            peak.saturating_sub(now) >= 32 * 1024,
            "at least half of the 64 MiB went back: {peak} KiB → {now} KiB"
        );
        assert_eq!(kept.len(), 1024);
    }

    /// Set in the child process, which must never get as far as running a test.
    const CHILD: &str = "CONFAB_ALLOC_TEST_CHILD";

    #[test]
    fn a_malformed_malloc_conf_stops_the_process_with_a_sentence() {
        if std::env::var_os(CHILD).is_some() {
            return;
        }
        const NAME: &str = "tests::a_malformed_malloc_conf_stops_the_process_with_a_sentence";
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", NAME, "--test-threads=1"])
            .env(CHILD, "1")
            .env("MALLOC_CONF", "dirty_decay_ms:soon")
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "it started anyway: {said}");
        assert!(
            said.contains("Invalid conf value") && said.contains("dirty_decay_ms:soon"),
            "the sentence names the setting: {said}"
        );
    }
}
