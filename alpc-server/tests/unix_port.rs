//! The Unix port server against hostile peers, over real SEQPACKET sockets (issue 9):
//! finding 9 (peers that never say Hello are dropped and counted, so they cannot hold every
//! slot) and finding 10 (an empty datagram is malformed, not the end of the session).
#![cfg(unix)]

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alpc_server::dispatch::Dispatcher;
use alpc_server::unix::{UnixPortConfig, UnixPortServer};
use lpcmon_protocol::message::{Heartbeat, Hello, MIN_VERSION, VERSION};
use lpcmon_protocol::server::{Output, ServerConfig};
use lpcmon_protocol::{HelloReply, Message, ProducerKind, RefuseReason};
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr, sockopt};
use nix::sys::time::TimeVal;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

struct Port {
    server: Option<UnixPortServer>,
    outputs: mpsc::Receiver<Output>,
    _dir: tempfile::TempDir,
}

impl Port {
    fn start(tune: impl FnOnce(&mut UnixPortConfig)) -> Port {
        let dir = tempfile::tempdir().unwrap();
        let (tx, outputs) = mpsc::channel(1024);
        let dispatcher = Arc::new(Dispatcher::new(ServerConfig::default(), tx));
        let mut config = UnixPortConfig::new(dir.path().join("port/events.sock"));
        tune(&mut config);
        let server = UnixPortServer::start(config, dispatcher).unwrap();
        Port {
            server: Some(server),
            outputs,
            _dir: dir,
        }
    }

    fn path(&self) -> &Path {
        self.server.as_ref().unwrap().path()
    }

    /// Waits for an output that `want` picks, dropping the others.
    fn wait_for(&mut self, what: &str, mut want: impl FnMut(&Output) -> bool) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            match self.outputs.try_recv() {
                Ok(o) if want(&o) => return,
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        panic!("no {what} output within {WAIT:?}");
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
    }
}

fn connect(path: &Path) -> OwnedFd {
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    socket::connect(fd.as_raw_fd(), &UnixAddr::new(path).unwrap()).unwrap();
    socket::setsockopt(
        &fd,
        sockopt::ReceiveTimeout,
        &TimeVal::new(WAIT.as_secs() as i64, 0),
    )
    .unwrap();
    fd
}

fn hello(instance: u8) -> Vec<u8> {
    let mut buf = vec![0u8; 128];
    let len = Hello {
        min_version: MIN_VERSION,
        max_version: VERSION,
        kind: ProducerKind::Loadgen,
        instance: [instance; 16],
        max_message: 4096,
        next_seq: 1,
        os_build: 0,
        os: "test",
    }
    .encode(&mut buf)
    .unwrap();
    buf.truncate(len);
    buf
}

/// Sends a Hello and returns whether the server accepted it.
fn handshake(fd: &OwnedFd, instance: u8) -> bool {
    socket::send(fd.as_raw_fd(), &hello(instance), MsgFlags::MSG_NOSIGNAL).unwrap();
    let mut reply = [0u8; 256];
    let n = socket::recv(fd.as_raw_fd(), &mut reply, MsgFlags::empty()).unwrap();
    matches!(
        Message::decode(&reply[..n], 4096),
        Ok(Message::HelloReply(HelloReply::Accept { .. }))
    )
}

/// Blocks until the server closes `fd` (a read of 0 with the peer gone), within `WAIT`.
fn closed_by_server(fd: &OwnedFd) -> bool {
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        match socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(nix::Error::EAGAIN | nix::Error::EINTR) => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn silent_peers_are_dropped_after_the_handshake_timeout() {
    let mut port = Port::start(|c| {
        c.max_connections = 4;
        c.reserved_for_root = 0;
        c.handshake_timeout = Duration::from_millis(300);
    });
    let silent: Vec<OwnedFd> = (0..4).map(|_| connect(port.path())).collect();
    // While they hold every slot a producer is refused; once they time out it gets in.
    for fd in &silent {
        assert!(closed_by_server(fd), "a silent peer was never dropped");
    }
    port.wait_for("handshake_timeout refusal", |o| {
        matches!(
            o,
            Output::Refused {
                reason: RefuseReason::HandshakeTimeout,
                ..
            }
        )
    });
    let producer = connect(port.path());
    let deadline = Instant::now() + WAIT;
    let mut accepted = handshake(&producer, 1);
    while !accepted && Instant::now() < deadline {
        // The slot frees when the connection thread has finished; retry on a new socket.
        std::thread::sleep(Duration::from_millis(50));
        accepted = handshake(&connect(port.path()), 1);
    }
    assert!(
        accepted,
        "a producer stayed locked out after the silent peers timed out"
    );
}

#[test]
fn an_empty_datagram_is_malformed_and_the_session_goes_on() {
    let mut port = Port::start(|_| {});
    let fd = connect(port.path());
    assert!(handshake(&fd, 2));
    socket::send(fd.as_raw_fd(), &[], MsgFlags::MSG_NOSIGNAL).unwrap();
    port.wait_for("malformed", |o| matches!(o, Output::Malformed { .. }));
    // The session is still open: a heartbeat goes through and is received.
    std::thread::sleep(Duration::from_millis(200));
    let mut buf = [0u8; 128];
    let n = Heartbeat {
        produced: 0,
        queue_drops_reported: 0,
        send_failed: 0,
        last_seq: 0,
    }
    .encode(&mut buf)
    .unwrap();
    socket::send(fd.as_raw_fd(), &buf[..n], MsgFlags::MSG_NOSIGNAL)
        .expect("the session ended on an empty datagram");
    port.wait_for("heartbeat", |o| matches!(o, Output::Heartbeat { .. }));
}
