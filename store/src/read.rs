//! Reading events back: single events, filtered keyset pages, and the holes in the id sequence.

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params};

use crate::batch::{self, Entry, Rows};
use crate::error::StoreError;

/// One stored event as the database holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub id: u64,
    pub time_ns: u64,
    pub kind: String,
    pub pid: Option<u32>,
    pub producer_kind: String,
    /// The producer instance, 32 lowercase hex digits.
    pub producer: String,
    /// The origin host of an imported event; `None` for this server's own.
    pub host: Option<String>,
    pub json: String,
}

/// Which events a page wants; the same meaning as the HTTP API's query parameters. Every field
/// given must match; several kinds are alternatives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub kinds: Vec<String>,
    pub pid: Option<u32>,
    pub producer_kind: Option<String>,
    /// Lowercase hex digits the producer instance starts with.
    pub producer_prefix: Option<String>,
    /// A lowercase substring of the event's search text.
    pub q: Option<String>,
    pub host: Option<HostFilter>,
}

/// Which server first stored the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostFilter {
    /// This server (`host` is NULL).
    Own,
    /// Imported from this origin host.
    Origin(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Ascending,
    Descending,
}

/// Events with `after < id <= through` matching `filter`, at most `limit`, in `order`.
#[derive(Debug, Clone)]
pub struct PageQuery<'a> {
    pub after: u64,
    pub through: u64,
    pub filter: &'a Filter,
    pub limit: usize,
    pub order: Order,
}

/// Ids that name no stored event and never will: skipped after a crash (`restart`), or whose
/// events could not be written (`store`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdGap {
    pub first: u64,
    pub last: u64,
    pub reason: &'static str,
}

pub(crate) const GAP_RESTART: &str = "restart";
pub(crate) const GAP_STORE: &str = "store";

/// SQLite integers are signed; ids and times stay far below `i64::MAX`.
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A batch's `rows` value that cannot be decoded.
pub(crate) fn malformed(e: crate::batch::Malformed) -> StoreError {
    StoreError::Malformed(e.to_string())
}

/// The retention mark: events below it are deleted, though their batch may remain.
fn first_kept(conn: &Connection) -> rusqlite::Result<u64> {
    conn.prepare_cached("SELECT value FROM meta WHERE key = 'first_kept'")?
        .query_row([], |r| r.get::<_, i64>(0))
        .map(|v| v as u64)
}

/// Whether a decoded event passes every part of `filter` (the batch indexes only narrow the
/// batches; this is the exact test).
fn matches(filter: &Filter, e: &Entry<'_>, search: &str) -> bool {
    let k = &e.keyed;
    (filter.kinds.is_empty() || filter.kinds.iter().any(|kind| kind == k.kind))
        && filter.pid.is_none_or(|pid| k.pid == Some(pid))
        && filter
            .producer_kind
            .as_deref()
            .is_none_or(|pk| pk == k.producer_kind)
        && filter
            .producer_prefix
            .as_deref()
            .is_none_or(|p| k.producer.starts_with(p))
        && match &filter.host {
            None => true,
            Some(HostFilter::Own) => k.host.is_none(),
            Some(HostFilter::Origin(h)) => k.host == Some(h.as_str()),
        }
        && filter
            .q
            .as_deref()
            .is_none_or(|q| search.get(e.search.clone()).is_some_and(|s| s.contains(q)))
}

fn event_row(e: &Entry<'_>, json: String) -> EventRow {
    EventRow {
        id: e.id,
        time_ns: e.time_ns,
        kind: e.keyed.kind.to_owned(),
        pid: e.keyed.pid,
        producer_kind: e.keyed.producer_kind.to_owned(),
        producer: e.keyed.producer.to_owned(),
        host: e.keyed.host.map(str::to_owned),
        json,
    }
}

/// Reads `range` of a batch's `json` without loading the rest of it.
fn json_slice(conn: &Connection, first_id: u64, range: std::ops::Range<usize>) -> Result<String, StoreError> {
    let blob = conn.blob_open(rusqlite::MAIN_DB, "batches", "json", to_i64(first_id), true)?;
    let mut buf = vec![0u8; range.len()];
    blob.read_at_exact(&mut buf, range.start)?;
    String::from_utf8(buf).map_err(|e| StoreError::Malformed(format!("an event's JSON is not UTF-8: {e}")))
}

pub(crate) fn get(conn: &Connection, id: u64) -> Result<Option<EventRow>, StoreError> {
    if id < first_kept(conn)? {
        return Ok(None);
    }
    let mut stmt = conn.prepare_cached(
        "SELECT first_id, rows FROM batches WHERE first_id <= ?1 AND last_id >= ?1 \
         ORDER BY first_id DESC LIMIT 1",
    )?;
    let mut rows = stmt.query([to_i64(id)])?;
    let Some(row) = rows.next()? else {
        return Ok(None);
    };
    let first_id = row.get::<_, i64>(0)? as u64;
    let decoded = Rows::decode(row.get_ref(1)?.as_blob()?).map_err(malformed)?;
    let Some(e) = decoded.entries().find(|e| e.id == id) else {
        return Ok(None);
    };
    let json = json_slice(conn, first_id, e.json.clone())?;
    Ok(Some(event_row(&e, json)))
}

