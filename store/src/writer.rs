//! The open database: the writer thread that commits batches, the id reservation, retention,
//! and the read side the HTTP service uses.

use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use tracing::{error, info, warn};

use crate::batch::{self, EncodedBatch, Rows};
use crate::error::{OpenError, StoreError};
use crate::lock::{self, LockFile};
use crate::read::{self, EventRow, GAP_RESTART, GAP_STORE, IdGap, PageQuery, to_i64};
use crate::schema;

/// A batch is committed at most this long after its first event arrived...
pub const COMMIT_INTERVAL: Duration = Duration::from_millis(5);
/// ...or once it holds this many events, whichever comes first.
pub const COMMIT_EVENTS: usize = 4096;
/// Ids reserved ahead of the newest committed one. A crash skips at most this many ids; the
/// ingest task waits (and its channel fills, counted as `server_ingest` loss) only if the writer
/// falls this far behind. While writing fails and the reservation is used up, ingest does not
/// wait: it counts what arrives as `store` loss, without ids (see [`Ledger::shed`]).
pub const ID_BLOCK: u64 = 65_536;
/// Events handed to the writer and not yet committed, past which the ingest task waits.
pub const MAX_QUEUED: usize = 4 * COMMIT_EVENTS * 4;
/// How often the age limit is applied.
const AGE_CHECK: Duration = Duration::from_secs(1);

/// An event to store. The strings are shared with the in-memory tail, not copied.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: u64,
    pub time_ns: u64,
    pub kind: &'static str,
    pub pid: Option<u32>,
    pub producer_kind: &'static str,
    pub producer: Arc<str>,
    /// The origin host of an imported event; `None` for this server's own.
    pub host: Option<Arc<str>>,
    pub search: Arc<str>,
    /// The event's JSON, as the in-memory tail holds it (validated once, at ingest).
    pub json: Arc<RawValue>,
    /// Whether this is a producer's event (not a record of a connect, disconnect or loss):
    /// only those are reported back per producer when they cannot be written.
    pub counted: bool,
}

/// A producer instance's accounting: where its sequence stands and its counters (an opaque
/// JSON document of the HTTP service's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerLedger {
    pub instance: String,
    pub kind: String,
    /// The lowest sequence number not yet delivered or declared lost.
    pub next_seq: u64,
    pub counters: String,
}

/// What was restored at open: the same records.
pub type ProducerState = ProducerLedger;

/// The accounting committed with a batch of events: the producers that changed, and the
/// service-wide totals (opaque JSON).
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    pub producers: Vec<ProducerLedger>,
    pub totals: Option<String>,
    /// The fleet's high-water marks the batch's imported events raise.
    pub origins: Vec<OriginMark>,
    /// The fleet publisher's position: every id up to it acknowledged by NATS or counted lost.
    pub publish_acked: Option<u64>,
    /// Records (events, and records of connects, disconnects and losses) the ingest task
    /// dropped without giving them ids, because writing failed and the reserved ids were used
    /// up: counted as `store` loss ([`DiskStatus::lost`]) at once, and saved with the next
    /// commit that succeeds. The producers' own counts are in their ledger records.
    pub shed: u64,
}

/// One origin server instance whose events were imported (`--subscribe`): the highest origin
/// id stored, and running totals of the events and the losses (by stage) imported from it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginMark {
    pub instance: String,
    pub host: String,
    pub last_id: u64,
    pub events: u64,
    pub losses: BTreeMap<String, u64>,
}

/// What the database keeps. Each limit is applied after every commit.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub events: u64,
    /// Bytes of the database file (pages in use); the write-ahead log is not counted.
    pub bytes: u64,
    pub max_age: Option<Duration>,
}

/// Events of one producer that could not be written (records of connects, disconnects and
/// losses are counted in [`DiskStatus::lost`] only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreFailure {
    pub producer: Arc<str>,
    pub count: u64,
}

/// Where the database stands, for `/stats` and `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct DiskStatus {
    pub path: PathBuf,
    pub events: u64,
    pub bytes: u64,
    pub oldest_id: Option<u64>,
    pub newest_id: Option<u64>,
    /// When (wall-clock ns since the epoch) the commit holding `newest_id` ended.
    pub newest_committed_ns: Option<u64>,
    pub evicted: u64,
    pub stored_total: u64,
    /// Events that could not be written (the `store` loss stage).
    pub lost: u64,
    /// The last write error, while writing fails.
    pub error: Option<String>,
    pub retention: Option<RetentionReport>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct RetentionReport {
    pub events: u64,
    pub bytes: u64,
    pub max_age_seconds: Option<u64>,
}

