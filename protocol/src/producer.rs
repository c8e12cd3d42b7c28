//! The producer worker: a state machine that decides when to connect, back off, send, fragment,
//! report loss and stop. The I/O shell (the driver's system thread, the Linux sensor's thread,
//! the load generator) asks [`Worker::poll`] what to do, does it, and reports the result.
//!
//! ```text
//!            poll → Connect ──on_connect(Ok)──▶ Connected ──poll → Send…──on_sent(Err)──┐
//!   Disconnected ◀──on_connect(Err): back off──┘        ▲                                │
//!        ▲                                              └── reports losses first ◀───────┘
//!        └──────────────────────────── retry when the backoff expires
//! ```
//!
//! Sequence numbers are assigned in pop order, from 1, so they have no gaps: an event the queue
//! refused never gets one (it is reported as a `ProducerQueue` count), and an event whose send
//! failed is reported with its exact number (`ProducerSend`) as the first thing after the next
//! successful connect. The Hello carries the next number, so the server also sees the outage.
//! Nothing here allocates; the caller lends the buffers.

use crate::error::EncodeError;
use crate::event::{EventHeader, EventWriter, patch_seq};
use crate::fragment::{Fragmenter, MIN_MESSAGE_LIMIT};
use crate::message::{Heartbeat, Hello, Loss, LossStage, MIN_VERSION, ProducerKind, VERSION};
use crate::queue::{Drops, Queue};

/// A queue entry: one encoded event, built in place by the callback.
pub struct EventSlot<const N: usize> {
    len: usize,
    bytes: [u8; N],
}

impl<const N: usize> Default for EventSlot<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> EventSlot<N> {
    pub const fn new() -> Self {
        EventSlot {
            len: 0,
            bytes: [0; N],
        }
    }

    /// Encodes an event into this slot. `fields` adds the typed fields; strings longer than
    /// `string_cap` (or than the slot) are truncated and flagged by the writer.
    pub fn encode(
        &mut self,
        header: &EventHeader,
        string_cap: usize,
        fields: impl FnOnce(&mut EventWriter<'_>) -> Result<(), EncodeError>,
    ) -> Result<(), EncodeError> {
        self.len = 0;
        let mut w = EventWriter::new(&mut self.bytes, header, string_cap)?;
        fields(&mut w)?;
        self.len = w.finish();
        Ok(())
    }

    /// Lets an encoder that writes a whole event (and returns its length) fill this slot.
    pub fn write_with(
        &mut self,
        encode: impl FnOnce(&mut [u8]) -> Result<usize, EncodeError>,
    ) -> Result<(), EncodeError> {
        self.len = 0;
        self.len = encode(&mut self.bytes)?.min(N);
        Ok(())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Worker settings. Times are nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct WorkerConfig<'a> {
    pub kind: ProducerKind,
    pub instance: [u8; 16],
    pub os: &'a str,
    pub os_build: u32,
    /// The largest message this producer can send (the server may agree on less).
    pub max_message: usize,
    pub backoff_min_ns: u64,
    pub backoff_max_ns: u64,
    /// Longest wait for a connect; the shell must pass it to the port call (or bound the call
    /// some other way) so that a stop is never stuck behind a silent server.
    pub connect_timeout_ns: u64,
    pub heartbeat_interval_ns: u64,
}

impl WorkerConfig<'_> {
    pub const DEFAULT_BACKOFF_MIN_NS: u64 = 50_000_000;
    pub const DEFAULT_BACKOFF_MAX_NS: u64 = 5_000_000_000;
    pub const DEFAULT_CONNECT_TIMEOUT_NS: u64 = 2_000_000_000;
    pub const DEFAULT_HEARTBEAT_NS: u64 = 1_000_000_000;
}

/// What the shell must do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Connect, sending `out[..hello_len]` as the connection information, waiting at most
    /// `timeout_ns`. Then call [`Worker::on_connect`].
    Connect { hello_len: usize, timeout_ns: u64 },
    /// Send `out[..len]` as one datagram. Then call [`Worker::on_sent`].
    Send { len: usize },
    /// Nothing to do before `until`, unless the queue gets an event or a stop is requested.
    /// `until` never passes a stop's deadline: the worker clamps it, so a shell waits exactly
    /// as long as it is told. `why` says what `until` is for.
    Wait { until: u64, why: Wake },
    /// Done: the worker stopped. Read [`Worker::stats`] for what could not be delivered.
    Stop,
}

