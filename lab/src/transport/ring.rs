//! The shared-memory ring both `shm` transports use (a Linux mapping signalled with an eventfd,
//! a Windows section signalled with an event): only the memory and the signal differ.
//!
//! Layout, all 8-byte words: `head` (positions published), `tail` (positions the consumer is
//! done with), `done` (the producer has finished), then `slots` slots of `stamp`, `len` and the
//! data. Slot `pos % slots` holds position `pos`; its stamp is `2·pos+1` while the producer
//! writes it and `2·pos+2` once written, a seqlock, so a consumer that reads a slot while the
//! producer overwrites it notices and counts the position lost instead of taking torn bytes.
//! The data is copied as relaxed atomic words, which keeps the racing reads defined behaviour.
//!
//! With `full = wait` the producer waits for room and nothing is lost; with `full = overwrite`
//! it never waits, as seed 000's driver did, and the consumer counts every position it finds
//! overwritten. Every position is either delivered or counted lost by the consumer alone, so
//! nothing is counted twice.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};

use super::{Outcome, TransportError};
use crate::measure::{Job, Losses, Receiver, produce};

const HEAD: usize = 0;
const TAIL: usize = 1;
const DONE: usize = 2;
const HEADER_WORDS: usize = 8;
const SLOT_HEADER_WORDS: usize = 2;

/// What the producer does when the ring is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    Wait,
    Overwrite,
}

impl Full {
    pub fn parse(v: &str) -> Full {
        if v == "overwrite" {
            Full::Overwrite
        } else {
            Full::Wait
        }
    }
}

/// Wakes the consumer (an eventfd or an auto-reset event). Signals may collapse into one wake,
/// as they did in seed 000.
pub trait Signal: Sync {
    fn notify(&self);
    /// Waits for a notification, or at most `timeout_ms`.
    fn wait(&self, timeout_ms: u32);
}

/// A ring laid over memory someone else mapped.
pub struct Ring<'a> {
    words: &'a [AtomicU64],
    slots: usize,
    slot_words: usize,
    limit: usize,
}

impl<'a> Ring<'a> {
    /// Bytes of memory a ring of `slots` slots of `limit` bytes needs.
    pub fn bytes_needed(slots: usize, limit: usize) -> usize {
        (HEADER_WORDS + slots * (SLOT_HEADER_WORDS + limit.div_ceil(8))) * 8
    }

    /// Lays a ring over `words` (zeroed, at least [`Ring::bytes_needed`] bytes).
    pub fn new(words: &'a [AtomicU64], slots: usize, limit: usize) -> Self {
        let ring = Ring {
            words,
            slots,
            slot_words: SLOT_HEADER_WORDS + limit.div_ceil(8),
            limit,
        };
        assert!(
            words.len() * 8 >= Self::bytes_needed(slots, limit),
            "ring memory too small"
        );
        ring
    }

    fn slot(&self, pos: u64) -> &[AtomicU64] {
        let start = HEADER_WORDS + (pos % self.slots as u64) as usize * self.slot_words;
        &self.words[start..start + self.slot_words]
    }

    /// The producer's side.
    pub fn producer(&self) -> RingProducer<'_, 'a> {
        RingProducer { ring: self, pos: 0 }
    }

    /// The consumer's side.
    pub fn consumer(&self) -> RingConsumer<'_, 'a> {
        RingConsumer {
            ring: self,
            tail: 0,
            buf: vec![0u8; self.slot_words * 8],
        }
    }
}

pub struct RingProducer<'r, 'a> {
    ring: &'r Ring<'a>,
    pos: u64,
}

impl RingProducer<'_, '_> {
    /// Writes one message (at most `limit` bytes) into the next position and wakes the consumer.
    /// Returns `false` if `cancel` was set while waiting for room.
    pub fn push(&mut self, msg: &[u8], full: Full, signal: &dyn Signal, cancel: &AtomicBool) -> bool {
        let ring = self.ring;
        let pos = self.pos;
        if full == Full::Wait {
            let mut spins = 0u32;
            while pos - ring.words[TAIL].load(Ordering::Acquire) >= ring.slots as u64 {
                if cancel.load(Ordering::Relaxed) {
                    return false;
                }
                spins += 1;
                if spins < 64 {
                    std::thread::yield_now();
                } else {
                    std::thread::sleep(std::time::Duration::from_micros(20));
                }
            }
        }
        let slot = ring.slot(pos);
        slot[0].store(2 * pos + 1, Ordering::Relaxed);
        // Readers that see any byte below also see the odd stamp (seqlock write side).
        fence(Ordering::Release);
        slot[1].store(msg.len() as u64, Ordering::Relaxed);
        for (word, chunk) in slot[SLOT_HEADER_WORDS..].iter().zip(msg.chunks(8)) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            word.store(u64::from_le_bytes(b), Ordering::Relaxed);
        }
        slot[0].store(2 * pos + 2, Ordering::Release);
        ring.words[HEAD].store(pos + 1, Ordering::Release);
        self.pos += 1;
        signal.notify();
        true
    }

    /// Tells the consumer nothing more comes.
    pub fn finish(&self, signal: &dyn Signal) {
        self.ring.words[DONE].store(1, Ordering::Release);
        signal.notify();
    }
}