/// Appends ` AND b.first_id IN (batches holding one of `keys`)`.
fn keys_sql(keys: &[String], sql: &mut String, values: &mut Vec<Value>) {
    sql.push_str(" AND b.first_id IN (SELECT first_id FROM batch_keys WHERE key IN (");
    for (i, k) in keys.iter().enumerate() {
        sql.push_str(if i == 0 { "?" } else { ",?" });
        values.push(Value::Text(k.clone()));
    }
    sql.push_str("))");
}

/// The producer keys a prefix names: one index seek per distinct producer, not a scan of
/// every batch's entry.
fn producer_keys(conn: &Connection, prefix: &str) -> rusqlite::Result<Vec<String>> {
    let low = batch::producer_key(prefix);
    // Instances are lowercase hex digits, all below 'g'.
    let high = format!("{low}g");
    let mut stmt =
        conn.prepare_cached("SELECT key FROM batch_keys WHERE key >= ?1 AND key < ?2 ORDER BY key LIMIT 1")?;
    let mut keys = Vec::new();
    let mut from = low;
    while let Some(key) = stmt
        .query_row(params![from, high], |r| r.get::<_, String>(0))
        .optional()?
    {
        // The next candidate sorts after every entry of this key.
        from = format!("{key}\u{1}");
        keys.push(key);
    }
    Ok(keys)
}

/// Narrows the batches to those that may hold a match, by the filter indexes and the full-text
/// index. `None`: no batch can match.
fn filter_sql(
    conn: &Connection,
    filter: &Filter,
    sql: &mut String,
    values: &mut Vec<Value>,
) -> rusqlite::Result<Option<()>> {
    if !filter.kinds.is_empty() {
        let keys: Vec<String> = filter.kinds.iter().map(|k| batch::kind_key(k)).collect();
        keys_sql(&keys, sql, values);
    }
    if let Some(pid) = filter.pid {
        keys_sql(&[batch::pid_key(pid)], sql, values);
    }
    if let Some(kind) = &filter.producer_kind {
        keys_sql(&[batch::producer_kind_key(kind)], sql, values);
    }
    if let Some(prefix) = &filter.producer_prefix {
        let keys = producer_keys(conn, prefix)?;
        if keys.is_empty() {
            return Ok(None);
        }
        keys_sql(&keys, sql, values);
    }
    match &filter.host {
        None => {}
        Some(HostFilter::Own) => keys_sql(&[batch::host_key(None)], sql, values),
        Some(HostFilter::Origin(host)) => keys_sql(&[batch::host_key(Some(host))], sql, values),
    }
    if let Some(all_trigrams) = filter.q.as_deref().and_then(trigram_match) {
        // The trigram index finds the batches whose texts hold every trigram; the exact
        // substring test runs per event (and alone serves `q` under three characters).
        sql.push_str(" AND b.first_id IN (SELECT rowid FROM batches_fts WHERE batches_fts MATCH ?)");
        values.push(Value::Text(all_trigrams));
    }
    Ok(Some(()))
}

/// An FTS5 query for the documents holding every trigram of `q` (`None` under three
/// characters). The index keeps no positions (`detail = none`), so it cannot match the
/// substring as a phrase: this finds a superset (the trigrams in any order), which the exact
/// test then narrows to the matches.
fn trigram_match(q: &str) -> Option<String> {
    let chars: Vec<char> = q.chars().collect();
    let mut seen = std::collections::BTreeSet::new();
    let mut expr = String::new();
    for window in chars.windows(3) {
        let trigram: String = window.iter().collect();
        if !seen.insert(trigram.clone()) {
            continue;
        }
        if !expr.is_empty() {
            expr.push_str(" AND ");
        }
        expr.push('"');
        expr.push_str(&trigram.replace('"', "\"\""));
        expr.push('"');
    }
    (!expr.is_empty()).then_some(expr)
}

