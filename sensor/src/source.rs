//! The proc-connector sensor as a blocking source of lpcmon events, for a runtime to drive on
//! its own thread.
//!
//! It turns kernel messages into [`SensorEvent`]s:
//!
//! | kernel message                      | event            | from `/proc`                  |
//! |-------------------------------------|------------------|-------------------------------|
//! | fork with child pid == child tgid   | `process.start`  | nothing                       |
//! | exec                                | `process.exec`   | exe, cmdline, real uid, name  |
//! | exit of a main thread               | `process.exit`   | nothing                       |
//! | uid change of a main thread         | `process.setuid` | nothing (real uid from kernel)|
//! | comm change of a main thread        | `process.rename` | nothing                       |
//!
//! Thread-level messages (a fork that creates a thread, a non-main thread's exit, uid or comm
//! change) and other kinds (gid, sid, ptrace, coredump) are counted, not reported. Only exec
//! reads `/proc`, and right away, because a short-lived process is soon gone.
//!
//! Parent pids: an exit message names the current parent itself (after any reparenting), so
//! that wins for `process.exit`; otherwise the parent comes from the fork that created the
//! process (see [`ProcessTable`]), and for an exec of a process older than the sensor from
//! `/proc`. 0 means unknown.
//!
//! Event time is the kernel's own timestamp (`CLOCK_MONOTONIC`) converted to UTC with the
//! offset between `CLOCK_REALTIME` and `CLOCK_MONOTONIC` read when the batch of datagrams was
//! received, so time spent queued in the socket does not skew it and a clock step is followed.
//!
//! The hot path allocates nothing: datagrams are read in batches into the connector's buffers,
//! parsed into a reused `Vec`, and an event borrows its text from the [`ProcReader`]'s buffers
//! until the caller asks for the next one.
//!
//! A known quirk: when a non-main thread calls `execve`, the kernel kills the old main thread
//! first, which produces an exit message with pid == tgid just before the exec message of the
//! same process.

use std::path::PathBuf;
use std::time::Duration;

use lpcmon_protocol::EventKind;
use nix::time::{ClockId, clock_gettime};

use crate::enrich::{DEFAULT_CMDLINE_CAP, ProcReader};
use crate::proc_connector::{ConnectorConfig, ConnectorStats, ProcConnector, Recv, SensorError};
use crate::proc_event::{ProcEvent, ProcMessage, TaskName};
use crate::process_table::{self, ProcessTable};
use crate::sensor_event::{SensorEvent, exit_code_from_wait_status};

/// One [`ProcConnectorSource::next_item`] reads at most this many batches before it returns, so
/// a stream of unreported (thread) messages cannot keep the caller from checking for a stop.
const MAX_BATCHES_PER_NEXT: usize = 8;

/// How the sensor is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceConfig {
    pub connector: ConnectorConfig,
    /// Where `/proc` is mounted.
    pub proc_root: PathBuf,
    /// How much of a command line is read.
    pub cmdline_cap: usize,
    /// How many processes' parents are remembered.
    pub table_capacity: usize,
    /// How long an exited process's parent is remembered.
    pub exit_linger: Duration,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            connector: ConnectorConfig::default(),
            proc_root: PathBuf::from("/proc"),
            cmdline_cap: DEFAULT_CMDLINE_CAP,
            table_capacity: process_table::DEFAULT_CAPACITY,
            exit_linger: process_table::DEFAULT_LINGER,
        }
    }
}

/// What [`ProcConnectorSource::next_item`] yields. An event borrows the source's buffers: encode
/// or copy it before asking for the next item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceItem<'a> {
    Event(SensorEvent<'a>),
    /// The kernel dropped messages for this socket (`ENOBUFS`). The exact number follows as
    /// [`SourceItem::Lost`] once the sequence gap is seen; report the loss from that count,
    /// and use this as the moment it happened.
    Overrun,
    /// Exactly `messages` kernel messages were missed (they may include thread-level messages
    /// that would not have become events).
    Lost {
        messages: u64,
    },
}

/// Counters of the whole sensor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceStats {
    pub connector: ConnectorStats,
    /// Events yielded.
    pub events: u64,
    /// Exec events yielded, and how many of them carry their executable.
    pub execs: u64,
    pub execs_named: u64,
    /// Thread-level messages not reported.
    pub thread_messages: u64,
    /// Acknowledgements and kinds lpcmon does not report.
    pub ignored_messages: u64,
    /// Exec events whose `/proc` details were incomplete.
    pub enrich_failed: u64,
    /// Processes in the parent table.
    pub table_len: usize,
    /// Parent-table entries evicted because it was full.
    pub table_evicted: u64,
}

