//! The user-mode producer runtime: the protocol's queue and worker on a thread, over the port
//! (a Unix socket, or an ALPC/LPC port on Windows).
//!
//! This is the same shape as the Windows driver: whoever sees events pushes them into the bounded
//! queue without blocking (a full queue is counted), and one worker thread runs
//! `lpcmon_protocol::producer::run`, which connects, backs off, sends and reports loss.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use alpc_server::client::{PortConnection, PortError, connect_port};
use lpcmon_protocol::ProducerKind;
use lpcmon_protocol::message::{HELLO_MAX_LEN, Hello, Message};
use lpcmon_protocol::producer::{
    self, ConnectFailure, EventSlot, ProducerIo, Worker, WorkerConfig, WorkerStats,
};
use lpcmon_protocol::queue::{Queue, Slot};

/// How a producer reaches the server.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    pub port: PathBuf,
    pub kind: ProducerKind,
    /// Queue slots; rounded up to a power of two.
    pub queue_capacity: usize,
    /// The largest message this producer sends (the server may agree on less).
    pub max_message: usize,
    /// How long a stop may spend draining the queue and reporting.
    pub stop_grace: Duration,
    pub heartbeat: Duration,
    /// How long the worker, having sent everything queued, waits for more before it sleeps
    /// until a push wakes it. Events pushed meanwhile go out together when it ends, so a steady
    /// stream wakes the worker about once per `linger` instead of once per event, and each
    /// event waits at most this long. Zero (the default) sends every event at once.
    pub linger: Duration,
}

impl ProducerConfig {
    pub fn new(port: impl Into<PathBuf>, kind: ProducerKind) -> Self {
        ProducerConfig {
            port: port.into(),
            kind,
            queue_capacity: 16 * 1024,
            max_message: 64 * 1024,
            stop_grace: Duration::from_secs(5),
            heartbeat: Duration::from_secs(1),
            linger: Duration::ZERO,
        }
    }
}

/// What a stopped producer reports about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerReport {
    /// Every event offered to the queue.
    pub produced: u64,
    /// Refused by the full queue (reported to the server as `producer_queue` loss).
    pub queue_dropped: u64,
    pub worker: WorkerStats,
}

/// A running producer. Push events with [`Producer::push`]; stop it with [`Producer::stop`].
pub struct Producer<const N: usize> {
    queue: &'static Queue<'static, EventSlot<N>>,
    worker: Thread,
    /// Set while the worker sleeps with an empty queue past its linger: only then does a push
    /// need to wake it.
    idle: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    kernel_dropped: Arc<AtomicU64>,
    join: JoinHandle<WorkerStats>,
}

/// The worker's I/O: the real port, a monotonic clock, and parking for waits.
struct PortIo<const N: usize> {
    config: ProducerConfig,
    queue: &'static Queue<'static, EventSlot<N>>,
    idle: Arc<AtomicBool>,
    /// `queue.produced()` when the last wait ended.
    seen: u64,
    conn: Option<Box<dyn PortConnection>>,
    origin: Instant,
    stop: Arc<AtomicBool>,
    kernel_dropped: Arc<AtomicU64>,
    failures: u64,
    /// The Hello of the last connect, to reconnect with when a send fails (see
    /// [`PortIo::resend`]).
    hello: Vec<u8>,
}

/// How long a failed event send keeps trying to reconnect and deliver the event before it is
/// given up (and counted as `producer_send` loss): a server restart takes well under this.
const RESEND_WITHIN: Duration = Duration::from_secs(30);
/// First and longest pause between those reconnect attempts.
const RESEND_BACKOFF_MIN: Duration = Duration::from_millis(10);
const RESEND_BACKOFF_MAX: Duration = Duration::from_millis(500);

