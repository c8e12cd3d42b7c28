//! The Windows port servers' receive loop, run on any platform against a scripted port.
//!
//! Each script is the sequence of receive results the kernel would produce (status,
//! PortContext, and the `PORT_MESSAGE` bytes it writes); the real [`Dispatcher`] and protocol
//! server answer, and the test checks the port operations the loop performed and what reached
//! the ingest channel. Only the system calls behind [`PortOps`] are left out.

use std::collections::VecDeque;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alpc_server::client::{PortError, read_hello_reply};
use alpc_server::decide::{Outgoing, PeerPolicy, USER_MODE_REFUSED, status};
use alpc_server::dispatch::Dispatcher;
use alpc_server::receive_loop::{PortOps, run};
use lpcmon_nt::NtStatus;
use lpcmon_nt::alpc::SendKind;
use lpcmon_protocol::message::{HELLO_MAX_LEN, Heartbeat, VERSION};
use lpcmon_protocol::server::{Output, ServerConfig};
use lpcmon_protocol::{Hello, PortMessage, ProducerKind, lpc};
use tokio::sync::mpsc;

/// `ALPC_MSGFLG_RELEASE_MESSAGE`: what a release must carry.
const RELEASE: u32 = 0x0001_0000;
/// `ALPC_MSGFLG_REPLY_MESSAGE | ALPC_MSGFLG_RELEASE_MESSAGE`: what a reply must carry, or the
/// kernel keeps the request.
const REPLY: u32 = 0x0001_0001;

/// A port operation the loop performed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Answer {
        context: Option<usize>,
        reply: Vec<u8>,
    },
    /// A reply: which request it names, its ALPC flags, its data length, and the connection.
    Reply {
        message_id: u32,
        flags: u32,
        data_length: u16,
        connection: Option<u32>,
    },
    /// A release: which message it names, its ALPC flags and its data length.
    Release {
        message_id: u32,
        flags: u32,
        data_length: u16,
    },
    Disconnect(u32),
}

/// One receive result.
struct Receive {
    status: NtStatus,
    context: usize,
    message: Vec<u8>,
}

struct ScriptedPort {
    script: VecDeque<Receive>,
    ops: Arc<Mutex<Vec<Op>>>,
    stop: Arc<AtomicBool>,
    next_handle: u32,
    fail_accept: bool,
}

impl PortOps for ScriptedPort {
    type Handle = u32;
    type Buffer = Vec<u8>;
    const RECEIVE_CALL: &'static str = "ScriptedReceive";

    fn receive_buffer(&self) -> Vec<u8> {
        Vec::new()
    }

    fn receive(&mut self, buffer: &mut Vec<u8>, _timeout: Duration) -> (NtStatus, usize) {
        match self.script.pop_front() {
            Some(step) => {
                buffer.clear();
                buffer.extend_from_slice(&step.message);
                (step.status, step.context)
            }
            None => {
                // The script is over: stop, as the service's stop control would.
                self.stop.store(true, Ordering::Release);
                (status::TIMEOUT, 0)
            }
        }
    }

    fn answer(
        &mut self,
        _request: &PortMessage,
        reply: &[u8],
        accept: Option<NonZeroUsize>,
    ) -> Result<Option<u32>, PortError> {
        self.ops.lock().unwrap().push(Op::Answer {
            context: accept.map(NonZeroUsize::get),
            reply: reply.to_vec(),
        });
        if accept.is_some() && self.fail_accept {
            return Err(alpc_server::decide::nt_error(
                "NtAlpcAcceptConnectPort",
                status::INSUFFICIENT_RESOURCES,
            ));
        }
        Ok(accept.map(|_| {
            self.next_handle += 1;
            self.next_handle
        }))
    }

    fn reply(&mut self, reply: &Outgoing, connection: Option<&u32>) -> Result<(), PortError> {
        assert_eq!(reply.kind, SendKind::Reply);
        self.ops.lock().unwrap().push(Op::Reply {
            message_id: reply.header.message_id,
            flags: reply.flags(),
            data_length: reply.header.data_length,
            connection: connection.copied(),
        });
        Ok(())
    }

    fn release(&mut self, release: &Outgoing) -> Result<(), PortError> {
        assert_eq!(release.kind, SendKind::Release);
        self.ops.lock().unwrap().push(Op::Release {
            message_id: release.header.message_id,
            flags: release.flags(),
            data_length: release.header.data_length,
        });
        Ok(())
    }

    fn disconnect(&mut self, connection: u32) {
        self.ops.lock().unwrap().push(Op::Disconnect(connection));
    }
}

/// The bytes the kernel writes for a message: header, then data.
fn message(message_type: u16, pid: u64, tid: u64, id: u32, data: &[u8]) -> Vec<u8> {
    let mut header = PortMessage::new(0, data.len(), pid, tid, id);
    header.message_type = message_type;
    let mut bytes = vec![0u8; 40 + data.len()];
    header.write(&mut bytes).unwrap();
    bytes[40..].copy_from_slice(data);
    bytes
}

