//! Every decoder on arbitrary bytes: `Message::decode` under an arbitrary agreed limit, and
//! `PortMessage::parse` followed by a decode of the data it frames. None may panic, and what
//! they accept must be consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lpcmon_protocol::event::Event;
use lpcmon_protocol::message::MAX_SEQ;
use lpcmon_protocol::port_message::PORT_MESSAGE_SIZE;
use lpcmon_protocol::{Message, PortMessage};

fn decode(data: &[u8], limit: usize) {
    let Ok(msg) = Message::decode(data, limit) else {
        return;
    };
    assert!(data.len() <= limit);
    let mut again = vec![0u8; data.len() + 16];
    let len = match msg {
        Message::Event(view) => {
            assert!((1..=MAX_SEQ).contains(&view.header.seq));
            let event = Event::from(&view);
            assert_eq!(event.fields.len(), view.fields().count());
            return;
        }
        Message::Hello(m) => m.encode(&mut again),
        Message::HelloReply(m) => m.encode(&mut again),
        Message::Fragment(m) => m.encode(&mut again),
        Message::Loss(m) => m.encode(&mut again),
        Message::Heartbeat(m) => m.encode(&mut again),
    }
    .expect("a decoded message re-encodes");
    let round = Message::decode(&again[..len], usize::MAX).expect("a re-encoded message decodes");
    assert_eq!(format!("{round:?}"), format!("{msg:?}"));
}

fuzz_target!(|input: &[u8]| {
    // The first two bytes choose the agreed limit; the rest is the message.
    let (limit, data) = match input {
        [a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), rest),
        _ => return,
    };
    decode(data, limit);
    decode(data, usize::MAX);
    if let Ok((header, body)) = PortMessage::parse(data) {
        assert_eq!(usize::from(header.total_length), PORT_MESSAGE_SIZE + body.len());
        decode(body, limit);
    }
});
