//! The account endpoints. Each is a plain HTML form post that the server answers with a redirect (or the
//! page again, with the reason, when it refuses), so all of them work without JavaScript, and the same
//! forms work in the hydrated page.
//!
//! - `GET /login`, `POST /login`: sign in as a member; a new session (and token) every time.
//! - `POST /logout`: ends this browser's session and closes its sockets, in every tab.
//! - `POST /join`: the name dialog posted before (or without) the WASM: joins as a guest.
//! - `POST /messages`: the composer, without JavaScript.
//! - `POST /account/claim`: "Keep this name": the guest becomes a member, with a password.
//! - `GET /account/sessions`, `POST /account/sessions/{id}/end`: a member's sessions, and ending one.

use super::limits::try_again_in;
use super::{cleared_cookie, new_token, session_cookie, token_hash, with_cookie, Browser};
use crate::protocol::{
    validate_name, validate_password, validate_text, EventKind, Identity, PasswordError, UserKind,
    Via, MAX_PASSWORD_BYTES,
};
use crate::server::backplane::SessionSignal;
use crate::server::hub::now_ms;
use crate::server::names::name_key;
use crate::server::store::{IdentityError, NewEvent, NewGuest, SessionRecord};
use crate::server::{bootstrap, web, AppState, Pages};
use crate::ui::state::{Bootstrap, Flash, Page};
use axum::extract::{Path, State};
use axum::http::header::{LOCATION, RETRY_AFTER, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Form, Json};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Who a session's user is, as the page and the socket say it.
pub fn identity_of_session(session: &SessionRecord) -> Option<Identity> {
    let user = session.user.as_ref()?;
    Some(Identity {
        name: user.name.clone(),
        user_id: user.id,
        kind: user.kind,
        admin: user.admin,
        via: session.via,
    })
}

/// "See /": where every form goes back to once it is done.
fn back_to_chat(cookie: Option<HeaderValue>) -> Response {
    let response = (StatusCode::SEE_OTHER, [(LOCATION, "/")]).into_response();
    with_cookie(response, cookie)
}

/// A form posted from another site: refused, whatever it carries. (SameSite=Lax already keeps the cookie
/// off such a post; this also stops a post that needs no cookie, such as signing in as someone.)
pub(crate) fn cross_site(headers: &HeaderMap) -> Option<Response> {
    (!web::same_origin(headers)).then(|| {
        tracing::warn!(origin = ?headers.get("origin"), "refused a cross-site form post");
        (
            StatusCode::FORBIDDEN,
            "Cross-site form posts are not accepted.",
        )
            .into_response()
    })
}

/// The chat page again, with `error` shown where the form was, and `status`.
async fn chat_with_error(
    state: &AppState,
    pages: &Pages,
    nonce: web::CspNonce,
    browser: &Browser,
    status: StatusCode,
    error: &str,
) -> Response {
    let error = Some(error.to_owned());
    chat_page(state, pages, nonce, browser, status, error, None).await
}

/// The chat page for `browser`, with a form's error or a new link when there is one; "unavailable" when
/// the store cannot be read.
pub async fn chat_page(
    state: &AppState,
    pages: &Pages,
    nonce: web::CspNonce,
    browser: &Browser,
    status: StatusCode,
    error: Option<String>,
    flash: Option<Flash>,
) -> Response {
    let shown = crate::server::Shown::GENERAL;
    chat_page_of(state, pages, nonce, browser, shown, status, error, flash).await
}

/// The page of room `shown`, as [`chat_page`]; a 404 when the browser may not see it.
#[allow(clippy::too_many_arguments)]
pub async fn chat_page_of(
    state: &AppState,
    pages: &Pages,
    nonce: web::CspNonce,
    browser: &Browser,
    shown: crate::server::Shown<'_>,
    status: StatusCode,
    error: Option<String>,
    flash: Option<Flash>,
) -> Response {
    match bootstrap(state, browser, shown, error, flash).await {
        Ok(Some(boot)) => (status, pages.render(nonce, boot).await).into_response(),
        Ok(None) => crate::server::not_found().await.into_response(),
        Err(err) => {
            tracing::error!(error = %err, "reading the page's history failed");
            super::unavailable()
        }
    }
}

