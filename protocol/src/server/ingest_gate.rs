//! The gate between the server's outputs and the bounded ingest channel: what happens when the
//! channel is full.
//!
//! The rest of lpcmon (store, stream, stats) reads the server's [`Output`]s from a bounded
//! channel. The port's receive threads must never wait for it, so every hand-over is a
//! non-blocking `try_send`, and this gate decides what a refusal means:
//!
//! - An **event** that does not fit is dropped and counted as `server_ingest` loss for its
//!   producer instance. The loss is delivered as soon as there is room, and ahead of that
//!   producer's later events, so the store sees the gap where it happened: while a producer has
//!   loss pending, its later events are dropped and added to the same loss.
//! - A **control output** (connect, disconnect, loss, heartbeat, refusal, malformed notice) is
//!   never dropped for lack of room: it waits in a backlog and is retried first on every call.
//!   Events are held back while the backlog is not empty, so outputs keep their order.
//! - The backlog is bounded. Past its limit a loss is merged into one already waiting for the
//!   same producer and stage, so loss counts survive any backlog; any other notice is dropped and
//!   returned to the caller to log (it carries no event, so no event goes uncounted).
//!
//! Produced = forwarded + counted loss, exactly, for any pattern of full and free channel: the
//! unit tests and a proptest below hold the gate to that.
//!
//! The gate owns no channel and no clock. The caller passes its channel in as an [`IngestSink`]
//! on each call, which is how the same code runs behind a tokio channel in `alpc-server` and
//! behind a plain vector in the tests.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::sync::Arc;
use alloc::vec::Vec;

use super::session::{Output, ProducerInfo};
use crate::message::{Loss, LossStage};

/// The receiving end of the gate: a bounded channel's non-blocking send.
pub trait IngestSink {
    /// Hands `output` over, or gives it back when there is no room.
    fn try_send(&mut self, output: Output) -> Result<(), Output>;
}

impl<F: FnMut(Output) -> Result<(), Output>> IngestSink for F {
    fn try_send(&mut self, output: Output) -> Result<(), Output> {
        self(output)
    }
}

/// Control outputs held while the channel is full, by default.
pub const DEFAULT_BACKLOG_LIMIT: usize = 4096;

/// Server-ingest loss not yet delivered, for one producer instance.
#[derive(Debug)]
struct PendingLoss {
    producer: Arc<ProducerInfo>,
    count: u64,
    first_seq: u64,
    last_seq: u64,
}

impl PendingLoss {
    fn output(&self) -> Output {
        Output::Loss {
            producer: self.producer.clone(),
            loss: Loss {
                stage: LossStage::ServerIngest,
                count: self.count,
                first_seq: self.first_seq,
                last_seq: self.last_seq,
                // Server-ingest loss never travels on the wire, so no running total is
                // reconciled against it: each report stands for exactly its own count.
                total: self.count,
            },
        }
    }
}

/// What one call did that the caller should know about.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GateReport {
    /// Events dropped for lack of room and counted as `server_ingest` loss.
    pub events_dropped: u64,
    /// Control notices dropped because the backlog was at its limit (never a loss, never an
    /// event). The caller logs them.
    pub notices_dropped: Vec<Output>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct IngestGate {
    backlog: VecDeque<Output>,
    backlog_limit: usize,
    pending_loss: BTreeMap<[u8; 16], PendingLoss>,
    events_dropped: u64,
}

impl Default for IngestGate {
    fn default() -> Self {
        IngestGate::new(DEFAULT_BACKLOG_LIMIT)
    }
}

impl IngestGate {
    /// A gate holding at most `backlog_limit` control outputs (at least one).
    pub fn new(backlog_limit: usize) -> Self {
        IngestGate {
            backlog: VecDeque::new(),
            backlog_limit: backlog_limit.max(1),
            pending_loss: BTreeMap::new(),
            events_dropped: 0,
        }
    }

    /// Events dropped at this gate since it was made.
    pub fn events_dropped(&self) -> u64 {
        self.events_dropped
    }

