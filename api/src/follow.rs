//! One SSE client's position in the event sequence: replay from the store, then live events,
//! with every missed event accounted for.
//!
//! The follower subscribes to the live broadcast *before* it reads the store, so nothing falls
//! between the replay and the live part, and it skips live events it already sent, so nothing
//! comes twice. `done` is the id up to which every event was sent, filtered out, or reported in
//! a `gap`; ids are dense, so a gap's `missed` count is exact.
//!
//! When the broadcast says the client lagged, the follower reads the store after `done` again.
//! Only what the store has evicted meanwhile is lost, and that is reported as a gap. Catching up
//! reads a bounded chunk at a time, so a client's buffer never exceeds one chunk plus the
//! broadcast's capacity (invariant 2).
//!
//! With a durable store, what is older than the in-memory tail is replayed from the database,
//! so `Last-Event-ID` resumes across restarts. Ids that name no event there are reported as
//! gaps with the reason the database recorded: `restart` (reserved by a server that crashed,
//! never reused) or `store` (not written); below the database's oldest event, `evicted`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use lpcmon_store::{Database, Order};
use tokio::sync::broadcast::{
    self,
    error::{RecvError, TryRecvError},
};

use crate::durable;
use crate::frame::{Live, REPLAY_BLOCK};
use crate::query::Filter;
use crate::state::{AppState, GapReason};
use crate::store::StoredEvent;

/// Ids read from the store per catch-up step.
const CATCH_UP_CHUNK: u64 = 1024;

/// What the stream sends next.
#[derive(Debug)]
pub enum Item {
    /// A replayed event, rendered by the stream that sends it.
    Event(Arc<StoredEvent>),
    /// Ready-made frames shared by every stream: a live event's, rendered once at ingest, or
    /// a run of replayed events' from the shared replay cache.
    Live(Bytes),
    Gap {
        missed: u64,
        reason: GapReason,
        /// The last id the gap covers; sent as the gap's SSE `id`, so a reconnect resumes
        /// after the hole instead of reporting it again.
        last_id: u64,
    },
}

/// What [`Follower::try_next`] found.
#[derive(Debug)]
pub enum Next {
    Item(Item),
    /// Nothing is ready now.
    Empty,
    /// The broadcast has ended.
    Closed,
}

/// Counts a connected client for as long as it lives.
struct ClientGuard(AppState);

impl ClientGuard {
    fn new(state: AppState) -> Self {
        state.sse().clients.fetch_add(1, Ordering::Relaxed);
        ClientGuard(state)
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.sse().clients.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct Follower {
    state: AppState,
    live: broadcast::Receiver<Live>,
    filter: Filter,
    done: u64,
    pending: VecDeque<Item>,
    /// Set while the store must be read after `done` before live events may follow; the reason
    /// is what a hole found there is called.
    catch_up: Option<GapReason>,
    _client: ClientGuard,
}

impl Follower {
    /// Follows events matching `filter`: those after `after` first, if given, then live ones.
    ///
    /// An `after` newer than any id given out (a client of an in-memory server from before a
    /// restart, when ids began again at 1) is treated as the newest, so that client is not
    /// silenced. Ids a crashed run skipped count as given out: a client that saw some of them
    /// is told only about the rest.
    pub fn new(state: AppState, filter: Filter, after: Option<u64>) -> Self {
        let live = state.subscribe();
        let skipped = state
            .database()
            .and_then(|db| db.restart_gap())
            .map_or(0, |gap| gap.last);
        let newest = state.newest_id().unwrap_or(0).max(skipped);
        let (done, catch_up) = match after {
            Some(after) => (after.min(newest), Some(GapReason::Evicted)),
            None => (newest, None),
        };
        Follower {
            _client: ClientGuard::new(state.clone()),
            state,
            live,
            filter,
            done,
            pending: VecDeque::new(),
            catch_up,
        }
    }

    /// The next event or gap; `None` when the broadcast ends. Shutdown is watched once per
    /// stream by the caller, not here per event.
    pub async fn next(&mut self) -> Option<Item> {
        loop {
            match self.try_next() {
                Next::Item(item) => return Some(item),
                Next::Closed => return None,
                Next::Empty => {}
            }
            let received = self.live.recv().await;
            if let Some(item) = self.on_live(received)? {
                return Some(item);
            }
        }
    }

    /// The next event or gap if one is ready now, without waiting: what a stream takes after
    /// the first item of a write, so that a burst of live events leaves in one write.
    pub fn try_next(&mut self) -> Next {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Next::Item(item);
            }
            if let Some(reason) = self.catch_up {
                self.read_store(reason);
                continue;
            }
            let received = match self.live.try_recv() {
                Ok(live) => Ok(live),
                Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
                Err(TryRecvError::Closed) => Err(RecvError::Closed),
                Err(TryRecvError::Empty) => return Next::Empty,
            };
            match self.on_live(received) {
                Some(Some(item)) => return Next::Item(item),
                Some(None) => {}
                None => return Next::Closed,
            }
        }
    }

    /// What a broadcast receive means: an item to send, `Some(None)` for nothing to send (a
    /// duplicate, a filtered-out event, or a lag that the store now fills in), `None` when the
    /// broadcast has ended.
    fn on_live(&mut self, received: Result<Live, RecvError>) -> Option<Option<Item>> {
        match received {
            Ok(live) if live.event.id <= self.done => {}
            Ok(live) if live.event.id == self.done + 1 => {
                self.done = live.event.id;
                if self.filter.matches(&live.event) {
                    return Some(Some(Item::Live(live.frame)));
                }
            }
            // Broadcasts arrive in id order without holes, but if one ever skipped, the store
            // (which every event reaches before the broadcast) fills it in.
            Ok(_) | Err(RecvError::Lagged(_)) => self.catch_up = Some(GapReason::Lagged),
            Err(RecvError::Closed) => return None,
        }
        Some(None)
    }

