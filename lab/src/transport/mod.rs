//! The transports: one module each, behind one trait, each a real OS mechanism carrying the same
//! encoded lpcmon events.
//!
//! A transport is named in a plan as `name` or `name:key=value,…` (for example `shm:slots=1`);
//! [`parse_spec`] checks the name against this OS and the keys against what the transport takes.

use std::collections::BTreeMap;
use std::fmt;

use hdrhistogram::Histogram;

use crate::measure::{Job, Losses, ProducerTally, Receiver};
use crate::plan::Mode;

#[cfg(target_os = "linux")]
mod pipe;
#[cfg(target_os = "linux")]
mod request;
#[cfg(target_os = "linux")]
mod shm;
#[cfg(target_os = "linux")]
mod unix;
#[cfg(target_os = "linux")]
mod unix_raw;
#[cfg(windows)]
pub mod windows;

mod ring;

/// What one cell of one transport measured.
pub struct Outcome {
    /// Events offered (numbers 1..=sent).
    pub sent: u64,
    /// Distinct events that arrived whole.
    pub received: u64,
    pub lost: Losses,
    pub reordered: u64,
    pub duplicates: u64,
    pub hist: Histogram<u64>,
    pub producer_cpu_ns: u64,
    pub consumer_cpu_ns: u64,
    /// From the first push to the last arrival, on the job's clock.
    pub first_push_ns: u64,
    pub last_arrival_ns: u64,
    /// The message limit the events were fragmented at.
    pub limit: usize,
}

impl Outcome {
    /// Puts together what the two ends of a one-thread-each transport saw. Events the receiver
    /// still holds in pieces are lost to the cause the producer gave them (they are counted
    /// there), so they are not counted again.
    pub fn from_ends(
        producer: ProducerTally,
        receiver: Receiver<'_>,
        consumer_lost: Losses,
        limit: usize,
    ) -> Self {
        let mut lost = producer.lost;
        lost.merge(&consumer_lost);
        lost.add("malformed", receiver.malformed);
        Outcome {
            sent: producer.sent,
            received: receiver.received,
            reordered: receiver.reordered,
            duplicates: receiver.duplicates,
            producer_cpu_ns: producer.cpu_ns,
            consumer_cpu_ns: receiver.cpu_ns(),
            first_push_ns: producer.first_push_ns,
            last_arrival_ns: receiver.last_arrival_ns,
            hist: receiver.hist,
            lost,
            limit,
        }
    }
}

/// Why a transport could not run a cell (as opposed to losing events, which it counts).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

impl TransportError {
    pub fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> TransportError {
        move |source| TransportError::Io { what, source }
    }
}

#[cfg(unix)]
impl From<nix::Error> for TransportError {
    fn from(e: nix::Error) -> Self {
        TransportError::Io {
            what: "system call",
            source: e.into(),
        }
    }
}

/// One channel, configured, ready to run cells.
pub trait Transport {
    /// Largest message one send carries; larger events are fragmented the lpcmon way.
    fn limit(&self) -> usize;
    /// Runs one cell: produces the job's events on one side, consumes them on the other, and
    /// accounts for every one.
    fn run(&self, job: &Job, mode: Mode) -> Result<Outcome, TransportError>;
}

/// A key a transport takes in its spec.
pub struct Param {
    pub key: &'static str,
    pub default: &'static str,
    pub help: &'static str,
    pub check: fn(&str) -> Result<(), String>,
}

/// What the lab knows about a transport, on any OS.
pub struct TransportInfo {
    pub name: &'static str,
    pub os: &'static str,
    pub models: &'static str,
    pub modes: &'static [Mode],
    pub params: &'static [Param],
}

fn number_at_least(min: usize) -> impl Fn(&str) -> Result<(), String> {
    move |v| match v.parse::<usize>() {
        Ok(n) if n >= min => Ok(()),
        _ => Err(format!("`{v}` is not a number ≥ {min}")),
    }
}

fn limit_check(v: &str) -> Result<(), String> {
    number_at_least(lpcmon_protocol::fragment::MIN_MESSAGE_LIMIT)(v)?;
    match v.parse::<usize>() {
        Ok(n) if n <= 64 * 1024 => Ok(()),
        _ => Err(format!("`{v}` is larger than 65536")),
    }
}

