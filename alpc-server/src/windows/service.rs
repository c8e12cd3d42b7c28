//! lpcmon as a Windows service (docs/design.md): an auto-start service named `lpcmon` running as
//! LocalSystem. The driver only talks to a SYSTEM server (`RequiredServerSid = S-1-5-18`),
//! and a SYSTEM server is also what keeps anyone else from creating the port first.
//!
//! `lpcmon service install|uninstall|run` map to [`install`], [`uninstall`] and
//! [`run_service`]. The service control manager starts the installed command line, which
//! calls [`run_service`]; the SCM's stop and shutdown controls set the stop flag the service's
//! main function watches.

use std::ffi::OsString;
use std::fmt::Display;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tracing::{error, info};
use windows_service::service::{
    ServiceAccess, ServiceControl, ServiceControlAccept, ServiceErrorControl, ServiceExitCode, ServiceInfo,
    ServiceStartType, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult, ServiceStatusHandle};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
use windows_service::{define_windows_service, service_dispatcher};

/// The service's name in the SCM.
pub const SERVICE_NAME: &str = "lpcmon";
const DISPLAY_NAME: &str = "lpcmon kernel event monitor";
const DESCRIPTION: &str = "Receives process, thread and image-load events from the lpcmon driver over an \
                           ALPC port and serves them over HTTP.";
const SERVICE_TYPE: ServiceType = ServiceType::OWN_PROCESS;

/// Why a service operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("service control manager: {0}")]
    Scm(#[from] windows_service::Error),
    #[error("the service's main function failed: {0}")]
    Main(String),
    #[error("run_service may be called once per process")]
    AlreadyRunning,
}

/// The service body: runs until the stop flag is set, or fails.
type ServiceMain = Box<dyn Fn(Arc<AtomicBool>) -> Result<(), String> + Send + Sync>;

static MAIN: OnceLock<ServiceMain> = OnceLock::new();
/// The body's error, carried from the SCM's thread back to `run_service`'s caller.
static FAILURE: Mutex<Option<String>> = Mutex::new(None);

/// Installs lpcmon as an auto-start LocalSystem service that runs `exe_path` with `args`.
pub fn install(exe_path: &Path, args: &[OsString]) -> Result<(), ServiceError> {
    let manager = ServiceManager::local_computer(
        None::<&str>,
        ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
    )?;
    let info = ServiceInfo {
        name: SERVICE_NAME.into(),
        display_name: DISPLAY_NAME.into(),
        service_type: SERVICE_TYPE,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: exe_path.to_path_buf(),
        launch_arguments: args.to_vec(),
        dependencies: Vec::new(),
        // No account: the service runs as LocalSystem.
        account_name: None,
        account_password: None,
    };
    let service = manager.create_service(&info, ServiceAccess::CHANGE_CONFIG)?;
    service.set_description(DESCRIPTION)?;
    info!(exe = %exe_path.display(), "service {SERVICE_NAME} installed");
    Ok(())
}

/// Stops the service if it runs and deletes it. The SCM removes it once every handle to it
/// is closed.
pub fn uninstall() -> Result<(), ServiceError> {
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)?;
    let service = manager.open_service(
        SERVICE_NAME,
        ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE,
    )?;
    if service.query_status()?.current_state != ServiceState::Stopped {
        service.stop()?;
    }
    service.delete()?;
    info!("service {SERVICE_NAME} marked for deletion");
    Ok(())
}

/// Runs `main` as the service: registers with the SCM, reports running, and sets the flag
/// passed to `main` when the SCM asks the service to stop. Returns when `main` has returned
/// and the SCM has been told the service stopped; `main`'s error comes back as
/// [`ServiceError::Main`].
///
/// Only works when the SCM started the process; run from a console, the dispatcher fails with
/// ERROR_FAILED_SERVICE_CONTROLLER_CONNECT.
pub fn run_service<E: Display + 'static>(
    main: fn(Arc<AtomicBool>) -> Result<(), E>,
) -> Result<(), ServiceError> {
    let body: ServiceMain = Box::new(move |stop| main(stop).map_err(|e| format!("{e:#}")));
    MAIN.set(body).map_err(|_| ServiceError::AlreadyRunning)?;
    service_dispatcher::start(SERVICE_NAME, ffi_service_main)?;
    match FAILURE.lock().map(|mut failure| failure.take()) {
        Ok(Some(message)) => Err(ServiceError::Main(message)),
        Ok(None) => Ok(()),
        Err(poisoned) => Err(ServiceError::Main(poisoned.to_string())),
    }
}

define_windows_service!(ffi_service_main, service_main);

/// Called by the SCM on its own thread.
fn service_main(_arguments: Vec<OsString>) {
    if let Err(e) = run_registered() {
        error!(error = %e, "service failed");
        let message = match e {
            ServiceError::Main(message) => message,
            other => other.to_string(),
        };
        if let Ok(mut failure) = FAILURE.lock() {
            failure.get_or_insert(message);
        }
    }
}

fn run_registered() -> Result<(), ServiceError> {
    let Some(main) = MAIN.get() else {
        return Err(ServiceError::Main("no service body registered".to_owned()));
    };
    let stop = Arc::new(AtomicBool::new(false));
    let handler_stop = stop.clone();
    let status = service_control_handler::register(SERVICE_NAME, move |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown => {
            handler_stop.store(true, Ordering::Release);
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    })?;
    report(&status, ServiceState::Running, ServiceExitCode::Win32(0))?;
    info!("service {SERVICE_NAME} running");
    let outcome = main(stop);
    let exit = match outcome {
        Ok(()) => ServiceExitCode::Win32(0),
        Err(_) => ServiceExitCode::ServiceSpecific(1),
    };
    report(&status, ServiceState::Stopped, exit)?;
    outcome.map_err(ServiceError::Main)
}

fn report(
    status: &ServiceStatusHandle,
    state: ServiceState,
    exit_code: ServiceExitCode,
) -> Result<(), ServiceError> {
    let controls_accepted = if state == ServiceState::Running {
        ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN
    } else {
        ServiceControlAccept::empty()
    };
    status.set_service_status(ServiceStatus {
        service_type: SERVICE_TYPE,
        current_state: state,
        controls_accepted,
        exit_code,
        checkpoint: 0,
        wait_hint: Duration::ZERO,
        process_id: None,
    })?;
    Ok(())
}
