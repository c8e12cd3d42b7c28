//! The Windows transports. Producers are user mode here: a kernel producer needs the driver.
//! These are type-checked and clippy-clean for `x86_64-pc-windows-msvc` but have not been run.
//!
//! - `alpc`, `alpc-request`, `lpc`: lpcmon's own port server (`WindowsPortServer` + the
//!   `Dispatcher`, so session, reassembly and loss accounting are the production ones) under a
//!   private port name, fed by `alpc_server`'s client as datagrams or requests. The consumer
//!   takes the dispatcher's outputs from the ingest channel; latency ends there.
//! - `pipe`: a message-mode named pipe, one message per `WriteFile`.
//! - `shm`: a section (`CreateFileMappingW`) holding the same ring as Linux, signalled with an
//!   auto-reset event, which collapses several `SetEvent`s into one wake as seed 000's did.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use alpc_server::dispatch::Dispatcher;
use alpc_server::windows::client::{ClientApi, ClientOptions, connect};
use alpc_server::windows::{PortApi, WindowsPortConfig, WindowsPortServer, port_data_limit};
use lpcmon_protocol::server::{Output, ServerConfig};
use lpcmon_protocol::{Hello, ProducerKind};
use tokio::sync::mpsc::error::TryRecvError;
use windows_sys::Win32::Foundation::{
    CloseHandle, ERROR_BROKEN_PIPE, ERROR_PIPE_CONNECTED, FILETIME, GENERIC_WRITE, GetLastError, HANDLE,
    INVALID_HANDLE_VALUE,
};
use windows_sys::Win32::Storage::FileSystem::{
    CreateFileW, OPEN_EXISTING, PIPE_ACCESS_INBOUND, ReadFile, WriteFile,
};
use windows_sys::Win32::System::Memory::{
    CreateFileMappingW, FILE_MAP_ALL_ACCESS, MEMORY_MAPPED_VIEW_ADDRESS, MapViewOfFile, PAGE_READWRITE,
    UnmapViewOfFile,
};
use windows_sys::Win32::System::Pipes::{
    ConnectNamedPipe, CreateNamedPipeW, PIPE_READMODE_MESSAGE, PIPE_TYPE_MESSAGE, PIPE_WAIT,
};
use windows_sys::Win32::System::Threading::{
    CreateEventW, GetCurrentProcess, GetCurrentThread, GetProcessTimes, GetThreadTimes, SetEvent,
    WaitForSingleObject,
};

use super::ring::{self, Full, Ring, Signal};
use super::{Outcome, Transport, TransportError, TransportSpec};
use crate::measure::{Job, Losses, Receiver, produce};
use crate::plan::Mode;

/// How long the consumer waits for the rest after the producer is done.
const DRAIN: Duration = Duration::from_secs(15);

fn filetime_ns(t: &FILETIME) -> u64 {
    ((u64::from(t.dwHighDateTime) << 32) | u64::from(t.dwLowDateTime)) * 100
}

/// Kernel plus user time from a `GetThreadTimes`-shaped call, nanoseconds (0 if it fails).
fn cpu_times(call: impl FnOnce(&mut FILETIME, &mut FILETIME, &mut FILETIME, &mut FILETIME) -> i32) -> u64 {
    let zero = FILETIME {
        dwLowDateTime: 0,
        dwHighDateTime: 0,
    };
    let (mut c, mut e, mut k, mut u) = (zero, zero, zero, zero);
    if call(&mut c, &mut e, &mut k, &mut u) == 0 {
        0
    } else {
        filetime_ns(&k) + filetime_ns(&u)
    }
}

/// CPU time (kernel + user) of the calling thread, nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    // SAFETY: the pseudo-handle of the current thread is always valid; the four pointers are
    // to live locals of `cpu_times`.
    cpu_times(|c, e, k, u| unsafe { GetThreadTimes(GetCurrentThread(), c, e, k, u) })
}

