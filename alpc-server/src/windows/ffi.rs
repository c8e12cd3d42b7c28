//! Hand-declared ntdll port bindings and every structure lpcmon passes to the kernel (x64).
//!
//! The layouts follow phnt `ntlpcapi.h` and `shared/reference/LPC.md`; each is pinned by
//! compile-time size and offset assertions, which `cargo check --target x86_64-pc-windows-msvc`
//! evaluates on Linux too. `PORT_MESSAGE` itself is `lpcmon_protocol::PortMessage`, whose x64
//! layout the protocol crate already asserts, so the bytes the kernel writes are the bytes the
//! session code parses.
//!
//! **Why the functions are resolved at run time** (`GetProcAddress`), not linked:
//! - ntapi 0.4.3 gets several of them wrong (LPC.md): `NtAlpcConnectPort`'s BufferLength is
//!   `PULONG` there, but the x64 kernel writes a `SIZE_T`; the `LPC_*` constants are ULONG and
//!   `LPC_KERNELMODE_MESSAGE` overflows CSHORT; `LPC_CONTINUATION_REQUIRED` and most
//!   `ALPC_PORFLG_*` flags are missing. So nothing here comes from ntapi.
//! - Wine's ntdll exports none of the `NtAlpc*`/`Alpc*` functions, nor `NtRequestPort`,
//!   `NtReplyPort` or `NtReplyWaitReceivePortEx`. A load-time import of any of them keeps the
//!   whole `lpcmon.exe` from starting under wine; resolved lazily, a missing one becomes a
//!   clear `STATUS_PROCEDURE_NOT_FOUND` naming it, and everything else still runs.
//! - mingw-w64's `libntdll.a` and MSVC's `ntdll.lib` differ in which of these they list.

use std::ffi::c_void;
use std::mem::{align_of, offset_of, size_of};
use std::sync::OnceLock;

use lpcmon_protocol::PortMessage;
use lpcmon_protocol::port_message::{LPC_MAX_CONNECTION_INFO, PORT_MESSAGE_SIZE};
use windows_sys::Win32::Foundation::{HANDLE, HMODULE};
use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleW, GetProcAddress};

use crate::client::PortError;
use crate::decide::{nt_error, status};

#[cfg(not(target_pointer_width = "64"))]
compile_error!("lpcmon's port structures are declared for 64-bit Windows only (LPC.md gives x64 layouts)");

/// `NTSTATUS`: negative values are errors; 0x102 (STATUS_TIMEOUT) is a *success* code.
pub type NtStatus = i32;

/// `OBJ_CASE_INSENSITIVE` (ntdef.h): object names are looked up without case, as Windows does.
pub const OBJ_CASE_INSENSITIVE: u32 = 0x40;

/// `ALPC_PORFLG_ALLOW_LPC_REQUESTS` (phnt ntlpcapi.h; LPC.md): legacy `NtConnectPort` /
/// `ZwConnectPort` clients, such as the driver, may connect to this ALPC port.
pub const ALPC_PORFLG_ALLOW_LPC_REQUESTS: u32 = 0x0002_0000;

/// `ALPC_MSGFLG_REPLY_MESSAGE` (phnt): the message sent is the reply to a request.
pub const ALPC_MSGFLG_REPLY_MESSAGE: u32 = 0x1;
/// `ALPC_MSGFLG_RELEASE_MESSAGE` (phnt): free a received message the kernel kept for us
/// (`LPC_CONTINUATION_REQUIRED`).
pub const ALPC_MSGFLG_RELEASE_MESSAGE: u32 = 0x0001_0000;
/// `ALPC_MSGFLG_SYNC_REQUEST` (phnt): send a request and wait for its reply.
pub const ALPC_MSGFLG_SYNC_REQUEST: u32 = 0x0002_0000;

/// `ALPC_SYNC_CONNECTION` (csandker `ALPC.h`; absent from phnt, LPC.md): `NtAlpcConnectPort`
/// returns only once the server accepted or refused.
pub const ALPC_SYNC_CONNECTION: u32 = 0x0002_0000;

