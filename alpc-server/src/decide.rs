//! The decisions of the Windows port servers and clients, as plain functions.
//!
//! The ALPC and legacy LPC backends (`windows::alpc`, `windows::lpc`) are thin loops around
//! system calls that cannot run on Linux (and under wine every one of them is a stub). So every
//! choice those loops make lives here, free of `unsafe` and of any Windows type, and is unit
//! tested on every platform with headers built the way the kernel builds them:
//!
//! - which API and port name to use ([`PortApi`], [`validate_port_name`], [`port_sddl`]);
//! - who may produce ([`classify_peer`], DESIGN.md §3 invariant 4);
//! - what a receive status means for the loop ([`on_receive_status`]);
//! - what a received message asks for ([`on_message`]) and, once the dispatcher has answered,
//!   what the backend must do with the port ([`after_dispatch`]);
//! - which connection a message belongs to ([`ConnectionTable`]);
//! - how an NTSTATUS reads to a person ([`status_name`], [`nt_error`], [`client_error`]).

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::str::FromStr;

use lpcmon_protocol::message::{HELLO_REPLY_MAX_LEN, MIN_VERSION, VERSION};
use lpcmon_protocol::port_message::{LPC_LEGACY_MAX_DATA, PORT_MESSAGE_SIZE};
use lpcmon_protocol::server::{Action, ConnId};
use lpcmon_protocol::{HelloReply, PortMessage, RefuseReason, lpc};

use crate::client::PortError;

/// `ClientId.UniqueProcess` of the System process. A driver's system worker thread
/// (`PsCreateSystemThread` with a NULL process handle) connects with this id, and no user-mode
/// process can have it.
pub const SYSTEM_PROCESS_ID: u64 = 4;

/// The port the server creates unless told otherwise (DESIGN.md §6). It lives in the root of
/// the object namespace because `\RPC Control` is writable by everyone.
pub const DEFAULT_PORT_NAME: &str = r"\LpcMonEventPort";

/// Which kernel port API the server uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PortApi {
    /// `NtAlpcCreatePort` with `ALPC_PORFLG_ALLOW_LPC_REQUESTS`, so legacy clients connect too.
    #[default]
    Alpc,
    /// `NtCreatePort`, for comparing the legacy path.
    Lpc,
}

impl PortApi {
    /// The name shown in `transport.api` and accepted by `--port-api`.
    pub fn name(self) -> &'static str {
        match self {
            PortApi::Alpc => "alpc",
            PortApi::Lpc => "lpc",
        }
    }

    /// The largest data a message may carry on this API, given the total message length the
    /// kernel allows (`AlpcMaxAllowedMessageLength()` for ALPC; ignored for legacy LPC, whose
    /// limit is fixed at 648 bytes in total on x64).
    pub fn data_limit(self, alpc_max_total: usize) -> usize {
        match self {
            PortApi::Alpc => alpc_max_total
                .min(usize::from(u16::MAX))
                .saturating_sub(PORT_MESSAGE_SIZE),
            PortApi::Lpc => LPC_LEGACY_MAX_DATA,
        }
    }
}

impl FromStr for PortApi {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "alpc" => Ok(PortApi::Alpc),
            "lpc" => Ok(PortApi::Lpc),
            other => Err(format!("unknown port API {other:?}: expected alpc or lpc")),
        }
    }
}

/// Checks a port name before the kernel sees it: an absolute object name, not under
/// `\RPC Control` (which anyone may create objects in, so a squatter could be there first).
pub fn validate_port_name(name: &str) -> Result<(), &'static str> {
    if !name.starts_with('\\') || name.len() < 2 {
        return Err(r"a port name is an absolute object name such as \LpcMonEventPort");
    }
    if name.contains('\0') {
        return Err("a port name cannot contain NUL");
    }
    let lower = name.to_ascii_lowercase();
    if lower == r"\rpc control" || lower.starts_with(r"\rpc control\") {
        return Err(r"ports under \RPC Control can be squatted by any user; choose another name");
    }
    // UNICODE_STRING lengths are u16 byte counts.
    if name.encode_utf16().count() * 2 > usize::from(u16::MAX) - 2 {
        return Err("the port name is too long");
    }
    Ok(())
}

/// The port's security descriptor in SDDL: protected DACL, SYSTEM only, plus the built-in
/// Administrators when the user-mode load generator must be able to connect. Kernel-mode
/// `ZwConnectPort` bypasses the DACL anyway; this keeps user-mode impostors out.
pub fn port_sddl(allow_administrators: bool) -> &'static str {
    if allow_administrators {
        "D:P(A;;GA;;;SY)(A;;GA;;;BA)"
    } else {
        "D:P(A;;GA;;;SY)"
    }
}

/// Who may produce on this port, beyond what the security descriptor allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PeerPolicy {
    /// Accept connections from user-mode processes (the load generator, experiments).
    pub allow_user_mode_producers: bool,
}

/// A peer the policy lets in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// A system thread of the System process: the lpcmon driver.
    Driver,
    /// A user-mode process, allowed by policy.
    UserMode { pid: u64 },
}

