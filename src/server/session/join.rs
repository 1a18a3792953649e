//! `join`, and who a connection is: a guest made from a typed name, or the user its browser session acts
//! for (restored on connect, and again when the session changes).

use super::{End, Me, Session};
use crate::protocol::{
    validate_name, ErrorCode, EventKind, Identity, ServerFrame, UserKind, Via, GENERAL_ROOM,
};
use crate::server::backplane::Arrival;
use crate::server::hub::now_ms;
use crate::server::names::name_key;
use crate::server::presence::{Claim, Seat};
use crate::server::socket::Transport;
use crate::server::store::{NewGuest, SessionRecord, User};
use std::time::Duration;
use uuid::Uuid;

/// What became of a claim on a seat.
enum Seated {
    /// Seated; `announce` when nobody (on any instance) had the name, so the join line is due.
    Yes {
        announce: bool,
    },
    Taken,
    /// The backplane could not be asked (the database is down).
    Unavailable,
}

/// The sentence for a name that belongs to a member.
pub const NAME_OWNED: &str = "That name belongs to a member. Sign in to use it.";
/// The sentence for the name of a banned user.
pub const NAME_LOCKED: &str = "That name is not available.";

fn seat_of(user: &User) -> Seat {
    Seat {
        key: name_key(&user.name),
        name: user.name.clone(),
        user: user.id,
        kind: user.kind,
    }
}

fn identity_of(user: &User, via: Via) -> Identity {
    Identity {
        name: user.name.clone(),
        user_id: user.id,
        kind: user.kind,
        admin: user.admin,
        via,
    }
}

