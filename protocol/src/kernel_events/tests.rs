use super::*;
use crate::event::{Event, EventKind, FieldType, flags};
use crate::message::{HelloReply, Message, ProducerKind, RefuseReason};
use crate::port_message::{LPC_MAX_CONNECTION_INFO, PortMessage};
use crate::producer::ConnectFailure;
use crate::queue::{Queue, Slot};
use lpcmon_nt::PortName;
use lpcmon_nt::alpc::SendKind;
use lpcmon_nt::status;
use std::vec::Vec;

fn utf16(s: &str) -> Vec<u16> {
    s.encode_utf16().collect()
}

/// Decodes a slot as the worker would send it: with its sequence number patched in.
fn decode(slot: &KernelSlot) -> Event {
    let mut bytes = slot.as_bytes().to_vec();
    crate::event::patch_seq(&mut bytes, 1).unwrap();
    match Message::decode(&bytes, usize::MAX).unwrap() {
        Message::Event(view) => Event::from(&view),
        other => panic!("not an event: {other:?}"),
    }
}

fn encoded(event: &KernelEvent<'_>, cap: usize) -> Event {
    let mut slot = std::boxed::Box::new(KernelSlot::new());
    event.encode(&mut slot, cap).unwrap();
    decode(&slot)
}

#[test]
fn process_start_carries_ids_names_and_the_creator() {
    let exe = utf16(r"\Device\HarddiskVolume3\Windows\System32\notepad.exe");
    let cmd = utf16(r#""C:\Windows\System32\notepad.exe" C:\x.txt"#);
    let ev = encoded(
        &KernelEvent::ProcessStart(ProcessStart {
            time_ns: 5,
            pid: 4242,
            ppid: 100,
            creating_pid: 200,
            creating_tid: 201,
            image_file_name: Some(&exe),
            command_line: Some(&cmd),
        }),
        STRING_CAP_MAX,
    );
    assert_eq!(ev.header.kind, EventKind::ProcessStart);
    assert_eq!(
        (ev.header.pid, ev.header.ppid, ev.header.tid, ev.header.time_ns),
        (4242, 100, 201, 5)
    );
    assert_eq!(ev.u32(FieldType::CREATING_PID), Some(200));
    assert_eq!(
        ev.text(FieldType::EXECUTABLE),
        Some(r"\Device\HarddiskVolume3\Windows\System32\notepad.exe")
    );
    assert_eq!(
        ev.text(FieldType::COMMAND_LINE),
        Some(r#""C:\Windows\System32\notepad.exe" C:\x.txt"#)
    );
    assert_eq!(ev.header.flags, 0);
}

#[test]
fn missing_names_are_left_out_not_invented() {
    let ev = encoded(
        &KernelEvent::ProcessStart(ProcessStart {
            time_ns: 1,
            pid: 8,
            ppid: 4,
            creating_pid: 4,
            creating_tid: 12,
            image_file_name: None,
            command_line: None,
        }),
        256,
    );
    assert_eq!(ev.fields.len(), 1);
    assert!(ev.text(FieldType::EXECUTABLE).is_none());
}

#[test]
fn long_strings_are_cut_to_the_cap_and_keep_their_length() {
    let cmd = utf16(&"a".repeat(5000));
    let exe = utf16(&"b".repeat(3000));
    for cap in [STRING_CAP_MIN, 1000, STRING_CAP_MAX] {
        let ev = encoded(
            &KernelEvent::ProcessStart(ProcessStart {
                time_ns: 1,
                pid: 1,
                ppid: 1,
                creating_pid: 1,
                creating_tid: 1,
                image_file_name: Some(&exe),
                command_line: Some(&cmd),
            }),
            cap,
        );
        assert_ne!(ev.header.flags & flags::TRUNCATED, 0);
        // Both strings fit, each cut to the cap: nothing was crowded out.
        assert_eq!(ev.header.flags & flags::FIELDS_OMITTED, 0, "cap {cap}");
        let c = ev.field(FieldType::COMMAND_LINE).unwrap();
        assert_eq!(c.original_len, Some(10_000));
        assert_eq!(ev.text(FieldType::COMMAND_LINE).unwrap().len(), cap / 2);
        assert_eq!(ev.field(FieldType::EXECUTABLE).unwrap().original_len, Some(6000));
        assert_eq!(ev.u32(FieldType::CREATING_PID), Some(1));
    }
}

#[test]
fn exits_threads_and_images() {
    let exit = encoded(
        &KernelEvent::ProcessExit(ProcessExit {
            time_ns: 9,
            pid: 77,
            exit_status: Some(0xC000_0005_u32 as i32),
        }),
        256,
    );
    assert_eq!(exit.header.kind, EventKind::ProcessExit);
    assert_eq!(exit.i32(FieldType::EXIT_CODE), Some(0xC000_0005_u32 as i32));
    let no_status = encoded(
        &KernelEvent::ProcessExit(ProcessExit {
            time_ns: 9,
            pid: 77,
            exit_status: None,
        }),
        256,
    );
    assert!(no_status.fields.is_empty());

    for (created, kind) in [(true, EventKind::ThreadStart), (false, EventKind::ThreadExit)] {
        let t = encoded(
            &KernelEvent::Thread(ThreadChange {
                time_ns: 3,
                pid: 10,
                tid: 11,
                created,
            }),
            256,
        );
        assert_eq!((t.header.kind, t.header.pid, t.header.tid), (kind, 10, 11));
    }

    let path = utf16(r"\SystemRoot\System32\drivers\lpcmon_driver.sys");
    let img = encoded(
        &KernelEvent::ImageLoad(ImageLoad {
            time_ns: 4,
            pid: 0,
            tid: 4,
            image_path: Some(&path),
            base: 0xFFFF_F800_1234_0000,
            size: 0x2_0000,
            system_image: true,
        }),
        256,
    );
    assert_eq!(img.header.kind, EventKind::ImageLoad);
    assert_eq!(img.header.flags & flags::KERNEL_IMAGE, flags::KERNEL_IMAGE);
    assert_eq!(img.u64(FieldType::IMAGE_BASE), Some(0xFFFF_F800_1234_0000));
    assert_eq!(img.u64(FieldType::IMAGE_SIZE), Some(0x2_0000));
    assert_eq!(
        img.text(FieldType::IMAGE_PATH),
        Some(r"\SystemRoot\System32\drivers\lpcmon_driver.sys")
    );
}

#[test]
fn record_filters_queues_and_counts_drops() {
    let slots: Vec<Slot<KernelSlot>> = (0..2).map(|i| Slot::new(i, KernelSlot::new())).collect();
    let queue = Queue::new(&slots).unwrap();
    let filter = EventFilter {
        mask: EventMask(EventMask::bit(EventKind::ThreadStart)),
        string_cap: 128,
    };
    let thread = |created| {
        KernelEvent::Thread(ThreadChange {
            time_ns: 1,
            pid: 2,
            tid: 3,
            created,
        })
    };
    assert_eq!(record(&queue, &filter, &thread(false)), Recorded::Filtered);
    assert_eq!(queue.produced(), 0, "a filtered kind is not produced");
    assert_eq!(record(&queue, &filter, &thread(true)), Recorded::Queued);
    assert_eq!(record(&queue, &filter, &thread(true)), Recorded::Queued);
    assert_eq!(record(&queue, &filter, &thread(true)), Recorded::Dropped);
    assert_eq!((queue.produced(), queue.dropped_total()), (3, 1));
    let kind = queue.pop_with(decode).unwrap().header.kind;
    assert_eq!(kind, EventKind::ThreadStart);
}

#[test]
fn mask_bits_follow_the_kind_numbers() {
    assert_eq!(EventMask::bit(EventKind::ProcessStart), 0x1);
    assert_eq!(EventMask::bit(EventKind::ProcessExit), 0x4);
    assert_eq!(EventMask::bit(EventKind::ThreadStart), 0x8);
    assert_eq!(EventMask::bit(EventKind::ThreadExit), 0x10);
    assert_eq!(EventMask::bit(EventKind::ImageLoad), 0x20);
    assert!(EventKind::ALL.iter().all(|k| EventMask::ALL.allows(*k)));
    assert!(!EventMask(0).allows(EventKind::ImageLoad));
}

#[test]
fn windows_time_converts_to_unix_nanoseconds() {
    assert_eq!(windows_time_to_unix_ns(116_444_736_000_000_000), 0);
    assert_eq!(
        windows_time_to_unix_ns(116_444_736_000_000_000 + 17_000_000_000_000_000),
        1_700_000_000_000_000_000
    );
    assert_eq!(windows_time_to_unix_ns(0), 0, "before 1970 clamps to 0");
    assert_eq!(windows_time_to_unix_ns(i64::MAX), u64::MAX, "saturates");
}

fn reg_sz(s: &str) -> Vec<u8> {
    s.encode_utf16().chain([0]).flat_map(u16::to_le_bytes).collect()
}

fn dword(v: u32) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn value(value_type: u32, data: &[u8]) -> Option<RegistryValue<'_>> {
    Some(RegistryValue { value_type, data })
}

#[test]
fn absent_parameters_take_the_defaults() {
    let (p, rejected) = Parameters::parse(&RawParameters::default());
    assert!(rejected.is_empty());
    assert_eq!(p.port_name.units(), utf16(r"\LpcMonEventPort").as_slice());
    assert_eq!(p.port_name.byte_len(), 32);
    assert_eq!(p.queue_capacity, 1024);
    assert_eq!(p.filter.mask, EventMask::ALL);
    assert_eq!(p.filter.string_cap, STRING_CAP_MAX);
    assert!(p.secure_connect);
}

#[test]
fn present_parameters_are_read_and_bounded() {
    let name = reg_sz(r"\BaseNamedObjects\Lpcmon");
    let (cap, mask, strings, secure) = (dword(100), dword(0x21), dword(100_000), dword(0));
    let (p, rejected) = Parameters::parse(&RawParameters {
        port_name: value(reg::SZ, &name),
        queue_capacity: value(reg::DWORD, &cap),
        event_mask: value(reg::DWORD, &mask),
        string_cap: value(reg::DWORD, &strings),
        use_secure_connect: value(reg::DWORD, &secure),
    });
    assert!(rejected.is_empty());
    assert_eq!(p.port_name.units(), utf16(r"\BaseNamedObjects\Lpcmon").as_slice());
    assert_eq!(p.queue_capacity, 128);
    assert_eq!(p.filter.mask, EventMask(0x21));
    assert_eq!(p.filter.string_cap, STRING_CAP_MAX);
    assert!(!p.secure_connect);
}

#[test]
fn queue_capacity_is_a_bounded_power_of_two() {
    assert_eq!(queue_capacity(0), 64);
    assert_eq!(queue_capacity(64), 64);
    assert_eq!(queue_capacity(65), 128);
    assert_eq!(queue_capacity(1024), 1024);
    assert_eq!(queue_capacity(5000), 8192);
    assert_eq!(queue_capacity(u32::MAX), 8192);
    assert_eq!(string_cap(0), STRING_CAP_MIN);
    assert_eq!(string_cap(1000), 1000);
}

#[test]
fn unusable_values_are_rejected_with_a_reason_and_defaulted() {
    let cases: [(u32, Vec<u8>); 8] = [
        (reg::DWORD, dword(1)),
        (reg::EXPAND_SZ, reg_sz(r"\X")),
        (reg::SZ, reg_sz("")),
        (reg::SZ, reg_sz("LpcMonEventPort")),
        (reg::SZ, reg_sz(r"\RPC Control\lpcmon")),
        (reg::SZ, reg_sz(r"\rpc CONTROL\lpcmon")),
        (reg::SZ, reg_sz(&std::format!(r"\{}", "x".repeat(300)))),
        (reg::SZ, std::vec![b'\\', 0, b'a', 0, 0, 0, b'b', 0]),
    ];
    for (ty, data) in &cases {
        let (p, rejected) = Parameters::parse(&RawParameters {
            port_name: value(*ty, data),
            ..RawParameters::default()
        });
        assert_eq!(p.port_name, PortName::default());
        let r: Vec<_> = rejected.iter().collect();
        assert_eq!(r.len(), 1, "{data:?}");
        assert_eq!(r[0].value, "PortName");
    }
    let odd = [b'\\', 0, b'a'];
    assert!(
        port_name(RegistryValue {
            value_type: reg::SZ,
            data: &odd
        })
        .is_err()
    );
    // A name of exactly 256 characters, with its terminator, is fine.
    let longest = reg_sz(&std::format!(r"\{}", "y".repeat(255)));
    assert_eq!(
        port_name(RegistryValue {
            value_type: reg::SZ,
            data: &longest
        })
        .unwrap()
        .units()
        .len(),
        256
    );

    let short = [1u8, 2];
    let (p, rejected) = Parameters::parse(&RawParameters {
        queue_capacity: value(reg::SZ, &dword(4096)),
        event_mask: value(reg::DWORD, &short),
        ..RawParameters::default()
    });
    assert_eq!(p, Parameters::default());
    let names: Vec<_> = rejected.iter().map(|r| r.value).collect();
    assert_eq!(names, ["QueueCapacity", "EventMask"]);
}

#[test]
fn partial_information_is_parsed_within_its_bounds() {
    let mut buf = Vec::new();
    buf.extend_from_slice(&0u32.to_le_bytes());
    buf.extend_from_slice(&reg::DWORD.to_le_bytes());
    buf.extend_from_slice(&4u32.to_le_bytes());
    buf.extend_from_slice(&7u32.to_le_bytes());
    let v = RegistryValue::from_partial_information(&buf).unwrap();
    assert_eq!(v.dword(), Ok(7));
    assert!(RegistryValue::from_partial_information(&buf[..15]).is_none());
    assert!(RegistryValue::from_partial_information(&buf[..8]).is_none());
    let mut lying = buf.clone();
    lying[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(RegistryValue::from_partial_information(&lying).is_none());
}

#[test]
fn ascii_names_are_utf16() {
    assert_eq!(PARAMETERS_KEY.as_slice(), utf16("Parameters").as_slice());
    assert_eq!(
        VALUE_USE_SECURE_CONNECT.as_slice(),
        utf16("UseSecureConnect").as_slice()
    );
}

fn accept(max_message: u32) -> Vec<u8> {
    let mut buf = [0u8; 128];
    let n = HelloReply::Accept {
        version: 1,
        max_message,
    }
    .encode(&mut buf)
    .unwrap();
    buf[..n].to_vec()
}

#[test]
fn connect_outcomes() {
    // ALPC: no port maximum reported; the server's agreement decides.
    let ok = connect_outcome(status::SUCCESS, &accept(65_536), None);
    assert_eq!((ok.result, ok.keep_port), (Ok(MAX_MESSAGE), true));
    // Legacy LPC: the port's 648-byte maximum leaves 608 bytes of data.
    let legacy = connect_outcome(status::SUCCESS, &accept(4096), Some(648));
    assert_eq!(legacy.result, Ok(608));
    let tiny = connect_outcome(status::SUCCESS, &accept(4096), Some(80));
    assert_eq!(
        (tiny.result, tiny.keep_port),
        (Err(ConnectFailure::Unavailable), false)
    );

    let mut buf = [0u8; 128];
    let n = HelloReply::Refuse {
        reason: RefuseReason::AlreadyConnected,
        min_version: 1,
        max_version: 1,
        text: "instance already connected",
    }
    .encode(&mut buf)
    .unwrap();
    let refused = connect_outcome(status::SUCCESS, &buf[..n], None);
    assert_eq!(refused.result, Err(ConnectFailure::Refused));
    assert_eq!(refused.refusal, Some(RefuseReason::AlreadyConnected));
    assert!(!refused.keep_port);
    // A refused connect returns no connection information: the buffer still holds what the
    // driver sent, which must not be read as an answer, even when it decodes as one.
    for leftover in [&buf[..n], &accept(4096)[..], &buf[..20]] {
        let o = connect_outcome(status::PORT_CONNECTION_REFUSED, leftover, None);
        assert_eq!(
            (o.result, o.refusal, o.keep_port),
            (Err(ConnectFailure::Refused), None, false)
        );
    }
    // The port's security descriptor refusing this account is a refusal too (lpcmon_nt::connect).
    let denied = connect_outcome(status::ACCESS_DENIED, &accept(4096), None);
    assert_eq!(denied.result, Err(ConnectFailure::Refused));
    let squatter = connect_outcome(status::SERVER_SID_MISMATCH, &[], None);
    assert_eq!(squatter.result, Err(ConnectFailure::Refused));
    let garbage = connect_outcome(status::SUCCESS, b"not lpcmon", None);
    assert_eq!(
        (garbage.result, garbage.keep_port),
        (Err(ConnectFailure::Unavailable), false)
    );
    for st in [
        status::OBJECT_NAME_NOT_FOUND,
        status::TIMEOUT,
        status::PORT_DISCONNECTED,
    ] {
        let o = connect_outcome(st, &accept(4096), None);
        assert_eq!((o.result, o.keep_port), (Err(ConnectFailure::Unavailable), false));
    }
}

#[test]
fn frames_are_what_the_kernel_expects() {
    let mut out = [0xAAu8; MAX_FRAME];
    let n = frame_message(b"hello", 648, &mut out).unwrap();
    assert_eq!(n, 45);
    let (h, data) = PortMessage::parse(&out[..n]).unwrap();
    assert_eq!((h.data_length, h.total_length, h.message_type), (5, 45, 0));
    assert_eq!((h.data_info_offset, h.client_process, h.message_id), (0, 0, 0));
    assert_eq!(data, b"hello");
    assert_eq!(frame_data(&out), b"hello");
    assert!(frame_message(&[0; 609], 648, &mut out).is_none());
    assert_eq!(frame_message(&[0; 608], 648, &mut out), Some(648));
    assert!(frame_message(&[0; MAX_MESSAGE + 1], usize::MAX, &mut out).is_none());
    assert!(frame_data(&out[..10]).is_empty());
}

#[test]
fn flow_control_probes_every_window_and_stops_queueing_when_unanswered() {
    let mut flow = FlowControl::new(4);
    let kinds: Vec<_> = (0..8).map(|_| flow.next_send().unwrap()).collect();
    use SendKind::{Datagram, Request};
    assert_eq!(
        kinds,
        [
            Datagram, Datagram, Datagram, Request, Datagram, Datagram, Datagram, Request
        ]
    );
    assert!(flow.on_sent(Datagram, status::SUCCESS));
    assert!(flow.on_sent(Request, status::SUCCESS));
    assert!(!flow.on_sent(Datagram, status::PORT_DISCONNECTED));
    // An unanswered probe: the probe is queued (sent), nothing more is.
    assert!(flow.on_sent(Request, status::TIMEOUT));
    assert!(flow.is_stalled());
    assert_eq!(flow.next_send(), None);
    flow.reset();
    assert_eq!(flow.next_send(), Some(Datagram));
    assert_eq!(
        FlowControl::new(0).next_send(),
        Some(Request),
        "a window of 0 is 1"
    );
}

#[test]
fn the_driver_config_fits_its_buffers() {
    let c = worker_config([1; 16], 26100);
    assert_eq!(c.kind, ProducerKind::WindowsDriver);
    assert_eq!(c.max_message, MAX_MESSAGE);
    assert!(c.connect_timeout_ns > 0 && STOP_GRACE_NS > 0);
    let mut hello = [0u8; LPC_MAX_CONNECTION_INFO];
    let hello_len = crate::message::Hello {
        min_version: 1,
        max_version: 1,
        kind: c.kind,
        instance: c.instance,
        max_message: c.max_message as u32,
        next_seq: 1,
        os_build: c.os_build,
        os: c.os,
    }
    .encode(&mut hello)
    .unwrap();
    // The kernel returns no more connection information than was sent, so an Accept must
    // be no longer than the Hello.
    assert!(accept(u32::MAX).len() <= hello_len);
}
