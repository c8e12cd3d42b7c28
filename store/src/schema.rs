//! The schema, its migrations, and the checks a file passes before lpcmon writes to it.

use std::io::Read;
use std::path::Path;

use rusqlite::{Connection, OpenFlags};
use rusqlite_migration::{M, Migrations};

use crate::error::OpenError;

/// `PRAGMA application_id` of lpcmon databases: "LPCM". A file with another id belongs to
/// another program.
pub const APPLICATION_ID: i32 = 0x4C50_434D;

/// Version 1. Described column by column in `docs/store.md`; keep the two in step.
const V1: &str = r#"
CREATE TABLE events (
    id            INTEGER PRIMARY KEY,
    time_ns       INTEGER NOT NULL,
    kind          TEXT    NOT NULL,
    pid           INTEGER,
    producer_kind TEXT    NOT NULL,
    producer      TEXT    NOT NULL,
    search        TEXT    NOT NULL,
    json          TEXT    NOT NULL
);
CREATE INDEX events_kind ON events (kind, id);
CREATE INDEX events_pid ON events (pid, id) WHERE pid IS NOT NULL;
CREATE INDEX events_producer ON events (producer, id);
CREATE INDEX events_producer_kind ON events (producer_kind, id);
CREATE INDEX events_time ON events (time_ns);
CREATE VIRTUAL TABLE events_fts USING fts5 (
    search, content = 'events', content_rowid = 'id', tokenize = 'trigram'
);
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO meta (key, value) VALUES
    ('last_id', 0), ('reserved_until', 0), ('stored_total', 0), ('evicted', 0), ('store_lost', 0);
