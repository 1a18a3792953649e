//! Webhook calls: when a bot is `@mentioned` in a room it is in, or sent a direct message, Confab POSTs
//! `{message, room, sender, reply_url}` to the bot's URL.
//!
//! - The call is signed: `Confab-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">` with the
//!   bot's secret, and carries `Idempotency-Key`, the same on every attempt.
//! - Calls are rows the message's own transaction wrote, so they survive a restart and go out at least
//!   once. A sender task per instance leases due rows, so two instances do not make the same call at once.
//! - A timeout, a connection failure or a 5xx is retried with exponential backoff, at most
//!   [`MAX_RETRIES`] times; a 4xx, a redirect (never followed) or the last failure marks the call failed,
//!   which the admin page shows.
//! - A 200 answer in `text/plain`, or JSON `{"text": …}`, is the bot's reply in the room.
//! - Calls run beside the chat, at most [`PARALLEL`] at once and half of them to one bot
//!   ([`super::BotConfig::per_bot`]): a slow or dead bot never holds up a room, nor the other bots.

use super::Bots;
use crate::protocol::{validate_text, ChatEvent, EventKind, UserKind};
use crate::server::hub::{now_ms, Hub};
use crate::server::rooms::{post_refusal, Directory};
use crate::server::store::bots::{derived_id, Delivery, Settled, Settlement, Webhook};
use crate::server::store::NewEvent;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use uuid::Uuid;

/// Retries after the first attempt.
pub const MAX_RETRIES: u32 = 5;
/// Calls in flight at once, per instance.
const PARALLEL: usize = 64;
/// The most of an answer read: a reply is a chat message, and a 10 MB answer must not cost 10 MB.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// How often each instance rereads which bots have webhooks.
pub const REFRESH: Duration = Duration::from_secs(2);
/// How long the sender gathers work before one write: calls stored meanwhile are claimed together, and
/// outcomes are recorded together. Each write is a commit (an fsync on SQLite) beside the rooms' own, so
/// at 50 calls a second this is a few commits a second instead of a hundred.
const GATHER: Duration = Duration::from_millis(50);
/// The header with the signature.
pub const SIGNATURE_HEADER: &str = "Confab-Signature";

/// `Confab-Signature` for `body` sent at `t` (Unix seconds).
pub fn signature(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

/// Whether `header` is a valid signature of `body` by `secret`, made at most `window` before `now`
/// (Unix seconds): what a receiver does, and the README's example does, to refuse forgeries and replays.
pub fn verify(secret: &str, header: &str, body: &[u8], now: i64, window: i64) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = value.parse::<i64>().ok(),
            Some(("v1", value)) => v1 = Some(value),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    if (now - t).abs() > window {
        return false;
    }
    let Some(given) = decode_hex(v1) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    // Compared in constant time.
    mac.verify_slice(&given).is_ok()
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Whether an address is one a webhook may not call unless private addresses are allowed: loopback,
/// private, link-local, shared (CGNAT), unspecified, broadcast, multicast, documentation, unique local.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || (a == 100 && (64..128).contains(&b))
                || a == 0
                || a >= 240
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

/// Checks a webhook URL: http or https, with a host; unless `allow_private`, every address the host has
/// now must be public. (The call checks again, at connect time, so a name that changes later is caught.)
pub async fn check_url(url: &str, allow_private: bool) -> Result<reqwest::Url, String> {
    let parsed =
        reqwest::Url::parse(url).map_err(|err| format!("The webhook URL is not a URL: {err}."))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "The webhook URL must start with http:// or https://, not {}:.",
            parsed.scheme()
        ));
    }
    let Some(host) = parsed.host_str().filter(|h| !h.is_empty()) else {
        return Err("The webhook URL has no host.".into());
    };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("The webhook URL may not hold a user name or password.".into());
    }
    if allow_private {
        return Ok(parsed);
    }
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = parsed.port_or_known_default().unwrap_or(443);
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|_| format!("The webhook host {host} does not resolve."))?
            .collect(),
    };
    if addrs.is_empty() || addrs.iter().any(|a| is_private(a.ip())) {
        return Err(format!(
            "The webhook host {host} is a loopback, link-local or private address; webhooks call \
             public addresses only (CONFAB_WEBHOOK_ALLOW_PRIVATE=true allows them)."
        ));
    }
    Ok(parsed)
}

