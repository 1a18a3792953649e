//! `dm`: the direct conversation between the user and up to seven others, made on first use. Its slug is
//! the hash of the member set, so opening it again is one lookup.

use super::{End, Session};
use crate::protocol::{ErrorCode, RoomKind, MAX_DM_MEMBERS};
use crate::server::backplane::SessionSignal;
use crate::server::hub::now_ms;
use crate::server::rooms::Seen;
use crate::server::socket::Transport;
use crate::server::store::rooms::direct_slug;
use crate::server::store::{Room, RoomError};

impl<S> Session<'_, S>
where
    S: Transport,
{
    pub(super) async fn on_dm(&mut self, with: &[String]) -> Result<(), End> {
        let Some(me) = self.poster("writing to someone").await? else {
            return Ok(());
        };
        if with.is_empty() || with.len() >= MAX_DM_MEMBERS * 2 {
            return self.too_many().await;
        }
        let mut members = vec![me.identity.user_id];
        let mut others = Vec::new();
        for name in with {
            let user = match self.user_named(name).await {
                Ok(user) => user,
                Err(err) => {
                    tracing::error!(error = %err, "looking up a person failed");
                    return self.send_unavailable(None).await;
                }
            };
            let Some(user) = user else {
                let message = format!(
                    "There is no one named {} here.",
                    name.trim().chars().take(40).collect::<String>()
                );
                return self.send_error(ErrorCode::NotFound, &message, None).await;
            };
            if !members.contains(&user.id) {
                members.push(user.id);
                others.push(user.id);
            }
        }
        if others.is_empty() || members.len() > MAX_DM_MEMBERS {
            return self.too_many().await;
        }
        let room = Room {
            slug: direct_slug(&members),
            name: String::new(),
            topic: String::new(),
            kind: RoomKind::Direct,
            created_by: me.identity.user_id,
            created_at: now_ms(),
            archived: false,
        };
        let store = &self.ctx.rooms.store;
        let room = match store.create_room(&room, &members, now_ms()).await {
            Ok(()) => room,
            // It exists (the usual case): the one lookup by its key.
            Err(RoomError::Taken) => match store.room(&room.slug).await {
                Ok(Some(room)) => room,
                Ok(None) => return self.send_unavailable(None).await,
                Err(err) => {
                    tracing::error!(error = %err, "reading a direct room failed");
                    return self.send_unavailable(None).await;
                }
            },
            Err(RoomError::Store(err)) => {
                tracing::error!(error = %err, "creating a direct room failed");
                return self.send_unavailable(None).await;
            }
        };
        let seen = Seen { room, member: true };
        self.enter(&seen).await?;
        for other in others {
            self.start_reading(other, &seen.room.slug).await;
            self.hub.signal_session(other, SessionSignal::Rooms).await;
        }
        Ok(())
    }

    async fn too_many(&mut self) -> Result<(), End> {
        self.send_error(
            ErrorCode::TooManyMembers,
            "A direct conversation is with 1 to 7 other people.",
            None,
        )
        .await
    }
}
