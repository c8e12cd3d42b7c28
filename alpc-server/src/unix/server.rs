//! The Unix port server: a `SOCK_SEQPACKET` socket that stands in for the ALPC port.
//!
//! Each datagram becomes a `PORT_MESSAGE` header plus data, built as the Windows kernel would:
//! the first datagram of a connection is the `LPC_CONNECTION_REQUEST` carrying the Hello, later
//! ones are `LPC_DATAGRAM`s, EOF is `LPC_PORT_CLOSED` and a socket error `LPC_CLIENT_DIED`.
//! `ClientId.UniqueProcess` is the peer pid from `SO_PEERCRED` and `MessageId` a per-port
//! counter. So the protocol session cannot tell the platforms apart.
//!
//! Security (docs/design.md, invariants): the socket is mode 0600 in a 0700 directory owned by the
//! server's user, and a peer whose `SO_PEERCRED` uid is neither ours nor root is refused.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lpcmon_protocol::server::{Action, ConnId};
use lpcmon_protocol::{PortMessage, RefuseReason, lpc};
use nix::sys::socket::{self, Backlog, MsgFlags, SockFlag, UnixAddr, sockopt};
use nix::unistd::Uid;

use super::recv_batch::BatchReceiver;
use super::{io_err, seqpacket_socket, timeval};
use crate::dispatch::Dispatcher;
use crate::error::PortError;

/// How often blocked threads look at the stop flag and the dispatcher's timers run.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub struct UnixPortConfig {
    pub path: PathBuf,
    /// The largest datagram accepted; longer ones are counted as malformed.
    pub max_message: usize,
    pub max_connections: usize,
    /// Connections only root peers may take: a crowd of the server's own user's processes
    /// cannot lock out the root sensor. Counted within `max_connections`.
    pub reserved_for_root: usize,
    /// How long a peer has after connecting to send a Hello the server accepts. One that
    /// says nothing is dropped and counted as `refused{reason="handshake_timeout"}`, so idle
    /// connections cannot hold every slot.
    pub handshake_timeout: Duration,
    /// Modes of the socket file and its directory: 0600 and 0700 by default. Tests widen them
    /// to let a foreign uid reach the `SO_PEERCRED` check, which is the second line of defence.
    pub socket_mode: u32,
    pub dir_mode: u32,
}

impl UnixPortConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        UnixPortConfig {
            path: path.into(),
            max_message: 64 * 1024,
            max_connections: 64,
            reserved_for_root: 8,
            handshake_timeout: Duration::from_secs(5),
            socket_mode: 0o600,
            dir_mode: 0o700,
        }
    }
}

/// Creates the socket's directory (0700 by default), or checks that an existing one is ours and
/// sets its mode, so no other user can replace the socket.
fn prepare_dir(dir: &Path, mode: u32) -> Result<(), PortError> {
    match fs::DirBuilder::new().mode(mode).recursive(true).create(dir) {
        Ok(()) => {}
        Err(source) => {
            return Err(PortError::Io {
                call: "mkdir",
                source,
            });
        }
    }
    let meta = fs::metadata(dir).map_err(|source| PortError::Io { call: "stat", source })?;
    if meta.uid() != Uid::effective().as_raw() {
        return Err(PortError::Io {
            call: "check socket directory",
            source: io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} is owned by uid {}, not by this user",
                    dir.display(),
                    meta.uid()
                ),
            ),
        });
    }
    if meta.mode() & 0o7777 != mode {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode)).map_err(|source| PortError::Io {
            call: "chmod",
            source,
        })?;
    }
    Ok(())
}

/// Removes a socket file left by a server that is gone; refuses to steal a live one.
fn clear_stale_socket(path: &Path) -> Result<(), PortError> {
    if !path.exists() {
        return Ok(());
    }
    let probe = seqpacket_socket()?;
    let addr = UnixAddr::new(path).map_err(io_err("socket path"))?;
    if socket::connect(probe.as_raw_fd(), &addr).is_ok() {
        return Err(PortError::Io {
            call: "bind",
            source: io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("another lpcmon server is listening on {}", path.display()),
            ),
        });
    }
    fs::remove_file(path).map_err(|source| PortError::Io {
        call: "unlink",
        source,
    })
}

struct Shared {
    dispatcher: Arc<Dispatcher>,
    stop: AtomicBool,
    message_id: AtomicU32,
    connections: AtomicUsize,
    config: UnixPortConfig,
}

/// A running Unix port server. Dropping it without [`UnixPortServer::shutdown`] leaves the
/// threads running until the process exits.
pub struct UnixPortServer {
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
    readers: Arc<Mutex<Vec<JoinHandle<()>>>>,
    path: PathBuf,
}

