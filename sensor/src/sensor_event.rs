//! The sensor's enriched event and its encoding into an lpcmon Event message.
//!
//! This is the boundary between what the sensor learned (kernel message plus `/proc`) and the
//! wire format of `lpcmon-protocol`. The event borrows its text from whoever read it (the
//! sensor's reusable buffers), encoding does not allocate, and it leaves `seq` 0: the producer
//! core assigns sequence numbers when it queues the event.

use lpcmon_protocol::event::flags;
use lpcmon_protocol::{EncodeError, EventHeader, EventKind, EventWriter, FieldType};

/// One process event, ready to encode. Fields that do not apply or could not be learned are
/// `None` and are left out of the encoded event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SensorEvent<'a> {
    pub kind: EventKind,
    /// UTC nanoseconds since the Unix epoch when the kernel produced the event.
    pub time_ns: u64,
    /// The process (tgid).
    pub pid: u32,
    /// The parent process's tgid; 0 when unknown.
    pub ppid: u32,
    /// The task the kernel reported (for process events, the main thread: equal to `pid`).
    pub tid: u32,
    pub executable: Option<&'a str>,
    pub command_line: Option<&'a str>,
    /// The real uid.
    pub user_id: Option<u32>,
    /// The kernel's `comm` name.
    pub name: Option<&'a str>,
    /// For `process.exit`: see [`exit_code_from_wait_status`].
    pub exit_code: Option<i32>,
    /// `/proc` could not be read completely (the process had already exited).
    pub enrich_failed: bool,
    /// The command line was cut when it was read, before any encoding cap.
    pub command_line_truncated: bool,
}

impl SensorEvent<'_> {
    /// An event with only the header values set.
    pub fn new(kind: EventKind, time_ns: u64, pid: u32, ppid: u32, tid: u32) -> Self {
        SensorEvent {
            kind,
            time_ns,
            pid,
            ppid,
            tid,
            executable: None,
            command_line: None,
            user_id: None,
            name: None,
            exit_code: None,
            enrich_failed: false,
            command_line_truncated: false,
        }
    }
}

/// Turns the kernel's `task->exit_code`, a raw wait status, into the exit code a shell would
/// show, the way Python's `returncode` does: the status passed to `exit()` (0–255) for a
/// normal exit, or the negated signal number for a process killed by a signal (the core-dump
/// bit is dropped).
pub fn exit_code_from_wait_status(status: u32) -> i32 {
    let signal = status & 0x7f;
    if signal == 0 {
        ((status >> 8) & 0xff) as i32
    } else {
        -(signal as i32)
    }
}

/// Encodes `ev` as an lpcmon Event message into `buf` and returns its length. Strings longer
/// than `string_cap` bytes are truncated and flagged; fields that do not fit are left out and
/// flagged. Fails only if `buf` cannot hold the event header.
pub fn encode_event(ev: &SensorEvent<'_>, buf: &mut [u8], string_cap: usize) -> Result<usize, EncodeError> {
    let mut header_flags = 0;
    if ev.enrich_failed {
        header_flags |= flags::ENRICH_FAILED;
    }
    if ev.command_line_truncated {
        header_flags |= flags::TRUNCATED;
    }
    let header = EventHeader {
        seq: 0,
        kind: ev.kind,
        flags: header_flags,
        time_ns: ev.time_ns,
        pid: ev.pid,
        ppid: ev.ppid,
        tid: ev.tid,
    };
    let mut w = EventWriter::new(buf, &header, string_cap)?;
    if let Some(exe) = ev.executable {
        w.utf8(FieldType::EXECUTABLE, exe)?;
    }
    if let Some(line) = ev.command_line {
        w.utf8(FieldType::COMMAND_LINE, line)?;
    }
    if let Some(uid) = ev.user_id {
        // The protocol carries user ids as text, so a Windows SID fits the same field.
        let mut digits = [0u8; 10];
        w.utf8(FieldType::USER_ID, format_u32(uid, &mut digits))?;
    }
    if let Some(name) = ev.name {
        w.utf8(FieldType::NAME, name)?;
    }
    if let Some(code) = ev.exit_code {
        w.i32(FieldType::EXIT_CODE, code)?;
    }
    Ok(w.finish())
}

