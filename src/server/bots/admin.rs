//! Managing bots: the admin page at `/admin/bots` (plain forms; a token and secret are rendered into the
//! answer to the form that made them, never stored or redirected), and the server binary's command line
//! for operators without a browser session: `fly ssh console -C "confab bot create helper"`.
//!
//! ```text
//! confab bot create <name> [--webhook URL] [--rooms SLUG,…]
//! confab bot list
//! confab bot rotate <name>
//! confab bot revoke <name>
//! confab bot webhook <name> [URL]
//! ```

use super::{BotError, Bots, Credentials};
use crate::protocol::UserKind;
use crate::server::config::Config;
use crate::server::identity::http::{admin, cross_site};
use crate::server::identity::{unavailable, Browser};
use crate::server::store::{IdentityStore, User};
use crate::server::web::CspNonce;
use crate::server::{AppState, Pages};
use crate::ui::state::BotSecrets;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;
use std::sync::Arc;

/// What `confab bot` prints when asked nothing it knows.
pub const USAGE: &str =
    "the bot commands are: `bot create <name> [--webhook URL] [--rooms SLUG,…]`, `bot list`, \
    `bot rotate <name>`, `bot revoke <name>`, `bot webhook <name> [URL]`";

/// Runs `confab bot …` against the configured store.
pub async fn command(args: &[String]) -> Result<(), String> {
    let config = Config::from_env()?;
    let stores = crate::server::open_store(&config).await?;
    let events = stores.events.clone();
    // A hub for this process alone: the command only writes the store, and a server on PostgreSQL hears
    // of revocations through its own checks.
    let hub = crate::server::hub::Hub::new(
        stores.events,
        Arc::new(crate::server::backplane::Local),
        crate::server::hub::HubConfig::default(),
    );
    let bots = Bots::new(stores.bots, stores.rooms, hub, config.bots.clone());
    let done = run(&bots, stores.identity.as_ref(), args).await;
    events.close().await;
    done
}

async fn run(bots: &Bots, people: &dyn IdentityStore, args: &[String]) -> Result<(), String> {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["create", name, rest @ ..] => {
            let (mut webhook, mut rooms) = ("", None);
            let mut options = rest.iter();
            while let Some(option) = options.next() {
                match (*option, options.next()) {
                    ("--webhook", Some(url)) => webhook = url,
                    ("--rooms", Some(list)) => {
                        rooms = Some(list.split(',').map(str::to_owned).collect::<Vec<_>>())
                    }
                    _ => return Err(USAGE.into()),
                }
            }
            let made = bots
                .create_in(name, webhook, uuid::Uuid::nil(), rooms.as_deref())
                .await
                .map_err(say)?;
            print_credentials(&made);
            Ok(())
        }
        ["list"] => {
            let list = bots.store.bots().await.map_err(|e| e.to_string())?;
            if list.is_empty() {
                eprintln!("There are no bots yet: `confab bot create <name>` makes one.");
            }
            for bot in list {
                let state = if bot.active { "active" } else { "revoked" };
                let webhook = if bot.webhook.is_empty() {
                    "no webhook"
                } else {
                    &bot.webhook
                };
                println!(
                    "{}\t{}\t{state}\t{webhook}\t{} failed calls",
                    bot.user.name, bot.user.id, bot.failed
                );
            }
            Ok(())
        }
        ["rotate", name] => {
            let bot = find(people, name).await?;
            let (token, secret) = bots.rotate(bot.id).await.map_err(say)?;
            print_credentials(&Credentials {
                user: bot,
                token,
                secret,
            });
            Ok(())
        }
        ["revoke", name] => {
            let bot = find(people, name).await?;
            bots.revoke(bot.id).await.map_err(say)?;
            eprintln!(
                "{}'s token is revoked: the API refuses it from now on.",
                bot.name
            );
            Ok(())
        }
        ["webhook", name, rest @ ..] => {
            let url = match rest {
                [] => "",
                [url] => url,
                _ => return Err(USAGE.into()),
            };
            let bot = find(people, name).await?;
            bots.set_webhook(bot.id, url).await.map_err(say)?;
            if url.is_empty() {
                eprintln!("{} is called by nobody now.", bot.name);
            } else {
                eprintln!("{} is called at {url} now.", bot.name);
            }
            Ok(())
        }
        _ => Err(USAGE.into()),
    }
}

