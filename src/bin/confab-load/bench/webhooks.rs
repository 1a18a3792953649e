//! (k): the (a) load twice on one server, with a person on a socket of their own posting 50 messages a
//! second beside it both times: plain ones first, then ones that mention a bot whose webhook receiver
//! (on loopback) takes its time over each call. Both runs carry the same deliveries, so the difference
//! between their p99s is what the webhook calls cost the chat, which should be next to nothing.

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

/// Makes a bot called at `webhook` with the server binary's own command, before the server starts.
fn make_bot(server: &Path, data: &Path, name: &str, webhook: &str) -> Result<(), String> {
    let out = std::process::Command::new(server)
        .args(["bot", "create", name, "--webhook", webhook])
        .env("CONFAB_DATA_DIR", data)
        .env("CONFAB_WEBHOOK_ALLOW_PRIVATE", "true")
        .env("RUST_LOG", "warn")
        .output()
        .map_err(|e| format!("confab bot create: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "confab bot create said: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
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

/// A person on a socket of their own posts [`CALLS_PER_SECOND`] messages a second for `duration`,
/// `@hooked` mentions when `mention` (people's messages call bots; bots' do not); how many the server
/// acknowledged as stored.
async fn post_steadily(port: u16, duration: Duration, mention: bool) -> Result<u64, String> {
    use confab::protocol::{ClientFrame, ServerFrame};
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (socket, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws"))
        .await
        .map_err(|e| format!("the poster cannot connect: {e}"))?;
    let (mut write, mut read) = socket.split();
    let frame =
        |f: &ClientFrame| Message::text(serde_json::to_string(f).expect("frames serialise"));
    // Each run's poster has a name of its own: the last one's is held through its leave grace.
    let name = if mention { "mentioner" } else { "poster" };
    let join = ClientFrame::Join { name: name.into() };
    write.send(frame(&join)).await.map_err(|e| e.to_string())?;
    // Acknowledgements are counted beside the sending, until a quiet second after the last.
    let acks = tokio::spawn(async move {
        let mut acked = 0u64;
        while let Ok(Some(Ok(message))) =
            tokio::time::timeout(Duration::from_secs(5), read.next()).await
        {
            if let Message::Text(text) = message {
                if let Ok(ServerFrame::Ack { .. }) = serde_json::from_str(&text) {
                    acked += 1;
                }
            }
        }
        acked
    });
    let mut ticker = tokio::time::interval(Duration::from_millis(1_000 / CALLS_PER_SECOND));
    let end = Instant::now() + duration;
    let mut n = 0u64;
    while Instant::now() < end {
        ticker.tick().await;
        n += 1;
        let send = ClientFrame::Send {
            room: confab::protocol::GENERAL_ROOM.into(),
            id: uuid::Uuid::new_v4(),
            text: if mention {
                format!("@hooked ping {n}")
            } else {
                format!("hooked ping {n}")
            },
        };
        write.send(frame(&send)).await.map_err(|e| e.to_string())?;
    }
    let acked = acks.await.map_err(|e| e.to_string())?;
    let _ = write.close().await;
    Ok(acked)
}

pub(super) async fn webhooks_beside_chat(
    args: &super::BenchArgs,
    port: u16,
    quick: bool,
) -> Result<Outcome, String> {
    let (hook, calls) = slow_receiver().await?;
    let server = Server::start_prepared(args, port, |data| {
        make_bot(&args.server, data, "hooked", &hook)
    })?;
    let load = Load {
        clients: if quick { 300 } else { 1_000 },
        senders: 10,
        rate: if quick { 20.0 } else { 100.0 },
        duration: Duration::from_secs(if quick { 4 } else { 15 }),
        ..Load::default()
    };
    // The posts cover each run's whole measured window (it starts after warm-up and ramp).
    let window = Duration::from_secs(if quick { 8 } else { 22 });
    let plain = tokio::spawn(post_steadily(port, window, false));
    let quiet = run::run(run_args(&server, &load)).await;
    let plain = plain.await.map_err(|e| e.to_string()).and_then(|m| m);
    let mentions = tokio::spawn(post_steadily(port, window, true));
    let busy = run::run(run_args(&server, &load)).await;
    let posted = match (
        plain,
        mentions.await.map_err(|e| e.to_string()).and_then(|m| m),
    ) {
        (Ok(_), Ok(posted)) => posted,
        (Err(err), _) | (_, Err(err)) => {
            server.stop();
            return Err(format!("scenario (k): {err}"));
        }
    };
    if calls.load(Ordering::SeqCst) > posted {
        server.stop();
        return Err("scenario (k): plain messages called the webhook".into());
    }
    // Every stored mention is a call: wait for the stragglers.
    let deadline = Instant::now() + Duration::from_secs(30);
    while calls.load(Ordering::SeqCst) < posted && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop();
    let made = calls.load(Ordering::SeqCst);
    let (quiet, busy) = (quiet?, busy?);
    println!(
        "\n(k) with {CALLS_PER_SECOND} plain messages/s\n{}",
        quiet.table()
    );
    println!(
        "\n(k) with {CALLS_PER_SECOND} webhook calls/s\n{}",
        busy.table()
    );
    let ratio = busy.latency_ms.p99 / quiet.latency_ms.p99.max(0.001);
    let clean = |r: &Report| r.lost == 0 && r.duplicated == 0 && r.connects_failed == 0;
    Ok(Outcome {
        id: "k",
        title: format!(
            "{} clients, 10 senders, {} msg/s, plus {CALLS_PER_SECOND} msg/s that are plain, then webhook calls to a receiver taking {} ms",
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
        met: Some(clean(&quiet) && clean(&busy) && posted > 0 && made >= posted && ratio <= 1.5),
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
