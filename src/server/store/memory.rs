//! An in-memory store: history for the life of the process, bounded so memory stays flat. Used by tests
//! and by `CONFAB_STORE=memory`.

use super::bots::{Bot, Delivery, NewBot, Settled, Settlement, Webhook};
use super::identity::{NewGuest, MAX_DEVICE_CHARS};
use super::{
    Appended, BotStore, EventStore, IdentityError, IdentityStore, NewEvent, Room, RoomError,
    RoomStore, SessionInfo, SessionRecord, StoreError, User,
};
use crate::protocol::{ChatEvent, EventKind, UserKind, Via};
use async_trait::async_trait;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use uuid::Uuid;

/// Keeps the newest `capacity` events of each room.
pub struct MemoryStore {
    capacity: usize,
    // A std Mutex: every critical section is a few pointer moves and never awaits.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    rooms: HashMap<String, RoomLog>,
    /// By code hash: uses left, expiry.
    invites: HashMap<String, (u32, i64)>,
    /// By token hash: the member, expiry, used.
    links: HashMap<String, (Uuid, i64, bool)>,
    /// By token hash.
    sessions: HashMap<String, MemSession>,
    users: HashMap<Uuid, MemUser>,
    /// Rooms besides general, by slug, with their members.
    directory: HashMap<String, (Room, HashSet<Uuid>)>,
    /// How far each user has read each room.
    read_marks: HashMap<(Uuid, String), u64>,
    notify_levels: HashMap<(Uuid, String), crate::protocol::Notify>,
    /// By user id.
    bots: HashMap<Uuid, MemBot>,
    /// Webhook calls, by id.
    deliveries: HashMap<Uuid, MemDelivery>,
}

struct MemBot {
    token_hash: Option<String>,
    secret: String,
    webhook: String,
    created_at: i64,
}

struct MemDelivery {
    delivery: Delivery,
    state: &'static str,
    next_at: i64,
    error: String,
    created_at: i64,
}

struct MemSession {
    id: Uuid,
    user: Option<Uuid>,
    via: Via,
    admitted: bool,
    device: String,
    created_at: i64,
    last_seen_at: i64,
}

struct MemUser {
    user: User,
    name_key: String,
    password_hash: Option<String>,
    external_id: Option<String>,
}

impl State {
    fn session_mut(&mut self, id: Uuid) -> Option<&mut MemSession> {
        self.sessions.values_mut().find(|s| s.id == id)
    }

    fn record(&self, session: &MemSession) -> SessionRecord {
        SessionRecord {
            id: session.id,
            user: session
                .user
                .and_then(|id| self.users.get(&id))
                .map(|u| u.user.clone()),
            via: session.via,
            admitted: session.admitted,
        }
    }

    fn owner_of(&self, name_key: &str) -> Option<&MemUser> {
        let mut holders = self.users.values().filter(|u| {
            u.name_key == name_key && (u.user.kind != UserKind::Guest || u.user.banned)
        });
        let first = holders.next()?;
        // A member (or bot) before a banned guest of the same name, as the SQL stores order them.
        Some(holders.fold(first, |best, u| {
            if best.user.kind == UserKind::Guest && u.user.kind != UserKind::Guest {
                u
            } else {
                best
            }
        }))
    }
}

#[derive(Default)]
struct RoomLog {
    last_seq: u64,
    events: VecDeque<ChatEvent>,
    /// Sequence number of each retained event's id, for recognising retries.
    ids: HashMap<Uuid, u64>,
}

impl RoomLog {
    fn get(&self, seq: u64) -> Option<&ChatEvent> {
        let first = self.events.front()?.seq;
        self.events
            .get(usize::try_from(seq.checked_sub(first)?).ok()?)
    }

    /// The retained events with `seq > after`, oldest first. Sequence numbers are dense, so the
    /// position of `after + 1` is arithmetic.
    fn after(&self, after: u64) -> impl Iterator<Item = &ChatEvent> {
        let first = self.events.front().map_or(1, |e| e.seq);
        let skip = after.saturating_add(1).saturating_sub(first) as usize;
        self.events.iter().skip(skip)
    }
}

