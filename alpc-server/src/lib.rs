//! lpcmon's port servers and clients: Unix SEQPACKET, Windows ALPC and legacy LPC.
//!
//! Every backend turns what its OS delivers into a `PORT_MESSAGE` header plus data and hands it
//! to the [`dispatch::Dispatcher`], which runs the protocol's server state machine and feeds the
//! bounded ingest channel. Producers reach a port through [`client::connect_port`].
//!
//! Dependencies run one way, from the OS shells down to the decisions:
//! `client` (picks the OS) → `unix` / `windows` (system calls) → [`receive_loop`] →
//! [`decide`] (pure decisions) → [`connection`], [`error`], `lpcmon_nt`, `lpcmon_protocol`.
//!
//! - [`unix`]: `SOCK_SEQPACKET` server and client (Linux, and any Unix).
//! - `windows`: ALPC and legacy LPC servers and clients over ntdll, and the service wrapper.
//! - [`decide`]: the Windows receive loop's decisions as plain functions, tested everywhere.
//! - [`receive_loop`]: the loop both Windows port servers run, over a [`receive_loop::PortOps`].
//! - [`connection`] holds the [`connection::PortConnection`] a connected producer uses.
//! - [`error`] holds [`error::PortError`].

pub mod client;
pub mod connection;
pub mod decide;
pub mod dispatch;
pub mod error;
pub mod receive_loop;
#[cfg(unix)]
pub mod unix;
#[cfg(windows)]
pub mod windows;
