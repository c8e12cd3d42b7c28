//! The synthetic load generator: a producer that pushes `count` events of a chosen size at a
//! chosen rate, for tests, benchmarks and LPC/ALPC experiments.
//!
//! Each event is a `process.exec` whose command line pads it to the requested encoded size and
//! whose `time` is the wall-clock moment it was pushed, so a consumer can measure end-to-end
//! latency from the event alone.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lpcmon_protocol::event::{EVENT_MIN_LEN, EventHeader, EventKind, FieldType};
use lpcmon_protocol::producer::EventSlot;
use serde::Serialize;

use crate::runtime::{Producer, ProducerConfig};

/// Slot size for load-generator events; `--size` may not exceed it.
pub const LOADGEN_SLOT: usize = 16 * 1024;
/// Bytes a command-line field adds besides its text (type, encoding, length).
const FIELD_OVERHEAD: usize = 7;

#[derive(Debug, Clone)]
pub struct LoadgenConfig {
    pub producer: ProducerConfig,
    /// Events per second; 0 means as fast as possible.
    pub rate: u64,
    pub count: u64,
    /// Encoded size of each event in bytes.
    pub size: usize,
}

/// The summary printed as one JSON line at the end.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct LoadgenReport {
    pub produced: u64,
    pub sent: u64,
    pub dropped: u64,
    pub send_failed: u64,
    pub unreported: u64,
    pub seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error("--size {size} is out of range: events are {min}..={max} bytes")]
    Size { size: usize, min: usize, max: usize },
    #[error("could not start the producer: {0}")]
    Start(#[from] std::io::Error),
}

pub fn min_size() -> usize {
    EVENT_MIN_LEN + FIELD_OVERHEAD
}

/// Wall-clock nanoseconds since the Unix epoch.
pub fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Runs the whole load: pushes, then stops the producer and waits for it to drain.
pub fn run(config: &LoadgenConfig) -> Result<LoadgenReport, LoadgenError> {
    if !(min_size()..=LOADGEN_SLOT).contains(&config.size) {
        return Err(LoadgenError::Size {
            size: config.size,
            min: min_size(),
            max: LOADGEN_SLOT,
        });
    }
    // Slots are fixed-size and preallocated, so size them to the event: a 16 KiB slot for a
    // 200-byte event made a large queue cost 80 times the memory it needed.
    match config.size {
        0..=256 => push_all::<256>(config),
        257..=1024 => push_all::<1024>(config),
        1025..=4096 => push_all::<4096>(config),
        _ => push_all::<LOADGEN_SLOT>(config),
    }
}

fn push_all<const N: usize>(config: &LoadgenConfig) -> Result<LoadgenReport, LoadgenError> {
    let producer = Producer::<N>::start(config.producer.clone())?;
    let padding = "x".repeat(config.size - min_size());
    let pid = std::process::id();
    let started = Instant::now();
    let interval = (config.rate > 0).then(|| Duration::from_secs_f64(1.0 / config.rate as f64));
    for i in 0..config.count {
        if let Some(interval) = interval {
            // Pace against the schedule, not the previous push, so the average rate holds.
            let due = started + interval.mul_f64(i as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        let header = EventHeader {
            seq: 0,
            kind: EventKind::ProcessExec,
            flags: 0,
            time_ns: wall_ns(),
            pid,
            ppid: 1,
            tid: i as u32,
        };
        producer.push(|slot: &mut EventSlot<N>| {
            // The slot is chosen large enough for the size, so this cannot fail.
            let _ = slot.encode(&header, N, |w| w.utf8(FieldType::COMMAND_LINE, &padding));
        });
    }
    let report = producer.stop();
    Ok(LoadgenReport {
        produced: report.produced,
        sent: report.worker.sent,
        dropped: report.queue_dropped,
        send_failed: report.worker.send_failed,
        unreported: report.worker.unreported,
        seconds: started.elapsed().as_secs_f64(),
    })
}
