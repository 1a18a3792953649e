//! The wire protocol: JSON text frames over the one WebSocket at `/ws`.
//!
//! Compiled for both the server and the browser, so the two can never disagree on a field name, a limit or a
//! validation rule. The README's "Protocol" section documents the same frames for bots and load tools.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The room everyone is in, and the one a frame without a `room` field means (so clients from before rooms
/// keep working).
pub const GENERAL_ROOM: &str = "general";
/// A room's name, trimmed, may hold at most this many characters.
pub const MAX_ROOM_NAME_CHARS: usize = 40;
/// A room's topic may hold at most this many characters.
pub const MAX_TOPIC_CHARS: usize = 200;
/// The most people in a direct-message room, the user included.
pub const MAX_DM_MEMBERS: usize = 8;

fn general() -> String {
    GENERAL_ROOM.to_owned()
}

fn is_general(room: &str) -> bool {
    room == GENERAL_ROOM
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}
/// A name is trimmed, then may hold at most this many characters (Unicode scalar values).
pub const MAX_NAME_CHARS: usize = 32;
/// A message may hold at most this many characters (Unicode scalar values) after trimming.
pub const MAX_TEXT_CHARS: usize = 4_000;
/// The largest WebSocket frame (and message) the server reads; larger ones close the connection with 1009.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// How many recent events a new connection is sent when it asks for no particular point in history.
pub const HISTORY_PAGE: usize = 50;
/// The most events a resuming connection is sent one by one; further behind, it gets a
/// [`ServerFrame::Reset`] with the recent page and scrolls back for the rest.
pub const RESUME_LIMIT: usize = 1_000;
/// The most names a `presence` frame lists; the rest are counted in its `more`. A room of thousands
/// would otherwise send every newcomer every name, and each connection would keep a buffer that size.
pub const PRESENCE_NAMES: usize = 100;

/// Whether a page of history (oldest first) that asked for [`HISTORY_PAGE`] events reaches back to the
/// room's first event: it came back short, or it starts at sequence number 1.
pub fn reaches_first_event(page: &[ChatEvent]) -> bool {
    page.len() < HISTORY_PAGE || page.first().is_some_and(|e| e.seq <= 1)
}

/// How long a "keep this name" password must be, at least (characters).
pub const MIN_PASSWORD_CHARS: usize = 8;
/// The longest password the server will hash, in bytes: longer ones are refused unhashed, so nobody can
/// make the server spend its CPU on megabytes of argon2 input.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Why a password was refused before any hashing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordError {
    Blank,
    TooShort,
    TooLong,
}

impl PasswordError {
    pub fn message(self) -> &'static str {
        match self {
            PasswordError::Blank => "Enter a password.",
            PasswordError::TooShort => "Use a password of at least 8 characters.",
            PasswordError::TooLong => "That password is too long: use at most 1024 bytes.",
        }
    }
}

/// Checks a new password's length. Whitespace is part of a password, so nothing is trimmed.
pub fn validate_password(password: &str) -> Result<(), PasswordError> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(PasswordError::TooLong);
    }
    if password.is_empty() {
        return Err(PasswordError::Blank);
    }
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(PasswordError::TooShort);
    }
    Ok(())
}

/// Who may come in (`CONFAB_ACCESS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Guests welcome: type a name and chat.
    #[default]
    Open,
    /// Guests may read; posting takes a member (keep your name, or sign in).
    Members,
    /// New people need an invite link an admin made; members sign in as usual.
    Invite,
}

/// What kind of account wrote an event or holds a connection.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserKind {
    /// A name typed into the dialog, held while its browser session lives.
    #[default]
    Guest,
    /// A name kept with a password (or given by a signed token): nobody else may use it.
    Member,
    /// A program speaking through the API.
    Bot,
    /// A kind a newer server knows; shown like a member.
    #[serde(other)]
    Other,
}

impl UserKind {
    pub fn is_guest(&self) -> bool {
        *self == UserKind::Guest
    }

    pub fn as_str(self) -> &'static str {
        match self {
            UserKind::Guest => "guest",
            UserKind::Member => "member",
            UserKind::Bot => "bot",
            UserKind::Other => "other",
        }
    }
}

/// How a connection's user proved who they are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// Typed a name: a guest.
    #[default]
    Guest,
    /// Signed in with a member's password (or a one-time sign-in link).
    Password,
    /// A token signed by an app that embeds Confab.
    Token,
    #[serde(other)]
    Other,
}

/// Who a connection is, as the server sees it: sent in [`ServerFrame::Joined`] and in the page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The normalised name the room shows.
    pub name: String,
    /// Stable across reconnects, devices and (for members) name changes; events carry it.
    #[serde(default)]
    pub user_id: Uuid,
    #[serde(default)]
    pub kind: UserKind,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
    #[serde(default)]
    pub via: Via,
}

