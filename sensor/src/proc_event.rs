//! The proc connector's wire format and a bounds-checked parser for it.
//!
//! A datagram from a `NETLINK_CONNECTOR` socket holds one or more netlink messages. Each one the
//! proc connector sends is an `nlmsghdr` of type `NLMSG_DONE` (the connector uses that type for
//! every data message), then a `struct cn_msg` (`linux/connector.h`), then a
//! `struct proc_event` (`linux/cn_proc.h`). The kernel structures are declared here with
//! `#[repr(C)]` and every offset the parser uses comes from `offset_of!` on them, with
//! compile-time assertions that pin the sizes and offsets to the kernel's ABI.
//!
//! Nothing here touches a socket, so it is unit-tested and fuzzed with hand-built bytes. Every
//! read is checked against the buffer; malformed input yields a [`ParseError`], never a panic.

use core::mem::{offset_of, size_of};
use thiserror::Error;

/// `struct cb_id` from `linux/connector.h`: which connector a message belongs to.
#[repr(C)]
struct CbId {
    idx: u32,
    val: u32,
}

/// `struct cn_msg` from `linux/connector.h`, without its flexible `data[]` tail.
#[repr(C)]
struct CnMsg {
    id: CbId,
    seq: u32,
    ack: u32,
    len: u16,
    flags: u16,
}

/// The fixed head of `struct proc_event` from `linux/cn_proc.h`. The kernel declares
/// `timestamp_ns` `aligned(8)`, which puts the `event_data` union at offset 16.
#[repr(C)]
struct ProcEventHead {
    what: u32,
    cpu: u32,
    timestamp_ns: u64,
}

/// `event_data.ack` (sent for `PROC_EVENT_NONE`).
#[repr(C)]
struct AckData {
    err: u32,
}

/// `struct fork_proc_event`.
#[repr(C)]
struct ForkData {
    parent_pid: u32,
    parent_tgid: u32,
    child_pid: u32,
    child_tgid: u32,
}

/// `struct exec_proc_event`.
#[repr(C)]
struct ExecData {
    process_pid: u32,
    process_tgid: u32,
}

/// `struct id_proc_event` for `PROC_EVENT_UID` (the unions hold `ruid` and `euid`).
#[repr(C)]
struct IdData {
    process_pid: u32,
    process_tgid: u32,
    ruid: u32,
    euid: u32,
}

/// `struct comm_proc_event`.
#[repr(C)]
struct CommData {
    process_pid: u32,
    process_tgid: u32,
    comm: [u8; 16],
}

/// `struct exit_proc_event`. `parent_pid`/`parent_tgid` were added later (2017); older
/// kernels leave them zero (the union was already this large because of `comm_proc_event`).
#[repr(C)]
struct ExitData {
    process_pid: u32,
    process_tgid: u32,
    exit_code: u32,
    exit_signal: u32,
    parent_pid: u32,
    parent_tgid: u32,
}

// The kernel ABI these declarations must match.
const _: () = {
    assert!(size_of::<libc::nlmsghdr>() == 16);
    assert!(size_of::<CbId>() == 8);
    assert!(size_of::<CnMsg>() == 20);
    assert!(offset_of!(CnMsg, seq) == 8);
    assert!(offset_of!(CnMsg, ack) == 12);
    assert!(offset_of!(CnMsg, len) == 16);
    assert!(offset_of!(CnMsg, flags) == 18);
    assert!(size_of::<ProcEventHead>() == 16);
    assert!(offset_of!(ProcEventHead, cpu) == 4);
    assert!(offset_of!(ProcEventHead, timestamp_ns) == 8);
    assert!(size_of::<ForkData>() == 16);
    assert!(size_of::<ExecData>() == 8);
    assert!(size_of::<IdData>() == 16);
    assert!(size_of::<CommData>() == 24);
    assert!(offset_of!(CommData, comm) == 8);
    assert!(size_of::<ExitData>() == 24);
    assert!(offset_of!(ExitData, parent_pid) == 16);
};

