//! The server half: configuration, state, the hub, WebSocket sessions and storage. Compiled with `ssr` only.

pub mod arrivals;
pub mod backplane;
pub mod bots;
pub mod callees;
pub mod config;
pub mod hub;
pub mod identity;
pub mod metrics;
pub mod names;
pub mod presence;
pub mod rooms;
pub mod session;
pub mod socket;
pub mod store;
pub mod web;
pub mod woken;
pub mod writer;

#[cfg(test)]
mod tests;

use crate::app::shell;
use crate::ui::state::{Bootstrap, Page};
use axum::extract::{FromRef, Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use backplane::{Backplane, Local};
use config::{Config, StoreConfig};
use hub::Hub;
use identity::{Accounts, Browser};
use leptos::prelude::LeptosOptions;
use serde::Deserialize;
use session::{Start, Visitor};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use store::{BotStore, EventStore, IdentityStore, MemoryStore, PgStore, RoomStore, SqliteStore};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Everything a request handler may need; cheap to clone.
#[derive(Clone, FromRef)]
pub struct AppState {
    pub leptos_options: LeptosOptions,
    pub hub: Hub,
    pub accounts: Accounts,
    pub sessions: session::Context,
    pub bots: bots::Bots,
    /// `/metrics` is on the main port (no `CONFAB_METRICS_ADDR`).
    pub metrics_here: bool,
}

/// An open store: the same database behind its three halves (events, people, rooms).
pub struct Stores {
    pub events: Arc<dyn EventStore>,
    pub identity: Arc<dyn IdentityStore>,
    pub rooms: Arc<dyn RoomStore>,
    pub bots: Arc<dyn BotStore>,
    pub backplane: Arc<dyn Backplane>,
}

impl Stores {
    /// One store that keeps events, identities and rooms, on one instance.
    pub fn local<T: EventStore + IdentityStore + RoomStore + BotStore>(store: T) -> Self {
        let store = Arc::new(store);
        Self {
            events: store.clone(),
            identity: store.clone(),
            rooms: store.clone(),
            bots: store,
            backplane: Arc::new(Local),
        }
    }
}

impl AppState {
    /// Opens the store and starts the hub's writer tasks (so it needs a Tokio runtime).
    pub async fn new(leptos_options: LeptosOptions, config: &Config) -> Result<Self, String> {
        let stores = open_store(config).await?;
        Self::with_stores(leptos_options, config, stores).await
    }

    /// The state around stores that are already open.
    pub async fn with_stores(
        leptos_options: LeptosOptions,
        config: &Config,
        stores: Stores,
    ) -> Result<Self, String> {
        let admin_key = config.admin.as_deref().map(names::name_key);
        if let Some(key) = &admin_key {
            // An existing member of that name is an admin from now on; one who claims it later becomes one.
            stores
                .identity
                .grant_admin(key)
                .await
                .map_err(|e| format!("cannot read the users to apply CONFAB_ADMIN: {e}"))?;
        }
        let rooms = rooms::Directory::new(stores.rooms.clone(), stores.events.clone());
        let hub_config = hub::HubConfig {
            live_capacity: config.live_buffer,
            recent_frames: config.recent_frames,
            writer_idle: config.writer_idle,
        };
        let hub = Hub::new(stores.events, stores.backplane, hub_config);
        let bots = bots::Bots::new(
            stores.bots,
            stores.rooms.clone(),
            hub.clone(),
            config.bots.clone(),
        );
        bots.refresh()
            .await
            .map_err(|e| format!("cannot read the bots: {e}"))?;
        let accounts = Accounts {
            store: stores.identity.clone(),
            hasher: identity::password::Hasher::default(),
            limits: Arc::new(identity::limits::SignInLimits::new(
                config.signin_attempts,
                identity::limits::WINDOW,
            )),
            client_ip: identity::ClientIpSource(config.client_ip_header.clone()),
            admin_key,
            tokens: identity::token::TokenVerifier::from_config(
                config.jwt_secret.as_deref(),
                config.jwt_public_key.as_deref(),
            )?
            .map(Arc::new),
        };
        let public_url = config
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", leptos_options.site_addr));
        let sender =
            bots::webhook::Sender::new(bots.clone(), hub.clone(), rooms.clone(), public_url);
        tokio::spawn(sender.run());
        let sessions = session::Context::new(
            hub.clone(),
            accounts.clone(),
            rooms,
            bots.clone(),
            config.session.clone(),
        );
        Ok(Self {
            leptos_options,
            hub,
            accounts,
            sessions,
            bots,
            metrics_here: config.metrics_addr.is_none(),
        })
    }
}

/// The store `config` names, and the backplane that goes with it.
pub(crate) async fn open_store(config: &Config) -> Result<Stores, String> {
    Ok(match &config.store {
        StoreConfig::Memory => Stores::local(MemoryStore::new(config.history_capacity)),
        StoreConfig::Sqlite(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                writable(dir)?;
            }
            let store = SqliteStore::open(path)
                .await
                .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            tracing::info!(path = %path.display(), "SQLite store open");
            Stores::local(store)
        }
        StoreConfig::Postgres(url) => {
            let store = PgStore::open(url)
                .await
                .map_err(|e| format!("cannot open PostgreSQL ({}): {e}", redact(url)))?;
            let backplane =
                backplane::Postgres::register(store.pool().clone(), config.instance_ttl)
                    .await
                    .map_err(|e| format!("cannot register with PostgreSQL: {e}"))?;
            tracing::info!(url = %redact(url), "PostgreSQL store open");
            let store = Arc::new(store);
            Stores {
                events: store.clone(),
                identity: store.clone(),
                rooms: store.clone(),
                bots: store,
                backplane: Arc::new(backplane),
            }
        }
    })
}