/// How long commits of events took, for the benchmark and `/stats`-style reports.
#[derive(Debug, Clone, Copy, Default)]
pub struct CommitLatency {
    pub commits: u64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

struct Shared {
    /// Set while a write error stands, or failures wait to be taken: lets the ingest task skip
    /// the locks on every batch when all is well.
    attention: AtomicBool,
    /// Nanoseconds per commit that carried events.
    commit_ns: Mutex<hdrhistogram::Histogram<u64>>,
    reserved: AtomicU64,
    durable_through: Arc<AtomicU64>,
    queued: AtomicUsize,
    /// How often, and for how many nanoseconds in all, ingest waited for the writer.
    ingest_waits: AtomicU64,
    ingest_wait_ns: AtomicU64,
    status: Mutex<DiskStatus>,
    failures: Mutex<BTreeMap<Arc<str>, u64>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Batch {
    events: Vec<NewEvent>,
    ledger: Ledger,
}

/// An open lpcmon database. Dropping it without [`Database::close`] still commits what the
/// writer holds (the thread drains its channel), but `close` waits for it.
pub struct Database {
    shared: Arc<Shared>,
    tx: Mutex<Option<mpsc::Sender<Batch>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    reader: Mutex<Connection>,
    next_id: u64,
    restored_producers: Vec<ProducerState>,
    restored_totals: Option<String>,
    restored_origins: Vec<OriginMark>,
    restored_publish_acked: u64,
    server_instance: String,
    restart_gap: Option<IdGap>,
    _lock: LockFile,
}

fn meta(conn: &Connection, key: &str) -> rusqlite::Result<u64> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| {
        r.get::<_, i64>(0)
    })
    .optional()
    .map(|v| v.unwrap_or(0) as u64)
}

fn set_meta(conn: &Connection, key: &str, value: u64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = ?2",
    )?
    .execute(params![key, to_i64(value)])?;
    Ok(())
}

fn fleet_value(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT value FROM fleet WHERE key = ?1", [key], |r| r.get(0))
        .optional()
}

fn set_fleet_value(conn: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO fleet (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = ?2",
    )?
    .execute(params![key, value])?;
    Ok(())
}

/// A new database's server instance: the creation time and the pid, 32 hex digits, unique per
/// database on a host (the host is beside it in every message id).
fn new_server_instance() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    format!("{:024x}{:08x}", now.as_nanos(), std::process::id())
}

/// Inserts one batch: its row, its filter keys and its full-text document.
pub(crate) fn insert_batch(conn: &Connection, b: &EncodedBatch) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO batches (first_id, last_id, count, time_min, time_max, search, json, rows) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        to_i64(b.first_id),
        to_i64(b.last_id),
        to_i64(b.count),
        to_i64(b.time_min),
        to_i64(b.time_max),
        b.search,
        b.json,
        b.rows
    ])?;
    let mut key = conn.prepare_cached("INSERT INTO batch_keys (key, first_id) VALUES (?1, ?2)")?;
    for k in &b.keys {
        key.execute(params![k, to_i64(b.first_id)])?;
    }
    conn.prepare_cached("INSERT INTO batches_fts (rowid, search) VALUES (?1, ?2)")?
        .execute(params![to_i64(b.first_id), b.search])?;
    Ok(())
}

fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn db_bytes(conn: &Connection) -> rusqlite::Result<u64> {
    let pages: i64 = conn.pragma_query_value(None, "page_count", |r| r.get(0))?;
    let size: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
    Ok((pages * size) as u64)
}

fn sqlite_err(path: &Path) -> impl Fn(rusqlite::Error) -> OpenError + '_ {
    move |e| OpenError::Sqlite {
        path: path.to_owned(),
        detail: e.to_string(),
    }
}

impl Database {
    /// Opens (or creates) the database at `path`, refusing a file that is not lpcmon's, is
    /// corrupt, has a newer schema, or is in use by another lpcmon. If the last run did not
    /// close it (a crash), the ids it had reserved beyond its last commit are recorded as a
    /// `restart` gap and skipped.
    pub fn open(path: &Path, retention: Retention) -> Result<Database, OpenError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| OpenError::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        let lock_file = lock::acquire(path)?;
        let conn = schema::open_for_writing(path)?;
        let fail = sqlite_err(path);
        let last_id = meta(&conn, "last_id").map_err(&fail)?;
        let reserved = meta(&conn, "reserved_until").map_err(&fail)?;
        let restart_gap = (reserved > last_id).then(|| IdGap {
            first: last_id + 1,
            last: reserved,
            reason: GAP_RESTART,
        });
        let next_id = last_id.max(reserved) + 1;
        let new_reserved = next_id - 1 + ID_BLOCK;
        conn.pragma_update(None, "synchronous", "FULL").map_err(&fail)?;
        {
            let tx = conn.unchecked_transaction().map_err(&fail)?;
            if let Some(gap) = restart_gap {
                warn!(
                    path = %path.display(), first = gap.first, last = gap.last,
                    "the last run stopped without closing the store (a crash or kill -9): \
                     skipping the ids it had reserved; SSE clients resuming there get a `restart` gap"
                );
                tx.execute(
                    "INSERT OR REPLACE INTO id_gaps (first, last, reason) VALUES (?1, ?2, ?3)",
                    params![to_i64(gap.first), to_i64(gap.last), GAP_RESTART],
                )
                .map_err(&fail)?;
                set_meta(&tx, "last_id", gap.last).map_err(&fail)?;
            }
            set_meta(&tx, "reserved_until", new_reserved).map_err(&fail)?;
            if fleet_value(&tx, "server_instance").map_err(&fail)?.is_none() {
                set_fleet_value(&tx, "server_instance", &new_server_instance()).map_err(&fail)?;
            }
            tx.commit().map_err(&fail)?;
        }
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(&fail)?;

