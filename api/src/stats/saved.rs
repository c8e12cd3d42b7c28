//! The counters as the durable store keeps them, so they continue after a restart.
//!
//! The ingest task commits a producer's saved counters, and the service-wide totals, in the
//! same transaction as the events they count; on start they are restored before any producer
//! connects. Rates, heartbeats and connection state describe the running process and start
//! afresh.

use std::collections::BTreeMap;
use std::sync::Arc;

use lpcmon_protocol::message::{LossStage, ProducerKind, RefuseReason};
use lpcmon_protocol::server::ProducerInfo;
use serde::{Deserialize, Serialize};

use super::{KindTotals, Stats, kind_map, refused_map, stage_map};
use crate::kind::{Kind, PRODUCER_KINDS};

#[derive(Debug, Serialize, Deserialize)]
struct SavedProducer {
    kind: String,
    os: String,
    os_build: u32,
    version: u8,
    client_pid: u64,
    connected_since_ns: u64,
    connections: u64,
    events: u64,
    bytes: u64,
    last_seq: Option<u64>,
    losses: BTreeMap<String, u64>,
    stale: u64,
    duplicates: u64,
    malformed: u64,
    heartbeats: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedTotals {
    events_by_kind: BTreeMap<String, u64>,
    losses_by_stage: BTreeMap<String, u64>,
    /// (events, bytes, connections) per producer kind.
    by_producer_kind: BTreeMap<String, (u64, u64, u64)>,
    refused: BTreeMap<String, u64>,
    malformed: u64,
    stale: u64,
    duplicates: u64,
    heartbeats: u64,
    encode_errors: u64,
}

/// A saved producer, as [`Stats::restore`] takes it.
pub struct SavedRecord<'a> {
    pub instance: [u8; 16],
    pub instance_hex: &'a str,
    pub counters: &'a str,
}

fn owned(map: BTreeMap<&'static str, u64>) -> BTreeMap<String, u64> {
    map.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// Adds saved values to the counters of known names (`names` in the array's order); a name
/// this build does not know is left out (a counter of a newer lpcmon).
fn add_known(into: &mut [u64], names: impl Iterator<Item = &'static str>, saved: &BTreeMap<String, u64>) {
    for (value, name) in into.iter_mut().zip(names) {
        *value += saved.get(name).copied().unwrap_or(0);
    }
}

fn stage_names() -> impl Iterator<Item = &'static str> {
    LossStage::ALL.into_iter().map(LossStage::name)
}

pub fn producer_kind(name: &str) -> Option<ProducerKind> {
    PRODUCER_KINDS.into_iter().find(|k| k.name() == name)
}

impl Stats {
    /// One producer's counters as JSON, if the table has it.
    pub fn save_producer(&self, instance: &[u8; 16]) -> Option<String> {
        let p = self.producers.get(instance)?;
        serde_json::to_string(&SavedProducer {
            kind: p.info.kind.name().to_owned(),
            os: p.info.os.clone(),
            os_build: p.info.os_build,
            version: p.info.version,
            client_pid: p.info.client_pid,
            connected_since_ns: p.connected_since_ns,
            connections: p.connections,
            events: p.events,
            bytes: p.bytes,
            last_seq: p.last_seq,
            losses: owned(stage_map(&p.losses)),
            stale: p.stale,
            duplicates: p.duplicates,
            malformed: p.malformed,
            heartbeats: p.heartbeats,
        })
        .ok()
    }

    pub fn save_totals(&self) -> String {
        serde_json::to_string(&SavedTotals {
            events_by_kind: owned(kind_map(&self.events_by_kind)),
            losses_by_stage: owned(stage_map(&self.losses_by_stage)),
            by_producer_kind: PRODUCER_KINDS
                .into_iter()
                .zip(&self.by_producer_kind)
                .map(|(k, t)| (k.name().to_owned(), (t.events, t.bytes, t.connections)))
                .collect(),
            refused: owned(refused_map(&self.refused)),
            malformed: self.malformed,
            stale: self.stale,
            duplicates: self.duplicates,
            heartbeats: self.heartbeats,
            encode_errors: self.encode_errors,
        })
        .unwrap_or_default()
    }