/// A frame a client sends. Frames about a room name it by slug in `room`; without one they mean
/// [`GENERAL_ROOM`]. A room the user may not see is answered with `not_found`, exactly as one that does
/// not exist.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Take a name in the chat; answered by [`ServerFrame::Joined`] or an error.
    Join { name: String },
    /// Post a message. `id` is chosen by the client, so a retry of the same message is recognisable.
    Send {
        #[serde(default = "general", skip_serializing_if = "is_general")]
        room: String,
        id: Uuid,
        text: String,
    },
    /// The user is typing; others in the room see "<name> is typing…" for a few seconds.
    Typing {
        #[serde(default = "general", skip_serializing_if = "is_general")]
        room: String,
    },
    /// Asks for the page of events just before `before`, answered by [`ServerFrame::History`].
    History {
        #[serde(default = "general", skip_serializing_if = "is_general")]
        room: String,
        before: u64,
    },
    /// Shows a room: answered by its events after `after` (one by one, or a [`ServerFrame::Reset`] when
    /// the cursor does not fit), or without `after` by a reset with its recent page; then its presence.
    Open {
        room: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<u64>,
    },
    /// Leave the chat: this browser forgets its name, and the others see a leave line.
    Leave,
    /// Delete message `id`: one's own, or (an admin) anyone's. It disappears for everyone, from history too.
    Delete {
        #[serde(default = "general", skip_serializing_if = "is_general")]
        room: String,
        id: Uuid,
    },
    /// Sign this connection in with a token signed by the app that embeds Confab (native clients; a
    /// browser sends it as `Authorization: Bearer` or `/?token=`).
    Auth { token: String },
    /// Create a room (the user becomes its owner); answered by [`ServerFrame::Room`].
    CreateRoom {
        name: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        topic: String,
        /// Invite only, and invisible to everyone else.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        private: bool,
    },
    /// Rename a room, change its topic, or archive it (or bring it back): its owner or an admin. Fields
    /// left out stay as they are; the slug never changes, so links keep working.
    UpdateRoom {
        room: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        topic: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        archived: Option<bool>,
    },
    /// Join a public room.
    JoinRoom { room: String },
    /// Leave a room (not `general`, and not a direct one).
    LeaveRoom { room: String },
    /// Add the user named `name` to a room (its members may, for a public or private room).
    Invite { room: String, name: String },
    /// Take the user named `name` out of a room (its owner or an admin); their stream of it stops at once.
    Remove { room: String, name: String },
    /// Open the direct-message room with these people (by name, up to [`MAX_DM_MEMBERS`] with the user),
    /// made on first use; answered by [`ServerFrame::Room`].
    Dm { with: Vec<String> },
    /// List the public rooms, answered by [`ServerFrame::Directory`].
    Browse,
    /// The user has read `room` up to `seq`: kept on the server, so every device and tab agrees.
    Read { room: String, seq: u64 },
    /// What of `room` notifies the user, on every device.
    Notify { room: String, level: Notify },
}

/// The `type` values [`ClientFrame`] accepts, used to tell an unknown type from a malformed known one.
pub const CLIENT_FRAME_TYPES: [&str; 18] = [
    "join",
    "send",
    "typing",
    "history",
    "open",
    "leave",
    "delete",
    "auth",
    "create_room",
    "update_room",
    "join_room",
    "leave_room",
    "invite",
    "remove",
    "dm",
    "browse",
    "read",
    "notify",
];

/// Whether a room is listed, invite-only, or between particular people.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomKind {
    /// Anyone may read and join it; listed by [`ClientFrame::Browse`].
    Public,
    /// Members only: invisible to everyone else.
    Private,
    /// A direct-message room: its members are fixed, and it is named by them.
    Direct,
    /// A kind a newer server knows; treated as private.
    #[serde(other)]
    Other,
}

impl RoomKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RoomKind::Public => "public",
            RoomKind::Private => "private",
            RoomKind::Direct => "direct",
            RoomKind::Other => "other",
        }
    }
}

/// What of a room makes a browser notification for the user while the tab is hidden (Campfire's
/// involvement levels).
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Notify {
    /// Every message by someone else.
    Everything,
    /// Messages that say `@name` (and, in a direct room, every message).
    #[default]
    Mentions,
    /// Nothing.
    Nothing,
    /// A level a newer server knows; treated as the default.
    #[serde(other)]
    Other,
}

impl Notify {
    pub fn as_str(self) -> &'static str {
        match self {
            Notify::Everything => "everything",
            Notify::Mentions | Notify::Other => "mentions",
            Notify::Nothing => "nothing",
        }
    }

    pub fn from_column(level: &str) -> Self {
        match level {
            "everything" => Notify::Everything,
            "nothing" => Notify::Nothing,
            _ => Notify::Mentions,
        }
    }
}

/// A room as a connection sees it.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomInfo {
    /// Its id in frames and URLs (`/r/<slug>`).
    pub slug: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub topic: String,
    pub kind: RoomKind,
    /// For a direct or private room, everyone in it by name, the user included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
    /// Whether the user is a member (a public room may be read without joining).
    #[serde(default)]
    pub member: bool,
    /// Read-only: nobody posts any more.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub archived: bool,
    /// The room's newest sequence number when this was sent.
    #[serde(default)]
    pub head: u64,
    /// The last sequence number the user has read here, on any device.
    #[serde(default)]
    pub last_read: u64,
    /// Messages by others after `last_read` (counted up to [`RESUME_LIMIT`]).
    #[serde(default)]
    pub unread: u32,
    /// How many of those mention the user (`@name`).
    #[serde(default)]
    pub mentions: u32,
    /// What of the room notifies the user.
    #[serde(default)]
    pub notify: Notify,
    /// The user created it, so may rename, archive, invite and remove (admins may too).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub manage: bool,
}

impl RoomInfo {
    /// What the sidebar and the header call it: `#name` for a room, the other people's names for a
    /// direct one.
    pub fn label(&self, me: &str) -> String {
        if self.kind != RoomKind::Direct {
            let name = if self.name.is_empty() {
                &self.slug
            } else {
                &self.name
            };
            return format!("#{name}");
        }
        let others: Vec<&str> = self
            .members
            .iter()
            .map(String::as_str)
            .filter(|name| *name != me)
            .collect();
        if others.is_empty() {
            me.to_owned()
        } else {
            others.join(", ")
        }
    }

