//! ntdll's port functions and the structures lpcmon passes to them (x64).
//!
//! **ntapi where it is right.** The function prototypes are ntapi 0.4's (its `func-types`
//! feature gives each as a function-pointer type), and so are `UNICODE_STRING` and
//! `OBJECT_ATTRIBUTES`. lpcmon keeps its own declarations only where ntapi is wrong or where the
//! driver needs the same one without ntapi (`lpcmon_nt`):
//! - `NtAlpcConnectPort`: ntapi declares `BufferLength` as `PULONG`; the x64 kernel writes a
//!   `SIZE_T` (8 bytes) there, so ntapi's prototype would let it overwrite 4 bytes past a
//!   `ULONG`. [`NtAlpcConnectPortFn`] takes `*mut usize`.
//! - `PORT_MESSAGE` (`lpcmon_nt::PortMessage`): ntapi's is made of C unions; lpcmon's plain
//!   struct is what the session code and the Linux tests parse. ntapi's `LPC_*` types are
//!   `ULONG`, its `LPC_KERNELMODE_MESSAGE` overflows the `CSHORT` it is declared as, and it lacks
//!   `LPC_CONTINUATION_REQUIRED` (`lpcmon_nt::lpc` has them right).
//! - `ALPC_PORT_ATTRIBUTES`, `SECURITY_QUALITY_OF_SERVICE`, `ALPC_MESSAGE_ATTRIBUTES`,
//!   `ALPC_CONTEXT_ATTR`: shared with the driver through `lpcmon_nt`; ntapi lacks most
//!   `ALPC_PORFLG_*` / `ALPC_MSGFLG_*` values.
//!
//! For each of these the assertions below check, at compile time, that lpcmon's layout and
//! ntapi's agree (size and every field offset), so a pointer to one may be passed as the other.
//!
//! **Why the functions are resolved at run time** (`GetProcAddress`), not linked: Wine's ntdll
//! exports none of the `NtAlpc*`/`Alpc*` functions, nor `NtRequestPort`, `NtReplyPort` or
//! `NtReplyWaitReceivePortEx`. A load-time import of any of them keeps the whole `lpcmon.exe`
//! from starting under wine; resolved lazily, a missing one becomes a clear
//! `STATUS_PROCEDURE_NOT_FOUND` naming it, and everything else still runs. ntapi is therefore
//! used without its `user` feature: nothing links ntdll through it.

use std::ffi::c_void;
use std::mem::{offset_of, size_of};
use std::sync::OnceLock;

use lpcmon_nt::NtStatus;
use lpcmon_nt::PortName;
use lpcmon_nt::alpc::{
    ALPC_MESSAGE_CONTEXT_ATTRIBUTE, AlpcContextAttr, AlpcMessageAttributes, AlpcPortAttributes,
};
use lpcmon_nt::port_message::PORT_MESSAGE_SIZE;
use lpcmon_nt::security::SecurityQos;
use lpcmon_nt::{PortMessage, status};
use ntapi::ntlpcapi;
use ntapi::winapi::shared::ntdef::{HANDLE, OBJ_CASE_INSENSITIVE, OBJECT_ATTRIBUTES, UNICODE_STRING};
use ntapi::winapi::um::winnt::{PSID, SECURITY_QUALITY_OF_SERVICE};
use windows_sys::Win32::Foundation::HMODULE;
use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleW, GetProcAddress};

use crate::decide::nt_error;
use crate::error::PortError;

#[cfg(not(target_pointer_width = "64"))]
compile_error!("lpcmon's port structures are declared for 64-bit Windows only");

