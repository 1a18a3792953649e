//! (r): the (a) load against the raw reference server (`confab-raw`), Confab on the memory store and
//! Confab as shipped (SQLite, `synchronous=FULL`), in turn, several rounds, each round in a different
//! order so that none always runs first or last on this noisy machine. Every figure is a ratio within a
//! round; the report gives the median and the spread over the rounds.
//!
//! The SQLite run is held against the memory run plus this machine's fsync p99, measured first in the
//! same directory kind the servers write to: a commit is durable only after an fsync, and no server can
//! answer faster than its disk. The same probe also runs beside each round's memory run, where the
//! cores are as busy as under SQLite but nothing else is durable, for what an fsync takes under that
//! load; the report shows the SQLite p99 against that bound too, beside the target.
//!
//! (s) and (t) set Confab as shipped beside the reference the same way, three rounds each: (s) at scale
//! (10,000 clients, 10 msg/s), (t) overloaded (1,000 clients offered 400 msg/s).

use super::{clean, cpu_per_delivery_us, run_args, BenchArgs, Load, Outcome, Server, TempDir};
use crate::run::{self, JoinMode, Report};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Who serves a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Raw,
    Memory,
    Sqlite,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Raw, Kind::Memory, Kind::Sqlite];

    fn label(self) -> &'static str {
        match self {
            Kind::Raw => "raw reference",
            Kind::Memory => "Confab, memory store",
            Kind::Sqlite => "Confab, SQLite",
        }
    }

    fn start(self, args: &BenchArgs, port: u16) -> Result<Server, String> {
        match self {
            Kind::Raw => Server::start_raw(args, port),
            Kind::Memory => Server::start_in_memory(args, port),
            Kind::Sqlite => Server::start(args, port),
        }
    }
}

/// p50 and p99 of `count` small appends, each made durable with `fdatasync` (what SQLite's WAL commit
/// does), in a fresh directory beside the servers' own, in milliseconds.
pub fn fsync_ms(count: usize) -> Result<(f64, f64), String> {
    let mut took = fsyncs(|took| took.len() < count, Duration::ZERO)?;
    took.sort_by(f64::total_cmp);
    Ok((percentile(&took, 0.50), percentile(&took, 0.99)))
}

/// The times of small durable appends made one every `pace` while `more` says so, in milliseconds.
fn fsyncs(mut more: impl FnMut(&[f64]) -> bool, pace: Duration) -> Result<Vec<f64>, String> {
    let dir = TempDir::new()?;
    let path = dir.0.join("fsync-probe");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let record = [b'x'; 200];
    let mut took = Vec::new();
    while more(&took) {
        let began = Instant::now();
        file.write_all(&record)
            .and_then(|()| file.sync_data())
            .map_err(|e| format!("fsync probe: {e}"))?;
        took.push(began.elapsed().as_secs_f64() * 1e3);
        std::thread::sleep(pace);
    }
    Ok(took)
}

/// The same probe on a thread of its own while a load runs, paced as (r)'s commits are (one per
/// message at 100 msg/s): what an fsync takes while the cores are busy with fan-out, which the quiet
/// probe cannot show. It records over the load's measured window only.
struct LoadedFsync {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<Vec<f64>, String>>,
}

impl LoadedFsync {
    fn start(after: Duration, window: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let start = Instant::now() + after;
            let wanted = |at: Instant| {
                std::thread::sleep(start.saturating_duration_since(at));
                !stopped.load(Ordering::Relaxed) && start.elapsed() < window
            };
            fsyncs(|_| wanted(Instant::now()), Duration::from_millis(10))
        });
        Self { stop, thread }
    }

    /// The p99 of what it recorded, in milliseconds.
    fn p99(self) -> Result<f64, String> {
        self.stop.store(true, Ordering::Relaxed);
        let mut took = self
            .thread
            .join()
            .map_err(|_| "the fsync probe panicked".to_owned())??;
        took.sort_by(f64::total_cmp);
        Ok(percentile(&took, 0.99))
    }
}

/// The `q` quantile of sorted `values` (nearest rank).
fn percentile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let rank = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