    /// Whether nothing waits: no held control output and no undelivered loss.
    pub fn is_idle(&self) -> bool {
        self.backlog.is_empty() && self.pending_loss.is_empty()
    }

    /// Control outputs waiting for room.
    pub fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    /// Delivers what waits, then every output in `outputs` (which is left empty), in order.
    pub fn forward(&mut self, outputs: &mut Vec<Output>, sink: &mut impl IngestSink) -> GateReport {
        let mut report = GateReport::default();
        self.flush(sink);
        for output in outputs.drain(..) {
            if let Output::Event { producer, event, .. } = &output {
                let (producer, seq) = (producer.clone(), event.header.seq);
                let held = !self.backlog.is_empty() || self.pending_loss.contains_key(&producer.instance);
                if held || sink.try_send(output).is_err() {
                    self.count_dropped(producer, seq);
                    report.events_dropped += 1;
                }
            } else if !self.backlog.is_empty() {
                self.hold(output, &mut report);
            } else if let Err(output) = sink.try_send(output) {
                self.hold(output, &mut report);
            }
        }
        report
    }

    /// Delivers held control outputs, then pending losses, while the sink has room.
    pub fn flush(&mut self, sink: &mut impl IngestSink) {
        while let Some(output) = self.backlog.pop_front() {
            if let Err(output) = sink.try_send(output) {
                self.backlog.push_front(output);
                return;
            }
        }
        while let Some(entry) = self.pending_loss.first_entry() {
            if sink.try_send(entry.get().output()).is_err() {
                return;
            }
            entry.remove();
        }
    }

    fn count_dropped(&mut self, producer: Arc<ProducerInfo>, seq: u64) {
        self.events_dropped += 1;
        self.pending_loss
            .entry(producer.instance)
            .and_modify(|p| {
                p.count += 1;
                p.last_seq = seq;
            })
            .or_insert(PendingLoss {
                producer,
                count: 1,
                first_seq: seq,
                last_seq: seq,
            });
    }