// lpcmon_nt's layouts and ntapi's agree, field by field (x64).
const _: () = {
    use ntlpcapi::{ALPC_CONTEXT_ATTR, ALPC_MESSAGE_ATTRIBUTES, ALPC_PORT_ATTRIBUTES, PORT_MESSAGE};

    assert!(size_of::<PortMessage>() == size_of::<PORT_MESSAGE>());
    assert!(size_of::<PORT_MESSAGE>() == PORT_MESSAGE_SIZE);
    assert!(offset_of!(PORT_MESSAGE, u1) == offset_of!(PortMessage, data_length));
    assert!(offset_of!(PORT_MESSAGE, u2) == offset_of!(PortMessage, message_type));
    assert!(offset_of!(PORT_MESSAGE, u3) == offset_of!(PortMessage, client_process));
    assert!(offset_of!(PORT_MESSAGE, MessageId) == offset_of!(PortMessage, message_id));
    assert!(offset_of!(PORT_MESSAGE, u4) == offset_of!(PortMessage, client_view_size));

    assert!(size_of::<SecurityQos>() == size_of::<SECURITY_QUALITY_OF_SERVICE>());
    assert!(
        offset_of!(SECURITY_QUALITY_OF_SERVICE, ImpersonationLevel)
            == offset_of!(SecurityQos, impersonation_level)
    );
    assert!(
        offset_of!(SECURITY_QUALITY_OF_SERVICE, ContextTrackingMode)
            == offset_of!(SecurityQos, context_tracking_mode)
    );
    assert!(
        offset_of!(SECURITY_QUALITY_OF_SERVICE, EffectiveOnly) == offset_of!(SecurityQos, effective_only)
    );

    assert!(size_of::<AlpcPortAttributes>() == size_of::<ALPC_PORT_ATTRIBUTES>());
    assert!(offset_of!(ALPC_PORT_ATTRIBUTES, SecurityQos) == offset_of!(AlpcPortAttributes, security_qos));
    assert!(
        offset_of!(ALPC_PORT_ATTRIBUTES, MaxMessageLength)
            == offset_of!(AlpcPortAttributes, max_message_length)
    );
    assert!(
        offset_of!(ALPC_PORT_ATTRIBUTES, MemoryBandwidth) == offset_of!(AlpcPortAttributes, memory_bandwidth)
    );
    assert!(offset_of!(ALPC_PORT_ATTRIBUTES, MaxPoolUsage) == offset_of!(AlpcPortAttributes, max_pool_usage));
    assert!(
        offset_of!(ALPC_PORT_ATTRIBUTES, MaxSectionSize) == offset_of!(AlpcPortAttributes, max_section_size)
    );
    assert!(offset_of!(ALPC_PORT_ATTRIBUTES, MaxViewSize) == offset_of!(AlpcPortAttributes, max_view_size));
    assert!(
        offset_of!(ALPC_PORT_ATTRIBUTES, MaxTotalSectionSize)
            == offset_of!(AlpcPortAttributes, max_total_section_size)
    );
    assert!(
        offset_of!(ALPC_PORT_ATTRIBUTES, DupObjectTypes) == offset_of!(AlpcPortAttributes, dup_object_types)
    );
    assert!(offset_of!(ALPC_PORT_ATTRIBUTES, Reserved) == offset_of!(AlpcPortAttributes, reserved));

    assert!(size_of::<AlpcMessageAttributes>() == size_of::<ALPC_MESSAGE_ATTRIBUTES>());
    assert!(
        offset_of!(ALPC_MESSAGE_ATTRIBUTES, ValidAttributes)
            == offset_of!(AlpcMessageAttributes, valid_attributes)
    );

    assert!(size_of::<AlpcContextAttr>() == size_of::<ALPC_CONTEXT_ATTR>());
    assert!(offset_of!(ALPC_CONTEXT_ATTR, Sequence) == offset_of!(AlpcContextAttr, sequence));
    assert!(offset_of!(ALPC_CONTEXT_ATTR, MessageId) == offset_of!(AlpcContextAttr, message_id));
    assert!(offset_of!(ALPC_CONTEXT_ATTR, CallbackId) == offset_of!(AlpcContextAttr, callback_id));

    assert!(ntlpcapi::ALPC_MESSAGE_CONTEXT_ATTRIBUTE == ALPC_MESSAGE_CONTEXT_ATTRIBUTE);
    assert!(
        ntlpcapi::LPC_MAX_CONNECTION_INFO_SIZE as usize == lpcmon_nt::port_message::LPC_MAX_CONNECTION_INFO
    );
};

/// A `PORT_MESSAGE` pointer as ntapi's prototypes take it (the layouts agree; see above).
/// ntapi types every message pointer `*mut`; a buffer the kernel writes must come from a
/// `*mut` (or `&mut`) in the first place, which each call site's SAFETY comment states.
pub fn port_message(message: *const PortMessage) -> ntlpcapi::PPORT_MESSAGE {
    message.cast_mut().cast()
}

