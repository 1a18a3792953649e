//! Accounts against the real server: guests, keeping a name, signing in and out, sessions, limits.
//! Every test of something private also checks that a third person learns nothing of it.

use super::*;
use crate::protocol::{Identity, UserKind, Via};
use crate::ui::state::Bootstrap;

/// A raw HTTP/1.1 form POST; returns the whole response.
pub(super) async fn post(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    origin: Option<&str>,
    body: &str,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let cookie = token
        .map(|t| format!("Cookie: {}={t}\r\n", crate::server::identity::COOKIE_NAME))
        .unwrap_or_default();
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{cookie}{origin}\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    String::from_utf8_lossy(&response).into_owned()
}

pub(super) fn status(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"))
}

/// A GET with the session cookie `token`.
pub(super) async fn get_as(addr: SocketAddr, path: &str, token: &str) -> String {
    get(
        addr,
        path,
        &format!(
            "Cookie: {}={token}\r\n",
            crate::server::identity::COOKIE_NAME
        ),
    )
    .await
}

/// The state a rendered page carries.
pub(super) fn boot_of(page: &str) -> Bootstrap {
    let json = page
        .split_once(&format!("id=\"{}\">", crate::ui::state::BOOTSTRAP_ID))
        .and_then(|(_, rest)| rest.split_once("</script>"))
        .map(|(json, _)| json)
        .unwrap_or_else(|| panic!("the page carries its bootstrap: {page}"));
    serde_json::from_str(json).unwrap()
}

pub(super) fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            let v: String = v
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            format!("{k}={v}")
        })
        .collect::<Vec<_>>()
        .join("&")
}

impl Client {
    /// The identity of the next `joined` frame.
    pub(super) async fn identity(&mut self) -> Identity {
        self.next_matching(|f| match f {
            ServerFrame::Joined(me) => Some(me.clone()),
            _ => None,
        })
        .await
    }

