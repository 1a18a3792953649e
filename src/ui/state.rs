//! The chat as the page sees it: reactive signals fed by server frames, and the user's intents.
//!
//! This is shared code: on the server it holds the state the page is rendered from (the recent history and
//! the browser's name); in the browser the connection in `crate::client` feeds it frames and carries its
//! outgoing frames.

mod rooms;

use crate::protocol::{
    validate_name, validate_text, ChatEvent, ClientFrame, ErrorCode, EventKind, Identity,
    NameError, RoomInfo, ServerFrame, UserKind, GENERAL_ROOM,
};
use leptos::prelude::*;
use rooms::Want;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use uuid::Uuid;

/// Which page the server rendered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "page", rename_all = "snake_case")]
pub enum Page {
    /// The chat. `claim_error` explains why keeping the name failed (a form posted without JavaScript).
    #[default]
    Chat,
    /// The sign-in form, with the name typed and why the last attempt failed.
    SignIn { name: String, error: Option<String> },
    /// An admin's bots (`/admin/bots`): with the token and secret of one just made or rotated, shown
    /// this once, and why the last form was refused.
    Bots {
        bots: Vec<BotEntry>,
        made: Option<BotSecrets>,
        error: Option<String>,
        /// What the refused form held, so nothing typed is lost.
        #[serde(default)]
        draft: BotDraft,
    },
}

/// The new-bot form's fields as last posted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BotDraft {
    pub name: String,
    pub webhook: String,
    pub rooms: String,
}

/// A bot, as the admin page lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BotEntry {
    pub id: Uuid,
    pub name: String,
    /// Empty: nobody calls it.
    pub webhook: String,
    /// Its token works (not revoked).
    pub active: bool,
    /// Webhook calls given up on, and the last one's reason.
    pub failed: u32,
    pub last_error: String,
}

/// A bot's token and webhook secret, shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BotSecrets {
    pub name: String,
    pub token: String,
    pub secret: String,
}

/// One of a member's sessions, as their session list shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub id: Uuid,
    /// The browser's description of itself.
    pub device: String,
    /// When it was last used, in ms since the epoch.
    pub last_seen_at: i64,
    /// This browser.
    pub current: bool,
}

/// A link a form just made, shown once in the people panel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flash {
    /// What it is, in words ("Invite link", "Sign-in link for Ann").
    pub title: String,
    pub url: String,
    /// How long it lasts and how often it works, in words.
    pub note: String,
    /// A QR code of `url`, as an SVG data URI for an `<img>` (made on the server).
    pub qr: Option<String>,
}

/// What the server renders the page from, and what hydration starts from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bootstrap {
    #[serde(default)]
    pub page: Page,
    /// Who this browser is, when it has joined or signed in.
    pub me: Option<Identity>,
    /// Why a form the page posted was refused (keeping a name, joining), shown where it was posted.
    #[serde(default)]
    pub form_error: Option<String>,
    /// Who may come in.
    #[serde(default)]
    pub access: crate::protocol::Access,
    /// Something a form just made, to show once: an invite link, a sign-in link.
    #[serde(default)]
    pub flash: Option<Flash>,
    /// A member's own sessions (their devices), to see and end.
    #[serde(default)]
    pub sessions: Vec<Device>,
    /// The room the page shows (its slug).
    #[serde(default = "general")]
    pub room: String,
    /// The sidebar: `general`, the user's rooms and conversations, and the shown room if it is a public
    /// one the user only reads.
    #[serde(default)]
    pub rooms: Vec<RoomInfo>,
    /// The newest page of the shown room's events, oldest first.
    pub events: Vec<ChatEvent>,
    /// True when `events` reaches back to the room's first event.
    pub complete: bool,
}

fn general() -> String {
    GENERAL_ROOM.to_owned()
}

impl Default for Bootstrap {
    fn default() -> Self {
        Self {
            page: Page::Chat,
            me: None,
            form_error: None,
            access: crate::protocol::Access::default(),
            flash: None,
            sessions: Vec::new(),
            room: general(),
            rooms: Vec::new(),
            events: Vec::new(),
            complete: false,
        }
    }
}

/// The id of the `<script type="application/json">` that carries the [`Bootstrap`] in the page.
pub const BOOTSTRAP_ID: &str = "confab-boot";

impl Bootstrap {
    /// The JSON the page carries for hydration, safe inside a `<script>` element: every `<`, `>` and
    /// `&` is escaped, so no message or name can close the element or open a comment, and U+2028/2029
    /// are escaped for old JavaScript parsers.
    pub fn to_script_json(&self) -> String {
        let json = serde_json::to_string(self).expect("the bootstrap always serialises");
        let mut safe = String::with_capacity(json.len() + 16);
        for c in json.chars() {
            match c {
                '<' => safe.push_str("\\u003c"),
                '>' => safe.push_str("\\u003e"),
                '&' => safe.push_str("\\u0026"),
                '\u{2028}' => safe.push_str("\\u2028"),
                '\u{2029}' => safe.push_str("\\u2029"),
                c => safe.push(c),
            }
        }
        safe
    }