/// `ALPC_MESSAGE_CONTEXT_ATTRIBUTE` (phnt): the receive fills in the sender's PortContext.
pub const ALPC_MESSAGE_CONTEXT_ATTRIBUTE: u32 = 0x2000_0000;

/// `ALPC_PORT_ATTRIBUTES.MaxPoolUsage` for lpcmon's ports: the pool quota for messages queued
/// and not yet received. It bounds the kernel memory a stalled server can pin (DESIGN.md §3.2);
/// a producer that hits it gets a send error and reports the events as lost. Public samples
/// pass 0 (smss) or 0xFFFFFFFF (csandker); this bound has not been measured on Windows.
pub const MAX_POOL_USAGE: usize = 32 * 1024 * 1024;

/// `SecurityIdentification` (winnt.h `SECURITY_IMPERSONATION_LEVEL`): the server may learn who
/// the client is but never act as it.
pub const SECURITY_IDENTIFICATION: i32 = 1;
/// `SECURITY_DYNAMIC_TRACKING` (winnt.h).
pub const SECURITY_DYNAMIC_TRACKING: u8 = 1;

/// `UNICODE_STRING`, x64: 16 bytes. Lengths are in bytes, without a terminator.
#[repr(C)]
#[derive(Debug)]
pub struct UnicodeString {
    pub length: u16,
    pub maximum_length: u16,
    pub buffer: *const u16,
}

const _: () = {
    assert!(size_of::<UnicodeString>() == 16);
    assert!(offset_of!(UnicodeString, maximum_length) == 2);
    assert!(offset_of!(UnicodeString, buffer) == 8);
};

/// `OBJECT_ATTRIBUTES`, x64: 48 bytes.
#[repr(C)]
#[derive(Debug)]
pub struct ObjectAttributes {
    pub length: u32,
    pub root_directory: HANDLE,
    pub object_name: *const UnicodeString,
    pub attributes: u32,
    pub security_descriptor: *const c_void,
    pub security_quality_of_service: *const c_void,
}

const _: () = {
    assert!(size_of::<ObjectAttributes>() == 48);
    assert!(offset_of!(ObjectAttributes, root_directory) == 8);
    assert!(offset_of!(ObjectAttributes, object_name) == 16);
    assert!(offset_of!(ObjectAttributes, attributes) == 24);
    assert!(offset_of!(ObjectAttributes, security_descriptor) == 32);
    assert!(offset_of!(ObjectAttributes, security_quality_of_service) == 40);
};

impl ObjectAttributes {
    /// Attributes naming `name` (case-insensitively), with an optional security descriptor.
    pub fn new(name: &UnicodeString, security_descriptor: *const c_void) -> Self {
        ObjectAttributes {
            length: size_of::<ObjectAttributes>() as u32,
            root_directory: std::ptr::null_mut(),
            object_name: name,
            attributes: OBJ_CASE_INSENSITIVE,
            security_descriptor,
            security_quality_of_service: std::ptr::null(),
        }
    }
}

/// `SECURITY_QUALITY_OF_SERVICE`: 12 bytes, 4-aligned (LPC.md: it sits at offset 4 of
/// `ALPC_PORT_ATTRIBUTES`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SecurityQualityOfService {
    pub length: u32,
    pub impersonation_level: i32,
    pub context_tracking_mode: u8,
    pub effective_only: u8,
}

const _: () = {
    assert!(size_of::<SecurityQualityOfService>() == 12);
    assert!(align_of::<SecurityQualityOfService>() == 4);
    assert!(offset_of!(SecurityQualityOfService, context_tracking_mode) == 8);
    assert!(offset_of!(SecurityQualityOfService, effective_only) == 9);
};

impl SecurityQualityOfService {
    /// What every lpcmon port and client asks for: identification only.
    pub fn identification() -> Self {
        SecurityQualityOfService {
            length: size_of::<SecurityQualityOfService>() as u32,
            impersonation_level: SECURITY_IDENTIFICATION,
            context_tracking_mode: SECURITY_DYNAMIC_TRACKING,
            effective_only: 1,
        }
    }
}

