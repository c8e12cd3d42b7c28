//! Declarations the WDK headers do not give us, and the routines found at run time.
//!
//! wdk-sys binds `ntifs.h`, `ntddk.h` and `ntstrsafe.h` only, which declare no port function
//! and no `PORT_MESSAGE`. The prototypes here follow phnt's `ntlpcapi.h` (docs/windows.md,
//! "Prototypes"); `PORT_MESSAGE`, `ALPC_PORT_ATTRIBUTES` and the QoS are `lpcmon_nt`'s, whose
//! x64 layouts are checked at compile time there (and against ntapi's in alpc-server).
//!
//! The port calls, `ZwAlpcConnectPort` and `ZwAlpcSendWaitReceivePort`, are looked up with
//! `MmGetSystemRoutineAddress`, as are the newer process-notify registrations; a missing
//! optional routine degrades the driver, a missing port routine stops DriverEntry with a log
//! naming it. The driver imports `ExAllocatePool2`, so it loads only on Windows 10 2004 and
//! later, which export both port routines: the legacy `ZwConnectPort` /
//! `ZwSecureConnectPort` / `ZwRequestWaitReplyPort` fallbacks could never run and are gone.
//!
//! Only `Zw*` forms are called: from a kernel thread they set PreviousMode to KernelMode, so
//! the kernel does not probe our kernel buffers as if they were user memory.

use core::ffi::c_void;
use core::mem::{offset_of, size_of};

use lpcmon_nt::PortMessage;
use lpcmon_nt::alpc::AlpcPortAttributes;
use wdk_sys::ntddk::MmGetSystemRoutineAddress;
use wdk_sys::{BOOLEAN, HANDLE, LARGE_INTEGER, NTSTATUS, OBJECT_ATTRIBUTES, PEPROCESS, UNICODE_STRING};

pub const FALSE: BOOLEAN = 0;
pub const TRUE: BOOLEAN = 1;

/// Access rights and object attributes (winnt.h, ntdef.h), spelled out here rather than taken
/// from bindgen's rendering of the header macros.
pub const SYNCHRONIZE: u32 = 0x0010_0000;
pub const THREAD_ALL_ACCESS: u32 = 0x001F_FFFF;
pub const KEY_READ: u32 = 0x0002_0019;
pub const OBJ_CASE_INSENSITIVE: u32 = 0x0000_0040;
pub const OBJ_KERNEL_HANDLE: u32 = 0x0000_0200;

/// `PsCreateProcessNotifySubsystems`: the Ex2 registration that also reports subsystem
/// (e.g. WSL pico) processes.
pub const PS_CREATE_PROCESS_NOTIFY_SUBSYSTEMS: i32 = 0;
/// `IMAGE_INFO.SystemModeImage`: bit 8 of `Properties`, after the 8-bit ImageAddressingMode.
pub const IMAGE_INFO_SYSTEM_MODE_IMAGE: u32 = 1 << 8;
/// `CLIENT_ID`.
#[repr(C)]
pub struct ClientId {
    pub unique_process: HANDLE,
    pub unique_thread: HANDLE,
}

/// `PS_CREATE_NOTIFY_INFO` (ntddk.h), x64. Mirrored so the callback does not depend on how
/// bindgen names the anonymous flags union.
#[repr(C)]
pub struct PsCreateNotifyInfo {
    pub size: usize,
    pub flags: u32,
    pub parent_process_id: HANDLE,
    pub creating_thread_id: ClientId,
    pub file_object: *mut c_void,
    pub image_file_name: *const UNICODE_STRING,
    pub command_line: *const UNICODE_STRING,
    pub creation_status: NTSTATUS,
}

/// `IMAGE_INFO` (ntddk.h), x64; `properties` is the bitfield union.
#[repr(C)]
pub struct ImageInfo {
    pub properties: u32,
    pub image_base: *mut c_void,
    pub image_selector: u32,
    pub image_size: usize,
    pub image_section_number: u32,
}

/// `RTL_OSVERSIONINFOW`.
#[repr(C)]
pub struct OsVersionInfo {
    pub size: u32,
    pub major: u32,
    pub minor: u32,
    pub build: u32,
    pub platform: u32,
    pub service_pack: [u16; 128],
}

/// `UUID`, as `ExUuidCreate` writes it.
#[repr(C, align(4))]
pub struct Uuid(pub [u8; 16]);

