//! ALPC layouts and flag values (x64), from phnt's `ntlpcapi.h` unless said otherwise.

use core::mem::{offset_of, size_of};

use crate::security::SecurityQos;

/// `ALPC_PORFLG_ALLOW_LPC_REQUESTS`: legacy `NtConnectPort` / `ZwConnectPort` clients may
/// connect to this ALPC port.
pub const ALPC_PORFLG_ALLOW_LPC_REQUESTS: u32 = 0x0002_0000;

/// `ALPC_MSGFLG_REPLY_MESSAGE`: documents that a message answers a request. The kernel keeps
/// only the flag bits above 0xFFFF of `NtAlpcSendWaitReceivePort`'s `Flags`, so this bit alone
/// changes nothing: a reply is typed by the MessageId it carries, and released only with
/// [`ALPC_MSGFLG_RELEASE_MESSAGE`].
pub const ALPC_MSGFLG_REPLY_MESSAGE: u32 = 0x1;
/// `ALPC_MSGFLG_RELEASE_MESSAGE`: on a new message, send it as an `LPC_DATAGRAM` (no reply
/// expected; `NtRequestPort` itself sends with this flag); on a reply, let the kernel free the
/// request; on a header-only message naming a received MessageId, free that message.
pub const ALPC_MSGFLG_RELEASE_MESSAGE: u32 = 0x0001_0000;
/// `ALPC_MSGFLG_SYNC_REQUEST`: send a request and wait for its reply; on a connect, wait for
/// the server's answer.
pub const ALPC_MSGFLG_SYNC_REQUEST: u32 = 0x0002_0000;

/// `ALPC_SYNC_CONNECTION` (csandker's `ALPC.h`; phnt does not name it, and it has the value of
/// `ALPC_MSGFLG_SYNC_REQUEST`): `NtAlpcConnectPort` returns only once the server accepted or
/// refused.
pub const ALPC_SYNC_CONNECTION: u32 = ALPC_MSGFLG_SYNC_REQUEST;

/// `ALPC_MESSAGE_CONTEXT_ATTRIBUTE`: the receive fills in the sender's PortContext.
pub const ALPC_MESSAGE_CONTEXT_ATTRIBUTE: u32 = 0x2000_0000;

/// Every kind of message lpcmon sends with `NtAlpcSendWaitReceivePort`, driver and user mode
/// alike. Each send states its kind, and the kind decides the flags; nothing sends with bare
/// flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendKind {
    /// A producer's message that expects no reply: `LPC_DATAGRAM`. Without
    /// `RELEASE_MESSAGE` ALPC would type it `LPC_REQUEST`, the server would reply, and the
    /// replies would queue in the kernel on a client that never receives them.
    Datagram,
    /// A producer's message that waits for the server's reply (`SYNC_REQUEST`): a round-trip
    /// measurement, or the driver's flow-control probe.
    Request,
    /// The server's answer to an `LPC_REQUEST`, naming it by MessageId. `REPLY_MESSAGE` only
    /// documents intent (the kernel drops flag bits below 0x10000); `RELEASE_MESSAGE` is what
    /// lets the kernel free the request instead of keeping it.
    Reply,
    /// The server freeing a received message the kernel kept for it
    /// (`LPC_CONTINUATION_REQUIRED`): a header-only message with the same MessageId.
    Release,
}

impl SendKind {
    /// The `Flags` argument of `NtAlpcSendWaitReceivePort` for this kind of send.
    pub const fn flags(self) -> u32 {
        match self {
            SendKind::Datagram => ALPC_MSGFLG_RELEASE_MESSAGE,
            SendKind::Request => ALPC_MSGFLG_SYNC_REQUEST,
            SendKind::Reply => ALPC_MSGFLG_REPLY_MESSAGE | ALPC_MSGFLG_RELEASE_MESSAGE,
            SendKind::Release => ALPC_MSGFLG_RELEASE_MESSAGE,
        }
    }

    /// Whether the call also receives (the reply to a request), and so needs a receive buffer.
    pub const fn waits_for_reply(self) -> bool {
        matches!(self, SendKind::Request)
    }
}

/// `ALPC_PORT_ATTRIBUTES.MaxPoolUsage` for lpcmon's ports: the pool quota for messages queued
/// and not yet received. Public samples pass 0 (smss) or 0xFFFFFFFF (csandker); the kernel does
/// not appear to enforce it on queued datagrams, which is why the driver bounds what it has in
/// flight itself (docs/windows.md, "Flow control").
pub const MAX_POOL_USAGE: usize = 32 * 1024 * 1024;

