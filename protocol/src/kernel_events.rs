//! The Windows driver's decisions, as pure functions over plain values.
//!
//! The driver (`driver/`) cannot be built or run on Linux, so everything it decides lives here,
//! where it is tested: what each kernel callback puts into an event, which kinds the registry's
//! event mask lets through, how the service key's `Parameters` are read and bounded, how a
//! connect call's status and reply become a [`ConnectFailure`] or a message limit, and how a
//! message is framed behind a `PORT_MESSAGE` header. The driver's own code is left with the
//! kernel calls that produce these plain values and consume the results.
//!
//! Nothing here allocates or blocks, so [`record`] is what the callbacks call, at PASSIVE_LEVEL
//! or APC_LEVEL, on any thread.

use crate::error::EncodeError;
use crate::event::{EVENT_MIN_LEN, EventHeader, EventKind, EventWriter, FieldType, flags};
use crate::fragment::MIN_MESSAGE_LIMIT;
use crate::message::{HelloReply, Message, ProducerKind, RefuseReason};
use crate::port_message::{LPC_MAX_CONNECTION_INFO, MAX_TOTAL_LENGTH, PORT_MESSAGE_SIZE, PortMessage};
use crate::producer::{ConnectFailure, EventSlot, WorkerConfig};
use crate::queue::Queue;
use lpcmon_nt::alpc::SendKind;
use lpcmon_nt::{ConnectStatus, NtStatus, PortName, status};

/// Bytes of one queue slot: the largest encoded event the driver produces.
pub const EVENT_SLOT_BYTES: usize = 4096;
/// The queue entry type of the driver.
pub type KernelSlot = EventSlot<EVENT_SLOT_BYTES>;
/// The largest message (data bytes after the `PORT_MESSAGE` header) the driver sends: one whole
/// slot, so an event is fragmented only when the port's limit is smaller.
pub const MAX_MESSAGE: usize = EVENT_SLOT_BYTES;
/// A whole frame: header plus the largest message.
pub const MAX_FRAME: usize = PORT_MESSAGE_SIZE + MAX_MESSAGE;

/// Bytes a field header takes before its value.
const FIELD_HEADER: usize = 7;
/// Bytes of the largest fixed-size part of an event: the header plus every integer field of the
/// richest kind (image.load: base and size; process.start: the creating pid).
const FIXED_PART: usize = EVENT_MIN_LEN + 2 * (FIELD_HEADER + 8);
/// The longest string (in bytes) that still lets both strings of a process.start fit whole in a
/// slot, with the 4-byte original length a truncated field carries.
pub const STRING_CAP_MAX: usize = (EVENT_SLOT_BYTES - FIXED_PART) / 2 - FIELD_HEADER - 4;
/// The shortest string cap the registry may set.
pub const STRING_CAP_MIN: usize = 64;

/// How long the worker may spend draining and reporting after a stop (driver unload).
pub const STOP_GRACE_NS: u64 = 2_000_000_000;
/// The OS name the driver reports in its Hello.
pub const OS_NAME: &str = "windows";

/// The driver's worker settings: the protocol defaults, with the driver's own limits.
pub fn worker_config(instance: [u8; 16], os_build: u32) -> WorkerConfig<'static> {
    WorkerConfig {
        kind: ProducerKind::WindowsDriver,
        instance,
        os: OS_NAME,
        os_build,
        max_message: MAX_MESSAGE,
        backoff_min_ns: WorkerConfig::DEFAULT_BACKOFF_MIN_NS,
        backoff_max_ns: WorkerConfig::DEFAULT_BACKOFF_MAX_NS,
        connect_timeout_ns: WorkerConfig::DEFAULT_CONNECT_TIMEOUT_NS,
        heartbeat_interval_ns: WorkerConfig::DEFAULT_HEARTBEAT_NS,
    }
}

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

/// Which event kinds the driver records: bit `kind - 1` per [`EventKind`], so process.start is
/// 0x1, process.exit 0x4, thread.start 0x8, thread.exit 0x10 and image.load 0x20.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventMask(pub u32);

impl EventMask {
    pub const ALL: EventMask = EventMask(u32::MAX);

    pub const fn bit(kind: EventKind) -> u32 {
        1 << (kind as u16 - 1)
    }

    pub const fn allows(self, kind: EventKind) -> bool {
        self.0 & Self::bit(kind) != 0
    }
}

/// What the callbacks keep: the kinds, and how long a string may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventFilter {
    pub mask: EventMask,
    /// Bytes; longer strings are truncated, flagged, and keep their original length.
    pub string_cap: usize,
}

impl Default for EventFilter {
    fn default() -> Self {
        EventFilter {
            mask: EventMask::ALL,
            string_cap: STRING_CAP_MAX,
        }
    }
}

/// A process was created (`PsSetCreateProcessNotifyRoutineEx[2]` with `CreateInfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessStart<'a> {
    pub time_ns: u64,
    pub pid: u32,
    /// `CreateInfo->ParentProcessId`: the parent the process inherits from.
    pub ppid: u32,
    /// `CreateInfo->CreatingThreadId`: who actually created it (differs from the parent when a
    /// broker creates a process on another's behalf).
    pub creating_pid: u32,
    pub creating_tid: u32,
    /// `CreateInfo->ImageFileName`, UTF-16 code units; absent for some subsystem processes.
    pub image_file_name: Option<&'a [u16]>,
    /// `CreateInfo->CommandLine`, UTF-16 code units.
    pub command_line: Option<&'a [u16]>,
}

/// A process exited (the same callback with `CreateInfo == NULL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessExit {
    pub time_ns: u64,
    pub pid: u32,
    /// `PsGetProcessExitStatus`, when the kernel exports it.
    pub exit_status: Option<i32>,
}