    fn hold(&mut self, output: Output, report: &mut GateReport) {
        if self.backlog.len() < self.backlog_limit {
            self.backlog.push_back(output);
            return;
        }
        if let Output::Loss { producer, loss } = &output {
            let waiting = self.backlog.iter_mut().find_map(|held| match held {
                Output::Loss { producer: p, loss: l }
                    if p.instance == producer.instance && l.stage == loss.stage =>
                {
                    Some(l)
                }
                _ => None,
            });
            match waiting {
                Some(l) => {
                    l.count += loss.count;
                    l.first_seq = l.first_seq.min(loss.first_seq);
                    l.last_seq = l.last_seq.max(loss.last_seq);
                    l.total = l.total.max(loss.total);
                }
                // No loss of that kind is waiting: a loss is never dropped, so the backlog
                // goes one past its limit. It can do so at most once per producer and stage.
                None => self.backlog.push_back(output),
            }
        } else {
            report.notices_dropped.push(output);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, EventHeader, EventKind};
    use crate::message::ProducerKind;
    use crate::server::TransportInfo;
    use alloc::string::String;
    use alloc::vec;
    use proptest::prelude::*;

    /// A bounded channel with a switch: `room` outputs fit until the test drains it.
    #[derive(Default)]
    struct Channel {
        room: usize,
        delivered: Vec<Output>,
    }

    impl IngestSink for Channel {
        fn try_send(&mut self, output: Output) -> Result<(), Output> {
            if self.room == 0 {
                return Err(output);
            }
            self.room -= 1;
            self.delivered.push(output);
            Ok(())
        }
    }

    fn producer(id: u8) -> Arc<ProducerInfo> {
        Arc::new(ProducerInfo {
            conn: u64::from(id),
            kind: ProducerKind::Loadgen,
            instance: [id; 16],
            instance_hex: String::new(),
            version: 1,
            os: String::new(),
            os_build: 0,
            client_pid: 1,
            max_message: 1024,
            connected_at: 0,
        })
    }

    fn event(p: &Arc<ProducerInfo>, seq: u64) -> Output {
        Output::Event {
            producer: p.clone(),
            event: Event {
                header: EventHeader {
                    seq,
                    kind: EventKind::ProcessStart,
                    flags: 0,
                    time_ns: 0,
                    pid: 1,
                    ppid: 0,
                    tid: 1,
                },
                fields: Vec::new(),
            },
            transport: TransportInfo {
                api: "unix",
                message_id: 0,
                client_pid: 1,
                bytes: 0,
                fragments: 1,
            },
        }
    }

    fn connected(p: &Arc<ProducerInfo>) -> Output {
        Output::Connected(p.clone())
    }

    /// Events delivered plus server-ingest loss delivered, for one producer.
    fn accounted(delivered: &[Output], instance: [u8; 16]) -> (Vec<u64>, u64) {
        let mut seqs = Vec::new();
        let mut lost = 0;
        for output in delivered {
            match output {
                Output::Event { producer, event, .. } if producer.instance == instance => {
                    seqs.push(event.header.seq)
                }
                Output::Loss { producer, loss }
                    if producer.instance == instance && loss.stage == LossStage::ServerIngest =>
                {
                    lost += loss.count
                }
                _ => {}
            }
        }
        (seqs, lost)
    }

    #[test]
    fn room_forwards_everything_in_order() {
        let p = producer(1);
        let mut gate = IngestGate::default();
        let mut channel = Channel {
            room: 10,
            ..Default::default()
        };
        let report = gate.forward(&mut vec![connected(&p), event(&p, 1), event(&p, 2)], &mut channel);
        assert_eq!(report, GateReport::default());
        assert_eq!(channel.delivered, vec![connected(&p), event(&p, 1), event(&p, 2)]);
        assert!(gate.is_idle());
    }

    #[test]
    fn a_full_channel_drops_events_and_reports_them_as_one_loss_before_later_events() {
        let p = producer(1);
        let mut gate = IngestGate::default();
        let mut channel = Channel {
            room: 1,
            ..Default::default()
        };
        let report = gate.forward(&mut vec![event(&p, 1), event(&p, 2), event(&p, 3)], &mut channel);
        assert_eq!(report.events_dropped, 2);
        assert_eq!(gate.events_dropped(), 2);
        assert!(!gate.is_idle());

        // Room again: the loss goes first, then the next event.
        channel.room = 10;
        gate.forward(&mut vec![event(&p, 4)], &mut channel);
        let Output::Loss { loss, .. } = &channel.delivered[1] else {
            panic!("expected the loss second, got {:?}", channel.delivered);
        };
        assert_eq!(
            *loss,
            Loss {
                stage: LossStage::ServerIngest,
                count: 2,
                first_seq: 2,
                last_seq: 3,
                total: 2
            }
        );
        assert_eq!(channel.delivered[2], event(&p, 4));
        assert!(gate.is_idle());
    }

    #[test]
    fn pending_loss_holds_back_only_its_own_producer() {
        let (a, b) = (producer(1), producer(2));
        let mut gate = IngestGate::default();
        let mut channel = Channel::default();
        gate.forward(&mut vec![event(&a, 1)], &mut channel);
        // Room for exactly one output: A's loss takes it, so A's event 2 is dropped too; B's
        // event finds no room either. With more room B's next event passes.
        channel.room = 1;
        gate.forward(&mut vec![event(&a, 2), event(&b, 1)], &mut channel);
        channel.room = 5;
        gate.forward(&mut vec![event(&b, 2)], &mut channel);
        let (a_seqs, a_lost) = accounted(&channel.delivered, a.instance);
        let (b_seqs, b_lost) = accounted(&channel.delivered, b.instance);
        assert_eq!(
            (a_seqs.len() as u64 + a_lost, b_seqs.len() as u64 + b_lost),
            (2, 2)
        );
        assert_eq!(b_seqs, vec![2]);
        assert!(gate.is_idle());
    }

    #[test]
    fn control_outputs_wait_and_keep_their_order_ahead_of_events() {
        let p = producer(1);
        let mut gate = IngestGate::default();
        let mut channel = Channel::default();
        let disconnected = Output::Disconnected {
            producer: p.clone(),
            reason: "closed",
        };
        let report = gate.forward(&mut vec![connected(&p), disconnected.clone()], &mut channel);
        assert_eq!(report, GateReport::default());
        assert_eq!(gate.backlog_len(), 2);
        // One slot: the connect notice goes; the event behind the held disconnect is dropped,
        // not sent ahead of it.
        channel.room = 1;
        let report = gate.forward(&mut vec![event(&p, 1)], &mut channel);
        assert_eq!(report.events_dropped, 1);
        channel.room = 10;
        gate.flush(&mut channel);
        assert_eq!(channel.delivered[..2], [connected(&p), disconnected]);
        assert!(matches!(channel.delivered[2], Output::Loss { .. }));
        assert!(gate.is_idle());
    }

    #[test]
    fn a_full_backlog_merges_losses_and_drops_only_notices() {
        let p = producer(1);
        let mut gate = IngestGate::new(1);
        let mut channel = Channel::default();
        let loss = |count, first_seq, last_seq, total| Output::Loss {
            producer: p.clone(),
            loss: Loss {
                stage: LossStage::ProducerQueue,
                count,
                first_seq,
                last_seq,
                total,
            },
        };
        let report = gate.forward(
            &mut vec![
                connected(&p),
                loss(3, 10, 12, 3),
                loss(2, 20, 21, 5),
                connected(&p),
            ],
            &mut channel,
        );
        // connect held (limit 1); the first loss goes one past the limit; the second merges
        // into it; the second connect notice is dropped and returned.
        assert_eq!(report.notices_dropped, vec![connected(&p)]);
        assert_eq!(gate.backlog_len(), 2);
        channel.room = 10;
        gate.flush(&mut channel);
        assert_eq!(channel.delivered, vec![connected(&p), loss(5, 10, 21, 5)]);
    }

    #[test]
    fn closures_are_sinks() {
        let p = producer(1);
        let mut gate = IngestGate::default();
        let mut seen = Vec::new();
        let mut sink = |o: Output| {
            seen.push(o);
            Ok(())
        };
        gate.forward(&mut vec![event(&p, 1)], &mut sink);
        assert_eq!(seen, vec![event(&p, 1)]);
    }

    proptest! {
        /// For any interleaving of batches and channel room, every event produced is either
        /// delivered or inside a delivered server-ingest loss, exactly once, and each
        /// producer's delivered events stay in order.
        #[test]
        fn produced_equals_forwarded_plus_counted_loss(
            steps in proptest::collection::vec((0usize..4, 0usize..6, 0u8..3, any::<bool>()), 1..60),
            backlog_limit in 1usize..4,
        ) {
            let producers = [producer(1), producer(2), producer(3)];
            let mut next_seq = [1u64; 3];
            let mut gate = IngestGate::new(backlog_limit);
            let mut channel = Channel::default();
            for (room, batch, who, with_notice) in steps {
                channel.room = room;
                let mut outputs = Vec::new();
                if with_notice {
                    outputs.push(connected(&producers[usize::from(who)]));
                }
                for i in 0..batch {
                    let k = (usize::from(who) + i) % 3;
                    outputs.push(event(&producers[k], next_seq[k]));
                    next_seq[k] += 1;
                }
                gate.forward(&mut outputs, &mut channel);
                prop_assert!(outputs.is_empty());
            }
            channel.room = usize::MAX;
            gate.flush(&mut channel);
            prop_assert!(gate.is_idle());
            let mut dropped = 0;
            for (k, p) in producers.iter().enumerate() {
                let (seqs, lost) = accounted(&channel.delivered, p.instance);
                prop_assert_eq!(seqs.len() as u64 + lost, next_seq[k] - 1);
                prop_assert!(seqs.windows(2).all(|w| w[0] < w[1]));
                dropped += lost;
            }
            prop_assert_eq!(dropped, gate.events_dropped());
        }
    }
}