/// `ALPC_PORT_ATTRIBUTES`, x64: 72 bytes (LPC.md table).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct AlpcPortAttributes {
    pub flags: u32,
    pub security_qos: SecurityQualityOfService,
    pub max_message_length: usize,
    pub memory_bandwidth: usize,
    pub max_pool_usage: usize,
    pub max_section_size: usize,
    pub max_view_size: usize,
    pub max_total_section_size: usize,
    pub dup_object_types: u32,
    pub reserved: u32,
}

const _: () = {
    assert!(size_of::<AlpcPortAttributes>() == 72);
    assert!(offset_of!(AlpcPortAttributes, flags) == 0);
    assert!(offset_of!(AlpcPortAttributes, security_qos) == 4);
    assert!(offset_of!(AlpcPortAttributes, max_message_length) == 16);
    assert!(offset_of!(AlpcPortAttributes, memory_bandwidth) == 24);
    assert!(offset_of!(AlpcPortAttributes, max_pool_usage) == 32);
    assert!(offset_of!(AlpcPortAttributes, max_section_size) == 40);
    assert!(offset_of!(AlpcPortAttributes, max_view_size) == 48);
    assert!(offset_of!(AlpcPortAttributes, max_total_section_size) == 56);
    assert!(offset_of!(AlpcPortAttributes, dup_object_types) == 64);
    assert!(offset_of!(AlpcPortAttributes, reserved) == 68);
};

impl AlpcPortAttributes {
    /// Attributes for a port carrying messages of at most `max_message_length` bytes in total,
    /// with no sections, views or handle passing.
    pub fn new(flags: u32, max_message_length: usize, max_pool_usage: usize) -> Self {
        AlpcPortAttributes {
            flags,
            security_qos: SecurityQualityOfService::identification(),
            max_message_length,
            memory_bandwidth: 0,
            max_pool_usage,
            max_section_size: 0,
            max_view_size: 0,
            max_total_section_size: 0,
            dup_object_types: 0,
            reserved: 0,
        }
    }
}

/// `ALPC_MESSAGE_ATTRIBUTES`: the 8-byte header in front of the attribute blobs.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct AlpcMessageAttributes {
    pub allocated_attributes: u32,
    pub valid_attributes: u32,
}

const _: () = assert!(size_of::<AlpcMessageAttributes>() == 8);

/// `ALPC_CONTEXT_ATTR` (phnt), x64: 32 bytes with its tail padding.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct AlpcContextAttr {
    pub port_context: *mut c_void,
    pub message_context: *mut c_void,
    pub sequence: u32,
    pub message_id: u32,
    pub callback_id: u32,
}

const _: () = {
    assert!(size_of::<AlpcContextAttr>() == 32);
    assert!(offset_of!(AlpcContextAttr, sequence) == 16);
    assert!(offset_of!(AlpcContextAttr, callback_id) == 24);
};

/// A `PORT_MESSAGE` followed by up to `LPC_MAX_CONNECTION_INFO` (128) bytes: the connection
/// message of `NtAlpcConnectPort` and the answer passed to `Nt(Alpc)AcceptConnectPort`.
#[repr(C, align(8))]
#[derive(Debug, Clone, Copy)]
pub struct ConnectionMessage {
    pub header: PortMessage,
    pub data: [u8; LPC_MAX_CONNECTION_INFO],
}

const _: () = {
    assert!(size_of::<ConnectionMessage>() == PORT_MESSAGE_SIZE + LPC_MAX_CONNECTION_INFO);
    assert!(offset_of!(ConnectionMessage, data) == PORT_MESSAGE_SIZE);
};

impl ConnectionMessage {
    /// `header` with `data` behind it; `data` is cut to 128 bytes, and the header's lengths
    /// must already say how much of it counts.
    pub fn new(header: PortMessage, data: &[u8]) -> Self {
        let mut msg = ConnectionMessage {
            header,
            data: [0; LPC_MAX_CONNECTION_INFO],
        };
        let len = data.len().min(LPC_MAX_CONNECTION_INFO);
        msg.data[..len].copy_from_slice(&data[..len]);
        msg
    }

