//! The server state machine: connections, handshakes, and the per-instance sequence state.

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt::Write as _;

use super::peer_text::escape_peer_text;
use super::reassembly::{Limits, Push, Reassembler};
use super::sequence::{Delivery, SequenceTracker};
use crate::error::DecodeError;
use crate::event::Event;
use crate::message::{
    Heartbeat, Hello, HelloReply, Loss, LossStage, MIN_VERSION, Message, ProducerKind, RefuseReason, VERSION,
};
use crate::port_message::{PortMessage, lpc};

/// Identifies one connection for the life of the server. Backends allocate them.
pub type ConnId = u64;

/// Server limits and policy. Times are in nanoseconds of the caller's clock.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The transport name shown in `transport.api`: `unix`, `alpc` or `lpc`.
    pub api: &'static str,
    /// The largest message (data bytes) the server accepts; the handshake agrees on the
    /// smaller of this and the producer's.
    pub max_message: usize,
    /// Versions accepted; a Hello whose range does not meet this one is refused.
    pub min_version: u8,
    pub max_version: u8,
    pub max_connections: usize,
    /// Producer instances whose sequence state is remembered after they disconnect.
    pub max_instances: usize,
    pub reassembly_max_events: usize,
    pub reassembly_max_bytes: usize,
    pub max_event_len: usize,
    pub reassembly_timeout_ns: u64,
    /// Out-of-order events held per producer while waiting for a missing number.
    pub reorder_max: usize,
    /// How long a sequence gap may wait for its missing numbers before it counts as lost.
    pub gap_timeout_ns: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            api: "unix",
            max_message: 64 * 1024,
            min_version: MIN_VERSION,
            max_version: VERSION,
            max_connections: 64,
            max_instances: 1024,
            reassembly_max_events: 64,
            reassembly_max_bytes: 4 * 1024 * 1024,
            max_event_len: 256 * 1024,
            reassembly_timeout_ns: 2_000_000_000,
            reorder_max: 1024,
            gap_timeout_ns: 1_000_000_000,
        }
    }
}

/// Who a session's producer is. Shared by every output of that connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerInfo {
    pub conn: ConnId,
    pub kind: ProducerKind,
    pub instance: [u8; 16],
    /// The instance as 32 lowercase hex digits, as JSON shows it.
    pub instance_hex: String,
    pub version: u8,
    pub os: String,
    pub os_build: u32,
    /// `ClientId.UniqueProcess` of the connection request (4 for a driver's system thread; the
    /// peer pid on Unix).
    pub client_pid: u64,
    pub max_message: u32,
    /// The `now` of the handshake.
    pub connected_at: u64,
}

impl ProducerInfo {
    /// A producer known only by its kind and instance, e.g. from a previous run's records:
    /// no connection, and none of what its handshake would have said.
    pub fn known_only(kind: ProducerKind, instance: [u8; 16]) -> Self {
        ProducerInfo {
            conn: 0,
            kind,
            instance,
            instance_hex: hex(&instance),
            version: 0,
            os: String::new(),
            os_build: 0,
            client_pid: 0,
            max_message: 0,
            connected_at: 0,
        }
    }
}

/// How an event travelled, for `transport` in the event JSON and for research.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportInfo {
    pub api: &'static str,
    /// MessageId of the (last) port message that carried it.
    pub message_id: u32,
    pub client_pid: u64,
    /// Encoded event bytes.
    pub bytes: usize,
    pub fragments: u16,
}

