//! The Windows driver's producer logic, run on Linux against a simulated kernel.
//!
//! The driver (`driver/`) cannot be built here, so this test plays its parts with the same
//! protocol code the driver links:
//! - several std threads are the kernel callbacks: each builds the plain values a callback reads
//!   and calls `kernel_events::record`, exactly the driver's callback body, then signals;
//! - one thread is the system worker thread: `producer::run` with a simulated `ProducerIo`
//!   that makes the driver's `KernelIo` calls and takes the same decisions from the same code:
//!   frames with `kernel_events::frame_message`, connect outcomes from
//!   `kernel_events::connect_outcome`, datagram-or-request from `kernel_events::FlowControl`,
//!   and waits exactly as long as the worker says (`producer::Step::Wait`);
//! - the port fails, *blocks* (a connect until its timeout, a send for a while), and recovers;
//!   the server *stalls* (stops receiving while messages queue in the kernel, as a busy or
//!   suspended server would), and the driver's flow control must keep what is queued within one
//!   window; the server behind it is a real `lpcmon_protocol::server::Server` receiving
//!   `PORT_MESSAGE` headers as the kernel builds them for a System thread
//!   (`ClientId.UniqueProcess == 4`).
//!
//! Time is simulated: the port's blocking advances the simulated clock, and waits advance it a
//! thousand times faster than the wall clock. Every loop is bounded.

mod common;

use common::Rng;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use lpcmon_nt::alpc::SendKind;
use lpcmon_nt::{NtStatus, status};
use lpcmon_protocol::event::{Event, EventKind, patch_seq};
use lpcmon_protocol::kernel_events::{
    self, EventFilter, EventMask, FLOW_PROBE_TIMEOUT_NS, FLOW_WINDOW, FlowControl, ImageLoad, KernelEvent,
    KernelSlot, MAX_FRAME, Parameters, ProcessExit, ProcessStart, RawParameters, Recorded, RegistryValue,
    STOP_GRACE_NS, ThreadChange, reg,
};
use lpcmon_protocol::message::{LossStage, Message, ProducerKind};
use lpcmon_protocol::port_message::{PortMessage, lpc};
use lpcmon_protocol::producer::{self, ConnectFailure, ProducerIo, Worker, WorkerStats};
use lpcmon_protocol::queue::{Queue, Slot};
use lpcmon_protocol::server::{Action, Output, Server, ServerConfig};

/// `ClientId` of the driver's worker: a thread of the System process.
const SYSTEM_PID: u64 = 4;
const WORKER_TID: u64 = 0x1F4;
/// Simulated nanoseconds per real nanosecond while the worker waits.
const SPEEDUP: u64 = 1000;

/// The driver's two KEVENTs and its clock: the queue signal (auto-reset, set by callbacks) and
/// the stop request (set by DriverUnload).
#[derive(Default)]
struct Kernel {
    signalled: Mutex<bool>,
    wake: Condvar,
    stop: AtomicBool,
    /// `KeQueryInterruptTime() * 100`, simulated.
    clock: AtomicU64,
    /// Set while the worker is inside a connect call, for the stop tests.
    in_connect: AtomicBool,
}

impl Kernel {
    fn now(&self) -> u64 {
        self.clock.load(Ordering::SeqCst)
    }

    fn advance(&self, ns: u64) {
        self.clock.fetch_add(ns, Ordering::SeqCst);
    }

    /// `KeSetEvent(&queue_signal)`.
    fn signal(&self) {
        *self.signalled.lock().unwrap() = true;
        self.wake.notify_all();
    }