async fn sign_in_form(
    pages: &Pages,
    nonce: web::CspNonce,
    status: StatusCode,
    name: &str,
    error: Option<String>,
) -> Response {
    let boot = Bootstrap {
        page: Page::SignIn {
            name: name.to_owned(),
            error,
        },
        ..Bootstrap::default()
    };
    (status, pages.render(nonce, boot).await).into_response()
}

/// `GET /login`: the sign-in form (a signed-in member goes straight to the chat).
pub async fn sign_in_page(
    Extension(pages): Extension<Pages>,
    Extension(nonce): Extension<web::CspNonce>,
    browser: Browser,
) -> Response {
    let member = browser
        .session
        .as_ref()
        .and_then(|s| s.user.as_ref())
        .is_some_and(|u| u.kind == UserKind::Member);
    if member {
        return back_to_chat(None);
    }
    sign_in_form(&pages, nonce, StatusCode::OK, "", None).await
}

#[derive(Debug, Deserialize)]
pub struct SignInForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    password: String,
}

/// The one answer for an unknown name and a wrong password, so the form does not tell which names
/// are members.
pub const WRONG_CREDENTIALS: &str = "That name and password do not match a member.";

/// `POST /login`: checks the password and signs this browser in with a new session.
pub async fn sign_in(
    State(state): State<AppState>,
    Extension(pages): Extension<Pages>,
    Extension(nonce): Extension<web::CspNonce>,
    headers: HeaderMap,
    browser: Browser,
    Form(form): Form<SignInForm>,
) -> Response {
    if let Some(refused) = cross_site(&headers) {
        return refused;
    }
    let refuse = |status: StatusCode, error: String| {
        let name = form.name.clone();
        let pages = pages.clone();
        let nonce = nonce.clone();
        async move { sign_in_form(&pages, nonce, status, &name, Some(error)).await }
    };
    let name = match validate_name(&form.name) {
        Ok(name) => name,
        Err(_) => return refuse(StatusCode::BAD_REQUEST, "Enter your name.".into()).await,
    };
    if form.password.is_empty() {
        return refuse(StatusCode::BAD_REQUEST, "Enter your password.".into()).await;
    }
    if form.password.len() > MAX_PASSWORD_BYTES {
        // Refused unhashed: nobody's password is that long.
        let error = PasswordError::TooLong.message().to_owned();
        return refuse(StatusCode::BAD_REQUEST, error).await;
    }
    let key = name_key(&name);
    let accounts = &state.accounts;
    if let Err(wait) = accounts.limits.attempt(&key, browser.ip) {
        let error = format!("Too many sign-in attempts. {}", try_again_in(wait));
        let mut response = refuse(StatusCode::TOO_MANY_REQUESTS, error).await;
        let secs = wait.as_secs() + 1;
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
        return response;
    }
    let credentials = match accounts.store.credentials(&key).await {
        Ok(credentials) => credentials,
        Err(err) => {
            tracing::error!(error = %err, "reading credentials failed");
            return super::unavailable();
        }
    };
    let (user, hash) = match credentials {
        Some((user, hash)) => (Some(user), Some(hash)),
        None => (None, None),
    };
    let matches = match accounts.hasher.verify(form.password, hash).await {
        Ok(matches) => matches,
        Err(err) => {
            tracing::error!(error = %err, "checking a password failed");
            return super::unavailable();
        }
    };
    let Some(user) = user.filter(|_| matches) else {
        return refuse(StatusCode::UNAUTHORIZED, WRONG_CREDENTIALS.into()).await;
    };
    if user.banned {
        return refuse(
            StatusCode::FORBIDDEN,
            "This account has been banned.".into(),
        )
        .await;
    }
    tracing::info!(name = %user.name, "signed in");
    signed_in(&state, &browser, user.id, Via::Password).await
}

/// Signs this browser in as `user` with a new session: whatever it was before (a guest, someone else)
/// ends, and a token anyone saw before signing in is worth nothing after. Back to the chat.
async fn signed_in(state: &AppState, browser: &Browser, user: Uuid, via: Via) -> Response {
    if let Some(old) = &browser.session {
        end(state, old.id).await;
    }
    let token = new_token();
    let id = Uuid::new_v4();
    let store = state.accounts.store.as_ref();
    let at = now_ms();
    let created = async {
        store
            .create_session(id, &token_hash(&token), &browser.device, at)
            .await?;
        store.bind_session(id, Some(user), via, at).await
    };
    if let Err(err) = created.await {
        tracing::error!(error = %err, "starting a session failed");
        return super::unavailable();
    }
    back_to_chat(Some(session_cookie(&token, browser.secure)))
}

