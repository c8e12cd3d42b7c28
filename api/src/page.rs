//! Keyset pages of the store for `GET /events`.
//!
//! A filtered page may have to look at many events. The store is scanned in chunks of ids,
//! taking the read lock once per chunk, so a large scan never holds the ingest task's write
//! lock off for long. Ids are dense, so a chunk is a plain id range and a chunk boundary
//! needs no bookkeeping; events evicted between chunks are simply no longer there.
//!
//! With a durable store, ids older than the in-memory tail are read from the database with the
//! same filter, order and limit, so a page that spans the two is the page memory alone would
//! have served. The tail forgets only what the database has settled, so no id falls between.

use std::sync::Arc;

use lpcmon_store::Order;

use crate::durable;
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
    Page {
        events,
        next_after,
        oldest_id: state.oldest_id(),
        newest_id: state.newest_id(),
    }
}

/// The `limit` matching events after `after`, ascending.
fn forward(state: &AppState, query: &EventsQuery, after: u64) -> (Vec<Arc<StoredEvent>>, Option<u64>) {
    // Events stored while the scan runs wait for the next page, so a busy ingest cannot keep
    // a filtered scan chasing the newest event.
    let Some(end) = state.newest_id() else {
        return (Vec::new(), Some(after));
    };
    let mut events = Vec::new();
    let mut examined = after;
    loop {
        let store = state.store();
        let tail_oldest = store.oldest_id();
        if let Some(db) = state.database() {
            if examined < end && tail_oldest.is_none_or(|oldest| examined + 1 < oldest) {
                drop(store);
                // Older than the tail: the database has it.
                let through = tail_oldest.map_or(end, |oldest| (oldest - 1).min(end));
                let rows = durable::page(
                    db,
                    state.config().host_name.as_ref(),
                    examined,
                    through,
                    &query.filter,
                    query.limit - events.len(),
                    Order::Ascending,
                );
                events.extend(rows);
                if events.len() == query.limit {
                    let last = events.last().map_or(through, |e| e.id);
                    return (events, Some(last));
                }
                examined = through;
                continue;
            }
        }
        let Some(oldest) = tail_oldest else {
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
    let Some(top) = state.newest_id() else {
        return (Vec::new(), None);
    };
    let mut events = Vec::new();
    let mut last = top;
    'scan: loop {
        let store = state.store();
        let tail_oldest = store.oldest_id();
        if tail_oldest.is_none_or(|oldest| last < oldest) {
            drop(store);
            if let Some(db) = state.database() {
                // Older than the tail: the database has it, newest first like the tail.
                events.extend(durable::page(
                    db,
                    state.config().host_name.as_ref(),
                    0,
                    last,
                    &query.filter,
                    query.limit - events.len(),
                    Order::Descending,
                ));
            }
            break;
        }
        let Some(oldest) = tail_oldest else {
            break;
        };
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