    /// What the page was rendered from: on the server, what the page handler read from the store; in
    /// the browser, the JSON the server put in the page.
    pub fn current() -> Option<Self> {
        #[cfg(feature = "ssr")]
        {
            use_context::<axum::http::request::Parts>()
                .and_then(|parts| parts.extensions.get::<Self>().cloned())
        }
        #[cfg(not(feature = "ssr"))]
        {
            let json = web_sys::window()?
                .document()?
                .get_element_by_id(BOOTSTRAP_ID)?
                .text_content()?;
            serde_json::from_str(&json).ok()
        }
    }
}

/// The connection's state as the status indicator shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Connecting,
    Connected,
    Reconnecting,
    Offline,
    /// Connected, but the server cannot reach its storage; the outbox waits and the client retries.
    Unavailable,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Connecting => "Connecting…",
            Status::Connected => "Connected",
            Status::Reconnecting => "Reconnecting…",
            Status::Offline => "Offline",
            Status::Unavailable => "Temporarily unavailable",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Connecting => "connecting",
            Status::Connected => "connected",
            Status::Reconnecting => "reconnecting",
            Status::Offline => "offline",
            Status::Unavailable => "unavailable",
        }
    }
}

/// A message of ours that the room has not shown yet: on its way, waiting in the outbox, or refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub id: Uuid,
    /// The room it goes to.
    #[serde(default = "general")]
    pub room: String,
    pub text: String,
    /// Why the server refused it, if it did; `None` while it is on its way.
    #[serde(default)]
    pub failed: Option<String>,
}

