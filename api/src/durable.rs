//! The HTTP service's side of the durable store (`lpcmon-store`): what the ingest task hands
//! the database writer, the accounting committed with it, and reading events back.
//!
//! Ids: the ingest task publishes an id as soon as it lies within the block the writer has
//! reserved in a committed transaction ([`Database::reserved_until`]), so live streams never
//! wait for the disk, and an id that a client saw is never given to another event, even after
//! `kill -9`. When the writer falls a whole block behind, the ingest task waits for it. When the
//! writer cannot write at all (disk full, I/O error) and the block is used up, the ingest task
//! does not wait: it drops what arrives without ids and counts it as `store` loss ([`shed`]).
//!
//! Accounting: each producer instance's sequence position (the lowest number not yet delivered
//! or declared lost) and running drop totals are committed in the same transaction as the
//! events they cover, with the `/stats` counters. After a crash the dispatcher is seeded with
//! them, so whatever was received but not committed shows up as a gap when the producer
//! reconnects, and is counted.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use lpcmon_protocol::message::{LossStage, ProducerKind};
use lpcmon_protocol::server::{Output, ProducerInfo, RestoredInstance};
use lpcmon_store::{
    Database, EventRow, Ledger, MAX_QUEUED, NewEvent, Order, OriginMark, PageQuery, ProducerLedger,
};
use serde::Deserialize;
use tracing::{error, info, warn};

use crate::fleet::Origin;
use crate::kind::Kind;
use crate::query::Filter;
use crate::state::AppState;
use crate::stats::{SavedRecord, Stats, producer_kind};
use crate::store::StoredEvent;

mod shed;
use shed::Shed;

/// What a producer's ledger record holds besides its sequence position.
#[derive(Debug, Default, Deserialize)]
struct SavedInstance {
    queue_drops: u64,
    kernel_drops: u64,
    /// The `/stats` counters ([`Stats::save_producer`]).
    stats: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy)]
struct Position {
    kind: ProducerKind,
    /// 0 until the first sequence number is seen: then the instance is not restored into the
    /// dispatcher (its first number is unknown), only its counters are.
    next_seq: u64,
    queue_drops: u64,
    kernel_drops: u64,
}

