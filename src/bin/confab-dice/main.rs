//! `confab-dice`: an example bot that uses only Confab's public bot API, as its documentation in code.
//!
//! Make it a bot (`confab bot create dice --webhook http://<this host>:4000/hook`), then run it with
//! what that printed:
//!
//! ```sh
//! CONFAB_URL=http://127.0.0.1:3000 CONFAB_BOT_TOKEN=cfb_… CONFAB_WEBHOOK_SECRET=… confab-dice
//! ```
//!
//! Mention it (`@dice 2d6`) or write to it directly, and it answers with a roll. It shows the three
//! things a bot does:
//! - it checks each webhook call's `Confab-Signature` (and refuses calls older than five minutes);
//! - it answers in the webhook's response (`{"text": …}`), which Confab posts as its reply;
//! - it calls the API with its token: on start, `GET /api/v1/rooms` to say where it is, and
//!   `POST /api/v1/rooms/{room}/messages` to greet `general`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;
use std::sync::Arc;

/// How old a signed call may be before it counts as a replay.
const MAX_AGE_SECONDS: i64 = 300;

#[derive(Clone)]
struct Bot {
    secret: Arc<str>,
}

#[derive(Deserialize)]
struct Call {
    message: Message,
    sender: Sender,
}

#[derive(Deserialize)]
struct Message {
    text: String,
}

#[derive(Deserialize)]
struct Sender {
    name: String,
}

/// The bot's HTTP side: `POST /hook`, the URL its webhook points at.
fn app(secret: &str) -> Router {
    Router::new().route("/hook", post(hook)).with_state(Bot {
        secret: Arc::from(secret),
    })
}

async fn hook(State(bot): State<Bot>, headers: HeaderMap, body: Bytes) -> Response {
    let signature = headers
        .get("confab-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !verify(&bot.secret, signature, &body, unix_now()) {
        return (StatusCode::UNAUTHORIZED, "bad or stale signature").into_response();
    }
    let Ok(call) = serde_json::from_slice::<Call>(&body) else {
        return (StatusCode::BAD_REQUEST, "not a Confab call").into_response();
    };
    let answer = match Roll::find(&call.message.text) {
        Some(roll) => {
            let dice = roll.throw(&mut os_random);
            let total: u32 = dice.iter().sum();
            let shown: Vec<String> = dice.iter().map(u32::to_string).collect();
            format!(
                "{} rolled {roll}: {} = {total}",
                call.sender.name,
                shown.join(" + ")
            )
        }
        None => "Ask me for a roll such as 2d6, or d20.".to_owned(),
    };
    // A JSON `{"text": …}` (or a text/plain body) answered with 200 is posted as the bot's reply.
    Json(json!({ "text": answer })).into_response()
}

/// Checks `t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">`, in constant time, within five minutes.
fn verify(secret: &str, header: &str, body: &[u8], now: i64) -> bool {
    let field = |name: &str| {
        header
            .split(',')
            .find_map(|part| part.strip_prefix(name)?.strip_prefix('='))
    };
    let (Some(t), Some(v1)) = (field("t").and_then(|t| t.parse::<i64>().ok()), field("v1")) else {
        return false;
    };
    if (now - t).abs() > MAX_AGE_SECONDS {
        return false;
    }
    let Some(given) = (0..v1.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(v1.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key");
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

/// `NdM`: N dice (1 to 20) of M sides (2 to 1000); `dM` is one die.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Roll {
    count: u32,
    sides: u32,
}

impl Roll {
    /// The first roll a text asks for.
    fn find(text: &str) -> Option<Self> {
        text.split(|c: char| c.is_whitespace() || c == ',')
            .find_map(|word| {
                let (count, sides) = word
                    .to_ascii_lowercase()
                    .split_once('d')
                    .map(|(c, s)| (c.to_owned(), s.trim_end_matches(['.', '!', '?']).to_owned()))?;
                let count = if count.is_empty() {
                    1
                } else {
                    count.parse().ok()?
                };
                let sides = sides.parse().ok()?;
                ((1..=20).contains(&count) && (2..=1000).contains(&sides))
                    .then_some(Roll { count, sides })
            })
    }

    fn throw(self, random: &mut impl FnMut() -> u32) -> Vec<u32> {
        (0..self.count)
            .map(|_| {
                // Rejection sampling, so every face is as likely.
                let zone = u32::MAX - u32::MAX % self.sides;
                loop {
                    let r = random();
                    if r < zone {
                        return r % self.sides + 1;
                    }
                }
            })
            .collect()
    }
}

impl std::fmt::Display for Roll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}d{}", self.count, self.sides)
    }
}