/// `GET /?token=…`: an embedding app sends its user in signed in. The token is exchanged for a session
/// and the browser sent on to a clean `/`, so the token stays out of its history; a bad one gets the
/// page with the reason, and a 401.
pub async fn token_sign_in(
    state: &AppState,
    pages: &Pages,
    nonce: web::CspNonce,
    browser: &Browser,
    token: &str,
) -> Response {
    match state.accounts.token_user(token).await {
        Ok(user) => {
            tracing::info!(name = %user.name, "signed in with a token");
            signed_in(state, browser, user.id, Via::Token).await
        }
        Err(err) => {
            let message = err.message();
            chat_with_error(
                state,
                pages,
                nonce,
                browser,
                StatusCode::UNAUTHORIZED,
                &message,
            )
            .await
        }
    }
}

/// Ends session `id` and closes its sockets, on every instance.
async fn end(state: &AppState, id: Uuid) {
    if let Err(err) = state.accounts.store.end_session(id).await {
        tracing::error!(error = %err, "ending a session failed");
    }
    state.hub.signal_session(id, SessionSignal::Ended).await;
}

/// `POST /logout`: this browser's session ends, in every tab.
pub async fn sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
    browser: Browser,
) -> Response {
    if let Some(refused) = cross_site(&headers) {
        return refused;
    }
    if let Some(session) = &browser.session {
        end(&state, session.id).await;
    }
    let mut response = back_to_chat(None);
    response
        .headers_mut()
        .append(SET_COOKIE, cleared_cookie(browser.secure));
    response
}

#[derive(Debug, Deserialize)]
pub struct JoinForm {
    #[serde(default)]
    name: String,
}

/// `POST /join`: the name dialog, posted by a page whose WASM has not started (or never will). The
/// browser's session acts for a new guest; its socket, once it opens, seats them and says the join line.
pub async fn join(
    State(state): State<AppState>,
    Extension(pages): Extension<Pages>,
    Extension(nonce): Extension<web::CspNonce>,
    headers: HeaderMap,
    mut browser: Browser,
    Form(form): Form<JoinForm>,
) -> Response {
    if let Some(refused) = cross_site(&headers) {
        return refused;
    }
    let store = state.accounts.store.clone();
    let (session, cookie) = match browser.ensure_session(store.as_ref()).await {
        Ok(session) => session,
        Err(err) => {
            tracing::error!(error = %err, "starting a session failed");
            return super::unavailable();
        }
    };
    if state.sessions.config.access == crate::protocol::Access::Invite && !admitted(&browser) {
        let error = crate::server::session::INVITE_REQUIRED;
        let page = chat_with_error(
            &state,
            &pages,
            nonce,
            &browser,
            StatusCode::FORBIDDEN,
            error,
        );
        return with_cookie(page.await, cookie);
    }
    let name = match validate_name(&form.name) {
        Ok(name) => name,
        Err(err) => {
            let page = chat_with_error(
                &state,
                &pages,
                nonce,
                &browser,
                StatusCode::BAD_REQUEST,
                err.message(),
            );
            return with_cookie(page.await, cookie);
        }
    };
    let key = name_key(&name);
    if session
        .user
        .as_ref()
        .is_some_and(|u| name_key(&u.name) == key)
    {
        return back_to_chat(cookie); // joined already (a form posted twice)
    }
    let refusal = match store.owner_of(&key).await {
        Ok(Some(_)) => Some((StatusCode::CONFLICT, crate::server::session::NAME_OWNED)),
        Ok(None) => state
            .hub
            .presence()
            .holder(&key)
            .map(|_| (StatusCode::CONFLICT, "That name is taken")),
        Err(err) => {
            tracing::error!(error = %err, "looking up a name's owner failed");
            return super::unavailable();
        }
    };
    if let Some((status, error)) = refusal {
        let page = chat_with_error(&state, &pages, nonce, &browser, status, error);
        return with_cookie(page.await, cookie);
    }
    let arrival = NewGuest {
        id: Uuid::new_v4(),
        name,
        name_key: key,
        at: now_ms(),
        session: Some(session.id),
    };
    if let Err(err) = state.sessions.arrivals.arrive(arrival).await {
        tracing::error!(error = %err, "storing a guest failed");
        return super::unavailable();
    }
    // Other tabs of this browser join too.
    state
        .hub
        .signal_session(session.id, SessionSignal::Changed)
        .await;
    back_to_chat(cookie)
}