/// Why [`classify_peer`] refuses a user-mode process.
pub const USER_MODE_REFUSED: &str = "user-mode producers are not allowed on this port";

/// Decides whether the process that sent a connection request may produce (DESIGN.md §3.4).
pub fn classify_peer(client_process: u64, policy: PeerPolicy) -> Result<Peer, &'static str> {
    if client_process == SYSTEM_PROCESS_ID {
        Ok(Peer::Driver)
    } else if policy.allow_user_mode_producers {
        Ok(Peer::UserMode { pid: client_process })
    } else {
        Err(USER_MODE_REFUSED)
    }
}

/// What a received message asks the backend to do, decided from its header alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessagePlan {
    /// A connection request from an allowed peer: the dispatcher reads the Hello and decides.
    Connect(Peer),
    /// A connection request the transport refuses before the dispatcher sees its Hello; it is
    /// counted through `Dispatcher::refuse_peer`.
    RefusePeer { client_pid: u64, why: &'static str },
    /// A datagram for the dispatcher. `release`: ALPC kept the message (continuation required)
    /// and it must be released once read.
    Datagram { release: bool },
    /// A request: the sender waits until it gets a reply with the same MessageId.
    Request,
    /// The peer closed its port or died: tell the dispatcher, close our end, free the context.
    Disconnect { release: bool },
    /// Any other type (LPC_REPLY, LPC_EXCEPTION, an unknown value...). The dispatcher counts it as
    /// malformed; the port is otherwise left alone.
    Other { release: bool },
}

impl MessagePlan {
    /// Whether the dispatcher sees this message.
    pub fn dispatches(&self) -> bool {
        !matches!(self, MessagePlan::RefusePeer { .. })
    }
}

/// Plans the handling of one received message. Dispatch is on the low byte of `Type`; the
/// kernel's flag bits above it only say whether ALPC wants the message released.
pub fn on_message(header: &PortMessage, policy: PeerPolicy) -> MessagePlan {
    let release = header.continuation_required();
    match header.kind() {
        lpc::CONNECTION_REQUEST => match classify_peer(header.client_process, policy) {
            Ok(peer) => MessagePlan::Connect(peer),
            Err(why) => MessagePlan::RefusePeer {
                client_pid: header.client_process,
                why,
            },
        },
        lpc::DATAGRAM => MessagePlan::Datagram { release },
        // Replying releases a request, so it never needs a separate release.
        lpc::REQUEST => MessagePlan::Request,
        lpc::PORT_CLOSED | lpc::CLIENT_DIED => MessagePlan::Disconnect { release },
        _ => MessagePlan::Other { release },
    }
}

/// How to answer a connection request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectAnswer {
    /// Accept, returning this encoded HelloReply in the connection information.
    Accept(Vec<u8>),
    /// Refuse, returning this encoded HelloReply in the connection information.
    Refuse(Vec<u8>),
}

/// The port operations that follow a message, in the order the backend performs them:
/// answer the connection, reply, release, close.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AfterDispatch {
    pub connect: Option<ConnectAnswer>,
    /// Reply to a request with this MessageId.
    pub reply: Option<u32>,
    /// Release an ALPC message that asked for it.
    pub release: bool,
    /// Close this connection's communication port and forget its context.
    pub close: bool,
}

/// Combines the plan with the dispatcher's answer (`None` when the plan does not dispatch).
///
/// The port's own rules win over the dispatcher: a connection request is always answered, a
/// request is always replied to with *its* MessageId (or its sender would wait forever), and a
/// closed peer's port is always closed.
pub fn after_dispatch(plan: &MessagePlan, header: &PortMessage, action: Option<Action>) -> AfterDispatch {
    let close_asked = matches!(action, Some(Action::Close));
    match *plan {
        MessagePlan::Connect(_) => AfterDispatch {
            connect: Some(match action {
                Some(Action::Accept { reply }) => ConnectAnswer::Accept(reply),
                Some(Action::Refuse { reply }) => ConnectAnswer::Refuse(reply),
                _ => ConnectAnswer::Refuse(refusal_reply(
                    RefuseReason::Malformed,
                    "the server did not answer the handshake",
                )),
            }),
            ..AfterDispatch::default()
        },
        MessagePlan::RefusePeer { why, .. } => AfterDispatch {
            connect: Some(ConnectAnswer::Refuse(refusal_reply(
                RefuseReason::Unauthorised,
                why,
            ))),
            ..AfterDispatch::default()
        },
        MessagePlan::Datagram { release } | MessagePlan::Other { release } => AfterDispatch {
            release,
            close: close_asked,
            ..AfterDispatch::default()
        },
        MessagePlan::Request => AfterDispatch {
            reply: Some(header.message_id),
            close: close_asked,
            ..AfterDispatch::default()
        },
        MessagePlan::Disconnect { release } => AfterDispatch {
            release,
            close: true,
            ..AfterDispatch::default()
        },
    }
}

