//! One load run: N clients in the room, S of them sending R messages/s in total. With `--rooms K`, the
//! clients are spread over K public rooms of their own (client i in room i mod K, the first sender of
//! each room making it); with `--idle M`, M more connections sit in `general` and hear none of it.
//!
//! Phases: connect (spread over the ramp), warm-up (senders send, nothing is measured), measure, drain
//! (senders stop; wait until every client has every measured message, or the drain time is up).
//!
//! Each measured message carries its index and its send time on the generator's one monotonic clock
//! ("m<index> <micros>"), so a receiver needs no shared map: latency is now minus the send time, and
//! per-client counters per index give lost and duplicated deliveries exactly.

use crate::proc::ProcSample;
use clap::{Args, ValueEnum};
use confab::protocol::ClientFrame;
use confab::server::raise_fd_limit;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::HashMap;
use std::net::ToSocketAddrs;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

pub const MAX_CLIENTS: usize = 50_000;
pub const MAX_DURATION: Duration = Duration::from_secs(600);
const MAX_RATE: f64 = 200_000.0;
/// A user may make five rooms in a burst (the server's limit): their own and four quiet ones.
const MAX_QUIET_ROOMS: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JoinMode {
    /// Only senders join (the others read, like tabs still at the name dialog): keeps N join lines from
    /// turning into N² deliveries during the ramp.
    Senders,
    /// Every client joins.
    All,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// WebSocket endpoint(s); clients are spread over them round-robin.
    #[arg(long = "url", default_value = "ws://127.0.0.1:3000/ws")]
    pub urls: Vec<String>,
    /// Connected clients.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// How many of the clients send.
    #[arg(long, default_value_t = 10)]
    pub senders: usize,
    /// Messages per second, all senders together.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Measured time.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Sending before measuring.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Time over which the clients connect.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub ramp: Duration,
    /// The longest to wait for the last deliveries after sending stops.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain: Duration,
    /// Who joins with a name.
    #[arg(long, value_enum, default_value_t = JoinMode::Senders)]
    pub join: JoinMode,
    /// Spread the clients over this many rooms of their own (0: everyone in `general`). Needs at least
    /// one sender per room.
    #[arg(long, default_value_t = 0)]
    pub rooms: usize,
    /// With `--rooms`, the client that makes each room also makes this many more that nobody speaks in
    /// after its join line: idle rooms, for their memory. At most 4 (a user may make 5 rooms at once).
    #[arg(long, default_value_t = 0)]
    pub quiet_rooms: usize,
    /// Connections besides the clients that only connect and stay, outside the rooms measured.
    #[arg(long, default_value_t = 0)]
    pub idle: usize,
    /// Wait this long after everyone connected before taking the "connected" memory sample (so queues
    /// have drained, and idle rooms' writers have stopped).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub settle: Duration,
    /// Before the settle, wait until the server (`--pid`) is quiet: under a tenth of one core for a whole
    /// second, for at most two minutes. A join storm goes on after the last join is answered, as every
    /// client still receives the join lines of those after it.
    #[arg(long, requires = "pid")]
    pub until_quiet: bool,
    /// The server's process id, to report its memory and CPU.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Allow servers that are not on this machine's loopback.
    #[arg(long)]
    pub allow_remote: bool,
    /// Exit non-zero if a connect failed or a delivery was lost or duplicated.
    #[arg(long)]
    pub check: bool,
}

/// Waits until the process `sample` reads has used under a tenth of a core for a whole second, or two
/// minutes have passed; returns how long that took.
async fn until_quiet(sample: impl Fn() -> Option<ProcSample>) -> Duration {
    const QUIET: f64 = 0.1;
    let began = Instant::now();
    let mut last = sample();
    while began.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = sample();
        if let (Some(before), Some(after)) = (last, now) {
            if after.cpu_s - before.cpu_s < QUIET {
                break;
            }
        }
        last = now;
    }
    began.elapsed()
}

pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let (number, unit) = raw
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((raw, "s"), |i| raw.split_at(i));
    let value: f64 = number
        .parse()
        .map_err(|_| format!("not a duration: {raw:?} (say 500ms, 10s or 2m)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("unknown unit in {raw:?}: use ms, s or m")),
    };
    Ok(Duration::from_secs_f64(seconds))
}