    /// Its page: `/` for `general`, `/dm/<name>` for a conversation with one other person, `/r/<slug>`
    /// for the rest.
    pub fn path(&self, me: &str) -> String {
        if self.slug == GENERAL_ROOM {
            return "/".to_owned();
        }
        if self.kind == RoomKind::Direct {
            let mut others = self.members.iter().filter(|name| *name != me);
            if let (Some(other), None) = (others.next(), others.next()) {
                return format!("/dm/{}", path_segment(other));
            }
        }
        format!("/r/{}", path_segment(&self.slug))
    }
}

/// `text` as one URL path segment: unreserved ASCII as is, every other byte as `%XX`. (Names may hold
/// any printable character, `/` and `?` included.)
pub fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 15)]));
        }
    }
    out
}

/// What a composed text asks for: a message, or one of the slash commands the server carries out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slash<'a> {
    /// Post this text (a text starting with `//` is posted with one `/` fewer, so `//shrug` says
    /// `/shrug`).
    Text(&'a str),
    /// `/me <action>`: an action line, "Ann waves".
    Me(&'a str),
    /// `/topic <text>`: the room's topic (its owner or an admin).
    Topic(&'a str),
    /// `/invite <name>`: add someone to the room.
    Invite(&'a str),
    /// `/leave`: leave the room.
    Leave,
    /// `/help`: what the commands are.
    Help,
    /// A command nobody knows; refused, never posted.
    Unknown(&'a str),
}

/// The slash commands, as `/help` and the README list them.
pub const SLASH_HELP: &str = "Commands: /me <action> says what you do · /topic <text> sets this \
    room's topic · /invite <name> adds someone to this room · /leave leaves this room · /help shows \
    this. Start a message with // to post a text that starts with /.";

impl<'a> Slash<'a> {
    /// Reads a (validated) text.
    pub fn parse(text: &'a str) -> Self {
        let Some(rest) = text.strip_prefix('/') else {
            return Slash::Text(text);
        };
        if rest.starts_with('/') {
            return Slash::Text(rest);
        }
        let (command, argument) = match rest.split_once(char::is_whitespace) {
            Some((command, argument)) => (command, argument.trim()),
            None => (rest, ""),
        };
        match command {
            "me" => Slash::Me(argument),
            "topic" => Slash::Topic(argument),
            "invite" => Slash::Invite(argument.trim_start_matches('@')),
            "leave" => Slash::Leave,
            "help" => Slash::Help,
            other => Slash::Unknown(other),
        }
    }

    /// Whether the text becomes an event of the room (so the composer shows it as pending).
    pub fn posts(&self) -> bool {
        matches!(self, Slash::Text(_) | Slash::Me(_))
    }
}

/// Whether `text` mentions the person called `name`: `@name`, in any case, not inside a longer word (so
/// not an e-mail address either).
pub fn mentions(text: &str, name: &str) -> bool {
    let text = crate::unicode::to_lower(text);
    let wanted = format!("@{}", crate::unicode::to_lower(name));
    text.match_indices(&wanted).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + wanted.len()..].chars().next();
        before.is_none_or(|c| !c.is_alphanumeric()) && after.is_none_or(|c| !c.is_alphanumeric())
    })
}

/// A frame the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// Something happened in the room. Delivered in `seq` order, the same order to every connection.
    Event(ChatEvent),
    /// The connection is joined as this user: after a `join`, or at once for a browser that is already
    /// signed in (also again when its identity changes, such as a guest keeping their name).
    Joined(Identity),
    /// A `send` was stored as event `seq` (also when it had been stored before: retries are safe).
    Ack { id: Uuid, seq: u64 },
    /// Who is online in the room now; sent after its history (on connect, and after an `open`). Later
    /// changes in `general` arrive as join and leave events. At most [`PRESENCE_NAMES`] names, in
    /// name order; `more` counts those online beyond them.
    Presence {
        #[serde(default = "general", skip_serializing_if = "is_general")]
        room: String,
        online: Vec<String>,
        #[serde(default, skip_serializing_if = "is_zero")]
        more: u32,
    },
    /// Someone is typing. Not stored.
    Typing {
        #[serde(default = "general", skip_serializing_if = "is_general")]
        room: String,
        name: String,
    },
    /// An older page of events, oldest first; `complete` when it reaches the start of the room.
    History {
        #[serde(default = "general", skip_serializing_if = "is_general")]
        room: String,
        events: Vec<ChatEvent>,
        complete: bool,
    },
    /// The resume cursor did not fit the room: past its newest event (a restored database, the memory
    /// store after a restart) or too far behind to replay ([`RESUME_LIMIT`]). These are the room's
    /// newest events, oldest first, as on a fresh connect: replace what is shown with them. Also the
    /// answer to an `open` without a cursor.
    Reset {
        #[serde(default = "general", skip_serializing_if = "is_general")]
        room: String,
        events: Vec<ChatEvent>,
        complete: bool,
    },
    /// The rooms this connection's user is in (after [`ServerFrame::Joined`]; `general` alone for a
    /// reader). Live events of all of them arrive on this one socket.
    Rooms { rooms: Vec<RoomInfo> },
    /// A room was added to the user's rooms (created, joined, invited to, a DM opened) or changed.
    Room(RoomInfo),
    /// The user is no longer in `room` (left, or removed): nothing more of it arrives.
    RoomGone { room: String },
    /// The public rooms, for "Browse rooms".
    Directory { rooms: Vec<RoomInfo> },
    /// The user read `room` up to `seq` (in this tab or another, on any device): clear its badge.
    Read { room: String, seq: u64 },
    /// The `leave` succeeded; the connection stays open as a reader.
    Left,
    /// The answer to a slash command sent as message `id` that posts nothing (`/help`): show `reply`.
    Command { id: Uuid, reply: String },
    /// A frame was refused. `id` names the refused message when there was one; `retry_after_ms`, with
    /// `rate_limited`, says when the same message will be accepted.
    Error {
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Uuid>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// A frame type a newer server sends; older clients ignore it.
    #[serde(other)]
    Unknown,
}

impl ServerFrame {
    /// Serialises an `event` frame from a borrowed event, so the hub need not clone it to encode it.
    pub fn encode_event(event: &ChatEvent) -> String {
        #[derive(Serialize)]
        #[serde(tag = "type", rename_all = "snake_case")]
        enum Borrowed<'a> {
            Event(&'a ChatEvent),
        }
        serde_json::to_string(&Borrowed::Event(event)).expect("events always serialise")
    }

    /// Serialises any frame.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("server frames always serialise")
    }
}

