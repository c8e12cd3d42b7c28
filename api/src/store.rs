//! The in-memory event store: a ring bounded by event count and by bytes (invariant 2). With a
//! durable store (`lpcmon-store`) it is the hot tail in front of the database; alone, it is all
//! there is (`--store memory`).
//!
//! Ids are dense within one run (every stored event takes the next one), so the ring is a
//! `VecDeque` and an id's slot is `id - oldest_id`: lookups are O(1) and a page is a slice.
//! Events are shared as `Arc`s with the SSE broadcast and the database writer, so neither holds
//! a copy of its own. In front of a database the ring forgets an event only once the writer
//! has settled it, so every id is always in one of the two.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use lpcmon_protocol::server::{IngestBudget, ProducerInfo, heap_block};
use serde_json::value::RawValue;

use crate::kind::Kind;

/// One stored event: its JSON, serialised once at ingest, and what filters look at.
#[derive(Debug)]
pub struct StoredEvent {
    pub id: u64,
    pub kind: Kind,
    /// `process.pid`, for events that have one.
    pub pid: Option<u32>,
    /// The producer, when the event names one (a server's own `publish` loss does not).
    pub producer: Option<Arc<ProducerInfo>>,
    /// The host the event comes from: `origin.host` for an imported event, this server's
    /// `--host-name` for its own (when it has one), for the `host` filter.
    pub host: Option<Arc<str>>,
    /// Lowercased executable, command line and image path joined by `\n`, for `q`.
    pub search: Arc<str>,
    /// The event JSON, serialised once at ingest and embedded as it is in every reply; shared
    /// with the database writer, which stores the same text.
    pub json: Arc<RawValue>,
}

impl StoredEvent {
    /// What the event costs against `retain_bytes`: the heap blocks it holds (the event itself,
    /// its JSON and its search text, each an `Arc` allocation with its two counts and the
    /// allocator's own overhead) and its slot in the ring. The `ProducerInfo` is shared by all
    /// of a session's events and is not counted per event.
    pub fn cost(&self) -> usize {
        arc_block(size_of::<Self>())
            + arc_block(self.json.get().len())
            + arc_block(self.search.len())
            + size_of::<Arc<Self>>()
    }
}

/// The heap bytes of an `Arc` holding `n` bytes: the strong and weak counts come first.
const fn arc_block(n: usize) -> usize {
    heap_block(2 * size_of::<usize>() + n)
}

/// Where the store stands, for `/stats`, `/metrics` and page metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occupancy {
    pub events: usize,
    pub bytes: usize,
    pub oldest_id: Option<u64>,
    pub newest_id: Option<u64>,
    pub evicted: u64,
    pub stored_total: u64,
}

#[derive(Debug)]
pub struct Store {
    events: VecDeque<Arc<StoredEvent>>,
    bytes: usize,
    retain: usize,
    retain_bytes: usize,
    pushed: u64,
    evicted: u64,
    /// With a database: the highest id the writer has settled; nothing newer may be forgotten.
    durable_through: Option<Arc<AtomicU64>>,
    /// The ingest channel's backlog, counted against `retain_bytes` with the events.
    backlog: Option<Arc<IngestBudget>>,
}

impl Store {
    /// A store keeping at most `retain` events and `retain_bytes` bytes. It always keeps the
    /// newest event, even one larger than `retain_bytes`, so what was just stored can be read.
    pub fn new(retain: usize, retain_bytes: usize) -> Self {
        Store {
            events: VecDeque::new(),
            bytes: 0,
            retain: retain.max(1),
            retain_bytes,
            pushed: 0,
            evicted: 0,
            durable_through: None,
            backlog: None,
        }
    }

    /// Counts what waits in the ingest channel against `retain_bytes`: events not yet stored
    /// take memory too, so the store keeps that much less while they wait.
    pub fn counting_backlog(self, backlog: Arc<IngestBudget>) -> Self {
        Store {
            backlog: Some(backlog),
            ..self
        }
    }

    /// The bytes the events may take now: `retain_bytes` less the ingest backlog.
    fn byte_limit(&self) -> usize {
        let backlog = self.backlog.as_ref().map_or(0, |b| b.used());
        self.retain_bytes.saturating_sub(backlog)
    }

    /// The hot tail in front of a database whose writer publishes `durable_through`.
    pub fn tail(retain: usize, retain_bytes: usize, durable_through: Arc<AtomicU64>) -> Self {
        Store {
            durable_through: Some(durable_through),
            ..Store::new(retain, retain_bytes)
        }
    }

    fn may_forget(&self, id: u64) -> bool {
        self.durable_through
            .as_ref()
            .is_none_or(|d| id <= d.load(Ordering::Acquire))
    }

    /// Appends the next event (its id must be the newest plus one) and evicts the oldest
    /// events until the store is within its limits again.
    pub fn push(&mut self, event: Arc<StoredEvent>) {
        debug_assert!(
            self.newest_id().is_none_or(|n| n + 1 == event.id),
            "ids must be dense"
        );
        self.bytes += event.cost();
        self.pushed += 1;
        self.events.push_back(event);
        let byte_limit = self.byte_limit();
        while self.events.len() > 1
            && (self.events.len() > self.retain || self.bytes > byte_limit)
            && self.events.front().is_some_and(|e| self.may_forget(e.id))
        {
            if let Some(old) = self.events.pop_front() {
                self.bytes -= old.cost();
                self.evicted += 1;
            }
        }
    }

    pub fn oldest_id(&self) -> Option<u64> {
        self.events.front().map(|e| e.id)
    }

