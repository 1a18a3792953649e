//! A model-based privacy test: a seeded random walk of people creating, joining, inviting, removing,
//! writing directly, sending, reconnecting and reading history, against the real server (on two
//! instances with PostgreSQL). A model tracks who may see what; after every step, nothing any connection
//! has received (an event, a history page, a room list, an error) names a private room its user was never
//! in, or holds a message of a room they were not in when it was said or since.
//!
//! `CONFAB_PRIVACY_STEPS` sets the walk's length (`make test` takes the short default; `make bench` a
//! long one) and `CONFAB_PRIVACY_SEED` replays a walk; a failure prints both.

use super::*;
use crate::protocol::RoomKind;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashSet;

const PEOPLE: usize = 4;

struct Person {
    name: String,
    /// The browser's cookie, so a reconnect is the same person.
    cookie: String,
    client: Client,
    /// How far into the transcript has been checked.
    checked: usize,
}

struct ModelRoom {
    slug: String,
    /// Unique in the walk, so finding it in a frame is finding the room (empty for a direct room).
    name: String,
    kind: RoomKind,
    owner: usize,
    members: HashSet<usize>,
    /// Everyone who was ever a member: they may know the room's slug.
    ever: HashSet<usize>,
}

/// A message said in the walk: its text is unique, so finding it in a frame is finding the message.
struct Said {
    text: String,
    room: usize,
    /// Who may see it: the room's members when it was said, and whoever joins the room later (they may
    /// read its history). `None` for a public room: anyone may read it.
    allowed: Option<HashSet<usize>>,
}

struct Walk {
    rng: StdRng,
    addrs: Vec<SocketAddr>,
    people: Vec<Person>,
    rooms: Vec<ModelRoom>,
    said: Vec<Said>,
    step: usize,
}

