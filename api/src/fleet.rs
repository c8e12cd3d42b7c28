//! What `lpcmon-fleet` needs from the service: the store as a publisher reads it, a way to put
//! other servers' events (and the publisher's own `publish` loss) through the one ingest writer,
//! and the fleet's counters for `/stats`, `/metrics` and the dashboard's hosts panel.
//!
//! The ingest task stays the store's only writer and the only place ids are assigned, so an
//! imported event takes the central server's next dense id like any local one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use lpcmon_store::Order;

use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};

use crate::durable;
use crate::query::Filter;
use crate::state::AppState;
use crate::store::StoredEvent;

/// Where an imported event was first stored: `origin` in the event JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Origin {
    pub host: String,
    pub server_instance: String,
    pub id: u64,
}

/// An event another server stored, as it published it (its own `id` is replaced on import).
#[derive(Debug)]
pub struct Imported {
    pub origin: Origin,
    pub json: Map<String, Value>,
}

/// What other tasks hand the ingest task besides the port's outputs.
#[derive(Debug)]
pub enum Injected {
    /// Store these, in order, and raise their origins' high-water marks with them (in the
    /// same database transaction); `done` says what was stored once it is all in the store.
    Import {
        events: Vec<Imported>,
        done: oneshot::Sender<ImportDone>,
    },
    /// The publisher found ids `first_id..=last_id` evicted before they could be published:
    /// `count` events (the range less its holes, ids that never named an event), counted in
    /// the `publish` stage and stored as a `loss` record (which is published too).
    PublishLoss { first_id: u64, last_id: u64, count: u64 },
}

/// What an import stored. With a durable store the events are committed once
/// [`AppState::wait_durable`]`(through_id)` returns true.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportDone {
    pub stored: usize,
    /// The newest id this server has given out so far (covers every event of the import).
    pub through_id: u64,
    /// Nothing was stored: the database cannot write and its reserved ids are used up. The
    /// importer leaves the messages unacknowledged (and its marks where they were), so NATS
    /// delivers them again once the store takes events.
    pub refused: bool,
}

/// How many injections may wait for the ingest task.
pub(crate) const INJECT_CAPACITY: usize = 64;

/// One host as the central server sees it, for the hosts panel.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HostReport {
    /// Events imported from this host.
    pub events: u64,
    /// Events this host reported lost, by stage (from its `loss` records).
    pub losses: BTreeMap<String, u64>,
    /// The host's publish lag as it last reported it (ids not yet acknowledged by NATS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_lag_ids: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_lag_seconds: Option<f64>,
    /// Whether the host last said it could reach NATS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_reachable: Option<bool>,
    /// When the central server last heard from the host (event or status), RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
}

/// The origin side: publishing this server's events.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PublishReport {
    pub host: String,
    pub stream: String,
    pub nats_reachable: bool,
    /// The newest id NATS has acknowledged, with every id before it.
    pub acked_id: u64,
    /// Stored ids not yet acknowledged.
    pub lag_ids: u64,
    /// Age of the oldest stored event not yet acknowledged.
    pub lag_seconds: f64,
    pub acks: u64,
    /// Publishes sent again after a failed or missing acknowledgement.
    pub retries: u64,
    /// Acknowledged as duplicates by JetStream (already in the stream).
    pub duplicates: u64,
    /// Events evicted from the store before they could be published (the `publish` loss).
    pub lost: u64,
}

/// The central side: importing the stream into this server's store.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SubscribeReport {
    pub stream: String,
    pub consumer: String,
    pub nats_reachable: bool,
    pub imported: u64,
    /// Redeliveries at or below an origin's high-water mark, dropped.
    pub duplicates: u64,
    /// Messages refused: the subject's host is not `origin.host`.
    pub refused_host_mismatch: u64,
    /// Messages refused: not an lpcmon event (bad headers, subject or JSON).
    pub refused_malformed: u64,
    /// This server's own events, seen on the stream and not re-imported.
    pub own_skipped: u64,
    pub acks: u64,
}

/// The `fleet` section of `/stats`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FleetReport {
    /// This process's server instance: the middle part of its published message ids.
    pub server_instance: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish: Option<PublishReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<SubscribeReport>,
    /// Per origin host, for the hosts panel.
    pub hosts: BTreeMap<String, HostReport>,
}

/// The `fleet` section a durable store restores: the hosts panel's event and loss totals of
/// every origin imported so far (committed with the events), or `None` if there are none.
pub(crate) fn restored_report(db: &lpcmon_store::Database, server_instance: &str) -> Option<FleetReport> {
    let origins = db.restored_origins();
    if origins.is_empty() {
        return None;
    }
    let mut hosts: BTreeMap<String, HostReport> = BTreeMap::new();
    for o in origins {
        let host = hosts.entry(o.host.clone()).or_default();
        host.events += o.events;
        for (stage, count) in &o.losses {
            *host.losses.entry(stage.clone()).or_default() += count;
        }
    }
    Some(FleetReport {
        server_instance: server_instance.to_owned(),
        hosts,
        ..FleetReport::default()
    })
}

