//! The kernel callbacks: read the kernel's values, hand them to `Shared::record`. They never
//! block, never allocate and never touch the port; a full queue is counted by the queue.
//!
//! Contexts (WDK documentation; docs/windows.md, "The driver and the kernel"):
//! - process notify: PASSIVE_LEVEL, in the creating (or exiting) thread, in a critical region;
//! - thread notify: PASSIVE_LEVEL or APC_LEVEL, in the new or exiting thread;
//! - image notify: PASSIVE_LEVEL, in the thread mapping the image, in a critical region.

use core::ffi::c_void;

use lpcmon_protocol::EventKind;
use lpcmon_protocol::kernel_events::{ImageLoad, KernelEvent, ProcessExit, ProcessStart, ThreadChange};
use wdk::println;
use wdk_sys::ntddk::{
    PsGetCurrentThreadId, PsRemoveCreateThreadNotifyRoutine, PsRemoveLoadImageNotifyRoutine,
    PsSetCreateThreadNotifyRoutine, PsSetLoadImageNotifyRoutine,
};
use wdk_sys::{
    BOOLEAN, HANDLE, NT_SUCCESS, NTSTATUS, PEPROCESS, PIMAGE_INFO, PUNICODE_STRING, STATUS_NOT_SUPPORTED,
    UNICODE_STRING,
};

use crate::ffi::{
    CreateProcessNotifyEx, FALSE, IMAGE_INFO_SYSTEM_MODE_IMAGE, ImageInfo,
    PS_CREATE_PROCESS_NOTIFY_SUBSYSTEMS, PsCreateNotifyInfo, Routines, TRUE,
};
use crate::shared;

/// Which process-notify registration succeeded, so the same one is removed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ProcessApi {
    Ex2,
    Ex,
}

/// What DriverEntry registered; removed in reverse by [`unregister`].
pub struct Registered {
    process: Option<ProcessApi>,
    thread: bool,
    image: bool,
}

/// A process or thread id: kernel HANDLE values that are small integers.
fn id(handle: HANDLE) -> u32 {
    handle as usize as u32
}

/// The code units of a `UNICODE_STRING` the kernel lends for the duration of a callback.
///
/// # Safety
/// `s` is null or points to a valid UNICODE_STRING whose buffer stays valid for `'a`.
unsafe fn units<'a>(s: *const UNICODE_STRING) -> Option<&'a [u16]> {
    // SAFETY: per the contract, `s` is null or valid.
    let s = unsafe { s.as_ref() }?;
    if s.Buffer.is_null() || s.Length == 0 {
        return None;
    }
    // SAFETY: `Length` bytes of `Buffer` are the string's valid UTF-16 contents.
    Some(unsafe { core::slice::from_raw_parts(s.Buffer, usize::from(s.Length) / 2) })
}

/// `PCREATE_PROCESS_NOTIFY_ROUTINE_EX`: `info` is the create information, or null on exit.
unsafe extern "system" fn on_process(process: PEPROCESS, process_id: HANDLE, info: *mut PsCreateNotifyInfo) {
    let Some(shared) = shared::current() else {
        return;
    };
    let kind = if info.is_null() {
        EventKind::ProcessExit
    } else {
        EventKind::ProcessStart
    };
    if !shared.wants(kind) {
        return;
    }
    let time_ns = shared.time_ns();
    // SAFETY: PASSIVE_LEVEL; the kernel passes a valid PS_CREATE_NOTIFY_INFO (or null, for an
    // exit) that stays valid until this callback returns. We only read it.
    let event = match unsafe { info.as_ref() } {
        Some(info) => KernelEvent::ProcessStart(ProcessStart {
            time_ns,
            pid: id(process_id),
            ppid: id(info.parent_process_id),
            creating_pid: id(info.creating_thread_id.unique_process),
            creating_tid: id(info.creating_thread_id.unique_thread),
            // SAFETY: the strings belong to `info`, valid for this callback; either may be
            // null (subsystem processes).
            image_file_name: unsafe { units(info.image_file_name) },
            // SAFETY: as above.
            command_line: unsafe { units(info.command_line) },
        }),
        None => KernelEvent::ProcessExit(ProcessExit {
            time_ns,
            pid: id(process_id),
            exit_status: shared.routines.process_exit_status.map(|exit_status| {
                // SAFETY: PASSIVE_LEVEL; `process` is the exiting process, referenced by the
                // kernel for the duration of the callback; the routine only reads it.
                unsafe { exit_status(process) }
            }),
        }),
    };
    shared.record(&event);
}

/// `PCREATE_THREAD_NOTIFY_ROUTINE`.
unsafe extern "C" fn on_thread(process_id: HANDLE, thread_id: HANDLE, create: BOOLEAN) {
    let Some(shared) = shared::current() else {
        return;
    };
    let kind = if create != FALSE {
        EventKind::ThreadStart
    } else {
        EventKind::ThreadExit
    };
    if !shared.wants(kind) {
        return;
    }
    shared.record(&KernelEvent::Thread(ThreadChange {
        time_ns: shared.time_ns(),
        pid: id(process_id),
        tid: id(thread_id),
        created: create != FALSE,
    }));
}

