//! `GET /stats` (JSON) and `GET /metrics` (Prometheus text): two views of one report.

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, json_response};
use crate::metrics;
use crate::report::Report;
use crate::state::AppState;

pub async fn stats(State(state): State<AppState>) -> Result<Response, ApiError> {
    json_response(&Report::collect(&state))
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        metrics::render(&Report::collect(&state)),
    )
        .into_response()
}
