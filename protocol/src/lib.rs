//! lpcmon-protocol: the agreement between lpcmon's producers and its port server.
//!
//! This crate is sans-I/O in the style of quinn-proto: no sockets, no threads, no clock. Time
//! comes in as an argument (`now`, in nanoseconds of whatever monotonic clock the caller uses),
//! and every decision is a deterministic function of its inputs. That is what lets the Windows
//! driver, which cannot be built on Linux, have its logic tested on Linux.
//!
//! - [`port_message`]: the x64 `PORT_MESSAGE` header and LPC constants (the transport frame).
//! - [`message`], [`event`]: the lpcmon wire format, version 1. Both build on a private
//!   `header` module (the common header and wire constants), so `message` depends on `event`
//!   and never the other way round.
//! - [`fragment`]: splitting events that exceed a port's message limit.
//! - [`queue`]: the bounded, lock-free, allocation-free producer queue.
//! - [`producer`]: the producer worker's state machine (connect, back off, send, report loss).
//! - [`server`] (feature `alloc`): per-connection sessions, reassembly, loss accounting, and
//!   the ingest gate that decides what a full ingest channel means.
//!
//! Without the default `alloc` feature the crate needs no allocator, which is how the kernel
//! driver uses it.
#![no_std]
#![forbid(unsafe_op_in_unsafe_fn)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(test)]
extern crate std;

#[macro_use]
mod wire_enum;

mod cursor;
pub mod error;
pub mod event;
pub mod fragment;
mod header;
pub mod kernel_events;
pub mod message;
pub mod port_message;
pub mod producer;
pub mod queue;
#[cfg(feature = "alloc")]
pub mod server;
mod sync;

pub use error::{DecodeError, EncodeError};
pub use event::{EventHeader, EventKind, EventView, EventWriter, FieldType};
pub use message::{Hello, HelloReply, Loss, LossStage, Message, ProducerKind, RefuseReason};
pub use port_message::{PortMessage, lpc};
