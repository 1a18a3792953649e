//! `floor`: the part of fan-out no server can avoid, measured on this machine with no server at all.
//!
//! Delivering one chat message to N clients costs at least one `write` on each of N TCP sockets. This
//! connects N loopback sockets to itself and, once per round, writes one message-sized record to each,
//! from as many threads as a server has workers (blocking writes, `TCP_NODELAY`, as a server's are).
//! Readers drain the other ends on the async runtime, as the load generator's clients do, and each
//! record carries its send time, so the latency below is the same send → receive measure as a `run`'s:
//! what a message would see if the server did nothing but these writes.

use crate::run::{histogram, Percentiles, SHARDS};
use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Args)]
pub struct FloorArgs {
    /// Sockets, one per client.
    #[arg(long, default_value_t = 1_000)]
    pub sockets: usize,
    /// Records written to every socket per second (the room's message rate).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Rounds (messages); each writes one record to every socket.
    #[arg(long, default_value_t = 1_000)]
    pub rounds: usize,
    /// Writing threads; by default one per core, as the server's runtime has workers.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Bytes per record: about one message event frame of the (a) scenario.
    #[arg(long, default_value_t = 180)]
    pub bytes: usize,
}

impl FloorArgs {
    fn validate(&self) -> Result<(), String> {
        if self.sockets == 0 || self.sockets > crate::run::MAX_CLIENTS {
            return Err(format!("--sockets must be 1..={}", crate::run::MAX_CLIENTS));
        }
        if !(self.rate > 0.0 && self.rate <= 10_000.0) {
            return Err("--rate must be above 0 and at most 10,000".into());
        }
        if self.rounds == 0
            || self.rounds as f64 / self.rate > crate::run::MAX_DURATION.as_secs_f64()
        {
            return Err("--rounds must be at least 1 and last at most 10 minutes".into());
        }
        if !(16..=65_536).contains(&self.bytes) {
            return Err("--bytes must be 16..=65536".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FloorReport {
    pub sockets: usize,
    pub threads: usize,
    pub rate: f64,
    pub rounds: usize,
    pub bytes: usize,
    /// CPU per write on the writing threads, user and kernel, microseconds.
    pub write_user_us: f64,
    pub write_kernel_us: f64,
    /// From a round's start until its last write returned.
    pub round_ms: Percentiles,
    /// Send → receive, every record.
    pub latency_ms: Percentiles,
    /// Records that never arrived (should be 0: TCP on loopback).
    pub lost: u64,
}

impl FloorReport {
    pub fn table(&self) -> String {
        let (r, l) = (&self.round_ms, &self.latency_ms);
        format!(
            "{} sockets, {} writing threads, {} records/s of {} bytes, {} rounds\n\
             write CPU       {:.1} µs per write ({:.1} user + {:.1} kernel)\n\
             one round (ms)  p50 {:.2}  p99 {:.2}  max {:.2}   (a record written to every socket)\n\
             latency (ms)    p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}   lost {}",
            self.sockets,
            self.threads,
            self.rate,
            self.bytes,
            self.rounds,
            self.write_user_us + self.write_kernel_us,
            self.write_user_us,
            self.write_kernel_us,
            r.p50,
            r.p99,
            r.max,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
            self.lost
        )
    }
}

/// User and kernel CPU time of the calling thread.
fn thread_cpu() -> (Duration, Duration) {
    // SAFETY: getrusage writes only the struct we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut usage);
        usage
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    (time(usage.ru_utime), time(usage.ru_stime))
}

pub async fn floor(args: FloorArgs) -> Result<FloorReport, String> {
    args.validate()?;
    let wanted = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .clamp(1, args.sockets);
    // Equal shares of the sockets; 4 sockets over 3 threads make 2 shares of 2, so 2 threads write.
    let share = args.sockets.div_ceil(wanted);
    let threads = args.sockets.div_ceil(share);
    confab::server::raise_fd_limit(args.sockets as u64 * 2 + 1024);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot listen on loopback: {e}"))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;

    let started = Instant::now();
    let latency: Arc<Vec<Mutex<Histogram<u64>>>> =
        Arc::new((0..SHARDS).map(|_| Mutex::new(histogram())).collect());
    let received = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::with_capacity(args.sockets);
    let mut readers = Vec::with_capacity(args.sockets);
    for i in 0..args.sockets {
        let reader = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| format!("connect {i} failed: {e}"))?;
        let (writer, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let writer = writer.into_std().map_err(|e| e.to_string())?;
        writer.set_nonblocking(false).map_err(|e| e.to_string())?;
        writer.set_nodelay(true).map_err(|e| e.to_string())?;
        writers.push(writer);
        readers.push(tokio::spawn(read_records(
            reader,
            args.bytes,
            started,
            latency.clone(),
            i % SHARDS,
            received.clone(),
        )));
    }

    let (rate, rounds, bytes) = (args.rate, args.rounds, args.bytes);
    let written = tokio::task::spawn_blocking(move || {
        write_rounds(writers, share, rate, rounds, bytes, started)
    })
    .await
    .map_err(|e| format!("a writer failed: {e}"))??;

    // Every record reaches its reader (loopback TCP loses nothing), so wait for all of them, bounded.
    let expected = (args.sockets * args.rounds) as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.load(Ordering::SeqCst) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for reader in readers {
        reader.abort();
    }
    let mut all = histogram();
    for shard in latency.iter() {
        all.add(&*shard.lock().unwrap()).expect("same bounds");
    }
    let writes = (args.sockets * args.rounds) as f64;
    Ok(FloorReport {
        sockets: args.sockets,
        threads,
        rate: args.rate,
        rounds: args.rounds,
        bytes: args.bytes,
        write_user_us: written.user.as_secs_f64() * 1e6 / writes,
        write_kernel_us: written.kernel.as_secs_f64() * 1e6 / writes,
        round_ms: Percentiles::of(&written.rounds),
        latency_ms: Percentiles::of(&all),
        lost: expected.saturating_sub(received.load(Ordering::SeqCst)),
    })
}

struct Written {
    user: Duration,
    kernel: Duration,
    rounds: Histogram<u64>,
}

/// Writes `rounds` records to every socket, one thread for each `share` of the sockets, one round every
/// 1/`rate` seconds; all threads start a round together.
fn write_rounds(
    writers: Vec<std::net::TcpStream>,
    share: usize,
    rate: f64,
    rounds: usize,
    bytes: usize,
    started: Instant,
) -> Result<Written, String> {
    use std::io::Write;
    // One party per thread actually started, or the barrier would wait for a thread that never comes.
    let barrier = Barrier::new(writers.len().div_ceil(share));
    let interval = Duration::from_secs_f64(1.0 / rate);
    let first_round = Instant::now() + Duration::from_millis(50);
    std::thread::scope(|scope| {
        let workers: Vec<_> = writers
            .chunks(share)
            .map(|sockets| {
                let barrier = &barrier;
                scope.spawn(
                    move || -> Result<(Duration, Duration, Vec<Duration>), String> {
                        let mut record = vec![b'.'; bytes];
                        let mut took = Vec::with_capacity(rounds);
                        let (user0, kernel0) = thread_cpu();
                        for round in 0..rounds {
                            let at = first_round + interval.mul_f64(round as f64);
                            std::thread::sleep(at.saturating_duration_since(Instant::now()));
                            barrier.wait();
                            let began = Instant::now();
                            let micros = started.elapsed().as_micros() as u64;
                            record[..8].copy_from_slice(&micros.to_le_bytes());
                            for mut socket in sockets {
                                socket
                                    .write_all(&record)
                                    .map_err(|e| format!("write failed: {e}"))?;
                            }
                            took.push(began.elapsed());
                        }
                        let (user1, kernel1) = thread_cpu();
                        Ok((user1 - user0, kernel1 - kernel0, took))
                    },
                )
            })
            .collect();
        let mut user = Duration::ZERO;
        let mut kernel = Duration::ZERO;
        let mut longest = vec![Duration::ZERO; rounds];
        for worker in workers {
            let (u, k, took) = worker.join().map_err(|_| "a writer panicked")??;
            user += u;
            kernel += k;
            for (round, t) in took.into_iter().enumerate() {
                longest[round] = longest[round].max(t);
            }
        }
        let mut histogram = histogram();
        for t in longest {
            histogram.saturating_record(t.as_micros() as u64);
        }
        Ok(Written {
            user,
            kernel,
            rounds: histogram,
        })
    })
}

/// Reads fixed-size records until the socket closes, recording each one's latency.
async fn read_records(
    stream: tokio::net::TcpStream,
    bytes: usize,
    started: Instant,
    latency: Arc<Vec<Mutex<Histogram<u64>>>>,
    shard: usize,
    received: Arc<AtomicU64>,
) {
    let mut buffer = vec![0u8; bytes * 16];
    let mut filled = 0;
    loop {
        if stream.readable().await.is_err() {
            return;
        }
        match stream.try_read(&mut buffer[filled..]) {
            Ok(0) => return,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return,
        }
        let now = started.elapsed().as_micros() as u64;
        let complete = filled / bytes;
        if complete == 0 {
            continue;
        }
        {
            let mut histogram = latency[shard].lock().unwrap();
            for record in buffer[..complete * bytes].chunks_exact(bytes) {
                let sent = u64::from_le_bytes(record[..8].try_into().expect("8 bytes"));
                histogram.saturating_record(now.saturating_sub(sent));
            }
        }
        received.fetch_add(complete as u64, Ordering::SeqCst);
        buffer.copy_within(complete * bytes..filled, 0);
        filled -= complete * bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(sockets: usize, rounds: usize, threads: usize) -> FloorArgs {
        FloorArgs {
            sockets,
            rate: 200.0,
            rounds,
            threads: Some(threads),
            bytes: 64,
        }
    }

    #[tokio::test]
    async fn every_record_is_written_read_and_timed_once() {
        // More sockets than threads, split unevenly, so every chunk of the writers is exercised.
        let report = floor(args(7, 20, 3)).await.unwrap();
        assert_eq!((report.sockets, report.threads, report.lost), (7, 3, 0));
        assert_eq!(report.latency_ms.count, 7 * 20, "one latency per record");
        assert_eq!(report.round_ms.count, 20, "one duration per round");
    }

    #[test]
    fn threads_that_would_get_no_socket_are_not_started() {
        // 4 sockets in shares of 2 (over 3 threads) leave the third thread nothing: 2 threads write. A
        // barrier counting 3 would wait forever; the timeout turns that into a failure, and the runtime
        // is let go in the background so a stuck writer cannot hang the test run.
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let outcome = runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), floor(args(4, 10, 3))).await
        });
        runtime.shutdown_background();
        let report = outcome.expect("the writers finish").unwrap();
        assert_eq!((report.threads, report.lost), (2, 0));
        assert_eq!(report.latency_ms.count, 4 * 10);
    }

    #[test]
    fn unbounded_or_degenerate_runs_are_refused() {
        assert!(args(0, 10, 1).validate().is_err());
        assert!(args(crate::run::MAX_CLIENTS + 1, 10, 1).validate().is_err());
        assert!(args(10, 0, 1).validate().is_err());
        // 200 rounds/s for longer than the generator's time bound.
        assert!(args(10, 200 * 601, 1).validate().is_err());
        let tiny = FloorArgs {
            bytes: 8,
            ..args(10, 10, 1)
        };
        assert!(tiny.validate().is_err(), "a record must hold its timestamp");
        assert!(args(10, 10, 1).validate().is_ok());
    }
}