impl MemoryStore {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl EventStore for MemoryStore {
    async fn append(
        &self,
        room: &str,
        mut events: Vec<NewEvent>,
        at: i64,
    ) -> Result<Vec<Appended>, StoreError> {
        let wanted = super::bots::take_calls(&mut events);
        let mut state = self.lock();
        let log = state.rooms.entry(room.to_owned()).or_default();
        let mut appended = Vec::with_capacity(events.len());
        for event in events {
            if let Some(existing) = log.ids.get(&event.id).and_then(|&seq| log.get(seq)) {
                appended.push(Appended {
                    event: existing.clone(),
                    fresh: false,
                });
                continue;
            }
            log.last_seq += 1;
            let event = event.placed(room, log.last_seq, at);
            if log.events.len() == self.capacity {
                if let Some(old) = log.events.pop_front() {
                    log.ids.remove(&old.id);
                }
            }
            log.ids.insert(event.id, event.seq);
            log.events.push_back(event.clone());
            appended.push(Appended { event, fresh: true });
        }
        for (id, bot, message) in super::bots::calls(wanted, &appended) {
            let in_room = room == crate::protocol::GENERAL_ROOM
                || state
                    .directory
                    .get(room)
                    .is_some_and(|(_, members)| members.contains(&bot));
            if in_room {
                state.deliveries.entry(id).or_insert(MemDelivery {
                    delivery: Delivery {
                        id,
                        bot,
                        room: room.to_owned(),
                        message,
                        attempts: 0,
                    },
                    state: "pending",
                    next_at: at,
                    error: String::new(),
                    created_at: at,
                });
            }
        }
        Ok(appended)
    }

    async fn since(
        &self,
        room: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<ChatEvent>, StoreError> {
        let state = self.lock();
        let Some(log) = state.rooms.get(room) else {
            return Ok(Vec::new());
        };
        Ok(log.after(after).take(limit).cloned().collect())
    }

    async fn unread_since(
        &self,
        room: &str,
        after: u64,
        reader: Uuid,
        limit: usize,
    ) -> Result<Vec<ChatEvent>, StoreError> {
        let state = self.lock();
        let Some(log) = state.rooms.get(room) else {
            return Ok(Vec::new());
        };
        let unread = log.after(after);
        let unread = unread.filter(|e| e.is_message() && e.user_id != reader);
        Ok(unread.take(limit).cloned().collect())
    }

    async fn before(
        &self,
        room: &str,
        before: u64,
        limit: usize,
    ) -> Result<Vec<ChatEvent>, StoreError> {
        let state = self.lock();
        let Some(log) = state.rooms.get(room) else {
            return Ok(Vec::new());
        };
        let end = log.events.partition_point(|e| e.seq < before);
        Ok(log
            .events
            .range(end.saturating_sub(limit)..end)
            .cloned()
            .collect())
    }

    async fn find(&self, room: &str, id: Uuid) -> Result<Option<ChatEvent>, StoreError> {
        Ok(self.find_mut(room, id, |event| event.clone()))
    }

    async fn redact(&self, room: &str, id: Uuid) -> Result<bool, StoreError> {
        Ok(self
            .find_mut(room, id, |event| {
                let message = event.is_message();
                if message {
                    event.kind = EventKind::Deleted;
                    event.text.clear();
                }
                message
            })
            .unwrap_or(false))
    }
}

impl MemoryStore {
    /// The retained event of `room` with this id.
    fn find_mut<T>(
        &self,
        room: &str,
        id: Uuid,
        then: impl FnOnce(&mut ChatEvent) -> T,
    ) -> Option<T> {
        let mut state = self.lock();
        let log = state.rooms.get_mut(room)?;
        let seq = *log.ids.get(&id)?;
        let first = log.events.front()?.seq;
        let event = log
            .events
            .get_mut(usize::try_from(seq.checked_sub(first)?).ok()?)?;
        Some(then(event))
    }
}

#[async_trait]
impl RoomStore for MemoryStore {
    async fn create_room(&self, room: &Room, members: &[Uuid], _: i64) -> Result<(), RoomError> {
        let mut state = self.lock();
        if state.directory.contains_key(&room.slug) {
            return Err(RoomError::Taken);
        }
        let members = members.iter().copied().collect();
        state
            .directory
            .insert(room.slug.clone(), (room.clone(), members));
        Ok(())
    }