/// One stored event of a room.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatEvent {
    /// Position in the room, starting at 1 and without gaps: the server's one ordering authority.
    pub seq: u64,
    /// The message's uuid (the client's for messages, the server's for join lines).
    pub id: Uuid,
    pub room: String,
    /// Server time the event was stored, in milliseconds since the Unix epoch.
    pub at: i64,
    pub kind: EventKind,
    pub name: String,
    /// Who wrote it (nil only for events written before accounts existed and never migrated).
    #[serde(default)]
    pub user_id: Uuid,
    /// What kind of account wrote it, when it was written; omitted for guests.
    #[serde(default, skip_serializing_if = "UserKind::is_guest")]
    pub user_kind: UserKind,
    /// The message text; empty for join lines.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub text: String,
    /// For a `delete`: the id of the message it deletes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Uuid>,
}

#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Message,
    /// `/me waves`: a message shown as an action of its author ("Ann waves"); its text is the action.
    Action,
    Join,
    Leave,
    /// Message `target` was deleted (by its author or an admin): clients remove it.
    Delete,
    /// What a deleted message becomes in the history: its place in the sequence, without its text.
    Deleted,
    /// A kind a newer server stores; shown as nothing by older clients.
    #[serde(other)]
    Unknown,
}

impl ChatEvent {
    /// The line a person reads for this event, for system lines (joins and leaves). `general` keeps the
    /// chat's own words; other rooms name themselves.
    pub fn system_line(&self) -> Option<String> {
        let place = if is_general(&self.room) {
            "the chat".to_owned()
        } else {
            format!("#{}", self.room)
        };
        match self.kind {
            EventKind::Join => Some(format!("{} has joined {place}.", self.name)),
            EventKind::Leave => Some(format!("{} has left {place}.", self.name)),
            EventKind::Message
            | EventKind::Action
            | EventKind::Delete
            | EventKind::Deleted
            | EventKind::Unknown => None,
        }
    }

    /// Whether someone said it (a message or a `/me` action): what is unread, mentions, and may be
    /// deleted.
    pub fn is_message(&self) -> bool {
        matches!(self.kind, EventKind::Message | EventKind::Action)
    }

    /// Whether the event is a row of the list (a message or a system line), not bookkeeping.
    pub fn is_shown(&self) -> bool {
        matches!(
            self.kind,
            EventKind::Message | EventKind::Action | EventKind::Join | EventKind::Leave
        )
    }
}

/// Stable, machine-readable reasons for an [`ServerFrame::Error`]; the `message` beside it is for people.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not valid JSON.
    BadJson,
    /// The frame is JSON, but its `type` is missing or unknown.
    UnknownType,
    /// The frame's `type` is known, but its fields are missing or of the wrong kind.
    BadFrame,
    /// Binary frames are not part of the protocol.
    BinaryFrame,
    /// The frame is larger than [`MAX_FRAME_BYTES`]; the connection is closed.
    FrameTooLarge,
    NameBlank,
    NameTooLong,
    NameInvalid,
    /// The connection already joined under another name.
    AlreadyJoined,
    /// Someone else connected holds this name.
    NameTaken,
    /// The name belongs to a member (or is locked): sign in to use it.
    NameOwned,
    /// A `send` before a successful `join`.
    NotJoined,
    TextBlank,
    TextTooLong,
    TextInvalid,
    /// Too many messages in too short a time; the message was not stored and may be sent again later.
    RateLimited,
    /// The server could not store the event; nothing was stored and the message may be sent again.
    Unavailable,
    /// What the frame names does not exist (or is not this user's to see).
    NotFound,
    /// This user may not do that (delete someone else's message without being an admin).
    NotAllowed,
    /// `CONFAB_ACCESS=members`: a guest may read but not post.
    MembersOnly,
    /// `CONFAB_ACCESS=invite`: a new person needs an invite link first; the connection closes with 4004.
    InviteRequired,
    /// The sign-in token has expired; the connection closes with 4002. Get a fresh one.
    TokenExpired,
    /// The sign-in token is not valid (signature, algorithm, claims); the connection closes with 4003.
    TokenInvalid,
    RoomNameBlank,
    RoomNameTooLong,
    RoomNameInvalid,
    /// Another room has this name (rooms are compared by slug).
    RoomTaken,
    TopicTooLong,
    TopicInvalid,
    /// A direct message to more than [`MAX_DM_MEMBERS`] people, or to nobody.
    TooManyMembers,
    /// The API: no bot token, or one that is not valid (never says which).
    Unauthorized,
    /// The API: the request body is larger than the API takes.
    BodyTooLarge,
    /// The API: a message with this id exists with other text or by someone else.
    Conflict,
    /// A `/command` the server does not know; nothing was posted.
    UnknownCommand,
    /// A code a newer server sends; treat it by its message.
    #[serde(other)]
    Other,
}

