//! Splitting an encoded event that is longer than the port's message limit.
//!
//! Legacy LPC on x64 carries at most 608 data bytes per message, so a long command line must be
//! sent in pieces; ALPC allows about 64 KiB. The fragmenter writes each piece into a caller's
//! buffer and never allocates. Every piece but the last has the same length, which is how the
//! receiver places a piece from its index alone.

use crate::error::EncodeError;
use crate::message::{FRAGMENT_HEADER_LEN, Fragment};

/// The smallest message limit fragmentation supports (DESIGN: 64 bytes of data).
pub const MIN_MESSAGE_LIMIT: usize = 64;

/// Splits one encoded event into messages of at most `limit` bytes.
#[derive(Debug, Clone)]
pub struct Fragmenter<'a> {
    event: &'a [u8],
    seq: u64,
    chunk: usize,
    count: u16,
    next: u16,
}

impl<'a> Fragmenter<'a> {
    /// Plans the split. An event that fits in one message is sent whole (one piece, no
    /// fragment header).
    pub fn new(event: &'a [u8], seq: u64, limit: usize) -> Result<Self, EncodeError> {
        if limit < MIN_MESSAGE_LIMIT {
            return Err(EncodeError::LimitTooSmall { limit });
        }
        if event.len() <= limit {
            return Ok(Fragmenter {
                event,
                seq,
                chunk: event.len(),
                count: 1,
                next: 0,
            });
        }
        let chunk = limit - FRAGMENT_HEADER_LEN;
        let count = event.len().div_ceil(chunk);
        if count > usize::from(u16::MAX) || event.len() > u32::MAX as usize {
            return Err(EncodeError::TooManyFragments { len: event.len() });
        }
        Ok(Fragmenter {
            event,
            seq,
            chunk,
            count: count as u16,
            next: 0,
        })
    }

    /// How many messages the event takes.
    pub fn count(&self) -> u16 {
        self.count
    }

    /// Writes the next message into `out` and returns its length, or `None` when done.
    pub fn next_message(&mut self, out: &mut [u8]) -> Option<Result<usize, EncodeError>> {
        if self.next >= self.count {
            return None;
        }
        let index = self.next;
        self.next += 1;
        if self.count == 1 {
            return Some(match out.get_mut(..self.event.len()) {
                Some(dst) => {
                    dst.copy_from_slice(self.event);
                    Ok(self.event.len())
                }
                None => Err(EncodeError::BufferTooSmall {
                    needed: self.event.len(),
                    capacity: out.len(),
                }),
            });
        }
        let start = usize::from(index) * self.chunk;
        let end = (start + self.chunk).min(self.event.len());
        let frag = Fragment {
            event_seq: self.seq,
            index,
            count: self.count,
            total_len: self.event.len() as u32,
            bytes: &self.event[start..end],
        };
        Some(frag.encode(out))
    }
}