/// Median and spread of a figure over the rounds.
#[derive(Debug, serde::Serialize)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        Self {
            median: percentile(&values, 0.5),
            min: values.first().copied().unwrap_or(f64::NAN),
            max: values.last().copied().unwrap_or(f64::NAN),
        }
    }

    fn show(&self) -> String {
        if self.min == self.max {
            format!("{:.2}×", self.median)
        } else {
            format!("{:.2}× ({:.2}–{:.2})", self.median, self.min, self.max)
        }
    }
}

pub async fn against_raw(
    args: &BenchArgs,
    next_port: &mut impl FnMut() -> u16,
    quick: bool,
) -> Result<Outcome, String> {
    let (fsync_p50, fsync_p99) = fsync_ms(if quick { 50 } else { 1_000 })?;
    println!("\n(r) fsync here: p50 {fsync_p50:.2} ms, p99 {fsync_p99:.2} ms");
    let load = Load {
        clients: if quick { 300 } else { 1_000 },
        senders: 10,
        rate: if quick { 20.0 } else { 100.0 },
        duration: Duration::from_secs(if quick { 3 } else { 15 }),
        ..Load::default()
    };
    let (rounds, loaded_fsync_p99) = alternate(
        args,
        next_port,
        "r",
        Kind::ALL,
        &load,
        if quick { 1 } else { 3 },
        Some(Kind::Memory),
    )
    .await?;
    // The smoke run judges no timing, but fails on any loss or duplicate, the reference's included.
    if quick {
        for report in rounds.iter().flatten() {
            report.check().map_err(|e| format!("scenario (r): {e}"))?;
        }
    }
    let all_clean = rounds.iter().flatten().all(clean);
    let p99 = |r: &Report| r.latency_ms.p99;
    let memory_p99 = Spread::of(rounds.iter().map(|[raw, m, _]| p99(m) / p99(raw)).collect());
    let memory_cpu = Spread::of(
        rounds
            .iter()
            .map(|[raw, m, _]| cpu_per_delivery_us(m) / cpu_per_delivery_us(raw))
            .collect(),
    );
    let sqlite_p99 = Spread::of(rounds.iter().map(|[raw, _, s]| p99(s) / p99(raw)).collect());
    // How the SQLite p99 stands against its bound, the memory p99 plus one fsync (each round's): at
    // most 1.
    let against_bound = |fsync_p99s: &mut dyn Iterator<Item = f64>| {
        Spread::of(
            rounds
                .iter()
                .zip(fsync_p99s)
                .map(|([_, m, s], fsync)| p99(s) / (p99(m) + fsync))
                .collect(),
        )
    };
    let sqlite_bound = against_bound(&mut std::iter::repeat(fsync_p99));
    // The same against an fsync's p99 under that load, measured beside the memory run: what the disk
    // can do while the cores are busy. Shown beside the target, which it does not set.
    let loaded_bound = against_bound(&mut loaded_fsync_p99.iter().copied());
    let loaded_fsync = Spread::of(loaded_fsync_p99.clone()).median;
    let lost: u64 = rounds.iter().flatten().map(|r| r.lost + r.duplicated).sum();
    let result = format!(
        "p99 raw {:.1} ms, memory {:.1} ms ({}), SQLite {:.1} ms ({} raw; {} of memory + fsync p99 {:.1} ms; \
         {} of memory + fsync p99 under this load {:.1} ms); CPU per delivery on memory {} raw's; \
         {} lost or duplicated",
        median_of(&rounds, 0, p99),
        median_of(&rounds, 1, p99),
        memory_p99.show(),
        median_of(&rounds, 2, p99),
        sqlite_p99.show(),
        sqlite_bound.show(),
        fsync_p99,
        loaded_bound.show(),
        loaded_fsync,
        memory_cpu.show(),
        lost
    );
    let met = all_clean
        && memory_p99.median <= 1.3
        && memory_cpu.median <= 1.1
        && sqlite_bound.median <= 1.0;
    Ok(Outcome {
        id: "r",
        title: format!(
            "{} clients, {} senders, {} msg/s: raw reference, Confab on memory, Confab on SQLite, {} rounds",
            load.clients,
            load.senders,
            load.rate,
            rounds.len()
        ),
        target: "memory p99 ≤ 1.3× raw, CPU per delivery ≤ 1.1× raw; SQLite p99 ≤ memory p99 + fsync p99",
        result,
        met: Some(met),
        // The report's plot and smoke check read this run: Confab as shipped, the last round's.
        run: rounds.last().map(|[_, _, sqlite]| sqlite.clone()),
        floor: None,
        detail: Some(serde_json::json!({
            "fsync_p50_ms": fsync_p50,
            "fsync_p99_ms": fsync_p99,
            "memory_p99_vs_raw": memory_p99,
            "memory_cpu_per_delivery_vs_raw": memory_cpu,
            "sqlite_p99_vs_raw": sqlite_p99,
            "sqlite_p99_vs_memory_plus_fsync": sqlite_bound,
            "fsync_p99_under_load_ms": loaded_fsync_p99,
            "sqlite_p99_vs_memory_plus_fsync_under_load": loaded_bound,
            "rounds": rounds_json(&rounds, ["raw", "memory", "sqlite"]),
        })),
    })
}

