//! `lpcmon tail`: follows `/events/stream`, one aligned line per event.
//!
//! It resumes after a reconnect with `Last-Event-ID`, so nothing the server still holds is
//! missed; what it no longer holds the server reports as a gap, printed as one. Lines starting
//! with `--` are about the stream, not events: gaps, disconnects, a server restart. A restart is
//! noticed by `/stats` `started` changing; if the new server's ids began again (an in-memory
//! store), following resumes from its first event instead of waiting for ids it will never
//! reach again.

use std::io::Write as _;
use std::time::Duration;

use anstyle::{AnsiColor, Style};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::Value;

use crate::cli::TailArgs;
use crate::http::Server;

/// What tail needs from `/stats` to place itself.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Position {
    started: String,
    store: PositionStore,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PositionStore {
    newest_id: Option<u64>,
}

/// Why one connection ended.
enum Ended {
    /// `--count` events were printed.
    Done,
    /// The server closed the stream or went away.
    Lost(String),
}

struct Follower {
    server: Server,
    filters: Vec<(&'static str, String)>,
    out: anstream::AutoStream<std::io::Stdout>,
    /// The last event id seen: the resume point.
    last_id: u64,
    /// The server instance, by its start time.
    started: Option<String>,
    remaining: Option<u64>,
}

pub async fn run(args: TailArgs, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let server = Server::new(&args.server)?;
    let mut filters: Vec<(&'static str, String)> = args.kind.iter().map(|k| ("kind", k.clone())).collect();
    filters.extend(args.pid.map(|p| ("pid", p.to_string())));
    filters.extend(args.query.clone().map(|q| ("q", q)));
    filters.extend(args.producer.clone().map(|p| ("producer", p)));
    // The first contact must succeed: a wrong --url is an error, not a wait.
    let position: Position = server.json("/stats").await?;
    let mut follower = Follower {
        last_id: args.after.unwrap_or(position.store.newest_id.unwrap_or(0)),
        started: Some(position.started),
        server,
        filters,
        out: anstream::stdout(),
        remaining: args.count,
    };
    let first_delay = args.reconnect.0.max(Duration::from_millis(10));
    tokio::select! {
        result = follower.follow(first_delay) => result,
        () = shutdown => Ok(()),
    }
}

impl Follower {
    async fn follow(&mut self, first_delay: Duration) -> anyhow::Result<()> {
        let mut delay = first_delay;
        loop {
            match self.connect_once().await {
                Ok(Ended::Done) => return Ok(()),
                Ok(Ended::Lost(why)) => {
                    delay = first_delay;
                    self.marker(&format!(
                        "disconnected ({why}); reconnecting after id {}",
                        self.last_id
                    ))?;
                }
                // A refusal (bad filter, wrong token) will not get better by retrying.
                Err(e) if !is_transient(&e) => return Err(e),
                Err(_) => {}
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(first_delay * 30);
        }
    }

    /// One connection: place ourselves (noticing a restart), stream until it ends.
    async fn connect_once(&mut self) -> anyhow::Result<Ended> {
        let position: Position = self.server.json("/stats").await?;
        if self.started.as_deref() != Some(position.started.as_str()) {
            let newest = position.store.newest_id.unwrap_or(0);
            if newest < self.last_id {
                self.marker(&format!(
                    "server restarted at {}; its event ids began again: following from its first event",
                    position.started
                ))?;
                self.last_id = 0;
            } else {
                self.marker(&format!("server restarted at {}", position.started))?;
            }
            self.started = Some(position.started);
        }
        let request = self
            .server
            .get_with("/events/stream", &self.filters)
            .header("Last-Event-ID", self.last_id.to_string())
            .header("Accept", "text/event-stream");
        let response = self.server.send(request).await?;
        let mut events = response.bytes_stream().eventsource();
        while let Some(item) = events.next().await {
            let event = match item {
                Ok(event) => event,
                Err(e) => return Ok(Ended::Lost(e.to_string())),
            };
            if let Ok(id) = event.id.parse::<u64>() {
                self.last_id = id;
            }
            // The `retry:` preamble arrives as an event with no data.
            if event.data.is_empty() {
                continue;
            }
            if event.event == "gap" {
                let gap: Value = serde_json::from_str(&event.data).unwrap_or_default();
                self.marker(&format!(
                    "gap: {} events missed ({})",
                    gap["missed"],
                    gap["reason"].as_str().unwrap_or("unknown")
                ))?;
                continue;
            }
            let style = style_for(&event.event);
            let line = match serde_json::from_str::<Value>(&event.data) {
                Ok(value) => format_event(&value),
                Err(_) => format!("{:>8} {}", event.id, event.data),
            };
            writeln!(self.out, "{style}{line}{style:#}")?;
            if let Some(remaining) = &mut self.remaining {
                *remaining -= 1;
                if *remaining == 0 {
                    self.out.flush()?;
                    return Ok(Ended::Done);
                }
            }
        }
        Ok(Ended::Lost("the server closed the stream".into()))
    }

    fn marker(&mut self, text: &str) -> std::io::Result<()> {
        let style = AnsiColor::Yellow.on_default();
        writeln!(self.out, "{style}-- {text}{style:#}")?;
        self.out.flush()
    }
}

/// Network trouble is worth waiting out; anything the server said no to is not.
fn is_transient(err: &anyhow::Error) -> bool {
    err.chain()
        .find_map(|e| e.downcast_ref::<crate::exit::Failure>())
        .is_some_and(|f| f.kind == crate::exit::Kind::Connect)
        || err.chain().any(|e| e.downcast_ref::<reqwest::Error>().is_some())
}

fn style_for(kind: &str) -> Style {
    match kind {
        "loss" => AnsiColor::Red.on_default().bold(),
        k if k.starts_with("producer.") => AnsiColor::Cyan.on_default(),
        "process.start" | "process.exec" => AnsiColor::Green.on_default(),
        "process.exit" | "thread.exit" => Style::new().dimmed(),
        _ => Style::new(),
    }
}

/// `HH:MM:SS.mmm` of an RFC 3339 time, the rest of the date being noise in a live tail.
fn clock(time: &str) -> &str {
    time.split_once('T')
        .map_or(time, |(_, t)| t.get(..12).unwrap_or(t))
}

/// One aligned line: id, time, kind, pid, then what matters for that kind.
pub fn format_event(e: &Value) -> String {
    let kind = e["kind"].as_str().unwrap_or("?");
    let str_of = |v: &Value| v.as_str().map(str::to_owned);
    let producer = format!(
        "{} {}",
        e["producer"]["kind"].as_str().unwrap_or("?"),
        e["producer"]["instance"]
            .as_str()
            .map_or("", |i| i.get(..8).unwrap_or(i))
    );
    let detail = match kind {
        "loss" => format!(
            "{producer}: {} lost at {}",
            e["loss"]["count"],
            e["loss"]["stage"].as_str().unwrap_or("?")
        ),
        "producer.connect" => format!(
            "{producer} connected ({})",
            e["producer"]["os"].as_str().unwrap_or("?")
        ),
        "producer.disconnect" => format!("{producer} disconnected"),
        "image.load" => str_of(&e["image"]["path"]).unwrap_or_default(),
        "process.exit" => format!("exit {}", e["process"]["exit_code"]),
        _ => str_of(&e["process"]["command_line"])
            .filter(|c| !c.is_empty())
            .or_else(|| str_of(&e["process"]["executable"]))
            .or_else(|| str_of(&e["process"]["name"]))
            .unwrap_or_default(),
    };
    let pid = e["process"]["pid"]
        .as_u64()
        .map_or_else(|| "-".to_owned(), |p| p.to_string());
    // Command lines can be kilobytes; a tail line stays one line.
    let detail: String = detail.replace(['\n', '\r'], " ").chars().take(200).collect();
    format!(
        "{:>8} {} {kind:<19} {pid:>7} {detail}",
        e["id"].as_u64().unwrap_or(0),
        clock(e["time"].as_str().unwrap_or("")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_aligned_and_say_what_matters() {
        let exec = serde_json::json!({"id": 7, "kind": "process.exec", "time": "2026-12-01T02:03:59.082421475Z",
            "producer": {"kind": "linux-sensor", "instance": "538b71df72f8265c"},
            "process": {"pid": 42, "command_line": "/bin/true --flag"}});
        let loss = serde_json::json!({"id": 1234, "kind": "loss", "time": "2026-12-01T02:04:00.000000000Z",
            "producer": {"kind": "loadgen", "instance": "538b71df72f8265c"},
            "loss": {"stage": "producer_queue", "count": 3}});
        let a = format_event(&exec);
        let b = format_event(&loss);
        assert_eq!(
            a,
            "       7 02:03:59.082 process.exec             42 /bin/true --flag"
        );
        assert_eq!(
            b,
            "    1234 02:04:00.000 loss                      - loadgen 538b71df: 3 lost at producer_queue"
        );
    }
}
