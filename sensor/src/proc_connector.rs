//! The proc connector socket: subscribes to the kernel's process events and reads them.
//!
//! A `NETLINK_CONNECTOR` datagram socket bound to the `CN_IDX_PROC` multicast group receives
//! every fork, exec, exit, uid and comm change on the machine once it has sent
//! `PROC_CN_MCAST_LISTEN`. This module does nothing but read and parse, because the kernel
//! drops messages for a socket whose buffer is full: time spent elsewhere on the read path is
//! lost events. The loss is never silent: `ENOBUFS` is returned as [`Recv::Overrun`], and the
//! per-CPU sequence numbers give the exact count (see [`crate::loss_tracker`]).
//!
//! Reads are batched: one `recvmmsg` takes every datagram already queued (up to
//! [`RECV_BATCH`]) into buffers the socket keeps, so a burst costs one system call and one
//! wake-up, not one per process event.
//!
//! Privileges: binding the multicast group needs root or `CAP_NET_ADMIN` on most kernels, and
//! the kernel answers subscription requests only from the initial user and pid namespaces.

use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, NetlinkAddr, bind, getsockname, getsockopt, sendto, setsockopt, sockopt};
use nix::sys::time::{TimeVal, TimeValLike};
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::loss_tracker::LossTracker;
use crate::proc_event::{NetlinkItem, ProcEvent, ProcMessage, parse_datagram, subscription_request};

/// Most datagrams one read takes. A fork storm queues a few at a time; 64 empties a burst in one
/// system call without making a slow batch hold up the first exec's `/proc` reads for long.
pub const RECV_BATCH: usize = 64;
/// Room for one datagram. Proc connector messages are 76 bytes and the kernel sends one per
/// datagram (acknowledgements and netlink errors are smaller still); a longer datagram would be
/// cut, flagged `MSG_TRUNC`, and counted in [`ConnectorStats::truncated_datagrams`].
const DATAGRAM_LEN: usize = 4096;
/// While waiting for the subscription's acknowledgement, read at most this many datagrams.
const MAX_SUBSCRIBE_DATAGRAMS: usize = 4096;

/// How the socket is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectorConfig {
    /// The socket receive buffer: what absorbs a burst while the reader is busy. Set with
    /// `SO_RCVBUFFORCE` when permitted, else `SO_RCVBUF` (capped by `net.core.rmem_max`).
    pub recv_buffer_bytes: usize,
    /// How long one [`ProcConnector::recv`] waits; bounds how fast a reader thread can stop.
    pub recv_timeout: Duration,
    /// How long [`ProcConnector::open`] waits for the kernel to confirm the subscription.
    pub ack_timeout: Duration,
}

impl Default for ConnectorConfig {
    fn default() -> Self {
        ConnectorConfig {
            recv_buffer_bytes: 16 * 1024 * 1024,
            recv_timeout: Duration::from_millis(150),
            ack_timeout: Duration::from_secs(1),
        }
    }
}

/// Why the sensor could not be opened or read.
#[derive(Debug, Error)]
pub enum SensorError {
    #[error("creating a NETLINK_CONNECTOR socket failed: {0}")]
    Socket(Errno),
    #[error("joining the proc connector group failed: {0} (run as root or with CAP_NET_ADMIN)")]
    Bind(Errno),
    #[error("setting {option} failed: {errno}")]
    SocketOption { option: &'static str, errno: Errno },
    #[error("sending the subscription request failed: {0}")]
    Subscribe(Errno),
    #[error("the kernel refused the subscription: {0}")]
    Refused(Errno),
    #[error(
        "the kernel did not confirm the subscription within {0:?}; process events are only \
         delivered to the initial user and pid namespaces"
    )]
    NoAck(Duration),
    #[error("receiving from the proc connector failed: {0}")]
    Recv(Errno),
}

/// What one [`ProcConnector::recv`] produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recv {
    /// `count` messages were appended. `lost` messages from the kernel were missed just before
    /// them (an exact count, from sequence gaps).
    Messages { count: usize, lost: u64 },
    /// The kernel dropped messages for this socket (`ENOBUFS` or `NLMSG_OVERRUN`). How many
    /// shows up as `lost` once the next message from each affected CPU arrives.
    Overrun,
    /// Nothing arrived within the receive timeout (or a signal interrupted the wait).
    Timeout,
}

