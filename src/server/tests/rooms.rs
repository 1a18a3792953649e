//! Rooms and direct messages over one socket, and that nobody hears of a room they may not see: not on
//! their socket, not in a history page, not in an error.

use super::*;
use crate::protocol::{RoomInfo, RoomKind};

/// Creates a room and returns what the server says of it.
pub(super) async fn create(client: &mut Client, name: &str, private: bool) -> RoomInfo {
    client
        .send(&ClientFrame::CreateRoom {
            name: name.into(),
            topic: String::new(),
            private,
        })
        .await;
    room_frame(client).await
}

/// The next `room` frame (a room added to the user's rooms).
pub(super) async fn room_frame(client: &mut Client) -> RoomInfo {
    client
        .next_matching(|f| match f {
            ServerFrame::Room(info) if info.slug != GENERAL_ROOM => Some(info.clone()),
            ServerFrame::Error { message, .. } => panic!("expected a room, got {message}"),
            _ => None,
        })
        .await
}

/// The `rooms` frame a connection starts with.
async fn rooms_listed(client: &mut Client) -> Vec<RoomInfo> {
    client
        .next_matching(|f| match f {
            ServerFrame::Rooms { rooms } => Some(rooms.clone()),
            _ => None,
        })
        .await
}

/// A browser joined as `name` with two tabs open: its cookie and both connections.
async fn two_tabs(addr: SocketAddr, name: &str) -> (String, Client, Client) {
    let cookie = browser(addr).await;
    let mut first = connect_as(addr, &cookie, "").await;
    first.join(name).await;
    let second = connect_as(addr, &cookie, "").await;
    (cookie, first, second)
}

/// The public rooms, as "Browse rooms" lists them.
async fn browse(client: &mut Client) -> Vec<RoomInfo> {
    client.send(&ClientFrame::Browse).await;
    client
        .next_matching(|f| match f {
            ServerFrame::Directory { rooms } => Some(rooms.clone()),
            _ => None,
        })
        .await
}

/// The next `room_gone` frame's room.
pub(super) async fn room_gone(client: &mut Client) -> String {
    client
        .next_matching(|f| match f {
            ServerFrame::RoomGone { room } => Some(room.clone()),
            _ => None,
        })
        .await
}

/// The next event of `room`.
pub(super) async fn event_in(client: &mut Client, room: &str) -> ChatEvent {
    client
        .next_matching(|f| match f {
            ServerFrame::Event(e) if e.room == room => Some(e.clone()),
            _ => None,
        })
        .await
}

pub(super) fn in_room(room: &str, text: &str) -> (Uuid, ClientFrame) {
    let id = Uuid::new_v4();
    let frame = ClientFrame::Send {
        room: room.into(),
        id,
        text: text.into(),
    };
    (id, frame)
}

/// Reads whatever arrives within `wait`, so the transcript holds it.
pub(super) async fn settle(client: &mut Client, wait: Duration) {
    while let Ok(Some(Ok(message))) = timeout(wait, client.socket.next()).await {
        if let Message::Text(text) = message {
            client.transcript.push(text.to_string());
            client
                .backlog
                .push_back(serde_json::from_str(&text).unwrap());
        }
    }
}

/// Fails if anything this client ever received mentions one of `secrets`.
pub(super) fn assert_never_heard(client: &Client, who: &str, secrets: &[&str]) {
    for frame in &client.transcript {
        for secret in secrets {
            assert!(!frame.contains(secret), "{who} heard {secret:?} in {frame}");
        }
    }
}

/// Sends `frame` and expects `not_found` with the one sentence a missing room gets.
async fn refused_as_missing(client: &mut Client, frame: ClientFrame) {
    client.send(&frame).await;
    let (message, _) = client.expect_error(ErrorCode::NotFound).await;
    assert_eq!(message, crate::server::rooms::NO_SUCH_ROOM, "{frame:?}");
}