fn print_credentials(made: &Credentials) {
    println!("name: {}", made.user.name);
    println!("token: {}", made.token);
    println!("webhook secret: {}", made.secret);
    eprintln!("Keep these now: they are stored only hashed (the token) and are never shown again.");
}

/// The bot called `name`.
async fn find(people: &dyn IdentityStore, name: &str) -> Result<User, String> {
    let key = crate::server::names::name_key(name);
    match people.owner_of(&key).await.map_err(|e| e.to_string())? {
        Some(user) if user.kind == UserKind::Bot => Ok(user),
        _ => Err(format!("there is no bot called {name:?}")),
    }
}

fn say(err: BotError) -> String {
    match err {
        BotError::Name(err) => format!("that name cannot be a bot's: {}", err.message()),
        BotError::NameOwned => "that name belongs to a member or another bot".into(),
        other => other.to_string(),
    }
}

/// The admin page's forms.
#[derive(Debug, serde::Deserialize)]
pub struct BotForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    webhook: String,
    /// Slugs, comma-separated; empty: every public room.
    #[serde(default)]
    rooms: String,
}

/// What an admin's form asks of a bot.
enum Change {
    Rotate,
    Revoke,
    Webhook(String),
}

/// Renders the bots page for an admin; `None` (a 403 for them) for anyone else.
async fn page(
    state: &AppState,
    pages: &Pages,
    nonce: CspNonce,
    status: StatusCode,
    made: Option<BotSecrets>,
    error: Option<String>,
    draft: crate::ui::state::BotDraft,
) -> Response {
    use crate::ui::state::{Bootstrap, BotEntry, Page};
    use axum::response::IntoResponse;
    let bots = match state.bots.store.bots().await {
        Ok(bots) => bots,
        Err(err) => {
            tracing::error!(error = %err, "listing bots failed");
            return unavailable();
        }
    };
    let bots = bots
        .into_iter()
        .map(|bot| BotEntry {
            id: bot.user.id,
            name: bot.user.name,
            webhook: bot.webhook,
            active: bot.active,
            failed: bot.failed,
            last_error: bot.last_error,
        })
        .collect();
    let boot = Bootstrap {
        page: Page::Bots {
            bots,
            made,
            error,
            draft,
        },
        ..Bootstrap::default()
    };
    let mut response = (status, pages.render(nonce, boot).await).into_response();
    // A token on the page: no cache may keep it.
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    response
}

fn only_admins() -> Response {
    use axum::response::IntoResponse;
    (StatusCode::FORBIDDEN, "Only an admin can do that.").into_response()
}

/// `GET /admin/bots`.
pub async fn bots_page(
    State(state): State<AppState>,
    Extension(pages): Extension<Pages>,
    Extension(nonce): Extension<CspNonce>,
    browser: Browser,
) -> Response {
    if admin(&browser).is_none() {
        return only_admins();
    }
    page(
        &state,
        &pages,
        nonce,
        StatusCode::OK,
        None,
        None,
        Default::default(),
    )
    .await
}

