//! lpcmon across many hosts, on NATS JetStream.
//!
//! Every origin server publishes each event it stores (`lpcmon serve --publish`) to one
//! JetStream stream, subject `lpcmon.<host>.<kind>`, message id `<host>/<server-instance>/<id>`
//! so JetStream drops duplicates; a central server (`lpcmon serve --subscribe`) reads the
//! stream with a durable pull consumer into its own store. The accounting promise holds across
//! the fleet: an origin's events that its store evicted before NATS acknowledged them are
//! counted in the `publish` loss stage and that loss record is published too; the central
//! server stores each origin event once, guarded by a high-water mark per origin instance.
//!
//! - [`config`]: flags, connecting (credentials, TLS), subject names;
//! - [`source`]: what the publisher needs from a store ([`EventSource`]);
//! - [`stream`]: creating the stream and refusing an incompatible one;
//! - [`publish`]: the origin's publisher;
//! - [`marks`]: the central's per-origin high-water marks ([`Marks`]);
//! - [`subscribe`]: the central's importer.
//!
//! Neither task ever ends the server: faults are logged, shown in `/stats` `notices` and
//! retried.
//!
//! Unix only for now: async-nats's TLS (rustls on ring) needs a C toolchain with the MSVC
//! headers to build for Windows, which the project's Linux cross-check lacks. On Windows the
//! crate is empty and `lpcmon serve --publish/--subscribe` says so.
#![cfg(not(windows))]

pub mod config;
pub mod marks;
mod notice;
pub mod publish;
pub mod source;
pub mod stream;
pub mod subscribe;

pub use config::{NatsOptions, PublishConfig, SubscribeConfig, subject_token};
pub use marks::Marks;
pub use publish::spawn_publisher;
pub use source::EventSource;
pub use subscribe::spawn_subscriber;