    async fn room(&self, slug: &str) -> Result<Option<Room>, StoreError> {
        Ok(self
            .lock()
            .directory
            .get(slug)
            .map(|(room, _)| room.clone()))
    }

    async fn is_member(&self, slug: &str, user: Uuid) -> Result<bool, StoreError> {
        Ok(self
            .lock()
            .directory
            .get(slug)
            .is_some_and(|(_, members)| members.contains(&user)))
    }

    async fn add_member(&self, slug: &str, user: Uuid, _: i64) -> Result<bool, StoreError> {
        Ok(self
            .lock()
            .directory
            .get_mut(slug)
            .is_some_and(|(_, members)| members.insert(user)))
    }

    async fn remove_member(&self, slug: &str, user: Uuid) -> Result<bool, StoreError> {
        Ok(self
            .lock()
            .directory
            .get_mut(slug)
            .is_some_and(|(_, members)| members.remove(&user)))
    }

    async fn rooms_of(&self, user: Uuid) -> Result<Vec<Room>, StoreError> {
        let mut rooms: Vec<Room> = self
            .lock()
            .directory
            .values()
            .filter(|(_, members)| members.contains(&user))
            .map(|(room, _)| room.clone())
            .collect();
        rooms.sort_by(|a, b| a.slug.cmp(&b.slug));
        Ok(rooms)
    }

    async fn members(&self, slug: &str) -> Result<Vec<User>, StoreError> {
        let state = self.lock();
        let Some((_, members)) = state.directory.get(slug) else {
            return Ok(Vec::new());
        };
        let mut users: Vec<User> = members
            .iter()
            .filter_map(|id| state.users.get(id).map(|u| u.user.clone()))
            .collect();
        users.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(users)
    }

    async fn public_rooms(&self, limit: usize) -> Result<Vec<Room>, StoreError> {
        let mut rooms: Vec<Room> = self
            .lock()
            .directory
            .values()
            .filter(|(room, _)| room.kind == crate::protocol::RoomKind::Public && !room.archived)
            .map(|(room, _)| room.clone())
            .collect();
        rooms.sort_by(|a, b| a.slug.cmp(&b.slug));
        rooms.truncate(limit);
        Ok(rooms)
    }

    async fn update_room(&self, room: &Room) -> Result<bool, StoreError> {
        let mut state = self.lock();
        let Some((stored, _)) = state.directory.get_mut(&room.slug) else {
            return Ok(false);
        };
        stored.name = room.name.clone();
        stored.topic = room.topic.clone();
        stored.archived = room.archived;
        Ok(true)
    }

    async fn mark_read_all(&self, room: &str, users: &[Uuid], seq: u64) -> Result<(), StoreError> {
        let mut state = self.lock();
        for &user in users {
            let mark = state.read_marks.entry((user, room.to_owned())).or_default();
            *mark = (*mark).max(seq);
        }
        Ok(())
    }

    async fn read_mark(&self, user: Uuid, room: &str) -> Result<Option<u64>, StoreError> {
        Ok(self
            .lock()
            .read_marks
            .get(&(user, room.to_owned()))
            .copied())
    }

    async fn set_notify(
        &self,
        user: Uuid,
        room: &str,
        level: crate::protocol::Notify,
    ) -> Result<(), StoreError> {
        self.lock()
            .notify_levels
            .insert((user, room.to_owned()), level);
        Ok(())
    }

    async fn notify(&self, user: Uuid, room: &str) -> Result<crate::protocol::Notify, StoreError> {
        let levels = &self.lock().notify_levels;
        Ok(levels
            .get(&(user, room.to_owned()))
            .copied()
            .unwrap_or_default())
    }
}

// Session lookups scan: the memory store serves tests and single-process trials, not thousands of users.
#[async_trait]
impl IdentityStore for MemoryStore {
    async fn create_session(
        &self,
        id: Uuid,
        token_hash: &str,
        device: &str,
        at: i64,
    ) -> Result<(), StoreError> {
        let session = MemSession {
            id,
            user: None,
            via: Via::Guest,
            admitted: false,
            device: device.chars().take(MAX_DEVICE_CHARS).collect(),
            created_at: at,
            last_seen_at: at,
        };
        self.lock().sessions.insert(token_hash.to_owned(), session);
        Ok(())
    }

