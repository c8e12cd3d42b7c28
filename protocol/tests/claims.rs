//! Finding 6 of issue 9: a producer's claims are bounded. A heartbeat or loss report that moves
//! a sequence number or loss total by more than 2^40 at once is refused as malformed, instead of
//! booking ~9.2e18 losses; Finding 8: a Hello's `os` text is escaped before anyone sees it.

use lpcmon_protocol::message::{Heartbeat, Hello, Loss, MIN_VERSION, VERSION};
use lpcmon_protocol::port_message::{PortMessage, lpc};
use lpcmon_protocol::server::{Action, Output, Server, ServerConfig};
use lpcmon_protocol::{LossStage, ProducerKind};

struct Peer {
    server: Server,
    message_id: u32,
    out: Vec<Output>,
}

impl Peer {
    fn connect(os: &str) -> Peer {
        let mut peer = Peer {
            server: Server::new(ServerConfig::default()),
            message_id: 0,
            out: Vec::new(),
        };
        let hello = Hello {
            min_version: MIN_VERSION,
            max_version: VERSION,
            kind: ProducerKind::Loadgen,
            instance: [7; 16],
            max_message: 4096,
            next_seq: 1,
            os_build: 0,
            os,
        };
        let mut buf = [0u8; 512];
        let n = hello.encode(&mut buf).unwrap();
        let action = peer.send(lpc::CONNECTION_REQUEST, &buf[..n]);
        assert!(matches!(action, Action::Accept { .. }), "{action:?}");
        peer
    }

    fn send(&mut self, kind: u8, data: &[u8]) -> Action {
        self.message_id += 1;
        let header = PortMessage::new(kind, data.len(), 1000, 1000, self.message_id);
        self.server.handle(1, 1, &header, data, &mut self.out)
    }

    fn heartbeat(&mut self, last_seq: u64, queue_drops_reported: u64) {
        let hb = Heartbeat {
            produced: last_seq,
            queue_drops_reported,
            send_failed: 0,
            last_seq,
        };
        let mut buf = [0u8; 128];
        let n = hb.encode(&mut buf).unwrap();
        self.send(lpc::DATAGRAM, &buf[..n]);
    }

    fn loss(&mut self, stage: LossStage, first_seq: u64, last_seq: u64, count: u64, total: u64) {
        let loss = Loss {
            stage,
            count,
            first_seq,
            last_seq,
            total,
        };
        let mut buf = [0u8; 128];
        let n = loss.encode(&mut buf).unwrap();
        self.send(lpc::DATAGRAM, &buf[..n]);
    }

    /// Losses booked, and malformed messages seen, since the last call; ages every gap first.
    fn take(&mut self) -> (u64, usize) {
        self.server.poll(u64::MAX / 2, &mut self.out);
        let out = std::mem::take(&mut self.out);
        let lost = out
            .iter()
            .map(|o| match o {
                Output::Loss { loss, .. } => loss.count,
                _ => 0,
            })
            .sum();
        let malformed = out
            .iter()
            .filter(|o| matches!(o, Output::Malformed { .. }))
            .count();
        (lost, malformed)
    }
}

#[test]
fn huge_heartbeat_claims_are_malformed_not_losses() {
    let mut peer = Peer::connect("Linux");
    peer.take();
    peer.heartbeat(1 << 62, 0);
    assert_eq!(peer.take(), (0, 1));
    peer.heartbeat(10, 1 << 63);
    assert_eq!(peer.take(), (0, 1));
    // A plausible gap is still booked exactly: 10 events never arrived.
    peer.heartbeat(10, 0);
    assert_eq!(peer.take(), (10, 0));
}

#[test]
fn huge_loss_reports_are_malformed_and_plausible_ones_counted() {
    let mut peer = Peer::connect("Linux");
    peer.take();
    peer.loss(LossStage::ProducerQueue, 1, 1, 1 << 63, 1 << 63);
    assert_eq!(peer.take(), (0, 1));
    peer.loss(LossStage::Kernel, 1, 1, u64::MAX, u64::MAX);
    assert_eq!(peer.take(), (0, 1));
    peer.loss(LossStage::ProducerSend, 1, 1 << 50, 1 << 50, 1 << 50);
    assert_eq!(peer.take(), (0, 1));
    peer.loss(LossStage::ProducerQueue, 1, 1, 5, 5);
    assert_eq!(peer.take(), (5, 0));
}

#[test]
fn hello_os_text_is_escaped() {
    let mut peer = Peer::connect("Linux\n2026-01-01 INFO forged\u{1b}[2J");
    let os = peer
        .out
        .iter()
        .find_map(|o| match o {
            Output::Connected(p) => Some(p.os.clone()),
            _ => None,
        })
        .expect("a Connected output");
    assert_eq!(os, "Linux\\u{a}2026-01-01 INFO forged\\u{1b}[2J");
    peer.take();
}
