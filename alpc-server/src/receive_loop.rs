//! The receive loop the Windows port servers share, kept free of Windows types so it runs
//! (against a scripted port) in the Linux tests.
//!
//! ALPC and legacy LPC differ only in their system calls, so each implements [`PortOps`] and
//! this loop does the rest: it classifies every receive status and message with the pure
//! functions in [`crate::decide`], hands messages to the [`Dispatcher`], and carries out what
//! comes back, in a fixed order: answer a connection, reply, release, close.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lpcmon_nt::NtStatus;
use lpcmon_protocol::PortMessage;
use lpcmon_protocol::RefuseReason;
use lpcmon_protocol::server::ConnId;
use tracing::{debug, info, warn};

use crate::decide::{
    AfterDispatch, ConnectAnswer, Connection, ConnectionTable, LoopStep, MessagePlan, Outgoing, PeerPolicy,
    after_dispatch, nt_error, on_message, on_receive_status, status_name, synthetic_close,
};
use crate::dispatch::Dispatcher;
use crate::error::PortError;

/// The longest a receive waits, so a stop is noticed within it: a thread blocked in the kernel
/// cannot be woken by the stop flag. Timers do not depend on it: each receive waits only until
/// the dispatcher's next deadline ([`Dispatcher::poll_timeout`]).
const STOP_CHECK: Duration = Duration::from_millis(250);

/// The shortest receive wait, so a deadline just passed never turns the receive into a busy
/// poll.
const MIN_WAIT: Duration = Duration::from_millis(1);

/// Pause after a transient receive failure (out of memory or quota), so a starved system is
/// not spun on.
const RETRY_DELAY: Duration = Duration::from_millis(20);

/// The system calls of one kind of port server.
pub trait PortOps {
    /// Our end of one accepted connection (a communication port handle).
    type Handle;
    /// Where a received message lands: a `PORT_MESSAGE` and its data.
    type Buffer: AsRef<[u8]>;

    /// The receive call's name, for errors.
    const RECEIVE_CALL: &'static str;

    /// A buffer big enough for any message this port can deliver.
    fn receive_buffer(&self) -> Self::Buffer;

    /// Waits up to `timeout` for a message. Returns the NTSTATUS and the PortContext of the
    /// connection it came from (0 for the connection port itself).
    fn receive(&mut self, buffer: &mut Self::Buffer, timeout: Duration) -> (NtStatus, usize);

    /// Answers a connection request with `reply` as its connection information. `accept` is
    /// the PortContext to give an accepted connection, or `None` to refuse. Returns our end of
    /// an accepted connection.
    fn answer(
        &mut self,
        request: &PortMessage,
        reply: &[u8],
        accept: Option<NonZeroUsize>,
    ) -> Result<Option<Self::Handle>, PortError>;

    /// Sends the reply to a request (`reply.kind` is `SendKind::Reply`). `connection` is our
    /// end of the sender's connection, if known.
    fn reply(&mut self, reply: &Outgoing, connection: Option<&Self::Handle>) -> Result<(), PortError>;

    /// Releases a message the kernel kept for us (`release.kind` is `SendKind::Release`).
    fn release(&mut self, release: &Outgoing) -> Result<(), PortError>;

    /// Ends a connection and closes our end of it.
    fn disconnect(&mut self, connection: Self::Handle);
}

/// Runs the receive loop until `stop` is set or the port fails, then closes every connection
/// (telling the dispatcher) and returns why it ended.
pub fn run<P: PortOps>(
    port: P,
    dispatcher: Arc<Dispatcher>,
    policy: PeerPolicy,
    stop: Arc<AtomicBool>,
) -> Result<(), PortError> {
    let mut buffer = port.receive_buffer();
    let mut receiver = Receiver {
        port,
        dispatcher,
        connections: ConnectionTable::default(),
        policy,
    };
    let mut retries = 0u32;
    let result = loop {
        if stop.load(Ordering::Acquire) {
            break Ok(());
        }
        // The protocol's timers run when they are due, as the dispatcher says, not on a tick.
        let mut deadline = receiver.dispatcher.poll_timeout();
        if deadline.is_some_and(|due| due <= Instant::now()) {
            receiver.dispatcher.tick();
            deadline = receiver.dispatcher.poll_timeout();
        }
        let wait = deadline
            .map_or(STOP_CHECK, |due| due.saturating_duration_since(Instant::now()))
            .clamp(MIN_WAIT, STOP_CHECK);
        let (code, context) = receiver.port.receive(&mut buffer, wait);
        match on_receive_status(code, retries) {
            LoopStep::Dispatch => {
                retries = 0;
                receiver.handle_message(&buffer, context);
            }
            LoopStep::Idle => retries = 0,
            LoopStep::Retry => {
                retries += 1;
                warn!(
                    call = P::RECEIVE_CALL,
                    status = format_args!("{:#010X}", code as u32),
                    name = status_name(code),
                    retries,
                    "port receive is short of resources; retrying"
                );
                std::thread::sleep(RETRY_DELAY);
            }
            LoopStep::Fatal => break Err(nt_error(P::RECEIVE_CALL, code)),
        }
    };
    receiver.close_all();
    result
}

