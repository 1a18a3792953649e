//! Prometheus metrics at `/metrics`: connections, messages in and out, fan-out and store latency.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;

pub const CONNECTED: &str = "confab_connected_clients";
pub const MESSAGES_IN: &str = "confab_messages_in_total";
pub const FRAMES_OUT: &str = "confab_frames_out_total";
pub const FANOUT_SECONDS: &str = "confab_fanout_seconds";
pub const STORE_SECONDS: &str = "confab_store_append_seconds";
pub const DELIVERY_SECONDS: &str = "confab_delivery_lag_seconds";
pub const JOIN_SECONDS: &str = "confab_join_seconds";

/// The process-wide recorder; installed on first use (tests start many servers in one process).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let buckets = [
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            // A join in a storm of thousands waits seconds.
            2.5, 5.0, 10.0, 30.0,
        ];
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
            .expect("buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (never in the binary); then the handle stays empty.
        let _ = metrics::set_global_recorder(recorder);
        metrics::describe_gauge!(CONNECTED, "WebSocket connections open now");
        metrics::describe_counter!(MESSAGES_IN, "chat messages accepted from clients");
        metrics::describe_counter!(FRAMES_OUT, "frames written to client sockets");
        metrics::describe_histogram!(
            FANOUT_SECONDS,
            "from a batch reaching its room's writer to its broadcast"
        );
        metrics::describe_histogram!(STORE_SECONDS, "time to store one batch durably");
        metrics::describe_histogram!(
            DELIVERY_SECONDS,
            "from a broadcast to its write to a client's socket (sampled: one write in 8)"
        );
        metrics::describe_histogram!(
            JOIN_SECONDS,
            "from reading a join to queueing its joined reply, for a name that joins"
        );
        // Every gauge and counter from start-up, at zero, so a fresh server's scrape is not empty.
        metrics::gauge!(CONNECTED).increment(0.0);
        metrics::counter!(MESSAGES_IN).increment(0);
        metrics::counter!(FRAMES_OUT).increment(0);
        handle
    })
}

/// Frames written to client sockets, counted by each thread in a cache line of its own and summed into
/// [`FRAMES_OUT`] at each scrape. One atomic that every connection's writer adds to was a cache line
/// passed between the cores on every write: 1.6% of the server's CPU at 10,000 clients.
pub fn frames_out(frames: u64) {
    thread_local! {
        static SHARD: usize = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|&shard| {
        FRAMES_OUT_SHARDS[shard]
            .0
            .fetch_add(frames, Ordering::Relaxed)
    });
}

const SHARDS: usize = 16;
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

#[repr(align(128))]
struct Shard(AtomicU64);

static FRAMES_OUT_SHARDS: [Shard; SHARDS] = [const { Shard(AtomicU64::new(0)) }; SHARDS];

/// The `/metrics` response body.
pub async fn render() -> ([(axum::http::header::HeaderName, &'static str); 1], String) {
    let written = FRAMES_OUT_SHARDS
        .iter()
        .map(|shard| shard.0.load(Ordering::Relaxed))
        .sum();
    metrics::counter!(FRAMES_OUT).absolute(written);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        handle().render(),
    )
}