/// Resolves names to their public addresses only: a name that answers with a private one is not called,
/// even if it answered otherwise when the URL was saved.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| !is_private(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} has no public address").into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// What a bot is sent.
#[derive(Debug, Serialize)]
pub struct Payload<'a> {
    pub message: PayloadMessage<'a>,
    pub room: PayloadRoom<'a>,
    pub sender: PayloadSender<'a>,
    /// Where the bot posts a reply (with its token), if it answers later rather than in the response.
    pub reply_url: String,
}

#[derive(Debug, Serialize)]
pub struct PayloadMessage<'a> {
    pub id: Uuid,
    pub seq: u64,
    pub text: &'a str,
    pub at: i64,
}

#[derive(Debug, Serialize)]
pub struct PayloadRoom<'a> {
    pub slug: &'a str,
    pub name: &'a str,
    pub kind: crate::protocol::RoomKind,
}

#[derive(Debug, Serialize)]
pub struct PayloadSender<'a> {
    pub id: Uuid,
    pub name: &'a str,
    pub kind: UserKind,
}

/// How one attempt ended.
#[derive(Debug)]
enum Outcome {
    /// Called; with the reply to post, if the bot answered one.
    Done(Option<String>),
    /// Worth trying again (a timeout, no connection, a 5xx).
    Retry(String),
    /// Never worth trying again (a 4xx, a redirect).
    Fail(String),
}

/// Makes the webhook calls of this instance, until the hub closes.
pub struct Sender {
    bots: Bots,
    hub: Hub,
    rooms: Directory,
    /// The chat's address as bots reach it, for `reply_url`.
    public_url: String,
    client: reqwest::Client,
    /// Calls in flight, per bot.
    busy: std::sync::Mutex<std::collections::HashMap<Uuid, usize>>,
    /// What became of each call, to the task that records them ([`Sender::record`]).
    settle: mpsc::UnboundedSender<Settled>,
    settled: Option<mpsc::UnboundedReceiver<Settled>>,
}

impl Sender {
    pub fn new(bots: Bots, hub: Hub, rooms: Directory, public_url: String) -> Self {
        let mut client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(bots.config.timeout)
            .no_proxy()
            .user_agent(concat!("Confab-Webhook/", env!("CARGO_PKG_VERSION")));
        if !bots.config.allow_private {
            client = client.dns_resolver(Arc::new(PublicOnly));
        }
        let client = client
            .build()
            .expect("the webhook client's settings are valid");
        let (settle, settled) = mpsc::unbounded_channel();
        Self {
            bots,
            hub,
            rooms,
            public_url: public_url.trim_end_matches('/').to_owned(),
            client,
            busy: Default::default(),
            settle,
            settled: Some(settled),
        }
    }