fn setting(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Runs a walk against servers at `addrs` (people are spread over them).
async fn walk(addrs: Vec<SocketAddr>) {
    let steps = setting("CONFAB_PRIVACY_STEPS").unwrap_or(60) as usize;
    let seed = setting("CONFAB_PRIVACY_SEED").unwrap_or_else(rand::random);
    eprintln!("privacy walk: CONFAB_PRIVACY_SEED={seed} CONFAB_PRIVACY_STEPS={steps}");
    let mut people = Vec::new();
    for n in 0..PEOPLE {
        let addr = addrs[n % addrs.len()];
        let cookie = browser(addr).await;
        let mut client = connect_as(addr, &cookie, "").await;
        let name = format!("P{n}");
        client.join(&name).await;
        people.push(Person {
            name,
            cookie,
            client,
            checked: 0,
        });
    }
    let mut walk = Walk {
        rng: StdRng::seed_from_u64(seed),
        addrs,
        people,
        rooms: Vec::new(),
        said: Vec::new(),
        step: 0,
    };
    for step in 0..steps {
        walk.step = step;
        walk.act().await;
        walk.check();
    }
    for person in &mut walk.people {
        rooms::settle(&mut person.client, Duration::from_millis(200)).await;
    }
    walk.check();
}

impl Walk {
    fn pick(&mut self, n: usize) -> usize {
        self.rng.random_range(0..n)
    }

    /// One random action, waiting for the server's answer, and the model updated to match.
    async fn act(&mut self) {
        let actor = self.pick(PEOPLE);
        match self.pick(10) {
            0 => self.create(actor, false).await,
            1 => self.create(actor, true).await,
            2 | 3 => self.send(actor).await,
            4 => self.invite(actor).await,
            5 => self.remove(actor).await,
            6 => self.dm(actor).await,
            7 => self.history(actor).await,
            8 => self.reconnect(actor).await,
            _ => self.join_public(actor).await,
        }
    }

    async fn create(&mut self, actor: usize, private: bool) {
        let name = format!("Room {:04}!", self.step);
        let client = &mut self.people[actor].client;
        client
            .send(&ClientFrame::CreateRoom {
                name: name.clone(),
                topic: String::new(),
                private,
            })
            .await;
        let made = client
            .next_matching(|f| match f {
                ServerFrame::Room(info) if info.name == name => Some(Some(info.clone())),
                ServerFrame::Error {
                    code: ErrorCode::RateLimited,
                    ..
                } => Some(None),
                ServerFrame::Error { message, .. } => panic!("creating: {message}"),
                _ => None,
            })
            .await;
        if let Some(info) = made {
            let everyone = HashSet::from([actor]);
            self.rooms.push(ModelRoom {
                slug: info.slug,
                name: info.name,
                kind: info.kind,
                owner: actor,
                members: everyone.clone(),
                ever: everyone,
            });
        }
    }

    /// A room index at random, if there is one.
    fn some_room(&mut self) -> Option<usize> {
        (!self.rooms.is_empty()).then(|| self.pick(self.rooms.len()))
    }

    fn may_read(&self, person: usize, room: usize) -> bool {
        let room = &self.rooms[room];
        room.kind == RoomKind::Public || room.members.contains(&person)
    }

    async fn send(&mut self, actor: usize) {
        let Some(room) = self.some_room() else { return };
        let text = format!("said-{:04}-{}", self.step, self.rng.random::<u32>());
        let slug = self.rooms[room].slug.clone();
        let (id, frame) = rooms::in_room(&slug, &text);
        let member = self.rooms[room].members.contains(&actor);
        let client = &mut self.people[actor].client;
        client.send(&frame).await;
        if member {
            ack(client, id).await;
            let allowed = (self.rooms[room].kind != RoomKind::Public)
                .then(|| self.rooms[room].members.clone());
            self.said.push(Said {
                text,
                room,
                allowed,
            });
        } else if self.rooms[room].kind == RoomKind::Public {
            client.expect_error(ErrorCode::NotAllowed).await;
        } else {
            let (message, _) = client.expect_error(ErrorCode::NotFound).await;
            assert_eq!(message, crate::server::rooms::NO_SUCH_ROOM);
        }
    }

    /// `person` is in `room` from now on, and may read everything said there.
    fn admit(&mut self, person: usize, room: usize) {
        self.rooms[room].members.insert(person);
        self.rooms[room].ever.insert(person);
        for said in self.said.iter_mut().filter(|s| s.room == room) {
            if let Some(allowed) = &mut said.allowed {
                allowed.insert(person);
            }
        }
    }

    /// Waits until `watcher` sees `name`'s join or leave line in `slug`.
    async fn line(&mut self, watcher: usize, slug: &str, name: &str, kind: EventKind) {
        let client = &mut self.people[watcher].client;
        client
            .next_matching(|f| match f {
                ServerFrame::Event(e) if e.room == slug && e.kind == kind && e.name == name => {
                    Some(())
                }
                _ => None,
            })
            .await;
    }

    async fn invite(&mut self, actor: usize) {
        let Some(room) = self.some_room() else { return };
        if self.rooms[room].kind == RoomKind::Direct {
            return;
        }
        let guest = self.pick(PEOPLE);
        let slug = self.rooms[room].slug.clone();
        let name = self.people[guest].name.clone();
        self.people[actor]
            .client
            .send(&ClientFrame::Invite {
                room: slug.clone(),
                name: name.clone(),
            })
            .await;
        let client = &mut self.people[actor].client;
        if !self.rooms[room].members.contains(&actor) {
            let code = if self.rooms[room].kind == RoomKind::Public {
                ErrorCode::NotAllowed
            } else {
                ErrorCode::NotFound
            };
            client.expect_error(code).await;
        } else if self.rooms[room].members.contains(&guest) {
            client.expect_error(ErrorCode::NotAllowed).await;
        } else {
            self.line(actor, &slug, &name, EventKind::Join).await;
            self.admit(guest, room);
        }
    }

    async fn remove(&mut self, actor: usize) {
        let Some(room) = self.some_room() else { return };
        let model = &self.rooms[room];
        let Some(&gone) = model.members.iter().find(|&&m| m != actor) else {
            return;
        };
        if model.kind == RoomKind::Direct || model.owner != actor {
            return; // refusals of these have tests of their own
        }
        let slug = model.slug.clone();
        let name = self.people[gone].name.clone();
        self.people[actor]
            .client
            .send(&ClientFrame::Remove {
                room: slug.clone(),
                name: name.clone(),
            })
            .await;
        self.line(actor, &slug, &name, EventKind::Leave).await;
        self.rooms[room].members.remove(&gone);
    }

    async fn dm(&mut self, actor: usize) {
        let other = (actor + 1 + self.pick(PEOPLE - 1)) % PEOPLE;
        let name = self.people[other].name.clone();
        let client = &mut self.people[actor].client;
        client
            .send(&ClientFrame::Dm {
                with: vec![name.clone()],
            })
            .await;
        let info = client
            .next_matching(|f| match f {
                ServerFrame::Room(info)
                    if info.kind == RoomKind::Direct && info.members.contains(&name) =>
                {
                    Some(info.clone())
                }
                _ => None,
            })
            .await;
        if !self.rooms.iter().any(|r| r.slug == info.slug) {
            let both = HashSet::from([actor, other]);
            self.rooms.push(ModelRoom {
                slug: info.slug,
                name: String::new(),
                kind: RoomKind::Direct,
                owner: actor,
                members: both.clone(),
                ever: both,
            });
        }
    }

    async fn history(&mut self, actor: usize) {
        let Some(room) = self.some_room() else { return };
        let slug = self.rooms[room].slug.clone();
        let may = self.may_read(actor, room);
        let client = &mut self.people[actor].client;
        client
            .send(&ClientFrame::History {
                room: slug.clone(),
                before: u64::MAX,
            })
            .await;
        if may {
            client
                .next_matching(|f| match f {
                    ServerFrame::History { room, .. } if *room == slug => Some(()),
                    _ => None,
                })
                .await;
        } else {
            let (message, _) = client.expect_error(ErrorCode::NotFound).await;
            assert_eq!(message, crate::server::rooms::NO_SUCH_ROOM);
        }
    }

    async fn join_public(&mut self, actor: usize) {
        let Some(room) = self.some_room() else { return };
        if self.rooms[room].kind != RoomKind::Public || self.rooms[room].members.contains(&actor) {
            return;
        }
        let slug = self.rooms[room].slug.clone();
        let client = &mut self.people[actor].client;
        client
            .send(&ClientFrame::JoinRoom { room: slug.clone() })
            .await;
        client
            .next_matching(|f| match f {
                ServerFrame::Room(info) if info.slug == slug => Some(()),
                _ => None,
            })
            .await;
        self.admit(actor, room);
    }

    /// The person's tab reconnects, perhaps through the other instance, showing a random room from a
    /// random cursor.
    async fn reconnect(&mut self, actor: usize) {
        let which = self.pick(self.addrs.len());
        let addr = self.addrs[which];
        let shown = self.some_room();
        let query = match shown {
            Some(room) => {
                let after = self.pick(4);
                format!("?room={}&after={after}", self.rooms[room].slug)
            }
            None => String::new(),
        };
        let cookie = self.people[actor].cookie.clone();
        let mut client = connect_as(addr, &cookie, &query).await;
        match shown {
            // The shown room's history, then its presence; or the answer for a room it may not see.
            Some(room) if self.may_read(actor, room) => {
                let slug = self.rooms[room].slug.clone();
                client
                    .next_matching(|f| match f {
                        ServerFrame::Presence { room, .. } if *room == slug => Some(()),
                        _ => None,
                    })
                    .await;
            }
            Some(_) => {
                let (message, _) = client.expect_error(ErrorCode::NotFound).await;
                assert_eq!(message, crate::server::rooms::NO_SUCH_ROOM);
            }
            None => {
                client
                    .next_matching(|f| matches!(f, ServerFrame::Rooms { .. }).then_some(()))
                    .await
            }
        }
        let old = std::mem::replace(&mut self.people[actor].client, client);
        // The old tab's frames were checked; the new one's transcript starts empty.
        self.people[actor].checked = 0;
        drop(old);
    }

    /// Nothing anyone has received so far is about a room or a message they may not see.
    fn check(&mut self) {
        for (n, person) in self.people.iter_mut().enumerate() {
            for frame in &person.client.transcript[person.checked..] {
                for room in &self.rooms {
                    if room.kind != RoomKind::Public && !room.ever.contains(&n) {
                        let named = !room.name.is_empty() && frame.contains(&room.name);
                        assert!(
                            !frame.contains(&room.slug) && !named,
                            "step {}: {} heard of {} in {frame}",
                            self.step,
                            person.name,
                            room.slug
                        );
                    }
                }
                for said in &self.said {
                    let allowed = said.allowed.as_ref().is_none_or(|a| a.contains(&n));
                    assert!(
                        allowed || !frame.contains(&said.text),
                        "step {}: {} heard {:?} of {} in {frame}",
                        self.step,
                        person.name,
                        said.text,
                        self.rooms[said.room].slug
                    );
                }
            }
            person.checked = person.client.transcript.len();
        }
    }
}

fn walk_config(mut config: Config) -> Config {
    config.session.burst = std::num::NonZeroU32::new(10_000).unwrap();
    config.session.leave_grace = Duration::from_millis(300);
    config
}

#[tokio::test]
async fn a_random_walk_never_shows_anyone_a_room_or_message_they_may_not_see() {
    let addr = start(walk_config(memory())).await;
    walk(vec![addr]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_walk_across_two_instances_never_shows_anyone_what_they_may_not_see() {
    let Some(db) = super::postgres::TestDb::create().await else {
        return;
    };
    let a = Server::start(walk_config(db.config())).await;
    let b = Server::start(walk_config(db.config())).await;
    walk(vec![a.addr, b.addr]).await;
    a.stop().await;
    b.stop().await;
    db.drop_now().await;
}
