//! The central importer: a durable pull consumer on the stream, into this server's store.
//!
//! A fetched batch is checked, handed to the ingest task (which gives each event this server's
//! next id and its `origin`, and with a durable store commits the raised marks in the same
//! transaction as the events), and only once the events are stored (committed, with a durable
//! store) are the messages acknowledged. A redelivery (after a crash, an ack lost, a slow ack)
//! is at or below its origin instance's mark and is dropped, so each origin event is stored
//! once.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::{self, Message};
use futures_util::StreamExt;
use lpcmon_api::{AppState, ImportDone, Imported, Injected, Origin, SubscribeReport};
use serde_json::{Map, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::SubscribeConfig;
use crate::marks::Marks;
use crate::notice::Notice;
use crate::publish::HostStatus;
use crate::stream;

/// How long JetStream waits for an acknowledgement before redelivering.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// How long one fetch waits for messages.
const FETCH_WAIT: Duration = Duration::from_secs(1);
const BACKOFF: Duration = Duration::from_millis(500);
/// How long an import may wait for the store to commit it before the batch is left
/// unacknowledged (NATS redelivers it; the marks drop what was stored meanwhile).
const COMMIT_WAIT: Duration = Duration::from_secs(20);

/// Starts the importer, with the marks the state's store restored. It runs until the runtime
/// stops.
pub fn spawn_subscriber(state: AppState, config: SubscribeConfig) -> JoinHandle<()> {
    let marks = Marks::restored(state.restored_origin_marks());
    tokio::spawn(run(state, config, marks))
}

/// Why a message was not imported.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Import(Origin, Map<String, Value>),
    /// This server's own event.
    Own,
    Duplicate,
    HostMismatch(String),
    Malformed(String),
}

/// `lpcmon.<host>.<kind>` → (host, kind); kinds have dots of their own.
fn parse_subject(subject: &str) -> Option<(&str, &str)> {
    let rest = subject.strip_prefix("lpcmon.")?;
    let (host, kind) = rest.split_once('.')?;
    (!host.is_empty() && !kind.is_empty()).then_some((host, kind))
}

/// `<host>/<server-instance>/<id>`.
fn parse_msg_id(id: &str) -> Option<(&str, &str, u64)> {
    let mut parts = id.rsplitn(3, '/');
    let origin_id = parts.next()?.parse().ok()?;
    let instance = parts.next()?;
    let host = parts.next()?;
    Some((host, instance, origin_id))
}

/// Judges one message (pure: the marks are read, not changed).
fn judge(
    subject: &str,
    msg_id: Option<&str>,
    payload: &[u8],
    own_host: &str,
    mark: impl Fn(&str) -> u64,
) -> Verdict {
    let Some((subject_host, subject_kind)) = parse_subject(subject) else {
        return Verdict::Malformed(format!("subject {subject:?} is not lpcmon.<host>.<kind>"));
    };
    let Some((host, instance, id)) = msg_id.and_then(parse_msg_id) else {
        return Verdict::Malformed(format!("no Nats-Msg-Id <host>/<instance>/<id> on {subject}"));
    };
    if host != subject_host {
        return Verdict::HostMismatch(format!("subject host {subject_host:?} but origin host {host:?}"));
    }
    if host == own_host {
        return Verdict::Own;
    }
    if id <= mark(instance) {
        return Verdict::Duplicate;
    }
    let json: Map<String, Value> = match serde_json::from_slice(payload) {
        Ok(json) => json,
        Err(e) => return Verdict::Malformed(format!("{subject}: not an event object: {e}")),
    };
    if json.get("kind").and_then(Value::as_str) != Some(subject_kind) {
        return Verdict::Malformed(format!("{subject}: the event's kind is not the subject's"));
    }
    if lpcmon_api::Kind::parse(subject_kind).is_none() {
        return Verdict::Malformed(format!("{subject}: unknown kind"));
    }
    Verdict::Import(
        Origin {
            host: host.to_owned(),
            server_instance: instance.to_owned(),
            id,
        },
        json,
    )
}

