//! Who is in the room: names (compared by key), the user holding each, and how many connections they
//! have open.
//!
//! Join and leave lines follow presence *transitions*: the first connection of a name announces it, and
//! the leave line waits a grace period after the last connection closes, so a reload (close, then open
//! within a second) makes no noise.

use crate::protocol::UserKind;
use std::collections::BTreeMap;
use std::sync::Mutex;
use uuid::Uuid;

/// The outcome of [`Presence::claim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The name was absent: announce it.
    Arrived,
    /// The same user already holds it (another tab, or a reload within the grace period): say nothing.
    AlreadyHere,
    /// Another user holds it.
    Taken,
}

/// Who holds a seat in the room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seat {
    /// The name's comparison key (`server::names::name_key`).
    pub key: String,
    /// The name as shown.
    pub name: String,
    pub user: Uuid,
    pub kind: UserKind,
}

#[derive(Debug)]
struct Holder {
    seat: Seat,
    connections: usize,
    /// Bumped on every claim, so a leave scheduled before a reconnect knows it is stale.
    generation: u64,
}

/// The registry; one per room. A std Mutex: each call is a map operation and never awaits. Kept in key
/// order, so the first names of a crowd are read off the front: a join into a chat of 10,000 costs the
/// hundred names its presence frame lists, not a copy and sort of all 10,000.
#[derive(Debug, Default)]
pub struct Presence {
    seats: Mutex<BTreeMap<String, Holder>>,
}

/// A ticket for a leave line, returned when the last connection of a name closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingLeave(u64);

impl Presence {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Holder>> {
        self.seats
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// One more connection of `seat.user` under `seat.key`.
    pub fn claim(&self, seat: &Seat) -> Claim {
        let mut seats = self.lock();
        match seats.get_mut(&seat.key) {
            None => {
                seats.insert(
                    seat.key.clone(),
                    Holder {
                        seat: seat.clone(),
                        connections: 1,
                        generation: 0,
                    },
                );
                Claim::Arrived
            }
            Some(holder) if holder.seat.user != seat.user => Claim::Taken,
            Some(holder) => {
                holder.connections += 1;
                holder.generation += 1;
                // The same user, perhaps with a new kind (a guest who kept their name).
                holder.seat = seat.clone();
                Claim::AlreadyHere
            }
        }
    }

    /// One connection of `user` under `key` closed. When it was the last, returns the ticket for the
    /// leave line.
    pub fn release(&self, key: &str, user: Uuid) -> Option<PendingLeave> {
        let mut seats = self.lock();
        let holder = seats.get_mut(key).filter(|h| h.seat.user == user)?;
        holder.connections = holder.connections.saturating_sub(1);
        (holder.connections == 0).then_some(PendingLeave(holder.generation))
    }

    /// Ends the grace period: true (and the name is free) if nobody came back meanwhile.
    pub fn expire(&self, key: &str, ticket: PendingLeave) -> bool {
        let mut seats = self.lock();
        let current = seats
            .get(key)
            .is_some_and(|h| h.connections == 0 && h.generation == ticket.0);
        if current {
            seats.remove(key);
        }
        current
    }

    /// The holder of `seat.key`, if it is `seat.user`, becomes `seat` (a guest who kept their name is a
    /// member now); their connection count stays.
    pub fn update(&self, seat: &Seat) {
        if let Some(holder) = self
            .lock()
            .get_mut(&seat.key)
            .filter(|h| h.seat.user == seat.user)
        {
            holder.seat = seat.clone();
        }
    }

    /// The user holding the name with this key here, if anyone does.
    pub fn holder(&self, key: &str) -> Option<Uuid> {
        self.lock().get(key).map(|h| h.seat.user)
    }

    /// Whether the name with this key is held here.
    pub fn holds(&self, key: &str) -> bool {
        self.lock().contains_key(key)
    }

    /// Every seat held here.
    pub fn seats(&self) -> Vec<Seat> {
        self.lock().values().map(|h| h.seat.clone()).collect()
    }

    /// Everyone present, as (key, name), sorted by key: the keys are kept, so whoever merges this with
    /// another instance's list need not compute them again.
    pub fn online_keyed(&self) -> Vec<(String, String)> {
        self.lock()
            .values()
            .map(|h| (h.seat.key.clone(), h.seat.name.clone()))
            .collect()
    }

    /// The first `limit` names present, sorted as people read them, and how many are present in all.
    pub fn online_first(&self, limit: usize) -> (Vec<String>, usize) {
        let seats = self.lock();
        let names = seats.values().take(limit).map(|h| h.seat.name.clone());
        (names.collect(), seats.len())
    }

    /// Everyone present, by name, sorted as people read them.
    pub fn online(&self) -> Vec<String> {
        self.online_first(usize::MAX).0
    }
}

/// The names of a (key, name) list, in its order.
pub fn names_of(keyed: Vec<(String, String)>) -> Vec<String> {
    keyed.into_iter().map(|(_, name)| name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seat(name: &str, user: Uuid) -> Seat {
        Seat {
            key: crate::server::names::name_key(name),
            name: name.into(),
            user,
            kind: UserKind::Guest,
        }
    }

    #[test]
    fn a_name_belongs_to_one_user_until_they_leave() {
        let presence = Presence::default();
        let (ann, other) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(presence.claim(&seat("Ann", ann)), Claim::Arrived);
        assert_eq!(presence.claim(&seat("Ann", other)), Claim::Taken);
        assert_eq!(
            presence.claim(&seat("ＡＮＮ", other)),
            Claim::Taken,
            "names are compared by key"
        );
        assert_eq!(presence.claim(&seat("Ann", ann)), Claim::AlreadyHere);
        let key = seat("Ann", ann).key;
        assert_eq!(presence.release(&key, ann), None, "one tab is still open");
        let ticket = presence.release(&key, ann).expect("last tab closed");
        assert_eq!(
            presence.claim(&seat("Ann", other)),
            Claim::Taken,
            "held during the grace period"
        );
        assert!(presence.expire(&key, ticket));
        assert_eq!(presence.online(), Vec::<String>::new());
        assert_eq!(presence.claim(&seat("ann", other)), Claim::Arrived);
        assert_eq!(presence.online(), ["ann"]);
    }

    #[test]
    fn a_crowd_lists_its_first_names_in_key_order_and_counts_everyone() {
        let presence = Presence::default();
        for name in ["carla", "Ann", "bo", "Dee"] {
            presence.claim(&seat(name, Uuid::new_v4()));
        }
        assert_eq!(
            presence.online_first(2),
            (vec!["Ann".to_owned(), "bo".to_owned()], 4)
        );
        assert_eq!(presence.online(), ["Ann", "bo", "carla", "Dee"]);
    }

    #[test]
    fn a_reload_within_the_grace_period_cancels_the_leave() {
        let presence = Presence::default();
        let bo = Uuid::new_v4();
        presence.claim(&seat("Bo", bo));
        let key = seat("Bo", bo).key;
        let ticket = presence.release(&key, bo).unwrap();
        assert_eq!(presence.claim(&seat("Bo", bo)), Claim::AlreadyHere);
        assert!(!presence.expire(&key, ticket));
        assert_eq!(presence.online(), ["Bo"]);
        // Another user's release does not touch Bo.
        assert_eq!(presence.release(&key, Uuid::new_v4()), None);
    }
}
