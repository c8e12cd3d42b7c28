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

/// Compares without an early exit, so the time taken does not tell how much of a guess was
/// right. Only the length can leak, which says little about a random token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
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
        || bearer(request.headers()).is_some_and(|t| constant_time_eq(t.as_bytes(), expected.as_bytes()))
        || (path == STREAM_PATH
            && query_token(request.uri().query())
                .is_some_and(|t| constant_time_eq(t.as_bytes(), expected.as_bytes())));
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
