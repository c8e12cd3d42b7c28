//! `GET /events/stream`: replay, live delivery, gaps (evicted and lagged), keep-alive,
//! headers and compression.

use std::io::Read;
use std::time::Duration;

use lpcmon_api::ApiConfig;
use lpcmon_protocol::message::ProducerKind;
use tokio::time::timeout;

use crate::common::*;

fn small(retain: usize) -> ApiConfig {
    ApiConfig {
        retain,
        ..ApiConfig::default()
    }
}

/// Sends `n` events (seq `first..first+n`), alternating exec and exit.
async fn send_events(s: &Server, first: u64, n: u64) {
    let p = producer(ProducerKind::Loadgen, 7);
    for seq in first..first + n {
        let pid = 1000 + seq as u32;
        if seq % 2 == 0 {
            s.send(exit(&p, seq, pid, 0)).await;
        } else {
            s.send(exec(&p, seq, pid, "/bin/x", "x")).await;
        }
    }
}

#[tokio::test]
async fn replays_from_last_event_id_then_goes_live_without_duplicates() {
    let s = Server::start(ApiConfig::default()).await;
    send_events(&s, 1, 5).await;
    s.wait_stored(5).await;

    let mut sse = s.sse("/events/stream?after=1", &[("last-event-id", "2")]).await;
    assert_eq!(sse.headers["content-type"], "text/event-stream");
    assert_eq!(sse.headers["cache-control"], "no-cache");
    assert_eq!(sse.headers["x-accel-buffering"], "no");
    let first = sse.frame(WAIT).await.unwrap();
    assert_eq!(first.retry.as_deref(), Some("2000"));
    for id in 3..=5 {
        let f = sse.event().await;
        assert_eq!(f.id(), id, "Last-Event-ID wins over ?after=");
        assert_eq!(f.json()["id"], id);
        assert_eq!(f.event.as_deref(), f.json()["kind"].as_str());
    }
    send_events(&s, 6, 3).await;
    for id in 6..=8 {
        assert_eq!(sse.event().await.id(), id);
    }
    // Nothing more, in particular no repeat of a replayed event.
    assert!(sse.frame(Duration::from_millis(300)).await.is_none());

    // `?after=` alone, with a filter, replays and follows only what matches.
    let mut exits = s.sse("/events/stream?after=0&kind=process.exit", &[]).await;
    for id in [2, 4, 6, 8] {
        assert_eq!(exits.event().await.id(), id);
    }
    send_events(&s, 9, 2).await;
    assert_eq!(exits.event().await.id(), 10);
}

#[tokio::test]
async fn a_long_replay_from_shared_blocks_is_whole_and_in_order() {
    // Past two whole replay blocks (256 ids each) and into an incomplete third, which each
    // stream renders itself: all of it reads back as whole frames in id order.
    const EVENTS: u64 = 600;
    let s = Server::start(ApiConfig::default()).await;
    send_events(&s, 1, EVENTS).await;
    s.wait_stored(EVENTS).await;
    let mut all = s.sse("/events/stream?after=0", &[]).await;
    let mut exits = s.sse("/events/stream?after=100&kind=process.exit", &[]).await;
    let mut again = s.sse("/events/stream", &[("last-event-id", "255")]).await;
    for id in 1..=EVENTS {
        let frame = all.event().await;
        assert_eq!((frame.id(), frame.json()["id"].as_u64()), (id, Some(id)));
        assert_eq!(frame.event.as_deref(), frame.json()["kind"].as_str());
    }
    for id in (102..=EVENTS).step_by(2) {
        let frame = exits.event().await;
        assert_eq!((frame.id(), frame.event.as_deref()), (id, Some("process.exit")));
    }
    for id in 256..=EVENTS {
        assert_eq!(again.event().await.id(), id);
    }
    send_events(&s, EVENTS + 1, 2).await;
    assert_eq!(all.event().await.id(), EVENTS + 1);
    assert_eq!(exits.event().await.id(), EVENTS + 2);
    assert_eq!(again.event().await.id(), EVENTS + 1);
}

