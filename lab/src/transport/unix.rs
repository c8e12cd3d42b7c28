//! `unix`: lpcmon's production path, in process, as the binary wires it: the producer's queue
//! and worker (the protocol's, as the driver and sensor run them) → the Unix SEQPACKET port
//! server → the `Dispatcher` (session, reassembly, sequence) → the ingest task and store → an SSE
//! client over HTTP on loopback. Latency is from the push into the producer's queue to the
//! moment the SSE client has read the event.
//!
//! Loss causes are lpcmon's own counters: `producer_queue` (the queue was full),
//! `producer_send` (a send failed), `server_ingest` (the ingest channel was full) and `sse_gap`
//! (events the SSE stream reported missed).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use alpc_server::client::{PortConnection, PortError, connect_port};
use alpc_server::dispatch::{Dispatcher, PortCounters};
use alpc_server::unix::{UnixPortConfig, UnixPortServer};
use futures_util::StreamExt;
use lpcmon_api::{ApiConfig, AppState, spawn_ingest};
use lpcmon_protocol::ProducerKind;
use lpcmon_protocol::producer::{self, ConnectFailure, EventSlot, ProducerIo, Worker, WorkerConfig};
use lpcmon_protocol::queue::{Queue, Slot};
use lpcmon_protocol::server::ServerConfig;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use super::{Outcome, Transport, TransportError, TransportSpec};
use crate::measure::{Job, Losses, Receiver, encode_event, min_event_size, process_cpu_ns, thread_cpu_ns};
use crate::plan::Mode;

/// The binary's ingest channel capacity (`--ingest-capacity`).
const INGEST_CAPACITY: usize = 16_384;
/// How long, after the producer has finished, the SSE client may take to see the rest.
const DRAIN: Duration = Duration::from_secs(15);

pub struct Unix {
    limit: usize,
}

impl Unix {
    pub fn new(spec: &TransportSpec) -> Self {
        Unix {
            limit: spec.number("limit"),
        }
    }
}

impl Transport for Unix {
    fn limit(&self) -> usize {
        self.limit
    }

    fn run(&self, job: &Job, _mode: Mode) -> Result<Outcome, TransportError> {
        // Queue slots hold a whole event; size them to it, and keep the queue near 64 MiB.
        match job.size {
            0..=256 => run_sized::<256>(job, self.limit, 16_384),
            257..=1024 => run_sized::<1024>(job, self.limit, 16_384),
            1025..=4096 => run_sized::<4096>(job, self.limit, 16_384),
            4097..=16384 => run_sized::<16384>(job, self.limit, 4096),
            _ => run_sized::<65536>(job, self.limit, 1024),
        }
    }
}

/// The worker's I/O: the real port, the job's clock, parking for waits.
struct LabPortIo<'a> {
    port: String,
    conn: Option<Box<dyn PortConnection>>,
    origin: Instant,
    stop: &'a AtomicBool,
}

impl ProducerIo for LabPortIo<'_> {
    fn now(&mut self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    fn connect(&mut self, hello: &[u8], timeout_ns: u64) -> Result<usize, ConnectFailure> {
        self.conn = None;
        match connect_port(&self.port, hello, Duration::from_nanos(timeout_ns)) {
            Ok(conn) => {
                let limit = conn.max_message();
                self.conn = Some(conn);
                Ok(limit)
            }
            Err(PortError::Refused { .. }) => Err(ConnectFailure::Refused),
            Err(_) => Err(ConnectFailure::Unavailable),
        }
    }

    fn send(&mut self, message: &[u8]) -> bool {
        match self.conn.as_mut() {
            Some(conn) => {
                conn.send(message).is_ok() || {
                    self.conn = None;
                    false
                }
            }
            None => false,
        }
    }

    fn wait(&mut self, until: u64) {
        let now = self.now();
        std::thread::park_timeout(Duration::from_nanos(until.saturating_sub(now)));
    }

    fn stop_requested(&mut self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}

/// The server side of one cell: port, dispatcher, ingest, store and HTTP.
struct Server {
    rt: tokio::runtime::Runtime,
    port: UnixPortServer,
    counters: Arc<PortCounters>,
    state: AppState,
    base: String,
    stop_http: oneshot::Sender<()>,
    http: tokio::task::JoinHandle<std::io::Result<()>>,
    ingest: tokio::task::JoinHandle<()>,
}

fn start_server(path: &Path, limit: usize) -> Result<Server, TransportError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("lab-server")
        .enable_all()
        .build()
        .map_err(TransportError::io("server runtime"))?;
    let _guard = rt.enter();
    // The store keeps the whole cell, so the SSE client never falls behind an eviction.
    let state = AppState::new(ApiConfig {
        retain: 8_000_000,
        retain_bytes: 4 << 30,
        ..ApiConfig::default()
    });
    let (tx, rx) = mpsc::channel(INGEST_CAPACITY);
    let ingest = spawn_ingest(state.clone(), rx);
    let dispatcher = Arc::new(Dispatcher::new(
        ServerConfig {
            api: "unix",
            max_message: limit,
            ..ServerConfig::default()
        },
        tx,
    ));
    let counters = dispatcher.counters();
    let port = UnixPortServer::start(
        UnixPortConfig {
            max_message: limit,
            ..UnixPortConfig::new(path)
        },
        dispatcher,
    )
    .map_err(|e| TransportError::Other(format!("cannot start the port server: {e}")))?;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .map_err(TransportError::io("bind 127.0.0.1"))?;
    let base = format!(
        "http://{}",
        listener
            .local_addr()
            .map_err(TransportError::io("local address"))?
    );
    let (stop_http, stopped) = oneshot::channel::<()>();
    let http = rt.spawn(lpcmon_api::serve(listener, state.clone(), async move {
        let _ = stopped.await;
    }));
    Ok(Server {
        rt,
        port,
        counters,
        state,
        base,
        stop_http,
        http,
        ingest,
    })
}