    async fn session(&self, token_hash: &str) -> Result<Option<SessionRecord>, StoreError> {
        let state = self.lock();
        Ok(state.sessions.get(token_hash).map(|s| state.record(s)))
    }

    async fn session_by_id(&self, id: Uuid) -> Result<Option<SessionRecord>, StoreError> {
        let state = self.lock();
        Ok(state
            .sessions
            .values()
            .find(|s| s.id == id)
            .map(|s| state.record(s)))
    }

    async fn touch_session(&self, id: Uuid, at: i64) -> Result<(), StoreError> {
        if let Some(session) = self.lock().session_mut(id) {
            session.last_seen_at = at;
        }
        Ok(())
    }

    async fn bind_session(
        &self,
        id: Uuid,
        user: Option<Uuid>,
        via: Via,
        at: i64,
    ) -> Result<(), StoreError> {
        if let Some(session) = self.lock().session_mut(id) {
            session.user = user;
            session.via = via;
            session.last_seen_at = at;
        }
        Ok(())
    }

    async fn rotate_session(&self, id: Uuid, token_hash: &str, at: i64) -> Result<(), StoreError> {
        let mut state = self.lock();
        let old = state
            .sessions
            .iter()
            .find(|(_, s)| s.id == id)
            .map(|(hash, _)| hash.clone());
        if let Some(mut session) = old.and_then(|old| state.sessions.remove(&old)) {
            session.last_seen_at = at;
            state.sessions.insert(token_hash.to_owned(), session);
        }
        Ok(())
    }

    async fn end_session(&self, id: Uuid) -> Result<bool, StoreError> {
        let mut state = self.lock();
        let before = state.sessions.len();
        state.sessions.retain(|_, s| s.id != id);
        Ok(state.sessions.len() < before)
    }

    async fn sessions_of(&self, user: Uuid) -> Result<Vec<SessionInfo>, StoreError> {
        let mut sessions: Vec<SessionInfo> = self
            .lock()
            .sessions
            .values()
            .filter(|s| s.user == Some(user))
            .map(|s| SessionInfo {
                id: s.id,
                device: s.device.clone(),
                created_at: s.created_at,
                last_seen_at: s.last_seen_at,
            })
            .collect();
        sessions.sort_by_key(|s| std::cmp::Reverse(s.last_seen_at));
        Ok(sessions)
    }

    async fn create_guests(&self, guests: &[NewGuest]) -> Result<(), StoreError> {
        let mut state = self.lock();
        for guest in guests {
            let stored = MemUser {
                user: guest.user(),
                name_key: guest.name_key.clone(),
                password_hash: None,
                external_id: None,
            };
            state.users.insert(guest.id, stored);
            if let Some(session) = guest.session.and_then(|id| state.session_mut(id)) {
                session.user = Some(guest.id);
                session.via = Via::Guest;
                session.last_seen_at = guest.at;
            }
        }
        Ok(())
    }

    async fn owner_of(&self, name_key: &str) -> Result<Option<User>, StoreError> {
        Ok(self.lock().owner_of(name_key).map(|u| u.user.clone()))
    }

    async fn credentials(&self, name_key: &str) -> Result<Option<(User, String)>, StoreError> {
        let state = self.lock();
        Ok(state.owner_of(name_key).and_then(|u| {
            let hash = u.password_hash.clone()?;
            (u.user.kind == UserKind::Member).then(|| (u.user.clone(), hash))
        }))
    }

    async fn make_member(
        &self,
        user: Uuid,
        name_key: &str,
        password_hash: &str,
        admin: bool,
        _at: i64,
    ) -> Result<User, IdentityError> {
        let mut state = self.lock();
        if !state
            .users
            .get(&user)
            .is_some_and(|u| u.user.kind == UserKind::Guest && !u.user.banned)
        {
            return Err(IdentityError::NoSuchUser);
        }
        if state.owner_of(name_key).is_some() {
            return Err(IdentityError::NameOwned);
        }
        let first = !state.users.values().any(|u| u.user.admin);
        let stored = state
            .users
            .get_mut(&user)
            .filter(|u| u.user.kind == UserKind::Guest)
            .ok_or(IdentityError::NoSuchUser)?;
        stored.user.kind = UserKind::Member;
        stored.user.admin = admin || first;
        stored.name_key = name_key.to_owned();
        stored.password_hash = Some(password_hash.to_owned());
        Ok(stored.user.clone())
    }

