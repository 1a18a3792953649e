//! One WebSocket connection: who it is, its rooms, the history of the room it shows, then live events of
//! all its rooms, while reading the client's frames. Each command a client sends has a file of its own.
//!
//! Each connection has two tasks. The session's runs a `select!` over the socket's reading side, its
//! messages in flight and its rarer wake-ups (a ping timer, signals, the shutdown, word from its queue;
//! see [`Wakes`]). Its writer task ([`crate::server::writer`]) writes the connection's queue: the rooms'
//! broadcasts, and the session's own frames, which go first. A client that stops reading stalls only
//! its writer; its queue then fills, and it catches up from the store, so it never silently misses an
//! event.

mod auth;
mod create_room;
mod delete;
mod dm;
mod history;
mod join;
mod join_room;
mod leave;
pub mod limits;
mod members;
mod read;
mod rooms;

pub use join::NAME_OWNED;
mod send;
mod typing;
mod update_room;

use super::backplane::SessionSignal;
use super::hub::{Framed, Hub, Kind, Mailbox, PublishError, Receipt, SessionWatch};
use super::presence::Seat;
use super::socket::{frame_wire, Connection, Socket, Transport};
use super::store::{IdentityStore, SessionRecord};
use super::woken::Woken;
use crate::protocol::{
    parse_client_frame, ClientFrame, ErrorCode, Identity, ServerFrame, MAX_FRAME_BYTES,
};
use axum::body::Bytes;
use axum::extract::ws::{close_code, CloseFrame, Message, Utf8Bytes};
use futures_util::stream::{self, AbortHandle, BoxStream, FuturesOrdered, SelectAll};
use futures_util::{SinkExt, StreamExt};
use limits::MessageLimits;
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::{interval_at, Instant, MissedTickBehavior};
use uuid::Uuid;

/// The close code a connection gets when its browser session ended (signed out, or ended from another
/// device, or banned): the client forgets who it was and shows the name dialog.
pub const CLOSE_SIGNED_OUT: u16 = 4001;
/// The close code after a sign-in token that has expired: get a fresh one and connect again.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4002;
/// The close code after a sign-in token that is not valid.
pub const CLOSE_TOKEN_INVALID: u16 = 4003;
/// The close code for a stranger at an invite-only chat (`CONFAB_ACCESS=invite`).
pub const CLOSE_INVITE_REQUIRED: u16 = 4004;
/// The sentence for a stranger at an invite-only chat.
pub const INVITE_REQUIRED: &str =
    "This chat is invite-only: open your invite link to join, or sign in if you have kept a name.";
/// The sentence for a guest posting where only members may.
pub const MEMBERS_ONLY: &str =
    "Only members can post here: keep your name (in the people list) or sign in.";

/// Settings of a connection that tests may shorten.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// How often the server pings; proxies such as Fly's close sockets idle for about a minute.
    pub ping_every: Duration,
    /// How long after a user's last connection closes before others see them leave. A reload within it
    /// makes no leave and join noise.
    pub leave_grace: Duration,
    /// Sustained messages per second a user may send, over all their connections.
    pub messages_per_second: NonZeroU32,
    /// Messages a user may send in a burst above the sustained rate.
    pub burst: NonZeroU32,
    /// Sustained messages per second from one client address, over all its users.
    pub address_per_second: NonZeroU32,
    /// The burst allowed to one client address.
    pub address_burst: NonZeroU32,
    /// Who may come in (`CONFAB_ACCESS`).
    pub access: crate::protocol::Access,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            ping_every: Duration::from_secs(25),
            leave_grace: Duration::from_secs(5),
            messages_per_second: NonZeroU32::new(10).unwrap(),
            burst: NonZeroU32::new(20).unwrap(),
            address_per_second: NonZeroU32::new(50).unwrap(),
            address_burst: NonZeroU32::new(100).unwrap(),
            access: crate::protocol::Access::Open,
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

/// What every connection shares: the hub, who people are, the rooms, and the rate limits.
#[derive(Clone)]
pub struct Context {
    pub hub: Hub,
    pub identity: Arc<dyn IdentityStore>,
    /// Where a join's new guest is stored, together with the others joining at the same time.
    pub arrivals: crate::server::arrivals::Arrivals,
    pub rooms: crate::server::rooms::Directory,
    /// For sign-in tokens.
    pub accounts: crate::server::identity::Accounts,
    pub limits: Arc<MessageLimits>,
    /// For bot tokens.
    pub bots: crate::server::bots::Bots,
    pub config: SessionConfig,
}