/// A thread was created or exited (`PsSetCreateThreadNotifyRoutine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadChange {
    pub time_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub created: bool,
}

/// An image was mapped (`PsSetLoadImageNotifyRoutine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLoad<'a> {
    pub time_ns: u64,
    /// 0 for a driver loaded into system space.
    pub pid: u32,
    /// The thread that mapped the image.
    pub tid: u32,
    /// `FullImageName`, UTF-16 code units; the kernel may pass none.
    pub image_path: Option<&'a [u16]>,
    pub base: u64,
    pub size: u64,
    /// `ImageInfo->SystemModeImage`: a driver, not a user-mode image.
    pub system_image: bool,
}

/// One callback's plain values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelEvent<'a> {
    ProcessStart(ProcessStart<'a>),
    ProcessExit(ProcessExit),
    Thread(ThreadChange),
    ImageLoad(ImageLoad<'a>),
}

impl KernelEvent<'_> {
    pub fn kind(&self) -> EventKind {
        match self {
            KernelEvent::ProcessStart(_) => EventKind::ProcessStart,
            KernelEvent::ProcessExit(_) => EventKind::ProcessExit,
            KernelEvent::Thread(t) if t.created => EventKind::ThreadStart,
            KernelEvent::Thread(_) => EventKind::ThreadExit,
            KernelEvent::ImageLoad(_) => EventKind::ImageLoad,
        }
    }

    fn header(&self) -> EventHeader {
        // The sequence number is assigned by the worker in pop order; 0 is patched later.
        let (time_ns, pid, ppid, tid, event_flags) = match *self {
            KernelEvent::ProcessStart(p) => (p.time_ns, p.pid, p.ppid, p.creating_tid, 0),
            KernelEvent::ProcessExit(p) => (p.time_ns, p.pid, 0, 0, 0),
            KernelEvent::Thread(t) => (t.time_ns, t.pid, 0, t.tid, 0),
            KernelEvent::ImageLoad(i) => {
                let f = if i.system_image { flags::KERNEL_IMAGE } else { 0 };
                (i.time_ns, i.pid, 0, i.tid, f)
            }
        };
        EventHeader {
            seq: 0,
            kind: self.kind(),
            flags: event_flags,
            time_ns,
            pid,
            ppid,
            tid,
        }
    }

    /// Encodes the event into a slot. Integer fields come first so a long string can never
    /// crowd them out; strings are cut to `string_cap` bytes.
    pub fn encode<const N: usize>(
        &self,
        slot: &mut EventSlot<N>,
        string_cap: usize,
    ) -> Result<(), EncodeError> {
        slot.encode(&self.header(), string_cap, |w| self.fields(w))
    }

    fn fields(&self, w: &mut EventWriter<'_>) -> Result<(), EncodeError> {
        match *self {
            KernelEvent::ProcessStart(p) => {
                w.u32(FieldType::CREATING_PID, p.creating_pid)?;
                if let Some(name) = p.image_file_name {
                    w.utf16(FieldType::EXECUTABLE, name)?;
                }
                if let Some(cmd) = p.command_line {
                    w.utf16(FieldType::COMMAND_LINE, cmd)?;
                }
            }
            KernelEvent::ProcessExit(p) => {
                if let Some(status) = p.exit_status {
                    w.i32(FieldType::EXIT_CODE, status)?;
                }
            }
            KernelEvent::Thread(_) => {}
            KernelEvent::ImageLoad(i) => {
                w.u64(FieldType::IMAGE_BASE, i.base)?;
                w.u64(FieldType::IMAGE_SIZE, i.size)?;
                if let Some(path) = i.image_path {
                    w.utf16(FieldType::IMAGE_PATH, path)?;
                }
            }
        }
        Ok(())
    }
}

/// What [`record`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The event mask excludes this kind: nothing was produced.
    Filtered,
    Queued,
    /// The queue was full; the queue counted the drop, and the worker will report it.
    Dropped,
}

/// The whole body of a driver callback after it has read the kernel's values: filter, then
/// encode straight into a queue slot. Never blocks and never allocates.
///
/// An encoding error cannot happen for a slot of at least [`EVENT_MIN_LEN`] bytes; if it did,
/// the slot would be left empty and the worker would report its sequence number as lost.
pub fn record<const N: usize>(
    queue: &Queue<'_, EventSlot<N>>,
    filter: &EventFilter,
    event: &KernelEvent<'_>,
) -> Recorded {
    if !filter.mask.allows(event.kind()) {
        return Recorded::Filtered;
    }
    let pushed = queue.push_with(|slot| {
        let _ = event.encode(slot, filter.string_cap);
    });
    match pushed {
        Ok(()) => Recorded::Queued,
        Err(_) => Recorded::Dropped,
    }
}

/// Windows system time (100 ns since 1601-01-01 UTC) as nanoseconds since the Unix epoch.
pub fn windows_time_to_unix_ns(windows_time: i64) -> u64 {
    const UNIX_EPOCH_AS_WINDOWS_TIME: i64 = 116_444_736_000_000_000;
    let since_epoch = windows_time.saturating_sub(UNIX_EPOCH_AS_WINDOWS_TIME).max(0) as u64;
    since_epoch.saturating_mul(100)
}

// ---------------------------------------------------------------------------------------------
// Registry Parameters
// ---------------------------------------------------------------------------------------------

/// Registry value types (winnt.h).
pub mod reg {
    pub const SZ: u32 = 1;
    pub const EXPAND_SZ: u32 = 2;
    pub const DWORD: u32 = 4;
}