/// A count from 1 to `max` (bounded so a plan cannot ask for gigabytes of buffers).
fn count_up_to(v: &str, max: usize) -> Result<(), String> {
    number_at_least(1)(v)?;
    match v.parse::<usize>() {
        Ok(n) if n <= max => Ok(()),
        _ => Err(format!("`{v}` is larger than {max}")),
    }
}

fn one_of(v: &str, allowed: &[&str]) -> Result<(), String> {
    if allowed.contains(&v) {
        Ok(())
    } else {
        Err(format!("`{v}` is not one of {}", allowed.join(", ")))
    }
}

const fn limit_param(default: &'static str) -> Param {
    Param {
        key: "limit",
        default,
        help: "largest message in bytes; larger events are fragmented",
        check: limit_check,
    }
}

const DATAGRAM: &[Mode] = &[Mode::Datagram];
const BOTH: &[Mode] = &[Mode::Datagram, Mode::Request];
const REQUEST: &[Mode] = &[Mode::Request];

/// The shared-memory ring's keys, the same on both OSes.
const SHM_PARAMS: &[Param] = &[
    limit_param("4096"),
    Param {
        key: "slots",
        default: "1024",
        help: "ring slots of `limit` bytes",
        check: |v| count_up_to(v, 16_384),
    },
    Param {
        key: "full",
        default: "wait",
        help: "when the ring is full: wait for the consumer, or overwrite the oldest slot (seed 000)",
        check: |v| one_of(v, &["wait", "overwrite"]),
    },
];

/// Every transport the lab has, on every OS, in the order `list` shows them.
pub static ALL: &[TransportInfo] = &[
    TransportInfo {
        name: "unix",
        os: "linux",
        models: "lpcmon's production path: SEQPACKET port -> session -> reassembly -> store -> SSE client over HTTP; latency from the producer's push to arrival on the SSE client",
        modes: DATAGRAM,
        params: &[limit_param("65536")],
    },
    TransportInfo {
        name: "unix-raw",
        os: "linux",
        models: "a bare SOCK_SEQPACKET socketpair: the ceiling of the port's mechanism with nothing behind it",
        modes: BOTH,
        params: &[limit_param("65536")],
    },
    TransportInfo {
        name: "pipe",
        os: "linux",
        models: "a FIFO with length-prefixed records (seed 004's named pipe); writes up to PIPE_BUF are atomic, so messages are fragmented at 4092 B",
        modes: DATAGRAM,
        params: &[limit_param("4092")],
    },
    TransportInfo {
        name: "shm",
        os: "linux",
        models: "a shared-memory ring signalled with an eventfd (seed 000); slots=1,full=overwrite is that seed's single slot with silent overwrite, counted here",
        modes: DATAGRAM,
        params: SHM_PARAMS,
    },
    TransportInfo {
        name: "request",
        os: "linux",
        models: "the inverted call (seeds 001/002): the consumer keeps K requests pending, the producer completes one per message and drops the event when none is pending; pending=1 loses notifications, order=lifo reorders",
        modes: DATAGRAM,
        params: &[
            limit_param("65536"),
            Param {
                key: "pending",
                default: "64",
                help: "requests the consumer keeps pending (K)",
                check: |v| count_up_to(v, 4096),
            },
            Param {
                key: "order",
                default: "fifo",
                help: "which pending request the producer completes: the oldest (fifo) or the newest (lifo, seed 002's list)",
                check: |v| one_of(v, &["fifo", "lifo"]),
            },
        ],
    },
    TransportInfo {
        name: "alpc",
        os: "windows",
        models: "an ALPC port (NtAlpcCreatePort) with lpcmon's server, datagrams from a user-mode producer",
        modes: DATAGRAM,
        params: &[],
    },
    TransportInfo {
        name: "alpc-request",
        os: "windows",
        models: "the same ALPC port, each message a request waiting for its reply (NtAlpcSendWaitReceivePort)",
        modes: REQUEST,
        params: &[],
    },
    TransportInfo {
        name: "lpc",
        os: "windows",
        models: "a legacy LPC port (NtCreatePort, at most 648 bytes per message with the header), datagrams or requests",
        modes: BOTH,
        params: &[],
    },
    TransportInfo {
        name: "pipe",
        os: "windows",
        models: "a message-mode named pipe (seed 004's design, user-mode producer)",
        modes: DATAGRAM,
        params: &[limit_param("65536")],
    },
    TransportInfo {
        name: "shm",
        os: "windows",
        models: "a section (CreateFileMapping) ring signalled with an auto-reset event (seed 000); slots=1,full=overwrite is the seed's single slot",
        modes: DATAGRAM,
        params: SHM_PARAMS,
    },
];

