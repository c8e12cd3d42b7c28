//! The pipeline benchmark (issue #3 point 6). Run it with
//!
//! ```text
//! cargo bench -p lpcmon --bench pipeline
//! ```
//!
//! It prints one table; it asserts nothing about timing. What it measures:
//!
//! 1. **Raw SEQPACKET datagrams/s**: two threads, a `SOCK_SEQPACKET` socketpair, 200-byte
//!    datagrams, blocking send and the same `recv` the port server does. The ceiling.
//! 2. **lpcmon ingest rate**: the binary's wiring in-process (AppState + `spawn_ingest` +
//!    `Dispatcher` + `UnixPortServer`, axum on 127.0.0.1), driven by the real load generator
//!    (`lpcmon_sensor::loadgen::run`, rate 0, 200-byte events). The rate is the number of events
//!    stored divided by the time between the first and the last one's `received` stamp (the
//!    ingest task's clock), so neither process start-up nor the bench's polling is counted.
//! 3. **Ratio** of the two.
//! 4. **Latency** from the load generator's push (`time`) to the moment an SSE client over real
//!    HTTP reads the event, at 10,000 events/s for 5 s with 10 clients; one hdrhistogram per
//!    client, merged.
//! 5. **Resident memory** of this process (`VmRSS`, `VmHWM`) next to the store's limits: idle
//!    (before the server starts) and after a rate-0 flood of at least [`FLOOD_SECONDS`] s (the
//!    ingest bursts, repeated until that long), against `retain_bytes`.
//! 6. **Fan-out** (`fanout.rs`): 1,000 SSE clients at 1,000 events/s for 20 s: deliveries,
//!    gaps, server CPU per delivery, ingest delay p99 and `/healthz` p99 during the run.
//! 7. **The durable store** (issue #12): a second server, with an SQLite file behind the
//!    in-memory tail (`AppState::with_database`, a temporary file), runs [`BURSTS`] bursts and the
//!    latency run again. A burst's rate then runs to the moment its last event is *committed*,
//!    not only stored in memory. It prints the ratio to in-memory ingest (the `ingest` part's
//!    bursts, or [`BURSTS`] in-memory bursts of its own when that part is not run), the writer's
//!    commit latency (p50/p99 per commit), the send -> SSE latency with the store on (ids are
//!    published before their commit, from blocks reserved ahead, so streams should not feel the
//!    disk), and database bytes per event.
//!
//! `LPCMON_BENCH_SCENARIO=raw,ingest,latency,fanout,durable` (any subset, comma-separated) runs
//! only those parts; `LPCMON_BENCH_JSON=PATH` also writes the figures as one JSON object to PATH
//! (keys in [`write_json`]; a part not run is `null`).
//!
//! The load generator runs in a child process (this same executable, re-run with an
//! environment variable), as it would in production. That keeps its queue out of this
//! process's RSS: a loadgen queue slot is `LOADGEN_SLOT` = 16 KiB whatever the event size, so
//! its queue would dwarf the server's memory. For the same reason a rate-0 burst is 65,536
//! events with a 65,536-slot queue (1 GiB in the child, freed when it exits), repeated: a queue
//! that holds the whole burst means no producer-queue drops, and several bursts give the
//! total count.
//!
//! Every wait is bounded; on the way out the SSE clients are dropped, the HTTP server stops
//! gracefully, the port server shuts down and the socket directory is removed.

use std::fmt::Write as _;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alpc_server::dispatch::{Dispatcher, PortCounters};
use alpc_server::unix::{UnixPortConfig, UnixPortServer};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use lpcmon_api::{ApiConfig, AppState, spawn_ingest_thread};
use lpcmon_protocol::ProducerKind;
use lpcmon_protocol::server::ServerConfig;
use lpcmon_sensor::loadgen::{self, LoadgenConfig};
use lpcmon_sensor::runtime::ProducerConfig;
use lpcmon_store::{CommitLatency, Database, Retention};
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType, sockopt};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::fanout;

/// Encoded size of every event, bytes.
const SIZE: usize = 200;
/// The largest message, as the binary's default.
const MAX_MESSAGE: usize = 64 * 1024;
/// Datagrams in the raw run.
const RAW_COUNT: u64 = 500_000;
/// Rate-0 bursts and events per burst (the child's queue holds a whole burst).
const BURSTS: usize = 4;
const BURST_COUNT: u64 = 65_536;
/// The latency run.
const LAT_RATE: u64 = 10_000;
const LAT_SECONDS: u64 = 5;
const LAT_QUEUE: usize = 4096;
const SSE_CLIENTS: usize = 10;
/// Store limits: the binary's defaults.
const RETAIN: usize = 100_000;
const RETAIN_BYTES: usize = 64 * 1024 * 1024;
/// Larger than a burst, so a burst can never overflow it.
const INGEST_CAPACITY: usize = 131_072;
/// The ingest channel's byte budget: a burst's outputs fit in it (about 22 MiB of 65,536
/// 200-byte events), and what waits is counted against `RETAIN_BYTES` as the binary counts it.
const INGEST_BYTES: usize = RETAIN_BYTES / 2;
/// Longest any single wait may take.
pub(crate) const WAIT: Duration = Duration::from_secs(60);
const MIB: f64 = 1024.0 * 1024.0;

/// Set in the child's environment: `port|rate|count|queue`.
const CHILD_ENV: &str = "LPCMON_BENCH_LOADGEN";
/// The parts to run (default: all).
const SCENARIO_ENV: &str = "LPCMON_BENCH_SCENARIO";
/// Where to write the figures as JSON.
const JSON_ENV: &str = "LPCMON_BENCH_JSON";
/// The SSE coalescing cap to run with (e.g. `0`, `5ms`), instead of the default.
const COALESCE_ENV: &str = "LPCMON_BENCH_SSE_COALESCE";
/// The rate-0 flood lasts at least this long (the ingest bursts, repeated).
const FLOOD_SECONDS: u64 = 20;
/// Enough HTTP connections for the fan-out's clients and the bench's own requests.
const MAX_HTTP_CONNECTIONS: usize = 2048;