    /// Queues the next chunk of stored events after `done`, and a gap first if the store has
    /// evicted some of them.
    fn read_store(&mut self, reason: GapReason) {
        let store = self.state.store();
        if let Some(db) = self.state.database() {
            let tail_oldest = store.oldest_id();
            if tail_oldest.is_none_or(|oldest| self.done + 1 < oldest) {
                let newest = store.newest_id();
                drop(store);
                let db = db.clone();
                return self.read_database(&db, reason, tail_oldest, newest);
            }
        }
        let (Some(oldest), Some(newest)) = (store.oldest_id(), store.newest_id()) else {
            self.catch_up = None;
            return;
        };
        if self.done < oldest - 1 {
            let missed = oldest - 1 - self.done;
            self.state.sse().record_gap(reason, missed);
            self.done = oldest - 1;
            self.pending.push_back(Item::Gap {
                missed,
                reason,
                last_id: self.done,
            });
        }
        let last = self.done.saturating_add(CATCH_UP_CHUNK).min(newest);
        // The whole blocks around the chunk are read too (Arc clones only), so that each can
        // be rendered once for every stream; rendering happens after the lock is released.
        let block = |id: u64| (id - 1) / REPLAY_BLOCK;
        let base = (block(self.done + 1) * REPLAY_BLOCK + 1).max(oldest);
        let top = ((block(last) + 1) * REPLAY_BLOCK).min(newest);
        let events: Vec<Arc<StoredEvent>> = store.range(base, top).cloned().collect();
        drop(store);
        let span = |first: u64, last: u64| &events[(first - base) as usize..=(last - base) as usize];
        let mut id = self.done + 1;
        while id <= last {
            let index = block(id);
            let (block_first, block_last) = (index * REPLAY_BLOCK + 1, (index + 1) * REPLAY_BLOCK);
            let upto = block_last.min(last);
            if block_first < oldest || block_last > newest {
                // Not all of the block is stored (the newest one, still filling): rendered by
                // this stream.
                for event in span(id, upto) {
                    if self.filter.matches(event) {
                        self.pending.push_back(Item::Event(event.clone()));
                    }
                }
                id = upto + 1;
                continue;
            }
            let shared = self.state.replay().block(index, span(block_first, block_last));
            // Each run of matching events is one shared slice of the block's frames.
            let mut run: Option<(u64, u64)> = None;
            for event in span(id, upto) {
                if self.filter.matches(event) {
                    run = Some(run.map_or((event.id, event.id), |(first, _)| (first, event.id)));
                } else if let Some((first, end)) = run.take() {
                    self.pending.push_back(Item::Live(shared.frames(first, end)));
                }
            }
            if let Some((first, end)) = run {
                self.pending.push_back(Item::Live(shared.frames(first, end)));
            }
            id = upto + 1;
        }
        self.done = self.done.max(last);
        // A hole found in a later chunk means the client fell behind while catching up.
        self.catch_up = (self.done < newest).then_some(GapReason::Lagged);
    }

    fn gap(&mut self, reason: GapReason, through: u64) {
        let missed = through - self.done;
        self.state.sse().record_gap(reason, missed);
        self.done = through;
        self.pending.push_back(Item::Gap {
            missed,
            reason,
            last_id: through,
        });
    }

    /// Queues the next chunk of ids after `done` that only the database holds: the events, and
    /// a gap for every hole, in id order.
    fn read_database(
        &mut self,
        db: &Database,
        reason: GapReason,
        tail_oldest: Option<u64>,
        tail_newest: Option<u64>,
    ) {
        let status = db.status();
        let Some(newest) = tail_newest.or(status.newest_id) else {
            self.catch_up = None;
            return;
        };
        let top = tail_oldest.map_or(newest, |oldest| oldest - 1);
        // Below the database's oldest event everything was evicted (or never written).
        let disk_oldest = status.oldest_id.unwrap_or(top + 1);
        if self.done + 1 < disk_oldest {
            self.gap(reason, (disk_oldest - 1).min(top));
        }
        if self.done < top {
            let mut last = self.done.saturating_add(CATCH_UP_CHUNK).min(top);
            let holes = db.gaps(self.done, last).unwrap_or_default();
            // A hole is reported whole, even when it reaches past this chunk.
            if let Some(end) = holes.iter().map(|h| h.last).max() {
                last = last.max(end.min(top));
            }
            let own_host = self.state.config().host_name.clone();
            let events = durable::page(
                db,
                own_host.as_ref(),
                self.done,
                last,
                &self.filter,
                usize::MAX,
                Order::Ascending,
            );
            let mut events = events.into_iter().peekable();
            for hole in holes {
                while let Some(event) = events.next_if(|e| e.id < hole.first) {
                    self.done = event.id;
                    self.pending.push_back(Item::Event(event));
                }
                let hole_reason = if hole.reason == "store" {
                    GapReason::Store
                } else {
                    GapReason::Restart
                };
                self.done = self.done.max(hole.first.saturating_sub(1));
                if hole.last.min(last) > self.done {
                    self.gap(hole_reason, hole.last.min(last));
                }
            }
            for event in events {
                self.pending.push_back(Item::Event(event));
            }
            self.done = last;
        }
        self.catch_up = (self.done < newest).then_some(GapReason::Lagged);
    }
}
