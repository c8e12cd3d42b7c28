//! The seed designs' variants really lose or reorder events under a burst, the lab counts
//! exactly how many, and lpcmon's port carries the same burst without loss. Real sockets,
//! shared memory, eventfds and an in-process lpcmon server on loopback.
#![cfg(target_os = "linux")]

use std::sync::atomic::AtomicBool;

use lpcmon_lab::plan;
use lpcmon_lab::results::{self, CellResult};
use lpcmon_lab::runner;

static NEVER: AtomicBool = AtomicBool::new(false);

const PLAN: &str = r#"
[[experiment]]
name = "burst"
transports = ["unix", "shm", "shm:slots=1,full=overwrite", "request", "request:pending=1", "request:order=lifo,pending=4"]
sizes = [200, 2000]
rates = ["max"]
messages = 5000
"#;

fn cell<'a>(results: &'a [CellResult], transport: &str, size: usize) -> &'a CellResult {
    results
        .iter()
        .find(|r| r.transport == transport && r.size == size)
        .unwrap_or_else(|| panic!("no cell for {transport} at {size} B"))
}

#[test]
fn seed_variants_lose_and_reorder_and_the_lab_counts_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let cells = plan::parse("seeds", PLAN, None).unwrap();
    let summary = runner::run_cells(&cells, dir.path(), false, &NEVER, false).unwrap();
    assert!(summary.failed.is_empty(), "{:?}", summary.failed);
    let results = results::read(dir.path()).unwrap();
    assert_eq!(results.len(), cells.len());

    for r in &results {
        assert_eq!(r.sent, 5000, "{}", r.key);
        assert_eq!(
            r.sent,
            r.received + r.lost.values().sum::<u64>(),
            "{}: {:?}",
            r.key,
            r.lost
        );
        assert!(r.accounted, "{}", r.key);
        assert_eq!(r.duplicates, 0, "{}", r.key);
    }
    for size in [200, 2000] {
        // lpcmon's port and the waiting ring carry the whole burst, in order.
        for t in ["unix", "shm"] {
            let c = cell(&results, t, size);
            assert_eq!(
                (c.received, c.lost_total, c.reordered),
                (5000, 0, 0),
                "{}: {:?}",
                c.key,
                c.lost
            );
        }
        // Seed 000: one slot, overwritten. Every loss is an overwrite, and there are losses.
        let c = cell(&results, "shm:full=overwrite,slots=1", size);
        assert!(c.lost_total > 0, "{}: the one-slot design lost nothing", c.key);
        assert_eq!(
            c.lost.get("overwritten").copied(),
            Some(c.sent - c.received),
            "{}",
            c.key
        );
        // Seed 002: one pending request loses notifications.
        let c = cell(&results, "request:pending=1", size);
        assert!(c.lost_total > 0, "{}: K = 1 lost nothing", c.key);
        assert_eq!(
            c.lost.get("no_pending_request").copied(),
            Some(c.sent - c.received),
            "{}",
            c.key
        );
        assert_eq!(c.reordered, 0, "{}: FIFO with one request cannot reorder", c.key);
        // Seed 002's LIFO list reorders what it delivers.
        let c = cell(&results, "request:order=lifo,pending=4", size);
        assert!(
            c.reordered > 0,
            "{}: LIFO completion delivered in order ({} received)",
            c.key,
            c.received
        );
    }
    // The 2000-byte events take one message on every transport here; fragments are recorded.
    assert!(
        results.iter().all(|r| r.fragments_per_message == 1),
        "no transport here fragments 2000 B"
    );
}

#[test]
fn fragmentation_is_recorded_and_reassembled() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"
[[experiment]]
name = "frag"
transports = ["unix:limit=608", "unix-raw:limit=608", "pipe", "shm:limit=608", "request:limit=608"]
sizes = [584, 608, 616, 5000]
rates = ["max"]
messages = 500
"#;
    let cells = plan::parse("frag", text, None).unwrap();
    let summary = runner::run_cells(&cells, dir.path(), false, &NEVER, false).unwrap();
    assert!(summary.failed.is_empty(), "{:?}", summary.failed);
    for r in results::read(dir.path()).unwrap() {
        // An event that fits goes whole; otherwise each fragment carries limit - 24 bytes of it
        // (the fragment header).
        let expected = if r.size <= r.limit {
            1
        } else {
            r.size.div_ceil(r.limit - 24) as u16
        };
        assert!(r.limit == 608 || r.limit == 4092, "{}", r.key);
        assert_eq!(r.fragments_per_message, expected, "{}", r.key);
        assert!(r.accounted, "{}", r.key);
        if !r.transport.starts_with("request") {
            assert_eq!(r.received, r.sent, "{}: {:?}", r.key, r.lost);
        }
    }
}
