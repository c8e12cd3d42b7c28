//! The dispatcher: where every port backend hands its messages, and where the protocol's
//! outputs enter the bounded ingest channel.
//!
//! Backends call [`Dispatcher::handle`] from their receive threads. The protocol [`Server`] and
//! its [`IngestGate`] sit behind one mutex, so their decisions stay deterministic and ordered;
//! the critical section is a decode and a `try_send`, never a wait. What a full channel means
//! (dropped events counted as `server_ingest` loss, control outputs held in a backlog) is the
//! gate's decision, made and tested in `lpcmon-protocol`; this file only owns the channel, the
//! clock and the logs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use lpcmon_protocol::PortMessage;
use lpcmon_protocol::RefuseReason;
use lpcmon_protocol::server::{
    Action, ConnId, IngestBudget, IngestGate, IngestSink, Output, RestoredInstance, Server, ServerConfig,
};
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

struct Inner {
    server: Server,
    gate: IngestGate,
    scratch: Vec<Output>,
}

pub struct Dispatcher {
    inner: Mutex<Inner>,
    ingest: ChannelSink,
    origin: Instant,
    next_conn: AtomicU64,
    counters: Arc<PortCounters>,
}

/// The tokio channel as the gate's sink, bounded by bytes too when it has a budget.
struct ChannelSink {
    tx: IngestSender,
    budget: Option<Arc<IngestBudget>>,
}

impl IngestSink for &ChannelSink {
    fn try_send(&mut self, output: Output) -> Result<(), Output> {
        let Some(budget) = &self.budget else {
            return self.tx.try_send(output).map_err(|e| e.into_inner());
        };
        // Taken before the send so the receiver, which gives back on receipt, never gives
        // back bytes not yet taken.
        let bytes = output.channel_bytes();
        if !budget.try_take(bytes) {
            return Err(output);
        }
        self.tx.try_send(output).map_err(|e| {
            budget.give_back(bytes);
            e.into_inner()
        })
    }
}

/// How soon [`Dispatcher::tick`] retries outputs waiting for room in the ingest channel.
pub const BACKLOG_RETRY: std::time::Duration = std::time::Duration::from_millis(20);

impl Dispatcher {
    pub fn new(config: ServerConfig, ingest: IngestSender) -> Self {
        Dispatcher {
            inner: Mutex::new(Inner {
                server: Server::new(config),
                gate: IngestGate::default(),
                scratch: Vec::new(),
            }),
            ingest: ChannelSink {
                tx: ingest,
                budget: None,
            },
            origin: Instant::now(),
            next_conn: AtomicU64::new(1),
            counters: Arc::new(PortCounters::default()),
        }
    }

    /// Bounds the ingest channel by what its outputs hold, too: an output that does not fit
    /// in `budget` is refused as a full channel refuses it (an event is counted as
    /// `server_ingest` loss). The receiver gives the bytes back as it takes outputs out
    /// (`lpcmon_api` does, with `AppState::ingest_budget`).
    pub fn with_ingest_budget(mut self, budget: Arc<IngestBudget>) -> Self {
        self.ingest.budget = Some(budget);
        self
    }

    /// Seeds producer instances' sequence state from the durable store before any producer
    /// connects, so what a previous run received but never committed is counted when the
    /// producer reconnects (see [`Server::restore_instance`]).
    pub fn restore_instances(&self, restored: impl IntoIterator<Item = RestoredInstance>) {
        let mut inner = self.lock();
        for r in restored {
            inner.server.restore_instance(r);
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

    /// Runs datagrams of one established connection through the protocol in order, under one
    /// lock, and forwards what they produced: what [`Self::handle`] does for each, without a
    /// lock and a forward per datagram. A datagram's action is always [`Action::None`].
    pub fn handle_datagrams<'a>(
        &self,
        conn: ConnId,
        datagrams: impl IntoIterator<Item = (PortMessage, &'a [u8])>,
    ) {
        let now = self.now();
        let mut inner = self.lock();
        let mut outputs = std::mem::take(&mut inner.scratch);
        let (mut messages, mut bytes) = (0u64, 0u64);
        for (header, data) in datagrams {
            debug_assert_eq!(header.kind(), lpcmon_protocol::lpc::DATAGRAM);
            messages += 1;
            bytes += data.len() as u64;
            let action = inner.server.handle(now, conn, &header, data, &mut outputs);
            debug_assert_eq!(action, Action::None);
        }
        self.counters.messages.fetch_add(messages, Ordering::Relaxed);
        self.counters.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.forward(&mut inner, &mut outputs);
        inner.scratch = outputs;
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
        let waiting = !inner.gate.is_idle();
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
        let report = inner.gate.forward(outputs, &mut &self.ingest);
        if report.events_dropped > 0 {
            self.counters
                .ingest_dropped
                .fetch_add(report.events_dropped, Ordering::Relaxed);
        }
        for notice in report.notices_dropped {
            tracing::warn!(?notice, "ingest backlog full; dropping a control notice");
        }
    }
}