    /// Reads until the server closes the socket; returns the close code.
    pub(super) async fn close_code(&mut self) -> Option<u16> {
        loop {
            let message = timeout(PATIENCE, self.socket.next())
                .await
                .expect("closed in time");
            match message {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }
}

/// A browser that joined as a guest named `name` and kept it with `password`: its new token, and the
/// socket it joined on.
pub(super) async fn member(addr: SocketAddr, name: &str, password: &str) -> (String, Client) {
    let token = browser(addr).await;
    let mut socket = connect_as(addr, &token, "").await;
    socket.join(name).await;
    let kept = post(
        addr,
        "/account/claim",
        Some(&token),
        None,
        &form(&[("password", password)]),
    )
    .await;
    assert_eq!(status(&kept), 303, "{kept}");
    let renewed = session_token(&kept).expect("keeping a name renews the session's token");
    assert_ne!(renewed, token);
    (renewed, socket)
}

#[tokio::test]
async fn a_guest_keeps_their_name_and_nobody_else_can_join_under_it() {
    let addr = start(memory()).await;
    let token = browser(addr).await;
    let mut ann = connect_as(addr, &token, "").await;
    ann.send(&ClientFrame::Join { name: "Ann".into() }).await;
    let guest = ann.identity().await;
    assert_eq!((guest.kind, guest.via), (UserKind::Guest, Via::Guest));
    let id = Uuid::new_v4();
    ann.send(&ClientFrame::Send {
        room: GENERAL_ROOM.into(),
        id,
        text: "written as a guest".into(),
    })
    .await;
    ack(&mut ann, id).await;

    // Too short: refused, with the reason in the page, and still a guest.
    let short = post(addr, "/account/claim", Some(&token), None, "password=short").await;
    assert_eq!(status(&short), 400);
    assert_eq!(
        boot_of(&short).form_error.as_deref(),
        Some("Use a password of at least 8 characters.")
    );

    let kept = post(
        addr,
        "/account/claim",
        Some(&token),
        None,
        &form(&[("password", "correct horse")]),
    )
    .await;
    assert_eq!(status(&kept), 303, "{kept}");
    let renewed = session_token(&kept).unwrap();
    // The open socket hears who it is now: the same user, a member, and (the first one) the admin.
    let now = ann.identity().await;
    assert_eq!(
        now.user_id, guest.user_id,
        "the same user, so the history stays theirs"
    );
    assert_eq!(
        (now.kind, now.via, now.admin),
        (UserKind::Member, Via::Password, true)
    );

    // The old token is worth nothing now; the new one is the member's.
    let stale = get_as(addr, "/", &token).await;
    assert!(
        session_token(&stale).is_some(),
        "a stranger's page issues a new session"
    );
    assert_eq!(boot_of(&stale).me, None);
    let page = get_as(addr, "/", &renewed).await;
    let me = boot_of(&page).me.expect("the member's page knows them");
    assert_eq!((me.name.as_str(), me.kind), ("Ann", UserKind::Member));
    let history = boot_of(&page).events;
    let written = history.iter().find(|e| e.id == id).unwrap();
    assert_eq!(written.user_id, guest.user_id);

    // Nobody else may join under it, however it is written, online or not.
    for alike in ["Ann", "ann", "ＡＮＮ", " Ａnn "] {
        let mut other = connect(addr, "").await;
        other.send(&ClientFrame::Join { name: alike.into() }).await;
        let (message, _) = other.expect_error(ErrorCode::NameOwned).await;
        assert_eq!(message, "That name belongs to a member. Sign in to use it.");
    }
    drop(ann);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let other = browser(addr).await;
    let posted = post(addr, "/join", Some(&other), None, "name=ann").await;
    assert_eq!(status(&posted), 409);
    assert_eq!(
        boot_of(&posted).form_error.as_deref(),
        Some("That name belongs to a member. Sign in to use it.")
    );
    // And the stranger's page says nothing about the member beyond what the room shows.
    assert!(!posted.contains(&renewed));
}

#[tokio::test]
async fn signing_in_elsewhere_then_out_closes_that_browsers_tabs_only() {
    let mut config = memory();
    config.session.leave_grace = Duration::from_millis(100);
    let addr = start(config).await;
    let (_ann_token, mut ann) = member(addr, "Ann", "correct horse").await;
    ann.identity().await;

    // Bad sign-ins, each with its own clear answer, and the same answer for a wrong password and an
    // unknown name (so the form tells no one which names are members).
    let phone = browser(addr).await;
    let attempt = |name: &str, password: &str| form(&[("name", name), ("password", password)]);
    let wrong = post(
        addr,
        "/login",
        Some(&phone),
        None,
        &attempt("Ann", "wrong horse"),
    )
    .await;
    assert_eq!(status(&wrong), 401);
    let unknown = post(
        addr,
        "/login",
        Some(&phone),
        None,
        &attempt("Nobody", "wrong horse"),
    )
    .await;
    assert_eq!(status(&unknown), 401);
    let error = |page: &str| match boot_of(page).page {
        crate::ui::state::Page::SignIn { error, .. } => error,
        other => panic!("the sign-in page, not {other:?}"),
    };
    assert_eq!(
        error(&wrong).as_deref(),
        Some(super::super::identity::http::WRONG_CREDENTIALS)
    );
    assert_eq!(error(&wrong), error(&unknown));
    let blank = post(addr, "/login", Some(&phone), None, &attempt("Ann", "")).await;
    assert_eq!(
        (status(&blank), error(&blank).as_deref()),
        (400, Some("Enter your password."))
    );
    let huge = "x".repeat(2048);
    let long = post(addr, "/login", Some(&phone), None, &attempt("Ann", &huge)).await;
    assert_eq!(status(&long), 400);
    assert!(error(&long).unwrap().contains("too long"));

    // The right password, from another browser: a new session acting for the member.
    let signed_in = post(
        addr,
        "/login",
        Some(&phone),
        None,
        &attempt("ann", "correct horse"),
    )
    .await;
    assert_eq!(status(&signed_in), 303, "{signed_in}");
    let phone_token = session_token(&signed_in).unwrap();
    assert_ne!(phone_token, phone, "sign-in issues a new token");
    let mut tab1 = connect_as(addr, &phone_token, "").await;
    let me = tab1.identity().await;
    assert_eq!(
        (me.name.as_str(), me.kind, me.via),
        ("Ann", UserKind::Member, Via::Password)
    );
    let mut tab2 = connect_as(addr, &phone_token, "").await;
    tab2.identity().await;

    // A sign-out from another site is refused and changes nothing.
    let forged = post(
        addr,
        "/logout",
        Some(&phone_token),
        Some("https://evil.example"),
        "",
    )
    .await;
    assert_eq!(status(&forged), 403);
    assert!(boot_of(&get_as(addr, "/", &phone_token).await).me.is_some());

    // Signing out closes both tabs of that browser at once, and only them.
    let out = post(addr, "/logout", Some(&phone_token), None, "").await;
    assert_eq!(status(&out), 303);
    assert!(header(&out, "set-cookie").unwrap().contains("Max-Age=0"));
    assert_eq!(
        tab1.close_code().await,
        Some(crate::server::session::CLOSE_SIGNED_OUT)
    );
    assert_eq!(
        tab2.close_code().await,
        Some(crate::server::session::CLOSE_SIGNED_OUT)
    );
    assert_eq!(boot_of(&get_as(addr, "/", &phone_token).await).me, None);
    ann.send(&say("still here")).await;
    let event = ann
        .next_matching(|f| match f {
            ServerFrame::Event(e) if e.kind == EventKind::Message => Some(e.clone()),
            _ => None,
        })
        .await;
    assert_eq!(event.text, "still here");
}

#[tokio::test]
async fn a_cross_site_sign_in_is_refused() {
    let addr = start(memory()).await;
    let (_, _ann) = member(addr, "Ann", "correct horse").await;
    let form = form(&[("name", "Ann"), ("password", "correct horse")]);
    let forged = post(addr, "/login", None, Some("https://evil.example"), &form).await;
    assert_eq!(status(&forged), 403);
    assert!(session_token(&forged).is_none());
    let null = post(addr, "/login", None, Some("null"), &form).await;
    assert_eq!(status(&null), 403);
}

#[tokio::test]
async fn invented_or_forged_cookies_are_not_sessions() {
    let addr = start(memory()).await;
    for invented in [
        Uuid::new_v4().to_string(),
        crate::server::identity::new_token(),
        "<script>".to_owned(),
    ] {
        let page = get_as(addr, "/", &invented).await;
        let issued = session_token(&page).expect("a new session replaces it");
        assert_ne!(issued, invented);
        assert_eq!(boot_of(&page).me, None);
        // Joining on a socket that carries it binds nothing to it: the next socket is a stranger's.
        let mut socket = connect_as(addr, &invented, "").await;
        let name = format!("Inv{}", &Uuid::new_v4().simple().to_string()[..6]);
        socket.join(&name).await;
        let mut again = connect_as(addr, &invented, "").await;
        again
            .next_matching(|f| match f {
                ServerFrame::Joined(_) => panic!("an invented token is nobody's session"),
                ServerFrame::Presence { .. } => Some(()),
                _ => None,
            })
            .await;
    }
}

#[tokio::test]
async fn the_eleventh_sign_in_attempt_waits_and_says_how_long() {
    let mut config = memory();
    config.signin_attempts = 3;
    let addr = start(config).await;
    let (_, _ann) = member(addr, "Ann", "correct horse").await;
    let attempt = form(&[("name", "Ann"), ("password", "guess guess")]);
    for _ in 0..3 {
        assert_eq!(
            status(&post(addr, "/login", None, None, &attempt).await),
            401
        );
    }
    let limited = post(addr, "/login", None, None, &attempt).await;
    assert_eq!(status(&limited), 429);
    let wait: u64 = header(&limited, "retry-after").unwrap().parse().unwrap();
    assert!(wait > 0 && wait <= 300, "{wait}");
    let crate::ui::state::Page::SignIn { error, .. } = boot_of(&limited).page else {
        panic!("the sign-in page")
    };
    let error = error.unwrap();
    assert!(
        error.starts_with("Too many sign-in attempts. Try again in"),
        "{error}"
    );
    // Even the right password waits: the limit counts attempts, not failures.
    let right = form(&[("name", "Ann"), ("password", "correct horse")]);
    assert_eq!(status(&post(addr, "/login", None, None, &right).await), 429);
}

#[tokio::test]
async fn two_browsers_claiming_one_guest_name_at_the_same_instant_one_wins() {
    let addr = start(memory()).await;
    for round in 0..5 {
        let name = format!("Zed{round}");
        let mut clients = Vec::new();
        for _ in 0..2 {
            clients.push(connect(addr, "").await);
        }
        let joins = clients.into_iter().enumerate().map(|(i, mut client)| {
            // The same name as people read it, written two ways.
            let name = if i == 0 {
                name.clone()
            } else {
                name.to_uppercase()
            };
            tokio::spawn(async move {
                client.send(&ClientFrame::Join { name }).await;
                client
                    .next_matching(|f| match f {
                        ServerFrame::Joined(_) => Some(true),
                        ServerFrame::Error {
                            code: ErrorCode::NameTaken,
                            ..
                        } => Some(false),
                        _ => None,
                    })
                    .await
            })
        });
        let mut won = 0;
        for join in joins.collect::<Vec<_>>() {
            won += usize::from(join.await.unwrap());
        }
        assert_eq!(won, 1, "round {round}");
    }
}

#[tokio::test]
async fn a_member_lists_their_sessions_and_ends_one_elsewhere() {
    let addr = start(memory()).await;
    let (laptop, _ann) = member(addr, "Ann", "correct horse").await;
    let signed_in = post(
        addr,
        "/login",
        None,
        None,
        &form(&[("name", "Ann"), ("password", "correct horse")]),
    )
    .await;
    let phone = session_token(&signed_in).unwrap();
    let mut phone_socket = connect_as(addr, &phone, "").await;
    phone_socket.identity().await;

    let listed = get_as(addr, "/account/sessions", &laptop).await;
    assert_eq!(status(&listed), 200);
    let body = listed.split("\r\n\r\n").nth(1).unwrap();
    let sessions: Vec<crate::server::identity::http::SessionEntry> =
        serde_json::from_str(body).unwrap();
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    assert_eq!(sessions.iter().filter(|s| s.current).count(), 1);
    let other = sessions.iter().find(|s| !s.current).unwrap().id;
    // The page lists them too, for the member only.
    let page = boot_of(&get_as(addr, "/", &laptop).await);
    assert_eq!(page.sessions.len(), 2);
    assert!(page.sessions.iter().any(|d| d.id == other && !d.current));

    // A guest (the third person) can neither list nor end them, and learns nothing from trying.
    let guest = browser(addr).await;
    let peek = get_as(addr, "/account/sessions", &guest).await;
    assert_eq!(status(&peek), 401);
    assert!(!peek.contains(&other.to_string()));
    let guest_page = get_as(addr, "/", &guest).await;
    assert!(boot_of(&guest_page).sessions.is_empty());
    assert!(!guest_page.contains(&other.to_string()));
    let (_, _bo) = member(addr, "Bo", "battery staple").await;
    let bo = session_token(
        &post(
            addr,
            "/login",
            None,
            None,
            &form(&[("name", "Bo"), ("password", "battery staple")]),
        )
        .await,
    )
    .unwrap();
    let theirs = post(
        addr,
        &format!("/account/sessions/{other}/end"),
        Some(&bo),
        None,
        "",
    )
    .await;
    assert_eq!(status(&theirs), 404, "someone else's session is not found");

    let ended = post(
        addr,
        &format!("/account/sessions/{other}/end"),
        Some(&laptop),
        None,
        "",
    )
    .await;
    assert_eq!(status(&ended), 303);
    assert_eq!(
        phone_socket.close_code().await,
        Some(crate::server::session::CLOSE_SIGNED_OUT)
    );
    assert_eq!(boot_of(&get_as(addr, "/", &phone).await).me, None);
    assert!(boot_of(&get_as(addr, "/", &laptop).await).me.is_some());
}

#[tokio::test]
async fn a_burst_over_the_limit_waits_its_turn_and_arrives_in_order() {
    let mut config = memory();
    config.session.messages_per_second = std::num::NonZeroU32::new(20).unwrap();
    config.session.burst = std::num::NonZeroU32::new(5).unwrap();
    let addr = start(config).await;
    let token = browser(addr).await;
    let mut tab = connect_as(addr, &token, "").await;
    tab.join("Quick").await;
    let mut watcher = joined(addr, "Watcher").await;

    let ids: Vec<Uuid> = (0..30).map(|_| Uuid::new_v4()).collect();
    let text = |i: usize| format!("burst {i}");
    // Typed quickly but not all at once: the allowance refills between some of them, which is what
    // would let a later message overtake a refused one.
    for (i, id) in ids.iter().enumerate() {
        tab.send(&ClientFrame::Send {
            room: GENERAL_ROOM.into(),
            id: *id,
            text: text(i),
        })
        .await;
        tokio::time::sleep(Duration::from_millis(12)).await;
    }
    // As a client does: on "rate_limited", wait what it says, then send everything not yet stored,
    // in order.
    let mut stored = std::collections::HashSet::new();
    let mut rounds = 0;
    while stored.len() < ids.len() {
        rounds += 1;
        assert!(rounds < 100, "the burst gets through");
        let mut wait = None;
        let outstanding = ids.len() - stored.len();
        for _ in 0..outstanding {
            match tab
                .next_matching(|f| match f {
                    ServerFrame::Ack { id, .. } => Some(Ok(*id)),
                    ServerFrame::Error {
                        code: ErrorCode::RateLimited,
                        id: Some(id),
                        retry_after_ms,
                        ..
                    } => Some(Err((*id, *retry_after_ms))),
                    _ => None,
                })
                .await
            {
                Ok(id) => {
                    stored.insert(id);
                }
                Err((_, retry)) => {
                    let retry = retry.expect("rate_limited says when to try again");
                    wait = Some(wait.map_or(retry, |w: u64| w.max(retry)));
                }
            }
        }
        if let Some(wait) = wait {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            for (i, id) in ids
                .iter()
                .enumerate()
                .filter(|(_, id)| !stored.contains(*id))
            {
                tab.send(&ClientFrame::Send {
                    room: GENERAL_ROOM.into(),
                    id: *id,
                    text: text(i),
                })
                .await;
            }
        }
    }
    let mut seen = Vec::new();
    while seen.len() < ids.len() {
        let event = watcher.next_event().await;
        if event.kind == EventKind::Message && event.text.starts_with("burst ") {
            seen.push(event.text);
        }
    }
    let expected: Vec<String> = (0..ids.len()).map(text).collect();
    assert_eq!(
        seen, expected,
        "in the order written, none lost, none twice"
    );
}

#[tokio::test]
async fn more_sockets_do_not_buy_a_faster_rate() {
    let mut config = memory();
    config.session.messages_per_second = std::num::NonZeroU32::new(1).unwrap();
    config.session.burst = std::num::NonZeroU32::new(2).unwrap();
    let addr = start(config).await;
    let token = browser(addr).await;
    let mut first = connect_as(addr, &token, "").await;
    first.join("Twin").await;
    let mut second = connect_as(addr, &token, "").await;
    second.identity().await;
    for _ in 0..2 {
        let (id, frame) = {
            let id = Uuid::new_v4();
            (
                id,
                ClientFrame::Send {
                    room: GENERAL_ROOM.into(),
                    id,
                    text: "ok".into(),
                },
            )
        };
        first.send(&frame).await;
        ack(&mut first, id).await;
    }
    second.send(&say("one more, from another socket")).await;
    let (message, _) = second.expect_error(ErrorCode::RateLimited).await;
    assert!(message.contains("too fast"), "{message}");

    // Per client address too: many users from one address share its allowance.
    let mut config = memory();
    config.session.address_per_second = std::num::NonZeroU32::new(1).unwrap();
    config.session.address_burst = std::num::NonZeroU32::new(3).unwrap();
    let addr = start(config).await;
    let mut sent = 0;
    let mut refused = false;
    for i in 0..4 {
        let mut user = joined(addr, &format!("Crowd{i}")).await;
        let id = Uuid::new_v4();
        user.send(&ClientFrame::Send {
            room: GENERAL_ROOM.into(),
            id,
            text: "hi".into(),
        })
        .await;
        match user
            .next_matching(|f| match f {
                ServerFrame::Ack { .. } => Some(true),
                ServerFrame::Error {
                    code: ErrorCode::RateLimited,
                    ..
                } => Some(false),
                _ => None,
            })
            .await
        {
            true => sent += 1,
            false => refused = true,
        }
    }
    assert_eq!((sent, refused), (3, true));
}

/// Waits for the `delete` of `target` on `client`'s live stream.
async fn delete_of(client: &mut Client, target: Uuid) -> ChatEvent {
    client
        .next_matching(|f| match f {
            ServerFrame::Event(e) if e.kind == EventKind::Delete && e.target == Some(target) => {
                Some(e.clone())
            }
            _ => None,
        })
        .await
}

#[tokio::test]
async fn authors_and_admins_delete_messages_for_everyone_and_from_history() {
    let addr = start(memory()).await;
    let (admin_token, mut admin) = member(addr, "Ada", "correct horse").await;
    admin.identity().await;
    let mut bo = joined(addr, "Bo").await;
    let mut third = joined(addr, "Cy").await;

    let said = |text: &str| (Uuid::new_v4(), text.to_owned());
    let (own, own_text) = said("Bo takes this back");
    bo.send(&ClientFrame::Send {
        room: GENERAL_ROOM.into(),
        id: own,
        text: own_text.clone(),
    })
    .await;
    ack(&mut bo, own).await;
    let (kept, kept_text) = said("Bo keeps this one");
    bo.send(&ClientFrame::Send {
        room: GENERAL_ROOM.into(),
        id: kept,
        text: kept_text.clone(),
    })
    .await;
    ack(&mut bo, kept).await;

    // Someone else's message: refused, and it stays.
    third
        .send(&ClientFrame::Delete {
            room: GENERAL_ROOM.into(),
            id: kept,
        })
        .await;
    let (message, _) = third.expect_error(ErrorCode::NotAllowed).await;
    assert_eq!(message, "Only its author or an admin can delete a message.");
    third
        .send(&ClientFrame::Delete {
            room: GENERAL_ROOM.into(),
            id: Uuid::new_v4(),
        })
        .await;
    third.expect_error(ErrorCode::NotFound).await;

    // The author deletes their own; everyone is told, live.
    bo.send(&ClientFrame::Delete {
        room: GENERAL_ROOM.into(),
        id: own,
    })
    .await;
    for client in [&mut bo, &mut third, &mut admin] {
        let delete = delete_of(client, own).await;
        assert_eq!(delete.name, "Bo");
        assert!(delete.text.is_empty());
    }
    // The admin deletes anyone's.
    admin
        .send(&ClientFrame::Delete {
            room: GENERAL_ROOM.into(),
            id: kept,
        })
        .await;
    delete_of(&mut third, kept).await;

    // Gone from the history too: a new page, a resume and a late reader show neither text.
    let page = get_as(addr, "/", &admin_token).await;
    for text in [&own_text, &kept_text] {
        assert!(!page.contains(text.as_str()), "{text} is still in the page");
    }
    let boot = boot_of(&page);
    let tombstone = boot.events.iter().find(|e| e.id == own).unwrap();
    assert_eq!(
        (tombstone.kind, tombstone.text.as_str()),
        (EventKind::Deleted, "")
    );
    let mut late = connect(addr, "?after=0").await;
    let mut replayed = Vec::new();
    loop {
        let frame = late.next().await;
        match frame {
            ServerFrame::Event(e) => replayed.push(e),
            ServerFrame::Presence { .. } => break,
            _ => {}
        }
    }
    assert!(replayed
        .iter()
        .all(|e| e.text != own_text && e.text != kept_text));
    assert!(replayed
        .iter()
        .any(|e| e.kind == EventKind::Delete && e.target == Some(own)));
    // A new tab's recent page, which a busy room serves from its frames in memory, shows neither.
    let mut fresh = connect(addr, "").await;
    let mut page = Vec::new();
    loop {
        match fresh.next().await {
            ServerFrame::Event(e) => page.push(e),
            ServerFrame::Presence { .. } => break,
            _ => {}
        }
    }
    assert!(page
        .iter()
        .any(|e| e.id == own && e.kind == EventKind::Deleted));
    assert!(page
        .iter()
        .all(|e| e.text != own_text && e.text != kept_text));
    // Deleting it again finds nothing.
    admin
        .send(&ClientFrame::Delete {
            room: GENERAL_ROOM.into(),
            id: own,
        })
        .await;
    admin.expect_error(ErrorCode::NotFound).await;
}

#[tokio::test]
async fn an_admin_bans_a_user_whose_sockets_close_and_whose_name_stays_locked() {
    let mut config = memory();
    config.session.leave_grace = Duration::from_millis(100);
    let addr = start(config).await;
    let (admin_token, mut admin) = member(addr, "Ada", "correct horse").await;
    let ada = admin.identity().await;
    assert!(ada.admin, "the first member is the admin");
    let (bo_token, mut bo) = member(addr, "Bo", "battery staple").await;
    let bo_id = bo.identity().await.user_id;
    assert!(
        !boot_of(&get_as(addr, "/", &bo_token).await)
            .me
            .unwrap()
            .admin
    );
    let mut bo_tab = connect_as(addr, &bo_token, "").await;
    bo_tab.identity().await;
    let (cy_token, mut cy) = member(addr, "Cy", "cy password").await;
    cy.identity().await;

    // Not an admin: refused, whatever the target.
    let forbidden = post(
        addr,
        &format!("/admin/users/{bo_id}/ban"),
        Some(&cy_token),
        None,
        "",
    )
    .await;
    assert_eq!(status(&forbidden), 403);
    let forbidden = post(
        addr,
        &format!("/admin/users/{}/ban", Uuid::new_v4()),
        Some(&cy_token),
        None,
        "",
    )
    .await;
    assert_eq!(
        status(&forbidden),
        403,
        "a stranger cannot even tell whether the user exists"
    );
    // Cross-site: refused.
    let forged = post(
        addr,
        &format!("/admin/users/{bo_id}/ban"),
        Some(&admin_token),
        Some("https://evil.example"),
        "",
    )
    .await;
    assert_eq!(status(&forged), 403);

    let banned = post(
        addr,
        &format!("/admin/users/{bo_id}/ban"),
        Some(&admin_token),
        None,
        "",
    )
    .await;
    assert_eq!(status(&banned), 303, "{banned}");
    assert_eq!(
        bo.close_code().await,
        Some(crate::server::session::CLOSE_SIGNED_OUT)
    );
    assert_eq!(
        bo_tab.close_code().await,
        Some(crate::server::session::CLOSE_SIGNED_OUT)
    );
    let leave = admin
        .next_matching(|f| match f {
            ServerFrame::Event(e) if e.kind == EventKind::Leave && e.name == "Bo" => {
                Some(e.clone())
            }
            _ => None,
        })
        .await;
    assert_eq!(leave.user_id, bo_id);

    // Reconnecting with the old cookie: a stranger, who cannot take the name back, nor sign in.
    let mut back = connect_as(addr, &bo_token, "").await;
    back.send(&ClientFrame::Join { name: "bo".into() }).await;
    let (message, _) = back.expect_error(ErrorCode::NameOwned).await;
    assert_eq!(message, "That name is not available.");
    let signin = post(
        addr,
        "/login",
        None,
        None,
        &form(&[("name", "Bo"), ("password", "battery staple")]),
    )
    .await;
    assert_eq!(status(&signin), 403);
    let crate::ui::state::Page::SignIn { error, .. } = boot_of(&signin).page else {
        panic!("the sign-in page")
    };
    assert_eq!(error.as_deref(), Some("This account has been banned."));
    // Cy, the third person, was not touched.
    cy.send(&say("still here")).await;
    cy.next_matching(|f| matches!(f, ServerFrame::Ack { .. }).then_some(()))
        .await;
}

#[tokio::test]
async fn an_admin_makes_another_member_an_admin_who_hears_it_at_once() {
    let addr = start(memory()).await;
    let (admin_token, mut admin) = member(addr, "Ada", "correct horse").await;
    admin.identity().await;
    let (_, mut bo) = member(addr, "Bo", "battery staple").await;
    let bo_id = bo.identity().await.user_id;
    let guest = joined(addr, "Guesty").await;
    drop(guest);

    let made = post(
        addr,
        &format!("/admin/users/{bo_id}/admin"),
        Some(&admin_token),
        None,
        "",
    )
    .await;
    assert_eq!(status(&made), 303, "{made}");
    let now = bo.identity().await;
    assert!(now.admin);
    // A guest cannot be made one.
    let unknown = post(
        addr,
        &format!("/admin/users/{}/admin", Uuid::new_v4()),
        Some(&admin_token),
        None,
        "",
    )
    .await;
    assert_eq!(status(&unknown), 404);
}

const APP_SECRET: &str = "the embedding app's secret, 32+ bytes";

fn app_token(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(APP_SECRET.as_bytes()),
    )
    .unwrap()
}

fn in_an_hour() -> u64 {
    jsonwebtoken::get_current_timestamp() + 3600
}

/// Connects with `Authorization: Bearer <token>`.
pub(super) async fn connect_with_bearer(addr: SocketAddr, token: &str) -> Client {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let socket = connect_async(request).await.expect("websocket connects").0;
    Client {
        socket,
        backlog: VecDeque::new(),
        transcript: Vec::new(),
    }
}

#[tokio::test]
async fn an_embedding_apps_signed_tokens_sign_people_in_and_bad_ones_are_told_apart() {
    let mut config = memory();
    config.jwt_secret = Some(APP_SECRET.into());
    let addr = start(config).await;
    let (_, _ann) = member(addr, "Ann", "correct horse").await;
    let mut third = joined(addr, "Cy").await;

    // In the page's URL: exchanged for a session, and the browser sent on to a clean URL.
    let token =
        app_token(serde_json::json!({"sub": "app-user-1", "name": "Dana", "exp": in_an_hour()}));
    let browser_token = browser(addr).await;
    let page = get_as(addr, &format!("/?token={token}"), &browser_token).await;
    assert_eq!(status(&page), 303, "{page}");
    assert_eq!(header(&page, "location"), Some("/"));
    let session = session_token(&page).expect("a new session");
    let me = boot_of(&get_as(addr, "/", &session).await).me.unwrap();
    assert_eq!(
        (me.name.as_str(), me.kind, me.via),
        ("Dana", UserKind::Member, Via::Token)
    );
    let mut dana = connect_as(addr, &session, "").await;
    assert_eq!(dana.identity().await.user_id, me.user_id);
    // The same app user again, by a Bearer header: the same user.
    let mut native = connect_with_bearer(addr, &token).await;
    let again = native.identity().await;
    assert_eq!((again.user_id, again.via), (me.user_id, Via::Token));
    // And by a first frame.
    let mut framed = connect(addr, "").await;
    framed
        .send(&ClientFrame::Auth {
            token: token.clone(),
        })
        .await;
    assert_eq!(framed.identity().await.user_id, me.user_id);
    // The name is the app user's now: a guest cannot take it.
    let mut guest = connect(addr, "").await;
    guest
        .send(&ClientFrame::Join {
            name: "dana".into(),
        })
        .await;
    guest.expect_error(ErrorCode::NameOwned).await;

    // Expired: its own code, and its own close code.
    let expired = app_token(serde_json::json!({"sub": "u2", "name": "Eve", "exp": 1_000_000}));
    let mut late = connect_with_bearer(addr, &expired).await;
    let (message, _) = late.expect_error(ErrorCode::TokenExpired).await;
    assert!(message.contains("expired"));
    assert_eq!(
        late.close_code().await,
        Some(crate::server::session::CLOSE_TOKEN_EXPIRED)
    );
    let page = get_as(addr, &format!("/?token={expired}"), &browser_token).await;
    assert_eq!(status(&page), 401);
    assert!(boot_of(&page).form_error.unwrap().contains("expired"));

    // Invalid, each way: forged, another algorithm, alg none, no sub, a bad name, a member's name.
    use base64::Engine;
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": "u3", "name": "Mallory", "exp": in_an_hour()}),
        &jsonwebtoken::EncodingKey::from_secret(b"not the app's secret at all, really"),
    )
    .unwrap();
    let other_alg = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS384),
        &serde_json::json!({"sub": "u3", "name": "Mallory", "exp": in_an_hour()}),
        &jsonwebtoken::EncodingKey::from_secret(APP_SECRET.as_bytes()),
    )
    .unwrap();
    let none = format!(
        "{}.{}.",
        b64(serde_json::json!({"alg": "none", "typ": "JWT"})),
        b64(serde_json::json!({"sub": "u3", "name": "Mallory", "exp": in_an_hour()}))
    );
    let no_sub = app_token(serde_json::json!({"name": "Mallory", "exp": in_an_hour()}));
    let bad_name =
        app_token(serde_json::json!({"sub": "u4", "name": "\u{202E}evil", "exp": in_an_hour()}));
    let members_name =
        app_token(serde_json::json!({"sub": "u5", "name": "ANN", "exp": in_an_hour()}));
    for bad in [
        &forged,
        &other_alg,
        &none,
        &no_sub,
        &bad_name,
        &members_name,
    ] {
        let mut client = connect_with_bearer(addr, bad).await;
        let (message, _) = client.expect_error(ErrorCode::TokenInvalid).await;
        assert!(
            !message.contains(bad.as_str()),
            "the error never repeats the token"
        );
        assert_eq!(
            client.close_code().await,
            Some(crate::server::session::CLOSE_TOKEN_INVALID)
        );
        let mut framed = connect(addr, "").await;
        framed
            .send(&ClientFrame::Auth {
                token: bad.to_string(),
            })
            .await;
        framed.expect_error(ErrorCode::TokenInvalid).await;
        assert_eq!(
            framed.close_code().await,
            Some(crate::server::session::CLOSE_TOKEN_INVALID)
        );
    }

    // The third person saw Dana join, and nothing of the tokens.
    let line = third
        .next_matching(|f| match f {
            ServerFrame::Event(e) if e.kind == EventKind::Join && e.name == "Dana" => {
                Some(e.clone())
            }
            _ => None,
        })
        .await;
    assert_eq!(line.user_kind, UserKind::Member);
}