#[tokio::test]
async fn a_private_room_is_invisible_to_everyone_outside_it() {
    let addr = start(memory()).await;
    let mut ann = joined(addr, "Ann").await;
    let mut bo = joined(addr, "Bo").await;
    let mut cy = joined(addr, "Cy").await;

    let public = create(&mut ann, "Design", false).await;
    assert_eq!(
        (public.slug.as_str(), public.kind),
        ("design", RoomKind::Public)
    );
    let secret = create(&mut ann, "Secret plans", true).await;
    assert_eq!(secret.kind, RoomKind::Private);
    assert!(secret.slug.starts_with("secret-plans-"), "{}", secret.slug);
    let hello = event_in(&mut ann, &secret.slug).await;
    assert_eq!(
        hello.system_line().unwrap(),
        format!("Ann has joined #{}.", secret.slug)
    );

    ann.send(&ClientFrame::Invite {
        room: secret.slug.clone(),
        name: "Bo".into(),
    })
    .await;
    let invited = room_frame(&mut bo).await;
    assert_eq!(invited.slug, secret.slug);
    let (_, frame) = in_room(&secret.slug, "the launch is on Friday");
    ann.send(&frame).await;
    let heard = event_in(&mut bo, &secret.slug).await;
    let heard = if heard.text.is_empty() {
        event_in(&mut bo, &secret.slug).await // Bo's own join line first
    } else {
        heard
    };
    assert_eq!(heard.text, "the launch is on Friday");

    // Cy may read and join the public room...
    let listed = browse(&mut cy).await;
    let slugs: Vec<&str> = listed.iter().map(|r| r.slug.as_str()).collect();
    assert_eq!(slugs, [GENERAL_ROOM, "design"]);
    cy.send(&ClientFrame::Open {
        room: "design".into(),
        after: None,
    })
    .await;
    let page = cy
        .next_matching(|f| match f {
            ServerFrame::Reset { room, events, .. } if room == "design" => Some(events.clone()),
            _ => None,
        })
        .await;
    assert_eq!(page.len(), 1, "the creator's join line");
    let (_, frame) = in_room("design", "lurking");
    cy.send(&frame).await;
    cy.expect_error(ErrorCode::NotAllowed).await;

    // ...but the private one answers exactly as a room that does not exist, whatever Cy tries.
    for room in [secret.slug.clone(), "no-such-room".to_owned()] {
        refused_as_missing(
            &mut cy,
            ClientFrame::History {
                room: room.clone(),
                before: u64::MAX,
            },
        )
        .await;
        refused_as_missing(
            &mut cy,
            ClientFrame::Open {
                room: room.clone(),
                after: Some(0),
            },
        )
        .await;
        refused_as_missing(&mut cy, in_room(&room, "let me in").1).await;
        refused_as_missing(&mut cy, ClientFrame::JoinRoom { room: room.clone() }).await;
        refused_as_missing(
            &mut cy,
            ClientFrame::Invite {
                room: room.clone(),
                name: "Cy".into(),
            },
        )
        .await;
    }
    // Nor does a new connection of Cy's, nor a reader's, hear of it.
    let mut reader = connect(addr, &format!("?room={}&after=0", secret.slug)).await;
    reader.expect_error(ErrorCode::NotFound).await;
    let (_, frame) = in_room(&secret.slug, "said after everyone looked");
    ann.send(&frame).await;
    event_in(&mut bo, &secret.slug).await;
    settle(&mut cy, Duration::from_millis(300)).await;
    settle(&mut reader, Duration::from_millis(100)).await;
    let secrets = [
        secret.slug.as_str(),
        "Secret plans",
        "the launch is on Friday",
        "said after everyone looked",
    ];
    assert_never_heard(&cy, "Cy", &secrets);
    assert_never_heard(&reader, "a reader", &secrets);
}

