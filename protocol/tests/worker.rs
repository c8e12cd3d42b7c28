//! The producer worker's decisions, step by step: backoff, loss reports after a reconnect,
//! heartbeats, and stopping (at once, after draining, and within its deadline when the port
//! never answers).

use lpcmon_protocol::event::{EventHeader, EventKind, FieldType};
use lpcmon_protocol::message::Heartbeat;
use lpcmon_protocol::producer::{
    ConnectFailure, EventSlot, ProducerIo, Step, Wake, Worker, WorkerConfig, WorkerStats, run,
};
use lpcmon_protocol::queue::{Queue, Slot};
use lpcmon_protocol::{Hello, Loss, LossStage, Message, ProducerKind};

const SLOT: usize = 256;
const MS: u64 = 1_000_000;
const LIMIT: usize = 4096;

fn config() -> WorkerConfig<'static> {
    WorkerConfig {
        kind: ProducerKind::Loadgen,
        instance: [9; 16],
        os: "test",
        os_build: 7,
        max_message: LIMIT,
        backoff_min_ns: 10 * MS,
        backoff_max_ns: 80 * MS,
        connect_timeout_ns: 5 * MS,
        heartbeat_interval_ns: 1_000 * MS,
    }
}

fn slots(capacity: usize) -> Vec<Slot<EventSlot<SLOT>>> {
    (0..capacity).map(|i| Slot::new(i, EventSlot::new())).collect()
}

/// Pushes an event whose pid identifies it.
fn push(queue: &Queue<'_, EventSlot<SLOT>>, pid: u32) -> bool {
    queue
        .push_with(|slot| {
            let header = EventHeader {
                seq: 0,
                kind: EventKind::ProcessStart,
                flags: 0,
                time_ns: 0,
                pid,
                ppid: 1,
                tid: pid,
            };
            slot.encode(&header, 64, |w| w.utf8(FieldType::NAME, "test"))
                .unwrap();
        })
        .is_ok()
}

/// A sent message, decoded into what the tests compare.
#[derive(Debug, PartialEq, Eq)]
enum Sent {
    Event { seq: u64, pid: u32 },
    Loss(Loss),
    Heartbeat(Heartbeat),
}

fn sent(bytes: &[u8]) -> Sent {
    match Message::decode(bytes, LIMIT).expect("the worker sends valid messages") {
        Message::Event(e) => Sent::Event {
            seq: e.header.seq,
            pid: e.header.pid,
        },
        Message::Loss(l) => Sent::Loss(l),
        Message::Heartbeat(h) => Sent::Heartbeat(h),
        other => panic!("unexpected message {other:?}"),
    }
}

fn hello(bytes: &[u8]) -> Hello<'_> {
    match Message::decode(bytes, 128) {
        Ok(Message::Hello(h)) => h,
        other => panic!("not a Hello: {other:?}"),
    }
}

fn expect_connect(w: &mut Worker<'_>, now: u64, q: &Queue<'_, EventSlot<SLOT>>, out: &mut [u8]) -> u64 {
    match w.poll(now, q, out) {
        Step::Connect {
            hello_len,
            timeout_ns,
        } => {
            assert_eq!(timeout_ns, config().connect_timeout_ns);
            hello(&out[..hello_len]).next_seq
        }
        other => panic!("expected a connect, got {other:?}"),
    }
}

fn expect_send(w: &mut Worker<'_>, now: u64, q: &Queue<'_, EventSlot<SLOT>>, out: &mut [u8]) -> Sent {
    match w.poll(now, q, out) {
        Step::Send { len } => sent(&out[..len]),
        other => panic!("expected a send, got {other:?}"),
    }
}

fn expect_wait(w: &mut Worker<'_>, now: u64, q: &Queue<'_, EventSlot<SLOT>>, out: &mut [u8]) -> u64 {
    match w.poll(now, q, out) {
        Step::Wait { until, .. } => until,
        other => panic!("expected a wait, got {other:?}"),
    }
}