/// ASCII text as UTF-16 code units, at compile time. `N` must be the text's length.
pub const fn ascii_utf16<const N: usize>(text: &str) -> [u16; N] {
    let bytes = text.as_bytes();
    assert!(bytes.len() == N, "N must equal the text's length");
    let mut out = [0u16; N];
    let mut i = 0;
    while i < N {
        assert!(bytes[i].is_ascii(), "ASCII only");
        out[i] = bytes[i] as u16;
        i += 1;
    }
    out
}

/// The subkey of the service key that holds the driver's settings.
pub const PARAMETERS_KEY: [u16; 10] = ascii_utf16("Parameters");
/// REG_SZ: the port's object name.
pub const VALUE_PORT_NAME: [u16; 8] = ascii_utf16("PortName");
/// REG_DWORD: slots in the queue (rounded up to a power of two and bounded).
pub const VALUE_QUEUE_CAPACITY: [u16; 13] = ascii_utf16("QueueCapacity");
/// REG_DWORD: an [`EventMask`].
pub const VALUE_EVENT_MASK: [u16; 9] = ascii_utf16("EventMask");
/// REG_DWORD: the string cap in bytes.
pub const VALUE_STRING_CAP: [u16; 9] = ascii_utf16("StringCap");
/// REG_DWORD: 0 connects without requiring the server to run as SYSTEM.
pub const VALUE_USE_SECURE_CONNECT: [u16; 16] = ascii_utf16("UseSecureConnect");

pub const QUEUE_CAPACITY_DEFAULT: usize = 1024;
pub const QUEUE_CAPACITY_MIN: usize = 64;
/// 8192 slots of 4 KiB are 32 MiB of nonpaged pool: the most an administrator may ask for.
pub const QUEUE_CAPACITY_MAX: usize = 8192;
const _: () = assert!(QUEUE_CAPACITY_MAX.is_power_of_two() && QUEUE_CAPACITY_MIN.is_power_of_two());
const _: () = assert!(STRING_CAP_MIN <= STRING_CAP_MAX && EVENT_MIN_LEN <= EVENT_SLOT_BYTES);

/// Reads the `PortName` REG_SZ value; the name's rules are `lpcmon_nt::port_name`'s.
fn port_name(value: RegistryValue<'_>) -> Result<PortName, &'static str> {
    if value.value_type != reg::SZ {
        return Err("not a REG_SZ");
    }
    PortName::from_reg_sz(value.data).map_err(|e| e.reason())
}

/// A value read with `ZwQueryValueKey(KeyValuePartialInformation)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistryValue<'a> {
    pub value_type: u32,
    pub data: &'a [u8],
}

impl<'a> RegistryValue<'a> {
    /// Parses a `KEY_VALUE_PARTIAL_INFORMATION`: `TitleIndex u32 | Type u32 | DataLength u32 |
    /// Data`. `None` if the buffer is shorter than the lengths it declares.
    pub fn from_partial_information(buf: &'a [u8]) -> Option<Self> {
        let word =
            |at: usize| -> Option<u32> { Some(u32::from_le_bytes(buf.get(at..at + 4)?.try_into().ok()?)) };
        let value_type = word(4)?;
        let len = word(8)? as usize;
        let data = buf.get(12..12usize.checked_add(len)?)?;
        Some(RegistryValue { value_type, data })
    }

    fn dword(self) -> Result<u32, &'static str> {
        match self.data {
            [a, b, c, d] if self.value_type == reg::DWORD => Ok(u32::from_le_bytes([*a, *b, *c, *d])),
            _ => Err("not a REG_DWORD"),
        }
    }
}

/// The raw values found under `Parameters`; `None` where a value is absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RawParameters<'a> {
    pub port_name: Option<RegistryValue<'a>>,
    pub queue_capacity: Option<RegistryValue<'a>>,
    pub event_mask: Option<RegistryValue<'a>>,
    pub string_cap: Option<RegistryValue<'a>>,
    pub use_secure_connect: Option<RegistryValue<'a>>,
}

/// The driver's settings, every one bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parameters {
    pub port_name: PortName,
    pub queue_capacity: usize,
    pub filter: EventFilter,
    /// Connect with `RequiredServerSid = S-1-5-18`, so only a SYSTEM server is accepted.
    pub secure_connect: bool,
}

impl Default for Parameters {
    fn default() -> Self {
        Parameters {
            port_name: PortName::default(),
            queue_capacity: QUEUE_CAPACITY_DEFAULT,
            filter: EventFilter::default(),
            secure_connect: true,
        }
    }
}

/// A value that was present but unusable; its default was used instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    pub value: &'static str,
    pub reason: &'static str,
}

/// Every rejected value of one parse (at most one per value).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rejections {
    items: [Option<Rejection>; 5],
}

