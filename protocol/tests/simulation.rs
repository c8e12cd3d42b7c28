//! End-to-end simulation: a producer (queue + worker) and a server, connected through the state
//! machines alone over an adversarial transport that drops, duplicates, truncates, reorders and
//! disconnects. Across thousands of seeded runs, every run must account for every event exactly:
//! produced = stored + Σ reported losses, each sequence number resolved once, in order.

mod common;

use common::Rng;

use std::collections::VecDeque;

use lpcmon_protocol::event::{EventHeader, EventKind, FieldType};
use lpcmon_protocol::port_message::{PortMessage, lpc};
use lpcmon_protocol::producer::{ConnectFailure, EventSlot, Step, Worker, WorkerConfig};
use lpcmon_protocol::queue::{Queue, Slot};
use lpcmon_protocol::server::{Action, Output, Server, ServerConfig};
use lpcmon_protocol::{LossStage, ProducerKind};

const SLOT: usize = 2048;

thread_local!(static SIZES: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) });
const STEP_NS: u64 = 1_000_000;

#[derive(Default, Debug)]
struct Ledger {
    stored: u64,
    lost_by_stage: std::collections::BTreeMap<LossStage, u64>,
    /// Every sequence number resolved, as (first, last) ranges: events are single numbers.
    resolved: Vec<(u64, u64)>,
    last_event_seq: u64,
    malformed: u64,
    stale: u64,
}

impl Ledger {
    fn absorb(&mut self, outputs: &mut Vec<Output>) {
        for o in outputs.drain(..) {
            match o {
                Output::Event { event, .. } => {
                    let seq = event.header.seq;
                    assert!(
                        seq > self.last_event_seq,
                        "events out of order: {seq} after {}",
                        self.last_event_seq
                    );
                    self.last_event_seq = seq;
                    self.stored += 1;
                    self.resolved.push((seq, seq));
                    // The payload survived intact: its length is the one pushed for this pid.
                    let cmd = event.text(FieldType::COMMAND_LINE).expect("command line");
                    let pushed = SIZES.with(|s| s.borrow()[event.header.pid as usize]);
                    assert_eq!(cmd.len(), pushed, "payload of pid {}", event.header.pid);
                    assert!(cmd.bytes().all(|b| b == b'x'));
                }
                Output::Loss { loss, .. } => {
                    *self.lost_by_stage.entry(loss.stage).or_default() += loss.count;
                    if loss.stage != LossStage::ProducerQueue {
                        assert_eq!(loss.count, loss.last_seq - loss.first_seq + 1);
                        self.resolved.push((loss.first_seq, loss.last_seq));
                    }
                }
                Output::Malformed { .. } => self.malformed += 1,
                Output::Stale { .. } => self.stale += 1,
                Output::Refused { .. } => panic!("a valid producer was refused"),
                Output::Connected(_) | Output::Disconnected { .. } | Output::Heartbeat { .. } => {}
            }
        }
    }

    fn lost(&self) -> u64 {
        self.lost_by_stage.values().sum()
    }
}

struct Faults {
    drop: u64,
    duplicate: u64,
    truncate: u64,
    reorder: u64,
    disconnect: u64,
    refuse_connect: u64,
}

fn faults(rng: &mut Rng) -> Faults {
    // Each run picks its own mix so some runs are calm and some are hostile.
    Faults {
        drop: rng.below(60),
        duplicate: rng.below(60),
        truncate: rng.below(30),
        reorder: rng.below(120),
        disconnect: rng.below(15),
        refuse_connect: rng.below(300),
    }
}