#[tokio::test]
async fn a_direct_conversation_is_one_room_per_set_of_people_and_only_theirs() {
    let addr = start(memory()).await;
    let mut ann = joined(addr, "Ann").await;
    let mut bo = joined(addr, "Bo").await;
    let mut cy = joined(addr, "Cy").await;

    ann.send(&ClientFrame::Dm {
        with: vec!["bo".into()],
    })
    .await;
    let dm = room_frame(&mut ann).await;
    assert_eq!(dm.kind, RoomKind::Direct);
    assert!(dm.slug.starts_with("dm."));
    let mut members = dm.members.clone();
    members.sort();
    assert_eq!(members, ["Ann", "Bo"]);
    // Bo's tab hears of it at once, and asking from Bo's side finds the same room.
    assert_eq!(room_frame(&mut bo).await.slug, dm.slug);
    bo.send(&ClientFrame::Dm {
        with: vec!["Ann".into(), "Bo".into()],
    })
    .await;
    assert_eq!(room_frame(&mut bo).await.slug, dm.slug);

    let (_, frame) = in_room(&dm.slug, "just between us");
    ann.send(&frame).await;
    assert_eq!(event_in(&mut bo, &dm.slug).await.text, "just between us");
    bo.send(&ClientFrame::History {
        room: dm.slug.clone(),
        before: u64::MAX,
    })
    .await;
    let history = bo
        .next_matching(|f| match f {
            ServerFrame::History { room, events, .. } if *room == dm.slug => Some(events.clone()),
            _ => None,
        })
        .await;
    assert_eq!(history.len(), 1, "no join lines in a direct room");

    // Bad requests get clear answers.
    ann.send(&ClientFrame::Dm {
        with: vec!["Nobody".into()],
    })
    .await;
    let (message, _) = ann.expect_error(ErrorCode::NotFound).await;
    assert!(message.contains("Nobody"), "{message}");
    ann.send(&ClientFrame::Dm { with: vec![] }).await;
    ann.expect_error(ErrorCode::TooManyMembers).await;
    ann.send(&ClientFrame::Dm {
        with: vec!["Ann".into()],
    })
    .await;
    ann.expect_error(ErrorCode::TooManyMembers).await;
    for name in ["D1", "D2", "D3", "D4", "D5", "D6", "D7"] {
        let _ = joined(addr, name).await;
    }
    let eight_others: Vec<String> = ["Bo", "D1", "D2", "D3", "D4", "D5", "D6", "D7"]
        .map(String::from)
        .to_vec();
    ann.send(&ClientFrame::Dm {
        with: eight_others[..7].to_vec(),
    })
    .await;
    let group = room_frame(&mut ann).await;
    assert_eq!(group.members.len(), 8);
    ann.send(&ClientFrame::Dm { with: eight_others }).await;
    ann.expect_error(ErrorCode::TooManyMembers).await;
    ann.send(&ClientFrame::LeaveRoom {
        room: dm.slug.clone(),
    })
    .await;
    ann.expect_error(ErrorCode::NotAllowed).await;

    // Cy: not a word of it, and the room answers as one that does not exist.
    refused_as_missing(&mut cy, in_room(&dm.slug, "hi both").1).await;
    refused_as_missing(
        &mut cy,
        ClientFrame::Open {
            room: dm.slug.clone(),
            after: None,
        },
    )
    .await;
    settle(&mut cy, Duration::from_millis(300)).await;
    assert_never_heard(&cy, "Cy", &[dm.slug.as_str(), "just between us"]);
}

