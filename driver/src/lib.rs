//! lpcmon-driver: lpcmon's Windows kernel producer (docs/design.md, docs/windows.md).
//!
//! A thin shell over `lpcmon_protocol`. Kernel callbacks for process creation and exit, thread
//! creation and exit, and image loads copy what the kernel tells them into a preallocated,
//! lock-free, nonpaged queue and signal an event. One system worker thread runs the protocol's
//! producer state machine (`producer::run`), connecting to the lpcmon server's ALPC port and
//! posting each event as a message: connect with backoff, fragment, report every loss.
//!
//! Every decision is made in `lpcmon_protocol::kernel_events` and the producer core, which are
//! tested on Linux (`protocol/tests/driver_sim.rs` runs this driver's logic against a simulated
//! kernel). What remains here are the kernel calls, each in an `unsafe` block that states its
//! IRQL and why the memory it touches is valid.
//!
//! - [`ffi`]: prototypes the WDK headers lack (the port calls), runtime-resolved exports, time.
//! - [`registry`]: reads `Parameters` under the service key.
//! - [`shared`]: the queue and events the callbacks and the worker share.
//! - [`callbacks`]: the process, thread and image-load callbacks.
//! - [`worker`]: the system thread and its port I/O.
#![no_std]

#[cfg(not(test))]
extern crate wdk_panic;

use core::cell::UnsafeCell;

use wdk::println;
#[cfg(not(test))]
use wdk_alloc::WdkAllocator;
use wdk_sys::{
    DRIVER_OBJECT, NTSTATUS, PCUNICODE_STRING, PDRIVER_OBJECT, PETHREAD, STATUS_NOT_SUPPORTED, STATUS_SUCCESS,
};

mod callbacks;
mod ffi;
mod registry;
mod shared;
mod worker;

use shared::Shared;

// Nothing allocates through it: every buffer is preallocated by DriverEntry. It is here so that
// an `alloc` use would take nonpaged pool rather than fail to link.
#[cfg(not(test))]
#[global_allocator]
static GLOBAL_ALLOCATOR: WdkAllocator = WdkAllocator;

/// What DriverUnload must undo.
struct Loaded {
    shared: &'static Shared,
    callbacks: callbacks::Registered,
    worker: PETHREAD,
}

struct LoadedCell(UnsafeCell<Option<Loaded>>);

// SAFETY: written once by DriverEntry just before it returns success, taken once by
// DriverUnload; the I/O manager never runs the two concurrently, and nothing else touches it.
unsafe impl Sync for LoadedCell {}

static LOADED: LoadedCell = LoadedCell(UnsafeCell::new(None));

/// DriverEntry: read the parameters, preallocate, register the callbacks, start the worker.
/// Any failure undoes exactly what was done so far and returns its status.
///
/// # Safety
/// Called once by the I/O manager at PASSIVE_LEVEL with a valid driver object and registry
/// path.
// SAFETY: "DriverEntry" is the entry point symbol the WDM linker settings name
// (/ENTRY:DriverEntry); nothing else in this image exports it.
#[unsafe(export_name = "DriverEntry")]
pub unsafe extern "system" fn driver_entry(
    driver: PDRIVER_OBJECT,
    registry_path: PCUNICODE_STRING,
) -> NTSTATUS {
    let (params, rejected) = registry::read_parameters(registry_path);
    for r in rejected.iter() {
        println!(
            "lpcmon: registry value {} ignored ({}); using its default",
            r.value, r.reason
        );
    }
    let routines = match ffi::Routines::resolve() {
        Ok(routines) => routines,
        Err(missing) => {
            println!("lpcmon: {missing} is not exported by this kernel; not loading");
            return STATUS_NOT_SUPPORTED;
        }
    };
    let shared = match Shared::create(params, routines) {
        Ok(shared) => shared,
        Err(status) => return status,
    };
    // Published before the callbacks exist, so they always find it.
    shared::publish(Some(shared));
    let callbacks = match callbacks::register(&shared.routines) {
        Ok(registered) => registered,
        Err(status) => {
            shared::publish(None);
            // SAFETY: no callback is registered (register undid its work) and no worker exists.
            unsafe { Shared::destroy(shared) };
            return status;
        }
    };
    let worker = match worker::start(shared) {
        Ok(thread) => thread,
        Err(status) => {
            callbacks::unregister(&callbacks, &shared.routines);
            shared::publish(None);
            // SAFETY: the callbacks are removed (removal waits for running ones) and the worker
            // either never started or has been joined by `worker::start`.
            unsafe { Shared::destroy(shared) };
            return status;
        }
    };
    // SAFETY: DriverEntry runs once, before DriverUnload can run; nothing else uses LOADED.
    unsafe {
        *LOADED.0.get() = Some(Loaded {
            shared,
            callbacks,
            worker,
        });
    }
    // SAFETY: the I/O manager passes a valid driver object that we may fill in during
    // DriverEntry; PASSIVE_LEVEL.
    unsafe { (*driver).DriverUnload = Some(driver_unload) };
    println!(
        "lpcmon: loaded; port {}, queue {} slots, event mask {:#x}, secure connect {}",
        shared.params.port_name,
        shared.params.queue_capacity,
        shared.params.filter.mask.0,
        shared.params.secure_connect
    );
    STATUS_SUCCESS
}

/// DriverUnload, in the order docs/windows.md ("Unload") gives: unregister the callbacks, stop and join the worker (which
/// closes its port as it exits), free the queue. PASSIVE_LEVEL, System thread.
unsafe extern "C" fn driver_unload(_driver: *mut DRIVER_OBJECT) {
    // SAFETY: DriverUnload runs once, after DriverEntry succeeded; nothing else uses LOADED.
    let Some(loaded) = (unsafe { (*LOADED.0.get()).take() }) else {
        return;
    };
    // 1. No new events: each removal waits for callbacks already running.
    callbacks::unregister(&loaded.callbacks, &loaded.shared.routines);
    shared::publish(None);
    // 2. Stop the worker: it drains and reports within its grace, closes the port, exits.
    loaded.shared.request_stop();
    worker::join(loaded.worker);
    // 3. The port was closed by the worker, its owner, before it exited.
    // 4. Free the queue.
    // SAFETY: no callback is registered and the worker thread has terminated, so nothing refers
    // to the shared state any more.
    unsafe { Shared::destroy(loaded.shared) };
    println!("lpcmon: unloaded");
}
