//! One `Server` fed a sequence of port messages from several connections, with timer polls.
//!
//! The input is a list of records. Each starts with a byte whose low two bits pick the
//! connection and whose upper six pick an operation: raw bytes with an LPC type (connection
//! request, datagram, request, port closed, client died, or any other type), a synthesised
//! message (Hello, Event, a Fragment of an event, Loss, Heartbeat; so the fuzzer reaches deep
//! states without first guessing the wire format), possibly corrupted, or a timer poll.
//!
//! Besides "never panics", it checks the server's bounds (connections, held events per
//! instance, reassembly per connection) and that each producer instance resolves its sequence
//! numbers once each, in order, with no holes.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use lpcmon_protocol::event::{EventHeader, EventKind, EventWriter, FieldType};
use lpcmon_protocol::fragment::Fragmenter;
use lpcmon_protocol::message::Heartbeat;
use lpcmon_protocol::port_message::{PortMessage, lpc};
use lpcmon_protocol::server::{Action, Output, Server, ServerConfig};
use lpcmon_protocol::{Hello, Loss, LossStage, Message, ProducerKind};

const MAX_CONNECTIONS: usize = 3;
const REORDER_MAX: usize = 4;
const REASSEMBLY_MAX_EVENTS: usize = 2;

struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }

    /// A length byte, then that many bytes (fewer at the end of the input).
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::from(self.u8()?).min(self.0.len());
        let (out, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(out)
    }
}

fn event(seq: u64, len: usize) -> Vec<u8> {
    let header = EventHeader {
        seq,
        kind: EventKind::ProcessExec,
        flags: 0,
        time_ns: seq,
        pid: seq as u32,
        ppid: 1,
        tid: 1,
    };
    let mut buf = vec![0u8; 64 + len];
    let mut w = EventWriter::new(&mut buf, &header, usize::MAX).expect("room for the header");
    w.utf8(FieldType::COMMAND_LINE, &"z".repeat(len))
        .expect("room for the field");
    let n = w.finish();
    buf.truncate(n);
    buf
}

fn encoded(f: impl FnOnce(&mut [u8]) -> usize) -> Vec<u8> {
    let mut buf = vec![0u8; 256];
    let n = f(&mut buf);
    buf.truncate(n);
    buf
}

/// A synthesised message; `None` when the input ran out.
fn synthesise(op: u8, input: &mut Input<'_>) -> Option<Vec<u8>> {
    Some(match op {
        0 => {
            let instance = [input.u8()? % 4 + 1; 16];
            let next_seq = u64::from(input.u8()?) + 1;
            let max_message = u32::from(input.u16()?);
            encoded(|b| {
                Hello {
                    min_version: 1,
                    max_version: 1,
                    kind: ProducerKind::Loadgen,
                    instance,
                    max_message,
                    next_seq,
                    os_build: 0,
                    os: "fuzz",
                }
                .encode(b)
                .expect("a Hello fits")
            })
        }
        1 => event(u64::from(input.u8()?) + 1, usize::from(input.u8()?)),
        2 => {
            let seq = u64::from(input.u8()?) + 1;
            let e = event(seq, usize::from(input.u16()? % 2048));
            let limit = 64 + usize::from(input.u8()?);
            let index = input.u8()?;
            let plan = Fragmenter::new(e.len(), seq, limit).expect("a plan");
            let mut buf = vec![0u8; limit];
            let n = plan
                .write(&e, u16::from(index) % plan.count(), &mut buf)
                .expect("a piece");
            buf.truncate(n);
            buf
        }
        3 => {
            let stage = LossStage::ALL[usize::from(input.u8()?) % LossStage::ALL.len()];
            let first = u64::from(input.u8()?);
            let span = u64::from(input.u8()? % 8);
            let total = u64::from(input.u8()?);
            let count = span + 1;
            encoded(|b| {
                Loss {
                    stage,
                    count,
                    first_seq: first,
                    last_seq: first + span,
                    total: total.max(count),
                }
                .encode(b)
                .expect("a Loss fits")
            })
        }
        _ => {
            let last_seq = u64::from(input.u8()?);
            let drops = u64::from(input.u8()?);
            encoded(|b| {
                Heartbeat {
                    produced: 0,
                    queue_drops_reported: drops,
                    send_failed: 0,
                    last_seq,
                }
                .encode(b)
                .expect("a Heartbeat fits")
            })
        }
    })
}

#[derive(Default)]
struct Checks {
    /// Per accepted instance: the next sequence number it must resolve.
    next: BTreeMap<[u8; 16], u64>,
}

impl Checks {
    fn outputs(&mut self, out: &mut Vec<Output>) {
        for o in out.drain(..) {
            let (producer, first, last) = match &o {
                Output::Event { producer, event, .. } => (producer, event.header.seq, event.header.seq),
                Output::Loss { producer, loss } => {
                    assert!(loss.count >= 1);
                    if matches!(loss.stage, LossStage::ProducerQueue | LossStage::Kernel) {
                        continue;
                    }
                    assert_eq!(loss.count, loss.last_seq - loss.first_seq + 1);
                    (producer, loss.first_seq, loss.last_seq)
                }
                _ => continue,
            };
            let next = self
                .next
                .get_mut(&producer.instance)
                .expect("an accepted instance");
            assert_eq!(first, *next, "resolved out of order or twice: {o:?}");
            *next = last + 1;
        }
    }

