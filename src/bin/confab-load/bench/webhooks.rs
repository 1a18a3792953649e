//! (k): the (a) load twice on one server, without and then with 50 webhook calls a second to a slow
//! receiver: a mention of a bot with a webhook every 20 ms, posted through the API by another bot, and a
//! receiver on loopback that takes its time over each call. The chat's p99 should not notice.

use super::{run_args, Load, Outcome, Server};
use crate::run::{self, Report};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the receiver takes over each call.
const RECEIVER_DELAY: Duration = Duration::from_millis(500);
/// Mentions posted per second while the busy run measures.
const CALLS_PER_SECOND: u64 = 50;

/// Makes a bot with the server binary's own command; its token.
fn make_bot(
    server: &Path,
    data: &Path,
    name: &str,
    webhook: Option<&str>,
) -> Result<String, String> {
    let mut command = std::process::Command::new(server);
    command
        .args(["bot", "create", name])
        .env("CONFAB_DATA_DIR", data)
        .env("CONFAB_WEBHOOK_ALLOW_PRIVATE", "true")
        .env("RUST_LOG", "warn");
    if let Some(url) = webhook {
        command.args(["--webhook", url]);
    }
    let out = command
        .output()
        .map_err(|e| format!("confab bot create: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("token: "))
        .map(str::to_owned)
        .ok_or_else(|| {
            format!(
                "confab bot create said: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// A receiver that counts calls and answers each after [`RECEIVER_DELAY`], with nothing to post.
async fn slow_receiver() -> Result<(String, Arc<AtomicU64>), String> {
    let calls = Arc::new(AtomicU64::new(0));
    let counted = calls.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(RECEIVER_DELAY).await;
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((format!("http://{addr}/hook"), calls))
}

/// Posts `@hooked` mentions at [`CALLS_PER_SECOND`] for `duration`; how many were stored.
async fn mention_steadily(port: u16, token: String, duration: Duration) -> u64 {
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/api/v1/rooms/general/messages");
    let mut ticker = tokio::time::interval(Duration::from_millis(1_000 / CALLS_PER_SECOND));
    let end = Instant::now() + duration;
    let mut stored = 0;
    let mut n = 0u64;
    while Instant::now() < end {
        ticker.tick().await;
        n += 1;
        let body = serde_json::json!({ "text": format!("@hooked ping {n}") }).to_string();
        let sent = http
            .post(&url)
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await;
        if sent.is_ok_and(|r| r.status().is_success()) {
            stored += 1;
        }
    }
    stored
}

pub(super) async fn webhooks_beside_chat(
    args: &super::BenchArgs,
    port: u16,
    quick: bool,
) -> Result<Outcome, String> {
    let (hook, calls) = slow_receiver().await?;
    let mut caller = String::new();
    let server = Server::start_prepared(args, port, |data| {
        make_bot(&args.server, data, "hooked", Some(&hook))?;
        caller = make_bot(&args.server, data, "caller", None)?;
        Ok(())
    })?;
    let load = Load {
        clients: if quick { 300 } else { 1_000 },
        senders: 10,
        rate: if quick { 20.0 } else { 100.0 },
        duration: Duration::from_secs(if quick { 4 } else { 15 }),
        ..Load::default()
    };
    let quiet = run::run(run_args(&server, &load)).await;
    // The mentions cover the busy run's whole measured window (it starts after warm-up and ramp).
    let window = Duration::from_secs(if quick { 8 } else { 22 });
    let mentions = tokio::spawn(mention_steadily(port, caller, window));
    let busy = run::run(run_args(&server, &load)).await;
    let posted = mentions.await.map_err(|e| e.to_string())?;
    // Every stored mention is a call: wait for the stragglers.
    let deadline = Instant::now() + Duration::from_secs(30);
    while calls.load(Ordering::SeqCst) < posted && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop();
    let made = calls.load(Ordering::SeqCst);
    let (quiet, busy) = (quiet?, busy?);
    println!("\n(k) without webhook calls\n{}", quiet.table());
    println!(
        "\n(k) with {CALLS_PER_SECOND} webhook calls/s\n{}",
        busy.table()
    );
    let ratio = busy.latency_ms.p99 / quiet.latency_ms.p99.max(0.001);
    let clean = |r: &Report| r.lost == 0 && r.duplicated == 0 && r.connects_failed == 0;
    Ok(Outcome {
        id: "k",
        title: format!(
            "{} clients, 10 senders, {} msg/s, with {CALLS_PER_SECOND} webhook calls/s to a receiver taking {} ms",
            load.clients,
            load.rate,
            RECEIVER_DELAY.as_millis()
        ),
        target: "chat p99 with webhook calls beside it without; 0 lost; every call made",
        result: format!(
            "chat p99 {:.1} ms with / {:.1} ms without ({ratio:.2}×); {made} of {posted} calls made; {} lost",
            busy.latency_ms.p99,
            quiet.latency_ms.p99,
            busy.lost + quiet.lost,
        ),
        met: Some(clean(&quiet) && clean(&busy) && made >= posted && ratio <= 1.5),
        detail: Some(serde_json::json!({
            "without": quiet,
            "mentions_posted": posted,
            "calls_made": made,
            "receiver_delay_ms": RECEIVER_DELAY.as_millis() as u64,
        })),
        run: Some(busy),
        floor: None,
    })
}
