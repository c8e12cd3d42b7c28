//! `/metrics`: the [`Report`] in the OpenMetrics text format, written by `prometheus-client`.
//!
//! Every name has the `lpcmon_` prefix; counters get their `_total` suffix and units their
//! `_seconds` / `_bytes` suffix from the encoder; the version travels on `lpcmon_build_info`.
//! Labels are low-cardinality only (event kind, loss stage, producer kind, reasons): never a
//! pid, a path or a producer instance.
//!
//! The counters live in the service's own stats (one lock, also behind `/stats`), so this is a
//! [`Collector`] over one report, rendered per scrape, rather than a registry of live metric
//! objects: `/stats` and `/metrics` read the same snapshot and always agree.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::report::Report;

/// The media type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Renders one report.
pub fn render(report: Report) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("lpcmon");
    registry.register_collector(Box::new(ReportCollector(report)));
    let mut text = String::with_capacity(8192);
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

#[derive(Debug)]
struct ReportCollector(Report);

/// Writes families into one encoder; names are without the prefix and the suffixes.
struct Families<'a>(DescriptorEncoder<'a>);

impl Families<'_> {
    /// A family of one sample without labels.
    fn one(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<&Unit>,
        metric: impl EncodeMetric,
    ) -> std::fmt::Result {
        metric.encode(self.0.encode_descriptor(name, help, unit, metric.metric_type())?)
    }

    /// A family of `kind` with one label.
    fn labelled<'v, M: EncodeMetric>(
        &mut self,
        (name, help, unit, kind): (&str, &str, Option<&Unit>, MetricType),
        label: &str,
        values: impl IntoIterator<Item = (&'v str, M)>,
    ) -> std::fmt::Result {
        let mut family = self.0.encode_descriptor(name, help, unit, kind)?;
        for (key, metric) in values {
            metric.encode(family.encode_family(&[(label, key)])?)?;
        }
        Ok(())
    }

    fn counters<'v>(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<&Unit>,
        label: &str,
        values: impl IntoIterator<Item = (&'v str, u64)>,
    ) -> std::fmt::Result {
        let values = values.into_iter().map(|(k, v)| (k, ConstCounter::new(v)));
        self.labelled((name, help, unit, MetricType::Counter), label, values)
    }

    fn counter(&mut self, name: &str, help: &str, unit: Option<&Unit>, value: u64) -> std::fmt::Result {
        self.one(name, help, unit, ConstCounter::new(value))
    }

    fn gauge<N>(&mut self, name: &str, help: &str, unit: Option<&Unit>, value: N) -> std::fmt::Result
    where
        ConstGauge<N>: EncodeMetric,
    {
        self.one(name, help, unit, ConstGauge::new(value))
    }
}

/// A count as a gauge value. Counts here are far below `i64::MAX`; saturate rather than wrap.
fn level(count: impl TryInto<i64>) -> i64 {
    count.try_into().unwrap_or(i64::MAX)
}