impl RunArgs {
    fn validate(&self) -> Result<(), String> {
        if self.clients == 0 || self.clients + self.idle > MAX_CLIENTS {
            return Err(format!("--clients plus --idle must be 1..={MAX_CLIENTS}"));
        }
        if self.rooms > 0 && self.senders < self.rooms {
            return Err("--rooms needs at least one sender per room".into());
        }
        if self.quiet_rooms > 0 && (self.rooms == 0 || self.quiet_rooms > MAX_QUIET_ROOMS) {
            return Err(format!(
                "--quiet-rooms must be 1..={MAX_QUIET_ROOMS}, with --rooms"
            ));
        }
        if self.senders > self.clients {
            return Err("--senders cannot exceed --clients".into());
        }
        if !(self.rate >= 0.0 && self.rate <= MAX_RATE) {
            return Err(format!("--rate must be 0..={MAX_RATE}"));
        }
        for d in [
            self.duration,
            self.warmup,
            self.ramp,
            self.drain,
            self.settle,
        ] {
            if d > MAX_DURATION {
                return Err(format!(
                    "durations are capped at {}s",
                    MAX_DURATION.as_secs()
                ));
            }
        }
        if self.urls.is_empty() {
            return Err("give at least one --url".into());
        }
        for url in &self.urls {
            if !self.allow_remote && !is_loopback(url)? {
                return Err(format!(
                    "{url} is not on loopback; pass --allow-remote to load another machine"
                ));
            }
        }
        Ok(())
    }
}

fn is_loopback(url: &str) -> Result<bool, String> {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("wss://"))
        .ok_or_else(|| format!("{url} is not a ws:// or wss:// URL"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let addrs: Vec<_> = with_port
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {authority}: {e}"))?
        .collect();
    Ok(!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()))
}

/// Where the run is; every client watches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Connecting,
    Warmup,
    Measure,
    Drain,
    Done,
}

/// Latency in microseconds, up to a minute.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

pub(crate) const SHARDS: usize = 32;

/// What clients record into, shared.
struct Shared {
    started: Instant,
    latency: Vec<Mutex<Histogram<u64>>>,
    acks: Mutex<Histogram<u64>>,
    connect: Mutex<Histogram<u64>>,
    /// From sending `join` to the server's `joined`, for the clients that join.
    join: Mutex<Histogram<u64>>,
    ready: AtomicUsize,
    /// Ready clients per room (one entry when everyone is in `general`).
    ready_in: Vec<AtomicUsize>,
    idle_ready: AtomicUsize,
    failed: AtomicUsize,
    disconnected: AtomicUsize,
    /// Unique measured deliveries so far, to know when the drain is complete.
    delivered: AtomicU64,
    acked_in_window: AtomicU64,
    /// Measured messages each sender sent, by sender number.
    sent: Vec<AtomicU64>,
    /// Whether the measured window is open. A sender's own view of the phase lags (it may take a tick
    /// before it sees the change), so it numbers a message as measured only while holding this lock
    /// and seeing `true`: once the generator has closed the window, no count can grow behind its back.
    measuring: Mutex<bool>,
}

impl Shared {
    fn micros(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }
}

/// What a client saw, for the exact count of losses and duplicates.
struct Seen {
    /// The room's number (0 in `general`).
    room: usize,
    /// An idle connection outside the rooms: it expects nothing.
    idle: bool,
    /// Deliveries per message index.
    counts: Vec<u8>,
    /// Measured messages whose index no sender used.
    unexpected: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub count: u64,
}

