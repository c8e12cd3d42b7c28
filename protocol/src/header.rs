//! The common header every lpcmon message starts with, and the wire constants both the event
//! codec ([`crate::event`]) and the other messages ([`crate::message`]) build on.
//!
//! ```text
//! magic "LPCM" | version u8 | msg_type u8 | flags u16
//! ```

use crate::cursor::{Reader, Writer};
use crate::error::{DecodeError, EncodeError};

pub const MAGIC: [u8; 4] = *b"LPCM";
/// The wire version this build speaks.
pub const VERSION: u8 = 1;
/// The oldest wire version this build still accepts.
pub const MIN_VERSION: u8 = 1;
/// Bytes of the common header.
pub const COMMON_HEADER_LEN: usize = 8;
/// The largest sequence number on the wire. Decoders refuse more, so the server's `seq + 1`
/// arithmetic cannot overflow; a producer would need 2^63 events to reach it.
pub const MAX_SEQ: u64 = i64::MAX as u64;

/// The message type byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MessageType {
    Hello = 1,
    HelloReply = 2,
    Event = 3,
    Fragment = 4,
    Loss = 5,
    Heartbeat = 6,
}

impl MessageType {
    pub(crate) fn from_u8(v: u8) -> Result<Self, DecodeError> {
        Ok(match v {
            1 => Self::Hello,
            2 => Self::HelloReply,
            3 => Self::Event,
            4 => Self::Fragment,
            5 => Self::Loss,
            6 => Self::Heartbeat,
            other => return Err(DecodeError::UnknownMessageType(other)),
        })
    }
}

pub(crate) fn write_common(w: &mut Writer<'_>, ty: MessageType, version: u8) -> Result<(), EncodeError> {
    w.bytes(&MAGIC)?;
    w.u8(version)?;
    w.u8(ty as u8)?;
    w.u16(0)
}

/// Reads and checks the common header: the magic, then the version byte and the message type
/// (the flags are reserved and ignored). The caller decides which versions it accepts.
pub(crate) fn read_common(r: &mut Reader<'_>) -> Result<(u8, MessageType), DecodeError> {
    if r.bytes(4)? != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let version = r.u8()?;
    let ty = MessageType::from_u8(r.u8()?)?;
    let _flags = r.u16()?;
    Ok((version, ty))
}
