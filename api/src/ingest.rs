//! The ingest task: the one writer of the store, and the one place ids are assigned.
//!
//! It takes the port server's outputs from a bounded channel, turns the ones that are stored
//! into JSON (once), appends them to the store and publishes them to live streams. It never
//! waits on an HTTP client: the store lock is held only for an append, and a broadcast send
//! never blocks (a slow stream lags on its own instead).
//!
//! With a durable store it also hands every stored event, and the accounting that covers it,
//! to the database writer once per batch (see [`crate::durable`]); it never waits for a commit,
//! only for an id reservation when the writer is a whole block behind. When the writer cannot
//! write at all and the reservation is used up, it drops what arrives without ids, counts it as
//! `store` loss, and stores `loss` records that say so once ids can be given again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lpcmon_protocol::message::{LossStage, ProducerKind};
use lpcmon_protocol::server::{Output, ProducerInfo};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, trace, warn};

use crate::durable::DurableIngest;
use crate::fleet::{HostReport, ImportDone, Imported, Injected};
use crate::json::{self, Record};
use crate::state::AppState;
use crate::store::StoredEvent;
use crate::timefmt::now_ns;

mod count;
use count::count;

/// Most outputs taken from the channel at once.
const INGEST_BATCH: usize = 256;
/// How often, while the store has news for it (write failures to count, records dropped for
/// want of ids to report), the ingest task looks even when no output arrives.
const STORE_NEWS_POLL: Duration = Duration::from_millis(100);

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
        id_limit: u64::MAX,
        durable,
        malformed_log: LogLimit::new(),
        refused_log: LogLimit::new(),
        loss_log: LogLimit::new(),
        records: Vec::with_capacity(INGEST_BATCH),
        stored: Vec::with_capacity(INGEST_BATCH),
        encode_errors: 0,
    };
    // Imports and publish losses (lpcmon-fleet). Only the first ingest task of a state gets them.
    let mut injected = ingest
        .state
        .0
        .inject_rx
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    // Take whatever is waiting in one go: one wake-up per batch instead of per event.
    let mut batch = Vec::with_capacity(INGEST_BATCH);
    let budget = ingest.state.ingest_budget();
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, INGEST_BATCH) => {
                if n == 0 {
                    break;
                }
                // Out of the channel: what these outputs hold is no longer its backlog. (When
                // the dispatcher was given no budget, nothing was taken and nothing is given
                // back.)
                let taken: usize = batch.iter().map(Output::channel_bytes).sum();
                budget.give_back(taken.min(budget.used()));
                // Each output stores at most one event.
                ingest.make_room(batch.len()).await;
                ingest.handle_batch(&mut batch);
            }
            Some(injection) = recv_injected(&mut injected) => ingest.inject(injection).await,
            // Flushed below: that takes the writer's failures into the counters.
            _ = tokio::time::sleep(STORE_NEWS_POLL), if ingest.store_has_news() => {
                ingest.make_room(0).await;
                ingest.report_dropped();
            }
        }
        if let Some(durable) = &mut ingest.durable {
            durable.flush(&ingest.state);
        }
    }
    debug!("ingest channel closed");
}