pub struct RingConsumer<'r, 'a> {
    ring: &'r Ring<'a>,
    tail: u64,
    buf: Vec<u8>,
}

impl RingConsumer<'_, '_> {
    /// Reads every published position. `deliver` gets each intact message, `lost` each position
    /// found overwritten. Returns `true` once the producer has finished and all is read.
    pub fn drain(&mut self, mut deliver: impl FnMut(&[u8]), mut lost: impl FnMut(u64)) -> bool {
        let ring = self.ring;
        let done = ring.words[DONE].load(Ordering::Acquire) != 0;
        let head = ring.words[HEAD].load(Ordering::Acquire);
        let slots = ring.slots as u64;
        // Positions older than the last `slots` are gone whatever their stamps say.
        while head - self.tail > slots {
            lost(self.tail);
            self.tail += 1;
        }
        while self.tail < head {
            let pos = self.tail;
            let slot = ring.slot(pos);
            let s1 = slot[0].load(Ordering::Acquire);
            let intact = s1 == 2 * pos + 2 && {
                let len = (slot[1].load(Ordering::Relaxed) as usize).min(ring.limit);
                for (i, word) in slot[SLOT_HEADER_WORDS..].iter().enumerate().take(len.div_ceil(8)) {
                    self.buf[i * 8..i * 8 + 8].copy_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
                }
                fence(Ordering::Acquire);
                if slot[0].load(Ordering::Relaxed) == s1 {
                    deliver(&self.buf[..len]);
                    true
                } else {
                    false
                }
            };
            if !intact {
                lost(pos);
            }
            self.tail += 1;
            ring.words[TAIL].store(self.tail, Ordering::Release);
        }
        done && self.tail == ring.words[HEAD].load(Ordering::Acquire)
    }
}

/// Runs one cell over a ring laid over `words`: the producer on this thread, the consumer on
/// another, woken by `signal`. Both `shm` transports are this with their own memory and signal.
pub fn run_cell(
    job: &Job,
    words: &[AtomicU64],
    slots: usize,
    limit: usize,
    full: Full,
    signal: &dyn Signal,
) -> Result<Outcome, TransportError> {
    let ring = Ring::new(words, slots, limit);
    let fragments = u64::from(job.fragments(limit));
    std::thread::scope(|s| {
        let consumer = s.spawn(|| {
            let mut rx = Receiver::new(job, limit);
            let mut c = ring.consumer();
            // Every event is `fragments` consecutive positions, so a lost position names its
            // event exactly.
            let mut lost_events = HashSet::new();
            while !c.drain(
                |m| rx.on_message(m),
                |pos| {
                    lost_events.insert(pos / fragments + 1);
                },
            ) {
                signal.wait(50);
            }
            let mut lost = Losses::default();
            lost.add("overwritten", lost_events.len() as u64);
            rx.stop_clock();
            (rx, lost)
        });
        let mut p = ring.producer();
        let tally = produce(job, limit, |m| {
            if p.push(m, full, signal, job.cancel) {
                Ok(())
            } else {
                Err("cancelled")
            }
        });
        p.finish(signal);
        let (rx, lost) = consumer
            .join()
            .map_err(|_| TransportError::Other("consumer thread panicked".into()))?;
        Ok(Outcome::from_ends(tally, rx, lost, limit))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;
    impl Signal for Nothing {
        fn notify(&self) {}
        fn wait(&self, _: u32) {}
    }

    #[test]
    fn one_slot_overwrite_loses_all_but_the_last_and_counts_them() {
        let words: Vec<AtomicU64> = (0..Ring::bytes_needed(1, 64) / 8)
            .map(|_| AtomicU64::new(0))
            .collect();
        let ring = Ring::new(&words, 1, 64);
        let cancel = AtomicBool::new(false);
        let mut p = ring.producer();
        for i in 0..5u8 {
            assert!(p.push(&[i; 10], Full::Overwrite, &Nothing, &cancel));
        }
        p.finish(&Nothing);
        let (mut got, mut lost) = (Vec::new(), Vec::new());
        assert!(
            ring.consumer()
                .drain(|m| got.push(m.to_vec()), |pos| lost.push(pos))
        );
        assert_eq!(got, vec![vec![4u8; 10]]);
        assert_eq!(lost, vec![0, 1, 2, 3]);
    }
}