    /// DriverUnload: set the stop flag, then the stop KEVENT.
    fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.signal();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortState {
    Up,
    /// No server: the name does not exist, connects fail fast.
    Absent {
        attempts: u32,
    },
    /// A server that exists but does not answer: connects block until their timeout.
    Hung {
        attempts: u32,
    },
}

/// How long a stalled server does not receive.
const STALL_NS: u64 = 3_000_000_000;

struct Faults {
    /// Per mille of sends that break the port.
    break_send: u64,
    /// Per mille of sends that block for a while and then succeed.
    block_send: u64,
    /// Per mille of sends after which the server stalls for `STALL_NS`.
    stall: u64,
    /// Real time a blocked connect takes.
    connect_block: Duration,
}

/// The port and the server behind it, as the worker thread sees them through its syscalls.
struct SimPort<'k> {
    kernel: &'k Kernel,
    state: PortState,
    faults: Faults,
    rng: Rng,
    calm: &'k AtomicBool,
    server: Server,
    outputs: Vec<Output>,
    conn: Option<u64>,
    next_conn: u64,
    message_id: u32,
    frame: Vec<u8>,
    /// Messages the kernel holds for the server: (connection, type, data).
    queued: VecDeque<(u64, u8, Vec<u8>)>,
    /// The server receives nothing before this simulated time.
    stalled_until: u64,
    /// The most messages ever queued at once.
    max_queued: usize,
    stalls: u64,
    blocked_connects: u64,
    blocked_sends: u64,
    breaks: u64,
}

impl SimPort<'_> {
    /// The server receives one message of connection `conn`.
    fn deliver_to(&mut self, conn: u64, kind: u8, data: &[u8]) -> Action {
        self.message_id = self.message_id.wrapping_add(1).max(1);
        let header = PortMessage::new(kind, data.len(), SYSTEM_PID, WORKER_TID, self.message_id);
        let now = self.kernel.now();
        let action = self.server.handle(now, conn, &header, data, &mut self.outputs);
        if kind == lpc::REQUEST {
            assert_eq!(
                action,
                Action::Reply {
                    message_id: self.message_id
                },
                "a request is answered, echoing its MessageId"
            );
        }
        action
    }

    fn deliver(&mut self, kind: u8, data: &[u8]) -> Action {
        let conn = self.conn.expect("delivering needs a connection");
        self.deliver_to(conn, kind, data)
    }

    fn stalled(&self) -> bool {
        !self.calm.load(Ordering::SeqCst) && self.kernel.now() < self.stalled_until
    }

    /// The server receives everything queued, unless it is stalled.
    fn drain(&mut self) {
        if self.stalled() {
            return;
        }
        while let Some((conn, kind, data)) = self.queued.pop_front() {
            self.deliver_to(conn, kind, &data);
        }
    }

    /// The kernel queues a message for the server, which receives it when it is not stalled.
    fn enqueue(&mut self, kind: u8, data: Vec<u8>) {
        let conn = self.conn.expect("sending needs a connection");
        self.queued.push_back((conn, kind, data));
        self.max_queued = self.max_queued.max(self.queued.len());
        self.drain();
    }

    /// `ZwAlpcSendWaitReceivePort` with `kind`'s flags: a datagram is queued and the call
    /// returns; a request waits up to its timeout for the server to receive it and reply.
    fn send(&mut self, kind: SendKind, data: Vec<u8>) -> NtStatus {
        match kind {
            SendKind::Datagram => {
                self.enqueue(lpc::DATAGRAM, data);
                status::SUCCESS
            }
            SendKind::Request => {
                self.enqueue(lpc::REQUEST, data);
                if self.queued.is_empty() {
                    return status::SUCCESS;
                }
                self.kernel.advance(FLOW_PROBE_TIMEOUT_NS);
                self.drain();
                if self.queued.is_empty() {
                    status::SUCCESS
                } else {
                    status::TIMEOUT
                }
            }
            other => panic!("a producer never sends {other:?}"),
        }
    }

    /// The handle is closed (by the driver, or because the port broke): the server sees
    /// `LPC_PORT_CLOSED` after whatever was queued before it.
    fn close(&mut self) {
        if self.conn.is_some() {
            self.enqueue(lpc::PORT_CLOSED, Vec::new());
            self.conn = None;
        }
    }

    fn break_port(&mut self) {
        self.breaks += 1;
        self.close();
        let attempts = 1 + (self.rng.next() % 4) as u32;
        self.state = if self.rng.chance(500) {
            PortState::Absent { attempts }
        } else {
            PortState::Hung { attempts }
        };
    }

    /// One connect call: returns the NTSTATUS and the connection information that came back.
    fn connect_call(&mut self, hello: &[u8], timeout_ns: u64) -> (i32, Vec<u8>) {
        if self.calm.load(Ordering::SeqCst) {
            self.state = PortState::Up;
        }
        match self.state {
            PortState::Absent { attempts } => {
                self.kernel.advance(50_000);
                self.state = match attempts {
                    0 | 1 => PortState::Up,
                    n => PortState::Absent { attempts: n - 1 },
                };
                (status::OBJECT_NAME_NOT_FOUND, Vec::new())
            }
            PortState::Hung { attempts } => {
                self.blocked_connects += 1;
                // The call really blocks: a stop requested now must wait for it.
                std::thread::sleep(self.faults.connect_block);
                self.state = match attempts {
                    0 | 1 => PortState::Up,
                    n => PortState::Hung { attempts: n - 1 },
                };
                self.kernel.advance(timeout_ns);
                (status::TIMEOUT, Vec::new())
            }
            PortState::Up if self.stalled() => {
                // The connection request waits in the stalled server's queue until the timeout.
                self.blocked_connects += 1;
                self.kernel.advance(timeout_ns);
                (status::TIMEOUT, Vec::new())
            }
            PortState::Up => {
                self.kernel.advance(30_000);
                self.drain();
                self.accept(hello)
            }
        }
    }

    /// The server receives `LPC_CONNECTION_REQUEST` with the Hello and answers.
    fn accept(&mut self, hello: &[u8]) -> (i32, Vec<u8>) {
        self.next_conn += 1;
        self.conn = Some(self.next_conn);
        let (st, reply) = match self.deliver(lpc::CONNECTION_REQUEST, hello) {
            Action::Accept { reply } => (status::SUCCESS, reply),
            Action::Refuse { .. } => {
                self.conn = None;
                // A refused connect copies no connection information back (ReactOS
                // connect.c, AlpcpReceiveLegacyConnectionReply): the caller's buffer still
                // holds its own Hello.
                return (status::PORT_CONNECTION_REFUSED, hello.to_vec());
            }
            other => panic!("connection request answered with {other:?}"),
        };
        // ZwAlpcConnectPort returns the server's message in the connection message buffer.
        let n = kernel_events::frame_message(&reply, usize::MAX, &mut self.frame).unwrap();
        (st, kernel_events::frame_data(&self.frame[..n]).to_vec())
    }
}