fn run(seed: u64) -> (Ledger, u64) {
    let mut rng = Rng(seed);
    let faults = faults(&mut rng);
    let capacity = 1 << (2 + rng.below(5)); // 4..64 slots: small enough to overflow
    let limit = [64usize, 100, 200, 608, 4096][rng.below(5) as usize];
    let slots: Vec<Slot<EventSlot<SLOT>>> = (0..capacity).map(|i| Slot::new(i, EventSlot::new())).collect();
    let queue = Queue::new(&slots).expect("power-of-two queue");
    let mut event_buf = vec![0u8; SLOT];
    let config = WorkerConfig {
        kind: ProducerKind::Loadgen,
        instance: seed.to_le_bytes().repeat(2).try_into().unwrap(),
        os: "sim",
        os_build: 0,
        max_message: limit,
        backoff_min_ns: STEP_NS,
        backoff_max_ns: 16 * STEP_NS,
        connect_timeout_ns: STEP_NS,
        heartbeat_interval_ns: 20 * STEP_NS,
    };
    let mut now = 0u64;
    let mut worker = Worker::new(config, &mut event_buf, now);
    let mut server = Server::new(ServerConfig {
        reassembly_timeout_ns: 30 * STEP_NS,
        gap_timeout_ns: 40 * STEP_NS,
        reorder_max: 1 + rng.below(32) as usize,
        reassembly_max_events: 1 + rng.below(8) as usize,
        ..ServerConfig::default()
    });
    let mut ledger = Ledger::default();
    let mut outputs = Vec::new();
    let mut out = vec![0u8; limit.max(128)];
    let mut conn_id = 0u64;
    let mut connected = false;
    let mut in_transit: VecDeque<Vec<u8>> = VecDeque::new();
    let mut message_id = 0u32;
    let events = 50 + rng.below(400);
    let mut pushed = 0u64;
    SIZES.with(|s| *s.borrow_mut() = vec![usize::MAX]);

    let deliver =
        |server: &mut Server, conn: u64, kind: u8, data: &[u8], mid: &mut u32, out: &mut Vec<Output>| {
            *mid += 1;
            let header = PortMessage::new(kind, data.len(), 1000, 1001, *mid);
            server.handle(now_of(out), conn, &header, data, out)
        };
    // `deliver` cannot capture `now` mutably-borrowed elsewhere; time is threaded through a
    // thread-local instead.
    fn now_of(_: &[Output]) -> u64 {
        NOW.with(|n| n.get())
    }
    thread_local!(static NOW: std::cell::Cell<u64> = const { std::cell::Cell::new(0) });

    let close = |server: &mut Server,
                 conn: u64,
                 transit: &mut VecDeque<Vec<u8>>,
                 mid: &mut u32,
                 out: &mut Vec<Output>| {
        // An ordered transport delivers (or loses) what it carried before the close.
        while let Some(m) = transit.pop_front() {
            deliver(server, conn, lpc::DATAGRAM, &m, mid, out);
        }
        deliver(server, conn, lpc::PORT_CLOSED, &[], mid, out);
    };

    let mut steps = 0u64;
    let max_steps = 200_000;
    let mut calm = false;
    loop {
        steps += 1;
        assert!(steps < max_steps, "seed {seed}: simulation did not finish");
        now += STEP_NS / 4;
        NOW.with(|n| n.set(now));

        // Produce in bursts, so the queue overflows sometimes.
        if pushed < events && rng.chance(300) {
            for _ in 0..=rng.below(6) {
                if pushed == events {
                    break;
                }
                pushed += 1;
                let big = rng.chance(200);
                let size = rng.below(if big { 1500 } else { 150 }) as usize;
                SIZES.with(|s| s.borrow_mut().push(size));
                let _ = queue.push_with(|slot| {
                    let header = EventHeader {
                        seq: 0,
                        kind: EventKind::ProcessExec,
                        flags: 0,
                        time_ns: now,
                        pid: pushed as u32,
                        ppid: 1,
                        tid: pushed as u32,
                    };
                    // The sequence number is not known yet; the worker patches it.
                    slot.encode(&header, 4096, |w| {
                        w.utf8(FieldType::COMMAND_LINE, &"x".repeat(size))
                    })
                    .unwrap();
                });
            }
        }
        if pushed == events && !calm && queue.is_empty() {
            // Final phase: a reliable transport, so the tail is resolved and the run can end.
            calm = true;
            worker.stop(now, 1_000 * STEP_NS);
        }

        // Deliver some of what is in transit, maybe out of order.
        if connected && !in_transit.is_empty() && rng.chance(700) {
            let idx = if !calm && in_transit.len() > 1 && rng.chance(faults.reorder) {
                rng.below(in_transit.len() as u64) as usize
            } else {
                0
            };
            if let Some(m) = in_transit.remove(idx) {
                deliver(
                    &mut server,
                    conn_id,
                    lpc::DATAGRAM,
                    &m,
                    &mut message_id,
                    &mut outputs,
                );
            }
        }
        // The server's timers run when it says they are due (`poll_timeout`), not on a fixed
        // tick; polling at every step checks the deadline is never late: before it, a poll
        // must find nothing to do.
        let due = server.poll_timeout().is_some_and(|deadline| now >= deadline);
        let before = outputs.len();
        server.poll(now, &mut outputs);
        assert!(
            due || outputs.len() == before,
            "seed {seed}: the server had timer work at {now} before its poll_timeout {:?}",
            server.poll_timeout()
        );
        ledger.absorb(&mut outputs);

        match worker.poll(now, &queue, &mut out) {
            Step::Connect { hello_len, .. } => {
                if !calm && rng.chance(faults.refuse_connect) {
                    worker.on_connect(now, Err(ConnectFailure::Unavailable));
                    continue;
                }
                conn_id += 1;
                let action = deliver(
                    &mut server,
                    conn_id,
                    lpc::CONNECTION_REQUEST,
                    &out[..hello_len],
                    &mut message_id,
                    &mut outputs,
                );
                match action {
                    Action::Accept { reply } => {
                        let agreed = lpcmon_protocol::message::Message::decode(&reply, 128).unwrap();
                        let lpcmon_protocol::Message::HelloReply(lpcmon_protocol::HelloReply::Accept {
                            max_message,
                            ..
                        }) = agreed
                        else {
                            panic!("bad accept")
                        };
                        connected = true;
                        worker.on_connect(now, Ok(max_message as usize));
                    }
                    other => panic!("seed {seed}: connect refused: {other:?}"),
                }
            }
            Step::Send { len } => {
                if !calm && rng.chance(faults.disconnect) {
                    // The port breaks: this send fails and the connection is torn down.
                    worker.on_sent(now, false);
                    if !calm && rng.chance(500) {
                        in_transit.clear(); // the dying connection lost what it carried
                    }
                    close(
                        &mut server,
                        conn_id,
                        &mut in_transit,
                        &mut message_id,
                        &mut outputs,
                    );
                    connected = false;
                    continue;
                }
                let mut msg = out[..len].to_vec();
                worker.on_sent(now, true);
                if !calm && rng.chance(faults.drop) {
                    continue;
                }
                if !calm && rng.chance(faults.truncate) && msg.len() > 1 {
                    msg.truncate(rng.below(msg.len() as u64) as usize);
                }
                if !calm && rng.chance(faults.duplicate) {
                    in_transit.push_back(msg.clone());
                }
                in_transit.push_back(msg);
            }
            Step::Wait { .. } => {}
            Step::Stop => break,
        }
    }
    // Drain and close: the ordered tail arrives, then the port closes.
    close(
        &mut server,
        conn_id,
        &mut in_transit,
        &mut message_id,
        &mut outputs,
    );
    server.poll(now + 1_000 * STEP_NS, &mut outputs);
    ledger.absorb(&mut outputs);
    assert_eq!(worker.stats().unreported, 0, "seed {seed}");
    assert_eq!(server.held_events(), 0, "seed {seed}");
    (ledger, queue.produced())
}