#[tokio::test]
async fn without_a_configured_key_every_token_is_refused() {
    let addr = start(memory()).await;
    let token = app_token(serde_json::json!({"sub": "x", "name": "Xi", "exp": in_an_hour()}));
    let mut client = connect_with_bearer(addr, &token).await;
    client.expect_error(ErrorCode::TokenInvalid).await;
}

/// The link a page's flash shows.
fn flash_url(page: &str) -> String {
    let flash = boot_of(page).flash.expect("the page shows the new link");
    assert!(
        flash
            .qr
            .as_deref()
            .is_some_and(|qr| qr.starts_with("data:image/svg+xml;base64,")),
        "with a QR code"
    );
    flash.url
}

/// The path of an absolute link on this server.
fn path_of(url: &str) -> String {
    format!("/{}", url.splitn(4, '/').nth(3).unwrap())
}

#[tokio::test]
async fn a_one_time_sign_in_link_moves_a_member_to_another_device_once() {
    let addr = start(memory()).await;
    let (laptop, _ann) = member(addr, "Ann", "correct horse").await;
    let made = post(addr, "/account/link", Some(&laptop), None, "").await;
    assert_eq!(status(&made), 200, "{made}");
    let url = flash_url(&made);
    assert!(url.starts_with(&format!("http://{addr}/link/")), "{url}");
    let link = path_of(&url);

    // The phone opens it: signed in as Ann, with a session of its own.
    let phone = browser(addr).await;
    let used = get_as(addr, &link, &phone).await;
    assert_eq!(status(&used), 303, "{used}");
    let phone_session = session_token(&used).unwrap();
    let me = boot_of(&get_as(addr, "/", &phone_session).await)
        .me
        .unwrap();
    assert_eq!((me.name.as_str(), me.kind), ("Ann", UserKind::Member));
    // Once only: a second browser, or the same one again, gets "used".
    let thief = browser(addr).await;
    let again = get_as(addr, &link, &thief).await;
    assert_eq!(status(&again), 410);
    assert!(boot_of(&again)
        .form_error
        .unwrap()
        .contains("used or has expired"));
    assert_eq!(boot_of(&get_as(addr, "/", &thief).await).me, None);
    // A guest cannot make one.
    let guest = browser(addr).await;
    let refused = post(addr, "/account/link", Some(&guest), None, "").await;
    assert_eq!(status(&refused), 401);
}

