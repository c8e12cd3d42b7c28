//! The state the callbacks and the worker share, in one nonpaged allocation made by
//! DriverEntry and freed by DriverUnload after both are gone.

use core::cell::UnsafeCell;
use core::mem::size_of;
use core::ptr::{self, NonNull, addr_of_mut};
use core::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use lpcmon_protocol::EventKind;
use lpcmon_protocol::kernel_events::{
    self, EVENT_SLOT_BYTES, KernelEvent, KernelSlot, MAX_FRAME, MAX_MESSAGE, Parameters, Recorded,
};
use lpcmon_protocol::queue::{Queue, Slot};
use wdk_sys::_EVENT_TYPE::{NotificationEvent, SynchronizationEvent};
use wdk_sys::ntddk::{ExAllocatePool2, ExFreePool, KeInitializeEvent, KeSetEvent};
use wdk_sys::{
    KEVENT, NTSTATUS, POOL_FLAG_NON_PAGED, SIZE_T, STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_PARAMETER,
};

use crate::ffi::{self, FALSE, Routines};

/// Pool tag "LpcM", shown as such by `!poolused` and poolmon.
const POOL_TAG: u32 = u32::from_le_bytes(*b"LpcM");

/// A `PORT_MESSAGE` frame: the header must be 8-aligned.
#[repr(C, align(8))]
pub struct Frame(pub [u8; MAX_FRAME]);

/// Buffers only the worker thread touches. All-zero bytes are a valid value, which is what
/// `ExAllocatePool2` returns, so they are never built on a stack.
pub struct WorkerBuffers {
    /// The event being sent (a copy of one slot).
    pub event: [u8; EVENT_SLOT_BYTES],
    /// The message the protocol worker encodes next.
    pub message: [u8; MAX_MESSAGE],
    /// The same message behind its `PORT_MESSAGE` header; also the ALPC connection message.
    pub frame: Frame,
    /// The server's reply to a flow-control request.
    pub reply: Frame,
}

pub struct Shared {
    /// Filled by the callbacks, drained by the worker. Borrows `slots`, freed after it.
    pub queue: Queue<'static, KernelSlot>,
    pub params: Parameters,
    pub routines: Routines,
    /// Auto-reset: set after each queued event, consumed by the worker's wait.
    queue_signal: UnsafeCell<KEVENT>,
    /// Manual-reset: set once by DriverUnload.
    stop_event: UnsafeCell<KEVENT>,
    /// Read by the worker between port calls; set before `stop_event`.
    stop: AtomicBool,
    worker: UnsafeCell<WorkerBuffers>,
    slots: NonNull<Slot<KernelSlot>>,
}

// SAFETY: the queue is lock-free and Sync; the KEVENTs are kernel dispatcher objects, changed
// only through Ke* calls, which synchronize themselves; `worker` is touched by the worker thread
// alone (see `worker_buffers`); everything else is written once before the first callback is
// registered and only read afterwards.
unsafe impl Sync for Shared {}

/// The callbacks' way to the shared state: published by DriverEntry before the callbacks are
/// registered, cleared by DriverUnload after they are removed.
static SHARED: AtomicPtr<Shared> = AtomicPtr::new(ptr::null_mut());

pub fn publish(shared: Option<&'static Shared>) {
    let ptr = shared.map_or(ptr::null_mut(), |s| ptr::from_ref(s).cast_mut());
    SHARED.store(ptr, Ordering::Release);
}

/// The shared state, for a callback.
pub fn current() -> Option<&'static Shared> {
    let ptr = SHARED.load(Ordering::Acquire);
    // SAFETY: a non-null pointer was published from a live allocation that DriverUnload frees
    // only after removing every callback (which waits for running ones) and joining the worker.
    unsafe { ptr.as_ref() }
}

fn allocate(bytes: usize) -> Result<NonNull<u8>, NTSTATUS> {
    // SAFETY: PASSIVE_LEVEL (DriverEntry); nonpaged pool may be allocated at <= DISPATCH_LEVEL.
    // The memory comes back zeroed (no POOL_FLAG_UNINITIALIZED) and 16-byte aligned.
    let memory = unsafe { ExAllocatePool2(POOL_FLAG_NON_PAGED, bytes as SIZE_T, POOL_TAG) };
    NonNull::new(memory.cast()).ok_or(STATUS_INSUFFICIENT_RESOURCES)
}

