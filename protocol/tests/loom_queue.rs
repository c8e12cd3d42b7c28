//! Model-checks the producer queue's interleavings with loom.
//!
//! ```text
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test -p lpcmon-protocol --release --test loom_queue
//! ```
//!
//! Under `--cfg loom` the queue's atomics and cells are loom's (see `src/sync.rs`), so every
//! interleaving of a few pushers and one popper on a two-slot queue is explored. In each one,
//! every value pushed is popped exactly once or counted as dropped, per-pusher order holds,
//! `produced()` counts every attempt, and `take_drops` hands out each drop exactly once.
#![cfg(loom)]

use loom::thread;
use lpcmon_protocol::queue::{Full, Queue, Slot};

const CAPACITY: usize = 2;

/// What one pusher did: the values the queue accepted, in order, and how many it refused.
struct Pushed {
    accepted: Vec<u32>,
    refused: u64,
}

/// Value `i` of pusher `p`; never 0, which is what a slot holds before any push.
fn value(p: usize, i: usize) -> u32 {
    (p * 100 + i + 1) as u32
}

fn pusher_of(v: u32) -> usize {
    (v as usize - 1) / 100
}

/// One execution: `pushers` threads push `per_pusher` values each while this thread pops
/// (and takes drop reports) `pops_during` times, then drains after joining them.
fn execution(pushers: usize, per_pusher: usize, pops_during: usize) {
    // Threads need 'static borrows; the queue and its slots are reclaimed at the end.
    let slots: &'static [Slot<u32>] = Box::leak(
        (0..CAPACITY)
            .map(|i| Slot::new(i, 0))
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    );
    let queue: &'static Queue<'static, u32> = Box::leak(Box::new(Queue::new(slots).expect("power of two")));

    let handles: Vec<_> = (0..pushers)
        .map(|p| {
            thread::spawn(move || {
                let mut pushed = Pushed {
                    accepted: Vec::new(),
                    refused: 0,
                };
                for i in 0..per_pusher {
                    let v = value(p, i);
                    match queue.push_with(|slot| *slot = v) {
                        Ok(()) => pushed.accepted.push(v),
                        Err(Full) => pushed.refused += 1,
                    }
                }
                pushed
            })
        })
        .collect();

    let mut popped = Vec::new();
    let mut drops_taken = 0;
    for _ in 0..pops_during {
        if let Some(v) = queue.pop_with(|v| *v) {
            popped.push(v);
        }
        if let Some(d) = queue.take_drops(1) {
            assert!(d.count >= 1 && d.first_next_seq <= d.last_next_seq);
            drops_taken += d.count;
        }
    }
    let results: Vec<Pushed> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    // Everything is published now: a drain finds exactly what is left, at most a full queue.
    for _ in 0..=CAPACITY {
        if let Some(v) = queue.pop_with(|v| *v) {
            popped.push(v);
        }
    }
    assert!(queue.is_empty());
    assert_eq!(queue.pop_with(|v| *v), None);
    if let Some(d) = queue.take_drops(1) {
        drops_taken += d.count;
    }
    assert_eq!(queue.take_drops(1), None, "drops reported twice");

    // Every accepted value popped exactly once, nothing else popped.
    let mut accepted: Vec<u32> = results.iter().flat_map(|r| r.accepted.iter().copied()).collect();
    accepted.sort_unstable();
    let mut got = popped.clone();
    got.sort_unstable();
    assert_eq!(got, accepted, "popped {popped:?}");
    // FIFO per pusher.
    for (p, r) in results.iter().enumerate() {
        let order: Vec<u32> = popped.iter().copied().filter(|&v| pusher_of(v) == p).collect();
        assert_eq!(order, r.accepted, "pusher {p} out of order");
    }
    // Exact drop accounting.
    let refused: u64 = results.iter().map(|r| r.refused).sum();
    assert_eq!(queue.dropped_total(), refused);
    assert_eq!(drops_taken, refused);
    assert_eq!(queue.produced(), (pushers * per_pusher) as u64);
    assert_eq!(queue.produced(), accepted.len() as u64 + refused);

    // SAFETY: both were leaked from boxes above, and every thread that borrowed them has been
    // joined; nothing uses them after this point.
    unsafe {
        drop(Box::from_raw(
            queue as *const Queue<'static, u32> as *mut Queue<'static, u32>,
        ));
        drop(Box::from_raw(slots as *const [Slot<u32>] as *mut [Slot<u32>]));
    }
}

fn check(pushers: usize, per_pusher: usize, pops_during: usize, preemptions: usize) {
    let mut builder = loom::model::Builder::new();
    // Bugs in lock-free code show up within a few preemptions; the bounds keep each model under
    // about 15 s. LOOM_MAX_PREEMPTIONS overrides them for a deeper run.
    if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
        builder.preemption_bound = Some(preemptions);
    }
    builder.check(move || execution(pushers, per_pusher, pops_during));
}

#[test]
fn two_pushers_overflow_a_two_slot_queue() {
    // Three pushes into two slots with the popper racing: some runs drop, some do not.
    check(2, 2, 1, 5);
}

#[test]
fn two_pushers_and_a_busy_popper() {
    check(2, 2, 2, 4);
}

#[test]
fn three_pushers_one_value_each() {
    check(3, 1, 1, 3);
}