impl Context {
    pub fn new(
        hub: Hub,
        accounts: crate::server::identity::Accounts,
        rooms: crate::server::rooms::Directory,
        bots: crate::server::bots::Bots,
        config: SessionConfig,
    ) -> Self {
        let arrivals =
            crate::server::arrivals::Arrivals::start(accounts.store.clone(), rooms.clone());
        Self {
            limits: Arc::new(MessageLimits::new(&config)),
            arrivals,
            hub,
            rooms,
            bots,
            identity: accounts.store.clone(),
            accounts,
            config,
        }
    }
}

/// Who is connecting: their browser session (none for clients without the cookie, such as bots and load
/// tools, whose guests then live as long as the connection) and where from.
#[derive(Debug, Clone)]
pub struct Visitor {
    pub session: Option<SessionRecord>,
    pub ip: IpAddr,
    /// The session store could not be read: the connection says "unavailable" and closes, and the
    /// client comes back after its backoff.
    pub unknown: bool,
    /// The user an `Authorization: Bearer` token speaks for, or why it was refused.
    pub token:
        Option<Result<crate::server::store::User, crate::server::identity::token::TokenError>>,
    /// A bot's token, when that is what `token` came from: checked again every
    /// [`crate::server::bots::webhook::REFRESH`], so a revocation or rotation made where this instance
    /// cannot hear it (`confab bot` beside a server on SQLite) still closes the socket.
    pub bot_token: Option<String>,
}

/// The connection's user, once joined, and the seat they hold in the room.
#[derive(Debug, Clone)]
struct Me {
    identity: Identity,
    seat: Seat,
}

/// Why a connection ended early.
#[derive(Debug)]
enum End {
    Closed,
    Socket,
}

/// A room this connection hears. How far it has been written is its writer's to know (see
/// [`crate::server::writer`]).
#[derive(Debug, Clone, Copy)]
struct Heard {
    /// The user is a member (and so may post); false for a public room only being read.
    member: bool,
    archived: bool,
    /// The writer was told where the room starts (by a replay, or its head): until then nothing of the
    /// room is written.
    anchored: bool,
    /// How far the user has read the room, as this connection last told its client.
    read: u64,
    /// A hash of the room's name, topic and archived flag as last told, to tell when they change.
    shown: u64,
    /// What of the room notifies the user, as last told.
    notify: crate::protocol::Notify,
}

struct Session<'a, S> {
    socket: S,
    ctx: &'a Context,
    hub: &'a Hub,
    /// Where every room this connection hears delivers its frames, and where the session's own go, for
    /// its writer.
    mailbox: Arc<Mailbox>,
    /// The rooms it hears, by slug (the same `Arc` the frames carry).
    rooms: HashMap<Arc<str>, Heard>,
    /// The browser session (cookie) this connection belongs to, if any.
    browser: Option<Uuid>,
    ip: IpAddr,
    /// Who this connection speaks for, once joined.
    me: Option<Me>,
    /// Ends the stream in `wakes` of the signals (a ban, a promotion) for the user `me` is, wherever
    /// they come from; see [`Session::watch_user`].
    user_watch: Option<AbortHandle>,
    /// Everything else that may wake the connection; see [`Wakes`].
    wakes: Wakes,
    last_typing: Option<Instant>,
    /// After a message was refused for its rate, later ones are refused too until it comes again (or
    /// the hold lapses), so nothing overtakes it.
    hold: Option<limits::Hold>,
    /// Messages handed to the room's writer and not yet acknowledged, oldest first. Reading goes on
    /// meanwhile, so a client that sends a burst (an outbox after a reconnect) gets one group commit, not
    /// one round trip per message.
    in_flight: FuturesOrdered<Receipt>,
}

/// The most messages one connection may have in flight; the next waits for the oldest to be stored.
const MAX_IN_FLIGHT: usize = 64;