/// CPU time (kernel + user) of the whole process, nanoseconds.
pub fn process_cpu_ns() -> u64 {
    // SAFETY: as above, for the current process's pseudo-handle.
    cpu_times(|c, e, k, u| unsafe { GetProcessTimes(GetCurrentProcess(), c, e, k, u) })
}

pub fn open(spec: &TransportSpec) -> Box<dyn Transport> {
    match spec.name.as_str() {
        "alpc" | "alpc-request" => Box::new(Port { api: PortApi::Alpc }),
        "lpc" => Box::new(Port { api: PortApi::Lpc }),
        "pipe" => Box::new(NamedPipe {
            limit: spec.number("limit"),
        }),
        "shm" => Box::new(Section {
            limit: spec.number("limit"),
            slots: spec.number("slots"),
            full: Full::parse(spec.get("full")),
        }),
        other => unreachable!("parse_spec let through `{other}`"),
    }
}

/// A handle closed on drop.
struct Owned(HANDLE);

impl Drop for Owned {
    fn drop(&mut self) {
        if !self.0.is_null() && self.0 != INVALID_HANDLE_VALUE {
            // SAFETY: the handle came from a successful create call and is closed once.
            unsafe { CloseHandle(self.0) };
        }
    }
}

// SAFETY: kernel handles may be used from any thread.
unsafe impl Send for Owned {}
// SAFETY: every call made through a shared `Owned` is thread-safe in Win32.
unsafe impl Sync for Owned {}

fn last_error(what: &'static str) -> TransportError {
    TransportError::Io {
        what,
        source: std::io::Error::last_os_error(),
    }
}

fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain(std::iter::once(0)).collect()
}

/// A name no other run uses.
fn unique(prefix: &str) -> String {
    let mut r = [0u8; 8];
    let _ = getrandom::fill(&mut r);
    format!("{prefix}{}-{:016x}", std::process::id(), u64::from_le_bytes(r))
}

// ---------------------------------------------------------------------------------------------
// ALPC and LPC ports

struct Port {
    api: PortApi,
}

impl Transport for Port {
    fn limit(&self) -> usize {
        port_data_limit(self.api).unwrap_or(lpcmon_protocol::port_message::LPC_LEGACY_MAX_DATA)
    }