/// `PLOAD_IMAGE_NOTIFY_ROUTINE`. `process_id` is 0 for a driver.
unsafe extern "C" fn on_image(full_image_name: PUNICODE_STRING, process_id: HANDLE, image_info: PIMAGE_INFO) {
    let Some(shared) = shared::current() else {
        return;
    };
    if !shared.wants(EventKind::ImageLoad) {
        return;
    }
    // SAFETY: PASSIVE_LEVEL; the kernel passes a valid IMAGE_INFO for the duration of the
    // callback; `ImageInfo` mirrors its x64 layout (checked in ffi.rs).
    let Some(info) = (unsafe { image_info.cast::<ImageInfo>().as_ref() }) else {
        return;
    };
    // SAFETY: PASSIVE_LEVEL; returns the current thread's id, no preconditions.
    let tid = unsafe { PsGetCurrentThreadId() };
    shared.record(&KernelEvent::ImageLoad(ImageLoad {
        time_ns: shared.time_ns(),
        pid: id(process_id),
        tid: id(tid),
        // SAFETY: the name is null or valid for this callback.
        image_path: unsafe { units(full_image_name) },
        base: info.image_base as u64,
        size: info.image_size as u64,
        system_image: info.properties & IMAGE_INFO_SYSTEM_MODE_IMAGE != 0,
    }));
}

fn check(status: NTSTATUS) -> Result<(), NTSTATUS> {
    if NT_SUCCESS(status) { Ok(()) } else { Err(status) }
}

fn register_process(routines: &Routines) -> Result<ProcessApi, NTSTATUS> {
    if let Some(set) = routines.set_process_notify_ex2 {
        // SAFETY: PASSIVE_LEVEL (DriverEntry); `on_process` has the prototype Ex2 expects for
        // PsCreateProcessNotifySubsystems and lives in this image, which stays loaded until
        // DriverUnload removes it. Fails with STATUS_ACCESS_DENIED without /INTEGRITYCHECK.
        let st = unsafe {
            set(
                PS_CREATE_PROCESS_NOTIFY_SUBSYSTEMS,
                on_process as CreateProcessNotifyEx as *mut c_void,
                FALSE,
            )
        };
        return check(st).map(|()| ProcessApi::Ex2);
    }
    if let Some(set) = routines.set_process_notify_ex {
        // SAFETY: as above, for the Ex registration.
        let st = unsafe { set(on_process, FALSE) };
        return check(st).map(|()| ProcessApi::Ex);
    }
    Err(STATUS_NOT_SUPPORTED)
}

/// Registers the three callbacks. On failure, whatever was registered is removed again and the
/// status returned. PASSIVE_LEVEL (DriverEntry).
pub fn register(routines: &Routines) -> Result<Registered, NTSTATUS> {
    let mut done = Registered {
        process: None,
        thread: false,
        image: false,
    };
    let result = (|| {
        done.process = Some(register_process(routines)?);
        // SAFETY: PASSIVE_LEVEL; `on_thread` matches PCREATE_THREAD_NOTIFY_ROUTINE and stays
        // loaded until DriverUnload removes it.
        check(unsafe { PsSetCreateThreadNotifyRoutine(Some(on_thread)) })?;
        done.thread = true;
        // SAFETY: as above, for PLOAD_IMAGE_NOTIFY_ROUTINE.
        check(unsafe { PsSetLoadImageNotifyRoutine(Some(on_image)) })?;
        done.image = true;
        Ok(())
    })();
    match result {
        Ok(()) => Ok(done),
        Err(status) => {
            println!("lpcmon: registering the callbacks failed: {status:#010x}");
            unregister(&done, routines);
            Err(status)
        }
    }
}

/// Removes what [`register`] registered. Each removal waits for running instances of that
/// callback to return, so afterwards none can touch the shared state. PASSIVE_LEVEL.
pub fn unregister(registered: &Registered, routines: &Routines) {
    if registered.image {
        // SAFETY: PASSIVE_LEVEL; `on_image` was registered by `register`.
        let _ = unsafe { PsRemoveLoadImageNotifyRoutine(Some(on_image)) };
    }
    if registered.thread {
        // SAFETY: PASSIVE_LEVEL; `on_thread` was registered by `register`.
        let _ = unsafe { PsRemoveCreateThreadNotifyRoutine(Some(on_thread)) };
    }
    match (
        registered.process,
        routines.set_process_notify_ex2,
        routines.set_process_notify_ex,
    ) {
        (Some(ProcessApi::Ex2), Some(set), _) => {
            // SAFETY: PASSIVE_LEVEL; removes the Ex2 registration made with the same routine
            // and type; Remove = TRUE waits for running callbacks.
            let _ = unsafe {
                set(
                    PS_CREATE_PROCESS_NOTIFY_SUBSYSTEMS,
                    on_process as CreateProcessNotifyEx as *mut c_void,
                    TRUE,
                )
            };
        }
        (Some(ProcessApi::Ex), _, Some(set)) => {
            // SAFETY: as above, for the Ex registration.
            let _ = unsafe { set(on_process, TRUE) };
        }
        _ => {}
    }
}