    /// The data the header says the message carries.
    pub fn payload(&self) -> &[u8] {
        &self.data[..usize::from(self.header.data_length).min(LPC_MAX_CONNECTION_INFO)]
    }
}

/// A SID with one sub-authority, laid out as `SID` in winnt.h.
#[repr(C, align(4))]
#[derive(Debug)]
pub struct Sid1 {
    pub revision: u8,
    pub sub_authority_count: u8,
    pub identifier_authority: [u8; 6],
    pub sub_authority: [u32; 1],
}

const _: () = assert!(size_of::<Sid1>() == 12);

/// S-1-5-18, LocalSystem: the `RequiredServerSid` that makes a client refuse a port some
/// other account created under lpcmon's name (`STATUS_SERVER_SID_MISMATCH`).
pub static LOCAL_SYSTEM_SID: Sid1 = Sid1 {
    revision: 1,
    sub_authority_count: 1,
    identifier_authority: [0, 0, 0, 0, 0, 5],
    sub_authority: [18],
};

/// A port name as UTF-16 for a `UNICODE_STRING`.
#[derive(Debug)]
pub struct NtName {
    wide: Vec<u16>,
}

impl NtName {
    pub fn new(name: &str) -> Result<Self, PortError> {
        let wide: Vec<u16> = name.encode_utf16().collect();
        if wide.is_empty() || wide.contains(&0) || wide.len() * 2 > usize::from(u16::MAX) - 2 {
            return Err(PortError::Io {
                call: "port name",
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{name:?} is not a valid object name"),
                ),
            });
        }
        Ok(NtName { wide })
    }

    /// Borrows the name; the result must not outlive `self`.
    pub fn unicode_string(&self) -> UnicodeString {
        let bytes = (self.wide.len() * 2) as u16;
        UnicodeString {
            length: bytes,
            maximum_length: bytes,
            buffer: self.wide.as_ptr(),
        }
    }
}

/// A relative NT timeout: negative, in 100 ns units (`LARGE_INTEGER`).
pub fn relative_timeout(timeout: std::time::Duration) -> i64 {
    let ticks = timeout.as_nanos() / 100;
    -(i64::try_from(ticks).unwrap_or(i64::MAX).max(1))
}

/// An 8-aligned buffer for one port message: a `PORT_MESSAGE` and its data.
#[derive(Debug)]
pub struct MessageBuffer {
    words: Box<[u64]>,
}