/// `POST /admin/bots`: makes a bot, and shows its token and secret this once.
pub async fn create_bot(
    State(state): State<AppState>,
    Extension(pages): Extension<Pages>,
    Extension(nonce): Extension<CspNonce>,
    headers: HeaderMap,
    browser: Browser,
    axum::Form(form): axum::Form<BotForm>,
) -> Response {
    use StatusCode;
    if let Some(refused) = cross_site(&headers) {
        return refused;
    }
    let Some(by) = admin(&browser) else {
        return only_admins();
    };
    let rooms: Option<Vec<String>> =
        (!form.rooms.trim().is_empty()).then(|| form.rooms.split(',').map(str::to_owned).collect());
    match state
        .bots
        .create_in(&form.name, &form.webhook, by, rooms.as_deref())
        .await
    {
        Ok(made) => {
            let secrets = BotSecrets {
                name: made.user.name,
                token: made.token,
                secret: made.secret,
            };
            page(
                &state,
                &pages,
                nonce,
                StatusCode::CREATED,
                Some(secrets),
                None,
                Default::default(),
            )
            .await
        }
        Err(BotError::Store(err)) => {
            tracing::error!(error = %err, "making a bot failed");
            unavailable()
        }
        Err(err) => {
            // The form comes back as it was posted, with the reason: nothing typed is lost.
            let draft = crate::ui::state::BotDraft {
                name: form.name,
                webhook: form.webhook,
                rooms: form.rooms,
            };
            let status = StatusCode::BAD_REQUEST;
            page(&state, &pages, nonce, status, None, Some(say(err)), draft).await
        }
    }
}

async fn change_bot(
    state: AppState,
    pages: Pages,
    nonce: CspNonce,
    headers: HeaderMap,
    browser: Browser,
    id: uuid::Uuid,
    change: Change,
) -> Response {
    use StatusCode;
    if let Some(refused) = cross_site(&headers) {
        return refused;
    }
    if admin(&browser).is_none() {
        return only_admins();
    }
    let bots = &state.bots;
    let done = match change {
        Change::Rotate => bots.rotate(id).await.map(|(token, secret)| {
            let name = String::new();
            Some(BotSecrets {
                name,
                token,
                secret,
            })
        }),
        Change::Revoke => bots.revoke(id).await.map(|()| None),
        Change::Webhook(url) => bots.set_webhook(id, &url).await.map(|()| None),
    };
    match done {
        Ok(mut made) => {
            if let Some(made) = &mut made {
                let listed = bots.store.bots().await.unwrap_or_default();
                if let Some(bot) = listed.into_iter().find(|b| b.user.id == id) {
                    made.name = bot.user.name;
                }
            }
            page(
                &state,
                &pages,
                nonce,
                StatusCode::OK,
                made,
                None,
                Default::default(),
            )
            .await
        }
        Err(BotError::Store(err)) => {
            tracing::error!(error = %err, "changing a bot failed");
            unavailable()
        }
        Err(BotError::NoSuchBot) => {
            let error = Some("There is no such bot.".to_owned());
            let status = StatusCode::NOT_FOUND;
            page(
                &state,
                &pages,
                nonce,
                status,
                None,
                error,
                Default::default(),
            )
            .await
        }
        Err(err) => {
            let status = StatusCode::BAD_REQUEST;
            let error = Some(say(err));
            page(
                &state,
                &pages,
                nonce,
                status,
                None,
                error,
                Default::default(),
            )
            .await
        }
    }
}

