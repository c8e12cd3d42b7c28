//! The full `/stats` report: counters, store occupancy, SSE clients, notices and uptime.
//! `/metrics` renders the same report, so the two always agree.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::state::{AppState, GapReason};
use crate::stats::Counters;
use crate::timefmt::rfc3339_ns;

#[derive(Debug, Serialize)]
pub struct StoreReport {
    pub events: usize,
    pub bytes: usize,
    pub retain: usize,
    pub retain_bytes: usize,
    pub oldest_id: Option<u64>,
    pub newest_id: Option<u64>,
    pub evicted: u64,
    pub stored_total: u64,
    /// The durable store behind the in-memory figures above, unless running `--store memory`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub durable: Option<DurableReport>,
}

/// The database: what it holds, its limits, and whether it is writing.
#[derive(Debug, Serialize)]
pub struct DurableReport {
    pub path: String,
    pub events: u64,
    /// Bytes of the database file in use (the write-ahead log is not counted).
    pub bytes: u64,
    pub retain: u64,
    pub retain_bytes: u64,
    pub retain_days: Option<f64>,
    pub oldest_id: Option<u64>,
    pub newest_id: Option<u64>,
    pub evicted: u64,
    pub stored_total: u64,
    /// Events it could not write (the `store` loss stage), over its whole life.
    pub lost: u64,
    /// The current write error, while writing fails.
    pub error: Option<String>,
}

fn durable_report(state: &AppState) -> Option<DurableReport> {
    let s = state.database()?.status();
    let retention = s.retention.unwrap_or_default();
    Some(DurableReport {
        path: s.path.display().to_string(),
        events: s.events,
        bytes: s.bytes,
        retain: retention.events,
        retain_bytes: retention.bytes,
        retain_days: retention.max_age_seconds.map(|s| s as f64 / 86_400.0),
        oldest_id: s.oldest_id,
        newest_id: s.newest_id,
        evicted: s.evicted,
        stored_total: s.stored_total,
        lost: s.lost,
        error: s.error,
    })
}

#[derive(Debug, Serialize)]
pub struct SseReport {
    pub clients: u64,
    /// Gap events sent, by reason.
    pub gaps: BTreeMap<&'static str, u64>,
    /// Events those gaps reported missing, by reason.
    pub missed: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub version: &'static str,
    pub started: String,
    pub uptime_seconds: f64,
    /// `started` as seconds since the Unix epoch, for `/metrics`.
    #[serde(skip)]
    pub start_time_seconds: f64,
    pub notices: Vec<String>,
    #[serde(flatten)]
    pub counters: Counters,
    pub store: StoreReport,
    pub sse: SseReport,
    /// Publishing to and subscribing from NATS (`lpcmon serve --publish/--subscribe`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<crate::fleet::FleetReport>,
}

impl Report {
    pub fn collect(state: &AppState) -> Report {
        let counters = state.stats().report(state.uptime_seconds());
        let occupancy = state.store().occupancy();
        let config = state.config();
        let sse = state.sse();
        let by_reason = |f: &dyn Fn(GapReason) -> u64| GapReason::ALL.map(|r| (r.name(), f(r))).into();
        Report {
            version: env!("CARGO_PKG_VERSION"),
            started: rfc3339_ns(state.started_ns()),
            uptime_seconds: state.uptime(),
            start_time_seconds: state.started_ns() as f64 / 1e9,
            notices: state.notices(),
            counters,
            store: StoreReport {
                events: occupancy.events,
                bytes: occupancy.bytes,
                retain: config.retain,
                retain_bytes: config.retain_bytes,
                oldest_id: occupancy.oldest_id,
                newest_id: occupancy.newest_id,
                evicted: occupancy.evicted,
                stored_total: occupancy.stored_total,
                durable: durable_report(state),
            },
            sse: SseReport {
                clients: sse.clients.load(Ordering::Relaxed),
                gaps: by_reason(&|r| sse.gaps(r)),
                missed: by_reason(&|r| sse.missed(r)),
            },
            fleet: state.fleet_report(),
        }
    }
}
