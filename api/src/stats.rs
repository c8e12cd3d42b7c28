//! Counters the ingest task keeps: per producer, by kind, by loss stage, refusals, rates.
//!
//! Only the ingest task writes them; `/stats` and `/metrics` render the same [`Counters`]
//! report, so the two never disagree. Every map in the report is zero-filled with all known
//! keys so the shape of the report does not depend on what has happened yet.
//!
//! Counting runs once or twice per ingested event, so the counters themselves are arrays
//! indexed by kind, stage and reason (`index()`); the name-keyed maps are built only when a
//! report is asked for.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use lpcmon_protocol::message::{Heartbeat, Loss, LossStage, RefuseReason};
use lpcmon_protocol::server::ProducerInfo;
use serde::Serialize;

use crate::kind::{Kind, PRODUCER_KINDS};
use crate::timefmt::rfc3339_ns;

mod saved;
pub use saved::{SavedRecord, producer_kind};

/// Counters by loss stage, indexed by `LossStage::index`.
type StageCounts = [u64; LossStage::ALL.len()];
/// Counters by stored-event kind, indexed by `Kind::index`.
type KindCounts = [u64; Kind::COUNT];
/// Refusals by reason, indexed by `RefuseReason::index`.
type RefusedCounts = [u64; RefuseReason::ALL.len()];
/// Totals by producer kind, indexed by `ProducerKind::index`.
type ProducerKindTotals = [KindTotals; PRODUCER_KINDS.len()];

/// Seconds over which `/stats` averages its rates.
pub const RATE_WINDOW_SECONDS: u64 = 10;

/// Every counter saturates at `u64::MAX` rather than wrapping: counts and byte sizes come from
/// producers, and a hostile one could otherwise claim 2^63 twice and bring a total back to 0.
fn saturating_add(counter: &mut u64, n: u64) {
    *counter = counter.saturating_add(n);
}

/// A counter array as the report shows it: one entry per name, zeros included.
fn named<T: Copy>(names: impl Iterator<Item = &'static str>, values: &[T]) -> BTreeMap<&'static str, T> {
    names.zip(values.iter().copied()).collect()
}

fn stage_map(counts: &StageCounts) -> BTreeMap<&'static str, u64> {
    named(LossStage::ALL.into_iter().map(LossStage::name), counts)
}

fn kind_map(counts: &KindCounts) -> BTreeMap<&'static str, u64> {
    named(Kind::all().map(Kind::name), counts)
}

fn refused_map(counts: &RefusedCounts) -> BTreeMap<&'static str, u64> {
    named(RefuseReason::ALL.into_iter().map(RefuseReason::name), counts)
}

fn producer_kind_map(totals: &ProducerKindTotals) -> BTreeMap<&'static str, KindTotals> {
    named(PRODUCER_KINDS.into_iter().map(|k| k.name()), totals)
}

/// Per-second counts over the last [`RATE_WINDOW_SECONDS`] whole seconds, in a fixed ring.
#[derive(Debug, Default)]
struct RateWindow {
    /// (second since start, count) — a slot is reused when its second comes round again.
    slots: [(u64, u64); RATE_WINDOW_SECONDS as usize + 1],
}

impl RateWindow {
    fn add(&mut self, second: u64, n: u64) {
        let slot = &mut self.slots[(second % self.slots.len() as u64) as usize];
        if slot.0 != second {
            *slot = (second, 0);
        }
        slot.1 = slot.1.saturating_add(n);
    }

    /// The mean over the whole seconds before `now_second` (fewer right after start).
    fn per_second(&self, now_second: u64) -> f64 {
        let window = now_second.min(RATE_WINDOW_SECONDS);
        if window == 0 {
            return 0.0;
        }
        let sum: u64 = self
            .slots
            .iter()
            .filter(|(s, _)| *s < now_second && *s >= now_second - window)
            .fold(0u64, |sum, (_, n)| sum.saturating_add(*n));
        sum as f64 / window as f64
    }
}

#[derive(Debug)]
struct ProducerStats {
    info: Arc<ProducerInfo>,
    connected: bool,
    connected_since_ns: u64,
    disconnected_at_ns: Option<u64>,
    disconnect_reason: Option<&'static str>,
    connections: u64,
    events: u64,
    bytes: u64,
    last_seq: Option<u64>,
    losses: StageCounts,
    stale: u64,
    duplicates: u64,
    malformed: u64,
    heartbeats: u64,
    last_heartbeat: Option<(Heartbeat, u64)>,
    /// Ingest order of the last thing heard, to forget the longest-idle producer first.
    last_active: u64,
}