/// The simulated twin of the driver's `KernelIo`.
struct SimIo<'k> {
    kernel: &'k Kernel,
    port: SimPort<'k>,
    /// The port's message limit, once connected: `MaxMessageLength`, header included.
    max_total: usize,
    /// Datagram or request, as the driver's flow control decides.
    flow: FlowControl,
    /// Whether the worker has been told about the stop: from then on the stop event, which
    /// stays set, no longer wakes a wait. The deadline itself is the worker's to keep.
    stop_seen: bool,
    /// Turns of the worker loop, to bound it: a worker that never stops fails the test.
    turns: u64,
}

/// More turns of `producer::run` than any scenario needs by orders of magnitude.
const MAX_TURNS: u64 = 20_000_000;

impl ProducerIo for SimIo<'_> {
    fn now(&mut self) -> u64 {
        self.turns += 1;
        assert!(self.turns < MAX_TURNS, "the worker loop did not end");
        self.kernel.now()
    }

    fn connect(&mut self, hello: &[u8], timeout_ns: u64) -> Result<usize, ConnectFailure> {
        self.port.close();
        self.kernel.in_connect.store(true, Ordering::SeqCst);
        let (st, reply) = self.port.connect_call(hello, timeout_ns);
        self.kernel.in_connect.store(false, Ordering::SeqCst);
        let outcome = kernel_events::connect_outcome(st, &reply, None);
        if outcome.keep_port {
            self.max_total = MAX_FRAME;
            self.flow.reset();
        } else {
            self.port.close();
        }
        outcome.result
    }

    fn send(&mut self, message: &[u8]) -> bool {
        if self.port.conn.is_none() {
            return false;
        }
        let Some(kind) = self.flow.next_send() else {
            // The server left the last probe unanswered: queue nothing more on this port.
            self.port.close();
            return false;
        };
        let Some(n) = kernel_events::frame_message(message, self.max_total, &mut self.port.frame) else {
            self.port.close();
            return false;
        };
        let calm = self.port.calm.load(Ordering::SeqCst);
        if !calm && self.port.rng.chance(self.port.faults.break_send) {
            self.port.break_port();
            return false;
        }
        if !calm && self.port.rng.chance(self.port.faults.block_send) {
            self.port.blocked_sends += 1;
            std::thread::sleep(Duration::from_micros(100));
            self.kernel.advance(5_000_000);
        }
        if !calm && !self.port.stalled() && self.port.rng.chance(self.port.faults.stall) {
            self.port.stalls += 1;
            self.port.stalled_until = self.kernel.now() + STALL_NS;
        }
        self.kernel.advance(20_000);
        // The kernel copies the frame and rewrites the header for the receiver.
        let (sent, data) = PortMessage::parse(&self.port.frame[..n]).expect("a frame the kernel accepts");
        assert_eq!((sent.message_type, sent.data_info_offset), (0, 0));
        let data = data.to_vec();
        let st = self.port.send(kind, data);
        let ok = self.flow.on_sent(kind, st);
        if !ok {
            self.port.close();
        }
        ok
    }

    fn wait(&mut self, until: u64) {
        let now = self.kernel.now();
        if until <= now {
            return;
        }
        let started = Instant::now();
        let mut signalled = self.kernel.signalled.lock().unwrap();
        // KeWaitForMultipleObjects: the queue signal, plus the stop event until the worker
        // has seen the stop (after that it stays set and would wake every wait at once).
        let stop_wakes = !self.stop_seen && self.kernel.stop.load(Ordering::SeqCst);
        if !*signalled && !stop_wakes {
            let real = Duration::from_nanos((until - now).div_ceil(SPEEDUP)).min(Duration::from_micros(300));
            signalled = self.kernel.wake.wait_timeout(signalled, real).unwrap().0;
        }
        let woken = std::mem::replace(&mut *signalled, false);
        drop(signalled);
        let target = if woken {
            let elapsed = started.elapsed().as_nanos() as u64 * SPEEDUP;
            (now + elapsed.max(1_000)).min(until)
        } else {
            until
        };
        self.kernel.clock.fetch_max(target, Ordering::SeqCst);
    }

    fn stop_requested(&mut self) -> bool {
        let stop = self.kernel.stop.load(Ordering::SeqCst);
        self.stop_seen |= stop;
        stop
    }
}