/// An encoded HelloReply refusing a producer, for refusals the transport makes itself.
pub fn refusal_reply(reason: RefuseReason, text: &str) -> Vec<u8> {
    let mut reply = vec![0u8; HELLO_REPLY_MAX_LEN];
    let len = HelloReply::Refuse {
        reason,
        min_version: MIN_VERSION,
        max_version: VERSION,
        text: truncate_utf8(text, lpcmon_protocol::message::REPLY_TEXT_MAX),
    }
    .encode(&mut reply)
    .unwrap_or(0);
    reply.truncate(len);
    reply
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The header the kernel would deliver if this connection's peer had closed its port: used to
/// tell the dispatcher about connections the server ends itself (an accept that failed, a
/// shutdown), so their sessions close the same way.
pub fn synthetic_close(client_process: u64, client_thread: u64) -> PortMessage {
    PortMessage::new(lpc::PORT_CLOSED, 0, client_process, client_thread, 0)
}

/// The header of a reply to `request`: no data, and the request's MessageId, CallbackId and
/// ClientId, which is how the kernel finds the waiting sender. The type stays 0, as in every
/// message a user-mode sender builds; the kernel sets `LPC_REPLY` itself.
pub fn reply_header(request: &PortMessage) -> PortMessage {
    PortMessage {
        data_length: 0,
        total_length: PORT_MESSAGE_SIZE as u16,
        client_process: request.client_process,
        client_thread: request.client_thread,
        message_id: request.message_id,
        // The CallbackId shares this union; copying all of it carries it over.
        client_view_size: request.client_view_size,
        ..PortMessage::default()
    }
}

/// The header of the answer to a connection request, carrying `reply_len` bytes of
/// connection information back to the client. MessageId and ClientId stay those of the
/// request, which is how the kernel matches the answer to the waiting client; the type and the
/// view size are left 0, as for any message a user-mode server sends.
pub fn connect_answer_header(request: &PortMessage, reply_len: usize) -> PortMessage {
    let len = reply_len.min(lpcmon_protocol::port_message::LPC_MAX_CONNECTION_INFO) as u16;
    PortMessage {
        data_length: len,
        total_length: PORT_MESSAGE_SIZE as u16 + len,
        client_process: request.client_process,
        client_thread: request.client_thread,
        message_id: request.message_id,
        ..PortMessage::default()
    }
}

/// The header of a datagram or request a client sends with `data_len` bytes. The kernel fills
/// in the type, ClientId and MessageId.
pub fn send_header(data_len: usize) -> PortMessage {
    let len = data_len.min(usize::from(u16::MAX) - PORT_MESSAGE_SIZE) as u16;
    PortMessage {
        data_length: len,
        total_length: PORT_MESSAGE_SIZE as u16 + len,
        ..PortMessage::default()
    }
}

/// What the receive loop does after a receive call returned `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopStep {
    /// A message is in the buffer.
    Dispatch,
    /// Nothing arrived (timeout, alert, APC): run the timers, check the stop flag, go on.
    Idle,
    /// A transient shortage (memory, quota): wait a little and receive again.
    Retry,
    /// The port is unusable: leave the loop with this error.
    Fatal,
}

/// How many transient failures in a row the loop tolerates before it gives up.
pub const MAX_CONSECUTIVE_RETRIES: u32 = 50;

/// Classifies a receive status. `consecutive_retries` counts the `Retry` steps since the last
/// message or timeout.
pub fn on_receive_status(status: u32, consecutive_retries: u32) -> LoopStep {
    match status {
        status::SUCCESS => LoopStep::Dispatch,
        status::TIMEOUT | status::ALERTED | status::USER_APC => LoopStep::Idle,
        status::NO_MEMORY | status::INSUFFICIENT_RESOURCES | status::QUOTA_EXCEEDED
            if consecutive_retries < MAX_CONSECUTIVE_RETRIES =>
        {
            LoopStep::Retry
        }
        _ => LoopStep::Fatal,
    }
}

/// Whether `status` is an NT success or informational code (`NT_SUCCESS`).
pub fn nt_success(status: u32) -> bool {
    (status as i32) >= 0
}

