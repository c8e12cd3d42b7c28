//! `GET /events/stream`: server-sent events, replayed from the store and then live.

use std::convert::Infallible;
use std::pin::Pin;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{Stream, StreamExt, stream};
use tokio::time::{Instant, Sleep};

use crate::error::ApiError;
use crate::follow::{Follower, Item};
use crate::frame;
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

fn frame(item: Item) -> Bytes {
    match item {
        Item::Live(frame) => frame,
        Item::Event(event) => frame::event_frame(&event),
        Item::Gap {
            missed,
            reason,
            last_id,
        } => frame::gap_frame(missed, reason, last_id),
    }
}

/// One stream's frames: the follower's events and gaps, and a keep-alive comment when a whole
/// `keepalive` period passed without a frame.
///
/// The timer is not touched per frame (no clock read, no re-arming for every event of every
/// stream): each tick asks whether anything was written since the previous one. So a quiet
/// stream writes a keep-alive between one and two periods after its last frame; the binary's
/// period is at most a third of the idle timeout, so the connection never looks idle.
struct Frames {
    follower: Follower,
    keepalive: Duration,
    tick: Pin<Box<Sleep>>,
    wrote_since_tick: bool,
}

impl Frames {
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            tokio::select! {
                biased;
                item = self.follower.next() => {
                    self.wrote_since_tick = true;
                    return item.map(frame);
                }
                () = self.tick.as_mut() => {
                    self.tick.as_mut().reset(Instant::now() + self.keepalive);
                    if std::mem::take(&mut self.wrote_since_tick) {
                        continue;
                    }
                    return Some(frame::KEEP_ALIVE);
                }
            }
        }
    }
}

fn frames(follower: Follower, keepalive: Duration) -> impl Stream<Item = Result<Bytes, Infallible>> {
    let frames = Frames {
        follower,
        keepalive,
        tick: Box::pin(tokio::time::sleep(keepalive)),
        wrote_since_tick: false,
    };
    stream::unfold(frames, |mut frames| async move {
        let bytes = frames.next().await?;
        Some((Ok(bytes), frames))
    })
}

/// The stream is written as a raw body of ready-made frames rather than through axum's `Sse`,
/// which would copy and re-scan every event for every client. The bytes are the same.
pub async fn stream(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<QueryParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let query = StreamQuery::try_from(params)?;
    let after = resume_after(&headers, query.after)?;
    let config = state.config();
    let retry = frame::retry_frame(config.sse_retry);
    let follower = Follower::new(state.clone(), query.filter, after);
    // Shutdown is watched once per stream, not per event: whether closing was set or its
    // sender is gone, the service is going away.
    let mut closing = state.closing();
    let closed = async move {
        let _ = closing.wait_for(|closing| *closing).await;
    };
    let body =
        stream::once(async move { Ok(retry) }).chain(frames(follower, config.keepalive).take_until(closed));
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            ),
        ],
        Body::from_stream(body),
    )
        .into_response())
}