impl Rejections {
    fn push(&mut self, value: &'static str, reason: &'static str) {
        if let Some(free) = self.items.iter_mut().find(|i| i.is_none()) {
            *free = Some(Rejection { value, reason });
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = Rejection> + '_ {
        self.items.iter().flatten().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.items.iter().all(Option::is_none)
    }
}

/// Rounds up to a power of two within [`QUEUE_CAPACITY_MIN`]..=[`QUEUE_CAPACITY_MAX`].
pub fn queue_capacity(requested: u32) -> usize {
    (requested as usize)
        .clamp(QUEUE_CAPACITY_MIN, QUEUE_CAPACITY_MAX)
        .next_power_of_two()
}

/// Bounds a string cap to [`STRING_CAP_MIN`]..=[`STRING_CAP_MAX`].
pub fn string_cap(requested: u32) -> usize {
    (requested as usize).clamp(STRING_CAP_MIN, STRING_CAP_MAX)
}

impl Parameters {
    /// Decides the settings from what the registry held. Absent values take their defaults;
    /// present but unusable ones too, and are listed so the driver can log them.
    pub fn parse(raw: &RawParameters<'_>) -> (Parameters, Rejections) {
        let mut params = Parameters::default();
        let mut rejected = Rejections::default();
        if let Some(v) = raw.port_name {
            match port_name(v) {
                Ok(name) => params.port_name = name,
                Err(why) => rejected.push("PortName", why),
            }
        }
        let mut dword = |value: Option<RegistryValue<'_>>, name: &'static str| {
            value.and_then(|v| v.dword().map_err(|why| rejected.push(name, why)).ok())
        };
        if let Some(n) = dword(raw.queue_capacity, "QueueCapacity") {
            params.queue_capacity = queue_capacity(n);
        }
        if let Some(mask) = dword(raw.event_mask, "EventMask") {
            params.filter.mask = EventMask(mask);
        }
        if let Some(cap) = dword(raw.string_cap, "StringCap") {
            params.filter.string_cap = string_cap(cap);
        }
        if let Some(secure) = dword(raw.use_secure_connect, "UseSecureConnect") {
            params.secure_connect = secure != 0;
        }
        (params, rejected)
    }
}

// ---------------------------------------------------------------------------------------------
// The port
// ---------------------------------------------------------------------------------------------

/// What a connect call's result means for the worker and for the handle it may have returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectOutcome {
    /// For [`crate::producer::Worker::on_connect`]: the agreed message limit, or why not.
    pub result: Result<usize, ConnectFailure>,
    /// Whether to keep the port handle. When false, any handle the call returned is closed.
    pub keep_port: bool,
    /// The server's reason, when it answered a successful connect with a refusal (a refused
    /// connect returns no reply to read).
    pub refusal: Option<RefuseReason>,
}

/// Decides a connect: `status` of `ZwAlpcConnectPort` / `Zw(Secure)ConnectPort`, `reply` the
/// connection information that came back (the server's HelloReply), and `port_max_total` the
/// `MaxMessageLength` (header included) the call reported, if it reports one.
///
/// What the status means is [`ConnectStatus::of`]'s decision, shared with the user-mode
/// clients. The reply is read only on success: on a refusal the kernel copies no connection
/// information back, so the buffer still holds the driver's own Hello.
pub fn connect_outcome(status: NtStatus, reply: &[u8], port_max_total: Option<usize>) -> ConnectOutcome {
    let fail = |failure, refusal| ConnectOutcome {
        result: Err(failure),
        keep_port: false,
        refusal,
    };
    match ConnectStatus::of(status) {
        ConnectStatus::Connected => match Message::decode(reply, LPC_MAX_CONNECTION_INFO) {
            Ok(Message::HelloReply(HelloReply::Accept { max_message, .. })) => {
                let port_limit = port_max_total.map_or(usize::MAX, |t| t.saturating_sub(PORT_MESSAGE_SIZE));
                let limit = (max_message as usize).min(port_limit).min(MAX_MESSAGE);
                if limit < MIN_MESSAGE_LIMIT {
                    return fail(ConnectFailure::Unavailable, None);
                }
                ConnectOutcome {
                    result: Ok(limit),
                    keep_port: true,
                    refusal: None,
                }
            }
            Ok(Message::HelloReply(HelloReply::Refuse { reason, .. })) => {
                fail(ConnectFailure::Refused, Some(reason))
            }
            // Connected to something that does not speak lpcmon: leave it.
            _ => fail(ConnectFailure::Unavailable, None),
        },
        ConnectStatus::Refused => fail(ConnectFailure::Refused, None),
        // Absent server, timeout, and every transient error: back off and retry.
        ConnectStatus::TimedOut | ConnectStatus::NotFound | ConnectStatus::Unavailable => {
            fail(ConnectFailure::Unavailable, None)
        }
    }
}

/// Messages the driver may have queued at the server before it asks the server to prove it is
/// keeping up. The kernel does not appear to enforce `MaxPoolUsage` on queued datagrams, so
/// without this a stalled server would let the driver's datagrams grow kernel pool without
/// bound (docs/windows.md, "Flow control"). 64 messages of at most 4 KiB: 256 KiB per
/// connection at worst.
pub const FLOW_WINDOW: u32 = 64;
/// How long the flow-control request waits for the server's reply.
pub const FLOW_PROBE_TIMEOUT_NS: u64 = 1_000_000_000;

/// The driver's flow control: every [`FLOW_WINDOW`]-th message goes as a synchronous request
/// with a timeout instead of a datagram. The server replies to a request only after it has
/// received everything queued before it, so a reply proves the queue drained. A request that
/// times out leaves it queued (the server gets it when it catches up), but the connection is
/// then *stalled*: nothing more is queued on it; the next send fails without a kernel call, the
/// worker counts it as `producer_send` loss and reconnects, and a connect cannot succeed until
/// the server receives again. So at most one window of messages per connection sits in the
/// kernel. The driver (`driver/src/worker.rs`) and its simulation (`protocol/tests/driver_sim.rs`)
/// both run this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowControl {
    window: u32,
    since_probe: u32,
    stalled: bool,
}

impl FlowControl {
    /// Flow control with a probe every `window` messages (at least 1).
    pub const fn new(window: u32) -> Self {
        FlowControl {
            window: if window == 0 { 1 } else { window },
            since_probe: 0,
            stalled: false,
        }
    }

    /// A new connection starts with nothing queued.
    pub fn reset(&mut self) {
        self.since_probe = 0;
        self.stalled = false;
    }