/// Counters of everything the socket saw. None is reset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectorStats {
    pub datagrams: u64,
    /// Proc connector messages parsed.
    pub messages: u64,
    /// Netlink messages that failed to parse.
    pub malformed: u64,
    /// `ENOBUFS` returned by `recv`.
    pub overruns: u64,
    /// `NLMSG_OVERRUN` messages.
    pub netlink_overruns: u64,
    /// `NLMSG_ERROR` messages with a non-zero error.
    pub netlink_errors: u64,
    /// Messages for nothing lpcmon reports (`NLMSG_NOOP`, other connectors).
    pub ignored: u64,
    /// Datagrams not sent by the kernel, dropped unread.
    pub foreign_senders: u64,
    /// Datagrams longer than the receive buffer.
    pub truncated_datagrams: u64,
    /// Kernel messages missed, from sequence gaps.
    pub lost_messages: u64,
    /// Messages that arrived behind their CPU's sequence.
    pub reordered: u64,
}

/// A subscribed proc connector socket. Dropping it unsubscribes.
#[derive(Debug)]
pub struct ProcConnector {
    fd: OwnedFd,
    /// [`RECV_BATCH`] datagram buffers of [`DATAGRAM_LEN`] bytes, back to back.
    bufs: Box<[u8]>,
    port_id: u32,
    /// Our `cn_msg.ack` value: the kernel's acknowledgement carries it plus one.
    nonce: u32,
    tracker: LossTracker,
    /// Messages read while waiting for the subscription's acknowledgement.
    backlog: Vec<ProcMessage>,
    backlog_lost: u64,
    /// An `NLMSG_OVERRUN` arrived inside a datagram with messages: reported on the next call.
    overrun_pending: bool,
    stats: ConnectorStats,
}

/// Whether this process may run the proc-connector sensor: opens and subscribes a socket,
/// waits for the kernel's confirmation, and closes it again.
pub fn is_permitted() -> bool {
    match ProcConnector::open(&ConnectorConfig::default()) {
        Ok(_) => true,
        Err(e) => {
            debug!(error = %e, "proc connector not available");
            false
        }
    }
}

