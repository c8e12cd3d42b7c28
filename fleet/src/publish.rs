//! The origin's publisher: every stored event of this server, in id order, to the stream.
//!
//! At least once: up to `window` publishes await their JetStream acknowledgement, in order,
//! and `acked` (every id up to it acknowledged or counted lost) only moves on an
//! acknowledgement. Any failure (NATS down, a node down, the stream deleted, an ack timeout)
//! drops what is in flight and publishes again from `acked + 1`; the message id makes
//! JetStream drop what it already had. Ids the store evicted before they were published are
//! counted once as `publish` loss, and that loss record, being a stored event, is published in
//! its turn.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::Publish, context::PublishAckFuture};
use bytes::Bytes;
use lpcmon_api::{AppState, Injected, StoredEvent};
use serde::Serialize;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::config::PublishConfig;
use crate::notice::Notice;
use crate::source::EventSource;
use crate::stream;

/// How long a publish may wait for its acknowledgement before everything in flight is sent
/// again.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// How often lag is measured and the host's status is published.
const STATUS_PERIOD: Duration = Duration::from_secs(1);
/// How long to wait for new events when caught up.
const IDLE_POLL: Duration = Duration::from_millis(5);
/// Wait between attempts while NATS or the stream is unusable.
const BACKOFF: Duration = Duration::from_millis(500);

/// The core-NATS subject of a host's status (not stored in the stream).
pub fn status_subject(host: &str) -> String {
    format!("lpcmon-status.{host}")
}

/// What an origin says about itself every [`STATUS_PERIOD`], for the central's hosts panel.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct HostStatus {
    pub host: String,
    pub server_instance: String,
    pub lag_ids: u64,
    pub lag_seconds: f64,
    pub nats_reachable: bool,
}

/// Starts the publisher. It runs until the runtime stops.
pub fn spawn_publisher(
    state: AppState,
    source: Arc<dyn EventSource>,
    config: PublishConfig,
) -> JoinHandle<()> {
    tokio::spawn(run(state, source, config))
}

struct Publisher {
    state: AppState,
    source: Arc<dyn EventSource>,
    config: PublishConfig,
    instance: String,
    /// Every id up to this one is acknowledged by NATS or counted lost.
    acked: u64,
    /// The next id to read from the store.
    next: u64,
    /// The position last saved with the store.
    saved: u64,
    /// Sent and not yet acknowledged, oldest first (at most `window`).
    pending: VecDeque<Arc<StoredEvent>>,
    notice: Notice,
    reachable: Arc<AtomicBool>,
}

async fn run(state: AppState, source: Arc<dyn EventSource>, config: PublishConfig) {
    let reachable = Arc::new(AtomicBool::new(false));
    state.update_fleet(|f| {
        f.publish = Some(lpcmon_api::PublishReport {
            host: config.host.clone(),
            stream: config.stream.clone(),
            ..Default::default()
        })
    });
    // A restart with the same database resumes where the last run stood (same instance, same
    // ids); ids it evicted meanwhile are counted below, once.
    let acked = source.saved_position();
    if acked > 0 {
        info!(acked, "publish: resuming after the saved position");
    }
    let mut p = Publisher {
        instance: state.server_instance().to_owned(),
        notice: Notice::new(state.clone()),
        state,
        source,
        config,
        acked,
        next: acked + 1,
        saved: acked,
        pending: VecDeque::new(),
        reachable: reachable.clone(),
    };
    let events = p.state.clone();
    let client = match p
        .config
        .nats
        .connect("lpcmon publisher", connection_events(events, reachable))
        .await
    {
        Ok(client) => client,
        Err(e) => {
            p.notice.set(format!("publishing to NATS is off: {e}"));
            return;
        }
    };
    let js = jetstream::new(client.clone());
    loop {
        match stream::ensure(&js, &p.config.stream, Some(p.config.replicas)).await {
            Ok(_) => {}
            Err(e) => {
                // The store goes on evicting while NATS is away: count it now, not on return.
                p.account_evicted().await;
                p.report_lag(&client).await;
                let advice = if e.is_transient() {
                    "retrying; events wait in the store"
                } else {
                    "fix or delete the stream, or choose another with --nats-stream; retrying every 10s"
                };
                p.notice.set(format!("publish: {e}: {advice}"));
                tokio::time::sleep(if e.is_transient() {
                    BACKOFF
                } else {
                    Duration::from_secs(10)
                })
                .await;
                continue;
            }
        }
        if let Err(why) = p.publish_until_failure(&js, &client).await {
            p.notice.set(format!(
                "publish: {why}; publishing again from id {} once NATS answers",
                p.acked + 1
            ));
            p.account_evicted().await;
            tokio::time::sleep(BACKOFF).await;
        }
    }
}