/// When a batch of datagrams was received, on both clocks.
#[derive(Debug, Clone, Copy)]
struct ClockAnchor {
    wall_ns: u64,
    mono_ns: u64,
}

impl ClockAnchor {
    fn now() -> Self {
        ClockAnchor {
            wall_ns: clock_ns(ClockId::CLOCK_REALTIME),
            mono_ns: clock_ns(ClockId::CLOCK_MONOTONIC),
        }
    }

    /// UTC time of a kernel timestamp; the receive time when the timestamp is implausible.
    fn wall_time(&self, kernel_ns: u64) -> u64 {
        if kernel_ns == 0 || kernel_ns > self.mono_ns {
            return self.wall_ns;
        }
        self.wall_ns.saturating_sub(self.mono_ns - kernel_ns)
    }
}

fn clock_ns(clock: ClockId) -> u64 {
    clock_gettime(clock).map_or(0, |t| {
        u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec()).unwrap_or(0)
    })
}

/// The proc-connector sensor: a blocking source of enriched process events.
#[derive(Debug)]
pub struct ProcConnectorSource {
    conn: ProcConnector,
    translator: Translator,
    /// The messages of the last batch (reused), the next one to translate, and when the batch
    /// was received.
    batch: Vec<ProcMessage>,
    next: usize,
    anchor: ClockAnchor,
    lost_pending: u64,
}

impl ProcConnectorSource {
    /// Opens and subscribes the proc connector; see [`ProcConnector::open`].
    pub fn open(config: SourceConfig) -> Result<Self, SensorError> {
        let conn = ProcConnector::open(&config.connector)?;
        Ok(ProcConnectorSource {
            conn,
            translator: Translator::new(&config),
            batch: Vec::with_capacity(crate::proc_connector::RECV_BATCH),
            next: 0,
            anchor: ClockAnchor::now(),
            lost_pending: 0,
        })
    }

    /// The next event, loss report, or `None` when nothing arrived within the receive timeout
    /// (the caller checks for a stop and calls again). Errors are fatal to the socket.
    pub fn next_item(&mut self) -> Result<Option<SourceItem<'_>>, SensorError> {
        for _ in 0..MAX_BATCHES_PER_NEXT {
            if self.lost_pending > 0 {
                let messages = std::mem::take(&mut self.lost_pending);
                return Ok(Some(SourceItem::Lost { messages }));
            }
            // Bounded by the messages of one batch.
            while let Some(&msg) = self.batch.get(self.next) {
                self.next += 1;
                if let Some(what) = self.translator.classify(&msg.event) {
                    let time = self.anchor.wall_time(msg.timestamp_ns);
                    let ev = self.translator.event_for(what, time, self.anchor.mono_ns);
                    return Ok(Some(SourceItem::Event(ev)));
                }
            }
            self.batch.clear();
            self.next = 0;
            match self.conn.recv(&mut self.batch)? {
                Recv::Timeout => return Ok(None),
                Recv::Overrun => {
                    // A missed uid change would make a remembered uid wrong.
                    self.translator.table.forget_uids();
                    return Ok(Some(SourceItem::Overrun));
                }
                Recv::Messages { lost, .. } => {
                    self.anchor = ClockAnchor::now();
                    self.translator.table.expire(self.anchor.mono_ns);
                    if lost > 0 {
                        self.translator.table.forget_uids();
                    }
                    self.lost_pending += lost;
                }
            }
        }
        Ok(None)
    }

    pub fn stats(&self) -> SourceStats {
        SourceStats {
            connector: self.conn.stats(),
            table_len: self.translator.table.len(),
            table_evicted: self.translator.table.evicted(),
            ..self.translator.stats
        }
    }
}

/// A kernel message that becomes an event: a fork, exec, exit, uid or comm change of a process
/// (its main thread). For process events the kernel's task is the main thread, so the event's
/// `tid` is its `pid`.
#[derive(Debug, Clone, Copy)]
enum Reported {
    Start {
        pid: u32,
        ppid: u32,
    },
    Exec {
        pid: u32,
    },
    /// `ppid` is the parent the exit message names, when the kernel sent one.
    Exit {
        pid: u32,
        exit_code: u32,
        ppid: Option<u32>,
    },
    Setuid {
        pid: u32,
        ruid: u32,
    },
    Rename {
        pid: u32,
        comm: TaskName,
    },
}

