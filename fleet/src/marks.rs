//! The central server's high-water marks: per origin server instance, the highest origin id
//! stored. Origin ids only grow, so anything at or below the mark is a redelivery.
//!
//! The marks must be exactly as durable as the store they guard. With a durable store the
//! ingest task commits them in the same transaction as the imported events they cover, and the
//! subscriber starts from what the database restored; with `--store memory` they live and die
//! with the in-memory store. Either way the subscriber keeps its working copy here, and an empty
//! set of marks makes it read the stream from its start.

use std::collections::BTreeMap;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Marks(BTreeMap<String, u64>);

impl Marks {
    /// Marks restored from the store (empty for a new or in-memory store).
    pub fn restored(marks: BTreeMap<String, u64>) -> Self {
        Marks(marks)
    }

    /// The highest origin id stored for `server_instance`, 0 if none.
    pub fn get(&self, server_instance: &str) -> u64 {
        self.0.get(server_instance).copied().unwrap_or(0)
    }

    /// Whether nothing has been stored yet (the subscriber then reads the stream from its start).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Raises marks after a batch is stored; a mark never goes down.
    pub fn advance(&mut self, marks: &BTreeMap<String, u64>) {
        for (instance, id) in marks {
            let mark = self.0.entry(instance.clone()).or_default();
            *mark = (*mark).max(*id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_only_rise() {
        let mut m = Marks::restored(BTreeMap::from([("a".to_owned(), 4)]));
        assert!(!m.is_empty());
        m.advance(&BTreeMap::from([("a".to_owned(), 5), ("b".to_owned(), 2)]));
        m.advance(&BTreeMap::from([("a".to_owned(), 3)]));
        assert_eq!((m.get("a"), m.get("b"), m.get("c")), (5, 2, 0));
        assert!(Marks::default().is_empty());
    }
}
