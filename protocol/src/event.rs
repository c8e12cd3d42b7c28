//! The Event message: a fixed header, then typed fields.
//!
//! ```text
//! common header (8) | seq u64 | kind u16 | flags u16 | field_count u16 | reserved u16
//!                   | time_ns u64 | pid u32 | ppid u32 | tid u32 | reserved u32
//! field: type u16 | encoding u8 | len u32 | bytes
//! ```
//!
//! A truncated string has bit 7 of `encoding` set; its `bytes` then start with the original
//! length (u32, bytes in the original encoding) followed by the kept prefix. [`EventWriter`]
//! encodes without allocating, so a driver callback can build an event straight into a
//! preallocated queue slot.

use crate::cursor::{Reader, Writer, utf8_prefix};
use crate::error::{DecodeError, EncodeError};
use crate::header::{COMMON_HEADER_LEN, MAX_SEQ, MessageType, VERSION, write_common};

wire_enum! {
    /// What happened. The names are the JSON `kind` values.
    pub enum EventKind: u16 {
        ProcessStart = 1 => "process.start",
        ProcessExec = 2 => "process.exec",
        ProcessExit = 3 => "process.exit",
        ThreadStart = 4 => "thread.start",
        ThreadExit = 5 => "thread.exit",
        ImageLoad = 6 => "image.load",
        /// Linux: a process changed its real or effective uid.
        ProcessSetuid = 7 => "process.setuid",
        /// Linux: a process changed its `comm` name.
        ProcessRename = 8 => "process.rename",
    }
}

/// Event flag bits.
pub mod flags {
    /// The producer could not read the process's details (it had already exited). The event
    /// is kept with what the kernel message itself carried.
    pub const ENRICH_FAILED: u16 = 0x0001;
    /// At least one string field was truncated.
    pub const TRUNCATED: u16 = 0x0002;
    /// A field did not fit at all and was left out.
    pub const FIELDS_OMITTED: u16 = 0x0004;
    /// image.load: the image was mapped into system space (a driver), not a process.
    pub const KERNEL_IMAGE: u16 = 0x0008;
}

/// The type of a field. Unknown types decode as raw bytes so newer producers stay readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FieldType(pub u16);

impl FieldType {
    /// Path of the process's executable.
    pub const EXECUTABLE: FieldType = FieldType(1);
    pub const COMMAND_LINE: FieldType = FieldType(2);
    /// Path of a loaded image.
    pub const IMAGE_PATH: FieldType = FieldType(3);
    /// u64, little-endian.
    pub const IMAGE_BASE: FieldType = FieldType(4);
    /// u64, little-endian.
    pub const IMAGE_SIZE: FieldType = FieldType(5);
    /// i32, little-endian: exit status (Linux) or NTSTATUS (Windows).
    pub const EXIT_CODE: FieldType = FieldType(6);
    /// A uid in decimal, or a SID string.
    pub const USER_ID: FieldType = FieldType(7);
    /// Linux `comm`: the short task name.
    pub const NAME: FieldType = FieldType(8);
    /// u32: the pid of the thread that created the process (Windows; may differ from ppid).
    pub const CREATING_PID: FieldType = FieldType(9);
}

/// How a field's bytes are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Encoding {
    Utf8 = 1,
    Utf16Le = 2,
    Bytes = 3,
}

const TRUNCATED_BIT: u8 = 0x80;

impl Encoding {
    fn from_u8(v: u8) -> Result<Self, DecodeError> {
        Ok(match v {
            1 => Self::Utf8,
            2 => Self::Utf16Le,
            3 => Self::Bytes,
            other => return Err(DecodeError::UnknownEncoding(other)),
        })
    }
}

/// The fixed part of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventHeader {
    /// Per producer instance, from 1, no gaps. Writers may leave it 0 and patch it later with
    /// [`patch_seq`].
    pub seq: u64,
    pub kind: EventKind,
    pub flags: u16,
    /// UTC nanoseconds since the Unix epoch.
    pub time_ns: u64,
    pub pid: u32,
    pub ppid: u32,
    pub tid: u32,
}

/// Bytes of the event header after the common header.
pub const EVENT_HEADER_LEN: usize = 40;
/// Offset of `seq` in an encoded Event message.
const SEQ_OFFSET: usize = COMMON_HEADER_LEN;
const FLAGS_OFFSET: usize = COMMON_HEADER_LEN + 10;
const COUNT_OFFSET: usize = COMMON_HEADER_LEN + 12;
/// The smallest encoded event.
pub const EVENT_MIN_LEN: usize = COMMON_HEADER_LEN + EVENT_HEADER_LEN;
const FIELD_HEADER_LEN: usize = 7;
/// More fields than this make an event malformed.
pub const MAX_FIELDS: usize = 64;

