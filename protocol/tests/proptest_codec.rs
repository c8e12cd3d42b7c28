//! Property tests of the wire codec and of the server's input handling.
//!
//! - Every message type round-trips: encode → `Message::decode` → the same value. Event fields
//!   are checked against a model of the writer's documented truncation and omission rules.
//! - Fragmenting an event at any limit and feeding its pieces to a real `Server`, shuffled and
//!   duplicated, yields the event exactly once.
//! - Arbitrary bytes, and mutations of valid encodings, never panic a decoder or the server, and
//!   the server's state stays within its configured limits.
//!
//! `PROPTEST_CASES` scales every test (the defaults are below).

mod common;

use common::Rng;

use std::collections::BTreeMap;

use lpcmon_protocol::event::{
    EVENT_MIN_LEN, Encoding, Event, EventHeader, EventKind, EventWriter, FieldType, FieldValue, MAX_FIELDS,
    flags,
};
use lpcmon_protocol::fragment::{Fragmenter, MIN_MESSAGE_LIMIT};
use lpcmon_protocol::message::{
    FRAGMENT_HEADER_LEN, Fragment, HELLO_MAX_LEN, HELLO_OS_MAX, HELLO_REPLY_MAX_LEN, Heartbeat, MAX_SEQ,
    REPLY_TEXT_MAX,
};
use lpcmon_protocol::port_message::{PORT_MESSAGE_SIZE, PortMessage, lpc};
use lpcmon_protocol::server::{Action, Output, Server, ServerConfig};
use lpcmon_protocol::{DecodeError, Hello, HelloReply, Loss, LossStage, Message, ProducerKind, RefuseReason};
use proptest::collection::vec;
use proptest::prelude::*;

/// `cases` unless `PROPTEST_CASES` says otherwise.
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        // An integration test has no lib.rs next to it to keep regression files by.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The longest prefix of `s` of at most `max` bytes ending on a character boundary.
fn utf8_prefix(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn decode(buf: &[u8]) -> Message<'_> {
    match Message::decode(buf, buf.len()) {
        Ok(m) => m,
        Err(e) => panic!("valid encoding refused: {e} ({buf:?})"),
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies

fn any_text(max_chars: usize) -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..=max_chars).prop_map(String::from_iter)
}

fn producer_kind() -> impl Strategy<Value = ProducerKind> {
    prop::sample::select(vec![
        ProducerKind::WindowsDriver,
        ProducerKind::LinuxSensor,
        ProducerKind::Loadgen,
    ])
}

fn refuse_reason() -> impl Strategy<Value = RefuseReason> {
    prop::sample::select(vec![
        RefuseReason::UnsupportedVersion,
        RefuseReason::Unauthorised,
        RefuseReason::Malformed,
        RefuseReason::TooManyProducers,
        RefuseReason::AlreadyConnected,
        RefuseReason::ShuttingDown,
        RefuseReason::HandshakeTimeout,
    ])
}

fn loss_stage() -> impl Strategy<Value = LossStage> {
    prop::sample::select(LossStage::ALL.to_vec())
}

fn event_kind() -> impl Strategy<Value = EventKind> {
    prop::sample::select(EventKind::ALL.to_vec())
}

/// Sequence numbers the decoders accept, biased towards both ends.
fn seq() -> impl Strategy<Value = u64> {
    prop_oneof![1..=64u64, 1..=MAX_SEQ, (MAX_SEQ - 64)..=MAX_SEQ]
}

#[derive(Debug, Clone)]
struct HelloIn {
    min_version: u8,
    max_version: u8,
    kind: ProducerKind,
    instance: [u8; 16],
    max_message: u32,
    next_seq: u64,
    os_build: u32,
    os: String,
}

impl HelloIn {
    fn hello(&self) -> Hello<'_> {
        Hello {
            min_version: self.min_version,
            max_version: self.max_version,
            kind: self.kind,
            instance: self.instance,
            max_message: self.max_message,
            next_seq: self.next_seq,
            os_build: self.os_build,
            os: &self.os,
        }
    }
}

fn hello_in() -> impl Strategy<Value = HelloIn> {
    (
        any::<(u8, u8)>(),
        producer_kind(),
        any::<[u8; 16]>(),
        any::<u32>(),
        seq(),
        any::<u32>(),
        any_text(40),
    )
        .prop_map(
            |((a, b), kind, instance, max_message, next_seq, os_build, os)| HelloIn {
                min_version: a.min(b),
                max_version: a.max(b),
                kind,
                instance,
                max_message,
                next_seq,
                os_build,
                os,
            },
        )
}

fn loss() -> impl Strategy<Value = Loss> {
    let send = (0..=MAX_SEQ, 0..=1_000_000u64, any::<u64>()).prop_map(|(first, span, extra)| {
        let first = first.min(MAX_SEQ - span);
        let count = span + 1;
        Loss {
            stage: LossStage::ProducerSend,
            count,
            first_seq: first,
            last_seq: first + span,
            total: count.saturating_add(extra % 1_000_000),
        }
    });
    let other = (
        loss_stage().prop_filter("not a send loss", |s| *s != LossStage::ProducerSend),
        1..=u64::MAX,
        any::<u64>(),
        (0..=MAX_SEQ, 0..=MAX_SEQ),
    )
        .prop_map(|(stage, count, extra, (a, b))| Loss {
            stage,
            count,
            first_seq: a.min(b),
            last_seq: a.max(b),
            total: count.saturating_add(extra),
        });
    prop_oneof![send, other]
}

fn heartbeat() -> impl Strategy<Value = Heartbeat> {
    (any::<u64>(), any::<u64>(), any::<u64>(), 0..=MAX_SEQ).prop_map(
        |(produced, queue_drops_reported, send_failed, last_seq)| Heartbeat {
            produced,
            queue_drops_reported,
            send_failed,
            last_seq,
        },
    )
}

#[derive(Debug, Clone)]
struct FragmentIn {
    event_seq: u64,
    index: u16,
    count: u16,
    total_len: u32,
    bytes: Vec<u8>,
}