/// What callback thread `t` reports as its `i`-th event: deterministic, so the server's copy
/// can be checked against it. `time_ns` carries (t, i).
struct Spec {
    kind: usize,
    id: u64,
    exe: Vec<u16>,
    cmd: Vec<u16>,
}

impl Spec {
    fn new(t: u64, i: u64) -> Spec {
        let id = ((t + 1) << 32) | i;
        let exe = format!(r"\Device\HarddiskVolume3\Program Files\app{t}\bin{i}.exe");
        // Some command lines exceed the string cap, so truncation travels too.
        let cmd = format!("app{t}.exe {}", "-x".repeat(((i * 37) % 700) as usize));
        Spec {
            kind: ((i * 7 + t) % 5) as usize,
            id,
            exe: exe.encode_utf16().collect(),
            cmd: cmd.encode_utf16().collect(),
        }
    }

    fn event(&self) -> KernelEvent<'_> {
        let pid = (self.id as u32) | 0x100;
        match self.kind {
            0 => KernelEvent::ProcessStart(ProcessStart {
                time_ns: self.id,
                pid,
                ppid: 4,
                creating_pid: 900,
                creating_tid: pid + 4,
                image_file_name: Some(&self.exe),
                command_line: Some(&self.cmd),
            }),
            1 => KernelEvent::ProcessExit(ProcessExit {
                time_ns: self.id,
                pid,
                exit_status: (pid % 3 != 0).then_some(pid as i32),
            }),
            2 | 3 => KernelEvent::Thread(ThreadChange {
                time_ns: self.id,
                pid,
                tid: pid + 8,
                created: self.kind == 2,
            }),
            _ => KernelEvent::ImageLoad(ImageLoad {
                time_ns: self.id,
                pid: if pid % 2 == 0 { 0 } else { pid },
                tid: pid + 12,
                image_path: Some(&self.exe),
                base: 0x7FF6_0000_0000 + u64::from(pid) * 0x1000,
                size: 0x2000 + u64::from(pid),
                system_image: pid % 2 == 0,
            }),
        }
    }
}