struct Subscriber {
    state: AppState,
    config: SubscribeConfig,
    marks: Marks,
    notice: Notice,
    /// Whether the consumer was already made again for this process ([`Subscriber::rewind`]).
    rewound: bool,
    deliver: DeliverPolicy,
    /// When the stream read so far was created: a different time is a stream deleted and made
    /// again, whose sequence numbers start over.
    stream_created: Option<time::OffsetDateTime>,
}

async fn run(state: AppState, config: SubscribeConfig, marks: Marks) {
    state.update_fleet(|f| {
        f.subscribe = Some(SubscribeReport {
            stream: config.stream.clone(),
            consumer: config.consumer.clone(),
            ..SubscribeReport::default()
        })
    });
    let mut s = Subscriber {
        notice: Notice::new(state.clone()),
        state,
        config,
        marks,
        rewound: false,
        stream_created: None,
        deliver: DeliverPolicy::All,
    };
    let events = s.state.clone();
    let client = match s
        .config
        .nats
        .connect("lpcmon subscriber", connection_events(events))
        .await
    {
        Ok(client) => client,
        Err(e) => {
            s.notice.set(format!("subscribing from NATS is off: {e}"));
            return;
        }
    };
    tokio::spawn(host_statuses(
        s.state.clone(),
        client.clone(),
        s.config.host.clone(),
    ));
    let js = jetstream::new(client);
    loop {
        let consumer = match s.consumer(&js).await {
            Ok(consumer) => consumer,
            Err(why) => {
                s.notice.set(format!("subscribe: {why}; retrying"));
                tokio::time::sleep(BACKOFF).await;
                continue;
            }
        };
        if let Err(why) = s.import_until_failure(&consumer).await {
            s.notice
                .set(format!("subscribe: {why}; resuming from the durable consumer"));
            tokio::time::sleep(BACKOFF).await;
        }
    }
}

fn connection_events(state: AppState) -> impl Fn(async_nats::Event) + Send + Sync {
    move |event| {
        let up = match &event {
            async_nats::Event::Connected => {
                info!("subscribe: connected to NATS");
                Some(true)
            }
            async_nats::Event::Disconnected => {
                warn!("subscribe: disconnected from NATS, reconnecting");
                Some(false)
            }
            other => {
                warn!(event = %other, "subscribe: NATS connection event");
                None
            }
        };
        if let Some(up) = up {
            state.update_fleet(|f| {
                if let Some(s) = f.subscribe.as_mut() {
                    s.nats_reachable = up;
                }
            });
        }
    }
}

impl Subscriber {
    async fn consumer(&mut self, js: &jetstream::Context) -> Result<PullConsumer, String> {
        let stream = match stream::ensure(js, &self.config.stream, None).await {
            Ok(Some(stream)) => stream,
            Ok(None) => {
                return Err(format!(
                    "stream {} does not exist yet: waiting for a publisher to create it",
                    self.config.stream
                ));
            }
            Err(e) => return Err(e.to_string()),
        };
        if !self.rewound {
            self.deliver = self.rewind(&stream).await;
            self.rewound = true;
        }
        let created = stream.cached_info().created;
        if self.stream_created.is_some_and(|before| before != created) {
            // The stream was deleted and made again (by a publisher) under this process: a
            // start sequence of the old stream would skip the new one's first messages, so
            // read it from its start; the marks drop whatever was stored already.
            warn!(
                stream = %self.config.stream,
                "subscribe: the stream was deleted and created again; reading the new one from its \
                 start (what the old one held and this server had not imported is gone with it)"
            );
            self.deliver = DeliverPolicy::All;
        }
        self.stream_created = Some(created);
        stream
            .get_or_create_consumer(
                &self.config.consumer,
                pull::Config {
                    durable_name: Some(self.config.consumer.clone()),
                    ack_policy: AckPolicy::Explicit,
                    deliver_policy: self.deliver,
                    ack_wait: ACK_WAIT,
                    max_ack_pending: (self.config.batch * 4) as i64,
                    filter_subject: stream::SUBJECTS.to_owned(),
                    ..pull::Config::default()
                },
            )
            .await
            .map_err(|e| format!("cannot open consumer {}: {e}", self.config.consumer))
    }

