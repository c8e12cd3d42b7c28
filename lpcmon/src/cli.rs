//! The `lpcmon` command line (docs/design.md).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::units::{Bytes, Span};

/// Flags that do something on one OS only (argument id, OS). Elsewhere they are hidden from
/// help and refused if given on the command line, in the environment or in the config file
/// (`config.rs` does both, for any id listed here).
pub const OS_ONLY: &[(&str, &str)] = &[
    ("port_api", "Windows"),
    ("allow_administrators", "Windows"),
    ("allow_user_mode_producers", "Windows"),
    ("sensor", "Linux"),
];

/// Arguments whose values `lpcmon config show` does not print (it says only that they are set).
pub const SECRETS: &[&str] = &["token"];

/// The OS this binary was built for, as [`OS_ONLY`] names it.
pub const THIS_OS: &str = if cfg!(windows) {
    "Windows"
} else if cfg!(target_os = "linux") {
    "Linux"
} else {
    std::env::consts::OS
};

#[derive(Debug, Parser)]
#[command(
    name = "lpcmon",
    version,
    about = "Carries kernel process events to people and programs: REST, SSE and a live dashboard.",
    long_about = "Carries kernel process events to people and programs.\n\n\
        On Linux, `lpcmon` (or `lpcmon serve`) receives real process events from the kernel's \
        proc connector over a Unix SEQPACKET port and serves them at http://127.0.0.1:7878: \
        REST (/events), a server-sent-events stream (/events/stream), /stats, /metrics and a \
        browser dashboard. No event is lost without being counted and reported.\n\n\
        Every flag can also be set in the environment (LPCMON_<FLAG>, e.g. LPCMON_RETAIN_BYTES; \
        a subcommand's as LPCMON_<SUBCOMMAND>_<FLAG>, e.g. LPCMON_LOADGEN_RATE) or in the config file (its long name as the key, e.g. `retain-bytes = \"64MiB\"`; a \
        subcommand's flags in a table named after it, e.g. [loadgen]). Flags win over the \
        environment, which wins over the file, which wins over the defaults: \
        `lpcmon config show` prints what is in force and where each value came from.",
    after_long_help = crate::exit::EXIT_CODES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(flatten)]
    pub global: GlobalArgs,
}

/// Options every subcommand takes.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// The config file (TOML). Default: /etc/lpcmon/lpcmon.toml if it exists
    /// (Windows: %ProgramData%\lpcmon\lpcmon.toml).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Debug logs, and on failure the whole error chain with its backtrace.
    #[arg(long, global = true)]
    pub debug: bool,
    /// Log format on stderr: `json` (one object per line) suits log shippers.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve(ServeArgs),
    /// Run the Linux proc-connector sensor as its own (privileged) process, so the HTTP server
    /// can run unprivileged.
    #[command(hide = cfg!(not(target_os = "linux")))]
    Sensor(SensorArgs),
    /// Run the synthetic load generator against a port.
    Loadgen(LoadgenArgs),
    /// Write the events of a store file to stdout (works while a server writes it).
    Export(ExportArgs),
    /// Summarise a running server on one screen: producers, rates, losses, store, clients.
    Status(StatusArgs),
    /// Follow a running server's events, one line each, resuming across reconnects.
    Tail(TailArgs),
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print the man page (roff) on stdout, for packaging.
    #[command(hide = true)]
    Man,
    /// Print shell completions on stdout, for packaging.
    #[command(hide = true)]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Research lab: run channel experiments (LPC/ALPC-like transports) and draw them.
    Lab(lpcmon_lab::LabArgs),
    /// Install, remove or run lpcmon as a Windows service (LocalSystem).
    #[cfg(windows)]
    #[command(subcommand)]
    Service(ServiceCommand),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration as TOML, each value with where it came from.
    Show,
}