/// Size of the `event_data` union: its largest members (`comm` and `exit`) are 24 bytes.
const EVENT_DATA_LEN: usize = 24;
/// `sizeof(struct proc_event)`: what the kernel puts in `cn_msg.len`.
pub const PROC_EVENT_LEN: usize = size_of::<ProcEventHead>() + EVENT_DATA_LEN;
/// Bytes of one complete proc connector netlink message.
pub const PROC_MESSAGE_LEN: usize = size_of::<libc::nlmsghdr>() + size_of::<CnMsg>() + PROC_EVENT_LEN;

const NLMSG_HDR_LEN: usize = size_of::<libc::nlmsghdr>();
const CN_MSG_LEN: usize = size_of::<CnMsg>();

// `enum proc_cn_event` values (linux/cn_proc.h).
const PROC_EVENT_NONE: u32 = 0x0000_0000;
const PROC_EVENT_FORK: u32 = 0x0000_0001;
const PROC_EVENT_EXEC: u32 = 0x0000_0002;
const PROC_EVENT_UID: u32 = 0x0000_0004;
const PROC_EVENT_COMM: u32 = 0x0000_0200;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;

/// The proc connector's id (`CN_IDX_PROC`, `CN_VAL_PROC`).
const PROC_CN_ID: (u32, u32) = (libc::CN_IDX_PROC, libc::CN_VAL_PROC);

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// Why a datagram or one of its messages could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ParseError {
    #[error("netlink header truncated: {available} bytes left, a header needs 16")]
    TruncatedHeader { available: usize },
    #[error("nlmsg_len {len} is shorter than its header or longer than the {available} bytes left")]
    BadNlmsgLen { len: u32, available: usize },
    #[error("NLMSG_ERROR payload of {len} bytes is too short for an error code")]
    TruncatedError { len: usize },
    #[error("connector message payload of {len} bytes is too short for a cn_msg (20)")]
    TruncatedCnMsg { len: usize },
    #[error("cn_msg.len {declared} exceeds the {available} bytes that follow the cn_msg")]
    BadCnMsgLen { declared: u16, available: usize },
    #[error("proc_event of type {what:#x} has {len} bytes, needs {needed}")]
    TruncatedProcEvent { what: u32, len: usize, needed: usize },
}

/// A task's `comm` name as the kernel sent it: up to 16 bytes, NUL-terminated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskName([u8; 16]);

impl TaskName {
    /// Wraps the kernel's 16-byte `comm` buffer.
    pub fn from_bytes(raw: [u8; 16]) -> Self {
        TaskName(raw)
    }

    /// The name without its NUL terminator.
    pub fn as_bytes(&self) -> &[u8] {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(self.0.len());
        &self.0[..end]
    }

    /// The name as text; invalid UTF-8 becomes U+FFFD.
    pub fn to_string_lossy(&self) -> String {
        String::from_utf8_lossy(self.as_bytes()).into_owned()
    }
}

/// One process event, typed. Pids are kernel task ids: `pid` is the thread, `tgid` the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcEvent {
    /// `PROC_EVENT_NONE`: the kernel's answer to a listen/ignore request. The kernel multicasts
    /// it, so a listener also sees other sockets' acknowledgements.
    Ack {
        err: u32,
    },
    /// A task was created. `parent_*` is the new task's `real_parent`.
    Fork {
        parent_pid: u32,
        parent_tgid: u32,
        child_pid: u32,
        child_tgid: u32,
    },
    Exec {
        pid: u32,
        tgid: u32,
    },
    /// The real and effective uid after a `set*uid` call.
    Uid {
        pid: u32,
        tgid: u32,
        ruid: u32,
        euid: u32,
    },
    Comm {
        pid: u32,
        tgid: u32,
        comm: TaskName,
    },
    /// A task exited. `exit_code` is the kernel's `task->exit_code`, a raw wait status;
    /// `exit_signal` is the signal sent to the parent (-1 for threads). `parent` is `None` on
    /// kernels from before the field existed or when the task was already unhashed.
    Exit {
        pid: u32,
        tgid: u32,
        exit_code: u32,
        exit_signal: i32,
        parent: Option<(u32, u32)>,
    },
    /// A valid event lpcmon does not report (gid, sid, ptrace, coredump, or a newer type).
    Other {
        what: u32,
    },
}

