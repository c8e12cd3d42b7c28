//! lpcmon's durable event history: one SQLite file that events, ids and loss accounting survive
//! restarts and crashes in.
//!
//! * [`Database::open`] checks the file (an SQLite file of lpcmon's, not corrupt, a schema this
//!   build knows, not in use by another lpcmon) and refuses with the way out otherwise; it never
//!   wipes anything.
//! * One writer thread owns the write connection and commits what the ingest task hands it in
//!   batches (every [`COMMIT_INTERVAL`] or [`COMMIT_EVENTS`] events, whichever comes first),
//!   together with the accounting [`Ledger`], so the events and the counters that describe them
//!   are always committed together.
//! * Ids are reserved in blocks persisted ahead ([`ID_BLOCK`]): the ingest task may publish an
//!   id as soon as it is reserved, not only once it is committed, so live streams do not wait
//!   for the disk. After a crash the rest of the reserved block is skipped and recorded as a
//!   `restart` gap, so no id a client saw ever names a different event.
//! * Retention by count, bytes on disk and age deletes the oldest events in batches and gives
//!   the space back (`auto_vacuum = INCREMENTAL`).
//! * Readers ([`Database::page`], [`Database::get`], [`export`]) use their own connections; WAL
//!   lets them read while the writer writes, from this process or another one.
//!
//! The schema is documented for `sqlite3` users in `docs/store.md`.

mod batch;
mod error;
mod export;
mod lock;
mod read;
mod schema;
mod writer;

pub use error::{OpenError, StoreError};
pub use export::{ExportError, ExportFormat, export};
pub use read::{EventRow, Filter, HostFilter, IdGap, Order, PageQuery};
/// The newest schema version this build reads and writes (`PRAGMA user_version`).
pub use schema::latest_version as latest_schema_version;
pub use writer::{
    COMMIT_EVENTS, COMMIT_INTERVAL, CommitLatency, Database, DiskStatus, ID_BLOCK, Ledger, MAX_QUEUED,
    NewEvent, OriginMark, ProducerLedger, ProducerState, Retention, RetentionReport, StoreFailure,
};
