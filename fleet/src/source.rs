//! What the publisher reads: stored events after an id, in order, and the oldest id still held.
//!
//! The in-memory store implements it today; a durable store implements the same two calls, and
//! the publisher then resumes from it after an outage however long, as long as it still holds
//! the events.

use std::sync::Arc;

use lpcmon_api::{AppState, StoredEvent};

pub trait EventSource: Send + Sync + 'static {
    /// Up to `max` stored events with ids above `after`, ascending (ids are dense).
    fn events_after(&self, after: u64, max: usize) -> Vec<Arc<StoredEvent>>;
    /// The oldest id still held, and the newest stored; `None` while empty.
    fn bounds(&self) -> (Option<u64>, Option<u64>);
}

impl EventSource for AppState {
    fn events_after(&self, after: u64, max: usize) -> Vec<Arc<StoredEvent>> {
        AppState::events_after(self, after, max)
    }

    fn bounds(&self) -> (Option<u64>, Option<u64>) {
        self.store_bounds()
    }
}
