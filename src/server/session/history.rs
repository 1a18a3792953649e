//! History: the replay a connection starts with, and `history` frames for older pages.

use super::{End, Session, Start};
use crate::protocol::{ErrorCode, ServerFrame, HISTORY_PAGE, RESUME_LIMIT};
use axum::extract::ws::Message;
use futures_util::{Sink, Stream};

impl<S> Session<'_, S>
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin,
{
    /// The history a new connection asked for: the recent page, or everything after its cursor. A
    /// cursor past the room's newest event, or more than [`RESUME_LIMIT`] behind it, gets a reset.
    pub(super) async fn replay(&mut self, start: Start) -> Result<(), End> {
        let store = self.hub.store();
        let history = match start {
            Start::Recent => store.before(self.room, u64::MAX, HISTORY_PAGE).await,
            Start::After(after) => match store.since(self.room, after, RESUME_LIMIT + 1).await {
                Ok(events) if events.len() > RESUME_LIMIT => return self.reset().await,
                Ok(events) if events.is_empty() => {
                    // Up to date, or ahead of a room that has lost events since: its newest one tells.
                    match store.before(self.room, u64::MAX, 1).await {
                        Ok(newest) if newest.last().map_or(0, |e| e.seq) < after => {
                            return self.reset().await
                        }
                        read => read.map(|_| {
                            self.last_seq = after;
                            Vec::new()
                        }),
                    }
                }
                read => {
                    self.last_seq = after;
                    read
                }
            },
        };
        match history {
            Ok(events) => {
                for event in events {
                    self.last_seq = self.last_seq.max(event.seq);
                    self.send_text(ServerFrame::encode_event(&event).into())
                        .await?;
                }
                Ok(())
            }
            Err(err) => {
                tracing::error!(error = %err, "reading history failed");
                Err(self.close_unavailable().await)
            }
        }
    }

    /// Starts the client over from the room's recent page; live events after it follow as usual.
    async fn reset(&mut self) -> Result<(), End> {
        match self
            .hub
            .store()
            .before(self.room, u64::MAX, HISTORY_PAGE)
            .await
        {
            Ok(events) => {
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