/// Runs `load` against a fresh server of each of `kinds`, `rounds` times, each round starting one
/// further along the list so that none always runs first; the reports by round, in `kinds`' order.
/// With `probe`, the fsync probe runs beside that kind's measured window, and its p99 of each round
/// comes back too.
async fn alternate<const N: usize>(
    args: &BenchArgs,
    next_port: &mut impl FnMut() -> u16,
    id: &str,
    kinds: [Kind; N],
    load: &Load,
    rounds: usize,
    probe: Option<Kind>,
) -> Result<(Vec<[Report; N]>, Vec<f64>), String> {
    let mut all = Vec::with_capacity(rounds);
    let mut fsync_p99s = Vec::new();
    for round in 0..rounds {
        let mut got: [Option<Report>; N] = std::array::from_fn(|_| None);
        for step in 0..N {
            let at = (round + step) % N;
            let kind = kinds[at];
            let server = kind.start(args, next_port())?;
            let run_args = run_args(&server, load);
            let fsync = (probe == Some(kind)).then(|| {
                let measuring = run_args.ramp + run_args.settle + run_args.warmup;
                LoadedFsync::start(measuring, run_args.duration)
            });
            let report = run::run(run_args).await;
            server.stop();
            if let Some(fsync) = fsync {
                let p99 = fsync.p99()?;
                println!(
                    "\n({id}) round {}: fsync p99 under this load {p99:.2} ms",
                    round + 1
                );
                fsync_p99s.push(p99);
            }
            let report = report?;
            println!(
                "\n({id}) round {} of {rounds}, {}\n{}",
                round + 1,
                kind.label(),
                report.table()
            );
            got[at] = Some(report);
        }
        all.push(got.map(|report| report.expect("every kind ran this round")));
    }
    Ok((all, fsync_p99s))
}

/// `clients`, 10 of them senders at `rate` msg/s in all for `seconds`, against the raw reference and
/// Confab as shipped (SQLite), three rounds; the reports by round, the reference's first.
async fn beside_raw(
    args: &BenchArgs,
    next_port: &mut impl FnMut() -> u16,
    id: &str,
    clients: usize,
    rate: f64,
    seconds: u64,
) -> Result<(Load, Vec<[Report; 2]>), String> {
    let load = Load {
        clients,
        senders: 10,
        rate,
        duration: Duration::from_secs(seconds),
        ..Load::default()
    };
    let (rounds, _) = alternate(
        args,
        next_port,
        id,
        [Kind::Raw, Kind::Sqlite],
        &load,
        3,
        None,
    )
    .await?;
    Ok((load, rounds))
}

/// Confab's `figure` as a ratio to the reference's, round by round.
fn against_raw_of(rounds: &[[Report; 2]], figure: fn(&Report) -> f64) -> Spread {
    Spread::of(
        rounds
            .iter()
            .map(|[raw, sqlite]| figure(sqlite) / figure(raw))
            .collect(),
    )
}

/// The median over the rounds of `figure` of the server at `at`.
fn median_of<const N: usize>(rounds: &[[Report; N]], at: usize, figure: fn(&Report) -> f64) -> f64 {
    Spread::of(rounds.iter().map(|round| figure(&round[at])).collect()).median
}

