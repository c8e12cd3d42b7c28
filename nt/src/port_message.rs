//! The transport frame: the x64 `PORT_MESSAGE` header and the LPC message types and limits.
//!
//! On Windows the kernel fills this header; on Unix lpcmon's port server builds the same header
//! from what the socket tells it, so one session code path serves both platforms. The layout is
//! phnt's `ntlpcapi.h` for x64 (docs/windows.md, "PORT_MESSAGE"); handles are stored as `u64`
//! so the layout is the x64 one on every host, which is what the Linux tests exercise.

/// Why bytes are not a `PORT_MESSAGE` frame, or a header does not fit a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("message truncated: needed {needed} more bytes, {available} available")]
    Truncated { needed: usize, available: usize },
    #[error("PORT_MESSAGE TotalLength {declared} does not match header plus data ({actual})")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("buffer too small: need {needed} bytes, have {capacity}")]
    BufferTooSmall { needed: usize, capacity: usize },
}

/// LPC message types (`PORT_MESSAGE.u2.s2.Type`, low byte). Values from phnt `ntlpcapi.h`.
///
/// ntapi 0.4 declares these as `ULONG`, so its `LPC_KERNELMODE_MESSAGE` (0x8000) does not fit
/// the `CSHORT` field, and it lacks `LPC_CONTINUATION_REQUIRED`; these are lpcmon's own.
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

// The x64 offsets (phnt ntlpcapi.h, ReactOS lpctypes.h), checked at compile time.
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

/// Legacy LPC on x64 Windows Vista+ refuses a port whose MaxMessageLength exceeds 648
/// (`LpcLegacyMaxMessageLength`; `NtCreatePort` fails with STATUS_INVALID_PARAMETER).
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
    pub fn parse(buf: &[u8]) -> Result<(PortMessage, &[u8]), FrameError> {
        let Some(h) = buf.first_chunk::<PORT_MESSAGE_SIZE>() else {
            return Err(FrameError::Truncated {
                needed: PORT_MESSAGE_SIZE - buf.len(),
                available: buf.len(),
            });
        };
        let u16_at = |at: usize| u16::from_le_bytes([h[at], h[at + 1]]);
        let u32_at = |at: usize| u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
        let u64_at = |at: usize| u64::from(u32_at(at)) | (u64::from(u32_at(at + 4)) << 32);
        let header = PortMessage {
            data_length: u16_at(0x00),
            total_length: u16_at(0x02),
            message_type: u16_at(0x04),
            data_info_offset: u16_at(0x06),
            client_process: u64_at(0x08),
            client_thread: u64_at(0x10),
            message_id: u32_at(0x18),
            reserved: u32_at(0x1C),
            client_view_size: u64_at(0x20),
        };
        let data_len = usize::from(header.data_length);
        if usize::from(header.total_length) != PORT_MESSAGE_SIZE + data_len {
            return Err(FrameError::LengthMismatch {
                declared: usize::from(header.total_length),
                actual: PORT_MESSAGE_SIZE + data_len,
            });
        }
        let rest = &buf[PORT_MESSAGE_SIZE..];
        match rest.get(..data_len) {
            Some(data) => Ok((header, data)),
            None => Err(FrameError::Truncated {
                needed: data_len - rest.len(),
                available: rest.len(),
            }),
        }
    }

    /// Writes the header in its x64 byte layout; returns its size.
    pub fn write(&self, out: &mut [u8]) -> Result<usize, FrameError> {
        let capacity = out.len();
        let Some(h) = out.first_chunk_mut::<PORT_MESSAGE_SIZE>() else {
            return Err(FrameError::BufferTooSmall {
                needed: PORT_MESSAGE_SIZE,
                capacity,
            });
        };
        h[0x00..0x02].copy_from_slice(&self.data_length.to_le_bytes());
        h[0x02..0x04].copy_from_slice(&self.total_length.to_le_bytes());
        h[0x04..0x06].copy_from_slice(&self.message_type.to_le_bytes());
        h[0x06..0x08].copy_from_slice(&self.data_info_offset.to_le_bytes());
        h[0x08..0x10].copy_from_slice(&self.client_process.to_le_bytes());
        h[0x10..0x18].copy_from_slice(&self.client_thread.to_le_bytes());
        h[0x18..0x1C].copy_from_slice(&self.message_id.to_le_bytes());
        h[0x1C..0x20].copy_from_slice(&self.reserved.to_le_bytes());
        h[0x20..0x28].copy_from_slice(&self.client_view_size.to_le_bytes());
        Ok(PORT_MESSAGE_SIZE)
    }
}

/// A `PORT_MESSAGE` followed by up to [`LPC_MAX_CONNECTION_INFO`] bytes: the connection
/// message of `NtAlpcConnectPort` and the answer passed to `Nt(Alpc)AcceptConnectPort`.
#[repr(C, align(8))]
#[derive(Debug, Clone, Copy)]
pub struct ConnectionMessage {
    pub header: PortMessage,
    pub data: [u8; LPC_MAX_CONNECTION_INFO],
}

const _: () = {
    assert!(core::mem::size_of::<ConnectionMessage>() == PORT_MESSAGE_SIZE + LPC_MAX_CONNECTION_INFO);
    assert!(core::mem::offset_of!(ConnectionMessage, data) == PORT_MESSAGE_SIZE);
};

impl ConnectionMessage {
    /// `header` with `data` behind it; `data` is cut to 128 bytes, and the header's lengths
    /// must already say how much of it counts.
    pub fn new(header: PortMessage, data: &[u8]) -> Self {
        let mut msg = ConnectionMessage {
            header,
            data: [0; LPC_MAX_CONNECTION_INFO],
        };
        let len = data.len().min(LPC_MAX_CONNECTION_INFO);
        msg.data[..len].copy_from_slice(&data[..len]);
        msg
    }

    /// The data the header says the message carries.
    pub fn payload(&self) -> &[u8] {
        &self.data[..usize::from(self.header.data_length).min(LPC_MAX_CONNECTION_INFO)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;

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
            Err(FrameError::LengthMismatch { .. })
        ));
        assert!(matches!(
            PortMessage::parse(&buf[..10]),
            Err(FrameError::Truncated { .. })
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

#[cfg(test)]
mod frame_tests {
    use super::*;

    #[test]
    fn data_shorter_than_declared_is_truncated() {
        let h = PortMessage::new(lpc::DATAGRAM, 8, 4, 8, 9);
        let mut buf = [0u8; PORT_MESSAGE_SIZE + 3];
        assert_eq!(h.write(&mut buf), Ok(PORT_MESSAGE_SIZE));
        assert_eq!(
            PortMessage::parse(&buf),
            Err(FrameError::Truncated {
                needed: 5,
                available: 3
            })
        );
        assert_eq!(
            h.write(&mut [0u8; 39]),
            Err(FrameError::BufferTooSmall {
                needed: 40,
                capacity: 39
            })
        );
    }

    #[test]
    fn connection_message_payload_follows_the_header() {
        let m = ConnectionMessage::new(PortMessage::new(0, 3, 0, 0, 0), b"abcdef");
        assert_eq!(m.payload(), b"abc");
    }
}