impl MessageBuffer {
    /// A zeroed buffer of at least `bytes` bytes, and never less than a header.
    pub fn new(bytes: usize) -> Self {
        let words = bytes.max(PORT_MESSAGE_SIZE).div_ceil(8);
        MessageBuffer {
            words: vec![0u64; words].into_boxed_slice(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.words.len() * 8
    }

    /// The buffer's start, for the kernel to write a message into.
    pub fn as_mut_ptr(&mut self) -> *mut PortMessage {
        self.words.as_mut_ptr().cast()
    }

    /// The buffer's start, for the kernel to read a message from.
    pub fn as_ptr(&self) -> *const PortMessage {
        self.words.as_ptr().cast()
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the pointer and length cover exactly the boxed u64 slice, u8 has no alignment
        // requirement, every byte of a u64 is initialised, and the borrow of `self` keeps the
        // slice alive and unmodified for the returned lifetime.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.capacity()) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        let len = self.capacity();
        // SAFETY: as in `bytes`, and the exclusive borrow of `self` makes this the only access.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), len) }
    }

    /// Writes `header` and `data` for the kernel to send. The header's lengths must match.
    pub fn write(&mut self, header: &PortMessage, data: &[u8]) -> Result<(), PortError> {
        let capacity = self.capacity();
        let too_long = || PortError::TooLong {
            len: data.len(),
            limit: capacity - PORT_MESSAGE_SIZE,
        };
        let bytes = self.bytes_mut();
        header.write(bytes).map_err(|_| too_long())?;
        bytes
            .get_mut(PORT_MESSAGE_SIZE..PORT_MESSAGE_SIZE + data.len())
            .ok_or_else(too_long)?
            .copy_from_slice(data);
        Ok(())
    }
}

impl AsRef<[u8]> for MessageBuffer {
    fn as_ref(&self) -> &[u8] {
        self.bytes()
    }
}

/// A receive-attribute buffer that asks ALPC for the sender's PortContext only.
#[derive(Debug)]
pub struct ContextAttributes {
    words: Box<[u64]>,
    get_attribute: AlpcGetMessageAttributeFn,
}

impl ContextAttributes {
    pub fn new(api: &Ntdll) -> Result<Self, PortError> {
        let header_size = api.AlpcGetHeaderSize()?;
        let get_attribute = api.AlpcGetMessageAttribute()?;
        // SAFETY: AlpcGetHeaderSize only computes a size from its flags argument.
        let required = unsafe { header_size(ALPC_MESSAGE_CONTEXT_ATTRIBUTE) } as usize;
        let bytes = required.max(size_of::<AlpcMessageAttributes>() + size_of::<AlpcContextAttr>());
        let mut attrs = ContextAttributes {
            words: vec![0u64; bytes.div_ceil(8)].into_boxed_slice(),
            get_attribute,
        };
        let header = attrs.header_mut();
        header.allocated_attributes = ALPC_MESSAGE_CONTEXT_ATTRIBUTE;
        header.valid_attributes = 0;
        Ok(attrs)
    }

    fn header_mut(&mut self) -> &mut AlpcMessageAttributes {
        // SAFETY: the buffer is at least 8 bytes, 8-aligned and initialised, and
        // AlpcMessageAttributes is two u32s, valid for any bits.
        unsafe { &mut *self.words.as_mut_ptr().cast::<AlpcMessageAttributes>() }
    }

    /// Marks every attribute invalid before a receive, so a stale context is never read.
    pub fn as_mut_ptr(&mut self) -> *mut AlpcMessageAttributes {
        self.header_mut().valid_attributes = 0;
        self.words.as_mut_ptr().cast()
    }

    /// The PortContext of the message just received, or 0 if the kernel gave none (messages
    /// on the connection port itself, such as connection requests).
    pub fn port_context(&mut self) -> usize {
        if self.header_mut().valid_attributes & ALPC_MESSAGE_CONTEXT_ATTRIBUTE == 0 {
            return 0;
        }
        let buffer = self.words.as_mut_ptr().cast::<AlpcMessageAttributes>();
        // SAFETY: the buffer was sized by AlpcGetHeaderSize for the context attribute and
        // marked allocated for it; AlpcGetMessageAttribute returns a pointer into it (or NULL).
        let attr = unsafe { (self.get_attribute)(buffer, ALPC_MESSAGE_CONTEXT_ATTRIBUTE) };
        if attr.is_null() {
            return 0;
        }
        // SAFETY: a non-null result points at an ALPC_CONTEXT_ATTR inside our buffer, which the
        // kernel just filled; read_unaligned avoids assuming its alignment.
        unsafe { std::ptr::read_unaligned(attr.cast::<AlpcContextAttr>()) }
            .port_context
            .addr()
    }
}

/// Declares ntdll's functions as a table of optional function pointers, each with an accessor
/// that returns it or `STATUS_PROCEDURE_NOT_FOUND` naming it.
macro_rules! ntdll_functions {
    ($(
        $(#[$doc:meta])*
        fn $name:ident / $alias:ident ($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty;
    )*) => {
        $(
            $(#[$doc])*
            pub type $alias = unsafe extern "system" fn($($arg: $ty),*) -> $ret;
        )*

        /// ntdll's port functions, resolved once. `None` where this ntdll does not export one.
        #[allow(non_snake_case)]
        pub struct Ntdll {
            $($name: Option<$alias>,)*
        }

        #[allow(non_snake_case)]
        impl Ntdll {
            fn resolve(module: HMODULE) -> Self {
                Ntdll {
                    $($name: lookup(module, concat!(stringify!($name), "\0")).map(|f| {
                        // SAFETY: GetProcAddress returned this export of ntdll under this name;
                        // its prototype is the one declared above (phnt ntlpcapi.h), and a
                        // function pointer to function pointer transmute keeps the address.
                        unsafe {
                            std::mem::transmute::<unsafe extern "system" fn() -> isize, $alias>(f)
                        }
                    }),)*
                }
            }

            $(
                pub fn $name(&self) -> Result<$alias, PortError> {
                    self.$name.ok_or_else(|| {
                        nt_error(concat!("resolving ntdll!", stringify!($name)), status::PROCEDURE_NOT_FOUND)
                    })
                }
            )*
        }
    };
}

fn lookup(module: HMODULE, name: &'static str) -> Option<unsafe extern "system" fn() -> isize> {
    if module.is_null() {
        return None;
    }
    debug_assert!(name.ends_with('\0'));
    // SAFETY: `module` is ntdll's handle, which stays loaded for the life of the process, and
    // `name` is a NUL-terminated ASCII string.
    unsafe { GetProcAddress(module, name.as_ptr()) }
}

ntdll_functions! {
    /// `NtCreatePort` (phnt ntlpcapi.h; LPC.md "Prototypes").
    fn NtCreatePort / NtCreatePortFn(
        port_handle: *mut HANDLE,
        object_attributes: *const ObjectAttributes,
        max_connection_info_length: u32,
        max_message_length: u32,
        max_pool_usage: u32,
    ) -> NtStatus;
    /// `NtConnectPort` (phnt). The views are unused and passed as NULL.
    fn NtConnectPort / NtConnectPortFn(
        port_handle: *mut HANDLE,
        port_name: *const UnicodeString,
        security_qos: *const SecurityQualityOfService,
        client_view: *mut c_void,
        server_view: *mut c_void,
        max_message_length: *mut u32,
        connection_information: *mut c_void,
        connection_information_length: *mut u32,
    ) -> NtStatus;
    /// `NtSecureConnectPort` (phnt): `NtConnectPort` with `RequiredServerSid` after ClientView.
    fn NtSecureConnectPort / NtSecureConnectPortFn(
        port_handle: *mut HANDLE,
        port_name: *const UnicodeString,
        security_qos: *const SecurityQualityOfService,
        client_view: *mut c_void,
        required_server_sid: *const c_void,
        server_view: *mut c_void,
        max_message_length: *mut u32,
        connection_information: *mut c_void,
        connection_information_length: *mut u32,
    ) -> NtStatus;
    /// `NtAcceptConnectPort` (phnt). `accept_connection` is a BOOLEAN.
    fn NtAcceptConnectPort / NtAcceptConnectPortFn(
        port_handle: *mut HANDLE,
        port_context: *mut c_void,
        connection_request: *const PortMessage,
        accept_connection: u8,
        server_view: *mut c_void,
        client_view: *mut c_void,
    ) -> NtStatus;
    /// `NtCompleteConnectPort` (phnt).
    fn NtCompleteConnectPort / NtCompleteConnectPortFn(port_handle: HANDLE) -> NtStatus;
    /// `NtRequestPort` (phnt): a datagram. Not exported by wine.
    fn NtRequestPort / NtRequestPortFn(port_handle: HANDLE, request_message: *const PortMessage) -> NtStatus;
    /// `NtRequestWaitReplyPort` (phnt).
    fn NtRequestWaitReplyPort / NtRequestWaitReplyPortFn(
        port_handle: HANDLE,
        request_message: *const PortMessage,
        reply_message: *mut PortMessage,
    ) -> NtStatus;
    /// `NtReplyPort` (phnt). Not exported by wine.
    fn NtReplyPort / NtReplyPortFn(port_handle: HANDLE, reply_message: *const PortMessage) -> NtStatus;
    /// `NtReplyWaitReceivePortEx` (phnt): `NtReplyWaitReceivePort` plus a timeout, which the
    /// legacy loop needs to notice a stop. Not exported by wine.
    fn NtReplyWaitReceivePortEx / NtReplyWaitReceivePortExFn(
        port_handle: HANDLE,
        port_context: *mut *mut c_void,
        reply_message: *const PortMessage,
        receive_message: *mut PortMessage,
        timeout: *const i64,
    ) -> NtStatus;
    /// `NtAlpcCreatePort` (phnt).
    fn NtAlpcCreatePort / NtAlpcCreatePortFn(
        port_handle: *mut HANDLE,
        object_attributes: *const ObjectAttributes,
        port_attributes: *const AlpcPortAttributes,
    ) -> NtStatus;
    /// `NtAlpcDisconnectPort` (phnt).
    fn NtAlpcDisconnectPort / NtAlpcDisconnectPortFn(port_handle: HANDLE, flags: u32) -> NtStatus;
    /// `NtAlpcConnectPort` (LPC.md). `buffer_length` is a `PSIZE_T`: ntapi 0.4.3 and older phnt
    /// say `PULONG`, and on x64 the kernel then writes 8 bytes into a 4-byte variable.
    fn NtAlpcConnectPort / NtAlpcConnectPortFn(
        port_handle: *mut HANDLE,
        port_name: *const UnicodeString,
        object_attributes: *const ObjectAttributes,
        port_attributes: *const AlpcPortAttributes,
        flags: u32,
        required_server_sid: *const c_void,
        connection_message: *mut PortMessage,
        buffer_length: *mut usize,
        out_message_attributes: *mut AlpcMessageAttributes,
        in_message_attributes: *mut AlpcMessageAttributes,
        timeout: *const i64,
    ) -> NtStatus;
    /// `NtAlpcAcceptConnectPort` (phnt). `accept_connection` is a BOOLEAN.
    fn NtAlpcAcceptConnectPort / NtAlpcAcceptConnectPortFn(
        port_handle: *mut HANDLE,
        connection_port_handle: HANDLE,
        flags: u32,
        object_attributes: *const ObjectAttributes,
        port_attributes: *const AlpcPortAttributes,
        port_context: *mut c_void,
        connection_request: *const PortMessage,
        connection_message_attributes: *mut AlpcMessageAttributes,
        accept_connection: u8,
    ) -> NtStatus;
    /// `NtAlpcSendWaitReceivePort` (phnt). `buffer_length` is a `PSIZE_T`.
    fn NtAlpcSendWaitReceivePort / NtAlpcSendWaitReceivePortFn(
        port_handle: HANDLE,
        flags: u32,
        send_message: *const PortMessage,
        send_message_attributes: *mut AlpcMessageAttributes,
        receive_message: *mut PortMessage,
        buffer_length: *mut usize,
        receive_message_attributes: *mut AlpcMessageAttributes,
        timeout: *const i64,
    ) -> NtStatus;
    /// `AlpcMaxAllowedMessageLength` (phnt): the largest total message ALPC allows.
    fn AlpcMaxAllowedMessageLength / AlpcMaxAllowedMessageLengthFn() -> u32;
    /// `AlpcGetHeaderSize` (phnt): bytes of an attribute buffer for these attribute flags.
    fn AlpcGetHeaderSize / AlpcGetHeaderSizeFn(flags: u32) -> u32;
    /// `AlpcGetMessageAttribute` (phnt): where one attribute sits in an attribute buffer.
    fn AlpcGetMessageAttribute / AlpcGetMessageAttributeFn(
        buffer: *mut AlpcMessageAttributes,
        attribute_flag: u32,
    ) -> *mut c_void;
}

impl std::fmt::Debug for Ntdll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ntdll { .. }")
    }
}

/// ntdll's port functions, resolved on first use.
pub fn ntdll() -> &'static Ntdll {
    static NTDLL: OnceLock<Ntdll> = OnceLock::new();
    NTDLL.get_or_init(|| {
        let name: Vec<u16> = "ntdll.dll\0".encode_utf16().collect();
        // SAFETY: `name` is a NUL-terminated UTF-16 string; ntdll is mapped into every
        // process, so the handle needs no reference counting.
        let module = unsafe { GetModuleHandleW(name.as_ptr()) };
        Ntdll::resolve(module)
    })
}

/// Turns an NTSTATUS into a `Result`, treating every non-error code (including STATUS_TIMEOUT,
/// which callers that wait check for first) as success.
pub fn check(call: &'static str, status: NtStatus) -> Result<(), PortError> {
    if status >= 0 {
        Ok(())
    } else {
        Err(nt_error(call, status as u32))
    }
}