impl ProcEvent {
    /// True for a fork that created a thread rather than a process (`child pid != child tgid`).
    pub fn is_thread_fork(&self) -> bool {
        matches!(self, Self::Fork { child_pid, child_tgid, .. } if child_pid != child_tgid)
    }
}

/// One proc connector message: the event and the connector's bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcMessage {
    /// Per-CPU sequence number: consecutive for every message the kernel sends from one CPU.
    pub seq: u32,
    /// For acknowledgements, the requester's `ack` plus one; otherwise 0.
    pub ack: u32,
    /// The CPU that sent it; `u32::MAX` marks an out-of-band acknowledgement on older kernels.
    pub cpu: u32,
    /// `ktime_get_ns()` when the event happened: `CLOCK_MONOTONIC`, not wall-clock time.
    pub timestamp_ns: u64,
    pub event: ProcEvent,
}

/// One netlink message of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetlinkItem {
    Proc(ProcMessage),
    /// `NLMSG_ERROR`; an `errno` of 0 is a plain acknowledgement.
    Error {
        errno: i32,
    },
    /// `NLMSG_OVERRUN`: the kernel reports that data was lost.
    Overrun,
    /// A message with nothing for lpcmon: `NLMSG_NOOP`, an empty `NLMSG_DONE`, another netlink
    /// type, or a `cn_msg` addressed to another connector.
    Ignored {
        nlmsg_type: u16,
    },
}

/// Splits a datagram into its netlink messages.
///
/// A message whose payload is malformed yields an error and parsing goes on with the next
/// one; a malformed header ends the iteration, since the next message cannot be found.
pub fn parse_datagram(buf: &[u8]) -> Datagram<'_> {
    Datagram { rest: buf }
}

/// Iterator over the netlink messages of one datagram; see [`parse_datagram`].
#[derive(Debug, Clone)]
pub struct Datagram<'a> {
    rest: &'a [u8],
}

impl Iterator for Datagram<'_> {
    type Item = Result<NetlinkItem, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let available = self.rest.len();
        let header = (|| {
            Some((
                u32_at(self.rest, offset_of!(libc::nlmsghdr, nlmsg_len))?,
                u16_at(self.rest, offset_of!(libc::nlmsghdr, nlmsg_type))?,
            ))
        })();
        let (Some((len, nlmsg_type)), true) = (header, available >= NLMSG_HDR_LEN) else {
            self.rest = &[];
            return Some(Err(ParseError::TruncatedHeader { available }));
        };
        let msg_len = len as usize;
        if msg_len < NLMSG_HDR_LEN || msg_len > available {
            self.rest = &[];
            return Some(Err(ParseError::BadNlmsgLen { len, available }));
        }
        let payload = &self.rest[NLMSG_HDR_LEN..msg_len];
        // NLMSG_ALIGN: the next message starts on a 4-byte boundary; the last one may be short.
        let advance = msg_len.next_multiple_of(4).min(available);
        self.rest = &self.rest[advance..];
        Some(parse_message(nlmsg_type, payload))
    }
}

fn parse_message(nlmsg_type: u16, payload: &[u8]) -> Result<NetlinkItem, ParseError> {
    match i32::from(nlmsg_type) {
        libc::NLMSG_ERROR => {
            let errno = u32_at(payload, offset_of!(libc::nlmsgerr, error))
                .ok_or(ParseError::TruncatedError { len: payload.len() })?;
            // The kernel sends a negative errno.
            Ok(NetlinkItem::Error {
                errno: (errno as i32).saturating_neg(),
            })
        }
        libc::NLMSG_OVERRUN => Ok(NetlinkItem::Overrun),
        libc::NLMSG_DONE if !payload.is_empty() => parse_cn_msg(payload),
        _ => Ok(NetlinkItem::Ignored { nlmsg_type }),
    }
}

