//! The `lpcmon` command line (docs/design.md).

use std::net::SocketAddr;
#[cfg(unix)]
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "lpcmon",
    version,
    about = "Carries kernel process events to people and programs: REST, SSE and a live dashboard.",
    long_about = "Carries kernel process events to people and programs.\n\n\
        On Linux, `lpcmon` (or `lpcmon serve`) receives real process events from the kernel's \
        proc connector over a Unix SEQPACKET port and serves them at http://127.0.0.1:7878: \
        REST (/events), a server-sent-events stream (/events/stream), /stats, /metrics and a \
        browser dashboard. No event is lost without being counted and reported."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve(ServeArgs),
    /// Run the Linux proc-connector sensor as its own (privileged) process, so the HTTP server
    /// can run unprivileged.
    Sensor(SensorArgs),
    /// Run the synthetic load generator against a port.
    Loadgen(LoadgenArgs),
    /// Install, remove or run lpcmon as a Windows service (LocalSystem).
    #[cfg(windows)]
    #[command(subcommand)]
    Service(ServiceCommand),
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
    /// HTTP listen address. Anything but loopback requires --token.
    #[arg(long, default_value = "127.0.0.1:7878")]
    pub listen: SocketAddr,
    /// Port name (Windows, e.g. \LpcMonEventPort) or socket path (Unix). Default:
    /// /run/lpcmon/events.sock as root, else $XDG_RUNTIME_DIR/lpcmon/events.sock.
    #[arg(long)]
    pub port: Option<String>,
    /// Events the store keeps.
    #[arg(long, default_value_t = 100_000)]
    pub retain: usize,
    /// Bytes the store keeps.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub retain_bytes: usize,
    /// Require `Authorization: Bearer TOKEN` (or ?token= on the stream). There is no default.
    #[arg(long, env = "LPCMON_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
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
    /// Largest message the port accepts, in bytes (Unix). Lower it (e.g. 608) to emulate
    /// legacy LPC fragmentation.
    #[arg(long, default_value_t = 64 * 1024)]
    pub max_message: usize,
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
    /// Encoded size of each event in bytes.
    #[arg(long, default_value_t = 200)]
    pub size: usize,
    /// Producer queue slots (a small queue shows producer_queue loss).
    #[arg(long, default_value_t = 16 * 1024)]
    pub queue: usize,
    /// Largest message to send; events above it are fragmented (608 = legacy LPC on x64).
    #[arg(long, default_value_t = 64 * 1024)]
    pub max_message: usize,
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