#[cfg(windows)]
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Register the service to run `lpcmon serve` as LocalSystem at boot.
    Install,
    /// Stop and remove the service.
    Uninstall,
    /// Entry point the service control manager starts; not for interactive use.
    Run,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SensorMode {
    /// Run the proc-connector sensor in-process when allowed; otherwise say how to attach one.
    Auto,
    /// Require the in-process sensor; fail if it cannot start.
    ProcConnector,
    /// No in-process sensor: only producers that connect to the port.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PortApi {
    /// NtAlpcCreatePort, accepting legacy LPC clients too.
    Alpc,
    /// NtCreatePort (legacy LPC, at most 648 bytes per message), for comparison.
    Lpc,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// HTTP listen address. Anything but loopback requires a token (--token-file, LPCMON_TOKEN
    /// or --token).
    #[arg(long, default_value = "127.0.0.1:7878")]
    pub listen: SocketAddr,
    /// Port name (Windows, e.g. \LpcMonEventPort) or socket path (Unix). Default:
    /// /run/lpcmon/events.sock as root, else $XDG_RUNTIME_DIR/lpcmon/events.sock.
    #[arg(long)]
    pub port: Option<String>,
    /// Where events, ids and loss accounting are kept: an SQLite file, or `memory` (lost at
    /// exit). Default: /var/lib/lpcmon/events.db as root, else
    /// $XDG_STATE_HOME/lpcmon/events.db (~/.local/state/lpcmon/events.db).
    #[arg(long, value_name = "PATH|memory")]
    pub store: Option<String>,
    /// Events the store keeps [default: 100000 in memory, 10000000 in a file].
    #[arg(long)]
    pub retain: Option<usize>,
    /// Bytes the store keeps (64MiB, 1GiB, …): in memory, or of the database file on disk
    /// [default: 64MiB in memory, 1GiB in a file].
    #[arg(long, value_name = "SIZE")]
    pub retain_bytes: Option<Bytes>,
    /// Days a file store keeps events (fractions allowed); older ones are deleted.
    #[arg(long)]
    pub retain_days: Option<f64>,
    /// Events the in-memory tail in front of a file store keeps, for live streams and recent
    /// pages.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub tail_events: usize,
    /// Bytes the in-memory tail in front of a file store keeps (64MiB, 1GiB, …).
    #[arg(long, value_name = "SIZE", default_value = "64MiB")]
    pub tail_bytes: Bytes,
    /// Require `Authorization: Bearer TOKEN` (or ?token= on the stream). There is no default.
    /// Prefer --token-file or LPCMON_TOKEN: a command line is visible to every local user.
    #[arg(long, env = "LPCMON_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Read the bearer token from this file (surrounding whitespace ignored). On Unix the file
    /// must not be readable by other users (e.g. mode 0600 or 0640), or lpcmon refuses it.
    /// Takes precedence over LPCMON_TOKEN; cannot be combined with --token.
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<std::path::PathBuf>,
    /// Also answer requests whose Host is NAME (e.g. a reverse proxy's name). On a loopback
    /// listener only localhost, 127.0.0.1 and [::1] are answered otherwise (DNS rebinding
    /// defence); on any other address, giving this restricts Host to loopback names and these.
    #[arg(long = "allowed-host", value_name = "NAME")]
    pub allowed_hosts: Vec<String>,
    /// Most HTTP connections open at once; more wait in the listen backlog.
    #[arg(long, default_value_t = 512)]
    pub max_http_connections: usize,
    /// How long a client may take to send a request's headers before it is disconnected.
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    pub header_timeout: Span,
    /// How long an HTTP connection may stay silent (no byte either way) before it is closed.
    /// SSE streams send keep-alives, so they are never idle.
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    pub idle_timeout: Span,
    /// Longest a live event may wait so that SSE streams write it together with others (one
    /// wake-up and one write per stream per group, not per event). The wait is 5µs per open
    /// stream up to this (1000 streams: 5ms); with fewer than 200 streams, or 0 here, events
    /// leave at once.
    #[arg(long, value_name = "DURATION", default_value = "10ms")]
    pub sse_coalesce: Span,
    /// How long a producer has, once connected to the port, to send a valid Hello (Unix).
    #[arg(long, value_name = "DURATION", default_value = "5s")]
    pub handshake_timeout: Span,
    /// The in-process Linux sensor.
    #[arg(long, value_enum, default_value_t = SensorMode::Auto)]
    pub sensor: SensorMode,
    /// Which Windows port API to serve.
    #[arg(long, value_enum, default_value_t = PortApi::Alpc)]
    pub port_api: PortApi,
    /// Windows: also let Administrators (not only SYSTEM) open the port, for the load generator.
    #[arg(long)]
    pub allow_administrators: bool,
    /// Windows: accept user-mode producers (the load generator), not only the kernel driver.
    #[arg(long)]
    pub allow_user_mode_producers: bool,
    /// Capacity of the channel between the port and the store. When full, events are dropped
    /// and counted as server_ingest loss.
    #[arg(long, default_value_t = 16_384)]
    pub ingest_capacity: usize,
    /// Largest message the port accepts (Unix). Lower it (e.g. 608) to emulate legacy LPC
    /// fragmentation.
    #[arg(long, value_name = "SIZE", default_value = "64KiB")]
    pub max_message: Bytes,
    #[command(flatten)]
    pub fleet: Box<FleetArgs>,
}