CREATE TABLE id_gaps (
    first  INTEGER PRIMARY KEY,
    last   INTEGER NOT NULL,
    reason TEXT    NOT NULL
);
CREATE TABLE producers (
    instance TEXT PRIMARY KEY,
    kind     TEXT    NOT NULL,
    next_seq INTEGER NOT NULL,
    counters TEXT    NOT NULL
) WITHOUT ROWID;
CREATE TABLE totals (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
"#;

/// Version 2: the fleet (`serve --publish/--subscribe`, NATS JetStream). Self-contained, so it
/// can be renumbered beside other migrations. Described in `docs/store.md`.
///
/// * `events.host`: the origin host of an imported event; NULL for this server's own events
///   (their host is whatever `--host-name` says now).
/// * `origins`: per origin server instance, the highest origin id stored and how many events
///   and (by stage, JSON) losses were imported from it, committed in the same transaction as
///   the imported events they cover, so a redelivery after a crash is recognised and the
///   hosts panel counts survive restarts.
/// * `fleet`: this database's server instance (the middle of its published message ids) and
///   the publisher's position (every id up to it acknowledged by NATS or counted lost).
const V2_FLEET: &str = r#"
ALTER TABLE events ADD COLUMN host TEXT;
CREATE INDEX events_host ON events (host, id) WHERE host IS NOT NULL;
CREATE TABLE origins (
    instance TEXT PRIMARY KEY,
    host     TEXT    NOT NULL,
    last_id  INTEGER NOT NULL,
    events   INTEGER NOT NULL,
    losses   TEXT    NOT NULL
) WITHOUT ROWID;
CREATE TABLE fleet (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
"#;

/// Version 3: a lighter full-text index. `detail = none` keeps only which rows hold a
/// trigram, not where (a third of the size, and most of the writer's CPU per event);
/// `columnsize = 0` drops the per-row size table that only ranking uses. Phrases are not
/// supported without positions, so `q` asks for every trigram of the substring and `instr` confirms the exact match (see
/// `read::filter_sql`). The index is rebuilt from `events.search` once, at upgrade.
/// `secure-delete` removes a deleted row's entries from the index at once, instead of leaving
/// delete markers until segments merge: retention frees the index's pages as it deletes, so
/// the file stays within `--retain-bytes` (SQLite 3.42 added the option).
/// The `producer_kind` index goes: a handful of kinds, each usually most of the rows, so a
/// scan by id finds a page as fast as the index, which cost a B-tree insert per event.
const V3: &str = r#"
DROP TABLE events_fts;
CREATE VIRTUAL TABLE events_fts USING fts5 (
    search, content = 'events', content_rowid = 'id', tokenize = 'trigram',
    detail = none, columnsize = 0
);
INSERT INTO events_fts (events_fts) VALUES ('rebuild');
INSERT INTO events_fts (events_fts, rank) VALUES ('secure-delete', 1);
DROP INDEX events_producer_kind;
"#;

/// Version 4: events are kept in batches, a row per committed batch instead of a row per event
/// (see `batch.rs` for why and for the `rows` layout). `batch_keys` indexes each batch by its
/// distinct kinds, pids, producer kinds, producers and hosts; `batches_fts` is one trigram
/// document per batch (its distinct search texts); `batches_time` serves the age limit.
/// `meta.first_kept` is the retention mark: events below it are deleted even while the rest of
/// their batch is kept, so the count limit holds exactly. The view `events` shows one row per
/// kept event for `sqlite3` users. [`v4_convert`] moves a version 3 file's events over.
const V4: &str = r#"
CREATE TABLE batches (
    first_id INTEGER PRIMARY KEY,
    last_id  INTEGER NOT NULL,
    count    INTEGER NOT NULL,
    time_min INTEGER NOT NULL,
    time_max INTEGER NOT NULL,
    search   TEXT    NOT NULL,
    json     TEXT    NOT NULL,
    rows     BLOB    NOT NULL
);
CREATE INDEX batches_time ON batches (time_max);
CREATE TABLE batch_keys (
    key      TEXT    NOT NULL,
    first_id INTEGER NOT NULL,
    PRIMARY KEY (key, first_id)
) WITHOUT ROWID;
CREATE VIRTUAL TABLE batches_fts USING fts5 (
    search, content = 'batches', content_rowid = 'first_id', tokenize = 'trigram',
    detail = none, columnsize = 0
);
INSERT INTO batches_fts (batches_fts, rank) VALUES ('secure-delete', 1);
INSERT OR IGNORE INTO meta (key, value) VALUES ('first_kept', 0);
"#;

/// The view `sqlite3` users query: one row per kept event, its columns taken from the JSON.
const EVENTS_VIEW: &str = r#"
CREATE VIEW events AS
SELECT e.value ->> '$.id'                AS id,
       e.value ->> '$.kind'              AS kind,
       e.value ->> '$.time'              AS time,
       e.value ->> '$.received'          AS received,
       e.value ->> '$.process.pid'       AS pid,
       e.value ->> '$.producer.kind'     AS producer_kind,
       e.value ->> '$.producer.instance' AS producer,
       e.value ->> '$.origin.host'       AS host,
       e.value                           AS json
FROM batches b, json_each(b.json) e
WHERE e.value ->> '$.id' >= (SELECT value FROM meta WHERE key = 'first_kept');
"#;

/// A `&'static str` for a kind read back from an old file ([`crate::NewEvent`] holds the
/// API's static names). Kinds are a handful of names, so what is leaked is bounded.
fn intern(name: &str) -> &'static str {
    static NAMES: std::sync::Mutex<std::collections::BTreeSet<&'static str>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut names = NAMES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(known) = names.get(name) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(leaked);
    leaked
}

/// Moves a version 1–3 file's events into batches of [`COMMIT_EVENTS`](crate::COMMIT_EVENTS),
/// in the migration's transaction, then drops the per-event table and puts the view in its
/// place.
fn v4_convert(tx: &rusqlite::Transaction<'_>) -> rusqlite_migration::HookResult {
    let mut after = 0i64;
    loop {
        let events = {
            let mut stmt = tx.prepare(
                "SELECT id, time_ns, kind, pid, producer_kind, producer, host, search, json \
                 FROM events WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?;
            let rows = stmt.query_map(rusqlite::params![after, crate::COMMIT_EVENTS as i64], |r| {
                let json: String = r.get(8)?;
                let json = serde_json::value::RawValue::from_string(json).map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(8, rusqlite::types::Type::Text, e.into())
                })?;
                Ok(crate::NewEvent {
                    id: r.get::<_, i64>(0)? as u64,
                    time_ns: r.get::<_, i64>(1)? as u64,
                    kind: intern(&r.get::<_, String>(2)?),
                    pid: r.get::<_, Option<i64>>(3)?.map(|p| p as u32),
                    producer_kind: intern(&r.get::<_, String>(4)?),
                    producer: r.get::<_, String>(5)?.into(),
                    host: r.get::<_, Option<String>>(6)?.map(Into::into),
                    search: r.get::<_, String>(7)?.into(),
                    json: json.into(),
                    counted: false,
                })
            })?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        let Some(last) = events.last() else { break };
        after = last.id as i64;
        crate::writer::insert_batch(tx, &crate::batch::encode(&events))?;
    }
    tx.execute_batch("DROP TABLE events_fts; DROP TABLE events;")?;
    tx.execute_batch(EVENTS_VIEW)?;
    Ok(())
}

/// The migrations, one per version, in order. Never edit a shipped one: add the next.
const MIGRATIONS: &[&str] = &[V1, V2_FLEET, V3, V4];

fn migrations() -> Migrations<'static> {
    let last = MIGRATIONS.len() - 1;
    Migrations::new(
        MIGRATIONS
            .iter()
            .enumerate()
            .map(|(i, sql)| {
                if i == last {
                    M::up_with_hook(sql, v4_convert)
                } else {
                    M::up(sql)
                }
            })
            .collect(),
    )
}