impl UnixPortServer {
    pub fn start(config: UnixPortConfig, dispatcher: Arc<Dispatcher>) -> Result<Self, PortError> {
        if let Some(dir) = config.path.parent() {
            prepare_dir(dir, config.dir_mode)?;
        }
        clear_stale_socket(&config.path)?;
        let listener = seqpacket_socket()?;
        let addr = UnixAddr::new(&config.path).map_err(io_err("socket path"))?;
        socket::bind(listener.as_raw_fd(), &addr).map_err(io_err("bind"))?;
        fs::set_permissions(&config.path, fs::Permissions::from_mode(config.socket_mode)).map_err(
            |source| PortError::Io {
                call: "chmod",
                source,
            },
        )?;
        socket::listen(&listener, Backlog::new(64).map_err(io_err("listen"))?).map_err(io_err("listen"))?;
        socket::setsockopt(&listener, sockopt::ReceiveTimeout, &timeval(POLL_INTERVAL))
            .map_err(io_err("setsockopt"))?;

        let path = config.path.clone();
        let shared = Arc::new(Shared {
            dispatcher,
            stop: AtomicBool::new(false),
            message_id: AtomicU32::new(0),
            connections: AtomicUsize::new(0),
            config,
        });
        let readers = Arc::new(Mutex::new(Vec::new()));
        let acceptor = {
            let shared = shared.clone();
            let readers = readers.clone();
            std::thread::Builder::new()
                .name("lpcmon-port-accept".into())
                .spawn(move || accept_loop(&shared, &listener, &readers))
                .map_err(|source| PortError::Io {
                    call: "spawn",
                    source,
                })?
        };
        tracing::info!(path = %path.display(), "port listening (unix seqpacket)");
        Ok(UnixPortServer {
            shared,
            acceptor: Some(acceptor),
            readers,
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, closes every connection (each becomes `LPC_PORT_CLOSED`), and waits
    /// for the threads. Bounded by the poll interval.
    pub fn shutdown(mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        let readers = std::mem::take(&mut *self.readers.lock().unwrap_or_else(|p| p.into_inner()));
        for r in readers {
            let _ = r.join();
        }
        let _ = fs::remove_file(&self.path);
    }
}

/// Whether a connection is waiting on the listener, waiting at most `wait` (rounded up to a
/// whole millisecond, so a timer due in 0.3 ms is not polled for in a busy loop).
fn readable_within(listener: &OwnedFd, wait: Duration) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let ms = u16::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::from(ms)), Ok(n) if n > 0)
}

fn accept_loop(shared: &Arc<Shared>, listener: &OwnedFd, readers: &Mutex<Vec<JoinHandle<()>>>) {
    while !shared.stop.load(Ordering::Relaxed) {
        // The protocol says when its timers are next due (reassembly expiry, a backlog retry);
        // the loop ticks then, and otherwise wakes every POLL_INTERVAL only to notice a stop.
        // A due time is checked against the clock after the wait, not recomputed: a backlog
        // retry is "20 ms from now" whenever it is asked.
        let due = shared.dispatcher.poll_timeout();
        let wait = due.map_or(POLL_INTERVAL, |t| {
            t.saturating_duration_since(Instant::now()).min(POLL_INTERVAL)
        });
        let ready = readable_within(listener, wait);
        if due.is_some_and(|t| t <= Instant::now()) {
            shared.dispatcher.tick();
        }
        if !ready {
            continue;
        }
        let fd = match socket::accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
            Ok(fd) => fd,
            Err(nix::Error::EAGAIN | nix::Error::EINTR) => continue,
            Err(e) => {
                tracing::error!(error = %e, "accept failed");
                std::thread::sleep(POLL_INTERVAL);
                continue;
            }
        };
        // SAFETY: accept4 returned a new descriptor that nothing else owns.
        let conn = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        if shared.connections.load(Ordering::Relaxed) >= connection_limit(&shared.config, &conn) {
            let pid = peer_pid(&conn);
            shared
                .dispatcher
                .refuse_peer(pid, RefuseReason::TooManyProducers, "connection limit reached");
            // An accepted socket does not inherit the listener's timeout; bound the wait for
            // the Hello so a silent peer cannot hold the accept loop.
            let _ = socket::setsockopt(&conn, sockopt::ReceiveTimeout, &timeval(POLL_INTERVAL));
            answer_refusal(&conn, RefuseReason::TooManyProducers, "connection limit reached");
            continue;
        }
        shared.connections.fetch_add(1, Ordering::Relaxed);
        let id = shared.dispatcher.next_conn_id();
        let shared2 = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("lpcmon-port-conn-{id}"))
            .spawn(move || {
                serve_connection(&shared2, id, conn);
                shared2.connections.fetch_sub(1, Ordering::Relaxed);
            });
        match spawned {
            Ok(handle) => {
                let mut r = readers.lock().unwrap_or_else(|p| p.into_inner());
                r.retain(|h| !h.is_finished());
                r.push(handle);
            }
            Err(e) => {
                shared.connections.fetch_sub(1, Ordering::Relaxed);
                tracing::error!(error = %e, "could not start a connection thread");
            }
        }
    }
}