#[derive(Debug, Deserialize)]
pub struct MessageForm {
    #[serde(default)]
    text: String,
    /// The client's id for the message, so a form posted twice stores it once.
    id: Option<Uuid>,
    /// The room it goes to (`general` without it).
    room: Option<String>,
}

/// `POST /messages`: the composer without JavaScript. Stored as the browser's user, with the same
/// checks and limits as on the socket.
pub async fn post_message(
    State(state): State<AppState>,
    Extension(pages): Extension<Pages>,
    Extension(nonce): Extension<web::CspNonce>,
    headers: HeaderMap,
    browser: Browser,
    Form(form): Form<MessageForm>,
) -> Response {
    if let Some(refused) = cross_site(&headers) {
        return refused;
    }
    let Some(user) = browser.session.as_ref().and_then(|s| s.user.clone()) else {
        let error = "Join the chat with a name before sending.";
        return chat_with_error(
            &state,
            &pages,
            nonce,
            &browser,
            StatusCode::FORBIDDEN,
            error,
        )
        .await;
    };
    let members_only = state.sessions.config.access == crate::protocol::Access::Members;
    if members_only && user.kind == UserKind::Guest {
        let error = crate::server::session::MEMBERS_ONLY;
        let status = StatusCode::FORBIDDEN;
        return chat_with_error(&state, &pages, nonce, &browser, status, error).await;
    }
    let text = match validate_text(&form.text) {
        Ok(text) => text,
        Err(err) => {
            let status = StatusCode::BAD_REQUEST;
            return chat_with_error(&state, &pages, nonce, &browser, status, err.message()).await;
        }
    };
    // Without JavaScript, `/me` works as in the live chat; the commands that change a room need it.
    let (kind, text) = match crate::protocol::Slash::parse(&text) {
        crate::protocol::Slash::Text(text) => (EventKind::Message, text.to_owned()),
        crate::protocol::Slash::Me(action) if !action.is_empty() => {
            (EventKind::Action, action.to_owned())
        }
        _ => {
            let command = text.split_whitespace().next().unwrap_or_default();
            let error = format!(
                "{command} is not something this page can do without JavaScript; nothing was posted. \
                 Start a message with // to post a text that starts with /."
            );
            let status = StatusCode::BAD_REQUEST;
            return chat_with_error(&state, &pages, nonce, &browser, status, &error).await;
        }
    };
    if let Err(wait) = state.sessions.limits.check(user.id, browser.ip) {
        let error = format!(
            "You are sending messages too fast; this one was not sent. {}",
            try_again_in(wait)
        );
        let status = StatusCode::TOO_MANY_REQUESTS;
        return chat_with_error(&state, &pages, nonce, &browser, status, &error).await;
    }
    let room = form
        .room
        .clone()
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| crate::protocol::GENERAL_ROOM.to_owned());
    let seen = match state.sessions.rooms.visible(&room, Some(user.id)).await {
        Ok(seen) => seen,
        Err(err) => {
            tracing::error!(error = %err, "reading a room failed");
            return super::unavailable();
        }
    };
    let refused = match &seen {
        None => Some((
            StatusCode::NOT_FOUND,
            crate::server::rooms::NO_SUCH_ROOM.to_owned(),
        )),
        Some(seen) => crate::server::rooms::post_refusal(&room, seen.member, seen.room.archived)
            .map(|why| (StatusCode::FORBIDDEN, why)),
    };
    if let Some((status, error)) = refused {
        return chat_with_error(&state, &pages, nonce, &browser, status, &error).await;
    }
    let event = NewEvent {
        id: form.id.unwrap_or_else(Uuid::new_v4),
        kind,
        name: user.name,
        user_id: user.id,
        user_kind: user.kind,
        text,
        target: None,
        call: Vec::new(),
    };
    match state.hub.publish(&room, event).await {
        Ok(_) if room == crate::protocol::GENERAL_ROOM => back_to_chat(None),
        Ok(_) => {
            let page = format!("/r/{}", crate::protocol::path_segment(&room));
            (StatusCode::SEE_OTHER, [(LOCATION, page)]).into_response()
        }
        Err(err) => {
            tracing::error!(error = %err, "storing a posted message failed");
            let error = "The chat is temporarily unavailable; your message was not sent.";
            let status = StatusCode::SERVICE_UNAVAILABLE;
            chat_with_error(&state, &pages, nonce, &browser, status, error).await
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct ClaimForm {
    #[serde(default)]
    password: String,
}

/// `POST /account/claim`: "Keep this name". The browser's guest becomes a member under the same id, so
/// their messages stay theirs; the session gets a new token, and every tab hears who it is now.
pub async fn claim(
    State(state): State<AppState>,
    Extension(pages): Extension<Pages>,
    Extension(nonce): Extension<web::CspNonce>,
    headers: HeaderMap,
    browser: Browser,
    Form(form): Form<ClaimForm>,
) -> Response {
    if let Some(refused) = cross_site(&headers) {
        return refused;
    }
    let refuse = |status: StatusCode, error: &'static str| {
        chat_with_error(&state, &pages, nonce.clone(), &browser, status, error)
    };
    let Some((session, user)) = browser
        .session
        .as_ref()
        .and_then(|s| Some((s.id, s.user.clone()?)))
    else {
        return refuse(StatusCode::FORBIDDEN, "Join the chat with a name first.").await;
    };
    if user.kind != UserKind::Guest {
        return refuse(StatusCode::CONFLICT, "This name is yours already.").await;
    }
    if let Err(err) = validate_password(&form.password) {
        return refuse(StatusCode::BAD_REQUEST, err.message()).await;
    }
    let key = name_key(&user.name);
    let held_by_other = state
        .hub
        .presence()
        .holder(&key)
        .is_some_and(|holder| holder != user.id);
    if held_by_other {
        return refuse(StatusCode::CONFLICT, "Someone else is using this name now.").await;
    }
    let accounts = &state.accounts;
    let hash = match accounts.hasher.hash(form.password).await {
        Ok(hash) => hash,
        Err(err) => {
            tracing::error!(error = %err, "hashing a password failed");
            return super::unavailable();
        }
    };
    let admin = accounts.admin_key.as_deref() == Some(key.as_str());
    match accounts
        .store
        .make_member(user.id, &key, &hash, admin, now_ms())
        .await
    {
        Ok(_) => {}
        Err(IdentityError::NameOwned) => {
            return refuse(StatusCode::CONFLICT, crate::server::session::NAME_OWNED).await
        }
        Err(IdentityError::NoSuchUser) => {
            return refuse(StatusCode::CONFLICT, "This name is yours already.").await
        }
        Err(IdentityError::Store(err)) => {
            tracing::error!(error = %err, "keeping a name failed");
            return super::unavailable();
        }
    }
    let token = new_token();
    let at = now_ms();
    let rotated = async {
        accounts
            .store
            .rotate_session(session, &token_hash(&token), at)
            .await?;
        accounts
            .store
            .bind_session(session, Some(user.id), Via::Password, at)
            .await
    };
    if let Err(err) = rotated.await {
        tracing::error!(error = %err, "renewing a session failed");
        return super::unavailable();
    }
    tracing::info!(name = %user.name, "a guest kept their name");
    state
        .hub
        .signal_session(session, SessionSignal::Changed)
        .await;
    back_to_chat(Some(session_cookie(&token, browser.secure)))
}

/// Whether this browser may see an invite-only chat: it came in through an invite, or is someone.
pub fn admitted(browser: &Browser) -> bool {
    browser
        .session
        .as_ref()
        .is_some_and(|s| s.admitted || s.user.is_some())
}

/// This site's own origin, as the browser reached it (for links shown to be copied elsewhere).
fn origin(headers: &HeaderMap, browser: &Browser) -> String {
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let scheme = if browser.secure { "https" } else { "http" };
    format!("{scheme}://{host}")
}

/// A QR code of `url`, as a data URI an `<img>` shows (never markup put into the page).
fn qr_code(url: &str) -> Option<String> {
    use base64::Engine;
    let code = qrcode::QrCode::new(url.as_bytes()).ok()?;
    let svg = code
        .render::<qrcode::render::svg::Color>()
        .min_dimensions(200, 200)
        .quiet_zone(true)
        .build();
    Some(format!(
        "data:image/svg+xml;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(svg)
    ))
}

/// The chat page with a link a form just made.
async fn chat_with_flash(
    state: &AppState,
    pages: &Pages,
    nonce: web::CspNonce,
    browser: &Browser,
    flash: Flash,
) -> Response {
    chat_page(
        state,
        pages,
        nonce,
        browser,
        StatusCode::OK,
        None,
        Some(flash),
    )
    .await
}

/// "until 14:05 UTC on 2026-12-02", for a link's expiry.
fn until(at_ms: i64) -> String {
    // From "2026-12-02T14:05:09Z".
    let iso = crate::ui::message_row::iso_utc(at_ms);
    format!("until {} UTC on {}", &iso[11..16], &iso[..10])
}

#[derive(Debug, Deserialize)]
pub struct InviteForm {
    /// Hours the link works for (1 to 720; 24 when absent).
    hours: Option<u32>,
    /// How many people may use it (1 to 1,000; 1 when absent).
    uses: Option<u32>,
}

/// `POST /admin/invites`: an admin makes an invite link, with an expiry and a number of uses. The page
/// shows it once, with a QR code; the store keeps only the hash of its code.
pub async fn create_invite(
    State(state): State<AppState>,
    Extension(pages): Extension<Pages>,
    Extension(nonce): Extension<web::CspNonce>,
    headers: HeaderMap,
    browser: Browser,
    Form(form): Form<InviteForm>,
) -> Response {
    if let Some(refused) = cross_site(&headers) {
        return refused;
    }
    let Some(by) = admin(&browser) else {
        return (StatusCode::FORBIDDEN, "Only an admin can do that.").into_response();
    };
    let hours = form.hours.unwrap_or(24);
    let uses = form.uses.unwrap_or(1);
    if !(1..=720).contains(&hours) || !(1..=1000).contains(&uses) {
        let error = "An invite lasts 1 to 720 hours and works 1 to 1000 times.";
        let status = StatusCode::BAD_REQUEST;
        return chat_with_error(&state, &pages, nonce, &browser, status, error).await;
    }
    let (code, expires_at) =
        match super::make_invite(state.accounts.store.as_ref(), by, uses, hours).await {
            Ok(made) => made,
            Err(err) => {
                tracing::error!(error = %err, "storing an invite failed");
                return super::unavailable();
            }
        };
    let url = format!("{}/join/{code}", origin(&headers, &browser));
    let times = if uses == 1 {
        "once".to_owned()
    } else {
        format!("{uses} times")
    };
    let flash = Flash {
        title: "Invite link".into(),
        note: format!("Works {times}, {}.", until(expires_at)),
        qr: qr_code(&url),
        url,
    };
    chat_with_flash(&state, &pages, nonce, &browser, flash).await
}

/// `GET /join/{code}`: an invite link. A good one lets this browser in (it may then join with a name);
/// a used-up or expired one says so.
pub async fn use_invite(
    State(state): State<AppState>,
    Extension(pages): Extension<Pages>,
    Extension(nonce): Extension<web::CspNonce>,
    mut browser: Browser,
    Path(code): Path<String>,
) -> Response {
    let store = state.accounts.store.clone();
    let (session, cookie) = match browser.ensure_session(store.as_ref()).await {
        Ok(session) => session,
        Err(err) => {
            tracing::error!(error = %err, "starting a session failed");
            return super::unavailable();
        }
    };
    if admitted(&browser) {
        return back_to_chat(cookie);
    }
    match store.use_invite(&token_hash(&code), now_ms()).await {
        Ok(true) => {}
        Ok(false) => {
            let error = "This invite link has expired or been used up. Ask for a new one.";
            let page = chat_with_error(&state, &pages, nonce, &browser, StatusCode::GONE, error);
            return with_cookie(page.await, cookie);
        }
        Err(err) => {
            tracing::error!(error = %err, "using an invite failed");
            return super::unavailable();
        }
    }
    if let Err(err) = store.admit_session(session.id).await {
        tracing::error!(error = %err, "admitting a session failed");
        return super::unavailable();
    }
    back_to_chat(cookie)
}

/// How long a sign-in link works.
pub const SIGNIN_LINK_MINUTES: i64 = 15;

/// A one-time sign-in link for member `user`, shown once with its QR code.
async fn signin_link(
    state: &AppState,
    pages: &Pages,
    nonce: web::CspNonce,
    headers: &HeaderMap,
    browser: &Browser,
    user: &crate::server::store::User,
) -> Response {
    let token = new_token();
    let expires_at = now_ms() + SIGNIN_LINK_MINUTES * 60_000;
    if let Err(err) = state
        .accounts
        .store
        .create_signin_link(&token_hash(&token), user.id, expires_at)
        .await
    {
        tracing::error!(error = %err, "storing a sign-in link failed");
        return super::unavailable();
    }
    let url = format!("{}/link/{token}", origin(headers, browser));
    let flash = Flash {
        title: format!("Sign-in link for {}", user.name),
        note: format!(
            "Works once, for {SIGNIN_LINK_MINUTES} minutes ({}). Open it on the other device, or scan the code.",
            until(expires_at)
        ),
        qr: qr_code(&url),
        url,
    };
    chat_with_flash(state, pages, nonce, browser, flash).await
}

/// `POST /account/link`: a member makes a sign-in link for themselves, to move to another device.
pub async fn own_signin_link(
    State(state): State<AppState>,
    Extension(pages): Extension<Pages>,
    Extension(nonce): Extension<web::CspNonce>,
    headers: HeaderMap,
    browser: Browser,
) -> Response {
    if let Some(refused) = cross_site(&headers) {
        return refused;
    }
    let Some(user) = browser
        .session
        .as_ref()
        .and_then(|s| s.user.clone())
        .filter(|u| u.kind == UserKind::Member)
    else {
        return (StatusCode::UNAUTHORIZED, "Sign in as a member first.").into_response();
    };
    signin_link(&state, &pages, nonce, &headers, &browser, &user).await
}

/// `POST /admin/users/{id}/link`: an admin makes a sign-in link for any member (a forgotten password).
pub async fn signin_link_for(
    State(state): State<AppState>,
    Extension(pages): Extension<Pages>,
    Extension(nonce): Extension<web::CspNonce>,
    headers: HeaderMap,
    browser: Browser,
    Path(id): Path<Uuid>,
) -> Response {
    if let Some(refused) = cross_site(&headers) {
        return refused;
    }
    if admin(&browser).is_none() {
        return (StatusCode::FORBIDDEN, "Only an admin can do that.").into_response();
    }
    let user = match state.accounts.store.user(id).await {
        Ok(user) => user.filter(|u| u.kind == UserKind::Member && !u.banned),
        Err(err) => {
            tracing::error!(error = %err, "reading a user failed");
            return super::unavailable();
        }
    };
    let Some(user) = user else {
        return (StatusCode::NOT_FOUND, "No such member.").into_response();
    };
    signin_link(&state, &pages, nonce, &headers, &browser, &user).await
}

/// `GET /link/{token}`: a one-time sign-in link. Used once, it signs this browser in as its member with a
/// new session; used again, or late, it says so.
pub async fn use_signin_link(
    State(state): State<AppState>,
    Extension(pages): Extension<Pages>,
    Extension(nonce): Extension<web::CspNonce>,
    browser: Browser,
    Path(token): Path<String>,
) -> Response {
    let used = state
        .accounts
        .store
        .use_signin_link(&token_hash(&token), now_ms())
        .await;
    let user = match used {
        Ok(Some(user)) => user,
        Ok(None) => {
            let error = "This sign-in link has been used or has expired. Make a new one.";
            return chat_with_error(&state, &pages, nonce, &browser, StatusCode::GONE, error).await;
        }
        Err(err) => {
            tracing::error!(error = %err, "using a sign-in link failed");
            return super::unavailable();
        }
    };
    tracing::info!(user = %user, "signed in with a one-time link");
    signed_in(&state, &browser, user, Via::Password).await
}

/// The admin behind a request, if it is one.
pub(crate) fn admin(browser: &Browser) -> Option<Uuid> {
    let user = browser.session.as_ref()?.user.as_ref()?;
    (user.admin && !user.banned).then_some(user.id)
}

/// What an admin may do to another user.
#[derive(Debug, Clone, Copy)]
pub enum AdminAction {
    Ban,
    MakeAdmin,
}

/// `POST /admin/users/{id}/ban` and `POST /admin/users/{id}/admin`: an admin bans a user (their sessions
/// end, their sockets close, their name stays locked) or makes a member an admin. Anyone else gets 403
/// and learns nothing about the user.
pub async fn admin_action(
    state: AppState,
    headers: HeaderMap,
    browser: Browser,
    target: Uuid,
    action: AdminAction,
) -> Response {
    if let Some(refused) = cross_site(&headers) {
        return refused;
    }
    let Some(by) = admin(&browser) else {
        return (StatusCode::FORBIDDEN, "Only an admin can do that.").into_response();
    };
    if by == target {
        return (
            StatusCode::CONFLICT,
            "An admin cannot do that to themselves.",
        )
            .into_response();
    }
    let store = &state.accounts.store;
    let done = match action {
        AdminAction::Ban => match store.ban(target).await {
            Ok(Some(sessions)) => {
                for session in sessions {
                    state
                        .hub
                        .signal_session(session, SessionSignal::Ended)
                        .await;
                }
                // Also connections without a session (a bot's, a cookie-less client's).
                state.hub.signal_session(target, SessionSignal::Ended).await;
                tracing::info!(user = %target, "banned");
                true
            }
            Ok(None) => false,
            Err(err) => {
                tracing::error!(error = %err, "banning failed");
                return super::unavailable();
            }
        },
        AdminAction::MakeAdmin => match store.set_admin(target, true).await {
            Ok(true) => {
                state
                    .hub
                    .signal_session(target, SessionSignal::Changed)
                    .await;
                tracing::info!(user = %target, "made an admin");
                true
            }
            Ok(false) => false,
            Err(err) => {
                tracing::error!(error = %err, "making an admin failed");
                return super::unavailable();
            }
        },
    };
    if done {
        back_to_chat(None)
    } else {
        (StatusCode::NOT_FOUND, "No such member.").into_response()
    }
}

/// `POST /admin/users/{id}/ban`.
pub async fn ban(
    State(state): State<AppState>,
    headers: HeaderMap,
    browser: Browser,
    Path(id): Path<Uuid>,
) -> Response {
    admin_action(state, headers, browser, id, AdminAction::Ban).await
}

/// `POST /admin/users/{id}/admin`.
pub async fn make_admin(
    State(state): State<AppState>,
    headers: HeaderMap,
    browser: Browser,
    Path(id): Path<Uuid>,
) -> Response {
    admin_action(state, headers, browser, id, AdminAction::MakeAdmin).await
}

/// One session in a member's list.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionEntry {
    pub id: Uuid,
    pub device: String,
    pub created_at: i64,
    pub last_seen_at: i64,
    /// The session this request came with.
    pub current: bool,
}

