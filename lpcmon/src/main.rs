//! The `lpcmon` binary: wires the port server, the protocol dispatcher, the optional in-process
//! sensor and the HTTP service together.

mod access;
mod cli;
mod config;
mod exit;
mod fleet;
mod http;
mod manual;
mod status;
mod tail;
mod units;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use lpcmon_api::{ApiConfig, AppState};
use lpcmon_protocol::server::ServerConfig;
use tokio::sync::mpsc;
use tracing_subscriber::EnvFilter;

use cli::{Command, ExportArgs, LoadgenArgs, LogFormat, SensorArgs, ServeArgs};
use exit::{Advise, Kind, fail};
use lpcmon_protocol::server::RestoredInstance;
use lpcmon_store::Database;

/// How long a stop waits for ingest to hand everything to the store.
const INGEST_DRAIN: std::time::Duration = std::time::Duration::from_secs(30);

fn main() -> ExitCode {
    // Before anything else, and before any thread exists (see init_backtraces).
    let debug_flag = std::env::args_os().any(|a| a == "--debug");
    init_backtraces(exit::debug_requested(debug_flag));
    let layered = match config::parse() {
        Ok(layered) => layered,
        Err(e) => return exit::report(&e, exit::debug_requested(debug_flag)),
    };
    let global = layered.cli.global.clone();
    let debug = exit::debug_requested(global.debug);
    // --debug may also have come from LPCMON_DEBUG or the file; still one thread here.
    init_backtraces(debug);
    // The lab runs servers in-process by the hundred; their info logs would bury its progress.
    let quiet = matches!(layered.cli.command, Some(Command::Lab(_)));
    init_logs(global.log_format, global.debug, quiet);
    match run(layered) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => exit::report(&e, debug),
    }
}

/// anyhow captures a backtrace when RUST_LIB_BACKTRACE (or else RUST_BACKTRACE) says so. A user
/// error never prints one, so capture only when it will be printed: with --debug or
/// RUST_LOG=debug. Panics (bugs) still follow RUST_BACKTRACE.
fn init_backtraces(debug: bool) {
    // SAFETY: called only at the start of main, before the runtime or any other thread
    // exists, so no other thread can be reading the environment.
    unsafe { std::env::set_var("RUST_LIB_BACKTRACE", if debug { "1" } else { "0" }) };
}

fn init_logs(format: LogFormat, debug: bool, quiet: bool) {
    let default = match (debug, quiet) {
        (true, _) => "debug",
        (false, true) => "error",
        (false, false) => "info",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        // One JSON object per line, fields flattened, for log shippers.
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
    }
}