    async fn grant_admin(&self, name_key: &str) -> Result<bool, StoreError> {
        let mut state = self.lock();
        let member = state
            .users
            .values_mut()
            .find(|u| u.name_key == name_key && u.user.kind == UserKind::Member);
        Ok(member.map(|u| u.user.admin = true).is_some())
    }

    async fn user(&self, id: Uuid) -> Result<Option<User>, StoreError> {
        Ok(self.lock().users.get(&id).map(|u| u.user.clone()))
    }

    async fn set_admin(&self, id: Uuid, admin: bool) -> Result<bool, StoreError> {
        let mut state = self.lock();
        let member = state
            .users
            .get_mut(&id)
            .filter(|u| u.user.kind == UserKind::Member && !u.user.banned);
        Ok(member.map(|u| u.user.admin = admin).is_some())
    }

    async fn external_user(
        &self,
        external_id: &str,
        name: &str,
        name_key: &str,
        admin: bool,
        _at: i64,
    ) -> Result<User, IdentityError> {
        let mut state = self.lock();
        let known = state
            .users
            .values()
            .find(|u| u.external_id.as_deref() == Some(external_id))
            .map(|u| u.user.id);
        if state
            .owner_of(name_key)
            .is_some_and(|owner| Some(owner.user.id) != known)
        {
            return Err(IdentityError::NameOwned);
        }
        let id = known.unwrap_or_else(Uuid::new_v4);
        let stored = state.users.entry(id).or_insert_with(|| MemUser {
            user: User {
                id,
                name: String::new(),
                kind: UserKind::Member,
                admin: false,
                banned: false,
            },
            name_key: String::new(),
            password_hash: None,
            external_id: Some(external_id.to_owned()),
        });
        stored.user.name = name.to_owned();
        stored.user.admin = admin && !stored.user.banned;
        stored.name_key = name_key.to_owned();
        Ok(stored.user.clone())
    }

    async fn create_invite(
        &self,
        code_hash: &str,
        _created_by: Uuid,
        uses: u32,
        expires_at: i64,
        _at: i64,
    ) -> Result<(), StoreError> {
        self.lock()
            .invites
            .insert(code_hash.to_owned(), (uses, expires_at));
        Ok(())
    }

    async fn use_invite(&self, code_hash: &str, now: i64) -> Result<bool, StoreError> {
        let mut state = self.lock();
        let Some((uses, expires_at)) = state.invites.get_mut(code_hash) else {
            return Ok(false);
        };
        if *uses == 0 || *expires_at <= now {
            return Ok(false);
        }
        *uses -= 1;
        Ok(true)
    }

    async fn admit_session(&self, id: Uuid) -> Result<(), StoreError> {
        if let Some(session) = self.lock().session_mut(id) {
            session.admitted = true;
        }
        Ok(())
    }

    async fn create_signin_link(
        &self,
        token_hash: &str,
        user: Uuid,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.lock()
            .links
            .insert(token_hash.to_owned(), (user, expires_at, false));
        Ok(())
    }

