//! The database on real files: reopening, refusals, filters, retention and export.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lpcmon_store::{
    Database, ExportFormat, Filter, HostFilter, ID_BLOCK, Ledger, NewEvent, Order, OriginMark, PageQuery,
    ProducerLedger, Retention, export,
};

const KEEP_ALL: Retention = Retention {
    events: u64::MAX,
    bytes: u64::MAX,
    max_age: None,
};

fn event(id: u64, kind: &'static str, search: &str) -> NewEvent {
    NewEvent {
        id,
        time_ns: 1_000 + id,
        kind,
        pid: Some(id as u32 % 7),
        producer_kind: "loadgen",
        producer: Arc::from(if id.is_multiple_of(2) { "aa00" } else { "bb00" }),
        // Every fifth event imported from host "web".
        host: id.is_multiple_of(5).then(|| Arc::from("web")),
        search: Arc::from(search),
        json: Arc::from(
            serde_json::value::RawValue::from_string(format!(r#"{{"id":{id},"kind":"{kind}"}}"#)).unwrap(),
        ),
        counted: kind != "loss",
    }
}

fn fill(db: &Database, ids: std::ops::RangeInclusive<u64>) {
    let events = ids
        .map(|id| {
            event(
                id,
                if id.is_multiple_of(3) {
                    "loss"
                } else {
                    "process.exec"
                },
                &format!("/usr/bin/tool{id}"),
            )
        })
        .collect();
    db.append(
        events,
        Ledger {
            producers: vec![ProducerLedger {
                instance: "aa00".into(),
                kind: "loadgen".into(),
                next_seq: 42,
                counters: "{}".into(),
            }],
            totals: Some(r#"{"x":1}"#.into()),
            ..Ledger::default()
        },
    );
}

fn ids(db: &Database, filter: &Filter, order: Order, limit: usize) -> Vec<u64> {
    db.page(&PageQuery {
        after: 0,
        through: u64::MAX >> 1,
        filter,
        limit,
        order,
    })
    .unwrap()
    .into_iter()
    .map(|r| r.id)
    .collect()
}

#[test]
fn a_clean_close_continues_ids_and_restores_accounting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/events.db");
    let db = Database::open(&path, KEEP_ALL).unwrap();
    assert_eq!(db.next_id(), 1);
    assert!(db.restart_gap().is_none());
    fill(&db, 1..=100);
    db.close();
    drop(db);
    let db = Database::open(&path, KEEP_ALL).unwrap();
    assert_eq!(db.next_id(), 101, "a clean close gives back the reservation");
    assert!(db.restart_gap().is_none());
    assert_eq!(db.restored_producers()[0].next_seq, 42);
    assert_eq!(db.restored_totals(), Some(r#"{"x":1}"#));
    assert_eq!(db.status().events, 100);
    assert_eq!(
        db.get(7).unwrap().unwrap().json,
        r#"{"id":7,"kind":"process.exec"}"#
    );
    assert!(db.reserved_until() >= 100 + ID_BLOCK - 1);
}

#[test]
fn filters_match_the_api_meaning() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(&dir.path().join("e.db"), KEEP_ALL).unwrap();
    fill(&db, 1..=30);
    db.close();
    let all = Filter::default();
    assert_eq!(ids(&db, &all, Order::Ascending, 3), vec![1, 2, 3]);
    assert_eq!(ids(&db, &all, Order::Descending, 2), vec![30, 29]);
    let loss = Filter {
        kinds: vec!["loss".into()],
        ..Filter::default()
    };
    assert_eq!(ids(&db, &loss, Order::Ascending, 3), vec![3, 6, 9]);
    let q = Filter {
        q: Some("tool1".into()),
        ..Filter::default()
    };
    assert_eq!(
        ids(&db, &q, Order::Ascending, 100),
        vec![1, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]
    );
    let short = Filter {
        q: Some("l2".into()),
        ..Filter::default()
    };
    assert_eq!(
        ids(&db, &short, Order::Ascending, 100),
        vec![2, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29]
    );
    let quote = Filter {
        q: Some("to\"ol".into()),
        ..Filter::default()
    };
    assert!(ids(&db, &quote, Order::Ascending, 100).is_empty());
    let producer = Filter {
        producer_prefix: Some("bb".into()),
        pid: Some(3),
        ..Filter::default()
    };
    assert_eq!(ids(&db, &producer, Order::Ascending, 100), vec![3, 17]);
}

/// The full-text index keeps no positions, so it finds rows holding every trigram of `q` in
/// any order: only those holding `q` itself may be served.
#[test]
fn q_matches_the_substring_not_its_scattered_trigrams() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(&dir.path().join("e.db"), KEEP_ALL).unwrap();
    let texts = ["abcxbcd", "xabcdx", "bcdabc", "ab", "\"quoted\" abcd"];
    let events = texts
        .iter()
        .zip(1..)
        .map(|(text, id)| event(id, "process.exec", text))
        .collect();
    db.append(events, Ledger::default());
    db.close();
    let q = |q: &str| Filter {
        q: Some(q.into()),
        ..Filter::default()
    };
    assert_eq!(ids(&db, &q("abcd"), Order::Ascending, 100), vec![2, 5]);
    assert_eq!(ids(&db, &q("bcda"), Order::Ascending, 100), vec![3]);
    assert_eq!(ids(&db, &q("\"quo"), Order::Ascending, 100), vec![5]);
    assert_eq!(ids(&db, &q("ab"), Order::Ascending, 100), vec![1, 2, 3, 4, 5]);
    assert_eq!(ids(&db, &q("abcabc"), Order::Ascending, 100), Vec::<u64>::new());
}

#[test]
fn retention_by_count_and_bytes_counts_evictions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.db");
    let db = Database::open(
        &path,
        Retention {
            events: 1000,
            bytes: u64::MAX,
            max_age: None,
        },
    )
    .unwrap();
    fill(&db, 1..=3000);
    db.close();
    let s = db.status();
    assert_eq!((s.events, s.evicted, s.oldest_id), (1000, 2000, Some(2001)));
    drop(db);

    let limit = 2 * 1024 * 1024;
    let db = Database::open(
        &path,
        Retention {
            events: u64::MAX,
            bytes: limit,
            max_age: None,
        },
    )
    .unwrap();
    for chunk in 0..60 {
        let first = 3001 + chunk * 500;
        fill(&db, first..=first + 499);
    }
    db.close();
    let s = db.status();
    let file = std::fs::metadata(&path).unwrap().len();
    assert!(s.bytes <= limit, "{} bytes in use, limit {limit}", s.bytes);
    assert!(file <= limit, "the file is {file} bytes, limit {limit}");
    assert!(s.events > 0 && s.evicted > 2000);
}

#[test]
fn age_retention_deletes_old_events() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(
        &dir.path().join("e.db"),
        Retention {
            events: u64::MAX,
            bytes: u64::MAX,
            max_age: Some(Duration::from_secs(3600)),
        },
    )
    .unwrap();
    // time_ns of 1970: older than an hour.
    fill(&db, 1..=10);
    db.close();
    assert_eq!(db.status().events, 0);
    assert_eq!(db.status().evicted, 10);
}

