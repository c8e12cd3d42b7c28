//! One committed batch of events in the form the database keeps it: a row of `batches`.
//!
//! Why batches and not a row per event: a row per event costs SQLite a B-tree insert for the
//! row, one per secondary index and one full-text document, about 20 µs of the writer's CPU
//! per event on the development machine, which held the store to a fifth of in-memory ingest.
//! A batch is one row: the events' JSON side by side in one JSON array (`json`), their distinct
//! search texts (`search`, one full-text document for the batch), and a small binary table of
//! where each event's JSON and search text sit and what it is filtered by (`rows`). The
//! filter index (`batch_keys`) then holds one entry per distinct kind, pid, producer and host of
//! the batch, not one per event. A read finds the candidate batches through those indexes and
//! checks each event of them exactly, so answers are the same as a per-event index gives.
//!
//! This module only encodes and decodes; it does no I/O.
//!
//! `rows` layout (all integers little-endian):
//!
//! ```text
//! u32 string count, then per string: u32 byte length, UTF-8 bytes
//!     (the batch's distinct kinds, producer kinds, producers and hosts)
//! u32 event count, then per event, RECORD bytes:
//!     u64 id, u64 time_ns, u32 pid, u32 flags (bit 0: pid present, bit 1: host present),
//!     u32 kind, u32 producer kind, u32 producer, u32 host (string numbers),
//!     u32 search offset, u32 search length (bytes of `search`),
//!     u32 json offset, u32 json length (bytes of `json`)
//! ```

use std::collections::BTreeSet;

// The writer hashes every event's search text and a few short strings per event; foldhash is
// several times cheaper than std's SipHash there (SipHash and its key compares were an eighth
// of the writer's CPU), and nothing here needs resistance to chosen keys: a batch's texts only
// decide which of them share storage.
use foldhash::{HashMap, HashMapExt, HashSet};
use std::ops::Range;

use crate::writer::NewEvent;

/// Bytes of one event's record in `rows`.
const RECORD: usize = 56;
const PID_PRESENT: u32 = 1;
const HOST_PRESENT: u32 = 2;

/// What the writer inserts for a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EncodedBatch {
    pub first_id: u64,
    pub last_id: u64,
    pub count: u64,
    pub time_min: u64,
    pub time_max: u64,
    /// The distinct search texts, joined by newlines: the batch's full-text document.
    pub search: String,
    /// `[event,event,...]`: every event's JSON, as served.
    pub json: String,
    pub rows: Vec<u8>,
    /// The `batch_keys` entries of the batch.
    pub keys: BTreeSet<String>,
}

/// The `batch_keys` entry of each filterable value. A producer prefix is a range of these.
pub(crate) fn kind_key(kind: &str) -> String {
    format!("kind={kind}")
}
pub(crate) fn pid_key(pid: u32) -> String {
    format!("pid={pid}")
}
pub(crate) fn producer_kind_key(kind: &str) -> String {
    format!("producer_kind={kind}")
}
pub(crate) fn producer_key(instance: &str) -> String {
    format!("producer={instance}")
}
/// `None`: this server's own events.
pub(crate) fn host_key(host: Option<&str>) -> String {
    match host {
        Some(h) => format!("host={h}"),
        None => "host".to_owned(),
    }
}

/// The values of one event that filters select on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Keyed<'a> {
    pub kind: &'a str,
    pub pid: Option<u32>,
    pub producer_kind: &'a str,
    pub producer: &'a str,
    pub host: Option<&'a str>,
}

/// The distinct filter values of a batch, gathered without allocating per event (the writer
/// sees every event through here).
#[derive(Default)]
struct KeySet<'a> {
    kinds: Vec<&'a str>,
    pids: HashSet<u32>,
    producer_kinds: Vec<&'a str>,
    producers: Vec<&'a str>,
    hosts: Vec<Option<&'a str>>,
}

/// Adds `v` unless present: a batch has a handful of kinds, producers and hosts.
fn add<T: PartialEq>(list: &mut Vec<T>, v: T) {
    if !list.contains(&v) {
        list.push(v);
    }
}

impl<'a> KeySet<'a> {
    fn add(&mut self, e: Keyed<'a>) {
        add(&mut self.kinds, e.kind);
        if let Some(pid) = e.pid {
            self.pids.insert(pid);
        }
        add(&mut self.producer_kinds, e.producer_kind);
        add(&mut self.producers, e.producer);
        add(&mut self.hosts, e.host);
    }