/// Which parts of the bench run.
#[derive(Clone, Copy)]
struct Scenarios {
    raw: bool,
    ingest: bool,
    latency: bool,
    fanout: bool,
    durable: bool,
}

impl Scenarios {
    fn from_env() -> Result<Self, String> {
        let Ok(list) = std::env::var(SCENARIO_ENV) else {
            return Ok(Scenarios {
                raw: true,
                ingest: true,
                latency: true,
                fanout: true,
                durable: true,
            });
        };
        let mut s = Scenarios {
            raw: false,
            ingest: false,
            latency: false,
            fanout: false,
            durable: false,
        };
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "raw" => s.raw = true,
                "ingest" => s.ingest = true,
                "latency" => s.latency = true,
                "fanout" => s.fanout = true,
                "durable" => s.durable = true,
                other => {
                    return Err(format!(
                        "{SCENARIO_ENV}: unknown part {other:?} (raw, ingest, latency, fanout, durable)"
                    ));
                }
            }
        }
        Ok(s)
    }

    /// The first pass: the in-memory server. The durable part needs in-memory bursts to compare
    /// with; without the ingest part it gets exactly [`BURSTS`] of them and no flood.
    fn in_memory_pass(self) -> Pass {
        Pass {
            bursts: if self.ingest || self.durable { BURSTS } else { 0 },
            flood: self.ingest.then(|| Duration::from_secs(FLOOD_SECONDS)),
            latency: self.latency,
            fanout: self.fanout,
            database: false,
        }
    }

    /// The second pass, for the durable part: the same bursts and latency run with SQLite on.
    fn durable_pass(self) -> Option<Pass> {
        self.durable.then_some(Pass {
            bursts: BURSTS,
            flood: None,
            latency: true,
            fanout: false,
            database: true,
        })
    }
}

/// What one run of the server phases does.
#[derive(Clone, Copy)]
struct Pass {
    /// Rate-0 bursts, at least this many...
    bursts: usize,
    /// ...repeated until this long, then VmRSS is read (the ingest part's flood).
    flood: Option<Duration>,
    latency: bool,
    fanout: bool,
    /// An SQLite file behind the in-memory tail.
    database: bool,
}

pub fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child_loadgen(&spec);
        return;
    }
    check_time_parser();
    let scenarios = match Scenarios::from_env().and_then(|s| sse_coalesce().map(|_| s)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let started = Instant::now();
    let load_before = load_average();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut table = Table::default();

    // 1. The ceiling (the ratio needs it).
    let raw = (scenarios.raw || scenarios.ingest).then(|| raw_seqpacket(RAW_COUNT));

    let mem_before = memory();
    let dir = std::env::temp_dir().join(format!("lpcmon-bench-{}", std::process::id()));
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("server runtime");
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(fanout::CLIENT_THREAD)
        .enable_all()
        .build()
        .expect("client runtime");

    let results = server_rt.block_on(run_server_phases(&dir, &client_rt, scenarios.in_memory_pass()));
    let mem_between = memory();
    let durable = match (&results, scenarios.durable_pass()) {
        (Ok(_), Some(pass)) => {
            Some(server_rt.block_on(run_server_phases(&dir.join("durable"), &client_rt, pass)))
        }
        _ => None,
    };
    drop(client_rt);
    drop(server_rt);
    let _ = std::fs::remove_dir_all(&dir);
    let (results, durable) = match (results, durable.transpose()) {
        (Ok(r), Ok(d)) => (r, d),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("pipeline bench failed: {e}");
            std::process::exit(1);
        }
    };

    // The table.
    let ingest = scenarios.ingest.then(|| median_rate(&results)).flatten();
    let ratio = ingest.zip(raw).map(|(i, r)| i / r);
    if let Some(raw) = raw {
        table.row(
            "raw SEQPACKET (socketpair, 2 threads)",
            format!("{} datagrams/s", fmt_int(raw)),
            format!("ceiling ({} x {SIZE} B)", fmt_int(RAW_COUNT as f64)),
        );
    }
    if let (Some(ingest), Some(ratio)) = (ingest, ratio) {
        ingest_rows(&mut table, &results, ingest, ratio);
    }
    if let Some(l) = &results.latency {
        latency_rows(&mut table, l);
    }
    if let Some(f) = &results.fanout {
        fanout_rows(&mut table, f);
    }
    memory_rows(&mut table, &results, mem_before);
    let durable = durable.as_ref().and_then(|d| DurableView::new(&results, d));
    if let Some(d) = &durable {
        durable_rows(&mut table, d, mem_between);
    }
    println!();
    println!(
        "lpcmon pipeline bench: {SIZE}-byte events, {cpus} CPUs, {:.1} s, load average {load_before} \
         at the start and {} at the end, SSE coalescing up to {:?}",
        started.elapsed().as_secs_f64(),
        load_average(),
        sse_coalesce().unwrap_or_default()
    );
    table.print();
    if let Ok(path) = std::env::var(JSON_ENV) {
        let figures = Figures {
            results: &results,
            raw,
            ingest,
            ratio,
            mem_before,
            durable: durable.as_ref(),
        };
        match write_json(Path::new(&path), &figures) {
            Ok(()) => println!("figures written to {path}"),
            Err(e) => {
                eprintln!("{JSON_ENV}={path}: {e}");
                std::process::exit(1);
            }
        }
    }
}

const fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

