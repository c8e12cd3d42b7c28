//! The ingest task: the one writer of the store, and the one place ids are assigned.
//!
//! It takes the port server's outputs from a bounded channel, turns the ones that are stored
//! into JSON (once), appends them to the store and publishes them to live streams. It never
//! waits on an HTTP client: the store lock is held only for an append, and a broadcast send
//! never blocks (a slow stream lags on its own instead).
//!
//! With a durable store it also hands every stored event, and the accounting that covers it,
//! to the database writer once per batch (see [`crate::durable`]); it never waits for a commit,
//! only for an id reservation when the writer is a whole block behind.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lpcmon_protocol::server::{Output, ProducerInfo};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, trace, warn};

use crate::durable::DurableIngest;
use crate::json::{self, Record};
use crate::state::AppState;
use crate::store::StoredEvent;
use crate::timefmt::now_ns;

mod count;
use count::count;

/// Most outputs taken from the channel at once.
const INGEST_BATCH: usize = 256;

/// Starts the ingest task. Call it once per [`AppState`]: the task owns id assignment. It ends
/// when every sender of `rx` is dropped, after handing everything to the database writer; then
/// [`lpcmon_store::Database::close`] commits it.
pub fn spawn_ingest(state: AppState, rx: mpsc::Receiver<Output>) -> JoinHandle<()> {
    tokio::spawn(run(state, rx))
}

/// Starts the ingest task on a thread of its own (with a single-threaded runtime), so it never
/// waits behind HTTP work: a thousand busy SSE streams on the HTTP runtime would otherwise
/// delay every batch by a whole scheduling round. Call it instead of [`spawn_ingest`]; the
/// thread ends when every sender of `rx` is dropped and what they sent is stored.
pub fn spawn_ingest_thread(
    state: AppState,
    rx: mpsc::Receiver<Output>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("lpcmon-ingest".into())
        .spawn(move || runtime.block_on(run(state, rx)))
}

async fn run(state: AppState, mut rx: mpsc::Receiver<Output>) {
    let durable = state.database().cloned().map(DurableIngest::new);
    let next_id = match state.database() {
        Some(db) => db.next_id(),
        None => state.store().newest_id().map_or(1, |id| id + 1),
    };
    let mut ingest = Ingest {
        state,
        next_id,
        durable,
        malformed_log: LogLimit::new(),
        refused_log: LogLimit::new(),
        loss_log: LogLimit::new(),
        records: Vec::with_capacity(INGEST_BATCH),
        stored: Vec::with_capacity(INGEST_BATCH),
        encode_errors: 0,
    };
    // Take whatever is waiting in one go: one wake-up per batch instead of per event.
    let mut batch = Vec::with_capacity(INGEST_BATCH);
    let budget = ingest.state.ingest_budget();
    while rx.recv_many(&mut batch, INGEST_BATCH).await > 0 {
        // Out of the channel: what these outputs hold is no longer its backlog. (When the
        // dispatcher was given no budget, nothing was taken and nothing is given back.)
        let taken: usize = batch.iter().map(Output::channel_bytes).sum();
        budget.give_back(taken.min(budget.used()));
        if let Some(durable) = &mut ingest.durable {
            // Each output stores at most one event.
            durable
                .make_room(&ingest.state, ingest.next_id, batch.len())
                .await;
        }
        ingest.handle_batch(&mut batch);
        if let Some(durable) = &mut ingest.durable {
            durable.flush(&ingest.state);
        }
    }
    debug!("ingest channel closed");
}

/// Lets through a few log lines per period and counts the rest, so a flood of bad input
/// cannot flood the log, and the next line says how many were left out.
struct LogLimit {
    period_start: Instant,
    in_period: u32,
    suppressed: u64,
}

impl LogLimit {
    const PERIOD: Duration = Duration::from_secs(10);
    const PER_PERIOD: u32 = 10;

    fn new() -> Self {
        LogLimit {
            period_start: Instant::now(),
            in_period: 0,
            suppressed: 0,
        }
    }

