//! Bearer-token authentication (`docs/design.md`, "Security").
//!
//! With a token configured, every route needs `Authorization: Bearer <token>` except
//! `/healthz` (so supervisors can probe liveness) and the static dashboard (`/` and
//! `/assets/…`, which hold no event data; the page itself asks for the token). `EventSource`
//! cannot send headers, so `/events/stream` also accepts `?token=`; no other route does, to
//! keep tokens out of logged URLs where possible.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::error::ApiError;
use crate::state::AppState;

pub const STREAM_PATH: &str = "/events/stream";

fn is_public(path: &str) -> bool {
    path == "/healthz" || path == "/" || path.starts_with("/assets/")
}

/// Compares a presented token with the expected one without an early exit: the time taken
/// depends only on the expected token's length, never on how much of a guess was right or
/// on the guess's length. The header and `?token=` both go through here.
fn constant_time_eq(presented: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(presented.len() != expected.len());
    for (i, e) in expected.iter().enumerate() {
        diff |= presented.get(i).copied().unwrap_or(0) ^ e;
    }
    diff == 0
}

/// Whether `presented` is the expected token. An empty expected token never matches: the
/// binary refuses one at start, and a library user who passes one gets a locked service,
/// not an open one.
fn token_matches(presented: &str, expected: &str) -> bool {
    !expected.is_empty() && constant_time_eq(presented.as_bytes(), expected.as_bytes())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn query_token(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
}

pub async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(expected) = state.config().token.as_deref() else {
        return Ok(next.run(request).await);
    };
    let path = request.uri().path();
    let allowed = is_public(path)
        || bearer(request.headers()).is_some_and(|t| token_matches(t, expected))
        || (path == STREAM_PATH
            && query_token(request.uri().query()).is_some_and(|t| token_matches(&t, expected)));
    if !allowed {
        return Err(ApiError::Unauthorized);
    }
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn compares_tokens_exactly() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(!constant_time_eq(b"x", b""));
        assert!(!constant_time_eq(b"secretsecret", b"secret"));
    }

    /// Finding 1: an empty configured token must not let `?token=` (or `?token`) in.
    #[test]
    fn an_empty_expected_token_matches_nothing() {
        assert!(!token_matches("", ""));
        assert!(!token_matches("x", ""));
        assert!(token_matches("s3cr3t", "s3cr3t"));
    }

    #[test]
    fn reads_bearer_and_query_tokens() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer  abc "));
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
        assert_eq!(query_token(Some("after=1&token=a%2Bb")).as_deref(), Some("a+b"));
        assert_eq!(query_token(Some("after=1")), None);
    }
}
