//! Splitting an encoded event that is longer than the port's message limit.
//!
//! Legacy LPC on x64 carries at most 608 data bytes per message, so a long command line must be
//! sent in pieces; ALPC allows about 64 KiB. The fragmenter writes each piece into a caller's
//! buffer and never allocates. Every piece but the last has the same length, which is how the
//! receiver places a piece from its index alone.

use crate::error::EncodeError;
use crate::message::{FRAGMENT_HEADER_LEN, Fragment};

/// The smallest message limit fragmentation supports: 64 bytes of data, room for a fragment
/// header and a useful piece.
pub const MIN_MESSAGE_LIMIT: usize = 64;

/// How one encoded event is split into messages of at most `limit` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragmenter {
    len: usize,
    seq: u64,
    chunk: usize,
    count: u16,
}

impl Fragmenter {
    /// Plans the split of an event of `len` bytes. An event that fits in one message is sent
    /// whole (one piece, no fragment header).
    pub fn new(len: usize, seq: u64, limit: usize) -> Result<Self, EncodeError> {
        if limit < MIN_MESSAGE_LIMIT {
            return Err(EncodeError::LimitTooSmall { limit });
        }
        if len <= limit {
            return Ok(Fragmenter {
                len,
                seq,
                chunk: len,
                count: 1,
            });
        }
        let chunk = limit - FRAGMENT_HEADER_LEN;
        let count = len.div_ceil(chunk);
        if count > usize::from(u16::MAX) || len > u32::MAX as usize {
            return Err(EncodeError::TooManyFragments { len });
        }
        Ok(Fragmenter {
            len,
            seq,
            chunk,
            count: count as u16,
        })
    }

    /// How many messages the event takes.
    pub fn count(&self) -> u16 {
        self.count
    }

    /// Writes message `index` (from 0) of `event` into `out` and returns its length.
    pub fn write(&self, event: &[u8], index: u16, out: &mut [u8]) -> Result<usize, EncodeError> {
        if event.len() != self.len || index >= self.count {
            return Err(EncodeError::BufferTooSmall {
                needed: self.len,
                capacity: event.len(),
            });
        }
        if self.count == 1 {
            let capacity = out.len();
            let dst = out.get_mut(..self.len).ok_or(EncodeError::BufferTooSmall {
                needed: self.len,
                capacity,
            })?;
            dst.copy_from_slice(event);
            return Ok(self.len);
        }
        let start = usize::from(index) * self.chunk;
        let end = (start + self.chunk).min(self.len);
        Fragment {
            event_seq: self.seq,
            index,
            count: self.count,
            total_len: self.len as u32,
            bytes: &event[start..end],
        }
        .encode(out)
    }
}