/// The driver's Parameters, from registry values as `ZwQueryValueKey` would return them: a
/// small queue (so it overflows), thread.exit masked out, a string cap below the longest
/// command line.
fn parameters() -> Parameters {
    let capacity = 50u32.to_le_bytes();
    let mask = (EventMask::ALL.0 & !EventMask::bit(EventKind::ThreadExit)).to_le_bytes();
    let cap = 600u32.to_le_bytes();
    let (params, rejected) = Parameters::parse(&RawParameters {
        queue_capacity: Some(RegistryValue {
            value_type: reg::DWORD,
            data: &capacity,
        }),
        event_mask: Some(RegistryValue {
            value_type: reg::DWORD,
            data: &mask,
        }),
        string_cap: Some(RegistryValue {
            value_type: reg::DWORD,
            data: &cap,
        }),
        ..RawParameters::default()
    });
    assert!(rejected.is_empty());
    assert_eq!(params.queue_capacity, 64);
    params
}

#[derive(Default, Debug)]
struct Ledger {
    stored: u64,
    lost: std::collections::BTreeMap<LossStage, u64>,
    connects: u64,
    last_seq: u64,
}

impl Ledger {
    fn absorb(&mut self, outputs: &[Output], filter: &EventFilter) {
        for o in outputs {
            match o {
                Output::Connected(p) => {
                    assert_eq!(
                        p.client_pid, SYSTEM_PID,
                        "the driver connects from a System thread"
                    );
                    assert_eq!(p.kind, ProducerKind::WindowsDriver);
                    self.connects += 1;
                }
                Output::Event { event, transport, .. } => {
                    assert_eq!(transport.client_pid, SYSTEM_PID);
                    assert!(event.header.seq > self.last_seq, "events out of order");
                    self.last_seq = event.header.seq;
                    self.stored += 1;
                    check_content(event, filter);
                }
                Output::Loss { loss, .. } => *self.lost.entry(loss.stage).or_default() += loss.count,
                Output::Malformed { error, .. } => panic!("the driver sent a malformed message: {error}"),
                Output::Refused { detail, .. } => panic!("the driver was refused: {detail}"),
                Output::Disconnected { .. } | Output::Heartbeat { .. } | Output::Stale { .. } => {}
            }
        }
    }

    fn lost_total(&self) -> u64 {
        self.lost.values().sum()
    }
}