#[tokio::test]
async fn a_removed_member_stops_hearing_the_room_at_once() {
    let addr = start(memory()).await;
    let mut ann = joined(addr, "Ann").await;
    let mut bo = joined(addr, "Bo").await;
    let mut bo_tab = connect(addr, "").await;
    bo_tab.join("Bo2").await;
    let room = create(&mut ann, "Board", true).await;
    for name in ["Bo", "Bo2"] {
        ann.send(&ClientFrame::Invite {
            room: room.slug.clone(),
            name: name.into(),
        })
        .await;
    }
    assert_eq!(room_frame(&mut bo).await.slug, room.slug);
    assert_eq!(room_frame(&mut bo_tab).await.slug, room.slug);
    ann.send(&ClientFrame::Invite {
        room: room.slug.clone(),
        name: "Bo".into(),
    })
    .await;
    ann.expect_error(ErrorCode::NotAllowed).await; // in it already

    // Only the owner (or an admin) removes people.
    bo_tab
        .send(&ClientFrame::Remove {
            room: room.slug.clone(),
            name: "Bo".into(),
        })
        .await;
    bo_tab.expect_error(ErrorCode::NotAllowed).await;

    ann.send(&ClientFrame::Remove {
        room: room.slug.clone(),
        name: "Bo".into(),
    })
    .await;
    let gone = room_gone(&mut bo).await;
    assert_eq!(gone, room.slug);
    let (_, frame) = in_room(&room.slug, "after Bo left");
    ann.send(&frame).await;
    // Bo2, still a member, hears it; Bo's open socket does not, and cannot send or read there.
    loop {
        if event_in(&mut bo_tab, &room.slug).await.text == "after Bo left" {
            break;
        }
    }
    refused_as_missing(&mut bo, in_room(&room.slug, "still here?").1).await;
    refused_as_missing(
        &mut bo,
        ClientFrame::History {
            room: room.slug.clone(),
            before: u64::MAX,
        },
    )
    .await;
    settle(&mut bo, Duration::from_millis(200)).await;
    let removed_at = bo
        .transcript
        .iter()
        .position(|f| f.contains("room_gone"))
        .unwrap();
    for frame in &bo.transcript[removed_at..] {
        assert!(!frame.contains("after Bo left"), "{frame}");
    }
    // Removing someone who is not in the room says so.
    ann.send(&ClientFrame::Remove {
        room: room.slug.clone(),
        name: "Bo".into(),
    })
    .await;
    ann.expect_error(ErrorCode::NotFound).await;
}

#[tokio::test]
async fn room_names_are_checked_and_creating_rooms_in_a_loop_is_limited() {
    let addr = start(memory()).await;
    let mut ann = joined(addr, "Ann").await;
    let mut reader = connect(addr, "").await;
    reader
        .send(&ClientFrame::CreateRoom {
            name: "Mine".into(),
            topic: String::new(),
            private: false,
        })
        .await;
    reader.expect_error(ErrorCode::NotJoined).await;
    for (name, topic, code) in [
        ("   ", "", ErrorCode::RoomNameBlank),
        (&"x".repeat(41)[..], "", ErrorCode::RoomNameTooLong),
        ("bell\u{7}", "", ErrorCode::RoomNameInvalid),
        ("Fine", &"t".repeat(201)[..], ErrorCode::TopicTooLong),
        ("Fine", "two\nlines", ErrorCode::TopicInvalid),
        ("General", "", ErrorCode::RoomTaken),
    ] {
        ann.send(&ClientFrame::CreateRoom {
            name: name.into(),
            topic: topic.into(),
            private: false,
        })
        .await;
        ann.expect_error(code).await;
    }
    create(&mut ann, "Design", false).await;
    ann.send(&ClientFrame::CreateRoom {
        name: "DESIGN!".into(),
        topic: String::new(),
        private: false,
    })
    .await;
    let (message, _) = ann.expect_error(ErrorCode::RoomTaken).await;
    assert!(message.contains("#design"), "{message}");
    // A private room of the same name is fine: its slug is its own.
    create(&mut ann, "Design", true).await;
    // Five attempts in a burst (four above, the taken names too), then one a minute.
    create(&mut ann, "Room 5", false).await;
    ann.send(&ClientFrame::CreateRoom {
        name: "One too many".into(),
        topic: String::new(),
        private: false,
    })
    .await;
    let retry = ann
        .next_matching(|f| match f {
            ServerFrame::Error {
                code: ErrorCode::RateLimited,
                retry_after_ms,
                ..
            } => Some(*retry_after_ms),
            _ => None,
        })
        .await;
    assert!(retry.is_some_and(|ms| ms > 1_000), "{retry:?}");
    // Others are not held back by Ann's loop.
    let mut bo = joined(addr, "Bo").await;
    create(&mut bo, "Bo's", false).await;
}

