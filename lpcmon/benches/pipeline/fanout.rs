//! The fan-out scenario (issue #13): [`CLIENTS`] SSE clients over real HTTP, in this process,
//! while the load generator sends [`RATE`] events/s for [`SECONDS`] s.
//!
//! - **Deliveries and gaps**: every client counts the `process.exec` frames it reads and the
//!   `gap` events (with their `missed` counts) it is told about.
//! - **Server CPU per delivery**: the CPU time of every thread of this process except the
//!   clients' (`bench-sse-client`, read from `/proc/self/task/*/stat`) over the run, divided by
//!   the deliveries. The load generator runs in a child process and is not counted.
//! - **Ingest delay p99**: `received` − `time` of every event one probe client reads (the
//!   ingest task's clock against the load generator's push).
//! - **`/healthz` p99**: a request every 20 ms during the run, on its own connection, from a
//!   thread and runtime of its own.
//!
//! The clients are kept light: they look for frame boundaries and event names with `memmem`
//! and parse JSON only for a `gap` (and, in the probe, two timestamps per event).

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use memchr::memmem;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::linux::{
    Http, WAIT, field_str, new_histogram, parse_rfc3339, spawn_loadgen, start_clients, wait_child,
};

pub const CLIENTS: usize = 1000;
pub const RATE: u64 = 1000;
pub const SECONDS: u64 = 20;
const QUEUE: usize = 4096;
/// The thread name of the client runtime, whose CPU is not the server's.
pub const CLIENT_THREAD: &str = "bench-sse-client";
/// What `/proc` shows of it: a thread's `comm` is cut to 15 bytes.
const CLIENT_COMM: &str = "bench-sse-clien";
/// The `/healthz` probe's thread, also a client.
const HEALTHZ_THREAD: &str = "bench-healthz";

pub struct Fanout {
    pub clients: usize,
    pub expected: u64,
    pub deliveries: u64,
    pub gaps: u64,
    pub missed: u64,
    pub server_cpu_s: f64,
    pub client_cpu_s: f64,
    pub wall_s: f64,
    pub ingest_delay: Histogram<u64>,
    pub healthz: Histogram<u64>,
    pub healthz_failures: u64,
    pub sent: u64,
}

impl Fanout {
    pub fn server_cpu_us_per_delivery(&self) -> f64 {
        self.server_cpu_s * 1e6 / self.deliveries.max(1) as f64
    }
}

struct ClientResult {
    deliveries: u64,
    gaps: u64,
    missed: u64,
    delay: Option<Histogram<u64>>,
}

pub async fn run(
    http: &Http,
    base: &str,
    port: &Path,
    client_rt: &tokio::runtime::Runtime,
) -> Result<Fanout, String> {
    let expected = RATE * SECONDS;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(SECONDS) + WAIT;
    let url = format!("{base}/events/stream?kind=process.exec");
    // One connection per client (a stream never ends, so none is shared); client 0 is the probe.
    let clients = start_clients(http, client_rt, CLIENTS, |client, i, ready| {
        light_client(client, url.clone(), expected, deadline, i == 0, ready)
    })
    .await?;

    // /healthz on its own connection, every 20 ms, until the run ends, from a thread and
    // runtime of its own (as an outside monitor would be): its own scheduling must not sit in
    // the queue of the server's runtime, or the figure would be the bench's, not the server's.
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let health_url = format!("{base}/healthz");
    let health = std::thread::Builder::new()
        .name(HEALTHZ_THREAD.into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(healthz_probe(health_url, stop_rx))
        })
        .map_err(|e| format!("healthz thread: {e}"))?;

    let cpu_before = thread_cpu();
    let started = Instant::now();
    let child = spawn_loadgen(port, RATE, expected, QUEUE)?;
    let report = wait_child(child, Instant::now() + Duration::from_secs(SECONDS) + WAIT).await?;
    let mut ingest_delay = new_histogram();
    let (mut deliveries, mut gaps, mut missed) = (0, 0, 0);
    for c in clients {
        let r = c.await.map_err(|e| format!("SSE client: {e}"))?;
        deliveries += r.deliveries;
        gaps += r.gaps;
        missed += r.missed;
        if let Some(d) = r.delay {
            ingest_delay.add(&d).map_err(|e| e.to_string())?;
        }
    }
    let wall_s = started.elapsed().as_secs_f64();
    let cpu_after = thread_cpu();
    let _ = stop_tx.send(());
    let (healthz, healthz_failures) = tokio::task::spawn_blocking(move || health.join())
        .await
        .map_err(|e| format!("healthz thread: {e}"))?
        .map_err(|_| "the healthz thread panicked")??;
    Ok(Fanout {
        clients: CLIENTS,
        expected: expected * CLIENTS as u64,
        deliveries,
        gaps,
        missed,
        server_cpu_s: cpu_after.server - cpu_before.server,
        client_cpu_s: cpu_after.clients - cpu_before.clients,
        wall_s,
        ingest_delay,
        healthz,
        healthz_failures,
        sent: report["sent"].as_u64().unwrap_or(0),
    })
}

