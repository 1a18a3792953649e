//! Browser sessions and accounts.
//!
//! A session is a random 256-bit token in an HttpOnly cookie, issued by the server and stored only as its
//! SHA-256: a token the server did not issue (or one it has ended) finds no session and is replaced. The
//! session acts for a user: a guest made by the name dialog, or a member signed in with a password.
//!
//! - [`password`]: argon2id hashing on a small blocking pool;
//! - [`limits`]: sign-in attempts per name and per client address;
//! - [`http`]: the sign-in page and the account endpoints.

pub mod http;
pub mod limits;
pub mod password;
pub mod token;

use super::store::{IdentityStore, SessionRecord, StoreError};
use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::header::{COOKIE, SET_COOKIE, USER_AGENT};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use cookie::{Cookie, SameSite};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use uuid::Uuid;

pub const COOKIE_NAME: &str = "confab_session";

/// A fresh session token: 32 random bytes from the OS, base64url.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What the store keeps of a token: its SHA-256, in hex. The token has 256 random bits, so a fast hash is
/// enough (a password hash would only slow every request down).
pub fn token_hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let mut hex = String::with_capacity(64);
    for byte in digest {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

/// The session token a request carries, if it looks like one this server issues.
pub fn token_from(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == COOKIE_NAME)
        .map(|c| c.value().to_owned())
        .filter(|t| is_token_shaped(t))
}

/// Tokens are 43 base64url characters, or a uuid for sessions carried over from before accounts (found only
/// if the store has them). Anything else cannot be a session and is not looked up.
fn is_token_shaped(token: &str) -> bool {
    let issued = token.len() == 43
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    issued || (token.len() == 36 && Uuid::try_parse(token).is_ok())
}

/// The session cookie for `token`; `secure` when the page was reached over HTTPS (behind Fly's proxy).
pub fn session_cookie(token: &str, secure: bool) -> HeaderValue {
    cookie_header(token, cookie::time::Duration::days(365), secure)
}

/// A cookie that makes the browser forget its session.
pub fn cleared_cookie(secure: bool) -> HeaderValue {
    cookie_header("", cookie::time::Duration::ZERO, secure)
}

/// The session cookie with `value`, always HttpOnly, SameSite=Lax and for the whole site.
fn cookie_header(value: &str, max_age: cookie::time::Duration, secure: bool) -> HeaderValue {
    let cookie = Cookie::build((COOKIE_NAME, value.to_owned()))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(secure)
        .max_age(max_age)
        .build();
    HeaderValue::from_str(&cookie.to_string()).expect("tokens are cookie-safe")
}

/// Where client addresses come from: the peer of the TCP connection, or (behind a proxy that sets it, such
/// as Fly's `Fly-Client-IP`) a header the operator names with `CONFAB_CLIENT_IP_HEADER`.
#[derive(Debug, Clone, Default)]
pub struct ClientIpSource(pub Option<HeaderName>);

/// The identity side of the server's state: the store, the password hasher and the attempt limits.
#[derive(Clone)]
pub struct Accounts {
    pub store: Arc<dyn IdentityStore>,
    pub hasher: password::Hasher,
    pub limits: Arc<limits::SignInLimits>,
    pub client_ip: ClientIpSource,
    /// `CONFAB_ADMIN`: the member of this name (key) is an admin, also when they claim it later.
    pub admin_key: Option<String>,
    /// Tokens of an embedding app, when one is configured.
    pub tokens: Option<Arc<token::TokenVerifier>>,
}

impl Accounts {
    /// The user a signed token speaks for: checked, then made or updated in the store.
    pub async fn token_user(&self, raw: &str) -> Result<super::store::User, token::TokenError> {
        use super::store::IdentityError;
        let Some(verifier) = &self.tokens else {
            return Err(token::TokenError::Invalid(
                "this server accepts no sign-in tokens".into(),
            ));
        };
        let claims = verifier.verify(raw)?;
        let key = super::names::name_key(&claims.name);
        let user = self
            .store
            .external_user(
                &claims.sub,
                &claims.name,
                &key,
                claims.admin,
                super::hub::now_ms(),
            )
            .await
            .map_err(|err| match err {
                IdentityError::NameOwned => {
                    token::TokenError::Invalid("its name belongs to another member".into())
                }
                other => {
                    tracing::error!(error = %other, "storing a token's user failed");
                    token::TokenError::Invalid("the server could not store its user".into())
                }
            })?;
        if user.banned {
            return Err(token::TokenError::Invalid("its user is banned".into()));
        }
        Ok(user)
    }
}

/// The browser behind a request: its session (if the cookie names a live one) and where it comes from.
#[derive(Debug, Clone)]
pub struct Browser {
    pub session: Option<SessionRecord>,
    /// The store could not be asked, so whether the cookie names a session is unknown; handlers answer
    /// "unavailable" rather than treat the browser as a stranger.
    pub unknown: bool,
    /// The request came over HTTPS (as told by the proxy), so cookies set in reply are `Secure`.
    pub secure: bool,
    pub ip: IpAddr,
    pub device: String,
}