/// The routes of the admin page.
pub fn routes() -> axum::Router<AppState> {
    use axum::extract::Path;
    use axum::routing::{get, post};
    use Extension;
    type Parts = (
        State<AppState>,
        Extension<Pages>,
        Extension<CspNonce>,
        HeaderMap,
        Browser,
    );
    async fn rotate(parts: Parts, Path(id): Path<uuid::Uuid>) -> Response {
        let (State(s), Extension(p), Extension(n), h, b) = parts;
        change_bot(s, p, n, h, b, id, Change::Rotate).await
    }
    async fn revoke(parts: Parts, Path(id): Path<uuid::Uuid>) -> Response {
        let (State(s), Extension(p), Extension(n), h, b) = parts;
        change_bot(s, p, n, h, b, id, Change::Revoke).await
    }
    async fn webhook(
        parts: Parts,
        Path(id): Path<uuid::Uuid>,
        axum::Form(form): axum::Form<BotForm>,
    ) -> Response {
        let (State(s), Extension(p), Extension(n), h, b) = parts;
        change_bot(s, p, n, h, b, id, Change::Webhook(form.webhook)).await
    }
    axum::Router::new()
        .route("/admin/bots", get(bots_page).post(create_bot))
        .route("/admin/bots/{id}/rotate", post(rotate))
        .route("/admin/bots/{id}/revoke", post(revoke))
        .route("/admin/bots/{id}/webhook", post(webhook))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::store::MemoryStore;

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[tokio::test]
    async fn the_bot_commands_make_list_rotate_and_revoke_bots() {
        let store = Arc::new(MemoryStore::new(10));
        let hub = crate::server::hub::Hub::new(
            store.clone(),
            Arc::new(crate::server::backplane::Local),
            crate::server::hub::HubConfig::default(),
        );
        let config = crate::server::bots::BotConfig {
            allow_private: true,
            ..Default::default()
        };
        let bots = Bots::new(store.clone(), store.clone(), hub, config);
        let people = store.as_ref();
        run(
            &bots,
            people,
            &args(&["create", "helper", "--webhook", "http://127.0.0.1:9/hook"]),
        )
        .await
        .unwrap();
        let helper = find(people, "HELPER").await.unwrap();
        assert_eq!(helper.kind, UserKind::Bot);
        run(&bots, people, &args(&["list"])).await.unwrap();
        run(&bots, people, &args(&["webhook", "helper"]))
            .await
            .unwrap();
        assert!(bots.store.callable_bots().await.unwrap().is_empty());
        run(&bots, people, &args(&["rotate", "helper"]))
            .await
            .unwrap();
        run(&bots, people, &args(&["revoke", "helper"]))
            .await
            .unwrap();
        assert!(!bots.store.bots().await.unwrap()[0].active);

        // Mistakes are said plainly, and change nothing.
        let taken = run(&bots, people, &args(&["create", "Helper"]))
            .await
            .unwrap_err();
        assert!(taken.contains("belongs to"), "{taken}");
        let nobody = run(&bots, people, &args(&["revoke", "nobody"]))
            .await
            .unwrap_err();
        assert!(nobody.contains("no bot called"), "{nobody}");
        for wrong in [
            &["create"][..],
            &["delete", "helper"],
            &["create", "x", "--hook", "u"],
            &[],
        ] {
            assert_eq!(run(&bots, people, &args(wrong)).await.unwrap_err(), USAGE);
        }
        let refused = run(
            &bots,
            people,
            &args(&["create", "ftp", "--webhook", "ftp://x/"]),
        )
        .await
        .unwrap_err();
        assert!(refused.contains("http"), "{refused}");
        let nowhere = run(
            &bots,
            people,
            &args(&["create", "lost", "--rooms", "general,nope"]),
        )
        .await
        .unwrap_err();
        assert!(nowhere.contains("#nope"), "{nowhere}");
        assert_eq!(bots.store.bots().await.unwrap().len(), 1);

        // Told which rooms, it is in those (and general) only; else in every public room.
        use crate::server::store::{Room, RoomStore};
        for slug in ["ops", "lab"] {
            let room = Room {
                slug: slug.into(),
                name: slug.into(),
                topic: String::new(),
                kind: crate::protocol::RoomKind::Public,
                created_by: uuid::Uuid::nil(),
                created_at: 1,
                archived: false,
            };
            store.create_room(&room, &[], 1).await.unwrap();
        }
        run(
            &bots,
            people,
            &args(&["create", "opsbot", "--rooms", "ops"]),
        )
        .await
        .unwrap();
        run(&bots, people, &args(&["create", "everywhere"]))
            .await
            .unwrap();
        for (name, rooms) in [
            ("opsbot", &["ops"][..]),
            ("everywhere", &["lab", "ops"][..]),
        ] {
            let bot = find(people, name).await.unwrap();
            let slugs: Vec<String> = store
                .rooms_of(bot.id)
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.slug)
                .collect();
            assert_eq!(slugs, rooms, "{name}");
        }
    }
}