/// Fails with the fix spelled out when this process cannot write in `dir`: SQLite's own "unable to open
/// database file" names neither the directory nor the user (a volume mounted root-only, say).
fn writable(dir: &std::path::Path) -> Result<(), String> {
    let probe = dir.join(format!(".confab-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| {
            // SAFETY: geteuid has no preconditions and cannot fail.
            let uid = unsafe { libc::geteuid() };
            format!(
                "the data directory {} is not writable by this process (uid {uid}): {e}. Mount a volume \
                 there that uid {uid} can write to, or point CONFAB_DATA_DIR elsewhere.",
                dir.display()
            )
        })
}

/// A database URL fit for logs: the password replaced.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// A rendered page, on its way.
type Rendering = Pin<Box<dyn Future<Output = Response> + Send>>;

/// Renders a page of the app from a [`Bootstrap`]; cheap to clone.
#[derive(Clone)]
pub struct Pages(Arc<dyn Fn(Request) -> Rendering + Send + Sync>);

impl Pages {
    /// The page `boot` describes, under this response's CSP nonce.
    pub async fn render(&self, nonce: web::CspNonce, boot: Bootstrap) -> Response {
        let mut request = Request::new(axum::body::Body::empty());
        request.extensions_mut().insert(nonce);
        request.extensions_mut().insert(boot);
        (self.0)(request).await
    }
}

