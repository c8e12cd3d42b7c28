//! Records the ingest task drops without ids while the database cannot write and the ids it
//! reserved are used up.
//!
//! An id past the committed reservation could be given to another event after a crash, so
//! such a record gets none; waiting for the writer instead would fill the ingest channel and
//! lose events as `server_ingest`, outside the `store` stage. So each producer event that
//! arrives then is counted as `store` loss at once (the caller moves it in `/stats`), and what
//! was dropped is kept here, per producer and loss stage, as a range and an exact count. Once
//! ids can be given again it comes back as `loss` records, the next events of the stream: one
//! of stage `store` for the producer's events, and one per stage for the `loss` records that
//! were dropped (their counts are in `/stats` already), and the server's own `publish` loss
//! records likewise. Records of connects and disconnects are only counted
//! (`store.durable.lost`). No id is used for any of it until then, so ids stay
//! dense and none is ever published twice.

use std::collections::BTreeMap;
use std::sync::Arc;

use lpcmon_protocol::message::{Loss, LossStage};
use lpcmon_protocol::server::{Output, ProducerInfo};

/// What was dropped of one producer's records of one loss stage.
#[derive(Debug)]
struct Dropped {
    /// `None` for the server's own `publish` loss.
    producer: Option<Arc<ProducerInfo>>,
    count: u64,
    first_seq: u64,
    last_seq: u64,
}

/// A `loss` record to store: whose (`None` for the server's own `publish` loss) and what.
pub(crate) type Report = (Option<Arc<ProducerInfo>>, Loss);

/// The records dropped without ids, until they are reported.
#[derive(Debug, Default)]
pub(crate) struct Shed {
    unreported: BTreeMap<(Option<[u8; 16]>, LossStage), Dropped>,
    /// Records dropped since the last hand-over to the writer (for `store.durable.lost`).
    unsaved: u64,
    /// Records dropped since ids could last be given (for the log).
    episode: u64,
}

impl Shed {
    /// Drops the record `output` would have stored. Returns whether it is a producer's event,
    /// which the caller counts as that producer's `store` loss.
    pub(crate) fn drop_record(&mut self, output: &Output) -> bool {
        self.unsaved += 1;
        self.episode += 1;
        match output {
            Output::Event { producer, event, .. } => {
                let seq = event.header.seq;
                let loss = (LossStage::Store, 1, seq, seq);
                self.add(Some(producer), loss);
                true
            }
            Output::Loss { producer, loss } => {
                let loss = (loss.stage, loss.count, loss.first_seq, loss.last_seq);
                self.add(Some(producer), loss);
                false
            }
            _ => false,
        }
    }

    /// Drops the record of the server's own `publish` loss of `count` events, ids
    /// `first_id..=last_id`.
    pub(crate) fn drop_publish_loss(&mut self, first_id: u64, last_id: u64, count: u64) {
        self.unsaved += 1;
        self.episode += 1;
        self.add(None, (LossStage::Publish, count, first_id, last_id));
    }

    fn add(
        &mut self,
        producer: Option<&Arc<ProducerInfo>>,
        (stage, count, first, last): (LossStage, u64, u64, u64),
    ) {
        self.unreported
            .entry((producer.map(|p| p.instance), stage))
            .and_modify(|d| {
                d.count += count;
                d.first_seq = d.first_seq.min(first);
                d.last_seq = d.last_seq.max(last);
            })
            .or_insert_with(|| Dropped {
                producer: producer.cloned(),
                count,
                first_seq: first,
                last_seq: last,
            });
    }

    /// Whether this is the first record dropped since ids could last be given.
    pub(crate) fn episode_started(&self) -> bool {
        self.episode == 1
    }

    /// How many `loss` records [`take_reports`](Self::take_reports) would give.
    pub(crate) fn reports(&self) -> usize {
        self.unreported.len()
    }

    /// The `loss` records that describe what was dropped, and how many records were dropped in
    /// all since the last call; ends the episode.
    pub(crate) fn take_reports(&mut self) -> (Vec<Report>, u64) {
        let reports = std::mem::take(&mut self.unreported)
            .into_iter()
            .map(|((_, stage), d)| {
                let loss = Loss {
                    stage,
                    count: d.count,
                    first_seq: d.first_seq,
                    last_seq: d.last_seq,
                    // Not shown in JSON; the stage's running total is in `/stats`.
                    total: 0,
                };
                (d.producer, loss)
            })
            .collect();
        (reports, std::mem::take(&mut self.episode))
    }

    /// Records dropped since the last call, to count in the database's `store` loss.
    pub(crate) fn take_unsaved(&mut self) -> u64 {
        std::mem::take(&mut self.unsaved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lpcmon_protocol::event::{Event, EventHeader, EventKind};
    use lpcmon_protocol::message::ProducerKind;
    use lpcmon_protocol::server::TransportInfo;

    fn producer(instance: u8) -> Arc<ProducerInfo> {
        Arc::new(ProducerInfo::known_only(ProducerKind::Loadgen, [instance; 16]))
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

    #[test]
    fn dropped_records_become_one_loss_report_per_producer_and_stage() {
        let mut shed = Shed::default();
        let a = producer(1);
        let b = producer(2);
        assert!(shed.drop_record(&event(&a, 10)));
        assert!(shed.episode_started());
        assert!(shed.drop_record(&event(&a, 11)));
        assert!(!shed.episode_started());
        assert!(shed.drop_record(&event(&b, 3)));
        let transport = Loss {
            stage: LossStage::Transport,
            count: 4,
            first_seq: 12,
            last_seq: 15,
            total: 0,
        };
        assert!(!shed.drop_record(&Output::Loss {
            producer: a.clone(),
            loss: transport,
        }));
        assert!(!shed.drop_record(&Output::Connected(b.clone())));
        assert!(shed.drop_record(&event(&a, 16)));
        shed.drop_publish_loss(40, 49, 9);
        shed.drop_publish_loss(60, 61, 2);
        assert_eq!(shed.reports(), 4);
        assert_eq!(shed.take_unsaved(), 8);
        assert_eq!(shed.take_unsaved(), 0);
        let (reports, dropped) = shed.take_reports();
        assert_eq!(dropped, 8);
        let got: Vec<_> = reports
            .iter()
            .map(|(p, l)| {
                let whose = p.as_ref().map(|p| p.instance[0]);
                (whose, l.stage, l.count, l.first_seq, l.last_seq)
            })
            .collect();
        assert_eq!(
            got,
            [
                (None, LossStage::Publish, 11, 40, 61),
                (Some(1), LossStage::Transport, 4, 12, 15),
                (Some(1), LossStage::Store, 3, 10, 16),
                (Some(2), LossStage::Store, 1, 3, 3),
            ]
        );
        assert_eq!(shed.reports(), 0);
        assert!(shed.drop_record(&event(&b, 4)));
        assert!(shed.episode_started(), "a new episode after the reports");
    }
}