/// What the chat needs from the browser's connection. Implemented by `crate::client` in the browser; the
/// state knows only this trait, so the two modules do not depend on each other.
pub trait Link: Sync {
    /// Sends a frame if the socket is open; false otherwise.
    fn transmit(&self, frame: &ClientFrame) -> bool;
    /// The server answered as a healthy one.
    fn healthy(&self);
    /// The server cannot store messages now: reconnect after a backoff.
    fn retry_later(&self, chat: Chat);
    /// Runs `then` after `delay` (for sending held messages when the rate allows).
    fn after(&self, delay: Duration, then: Box<dyn FnOnce() + 'static>);
    /// Puts `path` in the address bar as a new history entry, without loading it.
    fn navigate(&self, path: &str);
    /// Shows a system notification, if the user allowed them; clicking it opens `room`.
    fn notify(&self, chat: Chat, title: &str, body: &str, room: &str);
}

/// How long "<name> is typing…" stays after the last typing signal.
const TYPING_SHOWN_FOR: Duration = Duration::from_secs(4);

/// Handle to the chat state; `Copy`, so every component and closure can hold one.
#[derive(Clone, Copy)]
pub struct Chat {
    /// The room shown (its slug).
    pub room: RwSignal<String>,
    /// The sidebar: `general`, then the user's rooms and conversations, each with what is unread.
    pub rooms: RwSignal<Vec<RoomInfo>>,
    /// The public rooms, while "Browse rooms" is open.
    pub directory: RwSignal<Option<Vec<RoomInfo>>>,
    /// Where the "New messages" divider goes: after this sequence number of the shown room.
    pub divider: RwSignal<Option<u64>>,
    /// The phone-width menu (the sidebar) is open.
    pub menu_open: RwSignal<bool>,
    /// The tab is visible (set by the browser's connection, from the page's visibility state).
    pub visible: RwSignal<bool>,
    /// The shown room's events in sequence order.
    pub events: RwSignal<Vec<ChatEvent>>,
    /// Our messages not yet seen in `events`, oldest first. This is the outbox: the browser keeps it
    /// across reloads, and it is sent again after every (re)join until the room shows each message.
    pub pending: RwSignal<Vec<Pending>>,
    /// The name we joined under (kept across reconnects).
    pub name: RwSignal<Option<String>>,
    /// Who the server says we are, once joined.
    pub me: RwSignal<Option<Identity>>,
    /// Why a form the page posted was refused, from the server's render.
    pub form_error: RwSignal<Option<String>>,
    /// The server is holding our messages back for their rate: the outbox goes again by itself.
    pub sending_slowly: RwSignal<bool>,
    /// Who may come in (from the server's render).
    pub access: crate::protocol::Access,
    /// A link a form just made (shown once).
    pub flash: RwSignal<Option<Flash>>,
    /// Our sessions, if we are a member (from the server's render).
    pub devices: StoredValue<Vec<Device>>,
    /// Whether the server accepted `name`; the name dialog shows until it has.
    pub joined: RwSignal<bool>,
    /// Why the last join was refused, shown under the name field.
    pub join_error: RwSignal<Option<String>>,
    pub status: RwSignal<Status>,
    /// A passing error that belongs to no message, such as a refused frame.
    pub notice: RwSignal<Option<String>>,
    /// Who is in the room now, as far as listed (a crowd is listed in part).
    pub online: RwSignal<Vec<String>>,
    /// How many more are online than `online` lists.
    pub online_more: RwSignal<u32>,
    /// Who is typing, each with a counter that tells a fresh signal from a stale timeout.
    pub typing: RwSignal<Vec<(String, u32)>>,
    /// True once `events` reaches back to the room's first event.
    pub history_complete: RwSignal<bool>,
    pub loading_older: RwSignal<bool>,
    /// Whether this connection has sent the outbox since it joined, so a repeated `joined` does not
    /// send it twice.
    flushed: StoredValue<bool>,
    /// The user left and the server has not confirmed it yet. The leave goes (again) on every open, and
    /// a "joined" for the old name (the server restoring the session from its cookie) is ignored until
    /// the server's "left".
    leaving: StoredValue<bool>,
    /// The browser's connection, once it exists (never on the server).
    link: StoredValue<Option<&'static dyn Link>>,
    /// The room switched to whose history has not come yet: its live events wait for it.
    opening: StoredValue<Option<String>>,
    /// A room the user asked for (made, joined, wrote to), shown as soon as the server has it.
    want: StoredValue<Option<Want>>,
    /// A read mark is on its way after a short pause (they go at most once a second).
    read_due: StoredValue<bool>,
}

impl Chat {
    /// The state the page starts from.
    pub fn new(boot: Bootstrap) -> Self {
        let joined = boot.me.is_some();
        let divider = boot
            .rooms
            .iter()
            .find(|r| r.slug == boot.room)
            .filter(|r| r.unread > 0)
            .map(|r| r.last_read);
        Self {
            room: RwSignal::new(boot.room),
            rooms: RwSignal::new(boot.rooms),
            directory: RwSignal::new(None),
            divider: RwSignal::new(divider),
            menu_open: RwSignal::new(false),
            visible: RwSignal::new(true),
            events: RwSignal::new(boot.events),
            pending: RwSignal::new(Vec::new()),
            name: RwSignal::new(boot.me.as_ref().map(|me| me.name.clone())),
            me: RwSignal::new(boot.me),
            form_error: RwSignal::new(boot.form_error),
            sending_slowly: RwSignal::new(false),
            access: boot.access,
            flash: RwSignal::new(boot.flash),
            devices: StoredValue::new(boot.sessions),
            joined: RwSignal::new(joined),
            join_error: RwSignal::new(None),
            status: RwSignal::new(Status::Connecting),
            notice: RwSignal::new(None),
            online: RwSignal::new(Vec::new()),
            online_more: RwSignal::new(0),
            typing: RwSignal::new(Vec::new()),
            history_complete: RwSignal::new(boot.complete),
            loading_older: RwSignal::new(false),
            flushed: StoredValue::new(false),
            leaving: StoredValue::new(false),
            link: StoredValue::new(None),
            opening: StoredValue::new(None),
            want: StoredValue::new(None),
            read_due: StoredValue::new(false),
        }
    }

    /// Attaches the browser's connection.
    pub fn attach(&self, link: &'static dyn Link) {
        self.link.set_value(Some(link));
    }

    /// Whether we are a member (or a bot): our name is ours, and leaving means signing out.
    pub fn is_member(&self) -> bool {
        self.me
            .with(|me| me.as_ref().is_some_and(|me| me.kind != UserKind::Guest))
    }

    /// The highest sequence number shown; a reconnect resumes after it.
    pub fn last_seq(&self) -> u64 {
        self.events
            .with_untracked(|events| events.last().map_or(0, |e| e.seq))
    }

    /// Asks to join under `raw`. A name the server would refuse is refused here first, with the same message.
    pub fn join(&self, raw: &str) -> Result<(), NameError> {
        let name = validate_name(raw)
            .inspect_err(|err| self.join_error.set(Some(err.message().to_owned())))?;
        self.join_error.set(None);
        self.name.set(Some(name.clone()));
        // If the socket is not open yet, `on_open` sends the join.
        self.transmit(&ClientFrame::Join { name });
        Ok(())
    }

    /// Leaves the chat: the name is given up, and the name dialog comes back.
    pub fn leave(&self) {
        self.leaving.set_value(true);
        // If the socket is down, `on_open` sends it.
        self.transmit(&ClientFrame::Leave);
        self.forget_identity();
    }

