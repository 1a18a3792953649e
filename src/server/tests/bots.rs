//! Bots against the real server: the token API, the socket with a bot token, and webhook calls to a real
//! receiver. Every test of something private also checks that a third person learns nothing of it.

use super::accounts::connect_with_bearer;
use super::rooms::{assert_never_heard, create, event_in, in_room, settle};
use super::*;
use crate::protocol::{RoomKind, UserKind};
use crate::server::bots::webhook::{verify, SIGNATURE_HEADER};
use crate::server::bots::Credentials;
use axum::http::HeaderMap;
use serde_json::{json, Value};

fn bot_config() -> Config {
    let mut config = memory();
    config.bots.allow_private = true;
    config.bots.timeout = Duration::from_millis(500);
    config.bots.retry_base = Duration::from_millis(50);
    config
}

pub(super) async fn make_bot(server: &Server, name: &str, webhook: &str) -> Credentials {
    server
        .bots
        .create(name, webhook, Uuid::nil())
        .await
        .expect("the bot is made")
}

/// An API call: status, headers and JSON body (`Null` when there is none).
async fn api(
    addr: SocketAddr,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<String>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = reqwest::Client::new().request(method, format!("http://{addr}{path}"));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body);
    }
    let response = request.send().await.expect("the API answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON, not {text:?}"))
    };
    (status, headers, body)
}

/// A GET with the bot's token: its JSON body.
async fn get_json(addr: SocketAddr, token: &str, path: &str) -> Value {
    api(addr, reqwest::Method::GET, path, Some(token), None)
        .await
        .2
}