/// The worker says when it next needs to run and why (quinn-proto's `poll_timeout`), and a
/// stop's deadline cuts every wait short: the shells only wait as they are told.
#[test]
fn waits_say_why_and_never_pass_the_stop_deadline() {
    let s = slots(4);
    let q = Queue::new(&s).unwrap();
    let mut buf = [0u8; SLOT];
    let mut out = [0u8; LIMIT];
    let mut w = Worker::new(config(), &mut buf, 0);

    expect_connect(&mut w, 0, &q, &mut out);
    assert_eq!(w.poll_timeout(), None, "a connect is in flight");
    w.on_connect(0, Err(ConnectFailure::Unavailable));
    let retry = Step::Wait {
        until: 10 * MS,
        why: Wake::Retry,
    };
    assert_eq!(w.poll(MS, &q, &mut out), retry);
    assert_eq!(w.poll_timeout(), Some((10 * MS, Wake::Retry)));

    expect_connect(&mut w, 10 * MS, &q, &mut out);
    w.on_connect(10 * MS, Ok(LIMIT));
    let heartbeat = Step::Wait {
        until: 1_010 * MS,
        why: Wake::Heartbeat,
    };
    assert_eq!(w.poll(11 * MS, &q, &mut out), heartbeat);
    assert_eq!(w.poll_timeout(), Some((1_010 * MS, Wake::Heartbeat)));

    // A stop with 100 ms of grace: the final heartbeat goes out, then every wait ends at the
    // deadline, not at the next heartbeat.
    w.stop(20 * MS, 100 * MS);
    assert!(matches!(
        expect_send(&mut w, 20 * MS, &q, &mut out),
        Sent::Heartbeat(_)
    ));
    w.on_sent(20 * MS, true);
    assert_eq!(w.poll_timeout(), Some((120 * MS, Wake::StopDeadline)));
    assert_eq!(
        w.poll(20 * MS, &q, &mut out),
        Step::Stop,
        "nothing left to deliver"
    );
}

#[test]
fn backoff_doubles_up_to_its_cap_and_resets_after_a_connect() {
    let s = slots(4);
    let q = Queue::new(&s).unwrap();
    let mut buf = [0u8; SLOT];
    let mut out = [0u8; LIMIT];
    let mut w = Worker::new(config(), &mut buf, 0);
    let mut now = 0;
    let mut waits = Vec::new();
    for _ in 0..7 {
        assert_eq!(expect_connect(&mut w, now, &q, &mut out), 1);
        w.on_connect(now, Err(ConnectFailure::Unavailable));
        let until = expect_wait(&mut w, now, &q, &mut out);
        // Asking early changes nothing.
        assert_eq!(expect_wait(&mut w, until - 1, &q, &mut out), until);
        waits.push((until - now) / MS);
        now = until;
    }
    assert_eq!(waits, [10, 20, 40, 80, 80, 80, 80]);
    assert_eq!(w.stats().connect_failures, 7);

    expect_connect(&mut w, now, &q, &mut out);
    w.on_connect(now, Ok(LIMIT));
    assert!(w.is_connected());
    assert!(push(&q, 1));
    assert_eq!(
        expect_send(&mut w, now, &q, &mut out),
        Sent::Event { seq: 1, pid: 1 }
    );
    w.on_sent(now, false);
    assert!(!w.is_connected());
    assert_eq!(expect_wait(&mut w, now, &q, &mut out), now + 10 * MS);
}

#[test]
fn a_refused_or_unusable_connect_backs_off() {
    let s = slots(4);
    let q = Queue::new(&s).unwrap();
    let mut buf = [0u8; SLOT];
    let mut out = [0u8; LIMIT];
    let mut w = Worker::new(config(), &mut buf, 0);
    expect_connect(&mut w, 0, &q, &mut out);
    w.on_connect(0, Err(ConnectFailure::Refused));
    assert!(!w.is_connected());
    assert_eq!(expect_wait(&mut w, 0, &q, &mut out), 10 * MS);
    // An accepted connection with a limit below the fragment minimum is no better.
    expect_connect(&mut w, 10 * MS, &q, &mut out);
    w.on_connect(10 * MS, Ok(63));
    assert!(!w.is_connected());
    assert_eq!(expect_wait(&mut w, 10 * MS, &q, &mut out), 30 * MS);
    assert_eq!(w.stats().connect_failures, 2);
    assert_eq!(w.stats().connects, 0);
}

