//! The client side of a port: what a user-mode producer (the Linux sensor, the load generator,
//! a research experiment) uses to reach the server, whatever the transport.
//!
//! This is the top of the client stack: it picks the OS's connection. The connections
//! themselves (`unix`, `windows::client`) depend only on [`crate::connection`] and
//! [`crate::error`], never on this module, so dependencies run one way.

use std::time::Duration;

pub use crate::connection::{PortConnection, read_hello_reply};
pub use crate::error::PortError;

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
