//! `typing`: "<name> is typing…" for the others, throttled.

use super::Session;
use crate::protocol::ServerFrame;
use axum::extract::ws::Message;
use futures_util::{Sink, Stream};
use std::time::Duration;
use tokio::time::Instant;

impl<S> Session<'_, S>
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin,
{
    pub(super) async fn on_typing(&mut self) {
        let Some(name) = self.me.as_ref().map(|me| me.seat.name.clone()) else {
            return;
        };
        // Browsers throttle too; this keeps a misbehaving client from turning typing into a flood.
        if self
            .last_typing
            .is_some_and(|at| at.elapsed() < Duration::from_millis(900))
        {
            return;
        }
        self.last_typing = Some(Instant::now());
        self.hub.backplane().typing(self.room, &name).await;
        self.hub
            .broadcast_ephemeral(self.room, &ServerFrame::Typing { name });
    }
}
