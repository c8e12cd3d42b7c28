//! The `kind` values of stored events (the producers' event kinds plus the records the server
//! writes itself), and the producer kinds.

use lpcmon_protocol::{EventKind, ProducerKind};

/// Every producer kind, for the `producer` filter and for zero-filled per-kind counters.
pub const PRODUCER_KINDS: [ProducerKind; ProducerKind::ALL.len()] = ProducerKind::ALL;

/// What a stored event is. Its name is the JSON `kind` and the `kind` query value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Event(EventKind),
    Loss,
    ProducerConnect,
    ProducerDisconnect,
}

impl Kind {
    /// Every kind, producers' first; `/stats` and `/metrics` list them all, zeros included, so
    /// their shape does not depend on what has happened yet.
    pub fn all() -> impl Iterator<Item = Kind> {
        EventKind::ALL.into_iter().map(Kind::Event).chain([
            Kind::Loss,
            Kind::ProducerConnect,
            Kind::ProducerDisconnect,
        ])
    }

    /// How many kinds there are: the length of an array of per-kind counters.
    pub const COUNT: usize = EventKind::ALL.len() + 3;

    /// This kind's position in [`Kind::all`]: the slot of its counter in a per-kind array, so
    /// counting a stored event is an index, not a lookup by name.
    pub fn index(self) -> usize {
        match self {
            Kind::Event(k) => k.index(),
            Kind::Loss => EventKind::ALL.len(),
            Kind::ProducerConnect => EventKind::ALL.len() + 1,
            Kind::ProducerDisconnect => EventKind::ALL.len() + 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Event(k) => k.name(),
            Kind::Loss => "loss",
            Kind::ProducerConnect => "producer.connect",
            Kind::ProducerDisconnect => "producer.disconnect",
        }
    }

    pub fn parse(name: &str) -> Option<Kind> {
        Kind::all().find(|k| k.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        let names: Vec<_> = Kind::all().map(Kind::name).collect();
        for k in Kind::all() {
            assert_eq!(Kind::parse(k.name()), Some(k));
        }
        let mut dedup = names.clone();
        dedup.sort_unstable();
        dedup.dedup();
        assert_eq!(dedup.len(), names.len());
        assert_eq!(Kind::parse("nope"), None);
        for (i, k) in Kind::all().enumerate() {
            assert_eq!(k.index(), i, "{}", k.name());
        }
        assert_eq!(Kind::all().count(), Kind::COUNT);
    }
}
