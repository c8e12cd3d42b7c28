//! The port's object name: the default, and the one validation every side applies.
//!
//! The server (`lpcmon serve --port`), the user-mode clients and the driver (registry value
//! `PortName`) all accept a name only if it is an absolute object name of at most
//! [`PORT_NAME_MAX_UNITS`] UTF-16 code units, without NUL, and not under `\RPC Control`, a
//! directory in which every user may create objects, so a squatter could own the name first.

/// The port lpcmon's server creates and its producers connect to unless told otherwise. It
/// lives in the root of the object namespace, where only administrators and SYSTEM may create
/// objects.
pub const DEFAULT_PORT_NAME: &str = r"\LpcMonEventPort";

/// The longest port name, in UTF-16 code units. NT allows up to 32767 (a `UNICODE_STRING`
/// length is a byte count in a `u16`); 256 keeps the driver's inline copy small and is far
/// beyond any real object path.
pub const PORT_NAME_MAX_UNITS: usize = 256;

/// Why a port name is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PortNameError {
    #[error("the port name is empty")]
    Empty,
    #[error("the port name is longer than 256 characters")]
    TooLong,
    #[error(r"a port name is an absolute object name such as \LpcMonEventPort")]
    NotAbsolute,
    #[error("a port name cannot contain NUL")]
    ContainsNul,
    #[error(r"ports under \RPC Control can be squatted by any user; choose another name")]
    UnderRpcControl,
    #[error("a registry port name must be a REG_SZ of UTF-16 code units")]
    NotAString,
}

impl PortNameError {
    /// The reason as a static string, for a kernel log line.
    pub const fn reason(self) -> &'static str {
        match self {
            PortNameError::Empty => "empty",
            PortNameError::TooLong => "longer than 256 characters",
            PortNameError::NotAbsolute => r"not an absolute object name (must start with \)",
            PortNameError::ContainsNul => "contains a NUL character",
            PortNameError::UnderRpcControl => r"under \RPC Control, where any process can squat a name",
            PortNameError::NotAString => "not a REG_SZ of UTF-16 code units",
        }
    }
}

/// A validated port name, held inline (no allocation) so the driver can keep it after the
/// registry buffer is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortName {
    units: [u16; PORT_NAME_MAX_UNITS],
    len: usize,
}

impl Default for PortName {
    fn default() -> Self {
        match PortName::parse(DEFAULT_PORT_NAME) {
            Ok(name) => name,
            Err(_) => unreachable!("the default port name is valid (tested)"),
        }
    }
}

impl PortName {
    /// Validates a name given as text.
    pub fn parse(name: &str) -> Result<Self, PortNameError> {
        let mut units = [0u16; PORT_NAME_MAX_UNITS];
        let mut len = 0;
        for unit in name.encode_utf16() {
            if len == PORT_NAME_MAX_UNITS {
                return Err(PortNameError::TooLong);
            }
            units[len] = unit;
            len += 1;
        }
        Self::from_units(&units[..len])
    }

    /// Validates a name given as UTF-16 code units (trailing NULs of a REG_SZ are ignored).
    pub fn from_units(units: &[u16]) -> Result<Self, PortNameError> {
        let end = units.iter().rposition(|&u| u != 0).map_or(0, |i| i + 1);
        let units = &units[..end];
        if units.is_empty() {
            return Err(PortNameError::Empty);
        }
        if units.len() > PORT_NAME_MAX_UNITS {
            return Err(PortNameError::TooLong);
        }
        if units[0] != u16::from(b'\\') || units.len() < 2 {
            return Err(PortNameError::NotAbsolute);
        }
        if units.contains(&0) {
            return Err(PortNameError::ContainsNul);
        }
        if under_rpc_control(units) {
            return Err(PortNameError::UnderRpcControl);
        }
        let mut out = [0u16; PORT_NAME_MAX_UNITS];
        out[..units.len()].copy_from_slice(units);
        Ok(PortName {
            units: out,
            len: units.len(),
        })
    }

