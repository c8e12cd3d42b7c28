//! The producer queue: bounded, lock-free, multi-producer, and free of allocation.
//!
//! Kernel callbacks on many threads push into it; one worker pops. It is Dmitry Vyukov's bounded
//! array queue: each slot carries a sequence stamp that says whether it is free for the push at
//! position `p` (stamp `p`) or holds the item pushed at `p` (stamp `p + 1`). A push that finds
//! the queue full does not wait: it counts a drop and returns. So a callback never blocks, never
//! spins on another thread's progress for long (a failed compare-exchange means another push
//! succeeded), and never allocates: the slots are preallocated by the caller and values are
//! written in place.
//!
//! Because there is no lock, it is safe at any IRQL up to the one the slot memory allows
//! (nonpaged memory for a driver). The interleavings are checked with loom (`tests/loom_queue.rs`).

use crate::sync::{AtomicU64, AtomicUsize, Ordering, UnsafeCell};

/// One preallocated entry. `T` is written in place, so it should be plain data.
pub struct Slot<T> {
    stamp: AtomicUsize,
    value: UnsafeCell<T>,
}

impl<T> Slot<T> {
    /// A slot for position `index` of a queue. Slots must be created with their index, in order.
    pub fn new(index: usize, value: T) -> Self {
        Slot {
            stamp: AtomicUsize::new(index),
            value: UnsafeCell::new(value),
        }
    }
}

/// The push failed because every slot is taken. The drop has been counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// Drops since the worker last asked, for a `Loss { stage: ProducerQueue }` report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drops {
    pub count: u64,
    /// The sequence number the next accepted event would get, at the first and last drop.
    pub first_next_seq: u64,
    pub last_next_seq: u64,
}

pub struct Queue<'a, T> {
    slots: &'a [Slot<T>],
    mask: usize,
    push_pos: AtomicUsize,
    pop_pos: AtomicUsize,
    dropped_total: AtomicU64,
    dropped_unreported: AtomicU64,
    first_drop_pos: AtomicU64,
    last_drop_pos: AtomicU64,
}

// SAFETY: a slot's value is accessed only by the one thread that won its stamp: the pusher
// between claiming position p and publishing stamp p+1, and the popper between claiming p and
// publishing p+capacity. Stamps use acquire/release, so every access happens-before the next
// owner's. Values are moved across threads, hence `T: Send`.
unsafe impl<T: Send> Sync for Queue<'_, T> {}
// SAFETY: as above; the queue only holds a shared borrow of the slots.
unsafe impl<T: Send> Send for Queue<'_, T> {}

const NO_DROP: u64 = u64::MAX;