    /// How to send the next message, or `None` when the server has not answered the last
    /// probe: the message must not be queued (the caller reports the send as failed).
    pub fn next_send(&mut self) -> Option<SendKind> {
        if self.stalled {
            return None;
        }
        self.since_probe += 1;
        if self.since_probe >= self.window {
            self.since_probe = 0;
            Some(SendKind::Request)
        } else {
            Some(SendKind::Datagram)
        }
    }

    /// Reads the status of a send of `kind`; returns whether the message counts as sent.
    pub fn on_sent(&mut self, kind: SendKind, result: NtStatus) -> bool {
        match (kind, result) {
            // A request that timed out is queued; the server will receive it. It is the
            // connection that is no longer trusted with more.
            (SendKind::Request, status::TIMEOUT) => {
                self.stalled = true;
                true
            }
            (_, st) => status::is_success(st),
        }
    }

    /// Whether the server has left a probe unanswered on this connection.
    pub fn is_stalled(&self) -> bool {
        self.stalled
    }
}

/// Writes `data` behind a `PORT_MESSAGE` header, laid out as a kernel-mode sender passes it:
/// `Type` 0 (the kernel makes it a datagram, a request or a connection request),
/// `DataInfoOffset` 0, lengths filled in, the rest zero. Returns the frame's length, or `None`
/// when it would exceed `max_total` (the port's `MaxMessageLength`), 64 KiB, or `out`.
pub fn frame_message(data: &[u8], max_total: usize, out: &mut [u8]) -> Option<usize> {
    let total = PORT_MESSAGE_SIZE.checked_add(data.len())?;
    if total > max_total || total > MAX_TOTAL_LENGTH || total > out.len() {
        return None;
    }
    PortMessage::new(0, data.len(), 0, 0, 0).write(out).ok()?;
    out[PORT_MESSAGE_SIZE..total].copy_from_slice(data);
    Some(total)
}

