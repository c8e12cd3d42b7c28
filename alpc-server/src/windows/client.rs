//! Port clients for user-mode producers (the load generator) and experiments: ALPC
//! (`NtAlpcConnectPort`) and legacy LPC (`NtConnectPort`, `NtSecureConnectPort`), each a
//! [`PortConnection`].
//!
//! The Hello travels as connection information and the server's HelloReply comes back in the
//! same buffer, read with [`read_hello_reply`]. A send is a datagram (`NtRequestPort`, or
//! `NtAlpcSendWaitReceivePort` without a receive); a request waits for the server's reply
//! (`NtRequestWaitReplyPort`, or an ALPC synchronous request).
//!
//! Legacy LPC returns at most as many bytes of connection information as the client sent, so
//! a refusal whose text is longer than the Hello arrives cut short; it is still reported as a
//! refusal.

use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};
use std::ptr::{null, null_mut};
use std::time::Duration;

use lpcmon_protocol::port_message::{LPC_LEGACY_MAX_DATA, LPC_MAX_CONNECTION_INFO, PORT_MESSAGE_SIZE};

use super::alpc::max_total_message;
use super::ffi::{
    ALPC_MSGFLG_SYNC_REQUEST, ALPC_SYNC_CONNECTION, AlpcPortAttributes, ConnectionMessage, LOCAL_SYSTEM_SID,
    MAX_POOL_USAGE, MessageBuffer, NtAlpcSendWaitReceivePortFn, NtName, NtRequestPortFn,
    NtRequestWaitReplyPortFn, NtStatus, SecurityQualityOfService, ntdll, relative_timeout,
};
use crate::client::{PortConnection, PortError, read_hello_reply};
use crate::decide::{client_error, nt_error, send_header, status};

/// Which connect call a client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientApi {
    /// `NtAlpcConnectPort`, with a connect timeout.
    #[default]
    Alpc,
    /// `NtConnectPort`: what the driver uses when configured for it. No timeout.
    Lpc,
    /// `NtSecureConnectPort`: the driver's default. No timeout.
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

fn required_sid(options: &ClientOptions) -> *const std::ffi::c_void {
    if options.require_system_server {
        std::ptr::from_ref(&LOCAL_SYSTEM_SID).cast()
    } else {
        null()
    }
}

/// The outcome of a connect call whose connection information holds the server's answer.
fn read_connect_answer(
    call: &'static str,
    code: NtStatus,
    answer: &[u8],
    port_name: &str,
) -> Result<usize, PortError> {
    match code as u32 {
        status::SUCCESS => read_hello_reply(answer),
        status::PORT_CONNECTION_REFUSED => match read_hello_reply(answer) {
            Err(refused @ PortError::Refused { .. }) => Err(refused),
            _ => Err(PortError::Refused {
                reason: "refused",
                text: "the server refused the connection without a readable reason".to_owned(),
            }),
        },
        other => Err(client_error(call, other, port_name)),
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
    send_wait_receive: NtAlpcSendWaitReceivePortFn,
}

impl AlpcConnection {
    pub fn connect(port_name: &str, hello: &[u8], options: &ClientOptions) -> Result<Self, PortError> {
        check_hello(hello)?;
        let api = ntdll();
        let connect = api.NtAlpcConnectPort()?;
        let send_wait_receive = api.NtAlpcSendWaitReceivePort()?;
        let max_total = max_total_message(api)?;
        let name = NtName::new(port_name)?;
        let unicode = name.unicode_string();
        let attributes = AlpcPortAttributes::new(0, max_total, MAX_POOL_USAGE);
        let mut message = ConnectionMessage::new(send_header(hello.len()), hello);
        let mut length = size_of::<ConnectionMessage>();
        let timeout = relative_timeout(options.connect_timeout);
        let mut handle = null_mut();
        // SAFETY: every pointer refers to a live local of the declared layout; the connection
        // message buffer is `length` bytes and the kernel writes the server's answer into it;
        // `length` is a SIZE_T as the x64 kernel expects; the SID is a static.
        let code = unsafe {
            connect(
                &mut handle,
                &unicode,
                null(),
                &attributes,
                ALPC_SYNC_CONNECTION,
                required_sid(options),
                &mut message.header,
                &mut length,
                null_mut(),
                null_mut(),
                &timeout,
            )
        };
        let port = adopt(handle);
        // STATUS_TIMEOUT is a success code, so it is told apart before anything else.
        if code as u32 == status::TIMEOUT {
            return Err(PortError::Timeout(options.connect_timeout));
        }
        let agreed = read_connect_answer("NtAlpcConnectPort", code, message.payload(), port_name)?;
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
        // SAFETY: the message buffer holds a complete message of the length its header says;
        // no receive buffer is passed, so the call returns once the datagram is queued.
        let code = unsafe {
            (self.send_wait_receive)(
                self.port.as_raw_handle(),
                0,
                self.message.as_ptr(),
                null_mut(),
                null_mut(),
                null_mut(),
                null_mut(),
                null(),
            )
        };
        if code < 0 {
            return Err(client_error(
                "NtAlpcSendWaitReceivePort",
                code as u32,
                &self.port_name,
            ));
        }
        Ok(())
    }

    fn request(&mut self, data: &[u8]) -> Result<(), PortError> {
        self.prepare(data)?;
        let mut length = self.reply.capacity();
        let timeout = self.request_timeout.map(relative_timeout);
        let timeout_ptr = timeout.as_ref().map_or(null(), std::ptr::from_ref);
        // SAFETY: the message buffer holds a complete message; the reply buffer is `length`
        // bytes and 8-aligned; `length` and the optional timeout are live locals.
        let code = unsafe {
            (self.send_wait_receive)(
                self.port.as_raw_handle(),
                ALPC_MSGFLG_SYNC_REQUEST,
                self.message.as_ptr(),
                null_mut(),
                self.reply.as_mut_ptr(),
                &mut length,
                null_mut(),
                timeout_ptr,
            )
        } as u32;
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
    request: NtRequestPortFn,
    request_wait_reply: NtRequestWaitReplyPortFn,
}

impl LpcConnection {
    pub fn connect(port_name: &str, hello: &[u8], options: &ClientOptions) -> Result<Self, PortError> {
        check_hello(hello)?;
        let api = ntdll();
        let request = api.NtRequestPort()?;
        let request_wait_reply = api.NtRequestWaitReplyPort()?;
        let name = NtName::new(port_name)?;
        let unicode = name.unicode_string();
        let qos = SecurityQualityOfService::identification();
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
                    &unicode,
                    &qos,
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
                    &unicode,
                    &qos,
                    null_mut(),
                    null_mut(),
                    &mut max_message,
                    information.as_mut_ptr().cast(),
                    &mut information_length,
                )
            };
            ("NtConnectPort", code)
        };
        let answer = &information[..(information_length as usize).min(LPC_MAX_CONNECTION_INFO)];
        let port = adopt(handle);
        let agreed = read_connect_answer(call, code, answer, port_name)?;
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
        let code = unsafe { (self.request)(self.port.as_raw_handle(), self.message.as_ptr()) };
        if code < 0 {
            return Err(client_error("NtRequestPort", code as u32, &self.port_name));
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
                self.message.as_ptr(),
                self.reply.as_mut_ptr(),
            )
        };
        if code < 0 {
            return Err(client_error(
                "NtRequestWaitReplyPort",
                code as u32,
                &self.port_name,
            ));
        }
        Ok(())
    }
}