/// The loop's state between messages.
struct Receiver<P: PortOps> {
    port: P,
    dispatcher: Arc<Dispatcher>,
    connections: ConnectionTable<P::Handle>,
    policy: PeerPolicy,
}

impl<P: PortOps> Receiver<P> {
    /// Handles one received message.
    fn handle_message(&mut self, buffer: &P::Buffer, context: usize) {
        let (header, data) = match PortMessage::parse(buffer.as_ref()) {
            Ok(message) => message,
            Err(error) => {
                // The kernel wrote this header, so this means a buffer or layout bug, not a bad
                // producer; there is no connection to blame or answer.
                warn!(%error, "received a port message whose lengths do not add up; ignored");
                return;
            }
        };
        let plan = on_message(&header, self.policy);
        let (conn, action) = match plan {
            MessagePlan::Connect(peer) => {
                let conn = self.dispatcher.next_conn_id();
                debug!(
                    conn,
                    ?peer,
                    client_pid = header.client_process,
                    "connection request"
                );
                (Some(conn), Some(self.dispatcher.handle(conn, &header, data)))
            }
            MessagePlan::RefusePeer { client_pid, why } => {
                self.dispatcher
                    .refuse_peer(client_pid, RefuseReason::Unauthorised, why);
                (None, None)
            }
            _ => match self.connections.get(context) {
                Some(connection) => (
                    Some(connection.conn),
                    Some(self.dispatcher.handle(connection.conn, &header, data)),
                ),
                None => {
                    // A message still queued from a connection already closed here: nothing to
                    // dispatch it to, but a waiting sender still gets its reply.
                    debug!(
                        context,
                        kind = header.kind(),
                        client_pid = header.client_process,
                        "message for a connection that is no longer open"
                    );
                    (None, None)
                }
            },
        };
        let after = after_dispatch(&plan, &header, action);
        self.carry_out(&header, context, conn, after);
    }

    /// Performs the port operations `after` asks for, in order.
    fn carry_out(
        &mut self,
        header: &PortMessage,
        context: usize,
        conn: Option<ConnId>,
        after: AfterDispatch,
    ) {
        if let Some(answer) = after.connect {
            self.answer(header, conn, answer);
        }
        if after.reply.is_some() {
            let connection = self.connections.get(context).map(|c| &c.handle);
            if let Err(error) = self.port.reply(&Outgoing::reply(header), connection) {
                // Usually the sender died while we worked; its close message follows.
                debug!(%error, message_id = header.message_id, "reply not delivered");
            }
        }
        if after.release
            && let Err(error) = self.port.release(&Outgoing::release(header))
        {
            warn!(%error, message_id = header.message_id, "releasing a port message failed");
        }
        if after.close
            && let Some(connection) = self.connections.remove(context)
        {
            debug!(conn = connection.conn, "closing connection");
            self.port.disconnect(connection.handle);
        }
    }

    /// Accepts or refuses a connection request and records an accepted connection.
    fn answer(&mut self, header: &PortMessage, conn: Option<ConnId>, answer: ConnectAnswer) {
        let (reply, key) = match &answer {
            ConnectAnswer::Accept(reply) => (reply, Some(self.connections.allocate_key())),
            ConnectAnswer::Refuse(reply) => (reply, None),
        };
        let outcome = self.port.answer(header, reply, key);
        match (outcome, key.zip(conn)) {
            (Ok(Some(handle)), Some((key, conn))) => {
                info!(conn, client_pid = header.client_process, "producer connected");
                self.connections.insert(
                    key,
                    Connection {
                        conn,
                        client_process: header.client_process,
                        client_thread: header.client_thread,
                        handle,
                    },
                );
            }
            (Ok(_), None) => info!(client_pid = header.client_process, "connection refused"),
            (Err(error), None) => {
                warn!(%error, client_pid = header.client_process, "refusing a connection failed");
            }
            (outcome, Some((_, conn))) => {
                let error = outcome.err().map(|e| e.to_string());
                warn!(
                    conn,
                    error = error.as_deref().unwrap_or("no communication port returned"),
                    client_pid = header.client_process,
                    "accepting a connection failed"
                );
                // The dispatcher already opened a session for it; end that the way a peer's
                // close would.
                let close = synthetic_close(header.client_process, header.client_thread);
                self.dispatcher.handle(conn, &close, &[]);
            }
        }
    }

    /// Ends every connection at shutdown: the dispatcher sees the close a peer would send.
    fn close_all(&mut self) {
        for connection in self.connections.drain() {
            let header = synthetic_close(connection.client_process, connection.client_thread);
            self.dispatcher.handle(connection.conn, &header, &[]);
            self.port.disconnect(connection.handle);
        }
    }
}
