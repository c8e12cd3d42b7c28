use super::*;
use crate::error::PortError;
use lpcmon_protocol::server::Action;
use lpcmon_protocol::{HelloReply, Message, PortMessage, RefuseReason, lpc};

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
        crate::connection::read_hello_reply(&reply),
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
    assert!(status::is_success(status::TIMEOUT));
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
        0xC0DE_0001_u32 as i32,
    ] {
        assert_eq!(on_receive_status(fatal, 0), LoopStep::Fatal, "{fatal:#x}");
    }
}

#[test]
fn status_names_and_errors() {
    assert_eq!(status_name(0xC000_0002_u32 as i32), "STATUS_NOT_IMPLEMENTED");
    assert_eq!(
        status_name(0xC000_0035_u32 as i32),
        "STATUS_OBJECT_NAME_COLLISION"
    );
    assert_eq!(status_name(0xC000_02A0_u32 as i32), "STATUS_SERVER_SID_MISMATCH");
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
    let reply = Outgoing::reply(&request);
    assert_eq!(reply.kind, lpcmon_nt::alpc::SendKind::Reply);
    assert_eq!(reply.flags(), 0x0001_0001, "REPLY_MESSAGE | RELEASE_MESSAGE");
    let reply = reply.header;
    assert_eq!(
        (reply.data_length, reply.total_length, reply.message_type),
        (0, 40, 0)
    );
    assert_eq!((reply.message_id, reply.client_view_size), (90, 5));
    assert_eq!((reply.client_process, reply.client_thread), (4, 8));

    // A release names the kept message by MessageId and carries none of its data.
    let mut kept = kernel_header(
        u16::from(lpc::DATAGRAM) | lpc::CONTINUATION_REQUIRED,
        300,
        4,
        8,
        92,
    );
    kept.client_view_size = 7;
    let release = Outgoing::release(&kept);
    assert_eq!(release.flags(), 0x0001_0000, "RELEASE_MESSAGE");
    assert_eq!(
        (
            release.header.data_length,
            release.header.total_length,
            release.header.message_id
        ),
        (0, 40, 92)
    );
    assert_eq!(release.header.client_view_size, 7);

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
