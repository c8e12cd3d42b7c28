//! lpcmon's port servers and clients: Unix SEQPACKET, Windows ALPC and legacy LPC.
//!
//! Every backend turns what its OS delivers into a `PORT_MESSAGE` header plus data and hands it
//! to the [`dispatch::Dispatcher`], which runs the protocol's server state machine and feeds the
//! bounded ingest channel. Producers reach a port through [`client::PortConnection`].
//!
//! - [`unix`]: `SOCK_SEQPACKET` server and client (Linux, and any Unix).
//! - `windows`: ALPC and legacy LPC servers and clients over ntdll, and the service wrapper.
//! - [`decide`]: the Windows receive loop's decisions as plain functions, tested everywhere.
//! - [`receive_loop`]: the loop both Windows port servers run, over a [`receive_loop::PortOps`].

pub mod client;
pub mod decide;
pub mod dispatch;
pub mod receive_loop;
#[cfg(unix)]
pub mod unix;
#[cfg(windows)]
pub mod windows;
