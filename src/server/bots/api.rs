//! The bot API at `/api/v1`: JSON, authenticated with `Authorization: Bearer <token>` (never in the URL,
//! where access logs would keep it). Errors carry the socket protocol's stable codes:
//! `{"error": {"code": "not_found", "message": "…"}}`.
//!
//! A bot acts only in the rooms it is in: every other room, public or not, answers 404 as one that does
//! not exist.

use crate::protocol::{validate_text, ChatEvent, ErrorCode, EventKind, RoomInfo, HISTORY_PAGE};
use crate::server::rooms::{delete_message, post_refusal, Deleted, Deleter, NO_SUCH_ROOM};
use crate::server::store::{NewEvent, User};
use crate::server::AppState;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::header::{AUTHORIZATION, LINK, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use uuid::Uuid;

/// The largest request body the API reads.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The most messages one page gives.
pub const MAX_PAGE: usize = 200;

/// The one answer to a missing, malformed, unknown or revoked token.
const UNAUTHORIZED: &str =
    "A valid bot token is required, sent as the header `Authorization: Bearer <token>`.";

/// The API's routes, under `/api/v1`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/rooms", get(list_rooms))
        .route(
            "/api/v1/rooms/{room}/messages",
            get(read_messages).post(post_message),
        )
        .route("/api/v1/rooms/{room}/messages/{id}", delete(delete_own))
        .route("/api/v1/openapi.json", get(openapi))
}

/// The API's OpenAPI 3.1 document, generated from the handlers below and their types.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Confab bot API",
        description = "Post and read messages as a bot. Authenticate with `Authorization: Bearer <token>`."
    ),
    paths(list_rooms, post_message, read_messages, delete_own),
    modifiers(&BearerToken),
    security(("bearer" = []))
)]
pub struct ApiDoc;

/// Declares the bearer token every route needs.
struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "A bot token (cfb_…), from the admin page or `confab bot create`",
            ))
            .build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// `GET /api/v1/openapi.json`: needs no token, so tools can read it.
async fn openapi() -> Response {
    use utoipa::OpenApi;
    Json(ApiDoc::openapi()).into_response()
}

/// An API error: a status, a stable code and a sentence.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    retry_after: Option<Duration>,
}

impl ApiError {
    fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, NO_SUCH_ROOM)
    }

    fn unavailable(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "an API request could not reach the store");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "The chat is temporarily unavailable; try again shortly.",
        )
    }

    fn bad_request(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

#[derive(Serialize, utoipa::ToSchema)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct ErrorDetail<'a> {
    code: ErrorCode,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: &self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(wait) = self.retry_after {
            // Whole seconds, rounded up: a client that waits that long is let in.
            let seconds = wait.as_millis().div_ceil(1000).max(1);
            headers.insert(RETRY_AFTER, HeaderValue::from(seconds as u64));
        }
        response
    }
}

/// The bot a request's bearer token speaks for.
async fn bot(state: &AppState, headers: &HeaderMap) -> Result<User, ApiError> {
    let unauthorized = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            UNAUTHORIZED,
        )
    };
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(unauthorized)?;
    match state.bots.authenticate(token).await {
        Ok(Some(user)) => Ok(user),
        Ok(None) => Err(unauthorized()),
        Err(err) => Err(ApiError::unavailable(err)),
    }
}

/// Room `slug`, if `bot` is in it.
async fn room_of(
    state: &AppState,
    bot: &User,
    slug: &str,
) -> Result<crate::server::rooms::Seen, ApiError> {
    match state.sessions.rooms.visible(slug, Some(bot.id)).await {
        Ok(Some(seen)) if seen.member => Ok(seen),
        Ok(_) => Err(ApiError::not_found()),
        Err(err) => Err(ApiError::unavailable(err)),
    }
}

#[derive(Serialize, utoipa::ToSchema)]
struct Rooms {
    rooms: Vec<RoomInfo>,
}