fn ingest_rows(table: &mut Table, results: &Results, ingest: f64, ratio: f64) {
    let rates: Vec<f64> = results.bursts.iter().map(|b| b.rate).collect();
    let min = rates.iter().copied().fold(f64::INFINITY, f64::min);
    let max = rates.iter().copied().fold(0.0, f64::max);
    let sum = |f: fn(&Burst) -> u64| results.bursts.iter().map(f).sum::<u64>();
    table.row(
        "lpcmon ingest (loadgen -> port -> store)",
        format!("{} events/s", fmt_int(ingest)),
        format!(
            "median of {} bursts x {} ({:.0} s flood)",
            results.bursts.len(),
            fmt_int(BURST_COUNT as f64),
            results.flood_seconds
        ),
    );
    table.row(
        "  per burst: min / max",
        format!("{} / {} /s", fmt_int(min), fmt_int(max)),
        "the first bursts fill the store".into(),
    );
    table.row(
        "  stored / sent by loadgen",
        format!("{} / {}", sum(|b| b.stored), sum(|b| b.sent)),
        "equal".into(),
    );
    table.row(
        "  drops: server_ingest / producer_queue",
        format!("{} / {}", sum(|b| b.ingest_dropped), sum(|b| b.queue_dropped)),
        format!(
            "0 / 0 (ingest channel {} outputs, {} MiB)",
            fmt_int(INGEST_CAPACITY as f64),
            INGEST_BYTES >> 20
        ),
    );
    table.row(
        "ratio ingest / raw",
        format!("{ratio:.2}"),
        verdict(ratio >= 0.8, ">= 0.80"),
    );
}

/// send -> SSE latency against the 2 ms target.
fn sse_latency_row(table: &mut Table, label: &str, l: &Latency) {
    table.row(
        label,
        p50_p99_max(&l.hist),
        verdict(l.hist.value_at_quantile(0.99) <= 2_000_000, "p99 <= 2000 us"),
    );
}

fn latency_rows(table: &mut Table, l: &Latency) {
    sse_latency_row(table, "SSE latency p50 / p99 / max", l);
    table.row(
        "  p90 / p99.9 / mean",
        format!(
            "{:.0} / {:.0} / {:.0} us",
            us(l.hist.value_at_quantile(0.90)),
            us(l.hist.value_at_quantile(0.999)),
            l.hist.mean() / 1000.0
        ),
        format!(
            "{SSE_CLIENTS} clients, {} ev/s, {LAT_SECONDS} s",
            fmt_int(LAT_RATE as f64)
        ),
    );
    table.row(
        "  delivered / expected, gaps (missed)",
        format!("{} / {}, {} ({})", l.hist.len(), l.expected, l.gaps, l.missed),
        format!("loadgen sent {}, queue drops {}", l.sent, l.queue_dropped),
    );
}

fn p50_p99_max(hist: &Histogram<u64>) -> String {
    format!(
        "{:.0} / {:.0} / {:.0} us",
        us(hist.value_at_quantile(0.50)),
        us(hist.value_at_quantile(0.99)),
        us(hist.max())
    )
}

fn fanout_rows(table: &mut Table, f: &fanout::Fanout) {
    table.row(
        "fan-out: delivered / expected",
        format!("{} / {}", f.deliveries, f.expected),
        format!(
            "{} clients, {} ev/s, {} s; loadgen sent {}",
            f.clients,
            fanout::RATE,
            fanout::SECONDS,
            f.sent
        ),
    );
    table.row(
        "  gaps (missed)",
        format!("{} ({})", f.gaps, f.missed),
        "delivered + missed = expected".into(),
    );
    let per = f.server_cpu_us_per_delivery();
    table.row(
        "  server CPU per delivery",
        format!("{per:.2} us"),
        verdict(per <= 0.3, "<= 0.30 us"),
    );
    table.row(
        "  CPU s: server / clients / wall",
        format!("{:.1} / {:.1} / {:.1}", f.server_cpu_s, f.client_cpu_s, f.wall_s),
        "clients are threads of this process, not counted".into(),
    );
    let delay = f.ingest_delay.value_at_quantile(0.99);
    table.row(
        "  ingest delay (received - time) p50 / p99 / max",
        p50_p99_max(&f.ingest_delay),
        verdict(delay <= 10_000_000, "p99 <= 10,000 us"),
    );
    let health = f.healthz.value_at_quantile(0.99);
    table.row(
        "  /healthz p50 / p99 / max",
        p50_p99_max(&f.healthz),
        verdict(
            health <= 50_000_000 && f.healthz_failures == 0,
            &format!("p99 <= 50,000 us; {} failed", f.healthz_failures),
        ),
    );
}

fn memory_rows(table: &mut Table, results: &Results, mem_before: Memory) {
    let store_limit = RETAIN_BYTES as f64 / MIB;
    if let Some((flood, trimmed_rss)) = results.mem_after_flood {
        let limit = mem_before.rss / MIB + 1.25 * store_limit;
        table.row(
            "VmRSS idle / after flood",
            format!("{:.1} / {:.1} MiB", mem_before.rss / MIB, flood.rss / MIB),
            verdict(
                flood.rss / MIB <= limit,
                &format!("<= idle + 1.25 x {store_limit:.0} MiB = {limit:.0} MiB"),
            ),
        );
        table.row(
            "  VmRSS after flood, malloc_trim(0)",
            format!("{:.1} MiB", trimmed_rss / MIB),
            "the same without what malloc kept free".into(),
        );
    }
    table.row(
        "VmRSS / VmHWM (peak) at end",
        format!(
            "{:.1} / {:.1} MiB",
            results.mem_end.rss / MIB,
            results.mem_end.hwm / MIB
        ),
        "".into(),
    );
    table.row(
        "store: configured / holding",
        format!(
            "{} ev, {store_limit:.0} MiB / {} ev, {:.1} MiB",
            fmt_int(RETAIN as f64),
            fmt_int(results.store_events as f64),
            results.store_bytes as f64 / MIB
        ),
        "retain / retain_bytes (binary defaults)".into(),
    );
}

