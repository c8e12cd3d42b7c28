//! What a producer holds once connected, whatever the transport, and how it reads the server's
//! answer to its Hello.

use lpcmon_protocol::{HelloReply, Message};

use crate::error::PortError;

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