fn parse_cn_msg(payload: &[u8]) -> Result<NetlinkItem, ParseError> {
    let truncated = ParseError::TruncatedCnMsg { len: payload.len() };
    let cn = (|| {
        Some(CnMsg {
            id: CbId {
                idx: u32_at(payload, offset_of!(CnMsg, id) + offset_of!(CbId, idx))?,
                val: u32_at(payload, offset_of!(CnMsg, id) + offset_of!(CbId, val))?,
            },
            seq: u32_at(payload, offset_of!(CnMsg, seq))?,
            ack: u32_at(payload, offset_of!(CnMsg, ack))?,
            len: u16_at(payload, offset_of!(CnMsg, len))?,
            flags: u16_at(payload, offset_of!(CnMsg, flags))?,
        })
    })()
    .ok_or(truncated)?;
    if (cn.id.idx, cn.id.val) != PROC_CN_ID {
        return Ok(NetlinkItem::Ignored {
            nlmsg_type: libc::NLMSG_DONE as u16,
        });
    }
    let available = payload.len().saturating_sub(CN_MSG_LEN);
    if usize::from(cn.len) > available {
        return Err(ParseError::BadCnMsgLen {
            declared: cn.len,
            available,
        });
    }
    // The proc connector never sets cn_msg.flags; they carry no information for us.
    let _ = cn.flags;
    let data = &payload[CN_MSG_LEN..CN_MSG_LEN + usize::from(cn.len)];
    let (head, event) = parse_proc_event(data)?;
    Ok(NetlinkItem::Proc(ProcMessage {
        seq: cn.seq,
        ack: cn.ack,
        cpu: head.cpu,
        timestamp_ns: head.timestamp_ns,
        event,
    }))
}

fn parse_proc_event(data: &[u8]) -> Result<(ProcEventHead, ProcEvent), ParseError> {
    let short = |what: u32, needed: usize| ParseError::TruncatedProcEvent {
        what,
        len: data.len(),
        needed,
    };
    let head = (|| {
        Some(ProcEventHead {
            what: u32_at(data, offset_of!(ProcEventHead, what))?,
            cpu: u32_at(data, offset_of!(ProcEventHead, cpu))?,
            timestamp_ns: u64_at(data, offset_of!(ProcEventHead, timestamp_ns))?,
        })
    })()
    .ok_or_else(|| short(u32_at(data, 0).unwrap_or(0), size_of::<ProcEventHead>()))?;
    let what = head.what;
    let body = &data[size_of::<ProcEventHead>()..];
    let need = |n: usize| {
        if body.len() < n {
            Err(short(what, size_of::<ProcEventHead>() + n))
        } else {
            Ok(())
        }
    };
    // `need` has checked the length, so each `u32_at` below finds its bytes.
    let at = |off: usize| u32_at(body, off).unwrap_or(0);
    let event = match what {
        PROC_EVENT_NONE => {
            need(size_of::<AckData>())?;
            let ack = AckData {
                err: at(offset_of!(AckData, err)),
            };
            ProcEvent::Ack { err: ack.err }
        }
        PROC_EVENT_FORK => {
            need(size_of::<ForkData>())?;
            let f = ForkData {
                parent_pid: at(offset_of!(ForkData, parent_pid)),
                parent_tgid: at(offset_of!(ForkData, parent_tgid)),
                child_pid: at(offset_of!(ForkData, child_pid)),
                child_tgid: at(offset_of!(ForkData, child_tgid)),
            };
            ProcEvent::Fork {
                parent_pid: f.parent_pid,
                parent_tgid: f.parent_tgid,
                child_pid: f.child_pid,
                child_tgid: f.child_tgid,
            }
        }
        PROC_EVENT_EXEC => {
            need(size_of::<ExecData>())?;
            let e = ExecData {
                process_pid: at(offset_of!(ExecData, process_pid)),
                process_tgid: at(offset_of!(ExecData, process_tgid)),
            };
            ProcEvent::Exec {
                pid: e.process_pid,
                tgid: e.process_tgid,
            }
        }
        PROC_EVENT_UID => {
            need(size_of::<IdData>())?;
            let u = IdData {
                process_pid: at(offset_of!(IdData, process_pid)),
                process_tgid: at(offset_of!(IdData, process_tgid)),
                ruid: at(offset_of!(IdData, ruid)),
                euid: at(offset_of!(IdData, euid)),
            };
            ProcEvent::Uid {
                pid: u.process_pid,
                tgid: u.process_tgid,
                ruid: u.ruid,
                euid: u.euid,
            }
        }
        PROC_EVENT_COMM => {
            need(size_of::<CommData>())?;
            let mut comm = [0u8; 16];
            let from = offset_of!(CommData, comm);
            comm.copy_from_slice(&body[from..from + 16]);
            let c = CommData {
                process_pid: at(offset_of!(CommData, process_pid)),
                process_tgid: at(offset_of!(CommData, process_tgid)),
                comm,
            };
            ProcEvent::Comm {
                pid: c.process_pid,
                tgid: c.process_tgid,
                comm: TaskName::from_bytes(c.comm),
            }
        }
        PROC_EVENT_EXIT => {
            // The parent fields are optional: accept an event that ends before them.
            need(offset_of!(ExitData, parent_pid))?;
            let x = ExitData {
                process_pid: at(offset_of!(ExitData, process_pid)),
                process_tgid: at(offset_of!(ExitData, process_tgid)),
                exit_code: at(offset_of!(ExitData, exit_code)),
                exit_signal: at(offset_of!(ExitData, exit_signal)),
                parent_pid: at(offset_of!(ExitData, parent_pid)),
                parent_tgid: at(offset_of!(ExitData, parent_tgid)),
            };
            ProcEvent::Exit {
                pid: x.process_pid,
                tgid: x.process_tgid,
                exit_code: x.exit_code,
                exit_signal: x.exit_signal as i32,
                // Pid 0 is never a real parent here: the kernel leaves zeros when it has none.
                parent: (x.parent_tgid != 0).then_some((x.parent_pid, x.parent_tgid)),
            }
        }
        other => ProcEvent::Other { what: other },
    };
    Ok((head, event))
}