/// 32 hex digits as the 16 bytes of a producer instance.
pub(crate) fn parse_hex(hex: &str) -> Option<[u8; 16]> {
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Restores the `/stats` counters a previous run committed.
pub fn restore_stats(db: &Database, stats: &mut Stats) {
    let saved: Vec<(String, [u8; 16], String)> = db
        .restored_producers()
        .iter()
        .filter_map(|p| {
            let instance = parse_hex(&p.instance)?;
            let s: SavedInstance = serde_json::from_str(&p.counters).ok()?;
            Some((p.instance.clone(), instance, s.stats?.to_string()))
        })
        .collect();
    let records = saved.iter().map(|(hex, instance, counters)| SavedRecord {
        instance: *instance,
        instance_hex: hex,
        counters,
    });
    if let Err(e) = stats.restore(records, db.restored_totals()) {
        warn!(error = %e, "could not restore the saved counters; they start from zero");
    }
}

/// The producer instances whose sequence state the dispatcher must be seeded with.
pub fn restored_instances(db: &Database) -> Vec<RestoredInstance> {
    db.restored_producers()
        .iter()
        .filter(|p| p.next_seq > 0)
        .filter_map(|p| {
            let saved: SavedInstance = serde_json::from_str(&p.counters).unwrap_or_default();
            Some(RestoredInstance {
                instance: parse_hex(&p.instance)?,
                kind: producer_kind(&p.kind)?,
                next_seq: p.next_seq,
                queue_drops: saved.queue_drops,
                kernel_drops: saved.kernel_drops,
            })
        })
        .collect()
}

/// The ingest task's link to the database writer.
pub struct DurableIngest {
    db: Arc<Database>,
    pending: Vec<NewEvent>,
    positions: HashMap<[u8; 16], Position>,
    dirty: BTreeSet<[u8; 16]>,
    names: HashMap<[u8; 16], Arc<str>>,
    /// The fleet's origin instances (marks and running totals), as restored and imported since.
    origins: HashMap<String, OriginMark>,
    /// Origin instances changed since the last flush.
    dirty_origins: BTreeSet<String>,
    notice: Option<String>,
    shed: Shed,
}

impl DurableIngest {
    pub fn new(db: Arc<Database>) -> Self {
        let positions = restored_instances(&db)
            .into_iter()
            .map(|r| {
                (
                    r.instance,
                    Position {
                        kind: r.kind,
                        next_seq: r.next_seq,
                        queue_drops: r.queue_drops,
                        kernel_drops: r.kernel_drops,
                    },
                )
            })
            .collect();
        let origins = db
            .restored_origins()
            .iter()
            .map(|o| (o.instance.clone(), o.clone()))
            .collect();
        DurableIngest {
            db,
            pending: Vec::new(),
            positions,
            dirty: BTreeSet::new(),
            names: HashMap::new(),
            origins,
            dirty_origins: BTreeSet::new(),
            notice: None,
            shed: Shed::default(),
        }
    }

    /// Follows each producer's sequence position from what the dispatcher delivers: it
    /// delivers every instance's numbers in order, so the position is a resolved prefix.
    pub fn note(&mut self, output: &Output) {
        let (producer, seq_end, totals) = match output {
            Output::Event { producer, event, .. } => (producer, Some(event.header.seq + 1), None),
            Output::Loss { producer, loss } => match loss.stage {
                LossStage::ProducerQueue | LossStage::Kernel => {
                    (producer, None, Some((loss.stage, loss.total)))
                }
                LossStage::Store => (producer, None, None),
                _ => (producer, Some(loss.last_seq + 1), None),
            },
            Output::Connected(producer)
            | Output::Disconnected { producer, .. }
            | Output::Heartbeat { producer, .. }
            | Output::Stale { producer, .. } => (producer, None, None),
            Output::Malformed {
                producer: Some(producer),
                ..
            } => (producer, None, None),
            Output::Malformed { producer: None, .. } | Output::Refused { .. } => return,
        };
        let p = self.positions.entry(producer.instance).or_insert(Position {
            kind: producer.kind,
            next_seq: 0,
            queue_drops: 0,
            kernel_drops: 0,
        });
        p.kind = producer.kind;
        self.names
            .entry(producer.instance)
            .or_insert_with(|| Arc::from(producer.instance_hex.as_str()));
        if let Some(end) = seq_end {
            p.next_seq = p.next_seq.max(end);
        }
        match totals {
            Some((LossStage::Kernel, total)) => p.kernel_drops = p.kernel_drops.max(total),
            Some((_, total)) => p.queue_drops = p.queue_drops.max(total),
            None => {}
        }
        self.dirty.insert(producer.instance);
    }

    /// Records an imported event of `origin`: raises its instance's high-water mark and, if it
    /// was stored, its totals. The writer commits them with the events queued since the last
    /// flush, in one transaction.
    pub fn note_import(&mut self, origin: &Origin, stored: bool, loss: Option<(&str, u64)>) {
        let mark = self
            .origins
            .entry(origin.server_instance.clone())
            .or_insert_with(|| OriginMark {
                instance: origin.server_instance.clone(),
                host: origin.host.clone(),
                ..OriginMark::default()
            });
        mark.last_id = mark.last_id.max(origin.id);
        if stored {
            mark.events += 1;
            if let Some((stage, count)) = loss {
                *mark.losses.entry(stage.to_owned()).or_default() += count;
            }
        }
        self.dirty_origins.insert(origin.server_instance.clone());
    }

    /// Queues a stored event for the writer. `imported_from` is the origin host of an event
    /// another server stored first.
    pub fn push(&mut self, event: &StoredEvent, time_ns: u64, imported_from: Option<Arc<str>>) {
        // A server's own `publish` loss names no producer: empty strings in the file.
        let (producer_kind, producer) = match &event.producer {
            Some(p) => (
                p.kind.name(),
                self.names
                    .entry(p.instance)
                    .or_insert_with(|| Arc::from(p.instance_hex.as_str()))
                    .clone(),
            ),
            None => ("", Arc::from("")),
        };
        self.pending.push(NewEvent {
            id: event.id,
            time_ns,
            kind: event.kind.name(),
            pid: event.pid,
            producer_kind,
            producer,
            host: imported_from,
            search: event.search.clone(),
            json: event.json.clone(),
            counted: matches!(event.kind, Kind::Event(_)),
        });
    }

    /// Waits, if it must, until `count` more ids may be published and the writer has room,
    /// and returns the highest id that may be published now: ids past the committed
    /// reservation could be reused after a crash. That is back-pressure while the writer is
    /// only behind. While it cannot write at all, waiting would not bring ids sooner and would
    /// lose events uncounted by the store, so it returns at once, and the caller drops the
    /// records past the returned id ([`drop_record`](Self::drop_record)).
    pub async fn make_room(&mut self, state: &AppState, next_id: u64, count: usize) -> u64 {
        let needed = next_id + count as u64 - 1;
        let reserved = self.db.reserved_until();
        if needed <= reserved && self.db.queued() < MAX_QUEUED {
            return reserved;
        }
        self.flush(state);
        let started = std::time::Instant::now();
        let mut waited = 0u32;
        // While writing fails, the reservation bounds what is queued (every queued event has
        // an id in it), so the queue limit need not hold either.
        while (needed > self.db.reserved_until() || self.db.queued() >= MAX_QUEUED)
            && !self.db.write_failing()
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
            waited += 1;
            if waited % 5000 == 0 {
                warn!(
                    needed,
                    reserved = self.db.reserved_until(),
                    queued = self.db.queued(),
                    "ingest is waiting for the store writer"
                );
            }
        }
        if waited > 0 {
            self.db.note_ingest_wait(started.elapsed());
        }
        self.db.reserved_until()
    }

    /// Drops the record `output` would have stored, for want of an id (see [`shed`]). Returns
    /// whether it is a producer's event: the caller counts it as the producer's `store` loss.
    pub fn drop_record(&mut self, output: &Output) -> bool {
        let event = self.shed.drop_record(output);
        if self.shed.episode_started() {
            error!(
                reserved = self.db.reserved_until(),
                "the store cannot write and the ids it reserved are used up: arriving events \
                 are counted as `store` loss, without ids, until writing works again; `loss` \
                 records will say how many"
            );
        }
        event
    }

    /// Drops the record of the server's own `publish` loss, for want of an id.
    pub fn drop_publish_loss(&mut self, first_id: u64, last_id: u64, count: u64) {
        self.shed.drop_publish_loss(first_id, last_id, count);
    }

    /// Whether the writer has failures to count (or an error stands), or dropped records wait
    /// to be reported: then the ingest task looks again soon even if nothing arrives.
    pub fn has_news(&self) -> bool {
        self.shed.reports() > 0 || self.db.needs_attention()
    }

    /// How many `loss` records describe the records dropped so far (0 if none were).
    pub fn dropped_reports(&self) -> usize {
        self.shed.reports()
    }

    /// The `loss` records that describe the records dropped since the last call, to store
    /// once ids can be given again.
    pub fn take_dropped_reports(&mut self) -> Vec<shed::Report> {
        let (reports, dropped) = self.shed.take_reports();
        if dropped > 0 {
            info!(
                dropped,
                reports = reports.len(),
                "ids can be given again: the records dropped meanwhile are reported as `loss` records"
            );
        }
        reports
    }

    /// Hands the queued events and the accounting that covers them to the writer, and takes
    /// back what it could not write.
    pub fn flush(&mut self, state: &AppState) {
        let shed = self.shed.take_unsaved();
        let ledger =
            if self.dirty.is_empty() && self.pending.is_empty() && self.dirty_origins.is_empty() && shed == 0
            {
                None
            } else {
                let stats = state.stats();
                let producers = std::mem::take(&mut self.dirty)
                    .into_iter()
                    .filter_map(|instance| {
                        let p = self.positions.get(&instance)?;
                        // The stats are JSON already: put them in as they are.
                        let counters = format!(
                            r#"{{"queue_drops":{},"kernel_drops":{},"stats":{}}}"#,
                            p.queue_drops,
                            p.kernel_drops,
                            stats.save_producer(&instance).as_deref().unwrap_or("null"),
                        );
                        Some(ProducerLedger {
                            instance: self.names.get(&instance)?.to_string(),
                            kind: p.kind.name().to_owned(),
                            next_seq: p.next_seq,
                            counters,
                        })
                    })
                    .collect();
                Some(Ledger {
                    producers,
                    totals: Some(stats.save_totals()),
                    origins: std::mem::take(&mut self.dirty_origins)
                        .into_iter()
                        .filter_map(|instance| self.origins.get(&instance).cloned())
                        .collect(),
                    publish_acked: None,
                    shed,
                })
            };
        if let Some(ledger) = ledger {
            self.db.append(std::mem::take(&mut self.pending), ledger);
        }
        if !self.db.needs_attention() {
            return;
        }
        let (failures, error) = self.db.acknowledge();
        if !failures.is_empty() {
            let second = state.uptime_seconds();
            let mut stats = state.stats();
            for f in failures {
                if let Some(instance) = parse_hex(&f.producer) {
                    stats.on_store_loss(&instance, f.count, second);
                }
            }
        }
        if error != self.notice {
            if let Some(old) = self.notice.take() {
                state.remove_notice(&old);
            }
            if let Some(new) = &error {
                state.add_notice(new.clone());
            }
            self.notice = error;
        }
    }
}