#[test]
fn after_a_reconnect_send_loss_then_queue_loss_come_first_and_heartbeats_carry_last_seq() {
    let s = slots(4);
    let q = Queue::new(&s).unwrap();
    let mut buf = [0u8; SLOT];
    let mut out = [0u8; LIMIT];
    let mut w = Worker::new(config(), &mut buf, 0);
    expect_connect(&mut w, 0, &q, &mut out);
    w.on_connect(0, Ok(LIMIT));
    for pid in 1..=3 {
        assert!(push(&q, pid));
    }
    assert_eq!(
        expect_send(&mut w, 0, &q, &mut out),
        Sent::Event { seq: 1, pid: 1 }
    );
    w.on_sent(0, true);
    assert_eq!(
        expect_send(&mut w, 0, &q, &mut out),
        Sent::Event { seq: 2, pid: 2 }
    );
    w.on_sent(0, false);

    // While disconnected the queue fills (pid 3 is still in it) and two events are dropped.
    for pid in 4..=6 {
        assert!(push(&q, pid));
    }
    assert!(!push(&q, 7));
    assert!(!push(&q, 8));

    let retry = expect_wait(&mut w, 0, &q, &mut out);
    // The Hello tells the server where the sequence continues.
    assert_eq!(expect_connect(&mut w, retry, &q, &mut out), 3);
    w.on_connect(retry, Ok(LIMIT));
    let mut messages = Vec::new();
    for _ in 0..6 {
        messages.push(expect_send(&mut w, retry, &q, &mut out));
        w.on_sent(retry, true);
    }
    assert_eq!(
        messages,
        [
            Sent::Loss(Loss {
                stage: LossStage::ProducerSend,
                count: 1,
                first_seq: 2,
                last_seq: 2,
                total: 1,
            }),
            // Both drops happened when the next accepted event would have been number 7.
            Sent::Loss(Loss {
                stage: LossStage::ProducerQueue,
                count: 2,
                first_seq: 7,
                last_seq: 7,
                total: 2,
            }),
            Sent::Event { seq: 3, pid: 3 },
            Sent::Event { seq: 4, pid: 4 },
            Sent::Event { seq: 5, pid: 5 },
            Sent::Event { seq: 6, pid: 6 },
        ]
    );
    let due = expect_wait(&mut w, retry, &q, &mut out);
    assert_eq!(due, retry + config().heartbeat_interval_ns);
    assert_eq!(
        expect_send(&mut w, due, &q, &mut out),
        Sent::Heartbeat(Heartbeat {
            produced: 8,
            queue_drops_reported: 2,
            send_failed: 1,
            last_seq: 6,
        })
    );
    w.on_sent(due, true);
    assert_eq!(
        expect_wait(&mut w, due, &q, &mut out),
        due + config().heartbeat_interval_ns
    );
    let stats = w.stats();
    assert_eq!((stats.sent, stats.send_failed, stats.last_seq), (5, 1, 6));
}

#[test]
fn a_stop_while_disconnected_with_nothing_to_report_is_immediate() {
    let s = slots(4);
    let q = Queue::new(&s).unwrap();
    let mut buf = [0u8; SLOT];
    let mut out = [0u8; LIMIT];
    // Never connected.
    let mut w = Worker::new(config(), &mut buf, 0);
    w.stop(0, 1_000 * MS);
    assert_eq!(w.poll(0, &q, &mut out), Step::Stop);
    assert_eq!(w.poll(1, &q, &mut out), Step::Stop);
    assert_eq!(w.stats(), WorkerStats::default());

    // Backing off after a failed connect: the stop does not wait for the retry.
    let mut buf = [0u8; SLOT];
    let mut w = Worker::new(config(), &mut buf, 0);
    expect_connect(&mut w, 0, &q, &mut out);
    w.on_connect(0, Err(ConnectFailure::Unavailable));
    w.stop(1, 1_000 * MS);
    assert_eq!(w.poll(1, &q, &mut out), Step::Stop);
    assert_eq!(w.stats().unreported, 0);

    // With something queued it reconnects to deliver it instead.
    let mut buf = [0u8; SLOT];
    let mut w = Worker::new(config(), &mut buf, 0);
    assert!(push(&q, 1));
    w.stop(0, 1_000 * MS);
    expect_connect(&mut w, 0, &q, &mut out);
}