/// An `ALPC_PORT_ATTRIBUTES` pointer as ntapi's prototypes take it.
pub fn port_attributes(attributes: &AlpcPortAttributes) -> ntlpcapi::PALPC_PORT_ATTRIBUTES {
    std::ptr::from_ref(attributes).cast_mut().cast()
}

/// A `SECURITY_QUALITY_OF_SERVICE` pointer as ntapi's prototypes take it.
pub fn security_qos(qos: &SecurityQos) -> *mut SECURITY_QUALITY_OF_SERVICE {
    std::ptr::from_ref(qos).cast_mut().cast()
}

/// An `ALPC_MESSAGE_ATTRIBUTES` pointer as ntapi's prototypes take it.
pub fn message_attributes(attributes: *mut AlpcMessageAttributes) -> ntlpcapi::PALPC_MESSAGE_ATTRIBUTES {
    attributes.cast()
}

/// A relative NT timeout (`lpcmon_nt::timeout`) as the `PLARGE_INTEGER` the calls take.
pub fn timeout_ptr(timeout: &mut i64) -> *mut ntapi::winapi::shared::ntdef::LARGE_INTEGER {
    std::ptr::from_mut(timeout).cast()
}

/// `NtAlpcConnectPort` as the x64 kernel defines it: ntapi's prototype has
/// `BufferLength: PULONG`, but the kernel reads and writes a `SIZE_T` there.
pub type NtAlpcConnectPortFn = unsafe extern "system" fn(
    port_handle: *mut HANDLE,
    port_name: *mut UNICODE_STRING,
    object_attributes: *mut OBJECT_ATTRIBUTES,
    port_attributes: ntlpcapi::PALPC_PORT_ATTRIBUTES,
    flags: u32,
    required_server_sid: PSID,
    connection_message: ntlpcapi::PPORT_MESSAGE,
    buffer_length: *mut usize,
    out_message_attributes: ntlpcapi::PALPC_MESSAGE_ATTRIBUTES,
    in_message_attributes: ntlpcapi::PALPC_MESSAGE_ATTRIBUTES,
    timeout: *mut ntapi::winapi::shared::ntdef::LARGE_INTEGER,
) -> NtStatus;

/// `OBJECT_ATTRIBUTES` naming `name` (case-insensitively), with an optional security
/// descriptor: what `InitializeObjectAttributes` (a macro) fills in.
pub fn object_attributes(name: &mut UNICODE_STRING, security_descriptor: *const c_void) -> OBJECT_ATTRIBUTES {
    OBJECT_ATTRIBUTES {
        Length: size_of::<OBJECT_ATTRIBUTES>() as u32,
        RootDirectory: std::ptr::null_mut(),
        ObjectName: name,
        Attributes: OBJ_CASE_INSENSITIVE,
        SecurityDescriptor: security_descriptor.cast_mut(),
        SecurityQualityOfService: std::ptr::null_mut(),
    }
}

/// A validated port name (`lpcmon_nt::PortName`: the same rules as the driver's) for a
/// `UNICODE_STRING`.
#[derive(Debug)]
pub struct NtName {
    name: PortName,
}

impl NtName {
    pub fn new(name: &str) -> Result<Self, PortError> {
        let name = PortName::parse(name).map_err(|e| PortError::Io {
            call: "port name",
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{name:?}: {e}")),
        })?;
        Ok(NtName { name })
    }

