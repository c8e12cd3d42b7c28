//! The `lpcmon` binary: wires the port server, the protocol dispatcher, the optional in-process
//! sensor and the HTTP service together.

mod access;
mod cli;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use clap::Parser;
use lpcmon_api::{ApiConfig, AppState};
use lpcmon_protocol::server::ServerConfig;
use tokio::sync::mpsc;
use tracing_subscriber::EnvFilter;

use cli::{Cli, Command, LoadgenArgs, SensorArgs, ServeArgs};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        None => serve(cli.serve),
        Some(Command::Serve(args)) => serve(args),
        Some(Command::Sensor(args)) => sensor(args),
        Some(Command::Loadgen(args)) => loadgen(args),
        #[cfg(windows)]
        Some(Command::Service(cmd)) => windows_service(cmd),
    }
}

/// Resolves when the process is asked to stop (Ctrl-C, or SIGTERM on Unix).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("stopping");
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn serve(mut args: ServeArgs) -> anyhow::Result<()> {
    args.max_http_connections = access::raise_file_limit(args.max_http_connections);
    let stop = Arc::new(AtomicBool::new(false));
    runtime()?.block_on(serve_until(args, stop, shutdown_signal()))
}

async fn serve_until(
    args: ServeArgs,
    stop: Arc<AtomicBool>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let token = access::resolve_token(
        args.token.as_deref(),
        args.token_file.as_deref(),
        std::env::var("LPCMON_TOKEN").ok().as_deref(),
    )?;
    if !args.listen.ip().is_loopback() && token.is_none() {
        bail!(
            "refusing to listen on {} without a token: anything but loopback needs a bearer token \
             (--token-file PATH or LPCMON_TOKEN; there is no default password)",
            args.listen
        );
    }
    let port = args.port.clone().unwrap_or_else(cli::default_port);
    let idle_timeout = std::time::Duration::from_secs(args.idle_timeout.max(1));
    let state = AppState::new(ApiConfig {
        retain: args.retain,
        retain_bytes: args.retain_bytes,
        token,
        hosts: access::host_policy(args.listen, &args.allowed_hosts),
        max_connections: args.max_http_connections,
        header_read_timeout: std::time::Duration::from_secs(args.header_timeout.max(1)),
        idle_timeout,
        // Streams must write more often than the idle timeout, or it would close them.
        keepalive: ApiConfig::default().keepalive.min(idle_timeout / 3),
        ..ApiConfig::default()
    });
    let (ingest_tx, ingest_rx) = mpsc::channel(args.ingest_capacity.max(1));
    let ingest = lpcmon_api::spawn_ingest(state.clone(), ingest_rx);
    let port_server = start_port(&args, &port, ingest_tx)?;
    let sensor = start_sensor(&args, &port, &state, &stop)?;

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(listen = %args.listen, port = %port, "lpcmon serving: try `curl -s http://{}/events`", args.listen);
    lpcmon_api::serve(listener, state, shutdown)
        .await
        .context("HTTP server failed")?;

    stop.store(true, Ordering::Release);
    if let Some(sensor) = sensor {
        let _ = tokio::task::spawn_blocking(move || sensor.join()).await;
    }
    tokio::task::spawn_blocking(move || stop_port(port_server))
        .await
        .context("port server shutdown")??;
    ingest.abort();
    Ok(())
}

#[cfg(unix)]
type PortServer = alpc_server::unix::UnixPortServer;

#[cfg(unix)]
fn start_port(
    args: &ServeArgs,
    port: &str,
    ingest: alpc_server::dispatch::IngestSender,
) -> anyhow::Result<PortServer> {
    use alpc_server::dispatch::Dispatcher;
    use alpc_server::unix::{UnixPortConfig, UnixPortServer};
    let dispatcher = Arc::new(Dispatcher::new(
        ServerConfig {
            api: "unix",
            max_message: args.max_message,
            ..ServerConfig::default()
        },
        ingest,
    ));
    let config = UnixPortConfig {
        max_message: args.max_message,
        handshake_timeout: std::time::Duration::from_secs(args.handshake_timeout.max(1)),
        ..UnixPortConfig::new(port)
    };
    UnixPortServer::start(config, dispatcher).with_context(|| format!("cannot create the port {port}"))
}

#[cfg(unix)]
fn stop_port(port: PortServer) -> anyhow::Result<()> {
    port.shutdown();
    Ok(())
}

#[cfg(windows)]
type PortServer = alpc_server::windows::WindowsPortServer;

#[cfg(windows)]
fn start_port(
    args: &ServeArgs,
    port: &str,
    ingest: alpc_server::dispatch::IngestSender,
) -> anyhow::Result<PortServer> {
    use alpc_server::decide::PortApi;
    use alpc_server::dispatch::Dispatcher;
    use alpc_server::windows::{WindowsPortConfig, WindowsPortServer, port_data_limit};
    let api = match args.port_api {
        cli::PortApi::Alpc => PortApi::Alpc,
        cli::PortApi::Lpc => PortApi::Lpc,
    };
    let max_message = port_data_limit(api).with_context(|| format!("cannot size the {} port", api.name()))?;
    let dispatcher = Arc::new(Dispatcher::new(
        ServerConfig {
            api: api.name(),
            max_message,
            ..ServerConfig::default()
        },
        ingest,
    ));
    let config = WindowsPortConfig {
        port_name: port.to_owned(),
        api,
        allow_administrators: args.allow_administrators,
        allow_user_mode_producers: args.allow_user_mode_producers,
    };
    WindowsPortServer::start(config, dispatcher).with_context(|| format!("cannot create the port {port}"))
}

