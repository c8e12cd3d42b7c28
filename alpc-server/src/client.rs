//! The client side of a port: what a user-mode producer (the Linux sensor, the load generator,
//! a research experiment) uses to reach the server, whatever the transport.

use std::time::Duration;

use lpcmon_protocol::{HelloReply, Message};

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

/// An established connection to a port server.
pub trait PortConnection: Send {
    /// The largest message (data bytes) this connection may carry, as agreed in the handshake.
    fn max_message(&self) -> usize;
    /// Sends one message as a datagram. Must not wait for the server to process it.
    fn send(&mut self, data: &[u8]) -> Result<(), PortError>;
    /// Sends one message as a request and waits for the server's reply (the fallback path of a
    /// driver without `ZwRequestPort`, and a research mode for measuring round trips).
    fn request(&mut self, data: &[u8]) -> Result<(), PortError>;
}

/// Reads the server's answer to a Hello: the agreed message limit, or why it refused.
pub fn read_hello_reply(reply: &[u8]) -> Result<usize, PortError> {
    match Message::decode(reply, reply.len()) {
        Ok(Message::HelloReply(HelloReply::Accept { max_message, .. })) => Ok(max_message as usize),
        Ok(Message::HelloReply(HelloReply::Refuse { reason, text, .. })) => Err(PortError::Refused {
            reason: reason.name(),
            text: text.to_owned(),
        }),
        Ok(_) => Err(PortError::BadReply(lpcmon_protocol::DecodeError::InvalidValue(
            "expected a HelloReply",
        ))),
        Err(e) => Err(PortError::BadReply(e)),
    }
}

/// Connects to the lpcmon port named `port` (a socket path on Unix, a port name on Windows),
/// sending `hello` as the handshake and waiting at most `timeout` for the answer.
pub fn connect_port(
    port: &str,
    hello: &[u8],
    timeout: Duration,
) -> Result<Box<dyn PortConnection>, PortError> {
    #[cfg(unix)]
    {
        let conn = crate::unix::UnixPortConnection::connect(std::path::Path::new(port), hello, timeout)?;
        Ok(Box::new(conn))
    }
    #[cfg(windows)]
    {
        let options = crate::windows::client::ClientOptions {
            connect_timeout: timeout,
            ..Default::default()
        };
        crate::windows::client::connect(port, hello, &options)
    }
}
