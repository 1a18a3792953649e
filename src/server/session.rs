//! One WebSocket connection: history first, then live events, while reading the client's frames.
//!
//! One task per connection runs a `select!` over the socket, the room's broadcast and a ping timer. A
//! client that stops reading stalls only its own task; its broadcast receiver then lags, and it catches
//! up from the store, so it never silently misses an event.

use super::backplane::Arrival;
use super::hub::{now_ms, Frame, Hub, PublishError, Receipt, EPHEMERAL};
use super::presence::Claim;
use super::store::Appended;
use super::store::NewEvent;
use crate::protocol::{
    parse_client_frame, validate_name, validate_text, ClientFrame, ErrorCode, EventKind,
    ServerFrame, HISTORY_PAGE, MAX_FRAME_BYTES,
};
use axum::extract::ws::{close_code, CloseFrame, Message, Utf8Bytes};
use futures_util::stream::FuturesOrdered;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::{interval_at, Instant, MissedTickBehavior};
use uuid::Uuid;

/// Settings of a connection that tests may shorten.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// How often the server pings; proxies such as Fly's close sockets idle for about a minute.
    pub ping_every: Duration,
    /// How long after a user's last connection closes before others see them leave. A reload within it
    /// makes no leave and join noise.
    pub leave_grace: Duration,
    /// Sustained messages per second a connection may send.
    pub messages_per_second: NonZeroU32,
    /// Messages a connection may send in a burst above the sustained rate.
    pub burst: NonZeroU32,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            ping_every: Duration::from_secs(25),
            leave_grace: Duration::from_secs(5),
            messages_per_second: NonZeroU32::new(10).unwrap(),
            burst: NonZeroU32::new(20).unwrap(),
        }
    }
}

/// Where the client wants history to start.
#[derive(Debug, Clone, Copy)]
pub enum Start {
    /// The newest [`HISTORY_PAGE`] events.
    Recent,
    /// Every event with a greater sequence number (a resume).
    After(u64),
}

/// What became of a claim on a name.
enum Claimed {
    Joined,
    Taken,
    /// The backplane could not be asked (the database is down).
    Unavailable,
}

/// Why a connection ended early.
#[derive(Debug)]
enum End {
    Closed,
    Socket,
}

struct Session<'a, S> {
    socket: S,
    hub: &'a Hub,
    room: &'a str,
    /// The browser session (cookie) this connection belongs to; names are held per browser session.
    token: String,
    leave_grace: Duration,
    /// The name this connection holds in the room's presence, once joined.
    name: Option<String>,
    last_typing: Option<Instant>,
    /// The highest sequence number written to this socket; live frames at or below it are duplicates.
    last_seq: u64,
    limiter: DefaultDirectRateLimiter,
    /// True while `forward_batch` queues frames for one flush.
    batching: bool,
    /// Looked up once: a registry lookup per frame is measurable at 100,000 frames a second.
    frames_out: metrics::Counter,
    delivery_lag: metrics::Histogram,
    /// Frames written since the counter was last told: it is told once per write, not per frame.
    unreported: u64,
    /// Writes so far; the delivery lag is sampled on one in [`LAG_SAMPLE`].
    writes: u64,
    /// Messages handed to the room's writer and not yet acknowledged, oldest first. Reading goes on
    /// meanwhile, so a client that sends a burst (an outbox after a reconnect) gets one group commit, not
    /// one round trip per message.
    in_flight: FuturesOrdered<Receipt>,
}

/// One write in this many records its delivery lag: the metric costs a few percent of the server's CPU
/// when recorded on every write at 100,000 writes a second.
const LAG_SAMPLE: u64 = 8;

/// The most messages one connection may have in flight; the next waits for the oldest to be stored.
const MAX_IN_FLIGHT: usize = 64;

/// The most frames `forward_batch` takes beyond the first before flushing. (Measured with 1,000 clients
/// at 100 msg/s: batching halves the server's CPU, 103% → 50%, and p50 latency falls from 49 to 32 ms.)
const FORWARD_BATCH: usize = 63;