    /// Claims due calls and makes them, waking when a message stores one, and every second for calls
    /// other instances stored and retries coming due.
    pub async fn run(mut self) {
        let settled = self.settled.take().expect("run once");
        tokio::spawn(Self::record(self.bots.store.clone(), settled));
        let this = Arc::new(self);
        let slots = Arc::new(Semaphore::new(PARALLEL));
        let mut closing = this.hub.closing();
        // Reread now and then, for bots changed elsewhere: on another instance, or by `confab bot`
        // beside this one (one small query every REFRESH).
        let bots = this.bots.clone();
        let mut stop = this.hub.closing();
        tokio::spawn(async move {
            let mut refresh = tokio::time::interval(REFRESH);
            loop {
                tokio::select! {
                    _ = refresh.tick() => {
                        if let Err(err) = bots.refresh().await {
                            tracing::warn!(error = %err, "rereading the bots failed");
                        }
                    }
                    () = async { let _ = stop.wait_for(|closing| *closing).await; } => return,
                }
            }
        });
        loop {
            let free = slots.available_permits();
            let claimed = if free == 0 {
                Vec::new()
            } else {
                let now = now_ms();
                // Leased for longer than an attempt can take, so a call is not made twice at once.
                let lease =
                    now + i64::try_from(this.bots.config.timeout.as_millis()).unwrap_or(0) + 30_000;
                match this.bots.store.claim_deliveries(now, lease, free).await {
                    Ok(claimed) => claimed,
                    Err(err) => {
                        tracing::error!(error = %err, "claiming webhook calls failed");
                        Vec::new()
                    }
                }
            };
            let full = !claimed.is_empty() && claimed.len() == free;
            for delivery in claimed {
                if !this.take_turn(delivery.bot) {
                    // This bot has its share in flight: the call waits a moment, uncounted.
                    let at = now_ms() + 500;
                    this.settled(delivery.id, Settlement::Released { at });
                    continue;
                }
                let permit = slots.clone().acquire_owned().await.expect("never closed");
                let this = this.clone();
                tokio::spawn(async move {
                    let bot = delivery.bot;
                    this.deliver(delivery).await;
                    this.end_turn(bot);
                    drop(permit);
                });
            }
            if full {
                continue;
            }
            tokio::select! {
                () = this.hub.callees().rung() => tokio::time::sleep(GATHER).await,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                // The guard `wait_for` gives is dropped inside, so this future stays `Send`.
                () = async { let _ = closing.wait_for(|closing| *closing).await; } => return,
            }
        }
    }

    /// Records outcomes as they come, a gathering at a time, until the sender and its calls are gone. A
    /// record that fails leaves its calls leased; the lease runs out and they are made again (at least
    /// once, with the same key).
    async fn record(
        store: Arc<dyn crate::server::store::bots::BotStore>,
        mut settled: mpsc::UnboundedReceiver<Settled>,
    ) {
        let mut batch = Vec::new();
        while settled.recv_many(&mut batch, 1024).await > 0 {
            tokio::time::sleep(GATHER).await;
            while let Ok(more) = settled.try_recv() {
                batch.push(more);
            }
            if let Err(err) = store.settle_deliveries(&batch).await {
                tracing::error!(error = %err, calls = batch.len(), "recording webhook calls failed");
            }
            batch.clear();
        }
    }

    fn settled(&self, id: Uuid, how: Settlement) {
        // Only fails once the recorder is gone, at shutdown: the lease then runs out as above.
        let _ = self.settle.send(Settled { id, how });
    }

    /// Counts a call to `bot` in flight, unless it has its share in flight already.
    fn take_turn(&self, bot: Uuid) -> bool {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let count = busy.entry(bot).or_default();
        if *count >= self.bots.config.per_bot {
            return false;
        }
        *count += 1;
        true
    }

    fn end_turn(&self, bot: Uuid) {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = busy.get_mut(&bot) {
            *count -= 1;
            if *count == 0 {
                busy.remove(&bot);
            }
        }
    }