impl ProcConnector {
    /// Opens the socket, joins the group, subscribes, and waits (at most `ack_timeout`) for
    /// the kernel to confirm.
    pub fn open(config: &ConnectorConfig) -> Result<Self, SensorError> {
        // SAFETY: socket(2) takes no pointers; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_CONNECTOR,
            )
        };
        if raw < 0 {
            return Err(SensorError::Socket(Errno::last()));
        }
        // SAFETY: `raw` is a descriptor socket(2) just returned; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let receive_buffer = set_receive_buffer(&fd, config.recv_buffer_bytes)?;
        let timeout =
            TimeVal::microseconds(i64::try_from(config.recv_timeout.as_micros()).unwrap_or(i64::MAX))
                .max(TimeVal::microseconds(1));
        setsockopt(&fd, sockopt::ReceiveTimeout, &timeout).map_err(|errno| SensorError::SocketOption {
            option: "SO_RCVTIMEO",
            errno,
        })?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, libc::CN_IDX_PROC)).map_err(SensorError::Bind)?;
        let port_id = getsockname::<NetlinkAddr>(fd.as_raw_fd())
            .map_err(SensorError::Bind)?
            .pid();
        let mut conn = ProcConnector {
            fd,
            bufs: vec![0; RECV_BATCH * DATAGRAM_LEN].into_boxed_slice(),
            port_id,
            nonce: new_nonce(),
            tracker: LossTracker::new(),
            backlog: Vec::new(),
            backlog_lost: 0,
            overrun_pending: false,
            stats: ConnectorStats::default(),
        };
        conn.subscribe(config.ack_timeout)?;
        info!(port_id, receive_buffer, "subscribed to the proc connector");
        Ok(conn)
    }

    /// Reads the datagrams queued (waiting at most the receive timeout for the first, then
    /// taking up to [`RECV_BATCH`] without waiting) and appends their messages.
    pub fn recv(&mut self, out: &mut Vec<ProcMessage>) -> Result<Recv, SensorError> {
        if mem::take(&mut self.overrun_pending) {
            return Ok(Recv::Overrun);
        }
        if !self.backlog.is_empty() {
            let count = self.backlog.len();
            out.append(&mut self.backlog);
            return Ok(Recv::Messages {
                count,
                lost: mem::take(&mut self.backlog_lost),
            });
        }
        self.recv_batch(out)
    }

    pub fn stats(&self) -> ConnectorStats {
        ConnectorStats {
            lost_messages: self.tracker.lost(),
            reordered: self.tracker.reordered(),
            ..self.stats
        }
    }

    fn recv_batch(&mut self, out: &mut Vec<ProcMessage>) -> Result<Recv, SensorError> {
        let mut senders = [0u32; RECV_BATCH];
        let mut lens = [(0usize, 0i32); RECV_BATCH];
        let received = match recv_many(&self.fd, &mut self.bufs, &mut lens, &mut senders) {
            Ok(n) => n,
            Err(Errno::EAGAIN | Errno::EINTR) => return Ok(Recv::Timeout),
            Err(Errno::ENOBUFS) => {
                self.stats.overruns += 1;
                warn!(
                    overruns = self.stats.overruns,
                    "the kernel dropped proc connector messages (receive buffer full)"
                );
                return Ok(Recv::Overrun);
            }
            Err(e) => return Err(SensorError::Recv(e)),
        };
        let (mut count, mut lost) = (0, 0);
        for (i, (&(len, flags), &sender)) in lens.iter().zip(&senders).take(received).enumerate() {
            self.stats.datagrams += 1;
            if sender != 0 {
                self.stats.foreign_senders += 1;
                warn!(sender, "dropped a datagram that did not come from the kernel");
                continue;
            }
            if flags & libc::MSG_TRUNC != 0 {
                // The cut message fails to parse below and is counted as malformed.
                self.stats.truncated_datagrams += 1;
            }
            let datagram = &self.bufs[i * DATAGRAM_LEN..][..len.min(DATAGRAM_LEN)];
            for item in parse_datagram(datagram) {
                match item {
                    Ok(NetlinkItem::Proc(msg)) => {
                        lost += self.tracker.observe(msg.cpu, msg.seq);
                        self.stats.messages += 1;
                        out.push(msg);
                        count += 1;
                    }
                    Ok(NetlinkItem::Overrun) => {
                        self.stats.netlink_overruns += 1;
                        self.overrun_pending = true;
                        warn!("the kernel reported a netlink overrun");
                    }
                    Ok(NetlinkItem::Error { errno: 0 }) => {}
                    Ok(NetlinkItem::Error { errno }) => {
                        self.stats.netlink_errors += 1;
                        warn!(error = %Errno::from_raw(errno), "netlink error message");
                    }
                    Ok(NetlinkItem::Ignored { .. }) => self.stats.ignored += 1,
                    Err(e) => {
                        self.stats.malformed += 1;
                        warn!(error = %e, "malformed proc connector message");
                    }
                }
            }
        }
        if count == 0 && mem::take(&mut self.overrun_pending) {
            return Ok(Recv::Overrun);
        }
        Ok(Recv::Messages { count, lost })
    }

    fn send_op(&self, op: u32, ack: u32) -> Result<(), Errno> {
        let req = subscription_request(op, 0, ack, self.port_id);
        sendto(
            self.fd.as_raw_fd(),
            &req,
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )
        .map(|_| ())
    }

    /// Sends `PROC_CN_MCAST_LISTEN` and reads until the kernel's acknowledgement, keeping every
    /// message read meanwhile for [`ProcConnector::recv`]. Acknowledgements are multicast to every listener, so ours
    /// is the one whose `ack` is our nonce plus one.
    fn subscribe(&mut self, wait: Duration) -> Result<(), SensorError> {
        self.send_op(libc::PROC_CN_MCAST_LISTEN, self.nonce)
            .map_err(SensorError::Subscribe)?;
        let expected = self.nonce.wrapping_add(1);
        let deadline = Instant::now() + wait;
        let mut read = Vec::new();
        for _ in 0..MAX_SUBSCRIBE_DATAGRAMS {
            if Instant::now() >= deadline {
                break;
            }
            read.clear();
            let lost = match self.recv_batch(&mut read)? {
                Recv::Messages { lost, .. } => lost,
                Recv::Overrun => {
                    self.overrun_pending = true;
                    continue;
                }
                Recv::Timeout => continue,
            };
            self.backlog_lost += lost;
            // Our acknowledgement stays in the backlog too, so callers see every message the
            // loss tracker saw.
            let ours = read.iter().find_map(|msg| match msg.event {
                ProcEvent::Ack { err } if msg.ack == expected => Some(err),
                _ => None,
            });
            self.backlog.append(&mut read);
            match ours {
                Some(0) => return Ok(()),
                Some(err) => return Err(SensorError::Refused(Errno::from_raw(err as i32))),
                None => {}
            }
        }
        Err(SensorError::NoAck(wait))
    }
}

