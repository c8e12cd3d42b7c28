//! `GET /events/stream`: server-sent events, replayed from the store and then live.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt, stream};

use crate::error::ApiError;
use crate::follow::{Follower, Item};
use crate::query::{ApiQuery, QueryParams, StreamQuery, parse_decimal};
use crate::state::AppState;

/// `Last-Event-ID` (sent by a reconnecting `EventSource`) wins over `?after=`, because the
/// browser reconnects to the same URL, whose `after` is where the stream *first* started.
fn resume_after(headers: &HeaderMap, query_after: Option<u64>) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(query_after);
    };
    // Not UTF-8, or empty, is as wrong as `garbage`: all are a 400, never silently ignored.
    // (A browser sends the header only when it has an id to resume from.)
    let text = value.to_str().map(str::trim).map_err(|_| {
        ApiError::bad_request(format!(
            "Last-Event-ID must be an event id, not the bytes {value:?}"
        ))
    })?;
    parse_decimal(text)
        .map(Some)
        .ok_or_else(|| ApiError::bad_request(format!("Last-Event-ID must be an event id, not {text:?}")))
}

fn sse_event(item: Item) -> Event {
    match item {
        Item::Event(event) => Event::default()
            .id(event.id.to_string())
            .event(event.kind.name())
            .data(event.json.get()),
        Item::Gap {
            missed,
            reason,
            last_id,
        } => Event::default()
            .id(last_id.to_string())
            .event("gap")
            .data(format!(r#"{{"missed":{missed},"reason":"{}"}}"#, reason.name())),
    }
}

fn events(follower: Follower) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(follower, |mut follower| async move {
        let item = follower.next().await?;
        Some((Ok(sse_event(item)), follower))
    })
}

pub async fn stream(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<QueryParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let query = StreamQuery::try_from(params)?;
    let after = resume_after(&headers, query.after)?;
    let config = state.config();
    let retry = Event::default().retry(config.sse_retry);
    let keep_alive = KeepAlive::new().interval(config.keepalive).text("keep-alive");
    let follower = Follower::new(state.clone(), query.filter, after);
    // Shutdown is watched once per stream, not per event: whether closing was set or its
    // sender is gone, the service is going away.
    let mut closing = state.closing();
    let closed = async move {
        let _ = closing.wait_for(|closing| *closing).await;
    };
    let body = stream::once(async move { Ok(retry) }).chain(events(follower).take_until(closed));
    Ok((
        [
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            ),
        ],
        Sse::new(body).keep_alive(keep_alive),
    )
        .into_response())
}