fn fragment_in() -> impl Strategy<Value = FragmentIn> {
    (
        seq(),
        2..=u16::MAX,
        any::<u16>(),
        vec(any::<u8>(), 1..200),
        any::<u32>(),
    )
        .prop_map(|(event_seq, count, index, bytes, extra)| FragmentIn {
            event_seq,
            index: index % count,
            count,
            total_len: (bytes.len() as u32).saturating_add(extra % 100_000),
            bytes,
        })
}

#[derive(Debug, Clone)]
enum FieldIn {
    Utf8(u16, String),
    Utf16(u16, Vec<u16>),
    Bytes(u16, Vec<u8>),
    U64(u16, u64),
    U32(u16, u32),
    I32(u16, i32),
}

fn field_in() -> impl Strategy<Value = FieldIn> {
    prop_oneof![
        3 => (any::<u16>(), any_text(120)).prop_map(|(t, s)| FieldIn::Utf8(t, s)),
        // UTF-16 from real text (surrogate pairs included) and raw units (lone surrogates).
        2 => (any::<u16>(), any_text(80)).prop_map(|(t, s)| FieldIn::Utf16(t, s.encode_utf16().collect())),
        1 => (any::<u16>(), vec(any::<u16>(), 0..80)).prop_map(|(t, u)| FieldIn::Utf16(t, u)),
        2 => (any::<u16>(), vec(any::<u8>(), 0..100)).prop_map(|(t, b)| FieldIn::Bytes(t, b)),
        1 => any::<(u16, u64)>().prop_map(|(t, v)| FieldIn::U64(t, v)),
        1 => any::<(u16, u32)>().prop_map(|(t, v)| FieldIn::U32(t, v)),
        1 => any::<(u16, i32)>().prop_map(|(t, v)| FieldIn::I32(t, v)),
    ]
}

#[derive(Debug, Clone)]
struct EventIn {
    header: EventHeader,
    buf_len: usize,
    string_cap: usize,
    fields: Vec<FieldIn>,
}

fn event_header() -> impl Strategy<Value = EventHeader> {
    (
        seq(),
        event_kind(),
        any::<u16>(),
        any::<u64>(),
        any::<(u32, u32, u32)>(),
    )
        .prop_map(|(seq, kind, flags, time_ns, (pid, ppid, tid))| EventHeader {
            seq,
            kind,
            flags,
            time_ns,
            pid,
            ppid,
            tid,
        })
}

fn event_in() -> impl Strategy<Value = EventIn> {
    (
        event_header(),
        prop_oneof![0..200usize, 0..4000usize],
        prop_oneof![0..32usize, 0..300usize, Just(usize::MAX)],
        // Past MAX_FIELDS sometimes, so the field limit is exercised.
        prop_oneof![vec(field_in(), 0..8), vec(field_in(), 0..(MAX_FIELDS + 8))],
    )
        .prop_map(|(header, extra, string_cap, fields)| EventIn {
            header,
            buf_len: EVENT_MIN_LEN + extra,
            string_cap,
            fields,
        })
}

// ---------------------------------------------------------------------------------------------
// The event writer and its model

impl EventIn {
    fn encode(&self) -> Vec<u8> {
        let mut buf = vec![0u8; self.buf_len];
        let mut w = EventWriter::new(&mut buf, &self.header, self.string_cap).expect("room for a header");
        for f in &self.fields {
            match f {
                FieldIn::Utf8(t, s) => w.utf8(FieldType(*t), s),
                FieldIn::Utf16(t, u) => w.utf16(FieldType(*t), u),
                FieldIn::Bytes(t, b) => w.bytes(FieldType(*t), b),
                FieldIn::U64(t, v) => w.u64(FieldType(*t), *v),
                FieldIn::U32(t, v) => w.u32(FieldType(*t), *v),
                FieldIn::I32(t, v) => w.i32(FieldType(*t), *v),
            }
            .expect("the writer truncates or omits instead of failing");
        }
        let len = w.finish();
        buf.truncate(len);
        buf
    }

    /// What the decoder must see, from the writer's documented rules: a field is kept whole if
    /// it fits the buffer (and a string the cap); otherwise a string keeps the longest prefix
    /// that fits, cut on a character (UTF-8) or surrogate-pair (UTF-16) boundary, plus its
    /// original length; raw bytes are left out; and no event holds more than MAX_FIELDS.
    fn expected(&self) -> (u16, Vec<ExpectedField>) {
        const FIELD_HEADER: usize = 7;
        let mut flags = self.header.flags;
        let mut used = EVENT_MIN_LEN;
        let mut out: Vec<ExpectedField> = Vec::new();
        for f in &self.fields {
            let room = self.buf_len - used;
            let full = out.len() < MAX_FIELDS;
            let string = |full_len: usize| -> Option<usize> {
                if !full {
                    return None;
                }
                if full_len <= self.string_cap && FIELD_HEADER + full_len <= room {
                    return Some(full_len);
                }
                (room >= FIELD_HEADER + 4).then(|| self.string_cap.min(room - FIELD_HEADER - 4))
            };
            let field = match f {
                FieldIn::Utf8(t, s) => string(s.len()).map(|keep| {
                    let kept = utf8_prefix(s, keep);
                    ExpectedField::string(*t, Encoding::Utf8, s.len(), kept.as_bytes().to_vec())
                }),
                FieldIn::Utf16(t, units) => string(units.len() * 2).map(|keep| {
                    let mut n = keep / 2;
                    if n < units.len() && n > 0 && (0xD800..0xDC00).contains(&units[n - 1]) {
                        n -= 1;
                    }
                    let kept = units[..n].iter().flat_map(|u| u.to_le_bytes()).collect();
                    ExpectedField::string(*t, Encoding::Utf16Le, units.len() * 2, kept)
                }),
                FieldIn::Bytes(t, b) => raw(full, room, *t, b.clone()),
                FieldIn::U64(t, v) => raw(full, room, *t, v.to_le_bytes().to_vec()),
                FieldIn::U32(t, v) => raw(full, room, *t, v.to_le_bytes().to_vec()),
                FieldIn::I32(t, v) => raw(full, room, *t, v.to_le_bytes().to_vec()),
            };
            match field {
                Some(f) => {
                    if f.original_len.is_some() {
                        flags |= flags::TRUNCATED;
                        used += 4;
                    }
                    used += FIELD_HEADER + f.bytes.len();
                    out.push(f);
                }
                None => flags |= flags::FIELDS_OMITTED,
            }
        }
        (flags, out)
    }
}