/// NTSTATUS values lpcmon names or acts on (ntstatus.h).
pub mod status {
    pub const SUCCESS: u32 = 0x0000_0000;
    pub const USER_APC: u32 = 0x0000_00C0;
    pub const ALERTED: u32 = 0x0000_0101;
    pub const TIMEOUT: u32 = 0x0000_0102;
    pub const NOT_IMPLEMENTED: u32 = 0xC000_0002;
    pub const INVALID_INFO_CLASS: u32 = 0xC000_0003;
    pub const INVALID_HANDLE: u32 = 0xC000_0008;
    pub const INVALID_CID: u32 = 0xC000_000B;
    pub const INVALID_PARAMETER: u32 = 0xC000_000D;
    pub const NO_MEMORY: u32 = 0xC000_0017;
    pub const ACCESS_DENIED: u32 = 0xC000_0022;
    pub const BUFFER_TOO_SMALL: u32 = 0xC000_0023;
    pub const OBJECT_TYPE_MISMATCH: u32 = 0xC000_0024;
    pub const PORT_MESSAGE_TOO_LONG: u32 = 0xC000_002F;
    pub const OBJECT_NAME_INVALID: u32 = 0xC000_0033;
    pub const OBJECT_NAME_NOT_FOUND: u32 = 0xC000_0034;
    pub const OBJECT_NAME_COLLISION: u32 = 0xC000_0035;
    pub const PORT_DISCONNECTED: u32 = 0xC000_0037;
    pub const OBJECT_PATH_INVALID: u32 = 0xC000_0039;
    pub const OBJECT_PATH_NOT_FOUND: u32 = 0xC000_003A;
    pub const OBJECT_PATH_SYNTAX_BAD: u32 = 0xC000_003B;
    pub const PORT_CONNECTION_REFUSED: u32 = 0xC000_0041;
    pub const INVALID_PORT_HANDLE: u32 = 0xC000_0042;
    pub const QUOTA_EXCEEDED: u32 = 0xC000_0044;
    pub const THREAD_IS_TERMINATING: u32 = 0xC000_004B;
    pub const PRIVILEGE_NOT_HELD: u32 = 0xC000_0061;
    pub const PROCEDURE_NOT_FOUND: u32 = 0xC000_007A;
    pub const INSUFFICIENT_RESOURCES: u32 = 0xC000_009A;
    pub const CANCELLED: u32 = 0xC000_0120;
    pub const REPLY_MESSAGE_MISMATCH: u32 = 0xC000_021F;
    pub const LPC_REPLY_LOST: u32 = 0xC000_0253;
    pub const SERVER_SID_MISMATCH: u32 = 0xC000_02A0;
    pub const PORT_CLOSED: u32 = 0xC000_0700;
    pub const MESSAGE_LOST: u32 = 0xC000_0701;
    pub const INVALID_MESSAGE: u32 = 0xC000_0702;
    pub const REQUEST_CANCELED: u32 = 0xC000_0703;
    pub const LPC_RECEIVE_BUFFER_EXPECTED: u32 = 0xC000_0705;
    pub const LPC_INVALID_CONNECTION_USAGE: u32 = 0xC000_0706;
    pub const LPC_REQUESTS_NOT_ALLOWED: u32 = 0xC000_0707;
}

/// The symbolic name of an NTSTATUS, or `"unknown NTSTATUS"`.
pub fn status_name(code: u32) -> &'static str {
    use status::*;
    match code {
        SUCCESS => "STATUS_SUCCESS",
        USER_APC => "STATUS_USER_APC",
        ALERTED => "STATUS_ALERTED",
        TIMEOUT => "STATUS_TIMEOUT",
        NOT_IMPLEMENTED => "STATUS_NOT_IMPLEMENTED",
        INVALID_INFO_CLASS => "STATUS_INVALID_INFO_CLASS",
        INVALID_HANDLE => "STATUS_INVALID_HANDLE",
        INVALID_CID => "STATUS_INVALID_CID",
        INVALID_PARAMETER => "STATUS_INVALID_PARAMETER",
        NO_MEMORY => "STATUS_NO_MEMORY",
        ACCESS_DENIED => "STATUS_ACCESS_DENIED",
        BUFFER_TOO_SMALL => "STATUS_BUFFER_TOO_SMALL",
        OBJECT_TYPE_MISMATCH => "STATUS_OBJECT_TYPE_MISMATCH",
        PORT_MESSAGE_TOO_LONG => "STATUS_PORT_MESSAGE_TOO_LONG",
        OBJECT_NAME_INVALID => "STATUS_OBJECT_NAME_INVALID",
        OBJECT_NAME_NOT_FOUND => "STATUS_OBJECT_NAME_NOT_FOUND",
        OBJECT_NAME_COLLISION => "STATUS_OBJECT_NAME_COLLISION",
        PORT_DISCONNECTED => "STATUS_PORT_DISCONNECTED",
        OBJECT_PATH_INVALID => "STATUS_OBJECT_PATH_INVALID",
        OBJECT_PATH_NOT_FOUND => "STATUS_OBJECT_PATH_NOT_FOUND",
        OBJECT_PATH_SYNTAX_BAD => "STATUS_OBJECT_PATH_SYNTAX_BAD",
        PORT_CONNECTION_REFUSED => "STATUS_PORT_CONNECTION_REFUSED",
        INVALID_PORT_HANDLE => "STATUS_INVALID_PORT_HANDLE",
        QUOTA_EXCEEDED => "STATUS_QUOTA_EXCEEDED",
        THREAD_IS_TERMINATING => "STATUS_THREAD_IS_TERMINATING",
        PRIVILEGE_NOT_HELD => "STATUS_PRIVILEGE_NOT_HELD",
        PROCEDURE_NOT_FOUND => "STATUS_PROCEDURE_NOT_FOUND",
        INSUFFICIENT_RESOURCES => "STATUS_INSUFFICIENT_RESOURCES",
        CANCELLED => "STATUS_CANCELLED",
        REPLY_MESSAGE_MISMATCH => "STATUS_REPLY_MESSAGE_MISMATCH",
        LPC_REPLY_LOST => "STATUS_LPC_REPLY_LOST",
        SERVER_SID_MISMATCH => "STATUS_SERVER_SID_MISMATCH",
        PORT_CLOSED => "STATUS_PORT_CLOSED",
        MESSAGE_LOST => "STATUS_MESSAGE_LOST",
        INVALID_MESSAGE => "STATUS_INVALID_MESSAGE",
        REQUEST_CANCELED => "STATUS_REQUEST_CANCELED",
        LPC_RECEIVE_BUFFER_EXPECTED => "STATUS_LPC_RECEIVE_BUFFER_EXPECTED",
        LPC_INVALID_CONNECTION_USAGE => "STATUS_LPC_INVALID_CONNECTION_USAGE",
        LPC_REQUESTS_NOT_ALLOWED => "STATUS_LPC_REQUESTS_NOT_ALLOWED",
        _ => "unknown NTSTATUS",
    }
}

