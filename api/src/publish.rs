//! Publishing stored events to live SSE streams, coalesced so that many streams wake and write
//! once per group of events rather than once per event.
//!
//! Every live event still goes through the broadcast one by one (so a lagging stream is told
//! exactly how many events it missed), but events are sent in *bursts*: the first send of a
//! burst wakes every waiting stream, and by the time a woken stream runs, the rest of the burst
//! is already in the channel, so it takes all of it and writes it in one go. A stream is then
//! woken once per burst, not once per event.
//!
//! When a burst is sent:
//!
//! - **Always at least the ingest batch**: a burst is sent by a task spawned on the ingest
//!   runtime, which runs only once the ingest task has handled everything that arrived with the
//!   event. This costs no waiting.
//! - **A coalescing window when many streams are open**: the cost of a burst grows with the
//!   streams it wakes (a wake-up and a write each, about a microsecond or two), so the window is
//!   [`ApiConfig::sse_coalesce_per_stream`] (5 µs) per open stream, at most
//!   [`ApiConfig::sse_coalesce`] (10 ms). With a thousand streams that is 5 ms: the fan-out's
//!   fixed cost stays at roughly a third of a core whatever the number of streams, and an
//!   event waits at most the window. Windows shorter than [`MIN_WINDOW`] (the timer's
//!   resolution) are not used, so a few streams get every event without delay.
//!
//! The store has every event before it is published, so a stream that subscribes while events
//! wait here finds them in the store (and skips them when they arrive). If the runtime that
//! holds a waiting burst shuts down, the burst is sent as its task is dropped.
//!
//! [`ApiConfig::sse_coalesce`]: crate::ApiConfig::sse_coalesce
//! [`ApiConfig::sse_coalesce_per_stream`]: crate::ApiConfig::sse_coalesce_per_stream

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::broadcast;

use crate::frame::Live;
use crate::store::StoredEvent;

/// A burst is sent as soon as this many events wait, window or not: it bounds the waiting
/// list under a flood, and keeps a burst well inside the broadcast's capacity so that a burst
/// alone never makes a stream lag.
const MAX_BURST: usize = 256;
/// Shorter windows are not used: tokio's timer counts whole milliseconds, so a shorter sleep
/// would wait up to a millisecond anyway.
const MIN_WINDOW: Duration = Duration::from_millis(1);

/// The live broadcast's sending side, with the events waiting for their burst.
pub(crate) struct Publisher {
    live: broadcast::Sender<Live>,
    max_window: Duration,
    per_stream: Duration,
    /// [`MAX_BURST`], or a quarter of a small broadcast's capacity.
    max_burst: usize,
    /// Events stored but not yet sent, oldest first; a burst task is under way while non-empty.
    waiting: Mutex<Vec<Arc<StoredEvent>>>,
    /// Held while a burst is sent, so bursts leave in order even on a multi-threaded runtime.
    sending: Mutex<()>,
}

impl Publisher {
    pub(crate) fn new(capacity: usize, max_window: Duration, per_stream: Duration) -> Arc<Self> {
        let (live, _) = broadcast::channel(capacity.max(1));
        Arc::new(Publisher {
            live,
            max_window,
            per_stream,
            max_burst: MAX_BURST.min(capacity / 4).max(1),
            waiting: Mutex::new(Vec::new()),
            sending: Mutex::new(()),
        })
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Live> {
        self.live.subscribe()
    }

    /// The coalescing window for the streams open now (zero: only the ingest batch).
    fn window(&self) -> Duration {
        let streams = u32::try_from(self.live.receiver_count()).unwrap_or(u32::MAX);
        let window = self.per_stream.saturating_mul(streams).min(self.max_window);
        if window < MIN_WINDOW {
            Duration::ZERO
        } else {
            window
        }
    }

    /// Publishes a stored event: queued for the next burst, which is sent once the current
    /// ingest batch is handled (or the window has passed). Outside a tokio runtime it is sent
    /// at once. With no stream listening nothing is kept (the store has the event).
    pub(crate) fn publish(self: &Arc<Self>, event: Arc<StoredEvent>) {
        if self.live.receiver_count() == 0 {
            return;
        }
        let runtime = Handle::try_current();
        let waiting = {
            let mut waiting = lock(&self.waiting);
            waiting.push(event);
            waiting.len()
        };
        let Ok(runtime) = runtime else {
            // No task can send it later: at once, behind anything still waiting.
            self.send_waiting();
            return;
        };
        if waiting >= self.max_burst {
            // The task spawned for this burst finds nothing left and sends nothing.
            self.send_waiting();
        } else if waiting == 1 {
            let burst = Burst(self.clone());
            let window = self.window();
            runtime.spawn(async move {
                if window.is_zero() {
                    // Runs after the ingest task yields, i.e. once its batch is handled.
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(window).await;
                }
                drop(burst);
            });
        }
    }

    /// Sends everything waiting, in order.
    fn send_waiting(&self) {
        let _sending = lock(&self.sending);
        let burst = std::mem::take(&mut *lock(&self.waiting));
        if self.live.receiver_count() == 0 {
            return;
        }
        for event in burst {
            self.send(event);
        }
    }

    fn send(&self, event: Arc<StoredEvent>) {
        // An error means no stream listens any more: the store has the event.
        let _ = self.live.send(Live::new(event));
    }
}

/// Sends the waiting burst when dropped: when its window ends, or when its runtime shuts down
/// first, so no published event is held back for good.
struct Burst(Arc<Publisher>);

impl Drop for Burst {
    fn drop(&mut self) {
        self.0.send_waiting();
    }
}

// A panic while a lock was held leaves a plain Vec or unit behind, usable as it is.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
