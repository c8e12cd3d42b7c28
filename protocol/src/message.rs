//! lpcmon messages: the data that follows a `PORT_MESSAGE` header.
//!
//! Every message starts with `magic "LPCM" | version u8 | msg_type u8 | flags u16`, then a body
//! whose layout depends on the type. All integers are little-endian.

use crate::cursor::{Reader, Writer};
use crate::error::{DecodeError, EncodeError};
use crate::event::EventView;
use crate::header::{MessageType, read_common, write_common};
use crate::port_message::LPC_MAX_CONNECTION_INFO;

pub use crate::header::{COMMON_HEADER_LEN, MAGIC, MAX_SEQ, MIN_VERSION, VERSION};

wire_enum! {
    /// Who produces events. Its name is what `/stats` and the event JSON show.
    pub enum ProducerKind: u8 {
        WindowsDriver = 1 => "windows-driver",
        LinuxSensor = 2 => "linux-sensor",
        Loadgen = 3 => "loadgen",
    }
}

/// Longest OS description a Hello carries.
pub const HELLO_OS_MAX: usize = 64;

/// The handshake a producer sends first. On Windows it is the connection information of the
/// connect call, so its encoding never exceeds [`LPC_MAX_CONNECTION_INFO`] bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello<'a> {
    pub min_version: u8,
    pub max_version: u8,
    pub kind: ProducerKind,
    /// Random per producer start; survives reconnects, so the server can follow its sequence.
    pub instance: [u8; 16],
    /// The largest message (data bytes after `PORT_MESSAGE`) the producer will send.
    pub max_message: u32,
    /// The sequence number of the next event the producer will send.
    pub next_seq: u64,
    /// OS build number (Windows) or 0.
    pub os_build: u32,
    /// OS name and release, cut to [`HELLO_OS_MAX`] bytes.
    pub os: &'a str,
}

/// The largest encoded Hello.
pub const HELLO_MAX_LEN: usize = COMMON_HEADER_LEN + 4 + 16 + 4 + 8 + 4 + 1 + HELLO_OS_MAX;
const _: () = assert!(HELLO_MAX_LEN <= LPC_MAX_CONNECTION_INFO);

impl<'a> Hello<'a> {
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer::new(out);
        write_common(&mut w, MessageType::Hello, VERSION)?;
        w.u8(self.min_version)?;
        w.u8(self.max_version)?;
        w.u8(self.kind as u8)?;
        w.u8(0)?;
        w.bytes(&self.instance)?;
        w.u32(self.max_message)?;
        w.u64(self.next_seq)?;
        w.u32(self.os_build)?;
        w.short_str(self.os, HELLO_OS_MAX)?;
        Ok(w.position())
    }

    fn decode_body(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let min_version = r.u8()?;
        let max_version = r.u8()?;
        let kind = ProducerKind::from_repr(r.u8()?).ok_or(DecodeError::InvalidValue("producer kind"))?;
        let _reserved = r.u8()?;
        let hello = Hello {
            min_version,
            max_version,
            kind,
            instance: r.instance()?,
            max_message: r.u32()?,
            next_seq: r.u64()?,
            os_build: r.u32()?,
            os: r.short_str(HELLO_OS_MAX)?,
        };
        if hello.min_version > hello.max_version {
            return Err(DecodeError::InvalidValue("hello version range is empty"));
        }
        if hello.next_seq == 0 || hello.next_seq > MAX_SEQ {
            return Err(DecodeError::InvalidValue("hello next_seq out of range"));
        }
        Ok(hello)
    }
}

wire_enum! {
    /// Why the server refused a producer. The code travels on the wire; the text is for logs.
    pub enum RefuseReason: u8 {
        UnsupportedVersion = 1 => "unsupported_version",
        Unauthorised = 2 => "unauthorised",
        Malformed = 3 => "malformed_hello",
        TooManyProducers = 4 => "too_many_producers",
        AlreadyConnected = 5 => "already_connected",
        ShuttingDown = 6 => "shutting_down",
        /// The peer connected but sent no valid Hello in time. Never sent (the peer said
        /// nothing); the server counts its refusal under this name.
        HandshakeTimeout = 7 => "handshake_timeout",
    }
}

/// Longest explanation a refusal carries.
pub const REPLY_TEXT_MAX: usize = 96;

/// The server's answer to a Hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloReply<'a> {
    Accept {
        version: u8,
        /// The limit both sides now use: the smaller of the producer's and the server's.
        max_message: u32,
    },
    Refuse {
        reason: RefuseReason,
        /// The server's supported range, so the producer can log what it would need.
        min_version: u8,
        max_version: u8,
        text: &'a str,
    },
}

