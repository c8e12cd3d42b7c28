//! Port clients for user-mode producers (the load generator) and experiments: ALPC
//! (`NtAlpcConnectPort`) and legacy LPC (`NtConnectPort`, `NtSecureConnectPort`), each a
//! [`PortConnection`].
//!
//! The Hello travels as connection information and, when the server accepts, its HelloReply
//! comes back in the same buffer, read with [`read_hello_reply`]. A send is a datagram
//! (`NtRequestPort`, or `NtAlpcSendWaitReceivePort` with `SendKind::Datagram`'s
//! `RELEASE_MESSAGE`); a request waits for the server's reply (`NtRequestWaitReplyPort`, or an
//! ALPC `SendKind::Request`).
//!
//! A refused connect returns no connection information: the kernel copies none back, so the
//! buffer still holds the client's own Hello and is not read. The refusal is reported with
//! the kernel's cause (`lpcmon_nt::ConnectStatus`), not the server's text.

use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};
use std::ptr::null_mut;
use std::time::Duration;

use lpcmon_nt::alpc::{ALPC_SYNC_CONNECTION, AlpcPortAttributes, MAX_POOL_USAGE, SendKind};
use lpcmon_nt::port_message::{
    ConnectionMessage, LPC_LEGACY_MAX_DATA, LPC_MAX_CONNECTION_INFO, PORT_MESSAGE_SIZE,
};
use lpcmon_nt::security::{LOCAL_SYSTEM_SID, SecurityQos};
use lpcmon_nt::{ConnectStatus, NtStatus, status, timeout};
use ntapi::ntlpcapi;

use super::alpc::max_total_message;
use super::ffi::{MessageBuffer, NtName, ntdll, port_attributes, port_message, security_qos, timeout_ptr};
use crate::connection::{PortConnection, read_hello_reply};
use crate::decide::{client_error, connect_error, nt_error, send_header};
use crate::error::PortError;

/// Which connect call a client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientApi {
    /// `NtAlpcConnectPort`, with a connect timeout.
    #[default]
    Alpc,
    /// `NtConnectPort`: legacy LPC, for comparing it with ALPC. No timeout.
    Lpc,
    /// `NtSecureConnectPort`: legacy LPC that refuses a server not running as LocalSystem.
    /// No timeout.
    SecureLpc,
}

/// How to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    pub api: ClientApi,
    /// Refuse a server not running as LocalSystem (`STATUS_SERVER_SID_MISMATCH`), so a port
    /// squatted under lpcmon's name gets nothing. Applies to `Alpc` and `SecureLpc`.
    pub require_system_server: bool,
    /// How long `NtAlpcConnectPort` waits for the server to answer.
    pub connect_timeout: Duration,
    /// How long an ALPC request waits for its reply; `None` waits for ever. Legacy requests
    /// always wait for ever.
    pub request_timeout: Option<Duration>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            api: ClientApi::Alpc,
            require_system_server: true,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Some(Duration::from_secs(5)),
        }
    }
}

/// Connects to `port_name`, sending `hello` (an encoded Hello) as connection information.
pub fn connect(
    port_name: &str,
    hello: &[u8],
    options: &ClientOptions,
) -> Result<Box<dyn PortConnection>, PortError> {
    Ok(match options.api {
        ClientApi::Alpc => Box::new(AlpcConnection::connect(port_name, hello, options)?),
        ClientApi::Lpc | ClientApi::SecureLpc => Box::new(LpcConnection::connect(port_name, hello, options)?),
    })
}

/// A Hello travels as connection information, which holds at most 128 bytes on x64.
fn check_hello(hello: &[u8]) -> Result<(), PortError> {
    if hello.len() > LPC_MAX_CONNECTION_INFO {
        return Err(PortError::TooLong {
            len: hello.len(),
            limit: LPC_MAX_CONNECTION_INFO,
        });
    }
    Ok(())
}

fn required_sid(options: &ClientOptions) -> *mut std::ffi::c_void {
    if options.require_system_server {
        LOCAL_SYSTEM_SID.as_psid()
    } else {
        null_mut()
    }
}

/// The outcome of a connect call: what its status means is `lpcmon_nt::ConnectStatus`'s
/// decision (the driver's too). Only a successful connect's `answer` holds the server's
/// HelloReply; after a refusal it is still the client's own Hello and is not read.
fn read_connect_answer(
    call: &'static str,
    code: NtStatus,
    answer: impl FnOnce() -> Vec<u8>,
    port_name: &str,
    timeout: Duration,
) -> Result<usize, PortError> {
    match ConnectStatus::of(code) {
        ConnectStatus::Connected => read_hello_reply(&answer()),
        _ => Err(connect_error(call, code, port_name, timeout)),
    }
}