/// Events read back from the database, in the in-memory form pages and streams use. Only
/// `json`, `id`, `kind`, `pid` and the producer's kind and instance are filled in: the rest of
/// the producer's details are in the JSON.
fn to_events(rows: Vec<EventRow>, own_host: Option<&Arc<str>>) -> Vec<Arc<StoredEvent>> {
    let mut producers: HashMap<String, Arc<ProducerInfo>> = HashMap::new();
    rows.into_iter()
        .filter_map(|row| {
            let kind = Kind::parse(&row.kind)?;
            let producer = (!row.producer.is_empty()).then(|| {
                producers
                    .entry(row.producer.clone())
                    .or_insert_with(|| {
                        // Filters look at the kind and the hex instance; the rest is in the JSON.
                        let kind = producer_kind(&row.producer_kind).unwrap_or(ProducerKind::Loadgen);
                        let instance = parse_hex(&row.producer).unwrap_or_default();
                        Arc::new(ProducerInfo {
                            instance_hex: row.producer.clone(),
                            ..ProducerInfo::known_only(kind, instance)
                        })
                    })
                    .clone()
            });
            Some(Arc::new(StoredEvent {
                id: row.id,
                kind,
                pid: row.pid,
                producer,
                // NULL in the file: this server's own event, of whatever host it is now.
                host: row.host.map(Arc::from).or_else(|| own_host.cloned()),
                search: Arc::from(""),
                // What the writer stored is what ingest serialised; a row that is not JSON
                // (the file edited by hand) is skipped like a missing one.
                json: Arc::from(serde_json::value::RawValue::from_string(row.json).ok()?),
            }))
        })
        .collect()
}

/// Matching events with ids in `after < id <= through` from the database. A read error is
/// logged and reads as no events: the in-memory tail still serves.
pub fn page(
    db: &Database,
    own_host: Option<&Arc<str>>,
    after: u64,
    through: u64,
    filter: &Filter,
    limit: usize,
    order: Order,
) -> Vec<Arc<StoredEvent>> {
    let filter = filter.to_store(own_host.map(|h| &**h));
    match db.page(&PageQuery {
        after,
        through,
        filter: &filter,
        limit,
        order,
    }) {
        Ok(rows) => to_events(rows, own_host),
        Err(e) => {
            error!(error = %e, "cannot read events from the store");
            Vec::new()
        }
    }
}

/// The stored event with this id, if the database has it.
pub fn get(db: &Database, own_host: Option<&Arc<str>>, id: u64) -> Option<Arc<StoredEvent>> {
    match db.get(id) {
        Ok(row) => to_events(row.into_iter().collect(), own_host).pop(),
        Err(e) => {
            error!(error = %e, id, "cannot read an event from the store");
            None
        }
    }
}