    /// Borrows the name; the result must not outlive `self`. The calls only read it.
    pub fn unicode_string(&self) -> UNICODE_STRING {
        let bytes = self.name.byte_len();
        UNICODE_STRING {
            Length: bytes,
            MaximumLength: bytes,
            Buffer: self.name.units().as_ptr().cast_mut(),
        }
    }
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
    get_attribute: ntlpcapi::AlpcGetMessageAttribute,
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
        let attr =
            unsafe { (self.get_attribute)(message_attributes(buffer), ALPC_MESSAGE_CONTEXT_ATTRIBUTE) };
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

/// Declares ntdll's functions as a table of optional function pointers of the given types,
/// each with an accessor that returns it or `STATUS_PROCEDURE_NOT_FOUND` naming it.
macro_rules! ntdll_functions {
    ($(
        $(#[$doc:meta])*
        $name:ident: $ty:ty;
    )*) => {
        /// ntdll's port functions, resolved once. `None` where this ntdll does not export one.
        #[allow(non_snake_case)]
        pub struct Ntdll {
            $($name: Option<$ty>,)*
        }

        #[allow(non_snake_case)]
        impl Ntdll {
            fn resolve(module: HMODULE) -> Self {
                Ntdll {
                    $($name: lookup(module, concat!(stringify!($name), "\0")).map(|f| {
                        // SAFETY: GetProcAddress returned this export of ntdll under this name;
                        // its prototype is the type given (ntapi's, or lpcmon's where ntapi is
                        // wrong), and a function pointer to function pointer transmute keeps
                        // the address.
                        unsafe {
                            std::mem::transmute::<unsafe extern "system" fn() -> isize, $ty>(f)
                        }
                    }),)*
                }
            }

            $(
                $(#[$doc])*
                pub fn $name(&self) -> Result<$ty, PortError> {
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
    /// `NtCreatePort`. Legacy LPC: the kernel ignores `MaxConnectionInfoLength` and
    /// `MaxPoolUsage`, and fails with STATUS_INVALID_PARAMETER when `MaxMessageLength` exceeds
    /// 648 on x64 (docs/windows.md, "Legacy LPC").
    NtCreatePort: ntlpcapi::NtCreatePort;
    /// `NtConnectPort`. The views are unused and passed as NULL. No timeout.
    NtConnectPort: ntlpcapi::NtConnectPort;
    /// `NtSecureConnectPort`: `NtConnectPort` with `RequiredServerSid` after ClientView.
    NtSecureConnectPort: ntlpcapi::NtSecureConnectPort;
    /// `NtAcceptConnectPort`. `AcceptConnection` is a BOOLEAN.
    NtAcceptConnectPort: ntlpcapi::NtAcceptConnectPort;
    NtCompleteConnectPort: ntlpcapi::NtCompleteConnectPort;
    /// `NtRequestPort`: a datagram. Not exported by wine.
    NtRequestPort: ntlpcapi::NtRequestPort;
    NtRequestWaitReplyPort: ntlpcapi::NtRequestWaitReplyPort;
    /// `NtReplyPort`. Not exported by wine.
    NtReplyPort: ntlpcapi::NtReplyPort;
    /// `NtReplyWaitReceivePortEx`: `NtReplyWaitReceivePort` plus a timeout, which the legacy
    /// loop needs to notice a stop. Not exported by wine.
    NtReplyWaitReceivePortEx: ntlpcapi::NtReplyWaitReceivePortEx;
    NtAlpcCreatePort: ntlpcapi::NtAlpcCreatePort;
    NtAlpcDisconnectPort: ntlpcapi::NtAlpcDisconnectPort;
    /// `NtAlpcConnectPort`, with lpcmon's prototype: ntapi's `BufferLength` is wrong.
    NtAlpcConnectPort: NtAlpcConnectPortFn;
    /// `NtAlpcAcceptConnectPort`. `AcceptConnection` is a BOOLEAN.
    NtAlpcAcceptConnectPort: ntlpcapi::NtAlpcAcceptConnectPort;
    /// `NtAlpcSendWaitReceivePort`. `BufferLength` is a `PSIZE_T` (ntapi has it right).
    NtAlpcSendWaitReceivePort: ntlpcapi::NtAlpcSendWaitReceivePort;
    /// `AlpcMaxAllowedMessageLength`: the largest total message ALPC allows.
    AlpcMaxAllowedMessageLength: ntlpcapi::AlpcMaxAllowedMessageLength;
    /// `AlpcGetHeaderSize`: bytes of an attribute buffer for these attribute flags.
    AlpcGetHeaderSize: ntlpcapi::AlpcGetHeaderSize;
    /// `AlpcGetMessageAttribute`: where one attribute sits in an attribute buffer.
    AlpcGetMessageAttribute: ntlpcapi::AlpcGetMessageAttribute;
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
pub fn check(call: &'static str, code: NtStatus) -> Result<(), PortError> {
    if status::is_success(code) {
        Ok(())
    } else {
        Err(nt_error(call, code))
    }
}