impl Server {
    fn shutdown(self) {
        let _ = self.stop_http.send(());
        self.state.close_streams();
        let _ = self
            .rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(5), self.http).await });
        self.port.shutdown();
        // The port server held the only ingest sender, so ingest ends on its own.
        let _ = self
            .rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(5), self.ingest).await });
        self.rt.shutdown_timeout(Duration::from_secs(2));
    }
}

#[derive(Deserialize)]
struct EventJson {
    thread: Option<IdJson>,
}

#[derive(Deserialize)]
struct IdJson {
    id: u64,
}

#[derive(Deserialize)]
struct GapJson {
    missed: u64,
}

/// What the producer threads share with the SSE client: when to stop waiting.
struct Progress {
    finished: AtomicBool,
    sent: AtomicU64,
    producer_lost: AtomicU64,
}

/// Follows `/events/stream` until every sent event is seen or accounted for, or the drain
/// deadline passes. Returns the receiver and the events reported missed in gaps.
async fn follow(
    base: &str,
    rx: &mut Receiver<'_>,
    progress: &Progress,
    counters: &PortCounters,
    connected: oneshot::Sender<()>,
) -> Result<u64, TransportError> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| TransportError::Other(format!("HTTP client: {e}")))?;
    let response = client
        .get(format!("{base}/events/stream"))
        .send()
        .await
        .map_err(|e| TransportError::Other(format!("SSE connect: {e}")))?;
    if !response.status().is_success() {
        return Err(TransportError::Other(format!(
            "SSE answered {}",
            response.status()
        )));
    }
    // The handler subscribed before answering, so nothing from here on is missed.
    let _ = connected.send(());
    let mut body = response.bytes_stream();
    let (mut buf, mut event, mut missed) = (Vec::<u8>::new(), Vec::<u8>::new(), 0u64);
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        if progress.finished.load(Ordering::Acquire) {
            let accounted = rx.received
                + missed
                + progress.producer_lost.load(Ordering::Acquire)
                + counters.ingest_dropped.load(Ordering::Acquire);
            if accounted >= progress.sent.load(Ordering::Acquire) {
                break;
            }
            let d = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + DRAIN);
            if tokio::time::Instant::now() > d {
                break;
            }
        }
        let chunk = match tokio::time::timeout(Duration::from_millis(20), body.next()).await {
            Ok(Some(Ok(chunk))) => chunk,
            Ok(_) => break,
            Err(_) => continue,
        };
        buf.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
            let line = &buf[start..start + nl];
            start += nl + 1;
            if let Some(name) = line.strip_prefix(b"event:") {
                event = name.trim_ascii().to_vec();
            } else if let Some(data) = line.strip_prefix(b"data:") {
                if event == b"process.exec" {
                    if let Ok(EventJson { thread: Some(t) }) = serde_json::from_slice(data) {
                        rx.deliver(t.id);
                    }
                } else if event == b"gap" {
                    if let Ok(g) = serde_json::from_slice::<GapJson>(data) {
                        missed += g.missed;
                    }
                }
            } else if line.is_empty() {
                event.clear();
            }
        }
        buf.drain(..start);
    }
    Ok(missed)
}

