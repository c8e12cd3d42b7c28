//! The one shared state every handler and the ingest task hold.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use lpcmon_protocol::server::IngestBudget;
use lpcmon_store::Database;
use tokio::sync::{broadcast, mpsc, watch};

use crate::config::ApiConfig;
use crate::fleet::{FleetReport, INJECT_CAPACITY, Injected};
use crate::frame::{Live, ReplayCache};
use crate::publish::Publisher;
use crate::stats::Stats;
use crate::store::{Store, StoredEvent};
use crate::timefmt::now_ns;

/// Why an SSE stream told its client about a gap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapReason {
    /// The client asked to resume from events the store no longer holds.
    Evicted,
    /// The client fell behind the live stream and the store evicted events before it caught up.
    Lagged,
    /// Ids a crashed server had reserved but never committed: skipped on restart, never reused.
    Restart,
    /// Ids whose events the durable store could not write (disk full, I/O error).
    Store,
}

impl GapReason {
    pub const ALL: [GapReason; 4] = [
        GapReason::Evicted,
        GapReason::Lagged,
        GapReason::Restart,
        GapReason::Store,
    ];

    pub fn name(self) -> &'static str {
        match self {
            GapReason::Evicted => "evicted",
            GapReason::Lagged => "lagged",
            GapReason::Restart => "restart",
            GapReason::Store => "store",
        }
    }
}

/// SSE counters, kept outside the stats lock because streams update them, not ingest.
#[derive(Debug, Default)]
pub struct SseCounters {
    pub clients: AtomicU64,
    gaps: [AtomicU64; GapReason::ALL.len()],
    missed: [AtomicU64; GapReason::ALL.len()],
}

impl SseCounters {
    pub fn record_gap(&self, reason: GapReason, missed: u64) {
        self.gaps[reason as usize].fetch_add(1, Ordering::Relaxed);
        self.missed[reason as usize].fetch_add(missed, Ordering::Relaxed);
    }

    pub fn gaps(&self, reason: GapReason) -> u64 {
        self.gaps[reason as usize].load(Ordering::Relaxed)
    }

    pub fn missed(&self, reason: GapReason) -> u64 {
        self.missed[reason as usize].load(Ordering::Relaxed)
    }
}

pub(crate) struct Shared {
    pub config: ApiConfig,
    pub store: RwLock<Store>,
    /// The durable store behind the in-memory tail, unless running with `--store memory`.
    pub database: Option<Arc<Database>>,
    pub stats: Mutex<Stats>,
    /// What the outputs waiting in the ingest channel hold, in bytes.
    pub ingest_budget: Arc<IngestBudget>,
    /// New events, for live SSE streams, sent in bursts. Bounded: a slow receiver lags instead
    /// of holding the sender back.
    pub live: Arc<Publisher>,
    pub sse: SseCounters,
    /// Frames of stored events rendered once for every stream that catches up on them.
    pub replay: ReplayCache,
    /// Set once the service is shutting down: every SSE stream ends.
    pub closing: watch::Sender<bool>,
    pub notices: RwLock<Vec<String>>,
    pub started: Instant,
    pub started_ns: u64,
    /// See [`AppState::server_instance`].
    pub server_instance: String,
    pub inject_tx: mpsc::Sender<Injected>,
    /// Taken by the ingest task.
    pub inject_rx: Mutex<Option<mpsc::Receiver<Injected>>>,
    /// `None` until the fleet is used: `/stats` then has no `fleet` section.
    pub fleet: Mutex<Option<FleetReport>>,
}

/// The service's state: configuration, store, counters and the live broadcast. Cheap to clone.
#[derive(Clone)]
pub struct AppState(pub(crate) Arc<Shared>);

// A panic while a lock was held cannot leave these structures half-updated in a way that
// matters more than stopping the service would, so a poisoned lock is used as it is.
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

impl AppState {
    /// A service that keeps events in memory only: `retain` and `retain_bytes` bound them.
    pub fn new(config: ApiConfig) -> Self {
        Self::build(config, None)
    }

    /// A service in front of a durable store: `retain` and `retain_bytes` bound the in-memory
    /// tail, the database has its own limits. The counters the database saved are restored.
    pub fn with_database(config: ApiConfig, database: Arc<Database>) -> Self {
        Self::build(config, Some(database))
    }