    /// Back to the name dialog: after leaving, or when the server ended this browser's session.
    pub fn forget_identity(&self) {
        self.name.set(None);
        self.me.set(None);
        self.joined.set(false);
        self.pending.set(Vec::new());
        self.sending_slowly.set(false);
    }

    /// Sends a message; returns false (and sends nothing) when it is blank or too long.
    pub fn send(&self, raw: &str) -> bool {
        let text = match validate_text(raw) {
            Ok(text) => text,
            Err(err) => {
                if !raw.trim().is_empty() {
                    self.notice.set(Some(err.message().to_owned()));
                }
                return false;
            }
        };
        let id = Uuid::new_v4();
        let room = self.room.get_untracked();
        if !crate::protocol::Slash::parse(&text).posts() {
            // A command the server carries out: nothing to show as pending, and nothing to keep for
            // later, since it means "now".
            if !self.joined.get_untracked() {
                self.notice.set(Some(
                    "Commands need the connection; try again once connected.".into(),
                ));
                return false;
            }
            self.transmit(&ClientFrame::Send { room, id, text });
            return true;
        }
        self.pending.update(|p| {
            p.push(Pending {
                id,
                room: room.clone(),
                text: text.clone(),
                failed: None,
            })
        });
        self.clear_typing(self.name.get_untracked().as_deref());
        // Offline, the message waits in the outbox and goes out after the next join; held back for the
        // rate, it goes with the others when the wait is over.
        if self.joined.get_untracked() && !self.sending_slowly.get_untracked() {
            self.transmit(&ClientFrame::Send { room, id, text });
        }
        true
    }

    /// Deletes message `id` (ours, or anyone's for an admin); it disappears once the server says so.
    pub fn delete(&self, id: Uuid) {
        if !self.transmit(&ClientFrame::Delete {
            room: self.room.get_untracked(),
            id,
        }) {
            self.notice.set(Some(
                "Not connected: try deleting again in a moment.".to_owned(),
            ));
        }
    }

    /// Tells the room we are typing (the caller throttles).
    pub fn typing(&self) {
        if self.joined.get_untracked() {
            self.transmit(&ClientFrame::Typing {
                room: self.room.get_untracked(),
            });
        }
    }

    /// Asks for the page of events before the oldest one shown.
    pub fn load_older(&self) {
        if self.history_complete.get_untracked() || self.loading_older.get_untracked() {
            return;
        }
        let Some(before) = self.events.with_untracked(|e| e.first().map(|e| e.seq)) else {
            return;
        };
        if self.transmit(&ClientFrame::History {
            room: self.room.get_untracked(),
            before,
        }) {
            self.loading_older.set(true);
        }
    }

    /// Sends a refused message again.
    pub fn retry(&self, id: Uuid) {
        let mut again = None;
        self.pending.update(|pending| {
            if let Some(p) = pending.iter_mut().find(|p| p.id == id) {
                p.failed = None;
                again = Some((p.room.clone(), p.text.clone()));
            }
        });
        if let Some((room, text)) = again {
            self.transmit(&ClientFrame::Send { room, id, text });
        }
    }

    /// The socket opened. The server recognises this browser by its cookie and rejoins it by itself; the
    /// join sent here covers a server that has forgotten the session.
    pub fn on_open(&self) {
        // After "unavailable", only the server's first healthy frame (presence) says it is back.
        if self.status.get_untracked() != Status::Unavailable {
            self.status.set(Status::Connected);
        }
        self.flushed.set_value(false);
        self.loading_older.set(false);
        // The connection starts with the shown room's history (see `crate::client`).
        self.opening.set_value(None);
        if self.leaving.get_value() {
            self.transmit(&ClientFrame::Leave);
        }
        if let Some(name) = self.name.get_untracked() {
            self.transmit(&ClientFrame::Join { name });
        }
    }

    /// The socket closed; `online` says whether the browser thinks it has a network.
    pub fn on_close(&self, online: bool) {
        self.status
            .set(match (online, self.status.get_untracked()) {
                (false, _) => Status::Offline,
                (true, Status::Unavailable) => Status::Unavailable,
                (true, _) => Status::Reconnecting,
            });
    }

