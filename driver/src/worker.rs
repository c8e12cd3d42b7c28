//! The system worker thread: `producer::run` with the kernel's port calls as its I/O.
//!
//! It runs in the System process (`PsCreateSystemThread` with a NULL process handle), so the
//! server sees `ClientId.UniqueProcess == 4` (docs/design.md; docs/windows.md, "Security") and the port handle lives
//! in the System handle table, never in whichever process a callback interrupted.
//!
//! # Bounding a stop
//!
//! DriverUnload waits for this thread, and a thread blocked in a port call cannot be
//! interrupted from outside. So every port call returns by itself:
//! - connect: `ZwAlpcConnectPort` with the worker's connect timeout (2 s). A stop ends within
//!   2 × connect timeout + STOP_GRACE_NS (6 s): the connect in progress, the grace, and one
//!   more connect started just before the grace ends. `protocol/tests/driver_sim.rs` checks it.
//! - send: `ZwAlpcSendWaitReceivePort`. A datagram (`SendKind::Datagram`) is queued and the
//!   call returns; every `FLOW_WINDOW`-th message is a request (`SendKind::Request`) that waits
//!   at most `FLOW_PROBE_TIMEOUT_NS` (1 s) for the server's reply.
//! - wait: `KeWaitForMultipleObjects` on the queue signal and the stop event, until the time
//!   the protocol worker names (`producer::Step::Wait`), which it caps at the stop deadline.
//!
//! # Flow control
//!
//! The kernel does not appear to bound the datagrams queued at a server that has stopped
//! receiving. `kernel_events::FlowControl` does: a request every window proves the server
//! drained what came before; when one goes unanswered, nothing more is queued on that
//! connection, and the events that cannot be sent are counted as `producer_send` loss
//! (docs/windows.md, "Flow control").

use core::ffi::c_void;
use core::ptr;

use lpcmon_nt::alpc::{ALPC_SYNC_CONNECTION, AlpcPortAttributes};
use lpcmon_nt::security::LOCAL_SYSTEM_SID;
use lpcmon_nt::timeout::relative_ns as relative_timeout;
use lpcmon_nt::{PortMessage, status};
use lpcmon_protocol::RefuseReason;
use lpcmon_protocol::kernel_events::{
    self, FLOW_PROBE_TIMEOUT_NS, FLOW_WINDOW, FlowControl, MAX_FRAME, STOP_GRACE_NS, frame_message,
};
use lpcmon_protocol::producer::{self, ConnectFailure, ProducerIo, Worker};
use wdk::println;
use wdk_sys::_KWAIT_REASON::Executive;
use wdk_sys::_MODE::KernelMode;
use wdk_sys::_WAIT_TYPE::WaitAny;
use wdk_sys::ntddk::{
    KeWaitForMultipleObjects, KeWaitForSingleObject, ObReferenceObjectByHandle, PsCreateSystemThread,
    PsTerminateSystemThread, ZwClose,
};
use wdk_sys::{
    HANDLE, KPROCESSOR_MODE, LARGE_INTEGER, NT_SUCCESS, NTSTATUS, PETHREAD, PVOID, STATUS_SUCCESS,
};

use crate::ffi::{
    self, FALSE, OBJ_KERNEL_HANDLE, OsVersionInfo, SYNCHRONIZE, THREAD_ALL_ACCESS, Uuid, object_attributes,
    unicode,
};
use crate::shared::{Shared, WorkerBuffers};

/// Starts the worker thread in the System process and returns its referenced thread object,
/// for DriverUnload to wait on. PASSIVE_LEVEL (DriverEntry).
pub fn start(shared: &'static Shared) -> Result<PETHREAD, NTSTATUS> {
    let mut attributes = object_attributes(ptr::null_mut(), ptr::null_mut(), OBJ_KERNEL_HANDLE);
    let mut handle: HANDLE = ptr::null_mut();
    // SAFETY: PASSIVE_LEVEL. A NULL process handle puts the thread in the System process.
    // `worker_main` lives in this image, which stays loaded until DriverUnload has waited for
    // the thread; its context, `shared`, is freed only after that wait too.
    let st = unsafe {
        PsCreateSystemThread(
            &mut handle,
            THREAD_ALL_ACCESS,
            &mut attributes,
            ptr::null_mut(),
            ptr::null_mut(),
            Some(worker_main),
            ptr::from_ref(shared).cast_mut().cast(),
        )
    };
    if !NT_SUCCESS(st) {
        return Err(st);
    }
    let mut thread: PVOID = ptr::null_mut();
    // SAFETY: PASSIVE_LEVEL; `handle` is the kernel handle just returned. A NULL object type is
    // allowed for a KernelMode reference and avoids importing the PsThreadType data export.
    let referenced = unsafe {
        ObReferenceObjectByHandle(
            handle,
            SYNCHRONIZE,
            ptr::null_mut(),
            KernelMode as KPROCESSOR_MODE,
            &mut thread,
            ptr::null_mut(),
        )
    };
    if !NT_SUCCESS(referenced) {
        // Without the object DriverUnload could not wait; stop and join by handle instead.
        shared.request_stop();
        // SAFETY: PASSIVE_LEVEL; waits on our own kernel handle with no timeout: the worker
        // ends within its stop bound (module docs).
        let _ = unsafe { ffi::ZwWaitForSingleObject(handle, FALSE, ptr::null_mut()) };
    }
    // SAFETY: PASSIVE_LEVEL; closes the handle PsCreateSystemThread returned, once. The thread
    // object stays alive through the reference taken above.
    let _ = unsafe { ZwClose(handle) };
    if NT_SUCCESS(referenced) {
        Ok(thread.cast())
    } else {
        Err(referenced)
    }
}