/// Builds the request that subscribes (`PROC_CN_MCAST_LISTEN`) or unsubscribes
/// (`PROC_CN_MCAST_IGNORE`) a socket: `nlmsghdr | cn_msg | u32 op`.
///
/// The 4-byte form of the request is understood by every kernel; newer ones also accept a
/// `struct proc_input` with an event filter, which lpcmon does not need.
pub(crate) fn subscription_request(op: u32, seq: u32, ack: u32, port_id: u32) -> [u8; SUBSCRIPTION_LEN] {
    let mut out = [0u8; SUBSCRIPTION_LEN];
    let mut put = |at: usize, bytes: &[u8]| out[at..at + bytes.len()].copy_from_slice(bytes);
    put(
        offset_of!(libc::nlmsghdr, nlmsg_len),
        &(SUBSCRIPTION_LEN as u32).to_ne_bytes(),
    );
    put(
        offset_of!(libc::nlmsghdr, nlmsg_type),
        &(libc::NLMSG_DONE as u16).to_ne_bytes(),
    );
    put(offset_of!(libc::nlmsghdr, nlmsg_seq), &seq.to_ne_bytes());
    put(offset_of!(libc::nlmsghdr, nlmsg_pid), &port_id.to_ne_bytes());
    let cn = NLMSG_HDR_LEN;
    put(
        cn + offset_of!(CnMsg, id) + offset_of!(CbId, idx),
        &PROC_CN_ID.0.to_ne_bytes(),
    );
    put(
        cn + offset_of!(CnMsg, id) + offset_of!(CbId, val),
        &PROC_CN_ID.1.to_ne_bytes(),
    );
    put(cn + offset_of!(CnMsg, seq), &seq.to_ne_bytes());
    put(cn + offset_of!(CnMsg, ack), &ack.to_ne_bytes());
    put(
        cn + offset_of!(CnMsg, len),
        &(size_of::<u32>() as u16).to_ne_bytes(),
    );
    put(cn + CN_MSG_LEN, &op.to_ne_bytes());
    out
}

