//! The router: one table of routes, small handlers, JSON errors for everything else.

mod events;
mod meta;
mod stats;
mod stream;

use axum::Router;
use axum::extract::Path;
use axum::extract::rejection::PathRejection;
use axum::handler::Handler;
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware;
use axum::routing::{MethodRouter, get};
use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::{DefaultPredicate, NotForContentType, Predicate};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use crate::auth;
use crate::error::ApiError;
use crate::guard;
use crate::state::AppState;

struct Entry {
    method: &'static str,
    path: &'static str,
    handler: MethodRouter<AppState>,
}

/// The only way to make an [`Entry`], so its method and its handler cannot disagree.
fn get_route<H, T>(path: &'static str, handler: H) -> Entry
where
    H: Handler<T, AppState>,
    T: 'static,
{
    Entry {
        method: "GET",
        path,
        handler: get(handler),
    }
}

/// Every route the service serves. The router is built from this table, and a test checks
/// that `openapi.yaml` documents exactly these.
fn table() -> Vec<Entry> {
    vec![
        get_route("/", meta::index),
        get_route("/assets/{file}", meta::asset),
        get_route("/events", events::list),
        get_route("/events/{id}", events::one),
        get_route(auth::STREAM_PATH, stream::stream),
        get_route("/stats", stats::stats),
        get_route("/metrics", stats::metrics),
        get_route("/healthz", meta::healthz),
        get_route("/openapi.yaml", meta::openapi),
    ]
}

/// A path segment, or the JSON 400 that says why it is not one (e.g. `%FF`, not UTF-8);
/// axum's own rejection would answer in plain text.
fn path_param(param: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    param
        .map(|p| p.0)
        .map_err(|rejection| ApiError::bad_request(rejection.body_text()))
}

/// The routes the service serves, as `(method, path)` with paths in OpenAPI's `{param}` form.
pub fn routes() -> Vec<(&'static str, &'static str)> {
    table().into_iter().map(|e| (e.method, e.path)).collect()
}

/// Headers every response carries. The dashboard is same-origin ES modules and a stylesheet
/// with no inline script or style, so the policy allows `self` and nothing else; framing is
/// refused, which also stops clickjacking of the token dialog.
const SECURITY_HEADERS: [(HeaderName, &str); 4] = [
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::REFERRER_POLICY, "no-referrer"),
];

/// The whole HTTP service.
pub fn router(state: AppState) -> Router {
    let router = table()
        .into_iter()
        .fold(Router::new(), |router, e| router.route(e.path, e.handler));
    // SSE must never pass through the compressor: it buffers, and the stream would stall
    // (tower-http#420). The default predicate already skips it; saying so keeps it that way.
    let compress = DefaultPredicate::new().and(NotForContentType::SSE);
    let router = router
        .fallback(meta::not_found)
        .method_not_allowed_fallback(meta::method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), auth::require_token))
        // Size, Host and Origin are checked before the token, so a rebinding page learns
        // nothing, not even whether a token is needed.
        .layer(middleware::from_fn_with_state(state.clone(), guard::check))
        .layer(CompressionLayer::new().compress_when(compress));
    SECURITY_HEADERS
        .into_iter()
        .fold(router, |router, (name, value)| {
            router.layer(SetResponseHeaderLayer::overriding(
                name,
                HeaderValue::from_static(value),
            ))
        })
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