impl Percentiles {
    /// In milliseconds.
    pub(crate) fn of(h: &Histogram<u64>) -> Self {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Self {
            p50: ms(0.5),
            p90: ms(0.9),
            p99: ms(0.99),
            p999: ms(0.999),
            max: h.max() as f64 / 1000.0,
            count: h.len(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerUsage {
    pub rss_before_kib: u64,
    pub rss_connected_kib: u64,
    pub rss_end_kib: u64,
    pub peak_rss_kib: u64,
    /// (connected − before) / clients.
    pub rss_per_client_kib: f64,
    /// CPU while measuring, in percent of one core.
    pub cpu_percent: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub clients: usize,
    pub senders: usize,
    pub rate: f64,
    pub duration_s: f64,
    pub join: JoinMode,
    pub rooms: usize,
    pub quiet_rooms: usize,
    pub idle: usize,
    pub connects_ok: usize,
    pub connects_failed: usize,
    pub connect_time_s: f64,
    /// With `--until-quiet`: how long after the connect phase the server became quiet.
    pub quiet_after_s: Option<f64>,
    pub connect_ms: Percentiles,
    /// From a client's `join` to the server's `joined`.
    pub join_ms: Percentiles,
    pub disconnects: usize,
    pub messages_sent: u64,
    pub deliveries_expected: u64,
    pub deliveries_received: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub unexpected: u64,
    pub latency_ms: Percentiles,
    pub deliveries_per_s: f64,
    pub ack_ms: Percentiles,
    pub persisted_per_s: f64,
    pub server: Option<ServerUsage>,
    /// The generator's own CPU while measuring, in percent of one core: on a shared machine it competes
    /// with the server for the same cores.
    pub generator_cpu_percent: f64,
}

impl Report {
    pub fn check(&self) -> Result<(), String> {
        if self.connects_failed > 0 || self.disconnects > 0 {
            return Err(format!(
                "{} connects failed, {} clients dropped",
                self.connects_failed, self.disconnects
            ));
        }
        if self.lost > 0 || self.duplicated > 0 || self.unexpected > 0 {
            return Err(format!(
                "{} deliveries lost, {} duplicated, {} unexpected",
                self.lost, self.duplicated, self.unexpected
            ));
        }
        if self.messages_sent == 0 && self.senders > 0 && self.rate > 0.0 {
            return Err("no message was sent".into());
        }
        Ok(())
    }

    pub fn table(&self) -> String {
        let l = &self.latency_ms;
        let a = &self.ack_ms;
        let mut out = format!(
            "clients {} (senders {}, join {:?}), {} msg/s for {:.1}s\n\
             connects        ok {}  failed {}  in {:.2}s  (p99 {:.1} ms)  dropped {}\n\
             messages sent   {}\n\
             deliveries      expected {}  received {}  lost {}  duplicated {}  unexpected {}\n\
             latency (ms)    p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}\n\
             throughput      {:.0} deliveries/s, {:.0} persisted msg/s\n\
             ack (ms)        p50 {:.2}  p99 {:.2}  max {:.2}",
            self.clients,
            self.senders,
            self.join,
            self.rate,
            self.duration_s,
            self.connects_ok,
            self.connects_failed,
            self.connect_time_s,
            self.connect_ms.p99,
            self.disconnects,
            self.messages_sent,
            self.deliveries_expected,
            self.deliveries_received,
            self.lost,
            self.duplicated,
            self.unexpected,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
            self.deliveries_per_s,
            self.persisted_per_s,
            a.p50,
            a.p99,
            a.max,
        );
        if let Some(s) = &self.server {
            out.push_str(&format!(
                "\nserver          RSS {} KiB idle → {} KiB connected ({:.1} KiB/client) → {} KiB end, peak {} KiB; CPU {:.0}%",
                s.rss_before_kib,
                s.rss_connected_kib,
                s.rss_per_client_kib,
                s.rss_end_kib,
                s.peak_rss_kib,
                s.cpu_percent
            ));
        }
        out.push_str(&format!(
            "\ngenerator       CPU {:.0}%",
            self.generator_cpu_percent
        ));
        out
    }
}

pub async fn run(args: RunArgs) -> Result<Report, String> {
    args.validate()?;
    raise_fd_limit((args.clients + args.idle) as u64 * 2 + 1024);
    let groups = args.rooms.max(1);
    // Which room a client or sender number is in.
    let room_of = move |i: usize| i % groups;
    let sample = || args.pid.and_then(ProcSample::read);
    let before = sample();
    if args.pid.is_some() && before.is_none() {
        return Err(format!("no process {:?} to measure", args.pid));
    }

    let shared = Arc::new(Shared {
        started: Instant::now(),
        latency: (0..SHARDS).map(|_| Mutex::new(histogram())).collect(),
        acks: Mutex::new(histogram()),
        connect: Mutex::new(histogram()),
        join: Mutex::new(histogram()),
        ready: AtomicUsize::new(0),
        ready_in: (0..groups).map(|_| AtomicUsize::new(0)).collect(),
        idle_ready: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        disconnected: AtomicUsize::new(0),
        delivered: AtomicU64::new(0),
        acked_in_window: AtomicU64::new(0),
        sent: (0..args.senders).map(|_| AtomicU64::new(0)).collect(),
        measuring: Mutex::new(false),
    });
    let (phase_tx, phase) = watch::channel(Phase::Connecting);
    let run_id = Uuid::new_v4().simple().to_string()[..6].to_owned();

    let total = args.clients + args.idle;
    let mut clients = Vec::with_capacity(total);
    for i in 0..total {
        let url = args.urls[i % args.urls.len()].clone();
        let delay = args.ramp.mul_f64(i as f64 / total as f64);
        let idle = i >= args.clients;
        let room = (args.rooms > 0 && !idle).then(|| {
            let r = room_of(i);
            RoomRole::new(&run_id, &r.to_string(), r, i < args.rooms)
        });
        let role = Role {
            index: i,
            idle,
            room,
            sender: (i < args.senders).then_some(i),
            joins: i < args.senders || (args.join == JoinMode::All && !idle),
            name: format!("load{i}-{run_id}"),
            interval: if i < args.senders && args.rate > 0.0 {
                Some(Duration::from_secs_f64(args.senders as f64 / args.rate))
            } else {
                None
            },
            senders: args.senders,
            quiet_rooms: args.quiet_rooms,
            run: run_id.clone(),
        };
        clients.push(tokio::spawn(client(
            url,
            delay,
            role,
            shared.clone(),
            phase.clone(),
        )));
    }

    // Connect phase: until every client is ready or failed (bounded by the ramp plus a minute).
    let connect_deadline = Instant::now() + args.ramp + Duration::from_secs(60);
    let settled = || {
        shared.ready.load(Ordering::SeqCst)
            + shared.idle_ready.load(Ordering::SeqCst)
            + shared.failed.load(Ordering::SeqCst)
    };
    while settled() < total && Instant::now() < connect_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_time = shared.started.elapsed();
    let quiet_after = if args.until_quiet {
        Some(until_quiet(sample).await)
    } else {
        None
    };
    tokio::time::sleep(args.settle).await;
    let connected = sample();

    phase_tx.send_replace(Phase::Warmup);
    tokio::time::sleep(args.warmup).await;
    let cpu_start = sample();
    let own_start = ProcSample::read(std::process::id());
    let measure_started = Instant::now();
    *shared.measuring.lock().unwrap() = true;
    phase_tx.send_replace(Phase::Measure);
    tokio::time::sleep(args.duration).await;
    *shared.measuring.lock().unwrap() = false;
    phase_tx.send_replace(Phase::Drain);
    let measured = measure_started.elapsed();
    let cpu_end = sample();
    let own_end = ProcSample::read(std::process::id());

    let receivers = shared.ready.load(Ordering::SeqCst) as u64;
    let sent_total = || -> u64 { shared.sent.iter().map(|s| s.load(Ordering::SeqCst)).sum() };
    // Messages sent in each room, and the deliveries that makes: each to every ready client there.
    let sent_in = |room: usize| -> u64 {
        shared
            .sent
            .iter()
            .enumerate()
            .filter(|(s, _)| room_of(*s) == room)
            .map(|(_, n)| n.load(Ordering::SeqCst))
            .sum()
    };
    let due = || -> u64 {
        (0..groups)
            .map(|r| sent_in(r) * shared.ready_in[r].load(Ordering::SeqCst) as u64)
            .sum()
    };
    let drain_deadline = Instant::now() + args.drain;
    // (A sender may still be finishing a message it began before the drain: read the total each time.)
    while shared.delivered.load(Ordering::SeqCst) < due() && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    phase_tx.send_replace(Phase::Done);
    let end = sample();
    let messages_sent = sent_total();
    let expected = due();

    // Exact accounting: which indices were sent, and what each client saw of them.
    let sent_counts: Vec<u64> = shared
        .sent
        .iter()
        .map(|s| s.load(Ordering::SeqCst))
        .collect();
    let was_sent = |k: usize, room: usize| -> bool {
        let senders = sent_counts.len();
        senders > 0
            && room_of(k % senders) == room
            && (k / senders) < sent_counts[k % senders] as usize
    };
    let (mut received, mut duplicated, mut unexpected, mut lost) = (0u64, 0u64, 0u64, 0u64);
    let mut ok = vec![0u64; groups];
    for handle in clients {
        let Ok(Some(seen)) = handle.await else {
            continue;
        };
        unexpected += seen.unexpected;
        if seen.idle {
            continue;
        }
        ok[seen.room] += 1;
        let mut got = 0u64;
        for (k, &count) in seen.counts.iter().enumerate() {
            if count == 0 {
                continue;
            }
            // A delivery of another room's message is a leak, counted as unexpected.
            if was_sent(k, seen.room) {
                got += 1;
                received += u64::from(count);
                duplicated += u64::from(count - 1);
            } else {
                unexpected += u64::from(count);
            }
        }
        lost += sent_in(seen.room) - got;
    }
    // Clients that connected but did not last: every message they missed is lost.
    for (r, ok) in ok.iter().enumerate() {
        let ready = shared.ready_in[r].load(Ordering::SeqCst) as u64;
        lost += sent_in(r) * ready.saturating_sub(*ok);
    }
    let _ = receivers;

    let mut latency = histogram();
    for shard in &shared.latency {
        latency.add(&*shard.lock().unwrap()).expect("same bounds");
    }
    let acks = shared.acks.lock().unwrap().clone();
    let server = match (before, connected, end, cpu_start, cpu_end) {
        (Some(b), Some(c), Some(e), Some(s0), Some(s1)) => Some(ServerUsage {
            rss_before_kib: b.rss_kib,
            rss_connected_kib: c.rss_kib,
            rss_end_kib: e.rss_kib,
            peak_rss_kib: e.peak_rss_kib,
            rss_per_client_kib: c.rss_kib.saturating_sub(b.rss_kib) as f64 / total as f64,
            cpu_percent: (s1.cpu_s - s0.cpu_s) / measured.as_secs_f64() * 100.0,
        }),
        _ => None,
    };
    let connect_ms = Percentiles::of(&shared.connect.lock().unwrap());
    let join_ms = Percentiles::of(&shared.join.lock().unwrap());
    Ok(Report {
        clients: args.clients,
        senders: args.senders,
        rate: args.rate,
        duration_s: measured.as_secs_f64(),
        join: args.join,
        rooms: args.rooms,
        quiet_rooms: args.quiet_rooms,
        idle: args.idle,
        connects_ok: shared.ready.load(Ordering::SeqCst) + shared.idle_ready.load(Ordering::SeqCst),
        connects_failed: shared.failed.load(Ordering::SeqCst),
        connect_time_s: connect_time.as_secs_f64(),
        quiet_after_s: quiet_after.map(|d| d.as_secs_f64()),
        connect_ms,
        join_ms,
        disconnects: shared.disconnected.load(Ordering::SeqCst),
        messages_sent,
        deliveries_expected: expected,
        deliveries_received: received,
        lost,
        duplicated,
        unexpected,
        deliveries_per_s: latency.len() as f64 / measured.as_secs_f64(),
        latency_ms: Percentiles::of(&latency),
        ack_ms: Percentiles::of(&acks),
        persisted_per_s: shared.acked_in_window.load(Ordering::SeqCst) as f64
            / measured.as_secs_f64(),
        server,
        generator_cpu_percent: match (own_start, own_end) {
            (Some(s0), Some(s1)) => (s1.cpu_s - s0.cpu_s) / measured.as_secs_f64() * 100.0,
            _ => f64::NAN,
        },
    })
}

/// A client's room, when the run has rooms.
struct RoomRole {
    number: usize,
    name: String,
    slug: String,
    /// This client makes the room (the first sender of each).
    makes: bool,
}

impl RoomRole {
    /// Room `what` of run `run`, counted as room `number`; `makes`: this client makes it.
    fn new(run: &str, what: &str, number: usize, makes: bool) -> Self {
        let (name, slug) = confab::protocol::validate_room_name(&format!("Load {run} {what}"))
            .expect("a valid room name");
        Self {
            number,
            name,
            slug,
            makes,
        }
    }
}

struct Role {
    index: usize,
    /// Connects and stays, outside every room measured.
    idle: bool,
    room: Option<RoomRole>,
    /// This client's sender number, if it sends.
    sender: Option<usize>,
    joins: bool,
    name: String,
    interval: Option<Duration>,
    senders: usize,
    /// Idle rooms this client makes after its own (see `--quiet-rooms`), if it makes its own.
    quiet_rooms: usize,
    /// This run's id, in every measured message: a server used before keeps older runs' messages in
    /// its history, and a new client's history must not count as deliveries.
    run: String,
}

/// One client for the whole run; `None` if it failed to connect or was dropped.
async fn client(
    url: String,
    delay: Duration,
    role: Role,
    shared: Arc<Shared>,
    mut phase: watch::Receiver<Phase>,
) -> Option<Seen> {
    tokio::time::sleep(delay).await;
    // Small buffers, as the server uses: the generator holds thousands of these too.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let began = Instant::now();
    let connected =
        tokio_tungstenite::connect_async_with_config(url.as_str(), Some(config), true).await;
    let mut socket = match connected {
        Ok((socket, _)) => socket,
        Err(err) => {
            if role.index == 0 || shared.failed.load(Ordering::Relaxed) == 0 {
                eprintln!("connect to {url} failed: {err}");
            }
            shared.failed.fetch_add(1, Ordering::SeqCst);
            return None;
        }
    };
    shared
        .connect
        .lock()
        .unwrap()
        .saturating_record(began.elapsed().as_micros() as u64);

    let send = |frame: &ClientFrame| {
        Message::text(serde_json::to_string(frame).expect("client frames serialise"))
    };
    if role.joins {
        let asked = Instant::now();
        if socket
            .send(send(&ClientFrame::Join {
                name: role.name.clone(),
            }))
            .await
            .is_err()
        {
            shared.failed.fetch_add(1, Ordering::SeqCst);
            return None;
        }
        // Wait for the server's answer, skipping the history and presence before it; bounded, as
        // entering a room is, so a join never answered cannot hold the run up.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            let next = tokio::time::timeout_at(deadline, socket.next())
                .await
                .unwrap_or_else(|_| {
                    eprintln!("client {}: no answer to its join within 90 s", role.index);
                    None
                });
            match next {
                Some(Ok(Message::Text(text))) if text.contains("\"type\":\"joined\"") => {
                    shared
                        .join
                        .lock()
                        .unwrap()
                        .saturating_record(asked.elapsed().as_micros() as u64);
                    break;
                }
                Some(Ok(Message::Text(text))) if text.contains("\"type\":\"error\"") => {
                    eprintln!("join refused: {text}");
                    shared.failed.fetch_add(1, Ordering::SeqCst);
                    return None;
                }
                Some(Ok(_)) => {}
                _ => {
                    shared.failed.fetch_add(1, Ordering::SeqCst);
                    return None;
                }
            }
        }
    }
    if let Some(room) = &role.room {
        // Its room, then the quiet ones it makes after it (if it made its room).
        let quiet_rooms = if room.makes { role.quiet_rooms } else { 0 };
        let quiet: Vec<RoomRole> = (0..quiet_rooms)
            .map(|q| {
                RoomRole::new(
                    &role.run,
                    &format!("{} quiet {q}", room.number),
                    room.number,
                    true,
                )
            })
            .collect();
        let rooms = std::iter::once((room, role.sender.is_some()))
            .chain(quiet.iter().map(|quiet| (quiet, true)));
        for (entering, sends) in rooms {
            // Bounded: a client that never gets into a room must not hold the run up.
            let entered =
                tokio::time::timeout(Duration::from_secs(90), enter(&mut socket, entering, sends))
                    .await
                    .unwrap_or_else(|_| Err("no answer within 90 s".into()));
            if let Err(err) = entered {
                eprintln!(
                    "client {} could not come into #{}: {err}",
                    role.index, entering.slug
                );
                shared.failed.fetch_add(1, Ordering::SeqCst);
                return None;
            }
        }
    }
    let room_number = role.room.as_ref().map_or(0, |r| r.number);
    let room_slug = role.room.as_ref().map_or_else(
        || confab::protocol::GENERAL_ROOM.to_owned(),
        |r| r.slug.clone(),
    );
    if role.idle {
        shared.idle_ready.fetch_add(1, Ordering::SeqCst);
    } else {
        shared.ready.fetch_add(1, Ordering::SeqCst);
        shared.ready_in[room_number].fetch_add(1, Ordering::SeqCst);
    }

    let shard = role.index % SHARDS;
    let mut seen = Seen {
        room: room_number,
        idle: role.idle,
        counts: Vec::new(),
        unexpected: 0,
    };
    let mut outstanding: HashMap<Uuid, u64> = HashMap::new();
    let mut sent_measured = 0u64;
    let mut ticker = tokio::time::interval(role.interval.unwrap_or(Duration::from_secs(3600)));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut current = *phase.borrow_and_update();
    if current == Phase::Done {
        // Joined after the run ended (a join storm outlasted the connect phase): nothing to wait for,
        // and no change of phase would ever come.
        let _ = socket.close(None).await;
        return Some(seen);
    }
    // One wait for the next phase at a time, not one per frame: every client shares the channel.
    let mut next_phase = Box::pin(next(phase));
    loop {
        tokio::select! {
            (receiver, changed) = &mut next_phase => {
                let Some(changed) = changed else { break };
                current = changed;
                if current == Phase::Done { break; }
                if current == Phase::Warmup {
                    // Senders take turns, so the room gets one message every 1/rate seconds, not a
                    // burst of one per sender every senders/rate seconds.
                    if let (Some(sender), Some(interval)) = (role.sender, role.interval) {
                        let offset = interval.mul_f64(sender as f64 / role.senders as f64);
                        ticker.reset_at(Instant::now() + offset);
                    }
                }
                next_phase = Box::pin(next(receiver));
            }
            _ = ticker.tick(), if role.interval.is_some()
                && matches!(current, Phase::Warmup | Phase::Measure) =>
            {
                let Some(sender) = role.sender else { continue };
                let id = Uuid::new_v4();
                let now = shared.micros();
                let measured = {
                    let open = shared.measuring.lock().unwrap();
                    if *open {
                        sent_measured += 1;
                        shared.sent[sender].store(sent_measured, Ordering::SeqCst);
                    }
                    *open
                };
                let text = if measured {
                    let k = (sent_measured as usize - 1) * role.senders + sender;
                    format!("m{k} {now} {}", role.run)
                } else {
                    format!("w {now}")
                };
                outstanding.insert(id, now);
                if socket.send(send(&ClientFrame::Send { room: room_slug.clone(), id, text })).await.is_err() {
                    shared.disconnected.fetch_add(1, Ordering::SeqCst);
                    return None;
                }
            }
            incoming = socket.next() => {
                let text = match incoming {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(_)) => continue,
                    _ => {
                        if current < Phase::Done {
                            shared.disconnected.fetch_add(1, Ordering::SeqCst);
                            return None;
                        }
                        break;
                    }
                };
                let now = shared.micros();
                if role.idle {
                    if measured_message(&text, &role.run).is_some() {
                        seen.unexpected += 1; // nothing measured is for a connection outside the rooms
                    }
                    continue;
                }
                if let Some((k, sent_at)) = measured_message(&text, &role.run) {
                    shared.latency[shard]
                        .lock()
                        .unwrap()
                        .saturating_record(now.saturating_sub(sent_at));
                    if seen.counts.len() <= k {
                        seen.counts.resize(k + 1, 0);
                    }
                    seen.counts[k] = seen.counts[k].saturating_add(1);
                    if seen.counts[k] == 1 {
                        shared.delivered.fetch_add(1, Ordering::SeqCst);
                    }
                } else if let Some(id) = acked(&text) {
                    if let Some(sent_at) = outstanding.remove(&id) {
                        shared.acks.lock().unwrap().saturating_record(now.saturating_sub(sent_at));
                        if current == Phase::Measure {
                            shared.acked_in_window.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                } else if text.contains("\"type\":\"error\"") && text.contains("\"id\"") {
                    // A refused message would be lost silently otherwise.
                    eprintln!("a message was refused: {text}");
                }
            }
        }
    }
    let _ = socket.close(None).await;
    Some(seen)
}

/// Comes into the client's room: its maker creates it, other senders join it, readers open it (a
/// public room is heard without joining). The room may not exist yet: joining and opening retry.
async fn enter<S>(socket: &mut S, room: &RoomRole, sends: bool) -> Result<(), String>
where
    S: futures_util::Sink<Message>
        + futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + Unpin,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let frame = if room.makes {
            ClientFrame::CreateRoom {
                name: room.name.clone(),
                topic: String::new(),
                private: false,
            }
        } else if sends {
            ClientFrame::JoinRoom {
                room: room.slug.clone(),
            }
        } else {
            ClientFrame::Open {
                room: room.slug.clone(),
                after: None,
            }
        };
        let text = serde_json::to_string(&frame).expect("client frames serialise");
        socket
            .send(Message::text(text))
            .await
            .map_err(|_| "the socket closed".to_owned())?;
        let done = if sends {
            "\"type\":\"room\""
        } else {
            "\"type\":\"reset\""
        };
        loop {
            match socket.next().await {
                Some(Ok(Message::Text(text))) if text.starts_with(&format!("{{{done}")) => {
                    if text.contains(&format!("\"{}\"", room.slug)) {
                        return Ok(());
                    }
                }
                Some(Ok(Message::Text(text))) if text.contains("\"type\":\"error\"") => {
                    if room.makes || Instant::now() > deadline {
                        return Err(text.to_string());
                    }
                    break; // not made yet: ask again shortly
                }
                Some(Ok(_)) => {}
                _ => return Err("the socket closed".into()),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The phase after the one `phase` has seen, and the receiver (which now has seen it) for the next wait.
async fn next(mut phase: watch::Receiver<Phase>) -> (watch::Receiver<Phase>, Option<Phase>) {
    let changed = match phase.changed().await {
        Ok(()) => Some(*phase.borrow_and_update()),
        Err(_) => None,
    };
    (phase, changed)
}

/// Index and send time of a measured message event of run `run` ("m<index> <micros> <run>" in its
/// text), read without parsing the whole frame: the generator shares the machine with the server and
/// must stay cheap.
fn measured_message(frame: &str, run: &str) -> Option<(usize, u64)> {
    if !frame.starts_with("{\"type\":\"event\"") {
        return None;
    }
    let text = frame.split_once("\"text\":\"m")?.1;
    let text = text.split('"').next()?;
    let mut parts = text.split(' ');
    let (k, at) = (parts.next()?, parts.next()?);
    if parts.next()? != run {
        return None;
    }
    Some((k.parse().ok()?, at.parse().ok()?))
}

fn acked(frame: &str) -> Option<Uuid> {
    let rest = frame.strip_prefix("{\"type\":\"ack\",\"id\":\"")?;
    Uuid::try_parse(rest.get(..36)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_read_without_full_parsing() {
        let event = r#"{"type":"event","seq":3,"id":"6f1c0f7e-8a4f-4b1a-9a52-3c1d2e3f4a5b","room":"general","at":1,"kind":"message","name":"load1","text":"m42 123456 ab12cd"}"#;
        assert_eq!(measured_message(event, "ab12cd"), Some((42, 123456)));
        assert_eq!(
            measured_message(event, "ffffff"),
            None,
            "an earlier run's message in the history is not a delivery"
        );
        let warmup = event.replace("m42 123456 ab12cd", "w 1");
        assert_eq!(measured_message(&warmup, "ab12cd"), None);
        let ack = r#"{"type":"ack","id":"6f1c0f7e-8a4f-4b1a-9a52-3c1d2e3f4a5b","seq":3}"#;
        assert_eq!(
            acked(ack).map(|u| u.to_string()).as_deref(),
            Some("6f1c0f7e-8a4f-4b1a-9a52-3c1d2e3f4a5b")
        );
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("soon").is_err());
        assert!(is_loopback("ws://127.0.0.1:3000/ws").unwrap());
        assert!(is_loopback("ws://localhost:3000/ws").unwrap());
        assert!(!is_loopback("ws://10.1.2.3:3000/ws").unwrap());
    }
}
