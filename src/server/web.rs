//! HTTP hardening: security headers with a per-response CSP nonce, the WebSocket Origin check, and
//! long-lived caching for the content-hashed bundle.

use axum::extract::Request;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HOST, ORIGIN};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use uuid::Uuid;

/// The CSP nonce of this response; the page's hydration scripts carry it.
#[derive(Debug, Clone)]
pub struct CspNonce(pub String);

/// The policy: only this site's scripts (by nonce, plus the WASM they instantiate), styles, images and
/// its own WebSocket; no framing, no plugins, forms only to itself.
pub fn content_security_policy(nonce: &str) -> String {
    format!(
        "default-src 'self'; script-src 'self' 'nonce-{nonce}' 'wasm-unsafe-eval'; \
         style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
         object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
}

/// Middleware: security headers on every response, and caching rules: HTML is never cached, the hashed
/// bundle under `/pkg/` is cached for a year.
pub async fn security_headers(mut request: Request, next: Next) -> Response {
    // 128 random bits, as CSP asks of a nonce.
    let nonce = Uuid::new_v4().simple().to_string();
    request.extensions_mut().insert(CspNonce(nonce.clone()));
    let immutable = request.uri().path().starts_with("/pkg/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    if let Ok(csp) = HeaderValue::from_str(&content_security_policy(&nonce)) {
        headers.insert(CONTENT_SECURITY_POLICY, csp);
    }
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        "referrer-policy",
        HeaderValue::from_static("strict-origin-when-cross-origin"),
    );
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    let is_html = headers
        .get(CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"text/html"));
    if immutable && response.status().is_success() {
        response.headers_mut().insert(
            CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=31536000, immutable"),
        );
    } else if is_html && !response.headers().contains_key(CACHE_CONTROL) {
        // Pages that said otherwise (no-store, for a page with a token on it) keep their word.
        response
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    response
}

/// Whether a WebSocket upgrade comes from a page of this site. Browsers always send `Origin` on
/// WebSocket requests, so a foreign one is a cross-site hijacking attempt; requests without one are not
/// from a browser (bots, load tools) and carry no ambient cookies of a victim.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(ORIGIN).and_then(|o| o.to_str().ok()) else {
        return true;
    };
    let Some(host) = headers.get(HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let origin_host = origin
        .split_once("://")
        .map_or(origin, |(_, rest)| rest)
        .trim_end_matches('/');
    origin_host.eq_ignore_ascii_case(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&'static str>, host: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(HOST, HeaderValue::from_static(host));
        if let Some(origin) = origin {
            headers.insert(ORIGIN, HeaderValue::from_static(origin));
        }
        headers
    }

    #[test]
    fn origins_must_match_the_host() {
        assert!(same_origin(&headers(
            Some("https://confab.fly.dev"),
            "confab.fly.dev"
        )));
        assert!(same_origin(&headers(
            Some("http://127.0.0.1:3000"),
            "127.0.0.1:3000"
        )));
        assert!(!same_origin(&headers(
            Some("https://evil.example"),
            "confab.fly.dev"
        )));
        assert!(!same_origin(&headers(
            Some("http://127.0.0.1:3001"),
            "127.0.0.1:3000"
        )));
        assert!(!same_origin(&headers(Some("null"), "confab.fly.dev")));
        assert!(same_origin(&headers(None, "confab.fly.dev")));
    }

    #[test]
    fn the_policy_names_the_nonce_and_forbids_framing() {
        let csp = content_security_policy("abc");
        assert!(csp.contains("script-src 'self' 'nonce-abc' 'wasm-unsafe-eval'"));
        assert!(csp.contains("frame-ancestors 'none'"));
        assert!(!csp.contains("unsafe-eval'") || csp.contains("wasm-unsafe-eval"));
    }
}
