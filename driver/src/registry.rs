//! Reads the service key's `Parameters` subkey. The kernel calls produce raw values; what they
//! mean, and every bound on them, is decided by `kernel_events::Parameters::parse` (tested on
//! Linux).

use core::ptr;

use lpcmon_nt::port_name::PORT_NAME_MAX_UNITS;
use lpcmon_nt::status;
use lpcmon_protocol::kernel_events::{
    PARAMETERS_KEY, Parameters, RawParameters, RegistryValue, Rejections, VALUE_EVENT_MASK, VALUE_PORT_NAME,
    VALUE_QUEUE_CAPACITY, VALUE_STRING_CAP, VALUE_USE_SECURE_CONNECT,
};
use wdk::println;
use wdk_sys::_KEY_VALUE_INFORMATION_CLASS::KeyValuePartialInformation;
use wdk_sys::ntddk::{ZwClose, ZwOpenKey, ZwQueryValueKey};
use wdk_sys::{HANDLE, NT_SUCCESS, PCUNICODE_STRING};

use crate::ffi::{KEY_READ, OBJ_CASE_INSENSITIVE, OBJ_KERNEL_HANDLE, object_attributes, unicode};

/// `KEY_VALUE_PARTIAL_INFORMATION` header: TitleIndex, Type, DataLength.
const PARTIAL_INFO_HEADER: usize = 12;

/// Room for one value: the header, then the longest port name with its terminator.
#[repr(C, align(8))]
struct ValueBuffer([u8; PARTIAL_INFO_HEADER + 2 * (PORT_NAME_MAX_UNITS + 1)]);

impl ValueBuffer {
    const fn new() -> Self {
        ValueBuffer([0; PARTIAL_INFO_HEADER + 2 * (PORT_NAME_MAX_UNITS + 1)])
    }
}

/// An open registry key, closed when dropped.
struct Key(HANDLE);

impl Key {
    /// Opens `name` (relative to `root` when given). PASSIVE_LEVEL.
    fn open(name: *mut wdk_sys::UNICODE_STRING, root: HANDLE) -> Option<Key> {
        let mut attributes = object_attributes(name, root, OBJ_KERNEL_HANDLE | OBJ_CASE_INSENSITIVE);
        let mut handle: HANDLE = ptr::null_mut();
        // SAFETY: PASSIVE_LEVEL (DriverEntry); every pointer is to a live local or to the
        // caller's UNICODE_STRING; OBJ_KERNEL_HANDLE keeps the handle out of any user process.
        let st = unsafe { ZwOpenKey(&mut handle, KEY_READ, &mut attributes) };
        NT_SUCCESS(st).then_some(Key(handle))
    }

    /// Reads one value into `buffer`. `None` when absent or unusable (logged).
    fn value<'b>(
        &self,
        name: &'static [u16],
        label: &str,
        buffer: &'b mut ValueBuffer,
    ) -> Option<RegistryValue<'b>> {
        let mut name = unicode(name);
        let mut written = 0u32;
        // SAFETY: PASSIVE_LEVEL; the key handle is open; the kernel writes at most
        // `buffer.0.len()` bytes into `buffer`, which outlives the call.
        let st = unsafe {
            ZwQueryValueKey(
                self.0,
                &mut name,
                KeyValuePartialInformation,
                buffer.0.as_mut_ptr().cast(),
                buffer.0.len() as u32,
                &mut written,
            )
        };
        match st {
            s if NT_SUCCESS(s) => {
                let len = (written as usize).min(buffer.0.len());
                RegistryValue::from_partial_information(&buffer.0[..len])
            }
            status::OBJECT_NAME_NOT_FOUND => None,
            status::BUFFER_OVERFLOW | status::BUFFER_TOO_SMALL => {
                println!("lpcmon: registry value {label} is too long; using its default");
                None
            }
            other => {
                println!("lpcmon: reading registry value {label} failed: {other:#010x}; using its default");
                None
            }
        }
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        // SAFETY: PASSIVE_LEVEL; the handle was opened by `open` and is closed exactly once.
        let _ = unsafe { ZwClose(self.0) };
    }
}

/// Reads `<service key>\Parameters`. Absent keys and values take their defaults. PASSIVE_LEVEL.
pub fn read_parameters(registry_path: PCUNICODE_STRING) -> (Parameters, Rejections) {
    // The service key is opened first and Parameters relative to it, so no path is built.
    let Some(service) = Key::open(registry_path.cast_mut(), ptr::null_mut()) else {
        return Parameters::parse(&RawParameters::default());
    };
    let mut subkey = unicode(&PARAMETERS_KEY);
    let Some(key) = Key::open(&mut subkey, service.0) else {
        return Parameters::parse(&RawParameters::default());
    };
    let mut buffers = [
        ValueBuffer::new(),
        ValueBuffer::new(),
        ValueBuffer::new(),
        ValueBuffer::new(),
        ValueBuffer::new(),
    ];
    let [port, capacity, mask, cap, secure] = &mut buffers;
    let raw = RawParameters {
        port_name: key.value(&VALUE_PORT_NAME, "PortName", port),
        queue_capacity: key.value(&VALUE_QUEUE_CAPACITY, "QueueCapacity", capacity),
        event_mask: key.value(&VALUE_EVENT_MASK, "EventMask", mask),
        string_cap: key.value(&VALUE_STRING_CAP, "StringCap", cap),
        use_secure_connect: key.value(&VALUE_USE_SECURE_CONNECT, "UseSecureConnect", secure),
    };
    Parameters::parse(&raw)
}