impl Shared {
    /// Allocates and initialises the queue and the shared state. PASSIVE_LEVEL (DriverEntry).
    pub fn create(params: Parameters, routines: Routines) -> Result<&'static Shared, NTSTATUS> {
        let capacity = params.queue_capacity;
        let slot_bytes = capacity
            .checked_mul(size_of::<Slot<KernelSlot>>())
            .ok_or(STATUS_INVALID_PARAMETER)?;
        let slots = allocate(slot_bytes)?.cast::<Slot<KernelSlot>>();
        for i in 0..capacity {
            // SAFETY: `i < capacity` slots fit in the allocation, which is aligned for them and
            // not yet shared. Each slot is written in place, one at a time: the array is never
            // on a stack (the single-slot temporary is bounded by EVENT_SLOT_BYTES).
            unsafe { slots.as_ptr().add(i).write(Slot::new(i, KernelSlot::new())) };
        }
        // SAFETY: `capacity` slots were initialised above; the allocation lives until
        // `destroy`, which runs after every borrower (callbacks, worker) is gone.
        let slice: &'static [Slot<KernelSlot>] =
            unsafe { core::slice::from_raw_parts(slots.as_ptr(), capacity) };
        let Some(queue) = Queue::new(slice) else {
            // Parameters always yield a power of two; if not, fail the load rather than guess.
            // SAFETY: the slots were allocated above and nothing else refers to them.
            unsafe { ExFreePool(slots.as_ptr().cast()) };
            return Err(STATUS_INVALID_PARAMETER);
        };
        let this = match allocate(size_of::<Shared>()) {
            Ok(memory) => memory.cast::<Shared>().as_ptr(),
            Err(status) => {
                // SAFETY: as above: allocated here, not shared.
                unsafe { ExFreePool(slots.as_ptr().cast()) };
                return Err(status);
            }
        };
        // SAFETY: `this` is a fresh, zeroed, aligned allocation for one Shared that nothing
        // else refers to yet. Fields are written in place: `worker` (all zero bytes, valid) is
        // left as allocated, so its 16 KiB never pass through a stack.
        unsafe {
            addr_of_mut!((*this).queue).write(queue);
            addr_of_mut!((*this).params).write(params);
            addr_of_mut!((*this).routines).write(routines);
            addr_of_mut!((*this).stop).write(AtomicBool::new(false));
            addr_of_mut!((*this).slots).write(slots);
        }
        // SAFETY: PASSIVE_LEVEL; the KEVENTs are in nonpaged memory owned by `this` and not yet
        // visible to any other thread.
        unsafe {
            KeInitializeEvent(
                UnsafeCell::raw_get(addr_of_mut!((*this).queue_signal)),
                SynchronizationEvent,
                FALSE,
            );
        }
        // SAFETY: as above.
        unsafe {
            KeInitializeEvent(
                UnsafeCell::raw_get(addr_of_mut!((*this).stop_event)),
                NotificationEvent,
                FALSE,
            );
        }
        // SAFETY: every field is initialised; the allocation lives until `destroy`.
        Ok(unsafe { &*this })
    }

    /// Frees the queue and the shared state. PASSIVE_LEVEL (DriverUnload, or DriverEntry
    /// failing).
    ///
    /// # Safety
    /// No callback may be registered and the worker thread must have exited: nothing may use
    /// `this` or its queue afterwards.
    pub unsafe fn destroy(this: &'static Shared) {
        let slots = this.slots;
        let shared = ptr::from_ref(this).cast_mut();
        // SAFETY: per the contract, no other reference to the shared state is in use. Nothing
        // in it needs dropping (no Drop fields), so the memory is simply returned.
        unsafe { ExFreePool(shared.cast()) };
        // SAFETY: the slots are borrowed only by the queue, which was freed with `shared`.
        unsafe { ExFreePool(slots.as_ptr().cast()) };
    }

    /// Whether the event mask keeps `kind`. Callbacks ask first, so a masked kind costs no
    /// clock read and no kernel call. Any IRQL.
    pub fn wants(&self, kind: EventKind) -> bool {
        self.params.filter.mask.allows(kind)
    }

    /// The body of every callback once it has read the kernel's values: filter, encode into a
    /// slot, wake the worker. Never blocks, never allocates. PASSIVE_LEVEL or APC_LEVEL.
    pub fn record(&self, event: &KernelEvent<'_>) {
        if kernel_events::record(&self.queue, &self.params.filter, event) == Recorded::Queued {
            // SAFETY: KeSetEvent may be called at <= DISPATCH_LEVEL with Wait = FALSE; the
            // event is initialised, nonpaged, and lives as long as `self`.
            unsafe { KeSetEvent(self.queue_signal.get(), 0, FALSE) };
        }
    }

    /// DriverUnload: ask the worker to finish. PASSIVE_LEVEL.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
        // SAFETY: as in `record`.
        unsafe { KeSetEvent(self.stop_event.get(), 0, FALSE) };
    }

    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    pub fn queue_signal(&self) -> *mut KEVENT {
        self.queue_signal.get()
    }

    pub fn stop_event(&self) -> *mut KEVENT {
        self.stop_event.get()
    }

    /// UTC nanoseconds since the Unix epoch, for event timestamps. Any IRQL.
    pub fn time_ns(&self) -> u64 {
        kernel_events::windows_time_to_unix_ns(ffi::system_time(self.routines.system_time_precise))
    }

    /// The worker's buffers. Only the worker thread may dereference the pointer: the buffers
    /// are exclusively its own.
    pub fn worker_buffers(&self) -> *mut WorkerBuffers {
        self.worker.get()
    }
}