/// Why the worker wants to run again at a [`Step::Wait`]'s `until`, like quinn-proto's
/// `poll_timeout`: the timer the shell arms is the worker's decision, not the shell's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The previous step has not been reported yet: poll again after reporting it.
    Now,
    /// The backoff after a failed connect or send ends: connect again.
    Retry,
    /// A heartbeat is due.
    Heartbeat,
    /// A requested stop's grace ends: stop then, whatever is left (and count it).
    StopDeadline,
}

/// Why a connect failed, as far as the worker's decisions go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// No server, a timeout, or a transient error.
    Unavailable,
    /// The server answered and refused.
    Refused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Disconnected { retry_at: u64 },
    Connecting,
    Connected { limit: usize },
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InFlight {
    Event { seq: u64, last_piece: bool },
    SendLoss,
    QueueLoss,
    KernelLoss { total: u64 },
    Heartbeat,
}

/// The worker's own counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Events fully handed to the port.
    pub sent: u64,
    /// Events dequeued whose send failed (reported as `ProducerSend` loss).
    pub send_failed: u64,
    /// Queue drops reported to the server.
    pub queue_drops_reported: u64,
    /// Drops before the queue (the Linux kernel's ENOBUFS) reported to the server.
    pub kernel_drops_reported: u64,
    /// Losses that could not be reported because the worker stopped while disconnected.
    pub unreported: u64,
    pub connects: u64,
    pub connect_failures: u64,
    /// The last sequence number handed to the port.
    pub last_seq: u64,
}

pub struct Worker<'a> {
    config: WorkerConfig<'a>,
    state: State,
    /// The sequence number the next popped event gets.
    next_seq: u64,
    event: &'a mut [u8],
    event_len: usize,
    /// The event being sent in pieces: its plan and the next piece.
    fragments: Option<(Fragmenter, u16)>,
    failed: Option<(u64, u64)>,
    drops: Option<Drops>,
    in_flight: Option<InFlight>,
    backoff: u64,
    heartbeat_due: u64,
    stop_deadline: Option<u64>,
    final_heartbeat_sent: bool,
    /// Running total of drops before the queue, as the shell last told it.
    kernel_dropped: u64,
    stats: WorkerStats,
}

impl<'a> Worker<'a> {
    /// `event_buf` holds one event while it is being sent; it must be as large as a queue slot.
    pub fn new(config: WorkerConfig<'a>, event_buf: &'a mut [u8], now: u64) -> Self {
        Worker {
            config,
            state: State::Disconnected { retry_at: now },
            next_seq: 1,
            event: event_buf,
            event_len: 0,
            fragments: None,
            failed: None,
            drops: None,
            in_flight: None,
            backoff: config.backoff_min_ns,
            heartbeat_due: now,
            stop_deadline: None,
            final_heartbeat_sent: false,
            kernel_dropped: 0,
            stats: WorkerStats::default(),
        }
    }

    pub fn stats(&self) -> WorkerStats {
        self.stats
    }

    /// Tells the worker the running total of events lost before they reached the queue (the
    /// Linux sensor's ENOBUFS count). The increase is reported as `Kernel` loss.
    pub fn set_kernel_dropped(&mut self, total: u64) {
        self.kernel_dropped = self.kernel_dropped.max(total);
    }

    pub fn is_connected(&self) -> bool {
        matches!(self.state, State::Connected { .. })
    }

    /// Asks the worker to finish: it drains what it can while connected, reports, and stops by
    /// `now + grace_ns` at the latest.
    pub fn stop(&mut self, now: u64, grace_ns: u64) {
        self.stop_deadline.get_or_insert(now.saturating_add(grace_ns));
    }

