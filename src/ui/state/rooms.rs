//! The chat's rooms as the page sees them: the sidebar with what is unread in each, switching the
//! shown room, read marks, notifications, and what a user asks of a room.

use super::Chat;
use crate::protocol::{
    mentions, ChatEvent, ClientFrame, EventKind, Notify, RoomInfo, RoomKind, GENERAL_ROOM,
};
use leptos::prelude::*;
use std::time::Duration;

/// A room the user asked for, to show once the server's `room` frame names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// A room being made, by the name typed.
    Made(String),
    /// A room being joined (or read), by slug.
    Slug(String),
    /// A conversation with these people, by name.
    With(Vec<String>),
}

/// Read marks go at most this often while messages keep coming in the shown room.
const READ_EVERY: Duration = Duration::from_secs(1);

impl Chat {
    /// The shown room as the sidebar has it.
    pub fn shown(&self) -> Option<RoomInfo> {
        let slug = self.room.get();
        self.rooms
            .with(|rooms| rooms.iter().find(|r| r.slug == slug).cloned())
    }

    /// The name we are known by, for mentions and for naming direct rooms.
    pub fn my_name(&self) -> String {
        self.name.get_untracked().unwrap_or_default()
    }

    /// Unread messages over every room, for the title.
    pub fn unread_total(&self) -> u32 {
        self.rooms
            .with(|rooms| rooms.iter().map(|r| r.unread).sum())
    }

    /// Whether we may rename, archive, invite to and remove from the shown room.
    pub fn may_manage(&self, room: &RoomInfo) -> bool {
        room.slug != GENERAL_ROOM
            && room.kind != RoomKind::Direct
            && room.member
            && (room.manage || self.me.with(|me| me.as_ref().is_some_and(|me| me.admin)))
    }

    /// Shows room `slug` (its history comes from the server), and puts its page in the address bar
    /// when `navigate`; back and forward come here with `navigate` false.
    pub fn open_room(&self, slug: &str, navigate: bool) {
        self.menu_open.set(false);
        if self.room.with_untracked(|shown| shown == slug) {
            return;
        }
        let info = self
            .rooms
            .with_untracked(|rooms| rooms.iter().find(|r| r.slug == slug).cloned());
        self.room.set(slug.to_owned());
        self.divider
            .set(info.as_ref().filter(|r| r.unread > 0).map(|r| r.last_read));
        self.events.set(Vec::new());
        self.online.set(Vec::new());
        self.typing.set(Vec::new());
        self.history_complete.set(false);
        self.loading_older.set(false);
        // Only the shown room's messages are on screen; the outbox keeps the others'.
        self.opening.set_value(Some(slug.to_owned()));
        self.transmit(&ClientFrame::Open {
            room: slug.to_owned(),
            after: None,
        });
        if navigate {
            if let (Some(link), Some(info)) = (self.link.get_value(), info) {
                link.navigate(&info.path(&self.my_name()));
            }
        }
    }

    /// The room a page address names (`/`, `/r/<slug>`, `/dm/<name>`, already decoded), if the
    /// sidebar has it.
    pub fn room_at(&self, prefix: &str, value: &str) -> Option<String> {
        let me = self.my_name();
        self.rooms.with_untracked(|rooms| {
            rooms
                .iter()
                .find(|room| match prefix {
                    "r" => room.slug == value,
                    "dm" => {
                        room.kind == RoomKind::Direct
                            && room.path(&me)
                                == format!("/dm/{}", crate::protocol::path_segment(value))
                    }
                    _ => room.slug == GENERAL_ROOM,
                })
                .map(|room| room.slug.clone())
        })
    }

    /// Makes a room; it opens once the server has made it.
    pub fn create_room(&self, name: &str, topic: &str, private: bool) -> bool {
        match crate::protocol::validate_room_name(name) {
            Ok((name, _)) => {
                self.want.set_value(Some(Want::Made(name.clone())));
                self.transmit(&ClientFrame::CreateRoom {
                    name,
                    topic: topic.trim().to_owned(),
                    private,
                })
            }
            Err(err) => {
                self.notice.set(Some(err.message().to_owned()));
                false
            }
        }
    }

    /// Joins public room `slug`, and shows it.
    pub fn join_room(&self, slug: &str) {
        self.want.set_value(Some(Want::Slug(slug.to_owned())));
        self.transmit(&ClientFrame::JoinRoom {
            room: slug.to_owned(),
        });
        self.directory.set(None);
    }