#[tokio::test]
async fn an_admin_makes_a_sign_in_link_for_a_member_who_forgot_their_password() {
    let addr = start(memory()).await;
    let (admin, _ada) = member(addr, "Ada", "correct horse").await;
    let (bo_token, mut bo) = member(addr, "Bo", "forgotten pass").await;
    let bo_id = bo.identity().await.user_id;
    // Bo cannot make one for the admin (only admins make links for others).
    let refused = post(
        addr,
        &format!("/admin/users/{}/link", Uuid::new_v4()),
        Some(&bo_token),
        None,
        "",
    )
    .await;
    assert_eq!(status(&refused), 403);
    let made = post(
        addr,
        &format!("/admin/users/{bo_id}/link"),
        Some(&admin),
        None,
        "",
    )
    .await;
    assert_eq!(status(&made), 200, "{made}");
    let flash = boot_of(&made).flash.unwrap();
    assert_eq!(flash.title, "Sign-in link for Bo");
    let fresh = browser(addr).await;
    let used = get_as(addr, &path_of(&flash.url), &fresh).await;
    assert_eq!(status(&used), 303);
    let me = boot_of(&get_as(addr, "/", &session_token(&used).unwrap()).await)
        .me
        .unwrap();
    assert_eq!(me.user_id, bo_id);
}