fn run_sized<const N: usize>(job: &Job, limit: usize, capacity: usize) -> Result<Outcome, TransportError> {
    let dir = tempfile::Builder::new()
        .prefix("lpcmon-lab-unix")
        .tempdir()
        .map_err(TransportError::io("temporary directory"))?;
    let path = dir.path().join("events.sock");
    let server = start_server(&path, limit)?;
    let slots: Vec<Slot<EventSlot<N>>> = (0..capacity).map(|i| Slot::new(i, EventSlot::new())).collect();
    let queue = Queue::new(&slots).ok_or_else(|| TransportError::Other("queue capacity".into()))?;
    let stop = AtomicBool::new(false);
    let progress = Progress {
        finished: AtomicBool::new(false),
        sent: AtomicU64::new(0),
        producer_lost: AtomicU64::new(0),
    };
    let padding = "x".repeat(job.size.saturating_sub(min_event_size()));
    let cpu_before = process_cpu_ns();
    let ingest_before = server.counters.ingest_dropped.load(Ordering::Acquire);

    let result = std::thread::scope(|s| {
        // The SSE client, on its own thread driving the server's runtime.
        let (connected_tx, connected_rx) = oneshot::channel();
        let client = s.spawn(|| {
            let mut rx = Receiver::new(job, limit);
            let missed = server.rt.block_on(follow(
                &server.base,
                &mut rx,
                &progress,
                &server.counters,
                connected_tx,
            ));
            (rx, missed)
        });
        if server
            .rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), connected_rx).await })
            .is_err()
        {
            progress.finished.store(true, Ordering::Release);
            let _ = client.join();
            return Err(TransportError::Other(
                "the SSE client did not connect in 10 s".into(),
            ));
        }

        // The producer's worker: the protocol's own loop over the real port.
        let worker = s.spawn(|| {
            let cpu0 = thread_cpu_ns();
            let mut instance = [0u8; 16];
            let _ = getrandom::fill(&mut instance);
            let mut io = LabPortIo {
                port: path.display().to_string(),
                conn: None,
                origin: Instant::now(),
                stop: &stop,
            };
            let config = WorkerConfig {
                kind: ProducerKind::Loadgen,
                instance,
                os: "linux (lpcmon lab)",
                os_build: 0,
                max_message: limit,
                backoff_min_ns: 1_000_000,
                backoff_max_ns: 100_000_000,
                connect_timeout_ns: WorkerConfig::DEFAULT_CONNECT_TIMEOUT_NS,
                heartbeat_interval_ns: WorkerConfig::DEFAULT_HEARTBEAT_NS,
            };
            let mut event_buf = vec![0u8; N];
            let mut out = vec![0u8; limit.max(256)];
            let now = io.now();
            let mut w = Worker::new(config, &mut event_buf, now);
            let stats = producer::run(&mut w, &queue, &mut io, &mut out, DRAIN.as_nanos() as u64);
            (stats, thread_cpu_ns() - cpu0)
        });
        let worker_thread = worker.thread().clone();

        // The pusher: the callback side, which never waits.
        let cpu0 = thread_cpu_ns();
        let first_push_ns = job.now();
        let (mut sent, mut queue_full) = (0u64, 0u64);
        let mut pacer = job.pacer();
        for n in pacer.by_ref() {
            job.pushed(n);
            sent = n;
            if queue.push_with(|slot| encode_event(slot, &padding, n)).is_err() {
                queue_full += 1;
            }
            worker_thread.unpark();
        }
        let pusher_cpu = (thread_cpu_ns() - cpu0).saturating_sub(pacer.waiting_cpu_ns);
        stop.store(true, Ordering::Release);
        worker_thread.unpark();
        let (stats, worker_cpu) = worker
            .join()
            .map_err(|_| TransportError::Other("producer worker panicked".into()))?;
        progress.sent.store(sent, Ordering::Release);
        progress
            .producer_lost
            .store(queue_full + stats.send_failed, Ordering::Release);
        progress.finished.store(true, Ordering::Release);
        let (rx, missed) = client
            .join()
            .map_err(|_| TransportError::Other("SSE client panicked".into()))?;
        let missed = missed?;
        let producer_cpu_ns = pusher_cpu + worker_cpu;
        let mut lost = Losses::default();
        lost.add("producer_queue", queue_full);
        lost.add("producer_send", stats.send_failed);
        lost.add(
            "server_ingest",
            server.counters.ingest_dropped.load(Ordering::Acquire) - ingest_before,
        );
        lost.add("sse_gap", missed);
        lost.add("malformed", rx.malformed);
        let consumer_cpu_ns = (process_cpu_ns() - cpu_before).saturating_sub(producer_cpu_ns);
        Ok(Outcome {
            sent,
            received: rx.received,
            lost,
            reordered: rx.reordered,
            duplicates: rx.duplicates,
            producer_cpu_ns,
            consumer_cpu_ns,
            first_push_ns,
            last_arrival_ns: rx.last_arrival_ns,
            hist: rx.hist,
            limit,
        })
    });
    server.shutdown();
    result
}
