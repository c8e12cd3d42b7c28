//! The dispatcher: where every port backend hands its messages, and where the protocol's
//! outputs enter the bounded ingest channel.
//!
//! Backends call [`Dispatcher::handle`] from their receive threads. The protocol [`Server`] sits
//! behind one mutex, so its decisions stay deterministic and ordered; the critical section is a
//! decode and a `try_send`, never a wait. When the ingest channel is full an event is dropped and
//! counted as `server_ingest` loss for its producer, and that loss is delivered as soon as there
//! is room again, ahead of the producer's later events. Control outputs (connects, disconnects,
//! losses, refusals) are never dropped: they wait in a small backlog.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use lpcmon_protocol::server::{Action, ConnId, Output, ProducerInfo, Server, ServerConfig};
use lpcmon_protocol::{Loss, LossStage, PortMessage, RefuseReason};
use tokio::sync::mpsc;

/// The sending half of the ingest channel.
pub type IngestSender = mpsc::Sender<Output>;

/// Counters about the port itself (outputs carry the rest).
#[derive(Debug, Default)]
pub struct PortCounters {
    pub messages: AtomicU64,
    pub bytes: AtomicU64,
    /// Connections refused before any handshake (wrong uid, ClientId not allowed, too many).
    pub transport_refusals: AtomicU64,
    /// Events dropped because the ingest channel was full.
    pub ingest_dropped: AtomicU64,
}

/// Server-ingest loss not yet delivered, for one producer instance.
struct PendingLoss {
    producer: Arc<ProducerInfo>,
    count: u64,
    first_seq: u64,
    last_seq: u64,
}

struct Inner {
    server: Server,
    backlog: VecDeque<Output>,
    ingest_loss: BTreeMap<[u8; 16], PendingLoss>,
    ingest_loss_total: u64,
    scratch: Vec<Output>,
}

pub struct Dispatcher {
    inner: Mutex<Inner>,
    ingest: IngestSender,
    origin: Instant,
    next_conn: AtomicU64,
    counters: Arc<PortCounters>,
}

/// How soon [`Dispatcher::tick`] retries outputs waiting for room in the ingest channel.
pub const BACKLOG_RETRY: std::time::Duration = std::time::Duration::from_millis(20);

/// Control outputs held while the channel is full. Past this, connect/disconnect notices are
/// dropped (they carry no events) and logged; losses are always merged, never dropped.
const BACKLOG_LIMIT: usize = 4096;

impl Dispatcher {
    pub fn new(config: ServerConfig, ingest: IngestSender) -> Self {
        Dispatcher {
            inner: Mutex::new(Inner {
                server: Server::new(config),
                backlog: VecDeque::new(),
                ingest_loss: BTreeMap::new(),
                ingest_loss_total: 0,
                scratch: Vec::new(),
            }),
            ingest,
            origin: Instant::now(),
            next_conn: AtomicU64::new(1),
            counters: Arc::new(PortCounters::default()),
        }
    }

    pub fn counters(&self) -> Arc<PortCounters> {
        self.counters.clone()
    }

    pub fn next_conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    fn now(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock would be a bug in the protocol crate; the state is
        // still consistent enough to keep serving other producers.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs one port message through the protocol and forwards what it produced.
    pub fn handle(&self, conn: ConnId, header: &PortMessage, data: &[u8]) -> Action {
        self.counters.messages.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let now = self.now();
        let mut inner = self.lock();
        let mut outputs = std::mem::take(&mut inner.scratch);
        let action = inner.server.handle(now, conn, header, data, &mut outputs);
        self.forward(&mut inner, &mut outputs);
        inner.scratch = outputs;
        action
    }

    /// A peer refused before any handshake: counted, logged, and reported downstream.
    pub fn refuse_peer(&self, client_pid: u64, reason: RefuseReason, why: &str) {
        self.counters.transport_refusals.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            client_pid,
            reason = reason.name(),
            why,
            "refused a port connection"
        );
        let mut inner = self.lock();
        let mut outputs = vec![Output::Refused {
            client_pid,
            reason,
            detail: why.to_owned(),
        }];
        self.forward(&mut inner, &mut outputs);
    }