/// The whole application: the page, assets, the WebSocket, the account endpoints and the health check.
pub fn router(state: AppState) -> Router {
    // Install the metrics recorder before the first connection records anything.
    metrics::handle();
    // Rendering spawns onto Tokio through Leptos's executor (an error means it is set already).
    let _ = any_spawner::Executor::init_tokio();
    let options = state.leptos_options.clone();
    let context = state.clone();
    let render = leptos_axum::render_app_to_stream_with_context(
        move || provide_request_context(&context),
        move || shell(options.clone()),
    );
    let pages = Pages(Arc::new(move |request| Box::pin(render(request))));
    let router = if state.metrics_here {
        Router::new().route("/metrics", get(metrics::render))
    } else {
        Router::new()
    };
    router
        .route("/", get(page))
        .route("/r/{slug}", get(room_page))
        .route("/dm/{name}", get(dm_page))
        .route("/ws", get(websocket))
        .route(
            "/login",
            get(identity::http::sign_in_page).post(identity::http::sign_in),
        )
        .route("/logout", post(identity::http::sign_out))
        .route("/join", post(identity::http::join))
        .route("/messages", post(identity::http::post_message))
        .route("/account/claim", post(identity::http::claim))
        .route("/account/link", post(identity::http::own_signin_link))
        .route(
            "/admin/users/{id}/link",
            post(identity::http::signin_link_for),
        )
        .route("/admin/invites", post(identity::http::create_invite))
        .route("/join/{code}", get(identity::http::use_invite))
        .route("/link/{token}", get(identity::http::use_signin_link))
        .route("/account/sessions", get(identity::http::sessions))
        .route(
            "/account/sessions/{id}/end",
            post(identity::http::end_session),
        )
        .route("/admin/users/{id}/ban", post(identity::http::ban))
        .route("/admin/users/{id}/admin", post(identity::http::make_admin))
        .merge(bots::api::routes())
        .merge(bots::admin::routes())
        .route("/healthz", get(|| async { "ok" }))
        // The hashed bundle, served precompressed (brotli or gzip, as the browser accepts) when the
        // build made the .br/.gz files (`cargo leptos build --release --precompress`).
        .nest_service("/pkg", pkg_files(&state.leptos_options))
        .fallback_service(site_files(&state.leptos_options))
        .layer(axum::Extension(pages))
        .layer(axum::middleware::from_fn(web::security_headers))
        .with_state(state)
}

/// The chat page (`general`): reads what it shows (the recent history and who this browser is) from the
/// store, then renders it. A browser without a session is given one here. With the store down it says
/// so, with a 503, rather than render an empty chat.
async fn page(
    State(state): State<AppState>,
    axum::Extension(pages): axum::Extension<Pages>,
    axum::Extension(nonce): axum::Extension<web::CspNonce>,
    Query(query): Query<PageQuery>,
    browser: Browser,
) -> Response {
    if let Some(token) = query.token.filter(|t| !t.is_empty()) {
        return identity::http::token_sign_in(&state, &pages, nonce, &browser, &token).await;
    }
    page_of(state, pages, nonce, browser, Shown::GENERAL).await
}

/// `/r/<slug>`: a room's page, for anyone who may see the room; 404 for everyone else.
async fn room_page(
    State(state): State<AppState>,
    axum::Extension(pages): axum::Extension<Pages>,
    axum::Extension(nonce): axum::Extension<web::CspNonce>,
    axum::extract::Path(slug): axum::extract::Path<String>,
    browser: Browser,
) -> Response {
    page_of(state, pages, nonce, browser, Shown::Room(&slug)).await
}

/// `/dm/<name>`: the user's conversation with `name`, for the two of them; 404 for everyone else.
async fn dm_page(
    State(state): State<AppState>,
    axum::Extension(pages): axum::Extension<Pages>,
    axum::Extension(nonce): axum::Extension<web::CspNonce>,
    axum::extract::Path(name): axum::extract::Path<String>,
    browser: Browser,
) -> Response {
    page_of(state, pages, nonce, browser, Shown::Dm(&name)).await
}

async fn page_of(
    state: AppState,
    pages: Pages,
    nonce: web::CspNonce,
    mut browser: Browser,
    shown: Shown<'_>,
) -> Response {
    let cookie = match browser.ensure_session(state.accounts.store.as_ref()).await {
        Ok((_, cookie)) => cookie,
        Err(err) => {
            tracing::error!(error = %err, "starting a session failed");
            return identity::unavailable();
        }
    };
    let page = identity::http::chat_page_of(
        &state,
        &pages,
        nonce,
        &browser,
        shown,
        axum::http::StatusCode::OK,
        None,
        None,
    );
    identity::with_cookie(page.await, cookie)
}

/// Which room a page shows.
#[derive(Debug, Clone, Copy)]
pub enum Shown<'a> {
    /// `/` and `/r/<slug>`.
    Room(&'a str),
    /// `/dm/<name>`: the user's conversation with that one person.
    Dm(&'a str),
}

impl Shown<'_> {
    pub const GENERAL: Shown<'static> = Shown::Room(crate::protocol::GENERAL_ROOM);
}