/// The stored event is exactly what the callback encoded for its (t, i).
fn check_content(stored: &Event, filter: &EventFilter) {
    let id = stored.header.time_ns;
    let spec = Spec::new((id >> 32) - 1, id & 0xFFFF_FFFF);
    let mut slot = Box::new(KernelSlot::new());
    spec.event().encode(&mut slot, filter.string_cap).unwrap();
    let mut bytes = slot.as_bytes().to_vec();
    patch_seq(&mut bytes, stored.header.seq).unwrap();
    let expected = match Message::decode(&bytes, usize::MAX).unwrap() {
        Message::Event(view) => Event::from(&view),
        other => panic!("{other:?}"),
    };
    assert_eq!(stored, &expected);
}

struct Scenario {
    seed: u64,
    /// Per mille of sends after which the server stalls.
    stall: u64,
    threads: u64,
    events_per_thread: u64,
}

struct Outcome {
    ledger: Ledger,
    stats: WorkerStats,
    produced: u64,
    wanted: u64,
    blocked_connects: u64,
    blocked_sends: u64,
    breaks: u64,
    stalls: u64,
    max_queued: usize,
}

fn server_config() -> ServerConfig {
    ServerConfig {
        api: "alpc",
        max_message: 64 * 1024,
        ..ServerConfig::default()
    }
}

/// The simulated port, as a scenario starts it.
fn sim_port<'k>(
    kernel: &'k Kernel,
    calm: &'k AtomicBool,
    state: PortState,
    faults: Faults,
    seed: u64,
) -> SimPort<'k> {
    SimPort {
        kernel,
        state,
        faults,
        rng: Rng(seed),
        calm,
        server: Server::new(server_config()),
        outputs: Vec::new(),
        conn: None,
        next_conn: 0,
        message_id: 0,
        frame: vec![0; MAX_FRAME],
        queued: VecDeque::new(),
        stalled_until: 0,
        max_queued: 0,
        stalls: 0,
        blocked_connects: 0,
        blocked_sends: 0,
        breaks: 0,
    }
}

fn run_scenario(s: &Scenario) -> Outcome {
    let params = parameters();
    let filter = params.filter;
    let slots: Vec<Slot<KernelSlot>> = (0..params.queue_capacity)
        .map(|i| Slot::new(i, KernelSlot::new()))
        .collect();
    let queue = Queue::new(&slots).expect("a power-of-two queue");
    let kernel = Kernel::default();
    let calm = AtomicBool::new(false);
    let mut wanted = 0;

    let (stats, port) = std::thread::scope(|scope| {
        let worker = scope.spawn(|| {
            let faults = Faults {
                break_send: 15,
                block_send: 20,
                stall: s.stall,
                connect_block: Duration::from_millis(1),
            };
            let mut io = SimIo {
                kernel: &kernel,
                port: sim_port(&kernel, &calm, PortState::Absent { attempts: 2 }, faults, s.seed),
                max_total: 0,
                flow: FlowControl::new(FLOW_WINDOW),
                stop_seen: false,
                turns: 0,
            };
            let config =
                kernel_events::worker_config(s.seed.to_le_bytes().repeat(2).try_into().unwrap(), 26100);
            let mut event_buf = vec![0u8; kernel_events::EVENT_SLOT_BYTES];
            let mut out = vec![0u8; kernel_events::MAX_MESSAGE];
            let now = io.now();
            let mut worker = Worker::new(config, &mut event_buf, now);
            let stats = producer::run(&mut worker, &queue, &mut io, &mut out, STOP_GRACE_NS);
            // The worker closes its port as its last act; the server catches up with what is
            // queued and then resolves its timers.
            io.port.close();
            io.port.drain();
            assert!(io.port.queued.is_empty(), "a calm server receives everything");
            let later = kernel.now() + 10_000_000_000;
            io.port.server.poll(later, &mut io.port.outputs);
            (stats, io.port)
        });

        let callbacks: Vec<_> = (0..s.threads)
            .map(|t| {
                let (queue, kernel) = (&queue, &kernel);
                scope.spawn(move || {
                    let mut wanted = 0u64;
                    for i in 0..s.events_per_thread {
                        let spec = Spec::new(t, i);
                        match kernel_events::record(queue, &filter, &spec.event()) {
                            Recorded::Filtered => continue,
                            Recorded::Queued => kernel.signal(),
                            Recorded::Dropped => {}
                        }
                        wanted += 1;
                        if i % 16 == 15 {
                            std::thread::sleep(Duration::from_micros(200));
                        }
                    }
                    wanted
                })
            })
            .collect();
        wanted = callbacks.into_iter().map(|c| c.join().unwrap()).sum();

        // DriverUnload: the callbacks are gone. Let the port settle so the tail is delivered,
        // then stop the worker.
        calm.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(3);
        while !queue.is_empty() && Instant::now() < deadline {
            kernel.signal();
            std::thread::sleep(Duration::from_millis(1));
        }
        kernel.request_stop();
        worker.join().unwrap()
    });

    let mut ledger = Ledger::default();
    ledger.absorb(&port.outputs, &filter);
    assert_eq!(port.server.held_events(), 0);
    Outcome {
        ledger,
        stats,
        produced: queue.produced(),
        wanted,
        blocked_connects: port.blocked_connects,
        blocked_sends: port.blocked_sends,
        breaks: port.breaks,
        stalls: port.stalls,
        max_queued: port.max_queued,
    }
}

