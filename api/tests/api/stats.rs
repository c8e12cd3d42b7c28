//! `/stats` and `/metrics` reflect producers, losses by stage, refusals and the store.

use lpcmon_api::ApiConfig;
use lpcmon_protocol::DecodeError;
use lpcmon_protocol::message::{Heartbeat, LossStage, ProducerKind, RefuseReason};
use lpcmon_protocol::server::Output;

use crate::common::*;

#[tokio::test]
async fn stats_and_metrics_count_losses_by_stage() {
    let s = Server::start(ApiConfig {
        retain: 6,
        ..ApiConfig::default()
    })
    .await;
    s.state.add_notice("the proc-connector sensor is not running");
    s.state.add_notice("to be removed");
    s.state.remove_notice("to be removed");
    let p = producer(ProducerKind::LinuxSensor, 3);
    s.send_all([
        Output::Connected(p.clone()),             // 1
        exec(&p, 1, 10, "/bin/a", "a"),           // 2
        loss(&p, LossStage::ProducerQueue, 2, 4), // 3: 3 lost
        loss(&p, LossStage::Transport, 5, 6),     // 4: 2 lost
        exec(&p, 7, 11, "/bin/b", "b"),           // 5
        loss(&p, LossStage::ServerIngest, 8, 12), // 6: 5 lost
        loss(&p, LossStage::Kernel, 13, 13),      // 7: 1 lost
        Output::Heartbeat {
            producer: p.clone(),
            heartbeat: Heartbeat {
                produced: 13,
                queue_drops_reported: 3,
                send_failed: 0,
                last_seq: 13,
            },
        },
        Output::Stale {
            producer: p.clone(),
            seq: 7,
            duplicate: true,
        },
        Output::Stale {
            producer: p.clone(),
            seq: 5,
            duplicate: false,
        },
        Output::Malformed {
            producer: Some(p.clone()),
            client_pid: 4242,
            error: DecodeError::BadMagic,
        },
        Output::Refused {
            client_pid: 666,
            reason: RefuseReason::Unauthorised,
            detail: "uid 1001".into(),
        },
        Output::Disconnected {
            producer: p.clone(),
            reason: "client died",
        }, // 8
    ])
    .await;
    s.wait_stored(8).await;

    let (status, st) = s.get_json("/stats").await;
    assert_eq!(status, 200);
    assert_eq!(
        st["notices"],
        serde_json::json!(["the proc-connector sensor is not running"])
    );
    let stages = &st["losses_by_stage"];
    assert_eq!(
        (
            &stages["producer_queue"],
            &stages["transport"],
            &stages["server_ingest"],
            &stages["kernel"]
        ),
        (&3.into(), &2.into(), &5.into(), &1.into())
    );
    assert_eq!(
        (&stages["producer_send"], &stages["reassembly"]),
        (&0.into(), &0.into())
    );
    assert_eq!(st["events_by_kind"]["loss"], 4);
    assert_eq!(st["events_by_kind"]["process.exec"], 2);
    assert_eq!(st["events_by_kind"]["producer.connect"], 1);
    assert_eq!(st["events_by_kind"]["thread.start"], 0);
    assert_eq!(st["refused_connections"]["unauthorised"], 1);
    assert_eq!(
        (
            &st["malformed_messages"],
            &st["duplicate_messages"],
            &st["stale_messages"],
            &st["heartbeats"]
        ),
        (&1.into(), &1.into(), &1.into(), &1.into())
    );
    let store = &st["store"];
    assert_eq!((&store["events"], &store["retain"]), (&6.into(), &6.into()));
    assert_eq!((&store["oldest_id"], &store["newest_id"]), (&3.into(), &8.into()));
    assert_eq!(
        (&store["evicted"], &store["stored_total"]),
        (&2.into(), &8.into())
    );

    let producers = st["producers"].as_array().unwrap();
    assert_eq!(producers.len(), 1);
    let prod = &producers[0];
    assert_eq!(prod["instance"], "03".repeat(16));
    assert_eq!(
        (&prod["connected"], &prod["disconnect_reason"]),
        (&false.into(), &"client died".into())
    );
    assert!(prod["disconnected_at"].is_string());
    let c = &prod["counters"];
    assert_eq!(
        (&c["events"], &c["last_seq"], &c["bytes"]),
        (&2.into(), &7.into(), &400.into())
    );
    assert_eq!(c["losses"]["server_ingest"], 5);
    assert_eq!(
        (&c["duplicates"], &c["stale"], &c["malformed"]),
        (&1.into(), &1.into(), &1.into())
    );
    assert_eq!(prod["last_heartbeat"]["produced"], 13);

    let metrics = s.get("/metrics").await;
    assert!(
        metrics.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text; version=1.0.0")
    );
    let text = metrics.text().await.unwrap();
    for line in [
        "lpcmon_build_info{version=\"0.1.0\"} 1",
        "lpcmon_events_lost_total{stage=\"producer_queue\"} 3",
        "lpcmon_events_lost_total{stage=\"transport\"} 2",
        "lpcmon_events_lost_total{stage=\"server_ingest\"} 5",
        "lpcmon_events_lost_total{stage=\"kernel\"} 1",
        "lpcmon_events_lost_total{stage=\"reassembly\"} 0",
        "lpcmon_events_stored_total{kind=\"loss\"} 4",
        "lpcmon_refused_connections_total{reason=\"unauthorised\"} 1",
        "lpcmon_malformed_messages_total 1",
        "lpcmon_store_events 6",
        "lpcmon_store_evicted_total 2",
        "lpcmon_producers_connected{producer_kind=\"linux-sensor\"} 0",
        "lpcmon_producer_connections_total{producer_kind=\"linux-sensor\"} 1",
        "lpcmon_sse_clients 0",
        "lpcmon_sse_gaps_total{reason=\"lagged\"} 0",
        "# TYPE lpcmon_events_lost counter",
        "# TYPE lpcmon_build info",
        "# UNIT lpcmon_store_bytes bytes",
        "lpcmon_producer_received_bytes_total{producer_kind=\"linux-sensor\"} 400",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
    }
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with("lpcmon_"), "{line}");
        assert!(!line.contains("pid=") && !line.contains("instance="), "{line}");
    }
    // OpenMetrics: a counter family is named without `_total` and each of its samples with it;
    // no other sample ends in `_total`.
    let mut kind_of = std::collections::HashMap::new();
    for family in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let (name, kind) = family.split_once(' ').unwrap();
        assert!(!name.ends_with("_total"), "{family}");
        kind_of.insert(name, kind);
    }
    for sample in text.lines().filter(|l| !l.starts_with('#')) {
        let name = sample.split(['{', ' ']).next().unwrap();
        let counter = name.strip_suffix("_total").and_then(|family| kind_of.get(family)) == Some(&"counter");
        assert_eq!(name.ends_with("_total"), counter, "{sample}");
    }
    assert_eq!(text.lines().last(), Some("# EOF"));
}