    /// Puts back what a previous run saved. Restored producers show as disconnected until they
    /// reconnect.
    pub fn restore<'a>(
        &mut self,
        producers: impl IntoIterator<Item = SavedRecord<'a>>,
        totals: Option<&str>,
    ) -> Result<(), serde_json::Error> {
        if let Some(totals) = totals {
            let t: SavedTotals = serde_json::from_str(totals)?;
            add_known(
                &mut self.events_by_kind,
                Kind::all().map(Kind::name),
                &t.events_by_kind,
            );
            add_known(&mut self.losses_by_stage, stage_names(), &t.losses_by_stage);
            add_known(
                &mut self.refused,
                RefuseReason::ALL.into_iter().map(RefuseReason::name),
                &t.refused,
            );
            for (kind, totals) in PRODUCER_KINDS.into_iter().zip(self.by_producer_kind.iter_mut()) {
                if let Some(&(events, bytes, connections)) = t.by_producer_kind.get(kind.name()) {
                    *totals = KindTotals {
                        events: totals.events + events,
                        bytes: totals.bytes + bytes,
                        connections: totals.connections + connections,
                        connected: 0,
                    };
                }
            }
            self.malformed += t.malformed;
            self.stale += t.stale;
            self.duplicates += t.duplicates;
            self.heartbeats += t.heartbeats;
            self.encode_errors += t.encode_errors;
        }
        for record in producers {
            let saved: SavedProducer = serde_json::from_str(record.counters)?;
            let Some(kind) = producer_kind(&saved.kind) else {
                continue;
            };
            let info = Arc::new(ProducerInfo {
                conn: 0,
                kind,
                instance: record.instance,
                instance_hex: record.instance_hex.to_owned(),
                version: saved.version,
                os: saved.os,
                os_build: saved.os_build,
                client_pid: saved.client_pid,
                max_message: 0,
                connected_at: 0,
            });
            let p = self.producer(&info, saved.connected_since_ns);
            p.connected = false;
            p.disconnect_reason = Some("server restart");
            p.connections = saved.connections;
            p.events = saved.events;
            p.bytes = saved.bytes;
            p.last_seq = saved.last_seq;
            add_known(&mut p.losses, stage_names(), &saved.losses);
            p.stale = saved.stale;
            p.duplicates = saved.duplicates;
            p.malformed = saved.malformed;
            p.heartbeats = saved.heartbeats;
        }
        Ok(())
    }

    /// Events of a producer that the database could not write: they move from stored to the
    /// `store` loss stage, so produced = stored + losses still holds.
    pub fn on_store_loss(&mut self, instance: &[u8; 16], count: u64, second: u64) {
        let stage = LossStage::Store.index();
        if let Some(p) = self.producers.get_mut(instance) {
            p.events = p.events.saturating_sub(count);
            p.losses[stage] += count;
            let totals = &mut self.by_producer_kind[p.info.kind.index()];
            totals.events = totals.events.saturating_sub(count);
        }
        self.losses_by_stage[stage] += count;
        self.lost_rate.add(second, count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::Kind;
    use lpcmon_protocol::message::Loss;

    #[test]
    fn saved_counters_come_back() {
        let mut stats = Stats::new(8);
        let info = Arc::new(ProducerInfo {
            conn: 1,
            kind: ProducerKind::Loadgen,
            instance: [7; 16],
            instance_hex: "07".repeat(16),
            version: 1,
            os: "linux".into(),
            os_build: 0,
            client_pid: 9,
            max_message: 1024,
            connected_at: 0,
        });
        stats.on_connect(&info, 5);
        stats.on_event(&info, 1, 100, 6);
        stats.on_stored(Kind::Loss, 0);
        let loss = Loss {
            stage: LossStage::Transport,
            count: 3,
            first_seq: 2,
            last_seq: 4,
            total: 3,
        };
        stats.on_loss(&info, &loss, 0, 7);
        stats.on_event(&info, 2, 100, 6);
        stats.on_event(&info, 3, 100, 6);
        stats.on_store_loss(&[7; 16], 2, 0);
        let producer = stats.save_producer(&[7; 16]).unwrap();
        let totals = stats.save_totals();

        let mut again = Stats::new(8);
        again
            .restore(
                [SavedRecord {
                    instance: [7; 16],
                    instance_hex: &"07".repeat(16),
                    counters: &producer,
                }],
                Some(&totals),
            )
            .unwrap();
        let before = serde_json::to_value(stats.report(0)).unwrap();
        let after = serde_json::to_value(again.report(0)).unwrap();
        assert_eq!(before["losses_by_stage"], after["losses_by_stage"]);
        assert_eq!(before["events_by_kind"], after["events_by_kind"]);
        assert_eq!(after["losses_by_stage"]["store"], 2);
        assert_eq!(
            before["producers"][0]["counters"],
            after["producers"][0]["counters"]
        );
        assert_eq!(after["producers"][0]["connected"], false);
        assert_eq!(after["by_producer_kind"]["loadgen"]["events"], 1);
    }
}
