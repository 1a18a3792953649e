//! Guests arriving, stored together.
//!
//! A guest is written before anyone hears of them (so every event they cause has its author), with the
//! browser session that acts for them, and they start with general read up to its head (what came before
//! they arrived is not unread). Those were two or three commits per join, and on SQLite every commit is
//! an fsync on the one write connection that the rooms' writers need too: a storm of 10,000 joins made
//! 20,000 commits, and each batch of join lines waited behind them. One task takes every arrival that is
//! waiting and stores the group with one commit for the guests and one for their read marks, as a room's
//! writer stores a batch of messages. Two commits, not one: people and rooms are separate stores.

use super::rooms::Directory;
use super::store::{IdentityStore, NewGuest, StoreError};
use crate::protocol::GENERAL_ROOM;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// The most arrivals stored in one transaction.
const MAX_GROUP: usize = 256;

/// Arrivals waiting beyond this hold their joins back until there is room (backpressure, not loss).
const QUEUE: usize = 4_096;

/// Where joins hand their new guests to be stored.
#[derive(Clone)]
pub struct Arrivals {
    queue: mpsc::Sender<Arrival>,
}

struct Arrival {
    guest: NewGuest,
    stored: oneshot::Sender<Result<(), Arc<StoreError>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ArrivalError {
    #[error("the arrivals' writer has stopped")]
    WriterGone,
    #[error("store failed: {0}")]
    Store(Arc<StoreError>),
}

impl Arrivals {
    /// Starts the task that stores arrivals; it ends when every `Arrivals` is dropped.
    pub fn start(identity: Arc<dyn IdentityStore>, rooms: Directory) -> Self {
        let (queue, arrivals) = mpsc::channel(QUEUE);
        tokio::spawn(run(identity, rooms, arrivals));
        Self { queue }
    }

    /// Stores `guest` durably (and binds its browser session), then starts them reading general at its
    /// head. Resolves once the guest is stored; a read mark that could not be written is only logged,
    /// as the join does not need it.
    pub async fn arrive(&self, guest: NewGuest) -> Result<(), ArrivalError> {
        let (stored, reply) = oneshot::channel();
        self.queue
            .send(Arrival { guest, stored })
            .await
            .map_err(|_| ArrivalError::WriterGone)?;
        reply
            .await
            .map_err(|_| ArrivalError::WriterGone)?
            .map_err(ArrivalError::Store)
    }
}

async fn run(
    identity: Arc<dyn IdentityStore>,
    rooms: Directory,
    mut arrivals: mpsc::Receiver<Arrival>,
) {
    let mut group = Vec::new();
    while arrivals.recv_many(&mut group, MAX_GROUP).await > 0 {
        let (guests, replies): (Vec<NewGuest>, Vec<_>) =
            group.drain(..).map(|a| (a.guest, a.stored)).unzip();
        let results = store_guests(identity.as_ref(), &guests).await;
        let users: Vec<Uuid> = guests
            .iter()
            .zip(&results)
            .filter(|(_, result)| result.is_ok())
            .map(|(guest, _)| guest.id)
            .collect();
        // Best effort, as for anyone coming into a room: without it, nothing counts as unread.
        if !users.is_empty() {
            if let Err(err) = rooms.start_reading(GENERAL_ROOM, &users).await {
                tracing::warn!(error = %err, guests = users.len(), "starting read marks failed");
            }
        }
        for (reply, result) in replies.into_iter().zip(results) {
            let _ = reply.send(result);
        }
    }
}

/// Stores the group in one transaction. When the database refuses it (a row it will not take), each
/// guest is tried alone, so a bad row fails only its own join; when it cannot be reached, all fail.
async fn store_guests(
    identity: &dyn IdentityStore,
    guests: &[NewGuest],
) -> Vec<Result<(), Arc<StoreError>>> {
    match identity.create_guests(guests).await {
        Ok(()) => guests.iter().map(|_| Ok(())).collect(),
        Err(StoreError::Database(sqlx::Error::Database(refused))) if guests.len() > 1 => {
            tracing::warn!(error = %refused, guests = guests.len(), "storing a group of guests was refused; storing each alone");
            let mut results = Vec::with_capacity(guests.len());
            for guest in guests {
                let result = identity.create_guests(std::slice::from_ref(guest)).await;
                results.push(result.map_err(Arc::new));
            }
            results
        }
        Err(err) => {
            let err = Arc::new(err);
            guests.iter().map(|_| Err(err.clone())).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::store::{EventStore, RoomStore, SqliteStore};

    fn guest(name: &str) -> NewGuest {
        NewGuest {
            id: Uuid::new_v4(),
            name: name.to_owned(),
            name_key: name.to_lowercase(),
            at: 1,
            session: None,
        }
    }

    #[tokio::test]
    async fn arrivals_at_once_are_stored_together_and_a_refused_one_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            SqliteStore::open(&dir.path().join("confab.db"))
                .await
                .unwrap(),
        );
        store
            .append(
                GENERAL_ROOM,
                vec![crate::server::store::test_message("before they came")],
                1,
            )
            .await
            .unwrap();
        let arrivals = Arrivals::start(store.clone(), Directory::new(store.clone(), store.clone()));

        // A guest whose id is stored already: the database refuses the row.
        let first = guest("Ann");
        arrivals.arrive(first.clone()).await.unwrap();
        let again = NewGuest {
            name: "Ann again".to_owned(),
            ..first.clone()
        };
        let (bo, cy) = (guest("Bo"), guest("Cy"));
        // Queued together before the writer runs (this test's runtime has one thread), so one group.
        let (bo_stored, again_stored, cy_stored) = tokio::join!(
            arrivals.arrive(bo.clone()),
            arrivals.arrive(again),
            arrivals.arrive(cy.clone()),
        );
        assert!(
            bo_stored.is_ok() && cy_stored.is_ok(),
            "the others are stored"
        );
        assert!(
            matches!(again_stored, Err(ArrivalError::Store(_))),
            "the refused one fails: {again_stored:?}"
        );
        for arrived in [&first, &bo, &cy] {
            assert_eq!(store.user(arrived.id).await.unwrap(), Some(arrived.user()));
            assert_eq!(
                store.read_mark(arrived.id, GENERAL_ROOM).await.unwrap(),
                Some(1),
                "what came before they arrived is read"
            );
        }
        assert_eq!(
            store.user(first.id).await.unwrap().unwrap().name,
            "Ann",
            "the stored guest is untouched"
        );
    }
}