    /// Where this process starts reading. Nothing stored yet (a new or in-memory store): the
    /// stream's start, whatever the durable consumer acknowledged for a store that no longer
    /// exists. Otherwise right after the consumer's acknowledgement floor: what a killed run
    /// had fetched but not acknowledged comes again now, not after the ack wait, and the marks
    /// drop what of it was stored. The consumer is made again either way.
    async fn rewind(&self, stream: &jetstream::stream::Stream) -> DeliverPolicy {
        let name = &self.config.consumer;
        let deliver = if self.marks.is_empty() {
            info!(consumer = %name, "subscribe: empty store, reading the stream from its start");
            DeliverPolicy::All
        } else {
            match stream.consumer_info(name).await {
                Ok(info) => {
                    let start_sequence = info.ack_floor.stream_sequence + 1;
                    info!(consumer = %name, start_sequence, "subscribe: resuming after the last acknowledged message");
                    DeliverPolicy::ByStartSequence { start_sequence }
                }
                Err(e) => {
                    info!(consumer = %name, error = %e, "subscribe: no consumer to resume; reading the stream from its start (the marks drop what is stored)");
                    DeliverPolicy::All
                }
            }
        };
        if let Err(e) = stream.delete_consumer(name).await {
            tracing::debug!(error = %e, "no consumer to delete");
        }
        deliver
    }

    async fn import_until_failure(&mut self, consumer: &PullConsumer) -> Result<(), String> {
        loop {
            let mut batch = consumer
                .fetch()
                .max_messages(self.config.batch)
                .expires(FETCH_WAIT)
                .messages()
                .await
                .map_err(|e| format!("cannot fetch: {e}"))?;
            let mut messages = Vec::new();
            while let Some(message) = batch.next().await {
                messages.push(message.map_err(|e| format!("fetch failed: {e}"))?);
            }
            if messages.is_empty() {
                continue;
            }
            self.import(messages).await?;
            self.notice.clear();
        }
    }

    /// Stores a batch, raises the marks, then acknowledges every message of it.
    async fn import(&mut self, messages: Vec<Message>) -> Result<(), String> {
        let mut report = SubscribeReport::default();
        let mut events = Vec::new();
        let mut raised: BTreeMap<String, u64> = BTreeMap::new();
        for m in &messages {
            let msg_id = m
                .headers
                .as_ref()
                .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                .map(|v| v.as_str());
            let mark = |instance: &str| {
                raised
                    .get(instance)
                    .copied()
                    .unwrap_or_else(|| self.marks.get(instance))
            };
            match judge(&m.subject, msg_id, &m.payload, &self.config.host, mark) {
                Verdict::Import(origin, json) => {
                    raised.insert(origin.server_instance.clone(), origin.id);
                    events.push(Imported { origin, json });
                }
                Verdict::Own => report.own_skipped += 1,
                Verdict::Duplicate => report.duplicates += 1,
                Verdict::HostMismatch(why) => {
                    warn!(subject = %m.subject, "subscribe: refused: {why}");
                    report.refused_host_mismatch += 1;
                }
                Verdict::Malformed(why) => {
                    warn!(subject = %m.subject, "subscribe: refused: {why}");
                    report.refused_malformed += 1;
                }
            }
        }
        if !events.is_empty() {
            let (done, stored) = oneshot::channel();
            self.state
                .injector()
                .send(Injected::Import { events, done })
                .await
                .map_err(|_| "the ingest task has stopped".to_owned())?;
            let ImportDone {
                stored,
                through_id,
                refused,
            } = stored
                .await
                .map_err(|_| "the ingest task has stopped".to_owned())?;
            if refused {
                return Err(
                    "the store cannot write and has no ids left (see /stats); leaving the batch \
                     unacknowledged, to be delivered again"
                        .to_owned(),
                );
            }
            // The ingest task has given the events ids and queued them with their marks: from
            // now on they are stored (or counted as `store` loss), so a redelivery is a
            // duplicate. They are committed once durable, and only then may NATS forget them.
            self.marks.advance(&raised);
            report.imported = stored as u64;
            if !self.state.wait_durable(through_id, COMMIT_WAIT).await {
                return Err(format!(
                    "the store has not committed the imported events within {COMMIT_WAIT:?}; \
                     leaving them unacknowledged (redelivered, and dropped if they were stored)"
                ));
            }
        }
        let mut ack_failures = 0;
        for m in &messages {
            if m.ack().await.is_err() {
                ack_failures += 1;
            }
        }
        report.acks = messages.len() as u64 - ack_failures;
        self.state.update_fleet(|f| {
            if let Some(s) = f.subscribe.as_mut() {
                s.imported += report.imported;
                s.duplicates += report.duplicates;
                s.refused_host_mismatch += report.refused_host_mismatch;
                s.refused_malformed += report.refused_malformed;
                s.own_skipped += report.own_skipped;
                s.acks += report.acks;
                s.nats_reachable = true;
            }
        });
        if ack_failures > 0 {
            // Stored already: the redeliveries will be dropped by the marks.
            return Err(format!(
                "{ack_failures} acknowledgements failed (slow or lost acks); they will be redelivered and dropped as duplicates"
            ));
        }
        Ok(())
    }
}