#[tokio::test]
async fn members_only_lets_guests_read_and_join_but_not_post() {
    let mut config = memory();
    config.session.access = crate::protocol::Access::Members;
    let addr = start(config).await;
    let (_, mut ann) = member(addr, "Ann", "correct horse").await;
    ann.identity().await;
    ann.send(&say("members only here")).await;
    let mut guest = joined(addr, "Guest").await;
    let event = guest
        .next_matching(|f| match f {
            ServerFrame::Event(e) if e.text == "members only here" => Some(e.clone()),
            _ => None,
        })
        .await;
    assert_eq!(event.name, "Ann", "guests may read");
    let id = Uuid::new_v4();
    guest
        .send(&ClientFrame::Send {
            room: GENERAL_ROOM.into(),
            id,
            text: "may I?".into(),
        })
        .await;
    let (message, refused) = guest.expect_error(ErrorCode::MembersOnly).await;
    assert_eq!(refused, Some(id));
    assert!(message.contains("keep your name"), "{message}");
    // Without JavaScript too.
    let token = browser(addr).await;
    assert_eq!(
        status(&post(addr, "/join", Some(&token), None, "name=Formy").await),
        303
    );
    let posted = post(addr, "/messages", Some(&token), None, "text=hello").await;
    assert_eq!(status(&posted), 403);
    assert!(boot_of(&posted)
        .form_error
        .unwrap()
        .contains("Only members"));
}

