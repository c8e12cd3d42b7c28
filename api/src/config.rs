//! The service's limits and policy.

use std::time::Duration;

/// How the HTTP service stores, streams and protects events.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Most events the store keeps.
    pub retain: usize,
    /// Most bytes the store keeps (each event's JSON, search text and slot).
    pub retain_bytes: usize,
    /// When set, every route but `/healthz` and the static dashboard needs
    /// `Authorization: Bearer <token>`; `/events/stream` also takes `?token=`.
    pub token: Option<String>,
    /// How often an idle SSE stream sends a keep-alive comment.
    pub keepalive: Duration,
    /// The reconnect delay SSE clients are told (`retry:`).
    pub sse_retry: Duration,
    /// Events the live broadcast holds for the slowest SSE client before it lags. This bounds
    /// per-client buffering; a client that lags is caught up from the store or told of a gap.
    pub broadcast_capacity: usize,
    /// Producers `/stats` remembers; the longest-idle disconnected one is forgotten first.
    /// Global totals are kept regardless.
    pub max_producers: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            retain: 100_000,
            retain_bytes: 64 * 1024 * 1024,
            token: None,
            keepalive: Duration::from_secs(15),
            sse_retry: Duration::from_secs(2),
            broadcast_capacity: 4096,
            max_producers: 1024,
        }
    }
}