/// Whether Confab (the second of each round) ran clean in every round, and how many deliveries it lost
/// or duplicated in all.
fn confab_losses(rounds: &[[Report; 2]]) -> (bool, u64) {
    let clean = rounds.iter().all(|[_, confab]| clean(confab));
    let lost = rounds
        .iter()
        .map(|[_, confab]| confab.lost + confab.duplicated)
        .sum();
    (clean, lost)
}

/// (s): 10,000 clients, 10 senders at 10 msg/s in all, against the raw reference and Confab as shipped
/// (SQLite), three rounds: the p99 at scale, where every message goes to 10,000 sockets.
pub async fn at_scale(
    args: &BenchArgs,
    next_port: &mut impl FnMut() -> u16,
) -> Result<Outcome, String> {
    let (load, rounds) = beside_raw(args, next_port, "s", 10_000, 10.0, 20).await?;
    let p99 = against_raw_of(&rounds, |r| r.latency_ms.p99);
    let (confab_clean, lost) = confab_losses(&rounds);
    Ok(Outcome {
        id: "s",
        title: format!(
            "{} clients, {} senders, {} msg/s: raw reference and Confab on SQLite, {} rounds",
            load.clients,
            load.senders,
            load.rate,
            rounds.len()
        ),
        target: "SQLite p99 ≤ 1.3× raw, 0 lost",
        result: format!(
            "p99 raw {:.1} ms, SQLite {:.1} ms ({} raw); Confab {} lost or duplicated",
            median_of(&rounds, 0, |r| r.latency_ms.p99),
            median_of(&rounds, 1, |r| r.latency_ms.p99),
            p99.show(),
            lost
        ),
        met: Some(confab_clean && p99.median <= 1.3),
        run: rounds.last().map(|[_, sqlite]| sqlite.clone()),
        floor: None,
        detail: Some(serde_json::json!({
            "sqlite_p99_vs_raw": p99,
            "rounds": rounds_json(&rounds, ["raw", "sqlite"]),
        })),
    })
}

/// (t): overload, 1,000 clients with 10 senders offering 400 msg/s in all (400,000 deliveries a second),
/// against the raw reference and Confab as shipped (SQLite), three rounds: how much of it each delivers,
/// and that Confab loses nothing while it cannot keep up.
pub async fn overload(
    args: &BenchArgs,
    next_port: &mut impl FnMut() -> u16,
) -> Result<Outcome, String> {
    let (load, rounds) = beside_raw(args, next_port, "t", 1_000, 400.0, 15).await?;
    let rate = against_raw_of(&rounds, |r| r.deliveries_per_s);
    let (confab_clean, lost) = confab_losses(&rounds);
    let raw_lost: u64 = rounds
        .iter()
        .map(|[raw, _]| raw.lost + raw.duplicated)
        .sum();
    Ok(Outcome {
        id: "t",
        title: format!(
            "overload: {} clients, {} senders, {} msg/s: raw reference and Confab on SQLite, {} rounds",
            load.clients,
            load.senders,
            load.rate,
            rounds.len()
        ),
        target: "delivered rate ≥ 0.9× raw's, 0 lost",
        result: format!(
            "delivered raw {:.0}/s, SQLite {:.0}/s ({} raw's); Confab {} lost or duplicated (raw {})",
            median_of(&rounds, 0, |r| r.deliveries_per_s),
            median_of(&rounds, 1, |r| r.deliveries_per_s),
            rate.show(),
            lost,
            raw_lost
        ),
        met: Some(confab_clean && rate.median >= 0.9),
        run: rounds.last().map(|[_, sqlite]| sqlite.clone()),
        floor: None,
        detail: Some(serde_json::json!({
            "sqlite_delivered_vs_raw": rate,
            "rounds": rounds_json(&rounds, ["raw", "sqlite"]),
        })),
    })
}