/// Totals for one producer kind; the per-kind metric labels come from these.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct KindTotals {
    pub events: u64,
    pub bytes: u64,
    pub connections: u64,
    pub connected: u64,
}

#[derive(Debug, Serialize)]
pub struct HeartbeatReport {
    pub produced: u64,
    pub queue_drops_reported: u64,
    pub send_failed: u64,
    pub last_seq: u64,
    pub received: String,
}

#[derive(Debug, Serialize)]
pub struct ProducerCounters {
    pub events: u64,
    pub bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<u64>,
    pub losses: BTreeMap<&'static str, u64>,
    pub stale: u64,
    pub duplicates: u64,
    pub malformed: u64,
    pub heartbeats: u64,
}

#[derive(Debug, Serialize)]
pub struct ProducerReport {
    pub kind: &'static str,
    pub instance: String,
    pub os: String,
    pub os_build: u32,
    pub protocol_version: u8,
    pub client_pid: u64,
    pub connected: bool,
    pub connected_since: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disconnected_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disconnect_reason: Option<&'static str>,
    pub connections: u64,
    pub counters: ProducerCounters,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<HeartbeatReport>,
}

#[derive(Debug, Serialize)]
pub struct Rates {
    pub window_seconds: u64,
    pub events_per_second: f64,
    pub lost_per_second: f64,
}

/// A snapshot of every counter.
#[derive(Debug, Serialize)]
pub struct Counters {
    pub producers: Vec<ProducerReport>,
    pub events_by_kind: BTreeMap<&'static str, u64>,
    pub losses_by_stage: BTreeMap<&'static str, u64>,
    pub by_producer_kind: BTreeMap<&'static str, KindTotals>,
    pub rates: Rates,
    pub refused_connections: BTreeMap<&'static str, u64>,
    pub malformed_messages: u64,
    pub stale_messages: u64,
    pub duplicate_messages: u64,
    pub heartbeats: u64,
    /// Events that could not be turned into JSON. Should stay 0; see `ingest`.
    pub encode_errors: u64,
}

#[derive(Debug)]
pub struct Stats {
    max_producers: usize,
    producers: HashMap<[u8; 16], ProducerStats>,
    ticks: u64,
    events_by_kind: KindCounts,
    losses_by_stage: StageCounts,
    by_producer_kind: ProducerKindTotals,
    refused: RefusedCounts,
    malformed: u64,
    stale: u64,
    duplicates: u64,
    heartbeats: u64,
    encode_errors: u64,
    stored_rate: RateWindow,
    lost_rate: RateWindow,
}

impl Stats {
    pub fn new(max_producers: usize) -> Self {
        Stats {
            max_producers: max_producers.max(1),
            producers: HashMap::new(),
            ticks: 0,
            events_by_kind: [0; Kind::COUNT],
            losses_by_stage: [0; LossStage::ALL.len()],
            by_producer_kind: [KindTotals::default(); PRODUCER_KINDS.len()],
            refused: [0; RefuseReason::ALL.len()],
            malformed: 0,
            stale: 0,
            duplicates: 0,
            heartbeats: 0,
            encode_errors: 0,
            stored_rate: RateWindow::default(),
            lost_rate: RateWindow::default(),
        }
    }

    /// The producer's entry, created on first sight; forgets the longest-idle (preferably
    /// disconnected) producer when the table is full, so it stays bounded.
    fn producer(&mut self, info: &Arc<ProducerInfo>, now_ns: u64) -> &mut ProducerStats {
        saturating_add(&mut self.ticks, 1);
        let tick = self.ticks;
        if !self.producers.contains_key(&info.instance) && self.producers.len() >= self.max_producers {
            let victim = self
                .producers
                .iter()
                .min_by_key(|(_, p)| (p.connected, p.last_active))
                .map(|(k, _)| *k);
            if let Some(k) = victim {
                self.producers.remove(&k);
            }
        }
        let p = self
            .producers
            .entry(info.instance)
            .or_insert_with(|| ProducerStats {
                info: info.clone(),
                connected: false,
                connected_since_ns: now_ns,
                disconnected_at_ns: None,
                disconnect_reason: None,
                connections: 0,
                events: 0,
                bytes: 0,
                last_seq: None,
                losses: [0; LossStage::ALL.len()],
                stale: 0,
                duplicates: 0,
                malformed: 0,
                heartbeats: 0,
                last_heartbeat: None,
                last_active: tick,
            });
        p.last_active = tick;
        p
    }

