//! The browser session: a random token in an HttpOnly cookie, issued on the first request that lacks one.
//! The store maps it to the name the browser joined under, so a reload or a second tab keeps the name.

use axum::extract::Request;
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use cookie::{Cookie, SameSite};
use uuid::Uuid;

pub const COOKIE_NAME: &str = "confab_session";

/// The request's session token, put in the request's extensions by [`session_cookie`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionToken(pub String);

fn token_from(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == COOKIE_NAME)
        // Only tokens this server could have issued: anything else is replaced.
        .and_then(|c| Uuid::try_parse(c.value()).ok())
        .map(|uuid| uuid.to_string())
}

/// Middleware: finds the session token, or issues one and sets the cookie on the response.
pub async fn session_cookie(mut request: Request, next: Next) -> Response {
    let existing = token_from(request.headers());
    let secure = request
        .headers()
        .get("x-forwarded-proto")
        .is_some_and(|proto| proto.as_bytes().eq_ignore_ascii_case(b"https"));
    let token = existing
        .clone()
        .unwrap_or_else(|| Uuid::new_v4().to_string());
    request.extensions_mut().insert(SessionToken(token.clone()));
    let mut response = next.run(request).await;
    if existing.is_none() {
        let cookie = Cookie::build((COOKIE_NAME, token))
            .path("/")
            .http_only(true)
            .same_site(SameSite::Lax)
            .secure(secure)
            .max_age(cookie::time::Duration::days(365))
            .build();
        if let Ok(value) = HeaderValue::from_str(&cookie.to_string()) {
            response.headers_mut().append(SET_COOKIE, value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_tokens_are_accepted() {
        let mut headers = HeaderMap::new();
        let token = Uuid::new_v4().to_string();
        headers.insert(
            COOKIE,
            HeaderValue::from_str(&format!("a=b; {COOKIE_NAME}={token}")).unwrap(),
        );
        assert_eq!(token_from(&headers), Some(token));
        headers.insert(COOKIE, HeaderValue::from_static("confab_session=<script>"));
        assert_eq!(token_from(&headers), None);
        assert_eq!(token_from(&HeaderMap::new()), None);
    }
}
