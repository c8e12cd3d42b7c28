//! `request`: the inverted call of seeds 001/002. The consumer keeps K requests pending, like
//! overlapped reads or IOCTLs the driver holds; the producer completes one pending request per
//! message by copying it into the request's buffer and signalling the request's eventfd (its
//! OVERLAPPED event). A kernel callback cannot wait, so a message that finds no request pending
//! is dropped: seed 002's lost notification, counted here as `no_pending_request`.
//!
//! The consumer waits on its requests in the order it issued them, as a client looping over
//! its overlapped reads does. With `order=fifo` the producer completes the oldest request, so
//! events arrive in order; with `order=lifo` (seed 002's head-inserted list) it completes the
//! newest, and events arrive out of order.

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::{Outcome, Transport, TransportError, TransportSpec};
use crate::measure::{Job, Losses, Receiver, produce};
use crate::plan::Mode;

/// A request's length when it was cancelled (the producer finished) rather than completed.
const CANCELLED: usize = usize::MAX;

pub struct InvertedCall {
    limit: usize,
    pending: usize,
    lifo: bool,
}

impl InvertedCall {
    pub fn new(spec: &TransportSpec) -> Self {
        InvertedCall {
            limit: spec.number("limit"),
            pending: spec.number("pending"),
            lifo: spec.get("order") == "lifo",
        }
    }
}

/// One outstanding request: its buffer, the length written, and its completion event.
struct Request {
    buf: Mutex<Vec<u8>>,
    len: AtomicUsize,
    done: EventFd,
}

/// The producer's list of pending requests (a driver's IRP queue).
struct PendingList {
    ids: VecDeque<usize>,
    closed: bool,
}

impl Request {
    fn complete(&self, msg: Option<&[u8]>) {
        match msg {
            Some(m) => {
                let mut buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
                buf[..m.len()].copy_from_slice(m);
                self.len.store(m.len(), Ordering::Release);
            }
            None => self.len.store(CANCELLED, Ordering::Release),
        }
        let _ = self.done.write(1);
    }

    /// Waits for completion; `false` if none came within ten seconds (the producer is gone).
    fn wait(&self) -> bool {
        for _ in 0..200 {
            let mut fds = [PollFd::new(self.done.as_fd(), PollFlags::POLLIN)];
            if matches!(poll(&mut fds, PollTimeout::from(50u16)), Ok(n) if n > 0) {
                let _ = self.done.read();
                return true;
            }
        }
        false
    }
}

impl Transport for InvertedCall {
    fn limit(&self) -> usize {
        self.limit
    }

    fn run(&self, job: &Job, _mode: Mode) -> Result<Outcome, TransportError> {
        let limit = self.limit;
        let requests = (0..self.pending)
            .map(|_| {
                Ok(Request {
                    buf: Mutex::new(vec![0u8; limit]),
                    len: AtomicUsize::new(0),
                    done: EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?,
                })
            })
            .collect::<Result<Vec<_>, TransportError>>()?;
        let list = Mutex::new(PendingList {
            ids: VecDeque::with_capacity(self.pending),
            closed: false,
        });
        let lock = || list.lock().unwrap_or_else(|e| e.into_inner());
        // The producer starts once the first K requests are pending, as a driver starts
        // reporting once its client has connected.
        let issued = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            let consumer = s.spawn(|| {
                let mut rx = Receiver::new(job, limit);
                let mut outstanding = VecDeque::with_capacity(requests.len());
                let issue = |id: usize, outstanding: &mut VecDeque<usize>| {
                    let mut l = lock();
                    if !l.closed {
                        l.ids.push_back(id);
                        outstanding.push_back(id);
                    }
                };
                for id in 0..requests.len() {
                    issue(id, &mut outstanding);
                }
                issued.wait();
                let mut scratch = vec![0u8; limit];
                while let Some(id) = outstanding.pop_front() {
                    let r = &requests[id];
                    if !r.wait() {
                        break;
                    }
                    let len = r.len.load(Ordering::Acquire);
                    if len == CANCELLED {
                        continue;
                    }
                    // Copy out and re-issue at once, as a client does before it processes.
                    scratch[..len].copy_from_slice(&r.buf.lock().unwrap_or_else(|e| e.into_inner())[..len]);
                    issue(id, &mut outstanding);
                    rx.on_message(&scratch[..len]);
                }
                rx.stop_clock();
                rx
            });
            issued.wait();
            let tally = produce(job, limit, |m| {
                let id = {
                    let mut l = lock();
                    if self.lifo {
                        l.ids.pop_back()
                    } else {
                        l.ids.pop_front()
                    }
                };
                match id {
                    Some(id) => {
                        requests[id].complete(Some(m));
                        Ok(())
                    }
                    None => Err("no_pending_request"),
                }
            });
            // Close the list and cancel what is still pending, so the consumer stops waiting.
            let left: Vec<usize> = {
                let mut l = lock();
                l.closed = true;
                l.ids.drain(..).collect()
            };
            for id in left {
                requests[id].complete(None);
            }
            let rx = consumer
                .join()
                .map_err(|_| TransportError::Other("consumer thread panicked".into()))?;
            Ok(Outcome::from_ends(tally, rx, Losses::default(), limit))
        })
    }
}