/// Invariant 1, exactly: every push attempt the mask let through is stored or counted in a
/// loss the server reported.
fn assert_conserved(o: &Outcome, what: &str) {
    let l = &o.ledger;
    assert_eq!(o.produced, o.wanted, "{what}");
    assert_eq!(
        o.produced,
        l.stored + l.lost_total(),
        "{what}: produced {} != stored {} + lost {:?} (worker {:?})",
        o.produced,
        l.stored,
        l.lost,
        o.stats
    );
    assert_eq!(
        o.stats.unreported, 0,
        "{what}: stopped while connected: everything reported"
    );
    assert_eq!(o.stats.connects, l.connects, "{what}");
    // The flow control's bound: one window per connection, plus its close notification.
    assert!(
        o.max_queued <= FLOW_WINDOW as usize + 1,
        "{what}: {} messages queued in the kernel at once",
        o.max_queued
    );
}

#[test]
fn every_event_from_the_callbacks_is_stored_or_counted_lost() {
    let started = Instant::now();
    let mut totals = Ledger::default();
    let (mut blocked_connects, mut blocked_sends, mut breaks, mut stalls) = (0, 0, 0, 0);
    for seed in 0..8 {
        let s = Scenario {
            seed: seed * 31,
            stall: 5,
            threads: 4,
            events_per_thread: 600,
        };
        let o = run_scenario(&s);
        assert_conserved(&o, &format!("seed {seed}"));
        let l = &o.ledger;
        totals.stored += l.stored;
        totals.connects += l.connects;
        for (stage, n) in &l.lost {
            *totals.lost.entry(*stage).or_default() += n;
        }
        blocked_connects += o.blocked_connects;
        blocked_sends += o.blocked_sends;
        breaks += o.breaks;
        stalls += o.stalls;
    }
    // The faults really happened.
    assert!(totals.stored > 0 && totals.connects > 12, "{totals:?}");
    for stage in [LossStage::ProducerQueue, LossStage::ProducerSend] {
        assert!(
            totals.lost.get(&stage).copied().unwrap_or(0) > 0,
            "{stage:?} never exercised"
        );
    }
    assert!(blocked_connects > 0 && blocked_sends > 0 && breaks > 0 && stalls > 0);
    eprintln!(
        "stored {}, lost {:?}, connects {}, blocked connects {blocked_connects}, blocked sends \
         {blocked_sends}, breaks {breaks}, server stalls {stalls}, {:?}",
        totals.stored,
        totals.lost,
        totals.connects,
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the simulation is bounded"
    );
}