    /// Counts a stored event of `kind`; `second` is seconds since start, for the rate.
    pub fn on_stored(&mut self, kind: Kind, second: u64) {
        saturating_add(&mut self.events_by_kind[kind.index()], 1);
        self.stored_rate.add(second, 1);
    }

    pub fn on_event(&mut self, info: &Arc<ProducerInfo>, seq: u64, bytes: usize, now_ns: u64) {
        let p = self.producer(info, now_ns);
        saturating_add(&mut p.events, 1);
        saturating_add(&mut p.bytes, bytes as u64);
        p.last_seq = Some(p.last_seq.map_or(seq, |s| s.max(seq)));
        let totals = &mut self.by_producer_kind[info.kind.index()];
        saturating_add(&mut totals.events, 1);
        saturating_add(&mut totals.bytes, bytes as u64);
    }

    pub fn on_loss(&mut self, info: &Arc<ProducerInfo>, loss: &Loss, second: u64, now_ns: u64) {
        let p = self.producer(info, now_ns);
        saturating_add(&mut p.losses[loss.stage.index()], loss.count);
        saturating_add(&mut self.losses_by_stage[loss.stage.index()], loss.count);
        self.lost_rate.add(second, loss.count);
    }

    /// A loss that is the server's own, not a producer's (the fleet's `publish` stage).
    pub fn on_server_loss(&mut self, stage: LossStage, count: u64, second: u64) {
        saturating_add(&mut self.losses_by_stage[stage.index()], count);
        self.lost_rate.add(second, count);
    }

    pub fn on_connect(&mut self, info: &Arc<ProducerInfo>, now_ns: u64) {
        let p = self.producer(info, now_ns);
        // A reconnect of the same instance continues its counters under the new session.
        p.info = info.clone();
        p.connected = true;
        p.connected_since_ns = now_ns;
        p.disconnected_at_ns = None;
        p.disconnect_reason = None;
        saturating_add(&mut p.connections, 1);
        let totals = &mut self.by_producer_kind[info.kind.index()];
        saturating_add(&mut totals.connections, 1);
    }

    pub fn on_disconnect(&mut self, info: &Arc<ProducerInfo>, reason: &'static str, now_ns: u64) {
        let p = self.producer(info, now_ns);
        p.connected = false;
        p.disconnected_at_ns = Some(now_ns);
        p.disconnect_reason = Some(reason);
    }

    pub fn on_heartbeat(&mut self, info: &Arc<ProducerInfo>, heartbeat: &Heartbeat, now_ns: u64) {
        let p = self.producer(info, now_ns);
        saturating_add(&mut p.heartbeats, 1);
        p.last_heartbeat = Some((*heartbeat, now_ns));
        saturating_add(&mut self.heartbeats, 1);
    }

    pub fn on_stale(&mut self, info: &Arc<ProducerInfo>, duplicate: bool, now_ns: u64) {
        let p = self.producer(info, now_ns);
        if duplicate {
            saturating_add(&mut p.duplicates, 1);
            saturating_add(&mut self.duplicates, 1);
        } else {
            saturating_add(&mut p.stale, 1);
            saturating_add(&mut self.stale, 1);
        }
    }

    pub fn on_malformed(&mut self, info: Option<&Arc<ProducerInfo>>, now_ns: u64) {
        if let Some(info) = info {
            saturating_add(&mut self.producer(info, now_ns).malformed, 1);
        }
        saturating_add(&mut self.malformed, 1);
    }

    pub fn on_refused(&mut self, reason: RefuseReason) {
        saturating_add(&mut self.refused[reason.index()], 1);
    }

    pub fn on_encode_error(&mut self) {
        saturating_add(&mut self.encode_errors, 1);
    }

