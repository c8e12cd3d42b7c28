//! The service's limits and policy.

use std::time::Duration;

/// How the HTTP service stores, streams and protects events.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Most events the store keeps.
    pub retain: usize,
    /// Most bytes the store keeps: the heap blocks of each event (its JSON, search text and
    /// the event itself), its slot, and what waits in the ingest channel.
    pub retain_bytes: usize,
    /// Most bytes the outputs waiting in the ingest channel may hold, when the port's
    /// dispatcher is given [`crate::AppState::ingest_budget`]; `None`: an eighth of
    /// `retain_bytes`. Past it, events are dropped and counted as `server_ingest` loss. What
    /// waits is counted against `retain_bytes`, so the store makes room for it.
    pub ingest_bytes: Option<usize>,
    /// When set, every route but `/healthz` and the static dashboard needs
    /// `Authorization: Bearer <token>`; `/events/stream` also takes `?token=`.
    pub token: Option<String>,
    /// How often an idle SSE stream sends a keep-alive comment: between one and two of these
    /// after its last frame (the timer is checked per period, not re-armed per event).
    pub keepalive: Duration,
    /// The reconnect delay SSE clients are told (`retry:`).
    pub sse_retry: Duration,
    /// Events the live broadcast holds for the slowest SSE client before it lags. This bounds
    /// per-client buffering; a client that lags is caught up from the store or told of a gap.
    pub broadcast_capacity: usize,
    /// Longest a live event may wait so that it leaves with others: every stream then wakes
    /// and writes once per group. The window is [`sse_coalesce_per_stream`] per open stream,
    /// up to this; under 1 ms, or with zero here, events leave as soon as ingest has handled
    /// what arrived with them.
    ///
    /// [`sse_coalesce_per_stream`]: ApiConfig::sse_coalesce_per_stream
    pub sse_coalesce: Duration,
    /// How much the coalescing window grows per open SSE stream: about what waking and
    /// writing one stream costs, a few times over (5 µs: 1,000 streams wait 5 ms).
    pub sse_coalesce_per_stream: Duration,
    /// Which `Host` (and `Origin`) values are answered.
    pub hosts: HostPolicy,
    /// How long a connection may take to send a request's headers (from its first byte, or
    /// from accept for the first request) before it is closed.
    pub header_read_timeout: Duration,
    /// How long a connection may stay with no byte read or written before it is closed. SSE
    /// streams send a keep-alive at most two `keepalive`s after their last frame, so with
    /// `keepalive` at most a third of this they are never idle by this measure. Checked every
    /// quarter of this, so a connection closes up to a quarter late.
    pub idle_timeout: Duration,
    /// Most HTTP connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Producers `/stats` remembers; the longest-idle disconnected one is forgotten first.
    /// Global totals are kept regardless.
    pub max_producers: usize,
    /// This server's host name in the fleet, given to its own events for the `host` filter.
    pub host_name: Option<std::sync::Arc<str>>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            retain: 100_000,
            retain_bytes: 64 * 1024 * 1024,
            ingest_bytes: None,
            token: None,
            keepalive: Duration::from_secs(15),
            sse_retry: Duration::from_secs(2),
            broadcast_capacity: 4096,
            sse_coalesce: Duration::from_millis(10),
            sse_coalesce_per_stream: Duration::from_micros(5),
            max_producers: 1024,
            hosts: HostPolicy::default(),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 512,
            host_name: None,
        }
    }
}

/// Which `Host` header values the service answers, against DNS rebinding: a web page whose
/// name an attacker re-points at 127.0.0.1 reaches a loopback server with its own name in
/// `Host`, so a loopback server must answer only loopback names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPolicy {
    /// Any `Host`: for a server on a routable address, which needs a token anyway.
    Any,
    /// `localhost`, `127.0.0.1` (any 127/8 address), `[::1]`, and these names (e.g. a reverse
    /// proxy's), with or without a port. Compared case-insensitively.
    Loopback { also: Vec<String> },
}

impl Default for HostPolicy {
    fn default() -> Self {
        HostPolicy::Loopback { also: Vec::new() }
    }
}