fn connection_events(
    state: AppState,
    reachable: Arc<AtomicBool>,
) -> impl Fn(async_nats::Event) + Send + Sync {
    move |event| {
        match &event {
            async_nats::Event::Connected => {
                info!("publish: connected to NATS");
                reachable.store(true, Ordering::Relaxed);
            }
            async_nats::Event::Disconnected => {
                warn!("publish: disconnected from NATS, reconnecting");
                reachable.store(false, Ordering::Relaxed);
            }
            other => warn!(event = %other, "publish: NATS connection event"),
        }
        let up = reachable.load(Ordering::Relaxed);
        state.update_fleet(|f| {
            if let Some(p) = f.publish.as_mut() {
                p.nats_reachable = up;
            }
        });
    }
}

impl Publisher {
    /// Publishes until something fails; returns why. Events sent but not acknowledged stay in
    /// `pending` and are sent again first next time: they may be in the stream already (an
    /// ack lost with the connection), so they are never counted lost, and the message id lets
    /// JetStream drop the copy.
    async fn publish_until_failure(
        &mut self,
        js: &jetstream::Context,
        client: &async_nats::Client,
    ) -> Result<(), String> {
        let mut in_flight: VecDeque<PublishAckFuture> = VecDeque::new();
        let mut last_status = Instant::now() - STATUS_PERIOD;
        let mut cleared = false;
        let resend: Vec<Arc<StoredEvent>> = self.pending.iter().cloned().collect();
        if !resend.is_empty() {
            let n = resend.len() as u64;
            self.state.update_fleet(|f| {
                if let Some(p) = f.publish.as_mut() {
                    p.retries += n;
                }
            });
            info!(
                events = n,
                first_id = resend[0].id,
                "publish: sending again what was not acknowledged"
            );
        }
        for event in resend {
            in_flight.push_back(self.send(js, &event).await?);
        }
        loop {
            if last_status.elapsed() >= STATUS_PERIOD {
                last_status = Instant::now();
                self.report_lag(client).await;
            }
            self.account_evicted().await;
            let room = self.config.window.saturating_sub(self.pending.len());
            let mut sent = 0;
            if room > 0 {
                for event in self.source.events_after(self.next - 1, room) {
                    // Evicted between the bounds and this read, or a hole.
                    self.skip_to(event.id).await;
                    self.next = event.id + 1;
                    if !self.is_local(&event) {
                        // An imported event: its origin publishes it, this server never does.
                        if self.pending.is_empty() {
                            self.acked = event.id;
                        }
                        continue;
                    }
                    // Pending before it is sent: a failed send is sent again, never skipped.
                    self.pending.push_back(event.clone());
                    in_flight.push_back(self.send(js, &event).await?);
                    sent += 1;
                }
            }
            let Some(ack) = in_flight.pop_front() else {
                if sent == 0 {
                    tokio::time::sleep(IDLE_POLL).await;
                }
                continue;
            };
            let id = self.pending.front().map_or(0, |e| e.id);
            match tokio::time::timeout(ACK_TIMEOUT, ack).await {
                Ok(Ok(ack)) => {
                    self.pending.pop_front();
                    self.acked = if self.pending.is_empty() {
                        self.next - 1
                    } else {
                        id
                    };
                    if !cleared {
                        cleared = true;
                        self.notice.clear();
                    }
                    let acked = self.acked;
                    self.state.update_fleet(|f| {
                        if let Some(p) = f.publish.as_mut() {
                            p.acks += 1;
                            p.duplicates += u64::from(ack.duplicate);
                            p.acked_id = acked;
                        }
                    });
                }
                Ok(Err(e)) => return Err(format!("NATS refused id {id}: {e}")),
                Err(_) => return Err(format!("no acknowledgement for id {id} within {ACK_TIMEOUT:?}")),
            }
        }
    }

