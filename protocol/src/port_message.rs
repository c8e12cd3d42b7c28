//! The transport frame: a mirror of the x64 `PORT_MESSAGE` header and the LPC constants.
//!
//! On Windows the kernel fills this header; on Unix the port server builds the same header from
//! what the socket tells it, so one session code path serves both platforms. The layout follows
//! phnt `ntlpcapi.h` for x64 (see `shared/reference/LPC.md`); handles are stored as `u64` so the
//! layout is the x64 one on every host, which is what the Linux tests exercise.

use crate::cursor::{Reader, Writer};
use crate::error::{DecodeError, EncodeError};

/// LPC message types (`PORT_MESSAGE.u2.s2.Type`, low byte). Values from phnt `ntlpcapi.h`.
pub mod lpc {
    pub const REQUEST: u8 = 1;
    pub const REPLY: u8 = 2;
    pub const DATAGRAM: u8 = 3;
    pub const LOST_REPLY: u8 = 4;
    pub const PORT_CLOSED: u8 = 5;
    pub const CLIENT_DIED: u8 = 6;
    pub const EXCEPTION: u8 = 7;
    pub const DEBUG_EVENT: u8 = 8;
    pub const ERROR_EVENT: u8 = 9;
    pub const CONNECTION_REQUEST: u8 = 10;

    /// High bits of `Type`. The kernel sets them; dispatch must ignore them.
    pub const CONTINUATION_REQUIRED: u16 = 0x2000;
    pub const NO_IMPERSONATE: u16 = 0x4000;
    pub const KERNELMODE_MESSAGE: u16 = 0x8000;
}

/// `PORT_MESSAGE` on x64: 40 bytes, 8-aligned.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortMessage {
    /// `u1.s1.DataLength`: bytes of data after the header.
    pub data_length: u16,
    /// `u1.s1.TotalLength`: header plus data.
    pub total_length: u16,
    /// `u2.s2.Type`: message type in the low byte, flags above it.
    pub message_type: u16,
    /// `u2.s2.DataInfoOffset`: must be 0 for datagrams.
    pub data_info_offset: u16,
    /// `ClientId.UniqueProcess`: the sending thread's process id.
    pub client_process: u64,
    /// `ClientId.UniqueThread`.
    pub client_thread: u64,
    /// `MessageId`: per-port counter; a reply must echo it.
    pub message_id: u32,
    /// Padding the compiler would insert before the 8-byte union.
    pub reserved: u32,
    /// `ClientViewSize` on connection requests, `CallbackId` otherwise.
    pub client_view_size: u64,
}

/// Size of the x64 header in bytes.
pub const PORT_MESSAGE_SIZE: usize = 40;

// The offsets in shared/reference/LPC.md, checked at compile time.
const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    assert!(size_of::<PortMessage>() == PORT_MESSAGE_SIZE);
    assert!(align_of::<PortMessage>() == 8);
    assert!(offset_of!(PortMessage, data_length) == 0x00);
    assert!(offset_of!(PortMessage, total_length) == 0x02);
    assert!(offset_of!(PortMessage, message_type) == 0x04);
    assert!(offset_of!(PortMessage, data_info_offset) == 0x06);
    assert!(offset_of!(PortMessage, client_process) == 0x08);
    assert!(offset_of!(PortMessage, client_thread) == 0x10);
    assert!(offset_of!(PortMessage, message_id) == 0x18);
    assert!(offset_of!(PortMessage, reserved) == 0x1C);
    assert!(offset_of!(PortMessage, client_view_size) == 0x20);
};

/// The largest `TotalLength` a `u16` can describe; ALPC allows up to this.
pub const MAX_TOTAL_LENGTH: usize = u16::MAX as usize;

/// Legacy LPC on x64 Windows Vista+ refuses a port whose MaxMessageLength exceeds 648.
pub const LPC_LEGACY_MAX_MESSAGE: usize = 648;
/// Data bytes that fit in one legacy LPC message on x64.
pub const LPC_LEGACY_MAX_DATA: usize = LPC_LEGACY_MAX_MESSAGE - PORT_MESSAGE_SIZE;
/// Largest connection information (the Hello) on x64: 16 × sizeof(ULONG_PTR).
pub const LPC_MAX_CONNECTION_INFO: usize = 128;