/// The help section of the fleet flags. Set per flag: a `next_help_heading` on the flattened
/// struct would also head the global flags that follow it in every subcommand's help.
const FLEET_HEADING: &str = "Many hosts (NATS JetStream)";

/// Many hosts: publishing this server's events to NATS JetStream, importing other servers'.
#[derive(Debug, Clone, Args)]
pub struct FleetArgs {
    /// Publish every stored event to NATS JetStream: nats://HOST:PORT, several comma-separated
    /// for a cluster. Credentials go in --nats-creds, never in the URL.
    #[arg(long, help_heading = FLEET_HEADING, value_name = "URLS")]
    pub publish: Option<String>,
    /// Import the events of every publishing server from NATS JetStream into this server's
    /// store (a central server): nats://HOST:PORT[,…]. Each origin event is stored once: the
    /// highest origin id stored per origin server instance is committed with the events in
    /// the --store file; with --store memory it is kept in memory, and a restarted central
    /// server reads the stream from its start.
    #[arg(long, help_heading = FLEET_HEADING, value_name = "URLS")]
    pub subscribe: Option<String>,
    /// This server's name in the fleet (the subject lpcmon.<host>.<kind> and the `host`
    /// filter). Default: the machine's name. Characters other than letters, digits, - and _
    /// become _.
    #[arg(long, help_heading = FLEET_HEADING, value_name = "NAME")]
    pub host_name: Option<String>,
    /// The JetStream stream.
    #[arg(long, help_heading = FLEET_HEADING, value_name = "NAME", default_value = "LPCMON")]
    pub nats_stream: String,
    /// Replicas of the stream when a publisher creates it (3 for a three-node cluster).
    #[arg(long, help_heading = FLEET_HEADING, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub nats_replicas: u8,
    /// The durable consumer a subscribing server reads with (one per central server).
    #[arg(long, help_heading = FLEET_HEADING, value_name = "NAME", default_value = "lpcmon-central")]
    pub nats_consumer: String,
    /// Most publishes awaiting JetStream's acknowledgement at once.
    #[arg(long, help_heading = FLEET_HEADING, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub nats_window: u32,
    /// NATS credentials file (.creds: user JWT and NKey seed). Read by lpcmon; never logged.
    #[arg(long, help_heading = FLEET_HEADING, value_name = "FILE")]
    pub nats_creds: Option<PathBuf>,
    /// CA certificates (PEM) for the NATS servers' TLS certificates; turns TLS on.
    #[arg(long, help_heading = FLEET_HEADING, value_name = "FILE")]
    pub nats_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS with NATS; needs --nats-tls-key.
    #[arg(long, help_heading = FLEET_HEADING, value_name = "FILE", requires = "nats_tls_key")]
    pub nats_tls_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS with NATS; needs --nats-tls-cert.
    #[arg(long, help_heading = FLEET_HEADING, value_name = "FILE", requires = "nats_tls_cert")]
    pub nats_tls_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// One event's JSON per line, as `GET /events` serves it.
    Ndjson,
    /// A header line, then `id,time_ns,kind,pid,producer_kind,producer,json` per event.
    Csv,
}

#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// The store file. Default as for `serve --store`.
    #[arg(long)]
    pub store: Option<std::path::PathBuf>,
    /// Only events with ids above this.
    #[arg(long, default_value_t = 0)]
    pub after: u64,
    /// Only events of these kinds (comma-separated, e.g. process.exec,loss).
    #[arg(long, value_delimiter = ',')]
    pub kind: Vec<String>,
    #[arg(long, value_enum, default_value_t = ExportFormat::Ndjson)]
    pub format: ExportFormat,
}