#[tokio::test]
async fn joining_a_room_says_so_there_and_each_room_resumes_from_its_own_cursor() {
    let addr = start(memory()).await;
    let mut ann = joined(addr, "Ann").await;
    let mut bo = joined(addr, "Bo").await;
    let design = create(&mut ann, "Design", false).await;
    bo.send(&ClientFrame::JoinRoom {
        room: "design".into(),
    })
    .await;
    assert!(room_frame(&mut bo).await.member);
    let line = event_in(&mut ann, "design").await;
    let line = if line.name == "Ann" {
        event_in(&mut ann, "design").await
    } else {
        line
    };
    assert_eq!(line.system_line().unwrap(), "Bo has joined #design.");
    // Joining again is answered, not announced again.
    bo.send(&ClientFrame::JoinRoom {
        room: "design".into(),
    })
    .await;
    room_frame(&mut bo).await;

    let mut last = 0;
    for n in 0..3 {
        let (id, frame) = in_room("design", &format!("design {n}"));
        ann.send(&frame).await;
        last = ack(&mut ann, id).await;
    }
    ann.send(&say("in general")).await;
    // One socket hears both rooms, each event naming its room.
    let mut rooms = std::collections::HashSet::new();
    while rooms.len() < 2 {
        let event = bo.next_event().await;
        if event.kind == EventKind::Message {
            rooms.insert(event.room);
        }
    }

    // A tab showing #design resumes it from its cursor: only what it missed, in order.
    let mut tab = connect(addr, &format!("?room=design&after={}", last - 1)).await;
    let resumed = event_in(&mut tab, "design").await;
    assert_eq!((resumed.seq, resumed.text.as_str()), (last, "design 2"));
    let rooms_listed = rooms_listed(&mut tab).await;
    assert_eq!(rooms_listed[0].slug, GENERAL_ROOM);
    // A reader is in general only; a public room it opens is read, not joined.
    assert!(!rooms_listed.iter().any(|r| r.slug == "design"));
    assert_eq!(design.head, 1);

    // Bo leaves: the others see it, and Bo stops hearing the room.
    bo.send(&ClientFrame::LeaveRoom {
        room: "design".into(),
    })
    .await;
    let gone = room_gone(&mut bo).await;
    assert_eq!(gone, "design");
    loop {
        let event = event_in(&mut ann, "design").await;
        if event.kind == EventKind::Leave {
            assert_eq!(event.system_line().unwrap(), "Bo has left #design.");
            break;
        }
    }
    bo.send(&ClientFrame::LeaveRoom {
        room: GENERAL_ROOM.into(),
    })
    .await;
    bo.expect_error(ErrorCode::NotAllowed).await;
}

