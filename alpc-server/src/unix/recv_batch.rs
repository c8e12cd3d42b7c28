//! Receiving many datagrams in one system call (`recvmmsg`) on a port connection.
//!
//! A producer at full rate keeps dozens of datagrams queued on its socket; taking them one
//! `recv` at a time costs a system call each, and a dispatcher lock each. This takes up to
//! [`BATCH`] at once: it blocks (up to the socket's receive timeout) for the first, then
//! takes only what is already waiting (`MSG_WAITFORONE`), so a quiet producer's event is
//! handled as soon as it arrives.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{self, MsgFlags, MultiHeaders};

/// Most datagrams taken per call.
pub(super) const BATCH: usize = 16;

pub(super) struct BatchReceiver {
    /// [`BATCH`] slots of `slot` bytes each. Zero-filled by the allocator's fresh pages, so a
    /// slot only becomes resident as far as datagrams fill it.
    buf: Vec<u8>,
    slot: usize,
    headers: MultiHeaders<()>,
    /// Each datagram's length from the last call, as the kernel reports it with `MSG_TRUNC`:
    /// its full length, even when longer than the slot.
    lens: Vec<usize>,
}

impl BatchReceiver {
    /// Slots of `slot` bytes: one more than the largest datagram accepted, so an oversized one
    /// is seen as oversized.
    pub(super) fn new(slot: usize) -> Self {
        BatchReceiver {
            buf: vec![0u8; BATCH * slot],
            slot,
            headers: MultiHeaders::preallocate(BATCH, None),
            lens: Vec::with_capacity(BATCH),
        }
    }

    /// The first slot, for receiving one datagram at a time (the handshake, the final drain).
    pub(super) fn first_slot(&mut self) -> &mut [u8] {
        &mut self.buf[..self.slot]
    }

    /// Waits, up to the socket's receive timeout, for at least one datagram and takes every
    /// one already waiting, up to [`BATCH`]. Returns how many it took; at the end of the
    /// stream each further slot reads as an empty datagram, as `recv` would read it.
    pub(super) fn recv(&mut self, conn: &OwnedFd) -> nix::Result<usize> {
        let mut iovs: Vec<[IoSliceMut<'_>; 1]> = self
            .buf
            .chunks_mut(self.slot)
            .map(|slot| [IoSliceMut::new(slot)])
            .collect();
        let received = socket::recvmmsg(
            conn.as_raw_fd(),
            &mut self.headers,
            iovs.iter_mut(),
            MsgFlags::MSG_TRUNC | MsgFlags::MSG_WAITFORONE,
            None,
        )?;
        self.lens.clear();
        self.lens.extend(received.map(|m| m.bytes));
        Ok(self.lens.len())
    }

    /// Datagram `i` of the last [`Self::recv`], cut to its slot.
    pub(super) fn datagram(&self, i: usize) -> &[u8] {
        let len = self.lens[i].min(self.slot);
        &self.buf[i * self.slot..i * self.slot + len]
    }

    /// How many datagrams of the last [`Self::recv`] come before its trailing empty ones: an
    /// empty datagram followed by a non-empty one is a datagram, only trailing ones may be
    /// the end of the stream.
    pub(super) fn before_trailing_empty(&self) -> usize {
        self.lens.iter().rposition(|&n| n > 0).map_or(0, |last| last + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

    fn pair() -> (OwnedFd, OwnedFd) {
        socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap()
    }

    fn send(fd: &OwnedFd, data: &[u8]) {
        socket::send(fd.as_raw_fd(), data, MsgFlags::MSG_NOSIGNAL).unwrap();
    }

    /// Waiting datagrams come out whole, in order, at most BATCH per call; an oversized one
    /// keeps its full length; the end of the stream reads as trailing empty datagrams.
    #[test]
    fn takes_what_is_waiting_in_order() {
        let (a, b) = pair();
        let mut r = BatchReceiver::new(9);
        for i in 0..BATCH + 3 {
            send(&a, format!("m{i}").as_bytes());
        }
        send(&a, b"0123456789abc");
        assert_eq!(r.recv(&b).unwrap(), BATCH);
        assert_eq!(r.datagram(0), b"m0");
        assert_eq!(r.datagram(BATCH - 1), format!("m{}", BATCH - 1).as_bytes());
        assert_eq!(r.before_trailing_empty(), BATCH);
        assert_eq!(r.recv(&b).unwrap(), 4);
        assert_eq!(r.datagram(2), format!("m{}", BATCH + 2).as_bytes());
        // Cut to the slot, but longer than it: the session sees it as oversized.
        assert_eq!(r.datagram(3), b"012345678");
        assert_eq!(r.lens[3], 13);
        send(&a, b"");
        send(&a, b"x");
        drop(a);
        let n = r.recv(&b).unwrap();
        assert!(n >= 2);
        assert_eq!(r.datagram(0), b"");
        assert_eq!(r.datagram(1), b"x");
        // The empty datagram before "x" is a datagram; whatever follows "x" is the end.
        assert_eq!(r.before_trailing_empty(), 2);
    }
}
