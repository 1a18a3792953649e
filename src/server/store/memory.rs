//! An in-memory store: history for the life of the process, bounded so memory stays flat. Used by tests
//! and by `CONFAB_STORE=memory`.

use super::{Appended, MessageStore, NewEvent, StoreError};
use crate::protocol::ChatEvent;
use async_trait::async_trait;
use std::collections::{HashMap, VecDeque};
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
    sessions: HashMap<String, String>,
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
impl MessageStore for MemoryStore {
    async fn append(
        &self,
        room: &str,
        events: Vec<NewEvent>,
        at: i64,
    ) -> Result<Vec<Appended>, StoreError> {
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
        // Sequence numbers are dense, so the position of `after + 1` is arithmetic.
        let first = log.events.front().map_or(1, |e| e.seq);
        let skip = after.saturating_add(1).saturating_sub(first) as usize;
        Ok(log.events.iter().skip(skip).take(limit).cloned().collect())
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

    async fn session_name(&self, token: &str) -> Result<Option<String>, StoreError> {
        Ok(self.lock().sessions.get(token).cloned())
    }

    async fn set_session_name(
        &self,
        token: &str,
        name: Option<&str>,
        _at: i64,
    ) -> Result<(), StoreError> {
        let mut state = self.lock();
        match name {
            Some(name) => state.sessions.insert(token.to_owned(), name.to_owned()),
            None => state.sessions.remove(token),
        };
        Ok(())
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
