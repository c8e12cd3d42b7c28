//! `GET /events` and `GET /events/{id}`: keyset pages and single events from the store.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::json;
use crate::page::{Page, page};
use crate::query::{ApiQuery, EventsQuery, QueryParams, parse_decimal};
use crate::state::AppState;

const NDJSON: &str = "application/x-ndjson";

fn wants_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|media| {
            media
                .split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case(NDJSON))
        })
}

/// One event per line; the page's metadata travels in headers.
fn ndjson_response(page: &Page) -> Response {
    let mut body = String::with_capacity(page.events.iter().map(|e| e.json.get().len() + 1).sum());
    for event in &page.events {
        body.push_str(event.json.get());
        body.push('\n');
    }
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    for (name, id) in [
        ("x-next-after", page.next_after),
        ("x-oldest-id", page.oldest_id),
        ("x-newest-id", page.newest_id),
    ] {
        if let Some(id) = id {
            headers.insert(HeaderName::from_static(name), HeaderValue::from(id));
        }
    }
    (headers, body).into_response()
}

pub async fn list(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<QueryParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let query = EventsQuery::try_from(params)?;
    let page = page(&state, &query);
    if wants_ndjson(&headers) {
        return Ok(ndjson_response(&page));
    }
    let body =
        json::page(&page).map_err(|e| ApiError::Internal(format!("the page could not be encoded: {e}")))?;
    Ok((
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body,
    )
        .into_response())
}

pub async fn one(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = super::path_param(id)?;
    let id: u64 = parse_decimal(&id).ok_or_else(|| {
        ApiError::bad_request(format!(
            "an event id is a decimal integer up to 2^64-1, not {id:?}"
        ))
    })?;
    let in_tail = state.store().get(id).cloned();
    let found = in_tail.or_else(|| {
        state
            .database()
            .and_then(|db| crate::durable::get(db, state.config().host_name.as_ref(), id))
    });
    let Some(event) = found else {
        let held = match (state.oldest_id(), state.newest_id()) {
            (Some(oldest), Some(newest)) => format!("the store holds ids {oldest} to {newest}"),
            _ => "the store is empty".to_owned(),
        };
        return Err(ApiError::NotFound(format!("no event with id {id}: {held}")));
    };
    let json = event.json.get().to_owned();
    Ok((
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        json,
    )
        .into_response())
}
