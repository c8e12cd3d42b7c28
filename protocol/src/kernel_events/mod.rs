//! The Windows driver's decisions, as pure functions over plain values.
//!
//! The driver (`driver/`) cannot be built or run on Linux, so everything it decides lives here,
//! where it is tested: what each kernel callback puts into an event, which kinds the registry's
//! event mask lets through, how the service key's `Parameters` are read and bounded, how a
//! connect call's status and reply become a [`ConnectFailure`] or a message limit, and how a
//! message is framed behind a `PORT_MESSAGE` header. The driver's own code is left with the
//! kernel calls that produce these plain values and consume the results.
//!
//! Nothing here allocates or blocks, so [`record`] is what the callbacks call, at PASSIVE_LEVEL
//! or APC_LEVEL, on any thread.
//!
//! Three parts, one job each:
//! - [`events`]: what each callback puts into an event, the event mask, [`record`];
//! - [`registry`]: the service key's `Parameters`, read and bounded;
//! - [`port`]: connect outcomes, flow control and message framing.

use crate::event::EVENT_MIN_LEN;
use crate::message::ProducerKind;
use crate::port_message::PORT_MESSAGE_SIZE;
use crate::producer::{EventSlot, WorkerConfig};

pub mod events;
pub mod port;
pub mod registry;

pub use events::*;
pub use port::*;
pub use registry::*;

/// Bytes of one queue slot: the largest encoded event the driver produces.
pub const EVENT_SLOT_BYTES: usize = 4096;
/// The queue entry type of the driver.
pub type KernelSlot = EventSlot<EVENT_SLOT_BYTES>;
/// The largest message (data bytes after the `PORT_MESSAGE` header) the driver sends: one whole
/// slot, so an event is fragmented only when the port's limit is smaller.
pub const MAX_MESSAGE: usize = EVENT_SLOT_BYTES;
/// A whole frame: header plus the largest message.
pub const MAX_FRAME: usize = PORT_MESSAGE_SIZE + MAX_MESSAGE;

/// Bytes a field header takes before its value.
const FIELD_HEADER: usize = 7;
/// Bytes of the largest fixed-size part of an event: the header plus every integer field of the
/// richest kind (image.load: base and size; process.start: the creating pid).
const FIXED_PART: usize = EVENT_MIN_LEN + 2 * (FIELD_HEADER + 8);
/// The longest string (in bytes) that still lets both strings of a process.start fit whole in a
/// slot, with the 4-byte original length a truncated field carries.
pub const STRING_CAP_MAX: usize = (EVENT_SLOT_BYTES - FIXED_PART) / 2 - FIELD_HEADER - 4;
/// The shortest string cap the registry may set.
pub const STRING_CAP_MIN: usize = 64;

/// How long the worker may spend draining and reporting after a stop (driver unload).
pub const STOP_GRACE_NS: u64 = 2_000_000_000;
/// The OS name the driver reports in its Hello.
pub const OS_NAME: &str = "windows";

/// The driver's worker settings: the protocol defaults, with the driver's own limits.
pub fn worker_config(instance: [u8; 16], os_build: u32) -> WorkerConfig<'static> {
    WorkerConfig {
        kind: ProducerKind::WindowsDriver,
        instance,
        os: OS_NAME,
        os_build,
        max_message: MAX_MESSAGE,
        backoff_min_ns: WorkerConfig::DEFAULT_BACKOFF_MIN_NS,
        backoff_max_ns: WorkerConfig::DEFAULT_BACKOFF_MAX_NS,
        connect_timeout_ns: WorkerConfig::DEFAULT_CONNECT_TIMEOUT_NS,
        heartbeat_interval_ns: WorkerConfig::DEFAULT_HEARTBEAT_NS,
    }
}

#[cfg(test)]
mod tests;
