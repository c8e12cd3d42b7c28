//! The Unix port client: what the Linux sensor and the load generator connect with.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{self, MsgFlags, UnixAddr, sockopt};

use super::{io_err, seqpacket_socket, timeval};
use crate::connection::{PortConnection, read_hello_reply};
use crate::error::PortError;

pub struct UnixPortConnection {
    fd: OwnedFd,
    max_message: usize,
}

/// A send that cannot complete in this long means the server has stopped reading; the
/// producer then treats the connection as broken (and reports the event as lost).
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

impl UnixPortConnection {
    /// Connects to the port at `path` and performs the handshake: sends `hello`, waits at most
    /// `timeout` for the reply.
    pub fn connect(path: &Path, hello: &[u8], timeout: Duration) -> Result<Self, PortError> {
        let fd = seqpacket_socket()?;
        let addr = UnixAddr::new(path).map_err(io_err("socket path"))?;
        match socket::connect(fd.as_raw_fd(), &addr) {
            Ok(()) => {}
            Err(nix::Error::ENOENT | nix::Error::ECONNREFUSED) => {
                return Err(PortError::NotFound {
                    port: path.display().to_string(),
                });
            }
            Err(e) => return Err(io_err("connect")(e)),
        }
        let timeout = timeout.max(Duration::from_millis(1));
        socket::setsockopt(&fd, sockopt::ReceiveTimeout, &timeval(timeout)).map_err(io_err("setsockopt"))?;
        socket::setsockopt(&fd, sockopt::SendTimeout, &timeval(SEND_TIMEOUT))
            .map_err(io_err("setsockopt"))?;
        socket::send(fd.as_raw_fd(), hello, MsgFlags::MSG_NOSIGNAL).map_err(io_err("send"))?;
        let mut reply = [0u8; 256];
        let n = match socket::recv(fd.as_raw_fd(), &mut reply, MsgFlags::empty()) {
            Ok(0) | Err(nix::Error::ECONNRESET) => return Err(PortError::Closed),
            Ok(n) => n,
            Err(nix::Error::EAGAIN) => return Err(PortError::Timeout(timeout)),
            Err(e) => return Err(io_err("recv")(e)),
        };
        let max_message = read_hello_reply(&reply[..n])?;
        Ok(UnixPortConnection { fd, max_message })
    }
}

impl PortConnection for UnixPortConnection {
    fn max_message(&self) -> usize {
        self.max_message
    }

    fn send(&mut self, data: &[u8]) -> Result<(), PortError> {
        if data.len() > self.max_message {
            return Err(PortError::TooLong {
                len: data.len(),
                limit: self.max_message,
            });
        }
        match socket::send(self.fd.as_raw_fd(), data, MsgFlags::MSG_NOSIGNAL) {
            Ok(_) => Ok(()),
            Err(nix::Error::EPIPE | nix::Error::ECONNRESET) => Err(PortError::Closed),
            Err(nix::Error::EAGAIN) => Err(PortError::Timeout(SEND_TIMEOUT)),
            Err(e) => Err(io_err("send")(e)),
        }
    }

    fn request(&mut self, _data: &[u8]) -> Result<(), PortError> {
        // A Unix port carries only datagrams: the server cannot tell a request from one, so it
        // never replies. Request/reply is an LPC/ALPC feature.
        Err(PortError::Unsupported("request/reply on a Unix port"))
    }
}