fn refusal(path: &Path) -> String {
    match Database::open(path, KEEP_ALL) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("{} was accepted", path.display()),
    }
}

#[test]
fn refuses_foreign_corrupt_newer_and_locked_files() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("text.db");
    std::fs::write(&text, "this is not a database at all, just text").unwrap();
    let m = refusal(&text);
    assert!(
        m.contains("not an lpcmon database") && m.contains("--store memory") && m.contains("text.db"),
        "{m}"
    );
    assert_eq!(
        std::fs::read_to_string(&text).unwrap(),
        "this is not a database at all, just text"
    );

    let other = dir.path().join("other.db");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
        .unwrap();
    let m = refusal(&other);
    assert!(m.contains("another program"), "{m}");

    let newer = dir.path().join("newer.db");
    drop(Database::open(&newer, KEEP_ALL).unwrap());
    rusqlite::Connection::open(&newer)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let m = refusal(&newer);
    assert!(
        m.contains("schema version 99")
            && m.contains(&format!("up to {}", lpcmon_store::latest_schema_version())),
        "{m}"
    );

    let corrupt = dir.path().join("corrupt.db");
    let db = Database::open(&corrupt, KEEP_ALL).unwrap();
    fill(&db, 1..=2000);
    db.close();
    drop(db);
    let mut bytes = std::fs::read(&corrupt).unwrap();
    let len = bytes.len();
    for b in &mut bytes[4096..len - 4096] {
        *b = 0x5a;
    }
    std::fs::write(&corrupt, &bytes).unwrap();
    let m = refusal(&corrupt);
    assert!(m.contains("corrupt") && m.contains("mv "), "{m}");

    let locked = dir.path().join("locked.db");
    let first = Database::open(&locked, KEEP_ALL).unwrap();
    let m = refusal(&locked);
    assert!(
        m.contains("in use by another lpcmon") && m.contains(&std::process::id().to_string()),
        "{m}"
    );
    drop(first);
    Database::open(&locked, KEEP_ALL).unwrap();
}