fn run(mut layered: config::Layered) -> anyhow::Result<()> {
    match layered.cli.command.take() {
        None => serve(layered.cli.serve.clone()),
        Some(Command::Serve(args)) => serve(args),
        Some(Command::Sensor(args)) => sensor(args),
        Some(Command::Loadgen(args)) => loadgen(args),
        Some(Command::Export(args)) => export(args),
        Some(Command::Status(args)) => runtime()?.block_on(status::run(args)),
        Some(Command::Tail(args)) => runtime()?.block_on(tail::run(args, shutdown_signal())),
        Some(Command::Config(cli::ConfigCommand::Show)) => {
            print!("{}", layered.show());
            Ok(())
        }
        Some(Command::Man) => manual::man(&layered.command),
        Some(Command::Completions { shell }) => manual::completions(&layered.command, shell),
        Some(Command::Lab(args)) => lpcmon_lab::run(args),
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
        return Err(fail(
            Kind::Usage,
            format!(
                "refusing to listen on {} without a token: anything but loopback needs a bearer \
                 token (there is no default password)",
                args.listen
            ),
            "set --token-file PATH (or LPCMON_TOKEN), or listen on loopback (--listen 127.0.0.1:7878)",
        ));
    }
    let port = args.port.clone().unwrap_or_else(cli::default_port);
    let database = open_store(&args)?;
    let idle_timeout = args.idle_timeout.0.max(std::time::Duration::from_secs(1));
    let fleet = fleet::FleetPlan::from_args(&args.fleet)?;
    let config = ApiConfig {
        host_name: fleet.as_ref().map(|f| f.host.as_str().into()),
        token,
        hosts: access::host_policy(args.listen, &args.allowed_hosts),
        max_connections: args.max_http_connections,
        header_read_timeout: args.header_timeout.0.max(std::time::Duration::from_millis(100)),
        idle_timeout,
        // Streams must write more often than the idle timeout, or it would close them.
        keepalive: ApiConfig::default().keepalive.min(idle_timeout / 3),
        sse_coalesce: args.sse_coalesce.0,
        ..ApiConfig::default()
    };
    let (state, restored) = match &database {
        // With a file, the in-memory store is only the hot tail in front of it.
        Some(db) => (
            AppState::with_database(
                ApiConfig {
                    retain: args.tail_events,
                    retain_bytes: args.tail_bytes.as_usize(),
                    ..config
                },
                db.clone(),
            ),
            lpcmon_api::restored_instances(db),
        ),
        None => (
            AppState::new(ApiConfig {
                retain: args.retain.unwrap_or(100_000),
                retain_bytes: args.retain_bytes.map_or(64 << 20, |b| b.as_usize()),
                ..config
            }),
            Vec::new(),
        ),
    };
    let (ingest_tx, ingest_rx) = mpsc::channel(args.ingest_capacity.max(1));
    // Ingest runs on a thread of its own, never behind HTTP work on this runtime.
    let ingest = lpcmon_api::spawn_ingest_thread(state.clone(), ingest_rx)
        .context("cannot start the ingest thread")?;
    let port_server = start_port(&args, &port, ingest_tx, state.ingest_budget(), restored)?;
    let sensor = start_sensor(&args, &port, &state, &stop)?;
    let fleet_tasks = fleet
        .map(|plan| plan.start(&state))
        .transpose()?
        .unwrap_or_default();

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))
        .map_err(|e| listen_advice(e, args.listen))?;
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
    // The importer and the publisher first: an import cut short is redelivered by NATS and
    // dropped by the marks if it was stored; the publisher resumes from its saved position.
    for task in fleet_tasks {
        task.abort();
    }
    // The port server held the only sender: the ingest thread stores what is left and ends.
    // Then the store commits everything (a graceful stop loses nothing). Ingest waits for the
    // store writer while its id reservation is used up (a long disk-full), so the wait is
    // bounded: a stop must still stop. What it still held is counted at the producer's
    // reconnect, as after a crash.
    let joined = tokio::task::spawn_blocking(move || ingest.join());
    match tokio::time::timeout(INGEST_DRAIN, joined).await {
        Ok(joined) => joined
            .context("ingest thread")?
            .map_err(|_| anyhow::anyhow!("the ingest thread panicked"))?,
        Err(_) => tracing::error!(
            "the ingest thread did not finish within {} s (the store writer is stuck?); \
             closing the store without it",
            INGEST_DRAIN.as_secs()
        ),
    }
    if let Some(db) = database {
        tokio::task::spawn_blocking(move || db.close())
            .await
            .context("store shutdown")?;
    }
    Ok(())
}

/// Opens the durable store `--store` names, or `None` for `--store memory`.
fn open_store(args: &ServeArgs) -> anyhow::Result<Option<Arc<Database>>> {
    let path = match args.store.as_deref() {
        Some("memory") => return Ok(None),
        Some(path) => std::path::PathBuf::from(path),
        None => cli::default_store(),
    };
    let day = 86_400.0;
    if let Some(days) = args.retain_days {
        if !(days > 0.0 && days * day < u64::MAX as f64) {
            return Err(fail(
                Kind::Usage,
                format!("--retain-days must be a positive number of days, not {days}"),
                "give a number of days such as 30 or 0.5, or leave it out to keep events of any age",
            ));
        }
    }
    let retention = lpcmon_store::Retention {
        events: args.retain.map_or(10_000_000, |n| n as u64),
        bytes: args.retain_bytes.map_or(1 << 30, |b| b.0),
        max_age: args
            .retain_days
            .map(|d| std::time::Duration::from_secs_f64(d * day)),
    };
    let db = Database::open(&path, retention)?;
    Ok(Some(Arc::new(db)))
}