#[tokio::test]
async fn an_invite_only_chat_shows_strangers_nothing_until_they_use_an_invite() {
    let mut config = memory();
    config.session.access = crate::protocol::Access::Invite;
    let store = Arc::new(MemoryStore::new(100));
    let stores = Stores {
        events: store.clone(),
        identity: store.clone(),
        rooms: store.clone(),
        bots: store.clone(),
        backplane: Arc::new(Local),
    };
    let server = Server::start_with(config, Some(stores)).await;
    let addr = server.addr;
    // Runs until the test's runtime ends.
    std::mem::forget(server);
    let admin_browser = browser(addr).await;
    let stranger_page = get_as(addr, "/", &admin_browser).await;
    let boot = boot_of(&stranger_page);
    assert!(boot.events.is_empty());
    assert_eq!(boot.access, crate::protocol::Access::Invite);
    assert!(boot.form_error.unwrap().contains("invite-only"));
    let mut stranger = connect_as(addr, &admin_browser, "").await;
    stranger.expect_error(ErrorCode::InviteRequired).await;
    assert_eq!(
        stranger.close_code().await,
        Some(crate::server::session::CLOSE_INVITE_REQUIRED)
    );
    let posted = post(addr, "/join", Some(&admin_browser), None, "name=Sneaky").await;
    assert_eq!(status(&posted), 403);
    // A cookie-less client gets nothing either.
    let mut bot = connect(addr, "").await;
    bot.expect_error(ErrorCode::InviteRequired).await;

    // The operator's invite (what `confab invite` prints) lets the first person in; they keep their
    // name and are the admin.
    let (code, _) = crate::server::identity::make_invite(store.as_ref(), Uuid::nil(), 1, 1)
        .await
        .unwrap();
    let admitted = get_as(addr, &format!("/join/{code}"), &admin_browser).await;
    assert_eq!(status(&admitted), 303, "{admitted}");
    let mut ada = connect_as(addr, &admin_browser, "").await;
    ada.join("Ada").await;
    let kept = post(
        addr,
        "/account/claim",
        Some(&admin_browser),
        None,
        "password=correct+horse",
    )
    .await;
    let admin = session_token(&kept).unwrap();
    assert!(ada.identity().await.admin);
    // Used up: the next stranger with the same link is refused.
    let late = browser(addr).await;
    assert_eq!(
        status(&get_as(addr, &format!("/join/{code}"), &late).await),
        410
    );

    // The admin invites two people for an hour.
    let made = post(addr, "/admin/invites", Some(&admin), None, "uses=2&hours=1").await;
    assert_eq!(status(&made), 200, "{made}");
    let link = path_of(&flash_url(&made));
    assert!(boot_of(&made)
        .flash
        .unwrap()
        .note
        .starts_with("Works 2 times"));
    for name in ["Bea", "Cid"] {
        let newcomer = browser(addr).await;
        assert_eq!(status(&get_as(addr, &link, &newcomer).await), 303);
        let page = get_as(addr, "/", &newcomer).await;
        assert!(
            !boot_of(&page).events.is_empty(),
            "admitted: the history shows"
        );
        let mut client = connect_as(addr, &newcomer, "").await;
        client.join(name).await;
    }
    let third = browser(addr).await;
    let refused = get_as(addr, &link, &third).await;
    assert_eq!(status(&refused), 410);
    assert!(boot_of(&refused).form_error.unwrap().contains("used up"));
    assert!(boot_of(&refused).events.is_empty(), "still nothing to see");
    // Bad invite requests: not an admin, or out of range.
    let bea = browser(addr).await;
    assert_eq!(
        status(&post(addr, "/admin/invites", Some(&bea), None, "").await),
        403
    );
    let wild = post(addr, "/admin/invites", Some(&admin), None, "uses=0&hours=1").await;
    assert_eq!(status(&wild), 400);
}

#[tokio::test]
async fn confab_admin_names_an_administrator_besides_the_first_member() {
    let mut config = memory();
    config.admin = Some("Bo".into());
    let addr = start(config).await;
    let (_, mut ann) = member(addr, "Ann", "correct horse").await;
    assert!(ann.identity().await.admin, "the first member");
    let (_, mut cy) = member(addr, "Cy", "cy password").await;
    assert!(!cy.identity().await.admin);
    // Bo is named by CONFAB_ADMIN: an admin as soon as the name is kept, however it is written.
    let (_, mut bo) = member(addr, "bo", "battery staple").await;
    assert!(bo.identity().await.admin);
}