    async fn send(&self, js: &jetstream::Context, event: &StoredEvent) -> Result<PublishAckFuture, String> {
        js.send_publish(self.subject(event), self.message(event))
            .await
            .map_err(|e| format!("cannot publish id {}: {e}", event.id))
    }

    /// Counts ids not yet sent that the store no longer holds as `publish` loss, once, and
    /// moves past them.
    async fn account_evicted(&mut self) {
        if let (Some(oldest), _) = self.source.bounds() {
            self.skip_to(oldest).await;
        }
    }

    /// Moves `next` up to `held`, the oldest id the store still holds from `next` on, counting
    /// the ids between (evicted before they were sent) as `publish` loss. Holes in the ids (a
    /// crash's skipped reservation, a write already counted as `store` loss) were never events.
    async fn skip_to(&mut self, held: u64) {
        if held <= self.next {
            return;
        }
        let (first, last) = (self.next, held - 1);
        let holes = self.source.ids_never_stored(first, last);
        let evicted = (last - first + 1).saturating_sub(holes);
        if evicted > 0 {
            self.lost(first, last, evicted).await;
        }
        self.next = held;
        if self.pending.is_empty() {
            self.acked = self.next - 1;
        }
    }

    fn is_local(&self, event: &StoredEvent) -> bool {
        event.host.as_deref() == Some(self.config.host.as_str())
    }

    fn subject(&self, event: &StoredEvent) -> String {
        format!("lpcmon.{}.{}", self.config.host, event.kind.name())
    }

    fn message(&self, event: &StoredEvent) -> Publish {
        Publish::build()
            .message_id(format!("{}/{}/{}", self.config.host, self.instance, event.id))
            .payload(Bytes::copy_from_slice(event.json.get().as_bytes()))
    }

    async fn lost(&mut self, first_id: u64, last_id: u64, count: u64) {
        debug!(first_id, last_id, count, "publish loss");
        // The ingest task counts it and stores the loss record; waiting here keeps the order.
        if self
            .state
            .injector()
            .send(Injected::PublishLoss {
                first_id,
                last_id,
                count,
            })
            .await
            .is_err()
        {
            warn!(
                first_id,
                last_id, "publish loss not recorded: the ingest task has stopped"
            );
        }
    }

    /// Measures the lag, shows it in `/stats` and tells the central servers.
    async fn report_lag(&mut self, client: &async_nats::Client) {
        if self.acked > self.saved {
            self.source.save_position(self.acked);
            self.saved = self.acked;
        }
        let (_, newest) = self.source.bounds();
        let lag_ids = newest.unwrap_or(0).saturating_sub(self.acked);
        let lag_seconds = match self.source.events_after(self.acked, 1).first() {
            Some(oldest) if lag_ids > 0 => received_age(oldest).unwrap_or(0.0),
            _ => 0.0,
        };
        let reachable = self.reachable.load(Ordering::Relaxed);
        let acked = self.acked;
        self.state.update_fleet(|f| {
            if let Some(p) = f.publish.as_mut() {
                p.lag_ids = lag_ids;
                p.lag_seconds = lag_seconds;
                p.nats_reachable = reachable;
                p.acked_id = acked;
            }
        });
        if !reachable {
            return;
        }
        let status = HostStatus {
            host: self.config.host.clone(),
            server_instance: self.instance.clone(),
            lag_ids,
            lag_seconds,
            nats_reachable: reachable,
        };
        if let Ok(body) = serde_json::to_vec(&status) {
            // Best effort: a status is superseded by the next one a second later.
            let _ = client
                .publish(status_subject(&self.config.host), body.into())
                .await;
        }
    }
}

/// Seconds since the event was received, from its `received` field.
fn received_age(event: &StoredEvent) -> Option<f64> {
    #[derive(serde::Deserialize)]
    struct Received<'a> {
        #[serde(borrow)]
        received: std::borrow::Cow<'a, str>,
    }
    let r: Received<'_> = serde_json::from_str(event.json.get()).ok()?;
    let at = time::OffsetDateTime::parse(&r.received, &time::format_description::well_known::Rfc3339).ok()?;
    Some(((time::OffsetDateTime::now_utc() - at).as_seconds_f64()).max(0.0))
}