/// What the chat page starts from: the sidebar (the user's rooms, with what is unread), the newest
/// page of the shown room's history, and who this browser is. `None` when the room is not one this
/// browser may see, which is answered exactly as a room that does not exist. An invite-only chat shows
/// a stranger nothing but how to get in.
pub async fn bootstrap(
    state: &AppState,
    browser: &Browser,
    shown: Shown<'_>,
    form_error: Option<String>,
    flash: Option<crate::ui::state::Flash>,
) -> Result<Option<Bootstrap>, store::StoreError> {
    use crate::protocol::{Access, RoomKind, HISTORY_PAGE};
    let me = browser
        .session
        .as_ref()
        .and_then(identity::http::identity_of_session);
    let access = state.sessions.config.access;
    if access == Access::Invite && !identity::http::admitted(browser) {
        if !matches!(shown, Shown::Room(crate::protocol::GENERAL_ROOM)) {
            return Ok(None);
        }
        return Ok(Some(Bootstrap {
            page: Page::Chat,
            me,
            form_error: form_error.or_else(|| Some(session::INVITE_REQUIRED.to_owned())),
            access,
            complete: true,
            ..Bootstrap::default()
        }));
    }
    let directory = &state.sessions.rooms;
    let user = me.as_ref().map(|me| me.user_id);
    let reader = me.as_ref().map(|me| (me.user_id, me.name.as_str()));
    let mut rooms = Vec::new();
    for room in directory.rooms_of(user).await? {
        let seen = rooms::Seen {
            member: user.is_some(),
            room,
        };
        rooms.push(directory.info(&seen, reader).await?);
    }
    let slug = match shown {
        Shown::Room(slug) if rooms.iter().any(|r| r.slug == slug) => slug.to_owned(),
        Shown::Room(slug) => {
            // A public room read without joining it: shown, and listed while it is.
            let Some(seen) = directory.visible(slug, user).await? else {
                return Ok(None);
            };
            rooms.push(directory.info(&seen, reader).await?);
            seen.room.slug
        }
        Shown::Dm(name) => {
            let (Some(me), Ok(name)) = (&me, crate::protocol::validate_name(name)) else {
                return Ok(None);
            };
            let (mine, theirs) = (names::name_key(&me.name), names::name_key(&name));
            let one_to_one = rooms.iter().find(|room| {
                let mut others = room
                    .members
                    .iter()
                    .map(|n| names::name_key(n))
                    .filter(|key| *key != mine);
                room.kind == RoomKind::Direct
                    && others.next().as_ref() == Some(&theirs)
                    && others.next().is_none()
            });
            match one_to_one {
                Some(room) => room.slug.clone(),
                None => return Ok(None),
            }
        }
    };
    let events = state
        .hub
        .store()
        .before(&slug, u64::MAX, HISTORY_PAGE)
        .await?;
    let complete = crate::protocol::reaches_first_event(&events);
    let sessions = match (&browser.session, &me) {
        (Some(session), Some(me)) if me.kind == crate::protocol::UserKind::Member => state
            .accounts
            .store
            .sessions_of(me.user_id)
            .await?
            .into_iter()
            .map(|s| crate::ui::state::Device {
                current: s.id == session.id,
                id: s.id,
                device: s.device,
                last_seen_at: s.last_seen_at,
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok(Some(Bootstrap {
        page: Page::Chat,
        me,
        form_error,
        access,
        flash,
        sessions,
        room: slug,
        rooms,
        events,
        complete,
    }))
}

/// The answer for a page that is not there, or a room one may not see: the same bytes for both.
pub async fn not_found() -> (axum::http::StatusCode, axum::response::Html<&'static str>) {
    (
        axum::http::StatusCode::NOT_FOUND,
        axum::response::Html(
            "<!DOCTYPE html><html lang=\"en\"><meta charset=\"utf-8\"><title>Confab</title>\
             <p>Page not found. <a href=\"/\">Go to the chat.</a></p></html>",
        ),
    )
}

/// Static files of the site (the favicon and other assets); anything else is a plain 404.
fn site_files(options: &LeptosOptions) -> Router {
    use axum::handler::HandlerWithoutStateExt;
    let root = std::path::Path::new(options.site_root.as_ref());
    Router::new().fallback_service(
        tower_http::services::ServeDir::new(root).not_found_service(not_found.into_service()),
    )
}

fn pkg_files(options: &LeptosOptions) -> tower_http::services::ServeDir {
    let dir = std::path::Path::new(options.site_root.as_ref()).join(options.site_pkg_dir.as_ref());
    tower_http::services::ServeDir::new(dir)
        .precompressed_br()
        .precompressed_gzip()
}

/// What pages and server functions read from the Leptos context: the state, and this response's CSP
/// nonce, which the hydration scripts then carry.
fn provide_request_context(state: &AppState) {
    use leptos::prelude::{provide_context, use_context};
    provide_context(state.clone());
    let nonce = use_context::<axum::http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<web::CspNonce>().cloned());
    if let Some(web::CspNonce(nonce)) = nonce {
        provide_context(leptos::nonce::Nonce::from_value(nonce));
    }
}

/// Serves `app` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Nagle's algorithm holds small frames back for tens of milliseconds: chat frames are all small.
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::warn!(error = %err, "could not set TCP_NODELAY");
        }
    });
    // The peer's address is the client's (unless a trusted proxy header says otherwise; see `identity`).
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

