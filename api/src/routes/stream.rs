//! `GET /events/stream`: server-sent events, replayed from the store and then live.

use std::convert::Infallible;
use std::pin::Pin;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt, stream};
use tokio::time::{Instant, Sleep};

use crate::error::ApiError;
use crate::follow::{Follower, Item, Next};
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

/// Most bytes one write carries when several frames are ready; more wait for the next write,
/// so one stream's turn on the runtime stays short.
const MAX_WRITE: usize = 64 * 1024;

/// Appends an item's frame to a write of several.
fn put(out: &mut BytesMut, item: Item) {
    match item {
        Item::Live(frame) => out.extend_from_slice(&frame),
        Item::Event(event) => frame::put_event(out, &event),
        Item::Gap {
            missed,
            reason,
            last_id,
        } => frame::put_gap(out, missed, reason, last_id),
    }
}

/// One stream's frames: the follower's events and gaps, and a keep-alive comment when a whole
/// `keepalive` period passed without a frame.
///
/// Each write carries every frame ready when it is made (up to [`MAX_WRITE`]): live events are
/// published in bursts (see `crate::publish`), and a stream that catches up from the store
/// has many ready at once, so one wake-up and one write serve many events. A single live frame
/// is written as the shared bytes it is, without a copy.
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
        let first = loop {
            tokio::select! {
                biased;
                item = self.follower.next() => break item?,
                () = self.tick.as_mut() => {
                    self.tick.as_mut().reset(Instant::now() + self.keepalive);
                    if std::mem::take(&mut self.wrote_since_tick) {
                        continue;
                    }
                    return Some(frame::KEEP_ALIVE);
                }
            }
        };
        self.wrote_since_tick = true;
        if let Item::Live(frames) = &first {
            // A run of replayed frames is large enough to go out as it is, without a copy.
            if frames.len() >= MAX_WRITE / 4 {
                return Some(frames.clone());
            }
        }
        let Next::Item(second) = self.follower.try_next() else {
            // A closed broadcast is seen again by the next call, which ends the stream.
            return Some(match first {
                Item::Live(frame) => frame,
                other => {
                    let mut out = BytesMut::new();
                    put(&mut out, other);
                    out.freeze()
                }
            });
        };
        let mut out = BytesMut::with_capacity(8 * 1024);
        put(&mut out, first);
        put(&mut out, second);
        while out.len() < MAX_WRITE {
            match self.follower.try_next() {
                Next::Item(item) => put(&mut out, item),
                Next::Empty | Next::Closed => break,
            }
        }
        // Bounded work per turn: a stream with much to catch up on yields to other tasks (and
        // to `/healthz`) once its cooperative budget is spent.
        tokio::task::consume_budget().await;
        Some(out.freeze())
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
