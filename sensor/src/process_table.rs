//! Parent pids (and real uids) remembered from kernel events, so an event that arrives after
//! `/proc/<pid>` is gone (the exec or exit of a short-lived process) still names its parent, and
//! an exec need not read `/proc/<pid>/status` for its uid.
//!
//! The uid is exact, not a guess: the kernel sends a uid message from `commit_creds` whenever a
//! task's uid, euid, suid or fsuid changes (and that is the only way a real uid changes), and a
//! forked child starts with its parent's credentials. A setuid is sent before the fork or exec
//! that follows it (the send is synchronous, into one queue), so a child inherits the uid its
//! parent had. What the table cannot vouch for it does not keep: the caller clears every uid
//! after a kernel loss ([`ProcessTable::forget_uids`]), and a thread whose uid differs from
//! its process's makes that process's uid unknown; unknown uids are read from `/proc` again.
//!
//! The table is bounded twice: by count (inserting beyond the capacity evicts the oldest
//! insertion) and by time (an exited process is forgotten `linger` after its exit). The linger
//! exists because messages from different CPUs are not ordered with each other, so an event
//! about a process can be read just after its exit. Every operation does bounded work.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// The default number of processes remembered.
pub const DEFAULT_CAPACITY: usize = 65_536;
/// The default time an exited process is remembered.
pub const DEFAULT_LINGER: Duration = Duration::from_secs(5);
/// At most this many exited entries are removed per [`ProcessTable::expire`] call.
const EXPIRE_BATCH: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Entry {
    ppid: u32,
    /// The real uid, when known (see the module doc).
    uid: Option<u32>,
    /// Identifies this insertion, so queue items left by an earlier process with the same pid
    /// are recognised as stale.
    serial: u64,
    /// Set once its exit is queued, so a repeated exit does not queue twice.
    exited: bool,
}

/// Maps a process (tgid) to its parent's tgid and its real uid.
#[derive(Debug)]
pub struct ProcessTable {
    entries: HashMap<u32, Entry>,
    /// Insertion order, oldest first: `(pid, serial)`.
    order: VecDeque<(u32, u64)>,
    /// Exits in the order they were recorded: `(pid, serial, exited_at_ns)`.
    exits: VecDeque<(u32, u64, u64)>,
    next_serial: u64,
    capacity: usize,
    linger_ns: u64,
    evicted: u64,
}

impl ProcessTable {
    /// A table of at most `capacity` (at least 1) processes, forgetting exits after `linger`.
    pub fn new(capacity: usize, linger: Duration) -> Self {
        let capacity = capacity.max(1);
        ProcessTable {
            entries: HashMap::new(),
            order: VecDeque::new(),
            exits: VecDeque::new(),
            next_serial: 0,
            capacity,
            linger_ns: u64::try_from(linger.as_nanos()).unwrap_or(u64::MAX),
            evicted: 0,
        }
    }

    /// Records (or replaces, when a pid is reused) a process's parent and real uid.
    pub fn insert(&mut self, pid: u32, ppid: u32, uid: Option<u32>) {
        let serial = self.next_serial;
        self.next_serial += 1;
        self.entries.insert(
            pid,
            Entry {
                ppid,
                uid,
                serial,
                exited: false,
            },
        );
        self.order.push_back((pid, serial));
        while self.entries.len() > self.capacity {
            // Each pass pops one item and live items are in the queue, so this ends.
            let Some((old, old_serial)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&old).is_some_and(|e| e.serial == old_serial) {
                self.entries.remove(&old);
                self.evicted += 1;
            }
        }
        self.compact();
    }

    /// The parent of `pid`, if known.
    pub fn parent(&self, pid: u32) -> Option<u32> {
        self.entries.get(&pid).map(|e| e.ppid)
    }

    /// The real uid of `pid`, if known.
    pub fn uid(&self, pid: u32) -> Option<u32> {
        self.entries.get(&pid).and_then(|e| e.uid)
    }

    /// Sets (or, with `None`, forgets) the real uid of a process the table holds.
    pub fn set_uid(&mut self, pid: u32, uid: Option<u32>) {
        if let Some(e) = self.entries.get_mut(&pid) {
            e.uid = uid;
        }
    }

    /// Forgets every uid: after a kernel loss a uid change may have been missed.
    pub fn forget_uids(&mut self) {
        for e in self.entries.values_mut() {
            e.uid = None;
        }
    }

    /// Notes that `pid` exited at `now_ns` (any monotonic clock); it is forgotten `linger` later.
    pub fn mark_exited(&mut self, pid: u32, now_ns: u64) {
        if let Some(e) = self.entries.get_mut(&pid).filter(|e| !e.exited) {
            e.exited = true;
            self.exits.push_back((pid, e.serial, now_ns));
            self.compact();
        }
    }