fn os_random() -> u32 {
    use rand_core::RngCore;
    rand_core::OsRng.next_u32()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The API calls the bot makes with its token.
struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    /// Sends a request with the bot's token; the JSON answer of a success, or the API's error sentence.
    async fn call(&self, request: reqwest::RequestBuilder) -> Result<serde_json::Value, String> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response.text().await.map_err(|e| e.to_string())?;
        let body: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        if status.is_success() {
            Ok(body)
        } else {
            Err(format!("{status}: {}", body["error"]["message"]))
        }
    }

    /// The slugs of the rooms the bot is in.
    async fn rooms(&self) -> Result<Vec<String>, String> {
        let url = format!("{}/api/v1/rooms", self.base);
        let body = self.call(self.http.get(url)).await?;
        Ok(body["rooms"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|room| room["slug"].as_str().map(str::to_owned))
            .collect())
    }

    /// Posts `text` in `room` with a fresh id; retrying with the same id would post it once.
    async fn say(&self, room: &str, text: &str) -> Result<u64, String> {
        let url = format!("{}/api/v1/rooms/{room}/messages", self.base);
        let request = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .body(json!({ "id": uuid::Uuid::new_v4(), "text": text }).to_string());
        let body = self.call(request).await?;
        body["seq"]
            .as_u64()
            .ok_or_else(|| format!("no seq in {body}"))
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let env = |key: &str| std::env::var(key).ok().filter(|v| !v.trim().is_empty());
    let (Some(token), Some(secret)) = (env("CONFAB_BOT_TOKEN"), env("CONFAB_WEBHOOK_SECRET"))
    else {
        eprintln!("confab-dice: set CONFAB_BOT_TOKEN and CONFAB_WEBHOOK_SECRET (from `confab bot create`)");
        return std::process::ExitCode::FAILURE;
    };
    let api = Api {
        base: env("CONFAB_URL").unwrap_or_else(|| "http://127.0.0.1:3000".into()),
        token,
        http: reqwest::Client::new(),
    };
    let listen = env("DICE_LISTEN").unwrap_or_else(|| "127.0.0.1:4000".into());
    match api.rooms().await {
        Ok(rooms) => eprintln!("confab-dice: in {}", rooms.join(", ")),
        Err(err) => {
            eprintln!("confab-dice: the API refused the token: {err}");
            return std::process::ExitCode::FAILURE;
        }
    }
    if let Err(err) = api
        .say(
            "general",
            "Dice are ready: mention me with a roll, such as 2d6.",
        )
        .await
    {
        eprintln!("confab-dice: could not greet general: {err}");
    }
    let listener = match tokio::net::TcpListener::bind(&listen).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("confab-dice: cannot listen on {listen}: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    eprintln!("confab-dice: webhook at http://{listen}/hook");
    match axum::serve(listener, app(&secret)).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("confab-dice: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use confab::protocol::{ClientFrame, ServerFrame, UserKind};
    use futures_util::{SinkExt, StreamExt};
    use std::time::Duration;
    use tokio_tungstenite::tungstenite::Message as Frame;

    #[test]
    fn rolls_are_read_from_the_text_and_every_face_is_possible() {
        assert_eq!(
            Roll::find("@dice 2d6 please"),
            Some(Roll { count: 2, sides: 6 })
        );
        assert_eq!(
            Roll::find("d20!"),
            Some(Roll {
                count: 1,
                sides: 20
            })
        );
        assert_eq!(Roll::find("roll 30d6 or 0d6 or 2d1"), None);
        assert_eq!(Roll::find("hello"), None);
        let mut n = 0u32;
        let mut counter = move || {
            n += 1;
            n
        };
        assert_eq!(
            Roll { count: 6, sides: 6 }.throw(&mut counter),
            [2, 3, 4, 5, 6, 1]
        );
    }

    #[test]
    fn only_fresh_calls_signed_with_the_secret_are_accepted() {
        let sign = |secret: &str, t: i64, body: &[u8]| {
            let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
            mac.update(format!("{t}.").as_bytes());
            mac.update(body);
            let hex: String = mac
                .finalize()
                .into_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            format!("t={t},v1={hex}")
        };
        let body = b"{\"message\":{}}";
        assert!(verify("s", &sign("s", 1_000, body), body, 1_000));
        assert!(
            !verify(
                "s",
                &sign("s", 1_000, body),
                body,
                1_000 + MAX_AGE_SECONDS + 1
            ),
            "a replay"
        );
        assert!(!verify("s", &sign("other", 1_000, body), body, 1_000));
        assert!(!verify("s", &sign("s", 1_000, body), b"{}", 1_000));
        assert!(!verify("s", "v1=abcd", body, 1_000));
    }

    /// The bot against a real Confab: made a bot, run on its own port, mentioned by a person, who sees
    /// its roll as the bot's reply; and its greeting through the API.
    #[tokio::test]
    async fn the_dice_bot_answers_a_mention_in_a_real_chat() {
        use confab::server::config::{Config, StoreConfig};
        let mut config = Config {
            store: StoreConfig::Memory,
            ..Config::default()
        };
        config.bots.allow_private = true;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let options = leptos::prelude::LeptosOptions::builder()
            .output_name("confab")
            .site_addr(addr)
            .build();
        let state = confab::server::AppState::new(options, &config)
            .await
            .unwrap();
        let bots = state.bots.clone();
        tokio::spawn(confab::server::serve(
            listener,
            confab::server::router(state),
            std::future::pending(),
        ));
        let hook_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hook = hook_listener.local_addr().unwrap();
        let made = bots
            .create("dice", &format!("http://{hook}/hook"), uuid::Uuid::nil())
            .await
            .unwrap();
        tokio::spawn(async move { axum::serve(hook_listener, app(&made.secret)).await });

        let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .unwrap();
        let join = ClientFrame::Join { name: "Ann".into() };
        socket
            .send(Frame::text(serde_json::to_string(&join).unwrap()))
            .await
            .unwrap();
        let api = Api {
            base: format!("http://{addr}"),
            token: made.token.clone(),
            http: reqwest::Client::new(),
        };
        assert_eq!(api.rooms().await.unwrap(), ["general"]);
        api.say("general", "Dice are ready").await.unwrap();
        let ask = ClientFrame::Send {
            room: "general".into(),
            id: uuid::Uuid::new_v4(),
            text: "@dice 3d6".into(),
        };
        socket
            .send(Frame::text(serde_json::to_string(&ask).unwrap()))
            .await
            .unwrap();
        let mut greeted = false;
        let reply = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let Some(Ok(Frame::Text(text))) = socket.next().await else {
                    continue;
                };
                if let Ok(ServerFrame::Event(event)) = serde_json::from_str(&text) {
                    if event.user_id == made.user.id {
                        assert_eq!(event.user_kind, UserKind::Bot);
                        if event.text == "Dice are ready" {
                            greeted = true;
                        } else {
                            return event.text;
                        }
                    }
                }
            }
        })
        .await
        .expect("the bot answers");
        assert!(greeted, "the API post arrived first");
        assert!(reply.starts_with("Ann rolled 3d6: "), "{reply}");
        let total: u32 = reply.rsplit(" = ").next().unwrap().parse().unwrap();
        assert!((3..=18).contains(&total), "{reply}");
        // A token that is not the bot's gets nowhere.
        let stranger = Api {
            token: "cfb_nope".into(),
            ..api
        };
        assert!(stranger.rooms().await.unwrap_err().starts_with("401"));
    }
}