        let restored_producers = {
            let mut stmt = conn
                .prepare("SELECT instance, kind, next_seq, counters FROM producers")
                .map_err(&fail)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(ProducerLedger {
                        instance: r.get(0)?,
                        kind: r.get(1)?,
                        next_seq: r.get::<_, i64>(2)? as u64,
                        counters: r.get(3)?,
                    })
                })
                .map_err(&fail)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(&fail)?
        };
        let restored_totals: Option<String> = conn
            .query_row("SELECT value FROM totals WHERE key = 'counters'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(&fail)?;
        let server_instance = fleet_value(&conn, "server_instance")
            .map_err(&fail)?
            .unwrap_or_default();
        let restored_publish_acked = fleet_value(&conn, "publish_acked")
            .map_err(&fail)?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let restored_origins = {
            let mut stmt = conn
                .prepare("SELECT instance, host, last_id, events, losses FROM origins")
                .map_err(&fail)?;
            let rows = stmt
                .query_map([], |r| {
                    let losses: String = r.get(4)?;
                    Ok(OriginMark {
                        instance: r.get(0)?,
                        host: r.get(1)?,
                        last_id: r.get::<_, i64>(2)? as u64,
                        events: r.get::<_, i64>(3)? as u64,
                        // Written by this code as a JSON object of counts; anything else (the
                        // file edited by hand) reads as no losses.
                        losses: serde_json::from_str(&losses).unwrap_or_default(),
                    })
                })
                .map_err(&fail)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(&fail)?
        };
        let (oldest, newest) = read::oldest_newest(&conn).map_err(|e| OpenError::Sqlite {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
        let events = read::live_count(&conn).map_err(|e| OpenError::Sqlite {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
        let status = DiskStatus {
            path: path.to_owned(),
            events,
            bytes: db_bytes(&conn).map_err(&fail)?,
            oldest_id: oldest,
            newest_id: newest,
            newest_committed_ns: None,
            evicted: meta(&conn, "evicted").map_err(&fail)?,
            stored_total: meta(&conn, "stored_total").map_err(&fail)?,
            lost: meta(&conn, "store_lost").map_err(&fail)?,
            error: None,
            retention: Some(RetentionReport {
                events: retention.events,
                bytes: retention.bytes,
                max_age_seconds: retention.max_age.map(|a| a.as_secs()),
            }),
        };
        let reader = schema::open_for_reading(path)?;
        let shared = Arc::new(Shared {
            attention: AtomicBool::new(false),
            // 1 µs to 10 min at 3 significant digits: the bounds are constants, so this succeeds.
            commit_ns: Mutex::new(
                hdrhistogram::Histogram::new_with_bounds(1_000, 600_000_000_000, 3)
                    .expect("valid histogram bounds"),
            ),
            reserved: AtomicU64::new(new_reserved),
            durable_through: Arc::new(AtomicU64::new(next_id - 1)),
            queued: AtomicUsize::new(0),
            ingest_waits: AtomicU64::new(0),
            ingest_wait_ns: AtomicU64::new(0),
            status: Mutex::new(status),
            failures: Mutex::new(BTreeMap::new()),
        });
        let (tx, rx) = mpsc::channel();
        let mut writer = Writer {
            conn,
            shared: shared.clone(),
            retention,
            last_id: next_id - 1,
            reserved: new_reserved,
            events,
            pending_ledger: PendingLedger::default(),
            pending_gaps: Vec::new(),
            pending_lost: 0,
            last_age_check: None,
            failing: false,
            reserve_failing: false,
        };
        // Apply the limits once now, in case they were lowered since the last run.
        writer.retain();
        let thread = std::thread::Builder::new()
            .name("lpcmon-store".into())
            .spawn(move || writer.run(rx))
            .map_err(|source| OpenError::Io {
                path: path.to_owned(),
                source,
            })?;
        info!(path = %path.display(), events, next_id, "store open");
        Ok(Database {
            shared,
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            reader: Mutex::new(reader),
            next_id,
            restored_producers,
            restored_totals,
            restored_origins,
            restored_publish_acked,
            server_instance,
            restart_gap,
            _lock: lock_file,
        })
    }

    /// The id the first event of this run takes.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// The ids the last run skipped because it crashed, if it did.
    pub fn restart_gap(&self) -> Option<IdGap> {
        self.restart_gap
    }

    /// The highest id that may be published: reserved in a committed transaction.
    pub fn reserved_until(&self) -> u64 {
        self.shared.reserved.load(Ordering::Acquire)
    }

    /// Whether a write error stands: the last commit failed and none has succeeded since.
    pub fn write_failing(&self) -> bool {
        lock(&self.shared.status).error.is_some()
    }

    /// The highest id whose fate on disk is settled (committed, or counted as `store` loss).
    /// The in-memory tail may forget events up to here, and no further.
    pub fn durable_through(&self) -> Arc<AtomicU64> {
        self.shared.durable_through.clone()
    }

    /// Events handed to the writer and not yet settled.
    pub fn queued(&self) -> usize {
        self.shared.queued.load(Ordering::Acquire)
    }

    /// Records that ingest waited `waited` for the writer (for ids or for room in its queue).
    pub fn note_ingest_wait(&self, waited: Duration) {
        self.shared.ingest_waits.fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
        self.shared.ingest_wait_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// How often, and how long in all, ingest has waited for the writer so far: tells a slow
    /// stream that waits on the store from one that only competes with it for the CPU.
    pub fn ingest_waits(&self) -> (u64, Duration) {
        (
            self.shared.ingest_waits.load(Ordering::Relaxed),
            Duration::from_nanos(self.shared.ingest_wait_ns.load(Ordering::Relaxed)),
        )
    }

    /// Each producer's accounting as the last run committed it.
    pub fn restored_producers(&self) -> &[ProducerState] {
        &self.restored_producers
    }

    pub fn restored_totals(&self) -> Option<&str> {
        self.restored_totals.as_deref()
    }

    /// The fleet's high-water marks as the last run committed them.
    pub fn restored_origins(&self) -> &[OriginMark] {
        &self.restored_origins
    }

    /// The fleet publisher's position as the last run saved it (0 if it never published).
    pub fn restored_publish_acked(&self) -> u64 {
        self.restored_publish_acked
    }

    /// This database's server instance (32 hex digits), made when the file was created: a
    /// restart with the same file keeps its ids and so its instance; a new file is a new one.
    pub fn server_instance(&self) -> &str {
        &self.server_instance
    }

    /// Hands events (ids ascending, continuing the previous call's) and the accounting that
    /// describes them to the writer. Never blocks.
    pub fn append(&self, events: Vec<NewEvent>, ledger: Ledger) {
        if ledger.shed > 0 {
            lock(&self.shared.status).lost += ledger.shed;
        }
        let n = events.len();
        self.shared.queued.fetch_add(n, Ordering::AcqRel);
        let guard = lock(&self.tx);
        let Some(tx) = guard.as_ref() else {
            drop(guard);
            self.shared.queued.fetch_sub(n, Ordering::AcqRel);
            return record_failure(&self.shared, &events);
        };
        if let Err(mpsc::SendError(batch)) = tx.send(Batch { events, ledger }) {
            drop(guard);
            self.shared.queued.fetch_sub(n, Ordering::AcqRel);
            error!(
                events = n,
                "the store writer has stopped; counting the events as store loss"
            );
            record_failure(&self.shared, &batch.events);
        }
    }

    /// Saves the fleet publisher's position with the next commit.
    pub fn save_publish_position(&self, acked: u64) {
        self.append(
            Vec::new(),
            Ledger {
                publish_acked: Some(acked),
                ..Ledger::default()
            },
        );
    }

    /// Whether a write error stands or failures wait to be acknowledged: cheap, for checking
    /// on every batch.
    pub fn needs_attention(&self) -> bool {
        self.shared.attention.load(Ordering::Acquire)
    }

    /// Takes the failures and the current error together, and lowers the attention flag if
    /// no error stands.
    pub fn acknowledge(&self) -> (Vec<StoreFailure>, Option<String>) {
        let status = lock(&self.shared.status);
        let failures = self.take_failures();
        if status.error.is_none() {
            self.shared.attention.store(false, Ordering::Release);
        }
        (failures, status.error.clone())
    }

    /// Events that could not be written since the last call, by producer.
    pub fn take_failures(&self) -> Vec<StoreFailure> {
        std::mem::take(&mut *lock(&self.shared.failures))
            .into_iter()
            .map(|(producer, count)| StoreFailure { producer, count })
            .collect()
    }

    pub fn status(&self) -> DiskStatus {
        lock(&self.shared.status).clone()
    }

    /// How long the commits of events have taken so far.
    pub fn commit_latency(&self) -> CommitLatency {
        let h = lock(&self.shared.commit_ns);
        let d = |ns: u64| Duration::from_nanos(ns);
        CommitLatency {
            commits: h.len(),
            p50: d(h.value_at_quantile(0.5)),
            p99: d(h.value_at_quantile(0.99)),
            max: d(h.max()),
        }
    }

    /// The stored event with this id.
    pub fn get(&self, id: u64) -> Result<Option<EventRow>, StoreError> {
        read::get(&lock(&self.reader), id)
    }

    pub fn page(&self, query: &PageQuery<'_>) -> Result<Vec<EventRow>, StoreError> {
        read::page(&lock(&self.reader), query)
    }

    /// Recorded id holes overlapping `after < id <= through`.
    pub fn gaps(&self, after: u64, through: u64) -> Result<Vec<IdGap>, StoreError> {
        read::gaps(&lock(&self.reader), after, through)
    }

    /// Commits everything handed over so far, gives back the unused id reservation and stops
    /// the writer. Later [`append`](Self::append)s count their events as `store` loss.
    pub fn close(&self) {
        drop(lock(&self.tx).take());
        let thread = lock(&self.thread).take();
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            error!("the store writer panicked");
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        self.close();
    }
}

fn record_failure(shared: &Shared, events: &[NewEvent]) {
    // Locks one at a time: `acknowledge` takes them in the other order.
    lock(&shared.status).lost += events.len() as u64;
    let mut failures = lock(&shared.failures);
    for e in events.iter().filter(|e| e.counted) {
        *failures.entry(e.producer.clone()).or_default() += 1;
    }
    drop(failures);
    shared.attention.store(true, Ordering::Release);
}

/// Accounting not yet committed: the newest record per producer, the newest totals.
#[derive(Default)]
struct PendingLedger {
    producers: BTreeMap<String, ProducerLedger>,
    totals: Option<String>,
    origins: BTreeMap<String, OriginMark>,
    publish_acked: Option<u64>,
}

impl PendingLedger {
    fn merge(&mut self, ledger: Ledger) {
        for p in ledger.producers {
            self.producers.insert(p.instance.clone(), p);
        }
        if ledger.totals.is_some() {
            self.totals = ledger.totals;
        }
        // Running totals: the newest record of an instance holds everything before it.
        for mut o in ledger.origins {
            if let Some(old) = self.origins.get(&o.instance) {
                o.last_id = o.last_id.max(old.last_id);
            }
            self.origins.insert(o.instance.clone(), o);
        }
        if let Some(acked) = ledger.publish_acked {
            self.publish_acked = Some(self.publish_acked.unwrap_or(0).max(acked));
        }
    }

    /// Whether something must be committed even without events.
    fn is_empty(&self) -> bool {
        self.producers.is_empty() && self.origins.is_empty() && self.publish_acked.is_none()
    }
}

struct Writer {
    conn: Connection,
    shared: Arc<Shared>,
    retention: Retention,
    last_id: u64,
    reserved: u64,
    events: u64,
    pending_ledger: PendingLedger,
    /// Ids whose events could not be written, to record as `store` gaps once writing works.
    pending_gaps: Vec<(u64, u64)>,
    pending_lost: u64,
    last_age_check: Option<Instant>,
    failing: bool,
    /// Set while a reservation-only commit fails too, so that is logged once.
    reserve_failing: bool,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Batch>) {
        give_way_to_live_work();
        let mut events: Vec<NewEvent> = Vec::with_capacity(COMMIT_EVENTS);
        let mut open = true;
        while open {
            match rx.recv_timeout(AGE_CHECK) {
                Ok(batch) => self.take(batch, &mut events),
                Err(RecvTimeoutError::Timeout) => {
                    // Idle: apply the age limit, and retry accounting a failed commit left.
                    if self.failing || !self.pending_ledger.is_empty() {
                        self.commit(&mut events);
                    }
                    self.retain();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let deadline = Instant::now() + COMMIT_INTERVAL;
            while events.len() < COMMIT_EVENTS {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(batch) => self.take(batch, &mut events),
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            self.commit(&mut events);
            self.retain();
        }
        // Closing: whatever is still in the channel was drained above (the loop leaves only on
        // disconnect, after the last batch). Commit, then give back the unused reservation.
        self.commit(&mut events);
        self.close();
    }

    fn take(&mut self, batch: Batch, events: &mut Vec<NewEvent>) {
        events.extend(batch.events);
        self.pending_lost += batch.ledger.shed;
        self.pending_ledger.merge(batch.ledger);
    }

    fn write(&mut self, events: &[NewEvent], extend_to: Option<u64>) -> rusqlite::Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        {
            if !events.is_empty() {
                insert_batch(&tx, &batch::encode(events))?;
            }
            let mut producer = tx.prepare_cached(
                "INSERT INTO producers (instance, kind, next_seq, counters) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (instance) DO UPDATE SET kind = ?2, next_seq = ?3, counters = ?4",
            )?;
            for p in self.pending_ledger.producers.values() {
                producer.execute(params![p.instance, p.kind, to_i64(p.next_seq), p.counters])?;
            }
            let mut origin = tx.prepare_cached(
                "INSERT INTO origins (instance, host, last_id, events, losses) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (instance) DO UPDATE SET last_id = max(last_id, ?3), events = ?4, losses = ?5",
            )?;
            for o in self.pending_ledger.origins.values() {
                let losses = serde_json::to_string(&o.losses).unwrap_or_else(|_| "{}".into());
                origin.execute(params![
                    o.instance,
                    o.host,
                    to_i64(o.last_id),
                    to_i64(o.events),
                    losses
                ])?;
            }
            if let Some(acked) = self.pending_ledger.publish_acked {
                set_fleet_value(&tx, "publish_acked", &acked.to_string())?;
            }
            if let Some(totals) = &self.pending_ledger.totals {
                tx.execute(
                    "INSERT INTO totals (key, value) VALUES ('counters', ?1) \
                     ON CONFLICT (key) DO UPDATE SET value = ?1",
                    [totals],
                )?;
            }
            for &(first, last) in &self.pending_gaps {
                tx.execute(
                    "INSERT OR REPLACE INTO id_gaps (first, last, reason) VALUES (?1, ?2, ?3)",
                    params![to_i64(first), to_i64(last), GAP_STORE],
                )?;
            }
            let newest = events.last().map_or(self.last_id, |e| e.id).max(self.last_id);
            let gaps_top = self.pending_gaps.iter().map(|g| g.1).max().unwrap_or(0);
            set_meta(&tx, "last_id", newest.max(gaps_top))?;
            if !events.is_empty() {
                let stored = meta(&tx, "stored_total")?;
                set_meta(&tx, "stored_total", stored + events.len() as u64)?;
            }
            if self.pending_lost > 0 {
                let lost = meta(&tx, "store_lost")?;
                set_meta(&tx, "store_lost", lost + self.pending_lost)?;
            }
            if let Some(reserved) = extend_to {
                set_meta(&tx, "reserved_until", reserved)?;
            }
        }
        tx.commit()
    }

    fn commit(&mut self, events: &mut Vec<NewEvent>) {
        let newest = events.last().map(|e| e.id);
        // Ids of failed batches count as used: after an outage the reservation moves on past
        // them in the first commit that succeeds.
        let gaps_top = self.pending_gaps.iter().map(|g| g.1).max().unwrap_or(0);
        let top = newest.unwrap_or(self.last_id).max(self.last_id).max(gaps_top);
        let extend_to = (top + ID_BLOCK / 2 > self.reserved).then_some(top + ID_BLOCK);
        if extend_to.is_some() {
            let _ = self.conn.pragma_update(None, "synchronous", "FULL");
        }
        let started = Instant::now();
        let result = self.write(events, extend_to);
        if result.is_ok() && !events.is_empty() {
            let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            lock(&self.shared.commit_ns).saturating_record(ns);
        }
        if result.is_err() && !self.conn.is_autocommit() {
            // The transaction's drop tried to roll back; if that failed too (a full disk can
            // fail it), the connection is still inside the transaction and every later commit
            // would fail. Roll back explicitly so writing can resume.
            if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                warn!(error = %e, "the store could not roll back a failed commit; will retry");
            }
        }
        if extend_to.is_some() {
            let _ = self.conn.pragma_update(None, "synchronous", "NORMAL");
        }
        let n = events.len() as u64;
        match result {
            Ok(()) => {
                if self.failing {
                    info!("the store is writing again");
                    self.failing = false;
                    self.reserve_failing = false;
                }
                self.last_id = top;
                self.pending_gaps.clear();
                self.pending_lost = 0;
                self.pending_ledger = PendingLedger::default();
                self.events += n;
                if let Some(r) = extend_to {
                    self.reserved = r;
                    self.shared.reserved.store(r, Ordering::Release);
                }
                let bytes = db_bytes(&self.conn).unwrap_or(0);
                let mut status = lock(&self.shared.status);
                if status.error.is_some() {
                    // Up until the ingest task has seen the error go and cleared its notice.
                    self.shared.attention.store(true, Ordering::Release);
                }
                status.error = None;
                status.events = self.events;
                status.bytes = bytes;
                status.stored_total += n;
                if n > 0 {
                    status.oldest_id.get_or_insert(events[0].id);
                    status.newest_id = newest;
                    status.newest_committed_ns = Some(wall_ns());
                }
            }
            Err(e) => {
                let message = if is_disk_full(&e) {
                    format!(
                        "the store cannot write to {}: the disk is full ({e}); events are kept in \
                         memory only and counted as `store` loss until space is freed",
                        lock(&self.shared.status).path.display()
                    )
                } else {
                    format!(
                        "the store cannot write to {} ({e}); events are kept in memory only and \
                         counted as `store` loss until writing works again",
                        lock(&self.shared.status).path.display()
                    )
                };
                if !self.failing {
                    error!("{message}");
                    self.failing = true;
                }
                if let (Some(first), Some(last)) = (events.first(), events.last()) {
                    self.pending_gaps.push((first.id, last.id));
                }
                self.pending_lost += n;
                record_failure(&self.shared, events);
                lock(&self.shared.status).error = Some(message);
                if extend_to.is_some() {
                    self.reserve_only(top + ID_BLOCK);
                }
            }
        }
        if let Some(newest) = newest {
            self.shared.durable_through.fetch_max(newest, Ordering::AcqRel);
        }
        self.shared.queued.fetch_sub(events.len(), Ordering::AcqRel);
        events.clear();
    }

    /// While events cannot be written, still moves the id reservation on, alone in a one-page
    /// transaction: that often succeeds on a full disk (the write-ahead log reuses the space
    /// the failed commit had taken), so ingest goes on publishing, and what cannot be written
    /// is counted as `store` loss with ids (a `store` gap). On a disk full to the last page it
    /// fails too; then, once the reserved ids are used up, ingest counts what arrives as
    /// `store` loss without ids ([`Ledger::shed`]) until a commit succeeds. If the writer
    /// crashes before it can write again, the next start records the reserved ids as a
    /// `restart` gap, as for any crash.
    fn reserve_only(&mut self, reserve_to: u64) {
        let result = (|| -> rusqlite::Result<()> {
            self.conn.pragma_update(None, "synchronous", "FULL")?;
            let tx = self.conn.unchecked_transaction()?;
            set_meta(&tx, "reserved_until", reserve_to)?;
            tx.commit()
        })();
        if result.is_err() && !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        let _ = self.conn.pragma_update(None, "synchronous", "NORMAL");
        match result {
            Ok(()) => {
                self.reserve_failing = false;
                self.reserved = reserve_to;
                self.shared.reserved.store(reserve_to, Ordering::Release);
            }
            Err(e) if !self.reserve_failing => {
                self.reserve_failing = true;
                warn!(
                    error = %e,
                    "the store cannot extend its id reservation either (no room at all): once the \
                     reserved ids are used up, events are counted as `store` loss without ids \
                     until writing works again"
                );
            }
            Err(_) => {}
        }
    }

    /// Deletes the oldest events, a batch per transaction, until every limit holds, then
    /// returns the freed pages to the file system.
    fn retain(&mut self) {
        if self.failing {
            return;
        }
        let age_due =
            self.retention.max_age.is_some() && self.last_age_check.is_none_or(|t| t.elapsed() >= AGE_CHECK);
        let cutoff = match self.retention.max_age {
            Some(age) if age_due => {
                self.last_age_check = Some(Instant::now());
                let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
                Some(now.saturating_sub(age).as_nanos() as u64)
            }
            _ => None,
        };
        let mut deleted_any = false;
        let mut bytes_before = u64::MAX;
        loop {
            let result = self.retain_step(cutoff);
            let bytes_now = db_bytes(&self.conn).unwrap_or(0);
            match result {
                Ok(0) => break,
                // Over the byte limit only by what the full-text index has not merged away
                // yet: stop rather than delete everything; the next commit merges more.
                Ok(n)
                    if bytes_now >= bytes_before
                        && self.events.saturating_sub(n) <= self.retention.events =>
                {
                    deleted_any = true;
                    self.events -= n;
                    let mut status = lock(&self.shared.status);
                    status.evicted += n;
                    status.events = self.events;
                    break;
                }
                Ok(n) => {
                    deleted_any = true;
                    bytes_before = bytes_now;
                    self.events -= n;
                    let mut status = lock(&self.shared.status);
                    status.evicted += n;
                    status.events = self.events;
                }
                Err(e) => {
                    warn!(error = %e, "store retention failed; will retry");
                    break;
                }
            }
        }
        if deleted_any {
            let (oldest, _) = read::oldest_newest(&self.conn).unwrap_or_default();
            let bytes = db_bytes(&self.conn).unwrap_or(0);
            let mut status = lock(&self.shared.status);
            status.oldest_id = oldest;
            status.bytes = bytes;
        }
    }

    /// One retention step on the oldest batch: deletes it whole, or (for the count and age
    /// limits) only its oldest events by moving the retention mark. How many events it deleted.
    fn retain_step(&mut self, cutoff: Option<u64>) -> Result<u64, StoreError> {
        if self.events == 0 {
            return Ok(0);
        }
        let over_count = self.events.saturating_sub(self.retention.events);
        let over_bytes = db_bytes(&self.conn)? > self.retention.bytes;
        if over_count == 0 && !over_bytes && cutoff.is_none() {
            return Ok(0);
        }
        let Some(oldest) = read::oldest_batch(&self.conn)? else {
            return Ok(0);
        };
        let rows = Rows::decode(&oldest.rows).map_err(read::malformed)?;
        let live_from = rows.first_at_or_after(oldest.first_kept);
        let live = (rows.len() - live_from) as u64;
        let aged = match cutoff {
            Some(cutoff) => rows
                .entries()
                .skip(live_from)
                .take_while(|e| e.time_ns < cutoff)
                .count() as u64,
            None => 0,
        };
        let n = over_count.max(aged);
        let tx = self.conn.unchecked_transaction()?;
        let deleted = if over_bytes || n >= live {
            tx.execute(
                "INSERT INTO batches_fts (batches_fts, rowid, search) \
                 SELECT 'delete', first_id, search FROM batches WHERE first_id = ?1",
                [to_i64(oldest.first_id)],
            )?;
            {
                let mut key = tx.prepare_cached("DELETE FROM batch_keys WHERE key = ?1 AND first_id = ?2")?;
                for k in rows.keys() {
                    key.execute(params![k, to_i64(oldest.first_id)])?;
                }
            }
            tx.execute(
                "DELETE FROM batches WHERE first_id = ?1",
                [to_i64(oldest.first_id)],
            )?;
            set_meta(&tx, "first_kept", oldest.last_id + 1)?;
            live
        } else if n > 0 {
            set_meta(&tx, "first_kept", rows.id(live_from + n as usize))?;
            n
        } else {
            return Ok(0);
        };
        let evicted = meta(&tx, "evicted")?;
        set_meta(&tx, "evicted", evicted + deleted)?;
        tx.commit()?;
        if over_bytes {
            // Each step of the pragma returns one freed page to the file system.
            let mut vacuum = self.conn.prepare_cached("PRAGMA incremental_vacuum")?;
            let mut pages = vacuum.query([])?;
            while pages.next()?.is_some() {}
        }
        Ok(deleted)
    }

    fn close(&mut self) {
        self.last_age_check = None;
        self.retain();
        // Give back the ids reserved beyond the last one used, so a clean restart has no gap.
        let result = (|| -> rusqlite::Result<()> {
            self.conn.pragma_update(None, "synchronous", "FULL")?;
            set_meta(&self.conn, "reserved_until", self.last_id)?;
            self.conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            Ok(())
        })();
        match result {
            Ok(()) => info!(last_id = self.last_id, events = self.events, "store closed"),
            Err(e) => warn!(error = %e, "store closed without giving back its id reservation"),
        }
        self.shared.durable_through.store(u64::MAX, Ordering::Release);
    }
}

/// How much the writer thread gives way on Linux: its nice value (0 to 19, higher gives more).
#[cfg(target_os = "linux")]
const WRITER_NICE: libc::c_int = 5;

/// Lowers the calling thread (the writer) below ingest and the HTTP service: on two busy cores
/// a commit (milliseconds of CPU) otherwise delays live streams behind it. `SCHED_BATCH` keeps
/// the writer from preempting them when it wakes, and a nice value gives it a smaller share
/// while they want the CPU. It still gets what they leave, and ingest waits for it (so it
/// cannot starve) once it falls [`MAX_QUEUED`] events behind. Elsewhere (Windows) the writer
/// runs at normal priority.
#[cfg(target_os = "linux")]
fn give_way_to_live_work() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 names the calling thread, and `param` is a valid `sched_param` that the
    // call only reads.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
        warn!(error = %std::io::Error::last_os_error(), "the store writer stays at normal scheduling");
    }
    // SAFETY: a plain system call; on Linux `PRIO_PROCESS` with 0 names the calling thread
    // (nice values are per thread), so only the writer changes.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, WRITER_NICE) } != 0 {
        warn!(error = %std::io::Error::last_os_error(), "the store writer keeps its nice value");
    }
}

#[cfg(not(target_os = "linux"))]
fn give_way_to_live_work() {}

fn is_disk_full(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::DiskFull))
}