/// `GET /api/v1/rooms`: the rooms the bot is in, `general` first.
#[utoipa::path(get, path = "/api/v1/rooms", responses(
    (status = 200, description = "The bot's rooms, `general` first", body = Rooms),
    (status = 401, description = "No valid bot token", body = ErrorBody),
))]
async fn list_rooms(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let bot = bot(&state, &headers).await?;
    let directory = &state.sessions.rooms;
    let rooms = directory
        .rooms_of(Some(bot.id))
        .await
        .map_err(ApiError::unavailable)?;
    let mut infos = Vec::with_capacity(rooms.len());
    for room in rooms {
        let seen = crate::server::rooms::Seen { room, member: true };
        let info = directory
            .info(&seen, Some((bot.id, &bot.name)))
            .await
            .map_err(ApiError::unavailable)?;
        infos.push(info);
    }
    Ok(Json(Rooms { rooms: infos }).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PostBody {
    /// Chosen by the bot, so a retry is recognised; made up when left out.
    #[serde(default)]
    id: Option<Uuid>,
    text: String,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Posted {
    id: Uuid,
    seq: u64,
}

/// `POST /api/v1/rooms/{room}/messages` with `{"id"?: uuid, "text": …}`: 201 with the message's `seq`;
/// the same `id` again answers 200 with the same `seq`, and with other text 409.
#[utoipa::path(post, path = "/api/v1/rooms/{room}/messages",
    params(("room" = String, Path, description = "The room's slug (`general`, …)")),
    request_body = PostBody,
    responses(
        (status = 201, description = "Stored as event `seq`", body = Posted),
        (status = 200, description = "A message with this `id` was stored before: the same `seq`", body = Posted),
        (status = 400, description = "Malformed JSON, a wrong field, or a refused text", body = ErrorBody),
        (status = 401, description = "No valid bot token", body = ErrorBody),
        (status = 403, description = "The room is archived", body = ErrorBody),
        (status = 404, description = "The bot is not in such a room", body = ErrorBody),
        (status = 409, description = "Another message has this `id`", body = ErrorBody),
        (status = 413, description = "The body is over 64 KiB", body = ErrorBody),
        (status = 429, description = "Over the bot's rate; see `Retry-After`", body = ErrorBody),
    ))]
async fn post_message(
    State(state): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bot = bot(&state, &headers).await?;
    let body: PostBody = json_body(body).await?;
    let text = validate_text(&body.text)
        .map_err(|err| ApiError::bad_request(err.code(), format!("text: {}", err.message())))?;
    let seen = room_of(&state, &bot, &room).await?;
    if let Some(why) = post_refusal(&room, seen.member, seen.room.archived) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::NotAllowed,
            why,
        ));
    }
    if let Err(wait) = state.bots.may_post(bot.id) {
        let mut err = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            "This bot is posting too fast; the message was not stored. Try again after Retry-After.",
        );
        err.retry_after = Some(wait);
        return Err(err);
    }
    let id = body.id.unwrap_or_else(Uuid::new_v4);
    let event = NewEvent {
        id,
        kind: EventKind::Message,
        name: bot.name.clone(),
        user_id: bot.id,
        user_kind: bot.kind,
        text: text.clone(),
        target: None,
        call: Vec::new(),
    };
    let appended = state
        .hub
        .publish(&room, event)
        .await
        .map_err(ApiError::unavailable)?;
    let stored = &appended.event;
    if !appended.fresh && (stored.user_id != bot.id || stored.text != text) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::Conflict,
            "id: a different message with this id exists; choose a new id for a new message.",
        ));
    }
    let status = if appended.fresh {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let posted = Posted {
        id,
        seq: stored.seq,
    };
    Ok((status, Json(posted)).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct Paging {
    /// Events after this `seq` (newer), oldest first.
    after: Option<u64>,
    /// The page of events before this `seq` (older).
    before: Option<u64>,
    /// At most this many (1 to 200, 50 without it).
    limit: Option<usize>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Page {
    messages: Vec<ChatEvent>,
    /// Nothing is older than this page.
    complete: bool,
}

/// `GET /api/v1/rooms/{room}/messages?after=&before=&limit=`: events oldest first; with neither cursor
/// the newest page. `Link` headers give the older (`prev`) and newer (`next`) pages.
#[utoipa::path(get, path = "/api/v1/rooms/{room}/messages",
    params(("room" = String, Path, description = "The room's slug"), Paging),
    responses(
        (status = 200, description = "Events, oldest first; `Link` has the older and newer pages", body = Page),
        (status = 400, description = "A wrong query parameter", body = ErrorBody),
        (status = 401, description = "No valid bot token", body = ErrorBody),
        (status = 404, description = "The bot is not in such a room", body = ErrorBody),
    ))]
async fn read_messages(
    State(state): State<AppState>,
    Path(room): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let bot = bot(&state, &headers).await?;
    let paging = Query::<Paging>::try_from_uri(&uri)
        .map_err(|err| ApiError::bad_request(ErrorCode::BadFrame, err.body_text()))?
        .0;
    let limit = paging.limit.unwrap_or(HISTORY_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            ErrorCode::BadFrame,
            format!("limit: must be 1 to {MAX_PAGE}"),
        ));
    }
    let seen = room_of(&state, &bot, &room).await?;
    let store = state.hub.store();
    let events = match (paging.after, paging.before) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                ErrorCode::BadFrame,
                "after, before: give one of them, not both",
            ))
        }
        (Some(after), None) => store.since(&seen.room.slug, after, limit).await,
        (None, before) => {
            store
                .before(&seen.room.slug, before.unwrap_or(u64::MAX), limit)
                .await
        }
    }
    .map_err(ApiError::unavailable)?;
    // Older than this page there is nothing: it starts at the first event, or a backwards page came
    // back short.
    let backwards = paging.after.is_none();
    let complete =
        events.first().is_some_and(|e| e.seq <= 1) || (backwards && events.len() < limit);
    let base = format!(
        "/api/v1/rooms/{}/messages",
        crate::protocol::path_segment(&seen.room.slug)
    );
    let mut links = Vec::new();
    if let (Some(first), false) = (events.first(), complete) {
        links.push(format!(
            "<{base}?before={}&limit={limit}>; rel=\"prev\"",
            first.seq
        ));
    }
    let newest = events.last().map(|e| e.seq).or(paging.after).unwrap_or(0);
    links.push(format!(
        "<{base}?after={newest}&limit={limit}>; rel=\"next\""
    ));
    let mut response = Json(Page {
        messages: events,
        complete,
    })
    .into_response();
    if let Ok(value) = HeaderValue::from_str(&links.join(", ")) {
        response.headers_mut().insert(LINK, value);
    }
    Ok(response)
}