    fn keys(&self) -> BTreeSet<String> {
        let kinds = self.kinds.iter().map(|k| kind_key(k));
        let pids = self.pids.iter().map(|&p| pid_key(p));
        let producer_kinds = self.producer_kinds.iter().map(|k| producer_kind_key(k));
        let producers = self.producers.iter().map(|p| producer_key(p));
        let hosts = self.hosts.iter().map(|h| host_key(*h));
        kinds
            .chain(pids)
            .chain(producer_kinds)
            .chain(producers)
            .chain(hosts)
            .collect()
    }
}

/// Numbers the batch's distinct strings in the order they first appear.
#[derive(Default)]
struct Strings<'a> {
    index: HashMap<&'a str, u32>,
    list: Vec<&'a str>,
}

impl<'a> Strings<'a> {
    fn number(&mut self, s: &'a str) -> u32 {
        *self.index.entry(s).or_insert_with(|| {
            self.list.push(s);
            (self.list.len() - 1) as u32
        })
    }
}

fn u32_of(n: usize) -> u32 {
    // A batch is at most a few MiB: the writer commits every 4,096 events.
    u32::try_from(n).expect("a batch stays far below 4 GiB")
}

/// Encodes `events` (ascending ids, at least one) as one batch.
pub(crate) fn encode(events: &[NewEvent]) -> EncodedBatch {
    let mut strings = Strings::default();
    let mut searches: HashMap<&str, (u32, u32)> = HashMap::new();
    // Consecutive events often carry the same text: compare with the last one before hashing.
    let mut previous: Option<(&str, (u32, u32))> = None;
    let mut search = String::new();
    let json_len: usize = events.iter().map(|e| e.json.get().len() + 1).sum();
    let mut json = String::with_capacity(json_len + 1);
    let mut records = Vec::with_capacity(events.len() * RECORD);
    let mut keys = KeySet::default();
    json.push('[');
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        let json_at = json.len();
        json.push_str(e.json.get());
        let text: &str = &e.search;
        let (search_at, search_len) = if text.is_empty() {
            (0, 0)
        } else if let Some((_, at)) = previous.filter(|(last, _)| *last == text) {
            at
        } else {
            let at = *searches.entry(text).or_insert_with(|| {
                if !search.is_empty() {
                    search.push('\n');
                }
                let at = search.len();
                search.push_str(text);
                (u32_of(at), u32_of(text.len()))
            });
            previous = Some((text, at));
            at
        };
        let mut flags = 0;
        if e.pid.is_some() {
            flags |= PID_PRESENT;
        }
        if e.host.is_some() {
            flags |= HOST_PRESENT;
        }
        let host = e.host.as_deref().map_or(0, |h| strings.number(h));
        records.extend_from_slice(&e.id.to_le_bytes());
        records.extend_from_slice(&e.time_ns.to_le_bytes());
        for v in [
            e.pid.unwrap_or(0),
            flags,
            strings.number(e.kind),
            strings.number(e.producer_kind),
            strings.number(&e.producer),
            host,
            search_at,
            search_len,
            u32_of(json_at),
            u32_of(e.json.get().len()),
        ] {
            records.extend_from_slice(&v.to_le_bytes());
        }
        keys.add(Keyed {
            kind: e.kind,
            pid: e.pid,
            producer_kind: e.producer_kind,
            producer: &e.producer,
            host: e.host.as_deref(),
        });
    }
    json.push(']');
    let table_len: usize = strings.list.iter().map(|s| 4 + s.len()).sum();
    let mut rows = Vec::with_capacity(8 + table_len + records.len());
    rows.extend_from_slice(&u32_of(strings.list.len()).to_le_bytes());
    for s in &strings.list {
        rows.extend_from_slice(&u32_of(s.len()).to_le_bytes());
        rows.extend_from_slice(s.as_bytes());
    }
    rows.extend_from_slice(&u32_of(events.len()).to_le_bytes());
    rows.extend_from_slice(&records);
    let times = events.iter().map(|e| e.time_ns);
    EncodedBatch {
        first_id: events.first().map_or(0, |e| e.id),
        last_id: events.last().map_or(0, |e| e.id),
        count: events.len() as u64,
        time_min: times.clone().min().unwrap_or(0),
        time_max: times.max().unwrap_or(0),
        search,
        json,
        rows,
        keys: keys.keys(),
    }
}