/// Sets the sequence number of an encoded event in place.
pub fn patch_seq(encoded: &mut [u8], seq: u64) -> Result<(), EncodeError> {
    Writer::at(encoded, SEQ_OFFSET).u64(seq)
}

/// Encodes an event into a caller's buffer without allocating.
pub struct EventWriter<'a> {
    w: Writer<'a>,
    string_cap: usize,
    fields: u16,
    flags: u16,
}

impl<'a> EventWriter<'a> {
    /// Starts an event. Strings longer than `string_cap` bytes are truncated.
    pub fn new(buf: &'a mut [u8], header: &EventHeader, string_cap: usize) -> Result<Self, EncodeError> {
        let mut w = Writer::new(buf);
        write_common(&mut w, MessageType::Event, VERSION)?;
        w.u64(header.seq)?;
        w.u16(header.kind as u16)?;
        w.u16(header.flags)?;
        w.u16(0)?;
        w.u16(0)?;
        w.u64(header.time_ns)?;
        w.u32(header.pid)?;
        w.u32(header.ppid)?;
        w.u32(header.tid)?;
        w.u32(0)?;
        Ok(EventWriter {
            w,
            string_cap,
            fields: 0,
            flags: header.flags,
        })
    }

    fn has_room_for_field(&mut self, body: usize) -> bool {
        if usize::from(self.fields) >= MAX_FIELDS || self.w.remaining() < FIELD_HEADER_LEN + body {
            self.flags |= flags::FIELDS_OMITTED;
            return false;
        }
        true
    }

    fn field_header(&mut self, ty: FieldType, encoding: u8, len: usize) -> Result<(), EncodeError> {
        self.fields += 1;
        self.w.u16(ty.0)?;
        self.w.u8(encoding)?;
        self.w.u32(len as u32)
    }

    /// Room for a string of `len` bytes: its full length, or a truncated prefix.
    fn string_room(&mut self, len: usize) -> Option<usize> {
        let whole = usize::from(self.fields) < MAX_FIELDS
            && len <= self.string_cap
            && FIELD_HEADER_LEN + len <= self.w.remaining();
        if whole {
            return Some(len);
        }
        // Truncated: the original length takes 4 bytes.
        if !self.has_room_for_field(4) {
            return None;
        }
        Some(self.string_cap.min(self.w.remaining() - FIELD_HEADER_LEN - 4))
    }

    fn string_field(
        &mut self,
        ty: FieldType,
        enc: Encoding,
        full_len: usize,
        kept: &[u8],
    ) -> Result<(), EncodeError> {
        if kept.len() == full_len {
            self.field_header(ty, enc as u8, kept.len())?;
        } else {
            self.flags |= flags::TRUNCATED;
            self.field_header(ty, enc as u8 | TRUNCATED_BIT, 4 + kept.len())?;
            self.w.u32(full_len.min(u32::MAX as usize) as u32)?;
        }
        self.w.bytes(kept)
    }

    /// Adds a UTF-8 string, truncated at a character boundary if needed.
    pub fn utf8(&mut self, ty: FieldType, s: &str) -> Result<(), EncodeError> {
        let Some(room) = self.string_room(s.len()) else {
            return Ok(());
        };
        let kept = utf8_prefix(s, room);
        self.string_field(ty, Encoding::Utf8, s.len(), kept.as_bytes())
    }

    /// Adds a UTF-16LE string given as code units, truncated without splitting a surrogate pair.
    pub fn utf16(&mut self, ty: FieldType, units: &[u16]) -> Result<(), EncodeError> {
        let full = units.len() * 2;
        let Some(room) = self.string_room(full) else {
            return Ok(());
        };
        let mut n = room / 2;
        if n < units.len() && n > 0 && (0xD800..0xDC00).contains(&units[n - 1]) {
            n -= 1;
        }
        let kept = &units[..n];
        if n == units.len() {
            self.field_header(ty, Encoding::Utf16Le as u8, full)?;
        } else {
            self.flags |= flags::TRUNCATED;
            self.field_header(ty, Encoding::Utf16Le as u8 | TRUNCATED_BIT, 4 + n * 2)?;
            self.w.u32(full.min(u32::MAX as usize) as u32)?;
        }
        for u in kept {
            self.w.u16(*u)?;
        }
        Ok(())
    }