/// The next injection, or never once there is no injector left (or none was given).
async fn recv_injected(rx: &mut Option<mpsc::Receiver<Injected>>) -> Option<Injected> {
    match rx {
        Some(r) => match r.recv().await {
            Some(injection) => Some(injection),
            None => {
                *rx = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
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
    /// The highest id that may be given out, as [`Ingest::make_room`] last found it: a record
    /// that would need a higher one is dropped and counted as `store` loss (see
    /// [`DurableIngest::drop_record`]). `u64::MAX` in memory.
    id_limit: u64,
    durable: Option<DurableIngest>,
    malformed_log: LogLimit,
    refused_log: LogLimit,
    loss_log: LogLimit,
    /// Per batch, reused: what becomes of each output.
    records: Vec<Fate>,
    /// Per batch, reused: the events to append and publish.
    stored: Vec<Arc<StoredEvent>>,
    /// Per batch: records that could not be encoded.
    encode_errors: u64,
}

/// What becomes of one output of a batch.
enum Fate {
    /// Only counted: it stores no record (heartbeats, stale and malformed messages, refusals),
    /// or its record could not be encoded.
    Counted,
    Stored(Encoded),
    /// Its record was dropped for want of an id while the store cannot write.
    Dropped,
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
        // What was dropped before comes first, so its `loss` records precede what follows.
        self.report_dropped();
        let now = now_ns();
        let second = self.state.uptime_seconds();
        self.records.clear();
        for output in batch.iter() {
            self.log(output);
            let fate = self.encode(output, now);
            self.records.push(fate);
        }
        {
            let mut stats = self.state.stats();
            for (output, fate) in batch.iter().zip(&self.records) {
                count(&mut stats, output, second, now);
                match fate {
                    Fate::Stored(e) => stats.on_stored(e.record.kind, second),
                    Fate::Dropped => {
                        let event = self.durable.as_mut().is_some_and(|d| d.drop_record(output));
                        if let (true, Output::Event { producer, .. }) = (event, output) {
                            stats.on_store_loss(&producer.instance, 1, second);
                        }
                    }
                    Fate::Counted => {}
                }
            }
            for _ in 0..std::mem::take(&mut self.encode_errors) {
                stats.on_encode_error();
            }
        }
        // This server's own events carry its host name (imported ones their origin's).
        let host = self.state.config().host_name.clone();
        let mut records = self.records.drain(..);
        for output in batch.drain(..) {
            if let Some(durable) = &mut self.durable {
                durable.note(&output);
            }
            let Some(Fate::Stored(Encoded { id, record, producer })) = records.next() else {
                continue;
            };
            let event = Arc::new(StoredEvent {
                id,
                kind: record.kind,
                pid: record.pid,
                producer: Some(producer),
                host: host.clone(),
                search: record.search.into(),
                json: Arc::from(record.json),
            });
            if let Some(durable) = &mut self.durable {
                durable.push(&event, now, None);
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

    /// The record an output stores, under the next id; `Counted` for outputs only counted, and
    /// for the (never seen) case of an event that cannot be serialised: its id is not used, so
    /// ids stay dense, and the failure is logged here and counted by the caller. `Dropped` if
    /// it would store one but no id may be given now.
    fn encode(&mut self, output: &Output, now: u64) -> Fate {
        let id = self.next_id;
        let stores = matches!(
            output,
            Output::Event { .. } | Output::Loss { .. } | Output::Connected(_) | Output::Disconnected { .. }
        );
        if stores && id > self.id_limit {
            return Fate::Dropped;
        }
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
            | Output::Refused { .. } => return Fate::Counted,
        };
        match result {
            Ok(record) => {
                self.next_id += 1;
                Fate::Stored(Encoded {
                    id,
                    record,
                    producer: producer.clone(),
                })
            }
            Err(e) => {
                error!(producer = %producer.instance_hex, error = %e, "could not encode an event");
                self.encode_errors += 1;
                Fate::Counted
            }
        }
    }

    /// With a durable store, waits until `count` more ids may be given out, and those of the
    /// `loss` records that wait to report dropped records, unless the store cannot write (see
    /// [`DurableIngest::make_room`]); sets [`Ingest::id_limit`].
    async fn make_room(&mut self, count: usize) {
        let reports = self.dropped_reports();
        if let Some(durable) = &mut self.durable {
            self.id_limit = durable
                .make_room(&self.state, self.next_id, count + reports)
                .await;
        }
    }

    /// Whether `count` more ids may be given out now.
    fn ids_for(&self, count: usize) -> bool {
        count == 0 || self.next_id.saturating_add(count as u64 - 1) <= self.id_limit
    }

    /// Whether the database writer has failures to count, or dropped records wait to be
    /// reported.
    fn store_has_news(&self) -> bool {
        self.durable.as_ref().is_some_and(DurableIngest::has_news)
    }

    /// How many `loss` records wait to report records dropped for want of ids.
    fn dropped_reports(&self) -> usize {
        self.durable.as_ref().map_or(0, DurableIngest::dropped_reports)
    }

    /// Stores the `loss` records that report the records dropped for want of ids, if ids may
    /// be given for all of them now. Their counts are in `/stats` already: they were counted
    /// when the records were dropped.
    fn report_dropped(&mut self) {
        let n = self.dropped_reports();
        if n == 0 || !self.ids_for(n) {
            return;
        }
        let Some(durable) = &mut self.durable else {
            return;
        };
        let now = now_ns();
        let instance = self.state.server_instance().to_owned();
        for (producer, loss) in durable.take_dropped_reports() {
            self.store_one(producer.as_ref(), now, None, |id| match &producer {
                Some(producer) => json::loss(id, now, producer, &loss),
                None => json::publish_loss(id, now, &instance, loss.first_seq, loss.last_seq, loss.count),
            });
        }
    }

    async fn inject(&mut self, injection: Injected) {
        match injection {
            Injected::Import { events, done } => {
                self.make_room(events.len()).await;
                self.report_dropped();
                if !self.ids_for(events.len()) {
                    // The store cannot write and has no ids left: store none of them, and the
                    // importer leaves them unacknowledged, so NATS delivers them again later.
                    let _ = done.send(ImportDone {
                        stored: 0,
                        through_id: self.next_id - 1,
                        refused: true,
                    });
                    return;
                }
                let stored = self.import(events);
                // The importer may have stopped waiting (shutdown); the events are stored, and
                // with a durable store their marks are committed with them.
                let _ = done.send(ImportDone {
                    stored,
                    through_id: self.next_id - 1,
                    refused: false,
                });
            }
            Injected::PublishLoss {
                first_id,
                last_id,
                count,
            } => {
                warn!(
                    first_id,
                    last_id, count, "events evicted before they could be published: publish loss"
                );
                self.state
                    .stats()
                    .on_server_loss(LossStage::Publish, count, self.state.uptime_seconds());
                self.state.update_fleet(|f| {
                    if let Some(p) = f.publish.as_mut() {
                        p.lost += count;
                    }
                });
                let instance = self.state.server_instance().to_owned();
                let now = now_ns();
                self.make_room(1).await;
                self.report_dropped();
                let no_id = !self.ids_for(1);
                match &mut self.durable {
                    Some(durable) if no_id => durable.drop_publish_loss(first_id, last_id, count),
                    _ => self.store_one(None, now, None, |id| {
                        json::publish_loss(id, now, &instance, first_id, last_id, count)
                    }),
                }
            }
        }
    }

    /// Stores other servers' events under this server's ids; returns how many were stored.
    fn import(&mut self, events: Vec<Imported>) -> usize {
        // Per origin host in this batch: one shared name (so each imported event holds only a
        // reference to it, as own events share `--host-name`) and what it added.
        let mut hosts: Vec<(Arc<str>, HostReport)> = Vec::new();
        let mut stored = 0;
        for Imported { origin, json } in events {
            let producer = imported_producer(&json);
            let loss = json
                .get("loss")
                .and_then(|l| Some((l.get("stage")?.as_str()?.to_owned(), l.get("count")?.as_u64()?)));
            let at = match hosts.iter().position(|(h, _)| **h == *origin.host) {
                Some(at) => at,
                None => {
                    hosts.push((origin.host.as_str().into(), HostReport::default()));
                    hosts.len() - 1
                }
            };
            let host = hosts[at].0.clone();
            let mut recorded = false;
            let now = now_ns();
            self.store_one(producer.as_ref(), now, Some(host), |id| {
                match json::imported(id, json, &origin) {
                    Some(record) => {
                        recorded = true;
                        record
                    }
                    None => Err(serde::de::Error::custom("not an lpcmon event: no known `kind`")),
                }
            });
            if let Some(durable) = &mut self.durable {
                let loss = loss.as_ref().map(|(stage, count)| (stage.as_str(), *count));
                durable.note_import(&origin, recorded, loss);
            }
            if !recorded {
                continue;
            }
            stored += 1;
            let report = &mut hosts[at].1;
            report.events += 1;
            if let Some((stage, count)) = loss {
                *report.losses.entry(stage).or_default() += count;
            }
        }
        let seen = crate::timefmt::rfc3339_ns(now_ns());
        self.state.update_fleet(|f| {
            for (host, add) in hosts {
                if add.events == 0 {
                    // Named only by events that were not stored: not a host this server holds.
                    continue;
                }
                let report = f.hosts.entry(host.to_string()).or_default();
                report.events += add.events;
                for (stage, count) in add.losses {
                    *report.losses.entry(stage).or_default() += count;
                }
                report.last_seen = Some(seen.clone());
            }
        });
        stored
    }

    /// Stores one record under the next id and publishes it. Stats are updated before the
    /// event becomes visible, so a reader that sees the event also sees it counted.
    fn store_one(
        &mut self,
        producer: Option<&Arc<ProducerInfo>>,
        now: u64,
        imported_from: Option<Arc<str>>,
        build: impl FnOnce(u64) -> Result<Record, serde_json::Error>,
    ) {
        let id = self.next_id;
        let record = match build(id) {
            Ok(record) => record,
            Err(e) => {
                // Serialising structs of strings and integers cannot fail; if it ever does,
                // the id is not used (ids stay dense) and the failure is counted and logged.
                error!(producer = producer.map(|p| p.instance_hex.as_str()), error = %e, "could not encode an event");
                self.state.stats().on_encode_error();
                return;
            }
        };
        self.state
            .stats()
            .on_stored(record.kind, self.state.uptime_seconds());
        let event = Arc::new(StoredEvent {
            id,
            kind: record.kind,
            pid: record.pid,
            producer: producer.cloned(),
            host: imported_from
                .clone()
                .or_else(|| self.state.config().host_name.clone()),
            search: record.search.into(),
            json: Arc::from(record.json),
        });
        if let Some(durable) = &mut self.durable {
            durable.push(&event, now, imported_from);
        }
        self.state.store_mut().push(event.clone());
        self.next_id += 1;
        self.state.publish(event);
    }
}

/// The producer an imported event names, for the `producer` filter; `None` if it names none
/// this build knows (e.g. a server's own `publish` loss).
fn imported_producer(json: &serde_json::Map<String, serde_json::Value>) -> Option<Arc<ProducerInfo>> {
    let producer = json.get("producer")?;
    let kind_name = producer.get("kind")?.as_str()?;
    let kind = ProducerKind::ALL.into_iter().find(|k| k.name() == kind_name)?;
    let instance_hex = producer.get("instance")?.as_str()?;
    let instance = crate::durable::parse_hex(instance_hex)?;
    Some(Arc::new(ProducerInfo {
        instance_hex: instance_hex.to_owned(),
        ..ProducerInfo::known_only(kind, instance)
    }))
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