impl AppState {
    /// This server's instance (32 hex digits), the middle part of its published message ids:
    /// the database's (kept across restarts, like its ids), or one per run with `--store
    /// memory` (ids restart at 1 there).
    pub fn server_instance(&self) -> &str {
        &self.0.server_instance
    }

    /// Up to `max` stored events with ids above `after`, ascending: from the database for ids
    /// older than the in-memory tail (so a publisher resumes from the file after an outage of
    /// any length), then from the tail. Ids have holes where a crash skipped a reservation or
    /// the database could not write ([`AppState::ids_never_stored`]).
    pub fn events_after(&self, after: u64, max: usize) -> Vec<Arc<StoredEvent>> {
        if max == 0 {
            return Vec::new();
        }
        let first = after.saturating_add(1);
        if let Some(db) = self.database() {
            let tail_oldest = self.store().oldest_id();
            if tail_oldest.is_none_or(|oldest| first < oldest) {
                // The tail forgets only what the database has settled, so nothing falls between.
                let through = tail_oldest.map_or(i64::MAX as u64, |oldest| oldest - 1);
                let from_disk = durable::page(
                    db,
                    self.config().host_name.as_ref(),
                    after,
                    through,
                    &Filter::default(),
                    max,
                    Order::Ascending,
                );
                if !from_disk.is_empty() {
                    return from_disk;
                }
            }
        }
        self.store().range(first, u64::MAX).take(max).cloned().collect()
    }

    /// The oldest id still held (in the database or the tail) and the newest stored.
    pub fn store_bounds(&self) -> (Option<u64>, Option<u64>) {
        let (tail_oldest, tail_newest) = {
            let store = self.store();
            (store.oldest_id(), store.newest_id())
        };
        let Some(db) = self.database() else {
            return (tail_oldest, tail_newest);
        };
        let disk = db.status();
        let oldest = match (disk.oldest_id, tail_oldest) {
            (Some(d), Some(t)) => Some(d.min(t)),
            (d, t) => d.or(t),
        };
        (oldest, tail_newest.or(disk.newest_id))
    }

    /// How many ids in `first..=last` never named a stored event: skipped after a crash, or
    /// not written (already counted as `store` loss). 0 without a database (ids are dense).
    pub fn ids_never_stored(&self, first: u64, last: u64) -> u64 {
        let Some(db) = self.database() else {
            return 0;
        };
        match db.gaps(first.saturating_sub(1), last) {
            Ok(gaps) => gaps
                .iter()
                .map(|g| g.last.min(last).saturating_sub(g.first.max(first)) + 1)
                .sum(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the store's id gaps");
                0
            }
        }
    }

    /// Where a publisher of this server resumes: every id up to it was acknowledged by NATS
    /// or counted lost by the last run with this database (0 in memory: ids start again).
    pub fn publish_position(&self) -> u64 {
        self.database().map_or(0, |db| db.restored_publish_acked())
    }

    /// Saves the publisher's position with the database's next commit (nothing in memory).
    pub fn save_publish_position(&self, acked: u64) {
        if let Some(db) = self.database() {
            db.save_publish_position(acked);
        }
    }

    /// The fleet's high-water marks (origin server instance → highest origin id stored) the
    /// database restored; empty in memory.
    pub fn restored_origin_marks(&self) -> BTreeMap<String, u64> {
        self.database()
            .map(|db| {
                db.restored_origins()
                    .iter()
                    .map(|o| (o.instance.clone(), o.last_id))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until every id up to `id` is committed to the database (or counted as `store`
    /// loss); true at once in memory. False if `timeout` passes first.
    pub async fn wait_durable(&self, id: u64, timeout: Duration) -> bool {
        let Some(db) = self.database() else {
            return true;
        };
        let through = db.durable_through();
        let deadline = Instant::now() + timeout;
        while through.load(Ordering::Acquire) < id {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        true
    }

    /// Where imports and publish losses go: the ingest task stores them in order with the
    /// port's events.
    pub fn injector(&self) -> mpsc::Sender<Injected> {
        self.0.inject_tx.clone()
    }

    /// Changes the `fleet` section of `/stats` (and turns it on).
    pub fn update_fleet<R>(&self, f: impl FnOnce(&mut FleetReport) -> R) -> R {
        let mut fleet = self
            .0
            .fleet
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let report = fleet.get_or_insert_with(|| FleetReport {
            server_instance: self.0.server_instance.clone(),
            ..FleetReport::default()
        });
        f(report)
    }

    pub(crate) fn fleet_report(&self) -> Option<FleetReport> {
        self.0
            .fleet
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}