/// Waits for the worker thread to exit and drops the reference `start` took. PASSIVE_LEVEL
/// (DriverUnload). Waits as long as it takes: the thread runs code in this image, which must
/// not be unloaded under it.
pub fn join(thread: PETHREAD) {
    loop {
        let mut timeout = LARGE_INTEGER {
            QuadPart: relative_timeout(5_000_000_000),
        };
        // SAFETY: PASSIVE_LEVEL; `thread` is referenced (by `start`) so it stays valid; a thread
        // object is signalled when the thread terminates.
        let st = unsafe {
            KeWaitForSingleObject(
                thread.cast(),
                Executive,
                KernelMode as KPROCESSOR_MODE,
                FALSE,
                &mut timeout,
            )
        };
        if st == STATUS_SUCCESS {
            break;
        }
        println!(
            "lpcmon: unload is waiting for the worker: a port call has not returned (with ZwConnectPort or \
             ZwRequestWaitReplyPort that lasts until the server answers or exits; stop the lpcmon service)"
        );
    }
    // SAFETY: PASSIVE_LEVEL; drops the one reference ObReferenceObjectByHandle took in `start`.
    unsafe { wdk_sys::ntddk::ObfDereferenceObject(thread.cast()) };
}

/// A random instance id for this load: a UUID, or the boot-relative time if the UUID
/// generator is not ready.
fn instance_id() -> [u8; 16] {
    let mut uuid = Uuid([0; 16]);
    // SAFETY: PASSIVE_LEVEL; ExUuidCreate writes 16 bytes into `uuid`, a local.
    let st = unsafe { ffi::ExUuidCreate(&mut uuid) };
    if NT_SUCCESS(st) {
        return uuid.0;
    }
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&ffi::interrupt_time_ns().to_le_bytes());
    id[8..].copy_from_slice(&ffi::system_time(None).to_le_bytes());
    id
}

fn os_build() -> u32 {
    let mut info = OsVersionInfo {
        size: core::mem::size_of::<OsVersionInfo>() as u32,
        major: 0,
        minor: 0,
        build: 0,
        platform: 0,
        service_pack: [0; 128],
    };
    // SAFETY: PASSIVE_LEVEL; RtlGetVersion fills `info`, a local whose size field is set.
    let st = unsafe { ffi::RtlGetVersion(&mut info) };
    if NT_SUCCESS(st) { info.build } else { 0 }
}

/// `PKSTART_ROUTINE`. PASSIVE_LEVEL, System process.
unsafe extern "C" fn worker_main(context: PVOID) {
    // SAFETY: `context` is the `&'static Shared` that `start` passed; it is freed only after
    // DriverUnload has waited for this thread to terminate.
    let shared = unsafe { &*context.cast::<Shared>() };
    // SAFETY: this thread is the only user of the worker buffers (see `Shared`), and takes
    // this one reference to them for its whole life.
    let buffers: &mut WorkerBuffers = unsafe { &mut *shared.worker_buffers() };
    let WorkerBuffers {
        event,
        message,
        frame,
        reply,
    } = buffers;
    let mut io = KernelIo {
        shared,
        frame: &mut frame.0,
        reply: &mut reply.0,
        port: ptr::null_mut(),
        flow: FlowControl::new(FLOW_WINDOW),
        stop_seen: false,
        last_error: STATUS_SUCCESS,
    };
    let config = kernel_events::worker_config(instance_id(), os_build());
    let now = io.now();
    let mut worker = Worker::new(config, event, now);
    let stats = producer::run(&mut worker, &shared.queue, &mut io, message, STOP_GRACE_NS);
    // docs/windows.md, "Unload": the port is closed here, by the handle's owner, before the thread exits
    // and so before DriverUnload's join returns.
    io.disconnect();
    println!(
        "lpcmon: worker stopped: {} events sent, {} failed sends, {} queue drops reported, {} lost \
         unreported (the server was unreachable at unload), {} connects",
        stats.sent, stats.send_failed, stats.queue_drops_reported, stats.unreported, stats.connects
    );
    // SAFETY: PASSIVE_LEVEL; a system thread ends itself. Nothing of this thread's stack is
    // referenced elsewhere.
    let _ = unsafe { PsTerminateSystemThread(STATUS_SUCCESS) };
}