#[tokio::test]
async fn rooms_are_held_in_memory_only_while_in_use() {
    let mut config = memory();
    config.writer_idle = Duration::from_millis(100);
    let server = Server::start(config).await;
    let hub = server.hub.clone();
    let mut ann = joined(server.addr, "Ann").await;
    let baseline = hub.rooms_in_memory();
    assert_eq!(baseline, 1, "general, which Ann hears");

    // 1,000 rooms written to once each, by nobody listening: each is dropped when its writer idles.
    for n in 0..1_000 {
        let room = format!("quiet-{n}");
        hub.publish(&room, crate::server::store::test_message("once"))
            .await
            .unwrap();
    }
    assert!(hub.rooms_in_memory() > baseline);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while hub.rooms_in_memory() > baseline {
        assert!(tokio::time::Instant::now() < deadline, "idle rooms stay");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Their history is all there, and a room comes back on its next message.
    assert_eq!(hub.store().head("quiet-7").await.unwrap(), 1);
    let room = create(&mut ann, "Busy", false).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hub.rooms_in_memory(), 2, "a room with a listener stays");
    let (id, frame) = in_room(&room.slug, "after a pause");
    ann.send(&frame).await;
    assert_eq!(ack(&mut ann, id).await, 2, "the writer started again");
    ann.send(&ClientFrame::LeaveRoom { room: room.slug }).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while hub.rooms_in_memory() > baseline {
        assert!(tokio::time::Instant::now() < deadline, "a left room stays");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn unread_counts_and_mentions_follow_the_user_across_tabs() {
    let addr = start(memory()).await;
    let mut ann = joined(addr, "Ann").await;
    let (bo_browser, mut bo, mut bo_tab) = two_tabs(addr, "Bo").await;
    bo_tab
        .next_matching(|f| matches!(f, ServerFrame::Rooms { .. }).then_some(()))
        .await;
    create(&mut ann, "News", false).await;
    bo.send(&ClientFrame::JoinRoom {
        room: "news".into(),
    })
    .await;
    let joined = room_frame(&mut bo).await;
    assert_eq!((joined.unread, joined.mentions), (0, 0));
    assert_eq!(
        joined.last_read, joined.head,
        "joining reads up to the join"
    );

    let mut last = 0;
    for text in ["one", "hey @bo, look", "three"] {
        let (id, frame) = in_room("news", text);
        ann.send(&frame).await;
        last = ack(&mut ann, id).await;
    }
    // A new tab (or device) is told what is unread: Ann's three messages, one of them a mention.
    let mut phone = connect_as(addr, &bo_browser, "").await;
    let listed = rooms_listed(&mut phone).await;
    let news = listed.iter().find(|r| r.slug == "news").unwrap();
    assert_eq!(
        (news.last_read, news.unread, news.mentions, news.head),
        (joined.head, 3, 1, last)
    );
    let general = &listed[0];
    assert_eq!((general.slug.as_str(), general.unread), (GENERAL_ROOM, 0));

    // Reading on the phone clears the badge in the other tabs; a mark past the head means "all".
    phone
        .send(&ClientFrame::Read {
            room: "news".into(),
            seq: 10_000,
        })
        .await;
    for tab in [&mut bo, &mut bo_tab] {
        let seq = tab
            .next_matching(|f| match f {
                ServerFrame::Read { room, seq } if room == "news" && *seq > joined.head => {
                    Some(*seq)
                }
                _ => None,
            })
            .await;
        assert_eq!(seq, last);
    }
    let mut later = connect_as(addr, &bo_browser, "").await;
    let listed = rooms_listed(&mut later).await;
    let news = listed.iter().find(|r| r.slug == "news").unwrap();
    assert_eq!((news.unread, news.mentions, news.last_read), (0, 0, last));

    // Bad marks: a reader keeps none, and a room one may not see is not there.
    let mut reader = connect(addr, "").await;
    reader
        .send(&ClientFrame::Read {
            room: GENERAL_ROOM.into(),
            seq: 1,
        })
        .await;
    reader.expect_error(ErrorCode::NotJoined).await;
    let secret = create(&mut ann, "Hidden", true).await;
    refused_as_missing(
        &mut bo,
        ClientFrame::Read {
            room: secret.slug.clone(),
            seq: 1,
        },
    )
    .await;
}

#[tokio::test]
async fn the_owner_renames_changes_the_topic_and_archives_and_members_see_it() {
    let addr = start(memory()).await;
    let mut ann = joined(addr, "Ann").await;
    let mut bo = joined(addr, "Bo").await;
    let mut cy = joined(addr, "Cy").await;
    create(&mut ann, "Design", false).await;
    bo.send(&ClientFrame::JoinRoom {
        room: "design".into(),
    })
    .await;
    room_frame(&mut bo).await;
    let update =
        |name: Option<&str>, topic: Option<&str>, archived: Option<bool>| ClientFrame::UpdateRoom {
            room: "design".into(),
            name: name.map(Into::into),
            topic: topic.map(Into::into),
            archived,
        };

    ann.send(&update(Some("Design crit"), Some("Fridays at 3"), None))
        .await;
    for client in [&mut ann, &mut bo] {
        let info = room_frame(client).await;
        assert_eq!(
            (info.slug.as_str(), info.name.as_str(), info.topic.as_str()),
            ("design", "Design crit", "Fridays at 3"),
            "the slug stays, so links keep working"
        );
    }
    // Only the owner (or an admin) changes a room, with the same rules as creating one.
    bo.send(&update(Some("Mine now"), None, None)).await;
    bo.expect_error(ErrorCode::NotAllowed).await;
    ann.send(&update(Some("  "), None, None)).await;
    ann.expect_error(ErrorCode::RoomNameBlank).await;
    ann.send(&update(None, Some("two\nlines"), None)).await;
    ann.expect_error(ErrorCode::TopicInvalid).await;
    ann.send(&ClientFrame::UpdateRoom {
        room: GENERAL_ROOM.into(),
        name: Some("Lobby".into()),
        topic: None,
        archived: None,
    })
    .await;
    ann.expect_error(ErrorCode::NotAllowed).await;
    let secret = create(&mut ann, "Hidden", true).await;
    refused_as_missing(
        &mut cy,
        ClientFrame::UpdateRoom {
            room: secret.slug.clone(),
            name: Some("Found you".into()),
            topic: None,
            archived: None,
        },
    )
    .await;

    // Archived: read-only for everyone, gone from "Browse rooms", and it can come back.
    ann.send(&update(None, None, Some(true))).await;
    assert!(room_frame(&mut bo).await.archived);
    let (_, frame) = in_room("design", "still open?");
    bo.send(&frame).await;
    let (message, _) = bo.expect_error(ErrorCode::NotAllowed).await;
    assert!(message.contains("archived"), "{message}");
    cy.send(&ClientFrame::JoinRoom {
        room: "design".into(),
    })
    .await;
    cy.expect_error(ErrorCode::NotAllowed).await;
    let listed = browse(&mut cy).await;
    assert!(listed.iter().all(|r| r.slug != "design"));
    ann.send(&update(None, None, Some(false))).await;
    assert!(!room_frame(&mut bo).await.archived);
    let (id, frame) = in_room("design", "open again");
    bo.send(&frame).await;
    ack(&mut bo, id).await;
    settle(&mut cy, Duration::from_millis(100)).await;
    assert_never_heard(&cy, "Cy", &[secret.slug.as_str(), "Hidden"]);
}

#[tokio::test]
async fn what_notifies_is_chosen_per_room_and_kept_for_every_tab() {
    use crate::protocol::Notify;
    let addr = start(memory()).await;
    let mut ann = joined(addr, "Ann").await;
    let (bo_browser, mut bo, mut bo_tab) = two_tabs(addr, "Bo").await;
    let listed = rooms_listed(&mut bo_tab).await;
    assert_eq!(listed[0].notify, Notify::Mentions, "the default");
    bo.send(&ClientFrame::Notify {
        room: GENERAL_ROOM.into(),
        level: Notify::Everything,
    })
    .await;
    for tab in [&mut bo, &mut bo_tab] {
        tab.next_matching(|f| match f {
            ServerFrame::Room(info) if info.slug == GENERAL_ROOM => {
                (info.notify == Notify::Everything).then_some(())
            }
            _ => None,
        })
        .await;
    }
    let mut phone = connect_as(addr, &bo_browser, "").await;
    let listed = rooms_listed(&mut phone).await;
    assert_eq!(listed[0].notify, Notify::Everything);
    let secret = create(&mut ann, "Hidden", true).await;
    refused_as_missing(
        &mut bo,
        ClientFrame::Notify {
            room: secret.slug.clone(),
            level: Notify::Nothing,
        },
    )
    .await;
    let mut reader = connect(addr, "").await;
    reader
        .send(&ClientFrame::Notify {
            room: GENERAL_ROOM.into(),
            level: Notify::Nothing,
        })
        .await;
    reader.expect_error(ErrorCode::NotJoined).await;
    let bad = r#"{"type":"notify","room":"general","level":"sometimes"}"#;
    bo.send_raw(bad).await;
    let (message, _) = bo.expect_error(ErrorCode::BadFrame).await;
    assert!(
        message.contains("everything, mentions or nothing"),
        "{message}"
    );
}

/// The body of a response (after its headers).
fn body_of(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

#[tokio::test]
async fn room_pages_render_history_for_those_who_may_see_it_and_404_for_everyone_else() {
    use super::accounts::{boot_of, form, get_as, post, status};
    let addr = start(memory()).await;
    let origin = format!("http://{addr}");
    let (ann_cookie, mut ann, _) = two_tabs(addr, "Ann").await;
    let (bo_cookie, mut bo, _) = two_tabs(addr, "Bo").await;
    let (cy_cookie, mut cy, _) = two_tabs(addr, "Cy").await;

    let lobby = create(&mut ann, "Lobby", false).await;
    let secret = create(&mut ann, "Secret plans", true).await;
    let (_, frame) = in_room(&secret.slug, "the password is swordfish");
    ann.send(&frame).await;
    ann.send(&ClientFrame::Dm {
        with: vec!["Bo".into()],
    })
    .await;
    let dm = room_frame(&mut ann).await;
    let (_, frame) = in_room(&dm.slug, "between us two");
    ann.send(&frame).await;
    event_in(&mut bo, &dm.slug).await;

    // Ann reads her private room without a socket: history in the page, the sidebar beside it.
    let page = get_as(addr, &format!("/r/{}", secret.slug), &ann_cookie).await;
    assert_eq!(status(&page), 200);
    let boot = boot_of(&page);
    assert_eq!(boot.room, secret.slug);
    assert!(boot
        .events
        .iter()
        .any(|e| e.text == "the password is swordfish"));
    let listed: Vec<&str> = boot.rooms.iter().map(|r| r.slug.as_str()).collect();
    assert!(listed.contains(&lobby.slug.as_str()) && listed.contains(&dm.slug.as_str()));
    assert!(
        body_of(&page).contains("the password is swordfish"),
        "rendered, not only in JSON"
    );

    // The conversation has its page for both people in it, by the other one's name.
    for (cookie, other) in [(&ann_cookie, "Bo"), (&bo_cookie, "Ann")] {
        let page = get_as(addr, &format!("/dm/{other}"), cookie).await;
        assert_eq!(status(&page), 200, "{other}");
        assert_eq!(boot_of(&page).room, dm.slug);
        assert!(body_of(&page).contains("between us two"));
    }

    // Cy reads the public room without joining it...
    let page = get_as(addr, "/r/lobby", &cy_cookie).await;
    assert_eq!(status(&page), 200);
    let boot = boot_of(&page);
    let shown = boot.rooms.iter().find(|r| r.slug == "lobby").unwrap();
    assert!(!shown.member);
    // ...and gets exactly a missing room's answer for the private room and the conversation.
    let missing = get_as(addr, "/r/no-such-room", &cy_cookie).await;
    assert_eq!(status(&missing), 404);
    for path in [
        format!("/r/{}", secret.slug),
        format!("/r/{}", dm.slug),
        "/dm/Ann".to_owned(),
        "/dm/Bo".to_owned(),
    ] {
        let page = get_as(addr, &path, &cy_cookie).await;
        assert_eq!(status(&page), 404, "{path}");
        assert_eq!(body_of(&page), body_of(&missing), "{path}");
    }
    // Cy's own pages carry nothing of either.
    for path in ["/", "/r/lobby"] {
        let page = get_as(addr, path, &cy_cookie).await;
        for secret_text in [
            "swordfish",
            "Secret",
            &secret.slug,
            "between us two",
            &dm.slug,
        ] {
            assert!(!page.contains(secret_text), "{path} shows {secret_text}");
        }
    }

    // Posting without JavaScript: into her room for Ann (back to its page), refused for Cy as a
    // missing room, and nothing of his is stored.
    let sent = post(
        addr,
        "/messages",
        Some(&ann_cookie),
        Some(&origin),
        &form(&[("text", "posted by form"), ("room", &secret.slug)]),
    )
    .await;
    assert_eq!(status(&sent), 303);
    assert!(sent.contains(&format!("/r/{}", secret.slug)), "{sent}");
    let refused = post(
        addr,
        "/messages",
        Some(&cy_cookie),
        Some(&origin),
        &form(&[("text", "let me in"), ("room", &secret.slug)]),
    )
    .await;
    assert_eq!(status(&refused), 404);
    assert!(refused.contains(crate::server::rooms::NO_SUCH_ROOM));
    assert!(!refused.contains("Secret") && !refused.contains("swordfish"));
    let page = get_as(addr, &format!("/r/{}", secret.slug), &ann_cookie).await;
    let texts: Vec<String> = boot_of(&page).events.into_iter().map(|e| e.text).collect();
    assert!(texts.contains(&"posted by form".to_owned()));
    assert!(!texts.contains(&"let me in".to_owned()));
    settle(&mut cy, Duration::from_millis(200)).await;
    assert_never_heard(
        &cy,
        "Cy",
        &[
            "swordfish",
            "between us two",
            "posted by form",
            &secret.slug,
        ],
    );
}