impl Drop for ProcConnector {
    fn drop(&mut self) {
        // Older kernels count listeners only through these requests; without IGNORE they would
        // keep building events for nobody after we close.
        if let Err(e) = self.send_op(libc::PROC_CN_MCAST_IGNORE, self.nonce.wrapping_add(2)) {
            debug!(error = %e, "unsubscribing from the proc connector failed");
        }
    }
}

/// One `recvmmsg`: waits (up to the socket's receive timeout) for a datagram, then takes every
/// other one already queued, up to one per [`DATAGRAM_LEN`] slice of `bufs`. For each datagram
/// received, `lens` gets its length and `msg_flags` and `senders` its netlink port id (0 for
/// the kernel; `u32::MAX` when the kernel gave no address). Returns how many were received.
fn recv_many(
    fd: &OwnedFd,
    bufs: &mut [u8],
    lens: &mut [(usize, i32); RECV_BATCH],
    senders: &mut [u32; RECV_BATCH],
) -> Result<usize, Errno> {
    // SAFETY: all-zero bytes are valid values of these plain C structs (null pointers, zero
    // lengths); every pointer the kernel uses is set below.
    let mut addrs: [libc::sockaddr_nl; RECV_BATCH] = unsafe { mem::zeroed() };
    // SAFETY: as above.
    let mut iovs: [libc::iovec; RECV_BATCH] = unsafe { mem::zeroed() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; RECV_BATCH] = unsafe { mem::zeroed() };
    let slots = bufs.chunks_exact_mut(DATAGRAM_LEN);
    for (((hdr, iov), addr), buf) in hdrs.iter_mut().zip(&mut iovs).zip(&mut addrs).zip(slots) {
        iov.iov_base = buf.as_mut_ptr().cast();
        iov.iov_len = buf.len();
        hdr.msg_hdr.msg_iov = iov;
        hdr.msg_hdr.msg_iovlen = 1;
        hdr.msg_hdr.msg_name = (addr as *mut libc::sockaddr_nl).cast();
        hdr.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    }
    let slots = (bufs.len() / DATAGRAM_LEN).min(RECV_BATCH);
    // SAFETY: `hdrs[..slots]` point at `slots` live iovecs over disjoint DATAGRAM_LEN slices of
    // `bufs` and at `slots` sockaddr_nl, all of which outlive the call; the kernel writes only
    // within those lengths. A null timeout leaves waiting to SO_RCVTIMEO.
    let n = unsafe {
        libc::recvmmsg(
            fd.as_raw_fd(),
            hdrs.as_mut_ptr(),
            slots as libc::c_uint,
            libc::MSG_WAITFORONE,
            std::ptr::null_mut(),
        )
    };
    let n = usize::try_from(n).map_err(|_| Errno::last())?;
    for ((hdr, addr), (len, sender)) in hdrs
        .iter()
        .zip(&addrs)
        .zip(lens.iter_mut().zip(senders.iter_mut()))
        .take(n)
    {
        *len = (hdr.msg_len as usize, hdr.msg_hdr.msg_flags);
        *sender = if hdr.msg_hdr.msg_namelen as usize >= mem::size_of::<libc::sockaddr_nl>() {
            addr.nl_pid
        } else {
            u32::MAX
        };
    }
    Ok(n)
}

/// Sets the receive buffer, forcing past `rmem_max` when privileged, and returns what the
/// kernel granted.
fn set_receive_buffer(fd: &OwnedFd, bytes: usize) -> Result<usize, SensorError> {
    match setsockopt(fd, sockopt::RcvBufForce, &bytes) {
        Ok(()) => {}
        Err(Errno::EPERM) => {
            setsockopt(fd, sockopt::RcvBuf, &bytes).map_err(|errno| SensorError::SocketOption {
                option: "SO_RCVBUF",
                errno,
            })?;
        }
        Err(errno) => {
            return Err(SensorError::SocketOption {
                option: "SO_RCVBUFFORCE",
                errno,
            });
        }
    }
    let granted = getsockopt(fd, sockopt::RcvBuf).unwrap_or(0);
    // The kernel doubles the value set, to account for its own bookkeeping.
    if granted / 2 < bytes {
        warn!(
            requested = bytes,
            granted = granted / 2,
            "receive buffer smaller than requested; raise net.core.rmem_max or run as root"
        );
    }
    Ok(granted)
}

/// A value for `cn_msg.ack` that tells this socket's acknowledgement from those of other
/// listeners (other sockets in this process, or other processes).
fn new_nonce() -> u32 {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (std::process::id() << 12) ^ nanos ^ COUNTER.fetch_add(0x9E37_79B9, Ordering::Relaxed)
}