/// Checks the peer's credentials. Returns its pid, or `None` after refusing it.
fn authorise(shared: &Shared, conn: &OwnedFd) -> Option<u64> {
    let creds = match socket::getsockopt(conn, sockopt::PeerCredentials) {
        Ok(c) => c,
        Err(e) => {
            shared
                .dispatcher
                .refuse_peer(0, RefuseReason::Unauthorised, &format!("SO_PEERCRED failed: {e}"));
            return None;
        }
    };
    let pid = creds.pid().max(0) as u64;
    let ours = Uid::effective().as_raw();
    if creds.uid() != ours && creds.uid() != 0 {
        let why = format!(
            "peer uid {} is neither the server's ({ours}) nor root",
            creds.uid()
        );
        shared
            .dispatcher
            .refuse_peer(pid, RefuseReason::Unauthorised, &why);
        answer_refusal(conn, RefuseReason::Unauthorised, "uid not allowed");
        return None;
    }
    Some(pid)
}

/// How many connections may be open when `conn` arrives: all of them for a root peer, all
/// but the reserved ones for anyone else.
fn connection_limit(config: &UnixPortConfig, conn: &OwnedFd) -> usize {
    let root = socket::getsockopt(conn, sockopt::PeerCredentials).is_ok_and(|c| c.uid() == 0);
    limit_for(config, root)
}

fn limit_for(config: &UnixPortConfig, root: bool) -> usize {
    if root {
        config.max_connections
    } else {
        config.max_connections.saturating_sub(config.reserved_for_root)
    }
}

/// What a `recv` of 0 bytes means. On `SOCK_SEQPACKET` both EOF and an empty datagram read as
/// 0 bytes with the same flags (no `MSG_EOR` either way, checked on Linux 6.x); only the
/// socket's hang-up state tells them apart. An empty datagram sent just before the close
/// reads as EOF, which loses nothing: the connection is ending anyway.
fn peer_hung_up(conn: &OwnedFd) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    // POLLHUP is reported whether asked for or not; a closed SEQPACKET peer sets it.
    let mut fds = [PollFd::new(conn.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(_) => fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR)),
        // Cannot tell: treat it as the end rather than spin on a broken socket.
        Err(_) => true,
    }
}

fn peer_pid(conn: &OwnedFd) -> u64 {
    socket::getsockopt(conn, sockopt::PeerCredentials).map_or(0, |c| c.pid().max(0) as u64)
}

/// Refuses a peer the way a bad Hello is refused: read its Hello, then answer why. Closing with
/// the Hello unread would make the kernel report ECONNRESET to the peer ahead of the answer, so
/// it would never learn the reason. Waits at most the socket's receive timeout.
fn answer_refusal(conn: &OwnedFd, reason: RefuseReason, text: &str) {
    let mut hello = [0u8; 256];
    let _ = socket::recv(conn.as_raw_fd(), &mut hello, MsgFlags::MSG_TRUNC);
    let _ = send_all(conn, &crate::decide::refusal_reply(reason, text));
}

fn header(shared: &Shared, kind: u8, len: usize, pid: u64) -> PortMessage {
    let id = shared.message_id.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
    // Unix has no thread id for a peer; the pid stands in for both halves of the ClientId.
    PortMessage::new(kind, len, pid, pid, id)
}

