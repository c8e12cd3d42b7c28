//! Reading events back: single events, filtered keyset pages, and the holes in the id sequence.

use rusqlite::types::Value;
use rusqlite::{Connection, Row, params};

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

const COLUMNS: &str = "e.id, e.time_ns, e.kind, e.pid, e.producer_kind, e.producer, e.json, e.host";

/// SQLite integers are signed; ids and times stay far below `i64::MAX`.
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn row(r: &Row<'_>) -> rusqlite::Result<EventRow> {
    Ok(EventRow {
        id: r.get::<_, i64>(0)? as u64,
        time_ns: r.get::<_, i64>(1)? as u64,
        kind: r.get(2)?,
        pid: r.get::<_, Option<i64>>(3)?.map(|p| p as u32),
        producer_kind: r.get(4)?,
        producer: r.get(5)?,
        json: r.get(6)?,
        host: r.get(7)?,
    })
}

pub(crate) fn get(conn: &Connection, id: u64) -> Result<Option<EventRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM events e WHERE e.id = ?1"))?;
    let mut rows = stmt.query_map([to_i64(id)], row)?;
    Ok(rows.next().transpose()?)
}

/// Appends the filter's conditions (and their values) to a `WHERE` clause.
fn filter_sql(filter: &Filter, sql: &mut String, values: &mut Vec<Value>) {
    if !filter.kinds.is_empty() {
        sql.push_str(" AND e.kind IN (");
        for (i, k) in filter.kinds.iter().enumerate() {
            sql.push_str(if i == 0 { "?" } else { ",?" });
            values.push(Value::Text(k.clone()));
        }
        sql.push(')');
    }
    if let Some(pid) = filter.pid {
        sql.push_str(" AND e.pid = ?");
        values.push(Value::Integer(pid.into()));
    }
    if let Some(kind) = &filter.producer_kind {
        sql.push_str(" AND e.producer_kind = ?");
        values.push(Value::Text(kind.clone()));
    }
    if let Some(prefix) = &filter.producer_prefix {
        sql.push_str(" AND substr(e.producer, 1, ?) = ?");
        values.push(Value::Integer(prefix.len() as i64));
        values.push(Value::Text(prefix.clone()));
    }
    match &filter.host {
        None => {}
        Some(HostFilter::Own) => sql.push_str(" AND e.host IS NULL"),
        Some(HostFilter::Origin(host)) => {
            sql.push_str(" AND e.host = ?");
            values.push(Value::Text(host.clone()));
        }
    }
    if let Some(q) = &filter.q {
        // The trigram index finds candidates for three characters or more; `instr` keeps the
        // exact meaning (a substring of the lowercased text), and alone serves shorter ones.
        if let Some(all_trigrams) = trigram_match(q) {
            sql.push_str(" AND e.id IN (SELECT rowid FROM events_fts WHERE events_fts MATCH ?)");
            values.push(Value::Text(all_trigrams));
        }
        sql.push_str(" AND instr(e.search, ?) > 0");
        values.push(Value::Text(q.clone()));
    }
}

/// An FTS5 query for the rows holding every trigram of `q` (`None` under three characters).
/// The index keeps no positions (`detail = none`), so it cannot match the substring as a
/// phrase: this finds a superset (the trigrams in any order), which `instr` then narrows to
/// the exact matches.
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
    if query.limit == 0 || query.after >= query.through {
        return Ok(Vec::new());
    }
    let mut sql = format!("SELECT {COLUMNS} FROM events e WHERE e.id > ? AND e.id <= ?");
    let mut values = vec![
        Value::Integer(to_i64(query.after)),
        Value::Integer(to_i64(query.through)),
    ];
    filter_sql(query.filter, &mut sql, &mut values);
    sql.push_str(match query.order {
        Order::Ascending => " ORDER BY e.id ASC LIMIT ?",
        Order::Descending => " ORDER BY e.id DESC LIMIT ?",
    });
    values.push(Value::Integer(query.limit.min(i64::MAX as usize) as i64));
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(values), row)?;
    Ok(rows.collect::<Result<_, _>>()?)
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

pub(crate) fn oldest_newest(conn: &Connection) -> Result<(Option<u64>, Option<u64>), StoreError> {
    Ok(conn.query_row("SELECT min(id), max(id) FROM events", [], |r| {
        Ok((
            r.get::<_, Option<i64>>(0)?.map(|v| v as u64),
            r.get::<_, Option<i64>>(1)?.map(|v| v as u64),
        ))
    })?)
}
