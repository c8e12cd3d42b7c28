//! Server-sent-event frames as bytes, rendered once and shared.
//!
//! A live event's frame (`id: N\nevent: KIND\ndata: JSON\n\n`) is rendered once, when the
//! ingest task publishes it, into a [`Bytes`] that every stream (filtered or not) writes as it
//! is: a thousand clients cost a thousand reference-count increments, not a thousand id
//! formats, copies and newline scans of the JSON. Replayed events and gaps are rendered by the
//! stream that sends them. The bytes are exactly what axum's `Sse` writes for the same event,
//! so clients see no difference.
//!
//! Streams that fell behind the broadcast catch up from the store; their frames come from a
//! [`ReplayCache`] of blocks rendered once for every stream replaying the same ids, so a
//! thousand lagging clients do not render the same events a thousand times.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
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

/// Ids per replay block: blocks start at ids `1 + k * REPLAY_BLOCK`, so every stream that
/// replays an id asks for the same block.
pub const REPLAY_BLOCK: u64 = 256;
/// Most bytes of rendered frames the replay cache keeps; the oldest blocks go first.
pub const REPLAY_CACHE_BYTES: usize = 8 << 20;

/// The frames of [`REPLAY_BLOCK`] consecutive events, rendered once, one after another.
#[derive(Debug)]
pub struct Block {
    first_id: u64,
    frames: Bytes,
    /// Where each event's frame ends in `frames`.
    ends: Vec<usize>,
}

impl Block {
    fn render<'a>(first_id: u64, events: impl Iterator<Item = &'a Arc<StoredEvent>>) -> Self {
        let mut out = BytesMut::new();
        let mut ends = Vec::with_capacity(REPLAY_BLOCK as usize);
        for event in events {
            put_event(&mut out, event);
            ends.push(out.len());
        }
        Block {
            first_id,
            frames: out.freeze(),
            ends,
        }
    }

    /// The block's last id.
    #[cfg(test)]
    fn last_id(&self) -> u64 {
        self.first_id + self.ends.len() as u64 - 1
    }

    /// The frames of ids `first..=last` (both in this block), as one shared slice.
    pub fn frames(&self, first: u64, last: u64) -> Bytes {
        let (a, b) = ((first - self.first_id) as usize, (last - self.first_id) as usize);
        let start = if a == 0 { 0 } else { self.ends[a - 1] };
        self.frames.slice(start..self.ends[b])
    }
}

/// Replay blocks rendered from the in-memory store, shared by every catching-up stream. A
/// block is asked for only once all its ids are in the store, and never changes after; the
/// cache holds at most [`REPLAY_CACHE_BYTES`] and forgets the oldest blocks first (a stream
/// that far behind renders what it reads itself).
#[derive(Debug, Default)]
pub struct ReplayCache {
    blocks: Mutex<Cached>,
}

#[derive(Debug, Default)]
struct Cached {
    by_index: BTreeMap<u64, Arc<Block>>,
    bytes: usize,
}

impl ReplayCache {
    /// Block number `index` (ids `1 + index * REPLAY_BLOCK` on), rendered from `events` (all
    /// of its events, in order) unless a stream asked for it before. Called without the
    /// store's lock: rendering never holds up ingest.
    pub fn block(&self, index: u64, events: &[Arc<StoredEvent>]) -> Arc<Block> {
        if let Some(block) = self.lock().by_index.get(&index) {
            return block.clone();
        }
        // Rendered outside the cache's lock: two streams may both render a new block, and
        // the first one stored is kept.
        let block = Arc::new(Block::render(index * REPLAY_BLOCK + 1, events.iter()));
        let mut cached = self.lock();
        if let Some(block) = cached.by_index.get(&index) {
            return block.clone();
        }
        cached.bytes += block.frames.len();
        cached.by_index.insert(index, block.clone());
        while cached.bytes > REPLAY_CACHE_BYTES && cached.by_index.len() > 1 {
            if let Some((_, old)) = cached.by_index.pop_first() {
                cached.bytes -= old.frames.len();
            }
        }
        block
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cached> {
        // A panic while the lock was held leaves a map and a count that are still usable.
        self.blocks.lock().unwrap_or_else(PoisonError::into_inner)
    }
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

    fn stored(id: u64) -> Arc<StoredEvent> {
        Arc::new(StoredEvent {
            id,
            kind: crate::kind::Kind::Loss,
            pid: None,
            producer: Some(crate::store::tests::producer()),
            host: None,
            search: "".into(),
            json: serde_json::value::RawValue::from_string(format!(r#"{{"id":{id}}}"#))
                .unwrap()
                .into(),
        })
    }

    #[test]
    fn replay_blocks_are_rendered_once_shared_and_sliced_per_event() {
        let events: Vec<_> = (1..=2 * REPLAY_BLOCK).map(stored).collect();
        let cache = ReplayCache::default();
        let first = &events[..REPLAY_BLOCK as usize];
        let block = cache.block(0, first);
        assert!(Arc::ptr_eq(&block, &cache.block(0, first)));
        assert_eq!(block.last_id(), REPLAY_BLOCK);
        let expected: Vec<u8> = (3..=5).flat_map(|id| event_frame(&stored(id)).to_vec()).collect();
        assert_eq!(block.frames(3, 5), expected);
        assert_eq!(block.frames(1, 1), event_frame(&stored(1)));
        assert_eq!(
            block.frames(REPLAY_BLOCK, REPLAY_BLOCK),
            event_frame(&stored(REPLAY_BLOCK))
        );
        let second = cache.block(1, &events[REPLAY_BLOCK as usize..]);
        assert_eq!(
            (
                second.last_id(),
                second.frames(REPLAY_BLOCK + 1, REPLAY_BLOCK + 1)
            ),
            (2 * REPLAY_BLOCK, event_frame(&stored(REPLAY_BLOCK + 1)))
        );
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
