//! The Unix `SOCK_SEQPACKET` port: the stand-in for the ALPC port on Linux, carrying the same
//! wire format.

mod client;
mod recv_batch;
mod server;

pub use client::UnixPortConnection;
pub use server::{UnixPortConfig, UnixPortServer};

use std::time::Duration;

use nix::sys::time::{TimeVal, TimeValLike};

/// A socket timeout as nix wants it.
fn timeval(d: Duration) -> TimeVal {
    TimeVal::microseconds(d.as_micros().min(i64::MAX as u128) as i64)
}

/// Maps a failed socket call to the port error that names it.
fn io_err(call: &'static str) -> impl FnOnce(nix::Error) -> crate::error::PortError {
    move |e| crate::error::PortError::Io {
        call,
        source: std::io::Error::from(e),
    }
}

/// A new `SOCK_SEQPACKET` Unix socket.
fn seqpacket_socket() -> Result<std::os::fd::OwnedFd, crate::error::PortError> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io_err("socket"))
}