#[test]
fn exports_ndjson_and_csv_while_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.db");
    let db = Database::open(&path, KEEP_ALL).unwrap();
    fill(&db, 1..=5000);
    // Exported as soon as committed (the writer runs at a lower priority: wait, bounded).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while db.status().newest_id != Some(5000) {
        assert!(
            std::time::Instant::now() < deadline,
            "not committed: {:?}",
            db.status()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut out = Vec::new();
    let n = export(&path, 4990, &Filter::default(), ExportFormat::Ndjson, &mut out).unwrap();
    assert_eq!(n, 10);
    assert!(String::from_utf8(out).unwrap().starts_with(r#"{"id":4991,"#));
    let mut out = Vec::new();
    let filter = Filter {
        kinds: vec!["loss".into()],
        ..Filter::default()
    };
    export(&path, 4990, &filter, ExportFormat::Csv, &mut out).unwrap();
    let csv = String::from_utf8(out).unwrap();
    let lines: Vec<_> = csv.lines().collect();
    assert_eq!(lines[0], "id,time_ns,kind,pid,producer_kind,producer,json");
    assert_eq!(
        lines[1],
        r#"4992,5992,loss,1,loadgen,aa00,"{""id"":4992,""kind"":""loss""}""#
    );
    assert_eq!(lines.len(), 4);
    drop(db);
}

#[test]
fn fleet_state_survives_a_restart_and_hosts_filter_pages() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.db");
    let db = Database::open(&path, KEEP_ALL).unwrap();
    let instance = db.server_instance().to_owned();
    assert_eq!(instance.len(), 32);
    assert_eq!(db.restored_publish_acked(), 0);
    assert!(db.restored_origins().is_empty());
    fill(&db, 1..=20);
    let mark = |last_id| OriginMark {
        instance: "o1".into(),
        host: "web".into(),
        last_id,
        events: last_id * 2,
        losses: [("publish".to_owned(), last_id)].into(),
    };
    db.append(
        vec![],
        Ledger {
            origins: vec![mark(7)],
            ..Ledger::default()
        },
    );
    // In a later transaction, a lower mark never lowers the stored one; the totals are the
    // newest record's.
    std::thread::sleep(Duration::from_millis(50));
    db.append(
        vec![],
        Ledger {
            origins: vec![mark(3)],
            ..Ledger::default()
        },
    );
    db.save_publish_position(12);
    db.save_publish_position(9);
    let web = Filter {
        host: Some(HostFilter::Origin("web".into())),
        ..Filter::default()
    };
    let own = Filter {
        host: Some(HostFilter::Own),
        ..Filter::default()
    };
    db.close();
    drop(db);

    let db = Database::open(&path, KEEP_ALL).unwrap();
    assert_eq!(
        db.server_instance(),
        instance,
        "the same file is the same instance"
    );
    assert_eq!(db.restored_publish_acked(), 12);
    assert_eq!(
        db.restored_origins(),
        &[OriginMark {
            last_id: 7,
            ..mark(3)
        }]
    );
    assert_eq!(ids(&db, &web, Order::Ascending, 100), vec![5, 10, 15, 20]);
    assert_eq!(ids(&db, &own, Order::Ascending, 100).len(), 16);
    assert_eq!(db.get(5).unwrap().unwrap().host.as_deref(), Some("web"));
    db.close();
    drop(db);

    let other = Database::open(&dir.path().join("other.db"), KEEP_ALL).unwrap();
    assert_ne!(other.server_instance(), instance, "a new file is a new instance");
}

/// Pages walked with the keyset (`after` / `through`, as the API does) over many batches, for
/// every kind of filter and both orders, give exactly the events a plain scan of what was
/// written selects; so do they after the count limit has cut into the oldest batch, on
/// reopening, and through the `events` view a `sqlite3` user queries.
#[test]
fn pages_over_many_batches_match_a_plain_scan() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.db");
    let last = 12_000u64;
    let keep = 9_500u64;
    let retention = Retention {
        events: keep,
        bytes: u64::MAX,
        max_age: None,
    };
    let db = Database::open(&path, retention).unwrap();
    for first in (1..=last).step_by(1000) {
        fill(&db, first..=first + 999);
        // One commit per thousand: wait for it, so the batches do not depend on timing.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while db.status().newest_id != Some(first + 999) {
            assert!(
                std::time::Instant::now() < deadline,
                "not committed: {:?}",
                db.status()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    db.close();
    drop(db);
    let db = Database::open(&path, retention).unwrap();
    let oldest = last - keep + 1;
    let s = db.status();
    assert_eq!(
        (s.events, s.evicted, s.oldest_id, s.newest_id),
        (keep, last - keep, Some(oldest), Some(last))
    );
    assert!(db.get(oldest - 1).unwrap().is_none(), "an evicted event is gone");
    assert_eq!(db.get(oldest).unwrap().unwrap().id, oldest);
    let batches: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("SELECT count(*) FROM batches", [], |r| r.get(0))
        .unwrap();
    assert!(
        batches >= 3,
        "{batches} batches: the walk must cross batch boundaries"
    );

    let kind_of = |id: u64| {
        if id.is_multiple_of(3) {
            "loss"
        } else {
            "process.exec"
        }
    };
    /// A filter, and which ids it selects.
    type Case = (Filter, Box<dyn Fn(u64) -> bool>);
    let filters: Vec<Case> = vec![
        (Filter::default(), Box::new(|_| true)),
        (
            Filter {
                kinds: vec!["loss".into()],
                ..Filter::default()
            },
            Box::new(move |id| kind_of(id) == "loss"),
        ),
        (
            Filter {
                pid: Some(4),
                producer_prefix: Some("a".into()),
                ..Filter::default()
            },
            Box::new(|id| id % 7 == 4 && id.is_multiple_of(2)),
        ),
        (
            Filter {
                host: Some(HostFilter::Origin("web".into())),
                kinds: vec!["process.exec".into()],
                ..Filter::default()
            },
            Box::new(move |id| id.is_multiple_of(5) && kind_of(id) == "process.exec"),
        ),
        (
            Filter {
                host: Some(HostFilter::Own),
                q: Some("tool111".into()),
                ..Filter::default()
            },
            Box::new(|id| !id.is_multiple_of(5) && format!("/usr/bin/tool{id}").contains("tool111")),
        ),
        (
            Filter {
                producer_prefix: Some("cc".into()),
                ..Filter::default()
            },
            Box::new(|_| false),
        ),
    ];
    for (filter, wanted) in &filters {
        let expected: Vec<u64> = (oldest..=last).filter(|&id| wanted(id)).collect();
        for order in [Order::Ascending, Order::Descending] {
            let (mut after, mut through) = (0u64, u64::MAX >> 1);
            let mut got = Vec::new();
            for _ in 0..10_000 {
                let page = db
                    .page(&PageQuery {
                        after,
                        through,
                        filter,
                        limit: 250,
                        order,
                    })
                    .unwrap();
                let Some(edge) = page.last().map(|e| e.id) else {
                    break;
                };
                match order {
                    Order::Ascending => after = edge,
                    Order::Descending => through = edge - 1,
                }
                got.extend(page.iter().map(|e| e.id));
            }
            if order == Order::Descending {
                got.reverse();
            }
            assert_eq!(got, expected, "{filter:?} {order:?}");
        }
    }

    let conn = rusqlite::Connection::open(&path).unwrap();
    let (count, min, losses): (i64, i64, i64) = conn
        .query_row(
            "SELECT count(*), min(id), sum(kind = 'loss') FROM events",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(count as u64, keep);
    assert_eq!(min as u64, oldest);
    assert_eq!(
        losses as u64,
        (oldest..=last).filter(|id| id.is_multiple_of(3)).count() as u64
    );
}