#[tokio::test]
async fn without_a_position_the_stream_starts_live() {
    let s = Server::start(ApiConfig::default()).await;
    send_events(&s, 1, 3).await;
    s.wait_stored(3).await;
    let mut sse = s.sse("/events/stream", &[]).await;
    send_events(&s, 4, 1).await;
    assert_eq!(sse.event().await.id(), 4);
    // A position from before a restart (newer than anything stored) does not silence a client.
    let mut future = s.sse("/events/stream", &[("last-event-id", "1000")]).await;
    send_events(&s, 5, 1).await;
    assert_eq!(future.event().await.id(), 5);
}

#[tokio::test]
async fn resuming_from_evicted_events_reports_an_exact_gap() {
    let s = Server::start(small(5)).await;
    send_events(&s, 1, 20).await;
    s.wait_stored(20).await;

    let mut sse = s.sse("/events/stream?after=3", &[]).await;
    let gap = sse.event().await;
    assert_eq!(gap.event.as_deref(), Some("gap"));
    assert_eq!(gap.json(), serde_json::json!({"missed": 12, "reason": "evicted"}));
    assert_eq!(gap.id(), 15, "a gap's id is the last id it covers");
    for id in 16..=20 {
        assert_eq!(sse.event().await.id(), id);
    }

    // Filtered: the evicted ids can no longer be matched, so all of them count.
    let mut exits = s.sse("/events/stream?after=0&kind=process.exit", &[]).await;
    let gap = exits.event().await;
    assert_eq!(gap.json(), serde_json::json!({"missed": 15, "reason": "evicted"}));
    for id in [16, 18, 20] {
        assert_eq!(exits.event().await.id(), id);
    }

    let (_, stats) = s.get_json("/stats").await;
    assert_eq!(stats["sse"]["gaps"]["evicted"], 2);
    assert_eq!(stats["sse"]["missed"]["evicted"], 27);
    assert_eq!(stats["sse"]["clients"], 2);
    drop((sse, exits));
}

#[tokio::test]
async fn a_slow_client_is_told_exactly_what_it_missed() {
    // A tiny live buffer and store, and events big enough that the socket buffers fill long
    // before the producer is done, so the stream really falls behind.
    slow_client_is_told_exactly_what_it_missed(ApiConfig {
        retain: 16,
        broadcast_capacity: 4,
        ..ApiConfig::default()
    })
    .await;
}

#[tokio::test]
async fn a_slow_client_is_told_exactly_what_it_missed_when_events_are_coalesced() {
    // As above, with every event waiting for a coalescing window, and bursts of several
    // events at a time in the broadcast.
    slow_client_is_told_exactly_what_it_missed(ApiConfig {
        retain: 16,
        broadcast_capacity: 16,
        sse_coalesce: Duration::from_millis(5),
        sse_coalesce_per_stream: Duration::from_millis(5),
        ..ApiConfig::default()
    })
    .await;
}

async fn slow_client_is_told_exactly_what_it_missed(config: ApiConfig) {
    let s = Server::start(config).await;
    let p = producer(ProducerKind::Loadgen, 9);
    let big = "x".repeat(64 * 1024);
    const TOTAL: u64 = 300;

    let mut sse = s.sse("/events/stream", &[]).await;
    for seq in 1..=TOTAL {
        s.send(exec(&p, seq, seq as u32, "/bin/big", &big)).await;
    }
    s.wait_stored(TOTAL).await;

    // Now read everything: every id arrives once, in order, or is inside a gap.
    let mut next = 1;
    let mut lagged = 0;
    while next <= TOTAL {
        let frame = timeout(WAIT, sse.event()).await.expect("stream stalled");
        if frame.event.as_deref() == Some("gap") {
            let gap = frame.json();
            assert_eq!(gap["reason"], "lagged");
            let missed = gap["missed"].as_u64().unwrap();
            next += missed;
            lagged += missed;
            assert_eq!(frame.id(), next - 1);
        } else {
            assert_eq!(frame.id(), next);
            next += 1;
        }
    }
    assert_eq!(next, TOTAL + 1);
    assert!(
        lagged > 0,
        "the client never lagged; the test did not test anything"
    );
    let (_, stats) = s.get_json("/stats").await;
    assert_eq!(stats["sse"]["missed"]["lagged"], lagged);
}