/// Why a room name or topic was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomNameError {
    Blank,
    TooLong,
    Invalid,
    TopicTooLong,
    TopicInvalid,
}

impl RoomNameError {
    pub fn code(self) -> ErrorCode {
        match self {
            RoomNameError::Blank => ErrorCode::RoomNameBlank,
            RoomNameError::TooLong => ErrorCode::RoomNameTooLong,
            RoomNameError::Invalid => ErrorCode::RoomNameInvalid,
            RoomNameError::TopicTooLong => ErrorCode::TopicTooLong,
            RoomNameError::TopicInvalid => ErrorCode::TopicInvalid,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            RoomNameError::Blank => "Give the room a name.",
            RoomNameError::TooLong => "Room names may be at most 40 characters.",
            RoomNameError::Invalid => {
                "Room names cannot contain control or invisible formatting characters."
            }
            RoomNameError::TopicTooLong => "Topics may be at most 200 characters.",
            RoomNameError::TopicInvalid => "Topics cannot contain control characters.",
        }
    }
}

/// A room's name as shown (trimmed, checked like a person's name but up to [`MAX_ROOM_NAME_CHARS`]) and
/// the slug derived from it: lower-case letters and digits, every other run of characters one `-`. A name
/// with no letter or digit at all gets the slug `room`; the store makes slugs unique.
pub fn validate_room_name(raw: &str) -> Result<(String, String), RoomNameError> {
    let name = raw.trim_matches(is_invisible);
    if name.is_empty() {
        return Err(RoomNameError::Blank);
    }
    if name.chars().any(is_forbidden_in_name) {
        return Err(RoomNameError::Invalid);
    }
    if name.chars().count() > MAX_ROOM_NAME_CHARS {
        return Err(RoomNameError::TooLong);
    }
    let mut slug = String::with_capacity(name.len());
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_alphanumeric() {
            slug.push(c);
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let slug = slug.trim_end_matches('-');
    let slug = if slug.is_empty() { "room" } else { slug };
    Ok((name.to_owned(), slug.to_owned()))
}

/// A topic: trimmed; may be empty, at most [`MAX_TOPIC_CHARS`], on one line.
pub fn validate_topic(raw: &str) -> Result<String, RoomNameError> {
    let topic = raw.trim_matches(is_invisible);
    if topic
        .chars()
        .any(|c| c.is_control() || is_forbidden_in_name(c))
    {
        return Err(RoomNameError::TopicInvalid);
    }
    if topic.chars().count() > MAX_TOPIC_CHARS {
        return Err(RoomNameError::TopicTooLong);
    }
    Ok(topic.to_owned())
}

/// Why a name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    Blank,
    TooLong,
    Invalid,
}

impl NameError {
    pub fn code(self) -> ErrorCode {
        match self {
            NameError::Blank => ErrorCode::NameBlank,
            NameError::TooLong => ErrorCode::NameTooLong,
            NameError::Invalid => ErrorCode::NameInvalid,
        }
    }

    /// The sentence shown under the name field.
    pub fn message(self) -> &'static str {
        match self {
            NameError::Blank => "Name cannot be blank!",
            NameError::TooLong => "Name is too long: use at most 32 characters.",
            NameError::Invalid => "Name cannot contain control or invisible formatting characters.",
        }
    }
}

/// Why a message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextError {
    Blank,
    TooLong,
    Invalid,
}

impl TextError {
    pub fn code(self) -> ErrorCode {
        match self {
            TextError::Blank => ErrorCode::TextBlank,
            TextError::TooLong => ErrorCode::TextTooLong,
            TextError::Invalid => ErrorCode::TextInvalid,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            TextError::Blank => "Message cannot be blank.",
            TextError::TooLong => "Message is too long: use at most 4000 characters.",
            TextError::Invalid => "Message cannot contain control characters.",
        }
    }
}

/// Characters that render as nothing. A name made only of them is blank, and they may not lead or trail.
fn is_invisible(c: char) -> bool {
    c.is_whitespace() || matches!(c, '\u{200B}' | '\u{2060}' | '\u{FEFF}')
}

/// Characters that let a name disguise itself or others (bidi overrides) or break the layout.
/// Zero-width joiners stay allowed inside a name: emoji sequences such as 👩‍💻 need them.
fn is_forbidden_in_name(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Normalises a name as the room will show it: trimmed, non-blank, at most [`MAX_NAME_CHARS`] characters,
/// with no control or bidi-override characters.
pub fn validate_name(raw: &str) -> Result<String, NameError> {
    let name = raw.trim_matches(is_invisible);
    if name.is_empty() {
        return Err(NameError::Blank);
    }
    if name.chars().any(is_forbidden_in_name) {
        return Err(NameError::Invalid);
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(NameError::TooLong);
    }
    Ok(name.to_owned())
}

/// Normalises a message: line endings become `\n`, the ends are trimmed, and inner newlines and tabs are kept.
pub fn validate_text(raw: &str) -> Result<String, TextError> {
    let text = raw.replace("\r\n", "\n");
    let text = text.trim_matches(is_invisible);
    if text.is_empty() {
        return Err(TextError::Blank);
    }
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(TextError::Invalid);
    }
    if text.chars().count() > MAX_TEXT_CHARS {
        return Err(TextError::TooLong);
    }
    Ok(text.to_owned())
}