/// A failed native call as a [`PortError`].
pub fn nt_error(call: &'static str, code: u32) -> PortError {
    PortError::NtStatus {
        call,
        status: code,
        name: status_name(code),
    }
}

/// A failed client call as the [`PortError`] a producer acts on: a missing port and a closed
/// connection get their own variants, since a producer backs off and reconnects on both.
pub fn client_error(call: &'static str, code: u32, port: &str) -> PortError {
    match code {
        status::OBJECT_NAME_NOT_FOUND | status::OBJECT_PATH_NOT_FOUND => PortError::NotFound {
            port: port.to_owned(),
        },
        status::PORT_DISCONNECTED | status::PORT_CLOSED | status::INVALID_PORT_HANDLE => PortError::Closed,
        _ => nt_error(call, code),
    }
}

/// The live connections of one port server, keyed by the value the server hands the kernel as
/// each connection's PortContext.
///
/// The key is a counter, not a pointer: a message that arrives for a connection the server has
/// already closed then finds nothing, instead of reading freed memory. Keys are never 0, which
/// the kernel reports for messages on the connection port itself.
#[derive(Debug)]
pub struct ConnectionTable<H> {
    next_key: usize,
    entries: HashMap<usize, Connection<H>>,
}

/// One accepted connection.
#[derive(Debug, PartialEq, Eq)]
pub struct Connection<H> {
    pub conn: ConnId,
    pub client_process: u64,
    pub client_thread: u64,
    /// Our end of it: the communication port handle.
    pub handle: H,
}

impl<H> Default for ConnectionTable<H> {
    fn default() -> Self {
        ConnectionTable {
            next_key: 0,
            entries: HashMap::new(),
        }
    }
}

impl<H> ConnectionTable<H> {
    /// The key to give the kernel for the next connection. Unused keys are simply skipped.
    pub fn allocate_key(&mut self) -> NonZeroUsize {
        loop {
            self.next_key = self.next_key.wrapping_add(1);
            if let Some(key) = NonZeroUsize::new(self.next_key)
                && !self.entries.contains_key(&key.get())
            {
                return key;
            }
        }
    }

    pub fn insert(&mut self, key: NonZeroUsize, connection: Connection<H>) {
        self.entries.insert(key.get(), connection);
    }

    /// The connection a message's PortContext names, if it is still open.
    pub fn get(&self, key: usize) -> Option<&Connection<H>> {
        self.entries.get(&key)
    }

    pub fn remove(&mut self, key: usize) -> Option<Connection<H>> {
        self.entries.remove(&key)
    }