/// The socket-free part of the sensor: kernel messages in, events out.
#[derive(Debug)]
struct Translator {
    table: ProcessTable,
    reader: ProcReader,
    /// A renamed process's new name, as text.
    comm: String,
    stats: SourceStats,
}

impl Translator {
    fn new(config: &SourceConfig) -> Self {
        Translator {
            table: ProcessTable::new(config.table_capacity, config.exit_linger),
            reader: ProcReader::new(&config.proc_root, config.cmdline_cap),
            comm: String::new(),
            stats: SourceStats::default(),
        }
    }

    /// Turns one kernel message into an event, or `None` for what is not reported.
    #[cfg(test)]
    fn translate(&mut self, msg: &ProcMessage, at: &ClockAnchor) -> Option<SensorEvent<'_>> {
        let what = self.classify(&msg.event)?;
        Some(self.event_for(what, at.wall_time(msg.timestamp_ns), at.mono_ns))
    }

    /// What `event` becomes: process-level fork, exec, exit, uid and comm messages are
    /// reported; thread-level ones and other kinds are only counted.
    fn classify(&mut self, event: &ProcEvent) -> Option<Reported> {
        let reported = match *event {
            ProcEvent::Fork {
                parent_tgid,
                child_pid,
                child_tgid,
                ..
            } if child_pid == child_tgid => Reported::Start {
                pid: child_tgid,
                ppid: parent_tgid,
            },
            ProcEvent::Exec { pid, tgid } if pid == tgid => Reported::Exec { pid },
            ProcEvent::Exit {
                pid,
                tgid,
                exit_code,
                parent,
                ..
            } if pid == tgid => Reported::Exit {
                pid,
                exit_code,
                ppid: parent.map(|(_, parent_tgid)| parent_tgid),
            },
            ProcEvent::Uid { pid, tgid, ruid, .. } if pid == tgid => Reported::Setuid { pid, ruid },
            ProcEvent::Comm { pid, tgid, comm } if pid == tgid => Reported::Rename { pid, comm },
            ProcEvent::Uid { tgid, ruid, .. } => {
                // A thread whose real uid is not its process's: which one a fork from that
                // process inherits is no longer certain, so the process's uid is read again.
                if self.table.uid(tgid) != Some(ruid) {
                    self.table.set_uid(tgid, None);
                }
                self.stats.thread_messages += 1;
                return None;
            }
            ProcEvent::Fork { .. }
            | ProcEvent::Exec { .. }
            | ProcEvent::Exit { .. }
            | ProcEvent::Comm { .. } => {
                self.stats.thread_messages += 1;
                return None;
            }
            ProcEvent::Ack { .. } | ProcEvent::Other { .. } => {
                self.stats.ignored_messages += 1;
                return None;
            }
        };
        Some(reported)
    }

    /// The event for a reported message that happened at `time` (UTC) and was received at
    /// `mono_ns` (`CLOCK_MONOTONIC`). Only an exec reads `/proc`.
    fn event_for(&mut self, what: Reported, time: u64, mono_ns: u64) -> SensorEvent<'_> {
        self.stats.events += 1;
        match what {
            Reported::Start { pid, ppid } => {
                // A child starts with its parent's credentials.
                let uid = self.table.uid(ppid);
                self.table.insert(pid, ppid, uid);
                SensorEvent::new(EventKind::ProcessStart, time, pid, ppid, pid)
            }
            Reported::Exec { pid } => self.exec_event(time, pid),
            Reported::Exit { pid, exit_code, ppid } => {
                let ppid = ppid.or_else(|| self.table.parent(pid));
                self.table.mark_exited(pid, mono_ns);
                let mut ev = SensorEvent::new(EventKind::ProcessExit, time, pid, ppid.unwrap_or(0), pid);
                ev.exit_code = Some(exit_code_from_wait_status(exit_code));
                ev
            }
            Reported::Setuid { pid, ruid } => {
                self.table.set_uid(pid, Some(ruid));
                let ppid = self.table.parent(pid).unwrap_or(0);
                let mut ev = SensorEvent::new(EventKind::ProcessSetuid, time, pid, ppid, pid);
                ev.user_id = Some(ruid);
                ev
            }
            Reported::Rename { pid, comm } => {
                let ppid = self.table.parent(pid).unwrap_or(0);
                self.comm.clear();
                self.comm.push_str(&String::from_utf8_lossy(comm.as_bytes()));
                let mut ev = SensorEvent::new(EventKind::ProcessRename, time, pid, ppid, pid);
                ev.name = Some(&self.comm);
                ev
            }
        }
    }

    fn exec_event(&mut self, time: u64, pid: u32) -> SensorEvent<'_> {
        let known = self.table.parent(pid).zip(self.table.uid(pid));
        let mut info = match known {
            // The usual case: the fork was seen, so only the exec's own details are read.
            Some(_) => self.reader.read_known(pid),
            None => self.reader.read(pid),
        };
        match (known, self.table.parent(pid)) {
            (Some((ppid, uid)), _) => {
                info.ppid = Some(ppid);
                info.uid = Some(uid);
            }
            (None, Some(ppid)) => {
                // Seen forking, uid unknown: learn it here for this process's children.
                self.table.set_uid(pid, info.uid);
                info.ppid = Some(ppid);
            }
            // A process that predates the sensor: learn its parent and uid for its exit and
            // its children.
            (None, None) => {
                if let Some(ppid) = info.ppid {
                    self.table.insert(pid, ppid, info.uid);
                }
            }
        }
        let ppid = info.ppid;
        let complete = info.is_complete();
        self.stats.execs += 1;
        if info.executable.is_some() {
            self.stats.execs_named += 1;
        }
        if !complete {
            self.stats.enrich_failed += 1;
        }
        let mut ev = SensorEvent::new(EventKind::ProcessExec, time, pid, ppid.unwrap_or(0), pid);
        ev.executable = info.executable;
        ev.command_line = info.command_line;
        ev.command_line_truncated = info.command_line_truncated;
        ev.user_id = info.uid;
        ev.name = info.name;
        ev.enrich_failed = !complete;
        ev
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_timestamps_convert_to_wall_time() {
        let at = ClockAnchor {
            wall_ns: 1_700_000_000_000_000_000,
            mono_ns: 5_000_000_000,
        };
        assert_eq!(at.wall_time(4_000_000_000), 1_699_999_999_000_000_000);
        // Implausible kernel timestamps fall back to the receive time.
        assert_eq!(at.wall_time(0), at.wall_ns);
        assert_eq!(at.wall_time(6_000_000_000), at.wall_ns);
    }

    fn translator() -> Translator {
        Translator::new(&SourceConfig {
            // Nothing exists there, so every exec's enrichment fails.
            proc_root: PathBuf::from("/nonexistent/lpcmon-proc"),
            ..SourceConfig::default()
        })
    }

    fn msg(event: ProcEvent) -> ProcMessage {
        ProcMessage {
            seq: 0,
            ack: 0,
            cpu: 0,
            timestamp_ns: 4_000_000_000,
            event,
        }
    }

    const AT: ClockAnchor = ClockAnchor {
        wall_ns: 1_700_000_000_000_000_000,
        mono_ns: 5_000_000_000,
    };

    #[test]
    fn a_process_fork_starts_a_process_and_a_thread_fork_does_not() {
        let mut t = translator();
        let fork = |child_pid, child_tgid| {
            msg(ProcEvent::Fork {
                parent_pid: 11,
                parent_tgid: 10,
                child_pid,
                child_tgid,
            })
        };
        let ev = t.translate(&fork(20, 20), &AT).unwrap();
        assert_eq!(
            ev,
            SensorEvent::new(EventKind::ProcessStart, 1_699_999_999_000_000_000, 20, 10, 20)
        );
        assert_eq!(t.translate(&fork(21, 20), &AT), None);
        assert_eq!(t.stats.thread_messages, 1);
        assert_eq!(t.stats.events, 1);
    }

    #[test]
    fn a_short_lived_process_keeps_its_parent_and_is_flagged() {
        let mut t = translator();
        t.translate(
            &msg(ProcEvent::Fork {
                parent_pid: 10,
                parent_tgid: 10,
                child_pid: 20,
                child_tgid: 20,
            }),
            &AT,
        );
        let exec = t
            .translate(&msg(ProcEvent::Exec { pid: 20, tgid: 20 }), &AT)
            .unwrap();
        assert_eq!((exec.kind, exec.pid, exec.ppid), (EventKind::ProcessExec, 20, 10));
        assert!(exec.enrich_failed);
        assert_eq!(exec.executable, None);
        assert_eq!(t.stats.enrich_failed, 1);
        let exit = t
            .translate(
                &msg(ProcEvent::Exit {
                    pid: 20,
                    tgid: 20,
                    exit_code: 3 << 8,
                    exit_signal: 17,
                    parent: None,
                }),
                &AT,
            )
            .unwrap();
        assert_eq!(
            (exit.kind, exit.ppid, exit.exit_code),
            (EventKind::ProcessExit, 10, Some(3))
        );
    }

    #[test]
    fn the_exit_messages_own_parent_wins_and_thread_exits_are_skipped() {
        let mut t = translator();
        let exit = |pid, parent| {
            msg(ProcEvent::Exit {
                pid,
                tgid: 30,
                exit_code: 9,
                exit_signal: 17,
                parent,
            })
        };
        let ev = t.translate(&exit(30, Some((1, 1))), &AT).unwrap();
        assert_eq!((ev.ppid, ev.exit_code), (1, Some(-9)));
        assert_eq!(t.translate(&exit(31, None), &AT), None);
    }

    #[test]
    fn uid_and_comm_changes_of_the_main_thread_are_reported() {
        let mut t = translator();
        let uid = |pid| {
            msg(ProcEvent::Uid {
                pid,
                tgid: 40,
                ruid: 1000,
                euid: 0,
            })
        };
        let ev = t.translate(&uid(40), &AT).unwrap();
        assert_eq!((ev.kind, ev.user_id), (EventKind::ProcessSetuid, Some(1000)));
        assert_eq!(t.translate(&uid(41), &AT), None);
        let mut name = [0u8; 16];
        name[..4].copy_from_slice(b"work");
        let comm = msg(ProcEvent::Comm {
            pid: 40,
            tgid: 40,
            comm: crate::proc_event::TaskName::from_bytes(name),
        });
        let ev = t.translate(&comm, &AT).unwrap();
        assert_eq!((ev.kind, ev.name), (EventKind::ProcessRename, Some("work")));
        assert_eq!(t.translate(&msg(ProcEvent::Other { what: 0x40 }), &AT), None);
        assert_eq!(t.stats.ignored_messages, 1);
    }

    #[test]
    fn a_uid_follows_forks_and_setuids_and_a_diverging_thread_makes_it_unknown() {
        let mut t = translator();
        let fork = |parent, child| {
            msg(ProcEvent::Fork {
                parent_pid: parent,
                parent_tgid: parent,
                child_pid: child,
                child_tgid: child,
            })
        };
        let uid = |pid, tgid, ruid| {
            msg(ProcEvent::Uid {
                pid,
                tgid,
                ruid,
                euid: ruid,
            })
        };
        // A process that predates the sensor: its parent and uid are learnt from /proc only.
        t.table.insert(10, 1, Some(1000));
        t.translate(&fork(10, 20), &AT);
        assert_eq!(t.table.uid(20), Some(1000), "inherited");
        t.translate(&uid(20, 20, 0), &AT);
        t.translate(&fork(20, 30), &AT);
        assert_eq!(t.table.uid(30), Some(0), "the setuid came before the fork");
        // The exec of a process whose parent and uid are known carries them without status
        // (this fake /proc has nothing, so only the uid and parent are there).
        let exec = t
            .translate(&msg(ProcEvent::Exec { pid: 30, tgid: 30 }), &AT)
            .unwrap();
        assert_eq!((exec.ppid, exec.user_id), (20, Some(0)));
        // A thread of 30 that agrees changes nothing; one that differs makes 30's uid unknown.
        t.translate(&uid(31, 30, 0), &AT);
        assert_eq!(t.table.uid(30), Some(0));
        t.translate(&uid(32, 30, 1000), &AT);
        assert_eq!(t.table.uid(30), None);
        t.translate(&fork(30, 40), &AT);
        assert_eq!(
            t.table.uid(40),
            None,
            "unknown is inherited, to be read from /proc"
        );
    }

    #[test]
    fn the_clocks_are_readable() {
        let at = ClockAnchor::now();
        assert!(at.wall_ns > 1_600_000_000_000_000_000);
        assert!(at.mono_ns > 0);
    }
}
