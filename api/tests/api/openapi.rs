//! `openapi.yaml` stays true: it documents exactly the routes the router serves, and real
//! responses validate against its schemas (OpenAPI 3.1 schemas are JSON Schema 2020-12).

use std::collections::BTreeSet;

use jsonschema::Validator;
use lpcmon_api::{ApiConfig, routes};
use lpcmon_protocol::event::{EventKind, FieldType, flags};
use lpcmon_protocol::message::{LossStage, ProducerKind};
use lpcmon_protocol::server::Output;
use serde_json::{Value, json};

use crate::common::*;

const SPEC: &str = include_str!("../../../openapi.yaml");
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

fn spec() -> Value {
    serde_yaml_ng::from_str(SPEC).expect("openapi.yaml is not valid YAML")
}

fn validator(spec: &Value, name: &str) -> Validator {
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": format!("#/components/schemas/{name}"),
        "components": spec["components"],
    });
    jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("schema {name}: {e}"))
}

fn assert_valid(v: &Validator, instance: &Value, what: &str) {
    let errors: Vec<String> = v
        .iter_errors(instance)
        .map(|e| format!("{e} (at {})", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what} does not match the spec:\n{}\n{instance:#}",
        errors.join("\n")
    );
}

#[test]
fn the_spec_documents_exactly_the_served_routes() {
    let spec = spec();
    assert_eq!(spec["openapi"], "3.1.0");
    let mut documented = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in METHODS {
            if item.get(method).is_some() {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    let served: BTreeSet<_> = routes()
        .into_iter()
        .map(|(m, p)| (m.to_owned(), p.to_owned()))
        .collect();
    assert_eq!(documented, served);
}

/// Stores one of every kind of record, with flags and truncated fields.
async fn varied() -> Server {
    let s = Server::start(ApiConfig::default()).await;
    let p = producer(ProducerKind::WindowsDriver, 0x5c);
    let mut start = event(
        &p,
        1,
        EventKind::ProcessStart,
        300,
        vec![
            text(FieldType::EXECUTABLE, "C:\\Windows\\notepad.exe"),
            text(FieldType::COMMAND_LINE, "notepad"),
            text(FieldType::USER_ID, "S-1-5-18"),
            number(FieldType::CREATING_PID, &77u32.to_le_bytes()),
        ],
    );
    if let Output::Event { event, .. } = &mut start {
        event.header.flags = flags::TRUNCATED | flags::ENRICH_FAILED | 0x0400;
        event.fields[1].original_len = Some(70_000);
    }
    s.send_all([
        Output::Connected(p.clone()),
        start,
        event(&p, 2, EventKind::ThreadStart, 300, vec![]),
        event(
            &p,
            3,
            EventKind::ImageLoad,
            300,
            vec![
                text(FieldType::IMAGE_PATH, "C:\\Windows\\System32\\ntdll.dll"),
                number(FieldType::IMAGE_BASE, &0x7ffc_0000_0000u64.to_le_bytes()),
                number(FieldType::IMAGE_SIZE, &0x1f_0000u64.to_le_bytes()),
            ],
        ),
        exit(&p, 4, 300, -1073741510),
        loss(&p, LossStage::Reassembly, 5, 5),
        Output::Disconnected {
            producer: p.clone(),
            reason: "client died",
        },
    ])
    .await;
    s.wait_stored(7).await;
    s
}

#[tokio::test]
async fn every_documented_route_answers() {
    let s = varied().await;
    for (_, path) in routes() {
        let concrete = path.replace("{id}", "1").replace("{file}", "index.html");
        let response = s.get(&concrete).await;
        assert_eq!(response.status(), 200, "{concrete}");
    }
}

#[tokio::test]
async fn responses_match_the_schemas() {
    let spec = spec();
    let s = varied().await;
    let event_schema = validator(&spec, "Event");
    let error_schema = validator(&spec, "Error");

    let (_, page) = s.get_json("/events").await;
    assert_eq!(ids(&page), (1..=7).collect::<Vec<_>>());
    assert_valid(&validator(&spec, "EventPage"), &page, "/events");
    for id in 1..=7 {
        let (_, event) = s.get_json(&format!("/events/{id}")).await;
        assert_valid(&event_schema, &event, &format!("/events/{id}"));
    }
    let (_, start) = s.get_json("/events/2").await;
    assert_eq!(start["flags"], json!(["enrich_failed", "truncated", "0x0400"]));
    assert_eq!(start["process"]["command_line_original_length"], 70_000);
    assert_eq!(start["process"]["creator"]["pid"], 77);

    let (_, empty) = Server::start(ApiConfig::default())
        .await
        .get_json("/events")
        .await;
    assert_valid(&validator(&spec, "EventPage"), &empty, "an empty page");

    let (_, stats) = s.get_json("/stats").await;
    assert_valid(&validator(&spec, "Stats"), &stats, "/stats");
    let (_, health) = s.get_json("/healthz").await;
    assert_valid(&validator(&spec, "Health"), &health, "/healthz");

    for path in ["/events?limit=0", "/events/404", "/nope"] {
        let (status, body) = s.get_json(path).await;
        assert!(status >= 400);
        assert_valid(&error_schema, &body, path);
    }
    let post = s.client.post(s.url("/stats")).send().await.unwrap();
    assert_eq!(post.status(), 405);
    let body: Value = serde_json::from_str(&post.text().await.unwrap()).unwrap();
    assert_valid(&error_schema, &body, "405");

    // SSE payloads: an event, and a gap from a stream resuming before the (tiny) store.
    let mut sse = s.sse("/events/stream?after=5", &[]).await;
    for _ in 0..2 {
        assert_valid(&event_schema, &sse.event().await.json(), "SSE data");
    }
    let tiny = Server::start(ApiConfig {
        retain: 1,
        ..ApiConfig::default()
    })
    .await;
    let p = producer(ProducerKind::Loadgen, 1);
    tiny.send_all([exec(&p, 1, 1, "/a", "a"), exec(&p, 2, 2, "/b", "b")])
        .await;
    tiny.wait_stored(2).await;
    let gap = tiny.sse("/events/stream?after=0", &[]).await.event().await;
    assert_eq!(gap.event.as_deref(), Some("gap"));
    assert_valid(&validator(&spec, "Gap"), &gap.json(), "SSE gap data");

    // The schemas are strict: an undocumented field fails.
    let mut extra = start.clone();
    extra["surprise"] = json!(1);
    assert!(!event_schema.is_valid(&extra));
}

/// Issue 9, finding 7: the spec lists every status a route can return. The request guard
/// can answer any route with 403 (foreign `Origin`), 414, 421 (`Host`) and 431; protected
/// routes also 401. Those answers are `Error` JSON.
#[tokio::test]
async fn every_operation_documents_the_guard_statuses() {
    let spec = spec();
    for (path, item) in spec["paths"].as_object().unwrap() {
        let responses = &item["get"]["responses"];
        for status in ["200", "403", "414", "421", "431"] {
            assert!(
                responses.get(status).is_some(),
                "GET {path} does not document {status}"
            );
        }
        let public = matches!(path.as_str(), "/" | "/healthz" | "/assets/{file}");
        assert_eq!(responses.get("401").is_some(), !public, "GET {path}: 401");
    }
    let error = validator(&spec, "Error");
    let s = Server::start(ApiConfig::default()).await;
    for (path, header, value, status) in [
        ("/events", "host", "attacker.example".to_owned(), 421),
        (
            "/events/stream",
            "origin",
            "http://attacker.example".to_owned(),
            403,
        ),
        ("/stats", "x-big", "x".repeat(20_000), 431),
    ] {
        let r = s
            .client
            .get(s.url(path))
            .header(header, value)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{path}");
        let body: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        assert_valid(&error, &body, path);
    }
    let long = format!("/events?q={}", "a".repeat(9000));
    let r = s.get(&long).await;
    assert_eq!(r.status(), 414);
    assert_valid(
        &error,
        &serde_json::from_str(&r.text().await.unwrap()).unwrap(),
        "414",
    );
}