// The x64 layouts of the WDK headers (ntddk.h, wdm.h), checked at compile time.
const _: () = {
    assert!(offset_of!(PsCreateNotifyInfo, flags) == 8);
    assert!(offset_of!(PsCreateNotifyInfo, parent_process_id) == 16);
    assert!(offset_of!(PsCreateNotifyInfo, creating_thread_id) == 24);
    assert!(offset_of!(PsCreateNotifyInfo, image_file_name) == 48);
    assert!(offset_of!(PsCreateNotifyInfo, command_line) == 56);
    assert!(offset_of!(PsCreateNotifyInfo, creation_status) == 64);
    assert!(offset_of!(ImageInfo, image_base) == 8);
    assert!(offset_of!(ImageInfo, image_size) == 24);
    assert!(size_of::<OsVersionInfo>() == 276);
    assert!(size_of::<PortMessage>() == 40);
};

/// The process-notify routine as the Ex and Ex2 registrations take it.
pub type CreateProcessNotifyEx =
    unsafe extern "system" fn(process: PEPROCESS, process_id: HANDLE, info: *mut PsCreateNotifyInfo);

pub type PsSetCreateProcessNotifyRoutineEx2Fn =
    unsafe extern "system" fn(notify_type: i32, routine: *mut c_void, remove: BOOLEAN) -> NTSTATUS;
pub type PsSetCreateProcessNotifyRoutineExFn =
    unsafe extern "system" fn(routine: CreateProcessNotifyEx, remove: BOOLEAN) -> NTSTATUS;
pub type PsGetProcessExitStatusFn = unsafe extern "system" fn(process: PEPROCESS) -> NTSTATUS;
pub type KeQuerySystemTimePreciseFn = unsafe extern "system" fn(current_time: *mut LARGE_INTEGER);
/// `ZwAlpcSendWaitReceivePort` (phnt `NtAlpcSendWaitReceivePort`): `flags` is a
/// `lpcmon_nt::alpc::SendKind`'s; `buffer_length` is a `PSIZE_T`.
pub type ZwAlpcSendWaitReceivePortFn = unsafe extern "system" fn(
    port: HANDLE,
    flags: u32,
    send_message: *mut PortMessage,
    send_message_attributes: *mut c_void,
    receive_message: *mut PortMessage,
    buffer_length: *mut usize,
    receive_message_attributes: *mut c_void,
    timeout: *mut LARGE_INTEGER,
) -> NTSTATUS;
pub type ZwAlpcConnectPortFn = unsafe extern "system" fn(
    port: *mut HANDLE,
    port_name: *mut UNICODE_STRING,
    object_attributes: *mut OBJECT_ATTRIBUTES,
    port_attributes: *mut AlpcPortAttributes,
    flags: u32,
    required_server_sid: *mut c_void,
    connection_message: *mut PortMessage,
    buffer_length: *mut usize,
    out_message_attributes: *mut c_void,
    in_message_attributes: *mut c_void,
    timeout: *mut LARGE_INTEGER,
) -> NTSTATUS;

#[link(name = "ntoskrnl")]
unsafe extern "system" {
    pub fn ExUuidCreate(uuid: *mut Uuid) -> NTSTATUS;

    pub fn RtlGetVersion(info: *mut OsVersionInfo) -> NTSTATUS;

    /// Used only if referencing the worker's thread object fails, to join it by handle.
    pub fn ZwWaitForSingleObject(handle: HANDLE, alertable: BOOLEAN, timeout: *mut LARGE_INTEGER)
    -> NTSTATUS;
}

/// A `UNICODE_STRING` over UTF-16 code units that outlive it. The kernel routines it is passed
/// to only read it, hence the `*mut` cast.
pub fn unicode(units: &[u16]) -> UNICODE_STRING {
    let bytes = (units.len() * 2).min(0xFFFE) as u16;
    UNICODE_STRING {
        Length: bytes,
        MaximumLength: bytes,
        Buffer: units.as_ptr().cast_mut(),
    }
}

/// `OBJECT_ATTRIBUTES` as `InitializeObjectAttributes` (a macro, so not in the bindings) fills
/// it, without a security descriptor.
pub fn object_attributes(name: *mut UNICODE_STRING, root: HANDLE, attributes: u32) -> OBJECT_ATTRIBUTES {
    OBJECT_ATTRIBUTES {
        Length: size_of::<OBJECT_ATTRIBUTES>() as u32,
        RootDirectory: root,
        ObjectName: name,
        Attributes: attributes,
        SecurityDescriptor: core::ptr::null_mut(),
        SecurityQualityOfService: core::ptr::null_mut(),
    }
}

/// Looks up an ntoskrnl export by name. PASSIVE_LEVEL only.
fn system_routine(name: &'static [u16]) -> *mut c_void {
    let mut name = unicode(name);
    // SAFETY: PASSIVE_LEVEL (DriverEntry, the only caller); `name` describes a static UTF-16
    // array that MmGetSystemRoutineAddress only reads.
    unsafe { MmGetSystemRoutineAddress(&mut name) }
}

