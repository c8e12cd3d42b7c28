//! The producer queue on real threads, and its bookkeeping on one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use lpcmon_protocol::queue::{Drops, Full, Queue, Slot};

fn slots(capacity: usize) -> Vec<Slot<u64>> {
    (0..capacity).map(|i| Slot::new(i, 0)).collect()
}

const PUSHERS: u64 = 4;
const PER_PUSHER: u64 = 25_000;

/// Value `i` of pusher `p`.
fn value(p: u64, i: u64) -> u64 {
    (p << 32) | i
}

#[test]
fn concurrent_pushers_and_a_popper_account_for_every_event() {
    let s = slots(1024);
    let queue = Queue::new(&s).unwrap();
    let done = AtomicBool::new(false);
    let (refused, popped, drops_taken) = thread::scope(|scope| {
        let pushers: Vec<_> = (0..PUSHERS)
            .map(|p| {
                let queue = &queue;
                scope.spawn(move || {
                    let mut refused = 0u64;
                    for i in 0..PER_PUSHER {
                        if queue.push_with(|slot| *slot = value(p, i)) == Err(Full) {
                            refused += 1;
                        }
                    }
                    refused
                })
            })
            .collect();
        let popper = scope.spawn(|| {
            // Start late, so the queue certainly overflows and drops are exercised.
            while queue.produced() < 4 * 1024 && !done.load(Ordering::Acquire) {
                thread::yield_now();
            }
            let mut popped = Vec::with_capacity((PUSHERS * PER_PUSHER) as usize);
            let mut drops_taken = 0;
            loop {
                // Read `done` before popping: once it is set, an empty pop means truly empty.
                let finished = done.load(Ordering::Acquire);
                match queue.pop_with(|v| *v) {
                    Some(v) => popped.push(v),
                    None if finished => break,
                    None => thread::yield_now(),
                }
                if popped.len() % 512 == 0 {
                    drops_taken += queue.take_drops(1).map_or(0, |d| d.count);
                }
            }
            (popped, drops_taken)
        });
        let refused: u64 = pushers.into_iter().map(|h| h.join().unwrap()).sum();
        done.store(true, Ordering::Release);
        let (popped, drops_taken) = popper.join().unwrap();
        (refused, popped, drops_taken)
    });
    let drops_taken = drops_taken + queue.take_drops(1).map_or(0, |d| d.count);

    let pushed = PUSHERS * PER_PUSHER;
    assert_eq!(popped.len() as u64 + refused, pushed);
    assert_eq!(queue.dropped_total(), refused);
    assert_eq!(drops_taken, refused);
    assert_eq!(queue.produced(), pushed);
    assert!(
        refused >= 3 * 1024,
        "the late popper should have forced drops, got {refused}"
    );
    // No value twice, and each pusher's values in the order it pushed them.
    let mut last = [None::<u64>; PUSHERS as usize];
    for v in &popped {
        let (p, i) = ((v >> 32) as usize, v & 0xFFFF_FFFF);
        assert!(
            last[p].is_none_or(|prev| i > prev),
            "pusher {p}: {i} after {:?}",
            last[p]
        );
        last[p] = Some(i);
    }
}

#[test]
fn fifo_across_many_wraps() {
    let s = slots(8);
    let q = Queue::new(&s).unwrap();
    let mut next_out = 0u64;
    for round in 0..1000u64 {
        for k in 0..(round % 8 + 1) {
            q.push_with(|v| *v = round * 10 + k).unwrap();
        }
        for k in 0..(round % 8 + 1) {
            assert_eq!(q.pop_with(|v| *v), Some(round * 10 + k));
            next_out += 1;
        }
        assert!(q.is_empty());
    }
    assert_eq!(q.produced(), next_out);
    assert_eq!(q.dropped_total(), 0);
    assert_eq!(q.take_drops(1), None);
}

#[test]
fn drops_are_counted_with_the_sequence_numbers_they_fell_between() {
    let s = slots(2);
    let q = Queue::new(&s).unwrap();
    q.push_with(|v| *v = 1).unwrap();
    q.push_with(|v| *v = 2).unwrap();
    assert_eq!(q.push_with(|v| *v = 3), Err(Full));
    assert!(q.has_unreported_drops());
    assert_eq!(q.pop_with(|v| *v), Some(1));
    q.push_with(|v| *v = 4).unwrap();
    assert_eq!(q.push_with(|v| *v = 5), Err(Full));
    assert_eq!(q.push_with(|v| *v = 6), Err(Full));
    // Items are numbered in push position order from `seq_base`: the first drop came when the
    // next accepted item would be number 3 (position 2), the last at number 4.
    assert_eq!(
        q.take_drops(1),
        Some(Drops {
            count: 3,
            first_next_seq: 3,
            last_next_seq: 4,
        })
    );
    assert!(!q.has_unreported_drops());
    assert_eq!(q.take_drops(1), None);
    assert_eq!(q.dropped_total(), 3);
    assert_eq!(q.produced(), 6);
    assert_eq!(q.pop_with(|v| *v), Some(2));
    assert_eq!(q.pop_with(|v| *v), Some(4));
    assert_eq!(q.pop_with(|v| *v), None);
}

#[test]
fn a_queue_needs_fresh_power_of_two_slots() {
    assert!(Queue::new(&slots(3)).is_none());
    assert!(Queue::new(&slots(0)).is_none());
    let misnumbered: Vec<Slot<u64>> = (0..4).map(|i| Slot::new(3 - i, 0)).collect();
    assert!(Queue::new(&misnumbered).is_none());
    // One slot cannot tell "full" from "free for the next push": a second push would
    // overwrite the first, unread and uncounted.
    assert!(Queue::new(&slots(1)).is_none());
    let s = slots(2);
    let q = Queue::new(&s).unwrap();
    assert_eq!(q.capacity(), 2);
    q.push_with(|v| *v = 7).unwrap();
    q.push_with(|v| *v = 8).unwrap();
    assert_eq!(q.push_with(|v| *v = 9), Err(Full));
    assert_eq!(q.pop_with(|v| *v), Some(7));
    assert_eq!(q.pop_with(|v| *v), Some(8));
}