    /// When [`Self::tick`] next has work to do: the protocol's next timer
    /// (`Server::poll_timeout`), or [`BACKLOG_RETRY`] from now while outputs wait for room in
    /// the ingest channel. `None`: nothing is pending, wait for messages.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let inner = self.lock();
        let timer = inner
            .server
            .poll_timeout()
            .map(|ns| self.origin + std::time::Duration::from_nanos(ns));
        let waiting = !inner.backlog.is_empty() || !inner.ingest_loss.is_empty();
        let retry = waiting.then(|| Instant::now() + BACKLOG_RETRY);
        timer.into_iter().chain(retry).min()
    }

    /// Runs the protocol's timers and retries the backlog. Backends call it when
    /// [`Self::poll_timeout`] says it is due (or more often: an early tick does nothing).
    pub fn tick(&self) {
        let now = self.now();
        let mut inner = self.lock();
        let mut outputs = std::mem::take(&mut inner.scratch);
        inner.server.poll(now, &mut outputs);
        self.forward(&mut inner, &mut outputs);
        inner.scratch = outputs;
    }

    fn forward(&self, inner: &mut Inner, outputs: &mut Vec<Output>) {
        self.flush(inner);
        for output in outputs.drain(..) {
            match output {
                Output::Event {
                    producer,
                    event,
                    transport,
                } => {
                    let blocked =
                        !inner.backlog.is_empty() || inner.ingest_loss.contains_key(&producer.instance);
                    let seq = event.header.seq;
                    let rejected = if blocked {
                        Some(producer)
                    } else {
                        match self.ingest.try_send(Output::Event {
                            producer,
                            event,
                            transport,
                        }) {
                            Ok(()) => None,
                            Err(e) => match e.into_inner() {
                                Output::Event { producer, .. } => Some(producer),
                                _ => None,
                            },
                        }
                    };
                    if let Some(producer) = rejected {
                        self.counters.ingest_dropped.fetch_add(1, Ordering::Relaxed);
                        inner.ingest_loss_total += 1;
                        inner
                            .ingest_loss
                            .entry(producer.instance)
                            .and_modify(|p| {
                                p.count += 1;
                                p.last_seq = seq;
                            })
                            .or_insert(PendingLoss {
                                producer,
                                count: 1,
                                first_seq: seq,
                                last_seq: seq,
                            });
                    }
                }
                other => {
                    if !inner.backlog.is_empty() {
                        push_backlog(&mut inner.backlog, other);
                    } else if let Err(e) = self.ingest.try_send(other) {
                        push_backlog(&mut inner.backlog, e.into_inner());
                    }
                }
            }
        }
    }

    /// Delivers held control outputs and pending ingest losses while the channel has room.
    fn flush(&self, inner: &mut Inner) {
        while let Some(output) = inner.backlog.pop_front() {
            if let Err(e) = self.ingest.try_send(output) {
                inner.backlog.push_front(e.into_inner());
                return;
            }
        }
        while let Some((&instance, pending)) = inner.ingest_loss.iter().next() {
            let loss = Output::Loss {
                producer: pending.producer.clone(),
                loss: Loss {
                    stage: LossStage::ServerIngest,
                    count: pending.count,
                    first_seq: pending.first_seq,
                    last_seq: pending.last_seq,
                    total: pending.count,
                },
            };
            if self.ingest.try_send(loss).is_err() {
                return;
            }
            inner.ingest_loss.remove(&instance);
        }
    }
}

fn push_backlog(backlog: &mut VecDeque<Output>, output: Output) {
    if backlog.len() >= BACKLOG_LIMIT {
        // Merge a loss into one already waiting for the same producer and stage, so loss counts
        // survive any backlog; a connect/disconnect notice past the limit is dropped and logged.
        if let Output::Loss { producer, loss } = &output {
            let same = backlog.iter_mut().find_map(|o| match o {
                Output::Loss { producer: p, loss: l }
                    if p.instance == producer.instance && l.stage == loss.stage =>
                {
                    Some(l)
                }
                _ => None,
            });
            if let Some(l) = same {
                l.count += loss.count;
                l.first_seq = l.first_seq.min(loss.first_seq);
                l.last_seq = l.last_seq.max(loss.last_seq);
                return;
            }
        } else {
            tracing::warn!(?output, "ingest backlog full; dropping a control notice");
            return;
        }
    }
    backlog.push_back(output);
}
