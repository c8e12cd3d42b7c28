//! lpcmon-nt: what lpcmon knows about NT, written once.
//!
//! The kernel driver (`driver/`) and the user-mode port servers and clients (`alpc-server`)
//! talk to the same kernel objects. Everything they must agree on lives here, as plain data
//! and pure functions, so it is tested on Linux and cannot drift between the two:
//!
//! - [`status`]: the NTSTATUS codes lpcmon looks at, with their names;
//! - [`port_name`]: the default port name and the one validation of a port name;
//! - [`security`]: the LocalSystem SID, the port's security descriptor (SDDL) and the
//!   security quality of service every lpcmon connection asks for;
//! - [`port_message`]: the x64 `PORT_MESSAGE` header and the LPC message types and limits;
//! - [`alpc`]: `ALPC_PORT_ATTRIBUTES`, message attributes and the ALPC flag values;
//! - [`timeout`]: durations as NT relative timeouts;
//! - [`connect`]: what a connect call's NTSTATUS means, decided once for every client.
//!
//! Every layout carries compile-time size and offset assertions; the x64 layouts are the only
//! ones declared (lpcmon ships for x64 Windows). `docs/windows.md` gives the source of each
//! fact.
#![no_std]
#![forbid(unsafe_code)]

pub mod alpc;
pub mod connect;
pub mod port_message;
pub mod port_name;
pub mod security;
pub mod status;
pub mod timeout;

pub use connect::ConnectStatus;
pub use port_message::{PortMessage, lpc};
pub use port_name::{DEFAULT_PORT_NAME, PortName, PortNameError};
pub use status::NtStatus;
