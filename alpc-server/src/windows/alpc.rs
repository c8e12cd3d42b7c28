//! The ALPC port server (the default): `NtAlpcCreatePort` with `ALLOW_LPC_REQUESTS`, so the
//! driver's legacy `ZwConnectPort` reaches it too, and a receive loop on
//! `NtAlpcSendWaitReceivePort` with a timeout.
//!
//! Each accepted connection's PortContext is its key in the loop's connection table; the
//! kernel hands it back with every message through the context message attribute.

use std::num::NonZeroUsize;
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};
use std::ptr::null_mut;
use std::time::Duration;

use lpcmon_nt::alpc::{ALPC_PORFLG_ALLOW_LPC_REQUESTS, AlpcPortAttributes, MAX_POOL_USAGE};
use lpcmon_nt::port_message::{ConnectionMessage, PORT_MESSAGE_SIZE};
use lpcmon_nt::{NtStatus, PortMessage, status, timeout};
use ntapi::ntlpcapi;
use tracing::debug;

use super::ffi::{
    ContextAttributes, MessageBuffer, NtName, Ntdll, check, message_attributes, object_attributes,
    port_attributes, port_message, timeout_ptr,
};
use super::security::SecurityDescriptor;
use crate::decide::{Outgoing, connect_answer_header, nt_error};
use crate::error::PortError;
use crate::receive_loop::PortOps;

/// The largest total message ALPC allows on this system.
pub fn max_total_message(api: &Ntdll) -> Result<usize, PortError> {
    let max_allowed = api.AlpcMaxAllowedMessageLength()?;
    // SAFETY: AlpcMaxAllowedMessageLength takes no arguments and only returns a constant.
    let len = unsafe { max_allowed() } as usize;
    Ok(len.min(usize::from(u16::MAX)))
}

/// A created ALPC connection port and the functions its loop calls.
pub struct AlpcPort {
    port: OwnedHandle,
    attributes: AlpcPortAttributes,
    context: ContextAttributes,
    send_wait_receive: ntlpcapi::NtAlpcSendWaitReceivePort,
    accept: ntlpcapi::NtAlpcAcceptConnectPort,
    disconnect: ntlpcapi::NtAlpcDisconnectPort,
}

impl AlpcPort {
    /// Creates the port. Every function the loop needs is resolved first, so a system that
    /// lacks one fails here, naming it, rather than in the middle of a connection.
    pub fn create(api: &Ntdll, name: &str, security: &SecurityDescriptor) -> Result<Self, PortError> {
        let create = api.NtAlpcCreatePort()?;
        let max_total = max_total_message(api)?;
        let send_wait_receive = api.NtAlpcSendWaitReceivePort()?;
        let accept = api.NtAlpcAcceptConnectPort()?;
        let disconnect = api.NtAlpcDisconnectPort()?;
        let context = ContextAttributes::new(api)?;

        let name = NtName::new(name)?;
        let mut unicode = name.unicode_string();
        let mut object_attributes = object_attributes(&mut unicode, security.as_ptr());
        let attributes = AlpcPortAttributes::new(ALPC_PORFLG_ALLOW_LPC_REQUESTS, max_total, MAX_POOL_USAGE);
        let mut handle = null_mut();
        // SAFETY: every pointer refers to a live, initialised local of the declared layout
        // (lpcmon_nt's attributes agree with ntapi's; ffi.rs asserts it); the kernel copies the
        // name, the descriptor and the attributes during the call and writes only `handle`.
        let code = unsafe { create(&mut handle, &mut object_attributes, port_attributes(&attributes)) };
        check("NtAlpcCreatePort", code)?;
        if handle.is_null() {
            return Err(nt_error("NtAlpcCreatePort", status::INVALID_HANDLE));
        }
        // SAFETY: the call succeeded, so `handle` is a new port handle that nothing else owns.
        let port = unsafe { OwnedHandle::from_raw_handle(handle) };
        debug!(max_total, "ALPC port created");
        Ok(AlpcPort {
            port,
            attributes,
            context,
            send_wait_receive,
            accept,
            disconnect,
        })
    }