/// The largest encoded HelloReply; it must fit back into the connection information.
pub const HELLO_REPLY_MAX_LEN: usize = COMMON_HEADER_LEN + 8 + 1 + REPLY_TEXT_MAX;
const _: () = assert!(HELLO_REPLY_MAX_LEN <= LPC_MAX_CONNECTION_INFO);

impl<'a> HelloReply<'a> {
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer::new(out);
        write_common(&mut w, MessageType::HelloReply, VERSION)?;
        match *self {
            HelloReply::Accept { version, max_message } => {
                w.u8(0)?;
                w.u8(version)?;
                w.u8(0)?;
                w.u8(0)?;
                w.u32(max_message)?;
                w.short_str("", REPLY_TEXT_MAX)?;
            }
            HelloReply::Refuse {
                reason,
                min_version,
                max_version,
                text,
            } => {
                w.u8(reason as u8)?;
                w.u8(0)?;
                w.u8(min_version)?;
                w.u8(max_version)?;
                w.u32(0)?;
                w.short_str(text, REPLY_TEXT_MAX)?;
            }
        }
        Ok(w.position())
    }

    /// The encoded reply, ready to send. Every reply fits [`HELLO_REPLY_MAX_LEN`]: the text is
    /// cut to [`REPLY_TEXT_MAX`] bytes.
    #[cfg(feature = "alloc")]
    pub fn to_vec(&self) -> alloc::vec::Vec<u8> {
        let mut buf = alloc::vec![0u8; HELLO_REPLY_MAX_LEN];
        let len = self.encode(&mut buf).unwrap_or(0);
        buf.truncate(len);
        buf
    }

    fn decode_body(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let status = r.u8()?;
        let version = r.u8()?;
        let min_version = r.u8()?;
        let max_version = r.u8()?;
        let max_message = r.u32()?;
        let text = r.short_str(REPLY_TEXT_MAX)?;
        Ok(if status == 0 {
            HelloReply::Accept { version, max_message }
        } else {
            HelloReply::Refuse {
                reason: RefuseReason::from_repr(status).ok_or(DecodeError::InvalidValue("refuse reason"))?,
                min_version,
                max_version,
                text,
            }
        })
    }
}

wire_enum! {
    /// Where in the pipeline events were lost. Names are the `loss.stage` values in JSON and
    /// metrics labels.
    #[derive(PartialOrd, Ord)]
    pub enum LossStage: u8 {
        /// The producer's bounded queue was full (the callback could not enqueue).
        ProducerQueue = 1 => "producer_queue",
        /// The producer dequeued events but could not send them (port failure).
        ProducerSend = 2 => "producer_send",
        /// The server saw a sequence gap nobody reported.
        Transport = 3 => "transport",
        /// Fragments of an event never all arrived before the reassembly limit or timeout.
        Reassembly = 4 => "reassembly",
        /// The server's ingest channel was full.
        ServerIngest = 5 => "server_ingest",
        /// The Linux kernel dropped proc-connector messages (ENOBUFS) before the sensor read them.
        Kernel = 6 => "kernel",
        /// The server received the event but could not write it to its database (disk full,
        /// I/O error). Only the server reports it; it never travels on the wire from a producer.
        Store = 7 => "store",
        /// A server's store evicted events before they could be published to the fleet's NATS
        /// stream (the range is of that server's event ids). Never on the port's wire.
        Publish = 8 => "publish",
    }
}

/// A report of events lost.
///
/// For `ProducerSend` the range is exact: those sequence numbers were assigned and never sent.
/// For `ProducerQueue` and `Kernel` the events never received sequence numbers; the range says
/// where they fell (`first_seq` is the next sequence number at the first drop, `last_seq` at the
/// last) and `count` is exact. `total` is the producer's running total for the stage including
/// this report, so the server counts the increase: a report lost, repeated or reordered in
/// transit is neither missed nor counted twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loss {
    pub stage: LossStage,
    pub count: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub total: u64,
}

impl Loss {
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer::new(out);
        write_common(&mut w, MessageType::Loss, VERSION)?;
        w.u8(self.stage as u8)?;
        w.bytes(&[0; 7])?;
        w.u64(self.count)?;
        w.u64(self.first_seq)?;
        w.u64(self.last_seq)?;
        w.u64(self.total)?;
        Ok(w.position())
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let stage = LossStage::from_repr(r.u8()?).ok_or(DecodeError::InvalidValue("loss stage"))?;
        r.bytes(7)?;
        let loss = Loss {
            stage,
            count: r.u64()?,
            first_seq: r.u64()?,
            last_seq: r.u64()?,
            total: r.u64()?,
        };
        if loss.count == 0
            || loss.first_seq > loss.last_seq
            || loss.last_seq > MAX_SEQ
            || loss.total < loss.count
        {
            return Err(DecodeError::InvalidValue("loss range"));
        }
        // `count - 1`, not `last - first + 1`: the latter overflows for 0..=u64::MAX.
        if loss.stage == LossStage::ProducerSend && loss.last_seq - loss.first_seq != loss.count - 1 {
            return Err(DecodeError::InvalidValue(
                "send loss count differs from its range",
            ));
        }
        Ok(loss)
    }
}