impl<S> Session<'_, S>
where
    S: Transport,
{
    pub(super) async fn on_join(&mut self, raw: &str) -> Result<(), End> {
        let began = std::time::Instant::now();
        let name = match validate_name(raw) {
            Ok(name) => name,
            Err(err) => return self.send_error(err.code(), err.message(), None).await,
        };
        let key = name_key(&name);
        if let Some(me) = &self.me {
            // A repeated join (a client that rejoins after reconnecting) is answered, not announced again.
            if me.seat.key == key {
                let identity = me.identity.clone();
                return self.send_frame(&ServerFrame::Joined(identity)).await;
            }
            let message = format!(
                "This connection already joined as {}; leave first to change name.",
                me.seat.name
            );
            return self
                .send_error(ErrorCode::AlreadyJoined, &message, None)
                .await;
        }
        match self.ctx.identity.owner_of(&key).await {
            Ok(None) => {}
            Ok(Some(owner)) => {
                let message = if owner.banned {
                    NAME_LOCKED
                } else {
                    NAME_OWNED
                };
                return self.send_error(ErrorCode::NameOwned, message, None).await;
            }
            Err(err) => {
                tracing::error!(error = %err, "looking up a name's owner failed");
                return self.send_unavailable(None).await;
            }
        }
        let arrival = NewGuest {
            id: Uuid::new_v4(),
            name,
            name_key: key,
            at: now_ms(),
            session: self.browser,
        };
        let guest = arrival.user();
        let seat = seat_of(&guest);
        let announce = match self.take_seat(&seat).await {
            Seated::Yes { announce } => announce,
            Seated::Taken => {
                return self
                    .send_error(ErrorCode::NameTaken, "That name is taken", None)
                    .await
            }
            Seated::Unavailable => return self.send_unavailable(None).await,
        };
        // The guest is written before anyone hears of them, so every event they cause has its author;
        // they have read general up to here.
        if let Err(err) = self.ctx.arrivals.arrive(arrival).await {
            tracing::error!(error = %err, "storing a guest failed");
            self.give_up_seat_silently(&seat);
            return self.send_unavailable(None).await;
        }
        if announce {
            self.announce(&seat).await;
        }
        tracing::info!(name = %guest.name, "joined");
        let identity = identity_of(&guest, Via::Guest);
        self.set_me(Me {
            identity: identity.clone(),
            seat,
        });
        // The user's rooms are heard before the client learns it joined, so its next frame finds them.
        self.sync_rooms(false).await?;
        self.send_frame(&ServerFrame::Joined(identity)).await?;
        metrics::histogram!(crate::server::metrics::JOIN_SECONDS)
            .record(began.elapsed().as_secs_f64());
        Ok(())
    }

    /// This connection speaks for `me` now; it hears of changes to them (a promotion, a ban) from here on.
    fn set_me(&mut self, me: Me) {
        let same_user = self
            .me
            .as_ref()
            .is_some_and(|old| old.identity.user_id == me.identity.user_id);
        if !same_user || self.user_watch.is_none() {
            self.watch_user(me.identity.user_id);
        }
        self.me = Some(me);
    }

    /// After the history: the user this connection speaks for (its browser session's, or its token's),
    /// seated again, then who is here.
    pub(super) async fn resume_identity(&mut self, who: Option<(User, Via)>) -> Result<(), End> {
        if let Some((user, via)) = who {
            if let Some(id) = self.browser {
                if let Err(err) = self.ctx.identity.touch_session(id, now_ms()).await {
                    tracing::warn!(error = %err, "noting a session's use failed");
                }
            }
            self.seat_user(user, via).await?;
        }
        self.send_room_presence(GENERAL_ROOM).await
    }

    /// The first `limit` people online in the chat, on every instance (just this one's, if the others
    /// cannot be asked), and how many are online in all.
    pub(super) async fn online_everywhere(&mut self, limit: usize) -> (Vec<String>, usize) {
        let here = self.hub.presence();
        match self.hub.backplane().online(GENERAL_ROOM, here, limit).await {
            Ok(online) => online,
            Err(err) => {
                tracing::warn!(error = %err, "reading who is online elsewhere failed");
                here.online_first(limit)
            }
        }
    }

    /// Seats `user` (this browser's own, or a token's) and tells the client who it is.
    pub(super) async fn seat_user(&mut self, user: User, via: Via) -> Result<(), End> {
        let seat = seat_of(&user);
        if user.kind == UserKind::Guest {
            // A member may have kept this name while the guest was away.
            match self.ctx.identity.owner_of(&seat.key).await {
                Ok(Some(owner)) if owner.id != user.id => {
                    self.forget_guest().await;
                    return self
                        .send_error(ErrorCode::NameOwned, NAME_OWNED, None)
                        .await;
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::error!(error = %err, "looking up a name's owner failed");
                    return Err(self.close_unavailable().await);
                }
            }
        }
        match self.take_seat(&seat).await {
            Seated::Yes { announce } => {
                if announce {
                    self.announce(&seat).await;
                }
                let identity = identity_of(&user, via);
                self.set_me(Me {
                    identity: identity.clone(),
                    seat,
                });
                self.send_frame(&ServerFrame::Joined(identity)).await
            }
            Seated::Taken => {
                // Someone else took the name while this browser was away: a guest asks for another.
                if user.kind == UserKind::Guest {
                    self.forget_guest().await;
                }
                self.send_error(ErrorCode::NameTaken, "That name is taken", None)
                    .await
            }
            Seated::Unavailable => Err(self.close_unavailable().await),
        }
    }

    /// The browser session changed (on this instance or another): read who it is now and say so.
    pub(super) async fn reload_identity(&mut self) -> Result<(), End> {
        let Some(id) = self.browser else {
            return Ok(());
        };
        let session = match self.ctx.identity.session_by_id(id).await {
            Ok(session) => session,
            Err(err) => {
                tracing::error!(error = %err, "reading a changed session failed");
                return Ok(());
            }
        };
        let Some(SessionRecord {
            user: Some(user),
            via,
            ..
        }) = session
        else {
            // It acts for nobody now.
            self.release_seat(true);
            return self.send_frame(&ServerFrame::Left).await;
        };
        match &self.me {
            Some(me) if me.identity.user_id == user.id => {
                // The same person, perhaps a member now: the seat stays, with its new kind.
                let seat = seat_of(&user);
                self.presence().update(&seat);
                let identity = identity_of(&user, via);
                self.set_me(Me {
                    identity: identity.clone(),
                    seat,
                });
                self.send_frame(&ServerFrame::Joined(identity)).await
            }
            _ => {
                self.release_seat(true);
                self.seat_user(user, via).await
            }
        }
    }

    /// Takes `seat` for this connection.
    async fn take_seat(&mut self, seat: &Seat) -> Seated {
        // Bind first: a borrow of `self` must not live across the await below (the socket is not Sync).
        let claim = self.presence().claim(seat);
        match claim {
            Claim::Taken => Seated::Taken,
            Claim::AlreadyHere => Seated::Yes { announce: false },
            Claim::Arrived => match self.hub.backplane().arrive(GENERAL_ROOM, seat).await {
                Ok(Arrival::New) => Seated::Yes { announce: true },
                Ok(Arrival::Present) => Seated::Yes { announce: false },
                Ok(Arrival::Taken) => {
                    self.give_up_seat_silently(seat);
                    Seated::Taken
                }
                Err(err) => {
                    tracing::error!(error = %err, "claiming a name failed");
                    self.give_up_seat_silently(seat);
                    Seated::Unavailable
                }
            },
        }
    }

    /// Undoes a local claim nobody was told of.
    fn give_up_seat_silently(&self, seat: &Seat) {
        let presence = self.presence();
        if let Some(ticket) = presence.release(&seat.key, seat.user) {
            presence.expire(&seat.key, ticket);
        }
    }

    async fn announce(&mut self, seat: &Seat) {
        if let Err(err) = self
            .hub
            .publish(GENERAL_ROOM, seat.event(EventKind::Join))
            .await
        {
            tracing::error!(error = %err, "announcing a join failed");
        }
    }

    /// Gives up this connection's seat. The leave line follows after the grace period, or at once when
    /// the user left on purpose, and only if no connection of theirs came back meanwhile.
    pub(super) fn release_seat(&mut self, at_once: bool) {
        let Some(me) = self.me.take() else { return };
        let Some(ticket) = self.presence().release(&me.seat.key, me.seat.user) else {
            return;
        };
        let hub = self.hub.clone();
        let grace = if at_once {
            Duration::ZERO
        } else {
            self.ctx.config.leave_grace
        };
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            hub.depart(me.seat, ticket).await;
        });
    }

    /// This browser's session stops acting for its guest (who left, or lost their name).
    pub(super) async fn forget_guest(&mut self) {
        let Some(session) = self.browser else { return };
        if let Err(err) = self
            .ctx
            .identity
            .bind_session(session, None, Via::Guest, now_ms())
            .await
        {
            tracing::error!(error = %err, "clearing the session's user failed");
        }
    }
}