/// The durable part's figures, next to the in-memory ones they are compared with.
struct DurableView<'a> {
    /// Median burst rates: in memory, and to commit with the SQLite store.
    in_memory: f64,
    on_disk: f64,
    run: &'a Results,
    store: &'a DurableFigures,
    latency: &'a Latency,
}

impl<'a> DurableView<'a> {
    fn new(in_memory: &Results, durable: &'a Results) -> Option<Self> {
        Some(DurableView {
            in_memory: median_rate(in_memory)?,
            on_disk: median_rate(durable)?,
            run: durable,
            store: durable.durable.as_ref()?,
            latency: durable.latency.as_ref()?,
        })
    }

    fn ratio(&self) -> f64 {
        self.on_disk / self.in_memory
    }

    fn bytes_per_event(&self) -> f64 {
        self.store.bytes as f64 / self.store.events.max(1) as f64
    }
}

/// The rows of the run with the SQLite store.
fn durable_rows(table: &mut Table, d: &DurableView, mem_between: Memory) {
    let rates = d
        .run
        .bursts
        .iter()
        .map(|b| fmt_int(b.rate))
        .collect::<Vec<_>>()
        .join(", ");
    table.row(
        "SQLite store: ingest to commit",
        format!("{} events/s", fmt_int(d.on_disk)),
        format!("median of {} bursts: {rates} /s", d.run.bursts.len()),
    );
    let ratio = d.ratio();
    table.row(
        "  ratio SQLite / in-memory ingest",
        format!("{ratio:.2}"),
        verdict(
            ratio >= 0.8,
            &format!(">= 0.80; in-memory median {} events/s", fmt_int(d.in_memory)),
        ),
    );
    let sum = |f: fn(&Burst) -> u64| d.run.bursts.iter().map(f).sum::<u64>();
    table.row(
        "  stored / sent, drops: server_ingest",
        format!(
            "{} / {}, {}",
            sum(|b| b.stored),
            sum(|b| b.sent),
            sum(|b| b.ingest_dropped)
        ),
        "equal, 0".into(),
    );
    let c = &d.store.commit;
    let ms = |v: Duration| v.as_secs_f64() * 1000.0;
    table.row(
        "  commit latency p50 / p99 / max",
        format!("{:.2} / {:.2} / {:.2} ms", ms(c.p50), ms(c.p99), ms(c.max)),
        format!("{} commits (<= 5 ms or 4096 events each)", c.commits),
    );
    let l = d.latency;
    sse_latency_row(table, "  SSE latency p50 / p99 / max, store on", l);
    table.row(
        "  delivered / expected, gaps (missed)",
        format!("{} / {}, {} ({})", l.hist.len(), l.expected, l.gaps, l.missed),
        format!("{} ev/s, {SSE_CLIENTS} clients", fmt_int(LAT_RATE as f64)),
    );
    let (waits, waited) = d.store.latency_waits;
    table.row(
        "  ingest waits for the writer, latency run",
        format!("{waits} waits, {:.1} ms in all", ms(waited)),
        "0: streams only compete with the writer for CPU".into(),
    );
    table.row(
        "  database bytes per event",
        format!("{:.0} B", d.bytes_per_event()),
        format!(
            "{} events in {:.1} MiB ({SIZE}-byte events, FTS included)",
            fmt_int(d.store.events as f64),
            d.store.bytes as f64 / MIB
        ),
    );
    table.row(
        "  VmRSS before / at end, store on",
        format!(
            "{:.1} / {:.1} MiB",
            mem_between.rss / MIB,
            d.run.mem_end.rss / MIB
        ),
        "tail: binary defaults".into(),
    );
}

/// Everything [`write_json`] reports.
struct Figures<'a> {
    results: &'a Results,
    raw: Option<f64>,
    ingest: Option<f64>,
    ratio: Option<f64>,
    mem_before: Memory,
    durable: Option<&'a DurableView<'a>>,
}

