//! History: what a connection is sent first of a room it shows, and `history` frames for older pages.

use super::rooms::Use;
use super::{End, Session, Start};
use crate::protocol::ChatEvent;
use crate::protocol::{ErrorCode, ServerFrame, HISTORY_PAGE, RESUME_LIMIT};
use crate::server::socket::Transport;
use crate::server::store::{EventStore, StoreError};

/// What a connection is sent first of a room.
pub(super) enum Replay {
    /// These events, one by one (the recent page, or what follows the cursor).
    Events(Vec<ChatEvent>),
    /// A `reset` with the recent page: the cursor does not fit the room.
    Reset(Vec<ChatEvent>),
}

impl<S> Session<'_, S>
where
    S: Transport,
{
    pub(super) async fn on_history(&mut self, room: &str, before: u64) -> Result<(), End> {
        let Some(room) = self.room_for(room, Use::Read, None).await? else {
            return Ok(());
        };
        match self.hub.store().before(&room, before, HISTORY_PAGE).await {
            Ok(events) => {
                let complete = crate::protocol::reaches_first_event(&events);
                self.send_frame(&ServerFrame::History {
                    room: room.to_string(),
                    events,
                    complete,
                })
                .await
            }
            Err(err) => {
                tracing::error!(error = %err, "reading older history failed");
                self.send_error(
                    ErrorCode::Unavailable,
                    "Older messages are unavailable right now.",
                    None,
                )
                .await
            }
        }
    }
}

/// What `start` asks of `room`. A function, not a session method: borrowing the session (and its socket,
/// which is not `Sync`) across these awaits would make the connection's future not `Send`.
pub(super) async fn read_start(
    store: &dyn EventStore,
    room: &str,
    start: Start,
) -> Result<Replay, StoreError> {
    let recent = || store.before(room, u64::MAX, HISTORY_PAGE);
    let Start::After(after) = start else {
        let events = recent().await?;
        return Ok(Replay::Events(events));
    };
    let missed = store.since(room, after, RESUME_LIMIT + 1).await?;
    // Nothing missed: up to date, or ahead of a room that has lost events since.
    let past_head = missed.is_empty()
        && store
            .before(room, u64::MAX, 1)
            .await?
            .last()
            .map_or(0, |e| e.seq)
            < after;
    Ok(if missed.len() > RESUME_LIMIT || past_head {
        Replay::Reset(recent().await?)
    } else {
        Replay::Events(missed)
    })
}