/// Takes ownership of whatever handle a connect call returned, before its status is looked
/// at, so every error path closes it.
fn adopt(handle: *mut std::ffi::c_void) -> Option<OwnedHandle> {
    // SAFETY: a non-null handle written by a connect call is a new handle nothing else owns.
    (!handle.is_null()).then(|| unsafe { OwnedHandle::from_raw_handle(handle) })
}

/// Checks `data` against the agreed limit and frames it, with its header, in `message`.
fn prepare(message: &mut MessageBuffer, limit: usize, data: &[u8]) -> Result<(), PortError> {
    if data.len() > limit {
        return Err(PortError::TooLong {
            len: data.len(),
            limit,
        });
    }
    message.write(&send_header(data.len()), data)
}

/// A connection made with `NtAlpcConnectPort`.
#[derive(Debug)]
pub struct AlpcConnection {
    port: OwnedHandle,
    port_name: String,
    limit: usize,
    message: MessageBuffer,
    reply: MessageBuffer,
    request_timeout: Option<Duration>,
    send_wait_receive: ntlpcapi::NtAlpcSendWaitReceivePort,
}

impl AlpcConnection {
    pub fn connect(port_name: &str, hello: &[u8], options: &ClientOptions) -> Result<Self, PortError> {
        check_hello(hello)?;
        let api = ntdll();
        let connect = api.NtAlpcConnectPort()?;
        let send_wait_receive = api.NtAlpcSendWaitReceivePort()?;
        let max_total = max_total_message(api)?;
        let name = NtName::new(port_name)?;
        let mut unicode = name.unicode_string();
        let attributes = AlpcPortAttributes::new(0, max_total, MAX_POOL_USAGE);
        let mut message = ConnectionMessage::new(send_header(hello.len()), hello);
        let mut length = size_of::<ConnectionMessage>();
        let mut timeout = timeout::relative(options.connect_timeout);
        let mut handle = null_mut();
        // SAFETY: every pointer refers to a live local of the declared layout (lpcmon_nt's,
        // which agree with ntapi's); the connection message buffer is `length` bytes and the
        // kernel writes the server's answer into it; `length` is a SIZE_T as the x64 kernel
        // expects (NtAlpcConnectPortFn); the SID is a static the call only reads.
        let code = unsafe {
            connect(
                &mut handle,
                &mut unicode,
                null_mut(),
                port_attributes(&attributes),
                ALPC_SYNC_CONNECTION,
                required_sid(options),
                port_message(std::ptr::from_mut(&mut message.header)),
                &mut length,
                null_mut(),
                null_mut(),
                timeout_ptr(&mut timeout),
            )
        };
        let port = adopt(handle);
        let agreed = read_connect_answer(
            "NtAlpcConnectPort",
            code,
            || message.payload().to_vec(),
            port_name,
            options.connect_timeout,
        )?;
        let port = port.ok_or_else(|| nt_error("NtAlpcConnectPort", status::INVALID_HANDLE))?;
        let transport = max_total - PORT_MESSAGE_SIZE;
        Ok(AlpcConnection {
            port,
            port_name: port_name.to_owned(),
            limit: agreed.min(transport),
            message: MessageBuffer::new(max_total),
            reply: MessageBuffer::new(max_total),
            request_timeout: options.request_timeout,
            send_wait_receive,
        })
    }

    fn prepare(&mut self, data: &[u8]) -> Result<(), PortError> {
        prepare(&mut self.message, self.limit, data)
    }
}

impl PortConnection for AlpcConnection {
    fn max_message(&self) -> usize {
        self.limit
    }

    fn send(&mut self, data: &[u8]) -> Result<(), PortError> {
        self.prepare(data)?;
        let kind = SendKind::Datagram;
        // SAFETY: the message buffer holds a complete message of the length its header says;
        // no receive buffer is passed, so the call returns once the datagram is queued.
        let code = unsafe {
            (self.send_wait_receive)(
                self.port.as_raw_handle(),
                kind.flags(),
                port_message(self.message.as_ptr()),
                null_mut(),
                null_mut(),
                null_mut(),
                null_mut(),
                null_mut(),
            )
        };
        if !status::is_success(code) {
            return Err(client_error("NtAlpcSendWaitReceivePort", code, &self.port_name));
        }
        Ok(())
    }

    fn request(&mut self, data: &[u8]) -> Result<(), PortError> {
        self.prepare(data)?;
        let kind = SendKind::Request;
        let mut length = self.reply.capacity();
        let mut timeout = self.request_timeout.map(timeout::relative);
        let timeout = timeout.as_mut().map_or(null_mut(), timeout_ptr);
        // SAFETY: the message buffer holds a complete message; the reply buffer is `length`
        // bytes and 8-aligned; `length` and the optional timeout are live locals.
        let code = unsafe {
            (self.send_wait_receive)(
                self.port.as_raw_handle(),
                kind.flags(),
                port_message(self.message.as_ptr()),
                null_mut(),
                port_message(self.reply.as_mut_ptr()),
                &mut length,
                null_mut(),
                timeout,
            )
        };
        match code {
            status::SUCCESS => Ok(()),
            status::TIMEOUT => Err(PortError::Timeout(self.request_timeout.unwrap_or_default())),
            other => Err(client_error("NtAlpcSendWaitReceivePort", other, &self.port_name)),
        }
    }
}