/// Runs a connection of browser session `token` to its end.
pub async fn run<S>(
    socket: S,
    hub: Hub,
    room: &str,
    token: String,
    start: Start,
    config: SessionConfig,
) where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin,
{
    let _running = hub.session_started();
    // Subscribe before reading history, so nothing stored meanwhile is missed.
    let Some(mut live) = hub.subscribe(room) else {
        return;
    };
    let quota = Quota::per_second(config.messages_per_second).allow_burst(config.burst);
    let mut session = Session {
        socket,
        hub: &hub,
        room,
        token,
        leave_grace: config.leave_grace,
        name: None,
        last_typing: None,
        last_seq: 0,
        limiter: RateLimiter::direct(quota),
        batching: false,
        frames_out: metrics::counter!(super::metrics::FRAMES_OUT),
        delivery_lag: metrics::histogram!(super::metrics::DELIVERY_SECONDS),
        unreported: 0,
        writes: 0,
        in_flight: FuturesOrdered::new(),
    };
    if session.replay(start).await.is_err() || session.resume_identity().await.is_err() {
        session.release_name(false);
        return;
    }

    let mut closing = hub.closing();
    // Made once, not per loop turn: each new wait would register with the one watch channel every
    // session shares, a lock taken once per frame per connection.
    let shutdown = shutdown_begun(&mut closing);
    tokio::pin!(shutdown);
    metrics::gauge!(super::metrics::CONNECTED).increment(1);
    let mut ping = interval_at(Instant::now() + config.ping_every, config.ping_every);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // A peer that answered none of the last two pings is gone (a laptop lid closed, a dropped network).
    let mut heard_since_ping = true;
    let mut unanswered = 0u8;

    let end = loop {
        tokio::select! {
            incoming = session.socket.next() => {
                heard_since_ping = true;
                match incoming {
                    Some(Ok(message)) => {
                        if let Err(end) = session.on_message(message).await {
                            break end;
                        }
                    }
                    Some(Err(err)) => {
                        session.on_read_error(err).await;
                        break End::Socket;
                    }
                    None => break End::Closed,
                }
            }
            Some((id, stored)) = session.in_flight.next(), if !session.in_flight.is_empty() => {
                if session.on_stored(id, stored).await.is_err() {
                    break End::Socket;
                }
            }
            frame = live.recv() => {
                let sent = match frame {
                    Ok(frame) => session.forward_batch(frame, &mut live).await,
                    Err(RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "slow connection catches up from the store");
                        session.catch_up().await
                    }
                    Err(RecvError::Closed) => break End::Closed,
                };
                if sent.is_err() {
                    break End::Socket;
                }
            }
            _ = &mut shutdown => {
                // Tell the client this is a restart, not a failure: it reconnects at once and resumes.
                let close = CloseFrame {
                    code: close_code::RESTART,
                    reason: Utf8Bytes::from_static("server restarting"),
                };
                let _ = session.socket.send(Message::Close(Some(close))).await;
                break End::Closed;
            }
            _ = ping.tick() => {
                unanswered = if heard_since_ping { 0 } else { unanswered + 1 };
                heard_since_ping = false;
                if unanswered >= 2 {
                    tracing::debug!("peer stopped answering pings");
                    break End::Socket;
                }
                if session.socket.send(Message::Ping(Default::default())).await.is_err() {
                    break End::Socket;
                }
            }
        }
    };
    metrics::gauge!(super::metrics::CONNECTED).decrement(1);
    tracing::debug!(?end, name = ?session.name, "connection ended");
    session.release_name(false);
}

/// Resolves once the server is shutting down. (A helper, so the watch guard is dropped inside it and
/// never held across the session's awaits.)
async fn shutdown_begun(closing: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = closing.wait_for(|closing| *closing).await;
}