    async fn use_signin_link(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<Option<Uuid>, StoreError> {
        let mut state = self.lock();
        let Some((user, expires_at, used)) = state.links.get_mut(token_hash) else {
            return Ok(None);
        };
        if *used || *expires_at <= now {
            return Ok(None);
        }
        *used = true;
        Ok(Some(*user))
    }

    async fn ban(&self, id: Uuid) -> Result<Option<Vec<Uuid>>, StoreError> {
        let mut state = self.lock();
        let Some(user) = state.users.get_mut(&id) else {
            return Ok(None);
        };
        user.user.banned = true;
        user.user.admin = false;
        let ended = state
            .sessions
            .values()
            .filter(|s| s.user == Some(id))
            .map(|s| s.id)
            .collect();
        state.sessions.retain(|_, s| s.user != Some(id));
        Ok(Some(ended))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_message as message;
    use super::*;

    #[tokio::test]
    async fn sequences_are_dense_per_room_and_bounded() {
        let store = MemoryStore::new(3);
        let first = store
            .append("a", vec![message("1"), message("2")], 10)
            .await
            .unwrap();
        assert_eq!(
            first.iter().map(|a| a.event.seq).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(
            store.append("b", vec![message("x")], 11).await.unwrap()[0]
                .event
                .seq,
            1
        );
        store
            .append("a", vec![message("3"), message("4")], 12)
            .await
            .unwrap();

        let texts = |events: Vec<ChatEvent>| events.into_iter().map(|e| e.text).collect::<Vec<_>>();
        assert_eq!(
            texts(store.before("a", u64::MAX, 10).await.unwrap()),
            ["2", "3", "4"]
        );
        assert_eq!(
            texts(store.before("a", u64::MAX, 2).await.unwrap()),
            ["3", "4"]
        );
        assert_eq!(texts(store.before("a", 4, 1).await.unwrap()), ["3"]);
        assert_eq!(texts(store.since("a", 2, 10).await.unwrap()), ["3", "4"]);
        assert_eq!(
            texts(store.since("a", 0, 10).await.unwrap()),
            ["2", "3", "4"]
        );
        assert_eq!(texts(store.since("a", 2, 1).await.unwrap()), ["3"]);
        assert!(store.since("a", 4, 10).await.unwrap().is_empty());
        assert!(store
            .before("nowhere", u64::MAX, 10)
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn a_retried_id_returns_the_stored_event() {
        let store = MemoryStore::new(10);
        let retry = message("once");
        let out = store
            .append("a", vec![retry.clone(), message("x"), retry.clone()], 1)
            .await
            .unwrap();
        assert_eq!(
            out.iter()
                .map(|a| (a.event.seq, a.fresh))
                .collect::<Vec<_>>(),
            [(1, true), (2, true), (1, false)]
        );
        assert_eq!(store.since("a", 0, 10).await.unwrap().len(), 2);
    }
}

#[cfg(test)]
mod identity_tests {
    #[tokio::test]
    async fn the_memory_store_keeps_the_identity_contract() {
        super::super::identity::check_contract(&super::MemoryStore::new(10)).await;
    }

    #[tokio::test]
    async fn the_memory_store_keeps_the_room_contract() {
        super::super::rooms::check_contract(&super::MemoryStore::new(10)).await;
    }

    #[tokio::test]
    async fn the_memory_store_keeps_the_bot_contract() {
        super::super::bots::check_contract(&super::MemoryStore::new(10)).await;
    }
}

#[async_trait]
impl BotStore for MemoryStore {
    async fn create_bot(&self, bot: &NewBot, at: i64) -> Result<(), IdentityError> {
        let mut state = self.lock();
        if state
            .owner_of(&bot.name_key)
            .is_some_and(|u| u.user.kind != UserKind::Guest)
        {
            return Err(IdentityError::NameOwned);
        }
        let user = User {
            id: bot.id,
            name: bot.name.clone(),
            kind: UserKind::Bot,
            admin: false,
            banned: false,
        };
        state.users.insert(
            bot.id,
            MemUser {
                user,
                name_key: bot.name_key.clone(),
                password_hash: None,
                external_id: None,
            },
        );
        state.bots.insert(
            bot.id,
            MemBot {
                token_hash: Some(bot.token_hash.clone()),
                secret: bot.secret.clone(),
                webhook: bot.webhook.clone(),
                created_at: at,
            },
        );
        Ok(())
    }

    async fn bot_by_token(&self, token_hash: &str) -> Result<Option<User>, StoreError> {
        let state = self.lock();
        Ok(state
            .bots
            .iter()
            .find(|(_, bot)| bot.token_hash.as_deref() == Some(token_hash))
            .and_then(|(id, _)| state.users.get(id))
            .map(|u| u.user.clone())
            .filter(|user| !user.banned))
    }

    async fn bots(&self) -> Result<Vec<Bot>, StoreError> {
        let state = self.lock();
        let mut bots: Vec<(String, Bot)> = state
            .bots
            .iter()
            .filter_map(|(id, bot)| {
                let user = state.users.get(id)?;
                let mut failed: Vec<&MemDelivery> = state
                    .deliveries
                    .values()
                    .filter(|d| d.delivery.bot == *id && d.state == "failed")
                    .collect();
                failed.sort_by_key(|d| d.created_at);
                Some((
                    user.name_key.clone(),
                    Bot {
                        user: user.user.clone(),
                        webhook: bot.webhook.clone(),
                        active: bot.token_hash.is_some(),
                        created_at: bot.created_at,
                        failed: u32::try_from(failed.len()).unwrap_or(u32::MAX),
                        last_error: failed.last().map(|d| d.error.clone()).unwrap_or_default(),
                    },
                ))
            })
            .collect();
        bots.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(bots.into_iter().map(|(_, bot)| bot).collect())
    }

    async fn set_bot_token(
        &self,
        id: Uuid,
        token: Option<(&str, &str)>,
    ) -> Result<bool, StoreError> {
        let mut state = self.lock();
        let Some(bot) = state.bots.get_mut(&id) else {
            return Ok(false);
        };
        match token {
            Some((hash, secret)) => {
                bot.token_hash = Some(hash.to_owned());
                secret.clone_into(&mut bot.secret);
            }
            None => bot.token_hash = None,
        }
        Ok(true)
    }

    async fn set_webhook(&self, id: Uuid, url: &str) -> Result<bool, StoreError> {
        let mut state = self.lock();
        let Some(bot) = state.bots.get_mut(&id) else {
            return Ok(false);
        };
        url.clone_into(&mut bot.webhook);
        Ok(true)
    }

    async fn callable_bots(&self) -> Result<Vec<(Uuid, String)>, StoreError> {
        let state = self.lock();
        Ok(state
            .bots
            .iter()
            .filter(|(_, bot)| !bot.webhook.is_empty() && bot.token_hash.is_some())
            .filter_map(|(id, _)| state.users.get(id))
            .filter(|u| !u.user.banned)
            .map(|u| (u.user.id, u.user.name.clone()))
            .collect())
    }

    async fn bot_tokens(&self) -> Result<Vec<(Uuid, Option<String>)>, StoreError> {
        let state = self.lock();
        Ok(state
            .bots
            .iter()
            .map(|(id, bot)| (*id, bot.token_hash.clone()))
            .collect())
    }

    async fn webhook(&self, id: Uuid) -> Result<Option<Webhook>, StoreError> {
        let state = self.lock();
        let user = state.users.get(&id).filter(|u| !u.user.banned);
        Ok(state
            .bots
            .get(&id)
            .filter(|bot| !bot.webhook.is_empty() && bot.token_hash.is_some())
            .zip(user)
            .map(|(bot, user)| Webhook {
                url: bot.webhook.clone(),
                secret: bot.secret.clone(),
                name: user.user.name.clone(),
            }))
    }

    async fn claim_deliveries(
        &self,
        now: i64,
        lease_until: i64,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let mut state = self.lock();
        let mut due: Vec<&mut MemDelivery> = state
            .deliveries
            .values_mut()
            .filter(|d| d.state == "pending" && d.next_at <= now)
            .collect();
        due.sort_by_key(|d| d.next_at);
        Ok(due
            .into_iter()
            .take(limit)
            .map(|d| {
                let claimed = d.delivery.clone();
                d.next_at = lease_until;
                d.delivery.attempts += 1;
                claimed
            })
            .collect())
    }

    async fn settle_deliveries(&self, settled: &[Settled]) -> Result<(), StoreError> {
        let mut state = self.lock();
        for s in settled {
            let Some(d) = state.deliveries.get_mut(&s.id) else {
                continue;
            };
            match &s.how {
                Settlement::Done => d.state = "done",
                Settlement::Retry { at, error } => {
                    d.next_at = *at;
                    error.clone_into(&mut d.error);
                }
                Settlement::Failed { error } => {
                    d.state = "failed";
                    error.clone_into(&mut d.error);
                }
                Settlement::Released { at } => {
                    if d.state == "pending" && d.delivery.attempts > 0 {
                        d.next_at = *at;
                        d.delivery.attempts -= 1;
                    }
                }
            }
        }
        Ok(())
    }
}