    /// Decides the next step. `out` receives any message to send; it must hold the agreed
    /// message limit (and a Hello).
    pub fn poll<const N: usize>(
        &mut self,
        now: u64,
        queue: &Queue<'_, EventSlot<N>>,
        out: &mut [u8],
    ) -> Step {
        if self.in_flight.is_some() || self.state == State::Connecting {
            // The shell has not reported the previous step; asking again changes nothing.
            return Step::Wait {
                until: now,
                why: Wake::Now,
            };
        }
        if self.stop_deadline.is_some_and(|d| now >= d) {
            return self.finish(queue);
        }
        match self.state {
            State::Stopped => Step::Stop,
            State::Connecting => self.wait(now, Wake::Now),
            // Stopping with nothing left to deliver or report: no reason to reconnect.
            State::Disconnected { .. } if self.stop_deadline.is_some() && self.nothing_left(queue) => {
                self.finish(queue)
            }
            // A stop's deadline cuts the backoff short, so the worker is back in time to stop.
            State::Disconnected { retry_at } if now < retry_at => self.wait(retry_at, Wake::Retry),
            State::Disconnected { .. } => self.connect_step(out),
            State::Connected { limit } => self.connected_step(now, limit, queue, out),
        }
    }

    /// A wait until `until` for `why`, cut short by a stop's deadline: the one place the
    /// deadline bounds a wait, so no shell has to.
    fn wait(&self, until: u64, why: Wake) -> Step {
        match self.stop_deadline {
            Some(deadline) if deadline < until => Step::Wait {
                until: deadline,
                why: Wake::StopDeadline,
            },
            _ => Step::Wait { until, why },
        }
    }

    /// When the worker next needs to run if nothing is queued and no stop is requested, and
    /// why: the `until` and `why` of the [`Step::Wait`] the last poll returned, without
    /// polling again. `None` while a step is in flight or once stopped.
    pub fn poll_timeout(&self) -> Option<(u64, Wake)> {
        if self.in_flight.is_some() {
            return None;
        }
        let (until, why) = match self.state {
            State::Stopped | State::Connecting => return None,
            State::Disconnected { retry_at } => (retry_at, Wake::Retry),
            State::Connected { .. } => (self.heartbeat_due, Wake::Heartbeat),
        };
        match self.wait(until, why) {
            Step::Wait { until, why } => Some((until, why)),
            _ => None,
        }
    }

    fn nothing_left<const N: usize>(&self, queue: &Queue<'_, EventSlot<N>>) -> bool {
        self.failed.is_none()
            && self.drops.is_none()
            && self.kernel_dropped == self.stats.kernel_drops_reported
            && queue.is_empty()
            && !queue.has_unreported_drops()
    }

    /// Stops for good. Whatever could not be delivered or reported is counted in
    /// `stats().unreported`, so the shell can log it: nothing disappears uncounted.
    fn finish<const N: usize>(&mut self, queue: &Queue<'_, EventSlot<N>>) -> Step {
        self.state = State::Stopped;
        let queued = core::iter::from_fn(|| queue.pop_with(|_| ())).count() as u64;
        let in_progress = u64::from(self.fragments.take().is_some());
        let dropped = self.drops.take().map_or(0, |d| d.count) + queue.take_drops(1).map_or(0, |d| d.count);
        let failed = self.failed.take().map_or(0, |(a, b)| b - a + 1);
        let kernel = self.kernel_dropped - self.stats.kernel_drops_reported;
        self.stats.unreported += queued + in_progress + dropped + failed + kernel;
        Step::Stop
    }

    fn connect_step(&mut self, out: &mut [u8]) -> Step {
        let hello = Hello {
            min_version: MIN_VERSION,
            max_version: VERSION,
            kind: self.config.kind,
            instance: self.config.instance,
            max_message: self.config.max_message.min(u32::MAX as usize) as u32,
            next_seq: self.next_seq,
            os_build: self.config.os_build,
            os: self.config.os,
        };
        match hello.encode(out) {
            Ok(hello_len) => {
                self.state = State::Connecting;
                self.in_flight = None;
                Step::Connect {
                    hello_len,
                    timeout_ns: self.config.connect_timeout_ns,
                }
            }
            // A buffer too small for a Hello is the shell's bug; stopping makes it visible.
            Err(_) => self.fail_stop(),
        }
    }

    /// A buffer too small for a message is the shell's bug. Stopping makes it visible; the
    /// next poll counts what is left.
    fn fail_stop(&mut self) -> Step {
        self.stop_deadline = Some(0);
        Step::Wait {
            until: 0,
            why: Wake::StopDeadline,
        }
    }