/// What the server hands to the rest of lpcmon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Connected(Arc<ProducerInfo>),
    Disconnected {
        producer: Arc<ProducerInfo>,
        reason: &'static str,
    },
    /// An event, in the producer's sequence order.
    Event {
        producer: Arc<ProducerInfo>,
        event: Event,
        transport: TransportInfo,
    },
    /// Events this producer lost, reported by it or detected here. Counts are exact.
    Loss {
        producer: Arc<ProducerInfo>,
        loss: Loss,
    },
    Heartbeat {
        producer: Arc<ProducerInfo>,
        heartbeat: Heartbeat,
    },
    /// A message for a sequence number already resolved. Nothing is lost; it is counted.
    Stale {
        producer: Arc<ProducerInfo>,
        seq: u64,
        duplicate: bool,
    },
    /// A message that could not be decoded. Its event, if it carried one, shows up as a gap.
    Malformed {
        producer: Option<Arc<ProducerInfo>>,
        client_pid: u64,
        error: DecodeError,
    },
    /// A connection the handshake refused.
    Refused {
        client_pid: u64,
        reason: RefuseReason,
        detail: String,
    },
}

/// What the backend must do after a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    None,
    /// Accept the connection; `reply` is the encoded HelloReply for the producer.
    Accept {
        reply: Vec<u8>,
    },
    /// Refuse the connection, telling the producer why.
    Refuse {
        reply: Vec<u8>,
    },
    /// Reply to an `LPC_REQUEST` with its MessageId.
    Reply {
        message_id: u32,
    },
    /// Close this connection.
    Close,
}

struct Session {
    producer: Arc<ProducerInfo>,
    limit: usize,
    reassembly: Reassembler,
}

struct Instance {
    tracker: SequenceTracker<(Event, TransportInfo)>,
    /// Running totals already counted for the stages without sequence numbers.
    queue_drops: u64,
    kernel_drops: u64,
    producer: Arc<ProducerInfo>,
    live: bool,
    last_active: u64,
}

/// A producer instance's sequence state as a previous run of the server left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoredInstance {
    pub instance: [u8; 16],
    pub kind: ProducerKind,
    /// The lowest sequence number not yet delivered or declared lost.
    pub next_seq: u64,
    /// Running totals of `producer_queue` and `kernel` drops already counted.
    pub queue_drops: u64,
    pub kernel_drops: u64,
}

/// Every connection and producer instance of one port.
pub struct Server {
    config: ServerConfig,
    sessions: BTreeMap<ConnId, Session>,
    instances: BTreeMap<[u8; 16], Instance>,
    /// What the sequence tracker hands back for one message, reused so receiving an event
    /// allocates nothing for it.
    deliveries: Vec<Delivery<(Event, TransportInfo)>>,
}

