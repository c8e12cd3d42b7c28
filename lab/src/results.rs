//! What a cell records, and the files that hold the records: `results.jsonl` (one JSON object
//! per cell, appended as each cell finishes, so an interrupted run keeps what it did) and
//! `results.csv` (the same, flat, rewritten from the JSON lines).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::plan::{CellSpec, Rate};
use crate::transport::Outcome;

pub const JSONL: &str = "results.jsonl";
pub const CSV: &str = "results.csv";

/// The machine a cell ran on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Machine {
    pub os: String,
    pub kernel: String,
    pub cpus: usize,
    pub load_before: [f64; 3],
    pub load_after: [f64; 3],
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// One cell's record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CellResult {
    /// `CellSpec::key`, for `--resume`.
    pub key: String,
    pub experiment: String,
    pub transport: String,
    pub mode: String,
    pub size: usize,
    pub rate: String,
    /// `250ms` or `20000msgs`.
    pub load: String,
    pub repeat: u32,
    /// The message limit events were fragmented at, and the messages per event.
    pub limit: usize,
    pub fragments_per_message: u16,
    pub sent: u64,
    pub received: u64,
    pub lost: BTreeMap<String, u64>,
    pub lost_total: u64,
    /// Whether sent = received + lost held exactly.
    pub accounted: bool,
    pub reordered: u64,
    pub duplicates: u64,
    pub seconds: f64,
    pub msgs_per_sec: f64,
    pub mb_per_sec: f64,
    pub latency_us: Latency,
    pub cpu_us_per_msg_producer: f64,
    pub cpu_us_per_msg_consumer: f64,
    pub machine: Machine,
    /// Seconds since the Unix epoch when the cell started.
    pub started: u64,
}

impl CellResult {
    pub fn new(spec: &CellSpec, outcome: &Outcome, fragments: u16, machine: Machine, started: u64) -> Self {
        let lost_total: u64 = outcome.lost.total();
        let seconds = outcome.last_arrival_ns.saturating_sub(outcome.first_push_ns) as f64 / 1e9;
        let per_sec = |v: f64| if seconds > 0.0 { v / seconds } else { 0.0 };
        let h = &outcome.hist;
        let us = |v: u64| if h.is_empty() { 0.0 } else { v as f64 / 1000.0 };
        let per_msg = |ns: u64| {
            if outcome.sent == 0 {
                0.0
            } else {
                ns as f64 / 1000.0 / outcome.sent as f64
            }
        };
        CellResult {
            key: spec.key(),
            experiment: spec.experiment.clone(),
            transport: spec.transport.to_string(),
            mode: spec.mode.name().to_owned(),
            size: spec.size,
            rate: spec.rate.to_string(),
            load: spec.load.to_string(),
            repeat: spec.repeat,
            limit: outcome.limit,
            fragments_per_message: fragments,
            sent: outcome.sent,
            received: outcome.received,
            lost: outcome.lost.0.clone(),
            lost_total,
            accounted: outcome.sent == outcome.received + lost_total,
            reordered: outcome.reordered,
            duplicates: outcome.duplicates,
            seconds,
            msgs_per_sec: per_sec(outcome.received as f64),
            mb_per_sec: per_sec((outcome.received * spec.size as u64) as f64) / 1e6,
            latency_us: Latency {
                p50: us(h.value_at_quantile(0.50)),
                p90: us(h.value_at_quantile(0.90)),
                p99: us(h.value_at_quantile(0.99)),
                p999: us(h.value_at_quantile(0.999)),
                max: us(h.max()),
            },
            cpu_us_per_msg_producer: per_msg(outcome.producer_cpu_ns),
            cpu_us_per_msg_consumer: per_msg(outcome.consumer_cpu_ns),
            machine,
            started,
        }
    }

    /// The cell without its repeat index: repeats of one cell share it.
    pub fn group(&self) -> String {
        format!(
            "{}|{}|{}|{}|{}|{}",
            self.experiment, self.transport, self.mode, self.size, self.rate, self.load
        )
    }

