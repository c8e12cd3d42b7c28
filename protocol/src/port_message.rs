//! The transport frame: the x64 `PORT_MESSAGE` header and the LPC constants.
//!
//! Declared once, in `lpcmon-nt` (the NT facts the driver and the port servers share), and
//! re-exported here so the session code and the protocol's users keep their paths.

pub use lpcmon_nt::port_message::*;

impl From<FrameError> for crate::DecodeError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Truncated { needed, available } => {
                crate::DecodeError::Truncated { needed, available }
            }
            FrameError::LengthMismatch { declared, actual } => {
                crate::DecodeError::LengthMismatch { declared, actual }
            }
            FrameError::BufferTooSmall { needed, capacity } => crate::DecodeError::Truncated {
                needed: needed - capacity,
                available: capacity,
            },
        }
    }
}

impl From<FrameError> for crate::EncodeError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::BufferTooSmall { needed, capacity } => {
                crate::EncodeError::BufferTooSmall { needed, capacity }
            }
            FrameError::Truncated { needed, available } => crate::EncodeError::BufferTooSmall {
                needed: needed + available,
                capacity: available,
            },
            FrameError::LengthMismatch { declared, .. } => crate::EncodeError::BufferTooSmall {
                needed: declared,
                capacity: 0,
            },
        }
    }
}