/// Keeps each host's last reported publish lag for the hosts panel.
async fn host_statuses(state: AppState, client: async_nats::Client, own_host: String) {
    let mut sub = match client.subscribe("lpcmon-status.*").await {
        Ok(sub) => sub,
        Err(e) => {
            warn!(error = %e, "subscribe: no host statuses");
            return;
        }
    };
    while let Some(m) = sub.next().await {
        let Ok(status) = serde_json::from_slice::<HostStatus>(&m.payload) else {
            continue;
        };
        let subject_host = m.subject.strip_prefix("lpcmon-status.").unwrap_or_default();
        if status.host != subject_host || status.host == own_host {
            continue;
        }
        let seen = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .ok();
        state.update_fleet(|f| {
            let h = f.hosts.entry(status.host).or_default();
            h.publish_lag_ids = Some(status.lag_ids);
            h.publish_lag_seconds = Some(status.lag_seconds);
            h.nats_reachable = Some(status.nats_reachable);
            h.last_seen = seen;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge_one(subject: &str, id: &str, payload: &str) -> Verdict {
        judge(subject, Some(id), payload.as_bytes(), "central", |i| {
            if i == "i1" { 10 } else { 0 }
        })
    }

    #[test]
    fn judges_subject_host_marks_and_payload() {
        let ok = r#"{"id":11,"kind":"process.exec"}"#;
        assert!(
            matches!(judge_one("lpcmon.web.process.exec", "web/i1/11", ok), Verdict::Import(o, _)
            if o == Origin { host: "web".into(), server_instance: "i1".into(), id: 11 })
        );
        assert_eq!(
            judge_one("lpcmon.web.process.exec", "web/i1/10", ok),
            Verdict::Duplicate
        );
        assert!(matches!(
            judge_one("lpcmon.web.process.exec", "db/i1/11", ok),
            Verdict::HostMismatch(_)
        ));
        assert_eq!(
            judge_one("lpcmon.central.process.exec", "central/i2/1", ok),
            Verdict::Own
        );
        assert!(matches!(
            judge_one("lpcmon.web.loss", "web/i2/1", ok),
            Verdict::Malformed(_)
        ));
        assert!(matches!(
            judge_one("lpcmon.web.process.exec", "web/i2/x", ok),
            Verdict::Malformed(_)
        ));
        assert!(matches!(
            judge_one("other.web.x", "web/i2/1", ok),
            Verdict::Malformed(_)
        ));
        assert!(matches!(
            judge_one("lpcmon.web.process.exec", "web/i2/1", "[1]"),
            Verdict::Malformed(_)
        ));
        assert!(matches!(
            judge("lpcmon.web.loss", None, b"{}", "c", |_| 0),
            Verdict::Malformed(_)
        ));
    }
}