/// (c): 10,000 clients connecting and each joining (SQLite), as every browser tab does, then idle,
/// against the raw reference taking the same storm, alternating over three rounds: the memory each
/// joined client keeps, and the storm's time and join p99 against the reference's. The memory is
/// sampled once the server has delivered the storm's last join lines and gone quiet, and 5 s more for
/// the allocator to give back what the storm freed (its decay is 1 s).
pub async fn join_storm(
    args: &BenchArgs,
    next_port: &mut impl FnMut() -> u16,
    quick: bool,
) -> Result<Outcome, String> {
    let load = Load {
        clients: if quick { 300 } else { 10_000 },
        senders: 0,
        rate: 0.0,
        duration: Duration::from_secs(3),
        settle: Duration::from_secs(5),
        until_quiet: true,
        join: Some(JoinMode::All),
        ..Load::default()
    };
    let rounds = if quick { 1 } else { 3 };
    let (rounds, _) = alternate(
        args,
        next_port,
        "c",
        [Kind::Raw, Kind::Sqlite],
        &load,
        rounds,
        None,
    )
    .await?;
    let per_client = |r: &Report| r.server.as_ref().map_or(f64::NAN, |s| s.rss_per_client_kib);
    let kib = Spread::of(rounds.iter().map(|[_, s]| per_client(s)).collect());
    // The issue's storm targets: everyone joined within 1.2x the reference's time, each join answered
    // within 1.2x its p99.
    let time = against_raw_of(&rounds, |r| r.connect_time_s);
    let join = against_raw_of(&rounds, |r| r.join_ms.p99);
    let failed: usize = rounds.iter().map(|[_, s]| s.connects_failed).sum();
    let figures = |r: &Report| {
        serde_json::json!({
            "joined": r.connects_ok,
            "failed": r.connects_failed,
            "all_joined_s": r.connect_time_s,
            "join_p99_ms": r.join_ms.p99,
            "quiet_after_s": r.quiet_after_s,
            "rss_per_client_kib": per_client(r),
        })
    };
    Ok(Outcome {
        id: "c",
        title: format!(
            "{} clients connecting and joining (SQLite), then idle, against the raw reference, {} rounds",
            load.clients,
            rounds.len()
        ),
        target: "≤ 16 KiB per client; all joined within 1.2× raw's time, join p99 ≤ 1.2× raw's",
        result: format!(
            "{:.1} KiB per client ({:.1}–{:.1}); all joined in {:.1} s against raw's {:.1} s ({}); join p99 \
             {:.0} ms against raw's {:.0} ms ({}); {failed} not answered; raw reference {:.1} KiB per client",
            kib.median,
            kib.min,
            kib.max,
            median_of(&rounds, 1, |r| r.connect_time_s),
            median_of(&rounds, 0, |r| r.connect_time_s),
            time.show(),
            median_of(&rounds, 1, |r| r.join_ms.p99),
            median_of(&rounds, 0, |r| r.join_ms.p99),
            join.show(),
            median_of(&rounds, 0, per_client),
        ),
        met: Some(kib.median <= 16.0 && failed == 0 && time.median <= 1.2 && join.median <= 1.2),
        run: rounds.last().map(|[_, sqlite]| sqlite.clone()),
        floor: None,
        detail: Some(serde_json::json!({
            "kib_per_client": kib,
            "all_joined_vs_raw": time,
            "join_p99_vs_raw": join,
            "rounds": rounds
                .iter()
                .map(|[raw, sqlite]| serde_json::json!({"raw": figures(raw), "sqlite": figures(sqlite)}))
                .collect::<Vec<_>>(),
        })),
    })
}

/// Each round's figures by server, for `report.json`.
fn rounds_json<const N: usize>(rounds: &[[Report; N]], names: [&str; N]) -> Vec<serde_json::Value> {
    rounds
        .iter()
        .map(|round| {
            let mut row = serde_json::Map::new();
            for (name, r) in names.iter().zip(round) {
                row.insert(
                    (*name).to_owned(),
                    serde_json::json!({
                        "p50_ms": r.latency_ms.p50,
                        "p99_ms": r.latency_ms.p99,
                        "deliveries_per_s": r.deliveries_per_s,
                        "cpu_percent": r.server.as_ref().map(|s| s.cpu_percent),
                        "cpu_per_delivery_us": cpu_per_delivery_us(r),
                        "rss_per_client_kib": r.server.as_ref().map(|s| s.rss_per_client_kib),
                        "lost": r.lost,
                        "duplicated": r.duplicated,
                    }),
                );
            }
            serde_json::Value::Object(row)
        })
        .collect()
}
