//! The Linux sensor: proc-connector events through the producer runtime to the port.
//!
//! One thread reads the kernel (the [`ProcConnectorSource`]) and pushes into the producer's
//! queue without blocking; the producer's worker thread sends. Kernel drops (`ENOBUFS`) are
//! reported as `kernel` loss with the exact count of proc-connector messages the kernel dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lpcmon_protocol::ProducerKind;

use crate::SensorError;
use crate::runtime::{Producer, ProducerConfig, ProducerReport};
use crate::sensor_event::encode_event;
use crate::source::{ProcConnectorSource, SourceConfig, SourceItem, SourceStats};

/// Slot size for sensor events: room for a long command line; longer ones are truncated and
/// flagged.
pub const SENSOR_SLOT: usize = 4096;
/// Longest string field in a sensor event.
pub const STRING_CAP: usize = 2048;
/// The producer's linger (see [`ProducerConfig::linger`]): in a fork storm, thousands of events a
/// second arrive one at a time, and waking the sending thread for each was a fifth of the
/// sensor's CPU. A millisecond more before a process event reaches the server is not noticed.
pub const SENSOR_LINGER: Duration = Duration::from_millis(1);

/// What the sensor did, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SensorReport {
    pub events: u64,
    pub kernel_lost: u64,
    pub producer: ProducerReport,
    /// What the source read and how it fared (kernel messages, failed enrichments, ...).
    pub source: SourceStats,
}

#[derive(Debug, thiserror::Error)]
pub enum SensorRunError {
    #[error(transparent)]
    Source(#[from] SensorError),
    #[error("could not start the producer thread: {0}")]
    Producer(#[from] std::io::Error),
}

/// Asks for real-time priority for the calling (reader) thread and says whether it got it. An
/// exec event only says "pid N exec'd"; the path and command line must be read from `/proc/N`
/// before the process exits, and `/bin/true` lives for well under a millisecond. Measured here
/// (100 runs of `/bin/true`, debug build): 75 of 100 execs lost their executable at normal
/// priority, 0 of 100 with this. The thread blocks in `recv` and does bounded work per message,
/// and the kernel's RT throttling still applies.
pub fn prefer_realtime() -> bool {
    let param = libc::sched_param {
        sched_priority: REALTIME_PRIORITY,
    };
    // SAFETY: `param` is a valid sched_param for the call's duration; pid 0 is this thread.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if rc == 0 {
        tracing::info!(priority = REALTIME_PRIORITY, "sensor reader runs SCHED_FIFO");
    } else {
        tracing::info!(
            error = %std::io::Error::last_os_error(),
            "sensor reader stays at normal priority; very short-lived processes may lack their executable"
        );
    }
    rc == 0
}

/// Low among real-time priorities: above every normal task, below the kernel's own RT threads.
const REALTIME_PRIORITY: i32 = 10;

/// Subscribes to the proc connector and forwards events until `stop` is set. Returns once the
/// producer has drained (bounded by its stop grace).
pub fn run(
    producer: ProducerConfig,
    source: SourceConfig,
    stop: &Arc<AtomicBool>,
) -> Result<SensorReport, SensorRunError> {
    let mut source = ProcConnectorSource::open(source)?;
    let _ = prefer_realtime();
    let producer = Producer::<SENSOR_SLOT>::start(ProducerConfig {
        kind: ProducerKind::LinuxSensor,
        linger: SENSOR_LINGER,
        ..producer
    })?;
    tracing::info!("proc-connector sensor running");
    let mut events = 0u64;
    let mut kernel_lost = 0u64;
    let outcome = loop {
        if stop.load(Ordering::Acquire) {
            break Ok(());
        }
        match source.next_item() {
            Ok(None) => {}
            Ok(Some(SourceItem::Event(ev))) => {
                events += 1;
                producer.push(|slot| {
                    // The slot holds any header; strings are cut to fit, so this cannot fail.
                    let _ = slot.write_with(|buf| encode_event(&ev, buf, STRING_CAP));
                });
            }
            Ok(Some(SourceItem::Overrun)) => {
                tracing::warn!("the kernel dropped proc-connector messages (ENOBUFS)")
            }
            Ok(Some(SourceItem::Lost { messages })) => {
                kernel_lost += messages;
                producer.add_kernel_dropped(messages);
            }
            Err(e) => break Err(SensorRunError::Source(e)),
        }
    };
    let report = producer.stop();
    outcome.map(|()| SensorReport {
        events,
        kernel_lost,
        producer: report,
        source: source.stats(),
    })
}