async fn post_text(addr: SocketAddr, token: &str, room: &str, body: Value) -> (u16, Value) {
    let path = format!("/api/v1/rooms/{room}/messages");
    let (status, _, body) = api(
        addr,
        reqwest::Method::POST,
        &path,
        Some(token),
        Some(body.to_string()),
    )
    .await;
    (status, body)
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_bot_posts_reads_lists_and_deletes_through_the_api_as_itself() {
    let server = Server::start(bot_config()).await;
    let addr = server.addr;
    let mut ann = joined(addr, "Ann").await;
    let ops = create(&mut ann, "Ops", false).await;
    let helper = make_bot(&server, "helper", "").await;
    assert!(helper.token.starts_with("cfb_"));

    // A new bot is in general and every public room.
    let (status, _, rooms) = api(
        addr,
        reqwest::Method::GET,
        "/api/v1/rooms",
        Some(&helper.token),
        None,
    )
    .await;
    assert_eq!(status, 200, "{rooms}");
    let slugs: Vec<&str> = rooms["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["slug"].as_str().unwrap())
        .collect();
    assert_eq!(slugs, [GENERAL_ROOM, ops.slug.as_str()]);

    let id = Uuid::new_v4();
    let (status, posted) = post_text(
        addr,
        &helper.token,
        "general",
        json!({"id": id, "text": "I am here"}),
    )
    .await;
    assert_eq!(status, 201, "{posted}");
    let seq = posted["seq"].as_u64().unwrap();
    let seen = ann
        .next_matching(|f| match f {
            ServerFrame::Event(e) if e.id == id => Some(e.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        (seen.seq, seen.text.as_str(), seen.name.as_str()),
        (seq, "I am here", "helper")
    );
    assert_eq!(
        seen.user_kind,
        UserKind::Bot,
        "its messages are marked as a bot's"
    );
    assert_eq!(seen.user_id, helper.user.id);

    // The same id again is the same message; with other text it is a conflict.
    let (status, again) = post_text(
        addr,
        &helper.token,
        "general",
        json!({"id": id, "text": "I am here"}),
    )
    .await;
    assert_eq!((status, again["seq"].as_u64()), (200, Some(seq)));
    let (status, other) = post_text(
        addr,
        &helper.token,
        "general",
        json!({"id": id, "text": "changed"}),
    )
    .await;
    assert_eq!((status, code(&other)), (409, "conflict"), "{other}");

    // Reading pages, with links to the older and newer ones.
    for n in 0..3 {
        post_text(
            addr,
            &helper.token,
            &ops.slug,
            json!({"text": format!("ops {n}")}),
        )
        .await;
    }
    let path = format!("/api/v1/rooms/{}/messages?limit=2", ops.slug);
    let (status, headers, page) =
        api(addr, reqwest::Method::GET, &path, Some(&helper.token), None).await;
    assert_eq!(status, 200, "{page}");
    let texts: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["text"].as_str())
        .collect();
    assert_eq!(texts, ["ops 1", "ops 2"]);
    assert_eq!(page["complete"], false);
    let link = headers["link"].to_str().unwrap();
    assert!(
        link.contains("rel=\"prev\"") && link.contains("rel=\"next\""),
        "{link}"
    );
    let first = page["messages"][0]["seq"].as_u64().unwrap();
    let older = format!("/api/v1/rooms/{}/messages?before={first}", ops.slug);
    let page = get_json(addr, &helper.token, &older).await;
    assert_eq!(page["complete"], true);
    assert!(
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["text"] == "ops 0"),
        "{page}"
    );
    let newest = page_last_seq(addr, &helper.token, &ops.slug).await;
    let newer = format!("/api/v1/rooms/{}/messages?after={newest}", ops.slug);
    let page = get_json(addr, &helper.token, &newer).await;
    assert_eq!(page["messages"], json!([]));

    // Its own message it may delete; someone else's not.
    let path = format!("/api/v1/rooms/general/messages/{id}");
    let (status, _, _) = api(
        addr,
        reqwest::Method::DELETE,
        &path,
        Some(&helper.token),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let deleted = ann
        .next_matching(|f| match f {
            ServerFrame::Event(e) if e.kind == EventKind::Delete => Some(e.target),
            _ => None,
        })
        .await;
    assert_eq!(deleted, Some(id));
    let (ann_id, frame) = in_room(GENERAL_ROOM, "mine");
    ann.send(&frame).await;
    ack(&mut ann, ann_id).await;
    let path = format!("/api/v1/rooms/general/messages/{ann_id}");
    let (status, _, body) = api(
        addr,
        reqwest::Method::DELETE,
        &path,
        Some(&helper.token),
        None,
    )
    .await;
    assert_eq!((status, code(&body)), (403, "not_allowed"), "{body}");
    let path = format!("/api/v1/rooms/general/messages/{}", Uuid::new_v4());
    let (status, _, _) = api(
        addr,
        reqwest::Method::DELETE,
        &path,
        Some(&helper.token),
        None,
    )
    .await;
    assert_eq!(status, 404);
}

async fn page_last_seq(addr: SocketAddr, token: &str, room: &str) -> u64 {
    let path = format!("/api/v1/rooms/{room}/messages");
    let page = get_json(addr, token, &path).await;
    page["messages"].as_array().unwrap().last().unwrap()["seq"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn bad_tokens_rooms_and_bodies_get_clear_errors_and_nothing_is_posted() {
    let mut config = bot_config();
    config.bots.burst = std::num::NonZeroU32::new(3).unwrap();
    config.bots.per_second = std::num::NonZeroU32::new(1).unwrap();
    let server = Server::start(config).await;
    let addr = server.addr;
    let mut ann = joined(addr, "Ann").await;
    let secret_room = create(&mut ann, "Secret plans", true).await;
    let (sid, frame) = in_room(&secret_room.slug, "the plan is hidden");
    ann.send(&frame).await;
    ack(&mut ann, sid).await;
    let helper = make_bot(&server, "helper", "").await;
    let revoked = make_bot(&server, "gone", "").await;
    server.bots.revoke(revoked.user.id).await.unwrap();

    // Missing, malformed, unknown and revoked tokens: one answer, with no hint of which.
    let mut answers = Vec::new();
    for token in [
        None,
        Some("nonsense"),
        Some("cfb_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        Some(revoked.token.as_str()),
    ] {
        let (status, headers, body) =
            api(addr, reqwest::Method::GET, "/api/v1/rooms", token, None).await;
        assert_eq!(status, 401, "{token:?}");
        assert_eq!(headers["www-authenticate"], "Bearer");
        answers.push(body);
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    assert_eq!(code(&answers[0]), "unauthorized");

    // A room the bot is not in answers as one that does not exist, and says nothing of it.
    let (status, missing) =
        post_text(addr, &helper.token, "no-such-room", json!({"text": "hi"})).await;
    assert_eq!((status, code(&missing)), (404, "not_found"));
    let (status, private) = post_text(
        addr,
        &helper.token,
        &secret_room.slug,
        json!({"text": "hi"}),
    )
    .await;
    assert_eq!((status, &private), (404, &missing));
    let path = format!("/api/v1/rooms/{}/messages", secret_room.slug);
    let (status, _, history) =
        api(addr, reqwest::Method::GET, &path, Some(&helper.token), None).await;
    assert_eq!((status, &history), (404, &missing));
    assert!(!history.to_string().contains("the plan"));

    // Bodies: too large, not JSON, a missing field, a wrong type, an unknown field, bad text.
    let huge = json!({"text": "x".repeat(70 * 1024)}).to_string();
    let (status, _, body) = api(
        addr,
        reqwest::Method::POST,
        "/api/v1/rooms/general/messages",
        Some(&helper.token),
        Some(huge),
    )
    .await;
    assert_eq!((status, code(&body)), (413, "body_too_large"));
    for (raw, want, field) in [
        ("{\"text\": ", "bad_json", ""),
        ("{}", "bad_frame", "text"),
        ("{\"text\": 5}", "bad_frame", "invalid type"),
        ("{\"text\": \"hi\", \"colour\": 1}", "bad_frame", "colour"),
        (
            "{\"id\": \"not-a-uuid\", \"text\": \"hi\"}",
            "bad_frame",
            "UUID",
        ),
        ("{\"text\": \"   \"}", "text_blank", "text"),
    ] {
        let (status, _, body) = api(
            addr,
            reqwest::Method::POST,
            "/api/v1/rooms/general/messages",
            Some(&helper.token),
            Some(raw.into()),
        )
        .await;
        assert_eq!((status, code(&body)), (400, want), "{raw}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{raw}: {message}");
    }
    let (status, _, body) = api(
        addr,
        reqwest::Method::GET,
        "/api/v1/rooms/general/messages?limit=0",
        Some(&helper.token),
        None,
    )
    .await;
    assert_eq!((status, code(&body)), (400, "bad_frame"));
    let (status, _, body) = api(
        addr,
        reqwest::Method::GET,
        "/api/v1/rooms/general/messages?after=1&before=3",
        Some(&helper.token),
        None,
    )
    .await;
    assert_eq!((status, code(&body)), (400, "bad_frame"));

    // Its own rate: a burst of 3, then 429 with Retry-After.
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for n in 0..5 {
        let path = "/api/v1/rooms/general/messages";
        let body = json!({"text": format!("burst {n}")}).to_string();
        let (status, headers, _) = api(
            addr,
            reqwest::Method::POST,
            path,
            Some(&helper.token),
            Some(body),
        )
        .await;
        statuses.push(status);
        if status == 429 {
            retry_after = headers
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
        }
    }
    assert_eq!(statuses, [201, 201, 201, 429, 429]);
    assert_eq!(retry_after.as_deref(), Some("1"));

    // Nothing refused was posted: Ann sees the three of the burst and nothing else of the bot.
    settle(&mut ann, Duration::from_millis(300)).await;
    let bot_lines: Vec<String> = ann
        .backlog
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Event(e) if e.user_id == helper.user.id => Some(e.text.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(bot_lines, ["burst 0", "burst 1", "burst 2"]);
}

#[tokio::test]
async fn a_bot_speaks_on_the_socket_with_its_token_and_revoking_it_closes_the_socket_at_once() {
    let server = Server::start(bot_config()).await;
    let addr = server.addr;
    let helper = make_bot(&server, "helper", "").await;
    let mut socket = connect_with_bearer(addr, &helper.token).await;
    let me = socket
        .next_matching(|f| match f {
            ServerFrame::Joined(me) => Some(me.clone()),
            _ => None,
        })
        .await;
    assert_eq!((me.name.as_str(), me.kind), ("helper", UserKind::Bot));
    let mut ann = joined(addr, "Ann").await;
    let id = Uuid::new_v4();
    socket
        .send(&ClientFrame::Send {
            room: GENERAL_ROOM.into(),
            id,
            text: "live".into(),
        })
        .await;
    ack(&mut socket, id).await;
    let seen = ann
        .next_matching(|f| match f {
            ServerFrame::Event(e) if e.id == id => Some(e.clone()),
            _ => None,
        })
        .await;
    assert_eq!(seen.user_kind, UserKind::Bot);

    server.bots.revoke(helper.user.id).await.unwrap();
    let closed = socket.close_code().await;
    assert_eq!(closed, Some(crate::server::session::CLOSE_SIGNED_OUT));
    // And the token opens no new one.
    let mut again = connect_with_bearer(addr, &helper.token).await;
    again.expect_error(ErrorCode::TokenInvalid).await;
}

/// What a test webhook receiver got: each call's headers and body.
#[derive(Clone, Default)]
pub(super) struct Received(Arc<Mutex<Vec<(HeaderMap, Value)>>>);

impl Received {
    pub(super) fn calls(&self) -> Vec<(HeaderMap, Value)> {
        self.0.lock().unwrap().clone()
    }

    pub(super) async fn wait_for(&self, count: usize) -> Vec<(HeaderMap, Value)> {
        timeout(PATIENCE, async {
            loop {
                let calls = self.calls();
                if calls.len() >= count {
                    return calls;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{count} webhook calls arrive; got {}", self.calls().len()))
    }
}

/// How the test receiver answers its `n`th call (from 0): after how long, and what.
type Behaviour = Arc<dyn Fn(usize) -> (Duration, axum::response::Response) + Send + Sync>;

/// A real webhook receiver on an ephemeral port: it checks every call's signature with `secret` (which
/// the test fills in once the bot exists) and answers as `behave` says.
pub(super) async fn receiver(
    secret: Arc<Mutex<String>>,
    behave: Behaviour,
) -> (SocketAddr, Received) {
    use axum::response::IntoResponse;
    let received = Received::default();
    let log = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let log = log.clone();
            let secret = secret.clone();
            let behave = behave.clone();
            async move {
                let signature = headers[SIGNATURE_HEADER].to_str().unwrap().to_owned();
                let now = crate::server::hub::now_ms() / 1000;
                let key = secret.lock().unwrap().clone();
                if !verify(&key, &signature, &body, now, 300) {
                    return (axum::http::StatusCode::UNAUTHORIZED, "bad signature").into_response();
                }
                let n = {
                    let mut calls = log.0.lock().unwrap();
                    calls.push((headers, serde_json::from_slice(&body).unwrap()));
                    calls.len() - 1
                };
                let (delay, response) = behave(n);
                tokio::time::sleep(delay).await;
                response
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, received)
}

pub(super) fn plain(text: &'static str) -> (Duration, axum::response::Response) {
    use axum::response::IntoResponse;
    let response = ([("content-type", "text/plain")], text).into_response();
    (Duration::ZERO, response)
}

fn now(response: impl axum::response::IntoResponse) -> (Duration, axum::response::Response) {
    (Duration::ZERO, response.into_response())
}

#[tokio::test]
async fn a_mention_calls_the_bots_webhook_signed_and_its_answer_is_its_reply() {
    let server = Server::start(bot_config()).await;
    let addr = server.addr;
    let secret = Arc::new(Mutex::new(String::new()));
    let (hook, received) = receiver(secret.clone(), Arc::new(|_| plain("pong"))).await;
    let mut ann = joined(addr, "Ann").await;
    let mut cy = joined(addr, "Cy").await;
    let hidden = create(&mut ann, "Hidden", true).await;
    let dice = make_bot(&server, "dice", &format!("http://{hook}/hook")).await;
    *secret.lock().unwrap() = dice.secret.clone();

    // No mention, no call; a mention in general calls, signed, and the answer is posted as the bot.
    let (_, frame) = in_room(GENERAL_ROOM, "nobody called");
    ann.send(&frame).await;
    let (mid, frame) = in_room(GENERAL_ROOM, "@dice ping");
    ann.send(&frame).await;
    let calls = received.wait_for(1).await;
    let (headers, payload) = &calls[0];
    assert_eq!(payload["message"]["text"], "@dice ping");
    assert_eq!(payload["message"]["id"], mid.to_string());
    assert_eq!(payload["room"]["slug"], GENERAL_ROOM);
    assert_eq!(payload["sender"]["name"], "Ann");
    assert!(payload["reply_url"]
        .as_str()
        .unwrap()
        .ends_with("/api/v1/rooms/general/messages"));
    assert!(headers.contains_key("idempotency-key"));
    let reply = ann
        .next_matching(|f| match f {
            ServerFrame::Event(e) if e.user_id == dice.user.id => Some(e.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        (reply.text.as_str(), reply.user_kind),
        ("pong", UserKind::Bot)
    );

    // A DM with the bot calls it; the DM reaches nobody else.
    ann.send(&ClientFrame::Dm {
        with: vec!["dice".into()],
    })
    .await;
    let dm = super::rooms::room_frame(&mut ann).await;
    assert_eq!(dm.kind, RoomKind::Direct);
    let (_, frame) = in_room(&dm.slug, "roll for me, privately");
    ann.send(&frame).await;
    let calls = received.wait_for(2).await;
    assert_eq!(calls[1].1["room"]["kind"], "direct");
    assert_eq!(calls[1].1["message"]["text"], "roll for me, privately");
    let reply = event_in(&mut ann, &dm.slug).await;
    let reply = if reply.user_id == dice.user.id {
        reply
    } else {
        event_in(&mut ann, &dm.slug).await
    };
    assert_eq!(reply.text, "pong");

    // A bot's message calls nobody, so bots cannot call each other in a loop.
    let chatty = make_bot(&server, "chatty", "").await;
    let (status, _) = post_text(
        addr,
        &chatty.token,
        GENERAL_ROOM,
        json!({"text": "@dice from a bot"}),
    )
    .await;
    assert_eq!(status, 201);
    // A mention in a room the bot is not in calls nobody.
    let (_, frame) = in_room(&hidden.slug, "@dice are you here?");
    ann.send(&frame).await;
    let (_, frame) = in_room(GENERAL_ROOM, "@dice last");
    ann.send(&frame).await;
    let calls = received.wait_for(3).await;
    assert_eq!(calls[2].1["message"]["text"], "@dice last");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        received.calls().len(),
        3,
        "the hidden room's mention made no call"
    );

    settle(&mut cy, Duration::from_millis(200)).await;
    assert_never_heard(
        &cy,
        "Cy",
        &["roll for me", "Hidden", "are you here", &dm.slug],
    );
}

#[tokio::test]
async fn failing_receivers_are_retried_with_the_same_key_and_never_slow_the_room() {
    use axum::response::IntoResponse;
    let server = Server::start(bot_config()).await;
    let addr = server.addr;
    let secrets: Vec<Arc<Mutex<String>>> = (0..3).map(|_| Arc::default()).collect();
    // flaky: 500, then a hang past the timeout, then 200.
    let (flaky_addr, flaky) = receiver(
        secrets[0].clone(),
        Arc::new(|n| match n {
            0 => now(axum::http::StatusCode::INTERNAL_SERVER_ERROR),
            1 => (
                Duration::from_millis(900),
                axum::http::StatusCode::OK.into_response(),
            ),
            _ => plain("fine now"),
        }),
    )
    .await;
    let (moved_addr, moved) = receiver(
        secrets[1].clone(),
        Arc::new(|_| {
            now((
                axum::http::StatusCode::FOUND,
                [("location", "http://127.0.0.1:9/elsewhere")],
            ))
        }),
    )
    .await;
    let (huge_addr, huge) = receiver(
        secrets[2].clone(),
        Arc::new(|_| {
            now((
                [("content-type", "text/plain")],
                "x".repeat(10 * 1024 * 1024),
            ))
        }),
    )
    .await;
    let flaky_bot = make_bot(&server, "flaky", &format!("http://{flaky_addr}/hook")).await;
    let moved_bot = make_bot(&server, "moved", &format!("http://{moved_addr}/hook")).await;
    let huge_bot = make_bot(&server, "huge", &format!("http://{huge_addr}/hook")).await;
    for (secret, bot) in secrets.iter().zip([&flaky_bot, &moved_bot, &huge_bot]) {
        *secret.lock().unwrap() = bot.secret.clone();
    }

    let mut ann = joined(addr, "Ann").await;
    let (_, frame) = in_room(GENERAL_ROOM, "@flaky @moved @huge wake up");
    ann.send(&frame).await;
    // The room goes on meanwhile.
    let (quick, frame) = in_room(GENERAL_ROOM, "still chatting");
    ann.send(&frame).await;
    ack(&mut ann, quick).await;

    let calls = flaky.wait_for(3).await;
    let keys: Vec<_> = calls
        .iter()
        .map(|(h, _)| h["idempotency-key"].clone())
        .collect();
    assert!(keys.windows(2).all(|w| w[0] == w[1]), "{keys:?}");
    let reply = ann
        .next_matching(|f| match f {
            ServerFrame::Event(e) if e.user_id == flaky_bot.user.id => Some(e.text.clone()),
            _ => None,
        })
        .await;
    assert_eq!(reply, "fine now");
    huge.wait_for(1).await;
    moved.wait_for(1).await;

    // The redirect is not followed and not retried: the failure is kept for the admin page.
    let failed = timeout(PATIENCE, async {
        loop {
            let bots = server.bots.store.bots().await.unwrap();
            let moved = bots
                .into_iter()
                .find(|b| b.user.id == moved_bot.user.id)
                .unwrap();
            if moved.failed == 1 {
                return moved.last_error;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    assert!(failed.contains("redirect"), "{failed}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(moved.calls().len(), 1, "a redirect is not retried");
    assert_eq!(
        huge.calls().len(),
        1,
        "a 10 MB answer is a delivered call, not a reply"
    );
    settle(&mut ann, Duration::from_millis(100)).await;
    assert!(!ann.transcript.iter().any(|f| f.contains("xxxxxxxx")));
}

#[tokio::test]
async fn a_receiver_that_hangs_is_cut_off_and_retried_until_it_gives_up() {
    use axum::response::IntoResponse;
    let mut config = bot_config();
    config.bots.timeout = Duration::from_millis(200);
    config.bots.retry_base = Duration::from_millis(10);
    let server = Server::start(config).await;
    let secret = Arc::new(Mutex::new(String::new()));
    let (hook, received) = receiver(
        secret.clone(),
        // Longer than the timeout.
        Arc::new(|_| {
            (
                Duration::from_millis(400),
                axum::http::StatusCode::OK.into_response(),
            )
        }),
    )
    .await;
    let sleepy = make_bot(&server, "sleepy", &format!("http://{hook}/hook")).await;
    *secret.lock().unwrap() = sleepy.secret.clone();
    let mut ann = joined(server.addr, "Ann").await;
    let (_, frame) = in_room(GENERAL_ROOM, "@sleepy hello");
    ann.send(&frame).await;
    let calls = received
        .wait_for(1 + crate::server::bots::webhook::MAX_RETRIES as usize)
        .await;
    let failed = timeout(PATIENCE, async {
        loop {
            let bots = server.bots.store.bots().await.unwrap();
            if let Some(bot) = bots
                .into_iter()
                .find(|b| b.user.id == sleepy.user.id && b.failed == 1)
            {
                return bot.last_error;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the call is given up and shown");
    assert!(failed.contains("no answer"), "{failed}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        received.calls().len(),
        calls.len(),
        "at most 1 + {} attempts",
        crate::server::bots::webhook::MAX_RETRIES
    );
}

#[tokio::test]
async fn a_call_pending_over_a_restart_is_still_made_with_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = bot_config();
    config.store = StoreConfig::Sqlite(dir.path().join("confab.db"));
    // A receiver address that refuses connections for now (bound, then closed).
    let spare = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = spare.local_addr().unwrap();
    drop(spare);
    let server = Server::start(config.clone()).await;
    let bot = make_bot(&server, "later", &format!("http://{hook}/hook")).await;
    let mut ann = joined(server.addr, "Ann").await;
    let (id, frame) = in_room(GENERAL_ROOM, "@later call me back");
    ann.send(&frame).await;
    ack(&mut ann, id).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(ann);
    server.stop().await;

    // The receiver comes up where the webhook points, and the server starts again on the same file.
    let secret = Arc::new(Mutex::new(bot.secret.clone()));
    let listener = TcpListener::bind(hook).await.unwrap();
    let (received, app) = recording_app(secret);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let server = Server::start(config).await;
    let calls = received.wait_for(1).await;
    assert_eq!(calls[0].1["message"]["id"], id.to_string());
    let key = calls[0].0["idempotency-key"].clone();
    assert_eq!(
        key.to_str().unwrap(),
        crate::server::store::bots::delivery_id(bot.user.id, id).to_string()
    );
    server.stop().await;
}

/// A receiver app that records every call (checking its signature) and answers 200 with nothing.
fn recording_app(secret: Arc<Mutex<String>>) -> (Received, axum::Router) {
    let received = Received::default();
    let log = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let log = log.clone();
            let secret = secret.clone();
            async move {
                let signature = headers[SIGNATURE_HEADER].to_str().unwrap().to_owned();
                let now = crate::server::hub::now_ms() / 1000;
                assert!(verify(&secret.lock().unwrap(), &signature, &body, now, 300));
                log.0
                    .lock()
                    .unwrap()
                    .push((headers, serde_json::from_slice(&body).unwrap()));
                ""
            }
        }),
    );
    (received, app)
}

#[tokio::test]
async fn webhook_urls_are_checked_when_saved() {
    let mut config = memory();
    config.bots.allow_private = false;
    let server = Server::start(config).await;
    for (url, why) in [
        ("ftp://example.com/hook", "http"),
        ("http://127.0.0.1:8080/hook", "private"),
        ("http://169.254.169.254/latest", "private"),
        ("http://[::1]/hook", "private"),
    ] {
        let err = server
            .bots
            .create("hooked", url, Uuid::nil())
            .await
            .unwrap_err();
        assert!(err.to_string().contains(why), "{url}: {err}");
    }
    // Nothing was made by the refusals.
    assert!(server.bots.store.bots().await.unwrap().is_empty());
    let err = server
        .bots
        .create("bad\u{7}name", "", Uuid::nil())
        .await
        .unwrap_err();
    assert!(matches!(err, crate::server::bots::BotError::Name(_)));
    make_bot(&server, "taken", "").await;
    let err = server
        .bots
        .create("TAKEN", "", Uuid::nil())
        .await
        .unwrap_err();
    assert!(matches!(err, crate::server::bots::BotError::NameOwned));
}

#[tokio::test]
async fn an_admin_makes_rotates_and_revokes_bots_on_the_admin_page_and_nobody_else_can() {
    use super::accounts::{boot_of, form, get_as, member, post, status};
    use crate::ui::state::Page;
    let server = Server::start(bot_config()).await;
    let addr = server.addr;
    let (admin, _ann) = member(addr, "Ann", "correct horse").await;
    let (other, _cy) = member(addr, "Cy", "cy password").await;
    let guest = browser(addr).await;

    let page = get_as(addr, "/admin/bots", &admin).await;
    assert_eq!(status(&page), 200);
    assert!(matches!(boot_of(&page).page, Page::Bots { ref bots, .. } if bots.is_empty()));
    for stranger in [&other, &guest] {
        assert_eq!(status(&get_as(addr, "/admin/bots", stranger).await), 403);
        let refused = post(
            addr,
            "/admin/bots",
            Some(stranger),
            None,
            &form(&[("name", "sneaky")]),
        )
        .await;
        assert_eq!(status(&refused), 403);
    }
    let cross = post(
        addr,
        "/admin/bots",
        Some(&admin),
        Some("https://evil.example"),
        &form(&[("name", "x")]),
    )
    .await;
    assert_eq!(status(&cross), 403);

    let made = post(
        addr,
        "/admin/bots",
        Some(&admin),
        None,
        &form(&[("name", "helper"), ("webhook", "")]),
    )
    .await;
    assert_eq!(status(&made), 201, "{made}");
    assert!(header(&made, "cache-control").unwrap().contains("no-store"));
    let Page::Bots {
        bots,
        made: Some(secrets),
        ..
    } = boot_of(&made).page
    else {
        panic!("the page shows the new token");
    };
    assert_eq!((bots.len(), secrets.name.as_str()), (1, "helper"));
    let (status_code, _, _) = api(
        addr,
        reqwest::Method::GET,
        "/api/v1/rooms",
        Some(&secrets.token),
        None,
    )
    .await;
    assert_eq!(status_code, 200);
    // Shown once: the list page has no token.
    let listed = get_as(addr, "/admin/bots", &admin).await;
    assert!(!listed.contains(&secrets.token) && !listed.contains(&secrets.secret));

    for (fields, why) in [
        (&[("name", "")][..], "blank"),
        (&[("name", "Ann")][..], "belongs"),
        (&[("name", "hook"), ("webhook", "gopher://x")][..], "http"),
        (&[("name", "roomy"), ("rooms", "nope")][..], "#nope"),
    ] {
        let refused = post(addr, "/admin/bots", Some(&admin), None, &form(fields)).await;
        assert_eq!(status(&refused), 400, "{fields:?}");
        let Page::Bots {
            error: Some(error),
            draft,
            ..
        } = boot_of(&refused).page
        else {
            panic!()
        };
        assert!(error.to_lowercase().contains(why), "{fields:?}: {error}");
        // Nothing typed is lost: the form comes back holding it.
        let field = |key: &str| {
            fields
                .iter()
                .find(|(k, _)| *k == key)
                .map_or("", |(_, v)| *v)
        };
        assert_eq!(
            (
                draft.name.as_str(),
                draft.webhook.as_str(),
                draft.rooms.as_str()
            ),
            (field("name"), field("webhook"), field("rooms"))
        );
        assert!(
            refused.contains(&format!("value=\"{}\"", field("name"))),
            "the field is filled in"
        );
    }

    let id = bots[0].id;
    let rotated = post(
        addr,
        &format!("/admin/bots/{id}/rotate"),
        Some(&admin),
        None,
        "",
    )
    .await;
    assert_eq!(status(&rotated), 200);
    let Page::Bots {
        made: Some(fresh), ..
    } = boot_of(&rotated).page
    else {
        panic!()
    };
    assert_ne!(fresh.token, secrets.token);
    let (old, _, _) = api(
        addr,
        reqwest::Method::GET,
        "/api/v1/rooms",
        Some(&secrets.token),
        None,
    )
    .await;
    let (new, _, _) = api(
        addr,
        reqwest::Method::GET,
        "/api/v1/rooms",
        Some(&fresh.token),
        None,
    )
    .await;
    assert_eq!((old, new), (401, 200));
    let revoked = post(
        addr,
        &format!("/admin/bots/{id}/revoke"),
        Some(&admin),
        None,
        "",
    )
    .await;
    assert_eq!(status(&revoked), 200);
    let (after, _, _) = api(
        addr,
        reqwest::Method::GET,
        "/api/v1/rooms",
        Some(&fresh.token),
        None,
    )
    .await;
    assert_eq!(after, 401);
    let missing = post(
        addr,
        &format!("/admin/bots/{}/revoke", Uuid::new_v4()),
        Some(&admin),
        None,
        "",
    )
    .await;
    assert_eq!(status(&missing), 404);
    assert_eq!(
        status(
            &post(
                addr,
                &format!("/admin/bots/{id}/revoke"),
                Some(&other),
                None,
                ""
            )
            .await
        ),
        403
    );
}

/// The code block after `marker` in the README, without its fence and indentation.
fn readme_block(marker: &str) -> String {
    let readme = include_str!("../../../README.md");
    let after = &readme[readme
        .find(marker)
        .unwrap_or_else(|| panic!("README has {marker}"))..];
    let mut lines = after.lines().skip(1);
    let fence = lines.next().expect("a code block follows the marker");
    let indent = fence.len() - fence.trim_start().len();
    lines
        .take_while(|line| line.trim() != "```")
        .map(|line| line.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn the_readmes_curl_examples_work_as_written_against_the_real_server() {
    let server = Server::start(bot_config()).await;
    let addr = server.addr;
    let helper = make_bot(&server, "helper", "").await;
    let mut ann = joined(addr, "Ann").await;
    let script = readme_block("<!-- curl examples: run by src/server/tests/bots.rs -->");
    assert!(script.matches("curl ").count() >= 5, "{script}");
    let (token, base) = (helper.token.clone(), format!("http://{addr}"));
    let ran = tokio::task::spawn_blocking(move || {
        std::process::Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .env("TOKEN", token)
            .env("CONFAB", base)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let out = String::from_utf8_lossy(&ran.stdout);
    assert!(
        ran.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    assert!(
        out.contains("\"rooms\"") && out.contains("\"seq\"") && out.contains("Hello from curl"),
        "{out}"
    );
    let id: Uuid = "6f1c2a4e-8d7b-4c1e-9f0a-3b5d7e9f1a2c".parse().unwrap();
    let posted = ann
        .next_matching(|f| match f {
            ServerFrame::Event(e) if e.id == id => Some(e.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        (posted.text.as_str(), posted.user_kind),
        ("Hello from curl", UserKind::Bot)
    );
    let deleted = ann
        .next_matching(|f| match f {
            ServerFrame::Event(e) if e.kind == EventKind::Delete => e.target,
            _ => None,
        })
        .await;
    assert_eq!(deleted, id);
}

#[tokio::test]
async fn the_readmes_verification_example_accepts_fresh_signatures_and_refuses_replays() {
    use crate::server::bots::webhook::signature;
    let code = readme_block("<!-- verification example: run by src/server/tests/bots.rs -->");
    let body = r#"{"message":{"text":"@dice 2d6"}}"#;
    let t = 1_795_312_346;
    let header = signature("whsec", t, body.as_bytes());
    let check = |secret: &str, header: &str, now: i64| {
        let program = format!(
            "{code}\nimport sys\nprint(verify(sys.argv[1], sys.argv[2], sys.argv[3].encode(), float(sys.argv[4])))"
        );
        let out = std::process::Command::new("python3")
            .args(["-c", &program, secret, header, body, &now.to_string()])
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(check("whsec", &header, t + 10), "True");
    assert_eq!(
        check("whsec", &header, t + 301),
        "False",
        "a replay after five minutes"
    );
    assert_eq!(check("whsec", &header, t - 301), "False", "from the future");
    assert_eq!(check("other", &header, t), "False");
    assert_eq!(check("whsec", "t=1795312346", t), "False");
    assert_eq!(check("whsec", "garbage", t), "False");
}

#[tokio::test]
async fn the_openapi_document_describes_every_route_and_the_bearer_token() {
    let addr = start(memory()).await;
    let (status, _, doc) = api(
        addr,
        reqwest::Method::GET,
        "/api/v1/openapi.json",
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/api/v1/rooms", "get"),
        ("/api/v1/rooms/{room}/messages", "get"),
        ("/api/v1/rooms/{room}/messages", "post"),
        ("/api/v1/rooms/{room}/messages/{id}", "delete"),
    ] {
        assert!(paths[path].get(method).is_some(), "{method} {path}");
    }
    let post = &paths["/api/v1/rooms/{room}/messages"]["post"];
    for status in ["201", "400", "401", "404", "409", "413", "429"] {
        assert!(
            post["responses"].get(status).is_some(),
            "POST answers {status}"
        );
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for schema in [
        "PostBody",
        "Posted",
        "Page",
        "ChatEvent",
        "RoomInfo",
        "ErrorCode",
    ] {
        assert!(
            schemas.contains_key(schema),
            "{schema}: {:?}",
            schemas.keys()
        );
    }
}

#[tokio::test]
async fn a_token_revoked_or_rotated_by_another_process_closes_the_bots_sockets_within_a_refresh() {
    let store = Arc::new(MemoryStore::new(100));
    let stores = Stores {
        events: store.clone(),
        identity: store.clone(),
        rooms: store.clone(),
        bots: store.clone(),
        backplane: Arc::new(Local),
    };
    let server = Server::start_with(bot_config(), Some(stores)).await;
    // What `confab bot` is: the same store, a hub of its own that reaches no running server.
    let cli = crate::server::bots::Bots::new(
        store.clone(),
        store.clone(),
        crate::server::hub::Hub::new(
            store.clone(),
            Arc::new(Local),
            crate::server::hub::HubConfig::default(),
        ),
        crate::server::bots::BotConfig::default(),
    );
    let helper = make_bot(&server, "helper", "").await;
    let other = make_bot(&server, "other", "").await;
    for (bot, change) in [(&helper, "revoke"), (&other, "rotate")] {
        let mut socket = connect_with_bearer(server.addr, &bot.token).await;
        socket
            .next_matching(|f| matches!(f, ServerFrame::Joined(_)).then_some(()))
            .await;
        if change == "revoke" {
            cli.revoke(bot.user.id).await.unwrap();
        } else {
            cli.rotate(bot.user.id).await.unwrap();
        }
        let started = std::time::Instant::now();
        assert_eq!(
            socket.close_code().await,
            Some(crate::server::session::CLOSE_SIGNED_OUT),
            "{change}"
        );
        assert!(
            started.elapsed() < crate::server::bots::webhook::REFRESH * 3,
            "{change}"
        );
    }
}

#[tokio::test]
async fn a_bot_that_hangs_holds_only_its_share_of_the_calls() {
    use axum::response::IntoResponse;
    let mut config = bot_config();
    config.bots.per_bot = 2;
    config.bots.timeout = Duration::from_secs(5);
    let server = Server::start(config).await;
    let (dead_secret, live_secret) = (Arc::default(), Arc::default());
    let (dead_addr, dead) = receiver(
        Arc::clone(&dead_secret),
        Arc::new(|_| {
            (
                Duration::from_secs(4),
                axum::http::StatusCode::OK.into_response(),
            )
        }),
    )
    .await;
    let (live_addr, live) = receiver(Arc::clone(&live_secret), Arc::new(|_| plain("here"))).await;
    let stuck = make_bot(&server, "stuck", &format!("http://{dead_addr}/hook")).await;
    let quick = make_bot(&server, "quick", &format!("http://{live_addr}/hook")).await;
    *dead_secret.lock().unwrap() = stuck.secret.clone();
    *live_secret.lock().unwrap() = quick.secret.clone();
    let mut ann = joined(server.addr, "Ann").await;
    for n in 0..6 {
        let (_, frame) = in_room(GENERAL_ROOM, &format!("@stuck wake up {n}"));
        ann.send(&frame).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, frame) = in_room(GENERAL_ROOM, "@quick are you there?");
    ann.send(&frame).await;
    // The live bot answers long before the stuck one's calls time out, and only two of those are out.
    let started = std::time::Instant::now();
    live.wait_for(1).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        dead.calls().len(),
        2,
        "the stuck bot holds its share, no more"
    );
}