    fn run(&self, job: &Job, mode: Mode) -> Result<Outcome, TransportError> {
        let limit = port_data_limit(self.api).map_err(|e| TransportError::Other(e.to_string()))?;
        let (tx, mut outputs) = tokio::sync::mpsc::channel(16_384);
        let dispatcher = Arc::new(Dispatcher::new(
            ServerConfig {
                api: self.api.name(),
                max_message: limit,
                ..ServerConfig::default()
            },
            tx,
        ));
        let port_name = format!(r"\{}", unique("LpcMonLab"));
        let server = WindowsPortServer::start(
            WindowsPortConfig {
                port_name: port_name.clone(),
                api: self.api,
                allow_administrators: true,
                allow_user_mode_producers: true,
            },
            dispatcher,
        )
        .map_err(|e| TransportError::Other(format!("cannot create {port_name}: {e}")))?;
        let mut instance = [0u8; 16];
        let _ = getrandom::fill(&mut instance);
        let mut hello = [0u8; lpcmon_protocol::message::HELLO_MAX_LEN];
        let hello_len = Hello {
            min_version: lpcmon_protocol::message::MIN_VERSION,
            max_version: lpcmon_protocol::message::VERSION,
            kind: ProducerKind::Loadgen,
            instance,
            max_message: limit as u32,
            next_seq: 1,
            os_build: 0,
            os: "windows (lpcmon lab)",
        }
        .encode(&mut hello)
        .map_err(|e| TransportError::Other(format!("hello: {e}")))?;
        let options = ClientOptions {
            api: match self.api {
                PortApi::Alpc => ClientApi::Alpc,
                PortApi::Lpc => ClientApi::Lpc,
            },
            // The lab's server runs as the user, not LocalSystem.
            require_system_server: false,
            ..ClientOptions::default()
        };
        let mut conn = connect(&port_name, &hello[..hello_len], &options)
            .map_err(|e| TransportError::Other(format!("cannot connect to {port_name}: {e}")))?;
        let limit = conn.max_message();
        let request = mode == Mode::Request;
        let finished = AtomicBool::new(false);
        let result = std::thread::scope(|s| {
            let finished = &finished;
            let consumer = s.spawn(move || {
                let mut rx = Receiver::new(job, limit);
                let mut lost = Losses::default();
                let mut deadline = None;
                loop {
                    match outputs.try_recv() {
                        Ok(Output::Event { event, .. }) => rx.deliver(u64::from(event.header.tid)),
                        Ok(Output::Loss { loss, .. }) => lost.add(loss.stage.name(), loss.count),
                        Ok(Output::Disconnected { .. }) | Err(TryRecvError::Disconnected) => break,
                        Ok(_) => {}
                        Err(TryRecvError::Empty) => {
                            // Bounded: once the producer is done, the rest must come within DRAIN.
                            if finished.load(Ordering::Acquire)
                                && Instant::now() > *deadline.get_or_insert_with(|| Instant::now() + DRAIN)
                            {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                }
                rx.stop_clock();
                (rx, lost)
            });
            // The server numbers events per producer instance; the protocol wants seq from 1.
            let tally = produce(job, limit, |m| {
                let r = if request { conn.request(m) } else { conn.send(m) };
                r.map_err(|_| "producer_send")
            });
            // Closing the connection makes the server emit Disconnected, which ends the consumer.
            drop(conn);
            finished.store(true, Ordering::Release);
            let (rx, lost) = consumer
                .join()
                .map_err(|_| TransportError::Other("consumer thread panicked".into()))?;
            Ok(Outcome::from_ends(tally, rx, lost, limit))
        });
        server
            .shutdown()
            .map_err(|e| TransportError::Other(format!("port server: {e}")))?;
        result
    }
}

// ---------------------------------------------------------------------------------------------
// Named pipe

struct NamedPipe {
    limit: usize,
}

impl Transport for NamedPipe {
    fn limit(&self) -> usize {
        self.limit
    }

    fn run(&self, job: &Job, _mode: Mode) -> Result<Outcome, TransportError> {
        let name = wide(&format!(r"\\.\pipe\{}", unique("lpcmon-lab-")));
        let limit = self.limit;
        // SAFETY: `name` is NUL-terminated and outlives the call; no security attributes.
        let server = Owned(unsafe {
            CreateNamedPipeW(
                name.as_ptr(),
                PIPE_ACCESS_INBOUND,
                PIPE_TYPE_MESSAGE | PIPE_READMODE_MESSAGE | PIPE_WAIT,
                1,
                0,
                (limit as u32).max(4096) * 4,
                0,
                std::ptr::null(),
            )
        });
        if server.0 == INVALID_HANDLE_VALUE {
            return Err(last_error("CreateNamedPipeW"));
        }
        std::thread::scope(|s| {
            let consumer = s.spawn(|| {
                // Borrow the whole owner: the raw handle alone is not Sync.
                let server = &server;
                let mut rx = Receiver::new(job, limit);
                // SAFETY: a valid pipe handle; synchronous connect.
                let connected = unsafe { ConnectNamedPipe(server.0, std::ptr::null_mut()) } != 0
                    // SAFETY: reads the calling thread's last error.
                    || unsafe { GetLastError() } == ERROR_PIPE_CONNECTED;
                if connected {
                    let mut buf = vec![0u8; limit];
                    loop {
                        let mut read = 0u32;
                        // SAFETY: `buf` is writable for its length; synchronous read.
                        let ok = unsafe {
                            ReadFile(
                                server.0,
                                buf.as_mut_ptr(),
                                buf.len() as u32,
                                &mut read,
                                std::ptr::null_mut(),
                            )
                        };
                        // SAFETY: reads the calling thread's last error.
                        if ok == 0 && unsafe { GetLastError() } == ERROR_BROKEN_PIPE {
                            break;
                        }
                        if ok == 0 {
                            rx.malformed += 1;
                            continue;
                        }
                        rx.on_message(&buf[..read as usize]);
                    }
                }
                rx.stop_clock();
                rx
            });
            let open_client = || {
                // SAFETY: `name` is NUL-terminated; the pipe instance exists already.
                Owned(unsafe {
                    CreateFileW(
                        name.as_ptr(),
                        GENERIC_WRITE,
                        0,
                        std::ptr::null(),
                        OPEN_EXISTING,
                        0,
                        std::ptr::null_mut(),
                    )
                })
            };
            let client = open_client();
            if client.0 == INVALID_HANDLE_VALUE {
                let e = last_error("CreateFileW on the pipe");
                // Unblock the consumer's ConnectNamedPipe with a connection that closes at once.
                drop(open_client());
                let _ = consumer.join();
                return Err(e);
            }
            let tally = produce(job, limit, |m| {
                let mut written = 0u32;
                // SAFETY: `m` is readable for its length; synchronous write.
                let ok = unsafe {
                    WriteFile(
                        client.0,
                        m.as_ptr(),
                        m.len() as u32,
                        &mut written,
                        std::ptr::null_mut(),
                    )
                };
                if ok != 0 && written as usize == m.len() {
                    Ok(())
                } else {
                    Err("write_failed")
                }
            });
            drop(client);
            let rx = consumer
                .join()
                .map_err(|_| TransportError::Other("consumer thread panicked".into()))?;
            Ok(Outcome::from_ends(tally, rx, Losses::default(), limit))
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Section + event

struct Section {
    limit: usize,
    slots: usize,
    full: Full,
}

/// An auto-reset event as the ring's signal.
struct EventSignal(Owned);

impl Signal for EventSignal {
    fn notify(&self) {
        // SAFETY: a valid event handle.
        unsafe { SetEvent(self.0.0) };
    }

    fn wait(&self, timeout_ms: u32) {
        // SAFETY: a valid event handle.
        unsafe { WaitForSingleObject(self.0.0, timeout_ms) };
    }
}

/// A mapped view, unmapped on drop.
struct View {
    addr: MEMORY_MAPPED_VIEW_ADDRESS,
    len: usize,
}

impl View {
    fn words(&self) -> &[AtomicU64] {
        // SAFETY: the view is page-aligned, `len` bytes, zero-filled by the section, lives as
        // long as `self`, and is only accessed through these atomics.
        unsafe { std::slice::from_raw_parts(self.addr.Value.cast::<AtomicU64>(), self.len / 8) }
    }
}

impl Drop for View {
    fn drop(&mut self) {
        // SAFETY: the address came from MapViewOfFile, and no borrow of `words()` outlives it.
        unsafe { UnmapViewOfFile(self.addr) };
    }
}

impl Transport for Section {
    fn limit(&self) -> usize {
        self.limit
    }

    fn run(&self, job: &Job, _mode: Mode) -> Result<Outcome, TransportError> {
        let len = Ring::bytes_needed(self.slots, self.limit);
        // SAFETY: a pagefile-backed section with no name and default security.
        let section = Owned(unsafe {
            CreateFileMappingW(
                INVALID_HANDLE_VALUE,
                std::ptr::null(),
                PAGE_READWRITE,
                (len as u64 >> 32) as u32,
                len as u32,
                std::ptr::null(),
            )
        });
        if section.0.is_null() {
            return Err(last_error("CreateFileMappingW"));
        }
        // SAFETY: a valid section handle; the whole section is mapped.
        let addr = unsafe { MapViewOfFile(section.0, FILE_MAP_ALL_ACCESS, 0, 0, len) };
        if addr.Value.is_null() {
            return Err(last_error("MapViewOfFile"));
        }
        let view = View { addr, len };
        // SAFETY: an unnamed auto-reset event, initially not signalled.
        let event = Owned(unsafe { CreateEventW(std::ptr::null(), 0, 0, std::ptr::null()) });
        if event.0.is_null() {
            return Err(last_error("CreateEventW"));
        }
        let signal = EventSignal(event);
        ring::run_cell(job, view.words(), self.slots, self.limit, self.full, &signal)
    }
}