/// This OS's name as [`TransportInfo::os`] spells it.
pub const THIS_OS: &str = if cfg!(target_os = "linux") {
    "linux"
} else if cfg!(windows) {
    "windows"
} else {
    std::env::consts::OS
};

/// The transports this OS has.
pub fn available() -> impl Iterator<Item = &'static TransportInfo> {
    ALL.iter().filter(|t| t.os == THIS_OS)
}

fn available_names() -> String {
    let names: Vec<&str> = available().map(|t| t.name).collect();
    if names.is_empty() {
        format!("none ({THIS_OS} has no transports in the lab)")
    } else {
        names.join(", ")
    }
}

/// A transport as a plan names it: its name and the keys set explicitly.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransportSpec {
    pub name: String,
    pub params: BTreeMap<String, String>,
}

impl fmt::Display for TransportSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        for (i, (k, v)) in self.params.iter().enumerate() {
            write!(f, "{}{k}={v}", if i == 0 { ':' } else { ',' })?;
        }
        Ok(())
    }
}

impl TransportSpec {
    pub fn info(&self) -> &'static TransportInfo {
        available()
            .find(|t| t.name == self.name)
            .expect("specs are only made by parse_spec")
    }

    /// A key's value, or its default.
    pub fn get(&self, key: &str) -> &str {
        self.params.get(key).map(String::as_str).unwrap_or_else(|| {
            self.info()
                .params
                .iter()
                .find(|p| p.key == key)
                .map_or("", |p| p.default)
        })
    }

    /// A numeric key (checked when the spec was parsed).
    pub fn number(&self, key: &str) -> usize {
        self.get(key).parse().unwrap_or(0)
    }

    pub fn supports(&self, mode: Mode) -> bool {
        self.info().modes.contains(&mode)
    }

    /// The transport, ready to run cells.
    pub fn open(&self) -> Box<dyn Transport> {
        open(self)
    }
}

/// Parses `name` or `name:key=value,key=value`, checking the name against this OS and every
/// key against what the transport takes.
pub fn parse_spec(text: &str) -> Result<TransportSpec, String> {
    let (name, rest) = text.split_once(':').unwrap_or((text, ""));
    let name = name.trim();
    let Some(info) = available().find(|t| t.name == name) else {
        if let Some(other) = ALL.iter().find(|t| t.name == name) {
            return Err(format!(
                "transport `{name}` runs on {}, not {THIS_OS}; this OS has: {}",
                other.os,
                available_names()
            ));
        }
        return Err(format!(
            "unknown transport `{name}`; this OS has: {}",
            available_names()
        ));
    };
    let mut params = BTreeMap::new();
    for pair in rest.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(format!("`{pair}` in `{text}` is not key=value"));
        };
        let (k, v) = (k.trim(), v.trim());
        let Some(param) = info.params.iter().find(|p| p.key == k) else {
            let keys: Vec<&str> = info.params.iter().map(|p| p.key).collect();
            return Err(format!(
                "transport `{name}` takes no key `{k}`; it takes: {}",
                if keys.is_empty() {
                    "none".to_owned()
                } else {
                    keys.join(", ")
                }
            ));
        };
        (param.check)(v).map_err(|m| format!("{name}:{k}: {m}"))?;
        params.insert(k.to_owned(), v.to_owned());
    }
    Ok(TransportSpec {
        name: name.to_owned(),
        params,
    })
}

#[cfg(target_os = "linux")]
fn open(spec: &TransportSpec) -> Box<dyn Transport> {
    match spec.name.as_str() {
        "unix" => Box::new(unix::Unix::new(spec)),
        "unix-raw" => Box::new(unix_raw::UnixRaw::new(spec)),
        "pipe" => Box::new(pipe::Fifo::new(spec)),
        "shm" => Box::new(shm::Shm::new(spec)),
        "request" => Box::new(request::InvertedCall::new(spec)),
        other => unreachable!("parse_spec let through `{other}`"),
    }
}

#[cfg(windows)]
fn open(spec: &TransportSpec) -> Box<dyn Transport> {
    windows::open(spec)
}

#[cfg(not(any(target_os = "linux", windows)))]
fn open(spec: &TransportSpec) -> Box<dyn Transport> {
    unreachable!("{THIS_OS} has no transports, so no spec `{spec}` parses")
}