/// A connection made with `NtConnectPort` or `NtSecureConnectPort`.
#[derive(Debug)]
pub struct LpcConnection {
    port: OwnedHandle,
    port_name: String,
    limit: usize,
    message: MessageBuffer,
    reply: MessageBuffer,
    request: ntlpcapi::NtRequestPort,
    request_wait_reply: ntlpcapi::NtRequestWaitReplyPort,
}

impl LpcConnection {
    pub fn connect(port_name: &str, hello: &[u8], options: &ClientOptions) -> Result<Self, PortError> {
        check_hello(hello)?;
        let api = ntdll();
        let request = api.NtRequestPort()?;
        let request_wait_reply = api.NtRequestWaitReplyPort()?;
        let name = NtName::new(port_name)?;
        let mut unicode = name.unicode_string();
        let qos = SecurityQos::identification();
        let mut information = [0u8; LPC_MAX_CONNECTION_INFO];
        information[..hello.len()].copy_from_slice(hello);
        // In: the Hello's length. Out: the length of the server's answer, never more than
        // what went in (the kernel cuts the answer to it).
        let mut information_length = hello.len() as u32;
        let mut max_message = 0u32;
        let mut handle = null_mut();
        let (call, code) = if options.api == ClientApi::SecureLpc {
            let connect = api.NtSecureConnectPort()?;
            // SAFETY: every pointer refers to a live local (or the static SID) of the declared
            // layout; the connection information buffer is 128 bytes, at least the length
            // passed in; no views are used.
            let code = unsafe {
                connect(
                    &mut handle,
                    &mut unicode,
                    security_qos(&qos),
                    null_mut(),
                    required_sid(options),
                    null_mut(),
                    &mut max_message,
                    information.as_mut_ptr().cast(),
                    &mut information_length,
                )
            };
            ("NtSecureConnectPort", code)
        } else {
            let connect = api.NtConnectPort()?;
            // SAFETY: as for NtSecureConnectPort, without the SID.
            let code = unsafe {
                connect(
                    &mut handle,
                    &mut unicode,
                    security_qos(&qos),
                    null_mut(),
                    null_mut(),
                    &mut max_message,
                    information.as_mut_ptr().cast(),
                    &mut information_length,
                )
            };
            ("NtConnectPort", code)
        };
        let answer = || information[..(information_length as usize).min(LPC_MAX_CONNECTION_INFO)].to_vec();
        let port = adopt(handle);
        // Legacy connects have no timeout; a timeout status cannot come back.
        let agreed = read_connect_answer(call, code, answer, port_name, Duration::ZERO)?;
        let port = port.ok_or_else(|| nt_error(call, status::INVALID_HANDLE))?;
        // The port's MaxMessageLength is a total; 0 would mean the kernel did not say.
        let transport = match max_message as usize {
            0 => LPC_LEGACY_MAX_DATA,
            total => total.saturating_sub(PORT_MESSAGE_SIZE),
        };
        let total = transport + PORT_MESSAGE_SIZE;
        Ok(LpcConnection {
            port,
            port_name: port_name.to_owned(),
            limit: agreed.min(transport),
            message: MessageBuffer::new(total),
            reply: MessageBuffer::new(total),
            request,
            request_wait_reply,
        })
    }

    fn prepare(&mut self, data: &[u8]) -> Result<(), PortError> {
        prepare(&mut self.message, self.limit, data)
    }
}

impl PortConnection for LpcConnection {
    fn max_message(&self) -> usize {
        self.limit
    }

    fn send(&mut self, data: &[u8]) -> Result<(), PortError> {
        self.prepare(data)?;
        // SAFETY: the buffer holds a complete message of the length its header says, with
        // DataInfoOffset 0 as NtRequestPort requires.
        let code = unsafe { (self.request)(self.port.as_raw_handle(), port_message(self.message.as_ptr())) };
        if !status::is_success(code) {
            return Err(client_error("NtRequestPort", code, &self.port_name));
        }
        Ok(())
    }

    fn request(&mut self, data: &[u8]) -> Result<(), PortError> {
        self.prepare(data)?;
        // SAFETY: the request buffer holds a complete message; the reply buffer holds the
        // largest message the port allows, and the kernel writes no more than that.
        let code = unsafe {
            (self.request_wait_reply)(
                self.port.as_raw_handle(),
                port_message(self.message.as_ptr()),
                port_message(self.reply.as_mut_ptr()),
            )
        };
        if !status::is_success(code) {
            return Err(client_error("NtRequestWaitReplyPort", code, &self.port_name));
        }
        Ok(())
    }
}