    /// The offered rate as a number for charts (`max` is plotted past the largest rate).
    pub fn rate_value(&self) -> Option<u64> {
        self.rate.parse().ok()
    }

    pub fn is_max_rate(&self) -> bool {
        self.rate == Rate::Max.to_string()
    }

    pub fn is_burst(&self) -> bool {
        self.load.ends_with("msgs")
    }
}

/// Reads every complete record of `dir/results.jsonl` (a torn last line from a kill is skipped).
pub fn read(dir: &Path) -> anyhow::Result<Vec<CellResult>> {
    let path = dir.join(JSONL);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(&line) {
            Ok(r) => out.push(r),
            Err(e) => {
                tracing::warn!(line = i + 1, error = %e, "skipping an unreadable record in {}", path.display())
            }
        }
    }
    Ok(out)
}

/// Appends one record and flushes it, so a crash or Ctrl-C keeps every finished cell.
pub fn append(dir: &Path, result: &CellResult) -> anyhow::Result<()> {
    let path = dir.join(JSONL);
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut line = serde_json::to_string(result)?;
    line.push('\n');
    f.write_all(line.as_bytes())
        .and_then(|()| f.sync_data())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Rewrites `dir/results.csv` from the records.
pub fn write_csv(dir: &Path, results: &[CellResult]) -> anyhow::Result<()> {
    let mut s = String::from(
        "experiment,transport,mode,size,rate,load,repeat,limit,fragments_per_message,sent,received,lost_total,lost_by_cause,accounted,reordered,duplicates,seconds,msgs_per_sec,mb_per_sec,lat_p50_us,lat_p90_us,lat_p99_us,lat_p999_us,lat_max_us,cpu_us_per_msg_producer,cpu_us_per_msg_consumer,kernel,cpus,load_before,load_after\n",
    );
    for r in results {
        let causes: Vec<String> = r.lost.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let l = &r.latency_us;
        let load = |a: [f64; 3]| format!("{:.2} {:.2} {:.2}", a[0], a[1], a[2]);
        s.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{:.6},{:.1},{:.3},{:.1},{:.1},{:.1},{:.1},{:.1},{:.3},{:.3},{},{},{},{}\n",
            csv_field(&r.experiment),
            csv_field(&r.transport),
            r.mode,
            r.size,
            r.rate,
            r.load,
            r.repeat,
            r.limit,
            r.fragments_per_message,
            r.sent,
            r.received,
            r.lost_total,
            csv_field(&causes.join(";")),
            r.accounted,
            r.reordered,
            r.duplicates,
            r.seconds,
            r.msgs_per_sec,
            r.mb_per_sec,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
            r.cpu_us_per_msg_producer,
            r.cpu_us_per_msg_consumer,
            csv_field(&r.machine.kernel),
            r.machine.cpus,
            load(r.machine.load_before),
            load(r.machine.load_after),
        ));
    }
    let path = dir.join(CSV);
    std::fs::write(&path, s).with_context(|| format!("cannot write {}", path.display()))
}

/// Quotes a CSV field when it needs it (transport specs contain commas).
fn csv_field(v: &str) -> String {
    if v.contains([',', '"', '\n']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_owned()
    }
}

/// This machine: OS, kernel, CPUs, and the load average now.
pub fn machine_now() -> Machine {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| std::env::consts::OS.to_owned());
    Machine {
        os: std::env::consts::OS.to_owned(),
        kernel,
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_before: load_average(),
        load_after: [0.0; 3],
    }
}

/// The 1, 5 and 15 minute load averages (zeros where the OS has none).
pub fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut v = text.split_whitespace().map(|s| s.parse::<f64>().unwrap_or(0.0));
    [
        v.next().unwrap_or(0.0),
        v.next().unwrap_or(0.0),
        v.next().unwrap_or(0.0),
    ]
}
