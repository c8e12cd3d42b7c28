//! The callbacks' side: what each kernel callback puts into an event, and which kinds the
//! registry's event mask lets through.

use crate::error::EncodeError;
use crate::event::{EventHeader, EventKind, EventWriter, FieldType, flags};
use crate::producer::EventSlot;
use crate::queue::Queue;

use super::STRING_CAP_MAX;

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
