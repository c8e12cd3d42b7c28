//! `GET /events` and `GET /events/{id}`: filters, keyset paging, NDJSON and errors.

use lpcmon_api::ApiConfig;
use lpcmon_protocol::event::{EventKind, FieldType};
use lpcmon_protocol::message::{LossStage, ProducerKind};
use lpcmon_protocol::server::Output;
use serde_json::json;

use crate::common::*;

/// Stores a known mix: ids 1..=12.
async fn seeded() -> Server {
    let server = Server::start(ApiConfig::default()).await;
    let sensor = producer(ProducerKind::LinuxSensor, 0xa1);
    let loadgen = producer(ProducerKind::Loadgen, 0xb2);
    server
        .send_all([
            Output::Connected(sensor.clone()),                    // 1
            Output::Connected(loadgen.clone()),                   // 2
            exec(&sensor, 1, 100, "/usr/bin/true", "true"),       // 3
            exit(&sensor, 2, 100, 0),                             // 4
            exec(&sensor, 3, 101, "/usr/bin/TR", "tr a-z A-Z"),   // 5
            exec(&loadgen, 1, 200, "/opt/load", "load --rate 0"), // 6
            loss(&sensor, LossStage::ProducerQueue, 4, 6),        // 7
            exit(&sensor, 4, 101, 1),                             // 8
            event(
                &loadgen,
                2,
                EventKind::ImageLoad,
                200,
                vec![
                    text(FieldType::IMAGE_PATH, "/lib/libtr.so"),
                    number(FieldType::IMAGE_BASE, &0x7f00_0000_0000u64.to_le_bytes()),
                    number(FieldType::IMAGE_SIZE, &4096u64.to_le_bytes()),
                ],
            ), // 9
            exec(&loadgen, 3, 201, "/bin/sh", "sh -c exit"),      // 10
            exit(&loadgen, 4, 201, 0),                            // 11
            Output::Disconnected {
                producer: sensor.clone(),
                reason: "port closed",
            }, // 12
        ])
        .await;
    server.wait_stored(12).await;
    server
}

async fn page_ids(server: &Server, query: &str) -> Vec<u64> {
    let (status, page) = server.get_json(&format!("/events?{query}")).await;
    assert_eq!(status, 200, "{query}: {page}");
    ids(&page)
}

#[tokio::test]
async fn filters_select_what_they_say() {
    let s = seeded().await;
    assert_eq!(page_ids(&s, "").await, (1..=12).collect::<Vec<_>>());
    assert_eq!(page_ids(&s, "kind=process.exec").await, [3, 5, 6, 10]);
    assert_eq!(page_ids(&s, "kind=process.exit&kind=loss").await, [4, 7, 8, 11]);
    assert_eq!(page_ids(&s, "kind=process.exit,loss").await, [4, 7, 8, 11]);
    assert_eq!(
        page_ids(&s, "kind=loss,producer.connect&kind=image.load").await,
        [1, 2, 7, 9]
    );
    assert_eq!(page_ids(&s, "pid=101").await, [5, 8]);
    assert_eq!(page_ids(&s, "producer=loadgen").await, [2, 6, 9, 10, 11]);
    assert_eq!(
        page_ids(&s, &format!("producer={}", "a1".repeat(16))).await,
        [1, 3, 4, 5, 7, 8, 12]
    );
    assert_eq!(page_ids(&s, "producer=B2B2").await, [2, 6, 9, 10, 11]);
    // Case-insensitive, over executable, command line and image path.
    assert_eq!(page_ids(&s, "q=TR").await, [3, 5, 9]);
    assert_eq!(page_ids(&s, "q=a-z%20a").await, [5]);
    assert_eq!(page_ids(&s, "q=tr&kind=process.exec&pid=101").await, [5]);
    assert_eq!(page_ids(&s, "q=nothing-like-this").await, Vec::<u64>::new());
}

#[tokio::test]
async fn pages_by_key_in_ascending_order() {
    let s = seeded().await;
    let (_, newest) = s.get_json("/events?limit=3").await;
    assert_eq!(ids(&newest), [10, 11, 12]);
    assert_eq!(newest["next_after"], 12);
    assert_eq!(
        (newest["oldest_id"].clone(), newest["newest_id"].clone()),
        (json!(1), json!(12))
    );

    let mut seen: Vec<u64> = Vec::new();
    let mut after = 0;
    for _ in 0..10 {
        let (_, page) = s.get_json(&format!("/events?after={after}&limit=5")).await;
        let got = ids(&page);
        seen.extend(&got);
        after = page["next_after"].as_u64().unwrap();
        if got.len() < 5 {
            break;
        }
    }
    assert_eq!(seen, (1..=12).collect::<Vec<_>>());
    assert_eq!(after, 12);

    // A filtered page stops at its last match; the next one picks up after it.
    let (_, page) = s.get_json("/events?after=0&limit=2&kind=process.exit").await;
    assert_eq!((ids(&page), page["next_after"].clone()), (vec![4, 8], json!(8)));
    let (_, page) = s.get_json("/events?after=8&limit=2&kind=process.exit").await;
    assert_eq!((ids(&page), page["next_after"].clone()), (vec![11], json!(12)));
    // Caught up: nothing new, and the position holds.
    let (_, page) = s.get_json("/events?after=12").await;
    assert_eq!((ids(&page), page["next_after"].clone()), (vec![], json!(12)));
}