    fn bounds(&self, server: &Server) {
        assert!(server.connections() <= MAX_CONNECTIONS);
        assert!(server.held_events() <= REORDER_MAX * self.next.len());
        assert!(server.reassembling() <= REASSEMBLY_MAX_EVENTS * server.connections());
    }
}

fuzz_target!(|data: &[u8]| {
    let mut server = Server::new(ServerConfig {
        max_connections: MAX_CONNECTIONS,
        max_instances: 1 << 16,
        reorder_max: REORDER_MAX,
        reassembly_max_events: REASSEMBLY_MAX_EVENTS,
        reassembly_max_bytes: 8192,
        max_event_len: 4096,
        reassembly_timeout_ns: 50_000,
        gap_timeout_ns: 100_000,
        ..ServerConfig::default()
    });
    let mut input = Input(data);
    let mut checks = Checks::default();
    let mut out = Vec::new();
    let mut now = 0u64;
    let mut message_id = 0u32;
    for record in 0u32.. {
        let Some(head) = input.u8() else { break };
        let conn = u64::from(head & 3);
        let op = head >> 2;
        now += 1_000;
        message_id = message_id.wrapping_add(1);
        let (kind, payload): (u16, Vec<u8>) = match op {
            0 => (
                lpc::CONNECTION_REQUEST.into(),
                input.bytes().unwrap_or_default().to_vec(),
            ),
            1 => (lpc::DATAGRAM.into(), input.bytes().unwrap_or_default().to_vec()),
            2 => (lpc::REQUEST.into(), input.bytes().unwrap_or_default().to_vec()),
            3 => (lpc::PORT_CLOSED.into(), Vec::new()),
            4 => (lpc::CLIENT_DIED.into(), Vec::new()),
            5 => {
                let kind = input.u16().unwrap_or_default();
                (kind, input.bytes().unwrap_or_default().to_vec())
            }
            6 => {
                now += u64::from(input.u16().unwrap_or_default()) * 100;
                server.poll(now, &mut out);
                checks.outputs(&mut out);
                checks.bounds(&server);
                continue;
            }
            _ => {
                // 7..=63: a synthesised message (op % 5) as a datagram, request or connection
                // request (op / 5 % 3), corrupted in one byte when op / 15 is odd.
                let Some(mut msg) = synthesise(op % 5, &mut input) else {
                    break;
                };
                if (op / 15) % 2 == 1
                    && let (Some(at), Some(xor)) = (input.u8(), input.u8())
                    && !msg.is_empty()
                {
                    let at = usize::from(at) % msg.len();
                    msg[at] ^= xor;
                }
                let kind = [lpc::DATAGRAM, lpc::REQUEST, lpc::CONNECTION_REQUEST][usize::from(op / 5 % 3)];
                (kind.into(), msg)
            }
        };
        let mut header = PortMessage::new(0, payload.len(), 4, 8, message_id);
        header.message_type = kind;
        let action = server.handle(now, conn, &header, &payload, &mut out);
        match (header.kind(), &action) {
            (lpc::CONNECTION_REQUEST, Action::Accept { .. }) => {
                let Ok(Message::Hello(hello)) = Message::decode(&payload, 128) else {
                    panic!("accepted something that is not a Hello")
                };
                checks.next.entry(hello.instance).or_insert(hello.next_seq);
            }
            (lpc::CONNECTION_REQUEST, Action::Refuse { .. }) => {}
            (lpc::REQUEST, Action::Reply { message_id: id }) => assert_eq!(*id, message_id),
            (lpc::PORT_CLOSED | lpc::CLIENT_DIED, Action::Close) => {}
            (lpc::CONNECTION_REQUEST | lpc::REQUEST | lpc::PORT_CLOSED | lpc::CLIENT_DIED, other) => {
                panic!("type {kind:#x} answered with {other:?}")
            }
            (_, Action::None) => {}
            (_, other) => panic!("type {kind:#x} answered with {other:?}"),
        }
        checks.outputs(&mut out);
        checks.bounds(&server);
        if record % 16 == 15 {
            server.poll(now, &mut out);
            checks.outputs(&mut out);
            checks.bounds(&server);
        }
    }
    // Closing everything resolves everything held.
    for conn in 0..4 {
        let header = PortMessage::new(lpc::PORT_CLOSED, 0, 4, 8, 0);
        server.handle(now, conn, &header, &[], &mut out);
    }
    checks.outputs(&mut out);
    assert_eq!(server.connections(), 0);
    assert_eq!(server.held_events(), 0);
    assert_eq!(server.reassembling(), 0);
});
