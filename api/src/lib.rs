//! lpcmon's HTTP service: the event store, REST, server-sent events, the dashboard and metrics.
//!
//! The `lpcmon` binary wires it up:
//!
//! 1. [`AppState::new`] with an [`ApiConfig`];
//! 2. [`spawn_ingest`] with the receiving end of the bounded channel the port server's
//!    dispatcher feeds with [`Output`](lpcmon_protocol::server::Output)s;
//! 3. [`serve`] (or [`router`] in your own axum server).
//!
//! The ingest task is the store's only writer and assigns every stored event the next id, so
//! ids start at 1 and are dense. Each event is serialised to JSON once, at ingest; pages and
//! streams copy those bytes. HTTP clients never slow ingest: readers take the store's lock in
//! short chunks, and live streams hang off a bounded broadcast on which a slow client lags on
//! its own and is then told exactly what it missed (`docs/design.md`: data flow, invariants,
//! HTTP API).

mod assets;
mod auth;
mod config;
mod durable;
mod error;
mod fleet;
mod follow;
mod frame;
mod guard;
mod ingest;
mod json;
mod kind;
mod metrics;
mod page;
mod publish;
mod query;
mod report;
mod routes;
mod serve;
mod state;
mod stats;
mod store;
mod timefmt;

pub use config::{ApiConfig, HostPolicy};
pub use durable::restored_instances;
pub use fleet::{
    FleetReport, HostReport, ImportDone, Imported, Injected, Origin, PublishReport, SubscribeReport,
};
pub use ingest::{spawn_ingest, spawn_ingest_thread};
pub use kind::Kind;
pub use routes::{router, routes};
pub use serve::serve;
pub use state::AppState;
pub use store::StoredEvent;