impl<'a, T> Queue<'a, T> {
    /// Builds a queue over slots created with `Slot::new(i, _)` for `i` in `0..len`.
    /// Returns `None` unless the length is a power of two of at least 2 and the stamps are
    /// fresh. (With one slot, "holds the item pushed at p" and "free for the push at p + 1"
    /// would be the same stamp, and a push would overwrite an unread item.)
    pub fn new(slots: &'a [Slot<T>]) -> Option<Self> {
        if slots.len() < 2 || !slots.len().is_power_of_two() {
            return None;
        }
        let fresh = slots
            .iter()
            .enumerate()
            .all(|(i, s)| s.stamp.load(Ordering::Relaxed) == i);
        fresh.then(|| Queue {
            slots,
            mask: slots.len() - 1,
            push_pos: AtomicUsize::new(0),
            pop_pos: AtomicUsize::new(0),
            dropped_total: AtomicU64::new(0),
            dropped_unreported: AtomicU64::new(0),
            first_drop_pos: AtomicU64::new(NO_DROP),
            last_drop_pos: AtomicU64::new(0),
        })
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Claims a free slot and lets `fill` write the value in place. Never blocks: when the
    /// queue is full the drop is counted and `Full` returned.
    pub fn push_with(&self, fill: impl FnOnce(&mut T)) -> Result<(), Full> {
        let mut pos = self.push_pos.load(Ordering::Relaxed);
        let slot = loop {
            let slot = &self.slots[pos & self.mask];
            let stamp = slot.stamp.load(Ordering::Acquire);
            let diff = stamp.wrapping_sub(pos) as isize;
            if diff == 0 {
                match self.push_pos.compare_exchange_weak(
                    pos,
                    pos.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break slot,
                    Err(current) => pos = current,
                }
            } else if diff < 0 {
                self.count_drop(pos);
                return Err(Full);
            } else {
                pos = self.push_pos.load(Ordering::Relaxed);
            }
        };
        // SAFETY: winning the compare-exchange at `pos` while the stamp read `pos` makes this
        // thread the slot's only owner until it publishes `pos + 1` below.
        slot.value.with_mut(|v| fill(unsafe { &mut *v }));
        slot.stamp.store(pos.wrapping_add(1), Ordering::Release);
        Ok(())
    }

    fn count_drop(&self, pos: usize) {
        self.dropped_total.fetch_add(1, Ordering::Relaxed);
        self.dropped_unreported.fetch_add(1, Ordering::Relaxed);
        self.first_drop_pos.fetch_min(pos as u64, Ordering::Relaxed);
        self.last_drop_pos.fetch_max(pos as u64, Ordering::Relaxed);
    }

    /// Takes the oldest value, lending it to `read`. Returns `None` when empty.
    pub fn pop_with<R>(&self, read: impl FnOnce(&T) -> R) -> Option<R> {
        let mut pos = self.pop_pos.load(Ordering::Relaxed);
        let slot = loop {
            let slot = &self.slots[pos & self.mask];
            let stamp = slot.stamp.load(Ordering::Acquire);
            let diff = stamp.wrapping_sub(pos.wrapping_add(1)) as isize;
            if diff == 0 {
                match self.pop_pos.compare_exchange_weak(
                    pos,
                    pos.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break slot,
                    Err(current) => pos = current,
                }
            } else if diff < 0 {
                return None;
            } else {
                pos = self.pop_pos.load(Ordering::Relaxed);
            }
        };
        // SAFETY: the stamp `pos + 1` (acquire) means the push at `pos` finished writing, and
        // winning the compare-exchange makes this thread the only reader until the release below.
        let out = slot.value.with(|v| read(unsafe { &*v }));
        slot.stamp
            .store(pos.wrapping_add(self.slots.len()), Ordering::Release);
        Some(out)
    }

    /// Whether a pop would find nothing right now.
    pub fn is_empty(&self) -> bool {
        let pos = self.pop_pos.load(Ordering::Relaxed);
        let stamp = self.slots[pos & self.mask].stamp.load(Ordering::Acquire);
        stamp != pos.wrapping_add(1)
    }

    /// Every push attempt so far: accepted plus dropped.
    pub fn produced(&self) -> u64 {
        self.push_pos.load(Ordering::Relaxed) as u64 + self.dropped_total.load(Ordering::Relaxed)
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped_total.load(Ordering::Relaxed)
    }

    pub fn has_unreported_drops(&self) -> bool {
        self.dropped_unreported.load(Ordering::Relaxed) != 0
    }

    /// Takes the drops not yet reported. `seq_base` is the sequence number of the item at
    /// position 0 (the worker numbers items in pop order, from 1).
    pub fn take_drops(&self, seq_base: u64) -> Option<Drops> {
        let count = self.dropped_unreported.swap(0, Ordering::Relaxed);
        if count == 0 {
            return None;
        }
        let first = self.first_drop_pos.swap(NO_DROP, Ordering::Relaxed);
        let last = self.last_drop_pos.swap(0, Ordering::Relaxed);
        // A drop racing with this swap may have updated only one bound; keep the range sane.
        let first = if first == NO_DROP { last } else { first };
        Some(Drops {
            count,
            first_next_seq: seq_base + first.min(last),
            last_next_seq: seq_base + last.max(first),
        })
    }
}
