//! The router: one table of routes, small handlers, JSON errors for everything else.

mod events;
mod meta;
mod stats;
mod stream;

use axum::Router;
use axum::handler::Handler;
use axum::middleware;
use axum::routing::{MethodRouter, get};
use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::{DefaultPredicate, NotForContentType, Predicate};
use tower_http::trace::TraceLayer;

use crate::auth;
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

/// The routes the service serves, as `(method, path)` with paths in OpenAPI's `{param}` form.
pub fn routes() -> Vec<(&'static str, &'static str)> {
    table().into_iter().map(|e| (e.method, e.path)).collect()
}

/// The whole HTTP service.
pub fn router(state: AppState) -> Router {
    let router = table()
        .into_iter()
        .fold(Router::new(), |router, e| router.route(e.path, e.handler));
    // SSE must never pass through the compressor: it buffers, and the stream would stall
    // (tower-http#420). The default predicate already skips it; saying so keeps it that way.
    let compress = DefaultPredicate::new().and(NotForContentType::SSE);
    router
        .fallback(meta::not_found)
        .method_not_allowed_fallback(meta::method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), auth::require_token))
        .layer(CompressionLayer::new().compress_when(compress))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