fn raw(full: bool, room: usize, ty: u16, bytes: Vec<u8>) -> Option<ExpectedField> {
    (full && 7 + bytes.len() <= room).then_some(ExpectedField {
        ty,
        encoding: Encoding::Bytes,
        original_len: None,
        bytes,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ExpectedField {
    ty: u16,
    encoding: Encoding,
    original_len: Option<u32>,
    bytes: Vec<u8>,
}

impl ExpectedField {
    fn string(ty: u16, encoding: Encoding, full_len: usize, kept: Vec<u8>) -> Self {
        ExpectedField {
            ty,
            encoding,
            original_len: (kept.len() != full_len).then_some(full_len as u32),
            bytes: kept,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Round trips

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn hello_round_trips(h in hello_in()) {
        let mut buf = [0u8; HELLO_MAX_LEN];
        let len = h.hello().encode(&mut buf).unwrap();
        let Message::Hello(back) = decode(&buf[..len]) else { panic!("not a Hello") };
        // The OS text is cut on a character boundary; everything else is exact.
        let expected = Hello { os: utf8_prefix(&h.os, HELLO_OS_MAX), ..h.hello() };
        prop_assert_eq!(back, expected);
        prop_assert!(len <= HELLO_MAX_LEN);
        // The agreed limit is enforced before parsing.
        prop_assert_eq!(
            Message::decode(&buf[..len], len - 1).unwrap_err(),
            DecodeError::MessageTooLong { len, limit: len - 1 }
        );
    }

    #[test]
    fn hello_reply_round_trips(
        accept in any::<bool>(),
        version in any::<u8>(),
        max_message in any::<u32>(),
        reason in refuse_reason(),
        range in any::<(u8, u8)>(),
        text in any_text(60),
    ) {
        let reply = if accept {
            HelloReply::Accept { version, max_message }
        } else {
            HelloReply::Refuse { reason, min_version: range.0, max_version: range.1, text: &text }
        };
        let mut buf = [0u8; HELLO_REPLY_MAX_LEN];
        let len = reply.encode(&mut buf).unwrap();
        let Message::HelloReply(back) = decode(&buf[..len]) else { panic!("not a HelloReply") };
        let expected = match reply {
            HelloReply::Refuse { text, .. } => HelloReply::Refuse {
                reason,
                min_version: range.0,
                max_version: range.1,
                text: utf8_prefix(text, REPLY_TEXT_MAX),
            },
            accept => accept,
        };
        prop_assert_eq!(back, expected);
    }

    #[test]
    fn loss_round_trips(loss in loss()) {
        let mut buf = [0u8; 64];
        let len = loss.encode(&mut buf).unwrap();
        let Message::Loss(back) = decode(&buf[..len]) else { panic!("not a Loss") };
        prop_assert_eq!(back, loss);
    }

    #[test]
    fn heartbeat_round_trips(hb in heartbeat()) {
        let mut buf = [0u8; 64];
        let len = hb.encode(&mut buf).unwrap();
        let Message::Heartbeat(back) = decode(&buf[..len]) else { panic!("not a Heartbeat") };
        prop_assert_eq!(back, hb);
    }

    #[test]
    fn fragment_round_trips(f in fragment_in()) {
        let frag = Fragment {
            event_seq: f.event_seq,
            index: f.index,
            count: f.count,
            total_len: f.total_len,
            bytes: &f.bytes,
        };
        let mut buf = vec![0u8; FRAGMENT_HEADER_LEN + f.bytes.len()];
        let len = frag.encode(&mut buf).unwrap();
        prop_assert_eq!(len, buf.len());
        let Message::Fragment(back) = decode(&buf) else { panic!("not a Fragment") };
        prop_assert_eq!(back, frag);
    }

    #[test]
    fn port_message_round_trips(
        h in any::<(u16, u16, u64, u64, u32, u32, u64)>(),
        data in vec(any::<u8>(), 0..300),
    ) {
        let header = PortMessage {
            data_length: data.len() as u16,
            total_length: (PORT_MESSAGE_SIZE + data.len()) as u16,
            message_type: h.0,
            data_info_offset: h.1,
            client_process: h.2,
            client_thread: h.3,
            message_id: h.4,
            reserved: h.5,
            client_view_size: h.6,
        };
        let mut buf = vec![0u8; PORT_MESSAGE_SIZE];
        prop_assert_eq!(header.write(&mut buf).unwrap(), PORT_MESSAGE_SIZE);
        buf.extend_from_slice(&data);
        // Trailing bytes beyond DataLength are not part of the message.
        buf.extend_from_slice(b"junk");
        let (back, body) = PortMessage::parse(&buf).unwrap();
        prop_assert_eq!(back, header);
        prop_assert_eq!(body, &data[..]);
        prop_assert_eq!(back.kind(), (h.0 & 0xFF) as u8);
        let built = PortMessage::new(back.kind(), data.len(), h.2, h.3, h.4);
        prop_assert_eq!((built.data_length, built.total_length), (header.data_length, header.total_length));
    }

    #[test]
    fn event_round_trips_with_truncation_and_omission(e in event_in()) {
        let bytes = e.encode();
        prop_assert!(bytes.len() <= e.buf_len);
        let Message::Event(view) = decode(&bytes) else { panic!("not an Event") };
        let (flags, fields) = e.expected();
        prop_assert_eq!(view.header, EventHeader { flags, ..e.header });
        let got: Vec<ExpectedField> = view
            .fields()
            .map(|f| ExpectedField {
                ty: f.ty.0,
                encoding: f.encoding,
                original_len: f.original_len,
                bytes: f.bytes.to_vec(),
            })
            .collect();
        prop_assert_eq!(&got, &fields);
        // The owned form carries the same values: text for UTF-8, raw bytes as they were.
        let owned = Event::from(&view);
        prop_assert_eq!(owned.fields.len(), fields.len());
        for (o, f) in owned.fields.iter().zip(&fields) {
            match (&o.value, f.encoding) {
                (FieldValue::Text(s), Encoding::Utf8) => prop_assert_eq!(s.as_bytes(), &f.bytes[..]),
                (FieldValue::Text(s), Encoding::Utf16Le) => {
                    let units = f.bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]));
                    let text: String = char::decode_utf16(units).map(|c| c.unwrap_or('\u{FFFD}')).collect();
                    prop_assert_eq!(s, &text)
                }
                (FieldValue::Bytes(b), Encoding::Bytes) => prop_assert_eq!(b, &f.bytes),
                (v, enc) => prop_assert!(false, "{:?} decoded as {:?}", enc, v),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fragmentation through the server

const PRODUCER_PID: u64 = 4242;

fn port_header(kind: u8, data: &[u8], message_id: u32) -> PortMessage {
    PortMessage::new(kind, data.len(), PRODUCER_PID, 1, message_id)
}

/// Connects `conn` with a Hello; returns the agreed message limit, or `None` if refused.
fn connect(
    server: &mut Server,
    now: u64,
    conn: u64,
    hello: &Hello<'_>,
    out: &mut Vec<Output>,
) -> Option<u32> {
    let mut buf = [0u8; HELLO_MAX_LEN];
    let len = hello.encode(&mut buf).unwrap();
    match server.handle(
        now,
        conn,
        &port_header(lpc::CONNECTION_REQUEST, &buf[..len], 0),
        &buf[..len],
        out,
    ) {
        Action::Accept { reply } => match Message::decode(&reply, reply.len()) {
            Ok(Message::HelloReply(HelloReply::Accept { max_message, .. })) => Some(max_message),
            other => panic!("accept with a bad reply: {other:?}"),
        },
        Action::Refuse { .. } => None,
        other => panic!("a connection request answered with {other:?}"),
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn fragments_reassemble_to_the_event_exactly_once(
        limit in prop_oneof![MIN_MESSAGE_LIMIT..=200usize, MIN_MESSAGE_LIMIT..=65535usize],
        header in event_header(),
        command_line in prop_oneof![0..200usize, 0..20_000usize],
        fields in vec(field_in(), 0..6),
        shuffle_seed in any::<u64>(),
        duplicate_per_mille in 0..500usize,
    ) {
        let e = EventIn {
            header,
            buf_len: EVENT_MIN_LEN + 30_000,
            string_cap: usize::MAX,
            fields: std::iter::once(FieldIn::Utf8(FieldType::COMMAND_LINE.0, "é".repeat(command_line / 2)))
                .chain(fields)
                .collect(),
        };
        let event = e.encode();
        let Message::Event(view) = decode(&event) else { panic!("not an Event") };
        let expected = Event::from(&view);

        let mut server = Server::new(ServerConfig::default());
        let mut out = Vec::new();
        let hello = Hello {
            min_version: 1,
            max_version: 1,
            kind: ProducerKind::Loadgen,
            instance: [7; 16],
            max_message: limit as u32,
            next_seq: header.seq,
            os_build: 0,
            os: "proptest",
        };
        prop_assert_eq!(connect(&mut server, 0, 1, &hello, &mut out), Some(limit as u32));

        let plan = Fragmenter::new(event.len(), header.seq, limit).unwrap();
        prop_assert_eq!(usize::from(plan.count()) > 1, event.len() > limit);
        let mut pieces = Vec::new();
        for i in 0..plan.count() {
            let mut buf = vec![0u8; limit];
            let len = plan.write(&event, i, &mut buf).unwrap();
            prop_assert!(len <= limit);
            buf.truncate(len);
            pieces.push(buf);
        }
        let mut rng = Rng(shuffle_seed);
        let originals = pieces.len();
        for i in 0..originals {
            if rng.index(1000) < duplicate_per_mille {
                pieces.push(pieces[i].clone());
            }
        }
        for i in (1..pieces.len()).rev() {
            pieces.swap(i, rng.index(i + 1));
        }
        for (mid, piece) in pieces.iter().enumerate() {
            let action = server.handle(1, 1, &port_header(lpc::DATAGRAM, piece, mid as u32), piece, &mut out);
            prop_assert_eq!(action, Action::None);
        }
        let mut events = 0;
        for o in &out {
            match o {
                Output::Event { event, transport, .. } => {
                    events += 1;
                    prop_assert_eq!(event, &expected);
                    prop_assert_eq!(transport.fragments, plan.count());
                }
                Output::Connected(_) => {}
                Output::Stale { seq, duplicate: true, .. } => prop_assert_eq!(*seq, header.seq),
                other => prop_assert!(false, "unexpected output {:?}", other),
            }
        }
        prop_assert_eq!(events, 1);
        prop_assert_eq!(server.reassembling(), 0);
        prop_assert_eq!(server.held_events(), 0);
    }
}

// ---------------------------------------------------------------------------------------------
// Arbitrary and mutated input

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    Truncate { at: usize },
    SetU16 { at: usize, value: u16 },
    SetU32 { at: usize, value: u32 },
    SetU64 { at: usize, value: u64 },
    Append(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let huge16 = prop_oneof![Just(u16::MAX), Just(0), any::<u16>()];
    let huge32 = prop_oneof![Just(u32::MAX), Just(u32::MAX / 2), Just(0x1_0000), any::<u32>()];
    let huge64 = prop_oneof![
        Just(u64::MAX),
        Just(u64::MAX - 1),
        Just(MAX_SEQ + 1),
        Just(0),
        any::<u64>()
    ];
    prop_oneof![
        3 => (any::<usize>(), 0..8u8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        1 => any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        1 => (any::<usize>(), huge16).prop_map(|(at, value)| Mutation::SetU16 { at, value }),
        2 => (any::<usize>(), huge32).prop_map(|(at, value)| Mutation::SetU32 { at, value }),
        2 => (any::<usize>(), huge64).prop_map(|(at, value)| Mutation::SetU64 { at, value }),
        1 => vec(any::<u8>(), 1..16).prop_map(Mutation::Append),
    ]
}

fn mutate(buf: &mut Vec<u8>, m: &Mutation) {
    fn set(buf: &mut [u8], at: usize, bytes: &[u8]) {
        if buf.len() >= bytes.len() {
            let at = at % (buf.len() - bytes.len() + 1);
            buf[at..at + bytes.len()].copy_from_slice(bytes);
        }
    }
    match m {
        Mutation::Flip { at, bit } if !buf.is_empty() => {
            let i = at % buf.len();
            buf[i] ^= 1 << bit;
        }
        Mutation::Flip { .. } => {}
        Mutation::Truncate { at } => buf.truncate(at % (buf.len() + 1)),
        Mutation::SetU16 { at, value } => set(buf, *at, &value.to_le_bytes()),
        Mutation::SetU32 { at, value } => set(buf, *at, &value.to_le_bytes()),
        Mutation::SetU64 { at, value } => set(buf, *at, &value.to_le_bytes()),
        Mutation::Append(extra) => buf.extend_from_slice(extra),
    }
}

/// A valid encoding of some message.
fn valid_message() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        hello_in().prop_map(|h| {
            let mut buf = vec![0u8; HELLO_MAX_LEN];
            let len = h.hello().encode(&mut buf).unwrap();
            buf.truncate(len);
            buf
        }),
        (any::<bool>(), any::<u32>(), refuse_reason(), any_text(20)).prop_map(
            |(accept, max, reason, text)| {
                let mut buf = vec![0u8; HELLO_REPLY_MAX_LEN];
                let reply = if accept {
                    HelloReply::Accept {
                        version: 1,
                        max_message: max,
                    }
                } else {
                    HelloReply::Refuse {
                        reason,
                        min_version: 1,
                        max_version: 1,
                        text: &text,
                    }
                };
                let len = reply.encode(&mut buf).unwrap();
                buf.truncate(len);
                buf
            }
        ),
        event_in().prop_map(|e| e.encode()),
        fragment_in().prop_map(|f| {
            let mut buf = vec![0u8; FRAGMENT_HEADER_LEN + f.bytes.len()];
            Fragment {
                event_seq: f.event_seq,
                index: f.index,
                count: f.count,
                total_len: f.total_len,
                bytes: &f.bytes,
            }
            .encode(&mut buf)
            .unwrap();
            buf
        }),
        loss().prop_map(|l| {
            let mut buf = vec![0u8; 64];
            let len = l.encode(&mut buf).unwrap();
            buf.truncate(len);
            buf
        }),
        heartbeat().prop_map(|h| {
            let mut buf = vec![0u8; 64];
            let len = h.encode(&mut buf).unwrap();
            buf.truncate(len);
            buf
        }),
    ]
}

/// Whatever a decoder accepted must be internally consistent: a decoded message re-encodes to
/// something that decodes to the same value, and an event's fields are all readable.
fn check_decoded(buf: &[u8], limit: usize) -> Result<(), TestCaseError> {
    let msg = match Message::decode(buf, limit) {
        Ok(msg) => msg,
        Err(e) => {
            prop_assert!(!e.to_string().is_empty());
            return Ok(());
        }
    };
    prop_assert!(buf.len() <= limit);
    let mut again = vec![0u8; buf.len() + 16];
    let len = match msg {
        Message::Hello(h) => h.encode(&mut again),
        Message::HelloReply(r) => r.encode(&mut again),
        Message::Fragment(f) => f.encode(&mut again),
        Message::Loss(l) => l.encode(&mut again),
        Message::Heartbeat(h) => h.encode(&mut again),
        Message::Event(view) => {
            let event = Event::from(&view);
            prop_assert_eq!(event.fields.len(), view.fields().count());
            prop_assert_eq!(event.header, view.header);
            prop_assert!(view.header.seq >= 1 && view.header.seq <= MAX_SEQ);
            return Ok(());
        }
    }
    .unwrap();
    let round = Message::decode(&again[..len], usize::MAX).unwrap();
    prop_assert_eq!(format!("{round:?}"), format!("{msg:?}"));
    Ok(())
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn arbitrary_bytes_never_panic_a_decoder(
        bytes in prop_oneof![
            vec(any::<u8>(), 0..300),
            // Past the magic, so the message bodies are reached too.
            (1..=6u8, vec(any::<u8>(), 0..300)).prop_map(|(ty, rest)| {
                let mut b = b"LPCM\x01".to_vec();
                b.push(ty);
                b.extend(rest);
                b
            }),
        ],
        limit in prop_oneof![Just(usize::MAX), 0..400usize],
    ) {
        check_decoded(&bytes, limit)?;
        if let Ok((header, data)) = PortMessage::parse(&bytes) {
            prop_assert_eq!(data.len(), usize::from(header.data_length));
            prop_assert_eq!(usize::from(header.total_length), PORT_MESSAGE_SIZE + data.len());
            check_decoded(data, limit)?;
        }
    }

    #[test]
    fn mutated_encodings_never_panic_a_decoder(
        valid in valid_message(),
        mutations in vec(mutation(), 1..5),
        limit in prop_oneof![Just(usize::MAX), 0..2000usize],
    ) {
        let mut bytes = valid;
        for m in &mutations {
            mutate(&mut bytes, m);
        }
        check_decoded(&bytes, limit)?;
        let mut framed = vec![0u8; PORT_MESSAGE_SIZE];
        port_header(lpc::DATAGRAM, &bytes, 1).write(&mut framed).unwrap();
        framed.extend_from_slice(&bytes);
        for m in &mutations {
            mutate(&mut framed, m);
        }
        if let Ok((_, data)) = PortMessage::parse(&framed) {
            check_decoded(data, limit)?;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The server under arbitrary input

const INSTANCES: usize = 3;

#[derive(Debug, Clone)]
enum Payload {
    Hello {
        instance: usize,
        next_seq: u64,
        max_message: u32,
        versions: (u8, u8),
    },
    Event {
        seq: u64,
        len: usize,
    },
    /// One piece of an event fragmented at `limit`.
    Piece {
        seq: u64,
        len: usize,
        limit: usize,
        index: usize,
    },
    Loss(Loss),
    Heartbeat(Heartbeat),
    Raw(Vec<u8>),
    Mutated(Box<Payload>, Vec<Mutation>),
}

impl Payload {
    fn bytes(&self) -> Vec<u8> {
        let mut buf = vec![0u8; 4096];
        let len = match self {
            Payload::Hello {
                instance,
                next_seq,
                max_message,
                versions,
            } => Hello {
                min_version: versions.0.min(versions.1),
                max_version: versions.0.max(versions.1),
                kind: ProducerKind::Loadgen,
                instance: [*instance as u8 + 1; 16],
                max_message: *max_message,
                next_seq: *next_seq,
                os_build: 1,
                os: "fuzz",
            }
            .encode(&mut buf)
            .unwrap(),
            Payload::Event { seq, len } => return small_event(*seq, *len),
            Payload::Piece {
                seq,
                len,
                limit,
                index,
            } => {
                let event = small_event(*seq, *len);
                let plan = Fragmenter::new(event.len(), *seq, *limit).unwrap();
                plan.write(&event, (*index % usize::from(plan.count())) as u16, &mut buf)
                    .unwrap()
            }
            Payload::Loss(l) => l.encode(&mut buf).unwrap(),
            Payload::Heartbeat(h) => h.encode(&mut buf).unwrap(),
            Payload::Raw(b) => return b.clone(),
            Payload::Mutated(inner, mutations) => {
                let mut b = inner.bytes();
                for m in mutations {
                    mutate(&mut b, m);
                }
                return b;
            }
        };
        buf.truncate(len);
        buf
    }
}

fn small_event(seq: u64, len: usize) -> Vec<u8> {
    let header = EventHeader {
        seq,
        kind: EventKind::ProcessStart,
        flags: 0,
        time_ns: seq,
        pid: seq as u32,
        ppid: 1,
        tid: 2,
    };
    let mut buf = vec![0u8; EVENT_MIN_LEN + 16 + len];
    let mut w = EventWriter::new(&mut buf, &header, usize::MAX).unwrap();
    w.utf8(FieldType::COMMAND_LINE, &"y".repeat(len)).unwrap();
    let n = w.finish();
    buf.truncate(n);
    buf
}

/// Mostly small numbers, so events meet; sometimes the largest valid ones and beyond.
fn small_seq() -> impl Strategy<Value = u64> {
    prop_oneof![
        12 => 1..40u64,
        1 => 1..=MAX_SEQ,
        1 => (MAX_SEQ - 2)..=MAX_SEQ,
        1 => (u64::MAX - 2)..=u64::MAX,
    ]
}

fn payload_leaf() -> impl Strategy<Value = Payload> {
    let small_loss =
        (loss_stage(), small_seq(), 0..6u64, 1..50u64).prop_map(|(stage, first, span, total)| {
            let count = span + 1;
            Loss {
                stage,
                count,
                first_seq: first,
                last_seq: first.saturating_add(span),
                total: total.max(count),
            }
        });
    let small_loss = small_loss.prop_map(|mut l| {
        if l.stage == LossStage::ProducerSend {
            l.count = l.last_seq - l.first_seq + 1;
        }
        l
    });
    prop_oneof![
        2 => (0..INSTANCES, small_seq(), prop_oneof![Just(65536u32), 0..300u32], any::<(u8, u8)>())
            .prop_map(|(instance, next_seq, max_message, v)| Payload::Hello {
                instance,
                next_seq,
                max_message,
                versions: if v.0 % 4 == 0 { v } else { (1, 1) },
            }),
        6 => (small_seq(), 0..300usize).prop_map(|(seq, len)| Payload::Event { seq, len }),
        4 => (small_seq(), 0..300usize, 64..128usize, any::<usize>())
            .prop_map(|(seq, len, limit, index)| Payload::Piece { seq, len, limit, index }),
        3 => prop_oneof![small_loss, loss()].prop_map(Payload::Loss),
        2 => (any::<u64>(), 0..50u64, small_seq()).prop_map(|(produced, drops, last_seq)| {
            Payload::Heartbeat(Heartbeat { produced, queue_drops_reported: drops, send_failed: 0, last_seq })
        }),
        1 => vec(any::<u8>(), 0..120).prop_map(Payload::Raw),
    ]
}

fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        6 => payload_leaf(),
        1 => (payload_leaf(), vec(mutation(), 1..3)).prop_map(|(p, m)| Payload::Mutated(Box::new(p), m)),
    ]
}

#[derive(Debug, Clone)]
enum Record {
    Message {
        conn: u64,
        lpc_type: u16,
        payload: Payload,
    },
    Poll {
        advance_ns: u64,
    },
}

fn lpc_type() -> impl Strategy<Value = u16> {
    prop_oneof![
        2 => Just(u16::from(lpc::CONNECTION_REQUEST)),
        8 => Just(u16::from(lpc::DATAGRAM)),
        1 => Just(u16::from(lpc::REQUEST) | lpc::NO_IMPERSONATE),
        1 => Just(u16::from(lpc::PORT_CLOSED)),
        1 => Just(u16::from(lpc::CLIENT_DIED)),
        1 => any::<u16>(),
    ]
}

fn record() -> impl Strategy<Value = Record> {
    prop_oneof![
        12 => (0..4u64, lpc_type(), payload())
            .prop_map(|(conn, lpc_type, payload)| Record::Message { conn, lpc_type, payload }),
        1 => prop_oneof![0..10u64, 0..5_000_000u64].prop_map(|advance_ns| Record::Poll { advance_ns }),
    ]
}

/// What one instance has resolved so far: the next sequence number it must resolve.
#[derive(Default)]
struct Resolved {
    next: BTreeMap<[u8; 16], u64>,
}

impl Resolved {
    fn check(&mut self, out: &[Output]) -> Result<(), TestCaseError> {
        for o in out {
            let (producer, first, last) = match o {
                Output::Event { producer, event, .. } => (producer, event.header.seq, event.header.seq),
                Output::Loss { producer, loss } => {
                    prop_assert!(loss.count >= 1);
                    if matches!(loss.stage, LossStage::ProducerQueue | LossStage::Kernel) {
                        continue;
                    }
                    prop_assert_eq!(loss.count, loss.last_seq - loss.first_seq + 1);
                    (producer, loss.first_seq, loss.last_seq)
                }
                _ => continue,
            };
            // Each instance resolves its numbers once each, in order, with no holes.
            let next = self
                .next
                .get_mut(&producer.instance)
                .expect("output for a connected instance");
            prop_assert_eq!(first, *next, "resolved out of order or twice: {:?}", o);
            prop_assert!(last <= MAX_SEQ);
            *next = last + 1;
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn server_survives_arbitrary_input_within_its_limits(
        records in vec(record(), 1..150),
        reorder_max in 1..6usize,
        reassembly_max_events in 1..4usize,
        max_connections in 1..4usize,
    ) {
        let config = ServerConfig {
            max_connections,
            reorder_max,
            reassembly_max_events,
            reassembly_max_bytes: 2048,
            max_event_len: 1024,
            reassembly_timeout_ns: 1_000_000,
            gap_timeout_ns: 2_000_000,
            ..ServerConfig::default()
        };
        let mut server = Server::new(config);
        let mut now = 0u64;
        let mut out = Vec::new();
        let mut resolved = Resolved::default();
        let mut message_id = 0u32;
        for r in &records {
            match r {
                Record::Poll { advance_ns } => {
                    now += advance_ns;
                    server.poll(now, &mut out);
                }
                Record::Message { conn, lpc_type, payload } => {
                    now += 1_000;
                    message_id += 1;
                    let data = payload.bytes();
                    let mut header = port_header(0, &data, message_id);
                    header.message_type = *lpc_type;
                    let action = server.handle(now, *conn, &header, &data, &mut out);
                    let expected_ok = match header.kind() {
                        lpc::CONNECTION_REQUEST => {
                            if let Action::Accept { .. } = action {
                                // The server accepted exactly what a Hello decoder accepts.
                                let Ok(Message::Hello(h)) = Message::decode(&data, 128) else {
                                    panic!("accepted a non-Hello")
                                };
                                resolved.next.entry(h.instance).or_insert(h.next_seq);
                            }
                            matches!(action, Action::Accept { .. } | Action::Refuse { .. })
                        }
                        lpc::DATAGRAM => action == Action::None,
                        lpc::REQUEST => action == Action::Reply { message_id },
                        lpc::PORT_CLOSED | lpc::CLIENT_DIED => action == Action::Close,
                        _ => action == Action::None,
                    };
                    prop_assert!(expected_ok, "lpc type {:#x} answered with {:?}", lpc_type, action);
                }
            }
            resolved.check(&out)?;
            out.clear();
            // Bounded memory: connections, held events per instance, reassembly per connection.
            prop_assert!(server.connections() <= max_connections);
            prop_assert!(
                server.held_events() <= reorder_max * resolved.next.len(),
                "held {} > {} × {} instances", server.held_events(), reorder_max, resolved.next.len()
            );
            prop_assert!(server.reassembling() <= reassembly_max_events * server.connections());
        }
        // Closing every connection resolves everything held back.
        for conn in 0..4 {
            let header = port_header(lpc::PORT_CLOSED, &[], 0);
            server.handle(now, conn, &header, &[], &mut out);
        }
        resolved.check(&out)?;
        prop_assert_eq!(server.connections(), 0);
        prop_assert_eq!(server.held_events(), 0);
        prop_assert_eq!(server.reassembling(), 0);
    }

    #[test]
    fn one_instance_holds_at_most_reorder_max_events(
        records in vec((lpc_type(), payload_leaf()), 1..150),
        reorder_max in 1..6usize,
    ) {
        let mut server = Server::new(ServerConfig { reorder_max, ..ServerConfig::default() });
        let mut out = Vec::new();
        let hello = Hello {
            min_version: 1,
            max_version: 1,
            kind: ProducerKind::LinuxSensor,
            instance: [1; 16],
            max_message: 4096,
            next_seq: 1,
            os_build: 0,
            os: "linux",
        };
        prop_assert!(connect(&mut server, 0, 9, &hello, &mut out).is_some());
        for (i, (lpc_type, payload)) in records.iter().enumerate() {
            if *lpc_type != u16::from(lpc::DATAGRAM) {
                continue;
            }
            let data = payload.bytes();
            server.handle(i as u64, 9, &port_header(lpc::DATAGRAM, &data, i as u32), &data, &mut out);
            prop_assert!(server.held_events() <= reorder_max, "held {}", server.held_events());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Regressions the properties above found, kept as plain tests.

fn event_header_with_seq(seq: u64) -> EventHeader {
    EventHeader {
        seq,
        kind: EventKind::ProcessStart,
        flags: 0,
        time_ns: 0,
        pid: 1,
        ppid: 0,
        tid: 1,
    }
}

#[test]
fn the_writer_never_exceeds_max_fields() {
    let mut buf = vec![0u8; 4096];
    let mut w = EventWriter::new(&mut buf, &event_header_with_seq(1), 64).unwrap();
    for _ in 0..MAX_FIELDS + 6 {
        w.utf8(FieldType::NAME, "").unwrap();
    }
    let len = w.finish();
    let Message::Event(view) = decode(&buf[..len]) else {
        panic!("not an Event")
    };
    assert_eq!(view.fields().count(), MAX_FIELDS);
    assert_ne!(view.header.flags & flags::FIELDS_OMITTED, 0);
}

#[test]
fn a_string_without_room_for_its_field_header_is_omitted() {
    let mut buf = vec![0u8; EVENT_MIN_LEN + 5];
    let mut w = EventWriter::new(&mut buf, &event_header_with_seq(1), 64).unwrap();
    w.utf8(FieldType::NAME, "").unwrap();
    w.utf16(FieldType::NAME, &[]).unwrap();
    let len = w.finish();
    let Message::Event(view) = decode(&buf[..len]) else {
        panic!("not an Event")
    };
    assert_eq!(view.fields().count(), 0);
    assert_eq!(view.header.flags, flags::FIELDS_OMITTED);
}

#[test]
fn sequence_numbers_past_max_seq_are_typed_errors() {
    let mut buf = vec![0u8; 256];
    let len = EventWriter::new(&mut buf, &event_header_with_seq(u64::MAX), 0)
        .unwrap()
        .finish();
    assert!(matches!(
        Message::decode(&buf[..len], 256),
        Err(DecodeError::InvalidValue(_))
    ));

    let hb = Heartbeat {
        last_seq: MAX_SEQ + 1,
        ..Heartbeat::default()
    };
    let len = hb.encode(&mut buf).unwrap();
    assert!(matches!(
        Message::decode(&buf[..len], 256),
        Err(DecodeError::InvalidValue(_))
    ));

    // Once `last - first + 1` overflowed here and the decoder panicked.
    let loss = Loss {
        stage: LossStage::ProducerSend,
        count: u64::MAX,
        first_seq: 0,
        last_seq: u64::MAX,
        total: u64::MAX,
    };
    let len = loss.encode(&mut buf).unwrap();
    assert!(matches!(
        Message::decode(&buf[..len], 256),
        Err(DecodeError::InvalidValue(_))
    ));
}

fn connected_server(reorder_max: usize) -> (Server, Vec<Output>) {
    let mut server = Server::new(ServerConfig {
        reorder_max,
        ..ServerConfig::default()
    });
    let mut out = Vec::new();
    let hello = Hello {
        min_version: 1,
        max_version: 1,
        kind: ProducerKind::LinuxSensor,
        instance: [3; 16],
        max_message: 4096,
        next_seq: 1,
        os_build: 0,
        os: "linux",
    };
    assert!(connect(&mut server, 0, 1, &hello, &mut out).is_some());
    out.clear();
    (server, out)
}

fn send_loss(server: &mut Server, loss: Loss, out: &mut Vec<Output>) {
    let mut buf = [0u8; 64];
    let len = loss.encode(&mut buf).unwrap();
    server.handle(
        1,
        1,
        &port_header(lpc::DATAGRAM, &buf[..len], 1),
        &buf[..len],
        out,
    );
}

#[test]
fn reported_losses_ahead_of_the_window_count_against_reorder_max() {
    let (mut server, mut out) = connected_server(2);
    for seq in [3, 5, 7, 9] {
        let loss = Loss {
            stage: LossStage::ProducerSend,
            count: 1,
            first_seq: seq,
            last_seq: seq,
            total: seq,
        };
        send_loss(&mut server, loss, &mut out);
        assert!(server.held_events() <= 2, "held {}", server.held_events());
    }
    // The gaps before the ranges pushed out of the window became transport loss, in order.
    let ranges: Vec<(LossStage, u64, u64)> = out
        .iter()
        .filter_map(|o| match o {
            Output::Loss { loss, .. } => Some((loss.stage, loss.first_seq, loss.last_seq)),
            _ => None,
        })
        .collect();
    assert_eq!(
        ranges,
        [
            (LossStage::Transport, 1, 2),
            (LossStage::ProducerSend, 3, 3),
            (LossStage::Transport, 4, 4),
            (LossStage::ProducerSend, 5, 5),
        ]
    );
}

#[test]
fn a_producer_cannot_report_server_side_loss_stages() {
    let (mut server, mut out) = connected_server(8);
    for stage in [
        LossStage::Transport,
        LossStage::Reassembly,
        LossStage::ServerIngest,
    ] {
        let loss = Loss {
            stage,
            count: 5,
            first_seq: 1,
            last_seq: 1,
            total: 5,
        };
        send_loss(&mut server, loss, &mut out);
    }
    assert!(
        out.iter().all(|o| matches!(o, Output::Malformed { .. })),
        "{out:?}"
    );
    // The bogus totals did not eat into the real queue-drop total.
    out.clear();
    let queue = Loss {
        stage: LossStage::ProducerQueue,
        count: 5,
        first_seq: 1,
        last_seq: 1,
        total: 5,
    };
    send_loss(&mut server, queue, &mut out);
    assert!(
        matches!(&out[..], [Output::Loss { loss, .. }] if loss.count == 5),
        "{out:?}"
    );
}

#[test]
fn a_heartbeat_at_max_seq_does_not_overflow() {
    let (mut server, mut out) = connected_server(8);
    let mut buf = [0u8; 64];
    for last_seq in [MAX_SEQ, u64::MAX] {
        let hb = Heartbeat {
            last_seq,
            ..Heartbeat::default()
        };
        let len = hb.encode(&mut buf).unwrap();
        server.handle(
            1,
            1,
            &port_header(lpc::DATAGRAM, &buf[..len], 1),
            &buf[..len],
            &mut out,
        );
    }
    server.poll(u64::MAX / 2, &mut out);
    server.handle(2, 1, &port_header(lpc::PORT_CLOSED, &[], 2), &[], &mut out);
    assert!(matches!(out.last(), Some(Output::Disconnected { .. })));
}
