//! The Windows port server and clients (docs/windows.md).
//!
//! - [`WindowsPortServer`]: creates `\LpcMonEventPort` (ALPC by default, legacy LPC on
//!   request), secured for SYSTEM, and runs its receive loop on a thread of its own, feeding
//!   the [`Dispatcher`].
//! - [`client`]: `NtAlpcConnectPort`, `NtConnectPort` and `NtSecureConnectPort` clients for the
//!   load generator and experiments.
//! - [`service`]: install, uninstall and run lpcmon as a LocalSystem service.
//!
//! Every decision these make is in [`crate::decide`], and the receive loop that applies them is
//! [`crate::receive_loop`]; both are tested on Linux. This module is the system calls around
//! them.

mod alpc;
pub mod client;
mod ffi;
mod lpc;
mod security;
pub mod service;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use tracing::info;

pub use crate::decide::{DEFAULT_PORT_NAME, PortApi};
use crate::decide::{PeerPolicy, validate_port_name};
use crate::dispatch::Dispatcher;
use crate::error::PortError;
use crate::receive_loop;

/// How to run the port server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowsPortConfig {
    /// The port's object name; never under `\RPC Control`.
    pub port_name: String,
    pub api: PortApi,
    /// Add the built-in Administrators to the port's DACL, so the user-mode load generator can
    /// connect (the driver needs no entry: kernel-mode connects bypass the DACL).
    pub allow_administrators: bool,
    /// Accept producers whose ClientId is not the System process (pid 4).
    pub allow_user_mode_producers: bool,
}

impl Default for WindowsPortConfig {
    fn default() -> Self {
        WindowsPortConfig {
            port_name: DEFAULT_PORT_NAME.to_owned(),
            api: PortApi::Alpc,
            allow_administrators: false,
            allow_user_mode_producers: false,
        }
    }
}

/// The largest data one message may carry with `api` on this system. Configure the
/// dispatcher's `ServerConfig::max_message` no higher, so the handshake never promises more
/// than the port can carry.
pub fn port_data_limit(api: PortApi) -> Result<usize, PortError> {
    match api {
        PortApi::Alpc => Ok(api.data_limit(alpc::max_total_message(ffi::ntdll())?)),
        PortApi::Lpc => Ok(api.data_limit(0)),
    }
}

/// A running port server: the port and the thread that receives on it.
#[derive(Debug)]
pub struct WindowsPortServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), PortError>>>,
}

impl WindowsPortServer {
    /// Creates the port and starts receiving. Creating happens here, on the caller's thread,
    /// so a port that cannot be created (name taken, access denied, an ntdll without the API)
    /// is an error from `start`, not a silent thread exit.
    pub fn start(config: WindowsPortConfig, dispatcher: Arc<Dispatcher>) -> Result<Self, PortError> {
        validate_port_name(&config.port_name).map_err(|why| PortError::Io {
            call: "port name",
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, why),
        })?;
        let security = security::SecurityDescriptor::for_port(config.allow_administrators)?;
        let api = ffi::ntdll();
        let policy = PeerPolicy {
            allow_user_mode_producers: config.allow_user_mode_producers,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let spawned = match config.api {
            PortApi::Alpc => {
                let port = alpc::AlpcPort::create(api, &config.port_name, &security)?;
                let max_data = port.max_data();
                let thread = spawn("lpcmon-alpc", move || {
                    receive_loop::run(port, dispatcher, policy, thread_stop)
                })?;
                (thread, max_data)
            }
            PortApi::Lpc => {
                let port = lpc::LpcPort::create(api, &config.port_name, &security)?;
                let max_data = port.max_data();
                let thread = spawn("lpcmon-lpc", move || {
                    receive_loop::run(port, dispatcher, policy, thread_stop)
                })?;
                (thread, max_data)
            }
        };
        let (thread, max_data) = spawned;
        info!(
            port = %config.port_name,
            api = config.api.name(),
            max_data,
            administrators = config.allow_administrators,
            user_mode_producers = config.allow_user_mode_producers,
            "port server listening"
        );
        Ok(WindowsPortServer {
            stop,
            thread: Some(thread),
        })
    }

    /// Whether the receive loop has ended (after a stop, or because the port failed).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops the loop (within one receive timeout, 100 ms), closes every connection and the
    /// port, and returns the loop's error if it had already failed.
    pub fn shutdown(mut self) -> Result<(), PortError> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<(), PortError> {
        self.stop.store(true, Ordering::Release);
        match self.thread.take() {
            None => Ok(()),
            Some(thread) => thread.join().unwrap_or_else(|_| {
                Err(PortError::Io {
                    call: "port server thread",
                    source: std::io::Error::other("the receive loop panicked"),
                })
            }),
        }
    }
}

impl Drop for WindowsPortServer {
    fn drop(&mut self) {
        if let Err(error) = self.stop_and_join() {
            tracing::warn!(%error, "port server ended with an error");
        }
    }
}

fn spawn<F>(name: &str, body: F) -> Result<JoinHandle<Result<(), PortError>>, PortError>
where
    F: FnOnce() -> Result<(), PortError> + Send + 'static,
{
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(body)
        .map_err(|source| PortError::Io {
            call: "spawning the port server thread",
            source,
        })
}
