//! History: the replay a connection starts with, and `history` frames for older pages.

use super::{End, Session, Start};
use crate::protocol::ChatEvent;
use crate::protocol::{ErrorCode, ServerFrame, HISTORY_PAGE, RESUME_LIMIT};
use crate::server::store::{EventStore, StoreError};
use axum::extract::ws::Message;
use futures_util::{Sink, Stream};

/// What a new connection is sent first.
enum Replay {
    /// These events, one by one, after the cursor `after` (0 for the recent page).
    Events { after: u64, events: Vec<ChatEvent> },
    /// A `reset` with the recent page: the cursor does not fit the room.
    Reset(Vec<ChatEvent>),
}

impl<S> Session<'_, S>
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin,
{
    /// The history a new connection asked for: the recent page, or everything after its cursor. A
    /// cursor past the room's newest event, or more than [`RESUME_LIMIT`] behind it, gets a reset.
    pub(super) async fn replay(&mut self, start: Start) -> Result<(), End> {
        match read_start(self.hub.store(), self.room, start).await {
            Ok(Replay::Events { after, events }) => {
                self.last_seq = after;
                for event in events {
                    self.last_seq = self.last_seq.max(event.seq);
                    self.send_text(ServerFrame::encode_event(&event).into())
                        .await?;
                }
                Ok(())
            }
            Ok(Replay::Reset(events)) => {
                // Live events after the page follow as usual.
                self.last_seq = events.last().map_or(0, |e| e.seq);
                let complete = crate::protocol::reaches_first_event(&events);
                self.send_frame(&ServerFrame::Reset { events, complete })
                    .await
            }
            Err(err) => {
                tracing::error!(error = %err, "reading history failed");
                Err(self.close_unavailable().await)
            }
        }
    }

    pub(super) async fn on_history(&mut self, before: u64) -> Result<(), End> {
        match self
            .hub
            .store()
            .before(self.room, before, HISTORY_PAGE)
            .await
        {
            Ok(events) => {
                let complete = crate::protocol::reaches_first_event(&events);
                self.send_frame(&ServerFrame::History { events, complete })
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
async fn read_start(
    store: &dyn EventStore,
    room: &str,
    start: Start,
) -> Result<Replay, StoreError> {
    let recent = || store.before(room, u64::MAX, HISTORY_PAGE);
    let Start::After(after) = start else {
        let events = recent().await?;
        return Ok(Replay::Events { after: 0, events });
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
        Replay::Events {
            after,
            events: missed,
        }
    })
}