fn hex(bytes: &[u8; 16]) -> String {
    let mut s = String::with_capacity(32);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

impl Server {
    pub fn new(config: ServerConfig) -> Self {
        Server {
            config,
            sessions: BTreeMap::new(),
            instances: BTreeMap::new(),
            deliveries: Vec::new(),
        }
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    pub fn connections(&self) -> usize {
        self.sessions.len()
    }

    /// Handles one message from the port. The backend carries out the returned action.
    pub fn handle(
        &mut self,
        now: u64,
        conn: ConnId,
        header: &PortMessage,
        data: &[u8],
        out: &mut Vec<Output>,
    ) -> Action {
        match header.kind() {
            lpc::CONNECTION_REQUEST => self.connect(now, conn, header, data, out),
            lpc::DATAGRAM => {
                self.receive(now, conn, header, data, out);
                Action::None
            }
            lpc::REQUEST => {
                self.receive(now, conn, header, data, out);
                Action::Reply {
                    message_id: header.message_id,
                }
            }
            lpc::PORT_CLOSED => {
                self.close(conn, "port closed", out);
                Action::Close
            }
            lpc::CLIENT_DIED => {
                self.close(conn, "client died", out);
                Action::Close
            }
            other => {
                out.push(Output::Malformed {
                    producer: self.sessions.get(&conn).map(|s| s.producer.clone()),
                    client_pid: header.client_process,
                    error: DecodeError::UnknownMessageType(other),
                });
                Action::None
            }
        }
    }

    fn refuse(
        &self,
        header: &PortMessage,
        reason: RefuseReason,
        detail: String,
        out: &mut Vec<Output>,
    ) -> Action {
        let reply = HelloReply::Refuse {
            reason,
            min_version: self.config.min_version,
            max_version: self.config.max_version,
            text: &detail,
        }
        .to_vec();
        out.push(Output::Refused {
            client_pid: header.client_process,
            reason,
            detail,
        });
        Action::Refuse { reply }
    }

    fn connect(
        &mut self,
        now: u64,
        conn: ConnId,
        header: &PortMessage,
        data: &[u8],
        out: &mut Vec<Output>,
    ) -> Action {
        let hello = match Message::decode(data, crate::port_message::LPC_MAX_CONNECTION_INFO) {
            Ok(Message::Hello(h)) => h,
            Ok(_) => {
                return self.refuse(
                    header,
                    RefuseReason::Malformed,
                    "expected a Hello".to_string(),
                    out,
                );
            }
            Err(e) => return self.refuse(header, RefuseReason::Malformed, e.to_string(), out),
        };
        let version = hello.max_version.min(self.config.max_version);
        if version < hello.min_version.max(self.config.min_version) {
            let detail = alloc::format!(
                "producer speaks versions {}..={}, server {}..={}",
                hello.min_version,
                hello.max_version,
                self.config.min_version,
                self.config.max_version
            );
            return self.refuse(header, RefuseReason::UnsupportedVersion, detail, out);
        }
        if self.sessions.contains_key(&conn) {
            return self.refuse(
                header,
                RefuseReason::Malformed,
                "connection already established".to_string(),
                out,
            );
        }
        if self.sessions.len() >= self.config.max_connections {
            return self.refuse(
                header,
                RefuseReason::TooManyProducers,
                "connection limit reached".to_string(),
                out,
            );
        }
        if self.instances.get(&hello.instance).is_some_and(|i| i.live) {
            return self.refuse(
                header,
                RefuseReason::AlreadyConnected,
                "instance already connected".to_string(),
                out,
            );
        }
        let limit = (hello.max_message as usize).min(self.config.max_message);
        if limit < crate::fragment::MIN_MESSAGE_LIMIT {
            return self.refuse(
                header,
                RefuseReason::Malformed,
                "message limit below 64 bytes".to_string(),
                out,
            );
        }
        let producer = Arc::new(ProducerInfo {
            conn,
            kind: hello.kind,
            instance: hello.instance,
            instance_hex: hex(&hello.instance),
            version,
            os: escape_peer_text(hello.os),
            os_build: hello.os_build,
            client_pid: header.client_process,
            max_message: limit as u32,
            connected_at: now,
        });
        self.remember_instance(now, &hello, &producer);
        self.sessions.insert(
            conn,
            Session {
                producer: producer.clone(),
                limit,
                reassembly: Reassembler::new(Limits {
                    max_events: self.config.reassembly_max_events,
                    max_bytes: self.config.reassembly_max_bytes,
                    max_event_len: self.config.max_event_len,
                    timeout_ns: self.config.reassembly_timeout_ns,
                }),
            },
        );
        out.push(Output::Connected(producer));
        let reply = HelloReply::Accept {
            version,
            max_message: limit as u32,
        }
        .to_vec();
        Action::Accept { reply }
    }

    /// Seeds the sequence state of a producer instance from a previous run of the server (its
    /// durable store), before the producer reconnects: everything below `next_seq` was already
    /// delivered or declared lost, and the stages without sequence numbers were counted up to
    /// the given running totals. A reconnecting producer whose sequence has moved on then shows
    /// the numbers in between as a gap (counted `transport` loss unless it reports them), and
    /// its running totals are not counted twice.
    pub fn restore_instance(&mut self, restored: RestoredInstance) {
        let producer = Arc::new(ProducerInfo::known_only(restored.kind, restored.instance));
        self.instances.insert(
            restored.instance,
            Instance {
                tracker: SequenceTracker::new(restored.next_seq.max(1)),
                queue_drops: restored.queue_drops,
                kernel_drops: restored.kernel_drops,
                producer,
                live: false,
                last_active: 0,
            },
        );
    }

    fn remember_instance(&mut self, now: u64, hello: &Hello<'_>, producer: &Arc<ProducerInfo>) {
        if !self.instances.contains_key(&hello.instance) && self.instances.len() >= self.config.max_instances
        {
            // Forget the longest-idle disconnected instance; its sequence state is complete
            // (closing resolved everything below its high-water mark).
            let idle = self
                .instances
                .iter()
                .filter(|(_, i)| !i.live)
                .min_by_key(|(_, i)| i.last_active)
                .map(|(k, _)| *k);
            if let Some(k) = idle {
                self.instances.remove(&k);
            }
        }
        let inst = self.instances.entry(hello.instance).or_insert_with(|| Instance {
            tracker: SequenceTracker::new(hello.next_seq),
            queue_drops: 0,
            kernel_drops: 0,
            producer: producer.clone(),
            live: true,
            last_active: now,
        });
        inst.producer = producer.clone();
        inst.live = true;
        inst.last_active = now;
        inst.tracker.on_resume(now, hello.next_seq);
    }

    fn receive(&mut self, now: u64, conn: ConnId, header: &PortMessage, data: &[u8], out: &mut Vec<Output>) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            out.push(Output::Malformed {
                producer: None,
                client_pid: header.client_process,
                error: DecodeError::InvalidValue("message before a handshake"),
            });
            return;
        };
        let producer = session.producer.clone();
        let malformed = |error| Output::Malformed {
            producer: Some(producer.clone()),
            client_pid: header.client_process,
            error,
        };
        let msg = match Message::decode(data, session.limit) {
            Ok(m) => m,
            Err(e) => return out.push(malformed(e)),
        };
        let Some(inst) = self.instances.get_mut(&producer.instance) else {
            return out.push(malformed(DecodeError::InvalidValue("instance state missing")));
        };
        inst.last_active = now;
        let reorder_max = self.config.reorder_max;
        let mut deliveries = core::mem::take(&mut self.deliveries);
        let transport = |bytes, fragments| TransportInfo {
            api: self.config.api,
            message_id: header.message_id,
            client_pid: header.client_process,
            bytes,
            fragments,
        };
        if let Some(why) = implausible_claim(&msg, inst.tracker.next(), inst.queue_drops, inst.kernel_drops) {
            return out.push(malformed(DecodeError::InvalidValue(why)));
        }
        match msg {
            Message::Event(view) => {
                let event = Event::from(&view);
                inst.tracker.on_event(
                    now,
                    view.header.seq,
                    (event, transport(data.len(), 1)),
                    reorder_max,
                    &mut deliveries,
                );
            }
            Message::Fragment(frag) => {
                if inst.tracker.is_resolved(frag.event_seq) {
                    deliveries.push(Delivery::Stale {
                        seq: frag.event_seq,
                        duplicate: true,
                    });
                } else {
                    // `Some(error)` when this fragment's event is lost to reassembly, with the
                    // decode error to report if there was one.
                    let lost: Option<Option<DecodeError>> = match session.reassembly.push(now, &frag) {
                        Push::Pending => None,
                        Push::Duplicate => {
                            deliveries.push(Delivery::Stale {
                                seq: frag.event_seq,
                                duplicate: true,
                            });
                            None
                        }
                        Push::Complete(bytes) => match Message::decode(&bytes, self.config.max_event_len) {
                            Ok(Message::Event(view)) if view.header.seq == frag.event_seq => {
                                let event = Event::from(&view);
                                let t = transport(bytes.len(), frag.count);
                                inst.tracker.on_event(
                                    now,
                                    frag.event_seq,
                                    (event, t),
                                    reorder_max,
                                    &mut deliveries,
                                );
                                None
                            }
                            Ok(_) => Some(Some(DecodeError::InvalidValue(
                                "reassembled message is not its event",
                            ))),
                            Err(e) => Some(Some(e)),
                        },
                        Push::Invalid(why) => Some(Some(DecodeError::InvalidValue(why))),
                        Push::OverLimit => Some(None),
                    };
                    if let Some(error) = lost {
                        if let Some(e) = error {
                            out.push(malformed(e));
                        }
                        inst.tracker.on_lost_range(
                            now,
                            LossStage::Reassembly,
                            (frag.event_seq, frag.event_seq),
                            reorder_max,
                            &mut deliveries,
                        );
                    }
                }
            }
            Message::Loss(loss) if loss.stage == LossStage::ProducerSend => {
                inst.tracker.on_lost_range(
                    now,
                    loss.stage,
                    (loss.first_seq, loss.last_seq),
                    reorder_max,
                    &mut deliveries,
                );
            }
            Message::Loss(loss) if matches!(loss.stage, LossStage::ProducerQueue | LossStage::Kernel) => {
                // Queue and kernel drops never had sequence numbers: count the increase of the
                // running total, so a lost or repeated report changes nothing.
                let counted = match loss.stage {
                    LossStage::Kernel => &mut inst.kernel_drops,
                    _ => &mut inst.queue_drops,
                };
                count_total(&producer, loss, counted, out);
            }
            Message::Loss(_) => {
                // Transport, reassembly and ingest losses are the server's to detect; a producer
                // claiming one would be counted on top of the gap it describes.
                out.push(malformed(DecodeError::InvalidValue(
                    "loss stage only the server reports",
                )));
            }
            Message::Heartbeat(heartbeat) => {
                inst.tracker.on_high_water(now, heartbeat.last_seq);
                let reported = Loss {
                    stage: LossStage::ProducerQueue,
                    count: 1,
                    first_seq: heartbeat.last_seq.saturating_add(1),
                    last_seq: heartbeat.last_seq.saturating_add(1),
                    total: heartbeat.queue_drops_reported,
                };
                count_total(&producer, reported, &mut inst.queue_drops, out);
                out.push(Output::Heartbeat {
                    producer: producer.clone(),
                    heartbeat,
                });
            }
            Message::Hello(_) | Message::HelloReply(_) => {
                out.push(malformed(DecodeError::InvalidValue(
                    "handshake message in an established session",
                )));
            }
        }
        emit(&producer, &mut deliveries, out);
        self.deliveries = deliveries;
    }

    fn close(&mut self, conn: ConnId, reason: &'static str, out: &mut Vec<Output>) {
        let Some(mut session) = self.sessions.remove(&conn) else {
            return;
        };
        // Pieces of events still in reassembly are left unresolved rather than counted here:
        // the producer reports them as failed sends after it reconnects, or the gap timer
        // counts them, but never both.
        session.reassembly.clear();
        let producer = session.producer;
        if let Some(inst) = self.instances.get_mut(&producer.instance) {
            let mut deliveries = Vec::new();
            inst.tracker.on_close(&mut deliveries);
            inst.live = false;
            emit(&producer, &mut deliveries, out);
        }
        out.push(Output::Disconnected { producer, reason });
    }

    /// When [`Self::poll`] next has work to do: the earliest reassembly expiry or sequence-gap
    /// timeout, or `None` when no timer is running. The shell sleeps until then (or until a
    /// message arrives) instead of ticking on a fixed interval, as quinn-proto's
    /// `poll_timeout` / `handle_timeout`.
    pub fn poll_timeout(&self) -> Option<u64> {
        let reassembly = self.sessions.values().filter_map(|s| s.reassembly.next_expiry());
        let gaps = self
            .instances
            .values()
            .filter(|i| i.live)
            .filter_map(|i| i.tracker.gap_deadline(self.config.gap_timeout_ns));
        reassembly.chain(gaps).min()
    }

    /// Runs the timers: reassembly expiry and sequence gaps that waited too long.
    pub fn poll(&mut self, now: u64, out: &mut Vec<Output>) {
        let reorder_max = self.config.reorder_max;
        let mut expired = Vec::new();
        for session in self.sessions.values_mut() {
            expired.clear();
            session.reassembly.expire(now, &mut expired);
            if let Some(inst) = self.instances.get_mut(&session.producer.instance) {
                let mut deliveries = Vec::new();
                for &seq in &expired {
                    inst.tracker.on_lost_range(
                        now,
                        LossStage::Reassembly,
                        (seq, seq),
                        reorder_max,
                        &mut deliveries,
                    );
                }
                emit(&session.producer, &mut deliveries, out);
            }
        }
        for inst in self.instances.values_mut().filter(|i| i.live) {
            let mut deliveries = Vec::new();
            inst.tracker
                .poll(now, self.config.gap_timeout_ns, &mut deliveries);
            emit(&inst.producer, &mut deliveries, out);
        }
    }

    /// Events held back waiting for missing sequence numbers, over all producers.
    pub fn held_events(&self) -> usize {
        self.instances.values().map(|i| i.tracker.pending_len()).sum()
    }

    /// Events being reassembled, over all connections.
    pub fn reassembling(&self) -> usize {
        self.sessions.values().map(|s| s.reassembly.pending()).sum()
    }
}

