//! The bearer token: required everywhere but `/healthz` and the static dashboard; `?token=`
//! on the stream only.

use lpcmon_api::ApiConfig;

use crate::common::*;

#[tokio::test]
async fn token_is_required_and_checked() {
    let s = Server::start(ApiConfig {
        token: Some("s3cret".into()),
        ..ApiConfig::default()
    })
    .await;
    let status = |r: &reqwest::Response| r.status().as_u16();

    for path in [
        "/events",
        "/events/1",
        "/stats",
        "/metrics",
        "/openapi.yaml",
        "/events/stream",
        "/nope",
    ] {
        let r = s.get(path).await;
        assert_eq!(status(&r), 401, "{path}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let body: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    let with = |path: &str, auth: &str| {
        s.client
            .get(s.url(path))
            .header("authorization", auth.to_owned())
            .send()
    };
    assert_eq!(status(&with("/events", "Bearer s3cret").await.unwrap()), 200);
    assert_eq!(status(&with("/stats", "bearer s3cret").await.unwrap()), 200);
    assert_eq!(status(&with("/events", "Bearer s3cret2").await.unwrap()), 401);
    assert_eq!(status(&with("/events", "Basic s3cret").await.unwrap()), 401);

    // Public: liveness and the static dashboard.
    assert_eq!(status(&s.get("/healthz").await), 200);
    assert_eq!(status(&s.get("/").await), 200);
    assert_eq!(status(&s.get("/assets/index.html").await), 200);

    // `?token=` is for EventSource, on the stream only.
    assert_eq!(status(&s.get("/events?token=s3cret").await), 401);
    assert_eq!(status(&s.get("/stats?token=s3cret").await), 401);
    assert_eq!(status(&s.get("/events/stream?token=wrong").await), 401);
    let sse = s.sse("/events/stream?token=s3cret&after=0", &[]).await;
    assert_eq!(sse.headers["content-type"], "text/event-stream");
    let sse = s
        .sse("/events/stream", &[("authorization", "Bearer s3cret")])
        .await;
    assert_eq!(sse.headers["content-type"], "text/event-stream");
}
