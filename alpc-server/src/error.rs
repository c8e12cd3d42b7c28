//! [`PortError`]: why a port operation failed, on every OS.

use std::time::Duration;

/// Why a port operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("port {port} does not exist (is the server running?)")]
    NotFound { port: String },
    #[error("the server refused the connection: {reason} ({text})")]
    Refused { reason: &'static str, text: String },
    #[error("the server's handshake reply was malformed: {0}")]
    BadReply(lpcmon_protocol::DecodeError),
    #[error("the port was closed by the server")]
    Closed,
    #[error("message of {len} bytes exceeds the port's limit of {limit}")]
    TooLong { len: usize, limit: usize },
    #[error("{0} is not supported")]
    Unsupported(&'static str),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("{call} failed: {source}")]
    Io {
        call: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// An NTSTATUS from a native port call, with its symbolic name where known.
    #[error("{call} failed with NTSTATUS {status:#010X} ({name})")]
    NtStatus {
        call: &'static str,
        status: u32,
        name: &'static str,
    },
}