    /// Forgets processes that exited more than `linger` before `now_ns`.
    pub fn expire(&mut self, now_ns: u64) {
        for _ in 0..EXPIRE_BATCH {
            let Some(&(pid, serial, exited_at)) = self.exits.front() else {
                return;
            };
            if now_ns.saturating_sub(exited_at) < self.linger_ns {
                return;
            }
            self.exits.pop_front();
            // A reused pid has a new serial: that newer process stays.
            if self.entries.get(&pid).is_some_and(|e| e.serial == serial) {
                self.entries.remove(&pid);
            }
        }
    }

    /// Processes currently remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries dropped because the table was full.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Stale queue items (from reused pids or evicted entries) are normally skipped when they
    /// reach the front; if they pile up beyond twice the capacity, drop them all at once, so the
    /// queues stay bounded. Amortised, this is constant work per insertion.
    fn compact(&mut self) {
        let live = |entries: &HashMap<u32, Entry>, pid: u32, serial: u64| {
            entries.get(&pid).is_some_and(|e| e.serial == serial)
        };
        if self.order.len() > 2 * self.capacity {
            let entries = &self.entries;
            self.order.retain(|&(pid, serial)| live(entries, pid, serial));
        }
        if self.exits.len() > 2 * self.capacity {
            let entries = &self.entries;
            self.exits.retain(|&(pid, serial, _)| live(entries, pid, serial));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn parents_are_remembered_and_replaced_on_pid_reuse() {
        let mut t = ProcessTable::new(16, DEFAULT_LINGER);
        t.insert(100, 1, None);
        assert_eq!(t.parent(100), Some(1));
        assert_eq!(t.parent(101), None);
        t.insert(100, 50, None);
        assert_eq!(t.parent(100), Some(50));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn the_oldest_entry_is_evicted_at_capacity() {
        let mut t = ProcessTable::new(3, DEFAULT_LINGER);
        for pid in 1..=4 {
            t.insert(pid, 1000 + pid, None);
        }
        assert_eq!(t.len(), 3);
        assert_eq!(t.parent(1), None);
        assert_eq!(t.parent(4), Some(1004));
        assert_eq!(t.evicted(), 1);
    }

    #[test]
    fn re_inserting_refreshes_the_entrys_age() {
        let mut t = ProcessTable::new(2, DEFAULT_LINGER);
        t.insert(1, 10, None);
        t.insert(2, 20, None);
        t.insert(1, 11, None);
        t.insert(3, 30, None);
        assert_eq!(t.parent(1), Some(11));
        assert_eq!(t.parent(2), None);
    }

    #[test]
    fn exited_processes_linger_then_go() {
        let mut t = ProcessTable::new(16, Duration::from_secs(5));
        t.insert(7, 1, None);
        t.mark_exited(7, 10 * SEC);
        t.expire(14 * SEC);
        assert_eq!(t.parent(7), Some(1));
        t.expire(15 * SEC);
        assert_eq!(t.parent(7), None);
        assert!(t.is_empty());
    }

    #[test]
    fn a_reused_pid_survives_the_old_processes_expiry() {
        let mut t = ProcessTable::new(16, Duration::from_secs(1));
        t.insert(7, 1, None);
        t.mark_exited(7, 0);
        t.insert(7, 2, None);
        t.expire(10 * SEC);
        assert_eq!(t.parent(7), Some(2));
    }

    #[test]
    fn churn_keeps_the_queues_bounded() {
        let mut t = ProcessTable::new(8, Duration::from_secs(1000));
        for i in 0..10_000u32 {
            t.insert(i % 5, i, None);
            t.mark_exited(i % 5, u64::from(i));
        }
        assert!(t.order.len() <= 16 + 1);
        assert!(t.exits.len() <= 16 + 1);
        assert_eq!(t.len(), 5);
    }

    #[test]
    fn uids_are_kept_updated_and_forgotten() {
        let mut t = ProcessTable::new(16, DEFAULT_LINGER);
        t.insert(7, 1, Some(1000));
        t.insert(8, 1, None);
        assert_eq!((t.uid(7), t.uid(8), t.uid(9)), (Some(1000), None, None));
        t.set_uid(8, Some(0));
        t.set_uid(9, Some(0));
        assert_eq!((t.uid(8), t.uid(9)), (Some(0), None));
        t.forget_uids();
        assert_eq!((t.uid(7), t.uid(8)), (None, None));
        assert_eq!(t.parent(7), Some(1));
    }

    #[test]
    fn a_repeated_exit_is_queued_once() {
        let mut t = ProcessTable::new(4, Duration::from_secs(1));
        t.insert(9, 1, None);
        for now in 0..100 {
            t.mark_exited(9, now);
        }
        assert_eq!(t.exits.len(), 1);
    }
}
