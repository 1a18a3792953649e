//! `invite` and `remove`: a room's members add people; its owner (or an admin) takes them out, and their
//! stream of the room stops at once, on every connection and instance.

use super::{End, Session};
use crate::protocol::{validate_name, ErrorCode, EventKind, GENERAL_ROOM};
use crate::server::backplane::SessionSignal;
use crate::server::hub::now_ms;
use crate::server::names::name_key;
use crate::server::socket::Transport;
use crate::server::store::{NewEvent, StoreError, User};

impl<S> Session<'_, S>
where
    S: Transport,
{
    /// The person called `name`: a member or bot (who own their names), or a guest online now.
    pub(super) async fn user_named(&mut self, name: &str) -> Result<Option<User>, StoreError> {
        let Ok(name) = validate_name(name) else {
            return Ok(None);
        };
        let key = name_key(&name);
        if let Some(owner) = self.ctx.identity.owner_of(&key).await? {
            return Ok((!owner.banned).then_some(owner));
        }
        let holder = match self.presence().holder(&key) {
            Some(holder) => Some(holder),
            // A guest connected through another instance.
            None => self.hub.backplane().holder(GENERAL_ROOM, &key).await?,
        };
        let Some(holder) = holder else {
            return Ok(None);
        };
        Ok(self.ctx.identity.user(holder).await?.filter(|u| !u.banned))
    }

    /// `user_named`, answering `not_found` (or `unavailable`) for the caller when there is nobody.
    async fn person(&mut self, name: &str) -> Result<Option<User>, End> {
        match self.user_named(name).await {
            Ok(Some(user)) => Ok(Some(user)),
            Ok(None) => {
                let message = format!(
                    "There is no one named {} here.",
                    name.trim().chars().take(40).collect::<String>()
                );
                self.send_error(ErrorCode::NotFound, &message, None).await?;
                Ok(None)
            }
            Err(err) => {
                tracing::error!(error = %err, "looking up a person failed");
                self.send_unavailable(None).await?;
                Ok(None)
            }
        }
    }

    pub(super) async fn on_invite(&mut self, room: &str, name: &str) -> Result<(), End> {
        let direct = "Nobody can be added to a direct conversation: start a new one with everyone.";
        let Some(room) = self.managed_room(room, direct).await? else {
            return Ok(());
        };
        let Some(guest) = self.person(name).await? else {
            return Ok(());
        };
        let added = self
            .ctx
            .rooms
            .store
            .add_member(&room.slug, guest.id, now_ms())
            .await;
        match added {
            Ok(true) => {}
            Ok(false) => {
                let message = format!("{} is in #{} already.", guest.name, room.slug);
                return self.send_error(ErrorCode::NotAllowed, &message, None).await;
            }
            Err(err) => {
                tracing::error!(error = %err, "inviting failed");
                return self.send_unavailable(None).await;
            }
        }
        self.room_line(&room.slug, &guest, EventKind::Join).await;
        self.start_reading(guest.id, &room.slug).await;
        // Their connections start hearing the room, wherever they are.
        self.hub
            .signal_session(guest.id, SessionSignal::Rooms)
            .await;
        Ok(())
    }

    pub(super) async fn on_remove(&mut self, room: &str, name: &str) -> Result<(), End> {
        let Some(me) = self.me.clone() else {
            return Ok(());
        };
        let direct = "Nobody can be removed from a direct conversation.";
        let Some(room) = self.managed_room(room, direct).await? else {
            return Ok(());
        };
        if room.created_by != me.identity.user_id && !me.identity.admin {
            return self
                .send_error(
                    ErrorCode::NotAllowed,
                    "Only the room's owner or an admin can remove people from it.",
                    None,
                )
                .await;
        }
        let Some(gone) = self.person(name).await? else {
            return Ok(());
        };
        if gone.id == me.identity.user_id {
            return self
                .send_error(
                    ErrorCode::NotAllowed,
                    "To leave the room yourself, use leave_room.",
                    None,
                )
                .await;
        }
        match self
            .ctx
            .rooms
            .store
            .remove_member(&room.slug, gone.id)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                let message = format!("{} is not in #{}.", gone.name, room.slug);
                return self.send_error(ErrorCode::NotFound, &message, None).await;
            }
            Err(err) => {
                tracing::error!(error = %err, "removing a member failed");
                return self.send_unavailable(None).await;
            }
        }
        // Their stream stops before anything more is said in the room, on every instance.
        self.hub.evict(&room.slug, gone.id).await;
        self.room_line(&room.slug, &gone, EventKind::Leave).await;
        tracing::info!(room = %room.slug, "a member was removed");
        Ok(())
    }

    /// "<user> has joined #room." (or left), said by the server on their behalf.
    async fn room_line(&mut self, room: &str, user: &User, kind: EventKind) {
        let line = NewEvent {
            id: uuid::Uuid::new_v4(),
            kind,
            name: user.name.clone(),
            user_id: user.id,
            user_kind: user.kind,
            text: String::new(),
            target: None,
            call: Vec::new(),
        };
        if let Err(err) = self.hub.publish(room, line).await {
            tracing::error!(error = %err, "announcing a room change failed");
        }
    }
}