/// The newest schema version this build knows.
pub fn latest_version() -> i64 {
    // One migration per version, numbered from 1.
    MIGRATIONS.len() as i64
}

const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

fn sqlite_detail(e: &rusqlite::Error) -> String {
    e.to_string()
}

fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

/// Looks at the first bytes: an existing non-empty file must be an SQLite database.
fn check_header(path: &Path) -> Result<(), OpenError> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(OpenError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    let mut header = [0u8; 16];
    let mut read = 0;
    while read < header.len() {
        match file.read(&mut header[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(source) => {
                return Err(OpenError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        }
    }
    if read == 0 {
        // An empty file (e.g. made by `touch`) is a new database.
        return Ok(());
    }
    if read < header.len() || &header != SQLITE_HEADER {
        return Err(OpenError::Foreign {
            path: path.to_owned(),
            detail: "it does not start with the SQLite header".into(),
        });
    }
    Ok(())
}

/// Refuses a schema newer than this build knows.
fn check_version(conn: &Connection, path: &Path) -> Result<(), OpenError> {
    let found: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| OpenError::Sqlite {
            path: path.to_owned(),
            detail: sqlite_detail(&e),
        })?;
    if found > latest_version() {
        return Err(OpenError::Newer {
            path: path.to_owned(),
            found,
            known: latest_version(),
        });
    }
    Ok(())
}

/// Opens the write connection: header, integrity, owner and version checks, then migrations.
pub fn open_for_writing(path: &Path) -> Result<Connection, OpenError> {
    check_header(path)?;
    let fail = |e: rusqlite::Error| {
        if is_corruption(&e) {
            OpenError::Corrupt {
                path: path.to_owned(),
                detail: sqlite_detail(&e),
            }
        } else {
            OpenError::Sqlite {
                path: path.to_owned(),
                detail: sqlite_detail(&e),
            }
        }
    };
    let mut conn = Connection::open(path).map_err(fail)?;
    let app_id: i32 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(fail)?;
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
        .map_err(fail)?;
    let fresh = tables == 0;
    if !fresh && app_id != APPLICATION_ID {
        return Err(OpenError::Foreign {
            path: path.to_owned(),
            detail: format!(
                "it is an SQLite database of another program (application_id {app_id:#x}, \
                 {tables} schema objects)"
            ),
        });
    }
    if !fresh {
        let check: String = conn
            .query_row("PRAGMA quick_check(1)", [], |r| r.get(0))
            .map_err(fail)?;
        if check != "ok" {
            return Err(OpenError::Corrupt {
                path: path.to_owned(),
                detail: format!("integrity check: {check}"),
            });
        }
        check_version(&conn, path)?;
    } else {
        // Must precede the first table, or SQLite ignores it. (16 KiB pages made big batches a
        // fifth cheaper to write, but every small commit then logs four times the bytes, and
        // the write-ahead log grows to 16 MiB between checkpoints: 4 KiB pages stay.)
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
            .map_err(fail)?;
        conn.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(fail)?;
    }
    conn.pragma_update(None, "journal_mode", "WAL").map_err(fail)?;
    // NORMAL is durable against a process crash (kill -9) in WAL mode; commits that extend
    // the id reservation switch to FULL so a power cut cannot roll one back either.
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(fail)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(fail)?;
    // Index pages of recent inserts stay cached (32 MiB) instead of being re-read per batch.
    conn.pragma_update(None, "cache_size", -32_768).map_err(fail)?;
    conn.pragma_update(None, "temp_store", "MEMORY").map_err(fail)?;
    migrations().to_latest(&mut conn).map_err(|e| OpenError::Sqlite {
        path: path.to_owned(),
        detail: format!("schema migration failed: {e}"),
    })?;
    Ok(conn)
}

/// A connection for reading only. `lpcmon export` uses it while a server writes.
pub fn open_for_reading(path: &Path) -> Result<Connection, OpenError> {
    if !path.exists() {
        return Err(OpenError::Io {
            path: path.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
    }
    check_header(path)?;
    let fail = |e: rusqlite::Error| OpenError::Sqlite {
        path: path.to_owned(),
        detail: sqlite_detail(&e),
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(fail)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(fail)?;
    let app_id: i32 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(fail)?;
    if app_id != APPLICATION_ID {
        return Err(OpenError::Foreign {
            path: path.to_owned(),
            detail: format!("application_id {app_id:#x}"),
        });
    }
    check_version(&conn, path)?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_valid_and_numbered() {
        migrations().validate().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let conn = open_for_writing(&dir.path().join("a.db")).unwrap();
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, latest_version());
    }

    /// A file written by the first release (schema version 1: a row per event, the old
    /// full-detail index) opens and upgrades: its events move into batches, `q` finds them
    /// through the new index, the `events` view shows them, and the fleet's tables exist, empty.
    #[test]
    fn a_version_1_file_upgrades() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "auto_vacuum", "INCREMENTAL").unwrap();
            conn.pragma_update(None, "application_id", APPLICATION_ID)
                .unwrap();
            Migrations::new(vec![M::up(V1)]).to_latest(&mut conn).unwrap();
            let v: i64 = conn
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .unwrap();
            assert_eq!(v, 1);
            for (id, search) in [(1, "/usr/bin/true\ntrue --x"), (2, "/bin/bash\nbash -c ls")] {
                let json = format!(
                    r#"{{"id":{id},"kind":"process.exec","process":{{"pid":7}},"producer":{{"kind":"loadgen","instance":"ab"}}}}"#
                );
                conn.execute(
                    "INSERT INTO events (id, time_ns, kind, pid, producer_kind, producer, search, json) \
                     VALUES (?1, 0, 'process.exec', 7, 'loadgen', 'ab', ?2, ?3)",
                    rusqlite::params![id, search, json],
                )
                .unwrap();
                conn.execute(
                    "INSERT INTO events_fts (rowid, search) VALUES (?1, ?2)",
                    rusqlite::params![id, search],
                )
                .unwrap();
            }
        }
        let conn = open_for_writing(&path).unwrap();
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, latest_version());
        let (batches, count): (i64, i64) = conn
            .query_row("SELECT count(*), sum(count) FROM batches", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((batches, count), (1, 2));
        let found: Vec<i64> = conn
            .prepare("SELECT rowid FROM batches_fts WHERE batches_fts MATCH '\"bas\" AND \"ash\"'")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(found, vec![1]);
        let view: Vec<(i64, String, i64, String, Option<String>)> = conn
            .prepare("SELECT id, kind, pid, producer, host FROM events ORDER BY id")
            .unwrap()
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            view,
            vec![
                (1, "process.exec".into(), 7, "ab".into(), None),
                (2, "process.exec".into(), 7, "ab".into(), None)
            ]
        );
        let origins: i64 = conn
            .query_row("SELECT count(*) FROM origins", [], |r| r.get(0))
            .unwrap();
        assert_eq!(origins, 0);
    }
}