/// Runs one connection of `visitor` to its end; it shows room `shown` first, from `start`.
pub async fn run(conn: Connection, ctx: Context, shown: &str, visitor: Visitor, start: Start) {
    let hub = ctx.hub.clone();
    let _running = hub.session_started();
    let (mailbox, deliveries) = hub.mailbox();
    tokio::spawn(super::writer::run(
        conn.write,
        deliveries,
        mailbox.clone(),
        hub.clone(),
    ));
    // However the session ends, its writer writes what it queued, then ends.
    let _finish = Finish(mailbox.clone());
    let socket = Socket::new(conn.read, mailbox.clone(), conn.config).await;
    // Subscribe to the browser session's signals before reading who it is, so a sign-out meanwhile is
    // not missed.
    let signals = visitor
        .session
        .as_ref()
        .map(|session| hub.watch_session(session.id));
    let config = ctx.config.clone();
    let mut session = Session {
        socket,
        ctx: &ctx,
        hub: &hub,
        mailbox,
        rooms: HashMap::new(),
        browser: visitor.session.as_ref().map(|s| s.id),
        ip: visitor.ip,
        me: None,
        user_watch: None,
        wakes: Woken::new(SelectAll::new()),
        last_typing: None,
        hold: None,
        in_flight: FuturesOrdered::new(),
    };
    if visitor.unknown {
        session.close_unavailable().await;
        return;
    }
    // An invite-only chat shows nothing to a stranger: not its history, not who is here.
    let known = visitor.token.is_some()
        || visitor
            .session
            .as_ref()
            .is_some_and(|s| s.admitted || s.user.is_some());
    if ctx.config.access == crate::protocol::Access::Invite && !known {
        let _ = session
            .send_error(ErrorCode::InviteRequired, INVITE_REQUIRED, None)
            .await;
        let close = CloseFrame {
            code: CLOSE_INVITE_REQUIRED,
            reason: Utf8Bytes::from_static("invite required"),
        };
        let _ = session.socket.send(Message::Close(Some(close))).await;
        return;
    }
    let who = match visitor.token {
        Some(Ok(user)) => Some((user, crate::protocol::Via::Token)),
        Some(Err(err)) => {
            session.refuse_token(&err).await;
            return;
        }
        None => visitor.session.and_then(|s| {
            let via = s.via;
            s.user.map(|user| (user, via))
        }),
    };
    // Rooms are subscribed before their history or head is read, so nothing stored meanwhile is missed.
    // `general`'s history comes first, then who this is and who is here (the order clients from before
    // rooms expect), then the user's rooms, then the history of another room the tab shows.
    session.hear_general();
    let general_first = shown == crate::protocol::GENERAL_ROOM;
    // The steps below, and every command's handler in the loop, are boxed while they run: inlined, the
    // largest of them would set the size every connection's task keeps for its whole life.
    let ready = if general_first {
        Box::pin(session.open(shown, start, false)).await
    } else {
        Ok(())
    };
    let ready = match ready {
        Ok(()) => Box::pin(session.resume_identity(who)).await,
        Err(end) => Err(end),
    };
    let ready = match ready {
        Ok(()) => Box::pin(session.sync_rooms(true)).await,
        Err(end) => Err(end),
    };
    let ready = match ready {
        Ok(()) if !general_first => Box::pin(session.open(shown, start, false)).await,
        other => other,
    };
    if ready.is_err() {
        session.release_seat(false);
        session.unsubscribe_all();
        return;
    }
    // Broadcasts follow what the connection starts with, as the protocol promises.
    let _ = session
        .mailbox
        .push_own(Framed::unroomed(Kind::Live, 0, Bytes::new()));

    // Only a bot's connection rechecks its token.
    let bot_token = visitor.bot_token.clone();
    if bot_token.is_some() {
        session.add_wake(every(crate::server::bots::webhook::REFRESH, Wake::Recheck));
    }
    session.add_wake(every(config.ping_every, Wake::Ping));
    let closing = hub.closing();
    session.add_wake(Box::pin(stream::once(async move {
        shutdown_begun(closing).await;
        Wake::Shutdown
    })));
    if let Some(watch) = signals {
        session.add_wake(Box::pin(signal_stream(watch)));
    }
    let told = session.mailbox.clone();
    session.add_wake(Box::pin(stream::unfold(told, |told| async move {
        told.told().await;
        Some((Wake::Told, told))
    })));
    metrics::gauge!(super::metrics::CONNECTED).increment(1);
    // A peer that answered none of the last two pings is gone (a laptop lid closed, a dropped network).
    let mut heard_since_ping = true;
    let mut unanswered = 0u8;

    let end = loop {
        tokio::select! {
            incoming = session.socket.next() => {
                heard_since_ping = true;
                match incoming {
                    Some(Ok(message)) => {
                        if let Err(end) = Box::pin(session.on_message(message)).await {
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
                if Box::pin(session.on_stored(id, stored)).await.is_err() {
                    break End::Socket;
                }
            }
            // The ping timer, the user's signals (a ban, a promotion), the browser session's (a sign-out,
            // a change), the server's shutdown, word from the queue (a room taken away, the writer gone).
            Some(wake) = session.wakes.next() => match wake {
                Wake::Told => {
                    if let Err(end) = Box::pin(session.on_told()).await {
                        break end;
                    }
                }
                Wake::Signal(signal) => {
                    if let Err(end) = Box::pin(session.on_signal(signal)).await {
                        break end;
                    }
                }
                Wake::Recheck => {
                    let token = bot_token.as_deref().unwrap_or_default();
                    match ctx.bots.authenticate(token).await {
                        Ok(Some(user)) if session.user_id() == Some(user.id) => {}
                        Ok(_) => {
                            tracing::info!("a bot's token was revoked or rotated; closing its socket");
                            session.signed_out().await;
                            break End::Closed;
                        }
                        // The store is down: the token is checked again next time.
                        Err(err) => tracing::warn!(error = %err, "rechecking a bot token failed"),
                    }
                }
                Wake::Shutdown => {
                    // Tell the client this is a restart, not a failure: it reconnects at once and
                    // resumes.
                    let close = CloseFrame {
                        code: close_code::RESTART,
                        reason: Utf8Bytes::from_static("server restarting"),
                    };
                    let _ = session.socket.send(Message::Close(Some(close))).await;
                    break End::Closed;
                }
                Wake::Ping => {
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
            },
        }
    };
    metrics::gauge!(super::metrics::CONNECTED).decrement(1);
    tracing::debug!(?end, name = ?session.me.as_ref().map(|me| &me.seat.name), "connection ended");
    session.release_seat(false);
    session.unsubscribe_all();
}

/// What wakes a connection besides its socket, its queue and its messages being stored: each of them
/// seldom.
#[derive(Debug, Clone, Copy)]
enum Wake {
    /// A signal for the connection's user or browser session.
    Signal(SessionSignal),
    /// Time to ping the client.
    Ping,
    /// Time to check a bot's token again.
    Recheck,
    /// The server is shutting down.
    Shutdown,
    /// The queue has word for the session: a room was taken away, or the writer ended.
    Told,
}

/// Tells the connection's writer, when dropped, that the session has ended: it writes what is queued,
/// then ends.
struct Finish(Arc<Mailbox>);

impl Drop for Finish {
    fn drop(&mut self) {
        self.0.finish();
    }
}

/// The connection's [`Wake`] sources: one `select!` branch, polled only when one of them woke the task
/// ([`Woken`]), and then only that one (`SelectAll`). As branches of their own they were all polled
/// again on every wake-up, that is on every delivery, and the shutdown's wait took a lock that all the
/// connections share: a contended lock per frame per connection.
type Wakes = Woken<SelectAll<BoxStream<'static, Wake>>>;

/// `wake` every `period`, the first after one period; a late tick is delayed, not made up for.
fn every(period: Duration, wake: Wake) -> BoxStream<'static, Wake> {
    let mut timer = interval_at(Instant::now() + period, period);
    timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    Box::pin(stream::unfold(timer, move |mut timer| async move {
        timer.tick().await;
        Some((wake, timer))
    }))
}

/// The signals of `watch`, as long as it is kept. A lagged receiver missed signals it can read again
/// from the store, so it is told "changed".
fn signal_stream(watch: SessionWatch) -> impl futures_util::Stream<Item = Wake> + Send + 'static {
    stream::unfold(watch, |mut watch| async move {
        let signal = match watch.receiver.recv().await {
            Ok(signal) => signal,
            Err(RecvError::Lagged(_)) => SessionSignal::Changed,
            Err(RecvError::Closed) => return None,
        };
        Some((Wake::Signal(signal), watch))
    })
}

/// Resolves once the server is shutting down.
async fn shutdown_begun(mut closing: tokio::sync::watch::Receiver<bool>) {
    let _ = closing.wait_for(|closing| *closing).await;
}

impl<S> Session<'_, S>
where
    S: Transport,
{
    /// Adds `wake` to what wakes the connection.
    fn add_wake(&mut self, wake: BoxStream<'static, Wake>) {
        self.wakes.get_mut().push(wake);
        // A stream pushed is polled at once, and may have woken no one yet.
        self.wakes.stir();
    }

    /// Hears the signals for user `id` from now on, and no longer those of the user heard before.
    fn watch_user(&mut self, id: Uuid) {
        let (signals, handle) = stream::abortable(signal_stream(self.hub.watch_session(id)));
        if let Some(old) = self.user_watch.replace(handle) {
            // Its stream ends (and lets go of its receiver) the next time `wakes` is polled.
            old.abort();
        }
        self.add_wake(Box::pin(signals));
    }

    fn presence(&self) -> &super::presence::Presence {
        self.hub.presence()
    }

    /// Whom the connection speaks for, if anyone.
    fn user_id(&self) -> Option<Uuid> {
        self.me.as_ref().map(|me| me.identity.user_id)
    }

    /// A signal for this connection's user or browser session.
    async fn on_signal(&mut self, signal: SessionSignal) -> Result<(), End> {
        match signal {
            SessionSignal::Ended => {
                self.signed_out().await;
                Err(End::Closed)
            }
            SessionSignal::Changed => {
                self.reload_identity().await?;
                self.sync_rooms(false).await
            }
            SessionSignal::Rooms => self.sync_rooms(false).await,
            SessionSignal::Read => self.reread().await,
        }
    }

    /// The browser session ended: say so with a close the client knows, and hold the seat no longer.
    async fn signed_out(&mut self) {
        self.release_seat(true);
        let close = CloseFrame {
            code: CLOSE_SIGNED_OUT,
            reason: Utf8Bytes::from_static("signed out"),
        };
        let _ = self.socket.send(Message::Close(Some(close))).await;
    }

    /// Word from the queue: rooms the user was removed from are dropped, and the client is told; a
    /// writer that ended (its socket failed) ends the session.
    async fn on_told(&mut self) -> Result<(), End> {
        if self.mailbox.writer_ended() {
            return Err(End::Socket);
        }
        for room in self.mailbox.take_gone() {
            if self.rooms.remove(&room).is_some() {
                self.tell_writer(Kind::Forget, room.clone(), 0);
                self.send_frame(&ServerFrame::RoomGone {
                    room: room.to_string(),
                })
                .await?;
            }
        }
        Ok(())
    }

    /// Steers the writer's cursor of `room` (see [`crate::server::writer`]), after everything queued
    /// so far.
    fn tell_writer(&self, kind: Kind, room: Arc<str>, seq: u64) {
        // Only frames are refused to a client that stopped reading.
        let _ = self
            .mailbox
            .push_own(Framed::own(kind, room, seq, Bytes::new()));
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
            ClientFrame::Send { room, id, text } => self.on_send(&room, id, &text).await,
            ClientFrame::Typing { room } => self.on_typing(&room).await,
            ClientFrame::History { room, before } => self.on_history(&room, before).await,
            ClientFrame::Open { room, after } => {
                self.open(&room, after.map_or(Start::Recent, Start::After), true)
                    .await
            }
            ClientFrame::Leave => self.on_leave().await,
            ClientFrame::Delete { room, id } => self.on_delete(&room, id).await,
            ClientFrame::Auth { token } => self.on_auth(&token).await,
            ClientFrame::CreateRoom {
                name,
                topic,
                private,
            } => self.on_create_room(&name, &topic, private).await,
            ClientFrame::UpdateRoom {
                room,
                name,
                topic,
                archived,
            } => self.on_update_room(&room, name, topic, archived).await,
            ClientFrame::JoinRoom { room } => self.on_join_room(&room).await,
            ClientFrame::LeaveRoom { room } => self.on_leave_room(&room).await,
            ClientFrame::Invite { room, name } => self.on_invite(&room, &name).await,
            ClientFrame::Remove { room, name } => self.on_remove(&room, &name).await,
            ClientFrame::Dm { with } => self.on_dm(&with).await,
            ClientFrame::Browse => self.on_browse().await,
            ClientFrame::Read { room, seq } => self.on_read(&room, seq).await,
            ClientFrame::Notify { room, level } => self.on_notify(&room, level).await,
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
            retry_after_ms: None,
        })
        .await
    }

    async fn send_frame(&mut self, frame: &ServerFrame) -> Result<(), End> {
        self.send_wire(frame_wire(frame)).await
    }

    /// Sends a text frame already framed (see [`frame_wire`]), after everything queued before it.
    async fn send_wire(&mut self, wire: Bytes) -> Result<(), End> {
        self.send_wires(wire, 1)
    }

    /// Sends `frames` text frames framed and joined in `wire`, after everything queued before them.
    /// A client that stopped reading long ago is let go.
    fn send_wires(&self, wire: Bytes, frames: u64) -> Result<(), End> {
        let entry = Framed::unroomed(Kind::Own, frames, wire);
        self.mailbox.push_own(entry).map_err(|_| {
            tracing::debug!("client stopped reading; closing");
            End::Socket
        })
    }
}
