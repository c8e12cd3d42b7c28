//! `unix-raw`: a bare `SOCK_SEQPACKET` socketpair between two threads, the same socket type as
//! lpcmon's port with nothing behind it: the ceiling of the mechanism.
//!
//! In request mode the producer waits for a one-byte reply to every message, the round trip an
//! LPC request costs.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{self, AddressFamily, MsgFlags, Shutdown, SockFlag, SockType};

use super::{Outcome, Transport, TransportError, TransportSpec};
use crate::measure::{Job, Losses, Receiver, produce};
use crate::plan::Mode;

pub struct UnixRaw {
    limit: usize,
}

impl UnixRaw {
    pub fn new(spec: &TransportSpec) -> Self {
        UnixRaw {
            limit: spec.number("limit"),
        }
    }
}

fn pair() -> Result<(OwnedFd, OwnedFd), TransportError> {
    Ok(socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

impl Transport for UnixRaw {
    fn limit(&self) -> usize {
        self.limit
    }

    fn run(&self, job: &Job, mode: Mode) -> Result<Outcome, TransportError> {
        let (tx, rx_fd) = pair()?;
        let limit = self.limit;
        let request = mode == Mode::Request;
        std::thread::scope(|s| {
            let consumer = s.spawn(|| {
                let mut rx = Receiver::new(job, limit);
                let mut buf = vec![0u8; limit + 1];
                loop {
                    match socket::recv(rx_fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                        Ok(0) => break,
                        Ok(n) => {
                            rx.on_message(&buf[..n]);
                            if request && socket::send(rx_fd.as_raw_fd(), &[1], MsgFlags::empty()).is_err() {
                                break;
                            }
                        }
                        Err(nix::Error::EINTR) => {}
                        Err(_) => break,
                    }
                }
                rx.stop_clock();
                rx
            });
            let mut ack = [0u8; 1];
            let tally = produce(job, limit, |m| {
                socket::send(tx.as_raw_fd(), m, MsgFlags::empty()).map_err(|_| "send_failed")?;
                if request {
                    match socket::recv(tx.as_raw_fd(), &mut ack, MsgFlags::empty()) {
                        Ok(1) => {}
                        _ => return Err("reply_failed"),
                    }
                }
                Ok(())
            });
            let _ = socket::shutdown(tx.as_raw_fd(), Shutdown::Write);
            let rx = consumer
                .join()
                .map_err(|_| TransportError::Other("consumer thread panicked".into()))?;
            Ok(Outcome::from_ends(tally, rx, Losses::default(), limit))
        })
    }
}