impl Browser {
    /// Issues a new session for this browser; the returned cookie must go out with the response.
    pub async fn start_session(
        &mut self,
        store: &dyn IdentityStore,
    ) -> Result<HeaderValue, StoreError> {
        let token = new_token();
        let id = Uuid::new_v4();
        store
            .create_session(id, &token_hash(&token), &self.device, super::hub::now_ms())
            .await?;
        self.session = Some(SessionRecord {
            id,
            user: None,
            via: crate::protocol::Via::Guest,
            admitted: false,
        });
        Ok(session_cookie(&token, self.secure))
    }

    /// This browser's session, issued now if it has none; with the cookie to set when it is new.
    pub async fn ensure_session(
        &mut self,
        store: &dyn IdentityStore,
    ) -> Result<(SessionRecord, Option<HeaderValue>), StoreError> {
        if self.unknown {
            return Err(StoreError::Corrupt(
                "the session store is unavailable".into(),
            ));
        }
        let cookie = match &self.session {
            Some(_) => None,
            None => Some(self.start_session(store).await?),
        };
        let session = self.session.clone().expect("just ensured");
        Ok((session, cookie))
    }
}

/// Makes an invite link's code, good for `uses` people within `hours`; the store keeps only its hash.
/// Returns the code and when it expires (ms since the epoch).
pub async fn make_invite(
    store: &dyn IdentityStore,
    by: Uuid,
    uses: u32,
    hours: u32,
) -> Result<(String, i64), StoreError> {
    let code = new_token();
    let now = super::hub::now_ms();
    let expires_at = now + i64::from(hours) * 3_600_000;
    store
        .create_invite(&token_hash(&code), by, uses, expires_at, now)
        .await?;
    Ok((code, expires_at))
}

/// The answer when the identity store cannot be read: a plain page, since nothing can be decided.
pub fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::response::Html(
            "<!DOCTYPE html><html lang=\"en\"><meta charset=\"utf-8\"><title>Confab</title>\
             <p>Confab is unavailable right now. Reload to try again.</p></html>",
        ),
    )
        .into_response()
}

impl<S> FromRequestParts<S> for Browser
where
    S: Send + Sync,
    Accounts: FromRef<S>,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let accounts = Accounts::from_ref(state);
        let headers = &parts.headers;
        let secure = headers
            .get("x-forwarded-proto")
            .is_some_and(|proto| proto.as_bytes().eq_ignore_ascii_case(b"https"));
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |ConnectInfo(addr)| {
                addr.ip()
            });
        let ip = accounts
            .client_ip
            .0
            .as_ref()
            .and_then(|name| headers.get(name))
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(',').next())
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(peer);
        let device = headers
            .get(USER_AGENT)
            .and_then(|ua| ua.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let (session, unknown) = match token_from(headers) {
            Some(token) => match accounts.store.session(&token_hash(&token)).await {
                Ok(session) => (session, false),
                Err(err) => {
                    tracing::error!(error = %err, "reading a session failed");
                    (None, true)
                }
            },
            None => (None, false),
        };
        Ok(Browser {
            session,
            unknown,
            secure,
            ip,
            device,
        })
    }
}

/// Adds `cookie` (when there is one) to `response`.
pub fn with_cookie(mut response: Response, cookie: Option<HeaderValue>) -> Response {
    if let Some(cookie) = cookie {
        response.headers_mut().append(SET_COOKIE, cookie);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tokens_of_the_issued_shape_are_read() {
        let mut headers = HeaderMap::new();
        let token = new_token();
        assert_eq!(token.len(), 43);
        headers.insert(
            COOKIE,
            HeaderValue::from_str(&format!("a=b; {COOKIE_NAME}={token}")).unwrap(),
        );
        assert_eq!(token_from(&headers), Some(token.clone()));
        headers.insert(COOKIE, HeaderValue::from_static("confab_session=<script>"));
        assert_eq!(token_from(&headers), None);
        // A uuid (what browsers carried before accounts) is read, to find a carried-over session.
        let uuid = Uuid::new_v4().to_string();
        let cookie = format!("{COOKIE_NAME}={uuid}");
        headers.insert(COOKIE, HeaderValue::from_str(&cookie).unwrap());
        assert_eq!(token_from(&headers), Some(uuid));
        headers.insert(COOKIE, HeaderValue::from_static("confab_session=x"));
        assert_eq!(token_from(&headers), None);
        assert_eq!(token_from(&HeaderMap::new()), None);
    }

    #[test]
    fn tokens_are_random_and_stored_only_hashed() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(token_hash(&a), token_hash(&a));
        assert_ne!(token_hash(&a), token_hash(&b));
        assert_eq!(token_hash(&a).len(), 64);
        assert!(!token_hash(&a).contains(&a));
    }
}