    /// Everything, as of `second` seconds since start.
    pub fn report(&self, second: u64) -> Counters {
        let mut producers: Vec<&ProducerStats> = self.producers.values().collect();
        producers.sort_by_key(|p| (p.connected_since_ns, p.info.instance));
        let mut by_producer_kind = self.by_producer_kind;
        for p in producers.iter().filter(|p| p.connected) {
            saturating_add(&mut by_producer_kind[p.info.kind.index()].connected, 1);
        }
        Counters {
            producers: producers.into_iter().map(producer_report).collect(),
            events_by_kind: kind_map(&self.events_by_kind),
            losses_by_stage: stage_map(&self.losses_by_stage),
            by_producer_kind: producer_kind_map(&by_producer_kind),
            rates: Rates {
                window_seconds: RATE_WINDOW_SECONDS,
                events_per_second: self.stored_rate.per_second(second),
                lost_per_second: self.lost_rate.per_second(second),
            },
            refused_connections: refused_map(&self.refused),
            malformed_messages: self.malformed,
            stale_messages: self.stale,
            duplicate_messages: self.duplicates,
            heartbeats: self.heartbeats,
            encode_errors: self.encode_errors,
        }
    }
}

fn producer_report(p: &ProducerStats) -> ProducerReport {
    ProducerReport {
        kind: p.info.kind.name(),
        instance: p.info.instance_hex.clone(),
        os: p.info.os.clone(),
        os_build: p.info.os_build,
        protocol_version: p.info.version,
        client_pid: p.info.client_pid,
        connected: p.connected,
        connected_since: rfc3339_ns(p.connected_since_ns),
        disconnected_at: p.disconnected_at_ns.map(rfc3339_ns),
        disconnect_reason: p.disconnect_reason,
        connections: p.connections,
        counters: ProducerCounters {
            events: p.events,
            bytes: p.bytes,
            last_seq: p.last_seq,
            losses: stage_map(&p.losses),
            stale: p.stale,
            duplicates: p.duplicates,
            malformed: p.malformed,
            heartbeats: p.heartbeats,
        },
        last_heartbeat: p.last_heartbeat.map(|(h, at)| HeartbeatReport {
            produced: h.produced,
            queue_drops_reported: h.queue_drops_reported,
            send_failed: h.send_failed,
            last_seq: h.last_seq,
            received: rfc3339_ns(at),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lpcmon_protocol::message::ProducerKind;

    fn info(n: u8) -> Arc<ProducerInfo> {
        Arc::new(ProducerInfo {
            conn: u64::from(n),
            kind: ProducerKind::Loadgen,
            instance: [n; 16],
            instance_hex: format!("{n:02x}").repeat(16),
            version: 1,
            os: String::new(),
            os_build: 0,
            client_pid: 1,
            max_message: 1024,
            connected_at: 0,
        })
    }

    #[test]
    fn rate_is_the_mean_of_whole_seconds_in_the_window() {
        let mut w = RateWindow::default();
        for s in 0..30 {
            w.add(s, 5);
        }
        assert_eq!(w.per_second(30), 5.0);
        assert_eq!(w.per_second(35), 2.5);
        assert_eq!(w.per_second(100), 0.0);
        let mut young = RateWindow::default();
        young.add(0, 8);
        assert_eq!(young.per_second(0), 0.0);
        assert_eq!(young.per_second(2), 4.0);
    }

    #[test]
    fn producer_table_is_bounded_and_forgets_disconnected_first() {
        let mut s = Stats::new(2);
        s.on_connect(&info(1), 1);
        s.on_connect(&info(2), 2);
        s.on_disconnect(&info(2), "port closed", 3);
        s.on_connect(&info(3), 4);
        let r = s.report(0);
        let kept: Vec<_> = r.producers.iter().map(|p| &p.instance[..2]).collect();
        assert_eq!(kept, ["01", "03"]);
        assert_eq!(r.by_producer_kind["loadgen"].connections, 3);
        assert_eq!(r.by_producer_kind["loadgen"].connected, 2);
    }

    /// Finding 6: two producers each reporting a loss of 2^63 saturate the totals instead of
    /// wrapping them back to 0.
    #[test]
    fn loss_counters_saturate() {
        let mut s = Stats::new(8);
        let loss = Loss {
            stage: LossStage::ProducerQueue,
            count: 1 << 63,
            first_seq: 0,
            last_seq: 0,
            total: 1 << 63,
        };
        s.on_loss(&info(1), &loss, 1, 1);
        s.on_loss(&info(2), &loss, 1, 1);
        s.on_loss(&info(2), &loss, 1, 1);
        let r = s.report(2);
        assert_eq!(r.losses_by_stage["producer_queue"], u64::MAX);
        assert_eq!(r.producers[1].counters.losses["producer_queue"], u64::MAX);
        // The rate window holds second 1 of a 2-second window: saturated, then halved.
        assert_eq!(s.lost_rate.per_second(2), u64::MAX as f64 / 2.0);
    }
}
