//! History: the replay a connection starts with, and `history` frames for older pages.

use super::{End, Session, Start};
use crate::protocol::{ErrorCode, ServerFrame, HISTORY_PAGE};
use axum::extract::ws::Message;
use futures_util::{Sink, Stream};

impl<S> Session<'_, S>
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin,
{
    /// The history a new connection asked for: the recent page, or everything after its cursor.
    pub(super) async fn replay(&mut self, start: Start) -> Result<(), End> {
        let store = self.hub.store();
        let history = match start {
            Start::Recent => store.before(self.room, u64::MAX, HISTORY_PAGE).await,
            Start::After(after) => {
                self.last_seq = after;
                store.since(self.room, after, usize::MAX).await
            }
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
