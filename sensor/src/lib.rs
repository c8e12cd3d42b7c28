//! lpcmon's user-mode producers: the Linux proc-connector sensor and the load generator.
//!
//! Both run through [`runtime::Producer`]: lpcmon-protocol's bounded queue and worker state
//! machine on a thread, connected to the port server. [`loadgen`] is the synthetic producer.
//!
//! The proc-connector sensor (Linux only) is layered so each part can be tested alone:
//! [`proc_event`] parses the kernel's bytes, [`proc_connector`] owns the netlink socket,
//! [`loss_tracker`] counts what the kernel dropped, [`process_table`] and [`enrich`] add what
//! the kernel message lacks, [`sensor_event`] encodes the result for the wire, and [`source`]
//! ties them into one blocking source for a producer thread.

#[cfg(target_os = "linux")]
pub mod enrich;
#[cfg(target_os = "linux")]
pub mod linux_sensor;
pub mod loadgen;
#[cfg(target_os = "linux")]
pub mod loss_tracker;
#[cfg(target_os = "linux")]
pub mod proc_connector;
#[cfg(target_os = "linux")]
pub mod proc_event;
pub mod process_table;
pub mod runtime;
pub mod sensor_event;
#[cfg(target_os = "linux")]
pub mod source;

#[cfg(target_os = "linux")]
pub use proc_connector::{SensorError, is_permitted};
pub use sensor_event::{SensorEvent, encode_event};
#[cfg(target_os = "linux")]
pub use source::{ProcConnectorSource, SourceConfig, SourceItem, SourceStats};