/// The driver's `ProducerIo`. Decisions (what a status means, how a frame is laid out, how long
/// to wait) come from `kernel_events`; this only makes the calls. `driver_sim.rs` runs its twin.
struct KernelIo<'a> {
    shared: &'a Shared,
    frame: &'a mut [u8; MAX_FRAME],
    reply: &'a mut [u8; MAX_FRAME],
    /// The connected port, or null.
    port: HANDLE,
    /// Datagram or request for each send (`kernel_events::FlowControl`, which the simulation
    /// runs too).
    flow: FlowControl,
    /// Whether the worker has been told about the stop: from then on the stop event, which
    /// stays set, is left out of waits. The deadline itself is the worker's to keep
    /// (`producer::Wake::StopDeadline`).
    stop_seen: bool,
    /// The last failure logged, so a server that stays down is logged once, not every retry.
    last_error: NTSTATUS,
}

impl KernelIo<'_> {
    fn disconnect(&mut self) {
        if !self.port.is_null() {
            // SAFETY: PASSIVE_LEVEL; closes the port handle this thread opened, once. The
            // server sees LPC_PORT_CLOSED.
            let _ = unsafe { ZwClose(self.port) };
            self.port = ptr::null_mut();
        }
    }

    fn log_failure(&mut self, what: &str, status: NTSTATUS) {
        if status != self.last_error {
            self.last_error = status;
            println!("lpcmon: {what} failed: {status:#010x} (retrying with backoff; logged once)");
        }
    }

    /// `ZwAlpcConnectPort` with a timeout. Returns the status and the reply's length in
    /// `frame` (as a frame).
    fn connect_alpc(&mut self, hello: &[u8], timeout_ns: u64) -> (NTSTATUS, usize) {
        let Some(len) = frame_message(hello, MAX_FRAME, self.frame) else {
            return (status::INVALID_PARAMETER, 0);
        };
        let mut name = unicode(self.shared.params.port_name.units());
        let mut attributes = object_attributes(ptr::null_mut(), ptr::null_mut(), OBJ_KERNEL_HANDLE);
        // MaxPoolUsage 0: the client's own queue holds nothing but the replies to its
        // flow-control requests; what it queues at the server is bounded by the flow control.
        let mut port_attributes = AlpcPortAttributes::new(0, MAX_FRAME, 0);
        let sid = self.required_server_sid();
        let mut buffer_length: usize = self.frame.len();
        let mut timeout = LARGE_INTEGER {
            QuadPart: relative_timeout(timeout_ns),
        };
        let mut handle: HANDLE = ptr::null_mut();
        debug_assert!(len <= buffer_length);
        let connect = self.shared.routines.alpc_connect_port;
        // SAFETY: PASSIVE_LEVEL, System thread (a Zw call, so PreviousMode is KernelMode and our
        // buffers are not probed). Every pointer is to a local or to this thread's buffers,
        // alive for the call; `frame` is 8-aligned and holds the connection message; the SID is
        // static. ALPC_SYNC_CONNECTION makes the server's answer come back in `frame`, at most
        // `buffer_length` bytes. The call returns by `timeout` at the latest.
        let st = unsafe {
            connect(
                &mut handle,
                &mut name,
                &mut attributes,
                &mut port_attributes,
                ALPC_SYNC_CONNECTION,
                sid,
                self.frame.as_mut_ptr().cast::<PortMessage>(),
                &mut buffer_length,
                ptr::null_mut(),
                ptr::null_mut(),
                &mut timeout,
            )
        };
        self.adopt(st, handle);
        (st, buffer_length.min(MAX_FRAME))
    }

    fn required_server_sid(&self) -> *mut c_void {
        if self.shared.params.secure_connect {
            LOCAL_SYSTEM_SID.as_psid()
        } else {
            ptr::null_mut()
        }
    }

    /// Keeps the handle of a successful connect; closes one a failed call left behind.
    fn adopt(&mut self, status: NTSTATUS, handle: HANDLE) {
        if status == STATUS_SUCCESS {
            self.port = handle;
        } else if !handle.is_null() {
            // SAFETY: PASSIVE_LEVEL; a handle the failed call returned, closed once.
            let _ = unsafe { ZwClose(handle) };
        }
    }
}