    /// One attempt at one call, and what follows from it.
    async fn deliver(&self, delivery: Delivery) {
        let found = self.prepare(&delivery).await;
        let outcome = match found {
            Ok(Some((webhook, event, body))) => {
                let outcome = self.call(&webhook, &delivery, body).await;
                if let Outcome::Done(Some(reply)) = &outcome {
                    self.reply(&delivery, &webhook, &event, reply).await;
                }
                outcome
            }
            // Moot: the message was deleted, or the bot lost its webhook or its token.
            Ok(None) => Outcome::Done(None),
            Err(err) => Outcome::Retry(format!("the store could not be read: {err}")),
        };
        let how = match outcome {
            Outcome::Done(_) => Settlement::Done,
            Outcome::Retry(error) if delivery.attempts < MAX_RETRIES => {
                let backoff = self.bots.config.retry_base * 2u32.pow(delivery.attempts);
                let at = now_ms() + i64::try_from(backoff.as_millis()).unwrap_or(i64::MAX);
                tracing::info!(bot = %delivery.bot, attempt = delivery.attempts + 1, why = %error, "webhook call failed; retrying");
                Settlement::Retry { at, error }
            }
            Outcome::Retry(error) | Outcome::Fail(error) => {
                tracing::warn!(bot = %delivery.bot, attempts = delivery.attempts + 1, why = %error, "webhook call failed for good");
                Settlement::Failed { error }
            }
        };
        self.settled(delivery.id, how);
    }

    /// The bot's webhook, the message, and the body to send; `None` when the call is moot.
    async fn prepare(
        &self,
        delivery: &Delivery,
    ) -> Result<Option<(Webhook, ChatEvent, Vec<u8>)>, crate::server::store::StoreError> {
        let Some(webhook) = self.bots.store.webhook(delivery.bot).await? else {
            return Ok(None);
        };
        let event = self
            .hub
            .store()
            .find(&delivery.room, delivery.message)
            .await?;
        let Some(event) = event.filter(ChatEvent::is_message) else {
            return Ok(None);
        };
        let Some(seen) = self
            .rooms
            .visible(&delivery.room, Some(delivery.bot))
            .await?
        else {
            return Ok(None);
        };
        let payload = Payload {
            message: PayloadMessage {
                id: event.id,
                seq: event.seq,
                text: &event.text,
                at: event.at,
            },
            room: PayloadRoom {
                slug: &seen.room.slug,
                name: &seen.room.name,
                kind: seen.room.kind,
            },
            sender: PayloadSender {
                id: event.user_id,
                name: &event.name,
                kind: event.user_kind,
            },
            reply_url: format!(
                "{}/api/v1/rooms/{}/messages",
                self.public_url,
                crate::protocol::path_segment(&seen.room.slug)
            ),
        };
        let body = serde_json::to_vec(&payload).expect("payloads serialise");
        Ok(Some((webhook, event, body)))
    }