fn check(seed: u64) -> Ledger {
    let (ledger, produced) = run(seed);
    assert_eq!(
        produced,
        ledger.stored + ledger.lost(),
        "seed {seed}: produced {produced} != stored {} + lost {:?}",
        ledger.stored,
        ledger.lost_by_stage
    );
    // Every sequence number from 1 to the last is resolved exactly once.
    let mut ranges = ledger.resolved.clone();
    ranges.sort();
    let mut expect = 1;
    for (a, b) in ranges {
        assert_eq!(
            a, expect,
            "seed {seed}: sequence resolved twice or skipped at {a}"
        );
        expect = b + 1;
    }
    ledger
}

#[test]
fn every_event_is_stored_or_counted_lost_under_faults() {
    let runs = std::env::var("LPCMON_SIM_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000u64);
    let mut total = Ledger::default();
    for seed in 0..runs {
        let l = check(seed);
        total.stored += l.stored;
        total.malformed += l.malformed;
        total.stale += l.stale;
        for (k, v) in l.lost_by_stage {
            *total.lost_by_stage.entry(k).or_default() += v;
        }
    }
    // The faults really happened: every kind of loss and anomaly was exercised.
    for stage in [
        LossStage::ProducerQueue,
        LossStage::ProducerSend,
        LossStage::Transport,
        LossStage::Reassembly,
    ] {
        assert!(
            total.lost_by_stage.get(&stage).copied().unwrap_or(0) > 0,
            "{stage:?} never exercised"
        );
    }
    assert!(total.malformed > 0 && total.stale > 0 && total.stored > 0);
    eprintln!(
        "{runs} runs: stored {}, lost {:?}, malformed {}, stale {}",
        total.stored, total.lost_by_stage, total.malformed, total.stale
    );
}
