//! The live connections of one port server, keyed by the PortContext the kernel hands back.

use std::collections::HashMap;
use std::num::NonZeroUsize;

use lpcmon_protocol::server::ConnId;

/// The live connections of one port server, keyed by the value the server hands the kernel as
/// each connection's PortContext.
///
/// The key is a counter, not a pointer: a message that arrives for a connection the server has
/// already closed then finds nothing, instead of reading freed memory. Keys are never 0, which
/// the kernel reports for messages on the connection port itself.
#[derive(Debug)]
pub struct ConnectionTable<H> {
    next_key: usize,
    entries: HashMap<usize, Connection<H>>,
}

/// One accepted connection.
#[derive(Debug, PartialEq, Eq)]
pub struct Connection<H> {
    pub conn: ConnId,
    pub client_process: u64,
    pub client_thread: u64,
    /// Our end of it: the communication port handle.
    pub handle: H,
}

impl<H> Default for ConnectionTable<H> {
    fn default() -> Self {
        ConnectionTable {
            next_key: 0,
            entries: HashMap::new(),
        }
    }
}

impl<H> ConnectionTable<H> {
    /// The key to give the kernel for the next connection. Unused keys are simply skipped.
    pub fn allocate_key(&mut self) -> NonZeroUsize {
        loop {
            self.next_key = self.next_key.wrapping_add(1);
            if let Some(key) = NonZeroUsize::new(self.next_key)
                && !self.entries.contains_key(&key.get())
            {
                return key;
            }
        }
    }

    pub fn insert(&mut self, key: NonZeroUsize, connection: Connection<H>) {
        self.entries.insert(key.get(), connection);
    }

    /// The connection a message's PortContext names, if it is still open.
    pub fn get(&self, key: usize) -> Option<&Connection<H>> {
        self.entries.get(&key)
    }

    pub fn remove(&mut self, key: usize) -> Option<Connection<H>> {
        self.entries.remove(&key)
    }

    /// Removes every connection, for shutdown.
    pub fn drain(&mut self) -> Vec<Connection<H>> {
        self.entries.drain().map(|(_, c)| c).collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_table_keys_are_never_zero_and_stale_keys_find_nothing() {
        let mut table = ConnectionTable::<&str>::default();
        let a = table.allocate_key();
        table.insert(
            a,
            Connection {
                conn: 1,
                client_process: 4,
                client_thread: 8,
                handle: "a",
            },
        );
        let b = table.allocate_key();
        assert_ne!(a, b);
        table.insert(
            b,
            Connection {
                conn: 2,
                client_process: 4,
                client_thread: 9,
                handle: "b",
            },
        );
        assert_eq!(table.get(a.get()).map(|c| c.conn), Some(1));
        assert!(table.get(0).is_none());
        assert_eq!(table.remove(a.get()).map(|c| c.handle), Some("a"));
        assert!(
            table.get(a.get()).is_none(),
            "a closed connection's key finds nothing"
        );
        assert_eq!(table.len(), 1);
        assert_eq!(table.drain().len(), 1);
        assert!(table.is_empty());

        // Wrapping skips 0 and keys still in use.
        let mut table = ConnectionTable::<()> {
            next_key: usize::MAX - 1,
            entries: HashMap::new(),
        };
        table.entries.insert(
            1,
            Connection {
                conn: 9,
                client_process: 4,
                client_thread: 1,
                handle: (),
            },
        );
        assert_eq!(table.allocate_key().get(), usize::MAX);
        assert_eq!(table.allocate_key().get(), 2);
    }
}
