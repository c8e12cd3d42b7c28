//! Issue 9, "harden the HTTP service": each test names the finding it pins. Real server on
//! loopback; raw TCP where a well-behaved client (reqwest) would not send what an attacker does.

use std::time::Duration;

use lpcmon_api::{ApiConfig, HostPolicy};
use lpcmon_protocol::message::{Loss, LossStage, ProducerKind};
use lpcmon_protocol::server::Output;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

use crate::common::*;

/// Sends `request` as raw bytes and returns everything the server answers until it closes
/// the connection (bounded by `WAIT`).
async fn raw(s: &Server, request: &[u8]) -> String {
    let mut tcp = TcpStream::connect(s.base.trim_start_matches("http://"))
        .await
        .unwrap();
    tcp.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = timeout(WAIT, tcp.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

fn host(s: &Server) -> String {
    s.base.trim_start_matches("http://").to_owned()
}

/// Status and parsed JSON body of a raw HTTP/1.1 answer; panics unless the body is the API's
/// JSON error.
fn json_error(answer: &str) -> (u16, Value) {
    let status: u16 = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((answer, ""));
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "not JSON: {answer}"
    );
    let body: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
    assert!(
        body["error"]["code"].is_string() && body["error"]["message"].is_string(),
        "{body}"
    );
    (status, body)
}

/// Whether the server closes `tcp` within `within`.
async fn closes_within(tcp: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

/// Finding 1: an empty token never lets anyone in, `?token=` or `?token` alike.
#[tokio::test]
async fn an_empty_configured_token_opens_nothing() {
    let s = Server::start(ApiConfig {
        token: Some(String::new()),
        ..ApiConfig::default()
    })
    .await;
    for path in [
        "/events/stream?token=",
        "/events/stream?token",
        "/events",
        "/stats",
    ] {
        assert_eq!(s.get(path).await.status(), 401, "{path}");
    }
}

/// Finding 2: a connection that sends nothing, or half a request, is dropped by the
/// header-read timeout; a quiet keep-alive connection by the idle timeout.
#[tokio::test]
async fn silent_and_half_requests_time_out() {
    let s = Server::start(ApiConfig {
        header_read_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(600),
        ..ApiConfig::default()
    })
    .await;
    let addr = host(&s);
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    assert!(
        closes_within(&mut silent, Duration::from_secs(3)).await,
        "silent connection kept"
    );
    let mut half = TcpStream::connect(&addr).await.unwrap();
    half.write_all(b"GET /events HTTP/1.1\r\nHost: ").await.unwrap();
    assert!(
        closes_within(&mut half, Duration::from_secs(3)).await,
        "half request kept"
    );
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    idle.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert!(
        closes_within(&mut idle, Duration::from_secs(5)).await,
        "idle keep-alive kept"
    );
}

/// Finding 2: an SSE stream is not idle while keep-alives flow.
#[tokio::test]
async fn streams_outlive_the_idle_timeout() {
    let s = Server::start(ApiConfig {
        idle_timeout: Duration::from_millis(400),
        keepalive: Duration::from_millis(100),
        ..ApiConfig::default()
    })
    .await;
    let mut stream = s.sse("/events/stream", &[]).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let p = producer(ProducerKind::Loadgen, 1);
    s.send(exec(&p, 1, 10, "/bin/true", "true")).await;
    assert_eq!(stream.event().await.id(), 1, "the stream was closed as idle");
}

/// Finding 2: at the connection cap new clients wait; they are served once a slot frees.
#[tokio::test]
async fn the_connection_cap_holds_and_releases() {
    let s = Server::start(ApiConfig {
        max_connections: 2,
        header_read_timeout: Duration::from_secs(30),
        ..ApiConfig::default()
    })
    .await;
    let addr = host(&s);
    let hogs = [
        TcpStream::connect(&addr).await.unwrap(),
        TcpStream::connect(&addr).await.unwrap(),
    ];
    tokio::time::sleep(Duration::from_millis(200)).await;
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut third = TcpStream::connect(&addr).await.unwrap();
    third.write_all(request.as_bytes()).await.unwrap();
    let mut buf = [0u8; 256];
    assert!(
        timeout(Duration::from_millis(500), third.read(&mut buf))
            .await
            .is_err(),
        "a connection beyond the cap was served"
    );
    drop(hogs);
    let n = timeout(WAIT, third.read(&mut buf)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

/// Finding 4: DNS rebinding. A loopback server answers only loopback names (and the ones
/// it is told); a foreign `Origin` cannot read the stream.
#[tokio::test]
async fn only_loopback_hosts_and_origins_are_answered() {
    let s = Server::start(ApiConfig::default()).await;
    let addr = host(&s);
    let port = addr.rsplit(':').next().unwrap();
    let get = |host: String, extra: &'static str| {
        format!("GET /events HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n")
    };
    let (status, body) = json_error(&raw(&s, get(format!("attacker.example:{port}"), "").as_bytes()).await);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (421, Some("misdirected_host"))
    );
    for ok in [format!("localhost:{port}"), addr.clone(), format!("[::1]:{port}")] {
        let answer = raw(&s, get(ok.clone(), "").as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{ok}: {answer}");
    }
    let stream = format!(
        "GET /events/stream HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://attacker.example\r\nConnection: close\r\n\r\n"
    );
    let (status, _) = json_error(&raw(&s, stream.as_bytes()).await);
    assert_eq!(status, 403);

    let proxied = Server::start(ApiConfig {
        hosts: HostPolicy::Loopback {
            also: vec!["monitor.example".into()],
        },
        ..ApiConfig::default()
    })
    .await;
    let answer = raw(&proxied, get("monitor.example".into(), "").as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// Finding 5: paging from the largest id does not wrap round to the oldest events.
#[tokio::test]
async fn paging_from_the_largest_id_does_not_wrap() {
    let s = Server::start(ApiConfig::default()).await;
    let p = producer(ProducerKind::Loadgen, 1);
    s.send_all((1..=3).map(|i| exec(&p, i, 10, "/bin/true", "true")))
        .await;
    s.wait_stored(3).await;
    let (status, page) = s.get_json("/events?after=18446744073709551615&limit=2").await;
    assert_eq!(status, 200);
    assert_eq!(ids(&page), Vec::<u64>::new());
    assert_eq!(page["next_after"], u64::MAX);
}

/// Finding 6: two producers' loss reports of 2^63 saturate the totals instead of wrapping.
#[tokio::test]
async fn loss_totals_saturate() {
    let s = Server::start(ApiConfig::default()).await;
    for n in [1, 2] {
        s.send(Output::Loss {
            producer: producer(ProducerKind::Loadgen, n),
            loss: Loss {
                stage: LossStage::ProducerQueue,
                count: 1 << 63,
                first_seq: 1,
                last_seq: 1,
                total: 1 << 63,
            },
        })
        .await;
    }
    s.wait_stored(2).await;
    let (_, stats) = s.get_json("/stats").await;
    assert_eq!(stats["losses_by_stage"]["producer_queue"], u64::MAX, "{stats}");
    let metrics = s.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(&format!(
            "lpcmon_events_lost_total{{stage=\"producer_queue\"}} {}",
            u64::MAX
        )),
        "{metrics}"
    );
}

/// Finding 7: every error is the API's JSON, including undecodable paths and oversized
/// requests.
#[tokio::test]
async fn every_error_is_json() {
    let s = Server::start(ApiConfig::default()).await;
    let addr = host(&s);
    for path in [
        "/events/%FF",
        "/assets/%FF",
        "/assets/%c0%ae%c0%ae%2Fetc%2Fpasswd",
    ] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        let (status, _) = json_error(&raw(&s, request.as_bytes()).await);
        assert_eq!(status, 400, "{path}");
    }
    let long = format!(
        "GET /events?q={} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n",
        "a".repeat(9000)
    );
    assert_eq!(json_error(&raw(&s, long.as_bytes()).await).0, 414);
    let big = format!(
        "GET /events HTTP/1.1\r\nHost: {addr}\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "b".repeat(20_000)
    );
    assert_eq!(json_error(&raw(&s, big.as_bytes()).await).0, 431);
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET /events HTTP/1.1\r\nHost: {addr}\r\n{many}Connection: close\r\n\r\n");
    assert_eq!(json_error(&raw(&s, many.as_bytes()).await).0, 431);
}

/// Finding 11: a leading `+` is refused in ids; a non-UTF-8 `Last-Event-ID` is a 400 like
/// any other bad one.
#[tokio::test]
async fn plus_signs_and_undecodable_last_event_ids_are_refused() {
    let s = Server::start(ApiConfig::default()).await;
    for path in [
        "/events?after=+5",
        "/events/%2B1",
        "/events?pid=+1",
        "/events?limit=",
    ] {
        let (status, body) = s.get_json(path).await;
        assert_eq!(status, 400, "{path}: {body}");
    }
    for value in [&b"+3"[..], b"\xff\xfe", b"garbage", b""] {
        let r = s
            .client
            .get(s.url("/events/stream"))
            .header(
                "last-event-id",
                reqwest::header::HeaderValue::from_bytes(value).unwrap(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{value:?}");
    }
}

/// Finding 11: strict security headers on the dashboard, its assets and the API.
#[tokio::test]
async fn responses_carry_security_headers() {
    let s = Server::start(ApiConfig::default()).await;
    for path in ["/", "/assets/app.js", "/events", "/nope"] {
        let r = s.get(path).await;
        let h = r.headers();
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
            "{path}: {csp}"
        );
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
    }
}