/// The most one message may move a producer's sequence or loss totals. A real producer at
/// 10 million events a second takes over a day to open a gap this wide; a claim beyond it is
/// a bug or an attack (a heartbeat saying "I have sent 2^63 events" would otherwise book
/// about 9.2e18 transport losses at once), so it is refused as malformed and counted as such.
pub const MAX_CLAIM: u64 = 1 << 40;

/// Why `msg` claims more than [`MAX_CLAIM`] beyond what this instance has resolved (`next`)
/// or counted (`queue_drops`, `kernel_drops`), if it does.
fn implausible_claim(
    msg: &Message<'_>,
    next: u64,
    queue_drops: u64,
    kernel_drops: u64,
) -> Option<&'static str> {
    let beyond = |value: u64, base: u64| value.saturating_sub(base) > MAX_CLAIM;
    match msg {
        Message::Event(view) if beyond(view.header.seq, next) => {
            Some("event sequence number jumps more than 2^40 ahead")
        }
        Message::Fragment(frag) if beyond(frag.event_seq, next) => {
            Some("fragment sequence number jumps more than 2^40 ahead")
        }
        Message::Loss(loss) if loss.stage == LossStage::ProducerSend && beyond(loss.last_seq, next) => {
            Some("send loss range ends more than 2^40 ahead")
        }
        Message::Loss(loss) if loss.stage == LossStage::ProducerQueue && beyond(loss.total, queue_drops) => {
            Some("queue loss total rises by more than 2^40 at once")
        }
        Message::Loss(loss) if loss.stage == LossStage::Kernel && beyond(loss.total, kernel_drops) => {
            Some("kernel loss total rises by more than 2^40 at once")
        }
        Message::Heartbeat(hb) if beyond(hb.last_seq, next) => {
            Some("heartbeat sequence number jumps more than 2^40 ahead")
        }
        Message::Heartbeat(hb) if beyond(hb.queue_drops_reported, queue_drops) => {
            Some("heartbeat queue loss total rises by more than 2^40 at once")
        }
        _ => None,
    }
}

/// Emits the part of a running loss total not yet counted.
fn count_total(producer: &Arc<ProducerInfo>, loss: Loss, counted: &mut u64, out: &mut Vec<Output>) {
    if loss.total <= *counted {
        return;
    }
    let count = loss.total - *counted;
    *counted = loss.total;
    out.push(Output::Loss {
        producer: producer.clone(),
        loss: Loss { count, ..loss },
    });
}

fn emit(
    producer: &Arc<ProducerInfo>,
    deliveries: &mut Vec<Delivery<(Event, TransportInfo)>>,
    out: &mut Vec<Output>,
) {
    for d in deliveries.drain(..) {
        out.push(match d {
            Delivery::Event((event, transport)) => Output::Event {
                producer: producer.clone(),
                event,
                transport,
            },
            Delivery::Lost { stage, first, last } => Output::Loss {
                producer: producer.clone(),
                loss: Loss {
                    stage,
                    count: last - first + 1,
                    first_seq: first,
                    last_seq: last,
                    total: last - first + 1,
                },
            },
            Delivery::Stale { seq, duplicate } => Output::Stale {
                producer: producer.clone(),
                seq,
                duplicate,
            },
        });
    }
}