#[tokio::test]
async fn empty_store_pages_have_null_ids() {
    let s = Server::start(ApiConfig::default()).await;
    let (status, page) = s.get_json("/events").await;
    assert_eq!(status, 200);
    assert_eq!(
        page,
        json!({"events": [], "next_after": null, "oldest_id": null, "newest_id": null})
    );
    let (_, page) = s.get_json("/events?after=7").await;
    assert_eq!(page["next_after"], 7);
}

#[tokio::test]
async fn ndjson_is_one_event_per_line() {
    let s = seeded().await;
    let response = s
        .client
        .get(s.url("/events?after=2&limit=4"))
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    assert_eq!(response.headers()["x-next-after"], "6");
    assert_eq!(response.headers()["x-oldest-id"], "1");
    assert_eq!(response.headers()["x-newest-id"], "12");
    let body = response.text().await.unwrap();
    assert!(body.ends_with('\n'));
    let got: Vec<u64> = body
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(got, [3, 4, 5, 6]);
}

#[tokio::test]
async fn single_events_have_the_schema_one_shape() {
    let s = seeded().await;
    let (status, ev) = s.get_json("/events/5").await;
    assert_eq!(status, 200);
    assert_eq!(ev["kind"], "process.exec");
    assert_eq!(
        ev["producer"],
        json!({"kind": "linux-sensor", "instance": "a1".repeat(16), "seq": 3})
    );
    assert_eq!(
        ev["process"],
        json!({"pid": 101, "executable": "/usr/bin/TR", "command_line": "tr a-z A-Z",
               "parent": {"pid": 1}, "user": {"id": "1000"}})
    );
    assert_eq!(ev["thread"], json!({"id": 101}));
    assert_eq!(ev["time"], "2025-11-22T10:00:00.123456789Z");
    assert!(ev.get("image").is_none() && ev.get("loss").is_none() && ev.get("flags").is_none());

    let (_, image) = s.get_json("/events/9").await;
    assert_eq!(
        image["image"],
        json!({"path": "/lib/libtr.so", "base": 0x7f00_0000_0000u64, "size": 4096})
    );
    let (_, lost) = s.get_json("/events/7").await;
    assert_eq!(
        lost["loss"],
        json!({"stage": "producer_queue", "count": 3, "first_seq": 4, "last_seq": 6})
    );
    assert_eq!(
        lost["producer"],
        json!({"kind": "linux-sensor", "instance": "a1".repeat(16)})
    );
    let (_, bye) = s.get_json("/events/12").await;
    assert_eq!(bye["reason"], "port closed");
    let (_, hello) = s.get_json("/events/1").await;
    assert_eq!(hello["producer"]["os"], "Linux 6.1");
}

async fn error(s: &Server, method: reqwest::Method, path: &str) -> (u16, serde_json::Value) {
    let response = s.client.request(method, s.url(path)).send().await.unwrap();
    let status = response.status().as_u16();
    assert_eq!(response.headers()["content-type"], "application/json", "{path}");
    let body: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "{path}: {body}");
    (status, body)
}

#[tokio::test]
async fn errors_are_json_with_the_right_status() {
    let s = seeded().await;
    let get = reqwest::Method::GET;
    for (path, status, code) in [
        ("/events/999999", 404, "not_found"),
        ("/no/such/route", 404, "not_found"),
        ("/assets/nope.js", 404, "not_found"),
        ("/events/abc", 400, "bad_request"),
        ("/events?limit=0", 400, "bad_request"),
        ("/events?limit=5000", 400, "bad_request"),
        ("/events?after=abc", 400, "bad_request"),
        ("/events?kind=nope", 400, "bad_request"),
        ("/events?kind=process.exec,nope", 400, "bad_request"),
        ("/events?pid=-1", 400, "bad_request"),
        ("/events?kinds=loss", 400, "bad_request"),
        ("/events/stream?kind=nope", 400, "bad_request"),
        ("/events/stream?limit=3", 400, "bad_request"),
    ] {
        let (got, body) = error(&s, get.clone(), path).await;
        assert_eq!(
            (got, body["error"]["code"].as_str().unwrap()),
            (status, code),
            "{path}: {body}"
        );
    }
    let (status, body) = error(&s, reqwest::Method::POST, "/events").await;
    assert_eq!(
        (status, body["error"]["code"].as_str().unwrap()),
        (405, "method_not_allowed")
    );
    let (_, body) = error(&s, get, "/events?kind=nope").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("process.exec")
    );
}