pub(crate) fn page(conn: &Connection, query: &PageQuery<'_>) -> Result<Vec<EventRow>, StoreError> {
    let after = query.after.max(first_kept(conn)?.saturating_sub(1));
    if query.limit == 0 || after >= query.through {
        return Ok(Vec::new());
    }
    // Batches hold disjoint, ascending id ranges: the one holding `after + 1` starts at or
    // below it, and every later one above it.
    let low: u64 = conn
        .prepare_cached("SELECT max(first_id) FROM batches WHERE first_id <= ?1")?
        .query_row([to_i64(after + 1)], |r| r.get::<_, Option<i64>>(0))?
        .map_or(0, |v| v as u64);
    let mut sql = String::from(
        // A batch's search texts are read only when `q` needs them.
        if query.filter.q.is_some() {
            "SELECT b.first_id, b.rows, b.search FROM batches b WHERE b.first_id >= ? AND b.first_id <= ?"
        } else {
            "SELECT b.first_id, b.rows, '' FROM batches b WHERE b.first_id >= ? AND b.first_id <= ?"
        },
    );
    let mut values = vec![Value::Integer(to_i64(low)), Value::Integer(to_i64(query.through))];
    if filter_sql(conn, query.filter, &mut sql, &mut values)?.is_none() {
        return Ok(Vec::new());
    }
    sql.push_str(match query.order {
        Order::Ascending => " ORDER BY b.first_id ASC",
        Order::Descending => " ORDER BY b.first_id DESC",
    });
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(values))?;
    let mut found = Vec::new();
    while let Some(row) = rows.next()? {
        let first_id = row.get::<_, i64>(0)? as u64;
        let decoded = Rows::decode(row.get_ref(1)?.as_blob()?).map_err(malformed)?;
        let search = row.get_ref(2)?.as_str()?;
        let in_range =
            |e: &Entry<'_>| e.id > after && e.id <= query.through && matches(query.filter, e, search);
        let hits: Vec<Entry<'_>> = match query.order {
            Order::Ascending => decoded
                .entries()
                .filter(in_range)
                .take(query.limit - found.len())
                .collect(),
            Order::Descending => decoded
                .entries()
                .rev()
                .filter(in_range)
                .take(query.limit - found.len())
                .collect(),
        };
        if hits.is_empty() {
            continue;
        }
        // One read of the span the hits cover, not one per event.
        let start = hits.iter().map(|e| e.json.start).min().unwrap_or(0);
        let end = hits.iter().map(|e| e.json.end).max().unwrap_or(0);
        let span = json_slice(conn, first_id, start..end)?;
        for e in &hits {
            let json = span[e.json.start - start..e.json.end - start].to_owned();
            found.push(event_row(e, json));
        }
        if found.len() >= query.limit {
            break;
        }
    }
    Ok(found)
}

/// The oldest batch and the retention mark, for retention.
pub(crate) struct OldestBatch {
    pub first_id: u64,
    pub last_id: u64,
    pub first_kept: u64,
    pub rows: Vec<u8>,
}

pub(crate) fn oldest_batch(conn: &Connection) -> Result<Option<OldestBatch>, StoreError> {
    let first_kept = first_kept(conn)?;
    Ok(conn
        .prepare_cached("SELECT first_id, last_id, rows FROM batches ORDER BY first_id LIMIT 1")?
        .query_row([], |r| {
            Ok(OldestBatch {
                first_id: r.get::<_, i64>(0)? as u64,
                last_id: r.get::<_, i64>(1)? as u64,
                first_kept,
                rows: r.get(2)?,
            })
        })
        .optional()?)
}

/// How many events are kept: every batch's, less those of the oldest below the retention mark.
pub(crate) fn live_count(conn: &Connection) -> Result<u64, StoreError> {
    let total: i64 = conn.query_row("SELECT coalesce(sum(count), 0) FROM batches", [], |r| r.get(0))?;
    let trimmed = match oldest_batch(conn)? {
        Some(b) => {
            let rows = Rows::decode(&b.rows).map_err(malformed)?;
            rows.first_at_or_after(b.first_kept) as u64
        }
        None => 0,
    };
    Ok(total as u64 - trimmed)
}

/// Recorded holes that overlap `after < id <= through`, ascending.
pub(crate) fn gaps(conn: &Connection, after: u64, through: u64) -> Result<Vec<IdGap>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT first, last, reason FROM id_gaps WHERE last > ?1 AND first <= ?2 ORDER BY first",
    )?;
    let rows = stmt.query_map(params![to_i64(after), to_i64(through)], |r| {
        let reason: String = r.get(2)?;
        Ok(IdGap {
            first: r.get::<_, i64>(0)? as u64,
            last: r.get::<_, i64>(1)? as u64,
            reason: if reason == GAP_STORE {
                GAP_STORE
            } else {
                GAP_RESTART
            },
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The oldest and the newest kept event's id.
pub(crate) fn oldest_newest(conn: &Connection) -> Result<(Option<u64>, Option<u64>), StoreError> {
    let newest: Option<i64> = conn.query_row("SELECT max(last_id) FROM batches", [], |r| r.get(0))?;
    let oldest = match oldest_batch(conn)? {
        Some(b) => {
            let rows = Rows::decode(&b.rows).map_err(malformed)?;
            let first = rows.first_at_or_after(b.first_kept);
            (first < rows.len()).then(|| rows.id(first))
        }
        None => None,
    };
    Ok((oldest, newest.map(|v| v as u64)))
}
