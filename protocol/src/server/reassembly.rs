//! Bounded reassembly of fragmented events, per session.
//!
//! Limits: the number of events in progress, the bytes they hold, the size of one event, and
//! the time an event may take to complete. Whatever breaks a limit is abandoned and reported so
//! the session can count it as reassembly loss.

use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;

use crate::message::Fragment;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_events: usize,
    pub max_bytes: usize,
    pub max_event_len: usize,
    pub timeout_ns: u64,
}

#[derive(Debug)]
struct Partial {
    total_len: usize,
    count: u16,
    /// Length of every fragment but the last, learned from the first fragment seen.
    chunk: usize,
    received: Vec<bool>,
    received_count: u16,
    buf: Vec<u8>,
    started: u64,
}

/// What one fragment did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Push {
    /// Stored; the event is not complete yet.
    Pending,
    /// The last missing piece: here is the whole encoded event.
    Complete(Vec<u8>),
    /// This piece was already received.
    Duplicate,
    /// The fragment contradicts the others of its event, or the event is too large; the event
    /// is abandoned.
    Invalid(&'static str),
    /// Taking this event in would break the bytes or event limit; it is abandoned.
    OverLimit,
}

#[derive(Debug)]
pub(crate) struct Reassembler {
    limits: Limits,
    partials: BTreeMap<u64, Partial>,
    bytes: usize,
}

impl Reassembler {
    pub(crate) fn new(limits: Limits) -> Self {
        Reassembler {
            limits,
            partials: BTreeMap::new(),
            bytes: 0,
        }
    }

    pub(crate) fn pending(&self) -> usize {
        self.partials.len()
    }

    fn remove(&mut self, seq: u64) -> Option<Partial> {
        let p = self.partials.remove(&seq)?;
        self.bytes -= p.total_len;
        Some(p)
    }

    fn start(&mut self, now: u64, f: &Fragment<'_>) -> Result<Partial, Push> {
        let total_len = f.total_len as usize;
        let count = usize::from(f.count);
        if total_len > self.limits.max_event_len || total_len < count {
            return Err(Push::Invalid("event length out of range"));
        }
        let len = f.bytes.len();
        // Derive the common fragment size from whichever piece came first.
        let chunk = if f.index + 1 < f.count {
            len
        } else {
            let rest = total_len - len;
            if rest % (count - 1) != 0 {
                return Err(Push::Invalid("last fragment does not fit the event length"));
            }
            rest / (count - 1)
        };
        if chunk == 0 || chunk * (count - 1) >= total_len || total_len - chunk * (count - 1) > chunk {
            return Err(Push::Invalid("fragment sizes do not add up"));
        }
        if self.partials.len() >= self.limits.max_events || self.bytes + total_len > self.limits.max_bytes {
            return Err(Push::OverLimit);
        }
        Ok(Partial {
            total_len,
            count: f.count,
            chunk,
            received: vec![false; count],
            received_count: 0,
            buf: vec![0; total_len],
            started: now,
        })
    }

    pub(crate) fn push(&mut self, now: u64, f: &Fragment<'_>) -> Push {
        if !self.partials.contains_key(&f.event_seq) {
            match self.start(now, f) {
                Ok(p) => {
                    self.bytes += p.total_len;
                    self.partials.insert(f.event_seq, p);
                }
                Err(outcome) => return outcome,
            }
        }
        let Some(p) = self.partials.get_mut(&f.event_seq) else {
            return Push::Invalid("fragment state missing");
        };
        let index = usize::from(f.index);
        let offset = index * p.chunk;
        let expected_len = if f.index + 1 == p.count {
            p.total_len - offset
        } else {
            p.chunk
        };
        if f.count != p.count || f.total_len as usize != p.total_len || f.bytes.len() != expected_len {
            self.remove(f.event_seq);
            return Push::Invalid("fragment disagrees with earlier fragments of its event");
        }
        if p.received[index] {
            return Push::Duplicate;
        }
        p.received[index] = true;
        p.received_count += 1;
        p.buf[offset..offset + expected_len].copy_from_slice(f.bytes);
        if p.received_count < p.count {
            return Push::Pending;
        }
        match self.remove(f.event_seq) {
            Some(done) => Push::Complete(done.buf),
            None => Push::Invalid("fragment state missing"),
        }
    }

    /// When the oldest event in progress expires, if any: the next time [`Self::expire`] has
    /// work to do.
    pub(crate) fn next_expiry(&self) -> Option<u64> {
        let timeout = self.limits.timeout_ns;
        self.partials
            .values()
            .map(|p| p.started.saturating_add(timeout))
            .min()
    }

    /// Abandons events older than the timeout; returns their sequence numbers.
    pub(crate) fn expire(&mut self, now: u64, expired: &mut Vec<u64>) {
        let timeout = self.limits.timeout_ns;
        let old: Vec<u64> = self
            .partials
            .iter()
            .filter(|(_, p)| now.saturating_sub(p.started) >= timeout)
            .map(|(&s, _)| s)
            .collect();
        for seq in old {
            self.remove(seq);
            expired.push(seq);
        }
    }

    /// Drops everything in progress (the connection closed); returns the sequence numbers.
    pub(crate) fn clear(&mut self) -> Vec<u64> {
        self.bytes = 0;
        core::mem::take(&mut self.partials).into_keys().collect()
    }
}