#[test]
fn a_stop_while_connected_drains_the_queue_then_sends_a_final_heartbeat() {
    let s = slots(8);
    let q = Queue::new(&s).unwrap();
    let mut buf = [0u8; SLOT];
    let mut out = [0u8; LIMIT];
    let mut w = Worker::new(config(), &mut buf, 0);
    expect_connect(&mut w, 0, &q, &mut out);
    w.on_connect(0, Ok(LIMIT));
    for pid in 1..=3 {
        assert!(push(&q, pid));
    }
    // Far from the next regular heartbeat, so the one at the end is the stop's.
    let now = 10 * MS;
    w.stop(now, 1_000 * MS);
    let mut messages = Vec::new();
    for _ in 0..4 {
        messages.push(expect_send(&mut w, now, &q, &mut out));
        w.on_sent(now, true);
    }
    assert_eq!(
        messages,
        [
            Sent::Event { seq: 1, pid: 1 },
            Sent::Event { seq: 2, pid: 2 },
            Sent::Event { seq: 3, pid: 3 },
            Sent::Heartbeat(Heartbeat {
                produced: 3,
                queue_drops_reported: 0,
                send_failed: 0,
                last_seq: 3,
            }),
        ]
    );
    assert_eq!(w.poll(now, &q, &mut out), Step::Stop);
    assert_eq!(w.stats().sent, 3);
    assert_eq!(w.stats().unreported, 0);
}

/// A port that never answers: every connect "blocks" for its whole timeout and fails.
struct DeadPort {
    clock: u64,
    stop_at: u64,
    /// When `stop_requested` first said yes.
    stop_seen: Option<u64>,
    calls: u32,
}

impl DeadPort {
    fn tick(&mut self) {
        self.calls += 1;
        assert!(self.calls < 100_000, "run() does not finish");
    }
}

impl ProducerIo for DeadPort {
    fn now(&mut self) -> u64 {
        self.tick();
        self.clock
    }

    fn connect(&mut self, _hello: &[u8], timeout_ns: u64) -> Result<usize, ConnectFailure> {
        self.tick();
        self.clock += timeout_ns;
        Err(ConnectFailure::Unavailable)
    }

    fn send(&mut self, _message: &[u8]) -> bool {
        panic!("nothing is sent on a port that never connects")
    }

    fn wait(&mut self, until: u64) {
        self.tick();
        assert!(until > self.clock);
        // A stop request wakes the sleeper.
        self.clock = if self.clock < self.stop_at {
            until.min(self.stop_at)
        } else {
            until
        };
    }

    fn stop_requested(&mut self) -> bool {
        self.tick();
        let stop = self.clock >= self.stop_at;
        if stop && self.stop_seen.is_none() {
            self.stop_seen = Some(self.clock);
        }
        stop
    }
}

#[test]
fn the_stop_deadline_bounds_run_even_when_connects_never_succeed() {
    let grace = 1_000 * MS;
    for (backoff_max, connect_timeout) in [
        (80 * MS, 5 * MS),
        (10_000 * MS, 2_000 * MS),
        (60_000 * MS, 50 * MS),
    ] {
        let config = WorkerConfig {
            backoff_min_ns: MS,
            backoff_max_ns: backoff_max,
            connect_timeout_ns: connect_timeout,
            ..config()
        };
        // Stop at many points of the backoff cycle.
        for stop_at in (0..40).map(|i| i * 977 * MS) {
            let s = slots(4);
            let q = Queue::new(&s).unwrap();
            // Something to deliver, so the worker keeps trying rather than stopping at once.
            assert!(push(&q, 1));
            let mut buf = [0u8; SLOT];
            let mut out = [0u8; LIMIT];
            let mut w = Worker::new(config, &mut buf, 0);
            let mut io = DeadPort {
                clock: 0,
                stop_at,
                stop_seen: None,
                calls: 0,
            };
            let stats = run(&mut w, &q, &mut io, &mut out, grace);
            let stopped = io.stop_seen.expect("the stop was seen");
            assert!(
                io.clock <= stopped + grace + connect_timeout,
                "stop at {stopped} ns returned at {} ns (backoff max {backoff_max}, connect {connect_timeout})",
                io.clock
            );
            // The event it could not deliver is counted, not forgotten.
            assert_eq!(stats.unreported, 1);
            assert_eq!(stats.connects, 0);
            assert!(stats.connect_failures >= 1);
        }
    }
}