/// The figures as one JSON object, for tracking trends. A part not run is `null`.
fn write_json(path: &Path, figures: &Figures) -> Result<(), String> {
    let Figures {
        results,
        raw,
        ingest,
        ratio,
        mem_before,
        durable,
    } = *figures;
    let latency = results.latency.as_ref();
    let fan = results.fanout.as_ref();
    let value = serde_json::json!({
        "ingest_per_s": ingest,
        "raw_per_s": raw,
        "ingest_ratio": ratio,
        "sse_p99_us": latency.map(|l| us(l.hist.value_at_quantile(0.99))),
        "fanout_clients": fan.map(|f| f.clients),
        "fanout_deliveries": fan.map(|f| f.deliveries),
        "fanout_gaps": fan.map(|f| f.gaps),
        "fanout_server_cpu_us_per_delivery": fan.map(fanout::Fanout::server_cpu_us_per_delivery),
        "fanout_ingest_delay_p99_us": fan.map(|f| us(f.ingest_delay.value_at_quantile(0.99))),
        "fanout_healthz_p99_us": fan.map(|f| us(f.healthz.value_at_quantile(0.99))),
        "rss_idle_mib": mem_before.rss / MIB,
        "rss_after_flood_mib": results.mem_after_flood.map(|(m, _)| m.rss / MIB),
        "rss_after_flood_trimmed_mib": results.mem_after_flood.map(|(_, t)| t / MIB),
        "retain_bytes_mib": RETAIN_BYTES as f64 / MIB,
        "durable_ingest_per_s": durable.map(|d| d.on_disk),
        "durable_ingest_ratio": durable.map(DurableView::ratio),
        "durable_commit_p50_us": durable.map(|d| d.store.commit.p50.as_secs_f64() * 1e6),
        "durable_commit_p99_us": durable.map(|d| d.store.commit.p99.as_secs_f64() * 1e6),
        "durable_sse_p50_us": durable.map(|d| us(d.latency.hist.value_at_quantile(0.50))),
        "durable_sse_p99_us": durable.map(|d| us(d.latency.hist.value_at_quantile(0.99))),
        "durable_latency_ingest_waits": durable.map(|d| d.store.latency_waits.0),
        "durable_latency_ingest_wait_ms": durable.map(|d| d.store.latency_waits.1.as_secs_f64() * 1e3),
        "db_bytes_per_event": durable.map(DurableView::bytes_per_event),
    });
    let text = serde_json::to_string_pretty(&value).map_err(|e| e.to_string())?;
    std::fs::write(path, text + "\n").map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------------
// 1. Raw SEQPACKET

fn raw_seqpacket(count: u64) -> f64 {
    let (tx, rx) = socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .expect("socketpair");
    // Bounded: a stuck receiver gives up after 5 s.
    socket::setsockopt(&rx, sockopt::ReceiveTimeout, &nix::sys::time::TimeVal::new(5, 0))
        .expect("SO_RCVTIMEO");
    let receiver = std::thread::spawn(move || {
        // The same buffer and flags as the port server's receive loop.
        let mut buf = vec![0u8; MAX_MESSAGE + 1];
        let mut n = 0u64;
        while n < count {
            match socket::recv(rx.as_raw_fd(), &mut buf, MsgFlags::MSG_TRUNC) {
                Ok(0) => break,
                Ok(_) => n += 1,
                Err(nix::Error::EINTR) => {}
                Err(_) => break,
            }
        }
        (n, Instant::now())
    });
    let message = [0x5au8; SIZE];
    let start = Instant::now();
    for _ in 0..count {
        if socket::send(tx.as_raw_fd(), &message, MsgFlags::MSG_NOSIGNAL).is_err() {
            break;
        }
    }
    drop(tx);
    let (received, end) = receiver.join().expect("raw receiver");
    received as f64 / (end - start).as_secs_f64()
}

// ---------------------------------------------------------------------------------------------
// The server, wired as `lpcmon serve` wires it.

struct Burst {
    rate: f64,
    stored: u64,
    sent: u64,
    ingest_dropped: u64,
    queue_dropped: u64,
}

struct Latency {
    hist: Histogram<u64>,
    expected: u64,
    gaps: u64,
    missed: u64,
    sent: u64,
    queue_dropped: u64,
}

struct Results {
    bursts: Vec<Burst>,
    flood_seconds: f64,
    latency: Option<Latency>,
    fanout: Option<fanout::Fanout>,
    /// The flood's memory, and VmRSS after `malloc_trim(0)`.
    mem_after_flood: Option<(Memory, f64)>,
    mem_end: Memory,
    store_events: u64,
    store_bytes: u64,
    /// The SQLite store's own figures, when the pass had one.
    durable: Option<DurableFigures>,
}

struct DurableFigures {
    commit: CommitLatency,
    events: u64,
    bytes: u64,
    /// How often, and how long in all, ingest waited for the writer during the latency run.
    latency_waits: (u64, Duration),
}

/// The median burst rate of a pass, if it ran bursts.
fn median_rate(r: &Results) -> Option<f64> {
    (!r.bursts.is_empty()).then(|| median(&r.bursts.iter().map(|b| b.rate).collect::<Vec<_>>()))
}

pub(crate) struct Http {
    base: String,
    client: reqwest::Client,
}

impl Http {
    pub(crate) async fn json(&self, path: &str) -> Result<Value, String> {
        let fut = async {
            let r = self.client.get(format!("{}{path}", self.base)).send().await?;
            r.text().await
        };
        let text = tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .map_err(|_| format!("GET {path}: timed out"))?
            .map_err(|e| format!("GET {path}: {e}"))?;
        serde_json::from_str(&text).map_err(|e| format!("GET {path}: {e}: {text}"))
    }

    pub(crate) async fn stats(&self) -> Result<Value, String> {
        self.json("/stats").await
    }
}

/// The SSE coalescing cap: [`COALESCE_ENV`] if set, else the service's default.
fn sse_coalesce() -> Result<Duration, String> {
    match std::env::var(COALESCE_ENV) {
        Ok(text) if text.trim() == "0" => Ok(Duration::ZERO),
        Ok(text) => humantime::parse_duration(text.trim()).map_err(|e| format!("{COALESCE_ENV}={text}: {e}")),
        Err(_) => Ok(ApiConfig::default().sse_coalesce),
    }
}

/// The 1-minute load average, to note beside figures taken on a shared machine.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn exec_count(stats: &Value) -> u64 {
    stats["events_by_kind"]["process.exec"].as_u64().unwrap_or(0)
}