/// `DELETE /api/v1/rooms/{room}/messages/{id}`: the bot's own message; 204.
#[utoipa::path(delete, path = "/api/v1/rooms/{room}/messages/{id}",
    params(("room" = String, Path, description = "The room's slug"), ("id" = uuid::Uuid, Path, description = "The message's id")),
    responses(
        (status = 204, description = "Deleted for everyone"),
        (status = 401, description = "No valid bot token", body = ErrorBody),
        (status = 403, description = "Not the bot's own message", body = ErrorBody),
        (status = 404, description = "No such room for the bot, or no such message", body = ErrorBody),
    ))]
async fn delete_own(
    State(state): State<AppState>,
    Path((room, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let bot = bot(&state, &headers).await?;
    let id = Uuid::try_parse(&id)
        .map_err(|_| ApiError::bad_request(ErrorCode::BadFrame, "id: must be a message's uuid"))?;
    let seen = room_of(&state, &bot, &room).await?;
    let by = Deleter {
        user: bot.id,
        name: &bot.name,
        kind: bot.kind,
        admin: false,
    };
    match delete_message(&state.hub, &seen.room.slug, id, by).await {
        Ok(Deleted::Done) => Ok(StatusCode::NO_CONTENT.into_response()),
        Ok(Deleted::NoSuchMessage) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "There is no such message.",
        )),
        Ok(Deleted::NotYours) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::NotAllowed,
            "A bot may delete only its own messages.",
        )),
        Err(err) => Err(ApiError::unavailable(err)),
    }
}

/// Reads a JSON body of at most [`MAX_BODY_BYTES`]: 413 above it, 400 naming what is wrong otherwise.
async fn json_body<T: serde::de::DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::BodyTooLarge,
                format!("The request body may be at most {MAX_BODY_BYTES} bytes."),
            )
        })?;
    serde_json::from_slice(&bytes).map_err(|err| {
        let code = if err.is_syntax() || err.is_eof() {
            ErrorCode::BadJson
        } else {
            ErrorCode::BadFrame
        };
        ApiError::bad_request(code, format!("The body is not what the API takes: {err}."))
    })
}