/// Formats `v` in decimal into `buf` without allocating.
fn format_u32(mut v: u32, buf: &mut [u8; 10]) -> &str {
    let mut start = buf.len();
    loop {
        start -= 1;
        buf[start] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    core::str::from_utf8(&buf[start..]).unwrap_or("0")
}

#[cfg(test)]
mod tests {
    use super::*;
    use lpcmon_protocol::event::Event;
    use lpcmon_protocol::{Message, event::patch_seq};

    fn round_trip(ev: &SensorEvent<'_>, cap: usize) -> Event {
        let mut buf = [0u8; 1024];
        let len = encode_event(ev, &mut buf, cap).unwrap();
        // Decoders reject seq 0; the producer core patches it before sending.
        patch_seq(&mut buf[..len], 1).unwrap();
        match Message::decode(&buf[..len], usize::MAX).unwrap() {
            Message::Event(view) => Event::from(&view),
            other => panic!("not an event: {other:?}"),
        }
    }

    #[test]
    fn an_exec_event_carries_its_fields() {
        let mut ev = SensorEvent::new(EventKind::ProcessExec, 1_700_000_000_000_000_000, 42, 7, 42);
        ev.executable = Some("/usr/bin/true");
        ev.command_line = Some("true --version");
        ev.user_id = Some(1000);
        ev.name = Some("true");
        let got = round_trip(&ev, 4096);
        assert_eq!(
            got.header,
            EventHeader {
                seq: 1,
                kind: EventKind::ProcessExec,
                flags: 0,
                time_ns: 1_700_000_000_000_000_000,
                pid: 42,
                ppid: 7,
                tid: 42,
            }
        );
        assert_eq!(got.text(FieldType::EXECUTABLE), Some("/usr/bin/true"));
        assert_eq!(got.text(FieldType::COMMAND_LINE), Some("true --version"));
        assert_eq!(got.text(FieldType::USER_ID), Some("1000"));
        assert_eq!(got.text(FieldType::NAME), Some("true"));
        assert_eq!(got.fields.len(), 4);
    }

    #[test]
    fn flags_mark_failed_enrichment_and_cut_command_lines() {
        let mut ev = SensorEvent::new(EventKind::ProcessExec, 1, 5, 0, 5);
        ev.enrich_failed = true;
        let long = "x".repeat(100);
        ev.command_line = Some(&long);
        ev.command_line_truncated = true;
        let got = round_trip(&ev, 10);
        assert_eq!(got.header.flags, flags::ENRICH_FAILED | flags::TRUNCATED);
        assert_eq!(
            got.field(FieldType::COMMAND_LINE).unwrap().original_len,
            Some(100)
        );
    }

    #[test]
    fn an_exit_event_carries_its_code() {
        let mut ev = SensorEvent::new(EventKind::ProcessExit, 1, 5, 1, 5);
        ev.exit_code = Some(-9);
        assert_eq!(round_trip(&ev, 64).i32(FieldType::EXIT_CODE), Some(-9));
    }

    #[test]
    fn wait_statuses_become_shell_exit_codes() {
        assert_eq!(exit_code_from_wait_status(0), 0);
        assert_eq!(exit_code_from_wait_status(1 << 8), 1);
        assert_eq!(exit_code_from_wait_status(255 << 8), 255);
        assert_eq!(exit_code_from_wait_status(9), -9);
        // SIGSEGV with the core-dump bit.
        assert_eq!(exit_code_from_wait_status(0x80 | 11), -11);
    }

    #[test]
    fn uids_format_in_decimal() {
        let mut buf = [0u8; 10];
        assert_eq!(format_u32(0, &mut buf), "0");
        assert_eq!(format_u32(65_534, &mut buf), "65534");
        assert_eq!(format_u32(u32::MAX, &mut buf), "4294967295");
    }

    #[test]
    fn a_buffer_too_small_for_the_header_is_an_error() {
        let ev = SensorEvent::new(EventKind::ProcessStart, 1, 5, 1, 5);
        assert!(encode_event(&ev, &mut [0u8; 8], 64).is_err());
    }
}