impl<const N: usize> ProducerIo for PortIo<N> {
    fn now(&mut self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    fn connect(&mut self, hello: &[u8], timeout_ns: u64) -> Result<usize, ConnectFailure> {
        self.conn = None;
        self.hello.clear();
        self.hello.extend_from_slice(hello);
        let port = self.config.port.to_string_lossy();
        match connect_port(&port, hello, Duration::from_nanos(timeout_ns)) {
            Ok(conn) => {
                let limit = conn.max_message();
                tracing::info!(port = %self.config.port.display(), limit, "connected to the lpcmon port");
                self.conn = Some(conn);
                self.failures = 0;
                Ok(limit)
            }
            Err(e) => {
                // Say it the first time and then now and again, not at every backoff step.
                if self.failures.is_power_of_two() || self.failures == 0 {
                    tracing::warn!(error = %e, attempts = self.failures + 1, "cannot connect to the lpcmon port; retrying");
                }
                self.failures += 1;
                Err(match e {
                    PortError::Refused { .. } => ConnectFailure::Refused,
                    _ => ConnectFailure::Unavailable,
                })
            }
        }
    }

    fn send(&mut self, message: &[u8]) -> bool {
        let Some(conn) = self.conn.as_mut() else {
            return false;
        };
        match conn.send(message) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "send to the lpcmon port failed; reconnecting");
                self.conn = None;
                self.resend(message)
            }
        }
    }

    fn wait(&mut self, until: u64) {
        // Linger first (see `ProducerConfig::linger`): pushes do not wake this thread meanwhile.
        if !self.config.linger.is_zero() {
            let linger_end = until.min(self.now() + self.config.linger.as_nanos() as u64);
            std::thread::park_timeout(Duration::from_nanos(linger_end.saturating_sub(self.now())));
        }
        // Then sleep until woken: a push sees `idle` and unparks. Events pushed since the last
        // wait that are still queued (pushed after the worker found the queue empty, or while it
        // lingered) go out first; checking after setting the flag (the fences pair with
        // `push`'s) closes the gap where a push saw it still clear. Events the worker could not
        // send (it is disconnected) do not keep it awake: only new pushes do.
        self.idle.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let fresh = !self.queue.is_empty() && self.queue.produced() != self.seen;
        if !fresh {
            std::thread::park_timeout(Duration::from_nanos(until.saturating_sub(self.now())));
        }
        self.idle.store(false, Ordering::SeqCst);
        self.seen = self.queue.produced();
    }

    fn stop_requested(&mut self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn kernel_dropped(&mut self) -> u64 {
        self.kernel_dropped.load(Ordering::Relaxed)
    }
}

impl<const N: usize> PortIo<N> {
    /// Delivers an event whose send failed because the connection went (the server stopped or
    /// restarted) on a new connection, whose Hello announces the event's own sequence number:
    /// the server expects exactly that event next, so a graceful server restart loses nothing.
    ///
    /// A failed send on a SEQPACKET socket or an ALPC port queued nothing, so the event cannot
    /// arrive twice. Gives up, and the worker counts the event as `producer_send` loss as
    /// before, when the message is not one whole event (a fragment cannot be resent alone),
    /// the server refuses the Hello, [`RESEND_WITHIN`] passes, or a requested stop's grace
    /// period runs out. While it tries, pushers keep filling the queue (a full queue is
    /// counted), as while the worker is disconnected.
    fn resend(&mut self, message: &[u8]) -> bool {
        let Ok(Message::Event(event)) = Message::decode(message, usize::MAX) else {
            return false;
        };
        let mut hello_buf = [0u8; HELLO_MAX_LEN];
        let hello_len = match Message::decode(&self.hello, HELLO_MAX_LEN) {
            Ok(Message::Hello(hello)) => {
                let resume = Hello {
                    next_seq: event.header.seq,
                    ..hello
                };
                match resume.encode(&mut hello_buf) {
                    Ok(len) => len,
                    Err(_) => return false,
                }
            }
            _ => return false,
        };
        let started = Instant::now();
        let mut deadline = started + RESEND_WITHIN;
        let mut stop_seen = false;
        let mut backoff = RESEND_BACKOFF_MIN;
        let port = self.config.port.to_string_lossy().into_owned();
        loop {
            if !stop_seen && self.stop.load(Ordering::Acquire) {
                stop_seen = true;
                deadline = deadline.min(Instant::now() + self.config.stop_grace);
            }
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!(
                    seq = event.header.seq,
                    "could not deliver an event after the connection to the lpcmon port was \
                     lost; it is reported as producer_send loss"
                );
                return false;
            }
            let timeout = Duration::from_nanos(WorkerConfig::DEFAULT_CONNECT_TIMEOUT_NS).min(deadline - now);
            match connect_port(&port, &hello_buf[..hello_len], timeout) {
                Ok(mut conn) if conn.max_message() >= message.len() => match conn.send(message) {
                    Ok(()) => {
                        tracing::info!(
                            seq = event.header.seq,
                            after_ms = started.elapsed().as_millis() as u64,
                            "reconnected to the lpcmon port and delivered the event whose send had failed"
                        );
                        self.conn = Some(conn);
                        self.failures = 0;
                        return true;
                    }
                    Err(e) => tracing::debug!(error = %e, "resend failed; retrying"),
                },
                Ok(_) => return false,
                Err(PortError::Refused { .. }) => return false,
                Err(e) => tracing::debug!(error = %e, "reconnect for a resend failed; retrying"),
            }
            let pause = backoff.min(deadline.saturating_duration_since(Instant::now()));
            // A sleep, not a park: pushers unpark this thread on every event.
            std::thread::sleep(pause);
            backoff = (backoff * 2).min(RESEND_BACKOFF_MAX);
        }
    }
}

