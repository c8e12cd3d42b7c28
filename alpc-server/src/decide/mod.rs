//! The decisions of the Windows port servers and clients, as plain functions.
//!
//! The ALPC and legacy LPC backends (`windows::alpc`, `windows::lpc`) are thin loops around
//! system calls that cannot run on Linux (and under wine every one of them is a stub). So every
//! choice those loops make lives here, free of `unsafe` and of any Windows type, and is unit
//! tested on every platform with headers built the way the kernel builds them. One module per
//! job:
//!
//! - [`status`]: NTSTATUS codes (`lpcmon_nt`'s table) as the [`PortError`](crate::error::PortError)s
//!   lpcmon reports ([`nt_error`], [`client_error`], [`connect_error`]);
//! - [`policy`]: which API and port name to use ([`PortApi`], [`validate_port_name`],
//!   [`port_sddl`]) and who may produce ([`classify_peer`]);
//! - [`plan`]: what a receive status means for the loop ([`on_receive_status`]), what a
//!   received message asks for ([`on_message`]), what the backend must do once the dispatcher
//!   has answered ([`after_dispatch`]), and the headers and flags of everything sent;
//! - [`connections`]: which connection a message belongs to ([`ConnectionTable`]).

pub mod connections;
pub mod plan;
pub mod policy;
pub mod status;

pub use connections::{Connection, ConnectionTable};
pub use plan::*;
pub use policy::*;
pub use status::{client_error, connect_error, nt_error, status_name};

#[cfg(test)]
mod tests;
