//! `lpcmon status`: a running server on one screen (or as JSON for scripts), from its
//! `/stats`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anstyle::{AnsiColor, Style};
use serde::{Deserialize, Serialize};

use crate::cli::StatusArgs;
use crate::http::Server;

/// The parts of `/stats` the summary uses. Every field defaults, so a server that adds to its
/// report (or a newer store with more counters) still reads.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Stats {
    version: String,
    started: String,
    uptime_seconds: f64,
    notices: Vec<String>,
    producers: Vec<ProducerStats>,
    losses_by_stage: BTreeMap<String, u64>,
    rates: Rates,
    store: StoreStats,
    sse: SseStats,
    refused_connections: BTreeMap<String, u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ProducerStats {
    kind: String,
    instance: String,
    os: String,
    connected: bool,
    connected_since: String,
    connections: u64,
    counters: ProducerCounters,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ProducerCounters {
    events: u64,
    last_seq: Option<u64>,
    losses: BTreeMap<String, u64>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct Rates {
    pub window_seconds: u64,
    pub events_per_second: f64,
    pub lost_per_second: f64,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct StoreStats {
    pub events: u64,
    pub bytes: u64,
    pub retain: u64,
    pub retain_bytes: u64,
    pub evicted: u64,
    pub stored_total: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SseStats {
    clients: u64,
    missed: BTreeMap<String, u64>,
}

/// What `status --json` prints: a stable, flat digest of `/stats`.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub url: String,
    pub version: String,
    pub started: String,
    pub uptime_seconds: f64,
    pub producers: Vec<ProducerSummary>,
    pub producers_connected: usize,
    pub rates: Rates,
    pub lost_total: u64,
    /// Every loss stage, zero or not.
    pub losses_by_stage: BTreeMap<String, u64>,
    pub store: StoreStats,
    /// The fuller of events/retain and bytes/retain_bytes, in percent.
    pub store_occupancy_percent: f64,
    pub sse_clients: u64,
    /// Events SSE clients missed (evicted before they were sent, or the client lagged).
    pub sse_missed: u64,
    pub refused_connections: u64,
    pub notices: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct ProducerSummary {
    pub kind: String,
    pub instance: String,
    pub os: String,
    pub connected: bool,
    pub since: String,
    pub connections: u64,
    pub events: u64,
    pub last_seq: Option<u64>,
    pub lost: u64,
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

impl Summary {
    fn new(url: &str, stats: Stats) -> Self {
        let store = stats.store;
        Summary {
            url: url.to_owned(),
            version: stats.version,
            started: stats.started,
            uptime_seconds: stats.uptime_seconds,
            producers_connected: stats.producers.iter().filter(|p| p.connected).count(),
            producers: stats
                .producers
                .into_iter()
                .map(|p| ProducerSummary {
                    lost: p.counters.losses.values().sum(),
                    kind: p.kind,
                    instance: p.instance,
                    os: p.os,
                    connected: p.connected,
                    since: p.connected_since,
                    connections: p.connections,
                    events: p.counters.events,
                    last_seq: p.counters.last_seq,
                })
                .collect(),
            rates: stats.rates,
            lost_total: stats.losses_by_stage.values().sum(),
            losses_by_stage: stats.losses_by_stage,
            store_occupancy_percent: percent(store.events, store.retain)
                .max(percent(store.bytes, store.retain_bytes)),
            store,
            sse_clients: stats.sse.clients,
            sse_missed: stats.sse.missed.values().sum(),
            refused_connections: stats.refused_connections.values().sum(),
            notices: stats.notices,
        }
    }

    /// The one-screen text, styled (anstream strips the styles when not on a terminal or
    /// when NO_COLOR is set).
    pub fn render(&self) -> String {
        let bold = Style::new().bold();
        let dim = Style::new().dimmed();
        let red = AnsiColor::Red.on_default().bold();
        let green = AnsiColor::Green.on_default();
        let yellow = AnsiColor::Yellow.on_default();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{bold}lpcmon {}{bold:#} at {}  {dim}up {} (since {}){dim:#}",
            self.version,
            self.url,
            humantime::format_duration(std::time::Duration::from_secs(self.uptime_seconds as u64)),
            self.started
        );
        let _ = writeln!(
            out,
            "rate     {:.1} events/s, {:.1} lost/s (last {} s)",
            self.rates.events_per_second, self.rates.lost_per_second, self.rates.window_seconds
        );
        let s = &self.store;
        let _ = writeln!(
            out,
            "store    {} events of {}, {} of {} ({:.0}% full); {} stored in all, {} evicted",
            s.events,
            s.retain,
            crate::units::Bytes(s.bytes).human(),
            crate::units::Bytes(s.retain_bytes).human(),
            self.store_occupancy_percent,
            s.stored_total,
            s.evicted
        );
        let _ = writeln!(
            out,
            "clients  {} SSE stream(s){}",
            self.sse_clients,
            if self.sse_missed > 0 {
                format!(", {} events missed by lagging or late clients", self.sse_missed)
            } else {
                String::new()
            }
        );
        if self.lost_total == 0 {
            let _ = writeln!(out, "losses   {green}none{green:#}");
        } else {
            let stages: Vec<String> = self
                .losses_by_stage
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(stage, n)| format!("{stage} {n}"))
                .collect();
            let _ = writeln!(
                out,
                "losses   {red}{} lost{red:#}: {}",
                self.lost_total,
                stages.join(", ")
            );
        }
        if self.refused_connections > 0 {
            let _ = writeln!(
                out,
                "refused  {yellow}{} connection(s){yellow:#}",
                self.refused_connections
            );
        }
        let _ = writeln!(
            out,
            "\n{bold}producers{bold:#} ({} connected, {} known)",
            self.producers_connected,
            self.producers.len()
        );
        if self.producers.is_empty() {
            let _ = writeln!(out, "  {dim}none yet{dim:#}");
        }
        for p in &self.producers {
            let state = if p.connected {
                format!("{green}connected{green:#}   ")
            } else {
                format!("{dim}disconnected{dim:#}")
            };
            let lost = if p.lost > 0 {
                format!("{red}{:>8}{red:#}", p.lost)
            } else {
                format!("{:>8}", 0)
            };
            let _ = writeln!(
                out,
                "  {:<15} {:<8} {state} {:>10} events {lost} lost  {dim}{} since {}{dim:#}",
                p.kind,
                p.instance.get(..8).unwrap_or(&p.instance),
                p.events,
                p.os,
                p.since
            );
        }
        if !self.notices.is_empty() {
            let _ = writeln!(out, "\n{yellow}notices{yellow:#}");
            for n in &self.notices {
                let _ = writeln!(out, "  {n}");
            }
        }
        out
    }
}

/// Fetches and summarises `/stats` once.
pub async fn summary(server: &Server) -> anyhow::Result<Summary> {
    let stats: Stats = server.json("/stats").await?;
    Ok(Summary::new(&server.base, stats))
}

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    use std::io::Write as _;
    let server = Server::new(&args.server)?;
    let mut out = anstream::stdout();
    loop {
        match summary(&server).await {
            Ok(summary) if args.json => writeln!(out, "{}", serde_json::to_string(&summary)?)?,
            Ok(summary) => {
                if args.watch {
                    // Home and clear, then the screen: a redraw, not a scroll.
                    write!(out, "\x1b[H\x1b[2J")?;
                }
                write!(out, "{}", summary.render())?;
                if args.watch {
                    writeln!(out, "\nrefreshing every {}; Ctrl-C to stop", args.interval)?;
                }
            }
            // While watching, a server that goes away is something to show, not a reason to
            // stop: it may be restarting.
            Err(e) if args.watch => writeln!(
                out,
                "{}: {e:#}",
                humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            )?,
            Err(e) => return Err(e),
        }
        out.flush()?;
        if !args.watch {
            return Ok(());
        }
        tokio::select! {
            () = tokio::time::sleep(args.interval.0) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