#[derive(Debug, Clone, Args)]
pub struct SensorArgs {
    /// The server's port (socket path). Default as for `serve --port`.
    #[arg(long)]
    pub connect: Option<String>,
    /// Producer queue slots.
    #[arg(long, default_value_t = 16 * 1024)]
    pub queue: usize,
}

#[derive(Debug, Clone, Args)]
pub struct LoadgenArgs {
    /// The server's port (socket path or Windows port name). Default as for `serve --port`.
    #[arg(long)]
    pub connect: Option<String>,
    /// Events per second; 0 means as fast as possible.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Events to produce.
    #[arg(long, default_value_t = 10_000)]
    pub count: u64,
    /// Encoded size of each event (200, 4KiB, …).
    #[arg(long, value_name = "SIZE", default_value = "200")]
    pub size: Bytes,
    /// Producer queue slots (a small queue shows producer_queue loss).
    #[arg(long, default_value_t = 16 * 1024)]
    pub queue: usize,
    /// Largest message to send; events above it are fragmented (608 = legacy LPC on x64).
    #[arg(long, value_name = "SIZE", default_value = "64KiB")]
    pub max_message: Bytes,
}

/// Where `--store` is when not given: the service's state directory as root, else the user's.
pub fn default_store() -> std::path::PathBuf {
    use std::path::PathBuf;
    #[cfg(unix)]
    if nix::unistd::Uid::effective().is_root() {
        return PathBuf::from("/var/lib/lpcmon/events.db");
    }
    #[cfg(windows)]
    if let Some(dir) = std::env::var_os("ProgramData") {
        return PathBuf::from(dir).join(r"lpcmon\events.db");
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    state.join("lpcmon/events.db")
}

#[derive(Debug, Clone, Args)]
pub struct ServerUrl {
    /// The server's HTTP address.
    #[arg(
        long,
        value_name = "URL",
        env = "LPCMON_URL",
        default_value = "http://127.0.0.1:7878"
    )]
    pub url: String,
    /// Bearer token, if the server requires one (prefer --token-file: a command line is
    /// visible to every user).
    #[arg(long, env = "LPCMON_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Read the bearer token from this file (its first line).
    #[arg(long, value_name = "PATH", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub server: ServerUrl,
    /// Refresh until interrupted.
    #[arg(long, short)]
    pub watch: bool,
    /// With --watch: time between refreshes (500ms, 2s, …).
    #[arg(long, value_name = "DURATION", default_value = "2s")]
    pub interval: Span,
    /// Print JSON for scripts (with --watch, one object per line).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct TailArgs {
    #[command(flatten)]
    pub server: ServerUrl,
    /// Only events of these kinds (repeat, or a comma list): process.start, loss, …
    #[arg(long, value_name = "KIND", action = clap::ArgAction::Append)]
    pub kind: Vec<String>,
    /// Only events of this process id.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Only events whose executable, command line or image path contains this text.
    #[arg(long, short = 'q', value_name = "TEXT")]
    pub query: Option<String>,
    /// Only events of this producer (a kind, or an instance prefix).
    #[arg(long)]
    pub producer: Option<String>,
    /// Start after this event id (replaying what the server still holds); default: only new
    /// events.
    #[arg(long, value_name = "ID")]
    pub after: Option<u64>,
    /// First wait before reconnecting; it doubles up to 30 times this while the server is away.
    #[arg(long, value_name = "DURATION", default_value = "500ms")]
    pub reconnect: Span,
    /// Stop after this many events (for scripts and tests); default: follow forever.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
}

/// The default port: the driver's and the server's (`lpcmon_nt::DEFAULT_PORT_NAME`) on
/// Windows.
pub fn default_port() -> String {
    #[cfg(windows)]
    {
        alpc_server::decide::DEFAULT_PORT_NAME.to_owned()
    }
    #[cfg(unix)]
    {
        default_unix_port().display().to_string()
    }
}

#[cfg(unix)]
fn default_unix_port() -> PathBuf {
    if nix::unistd::Uid::effective().is_root() {
        return PathBuf::from("/run/lpcmon/events.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("lpcmon/events.sock"),
        // No per-user runtime directory: a per-user directory under /tmp, which the port server
        // creates 0700 and refuses to use if someone else owns it.
        _ => std::env::temp_dir().join(format!("lpcmon-{}/events.sock", nix::unistd::Uid::effective())),
    }
}
