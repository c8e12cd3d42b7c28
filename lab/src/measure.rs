//! What both ends of a cell measure with: one clock, thread CPU time, the events a producer
//! sends, and the consumer-side tally that reassembles fragments and checks order.
//!
//! The lab owns both ends of every channel, so it can afford what a real consumer cannot: a
//! table of push times indexed by event number (latency without trusting any clock in the
//! message) and a bitmap of delivered events (exact duplicates, reordering and loss).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use lpcmon_protocol::event::{EventHeader, EventKind, FieldType};
use lpcmon_protocol::fragment::Fragmenter;
use lpcmon_protocol::message::Message;
use lpcmon_protocol::producer::EventSlot;

use crate::plan::{Load, Rate};

/// The most events one cell sends, whatever its rate and duration: bounds the push-time table.
pub const MAX_EVENTS_PER_CELL: u64 = 4_000_000;
/// Slot size of encoded events: the largest size a plan may ask for.
pub const MAX_EVENT_SIZE: usize = 64 * 1024;
/// Bytes a command-line field adds besides its text.
const FIELD_OVERHEAD: usize = 7;

/// The smallest event the lab can encode (header plus an empty padding field).
pub fn min_event_size() -> usize {
    lpcmon_protocol::event::EVENT_MIN_LEN + FIELD_OVERHEAD
}

/// Thread CPU time of the calling thread, nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    #[cfg(unix)]
    {
        use nix::time::{ClockId, clock_gettime};
        clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
            .map_or(0, |t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
    }
    #[cfg(windows)]
    {
        crate::transport::windows::thread_cpu_ns()
    }
}

/// CPU time of the whole process, nanoseconds (for sides that are many threads, like the
/// production path's server).
pub fn process_cpu_ns() -> u64 {
    #[cfg(unix)]
    {
        use nix::time::{ClockId, clock_gettime};
        clock_gettime(ClockId::CLOCK_PROCESS_CPUTIME_ID)
            .map_or(0, |t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
    }
    #[cfg(windows)]
    {
        crate::transport::windows::process_cpu_ns()
    }
}

/// What a cell asks of a transport: the event size, pacing and amount, and the shared clock
/// and push-time table both ends use.
pub struct Job {
    pub size: usize,
    pub rate: Rate,
    pub load: Load,
    origin: Instant,
    push_ns: Vec<AtomicU64>,
    /// Set by Ctrl-C: the producer stops early, the cell is discarded.
    pub cancel: &'static AtomicBool,
}

impl Job {
    pub fn new(size: usize, rate: Rate, load: Load, cancel: &'static AtomicBool) -> Self {
        let planned = match (load, rate) {
            (Load::Messages(n), _) => n,
            (Load::Duration(d), Rate::PerSecond(r)) => (d.as_secs_f64() * r as f64).ceil() as u64 + 1,
            (Load::Duration(_), Rate::Max) => MAX_EVENTS_PER_CELL,
        }
        .min(MAX_EVENTS_PER_CELL);
        Job {
            size,
            rate,
            load,
            origin: Instant::now(),
            push_ns: (0..=planned).map(|_| AtomicU64::new(0)).collect(),
            cancel,
        }
    }

    /// Nanoseconds since the cell began, on the clock both ends share.
    pub fn now(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    /// Most events this cell may send.
    pub fn capacity(&self) -> u64 {
        self.push_ns.len() as u64 - 1
    }

    /// Records that event `n` was pushed now.
    pub fn pushed(&self, n: u64) {
        if let Some(slot) = self.push_ns.get(n as usize) {
            slot.store(self.now(), Ordering::Release);
        }
    }

    /// When event `n` was pushed, if it was.
    pub fn push_time(&self, n: u64) -> Option<u64> {
        self.push_ns
            .get(n as usize)
            .map(|s| s.load(Ordering::Acquire))
            .filter(|&t| t != 0)
    }

    /// How many messages an event of this cell takes at `limit` bytes per message.
    pub fn fragments(&self, limit: usize) -> u16 {
        Fragmenter::new(self.size, 1, limit).map_or(1, |f| f.count())
    }

    /// A pacer for the producer thread.
    pub fn pacer(&self) -> Pacer<'_> {
        Pacer {
            job: self,
            next: 1,
            started: Instant::now(),
            waiting_cpu_ns: 0,
            interval: match self.rate {
                Rate::Max => None,
                Rate::PerSecond(r) => Some(Duration::from_secs_f64(1.0 / r.max(1) as f64)),
            },
        }
    }
}

/// Hands out event numbers 1, 2, … at the cell's offered rate until its load is done.
pub struct Pacer<'a> {
    job: &'a Job,
    next: u64,
    started: Instant,
    interval: Option<Duration>,
    /// CPU spent waiting for the schedule (the last stretch is spun, not slept), which is the
    /// lab's and not the transport's, so producers subtract it.
    pub waiting_cpu_ns: u64,
}