    /// Applies one frame from the server.
    pub fn apply(&self, frame: ServerFrame) {
        let shown = |room: &str| self.room.with_untracked(|shown| shown == room);
        match frame {
            // The user's other rooms: their unread counts and notifications, not the list.
            ServerFrame::Event(event) if !shown(&event.room) => self.elsewhere(&event),
            // The history of a room being opened comes next, and holds this event.
            ServerFrame::Event(_) if self.opening.with_value(|o| o.is_some()) => {}
            ServerFrame::Event(event) => {
                self.heard(&event);
                self.on_event(event);
            }
            ServerFrame::Typing { ref room, .. }
            | ServerFrame::History { ref room, .. }
            | ServerFrame::Reset { ref room, .. }
                if !shown(room) => {}
            ServerFrame::Presence { ref room, .. } if !shown(room) => self.healthy(),
            ServerFrame::Joined(_) if self.leaving.get_value() => {}
            ServerFrame::Joined(identity) => {
                self.name.set(Some(identity.name.clone()));
                self.me.set(Some(identity));
                self.joined.set(true);
                self.join_error.set(None);
                if !self.flushed.get_value() {
                    self.flushed.set_value(true);
                    self.flush_outbox();
                }
            }
            ServerFrame::Ack { .. } => {
                // The event itself follows on the live stream and replaces the pending row.
            }
            ServerFrame::Presence { online, more, .. } => {
                self.online.set(online);
                self.online_more.set(more);
                self.healthy();
            }
            ServerFrame::Typing { name, .. } => self.on_typing(name),
            ServerFrame::History {
                events, complete, ..
            } => {
                self.events.update(|shown| {
                    let first = shown.first().map_or(u64::MAX, |e| e.seq);
                    let older: Vec<ChatEvent> =
                        events.into_iter().filter(|e| e.seq < first).collect();
                    shown.splice(0..0, older);
                });
                self.history_complete.set(complete);
                self.loading_older.set(false);
            }
            ServerFrame::Reset {
                events, complete, ..
            } => {
                // The server's room is not the list shown here any more (restored, restarted, or this
                // tab was too far behind): start over from its recent page. The outbox stays; what of
                // it is stored already is in the page, and the rest goes again after the join.
                self.pending
                    .update(|pending| pending.retain(|p| events.iter().all(|e| e.id != p.id)));
                if let Some(last) = events.last() {
                    self.heard(last);
                }
                self.events.set(events);
                self.history_complete.set(complete);
                self.loading_older.set(false);
                self.opening.set_value(None);
            }
            ServerFrame::Left => {
                self.leaving.set_value(false);
                self.name.set(None);
                self.me.set(None);
                self.joined.set(false);
            }
            ServerFrame::Error {
                code,
                message,
                id,
                retry_after_ms,
            } => self.on_error(code, message, id, retry_after_ms),
            ServerFrame::Rooms { rooms } => self.on_rooms(rooms),
            ServerFrame::Room(info) => self.on_room(info),
            ServerFrame::RoomGone { room } => self.on_room_gone(&room),
            ServerFrame::Directory { rooms } => self.directory.set(Some(rooms)),
            ServerFrame::Read { room, seq } => self.on_read(&room, seq),
            ServerFrame::Command { reply, .. } => self.notice.set(Some(reply)),
            // A frame of a newer server: nothing this page knows how to show.
            ServerFrame::Unknown => {}
        }
    }

    /// The server sends presence once it has read the history and the session: it is healthy.
    fn healthy(&self) {
        if self.status.get_untracked() == Status::Unavailable {
            self.notice.set(None); // the outage notice no longer holds
        }
        self.status.set(Status::Connected);
        if let Some(link) = self.link.get_value() {
            link.healthy();
        }
    }

    fn on_event(&self, event: ChatEvent) {
        // History replayed on reconnect may overlap what is shown; sequence numbers tell.
        if event.seq <= self.last_seq() {
            return;
        }
        match event.kind {
            EventKind::Join => self.online.update(|online| {
                if !online.contains(&event.name) {
                    online.push(event.name.clone());
                    online.sort_by_key(|n| crate::unicode::to_lower(n));
                }
            }),
            EventKind::Leave => {
                let listed = self
                    .online
                    .with_untracked(|online| online.contains(&event.name));
                if listed {
                    self.online
                        .update(|online| online.retain(|n| *n != event.name));
                } else {
                    // One of those counted, not listed.
                    self.online_more
                        .update(|more| *more = more.saturating_sub(1));
                }
            }
            EventKind::Message | EventKind::Action => self.clear_typing(Some(&event.name)),
            EventKind::Delete => {
                if let Some(target) = event.target {
                    self.events
                        .update(|events| events.retain(|e| e.id != target));
                }
            }
            EventKind::Deleted | EventKind::Unknown => {}
        }
        let id = event.id;
        self.events.update(|events| events.push(event));
        self.pending
            .update(|pending| pending.retain(|p| p.id != id));
    }

    /// Messages written while disconnected go out now, in the order they were written. The server stores
    /// each id once, so a message that did arrive before the connection dropped is not shown twice.
    fn flush_outbox(&self) {
        for p in self.pending.get_untracked() {
            if p.failed.is_none() {
                self.transmit(&ClientFrame::Send {
                    room: p.room,
                    id: p.id,
                    text: p.text,
                });
            }
        }
    }