fn export(args: ExportArgs) -> anyhow::Result<()> {
    use std::io::Write;
    let path = args.store.unwrap_or_else(cli::default_store);
    let filter = lpcmon_store::Filter {
        kinds: args.kind,
        ..lpcmon_store::Filter::default()
    };
    let format = match args.format {
        cli::ExportFormat::Ndjson => lpcmon_store::ExportFormat::Ndjson,
        cli::ExportFormat::Csv => lpcmon_store::ExportFormat::Csv,
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match lpcmon_store::export(&path, args.after, &filter, format, &mut out) {
        Ok(n) => {
            tracing::info!(events = n, path = %path.display(), "exported");
            out.flush().ok();
            Ok(())
        }
        // `lpcmon export | head` closes the pipe early: not an error.
        Err(lpcmon_store::ExportError::Read(lpcmon_store::StoreError::Io(e)))
            if e.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// The remedy for a failed bind of the HTTP address.
fn listen_advice(err: anyhow::Error, listen: std::net::SocketAddr) -> anyhow::Error {
    let kind = err
        .chain()
        .find_map(|e| e.downcast_ref::<std::io::Error>())
        .map(std::io::Error::kind);
    let remedy = match kind {
        Some(std::io::ErrorKind::AddrInUse) => format!(
            "another program (perhaps another lpcmon) is listening on {listen}: stop it, or choose \
             another address with --listen"
        ),
        Some(std::io::ErrorKind::PermissionDenied) => {
            "ports below 1024 need root or CAP_NET_BIND_SERVICE: choose a port above 1024 with --listen"
                .to_owned()
        }
        _ => "choose an address this machine has with --listen (e.g. 127.0.0.1:7878)".to_owned(),
    };
    Err::<(), _>(err).advise(Kind::Runtime, remedy).unwrap_err()
}

#[cfg(unix)]
type PortServer = alpc_server::unix::UnixPortServer;

#[cfg(unix)]
fn start_port(
    args: &ServeArgs,
    port: &str,
    ingest: alpc_server::dispatch::IngestSender,
    ingest_budget: Arc<lpcmon_protocol::server::IngestBudget>,
    restored: Vec<RestoredInstance>,
) -> anyhow::Result<PortServer> {
    use alpc_server::dispatch::Dispatcher;
    use alpc_server::unix::{UnixPortConfig, UnixPortServer};
    let dispatcher = Arc::new(
        Dispatcher::new(
            ServerConfig {
                api: "unix",
                max_message: args.max_message.as_usize(),
                ..ServerConfig::default()
            },
            ingest,
        )
        .with_ingest_budget(ingest_budget),
    );
    dispatcher.restore_instances(restored);
    let config = UnixPortConfig {
        max_message: args.max_message.as_usize(),
        handshake_timeout: args
            .handshake_timeout
            .0
            .max(std::time::Duration::from_millis(100)),
        ..UnixPortConfig::new(port)
    };
    UnixPortServer::start(config, dispatcher)
        .with_context(|| format!("cannot create the port {port}"))
        .advise(
            Kind::Runtime,
            "if another lpcmon is serving this port, stop it or choose another with --port; \
             the directory must be yours (or run as root for /run/lpcmon)",
        )
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
    ingest_budget: Arc<lpcmon_protocol::server::IngestBudget>,
    restored: Vec<RestoredInstance>,
) -> anyhow::Result<PortServer> {
    use alpc_server::decide::PortApi;
    use alpc_server::dispatch::Dispatcher;
    use alpc_server::windows::{WindowsPortConfig, WindowsPortServer, port_data_limit};
    let api = match args.port_api {
        cli::PortApi::Alpc => PortApi::Alpc,
        cli::PortApi::Lpc => PortApi::Lpc,
    };
    let max_message = port_data_limit(api).with_context(|| format!("cannot size the {} port", api.name()))?;
    let dispatcher = Arc::new(
        Dispatcher::new(
            ServerConfig {
                api: api.name(),
                max_message,
                ..ServerConfig::default()
            },
            ingest,
        )
        .with_ingest_budget(ingest_budget),
    );
    dispatcher.restore_instances(restored);
    let config = WindowsPortConfig {
        port_name: port.to_owned(),
        api,
        allow_administrators: args.allow_administrators,
        allow_user_mode_producers: args.allow_user_mode_producers,
    };
    WindowsPortServer::start(config, dispatcher)
        .with_context(|| format!("cannot create the port {port}"))
        .advise(
            Kind::Runtime,
            "run lpcmon as LocalSystem (`lpcmon service install`) or as an Administrator; if \
             another lpcmon serves this port, stop it or choose another with --port",
        )
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

/// The service's body: `lpcmon serve`, configured by the config file and the environment,
/// until the SCM says stop.
#[cfg(windows)]
fn serve_as_service(stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let args = config::parse_from(["lpcmon"])?.cli.serve;
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
            return Err(fail(
                Kind::Runtime,
                "--sensor proc-connector: the proc-connector sensor needs root or CAP_NET_ADMIN",
                format!(
                    "run lpcmon as root, or with --sensor auto and `sudo lpcmon sensor --connect {port}` beside it"
                ),
            ));
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
        return Err(fail(
            Kind::Usage,
            "--sensor proc-connector: the proc-connector sensor exists only on Linux",
            "use --sensor none, and connect a producer to the port",
        ));
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
        .context("the proc-connector sensor failed")
        .advise(
            Kind::Runtime,
            format!("it needs root or CAP_NET_ADMIN, and `lpcmon serve` listening on {port}"),
        )?;
    tracing::info!(?report, "sensor stopped");
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn sensor(_args: SensorArgs) -> anyhow::Result<()> {
    Err(fail(
        Kind::Usage,
        "`lpcmon sensor` is the Linux proc-connector sensor",
        "on Windows the kernel driver produces events: install it and run `lpcmon serve`",
    ))
}

fn loadgen(args: LoadgenArgs) -> anyhow::Result<()> {
    use lpcmon_protocol::ProducerKind;
    use lpcmon_sensor::loadgen::{self, LoadgenConfig};
    use lpcmon_sensor::runtime::ProducerConfig;
    let port = args.connect.unwrap_or_else(cli::default_port);
    let config = LoadgenConfig {
        producer: ProducerConfig {
            queue_capacity: args.queue,
            max_message: args.max_message.as_usize(),
            ..ProducerConfig::new(&port, ProducerKind::Loadgen)
        },
        rate: args.rate,
        count: args.count,
        size: args.size.as_usize(),
    };
    let report = loadgen::run(&config).map_err(|e| match e {
        loadgen::LoadgenError::Size { .. } => fail(Kind::Usage, &e, "choose another --size"),
        loadgen::LoadgenError::Start(_) => anyhow::Error::from(e),
    })?;
    println!("{}", serde_json::to_string(&report)?);
    // The producer reconnects in the background and gives up at stop; a run that never
    // delivered anything never reached a server, and a script must be able to tell.
    if report.produced > 0 && report.sent == 0 {
        return Err(fail(
            Kind::Connect,
            format!(
                "sent none of {} events: no server accepted a connection on {port}",
                report.produced
            ),
            "start `lpcmon serve` first, or point --connect at its port",
        ));
    }
    Ok(())
}
