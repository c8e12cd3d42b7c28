//! `GET /stats` (JSON) and `GET /metrics` (OpenMetrics text): two views of one report.

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

pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let text = metrics::render(Report::collect(&state))
        .map_err(|_| ApiError::Internal("the metrics could not be encoded".to_owned()))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(metrics::CONTENT_TYPE),
        )],
        text,
    )
        .into_response())
}