#[cfg(windows)]
fn stop_port(port: PortServer) -> anyhow::Result<()> {
    port.shutdown().context("the port's receive loop failed")
}

/// On Windows the kernel driver produces the events; nothing runs in-process.
#[cfg(windows)]
fn start_sensor(
    _args: &ServeArgs,
    _port: &str,
    _state: &AppState,
    _stop: &Arc<AtomicBool>,
) -> anyhow::Result<Option<std::thread::JoinHandle<()>>> {
    Ok(None)
}

#[cfg(windows)]
fn windows_service(cmd: cli::ServiceCommand) -> anyhow::Result<()> {
    use alpc_server::windows::service;
    match cmd {
        cli::ServiceCommand::Install => {
            let exe = std::env::current_exe().context("cannot find this executable")?;
            service::install(&exe, &["service".into(), "run".into()])
                .context("cannot install the service")?;
            println!("installed the lpcmon service (LocalSystem); start it with `sc start lpcmon`");
            Ok(())
        }
        cli::ServiceCommand::Uninstall => service::uninstall().context("cannot remove the service"),
        cli::ServiceCommand::Run => service::run_service(serve_as_service).context("the service failed"),
    }
}

/// The service's body: `lpcmon serve` with default settings until the SCM says stop.
#[cfg(windows)]
fn serve_as_service(stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let args = Cli::parse_from(["lpcmon"]).serve;
    let flag = stop.clone();
    let stopped = async move {
        while !flag.load(Ordering::Acquire) {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    };
    runtime()?.block_on(serve_until(args, stop, stopped))
}

#[cfg(unix)]
type SensorThread = std::thread::JoinHandle<()>;

/// Starts the in-process proc-connector sensor, or explains how to attach one.
#[cfg(target_os = "linux")]
fn start_sensor(
    args: &ServeArgs,
    port: &str,
    state: &AppState,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<Option<SensorThread>> {
    use cli::SensorMode;
    use lpcmon_protocol::ProducerKind;
    use lpcmon_sensor::runtime::ProducerConfig;
    if args.sensor == SensorMode::None {
        return Ok(None);
    }
    if !lpcmon_sensor::is_permitted() {
        let hint = format!(
            "the proc-connector sensor is not running (it needs root or CAP_NET_ADMIN): \
             run `sudo lpcmon sensor --connect {port}` to attach one"
        );
        if args.sensor == SensorMode::ProcConnector {
            bail!("{hint}");
        }
        tracing::warn!("{hint}");
        state.add_notice(hint);
        return Ok(None);
    }
    let producer = ProducerConfig::new(port, ProducerKind::LinuxSensor);
    let stop = stop.clone();
    let state = state.clone();
    let handle = std::thread::Builder::new()
        .name("lpcmon-sensor".into())
        .spawn(
            move || match lpcmon_sensor::linux_sensor::run(producer, Default::default(), &stop) {
                Ok(report) => tracing::info!(?report, "sensor stopped"),
                Err(e) => {
                    tracing::error!(error = %e, "the proc-connector sensor failed");
                    state.add_notice(format!("the proc-connector sensor failed: {e}"));
                }
            },
        )
        .context("cannot start the sensor thread")?;
    Ok(Some(handle))
}

#[cfg(all(unix, not(target_os = "linux")))]
fn start_sensor(
    args: &ServeArgs,
    _port: &str,
    state: &AppState,
    _stop: &Arc<AtomicBool>,
) -> anyhow::Result<Option<SensorThread>> {
    if args.sensor == cli::SensorMode::ProcConnector {
        bail!("the proc-connector sensor exists only on Linux");
    }
    state.add_notice("no in-process sensor on this OS: only producers that connect to the port");
    Ok(None)
}

#[cfg(target_os = "linux")]
fn sensor(args: SensorArgs) -> anyhow::Result<()> {
    use lpcmon_protocol::ProducerKind;
    use lpcmon_sensor::runtime::ProducerConfig;
    let port = args.connect.unwrap_or_else(cli::default_port);
    let stop = Arc::new(AtomicBool::new(false));
    let producer = ProducerConfig {
        queue_capacity: args.queue,
        ..ProducerConfig::new(&port, ProducerKind::LinuxSensor)
    };
    let thread_stop = stop.clone();
    let worker = std::thread::spawn(move || {
        lpcmon_sensor::linux_sensor::run(producer, Default::default(), &thread_stop)
    });
    runtime()?.block_on(async {
        tokio::select! {
            () = shutdown_signal() => {}
            () = async {
                while !worker.is_finished() {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            } => {}
        }
    });
    stop.store(true, Ordering::Release);
    let report = worker
        .join()
        .map_err(|_| anyhow::anyhow!("the sensor thread panicked"))?
        .context("the proc-connector sensor failed")?;
    tracing::info!(?report, "sensor stopped");
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn sensor(_args: SensorArgs) -> anyhow::Result<()> {
    bail!("`lpcmon sensor` is the Linux proc-connector sensor; on Windows the kernel driver produces events")
}

fn loadgen(args: LoadgenArgs) -> anyhow::Result<()> {
    use lpcmon_protocol::ProducerKind;
    use lpcmon_sensor::loadgen::{self, LoadgenConfig};
    use lpcmon_sensor::runtime::ProducerConfig;
    let port = args.connect.unwrap_or_else(cli::default_port);
    let config = LoadgenConfig {
        producer: ProducerConfig {
            queue_capacity: args.queue,
            max_message: args.max_message,
            ..ProducerConfig::new(&port, ProducerKind::Loadgen)
        },
        rate: args.rate,
        count: args.count,
        size: args.size,
    };
    let report = loadgen::run(&config)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
