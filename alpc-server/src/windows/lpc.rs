//! The legacy LPC port server (`--port-api lpc`), kept for comparing LPC against ALPC:
//! `NtCreatePort`, a receive loop on `NtReplyWaitReceivePortEx` with a timeout, and
//! `NtAcceptConnectPort` + `NtCompleteConnectPort`.
//!
//! On Vista and later `NtCreatePort` is a shim over ALPC that refuses a MaxMessageLength above
//! 648 bytes on x64 (LPC.md), so a legacy message carries at most 608 bytes of data.

use std::ffi::c_void;
use std::num::NonZeroUsize;
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};
use std::ptr::{null, null_mut};
use std::time::Duration;

use lpcmon_protocol::PortMessage;
use lpcmon_protocol::port_message::{LPC_LEGACY_MAX_DATA, LPC_LEGACY_MAX_MESSAGE, LPC_MAX_CONNECTION_INFO};
use tracing::debug;

use super::ffi::{
    ConnectionMessage, MessageBuffer, NtAcceptConnectPortFn, NtCompleteConnectPortFn, NtName, NtReplyPortFn,
    NtReplyWaitReceivePortExFn, Ntdll, ObjectAttributes, check, relative_timeout,
};
use super::security::SecurityDescriptor;
use crate::client::PortError;
use crate::decide::{connect_answer_header, nt_error, reply_header, status};
use crate::receive_loop::PortOps;

/// The receive buffer. `NtReplyWaitReceivePort` takes no buffer length: the kernel copies a
/// whole message, up to the port's 648 bytes or a connection request with 128 bytes of
/// connection information, so the buffer leaves room for both with margin.
const RECEIVE_BUFFER: usize = 1024;
const _: () = assert!(RECEIVE_BUFFER >= LPC_LEGACY_MAX_MESSAGE + LPC_MAX_CONNECTION_INFO);

/// A created legacy connection port and the functions its loop calls.
pub struct LpcPort {
    port: OwnedHandle,
    reply_wait_receive: NtReplyWaitReceivePortExFn,
    accept: NtAcceptConnectPortFn,
    complete: NtCompleteConnectPortFn,
    reply: NtReplyPortFn,
}

impl LpcPort {
    /// Creates the port. `NtCreatePort` is resolved and called first: it is the call that
    /// tells whether this system has legacy LPC at all (wine exports it as a stub returning
    /// STATUS_NOT_IMPLEMENTED). The loop's functions are resolved right after, before any
    /// client can connect.
    pub fn create(api: &Ntdll, name: &str, security: &SecurityDescriptor) -> Result<Self, PortError> {
        let create = api.NtCreatePort()?;
        let name = NtName::new(name)?;
        let unicode = name.unicode_string();
        let object_attributes = ObjectAttributes::new(&unicode, security.as_ptr());
        let mut handle = null_mut();
        // SAFETY: the out handle and the attributes are live locals of the declared layouts;
        // the kernel copies the name and the descriptor during the call. MaxPoolUsage 0 asks
        // for the system default.
        let code = unsafe {
            create(
                &mut handle,
                &object_attributes,
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

    fn receive(&mut self, buffer: &mut MessageBuffer, timeout: Duration) -> (u32, usize) {
        let mut context: *mut c_void = null_mut();
        let timeout = relative_timeout(timeout);
        // SAFETY: the buffer is 8-aligned and larger than any message this port delivers (see
        // RECEIVE_BUFFER); `context` and `timeout` are live locals; no reply is sent.
        let code = unsafe {
            (self.reply_wait_receive)(
                self.port.as_raw_handle(),
                &mut context,
                null(),
                buffer.as_mut_ptr(),
                &timeout,
            )
        } as u32;
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
                &answer.header,
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

    fn reply(&mut self, request: &PortMessage, connection: Option<&OwnedHandle>) -> Result<(), PortError> {
        let reply = reply_header(request);
        let port = connection.unwrap_or(&self.port);
        // SAFETY: `reply` is a complete header-only message and `port` a live port handle.
        let code = unsafe { (self.reply)(port.as_raw_handle(), &reply) };
        check("NtReplyPort", code)
    }

    fn release(&mut self, _buffer: &MessageBuffer) -> Result<(), PortError> {
        // Legacy LPC never keeps a message for the receiver; there is nothing to release.
        Ok(())
    }

    fn disconnect(&mut self, connection: OwnedHandle) {
        // Closing our communication port is how a legacy server ends a connection.
        drop(connection);
    }
}