    /// Adds raw bytes. They are never truncated: if they do not fit, the field is left out and
    /// the event is flagged.
    pub fn bytes(&mut self, ty: FieldType, b: &[u8]) -> Result<(), EncodeError> {
        if !self.has_room_for_field(b.len()) {
            return Ok(());
        }
        self.field_header(ty, Encoding::Bytes as u8, b.len())?;
        self.w.bytes(b)
    }

    pub fn u64(&mut self, ty: FieldType, v: u64) -> Result<(), EncodeError> {
        self.bytes(ty, &v.to_le_bytes())
    }

    pub fn u32(&mut self, ty: FieldType, v: u32) -> Result<(), EncodeError> {
        self.bytes(ty, &v.to_le_bytes())
    }

    pub fn i32(&mut self, ty: FieldType, v: i32) -> Result<(), EncodeError> {
        self.bytes(ty, &v.to_le_bytes())
    }

    /// Finishes the event and returns its encoded length.
    pub fn finish(self) -> usize {
        let len = self.w.position();
        let buf = self.w.into_inner();
        buf[FLAGS_OFFSET..FLAGS_OFFSET + 2].copy_from_slice(&self.flags.to_le_bytes());
        buf[COUNT_OFFSET..COUNT_OFFSET + 2].copy_from_slice(&self.fields.to_le_bytes());
        len
    }
}

/// One field of a received event, borrowing the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldView<'a> {
    pub ty: FieldType,
    pub encoding: Encoding,
    /// Set when the producer truncated the value: its original length in bytes.
    pub original_len: Option<u32>,
    pub bytes: &'a [u8],
}

impl FieldView<'_> {
    fn parse<'a>(r: &mut Reader<'a>) -> Result<FieldView<'a>, DecodeError> {
        let ty = FieldType(r.u16()?);
        let raw = r.u8()?;
        let encoding = Encoding::from_u8(raw & !TRUNCATED_BIT)?;
        let len = r.u32()? as usize;
        let mut bytes = r.bytes(len)?;
        let mut original_len = None;
        if raw & TRUNCATED_BIT != 0 {
            let mut inner = Reader::new(bytes);
            let orig = inner.u32()?;
            bytes = inner.rest();
            if (orig as usize) < bytes.len() {
                return Err(DecodeError::InvalidValue(
                    "truncated field longer than its original",
                ));
            }
            original_len = Some(orig);
        }
        match encoding {
            Encoding::Utf8 if core::str::from_utf8(bytes).is_err() => return Err(DecodeError::InvalidUtf8),
            Encoding::Utf16Le if bytes.len() % 2 != 0 => {
                return Err(DecodeError::InvalidValue("odd UTF-16 length"));
            }
            _ => {}
        }
        Ok(FieldView {
            ty,
            encoding,
            original_len,
            bytes,
        })
    }

    /// The value as a little-endian integer, if it is raw bytes of exactly that width.
    pub fn as_u64(&self) -> Option<u64> {
        let arr: [u8; 8] = self.bytes.try_into().ok()?;
        (self.encoding == Encoding::Bytes).then(|| u64::from_le_bytes(arr))
    }

    pub fn as_u32(&self) -> Option<u32> {
        let arr: [u8; 4] = self.bytes.try_into().ok()?;
        (self.encoding == Encoding::Bytes).then(|| u32::from_le_bytes(arr))
    }
}

/// A received, validated event borrowing the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventView<'a> {
    pub header: EventHeader,
    field_count: u16,
    fields: &'a [u8],
}

impl<'a> EventView<'a> {
    pub(crate) fn decode_body(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let seq = r.u64()?;
        let kind = EventKind::from_repr(r.u16()?).ok_or(DecodeError::InvalidValue("event kind"))?;
        let flags = r.u16()?;
        let field_count = r.u16()?;
        let _reserved = r.u16()?;
        let header = EventHeader {
            seq,
            kind,
            flags,
            time_ns: r.u64()?,
            pid: r.u32()?,
            ppid: r.u32()?,
            tid: r.u32()?,
        };
        let _reserved = r.u32()?;
        if seq == 0 || seq > MAX_SEQ {
            return Err(DecodeError::InvalidValue("event seq out of range"));
        }
        if usize::from(field_count) > MAX_FIELDS {
            return Err(DecodeError::FieldTooLong {
                len: usize::from(field_count),
                limit: MAX_FIELDS,
            });
        }
        let fields = r.rest();
        // Validate every field now, so iteration later cannot fail.
        let mut fr = Reader::new(fields);
        for _ in 0..field_count {
            FieldView::parse(&mut fr)?;
        }
        fr.finish()?;
        Ok(EventView {
            header,
            field_count,
            fields,
        })
    }