    /// Reads public room `slug` without joining it.
    pub fn peek_room(&self, slug: &str) {
        self.directory.set(None);
        if self
            .rooms
            .with_untracked(|rooms| rooms.iter().any(|r| r.slug == slug))
        {
            return self.open_room(slug, true);
        }
        let listed = RoomInfo {
            slug: slug.to_owned(),
            name: slug.to_owned(),
            topic: String::new(),
            kind: RoomKind::Public,
            members: Vec::new(),
            member: false,
            archived: false,
            head: 0,
            last_read: 0,
            unread: 0,
            mentions: 0,
            notify: Notify::default(),
            manage: false,
        };
        let found = self.directory_entry(slug).unwrap_or(listed);
        self.rooms.update(|rooms| rooms.push(found));
        self.open_room(slug, true);
    }

    fn directory_entry(&self, slug: &str) -> Option<RoomInfo> {
        self.directory.with_untracked(|d| {
            d.as_ref()
                .and_then(|rooms| rooms.iter().find(|r| r.slug == slug).cloned())
        })
    }

    /// Leaves room `slug`, and goes back to `general`.
    pub fn leave_room(&self, slug: &str) {
        if self.room.with_untracked(|shown| shown == slug) {
            self.open_room(GENERAL_ROOM, true);
        }
        self.transmit(&ClientFrame::LeaveRoom {
            room: slug.to_owned(),
        });
    }

    /// Opens the conversation with `names` (made on first use).
    pub fn direct(&self, names: Vec<String>) {
        self.want.set_value(Some(Want::With(names.clone())));
        self.transmit(&ClientFrame::Dm { with: names });
    }

    /// Lists the public rooms.
    pub fn browse(&self) {
        if !self.transmit(&ClientFrame::Browse) {
            self.notice
                .set(Some("Not connected: try again in a moment.".to_owned()));
        }
    }

    pub fn invite(&self, room: &str, name: &str) {
        self.transmit(&ClientFrame::Invite {
            room: room.to_owned(),
            name: name.trim().to_owned(),
        });
    }

    pub fn remove(&self, room: &str, name: &str) {
        self.transmit(&ClientFrame::Remove {
            room: room.to_owned(),
            name: name.to_owned(),
        });
    }

    /// Renames the room, changes its topic or archives it; `None` keeps what is.
    pub fn update_room(
        &self,
        room: &str,
        name: Option<String>,
        topic: Option<String>,
        archived: Option<bool>,
    ) {
        self.transmit(&ClientFrame::UpdateRoom {
            room: room.to_owned(),
            name,
            topic,
            archived,
        });
    }

    pub fn set_notify(&self, room: &str, level: Notify) {
        self.transmit(&ClientFrame::Notify {
            room: room.to_owned(),
            level,
        });
        self.edit(room, |r| r.notify = level);
    }

    /// Everything in the shown room is read: it stops counting, here at once and in the user's other
    /// tabs once the mark (sent at most once a second) arrives.
    pub fn mark_read(&self) {
        let Some(seq) = self.events.with_untracked(|e| e.last().map(|e| e.seq)) else {
            return;
        };
        let room = self.room.get_untracked();
        let before = self.rooms.with_untracked(|rooms| {
            rooms
                .iter()
                .find(|r| r.slug == room)
                .map(|r| (r.last_read, r.unread))
        });
        let Some((last_read, unread)) = before else {
            return;
        };
        if seq <= last_read && unread == 0 {
            return;
        }
        self.edit(&room, |r| {
            r.last_read = r.last_read.max(seq);
            r.unread = 0;
            r.mentions = 0;
        });
        if !self.joined.get_untracked() || self.read_due.get_value() {
            return;
        }
        self.read_due.set_value(true);
        let chat = *self;
        let send = move || {
            chat.read_due.set_value(false);
            let room = chat.room.get_untracked();
            let mark = chat
                .rooms
                .with_untracked(|rooms| rooms.iter().find(|r| r.slug == room).map(|r| r.last_read));
            if let Some(seq) = mark.filter(|seq| *seq > 0) {
                chat.transmit(&ClientFrame::Read { room, seq });
            }
        };
        match self.link.get_value() {
            Some(link) => link.after(READ_EVERY, Box::new(send)),
            None => send(),
        }
    }

    /// An event of the shown room: its head moves, and, while nobody looks (the tab is hidden), it
    /// counts as unread and may notify.
    pub(super) fn heard(&self, event: &ChatEvent) {
        self.count(event, !self.visible.get_untracked());
    }

