//! What `lpcmon-fleet` needs from the service: the store as a publisher reads it, a way to put
//! other servers' events (and the publisher's own `publish` loss) through the one ingest writer,
//! and the fleet's counters for `/stats`, `/metrics` and the dashboard's hosts panel.
//!
//! The ingest task stays the store's only writer and the only place ids are assigned, so an
//! imported event takes the central server's next dense id like any local one.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};

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
    /// Store these, in order; `done` gets how many were stored once they are all in the store.
    Import {
        events: Vec<Imported>,
        done: oneshot::Sender<usize>,
    },
    /// The publisher found ids `first_id..=last_id` evicted before they could be published:
    /// counted in the `publish` stage and stored as a `loss` record (which is published too).
    PublishLoss { first_id: u64, last_id: u64 },
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

impl AppState {
    /// This process's server instance (32 hex digits), unique per run: ids restart with the
    /// in-memory store, so a new run is a new instance.
    pub fn server_instance(&self) -> &str {
        &self.0.server_instance
    }

    /// Up to `max` stored events with ids above `after`, ascending.
    pub fn events_after(&self, after: u64, max: usize) -> Vec<Arc<StoredEvent>> {
        self.store()
            .range(after.saturating_add(1), u64::MAX)
            .take(max)
            .cloned()
            .collect()
    }

    /// The oldest and newest ids the store holds.
    pub fn store_bounds(&self) -> (Option<u64>, Option<u64>) {
        let store = self.store();
        (store.oldest_id(), store.newest_id())
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