/// Producer liveness and its own counters. `last_seq` lets the server notice a lost tail, and
/// `queue_drops_reported` a lost queue-loss report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Heartbeat {
    pub produced: u64,
    /// Running total of queue drops the producer has sent `Loss` reports for.
    pub queue_drops_reported: u64,
    pub send_failed: u64,
    pub last_seq: u64,
}

impl Heartbeat {
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer::new(out);
        write_common(&mut w, MessageType::Heartbeat, VERSION)?;
        w.u64(self.produced)?;
        w.u64(self.queue_drops_reported)?;
        w.u64(self.send_failed)?;
        w.u64(self.last_seq)?;
        Ok(w.position())
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let heartbeat = Heartbeat {
            produced: r.u64()?,
            queue_drops_reported: r.u64()?,
            send_failed: r.u64()?,
            last_seq: r.u64()?,
        };
        if heartbeat.last_seq > MAX_SEQ {
            return Err(DecodeError::InvalidValue("heartbeat last_seq out of range"));
        }
        Ok(heartbeat)
    }
}

/// One piece of an encoded Event message that did not fit in one port message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment<'a> {
    pub event_seq: u64,
    pub index: u16,
    pub count: u16,
    /// Length of the whole encoded event, the same in every fragment.
    pub total_len: u32,
    pub bytes: &'a [u8],
}

/// Bytes of a fragment before its payload.
pub const FRAGMENT_HEADER_LEN: usize = COMMON_HEADER_LEN + 16;

impl<'a> Fragment<'a> {
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer::new(out);
        write_common(&mut w, MessageType::Fragment, VERSION)?;
        w.u64(self.event_seq)?;
        w.u16(self.index)?;
        w.u16(self.count)?;
        w.u32(self.total_len)?;
        w.bytes(self.bytes)?;
        Ok(w.position())
    }

    fn decode_body(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let frag = Fragment {
            event_seq: r.u64()?,
            index: r.u16()?,
            count: r.u16()?,
            total_len: r.u32()?,
            bytes: r.rest(),
        };
        if frag.event_seq == 0 || frag.event_seq > MAX_SEQ {
            return Err(DecodeError::InvalidValue("fragment seq out of range"));
        }
        if frag.count < 2 || frag.index >= frag.count {
            return Err(DecodeError::InvalidValue("fragment index/count"));
        }
        if frag.bytes.is_empty() || frag.bytes.len() > frag.total_len as usize {
            return Err(DecodeError::InvalidValue("fragment length"));
        }
        Ok(frag)
    }
}

/// Any decoded lpcmon message, borrowing from the receive buffer.
#[derive(Debug, Clone, Copy)]
pub enum Message<'a> {
    Hello(Hello<'a>),
    HelloReply(HelloReply<'a>),
    Event(EventView<'a>),
    Fragment(Fragment<'a>),
    Loss(Loss),
    Heartbeat(Heartbeat),
}

impl<'a> Message<'a> {
    /// Decodes one message. `limit` is the agreed maximum message length; anything longer is
    /// refused before it is parsed.
    pub fn decode(buf: &'a [u8], limit: usize) -> Result<Self, DecodeError> {
        if buf.len() > limit {
            return Err(DecodeError::MessageTooLong {
                len: buf.len(),
                limit,
            });
        }
        let mut r = Reader::new(buf);
        let (version, ty) = read_common(&mut r)?;
        // A Hello is readable whatever its version byte says, so the server can answer with a
        // refusal that names its own range; every other message must speak ours.
        if ty != MessageType::Hello && !(MIN_VERSION..=VERSION).contains(&version) {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let msg = match ty {
            MessageType::Hello => Message::Hello(Hello::decode_body(&mut r)?),
            MessageType::HelloReply => Message::HelloReply(HelloReply::decode_body(&mut r)?),
            MessageType::Event => Message::Event(EventView::decode_body(&mut r)?),
            MessageType::Fragment => Message::Fragment(Fragment::decode_body(&mut r)?),
            MessageType::Loss => Message::Loss(Loss::decode_body(&mut r)?),
            MessageType::Heartbeat => Message::Heartbeat(Heartbeat::decode_body(&mut r)?),
        };
        r.finish()?;
        Ok(msg)
    }
}