/// The member behind a request, with their session id; `None` for guests and strangers.
fn member(browser: &Browser) -> Option<(Uuid, Uuid)> {
    let session = browser.session.as_ref()?;
    let user = session.user.as_ref()?;
    (user.kind == UserKind::Member).then_some((session.id, user.id))
}

/// `GET /account/sessions`: a member's sessions (device, when last active), as JSON.
pub async fn sessions(State(state): State<AppState>, browser: Browser) -> Response {
    let Some((current, user)) = member(&browser) else {
        return (StatusCode::UNAUTHORIZED, "Sign in as a member first.").into_response();
    };
    match state.accounts.store.sessions_of(user).await {
        Ok(sessions) => Json(
            sessions
                .into_iter()
                .map(|s| SessionEntry {
                    current: s.id == current,
                    id: s.id,
                    device: s.device,
                    created_at: s.created_at,
                    last_seen_at: s.last_seen_at,
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(err) => {
            tracing::error!(error = %err, "listing sessions failed");
            super::unavailable()
        }
    }
}

/// `POST /account/sessions/{id}/end`: ends one of the member's own sessions (another device's, or this
/// one). A session of somebody else's is "not found", as one that does not exist.
pub async fn end_session(
    State(state): State<AppState>,
    headers: HeaderMap,
    browser: Browser,
    Path(id): Path<Uuid>,
) -> Response {
    if let Some(refused) = cross_site(&headers) {
        return refused;
    }
    let Some((current, user)) = member(&browser) else {
        return (StatusCode::UNAUTHORIZED, "Sign in as a member first.").into_response();
    };
    let theirs = match state.accounts.store.sessions_of(user).await {
        Ok(sessions) => sessions.iter().any(|s| s.id == id),
        Err(err) => {
            tracing::error!(error = %err, "listing sessions failed");
            return super::unavailable();
        }
    };
    if !theirs {
        return (StatusCode::NOT_FOUND, "No such session.").into_response();
    }
    end(&state, id).await;
    let mut response = back_to_chat(None);
    if id == current {
        response
            .headers_mut()
            .append(SET_COOKIE, cleared_cookie(browser.secure));
    }
    response
}