/// Length of a subscription request.
pub(crate) const SUBSCRIPTION_LEN: usize = NLMSG_HDR_LEN + CN_MSG_LEN + size_of::<u32>();

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds one proc connector netlink message as the kernel would.
    pub(crate) fn message(what: u32, cpu: u32, seq: u32, body: &[u8]) -> Vec<u8> {
        let mut ev = Vec::new();
        ev.extend_from_slice(&what.to_ne_bytes());
        ev.extend_from_slice(&cpu.to_ne_bytes());
        ev.extend_from_slice(&123_456_789u64.to_ne_bytes());
        ev.extend_from_slice(body);
        ev.resize(PROC_EVENT_LEN.max(ev.len()), 0);
        let mut cn = Vec::new();
        cn.extend_from_slice(&libc::CN_IDX_PROC.to_ne_bytes());
        cn.extend_from_slice(&libc::CN_VAL_PROC.to_ne_bytes());
        cn.extend_from_slice(&seq.to_ne_bytes());
        cn.extend_from_slice(&0u32.to_ne_bytes());
        cn.extend_from_slice(&(ev.len() as u16).to_ne_bytes());
        cn.extend_from_slice(&0u16.to_ne_bytes());
        cn.extend_from_slice(&ev);
        nlmsg(libc::NLMSG_DONE as u16, &cn)
    }

    pub(crate) fn nlmsg(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDR_LEN + payload.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        m.resize(m.len().next_multiple_of(4), 0);
        m
    }

    pub(crate) fn words(ws: &[u32]) -> Vec<u8> {
        ws.iter().flat_map(|w| w.to_ne_bytes()).collect()
    }

    fn parse_all(buf: &[u8]) -> Vec<Result<NetlinkItem, ParseError>> {
        parse_datagram(buf).collect()
    }

    fn event(item: &Result<NetlinkItem, ParseError>) -> ProcEvent {
        match item {
            Ok(NetlinkItem::Proc(m)) => m.event,
            other => panic!("not a proc event: {other:?}"),
        }
    }

    #[test]
    fn a_fork_message_parses_with_its_bookkeeping() {
        let buf = message(PROC_EVENT_FORK, 3, 41, &words(&[1, 1, 200, 200]));
        assert_eq!(buf.len(), PROC_MESSAGE_LEN);
        let items = parse_all(&buf);
        assert_eq!(
            items,
            vec![Ok(NetlinkItem::Proc(ProcMessage {
                seq: 41,
                ack: 0,
                cpu: 3,
                timestamp_ns: 123_456_789,
                event: ProcEvent::Fork {
                    parent_pid: 1,
                    parent_tgid: 1,
                    child_pid: 200,
                    child_tgid: 200,
                },
            }))]
        );
        assert!(!event(&items[0]).is_thread_fork());
        let thread = message(PROC_EVENT_FORK, 0, 0, &words(&[5, 5, 201, 200]));
        assert!(event(&parse_all(&thread)[0]).is_thread_fork());
    }

    #[test]
    fn every_reported_type_parses() {
        let mut comm = words(&[7, 7]);
        comm.extend_from_slice(b"worker\0\0\0\0\0\0\0\0\0\0");
        let mut buf = Vec::new();
        buf.extend(message(PROC_EVENT_EXEC, 0, 0, &words(&[7, 7])));
        buf.extend(message(PROC_EVENT_UID, 0, 1, &words(&[7, 7, 1000, 0])));
        buf.extend(message(PROC_EVENT_COMM, 0, 2, &comm));
        buf.extend(message(PROC_EVENT_EXIT, 0, 3, &words(&[7, 7, 0x100, 17, 1, 1])));
        buf.extend(message(PROC_EVENT_EXIT, 0, 4, &words(&[8, 7, 9, u32::MAX, 0, 0])));
        buf.extend(message(0x40, 0, 5, &words(&[7, 7, 0, 0])));
        buf.extend(message(PROC_EVENT_NONE, u32::MAX, 6, &words(&[0])));
        let events: Vec<ProcEvent> = parse_all(&buf).iter().map(event).collect();
        assert_eq!(events[0], ProcEvent::Exec { pid: 7, tgid: 7 });
        assert_eq!(
            events[1],
            ProcEvent::Uid {
                pid: 7,
                tgid: 7,
                ruid: 1000,
                euid: 0
            }
        );
        match events[2] {
            ProcEvent::Comm { comm, .. } => assert_eq!(comm.to_string_lossy(), "worker"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            events[3],
            ProcEvent::Exit {
                pid: 7,
                tgid: 7,
                exit_code: 0x100,
                exit_signal: 17,
                parent: Some((1, 1)),
            }
        );
        assert_eq!(
            events[4],
            ProcEvent::Exit {
                pid: 8,
                tgid: 7,
                exit_code: 9,
                exit_signal: -1,
                parent: None,
            }
        );
        assert_eq!(events[5], ProcEvent::Other { what: 0x40 });
        assert_eq!(events[6], ProcEvent::Ack { err: 0 });
    }

    #[test]
    fn a_full_comm_has_no_terminator_and_is_still_bounded() {
        let mut body = words(&[1, 1]);
        body.extend_from_slice(&[b'a'; 16]);
        match event(&parse_all(&message(PROC_EVENT_COMM, 0, 0, &body))[0]) {
            ProcEvent::Comm { comm, .. } => assert_eq!(comm.as_bytes(), &[b'a'; 16]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn netlink_control_messages_are_typed() {
        let mut buf = nlmsg(
            libc::NLMSG_ERROR as u16,
            &words(&[(-libc::EPERM) as u32, 0, 0, 0, 0]),
        );
        buf.extend(nlmsg(libc::NLMSG_ERROR as u16, &words(&[0; 5])));
        buf.extend(nlmsg(libc::NLMSG_OVERRUN as u16, &[]));
        buf.extend(nlmsg(libc::NLMSG_NOOP as u16, &[]));
        buf.extend(nlmsg(libc::NLMSG_DONE as u16, &[]));
        assert_eq!(
            parse_all(&buf),
            vec![
                Ok(NetlinkItem::Error { errno: libc::EPERM }),
                Ok(NetlinkItem::Error { errno: 0 }),
                Ok(NetlinkItem::Overrun),
                Ok(NetlinkItem::Ignored { nlmsg_type: 1 }),
                Ok(NetlinkItem::Ignored { nlmsg_type: 3 }),
            ]
        );
        let short_error = nlmsg(libc::NLMSG_ERROR as u16, &[1, 2]);
        assert_eq!(
            parse_all(&short_error),
            vec![Err(ParseError::TruncatedError { len: 2 })]
        );
    }

    #[test]
    fn another_connectors_message_is_ignored() {
        let mut buf = message(PROC_EVENT_EXEC, 0, 0, &words(&[7, 7]));
        buf[NLMSG_HDR_LEN] = 9; // cb_id.idx
        assert_eq!(parse_all(&buf), vec![Ok(NetlinkItem::Ignored { nlmsg_type: 3 })]);
    }

    #[test]
    fn truncated_and_mis_sized_messages_are_errors() {
        let good = message(PROC_EVENT_FORK, 0, 0, &words(&[1, 1, 2, 2]));
        assert_eq!(
            parse_all(&good[..10]),
            vec![Err(ParseError::TruncatedHeader { available: 10 })]
        );
        // nlmsg_len longer than the datagram.
        assert_eq!(
            parse_all(&good[..60]),
            vec![Err(ParseError::BadNlmsgLen {
                len: 76,
                available: 60
            })]
        );
        // nlmsg_len shorter than a header: must not loop forever.
        let mut tiny = good.clone();
        tiny[..4].copy_from_slice(&4u32.to_ne_bytes());
        assert_eq!(
            parse_all(&tiny),
            vec![Err(ParseError::BadNlmsgLen {
                len: 4,
                available: 76
            })]
        );
        // A cn_msg cut short.
        let cut = nlmsg(libc::NLMSG_DONE as u16, &good[NLMSG_HDR_LEN..NLMSG_HDR_LEN + 12]);
        assert_eq!(parse_all(&cut), vec![Err(ParseError::TruncatedCnMsg { len: 12 })]);
        // cn_msg.len claims more than follows.
        let mut long = good.clone();
        long[NLMSG_HDR_LEN + 16..NLMSG_HDR_LEN + 18].copy_from_slice(&200u16.to_ne_bytes());
        assert_eq!(
            parse_all(&long),
            vec![Err(ParseError::BadCnMsgLen {
                declared: 200,
                available: 40
            })]
        );
        // cn_msg.len too short for a fork's data.
        let mut short = good.clone();
        short[NLMSG_HDR_LEN + 16..NLMSG_HDR_LEN + 18].copy_from_slice(&20u16.to_ne_bytes());
        assert_eq!(
            parse_all(&short),
            vec![Err(ParseError::TruncatedProcEvent {
                what: PROC_EVENT_FORK,
                len: 20,
                needed: 32
            })]
        );
        // Too short even for the proc_event head.
        short[NLMSG_HDR_LEN + 16..NLMSG_HDR_LEN + 18].copy_from_slice(&6u16.to_ne_bytes());
        assert_eq!(
            parse_all(&short),
            vec![Err(ParseError::TruncatedProcEvent {
                what: PROC_EVENT_FORK,
                len: 6,
                needed: 16
            })]
        );
    }

    #[test]
    fn an_exit_without_parent_fields_still_parses() {
        let mut buf = message(PROC_EVENT_EXIT, 0, 0, &words(&[9, 9, 0, 17, 1, 1]));
        // Shrink cn_msg.len to end before parent_pid, as a pre-4.18 layout would allow.
        buf[NLMSG_HDR_LEN + 16..NLMSG_HDR_LEN + 18].copy_from_slice(&32u16.to_ne_bytes());
        match event(&parse_all(&buf)[0]) {
            ProcEvent::Exit { parent, .. } => assert_eq!(parent, None),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_bad_payload_does_not_hide_the_next_message() {
        let mut buf = nlmsg(libc::NLMSG_DONE as u16, &[0; 8]);
        buf.extend(message(PROC_EVENT_EXEC, 0, 0, &words(&[5, 5])));
        let items = parse_all(&buf);
        assert_eq!(items[0], Err(ParseError::TruncatedCnMsg { len: 8 }));
        assert_eq!(event(&items[1]), ProcEvent::Exec { pid: 5, tgid: 5 });
    }

    #[test]
    fn an_unaligned_final_message_is_accepted() {
        let mut buf = nlmsg(libc::NLMSG_NOOP as u16, &[1]);
        buf.truncate(17);
        assert_eq!(parse_all(&buf), vec![Ok(NetlinkItem::Ignored { nlmsg_type: 1 })]);
    }

    #[test]
    fn the_subscription_request_is_a_parseable_connector_message() {
        let req = subscription_request(libc::PROC_CN_MCAST_LISTEN, 5, 77, 1234);
        assert_eq!(req.len(), 40);
        // It is not a proc_event, so parsing its 4-byte body is an error - but the framing
        // (nlmsg_len, cn_msg id and len) must be exactly what the kernel checks.
        assert_eq!(
            parse_all(&req),
            vec![Err(ParseError::TruncatedProcEvent {
                what: libc::PROC_CN_MCAST_LISTEN,
                len: 4,
                needed: 16
            })]
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(buf in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            // Bounded: every step consumes at least one header or ends the iteration.
            let n = parse_datagram(&buf).take(buf.len() / NLMSG_HDR_LEN + 1).count();
            proptest::prop_assert!(n <= buf.len() / NLMSG_HDR_LEN + 1);
        }

        #[test]
        fn mutated_valid_messages_never_panic(
            what in proptest::sample::select(vec![0u32, 1, 2, 4, 0x40, 0x200, 0x8000_0000]),
            pos in 0usize..PROC_MESSAGE_LEN,
            byte in proptest::num::u8::ANY,
            cut in 0usize..=PROC_MESSAGE_LEN,
        ) {
            let mut buf = message(what, 1, 2, &[0xAB; 24]);
            buf[pos] = byte;
            buf.truncate(cut);
            for item in parse_datagram(&buf) {
                let _ = item;
            }
        }
    }
}
