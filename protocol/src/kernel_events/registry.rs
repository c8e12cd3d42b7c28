//! The service key's `Parameters`: raw registry values in, bounded settings out.

use lpcmon_nt::PortName;

use super::events::{EventFilter, EventMask};
use super::{EVENT_SLOT_BYTES, STRING_CAP_MAX, STRING_CAP_MIN};
use crate::event::EVENT_MIN_LEN;

/// Registry value types (winnt.h).
pub mod reg {
    pub const SZ: u32 = 1;
    pub const EXPAND_SZ: u32 = 2;
    pub const DWORD: u32 = 4;
}

/// ASCII text as UTF-16 code units, at compile time. `N` must be the text's length.
pub const fn ascii_utf16<const N: usize>(text: &str) -> [u16; N] {
    let bytes = text.as_bytes();
    assert!(bytes.len() == N, "N must equal the text's length");
    let mut out = [0u16; N];
    let mut i = 0;
    while i < N {
        assert!(bytes[i].is_ascii(), "ASCII only");
        out[i] = bytes[i] as u16;
        i += 1;
    }
    out
}

/// The subkey of the service key that holds the driver's settings.
pub const PARAMETERS_KEY: [u16; 10] = ascii_utf16("Parameters");
/// REG_SZ: the port's object name.
pub const VALUE_PORT_NAME: [u16; 8] = ascii_utf16("PortName");
/// REG_DWORD: slots in the queue (rounded up to a power of two and bounded).
pub const VALUE_QUEUE_CAPACITY: [u16; 13] = ascii_utf16("QueueCapacity");
/// REG_DWORD: an [`EventMask`].
pub const VALUE_EVENT_MASK: [u16; 9] = ascii_utf16("EventMask");
/// REG_DWORD: the string cap in bytes.
pub const VALUE_STRING_CAP: [u16; 9] = ascii_utf16("StringCap");
/// REG_DWORD: 0 connects without requiring the server to run as SYSTEM.
pub const VALUE_USE_SECURE_CONNECT: [u16; 16] = ascii_utf16("UseSecureConnect");

pub const QUEUE_CAPACITY_DEFAULT: usize = 1024;
pub const QUEUE_CAPACITY_MIN: usize = 64;
/// 8192 slots of 4 KiB are 32 MiB of nonpaged pool: the most an administrator may ask for.
pub const QUEUE_CAPACITY_MAX: usize = 8192;
const _: () = assert!(QUEUE_CAPACITY_MAX.is_power_of_two() && QUEUE_CAPACITY_MIN.is_power_of_two());
const _: () = assert!(STRING_CAP_MIN <= STRING_CAP_MAX && EVENT_MIN_LEN <= EVENT_SLOT_BYTES);

/// Reads the `PortName` REG_SZ value; the name's rules are `lpcmon_nt::port_name`'s.
pub(crate) fn port_name(value: RegistryValue<'_>) -> Result<PortName, &'static str> {
    if value.value_type != reg::SZ {
        return Err("not a REG_SZ");
    }
    PortName::from_reg_sz(value.data).map_err(|e| e.reason())
}

/// A value read with `ZwQueryValueKey(KeyValuePartialInformation)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistryValue<'a> {
    pub value_type: u32,
    pub data: &'a [u8],
}

impl<'a> RegistryValue<'a> {
    /// Parses a `KEY_VALUE_PARTIAL_INFORMATION`: `TitleIndex u32 | Type u32 | DataLength u32 |
    /// Data`. `None` if the buffer is shorter than the lengths it declares.
    pub fn from_partial_information(buf: &'a [u8]) -> Option<Self> {
        let word =
            |at: usize| -> Option<u32> { Some(u32::from_le_bytes(buf.get(at..at + 4)?.try_into().ok()?)) };
        let value_type = word(4)?;
        let len = word(8)? as usize;
        let data = buf.get(12..12usize.checked_add(len)?)?;
        Some(RegistryValue { value_type, data })
    }

    pub(crate) fn dword(self) -> Result<u32, &'static str> {
        match self.data {
            [a, b, c, d] if self.value_type == reg::DWORD => Ok(u32::from_le_bytes([*a, *b, *c, *d])),
            _ => Err("not a REG_DWORD"),
        }
    }
}

/// The raw values found under `Parameters`; `None` where a value is absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RawParameters<'a> {
    pub port_name: Option<RegistryValue<'a>>,
    pub queue_capacity: Option<RegistryValue<'a>>,
    pub event_mask: Option<RegistryValue<'a>>,
    pub string_cap: Option<RegistryValue<'a>>,
    pub use_secure_connect: Option<RegistryValue<'a>>,
}

/// The driver's settings, every one bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parameters {
    pub port_name: PortName,
    pub queue_capacity: usize,
    pub filter: EventFilter,
    /// Connect with `RequiredServerSid = S-1-5-18`, so only a SYSTEM server is accepted.
    pub secure_connect: bool,
}

impl Default for Parameters {
    fn default() -> Self {
        Parameters {
            port_name: PortName::default(),
            queue_capacity: QUEUE_CAPACITY_DEFAULT,
            filter: EventFilter::default(),
            secure_connect: true,
        }
    }
}

/// A value that was present but unusable; its default was used instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    pub value: &'static str,
    pub reason: &'static str,
}

/// Every rejected value of one parse (at most one per value).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rejections {
    items: [Option<Rejection>; 5],
}

impl Rejections {
    fn push(&mut self, value: &'static str, reason: &'static str) {
        if let Some(free) = self.items.iter_mut().find(|i| i.is_none()) {
            *free = Some(Rejection { value, reason });
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = Rejection> + '_ {
        self.items.iter().flatten().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.items.iter().all(Option::is_none)
    }
}

/// Rounds up to a power of two within [`QUEUE_CAPACITY_MIN`]..=[`QUEUE_CAPACITY_MAX`].
pub fn queue_capacity(requested: u32) -> usize {
    (requested as usize)
        .clamp(QUEUE_CAPACITY_MIN, QUEUE_CAPACITY_MAX)
        .next_power_of_two()
}

/// Bounds a string cap to [`STRING_CAP_MIN`]..=[`STRING_CAP_MAX`].
pub fn string_cap(requested: u32) -> usize {
    (requested as usize).clamp(STRING_CAP_MIN, STRING_CAP_MAX)
}

impl Parameters {
    /// Decides the settings from what the registry held. Absent values take their defaults;
    /// present but unusable ones too, and are listed so the driver can log them.
    pub fn parse(raw: &RawParameters<'_>) -> (Parameters, Rejections) {
        let mut params = Parameters::default();
        let mut rejected = Rejections::default();
        if let Some(v) = raw.port_name {
            match port_name(v) {
                Ok(name) => params.port_name = name,
                Err(why) => rejected.push("PortName", why),
            }
        }
        let mut dword = |value: Option<RegistryValue<'_>>, name: &'static str| {
            value.and_then(|v| v.dword().map_err(|why| rejected.push(name, why)).ok())
        };
        if let Some(n) = dword(raw.queue_capacity, "QueueCapacity") {
            params.queue_capacity = queue_capacity(n);
        }
        if let Some(mask) = dword(raw.event_mask, "EventMask") {
            params.filter.mask = EventMask(mask);
        }
        if let Some(cap) = dword(raw.string_cap, "StringCap") {
            params.filter.string_cap = string_cap(cap);
        }
        if let Some(secure) = dword(raw.use_secure_connect, "UseSecureConnect") {
            params.secure_connect = secure != 0;
        }
        (params, rejected)
    }
}
