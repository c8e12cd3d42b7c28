//! Follow lpcmon's event stream from Rust: one line per event, one per gap.
//!
//! ```text
//! cargo run --example follow -- [--url http://127.0.0.1:7878] [--kind process.exec] [--strict]
//! ```
//!
//! It reads `/events/stream` with `reqwest` and parses it with `eventsource-stream`. A `gap`
//! (events the server could no longer deliver) is printed with its count; with `--strict` the
//! first gap ends the program with exit code 3, for pipelines that must see every event.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use eventsource_stream::Eventsource;
use futures_util::StreamExt;

#[derive(Debug, Parser)]
#[command(about = "Follow lpcmon's event stream: one line per event, one per gap.")]
pub struct Options {
    /// The server.
    #[arg(long, env = "LPCMON_URL", default_value = "http://127.0.0.1:7878")]
    pub url: String,
    /// Bearer token, if the server needs one.
    #[arg(long, env = "LPCMON_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Only these kinds (repeatable).
    #[arg(long)]
    pub kind: Vec<String>,
    /// Start after this event id (what `Last-Event-ID` says).
    #[arg(long)]
    pub after: Option<u64>,
    /// Exit with code 3 at the first gap.
    #[arg(long)]
    pub strict: bool,
    /// Exit after this many events.
    #[arg(long)]
    pub max_events: Option<u64>,
}

/// How following ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// `--max-events` reached, or the server closed the stream.
    Done { events: u64, gaps: u64 },
    /// A gap under `--strict`.
    Gap { missed: u64 },
}

/// Follows the stream, writing one line per event or gap to `out`.
pub async fn follow(opts: &Options, out: &mut impl Write) -> anyhow::Result<End> {
    let mut url = reqwest::Url::parse(&opts.url)?.join("/events/stream")?;
    for k in &opts.kind {
        url.query_pairs_mut().append_pair("kind", k);
    }
    let client = reqwest::Client::builder().no_proxy().build()?;
    let mut request = client.get(url.clone()).header("Accept", "text/event-stream");
    if let Some(after) = opts.after {
        request = request.header("Last-Event-ID", after.to_string());
    }
    if let Some(token) = &opts.token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await?.error_for_status()?;
    writeln!(out, "# following {url}")?;
    let mut events = response.bytes_stream().eventsource();
    let (mut seen, mut gaps) = (0, 0);
    while let Some(event) = events.next().await {
        let event = event?;
        let data: serde_json::Value = serde_json::from_str(&event.data)?;
        if event.event == "gap" {
            let missed = data["missed"].as_u64().unwrap_or(0);
            writeln!(
                out,
                "gap missed={missed} reason={} last_id={}",
                data["reason"].as_str().unwrap_or("?"),
                event.id
            )?;
            gaps += 1;
            if opts.strict {
                return Ok(End::Gap { missed });
            }
            continue;
        }
        let process = &data["process"];
        let what = ["executable", "command_line", "name"]
            .iter()
            .find_map(|k| process[*k].as_str())
            .unwrap_or("");
        writeln!(
            out,
            "event {} {} pid={} {}",
            event.id,
            event.event,
            process["pid"].as_u64().map_or("-".to_owned(), |p| p.to_string()),
            what.chars().take(60).collect::<String>()
        )?;
        seen += 1;
        if opts.max_events.is_some_and(|m| seen >= m) {
            break;
        }
    }
    Ok(End::Done { events: seen, gaps })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let opts = Options::parse();
    let mut stdout = std::io::stdout();
    match follow(&opts, &mut stdout).await {
        Ok(End::Done { .. }) => ExitCode::SUCCESS,
        Ok(End::Gap { missed }) => {
            eprintln!("--strict: a gap of {missed} events");
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("follow: {e:#}");
            ExitCode::FAILURE
        }
    }
}