/// The data of a frame the kernel filled (an ALPC connection reply); empty if the header does
/// not describe a valid frame within `frame`.
pub fn frame_data(frame: &[u8]) -> &[u8] {
    let declared = frame
        .get(2..4)
        .map_or(0, |b| usize::from(u16::from_le_bytes([b[0], b[1]])));
    match frame.get(..declared) {
        Some(exact) => PortMessage::parse(exact).map_or(&[], |(_, data)| data),
        None => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;
    use crate::queue::Slot;
    use lpcmon_nt::status;
    use std::vec::Vec;

    fn utf16(s: &str) -> Vec<u16> {
        s.encode_utf16().collect()
    }

    /// Decodes a slot as the worker would send it: with its sequence number patched in.
    fn decode(slot: &KernelSlot) -> Event {
        let mut bytes = slot.as_bytes().to_vec();
        crate::event::patch_seq(&mut bytes, 1).unwrap();
        match Message::decode(&bytes, usize::MAX).unwrap() {
            Message::Event(view) => Event::from(&view),
            other => panic!("not an event: {other:?}"),
        }
    }

    fn encoded(event: &KernelEvent<'_>, cap: usize) -> Event {
        let mut slot = std::boxed::Box::new(KernelSlot::new());
        event.encode(&mut slot, cap).unwrap();
        decode(&slot)
    }

    #[test]
    fn process_start_carries_ids_names_and_the_creator() {
        let exe = utf16(r"\Device\HarddiskVolume3\Windows\System32\notepad.exe");
        let cmd = utf16(r#""C:\Windows\System32\notepad.exe" C:\x.txt"#);
        let ev = encoded(
            &KernelEvent::ProcessStart(ProcessStart {
                time_ns: 5,
                pid: 4242,
                ppid: 100,
                creating_pid: 200,
                creating_tid: 201,
                image_file_name: Some(&exe),
                command_line: Some(&cmd),
            }),
            STRING_CAP_MAX,
        );
        assert_eq!(ev.header.kind, EventKind::ProcessStart);
        assert_eq!(
            (ev.header.pid, ev.header.ppid, ev.header.tid, ev.header.time_ns),
            (4242, 100, 201, 5)
        );
        assert_eq!(ev.u32(FieldType::CREATING_PID), Some(200));
        assert_eq!(
            ev.text(FieldType::EXECUTABLE),
            Some(r"\Device\HarddiskVolume3\Windows\System32\notepad.exe")
        );
        assert_eq!(
            ev.text(FieldType::COMMAND_LINE),
            Some(r#""C:\Windows\System32\notepad.exe" C:\x.txt"#)
        );
        assert_eq!(ev.header.flags, 0);
    }

    #[test]
    fn missing_names_are_left_out_not_invented() {
        let ev = encoded(
            &KernelEvent::ProcessStart(ProcessStart {
                time_ns: 1,
                pid: 8,
                ppid: 4,
                creating_pid: 4,
                creating_tid: 12,
                image_file_name: None,
                command_line: None,
            }),
            256,
        );
        assert_eq!(ev.fields.len(), 1);
        assert!(ev.text(FieldType::EXECUTABLE).is_none());
    }

    #[test]
    fn long_strings_are_cut_to_the_cap_and_keep_their_length() {
        let cmd = utf16(&"a".repeat(5000));
        let exe = utf16(&"b".repeat(3000));
        for cap in [STRING_CAP_MIN, 1000, STRING_CAP_MAX] {
            let ev = encoded(
                &KernelEvent::ProcessStart(ProcessStart {
                    time_ns: 1,
                    pid: 1,
                    ppid: 1,
                    creating_pid: 1,
                    creating_tid: 1,
                    image_file_name: Some(&exe),
                    command_line: Some(&cmd),
                }),
                cap,
            );
            assert_ne!(ev.header.flags & flags::TRUNCATED, 0);
            // Both strings fit, each cut to the cap: nothing was crowded out.
            assert_eq!(ev.header.flags & flags::FIELDS_OMITTED, 0, "cap {cap}");
            let c = ev.field(FieldType::COMMAND_LINE).unwrap();
            assert_eq!(c.original_len, Some(10_000));
            assert_eq!(ev.text(FieldType::COMMAND_LINE).unwrap().len(), cap / 2);
            assert_eq!(ev.field(FieldType::EXECUTABLE).unwrap().original_len, Some(6000));
            assert_eq!(ev.u32(FieldType::CREATING_PID), Some(1));
        }
    }

    #[test]
    fn exits_threads_and_images() {
        let exit = encoded(
            &KernelEvent::ProcessExit(ProcessExit {
                time_ns: 9,
                pid: 77,
                exit_status: Some(0xC000_0005_u32 as i32),
            }),
            256,
        );
        assert_eq!(exit.header.kind, EventKind::ProcessExit);
        assert_eq!(exit.i32(FieldType::EXIT_CODE), Some(0xC000_0005_u32 as i32));
        let no_status = encoded(
            &KernelEvent::ProcessExit(ProcessExit {
                time_ns: 9,
                pid: 77,
                exit_status: None,
            }),
            256,
        );
        assert!(no_status.fields.is_empty());

        for (created, kind) in [(true, EventKind::ThreadStart), (false, EventKind::ThreadExit)] {
            let t = encoded(
                &KernelEvent::Thread(ThreadChange {
                    time_ns: 3,
                    pid: 10,
                    tid: 11,
                    created,
                }),
                256,
            );
            assert_eq!((t.header.kind, t.header.pid, t.header.tid), (kind, 10, 11));
        }

        let path = utf16(r"\SystemRoot\System32\drivers\lpcmon_driver.sys");
        let img = encoded(
            &KernelEvent::ImageLoad(ImageLoad {
                time_ns: 4,
                pid: 0,
                tid: 4,
                image_path: Some(&path),
                base: 0xFFFF_F800_1234_0000,
                size: 0x2_0000,
                system_image: true,
            }),
            256,
        );
        assert_eq!(img.header.kind, EventKind::ImageLoad);
        assert_eq!(img.header.flags & flags::KERNEL_IMAGE, flags::KERNEL_IMAGE);
        assert_eq!(img.u64(FieldType::IMAGE_BASE), Some(0xFFFF_F800_1234_0000));
        assert_eq!(img.u64(FieldType::IMAGE_SIZE), Some(0x2_0000));
        assert_eq!(
            img.text(FieldType::IMAGE_PATH),
            Some(r"\SystemRoot\System32\drivers\lpcmon_driver.sys")
        );
    }

    #[test]
    fn record_filters_queues_and_counts_drops() {
        let slots: Vec<Slot<KernelSlot>> = (0..2).map(|i| Slot::new(i, KernelSlot::new())).collect();
        let queue = Queue::new(&slots).unwrap();
        let filter = EventFilter {
            mask: EventMask(EventMask::bit(EventKind::ThreadStart)),
            string_cap: 128,
        };
        let thread = |created| {
            KernelEvent::Thread(ThreadChange {
                time_ns: 1,
                pid: 2,
                tid: 3,
                created,
            })
        };
        assert_eq!(record(&queue, &filter, &thread(false)), Recorded::Filtered);
        assert_eq!(queue.produced(), 0, "a filtered kind is not produced");
        assert_eq!(record(&queue, &filter, &thread(true)), Recorded::Queued);
        assert_eq!(record(&queue, &filter, &thread(true)), Recorded::Queued);
        assert_eq!(record(&queue, &filter, &thread(true)), Recorded::Dropped);
        assert_eq!((queue.produced(), queue.dropped_total()), (3, 1));
        let kind = queue.pop_with(decode).unwrap().header.kind;
        assert_eq!(kind, EventKind::ThreadStart);
    }

    #[test]
    fn mask_bits_follow_the_kind_numbers() {
        assert_eq!(EventMask::bit(EventKind::ProcessStart), 0x1);
        assert_eq!(EventMask::bit(EventKind::ProcessExit), 0x4);
        assert_eq!(EventMask::bit(EventKind::ThreadStart), 0x8);
        assert_eq!(EventMask::bit(EventKind::ThreadExit), 0x10);
        assert_eq!(EventMask::bit(EventKind::ImageLoad), 0x20);
        assert!(EventKind::ALL.iter().all(|k| EventMask::ALL.allows(*k)));
        assert!(!EventMask(0).allows(EventKind::ImageLoad));
    }

    #[test]
    fn windows_time_converts_to_unix_nanoseconds() {
        assert_eq!(windows_time_to_unix_ns(116_444_736_000_000_000), 0);
        assert_eq!(
            windows_time_to_unix_ns(116_444_736_000_000_000 + 17_000_000_000_000_000),
            1_700_000_000_000_000_000
        );
        assert_eq!(windows_time_to_unix_ns(0), 0, "before 1970 clamps to 0");
        assert_eq!(windows_time_to_unix_ns(i64::MAX), u64::MAX, "saturates");
    }

    fn reg_sz(s: &str) -> Vec<u8> {
        s.encode_utf16().chain([0]).flat_map(u16::to_le_bytes).collect()
    }

    fn dword(v: u32) -> Vec<u8> {
        v.to_le_bytes().to_vec()
    }

    fn value(value_type: u32, data: &[u8]) -> Option<RegistryValue<'_>> {
        Some(RegistryValue { value_type, data })
    }

    #[test]
    fn absent_parameters_take_the_defaults() {
        let (p, rejected) = Parameters::parse(&RawParameters::default());
        assert!(rejected.is_empty());
        assert_eq!(p.port_name.units(), utf16(r"\LpcMonEventPort").as_slice());
        assert_eq!(p.port_name.byte_len(), 32);
        assert_eq!(p.queue_capacity, 1024);
        assert_eq!(p.filter.mask, EventMask::ALL);
        assert_eq!(p.filter.string_cap, STRING_CAP_MAX);
        assert!(p.secure_connect);
    }

    #[test]
    fn present_parameters_are_read_and_bounded() {
        let name = reg_sz(r"\BaseNamedObjects\Lpcmon");
        let (cap, mask, strings, secure) = (dword(100), dword(0x21), dword(100_000), dword(0));
        let (p, rejected) = Parameters::parse(&RawParameters {
            port_name: value(reg::SZ, &name),
            queue_capacity: value(reg::DWORD, &cap),
            event_mask: value(reg::DWORD, &mask),
            string_cap: value(reg::DWORD, &strings),
            use_secure_connect: value(reg::DWORD, &secure),
        });
        assert!(rejected.is_empty());
        assert_eq!(p.port_name.units(), utf16(r"\BaseNamedObjects\Lpcmon").as_slice());
        assert_eq!(p.queue_capacity, 128);
        assert_eq!(p.filter.mask, EventMask(0x21));
        assert_eq!(p.filter.string_cap, STRING_CAP_MAX);
        assert!(!p.secure_connect);
    }

    #[test]
    fn queue_capacity_is_a_bounded_power_of_two() {
        assert_eq!(queue_capacity(0), 64);
        assert_eq!(queue_capacity(64), 64);
        assert_eq!(queue_capacity(65), 128);
        assert_eq!(queue_capacity(1024), 1024);
        assert_eq!(queue_capacity(5000), 8192);
        assert_eq!(queue_capacity(u32::MAX), 8192);
        assert_eq!(string_cap(0), STRING_CAP_MIN);
        assert_eq!(string_cap(1000), 1000);
    }

    #[test]
    fn unusable_values_are_rejected_with_a_reason_and_defaulted() {
        let cases: [(u32, Vec<u8>); 8] = [
            (reg::DWORD, dword(1)),
            (reg::EXPAND_SZ, reg_sz(r"\X")),
            (reg::SZ, reg_sz("")),
            (reg::SZ, reg_sz("LpcMonEventPort")),
            (reg::SZ, reg_sz(r"\RPC Control\lpcmon")),
            (reg::SZ, reg_sz(r"\rpc CONTROL\lpcmon")),
            (reg::SZ, reg_sz(&std::format!(r"\{}", "x".repeat(300)))),
            (reg::SZ, std::vec![b'\\', 0, b'a', 0, 0, 0, b'b', 0]),
        ];
        for (ty, data) in &cases {
            let (p, rejected) = Parameters::parse(&RawParameters {
                port_name: value(*ty, data),
                ..RawParameters::default()
            });
            assert_eq!(p.port_name, PortName::default());
            let r: Vec<_> = rejected.iter().collect();
            assert_eq!(r.len(), 1, "{data:?}");
            assert_eq!(r[0].value, "PortName");
        }
        let odd = [b'\\', 0, b'a'];
        assert!(
            port_name(RegistryValue {
                value_type: reg::SZ,
                data: &odd
            })
            .is_err()
        );
        // A name of exactly 256 characters, with its terminator, is fine.
        let longest = reg_sz(&std::format!(r"\{}", "y".repeat(255)));
        assert_eq!(
            port_name(RegistryValue {
                value_type: reg::SZ,
                data: &longest
            })
            .unwrap()
            .units()
            .len(),
            256
        );

        let short = [1u8, 2];
        let (p, rejected) = Parameters::parse(&RawParameters {
            queue_capacity: value(reg::SZ, &dword(4096)),
            event_mask: value(reg::DWORD, &short),
            ..RawParameters::default()
        });
        assert_eq!(p, Parameters::default());
        let names: Vec<_> = rejected.iter().map(|r| r.value).collect();
        assert_eq!(names, ["QueueCapacity", "EventMask"]);
    }

    #[test]
    fn partial_information_is_parsed_within_its_bounds() {
        let mut buf = Vec::new();
        buf.extend_from_slice(&0u32.to_le_bytes());
        buf.extend_from_slice(&reg::DWORD.to_le_bytes());
        buf.extend_from_slice(&4u32.to_le_bytes());
        buf.extend_from_slice(&7u32.to_le_bytes());
        let v = RegistryValue::from_partial_information(&buf).unwrap();
        assert_eq!(v.dword(), Ok(7));
        assert!(RegistryValue::from_partial_information(&buf[..15]).is_none());
        assert!(RegistryValue::from_partial_information(&buf[..8]).is_none());
        let mut lying = buf.clone();
        lying[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(RegistryValue::from_partial_information(&lying).is_none());
    }

    #[test]
    fn ascii_names_are_utf16() {
        assert_eq!(PARAMETERS_KEY.as_slice(), utf16("Parameters").as_slice());
        assert_eq!(
            VALUE_USE_SECURE_CONNECT.as_slice(),
            utf16("UseSecureConnect").as_slice()
        );
    }

    fn accept(max_message: u32) -> Vec<u8> {
        let mut buf = [0u8; 128];
        let n = HelloReply::Accept {
            version: 1,
            max_message,
        }
        .encode(&mut buf)
        .unwrap();
        buf[..n].to_vec()
    }

    #[test]
    fn connect_outcomes() {
        // ALPC: no port maximum reported; the server's agreement decides.
        let ok = connect_outcome(status::SUCCESS, &accept(65_536), None);
        assert_eq!((ok.result, ok.keep_port), (Ok(MAX_MESSAGE), true));
        // Legacy LPC: the port's 648-byte maximum leaves 608 bytes of data.
        let legacy = connect_outcome(status::SUCCESS, &accept(4096), Some(648));
        assert_eq!(legacy.result, Ok(608));
        let tiny = connect_outcome(status::SUCCESS, &accept(4096), Some(80));
        assert_eq!(
            (tiny.result, tiny.keep_port),
            (Err(ConnectFailure::Unavailable), false)
        );

        let mut buf = [0u8; 128];
        let n = HelloReply::Refuse {
            reason: RefuseReason::AlreadyConnected,
            min_version: 1,
            max_version: 1,
            text: "instance already connected",
        }
        .encode(&mut buf)
        .unwrap();
        let refused = connect_outcome(status::SUCCESS, &buf[..n], None);
        assert_eq!(refused.result, Err(ConnectFailure::Refused));
        assert_eq!(refused.refusal, Some(RefuseReason::AlreadyConnected));
        assert!(!refused.keep_port);
        // A refused connect returns no connection information: the buffer still holds what the
        // driver sent, which must not be read as an answer, even when it decodes as one.
        for leftover in [&buf[..n], &accept(4096)[..], &buf[..20]] {
            let o = connect_outcome(status::PORT_CONNECTION_REFUSED, leftover, None);
            assert_eq!(
                (o.result, o.refusal, o.keep_port),
                (Err(ConnectFailure::Refused), None, false)
            );
        }
        // The port's security descriptor refusing this account is a refusal too (lpcmon_nt::connect).
        let denied = connect_outcome(status::ACCESS_DENIED, &accept(4096), None);
        assert_eq!(denied.result, Err(ConnectFailure::Refused));
        let squatter = connect_outcome(status::SERVER_SID_MISMATCH, &[], None);
        assert_eq!(squatter.result, Err(ConnectFailure::Refused));
        let garbage = connect_outcome(status::SUCCESS, b"not lpcmon", None);
        assert_eq!(
            (garbage.result, garbage.keep_port),
            (Err(ConnectFailure::Unavailable), false)
        );
        for st in [
            status::OBJECT_NAME_NOT_FOUND,
            status::TIMEOUT,
            status::PORT_DISCONNECTED,
        ] {
            let o = connect_outcome(st, &accept(4096), None);
            assert_eq!((o.result, o.keep_port), (Err(ConnectFailure::Unavailable), false));
        }
    }

    #[test]
    fn frames_are_what_the_kernel_expects() {
        let mut out = [0xAAu8; MAX_FRAME];
        let n = frame_message(b"hello", 648, &mut out).unwrap();
        assert_eq!(n, 45);
        let (h, data) = PortMessage::parse(&out[..n]).unwrap();
        assert_eq!((h.data_length, h.total_length, h.message_type), (5, 45, 0));
        assert_eq!((h.data_info_offset, h.client_process, h.message_id), (0, 0, 0));
        assert_eq!(data, b"hello");
        assert_eq!(frame_data(&out), b"hello");
        assert!(frame_message(&[0; 609], 648, &mut out).is_none());
        assert_eq!(frame_message(&[0; 608], 648, &mut out), Some(648));
        assert!(frame_message(&[0; MAX_MESSAGE + 1], usize::MAX, &mut out).is_none());
        assert!(frame_data(&out[..10]).is_empty());
    }

    #[test]
    fn flow_control_probes_every_window_and_stops_queueing_when_unanswered() {
        let mut flow = FlowControl::new(4);
        let kinds: Vec<_> = (0..8).map(|_| flow.next_send().unwrap()).collect();
        use SendKind::{Datagram, Request};
        assert_eq!(
            kinds,
            [
                Datagram, Datagram, Datagram, Request, Datagram, Datagram, Datagram, Request
            ]
        );
        assert!(flow.on_sent(Datagram, status::SUCCESS));
        assert!(flow.on_sent(Request, status::SUCCESS));
        assert!(!flow.on_sent(Datagram, status::PORT_DISCONNECTED));
        // An unanswered probe: the probe is queued (sent), nothing more is.
        assert!(flow.on_sent(Request, status::TIMEOUT));
        assert!(flow.is_stalled());
        assert_eq!(flow.next_send(), None);
        flow.reset();
        assert_eq!(flow.next_send(), Some(Datagram));
        assert_eq!(
            FlowControl::new(0).next_send(),
            Some(Request),
            "a window of 0 is 1"
        );
    }

    #[test]
    fn the_driver_config_fits_its_buffers() {
        let c = worker_config([1; 16], 26100);
        assert_eq!(c.kind, ProducerKind::WindowsDriver);
        assert_eq!(c.max_message, MAX_MESSAGE);
        assert!(c.connect_timeout_ns > 0 && STOP_GRACE_NS > 0);
        let mut hello = [0u8; LPC_MAX_CONNECTION_INFO];
        let hello_len = crate::message::Hello {
            min_version: 1,
            max_version: 1,
            kind: c.kind,
            instance: c.instance,
            max_message: c.max_message as u32,
            next_seq: 1,
            os_build: c.os_build,
            os: c.os,
        }
        .encode(&mut hello)
        .unwrap();
        // The kernel returns no more connection information than was sent, so an Accept must
        // be no longer than the Hello.
        assert!(accept(u32::MAX).len() <= hello_len);
    }
}