impl Collector for ReportCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> std::fmt::Result {
        let r = &self.0;
        let c = &r.counters;
        let mut f = Families(encoder);
        f.one(
            "build",
            "The running build; the version is a label.",
            None,
            Info::new([("version", r.version)]),
        )?;
        f.gauge(
            "start_time",
            "When the service started, since the Unix epoch.",
            Some(&Unit::Seconds),
            r.start_time_seconds,
        )?;
        f.counters(
            "events_stored",
            "Events stored, by kind (losses and producer connects and disconnects included).",
            None,
            "kind",
            c.events_by_kind.iter().map(|(k, v)| (*k, *v)),
        )?;
        f.counters(
            "events_lost",
            "Events lost, by the pipeline stage that lost them.",
            None,
            "stage",
            c.losses_by_stage.iter().map(|(k, v)| (*k, *v)),
        )?;
        let kinds = &c.by_producer_kind;
        f.counters(
            "producer_events",
            "Events received from producers, by producer kind.",
            None,
            "producer_kind",
            kinds.iter().map(|(k, v)| (*k, v.events)),
        )?;
        f.counters(
            "producer_received",
            "Encoded event bytes received from producers, by producer kind.",
            Some(&Unit::Bytes),
            "producer_kind",
            kinds.iter().map(|(k, v)| (*k, v.bytes)),
        )?;
        f.counters(
            "producer_connections",
            "Producer connections accepted, by producer kind.",
            None,
            "producer_kind",
            kinds.iter().map(|(k, v)| (*k, v.connections)),
        )?;
        f.labelled(
            (
                "producers_connected",
                "Producers connected now, by producer kind.",
                None,
                MetricType::Gauge,
            ),
            "producer_kind",
            kinds
                .iter()
                .map(|(k, v)| (*k, ConstGauge::new(level(v.connected)))),
        )?;
        f.counters(
            "refused_connections",
            "Connections refused, by reason.",
            None,
            "reason",
            c.refused_connections.iter().map(|(k, v)| (*k, *v)),
        )?;
        f.counter(
            "malformed_messages",
            "Messages that could not be decoded.",
            None,
            c.malformed_messages,
        )?;
        f.counter(
            "stale_messages",
            "Events that arrived after their sequence number was counted as lost.",
            None,
            c.stale_messages,
        )?;
        f.counter(
            "duplicate_messages",
            "Events or fragments received twice (dropped; nothing lost).",
            None,
            c.duplicate_messages,
        )?;
        f.counter("heartbeats", "Producer heartbeats received.", None, c.heartbeats)?;
        f.counter(
            "encode_errors",
            "Events that could not be encoded as JSON (expected to stay 0).",
            None,
            c.encode_errors,
        )?;
        let s = &r.store;
        f.gauge("store_events", "Events in the store.", None, level(s.events))?;
        f.gauge(
            "store",
            "Bytes the store's events take.",
            Some(&Unit::Bytes),
            level(s.bytes),
        )?;
        f.gauge(
            "store_retain_events",
            "Most events the store keeps.",
            None,
            level(s.retain),
        )?;
        f.gauge(
            "store_retain",
            "Most bytes the store keeps.",
            Some(&Unit::Bytes),
            level(s.retain_bytes),
        )?;
        f.counter(
            "store_evicted",
            "Events evicted from the store to stay within its limits.",
            None,
            s.evicted,
        )?;
        f.gauge("sse_clients", "SSE streams open now.", None, level(r.sse.clients))?;
        f.counters(
            "sse_gaps",
            "Gap events sent to SSE clients, by reason.",
            None,
            "reason",
            r.sse.gaps.iter().map(|(k, v)| (*k, *v)),
        )?;
        f.counters(
            "sse_missed_events",
            "Events SSE clients were told they missed, by reason.",
            None,
            "reason",
            r.sse.missed.iter().map(|(k, v)| (*k, *v)),
        )?;
        if let Some(fleet) = &r.fleet {
            encode_fleet(&mut f, fleet)?;
        }
        Ok(())
    }
}

/// The fleet's families, present only when this server publishes or subscribes.
fn encode_fleet(f: &mut Families<'_>, fleet: &crate::fleet::FleetReport) -> std::fmt::Result {
    if let Some(p) = &fleet.publish {
        f.gauge(
            "publish_nats_reachable",
            "1 if the publisher is connected to NATS.",
            None,
            i64::from(p.nats_reachable),
        )?;
        f.gauge(
            "publish_lag_ids",
            "Stored events not yet acknowledged by NATS.",
            None,
            level(p.lag_ids),
        )?;
        f.gauge(
            "publish_lag",
            "Age of the oldest stored event not yet acknowledged by NATS.",
            Some(&Unit::Seconds),
            p.lag_seconds,
        )?;
        f.counter(
            "publish_acks",
            "Publish acknowledgements from JetStream.",
            None,
            p.acks,
        )?;
        f.counter(
            "publish_retries",
            "Events published again after a failure.",
            None,
            p.retries,
        )?;
        f.counter(
            "publish_duplicates",
            "Publishes JetStream acknowledged as duplicates.",
            None,
            p.duplicates,
        )?;
    }
    if let Some(s) = &fleet.subscribe {
        f.gauge(
            "subscribe_nats_reachable",
            "1 if the subscriber is connected to NATS.",
            None,
            i64::from(s.nats_reachable),
        )?;
        f.counter(
            "subscribe_imported",
            "Events imported from the stream.",
            None,
            s.imported,
        )?;
        f.counter(
            "subscribe_duplicates",
            "Redelivered events dropped by the per-origin high-water mark.",
            None,
            s.duplicates,
        )?;
        f.counter(
            "subscribe_refused",
            "Messages refused: subject host not origin host, or not an lpcmon event.",
            None,
            s.refused_host_mismatch + s.refused_malformed,
        )?;
    }
    let hosts = &fleet.hosts;
    f.counters(
        "host_events",
        "Events imported, by origin host.",
        None,
        "host",
        hosts.iter().map(|(h, r)| (h.as_str(), r.events)),
    )?;
    f.labelled(
        (
            "host_publish_lag_ids",
            "Each host's publish lag as it last reported it.",
            None,
            MetricType::Gauge,
        ),
        "host",
        hosts
            .iter()
            .map(|(h, r)| (h.as_str(), ConstGauge::new(level(r.publish_lag_ids.unwrap_or(0))))),
    )
}
