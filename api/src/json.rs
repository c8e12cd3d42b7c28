//! Turns the port server's outputs into event JSON, schema 1 (`docs/design.md`, "Event JSON").
//!
//! Each stored event is serialised exactly once, here, at ingest. Every later reader (REST
//! pages, NDJSON, SSE) copies these bytes instead of serialising again. A field that does not
//! apply is left out rather than written as `null`, so the structs below skip every `None`.

use std::borrow::Cow;

use lpcmon_protocol::event::{Event, FieldType, flags};
use lpcmon_protocol::message::Loss;
use lpcmon_protocol::server::{ProducerInfo, TransportInfo};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::kind::Kind;
use crate::page::Page;
use crate::timefmt::rfc3339_ns;

/// One event ready for the store: its JSON and what the filters look at.
#[derive(Debug)]
pub struct Record {
    pub kind: Kind,
    pub pid: Option<u32>,
    /// Executable, command line and image path, lowercased and joined by `\n`, for `q`.
    pub search: String,
    pub json: Box<RawValue>,
}

#[derive(Serialize)]
struct EventJson<'a> {
    id: u64,
    kind: &'static str,
    time: String,
    received: String,
    producer: ProducerJson<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    process: Option<ProcessJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thread: Option<IdJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<ImageJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    loss: Option<LossJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    transport: Option<TransportJson>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    flags: Vec<Cow<'static, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

#[derive(Serialize)]
struct ProducerJson<'a> {
    kind: &'static str,
    instance: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    /// The rest describes the producer once, on `producer.connect`.
    #[serde(skip_serializing_if = "Option::is_none")]
    os: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    os_build: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    protocol_version: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_pid: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_message: Option<u32>,
}

impl<'a> ProducerJson<'a> {
    fn short(p: &'a ProducerInfo, seq: Option<u64>) -> Self {
        ProducerJson {
            kind: p.kind.name(),
            seq,
            ..ProducerJson::short_instance(&p.instance_hex)
        }
    }

    fn short_instance(instance: &'a str) -> Self {
        ProducerJson {
            kind: "",
            instance,
            seq: None,
            os: None,
            os_build: None,
            protocol_version: None,
            client_pid: None,
            max_message: None,
        }
    }

    fn full(p: &'a ProducerInfo) -> Self {
        ProducerJson {
            os: Some(&p.os),
            os_build: Some(p.os_build),
            protocol_version: Some(p.version),
            client_pid: Some(p.client_pid),
            max_message: Some(p.max_message),
            ..ProducerJson::short(p, None)
        }
    }
}

#[derive(Serialize)]
struct IdJson {
    id: u32,
}

#[derive(Serialize)]
struct PidJson {
    pid: u32,
}

#[derive(Serialize)]
struct UserJson<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id_original_length: Option<u32>,
}

#[derive(Serialize)]
struct ProcessJson<'a> {
    pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    executable: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    executable_original_length: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    command_line: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    command_line_original_length: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name_original_length: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent: Option<PidJson>,
    /// Windows: the process whose thread created this one; it may differ from the parent.
    #[serde(skip_serializing_if = "Option::is_none")]
    creator: Option<PidJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<UserJson<'a>>,
}

#[derive(Serialize)]
struct ImageJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path_original_length: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    base: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
}

#[derive(Serialize)]
struct LossJson {
    stage: &'static str,
    count: u64,
    first_seq: u64,
    last_seq: u64,
}

#[derive(Serialize)]
struct TransportJson {
    api: &'static str,
    message_id: u32,
    client_pid: u64,
    bytes: usize,
    fragments: u16,
}

/// The names of an event's flag bits. A bit this build does not know is shown by its value,
/// so a newer producer's flag is never dropped without a trace.
fn flag_names(bits: u16) -> Vec<Cow<'static, str>> {
    const NAMED: [(u16, &str); 4] = [
        (flags::ENRICH_FAILED, "enrich_failed"),
        (flags::TRUNCATED, "truncated"),
        (flags::FIELDS_OMITTED, "fields_omitted"),
        (flags::KERNEL_IMAGE, "kernel_image"),
    ];
    let mut names = Vec::new();
    let mut rest = bits;
    for (bit, name) in NAMED {
        if bits & bit != 0 {
            names.push(Cow::Borrowed(name));
            rest &= !bit;
        }
    }
    for i in 0..16 {
        let bit = 1u16 << i;
        if rest & bit != 0 {
            names.push(Cow::Owned(format!("0x{bit:04x}")));
        }
    }
    names
}