impl Iterator for Pacer<'_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        let n = self.next;
        if n > self.job.capacity() || self.job.cancel.load(Ordering::Relaxed) {
            return None;
        }
        match self.job.load {
            Load::Messages(total) if n > total => return None,
            Load::Duration(d) if self.started.elapsed() >= d => return None,
            _ => {}
        }
        if let Some(interval) = self.interval {
            // Pace against the schedule, not the previous send, so the average rate holds.
            let due = self.started + interval.mul_f64((n - 1) as f64);
            let cpu0 = thread_cpu_ns();
            loop {
                let now = Instant::now();
                if now >= due {
                    break;
                }
                let left = due - now;
                if left > Duration::from_micros(200) {
                    std::thread::sleep(left - Duration::from_micros(100));
                } else {
                    std::thread::yield_now();
                }
            }
            self.waiting_cpu_ns += thread_cpu_ns() - cpu0;
        }
        self.next += 1;
        Some(n)
    }
}

/// Encodes the cell's events: a `process.exec` whose command line pads it to the cell's size,
/// whose `seq` and `tid` are the event number (1, 2, …) so every consumer can tell which event
/// it holds, whatever the channel did to it.
pub struct Encoder {
    slot: Box<EventSlot<MAX_EVENT_SIZE>>,
    padding: String,
}

impl Encoder {
    pub fn new(size: usize) -> Self {
        Encoder {
            slot: Box::new(EventSlot::new()),
            padding: "x".repeat(size.saturating_sub(min_event_size())),
        }
    }

    /// Encodes event `n` and returns its bytes.
    pub fn encode(&mut self, n: u64) -> &[u8] {
        encode_event(&mut self.slot, &self.padding, n);
        self.slot.as_bytes()
    }
}

/// Fills `slot` with event `n` (the same event every transport carries).
pub fn encode_event<const N: usize>(slot: &mut EventSlot<N>, padding: &str, n: u64) {
    let header = EventHeader {
        seq: n,
        kind: EventKind::ProcessExec,
        flags: 0,
        time_ns: wall_ns(),
        pid: std::process::id(),
        ppid: 1,
        tid: n as u32,
    };
    // The slot holds the largest size a plan accepts, so this cannot fail.
    let _ = slot.encode(&header, N, |w| w.utf8(FieldType::COMMAND_LINE, padding));
}

/// Wall-clock nanoseconds since the Unix epoch (the event's `time` field).
pub fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Splits an event into the messages a transport with `limit` bytes per message carries,
/// handing each to `send`. Stops at the first message `send` refuses and returns `false`.
pub fn send_fragmented(
    event: &[u8],
    n: u64,
    limit: usize,
    out: &mut [u8],
    mut send: impl FnMut(&[u8]) -> bool,
) -> bool {
    let Ok(plan) = Fragmenter::new(event.len(), n, limit) else {
        return false;
    };
    for index in 0..plan.count() {
        let Ok(len) = plan.write(event, index, out) else {
            return false;
        };
        if !send(&out[..len]) {
            return false;
        }
    }
    true
}

/// Loss causes, exactly counted where they happen.
#[derive(Debug, Default, Clone)]
pub struct Losses(pub std::collections::BTreeMap<String, u64>);

impl Losses {
    pub fn add(&mut self, cause: &str, n: u64) {
        if n > 0 {
            *self.0.entry(cause.to_owned()).or_default() += n;
        }
    }

