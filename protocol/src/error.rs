//! Typed errors for encoding and decoding. Decoders return these instead of panicking.

use thiserror::Error;

/// Why a received message could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("message truncated: needed {needed} more bytes, {available} available")]
    Truncated { needed: usize, available: usize },
    #[error("PORT_MESSAGE TotalLength {declared} does not match header plus data ({actual})")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("bad magic: not an lpcmon message")]
    BadMagic,
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    #[error("unknown message type {0}")]
    UnknownMessageType(u8),
    #[error("message of {len} bytes exceeds the agreed limit of {limit}")]
    MessageTooLong { len: usize, limit: usize },
    #[error("field of {len} bytes exceeds its limit of {limit}")]
    FieldTooLong { len: usize, limit: usize },
    #[error("unknown field encoding {0}")]
    UnknownEncoding(u8),
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    #[error("invalid value: {0}")]
    InvalidValue(&'static str),
    #[error("{extra} unexpected bytes after the message")]
    TrailingBytes { extra: usize },
}

/// Why a message could not be encoded into the buffer given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum EncodeError {
    #[error("buffer too small: need {needed} bytes, have {capacity}")]
    BufferTooSmall { needed: usize, capacity: usize },
    #[error("message limit {limit} is too small to carry a fragment")]
    LimitTooSmall { limit: usize },
    #[error("event of {len} bytes needs more than 65535 fragments")]
    TooManyFragments { len: usize },
}