    pub fn fields(&self) -> impl Iterator<Item = FieldView<'a>> + 'a {
        let mut r = Reader::new(self.fields);
        (0..self.field_count).map_while(move |_| FieldView::parse(&mut r).ok())
    }

    pub fn field(&self, ty: FieldType) -> Option<FieldView<'a>> {
        self.fields().find(|f| f.ty == ty)
    }
}

#[cfg(feature = "alloc")]
pub use owned::{Event, Field, FieldValue};

#[cfg(feature = "alloc")]
mod owned {
    use super::*;
    use alloc::string::String;
    use alloc::vec::Vec;

    /// A field's value, decoded. UTF-16 becomes a `String` (unpaired surrogates are replaced).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum FieldValue {
        Text(String),
        Bytes(Vec<u8>),
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Field {
        pub ty: FieldType,
        pub value: FieldValue,
        pub original_len: Option<u32>,
    }

    /// A received event, owning its data.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Event {
        pub header: EventHeader,
        pub fields: Vec<Field>,
    }

    impl Event {
        pub fn field(&self, ty: FieldType) -> Option<&Field> {
            self.fields.iter().find(|f| f.ty == ty)
        }

        pub fn text(&self, ty: FieldType) -> Option<&str> {
            match &self.field(ty)?.value {
                FieldValue::Text(s) => Some(s),
                FieldValue::Bytes(_) => None,
            }
        }

        fn raw<const N: usize>(&self, ty: FieldType) -> Option<[u8; N]> {
            match &self.field(ty)?.value {
                FieldValue::Bytes(b) => b.as_slice().try_into().ok(),
                FieldValue::Text(_) => None,
            }
        }

        pub fn u64(&self, ty: FieldType) -> Option<u64> {
            self.raw(ty).map(u64::from_le_bytes)
        }

        pub fn u32(&self, ty: FieldType) -> Option<u32> {
            self.raw(ty).map(u32::from_le_bytes)
        }

        pub fn i32(&self, ty: FieldType) -> Option<i32> {
            self.raw(ty).map(i32::from_le_bytes)
        }
    }

    impl From<&EventView<'_>> for Event {
        fn from(view: &EventView<'_>) -> Self {
            let fields = view
                .fields()
                .map(|f| Field {
                    ty: f.ty,
                    original_len: f.original_len,
                    value: match f.encoding {
                        Encoding::Utf8 => FieldValue::Text(String::from_utf8_lossy(f.bytes).into_owned()),
                        Encoding::Utf16Le => {
                            let units = f.bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]));
                            FieldValue::Text(
                                char::decode_utf16(units)
                                    .map(|c| c.unwrap_or('\u{FFFD}'))
                                    .collect(),
                            )
                        }
                        Encoding::Bytes => FieldValue::Bytes(f.bytes.to_vec()),
                    },
                })
                .collect();
            Event {
                header: view.header,
                fields,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::read_common;
    use std::vec::Vec;

    /// The event codec on its own, without [`crate::message::Message`]'s dispatch on the type.
    fn decode_event(buf: &[u8]) -> Result<EventView<'_>, DecodeError> {
        let mut r = Reader::new(buf);
        let (_, ty) = read_common(&mut r)?;
        assert_eq!(ty, MessageType::Event);
        let view = EventView::decode_body(&mut r)?;
        r.finish()?;
        Ok(view)
    }

    fn header() -> EventHeader {
        EventHeader {
            seq: 7,
            kind: EventKind::ProcessExec,
            flags: 0,
            time_ns: 1_700_000_000_000_000_000,
            pid: 1234,
            ppid: 1,
            tid: 1234,
        }
    }

    fn decode(buf: &[u8]) -> EventView<'_> {
        decode_event(buf).unwrap()
    }

    #[test]
    fn fields_round_trip() {
        let mut buf = [0u8; 512];
        let mut w = EventWriter::new(&mut buf, &header(), 256).unwrap();
        w.utf8(FieldType::EXECUTABLE, "/usr/bin/true").unwrap();
        w.utf16(
            FieldType::COMMAND_LINE,
            &"true --x".encode_utf16().collect::<Vec<_>>(),
        )
        .unwrap();
        w.u64(FieldType::IMAGE_BASE, 0x7fff_0000_0000).unwrap();
        w.i32(FieldType::EXIT_CODE, -3).unwrap();
        let len = w.finish();
        let view = decode(&buf[..len]);
        assert_eq!(view.header, header());
        let ev = Event::from(&view);
        assert_eq!(ev.text(FieldType::EXECUTABLE), Some("/usr/bin/true"));
        assert_eq!(ev.text(FieldType::COMMAND_LINE), Some("true --x"));
        assert_eq!(ev.u64(FieldType::IMAGE_BASE), Some(0x7fff_0000_0000));
        assert_eq!(ev.i32(FieldType::EXIT_CODE), Some(-3));
        assert_eq!(ev.fields.len(), 4);
    }

    #[test]
    fn long_strings_are_truncated_flagged_and_keep_their_length() {
        let mut buf = [0u8; 512];
        let long = "é".repeat(100); // 200 bytes, 2 per char
        let mut w = EventWriter::new(&mut buf, &header(), 11).unwrap();
        w.utf8(FieldType::COMMAND_LINE, &long).unwrap();
        let units: Vec<u16> = "😀😀😀".encode_utf16().collect(); // surrogate pairs
        w.utf16(FieldType::IMAGE_PATH, &units).unwrap();
        let len = w.finish();
        let view = decode(&buf[..len]);
        assert_ne!(view.header.flags & flags::TRUNCATED, 0);
        let f = view.field(FieldType::COMMAND_LINE).unwrap();
        assert_eq!(f.original_len, Some(200));
        assert_eq!(core::str::from_utf8(f.bytes).unwrap(), "ééééé"); // 10 bytes, on a boundary
        let ev = Event::from(&view);
        // 11 bytes of cap → 5 units → cut back to 4 so no pair is split.
        assert_eq!(ev.text(FieldType::IMAGE_PATH), Some("😀😀"));
        assert_eq!(ev.field(FieldType::IMAGE_PATH).unwrap().original_len, Some(12));
    }

    #[test]
    fn a_full_buffer_truncates_strings_and_omits_raw_fields() {
        let mut buf = [0u8; EVENT_MIN_LEN + 30];
        let mut w = EventWriter::new(&mut buf, &header(), 4096).unwrap();
        w.utf8(FieldType::EXECUTABLE, &"x".repeat(100)).unwrap();
        w.u64(FieldType::IMAGE_SIZE, 5).unwrap();
        let len = w.finish();
        let view = decode(&buf[..len]);
        let f = view.field(FieldType::EXECUTABLE).unwrap();
        assert_eq!(f.original_len, Some(100));
        assert_eq!(f.bytes.len(), 30 - 7 - 4);
        assert!(view.field(FieldType::IMAGE_SIZE).is_none());
        assert_eq!(
            view.header.flags & (flags::TRUNCATED | flags::FIELDS_OMITTED),
            flags::TRUNCATED | flags::FIELDS_OMITTED
        );
    }

    #[test]
    fn seq_can_be_patched_after_encoding() {
        let mut buf = [0u8; 128];
        let mut h = header();
        h.seq = 0;
        let len = EventWriter::new(&mut buf, &h, 64).unwrap().finish();
        patch_seq(&mut buf[..len], 99).unwrap();
        assert_eq!(decode(&buf[..len]).header.seq, 99);
    }

    #[test]
    fn malformed_fields_are_typed_errors() {
        let mut buf = [0u8; 128];
        let mut w = EventWriter::new(&mut buf, &header(), 64).unwrap();
        w.utf8(FieldType::EXECUTABLE, "abc").unwrap();
        let len = w.finish();
        let mut bad = buf;
        bad[EVENT_MIN_LEN + 2] = 0x7F;
        assert_eq!(
            decode_event(&bad[..len]).unwrap_err(),
            DecodeError::UnknownEncoding(0x7F)
        );
        let mut bad = buf;
        bad[EVENT_MIN_LEN + 3] = 200;
        assert!(matches!(
            decode_event(&bad[..len]),
            Err(DecodeError::Truncated { .. })
        ));
        let mut bad = buf;
        bad[EVENT_MIN_LEN + FIELD_HEADER_LEN] = 0xFF;
        assert_eq!(decode_event(&bad[..len]).unwrap_err(), DecodeError::InvalidUtf8);
    }
}
