//! What the publisher reads and keeps: stored events after an id, in order; the oldest id still
//! held; the ids that never named an event; and where it stands, saved across restarts.
//!
//! [`AppState`] implements it over its store: the in-memory tail, and with a durable store the
//! SQLite file behind it, so after a NATS outage of any length the publisher resumes from the
//! file as long as the file still holds the events, and a restarted origin resumes where its
//! last run stood.

use std::sync::Arc;

use lpcmon_api::{AppState, StoredEvent};

pub trait EventSource: Send + Sync + 'static {
    /// Up to `max` stored events with ids above `after`, ascending. Ids may have holes.
    fn events_after(&self, after: u64, max: usize) -> Vec<Arc<StoredEvent>>;
    /// The oldest id still held, and the newest stored; `None` while empty.
    fn bounds(&self) -> (Option<u64>, Option<u64>);
    /// How many ids in `first..=last` never named a stored event (a crash's skipped
    /// reservation, a failed write already counted as `store` loss): not evictions.
    fn ids_never_stored(&self, first: u64, last: u64) -> u64;
    /// The position a previous run saved (every id up to it published or counted lost); 0 if
    /// none.
    fn saved_position(&self) -> u64;
    /// Saves the position, best effort: a restart resumes from at most a little before it
    /// (the message ids make JetStream and the central server drop what is sent twice).
    fn save_position(&self, acked: u64);
}

impl EventSource for AppState {
    fn events_after(&self, after: u64, max: usize) -> Vec<Arc<StoredEvent>> {
        AppState::events_after(self, after, max)
    }

    fn bounds(&self) -> (Option<u64>, Option<u64>) {
        self.store_bounds()
    }

    fn ids_never_stored(&self, first: u64, last: u64) -> u64 {
        AppState::ids_never_stored(self, first, last)
    }

    fn saved_position(&self) -> u64 {
        self.publish_position()
    }

    fn save_position(&self, acked: u64) {
        self.save_publish_position(acked);
    }
}