fn serve_connection(shared: &Shared, id: ConnId, conn: OwnedFd) {
    if let Err(e) = socket::setsockopt(&conn, sockopt::ReceiveTimeout, &timeval(POLL_INTERVAL)) {
        tracing::error!(error = %e, "setsockopt on a connection failed");
        return;
    }
    let Some(pid) = authorise(shared, &conn) else {
        return;
    };
    // One byte more than the limit, so an oversized datagram is seen as oversized.
    let mut receiver = BatchReceiver::new(shared.config.max_message + 1);
    let mut established = false;
    let mut closing_kind = lpc::PORT_CLOSED;
    let handshake_deadline = Instant::now() + shared.config.handshake_timeout;
    while !shared.stop.load(Ordering::Relaxed) {
        if established {
            match receive_batch(shared, id, pid, &conn, &mut receiver) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    tracing::debug!(conn = id, error = %e, "connection failed");
                    closing_kind = lpc::CLIENT_DIED;
                    break;
                }
            }
        }
        // The handshake: one datagram, the Hello, answered before the producer sends more.
        let buf = receiver.first_slot();
        let n = match socket::recv(conn.as_raw_fd(), buf, MsgFlags::MSG_TRUNC) {
            // An empty datagram goes to the session, which counts it as malformed.
            Ok(0) if peer_hung_up(&conn) => break,
            Ok(n) => n.min(buf.len()),
            Err(nix::Error::EAGAIN | nix::Error::EINTR) => {
                if !established && Instant::now() >= handshake_deadline {
                    let why = format!(
                        "no valid Hello within {} ms of connecting",
                        shared.config.handshake_timeout.as_millis()
                    );
                    shared
                        .dispatcher
                        .refuse_peer(pid, RefuseReason::HandshakeTimeout, &why);
                    return;
                }
                continue;
            }
            Err(e) => {
                tracing::debug!(conn = id, error = %e, "connection failed");
                closing_kind = lpc::CLIENT_DIED;
                break;
            }
        };
        let data = &buf[..n];
        let action = shared
            .dispatcher
            .handle(id, &header(shared, lpc::CONNECTION_REQUEST, n, pid), data);
        match action {
            Action::Accept { reply } => {
                established = true;
                if send_all(&conn, &reply).is_err() {
                    closing_kind = lpc::CLIENT_DIED;
                    break;
                }
            }
            Action::Refuse { reply } => {
                let _ = send_all(&conn, &reply);
                return;
            }
            Action::Close => break,
            Action::None | Action::Reply { .. } => {}
        }
    }
    if established && shared.stop.load(Ordering::Relaxed) {
        drain(shared, id, pid, &conn, receiver.first_slot());
    }
    if established {
        shared
            .dispatcher
            .handle(id, &header(shared, closing_kind, 0, pid), &[]);
    }
}

/// Takes every datagram waiting on an established connection (at least one, waiting up to the
/// receive timeout) and runs them through the dispatcher at once. `Ok(false)` at the end of
/// the stream, `Ok(true)` to go on.
fn receive_batch(
    shared: &Shared,
    id: ConnId,
    pid: u64,
    conn: &OwnedFd,
    receiver: &mut BatchReceiver,
) -> nix::Result<bool> {
    let n = match receiver.recv(conn) {
        Ok(n) => n,
        Err(nix::Error::EAGAIN | nix::Error::EINTR) => return Ok(true),
        Err(e) => return Err(e),
    };
    // Trailing empty datagrams are the end of the stream if the peer has hung up (see
    // `peer_hung_up`); an empty datagram with data after it is a datagram, which the session
    // counts as malformed.
    let data = receiver.before_trailing_empty();
    let eof = data < n && peer_hung_up(conn);
    let end = if eof { data } else { n };
    shared.dispatcher.handle_datagrams(
        id,
        (0..end).map(|i| {
            let datagram = receiver.datagram(i);
            (header(shared, lpc::DATAGRAM, datagram.len(), pid), datagram)
        }),
    );
    Ok(!eof)
}

/// On a graceful stop, takes what the producer had already sent before the connection closes,
/// so nothing the kernel accepted on the server's behalf is lost. Shutting the read side first
/// makes the producer's later sends fail at once (it counts those itself), so this ends.
fn drain(shared: &Shared, id: ConnId, pid: u64, conn: &OwnedFd, buf: &mut [u8]) {
    let _ = socket::shutdown(conn.as_raw_fd(), socket::Shutdown::Read);
    loop {
        match socket::recv(
            conn.as_raw_fd(),
            buf,
            MsgFlags::MSG_TRUNC | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let n = n.min(buf.len());
                shared
                    .dispatcher
                    .handle(id, &header(shared, lpc::DATAGRAM, n, pid), &buf[..n]);
            }
        }
    }
}

fn send_all(conn: &impl AsFd, data: &[u8]) -> nix::Result<()> {
    socket::send(conn.as_fd().as_raw_fd(), data, MsgFlags::MSG_NOSIGNAL).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Finding 9: non-root peers can never take the slots reserved for root. (The tests run
    /// as root, and a non-root peer of a root server is refused outright, so the reservation
    /// is checked here rather than with a second user over a socket.)
    #[test]
    fn non_root_peers_leave_the_reserved_slots_free() {
        let config = UnixPortConfig {
            max_connections: 64,
            reserved_for_root: 8,
            ..UnixPortConfig::new("/nonexistent")
        };
        assert_eq!(limit_for(&config, false), 56);
        assert_eq!(limit_for(&config, true), 64);
        let tiny = UnixPortConfig {
            max_connections: 4,
            reserved_for_root: 8,
            ..config
        };
        assert_eq!(limit_for(&tiny, false), 0);
    }
}
