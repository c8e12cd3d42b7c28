//! What the port servers do with each receive result and each message, and the headers they
//! send back.

use lpcmon_nt::alpc::SendKind;
use lpcmon_nt::port_message::{LPC_MAX_CONNECTION_INFO, PORT_MESSAGE_SIZE};
use lpcmon_nt::{NtStatus, status};
use lpcmon_protocol::message::{MIN_VERSION, VERSION};
use lpcmon_protocol::server::Action;
use lpcmon_protocol::{HelloReply, PortMessage, RefuseReason, lpc};

use super::policy::{Peer, PeerPolicy, classify_peer};

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
    /// Refuse, with this encoded HelloReply as the answer's connection information. On Windows
    /// the kernel copies no connection information back to a refused client
    /// (docs/windows.md, "Connecting"), so only the server's log and counters keep the reason;
    /// it is passed anyway, as the accept call's message.
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

/// An encoded HelloReply refusing a producer, for refusals the transport makes itself (the
/// Windows receive loop's and the Unix server's). The text is cut to what the wire carries
/// (`HelloReply::to_vec`).
pub fn refusal_reply(reason: RefuseReason, text: &str) -> Vec<u8> {
    HelloReply::Refuse {
        reason,
        min_version: MIN_VERSION,
        max_version: VERSION,
        text,
    }
    .to_vec()
}

/// The header the kernel would deliver if this connection's peer had closed its port: used to
/// tell the dispatcher about connections the server ends itself (an accept that failed, a
/// shutdown), so their sessions close the same way.
pub fn synthetic_close(client_process: u64, client_thread: u64) -> PortMessage {
    PortMessage::new(lpc::PORT_CLOSED, 0, client_process, client_thread, 0)
}

/// A header-only message the server sends about one it received, and what kind of send it is
/// (which decides its ALPC flags, `lpcmon_nt::alpc::SendKind::flags`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outgoing {
    pub kind: SendKind,
    pub header: PortMessage,
}

impl Outgoing {
    /// The reply to `request`: the kernel finds the waiting sender by MessageId (and
    /// ClientId, CallbackId), types the message `LPC_REPLY`, and frees the request.
    pub fn reply(request: &PortMessage) -> Outgoing {
        Outgoing {
            kind: SendKind::Reply,
            header: about(request),
        }
    }

    /// The release of `received`, a message ALPC kept (`LPC_CONTINUATION_REQUIRED`): a header
    /// with its MessageId and no data. Resending the whole message would copy its payload to
    /// the kernel for nothing.
    pub fn release(received: &PortMessage) -> Outgoing {
        Outgoing {
            kind: SendKind::Release,
            header: about(received),
        }
    }

    /// `NtAlpcSendWaitReceivePort`'s `Flags` for this message.
    pub fn flags(&self) -> u32 {
        self.kind.flags()
    }
}

/// A header naming `received` and carrying no data: its MessageId, CallbackId and ClientId,
/// which is how the kernel finds the message. The type stays 0, as in every message a
/// user-mode sender builds; the kernel types it itself.
fn about(received: &PortMessage) -> PortMessage {
    PortMessage {
        data_length: 0,
        total_length: PORT_MESSAGE_SIZE as u16,
        client_process: received.client_process,
        client_thread: received.client_thread,
        message_id: received.message_id,
        // The CallbackId shares this union; copying all of it carries it over.
        client_view_size: received.client_view_size,
        ..PortMessage::default()
    }
}

/// The header of the answer to a connection request, carrying `reply_len` bytes of
/// connection information back to the client. MessageId and ClientId stay those of the
/// request, which is how the kernel matches the answer to the waiting client; the type and the
/// view size are left 0, as for any message a user-mode server sends.
pub fn connect_answer_header(request: &PortMessage, reply_len: usize) -> PortMessage {
    let len = reply_len.min(LPC_MAX_CONNECTION_INFO) as u16;
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
pub fn on_receive_status(status: NtStatus, consecutive_retries: u32) -> LoopStep {
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