impl<S> Session<'_, S>
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin,
{
    async fn replay(&mut self, start: Start) -> Result<(), End> {
        let store = self.hub.store();
        let history = match start {
            Start::Recent => store.before(self.room, u64::MAX, HISTORY_PAGE).await,
            Start::After(after) => {
                self.last_seq = after;
                store.since(self.room, after, usize::MAX).await
            }
        };
        match history {
            Ok(events) => {
                for event in events {
                    self.last_seq = self.last_seq.max(event.seq);
                    self.send_text(ServerFrame::encode_event(&event).into())
                        .await?;
                }
                Ok(())
            }
            Err(err) => {
                tracing::error!(error = %err, "reading history failed");
                Err(self.close_unavailable().await)
            }
        }
    }

    /// After the history: who is here, and, when this browser joined before, the same name again.
    async fn resume_identity(&mut self) -> Result<(), End> {
        let remembered = match self.hub.store().session_name(&self.token).await {
            Ok(name) => name,
            Err(err) => {
                tracing::error!(error = %err, "reading the session failed");
                None
            }
        };
        if let Some(name) = remembered {
            match self.claim(&name).await {
                Claimed::Joined => self.send_frame(&ServerFrame::Joined { name }).await?,
                Claimed::Taken => {
                    // Someone else took the name while this browser was away: ask for another.
                    self.forget_session_name().await;
                    self.send_error(ErrorCode::NameTaken, "That name is taken", None)
                        .await?;
                }
                Claimed::Unavailable => return Err(self.close_unavailable().await),
            }
        }
        let here = self.presence().online();
        let online = match self.hub.backplane().online(self.room, here.clone()).await {
            Ok(online) => online,
            Err(err) => {
                tracing::warn!(error = %err, "reading who is online elsewhere failed");
                here
            }
        };
        self.send_frame(&ServerFrame::Presence { online }).await
    }

    fn presence(&self) -> &super::presence::Presence {
        self.hub
            .presence(self.room)
            .expect("sessions run in rooms that exist")
    }

    /// Takes `name` for this connection, announcing it if nobody (on any instance) had it.
    async fn claim(&mut self, name: &str) -> Claimed {
        // Bind first: a borrow of `self` must not live across the await below (the socket is not Sync).
        let claim = self.presence().claim(name, &self.token);
        let announce = match claim {
            Claim::Taken => return Claimed::Taken,
            Claim::AlreadyHere => false,
            Claim::Arrived => {
                let arrival = self
                    .hub
                    .backplane()
                    .arrive(self.room, name, &self.token)
                    .await;
                match arrival {
                    Ok(Arrival::New) => true,
                    Ok(Arrival::Present) => false,
                    Ok(Arrival::Taken) | Err(_) => {
                        if let Err(err) = &arrival {
                            tracing::error!(error = %err, "claiming a name failed");
                        }
                        // Undo the local claim, silently: nobody was told of it.
                        let presence = self.presence();
                        if let Some(ticket) = presence.release(name, &self.token) {
                            presence.expire(name, ticket);
                        }
                        return match arrival {
                            Ok(_) => Claimed::Taken,
                            Err(_) => Claimed::Unavailable,
                        };
                    }
                }
            }
        };
        if announce {
            let event = NewEvent {
                id: Uuid::new_v4(),
                kind: EventKind::Join,
                name: name.to_owned(),
                text: String::new(),
            };
            if let Err(err) = self.hub.publish(self.room, event).await {
                tracing::error!(error = %err, "announcing a join failed");
            }
        }
        self.name = Some(name.to_owned());
        Claimed::Joined
    }

    /// Gives up this connection's hold on its name. The leave line follows after the grace period, or at
    /// once when the user left on purpose, and only if no connection of theirs came back meanwhile.
    fn release_name(&mut self, at_once: bool) {
        let Some(name) = self.name.take() else { return };
        let Some(ticket) = self.presence().release(&name, &self.token) else {
            return;
        };
        let hub = self.hub.clone();
        let room = self.room.to_owned();
        let session = self.token.clone();
        let grace = if at_once {
            Duration::ZERO
        } else {
            self.leave_grace
        };
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            hub.depart(&room, name, &session, ticket).await;
        });
    }

    async fn forget_session_name(&mut self) {
        if let Err(err) = self
            .hub
            .store()
            .set_session_name(&self.token, None, now_ms())
            .await
        {
            tracing::error!(error = %err, "clearing the session's name failed");
        }
    }

    /// Forwards `first` and whatever else is already waiting on the broadcast, in one write to the socket
    /// where it fits: under load that saves a system call per frame, and each call wakes the receiver.
    async fn forward_batch(
        &mut self,
        first: Frame,
        live: &mut tokio::sync::broadcast::Receiver<Frame>,
    ) -> Result<(), End> {
        self.batching = true;
        let broadcast_at = first.at;
        let mut result = self.forward(first).await;
        for _ in 0..FORWARD_BATCH {
            if result.is_err() {
                break;
            }
            match live.try_recv() {
                Ok(frame) => result = self.forward(frame).await,
                // Lagged: the next recv reports it and the session catches up from the store.
                Err(_) => break,
            }
        }
        self.batching = false;
        result?;
        self.socket.flush().await.map_err(|_| End::Socket)?;
        self.frames_out
            .increment(std::mem::take(&mut self.unreported));
        self.writes += 1;
        if self.writes % LAG_SAMPLE == 1 {
            // The oldest frame of the write: how long the broadcast took to reach this socket.
            self.delivery_lag
                .record(broadcast_at.elapsed().as_secs_f64());
        }
        Ok(())
    }

    async fn forward(&mut self, frame: Frame) -> Result<(), End> {
        if frame.seq == EPHEMERAL {
            return self.send_text(frame.json).await;
        }
        if frame.seq <= self.last_seq {
            return Ok(());
        }
        if frame.seq > self.last_seq + 1 && self.last_seq > 0 {
            // Cannot happen with one writer per room, but if it did, the store fills the gap.
            return self.catch_up().await;
        }
        self.last_seq = frame.seq;
        self.send_text(frame.json).await
    }

    /// Sends everything after `last_seq` from the store; later live frames at or below it are skipped.
    async fn catch_up(&mut self) -> Result<(), End> {
        loop {
            let events = match self.hub.store().since(self.room, self.last_seq, 500).await {
                Ok(events) => events,
                Err(err) => {
                    tracing::error!(error = %err, "catch-up read failed; closing so the client resumes");
                    return Err(End::Socket);
                }
            };
            if events.is_empty() {
                return Ok(());
            }
            for event in events {
                self.last_seq = event.seq;
                self.send_text(ServerFrame::encode_event(&event).into())
                    .await?;
            }
        }
    }

    async fn on_message(&mut self, message: Message) -> Result<(), End> {
        match message {
            Message::Text(text) => self.on_text(&text).await,
            Message::Binary(_) => {
                self.send_error(
                    ErrorCode::BinaryFrame,
                    "Binary frames are not supported; send JSON text frames.",
                    None,
                )
                .await
            }
            Message::Close(_) => Err(End::Closed),
            // Tungstenite answers pings itself; a pong needs nothing more than having been heard.
            Message::Ping(_) | Message::Pong(_) => Ok(()),
        }
    }

    async fn on_text(&mut self, text: &str) -> Result<(), End> {
        let frame = match parse_client_frame(text) {
            Ok(frame) => frame,
            Err(err) => return self.send_error(err.code, &err.message, None).await,
        };
        match frame {
            ClientFrame::Join { name } => self.on_join(&name).await,
            ClientFrame::Send { id, text } => self.on_send(id, &text).await,
            ClientFrame::Typing => {
                self.on_typing().await;
                Ok(())
            }
            ClientFrame::History { before } => self.on_history(before).await,
            ClientFrame::Leave => self.on_leave().await,
        }
    }

    async fn on_typing(&mut self) {
        let Some(name) = self.name.clone() else {
            return;
        };
        // Browsers throttle too; this keeps a misbehaving client from turning typing into a flood.
        if self
            .last_typing
            .is_some_and(|at| at.elapsed() < Duration::from_millis(900))
        {
            return;
        }
        self.last_typing = Some(Instant::now());
        self.hub.backplane().typing(self.room, &name).await;
        self.hub
            .broadcast_ephemeral(self.room, &ServerFrame::Typing { name });
    }

    async fn on_history(&mut self, before: u64) -> Result<(), End> {
        match self
            .hub
            .store()
            .before(self.room, before, HISTORY_PAGE)
            .await
        {
            Ok(events) => {
                let complete = crate::protocol::reaches_first_event(&events);
                self.send_frame(&ServerFrame::History { events, complete })
                    .await
            }
            Err(err) => {
                tracing::error!(error = %err, "reading older history failed");
                self.send_error(
                    ErrorCode::Unavailable,
                    "Older messages are unavailable right now.",
                    None,
                )
                .await
            }
        }
    }

    async fn on_leave(&mut self) -> Result<(), End> {
        self.release_name(true);
        self.forget_session_name().await;
        self.send_frame(&ServerFrame::Left).await
    }

    async fn on_join(&mut self, raw: &str) -> Result<(), End> {
        let name = match validate_name(raw) {
            Ok(name) => name,
            Err(err) => return self.send_error(err.code(), err.message(), None).await,
        };
        match &self.name {
            // A repeated join (a client that rejoins after reconnecting) is answered, not announced again.
            Some(current) if *current == name => {
                return self.send_frame(&ServerFrame::Joined { name }).await
            }
            Some(current) => {
                let message = format!(
                    "This connection already joined as {current}; leave first to change name."
                );
                return self
                    .send_error(ErrorCode::AlreadyJoined, &message, None)
                    .await;
            }
            None => {}
        }
        match self.claim(&name).await {
            Claimed::Joined => {}
            Claimed::Taken => {
                return self
                    .send_error(ErrorCode::NameTaken, "That name is taken", None)
                    .await
            }
            Claimed::Unavailable => return self.send_unavailable(None).await,
        }
        if let Err(err) = self
            .hub
            .store()
            .set_session_name(&self.token, Some(&name), now_ms())
            .await
        {
            tracing::error!(error = %err, "remembering the session's name failed");
        }
        tracing::info!(%name, "joined");
        self.send_frame(&ServerFrame::Joined { name }).await
    }

    async fn on_send(&mut self, id: Uuid, raw: &str) -> Result<(), End> {
        let Some(name) = self.name.clone() else {
            return self
                .send_error(
                    ErrorCode::NotJoined,
                    "Join the chat with a name before sending.",
                    Some(id),
                )
                .await;
        };
        let text = match validate_text(raw) {
            Ok(text) => text,
            Err(err) => return self.send_error(err.code(), err.message(), Some(id)).await,
        };
        if self.limiter.check().is_err() {
            let message = "You are sending messages too fast; this one was not sent. Wait a moment and try again.";
            return self
                .send_error(ErrorCode::RateLimited, message, Some(id))
                .await;
        }
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            if let Some((id, stored)) = self.in_flight.next().await {
                self.on_stored(id, stored).await?;
            }
        }
        let event = NewEvent {
            id,
            kind: EventKind::Message,
            name,
            text,
        };
        match self.hub.submit(self.room, event).await {
            Ok(receipt) => {
                self.in_flight.push_back(receipt);
                Ok(())
            }
            Err(err) => self.on_publish_error(err, Some(id)).await,
        }
    }

    /// A message this connection sent was stored (or not): acknowledge it.
    async fn on_stored(
        &mut self,
        id: Uuid,
        stored: Result<Appended, PublishError>,
    ) -> Result<(), End> {
        match stored {
            Ok(appended) => {
                if appended.fresh {
                    metrics::counter!(super::metrics::MESSAGES_IN).increment(1);
                }
                self.send_frame(&ServerFrame::Ack {
                    id,
                    seq: appended.event.seq,
                })
                .await
            }
            Err(err) => self.on_publish_error(err, Some(id)).await,
        }
    }

    async fn on_publish_error(&mut self, err: PublishError, id: Option<Uuid>) -> Result<(), End> {
        tracing::error!(error = %err, "publish failed");
        self.send_unavailable(id).await
    }

    /// Storage is down while the connection starts: say so and close with "try again later"; the client
    /// reconnects after its backoff.
    async fn close_unavailable(&mut self) -> End {
        let _ = self.send_unavailable(None).await;
        let close = CloseFrame {
            code: close_code::AGAIN,
            reason: Utf8Bytes::from_static("temporarily unavailable"),
        };
        let _ = self.socket.send(Message::Close(Some(close))).await;
        End::Closed
    }

    /// The store or the database behind it cannot be reached. Clients keep what they sent in their
    /// outbox and try again after a pause.
    async fn send_unavailable(&mut self, id: Option<Uuid>) -> Result<(), End> {
        self.send_error(
            ErrorCode::Unavailable,
            "The chat is temporarily unavailable. Your messages will be sent when it is back.",
            id,
        )
        .await
    }

    async fn on_read_error(&mut self, err: axum::Error) {
        // Tungstenite stops reading a frame over the limit; say why before closing, so the client knows.
        let too_large =
            err.to_string().contains("Message too long") || err.to_string().contains("Space limit");
        if too_large {
            let message =
                format!("Frames may be at most {MAX_FRAME_BYTES} bytes; closing the connection.");
            let _ = self
                .send_error(ErrorCode::FrameTooLarge, &message, None)
                .await;
            let close = CloseFrame {
                code: close_code::SIZE,
                reason: Utf8Bytes::from_static("frame too large"),
            };
            let _ = self.socket.send(Message::Close(Some(close))).await;
        } else {
            tracing::debug!(error = %err, "socket read failed");
        }
    }

    async fn send_error(
        &mut self,
        code: ErrorCode,
        message: &str,
        id: Option<Uuid>,
    ) -> Result<(), End> {
        self.send_frame(&ServerFrame::Error {
            code,
            message: message.to_owned(),
            id,
        })
        .await
    }

    async fn send_frame(&mut self, frame: &ServerFrame) -> Result<(), End> {
        self.send_text(frame.encode().into()).await
    }

    async fn send_text(&mut self, text: Utf8Bytes) -> Result<(), End> {
        let message = Message::Text(text);
        let sent = if self.batching {
            // Buffered (up to the socket's write buffer); `forward_batch` flushes and counts.
            self.unreported += 1;
            self.socket.feed(message).await
        } else {
            self.frames_out.increment(1);
            self.socket.send(message).await
        };
        sent.map_err(|_| End::Socket)
    }
}