async fn run_server_phases(
    dir: &Path,
    client_rt: &tokio::runtime::Runtime,
    pass: Pass,
) -> Result<Results, String> {
    let port_path = dir.join("port.sock");
    let config = ApiConfig {
        retain: RETAIN,
        retain_bytes: RETAIN_BYTES,
        max_connections: MAX_HTTP_CONNECTIONS,
        ingest_bytes: Some(INGEST_BYTES),
        sse_coalesce: sse_coalesce()?,
        ..ApiConfig::default()
    };
    let database = match pass.database {
        true => {
            // Nothing is evicted from the file during the run: bytes per event stays honest.
            let keep_all = Retention {
                events: u64::MAX,
                bytes: u64::MAX,
                max_age: None,
            };
            let db = Database::open(&dir.join("events.db"), keep_all).map_err(|e| e.to_string())?;
            Some(Arc::new(db))
        }
        false => None,
    };
    let state = match &database {
        Some(db) => AppState::with_database(config, db.clone()),
        None => AppState::new(config),
    };
    let (ingest_tx, ingest_rx) = mpsc::channel(INGEST_CAPACITY);
    // As the binary wires it: ingest on a thread of its own.
    let ingest = spawn_ingest_thread(state.clone(), ingest_rx).map_err(|e| format!("ingest thread: {e}"))?;
    let dispatcher = Arc::new(
        Dispatcher::new(
            ServerConfig {
                api: "unix",
                max_message: MAX_MESSAGE,
                ..ServerConfig::default()
            },
            ingest_tx,
        )
        .with_ingest_budget(state.ingest_budget()),
    );
    let counters = dispatcher.counters();
    let port = UnixPortServer::start(
        UnixPortConfig {
            max_message: MAX_MESSAGE,
            ..UnixPortConfig::new(&port_path)
        },
        dispatcher,
    )
    .map_err(|e| format!("port server: {e}"))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("bind: {e}"))?;
    let base = format!("http://{}", listener.local_addr().map_err(|e| e.to_string())?);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let http_server = tokio::spawn(lpcmon_api::serve(listener, state.clone(), async {
        let _ = stop_rx.await;
    }));
    let http = Http {
        base: base.clone(),
        client: reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(|e| e.to_string())?,
    };

    let outcome = async {
        let mut bursts = Vec::new();
        let flood_start = Instant::now();
        let flooding = || pass.flood.is_some_and(|f| flood_start.elapsed() < f);
        while bursts.len() < pass.bursts || flooding() {
            let b = burst(&http, &port_path, &counters, BURST_COUNT, database.as_deref())
                .await
                .map_err(|e| format!("burst {}: {e}", bursts.len() + 1))?;
            bursts.push(b);
        }
        let flood_seconds = flood_start.elapsed().as_secs_f64();
        let mem_after_flood = pass.flood.is_some().then(memory_after_flood);
        let waits_before = database.as_ref().map(|db| db.ingest_waits());
        let latency = match pass.latency {
            true => Some(latency_run(&http, &base, &port_path, client_rt).await?),
            false => None,
        };
        let latency_waits = match (&database, waits_before) {
            (Some(db), Some((n, t))) => {
                let (n_end, t_end) = db.ingest_waits();
                (n_end - n, t_end.saturating_sub(t))
            }
            _ => (0, Duration::ZERO),
        };
        let fanout = match pass.fanout {
            true => Some(fanout::run(&http, &base, &port_path, client_rt).await?),
            false => None,
        };
        let mem_end = memory();
        if database.is_some() {
            wait_committed(&http).await?;
        }
        let stats = http.stats().await?;
        Ok::<_, String>(Results {
            bursts,
            flood_seconds,
            latency,
            fanout,
            mem_after_flood,
            mem_end,
            store_events: stats["store"]["events"].as_u64().unwrap_or(0),
            store_bytes: stats["store"]["bytes"].as_u64().unwrap_or(0),
            durable: database.as_ref().map(|db| {
                let status = db.status();
                DurableFigures {
                    commit: db.commit_latency(),
                    events: status.events,
                    bytes: status.bytes,
                    latency_waits,
                }
            }),
        })
    }
    .await;

    // Clean shutdown, each step bounded.
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), http_server).await;
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::task::spawn_blocking(move || port.shutdown()),
    )
    .await;
    // The port server held the only ingest sender, so the task ends on its own.
    if tokio::time::timeout(
        Duration::from_secs(5),
        tokio::task::spawn_blocking(move || ingest.join()),
    )
    .await
    .is_err()
    {
        eprintln!("ingest thread did not end in 5 s");
    }
    if let Some(db) = database {
        // Bounded like the steps above: the writer commits what it holds, then stops.
        let closed = tokio::task::spawn_blocking(move || db.close());
        if tokio::time::timeout(Duration::from_secs(10), closed)
            .await
            .is_err()
        {
            eprintln!("store writer did not stop in 10 s");
        }
    }
    outcome
}