    fn on_typing(&self, name: String) {
        if self.name.get_untracked().as_deref() == Some(name.as_str()) {
            return;
        }
        let mut stamp = 0;
        self.typing
            .update(|typing| match typing.iter_mut().find(|(n, _)| *n == name) {
                Some((_, count)) => {
                    *count = count.wrapping_add(1);
                    stamp = *count;
                }
                None => typing.push((name.clone(), 0)),
            });
        let typing = self.typing;
        set_timeout(
            move || typing.update(|t| t.retain(|(n, count)| !(*n == name && *count == stamp))),
            TYPING_SHOWN_FOR,
        );
    }

    fn clear_typing(&self, name: Option<&str>) {
        if let Some(name) = name {
            if self
                .typing
                .with_untracked(|t| t.iter().any(|(n, _)| n == name))
            {
                self.typing.update(|t| t.retain(|(n, _)| n != name));
            }
        }
    }

    fn on_error(
        &self,
        code: ErrorCode,
        message: String,
        id: Option<Uuid>,
        retry_after_ms: Option<u64>,
    ) {
        if code == ErrorCode::Unavailable {
            // The message (if any) stays in the outbox, unfailed: it goes again after the reconnect,
            // which waits out a growing pause while the server's storage is down.
            self.status.set(Status::Unavailable);
            self.notice.set(Some(message));
            if let Some(link) = self.link.get_value() {
                link.retry_later(*self);
            }
            return;
        }
        if let (ErrorCode::RateLimited, Some(id), Some(wait)) = (code, id, retry_after_ms) {
            return self.hold_back(id, wait);
        }
        let name_refused = matches!(
            code,
            ErrorCode::NameBlank
                | ErrorCode::NameTooLong
                | ErrorCode::NameInvalid
                | ErrorCode::NameTaken
                | ErrorCode::NameOwned
        );
        if name_refused {
            // Also when a returning browser finds its name taken meanwhile: ask for another.
            self.name.set(None);
            self.joined.set(false);
            self.join_error.set(Some(message));
            return;
        }
        if let Some(id) = id {
            let mut known = false;
            self.pending.update(|pending| {
                if let Some(p) = pending.iter_mut().find(|p| p.id == id) {
                    p.failed = Some(message.clone());
                    known = true;
                }
            });
            if known {
                return;
            }
        }
        self.notice.set(Some(message));
    }

    /// The server refused message `id` for its rate, and will refuse the ones after it until it comes
    /// again: keep them all, in order, and send them again once `wait_ms` has passed. Nothing failed, so
    /// nothing is marked as failed; the page says it is sending slowly.
    fn hold_back(&self, id: Uuid, wait_ms: u64) {
        if !self
            .pending
            .with_untracked(|p| p.iter().any(|p| p.id == id))
        {
            return;
        }
        if self.sending_slowly.get_untracked() {
            return; // already waiting: the resend covers this one too
        }
        self.sending_slowly.set(true);
        let chat = *self;
        let resend = move || {
            chat.sending_slowly.set(false);
            if !chat.joined.get_untracked() {
                return;
            }
            // Everything not shown yet, oldest first: the held message leads, the rest follow it.
            chat.flush_outbox();
        };
        match self.link.get_value() {
            Some(link) => link.after(Duration::from_millis(wait_ms), Box::new(resend)),
            None => resend(),
        }
    }