fn original_len(event: &Event, ty: FieldType) -> Option<u32> {
    event.field(ty).and_then(|f| f.original_len)
}

fn search_text(parts: &[Option<&str>]) -> String {
    // One allocation: paths and command lines are nearly always ASCII, lowercased in place;
    // anything else goes through the full Unicode mapping.
    let len = parts.iter().flatten().map(|p| p.len() + 1).sum();
    let mut s = String::with_capacity(len);
    for part in parts.iter().flatten() {
        if !s.is_empty() {
            s.push('\n');
        }
        if part.is_ascii() {
            let start = s.len();
            s.push_str(part);
            s[start..].make_ascii_lowercase();
        } else {
            s.push_str(&part.to_lowercase());
        }
    }
    s
}

/// The record of one producer event.
pub fn event(
    id: u64,
    received_ns: u64,
    producer: &ProducerInfo,
    event: &Event,
    transport: &TransportInfo,
) -> Result<Record, serde_json::Error> {
    let h = &event.header;
    let executable = event.text(FieldType::EXECUTABLE);
    let command_line = event.text(FieldType::COMMAND_LINE);
    let image_path = event.text(FieldType::IMAGE_PATH);
    let image_base = event.u64(FieldType::IMAGE_BASE);
    let image_size = event.u64(FieldType::IMAGE_SIZE);
    let process = ProcessJson {
        pid: h.pid,
        executable,
        executable_original_length: original_len(event, FieldType::EXECUTABLE),
        command_line,
        command_line_original_length: original_len(event, FieldType::COMMAND_LINE),
        name: event.text(FieldType::NAME),
        name_original_length: original_len(event, FieldType::NAME),
        // ppid 0 means the producer did not know it (or the process has no parent).
        parent: (h.ppid != 0).then_some(PidJson { pid: h.ppid }),
        creator: event.u32(FieldType::CREATING_PID).map(|pid| PidJson { pid }),
        exit_code: event.i32(FieldType::EXIT_CODE),
        user: event.text(FieldType::USER_ID).map(|id| UserJson {
            id,
            id_original_length: original_len(event, FieldType::USER_ID),
        }),
    };
    let has_image = image_path.is_some() || image_base.is_some() || image_size.is_some();
    let kind = Kind::Event(h.kind);
    let doc = EventJson {
        id,
        kind: kind.name(),
        time: rfc3339_ns(h.time_ns),
        received: rfc3339_ns(received_ns),
        producer: ProducerJson::short(producer, Some(h.seq)),
        process: Some(process),
        thread: (h.tid != 0).then_some(IdJson { id: h.tid }),
        image: has_image.then(|| ImageJson {
            path: image_path,
            path_original_length: original_len(event, FieldType::IMAGE_PATH),
            base: image_base,
            size: image_size,
        }),
        loss: None,
        transport: Some(TransportJson {
            api: transport.api,
            message_id: transport.message_id,
            client_pid: transport.client_pid,
            bytes: transport.bytes,
            fragments: transport.fragments,
        }),
        flags: flag_names(h.flags),
        reason: None,
    };
    Ok(Record {
        kind,
        pid: Some(h.pid),
        search: search_text(&[executable, command_line, image_path]),
        json: serde_json::value::to_raw_value(&doc)?,
    })
}

/// A record the server writes itself. It has no producer time, so `time` is when it was
/// received.
fn server_record(
    id: u64,
    received_ns: u64,
    kind: Kind,
    producer: ProducerJson<'_>,
    loss: Option<LossJson>,
    reason: Option<&str>,
) -> Result<Record, serde_json::Error> {
    let received = rfc3339_ns(received_ns);
    let doc = EventJson {
        id,
        kind: kind.name(),
        time: received.clone(),
        received,
        producer,
        process: None,
        thread: None,
        image: None,
        loss,
        transport: None,
        flags: Vec::new(),
        reason,
    };
    Ok(Record {
        kind,
        pid: None,
        search: String::new(),
        json: serde_json::value::to_raw_value(&doc)?,
    })
}