/// A `rows` value that does not follow the layout above: the file was damaged or written by
/// something else.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a batch's `rows` value is malformed (at byte {at})")]
pub(crate) struct Malformed {
    at: usize,
}

/// One event of a decoded batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry<'a> {
    pub id: u64,
    pub time_ns: u64,
    pub keyed: Keyed<'a>,
    pub search: Range<usize>,
    pub json: Range<usize>,
}

/// A decoded `rows` value: borrowed from it, nothing copied.
#[derive(Debug)]
pub(crate) struct Rows<'a> {
    strings: Vec<&'a str>,
    records: &'a [u8],
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or(Malformed { at: self.at })?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, Malformed> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes([
        b[at],
        b[at + 1],
        b[at + 2],
        b[at + 3],
        b[at + 4],
        b[at + 5],
        b[at + 6],
        b[at + 7],
    ])
}

impl<'a> Rows<'a> {
    pub fn decode(bytes: &'a [u8]) -> Result<Self, Malformed> {
        let mut c = Cursor { bytes, at: 0 };
        let n = c.u32()? as usize;
        let mut strings = Vec::with_capacity(n.min(bytes.len() / 4));
        for _ in 0..n {
            let len = c.u32()? as usize;
            let at = c.at;
            let s = std::str::from_utf8(c.take(len)?).map_err(|_| Malformed { at })?;
            strings.push(s);
        }
        let count = c.u32()? as usize;
        let at = c.at;
        let records = c.take(count.checked_mul(RECORD).ok_or(Malformed { at })?)?;
        if c.at != bytes.len() {
            return Err(Malformed { at: c.at });
        }
        let rows = Rows { strings, records };
        // Check every string number once, so `entry` cannot fail.
        for i in 0..count {
            let r = &records[i * RECORD..];
            let flags = le_u32(r, 20);
            for (field, used) in [
                (24, true),
                (28, true),
                (32, true),
                (36, flags & HOST_PRESENT != 0),
            ] {
                if used && le_u32(r, field) as usize >= rows.strings.len() {
                    return Err(Malformed {
                        at: at + i * RECORD + field,
                    });
                }
            }
        }
        Ok(rows)
    }

    pub fn len(&self) -> usize {
        self.records.len() / RECORD
    }