    fn build(config: ApiConfig, database: Option<Arc<Database>>) -> Self {
        let live = Publisher::new(
            config.broadcast_capacity,
            config.sse_coalesce,
            config.sse_coalesce_per_stream,
        );
        let mut stats = Stats::new(config.max_producers);
        let ingest_budget = Arc::new(IngestBudget::new(
            config.ingest_bytes.unwrap_or(config.retain_bytes / 8),
        ));
        let store = match &database {
            Some(db) => {
                crate::durable::restore_stats(db, &mut stats);
                Store::tail(config.retain, config.retain_bytes, db.durable_through())
            }
            None => Store::new(config.retain, config.retain_bytes),
        }
        .counting_backlog(ingest_budget.clone());
        let (inject_tx, inject_rx) = mpsc::channel(INJECT_CAPACITY);
        let started_ns = now_ns();
        // With a file, the instance is the file's: its ids survive a restart, so its message
        // ids do too. In memory, ids restart at 1 with every run, so every run is a new
        // instance: the start time and the pid, unique per run on a host (and the host is in
        // every message id beside it).
        let server_instance = match &database {
            Some(db) => db.server_instance().to_owned(),
            None => format!("{started_ns:024x}{:08x}", std::process::id()),
        };
        let fleet = database
            .as_ref()
            .and_then(|db| crate::fleet::restored_report(db, &server_instance));
        AppState(Arc::new(Shared {
            store: RwLock::new(store),
            database,
            stats: Mutex::new(stats),
            ingest_budget,
            live,
            sse: SseCounters::default(),
            replay: ReplayCache::default(),
            closing: watch::Sender::new(false),
            notices: RwLock::new(Vec::new()),
            started: Instant::now(),
            started_ns,
            server_instance,
            inject_tx,
            inject_rx: Mutex::new(Some(inject_rx)),
            fleet: Mutex::new(fleet),
            config,
        }))
    }

    pub fn config(&self) -> &ApiConfig {
        &self.0.config
    }

    /// Adds a line to `/stats` `notices`, e.g. how to attach a sensor that is not running.
    /// Adding the same text twice keeps one copy.
    pub fn add_notice(&self, text: impl Into<String>) {
        let text = text.into();
        let mut notices = write(&self.0.notices);
        if !notices.contains(&text) {
            notices.push(text);
        }
    }

    /// Removes a notice added earlier, once it no longer applies.
    pub fn remove_notice(&self, text: &str) {
        write(&self.0.notices).retain(|n| n != text);
    }

    /// Ends every SSE stream, now and from now on. Streams never end by themselves, so call
    /// this when shutdown begins, or a graceful shutdown waits for every open dashboard.
    pub fn close_streams(&self) {
        self.0.closing.send_replace(true);
    }

    pub(crate) fn closing(&self) -> watch::Receiver<bool> {
        self.0.closing.subscribe()
    }

    pub(crate) fn notices(&self) -> Vec<String> {
        read(&self.0.notices).clone()
    }

    /// The ingest channel's byte budget. Give it to the port's dispatcher
    /// (`Dispatcher::with_ingest_budget`) and the channel is bounded by what its outputs hold
    /// ([`ApiConfig::ingest_bytes`]); the ingest task gives their bytes back as it takes them.
    pub fn ingest_budget(&self) -> Arc<IngestBudget> {
        self.0.ingest_budget.clone()
    }

    /// The durable store, if there is one.
    pub fn database(&self) -> Option<&Arc<Database>> {
        self.0.database.as_ref()
    }

    /// The newest id stored: in the tail, else in the database.
    pub(crate) fn newest_id(&self) -> Option<u64> {
        let tail = self.store().newest_id();
        tail.or_else(|| self.database().and_then(|db| db.status().newest_id))
    }

    /// The oldest id held: in the database, else in the tail.
    pub(crate) fn oldest_id(&self) -> Option<u64> {
        let tail = self.store().oldest_id();
        let disk = self.database().and_then(|db| db.status().oldest_id);
        disk.or(tail)
    }

    pub(crate) fn store(&self) -> RwLockReadGuard<'_, Store> {
        read(&self.0.store)
    }

    pub(crate) fn store_mut(&self) -> RwLockWriteGuard<'_, Store> {
        write(&self.0.store)
    }

    pub(crate) fn stats(&self) -> MutexGuard<'_, Stats> {
        self.0.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn sse(&self) -> &SseCounters {
        &self.0.sse
    }

    pub(crate) fn replay(&self) -> &ReplayCache {
        &self.0.replay
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Live> {
        self.0.live.subscribe()
    }

    /// Publishes a stored event to live streams, with its SSE frame rendered once for all of
    /// them, in the next burst (see [`crate::publish`]). With no stream listening, a send would
    /// drop the value anyway (the store has the event), so the frame is not rendered at all. A
    /// stream subscribing right after this check reads the store after subscribing, and finds
    /// the event there.
    pub(crate) fn publish(&self, event: Arc<StoredEvent>) {
        self.0.live.publish(event);
    }

    /// Whole seconds since the state was created, the clock of the rate windows.
    pub(crate) fn uptime_seconds(&self) -> u64 {
        self.0.started.elapsed().as_secs()
    }

    pub(crate) fn uptime(&self) -> f64 {
        self.0.started.elapsed().as_secs_f64()
    }

    pub(crate) fn started_ns(&self) -> u64 {
        self.0.started_ns
    }
}
