//! The legacy LPC port server (`--port-api lpc`), kept for comparing LPC against ALPC:
//! `NtCreatePort`, a receive loop on `NtReplyWaitReceivePortEx` with a timeout, and
//! `NtAcceptConnectPort` + `NtCompleteConnectPort`.
//!
//! On Vista and later `NtCreatePort` is a shim over ALPC that refuses a MaxMessageLength above
//! 648 bytes on x64, so a legacy message carries at most 608 bytes of data (docs/windows.md,
//! "Legacy LPC").

use std::ffi::c_void;
use std::num::NonZeroUsize;
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};
use std::ptr::null_mut;
use std::time::Duration;

use lpcmon_nt::port_message::{
    ConnectionMessage, LPC_LEGACY_MAX_DATA, LPC_LEGACY_MAX_MESSAGE, LPC_MAX_CONNECTION_INFO,
};
use lpcmon_nt::{NtStatus, PortMessage, status, timeout};
use ntapi::ntlpcapi;
use tracing::debug;

use super::ffi::{MessageBuffer, NtName, Ntdll, check, object_attributes, port_message, timeout_ptr};
use super::security::SecurityDescriptor;
use crate::decide::{Outgoing, connect_answer_header, nt_error};
use crate::error::PortError;
use crate::receive_loop::PortOps;

/// The receive buffer. `NtReplyWaitReceivePort` takes no buffer length: the kernel copies a
/// whole message, up to the port's 648 bytes or a connection request with 128 bytes of
/// connection information, so the buffer leaves room for both with margin.
const RECEIVE_BUFFER: usize = 1024;
const _: () = assert!(RECEIVE_BUFFER >= LPC_LEGACY_MAX_MESSAGE + LPC_MAX_CONNECTION_INFO);

/// A created legacy connection port and the functions its loop calls.
pub struct LpcPort {
    port: OwnedHandle,
    reply_wait_receive: ntlpcapi::NtReplyWaitReceivePortEx,
    accept: ntlpcapi::NtAcceptConnectPort,
    complete: ntlpcapi::NtCompleteConnectPort,
    reply: ntlpcapi::NtReplyPort,
}

impl LpcPort {
    /// Creates the port. `NtCreatePort` is resolved and called first: it is the call that
    /// tells whether this system has legacy LPC at all (wine exports it as a stub returning
    /// STATUS_NOT_IMPLEMENTED). The loop's functions are resolved right after, before any
    /// client can connect.
    pub fn create(api: &Ntdll, name: &str, security: &SecurityDescriptor) -> Result<Self, PortError> {
        let create = api.NtCreatePort()?;
        let name = NtName::new(name)?;
        let mut unicode = name.unicode_string();
        let mut object_attributes = object_attributes(&mut unicode, security.as_ptr());
        let mut handle = null_mut();
        // On Vista and later NtCreatePort is a shim over ALPC that ignores
        // MaxConnectionInfoLength (connection information is always up to 128 bytes on x64)
        // and MaxPoolUsage; only MaxMessageLength counts, and above 648 the call fails with
        // STATUS_INVALID_PARAMETER (docs/windows.md, "Legacy LPC"). They are passed as the
        // documented values anyway.
        // SAFETY: the out handle and the attributes are live locals of the declared layouts;
        // the kernel copies the name and the descriptor during the call.
        let code = unsafe {
            create(
                &mut handle,
                &mut object_attributes,
                LPC_MAX_CONNECTION_INFO as u32,
                LPC_LEGACY_MAX_MESSAGE as u32,
                0,
            )
        };
        check("NtCreatePort", code)?;
        if handle.is_null() {
            return Err(nt_error("NtCreatePort", status::INVALID_HANDLE));
        }
        // SAFETY: the call succeeded, so `handle` is a new port handle that nothing else owns.
        let port = unsafe { OwnedHandle::from_raw_handle(handle) };
        debug!("legacy LPC port created");
        Ok(LpcPort {
            port,
            reply_wait_receive: api.NtReplyWaitReceivePortEx()?,
            accept: api.NtAcceptConnectPort()?,
            complete: api.NtCompleteConnectPort()?,
            reply: api.NtReplyPort()?,
        })
    }

    /// The largest data one message may carry on this port.
    pub fn max_data(&self) -> usize {
        LPC_LEGACY_MAX_DATA
    }
}

impl PortOps for LpcPort {
    type Handle = OwnedHandle;
    type Buffer = MessageBuffer;

    const RECEIVE_CALL: &'static str = "NtReplyWaitReceivePortEx";

    fn receive_buffer(&self) -> MessageBuffer {
        MessageBuffer::new(RECEIVE_BUFFER)
    }

    fn receive(&mut self, buffer: &mut MessageBuffer, wait: Duration) -> (NtStatus, usize) {
        let mut context: *mut c_void = null_mut();
        let mut timeout = timeout::relative(wait);
        // SAFETY: the buffer is 8-aligned and larger than any message this port delivers (see
        // RECEIVE_BUFFER); `context` and `timeout` are live locals; no reply is sent.
        let code = unsafe {
            (self.reply_wait_receive)(
                self.port.as_raw_handle(),
                &mut context,
                null_mut(),
                port_message(buffer.as_mut_ptr()),
                timeout_ptr(&mut timeout),
            )
        };
        let context = if code == status::SUCCESS {
            context.addr()
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
        let context = accept.map_or(null_mut(), |key| std::ptr::without_provenance_mut(key.get()));
        let mut handle = null_mut();
        // SAFETY: the answer message and the out handle are live locals of the declared
        // layouts; no views are used. The PortContext is an opaque integer the kernel only
        // stores and hands back.
        let code = unsafe {
            (self.accept)(
                &mut handle,
                context,
                port_message(&answer.header),
                u8::from(accept.is_some()),
                null_mut(),
                null_mut(),
            )
        };
        check("NtAcceptConnectPort", code)?;
        if accept.is_none() || handle.is_null() {
            if !handle.is_null() {
                // SAFETY: a handle returned for a refused connection is still ours to close.
                drop(unsafe { OwnedHandle::from_raw_handle(handle) });
            }
            return Ok(None);
        }
        // SAFETY: the call succeeded and returned a new communication port handle we own.
        let handle = unsafe { OwnedHandle::from_raw_handle(handle) };
        // SAFETY: `handle` is the communication port just accepted; completing it wakes the
        // waiting client.
        let code = unsafe { (self.complete)(handle.as_raw_handle()) };
        check("NtCompleteConnectPort", code)?;
        Ok(Some(handle))
    }

    fn reply(&mut self, reply: &Outgoing, connection: Option<&OwnedHandle>) -> Result<(), PortError> {
        // NtReplyPort takes no flags: the legacy call itself makes the message a reply.
        let port = connection.unwrap_or(&self.port);
        // SAFETY: `reply.header` is a complete header-only message and `port` a live port
        // handle; the kernel only reads the message.
        let code = unsafe { (self.reply)(port.as_raw_handle(), port_message(&reply.header)) };
        check("NtReplyPort", code)
    }

    fn release(&mut self, _release: &Outgoing) -> Result<(), PortError> {
        // Legacy LPC never keeps a message for the receiver; there is nothing to release.
        Ok(())
    }

    fn disconnect(&mut self, connection: OwnedHandle) {
        // Closing our communication port is how a legacy server ends a connection.
        drop(connection);
    }
}
