//! Server-sent-event frames as bytes, rendered once and shared.
//!
//! A live event's frame (`id: N\nevent: KIND\ndata: JSON\n\n`) is rendered once, when the
//! ingest task publishes it, into a [`Bytes`] that every stream (filtered or not) writes as it
//! is: a thousand clients cost a thousand reference-count increments, not a thousand id
//! formats, copies and newline scans of the JSON. Replayed events and gaps are rendered by the
//! stream that sends them. The bytes are exactly what axum's `Sse` writes for the same event,
//! so clients see no difference.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

use crate::state::GapReason;
use crate::store::StoredEvent;

/// What the live broadcast carries: the stored event (filters look at it) and its frame.
#[derive(Debug, Clone)]
pub struct Live {
    pub event: Arc<StoredEvent>,
    pub frame: Bytes,
}

impl Live {
    pub fn new(event: Arc<StoredEvent>) -> Self {
        let frame = event_frame(&event);
        Live { event, frame }
    }
}

/// The keep-alive comment a quiet stream writes (axum's `KeepAlive::text("keep-alive")`).
pub const KEEP_ALIVE: Bytes = Bytes::from_static(b": keep-alive\n\n");

/// `id: N\nevent: KIND\ndata: JSON\n\n`.
pub fn event_frame(event: &StoredEvent) -> Bytes {
    let mut out = BytesMut::new();
    put_event(&mut out, event);
    out.freeze()
}

/// Appends an event's frame to `out`, e.g. a write that carries several frames.
pub fn put_event(out: &mut BytesMut, event: &StoredEvent) {
    put_data_frame(out, event.id, event.kind.name(), event.json.get().as_bytes());
}

/// A `gap` event: how many ids were missed and why. Its id is the last id the gap covers, so
/// a reconnect resumes after the hole instead of reporting it again.
#[cfg(test)]
fn gap_frame(missed: u64, reason: GapReason, last_id: u64) -> Bytes {
    let mut out = BytesMut::new();
    put_gap(&mut out, missed, reason, last_id);
    out.freeze()
}

/// Appends a `gap` event's frame to `out`.
pub fn put_gap(out: &mut BytesMut, missed: u64, reason: GapReason, last_id: u64) {
    let data = format!(r#"{{"missed":{missed},"reason":"{}"}}"#, reason.name());
    put_data_frame(out, last_id, "gap", data.as_bytes());
}

/// The `retry:` field that opens every stream, in milliseconds as axum writes it.
pub fn retry_frame(retry: Duration) -> Bytes {
    Bytes::from(format!("retry: {}\n\n", retry.as_millis()))
}

#[cfg(test)]
fn data_frame(id: u64, name: &str, data: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    put_data_frame(&mut out, id, name, data);
    out.freeze()
}

fn put_data_frame(out: &mut BytesMut, id: u64, name: &str, data: &[u8]) {
    let mut id_buf = itoa::Buffer::new();
    let id_text = id_buf.format(id).as_bytes();
    out.reserve(4 + id_text.len() + 8 + name.len() + 7 + data.len() + 2);
    out.put_slice(b"id: ");
    out.put_slice(id_text);
    out.put_slice(b"\nevent: ");
    out.put_slice(name.as_bytes());
    out.put_slice(b"\ndata: ");
    // Compact JSON has no raw line breaks (they are escaped inside strings), but a line break
    // in `data` would end the field, so one is continued on a new `data:` line, as the SSE
    // format (and axum) does.
    let mut rest = data;
    while let Some(at) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
        out.put_slice(&rest[..=at]);
        out.put_slice(b"data: ");
        rest = &rest[at + 1..];
    }
    out.put_slice(rest);
    out.put_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::sse::Event;
    use axum::response::{IntoResponse, Sse};
    use futures_util::stream;
    use http_body_util::BodyExt;
    use std::convert::Infallible;

    /// What axum's `Sse` writes for `event`, for comparison.
    async fn axum_bytes(event: Event) -> Bytes {
        let body = Sse::new(stream::iter([Ok::<_, Infallible>(event)]))
            .into_response()
            .into_body();
        body.collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn frames_are_byte_for_byte_what_axum_writes() {
        let json = r#"{"id":18446744073709551615,"kind":"process.exec"}"#;
        assert_eq!(
            data_frame(u64::MAX, "process.exec", json.as_bytes()),
            axum_bytes(
                Event::default()
                    .id(u64::MAX.to_string())
                    .event("process.exec")
                    .data(json)
            )
            .await
        );
        assert_eq!(
            data_frame(0, "x", b"a\nb\rc"),
            axum_bytes(Event::default().id("0").event("x").data("a\nb\rc")).await
        );
        assert_eq!(
            gap_frame(7, GapReason::Lagged, 42),
            axum_bytes(Event::default().id("42").event("gap").data(format!(
                r#"{{"missed":7,"reason":"{}"}}"#,
                GapReason::Lagged.name()
            )))
            .await
        );
        for retry in [
            Duration::from_millis(2),
            Duration::from_millis(2500),
            Duration::from_secs(2),
        ] {
            assert_eq!(
                retry_frame(retry),
                axum_bytes(Event::default().retry(retry)).await
            );
        }
        assert_eq!(
            KEEP_ALIVE,
            axum_bytes(Event::default().comment("keep-alive")).await
        );
    }
}