/// Why a text frame could not be read as a [`ClientFrame`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    pub code: ErrorCode,
    pub message: String,
}

/// Parses one text frame, telling bad JSON, an unknown `type` and a malformed known frame apart.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, FrameError> {
    let err = match serde_json::from_str::<ClientFrame>(text) {
        Ok(frame) => return Ok(frame),
        Err(err) => err,
    };
    if err.is_syntax() || err.is_eof() {
        return Err(FrameError {
            code: ErrorCode::BadJson,
            message: format!("The frame is not valid JSON: {err}."),
        });
    }
    #[derive(Deserialize)]
    struct TypeOnly {
        #[serde(rename = "type")]
        kind: Option<serde_json::Value>,
    }
    let kind = serde_json::from_str::<TypeOnly>(text)
        .ok()
        .and_then(|t| t.kind);
    match kind.as_ref().and_then(|k| k.as_str()) {
        Some(k) if CLIENT_FRAME_TYPES.contains(&k) => Err(FrameError {
            code: ErrorCode::BadFrame,
            message: format!("The \"{k}\" frame is malformed: {err}."),
        }),
        Some(k) => Err(FrameError {
            code: ErrorCode::UnknownType,
            message: format!(
                "Unknown frame type \"{}\"; expected one of: {}.",
                k.chars().take(40).collect::<String>(),
                CLIENT_FRAME_TYPES.join(", ")
            ),
        }),
        None => Err(FrameError {
            code: ErrorCode::UnknownType,
            message: "The frame has no \"type\" field.".to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_checked() {
        assert_eq!(validate_name("  Ann Lee \t").unwrap(), "Ann Lee");
        assert_eq!(validate_name(""), Err(NameError::Blank));
        assert_eq!(validate_name(" \t\n "), Err(NameError::Blank));
        assert_eq!(validate_name("\u{200B}\u{FEFF}"), Err(NameError::Blank));
        assert_eq!(validate_name("a\u{0007}b"), Err(NameError::Invalid));
        assert_eq!(
            validate_name("evil\u{202E}gnp.exe"),
            Err(NameError::Invalid)
        );
        assert_eq!(validate_name(&"x".repeat(32)).unwrap().len(), 32);
        assert_eq!(validate_name(&"x".repeat(33)), Err(NameError::TooLong));
        // 32 multi-byte characters are within the limit: it counts characters, not bytes.
        assert!(validate_name(&"é".repeat(32)).is_ok());
        assert_eq!(validate_name("👩‍💻 Dev").unwrap(), "👩‍💻 Dev");
        assert_eq!(NameError::Blank.message(), "Name cannot be blank!");
    }

    #[test]
    fn texts_keep_inner_newlines() {
        assert_eq!(validate_text("\r\n hi\r\nthere \n").unwrap(), "hi\nthere");
        assert_eq!(validate_text("a\tb").unwrap(), "a\tb");
        assert_eq!(validate_text("  \n "), Err(TextError::Blank));
        assert_eq!(validate_text("nul\u{0000}"), Err(TextError::Invalid));
        assert!(validate_text(&"字".repeat(MAX_TEXT_CHARS)).is_ok());
        assert_eq!(
            validate_text(&"a".repeat(MAX_TEXT_CHARS + 1)),
            Err(TextError::TooLong)
        );
        assert_eq!(validate_text("<b>x</b>").unwrap(), "<b>x</b>");
    }

    #[test]
    fn client_frames_round_trip() {
        let id = Uuid::new_v4();
        for frame in [
            ClientFrame::Join { name: "Ann".into() },
            ClientFrame::Send {
                room: GENERAL_ROOM.into(),
                id,
                text: "hi\nthere".into(),
            },
            ClientFrame::Send {
                room: "design".into(),
                id,
                text: "x".into(),
            },
            ClientFrame::Delete {
                room: GENERAL_ROOM.into(),
                id,
            },
            ClientFrame::Open {
                room: "dm.0a1b".into(),
                after: Some(4),
            },
            ClientFrame::CreateRoom {
                name: "Design".into(),
                topic: String::new(),
                private: true,
            },
            ClientFrame::Dm {
                with: vec!["Bo".into()],
            },
            ClientFrame::Typing {
                room: GENERAL_ROOM.into(),
            },
            ClientFrame::Notify {
                room: "design".into(),
                level: Notify::Nothing,
            },
            ClientFrame::Browse,
        ] {
            let json = serde_json::to_string(&frame).unwrap();
            assert_eq!(parse_client_frame(&json).unwrap(), frame);
        }
        // `general` is the default room, so a frame from before rooms means the same as ever.
        let json = serde_json::to_string(&ClientFrame::Send {
            room: GENERAL_ROOM.into(),
            id,
            text: "x".into(),
        })
        .unwrap();
        assert_eq!(json, format!(r#"{{"type":"send","id":"{id}","text":"x"}}"#));
        assert_eq!(
            parse_client_frame(r#"{"type":"typing"}"#).unwrap(),
            ClientFrame::Typing {
                room: GENERAL_ROOM.into()
            }
        );
        assert_eq!(
            parse_client_frame(r#"{"type":"history","before":9}"#).unwrap(),
            ClientFrame::History {
                room: GENERAL_ROOM.into(),
                before: 9
            }
        );
    }

    #[test]
    fn server_frames_round_trip() {
        let id = Uuid::new_v4();
        let event = ChatEvent {
            seq: 7,
            id,
            room: GENERAL_ROOM.into(),
            at: 1_700_000_000_000,
            kind: EventKind::Message,
            name: "Ann".into(),
            user_id: Uuid::new_v4(),
            user_kind: UserKind::Member,
            text: "<script>".into(),
            target: None,
        };
        let frames = [
            ServerFrame::Event(event.clone()),
            ServerFrame::Event(ChatEvent {
                kind: EventKind::Join,
                text: String::new(),
                target: None,
                ..event.clone()
            }),
            ServerFrame::Joined(Identity {
                name: "Ann".into(),
                user_id: id,
                kind: UserKind::Member,
                admin: true,
                via: Via::Password,
            }),
            ServerFrame::Ack { id, seq: 7 },
            ServerFrame::Presence {
                room: GENERAL_ROOM.into(),
                online: vec!["Ann".into(), "Bo".into()],
                more: 0,
            },
            ServerFrame::Presence {
                room: "design".into(),
                online: vec!["Ann".into()],
                more: 4_000,
            },
            ServerFrame::Typing {
                room: "design".into(),
                name: "Ann".into(),
            },
            ServerFrame::History {
                room: GENERAL_ROOM.into(),
                events: vec![event.clone()],
                complete: true,
            },
            ServerFrame::Reset {
                room: "design".into(),
                events: vec![event.clone()],
                complete: false,
            },
            ServerFrame::Rooms {
                rooms: vec![RoomInfo {
                    slug: "dm.ab".into(),
                    name: String::new(),
                    topic: String::new(),
                    kind: RoomKind::Direct,
                    members: vec!["Ann".into(), "Bo".into()],
                    member: true,
                    archived: false,
                    head: 3,
                    last_read: 2,
                    unread: 1,
                    mentions: 1,
                    notify: Notify::Everything,
                    manage: false,
                }],
            },
            ServerFrame::Room(RoomInfo {
                slug: "design".into(),
                name: "Design".into(),
                topic: "Pixels".into(),
                kind: RoomKind::Private,
                members: vec![],
                member: true,
                archived: true,
                head: 0,
                last_read: 0,
                unread: 0,
                mentions: 0,
                notify: Notify::Mentions,
                manage: true,
            }),
            ServerFrame::RoomGone {
                room: "design".into(),
            },
            ServerFrame::Left,
            ServerFrame::Error {
                code: ErrorCode::RateLimited,
                message: "slow down".into(),
                id: Some(id),
                retry_after_ms: Some(250),
            },
            ServerFrame::Error {
                code: ErrorCode::BadJson,
                message: "bad".into(),
                id: None,
                retry_after_ms: None,
            },
        ];
        assert_eq!(ServerFrame::encode_event(&event), frames[0].encode());
        for frame in frames {
            let json = frame.encode();
            assert_eq!(
                serde_json::from_str::<ServerFrame>(&json).unwrap(),
                frame,
                "{json}"
            );
        }
        let join = serde_json::to_value(ServerFrame::Event(ChatEvent {
            seq: 1,
            id,
            room: GENERAL_ROOM.into(),
            at: 5,
            kind: EventKind::Join,
            name: "Bo".into(),
            user_id: id,
            user_kind: UserKind::Guest,
            text: String::new(),
            target: None,
        }))
        .unwrap();
        assert_eq!(join["type"], "event");
        assert_eq!(join["kind"], "join");
        assert!(join.get("text").is_none());
        assert!(join.get("user_kind").is_none(), "guests are the default");
        assert_eq!(join["user_id"], id.to_string());
    }

    #[test]
    fn newer_frames_kinds_and_codes_are_tolerated() {
        // A newer server's frame type, event kind and error code still parse, so an old page keeps
        // working through a rolling deploy.
        assert_eq!(
            serde_json::from_str::<ServerFrame>(r#"{"type":"reaction","emoji":"x"}"#).unwrap(),
            ServerFrame::Unknown
        );
        let event: ServerFrame = serde_json::from_str(
            r#"{"type":"event","seq":3,"id":"00000000-0000-0000-0000-000000000001","room":"general",
                "at":1,"kind":"poll","name":"Ann"}"#,
        )
        .unwrap();
        let ServerFrame::Event(event) = event else {
            panic!("an event")
        };
        assert_eq!(event.kind, EventKind::Unknown);
        assert_eq!(event.system_line(), None);
        assert!(
            event.user_id.is_nil(),
            "events from before accounts have no author id"
        );
        let error: ServerFrame =
            serde_json::from_str(r#"{"type":"error","code":"brand_new","message":"m"}"#).unwrap();
        assert!(matches!(
            error,
            ServerFrame::Error {
                code: ErrorCode::Other,
                ..
            }
        ));
    }

    #[test]
    fn passwords_have_a_floor_and_a_ceiling() {
        assert_eq!(validate_password(""), Err(PasswordError::Blank));
        assert_eq!(validate_password("seven77"), Err(PasswordError::TooShort));
        assert!(validate_password("eight888").is_ok());
        assert!(validate_password("        ").is_ok(), "spaces count");
        assert!(validate_password(&"é".repeat(512)).is_ok(), "1024 bytes");
        assert_eq!(
            validate_password(&"x".repeat(MAX_PASSWORD_BYTES + 1)),
            Err(PasswordError::TooLong)
        );
    }

    #[test]
    fn bad_frames_are_told_apart() {
        assert_eq!(
            parse_client_frame("{not json").unwrap_err().code,
            ErrorCode::BadJson
        );
        assert_eq!(parse_client_frame("").unwrap_err().code, ErrorCode::BadJson);
        assert_eq!(
            parse_client_frame(r#"{"type":"dance"}"#).unwrap_err().code,
            ErrorCode::UnknownType
        );
        assert_eq!(
            parse_client_frame(r#"{"name":"x"}"#).unwrap_err().code,
            ErrorCode::UnknownType
        );
        assert_eq!(
            parse_client_frame("[1,2]").unwrap_err().code,
            ErrorCode::UnknownType
        );
        assert_eq!(
            parse_client_frame(r#"{"type":"join"}"#).unwrap_err().code,
            ErrorCode::BadFrame
        );
        let bad_id = parse_client_frame(r#"{"type":"send","id":"nope","text":"x"}"#).unwrap_err();
        assert_eq!(bad_id.code, ErrorCode::BadFrame);
        assert!(bad_id.message.contains("send"), "{}", bad_id.message);
    }

    #[test]
    fn join_line_reads_naturally() {
        let event = ChatEvent {
            seq: 1,
            id: Uuid::nil(),
            room: GENERAL_ROOM.into(),
            at: 0,
            kind: EventKind::Join,
            name: "Zoë".into(),
            user_id: Uuid::nil(),
            user_kind: UserKind::Guest,
            text: String::new(),
            target: None,
        };
        assert_eq!(
            event.system_line().as_deref(),
            Some("Zoë has joined the chat.")
        );
        let elsewhere = ChatEvent {
            room: "design".into(),
            ..event.clone()
        };
        assert_eq!(
            elsewhere.system_line().as_deref(),
            Some("Zoë has joined #design.")
        );
        assert_eq!(
            ChatEvent {
                kind: EventKind::Leave,
                ..elsewhere
            }
            .system_line()
            .as_deref(),
            Some("Zoë has left #design.")
        );
    }

    #[test]
    fn mentions_are_whole_names_in_any_case() {
        assert!(mentions("hi @Ann", "ann"));
        assert!(mentions("@ANN, look", "Ann"));
        assert!(mentions("cc @zoë.", "Zoë"));
        assert!(mentions("@Ann Lee: yes", "Ann Lee"));
        assert!(!mentions("hi @Annabel", "Ann"));
        assert!(!mentions("hi Ann", "Ann"));
        assert!(!mentions("mail ann@example.com", "example"));
    }

    #[test]
    fn room_names_give_slugs_and_are_checked() {
        let slug = |raw: &str| validate_room_name(raw).map(|(_, slug)| slug);
        assert_eq!(
            validate_room_name("  Design Crit! ").unwrap(),
            ("Design Crit!".to_owned(), "design-crit".to_owned())
        );
        assert_eq!(slug("C++ / Rust"), Ok("c-rust".to_owned()));
        assert_eq!(slug("Café Überall"), Ok("café-überall".to_owned()));
        assert_eq!(slug("🎉🎉"), Ok("room".to_owned()));
        assert_eq!(slug("--x--"), Ok("x".to_owned()));
        assert_eq!(validate_room_name(" \t "), Err(RoomNameError::Blank));
        assert_eq!(
            validate_room_name("a\u{0007}b"),
            Err(RoomNameError::Invalid)
        );
        assert_eq!(
            validate_room_name("x\u{202E}y"),
            Err(RoomNameError::Invalid)
        );
        assert!(validate_room_name(&"é".repeat(MAX_ROOM_NAME_CHARS)).is_ok());
        assert_eq!(
            validate_room_name(&"x".repeat(MAX_ROOM_NAME_CHARS + 1)),
            Err(RoomNameError::TooLong)
        );
        // No slug can hold a space or a dot: DM slugs (`dm.…`) and NOTIFY payloads stay unambiguous.
        for raw in ["a b", "a.b", "a · b", "Ω mega . 2"] {
            let slug = slug(raw).unwrap();
            assert!(!slug.contains([' ', '.', '\t']), "{slug}");
        }
        assert_eq!(
            validate_topic("  all things pixel "),
            Ok("all things pixel".into())
        );
        assert_eq!(validate_topic(""), Ok(String::new()));
        assert_eq!(validate_topic("a\nb"), Err(RoomNameError::TopicInvalid));
        assert_eq!(
            validate_topic(&"t".repeat(MAX_TOPIC_CHARS + 1)),
            Err(RoomNameError::TopicTooLong)
        );
    }

    #[test]
    fn slash_commands_are_read_and_everything_else_is_text() {
        assert_eq!(Slash::parse("hello"), Slash::Text("hello"));
        assert_eq!(Slash::parse("/me waves"), Slash::Me("waves"));
        assert_eq!(Slash::parse("/me"), Slash::Me(""));
        assert_eq!(
            Slash::parse("/topic  New\ttopic "),
            Slash::Topic("New\ttopic")
        );
        assert_eq!(Slash::parse("/invite @Ann Lee"), Slash::Invite("Ann Lee"));
        assert_eq!(Slash::parse("/leave"), Slash::Leave);
        assert_eq!(Slash::parse("/help"), Slash::Help);
        assert_eq!(Slash::parse("/shrug ok"), Slash::Unknown("shrug"));
        assert_eq!(Slash::parse("//shrug"), Slash::Text("/shrug"));
        assert_eq!(Slash::parse("a /me b"), Slash::Text("a /me b"));
        assert!(Slash::parse("/me x").posts() && !Slash::parse("/help").posts());
    }
}
