//! The worker's side of the port: what a connect's status and reply mean, flow control, and
//! how a message is framed behind a `PORT_MESSAGE` header.

use lpcmon_nt::alpc::SendKind;
use lpcmon_nt::{ConnectStatus, NtStatus, status};

use super::MAX_MESSAGE;
use crate::fragment::MIN_MESSAGE_LIMIT;
use crate::message::{HelloReply, Message, RefuseReason};
use crate::port_message::{LPC_MAX_CONNECTION_INFO, MAX_TOTAL_LENGTH, PORT_MESSAGE_SIZE, PortMessage};
use crate::producer::ConnectFailure;

/// What a connect call's result means for the worker and for the handle it may have returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectOutcome {
    /// For [`crate::producer::Worker::on_connect`]: the agreed message limit, or why not.
    pub result: Result<usize, ConnectFailure>,
    /// Whether to keep the port handle. When false, any handle the call returned is closed.
    pub keep_port: bool,
    /// The server's reason, when it answered a successful connect with a refusal (a refused
    /// connect returns no reply to read).
    pub refusal: Option<RefuseReason>,
}

/// Decides a connect: `status` of `ZwAlpcConnectPort` / `Zw(Secure)ConnectPort`, `reply` the
/// connection information that came back (the server's HelloReply), and `port_max_total` the
/// `MaxMessageLength` (header included) the call reported, if it reports one.
///
/// What the status means is [`ConnectStatus::of`]'s decision, shared with the user-mode
/// clients. The reply is read only on success: on a refusal the kernel copies no connection
/// information back, so the buffer still holds the driver's own Hello.
pub fn connect_outcome(status: NtStatus, reply: &[u8], port_max_total: Option<usize>) -> ConnectOutcome {
    let fail = |failure, refusal| ConnectOutcome {
        result: Err(failure),
        keep_port: false,
        refusal,
    };
    match ConnectStatus::of(status) {
        ConnectStatus::Connected => match Message::decode(reply, LPC_MAX_CONNECTION_INFO) {
            Ok(Message::HelloReply(HelloReply::Accept { max_message, .. })) => {
                let port_limit = port_max_total.map_or(usize::MAX, |t| t.saturating_sub(PORT_MESSAGE_SIZE));
                let limit = (max_message as usize).min(port_limit).min(MAX_MESSAGE);
                if limit < MIN_MESSAGE_LIMIT {
                    return fail(ConnectFailure::Unavailable, None);
                }
                ConnectOutcome {
                    result: Ok(limit),
                    keep_port: true,
                    refusal: None,
                }
            }
            Ok(Message::HelloReply(HelloReply::Refuse { reason, .. })) => {
                fail(ConnectFailure::Refused, Some(reason))
            }
            // Connected to something that does not speak lpcmon: leave it.
            _ => fail(ConnectFailure::Unavailable, None),
        },
        ConnectStatus::Refused => fail(ConnectFailure::Refused, None),
        // Absent server, timeout, and every transient error: back off and retry.
        ConnectStatus::TimedOut | ConnectStatus::NotFound | ConnectStatus::Unavailable => {
            fail(ConnectFailure::Unavailable, None)
        }
    }
}

/// Messages the driver may have queued at the server before it asks the server to prove it is
/// keeping up. The kernel does not appear to enforce `MaxPoolUsage` on queued datagrams, so
/// without this a stalled server would let the driver's datagrams grow kernel pool without
/// bound (docs/windows.md, "Flow control"). 64 messages of at most 4 KiB: 256 KiB per
/// connection at worst.
pub const FLOW_WINDOW: u32 = 64;
/// How long the flow-control request waits for the server's reply.
pub const FLOW_PROBE_TIMEOUT_NS: u64 = 1_000_000_000;

/// The driver's flow control: every [`FLOW_WINDOW`]-th message goes as a synchronous request
/// with a timeout instead of a datagram. The server replies to a request only after it has
/// received everything queued before it, so a reply proves the queue drained. A request that
/// times out leaves it queued (the server gets it when it catches up), but the connection is
/// then *stalled*: nothing more is queued on it; the next send fails without a kernel call, the
/// worker counts it as `producer_send` loss and reconnects, and a connect cannot succeed until
/// the server receives again. So at most one window of messages per connection sits in the
/// kernel. The driver (`driver/src/worker.rs`) and its simulation (`protocol/tests/driver_sim.rs`)
/// both run this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowControl {
    window: u32,
    since_probe: u32,
    stalled: bool,
}

impl FlowControl {
    /// Flow control with a probe every `window` messages (at least 1).
    pub const fn new(window: u32) -> Self {
        FlowControl {
            window: if window == 0 { 1 } else { window },
            since_probe: 0,
            stalled: false,
        }
    }

    /// A new connection starts with nothing queued.
    pub fn reset(&mut self) {
        self.since_probe = 0;
        self.stalled = false;
    }

    /// How to send the next message, or `None` when the server has not answered the last
    /// probe: the message must not be queued (the caller reports the send as failed).
    pub fn next_send(&mut self) -> Option<SendKind> {
        if self.stalled {
            return None;
        }
        self.since_probe += 1;
        if self.since_probe >= self.window {
            self.since_probe = 0;
            Some(SendKind::Request)
        } else {
            Some(SendKind::Datagram)
        }
    }

    /// Reads the status of a send of `kind`; returns whether the message counts as sent.
    pub fn on_sent(&mut self, kind: SendKind, result: NtStatus) -> bool {
        match (kind, result) {
            // A request that timed out is queued; the server will receive it. It is the
            // connection that is no longer trusted with more.
            (SendKind::Request, status::TIMEOUT) => {
                self.stalled = true;
                true
            }
            (_, st) => status::is_success(st),
        }
    }

    /// Whether the server has left a probe unanswered on this connection.
    pub fn is_stalled(&self) -> bool {
        self.stalled
    }
}

/// Writes `data` behind a `PORT_MESSAGE` header, laid out as a kernel-mode sender passes it:
/// `Type` 0 (the kernel makes it a datagram, a request or a connection request),
/// `DataInfoOffset` 0, lengths filled in, the rest zero. Returns the frame's length, or `None`
/// when it would exceed `max_total` (the port's `MaxMessageLength`), 64 KiB, or `out`.
pub fn frame_message(data: &[u8], max_total: usize, out: &mut [u8]) -> Option<usize> {
    let total = PORT_MESSAGE_SIZE.checked_add(data.len())?;
    if total > max_total || total > MAX_TOTAL_LENGTH || total > out.len() {
        return None;
    }
    PortMessage::new(0, data.len(), 0, 0, 0).write(out).ok()?;
    out[PORT_MESSAGE_SIZE..total].copy_from_slice(data);
    Some(total)
}

/// The data of a frame the kernel filled (an ALPC connection reply); empty if the header does
/// not describe a valid frame within `frame`.
pub fn frame_data(frame: &[u8]) -> &[u8] {
    let declared = frame
        .get(2..4)
        .map_or(0, |b| usize::from(u16::from_le_bytes([b[0], b[1]])));
    match frame.get(..declared) {
        Some(exact) => PortMessage::parse(exact).map_or(&[], |(_, data)| data),
        None => &[],
    }
}