/// The record of this server's own `publish` loss: ids `first_id..=last_id` of its store were
/// evicted before NATS acknowledged them. The "producer" is the server itself.
pub fn publish_loss(
    id: u64,
    received_ns: u64,
    server_instance: &str,
    first_id: u64,
    last_id: u64,
    count: u64,
) -> Result<Record, serde_json::Error> {
    let producer = ProducerJson {
        kind: "server",
        ..ProducerJson::short_instance(server_instance)
    };
    let body = LossJson {
        stage: lpcmon_protocol::message::LossStage::Publish.name(),
        count,
        first_seq: first_id,
        last_seq: last_id,
    };
    server_record(id, received_ns, Kind::Loss, producer, Some(body), None)
}

fn text<'v>(value: Option<&'v serde_json::Value>, key: &str) -> Option<&'v str> {
    value.and_then(|v| v.get(key)).and_then(serde_json::Value::as_str)
}

/// The record of an event another server stored: its JSON with this server's `id` and its
/// `origin`. `None` if it is not an lpcmon event (no known `kind`).
pub fn imported(
    id: u64,
    mut doc: serde_json::Map<String, serde_json::Value>,
    origin: &crate::fleet::Origin,
) -> Option<Result<Record, serde_json::Error>> {
    let kind = Kind::parse(doc.get("kind")?.as_str()?)?;
    let process = doc.get("process");
    let pid = process
        .and_then(|p| p.get("pid"))
        .and_then(serde_json::Value::as_u64)
        .and_then(|p| u32::try_from(p).ok());
    let search = search_text(&[
        text(process, "executable"),
        text(process, "command_line"),
        text(doc.get("image"), "path"),
    ]);
    doc.insert("id".into(), id.into());
    let origin = match serde_json::to_value(origin) {
        Ok(origin) => origin,
        Err(e) => return Some(Err(e)),
    };
    doc.insert("origin".into(), origin);
    Some(serde_json::value::to_raw_value(&doc).map(|json| Record {
        kind,
        pid,
        search,
        json,
    }))
}

/// The record of events lost; it names the producer whose events they were (invariant 6).
pub fn loss(
    id: u64,
    received_ns: u64,
    producer: &ProducerInfo,
    loss: &Loss,
) -> Result<Record, serde_json::Error> {
    let body = LossJson {
        stage: loss.stage.name(),
        count: loss.count,
        first_seq: loss.first_seq,
        last_seq: loss.last_seq,
    };
    server_record(
        id,
        received_ns,
        Kind::Loss,
        ProducerJson::short(producer, None),
        Some(body),
        None,
    )
}

pub fn connect(id: u64, received_ns: u64, producer: &ProducerInfo) -> Result<Record, serde_json::Error> {
    server_record(
        id,
        received_ns,
        Kind::ProducerConnect,
        ProducerJson::full(producer),
        None,
        None,
    )
}

pub fn disconnect(
    id: u64,
    received_ns: u64,
    producer: &ProducerInfo,
    reason: &str,
) -> Result<Record, serde_json::Error> {
    server_record(
        id,
        received_ns,
        Kind::ProducerDisconnect,
        ProducerJson::short(producer, None),
        None,
        Some(reason),
    )
}

/// The `GET /events` reply. The events are the stored JSON texts, embedded as they are: they
/// were serialised once, at ingest, and are copied, not parsed or re-encoded, here. (Parsing
/// each stored text back into a `&RawValue` per page instead cost about 25 times as much.)
#[derive(Serialize)]
struct PageJson<'a> {
    events: Vec<&'a RawValue>,
    next_after: Option<u64>,
    oldest_id: Option<u64>,
    newest_id: Option<u64>,
}