    /// The `i`th event, in id order.
    pub fn entry(&self, i: usize) -> Entry<'a> {
        let r = &self.records[i * RECORD..(i + 1) * RECORD];
        let flags = le_u32(r, 20);
        let string = |at: usize| self.strings[le_u32(r, at) as usize];
        let range = |at: usize| {
            let start = le_u32(r, at) as usize;
            start..start + le_u32(r, at + 4) as usize
        };
        Entry {
            id: le_u64(r, 0),
            time_ns: le_u64(r, 8),
            keyed: Keyed {
                kind: string(24),
                pid: (flags & PID_PRESENT != 0).then(|| le_u32(r, 16)),
                producer_kind: string(28),
                producer: string(32),
                host: (flags & HOST_PRESENT != 0).then(|| string(36)),
            },
            search: range(40),
            json: range(48),
        }
    }

    /// The index of the first event whose id is `id` or more (`len()` if none): where the
    /// events a retention mark keeps begin. Ids ascend within a batch.
    pub fn first_at_or_after(&self, id: u64) -> usize {
        (0..self.len()).find(|&i| self.id(i) >= id).unwrap_or(self.len())
    }

    /// The id of the `i`th event, without the rest.
    pub fn id(&self, i: usize) -> u64 {
        le_u64(self.records, i * RECORD)
    }

    pub fn entries(&self) -> impl DoubleEndedIterator<Item = Entry<'a>> + '_ {
        (0..self.len()).map(|i| self.entry(i))
    }

    /// The `batch_keys` entries of the batch: what deleting it must remove.
    pub fn keys(&self) -> BTreeSet<String> {
        let mut keys = KeySet::default();
        for e in self.entries() {
            keys.add(e.keyed);
        }
        keys.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn event(id: u64, kind: &'static str, pid: Option<u32>, host: Option<&str>, search: &str) -> NewEvent {
        NewEvent {
            id,
            time_ns: 1_000 * id,
            kind,
            pid,
            producer_kind: "loadgen",
            producer: Arc::from(format!("{:032x}", id % 3).as_str()),
            host: host.map(Arc::from),
            search: Arc::from(search),
            json: Arc::from(
                serde_json::value::RawValue::from_string(format!(r#"{{"id":{id},"s":"{search}"}}"#)).unwrap(),
            ),
            counted: true,
        }
    }

    #[test]
    fn a_batch_is_a_json_array_and_shares_repeated_search_texts() {
        let events = vec![
            event(7, "process.exec", Some(10), None, "/bin/sh"),
            event(8, "loss", None, Some("web"), ""),
            event(9, "process.exec", Some(11), None, "/bin/sh"),
            event(11, "process.exit", Some(10), None, "/usr/bin/ärger"),
        ];
        let b = encode(&events);
        assert_eq!((b.first_id, b.last_id, b.count), (7, 11, 4));
        assert_eq!((b.time_min, b.time_max), (7_000, 11_000));
        assert_eq!(b.search, "/bin/sh\n/usr/bin/ärger");
        let array: Vec<serde_json::Value> = serde_json::from_str(&b.json).unwrap();
        assert_eq!(array.len(), 4);
        assert_eq!(array[3]["id"], 11);
        assert!(b.keys.contains("pid=11") && b.keys.contains("host=web") && b.keys.contains("host"));
        assert!(!b.keys.contains("pid=12"));

        let rows = Rows::decode(&b.rows).unwrap();
        assert_eq!(rows.len(), 4);
        assert_eq!(rows.keys(), b.keys);
        let e = rows.entry(3);
        assert_eq!(
            (e.id, e.time_ns, e.keyed.kind, e.keyed.pid),
            (11, 11_000, "process.exit", Some(10))
        );
        assert_eq!(&b.search[e.search.clone()], "/usr/bin/ärger");
        assert_eq!(&b.json[e.json], events[3].json.get());
        let loss = rows.entry(1);
        assert_eq!(
            (loss.keyed.pid, loss.keyed.host, loss.search),
            (None, Some("web"), 0..0)
        );
        assert_eq!(rows.entry(0).search, rows.entry(2).search);
    }

    #[test]
    fn a_damaged_rows_value_is_refused_not_read_out_of_bounds() {
        let b = encode(&[event(1, "process.exec", Some(1), None, "x")]);
        for cut in 0..b.rows.len() {
            assert!(Rows::decode(&b.rows[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = b.rows.clone();
        // The kind's string number of the only record: past the string table.
        let kind_at = bad.len() - RECORD + 24;
        bad[kind_at] = 99;
        assert!(Rows::decode(&bad).is_err());
        let mut longer = b.rows;
        longer.push(0);
        assert!(Rows::decode(&longer).is_err());
    }

    proptest! {
        #[test]
        fn every_event_decodes_as_it_was_encoded(
            specs in proptest::collection::vec(
                (0u32..4, proptest::option::of(0u32..5), proptest::option::of("[a-c]{0,3}"), "[a-zé ]{0,12}"),
                1..40,
            ),
        ) {
            const KINDS: [&str; 4] = ["process.exec", "process.exit", "loss", "image.load"];
            let events: Vec<NewEvent> = specs
                .iter()
                .enumerate()
                .map(|(i, (k, pid, host, search))| {
                    event(i as u64 * 2 + 1, KINDS[*k as usize], *pid, host.as_deref(), search)
                })
                .collect();
            let b = encode(&events);
            let rows = Rows::decode(&b.rows).unwrap();
            prop_assert_eq!(rows.len(), events.len());
            for (i, (e, r)) in events.iter().zip(rows.entries()).enumerate() {
                prop_assert_eq!(r.id, e.id);
                prop_assert_eq!(rows.id(i), e.id);
                prop_assert_eq!(r.time_ns, e.time_ns);
                prop_assert_eq!(r.keyed.kind, e.kind);
                prop_assert_eq!(r.keyed.pid, e.pid);
                prop_assert_eq!(r.keyed.producer, &*e.producer);
                prop_assert_eq!(r.keyed.host, e.host.as_deref());
                prop_assert_eq!(&b.search[r.search], &*e.search);
                prop_assert_eq!(&b.json[r.json], e.json.get());
            }
            prop_assert_eq!(rows.keys(), b.keys);
        }
    }
}