impl PortMessage {
    /// A header as the Windows kernel would build it for a message of `data_len` bytes.
    pub fn new(kind: u8, data_len: usize, client_process: u64, client_thread: u64, message_id: u32) -> Self {
        let data_length = data_len.min(MAX_TOTAL_LENGTH - PORT_MESSAGE_SIZE) as u16;
        PortMessage {
            data_length,
            total_length: data_length + PORT_MESSAGE_SIZE as u16,
            message_type: u16::from(kind),
            client_process,
            client_thread,
            message_id,
            ..PortMessage::default()
        }
    }

    /// The message type to dispatch on: the low byte, with the kernel's flag bits removed.
    pub fn kind(&self) -> u8 {
        (self.message_type & 0xFF) as u8
    }

    /// Whether the receiver must release the message (ALPC `LPC_CONTINUATION_REQUIRED`).
    pub fn continuation_required(&self) -> bool {
        self.message_type & lpc::CONTINUATION_REQUIRED != 0
    }

    /// Parses a header and checks its lengths against the bytes that follow it.
    ///
    /// Returns the header and exactly `data_length` bytes of data.
    pub fn parse(buf: &[u8]) -> Result<(PortMessage, &[u8]), DecodeError> {
        let mut r = Reader::new(buf);
        let header = PortMessage {
            data_length: r.u16()?,
            total_length: r.u16()?,
            message_type: r.u16()?,
            data_info_offset: r.u16()?,
            client_process: r.u64()?,
            client_thread: r.u64()?,
            message_id: r.u32()?,
            reserved: r.u32()?,
            client_view_size: r.u64()?,
        };
        let data_len = usize::from(header.data_length);
        if usize::from(header.total_length) != PORT_MESSAGE_SIZE + data_len {
            return Err(DecodeError::LengthMismatch {
                declared: usize::from(header.total_length),
                actual: PORT_MESSAGE_SIZE + data_len,
            });
        }
        let data = r.bytes(data_len)?;
        Ok((header, data))
    }

    /// Writes the header in its x64 byte layout.
    pub fn write(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer::new(out);
        w.u16(self.data_length)?;
        w.u16(self.total_length)?;
        w.u16(self.message_type)?;
        w.u16(self.data_info_offset)?;
        w.u64(self.client_process)?;
        w.u64(self.client_thread)?;
        w.u32(self.message_id)?;
        w.u32(self.reserved)?;
        w.u64(self.client_view_size)?;
        Ok(w.position())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_checks_lengths() {
        let h = PortMessage::new(lpc::DATAGRAM, 5, 4, 8, 9);
        let mut buf = [0u8; PORT_MESSAGE_SIZE + 5];
        h.write(&mut buf).unwrap();
        buf[PORT_MESSAGE_SIZE..].copy_from_slice(b"hello");
        let (parsed, data) = PortMessage::parse(&buf).unwrap();
        assert_eq!(parsed, h);
        assert_eq!(data, b"hello");
        assert_eq!(parsed.total_length, 45);

        buf[2] = 99;
        assert!(matches!(
            PortMessage::parse(&buf),
            Err(DecodeError::LengthMismatch { .. })
        ));
        assert!(matches!(
            PortMessage::parse(&buf[..10]),
            Err(DecodeError::Truncated { .. })
        ));
    }

    #[test]
    fn dispatch_ignores_kernel_flag_bits() {
        let mut h = PortMessage::new(lpc::DATAGRAM, 0, 4, 8, 1);
        h.message_type |= lpc::KERNELMODE_MESSAGE | lpc::CONTINUATION_REQUIRED;
        assert_eq!(h.kind(), lpc::DATAGRAM);
        assert!(h.continuation_required());
    }

    #[test]
    fn legacy_lpc_leaves_608_bytes_of_data() {
        assert_eq!(LPC_LEGACY_MAX_DATA, 608);
    }
}