impl ProducerIo for KernelIo<'_> {
    fn now(&mut self) -> u64 {
        ffi::interrupt_time_ns()
    }

    fn connect(&mut self, hello: &[u8], timeout_ns: u64) -> Result<usize, ConnectFailure> {
        self.disconnect();
        let (status, len) = self.connect_alpc(hello, timeout_ns);
        // Read only on success: a refused connect copies nothing back (connect_outcome).
        let reply = kernel_events::frame_data(&self.frame[..len]);
        let outcome = kernel_events::connect_outcome(status, reply, None);
        match outcome.result {
            Ok(limit) => {
                self.flow.reset();
                self.last_error = STATUS_SUCCESS;
                println!("lpcmon: connected; messages up to {limit} bytes");
            }
            Err(failure) => {
                self.disconnect();
                if failure == ConnectFailure::Refused {
                    let reason = outcome.refusal.map_or("no reason given", RefuseReason::name);
                    if status == status::SERVER_SID_MISMATCH {
                        println!(
                            "lpcmon: the port's server is not SYSTEM: refusing to connect (name squatting?)"
                        );
                    }
                    println!("lpcmon: connect refused ({status:#010x}): {reason}");
                } else {
                    self.log_failure("connect", status);
                }
            }
        }
        outcome.result
    }

    fn send(&mut self, message: &[u8]) -> bool {
        if self.port.is_null() {
            return false;
        }
        let Some(kind) = self.flow.next_send() else {
            // The server left the last flow-control request unanswered: queue nothing more on
            // this connection. The worker counts this message as lost and reconnects.
            println!("lpcmon: the server is not receiving; dropping the connection");
            self.disconnect();
            return false;
        };
        let Some(_len) = frame_message(message, MAX_FRAME, self.frame) else {
            // Longer than the port allows: cannot happen for a limit the connect agreed on.
            self.disconnect();
            return false;
        };
        let request = self.frame.as_mut_ptr().cast::<PortMessage>();
        let (receive, mut length, mut timeout) = if kind.waits_for_reply() {
            let timeout = LARGE_INTEGER {
                QuadPart: relative_timeout(FLOW_PROBE_TIMEOUT_NS),
            };
            (
                self.reply.as_mut_ptr().cast::<PortMessage>(),
                self.reply.len(),
                Some(timeout),
            )
        } else {
            (ptr::null_mut(), 0, None)
        };
        let length_ptr = if receive.is_null() {
            ptr::null_mut()
        } else {
            &raw mut length
        };
        let timeout_ptr = timeout.as_mut().map_or(ptr::null_mut(), ptr::from_mut);
        let send_wait_receive = self.shared.routines.alpc_send_wait_receive;
        // SAFETY: PASSIVE_LEVEL, System thread, Zw call (no probing). `request` is this
        // thread's 8-aligned frame holding a header whose TotalLength covers exactly the bytes
        // written after it; the port handle is open. A datagram passes no receive buffer and
        // returns once queued; a request receives the server's reply into `reply`, MAX_FRAME
        // bytes (the MaxMessageLength we connected with), and waits at most `timeout`.
        let st = unsafe {
            send_wait_receive(
                self.port,
                kind.flags(),
                request,
                ptr::null_mut(),
                receive,
                length_ptr,
                ptr::null_mut(),
                timeout_ptr,
            )
        };
        if self.flow.on_sent(kind, st) {
            return true;
        }
        self.log_failure("send", st);
        self.disconnect();
        false
    }

    /// Waits as the worker said (`until` already stops at a stop's deadline).
    fn wait(&mut self, until: u64) {
        let now = ffi::interrupt_time_ns();
        if until <= now {
            return;
        }
        let mut timeout = LARGE_INTEGER {
            QuadPart: relative_timeout(until - now),
        };
        if self.stop_seen {
            // The stop event stays set once seen; waiting on it again would spin.
            // SAFETY: PASSIVE_LEVEL; the event is nonpaged and outlives this thread.
            let _ = unsafe {
                KeWaitForSingleObject(
                    self.shared.queue_signal().cast(),
                    Executive,
                    KernelMode as KPROCESSOR_MODE,
                    FALSE,
                    &mut timeout,
                )
            };
        } else {
            let mut objects: [PVOID; 2] =
                [self.shared.queue_signal().cast(), self.shared.stop_event().cast()];
            // SAFETY: PASSIVE_LEVEL; two nonpaged dispatcher objects that outlive this thread;
            // two is within THREAD_WAIT_OBJECTS, so no wait block array is needed.
            let _ = unsafe {
                KeWaitForMultipleObjects(
                    2,
                    objects.as_mut_ptr(),
                    WaitAny,
                    Executive,
                    KernelMode as KPROCESSOR_MODE,
                    FALSE,
                    &mut timeout,
                    ptr::null_mut(),
                )
            };
        }
    }

    fn stop_requested(&mut self) -> bool {
        let stop = self.shared.stop_requested();
        self.stop_seen |= stop;
        stop
    }
}