    /// An event of a room not shown: it counts as unread, and may notify.
    pub(super) fn elsewhere(&self, event: &ChatEvent) {
        let id = event.id;
        self.pending
            .update(|pending| pending.retain(|p| p.id != id));
        self.count(event, true);
    }

    fn count(&self, event: &ChatEvent, unseen: bool) {
        let me = self
            .me
            .with_untracked(|me| me.as_ref().map(|me| me.user_id));
        let theirs = event.is_message() && me != Some(event.user_id);
        let name = self.my_name();
        let mentioned = theirs && !name.is_empty() && mentions(&event.text, &name);
        // What the notification needs, without copying the whole entry on every event.
        let mut room = None;
        self.edit(&event.room, |r| {
            r.head = r.head.max(event.seq);
            if theirs && unseen && event.seq > r.last_read {
                r.unread += 1;
                r.mentions += u32::from(mentioned);
            }
            // A private room's people list follows its join and leave lines (an invitation, a
            // removal), which every member hears.
            if r.kind == RoomKind::Private {
                match event.kind {
                    EventKind::Join if !r.members.contains(&event.name) => {
                        r.members.push(event.name.clone())
                    }
                    EventKind::Leave => r.members.retain(|n| *n != event.name),
                    _ => {}
                }
            }
            room = Some((r.notify, r.kind));
        });
        let Some((notify, kind)) = room else { return };
        let wanted = match notify {
            Notify::Nothing => false,
            Notify::Everything => true,
            Notify::Mentions | Notify::Other => mentioned || kind == RoomKind::Direct,
        };
        let Some(link) = self.link.get_value() else {
            return;
        };
        if theirs && wanted && !self.visible.get_untracked() {
            let title = match kind {
                RoomKind::Direct => event.name.clone(),
                _ => format!("{} in #{}", event.name, event.room),
            };
            link.notify(*self, &title, &event.text, &event.room);
        }
    }

    /// Changes the sidebar's entry for `slug`, if it has one.
    fn edit(&self, slug: &str, change: impl FnOnce(&mut RoomInfo)) {
        self.rooms.update(|rooms| {
            if let Some(room) = rooms.iter_mut().find(|r| r.slug == slug) {
                change(room);
            }
        });
    }

    /// The whole list, as the connection starts.
    pub(super) fn on_rooms(&self, mut rooms: Vec<RoomInfo>) {
        let shown = self.room.get_untracked();
        let kept = self.rooms.with_untracked(|old| {
            old.iter()
                .find(|r| r.slug == shown && !r.member && r.kind == RoomKind::Public)
                .cloned()
        });
        if !rooms.iter().any(|r| r.slug == shown) {
            if let Some(kept) = kept {
                rooms.push(kept);
            }
        }
        let gone = !rooms.iter().any(|r| r.slug == shown);
        self.rooms.set(rooms);
        if gone {
            // Removed from it while this tab was away.
            self.open_room(GENERAL_ROOM, true);
        }
    }

    /// One room, new or changed; shown if it is the one the user just asked for.
    pub(super) fn on_room(&self, info: RoomInfo) {
        let slug = info.slug.clone();
        let wanted = self.want.with_value(|want| match want {
            Some(Want::Made(name)) => info.member && info.name == *name,
            Some(Want::Slug(wanted)) => *wanted == info.slug,
            Some(Want::With(names)) => {
                let me = crate::unicode::to_lower(&self.my_name());
                let mut others: Vec<String> = info
                    .members
                    .iter()
                    .map(|n| crate::unicode::to_lower(n))
                    .filter(|n| *n != me)
                    .collect();
                let mut asked: Vec<String> = names
                    .iter()
                    .map(|n| crate::unicode::to_lower(n.trim()))
                    .collect();
                others.sort();
                asked.sort();
                asked.dedup();
                info.kind == RoomKind::Direct && others == asked
            }
            None => false,
        });
        self.rooms
            .update(|rooms| match rooms.iter_mut().find(|r| r.slug == slug) {
                Some(room) => *room = info,
                None => rooms.push(info),
            });
        if wanted {
            self.want.set_value(None);
            self.open_room(&slug, true);
        }
    }

    /// The user is no longer in `room` (left it, or was removed): it leaves the sidebar, and a tab
    /// showing it goes back to `general`.
    pub(super) fn on_room_gone(&self, room: &str) {
        let label = self.rooms.with_untracked(|rooms| {
            rooms
                .iter()
                .find(|r| r.slug == room)
                .map(|r| r.label(&self.my_name()))
        });
        self.rooms.update(|rooms| rooms.retain(|r| r.slug != room));
        if self.room.with_untracked(|shown| shown == room) {
            self.open_room(GENERAL_ROOM, true);
            let label = label.unwrap_or_else(|| format!("#{room}"));
            self.notice
                .set(Some(format!("You are no longer in {label}.")));
        }
    }

