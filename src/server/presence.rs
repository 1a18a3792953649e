//! Who is in the room: names, the browser session holding each, and how many connections it has open.
//!
//! Join and leave lines follow presence *transitions*: the first connection of a name announces it, and
//! the leave line waits a grace period after the last connection closes, so a reload (close, then open
//! within a second) makes no noise.

use std::collections::HashMap;
use std::sync::Mutex;

/// The outcome of [`Presence::claim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The name was absent: announce it.
    Arrived,
    /// The same browser already holds it (another tab, or a reload within the grace period): say nothing.
    AlreadyHere,
    /// Another browser holds it.
    Taken,
}

#[derive(Debug)]
struct Holder {
    session: String,
    connections: usize,
    /// Bumped on every claim, so a leave scheduled before a reconnect knows it is stale.
    generation: u64,
}

/// The registry; one per room. A std Mutex: each call is a hash lookup and never awaits.
#[derive(Debug, Default)]
pub struct Presence {
    names: Mutex<HashMap<String, Holder>>,
}

/// A ticket for a leave line, returned when the last connection of a name closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingLeave(u64);

impl Presence {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Holder>> {
        self.names
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// One more connection of `session` under `name`.
    pub fn claim(&self, name: &str, session: &str) -> Claim {
        let mut names = self.lock();
        match names.get_mut(name) {
            None => {
                names.insert(
                    name.to_owned(),
                    Holder {
                        session: session.to_owned(),
                        connections: 1,
                        generation: 0,
                    },
                );
                Claim::Arrived
            }
            Some(holder) if holder.session != session => Claim::Taken,
            Some(holder) => {
                holder.connections += 1;
                holder.generation += 1;
                Claim::AlreadyHere
            }
        }
    }

    /// One connection of `name` closed. When it was the last, returns the ticket for the leave line.
    pub fn release(&self, name: &str, session: &str) -> Option<PendingLeave> {
        let mut names = self.lock();
        let holder = names.get_mut(name).filter(|h| h.session == session)?;
        holder.connections = holder.connections.saturating_sub(1);
        (holder.connections == 0).then_some(PendingLeave(holder.generation))
    }

    /// Ends the grace period: true (and the name is free) if nobody came back meanwhile.
    pub fn expire(&self, name: &str, ticket: PendingLeave) -> bool {
        let mut names = self.lock();
        let current = names
            .get(name)
            .is_some_and(|h| h.connections == 0 && h.generation == ticket.0);
        if current {
            names.remove(name);
        }
        current
    }

    /// Whether `name` is held here.
    pub fn holds(&self, name: &str) -> bool {
        self.lock().contains_key(name)
    }

    /// Each name held here, with the browser session holding it.
    pub fn holders(&self) -> Vec<(String, String)> {
        self.lock()
            .iter()
            .map(|(name, holder)| (name.clone(), holder.session.clone()))
            .collect()
    }

    /// Everyone present, sorted by name.
    pub fn online(&self) -> Vec<String> {
        let mut names: Vec<String> = self.lock().keys().cloned().collect();
        names.sort_unstable_by_key(|n| n.to_lowercase());
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_belongs_to_one_browser_until_it_leaves() {
        let presence = Presence::default();
        assert_eq!(presence.claim("Ann", "s1"), Claim::Arrived);
        assert_eq!(presence.claim("Ann", "s2"), Claim::Taken);
        assert_eq!(presence.claim("Ann", "s1"), Claim::AlreadyHere);
        assert_eq!(presence.release("Ann", "s1"), None, "one tab is still open");
        let ticket = presence.release("Ann", "s1").expect("last tab closed");
        assert_eq!(
            presence.claim("Ann", "s2"),
            Claim::Taken,
            "held during the grace period"
        );
        assert!(presence.expire("Ann", ticket));
        assert_eq!(presence.online(), Vec::<String>::new());
        assert_eq!(presence.claim("Ann", "s2"), Claim::Arrived);
    }

    #[test]
    fn a_reload_within_the_grace_period_cancels_the_leave() {
        let presence = Presence::default();
        presence.claim("Bo", "s");
        let ticket = presence.release("Bo", "s").unwrap();
        assert_eq!(presence.claim("Bo", "s"), Claim::AlreadyHere);
        assert!(!presence.expire("Bo", ticket));
        assert_eq!(presence.online(), ["Bo"]);
        // Another session's release does not touch Bo.
        assert_eq!(presence.release("Bo", "other"), None);
    }
}