    pub fn merge(&mut self, other: &Losses) {
        for (k, v) in &other.0 {
            self.add(k, *v);
        }
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

/// What a producer thread reports.
#[derive(Debug, Default)]
pub struct ProducerTally {
    /// Events offered to the channel (numbers 1..=sent).
    pub sent: u64,
    /// Events the producer itself knows it lost, by cause.
    pub lost: Losses,
    pub cpu_ns: u64,
    pub first_push_ns: u64,
}

/// A producer loop shared by the transports whose producer is one thread: paces, encodes,
/// fragments at `limit`, and hands every message to `send`, which says whether the message
/// went out or why it was lost. An event with a lost fragment is lost whole, counted once.
pub fn produce(
    job: &Job,
    limit: usize,
    mut send: impl FnMut(&[u8]) -> Result<(), &'static str>,
) -> ProducerTally {
    let cpu0 = thread_cpu_ns();
    let mut tally = ProducerTally {
        first_push_ns: job.now(),
        ..ProducerTally::default()
    };
    let mut encoder = Encoder::new(job.size);
    let mut out = vec![0u8; limit.max(64)];
    let mut pacer = job.pacer();
    for n in pacer.by_ref() {
        let event = encoder.encode(n);
        job.pushed(n);
        tally.sent = n;
        let mut cause = None;
        send_fragmented(event, n, limit, &mut out, |m| match send(m) {
            Ok(()) => true,
            Err(why) => {
                cause = Some(why);
                false
            }
        });
        if let Some(why) = cause {
            tally.lost.add(why, 1);
        }
    }
    tally.cpu_ns = (thread_cpu_ns() - cpu0).saturating_sub(pacer.waiting_cpu_ns);
    tally
}

/// The consumer's side of a cell: reassembles fragments, records latency, and keeps the set of
/// events delivered so that duplicates and reordering are exact.
pub struct Receiver<'a> {
    job: &'a Job,
    limit: usize,
    delivered: Vec<u64>,
    pub received: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub malformed: u64,
    highest: u64,
    pub last_arrival_ns: u64,
    pub hist: Histogram<u64>,
    partial: HashMap<u64, Partial>,
    cpu0: u64,
    cpu_used: Option<u64>,
}

struct Partial {
    bytes: Vec<u8>,
    got: Vec<bool>,
    left: u16,
}

impl<'a> Receiver<'a> {
    pub fn new(job: &'a Job, limit: usize) -> Self {
        Receiver {
            job,
            limit,
            delivered: vec![0; (job.capacity() as usize + 1).div_ceil(64)],
            received: 0,
            duplicates: 0,
            reordered: 0,
            malformed: 0,
            highest: 0,
            last_arrival_ns: 0,
            hist: new_histogram(),
            partial: HashMap::new(),
            cpu0: thread_cpu_ns(),
            cpu_used: None,
        }
    }

    /// Stops the CPU clock. Call it on the consumer's own thread when it is done: thread CPU
    /// time is per thread.
    pub fn stop_clock(&mut self) {
        self.cpu_used = Some(thread_cpu_ns().saturating_sub(self.cpu0));
    }

    /// CPU the consumer thread spent between making the receiver and [`Receiver::stop_clock`].
    pub fn cpu_ns(&self) -> u64 {
        self.cpu_used.unwrap_or(0)
    }

    /// One message off the channel: an event, or a fragment of one.
    pub fn on_message(&mut self, bytes: &[u8]) {
        match Message::decode(bytes, self.limit) {
            Ok(Message::Event(e)) => self.deliver(u64::from(e.header.tid)),
            Ok(Message::Fragment(f)) => self.on_fragment(&f),
            _ => self.malformed += 1,
        }
    }

    fn on_fragment(&mut self, f: &lpcmon_protocol::message::Fragment<'_>) {
        let total = f.total_len as usize;
        if total > MAX_EVENT_SIZE + 1024 || f.count == 0 || f.index >= f.count {
            self.malformed += 1;
            return;
        }
        let p = self.partial.entry(f.event_seq).or_insert_with(|| Partial {
            bytes: vec![0; total],
            got: vec![false; usize::from(f.count)],
            left: f.count,
        });
        // Every piece but the last has the same length, so its index places it; the last one
        // ends the event.
        let start = if f.index + 1 == f.count {
            total.saturating_sub(f.bytes.len())
        } else {
            usize::from(f.index) * f.bytes.len()
        };
        let Some(dst) = p.bytes.get_mut(start..start + f.bytes.len()) else {
            self.malformed += 1;
            return;
        };
        dst.copy_from_slice(f.bytes);
        if !std::mem::replace(&mut p.got[usize::from(f.index)], true) {
            p.left -= 1;
        }
        if p.left == 0 {
            let p = self.partial.remove(&f.event_seq).expect("present");
            match Message::decode(&p.bytes, usize::MAX) {
                Ok(Message::Event(e)) => self.deliver(u64::from(e.header.tid)),
                _ => self.malformed += 1,
            }
        }
    }

    /// Event `n` arrived whole.
    pub fn deliver(&mut self, n: u64) {
        let now = self.job.now();
        let (word, bit) = ((n / 64) as usize, n % 64);
        let Some(w) = self.delivered.get_mut(word) else {
            self.malformed += 1;
            return;
        };
        if *w & (1 << bit) != 0 {
            self.duplicates += 1;
            return;
        }
        *w |= 1 << bit;
        self.received += 1;
        if n < self.highest {
            self.reordered += 1;
        }
        self.highest = self.highest.max(n);
        self.last_arrival_ns = now;
        if let Some(t) = self.job.push_time(n) {
            let _ = self.hist.record(now.saturating_sub(t).max(1));
        }
    }

    /// Whether event `n` was delivered.
    pub fn has(&self, n: u64) -> bool {
        self.delivered
            .get((n / 64) as usize)
            .is_some_and(|w| w & (1 << (n % 64)) != 0)
    }

    /// Events still waiting for fragments that will never come (their channel lost a piece).
    pub fn incomplete(&self) -> u64 {
        self.partial.len() as u64
    }
}

/// Nanoseconds, 1 ns to 60 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}