/// Asks for `/healthz` every 20 ms until `stop`: the latency of each answer, and how many
/// failed or took over 30 s.
async fn healthz_probe(
    url: String,
    mut stop: oneshot::Receiver<()>,
) -> Result<(Histogram<u64>, u64), String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    let mut hist = new_histogram();
    let mut failures = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {}
        }
        let start = Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(30), async {
            client.get(&url).send().await?.bytes().await
        })
        .await;
        match answer {
            Ok(Ok(_)) => {
                let _ = hist.record((start.elapsed().as_nanos() as u64).max(1));
            }
            _ => failures += 1,
        }
    }
    Ok((hist, failures))
}

/// Reads one stream until `expected` exec events were delivered or reported missing, or until
/// `deadline`. Only whole frames (up to the last blank line) are looked at; the rest waits for
/// the next chunk.
async fn light_client(
    client: reqwest::Client,
    url: String,
    expected: u64,
    deadline: tokio::time::Instant,
    probe: bool,
    ready: oneshot::Sender<()>,
) -> ClientResult {
    let mut r = ClientResult {
        deliveries: 0,
        gaps: 0,
        missed: 0,
        delay: probe.then(new_histogram),
    };
    let response = match tokio::time::timeout(Duration::from_secs(30), client.get(url).send()).await {
        Ok(Ok(resp)) if resp.status().is_success() => resp,
        _ => return r,
    };
    let _ = ready.send(());
    let exec = memmem::Finder::new(b"event: process.exec\n");
    let gap = memmem::Finder::new(b"event: gap\ndata: ");
    let end = memmem::FinderRev::new(b"\n\n");
    let mut body = response.bytes_stream();
    let mut carry: Vec<u8> = Vec::new();
    while r.deliveries + r.missed < expected {
        let chunk = match tokio::time::timeout_at(deadline, body.next()).await {
            Ok(Some(Ok(chunk))) => chunk,
            _ => break,
        };
        // Most chunks end on a frame boundary, so the carry is usually empty and the chunk is
        // read in place.
        let joined;
        let bytes: &[u8] = if carry.is_empty() {
            &chunk
        } else {
            carry.extend_from_slice(&chunk);
            joined = std::mem::take(&mut carry);
            &joined
        };
        let whole = end.rfind(bytes).map_or(0, |at| at + 2);
        let frames = &bytes[..whole];
        if let Some(delay) = r.delay.as_mut() {
            for at in exec.find_iter(frames) {
                let data = &frames[at + exec.needle().len()..];
                let data = &data[..data.iter().position(|&b| b == b'\n').unwrap_or(data.len())];
                let sent = field_str(data, b"\"time\":\"").and_then(parse_rfc3339);
                let received = field_str(data, b"\"received\":\"").and_then(parse_rfc3339);
                if let (Some(sent), Some(received)) = (sent, received) {
                    let _ = delay.record(received.saturating_sub(sent).max(1));
                }
                r.deliveries += 1;
            }
        } else {
            r.deliveries += exec.find_iter(frames).count() as u64;
        }
        for at in gap.find_iter(frames) {
            let data = &frames[at + gap.needle().len()..];
            let line = &data[..data.iter().position(|&b| b == b'\n').unwrap_or(data.len())];
            let v: Value = serde_json::from_slice(line).unwrap_or_default();
            r.gaps += 1;
            r.missed += v["missed"].as_u64().unwrap_or(0);
        }
        carry.extend_from_slice(&bytes[whole..]);
    }
    r
}

struct Cpu {
    server: f64,
    clients: f64,
}

/// CPU seconds (user + system) of this process's threads, split into the SSE clients' and the
/// rest (the server's, and the bench's own small polling); the `/healthz` probe counts as a client.
fn thread_cpu() -> Cpu {
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let mut cpu = Cpu {
        server: 0.0,
        clients: 0.0,
    };
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return cpu;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ...`: comm may hold spaces, so split after the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after `state`.
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        let seconds = (ticks(11) + ticks(12)) / tick;
        if comm == CLIENT_COMM || comm == HEALTHZ_THREAD {
            cpu.clients += seconds;
        } else {
            cpu.server += seconds;
        }
    }
    cpu
}