    pub fn newest_id(&self) -> Option<u64> {
        self.events.back().map(|e| e.id)
    }

    pub fn get(&self, id: u64) -> Option<&Arc<StoredEvent>> {
        let slot = id.checked_sub(self.oldest_id()?)?;
        self.events.get(usize::try_from(slot).ok()?)
    }

    /// The held events with ids in `first..=last`, ascending.
    pub fn range(&self, first: u64, last: u64) -> impl DoubleEndedIterator<Item = &Arc<StoredEvent>> {
        let slots = match (self.oldest_id(), self.newest_id()) {
            (Some(oldest), Some(newest)) if first <= last && first <= newest && last >= oldest => {
                let start = first.max(oldest) - oldest;
                let end = last.min(newest) - oldest;
                // Both are below `events.len()`, which is a usize.
                start as usize..end as usize + 1
            }
            _ => 0..0,
        };
        self.events.range(slots)
    }

    pub fn occupancy(&self) -> Occupancy {
        Occupancy {
            events: self.events.len(),
            bytes: self.bytes,
            oldest_id: self.oldest_id(),
            newest_id: self.newest_id(),
            evicted: self.evicted,
            stored_total: self.pushed,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use lpcmon_protocol::message::ProducerKind;

    pub(crate) fn producer() -> Arc<ProducerInfo> {
        Arc::new(ProducerInfo {
            conn: 1,
            kind: ProducerKind::Loadgen,
            instance: [1; 16],
            instance_hex: "01".repeat(16),
            version: 1,
            os: String::new(),
            os_build: 0,
            client_pid: 1,
            max_message: 1024,
            connected_at: 0,
        })
    }

    fn event(id: u64, json_len: usize) -> Arc<StoredEvent> {
        Arc::new(StoredEvent {
            id,
            kind: Kind::Loss,
            pid: None,
            producer: Some(producer()),
            host: None,
            search: "".into(),
            // A JSON number of exactly `json_len` digits.
            json: RawValue::from_string("1".repeat(json_len)).unwrap().into(),
        })
    }

    #[test]
    fn cost_counts_the_heap_blocks_an_event_holds() {
        let e = event(1, 100);
        // Three Arc blocks and a ring slot, each larger than what it holds.
        let payload = 100 + size_of::<StoredEvent>() + size_of::<Arc<StoredEvent>>();
        assert!(e.cost() >= payload + 3 * 2 * size_of::<usize>());
        assert_eq!(
            e.cost(),
            heap_block(16 + size_of::<StoredEvent>()) + heap_block(116) + heap_block(16) + 8
        );
    }

    #[test]
    fn evicts_by_count_and_counts_evictions() {
        let mut s = Store::new(3, usize::MAX);
        for id in 1..=5 {
            s.push(event(id, 10));
        }
        let o = s.occupancy();
        assert_eq!((o.events, o.oldest_id, o.newest_id), (3, Some(3), Some(5)));
        assert_eq!((o.evicted, o.stored_total), (2, 5));
        assert!(s.get(2).is_none());
        assert_eq!(s.get(4).map(|e| e.id), Some(4));
        assert!(s.get(6).is_none());
    }

    #[test]
    fn evicts_by_bytes_but_keeps_the_newest() {
        let one = event(1, 100).cost();
        let mut s = Store::new(100, one * 2);
        for id in 1..=4 {
            s.push(event(id, 100));
        }
        assert_eq!(s.occupancy().events, 2);
        assert_eq!(s.occupancy().bytes, one * 2);
        s.push(event(5, one * 10));
        let o = s.occupancy();
        assert_eq!((o.events, o.oldest_id, o.evicted), (1, Some(5), 4));
    }

    #[test]
    fn the_ingest_backlog_counts_against_retain_bytes() {
        let one = event(1, 100).cost();
        let backlog = Arc::new(IngestBudget::new(usize::MAX));
        let mut s = Store::new(100, one * 4).counting_backlog(backlog.clone());
        for id in 1..=4 {
            s.push(event(id, 100));
        }
        assert_eq!(s.occupancy().events, 4);
        assert!(backlog.try_take(one * 2));
        s.push(event(5, 100));
        assert_eq!((s.occupancy().events, s.oldest_id()), (2, Some(4)));
        backlog.give_back(one * 2);
        s.push(event(6, 100));
        assert_eq!(s.occupancy().events, 3);
    }

    #[test]
    fn a_tail_keeps_what_the_writer_has_not_settled() {
        let durable = Arc::new(AtomicU64::new(2));
        let mut s = Store::tail(2, usize::MAX, durable.clone());
        for id in 1..=5 {
            s.push(event(id, 1));
        }
        assert_eq!((s.oldest_id(), s.occupancy().evicted), (Some(3), 2));
        durable.store(5, Ordering::Release);
        s.push(event(6, 1));
        assert_eq!((s.oldest_id(), s.occupancy().events), (Some(5), 2));
        assert_eq!(s.occupancy().stored_total, 6);
    }

    #[test]
    fn range_clamps_to_what_is_held() {
        let mut s = Store::new(5, usize::MAX);
        for id in 1..=8 {
            s.push(event(id, 1));
        }
        let ids = |a, b| s.range(a, b).map(|e| e.id).collect::<Vec<_>>();
        assert_eq!(ids(1, 5), vec![4, 5]);
        assert_eq!(ids(7, 100), vec![7, 8]);
        assert_eq!(ids(9, 100), Vec::<u64>::new());
        assert_eq!(ids(6, 5), Vec::<u64>::new());
        assert_eq!(ids(0, 2), Vec::<u64>::new());
    }
}