#[derive(Debug, Deserialize)]
struct PageQuery {
    /// A sign-in token from an embedding app (see `identity::token`).
    token: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WsQuery {
    /// The room the tab shows, whose history comes first (`general` without it).
    room: Option<String>,
    /// Resume: send every event of that room after this sequence number instead of the recent page.
    after: Option<u64>,
}

async fn websocket(
    headers: axum::http::HeaderMap,
    upgrade: socket::Upgrade,
    Query(query): Query<WsQuery>,
    browser: Browser,
    State(sessions): State<session::Context>,
) -> Response {
    if !web::same_origin(&headers) {
        tracing::warn!(origin = ?headers.get("origin"), "refused a cross-origin WebSocket upgrade");
        return (
            axum::http::StatusCode::FORBIDDEN,
            "cross-origin WebSocket connections are not allowed",
        )
            .into_response();
    }
    let start = query.after.map_or(Start::Recent, Start::After);
    let shown = query
        .room
        .filter(|room| !room.is_empty())
        .unwrap_or_else(|| crate::protocol::GENERAL_ROOM.to_owned());
    // A native client or bot may sign in with a token in the handshake (never in the URL).
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let mut unknown = browser.unknown;
    let bot_token = bearer.clone().filter(|raw| bots::is_bot_token(raw));
    let token = match bearer {
        // A bot's token: one answer for every token that is not a live one.
        Some(raw) if bots::is_bot_token(&raw) => match sessions.bots.authenticate(&raw).await {
            Ok(Some(user)) => Some(Ok(user)),
            Ok(None) => Some(Err(identity::token::TokenError::Invalid(
                "it is not a valid bot token".into(),
            ))),
            Err(err) => {
                tracing::error!(error = %err, "checking a bot token failed");
                unknown = true;
                None
            }
        },
        Some(raw) => Some(sessions.accounts.token_user(&raw).await),
        None => None,
    };
    let visitor = Visitor {
        session: browser.session,
        ip: browser.ip,
        unknown,
        token,
        bot_token,
    };
    let config = WebSocketConfig::default()
        // tungstenite's default keeps 128 KiB of read buffer per connection, zero-filled and so resident.
        // A client's frames are a few hundred bytes; a longer one (at most 64 KiB) takes a few reads.
        .read_buffer_size(1024)
        .max_write_buffer_size(crate::protocol::MAX_FRAME_BYTES * 16)
        .max_message_size(Some(crate::protocol::MAX_FRAME_BYTES))
        .max_frame_size(Some(crate::protocol::MAX_FRAME_BYTES));
    upgrade.on_upgrade(config, move |socket| async move {
        session::run(socket, sessions, &shown, visitor, start).await
    })
}

/// The server binary's commands besides serving: `confab invite [USES] [HOURS]` prints an invite link
/// (the way into an invite-only chat before it has an admin; on Fly.io,
/// `fly ssh console -C "confab invite"`). `None` when the arguments ask for the server itself.
pub async fn command(args: &[String]) -> Option<Result<(), String>> {
    match args.first().map(String::as_str) {
        None => None,
        Some("invite") => Some(print_invite(&args[1..]).await),
        Some("bot") => Some(bots::admin::command(&args[1..]).await),
        Some(other) => Some(Err(format!(
            "unknown command {other:?}; the commands are: (none) to serve, `invite [USES] [HOURS]`, \
             `bot …` ({})",
            bots::admin::USAGE
        ))),
    }
}

async fn print_invite(args: &[String]) -> Result<(), String> {
    let number = |i: usize, default: u32, what: &str| -> Result<u32, String> {
        args.get(i)
            .map(|raw| {
                raw.parse()
                    .map_err(|_| format!("{what} must be a whole number, not {raw:?}"))
            })
            .unwrap_or(Ok(default))
    };
    let uses = number(0, 1, "USES")?;
    let hours = number(1, 24, "HOURS")?;
    if !(1..=1000).contains(&uses) || !(1..=720).contains(&hours) {
        return Err("an invite works 1 to 1000 times and lasts 1 to 720 hours".into());
    }
    let config = Config::from_env()?;
    let stores = open_store(&config).await?;
    let (code, _) = identity::make_invite(stores.identity.as_ref(), uuid::Uuid::nil(), uses, hours)
        .await
        .map_err(|e| format!("cannot store the invite: {e}"))?;
    println!("/join/{code}");
    eprintln!("An invite for {uses} (for {hours} hours): open this path on the chat's address.");
    stores.events.close().await;
    Ok(())
}

/// Runs the server as configured by the environment until SIGINT or SIGTERM. Start-up failures come back
/// as plain sentences for the operator.
pub async fn run_from_env() -> Result<(), String> {
    config::init_tracing();
    // Every connection is a file descriptor; the usual soft limit of 1,024 would cap the chat there.
    raise_fd_limit(1 << 20);
    let conf = leptos::config::get_configuration(None)
        .map_err(|e| format!("Leptos configuration: {e}"))?;
    let config = Config::from_env()?;
    let addr = conf.leptos_options.site_addr;
    let state = AppState::new(conf.leptos_options, &config).await?;
    let hub = state.hub.clone();
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    if let Some(metrics_addr) = config.metrics_addr {
        serve_metrics(metrics_addr).await?;
    }
    tracing::info!("Confab listening on http://{addr}");
    let closing = hub.clone();
    let (signalled, on_signal) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown_signal().await;
        // Stop accepting (axum does, as this future resolves) and close every socket with 1012.
        closing.begin_shutdown();
        let _ = signalled.send(());
    };
    let sessions = hub.clone();
    let served = async move {
        let served = serve(listener, router(state), shutdown).await;
        sessions.sessions_ended().await;
        served
    };
    // Sockets close within milliseconds of the signal; the cap keeps the exit inside Fly's kill timeout
    // even if a peer never answers.
    let deadline = async move {
        if on_signal.await.is_ok() {
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let served = tokio::select! {
        result = served => result.map_err(|e| format!("server failed: {e}")),
        () = deadline => {
            tracing::warn!("connections still open after the shutdown grace; closing anyway");
            Ok(())
        }
    };
    hub.close().await;
    tracing::info!("stopped; storage flushed");
    served
}

/// Serves `/metrics` alone on `addr`, in the background, for as long as the process runs.
pub async fn serve_metrics(addr: SocketAddr) -> Result<SocketAddr, String> {
    metrics::handle();
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen for metrics on {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let app = Router::new().route("/metrics", get(metrics::render));
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::error!(error = %err, "the metrics listener failed");
        }
    });
    tracing::info!("metrics on http://{bound}/metrics");
    Ok(bound)
}

/// Raises this process's open-file limit as far as it may (thousands of sockets need it). Processes it
/// starts inherit the limit.
pub fn raise_fd_limit(wanted: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write and read the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        // Root may raise the hard limit too; others only the soft one, up to the hard.
        let raised = libc::rlimit {
            rlim_cur: wanted.max(limit.rlim_cur),
            rlim_max: wanted.max(limit.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// The longest a shutdown waits for connections before the store is flushed and the process exits.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(4);

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (what Fly.io and Docker send).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down");
}