    fn send(&mut self, what: InFlight, len: Result<usize, EncodeError>) -> Step {
        match len {
            Ok(len) => {
                self.in_flight = Some(what);
                Step::Send { len }
            }
            Err(_) => self.fail_stop(),
        }
    }

    fn connected_step<const N: usize>(
        &mut self,
        now: u64,
        limit: usize,
        queue: &Queue<'_, EventSlot<N>>,
        out: &mut [u8],
    ) -> Step {
        if let Some((first, last)) = self.failed {
            let loss = Loss {
                stage: LossStage::ProducerSend,
                count: last - first + 1,
                first_seq: first,
                last_seq: last,
                total: self.stats.send_failed,
            };
            return self.send(InFlight::SendLoss, loss.encode(out));
        }
        if self.drops.is_none() {
            self.drops = queue.take_drops(1);
        }
        if let Some(d) = self.drops {
            let loss = Loss {
                stage: LossStage::ProducerQueue,
                count: d.count,
                first_seq: d.first_next_seq,
                last_seq: d.last_next_seq,
                total: self.stats.queue_drops_reported + d.count,
            };
            return self.send(InFlight::QueueLoss, loss.encode(out));
        }
        if self.kernel_dropped > self.stats.kernel_drops_reported {
            let count = self.kernel_dropped - self.stats.kernel_drops_reported;
            let loss = Loss {
                stage: LossStage::Kernel,
                count,
                first_seq: self.next_seq,
                last_seq: self.next_seq,
                total: self.kernel_dropped,
            };
            return self.send(
                InFlight::KernelLoss {
                    total: self.kernel_dropped,
                },
                loss.encode(out),
            );
        }
        if self.fragments.is_none() && self.pop_event(queue) {
            let seq = self.next_seq;
            self.next_seq += 1;
            let planned = patch_seq(&mut self.event[..self.event_len], seq)
                .and_then(|()| Fragmenter::new(self.event_len, seq, limit));
            match planned {
                Ok(plan) => self.fragments = Some((plan, 0)),
                Err(_) => {
                    // Cannot happen for a slot the codec filled, but if it does the number is
                    // reported as a failed send rather than vanishing.
                    self.record_failure(seq);
                    return self.connected_step(now, limit, queue, out);
                }
            }
        }
        if let Some((plan, index)) = self.fragments {
            let seq = self.next_seq - 1;
            let last_piece = index + 1 == plan.count();
            let len = plan.write(&self.event[..self.event_len], index, out);
            self.fragments = Some((plan, index + 1));
            return self.send(InFlight::Event { seq, last_piece }, len);
        }
        let stopping = self.stop_deadline.is_some();
        if now >= self.heartbeat_due || (stopping && !self.final_heartbeat_sent) {
            self.final_heartbeat_sent = stopping;
            let hb = Heartbeat {
                produced: queue.produced(),
                queue_drops_reported: self.stats.queue_drops_reported,
                send_failed: self.stats.send_failed,
                last_seq: self.stats.last_seq,
            };
            return self.send(InFlight::Heartbeat, hb.encode(out));
        }
        if stopping {
            return self.finish(queue);
        }
        self.wait(self.heartbeat_due, Wake::Heartbeat)
    }

    fn pop_event<const N: usize>(&mut self, queue: &Queue<'_, EventSlot<N>>) -> bool {
        let event = &mut *self.event;
        let popped = queue.pop_with(|slot| {
            let bytes = slot.as_bytes();
            let len = bytes.len().min(event.len());
            event[..len].copy_from_slice(&bytes[..len]);
            len
        });
        match popped {
            Some(len) => {
                self.event_len = len;
                true
            }
            None => false,
        }
    }

    fn record_failure(&mut self, seq: u64) {
        self.stats.send_failed += 1;
        self.failed = Some(match self.failed {
            Some((first, _)) => (first, seq),
            None => (seq, seq),
        });
    }