/// Resolves an export to a function pointer of the type its prototype declares.
macro_rules! resolve {
    ($name:literal as $ty:ty) => {{
        const NAME: [u16; $name.len()] = lpcmon_protocol::kernel_events::ascii_utf16($name);
        let address = system_routine(&NAME);
        if address.is_null() {
            None
        } else {
            // SAFETY: a non-null address MmGetSystemRoutineAddress returned for this exported
            // name is that routine's entry point; `$ty` is its prototype (phnt, WDK headers),
            // and function pointers and `PVOID` have the same size.
            Some(unsafe { core::mem::transmute::<*mut c_void, $ty>(address) })
        }
    }};
}

/// The exports found at run time: the port routines the driver needs, and the ones it uses
/// when present and does without when not.
#[derive(Clone, Copy)]
pub struct Routines {
    pub alpc_connect_port: ZwAlpcConnectPortFn,
    pub alpc_send_wait_receive: ZwAlpcSendWaitReceivePortFn,
    pub set_process_notify_ex2: Option<PsSetCreateProcessNotifyRoutineEx2Fn>,
    pub set_process_notify_ex: Option<PsSetCreateProcessNotifyRoutineExFn>,
    pub process_exit_status: Option<PsGetProcessExitStatusFn>,
    pub system_time_precise: Option<KeQuerySystemTimePreciseFn>,
}

impl Routines {
    /// PASSIVE_LEVEL (DriverEntry). Fails with the name of a missing port routine.
    pub fn resolve() -> Result<Routines, &'static str> {
        Ok(Routines {
            alpc_connect_port: resolve!("ZwAlpcConnectPort" as ZwAlpcConnectPortFn)
                .ok_or("ZwAlpcConnectPort")?,
            alpc_send_wait_receive: resolve!("ZwAlpcSendWaitReceivePort" as ZwAlpcSendWaitReceivePortFn)
                .ok_or("ZwAlpcSendWaitReceivePort")?,
            set_process_notify_ex2: resolve!(
                "PsSetCreateProcessNotifyRoutineEx2" as PsSetCreateProcessNotifyRoutineEx2Fn
            ),
            set_process_notify_ex: resolve!(
                "PsSetCreateProcessNotifyRoutineEx" as PsSetCreateProcessNotifyRoutineExFn
            ),
            process_exit_status: resolve!("PsGetProcessExitStatus" as PsGetProcessExitStatusFn),
            system_time_precise: resolve!("KeQuerySystemTimePrecise" as KeQuerySystemTimePreciseFn),
        })
    }
}

/// `KUSER_SHARED_DATA`: mapped read-only at this address in every address space on x64, in
/// nonpaged memory, readable at any IRQL. `KeQueryInterruptTime` and `KeQuerySystemTime` are
/// macros over it in wdm.h, so they are not in the bindings.
const KUSER_SHARED_DATA: usize = 0xFFFF_F780_0000_0000;
const INTERRUPT_TIME: usize = KUSER_SHARED_DATA + 0x08;
const SYSTEM_TIME: usize = KUSER_SHARED_DATA + 0x14;

/// Reads a `KSYSTEM_TIME { LowPart, High1Time, High2Time }`: the kernel writes High2, then
/// LowPart, then High1, so equal high parts mean a consistent read.
fn ksystem_time(address: usize) -> u64 {
    let base = address as *const u32;
    let mut value = 0u64;
    for _ in 0..16 {
        // SAFETY: `address` is a KSYSTEM_TIME in KUSER_SHARED_DATA (see above): 4-aligned,
        // always mapped, nonpaged, read-only; any IRQL. Volatile because the kernel updates it.
        let (high1, low, high2) = unsafe {
            (
                core::ptr::read_volatile(base.add(1)),
                core::ptr::read_volatile(base),
                core::ptr::read_volatile(base.add(2)),
            )
        };
        value = (u64::from(high1) << 32) | u64::from(low);
        if high1 == high2 {
            break;
        }
    }
    value
}

/// Monotonic nanoseconds: `KeQueryInterruptTime() * 100`. Any IRQL.
pub fn interrupt_time_ns() -> u64 {
    ksystem_time(INTERRUPT_TIME).saturating_mul(100)
}

/// UTC, 100 ns units since 1601: `KeQuerySystemTimePrecise` when exported, else the
/// `KeQuerySystemTime` value (10-16 ms resolution). Any IRQL.
pub fn system_time(precise: Option<KeQuerySystemTimePreciseFn>) -> i64 {
    match precise {
        Some(query) => {
            let mut now = LARGE_INTEGER { QuadPart: 0 };
            // SAFETY: KeQuerySystemTimePrecise runs at any IRQL and writes only `now`, a local.
            unsafe { query(&mut now) };
            // SAFETY: QuadPart is the 64-bit view of the union the routine just wrote.
            unsafe { now.QuadPart }
        }
        None => ksystem_time(SYSTEM_TIME) as i64,
    }
}