    /// Validates the data of a REG_SZ value: little-endian UTF-16 with its terminator.
    pub fn from_reg_sz(data: &[u8]) -> Result<Self, PortNameError> {
        if data.len() % 2 != 0 {
            return Err(PortNameError::NotAString);
        }
        let mut units = [0u16; PORT_NAME_MAX_UNITS];
        let mut n = 0;
        for pair in data.chunks_exact(2) {
            let unit = u16::from_le_bytes([pair[0], pair[1]]);
            if n == units.len() {
                // Only trailing NULs may follow the longest allowed name.
                if unit != 0 {
                    return Err(PortNameError::TooLong);
                }
                continue;
            }
            units[n] = unit;
            n += 1;
        }
        Self::from_units(&units[..n])
    }

    pub fn units(&self) -> &[u16] {
        &self.units[..self.len]
    }

    /// `UNICODE_STRING.Length`: bytes, without a terminator.
    pub fn byte_len(&self) -> u16 {
        (self.len * 2) as u16
    }
}

impl core::fmt::Display for PortName {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for c in char::decode_utf16(self.units().iter().copied()) {
            core::fmt::Write::write_char(f, c.unwrap_or(char::REPLACEMENT_CHARACTER))?;
        }
        Ok(())
    }
}

/// `\RPC Control` itself or anything under it, compared without case as the object manager does.
fn under_rpc_control(units: &[u16]) -> bool {
    const DIR: &[u8] = br"\rpc control";
    let lower = |u: u16| {
        if (u16::from(b'A')..=u16::from(b'Z')).contains(&u) {
            u + 32
        } else {
            u
        }
    };
    units.len() >= DIR.len()
        && units.iter().zip(DIR).all(|(&u, &b)| lower(u) == u16::from(b))
        && (units.len() == DIR.len() || units[DIR.len()] == u16::from(b'\\'))
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::format;
    use std::string::ToString;
    use std::vec::Vec;

    fn reg_sz(s: &str) -> Vec<u8> {
        s.encode_utf16().chain([0]).flat_map(u16::to_le_bytes).collect()
    }

    #[test]
    fn the_default_is_valid_and_round_trips() {
        let name = PortName::default();
        assert_eq!(name.to_string(), DEFAULT_PORT_NAME);
        assert_eq!(name.byte_len(), 32);
    }

    #[test]
    fn text_and_registry_forms_agree() {
        for name in [r"\BaseNamedObjects\lpcmon", r"\x", r"\RPC Controls\ok"] {
            assert_eq!(
                PortName::parse(name),
                PortName::from_reg_sz(&reg_sz(name)),
                "{name}"
            );
            assert!(PortName::parse(name).is_ok(), "{name}");
        }
        let bad: [(&str, PortNameError); 7] = [
            ("", PortNameError::Empty),
            ("LpcMonEventPort", PortNameError::NotAbsolute),
            (r"\", PortNameError::NotAbsolute),
            (r"\RPC Control\lpcmon", PortNameError::UnderRpcControl),
            (r"\rpc CONTROL\lpcmon", PortNameError::UnderRpcControl),
            (r"\RPC Control", PortNameError::UnderRpcControl),
            ("\\a\0b", PortNameError::ContainsNul),
        ];
        for (name, why) in bad {
            assert_eq!(PortName::parse(name), Err(why), "{name:?}");
            assert_eq!(PortName::from_reg_sz(&reg_sz(name)), Err(why), "{name:?}");
        }
    }

    #[test]
    fn one_length_limit_for_every_form() {
        let longest = format!(r"\{}", "y".repeat(PORT_NAME_MAX_UNITS - 1));
        assert_eq!(
            PortName::parse(&longest).unwrap().units().len(),
            PORT_NAME_MAX_UNITS
        );
        assert_eq!(
            PortName::from_reg_sz(&reg_sz(&longest)).unwrap().units().len(),
            256
        );
        let too_long = format!(r"\{}", "y".repeat(PORT_NAME_MAX_UNITS));
        assert_eq!(PortName::parse(&too_long), Err(PortNameError::TooLong));
        assert_eq!(
            PortName::from_reg_sz(&reg_sz(&too_long)),
            Err(PortNameError::TooLong)
        );
        assert_eq!(
            PortName::from_reg_sz(&[b'\\', 0, b'a']),
            Err(PortNameError::NotAString)
        );
    }
}
