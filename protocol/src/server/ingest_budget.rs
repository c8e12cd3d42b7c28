//! The ingest channel's capacity in bytes: what the outputs waiting in it hold on the heap.
//!
//! A channel bounded by a count of outputs holds anything from a few hundred kilobytes to
//! gigabytes, depending on how large the events are. Bounded by bytes, its backlog is a known
//! share of the memory the service may use, and the store can count it against its own
//! limit. The sender takes an output's bytes before handing it over and the receiver gives
//! them back when it takes it out; an output that does not fit is refused exactly as a full
//! channel refuses it (the [`super::IngestGate`] counts it as `server_ingest` loss).

use core::mem::size_of;
use core::sync::atomic::{AtomicUsize, Ordering};

use super::session::Output;
use crate::event::{Field, FieldValue};

/// The heap bytes a request of `n` bytes takes: an 8-byte header, rounded up to 16, at least
/// 32 (glibc malloc on 64-bit; other allocators round to size classes of the same order).
pub const fn heap_block(n: usize) -> usize {
    let block = (n + 8).div_ceil(16) * 16;
    if block < 32 { 32 } else { block }
}

impl Output {
    /// What this output holds while it waits in the ingest channel: its slot and the heap
    /// blocks of an event's fields. Producer descriptions are shared with the session and
    /// are not counted per output.
    pub fn channel_bytes(&self) -> usize {
        let heap = match self {
            Output::Event { event, .. } if !event.fields.is_empty() => {
                let fields = heap_block(event.fields.len() * size_of::<Field>());
                let values: usize = event
                    .fields
                    .iter()
                    .map(|f| match &f.value {
                        FieldValue::Text(s) => heap_block(s.len()),
                        FieldValue::Bytes(b) => heap_block(b.len()),
                    })
                    .sum();
                fields + values
            }
            Output::Refused { detail, .. } => heap_block(detail.len()),
            _ => 0,
        };
        size_of::<Output>() + heap
    }
}

/// A byte budget shared by the ingest channel's sender and its receiver.
#[derive(Debug)]
pub struct IngestBudget {
    limit: usize,
    used: AtomicUsize,
}

impl IngestBudget {
    pub const fn new(limit: usize) -> Self {
        IngestBudget {
            limit,
            used: AtomicUsize::new(0),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes held by outputs in the channel now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `bytes` if they fit. An empty channel takes any one output, so an output larger
    /// than the whole budget still gets through when nothing else waits.
    pub fn try_take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used == 0 || used + bytes <= self.limit).then_some(used + bytes)
            })
            .is_ok()
    }

    /// Gives back what [`Self::try_take`] took, when the output leaves the channel.
    pub fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_within_the_limit_and_one_oversized_alone() {
        let b = IngestBudget::new(100);
        assert!(b.try_take(60));
        assert!(b.try_take(40));
        assert!(!b.try_take(1));
        b.give_back(60);
        assert_eq!(b.used(), 40);
        assert!(!b.try_take(61));
        b.give_back(40);
        assert!(b.try_take(1000), "an empty channel takes any one output");
        assert!(!b.try_take(1));
        b.give_back(1000);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn heap_blocks_round_as_malloc_does() {
        assert_eq!(heap_block(0), 32);
        assert_eq!(heap_block(24), 32);
        assert_eq!(heap_block(25), 48);
        assert_eq!(heap_block(100), 112);
    }
}