    /// Reports the result of a [`Step::Connect`]: the message limit the server agreed on.
    pub fn on_connect(&mut self, now: u64, result: Result<usize, ConnectFailure>) {
        if self.state != State::Connecting {
            return;
        }
        match result {
            Ok(limit) if limit >= MIN_MESSAGE_LIMIT => {
                self.state = State::Connected {
                    limit: limit.min(self.config.max_message),
                };
                self.backoff = self.config.backoff_min_ns;
                self.heartbeat_due = now.saturating_add(self.config.heartbeat_interval_ns);
                self.stats.connects += 1;
            }
            Ok(_) | Err(_) => {
                self.stats.connect_failures += 1;
                self.disconnect(now);
            }
        }
    }

    fn disconnect(&mut self, now: u64) {
        self.state = State::Disconnected {
            retry_at: now.saturating_add(self.backoff),
        };
        self.backoff = self.backoff.saturating_mul(2).min(self.config.backoff_max_ns);
    }

    /// Reports the result of a [`Step::Send`]. A failure means the connection is gone.
    pub fn on_sent(&mut self, now: u64, ok: bool) {
        let Some(what) = self.in_flight.take() else {
            return;
        };
        if ok {
            match what {
                InFlight::Event { seq, last_piece } => {
                    if last_piece {
                        self.fragments = None;
                        self.stats.sent += 1;
                        self.stats.last_seq = seq;
                    }
                }
                InFlight::SendLoss => self.failed = None,
                InFlight::QueueLoss => {
                    self.stats.queue_drops_reported += self.drops.map_or(0, |d| d.count);
                    self.drops = None;
                }
                InFlight::KernelLoss { total } => self.stats.kernel_drops_reported = total,
                InFlight::Heartbeat => {
                    self.heartbeat_due = now.saturating_add(self.config.heartbeat_interval_ns);
                }
            }
            return;
        }
        if let InFlight::Event { seq, .. } = what {
            self.fragments = None;
            self.record_failure(seq);
        }
        self.disconnect(now);
    }
}

/// The I/O a producer shell provides to [`run`]: a clock, a port and a way to sleep.
///
/// The Windows driver implements it with `KeQueryInterruptTime`, `ZwAlpcConnectPort` /
/// `ZwConnectPort` and `KeWaitForMultipleObjects`; the Linux producers with a Unix socket and
/// a condition variable; the tests with a simulated kernel.
pub trait ProducerIo {
    /// Monotonic nanoseconds.
    fn now(&mut self) -> u64;
    /// Connects, sending `hello` as the connection information, within `timeout_ns`. Returns the
    /// message limit the server agreed on.
    fn connect(&mut self, hello: &[u8], timeout_ns: u64) -> Result<usize, ConnectFailure>;
    /// Sends one message; `false` means the connection is gone.
    fn send(&mut self, message: &[u8]) -> bool;
    /// Sleeps until `until`, an event is queued, or a stop is requested (once a stop has been
    /// seen, only until `until` or an event: the worker's deadline is already in `until`).
    /// A plain system call: the worker decided `until`.
    fn wait(&mut self, until: u64);
    /// Whether the owner asked the worker to stop.
    fn stop_requested(&mut self) -> bool;
    /// Running total of events lost before the queue (0 for producers without such a stage).
    fn kernel_dropped(&mut self) -> u64 {
        0
    }
}

/// Runs the worker until it stops: the whole body of a producer's worker thread.
/// `stop_grace_ns` bounds how long a requested stop may spend draining and reporting.
pub fn run<const N: usize>(
    worker: &mut Worker<'_>,
    queue: &Queue<'_, EventSlot<N>>,
    io: &mut impl ProducerIo,
    out: &mut [u8],
    stop_grace_ns: u64,
) -> WorkerStats {
    loop {
        let now = io.now();
        if io.stop_requested() {
            worker.stop(now, stop_grace_ns);
        }
        worker.set_kernel_dropped(io.kernel_dropped());
        match worker.poll(now, queue, out) {
            Step::Connect {
                hello_len,
                timeout_ns,
            } => {
                let result = io.connect(&out[..hello_len], timeout_ns);
                let now = io.now();
                worker.on_connect(now, result);
            }
            Step::Send { len } => {
                let ok = io.send(&out[..len]);
                let now = io.now();
                worker.on_sent(now, ok);
            }
            Step::Wait { until, why: _ } => {
                if until > now {
                    io.wait(until);
                }
            }
            Step::Stop => return worker.stats(),
        }
    }
}