/// A server that keeps stalling: without flow control the driver's datagrams would pile up in
/// the kernel. With it, at most one window is queued, and what could not be queued is counted
/// as `producer_send` loss.
#[test]
fn a_stalling_server_never_has_more_than_a_window_queued_and_the_rest_is_counted() {
    let o = run_scenario(&Scenario {
        seed: 5,
        stall: 200,
        threads: 2,
        events_per_thread: 600,
    });
    assert_conserved(&o, "stalling server");
    let send_lost = o.ledger.lost.get(&LossStage::ProducerSend).copied().unwrap_or(0);
    assert!(
        o.stalls > 0 && send_lost > 0,
        "stalls {}, send losses {send_lost}",
        o.stalls
    );
    eprintln!(
        "stalling server: {} stalls, at most {} queued, stored {}, lost {:?}",
        o.stalls, o.max_queued, o.ledger.stored, o.ledger.lost
    );
}

/// A stop (DriverUnload) while the worker is blocked in a connect to a hung server.
///
/// Returns the simulated time from the stop request to the worker's return, and the wall time.
fn stop_while_hung() -> (u64, Duration, WorkerStats, u64) {
    let params = parameters();
    let slots: Vec<Slot<KernelSlot>> = (0..params.queue_capacity)
        .map(|i| Slot::new(i, KernelSlot::new()))
        .collect();
    let queue = Queue::new(&slots).unwrap();
    let kernel = Kernel::default();
    let calm = AtomicBool::new(false);
    // Events are waiting, so the worker keeps trying to connect to report them.
    for i in 0..10 {
        let spec = Spec::new(0, i * 5);
        assert_eq!(
            kernel_events::record(&queue, &params.filter, &spec.event()),
            Recorded::Queued
        );
    }
    std::thread::scope(|scope| {
        let worker = scope.spawn(|| {
            let faults = Faults {
                break_send: 0,
                block_send: 0,
                stall: 0,
                connect_block: Duration::from_millis(50),
            };
            let mut io = SimIo {
                kernel: &kernel,
                port: sim_port(&kernel, &calm, PortState::Hung { attempts: u32::MAX }, faults, 7),
                max_total: 0,
                flow: FlowControl::new(FLOW_WINDOW),
                stop_seen: false,
                turns: 0,
            };
            let config = kernel_events::worker_config([9; 16], 26100);
            let mut event_buf = vec![0u8; kernel_events::EVENT_SLOT_BYTES];
            let mut out = vec![0u8; kernel_events::MAX_MESSAGE];
            let now = io.now();
            let mut worker = Worker::new(config, &mut event_buf, now);
            producer::run(&mut worker, &queue, &mut io, &mut out, STOP_GRACE_NS)
        });
        // Wait (bounded) until the worker is inside a blocking connect, then unload.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !kernel.in_connect.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "the worker never connected");
            std::thread::sleep(Duration::from_micros(100));
        }
        let (sim_start, wall_start) = (kernel.now(), Instant::now());
        kernel.request_stop();
        let stats = worker.join().unwrap();
        (
            kernel.now() - sim_start,
            wall_start.elapsed(),
            stats,
            queue.produced(),
        )
    })
}

#[test]
fn a_stop_while_an_alpc_connect_blocks_ends_within_two_timeouts_and_the_grace() {
    let timeout = kernel_events::worker_config([0; 16], 0).connect_timeout_ns;
    let (sim, wall, stats, produced) = stop_while_hung();
    eprintln!("ALPC: stop took {sim} ns simulated, {wall:?} wall");
    // The connect in progress runs to its timeout; one more may start before the grace ends.
    let bound = 2 * timeout + STOP_GRACE_NS;
    assert!(
        sim <= bound,
        "stop took {sim} ns of simulated time, bound {bound}"
    );
    assert!(sim >= timeout, "the blocked connect cannot be cut short");
    assert!(wall < Duration::from_secs(5), "stop took {wall:?}");
    // Nothing was delivered; every event is counted as unreported, none vanish.
    assert_eq!((stats.connects, stats.unreported), (0, produced));
}