    /// Removes every connection, for shutdown.
    pub fn drain(&mut self) -> Vec<Connection<H>> {
        self.entries.drain().map(|(_, c)| c).collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lpcmon_protocol::Message;

    const POLICY: PeerPolicy = PeerPolicy {
        allow_user_mode_producers: false,
    };
    const OPEN_POLICY: PeerPolicy = PeerPolicy {
        allow_user_mode_producers: true,
    };

    /// A header as the kernel delivers it: type with its flag bits, lengths, ClientId,
    /// MessageId, and for requests a CallbackId in the last union.
    fn kernel_header(message_type: u16, data_len: usize, pid: u64, tid: u64, id: u32) -> PortMessage {
        let mut h = PortMessage::new(0, data_len, pid, tid, id);
        h.message_type = message_type;
        h
    }

    fn refusal_of(reply: &[u8]) -> (RefuseReason, String) {
        match Message::decode(reply, reply.len()).unwrap() {
            Message::HelloReply(HelloReply::Refuse { reason, text, .. }) => (reason, text.to_owned()),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// One step of a recorded sequence: the message, the dispatcher's answer, the expected
    /// plan and port operations.
    struct Step {
        header: PortMessage,
        action: Option<Action>,
        plan: MessagePlan,
        after: AfterDispatch,
    }

    fn run(policy: PeerPolicy, steps: Vec<Step>) {
        for (i, step) in steps.into_iter().enumerate() {
            let plan = on_message(&step.header, policy);
            assert_eq!(plan, step.plan, "plan of step {i}");
            assert_eq!(plan.dispatches(), step.action.is_some(), "dispatch of step {i}");
            assert_eq!(
                after_dispatch(&plan, &step.header, step.action),
                step.after,
                "step {i}"
            );
        }
    }

    #[test]
    fn driver_session_as_the_kernel_delivers_it() {
        let accept = vec![1, 2, 3];
        run(
            POLICY,
            vec![
                // ZwConnectPort from the driver's system thread: kernel-mode flag set.
                Step {
                    header: kernel_header(
                        u16::from(lpc::CONNECTION_REQUEST) | lpc::KERNELMODE_MESSAGE,
                        60,
                        4,
                        0x98,
                        11,
                    ),
                    action: Some(Action::Accept {
                        reply: accept.clone(),
                    }),
                    plan: MessagePlan::Connect(Peer::Driver),
                    after: AfterDispatch {
                        connect: Some(ConnectAnswer::Accept(accept)),
                        ..Default::default()
                    },
                },
                // ZwRequestPort datagram.
                Step {
                    header: kernel_header(
                        u16::from(lpc::DATAGRAM) | lpc::KERNELMODE_MESSAGE,
                        300,
                        4,
                        0x98,
                        12,
                    ),
                    action: Some(Action::None),
                    plan: MessagePlan::Datagram { release: false },
                    after: AfterDispatch::default(),
                },
                // A datagram ALPC kept for us: it must be released.
                Step {
                    header: kernel_header(
                        u16::from(lpc::DATAGRAM) | lpc::CONTINUATION_REQUIRED,
                        300,
                        4,
                        0x98,
                        13,
                    ),
                    action: Some(Action::None),
                    plan: MessagePlan::Datagram { release: true },
                    after: AfterDispatch {
                        release: true,
                        ..Default::default()
                    },
                },
                // ZwRequestWaitReplyPort fallback: reply with the same MessageId.
                Step {
                    header: kernel_header(u16::from(lpc::REQUEST), 200, 4, 0x98, 14),
                    action: Some(Action::Reply { message_id: 14 }),
                    plan: MessagePlan::Request,
                    after: AfterDispatch {
                        reply: Some(14),
                        ..Default::default()
                    },
                },
                Step {
                    header: kernel_header(u16::from(lpc::PORT_CLOSED), 0, 4, 0x98, 15),
                    action: Some(Action::Close),
                    plan: MessagePlan::Disconnect { release: false },
                    after: AfterDispatch {
                        close: true,
                        ..Default::default()
                    },
                },
            ],
        );
    }

    #[test]
    fn client_died_closes_even_if_the_dispatcher_does_not_ask() {
        run(
            POLICY,
            vec![Step {
                // LPC_CLIENT_DIED carries the thread's CreateTime (8 bytes).
                header: kernel_header(u16::from(lpc::CLIENT_DIED), 8, 4, 0x98, 20),
                action: Some(Action::None),
                plan: MessagePlan::Disconnect { release: false },
                after: AfterDispatch {
                    close: true,
                    ..Default::default()
                },
            }],
        );
    }

    #[test]
    fn user_mode_peer_without_permission_is_refused_before_dispatch() {
        let header = kernel_header(u16::from(lpc::CONNECTION_REQUEST), 60, 4242, 77, 30);
        let plan = on_message(&header, POLICY);
        assert_eq!(
            plan,
            MessagePlan::RefusePeer {
                client_pid: 4242,
                why: USER_MODE_REFUSED
            }
        );
        assert!(!plan.dispatches());
        let after = after_dispatch(&plan, &header, None);
        let Some(ConnectAnswer::Refuse(reply)) = after.connect else {
            panic!("expected a refusal, got {after:?}");
        };
        let (reason, text) = refusal_of(&reply);
        assert_eq!(reason, RefuseReason::Unauthorised);
        assert_eq!(text, USER_MODE_REFUSED);
        // The client reads it with the same function every producer uses.
        assert!(matches!(
            crate::client::read_hello_reply(&reply),
            Err(PortError::Refused {
                reason: "unauthorised",
                ..
            })
        ));
    }

    #[test]
    fn user_mode_peer_with_permission_reaches_the_dispatcher() {
        let refuse = vec![9, 9];
        run(
            OPEN_POLICY,
            vec![Step {
                header: kernel_header(u16::from(lpc::CONNECTION_REQUEST), 60, 4242, 77, 31),
                action: Some(Action::Refuse {
                    reply: refuse.clone(),
                }),
                plan: MessagePlan::Connect(Peer::UserMode { pid: 4242 }),
                after: AfterDispatch {
                    connect: Some(ConnectAnswer::Refuse(refuse)),
                    ..Default::default()
                },
            }],
        );
    }

    #[test]
    fn a_connection_request_is_always_answered() {
        let header = kernel_header(u16::from(lpc::CONNECTION_REQUEST), 60, 4, 8, 40);
        let plan = on_message(&header, POLICY);
        for action in [Action::None, Action::Close, Action::Reply { message_id: 40 }] {
            let after = after_dispatch(&plan, &header, Some(action));
            let Some(ConnectAnswer::Refuse(reply)) = after.connect else {
                panic!("expected a refusal, got {after:?}");
            };
            assert_eq!(refusal_of(&reply).0, RefuseReason::Malformed);
        }
    }

    #[test]
    fn a_request_is_replied_to_with_its_own_message_id_whatever_the_dispatcher_says() {
        let header = kernel_header(u16::from(lpc::REQUEST), 10, 4, 8, 50);
        let plan = on_message(&header, POLICY);
        assert_eq!(after_dispatch(&plan, &header, Some(Action::None)).reply, Some(50));
        assert_eq!(
            after_dispatch(&plan, &header, Some(Action::Reply { message_id: 7 })).reply,
            Some(50)
        );
        let closing = after_dispatch(&plan, &header, Some(Action::Close));
        assert_eq!((closing.reply, closing.close), (Some(50), true));
    }

    #[test]
    fn unknown_and_unexpected_types_are_counted_not_acted_on() {
        for ty in [
            u16::from(lpc::REPLY),
            u16::from(lpc::LOST_REPLY),
            u16::from(lpc::EXCEPTION),
            u16::from(lpc::ERROR_EVENT),
            0x00EE,
        ] {
            let header = kernel_header(ty, 0, 4, 8, 60);
            let plan = on_message(&header, POLICY);
            assert_eq!(plan, MessagePlan::Other { release: false }, "type {ty:#x}");
            assert!(plan.dispatches());
            assert_eq!(
                after_dispatch(&plan, &header, Some(Action::None)),
                AfterDispatch::default()
            );
        }
        let kept = kernel_header(0x00EE | lpc::CONTINUATION_REQUIRED, 0, 4, 8, 61);
        let plan = on_message(&kept, POLICY);
        assert!(after_dispatch(&plan, &kept, Some(Action::None)).release);
    }

    #[test]
    fn datagram_the_dispatcher_rejects_closes_the_connection() {
        let header = kernel_header(u16::from(lpc::DATAGRAM), 10, 4, 8, 70);
        let plan = on_message(&header, POLICY);
        let after = after_dispatch(&plan, &header, Some(Action::Close));
        assert!(after.close);
        // A Reply on a datagram means nothing: nobody waits for it.
        assert_eq!(
            after_dispatch(&plan, &header, Some(Action::Reply { message_id: 70 })),
            AfterDispatch::default()
        );
    }

    #[test]
    fn classify_peer_follows_the_invariant() {
        assert_eq!(classify_peer(4, POLICY), Ok(Peer::Driver));
        assert_eq!(classify_peer(4, OPEN_POLICY), Ok(Peer::Driver));
        assert_eq!(classify_peer(0, POLICY), Err(USER_MODE_REFUSED));
        assert_eq!(classify_peer(8, POLICY), Err(USER_MODE_REFUSED));
        assert_eq!(classify_peer(8, OPEN_POLICY), Ok(Peer::UserMode { pid: 8 }));
    }

    #[test]
    fn receive_statuses() {
        assert_eq!(on_receive_status(status::SUCCESS, 0), LoopStep::Dispatch);
        // STATUS_TIMEOUT is a success code: it must not be mistaken for a message.
        assert!(nt_success(status::TIMEOUT));
        assert_eq!(on_receive_status(status::TIMEOUT, 0), LoopStep::Idle);
        assert_eq!(on_receive_status(status::ALERTED, 0), LoopStep::Idle);
        assert_eq!(on_receive_status(status::USER_APC, 3), LoopStep::Idle);
        assert_eq!(on_receive_status(status::NO_MEMORY, 0), LoopStep::Retry);
        assert_eq!(
            on_receive_status(status::INSUFFICIENT_RESOURCES, MAX_CONSECUTIVE_RETRIES - 1),
            LoopStep::Retry
        );
        assert_eq!(
            on_receive_status(status::QUOTA_EXCEEDED, MAX_CONSECUTIVE_RETRIES),
            LoopStep::Fatal
        );
        for fatal in [
            status::INVALID_HANDLE,
            status::NOT_IMPLEMENTED,
            status::BUFFER_TOO_SMALL,
            status::PORT_DISCONNECTED,
            0xC0DE_0001,
        ] {
            assert_eq!(on_receive_status(fatal, 0), LoopStep::Fatal, "{fatal:#x}");
        }
    }

    #[test]
    fn status_names_and_errors() {
        assert_eq!(status_name(0xC000_0002), "STATUS_NOT_IMPLEMENTED");
        assert_eq!(status_name(0xC000_0035), "STATUS_OBJECT_NAME_COLLISION");
        assert_eq!(status_name(0xC000_02A0), "STATUS_SERVER_SID_MISMATCH");
        assert_eq!(status_name(0x1234_5678), "unknown NTSTATUS");
        let e = nt_error("NtCreatePort", status::NOT_IMPLEMENTED);
        assert_eq!(
            e.to_string(),
            "NtCreatePort failed with NTSTATUS 0xC0000002 (STATUS_NOT_IMPLEMENTED)"
        );
        assert!(matches!(
            client_error("NtConnectPort", status::OBJECT_NAME_NOT_FOUND, r"\P"),
            PortError::NotFound { port } if port == r"\P"
        ));
        assert!(matches!(
            client_error("NtRequestPort", status::PORT_DISCONNECTED, r"\P"),
            PortError::Closed
        ));
        assert!(matches!(
            client_error("NtConnectPort", status::SERVER_SID_MISMATCH, r"\P"),
            PortError::NtStatus {
                name: "STATUS_SERVER_SID_MISMATCH",
                ..
            }
        ));
    }

    #[test]
    fn port_names() {
        assert_eq!(validate_port_name(DEFAULT_PORT_NAME), Ok(()));
        assert!(validate_port_name(r"\RPC Control\LpcMon").is_err());
        assert!(validate_port_name(r"\rpc control\x").is_err());
        assert!(validate_port_name(r"\RPC Control").is_err());
        assert_eq!(validate_port_name(r"\RPC ControlX"), Ok(()));
        assert!(validate_port_name("LpcMonEventPort").is_err());
        assert!(validate_port_name(r"\").is_err());
        assert!(validate_port_name("\\a\0b").is_err());
        assert!(validate_port_name(&format!("\\{}", "x".repeat(40_000))).is_err());
    }

    #[test]
    fn security_descriptors() {
        assert_eq!(port_sddl(false), "D:P(A;;GA;;;SY)");
        assert_eq!(port_sddl(true), "D:P(A;;GA;;;SY)(A;;GA;;;BA)");
    }

    #[test]
    fn api_names_and_limits() {
        assert_eq!("ALPC".parse::<PortApi>(), Ok(PortApi::Alpc));
        assert_eq!("lpc".parse::<PortApi>(), Ok(PortApi::Lpc));
        assert!("rpc".parse::<PortApi>().is_err());
        assert_eq!(PortApi::default().name(), "alpc");
        assert_eq!(PortApi::Lpc.data_limit(0xFFFF), 608);
        assert_eq!(PortApi::Alpc.data_limit(0xFFEF), 0xFFEF - 40);
        assert_eq!(PortApi::Alpc.data_limit(1 << 20), 0xFFFF - 40);
    }

    #[test]
    fn headers_the_server_sends() {
        let mut request = kernel_header(u16::from(lpc::REQUEST), 100, 4, 8, 90);
        request.client_view_size = 0x5; // CallbackId
        let reply = reply_header(&request);
        assert_eq!(
            (reply.data_length, reply.total_length, reply.message_type),
            (0, 40, 0)
        );
        assert_eq!((reply.message_id, reply.client_view_size), (90, 5));
        assert_eq!((reply.client_process, reply.client_thread), (4, 8));

        let connect = kernel_header(u16::from(lpc::CONNECTION_REQUEST), 60, 4, 8, 91);
        let answer = connect_answer_header(&connect, 17);
        assert_eq!(
            (answer.data_length, answer.total_length, answer.message_id),
            (17, 57, 91)
        );
        assert_eq!(
            (answer.client_process, answer.client_thread, answer.message_type),
            (4, 8, 0)
        );
        assert_eq!(connect_answer_header(&connect, 500).data_length, 128);

        let send = send_header(608);
        assert_eq!(
            (send.data_length, send.total_length, send.message_type),
            (608, 648, 0)
        );

        let close = synthetic_close(4, 8);
        assert_eq!(close.kind(), lpc::PORT_CLOSED);
        assert_eq!(
            on_message(&close, POLICY),
            MessagePlan::Disconnect { release: false }
        );
    }

    #[test]
    fn refusal_text_is_cut_to_what_the_wire_carries() {
        let long = "é".repeat(200);
        let (_, text) = refusal_of(&refusal_reply(RefuseReason::Unauthorised, &long));
        assert!(text.len() <= lpcmon_protocol::message::REPLY_TEXT_MAX);
        assert!(text.chars().all(|c| c == 'é'));
    }

    #[test]
    fn connection_table_keys_are_never_zero_and_stale_keys_find_nothing() {
        let mut table = ConnectionTable::<&str>::default();
        let a = table.allocate_key();
        table.insert(
            a,
            Connection {
                conn: 1,
                client_process: 4,
                client_thread: 8,
                handle: "a",
            },
        );
        let b = table.allocate_key();
        assert_ne!(a, b);
        table.insert(
            b,
            Connection {
                conn: 2,
                client_process: 4,
                client_thread: 9,
                handle: "b",
            },
        );
        assert_eq!(table.get(a.get()).map(|c| c.conn), Some(1));
        assert!(table.get(0).is_none());
        assert_eq!(table.remove(a.get()).map(|c| c.handle), Some("a"));
        assert!(
            table.get(a.get()).is_none(),
            "a closed connection's key finds nothing"
        );
        assert_eq!(table.len(), 1);
        assert_eq!(table.drain().len(), 1);
        assert!(table.is_empty());

        // Wrapping skips 0 and keys still in use.
        let mut table = ConnectionTable::<()> {
            next_key: usize::MAX - 1,
            entries: HashMap::new(),
        };
        table.entries.insert(
            1,
            Connection {
                conn: 9,
                client_process: 4,
                client_thread: 1,
                handle: (),
            },
        );
        assert_eq!(table.allocate_key().get(), usize::MAX);
        assert_eq!(table.allocate_key().get(), 2);
    }
}