#[tokio::test]
async fn coalesced_events_leave_together_after_the_window_whole_and_in_order() {
    const WINDOW: Duration = Duration::from_millis(200);
    const EVENTS: u64 = 100;
    let s = Server::start(ApiConfig {
        sse_coalesce: WINDOW,
        // One open stream is enough for the whole window.
        sse_coalesce_per_stream: WINDOW,
        ..ApiConfig::default()
    })
    .await;
    let mut all = s.sse("/events/stream", &[]).await;
    let mut execs = s.sse("/events/stream?kind=process.exec", &[]).await;
    for sse in [&mut all, &mut execs] {
        assert_eq!(sse.frame(WAIT).await.unwrap().retry.as_deref(), Some("2000"));
    }
    let chunks_before = (all.chunks, execs.chunks);

    let sent = tokio::time::Instant::now();
    send_events(&s, 1, EVENTS).await;
    let first = all.event().await;
    assert!(
        sent.elapsed() >= WINDOW,
        "the first event left {:?} after it was sent, inside the {WINDOW:?} window",
        sent.elapsed()
    );
    assert_eq!(first.id(), 1);
    for id in 2..=EVENTS {
        let frame = all.event().await;
        assert_eq!(frame.id(), id, "whole frames, in order");
        assert_eq!(frame.json()["id"], id);
    }
    for id in (1..=EVENTS).step_by(2) {
        let frame = execs.event().await;
        assert_eq!(frame.id(), id, "a filtered stream skips, in order");
        assert_eq!(frame.event.as_deref(), Some("process.exec"));
    }
    // Sent in one or a few bursts (one per window), each written as one chunk (or split by
    // the client's reads), not one write per event.
    let (all_chunks, exec_chunks) = (all.chunks - chunks_before.0, execs.chunks - chunks_before.1);
    assert!(
        all_chunks <= EVENTS / 4,
        "{all_chunks} chunks for {EVENTS} events"
    );
    assert!(
        exec_chunks <= EVENTS / 8,
        "{exec_chunks} chunks for {} events",
        EVENTS / 2
    );
    assert!(
        all.frame(Duration::from_millis(300)).await.is_none(),
        "nothing twice"
    );
}

#[tokio::test]
async fn keepalive_comments_arrive_on_an_idle_stream() {
    let s = Server::start(ApiConfig {
        keepalive: Duration::from_millis(200),
        ..ApiConfig::default()
    })
    .await;
    let mut sse = s.sse("/events/stream", &[]).await;
    let mut comments = 0;
    for _ in 0..10 {
        let frame = sse
            .frame(Duration::from_secs(2))
            .await
            .expect("nothing on an idle stream");
        comments += frame.comments.iter().filter(|c| *c == "keep-alive").count();
        if comments >= 2 {
            break;
        }
    }
    assert!(comments >= 2);
}

#[tokio::test]
async fn the_stream_is_never_compressed_but_pages_are() {
    let s = Server::start(ApiConfig::default()).await;
    send_events(&s, 1, 30).await;
    s.wait_stored(30).await;

    let page = s
        .client
        .get(s.url("/events"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(page.headers()["content-encoding"], "gzip");
    let compressed = page.bytes().await.unwrap();
    let mut json = String::new();
    flate2::read::GzDecoder::new(&compressed[..])
        .read_to_string(&mut json)
        .unwrap();
    let page: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(ids(&page).len(), 30);

    let mut sse = s
        .sse("/events/stream?after=28", &[("accept-encoding", "gzip")])
        .await;
    assert!(sse.headers.get("content-encoding").is_none());
    assert_eq!(sse.event().await.id(), 29);
    assert_eq!(sse.event().await.id(), 30);
    send_events(&s, 31, 1).await;
    assert_eq!(
        sse.event().await.id(),
        31,
        "live events arrive at once, not buffered"
    );
}

#[tokio::test]
async fn closing_streams_ends_them_so_shutdown_can_finish() {
    let s = Server::start(ApiConfig::default()).await;
    let mut open = s.sse("/events/stream", &[]).await;
    assert_eq!(open.frame(WAIT).await.unwrap().retry.as_deref(), Some("2000"));
    s.state.close_streams();
    timeout(WAIT, async {
        while open.frame(Duration::from_secs(60)).await.is_some() {}
    })
    .await
    .expect("the stream did not end");
    let (_, stats) = s.get_json("/stats").await;
    assert_eq!(stats["sse"]["clients"], 0);
    // A stream opened after shutdown began ends at once too.
    let mut late = s.sse("/events/stream", &[]).await;
    timeout(WAIT, async {
        while late.frame(Duration::from_secs(60)).await.is_some() {}
    })
    .await
    .expect("a late stream did not end");
}
