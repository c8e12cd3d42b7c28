//! Keyset pages of the store for `GET /events`.
//!
//! A filtered page may have to look at many events. The store is scanned in chunks of ids,
//! taking the read lock once per chunk, so a large scan never holds the ingest task's write
//! lock off for long. Ids are dense, so a chunk is a plain id range and a chunk boundary
//! needs no bookkeeping; events evicted between chunks are simply no longer there.

use std::sync::Arc;

use crate::query::EventsQuery;
use crate::state::AppState;
use crate::store::StoredEvent;

/// Ids examined per lock.
const SCAN_CHUNK: u64 = 4096;

pub struct Page {
    pub events: Vec<Arc<StoredEvent>>,
    /// The `after` that continues where this page stopped: the last id it examined. Passing
    /// it back returns the events after this page (or, once at the newest, those that arrive
    /// later). `None` only when the store is empty and no `after` was given.
    pub next_after: Option<u64>,
    pub oldest_id: Option<u64>,
    pub newest_id: Option<u64>,
}

pub fn page(state: &AppState, query: &EventsQuery) -> Page {
    let (events, next_after) = match query.after {
        Some(after) => forward(state, query, after),
        None => newest(state, query),
    };
    let store = state.store();
    Page {
        events,
        next_after,
        oldest_id: store.oldest_id(),
        newest_id: store.newest_id(),
    }
}

/// The `limit` matching events after `after`, ascending.
fn forward(state: &AppState, query: &EventsQuery, after: u64) -> (Vec<Arc<StoredEvent>>, Option<u64>) {
    // Events stored while the scan runs wait for the next page, so a busy ingest cannot keep
    // a filtered scan chasing the newest event.
    let Some(end) = state.store().newest_id() else {
        return (Vec::new(), Some(after));
    };
    let mut events = Vec::new();
    let mut examined = after;
    loop {
        let store = state.store();
        let Some(oldest) = store.oldest_id() else {
            break;
        };
        // `after` comes from the client: at u64::MAX there is nothing after it, and `+ 1`
        // must not wrap round to the oldest events.
        let Some(next) = examined.checked_add(1) else {
            break;
        };
        let first = next.max(oldest);
        if first > end {
            break;
        }
        let last = first.saturating_add(SCAN_CHUNK - 1).min(end);
        for event in store.range(first, last) {
            examined = event.id;
            if query.filter.matches(event) {
                events.push(event.clone());
                if events.len() == query.limit {
                    return (events, Some(examined));
                }
            }
        }
        examined = last;
    }
    (events, Some(examined))
}

/// The newest `limit` matching events, ascending.
fn newest(state: &AppState, query: &EventsQuery) -> (Vec<Arc<StoredEvent>>, Option<u64>) {
    let Some(top) = state.store().newest_id() else {
        return (Vec::new(), None);
    };
    let mut events = Vec::new();
    let mut last = top;
    'scan: loop {
        let store = state.store();
        let Some(oldest) = store.oldest_id() else {
            break;
        };
        if last < oldest {
            break;
        }
        let first = last.saturating_sub(SCAN_CHUNK - 1).max(oldest);
        for event in store.range(first, last).rev() {
            if query.filter.matches(event) {
                events.push(event.clone());
                if events.len() == query.limit {
                    break 'scan;
                }
            }
        }
        last = first.saturating_sub(1);
    }
    events.reverse();
    (events, Some(top))
}