    /// `Some(lines left out since the last one logged)` if this line may be logged.
    fn allow(&mut self) -> Option<u64> {
        if self.period_start.elapsed() >= Self::PERIOD {
            self.period_start = Instant::now();
            self.in_period = 0;
        }
        if self.in_period < Self::PER_PERIOD {
            self.in_period += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

struct Ingest {
    state: AppState,
    next_id: u64,
    durable: Option<DurableIngest>,
    malformed_log: LogLimit,
    refused_log: LogLimit,
    loss_log: LogLimit,
    /// Per batch, reused: each output's record, if it stores one.
    records: Vec<Option<Encoded>>,
    /// Per batch, reused: the events to append and publish.
    stored: Vec<Arc<StoredEvent>>,
    /// Per batch: records that could not be encoded.
    encode_errors: u64,
}

/// An output's record, encoded under the id it will be stored with.
struct Encoded {
    id: u64,
    record: Record,
    producer: Arc<ProducerInfo>,
}

impl Ingest {
    /// Handles a batch of outputs in order, and empties it. Each lock is taken once per batch,
    /// not per event: first the JSON is written with no lock held, then every counter is
    /// updated under one stats lock, then every event is appended under one store lock and
    /// published. Counters are updated before the events become visible, so a reader that
    /// sees an event also sees it counted. The batch shares one receipt time (`received`):
    /// it was taken from the channel at once.
    fn handle_batch(&mut self, batch: &mut Vec<Output>) {
        let now = now_ns();
        let second = self.state.uptime_seconds();
        self.records.clear();
        for output in batch.iter() {
            self.log(output);
            let encoded = self.encode(output, now);
            self.records.push(encoded);
        }
        {
            let mut stats = self.state.stats();
            for (output, encoded) in batch.iter().zip(&self.records) {
                count(&mut stats, output, second, now);
                if let Some(e) = encoded {
                    stats.on_stored(e.record.kind, second);
                }
            }
            for _ in 0..std::mem::take(&mut self.encode_errors) {
                stats.on_encode_error();
            }
        }
        let mut records = self.records.drain(..);
        for output in batch.drain(..) {
            if let Some(durable) = &mut self.durable {
                durable.note(&output);
            }
            let Some(Some(Encoded { id, record, producer })) = records.next() else {
                continue;
            };
            let event = Arc::new(StoredEvent {
                id,
                kind: record.kind,
                pid: record.pid,
                producer,
                search: record.search.into(),
                json: Arc::from(record.json),
            });
            if let Some(durable) = &mut self.durable {
                durable.push(&event, now);
            }
            self.stored.push(event);
        }
        drop(records);
        if self.stored.is_empty() {
            return;
        }
        {
            let mut store = self.state.store_mut();
            for event in &self.stored {
                store.push(event.clone());
            }
        }
        for event in self.stored.drain(..) {
            self.state.publish(event);
        }
    }

    /// Logs what deserves a line: connections, losses, bad input (rate-limited).
    fn log(&mut self, output: &Output) {
        match output {
            Output::Event { .. } => {}
            Output::Loss { producer, loss } => {
                if let Some(suppressed) = self.loss_log.allow() {
                    warn!(
                        producer = %producer.instance_hex, kind = producer.kind.name(),
                        stage = loss.stage.name(), count = loss.count,
                        first_seq = loss.first_seq, last_seq = loss.last_seq, suppressed,
                        "events lost"
                    );
                }
            }
            Output::Connected(producer) => {
                info!(
                    producer = %producer.instance_hex, kind = producer.kind.name(),
                    os = %producer.os, client_pid = producer.client_pid, "producer connected"
                );
            }
            Output::Disconnected { producer, reason } => {
                info!(
                    producer = %producer.instance_hex, kind = producer.kind.name(), reason,
                    "producer disconnected"
                );
            }
            Output::Heartbeat { producer, heartbeat } => {
                trace!(producer = %producer.instance_hex, ?heartbeat, "heartbeat");
            }
            Output::Stale {
                producer,
                seq,
                duplicate,
            } => {
                debug!(producer = %producer.instance_hex, seq, duplicate, "stale message");
            }
            Output::Malformed {
                producer,
                client_pid,
                error,
            } => {
                if let Some(suppressed) = self.malformed_log.allow() {
                    warn!(
                        producer = producer.as_ref().map(|p| p.instance_hex.as_str()),
                        client_pid, %error, suppressed, "malformed message"
                    );
                }
            }
            Output::Refused {
                client_pid,
                reason,
                detail,
            } => {
                if let Some(suppressed) = self.refused_log.allow() {
                    warn!(client_pid, reason = reason.name(), %detail, suppressed, "connection refused");
                }
            }
        }
    }

    /// The record an output stores, under the next id; `None` for outputs only counted, and
    /// for the (never seen) case of an event that cannot be serialised: its id is not used, so
    /// ids stay dense, and the failure is logged here and counted by the caller.
    fn encode(&mut self, output: &Output, now: u64) -> Option<Encoded> {
        let id = self.next_id;
        let (producer, result) = match output {
            Output::Event {
                producer,
                event,
                transport,
            } => (producer, json::event(id, now, producer, event, transport)),
            Output::Loss { producer, loss } => (producer, json::loss(id, now, producer, loss)),
            Output::Connected(producer) => (producer, json::connect(id, now, producer)),
            Output::Disconnected { producer, reason } => {
                (producer, json::disconnect(id, now, producer, reason))
            }
            Output::Heartbeat { .. }
            | Output::Stale { .. }
            | Output::Malformed { .. }
            | Output::Refused { .. } => return None,
        };
        match result {
            Ok(record) => {
                self.next_id += 1;
                Some(Encoded {
                    id,
                    record,
                    producer: producer.clone(),
                })
            }
            Err(e) => {
                error!(producer = %producer.instance_hex, error = %e, "could not encode an event");
                self.encode_errors += 1;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_limit_counts_what_it_suppresses() {
        let mut l = LogLimit::new();
        for _ in 0..LogLimit::PER_PERIOD {
            assert_eq!(l.allow(), Some(0));
        }
        assert_eq!(l.allow(), None);
        assert_eq!(l.allow(), None);
        l.period_start -= LogLimit::PERIOD;
        assert_eq!(l.allow(), Some(2));
    }
}