    /// Another tab (or device) read `room` up to `seq`.
    pub(super) fn on_read(&self, room: &str, seq: u64) {
        self.edit(room, |r| {
            r.last_read = r.last_read.max(seq);
            if r.last_read >= r.head {
                r.unread = 0;
                r.mentions = 0;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Identity, ServerFrame, UserKind, Via};
    use crate::ui::state::Bootstrap;
    use uuid::Uuid;

    fn info(slug: &str, kind: RoomKind, unread: u32) -> RoomInfo {
        RoomInfo {
            slug: slug.into(),
            name: slug.into(),
            topic: String::new(),
            kind,
            members: if kind == RoomKind::Direct {
                vec!["Ann".into(), "Bo".into()]
            } else {
                Vec::new()
            },
            member: true,
            archived: false,
            head: 10,
            last_read: 10 - u64::from(unread),
            unread,
            mentions: 0,
            notify: Notify::default(),
            manage: false,
        }
    }

    fn message(room: &str, seq: u64, by: u128, text: &str) -> ChatEvent {
        ChatEvent {
            seq,
            id: Uuid::new_v4(),
            room: room.into(),
            at: 0,
            kind: EventKind::Message,
            name: if by == 7 { "Ann".into() } else { "Bo".into() },
            user_id: Uuid::from_u128(by),
            user_kind: UserKind::Guest,
            text: text.into(),
            target: None,
        }
    }

    /// Ann (user 7) in `general`, with a room `design` and a conversation with Bo.
    fn chat() -> (Owner, Chat) {
        let owner = Owner::new();
        owner.set();
        let me = Identity {
            name: "Ann".into(),
            user_id: Uuid::from_u128(7),
            kind: UserKind::Guest,
            admin: false,
            via: Via::Guest,
        };
        let chat = Chat::new(Bootstrap {
            me: Some(me),
            rooms: vec![
                info(GENERAL_ROOM, RoomKind::Public, 0),
                info("design", RoomKind::Private, 2),
                info("dm.ab", RoomKind::Direct, 0),
            ],
            ..Bootstrap::default()
        });
        (owner, chat)
    }

    fn entry(chat: &Chat, slug: &str) -> RoomInfo {
        chat.rooms
            .get_untracked()
            .into_iter()
            .find(|r| r.slug == slug)
            .expect("listed")
    }

    #[test]
    fn events_elsewhere_count_as_unread_with_mentions_and_ours_do_not() {
        let (_owner, chat) = chat();
        chat.apply(ServerFrame::Event(message("design", 11, 8, "hi all")));
        chat.apply(ServerFrame::Event(message("design", 12, 8, "@ann look")));
        chat.apply(ServerFrame::Event(message("design", 13, 7, "mine")));
        let design = entry(&chat, "design");
        assert_eq!((design.unread, design.mentions, design.head), (4, 1, 13));
        assert_eq!(chat.unread_total(), 4, "the title's count");
        assert!(
            chat.events.get_untracked().is_empty(),
            "not in the shown list"
        );
    }

    #[test]
    fn opening_a_room_shows_only_its_history_and_puts_the_divider_at_the_read_mark() {
        let (_owner, chat) = chat();
        chat.open_room("design", true);
        assert_eq!(chat.room.get_untracked(), "design");
        assert_eq!(chat.divider.get_untracked(), Some(8));
        // A live event that races the history is left to the history, which holds it.
        chat.apply(ServerFrame::Event(message("design", 11, 8, "live")));
        assert!(chat.events.get_untracked().is_empty());
        chat.apply(ServerFrame::Reset {
            room: "design".into(),
            events: (7..=11).map(|s| message("design", s, 8, "x")).collect(),
            complete: true,
        });
        assert_eq!(chat.last_seq(), 11);
        chat.apply(ServerFrame::Event(message("design", 12, 8, "next")));
        assert_eq!(chat.last_seq(), 12);
        // Reading it clears its count at once.
        chat.mark_read();
        let design = entry(&chat, "design");
        assert_eq!((design.unread, design.last_read), (0, 12));
    }

    #[test]
    fn a_private_rooms_people_follow_its_join_and_leave_lines() {
        let (_owner, chat) = chat();
        let line = |seq, kind, name: &str| ChatEvent {
            kind,
            name: name.into(),
            text: String::new(),
            ..message("design", seq, 9, "")
        };
        chat.apply(ServerFrame::Event(line(11, EventKind::Join, "Cy")));
        assert_eq!(entry(&chat, "design").members, ["Cy"]);
        chat.apply(ServerFrame::Event(line(12, EventKind::Leave, "Cy")));
        assert!(entry(&chat, "design").members.is_empty());
        assert_eq!(
            entry(&chat, "design").unread,
            2,
            "lines are not unread messages"
        );
    }

    #[test]
    fn a_read_in_another_tab_clears_the_badge_and_a_removal_goes_back_to_general() {
        let (_owner, chat) = chat();
        chat.apply(ServerFrame::Read {
            room: "design".into(),
            seq: 10,
        });
        assert_eq!(entry(&chat, "design").unread, 0);
        chat.open_room("design", false);
        chat.apply(ServerFrame::RoomGone {
            room: "design".into(),
        });
        assert_eq!(chat.room.get_untracked(), GENERAL_ROOM);
        assert!(chat
            .rooms
            .get_untracked()
            .iter()
            .all(|r| r.slug != "design"));
        assert!(chat.notice.get_untracked().is_some());
    }

    #[test]
    fn a_room_asked_for_opens_when_the_server_has_it() {
        let (_owner, chat) = chat();
        assert!(
            !chat.create_room("  ", "", false),
            "refused here, as the server would"
        );
        chat.create_room("Plans", "", true);
        // Someone else's new room (an invitation) does not take the tab away.
        chat.apply(ServerFrame::Room(info("other", RoomKind::Private, 0)));
        assert_eq!(chat.room.get_untracked(), GENERAL_ROOM);
        let mut plans = info("plans", RoomKind::Private, 0);
        plans.name = "Plans".into();
        chat.apply(ServerFrame::Room(plans));
        assert_eq!(chat.room.get_untracked(), "plans");
        chat.direct(vec!["bo".into()]);
        chat.apply(ServerFrame::Room(info("dm.ab", RoomKind::Direct, 0)));
        assert_eq!(chat.room.get_untracked(), "dm.ab");
        // A group: the conversation whose others are exactly those asked for, in any order and case.
        chat.direct(vec!["Cy".into(), " bo".into()]);
        let mut pair = info("dm.pair", RoomKind::Direct, 0);
        pair.members = vec!["Ann".into(), "Cy".into()];
        chat.apply(ServerFrame::Room(pair));
        assert_eq!(chat.room.get_untracked(), "dm.ab", "not the one asked for");
        let mut group = info("dm.abc", RoomKind::Direct, 0);
        group.members = vec!["Ann".into(), "Bo".into(), "Cy".into()];
        chat.apply(ServerFrame::Room(group));
        assert_eq!(chat.room.get_untracked(), "dm.abc");
        assert_eq!(entry(&chat, "dm.abc").label("Ann"), "Bo, Cy");
        assert_eq!(entry(&chat, "dm.abc").path("Ann"), "/r/dm.abc");
    }

    #[test]
    fn messages_go_to_the_shown_room_and_stay_there() {
        let (_owner, chat) = chat();
        chat.open_room("design", false);
        assert!(chat.send("for design"));
        let pending = chat.pending.get_untracked();
        assert_eq!(pending[0].room, "design");
        chat.open_room(GENERAL_ROOM, false);
        // Its event arrives while another room is shown: it leaves the outbox all the same.
        let mut event = message("design", 11, 7, "for design");
        event.id = pending[0].id;
        chat.apply(ServerFrame::Event(event));
        assert!(chat.pending.get_untracked().is_empty());
    }

    #[test]
    fn paths_name_rooms_and_conversations() {
        let (_owner, chat) = chat();
        assert_eq!(entry(&chat, "dm.ab").path("Ann"), "/dm/Bo");
        assert_eq!(entry(&chat, "design").path("Ann"), "/r/design");
        assert_eq!(entry(&chat, GENERAL_ROOM).path("Ann"), "/");
        assert_eq!(chat.room_at("dm", "Bo").as_deref(), Some("dm.ab"));
        assert_eq!(chat.room_at("r", "design").as_deref(), Some("design"));
        assert_eq!(chat.room_at("r", "secret"), None);
        assert_eq!(crate::protocol::path_segment("a b/é"), "a%20b%2F%C3%A9");
    }
}
