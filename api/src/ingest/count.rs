//! What each port-server output adds to the counters. Kept apart from the ingest loop so the
//! loop can apply a whole batch under one stats lock.

use lpcmon_protocol::server::Output;

use crate::stats::Stats;

/// Counts one output. `second` is seconds since start (the rate windows' clock), `now_ns` the
/// batch's receipt time.
pub(super) fn count(stats: &mut Stats, output: &Output, second: u64, now_ns: u64) {
    match output {
        Output::Event {
            producer,
            event,
            transport,
        } => stats.on_event(producer, event.header.seq, transport.bytes, now_ns),
        Output::Loss { producer, loss } => stats.on_loss(producer, loss, second, now_ns),
        Output::Connected(producer) => stats.on_connect(producer, now_ns),
        Output::Disconnected { producer, reason } => stats.on_disconnect(producer, reason, now_ns),
        Output::Heartbeat { producer, heartbeat } => stats.on_heartbeat(producer, heartbeat, now_ns),
        Output::Stale {
            producer, duplicate, ..
        } => stats.on_stale(producer, *duplicate, now_ns),
        Output::Malformed { producer, .. } => stats.on_malformed(producer.as_ref(), now_ns),
        Output::Refused { reason, .. } => stats.on_refused(*reason),
    }
}