/// A random instance id: a producer restart must look like a new producer.
fn instance_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    if getrandom::fill(&mut id).is_err() {
        // No entropy source: fall back to time and pid, still unique per start in practice.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        id[..8].copy_from_slice(&(t as u64).to_le_bytes());
        id[8..12].copy_from_slice(&std::process::id().to_le_bytes());
    }
    id
}

fn os_description() -> String {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{} {}", std::env::consts::OS, release.trim())
}

impl<const N: usize> Producer<N> {
    /// Allocates the queue and starts the worker thread. The worker connects (and reconnects)
    /// on its own; events pushed meanwhile wait in the queue.
    pub fn start(config: ProducerConfig) -> std::io::Result<Self> {
        let capacity = config.queue_capacity.clamp(2, 1 << 22).next_power_of_two();
        // The queue lives as long as the process: producers are created once per process, and
        // the worker thread and every pusher borrow it.
        let slots: &'static [Slot<EventSlot<N>>] =
            Box::leak((0..capacity).map(|i| Slot::new(i, EventSlot::new())).collect());
        let queue: &'static Queue<'static, EventSlot<N>> =
            Box::leak(Box::new(Queue::new(slots).expect("capacity is a power of two")));
        let stop = Arc::new(AtomicBool::new(false));
        let kernel_dropped = Arc::new(AtomicU64::new(0));
        let idle = Arc::new(AtomicBool::new(false));
        let mut io = PortIo {
            config: config.clone(),
            queue,
            idle: idle.clone(),
            seen: 0,
            conn: None,
            origin: Instant::now(),
            stop: stop.clone(),
            kernel_dropped: kernel_dropped.clone(),
            failures: 0,
            hello: Vec::with_capacity(HELLO_MAX_LEN),
        };
        let join = std::thread::Builder::new()
            .name(format!("lpcmon-{}-worker", config.kind.name()))
            .spawn(move || {
                let os = os_description();
                let worker_config = WorkerConfig {
                    kind: config.kind,
                    instance: instance_id(),
                    os: &os,
                    os_build: 0,
                    max_message: config.max_message,
                    backoff_min_ns: WorkerConfig::DEFAULT_BACKOFF_MIN_NS,
                    backoff_max_ns: WorkerConfig::DEFAULT_BACKOFF_MAX_NS,
                    connect_timeout_ns: WorkerConfig::DEFAULT_CONNECT_TIMEOUT_NS,
                    heartbeat_interval_ns: config.heartbeat.as_nanos() as u64,
                };
                let mut event_buf = vec![0u8; N];
                let mut out = vec![0u8; config.max_message.max(256)];
                let now = io.now();
                let mut worker = Worker::new(worker_config, &mut event_buf, now);
                producer::run(
                    &mut worker,
                    queue,
                    &mut io,
                    &mut out,
                    config.stop_grace.as_nanos() as u64,
                )
            })?;
        let worker = join.thread().clone();
        Ok(Producer {
            queue,
            worker,
            idle,
            stop,
            kernel_dropped,
            join,
        })
    }

    /// Offers one event; `fill` encodes it into the slot. Never blocks. Returns `false` when
    /// the queue was full (the drop is counted and will be reported).
    pub fn push(&self, fill: impl FnOnce(&mut EventSlot<N>)) -> bool {
        let ok = self.queue.push_with(fill).is_ok();
        // Pairs with the worker's fence between setting `idle` and looking at the queue.
        fence(Ordering::SeqCst);
        if self.idle.load(Ordering::SeqCst) {
            self.worker.unpark();
        }
        ok
    }

    /// Adds events lost before they reached this producer (the kernel's ENOBUFS).
    pub fn add_kernel_dropped(&self, n: u64) {
        self.kernel_dropped.fetch_add(n, Ordering::Relaxed);
        self.worker.unpark();
    }

    /// Stops the worker: it drains and reports what it can within the grace period.
    pub fn stop(self) -> ProducerReport {
        self.stop.store(true, Ordering::Release);
        self.worker.unpark();
        let worker = self.join.join().unwrap_or_default();
        ProducerReport {
            produced: self.queue.produced(),
            queue_dropped: self.queue.dropped_total(),
            worker,
        }
    }
}
