//! Which bots a message calls: the bots with a webhook, by name, kept in memory so that deciding costs a
//! message nothing unless it mentions someone or is in a direct room. The store has the last word (a
//! call is kept only for a bot in the room); this only picks the candidates, and rings the webhook
//! sender when a call was stored.

use crate::protocol::mentions;
use std::sync::RwLock;
use tokio::sync::Notify;
use uuid::Uuid;

#[derive(Default)]
pub struct Callees {
    /// Bots with a webhook and a live token: id and name.
    bots: RwLock<Vec<(Uuid, String)>>,
    stored: Notify,
}

impl Callees {
    /// Replaces the list (on start, after a change here, and now and then for changes elsewhere).
    pub fn set(&self, bots: Vec<(Uuid, String)>) {
        *self.bots.write().unwrap_or_else(|e| e.into_inner()) = bots;
    }

    /// The bots a message with `text` in `room` may call: in a direct room every callable bot (the store
    /// keeps only its members), elsewhere those it `@mentions`.
    pub fn for_message(&self, room: &str, text: &str) -> Vec<Uuid> {
        let direct = room.starts_with("dm.");
        if !direct && !text.contains('@') {
            return Vec::new();
        }
        let bots = self.bots.read().unwrap_or_else(|e| e.into_inner());
        bots.iter()
            .filter(|(_, name)| direct || mentions(text, name))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Calls were stored: wake the sender.
    pub fn ring(&self) {
        self.stored.notify_one();
    }

    /// Until [`Callees::ring`] (or at once, if it rang since the last wait).
    pub async fn rung(&self) {
        self.stored.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_mentions_and_direct_rooms_call_bots() {
        let callees = Callees::default();
        let (dice, echo) = (Uuid::new_v4(), Uuid::new_v4());
        callees.set(vec![(dice, "dice".into()), (echo, "Echo Bot".into())]);
        assert!(callees.for_message("general", "roll the dice").is_empty());
        assert_eq!(callees.for_message("general", "@dice 2d6"), vec![dice]);
        assert_eq!(callees.for_message("ops", "hi @echo bot!"), vec![echo]);
        assert!(callees
            .for_message("ops", "mail dice@example.com")
            .is_empty());
        assert_eq!(callees.for_message("dm.abc", "hello").len(), 2);
    }
}