/// Waits (bounded) until the store has committed every event ingested so far, so the
/// database's event count and size cover the whole run.
async fn wait_committed(http: &Http) -> Result<(), String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let stats = http.stats().await?;
        let newest = stats["store"]["newest_id"].as_u64().unwrap_or(0);
        let committed = stats["store"]["durable"]["newest_id"].as_u64().unwrap_or(0);
        if committed >= newest {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("the store committed up to id {committed}, not {newest}"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Rate-0 bursts

async fn burst(
    http: &Http,
    port: &Path,
    counters: &PortCounters,
    count: u64,
    durable: Option<&Database>,
) -> Result<Burst, String> {
    let before = http.stats().await?;
    let newest_before = before["store"]["newest_id"].as_u64().unwrap_or(0);
    let exec_before = exec_count(&before);
    let dropped_before = counters.ingest_dropped.load(std::sync::atomic::Ordering::Relaxed);

    let mut child = spawn_loadgen(port, 0, count, count as usize)?;
    let deadline = Instant::now() + WAIT;

    // The first stored event of this burst, caught while it is surely still in the store.
    let first_path = format!("/events?after={newest_before}&kind=process.exec&limit=1");
    let first = loop {
        let page = http.json(&first_path).await?;
        if let Some(e) = page["events"].get(0) {
            break e.clone();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err("no event was stored".into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let report = wait_child(child, deadline).await?;
    let sent = report["sent"].as_u64().unwrap_or(0);
    let queue_dropped = report["dropped"].as_u64().unwrap_or(0);

    // Every sent event is either stored or counted as an ingest drop.
    let (stored, ingest_dropped) = loop {
        let stats = http.stats().await?;
        let stored = exec_count(&stats) - exec_before;
        let dropped = counters.ingest_dropped.load(std::sync::atomic::Ordering::Relaxed) - dropped_before;
        if stored + dropped >= sent {
            break (stored, dropped);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "only {stored} of {sent} events stored ({dropped} dropped)"
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let last = http.json("/events?kind=process.exec&limit=1").await?["events"][0].clone();
    if last["producer"]["instance"] != first["producer"]["instance"] || first["producer"]["seq"] != 1 {
        return Err(format!(
            "first/last stored events are not this burst's: {first} / {last}"
        ));
    }
    let t0 = parse_rfc3339(first["received"].as_str().unwrap_or_default()).ok_or("bad received")?;
    let mut t1 = parse_rfc3339(last["received"].as_str().unwrap_or_default()).ok_or("bad received")?;
    if let Some(db) = durable {
        // With the store, the burst ends when its last event is committed: the writer's own
        // stamp of that commit, not when this loop notices it (its polling is not the store's
        // cost). If a later record (the producer's disconnect) was committed after it, that
        // later commit's stamp counts, which can only make the store look slower.
        let last_id = last["id"].as_u64().ok_or("the last event has no id")?;
        loop {
            let status = db.status();
            if status.newest_id.unwrap_or(0) >= last_id {
                t1 = t1.max(status.newest_committed_ns.unwrap_or_else(wall_ns));
                break;
            }
            if Instant::now() > deadline {
                return Err("the burst was not committed".into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let seconds = t1.saturating_sub(t0) as f64 / 1e9;
    Ok(Burst {
        rate: (stored.saturating_sub(1)) as f64 / seconds,
        stored,
        sent,
        ingest_dropped,
        queue_dropped,
    })
}

// ---------------------------------------------------------------------------------------------
// 4. Latency to SSE clients

struct ClientResult {
    hist: Histogram<u64>,
    gaps: u64,
    missed: u64,
}

async fn latency_run(
    http: &Http,
    base: &str,
    port: &Path,
    client_rt: &tokio::runtime::Runtime,
) -> Result<Latency, String> {
    let expected = LAT_RATE * LAT_SECONDS;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(LAT_SECONDS) + WAIT;
    let url = format!("{base}/events/stream");
    let clients = start_clients(http, client_rt, SSE_CLIENTS, |client, _, ready| {
        sse_client(client, url.clone(), expected, deadline, ready)
    })
    .await?;

    let child = spawn_loadgen(port, LAT_RATE, expected, LAT_QUEUE)?;
    let report = wait_child(child, Instant::now() + Duration::from_secs(LAT_SECONDS) + WAIT).await?;

    let mut hist = new_histogram();
    let (mut gaps, mut missed) = (0, 0);
    for c in clients {
        let r = c.await.map_err(|e| format!("SSE client: {e}"))?;
        hist.add(&r.hist).map_err(|e| e.to_string())?;
        gaps += r.gaps;
        missed += r.missed;
    }
    Ok(Latency {
        hist,
        expected: expected * SSE_CLIENTS as u64,
        gaps,
        missed,
        sent: report["sent"].as_u64().unwrap_or(0),
        queue_dropped: report["dropped"].as_u64().unwrap_or(0),
    })
}

/// Starts `count` SSE clients on `client_rt` (one connection each, from `make(client, index,
/// ready)`), waits until each has its stream open, and checks the server counts them all.
pub(crate) async fn start_clients<T, Fut>(
    http: &Http,
    client_rt: &tokio::runtime::Runtime,
    count: usize,
    mut make: impl FnMut(reqwest::Client, usize, oneshot::Sender<()>) -> Fut,
) -> Result<Vec<tokio::task::JoinHandle<T>>, String>
where
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    let mut clients = Vec::with_capacity(count);
    let mut ready = Vec::with_capacity(count);
    for i in 0..count {
        let (tx, rx) = oneshot::channel();
        clients.push(client_rt.spawn(make(client.clone(), i, tx)));
        ready.push(rx);
    }
    for rx in ready {
        tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .map_err(|_| "an SSE client did not connect in 30 s")?
            .map_err(|_| "an SSE client failed to connect")?;
    }
    let connected = http.stats().await?["sse"]["clients"].as_u64().unwrap_or(0);
    if connected != count as u64 {
        return Err(format!("{connected} SSE clients connected, not {count}"));
    }
    Ok(clients)
}

pub(crate) fn new_histogram() -> Histogram<u64> {
    // Nanoseconds, 1 ns to 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

/// Reads one SSE stream until it has seen `expected` `process.exec` events (or gaps covering
/// them), or until `deadline`. Latency = wall clock when the chunk arrived minus the event's
/// `time` (the load generator's wall clock at push).
async fn sse_client(
    client: reqwest::Client,
    url: String,
    expected: u64,
    deadline: tokio::time::Instant,
    ready: oneshot::Sender<()>,
) -> ClientResult {
    let mut result = ClientResult {
        hist: new_histogram(),
        gaps: 0,
        missed: 0,
    };
    let response = match tokio::time::timeout(Duration::from_secs(10), client.get(url).send()).await {
        Ok(Ok(r)) if r.status().is_success() => r,
        _ => return result,
    };
    // The handler subscribed to the broadcast before it answered, so from here on nothing is
    // missed.
    let _ = ready.send(());
    let mut body = response.bytes_stream();
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut event = Vec::new();
    while result.hist.len() + result.missed < expected {
        let chunk = match tokio::time::timeout_at(deadline, body.next()).await {
            Ok(Some(Ok(chunk))) => chunk,
            _ => break,
        };
        let now = wall_ns();
        buf.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
            let line = &buf[start..start + nl];
            start += nl + 1;
            if let Some(name) = line.strip_prefix(b"event:") {
                event = name.trim_ascii().to_vec();
            } else if let Some(data) = line.strip_prefix(b"data:") {
                if event == b"process.exec" {
                    if let Some(t) = field_str(data, b"\"time\":\"").and_then(parse_rfc3339) {
                        let _ = result.hist.record(now.saturating_sub(t).max(1));
                    }
                } else if event == b"gap" {
                    result.gaps += 1;
                    let v: Value = serde_json::from_slice(data).unwrap_or_default();
                    result.missed += v["missed"].as_u64().unwrap_or(0);
                }
            } else if line.is_empty() {
                event.clear();
            }
        }
        buf.drain(..start);
    }
    result
}

/// The string value that follows `key` (which ends with the opening quote).
pub(crate) fn field_str<'a>(data: &'a [u8], key: &[u8]) -> Option<&'a str> {
    let at = data.windows(key.len()).position(|w| w == key)? + key.len();
    let len = data[at..].iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&data[at..at + len]).ok()
}

// ---------------------------------------------------------------------------------------------
// The load generator, in a child process

pub(crate) fn spawn_loadgen(port: &Path, rate: u64, count: u64, queue: usize) -> Result<Child, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    Command::new(exe)
        .env(CHILD_ENV, format!("{}|{rate}|{count}|{queue}", port.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawn loadgen: {e}"))
}

/// Waits for the child (bounded: killed at `deadline`) and returns its JSON report.
pub(crate) async fn wait_child(mut child: Child, deadline: Instant) -> Result<Value, String> {
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("loadgen did not finish in time".into());
            }
            Ok(None) => tokio::time::sleep(Duration::from_millis(5)).await,
            Err(e) => return Err(format!("wait: {e}")),
        }
    }
    let output = child
        .wait_with_output()
        .map_err(|e| format!("loadgen output: {e}"))?;
    if !output.status.success() {
        return Err(format!("loadgen exited with {}", output.status));
    }
    serde_json::from_slice(&output.stdout).map_err(|e| format!("loadgen report: {e}"))
}

fn child_loadgen(spec: &str) {
    let parts: Vec<&str> = spec.split('|').collect();
    let [port, rate, count, queue] = parts[..] else {
        eprintln!("bad {CHILD_ENV}: {spec}");
        std::process::exit(2);
    };
    let number = |s: &str| s.parse::<u64>().unwrap_or_else(|_| std::process::exit(2));
    let config = LoadgenConfig {
        producer: ProducerConfig {
            queue_capacity: number(queue) as usize,
            max_message: MAX_MESSAGE,
            ..ProducerConfig::new(PathBuf::from(port), ProducerKind::Loadgen)
        },
        rate: number(rate),
        count: number(count),
        size: SIZE,
    };
    match loadgen::run(&config) {
        Ok(report) => println!("{}", serde_json::to_string(&report).unwrap_or_default()),
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(1);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers

fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Parses an event JSON time (RFC 3339) to nanoseconds since the epoch.
pub(crate) fn parse_rfc3339(s: &str) -> Option<u64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp_nanos()).ok()
}

/// A wrong parser would make every latency figure wrong; check it against known instants
/// (the same ones `timefmt`'s tests use).
fn check_time_parser() {
    assert_eq!(parse_rfc3339("1970-01-01T00:00:00.000000000Z"), Some(0));
    assert_eq!(
        parse_rfc3339("2000-02-29T00:00:00.000000001Z"),
        Some(951_782_400_000_000_001)
    );
    assert_eq!(
        parse_rfc3339("2023-11-14T22:13:20.123456789Z"),
        Some(1_700_000_000_123_456_789)
    );
}

#[derive(Clone, Copy)]
struct Memory {
    rss: f64,
    hwm: f64,
}

/// The flood's memory, and VmRSS again after `malloc_trim(0)` has handed the free pages of
/// every malloc arena back to the kernel: the difference is what glibc's allocator keeps after
/// the churn (free, but resident), not data the store or the channel hold. (`mallinfo2` would
/// say more, but it reports the main arena only, and ingest and the port allocate in their
/// threads' arenas.)
fn memory_after_flood() -> (Memory, f64) {
    let before = memory();
    // SAFETY: malloc_trim only releases free memory held by malloc; no pointer is involved.
    unsafe { libc::malloc_trim(0) };
    (before, memory().rss)
}

/// VmRSS and VmHWM of this process, bytes.
fn memory() -> Memory {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |k| k * 1024.0)
    };
    Memory {
        rss: kib("VmRSS:"),
        hwm: kib("VmHWM:"),
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn fmt_int(v: f64) -> String {
    let s = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn verdict(met: bool, target: &str) -> String {
    format!("{target} ({})", if met { "met" } else { "MISSED" })
}

#[derive(Default)]
struct Table(Vec<[String; 3]>);

impl Table {
    fn row(&mut self, name: &str, value: String, target: String) {
        self.0.push([name.to_owned(), value, target]);
    }

    fn print(&self) {
        let w0 = self.0.iter().map(|r| r[0].len()).max().unwrap_or(0);
        let w1 = self.0.iter().map(|r| r[1].len()).max().unwrap_or(0);
        let mut out = String::new();
        let (metric, value) = ("metric", "value");
        let _ = writeln!(out, "{metric:w0$}  {value:w1$}  target / note");
        let _ = writeln!(out, "{}", "-".repeat(w0 + w1 + 40));
        for [a, b, c] in &self.0 {
            let _ = writeln!(out, "{a:w0$}  {b:w1$}  {c}");
        }
        print!("{out}");
    }
}