/// The page as one JSON object: `{"events":[...],"next_after":..,"oldest_id":..,"newest_id":..}`.
pub fn page(page: &Page) -> Result<String, serde_json::Error> {
    let events = page.events.iter().map(|event| &*event.json).collect();
    serde_json::to_string(&PageJson {
        events,
        next_after: page.next_after,
        oldest_id: page.oldest_id,
        newest_id: page.newest_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_text_lowercases_ascii_and_unicode_alike() {
        assert_eq!(
            search_text(&[Some("/Usr/BIN/Ärger"), None, Some("CMD --X"), Some("")]),
            "/usr/bin/ärger\ncmd --x\n"
        );
        assert_eq!(search_text(&[None, None]), "");
    }
    use crate::store::StoredEvent;
    use lpcmon_protocol::event::{EventHeader, EventKind, Field, FieldValue};
    use lpcmon_protocol::message::{LossStage, ProducerKind};
    use serde_json::{Value, json};
    use std::sync::Arc;

    fn producer() -> ProducerInfo {
        ProducerInfo {
            conn: 1,
            kind: ProducerKind::LinuxSensor,
            instance: [0xab; 16],
            instance_hex: "ab".repeat(16),
            version: 1,
            os: "Linux 6.1".into(),
            os_build: 0,
            client_pid: 77,
            max_message: 65536,
            connected_at: 0,
        }
    }

    fn text(ty: FieldType, s: &str, original_len: Option<u32>) -> Field {
        Field {
            ty,
            value: FieldValue::Text(s.into()),
            original_len,
        }
    }

    fn transport() -> TransportInfo {
        TransportInfo {
            api: "unix",
            message_id: 9,
            client_pid: 77,
            bytes: 120,
            fragments: 1,
        }
    }

    #[test]
    fn exec_event_matches_schema_one() {
        let ev = Event {
            header: EventHeader {
                seq: 5,
                kind: EventKind::ProcessExec,
                flags: flags::TRUNCATED | 0x0100,
                time_ns: 1_700_000_000_000_000_001,
                pid: 1234,
                ppid: 1,
                tid: 0,
            },
            fields: vec![
                text(FieldType::EXECUTABLE, "/usr/bin/True", None),
                text(FieldType::COMMAND_LINE, "true --x", Some(5000)),
                text(FieldType::USER_ID, "0", None),
                Field {
                    ty: FieldType::EXIT_CODE,
                    value: FieldValue::Bytes((-3i32).to_le_bytes().to_vec()),
                    original_len: None,
                },
            ],
        };
        let rec = event(42, 1_700_000_000_000_000_002, &producer(), &ev, &transport()).unwrap();
        let v: Value = serde_json::from_str(rec.json.get()).unwrap();
        assert_eq!(
            v,
            json!({
                "id": 42, "kind": "process.exec",
                "time": "2023-11-14T22:13:20.000000001Z", "received": "2023-11-14T22:13:20.000000002Z",
                "producer": {"kind": "linux-sensor", "instance": "ab".repeat(16), "seq": 5},
                "process": {"pid": 1234, "executable": "/usr/bin/True", "command_line": "true --x",
                            "command_line_original_length": 5000, "parent": {"pid": 1},
                            "exit_code": -3, "user": {"id": "0"}},
                "transport": {"api": "unix", "message_id": 9, "client_pid": 77, "bytes": 120, "fragments": 1},
                "flags": ["truncated", "0x0100"]
            })
        );
        assert_eq!(rec.pid, Some(1234));
        assert_eq!(rec.search, "/usr/bin/true\ntrue --x");
    }

    #[test]
    fn a_page_embeds_the_stored_json_as_it_is() {
        let l = Loss {
            stage: LossStage::Transport,
            count: 1,
            first_seq: 4,
            last_seq: 4,
            total: 1,
        };
        let stored = |id| {
            Arc::new(StoredEvent {
                id,
                kind: Kind::Loss,
                pid: None,
                producer: Some(Arc::new(producer())),
                host: None,
                search: "".into(),
                json: loss(id, 0, &producer(), &l).unwrap().json.into(),
            })
        };
        let events = vec![stored(7), stored(8)];
        let body = page(&Page {
            events: events.clone(),
            next_after: Some(8),
            oldest_id: Some(1),
            newest_id: None,
        })
        .unwrap();
        let expected = format!(
            r#"{{"events":[{},{}],"next_after":8,"oldest_id":1,"newest_id":null}}"#,
            events[0].json.get(),
            events[1].json.get()
        );
        assert_eq!(body, expected);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["events"][1]["loss"]["first_seq"], 4);
    }

    #[test]
    fn loss_names_its_producer_without_seq() {
        let l = Loss {
            stage: LossStage::ServerIngest,
            count: 3,
            first_seq: 10,
            last_seq: 12,
            total: 3,
        };
        let rec = loss(7, 0, &producer(), &l).unwrap();
        let v: Value = serde_json::from_str(rec.json.get()).unwrap();
        assert_eq!(
            v["loss"],
            json!({"stage": "server_ingest", "count": 3, "first_seq": 10, "last_seq": 12})
        );
        assert_eq!(
            v["producer"],
            json!({"kind": "linux-sensor", "instance": "ab".repeat(16)})
        );
        assert_eq!(v["time"], v["received"]);
        assert!(v.get("process").is_none());
    }
}