    async fn call(&self, webhook: &Webhook, delivery: &Delivery, body: Vec<u8>) -> Outcome {
        if let Err(why) = check_url(&webhook.url, self.bots.config.allow_private).await {
            return Outcome::Fail(why);
        }
        let t = now_ms() / 1000;
        let sent = self
            .client
            .post(&webhook.url)
            .header("content-type", "application/json")
            .header(SIGNATURE_HEADER, signature(&webhook.secret, t, &body))
            .header("Idempotency-Key", delivery.id.to_string())
            .body(body)
            .send()
            .await;
        let mut response = match sent {
            Ok(response) => response,
            Err(err) if err.is_timeout() => {
                return Outcome::Retry(format!(
                    "no answer within {} s",
                    self.bots.config.timeout.as_secs_f32()
                ))
            }
            Err(err) => return Outcome::Retry(format!("could not connect: {err}")),
        };
        let status = response.status();
        if status.is_redirection() {
            return Outcome::Fail(format!(
                "answered {status} (a redirect); webhooks do not follow redirects, so give the final URL"
            ));
        }
        if status.is_server_error() {
            return Outcome::Retry(format!("answered {status}"));
        }
        if !status.is_success() {
            return Outcome::Fail(format!("answered {status}"));
        }
        let kind = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase();
        let mut answer = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    answer.extend_from_slice(&chunk);
                    if answer.len() > MAX_ANSWER_BYTES {
                        tracing::info!(bot = %delivery.bot, "a webhook answer was too large to be a reply; ignored");
                        return Outcome::Done(None);
                    }
                }
                Ok(None) => break,
                // The call was received (the status says so); only the reply is lost.
                Err(_) => return Outcome::Done(None),
            }
        }
        if status != reqwest::StatusCode::OK {
            return Outcome::Done(None);
        }
        let reply = if kind.starts_with("text/plain") {
            String::from_utf8(answer).ok()
        } else if kind.starts_with("application/json") {
            #[derive(serde::Deserialize)]
            struct Reply {
                text: String,
            }
            serde_json::from_slice::<Reply>(&answer)
                .ok()
                .map(|r| r.text)
        } else {
            None
        };
        Outcome::Done(reply.filter(|r| !r.trim().is_empty()))
    }

    /// Posts the bot's answer in the room, once: its id comes from the call's, so a call made twice
    /// (a restart between the answer and the record) replies once.
    async fn reply(&self, delivery: &Delivery, webhook: &Webhook, event: &ChatEvent, reply: &str) {
        let text = match validate_text(reply) {
            Ok(text) => text,
            Err(err) => {
                tracing::info!(bot = %delivery.bot, error = err.message(), "a webhook reply was refused");
                return;
            }
        };
        let may_post = match self.rooms.visible(&event.room, Some(delivery.bot)).await {
            Ok(Some(seen)) => post_refusal(&event.room, seen.member, seen.room.archived).is_none(),
            Ok(None) => false,
            Err(err) => {
                tracing::error!(error = %err, "reading a room for a webhook reply failed");
                false
            }
        };
        if !may_post {
            return;
        }
        let reply = NewEvent {
            id: derived_id(&[b"reply", delivery.id.as_bytes()]),
            kind: EventKind::Message,
            name: webhook.name.clone(),
            user_id: delivery.bot,
            user_kind: UserKind::Bot,
            text,
            target: None,
            call: Vec::new(),
        };
        if let Err(err) = self.hub.publish(&event.room, reply).await {
            tracing::error!(error = %err, "posting a webhook reply failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_with_the_secret_the_body_and_in_time() {
        let body = br#"{"message":{"text":"hi"}}"#;
        let header = signature("s3cret", 1_000, body);
        assert!(header.starts_with("t=1000,v1="));
        assert!(verify("s3cret", &header, body, 1_000 + 299, 300));
        assert!(
            !verify("s3cret", &header, body, 1_000 + 301, 300),
            "replayed too late"
        );
        assert!(
            !verify("other", &header, body, 1_000, 300),
            "another secret"
        );
        assert!(
            !verify("s3cret", &header, b"{}", 1_000, 300),
            "another body"
        );
        assert!(!verify("s3cret", "t=1000", body, 1_000, 300));
        assert!(!verify("s3cret", "v1=00", body, 1_000, 300));
    }

    #[test]
    fn private_addresses_are_told_from_public_ones() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fdaa::3",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_private(private.parse().unwrap()), "{private}");
        }
        for public in ["1.1.1.1", "8.8.8.8", "2606:4700::1111"] {
            assert!(!is_private(public.parse().unwrap()), "{public}");
        }
    }

    #[tokio::test]
    async fn webhook_urls_must_be_http_and_public_unless_allowed() {
        assert!(check_url("ftp://example.com/hook", true).await.is_err());
        assert!(check_url("javascript:alert(1)", true).await.is_err());
        assert!(check_url("not a url", true).await.is_err());
        assert!(check_url("http://user:pw@example.com/", true)
            .await
            .is_err());
        let refused = check_url("http://127.0.0.1:9/hook", false)
            .await
            .unwrap_err();
        assert!(refused.contains("private"), "{refused}");
        assert!(check_url("http://[::1]:9/hook", false).await.is_err());
        assert!(check_url("http://localhost:9/hook", false).await.is_err());
        assert!(check_url("http://127.0.0.1:9/hook", true).await.is_ok());
        assert!(check_url("https://93.184.215.14/hook", false).await.is_ok());
    }
}