    /// The largest data one message may carry on this port.
    pub fn max_data(&self) -> usize {
        self.attributes.max_message_length - PORT_MESSAGE_SIZE
    }

    /// Sends a header-only message on the connection port with the flags of its kind, and
    /// receives nothing.
    fn send(&self, call: &'static str, message: &Outgoing) -> Result<(), PortError> {
        // SAFETY: `message.header` is a whole header-only message (TotalLength 40) that lives
        // for the call; no receive buffer is passed, so the kernel writes nothing of ours.
        let code = unsafe {
            (self.send_wait_receive)(
                self.port.as_raw_handle(),
                message.flags(),
                port_message(&message.header),
                null_mut(),
                null_mut(),
                null_mut(),
                null_mut(),
                null_mut(),
            )
        };
        check(call, code)
    }
}

impl PortOps for AlpcPort {
    type Handle = OwnedHandle;
    type Buffer = MessageBuffer;

    const RECEIVE_CALL: &'static str = "NtAlpcSendWaitReceivePort";

    fn receive_buffer(&self) -> MessageBuffer {
        MessageBuffer::new(self.attributes.max_message_length)
    }

    fn receive(&mut self, buffer: &mut MessageBuffer, wait: Duration) -> (NtStatus, usize) {
        let mut length = buffer.capacity();
        let mut timeout = timeout::relative(wait);
        let attributes = self.context.as_mut_ptr();
        // SAFETY: the buffer is 8-aligned and `length` bytes long; `length`, the attribute
        // buffer (sized by AlpcGetHeaderSize) and `timeout` are live for the call. Nothing is
        // sent (no send message), so the flags are 0.
        let code = unsafe {
            (self.send_wait_receive)(
                self.port.as_raw_handle(),
                0,
                null_mut(),
                null_mut(),
                port_message(buffer.as_mut_ptr()),
                &mut length,
                message_attributes(attributes),
                timeout_ptr(&mut timeout),
            )
        };
        let context = if code == status::SUCCESS {
            self.context.port_context()
        } else {
            0
        };
        (code, context)
    }

    fn answer(
        &mut self,
        request: &PortMessage,
        reply: &[u8],
        accept: Option<NonZeroUsize>,
    ) -> Result<Option<OwnedHandle>, PortError> {
        let answer = ConnectionMessage::new(connect_answer_header(request, reply.len()), reply);
        let mut handle = null_mut();
        let context = accept.map_or(null_mut(), |key| std::ptr::without_provenance_mut(key.get()));
        // SAFETY: the answer message, the port attributes and the out handle are live locals
        // of the declared layouts. The PortContext is an opaque integer the kernel only stores
        // and hands back; it is never dereferenced.
        let code = unsafe {
            (self.accept)(
                &mut handle,
                self.port.as_raw_handle(),
                0,
                null_mut(),
                port_attributes(&self.attributes),
                context,
                port_message(&answer.header),
                null_mut(),
                u8::from(accept.is_some()),
            )
        };
        check("NtAlpcAcceptConnectPort", code)?;
        if handle.is_null() {
            return Ok(None);
        }
        // SAFETY: the call succeeded and returned a new communication port handle we own.
        let handle = unsafe { OwnedHandle::from_raw_handle(handle) };
        Ok(accept.map(|_| handle))
    }

    fn reply(&mut self, reply: &Outgoing, _connection: Option<&OwnedHandle>) -> Result<(), PortError> {
        // ALPC replies go through the connection port; the MessageId names the request.
        self.send("NtAlpcSendWaitReceivePort(reply)", reply)
    }

    fn release(&mut self, release: &Outgoing) -> Result<(), PortError> {
        self.send("NtAlpcSendWaitReceivePort(release)", release)
    }

    fn disconnect(&mut self, connection: OwnedHandle) {
        // SAFETY: `connection` is a communication port handle we own and close right after.
        let code = unsafe { (self.disconnect)(connection.as_raw_handle(), 0) };
        if code < 0 {
            // The peer usually disconnected first; closing the handle is what matters.
            debug!(
                status = format_args!("{:#010X}", code as u32),
                "NtAlpcDisconnectPort"
            );
        }
        drop(connection);
    }
}