/// `ALPC_PORT_ATTRIBUTES`, x64: 72 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlpcPortAttributes {
    pub flags: u32,
    pub security_qos: SecurityQos,
    pub max_message_length: usize,
    pub memory_bandwidth: usize,
    pub max_pool_usage: usize,
    pub max_section_size: usize,
    pub max_view_size: usize,
    pub max_total_section_size: usize,
    pub dup_object_types: u32,
    pub reserved: u32,
}

#[cfg(target_pointer_width = "64")]
const _: () = {
    assert!(size_of::<AlpcPortAttributes>() == 72);
    assert!(offset_of!(AlpcPortAttributes, flags) == 0);
    assert!(offset_of!(AlpcPortAttributes, security_qos) == 4);
    assert!(offset_of!(AlpcPortAttributes, max_message_length) == 16);
    assert!(offset_of!(AlpcPortAttributes, memory_bandwidth) == 24);
    assert!(offset_of!(AlpcPortAttributes, max_pool_usage) == 32);
    assert!(offset_of!(AlpcPortAttributes, max_section_size) == 40);
    assert!(offset_of!(AlpcPortAttributes, max_view_size) == 48);
    assert!(offset_of!(AlpcPortAttributes, max_total_section_size) == 56);
    assert!(offset_of!(AlpcPortAttributes, dup_object_types) == 64);
    assert!(offset_of!(AlpcPortAttributes, reserved) == 68);
};

impl AlpcPortAttributes {
    /// Attributes for a port carrying messages of at most `max_message_length` bytes in total
    /// (header included), with lpcmon's QoS and no sections, views or handle passing.
    pub const fn new(flags: u32, max_message_length: usize, max_pool_usage: usize) -> Self {
        AlpcPortAttributes {
            flags,
            security_qos: SecurityQos::identification(),
            max_message_length,
            memory_bandwidth: 0,
            max_pool_usage,
            max_section_size: 0,
            max_view_size: 0,
            max_total_section_size: 0,
            dup_object_types: 0,
            reserved: 0,
        }
    }
}

/// `ALPC_MESSAGE_ATTRIBUTES`: the 8-byte header in front of the attribute blobs.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlpcMessageAttributes {
    pub allocated_attributes: u32,
    pub valid_attributes: u32,
}

const _: () = assert!(size_of::<AlpcMessageAttributes>() == 8);

/// `ALPC_CONTEXT_ATTR`, x64: 32 bytes with its tail padding.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct AlpcContextAttr {
    pub port_context: *mut core::ffi::c_void,
    pub message_context: *mut core::ffi::c_void,
    pub sequence: u32,
    pub message_id: u32,
    pub callback_id: u32,
}

#[cfg(target_pointer_width = "64")]
const _: () = {
    assert!(size_of::<AlpcContextAttr>() == 32);
    assert!(offset_of!(AlpcContextAttr, sequence) == 16);
    assert!(offset_of!(AlpcContextAttr, message_id) == 20);
    assert!(offset_of!(AlpcContextAttr, callback_id) == 24);
};

#[cfg(test)]
mod tests {
    use super::*;

    /// The flags of every kind of send, pinned: a change here changes what the kernel does.
    #[test]
    fn every_kind_of_send_has_its_flags() {
        assert_eq!(SendKind::Datagram.flags(), 0x0001_0000);
        assert_eq!(SendKind::Request.flags(), 0x0002_0000);
        assert_eq!(SendKind::Reply.flags(), 0x0001_0001);
        assert_eq!(SendKind::Release.flags(), 0x0001_0000);
        // The kernel keeps only the bits above 0xFFFF: a reply must still carry RELEASE.
        assert_eq!(SendKind::Reply.flags() & 0xFFFF_0000, ALPC_MSGFLG_RELEASE_MESSAGE);
        assert!(SendKind::Request.waits_for_reply() && !SendKind::Datagram.waits_for_reply());
        assert!(!SendKind::Reply.waits_for_reply() && !SendKind::Release.waits_for_reply());
    }

    #[test]
    fn port_attributes_carry_lpcmon_qos_and_no_sections() {
        let a = AlpcPortAttributes::new(ALPC_PORFLG_ALLOW_LPC_REQUESTS, 4096, MAX_POOL_USAGE);
        assert_eq!(a.security_qos, SecurityQos::identification());
        assert_eq!((a.max_message_length, a.max_pool_usage), (4096, MAX_POOL_USAGE));
        assert_eq!(a.max_section_size + a.max_view_size + a.max_total_section_size, 0);
    }
}
