//! Prometheus text exposition of the [`Report`]: the `lpcmon_` prefix, `_total` counters,
//! base units, a `_build_info` gauge, and only low-cardinality labels (event kind, loss
//! stage, producer kind, reasons) — never a pid, a path or a producer instance.

use std::fmt::Display;

use crate::report::Report;

struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        self.0
            .push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            let inner: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            self.0.push_str(&format!("{{{}}}", inner.join(",")));
        }
        self.0.push_str(&format!(" {value}\n"));
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    fn labelled<'a, V: Display>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        label: &str,
        values: impl IntoIterator<Item = (&'a str, V)>,
    ) {
        self.family(name, kind, help);
        for (key, value) in values {
            self.sample(name, &[(label, key)], value);
        }
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

pub fn render(r: &Report) -> String {
    let c = &r.counters;
    let mut t = Text(String::with_capacity(8192));
    t.family("lpcmon_build_info", "gauge", "Always 1; the version is a label.");
    t.sample("lpcmon_build_info", &[("version", r.version)], 1);
    t.single(
        "lpcmon_start_time_seconds",
        "gauge",
        "When the service started, in seconds since the Unix epoch.",
        r.start_time_seconds,
    );
    t.labelled(
        "lpcmon_events_stored_total",
        "counter",
        "Events stored, by kind (losses and producer connects and disconnects included).",
        "kind",
        c.events_by_kind.iter().map(|(k, v)| (*k, v)),
    );
    t.labelled(
        "lpcmon_events_lost_total",
        "counter",
        "Events lost, by the pipeline stage that lost them.",
        "stage",
        c.losses_by_stage.iter().map(|(k, v)| (*k, v)),
    );
    let kinds = &c.by_producer_kind;
    t.labelled(
        "lpcmon_producer_events_total",
        "counter",
        "Events received from producers, by producer kind.",
        "producer_kind",
        kinds.iter().map(|(k, v)| (*k, v.events)),
    );
    t.labelled(
        "lpcmon_producer_received_bytes_total",
        "counter",
        "Encoded event bytes received from producers, by producer kind.",
        "producer_kind",
        kinds.iter().map(|(k, v)| (*k, v.bytes)),
    );
    t.labelled(
        "lpcmon_producer_connections_total",
        "counter",
        "Producer connections accepted, by producer kind.",
        "producer_kind",
        kinds.iter().map(|(k, v)| (*k, v.connections)),
    );
    t.labelled(
        "lpcmon_producers_connected",
        "gauge",
        "Producers connected now, by producer kind.",
        "producer_kind",
        kinds.iter().map(|(k, v)| (*k, v.connected)),
    );
    t.labelled(
        "lpcmon_refused_connections_total",
        "counter",
        "Connections refused, by reason.",
        "reason",
        c.refused_connections.iter().map(|(k, v)| (*k, v)),
    );
    t.single(
        "lpcmon_malformed_messages_total",
        "counter",
        "Messages that could not be decoded.",
        c.malformed_messages,
    );
    t.single(
        "lpcmon_stale_messages_total",
        "counter",
        "Events that arrived after their sequence number was counted as lost.",
        c.stale_messages,
    );
    t.single(
        "lpcmon_duplicate_messages_total",
        "counter",
        "Events or fragments received twice (dropped; nothing lost).",
        c.duplicate_messages,
    );
    t.single(
        "lpcmon_heartbeats_total",
        "counter",
        "Producer heartbeats received.",
        c.heartbeats,
    );
    t.single(
        "lpcmon_encode_errors_total",
        "counter",
        "Events that could not be encoded as JSON (expected to stay 0).",
        c.encode_errors,
    );
    let s = &r.store;
    t.single("lpcmon_store_events", "gauge", "Events in the store.", s.events);
    t.single(
        "lpcmon_store_bytes",
        "gauge",
        "Bytes the store's events take.",
        s.bytes,
    );
    t.single(
        "lpcmon_store_retain_events",
        "gauge",
        "Most events the store keeps.",
        s.retain,
    );
    t.single(
        "lpcmon_store_retain_bytes",
        "gauge",
        "Most bytes the store keeps.",
        s.retain_bytes,
    );
    t.single(
        "lpcmon_store_evicted_total",
        "counter",
        "Events evicted from the store to stay within its limits.",
        s.evicted,
    );
    t.single(
        "lpcmon_sse_clients",
        "gauge",
        "SSE streams open now.",
        r.sse.clients,
    );
    t.labelled(
        "lpcmon_sse_gaps_total",
        "counter",
        "Gap events sent to SSE clients, by reason.",
        "reason",
        r.sse.gaps.iter().map(|(k, v)| (*k, v)),
    );
    t.labelled(
        "lpcmon_sse_missed_events_total",
        "counter",
        "Events SSE clients were told they missed, by reason.",
        "reason",
        r.sse.missed.iter().map(|(k, v)| (*k, v)),
    );
    t.0
}
