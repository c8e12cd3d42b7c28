//! `shm`: seed 000's design done as a ring. A shared anonymous mapping holds the ring (see
//! `ring.rs`); an eventfd wakes the consumer, and like the seed's `KeSetEvent` several signals
//! collapse into one wake. `slots=1,full=overwrite` is the seed itself: one slot, overwritten
//! by the next event whether or not it was read. The lab counts every overwrite, because it
//! sees both ends; a real consumer of that design could not.

use std::num::NonZeroUsize;
use std::os::fd::AsFd;
use std::sync::atomic::AtomicU64;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous, munmap};

use super::ring::{self, Full, Ring, Signal};
use super::{Outcome, Transport, TransportError, TransportSpec};
use crate::measure::Job;
use crate::plan::Mode;

pub struct Shm {
    limit: usize,
    slots: usize,
    full: Full,
}

impl Shm {
    pub fn new(spec: &TransportSpec) -> Self {
        Shm {
            limit: spec.number("limit"),
            slots: spec.number("slots"),
            full: Full::parse(spec.get("full")),
        }
    }
}

/// An eventfd as the ring's signal.
struct EventFdSignal(EventFd);

impl Signal for EventFdSignal {
    fn notify(&self) {
        let _ = self.0.write(1);
    }

    fn wait(&self, timeout_ms: u32) {
        let mut fds = [PollFd::new(self.0.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(timeout_ms.min(10_000) as i32).unwrap_or(PollTimeout::MAX);
        if matches!(poll(&mut fds, timeout), Ok(n) if n > 0) {
            // Reading resets the counter: every signal so far becomes one wake.
            let _ = self.0.read();
        }
    }
}

/// A shared anonymous mapping, unmapped on drop.
struct Mapping {
    ptr: std::ptr::NonNull<std::ffi::c_void>,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> Result<Self, TransportError> {
        let size = NonZeroUsize::new(len).ok_or_else(|| TransportError::Other("empty ring".into()))?;
        // SAFETY: a fresh anonymous mapping aliases nothing; the kernel zero-fills it.
        let ptr = unsafe {
            mmap_anonymous(
                None,
                size,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
            )?
        };
        Ok(Mapping { ptr, len })
    }

    fn words(&self) -> &[AtomicU64] {
        // SAFETY: the mapping is page-aligned, `len` bytes long, zeroed, lives as long as
        // `self`, and is only ever accessed through these atomics.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<AtomicU64>(), self.len / 8) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned, and no borrow of `words()`
        // outlives `self`.
        let _ = unsafe { munmap(self.ptr, self.len) };
    }
}

impl Transport for Shm {
    fn limit(&self) -> usize {
        self.limit
    }

    fn run(&self, job: &Job, _mode: Mode) -> Result<Outcome, TransportError> {
        let map = Mapping::new(Ring::bytes_needed(self.slots, self.limit))?;
        let signal = EventFdSignal(EventFd::from_flags(
            EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK,
        )?);
        ring::run_cell(job, map.words(), self.slots, self.limit, self.full, &signal)
    }
}