fn ok(context: usize, message: Vec<u8>) -> Receive {
    Receive {
        status: status::SUCCESS,
        context,
        message,
    }
}

fn with_status(status: NtStatus) -> Receive {
    Receive {
        status,
        context: 0,
        message: Vec::new(),
    }
}

fn hello(kind: ProducerKind, instance: u8) -> Vec<u8> {
    let mut out = vec![0u8; HELLO_MAX_LEN];
    let len = Hello {
        min_version: 1,
        max_version: VERSION,
        kind,
        instance: [instance; 16],
        max_message: 600,
        next_seq: 1,
        os_build: 22631,
        os: "Windows 11",
    }
    .encode(&mut out)
    .unwrap();
    out.truncate(len);
    out
}

fn heartbeat() -> Vec<u8> {
    let mut out = vec![0u8; 128];
    let len = Heartbeat::default().encode(&mut out).unwrap();
    out.truncate(len);
    out
}

struct Outcome {
    result: Result<(), PortError>,
    ops: Vec<Op>,
    outputs: Vec<Output>,
    dispatcher: Arc<Dispatcher>,
}

fn run_script(script: Vec<Receive>, policy: PeerPolicy, fail_accept: bool) -> Outcome {
    let (tx, mut rx) = mpsc::channel(256);
    let dispatcher = Arc::new(Dispatcher::new(
        ServerConfig {
            api: "alpc",
            ..ServerConfig::default()
        },
        tx,
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(Mutex::new(Vec::new()));
    let port = ScriptedPort {
        script: script.into(),
        ops: ops.clone(),
        stop: stop.clone(),
        next_handle: 100,
        fail_accept,
    };
    let result = run(port, dispatcher.clone(), policy, stop);
    let mut outputs = Vec::new();
    while let Ok(output) = rx.try_recv() {
        outputs.push(output);
    }
    let ops = ops.lock().unwrap().clone();
    Outcome {
        result,
        ops,
        outputs,
        dispatcher,
    }
}

const DRIVER_ONLY: PeerPolicy = PeerPolicy {
    allow_user_mode_producers: false,
};

fn count(outputs: &[Output], pred: impl Fn(&Output) -> bool) -> usize {
    outputs.iter().filter(|o| pred(o)).count()
}

#[test]
fn a_driver_session_is_accepted_served_and_closed() {
    let kernel = lpc::KERNELMODE_MESSAGE;
    let connect = u16::from(lpc::CONNECTION_REQUEST) | kernel;
    let datagram = u16::from(lpc::DATAGRAM) | kernel;
    // The first accepted connection gets PortContext 1.
    let outcome = run_script(
        vec![
            ok(
                0,
                message(connect, 4, 0x98, 10, &hello(ProducerKind::WindowsDriver, 1)),
            ),
            ok(1, message(datagram, 4, 0x98, 11, &heartbeat())),
            ok(
                1,
                message(datagram | lpc::CONTINUATION_REQUIRED, 4, 0x98, 12, &heartbeat()),
            ),
            with_status(status::TIMEOUT),
            ok(1, message(u16::from(lpc::REQUEST), 4, 0x98, 13, &heartbeat())),
            ok(1, message(u16::from(lpc::PORT_CLOSED), 4, 0x98, 14, &[])),
            // Still queued after the close: nothing to dispatch to, nothing to do.
            ok(1, message(datagram, 4, 0x98, 15, &heartbeat())),
        ],
        DRIVER_ONLY,
        false,
    );
    assert!(outcome.result.is_ok(), "{:?}", outcome.result);

    let Op::Answer { context, reply } = &outcome.ops[0] else {
        panic!("the connection request must be answered first: {:?}", outcome.ops);
    };
    assert_eq!(*context, Some(1));
    assert_eq!(read_hello_reply(reply).unwrap(), 600);
    assert_eq!(
        outcome.ops[1..],
        [
            // The kept datagram is released by a header-only message naming it.
            Op::Release {
                message_id: 12,
                flags: RELEASE,
                data_length: 0
            },
            // The request is answered with its MessageId, and released by the same send.
            Op::Reply {
                message_id: 13,
                flags: REPLY,
                data_length: 0,
                connection: Some(101)
            },
            Op::Disconnect(101),
        ]
    );

    let outputs = &outcome.outputs;
    assert_eq!(
        count(
            outputs,
            |o| matches!(o, Output::Connected(p) if p.client_pid == 4)
        ),
        1
    );
    assert_eq!(count(outputs, |o| matches!(o, Output::Heartbeat { .. })), 3);
    assert_eq!(count(outputs, |o| matches!(o, Output::Disconnected { .. })), 1);
}

#[test]
fn a_user_mode_process_is_refused_counted_and_told_why() {
    let outcome = run_script(
        vec![ok(
            0,
            message(
                u16::from(lpc::CONNECTION_REQUEST),
                4242,
                7,
                20,
                &hello(ProducerKind::Loadgen, 2),
            ),
        )],
        DRIVER_ONLY,
        false,
    );
    assert!(outcome.result.is_ok());
    let [Op::Answer { context: None, reply }] = outcome.ops.as_slice() else {
        panic!("expected one refusal, got {:?}", outcome.ops);
    };
    match read_hello_reply(reply) {
        Err(PortError::Refused { reason, text }) => {
            assert_eq!(reason, "unauthorised");
            assert_eq!(text, USER_MODE_REFUSED);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        outcome
            .dispatcher
            .counters()
            .transport_refusals
            .load(Ordering::Relaxed),
        1
    );
    assert_eq!(
        count(&outcome.outputs, |o| matches!(
            o,
            Output::Refused { client_pid: 4242, .. }
        )),
        1
    );
    assert_eq!(count(&outcome.outputs, |o| matches!(o, Output::Connected(_))), 0);
}

#[test]
fn an_allowed_user_mode_producer_is_accepted() {
    let outcome = run_script(
        vec![ok(
            0,
            message(
                u16::from(lpc::CONNECTION_REQUEST),
                4242,
                7,
                21,
                &hello(ProducerKind::Loadgen, 3),
            ),
        )],
        PeerPolicy {
            allow_user_mode_producers: true,
        },
        false,
    );
    assert!(matches!(outcome.ops[0], Op::Answer { context: Some(1), .. }));
    // Shutdown closes what is still open, and the session ends like a peer's close.
    assert_eq!(outcome.ops[1..], [Op::Disconnect(101)]);
    assert_eq!(count(&outcome.outputs, |o| matches!(o, Output::Connected(_))), 1);
    assert_eq!(
        count(&outcome.outputs, |o| matches!(o, Output::Disconnected { .. })),
        1
    );
}

#[test]
fn a_failed_accept_ends_the_session_the_dispatcher_opened() {
    let outcome = run_script(
        vec![
            ok(
                0,
                message(
                    u16::from(lpc::CONNECTION_REQUEST),
                    4,
                    8,
                    30,
                    &hello(ProducerKind::WindowsDriver, 4),
                ),
            ),
            // Its context was never registered, so this finds no connection.
            ok(1, message(u16::from(lpc::DATAGRAM), 4, 8, 31, &heartbeat())),
        ],
        DRIVER_ONLY,
        true,
    );
    assert!(outcome.result.is_ok());
    assert_eq!(outcome.ops.len(), 1, "{:?}", outcome.ops);
    assert_eq!(count(&outcome.outputs, |o| matches!(o, Output::Connected(_))), 1);
    assert_eq!(
        count(&outcome.outputs, |o| matches!(o, Output::Disconnected { .. })),
        1
    );
    assert_eq!(
        count(&outcome.outputs, |o| matches!(o, Output::Heartbeat { .. })),
        0
    );
}

#[test]
fn a_request_from_an_unknown_connection_is_still_replied_to() {
    let outcome = run_script(
        vec![ok(7, message(u16::from(lpc::REQUEST), 4, 8, 40, &heartbeat()))],
        DRIVER_ONLY,
        false,
    );
    assert_eq!(
        outcome.ops,
        [Op::Reply {
            message_id: 40,
            flags: REPLY,
            data_length: 0,
            connection: None
        }]
    );
    assert!(outcome.outputs.is_empty());
}

#[test]
fn transient_failures_are_retried_and_a_fatal_one_ends_the_loop_closing_everything() {
    let outcome = run_script(
        vec![
            ok(
                0,
                message(
                    u16::from(lpc::CONNECTION_REQUEST),
                    4,
                    8,
                    50,
                    &hello(ProducerKind::WindowsDriver, 5),
                ),
            ),
            with_status(status::NO_MEMORY),
            with_status(status::QUOTA_EXCEEDED),
            ok(1, message(u16::from(lpc::DATAGRAM), 4, 8, 51, &heartbeat())),
            with_status(status::INVALID_HANDLE),
            // Never reached.
            ok(1, message(u16::from(lpc::DATAGRAM), 4, 8, 52, &heartbeat())),
        ],
        DRIVER_ONLY,
        false,
    );
    match outcome.result {
        Err(PortError::NtStatus { call, status, name }) => {
            assert_eq!(
                (call, status, name),
                ("ScriptedReceive", 0xC000_0008, "STATUS_INVALID_HANDLE")
            );
        }
        other => panic!("expected the fatal status, got {other:?}"),
    }
    assert_eq!(outcome.ops[1..], [Op::Disconnect(101)]);
    assert_eq!(
        count(&outcome.outputs, |o| matches!(o, Output::Heartbeat { .. })),
        1
    );
    assert_eq!(
        count(&outcome.outputs, |o| matches!(o, Output::Disconnected { .. })),
        1
    );
}

#[test]
fn a_malformed_hello_is_refused_by_the_protocol() {
    let outcome = run_script(
        vec![ok(
            0,
            message(u16::from(lpc::CONNECTION_REQUEST), 4, 8, 60, b"not a hello"),
        )],
        DRIVER_ONLY,
        false,
    );
    let [Op::Answer { context: None, reply }] = outcome.ops.as_slice() else {
        panic!("expected one refusal, got {:?}", outcome.ops);
    };
    assert!(matches!(
        read_hello_reply(reply),
        Err(PortError::Refused {
            reason: "malformed_hello",
            ..
        })
    ));
}

/// Each message type as the kernel delivers it, with and without `LPC_CONTINUATION_REQUIRED`,
/// and what the loop sends back for it: which message each send names, its flags and its
/// length. A request is answered (the reply also releases it); every other kept message is
/// released by a header-only message; nothing else is sent.
#[test]
fn each_message_type_gets_exactly_the_sends_it_needs_with_their_flags() {
    let kernel = lpc::KERNELMODE_MESSAGE;
    let kept = lpc::CONTINUATION_REQUIRED;
    let connect = u16::from(lpc::CONNECTION_REQUEST) | kernel;
    let outcome = run_script(
        vec![
            ok(
                0,
                message(connect, 4, 0x98, 10, &hello(ProducerKind::WindowsDriver, 1)),
            ),
            // A request the kernel kept: the reply names it and releases it; no second send.
            ok(
                1,
                message(u16::from(lpc::REQUEST) | kernel | kept, 4, 0x98, 20, &heartbeat()),
            ),
            // A datagram not kept: nothing to send.
            ok(
                1,
                message(u16::from(lpc::DATAGRAM) | kernel, 4, 0x98, 21, &heartbeat()),
            ),
            // A datagram kept: released, by MessageId, with no data.
            ok(
                1,
                message(
                    u16::from(lpc::DATAGRAM) | kernel | kept,
                    4,
                    0x98,
                    22,
                    &heartbeat(),
                ),
            ),
            // The peer is gone and the kernel kept the notice: released, then our end closed.
            ok(1, message(u16::from(lpc::CLIENT_DIED) | kept, 4, 0x98, 23, &[])),
        ],
        DRIVER_ONLY,
        false,
    );
    assert!(outcome.result.is_ok(), "{:?}", outcome.result);
    assert!(matches!(outcome.ops[0], Op::Answer { context: Some(1), .. }));
    assert_eq!(
        outcome.ops[1..],
        [
            Op::Reply {
                message_id: 20,
                flags: REPLY,
                data_length: 0,
                connection: Some(101)
            },
            Op::Release {
                message_id: 22,
                flags: RELEASE,
                data_length: 0
            },
            Op::Release {
                message_id: 23,
                flags: RELEASE,
                data_length: 0
            },
            Op::Disconnect(101),
        ]
    );
}

/// Types a server never expects from a producer (a reply, an exception, a type the kernel does
/// not define): each is counted by the dispatcher, and the loop only releases what the kernel
/// kept and closes what the dispatcher gives up on.
#[test]
fn unexpected_types_are_released_when_kept_and_never_answered() {
    let kept = lpc::CONTINUATION_REQUIRED;
    let connect = u16::from(lpc::CONNECTION_REQUEST) | lpc::KERNELMODE_MESSAGE;
    let outcome = run_script(
        vec![
            ok(
                0,
                message(connect, 4, 0x98, 10, &hello(ProducerKind::WindowsDriver, 1)),
            ),
            ok(1, message(u16::from(lpc::REPLY) | kept, 4, 0x98, 30, &[])),
            ok(1, message(u16::from(lpc::EXCEPTION), 4, 0x98, 31, &[])),
            ok(1, message(0x00FF | kept, 4, 0x98, 32, &[])),
        ],
        DRIVER_ONLY,
        false,
    );
    assert!(outcome.result.is_ok(), "{:?}", outcome.result);
    // No reply: only requests are answered.
    assert!(
        !outcome.ops.iter().any(|op| matches!(op, Op::Reply { .. })),
        "{:?}",
        outcome.ops
    );
    let released: Vec<_> = outcome
        .ops
        .iter()
        .filter_map(|op| match op {
            Op::Release {
                message_id,
                flags,
                data_length,
            } => Some((*message_id, *flags, *data_length)),
            _ => None,
        })
        .collect();
    assert_eq!(released, [(30, RELEASE, 0), (32, RELEASE, 0)]);
}