    /// Hands a frame to the connection; false when there is none (always, on the server, which renders
    /// state and never sends from it).
    pub(crate) fn transmit(&self, frame: &ClientFrame) -> bool {
        self.link
            .get_value()
            .is_some_and(|link| link.transmit(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::GENERAL_ROOM;

    fn event(seq: u64, id: Uuid, kind: EventKind, name: &str) -> ChatEvent {
        ChatEvent {
            seq,
            id,
            room: GENERAL_ROOM.into(),
            at: 0,
            kind,
            name: name.into(),
            user_id: Uuid::nil(),
            user_kind: UserKind::Guest,
            text: format!("m{seq}"),
            target: None,
        }
    }

    fn joined(name: &str) -> ServerFrame {
        ServerFrame::Joined(Identity {
            name: name.into(),
            user_id: Uuid::from_u128(7),
            kind: UserKind::Guest,
            admin: false,
            via: crate::protocol::Via::Guest,
        })
    }

    fn chat() -> (Owner, Chat) {
        let owner = Owner::new();
        owner.set();
        (owner, Chat::new(Bootstrap::default()))
    }

    #[test]
    fn events_replace_pending_and_replays_are_not_shown_twice() {
        let (_owner, chat) = chat();
        chat.apply(joined("Ann"));
        assert!(chat.send(" hello "));
        assert!(!chat.send("   \n "));
        let pending = chat.pending.get_untracked();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].text, "hello");

        let delivered = [
            event(1, Uuid::new_v4(), EventKind::Message, "Bo"),
            event(2, pending[0].id, EventKind::Message, "Ann"),
        ];
        // The second round is a resume that overlaps what is shown: it must change nothing.
        for _ in 0..2 {
            for e in delivered.clone() {
                chat.apply(ServerFrame::Event(e));
            }
            assert!(chat.pending.get_untracked().is_empty());
        }
        assert_eq!(
            chat.events
                .get_untracked()
                .iter()
                .map(|e| e.seq)
                .collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(chat.last_seq(), 2);
    }

    #[test]
    fn commands_are_not_pending_messages_and_their_answers_are_notices() {
        let (_owner, chat) = chat();
        assert!(
            !chat.send("/help"),
            "offline, a command is not kept for later"
        );
        assert!(chat.notice.get_untracked().unwrap().contains("connection"));
        chat.apply(joined("Ann"));
        assert!(chat.send("/help"));
        assert!(chat.send("/me waves"));
        assert!(chat.send("//shrug"));
        let texts: Vec<String> = chat
            .pending
            .get_untracked()
            .into_iter()
            .map(|p| p.text)
            .collect();
        assert_eq!(
            texts,
            ["/me waves", "//shrug"],
            "only what posts is pending"
        );
        chat.apply(ServerFrame::Command {
            id: Uuid::new_v4(),
            reply: "Commands: …".into(),
        });
        assert_eq!(chat.notice.get_untracked().as_deref(), Some("Commands: …"));
    }

    #[test]
    fn leaving_while_disconnected_is_not_undone_by_the_servers_rejoin() {
        let (_owner, chat) = chat();
        chat.apply(joined("Ann"));
        chat.on_close(true);
        chat.leave();
        assert!(!chat.joined.get_untracked(), "the dialog is back at once");
        // Reconnected: the server restores the name from the cookie before it reads our leave.
        chat.on_open();
        chat.apply(joined("Ann"));
        assert!(!chat.joined.get_untracked(), "still left");
        assert_eq!(chat.name.get_untracked(), None);
        chat.apply(ServerFrame::Left);
        // Joining again later works as usual.
        chat.apply(joined("Ann"));
        assert!(chat.joined.get_untracked());
    }

    #[test]
    fn storage_outages_keep_messages_pending_and_say_so_until_the_server_is_healthy() {
        let (_owner, chat) = chat();
        chat.apply(joined("Ann"));
        assert!(chat.send("written during an outage"));
        let id = chat.pending.get_untracked()[0].id;
        chat.apply(ServerFrame::Error {
            code: ErrorCode::Unavailable,
            message: "The chat is temporarily unavailable.".into(),
            id: Some(id),
            retry_after_ms: None,
        });
        assert_eq!(chat.status.get_untracked(), Status::Unavailable);
        assert_eq!(
            chat.status.get_untracked().label(),
            "Temporarily unavailable"
        );
        let pending = chat.pending.get_untracked();
        assert_eq!(pending.len(), 1, "still in the outbox");
        assert_eq!(pending[0].failed, None, "not failed: it will be sent again");
        // Reconnecting does not hide the outage; the server's presence frame says it is over.
        chat.on_close(true);
        chat.on_open();
        assert_eq!(chat.status.get_untracked(), Status::Unavailable);
        chat.apply(ServerFrame::Presence {
            room: GENERAL_ROOM.into(),
            online: vec![],
            more: 0,
        });
        assert_eq!(chat.status.get_untracked(), Status::Connected);
        assert_eq!(
            chat.notice.get_untracked(),
            None,
            "the outage notice goes with it"
        );
    }

    #[test]
    fn name_errors_show_under_the_field_and_message_errors_on_the_message() {
        let (_owner, chat) = chat();
        assert_eq!(chat.join("   "), Err(NameError::Blank));
        assert_eq!(
            chat.join_error.get_untracked().as_deref(),
            Some("Name cannot be blank!")
        );
        assert!(chat.join("Ann").is_ok());
        assert_eq!(chat.join_error.get_untracked(), None);
        chat.apply(ServerFrame::Error {
            code: ErrorCode::NameTaken,
            message: "That name is taken".into(),
            id: None,
            retry_after_ms: None,
        });
        assert!(!chat.joined.get_untracked());
        assert_eq!(
            chat.join_error.get_untracked().as_deref(),
            Some("That name is taken")
        );
        chat.apply(joined("Ann"));
        assert!(chat.joined.get_untracked());

        chat.send("too fast");
        let id = chat.pending.get_untracked()[0].id;
        chat.apply(ServerFrame::Error {
            code: ErrorCode::RateLimited,
            message: "slow".into(),
            id: Some(id),
            retry_after_ms: None,
        });
        assert_eq!(
            chat.pending.get_untracked()[0].failed.as_deref(),
            Some("slow")
        );
        chat.apply(ServerFrame::Error {
            code: ErrorCode::BadJson,
            message: "bad".into(),
            id: None,
            retry_after_ms: None,
        });
        assert_eq!(chat.notice.get_untracked().as_deref(), Some("bad"));
    }

    #[test]
    fn presence_follows_the_snapshot_then_join_and_leave_events() {
        let (_owner, chat) = chat();
        chat.apply(ServerFrame::Presence {
            room: GENERAL_ROOM.into(),
            online: vec!["Ann".into(), "bo".into()],
            more: 0,
        });
        chat.apply(ServerFrame::Event(event(
            1,
            Uuid::new_v4(),
            EventKind::Join,
            "Cy",
        )));
        chat.apply(ServerFrame::Event(event(
            2,
            Uuid::new_v4(),
            EventKind::Leave,
            "Ann",
        )));
        chat.apply(ServerFrame::Event(event(
            3,
            Uuid::new_v4(),
            EventKind::Join,
            "bo",
        )));
        assert_eq!(chat.online.get_untracked(), ["bo", "Cy"]);
        assert_eq!(chat.online_more.get_untracked(), 0);
    }

    #[test]
    fn a_crowd_counts_those_not_listed() {
        let (_owner, chat) = chat();
        chat.apply(ServerFrame::Presence {
            room: GENERAL_ROOM.into(),
            online: vec!["Ann".into()],
            more: 2,
        });
        // Someone not listed leaves: counted out. Someone new joins: listed.
        chat.apply(ServerFrame::Event(event(
            1,
            Uuid::new_v4(),
            EventKind::Leave,
            "Zed",
        )));
        chat.apply(ServerFrame::Event(event(
            2,
            Uuid::new_v4(),
            EventKind::Join,
            "Cy",
        )));
        assert_eq!(chat.online.get_untracked(), ["Ann", "Cy"]);
        assert_eq!(chat.online_more.get_untracked(), 1);
        chat.apply(ServerFrame::Presence {
            room: GENERAL_ROOM.into(),
            online: vec!["Ann".into()],
            more: 0,
        });
        assert_eq!(chat.online_more.get_untracked(), 0);
    }

    #[test]
    fn a_reset_replaces_the_list_and_later_events_show() {
        let owner = Owner::new();
        owner.set();
        let boot = Bootstrap {
            events: (5..=7)
                .map(|s| event(s, Uuid::new_v4(), EventKind::Message, "Ann"))
                .collect(),
            ..Bootstrap::default()
        };
        let chat = Chat::new(boot);
        // The server restarted without this history: its room holds only seq 1 and 2.
        chat.apply(ServerFrame::Reset {
            room: GENERAL_ROOM.into(),
            events: (1..=2)
                .map(|s| event(s, Uuid::new_v4(), EventKind::Message, "Bo"))
                .collect(),
            complete: true,
        });
        assert_eq!(
            chat.last_seq(),
            2,
            "the next resume starts from the server's head"
        );
        chat.apply(ServerFrame::Event(event(
            3,
            Uuid::new_v4(),
            EventKind::Message,
            "Bo",
        )));
        let seqs: Vec<u64> = chat.events.get_untracked().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 2, 3], "a live event after the reset is shown");
        assert!(chat.history_complete.get_untracked());
    }

    #[test]
    fn older_pages_are_prepended_once() {
        let owner = Owner::new();
        owner.set();
        let ServerFrame::Joined(me) = joined("Ann") else {
            unreachable!()
        };
        let boot = Bootstrap {
            me: Some(me),
            events: vec![event(5, Uuid::new_v4(), EventKind::Message, "Ann")],
            complete: false,
            ..Bootstrap::default()
        };
        let chat = Chat::new(boot);
        assert!(
            chat.joined.get_untracked(),
            "a known browser starts joined: no dialog"
        );
        let older: Vec<_> = (3..=5)
            .map(|s| event(s, Uuid::new_v4(), EventKind::Message, "Bo"))
            .collect();
        chat.apply(ServerFrame::History {
            room: GENERAL_ROOM.into(),
            events: older,
            complete: true,
        });
        assert_eq!(
            chat.events
                .get_untracked()
                .iter()
                .map(|e| e.seq)
                .collect::<Vec<_>>(),
            [3, 4, 5]
        );
        assert!(chat.history_complete.get_untracked());
    }
}
